import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type Origin, type SessionEnvelope, type Source } from '../../schemas/envelope.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'
import type { Session, SessionChange, SessionName } from '../../schemas/session.ts'
import { keyGroupOf } from '../../topology/subjects.ts'
import type { Emission, MergeContext, Operator, StepResult } from '../runtime/operator.ts'

const MINUTE = 60_000

/** Inactivity that ends a session when the project does not say otherwise. */
export const DEFAULT_GAP_MS = 30 * MINUTE
/** How far behind a user's newest event an ended session is still kept in state. */
export const DEFAULT_HORIZON_MS = 7 * 24 * 60 * MINUTE
/** Most sessions kept in state per user. */
export const DEFAULT_MAX_SESSIONS = 50
/** Page paths are kept (and reported) up to this many characters, so a user's state stays small. */
export const MAX_PATH_LENGTH = 1024
/** Event names the operator owns: inputs named like this are ignored. */
export const RESERVED_PREFIX = '$session_'

export interface SessionizeOptions {
  /** Key groups of the installation: the `sessions` stage is routed by canonical user id. */
  keyGroups: number
  /** Inactivity that ends a session in a project, ms. Default 30 minutes (`DEFAULT_GAP_MS`). */
  gapMsOf?: (project: string) => number
  /** Count events of bots (`context.bot`) in sessions. Default false: bots open no sessions. */
  countBots?: boolean
  /**
   * An ended session whose last event is older than the user's newest event by more than this is
   * dropped from state and final. Default 7 days (`DEFAULT_HORIZON_MS`).
   */
  horizonMs?: number
  /** Most sessions kept per user; beyond it the oldest is ended (if open) and dropped. Default 50. */
  maxSessions?: number
}

export interface SessionizeInput {
  envelope: EnrichedEventEnvelope
  origin: Origin
}

/** A page view that names a path; (time, messageId) orders page views deterministically. */
export interface PageMark {
  time: number
  messageId: string
  path: string
}

/** What a set of events adds up to: a session without its identity. */
interface Totals {
  start: number
  end: number
  events: number
  pages: number
  /** Message id of the first event, by (time, messageId). */
  firstMessageId: string
  channel?: string
  device?: string
  /** First and last page view with a path, by (time, messageId). */
  entry?: PageMark
  exit?: PageMark
}

/** One session as the state keeps it. Plain data: it goes through msgpack. */
export interface StoredSession extends Totals {
  /** Event time the session was opened at: its id is `<canonicalId>:<opened>`, for its whole life. */
  opened: number
  /** Version of the last change emitted (0: not emitted yet). */
  version: number
  /** Its last emitted change was `$session_end`. */
  ended: boolean
  /** Source and origin of the input that last changed it: what its timer-driven `$session_end` carries. */
  source: Source
  origin: Origin
}

/** A user's state: their recent sessions, sorted by start, each more than a gap from the next. */
export interface SessionState {
  /** Empty until the first input. */
  canonicalId: string
  project: string
  sessions: StoredSession[]
}

/** Where the messages about a user's sessions go. */
interface Owner {
  canonicalId: string
  project: string
  keyGroup: number
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)

/** (time, id) order: the first event of a session is the least, the last page view the greatest. */
const precedes = (time: number, id: string, otherTime: number, otherId: string) => time < otherTime || (time === otherTime && id < otherId)

function earlierMark(a: PageMark | undefined, b: PageMark | undefined): PageMark | undefined {
  if (!a) return b
  if (!b) return a
  return precedes(b.time, b.messageId, a.time, a.messageId) ? b : a
}

function laterMark(a: PageMark | undefined, b: PageMark | undefined): PageMark | undefined {
  if (!a) return b
  if (!b) return a
  return precedes(a.time, a.messageId, b.time, b.messageId) ? b : a
}

/** Optional fields are left out rather than set to undefined: msgpack would store them as nil. */
function optional<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined || value === null ? {} : { [key]: value }) as { [P in K]?: V }
}

