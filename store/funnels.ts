/**
 * Funnel definitions (table `funnels`) and what the funnel step made of them (table
 * `funnel_progress`, migration 0008), read the way docs/funnels.md ("API") describes.
 * gateway/routes/funnels.ts calls these.
 *
 * Exported interface
 * - Definitions: `createFunnel`, `replaceFunnel`, `deleteFunnel` (each runs its `publish` inside
 *   the writing transaction: when publishing fails nothing is stored), `listFunnels`, `getFunnel`.
 * - Reads over progress, each one statement in a READ ONLY transaction with a statement timeout
 *   (store/explore.ts's): `funnelResult` (per step: reached, conversion, drop-off, in progress /
 *   dropped, times to convert; optionally per breakdown value), `funnelResultWithAllUsers` (the
 *   same, plus the per-step counts of all the funnel's users, for the live view of a restricted funnel), `funnelTrends` (conversion by
 *   local day or week of the first step), `funnelAudience` / `streamFunnelAudience` (the users at
 *   exactly one level, keyset-paged, with their profile).
 * - Pure: `segmentToFilter` (a funnel's profile conditions as an exploration filter), `stepsOf`
 *   (per-step numbers from per-level counts). Errors: `FunnelNotFoundError`, `FunnelExistsError`; mistakes are
 *   `ExploreInputError`, timeouts `ExploreTimeoutError` (store/explore.ts).
 *
 * Who counts: rows of the funnel's current version with status other than `none` and no
 * `merged_into`, joined to the user's live profile (`profiles.merged_into IS NULL`) and, when the
 * funnel has a `segment`, to the users it selects, compiled by the exploration filter code.
 */
import { isDeepStrictEqual } from 'node:util'
import type { FunnelDefinition, FunnelSegment, FunnelStatus, ProfileCondition } from '../schemas/funnel.ts'
import {
  decodeCursor, encodeCursor, ExploreInputError, pageLimit, parseTime, prepare, timeoutOf, toUserRow, traitCatalog, transaction, USER_COLUMNS,
  DEFAULT_PAGE, MAX_PAGE, Params,
  type Condition, type Database, type ExploreContext, type Filter, type Query, type TraitCatalog, type UserRow,
} from './explore.ts'

/** The funnel is not there (never created, deleted, or another project's). */
export class FunnelNotFoundError extends Error {
  readonly code = 'SEG_FUNNEL_NOT_FOUND'
  constructor(id: string) {
    super(`no funnel "${id}" in this project`)
  }
}

/** A funnel with this id exists already. */
export class FunnelExistsError extends Error {
  readonly code = 'SEG_FUNNEL_EXISTS'
  constructor(id: string) {
    super(`a funnel "${id}" exists already in this project: change it with PUT /v1/funnels/${id}, or delete it first`)
  }
}

/** Funnels a project may have at once: each one is state per user in the funnel step. */
export const MAX_FUNNELS = 100
/** Buckets a trend answers at most. */
export const MAX_TREND_BUCKETS = 1000

export interface Backfill {
  state: 'pending' | 'running' | 'done' | 'failed'
  done: number
  total: number
  error?: string
}

/** What a created or changed funnel's backfill starts as: the backfill worker picks it up. */
export const PENDING_BACKFILL: Backfill = Object.freeze({ state: 'pending', done: 0, total: 0 }) as Backfill

export interface StoredFunnel {
  id: string
  name: string
  /** Version of the control message that carried this definition to the funnel step. */
  version: number
  definition: FunnelDefinition
  createdAt: string
  updatedAt: string
  /** Progress of the backfill over history for this version; null when none was asked for. */
  backfill: Backfill | null
}

function toFunnel(row: Record<string, unknown>): StoredFunnel {
  return {
    id: row.id as string, name: row.name as string, version: row.version as number, definition: row.definition as FunnelDefinition,
    createdAt: (row.created_at as Date).toISOString(), updatedAt: (row.updated_at as Date).toISOString(),
    backfill: (row.backfill as Backfill | null) ?? null,
  }
}

// ---------------------------------------------------------------------------------------------
// The segment restriction: the exploration filter code, fed the funnel's conditions

/**
 * A funnel's profile conditions as an exploration filter (docs/explore.md), with where each
 * filter condition came from (`places[i]` = the index in `profile` of `filter.all[i]`):
 * `eq` is `equals`, `neq` `equals` + `not` (users without the value included, as the funnel's
 * `neq` is), `in` is `in`, `gte` / `lte` a range end, `gt` / `lt` a range end and not that
 * value, `is_set` not `equals null`. `contains` has no counterpart over profiles.
 */
