import type { EnrichedEventEnvelope, Source } from '../../schemas/envelope.ts'
import type { EnrichedContext } from '../../schemas/enriched.ts'
import type { FunnelDefinition } from '../../schemas/funnel.ts'
import type { Session } from '../../schemas/session.ts'
import type { Seed } from './backfill.ts'
import {
  breakdownValue, DEFAULT_FUNNEL_HORIZON_MS, DEFAULT_MAX_EVENTS, eventLookup, SESSION_EVENT_PREFIX, SESSION_START, sessionLookup, startsAttempt,
  type FunnelState, type SeenSession,
} from './logic.ts'
import { advance, compileFunnel, emptyMatch, maskOf, mergeTracks, newTrack, PASSIVE_BIT, type CompiledFunnel, type MatchState, type Track, type TrackLimits } from './match.ts'

/**
 * The pure half of a funnel backfill from the tables (docs/funnels.md, "Backfill"): history older
 * than the streams' first messages is read from `events` (and `sessions`, for `$session_start`),
 * one user at a time, each user's rows in event-time order. A user's events read in order need no
 * late-event buffer: the matcher (match.ts) advances over them once, and the user's track is
 * built as the live step would hold it after the same events (the step's buffer of the newest
 * events kept for what comes later, the rest folded). The result is the user's seed, as the
 * stream replay's (backfill.ts).
 */

/** What the table read must select for one funnel (backfill-table-store.ts turns it into SQL). */
export interface HistoryColumns {
  /** Event names to read; undefined: every name (a strict funnel: any other event breaks an attempt). */
  names?: string[]
  /** `properties` keys the filters and the breakdown read. */
  properties: string[]
  /** Whether `$path` is read (the client's `context.page.path`, else the `path` property). */
  page: boolean
  /** Whether a `$`-property of enrich's context is read (`$channel`, `$device`, `$country`, ...). */
  enrichment: boolean
  /** Whether `$session_start` is a step or an exclusion: the `sessions` table is read too. */
  sessions: boolean
}

/** The `$`-properties an event row answers from its `enrichment` (logic.ts, eventLookup). */
const ENRICHMENT_PROPERTIES = new Set(['$channel', '$source', '$medium', '$campaign', '$referrer_host', '$device', '$browser', '$os', '$country', '$city'])

export function historyColumnsOf(definition: FunnelDefinition): HistoryColumns {
  const conditions = [...definition.steps, ...(definition.exclusions ?? [])]
  const read = [...conditions.flatMap((condition) => (condition.filters ?? []).map((filter) => filter.property)), ...(definition.breakdown ? [definition.breakdown.property] : [])]
  const properties = new Set(read.filter((property) => !property.startsWith('$')))
  const page = read.includes('$path')
  if (page) properties.add('path')
  const names = [...new Set(conditions.map((condition) => condition.event).filter((event) => event !== SESSION_START))]
  return {
    ...(definition.mode === 'strict' ? {} : { names }),
    properties: [...properties].sort(),
    page,
    enrichment: read.some((property) => ENRICHMENT_PROPERTIES.has(property)),
    sessions: conditions.some((condition) => condition.event === SESSION_START),
  }
}

/** One row of the history: an event of the events table, or a session's start from the sessions table. */
export type HistoryRow = {
  user: string
  /** Event time (a session's start), ms. */
  time: number
  /** The message id; a session's start is `$session_start:<session id>`. */
  id: string
  source: Source
  /** Its sequence in SEG_ENRICHED (an event) or SEG_SESSIONS (a session's newest version). */
  seq: number
} & (
  | {
    kind: 'event'
    name: string
    /** The keys of HistoryColumns.properties the event has. */
    properties: Record<string, unknown>
    /** The client's `context.page`, when `$path` is read. */
    page?: unknown
    enrichment?: EnrichedContext | null
  }
  | { kind: 'session'; version: number; channel?: string; device?: string; entryPage?: string }
)

export interface TableSeedOptions {
  project: string
  funnelId: string
  version: number
  definition: FunnelDefinition
  /** As the funnel step holds a track (its horizon and buffer): the seed keeps as many of the newest events. */
  limits?: Partial<TrackLimits>
  /**
   * Users whose seed is merged with the streams' history of them (mergeSeeds): their track keeps the
   * stream replay's horizon and buffer (`wideLimits`), so the two histories are merged event by
   * event rather than folded and combined.
   */
  wide?: (user: string) => boolean
  wideLimits?: TrackLimits
  /** The streams the rows' sequences are of (the seed's origin). */
  enrichedStream: string
  sessionsStream: string
}

