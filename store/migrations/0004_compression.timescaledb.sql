-- Columnar compression of older event chunks, segmented by project (every query
-- filters by project) and ordered by time. The policy runs on a TimescaleDB
-- server's background workers; where there are none (the embedded database) the
-- application compresses the same chunks itself (store/maintenance.ts).
ALTER TABLE events SET (timescaledb.compress, timescaledb.compress_segmentby = 'project', timescaledb.compress_orderby = 'event_time DESC, message_id');
SELECT add_compression_policy('events', INTERVAL '30 days', if_not_exists => TRUE);
