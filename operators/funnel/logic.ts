import { ENVELOPE_VERSION, type Control, type EnrichedEventEnvelope, type Origin, type SessionEnvelope, type Source } from '../../schemas/envelope.ts'
import { funnelDefinitionProblems, type FunnelDefinition, type FunnelPreviousProgress, type FunnelProgress, type FunnelStatus } from '../../schemas/funnel.ts'
import type { Session } from '../../schemas/session.ts'
import { keyGroupOf } from '../../topology/subjects.ts'
import type { Emission, MergeContext, Operator, StepResult } from '../runtime/operator.ts'
import { DEFAULT_HORIZON_MS as SESSION_HORIZON_MS, DEFAULT_MAX_SESSIONS } from '../sessionize/logic.ts'
import { FUNNELS_STAGE, type FunnelProgressEnvelope } from './envelopes.ts'
import {
  compileFunnel, EXCLUSION_SHIFT, insert, PASSIVE_BIT, maskOf, mergeTracks, MODE_ANY_ORDER, newestOf, newTrack, removeEvents, summarizeTrackInto, summaryScratch,
  type CompiledFunnel, type PropertyLookup, type Summary, type SummaryScratch, type Track, type TrackLimits,
} from './match.ts'

const MINUTE = 60_000
const DAY = 24 * 60 * MINUTE

/** How far behind the watermark events are kept, so that late ones apply exactly. */
export const DEFAULT_FUNNEL_HORIZON_MS = DAY
/** Most events kept per (user, funnel); beyond it the oldest are folded early. */
export const DEFAULT_MAX_EVENTS = 256
/** The step id: control messages for funnels carry it, and its state bucket is `seg_state_funnel`. */
export const FUNNEL_STEP_ID = 'funnel'
/** The name sessionize gives a session's start; a funnel step may use it. */
export const SESSION_START = '$session_start'
/** Names sessionize reserves: never a funnel step from the enriched stage. */
export const RESERVED_PREFIX = '$session_'
/** A session start's event id in a track: this prefix and the session id. */
export const SESSION_EVENT_PREFIX = `${SESSION_START}:`
/** Distinct event names whose concerned funnels are remembered per set of definitions. */
const MAX_REMEMBERED_NAMES = 10_000

export interface FunnelOptions {
  /** Key groups of the installation: the `funnels` stage is routed by canonical user id. */
  keyGroups: number
  /**
   * Events are kept while less than this far behind the watermark, ms of event time; an event that
   * arrives later than that is not applied (`late`). Default 1 day (`DEFAULT_FUNNEL_HORIZON_MS`).
   */
  horizonMs?: number
  /** Events kept per (user, funnel). Default 256 (`DEFAULT_MAX_EVENTS`). */
  maxEvents?: number
  /** Count events of bots (`context.bot`). Default false, as sessionize and profile. */
  countBots?: boolean
  /** Sessionize's `horizonMs` (default 7 days): sessions it may still announce again. Must match the sessionize step's. */
  sessionHorizonMs?: number
  /** Sessionize's `maxSessions` (default 50). Must match the sessionize step's. */
  maxTrackedSessions?: number
}

export type FunnelInput =
  | { envelope: EnrichedEventEnvelope; origin: Origin }
  | { envelope: SessionEnvelope; origin: Origin }

/** The definitions in force for one project (the runtime keeps them in the checkpoint: plain data). */
export type FunnelDefinitions = Record<string, { version: number; definition: FunnelDefinition }>

/** What was last published about one (user, funnel): a change of any of it is published again. */
export interface SentProgress {
  /** Version of the last message. */
  n: number
  l: number
  s: FunnelStatus
  tt: number[]
  b?: string
}

export interface UserFunnel {
  /** The funnel's id. */
  id: string
  track: Track
  sent?: SentProgress
  /** While in progress: when the status turns to dropped. */
  wake?: number
  /** The users whose backfill seed was merged into this entry (docs/funnels.md, "Backfill"): a seed delivered again changes nothing. */
  sd?: string[]
}

