-- Profiles as the profile operator last computed them, one row per (project, canonical user).
-- A row is replaced only by a higher version (see the profiles sink), so a replay or a
-- stale owner never overwrites newer data. A profile merged into another user's keeps its
-- row with merged_into set, and counts for nothing (queries filter merged_into IS NULL).
CREATE TABLE IF NOT EXISTS profiles (
  project              text        NOT NULL,
  canonical_id         text        NOT NULL,
  first_seen           timestamptz,
  last_seen            timestamptz,
  -- 'YYYY-MM' of the first event in the project's timezone
  acquisition_month    text,
  acquisition_channel  text,
  acquisition_source   text,
  acquisition_medium   text,
  acquisition_campaign text,
  device_type          text,
  browser              text,
  os                   text,
  country              text,
  city                 text,
  events               integer     NOT NULL DEFAULT 0,
  sessions             integer     NOT NULL DEFAULT 0,
  -- 'Low' | 'Medium' | 'Medium-High' | 'High'
  engagement_level     text,
  engagement_score     integer,
  engagement_as_of     timestamptz,
  traits               jsonb       NOT NULL DEFAULT '{}'::jsonb,
  merged_into          text,
  version              integer     NOT NULL,
  -- where the newest version is stored in SEG_PROFILES
  profiles_seq         bigint      NOT NULL,
  updated_at           timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (project, canonical_id)
);
CREATE INDEX IF NOT EXISTS profiles_by_engagement ON profiles (project, engagement_level, acquisition_month) WHERE merged_into IS NULL;
CREATE INDEX IF NOT EXISTS profiles_by_month ON profiles (project, acquisition_month) WHERE merged_into IS NULL;

-- Per user, per local day (project timezone), per event name: what behavioural filters
-- ("did E at least N times in the last D days") read. The profile keeps its last 90 days;
-- the sink replaces a user's rows with those of each newer profile version.
CREATE TABLE IF NOT EXISTS profile_event_days (
  project      text    NOT NULL,
  canonical_id text    NOT NULL,
  day          date    NOT NULL,
  name         text    NOT NULL,
  count        integer NOT NULL,
  PRIMARY KEY (project, canonical_id, day, name)
);
CREATE INDEX IF NOT EXISTS profile_event_days_by_name ON profile_event_days (project, name, day);
