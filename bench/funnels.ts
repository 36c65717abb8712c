/**
 * make bench-funnels: the funnel operator's pure logic (docs/funnels.md) on seeded traffic:
 * 10 active funnels (sequential, strict and any order; filters, exclusions, a breakdown),
 * 100,000 users, events mostly in time order with some late and duplicated. The events are kept
 * as msgpack and decoded batch by batch, as the runtime receives them (a million decoded events
 * held at once would make the garbage collector, not the logic, the measure). Beside it, in the
 * same run, two baselines over the same batches: a loop that only iterates them and keeps a
 * state per user the way the runtime does, and the msgpack decoding itself. Last line: JSON.
 *
 *   node bench/funnels.ts [--users 100000] [--events 1000000] [--seed 1] [--rounds 3]
 */
import { parseArgs } from 'node:util'
import { applyFunnelControl, createFunnel, type FunnelDefinitions, type FunnelInput, type FunnelState } from '../operators/funnel/logic.ts'
import { decode, encode } from '../schemas/codec.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope } from '../schemas/envelope.ts'
import type { FunnelDefinition } from '../schemas/funnel.ts'
import { TimerHeap } from '../operators/runtime/heap.ts'
import { keyGroupOf } from '../topology/subjects.ts'

const { values } = parseArgs({ options: { users: { type: 'string', default: '100000' }, events: { type: 'string', default: '1000000' }, seed: { type: 'string', default: '1' }, rounds: { type: 'string', default: '3' } } })
const USERS = Number(values.users)
const EVENTS = Number(values.events)
const ROUNDS = Math.max(1, Number(values.rounds))
const KEY_GROUPS = 64
const MINUTE = 60_000
const HOUR = 60 * MINUTE
const DAY = 24 * HOUR
const T0 = Date.parse('2019-05-01T00:00:00Z')

/** mulberry32: small, seeded, good enough for traffic. */
function random(seed: number) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const FUNNELS: FunnelDefinition[] = [
  { id: 'signup', name: 'Sign-up', steps: [{ event: '$page', filters: [{ property: 'path', value: '/' }] }, { event: 'signup_started' }, { event: 'signup_completed' }] },
  { id: 'activation', name: 'Activation', steps: [{ event: 'signup_completed' }, { event: 'project_created' }, { event: 'invite_sent' }, { event: 'report_viewed' }], windowMs: 7 * DAY },
  { id: 'purchase', name: 'Purchase', steps: [{ event: 'product_viewed' }, { event: 'add_to_cart' }, { event: 'checkout_started' }, { event: 'purchase', filters: [{ property: 'amount', operator: 'gt', value: 0 }] }], exclusions: [{ event: 'cart_cleared', fromStep: 2, toStep: 3 }], breakdown: { property: 'category' } },
  { id: 'purchase-strict', name: 'Checkout without detours', mode: 'strict', steps: [{ event: 'add_to_cart' }, { event: 'checkout_started' }, { event: 'purchase' }], windowMs: HOUR },
  { id: 'click-custom', name: 'Click then custom', steps: [{ event: 'click_event1' }, { event: 'custom_event2' }] },
  { id: 'engaged', name: 'Engaged any order', mode: 'any_order', steps: [{ event: 'report_viewed' }, { event: 'search', filters: [{ property: 'query', operator: 'is_set' }] }, { event: 'export' }] },
  { id: 'pricing', name: 'Pricing to plan', steps: [{ event: '$page', filters: [{ property: 'path', operator: 'in', value: ['/pricing', '/plans'] }] }, { event: 'plan_selected', filters: [{ property: 'plan', operator: 'neq', value: 'free' }] }, { event: 'purchase' }], windowMs: 30 * DAY },
  { id: 'docs', name: 'Docs to API key', steps: [{ event: '$page', filters: [{ property: 'path', operator: 'contains', value: 'docs' }] }, { event: 'api_key_created' }], windowMs: DAY },
  { id: 'retention', name: 'Search, then search again', steps: [{ event: 'search' }, { event: 'search' }, { event: 'search' }], windowMs: 3 * DAY },
  { id: 'support', name: 'Help any order', mode: 'any_order', steps: [{ event: 'help_opened' }, { event: 'ticket_created' }], windowMs: 2 * DAY },
]