/** A session seen on the sessions stage: its last version and start, and whether it was retracted (kept so older versions stay ignored). */
export interface SeenSession {
  v: number
  t: number
  r?: true
}

/** A user's state: one track per active funnel that concerns them. Plain data; bounds in docs/funnels.md. */
export interface FunnelState {
  /** Empty until the first input. */
  canonicalId: string
  project: string
  /** An array rather than a map by id: at most a few entries, and one shape for all (a map keyed by funnel ids costs a dictionary per user). */
  funnels: UserFunnel[]
  /** Session starts seen, within the horizon (only when a funnel uses `$session_start`). */
  sessions: Record<string, SeenSession>
  /** Of the last input that changed the state: what a timer's messages carry. */
  source: Source
  origin: Origin
  /** The definitions (ids and versions) the entries were last reconciled with. */
  d?: string
  /**
   * Only in a backfill seed (a `merge_state` message on the `backfill` stage): the funnel version
   * whose history `funnels` holds. Never in a kept state.
   */
  seed?: { id: string; v: number }
}

// ---------------------------------------------------------------------------------------------
// Definitions

/**
 * A control message for the funnel step: a definition (validated; one that is not throws, and the
 * runtime dead-letters the control message with the problems) or null, which deletes the funnel.
 * A version at or below the one in force changes nothing (a replayed or reordered control).
 */
export function applyFunnelControl(definitions: unknown, control: Control): FunnelDefinitions {
  const current = (definitions ?? {}) as FunnelDefinitions
  const existing = Object.hasOwn(current, control.name) ? current[control.name] : undefined
  if (existing && existing.version >= control.version) return current
  if (control.definition === null || control.definition === undefined) {
    if (!existing) return current
    const { [control.name]: _deleted, ...rest } = current
    return rest
  }
  const problems = funnelDefinitionProblems(control.definition)
  const definition = control.definition as FunnelDefinition
  if (problems.length === 0 && definition.id !== control.name) problems.push(`id: ${JSON.stringify(definition.id)} differs from the control's name ${JSON.stringify(control.name)}`)
  if (problems.length > 0) throw new Error(`funnel ${control.name} version ${control.version} refused: ${problems.join('; ')}`)
  return { ...current, [control.name]: { version: control.version, definition } }
}

interface CompiledProject {
  funnels: CompiledFunnel[]
  byId: Map<string, CompiledFunnel>
  /** Per event name, the funnels it can concern (memo). */
  byName: Map<string, CompiledFunnel[]>
  /** Funnels with a `$session_start` step or exclusion. */
  sessions: CompiledFunnel[]
  /** The funnel ids and versions: a state reconciled with these needs no look at its entries. */
  stamp: string
}

// A cache of compiled matchers per definitions object: the definitions are replaced, never changed,
// so the object identifies them; after a restart they are decoded afresh and compiled once more.
const compiledCache = new WeakMap<object, CompiledProject>()

function compiledOf(definitions: unknown): CompiledProject | undefined {
  if (definitions === undefined || definitions === null || typeof definitions !== 'object') return undefined
  let project = compiledCache.get(definitions)
  if (project === undefined) {
    const funnels = Object.values(definitions as FunnelDefinitions).map(({ version, definition }) => compileFunnel(definition, version))
    project = {
      funnels, byId: new Map(funnels.map((funnel) => [funnel.id, funnel])), byName: new Map(),
      sessions: funnels.filter((funnel) => funnel.conditions.has(SESSION_START)),
      stamp: funnels.map((funnel) => `${funnel.id}@${funnel.version}`).join(' '),
    }
    compiledCache.set(definitions, project)
  }
  return project
}

function concernedBy(project: CompiledProject, name: string): CompiledFunnel[] {
  let list = project.byName.get(name)
  if (list === undefined) {
    list = project.funnels.filter((funnel) => funnel.everyEvent || funnel.conditions.has(name))
    if (project.byName.size < MAX_REMEMBERED_NAMES) project.byName.set(name, list)
  }
  return list
}

