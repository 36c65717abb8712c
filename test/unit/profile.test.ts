import assert from 'node:assert/strict'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { acquisitionMonthOf, localDayOf, startOfLocalDay } from '../../operators/profile/calendar.ts'
import { engagementOf, levelOf } from '../../operators/profile/engagement.ts'
import { ProfileEnvelope, SegmentMembershipEnvelope } from '../../operators/profile/envelopes.ts'
import { createProfile, MAX_TRAITS, MAX_TRAIT_VALUE_LENGTH, profileOf, type ProfileInput, type ProfileOptions, type ProfileState } from '../../operators/profile/logic.ts'
import type { Emission, Operator, StepResult } from '../../operators/runtime/operator.ts'
import { createSessionize, type SessionizeInput, type SessionState } from '../../operators/sessionize/logic.ts'
import { decode, encode, validator } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type Origin, type RawEventEnvelope, type SessionEnvelope, type Source } from '../../schemas/envelope.ts'
import type { EngagementLevel, Profile } from '../../schemas/profile.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'
import type { Session, SessionName } from '../../schemas/session.ts'
import { keyGroupOf } from '../../topology/subjects.ts'

const MINUTE = 60_000
const HOUR = 60 * MINUTE
const DAY = 24 * HOUR
const KEY_GROUPS = 16
const T0 = Date.parse('2024-05-10T10:00:00.000Z')
const profileSchema = validator(ProfileEnvelope, 'profile')
const membershipSchema = validator(SegmentMembershipEnvelope, 'segment_membership')

interface EventFields {
  user?: string
  type?: SegmentMessage['type']
  event?: string
  id?: string
  traits?: Record<string, unknown>
  properties?: Record<string, unknown>
  channel?: string
  utmSource?: string
  campaign?: string
  device?: string
  browser?: string
  os?: string
  country?: string
  city?: string
  bot?: boolean
  /** Leave out the enriched context (messages from before enrich derived it). */
  noContext?: boolean
  project?: string
  source?: Source
  seq?: number
}

let nextSeq = 0
function eventAt(time: number, fields: EventFields = {}): ProfileInput & { envelope: EnrichedEventEnvelope } {
  const user = fields.user ?? 'u1'
  const type = fields.type ?? 'track'
  const seq = fields.seq ?? ++nextSeq
  const messageId = fields.id ?? `m-${String(seq).padStart(6, '0')}`
  const message: SegmentMessage = {
    type, messageId, userId: user, timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString(),
    ...(type === 'track' ? { event: fields.event ?? 'Clicked' } : {}),
    ...(fields.traits ? { traits: fields.traits } : {}),
    ...(fields.properties ? { properties: fields.properties } : {}),
  }
  const envelope: EnrichedEventEnvelope = {
    v: ENVELOPE_VERSION, type: 'enriched_event', project: fields.project ?? 'alpha', id: messageId, time, key: user,
    keyGroup: keyGroupOf(user, KEY_GROUPS), source: fields.source ?? 'live', origin: { stream: 'SEG_RAW', seq },
    data: {
      name: type === 'track' ? fields.event ?? 'Clicked' : `$${type}`, canonicalId: user, message,
      ...(fields.noContext ? {} : {
        context: {
          device: { type: fields.device ?? 'desktop', ...(fields.browser ? { browser: fields.browser } : {}), ...(fields.os ? { os: fields.os } : {}) },
          acquisition: { channel: fields.channel ?? 'direct', ...(fields.utmSource ? { source: fields.utmSource } : {}), ...(fields.campaign ? { campaign: fields.campaign } : {}) },
          ...(fields.country ? { geo: { country: fields.country, ...(fields.city ? { city: fields.city } : {}) } } : {}),
          bot: fields.bot ?? false,
        },
      }),
    },
  }
  return { envelope, origin: { stream: 'SEG_ENRICHED', seq } }
}

function sessionMessage(name: SessionName, version: number, session: { user?: string; opened: number; start?: number; end?: number; events?: number }, seq = ++nextSeq): ProfileInput & { envelope: SessionEnvelope } {
  const user = session.user ?? 'u1'
  const start = session.start ?? session.opened
  const end = session.end ?? start
  const full: Session = {
    sessionId: `${user}:${session.opened}`, canonicalId: user, start, end, durationMs: end - start, events: session.events ?? 1, pages: 0, firstMessageId: 'm',
  }
  const envelope: SessionEnvelope = {
    v: ENVELOPE_VERSION, type: 'session', project: 'alpha', id: `${full.sessionId}:${version}`, time: name === '$session_end' ? end : start, key: user,
    keyGroup: keyGroupOf(user, KEY_GROUPS), source: 'live', origin: { stream: 'SEG_ENRICHED', seq }, data: { name, version, session: full },
  }
  return { envelope, origin: { stream: 'SEG_SESSIONS', seq } }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const inner of Object.values(value)) deepFreeze(inner)
  }
  return value
}

type Output = ProfileEnvelope | SegmentMembershipEnvelope

/** What must hold of every emission: the stage, the routing, the schema, the id. */
function problemsOf(emission: Emission): string[] {
  const envelope = emission.envelope as unknown as Output
  const problems: string[] = []
  if ((emission.stage as string) !== 'profiles') problems.push(`stage ${emission.stage}`)
  if (emission.project !== envelope.project) problems.push('project')
  if (emission.keyGroup !== keyGroupOf(envelope.key, KEY_GROUPS) || envelope.keyGroup !== emission.keyGroup) problems.push('not routed by the canonical id')
  if (envelope.type === 'profile') {
    problems.push(...profileSchema.problems(envelope))
    if (envelope.id !== `${envelope.key}:profile:${envelope.data.version}`) problems.push(`id ${envelope.id}`)
    if (envelope.data.canonicalId !== envelope.key || (envelope.data.profile && envelope.data.profile.canonicalId !== envelope.key)) problems.push('key')
    if ((envelope.data.profile === undefined) === (envelope.data.mergedInto === undefined)) problems.push('a profile or a merge, not both')
  } else if (envelope.type === 'segment_membership') {
    problems.push(...membershipSchema.problems(envelope))
    if (envelope.id !== `${envelope.key}:engagement:${envelope.data.version}`) problems.push(`id ${envelope.id}`)
    if (envelope.data.canonicalId !== envelope.key) problems.push('key')
  } else {
    problems.push(`type ${(envelope as { type: string }).type}`)
  }
  return problems
}

/**
 * Drives the operator the way the runtime does, with the watermark given by the test. States are
 * frozen before the operator sees them (the logic must not mutate them) and every output is checked.
 */
