SELECT create_hypertable('events', 'event_time', chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE);
