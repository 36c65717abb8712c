import { DEFAULT_WINDOW_MS, type FilterOperator, type FunnelDefinition, type FunnelStatus, type PropertyFilter } from '../../schemas/funnel.ts'

/**
 * The pure matcher of one funnel for one user (docs/funnels.md): which attempts exist, how far
 * each got, which one counts. Everything here is plain data and plain functions; the operator
 * (logic.ts) keeps one `Track` per (user, funnel) and feeds it events.
 *
 * An event reaches the matcher as (time, id, mask): bit k of the mask says it matches step k
 * (0-based), bit EXCLUSION_SHIFT + j that it matches exclusion j. Masks are computed once, when
 * the event arrives, under the definition in force (a new definition version starts afresh).
 */

export const MODE_SEQUENTIAL = 0
export const MODE_STRICT = 1
export const MODE_ANY_ORDER = 2
export type ModeCode = typeof MODE_SEQUENTIAL | typeof MODE_STRICT | typeof MODE_ANY_ORDER

export const EXCLUSION_SHIFT = 20
const STEP_BITS = (1 << EXCLUSION_SHIFT) - 1
/** Set on a session start: it can be a step or an exclusion, but it never breaks a strict attempt (it is not something the user did). */
export const PASSIVE_BIT = 1 << 30

/** With exclusions, attempts at the same level cannot replace each other (docs/funnels.md); at most this many are kept. */
export const MAX_LIVE_ATTEMPTS = 64

/** A property of the event being matched (undefined: the event does not have it). */
export type PropertyLookup = (property: string) => unknown

type Test = (value: unknown) => boolean

interface Condition {
  bit: number
  tests: Test[]
  properties: string[]
}

/** A funnel definition made ready for matching. */
export interface CompiledFunnel {
  id: string
  version: number
  steps: number
  mode: ModeCode
  windowMs: number
  /** 0-based: an attempt with `from < level <= to` steps reached is exposed (reached step `from`, not step `to`). */
  exclusions: Array<{ from: number; to: number; bit: number }>
  /** Event names that can set a bit, with their conditions. */
  conditions: Map<string, Condition[]>
  /** Strict mode: every event of the user concerns the funnel (any other event breaks an attempt). */
  everyEvent: boolean
  breakdown?: string
}

// ---------------------------------------------------------------------------------------------
// Filters

const isScalar = (value: unknown): value is string | number | boolean => typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean'

/** Equal as values, or as strings when the types differ (`'42'` eq `42`, `'true'` eq `true`). */
function same(value: unknown, expected: unknown): boolean {
  if (value === expected) return true
  return isScalar(value) && isScalar(expected) && String(value) === String(expected)
}

function ordered(operator: 'gt' | 'gte' | 'lt' | 'lte', expected: unknown): Test {
  const accept = (difference: number) =>
    operator === 'gt' ? difference > 0 : operator === 'gte' ? difference >= 0 : operator === 'lt' ? difference < 0 : difference <= 0
  if (typeof expected === 'number') {
    return (value) => {
      const number = typeof value === 'number' ? value : typeof value === 'string' && value.trim() !== '' ? Number(value) : Number.NaN
      return !Number.isNaN(number) && accept(number - expected)
    }
  }
  const text = String(expected)
  return (value) => typeof value === 'string' && accept(value < text ? -1 : value > text ? 1 : 0)
}

/** One filter as a test of the property's value. */
export function filterTest(filter: { operator?: FilterOperator; value?: unknown }): Test {
  const expected = filter.value
  switch (filter.operator ?? 'eq') {
    case 'eq': return (value) => same(value, expected)
    case 'neq': return (value) => !same(value, expected)
    case 'gt': return ordered('gt', expected)
    case 'gte': return ordered('gte', expected)
    case 'lt': return ordered('lt', expected)
    case 'lte': return ordered('lte', expected)
    case 'in': {
      const options = Array.isArray(expected) ? expected : [expected]
      return (value) => options.some((option) => same(value, option))
    }
    case 'contains': {
      const needle = String(expected).toLowerCase()
      return (value) => typeof value === 'string' && value.toLowerCase().includes(needle)
    }
    case 'is_set': return (value) => value !== undefined && value !== null
  }
}

function conditionOf(bit: number, filters: PropertyFilter[] | undefined): Condition {
  return { bit, tests: (filters ?? []).map(filterTest), properties: (filters ?? []).map((filter) => filter.property) }
}

