import type { LiveFunnelCounts } from '../../schemas/counts.ts'
import { ENVELOPE_VERSION, type AnyEnvelope, type FunnelProgressEnvelope, type LiveFunnelCountsEnvelope, type Origin } from '../../schemas/envelope.ts'
import { DURATION_BUCKETS_MS, durationBucketOf, type FunnelPreviousProgress, type FunnelStepCounts } from '../../schemas/funnel.ts'
import type { Stage } from '../../topology/subjects.ts'
import type { EventContext, Operator, TimerContext } from '../runtime/operator.ts'
import { coalescer, DEFAULT_PUBLISH_EVERY_MS, type Coalesced } from './coalesce.ts'

/** The stage funnel step counts are published on: `seg.<project>.funnel_counts.<kg>`, in SEG_COUNTS, one message kept per subject. */
export const FUNNEL_COUNTS_STAGE = 'funnel_counts' satisfies Stage
/** The step id: its state bucket is `seg_state_funnel-counts`. */
export const FUNNEL_COUNTS_STEP_ID = 'funnel-counts'

export interface FunnelCountsOptions {
  /** Least event time between two publications of one key group, ms. Default 250 (`DEFAULT_PUBLISH_EVERY_MS`). */
  publishEveryMs?: number
}

/**
 * One key group's funnel step counts in one project (the key is the key group). Per funnel id only
 * the newest funnel version seen here: bounded by the project's funnels, each by its steps.
 */
export interface FunnelCountsState extends Coalesced {
  project: string
  keyGroup: number
  /** Event time of the newest progress applied (its `asOf`). */
  asOf: number
  /** Ordered by funnel id. */
  funnels: FunnelStepCounts[]
}

const empty = (): FunnelCountsState => ({ project: '', keyGroup: 0, version: 0, asOf: 0, funnels: [], publishedVersion: 0, publishedAt: {}, source: 'live' })

/** Zero counts for a funnel version of `steps` steps. */
export function emptyStepCounts(funnelId: string, funnelVersion: number, steps: number): FunnelStepCounts {
  const zeros = () => new Array<number>(steps).fill(0)
  return {
    funnelId, funnelVersion, reached: zeros(), inProgress: zeros(), dropped: zeros(),
    conversionTimes: Array.from({ length: steps - 1 }, () => new Array<number>(DURATION_BUCKETS_MS.length + 1).fill(0)),
  }
}

/**
 * Adds (`sign` 1) or takes away (-1) one user's progress, as the /result API counts it
 * (store/funnels.ts): level ≥ 1 and a status other than `none` count; `reached` up to the level,
 * `inProgress` / `dropped` at the level by status (converted: neither), and the time between each
 * pair of consecutive steps reached. Changes `counts` in place (the caller's copy).
 */
export function addProgress(counts: FunnelStepCounts, progress: FunnelPreviousProgress, sign: 1 | -1): void {
  const steps = counts.reached.length
  const level = Math.min(progress.level, steps, progress.stepTimes.length)
  if (progress.status === 'none' || level < 1) return
  for (let step = 0; step < level; step++) counts.reached[step]! += sign
  if (progress.status === 'in_progress') counts.inProgress[level - 1]! += sign
  else if (progress.status === 'dropped') counts.dropped[level - 1]! += sign
  for (let step = 0; step + 1 < level; step++) {
    counts.conversionTimes[step]![durationBucketOf(progress.stepTimes[step + 1]! - progress.stepTimes[step]!)]! += sign
  }
}

const copyOf = (counts: FunnelStepCounts): FunnelStepCounts => ({
  funnelId: counts.funnelId, funnelVersion: counts.funnelVersion, reached: counts.reached.slice(), inProgress: counts.inProgress.slice(),
  dropped: counts.dropped.slice(), conversionTimes: counts.conversionTimes.map((buckets) => buckets.slice()),
})

/**
 * One progress message applied to a key group's funnels: its contribution minus the previous
 * message's (`data.previous`). A newer funnel version replaces the counts of the older one (which
 * stops counting, as in the /result API); a message of an older version than the one held changes
 * nothing. Returns the new list, or `undefined` when the message changes nothing.
 */
export function applyProgress(funnels: readonly FunnelStepCounts[], progress: FunnelProgressEnvelope['data']): FunnelStepCounts[] | undefined {
  let index = 0
  while (index < funnels.length && funnels[index]!.funnelId < progress.funnelId) index++
  const held = funnels[index]?.funnelId === progress.funnelId ? funnels[index] : undefined
  if (held !== undefined && held.funnelVersion > progress.funnelVersion) return undefined
  const counts = held !== undefined && held.funnelVersion === progress.funnelVersion
    ? copyOf(held)
    : emptyStepCounts(progress.funnelId, progress.funnelVersion, progress.steps)
  if (progress.previous !== undefined) addProgress(counts, progress.previous, -1)
  addProgress(counts, progress, 1)
  const next = funnels.slice()
  next.splice(index, held === undefined ? 0 : 1, counts)
  return next
}

/** The publication of a state: its absolute counts under its version. */
export function liveFunnelCountsOf(state: FunnelCountsState): LiveFunnelCountsEnvelope {
  const data: LiveFunnelCounts = { keyGroup: state.keyGroup, version: state.version, asOf: state.asOf, funnels: state.funnels }
  return {
    v: ENVELOPE_VERSION, type: 'live_funnel_counts', project: state.project, id: `funnel-counts:${state.keyGroup}:${state.version}`,
    time: state.asOf, key: String(state.keyGroup), keyGroup: state.keyGroup, source: state.source, data,
  }
}

/**
 * Funnel step counts: per project and key group, users per step reached, in progress and dropped
 * at each level, and times to convert in buckets, for every funnel version with progress in the key
 * group, kept from the funnel step's `funnel_progress` messages (each carries the one it replaces,
 * so no user is remembered here). Publishes the absolute counts with their version on the
 * `funnel_counts` stage, coalesced in event time as live-counts is. Pure; docs/live.md.
 */
export function createFunnelCounts(options: FunnelCountsOptions = {}): Operator<FunnelCountsState, FunnelProgressEnvelope> {
  const publication = coalescer<FunnelCountsState>(options.publishEveryMs ?? DEFAULT_PUBLISH_EVERY_MS, (state) => ({
    stage: FUNNEL_COUNTS_STAGE, project: state.project, keyGroup: state.keyGroup, envelope: liveFunnelCountsOf(state),
  }))

  return {
    stepId: FUNNEL_COUNTS_STEP_ID,
    // keys are key group numbers, not users
    keyedByUser: false,
    init: empty,
    toInput(envelope: AnyEnvelope, _origin: Origin): FunnelProgressEnvelope {
      if (envelope.type === 'funnel_progress') return envelope
      throw new Error(`funnel-counts reads funnel_progress messages, got ${envelope.type}`)
    },
    keyOf: (input) => String(input.keyGroup),
    onEvent(state, input, context: EventContext) {
      const funnels = applyProgress(state.funnels, input.data)
      if (funnels === undefined) return publication.unchanged(state)
      return publication.changed({
        ...state,
        project: input.project,
        keyGroup: input.keyGroup,
        version: state.version + 1,
        asOf: Math.max(state.asOf, input.data.asOf),
        funnels,
        source: input.source,
      }, context.watermark)
    },
    onTimer(state, now: number, _context?: TimerContext) {
      return publication.timer(state, now)
    },
  }
}
