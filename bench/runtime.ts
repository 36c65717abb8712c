/**
 * make bench-runtime: one operator instance through the full runtime (consume ->
 * logic -> publish -> checkpoint), beside the baseline of one process publishing the
 * same number of messages with pipelined acks, in the same run. Then the same with
 * keyed state for 1,000,000 distinct keys. Last line: JSON.
 *
 *   node bench/runtime.ts [--events 300000] [--keys 1000000] [--users <keys>] [--only pass-through|keyed]
 *
 * The keyed phase sends --keys events of --users users (default: as many users as events,
 * so every event is a new key; fewer users show what writing each key once per checkpoint saves).
 *
 * BENCH_PROFILE=dir writes a .cpuprofile of each phase's runtime part (not its baseline) there.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { Session } from 'node:inspector/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { jetstreamManager } from '@nats-io/jetstream'
import { connectNats } from '../broker/connect.ts'
import { PipelinedPublisher } from '../broker/publisher.ts'
import { createLogger } from '../config/logger.ts'
import { startInstance } from '../operators/runtime/instance.ts'
import type { Operator } from '../operators/runtime/operator.ts'
import { encode } from '../schemas/codec.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type RawEventEnvelope } from '../schemas/envelope.ts'
import { applyTopology } from '../topology/apply.ts'
import { benchTopology } from './topology.ts'
import { deepFreeze, type Topology } from '../topology/model.ts'
import { keyGroupOf, stageFilter, subjectFor } from '../topology/subjects.ts'
import { startNats } from '../test/harness/nats.ts'
import { pipelinedPublishRate, type Prepared } from './baseline.ts'
import { serverCpu } from './proc.ts'

const { values } = parseArgs({ options: { events: { type: 'string', default: '300000' }, keys: { type: 'string', default: '1000000' }, users: { type: 'string' }, only: { type: 'string' } } })
const EVENTS = Number(values.events)
const KEYS = Number(values.keys)
const KEYED_USERS = Number(values.users ?? values.keys)
const KEY_GROUPS = 64
/** Baseline messages prepared at once. */
const BASELINE_SLICE = 100_000
const logger = createLogger('warn')

function topologyWith(stepId: string): Topology {
  const base = benchTopology(['SEG_RAW', 'SEG_ENRICHED'], 6 * 1024 ** 3)
  return deepFreeze({
    ...base,
    steps: [
      base.steps[0]!,
      { stepId, kind: 'operator' as const, description: 'benchmark', module: 'bench', inputs: [stageFilter('raw')], outputs: [stageFilter('enriched'), stageFilter('dlq')], consumer: { maxAckPending: 10_000, ackWaitMs: 30_000, batchSize: 1_000 } },
    ],
  })
}

const forward = (input: RawEventEnvelope, name: string): EnrichedEventEnvelope => ({
  v: ENVELOPE_VERSION, type: 'enriched_event', project: input.project, id: input.id, time: input.time, key: input.key, keyGroup: input.keyGroup,
  source: input.source, origin: { stream: 'SEG_RAW', seq: 0 }, data: { name, canonicalId: input.key, message: input.data },
})

const passthrough: Operator<null, RawEventEnvelope> = {
  stepId: 'passthrough', stateless: true, init: () => null,
  toInput: (envelope) => envelope as RawEventEnvelope, keyOf: (input) => input.key,
  onEvent: (state, input) => ({ state, emit: [{ stage: 'enriched', project: input.project, keyGroup: input.keyGroup, envelope: forward(input, input.data.event ?? '') }] }),
}

const counting: Operator<{ n: number }, RawEventEnvelope> = {
  stepId: 'counting', init: () => ({ n: 0 }),
  toInput: (envelope) => envelope as RawEventEnvelope, keyOf: (input) => input.key,
  onEvent: (state, input) => ({ state: { n: state.n + 1 }, emit: [{ stage: 'enriched', project: input.project, keyGroup: input.keyGroup, envelope: forward(input, `count:${state.n + 1}`) }] }),
}

/** Input messages `from` .. `from + count - 1` of a phase. */
function envelopes(project: string, from: number, count: number, users: number): Prepared[] {
  return Array.from({ length: count }, (_, index) => {
    const i = from + index
    const user = `user-${i % users}`
    const keyGroup = keyGroupOf(user, KEY_GROUPS)
    const time = 1_557_000_000_000 + i
    const envelope: RawEventEnvelope = {
      v: ENVELOPE_VERSION, type: 'raw_event', project, id: `m-${i}`, time, key: user, keyGroup, source: 'live',
      data: { type: 'track', messageId: `m-${i}`, anonymousId: user, event: 'click_event1', properties: { plan: 'pro', i }, timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString() },
    }
    return { subject: subjectFor(project, 'raw', keyGroup), data: encode(envelope), id: `${project}:m-${i}` }
  })
}

/** A full garbage collection, so the peak RSS that follows is the runtime's, not the baseline's garbage. */
function collectGarbage() {
  setFlagsFromString('--expose-gc')
  ;(runInNewContext('gc') as () => void)()
}

/** Starts the V8 profiler when BENCH_PROFILE names a folder; the returned function writes the profile. */
async function startProfile(): Promise<((name: string) => Promise<void>) | undefined> {
  const dir = process.env.BENCH_PROFILE
  if (!dir) return undefined
  const session = new Session()
  session.connect()
  await session.post('Profiler.enable')
  await session.post('Profiler.start')
  return async (name) => {
    const { profile } = await session.post('Profiler.stop')
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, `runtime-${name}.cpuprofile`), JSON.stringify(profile))
    session.disconnect()
  }
}