// ---------------------------------------------------------------------------------------------
// Properties

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)

function pathOf(message: EnrichedEventEnvelope['data']['message']): unknown {
  const page = isRecord(message.context) ? message.context.page : undefined
  return (isRecord(page) ? page.path : undefined) ?? message.properties?.path
}

/** A property of an enriched event: `$`-names from enrich's context, others from `properties` (docs/funnels.md). */
export function eventLookup(envelope: EnrichedEventEnvelope): PropertyLookup {
  const { message, context } = envelope.data
  return (property) => {
    switch (property) {
      case '$channel': return context?.acquisition.channel
      case '$source': return context?.acquisition.source
      case '$medium': return context?.acquisition.medium
      case '$campaign': return context?.acquisition.campaign
      case '$referrer_host': return context?.acquisition.referrerHost
      case '$device': return context?.device.type
      case '$browser': return context?.device.browser
      case '$os': return context?.device.os
      case '$country': return context?.geo?.country
      case '$city': return context?.geo?.city
      case '$path': return pathOf(message)
    }
    const properties = message.properties
    return properties !== undefined && Object.hasOwn(properties, property) ? properties[property] : undefined
  }
}

export function sessionLookup(session: Session): PropertyLookup {
  return (property) => {
    switch (property) {
      case '$channel': return session.channel
      case '$device': return session.device
      case '$entry_page': return session.entryPage
    }
    return undefined
  }
}

export const breakdownValue = (value: unknown) => (value === undefined || value === null ? undefined : typeof value === 'string' ? value : JSON.stringify(value))

/** Whether the event can start an attempt (the breakdown is taken from there). */
export function startsAttempt(funnel: CompiledFunnel, mask: number) {
  return funnel.mode === MODE_ANY_ORDER ? (mask & ((1 << EXCLUSION_SHIFT) - 1)) !== 0 : (mask & 1) !== 0
}

// ---------------------------------------------------------------------------------------------
// Publishing

