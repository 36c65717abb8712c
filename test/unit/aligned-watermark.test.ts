import t from 'tap'
import { decode, encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type RawEventEnvelope, type WatermarkEnvelope } from '../../schemas/envelope.ts'
import { emptyKeyGroup, newCounters, processMessage, type InputMessage, type KernelOptions } from '../../operators/runtime/kernel.ts'
import type { Operator } from '../../operators/runtime/operator.ts'

// A step reading a stage and one derived from it (funnel: enriched and sessions) gets as its
// watermark the least of the two streams' newest event times: the derived stream trails by the
// upstream step's lag, and a watermark run ahead on the faster stream would have the logic treat
// the derived messages still to come as late.

const HOUR = 3_600_000
const T0 = Date.parse('2019-05-01T00:00:00Z')
const LATENESS = 60_000

interface Seen { watermarks: number[] }

/** Records the watermark of each input; wakes an hour after each. */
const recorder: Operator<Seen, RawEventEnvelope> = {
  stepId: 'recorder',
  init: () => ({ watermarks: [] }),
  toInput(envelope) {
    if (envelope.type !== 'raw_event') throw new Error(`not a raw event: ${envelope.type}`)
    return envelope
  },
  keyOf: (input) => input.key,
  onEvent: (state, _input, { eventTime, watermark }) => ({ state: { watermarks: [...state.watermarks, watermark] }, emit: [], wakeAt: eventTime + HOUR }),
  onTimer: (state) => ({ state, emit: [] }),
}

let seq = 0
const event = (stream: string, user: string, time: number): InputMessage => {
  const envelope: RawEventEnvelope = {
    v: ENVELOPE_VERSION, type: 'raw_event', project: 'p', id: `${user}-${time}`, time, key: user, keyGroup: 3, source: 'import',
    data: { type: 'track', messageId: `${user}-${time}`, anonymousId: user, event: 'e', timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString() },
  }
  return { stream, seq: ++seq, subject: 'seg.p.raw.3', data: encode(envelope) }
}
const watermark = (stream: string, time: number): InputMessage => {
  const envelope: WatermarkEnvelope = { v: ENVELOPE_VERSION, type: 'watermark', project: 'p', id: `watermark:${time}`, time, key: '', keyGroup: 3, source: 'import' }
  return { stream, seq: ++seq, subject: 'seg.p.raw.3', data: encode(envelope) }
}

const base: KernelOptions = { stepId: 'recorder', latenessOf: () => LATENESS, idleTtlMs: 30 * 86_400_000, clock: () => 0, keyGroups: 8 }
const aligned: KernelOptions = { ...base, alignedStreams: ['ENRICHED', 'SESSIONS'] }

t.test('aligned streams: the watermark is the slower stream\'s', async (t) => {
  const group = emptyKeyGroup<Seen>(3, 1)
  const counters = newCounters()
  processMessage(recorder, group, event('ENRICHED', 'u', T0), aligned, counters)
  processMessage(recorder, group, event('ENRICHED', 'u', T0 + 10 * 24 * HOUR), aligned, counters)
  t.same(group.keys.get('p/u')!.state.watermarks, [Number.NEGATIVE_INFINITY, Number.NEGATIVE_INFINITY], 'nothing on the sessions stream yet: no watermark')
  t.equal(counters.timersFired, 0, 'and no timer fires, however far the enriched stream has gone')

  processMessage(recorder, group, event('SESSIONS', 'u', T0 + 2 * HOUR), aligned, counters)
  t.equal(group.keys.get('p/u')!.state.watermarks.at(-1), Number.NEGATIVE_INFINITY, 'an input sees the watermark from before it')
  t.equal(counters.timersFired, 0, 'the timer (due at the last input + 1 hour) waits for both streams')
  processMessage(recorder, group, event('ENRICHED', 'v', T0 + 10 * 24 * HOUR + 1), aligned, counters)
  t.equal(group.keys.get('p/v')!.state.watermarks[0], T0 + 2 * HOUR - LATENESS, 'the sessions stream\'s newest time, less the lateness')

  processMessage(recorder, group, watermark('SESSIONS', T0 + 11 * 24 * HOUR), aligned, counters)
  t.equal(counters.timersFired, 1, 'a watermark message on the slower stream lets u\'s timer fire (its last input + 1 hour)')
  processMessage(recorder, group, watermark('ENRICHED', T0 + 11 * 24 * HOUR), aligned, counters)
  t.equal(counters.timersFired, 2, 'and v\'s once the enriched stream is past it too')

  // the per-stream times are part of the checkpoint
  const restored = decode(encode(group.maxEventTime)) as Record<string, number>
  t.same(restored, group.maxEventTime, 'they survive the checkpoint\'s encoding')
  t.ok(Object.keys(restored).some((key) => key.endsWith('|SESSIONS')), 'one entry per aligned stream')
  const copy = { ...emptyKeyGroup<Seen>(3, 1), maxEventTime: restored }
  processMessage(recorder, copy, event('ENRICHED', 'w', T0 + 12 * 24 * HOUR), aligned, newCounters())
  t.equal(copy.keys.get('p/w')!.state.watermarks[0], T0 + 11 * 24 * HOUR - LATENESS, 'after a restart, the least of the two again')
})

t.test('without aligned streams, the newest over every input', async (t) => {
  const group = emptyKeyGroup<Seen>(3, 1)
  processMessage(recorder, group, event('ENRICHED', 'u', T0 + 10 * 24 * HOUR), base, newCounters())
  processMessage(recorder, group, event('SESSIONS', 'u', T0), base, newCounters())
  t.same(group.keys.get('p/u')!.state.watermarks, [Number.NEGATIVE_INFINITY, T0 + 10 * 24 * HOUR - LATENESS])
  t.same(Object.keys(group.maxEventTime), ['p|import'], 'no per-stream entries')
})
