import t from 'tap'
import { decode, decodeEnvelope, encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type RawEventEnvelope, type Source } from '../../schemas/envelope.ts'
import { emptyKeyGroup, newCounters, processMessage, type InputMessage, type KeyGroupState, type KernelCounters, type Outgoing } from '../../operators/runtime/kernel.ts'
import type { Operator } from '../../operators/runtime/operator.ts'
import { checkpointCopy } from '../harness/checkpoint.ts'

const GAP = 30 * 60_000
const T0 = Date.parse('2019-05-01T00:00:00Z')

/** Session-like test logic: counts events, wakes GAP after the last one, emits "closed:<n>". */
const sessions: Operator<{ n: number }, RawEventEnvelope> = {
  stepId: 'sessions',
  init: () => ({ n: 0 }),
  toInput(envelope) {
    if (envelope.type !== 'raw_event') throw new Error('not a raw event')
    if (envelope.data.event === 'boom') throw new Error('boom')
    return envelope
  },
  keyOf: (input) => input.key,
  onEvent(state, input, { eventTime }) {
    const n = state.n + 1
    return { state: { n }, emit: [emission(input, `event:${n}`)], wakeAt: eventTime + GAP }
  },
  onTimer(state, now) {
    return { state: undefined, emit: [{ stage: 'enriched', project: 'p', keyGroup: 0, envelope: { ...baseOut('timer'), data: { name: `closed:${state.n}@${now}`, canonicalId: 'x', message: rawMessage('x', 'e', 0) } } }] }
  },
}

const rawMessage = (user: string, event: string, time: number) => ({ type: 'track' as const, messageId: `${user}-${time}`, anonymousId: user, event, timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString() })
const baseOut = (id: string): Omit<EnrichedEventEnvelope, 'data'> => ({ v: ENVELOPE_VERSION, type: 'enriched_event', project: 'p', id, time: 0, key: 'x', keyGroup: 0, source: 'live', origin: { stream: 'S', seq: 0 } })
const emission = (input: RawEventEnvelope, name: string) => ({
  stage: 'enriched' as const, project: input.project, keyGroup: 0,
  envelope: { ...baseOut(input.id), key: input.key, data: { name, canonicalId: input.key, message: input.data } } as EnrichedEventEnvelope,
})

let seq = 0
function message(user: string, time: number, options: { project?: string; source?: Source; event?: string; stream?: string } = {}): InputMessage {
  const project = options.project ?? 'p'
  const envelope: RawEventEnvelope = { v: ENVELOPE_VERSION, type: 'raw_event', project, id: `${user}-${time}`, time, key: user, keyGroup: 0, source: options.source ?? 'live', data: rawMessage(user, options.event ?? 'e', time) }
  return { stream: options.stream ?? 'S', seq: ++seq, subject: `seg.${project}.raw.0`, data: encode(envelope) }
}

const options = { stepId: 'sessions', latenessOf: () => 60_000, idleTtlMs: 7 * 86_400_000, clock: () => 0, keyGroups: 1 }
const counters = (): KernelCounters => newCounters()
const names = (out: Outgoing[]) => out.map((o) => (decodeEnvelope(o.data) as EnrichedEventEnvelope).data.name ?? (decodeEnvelope(o.data) as { type: string }).type)
const run = (group: KeyGroupState<{ n: number }>, messages: InputMessage[], c = counters()) => messages.flatMap((m) => processMessage(sessions, group, m, options, c))

/** What the state store keeps and loads (test/harness/checkpoint.ts). */
const checkpointRoundTrip = checkpointCopy<{ n: number }>

t.test('outputs carry ids derived from (stepId, stream, seq, index)', async (t) => {
  seq = 0
  const group = emptyKeyGroup<{ n: number }>(0, 1)
  const out = run(group, [message('u1', T0), message('u1', T0 + 1000), message('u2', T0 + 2000)])
  t.same(out.map((o) => o.msgId), ['sessions:S:1:0', 'sessions:S:2:0', 'sessions:S:3:0'])
  t.same(names(out), ['event:1', 'event:2', 'event:1'])
  t.same(out.map((o) => o.subject), ['seg.p.enriched.0', 'seg.p.enriched.0', 'seg.p.enriched.0'])
  t.same(group.offsets, { S: 3 })
  t.same([...group.dirty].sort(), ['p/u1', 'p/u2'], 'changed keys are marked, per project')
})

