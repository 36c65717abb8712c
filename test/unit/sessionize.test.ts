import assert from 'node:assert/strict'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { createSessionize, MAX_PATH_LENGTH, type SessionizeInput, type SessionizeOptions, type SessionState } from '../../operators/sessionize/logic.ts'
import type { Operator, StepResult } from '../../operators/runtime/operator.ts'
import { decode, encode, validator } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, SessionEnvelope, type EnrichedEventEnvelope, type Origin, type RawEventEnvelope, type Source } from '../../schemas/envelope.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'
import type { Session } from '../../schemas/session.ts'
import { keyGroupOf } from '../../topology/subjects.ts'

const MINUTE = 60_000
const GAP = 30 * MINUTE
const T0 = Date.parse('2024-05-10T10:00:00.000Z')
const KEY_GROUPS = 16
const at = (minutes: number) => T0 + minutes * MINUTE
const sessionSchema = validator(SessionEnvelope, 'session')

interface EventFields {
  user?: string
  type?: SegmentMessage['type']
  event?: string
  id?: string
  /** Page path, in context.page.path (default) or properties.path. */
  path?: string
  pathIn?: 'context' | 'properties'
  channel?: string
  device?: string
  bot?: boolean
  /** Leave out the enriched context (messages from before enrich derived it). */
  noContext?: boolean
  project?: string
  source?: Source
  seq?: number
}

let nextSeq = 0
function eventAt(time: number, fields: EventFields = {}): SessionizeInput {
  const user = fields.user ?? 'u1'
  const type = fields.type ?? 'track'
  const seq = fields.seq ?? ++nextSeq
  const messageId = fields.id ?? `m-${seq}`
  const message: SegmentMessage = {
    type, messageId, userId: user, timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString(),
    ...(type === 'track' ? { event: fields.event ?? 'Clicked' } : {}),
  }
  if (fields.path !== undefined) {
    if (fields.pathIn === 'properties') message.properties = { path: fields.path }
    else message.context = { page: { path: fields.path } }
  }
  const envelope: EnrichedEventEnvelope = {
    v: ENVELOPE_VERSION, type: 'enriched_event', project: fields.project ?? 'alpha', id: messageId, time, key: user,
    keyGroup: keyGroupOf(user, KEY_GROUPS), source: fields.source ?? 'live', origin: { stream: 'SEG_RAW', seq },
    data: {
      name: type === 'track' ? fields.event ?? 'Clicked' : `$${type}`, canonicalId: user, message,
      ...(fields.noContext ? {} : {
        context: { device: { type: fields.device ?? 'desktop' }, acquisition: { channel: fields.channel ?? 'direct' }, bot: fields.bot ?? false },
      }),
    },
  }
  return { envelope, origin: { stream: 'SEG_ENRICHED', seq } }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const inner of Object.values(value)) deepFreeze(inner)
  }
  return value
}

/** What a test looks at in an emitted change. */
interface Change {
  name: string
  version: number
  sessionId: string
  start: number
  end: number
  events: number
  pages: number
}

const changeOf = (envelope: SessionEnvelope): Change => ({
  name: envelope.data.name, version: envelope.data.version, sessionId: envelope.data.session.sessionId,
  start: envelope.data.session.start, end: envelope.data.session.end, events: envelope.data.session.events, pages: envelope.data.session.pages,
})

/**
 * Drives the operator the way the runtime does, with the watermark given by the test. Every state
 * is frozen before the operator sees it (the logic must not mutate it) and every output is checked
 * against the schema and the routing rules.
 */
function driver(t: Test, options: Partial<SessionizeOptions> = {}) {
  const operator = createSessionize({ keyGroups: KEY_GROUPS, gapMsOf: () => GAP, ...options })
  let state: SessionState | undefined
  let wakeAt: number | undefined
  const all: SessionEnvelope[] = []
  const take = (result: StepResult<SessionState>): Change[] => {
    state = result.state
    wakeAt = result.wakeAt
    const envelopes = result.emit.map((emission) => {
      const envelope = emission.envelope as SessionEnvelope
      const { session, name, version } = envelope.data
      const problems = [
        ...sessionSchema.problems(envelope),
        ...(emission.stage === 'sessions' ? [] : [`stage ${emission.stage}`]),
        ...(emission.project === envelope.project ? [] : ['project']),
        ...(emission.keyGroup === keyGroupOf(envelope.key, KEY_GROUPS) && envelope.keyGroup === emission.keyGroup ? [] : ['not routed by the canonical id']),
        ...(envelope.key === session.canonicalId ? [] : ['key']),
        ...(envelope.id === `${session.sessionId}:${version}` ? [] : [`id ${envelope.id}`]),
        ...(envelope.time === (name === '$session_end' ? session.end : session.start) ? [] : ['time']),
      ]
      if (problems.length > 0) t.fail(`${envelope.id}: ${problems.join('; ')}`)
      return envelope
    })
    all.push(...envelopes)
    return envelopes.map(changeOf)
  }
  return {
    operator,
    event(input: SessionizeInput, watermark = Number.NEGATIVE_INFINITY) {
      const current = deepFreeze(state ?? operator.init())
      return take(operator.onEvent(current, input, { eventTime: input.envelope.time, watermark, source: input.envelope.source, control: undefined }))
    },
    timer(now: number) {
      return take(operator.onTimer!(deepFreeze(state ?? operator.init()), now))
    },
    get state() { return state },
    set state(value) { state = value },
    get wakeAt() { return wakeAt },
    get all() { return all },
    take,
    /** The last emitted envelope. */
    last: () => all.at(-1)!,
  }
}