function driver(t: Test, options: Partial<ProfileOptions> = {}) {
  const operator = createProfile({ keyGroups: KEY_GROUPS, timezoneOf: () => 'UTC', ...options })
  const states = new Map<string, ProfileState>()
  const wakeAts = new Map<string, number>()
  const all: Output[] = []
  const take = (key: string, result: StepResult<ProfileState>): Output[] => {
    if (result.state === undefined) states.delete(key)
    else states.set(key, deepFreeze(result.state))
    if (result.wakeAt === undefined) wakeAts.delete(key)
    else wakeAts.set(key, result.wakeAt)
    for (const emission of result.emit) {
      const problems = problemsOf(emission)
      if (problems.length > 0) t.fail(`${emission.envelope.id}: ${problems.join('; ')}`)
    }
    const outputs = result.emit.map((emission) => emission.envelope as unknown as Output)
    all.push(...outputs)
    return outputs
  }
  return {
    operator,
    event(input: ProfileInput, watermark = Number.NEGATIVE_INFINITY) {
      const key = operator.keyOf(input)
      return take(key, operator.onEvent(states.get(key) ?? operator.init(), input, { eventTime: input.envelope.time, watermark, source: input.envelope.source, control: undefined }))
    },
    timer(now: number, key = 'u1') {
      return take(key, operator.onTimer!(states.get(key) ?? operator.init(), now))
    },
    merge(from: string, into: string, watermark = Number.NEGATIVE_INFINITY) {
      const fromState = states.get(from)
      if (!fromState) throw new Error(`no state for ${from}`)
      states.delete(from)
      wakeAts.delete(from)
      return take(into, operator.mergeInto!(states.get(into), fromState, { from, into, watermark, control: undefined }))
    },
    state: (key = 'u1') => states.get(key),
    wakeAt: (key = 'u1') => wakeAts.get(key),
    all,
    /** The newest profile published for a user. */
    profile: (key = 'u1') => (all.filter((o): o is ProfileEnvelope => o.type === 'profile' && o.key === key).at(-1)?.data.profile),
  }
}

const profilesIn = (outputs: Output[]) => outputs.filter((o): o is ProfileEnvelope => o.type === 'profile')
const membershipsIn = (outputs: Output[]) => outputs.filter((o): o is SegmentMembershipEnvelope => o.type === 'segment_membership').map((o) => o.data)

t.test('toInput, keyOf and init', async (t) => {
  const operator = createProfile({ keyGroups: KEY_GROUPS, timezoneOf: () => 'UTC' })
  t.equal(operator.stepId, 'profile')
  const origin: Origin = { stream: 'SEG_ENRICHED', seq: 7 }
  const event = eventAt(T0, { user: 'user-42' })
  t.same(operator.toInput(event.envelope, origin), { envelope: event.envelope, origin })
  t.equal(operator.keyOf(event), 'user-42')
  const session = sessionMessage('$session_start', 1, { user: 'user-43', opened: T0 })
  t.equal(operator.keyOf(operator.toInput(session.envelope, origin)), 'user-43', 'a session is keyed by its canonical id')
  const raw = { ...event.envelope, type: 'raw_event', data: event.envelope.data.message } as unknown as RawEventEnvelope
  t.throws(() => operator.toInput(raw, origin), /profile reads enriched_event and session messages, got raw_event/)
  t.same(operator.init().events, 0)
})

t.test('the first event: a profile and a membership at once', async (t) => {
  const d = driver(t)
  const outputs = d.event(eventAt(T0, {
    id: 'first', channel: 'paid_search', utmSource: 'google', campaign: 'spring', device: 'mobile', browser: 'Safari', os: 'iOS', country: 'DE', city: 'Berlin', source: 'import', seq: 900,
  }))
  t.same(membershipsIn(outputs), [{ dimension: 'engagement', canonicalId: 'u1', to: 'Low', version: 1 }], 'a new user joins a level')
  const [profile] = profilesIn(outputs)
  t.ok(profile)
  t.match(profile, {
    v: ENVELOPE_VERSION, type: 'profile', project: 'alpha', id: 'u1:profile:1', time: T0, key: 'u1', keyGroup: keyGroupOf('u1', KEY_GROUPS),
    source: 'import', origin: { stream: 'SEG_ENRICHED', seq: 900 },
  })
  t.same(profile!.data.profile, {
    canonicalId: 'u1', firstSeen: T0, lastSeen: T0,
    acquisition: { month: '2024-05', channel: 'paid_search', source: 'google', campaign: 'spring' },
    traits: {}, device: { type: 'mobile', browser: 'Safari', os: 'iOS' }, country: 'DE', city: 'Berlin',
    events: 1, sessions: 0,
    days: [{ day: '2024-05-10', events: 1, sessions: 0, names: { Clicked: 1 } }],
    engagement: { level: 'Low', score: 7, asOf: T0, recencyDays: 0, activeDays: 1, events: 1 },
  })
  t.equal(d.wakeAt(), undefined, 'Low already, and nothing pending: no timer')
})

t.test('count-only changes are coalesced until the next publication boundary', async (t) => {
  const d = driver(t)
  d.event(eventAt(T0))
  t.same(d.event(eventAt(T0 + MINUTE), T0 - 5 * MINUTE), [], 'a second event changes only counts and lastSeen')
  const boundary = Math.floor(T0 / (15 * MINUTE)) * 15 * MINUTE + 15 * MINUTE
  t.equal(d.state()!.publishAt, boundary)
  t.equal(d.wakeAt(), boundary)
  t.same(d.event(eventAt(T0 + 2 * MINUTE), T0 - 4 * MINUTE), [], 'nor a third')
  t.same(d.timer(boundary - 1), [], 'not due yet')
  const outputs = d.timer(boundary)
  t.same(profilesIn(outputs).map((p) => [p.data.version, p.data.profile!.events, p.data.profile!.lastSeen, p.time]), [[2, 3, T0 + 2 * MINUTE, boundary]])
  t.equal(d.wakeAt(), undefined)
  t.same(d.timer(boundary + HOUR), [], 'published once')
})

t.test('identify traits: $set overwrites by event time, $set_once fills only what was never set', async (t) => {
  const d = driver(t)
  d.event(eventAt(T0, { type: 'identify', traits: { plan: 'free', email: 'a@x.io', $set_once: { signup: 'organic', plan: 'never' } } }))
  t.same(d.profile()!.traits, { plan: 'free', email: 'a@x.io', signup: 'organic' }, 'a trait both set and set-once in one message is set')
  let outputs = d.event(eventAt(T0 + HOUR, { type: 'identify', traits: { plan: 'pro', $set_once: { signup: 'paid' } } }), T0)
  t.same(d.profile()!.traits, { plan: 'pro', email: 'a@x.io', signup: 'organic' }, 'a later $set wins, a later $set_once does not')
  t.equal(profilesIn(outputs).length, 1, 'a trait change is published at once')
  outputs = d.event(eventAt(T0 + 30 * MINUTE, { type: 'identify', traits: { plan: 'team' } }), T0 + HOUR)
  t.same(profilesIn(outputs), [], 'a late, earlier $set loses to the later one: nothing shown changes')
  t.equal(d.state()!.traits.plan!.value, 'pro')
  outputs = d.event(eventAt(T0 - HOUR, { type: 'identify', traits: { $set_once: { signup: 'referral' } } }), T0 + HOUR)
  t.same(d.profile()!.traits.signup, 'referral', 'an earlier $set_once wins over a later one')
  d.event(eventAt(T0 - 2 * HOUR, { type: 'identify', traits: { $set_once: { email: 'old@x.io' } } }), T0 + HOUR)
  t.equal(d.profile()!.traits.email, 'a@x.io', 'a $set_once never replaces a $set, however early')
  outputs = d.event(eventAt(T0 + 2 * HOUR, { properties: { $set: { plan: 'enterprise' }, $set_once: { cohort: 'b' } } }), T0 + HOUR)
  t.same(d.profile()!.traits, { plan: 'enterprise', email: 'a@x.io', signup: 'referral', cohort: 'b' }, 'properties.$set / $set_once on any event')
  t.same(profilesIn(d.event(eventAt(T0 + 3 * HOUR, { type: 'identify', traits: { plan: 'enterprise', email: 'a@x.io' } }), T0 + HOUR)), [], 'the same values again: nothing to publish')
  t.same(profilesIn(d.event(eventAt(T0 + 4 * HOUR, { traits: { plan: 'ignored' } }), T0 + HOUR)), [], 'a track\'s traits are not identify traits')
})

