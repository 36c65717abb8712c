import { ENVELOPE_VERSION, type AnyEnvelope, type EnrichedEventEnvelope, type Origin, type SessionEnvelope, type Source } from '../../schemas/envelope.ts'
import type { EngagementLevel, Profile, ProfileAcquisition } from '../../schemas/profile.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'
import { keyGroupOf, type Stage } from '../../topology/subjects.ts'
import type { DefinitionChangeContext, Emission, MergeContext, Operator, StepResult } from '../runtime/operator.ts'
import { DEFAULT_HORIZON_MS, DEFAULT_MAX_SESSIONS } from '../sessionize/logic.ts'
import { acquisitionMonthOf, dayLabelOf, localDayOf, startOfLocalDay } from './calendar.ts'
import { DEFAULT_THRESHOLDS, engagementOnDay, nextLevelChangeDay, WINDOW_DAYS, type Activity, type Engagement } from './engagement.ts'
import { PROFILES_STAGE, type ProfileEnvelope, type SegmentMembershipEnvelope } from './envelopes.ts'
import { applySegmentControl, definitionsOf, matches, segmentChanges, segmentsOf, SEGMENT_CONTROL_PREFIX, type ProfileValues } from './segments.ts'

const MINUTE = 60_000

/** Days of per-day counts kept per user, up to their newest event, by default. */
export const DEFAULT_DAY_HISTORY = 90
/** A profile whose only changes are counts and `lastSeen` is published at most once per this much event time. */
export const DEFAULT_PUBLISH_EVERY_MS = 15 * MINUTE
/** Traits kept per user; a trait first seen beyond it is ignored. */
export const MAX_TRAITS = 100
/** Longest trait name kept. */
export const MAX_TRAIT_NAME_LENGTH = 128
/** Largest trait value kept, as JSON characters; a larger value is ignored (never truncated: it would not be the value). */
export const MAX_TRAIT_VALUE_LENGTH = 1024
/** Distinct event names counted per day per user within the kept days; others count only in the day's total. */
export const MAX_EVENT_NAMES = 64
/** Acquisition, device and geo strings are kept up to this many characters. */
export const MAX_FIELD_LENGTH = 256

export interface ProfileOptions {
  /** Key groups of the installation: the `profiles` stage is routed by canonical user id. */
  keyGroups: number
  /** A project's IANA timezone (`Project.timezone`): days, and the acquisition month, are local to it. */
  timezoneOf: (project: string) => string
  /** A project's score thresholds for Medium, Medium-High and High (`settings.engagementThresholds`). Default 25 / 50 / 75. */
  thresholdsOf?: (project: string) => readonly [number, number, number]
  /** Count events of bots (`context.bot`). Default false, as sessionize: bots have no profile. */
  countBots?: boolean
  /** Days of per-day counts kept, ending on the user's newest event's day. Default 90; at least 30 (the score's window). */
  dayHistory?: number
  /** Coalescing of count-only changes, ms of event time. Default 15 minutes (`DEFAULT_PUBLISH_EVERY_MS`). */
  publishEveryMs?: number
  /** Sessionize's `horizonMs` (default 7 days): how long a session may still change. Must match the sessionize step's. */
  sessionHorizonMs?: number
  /** Sessionize's `maxSessions` (default 50). Must match the sessionize step's. */
  maxTrackedSessions?: number
}

export type ProfileInput =
  | { envelope: EnrichedEventEnvelope; origin: Origin }
  | { envelope: SessionEnvelope; origin: Origin }

/** Events are ordered by (event time, message id): ties are broken the same way in every arrival order. */
export interface Stamp {
  time: number
  messageId: string
}

export interface StoredTrait extends Stamp {
  value: unknown
  /** Set by `$set_once`: any `$set` replaces it, an earlier `$set_once` too. */
  once: boolean
}

export interface StoredDevice extends Stamp {
  type: string
  browser?: string
  os?: string
}

export interface StoredGeo extends Stamp {
  country: string
  city?: string
}

/** One local day: `counts[i]` events named `names[i]` (trailing zeros left out). */
export interface DayCounts {
  day: number
  events: number
  sessions: number
  counts: number[]
}

/** A session sessionize may still change: its counted day and the last version seen. */
export interface TrackedSession {
  id: string
  start: number
  end: number
  /** Local day it is counted on (its start's, in the timezone of the time it was counted). */
  day: number
  version: number
  ended: boolean
}

export interface StoredEngagement extends Engagement {
  /** Event time (ms) it was computed as of. */
  asOf: number
}