t.test('toInput and keyOf', async (t) => {
  const operator = createSessionize({ keyGroups: KEY_GROUPS })
  t.equal(operator.stepId, 'sessionize')
  const input = eventAt(at(0), { user: 'user-42' })
  const origin: Origin = { stream: 'SEG_ENRICHED', seq: 7 }
  t.same(operator.toInput(input.envelope, origin), { envelope: input.envelope, origin })
  t.equal(operator.keyOf(input), 'user-42')
  const raw: RawEventEnvelope = { ...input.envelope, type: 'raw_event', data: input.envelope.data.message } as unknown as RawEventEnvelope
  t.throws(() => operator.toInput(raw, origin), /sessionize reads enriched_event messages, got raw_event/)
  t.same(operator.init(), { canonicalId: '', project: '', sessions: [] })
})

t.test('one event opens a session at once', async (t) => {
  const d = driver(t)
  const input = eventAt(at(0), { id: 'first', channel: 'paid_search', device: 'mobile', source: 'import', seq: 900 })
  t.same(d.event(input), [{ name: '$session_start', version: 1, sessionId: `u1:${at(0)}`, start: at(0), end: at(0), events: 1, pages: 0 }])
  const envelope = d.last()
  t.same(envelope, {
    v: ENVELOPE_VERSION, type: 'session', project: 'alpha', id: `u1:${at(0)}:1`, time: at(0), key: 'u1', keyGroup: keyGroupOf('u1', KEY_GROUPS),
    source: 'import', origin: { stream: 'SEG_ENRICHED', seq: 900 },
    data: {
      name: '$session_start', version: 1,
      session: { sessionId: `u1:${at(0)}`, canonicalId: 'u1', start: at(0), end: at(0), durationMs: 0, events: 1, pages: 0, channel: 'paid_search', device: 'mobile', firstMessageId: 'first' },
    },
  })
  t.equal(d.wakeAt, at(30), 'the timer is the end plus the gap')
  t.equal(d.state!.canonicalId, 'u1')
  t.equal(d.state!.project, 'alpha')
  t.equal(d.state!.sessions.length, 1)
})

t.test('events within the gap join; the timer closes with the totals', async (t) => {
  const d = driver(t)
  d.event(eventAt(at(0)))
  t.same(d.event(eventAt(at(10))), [], 'an open session that grows emits nothing')
  t.same(d.event(eventAt(at(40))), [], 'exactly the gap after the last event: same session')
  t.equal(d.wakeAt, at(70))
  t.same(d.timer(at(69)), [], 'not yet due')
  t.same(d.timer(at(70)), [{ name: '$session_end', version: 2, sessionId: `u1:${at(0)}`, start: at(0), end: at(40), events: 3, pages: 0 }])
  t.equal(d.last().data.session.durationMs, 40 * MINUTE)
  t.equal(d.last().time, at(40), 'an end is stamped with the session end')
  t.equal(d.wakeAt, undefined, 'nothing open, no timer')
  t.same(d.timer(at(500)), [], 'closing is done once')
})

t.test('a gap exceeded by 1 ms opens a second session', async (t) => {
  const d = driver(t)
  d.event(eventAt(at(0)))
  t.same(d.event(eventAt(at(30) + 1)), [{ name: '$session_start', version: 1, sessionId: `u1:${at(30) + 1}`, start: at(30) + 1, end: at(30) + 1, events: 1, pages: 0 }])
  t.equal(d.wakeAt, at(30), 'the earliest open session decides the timer')
  t.same(d.timer(at(30)), [{ name: '$session_end', version: 2, sessionId: `u1:${at(0)}`, start: at(0), end: at(0), events: 1, pages: 0 }], 'only the due session closes')
  t.equal(d.wakeAt, at(60) + 1)
  t.same(d.timer(at(90)).map((c) => [c.name, c.sessionId, c.version]), [['$session_end', `u1:${at(30) + 1}`, 2]])
})

t.test('the gap is per project', async (t) => {
  const d = driver(t, { gapMsOf: (project) => (project === 'fast' ? 5 * MINUTE : GAP) })
  d.event(eventAt(at(0), { project: 'fast' }))
  t.equal(d.wakeAt, at(5))
  t.equal(d.event(eventAt(at(6), { project: 'fast' })).length, 1, '6 minutes apart with a 5-minute gap: a new session')
  const slow = driver(t, { gapMsOf: (project) => (project === 'fast' ? 5 * MINUTE : GAP) })
  slow.event(eventAt(at(0)))
  t.same(slow.event(eventAt(at(6))), [], 'the default project keeps the 30-minute gap')
  const byDefault = driver(t, { gapMsOf: undefined })
  byDefault.event(eventAt(at(0)))
  t.equal(byDefault.wakeAt, at(30), 'no gapMsOf: 30 minutes')
})