export function segmentToFilter(conditions: readonly ProfileCondition[]): { filter: Filter; places: number[] } {
  const all: Condition[] = []
  const places: number[] = []
  conditions.forEach((condition, index) => {
    const dimension = condition.field
    const value = condition.value as string | number | boolean | null
    const push = (...made: Condition[]) => made.forEach((c) => { all.push(c); places.push(index) })
    switch (condition.operator ?? 'eq') {
      case 'eq': push({ dimension, equals: value }); break
      case 'neq': push({ dimension, equals: value, not: true }); break
      case 'in': push({ dimension, in: condition.value as (string | number | boolean | null)[] }); break
      case 'gte': push({ dimension, range: { from: value } }); break
      case 'lte': push({ dimension, range: { to: value } }); break
      case 'gt': push({ dimension, range: { from: value } }, { dimension, equals: value, not: true }); break
      case 'lt': push({ dimension, range: { to: value } }, { dimension, equals: value, not: true }); break
      case 'is_set': push({ dimension, equals: null, not: true }); break
      case 'contains':
        throw new ExploreInputError(`segment/profile/${index}: contains is not available on profile fields; use eq or in`)
    }
  })
  return { filter: { all }, places }
}

/** The filter a funnel's segment stands for, and how to name the place of a mistake in it. */
async function segmentFilter(query: Query, project: string, segment: FunnelSegment | undefined): Promise<{ filter?: Filter; rename: (message: string) => string }> {
  if (!segment) return { rename: (message) => message }
  if ('segmentId' in segment) {
    const row = (await query<{ filter: Filter }>('SELECT filter FROM segments WHERE project = $1 AND id = $2', [project, segment.segmentId])).rows[0]
    if (!row) throw new ExploreInputError(`segment/segmentId: no saved segment "${segment.segmentId}" in this project (GET /v1/segments lists them)`)
    return { filter: row.filter, rename: (message) => `segment (saved segment "${segment.segmentId}"): ${message}` }
  }
  const { filter, places } = segmentToFilter(segment.profile)
  return {
    filter,
    rename: (message) => message.replace(/^filter\.all\[(\d+)\]/, (_, i: string) => `segment/profile/${places[Number(i)]}`),
  }
}

/**
 * The trait catalogue, plus the traits the filter names that no profile has had yet (as `mixed`):
 * a funnel may be defined before the trait arrives; until then its condition matches nobody.
 */
async function catalogFor(query: Query, project: string, filter: Filter | undefined): Promise<TraitCatalog> {
  if (!filter) return new Map()
  const catalog = await traitCatalog(query, project)
  for (const condition of filter.all ?? []) {
    const dimension = (condition as { dimension?: unknown }).dimension
    if (typeof dimension === 'string' && dimension.startsWith('trait.') && !catalog.has(dimension.slice(6))) catalog.set(dimension.slice(6), 'mixed')
  }
  return catalog
}

/** The rows a funnel counts, as FROM + WHERE over `funnel_progress fp` joined to `profiles p`. */
interface Scope {
  where: string
  params: Params
  /** The funnel's rows of all its users (no segment, no time range), over `funnel_progress fp` alone: what funnel-counts counts. */
  allUsersWhere: string
  /** Where the segment's behavioural conditions ended, when it has any. */
  asOf?: Date
}

export interface TimeRange {
  /** First step at or after this time (ISO 8601). */
  from?: string
  /** First step before this time (ISO 8601). */
  to?: string
}

function checkRange(range: TimeRange): { from?: Date; to?: Date } {
  const from = range.from === undefined ? undefined : parseTime(range.from, 'from')
  const to = range.to === undefined ? undefined : parseTime(range.to, 'to')
  if (from && to && from.getTime() >= to.getTime()) throw new ExploreInputError(`from (${range.from}) must be before to (${range.to}); the range [from, to) is of the first step's time`)
  return { from, to }
}