t.test('trait bounds: long values and names are ignored, and at most MAX_TRAITS are kept', async (t) => {
  const d = driver(t)
  const many = Object.fromEntries(Array.from({ length: MAX_TRAITS + 5 }, (_, index) => [`t${String(index).padStart(3, '0')}`, index]))
  d.event(eventAt(T0, { type: 'identify', traits: { ...many, huge: 'x'.repeat(MAX_TRAIT_VALUE_LENGTH), ['n'.repeat(200)]: 1, ['__proto__']: 1 } }))
  const traits = d.profile()!.traits
  t.equal(Object.keys(traits).length, MAX_TRAITS)
  t.notOk('huge' in traits, 'a value longer than the limit as JSON is left out, not truncated')
  t.equal(traits.t000, 0)
  d.event(eventAt(T0 + 1, { type: 'identify', traits: { t000: 'changed', brandNew: 1 } }))
  t.equal(d.profile()!.traits.t000, 'changed', 'a kept trait still changes')
  t.notOk('brandNew' in d.profile()!.traits)
})

t.test('a late, earlier event changes firstSeen and the acquisition at once', async (t) => {
  const d = driver(t)
  d.event(eventAt(T0, { channel: 'direct' }))
  const outputs = d.event(eventAt(Date.parse('2024-04-28T08:00:00Z'), { channel: 'email', utmSource: 'newsletter', campaign: 'april' }), T0)
  const [profile] = profilesIn(outputs)
  t.ok(profile, 'published at once')
  t.same(profile!.data.profile!.acquisition, { month: '2024-04', channel: 'email', source: 'newsletter', campaign: 'april' })
  t.equal(profile!.data.profile!.firstSeen, Date.parse('2024-04-28T08:00:00Z'))
  t.equal(profile!.data.profile!.lastSeen, T0)
  t.same(profilesIn(d.event(eventAt(Date.parse('2024-04-29T08:00:00Z'), { channel: 'social' }), T0)), [], 'a late event that is not the earliest changes no acquisition')
  const tie = d.event(eventAt(Date.parse('2024-04-28T08:00:00Z'), { id: 'a-first', channel: 'referral' }), T0)
  t.equal(profilesIn(tie)[0]?.data.profile!.acquisition.channel, 'referral', 'a tie in time goes to the smaller message id')
  d.event(eventAt(Date.parse('2024-04-01T00:00:00Z'), { noContext: true }), T0)
  t.same(d.profile()!.acquisition, { month: '2024-04' }, 'an earliest event without enriched context: the month only')
})

t.test('timezones: 2019-04-30T22:30Z is May in Europe/Berlin and April in UTC', async (t) => {
  const time = Date.parse('2019-04-30T22:30:00Z')
  t.equal(acquisitionMonthOf(time, 'Europe/Berlin'), '2019-05')
  t.equal(acquisitionMonthOf(time, 'UTC'), '2019-04')
  t.equal(acquisitionMonthOf(time, 'America/New_York'), '2019-04')
  t.throws(() => acquisitionMonthOf(time, 'Mars/Olympus'), /unknown timezone "Mars\/Olympus"/)
  const d = driver(t, { timezoneOf: (project) => (project === 'berlin' ? 'Europe/Berlin' : 'UTC') })
  d.event(eventAt(time, { user: 'b', project: 'berlin' }))
  d.event(eventAt(time, { user: 'u' }))
  t.equal(d.profile('b')!.acquisition.month, '2019-05')
  t.same(d.profile('b')!.days.map((day) => day.day), ['2019-05-01'], 'days are local too')
  t.equal(d.profile('u')!.acquisition.month, '2019-04')
  t.same(d.profile('u')!.days.map((day) => day.day), ['2019-04-30'])
  t.equal(startOfLocalDay(localDayOf(time, 'Europe/Berlin'), 'Europe/Berlin'), Date.parse('2019-04-30T22:00:00Z'), 'a Berlin day starts at 22:00Z in summer')
  t.equal(startOfLocalDay(localDayOf(Date.parse('2019-03-31T12:00:00Z'), 'Europe/Berlin'), 'Europe/Berlin'), Date.parse('2019-03-30T23:00:00Z'), 'and at 23:00Z on the day DST starts')
  t.equal(localDayOf(Date.parse('2011-12-31T00:00:00Z'), 'Pacific/Apia') - localDayOf(Date.parse('2011-12-29T00:00:00Z'), 'Pacific/Apia'), 3, 'Samoa skipped 2011-12-30')
})

/** A user active every day of 30 (UTC days 0-29 after DAY0), ten events a day. */
const DAY0 = Date.parse('2024-01-01T00:00:00Z')
function dailyUser(d: ReturnType<typeof driver>) {
  for (let day = 0; day < 30; day++) {
    for (let n = 0; n < 10; n++) d.event(eventAt(DAY0 + day * DAY + 9 * HOUR + n * MINUTE), DAY0 + day * DAY + 8 * HOUR)
  }
}

t.test('levels fall as time passes: timers at the exact day boundaries', async (t) => {
  const d = driver(t)
  dailyUser(d)
  t.equal(d.state()!.engagement!.level, 'High')
  t.equal(d.state()!.engagement!.score, 97)
  const levels = membershipsIn(d.all).map((m) => m.to)
  t.same(levels, ['Low', 'Medium', 'Medium-High', 'High'], 'climbed one level at a time as the days added up')
  // by hand (docs/profiles.md): 78 after 7 days away, 74 after 8; 51 after 13, 46 after 14; 25 after 19, 21 after 20
  const day = (n: number) => DAY0 + n * DAY
  t.equal(d.state()!.levelWakeAt, day(29 + 8), 'High until the 8th day without an event')
  t.equal(d.wakeAt(), d.state()!.publishAt, 'but first the counts of the last events are due')
  t.same(profilesIn(d.timer(d.state()!.publishAt!)).map((p) => p.data.profile!.events), [300])
  t.equal(d.wakeAt(), day(37))
  t.same(d.timer(day(37) - 1), [], 'a millisecond before, nothing')
  t.same(membershipsIn(d.timer(day(37))), [{ dimension: 'engagement', canonicalId: 'u1', from: 'High', to: 'Medium-High', version: 5 }])
  t.equal(d.profile()!.engagement.score, 74)
  t.equal(d.profile()!.engagement.level, 'Medium-High', 'the profile follows the level at once')
  t.equal(d.wakeAt(), day(43))
  t.same(membershipsIn(d.timer(day(43) + 5 * HOUR)).map((m) => [m.from, m.to]), [['Medium-High', 'Medium']])
  t.equal(d.wakeAt(), day(49))
  t.same(membershipsIn(d.timer(day(200))).map((m) => [m.from, m.to]), [['Medium', 'Low']], 'a watermark far ahead: straight to the level it has reached')
  t.equal(d.profile()!.engagement.score, 0)
  t.equal(d.wakeAt(), undefined, 'nothing can change any more')
  t.same(membershipsIn(d.event(eventAt(day(200) + HOUR), day(200))).map((m) => [m.from, m.to]), [], 'one event after a long absence: still Low')
})