t.test('a replay from any checkpoint reproduces the same outputs with the same ids', async (t) => {
  seq = 0
  const messages = Array.from({ length: 60 }, (_, i) => message(`u${i % 4}`, T0 + i * 7 * 60_000))
  const reference = run(emptyKeyGroup(0, 1), messages)
  for (const cut of [0, 1, 17, 30, 59]) {
    const group = emptyKeyGroup<{ n: number }>(0, 1)
    const before = run(group, messages.slice(0, cut))
    const resumed = checkpointRoundTrip(group)
    const after = run(resumed, messages)
    t.same([...before, ...after].map((o) => [o.msgId, names([o])[0]]), reference.map((o) => [o.msgId, names([o])[0]]), `checkpoint after ${cut} messages`)
  }
})

t.test('inputs at or below the checkpoint are skipped, and so are inputs a key already applied', async (t) => {
  seq = 0
  const group = emptyKeyGroup<{ n: number }>(0, 1)
  const messages = [message('u1', T0), message('u1', T0 + 1), message('u2', T0 + 2)]
  run(group, messages)
  const c = counters()
  t.same(run(group, messages, c), [], 'everything at or below the offset is skipped')
  t.equal(c.skipped, 3)
  // a crash after u1's state was written but before the checkpoint moved
  const crashed = checkpointRoundTrip(group)
  crashed.offsets = { S: 0 }
  const c2 = counters()
  const replayed = run(crashed, messages, c2)
  t.same(replayed, [], 'keys that already applied these inputs apply nothing again')
  t.equal(crashed.keys.get('p/u1')!.state.n, 2, 'u1 counted twice, not four times')
  t.equal(c2.skipped, 3)
})

t.test('timers fire when the watermark of their project and source passes them', async (t) => {
  seq = 0
  const group = emptyKeyGroup<{ n: number }>(0, 1)
  run(group, [message('u1', T0), message('u1', T0 + 60_000)])
  t.equal(group.keys.get('p/u1')!.wakeAt, T0 + 60_000 + GAP)
  // watermark = max event time - 1 min lateness: u2 at wakeAt + 59 s is not enough...
  t.same(names(run(group, [message('u2', T0 + 60_000 + GAP + 59_000)])), ['event:1'])
  // ...an import far in the future is another source: it does not close live sessions
  t.same(names(run(group, [message('u3', T0 + 10 * GAP, { source: 'import' })])), ['event:1'])
  t.same(names(run(group, [message('u3', T0 + 10 * GAP, { project: 'other' })])), ['event:1'], 'nor does another project')
  const out = run(group, [message('u2', T0 + 60_000 + GAP + 60_000)])
  t.same(names(out), ['event:2', `closed:2@${T0 + 60_000 + GAP}`], 'the live watermark reaching wakeAt closes u1')
  t.equal(out[1]!.msgId, `sessions:S:${seq}:t0:0`, 'a timer output id derives from the input that advanced the watermark')
  t.notOk(group.keys.has('p/u1'), 'the timer dropped the key')
  t.ok(group.dirty.has('p/u1'), 'and the drop will be written')
})

t.test('a later event moves the timer; the superseded one does not fire', async (t) => {
  seq = 0
  const group = emptyKeyGroup<{ n: number }>(0, 1)
  run(group, [message('u1', T0), message('u1', T0 + GAP - 1000)])
  const out = run(group, [message('u9', T0 + GAP + 120_000)])
  t.same(names(out), ['event:1'], 'u1 is still open: its first timer was superseded')
  t.same(names(run(group, [message('u9', T0 + 2 * GAP + 60_000)])).slice(-1), [`closed:2@${T0 + 2 * GAP}`])
})

t.test('a key idle longer than the TTL (in event time) starts again from init()', async (t) => {
  seq = 0
  const group = emptyKeyGroup<{ n: number }>(0, 1)
  const noTimers = { ...sessions, onTimer: undefined }
  const c = counters()
  processMessage(noTimers, group, message('u1', T0), options, c)
  processMessage(noTimers, group, message('u1', T0 + 86_400_000), options, c)
  const out = processMessage(noTimers, group, message('u1', T0 + 9 * 86_400_000), options, c)
  t.same(names(out), ['event:1'], 'eight idle days > the 7-day TTL: counted from scratch')
})

