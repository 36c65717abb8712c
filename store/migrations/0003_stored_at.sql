-- When a row was committed (its transaction's start, the sink's batch): with
-- received_at (the collector's acceptance) it gives the pipeline's latency.
ALTER TABLE events ADD COLUMN IF NOT EXISTS stored_at timestamptz DEFAULT now();
