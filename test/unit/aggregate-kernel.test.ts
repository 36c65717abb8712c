import t from 'tap'
import { AggregateEnvelope } from '../../operators/aggregate/envelopes.ts'
import { createAggregates, type AggregateInput, type AggregateState } from '../../operators/aggregate/logic.ts'
import { emptyKeyGroup, newCounters, processMessage, type InputMessage, type Outgoing } from '../../operators/runtime/kernel.ts'
import type { Emission, Operator, StepResult } from '../../operators/runtime/operator.ts'
import type { AggregateDefinition, AggregateResult } from '../../schemas/aggregate.ts'
import { decode, decodeEnvelope, encode, validator } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type ControlEnvelope, type EnrichedEventEnvelope, type MergeEnvelope } from '../../schemas/envelope.ts'
import { checkpointCopy } from '../harness/checkpoint.ts'

/**
 * The operator under the runtime's real kernel (operators/runtime/kernel.ts): keys, watermarks,
 * timers, control messages, late inputs, merges and checkpoints as the runtime does them. Until
 * the `aggregates` stage exists (docs/aggregates.md, wiring) the kernel cannot address it, so the
 * results travel on the `sessions` stage here, unchanged otherwise.
 */

const MINUTE = 60_000
const HOUR = 60 * MINUTE
const T = Date.parse('2019-04-30T22:30:00Z')
const KEY_GROUPS = 4
const schema = validator(AggregateEnvelope, 'aggregate')

function onStage<State>(result: StepResult<State>): StepResult<State> {
  return { ...result, emit: result.emit.map((emission): Emission => ({ ...emission, stage: 'sessions' })) }
}

const inner = createAggregates({ keyGroups: KEY_GROUPS, timezoneOf: () => 'Europe/Berlin' })
const operator: Operator<AggregateState, AggregateInput> = {
  ...inner,
  onEvent: (state, input, context) => onStage(inner.onEvent(state, input, context)),
  onTimer: (state, now) => onStage(inner.onTimer!(state, now)),
}

const options = { stepId: 'aggregates', latenessOf: () => 5 * MINUTE, idleTtlMs: Number.POSITIVE_INFINITY, clock: () => 0, keyGroups: KEY_GROUPS }

let seq = 0
function event(user: string, time: number, name = 'Clicked', source: 'live' | 'import' = 'live'): InputMessage {
  const envelope: EnrichedEventEnvelope = {
    v: ENVELOPE_VERSION, type: 'enriched_event', project: 'p', id: `m${seq + 1}`, time, key: user, keyGroup: 0, source, origin: { stream: 'SEG_RAW', seq: seq + 1 },
    data: {
      name, canonicalId: user,
      message: { type: 'track', messageId: `m${seq + 1}`, userId: user, event: name, timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString() },
      context: { device: { type: 'desktop' }, acquisition: { channel: 'direct' }, geo: { country: 'DE' }, bot: false },
    },
  }
  return { stream: 'SEG_ENRICHED', seq: ++seq, subject: 'seg.p.enriched.0', data: encode(envelope) }
}

function control(name: string, version: number, definition: AggregateDefinition | null | Record<string, unknown>): InputMessage {
  const envelope: ControlEnvelope = {
    v: ENVELOPE_VERSION, type: 'control', project: 'p', id: `aggregates:${name}:${version}`, time: 0, key: name, keyGroup: 0, source: 'live',
    data: { stepId: 'aggregates', name, version, definition },
  }
  return { stream: 'SEG_ENRICHED', seq: ++seq, subject: 'seg.p.enriched.0', data: encode(envelope) }
}

function merge(from: string, into: string): InputMessage {
  const envelope: MergeEnvelope = { v: ENVELOPE_VERSION, type: 'merge', project: 'p', id: `merge-${from}`, time: T, key: from, keyGroup: 0, source: 'live', data: { from, into } }
  return { stream: 'SEG_ENRICHED', seq: ++seq, subject: 'seg.p.enriched.0', data: encode(envelope) }
}

/** What the state store keeps and loads (test/harness/checkpoint.ts). */
const reload = checkpointCopy<AggregateState>

