-- Behavioural conditions ("did click_event1 at least 2 times in the last 30 days", store/explore.ts)
-- without summing profile_event_days per user and joining the result to profiles on every query.
--
-- One row per (project, event name, live user): the user's per-day counts of that name as a
-- running total over every day from first_day to last_day (cumulative[i] = events of the days
-- first_day .. first_day + i - 1), so the events of any window (a, b] are two subscripts:
--   cumulative[least(b, last_day) - first_day + 1] - cumulative[a - first_day + 1]
-- (a subscript below 1 is NULL, read as 0). Beside it, a copy of the profile's grouping columns,
-- so a count by engagement (or month, channel, country, device) of the users who qualify reads
-- only the rows of one event name. Merged profiles (merged_into set) have no rows.
--
-- Kept by statement-level triggers on profile_event_days and profiles (as profile_traits is, 0006):
-- whatever writes them (a test, an import, plain SQL), one statement per trigger event, never a
-- statement per row. The profiles sink (store/profiles.ts), which replaces a batch's profiles and
-- their day rows in one transaction, sets segstream.series_by_writer = 'on' for it (SET LOCAL): the
-- triggers then leave it alone and it rebuilds its users once at the end
-- (profile_event_series_rebuild), instead of three times (profiles updated, days deleted, inserted).
--
-- The array has a place for every day from first_day to last_day, which the profile step keeps
-- at most dayHistory (default 90) days apart; the index below holds it, so a dayHistory of more
-- than ~500 days would make some index rows larger than a btree takes (2,700 bytes).
CREATE TABLE IF NOT EXISTS profile_event_series (
  project             text    NOT NULL,
  name                text    NOT NULL,
  canonical_id        text    NOT NULL,
  first_day           date    NOT NULL,
  last_day            date    NOT NULL,
  cumulative          integer[] NOT NULL,
  engagement_level    text,
  acquisition_month   text,
  acquisition_channel text,
  country             text,
  device_type         text,
  PRIMARY KEY (project, canonical_id, name)
);
-- What a behavioural condition reads: the rows of one name with an event after the window's start,
-- without touching the heap (136,000 of 566,000 click_event1 rows for 30 days in make bench-explore).
CREATE INDEX IF NOT EXISTS profile_event_series_by_name ON profile_event_series (project, name, last_day)
  INCLUDE (first_day, cumulative, canonical_id, engagement_level, acquisition_month, acquisition_channel, country, device_type);