/** A user's state. Plain data (msgpack maps, arrays, strings, numbers, booleans); bounds in docs/profiles.md. */
export interface ProfileState {
  /** Empty until the first input. */
  canonicalId: string
  project: string
  /** Every event counted, all time. */
  events: number
  /** Every session counted (started and not retracted), all time. */
  sessions: number
  /** The earliest and newest event (absent while `events` is 0), and the local day of the newest. */
  first?: Stamp
  last?: Stamp
  lastDay?: number
  /** From the earliest event. */
  acquisition?: ProfileAcquisition
  device?: StoredDevice
  geo?: StoredGeo
  traits: Record<string, StoredTrait>
  /** Event names counted in `days`, at most MAX_EVENT_NAMES. */
  names: string[]
  /** Days with activity, ascending, none older than `dayHistory` days before `lastDay`. */
  days: DayCounts[]
  /** Sessions sessionize may still change, by start: mirrors its bounds. */
  tracked: TrackedSession[]
  engagement?: StoredEngagement
  /** The level last announced in a membership change (absent: none, or the last one removed the user). */
  member?: EngagementLevel
  /** Saved segments the user was last announced in, sorted ids (absent: none); at most one per segment of the project. */
  segments?: string[]
  /** Version of the last saved-segment membership change emitted (absent: none yet). */
  segmentVersion?: number
  /** Start of the local day on which the level next changes if nothing else happens. */
  levelWakeAt?: number
  /** A coalesced publication of counts is due when the watermark reaches it. */
  publishAt?: number
  /** Version of the last profile change and of the last membership change emitted (0: none yet). */
  profileVersion: number
  membershipVersion: number
  /** Of the last input: what a timer's messages carry. */
  source: Source
  origin: Origin
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)

const before = (a: Stamp, b: Stamp) => a.time < b.time || (a.time === b.time && a.messageId < b.messageId)

/** Optional fields are left out rather than set to undefined: msgpack would store them as nil. */
function optional<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined || value === null ? {} : { [key]: value }) as { [P in K]?: V }
}

const clip = (value: string | undefined) => (value === undefined ? undefined : value.slice(0, MAX_FIELD_LENGTH))

const sameJson = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b)

// ---------------------------------------------------------------------------------------------
// Traits

interface TraitUpdates {
  set: Map<string, unknown>
  once: Map<string, unknown>
}

/**
 * The trait operations of one message: an identify's `traits` and `traits.$set` are `$set`,
 * `traits.$set_once` is `$set_once`; any message's `properties.$set` / `properties.$set_once` too
 * (PostHog's convention). Within a message a later `$set` source overrides an earlier one, the
 * first `$set_once` source wins, and a trait both set and set-once is set.
 */
export function traitUpdatesOf(message: SegmentMessage): TraitUpdates {
  const set = new Map<string, unknown>()
  const once = new Map<string, unknown>()
  const setAll = (source: unknown) => {
    if (isRecord(source)) for (const [name, value] of Object.entries(source)) set.set(name, value)
  }
  const onceAll = (source: unknown) => {
    if (isRecord(source)) for (const [name, value] of Object.entries(source)) if (!once.has(name)) once.set(name, value)
  }
  if (message.type === 'identify' && isRecord(message.traits)) {
    for (const [name, value] of Object.entries(message.traits)) if (name !== '$set' && name !== '$set_once') set.set(name, value)
    setAll(message.traits.$set)
  }
  setAll(message.properties?.$set)
  if (message.type === 'identify' && isRecord(message.traits)) onceAll(message.traits.$set_once)
  onceAll(message.properties?.$set_once)
  for (const name of set.keys()) once.delete(name)
  return { set, once }
}

const keepsTrait = (name: string, value: unknown) => {
  if (name === '' || name.length > MAX_TRAIT_NAME_LENGTH || name === '__proto__' || value === undefined) return false
  try {
    const json = JSON.stringify(value)
    return json !== undefined && json.length <= MAX_TRAIT_VALUE_LENGTH
  } catch {
    return false // a BigInt or a cycle: not a trait value
  }
}

/**
 * One trait operation under the order-free rule: the value of a trait is that of its latest `$set`
 * by (event time, message id), or, never set, that of its earliest `$set_once` — what applying
 * every message in event-time order would give, whatever order they arrive in.
 */
function applyTrait(traits: Record<string, StoredTrait>, name: string, incoming: StoredTrait): StoredTrait | undefined {
  const existing = Object.hasOwn(traits, name) ? traits[name] : undefined
  if (!existing) return Object.keys(traits).length < MAX_TRAITS ? incoming : undefined
  if (!incoming.once) return existing.once || before(existing, incoming) ? incoming : undefined
  return existing.once && before(incoming, existing) ? incoming : undefined
}