const NAMES: Array<[string, number]> = [
  ['$page', 40], ['click_event1', 8], ['custom_event2', 3], ['product_viewed', 8], ['add_to_cart', 4], ['checkout_started', 2], ['purchase', 1.5],
  ['cart_cleared', 0.5], ['signup_started', 2], ['signup_completed', 1.5], ['project_created', 1], ['invite_sent', 0.7], ['report_viewed', 3],
  ['search', 5], ['export', 1], ['plan_selected', 0.8], ['api_key_created', 0.5], ['help_opened', 0.8], ['ticket_created', 0.3], ['scroll', 6], ['video_played', 2],
]
const PATHS = ['/', '/pricing', '/plans', '/docs/start', '/docs/api', '/blog', '/about', '/product/1', '/product/2']

function makeEvents(seed: number): EnrichedEventEnvelope[] {
  const next = random(seed)
  const total = NAMES.reduce((sum, [, weight]) => sum + weight, 0)
  const pickName = () => {
    let roll = next() * total
    for (const [name, weight] of NAMES) if ((roll -= weight) <= 0) return name
    return NAMES[0]![0]
  }
  const users = Array.from({ length: USERS }, (_, index) => `user-${index.toString(36)}-${Math.floor(next() * 1e9).toString(36)}`)
  const clock = Array.from({ length: USERS }, () => T0 + Math.floor(next() * 20 * DAY))
  const events: EnrichedEventEnvelope[] = []
  for (let index = 0; index < EVENTS; index++) {
    // some users are much busier than others
    const userIndex = Math.floor(USERS * next() ** 2)
    const user = users[userIndex]!
    clock[userIndex]! += next() < 0.9 ? Math.floor(next() * 5 * MINUTE) : Math.floor(next() * 2 * DAY)
    const name = pickName()
    const properties: Record<string, unknown> = {}
    if (name === '$page') properties.path = PATHS[Math.floor(next() * PATHS.length)]
    if (name === 'purchase') properties.amount = Math.floor(next() * 200)
    if (name === 'product_viewed' || name === 'add_to_cart') properties.category = next() < 0.5 ? 'books' : 'games'
    if (name === 'search' && next() < 0.8) properties.query = 'q'
    if (name === 'plan_selected') properties.plan = next() < 0.4 ? 'free' : 'pro'
    const id = `${user}-${index}`
    const time = clock[userIndex]!
    events.push({
      v: ENVELOPE_VERSION, type: 'enriched_event', project: 'bench', id, time, key: user, keyGroup: keyGroupOf(user, KEY_GROUPS), source: 'live',
      origin: { stream: 'SEG_RAW', seq: index + 1 },
      data: {
        name, canonicalId: user,
        message: { type: name === '$page' ? 'page' : 'track', ...(name === '$page' ? {} : { event: name }), messageId: id, userId: user, timestamp: '', receivedAt: '', properties },
        context: { device: { type: 'desktop' }, acquisition: { channel: 'direct' }, bot: false },
      },
    })
  }
  // arrival: in time order, but 3% of events arrive up to an hour late (and 1% twice, below)
  const arrival = events.map((event) => event.time + (next() < 0.03 ? Math.floor(next() * HOUR) : 0))
  const order = events.map((_, index) => index).sort((a, b) => arrival[a]! - arrival[b]!)
  const arriving = order.map((index) => events[index]!)
  const withDuplicates: EnrichedEventEnvelope[] = []
  for (const event of arriving) {
    withDuplicates.push(event)
    if (next() < 0.01) withDuplicates.push(event)
  }
  return withDuplicates
}

function definitions(): FunnelDefinitions {
  let current: unknown
  for (const definition of FUNNELS) current = applyFunnelControl(current, { stepId: 'funnel', name: definition.id, version: 1, definition })
  return current as FunnelDefinitions
}

const LATENESS = 5 * MINUTE