export function compileFunnel(definition: FunnelDefinition, version: number): CompiledFunnel {
  const mode: ModeCode = definition.mode === 'strict' ? MODE_STRICT : definition.mode === 'any_order' ? MODE_ANY_ORDER : MODE_SEQUENTIAL
  const conditions = new Map<string, Condition[]>()
  const add = (event: string, condition: Condition) => {
    const list = conditions.get(event)
    if (list) list.push(condition)
    else conditions.set(event, [condition])
  }
  definition.steps.forEach((step, index) => add(step.event, conditionOf(1 << index, step.filters)))
  const exclusions = (definition.exclusions ?? []).map((exclusion, index) => {
    const bit = 1 << (EXCLUSION_SHIFT + index)
    add(exclusion.event, conditionOf(bit, exclusion.filters))
    return { from: exclusion.fromStep - 1, to: exclusion.toStep - 1, bit }
  })
  return {
    id: definition.id, version, steps: definition.steps.length, mode, windowMs: definition.windowMs ?? DEFAULT_WINDOW_MS,
    exclusions, conditions, everyEvent: mode === MODE_STRICT,
    ...(definition.breakdown ? { breakdown: definition.breakdown.property } : {}),
  }
}

/** The steps and exclusions an event matches (0 for none). */
export function maskOf(funnel: CompiledFunnel, name: string, lookup: PropertyLookup): number {
  const list = funnel.conditions.get(name)
  if (list === undefined) return 0
  let mask = 0
  for (const condition of list) {
    let holds = true
    for (let index = 0; index < condition.tests.length; index++) {
      if (!condition.tests[index]!(lookup(condition.properties[index]!))) {
        holds = false
        break
      }
    }
    if (holds) mask |= condition.bit
  }
  return mask
}

// ---------------------------------------------------------------------------------------------
// Attempts

/** One attempt: started by a first-step event, advanced by later events within the window. Plain data; never mutated. */
export interface Attempt {
  /** Event time and message id of the event that started it. */
  s: number
  sid: string
  /** Steps reached. */
  l: number
  /** Any-order mode: the steps reached, as a mask; 0 otherwise. */
  d: number
  /** Event time of each step reached. */
  tt: number[]
  /** Event time and id of the event that reached `l`. */
  ct: number
  cid: string
  /** The breakdown property's value on the first step. */
  b?: string
}

/** What processing a user's events in (time, id) order leaves. Plain data; shared, never mutated. */
export interface MatchState {
  /** Attempts that may still advance: not broken, not discarded, window open at the newest event. */
  live: Attempt[]
  /** The best attempt that can no longer change (closed, broken, complete, or replaced by a later one at its level). */
  best?: Attempt
}

export const emptyMatch = (): MatchState => ({ live: [] })

/** The counted attempt between two: further, then the earlier to reach its level, then the later start. */
export function better(a: Attempt, b: Attempt): boolean {
  if (a.l !== b.l) return a.l > b.l
  if (a.ct !== b.ct) return a.ct < b.ct
  if (a.cid !== b.cid) return a.cid < b.cid
  if (a.s !== b.s) return a.s > b.s
  return a.sid > b.sid
}

const precedes = (time: number, id: string, otherTime: number, otherId: string) => time < otherTime || (time === otherTime && id < otherId)

/** Where final attempts go while an event is applied. */
interface Settled {
  best: Attempt | undefined
}

// `advance` runs to completion without calling out, so one holder serves every call (no allocation per event)
const scratch: Settled = { best: undefined }

function settle(settled: Settled, attempt: Attempt) {
  if (settled.best === undefined || better(attempt, settled.best)) settled.best = attempt
}

function exposed(funnel: CompiledFunnel, level: number, mask: number): boolean {
  for (const exclusion of funnel.exclusions) {
    if ((mask & exclusion.bit) !== 0 && level > exclusion.from && level <= exclusion.to) return true
  }
  return false
}

/**
 * Keeps one attempt per level (per set of steps in any order): the latest started, whose window
 * closes last, reaches every later step no later than an earlier one would. The earlier ones are
 * final as they stand. Not with exclusions: there a later attempt can be discarded after an
 * earlier one closed, and the earlier one then counts.
 */