/** Applies trait operations; returns the traits (the same object when nothing changed) and whether a value changed. */
function withTraits(traits: Record<string, StoredTrait>, updates: Iterable<[string, StoredTrait]>): { traits: Record<string, StoredTrait>; changed: boolean } {
  let next = traits
  let changed = false
  for (const [name, incoming] of updates) {
    const replacement = applyTrait(next, name, incoming)
    if (!replacement) continue
    const previous = Object.hasOwn(next, name) ? next[name] : undefined
    if (!previous || !sameJson(previous.value, replacement.value)) changed = true
    if (next === traits) next = { ...traits }
    next[name] = replacement
  }
  return { traits: next, changed }
}

function traitOperationsOf(message: SegmentMessage, stamp: Stamp): Array<[string, StoredTrait]> {
  const { set, once } = traitUpdatesOf(message)
  const operations: Array<[string, StoredTrait]> = []
  for (const [name, value] of set) if (keepsTrait(name, value)) operations.push([name, { value, time: stamp.time, messageId: stamp.messageId, once: false }])
  for (const [name, value] of once) if (keepsTrait(name, value)) operations.push([name, { value, time: stamp.time, messageId: stamp.messageId, once: true }])
  return operations
}

// ---------------------------------------------------------------------------------------------
// Days

/** Adds to one day's counts, if the day is inside the kept window; returns new arrays when something changed. */
function addToDay(
  state: Pick<ProfileState, 'days' | 'names' | 'lastDay'>, day: number, events: number, sessions: number, name: string | undefined, dayHistory: number,
): { days: DayCounts[]; names: string[] } {
  if (state.lastDay !== undefined && day <= state.lastDay - dayHistory) return { days: state.days, names: state.names }
  let names = state.names
  let nameIndex = name === undefined ? -1 : names.indexOf(name)
  if (name !== undefined && nameIndex < 0 && names.length < MAX_EVENT_NAMES) {
    names = [...names, name]
    nameIndex = names.length - 1
  }
  const days = [...state.days]
  let position = days.findIndex((entry) => entry.day >= day)
  if (position < 0) position = days.length
  const existing = days[position]?.day === day ? days[position]! : undefined
  const counts = existing ? [...existing.counts] : []
  if (nameIndex >= 0 && events !== 0) {
    while (counts.length <= nameIndex) counts.push(0)
    counts[nameIndex]! += events
  }
  while (counts.length > 0 && counts.at(-1) === 0) counts.pop()
  const entry: DayCounts = { day, events: (existing?.events ?? 0) + events, sessions: (existing?.sessions ?? 0) + sessions, counts }
  const empty = entry.events === 0 && entry.sessions === 0
  if (existing) days.splice(position, 1, ...(empty ? [] : [entry]))
  else if (!empty) days.splice(position, 0, entry)
  return { days, names }
}

/** Drops days before the window and the names no kept day counts any more. */
function pruneDays(days: DayCounts[], names: string[], lastDay: number | undefined, dayHistory: number): { days: DayCounts[]; names: string[] } {
  if (lastDay === undefined || days.length === 0 || days[0]!.day > lastDay - dayHistory) return { days, names }
  const kept = days.filter((entry) => entry.day > lastDay - dayHistory)
  const used = names.map((_, index) => kept.some((entry) => (entry.counts[index] ?? 0) > 0))
  if (used.every(Boolean)) return { days: kept, names }
  const renumbered: number[] = []
  const keptNames: string[] = []
  names.forEach((name, index) => {
    renumbered.push(used[index] ? keptNames.length : -1)
    if (used[index]) keptNames.push(name)
  })
  const compacted = kept.map((entry) => {
    const counts: number[] = []
    entry.counts.forEach((count, index) => {
      if (count > 0) {
        const at = renumbered[index]!
        while (counts.length <= at) counts.push(0)
        counts[at] = count
      }
    })
    return { ...entry, counts }
  })
  return { days: compacted, names: keptNames }
}

// ---------------------------------------------------------------------------------------------
// Events and sessions

interface Applied {
  state: ProfileState
  /** The state changed at all (a session's version may change nothing a query shows). */
  changed: boolean
  /** Something a query shows changed beyond counts and lastSeen: publish now. */
  notable: boolean
  /** Counts or lastSeen changed: publish, coalesced. */
  counted: boolean
}

