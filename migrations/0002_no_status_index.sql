-- Every send writes its row twice (claim, outcome); a second index on it doubled the B-tree work
-- for the one query that used it (`status`'s rate over the last minute), which now scans the
-- campaign's rows through the primary key instead.
DROP INDEX IF EXISTS deliveries_by_status;