function prune(funnel: CompiledFunnel, settled: Settled, live: Attempt[]): Attempt[] {
  if (live.length < 2) return live
  if (funnel.exclusions.length > 0) {
    if (live.length <= MAX_LIVE_ATTEMPTS) return live
    for (const attempt of live.slice(0, live.length - MAX_LIVE_ATTEMPTS)) settle(settled, attempt)
    return live.slice(live.length - MAX_LIVE_ATTEMPTS)
  }
  const anyOrder = funnel.mode === MODE_ANY_ORDER
  let seen = 0
  const seenSets = anyOrder ? new Set<number>() : undefined
  let duplicates = false
  for (let index = live.length - 1; index >= 0; index--) {
    const attempt = live[index]!
    if (anyOrder ? seenSets!.has(attempt.d) : (seen & (1 << attempt.l)) !== 0) {
      duplicates = true
      break
    }
    if (anyOrder) seenSets!.add(attempt.d)
    else seen |= 1 << attempt.l
  }
  if (!duplicates) return live
  const kept: Attempt[] = []
  seen = 0
  seenSets?.clear()
  for (let index = live.length - 1; index >= 0; index--) {
    const attempt = live[index]!
    const key = anyOrder ? attempt.d : attempt.l
    const taken = anyOrder ? seenSets!.has(key) : (seen & (1 << key)) !== 0
    if (taken) {
      settle(settled, attempt)
      continue
    }
    if (anyOrder) seenSets!.add(key)
    else seen |= 1 << key
    kept.push(attempt)
  }
  return kept.reverse()
}

function attemptOf(s: number, sid: string, l: number, d: number, tt: number[], ct: number, cid: string, b: string | undefined): Attempt {
  // one shape for every attempt (an optional field left out rather than undefined: msgpack would store nil)
  return b === undefined ? { s, sid, l, d, tt, ct, cid } : { s, sid, l, d, tt, ct, cid, b }
}

function matchOf(live: Attempt[], best: Attempt | undefined): MatchState {
  return best === undefined ? { live } : { live, best }
}

/**
 * Applies one event, later in (time, id) than every event already processed. Returns a new state,
 * or `state` itself when the event changes nothing (most events of a strict funnel's other kinds);
 * the input is never changed and attempts are shared.
 */
export function advance(funnel: CompiledFunnel, state: MatchState, time: number, id: string, mask: number, breakdown?: string): MatchState {
  const windowMs = funnel.windowMs
  const anyOrder = funnel.mode === MODE_ANY_ORDER
  const strict = funnel.mode === MODE_STRICT
  const stepMask = mask & STEP_BITS
  const old = state.live
  const settled = scratch
  settled.best = state.best
  // copied at the first attempt that changes: most events leave every attempt as it was
  let live: Attempt[] | undefined
  for (let index = 0; index < old.length; index++) {
    const attempt = old[index]!
    let kept: Attempt | undefined = attempt
    if (attempt.s + windowMs < time) {
      settle(settled, attempt) // its window closed before this event
      kept = undefined
    } else {
      let bit = 0
      if (anyOrder) {
        const free = stepMask & ~attempt.d
        bit = free & -free
      } else if ((stepMask & (1 << attempt.l)) !== 0) {
        bit = 1 << attempt.l
      }
      if (bit !== 0) {
        const tt = attempt.tt.slice()
        tt.push(time)
        const advanced = attemptOf(attempt.s, attempt.sid, attempt.l + 1, anyOrder ? attempt.d | bit : 0, tt, time, id, attempt.b)
        if (advanced.l === funnel.steps) {
          settle(settled, advanced)
          kept = undefined
        } else {
          kept = advanced
        }
      } else if (mask >>> EXCLUSION_SHIFT !== 0 && exposed(funnel, attempt.l, mask)) {
        kept = undefined // discarded: counts for nothing
      } else if (strict && (mask & PASSIVE_BIT) === 0) {
        settle(settled, attempt) // broken by another event: final at its level
        kept = undefined
      }
    }
    if (kept !== attempt && live === undefined) live = old.slice(0, index)
    if (live !== undefined && kept !== undefined) live.push(kept)
  }
  if (stepMask !== 0 && (anyOrder || (stepMask & 1) !== 0)) {
    live ??= old.slice()
    live.push(attemptOf(time, id, 1, anyOrder ? stepMask & -stepMask : 0, [time], time, id, breakdown))
  }
  if (live === undefined) {
    const best = settled.best
    settled.best = undefined
    return best === state.best ? state : matchOf(old, best)
  }
  const pruned = prune(funnel, settled, live)
  const best = settled.best
  settled.best = undefined
  return matchOf(pruned, best)
}

