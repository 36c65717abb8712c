/**
 * The funnel API's queries (store/funnels.ts, as the routes call them) on a real PostgreSQL server:
 * `--users` profiles over 12 acquisition months of 2019 and one funnel_progress row each for a
 * three-step funnel restricted to May (about 1/12 of the users), generated in SQL. Prints each
 * query's p50 and p95 over `--runs` rounds (queries taking turns); last line: JSON. The server has
 * bench/explore.ts's settings for this size (shared_buffers 2GB, work_mem 64MB, ...).
 *
 *   node bench/funnels-api.ts [--users 1000000] [--runs 15]
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createLogger } from '../config/logger.ts'
import { funnelAudience, funnelResult, funnelResultWithAllUsers, funnelTrends, streamFunnelAudience } from '../store/funnels.ts'
import { openStore } from '../store/store.ts'
import { startBenchPostgres } from './explore-postgres.ts'

const { values } = parseArgs({ options: { users: { type: 'string', default: '1000000' }, runs: { type: 'string', default: '15' } } })
const USERS = Number(values.users)
const RUNS = Number(values.runs)

// what bench/explore.ts gives a server of this size (24 GiB machine)
const dir = await mkdtemp(join(tmpdir(), 'segstream-bench-funnels-'))
const server = await startBenchPostgres(dir, { shared_buffers: '2GB', effective_cache_size: '12GB', work_mem: '64MB', random_page_cost: '1.1' })
const store = await openStore({ url: server.url, poolSize: 4, logger: createLogger('silent') })
try {
  await store.migrate()
  const pool = store.pool
  const started = performance.now()
  await pool.query(
    `INSERT INTO profiles (project, canonical_id, first_seen, last_seen, acquisition_month, acquisition_channel, country, events, sessions, version, profiles_seq)
     SELECT 'bench', 'u' || lpad(i::text, 8, '0'), '2019-01-01', '2019-12-31', '2019-' || lpad((i % 12 + 1)::text, 2, '0'),
            (ARRAY['direct', 'organic_search', 'paid_search', 'social', 'email'])[i % 5 + 1], (ARRAY['DE', 'FR', 'US', 'GB'])[i % 4 + 1], 10, 2, 1, 1
       FROM generate_series(1, $1::int) i`, [USERS])
  // levels 1, 2, 3 about 40 / 30 / 30 %; first step somewhere in 2019, then minutes to hours apart
  await pool.query(
    `INSERT INTO funnel_progress (project, funnel_id, funnel_version, canonical_id, version, level, steps, status, step_times, breakdown, as_of)
     SELECT 'bench', 'signup', 1, 'u' || lpad(i::text, 8, '0'), 1, level, 3,
            CASE WHEN level = 3 THEN 'converted' WHEN i % 3 = 0 THEN 'in_progress' ELSE 'dropped' END,
            (ARRAY[t0, t0 + (i % 97) * interval '1 minute', t0 + (i % 97) * interval '1 minute' + (i % 13) * interval '1 hour'])[1:level],
            (ARRAY['google', 'bing', 'newsletter', NULL])[i % 4 + 1], '2020-01-01'
       FROM (SELECT i, CASE WHEN i * 7919 % 10 < 4 THEN 1 WHEN i * 7919 % 10 < 7 THEN 2 ELSE 3 END AS level,
                    timestamptz '2019-01-01T00:00:00Z' + (i * 7919 % 31536000) * interval '1 second' AS t0
               FROM generate_series(1::bigint, $1::bigint) i) g`, [USERS])
  await pool.query(
    `INSERT INTO funnels (project, id, name, definition, version) VALUES ('bench', 'signup', 'Signup', $1::jsonb, 1)`,
    [JSON.stringify({ id: 'signup', name: 'Signup', steps: [{ event: '$session_start' }, { event: 'click_event1' }, { event: 'custom_event2' }], segment: { profile: [{ field: 'acquisition_month', value: '2019-05' }] }, breakdown: { property: '$channel' } })])
  await pool.query('ANALYZE')
  console.log(`[bench-funnels-api] loaded ${USERS.toLocaleString('en')} profiles and progress rows in ${((performance.now() - started) / 1000).toFixed(1)} s`)

  const context = { project: 'bench', timezone: 'Europe/Berlin', timeoutMs: 60_000 }
  const last = (await funnelAudience(pool, context, 'signup', { level: 2, status: 'dropped', limit: 1000 })).users.at(-1)!.canonicalId
  const queries: Record<string, () => Promise<unknown>> = {
    'result': () => funnelResult(pool, context, 'signup'),
    // the live view of a restricted funnel (gateway/live/restricted.ts): the same, plus all users' counts
    'result + all users (live)': () => funnelResultWithAllUsers(pool, context, 'signup'),
    'result breakdown': () => funnelResult(pool, context, 'signup', { breakdown: true }),
    'result one week': () => funnelResult(pool, context, 'signup', { from: '2019-05-06T00:00:00Z', to: '2019-05-13T00:00:00Z' }),
    'trends day': () => funnelTrends(pool, context, 'signup', { interval: 'day' }),
    'trends week': () => funnelTrends(pool, context, 'signup', { interval: 'week' }),
    'audience page 1': () => funnelAudience(pool, context, 'signup', { level: 2, status: 'dropped' }),
    'audience page after 1000': () => funnelAudience(pool, context, 'signup', { level: 2, status: 'dropped', cursor: Buffer.from(JSON.stringify({ after: last })).toString('base64url') }),
    'audience CSV, level 2': async () => {
      let rows = 0
      for await (const users of (await streamFunnelAudience(pool, context, 'signup', { level: 2 })).pages) rows += users.length
      return rows
    },
  }
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(queries).map((name) => [name, []]))
  for (let round = -1; round < RUNS; round++) {
    for (const [name, run] of Object.entries(queries)) {
      const start = performance.now()
      await run()
      if (round >= 0) times[name]!.push(performance.now() - start)
    }
  }
  const summary: Record<string, { p50: number; p95: number }> = {}
  for (const [name, list] of Object.entries(times)) {
    list.sort((a, b) => a - b)
    summary[name] = { p50: Math.round(list[Math.floor(list.length * 0.5)]!), p95: Math.round(list[Math.min(list.length - 1, Math.floor(list.length * 0.95))]!) }
    console.log(`[bench-funnels-api] ${name.padEnd(26)} p50 ${String(summary[name]!.p50).padStart(6)} ms   p95 ${String(summary[name]!.p95).padStart(6)} ms`)
  }
  const cohort = (await funnelResult(pool, context, 'signup')).entered
  console.log(JSON.stringify({ users: USERS, cohort, runs: RUNS, ms: summary }))
} finally {
  await store.close()
  await server.stop()
  await rm(dir, { recursive: true, force: true })
}
