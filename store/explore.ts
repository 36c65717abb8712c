/**
 * Exploration queries over `profiles` (migration 0005), `segments` / `profile_traits` (0006) and
 * `profile_event_series` (0012, what behavioural conditions read): users counted by one dimension
 * under a filter, the users behind a count, saved segments. The gateway (gateway/routes/explore.ts) and bench/explore.ts call these directly.
 *
 * Exported interface
 * - `Database`: anything with pg's `connect()` (a `pg.Pool`). Every read runs in its own
 *   READ ONLY transaction with `SET LOCAL statement_timeout`, so a slow query ends with
 *   `ExploreTimeoutError` and its connection goes back to the pool.
 * - `ExploreContext` `{ project, timezone, timeoutMs? }`: whose profiles, the project's IANA
 *   timezone (behavioural windows count its local days), the statement timeout (default 10 s).
 * - `listDimensions(db, project)` → `Dimension[]`: the built-in ones, then `trait.<name>` for
 *   every trait seen in the project. `listEventNames(db, project)` → the event names behavioural
 *   conditions can match.
 * - `countBy(db, context, { dimension, filter?, limit? })` → `CountResult`: groups in the
 *   dimension's order (engagement Low→High, months ascending, others by count descending),
 *   the total, and the `asOf` behavioural conditions were measured from.
 * - `listUsers(db, context, { filter?, limit?, cursor? })` → `UsersPage`: users by canonical id,
 *   keyset-paged; `nextCursor` is null on the last page.
 * - `streamUsers(db, context, { filter?, cursor?, pageSize? })`: every page in turn (CSV export).
 * - `createSegment`, `listSegments`, `getSegment`, `deleteSegment`: saved filters with their live
 *   size, counted when read.
 * - Pure, for tests and reuse: `compileFilter`, `plannerSettings`, `seriesDriver`, `resolveDimension`, `encodeCursor`, `decodeCursor`,
 *   `BUILT_IN_DIMENSIONS`, `ENGAGEMENT_LEVELS`, the limits `MAX_*`.
 * - Errors: `ExploreInputError` (code SEG_EXPLORE_INVALID: the request is wrong, says how) and
 *   `ExploreTimeoutError` (SEG_EXPLORE_TIMEOUT); connection failures are `DatabaseUnavailableError`.
 *
 * Filter semantics (docs/explore.md): the AND of every condition in `all`; a dimension
 * condition is `equals`, `in` or `range` (both ends inclusive); an event condition counts the
 * named event over the `inLastDays` local days ending on the as-of day; `active` keeps users
 * with an event in [from, to).
 */
import type pg from 'pg'
import { DatabaseUnavailableError, isConnectionError } from './store.ts'

export type Database = Pick<pg.Pool, 'connect'>
type Query = <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => Promise<pg.QueryResult<R>>

export const ENGAGEMENT_LEVELS = ['Low', 'Medium', 'Medium-High', 'High'] as const
export type EngagementLevel = (typeof ENGAGEMENT_LEVELS)[number]

/** Longest behavioural window: profiles keep 90 days of per-day counts. */
export const MAX_WINDOW_DAYS = 90
export const MAX_CONDITIONS = 50
export const MAX_IN_VALUES = 1000
/** Groups a count returns at most (`limit` defaults to 100). */
export const MAX_GROUPS = 1000
export const DEFAULT_GROUPS = 100
/** Users a page holds at most (`limit` defaults to 100). */
export const MAX_PAGE = 1000
export const DEFAULT_PAGE = 100
/** Statement timeout of one query unless the context says otherwise; a context may ask for less, never more than MAX_TIMEOUT_MS. */
export const DEFAULT_TIMEOUT_MS = 10_000
export const MAX_TIMEOUT_MS = 60_000

export type Scalar = string | number | boolean | null

export interface DimensionCondition {
  dimension: string
  equals?: Scalar
  in?: Scalar[]
  /** Both ends inclusive; either may be left out. */
  range?: { from?: Scalar; to?: Scalar }
  /** Keeps the users the condition does not hold for (those without a value included). */
  not?: boolean
}

export interface EventCondition {
  /** An event name as enrich names it: a track's event, `$page`, `$identify`, ... */
  event: string
  /** At least this many times (≥ 1). */
  atLeast: number
  /** Over this many local days (1-90) ending on the as-of day, that day included. */
  inLastDays: number
  not?: boolean
}

export type Condition = DimensionCondition | EventCondition

export interface Filter {
  /** Every condition must hold. */
  all?: Condition[]
  /** Users with at least one event in [from, to) (ISO 8601 times; either end may be left out). */
  active?: { from?: string; to?: string }
  /** Where behavioural windows end (ISO 8601); default the project's newest engagement_as_of. */
  asOf?: string
}

export type DimensionKind = 'level' | 'month' | 'string' | 'number' | 'boolean' | 'json' | 'mixed'

export interface Dimension {
  name: string
  kind: DimensionKind
  description: string
  /** For `level`: every value, in order. */
  values?: string[]
}

export const BUILT_IN_DIMENSIONS: readonly (Dimension & { column: string })[] = [
  { name: 'engagement', column: 'engagement_level', kind: 'level', values: [...ENGAGEMENT_LEVELS], description: 'engagement level as of the profile\'s engagement_as_of (docs/profiles.md)' },
  { name: 'acquisition_month', column: 'acquisition_month', kind: 'month', description: 'YYYY-MM of the first event, in the project\'s timezone' },
  { name: 'acquisition_channel', column: 'acquisition_channel', kind: 'string', description: 'channel of the first event (direct, organic_search, paid_search, social, email, referral, ...)' },
  { name: 'acquisition_source', column: 'acquisition_source', kind: 'string', description: 'UTM source or known referrer of the first event' },
  { name: 'acquisition_medium', column: 'acquisition_medium', kind: 'string', description: 'UTM medium of the first event' },
  { name: 'acquisition_campaign', column: 'acquisition_campaign', kind: 'string', description: 'UTM campaign of the first event' },
  { name: 'country', column: 'country', kind: 'string', description: 'country of the newest event that had one (ISO 3166 code)' },
  { name: 'city', column: 'city', kind: 'string', description: 'city of the newest event that had a country' },
  { name: 'device', column: 'device_type', kind: 'string', description: 'device type of the newest event with a known device (desktop, mobile, tablet, ...)' },
  { name: 'browser', column: 'browser', kind: 'string', description: 'browser of the newest event with a known device' },
  { name: 'os', column: 'os', kind: 'string', description: 'operating system of the newest event with a known device' },
  { name: 'engagement_score', column: 'engagement_score', kind: 'number', description: 'engagement score, 0-100' },
  { name: 'events', column: 'events', kind: 'number', description: 'events of the user, all time' },
  { name: 'sessions', column: 'sessions', kind: 'number', description: 'sessions of the user, all time' },
]
const BUILT_IN_BY_NAME = new Map(BUILT_IN_DIMENSIONS.map((d) => [d.name, d]))
const TRAIT_PREFIX = 'trait.'