export interface Summary {
  level: number
  status: FunnelStatus
  stepTimes: number[]
  breakdown?: string
  /** The later of the watermark and the newest event. */
  asOf: number
  /** While in progress: when the status turns to dropped if nothing else happens (event time, ms). */
  wakeAt?: number
}

/** Step times of a user at level 0, shared (frozen: nobody changes a summary's step times). */
const NO_STEP_TIMES: readonly number[] = Object.freeze([])

/** A {@link Summary} with every field present (undefined when absent): one shape, to be filled again and again. */
export type SummaryScratch = Omit<Summary, 'breakdown' | 'wakeAt'> & { breakdown: string | undefined; wakeAt: number | undefined }

export const summaryScratch = (): SummaryScratch => ({ level: 0, status: 'none', stepTimes: [], asOf: 0, breakdown: undefined, wakeAt: undefined })

/**
 * The user's result as of the later of `watermark` and `newest` (their newest event): the counted
 * attempt and whether it can still go further, written into `into` (returned). `stepTimes` is the
 * attempt's own array, never changed.
 */
export function summarizeInto(into: SummaryScratch, state: MatchState, steps: number, windowMs: number, watermark: number, newest: number | undefined): SummaryScratch {
  let top = state.best
  const live = state.live
  for (let index = 0; index < live.length; index++) if (top === undefined || better(live[index]!, top)) top = live[index]!
  into.asOf = newest !== undefined && newest > watermark ? newest : watermark
  into.breakdown = undefined
  into.wakeAt = undefined
  if (top === undefined) {
    into.level = 0
    into.status = 'none'
    into.stepTimes = NO_STEP_TIMES as number[]
    return into
  }
  into.level = top.l
  into.status = 'dropped'
  into.stepTimes = top.tt
  if (top.b !== undefined && top.b !== '') into.breakdown = top.b
  if (top.l === steps) {
    into.status = 'converted'
    return into
  }
  let deadline = Number.NEGATIVE_INFINITY
  for (let index = 0; index < live.length; index++) {
    const attempt = live[index]!
    if (attempt.l === top.l && attempt.s + windowMs > deadline) deadline = attempt.s + windowMs
  }
  if (deadline >= into.asOf) {
    into.status = 'in_progress'
    into.wakeAt = deadline + 1
  }
  return into
}

/** {@link summarizeInto} as a new object with only the fields present. */
export function summarize(state: MatchState, steps: number, windowMs: number, watermark: number, newest: number | undefined): Summary {
  const filled = summarizeInto(summaryScratch(), state, steps, windowMs, watermark, newest)
  const summary: Summary = { level: filled.level, status: filled.status, stepTimes: filled.stepTimes, asOf: filled.asOf }
  if (filled.breakdown !== undefined) summary.breakdown = filled.breakdown
  if (filled.wakeAt !== undefined) summary.wakeAt = filled.wakeAt
  return summary
}

// ---------------------------------------------------------------------------------------------
// A track: the matcher with the recent events kept, so late events are applied exactly

/**
 * One funnel for one user. `base` is the match state after the events folded out of the buffer
 * (up to the cut); `head` after those and every buffered event; the buffer holds the events
 * after the cut, sorted by (time, id), as parallel arrays (msgpack-friendly). `insert` changes a
 * track in place (the state it belongs to is the operator's); `removeEvents` and `mergeTracks`
 * return new ones. Match states and attempts are never changed: `base` and `head` share them.
 */
export interface Track {
  /** Definition version, steps and window it was computed under (a timer has no definitions at hand). */
  v: number
  n: number
  w: number
  base: MatchState
  head: MatchState
  t: number[]
  i: string[]
  m: number[]
  /** Breakdown values, when the funnel has a breakdown ('' when the event lacks the property). */
  b?: string[]
  /** The last event folded into `base`: an event at or before it is too late to apply. */
  cutT?: number
  cutI?: string
}

export interface TrackLimits {
  /** Events are kept while they are less than this far behind the watermark, ms of event time. */
  horizonMs: number
  /** At most this many events kept. */
  maxEvents: number
}