/**
 * Rates swing with whatever else runs on the two cores (the baseline from 26,000 to
 * 86,000/s here); CPU time per event swings much less, so both are printed.
 */
function cpuPerEvent(clientMicros: number, serverMicros: number, events: number) {
  return { client: Math.round(clientMicros / events), server: Math.round(serverMicros / events) }
}

async function phase(name: string, operator: Operator<any, RawEventEnvelope>, project: string, count: number, users: number) {
  const nats = await startNats()
  const nc = await connectNats(nats.url, 'bench', logger)
  const topology = topologyWith(operator.stepId)
  await applyTopology(nc, topology, { keyGroups: KEY_GROUPS })
  const publisher = new PipelinedPublisher(nc, { timeoutMs: 60_000 })
  const server = serverCpu(nats.storeDir)
  // prepared a slice at a time, so the runtime's memory below is not the prepared messages'
  let publishing = 0
  let publishingCpu = 0
  let publishingServerCpu = 0
  for (let from = 0; from < count; from += BASELINE_SLICE) {
    const messages = envelopes(project, from, Math.min(BASELINE_SLICE, count - from), users)
    const cpu = process.cpuUsage()
    const serverBefore = server()
    publishing += messages.length / (await pipelinedPublishRate(publisher, messages))
    const used = process.cpuUsage(cpu)
    publishingCpu += used.user + used.system
    publishingServerCpu += server() - serverBefore
  }
  const baseline = count / publishing
  const baselineCpu = cpuPerEvent(publishingCpu, publishingServerCpu, count)
  console.log(`${name}: baseline ${Math.round(baseline).toLocaleString('en')} acked publishes/s (${count.toLocaleString('en')} messages), CPU per message: ${baselineCpu.client} µs here, ${baselineCpu.server} µs in nats-server`)
  collectGarbage()
  const profiler = await startProfile()
  const cpu = process.cpuUsage()
  const serverBefore = server()
  const jsm = await jetstreamManager(nc)
  const startRss = process.memoryUsage().rss
  let peakRss = startRss
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 200)
  const started = performance.now()
  const instance = startInstance({ nc, publisher, operator, step: topology.steps[1]!, topology, keyGroups: KEY_GROUPS, logger, batchSize: 1_000 })
  await instance.start()
  const startedInMs = performance.now() - started
  let stored = 0
  let lastPrint = 0
  while (stored < count) {
    await new Promise((r) => setTimeout(r, 100))
    stored = (await jsm.streams.info('SEG_ENRICHED')).state.messages
    if (performance.now() - lastPrint > 5_000) {
      lastPrint = performance.now()
      console.log(`${name}: ${stored.toLocaleString('en')} / ${count.toLocaleString('en')} outputs`)
    }
    if (performance.now() - started > 600_000) break
  }
  const seconds = (performance.now() - started) / 1000
  const used = process.cpuUsage(cpu)
  const runtimeCpu = cpuPerEvent(used.user + used.system, server() - serverBefore, count)
  await profiler?.(project)
  await new Promise((r) => setTimeout(r, 1_000))
  const finalCount = (await jsm.streams.info('SEG_ENRICHED')).state.messages
  clearInterval(sampler)
  // what the instance holds (its keyed state above all), without the garbage RSS still counts
  collectGarbage()
  const heapMb = Math.round(process.memoryUsage().heapUsed / 1e6)
  console.log(`${name}: kernel counters ${JSON.stringify(instance.counters)}`)
  await instance.stop()
  publisher.close()
  await nc.close()
  await nats.close()
  const perS = finalCount >= count ? count / seconds : finalCount / seconds
  console.log(`${name}: ${Math.round(perS).toLocaleString('en')} events/s through the runtime (${Math.round(startedInMs)} ms of it taking the ${KEY_GROUPS} key groups), RSS ${Math.round(startRss / 1e6)} MB at start, ${Math.round(peakRss / 1e6)} MB at peak, live heap ${heapMb} MB at the end, CPU per event: ${runtimeCpu.client} µs here, ${runtimeCpu.server} µs in nats-server`)
  return { perS, baseline, peakRssMb: Math.round(peakRss / 1e6), heapMb, lost: Math.max(0, count - finalCount), duplicated: Math.max(0, finalCount - count), cpuUs: { baseline: baselineCpu, runtime: runtimeCpu } }
}

const skipped = { perS: 0, baseline: 0, peakRssMb: 0, heapMb: 0, lost: 0, duplicated: 0, cpuUs: undefined }
const pass = values.only === 'keyed' ? skipped : await phase('pass-through', passthrough, 'bench', EVENTS, 10_000)
const keyed = values.only === 'pass-through' ? skipped : await phase(`keyed state, ${KEYS.toLocaleString('en')} events of ${KEYED_USERS.toLocaleString('en')} keys`, counting, 'keyed', KEYS, KEYED_USERS)
console.log(JSON.stringify({
  events_per_s: Math.round(pass.perS),
  pipelined_publish_per_s: Math.round(pass.baseline),
  ratio: pass.baseline ? Number((pass.perS / pass.baseline).toFixed(3)) : 0,
  peak_rss_mb: pass.peakRssMb,
  heap_mb: pass.heapMb,
  lost: pass.lost,
  duplicated: pass.duplicated,
  cpu_us_per_event: pass.cpuUs,
  keyed_state: { events: KEYS, keys: KEYED_USERS, events_per_s: Math.round(keyed.perS), pipelined_publish_per_s: Math.round(keyed.baseline), peak_rss_mb: keyed.peakRssMb, heap_mb: keyed.heapMb, lost: keyed.lost, duplicated: keyed.duplicated, cpu_us_per_event: keyed.cpuUs },
  target_events_per_s: 50_000,
}))