t.test('a message that cannot be decoded or makes the logic throw becomes a dead letter', async (t) => {
  seq = 0
  const group = emptyKeyGroup<{ n: number }>(0, 1)
  const c = counters()
  const garbage: InputMessage = { stream: 'S', seq: ++seq, subject: 'seg.p.raw.0', data: Uint8Array.from([0xc1, 0x00]) }
  const boom = message('u1', T0, { event: 'boom' })
  const out = [...processMessage(sessions, group, garbage, options, c), ...processMessage(sessions, group, boom, options, c), ...run(group, [message('u1', T0 + 1)], c)]
  t.same(out.map((o) => o.subject), ['seg.p.dlq.0', 'seg.p.dlq.0', 'seg.p.enriched.0'])
  const letters = out.slice(0, 2).map((o) => decodeEnvelope(o.data) as { data: { stepId: string; reason: string; seq: number } })
  t.same(letters.map((l) => l.data.stepId), ['sessions', 'sessions'])
  t.match(letters[1]!.data.reason, /boom/)
  t.equal(out[0]!.msgId, 'sessions:S:1:0', 'dead letters have deterministic ids too')
  t.equal(c.deadLettered, 2)
  t.equal(group.offsets.S, 3, 'processing continued past them')
})

/** Labels each output with the label defined for its project by control messages. */
const labelled: Operator<{ n: number }, RawEventEnvelope> = {
  ...sessions,
  onTimer: undefined,
  onControl: (_definitions, control) => control.definition,
  onEvent(state, input, { control }) {
    const n = state.n + 1
    return { state: { n }, emit: [emission(input, `${(control as { label?: string } | undefined)?.label ?? 'none'}:${n}`)] }
  },
}

function controlMessage(stepId: string, label: string | null, version: number, project = 'p'): InputMessage {
  const envelope = { v: ENVELOPE_VERSION, type: 'control' as const, project, id: `c${version}`, time: 0, key: 'labels', keyGroup: 0, source: 'live' as const, data: { stepId, name: 'labels', version, definition: label === null ? null : { label } } }
  return { stream: 'S', seq: ++seq, subject: `seg.${project}.raw.0`, data: encode(envelope) }
}

t.test('control messages take effect at their input position, in every replay too', async (t) => {
  seq = 0
  const messages = [
    message('u1', T0), message('u2', T0 + 1),
    controlMessage('sessions', 'A', 1),
    message('u1', T0 + 2), controlMessage('other-step', 'X', 1), controlMessage('sessions', 'Z', 1, 'q'),
    message('u2', T0 + 3),
    controlMessage('sessions', 'B', 2),
    message('u1', T0 + 4), message('u3', T0 + 5),
  ]
  const c = counters()
  const referenceGroup = emptyKeyGroup<{ n: number }>(0, 1)
  const reference = messages.flatMap((m) => processMessage(labelled, referenceGroup, m, options, c))
  t.same(names(reference), ['none:1', 'none:1', 'A:2', 'A:2', 'B:3', 'B:1'], 'each definition applies from its position on; other steps and projects are ignored')
  t.equal(c.deadLettered, 0, 'a control message for another step is skipped, not dead-lettered')
  for (const cut of [2, 3, 5, 7, 8]) {
    const group = emptyKeyGroup<{ n: number }>(0, 1)
    const before = messages.slice(0, cut).flatMap((m) => processMessage(labelled, group, m, options, counters()))
    const resumed = checkpointRoundTrip(group)
    const after = messages.flatMap((m) => processMessage(labelled, resumed, m, options, counters()))
    t.same(names([...before, ...after]), names(reference), `resumed from a checkpoint after ${cut} messages`)
  }
})

