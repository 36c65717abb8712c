/**
 * bench-funnels, the backfill from the events table (docs/funnels.md, "Backfill" and "Speed"): a
 * NEW funnel over --events events held in a real PostgreSQL server, beyond SEG_ENRICHED's
 * retention (the stream begins after the last of them), so the backfill worker reads them all
 * from the table.
 *
 * 1. A PostgreSQL server started here (its own cluster in a temporary directory, with settings a
 *    deployment of this size would have) and a nats-server; the events loaded by COPY from a
 *    generated stream (bench/funnels-backfill-data.ts), indexes built after.
 * 2. SEG_ENRICHED made to begin after the last row's sequence; one `funnel` step instance running
 *    (the worker hands its seeds over once the step has taken the definition).
 * 3. Baseline, in the same run: the same query read the same way (readHistory: COPY, rows split
 *    and decoded) with nothing done with the rows; then read again with each user's events matched
 *    and their seed encoded, nothing published (where the time goes).
 * 4. The backfill: a funnels row with a pending backfill and its control message, as the API
 *    creates a funnel; the worker (as operators/steps.ts runs it) claims it, reads the table,
 *    matches each user's events, publishes the seeds: `backfill_s` from the row's creation until
 *    it says done.
 *
 *   node bench/funnels-backfill.ts [--events 10000000] [--users <events/10>] [--seed 1] [--stream-gb 2]
 *
 * Last line: JSON.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { connectNats } from '../broker/connect.ts'
import { PipelinedPublisher } from '../broker/publisher.ts'
import { createLogger } from '../config/logger.ts'
import { seedMessage, type Seed } from '../operators/funnel/backfill.ts'
import { createTableSeeder, historyColumnsOf } from '../operators/funnel/backfill-table.ts'
import { readHistory } from '../operators/funnel/backfill-table-store.ts'
import { startFunnelBackfill } from '../operators/funnel/backfill-worker.ts'
import { startInstance } from '../operators/runtime/instance.ts'
import { OPERATORS, type StepContext } from '../operators/steps.ts'
import { DEFAULT_SETTINGS } from '../projects/model.ts'
import type { FunnelDefinition } from '../schemas/funnel.ts'
import { openStore } from '../store/store.ts'
import { applyTopology } from '../topology/apply.ts'
import { stageFilter, type Stage } from '../topology/subjects.ts'
import { startNats } from '../test/harness/nats.ts'
import { startBenchPostgres } from './explore-postgres.ts'
import { loadBackfillEvents } from './funnels-backfill-data.ts'
import { benchTopology } from './topology.ts'
import { defineBackfilledFunnel, watchBackfill } from './funnels-backfill-watch.ts'
import { FUNNELS, KEY_GROUPS } from './funnels-workload.ts'

const { values } = parseArgs({ options: { events: { type: 'string', default: '10000000' }, users: { type: 'string' }, seed: { type: 'string', default: '1' }, 'stream-gb': { type: 'string', default: '2' }, 'timeout-s': { type: 'string', default: '1800' } } })
const EVENTS = Number(values.events)
const USERS = Number(values.users ?? Math.max(1, Math.round(EVENTS / 10)))
const TIMEOUT_MS = Number(values['timeout-s']) * 1000
const PROJECT = 'bench'
const logger = createLogger('warn')
const say = (line: string) => console.log(`[bench-funnels backfill] ${line}`)
const n = (value: number) => Math.round(value).toLocaleString('en-US')
const cpuSeconds = (since: NodeJS.CpuUsage) => {
  const used = process.cpuUsage(since)
  return (used.user + used.system) / 1e6
}

/** The purchase funnel of the workload (filters, an exclusion, a breakdown), with a filter on enrich's context too. */
const definition: FunnelDefinition = {
  ...FUNNELS[2]!, id: 'backfilled', name: 'Purchase, defined after the data',
  steps: FUNNELS[2]!.steps.map((step, index) => (index === 0 ? { ...step, filters: [{ property: '$device', operator: 'neq', value: 'tablet' }] } : step)),
}

