/**
 * bench-funnels, state size: the funnel logic's per-user state for --users users × the 10 funnels
 * of bench/funnels-workload.ts, held as the benchmark's kernel reproduction holds it (one Map of
 * user → FunnelState, the wake-up times and the timer heap; bench/funnels-workload.ts funnelRunner),
 * in this process. Every user gets --per-user events, one per round, rounds --round-minutes apart
 * in event time (in time order, so nothing is late and no window of 1 hour or more closes), names
 * drawn with the pure benchmark's weights. The process RSS and the V8 heap are read after a full
 * garbage collection before the first event, after the last, and after every state was encoded
 * once as a checkpoint encodes it (which boxes arrays of numbers, see below): the difference is
 * what the states (and the runner's maps and heap) take. Events are made batch by batch and dropped, so they are
 * not part of it. Run with --expose-gc and a large --max-old-space-size (bench/funnels.ts does).
 * Last line: JSON.
 *
 *   node --expose-gc --max-old-space-size=16384 bench/funnels-state.ts [--users 1000000] [--per-user 5] [--round-minutes 5]
 */
import { parseArgs } from 'node:util'
import { encode } from '../schemas/codec.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope } from '../schemas/envelope.ts'
import { keyGroupOf } from '../topology/subjects.ts'
import { seededRandom } from '../operators/runtime/generator.ts'
import { definitions, FUNNELS, funnelRunner, KEY_GROUPS, MINUTE, pickName, propertiesOf, T0 } from './funnels-workload.ts'

const { values } = parseArgs({ options: { users: { type: 'string', default: '1000000' }, 'per-user': { type: 'string', default: '5' }, 'round-minutes': { type: 'string', default: '5' }, seed: { type: 'string', default: '2' } } })
const USERS = Number(values.users)
const PER_USER = Number(values['per-user'])
const ROUND_MS = Number(values['round-minutes']) * MINUTE
const BATCH = 10_000

const gc = (globalThis as { gc?: () => void }).gc
if (!gc) throw new Error('run with --expose-gc (node --expose-gc bench/funnels-state.ts)')
const memory = () => {
  gc()
  gc()
  const { rss, heapUsed } = process.memoryUsage()
  return { rss, heapUsed }
}

const next = seededRandom(Number(values.seed))
const userOf = (index: number) => `user-${index.toString(36)}-${(Math.imul(index, 2654435761) >>> 0).toString(36)}`

function eventOf(userIndex: number, round: number, seq: number): EnrichedEventEnvelope {
  const user = userOf(userIndex)
  const name = pickName(next)
  const properties = propertiesOf(name, next)
  const id = `${user}-${round}`
  // in time order within and across rounds
  const time = T0 + round * ROUND_MS + Math.floor((userIndex * ROUND_MS) / USERS)
  return {
    v: ENVELOPE_VERSION, type: 'enriched_event', project: 'bench', id, time, key: user, keyGroup: keyGroupOf(user, KEY_GROUPS), source: 'live',
    origin: { stream: 'SEG_RAW', seq },
    data: {
      name, canonicalId: user,
      message: { type: name === '$page' ? 'page' : 'track', ...(name === '$page' ? {} : { event: name }), messageId: id, userId: user, timestamp: '', receivedAt: '', properties },
      context: { device: { type: 'desktop' }, acquisition: { channel: 'direct' }, bot: false },
    },
  }
}

const mb = (bytes: number) => Math.round(bytes / 1e6)
const runner = funnelRunner(definitions())
const before = memory()
console.log(`[bench-funnels state] ${USERS.toLocaleString('en-US')} users × ${FUNNELS.length} funnels, ${PER_USER} events each (${(USERS * PER_USER).toLocaleString('en-US')} events); before: RSS ${mb(before.rss)} MB, heap ${mb(before.heapUsed)} MB`)
const started = performance.now()
let seq = 0
let lastPrint = started
for (let round = 0; round < PER_USER; round++) {
  for (let from = 0; from < USERS; from += BATCH) {
    const batch: EnrichedEventEnvelope[] = []
    for (let user = from; user < Math.min(USERS, from + BATCH); user++) batch.push(eventOf(user, round, ++seq))
    runner.apply(batch)
    if (performance.now() - lastPrint > 15_000) {
      lastPrint = performance.now()
      console.log(`[bench-funnels state] round ${round + 1}/${PER_USER}: ${seq.toLocaleString('en-US')} events, ${runner.users.toLocaleString('en-US')} users in state, RSS ${mb(process.memoryUsage().rss)} MB`)
    }
  }
}
const seconds = (performance.now() - started) / 1000
const built = memory()
// The runtime encodes every changed state at each checkpoint (every 10 s), and msgpackr's encoder,
// reading arrays of several kinds at one site in optimised code, turns arrays of unboxed numbers
// (event times) into arrays of boxed ones: measured again after every state was encoded once, as
// the step holds them once it has checkpointed; the sizes as msgpack come from that pass.
let encodedBytes = 0
for (const state of runner.states.values()) encodedBytes += encode(state).length
const keys = runner.users
const meanMsgpack = Math.round(encodedBytes / Math.max(1, keys))
const after = memory()
const rssMb = mb(after.rss - before.rss)
const heapMb = mb(after.heapUsed - before.heapUsed)
console.log(`[bench-funnels state] as built (never encoded): RSS +${mb(built.rss - before.rss)} MB, V8 heap +${mb(built.heapUsed - before.heapUsed)} MB`)
console.log(`[bench-funnels state] measured at ${keys.toLocaleString('en-US')} users in state × ${FUNNELS.length} funnels (${seq.toLocaleString('en-US')} events, ${runner.counts.emitted.toLocaleString('en-US')} progress messages, built in ${seconds.toFixed(0)} s), after a checkpoint's encoding: RSS +${rssMb} MB (${mb(after.rss)} MB in all), V8 heap +${heapMb} MB; ${Math.round((after.heapUsed - before.heapUsed) / Math.max(1, keys))} B of heap per user; msgpack mean ${meanMsgpack} B per user`)
console.log(JSON.stringify({
  state_users: keys, state_funnels: FUNNELS.length, state_events: seq, state_events_per_user: PER_USER,
  state_rss_mb: rssMb, state_rss_total_mb: mb(after.rss), state_heap_mb: heapMb, state_heap_bytes_per_user: Math.round((after.heapUsed - before.heapUsed) / Math.max(1, keys)),
  state_rss_before_encoding_mb: mb(built.rss - before.rss), state_heap_before_encoding_mb: mb(built.heapUsed - before.heapUsed),
  state_msgpack_mean_bytes: meanMsgpack, state_build_s: Number(seconds.toFixed(1)),
}))