/** Where a user's messages go; the key group is hashed only when a message is published. */
class Owner {
  readonly canonicalId: string
  readonly project: string
  readonly #keyGroups: number
  #keyGroup = -1
  constructor(canonicalId: string, project: string, keyGroups: number) {
    this.canonicalId = canonicalId
    this.project = project
    this.#keyGroups = keyGroups
  }
  get keyGroup(): number {
    if (this.#keyGroup < 0) this.#keyGroup = keyGroupOf(this.canonicalId, this.#keyGroups)
    return this.#keyGroup
  }
}

function emissionOf(owner: Owner, envelope: FunnelProgressEnvelope): Emission {
  return { stage: FUNNELS_STAGE, project: owner.project, keyGroup: owner.keyGroup, envelope }
}

const sameTimes = (a: number[], b: number[]) => a.length === b.length && a.every((time, index) => time === b[index])

const finite = (time: number, fallback: number) => (Number.isFinite(time) ? time : fallback)

function previousOf(sent: SentProgress): FunnelPreviousProgress {
  const previous: FunnelPreviousProgress = { level: sent.l, status: sent.s, stepTimes: sent.tt }
  if (sent.b !== undefined) previous.breakdown = sent.b
  return previous
}

function publish(out: Emission[], owner: Owner, state: Pick<FunnelState, 'source' | 'origin'>, funnel: { id: string; version: number; steps: number }, previous: SentProgress | undefined, summary: Summary, mergedInto?: string): SentProgress {
  const version = (previous?.n ?? 0) + 1
  const lastStep = summary.stepTimes.length > 0 ? summary.stepTimes[summary.stepTimes.length - 1]! : 0
  const asOf = finite(summary.asOf, lastStep)
  const data: FunnelProgress = {
    funnelId: funnel.id, funnelVersion: funnel.version, canonicalId: owner.canonicalId, version, level: summary.level, steps: funnel.steps,
    status: summary.status, stepTimes: summary.stepTimes, asOf,
  }
  if (summary.breakdown !== undefined) data.breakdown = summary.breakdown
  if (mergedInto !== undefined) data.mergedInto = mergedInto
  // what this message replaces, so a counter can take it away without remembering every user (docs/live.md)
  if (previous !== undefined) data.previous = previousOf(previous)
  const envelope: FunnelProgressEnvelope = {
    v: ENVELOPE_VERSION, type: 'funnel_progress', project: owner.project, id: `${funnel.id}:${funnel.version}:${owner.canonicalId}:${version}`,
    time: summary.level > 0 ? summary.stepTimes[summary.level - 1]! : asOf, key: owner.canonicalId, keyGroup: owner.keyGroup,
    source: state.source, origin: state.origin, data,
  }
  out.push(emissionOf(owner, envelope))
  const sent: SentProgress = { n: version, l: summary.level, s: summary.status, tt: summary.stepTimes }
  if (summary.breakdown !== undefined) sent.b = summary.breakdown
  return sent
}

// report runs to completion without calling out, so one scratch summary serves every call (publish copies what it keeps)
const reported: SummaryScratch = summaryScratch()

/**
 * Publishes the (user, funnel)'s result if it differs from what was last published; returns the
 * entry with it: the same object, changed in place (the state is the operator's: docs/operators.md,
 * "State"), except when its wake-up goes away (a new entry without the field keeps one shape).
 */
function report(out: Emission[], owner: Owner, state: Pick<FunnelState, 'source' | 'origin'>, entry: UserFunnel, watermark: number): UserFunnel {
  const { track } = entry
  const summary = summarizeTrackInto(reported, track, watermark)
  const sent = entry.sent
  const unchanged = sent
    ? sent.l === summary.level && sent.s === summary.status && sent.b === summary.breakdown && (sent.tt === summary.stepTimes || sameTimes(sent.tt, summary.stepTimes))
    : summary.level === 0
  if (unchanged && entry.wake === summary.wakeAt) return entry
  const nextSent = unchanged ? sent : publish(out, owner, state, { id: entry.id, version: track.v, steps: track.n }, sent, summary)
  if (summary.wakeAt !== undefined || entry.wake === undefined) {
    if (nextSent !== undefined) entry.sent = nextSent
    if (summary.wakeAt !== undefined) entry.wake = summary.wakeAt
    return entry
  }
  const next: UserFunnel = { id: entry.id, track }
  if (entry.sd !== undefined) next.sd = entry.sd
  if (nextSent !== undefined) next.sent = nextSent
  return next
}

const optionalSent = (sent: SentProgress | undefined) => (sent === undefined ? {} : { sent })

// ---------------------------------------------------------------------------------------------
// The operator

/**
 * Funnel: for every active funnel of a project, each canonical user's progress (the furthest
 * attempt, its step times, in progress or dropped), from their enriched events and, for
 * `$session_start` steps, sessionize's messages. Publishes progress changes on the `funnels`
 * stage. See docs/funnels.md.
 */
export function createFunnel(options: FunnelOptions): Operator<FunnelState, FunnelInput> {
  const limits: TrackLimits = {
    horizonMs: options.horizonMs ?? DEFAULT_FUNNEL_HORIZON_MS,
    maxEvents: Math.max(1, options.maxEvents ?? DEFAULT_MAX_EVENTS),
  }
  const sessionHorizonMs = options.sessionHorizonMs ?? SESSION_HORIZON_MS
  const maxTrackedSessions = Math.max(1, options.maxTrackedSessions ?? DEFAULT_MAX_SESSIONS)
  const ownerOf = (canonicalId: string, project: string) => new Owner(canonicalId, project, options.keyGroups)

  const empty = (): FunnelState => ({ canonicalId: '', project: '', funnels: [], sessions: {}, source: 'live', origin: { stream: '', seq: 0 } })

  function withWakeAt(state: FunnelState, emit: Emission[], late = false): StepResult<FunnelState> {
    let wakeAt: number | undefined
    const funnels = state.funnels
    for (let index = 0; index < funnels.length; index++) {
      const wake = funnels[index]!.wake
      if (wake !== undefined && (wakeAt === undefined || wake < wakeAt)) wakeAt = wake
    }
    const result: StepResult<FunnelState> = { state, emit }
    if (wakeAt !== undefined) result.wakeAt = wakeAt
    if (late) result.late = true
    return result
  }

  /** Nothing changed: a user with nothing tracked keeps no state at all. */
  const unchanged = (state: FunnelState): StepResult<FunnelState> => (isEmpty(state) ? { state: undefined, emit: [] } : withWakeAt(state, []))

  /** The position of the user's entry for a funnel under its current definition, or -1. */
  function indexOf(funnels: UserFunnel[], funnel: CompiledFunnel): number {
    for (let index = 0; index < funnels.length; index++) if (funnels[index]!.id === funnel.id) return index
    return -1
  }

  /** Drops the entries of funnels deleted or redefined since. */
  function reconcile(state: FunnelState, project: CompiledProject | undefined): FunnelState {
    if (project !== undefined && state.d === project.stamp) return state
    const funnels = state.funnels.filter((entry) => project?.byId.get(entry.id)?.version === entry.track.v)
    const sessions = project && project.sessions.length > 0 ? state.sessions : {}
    return { ...state, funnels, sessions, ...(project ? { d: project.stamp } : {}) }
  }

  /** Puts an entry in place of the funnel's (or adds it); `funnels` is the caller's copy. Returns its position. */
  function place(funnels: UserFunnel[], entry: UserFunnel): number {
    for (let index = 0; index < funnels.length; index++) {
      if (funnels[index]!.id === entry.id) {
        funnels[index] = entry
        return index
      }
    }
    funnels.push(entry)
    return funnels.length - 1
  }

  function onEnriched(state: FunnelState, project: CompiledProject, envelope: EnrichedEventEnvelope, origin: Origin, watermark: number): StepResult<FunnelState> {
    const data = envelope.data
    const name = data.name
    if (name.startsWith(RESERVED_PREFIX) || (data.context?.bot === true && !options.countBots)) return unchanged(state)
    const concerned = concernedBy(project, name)
    if (concerned.length === 0) return unchanged(state)
    const time = envelope.time
    const id = data.message.messageId
    let lookup: PropertyLookup | undefined
    let late = false
    let touched: string[] | undefined
    for (let at = 0; at < concerned.length; at++) {
      const funnel = concerned[at]!
      lookup ??= eventLookup(envelope)
      const mask = maskOf(funnel, name, lookup)
      if (mask === 0 && !funnel.everyEvent) continue
      const index = indexOf(state.funnels, funnel)
      const entry = index >= 0 ? state.funnels[index]! : { id: funnel.id, track: newTrack(funnel) }
      const breakdown = funnel.breakdown !== undefined && startsAttempt(funnel, mask) ? breakdownValue(lookup(funnel.breakdown)) : undefined
      // the track changes in place (the state is the operator's: docs/operators.md, "State")
      const outcome = insert(funnel, entry.track, time, id, mask, breakdown, limits, watermark)
      if (outcome === 'late') late = true
      if (outcome !== 'applied') continue
      if (index < 0) state.funnels.push(entry)
      ;(touched ??= []).push(entry.id)
    }
    if (touched === undefined) return late ? { ...unchanged(state), late } : unchanged(state)
    state.canonicalId ||= data.canonicalId
    state.project ||= envelope.project
    state.source = envelope.source
    state.origin = origin
    state.d = project.stamp
    const out: Emission[] = []
    const owner = ownerOf(state.canonicalId, state.project)
    const funnels = state.funnels
    for (let index = 0; index < funnels.length; index++) {
      const entry = funnels[index]!
      if (touched.includes(entry.id)) funnels[index] = report(out, owner, state, entry, watermark)
    }
    return withWakeAt(state, out, late)
  }

  function onSession(state: FunnelState, project: CompiledProject, envelope: SessionEnvelope, origin: Origin, watermark: number): StepResult<FunnelState> {
    if (project.sessions.length === 0) return unchanged(state)
    const { name, version, session } = envelope.data
    const known = Object.hasOwn(state.sessions, session.sessionId) ? state.sessions[session.sessionId] : undefined
    if (known ? version <= known.v : name === '$session_retract') return unchanged(state)
    const retracted = name === '$session_retract'
    const sessions = { ...state.sessions, [session.sessionId]: retracted ? { v: version, t: session.start, r: true as const } : { v: version, t: session.start } }
    const base: FunnelState = {
      canonicalId: state.canonicalId || session.canonicalId, project: state.project || envelope.project,
      funnels: state.funnels, sessions: pruneSessions(sessions, sessionHorizonMs, maxTrackedSessions), source: envelope.source, origin, d: project.stamp,
    }
    if (known && !known.r && !retracted && known.t === session.start) return withWakeAt(base, []) // a later version, same start: the step event is unchanged
    const id = `${SESSION_EVENT_PREFIX}${session.sessionId}`
    const lookup = sessionLookup(session)
    const funnels = state.funnels.slice()
    const touched: number[] = []
    let late = false
    for (const funnel of project.sessions) {
      const index = indexOf(funnels, funnel)
      const entry = index >= 0 ? funnels[index]! : { id: funnel.id, track: newTrack(funnel) }
      let track = entry.track
      if (known && !known.r) track = removeEvents(funnel, track, new Set([id]))
      // insert changes the track in place: whether it did is in its outcome
      let applied = track !== entry.track
      if (!retracted) {
        const mask = maskOf(funnel, SESSION_START, lookup)
        if (mask !== 0) {
          const breakdown = funnel.breakdown !== undefined && startsAttempt(funnel, mask) ? breakdownValue(lookup(funnel.breakdown)) : undefined
          const outcome = insert(funnel, track, session.start, id, mask | PASSIVE_BIT, breakdown, limits, watermark)
          if (outcome === 'late') late = true
          if (outcome === 'applied') applied = true
        }
      }
      if (!applied) continue
      touched.push(place(funnels, { ...entry, track }))
    }
    // too late everywhere: not even remembered, so a copy of it is refused again rather than taken for a duplicate
    if (late && touched.length === 0) return { ...unchanged(state), late }
    const next: FunnelState = { ...base, funnels }
    const out: Emission[] = []
    const owner = ownerOf(next.canonicalId, next.project)
    for (const index of touched) funnels[index] = report(out, owner, next, funnels[index]!, watermark)
    return withWakeAt(next, out, late)
  }

  /**
   * A backfill seed (docs/funnels.md, "Backfill"): the user's track of one funnel version over the
   * history before its control message, merged with what was tracked live since, as an identity
   * merge merges two users' tracks (deduplicated, replayed). A seed for a version not in force, or
   * one already merged, changes nothing. `context.into` differs from the seed's user when that
   * anonymous id was linked to a user after the history's end: then its sessions, which sessionize
   * announces again under the user, are left out, as in an identity merge.
   */
  function applySeed(into: FunnelState | undefined, seed: FunnelState, project: CompiledProject | undefined, context: MergeContext): StepResult<FunnelState> {
    const keep = (): StepResult<FunnelState> => (into === undefined ? { state: undefined, emit: [] } : withWakeAt(into, []))
    const funnel = project?.byId.get(seed.seed!.id)
    if (project === undefined || funnel === undefined || funnel.version !== seed.seed!.v) return keep()
    const seeded = seed.funnels.find((entry) => entry.id === funnel.id && entry.track.v === funnel.version)
    if (seeded === undefined) return keep()
    const seedUser = seed.canonicalId || context.from
    const current: FunnelState = into === undefined || into.canonicalId === ''
      ? { ...empty(), ...into, canonicalId: context.into, project: into?.project || seed.project, source: into?.source ?? seed.source, origin: into?.origin ?? seed.origin, d: project.stamp }
      : reconcile(into, project)
    const index = indexOf(current.funnels, funnel)
    const live = index >= 0 ? current.funnels[index]! : undefined
    if (live?.sd?.includes(seedUser)) return keep()
    let seedTrack = seeded.track
    let liveTrack = live?.track ?? newTrack(funnel)
    let sessions = current.sessions
    if (project.sessions.includes(funnel)) {
      if (seedUser !== context.into) {
        const reannounced = new Set(Object.keys(seed.sessions).filter((id) => !seed.sessions[id]!.r).map((id) => `${SESSION_EVENT_PREFIX}${id}`))
        if (reannounced.size > 0) seedTrack = removeEvents(funnel, seedTrack, reannounced)
      } else {
        // a session both sides know counts where its newer version put it
        const fromSeed = new Set<string>()
        const fromLive = new Set<string>()
        const merged: Record<string, SeenSession> = { ...current.sessions }
        for (const [id, seen] of Object.entries(seed.sessions)) {
          const known = Object.hasOwn(current.sessions, id) ? current.sessions[id] : undefined
          // the same start under a newer version is the same step event (onSession leaves it where it is)
          const moved = known !== undefined && (known.r === true || seen.r === true || known.t !== seen.t)
          if (known !== undefined && known.v >= seen.v) {
            if (moved) fromSeed.add(`${SESSION_EVENT_PREFIX}${id}`)
            continue
          }
          if (moved) fromLive.add(`${SESSION_EVENT_PREFIX}${id}`)
          merged[id] = seen
        }
        if (fromSeed.size > 0) seedTrack = removeEvents(funnel, seedTrack, fromSeed)
        if (fromLive.size > 0) liveTrack = removeEvents(funnel, liveTrack, fromLive)
        sessions = pruneSessions(merged, sessionHorizonMs, maxTrackedSessions)
      }
    }
    const entry: UserFunnel = { id: funnel.id, track: mergeTracks(funnel, liveTrack, seedTrack, limits, context.watermark), sd: [...(live?.sd ?? []), seedUser] }
    if (live?.sent !== undefined) entry.sent = live.sent
    if (live?.wake !== undefined) entry.wake = live.wake
    const funnels = current.funnels.slice()
    const at = place(funnels, entry)
    const next: FunnelState = { ...current, funnels, sessions }
    const out: Emission[] = []
    funnels[at] = report(out, ownerOf(next.canonicalId, next.project), next, entry, context.watermark)
    return withWakeAt(next, out)
  }

  return {
    stepId: FUNNEL_STEP_ID,
    init: empty,
    toInput(envelope, origin) {
      if (envelope.type === 'enriched_event' || envelope.type === 'session') return { envelope, origin } as FunnelInput
      throw new Error(`funnel reads enriched_event and session messages, got ${envelope.type}`)
    },
    keyOf: (input) => (input.envelope.type === 'enriched_event' ? input.envelope.data.canonicalId : input.envelope.data.session.canonicalId),
    onControl: applyFunnelControl,
    onEvent(state, input, context) {
      const project = compiledOf(context.control)
      // no funnel is active: nothing to keep
      if (project === undefined || project.funnels.length === 0) return { state: undefined, emit: [] }
      const current = state.canonicalId === '' ? state : reconcile(state, project)
      return input.envelope.type === 'enriched_event'
        ? onEnriched(current, project, input.envelope, input.origin, context.watermark)
        : onSession(current, project, input.envelope, input.origin, context.watermark)
    },
    onTimer(state, now) {
      const out: Emission[] = []
      const funnels = state.funnels
      let owner: Owner | undefined
      for (let index = 0; index < funnels.length; index++) {
        const entry = funnels[index]!
        if (entry.wake === undefined || entry.wake > now) continue
        owner ??= ownerOf(state.canonicalId, state.project)
        // in place, as onEnriched: the state is the operator's
        funnels[index] = report(out, owner, state, entry, now)
      }
      return withWakeAt(state, out)
    },
    mergeInto(into, from, context: MergeContext) {
      const project = compiledOf(context.control)
      if (from.seed !== undefined) return applySeed(into, from, project, context)
      const projectId = into?.project || from.project
      const out: Emission[] = []
      // what was published under the anonymous id ends there: the user's messages carry it from now on
      const fromOwner = ownerOf(from.canonicalId || context.from, projectId)
      for (const entry of from.funnels) {
        if (entry.sent === undefined || entry.sent.s === 'none') continue
        const none: Summary = { level: 0, status: 'none', stepTimes: [], asOf: Math.max(context.watermark, newestOf(entry.track) ?? Number.NEGATIVE_INFINITY) }
        publish(out, fromOwner, from, { id: entry.id, version: entry.track.v, steps: entry.track.n }, entry.sent, none, context.into)
      }
      // sessionize announces the anonymous id's sessions again under the user, with new ids
      const reannounced = new Set(Object.keys(from.sessions).filter((sessionId) => !from.sessions[sessionId]!.r).map((sessionId) => `${SESSION_EVENT_PREFIX}${sessionId}`))
      const base: FunnelState = into ?? { ...empty(), canonicalId: context.into, project: projectId, source: from.source, origin: from.origin }
      const funnels: UserFunnel[] = []
      const touched: number[] = []
      for (const funnel of project?.funnels ?? []) {
        const current = (entry: UserFunnel) => entry.id === funnel.id && entry.track.v === funnel.version
        const mine = into?.funnels.find(current)
        const theirs = from.funnels.find(current)
        if (!theirs) {
          if (mine) funnels.push(mine)
          continue
        }
        const moved = reannounced.size > 0 ? removeEvents(funnel, theirs.track, reannounced) : theirs.track
        const track = mine ? mergeTracks(funnel, mine.track, moved, limits, context.watermark) : moved
        touched.push(funnels.length)
        const seeded = [...(mine?.sd ?? []), ...(theirs.sd ?? [])]
        funnels.push({ id: funnel.id, track, ...optionalSent(mine?.sent), ...(seeded.length > 0 ? { sd: seeded } : {}) })
      }
      const sessions = project && project.sessions.length > 0 ? base.sessions : {}
      if (funnels.length === 0 && Object.keys(sessions).length === 0) return { state: undefined, emit: out }
      const state: FunnelState = { ...base, canonicalId: context.into, project: projectId, funnels, sessions, ...(project ? { d: project.stamp } : {}) }
      const owner = ownerOf(context.into, projectId)
      for (const index of touched) funnels[index] = report(out, owner, state, funnels[index]!, context.watermark)
      return withWakeAt(state, out)
    },
  }
}

function isEmpty(state: FunnelState): boolean {
  if (state.funnels.length > 0) return false
  for (const _ in state.sessions) return false
  return true
}

/** Keeps the session starts sessionize may still announce again: within its horizon of the newest, at most its count. */
function pruneSessions(sessions: Record<string, SeenSession>, horizonMs: number, maxSessions: number): Record<string, SeenSession> {
  const ids = Object.keys(sessions)
  let newest = Number.NEGATIVE_INFINITY
  for (const id of ids) newest = Math.max(newest, sessions[id]!.t)
  let kept = ids.filter((id) => sessions[id]!.t >= newest - horizonMs)
  if (kept.length > maxSessions) kept = kept.sort((a, b) => sessions[b]!.t - sessions[a]!.t || (a < b ? -1 : 1)).slice(0, maxSessions)
  if (kept.length === ids.length) return sessions
  return Object.fromEntries(kept.map((id) => [id, sessions[id]!]))
}
