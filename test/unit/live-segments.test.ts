import t from 'tap'
import { createProfile, type ProfileState } from '../../operators/profile/logic.ts'
import { applySegmentControl, matches, segmentDefinitionOf, type ProfileValues } from '../../operators/profile/segments.ts'
import type { DefinitionChangeContext } from '../../operators/runtime/operator.ts'
import { emptyKeyGroup, newCounters, processMessage, rebuildTimers, type InputMessage, type KeyGroupState, type Outgoing } from '../../operators/runtime/kernel.ts'
import { decode, decodeEnvelope, encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type ControlEnvelope, type EnrichedEventEnvelope, type SegmentMembershipEnvelope, type WatermarkEnvelope } from '../../schemas/envelope.ts'

// Saved segments evaluated live in the profile step: the filter semantics (those of the SQL in
// store/explore.ts), the definitions kept from control messages, and, through the runtime's
// kernel, every user entering a segment at the control message's place, in replays too.

const DAY = 86_400_000
const T0 = Date.parse('2024-05-10T10:00:00.000Z')

const valuesOf = (values: Record<string, unknown>): ProfileValues => (dimension) => values[dimension]
const segment = (filter: unknown) => segmentDefinitionOf('s', 1, filter)
const is = (filter: unknown, values: Record<string, unknown>) => matches(segment(filter), valuesOf(values))

t.test('conditions mean what the SQL means', async (t) => {
  const cases: Array<[string, unknown, Record<string, unknown>, boolean]> = [
    ['empty filter: everybody', {}, {}, true],
    ['equals', { all: [{ dimension: 'country', equals: 'DE' }] }, { country: 'DE' }, true],
    ['equals, other value', { all: [{ dimension: 'country', equals: 'DE' }] }, { country: 'FR' }, false],
    ['equals, no value', { all: [{ dimension: 'country', equals: 'DE' }] }, {}, false],
    ['equals null: no value', { all: [{ dimension: 'country', equals: null }] }, {}, true],
    ['equals null, a value', { all: [{ dimension: 'country', equals: null }] }, { country: 'DE' }, false],
    ['not: keeps those without a value', { all: [{ dimension: 'country', equals: 'DE', not: true }] }, {}, true],
    ['not', { all: [{ dimension: 'country', equals: 'DE', not: true }] }, { country: 'DE' }, false],
    ['in', { all: [{ dimension: 'country', in: ['DE', 'AT'] }] }, { country: 'AT' }, true],
    ['in with null', { all: [{ dimension: 'country', in: ['DE', null] }] }, {}, true],
    ['in without null', { all: [{ dimension: 'country', in: ['DE'] }] }, {}, false],
    ['level range from', { all: [{ dimension: 'engagement', range: { from: 'Medium' } }] }, { engagement: 'High' }, true],
    ['level range from, below', { all: [{ dimension: 'engagement', range: { from: 'Medium' } }] }, { engagement: 'Low' }, false],
    ['level range both ends inclusive', { all: [{ dimension: 'engagement', range: { from: 'Medium', to: 'Medium-High' } }] }, { engagement: 'Medium-High' }, true],
    ['month range', { all: [{ dimension: 'acquisition_month', range: { from: '2019-03', to: '2019-08' } }] }, { acquisition_month: '2019-08' }, true],
    ['month range, after', { all: [{ dimension: 'acquisition_month', range: { from: '2019-03', to: '2019-08' } }] }, { acquisition_month: '2019-09' }, false],
    ['number range', { all: [{ dimension: 'events', range: { from: 10 } }] }, { events: 10 }, true],
    ['number range, below', { all: [{ dimension: 'events', range: { from: 10 } }] }, { events: 9 }, false],
    ['trait equality is JSON-typed', { all: [{ dimension: 'trait.age', equals: 31 }] }, { 'trait.age': '31' }, false],
    ['trait equality', { all: [{ dimension: 'trait.age', equals: 31 }] }, { 'trait.age': 31 }, true],
    ['trait boolean', { all: [{ dimension: 'trait.vip', equals: true }] }, { 'trait.vip': true }, true],
    ['trait: an array does not equal its element', { all: [{ dimension: 'trait.tags', equals: 'a' }] }, { 'trait.tags': ['a'] }, false],
    ['trait JSON null is no value', { all: [{ dimension: 'trait.plan', equals: null }] }, { 'trait.plan': null }, true],
    ['trait range takes numbers only', { all: [{ dimension: 'trait.age', range: { from: 1, to: 100 } }] }, { 'trait.age': '30' }, false],
    ['trait range', { all: [{ dimension: 'trait.age', range: { from: 1, to: 100 } }] }, { 'trait.age': 30 }, true],
    ['trait range with not: a string is outside, so kept', { all: [{ dimension: 'trait.age', range: { from: 1 }, not: true }] }, { 'trait.age': 'x' }, true],
    ['AND of conditions', { all: [{ dimension: 'country', equals: 'DE' }, { dimension: 'device', equals: 'mobile' }] }, { country: 'DE', device: 'desktop' }, false],
    ['behavioural condition: not live, nobody', { all: [{ event: 'click', atLeast: 1, inLastDays: 7 }] }, {}, false],
    ['active range: not live, nobody', { active: { from: '2019-01-01' } }, {}, false],
  ]
  for (const [name, filter, values, expected] of cases) t.equal(is(filter, values), expected, name)
  t.equal(segment({ all: [{ event: 'click', atLeast: 1, inLastDays: 7 }] }).live, false, 'a behavioural segment is remembered as not live')
})

