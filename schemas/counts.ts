import Type, { type Static } from 'typebox'
import { FunnelStepCounts } from './funnel.ts'

/** Users per engagement level and per saved segment, absolute. Zero counts are left out. */
export const Counts = Type.Object({
  /** Users per engagement level (`Low`, `Medium`, `Medium-High`, `High`). */
  engagement: Type.Record(Type.String(), Type.Integer()),
  /** Users per saved segment id (`seg_...`). */
  segments: Type.Record(Type.String(), Type.Integer()),
})
export type Counts = Static<typeof Counts>

/**
 * On `seg.<project>.counts.<kg>` (stream SEG_COUNTS, one message kept per subject): one key
 * group's counts as they stand after `version` membership changes, published by the
 * `live-counts` step (docs/live.md). Absolute, never deltas: a replay republishes the same
 * numbers under the same version, so a reader that keeps the highest version per key group and
 * sums over key groups never counts a change twice.
 */
export const LiveCounts = Type.Object({
  keyGroup: Type.Integer({ minimum: 0 }),
  /** Membership changes applied in this key group so far (0: none). */
  version: Type.Integer({ minimum: 0 }),
  /** Event time (ms) of the newest change applied. */
  asOf: Type.Number(),
  counts: Counts,
})
export type LiveCounts = Static<typeof LiveCounts>

/**
 * On `seg.<project>.funnel_counts.<kg>` (stream SEG_COUNTS, one message kept per subject): one key
 * group's step counts of every funnel version it has seen progress of, as they stand after
 * `version` progress messages, published by the `funnel-counts` step (docs/live.md). Absolute and
 * versioned like `LiveCounts`: keep the highest version per key group, sum over key groups.
 */
export const LiveFunnelCounts = Type.Object({
  keyGroup: Type.Integer({ minimum: 0 }),
  /** Progress messages applied in this key group so far (0: none). */
  version: Type.Integer({ minimum: 0 }),
  /** Event time (ms) of the newest progress applied (its `asOf`). */
  asOf: Type.Number(),
  /** Per funnel id, the newest funnel version seen in this key group, ordered by funnel id. */
  funnels: Type.Array(FunnelStepCounts),
})
export type LiveFunnelCounts = Static<typeof LiveFunnelCounts>