-- The rows of the given users (every user when projects is NULL), from profile_event_days and
-- live profiles. Per (user, name) the day rows in day order: each day's running total, repeated
-- over the days up to the next day with events, is one stretch of the array.
CREATE OR REPLACE FUNCTION profile_event_series_rebuild(projects text[], ids text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF projects IS NULL THEN
    DELETE FROM profile_event_series;
    INSERT INTO profile_event_series (project, name, canonical_id, first_day, last_day, cumulative,
        engagement_level, acquisition_month, acquisition_channel, country, device_type)
      SELECT p.project, c.name, p.canonical_id, min(c.day), max(c.day),
             ('{' || string_agg(repeat(c.total || ',', c.span - 1) || c.total, ',' ORDER BY c.day) || '}')::integer[],
             p.engagement_level, p.acquisition_month, p.acquisition_channel, p.country, p.device_type
        FROM (SELECT d.project, d.canonical_id, d.name, d.day, sum(d.count) OVER w AS total,
                     coalesce(lead(d.day) OVER w - d.day, 1) AS span
                FROM profile_event_days d
              WINDOW w AS (PARTITION BY d.project, d.canonical_id, d.name ORDER BY d.day)) c
        JOIN profiles p ON p.project = c.project AND p.canonical_id = c.canonical_id AND p.merged_into IS NULL
       GROUP BY p.project, p.canonical_id, c.name;
    RETURN;
  END IF;
  DELETE FROM profile_event_series s USING unnest(projects, ids) AS u(project, canonical_id)
   WHERE s.project = u.project AND s.canonical_id = u.canonical_id;
  -- the same rows as above, for these users only (same text but for the source of day rows)
  INSERT INTO profile_event_series (project, name, canonical_id, first_day, last_day, cumulative,
      engagement_level, acquisition_month, acquisition_channel, country, device_type)
    SELECT p.project, c.name, p.canonical_id, min(c.day), max(c.day),
           ('{' || string_agg(repeat(c.total || ',', c.span - 1) || c.total, ',' ORDER BY c.day) || '}')::integer[],
           p.engagement_level, p.acquisition_month, p.acquisition_channel, p.country, p.device_type
      FROM (SELECT d.project, d.canonical_id, d.name, d.day, sum(d.count) OVER w AS total,
                   coalesce(lead(d.day) OVER w - d.day, 1) AS span
              FROM (SELECT DISTINCT * FROM unnest(projects, ids) AS u(project, canonical_id)) u
              JOIN profile_event_days d ON d.project = u.project AND d.canonical_id = u.canonical_id
            WINDOW w AS (PARTITION BY d.project, d.canonical_id, d.name ORDER BY d.day)) c
      JOIN profiles p ON p.project = c.project AND p.canonical_id = c.canonical_id AND p.merged_into IS NULL
     GROUP BY p.project, p.canonical_id, c.name
  -- another transaction rebuilding the same user committed rows this one's DELETE did not see
  ON CONFLICT (project, canonical_id, name) DO UPDATE SET first_day = EXCLUDED.first_day, last_day = EXCLUDED.last_day,
     cumulative = EXCLUDED.cumulative, engagement_level = EXCLUDED.engagement_level, acquisition_month = EXCLUDED.acquisition_month,
     acquisition_channel = EXCLUDED.acquisition_channel, country = EXCLUDED.country, device_type = EXCLUDED.device_type;
END
$$;

-- Day rows written or deleted: the users' rows again (the sink deletes a user's days, then inserts
-- the new version's: the first finds nothing left and only deletes).
CREATE OR REPLACE FUNCTION profile_event_series_on_days() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- the profiles sink rebuilds its batch's users itself, once, at the end of its transaction
  IF current_setting('segstream.series_by_writer', true) = 'on' THEN RETURN NULL; END IF;
  PERFORM profile_event_series_rebuild(array_agg(project), array_agg(canonical_id))
     FROM (SELECT DISTINCT project, canonical_id FROM changed) u HAVING count(*) > 0;
  RETURN NULL;
END
$$;
-- An UPDATE of day rows (nobody does; for completeness) may move them between users.
CREATE OR REPLACE FUNCTION profile_event_series_on_days_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- the profiles sink rebuilds its batch's users itself, once, at the end of its transaction
  IF current_setting('segstream.series_by_writer', true) = 'on' THEN RETURN NULL; END IF;
  PERFORM profile_event_series_rebuild(array_agg(project), array_agg(canonical_id))
     FROM (SELECT project, canonical_id FROM changed UNION SELECT project, canonical_id FROM before) u HAVING count(*) > 0;
  RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS profile_event_series_on_days_insert ON profile_event_days;
CREATE TRIGGER profile_event_series_on_days_insert AFTER INSERT ON profile_event_days
  REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION profile_event_series_on_days();
DROP TRIGGER IF EXISTS profile_event_series_on_days_delete ON profile_event_days;
CREATE TRIGGER profile_event_series_on_days_delete AFTER DELETE ON profile_event_days
  REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION profile_event_series_on_days();
DROP TRIGGER IF EXISTS profile_event_series_on_days_update ON profile_event_days;
CREATE TRIGGER profile_event_series_on_days_update AFTER UPDATE ON profile_event_days
  REFERENCING OLD TABLE AS before NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION profile_event_series_on_days_update();

-- New profiles: their rows (days written before the profile). Profiles updated: the grouping
-- columns copied again where they changed, the rows of users merged away deleted, and the rows of a
-- user live again (merged_into cleared) rebuilt. Profiles deleted: their rows.
CREATE OR REPLACE FUNCTION profile_event_series_on_profiles_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- the profiles sink rebuilds its batch's users itself, once, at the end of its transaction
  IF current_setting('segstream.series_by_writer', true) = 'on' THEN RETURN NULL; END IF;
  PERFORM profile_event_series_rebuild(array_agg(project), array_agg(canonical_id))
     FROM written WHERE merged_into IS NULL HAVING count(*) > 0;
  RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION profile_event_series_on_profiles_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- the profiles sink rebuilds its batch's users itself, once, at the end of its transaction
  IF current_setting('segstream.series_by_writer', true) = 'on' THEN RETURN NULL; END IF;
  DELETE FROM profile_event_series s USING written w
   WHERE w.merged_into IS NOT NULL AND s.project = w.project AND s.canonical_id = w.canonical_id;
  UPDATE profile_event_series s
     SET engagement_level = w.engagement_level, acquisition_month = w.acquisition_month,
         acquisition_channel = w.acquisition_channel, country = w.country, device_type = w.device_type
    FROM written w
   WHERE w.merged_into IS NULL AND s.project = w.project AND s.canonical_id = w.canonical_id
     AND (s.engagement_level, s.acquisition_month, s.acquisition_channel, s.country, s.device_type)
         IS DISTINCT FROM (w.engagement_level, w.acquisition_month, w.acquisition_channel, w.country, w.device_type);
  PERFORM profile_event_series_rebuild(array_agg(w.project), array_agg(w.canonical_id))
     FROM written w JOIN before b ON b.project = w.project AND b.canonical_id = w.canonical_id
    WHERE w.merged_into IS NULL AND b.merged_into IS NOT NULL HAVING count(*) > 0;
  RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION profile_event_series_on_profiles_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- the profiles sink rebuilds its batch's users itself, once, at the end of its transaction
  IF current_setting('segstream.series_by_writer', true) = 'on' THEN RETURN NULL; END IF;
  DELETE FROM profile_event_series s USING gone g WHERE s.project = g.project AND s.canonical_id = g.canonical_id;
  RETURN NULL;
END
$$;
-- TRUNCATE of either table: nothing left to count.
CREATE OR REPLACE FUNCTION profile_event_series_on_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM profile_event_series;
  RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS profile_event_series_on_profiles_insert ON profiles;
CREATE TRIGGER profile_event_series_on_profiles_insert AFTER INSERT ON profiles
  REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION profile_event_series_on_profiles_insert();
DROP TRIGGER IF EXISTS profile_event_series_on_profiles_update ON profiles;
CREATE TRIGGER profile_event_series_on_profiles_update AFTER UPDATE ON profiles
  REFERENCING OLD TABLE AS before NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION profile_event_series_on_profiles_update();
DROP TRIGGER IF EXISTS profile_event_series_on_profiles_delete ON profiles;
CREATE TRIGGER profile_event_series_on_profiles_delete AFTER DELETE ON profiles
  REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION profile_event_series_on_profiles_delete();
DROP TRIGGER IF EXISTS profile_event_series_on_profiles_truncate ON profiles;
CREATE TRIGGER profile_event_series_on_profiles_truncate AFTER TRUNCATE ON profiles
  FOR EACH STATEMENT EXECUTE FUNCTION profile_event_series_on_truncate();
DROP TRIGGER IF EXISTS profile_event_series_on_days_truncate ON profile_event_days;
CREATE TRIGGER profile_event_series_on_days_truncate AFTER TRUNCATE ON profile_event_days
  FOR EACH STATEMENT EXECUTE FUNCTION profile_event_series_on_truncate();

-- The rows of what was written before this migration.
SELECT profile_event_series_rebuild(NULL, NULL);