export const newTrack = (funnel: CompiledFunnel): Track =>
  ({ v: funnel.version, n: funnel.steps, w: funnel.windowMs, base: emptyMatch(), head: emptyMatch(), t: [], i: [], m: [], ...(funnel.breakdown === undefined ? {} : { b: [] }) })

/** The newest event the track has seen (buffered, else the last folded). */
export function newestOf(track: Track): number | undefined {
  return track.t.length > 0 ? track.t[track.t.length - 1] : track.cutT
}

/** The track's result as of the watermark. */
export const summarizeTrack = (track: Track, watermark: number): Summary => summarize(track.head, track.n, track.w, watermark, newestOf(track))

/** {@link summarizeTrack} into a scratch summary. */
export const summarizeTrackInto = (into: SummaryScratch, track: Track, watermark: number): SummaryScratch => summarizeInto(into, track.head, track.n, track.w, watermark, newestOf(track))

function trackOf(
  track: Track, base: MatchState, head: MatchState, t: number[], i: string[], m: number[], b: string[] | undefined, cutT: number | undefined, cutI: string | undefined,
): Track {
  const next: Track = { v: track.v, n: track.n, w: track.w, base, head, t, i, m }
  if (b !== undefined) next.b = b
  if (cutT !== undefined) {
    next.cutT = cutT
    next.cutI = cutI!
  }
  return next
}

/** Replays every buffered event onto `base`. */
export function replay(funnel: CompiledFunnel, track: Track): MatchState {
  let state = track.base
  for (let index = 0; index < track.t.length; index++) state = advance(funnel, state, track.t[index]!, track.i[index]!, track.m[index]!, track.b?.[index])
  return state
}

/** Folds the events more than the horizon behind the watermark (and those beyond the count bound) into `base`, in place. */
function trim(funnel: CompiledFunnel, track: Track, limits: TrackLimits, watermark: number): Track {
  const count = track.t.length
  if (count === 0) return track
  // behind the watermark and behind the user's own newest event: a user whose inputs come weeks
  // behind the key group's watermark (a fast import, where lanes run apart in event time) keeps
  // the horizon of their own time, so their next session start is not refused as late
  const oldest = Math.min(watermark, track.t[count - 1]!) - limits.horizonMs
  let drop = count > limits.maxEvents ? count - limits.maxEvents : 0
  while (drop < count && track.t[drop]! < oldest) drop++
  if (drop === 0) return track
  let base = track.base
  for (let index = 0; index < drop; index++) base = advance(funnel, base, track.t[index]!, track.i[index]!, track.m[index]!, track.b?.[index])
  track.base = base
  track.cutT = track.t[drop - 1]!
  track.cutI = track.i[drop - 1]!
  if (drop === 1) {
    // the usual case, one event out for one in: shift moves no element and allocates nothing
    track.t.shift()
    track.i.shift()
    track.m.shift()
    track.b?.shift()
  } else {
    track.t.splice(0, drop)
    track.i.splice(0, drop)
    track.m.splice(0, drop)
    track.b?.splice(0, drop)
  }
  return track
}

export type InsertOutcome = 'applied' | 'duplicate' | 'late'

/**
 * Adds one event to the track, in place: the track belongs to the user's state, which the operator owns (the
 * runtime never looks at a state it handed to the operator again). In (time, id) order it
 * advances `head` directly; out of order it is placed in the buffer and `head` is replayed from
 * `base`. Before the cut it is too late ('late', unchanged).
 */
export function insert(
  funnel: CompiledFunnel, track: Track, time: number, id: string, mask: number, breakdown: string | undefined, limits: TrackLimits, watermark: number,
): InsertOutcome {
  if (track.cutT !== undefined && !precedes(track.cutT, track.cutI!, time, id)) return 'late'
  const count = track.t.length
  let position = count
  if (count > 0 && !precedes(track.t[count - 1]!, track.i[count - 1]!, time, id)) {
    let low = 0
    let high = count
    while (low < high) {
      const middle = (low + high) >> 1
      if (precedes(track.t[middle]!, track.i[middle]!, time, id)) low = middle + 1
      else high = middle
    }
    position = low
    if (track.t[position] === time && track.i[position] === id) return 'duplicate'
  }
  const value = track.b ? breakdown ?? '' : undefined
  if (position === count) {
    track.head = advance(funnel, track.head, time, id, mask, value)
    track.t.push(time)
    track.i.push(id)
    track.m.push(mask)
    track.b?.push(value!)
  } else {
    track.t.splice(position, 0, time)
    track.i.splice(position, 0, id)
    track.m.splice(position, 0, mask)
    track.b?.splice(position, 0, value!)
    track.head = replay(funnel, track)
  }
  trim(funnel, track, limits, watermark)
  return 'applied'
}

