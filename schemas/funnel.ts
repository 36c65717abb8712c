import Type, { type Static } from 'typebox'
import { Compile } from 'typebox/compile'

/**
 * Funnels (docs/funnels.md): a definition arrives as a control message for the `funnel` step;
 * the operator publishes each user's progress on the `funnels` stage; a counter aggregates the
 * progress into per-key-group step counts.
 */

const MINUTE = 60_000
const DAY = 24 * 60 * MINUTE

export const MIN_STEPS = 2
export const MAX_STEPS = 20
/** Exclusions share a 32-bit mask with the steps (20 bits): at most 10. */
export const MAX_EXCLUSIONS = 10
/** Property filters per step or exclusion. */
export const MAX_FILTERS = 10
export const DEFAULT_WINDOW_MS = 14 * DAY
export const MIN_WINDOW_MS = MINUTE
export const MAX_WINDOW_MS = 90 * DAY

export const FILTER_OPERATORS = ['eq', 'neq', 'gt', 'gte', 'lt', 'lte', 'in', 'contains', 'is_set'] as const
export type FilterOperator = (typeof FILTER_OPERATORS)[number]

/**
 * A condition on one property of the event. `property` names a key of the message's `properties`
 * (a track's or a page's), or one of the enriched fields `$channel`, `$source`, `$campaign`,
 * `$device`, `$browser`, `$os`, `$country`, `$city`; on `$session_start`, `$channel`, `$device` and
 * `$entry_page` of the session. Without `operator` it is an exact match (`eq`).
 */
export const PropertyFilter = Type.Object({
  property: Type.String({ minLength: 1, maxLength: 256 }),
  operator: Type.Optional(Type.Union([
    Type.Literal('eq'), Type.Literal('neq'), Type.Literal('gt'), Type.Literal('gte'), Type.Literal('lt'), Type.Literal('lte'),
    Type.Literal('in'), Type.Literal('contains'), Type.Literal('is_set'),
  ])),
  /** The value compared with; an array for `in`; left out for `is_set`. */
  value: Type.Optional(Type.Unknown()),
}, { additionalProperties: false })
export type PropertyFilter = Static<typeof PropertyFilter>

/** One step: an event name (a track's `event`, `$page`, `$screen`, `$identify`, ..., or `$session_start`) and filters that must all hold. */
export const FunnelStep = Type.Object({
  event: Type.String({ minLength: 1, maxLength: 256 }),
  filters: Type.Optional(Type.Array(PropertyFilter, { maxItems: MAX_FILTERS })),
  /** Shown instead of the event name. */
  label: Type.Optional(Type.String({ maxLength: 256 })),
}, { additionalProperties: false })
export type FunnelStep = Static<typeof FunnelStep>

/** An event that discards an attempt when it happens after the attempt's step `fromStep` and before its step `toStep` (1-based). */
export const FunnelExclusion = Type.Object({
  event: Type.String({ minLength: 1, maxLength: 256 }),
  filters: Type.Optional(Type.Array(PropertyFilter, { maxItems: MAX_FILTERS })),
  fromStep: Type.Integer({ minimum: 1, maximum: MAX_STEPS }),
  toStep: Type.Integer({ minimum: 2, maximum: MAX_STEPS }),
}, { additionalProperties: false })
export type FunnelExclusion = Static<typeof FunnelExclusion>

export const FunnelMode = Type.Union([Type.Literal('sequential'), Type.Literal('strict'), Type.Literal('any_order')])
export type FunnelMode = Static<typeof FunnelMode>

/** A condition on the user's profile (docs/profiles.md), e.g. `acquisition_month eq '2019-05'`. */
export const ProfileCondition = Type.Object({
  /** acquisition_month | acquisition_channel | device | country | engagement | trait.<name> */
  field: Type.String({ minLength: 1, maxLength: 256 }),
  operator: Type.Optional(Type.Union([
    Type.Literal('eq'), Type.Literal('neq'), Type.Literal('gt'), Type.Literal('gte'), Type.Literal('lt'), Type.Literal('lte'),
    Type.Literal('in'), Type.Literal('contains'), Type.Literal('is_set'),
  ])),
  value: Type.Optional(Type.Unknown()),
}, { additionalProperties: false })
export type ProfileCondition = Static<typeof ProfileCondition>

/**
 * Which users the funnel counts: an inline profile filter (all conditions hold) or a saved
 * segment. Applied where progress is counted, beside the profiles: the funnel operator itself
 * tracks every user (docs/funnels.md, "Segment restriction").
 */
export const FunnelSegment = Type.Union([
  Type.Object({ profile: Type.Array(ProfileCondition, { minItems: 1, maxItems: MAX_FILTERS }) }, { additionalProperties: false }),
  Type.Object({ segmentId: Type.String({ minLength: 1, maxLength: 256 }) }, { additionalProperties: false }),
])
export type FunnelSegment = Static<typeof FunnelSegment>

