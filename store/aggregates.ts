import type pg from 'pg'

/**
 * One partial aggregate as the aggregates step published it (store/migrations/0011_aggregates.sql,
 * docs/aggregates.md): what one key group saw of one window and group from one source.
 */
export interface AggregateRow {
  project: string
  groupKey: string
  source: string
  keyGroup: number
  definition: string
  definitionVersion: number
  windowKind: string
  /** ms since the epoch; end exclusive. */
  windowStart: number
  windowEnd: number
  name: string
  dimensions: Record<string, string>
  count: number
  distinctUsers: number
  exact: boolean
  final: boolean
  version: number
}

/** A window and group summed over its partials (the `aggregates` view): a partial's fields without which partial it is. */
export type AggregateTotal = Omit<AggregateRow, 'project' | 'groupKey' | 'keyGroup' | 'version'>

type WithClient = <T>(work: (client: pg.PoolClient) => Promise<T>) => Promise<T>

const COLUMNS = [
  ['project', 'text'], ['group_key', 'text'], ['source', 'text'], ['key_group', 'int'], ['definition', 'text'], ['definition_version', 'int'],
  ['window_kind', 'text'], ['window_start', 'timestamptz'], ['window_end', 'timestamptz'], ['name', 'text'], ['dimensions', 'jsonb'],
  ['count', 'bigint'], ['distinct_users', 'bigint'], ['exact', 'bool'], ['final', 'bool'], ['version', 'int'],
] as const
const names = COLUMNS.map(([column]) => column).join(', ')
const selected = COLUMNS.map(([column, type]) => (type === 'jsonb' ? `${column}::jsonb` : column)).join(', ')
// jsonb travels as text[] (pg has no jsonb[] literal encoder) and is cast per row
const params = COLUMNS.map(([, type], i) => `$${i + 1}::${type === 'jsonb' ? 'text' : type}[]`).join(', ')
const UPSERT = `INSERT INTO aggregate_partials (${names})
  SELECT ${selected} FROM unnest(${params}) AS t(${names})
  ON CONFLICT (project, group_key, source, key_group) DO UPDATE SET
    count = EXCLUDED.count, distinct_users = EXCLUDED.distinct_users, exact = EXCLUDED.exact,
    final = EXCLUDED.final, version = EXCLUDED.version, updated_at = now()
  WHERE aggregate_partials.version < EXCLUDED.version`

/** The newest version of each partial among `rows`: a batch may hold several, and one statement may not touch a row twice. */
function newestPerPartial(rows: readonly AggregateRow[]): AggregateRow[] {
  const newest = new Map<string, AggregateRow>()
  for (const row of rows) {
    const key = `${row.project}\u0000${row.groupKey}\u0000${row.source}\u0000${row.keyGroup}`
    const seen = newest.get(key)
    if (!seen || seen.version < row.version) newest.set(key, row)
  }
  return [...newest.values()]
}

export function aggregateStore(withClient: WithClient) {
  return {
    /** Upserts partials; a row is replaced only by a higher version (a replay changes nothing). Returns the rows written. */
    async upsertAggregates(rows: readonly AggregateRow[]): Promise<number> {
      if (rows.length === 0) return 0
      const newest = newestPerPartial(rows)
      const columns: unknown[][] = COLUMNS.map(() => new Array(newest.length))
      newest.forEach((r, i) => {
        const values = [r.project, r.groupKey, r.source, r.keyGroup, r.definition, r.definitionVersion, r.windowKind, new Date(r.windowStart),
          new Date(r.windowEnd), r.name, JSON.stringify(r.dimensions), r.count, r.distinctUsers, r.exact, r.final, r.version]
        values.forEach((value, c) => (columns[c]![i] = value))
      })
      return withClient(async (client) => (await client.query(UPSERT, columns)).rowCount ?? 0)
    },

    /** Totals of a project's windows of one definition from `from` (inclusive) to `to` (exclusive), ms: the `aggregates` view. */
    async aggregateTotals(project: string, definition: string, from: number, to: number): Promise<AggregateTotal[]> {
      return withClient(async (client) => {
        const result = await client.query<Record<string, unknown>>(
          `SELECT definition, definition_version, window_kind, window_start, window_end, name, dimensions::text AS dimensions, source,
                  count, distinct_users, exact, final
             FROM aggregates WHERE project = $1 AND definition = $2 AND window_start >= $3 AND window_start < $4
            ORDER BY window_start, name, dimensions::text, source`,
          [project, definition, new Date(from), new Date(to)])
        return result.rows.map((row) => ({
          definition: String(row.definition), definitionVersion: Number(row.definition_version), windowKind: String(row.window_kind),
          windowStart: (row.window_start as Date).getTime(), windowEnd: (row.window_end as Date).getTime(), name: String(row.name),
          dimensions: JSON.parse(String(row.dimensions)) as Record<string, string>, source: String(row.source),
          count: Number(row.count), distinctUsers: Number(row.distinct_users), exact: row.exact === true, final: row.final === true,
        }))
      })
    },
  }
}