t.test('scored as of the watermark, never the wall clock: a 2019 import is scored as of 2019', async (t) => {
  const d = driver(t)
  const start = Date.parse('2019-03-01T12:00:00Z')
  for (let day = 0; day < 25; day++) for (let n = 0; n < 5; n++) d.event(eventAt(start + day * DAY + n * MINUTE, { source: 'import' }), start + day * DAY - 5 * MINUTE)
  const engagement = d.state()!.engagement!
  t.equal(engagement.level, 'High')
  t.ok(engagement.asOf < Date.parse('2019-04-01T00:00:00Z'), 'as of March 2019')
  t.equal(d.profile()!.engagement.level, 'High')
  t.equal(engagementOf(d.state()!, Date.parse('2019-03-26T00:00:00Z'), { timezone: 'UTC' }).level, 'High', 'an explicit asOf')
  t.equal(engagementOf(d.state()!, Date.parse('2019-05-01T00:00:00Z'), { timezone: 'UTC' }).level, 'Low', 'a month later')
  t.equal(engagementOf(d.state()!, Number.POSITIVE_INFINITY, { timezone: 'UTC' }).score, 0)
  t.equal(engagementOf(createProfile({ keyGroups: 1, timezoneOf: () => 'UTC' }).init(), 0, { timezone: 'UTC' }).level, 'Low', 'no events: Low')
})

t.test('thresholds are per project', async (t) => {
  const d = driver(t, { thresholdsOf: (project) => (project === 'strict' ? [90, 95, 99] : [1, 2, 3]) })
  d.event(eventAt(T0, { user: 's', project: 'strict' }))
  d.event(eventAt(T0, { user: 'l', project: 'lenient' }))
  t.equal(d.profile('s')!.engagement.level, 'Low')
  t.equal(d.profile('l')!.engagement.level, 'High', 'score 7 is above 3')
  t.equal(levelOf(25), 'Medium', 'a threshold belongs to the level above it')
  t.equal(levelOf(24), 'Low')
  t.equal(levelOf(75), 'High')
})

t.test('bots are ignored unless countBots', async (t) => {
  const d = driver(t)
  t.same(d.event(eventAt(T0, { bot: true })), [])
  t.equal(d.state(), undefined, 'a user seen only as a bot has no state')
  d.event(eventAt(T0 + 1))
  t.same(d.event(eventAt(T0 + 2, { bot: true, country: 'US' })), [])
  t.equal(d.state()!.events, 1)
  const counting = driver(t, { countBots: true })
  counting.event(eventAt(T0, { bot: true }))
  t.equal(counting.profile()!.events, 1)
})

t.test('device and country: the newest event that has one', async (t) => {
  const d = driver(t)
  d.event(eventAt(T0, { device: 'desktop', browser: 'Chrome', os: 'Linux', country: 'FR' }))
  t.equal(profilesIn(d.event(eventAt(T0 + HOUR, { device: 'unknown' }), T0)).length, 0, 'an unknown device (a server-side call) changes nothing shown')
  t.same(d.state()!.device?.type, 'desktop')
  const moved = d.event(eventAt(T0 + 2 * HOUR, { device: 'mobile', browser: 'Safari', os: 'iOS', country: 'DE' }), T0)
  t.same(profilesIn(moved).map((p) => [p.data.profile!.device, p.data.profile!.country]), [[{ type: 'mobile', browser: 'Safari', os: 'iOS' }, 'DE']], 'published at once')
  t.same(profilesIn(d.event(eventAt(T0 + 90 * MINUTE, { device: 'tablet', country: 'IT' }), T0)), [], 'a late, older event does not replace them')
})

t.test('sessions: counted at their first version, moved, retracted', async (t) => {
  const d = driver(t)
  const opened = T0
  t.same(d.event(sessionMessage('$session_start', 1, { opened })), [], 'no profile before the first event')
  t.equal(d.state()!.sessions, 1)
  d.event(eventAt(T0))
  t.same([d.profile()!.sessions, d.profile()!.days[0]!.sessions], [1, 1])
  d.event(sessionMessage('$session_end', 2, { opened, end: T0 + 10 * MINUTE }), T0)
  t.equal(d.state()!.sessions, 1, 'a later version of a counted session counts nothing more')
  d.event(sessionMessage('$session_end', 2, { opened, end: T0 + 10 * MINUTE }), T0)
  t.equal(d.state()!.tracked[0]!.version, 2, 'an old version again changes nothing')
  d.event(sessionMessage('$session_end', 3, { opened, start: T0 - DAY, end: T0 + 10 * MINUTE }), T0)
  t.same(d.state()!.days.map((day) => [day.day, day.events, day.sessions]), [[localDayOf(T0, 'UTC') - 1, 0, 1], [localDayOf(T0, 'UTC'), 1, 0]], 'a start moved to the day before moves the count')
  d.event(sessionMessage('$session_start', 1, { opened: T0 + HOUR }), T0)
  t.equal(d.state()!.sessions, 2)
  d.event(sessionMessage('$session_retract', 2, { opened: T0 + HOUR }), T0)
  t.equal(d.state()!.sessions, 1, 'a retraction uncounts')
  d.event(sessionMessage('$session_end', 4, { opened: T0 - 7 * DAY }), T0)
  t.equal(d.state()!.sessions, 1, 'a session never seen at version 1 is one no longer tracked: ignored')
  const boundary = d.state()!.publishAt!
  t.ok(boundary > T0, 'session counts are published coalesced')
  t.same(profilesIn(d.timer(boundary)).map((p) => p.data.profile!.sessions), [1])

  const orphan = driver(t)
  orphan.event(sessionMessage('$session_start', 1, { user: 'anon', opened: T0 }))
  t.ok(orphan.state('anon'))
  orphan.event(sessionMessage('$session_retract', 2, { user: 'anon', opened: T0 }))
  t.equal(orphan.state('anon'), undefined, 'seen only through sessions that were all withdrawn: no state')
  orphan.event(sessionMessage('$session_end', 3, { user: 'anon', opened: T0 }))
  t.equal(orphan.state('anon'), undefined, 'nor after a message about an unknown session')
})

t.test('tracked sessions mirror sessionize\'s bounds', async (t) => {
  const d = driver(t, { maxTrackedSessions: 3, sessionHorizonMs: DAY })
  d.event(eventAt(T0))
  for (let n = 0; n < 5; n++) d.event(sessionMessage('$session_start', 1, { opened: T0 + n * HOUR }))
  t.same(d.state()!.tracked.map((s) => s.start), [T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 4 * HOUR], 'the newest three by start')
  t.equal(d.state()!.sessions, 5, 'all still counted')
  d.event(sessionMessage('$session_end', 2, { opened: T0 + 3 * HOUR }))
  d.event(sessionMessage('$session_start', 1, { opened: T0 + 2 * DAY }))
  t.same(d.state()!.tracked.map((s) => s.start), [T0 + 4 * HOUR, T0 + 2 * DAY], 'beyond three the oldest leaves, and an ended session beyond the horizon; an open one stays')
})