const control = (id: string, version: number, filter: unknown | null) =>
  ({ stepId: 'profile', name: `segment:${id}`, version, definition: filter === null ? null : { id, name: id, filter } })

t.test('definitions follow the control messages', async (t) => {
  let definitions = applySegmentControl(undefined, control('a', 1, { all: [{ dimension: 'country', equals: 'DE' }] }))
  t.same(Object.keys(definitions.segments), ['a'])
  definitions = applySegmentControl(definitions, control('b', 1, {}))
  t.same(Object.keys(definitions.segments).sort(), ['a', 'b'])
  t.equal(applySegmentControl(definitions, { stepId: 'profile', name: 'settings', version: 1, definition: {} }), definitions, 'another kind of definition: unchanged')
  definitions = applySegmentControl(definitions, control('a', 2, null))
  t.same(Object.keys(definitions.segments), ['b'], 'version 2 with null deletes')
  const again = applySegmentControl(definitions, control('b', 1, { all: [] }))
  t.equal(again, definitions, 'a version already held changes nothing')
})

// ---------------------------------------------------------------------------------------------
// Through the kernel

const KEY_GROUPS = 1
const profile = createProfile({ keyGroups: KEY_GROUPS, timezoneOf: () => 'UTC', publishEveryMs: DAY })
const kernelOptions = { stepId: 'profile', latenessOf: () => 0, idleTtlMs: Number.POSITIVE_INFINITY, clock: () => 0, keyGroups: KEY_GROUPS }

let seq = 0
function event(user: string, time: number, country: string, project = 'p'): InputMessage {
  const messageId = `${user}-${++seq}`
  const envelope: EnrichedEventEnvelope = {
    v: ENVELOPE_VERSION, type: 'enriched_event', project, id: messageId, time, key: user, keyGroup: 0, source: 'live', origin: { stream: 'SEG_RAW', seq },
    data: {
      name: 'Clicked', canonicalId: user,
      message: { type: 'track', event: 'Clicked', messageId, userId: user, timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString() },
      context: { device: { type: 'desktop' }, acquisition: { channel: 'direct' }, geo: { country }, bot: false },
    },
  }
  return { stream: 'SEG_ENRICHED', seq, subject: `seg.${project}.enriched.0`, data: encode(envelope) }
}
function controlMessage(id: string, version: number, filter: unknown | null, project = 'p'): InputMessage {
  const envelope: ControlEnvelope = { v: ENVELOPE_VERSION, type: 'control', project, id: `c-${id}-${version}`, time: 0, key: id, keyGroup: 0, source: 'live', data: control(id, version, filter) }
  return { stream: 'SEG_ENRICHED', seq: ++seq, subject: `seg.${project}.enriched.0`, data: encode(envelope) }
}
function watermark(time: number, project = 'p'): InputMessage {
  const envelope: WatermarkEnvelope = { v: ENVELOPE_VERSION, type: 'watermark', project, id: `w-${time}`, time, key: '', keyGroup: 0, source: 'live' }
  return { stream: 'SEG_ENRICHED', seq: ++seq, subject: `seg.${project}.enriched.0`, data: encode(envelope) }
}

/** The saved-segment changes among the outputs: `+id user` entered, `-id user` left, with the message id. */
function segmentChangesIn(outputs: Outgoing[]): string[] {
  return outputs.map((output) => decodeEnvelope(output.data)).flatMap((envelope) => {
    if (envelope.type !== 'segment_membership' || envelope.data.dimension !== 'segment') return []
    const data = (envelope as SegmentMembershipEnvelope).data
    return [`${data.to ? `+${data.to}` : `-${data.from}`} ${data.canonicalId} v${data.version}`]
  })
}

function copyOf(group: KeyGroupState<ProfileState>): KeyGroupState<ProfileState> {
  const copy = emptyKeyGroup<ProfileState>(group.keyGroup, group.epoch)
  copy.offsets = decode(encode(group.offsets)) as Record<string, number>
  copy.maxEventTime = decode(encode(group.maxEventTime)) as Record<string, number>
  copy.control = decode(encode(group.control)) as Record<string, unknown>
  // loaded from a checkpoint, keys come in another order than they were made in
  for (const [key, entry] of [...group.keys].reverse()) copy.keys.set(key, decode(encode(entry)) as typeof entry)
  rebuildTimers(copy)
  return copy
}

