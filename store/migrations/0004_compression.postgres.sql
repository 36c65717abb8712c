-- Plain PostgreSQL has no columnar compression: large jsonb values are TOASTed
-- and compressed by PostgreSQL itself. Nothing to do; kept for the numbering.
SELECT 1;