t.test('a timer with several due sessions closes them all', async (t) => {
  const d = driver(t)
  d.event(eventAt(at(0)))
  d.event(eventAt(at(100)))
  d.event(eventAt(at(200)))
  t.same(d.timer(at(150)).map((c) => c.start), [at(0), at(100)])
  t.equal(d.wakeAt, at(230))
})

t.test('late events', async (t) => {
  t.test('inside an ended session: a corrected $session_end with a higher version', async (t) => {
    const d = driver(t)
    d.event(eventAt(at(0)))
    d.event(eventAt(at(20)))
    d.timer(at(60))
    t.same(d.event(eventAt(at(10)), at(60)), [{ name: '$session_end', version: 3, sessionId: `u1:${at(0)}`, start: at(0), end: at(20), events: 3, pages: 0 }])
    t.equal(d.last().origin.seq, nextSeq, 'the correction points at the late event')
    t.same(d.event(eventAt(at(5)), at(61)).map((c) => [c.name, c.version, c.events]), [['$session_end', 4, 4]], 'and again')
    t.equal(d.wakeAt, undefined, 'still closed')
  })

  t.test('before an ended session, within the gap: its start moves, its id stays', async (t) => {
    const d = driver(t)
    d.event(eventAt(at(0)))
    d.timer(at(40))
    t.same(d.event(eventAt(at(-25), { id: 'earlier', channel: 'email' }), at(40)), [{ name: '$session_end', version: 3, sessionId: `u1:${at(0)}`, start: at(-25), end: at(0), events: 2, pages: 0 }])
    t.equal(d.last().data.session.firstMessageId, 'earlier')
    t.equal(d.last().data.session.channel, 'email', 'the channel is the first event\'s')
    t.equal(d.last().data.session.durationMs, 25 * MINUTE)
  })

  t.test('before an open session: $session_start again with the new start', async (t) => {
    const d = driver(t)
    d.event(eventAt(at(0), { id: 'm-b' }))
    t.same(d.event(eventAt(at(-10), { id: 'm-c' }), at(-20)), [{ name: '$session_start', version: 2, sessionId: `u1:${at(0)}`, start: at(-10), end: at(0), events: 2, pages: 0 }])
    t.same(d.event(eventAt(at(-10), { id: 'm-a', channel: 'email' }), at(-20)).map((c) => [c.name, c.version, c.start]), [['$session_start', 3, at(-10)]], 'a new first event at the same time')
    t.same([d.last().data.session.firstMessageId, d.last().data.session.channel], ['m-a', 'email'])
    t.same(d.event(eventAt(at(-5)), at(-20)), [], 'an event inside it changes nothing announced')
  })

  t.test('after an ended session, past the watermark: it opens again, then ends again', async (t) => {
    const d = driver(t)
    d.event(eventAt(at(0)))
    d.timer(at(35))
    t.same(d.event(eventAt(at(20)), at(35)), [{ name: '$session_start', version: 3, sessionId: `u1:${at(0)}`, start: at(0), end: at(20), events: 2, pages: 0 }], 'its end plus the gap is ahead of the watermark')
    t.equal(d.wakeAt, at(50))
    t.same(d.timer(at(50)).map((c) => [c.name, c.version, c.end]), [['$session_end', 4, at(20)]])
  })

  t.test('far from any session: a new session, ended at once when the watermark is past it', async (t) => {
    const d = driver(t)
    d.event(eventAt(at(300)))
    t.same(d.event(eventAt(at(100)), at(290)), [
      { name: '$session_start', version: 1, sessionId: `u1:${at(100)}`, start: at(100), end: at(100), events: 1, pages: 0 },
      { name: '$session_end', version: 2, sessionId: `u1:${at(100)}`, start: at(100), end: at(100), events: 1, pages: 0 },
    ])
    t.same(d.state!.sessions.map((s) => s.start), [at(100), at(300)], 'kept sorted by start')
    t.same(d.state!.sessions.map((s) => s.ended), [true, false])
    t.equal(d.wakeAt, at(330))
    t.same(d.event(eventAt(at(200)), at(100)).map((c) => c.name), ['$session_start'], 'a watermark behind it: open')
    t.equal(d.wakeAt, at(230))
  })

  t.test('a bridge merges two sessions: the later one is retracted, the earlier carries the totals', async (t) => {
    const d = driver(t)
    d.event(eventAt(at(0)))
    d.event(eventAt(at(10), { type: 'page', path: '/a' }))
    d.event(eventAt(at(45), { type: 'page', path: '/b' }))
    d.event(eventAt(at(50)))
    d.timer(at(100))
    t.equal(d.all.length, 4, 'two starts, two ends')
    t.same(d.event(eventAt(at(28)), at(100)), [
      { name: '$session_retract', version: 3, sessionId: `u1:${at(45)}`, start: at(45), end: at(50), events: 2, pages: 1 },
      { name: '$session_end', version: 3, sessionId: `u1:${at(0)}`, start: at(0), end: at(50), events: 5, pages: 2 },
    ])
    t.equal(d.last().data.session.entryPage, '/a')
    t.equal(d.last().data.session.exitPage, '/b')
    t.equal(d.state!.sessions.length, 1)
    t.same(liveSessions(d.all).map((s) => [s.sessionId, s.events]), [[`u1:${at(0)}`, 5]])
  })

  t.test('a bridge into an open session: the merged session is open, announced with $session_start', async (t) => {
    const d = driver(t)
    d.event(eventAt(at(0)))
    d.timer(at(31))
    d.event(eventAt(at(50)), at(31))
    t.same(d.event(eventAt(at(25)), at(40)).map((c) => [c.name, c.version, c.sessionId, c.events]), [
      ['$session_retract', 2, `u1:${at(50)}`, 1],
      ['$session_start', 3, `u1:${at(0)}`, 3],
    ])
    t.equal(d.wakeAt, at(80))
  })

  t.test('one event bridging three sessions', async (t) => {
    const d = driver(t, { gapMsOf: () => 10 * MINUTE })
    for (const minute of [0, 20, 40]) d.event(eventAt(at(minute)))
    d.event(eventAt(at(10)))
    t.equal(liveSessions(d.all).length, 2, 'the first two joined')
    t.same(d.event(eventAt(at(30))).map((c) => [c.name, c.sessionId]), [['$session_retract', `u1:${at(40)}`], ['$session_start', `u1:${at(0)}`]])
    t.same(liveSessions(d.all).map((s) => [s.sessionId, s.start, s.end, s.events]), [[`u1:${at(0)}`, at(0), at(40), 5]])
  })
})