async function scope(query: Query, context: ExploreContext, funnel: StoredFunnel, range: TimeRange): Promise<Scope> {
  const checked = checkRange(range)
  const segment = await segmentFilter(query, context.project, funnel.definition.segment)
  let prepared: Awaited<ReturnType<typeof prepare>>
  try {
    prepared = await prepare(query, context, segment.filter, await catalogFor(query, context.project, segment.filter))
  } catch (error) {
    if (error instanceof ExploreInputError) throw new ExploreInputError(segment.rename(error.message))
    throw error
  }
  const { params } = prepared
  const progress = [
    'fp.project = $1', `fp.funnel_id = ${params.add(funnel.id, 'text')}`, `fp.funnel_version = ${params.add(funnel.version, 'int')}`,
    `fp.status <> 'none'`, 'fp.merged_into IS NULL', 'fp.level >= 1',
  ]
  const parts = [...progress, prepared.where]
  if (checked.from) parts.push(`fp.step_times[1] >= ${params.add(checked.from, 'timestamptz')}`)
  if (checked.to) parts.push(`fp.step_times[1] < ${params.add(checked.to, 'timestamptz')}`)
  return { where: parts.join('\n    AND '), allUsersWhere: progress.join('\n    AND '), params, asOf: prepared.asOf }
}

const FROM = 'funnel_progress fp JOIN profiles p ON p.project = fp.project AND p.canonical_id = fp.canonical_id'

// ---------------------------------------------------------------------------------------------
// Definitions

const read = <T>(db: Database, context: ExploreContext, work: (query: Query) => Promise<T>) => transaction(db, timeoutOf(context), 'read', work)
const write = <T>(db: Database, context: ExploreContext, work: (query: Query) => Promise<T>) => transaction(db, timeoutOf(context), 'write', work)

/** Checks what the definition's segment names (the saved segment exists, the conditions compile). */
async function checkSegment(query: Query, context: ExploreContext, definition: FunnelDefinition): Promise<void> {
  const segment = await segmentFilter(query, context.project, definition.segment)
  try {
    await prepare(query, context, segment.filter, await catalogFor(query, context.project, segment.filter))
  } catch (error) {
    if (error instanceof ExploreInputError) throw new ExploreInputError(segment.rename(error.message))
    throw error
  }
}

/**
 * Stores a new funnel at version 1 (or, for the id of a deleted funnel, the version after the
 * deletion's, so a control message's version never goes back), with a pending backfill.
 * `publish` runs inside the transaction, after the row is written.
 */
export async function createFunnel(db: Database, context: ExploreContext, definition: FunnelDefinition, publish: (funnel: StoredFunnel) => Promise<void>): Promise<StoredFunnel> {
  await read(db, context, (query) => checkSegment(query, context, definition))
  return write(db, context, async (query) => {
    // one creation at a time per project, so the limit holds
    await query('SELECT pg_advisory_xact_lock(7423008, hashtext($1))', [context.project])
    const existing = Number((await query<{ n: string }>('SELECT count(*) AS n FROM funnels WHERE project = $1 AND deleted_at IS NULL', [context.project])).rows[0]!.n)
    if (existing >= MAX_FUNNELS) throw new ExploreInputError(`this project has ${existing} funnels, the most it may have: delete one first`)
    const row = (await query<Record<string, unknown>>(
      `INSERT INTO funnels (project, id, name, definition, version, backfill) VALUES ($1, $2, $3, $4::jsonb, 1, $5::jsonb)
       ON CONFLICT (project, id) DO UPDATE
         SET name = EXCLUDED.name, definition = EXCLUDED.definition, version = funnels.version + 1, backfill = EXCLUDED.backfill,
             created_at = now(), updated_at = now(), deleted_at = NULL
         WHERE funnels.deleted_at IS NOT NULL
       RETURNING *`,
      [context.project, definition.id, definition.name, JSON.stringify(definition), JSON.stringify(PENDING_BACKFILL)])).rows[0]
    if (!row) throw new FunnelExistsError(definition.id)
    const created = toFunnel(row)
    await publish(created)
    return created
  })
}

/**
 * What the funnel step computes from: the definition without `name` and `segment`, which only
 * name it and choose, where it is counted, whose progress counts.
 */
export function trackedPart(definition: FunnelDefinition): Omit<FunnelDefinition, 'name' | 'segment'> {
  const { name: _name, segment: _segment, ...tracked } = definition
  return tracked
}

/**
 * Changes a funnel. When what the funnel step computes changes (steps, mode, window, exclusions,
 * breakdown), it is a new version: `publish` runs inside the transaction, progress under the
 * previous version no longer counts, and the backfill is pending again. A change of the name or
 * the segment alone is made in place: same version, nothing published, progress kept (the segment
 * is applied where progress is counted).
 */
