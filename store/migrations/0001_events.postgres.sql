-- Events arrive roughly in time order, so a BRIN index keeps time-range scans cheap
-- at a tiny fraction of a btree's size.
CREATE INDEX IF NOT EXISTS events_time_brin ON events USING brin (event_time);
