-- Which claim (of its worker) a `sending` row belongs to: a claim then needs no RETURNING
-- rows to know what it got, only its count, and looks rows up only when it got fewer.
ALTER TABLE deliveries ADD COLUMN token BIGINT;