t.test('bots and reserved names are ignored', async (t) => {
  const d = driver(t)
  t.same(d.event(eventAt(at(0), { bot: true })), [])
  t.equal(d.state, undefined, 'a user seen only as a bot keeps no state')
  d.event(eventAt(at(1)))
  const before = d.state
  t.same(d.event(eventAt(at(2), { bot: true })), [])
  t.equal(d.state, before, 'state unchanged')
  t.equal(d.wakeAt, at(31), 'and the timer kept')
  t.same(d.event(eventAt(at(3), { event: '$session_start' })), [], 'a reserved name')
  t.equal(d.state, before)
  d.timer(at(100))
  t.equal(d.last().data.session.events, 1)

  const counting = driver(t, { countBots: true })
  t.same(counting.event(eventAt(at(0), { bot: true })).map((c) => c.name), ['$session_start'], 'countBots: bots count')
  t.same(counting.event(eventAt(at(0), { event: '$session_end' })), [], 'reserved names stay ignored')
  t.equal(counting.state!.sessions[0]!.events, 1)
})

t.test('pages, entry and exit pages, channel and device', async (t) => {
  const d = driver(t)
  d.event(eventAt(at(0), { channel: 'paid_search', device: 'mobile', id: 'm-a' }))
  d.event(eventAt(at(1), { type: 'page', path: '/home', channel: 'direct', device: 'desktop' }))
  d.event(eventAt(at(2), { type: 'screen', path: '/settings', pathIn: 'properties' }))
  d.event(eventAt(at(3), { type: 'page' }))
  d.event(eventAt(at(4), { type: 'page', path: '/checkout' }))
  d.event(eventAt(at(5), { type: 'identify' }))
  d.event(eventAt(at(6), { type: 'track', path: '/not-a-view' }))
  d.timer(at(100))
  const session = d.last().data.session
  t.same(
    { pages: session.pages, entryPage: session.entryPage, exitPage: session.exitPage, channel: session.channel, device: session.device, firstMessageId: session.firstMessageId, events: session.events },
    { pages: 4, entryPage: '/home', exitPage: '/checkout', channel: 'paid_search', device: 'mobile', firstMessageId: 'm-a', events: 7 },
  )
  // late page views move the entry and the exit page only when they come before or after them
  d.event(eventAt(at(0) + 500, { type: 'page', path: '/landing' }), at(100))
  t.equal(d.last().data.session.entryPage, '/landing')
  t.equal(d.last().data.session.exitPage, '/checkout')
  t.equal(d.last().data.session.pages, 5)
  t.equal(d.last().data.session.channel, 'paid_search', 'the first event is still the first')

  const bare = driver(t)
  bare.event(eventAt(at(0), { noContext: true, type: 'page' }))
  const start = bare.last().data.session
  t.same([start.pages, 'entryPage' in start, 'channel' in start, 'device' in start], [1, false, false, false], 'unknown values are left out, not null')

  const long = driver(t)
  long.event(eventAt(at(0), { type: 'page', path: `/${'x'.repeat(5000)}` }))
  t.equal(long.last().data.session.entryPage!.length, MAX_PATH_LENGTH, 'paths are capped')
})

