/**
 * `--explain` of bench/explore.ts: runs each query once through a pool that records every
 * statement store/explore.ts sends, then EXPLAIN (ANALYZE, BUFFERS) of the slowest of them, so a
 * slow query shows its plan (what to index, or what to tell the API).
 */
import type pg from 'pg'
import type { Database } from '../store/explore.ts'

interface Statement {
  text: string
  values?: unknown[]
  ms: number
}

/** A Database whose clients record their statements into `log`. */
export function recordingDatabase(pool: pg.Pool, log: Statement[]): Database {
  return {
    async connect() {
      const client = await pool.connect()
      const query = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<pg.QueryResult>
      const recording = async (text: string, values?: unknown[]) => {
        const started = performance.now()
        try {
          return await query(text, values)
        } finally {
          log.push({ text, values, ms: performance.now() - started })
        }
      }
      return Object.assign(Object.create(client) as pg.PoolClient, { query: recording, release: client.release.bind(client) })
    },
  } as Database
}

/** The plan of the slowest statement `run` sent, as EXPLAIN prints it. */
export async function explainSlowest(pool: pg.Pool, run: (db: Database) => Promise<unknown>): Promise<string> {
  const log: Statement[] = []
  await run(recordingDatabase(pool, log))
  const slowest = log.filter((s) => /^\s*(SELECT|WITH)/i.test(s.text)).sort((a, b) => b.ms - a.ms)[0]
  if (!slowest) return '(no statement)'
  // the SET LOCALs it ran after (statement timeout, planner settings) hold for the EXPLAIN too
  const settings = log.slice(0, log.indexOf(slowest)).filter((s) => /^\s*SET\s/i.test(s.text)).map((s) => s.text)
  const client = await pool.connect()
  let plan: string[]
  try {
    await client.query('BEGIN READ ONLY')
    for (const setting of settings) await client.query(setting)
    plan = (await client.query<{ 'QUERY PLAN': string }>(`EXPLAIN (ANALYZE, BUFFERS) ${slowest.text}`, slowest.values)).rows.map((row) => row['QUERY PLAN'])
  } finally {
    await client.query('ROLLBACK').catch(() => {})
    client.release()
  }
  return `${slowest.text.replace(/\s+/g, ' ')}\n  -- ${JSON.stringify(slowest.values)}${settings.length ? `\n  -- after ${settings.join('; ')}` : ''}\n${plan.join('\n')}`
}