t.test('days: only the last dayHistory days, names compacted', async (t) => {
  const d = driver(t, { dayHistory: 30 })
  d.event(eventAt(DAY0, { event: 'Old' }))
  d.event(eventAt(DAY0 + 10 * DAY, { event: 'Kept' }))
  t.same(d.state()!.names, ['Old', 'Kept'])
  d.event(eventAt(DAY0 + 30 * DAY, { event: 'New' }), DAY0)
  t.same(d.state()!.days.map((day) => day.day - localDayOf(DAY0, 'UTC')), [10, 30], 'day 0 is 30 days before day 30: out')
  t.same(d.state()!.names, ['Kept', 'New'])
  t.equal(d.state()!.events, 3, 'the all-time count keeps it')
  d.event(eventAt(DAY0 + HOUR, { event: 'Late' }), DAY0 + 30 * DAY)
  t.same(d.state()!.names, ['Kept', 'New'], 'a late event outside the window counts only in the total')
  t.equal(d.state()!.events, 4)
  const short = driver(t, { dayHistory: 5 }) // at least the score's 30 days
  short.event(eventAt(DAY0))
  short.event(eventAt(DAY0 + 20 * DAY))
  t.equal(short.state()!.days.length, 2, '5 is raised to 30')
})

t.test('mergeInto: the anonymous profile moves into the user\'s', async (t) => {
  const d = driver(t)
  d.event(eventAt(T0 - 3 * DAY, { user: 'anon', channel: 'paid_social', type: 'identify', traits: { plan: 'trial', $set_once: { referrer: 'ad' } }, device: 'mobile', country: 'DE' }))
  d.event(eventAt(T0 - 3 * DAY + MINUTE, { user: 'anon', event: 'Viewed' }))
  d.event(sessionMessage('$session_start', 1, { user: 'anon', opened: T0 - 3 * DAY }))
  d.event(eventAt(T0, { user: 'u1', channel: 'direct', type: 'identify', traits: { plan: 'pro', name: 'Ada', $set_once: { referrer: 'friend' } }, device: 'desktop' }), T0 - HOUR)
  d.event(sessionMessage('$session_start', 1, { user: 'u1', opened: T0 }))
  const anonVersion = d.state('anon')!.profileVersion
  const outputs = d.merge('anon', 'u1', T0)
  t.same(outputs.map((o) => [o.type, o.key]), [['segment_membership', 'anon'], ['profile', 'anon'], ['profile', 'u1']], 'the anonymous id is retracted first')
  t.same(membershipsIn(outputs), [{ dimension: 'engagement', canonicalId: 'anon', from: 'Low', version: 2 }], 'the anonymous id leaves its level; the user\'s stays Low (no membership change)')
  const ended = profilesIn(outputs)[0]!
  t.same(ended.data, { canonicalId: 'anon', version: anonVersion + 1, mergedInto: 'u1' })
  const profile = profilesIn(outputs)[1]!.data.profile!
  t.equal(profile.firstSeen, T0 - 3 * DAY, 'firstSeen: the earlier')
  t.equal(profile.acquisition.channel, 'paid_social', 'acquisition: of the earliest event')
  t.same(profile.traits, { plan: 'pro', name: 'Ada', referrer: 'ad' }, 'the later $set, the earlier $set_once')
  t.equal(profile.events, 3)
  t.same(profile.device, { type: 'desktop' }, 'the newest device')
  t.equal(profile.country, 'DE', 'the newest country known')
  t.same(profile.days.map((day) => [day.day, day.events, day.names]), [
    [new Date(T0 - 3 * DAY).toISOString().slice(0, 10), 2, { $identify: 1, Viewed: 1 }],
    [new Date(T0).toISOString().slice(0, 10), 1, { $identify: 1 }],
  ])
  t.equal(profile.sessions, 1, 'the anonymous session sessionize still holds leaves: sessionize announces it again under the user')
  d.event(sessionMessage('$session_retract', 2, { user: 'anon', opened: T0 - 3 * DAY }))
  t.equal(d.state('anon'), undefined, 'its retraction, arriving after the merge, creates nothing')
  d.event(sessionMessage('$session_start', 1, { user: 'u1', opened: T0 - 3 * DAY }))
  t.equal(d.state()!.sessions, 2, 'and its new announcement counts it under the user, once')
  t.equal(d.state('anon'), undefined)

  const fresh = driver(t)
  fresh.event(eventAt(T0, { user: 'anon' }))
  const moved = fresh.merge('anon', 'u2', T0)
  t.same(membershipsIn(moved).map((m) => [m.canonicalId, m.from, m.to]), [['anon', 'Low', undefined], ['u2', undefined, 'Low']], 'into a user with no state: a new member')
  t.equal(fresh.profile('u2')!.events, 1)
})

t.test('mergeInto keeps final anonymous sessions: sessionize will not announce them again', async (t) => {
  const d = driver(t)
  d.event(eventAt(T0 - 20 * DAY, { user: 'anon' }))
  d.event(sessionMessage('$session_start', 1, { user: 'anon', opened: T0 - 20 * DAY }))
  d.event(sessionMessage('$session_end', 2, { user: 'anon', opened: T0 - 20 * DAY }))
  d.event(eventAt(T0, { user: 'anon' }))
  d.event(sessionMessage('$session_start', 1, { user: 'anon', opened: T0 }))
  t.equal(d.state('anon')!.tracked.length, 1, 'the old ended session left tracking (beyond the 7-day horizon)')
  d.merge('anon', 'u1', T0)
  t.equal(d.state()!.sessions, 1, 'the final one moves as a count, the recent one waits for sessionize')
})

t.test('state goes through msgpack unchanged, and stays bounded', async (t) => {
  const d = driver(t)
  dailyUser(d)
  d.event(eventAt(DAY0 + 29 * DAY + 12 * HOUR, { type: 'identify', traits: { email: 'ada@example.com', plan: 'pro', company: 'Example Ltd' } }))
  for (let n = 0; n < 20; n++) d.event(sessionMessage('$session_start', 1, { opened: DAY0 + 25 * DAY + n * HOUR }))
  const state = d.state()!
  t.same(decode(encode(state)), state)
  const typical = encode(state).length
  t.comment(`a daily user, 30 active days, 3 traits, 20 tracked sessions: ${typical} bytes`)
  t.ok(typical < 4_000, `${typical} bytes`)

  const worst = driver(t)
  const user = 'w'.repeat(256)
  const id = (n: number) => `${String(n).padStart(6, '0')}${'x'.repeat(250)}`
  const long = (n: number) => `${n}${'y'.repeat(255)}`.slice(0, 256)
  for (let day = 0; day < 90; day++) {
    for (let name = 0; name < 70; name++) worst.event(eventAt(DAY0 + day * DAY + name * MINUTE, { id: id(day * 100 + name), event: long(name), user }), DAY0 + day * DAY)
  }
  const traits = Object.fromEntries(Array.from({ length: MAX_TRAITS }, (_, n) => [`${n}`.padEnd(128, 't'), 'v'.repeat(MAX_TRAIT_VALUE_LENGTH - 2)]))
  worst.event(eventAt(DAY0 + 89 * DAY + 23 * HOUR, { id: id(999_999), user, type: 'identify', traits }))
  for (let n = 0; n < 60; n++) worst.event(sessionMessage('$session_start', 1, { user, opened: DAY0 + 89 * DAY + n * MINUTE }))
  const worstState = worst.state(user)!
  t.equal(worstState.names.length, 64)
  t.equal(Object.keys(worstState.traits).length, MAX_TRAITS)
  const worstBytes = encode(worstState).length
  t.comment(`worst case (100 traits of 1 KB, 64 names of 256 characters on 90 days, 256-character ids): ${worstBytes} bytes`)
  t.ok(worstBytes < 200_000, `${worstBytes} bytes`)
})