function combine(a: Totals, b: Totals): Totals {
  const first = precedes(b.start, b.firstMessageId, a.start, a.firstMessageId) ? b : a
  return {
    start: Math.min(a.start, b.start),
    end: Math.max(a.end, b.end),
    events: a.events + b.events,
    pages: a.pages + b.pages,
    firstMessageId: first.firstMessageId,
    ...optional('channel', first.channel),
    ...optional('device', first.device),
    ...optional('entry', earlierMark(a.entry, b.entry)),
    ...optional('exit', laterMark(a.exit, b.exit)),
  }
}

function totalsOf(session: Totals): Totals {
  return {
    start: session.start, end: session.end, events: session.events, pages: session.pages, firstMessageId: session.firstMessageId,
    ...optional('channel', session.channel), ...optional('device', session.device),
    ...optional('entry', session.entry), ...optional('exit', session.exit),
  }
}

/** The path of a page or screen view: `context.page.path`, else `properties.path`. */
export function pagePathOf(message: SegmentMessage): string | undefined {
  const page = isRecord(message.context) ? message.context.page : undefined
  const candidates = [isRecord(page) ? page.path : undefined, message.properties?.path]
  const path = candidates.find((value): value is string => typeof value === 'string' && value !== '')
  return path?.slice(0, MAX_PATH_LENGTH)
}

function totalsOfEvent(envelope: EnrichedEventEnvelope): Totals {
  const { message, context } = envelope.data
  const isPageView = message.type === 'page' || message.type === 'screen'
  const path = isPageView ? pagePathOf(message) : undefined
  const mark = path === undefined ? undefined : { time: envelope.time, messageId: message.messageId, path }
  return {
    start: envelope.time,
    end: envelope.time,
    events: 1,
    pages: isPageView ? 1 : 0,
    firstMessageId: message.messageId,
    ...optional('channel', context?.acquisition?.channel),
    ...optional('device', context?.device?.type),
    ...optional('entry', mark),
    ...optional('exit', mark),
  }
}

export const sessionIdOf = (canonicalId: string, session: Pick<StoredSession, 'opened'>) => `${canonicalId}:${session.opened}`

function sessionOf(owner: Owner, stored: StoredSession): Session {
  return {
    sessionId: sessionIdOf(owner.canonicalId, stored),
    canonicalId: owner.canonicalId,
    start: stored.start,
    end: stored.end,
    durationMs: stored.end - stored.start,
    events: stored.events,
    pages: stored.pages,
    ...optional('entryPage', stored.entry?.path),
    ...optional('exitPage', stored.exit?.path),
    ...optional('channel', stored.channel),
    ...optional('device', stored.device),
    firstMessageId: stored.firstMessageId,
  }
}

/** Emits one change of a session (its version + 1) and returns the session as it now stands. */
function announce(out: Emission[], owner: Owner, stored: StoredSession, name: SessionName): StoredSession {
  const next: StoredSession = { ...stored, version: stored.version + 1, ended: name === '$session_retract' ? stored.ended : name === '$session_end' }
  const session = sessionOf(owner, next)
  const envelope: SessionEnvelope = {
    v: ENVELOPE_VERSION,
    type: 'session',
    project: owner.project,
    id: `${session.sessionId}:${next.version}`,
    time: name === '$session_end' ? next.end : next.start,
    key: owner.canonicalId,
    keyGroup: owner.keyGroup,
    source: next.source,
    origin: next.origin,
    // the cast: SessionChange's `name` is typed `never` (a Union over a mapped array loses its
    // literals in schemas/session.ts); the value is one of SESSION_NAMES and validates at run time
    data: { name: name as SessionChange['name'], version: next.version, session },
  }
  out.push({ stage: 'sessions', project: owner.project, keyGroup: owner.keyGroup, envelope })
  return next
}

/** Closed once the watermark has passed its last event plus the gap. */
const isDue = (session: Totals, gap: number, watermark: number) => session.end + gap <= watermark

