-- Feedback: which recipient a token names, the reports that came back, the addresses no email
-- goes to, and per-campaign feedback counters. Plain SQL that SQLite and PostgreSQL both read.

-- The address an email row was claimed for, and the token of its VERP sender and unsubscribe
-- links (only with `feedback.secret_file`); only rows with a token are indexed, so push rows
-- and ledgers without feedback pay nothing.
ALTER TABLE deliveries ADD COLUMN address TEXT;
ALTER TABLE deliveries ADD COLUMN feedback_token TEXT;
CREATE INDEX IF NOT EXISTS deliveries_by_feedback_token ON deliveries (feedback_token)
    WHERE feedback_token IS NOT NULL;

-- Every report that named a known recipient; `campaign_id` is '' when it named none. A hard
-- bounce, complaint, unsubscribe or manual entry counts once per address, reason and campaign
-- (a second one-click POST changes nothing); soft bounces are all kept, counted over a window.
CREATE TABLE IF NOT EXISTS feedback_reports (
    address     TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    reason      TEXT NOT NULL,
    source      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS feedback_reports_once
    ON feedback_reports (address, reason, campaign_id) WHERE reason <> 'soft-bounce';
CREATE INDEX IF NOT EXISTS feedback_reports_soft
    ON feedback_reports (address, at) WHERE reason = 'soft-bounce';

-- Addresses no email goes to: `scope` is '' for every campaign, else the one campaign an
-- unsubscribe was for. One row per address, reason and scope.
CREATE TABLE IF NOT EXISTS suppressions (
    address TEXT NOT NULL,
    reason  TEXT NOT NULL,
    scope   TEXT NOT NULL,
    source  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    since   BIGINT NOT NULL,
    PRIMARY KEY (address, reason, scope)
);

-- Reports per campaign and reason (first reports only), for `status`'s rates and the pause.
CREATE TABLE IF NOT EXISTS campaign_feedback (
    campaign_id TEXT NOT NULL,
    reason      TEXT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, reason)
);

-- Why a campaign was paused by the ledger (its complaint rate), and the complaints it had when
-- last resumed: only complaints after a resume can pause it again.
ALTER TABLE campaigns ADD COLUMN paused_reason TEXT;
ALTER TABLE campaigns ADD COLUMN complaints_at_resume BIGINT NOT NULL DEFAULT 0;