t.test('the same inputs give the same outputs', async (t) => {
  const first = nextSeq
  const run = () => {
    nextSeq = first
    const d = driver(t)
    dailyUser(d)
    d.timer(DAY0 + 60 * DAY)
    return d.all
  }
  t.same(run(), run())
})

// ---------------------------------------------------------------------------------------------
// Properties: whatever the arrival order of the events, of the session messages between them,
// the watermarks, the timers and an identity merge, the profile equals one recomputed from the
// raw event log by a brute-force reference written apart from the operator.

interface LogEvent {
  time: number
  messageId: string
  type: 'track' | 'page' | 'identify'
  event: string
  set?: Record<string, unknown>
  setOnce?: Record<string, unknown>
  propertiesSet?: Record<string, unknown>
  channel: string
  device: string
  country?: string
  bot: boolean
}

const TIMEZONES = ['UTC', 'Europe/Berlin', 'America/Los_Angeles', 'Asia/Kolkata', 'Australia/Lord_Howe', 'Pacific/Chatham']
const BASE = Date.parse('2019-03-27T00:00:00Z')
const GAP = 30 * MINUTE

/** The local day of an instant, by another route than the operator's (a formatted date). */
const formatters = new Map<string, Intl.DateTimeFormat>()
function referenceDay(time: number, timezone: string): number {
  let formatter = formatters.get(timezone)
  if (!formatter) formatters.set(timezone, (formatter = new Intl.DateTimeFormat('sv-SE', { timeZone: timezone, year: 'numeric', month: '2-digit', day: '2-digit' })))
  return Date.parse(`${formatter.format(time)}T00:00:00Z`) / DAY
}
const referenceLabel = (day: number) => new Date(day * DAY).toISOString().slice(0, 10)

const order = (a: LogEvent, b: LogEvent) => a.time - b.time || (a.messageId < b.messageId ? -1 : a.messageId > b.messageId ? 1 : 0)

interface Reference {
  profile: Omit<Profile, 'canonicalId' | 'engagement' | 'sessions' | 'days'> & { days: Array<{ day: string; events: number; names: Record<string, number> }> }
  sessions: number
  sessionDays: Record<string, number>
  level: EngagementLevel
  score: number
}

/** Everything the profile should say about a user whose whole log is `log`, as of `asOf`. */
function reference(log: LogEvent[], timezone: string, dayHistory: number, asOf: number): Reference {
  const events = log.filter((e) => !e.bot).sort(order)
  const first = events[0]!
  const last = events.at(-1)!
  const traits: Record<string, unknown> = {}
  for (const e of events) {
    if (e.type === 'identify') Object.assign(traits, e.set)
    Object.assign(traits, e.propertiesSet)
    if (e.type === 'identify') for (const [name, value] of Object.entries(e.setOnce ?? {})) if (!(name in traits)) traits[name] = value
  }
  const lastDay = referenceDay(last.time, timezone)
  const perDay = new Map<number, LogEvent[]>()
  for (const e of events) {
    const day = referenceDay(e.time, timezone)
    if (day > lastDay - dayHistory) perDay.set(day, [...(perDay.get(day) ?? []), e])
  }
  const days = [...perDay.keys()].sort((a, b) => a - b).map((day) => {
    const names: Record<string, number> = {}
    for (const e of perDay.get(day)!) {
      const name = e.type === 'track' ? e.event : `$${e.type}`
      names[name] = (names[name] ?? 0) + 1
    }
    return { day: referenceLabel(day), events: perDay.get(day)!.length, names }
  })
  // sessions: cut the sorted events where two are more than the gap apart
  const starts: number[] = []
  events.forEach((e, index) => {
    if (index === 0 || e.time - events[index - 1]!.time > GAP) starts.push(e.time)
  })
  const sessionDays: Record<string, number> = {}
  for (const start of starts) {
    const day = referenceDay(start, timezone)
    if (day > lastDay - dayHistory) sessionDays[referenceLabel(day)] = (sessionDays[referenceLabel(day)] ?? 0) + 1
  }
  // the score, from its definition in docs/profiles.md
  const today = referenceDay(Math.max(asOf, last.time), timezone)
  const recent = events.filter((e) => referenceDay(e.time, timezone) >= today - 29)
  const activeDays = new Set(recent.map((e) => referenceDay(e.time, timezone))).size
  const daysAway = today - lastDay
  const recency = daysAway <= 2 ? 1 : daysAway >= 30 ? 0 : (30 - daysAway) / 28
  const score = Math.round(100 * recency * (0.6 * (Math.min(activeDays, 20) / 20) + 0.4 * Math.min(1, Math.log1p(recent.length) / Math.log1p(500))))
  const level: EngagementLevel = score < 25 ? 'Low' : score < 50 ? 'Medium' : score < 75 ? 'Medium-High' : 'High'
  const withDevice = events.filter((e) => e.device !== 'unknown').at(-1)
  const withCountry = events.filter((e) => e.country !== undefined).at(-1)
  return {
    profile: {
      firstSeen: first.time, lastSeen: last.time,
      acquisition: { month: referenceLabel(referenceDay(first.time, timezone)).slice(0, 7), channel: first.channel },
      traits,
      ...(withDevice ? { device: { type: withDevice.device } } : {}),
      ...(withCountry ? { country: withCountry.country } : {}),
      events: events.length,
      days,
    },
    sessions: starts.length,
    sessionDays,
    level,
    score,
  }
}

const logEvent = (spanDays: number) => fc.record({
  day: fc.integer({ min: 0, max: spanDays }),
  // some times on shared minutes, near midnight in several zones, so ties and day edges happen
  minute: fc.oneof(fc.integer({ min: 0, max: 1439 }), fc.constantFrom(0, 1, 570, 600, 1380, 1439)),
  type: fc.constantFrom('track', 'track', 'page', 'identify') as fc.Arbitrary<LogEvent['type']>,
  event: fc.constantFrom('Clicked', 'Signed Up', 'Purchased'),
  set: fc.option(fc.dictionary(fc.constantFrom('plan', 'name', 'seats'), fc.oneof(fc.string({ maxLength: 3 }), fc.integer({ min: 0, max: 9 })), { maxKeys: 2 }), { nil: undefined }),
  setOnce: fc.option(fc.dictionary(fc.constantFrom('plan', 'source', 'cohort'), fc.constantFrom('a', 'b', 'c'), { maxKeys: 2 }), { nil: undefined }),
  propertiesSet: fc.option(fc.dictionary(fc.constantFrom('plan', 'tier'), fc.constantFrom('x', 'y'), { maxKeys: 1 }), { nil: undefined }),
  channel: fc.constantFrom('direct', 'email', 'referral'),
  device: fc.constantFrom('desktop', 'mobile', 'unknown'),
  country: fc.option(fc.constantFrom('DE', 'FR', 'US'), { nil: undefined }),
  bot: fc.integer({ min: 0, max: 14 }).map((n) => n === 0),
})