function applyEvent(state: ProfileState, envelope: EnrichedEventEnvelope, timezone: string, dayHistory: number): Applied {
  const { message, context, name } = envelope.data
  const stamp: Stamp = { time: envelope.time, messageId: message.messageId }
  let notable = false
  const next: ProfileState = { ...state, events: state.events + 1 }
  if (!state.first || before(stamp, state.first)) {
    next.first = stamp
    const acquisition = context?.acquisition
    next.acquisition = {
      month: acquisitionMonthOf(stamp.time, timezone),
      ...optional('channel', clip(acquisition?.channel)),
      ...optional('source', clip(acquisition?.source)),
      ...optional('medium', clip(acquisition?.medium)),
      ...optional('campaign', clip(acquisition?.campaign)),
      ...optional('referrerHost', clip(acquisition?.referrerHost)),
    }
    notable = true // firstSeen itself is shown
  }
  if (!state.last || before(state.last, stamp)) {
    next.last = stamp
    next.lastDay = localDayOf(stamp.time, timezone)
  }
  const device = context?.device
  if (device && device.type !== 'unknown' && device.type !== 'bot' && (!state.device || before(state.device, stamp))) {
    next.device = { ...stamp, type: clip(device.type)!, ...optional('browser', clip(device.browser)), ...optional('os', clip(device.os)) }
    if (!state.device || state.device.type !== next.device.type || state.device.browser !== next.device.browser || state.device.os !== next.device.os) notable = true
  }
  const country = context?.geo?.country
  if (country && (!state.geo || before(state.geo, stamp))) {
    next.geo = { ...stamp, country: clip(country)!, ...optional('city', clip(context?.geo?.city)) }
    if (!state.geo || state.geo.country !== next.geo.country || state.geo.city !== next.geo.city) notable = true
  }
  const traits = withTraits(state.traits, traitOperationsOf(message, stamp))
  next.traits = traits.traits
  if (traits.changed) notable = true
  const counted = addToDay(next, localDayOf(stamp.time, timezone), 1, 0, name, dayHistory)
  const pruned = pruneDays(counted.days, counted.names, next.lastDay, dayHistory)
  next.days = pruned.days
  next.names = pruned.names
  return { state: next, changed: true, notable, counted: true }
}

/** Keeps what sessionize keeps: its newest `maxSessions` by start, and no ended one beyond its horizon. */
function pruneTracked(tracked: TrackedSession[], horizonMs: number, maxTracked: number): TrackedSession[] {
  let kept = tracked.length > maxTracked ? tracked.slice(tracked.length - maxTracked) : tracked
  const newest = Math.max(...kept.map((session) => session.end))
  if (kept.some((session) => session.ended && session.end < newest - horizonMs)) kept = kept.filter((session) => !session.ended || session.end >= newest - horizonMs)
  return kept
}

/**
 * A session message: a session id first seen at version 1 counts once, on its start's day; a later
 * version moves it if its start moved to another day; a retraction uncounts it. Messages about
 * sessions no longer tracked (final in sessionize) and old versions change nothing.
 */
function applySession(state: ProfileState, envelope: SessionEnvelope, timezone: string, dayHistory: number, horizonMs: number, maxTracked: number): Applied {
  const { name, version, session } = envelope.data
  const index = state.tracked.findIndex((tracked) => tracked.id === session.sessionId)
  const known = index >= 0 ? state.tracked[index]! : undefined
  if (known ? version <= known.version : version !== 1 || name === '$session_retract') return { state, changed: false, notable: false, counted: false }
  let tracked = [...state.tracked]
  let totals: Pick<ProfileState, 'days' | 'names' | 'lastDay'> = state
  let sessions = state.sessions
  if (known && name === '$session_retract') {
    tracked.splice(index, 1)
    sessions--
    totals = { ...totals, ...addToDay(totals, known.day, 0, -1, undefined, dayHistory) }
  } else {
    const day = localDayOf(session.start, timezone)
    const current: TrackedSession = { id: session.sessionId, start: session.start, end: session.end, day, version, ended: name === '$session_end' }
    if (known) {
      tracked.splice(index, 1)
      if (known.day !== day) {
        totals = { ...totals, ...addToDay(totals, known.day, 0, -1, undefined, dayHistory) }
        totals = { ...totals, ...addToDay(totals, day, 0, 1, undefined, dayHistory) }
      }
    } else {
      sessions++
      totals = { ...totals, ...addToDay(totals, day, 0, 1, undefined, dayHistory) }
    }
    let position = tracked.findIndex((other) => other.start > current.start || (other.start === current.start && other.id > current.id))
    if (position < 0) position = tracked.length
    tracked.splice(position, 0, current)
    tracked = pruneTracked(tracked, horizonMs, maxTracked)
  }
  const counted = totals.days !== state.days || sessions !== state.sessions
  return { state: { ...state, tracked, sessions, days: totals.days, names: totals.names }, changed: true, notable: false, counted }
}