t.test('a segment created with users already there: each enters at the control message, and moves with their profile', async (t) => {
  const group = emptyKeyGroup<ProfileState>(0, 1)
  const counters = newCounters()
  const apply = (messages: InputMessage[], into = group) => messages.flatMap((message) => processMessage(profile, into, message, kernelOptions, counters))
  const before = apply([event('u2', T0, 'DE'), event('u1', T0 + 1, 'DE'), event('u3', T0 + 2, 'FR'), event('x1', T0 + 3, 'DE', 'q')])
  t.same(segmentChangesIn(before), [], 'no segment yet')
  const checkpoint = copyOf(group)

  const rest = [
    controlMessage('de', 1, { all: [{ dimension: 'country', equals: 'DE' }] }),
    event('u3', T0 + 10, 'DE'),
    event('u1', T0 + 11, 'FR'),
    controlMessage('all', 1, {}),
    controlMessage('de', 2, null),
  ]
  const outputs = rest.map((message) => apply([message]))
  t.same(segmentChangesIn(outputs[0]!), ['+de u1 v1', '+de u2 v1'], 'every German user of the project enters, in key order; project q is not touched')
  t.same(segmentChangesIn(outputs[1]!), ['+de u3 v1'], 'a user whose country changes enters')
  t.same(segmentChangesIn(outputs[2]!), ['-de u1 v2'], 'and one leaving the country leaves')
  t.same(segmentChangesIn(outputs[3]!), ['+all u1 v3', '+all u2 v2', '+all u3 v2'], 'an empty filter: everybody')
  t.same(segmentChangesIn(outputs[4]!), ['-de u2 v3', '-de u3 v3'], 'a deleted segment: its members leave')
  t.equal(counters.deadLettered, 0)
  let visits = 0
  const counting = { ...profile, onDefinitionChange: (state: ProfileState, context: DefinitionChangeContext) => { visits++; return profile.onDefinitionChange!(state, context) } }
  t.same(processMessage(counting, group, controlMessage('all', 1, {}), kernelOptions, counters), [], 'a definition published again at the version held: nothing emitted')
  t.equal(visits, 0, 'and no key revisited')
  processMessage(counting, group, controlMessage('other', 1, {}), kernelOptions, counters)
  t.equal(visits, 3, 'a new one visits every key of the project')

  // the same inputs from the checkpoint (keys loaded in another order): the same outputs, same ids
  const replayed = copyOf(checkpoint)
  const again = rest.flatMap((message) => processMessage(profile, replayed, message, kernelOptions, newCounters()))
  t.same(again.map((o) => [o.msgId, Buffer.from(o.data).toString('base64')]), outputs.flat().map((o) => [o.msgId, Buffer.from(o.data).toString('base64')]), 'a replay emits the same messages under the same ids')

  // a control message already applied to a key before a crash (key written, checkpoint not): not again
  const partial = copyOf(checkpoint)
  const first = processMessage(profile, partial, rest[0]!, kernelOptions, newCounters())
  const crashed = copyOf(checkpoint)
  for (const [key, entry] of partial.keys) crashed.keys.set(key, decode(encode(entry)) as typeof entry)
  t.same(segmentChangesIn(processMessage(profile, crashed, rest[0]!, kernelOptions, newCounters())), [], 'keys that applied it keep their outputs, nothing twice')
  t.equal(segmentChangesIn(first).length, 2)
})

t.test('a level that falls with time takes the user out of a segment on engagement (the timer sees the definitions)', async (t) => {
  const group = emptyKeyGroup<ProfileState>(0, 1)
  const apply = (messages: InputMessage[]) => messages.flatMap((message) => processMessage(profile, group, message, kernelOptions, newCounters()))
  // active on 25 of 30 days: High
  const days = Array.from({ length: 25 }, (_, day) => Array.from({ length: 10 }, (_, n) => event('u1', T0 + day * DAY + n * 60_000, 'DE'))).flat()
  apply(days)
  const entered = apply([controlMessage('engaged', 1, { all: [{ dimension: 'engagement', range: { from: 'Medium-High' } }] })])
  t.same(segmentChangesIn(entered), ['+engaged u1 v1'])
  const later = apply([watermark(T0 + 120 * DAY)])
  t.same(segmentChangesIn(later), ['-engaged u1 v2'], 'months without an event: Low, out of the segment')
})

t.test('an identity merge: the anonymous profile leaves its segments, the merged one enters', async (t) => {
  const group = emptyKeyGroup<ProfileState>(0, 1)
  const apply = (messages: InputMessage[]) => messages.flatMap((message) => processMessage(profile, group, message, kernelOptions, newCounters()))
  apply([controlMessage('de', 1, { all: [{ dimension: 'country', equals: 'DE' }] })])
  t.same(segmentChangesIn(apply([event('anon', T0, 'DE')])), ['+de anon v1'])
  const merge = { v: ENVELOPE_VERSION, type: 'merge' as const, project: 'p', id: 'merge-1', time: T0 + 1, key: 'anon', keyGroup: 0, source: 'live' as const, data: { from: 'anon', into: 'user' } }
  const merged = apply([{ stream: 'SEG_ENRICHED', seq: ++seq, subject: 'seg.p.enriched.0', data: encode(merge) }])
  t.same(segmentChangesIn(merged), ['-de anon v2', '+de user v1'])
})