/**
 * The funnel logic as the kernel drives it: a state per key in a Map, the watermark (largest event
 * time minus the lateness) passed in, and each key's latest timer fired from the kernel's own heap
 * once the watermark passes it. Fed batch by batch, as the runtime is.
 */
function funnelRunner(control: FunnelDefinitions) {
  const operator = createFunnel({ keyGroups: KEY_GROUPS })
  const states = new Map<string, FunnelState>()
  const wakeAts = new Map<string, number>()
  const timers = new TimerHeap()
  let largest = Number.NEGATIVE_INFINITY
  const counts = { emitted: 0, late: 0, timersFired: 0 }
  const origin = { stream: 'SEG_ENRICHED', seq: 0 }
  const store = (key: string, state: FunnelState | undefined, wakeAt: number | undefined) => {
    if (state === undefined) states.delete(key)
    else states.set(key, state)
    if (wakeAt === undefined || state === undefined) wakeAts.delete(key)
    else if (wakeAts.get(key) !== wakeAt) {
      wakeAts.set(key, wakeAt)
      timers.push(wakeAt, key)
    }
  }
  return {
    counts, states,
    apply(batch: EnrichedEventEnvelope[]) {
      for (const envelope of batch) {
        const input: FunnelInput = { envelope, origin }
        const key = operator.keyOf(input)
        const result = operator.onEvent(states.get(key) ?? operator.init(), input, { eventTime: envelope.time, watermark: largest - LATENESS, source: 'live', control })
        counts.emitted += result.emit.length
        if (result.late) counts.late++
        store(key, result.state, result.wakeAt)
        if (envelope.time <= largest) continue
        largest = envelope.time
        const now = largest - LATENESS
        while (timers.size > 0 && timers.peek()!.at <= now) {
          const { at, key: timerKey } = timers.pop()!
          const state = states.get(timerKey)
          if (state === undefined || wakeAts.get(timerKey) !== at) continue // superseded, as in the kernel
          wakeAts.delete(timerKey)
          const result = operator.onTimer!(state, now)
          counts.emitted += result.emit.length
          counts.timersFired++
          store(timerKey, result.state, result.wakeAt)
        }
      }
    },
  }
}

/** The same loop without the logic: key, state lookup and store per event. */
function baselineRunner() {
  const states = new Map<string, { n: number; last: number }>()
  let watermark = Number.NEGATIVE_INFINITY
  return {
    apply(batch: EnrichedEventEnvelope[]) {
      for (const envelope of batch) {
        const key = envelope.data.canonicalId
        const state = states.get(key)
        states.set(key, { n: (state?.n ?? 0) + 1, last: envelope.time })
        if (envelope.time - LATENESS > watermark) watermark = envelope.time - LATENESS
      }
    },
  }
}

/** The events as the runtime receives them: msgpack, in batches (one buffer and its offsets each), so no decoded event outlives its batch. */
interface EncodedBatch {
  bytes: Buffer
  ends: Int32Array
}

const BATCH = 10_000

function encodeBatches(events: EnrichedEventEnvelope[]): EncodedBatch[] {
  const batches: EncodedBatch[] = []
  for (let from = 0; from < events.length; from += BATCH) {
    const parts = events.slice(from, from + BATCH).map((event) => encode(event))
    const ends = new Int32Array(parts.length)
    let end = 0
    parts.forEach((part, index) => (ends[index] = end += part.length))
    batches.push({ bytes: Buffer.concat(parts), ends })
  }
  return batches
}

function decodeBatch(batch: EncodedBatch): EnrichedEventEnvelope[] {
  const out: EnrichedEventEnvelope[] = new Array(batch.ends.length)
  let start = 0
  for (let index = 0; index < batch.ends.length; index++) {
    out[index] = decode(batch.bytes.subarray(start, batch.ends[index]!)) as EnrichedEventEnvelope
    start = batch.ends[index]!
  }
  return out
}