const resultsOf = (out: Outgoing[]) => out.filter((o) => o.subject.startsWith('seg.p.sessions.')).map((o) => {
  const envelope = decode(o.data) as AggregateEnvelope
  const problems = schema.problems(envelope)
  if (problems.length > 0) throw new Error(`${envelope.id}: ${problems.join('; ')}`)
  return envelope.data
})
const brief = (result: AggregateResult) => `${result.definition} ${new Date(result.window.start).toISOString().slice(0, 16)} n=${result.count} u=${result.distinctUsers} v${result.version}${result.final ? ' final' : ''}`

t.test('under the real kernel: control, timers on the watermark, late inputs, merges, checkpoints', async (t) => {
  let group = emptyKeyGroup<AggregateState>(0, 1)
  const counters = newCounters()
  const run = (message: InputMessage) => processMessage(operator, group, message, options, counters)

  t.same(run(control('events-per-hour', 1, null)), [], 'the hourly default deleted')
  t.same(Object.keys(group.control.p as object), ['events-per-hour'])
  t.same(run(control('broken', 1, { window: { kind: 'tumbling', unit: 'week' }, dimensions: [] })).map((o) => o.subject), ['seg.p.dlq.0'], 'an invalid definition is dead-lettered')
  t.equal(counters.deadLettered, 1)

  t.same(run(event('u1', T)), [])
  t.same(run(event('u2', T + 10_000)), [], 'early results wait for the next minute of event time')
  t.same([...group.keys.keys()], ['p/live\u0000Clicked'], 'one key per project, source and event name')

  // a merge names user ids: the aggregate keys are not among them, nothing moves
  t.same(run(merge('u1', 'u2')), [])
  t.equal(group.keys.size, 1)
  // even one whose `from` is spelled like an aggregate key: the kernel leaves this step's keys alone
  t.same(run(merge('live\u0000Clicked', 'u2')), [])
  t.same([...group.keys.keys()], ['p/live\u0000Clicked'], 'a merge never moves an aggregate key')
  t.equal(counters.merged, 0)

  group = reload(group)
  const early = resultsOf(run(event('u1', T + 61_000)))
  t.same(early.map(brief), ['events-per-day 2019-04-30T22:00 n=3 u=2 v1'], 'early result of May 1st (Berlin), after a reload from the checkpoint')

  // the watermark (largest − 5 minutes) passes the day's end at 2019-05-01T22:05Z: the timer fires
  const next = run(event('u3', Date.parse('2019-05-01T22:05:00Z')))
  t.same(resultsOf(next).map(brief), ['events-per-day 2019-04-30T22:00 n=3 u=2 v2 final'])
  t.equal(counters.timersFired, 1)

  // within the hour of allowed lateness: a correction; beyond: late
  run(event('u4', T + HOUR))
  const corrected = resultsOf(run(event('u3', Date.parse('2019-05-01T22:06:01Z'))))
  t.same(corrected.map(brief), ['events-per-day 2019-04-30T22:00 n=4 u=3 v3 final', 'events-per-day 2019-05-01T22:00 n=2 u=1 v1'],
    'the correction of May 1st, and the early result of May 2nd, when event time crossed 22:06')
  run(event('u3', Date.parse('2019-05-01T23:10:00Z')))
  const lateInput = event('u5', T + 2 * HOUR)
  const tooLate = run(lateInput)
  t.same(tooLate.map((o) => o.subject), ['seg.p.late.0'], 'May 1st closed at 23:00Z of the watermark: on the late subject')
  t.equal(Buffer.compare(Buffer.from(tooLate[0]!.data), Buffer.from(lateInput.data)), 0, 'the input unchanged')
  t.equal(decodeEnvelope(tooLate[0]!.data).type, 'enriched_event')
  t.equal(counters.late, 1)

  // an import has its own key and its own watermark
  run(event('u1', Date.parse('2019-01-01T10:00:00Z'), 'Clicked', 'import'))
  t.ok(group.keys.has('p/import\u0000Clicked'))
  t.ok(group.keys.get('p/import\u0000Clicked')!.wakeAt! < Date.parse('2019-01-02T00:00:00Z'), 'its timers wait for the import watermark')
})