/** The request is wrong; the message says what and where. */
export class ExploreInputError extends Error {
  readonly code = 'SEG_EXPLORE_INVALID'
}

/** A query ran past its statement timeout and was cancelled. */
export class ExploreTimeoutError extends Error {
  readonly code = 'SEG_EXPLORE_TIMEOUT'
  readonly timeoutMs: number
  constructor(timeoutMs: number, cause?: unknown) {
    super(`the query ran longer than its statement timeout of ${timeoutMs} ms and was cancelled: narrow the filter, or ask again later`, { cause })
    this.timeoutMs = timeoutMs
  }
}

export interface ExploreContext {
  project: string
  /** IANA timezone of the project: behavioural windows are its local days. */
  timezone: string
  /** Statement timeout of each query, ms. Default 10,000; at most 60,000. */
  timeoutMs?: number
}

// ---------------------------------------------------------------------------------------------
// Dimensions and filters: pure

/** What a dimension name reads: a column, or a trait by name. */
export type ResolvedDimension =
  | { name: string; source: 'column'; column: string; kind: DimensionKind }
  | { name: string; source: 'trait'; trait: string; kind: DimensionKind }

/** Trait names seen in a project, with the kind of their values. */
export type TraitCatalog = ReadonlyMap<string, DimensionKind>

export function resolveDimension(name: unknown, traits: TraitCatalog, where = 'dimension'): ResolvedDimension {
  if (typeof name !== 'string' || name === '') throw new ExploreInputError(`${where}: a dimension name is required`)
  const builtIn = BUILT_IN_BY_NAME.get(name)
  if (builtIn) return { name, source: 'column', column: builtIn.column, kind: builtIn.kind }
  if (name.startsWith(TRAIT_PREFIX)) {
    const trait = name.slice(TRAIT_PREFIX.length)
    const kind = traits.get(trait)
    if (kind) return { name, source: 'trait', trait, kind }
    throw new ExploreInputError(`${where}: unknown dimension "${name}": no profile of this project has the trait "${trait}"`)
  }
  throw new ExploreInputError(`${where}: unknown dimension "${name}": expected one of ${BUILT_IN_DIMENSIONS.map((d) => d.name).join(', ')} or trait.<name> (GET /v1/dimensions lists them)`)
}

/** The kind a trait gets from the JSON types its values had (nulls aside). */
export function traitKind(types: Iterable<string>): DimensionKind {
  const kinds = new Set<string>()
  for (const type of types) if (type !== 'null') kinds.add(type === 'object' || type === 'array' ? 'json' : type)
  if (kinds.size === 0) return 'string'
  return kinds.size === 1 ? ([...kinds][0] as DimensionKind) : 'mixed'
}

const MONTH = /^\d{4}-(0[1-9]|1[0-2])$/
const ISO_TIME = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/

/** Positional parameters shared by every fragment of one statement; $1 is always the project. */
export class Params {
  readonly values: unknown[]
  constructor(project: string) {
    this.values = [project]
  }
  /** A copy to extend without touching this one (a page adds its keyset to a shared filter). */
  clone(): Params {
    const copy = new Params('')
    copy.values.splice(0, 1, ...this.values)
    return copy
  }
  add(value: unknown, cast: string): string {
    this.values.push(value)
    return `$${this.values.length}::${cast}`
  }
}

/** What compiling a filter needs from the database besides the filter. */
export interface CompileInput {
  traits: TraitCatalog
  /** Local date (YYYY-MM-DD) behavioural windows end on; needed only when the filter has event conditions. */
  asOfDay?: string
  /**
   * `seriesDriver` of the filter: the index of the behavioural condition whose rows of
   * profile_event_series the statement reads as `p` (instead of profiles).
   */
  driver?: number
}

function checkValue(dimension: ResolvedDimension, value: unknown, where: string): Scalar {
  if (value === null) return null
  const kind = dimension.kind
  const expected = (what: string) => new ExploreInputError(`${where}: ${dimension.name} takes ${what}, not ${JSON.stringify(value)}`)
  if (dimension.source === 'trait') {
    if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') return value
    throw expected('a string, number, boolean or null')
  }
  if (kind === 'level') {
    if (typeof value === 'string' && (ENGAGEMENT_LEVELS as readonly string[]).includes(value)) return value
    throw expected(`one of ${ENGAGEMENT_LEVELS.join(', ')}`)
  }
  if (kind === 'month') {
    if (typeof value === 'string' && MONTH.test(value)) return value
    throw expected('a month as YYYY-MM')
  }
  if (kind === 'number') {
    if (typeof value === 'number' && Number.isFinite(value)) return value
    throw expected('a number')
  }
  if (typeof value === 'string') return value
  throw expected('a string')
}

/** The SQL expression a dimension reads on profiles `p`: a column, or a trait's JSON value (JSON null as SQL NULL). */
function valueExpression(dimension: ResolvedDimension, params: Params): string {
  if (dimension.source === 'column') return `p.${dimension.column}`
  return `nullif(p.traits -> ${params.add(dimension.trait, 'text')}, 'null'::jsonb)`
}

function isEventCondition(condition: Condition): condition is EventCondition {
  return 'event' in condition
}

