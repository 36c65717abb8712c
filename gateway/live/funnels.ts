import type pg from 'pg'
import Type, { type Static } from 'typebox'
import { DURATION_BUCKETS_MS, durationBucketOf, type FunnelDefinition } from '../../schemas/funnel.ts'
import type { FunnelResult } from '../../store/funnels.ts'
import { DatabaseUnavailableError, isConnectionError } from '../../store/store.ts'
import type { FunnelSums } from './book.ts'

/** A funnel as the live view needs it: its current version (the one counted) and its steps. */
export interface LiveFunnel {
  id: string
  name: string
  version: number
  definition: FunnelDefinition
}

/** The project's funnels (all, or those of `ids`), not deleted, oldest first. */
export async function liveFunnels(pool: Pick<pg.Pool, 'query'>, project: string, ids?: readonly string[]): Promise<LiveFunnel[]> {
  try {
    const select = 'SELECT id, name, version, definition FROM funnels WHERE project = $1 AND deleted_at IS NULL'
    const { rows } = ids === undefined
      ? await pool.query<LiveFunnel>(`${select} ORDER BY created_at, id`, [project])
      : await pool.query<LiveFunnel>(`${select} AND id = ANY($2::text[]) ORDER BY created_at, id`, [project, [...ids]])
    return rows
  } catch (error) {
    throw isConnectionError(error) ? new DatabaseUnavailableError(error) : error
  }
}

const TimeToConvert = Type.Union([
  Type.Object({
    users: Type.Integer({ description: 'users who reached this step (and so the one before)' }),
    medianAtMostMs: Type.Union([Type.Integer(), Type.Null()], { description: 'the upper bound of the bucket holding the median time from the previous step (DURATION_BUCKETS_MS); null in the open bucket' }),
    p90AtMostMs: Type.Union([Type.Integer(), Type.Null()], { description: 'the same for the 90th percentile' }),
    medianMs: Type.Optional(Type.Integer({ description: 'restricted funnels only (computed in SQL): the exact median, as GET /v1/funnels/:id/result has it' })),
    p90Ms: Type.Optional(Type.Integer({ description: 'restricted funnels only: the exact 90th percentile' })),
  }),
  Type.Null(),
])

/** One funnel's live step counts, summed over key groups, as `/v1/live/counts` and the WebSocket show them (docs/live.md). */
export const LiveFunnelView = Type.Object({
  id: Type.String(),
  name: Type.String(),
  version: Type.Integer({ description: 'the funnel version counted: the current one' }),
  asOf: Type.Union([Type.String(), Type.Null()], { description: 'event time of the newest progress counted, ISO 8601; null before any' }),
  keyGroups: Type.Integer({ description: 'key groups that have published funnel counts for the project' }),
  segmentApplied: Type.Boolean({ description: 'true: the funnel\'s users (its segment restriction applied, by SQL triggered by the live counts); false only for a restricted funnel whose SQL failed: then these are all its users' }),
  entered: Type.Integer(),
  converted: Type.Integer(),
  steps: Type.Array(Type.Object({
    step: Type.Integer({ description: '1-based' }),
    event: Type.String(),
    label: Type.Optional(Type.String()),
    reached: Type.Integer({ description: 'users whose counted attempt reached this step or further' }),
    dropOff: Type.Integer({ description: 'users at exactly this level (0 on the last step)' }),
    inProgress: Type.Integer({ description: 'of dropOff: a window still open' }),
    dropped: Type.Integer({ description: 'of dropOff: every window closed' }),
    timeToConvert: TimeToConvert,
  })),
})
export type LiveFunnelView = Static<typeof LiveFunnelView>

/** The upper bound of the bucket holding the `share` quantile of the counts; null in the open bucket or with no users. */
function quantileBound(buckets: readonly number[], users: number, share: number): number | null {
  if (users <= 0) return null
  const rank = Math.max(1, Math.ceil(share * users))
  let seen = 0
  for (let bucket = 0; bucket < buckets.length; bucket++) {
    seen += buckets[bucket]!
    if (seen >= rank) return bucket < DURATION_BUCKETS_MS.length ? DURATION_BUCKETS_MS[bucket]! : null
  }
  return null
}

/** A funnel's summed counts as the API shows them, step by step, the numbers of the /result API where they can be. */
export function funnelView(funnel: LiveFunnel, sums: FunnelSums): LiveFunnelView {
  const steps = funnel.definition.steps.map((step, index) => {
    const reached = sums.reached[index] ?? 0
    const next = index + 1 < sums.reached.length ? sums.reached[index + 1]! : reached
    const buckets = index > 0 ? sums.conversionTimes[index - 1] ?? [] : []
    return {
      step: index + 1, event: step.event, ...(step.label === undefined ? {} : { label: step.label }),
      reached, dropOff: reached - next, inProgress: sums.inProgress[index] ?? 0, dropped: sums.dropped[index] ?? 0,
      timeToConvert: index === 0 || reached === 0 ? null : { users: reached, medianAtMostMs: quantileBound(buckets, reached, 0.5), p90AtMostMs: quantileBound(buckets, reached, 0.9) },
    }
  })
  return {
    id: funnel.id, name: funnel.name, version: funnel.version, asOf: sums.asOf === null ? null : new Date(sums.asOf).toISOString(), keyGroups: sums.keyGroups,
    // a restricted funnel reaches here only when its SQL failed: these are all its users
    segmentApplied: funnel.definition.segment === undefined, entered: steps[0]?.reached ?? 0, converted: steps.at(-1)?.reached ?? 0, steps,
  }
}

/** The upper bound of the duration bucket holding `ms`; null in the open bucket. */
const bucketBound = (ms: number): number | null => DURATION_BUCKETS_MS[durationBucketOf(ms)] ?? null

/**
 * A restricted funnel's view from its /result numbers (SQL: the segment applied); `live` gives the
 * event time and key groups of the live counts that triggered the query. The times to convert are
 * exact (`medianMs`, `p90Ms`) and, for a reader of unrestricted views, their bucket bounds.
 */
export function restrictedFunnelView(funnel: LiveFunnel, result: FunnelResult, live: Pick<FunnelSums, 'asOf' | 'keyGroups'>): LiveFunnelView {
  return {
    id: funnel.id, name: result.funnel.name, version: result.funnel.version,
    asOf: live.asOf === null ? null : new Date(live.asOf).toISOString(), keyGroups: live.keyGroups,
    segmentApplied: true, entered: result.entered, converted: result.converted,
    steps: result.steps.map((step) => ({
      step: step.step, event: step.event, ...(step.label === undefined ? {} : { label: step.label }),
      reached: step.reached, dropOff: step.dropOff, inProgress: step.inProgress, dropped: step.dropped,
      timeToConvert: step.timeToConvert === null ? null : {
        users: step.timeToConvert.users, medianAtMostMs: bucketBound(step.timeToConvert.medianMs), p90AtMostMs: bucketBound(step.timeToConvert.p90Ms),
        medianMs: step.timeToConvert.medianMs, p90Ms: step.timeToConvert.p90Ms,
      },
    })),
  }
}
