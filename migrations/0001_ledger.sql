-- The delivery ledger: one row per campaign × user × channel, campaigns with their state and
-- totals, and the workers alive (their claims on rows in flight expire when they stop beating).
-- Plain SQL that SQLite and PostgreSQL both read; times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS campaigns (
    id          TEXT PRIMARY KEY,
    template    TEXT NOT NULL,
    recipients  BIGINT NOT NULL,
    deadline    TEXT,
    state       TEXT NOT NULL DEFAULT 'running',
    created_at  BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS campaign_totals (
    campaign_id TEXT NOT NULL,
    channel     TEXT NOT NULL,
    locale      TEXT NOT NULL,
    total       BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, channel, locale)
);

CREATE TABLE IF NOT EXISTS deliveries (
    campaign_id TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    channel     TEXT NOT NULL,
    locale      TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    owner       TEXT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, user_id, channel)
);

CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries (campaign_id, status, updated_at);

CREATE TABLE IF NOT EXISTS workers (
    id      TEXT PRIMARY KEY,
    seen_at BIGINT NOT NULL
);