t.test('a historical import in time order gives the same results as the same events live', async (t) => {
  const asSource = (source: Source) => {
    seq = 0
    const group = emptyKeyGroup<{ n: number }>(0, 1)
    const times = [0, 60_000, 45 * 60_000, 46 * 60_000, 200 * 60_000, 201 * 60_000, 500 * 60_000]
    const out = times.flatMap((dt, i) => processMessage(sessions, group, message(`u${i % 2}`, T0 + dt, { source }), options, counters()))
    return out.map((o) => [o.msgId, names([o])[0]])
  }
  const live = asSource('live')
  t.ok(live.some(([, name]) => String(name).startsWith('closed:')), 'sessions closed by the watermark')
  t.same(asSource('import'), live, 'same outputs, same ids, whichever source carried them')
})

/** Keeps the set of event times per key; mergeInto unions them and emits "merged:<n>"; events before 1000 are late. */
const sets: Operator<{ times: number[] }, RawEventEnvelope> = {
  stepId: 'sets',
  init: () => ({ times: [] }),
  toInput: (envelope) => envelope as RawEventEnvelope,
  keyOf: (input) => input.key,
  onEvent: (state, input, { eventTime }) => ({ state: { times: [...state.times, eventTime] }, emit: [emission(input, `n:${state.times.length + 1}`)], late: eventTime < 1000 }),
  mergeInto: (into, from, { into: user }) => {
    const times = [...(into?.times ?? []), ...from.times].sort((a, b) => a - b)
    return { state: { times }, emit: [{ stage: 'enriched', project: 'p', keyGroup: 0, envelope: { ...baseOut(`merge-${user}`), data: { name: `merged:${times.length}`, canonicalId: user, message: rawMessage(user, 'e', 0) } } }] }
  },
}

function control(type: 'merge', from: string, into: string, keyGroup: number): InputMessage {
  const envelope = { v: ENVELOPE_VERSION, type, project: 'p', id: `merge-${from}`, time: 5000, key: from, keyGroup, source: 'live' as const, data: { from, into } }
  return { stream: 'S', seq: ++seq, subject: `seg.p.enriched.${keyGroup}`, data: encode(envelope) }
}

t.test('a merge in one key group moves the anonymous state into the user through mergeInto', async (t) => {
  seq = 0
  const group = emptyKeyGroup<{ times: number[] }>(0, 1)
  const c = counters()
  const opts = { ...options, stepId: 'sets', keyGroups: 1 }
  for (const m of [message('anon', 2000), message('anon', 3000), message('user', 4000), control('merge', 'anon', 'user', 0)]) processMessage(sets, group, m, opts, c)
  t.same([...group.keys.keys()], ['p/user'], 'the anonymous key is gone')
  t.same(group.keys.get('p/user')!.state.times, [2000, 3000, 4000])
  t.equal(c.merged, 1)
  t.ok(group.dirty.has('p/anon') && group.dirty.has('p/user'), 'both keys are written at the next checkpoint')
  // a merge of an id without state changes nothing
  t.same(processMessage(sets, group, control('merge', 'nobody', 'user', 0), opts, c), [])
})

t.test('a merge across key groups sends the state as merge_state, merged in when it arrives', async (t) => {
  seq = 0
  const opts = { ...options, stepId: 'sets', keyGroups: 64 }
  // find two ids in different key groups
  const { keyGroupOf } = await import('../../topology/subjects.ts')
  const anon = 'anon-1'
  let user = 'user-1'
  for (let i = 2; keyGroupOf(user, 64) === keyGroupOf(anon, 64); i++) user = `user-${i}`
  const from = emptyKeyGroup<{ times: number[] }>(keyGroupOf(anon, 64), 1)
  const into = emptyKeyGroup<{ times: number[] }>(keyGroupOf(user, 64), 1)
  const c = counters()
  processMessage(sets, from, message(anon, 2000), opts, c)
  processMessage(sets, into, message(user, 4000), opts, c)
  const out = processMessage(sets, from, control('merge', anon, user, from.keyGroup), opts, c)
  t.equal(out.length, 1)
  t.equal(out[0]!.subject, `seg.p.enriched.${into.keyGroup}`, 'sent on the same stage, to the key group of the user')
  const sent = decodeEnvelope(out[0]!.data)
  t.equal(sent.type, 'merge_state')
  t.equal(from.keys.size, 0, 'the anonymous state left its key group')
  const arrived = { stream: 'S', seq: ++seq, subject: out[0]!.subject, data: out[0]!.data }
  const merged = processMessage(sets, into, arrived, opts, c)
  t.same(into.keys.get(`p/${user}`)!.state.times, [2000, 4000])
  t.same(names(merged), ['merged:2'])
  // a replay of the same merge_state after the key applied it changes nothing
  t.same(processMessage(sets, into, { ...arrived }, opts, c), [], 'skipped: at or below the offset')
  // another step's merge_state is not ours
  const other = encode({ ...sent, data: { ...(sent as { data: object }).data, stepId: 'someone-else' } })
  t.same(processMessage(sets, into, { stream: 'S', seq: ++seq, subject: out[0]!.subject, data: other }, opts, c), [])
  t.same(into.keys.get(`p/${user}`)!.state.times, [2000, 4000])
})

