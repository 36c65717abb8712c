-- Funnel definitions as the API saved them (docs/funnels.md). Each change bumps `version`,
-- the version of the control message that carried the definition to the funnel step; a
-- deleted funnel keeps its row with deleted_at set, so its id's versions never go back.
CREATE TABLE IF NOT EXISTS funnels (
  project    text        NOT NULL,
  id         text        NOT NULL,
  name       text        NOT NULL,
  -- the FunnelDefinition (schemas/funnel.ts), id included
  definition jsonb       NOT NULL,
  version    integer     NOT NULL DEFAULT 1,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz,
  -- backfill over history of this version: {"state": "pending"|"running"|"done"|"failed",
  -- "done": n, "total": n, "error"?: text}; null when none was asked for
  backfill   jsonb,
  PRIMARY KEY (project, id)
);

-- Each user's current progress in each funnel version, as the funnel step last published it
-- (FunnelProgress, schemas/funnel.ts). A row is replaced only by a higher version (the
-- consumer rule of docs/funnels.md), so a replay or a backfill never goes backwards.
-- status 'none' rows count for nothing (the user left the funnel or was merged).
CREATE TABLE IF NOT EXISTS funnel_progress (
  project        text        NOT NULL,
  funnel_id      text        NOT NULL,
  funnel_version integer     NOT NULL,
  canonical_id   text        NOT NULL,
  version        integer     NOT NULL,
  -- steps reached by the counted attempt, 0 to steps
  level          smallint    NOT NULL,
  steps          smallint    NOT NULL,
  -- 'converted' | 'in_progress' | 'dropped' | 'none'
  status         text        NOT NULL,
  -- event time of each step reached (level entries)
  step_times     timestamptz[] NOT NULL,
  breakdown      text,
  as_of          timestamptz NOT NULL,
  merged_into    text,
  updated_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (project, funnel_id, funnel_version, canonical_id)
);
CREATE INDEX IF NOT EXISTS funnel_progress_by_level ON funnel_progress (project, funnel_id, funnel_version, level, status);