// ---------------------------------------------------------------------------------------------
// Publishing

/** What a query shows of a user with at least one event. */
export function profileOf(state: ProfileState): Profile {
  const engagement = state.engagement!
  return {
    canonicalId: state.canonicalId,
    firstSeen: state.first!.time,
    lastSeen: state.last!.time,
    acquisition: state.acquisition!,
    traits: Object.fromEntries(Object.entries(state.traits).map(([name, trait]) => [name, trait.value])),
    ...optional('device', state.device && { type: state.device.type, ...optional('browser', state.device.browser), ...optional('os', state.device.os) }),
    ...optional('country', state.geo?.country),
    ...optional('city', state.geo?.city),
    events: state.events,
    sessions: state.sessions,
    days: state.days.map((entry) => ({
      day: dayLabelOf(entry.day),
      events: entry.events,
      sessions: entry.sessions,
      names: Object.fromEntries(entry.counts.flatMap((count, index) => (count > 0 ? [[state.names[index]!, count]] : []))),
    })),
    engagement: {
      level: engagement.level, score: engagement.score, asOf: engagement.asOf,
      recencyDays: engagement.recencyDays, activeDays: engagement.activeDays, events: engagement.events,
    },
  }
}

/** Where a user's messages go. */
interface Owner {
  canonicalId: string
  project: string
  keyGroup: number
}

/** The one place these envelopes meet the runtime's types (see envelopes.ts). */
function emissionOf(owner: Owner, envelope: ProfileEnvelope | SegmentMembershipEnvelope): Emission {
  return { stage: PROFILES_STAGE, project: owner.project, keyGroup: owner.keyGroup, envelope }
}

function envelopeFields(owner: Owner, id: string, time: number, state: ProfileState) {
  return { v: ENVELOPE_VERSION, project: owner.project, id, time, key: owner.canonicalId, keyGroup: owner.keyGroup, source: state.source, origin: state.origin } as const
}

/** A profile change: the profile as it stands, or its end under this id. Returns the state with the version. */
function publishProfile(out: Emission[], owner: Owner, state: ProfileState, time: number, mergedInto?: string): ProfileState {
  const version = state.profileVersion + 1
  const envelope: ProfileEnvelope = {
    ...envelopeFields(owner, `${owner.canonicalId}:profile:${version}`, time, state),
    type: 'profile',
    data: { canonicalId: owner.canonicalId, version, ...(mergedInto === undefined ? { profile: profileOf(state) } : { mergedInto }) },
  }
  out.push(emissionOf(owner, envelope))
  const { publishAt: _published, ...rest } = state
  return { ...rest, profileVersion: version }
}

function publishMembership(out: Emission[], owner: Owner, state: ProfileState, to: EngagementLevel | undefined, time: number): ProfileState {
  const version = state.membershipVersion + 1
  const envelope: SegmentMembershipEnvelope = {
    ...envelopeFields(owner, `${owner.canonicalId}:engagement:${version}`, time, state),
    type: 'segment_membership',
    data: { dimension: 'engagement', canonicalId: owner.canonicalId, ...optional('from', state.member), ...optional('to', to), version },
  }
  out.push(emissionOf(owner, envelope))
  const { member: _member, ...rest } = state
  return { ...rest, ...optional('member', to), membershipVersion: version }
}

/** What a saved segment's condition reads of a user: the columns the profiles table has for them. */
export function profileValuesOf(state: ProfileState): ProfileValues {
  return (dimension) => {
    switch (dimension) {
      case 'engagement': return state.engagement?.level
      case 'engagement_score': return state.engagement?.score
      case 'acquisition_month': return state.acquisition?.month
      case 'acquisition_channel': return state.acquisition?.channel
      case 'acquisition_source': return state.acquisition?.source
      case 'acquisition_medium': return state.acquisition?.medium
      case 'acquisition_campaign': return state.acquisition?.campaign
      case 'country': return state.geo?.country
      case 'city': return state.geo?.city
      case 'device': return state.device?.type
      case 'browser': return state.device?.browser
      case 'os': return state.device?.os
      case 'events': return state.events
      case 'sessions': return state.sessions
      default:
        if (dimension.startsWith('trait.')) {
          const name = dimension.slice('trait.'.length)
          return Object.hasOwn(state.traits, name) ? state.traits[name]!.value : undefined
        }
        return undefined
    }
  }
}