export async function replaceFunnel(db: Database, context: ExploreContext, definition: FunnelDefinition, publish: (funnel: StoredFunnel) => Promise<void>): Promise<StoredFunnel & { newVersion: boolean }> {
  await read(db, context, (query) => checkSegment(query, context, definition))
  return write(db, context, async (query) => {
    const current = (await query<{ definition: FunnelDefinition }>(
      'SELECT definition FROM funnels WHERE project = $1 AND id = $2 AND deleted_at IS NULL FOR UPDATE', [context.project, definition.id])).rows[0]
    if (!current) throw new FunnelNotFoundError(definition.id)
    if (isDeepStrictEqual(trackedPart(current.definition), trackedPart(definition))) {
      const row = (await query<Record<string, unknown>>(
        `UPDATE funnels SET name = $3, definition = $4::jsonb, updated_at = now() WHERE project = $1 AND id = $2 RETURNING *`,
        [context.project, definition.id, definition.name, JSON.stringify(definition)])).rows[0]!
      return { ...toFunnel(row), newVersion: false }
    }
    const row = (await query<Record<string, unknown>>(
      `UPDATE funnels SET name = $3, definition = $4::jsonb, version = version + 1, backfill = $5::jsonb, updated_at = now()
        WHERE project = $1 AND id = $2
       RETURNING *`,
      [context.project, definition.id, definition.name, JSON.stringify(definition), JSON.stringify(PENDING_BACKFILL)])).rows[0]!
    const changed = toFunnel(row)
    await publish(changed)
    return { ...changed, newVersion: true }
  })
}

/** Marks a funnel deleted at the next version (its row stays, so the id's versions never go back); no backfill is wanted any more. */
export async function deleteFunnel(db: Database, context: ExploreContext, id: string, publish: (funnel: StoredFunnel) => Promise<void>): Promise<StoredFunnel> {
  return write(db, context, async (query) => {
    const row = (await query<Record<string, unknown>>(
      `UPDATE funnels SET version = version + 1, deleted_at = now(), updated_at = now(), backfill = NULL
        WHERE project = $1 AND id = $2 AND deleted_at IS NULL
       RETURNING *`, [context.project, id])).rows[0]
    if (!row) throw new FunnelNotFoundError(id)
    const deleted = toFunnel(row)
    await publish(deleted)
    return deleted
  })
}

/** The project's funnels (not deleted), oldest first. */
export async function listFunnels(db: Database, context: ExploreContext): Promise<StoredFunnel[]> {
  return read(db, context, async (query) =>
    (await query<Record<string, unknown>>('SELECT * FROM funnels WHERE project = $1 AND deleted_at IS NULL ORDER BY created_at, id', [context.project])).rows.map(toFunnel))
}

async function loadFunnel(query: Query, project: string, id: string): Promise<StoredFunnel> {
  const row = (await query<Record<string, unknown>>('SELECT * FROM funnels WHERE project = $1 AND id = $2 AND deleted_at IS NULL', [project, id])).rows[0]
  if (!row) throw new FunnelNotFoundError(id)
  return toFunnel(row)
}

export async function getFunnel(db: Database, context: ExploreContext, id: string): Promise<StoredFunnel> {
  return read(db, context, (query) => loadFunnel(query, context.project, id))
}

// ---------------------------------------------------------------------------------------------
// The result: per step, and per breakdown value

export interface TimeToConvert {
  /** Users who reached this step (each has a time from the previous one). */
  users: number
  /** Median and 90th percentile of the time from the previous step, ms (interpolated, rounded to the ms). */
  medianMs: number
  p90Ms: number
}

export interface StepResult {
  /** 1-based. */
  step: number
  event: string
  label?: string
  /** Users whose counted attempt reached this step (or further). */
  reached: number
  /** reached / reached at the previous step; null when nobody reached that one (the first step: 1 when anybody entered). */
  conversionFromPrevious: number | null
  /** reached / reached at step 1; null when nobody entered. */
  conversionFromFirst: number | null
  /** Users who reached this step and not the next: the audience of this level (0 on the last step). */
  dropOff: number
  /** Of those, whose attempt can still go on (window open) ... */
  inProgress: number
  /** ... and whose attempts have all closed. */
  dropped: number
  /** From the previous step to this one; null on step 1 and when nobody reached this step. */
  timeToConvert: TimeToConvert | null
}

export interface FunnelCounts {
  /** Users who reached step 1. */
  entered: number
  /** Users who reached the last step. */
  converted: number
  /** converted / entered; null when nobody entered. */
  conversion: number | null
  steps: StepResult[]
}

export interface FunnelResult extends FunnelCounts {
  funnel: { id: string; name: string; version: number }
  from: string | null
  to: string | null
  breakdown?: { property: string; values: (FunnelCounts & { value: string | null })[] }
  asOf?: string
}

