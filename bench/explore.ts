/**
 * make bench-explore: the exploration queries on 1,000,000 users and 20,000,000 events in a real
 * PostgreSQL server, data loaded by COPY (bench/explore-data.ts). Prints each query's p50 and
 * p95; last line: JSON, worst p95 first.
 *
 *   node bench/explore.ts [--users 1000000] [--events 20000000] [--runs 30] [--warmup 3] [--seed 1]
 *                         [--keep] [--data-dir DIR] [--reload] [--pg name=value ...] [--explain] [--extra]
 *
 * Loading is the slow part (minutes at full scale): `--keep` keeps the cluster in
 * data/bench-explore, `--data-dir DIR` in DIR (implies --keep), and a later run on the same
 * directory with the same --users/--events/--seed reuses the loaded data (`--reload` forces a load).
 * Without either, the cluster lives in a temporary directory removed at the end.
 *
 * Every query runs --runs times after --warmup rounds, the queries taking turns round by round so
 * that noise from other work on the machine spreads over all of them. Beside them, in the same
 * rounds, two baselines: `SELECT count(*)` over the project's profiles and a primary-key look-up,
 * so a p95 can be judged against what this server does on this machine right now.
 * `--explain` then prints, on stderr, EXPLAIN (ANALYZE, BUFFERS) of each query's slowest statement.
 * `--extra` adds behavioural queries beyond the issue's set (bench/explore-queries.ts, 5b-5f): they
 * are timed, printed and listed in the JSON like the others.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createLogger } from '../config/logger.ts'
import { openStore } from '../store/store.ts'
import { loadDataset, type DatasetOptions } from './explore-data.ts'
import { explainSlowest } from './explore-explain.ts'
import { startBenchPostgres } from './explore-postgres.ts'
import { exploreQueries, extraBehaviouralQueries } from './explore-queries.ts'

const { values } = parseArgs({
  options: {
    users: { type: 'string', default: '1000000' },
    events: { type: 'string', default: '20000000' },
    seed: { type: 'string', default: '1' },
    runs: { type: 'string', default: '30' },
    warmup: { type: 'string', default: '3' },
    keep: { type: 'boolean', default: false },
    'data-dir': { type: 'string' },
    reload: { type: 'boolean', default: false },
    pg: { type: 'string', multiple: true, default: [] },
    explain: { type: 'boolean', default: false },
    extra: { type: 'boolean', default: false },
  },
})
const TARGET_P95_MS = 300
const dataset: DatasetOptions = { seed: Number(values.seed), users: Number(values.users), events: Number(values.events), project: 'bench', timezone: 'Europe/Berlin' }
const RUNS = Number(values.runs)
const WARMUP = Number(values.warmup)
for (const [flag, value] of Object.entries({ users: dataset.users, events: dataset.events, runs: RUNS, seed: dataset.seed })) {
  if (!Number.isInteger(value) || value < (flag === 'seed' ? 0 : 1)) throw new Error(`--${flag} must be a positive integer, got ${JSON.stringify(values[flag as keyof typeof values])}`)
}
/**
 * What a server for this size would be given (24 GiB machine): the tables and indexes (~15 GB at
 * full scale) do not fit in shared_buffers, the OS cache holds the rest. `--pg name=value` overrides.
 */