/** A user's events as the matcher takes them: parallel arrays, sorted by (time, id) before use. */
interface UserHistory {
  user: string
  time: number[]
  id: string[]
  mask: number[]
  breakdown: string[] | undefined
  sessions: Record<string, SeenSession>
  source: Source
  origin: { stream: string; seq: number }
}

const precedes = (timeA: number, idA: string, timeB: number, idB: string) => timeA < timeB || (timeA === timeB && idA < idB)

/**
 * The track the live step would hold after `history`'s events, in (time, id) order: the newest
 * within the limits (the horizon behind the user's newest event, at most `maxEvents`) kept,
 * the others folded into `base`. Advances over each event once.
 */
export function trackOfHistory(funnel: CompiledFunnel, time: readonly number[], id: readonly string[], mask: readonly number[], breakdown: readonly string[] | undefined, limits: TrackLimits): Track {
  const count = time.length
  if (count === 0) return newTrack(funnel)
  const oldest = time[count - 1]! - limits.horizonMs
  let cut = count > limits.maxEvents ? count - limits.maxEvents : 0
  while (cut < count && time[cut]! < oldest) cut++
  let base: MatchState = emptyMatch()
  for (let index = 0; index < cut; index++) base = advance(funnel, base, time[index]!, id[index]!, mask[index]!, breakdown?.[index])
  let head = base
  for (let index = cut; index < count; index++) head = advance(funnel, head, time[index]!, id[index]!, mask[index]!, breakdown?.[index])
  const track: Track = { v: funnel.version, n: funnel.steps, w: funnel.windowMs, base, head, t: time.slice(cut), i: id.slice(cut), m: mask.slice(cut) }
  if (breakdown !== undefined) track.b = breakdown.slice(cut)
  if (cut > 0) {
    track.cutT = time[cut - 1]!
    track.cutI = id[cut - 1]!
  }
  return track
}

/** Sorts a user's parallel arrays by (time, id) (rows come sorted by the database's collation, ids compare here as the matcher compares them); drops repeats. */
function sortHistory(history: UserHistory): void {
  const { time, id } = history
  let sorted = true
  for (let index = 1; index < time.length && sorted; index++) sorted = precedes(time[index - 1]!, id[index - 1]!, time[index]!, id[index]!)
  if (sorted) return
  const order = time.map((_, index) => index).sort((a, b) => (precedes(time[a]!, id[a]!, time[b]!, id[b]!) ? -1 : precedes(time[b]!, id[b]!, time[a]!, id[a]!) ? 1 : 0))
  const keep = order.filter((at, index) => index === 0 || time[at] !== time[order[index - 1]!] || id[at] !== id[order[index - 1]!])
  history.time = keep.map((at) => time[at]!)
  history.id = keep.map((at) => id[at]!)
  history.mask = keep.map((at) => history.mask[at]!)
  if (history.breakdown) history.breakdown = keep.map((at) => history.breakdown![at]!)
}

/**
 * Takes history rows grouped by user (all of a user's rows one after the other, any order within)
 * and gives each user's seed when their rows end. Bots' events are to be left out by the read
 * (as the live step leaves them out).
 */