/**
 * Brings the saved segments the user is announced in up to `target` (sorted ids): one
 * membership change per segment left (`from`) or entered (`to`), left ones first.
 */
function publishSegmentChanges(out: Emission[], owner: Owner, state: ProfileState, target: string[], time: number): ProfileState {
  const { left, entered } = segmentChanges(state.segments ?? [], target)
  if (left.length === 0 && entered.length === 0) return state
  let version = state.segmentVersion ?? 0
  const announce = (change: { from: string } | { to: string }) => {
    version++
    const envelope: SegmentMembershipEnvelope = {
      ...envelopeFields(owner, `${owner.canonicalId}:segment:${version}`, time, state),
      type: 'segment_membership',
      data: { dimension: 'segment', canonicalId: owner.canonicalId, ...change, version },
    }
    out.push(emissionOf(owner, envelope))
  }
  for (const id of left) announce({ from: id })
  for (const id of entered) announce({ to: id })
  const { segments: _segments, ...rest } = state
  return { ...rest, ...(target.length > 0 ? { segments: target } : {}), segmentVersion: version }
}

// ---------------------------------------------------------------------------------------------
// The operator

/**
 * Profile: one profile per canonical user, from their enriched events and their sessions:
 * first and last seen, acquisition month and channel, traits, latest device and country, counts
 * per day and per event name, and an engagement level kept current in event time. Publishes
 * profile changes and engagement membership changes on the `profiles` stage. See docs/profiles.md.
 */