const SERVER_SETTINGS: Record<string, string> = {
  shared_buffers: '2GB',
  effective_cache_size: '12GB',
  work_mem: '64MB',
  maintenance_work_mem: '1GB',
  random_page_cost: '1.1',
  max_wal_size: '16GB',
  checkpoint_timeout: '30min',
  // loading only: COPY into a table truncated in the same transaction then writes no WAL
  wal_level: 'minimal',
  max_wal_senders: '0',
  ...Object.fromEntries(values.pg.map((setting) => {
    const at = setting.indexOf('=')
    if (at <= 0) throw new Error(`--pg expects name=value, got ${JSON.stringify(setting)}`)
    return [setting.slice(0, at), setting.slice(at + 1)]
  })),
}
const logger = createLogger('warn')
const log = (line: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`)
const keep = values.keep || values['data-dir'] !== undefined
const dir = values['data-dir'] ?? (keep ? join(import.meta.dirname, '..', 'data', 'bench-explore') : await mkdtemp(join(tmpdir(), 'segstream-explore-')))

const server = await startBenchPostgres(dir, SERVER_SETTINGS)
// an interrupted run still stops its server (a kept directory stays loadable: the load resumes from scratch)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    log(`${signal}: stopping PostgreSQL`)
    void server.stop().finally(() => process.exit(130))
  })
}
const store = await openStore({ url: server.url, target: 'postgres', poolSize: 4, statementTimeoutMs: 3_600_000, logger })
try {
  await store.migrate()
  const pool = store.pool
  log(`PostgreSQL ${new URL(server.url).host} on ${dir}`)

  // 1. The data: loaded, or reused from an earlier run on this directory
  await pool.query(`CREATE TABLE IF NOT EXISTS bench_explore_dataset (seed integer, users integer, events bigint, profile_event_days bigint, load_s real, loaded_at timestamptz DEFAULT now())`)
  const loaded = (await pool.query<{ seed: number; users: number; events: string; profile_event_days: string; load_s: number }>('SELECT * FROM bench_explore_dataset')).rows[0]
  let loadSeconds: number
  let profileEventDays: number
  const reused = !values.reload && loaded && loaded.seed === dataset.seed && loaded.users === dataset.users && Number(loaded.events) === dataset.events
  if (reused) {
    loadSeconds = loaded.load_s
    profileEventDays = Number(loaded.profile_event_days)
    log(`reusing the data loaded before (${loadSeconds.toFixed(0)} s to load): ${dataset.users.toLocaleString('en')} users, ${dataset.events.toLocaleString('en')} events`)
  } else {
    await pool.query('DELETE FROM bench_explore_dataset')
    log(`loading ${dataset.users.toLocaleString('en')} users and ${dataset.events.toLocaleString('en')} events by COPY`)
    const started = performance.now()
    let last = { time: started, events: 0, rows: 0 }
    const result = await loadDataset(pool, dataset, (progress) => {
      const now = performance.now()
      const rate = (progress.events - last.events) / ((now - last.time) / 1000)
      const rowRate = (progress.rows - last.rows) / ((now - last.time) / 1000)
      const average = progress.events / ((now - started) / 1000)
      const eta = average > 0 ? (dataset.events - progress.events) / average : Infinity
      process.stderr.write(`  ${progress.events.toLocaleString('en')} / ${dataset.events.toLocaleString('en')} events (${((100 * progress.events) / dataset.events).toFixed(1)}%), ${Math.round(rate).toLocaleString('en')} events/s, ${Math.round(rowRate).toLocaleString('en')} rows/s in all tables, ETA ${Math.ceil(eta)} s (then indexes)\n`)
      last = { time: now, events: progress.events, rows: progress.rows }
    })
    loadSeconds = (performance.now() - started) / 1000
    profileEventDays = result.profileEventDays
    log(`loaded in ${loadSeconds.toFixed(0)} s: COPY ${result.copySeconds.toFixed(0)} s, indexes ${result.indexSeconds.toFixed(0)} s, profile_event_series ${result.seriesSeconds.toFixed(0)} s (${result.series.toLocaleString('en')} rows), VACUUM ANALYZE ${result.analyzeSeconds.toFixed(0)} s; ${result.profiles.toLocaleString('en')} profiles, ${result.profileEventDays.toLocaleString('en')} profile_event_days rows, ${result.events.toLocaleString('en')} events; engagement ${JSON.stringify(result.levels)}`)
    await pool.query('INSERT INTO bench_explore_dataset (seed, users, events, profile_event_days, load_s) VALUES ($1, $2, $3, $4, $5)', [dataset.seed, dataset.users, dataset.events, result.profileEventDays, loadSeconds])
  }
  const sizes = (await pool.query<{ name: string; mb: string }>(
    `SELECT relname AS name, round(pg_total_relation_size(oid) / 1048576.0) AS mb FROM pg_class WHERE relname IN ('profiles', 'profile_event_days', 'profile_event_series', 'events') ORDER BY 1`,
  )).rows
  log(`sizes with indexes: ${sizes.map((s) => `${s.name} ${Number(s.mb).toLocaleString('en')} MB`).join(', ')}`)

  // 2. The queries, taking turns
  const context = { project: dataset.project, timezone: dataset.timezone, timeoutMs: 60_000 }
  const queries = [...await exploreQueries(pool, context), ...(values.extra ? await extraBehaviouralQueries(pool, context) : [])]
  const someone = (await pool.query<{ canonical_id: string }>('SELECT canonical_id FROM profiles WHERE project = $1 OFFSET $2 LIMIT 1', [dataset.project, Math.floor(dataset.users / 2)])).rows[0]!.canonical_id
  const baselines = [
    { name: 'baseline: count(*) of profiles', run: () => pool.query('SELECT count(*) FROM profiles WHERE project = $1', [dataset.project]) },
    { name: 'baseline: profile by primary key', run: () => pool.query('SELECT * FROM profiles WHERE project = $1 AND canonical_id = $2', [dataset.project, someone]) },
  ]
  const all = [...queries, ...baselines]
  const samples = new Map(all.map((q) => [q.name, [] as number[]]))
  for (let round = 0; round < WARMUP + RUNS; round++) {
    for (const query of all) {
      const started = performance.now()
      await query.run(pool)
      if (round >= WARMUP) samples.get(query.name)!.push(performance.now() - started)
    }
    if (round === WARMUP - 1 || (round >= WARMUP && (round - WARMUP + 1) % 10 === 0)) log(round < WARMUP ? `warmed up (${WARMUP} rounds)` : `${round - WARMUP + 1} / ${RUNS} rounds`)
  }
  if (values.explain) {
    for (const query of queries) log(`EXPLAIN ${query.name}:\n${await explainSlowest(pool, (db) => query.run(db))}\n`)
  }
  const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
  const round1 = (ms: number) => Math.round(ms * 10) / 10
  const figures = all.map((q) => {
    const sorted = samples.get(q.name)!.sort((a, b) => a - b)
    return { name: q.name, p95_ms: round1(percentile(sorted, 95)), p50_ms: round1(percentile(sorted, 50)) }
  })
  const width = Math.max(...figures.map((f) => f.name.length))
  for (const f of figures) console.log(`${f.name.padEnd(width)}  p50 ${String(f.p50_ms).padStart(7)} ms  p95 ${String(f.p95_ms).padStart(7)} ms${f.p95_ms > TARGET_P95_MS && !f.name.startsWith('baseline') ? '  over target' : ''}`)
  const measured = figures.filter((f) => !f.name.startsWith('baseline')).sort((a, b) => b.p95_ms - a.p95_ms)
  const [count, lookup] = figures.slice(queries.length)
  console.log(JSON.stringify({
    worst_p95_ms: measured[0]!.p95_ms,
    queries: measured,
    users: dataset.users,
    events: dataset.events,
    profile_event_days: profileEventDays,
    load_s: Math.round(loadSeconds),
    reused_data: Boolean(reused),
    runs: RUNS,
    baseline: { count_profiles_p95_ms: count!.p95_ms, count_profiles_p50_ms: count!.p50_ms, primary_key_p95_ms: lookup!.p95_ms, primary_key_p50_ms: lookup!.p50_ms },
    target_p95_ms: TARGET_P95_MS,
  }))
} finally {
  await store.close()
  // pool.end() resolves before the server has seen its clients go: a stop at once would be logged as connections lost
  await new Promise((resolve) => setTimeout(resolve, 300))
  await server.stop()
  if (!keep) await rm(dir, { recursive: true, force: true })
}
