-- Every event in full, one row per (project, message id).
-- The primary key carries event_time because a TimescaleDB hypertable needs its
-- time column in every unique index; the same stored message always has the same
-- event_time (stamped once by the collector), so replays still collide.
CREATE TABLE IF NOT EXISTS events (
  project        text        NOT NULL,
  message_id     text        NOT NULL,
  event_time     timestamptz NOT NULL,
  received_at    timestamptz NOT NULL,
  type           text        NOT NULL,
  name           text        NOT NULL,
  canonical_id   text        NOT NULL,
  anonymous_id   text,
  user_id        text,
  source         text        NOT NULL,
  key_group      integer     NOT NULL,
  -- where the event entered JetStream (SEG_RAW or SEG_IMPORT) and its sequence there
  raw_stream     text        NOT NULL,
  raw_seq        bigint      NOT NULL,
  -- its sequence in SEG_ENRICHED: where a replay of the stream takes over from this table
  enriched_seq   bigint      NOT NULL,
  properties     jsonb       NOT NULL DEFAULT '{}'::jsonb,
  traits         jsonb,
  context        jsonb       NOT NULL DEFAULT '{}'::jsonb,
  -- every other field of the message, so nothing the client sent is lost
  extra          jsonb       NOT NULL DEFAULT '{}'::jsonb,
  PRIMARY KEY (project, message_id, event_time)
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (project, canonical_id, event_time);
CREATE INDEX IF NOT EXISTS events_by_name ON events (project, name, event_time);
