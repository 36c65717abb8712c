-- Windowed aggregates (docs/aggregates.md). One row per partial: what one key group saw of one
-- window and group from one source, as the aggregates step last published it. A row is
-- replaced only by a higher version (the consumer rule), so a replay changes nothing. Plain
-- SQL on both targets: TimescaleDB and PostgreSQL give the same numbers.
CREATE TABLE IF NOT EXISTS aggregate_partials (
  project            text        NOT NULL,
  -- <definition>@<definitionVersion>|<window start>|<JSON [name, ...dimension values]>
  group_key          text        NOT NULL,
  source             text        NOT NULL,
  key_group          integer     NOT NULL,
  definition         text        NOT NULL,
  definition_version integer     NOT NULL,
  -- minute | hour | day | hopping
  window_kind        text        NOT NULL,
  window_start       timestamptz NOT NULL,
  window_end         timestamptz NOT NULL,
  name               text        NOT NULL,
  dimensions         jsonb       NOT NULL,
  count              bigint      NOT NULL,
  distinct_users     bigint      NOT NULL,
  exact              boolean     NOT NULL,
  final              boolean     NOT NULL,
  version            integer     NOT NULL,
  updated_at         timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (project, group_key, source, key_group)
);
CREATE INDEX IF NOT EXISTS aggregate_partials_by_window ON aggregate_partials (project, definition, window_start);

-- The rollup: partials of one window and group summed. Users are routed by canonical id, so the
-- partials of a group count disjoint users and distinct users add up too (one source at a time:
-- a user seen live and by an import is counted in both; filter on source for one).
CREATE OR REPLACE VIEW aggregates AS
  SELECT project, definition, definition_version, window_kind, window_start, window_end, name, dimensions, source,
         sum(count)::bigint AS count, sum(distinct_users)::bigint AS distinct_users,
         bool_and(exact) AS exact, bool_and(final) AS final
    FROM aggregate_partials
   GROUP BY project, group_key, source, definition, definition_version, window_kind, window_start, window_end, name, dimensions;