function compileDimensionCondition(condition: DimensionCondition, input: CompileInput, params: Params, where: string): string {
  onlyFields(condition, ['dimension', 'equals', 'in', 'range', 'not'], where)
  const dimension = resolveDimension(condition.dimension, input.traits, `${where}.dimension`)
  const given = (['equals', 'in', 'range'] as const).filter((operator) => condition[operator] !== undefined)
  if (given.length !== 1) throw new ExploreInputError(`${where} (${dimension.name}): give exactly one of equals, in or range${given.length ? `, not ${given.join(' and ')}` : ''}`)
  const column = dimension.source === 'column'
  const cast = dimension.kind === 'number' ? 'numeric' : 'text'
  const equalsOne = (value: Scalar): string => {
    if (value === null) return `${valueExpression(dimension, params)} IS NULL`
    // containment: the form a GIN index on traits can serve, and JSON-typed (30 is not "30")
    if (!column) return `p.traits @> ${params.add(JSON.stringify({ [(dimension as { trait: string }).trait]: value }), 'jsonb')}`
    return `${valueExpression(dimension, params)} = ${params.add(value, cast)}`
  }

  if (condition.equals !== undefined) return equalsOne(checkValue(dimension, condition.equals, `${where}.equals`))

  if (condition.in !== undefined) {
    if (!Array.isArray(condition.in) || condition.in.length === 0) throw new ExploreInputError(`${where}.in: a non-empty list of values is required`)
    if (condition.in.length > MAX_IN_VALUES) throw new ExploreInputError(`${where}.in: at most ${MAX_IN_VALUES} values, not ${condition.in.length}`)
    const values = condition.in.map((value, i) => checkValue(dimension, value, `${where}.in[${i}]`))
    const present = values.filter((value) => value !== null)
    const parts: string[] = []
    if (present.length > 0) {
      if (column) parts.push(`${valueExpression(dimension, params)} = ANY(${params.add(present, `${cast}[]`)})`)
      else parts.push(...present.map(equalsOne))
    }
    if (present.length < values.length) parts.push(equalsOne(null))
    return parts.length === 1 ? parts[0]! : `(${parts.join(' OR ')})`
  }

  const range = condition.range
  if (typeof range !== 'object' || range === null || Array.isArray(range)) throw new ExploreInputError(`${where}.range: an object { from?, to? } is required`)
  onlyFields(range, ['from', 'to'], `${where}.range`)
  if (range.from === undefined && range.to === undefined) throw new ExploreInputError(`${where}.range: give from, to or both`)
  if (range.from === null || range.to === null) throw new ExploreInputError(`${where}.range: from and to cannot be null`)
  const kind = dimension.kind
  // a trait of mixed types takes a numeric range: its values of other types are outside it
  if (kind === 'string' || kind === 'boolean' || kind === 'json') {
    throw new ExploreInputError(`${where}.range: ${dimension.name} holds ${kind === 'json' ? 'objects or arrays' : `${kind}s`}; range applies to engagement, months and numbers (use in)`)
  }
  const from = range.from === undefined ? undefined : checkValue(dimension, range.from, `${where}.range.from`)
  const to = range.to === undefined ? undefined : checkValue(dimension, range.to, `${where}.range.to`)
  for (const [end, value] of [['from', from], ['to', to]] as const) {
    if (dimension.source === 'trait' && value !== undefined && typeof value !== 'number') throw new ExploreInputError(`${where}.range.${end}: a range on ${dimension.name} takes numbers, not ${JSON.stringify(value)}`)
  }
  if (kind === 'level') {
    const low = from === undefined ? 0 : ENGAGEMENT_LEVELS.indexOf(from as EngagementLevel)
    const high = to === undefined ? ENGAGEMENT_LEVELS.length - 1 : ENGAGEMENT_LEVELS.indexOf(to as EngagementLevel)
    if (low > high) throw new ExploreInputError(`${where}.range: from (${from}) is above to (${to}); levels go ${ENGAGEMENT_LEVELS.join(' < ')}`)
    // a list of levels: the form the (project, engagement_level, ...) index serves
    return `${valueExpression(dimension, params)} = ANY(${params.add(ENGAGEMENT_LEVELS.slice(low, high + 1), 'text[]')})`
  }
  if (from !== undefined && to !== undefined && (from as string | number) > (to as string | number)) {
    throw new ExploreInputError(`${where}.range: from (${JSON.stringify(from)}) is after to (${JSON.stringify(to)})`)
  }
  let read: string
  let boundCast = cast
  if (dimension.source === 'trait') {
    // numbers only: a string "30" is not in 1..100, and casting it must not fail the query
    const name = params.add(dimension.trait, 'text')
    read = `(CASE WHEN jsonb_typeof(p.traits -> ${name}) = 'number' THEN (p.traits ->> ${name})::numeric END)`
    boundCast = 'numeric'
  } else read = valueExpression(dimension, params)
  const parts: string[] = []
  if (from !== undefined) parts.push(`${read} >= ${params.add(from, boundCast)}`)
  if (to !== undefined) parts.push(`${read} <= ${params.add(to, boundCast)}`)
  return parts.join(' AND ')
}

function compileEventCondition(condition: EventCondition, input: CompileInput, params: Params, where: string, negated = false, drives = false): string {
  onlyFields(condition, ['event', 'atLeast', 'inLastDays', 'not'], where)
  if (typeof condition.event !== 'string' || condition.event === '') throw new ExploreInputError(`${where}.event: an event name is required`)
  if (!Number.isInteger(condition.atLeast) || condition.atLeast < 1) throw new ExploreInputError(`${where}.atLeast: a whole number ≥ 1 is required, not ${JSON.stringify(condition.atLeast)}`)
  if (!Number.isInteger(condition.inLastDays) || condition.inLastDays < 1 || condition.inLastDays > MAX_WINDOW_DAYS) {
    throw new ExploreInputError(`${where}.inLastDays: a whole number of days from 1 to ${MAX_WINDOW_DAYS} is required (profiles keep ${MAX_WINDOW_DAYS} days), not ${JSON.stringify(condition.inLastDays)}`)
  }
  if (!input.asOfDay) return 'false' // no profile has been scored: nobody did anything yet
  const day = params.add(input.asOfDay, 'date')
  const name = params.add(condition.event, 'text')
  const start = `${day} - ${params.add(condition.inLastDays, 'int')}`
  // the user's events of the name in (start, day]: two subscripts of the running total of
  // profile_event_series (migration 0012), a subscript below 1 being NULL (nothing before first_day)
  const qualifies = (s: string) => `${s}.name = ${name} AND ${s}.last_day > ${start} AND ${s}.first_day <= ${day}
      AND coalesce(${s}.cumulative[least(${day}, ${s}.last_day) - ${s}.first_day + 1], 0) - coalesce(${s}.cumulative[${start} - ${s}.first_day + 1], 0) >= ${params.add(condition.atLeast, 'int')}`
  // driving: the statement reads profile_event_series as p, one row per live user who did the event
  if (drives) return qualifies('p')
  // the users who qualify, once: the rows of one name with an event in the window (an index-only
  // scan of profile_event_series_by_name). In canonical_id order (unless negated: then it is a
  // hashed set probed per profile), so it merge-joins with profiles_live_by_id (migration 0010).
  return `p.canonical_id IN (SELECT s.canonical_id FROM profile_event_series s
      WHERE s.project = $1 AND ${qualifies('s')}${negated ? '' : '\n      ORDER BY s.canonical_id'})`
}