/**
 * A user's log (unique message ids, in an order unrelated to time), the arrival order of its
 * events, when the session messages are read between them, watermark jumps, and the settings.
 */
const scenario = fc.record({
  spanDays: fc.constantFrom(2, 5, 40, 120),
  timezone: fc.constantFrom(...TIMEZONES),
  dayHistory: fc.constantFrom(30, 45, 90),
  lateness: fc.integer({ min: 0, max: 3 * HOUR }),
  roundTrip: fc.boolean(),
}).chain((settings) => fc.array(logEvent(settings.spanDays), { minLength: 1, maxLength: 40, size: 'max' }).chain((raw) => {
  const log: LogEvent[] = raw.map(({ day, minute, ...e }, index) => ({
    ...e, time: BASE + day * DAY + minute * MINUTE, messageId: `m${String((index * 7919) % 1000).padStart(3, '0')}-${index}`,
  }))
  const indices = log.map((_, index) => index)
  return fc.record({
    settings: fc.constant(settings),
    log: fc.constant(log),
    arrival: fc.shuffledSubarray(indices, { minLength: log.length, maxLength: log.length }),
    /** Before each arrival, how many pending session messages profile reads first (it reads both streams at its own pace). */
    sessionReads: fc.array(fc.integer({ min: 0, max: 4 }), { minLength: log.length, maxLength: log.length }),
    /** Before each arrival, maybe a watermark jump (with the timers it makes due), in days from BASE. */
    jumps: fc.array(fc.option(fc.integer({ min: -2, max: settings.spanDays + 60 }), { nil: undefined, freq: 6 }), { minLength: log.length, maxLength: log.length }),
    /** Where the last check's watermark ends, in days after the newest event. */
    finalJump: fc.option(fc.integer({ min: 0, max: 35 }), { nil: undefined }),
  })
}))

function inputOf(event: LogEvent, user: string, seq: number): EnrichedEventEnvelope {
  return eventAt(event.time, {
    user, id: event.messageId, type: event.type, event: event.event, seq, channel: event.channel, device: event.device, country: event.country, bot: event.bot,
    traits: event.type === 'identify' ? { ...event.set, ...(event.setOnce ? { $set_once: event.setOnce } : {}) } : undefined,
    properties: event.propertiesSet ? { $set: event.propertiesSet } : undefined,
  }).envelope
}

/**
 * The runtime in miniature, for one key group and both steps: sessionize reads the enriched stream
 * first (all of it, so its session messages are there to be interleaved anywhere after their cause);
 * profile reads the enriched stream in the same order and the sessions stream at its own pace.
 * Watermarks follow the largest event time of each step's inputs minus the lateness (and the test's
 * jumps); timers fire once the watermark reaches them, and sometimes early, when they must do nothing.
 */
class MiniRuntime<State, Input> {
  readonly states = new Map<string, { state: State; wakeAt?: number }>()
  readonly emitted: Emission[] = []
  watermark = Number.NEGATIVE_INFINITY
  private largest = Number.NEGATIVE_INFINITY
  private readonly operator: Operator<State, Input>
  private readonly lateness: number
  private readonly roundTrip: boolean
  constructor(operator: Operator<State, Input>, lateness: number, roundTrip: boolean) {
    this.operator = operator
    this.lateness = lateness
    this.roundTrip = roundTrip
  }

  private store(key: string, result: StepResult<State>) {
    this.emitted.push(...result.emit)
    if (result.state === undefined) this.states.delete(key)
    else this.states.set(key, { state: this.roundTrip ? (decode(encode(result.state)) as State) : deepFreeze(result.state), ...(result.wakeAt === undefined ? {} : { wakeAt: result.wakeAt }) })
  }

  private fireTimers(force = false) {
    for (const [key, entry] of [...this.states]) {
      const due = entry.wakeAt !== undefined && entry.wakeAt <= this.watermark
      if (due) this.store(key, this.operator.onTimer!(entry.state, this.watermark))
      else if (force && Number.isFinite(this.watermark)) {
        const before = this.emitted.length
        this.store(key, this.operator.onTimer!(entry.state, this.watermark))
        if (this.emitted.length !== before) throw new Error(`an early timer for ${key} emitted`)
      }
    }
  }

  input(input: Input, time: number) {
    const key = this.operator.keyOf(input)
    const current = this.states.get(key)?.state ?? this.operator.init()
    this.store(key, this.operator.onEvent(current, input, { eventTime: time, watermark: this.watermark, source: 'live', control: undefined }))
    this.largest = Math.max(this.largest, time)
    this.watermark = Math.max(this.watermark, this.largest - this.lateness)
    this.fireTimers()
  }

  jump(to: number, force = true) {
    this.watermark = Math.max(this.watermark, to)
    this.fireTimers(force)
  }

  merge(from: string, into: string) {
    const fromEntry = this.states.get(from)
    if (!fromEntry) return
    this.states.delete(from)
    this.store(into, this.operator.mergeInto!(this.states.get(into)?.state, fromEntry.state, { from, into, watermark: this.watermark, control: undefined }))
    this.fireTimers()
  }
}

interface Run {
  profile: MiniRuntime<ProfileState, ProfileInput>
  outputs: Output[]
}

/** Plays a scenario: events under `userOf(index, position)`, a merge of anon into u1 before arrival `mergeAt` (if given). */
function play(
  { settings, log, arrival, sessionReads, jumps }: { settings: { timezone: string; dayHistory: number; lateness: number; roundTrip: boolean }; log: LogEvent[]; arrival: number[]; sessionReads: number[]; jumps: Array<number | undefined> },
  userOf: (index: number, position: number) => string,
  mergeAt?: number,
): Run {
  const sessionize = new MiniRuntime<SessionState, SessionizeInput>(createSessionize({ keyGroups: KEY_GROUPS, gapMsOf: () => GAP }), settings.lateness, settings.roundTrip)
  const operator = createProfile({ keyGroups: KEY_GROUPS, timezoneOf: () => settings.timezone, dayHistory: settings.dayHistory })
  const profile = new MiniRuntime<ProfileState, ProfileInput>(operator, settings.lateness, settings.roundTrip)
  // the enriched stream, with the merge where enrich put it
  type Item = { kind: 'event'; envelope: EnrichedEventEnvelope } | { kind: 'merge' }
  const enriched: Item[] = []
  arrival.forEach((index, position) => {
    if (position === mergeAt) enriched.push({ kind: 'merge' })
    enriched.push({ kind: 'event', envelope: inputOf(log[index]!, userOf(index, position), position + 1) })
  })
  if (mergeAt === arrival.length) enriched.push({ kind: 'merge' })
  // sessionize reads all of it first; its jumps are the profile's, so timers end sessions in the middle too
  let position = 0
  for (const item of enriched) {
    if (item.kind === 'merge') {
      sessionize.merge('anon', 'u1')
      continue
    }
    const jump = jumps[position++]
    if (jump !== undefined) sessionize.jump(BASE + jump * DAY, false)
    sessionize.input({ envelope: item.envelope, origin: item.envelope.origin }, item.envelope.time)
  }
  const sessions = sessionize.emitted.map((emission) => emission.envelope as SessionEnvelope)
  let read = 0
  const readSessions = (count: number) => {
    for (const end = Math.min(sessions.length, read + count); read < end; read++) {
      const envelope = sessions[read]!
      profile.input({ envelope, origin: { stream: 'SEG_SESSIONS', seq: read + 1 } }, envelope.time)
    }
  }
  position = 0
  for (const item of enriched) {
    if (item.kind === 'merge') {
      profile.merge('anon', 'u1')
      continue
    }
    readSessions(sessionReads[position]!)
    const jump = jumps[position++]
    if (jump !== undefined) profile.jump(BASE + jump * DAY)
    profile.input({ envelope: item.envelope, origin: item.envelope.origin }, item.envelope.time)
  }
  readSessions(sessions.length)
  return { profile, outputs: profile.emitted.map((emission) => emission.envelope as unknown as Output) }
}