const dir = await mkdtemp(join(tmpdir(), 'segstream-bench-backfill-'))
const [nats, database] = await Promise.all([
  startNats(),
  startBenchPostgres(dir, { shared_buffers: '1GB', maintenance_work_mem: '512MB', max_wal_size: '16GB', checkpoint_timeout: '30min', effective_cache_size: '8GB' }),
])
const nc = await connectNats(nats.url, 'bench-funnels-backfill', logger)
const topology = benchTopology(['SEG_BACKFILL', 'SEG_FUNNELS'], Number(values['stream-gb']) * 1024 ** 3)
const store = await openStore({ url: database.url, poolSize: 4, logger })
// loading and index builds take minutes: a pool without the store's statement timeout
const loader = new pg.Pool({ connectionString: database.url, max: 2 })
const publisher = new PipelinedPublisher(nc, { timeoutMs: 60_000 })
const streamOf = (stage: Stage) => topology.streams.find((candidate) => candidate.subjects.includes(stageFilter(stage)))!.name
try {
  await applyTopology(nc, topology, { keyGroups: KEY_GROUPS })
  await store.migrate()

  // 1. the table
  say(`loading ${n(EVENTS)} events of ${n(USERS)} users into a real PostgreSQL server by COPY`)
  const loaded = await loadBackfillEvents(loader, { seed: Number(values.seed), users: USERS, events: EVENTS, project: PROJECT, keyGroups: KEY_GROUPS }, (rows) => say(`  ${n(rows)} rows sent`))
  say(`loaded: ${n(loaded.events)} rows (${n(loaded.botEvents)} of bots) in ${loaded.copySeconds.toFixed(1)} s (${n(loaded.events / loaded.copySeconds)} rows/s), indexes ${loaded.indexSeconds.toFixed(1)} s, VACUUM ANALYZE ${loaded.analyzeSeconds.toFixed(1)} s; table and indexes ${n(loaded.tableMb)} MB`)

  // 2. SEG_ENRICHED begins after the last row (its older messages gone by retention); the funnel step runs
  const jsm = await (await import('@nats-io/jetstream')).jetstreamManager(nc)
  await jsm.streams.purge(streamOf('enriched'), { seq: EVENTS + 1 })
  const latenessOf = () => DEFAULT_SETTINGS.allowedLatenessMs
  const instance = startInstance({
    nc, publisher, operator: OPERATORS.funnel!({ keyGroups: KEY_GROUPS } as StepContext), step: topology.steps.find((step) => step.stepId === 'funnel')!, topology, keyGroups: KEY_GROUPS, logger,
    idleTtlMs: Number.POSITIVE_INFINITY, alignedStreams: [streamOf('enriched'), streamOf('sessions')], latenessOf,
  })
  await instance.start()

  // 3. the baseline: the same rows by the same query, nothing done with them
  const columns = historyColumnsOf(definition)
  const query = { project: PROJECT, enrichedBefore: EVENTS + 1, sessionsBefore: 1, columns }
  const baselineCpu = process.cpuUsage()
  const baselineStarted = performance.now()
  const baselineRows = await readHistory(store.pool, query, () => undefined)
  const baselineSeconds = (performance.now() - baselineStarted) / 1000
  const baselineCpuSeconds = cpuSeconds(baselineCpu)
  say(`baseline: the backfill's query read alone (COPY, rows split and decoded, nothing matched): ${n(baselineRows)} rows (of the funnel's ${columns.names!.length} event names, bots left out) in ${baselineSeconds.toFixed(1)} s = ${n(baselineRows / baselineSeconds)} rows/s; ${baselineCpuSeconds.toFixed(1)} s of CPU here`)

  // where the time goes: the same read with each user's events matched and the seed encoded, nothing published
  const seeder = createTableSeeder({ project: PROJECT, funnelId: definition.id, version: 1, definition, enrichedStream: streamOf('enriched'), sessionsStream: streamOf('sessions') })
  let seedBytes = 0
  let seedCount = 0
  const encodeSeed = (seed: Seed | undefined) => {
    if (seed === undefined) return
    seedBytes += seedMessage(PROJECT, seed, seed.user, KEY_GROUPS).data.length
    seedCount++
  }
  const matchStarted = performance.now()
  await readHistory(store.pool, query, (rows) => {
    for (const row of rows) encodeSeed(seeder.add(row))
  })
  encodeSeed(seeder.end())
  const matchSeconds = (performance.now() - matchStarted) / 1000
  say(`read and matched, seeds encoded, nothing published: ${matchSeconds.toFixed(1)} s = ${n(baselineRows / matchSeconds)} rows/s; ${n(seedCount)} seeds, ${n(seedBytes / Math.max(1, seedCount))} B each on average`)

  // 4. the backfill, as the API creates a funnel
  const backfillCpu = process.cpuUsage()
  const started = performance.now()
  await defineBackfilledFunnel(store.pool, publisher, PROJECT, KEY_GROUPS, definition)
  const worker = startFunnelBackfill({ nc, publisher, pool: store.pool, topology, keyGroups: KEY_GROUPS, logger, latenessOf, idleTtlMs: Number.POSITIVE_INFINITY, pollMs: 100 })
  let peakRss = process.memoryUsage().rss
  const { row, phases } = await watchBackfill(store.pool, PROJECT, definition.id, {
    started, timeoutMs: TIMEOUT_MS, printEveryMs: 10_000,
    print: (progress) => say(`backfill: ${progress.phase}, ${n(progress.done)} / ${n(progress.total)}`),
    onPoll: () => (peakRss = Math.max(peakRss, process.memoryUsage().rss)),
  })
  const seconds = (performance.now() - started) / 1000
  const usedCpu = cpuSeconds(backfillCpu)
  await worker.stop()
  await instance.stop()
  if (row?.state !== 'done') throw new Error(`the backfill did not end done: ${JSON.stringify(row)}`)
  const tableRows = row.table?.events ?? 0
  const round = (value: number) => Number(value.toFixed(1))
  say(`backfill: done in ${seconds.toFixed(1)} s for ${n(tableRows)} events in the table (${n(tableRows / seconds)} events/s), ${n(row.done)} rows and messages read, ${n(row.seeds ?? 0)} users seeded; phases at s: ${JSON.stringify(Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, round(v)])))}; CPU ${usedCpu.toFixed(1)} s in this process (worker and step), peak RSS ${n(peakRss / 1e6)} MB; baseline read ${baselineSeconds.toFixed(1)} s (${(seconds / baselineSeconds).toFixed(2)} times it); target < 120 s for 10,000,000`)
  console.log(JSON.stringify({
    backfill_events: tableRows, backfill_users: USERS, backfill_s: round(seconds), backfill_events_per_s: Math.round(tableRows / seconds),
    backfill_rows_read: baselineRows, backfill_seeds: row.seeds ?? 0, backfill_cpu_s: round(usedCpu), backfill_peak_rss_mb: Math.round(peakRss / 1e6),
    backfill_phases_s: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, round(v)])),
    backfill_baseline_read_s: round(baselineSeconds), backfill_read_match_s: round(matchSeconds), backfill_seed_mean_bytes: Math.round(seedBytes / Math.max(1, seedCount)), backfill_baseline_rows_per_s: Math.round(baselineRows / baselineSeconds),
    backfill_load_copy_s: round(loaded.copySeconds), backfill_load_rows_per_s: Math.round(loaded.events / loaded.copySeconds), backfill_load_index_s: round(loaded.indexSeconds), backfill_table_mb: loaded.tableMb,
  }))
} finally {
  publisher.close()
  await nc.close()
  await store.close()
  await loader.end()
  await Promise.all([nats.close(), database.stop()])
  await rm(dir, { recursive: true, force: true })
}