/**
 * Profile columns profile_event_series (migration 0012) holds a copy of: a count grouped by one of
 * these, under conditions on these and behavioural conditions only, reads that table alone.
 */
export const SERIES_COLUMNS: readonly string[] = ['engagement_level', 'acquisition_month', 'acquisition_channel', 'country', 'device_type']

/**
 * Which condition of `filter.all` can drive the statement from profile_event_series instead of
 * profiles (its index, or undefined): the first behavioural condition that is not negated, when
 * every dimension condition and `groupBy` read only SERIES_COLUMNS and there is no `active` (which
 * reads first_seen, last_seen and events). The rows of one event name are then the users who did it,
 * each with the grouping columns: no per-user sum, no join with profiles. Same answer either way.
 */
export function seriesDriver(filter: Filter | undefined, groupBy?: ResolvedDimension): number | undefined {
  if (typeof filter !== 'object' || filter === null || Array.isArray(filter) || filter.active !== undefined || !Array.isArray(filter.all)) return undefined
  if (groupBy !== undefined && !(groupBy.source === 'column' && SERIES_COLUMNS.includes(groupBy.column))) return undefined
  let driver: number | undefined
  for (const [i, condition] of filter.all.entries()) {
    if (typeof condition !== 'object' || condition === null) return undefined
    if ((condition as EventCondition).event !== undefined) {
      if (driver === undefined && condition.not !== true && (condition as DimensionCondition).dimension === undefined) driver = i
      continue
    }
    const column = BUILT_IN_BY_NAME.get((condition as DimensionCondition).dimension)?.column
    if (column === undefined || !SERIES_COLUMNS.includes(column)) return undefined
  }
  return driver
}

/**
 * Planner settings for the statement that reads `filter` (SET LOCAL, so for the rest of its
 * transaction). A behavioural condition is a semi-join with the set of users who qualify, and
 * PostgreSQL cannot estimate how many do (a sum of two subscripts >= n is a fixed third of the rows
 * it applies to). It may then probe profiles once per user in a nested loop (0.8 s for 87,000 in
 * make bench-explore) instead of merging the ordered set with profiles_live_by_id; and each
 * parallel worker would read the whole set again. Not when the filter also probes events per user
 * (`active` with both ends): that probe must stay a nested loop over the events index. Nor when a
 * behavioural condition drives the statement (`seriesDriver`): no join with profiles to steer, and
 * the parallel scan of one name's rows halves the time, unless other behavioural conditions are
 * hashed sets each worker would build again ("and not search in 30 days" beside query 5: 416 -> 154 ms).
 */
export function plannerSettings(filter: Filter | undefined, driver?: number): string[] {
  const events = (filter?.all ?? []).filter((condition) => typeof condition === 'object' && condition !== null && isEventCondition(condition))
  // driven with other behavioural conditions: each parallel worker would build their hashed sets again
  if (driver !== undefined) return events.length > 1 ? ['SET LOCAL max_parallel_workers_per_gather = 0'] : []
  const semiJoin = events.some((condition) => condition.not !== true)
  const eventsProbe = filter?.active?.from !== undefined && filter?.active?.to !== undefined
  if (!semiJoin || eventsProbe) return []
  return ['SET LOCAL enable_nestloop = off', 'SET LOCAL max_parallel_workers_per_gather = 0']
}

/** Unknown fields are mistakes (`equal` for `equals`), not something to ignore: the filter would widen. */
function onlyFields(value: object, allowed: readonly string[], where: string): void {
  const unknown = Object.keys(value).find((key) => !allowed.includes(key))
  if (unknown !== undefined) throw new ExploreInputError(`${where}: unknown field "${unknown}"; expected ${allowed.join(', ')}`)
}

/** Is YYYY-MM-DD at the start of `text` a day of the calendar? (Date.parse takes 2019-02-30 for March 2.) */
function realDay(text: string): boolean {
  const [year, month, day] = text.slice(0, 10).split('-').map(Number) as [number, number, number]
  const date = new Date(Date.UTC(year, month - 1, day))
  return date.getUTCFullYear() === year && date.getUTCMonth() === month - 1 && date.getUTCDate() === day
}

function parseTime(value: unknown, where: string): Date {
  const time = typeof value === 'string' && ISO_TIME.test(value) && realDay(value) ? Date.parse(value) : Number.NaN
  if (Number.isNaN(time)) throw new ExploreInputError(`${where}: an ISO 8601 time such as 2019-05-01T00:00:00Z is required, not ${JSON.stringify(value)}`)
  return new Date(time)
}

/** Does the filter need the as-of day (has a behavioural condition)? */
export function needsAsOf(filter: Filter | undefined): boolean {
  return (filter?.all ?? []).some((condition) => typeof condition === 'object' && condition !== null && isEventCondition(condition))
}

/**
 * The WHERE clause (on profiles `p`, after project and merged_into) of a filter; with
 * `input.driver`, on profile_event_series `p` (which holds live profiles only). Throws
 * ExploreInputError naming the first problem, with its place (`filter.all[2].range`).
 */