/** What must hold of any run's outputs: valid, unique ids, versions 1, 2, 3... per user, memberships chained. */
function checkOutputs(run: Run) {
  const ids = new Set<string>()
  const profileVersions = new Map<string, number>()
  const members = new Map<string, { version: number; to?: EngagementLevel }>()
  for (const emission of run.profile.emitted) {
    const problems = problemsOf(emission)
    if (problems.length > 0) throw new Error(`${emission.envelope.id}: ${problems.join('; ')}`)
    const envelope = emission.envelope as unknown as Output
    if (ids.has(envelope.id)) throw new Error(`duplicate id ${envelope.id}`)
    ids.add(envelope.id)
    if (envelope.type === 'profile') {
      const expected = (profileVersions.get(envelope.key) ?? 0) + 1
      if (envelope.data.version !== expected) throw new Error(`${envelope.key}: profile version ${envelope.data.version} after ${expected - 1}`)
      profileVersions.set(envelope.key, expected)
    } else if (envelope.data.dimension === 'engagement') {
      const previous = members.get(envelope.key) ?? { version: 0 }
      if (envelope.data.version !== previous.version + 1) throw new Error(`${envelope.key}: membership version ${envelope.data.version} after ${previous.version}`)
      if (envelope.data.from !== previous.to) throw new Error(`${envelope.key}: from ${envelope.data.from}, but was ${previous.to}`)
      if (envelope.data.from === envelope.data.to) throw new Error(`${envelope.key}: a change that changes nothing`)
      members.set(envelope.key, { version: envelope.data.version, ...(envelope.data.to ? { to: envelope.data.to } : {}) })
    }
  }
  return members
}

/**
 * Compares a profile with the reference as of the profile's own `asOf` (the score is as of when it
 * was computed); sessions only where sessionize itself is exact (every event within its 7-day horizon).
 */
function compare(profile: Profile, log: LogEvent[], settings: { timezone: string; dayHistory: number; spanDays: number }) {
  const expected = reference(log, settings.timezone, settings.dayHistory, profile.engagement.asOf)
  const { canonicalId: _id, engagement, sessions, days, ...rest } = profile
  assert.deepEqual({ ...rest, days: days.map(({ sessions: _s, ...day }) => day).filter((day) => day.events > 0) }, expected.profile)
  assert.equal(engagement.score, expected.score, 'score')
  assert.equal(engagement.level, expected.level, 'level')
  if (settings.spanDays <= 5) {
    assert.equal(sessions, expected.sessions, 'sessions')
    assert.deepEqual(Object.fromEntries(days.filter((day) => day.sessions > 0).map((day) => [day.day, day.sessions])), expected.sessionDays)
  }
  if (days.some((day) => day.sessions < 0 || day.events < 0)) throw new Error('a negative count')
}

function checkAgainstReference(run: Run, log: LogEvent[], settings: { timezone: string; dayHistory: number; spanDays: number }, finalJump: number | undefined) {
  const counted = log.filter((e) => !e.bot)
  if (counted.length === 0) {
    checkOutputs(run)
    if (run.profile.states.get('u1')?.state.events) throw new Error('a profile without an event')
    if (run.outputs.some((o) => o.key === 'u1')) throw new Error('published without an event')
    return
  }
  // as of the watermark reached, with every due timer fired, the level is current
  const last = Math.max(...counted.map((e) => e.time))
  if (finalJump !== undefined) run.profile.jump(last + finalJump * DAY + HOUR)
  const members = checkOutputs(run)
  const { state } = run.profile.states.get('u1')!
  const level = reference(log, settings.timezone, settings.dayHistory, run.profile.watermark).level
  assert.equal(state.engagement!.level, level, `level as of the watermark ${new Date(run.profile.watermark).toISOString()}`)
  assert.equal(members.get('u1')?.to, level, 'the last membership change')
  compare(profileOf(state), log, settings)
  // long after: every coalesced publication has gone out, and the last one shows it all
  run.profile.jump(last + 400 * DAY)
  checkOutputs(run)
  const published = run.profile.emitted.map((emission) => emission.envelope as unknown as Output)
    .filter((o): o is ProfileEnvelope => o.type === 'profile' && o.key === 'u1').at(-1)!.data.profile!
  compare(published, log, settings)
  assert.equal(published.engagement.level, 'Low')
  if (run.profile.states.get('u1')!.wakeAt !== undefined) throw new Error('a timer left long after the last event')
}

t.test('property: the profile equals a recomputation from the event log, whatever the arrival order', async (t) => {
  let runs = 0
  fc.assert(
    fc.property(scenario, (scenario) => {
      const run = play(scenario, () => 'u1')
      checkAgainstReference(run, scenario.log, scenario.settings, scenario.finalJump)
      runs++
    }),
    { numRuns: 300 },
  )
  t.equal(runs, 300)
})

t.test('property: after an identity merge, the user\'s profile is that of every event of both', async (t) => {
  const merged = scenario.chain((base) => fc.record({
    base: fc.constant(base),
    /** Who each event came under before the merge. */
    anonymous: fc.array(fc.boolean(), { minLength: base.log.length, maxLength: base.log.length }),
    /** How many arrivals come before the merge: the rest come under the user. */
    mergeAt: fc.integer({ min: 0, max: base.log.length }),
  }))
  let runs = 0
  fc.assert(
    fc.property(merged, ({ base, anonymous, mergeAt }) => {
      const run = play(base, (index, position) => (position < mergeAt && anonymous[index] ? 'anon' : 'u1'), mergeAt)
      checkAgainstReference(run, base.log, base.settings, base.finalJump)
      const orphan = run.profile.states.get('anon')?.state
      // session messages about the anonymous id read after the merge: withdrawn by sessionize's merge, so
      // nothing stays, except final sessions (older than sessionize's horizon) read only then (docs/profiles.md)
      if (orphan && (orphan.events > 0 || base.settings.spanDays <= 5)) throw new Error(`anon keeps a state: ${JSON.stringify(orphan)}`)
      const members = checkOutputs(run)
      if (members.get('anon')?.to !== undefined) throw new Error('anon still counted in a level')
      const anonProfiles = run.outputs.filter((o): o is ProfileEnvelope => o.type === 'profile' && o.key === 'anon')
      if (anonProfiles.length > 0 && anonProfiles.at(-1)!.data.mergedInto !== 'u1') throw new Error('the anonymous profile was not ended')
      runs++
    }),
    { numRuns: 300 },
  )
  t.equal(runs, 300)
})
