import type pg from 'pg'

type Query = <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => Promise<pg.QueryResult<R>>

/**
 * One row of the funnel_progress table (store/migrations/0008_funnels.sql): a user's progress in
 * one funnel version as the funnel step last published it (`FunnelProgress`, schemas/funnel.ts).
 * Times are ms since the epoch.
 */
export interface FunnelProgressRow {
  project: string
  funnelId: string
  funnelVersion: number
  canonicalId: string
  /** The message's version: a row is replaced only by a higher one. */
  version: number
  level: number
  steps: number
  status: 'converted' | 'in_progress' | 'dropped' | 'none'
  /** Event time of each step reached (`level` entries). */
  stepTimes: number[]
  breakdown: string | null
  asOf: number
  mergedInto: string | null
}

const COLUMNS = [
  ['project', 'text'], ['funnel_id', 'text'], ['funnel_version', 'int'], ['canonical_id', 'text'], ['version', 'int'], ['level', 'smallint'],
  ['steps', 'smallint'], ['status', 'text'], ['step_times', 'timestamptz[]'], ['breakdown', 'text'], ['as_of', 'timestamptz'], ['merged_into', 'text'],
] as const
const names = COLUMNS.map(([column]) => column).join(', ')
// unnest flattens an array of arrays, so each row's step times travel as one array literal (text)
// and are cast per row
const parameters = COLUMNS.map(([, type], i) => `$${i + 1}::${type === 'timestamptz[]' ? 'text' : type}[]`).join(', ')
const selected = COLUMNS.map(([column, type]) => (type === 'timestamptz[]' ? `t.${column}::timestamptz[]` : `t.${column}`)).join(', ')
// DISTINCT ON keeps the newest version of a (funnel version, user) that appears twice in one batch:
// one statement may not update a row twice
const UPSERT_FUNNEL_PROGRESS = `INSERT INTO funnel_progress (${names})
  SELECT DISTINCT ON (t.project, t.funnel_id, t.funnel_version, t.canonical_id) ${selected}
  FROM unnest(${parameters}) AS t(${names})
  ORDER BY t.project, t.funnel_id, t.funnel_version, t.canonical_id, t.version DESC
  ON CONFLICT (project, funnel_id, funnel_version, canonical_id) DO UPDATE SET
    ${COLUMNS.slice(4).map(([column]) => `${column} = EXCLUDED.${column}`).join(', ')}, updated_at = now()
  WHERE funnel_progress.version < EXCLUDED.version`

/** Step times as a PostgreSQL array literal of ISO timestamps. */
const timesLiteral = (times: readonly number[]) => `{${times.map((time) => `"${new Date(time).toISOString()}"`).join(',')}}`

export function funnelProgressStore(query: Query) {
  return {
    /**
     * Upserts progress rows; a stored row is replaced only by a higher version (the consumer rule
     * of docs/funnels.md), so a redelivered or replayed message never takes a user back. Returns
     * the rows written.
     */
    async upsertFunnelProgress(rows: readonly FunnelProgressRow[]): Promise<number> {
      if (rows.length === 0) return 0
      const columns: unknown[][] = COLUMNS.map(() => new Array(rows.length))
      rows.forEach((r, i) => {
        const values = [r.project, r.funnelId, r.funnelVersion, r.canonicalId, r.version, r.level, r.steps, r.status, timesLiteral(r.stepTimes),
          r.breakdown, new Date(r.asOf), r.mergedInto]
        values.forEach((value, c) => (columns[c]![i] = value))
      })
      return (await query(UPSERT_FUNNEL_PROGRESS, columns)).rowCount ?? 0
    },
  }
}
