/**
 * make bench-funnels: four figures, each measured (docs/funnels.md, "Speed"). First, here, the funnel operator's pure logic (docs/funnels.md) on seeded traffic:
 * 10 active funnels (sequential, strict and any order; filters, exclusions, a breakdown),
 * 100,000 users, events mostly in time order with some late and duplicated. The events are kept
 * as msgpack and decoded batch by batch, as the runtime receives them (a million decoded events
 * held at once would make the garbage collector, not the logic, the measure). Beside it, in the
 * same run, two baselines over the same batches: a loop that only iterates them and keeps a
 * state per user the way the runtime does, and the msgpack decoding itself. Last line: JSON.
 *
 * Then, each in a child process of its own (so one's memory is not the next one's):
 * bench/funnels-state.ts (RSS and heap of --state-users users × 10 funnels of state) and
 * bench/funnels-runtime.ts (one funnel step instance on a real nats-server with its pipelined-publish
 * baseline, then a new funnel's backfill over the same events from the stream, with PostgreSQL) and
 * bench/funnels-backfill.ts (a new funnel's backfill over --backfill-events events held in a real
 * PostgreSQL server beyond the stream's retention: `backfill_s`). The last line holds every figure
 * and its target.
 *
 *   node bench/funnels.ts [--users 100000] [--events 1000000] [--seed 1] [--rounds 3]
 *     [--state-users 1000000] [--state-per-user 5] [--runtime-events 300000] [--runtime-users <events/10>]
 *     [--stream-gb 1] [--backfill-events 10000000] [--backfill-users <events/10>] [--skip state,runtime,backfill]
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import type { FunnelState } from '../operators/funnel/logic.ts'
import { decode, encode } from '../schemas/codec.ts'
import type { EnrichedEventEnvelope } from '../schemas/envelope.ts'
import { definitions, FUNNELS, funnelRunner, LATENESS, makeEvents } from './funnels-workload.ts'

const { values } = parseArgs({ options: { users: { type: 'string', default: '100000' }, events: { type: 'string', default: '1000000' }, seed: { type: 'string', default: '1' }, rounds: { type: 'string', default: '3' },
  'state-users': { type: 'string', default: '1000000' }, 'state-per-user': { type: 'string', default: '5' },
  'runtime-events': { type: 'string', default: '300000' }, 'runtime-users': { type: 'string' }, 'stream-gb': { type: 'string', default: '1' },
  'backfill-events': { type: 'string', default: '10000000' }, 'backfill-users': { type: 'string' },
  skip: { type: 'string', default: '' } } })
const SKIP = new Set(values.skip!.split(',').filter(Boolean))
const USERS = Number(values.users)
const EVENTS = Number(values.events)
const ROUNDS = Math.max(1, Number(values.rounds))
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

/** The runtime's default batch size (operators/runtime/instance.ts): what it decodes and applies at once. */
const BATCH = 1_000

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

const generated = makeEvents(Number(values.seed), USERS, EVENTS)
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
  // each round starts with no state: the previous round's users, alive still, would double the heap the collector walks
  last = undefined
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
const pure = {
  users: USERS, events: total, funnels: FUNNELS.length,
  pure_events_per_s: rate(total, best.wall),
  pure_events_per_cpu_s: rate(total, best.cpu),
  baseline_iterate_events_per_s: rate(total, baselineBest.wall),
  baseline_iterate_events_per_cpu_s: rate(total, baselineBest.cpu),
  baseline_decode_events_per_s: rate(total, decodeBest.wall),
  baseline_decode_events_per_cpu_s: rate(total, decodeBest.cpu),
  progress_messages: emitted, timers_fired: timersFired, late,
  state_keys: sizes.keys, state_mean_bytes: sizes.meanBytes, state_largest_bytes: sizes.largestBytes,
}
console.log(JSON.stringify(pure))
batches.length = 0
last = undefined

/** A JSON line that is not a log line (those carry a level). */
function isResult(line: string): boolean {
  try {
    const parsed = JSON.parse(line) as unknown
    return typeof parsed === 'object' && parsed !== null && !('level' in parsed)
  } catch {
    return false
  }
}

/** Runs a benchmark script in a child process, its output shown as it comes; returns its last JSON line that is not a log line. */
function child(script: string, nodeArgs: string[], args: string[]): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const path = fileURLToPath(new URL(script, import.meta.url))
    const running = spawn(process.execPath, [...nodeArgs, path, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    let pending = ''
    let lastLine = ''
    running.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      pending += chunk
      const lines = pending.split('\n')
      pending = lines.pop()!
      for (const line of lines) {
        console.log(line)
        if (isResult(line)) lastLine = line
      }
    })
    running.once('error', reject)
    running.once('exit', (code) => {
      if (pending.trim()) {
        console.log(pending)
        if (isResult(pending)) lastLine = pending
      }
      if (code !== 0) return reject(new Error(`${script} exited with ${code}`))
      try {
        resolve(JSON.parse(lastLine) as Record<string, unknown>)
      } catch {
        reject(new Error(`${script}: no JSON last line`))
      }
    })
  })
}

const state = SKIP.has('state') ? {} : await child('./funnels-state.ts', ['--expose-gc', '--max-old-space-size=20000'], ['--users', values['state-users']!, '--per-user', values['state-per-user']!])
const runtime = SKIP.has('runtime') ? {} : await child('./funnels-runtime.ts', [], ['--events', values['runtime-events']!, '--stream-gb', values['stream-gb']!, ...(values['runtime-users'] ? ['--users', values['runtime-users']] : [])])
const backfill = SKIP.has('backfill') ? {} : await child('./funnels-backfill.ts', [], ['--events', values['backfill-events']!, ...(values['backfill-users'] ? ['--users', values['backfill-users']] : [])])
console.log(JSON.stringify({
  ...pure, ...state, ...runtime, ...backfill,
  targets: { pure_events_per_s: '>= 500000', runtime_events_per_s: '>= 50000', state_rss_mb: 'at 1,000,000 users x 10 funnels (reported)', backfill_s: '< 120 for 10,000,000 events' },
}))