export function compileFilter(filter: Filter | undefined, input: CompileInput, params: Params, where = 'filter'): string {
  const parts = input.driver === undefined ? [`p.project = $1`, `p.merged_into IS NULL`] : [`p.project = $1`]
  if (filter === undefined || filter === null) return parts.join(' AND ')
  if (typeof filter !== 'object' || Array.isArray(filter)) throw new ExploreInputError(`${where}: an object { all?, active?, asOf? } is required`)
  onlyFields(filter, ['all', 'active', 'asOf'], where)
  const conditions = filter.all ?? []
  if (!Array.isArray(conditions)) throw new ExploreInputError(`${where}.all: a list of conditions is required`)
  if (conditions.length > MAX_CONDITIONS) throw new ExploreInputError(`${where}.all: at most ${MAX_CONDITIONS} conditions, not ${conditions.length}`)
  conditions.forEach((condition, i) => {
    const at = `${where}.all[${i}]`
    if (typeof condition !== 'object' || condition === null || Array.isArray(condition)) throw new ExploreInputError(`${at}: a condition object is required`)
    const hasDimension = (condition as DimensionCondition).dimension !== undefined
    const hasEvent = (condition as EventCondition).event !== undefined
    if (condition.not !== undefined && typeof condition.not !== 'boolean') throw new ExploreInputError(`${at}.not: true or false`)
    if (hasDimension === hasEvent) throw new ExploreInputError(`${at}: a condition has either "dimension" (with equals, in or range) or "event" (with atLeast and inLastDays)`)
    const sql = hasEvent
      ? compileEventCondition(condition as EventCondition, input, params, at, condition.not === true, input.driver === i)
      : compileDimensionCondition(condition as DimensionCondition, input, params, at)
    // IS NOT TRUE: a negation keeps the users without a value, whom the condition does not hold for
    parts.push(condition.not === true ? `(${sql}) IS NOT TRUE` : `(${sql})`)
  })
  if (filter.active !== undefined) {
    const active = filter.active
    if (typeof active !== 'object' || active === null) throw new ExploreInputError(`${where}.active: an object { from?, to? } is required`)
    onlyFields(active, ['from', 'to'], `${where}.active`)
    const from = active.from === undefined ? undefined : parseTime(active.from, `${where}.active.from`)
    const to = active.to === undefined ? undefined : parseTime(active.to, `${where}.active.to`)
    if (from && to && from.getTime() >= to.getTime()) throw new ExploreInputError(`${where}.active: from (${active.from}) must be before to (${active.to}); the range is [from, to)`)
    // first_seen and last_seen bound every event of the user: with one end they decide alone,
    // with both they prune before the index probe of events (project, canonical_id, event_time)
    if (from) parts.push(`p.last_seen >= ${params.add(from, 'timestamptz')}`)
    if (to) parts.push(`p.first_seen < ${params.add(to, 'timestamptz')}`)
    if (from && to) {
      parts.push(`EXISTS (SELECT 1 FROM events e WHERE e.project = $1 AND e.canonical_id = p.canonical_id
        AND e.event_time >= ${params.add(from, 'timestamptz')} AND e.event_time < ${params.add(to, 'timestamptz')})`)
    }
  }
  if (filter.asOf !== undefined) parseTime(filter.asOf, `${where}.asOf`)
  return parts.join('\n    AND ')
}

/** Order of a count's groups: engagement levels in order, months ascending, the rest by count. */
export function groupOrder(dimension: ResolvedDimension): string {
  if (dimension.kind === 'level') return `array_position(ARRAY['${ENGAGEMENT_LEVELS.join("','")}']::text[], value) ASC NULLS LAST`
  if (dimension.kind === 'month') return 'value ASC NULLS LAST'
  return 'count DESC, value ASC NULLS LAST'
}

// ---------------------------------------------------------------------------------------------
// Cursors: the last canonical id of a page, opaque to clients

export function encodeCursor(canonicalId: string): string {
  return Buffer.from(JSON.stringify({ after: canonicalId }), 'utf8').toString('base64url')
}

export function decodeCursor(cursor: string): string {
  try {
    const decoded = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as { after?: unknown }
    if (typeof decoded?.after === 'string') return decoded.after
  } catch {
    // reported below
  }
  throw new ExploreInputError('cursor: malformed; pass back the nextCursor of the previous page unchanged')
}

// ---------------------------------------------------------------------------------------------
// Running queries

/**
 * Runs `work` in a transaction with `SET LOCAL statement_timeout`: a slow statement is cancelled
 * by the server (ExploreTimeoutError) and the connection goes back to the pool, never left hanging.
 */
async function transaction<T>(db: Database, timeoutMs: number, mode: 'read' | 'write', work: (query: Query) => Promise<T>): Promise<T> {
  let client: pg.PoolClient
  try {
    client = await db.connect()
  } catch (error) {
    throw isConnectionError(error) ? new DatabaseUnavailableError(error) : error
  }
  let broken: Error | undefined
  try {
    await client.query(mode === 'read' ? 'BEGIN READ ONLY' : 'BEGIN')
    await client.query(`SET LOCAL statement_timeout = ${timeoutMs}`)
    const result = await work(client.query.bind(client) as Query)
    await client.query('COMMIT')
    return result
  } catch (error) {
    await client.query('ROLLBACK').catch((rollbackError: Error) => (broken = rollbackError))
    // 57014 query_canceled: what statement_timeout raises
    if ((error as { code?: string }).code === '57014') throw new ExploreTimeoutError(timeoutMs, error)
    if (isConnectionError(error)) {
      broken = error as Error
      throw new DatabaseUnavailableError(error)
    }
    throw error
  } finally {
    // a connection that failed is destroyed rather than handed to the next query
    client.release(broken)
  }
}

const readOnly = <T>(db: Database, timeoutMs: number, work: (query: Query) => Promise<T>) => transaction(db, timeoutMs, 'read', work)

function timeoutOf(context: ExploreContext): number {
  const wanted = context.timeoutMs ?? DEFAULT_TIMEOUT_MS
  if (!Number.isInteger(wanted) || wanted < 1) throw new ExploreInputError(`timeoutMs: a whole number of milliseconds ≥ 1 is required, not ${JSON.stringify(wanted)}`)
  return Math.min(wanted, MAX_TIMEOUT_MS)
}

async function traitCatalog(query: Query, project: string): Promise<Map<string, DimensionKind>> {
  const rows = (await query<{ name: string; types: string[] }>(
    'SELECT name, array_agg(type) AS types FROM profile_traits WHERE project = $1 GROUP BY name ORDER BY name', [project])).rows
  return new Map(rows.map((row) => [row.name, traitKind(row.types)]))
}