t.test('an input the logic finds too late goes, unchanged, to the late subject and is counted', async (t) => {
  seq = 0
  const group = emptyKeyGroup<{ times: number[] }>(3, 1)
  const c = counters()
  const late = message('u', 500)
  const out = processMessage(sets, group, { ...late, subject: 'seg.p.raw.3' }, { ...options, stepId: 'sets' }, c)
  const toLate = out.filter((o) => o.subject === 'seg.p.late.3')
  t.equal(toLate.length, 1)
  t.same(Buffer.from(toLate[0]!.data), Buffer.from(late.data), 'the input as it came')
  t.equal(toLate[0]!.msgId, `sets:S:${late.seq}:late`)
  t.equal(c.late, 1)
  t.equal(processMessage(sets, group, message('u', 2000), { ...options, stepId: 'sets' }, c).filter((o) => o.subject.includes('.late.')).length, 0)
  t.equal(c.late, 1)
})

t.test('the checkpoint interval stays inside the output streams\' duplicate window', async (t) => {
  const { commitIntervalOf, DEFAULT_COMMIT_INTERVAL_MS } = await import('../../operators/runtime/instance.ts')
  const { segstreamTopology } = await import('../../topology/definition.ts')
  const topology = (duplicateWindowMs?: number) => segstreamTopology({ duplicateWindowMs })
  const stepOf = (topo: ReturnType<typeof topology>, stepId: string) => topo.steps.find((step) => step.stepId === stepId)!
  const standard = topology()
  t.equal(commitIntervalOf({ step: stepOf(standard, 'enrich'), topology: standard }), DEFAULT_COMMIT_INTERVAL_MS, 'the default, inside a 2-minute window')
  t.equal(commitIntervalOf({ step: stepOf(standard, 'sessionize'), topology: standard, commitIntervalMs: 50 }), 50, 'a shorter one as asked')
  t.equal(commitIntervalOf({ step: stepOf(standard, 'sessionize'), topology: standard, commitIntervalMs: 600_000 }), 30_000, 'a longer one capped at a quarter of the window')
  const short = topology(20_000)
  t.equal(commitIntervalOf({ step: stepOf(short, 'enrich'), topology: short }), 5_000, 'a 20 s window: 5 s at most')
})

t.test('timers: one heap entry per key however many inputs move it, and ties fire in key order', async (t) => {
  seq = 0
  const group = emptyKeyGroup<{ n: number }>(0, 1)
  // 500 inputs of one user a second apart: its timer moves 500 times, the heap holds it once
  run(group, Array.from({ length: 500 }, (_, i) => message('u1', T0 + i * 1000)))
  t.equal(group.timers.get('p|live')!.size, 1, 'one entry for the one key with a timer')
  // timers due at the same time come out in key order, whatever order they went in (a heap
  // rebuilt from a checkpoint is filled in another order than the live one was)
  const { TimerHeap } = await import('../../operators/runtime/heap.ts')
  const order = (keys: string[]) => {
    const heap = new TimerHeap()
    for (const key of keys) heap.schedule(T0, key)
    heap.schedule(T0 - 1, 'z')
    return Array.from({ length: keys.length + 1 }, () => heap.pop()!.key)
  }
  t.same(order(['c', 'a', 'b']), ['z', 'a', 'b', 'c'])
  t.same(order(['b', 'c', 'a']), ['z', 'a', 'b', 'c'])
})