export const FunnelDefinition = Type.Object({
  /** Unique per project; the control message's `name`. */
  id: Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_.:-]+$' }),
  name: Type.String({ minLength: 1, maxLength: 256 }),
  steps: Type.Array(FunnelStep, { minItems: MIN_STEPS, maxItems: MAX_STEPS }),
  /** Default `sequential`. */
  mode: Type.Optional(FunnelMode),
  /** Conversion window from the attempt's first step, ms. Default 14 days; 1 minute to 90 days. */
  windowMs: Type.Optional(Type.Integer({ minimum: MIN_WINDOW_MS, maximum: MAX_WINDOW_MS })),
  exclusions: Type.Optional(Type.Array(FunnelExclusion, { maxItems: MAX_EXCLUSIONS })),
  segment: Type.Optional(FunnelSegment),
  /** Break the counts down by this property of the counted attempt's first step (first touch). */
  breakdown: Type.Optional(Type.Object({ property: Type.String({ minLength: 1, maxLength: 256 }) }, { additionalProperties: false })),
}, { additionalProperties: false })
export type FunnelDefinition = Static<typeof FunnelDefinition>

const definitionSchema = Compile(FunnelDefinition)

function valueProblems(where: string, filter: { operator?: FilterOperator; value?: unknown }): string[] {
  const operator = filter.operator ?? 'eq'
  const { value } = filter
  if (operator === 'is_set') return value === undefined ? [] : [`${where}: is_set takes no value`]
  if (value === undefined) return [`${where}: ${operator} needs a value`]
  if (operator === 'in') {
    if (!Array.isArray(value) || value.length === 0) return [`${where}: in needs a non-empty array of values`]
    return value.every((item) => ['string', 'number', 'boolean'].includes(typeof item)) ? [] : [`${where}: in takes strings, numbers and booleans`]
  }
  if (operator === 'contains') return typeof value === 'string' ? [] : [`${where}: contains needs a string`]
  if (operator === 'gt' || operator === 'gte' || operator === 'lt' || operator === 'lte') {
    return (typeof value === 'number' && Number.isFinite(value)) || typeof value === 'string' ? [] : [`${where}: ${operator} needs a number or a string`]
  }
  return ['string', 'number', 'boolean'].includes(typeof value) || value === null ? [] : [`${where}: ${operator} needs a string, a number, a boolean or null`]
}

/**
 * What is wrong with a funnel definition, one sentence per problem naming the field
 * (`steps/2/filters/0: gt needs a number or a string`); empty when it is valid.
 */
export function funnelDefinitionProblems(value: unknown): string[] {
  if (!definitionSchema.Check(value)) {
    return definitionSchema.Errors(value).slice(0, 8).map((error) => `${error.instancePath.slice(1) || 'definition'}: ${error.message}`)
  }
  const definition = value as FunnelDefinition
  const problems: string[] = []
  const steps = definition.steps.length
  definition.steps.forEach((step, index) => {
    step.filters?.forEach((filter, at) => problems.push(...valueProblems(`steps/${index}/filters/${at}`, filter)))
  })
  const exclusions = definition.exclusions ?? []
  if (exclusions.length > 0 && definition.mode === 'any_order') problems.push('exclusions: not available in any_order mode (there is no "between two steps" without an order)')
  exclusions.forEach((exclusion, index) => {
    if (exclusion.fromStep >= exclusion.toStep) problems.push(`exclusions/${index}: fromStep (${exclusion.fromStep}) must come before toStep (${exclusion.toStep})`)
    if (exclusion.toStep > steps) problems.push(`exclusions/${index}: toStep ${exclusion.toStep} is beyond the last step (${steps})`)
    exclusion.filters?.forEach((filter, at) => problems.push(...valueProblems(`exclusions/${index}/filters/${at}`, filter)))
  })
  if ('segment' in definition && definition.segment && 'profile' in definition.segment) {
    definition.segment.profile.forEach((condition, at) => problems.push(...valueProblems(`segment/profile/${at}`, condition)))
  }
  return problems
}

// ---------------------------------------------------------------------------------------------
// Progress: what the operator publishes, per funnel and user

export const FunnelStatus = Type.Union([
  /** Reached the last step. */
  Type.Literal('converted'),
  /** Reached `level` and an attempt at that level can still advance (its window is open). */
  Type.Literal('in_progress'),
  /** Reached `level`, and every attempt at that level has closed (window over, or broken in strict mode). */
  Type.Literal('dropped'),
  /** Not in the funnel (any more): no attempt counts, or the user was merged into `mergedInto`. */
  Type.Literal('none'),
])
export type FunnelStatus = Static<typeof FunnelStatus>

/**
 * What the previous message for the same (funnel, funnel version, user) said, in the fields that are
 * counted: a counter takes its contribution away and adds the new message's, keeping no per-user
 * state (docs/funnels.md, "Messages"; docs/live.md, "Funnel step counts").
 */
