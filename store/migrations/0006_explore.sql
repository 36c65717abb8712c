-- What the exploration API (store/explore.ts, docs/explore.md) needs beside profiles.

-- Saved segments: a name and a filter, per project. The live size is counted at read time;
-- the definition is also published as a control message for the profile step.
CREATE TABLE IF NOT EXISTS segments (
  project    text        NOT NULL,
  id         text        NOT NULL,
  name       text        NOT NULL,
  filter     jsonb       NOT NULL,
  -- the version of the control message that carried this definition
  version    integer     NOT NULL DEFAULT 1,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (project, id)
);

-- Every trait name seen in a project's profiles, once per JSON type its values had, so
-- GET /v1/dimensions reads a few rows instead of every profile's traits.
CREATE TABLE IF NOT EXISTS profile_traits (
  project text NOT NULL,
  name    text NOT NULL,
  -- jsonb_typeof of a value: string, number, boolean, object, array or null
  type    text NOT NULL,
  PRIMARY KEY (project, name, type)
);

-- Kept by statement-level triggers: one extra INSERT per statement that writes profiles
-- (a sink batch, a COPY), never one per row. Transition tables allow one event per trigger.
CREATE OR REPLACE FUNCTION profile_traits_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO profile_traits (project, name, type)
    SELECT DISTINCT w.project, t.key, jsonb_typeof(t.value)
      FROM written w, jsonb_each(w.traits) AS t
    ON CONFLICT DO NOTHING;
  RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS profile_traits_on_insert ON profiles;
CREATE TRIGGER profile_traits_on_insert AFTER INSERT ON profiles
  REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION profile_traits_record();
DROP TRIGGER IF EXISTS profile_traits_on_update ON profiles;
CREATE TRIGGER profile_traits_on_update AFTER UPDATE ON profiles
  REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION profile_traits_record();

-- profiles written before this migration
INSERT INTO profile_traits (project, name, type)
  SELECT DISTINCT p.project, t.key, jsonb_typeof(t.value) FROM profiles p, jsonb_each(p.traits) AS t
  ON CONFLICT DO NOTHING;

-- Behavioural filters count back from the project's newest engagement_as_of: one index probe.
CREATE INDEX IF NOT EXISTS profiles_by_engagement_as_of ON profiles (project, engagement_as_of);
-- Trait conditions are containment tests (traits @> '{"plan":"pro"}'), which a GIN index
-- (traits jsonb_path_ops) would serve; not made here, as every profile write would pay for it.
