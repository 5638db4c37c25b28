-- Leases: a worker's `beat` goes up by one at each renewal; another worker judges it by how
-- long the number stands still on its own clock, never by comparing timestamps across hosts.
ALTER TABLE workers ADD COLUMN beat BIGINT NOT NULL DEFAULT 0;

-- Counters `status` reads instead of the rows: per campaign, channel, locale and status, with
-- `rows` for the rows themselves; written in the same transaction as the rows they count.
CREATE TABLE IF NOT EXISTS campaign_counts (
    campaign_id TEXT NOT NULL,
    channel     TEXT NOT NULL,
    locale      TEXT NOT NULL,
    status      TEXT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, channel, locale, status)
);

INSERT INTO campaign_counts (campaign_id, channel, locale, status, n)
SELECT campaign_id, channel, locale, status, COUNT(*) FROM deliveries
WHERE status <> 'sending'
GROUP BY campaign_id, channel, locale, status;

INSERT INTO campaign_counts (campaign_id, channel, locale, status, n)
SELECT campaign_id, channel, locale, 'rows', COUNT(*) FROM deliveries
GROUP BY campaign_id, channel, locale;

-- Deliveries per 10-second bucket, for the rate over the last minute.
CREATE TABLE IF NOT EXISTS campaign_rates (
    campaign_id TEXT NOT NULL,
    bucket      BIGINT NOT NULL,
    delivered   BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, bucket)
);

INSERT INTO campaign_rates (campaign_id, bucket, delivered)
SELECT campaign_id, updated_at / 10000, COUNT(*) FROM deliveries
WHERE status = 'delivered'
GROUP BY campaign_id, updated_at / 10000;