/** Removes buffered events by id (sessions that moved or were retracted); the same track when none is buffered. */
export function removeEvents(funnel: CompiledFunnel, track: Track, ids: ReadonlySet<string>): Track {
  const keep: number[] = []
  for (let index = 0; index < track.i.length; index++) if (!ids.has(track.i[index]!)) keep.push(index)
  if (keep.length === track.i.length) return track
  const next = trackOf(
    track, track.base, track.head, keep.map((index) => track.t[index]!), keep.map((index) => track.i[index]!), keep.map((index) => track.m[index]!),
    track.b ? keep.map((index) => track.b![index]!) : undefined, track.cutT, track.cutI,
  )
  next.head = replay(funnel, next)
  return next
}

/** Two match states of different event logs side by side: their attempts together (pruned as usual) and the better best. */
function combine(funnel: CompiledFunnel, a: MatchState, b: MatchState): MatchState {
  const settled: Settled = { best: a.best && b.best ? (better(a.best, b.best) ? a.best : b.best) : a.best ?? b.best }
  const live = [...a.live, ...b.live].sort((x, y) => (precedes(x.s, x.sid, y.s, y.sid) ? -1 : 1))
  const pruned = prune(funnel, settled, live)
  return matchOf(pruned, settled.best)
}

/**
 * Two tracks of one funnel for the same person (an identity merge): the union of their events,
 * replayed. Exact when at most one of them has folded events and the other's events all come
 * after its cut. Otherwise the history before the later cut is combined attempt by attempt (each
 * side's attempts kept, the better best) rather than replayed together (docs/funnels.md, "Identity merges").
 */
export function mergeTracks(funnel: CompiledFunnel, into: Track, from: Track, limits: TrackLimits, watermark: number): Track {
  const cutOf = (track: Track) => (track.cutT === undefined ? undefined : { t: track.cutT, i: track.cutI! })
  const intoCut = cutOf(into)
  const fromCut = cutOf(from)
  let keeper = into
  let other = from
  if (fromCut && (!intoCut || precedes(intoCut.t, intoCut.i, fromCut.t, fromCut.i))) {
    keeper = from
    other = into
  }
  const cut = cutOf(keeper)
  let base = keeper.base
  let otherFrom = 0
  if (cut) {
    // the other's events up to the cut: folded on their side, then the two histories side by side
    let otherBase = other.base
    let folded = other.cutT !== undefined
    while (otherFrom < other.t.length && !precedes(cut.t, cut.i, other.t[otherFrom]!, other.i[otherFrom]!)) {
      otherBase = advance(funnel, otherBase, other.t[otherFrom]!, other.i[otherFrom]!, other.m[otherFrom]!, other.b?.[otherFrom])
      otherFrom++
      folded = true
    }
    if (folded) base = combine(funnel, base, otherBase)
  }
  const t: number[] = []
  const i: string[] = []
  const m: number[] = []
  const b: string[] | undefined = into.b || from.b ? [] : undefined
  const push = (track: Track, index: number) => {
    const time = track.t[index]!
    const id = track.i[index]!
    if (t.length > 0 && t[t.length - 1] === time && i[i.length - 1] === id) return
    t.push(time)
    i.push(id)
    m.push(track.m[index]!)
    b?.push(track.b?.[index] ?? '')
  }
  let x = 0
  let y = otherFrom
  while (x < keeper.t.length || y < other.t.length) {
    if (y >= other.t.length || (x < keeper.t.length && !precedes(other.t[y]!, other.i[y]!, keeper.t[x]!, keeper.i[x]!))) push(keeper, x++)
    else push(other, y++)
  }
  const merged: Track = { v: funnel.version, n: funnel.steps, w: funnel.windowMs, base, head: base, t, i, m }
  if (b) merged.b = b
  if (cut) {
    merged.cutT = cut.t
    merged.cutI = cut.i
  }
  merged.head = replay(funnel, merged)
  return trim(funnel, merged, limits, watermark)
}