t.test('equal event times: the first event is the smaller message id, whatever the arrival order', async (t) => {
  for (const order of [['b', 'a'], ['a', 'b']]) {
    const d = driver(t)
    for (const id of order) d.event(eventAt(at(0), { id, channel: `channel-${id}`, type: 'page', path: `/${id}` }))
    d.timer(at(100))
    const session = d.last().data.session
    t.same([session.firstMessageId, session.channel, session.entryPage, session.exitPage, session.sessionId], ['a', 'channel-a', '/a', '/b', `u1:${at(0)}`], order.join(','))
  }
})

t.test('mergeInto', async (t) => {
  const merge = (d: ReturnType<typeof driver>, into: SessionState | undefined, from: SessionState, watermark: number) =>
    d.take(d.operator.mergeInto!(into === undefined ? undefined : deepFreeze(into), deepFreeze(from), { from: 'anon', into: 'u1', watermark, control: undefined }))

  t.test('into a user without state: every session is retracted under the anonymous id and re-emitted under the user', async (t) => {
    const anon = driver(t)
    anon.event(eventAt(at(0), { user: 'anon' }))
    anon.event(eventAt(at(5), { user: 'anon', type: 'page', path: '/x' }))
    anon.timer(at(40))
    anon.event(eventAt(at(100), { user: 'anon' }), at(40))
    const user = driver(t)
    const changes = merge(user, undefined, anon.state!, at(60))
    t.same(changes, [
      { name: '$session_retract', version: 3, sessionId: `anon:${at(0)}`, start: at(0), end: at(5), events: 2, pages: 1 },
      { name: '$session_retract', version: 2, sessionId: `anon:${at(100)}`, start: at(100), end: at(100), events: 1, pages: 0 },
      { name: '$session_start', version: 1, sessionId: `u1:${at(0)}`, start: at(0), end: at(5), events: 2, pages: 1 },
      { name: '$session_end', version: 2, sessionId: `u1:${at(0)}`, start: at(0), end: at(5), events: 2, pages: 1 },
      { name: '$session_start', version: 1, sessionId: `u1:${at(100)}`, start: at(100), end: at(100), events: 1, pages: 0 },
    ])
    const retract = user.all[0]!
    t.same([retract.key, retract.keyGroup, retract.data.session.canonicalId], ['anon', keyGroupOf('anon', KEY_GROUPS), 'anon'], 'retractions go where the sessions were counted')
    t.same([user.all[2]!.key, user.all[2]!.data.session.canonicalId], ['u1', 'u1'])
    t.equal(user.all[2]!.data.session.entryPage, '/x')
    t.equal(user.state!.canonicalId, 'u1')
    t.equal(user.wakeAt, at(130))
    t.same(liveSessions([...anon.all, ...user.all]).map((s) => s.sessionId), [`u1:${at(0)}`, `u1:${at(100)}`])
    t.same(user.event(eventAt(at(110))), [], 'later events join the moved session')
  })

  t.test('a moved session within the gap of the user\'s: one session under the user\'s id', async (t) => {
    const anon = driver(t)
    anon.event(eventAt(at(-20), { user: 'anon', id: 'anon-first', channel: 'email' }))
    const user = driver(t)
    user.event(eventAt(at(0)))
    user.event(eventAt(at(10)))
    t.same(merge(user, user.state, anon.state!, at(0)), [
      { name: '$session_retract', version: 2, sessionId: `anon:${at(-20)}`, start: at(-20), end: at(-20), events: 1, pages: 0 },
      { name: '$session_start', version: 2, sessionId: `u1:${at(0)}`, start: at(-20), end: at(10), events: 3, pages: 0 },
    ])
    t.same([user.last().data.session.firstMessageId, user.last().data.session.channel], ['anon-first', 'email'], 'the first event now is the anonymous one')
  })

  t.test('a moved session bridging two of the user\'s: the later is retracted', async (t) => {
    const anon = driver(t)
    anon.event(eventAt(at(30), { user: 'anon' }))
    anon.event(eventAt(at(40), { user: 'anon' }))
    const user = driver(t)
    user.event(eventAt(at(0)))
    user.event(eventAt(at(65)))
    user.timer(at(200))
    t.same(merge(user, user.state, anon.state!, at(200)).map((c) => [c.name, c.version, c.sessionId, c.events]), [
      ['$session_retract', 2, `anon:${at(30)}`, 2],
      ['$session_retract', 3, `u1:${at(65)}`, 1],
      ['$session_end', 3, `u1:${at(0)}`, 4],
    ])
    t.same(liveSessions([...anon.all, ...user.all]).map((s) => [s.sessionId, s.start, s.end, s.events]), [[`u1:${at(0)}`, at(0), at(65), 4]])
  })

  t.test('sessions far apart stay apart; the user\'s own are not re-emitted', async (t) => {
    const anon = driver(t)
    anon.event(eventAt(at(500), { user: 'anon' }))
    anon.event(eventAt(at(490), { user: 'anon' }))
    const user = driver(t)
    user.event(eventAt(at(0)))
    const changes = merge(user, user.state, anon.state!, at(0))
    t.same(changes.map((c) => [c.name, c.sessionId, c.start]), [['$session_retract', `anon:${at(500)}`, at(490)], ['$session_start', `u1:${at(490)}`, at(490)]], 'the moved session is named by its start')
    t.same(user.state!.sessions.map((s) => s.opened), [at(0), at(490)])
  })

  t.test('an anonymous state without sessions changes nothing', async (t) => {
    const user = driver(t)
    user.event(eventAt(at(0)))
    const into = user.state!
    const empty: SessionState = { canonicalId: '', project: '', sessions: [] }
    t.same(merge(user, into, empty, at(0)), [])
    t.equal(user.state, into)
    t.equal(user.wakeAt, at(30))
    t.same(merge(user, undefined, empty, at(0)), [])
    t.equal(user.state, undefined)
  })
})

