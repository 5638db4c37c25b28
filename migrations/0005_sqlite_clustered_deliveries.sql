-- SQLite only. A rowid table keeps the primary key in an index of its own, so every claim and
-- every outcome wrote two B-trees; clustered on the key, a row write touches one.
CREATE TABLE deliveries_clustered (
    campaign_id TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    channel     TEXT NOT NULL,
    locale      TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    owner       TEXT,
    updated_at  BIGINT NOT NULL,
    token       BIGINT,
    PRIMARY KEY (campaign_id, user_id, channel)
) WITHOUT ROWID;

INSERT INTO deliveries_clustered
    (campaign_id, user_id, channel, locale, status, attempts, last_error, owner, updated_at, token)
SELECT campaign_id, user_id, channel, locale, status, attempts, last_error, owner, updated_at, token
FROM deliveries;

DROP TABLE deliveries;

ALTER TABLE deliveries_clustered RENAME TO deliveries;