export const FunnelPreviousProgress = Type.Object({
  level: Type.Integer({ minimum: 0, maximum: MAX_STEPS }),
  status: FunnelStatus,
  stepTimes: Type.Array(Type.Number(), { maxItems: MAX_STEPS }),
  breakdown: Type.Optional(Type.String()),
}, { additionalProperties: false })
export type FunnelPreviousProgress = Static<typeof FunnelPreviousProgress>

/**
 * On `seg.<project>.funnels.<kg>` (routed by canonical user id): "user `canonicalId` reached step
 * `level` of funnel `funnelId` at `stepTimes[level - 1]`", as it now stands. Consumers keep the
 * highest `version` per (funnelId, funnelVersion, canonicalId); a message with status `none`
 * takes the user out of the funnel.
 */
export const FunnelProgress = Type.Object({
  funnelId: Type.String(),
  /** The definition's version (the control message's): counts of different versions never mix. */
  funnelVersion: Type.Integer({ minimum: 1 }),
  canonicalId: Type.String(),
  /** Per (funnel, funnel version, user), from 1, one step per message. */
  version: Type.Integer({ minimum: 1 }),
  /** Steps reached by the counted attempt, 0 to the number of steps. */
  level: Type.Integer({ minimum: 0, maximum: MAX_STEPS }),
  steps: Type.Integer({ minimum: MIN_STEPS, maximum: MAX_STEPS }),
  status: FunnelStatus,
  /** Event time (ms) of each step the counted attempt reached: `level` entries; consecutive differences are the times to convert. */
  stepTimes: Type.Array(Type.Number(), { maxItems: MAX_STEPS }),
  /** The breakdown property of the counted attempt's first step (as a string), when the funnel has a breakdown and the step had it. */
  breakdown: Type.Optional(Type.String()),
  /** Event time (ms) the status is as of: the later of the watermark and the user's newest event the funnel saw. */
  asOf: Type.Number(),
  /** The user's progress moved to this user (identity merge); status `none`. */
  mergedInto: Type.Optional(Type.String()),
  /** What message `version - 1` said (its level, status, step times, breakdown); absent on version 1. */
  previous: Type.Optional(FunnelPreviousProgress),
}, { additionalProperties: false })
export type FunnelProgress = Static<typeof FunnelProgress>

/** Upper bounds (ms, inclusive) of the time-to-convert buckets; a last, open bucket follows. */
export const DURATION_BUCKETS_MS: readonly number[] = Object.freeze([
  1_000, 5_000, 15_000, 30_000, MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 30 * MINUTE, 60 * MINUTE, 2 * 60 * MINUTE, 6 * 60 * MINUTE,
  12 * 60 * MINUTE, DAY, 2 * DAY, 3 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 60 * DAY, 90 * DAY,
])

/** The bucket of a time to convert: the first bound it does not exceed, else the open last bucket. */
export function durationBucketOf(ms: number): number {
  let low = 0
  let high = DURATION_BUCKETS_MS.length
  while (low < high) {
    const middle = (low + high) >> 1
    if (ms <= DURATION_BUCKETS_MS[middle]!) high = middle
    else low = middle + 1
  }
  return low
}

/**
 * One funnel version's step counts in one key group, what a live dashboard sums across key groups
 * (published by the `funnel-counts` step inside `live_funnel_counts`, schemas/counts.ts): users per
 * level and status, and the times to convert between consecutive steps as bucket counts (merge by
 * adding; a median or p90 is read off the cumulative counts, to a bucket's precision). All users of
 * the funnel: no segment restriction, no breakdown (docs/live.md).
 */
export const FunnelStepCounts = Type.Object({
  funnelId: Type.String(),
  funnelVersion: Type.Integer({ minimum: 1 }),
  /** `reached[k]`: users who reached step k + 1 (so `reached[0]` entered the funnel); one entry per step. */
  reached: Type.Array(Type.Integer(), { minItems: MIN_STEPS, maxItems: MAX_STEPS }),
  /** `inProgress[k]` / `dropped[k]`: users whose level is exactly k + 1, by status; the last entry of each is 0 (converted). */
  inProgress: Type.Array(Type.Integer(), { minItems: MIN_STEPS, maxItems: MAX_STEPS }),
  dropped: Type.Array(Type.Integer(), { minItems: MIN_STEPS, maxItems: MAX_STEPS }),
  /** `conversionTimes[k][b]`: users whose step k + 2 came within bucket b (DURATION_BUCKETS_MS, then the open bucket) of their step k + 1. */
  conversionTimes: Type.Array(Type.Array(Type.Integer()), { maxItems: MAX_STEPS - 1 }),
}, { additionalProperties: false })
export type FunnelStepCounts = Static<typeof FunnelStepCounts>