t.test('state stays bounded', async (t) => {
  t.test('ended sessions beyond the horizon leave the state; a late event there opens a separate session', async (t) => {
    const d = driver(t, { horizonMs: 24 * 60 * MINUTE })
    d.event(eventAt(at(0)))
    d.event(eventAt(at(10)))
    d.event(eventAt(at(25 * 60)))
    t.equal(d.state!.sessions.length, 2, 'open sessions are kept whatever their age')
    d.timer(at(25 * 60 - 60))
    t.same(d.state!.sessions.map((s) => s.start), [at(25 * 60)], 'ended and more than the horizon behind the newest event: dropped')
    t.same(d.event(eventAt(at(5)), at(25 * 60 - 60)).map((c) => [c.name, c.sessionId, c.events]), [
      ['$session_start', `u1:${at(5)}`, 1],
      ['$session_end', `u1:${at(5)}`, 1],
    ], 'the dropped session is final: the event forms its own session')
    t.equal(d.state!.sessions.length, 1, 'and leaves the state at once')
  })

  t.test('at most maxSessions: the oldest is ended and dropped', async (t) => {
    const d = driver(t, { maxSessions: 3 })
    for (const hour of [0, 1, 2]) d.event(eventAt(at(hour * 60)))
    t.same(d.event(eventAt(at(180))).map((c) => [c.name, c.sessionId, c.version]), [
      ['$session_start', `u1:${at(180)}`, 1],
      ['$session_end', `u1:${at(0)}`, 2],
    ])
    t.same(d.state!.sessions.map((s) => s.start), [at(60), at(120), at(180)])
    t.equal(d.wakeAt, at(90))
  })

  t.test('plain data: a msgpack round trip changes nothing, and 50 sessions stay small', async (t) => {
    const d = driver(t)
    for (let i = 0; i < 60; i++) {
      d.event(eventAt(at(i * 60), { user: '0f8fad5b-d9cb-469f-a165-70867728950e', id: `e3b0c442-98fc-1c14-9afb-${String(2 * i).padStart(12, '0')}`, type: 'page', path: '/products/some-product-name', channel: 'organic_search', device: 'mobile' }))
      d.event(eventAt(at(i * 60 + 5), { user: '0f8fad5b-d9cb-469f-a165-70867728950e', id: `e3b0c442-98fc-1c14-9afb-${String(2 * i + 1).padStart(12, '0')}`, type: 'page', path: '/checkout' }))
    }
    const state = d.state!
    t.equal(state.sessions.length, 50, 'maxSessions by default')
    t.same(decode(encode(state)), state)
    t.same(JSON.parse(JSON.stringify(state)), state)
    const bytes = encode(state).length
    t.ok(bytes < 25_000, `50 typical sessions in ${bytes} bytes`)
  })
})

t.test('replays give the same outputs', async (t) => {
  const inputs = [at(0), at(50), at(20), at(45), at(200), at(-100)].map((time, index) => eventAt(time, { seq: 1000 + index, type: index % 2 ? 'page' : 'track', path: `/p${index}` }))
  const run = () => {
    const d = driver(t)
    inputs.forEach((input, index) => d.event(input, at(index * 30)))
    d.timer(at(1000))
    return d.all
  }
  const first = run()
  t.same(run(), first)
  t.ok(first.length >= 8)
})

// ---------------------------------------------------------------------------------------------
// Properties: whatever the arrival order, the watermarks and the timers, the sessions a consumer
// reconstructs (highest version per sessionId, retracted ones dropped) are exactly those of a
// brute-force sessionization of every event.

/** What a consumer ends up with. */
function liveSessions(envelopes: SessionEnvelope[]): Session[] {
  const latest = new Map<string, SessionEnvelope>()
  for (const envelope of envelopes) {
    const known = latest.get(envelope.data.session.sessionId)
    if (!known || envelope.data.version > known.data.version) latest.set(envelope.data.session.sessionId, envelope)
  }
  return [...latest.values()].filter((e) => e.data.name !== '$session_retract').map((e) => e.data.session).sort((a, b) => a.start - b.start)
}

interface LogEvent {
  time: number
  messageId: string
  type: 'track' | 'page' | 'screen'
  path?: string
  pathIn: 'context' | 'properties'
  channel: string
  device: string
  bot: boolean
  reserved: boolean
}

