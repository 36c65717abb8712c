-- Sessions as sessionize last computed them, one row per (project, session id).
-- A session's start can move earlier (a late event), so this is a plain table,
-- not a hypertable: its primary key cannot carry a time column that changes.
-- A row is replaced only by a higher version (see the sessions sink), so a
-- replay or a stale owner never overwrites newer data.
CREATE TABLE IF NOT EXISTS sessions (
  project          text        NOT NULL,
  session_id       text        NOT NULL,
  canonical_id     text        NOT NULL,
  started_at       timestamptz NOT NULL,
  last_event_at    timestamptz NOT NULL,
  duration_ms      bigint      NOT NULL,
  events           integer     NOT NULL,
  pages            integer     NOT NULL,
  entry_page       text,
  exit_page        text,
  channel          text,
  device           text,
  first_message_id text        NOT NULL,
  -- '$session_start' (open), '$session_end' (closed) or '$session_retract' (counts for nothing)
  status           text        NOT NULL,
  version          integer     NOT NULL,
  -- where the newest version is stored in SEG_SESSIONS
  sessions_seq     bigint      NOT NULL,
  PRIMARY KEY (project, session_id)
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (project, canonical_id, started_at);
CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions (project, started_at) WHERE status <> '$session_retract';

-- Identity links as enrich made them: an anonymous id belongs to one user, for good.
CREATE TABLE IF NOT EXISTS identities (
  project      text        NOT NULL,
  anonymous_id text        NOT NULL,
  user_id      text        NOT NULL,
  linked_at    timestamptz NOT NULL,
  PRIMARY KEY (project, anonymous_id)
);
CREATE INDEX IF NOT EXISTS identities_by_user ON identities (project, user_id);