/** Emits a changed session under the name its end calls for: ended if due, else (still or again) started. */
function announceChange(out: Emission[], owner: Owner, stored: StoredSession, gap: number, watermark: number): StoredSession {
  if (stored.version === 0) {
    // a new session: always announced as started first, so every session has a `$session_start`
    const started = announce(out, owner, stored, '$session_start')
    return isDue(started, gap, watermark) ? announce(out, owner, started, '$session_end') : started
  }
  return announce(out, owner, stored, isDue(stored, gap, watermark) ? '$session_end' : '$session_start')
}

interface Placement {
  stored: StoredSession
  /** Not emitted under this user yet: a new event or a session moved here by an identity merge. */
  incoming: boolean
}

/**
 * Places incoming sessions among a user's sessions: every run of sessions no more than a gap apart
 * becomes one session, kept under the id of its earliest session already emitted for this user (a
 * new id only when it has none); the others of the run are retracted. Announces every session that
 * changed, except, when the incoming session is one event (`fromEvent`), an open session that only
 * grew at its end: live traffic then costs no message per event, its totals go out with its
 * `$session_end`.
 */
function consolidate(
  existing: StoredSession[], incoming: StoredSession[], owner: Owner, gap: number, watermark: number, fromEvent: boolean, out: Emission[],
): StoredSession[] {
  const placements: Placement[] = [
    ...existing.map((stored) => ({ stored, incoming: false })),
    ...incoming.map((stored) => ({ stored, incoming: true })),
  ].sort((a, b) => a.stored.start - b.stored.start || Number(a.incoming) - Number(b.incoming) || a.stored.opened - b.stored.opened)
  const runs: Placement[][] = []
  let runEnd = Number.NEGATIVE_INFINITY
  for (const placement of placements) {
    const run = runs.at(-1)
    if (run && placement.stored.start - runEnd <= gap) {
      run.push(placement)
      runEnd = Math.max(runEnd, placement.stored.end)
    } else {
      runs.push([placement])
      runEnd = placement.stored.end
    }
  }
  const sessions: StoredSession[] = []
  for (const run of runs) {
    if (run.length === 1 && !run[0]!.incoming) {
      sessions.push(run[0]!.stored)
      continue
    }
    const kept = run.filter((placement) => !placement.incoming)
    const survivor = (kept[0] ?? run[0]!).stored
    for (const { stored } of kept.slice(1)) announce(out, owner, stored, '$session_retract')
    const totals = run.map((placement) => totalsOf(placement.stored)).reduce(combine)
    // a session an event changed carries that event's source and origin
    const cause = fromEvent ? (run.find((placement) => placement.incoming)?.stored ?? survivor) : survivor
    const merged: StoredSession = {
      ...totals,
      opened: survivor.opened,
      version: survivor.version,
      ended: survivor.ended,
      source: cause.source,
      origin: cause.origin,
    }
    const grewQuietly = fromEvent && kept.length === 1 && !survivor.ended && merged.start === survivor.start && merged.firstMessageId === survivor.firstMessageId
    sessions.push(grewQuietly ? merged : announceChange(out, owner, merged, gap, watermark))
  }
  return sessions
}

/** Keeps the state bounded: at most `maxSessions`, and no ended session beyond the horizon. */
function prune(sessions: StoredSession[], owner: Owner, horizonMs: number, maxSessions: number, out: Emission[]): StoredSession[] {
  let kept = sessions
  while (kept.length > maxSessions) {
    const [oldest, ...rest] = kept
    // a session that leaves the state is final: end it now if it is still open
    if (!oldest!.ended) announce(out, owner, oldest!, '$session_end')
    kept = rest
  }
  const newest = Math.max(...kept.map((session) => session.end))
  return kept.filter((session) => !session.ended || session.end >= newest - horizonMs)
}

/** The timer: when the earliest open session becomes due. */
function wakeAtOf(sessions: StoredSession[], gap: number): number | undefined {
  let wakeAt: number | undefined
  for (const session of sessions) {
    if (!session.ended && (wakeAt === undefined || session.end + gap < wakeAt)) wakeAt = session.end + gap
  }
  return wakeAt
}

