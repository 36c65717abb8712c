/**
 * bench-funnels through the runtime, on a real nats-server and a real PostgreSQL server:
 *
 * 1. runtime: the 10 funnels of bench/funnels-workload.ts defined by control messages
 *    (publishControl, as the API sends them), then --events seeded enriched events of --users users
 *    published into SEG_ENRICHED (with some late and duplicated; the broker drops the duplicates by
 *    message id, as in the system), timed as the run's baseline (pipelined publish, bench/baseline.ts).
 *    One watermark per key group on the sessions stage at the last event's time stands in for
 *    sessionize (not run here), so the step's event time follows the events and its timers fire.
 *    Then one `funnel` step instance (startInstance with the step's operator, aligned streams,
 *    lateness and idle TTL as operators/steps.ts starts it) consumes them: the time from its start
 *    until its kernel has applied every stored event (its counters).
 * 2. backfill from the stream (`stream_backfill_*`): a new funnel (a funnels row with a pending
 *    backfill and its control message, as the API creates it) while the step runs; the backfill
 *    worker (operators/funnel/backfill-worker.ts, as operators/steps.ts runs it beside the step)
 *    replays SEG_ENRICHED up to the control message, waits for the step's checkpoints to hold the
 *    version, publishes the seeds. Timed per phase from the row's progress. No funnel here uses
 *    `$session_start`, so SEG_SESSIONS is not read; the stream holds the whole history, so the
 *    events table is not read (bench/funnels-backfill.ts measures that: `backfill_s`).
 *
 *   node bench/funnels-runtime.ts [--events 300000] [--users 30000] [--seed 1] [--timeout-s 900] [--stream-gb 1]
 *
 * --stream-gb is each stream's size limit (the server must have it free for every stream); 10,000,000
 * events need about 5.
 *
 * Last line: JSON.
 */
import { parseArgs } from 'node:util'
import { jetstreamManager } from '@nats-io/jetstream'
import { connectNats } from '../broker/connect.ts'
import { PipelinedPublisher } from '../broker/publisher.ts'
import { createLogger } from '../config/logger.ts'
import { startFunnelBackfill } from '../operators/funnel/backfill-worker.ts'
import { publishControl } from '../operators/runtime/control.ts'
import { startInstance } from '../operators/runtime/instance.ts'
import { OPERATORS, type StepContext } from '../operators/steps.ts'
import { DEFAULT_SETTINGS } from '../projects/model.ts'
import { encode } from '../schemas/codec.ts'
import { ENVELOPE_VERSION, type WatermarkEnvelope } from '../schemas/envelope.ts'
import type { FunnelDefinition } from '../schemas/funnel.ts'
import { openStore } from '../store/store.ts'
import { applyTopology } from '../topology/apply.ts'
import { segstreamTopology } from '../topology/definition.ts'
import { stageFilter, subjectFor, type Stage } from '../topology/subjects.ts'
import { startNats } from '../test/harness/nats.ts'
import { startPostgres } from '../test/harness/postgres.ts'
import { pipelinedPublishRate, type Prepared } from './baseline.ts'
import { defineBackfilledFunnel, watchBackfill } from './funnels-backfill-watch.ts'
import { FUNNELS, KEY_GROUPS, makeEvents } from './funnels-workload.ts'
import { serverCpu } from './proc.ts'

const { values } = parseArgs({ options: { events: { type: 'string', default: '300000' }, users: { type: 'string' }, seed: { type: 'string', default: '1' }, 'timeout-s': { type: 'string', default: '900' }, 'stream-gb': { type: 'string', default: '1' } } })
const EVENTS = Number(values.events)
const USERS = Number(values.users ?? Math.max(1, Math.round(EVENTS / 10)))
const TIMEOUT_MS = Number(values['timeout-s']) * 1000
const PROJECT = 'bench'
const SLICE = 100_000
const logger = createLogger('warn')
const say = (line: string) => console.log(`[bench-funnels runtime] ${line}`)
const n = (value: number) => Math.round(value).toLocaleString('en-US')
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const [nats, database] = await Promise.all([startNats(), startPostgres()])
const nc = await connectNats(nats.url, 'bench-funnels', logger)
const topology = segstreamTopology({ streamMaxBytes: Number(values['stream-gb']) * 1024 ** 3 })
const store = await openStore({ url: database.url, poolSize: 4, logger })
try {
  // streams too large for the disk fail here: the servers must not outlive the bench
  await applyTopology(nc, topology, { keyGroups: KEY_GROUPS })
  await store.migrate()
} catch (error) {
  await nc.close()
  await store.close()
  await Promise.all([nats.close(), database.close()])
  throw error
}
const publisher = new PipelinedPublisher(nc, { timeoutMs: 60_000 })
const jsm = await jetstreamManager(nc)
const server = serverCpu(nats.storeDir)
const step = topology.steps.find((candidate) => candidate.stepId === 'funnel')!
const streamOf = (stage: Stage) => topology.streams.find((candidate) => candidate.subjects.includes(stageFilter(stage)))!.name
const latenessOf = () => DEFAULT_SETTINGS.allowedLatenessMs