const ratio = (part: number, whole: number): number | null => (whole === 0 ? null : part / whole)

/**
 * Per-step numbers from the users at each exact level and status (`atLevel[level]`, 1-based)
 * and the times to convert (`times[k]`: from step k to step k + 1).
 */
export function stepsOf(definition: FunnelDefinition, atLevel: ReadonlyMap<number, { inProgress: number; dropped: number; total: number }>, times: ReadonlyMap<number, TimeToConvert>): FunnelCounts {
  const n = definition.steps.length
  const reached: number[] = []
  let running = 0
  for (let level = n; level >= 1; level--) {
    running += atLevel.get(level)?.total ?? 0
    reached[level - 1] = running
  }
  const steps = definition.steps.map((step, index): StepResult => {
    const here = index < n - 1 ? atLevel.get(index + 1) : undefined
    return {
      step: index + 1, event: step.event, ...(step.label !== undefined ? { label: step.label } : {}),
      reached: reached[index]!,
      conversionFromPrevious: index === 0 ? ratio(reached[0]!, reached[0]!) : ratio(reached[index]!, reached[index - 1]!),
      conversionFromFirst: ratio(reached[index]!, reached[0]!),
      dropOff: here?.total ?? 0, inProgress: here?.inProgress ?? 0, dropped: here?.dropped ?? 0,
      timeToConvert: index === 0 ? null : times.get(index) ?? null,
    }
  })
  return { entered: reached[0]!, converted: reached[n - 1]!, conversion: ratio(reached[n - 1]!, reached[0]!), steps }
}

/**
 * The funnel as it stands: per step, users reached, conversion, drop-off split into in progress
 * and dropped, and the times to convert; with `breakdown`, the same per breakdown value. One
 * statement (one snapshot) for the counts and the times.
 */
export async function funnelResult(db: Database, context: ExploreContext, id: string, request: TimeRange & { breakdown?: boolean } = {}): Promise<FunnelResult> {
  return read(db, context, async (query) => (await resultOf(query, context, id, request, false)).result)
}

/** Per step, over every user of the funnel (no segment restriction): what funnel-counts counts live. */
export interface AllUsersCounts {
  reached: number[]
  inProgress: number[]
  dropped: number[]
}

/**
 * `funnelResult` (no time range, no breakdown), and in the same statement the per-step counts
 * of **all** the funnel's users straight from `funnel_progress` (no profile join, no segment):
 * the live view of a restricted funnel (gateway/live/restricted.ts) compares them with the live
 * counts of all users to tell whether sink-funnels has written what the live counts have seen.
 */
export async function funnelResultWithAllUsers(db: Database, context: ExploreContext, id: string): Promise<FunnelResult & { allUsers: AllUsersCounts }> {
  return read(db, context, async (query) => {
    const { result, allUsers } = await resultOf(query, context, id, {}, true)
    return { ...result, allUsers: allUsers! }
  })
}

type LevelCounts = Map<number, { inProgress: number; dropped: number; total: number }>