interface ReferenceSession {
  start: number
  end: number
  durationMs: number
  events: number
  pages: number
  entryPage?: string
  exitPage?: string
  channel: string
  device: string
  firstMessageId: string
}

/** Written apart from the operator: sort everything, cut where consecutive events are more than a gap apart. */
function referenceSessions(log: LogEvent[], gap: number): ReferenceSession[] {
  const counted = log.filter((e) => !e.bot && !e.reserved)
  const sorted = [...counted].sort((a, b) => a.time - b.time || (a.messageId < b.messageId ? -1 : a.messageId > b.messageId ? 1 : 0))
  const groups: LogEvent[][] = []
  for (const event of sorted) {
    const group = groups.at(-1)
    if (group && event.time - group.at(-1)!.time <= gap) group.push(event)
    else groups.push([event])
  }
  return groups.map((group) => {
    const views = group.filter((e) => e.type !== 'track')
    const withPath = views.filter((e) => e.path !== undefined)
    const session: ReferenceSession = {
      start: group[0]!.time, end: group.at(-1)!.time, durationMs: group.at(-1)!.time - group[0]!.time, events: group.length, pages: views.length,
      channel: group[0]!.channel, device: group[0]!.device, firstMessageId: group[0]!.messageId,
    }
    if (withPath.length > 0) {
      session.entryPage = withPath[0]!.path
      session.exitPage = withPath.at(-1)!.path
    }
    return session
  })
}

const comparable = (session: Session): ReferenceSession => {
  const { sessionId: _id, canonicalId: _user, ...rest } = session
  return rest as ReferenceSession
}

const PROPERTY_GAP = 10

const logEvent = (span: number) => fc.record({
  time: fc.integer({ min: 0, max: span }),
  type: fc.constantFrom('track', 'page', 'screen') as fc.Arbitrary<LogEvent['type']>,
  path: fc.option(fc.constantFrom('/a', '/b', '/c', '/d'), { nil: undefined }),
  pathIn: fc.constantFrom('context', 'properties') as fc.Arbitrary<LogEvent['pathIn']>,
  channel: fc.constantFrom('direct', 'email', 'referral'),
  device: fc.constantFrom('desktop', 'mobile'),
  bot: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
  reserved: fc.integer({ min: 0, max: 19 }).map((n) => n === 0),
})

/** An event log (unique message ids, in an order unrelated to time) and an arrival order with watermark moves. */
const scenario = fc.constantFrom(30, 100, 300).chain((span) => fc.array(logEvent(span), { minLength: 1, maxLength: 40, size: 'max' })).chain((raw) => {
  const log: LogEvent[] = raw.map((e, index) => ({ ...e, messageId: `m${String((index * 7919) % 1000).padStart(3, '0')}-${index}` }))
  const indices = log.map((_, index) => index)
  return fc.record({
    log: fc.constant(log),
    arrival: fc.shuffledSubarray(indices, { minLength: log.length, maxLength: log.length }),
    /** Before each arrival, maybe a watermark jump (and a timer) to this time. */
    jumps: fc.array(fc.oneof({ arbitrary: fc.constant(undefined), weight: 5 }, { arbitrary: fc.integer({ min: -20, max: 320 }), weight: 1 }), { minLength: log.length, maxLength: log.length }),
    lateness: fc.integer({ min: 0, max: 120 }),
    /** Put the state through msgpack between steps, as the runtime does. */
    roundTrip: fc.boolean(),
  })
})

function inputOf(event: LogEvent, user: string, seq: number): SessionizeInput {
  const input = eventAt(event.time, {
    user, id: event.messageId, type: event.type, path: event.path, pathIn: event.pathIn, channel: event.channel, device: event.device,
    bot: event.bot, seq, project: 'prop', ...(event.reserved ? { event: '$session_fake' } : {}),
  })
  if (event.reserved) input.envelope.data.name = '$session_fake'
  return input
}

/**
 * The runtime in miniature, for one key group: a watermark that follows the largest event time
 * minus the lateness (and the test's jumps), and timers that fire once the watermark reaches them.
 */
function miniRuntime(operator: Operator<SessionState, SessionizeInput>, lateness: number, roundTrip: boolean) {
  const emitted: SessionEnvelope[] = []
  let watermark = Number.NEGATIVE_INFINITY
  let largest = Number.NEGATIVE_INFINITY
  const states = new Map<string, { state: SessionState; wakeAt?: number }>()
  const store = (key: string, result: StepResult<SessionState>) => {
    emitted.push(...result.emit.map((e) => e.envelope as SessionEnvelope))
    if (result.state === undefined) states.delete(key)
    else states.set(key, { state: roundTrip ? (decode(encode(result.state)) as SessionState) : deepFreeze(result.state), ...(result.wakeAt === undefined ? {} : { wakeAt: result.wakeAt }) })
  }
  const fireTimers = (force = false) => {
    for (const [key, entry] of [...states]) {
      // `force` runs onTimer even when nothing is due: it must then change nothing
      if (force || (entry.wakeAt !== undefined && entry.wakeAt <= watermark)) store(key, operator.onTimer!(entry.state, watermark))
    }
  }
  return {
    emitted,
    states,
    get watermark() { return watermark },
    event(input: SessionizeInput) {
      const key = operator.keyOf(input)
      const current = states.get(key)?.state ?? operator.init()
      store(key, operator.onEvent(current, input, { eventTime: input.envelope.time, watermark, source: 'live', control: undefined }))
      largest = Math.max(largest, input.envelope.time)
      watermark = Math.max(watermark, largest - lateness)
      fireTimers()
    },
    jump(to: number) {
      watermark = Math.max(watermark, to)
      fireTimers(true)
    },
    merge(from: string, into: string) {
      const fromEntry = states.get(from)
      if (!fromEntry) return
      states.delete(from)
      store(into, operator.mergeInto!(states.get(into)?.state, fromEntry.state, { from, into, watermark, control: undefined }))
      fireTimers()
    },
    finish() {
      watermark = Number.POSITIVE_INFINITY
      fireTimers(true)
    },
  }
}