function withWakeAt(state: SessionState, emit: Emission[], gap: number): StepResult<SessionState> {
  const wakeAt = wakeAtOf(state.sessions, gap)
  return wakeAt === undefined ? { state, emit } : { state, emit, wakeAt }
}

/**
 * Sessionize: groups each canonical user's events into sessions, in event time, and publishes
 * their changes (`$session_start`, `$session_end`, `$session_retract`) on the `sessions` stage.
 * Every event is applied whenever it arrives; late ones correct what was published. See
 * docs/sessions.md.
 */
export function createSessionize(options: SessionizeOptions): Operator<SessionState, SessionizeInput> {
  const gapOf = (project: string) => options.gapMsOf?.(project) ?? DEFAULT_GAP_MS
  const horizonMs = options.horizonMs ?? DEFAULT_HORIZON_MS
  const maxSessions = Math.max(1, options.maxSessions ?? DEFAULT_MAX_SESSIONS)
  const ownerOf = (canonicalId: string, project: string): Owner => ({ canonicalId, project, keyGroup: keyGroupOf(canonicalId, options.keyGroups) })

  const ignores = (envelope: EnrichedEventEnvelope) =>
    envelope.data.name.startsWith(RESERVED_PREFIX) || (envelope.data.context?.bot === true && !options.countBots)

  const finish = (state: SessionState, sessions: StoredSession[], owner: Owner, gap: number, out: Emission[]) =>
    withWakeAt({ ...state, sessions: prune(sessions, owner, horizonMs, maxSessions, out) }, out, gap)

  return {
    stepId: 'sessionize',
    init: () => ({ canonicalId: '', project: '', sessions: [] }),
    toInput(envelope, origin) {
      if (envelope.type !== 'enriched_event') throw new Error(`sessionize reads enriched_event messages, got ${envelope.type}`)
      return { envelope, origin }
    },
    keyOf: (input) => input.envelope.data.canonicalId,
    onEvent(state, { envelope, origin }, context) {
      if (ignores(envelope)) {
        // a bot or a reserved name: nothing changes, and a user seen only so keeps no state at all
        if (state.sessions.length === 0) return { state: undefined, emit: [] }
        return withWakeAt(state, [], gapOf(state.project))
      }
      const owner = ownerOf(state.canonicalId || envelope.data.canonicalId, state.project || envelope.project)
      const gap = gapOf(owner.project)
      const incoming: StoredSession = { ...totalsOfEvent(envelope), opened: envelope.time, version: 0, ended: false, source: envelope.source, origin }
      const out: Emission[] = []
      const sessions = consolidate(state.sessions, [incoming], owner, gap, context.watermark, true, out)
      return finish({ canonicalId: owner.canonicalId, project: owner.project, sessions: [] }, sessions, owner, gap, out)
    },
    onTimer(state, now) {
      if (state.sessions.length === 0) return { state, emit: [] }
      const owner = ownerOf(state.canonicalId, state.project)
      const gap = gapOf(owner.project)
      const out: Emission[] = []
      const sessions = state.sessions.map((session) => (!session.ended && isDue(session, gap, now) ? announce(out, owner, session, '$session_end') : session))
      return finish(state, sessions, owner, gap, out)
    },
    mergeInto(into, from, context: MergeContext) {
      const project = into?.project || from.project
      const gap = gapOf(project)
      if (from.sessions.length === 0) return into ? withWakeAt(into, [], gap) : { state: undefined, emit: [] }
      const out: Emission[] = []
      const fromOwner = ownerOf(from.canonicalId || context.from, project)
      // counted under the anonymous id so far: withdrawn there, then counted again under `into`
      for (const session of from.sessions) announce(out, fromOwner, session, '$session_retract')
      const moved = from.sessions.map((session): StoredSession => ({ ...session, opened: session.start, version: 0, ended: false }))
      const owner = ownerOf(context.into, project)
      const sessions = consolidate(into?.sessions ?? [], moved, owner, gap, context.watermark, false, out)
      return finish({ canonicalId: context.into, project, sessions: [] }, sessions, owner, gap, out)
    },
  }
}