async function resultOf(query: Query, context: ExploreContext, id: string, request: TimeRange & { breakdown?: boolean }, withAllUsers: boolean): Promise<{ result: FunnelResult; allUsers?: AllUsersCounts }> {
  const funnel = await loadFunnel(query, context.project, id)
  const property = funnel.definition.breakdown?.property
  if (request.breakdown && !property) throw new ExploreInputError(`breakdown: the funnel "${id}" has no breakdown property; give it one (breakdown: { property }) with PUT /v1/funnels/${id}`)
  const { where, allUsersWhere, params, asOf } = await scope(query, context, funnel, request)
  const byValue = request.breakdown === true
  // the pairs of consecutive steps: a constant series (generate_series(1, level - 1) per user would
  // be estimated at 1,000 rows each, and the inflated cost has the server JIT-compile the query)
  const rows = (await query<{ kind: 'count' | 'time' | 'all_users'; all_values: number; breakdown: string | null; k: number; status: FunnelStatus | null; n: string; median: number | null; p90: number | null }>(
    `WITH users AS (
       SELECT fp.level, fp.status, fp.step_times, fp.breakdown FROM ${FROM}
        WHERE ${where}
     )
     SELECT 'count' AS kind, ${byValue ? 'grouping(breakdown)' : '1'} AS all_values, ${byValue ? 'breakdown' : 'NULL::text AS breakdown'}, level AS k, status, count(*) AS n,
            NULL::float8 AS median, NULL::float8 AS p90
       FROM users GROUP BY ${byValue ? 'GROUPING SETS ((level, status), (breakdown, level, status))' : 'level, status'}
     UNION ALL
     SELECT 'time', ${byValue ? 'grouping(breakdown)' : '1'}, ${byValue ? 'breakdown' : 'NULL::text'}, k, NULL, count(*),
            percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)
       FROM (SELECT u.breakdown, k, (extract(epoch FROM u.step_times[k + 1] - u.step_times[k]) * 1000)::float8 AS ms
               FROM users u JOIN generate_series(1, ${funnel.definition.steps.length - 1}) AS k ON k < u.level) d
      GROUP BY ${byValue ? 'GROUPING SETS ((k), (breakdown, k))' : 'k'}${withAllUsers ? `
     UNION ALL
     SELECT 'all_users', 1, NULL::text, fp.level, fp.status, count(*), NULL, NULL
       FROM funnel_progress fp WHERE ${allUsersWhere}
      GROUP BY fp.level, fp.status` : ''}`, params.values)).rows

  type Acc = { atLevel: LevelCounts; times: Map<number, TimeToConvert> }
  const groups = new Map<string | null, Acc>()
  const all: Acc = { atLevel: new Map(), times: new Map() }
  const allUsersAtLevel: LevelCounts = new Map()
  const addAtLevel = (atLevel: LevelCounts, row: { k: number; status: FunnelStatus | null }, count: number) => {
    const level = atLevel.get(row.k) ?? { inProgress: 0, dropped: 0, total: 0 }
    level.total += count
    if (row.status === 'in_progress') level.inProgress += count
    if (row.status === 'dropped') level.dropped += count
    atLevel.set(row.k, level)
  }
  for (const row of rows) {
    const count = Number(row.n)
    if (row.kind === 'all_users') {
      addAtLevel(allUsersAtLevel, row, count)
      continue
    }
    const acc = Number(row.all_values) === 1 ? all : groups.get(row.breakdown) ?? groups.set(row.breakdown, { atLevel: new Map(), times: new Map() }).get(row.breakdown)!
    if (row.kind === 'time') {
      acc.times.set(row.k, { users: count, medianMs: Math.round(row.median!), p90Ms: Math.round(row.p90!) })
      continue
    }
    addAtLevel(acc.atLevel, row, count)
  }
  const result: FunnelResult = {
    funnel: { id: funnel.id, name: funnel.name, version: funnel.version },
    from: request.from === undefined ? null : parseTime(request.from, 'from').toISOString(),
    to: request.to === undefined ? null : parseTime(request.to, 'to').toISOString(),
    ...stepsOf(funnel.definition, all.atLevel, all.times),
  }
  if (byValue) {
    const values = [...groups].map(([value, acc]) => ({ value, ...stepsOf(funnel.definition, acc.atLevel, acc.times) }))
    // most users first; ties by value, users without one last
    values.sort((a, b) => b.entered - a.entered || (a.value === null ? 1 : b.value === null ? -1 : a.value < b.value ? -1 : a.value > b.value ? 1 : 0))
    result.breakdown = { property: property!, values }
  }
  if (asOf) result.asOf = asOf.toISOString()
  if (!withAllUsers) return { result }
  const steps = stepsOf(funnel.definition, allUsersAtLevel, new Map()).steps
  return { result, allUsers: { reached: steps.map((step) => step.reached), inProgress: steps.map((step) => step.inProgress), dropped: steps.map((step) => step.dropped) } }
}

// ---------------------------------------------------------------------------------------------
// Trends: conversion by local day or week of the first step

export const TREND_INTERVALS = ['day', 'week'] as const
export type TrendInterval = (typeof TREND_INTERVALS)[number]

export interface TrendBucket {
  /** The local date (project timezone) the day or week (Monday) starts on, YYYY-MM-DD. */
  start: string
  /** Users whose first step fell in the bucket. */
  entered: number
  /** Of those, users who reached the last step (so far). */
  converted: number
  conversion: number | null
  /** `reached[k]`: of those, users who reached step k + 1. */
  reached: number[]
}

export interface FunnelTrends {
  funnel: { id: string; name: string; version: number }
  interval: TrendInterval
  timezone: string
  from: string | null
  to: string | null
  buckets: TrendBucket[]
  asOf?: string
}

const addDays = (day: string, days: number): string => new Date(Date.parse(`${day}T00:00:00Z`) + days * 86_400_000).toISOString().slice(0, 10)

