import t from 'tap'
import { decodeEnvelope, encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type RawEventEnvelope, type WatermarkEnvelope } from '../../schemas/envelope.ts'
import { emptyKeyGroup, newCounters, processMessage, type InputMessage } from '../../operators/runtime/kernel.ts'
import type { Operator } from '../../operators/runtime/operator.ts'

// A key group whose users have gone quiet still moves on in event time when the collector's
// watermark message reaches it: timers fire, and the message goes on to the step's outputs.

const GAP = 30 * 60_000
const T0 = Date.parse('2019-05-01T00:00:00Z')
const LATENESS = 60_000

/** Counts a user's events; closes them GAP after the last one. */
const closer: Operator<{ n: number }, RawEventEnvelope> = {
  stepId: 'closer',
  init: () => ({ n: 0 }),
  toInput(envelope) {
    if (envelope.type !== 'raw_event') throw new Error(`not a raw event: ${envelope.type}`)
    return envelope
  },
  keyOf: (input) => input.key,
  onEvent: (state, _input, { eventTime }) => ({ state: { n: state.n + 1 }, emit: [], wakeAt: eventTime + GAP }),
  onTimer: (state, now) => ({
    state: undefined,
    emit: [{ stage: 'sessions', project: 'p', keyGroup: 3, envelope: { v: ENVELOPE_VERSION, type: 'watermark', project: 'p', id: `closed:${state.n}@${now}`, time: now, key: 'u', keyGroup: 3, source: 'live' } }],
  }),
}

let seq = 0
const event = (user: string, time: number): InputMessage => {
  const envelope: RawEventEnvelope = {
    v: ENVELOPE_VERSION, type: 'raw_event', project: 'p', id: `${user}-${time}`, time, key: user, keyGroup: 3, source: 'live',
    data: { type: 'track', messageId: `${user}-${time}`, anonymousId: user, event: 'e', timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString() },
  }
  return { stream: 'S', seq: ++seq, subject: 'seg.p.raw.3', data: encode(envelope) }
}
const watermark = (time: number, source: 'live' | 'import' = 'live'): InputMessage => {
  const envelope: WatermarkEnvelope = { v: ENVELOPE_VERSION, type: 'watermark', project: 'p', id: `watermark:${time}`, time, key: '', keyGroup: 3, source }
  return { stream: 'S', seq: ++seq, subject: 'seg.p.raw.3', data: encode(envelope) }
}

const options = { stepId: 'closer', latenessOf: () => LATENESS, idleTtlMs: 7 * 86_400_000, clock: () => 0, keyGroups: 8, forwardWatermarksTo: ['enriched', 'sessions'] as const }

t.test('a watermark fires the timers its time has passed, and goes on to the outputs', async (t) => {
  const group = emptyKeyGroup<{ n: number }>(3, 1)
  const counters = newCounters()
  processMessage(closer, group, event('u', T0), options, counters)
  processMessage(closer, group, event('u', T0 + 60_000), options, counters)
  t.equal(counters.timersFired, 0)

  const early = processMessage(closer, group, watermark(T0 + 60_000 + GAP), options, counters)
  t.equal(counters.timersFired, 0, 'not yet: the timer is due once the watermark minus the lateness passes it')
  t.same(early.map((o) => o.subject), ['seg.p.enriched.3', 'seg.p.sessions.3'], 'forwarded into the same key group of each output stage')
  t.same(early.map((o) => o.msgId), [`closer:S:${seq}:w:enriched`, `closer:S:${seq}:w:sessions`], 'with ids derived from the input, so a replay stores them once')
  t.equal((decodeEnvelope(early[0]!.data) as WatermarkEnvelope).time, T0 + 60_000 + GAP, 'unchanged')

  const due = processMessage(closer, group, watermark(T0 + 60_000 + GAP + LATENESS), options, counters)
  t.equal(counters.timersFired, 1, 'the quiet key is closed without an event of its own')
  t.same(due.map((o) => (decodeEnvelope(o.data) as { id: string }).id), [`closed:2@${T0 + 60_000 + GAP}`, `watermark:${T0 + 60_000 + GAP + LATENESS}`, `watermark:${T0 + 60_000 + GAP + LATENESS}`])
  t.equal(group.keys.size, 0)

  const older = processMessage(closer, group, watermark(T0), options, counters)
  t.equal(group.maxEventTime['p\u0000live'] ?? Math.max(...Object.values(group.maxEventTime)), T0 + 60_000 + GAP + LATENESS, 'an older watermark never moves event time back')
  t.equal(older.length, 2, 'but still goes on')
  t.equal(counters.applied, 2, 'watermarks are not inputs of the logic')

  const other = emptyKeyGroup<{ n: number }>(3, 1)
  processMessage(closer, other, event('v', T0), options, newCounters())
  const imported = newCounters()
  processMessage(closer, other, watermark(T0 + 10 * GAP, 'import'), options, imported)
  t.equal(imported.timersFired, 0, "an import watermark does not move live traffic's event time")
})