/** The as-of time behavioural windows end at, and its local day; undefined when no profile is scored. */
async function resolveAsOf(query: Query, context: ExploreContext, filter: Filter | undefined): Promise<{ asOf: Date; asOfDay: string } | undefined> {
  if (filter?.asOf !== undefined) {
    const asOf = parseTime(filter.asOf, 'filter.asOf')
    const day = (await query<{ day: string }>(`SELECT to_char($1::timestamptz AT TIME ZONE $2::text, 'YYYY-MM-DD') AS day`, [asOf, context.timezone])).rows[0]!.day
    return { asOf, asOfDay: day }
  }
  // the newest engagement_as_of is the project's watermark as the profile step saw it: a 2019
  // import counts back from 2019, not from today
  const row = (await query<{ as_of: Date | null; day: string | null }>(
    `SELECT as_of, to_char(as_of AT TIME ZONE $2::text, 'YYYY-MM-DD') AS day
       FROM (SELECT max(engagement_as_of) AS as_of FROM profiles WHERE project = $1) m`, [context.project, context.timezone])).rows[0]
  return row?.as_of && row.day ? { asOf: row.as_of, asOfDay: row.day } : undefined
}

interface Prepared {
  where: string
  params: Params
  asOf?: Date
  /** plannerSettings of the filter: run before the statement that reads `where`. */
  settings?: string[]
  /** What `where` reads as `p`: `profiles p`, or `profile_event_series p` when a condition drives (`seriesDriver`). */
  from?: string
}

/** `driver`: `seriesDriver` of the filter, for a statement that reads only the columns profile_event_series copies. */
async function prepare(query: Query, context: ExploreContext, filter: Filter | undefined, traits?: TraitCatalog, driver?: number): Promise<Prepared & { traits: TraitCatalog }> {
  const catalog = traits ?? (await traitCatalog(query, context.project))
  const resolved = needsAsOf(filter) ? await resolveAsOf(query, context, filter) : undefined
  const params = new Params(context.project)
  const where = compileFilter(filter, { traits: catalog, asOfDay: resolved?.asOfDay, driver }, params)
  return {
    where, params, asOf: resolved?.asOf, traits: catalog, settings: plannerSettings(filter, driver),
    from: driver === undefined ? 'profiles p' : 'profile_event_series p',
  }
}