/**
 * Conversion by day or week (starting Monday) of the first step, in the project's timezone.
 * Every bucket from the first to the last is listed, empty ones with zeros; with `from` / `to`,
 * the buckets they fall in bound the list.
 */
export async function funnelTrends(db: Database, context: ExploreContext, id: string, request: TimeRange & { interval?: string } = {}): Promise<FunnelTrends> {
  const interval = (request.interval ?? 'day') as TrendInterval
  if (!TREND_INTERVALS.includes(interval)) throw new ExploreInputError(`interval: ${JSON.stringify(request.interval)} is not one of ${TREND_INTERVALS.join(', ')}`)
  return read(db, context, async (query) => {
    const funnel = await loadFunnel(query, context.project, id)
    const { where, params, asOf } = await scope(query, context, funnel, request)
    const zone = params.add(context.timezone, 'text')
    const unit = params.add(interval, 'text')
    const bucketOf = (time: string) => `to_char(date_trunc(${unit}, ${time} AT TIME ZONE ${zone}), 'YYYY-MM-DD')`
    const rows = (await query<{ bucket: string; level: number; n: string }>(
      `SELECT ${bucketOf('fp.step_times[1]')} AS bucket, fp.level, count(*) AS n FROM ${FROM}
        WHERE ${where}
        GROUP BY 1, 2`, params.values)).rows
    const checked = checkRange(request)
    // the range's own buckets: to is exclusive, so its bucket is that of the instant before it
    const local = (at: string) => `to_char(date_trunc($1::text, ${at} AT TIME ZONE $2::text), 'YYYY-MM-DD')`
    const bounds = (await query<{ first: string | null; last: string | null }>(
      `SELECT ${local('$3::timestamptz')} AS first, ${local("($4::timestamptz - interval '1 millisecond')")} AS last`,
      [interval, context.timezone, checked.from ?? null, checked.to ?? null])).rows[0]!
    const n = funnel.definition.steps.length
    const byBucket = new Map<string, number[]>()
    for (const row of rows) {
      const atLevel = byBucket.get(row.bucket) ?? byBucket.set(row.bucket, new Array<number>(n).fill(0)).get(row.bucket)!
      atLevel[Math.min(row.level, n) - 1]! += Number(row.n)
    }
    const seen = [...byBucket.keys()].sort()
    const first = bounds.first ?? seen[0]
    const last = bounds.last ?? seen[seen.length - 1]
    const step = interval === 'day' ? 1 : 7
    const buckets: TrendBucket[] = []
    if (first !== undefined && last !== undefined) {
      if ((Date.parse(last) - Date.parse(first)) / 86_400_000 / step >= MAX_TREND_BUCKETS) {
        throw new ExploreInputError(`from, to: more than ${MAX_TREND_BUCKETS} ${interval}s; narrow the range${interval === 'day' ? ' or ask by week' : ''}`)
      }
      for (let day = first; day <= last; day = addDays(day, step)) {
        const atLevel = byBucket.get(day) ?? new Array<number>(n).fill(0)
        const reached: number[] = []
        let running = 0
        for (let level = n; level >= 1; level--) reached[level - 1] = running += atLevel[level - 1]!
        buckets.push({ start: day, entered: reached[0]!, converted: reached[n - 1]!, conversion: ratio(reached[n - 1]!, reached[0]!), reached })
      }
    }
    return {
      funnel: { id: funnel.id, name: funnel.name, version: funnel.version }, interval, timezone: context.timezone,
      from: checked.from?.toISOString() ?? null, to: checked.to?.toISOString() ?? null, buckets,
      ...(asOf ? { asOf: asOf.toISOString() } : {}),
    }
  })
}

// ---------------------------------------------------------------------------------------------
// Audiences: the users at exactly one level

export const AUDIENCE_STATUSES = ['dropped', 'in_progress', 'all'] as const
export type AudienceStatus = (typeof AUDIENCE_STATUSES)[number]

/** A user of an audience: the profile, then where the user stands in the funnel. */
export interface AudienceUser extends UserRow {
  status: FunnelStatus
  /** When each step was reached (ISO 8601), `level` entries. */
  stepTimes: string[]
}

export interface AudienceRequest extends TimeRange {
  /** Users who reached exactly this step (1 to the number of steps; the last: those who converted). */
  level: number
  /** Default `all`. */
  status?: string
  limit?: number
  cursor?: string
}

export interface AudiencePage {
  funnel: { id: string; name: string; version: number }
  level: number
  status: AudienceStatus
  users: AudienceUser[]
  nextCursor: string | null
  asOf?: string
}