export function createTableSeeder(options: TableSeedOptions) {
  const funnel = compileFunnel(options.definition, options.version)
  const limits: TrackLimits = {
    horizonMs: options.limits?.horizonMs ?? DEFAULT_FUNNEL_HORIZON_MS,
    maxEvents: Math.max(1, options.limits?.maxEvents ?? DEFAULT_MAX_EVENTS),
  }
  const strict = funnel.everyEvent
  const withBreakdown = funnel.breakdown !== undefined
  let current: UserHistory | undefined
  const counters = { rows: 0, applied: 0, users: 0 }
  const envelope = { data: { message: { properties: {} as Record<string, unknown>, context: {} as Record<string, unknown> }, context: undefined as EnrichedContext | undefined } }
  const lookupOf = (row: Extract<HistoryRow, { kind: 'event' }>) => {
    envelope.data.message.properties = row.properties
    envelope.data.message.context = row.page === undefined ? {} : { page: row.page }
    envelope.data.context = row.enrichment ?? undefined
    return eventLookup(envelope as unknown as EnrichedEventEnvelope)
  }

  const seedOf = (history: UserHistory): Seed | undefined => {
    if (history.time.length === 0) return undefined
    sortHistory(history)
    counters.users++
    const wide = options.wideLimits !== undefined && options.wide?.(history.user) === true
    const track = trackOfHistory(funnel, history.time, history.id, history.mask, history.breakdown, wide ? options.wideLimits! : limits)
    const state: FunnelState = {
      canonicalId: history.user, project: options.project, funnels: [{ id: funnel.id, track }], sessions: history.sessions,
      source: history.source, origin: history.origin, seed: { id: options.funnelId, v: options.version },
    }
    return { user: history.user, state, lastTime: history.time[history.time.length - 1]!, source: history.source }
  }

  return {
    funnel,
    counters,
    /** One row; returns the previous user's seed when this row starts another user. */
    add(row: HistoryRow): Seed | undefined {
      counters.rows++
      let done: Seed | undefined
      if (current === undefined || current.user !== row.user) {
        if (current !== undefined) done = seedOf(current)
        current = { user: row.user, time: [], id: [], mask: [], breakdown: withBreakdown ? [] : undefined, sessions: {}, source: row.source, origin: { stream: '', seq: 0 } }
      }
      let mask: number
      let breakdown: string | undefined
      if (row.kind === 'event') {
        const lookup = lookupOf(row)
        mask = funnel.conditions.has(row.name) ? maskOf(funnel, row.name, lookup) : 0
        if (mask === 0 && !strict) return done
        if (withBreakdown && startsAttempt(funnel, mask)) breakdown = breakdownValue(lookup(funnel.breakdown!))
        current.origin = { stream: options.enrichedStream, seq: row.seq }
      } else {
        current.sessions[row.id.slice(SESSION_EVENT_PREFIX.length)] = { v: row.version, t: row.time }
        const session = { channel: row.channel, device: row.device, entryPage: row.entryPage } as Session
        const lookup = sessionLookup(session)
        mask = maskOf(funnel, SESSION_START, lookup)
        if (mask === 0) return done
        mask |= PASSIVE_BIT
        if (withBreakdown && startsAttempt(funnel, mask)) breakdown = breakdownValue(lookup(funnel.breakdown!))
        if (current.origin.stream === '') current.origin = { stream: options.sessionsStream, seq: row.seq }
      }
      counters.applied++
      current.time.push(row.time)
      current.id.push(row.id)
      current.mask.push(mask)
      current.breakdown?.push(breakdown ?? '')
      current.source = row.source
      return done
    },
    /** After the last row: the last user's seed. */
    end(): Seed | undefined {
      const last = current
      current = undefined
      return last === undefined ? undefined : seedOf(last)
    },
  }
}

/**
 * A user both in the table's history and in the streams': the seeds as one, the way the step merges
 * two tracks of one person (match.ts, mergeTracks: the events of both, each once), trimmed to the
 * step's limits. `streams` are the stream replay's seeds of the user and of the anonymous ids
 * linked to the user (the table has their rows under the user already); their session versions
 * are the newer ones.
 */
export function mergeSeeds(funnel: CompiledFunnel, table: Seed, streams: readonly Seed[], limits?: Partial<TrackLimits>): Seed {
  const trackLimits: TrackLimits = { horizonMs: limits?.horizonMs ?? DEFAULT_FUNNEL_HORIZON_MS, maxEvents: Math.max(1, limits?.maxEvents ?? DEFAULT_MAX_EVENTS) }
  let track = table.state.funnels[0]!.track
  let sessions = table.state.sessions
  let latest = table
  for (const stream of streams) {
    const streamTrack = stream.state.funnels.find((entry) => entry.id === funnel.id)?.track
    if (streamTrack !== undefined) track = mergeTracks(funnel, track, streamTrack, trackLimits, Number.POSITIVE_INFINITY)
    sessions = { ...sessions, ...stream.state.sessions }
    if (stream.lastTime >= latest.lastTime) latest = stream
  }
  return {
    user: table.user, lastTime: latest.lastTime, source: latest.source,
    state: { ...table.state, funnels: [{ id: funnel.id, track }], sessions, origin: latest.state.origin, source: latest.source },
  }
}