export async function listDimensions(db: Database, project: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Dimension[]> {
  return readOnly(db, timeoutOf({ project, timezone: 'UTC', timeoutMs }), async (query) => {
    const traits = await traitCatalog(query, project)
    return [
      ...BUILT_IN_DIMENSIONS.map(({ column: _column, ...dimension }) => dimension),
      ...[...traits].map(([name, kind]) => ({ name: `${TRAIT_PREFIX}${name}`, kind, description: `the trait "${name}" (identify / $set), as JSON` })),
    ]
  })
}

/** Event names behavioural conditions can use. */
export const MAX_EVENT_NAMES = 1000

/**
 * The event names in the project's per-day counts (what behavioural conditions can match),
 * ascending, at most `MAX_EVENT_NAMES`. A skip scan: one probe of (project, name, day) per
 * name, however many rows each has.
 */
export async function listEventNames(db: Database, project: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<string[]> {
  return readOnly(db, timeoutOf({ project, timezone: 'UTC', timeoutMs }), async (query) => {
    const rows = (await query<{ name: string }>(
      `WITH RECURSIVE names AS (
         (SELECT name FROM profile_event_days WHERE project = $1 ORDER BY name LIMIT 1)
         UNION ALL
         SELECT (SELECT d.name FROM profile_event_days d WHERE d.project = $1 AND d.name > n.name ORDER BY d.name LIMIT 1)
           FROM names n WHERE n.name IS NOT NULL
       )
       SELECT name FROM names WHERE name IS NOT NULL LIMIT $2`, [project, MAX_EVENT_NAMES])).rows
    return rows.map((row) => row.name)
  })
}

export interface CountRequest {
  dimension: string
  filter?: Filter
  /** Groups to return, 1-1000; default 100. */
  limit?: number
}

export interface CountResult {
  dimension: string
  kind: DimensionKind
  /** Users matching the filter, in every group (returned or not). */
  total: number
  /** Groups there are; more than `groups.length` when `limit` cut them. */
  groupCount: number
  /** Each value with its users; `value: null` holds the users without one. Engagement lists all four levels. */
  groups: { value: Scalar | Record<string, unknown> | unknown[]; count: number }[]
  /** Where behavioural windows ended (ISO 8601), when the filter had any. */
  asOf?: string
}

function pageLimit(limit: number | undefined, fallback: number, max: number, what: string): number {
  const value = limit ?? fallback
  if (!Number.isInteger(value) || value < 1 || value > max) throw new ExploreInputError(`limit: ${what} from 1 to ${max}, not ${JSON.stringify(value)}`)
  return value
}

/** Users matching `filter`, counted by the value of one dimension. */
export async function countBy(db: Database, context: ExploreContext, request: CountRequest): Promise<CountResult> {
  const limit = pageLimit(request.limit, DEFAULT_GROUPS, MAX_GROUPS, 'a number of groups')
  return readOnly(db, timeoutOf(context), async (query) => {
    const traits = await traitCatalog(query, context.project)
    const dimension = resolveDimension(request.dimension, traits)
    const prepared = await prepare(query, context, request.filter, traits, seriesDriver(request.filter, dimension))
    const { params } = prepared
    const value = valueExpression(dimension, params)
    for (const setting of prepared.settings ?? []) await query(setting)
    const rows = (await query<{ value: unknown; count: string; total: string; groups: string }>(
      `SELECT value, count, sum(count) OVER () AS total, count(*) OVER () AS groups
         FROM (SELECT ${value} AS value, count(*) AS count FROM ${prepared.from}
                WHERE ${prepared.where}
                GROUP BY 1) g
        ORDER BY ${groupOrder(dimension)}
        LIMIT ${params.add(limit, 'int')}`, params.values)).rows
    let groups = rows.map((row) => ({ value: normalizeValue(row.value, dimension), count: Number(row.count) }))
    let groupCount = Number(rows[0]?.groups ?? 0)
    if (dimension.kind === 'level' && dimension.source === 'column') {
      // every level, so a chart has its four bars even where one is empty
      const counted = new Map(groups.map((group) => [group.value, group.count]))
      const unscored = counted.get(null)
      groups = [...ENGAGEMENT_LEVELS.map((level) => ({ value: level as Scalar, count: counted.get(level) ?? 0 })), ...(unscored ? [{ value: null, count: unscored }] : [])]
      groupCount = groups.length
    }
    return {
      dimension: dimension.name, kind: dimension.kind, total: Number(rows[0]?.total ?? 0), groupCount, groups,
      ...(prepared.asOf ? { asOf: prepared.asOf.toISOString() } : {}),
    }
  })
}

function normalizeValue(value: unknown, dimension: ResolvedDimension): CountResult['groups'][number]['value'] {
  if (value === null || value === undefined) return null
  // numeric columns come back as strings from pg (bigint / numeric); these are integers
  if (dimension.source === 'column' && dimension.kind === 'number') return Number(value)
  return value as CountResult['groups'][number]['value']
}

/** One user as listed: the profile's fields, times as ISO 8601. */
export interface UserRow {
  canonicalId: string
  firstSeen: string | null
  lastSeen: string | null
  acquisitionMonth: string | null
  acquisitionChannel: string | null
  acquisitionSource: string | null
  acquisitionMedium: string | null
  acquisitionCampaign: string | null
  device: string | null
  browser: string | null
  os: string | null
  country: string | null
  city: string | null
  events: number
  sessions: number
  engagement: string | null
  engagementScore: number | null
  engagementAsOf: string | null
  traits: Record<string, unknown>
}

/** Columns of a listed user, in the order CSV writes them. */
export const USER_FIELDS: readonly (keyof UserRow)[] = [
  'canonicalId', 'firstSeen', 'lastSeen', 'acquisitionMonth', 'acquisitionChannel', 'acquisitionSource', 'acquisitionMedium',
  'acquisitionCampaign', 'device', 'browser', 'os', 'country', 'city', 'events', 'sessions', 'engagement', 'engagementScore',
  'engagementAsOf', 'traits',
]

const USER_COLUMNS = `p.canonical_id, p.first_seen, p.last_seen, p.acquisition_month, p.acquisition_channel, p.acquisition_source,
  p.acquisition_medium, p.acquisition_campaign, p.device_type, p.browser, p.os, p.country, p.city, p.events, p.sessions,
  p.engagement_level, p.engagement_score, p.engagement_as_of, p.traits`

function toUserRow(row: Record<string, unknown>): UserRow {
  const time = (value: unknown) => (value instanceof Date ? value.toISOString() : null)
  return {
    canonicalId: row.canonical_id as string,
    firstSeen: time(row.first_seen),
    lastSeen: time(row.last_seen),
    acquisitionMonth: row.acquisition_month as string | null,
    acquisitionChannel: row.acquisition_channel as string | null,
    acquisitionSource: row.acquisition_source as string | null,
    acquisitionMedium: row.acquisition_medium as string | null,
    acquisitionCampaign: row.acquisition_campaign as string | null,
    device: row.device_type as string | null,
    browser: row.browser as string | null,
    os: row.os as string | null,
    country: row.country as string | null,
    city: row.city as string | null,
    events: row.events as number,
    sessions: row.sessions as number,
    engagement: row.engagement_level as string | null,
    engagementScore: row.engagement_score as number | null,
    engagementAsOf: time(row.engagement_as_of),
    traits: row.traits as Record<string, unknown>,
  }
}

export interface UsersRequest {
  filter?: Filter
  /** Users per page, 1-1000; default 100. */
  limit?: number
  /** `nextCursor` of the previous page. */
  cursor?: string
}

export interface UsersPage {
  users: UserRow[]
  /** Pass it back as `cursor` for the next page; null on the last page. */
  nextCursor: string | null
  asOf?: string
}

async function page(query: Query, prepared: Prepared, after: string | undefined, limit: number): Promise<{ users: UserRow[]; more: boolean }> {
  const params = prepared.params.clone()
  const keyset = after === undefined ? '' : `\n    AND p.canonical_id > ${params.add(after, 'text')}`
  for (const setting of prepared.settings ?? []) await query(setting)
  // keyset on the primary key (project, canonical_id): every page is an index range, however deep
  const rows = (await query<Record<string, unknown>>(
    `SELECT ${USER_COLUMNS} FROM profiles p
      WHERE ${prepared.where}${keyset}
      ORDER BY p.canonical_id
      LIMIT ${params.add(limit + 1, 'int')}`, params.values)).rows
  return { users: rows.slice(0, limit).map(toUserRow), more: rows.length > limit }
}

/** One page of the users matching `filter`, by canonical id. */
export async function listUsers(db: Database, context: ExploreContext, request: UsersRequest = {}): Promise<UsersPage> {
  const limit = pageLimit(request.limit, DEFAULT_PAGE, MAX_PAGE, 'a number of users')
  const after = request.cursor === undefined ? undefined : decodeCursor(request.cursor)
  return readOnly(db, timeoutOf(context), async (query) => {
    const prepared = await prepare(query, context, request.filter)
    const { users, more } = await page(query, prepared, after, limit)
    return {
      users, nextCursor: more ? encodeCursor(users[users.length - 1]!.canonicalId) : null,
      ...(prepared.asOf ? { asOf: prepared.asOf.toISOString() } : {}),
    }
  })
}

/**
 * Every user matching `filter`, a page at a time, each page its own short transaction (so a
 * long export holds no connection between pages, and no statement runs past the timeout).
 * The filter is checked and the first page read before the first yield: a mistake or a timeout
 * surfaces before anything was sent.
 */
export async function streamUsers(db: Database, context: ExploreContext, request: { filter?: Filter; cursor?: string; pageSize?: number } = {}): Promise<AsyncGenerator<UserRow[]>> {
  const pageSize = pageLimit(request.pageSize, 5_000, 10_000, 'a page size')
  let after = request.cursor === undefined ? undefined : decodeCursor(request.cursor)
  const timeoutMs = timeoutOf(context)
  // the as-of day and the catalogue are fixed at the start, so every page answers the same question
  const prepared = await readOnly(db, timeoutMs, (query) => prepare(query, context, request.filter))
  let next: { users: UserRow[]; more: boolean } | undefined = await readOnly(db, timeoutMs, (query) => page(query, prepared, after, pageSize))
  return (async function* () {
    while (next) {
      const current: { users: UserRow[]; more: boolean } = next
      if (current.users.length > 0) yield current.users
      if (!current.more) return
      after = current.users[current.users.length - 1]!.canonicalId
      next = await readOnly(db, timeoutMs, (query) => page(query, prepared, after, pageSize))
    }
  })()
}

// ---------------------------------------------------------------------------------------------
// Saved segments

export interface Segment {
  id: string
  name: string
  filter: Filter
  /** Version of the control message that published this definition. */
  version: number
  createdAt: string
}

export interface SegmentWithSize extends Segment {
  /** Users matching the filter now, counted when read (not kept). */
  size: number
  asOf?: string
}

/** Saved segments a project may have. */
export const MAX_SEGMENTS = 200

function toSegment(row: Record<string, unknown>): Segment {
  return { id: row.id as string, name: row.name as string, filter: row.filter as Filter, version: row.version as number, createdAt: (row.created_at as Date).toISOString() }
}

/**
 * Checks and stores a segment. `publish` runs inside the storing transaction, after the row
 * is written: when it throws, nothing is stored.
 */
export async function createSegment(db: Database, context: ExploreContext, segment: { id: string; name: string; filter: Filter }, publish: (segment: Segment) => Promise<void> = async () => {}): Promise<SegmentWithSize> {
  if (typeof segment.name !== 'string' || segment.name.trim() === '') throw new ExploreInputError('name: a segment needs a name')
  const timeoutMs = timeoutOf(context)
  // checked now, so a stored segment always compiles
  await readOnly(db, timeoutMs, (query) => prepare(query, context, segment.filter))
  const stored = await transaction(db, timeoutMs, 'write', async (query) => {
    // one creation at a time per project, so the limit holds
    await query('SELECT pg_advisory_xact_lock(7423006, hashtext($1))', [context.project])
    const existing = Number((await query<{ n: string }>('SELECT count(*) AS n FROM segments WHERE project = $1', [context.project])).rows[0]!.n)
    if (existing >= MAX_SEGMENTS) throw new ExploreInputError(`this project has ${existing} segments, the most it may have: delete one first`)
    const row = (await query<Record<string, unknown>>(
      'INSERT INTO segments (project, id, name, filter, version) VALUES ($1, $2, $3, $4::jsonb, 1) RETURNING *',
      [context.project, segment.id, segment.name, JSON.stringify(segment.filter ?? {})])).rows[0]!
    const created = toSegment(row)
    await publish(created)
    return created
  })
  return (await getSegment(db, context, stored.id))!
}

/** Every saved segment with its live size: one pass over the project's profiles for all of them, but behavioural segments `seriesDriver` takes (one count each). */
export async function listSegments(db: Database, context: ExploreContext): Promise<SegmentWithSize[]> {
  return readOnly(db, timeoutOf(context), async (query) => {
    const segments = (await query<Record<string, unknown>>('SELECT * FROM segments WHERE project = $1 ORDER BY created_at, id', [context.project])).rows.map(toSegment)
    return sizes(query, context, segments)
  })
}

export async function getSegment(db: Database, context: ExploreContext, id: string): Promise<SegmentWithSize | undefined> {
  return readOnly(db, timeoutOf(context), async (query) => {
    const row = (await query<Record<string, unknown>>('SELECT * FROM segments WHERE project = $1 AND id = $2', [context.project, id])).rows[0]
    return row ? (await sizes(query, context, [toSegment(row)]))[0] : undefined
  })
}

async function sizes(query: Query, context: ExploreContext, segments: Segment[]): Promise<SegmentWithSize[]> {
  if (segments.length === 0) return []
  const traits = await traitCatalog(query, context.project)
  const shared = segments.some((segment) => needsAsOf(segment.filter) && segment.filter.asOf === undefined)
    ? await resolveAsOf(query, context, undefined)
    : undefined
  const params = new Params(context.project)
  const counts: string[] = []
  const asOfs: (Date | undefined)[] = []
  const sized = new Map<number, number>()
  for (const [i, segment] of segments.entries()) {
    // a segment with its own asOf is measured from it; the others share the project's
    const resolved = !needsAsOf(segment.filter) ? undefined : segment.filter.asOf === undefined ? shared : await resolveAsOf(query, context, segment.filter)
    asOfs.push(resolved?.asOf)
    const driver = seriesDriver(segment.filter)
    if (driver === undefined) {
      counts.push(`count(*) FILTER (WHERE ${compileFilter(segment.filter, { traits, asOfDay: resolved?.asOfDay }, params)}) AS s${i}`)
      continue
    }
    // a behavioural segment on the copied columns alone: counted on the rows of its event name
    const own = new Params(context.project)
    const where = compileFilter(segment.filter, { traits, asOfDay: resolved?.asOfDay, driver }, own)
    sized.set(i, Number((await query<{ n: string }>(`SELECT count(*) AS n FROM profile_event_series p WHERE ${where}`, own.values)).rows[0]!.n))
  }
  if (counts.length > 0) {
    const row = (await query<Record<string, string>>(
      `SELECT ${counts.join(',\n  ')} FROM profiles p WHERE p.project = $1 AND p.merged_into IS NULL`, params.values)).rows[0]!
    for (const [key, value] of Object.entries(row)) sized.set(Number(key.slice(1)), Number(value ?? 0))
  }
  return segments.map((segment, i) => ({
    ...segment, size: sized.get(i) ?? 0,
    ...(asOfs[i] ? { asOf: asOfs[i]!.toISOString() } : {}),
  }))
}

/**
 * Deletes a segment; `publish` runs inside the deleting transaction with the version the
 * deletion gets (the stored one + 1). Returns the deleted segment, or undefined when none.
 */
export async function deleteSegment(db: Database, context: ExploreContext, id: string, publish: (segment: Segment) => Promise<void> = async () => {}): Promise<Segment | undefined> {
  return transaction(db, timeoutOf(context), 'write', async (query) => {
    const row = (await query<Record<string, unknown>>('DELETE FROM segments WHERE project = $1 AND id = $2 RETURNING *', [context.project, id])).rows[0]
    if (!row) return undefined
    const deleted = toSegment(row)
    await publish({ ...deleted, version: deleted.version + 1 })
    return deleted
  })
}

// ---------------------------------------------------------------------------------------------
// For other queries over profiles (store/funnels.ts): the same filter, transactions and user rows

export type { Query, Prepared }
export { transaction, prepare, traitCatalog, timeoutOf, pageLimit, parseTime, toUserRow, USER_COLUMNS }
