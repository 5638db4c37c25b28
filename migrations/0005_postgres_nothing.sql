-- PostgreSQL keeps its tables as heaps; the clustered table of SQLite's migration 5 has no
-- counterpart here.
SELECT 1;