export function createProfile(options: ProfileOptions): Operator<ProfileState, ProfileInput> {
  const dayHistory = Math.max(WINDOW_DAYS, Math.floor(options.dayHistory ?? DEFAULT_DAY_HISTORY))
  const publishEveryMs = Math.max(1, options.publishEveryMs ?? DEFAULT_PUBLISH_EVERY_MS)
  const horizonMs = options.sessionHorizonMs ?? DEFAULT_HORIZON_MS
  const maxTracked = Math.max(1, options.maxTrackedSessions ?? DEFAULT_MAX_SESSIONS)
  const thresholdsOf = (project: string) => options.thresholdsOf?.(project) ?? DEFAULT_THRESHOLDS
  const ownerOf = (canonicalId: string, project: string): Owner => ({ canonicalId, project, keyGroup: keyGroupOf(canonicalId, options.keyGroups) })

  const activityOf = (state: ProfileState): Activity => ({ lastDay: state.lastDay!, days: state.days })

  /** Re-scores as of `asOf` (the watermark; the newest event when later) and sets the level's timer. */
  function evaluate(state: ProfileState, asOf: number): ProfileState {
    if (state.events === 0) return state
    const timezone = options.timezoneOf(state.project)
    const thresholds = thresholdsOf(state.project)
    const activity = activityOf(state)
    const effective = Number.isFinite(asOf) ? Math.max(asOf, state.last!.time) : asOf > 0 ? startOfLocalDay(activity.lastDay + WINDOW_DAYS, timezone) : state.last!.time
    const engagement = engagementOnDay(activity, localDayOf(effective, timezone), thresholds)
    const previous = state.engagement
    const { levelWakeAt: _old, ...rest } = state
    if (previous && previous.level === engagement.level && previous.day === engagement.day) {
      // Same level, same day: what changed since is more events (or a later newest one), which can
      // only raise the score on every day to come, so the next change is no earlier than the timer
      // already set. Keeping it saves the search on every event; if it comes early, onTimer (a new
      // day by then) searches again and emits nothing.
      return { ...rest, engagement: { ...engagement, asOf: effective }, ...optional('levelWakeAt', state.levelWakeAt) }
    }
    const changeDay = nextLevelChangeDay(activity, engagement.day, thresholds)
    return { ...rest, engagement: { ...engagement, asOf: effective }, ...optional('levelWakeAt', changeDay === undefined ? undefined : startOfLocalDay(changeDay, timezone)) }
  }

  /** Publishes what must go out now, schedules what can wait, and sets the timer. */
  function finish(state: ProfileState, out: Emission[], publishNow: boolean, counted: boolean, coalesceFrom: number, control: unknown): StepResult<ProfileState> {
    let next = state
    if (next.events > 0) {
      const owner = ownerOf(next.canonicalId, next.project)
      const time = next.engagement!.asOf
      const level = next.engagement!.level
      const levelChanged = next.member !== level
      if (levelChanged) next = publishMembership(out, owner, next, level, time)
      next = publishSegmentChanges(out, owner, next, segmentsOf(definitionsOf(control), profileValuesOf(next)), time)
      if (publishNow || levelChanged || next.profileVersion === 0) {
        next = publishProfile(out, owner, next, time)
      } else if (counted && next.publishAt === undefined) {
        next = { ...next, publishAt: (Math.floor(coalesceFrom / publishEveryMs) + 1) * publishEveryMs }
      }
    } else if (next.tracked.length === 0 && next.sessions === 0 && next.days.length === 0) {
      // seen only through session messages that were all withdrawn: nothing to keep
      return { state: undefined, emit: out }
    }
    return withWakeAt(next, out)
  }

  function withWakeAt(state: ProfileState, emit: Emission[]): StepResult<ProfileState> {
    const times = [state.levelWakeAt, state.publishAt].filter((time): time is number => time !== undefined)
    return times.length === 0 ? { state, emit } : { state, emit, wakeAt: Math.min(...times) }
  }

  const ignores = (envelope: EnrichedEventEnvelope) => envelope.data.context?.bot === true && !options.countBots

  const empty = (): ProfileState => ({
    canonicalId: '', project: '', events: 0, sessions: 0, traits: {}, names: [], days: [], tracked: [],
    profileVersion: 0, membershipVersion: 0, source: 'live', origin: { stream: '', seq: 0 },
  })

  return {
    stepId: 'profile',
    init: empty,
    toInput(envelope, origin) {
      if (envelope.type === 'enriched_event' || envelope.type === 'session') return { envelope, origin } as ProfileInput
      throw new Error(`profile reads enriched_event and session messages, got ${envelope.type}`)
    },
    keyOf: (input) => (input.envelope.type === 'enriched_event' ? input.envelope.data.canonicalId : input.envelope.data.session.canonicalId),
    onEvent(state, input, context) {
      const { envelope, origin } = input
      if (envelope.type === 'enriched_event' && ignores(envelope)) {
        // a bot: nothing changes, and a user seen only so keeps no state at all
        if (state.canonicalId === '') return { state: undefined, emit: [] }
        return withWakeAt(state, [])
      }
      const canonicalId = state.canonicalId || (envelope.type === 'enriched_event' ? envelope.data.canonicalId : envelope.data.session.canonicalId)
      const project = state.project || envelope.project
      const timezone = options.timezoneOf(project)
      const base: ProfileState = { ...state, canonicalId, project, source: envelope.source, origin }
      const applied = envelope.type === 'enriched_event'
        ? applyEvent(base, envelope, timezone, dayHistory)
        : applySession(base, envelope, timezone, dayHistory, horizonMs, maxTracked)
      if (!applied.changed) {
        // a message about a session no longer tracked: a key that had nothing keeps nothing
        return state.canonicalId === '' ? { state: undefined, emit: [] } : withWakeAt(state, [])
      }
      // the level depends on events only: a session message leaves it (and its timer) as it was
      const next = envelope.type === 'enriched_event' ? evaluate(applied.state, context.watermark) : applied.state
      const coalesceFrom = Number.isFinite(context.watermark) ? Math.max(context.watermark, envelope.time) : envelope.time
      return finish(next, [], applied.notable, applied.counted, coalesceFrom, context.control)
    },
    onTimer(state, now, context) {
      if (state.events === 0) return { state, emit: [] }
      const due = state.publishAt !== undefined && state.publishAt <= now
      return finish(evaluate(state, now), [], due, false, now, context?.control)
    },
    onControl: applySegmentControl,
    onDefinitionChange(state, context: DefinitionChangeContext) {
      // a segment created (or deleted): every user of the project enters (or leaves) it here,
      // at the control message's place in the input, so the live size starts from everybody
      if (state.events === 0 || !context.change.name.startsWith(SEGMENT_CONTROL_PREFIX)) return withWakeAt(state, [])
      // only the changed segment: the others were evaluated at the user's last change, under
      // definitions that have not changed since (every earlier definition change came through here)
      const id = context.change.name.slice(SEGMENT_CONTROL_PREFIX.length)
      const definition = definitionsOf(context.control).segments[id]
      const was = state.segments ?? []
      const target = was.filter((other) => other !== id)
      if (definition && matches(definition, profileValuesOf(state))) target.push(id)
      target.sort()
      const out: Emission[] = []
      const next = publishSegmentChanges(out, ownerOf(state.canonicalId, state.project), state, target, state.engagement?.asOf ?? state.last!.time)
      return withWakeAt(next, out)
    },
    mergeInto(into, from, context: MergeContext) {
      const project = into?.project || from.project
      const timezone = options.timezoneOf(project)
      const out: Emission[] = []
      if (from.events > 0) {
        // counted under the anonymous id so far: that profile ends, and leaves its segment
        const fromOwner = ownerOf(from.canonicalId || context.from, project)
        let ended = from
        if (from.member !== undefined) ended = publishMembership(out, fromOwner, ended, undefined, from.engagement?.asOf ?? from.last!.time)
        ended = publishSegmentChanges(out, fromOwner, ended, [], from.engagement?.asOf ?? from.last!.time)
        if (from.profileVersion > 0) publishProfile(out, fromOwner, ended, from.engagement?.asOf ?? from.last!.time, context.into)
      }
      const merged = mergeStates(into, withoutReannounced(from), context.into, project, timezone)
      if (into === undefined && merged.events === 0 && merged.sessions === 0 && merged.days.length === 0) return { state: undefined, emit: out }
      return finish(evaluate(merged, context.watermark), out, merged.events > 0, false, context.watermark, context.control)
    },
  }

  /**
   * The anonymous user's sessions that sessionize still holds are retracted and announced again
   * under the user by sessionize's own merge, so they leave the counts here; the older (final) ones
   * will not be announced again and move with the rest.
   */
  function withoutReannounced(from: ProfileState): ProfileState {
    if (from.tracked.length === 0) return from
    const newest = Math.max(from.last?.time ?? Number.NEGATIVE_INFINITY, ...from.tracked.map((session) => session.end))
    let totals: Pick<ProfileState, 'days' | 'names' | 'lastDay'> = from
    let sessions = from.sessions
    for (const session of from.tracked) {
      if (session.end < newest - horizonMs) continue
      sessions--
      totals = { ...totals, ...addToDay(totals, session.day, 0, -1, undefined, dayHistory) }
    }
    return { ...from, sessions, days: totals.days, names: totals.names, tracked: [] }
  }

  /** Both users' profiles as one: what every event of both would have given under `into`. */
  function mergeStates(into: ProfileState | undefined, from: ProfileState, canonicalId: string, project: string, timezone: string): ProfileState {
    const target: ProfileState = into ?? { ...empty(), source: from.source, origin: from.origin }
    const fromFirst = from.first !== undefined && (target.first === undefined || before(from.first, target.first))
    const fromLast = from.last !== undefined && (target.last === undefined || before(target.last, from.last))
    const fromDevice = from.device !== undefined && (target.device === undefined || before(target.device, from.device))
    const fromGeo = from.geo !== undefined && (target.geo === undefined || before(target.geo, from.geo))
    const {
      first: _first, last: _last, lastDay: _lastDay, acquisition: _acquisition, device: _device, geo: _geo, engagement: _engagement,
      levelWakeAt: _levelWakeAt, publishAt: _publishAt, member: _member, segments: _segments, segmentVersion: _segmentVersion, ...common
    } = target
    const first = fromFirst ? from.first : target.first
    const last = fromLast ? from.last : target.last
    const lastDay = last === undefined ? undefined : localDayOf(last.time, timezone)
    let totals: Pick<ProfileState, 'days' | 'names' | 'lastDay'> = { days: target.days, names: target.names, ...optional('lastDay', lastDay) }
    totals = { ...totals, ...pruneDays(totals.days, totals.names, lastDay, dayHistory) }
    for (const entry of from.days) {
      const named = entry.counts.reduce((sum, count) => sum + count, 0)
      entry.counts.forEach((count, index) => {
        if (count > 0) totals = { ...totals, ...addToDay(totals, entry.day, count, 0, from.names[index], dayHistory) }
      })
      totals = { ...totals, ...addToDay(totals, entry.day, entry.events - named, entry.sessions, undefined, dayHistory) }
    }
    const traits = withTraits(target.traits, Object.entries(from.traits))
    return {
      ...common,
      canonicalId,
      project,
      events: target.events + from.events,
      sessions: target.sessions + from.sessions,
      ...optional('first', first),
      ...optional('last', last),
      ...optional('lastDay', lastDay),
      ...optional('acquisition', fromFirst ? from.acquisition : target.acquisition),
      ...optional('device', fromDevice ? from.device : target.device),
      ...optional('geo', fromGeo ? from.geo : target.geo),
      ...optional('member', into?.member),
      ...optional('segments', into?.segments),
      ...optional('segmentVersion', into?.segmentVersion),
      traits: traits.traits,
      days: totals.days,
      names: totals.names,
      tracked: into?.tracked ?? [],
    }
  }
}