function stateBytes(states: Map<string, FunnelState>) {
  let total = 0
  let largest = 0
  let count = 0
  for (const state of states.values()) {
    const size = encode(state).length
    total += size
    largest = Math.max(largest, size)
    count++
  }
  return { keys: count, meanBytes: Math.round(total / Math.max(1, count)), largestBytes: largest }
}

const rate = (count: number, seconds: number) => Math.round(count / seconds)

/** Wall and CPU time, summed over the phases of a round: on shared cores the wall clock also counts the time other processes had the CPU. */
class Clock {
  seconds = 0
  cpuSeconds = 0
  time<T>(phase: () => T): T {
    const cpu = process.cpuUsage()
    const started = process.hrtime.bigint()
    const result = phase()
    this.seconds += Number(process.hrtime.bigint() - started) / 1e9
    const used = process.cpuUsage(cpu)
    this.cpuSeconds += (used.user + used.system) / 1e6
    return result
  }
}

const generated = makeEvents(Number(values.seed))
const total = generated.length
const batches = encodeBatches(generated)
generated.length = 0
const control = definitions()
console.log(`[bench-funnels] ${total.toLocaleString('en-US')} events (with duplicates and late ones) of ${USERS.toLocaleString('en-US')} users, ${FUNNELS.length} funnels, in batches of ${BATCH.toLocaleString('en-US')}; ${ROUNDS} rounds, best kept`)

const best = { wall: Number.POSITIVE_INFINITY, cpu: Number.POSITIVE_INFINITY }
const baselineBest = { wall: Number.POSITIVE_INFINITY, cpu: Number.POSITIVE_INFINITY }
const decodeBest = { wall: Number.POSITIVE_INFINITY, cpu: Number.POSITIVE_INFINITY }
const keep = (into: { wall: number; cpu: number }, clock: Clock) => {
  into.wall = Math.min(into.wall, clock.seconds)
  into.cpu = Math.min(into.cpu, clock.cpuSeconds)
}
const figures = (clock: Clock) => `${rate(total, clock.seconds).toLocaleString('en-US')}/s (${rate(total, clock.cpuSeconds).toLocaleString('en-US')} per CPU second)`
let last: ReturnType<typeof funnelRunner> | undefined
for (let round = 1; round <= ROUNDS; round++) {
  const funnels = funnelRunner(control)
  const baseline = baselineRunner()
  const clocks = { funnels: new Clock(), baseline: new Clock(), decode: new Clock() }
  for (const batch of batches) {
    const decoded = clocks.decode.time(() => decodeBatch(batch))
    clocks.baseline.time(() => baseline.apply(decoded))
    clocks.funnels.time(() => funnels.apply(decoded))
  }
  keep(best, clocks.funnels)
  keep(baselineBest, clocks.baseline)
  keep(decodeBest, clocks.decode)
  last = funnels
  console.log(`[bench-funnels] round ${round}: funnel logic ${figures(clocks.funnels)}; iterate-only baseline ${figures(clocks.baseline)}; msgpack decode ${figures(clocks.decode)}`)
}
const sizes = stateBytes(last!.states)
const { emitted, timersFired, late } = last!.counts
console.log(`[bench-funnels] ${emitted.toLocaleString('en-US')} progress messages, ${timersFired.toLocaleString('en-US')} timers fired, ${late} inputs too late; state: ${sizes.keys.toLocaleString('en-US')} users, mean ${sizes.meanBytes} B, largest ${sizes.largestBytes} B (msgpack)`)
console.log(JSON.stringify({
  users: USERS, events: total, funnels: FUNNELS.length,
  pure_events_per_s: rate(total, best.wall),
  pure_events_per_cpu_s: rate(total, best.cpu),
  baseline_iterate_events_per_s: rate(total, baselineBest.wall),
  baseline_iterate_events_per_cpu_s: rate(total, baselineBest.cpu),
  baseline_decode_events_per_s: rate(total, decodeBest.wall),
  baseline_decode_events_per_cpu_s: rate(total, decodeBest.cpu),
  progress_messages: emitted, timers_fired: timersFired, late,
  state_keys: sizes.keys, state_mean_bytes: sizes.meanBytes, state_largest_bytes: sizes.largestBytes,
}))