/** What must hold of any run's outputs, whatever the reference. */
function checkOutputs(emitted: SessionEnvelope[]) {
  const ids = new Set<string>()
  const versions = new Map<string, number>()
  for (const envelope of emitted) {
    if (!sessionSchema.check(envelope)) throw new Error(`schema: ${sessionSchema.problems(envelope).join('; ')}`)
    if (ids.has(envelope.id)) throw new Error(`duplicate id ${envelope.id}`)
    ids.add(envelope.id)
    const { sessionId, start, end } = envelope.data.session
    const expected = (versions.get(sessionId) ?? 0) + 1
    if (envelope.data.version !== expected) throw new Error(`${sessionId}: version ${envelope.data.version} after ${expected - 1}`)
    versions.set(sessionId, expected)
    const opened = Number(sessionId.slice(sessionId.lastIndexOf(':') + 1))
    if (envelope.data.name !== '$session_retract' && !(start <= opened && opened <= end)) throw new Error(`${sessionId} is not inside [${start}, ${end}]`)
  }
}

t.test('property: live sessions equal a brute-force sessionization, whatever the arrival order', async (t) => {
  const operator = createSessionize({ keyGroups: KEY_GROUPS, gapMsOf: () => PROPERTY_GAP })
  let runs = 0
  fc.assert(
    fc.property(scenario, ({ log, arrival, jumps, lateness, roundTrip }) => {
      const runtime = miniRuntime(operator, lateness, roundTrip)
      arrival.forEach((index, position) => {
        const jump = jumps[position]
        if (jump !== undefined) runtime.jump(jump)
        runtime.event(inputOf(log[index]!, 'u1', position + 1))
      })
      runtime.finish()
      checkOutputs(runtime.emitted)
      const live = liveSessions(runtime.emitted)
      assert.deepEqual(live.map(comparable), referenceSessions(log, PROPERTY_GAP))
      if (!live.every((s) => s.canonicalId === 'u1')) throw new Error('canonical id')
      const final = new Map(runtime.emitted.map((e) => [e.data.session.sessionId, e.data.name]))
      if (![...final.values()].every((name) => name !== '$session_start')) throw new Error('a session left open after the last timer')
      if (runtime.states.get('u1')?.wakeAt !== undefined) throw new Error('a timer left after the last one')
      runs++
    }),
    { numRuns: 400 },
  )
  t.equal(runs, 400)
})

t.test('property: an identity merge gives the sessions of all events under the user', async (t) => {
  const operator = createSessionize({ keyGroups: KEY_GROUPS, gapMsOf: () => PROPERTY_GAP })
  const merged = scenario.chain((base) => fc.record({
    base: fc.constant(base),
    /** Who each event came under before the merge. */
    anonymous: fc.array(fc.boolean(), { minLength: base.log.length, maxLength: base.log.length }),
    /** How many arrivals come before the merge: the rest come under the user. */
    mergeAfter: fc.integer({ min: 0, max: base.log.length }),
  }))
  let runs = 0
  fc.assert(
    fc.property(merged, ({ base: { log, arrival, jumps, lateness, roundTrip }, anonymous, mergeAfter }) => {
      const runtime = miniRuntime(operator, lateness, roundTrip)
      arrival.forEach((index, position) => {
        if (position === mergeAfter) runtime.merge('anon', 'u1')
        const jump = jumps[position]
        if (jump !== undefined) runtime.jump(jump)
        runtime.event(inputOf(log[index]!, position < mergeAfter && anonymous[index] ? 'anon' : 'u1', position + 1))
      })
      if (mergeAfter === log.length) runtime.merge('anon', 'u1')
      runtime.finish()
      checkOutputs(runtime.emitted)
      const live = liveSessions(runtime.emitted)
      assert.deepEqual(live.map(comparable), referenceSessions(log, PROPERTY_GAP))
      if (!live.every((s) => s.canonicalId === 'u1')) throw new Error(`a live session under ${live.find((s) => s.canonicalId !== 'u1')!.canonicalId}`)
      runs++
    }),
    { numRuns: 400 },
  )
  t.equal(runs, 400)
})
