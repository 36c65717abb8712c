/**
 * make bench-runtime: one operator instance through the full runtime (consume ->
 * logic -> publish -> checkpoint), beside the baseline of one process publishing the
 * same number of messages with pipelined acks, in the same run. Then the same with
 * keyed state for 1,000,000 distinct keys. Last line: JSON.
 *
 *   node bench/runtime.ts [--events 300000] [--keys 1000000]
 */
import { parseArgs } from 'node:util'
import { jetstreamManager } from '@nats-io/jetstream'
import { connectNats } from '../broker/connect.ts'
import { PipelinedPublisher } from '../broker/publisher.ts'
import { createLogger } from '../config/logger.ts'
import { startInstance } from '../operators/runtime/instance.ts'
import type { Operator } from '../operators/runtime/operator.ts'
import { encode } from '../schemas/codec.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type RawEventEnvelope } from '../schemas/envelope.ts'
import { applyTopology } from '../topology/apply.ts'
import { segstreamTopology } from '../topology/definition.ts'
import { deepFreeze, type Topology } from '../topology/model.ts'
import { keyGroupOf, stageFilter, subjectFor } from '../topology/subjects.ts'
import { startNats } from '../test/harness/nats.ts'
import { pipelinedPublishRate } from './baseline.ts'

const { values } = parseArgs({ options: { events: { type: 'string', default: '300000' }, keys: { type: 'string', default: '1000000' } } })
const EVENTS = Number(values.events)
const KEYS = Number(values.keys)
const KEY_GROUPS = 64
const logger = createLogger('warn')

function topologyWith(stepId: string): Topology {
  const base = segstreamTopology({ streamMaxBytes: 6 * 1024 ** 3 })
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

function envelopes(project: string, count: number, users: number) {
  return Array.from({ length: count }, (_, i) => {
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

async function phase(name: string, operator: Operator<any, RawEventEnvelope>, project: string, count: number, users: number) {
  const nats = await startNats()
  const nc = await connectNats(nats.url, 'bench', logger)
  const topology = topologyWith(operator.stepId)
  await applyTopology(nc, topology, { keyGroups: KEY_GROUPS })
  const publisher = new PipelinedPublisher(nc, { timeoutMs: 60_000 })
  const messages = envelopes(project, count, users)
  const baseline = await pipelinedPublishRate(publisher, messages)
  console.log(`${name}: baseline ${Math.round(baseline).toLocaleString('en')} acked publishes/s (${count.toLocaleString('en')} messages)`)
  const jsm = await jetstreamManager(nc)
  let peakRss = process.memoryUsage().rss
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 200)
  const started = performance.now()
  const instance = startInstance({ nc, publisher, operator, step: topology.steps[1]!, topology, keyGroups: KEY_GROUPS, logger, batchSize: 1_000 })
  await instance.start()
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
  await new Promise((r) => setTimeout(r, 1_000))
  const finalCount = (await jsm.streams.info('SEG_ENRICHED')).state.messages
  clearInterval(sampler)
  await instance.stop()
  publisher.close()
  await nc.close()
  await nats.close()
  const perS = finalCount >= count ? count / seconds : finalCount / seconds
  console.log(`${name}: ${Math.round(perS).toLocaleString('en')} events/s through the runtime, peak RSS ${Math.round(peakRss / 1e6)} MB`)
  return { perS, baseline, peakRssMb: Math.round(peakRss / 1e6), lost: Math.max(0, count - finalCount), duplicated: Math.max(0, finalCount - count) }
}

const pass = await phase('pass-through', passthrough, 'bench', EVENTS, 10_000)
const keyed = await phase(`keyed state, ${KEYS.toLocaleString('en')} keys`, counting, 'keyed', KEYS, KEYS)
console.log(JSON.stringify({
  events_per_s: Math.round(pass.perS),
  pipelined_publish_per_s: Math.round(pass.baseline),
  ratio: Number((pass.perS / pass.baseline).toFixed(3)),
  peak_rss_mb: pass.peakRssMb,
  lost: pass.lost,
  duplicated: pass.duplicated,
  keyed_state: { keys: KEYS, events_per_s: Math.round(keyed.perS), pipelined_publish_per_s: Math.round(keyed.baseline), peak_rss_mb: keyed.peakRssMb, lost: keyed.lost, duplicated: keyed.duplicated },
  target_events_per_s: 50_000,
}))