try {
  // 1. the definitions, then the events
  for (const definition of FUNNELS) {
    await publishControl(publisher, { project: PROJECT, stages: ['enriched', 'sessions'], keyGroups: KEY_GROUPS, time: Date.now(), control: { stepId: 'funnel', name: definition.id, version: 1, definition } })
  }
  const events = makeEvents(Number(values.seed), USERS, EVENTS, PROJECT, KEY_GROUPS)
  const sent = events.length
  let publishSeconds = 0
  let publishCpu = 0
  let publishServerCpu = 0
  for (let from = 0; from < events.length; from += SLICE) {
    const slice: Prepared[] = events.slice(from, from + SLICE).map((event) => ({ subject: subjectFor(PROJECT, 'enriched', event.keyGroup), data: encode(event), id: `${PROJECT}:${event.id}` }))
    const cpu = process.cpuUsage()
    const serverBefore = server()
    publishSeconds += slice.length / (await pipelinedPublishRate(publisher, slice))
    const used = process.cpuUsage(cpu)
    publishCpu += used.user + used.system
    publishServerCpu += server() - serverBefore
  }
  // The step's event time is the lesser of its two input streams' (enriched, sessions: ALIGNED_STAGES
  // in operators/steps.ts). Nothing runs sessionize here, so one watermark per key group on the
  // sessions stage at the last event's time stands in for a sessions stream keeping pace: the
  // enriched events then move the step's event time and its timers fire, as they would live.
  const lastTime = events.reduce((largest, event) => Math.max(largest, event.time), 0)
  await Promise.all(Array.from({ length: KEY_GROUPS }, (_, keyGroup) => {
    const envelope: WatermarkEnvelope = { v: ENVELOPE_VERSION, type: 'watermark', project: PROJECT, id: `watermark:${lastTime}`, time: lastTime, key: '', keyGroup, source: 'live' }
    return publisher.publish(subjectFor(PROJECT, 'sessions', keyGroup), encode(envelope), `${PROJECT}:watermark:sessions:${lastTime}:${keyGroup}`)
  }))
  events.length = 0
  const baseline = sent / publishSeconds
  const stored = (await jsm.streams.info(streamOf('enriched'))).state.messages - FUNNELS.length * KEY_GROUPS
  say(`baseline: ${n(baseline)} acked publishes/s (pipelined, ${n(sent)} messages of ${n(USERS)} users; ${n(stored)} events stored, the duplicates dropped by id), CPU per message ${Math.round(publishCpu / sent)} µs here, ${Math.round(publishServerCpu / sent)} µs in nats-server`)

  // the funnel step, as operators/steps.ts starts it
  const context = { keyGroups: KEY_GROUPS } as StepContext
  const cpu = process.cpuUsage()
  const serverBefore = server()
  const startRss = process.memoryUsage().rss
  let peakRss = startRss
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 200)
  const started = performance.now()
  const instance = startInstance({
    nc, publisher, operator: OPERATORS.funnel!(context), step, topology, keyGroups: KEY_GROUPS, logger,
    idleTtlMs: Number.POSITIVE_INFINITY, alignedStreams: [streamOf('enriched'), streamOf('sessions')], latenessOf,
  })
  await instance.start()
  let lastPrint = performance.now()
  const consumed = () => instance.counters.applied + instance.counters.deadLettered
  while (consumed() < stored && performance.now() - started < TIMEOUT_MS) {
    await sleep(100)
    if (performance.now() - lastPrint > 5_000) {
      lastPrint = performance.now()
      say(`${n(consumed())} / ${n(stored)} events applied`)
    }
  }
  const seconds = (performance.now() - started) / 1000
  const used = process.cpuUsage(cpu)
  clearInterval(sampler)
  const runtimePerS = consumed() / seconds
  const progress = (await jsm.streams.info(streamOf('funnels'))).state.messages
  say(`funnel step: ${n(consumed())} of ${n(stored)} events in ${seconds.toFixed(1)} s, ${n(runtimePerS)} events/s through the runtime (${(runtimePerS / baseline).toFixed(2)} of the baseline); ${n(progress)} progress messages in SEG_FUNNELS; kernel counters ${JSON.stringify(instance.counters)}; RSS ${Math.round(startRss / 1e6)} MB at start, ${Math.round(peakRss / 1e6)} MB at peak; CPU per event ${Math.round((used.user + used.system) / stored)} µs here, ${Math.round((server() - serverBefore) / stored)} µs in nats-server`)

  // 2. a new funnel over that history
  const definition: FunnelDefinition = { ...FUNNELS[2]!, id: 'backfilled', name: 'Purchase, defined after the data' }
  await defineBackfilledFunnel(store.pool, publisher, PROJECT, KEY_GROUPS, definition)
  const backfillCpu = process.cpuUsage()
  const backfillStarted = performance.now()
  const worker = startFunnelBackfill({ nc, publisher, pool: store.pool, topology, keyGroups: KEY_GROUPS, logger, latenessOf, idleTtlMs: Number.POSITIVE_INFINITY, pollMs: 100 })
  const { row, phases } = await watchBackfill(store.pool, PROJECT, definition.id, {
    started: backfillStarted, timeoutMs: TIMEOUT_MS, printEveryMs: 5_000,
    print: (progress) => say(`backfill: ${progress.phase}, ${n(progress.done)} / ${n(progress.total)} messages`),
  })
  const backfillSeconds = (performance.now() - backfillStarted) / 1000
  const backfillUsed = process.cpuUsage(backfillCpu)
  await worker.stop()
  if (row?.state !== 'done') throw new Error(`the backfill did not end done: ${JSON.stringify(row)}`)
  // the replay: from the claim until the worker waits for the step (the history read and computed)
  const replayFrom = phases['reading history'] ?? phases.starting ?? 0
  // (a phase shorter than the 100 ms poll is not seen: the replay ends at the first later phase seen)
  const replayEnd = phases['waiting for the funnel step to take the definition'] ?? phases['publishing seeds'] ?? phases.done ?? backfillSeconds
  const replaySeconds = replayEnd - replayFrom
  const replayPerS = row.done / replaySeconds
  say(`backfill: done, ${n(row.done)} messages read (${n(stored)} events), ${n(row.seeds ?? 0)} users seeded, ${row.late ?? 0} late; ${backfillSeconds.toFixed(1)} s in all (phases at s: ${JSON.stringify(Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, Number(v.toFixed(1))])))}); history replay ${replaySeconds.toFixed(1)} s = ${n(replayPerS)} events/s; CPU ${((backfillUsed.user + backfillUsed.system) / 1e6).toFixed(1)} s in this process (step and worker)`)
  // the replay scales with the events; the hand-over (the step's next checkpoint) does not, and the seeds scale with the users
  const rest = backfillSeconds - replaySeconds
  const projected = 10_000_000 / replayPerS + rest
  say(`backfill PROJECTION, not measured: 10,000,000 events at this run's replay rate (${n(replayPerS)} events/s) would replay in ~${n(10_000_000 / replayPerS)} s, ~${n(projected)} s with this run's other ${rest.toFixed(1)} s (hand-over, ${n(row.seeds ?? 0)} seeds); target < 120 s`)
  await instance.stop()
  console.log(JSON.stringify({
    runtime_events: stored, runtime_users: USERS, runtime_funnels: FUNNELS.length,
    runtime_events_per_s: Math.round(runtimePerS), runtime_pipelined_publish_per_s: Math.round(baseline), runtime_ratio: Number((runtimePerS / baseline).toFixed(3)),
    runtime_s: Number(seconds.toFixed(1)), runtime_peak_rss_mb: Math.round(peakRss / 1e6), runtime_progress_messages: progress, runtime_counters: instance.counters,
    stream_backfill_events: stored, stream_backfill_messages: row.done, stream_backfill_seeds: row.seeds ?? 0, stream_backfill_s: Number(backfillSeconds.toFixed(1)),
    stream_backfill_replay_s: Number(replaySeconds.toFixed(1)), stream_backfill_replay_events_per_s: Math.round(replayPerS),
    stream_backfill_projected_10m_s: Math.round(projected), stream_backfill_projected_note: 'projection from the measured replay rate, not a run at 10,000,000',
  }))
} finally {
  publisher.close()
  await nc.close()
  await store.close()
  await Promise.all([nats.close(), database.close()])
}