interface AudienceQuery { where: string; params: Params; funnel: StoredFunnel; status: AudienceStatus; asOf?: Date }

async function audienceScope(query: Query, context: ExploreContext, id: string, request: AudienceRequest): Promise<AudienceQuery> {
  const status = (request.status ?? 'all') as AudienceStatus
  if (!AUDIENCE_STATUSES.includes(status)) throw new ExploreInputError(`status: ${JSON.stringify(request.status)} is not one of ${AUDIENCE_STATUSES.join(', ')}`)
  const funnel = await loadFunnel(query, context.project, id)
  const n = funnel.definition.steps.length
  if (!Number.isInteger(request.level) || request.level < 1 || request.level > n) {
    throw new ExploreInputError(`level: the funnel "${id}" has ${n} steps; level is 1 to ${n} (the users who reached exactly that step), not ${JSON.stringify(request.level)}`)
  }
  const { where, params, asOf } = await scope(query, context, funnel, request)
  let clause = `${where}\n    AND fp.level = ${params.add(request.level, 'int')}`
  if (status !== 'all') clause += `\n    AND fp.status = ${params.add(status, 'text')}`
  return { where: clause, params, funnel, status, asOf }
}

async function audiencePage(query: Query, scoped: AudienceQuery, after: string | undefined, limit: number): Promise<{ users: AudienceUser[]; more: boolean }> {
  const params = scoped.params.clone()
  const keyset = after === undefined ? '' : `\n    AND fp.canonical_id > ${params.add(after, 'text')}`
  // keyset on the primary key (project, funnel_id, funnel_version, canonical_id): every page is an index range
  const rows = (await query<Record<string, unknown>>(
    `SELECT ${USER_COLUMNS}, fp.status AS funnel_status, fp.step_times AS funnel_step_times FROM ${FROM}
      WHERE ${scoped.where}${keyset}
      ORDER BY fp.canonical_id
      LIMIT ${params.add(limit + 1, 'int')}`, params.values)).rows
  const users = rows.slice(0, limit).map((row) => ({
    ...toUserRow(row), status: row.funnel_status as FunnelStatus, stepTimes: (row.funnel_step_times as Date[]).map((time) => time.toISOString()),
  }))
  return { users, more: rows.length > limit }
}

/** One page of the users who reached exactly `level` (by status), by canonical id. */
export async function funnelAudience(db: Database, context: ExploreContext, id: string, request: AudienceRequest): Promise<AudiencePage> {
  const limit = pageLimit(request.limit, DEFAULT_PAGE, MAX_PAGE, 'a number of users')
  const after = request.cursor === undefined ? undefined : decodeCursor(request.cursor)
  return read(db, context, async (query) => {
    const scoped = await audienceScope(query, context, id, request)
    const { users, more } = await audiencePage(query, scoped, after, limit)
    return {
      funnel: { id: scoped.funnel.id, name: scoped.funnel.name, version: scoped.funnel.version }, level: request.level, status: scoped.status,
      users, nextCursor: more ? encodeCursor(users[users.length - 1]!.canonicalId) : null,
      ...(scoped.asOf ? { asOf: scoped.asOf.toISOString() } : {}),
    }
  })
}

/**
 * Every user of the audience, a page at a time, each page its own short transaction. The request
 * is checked and the first page read before this returns: mistakes and timeouts come before
 * anything is sent.
 */
export async function streamFunnelAudience(db: Database, context: ExploreContext, id: string, request: Omit<AudienceRequest, 'limit'> & { pageSize?: number }): Promise<{ level: number; pages: AsyncGenerator<AudienceUser[]> }> {
  const pageSize = pageLimit(request.pageSize, 5_000, 10_000, 'a page size')
  let after = request.cursor === undefined ? undefined : decodeCursor(request.cursor)
  // the funnel version, the segment's as-of day and the catalogue are fixed at the start: every page answers the same question
  const scoped = await read(db, context, (query) => audienceScope(query, context, id, request))
  let next: { users: AudienceUser[]; more: boolean } | undefined = await read(db, context, (query) => audiencePage(query, scoped, after, pageSize))
  const pages = (async function* () {
    while (next) {
      const current: { users: AudienceUser[]; more: boolean } = next
      if (current.users.length > 0) yield current.users
      if (!current.more) return
      after = current.users[current.users.length - 1]!.canonicalId
      next = await read(db, context, (query) => audiencePage(query, scoped, after, pageSize))
    }
  })()
  return { level: request.level, pages }
}
