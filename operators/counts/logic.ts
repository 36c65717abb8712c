import type { Counts, LiveCounts } from '../../schemas/counts.ts'
import { ENVELOPE_VERSION, type AnyEnvelope, type LiveCountsEnvelope, type Origin, type ProfileEnvelope, type SegmentMembershipEnvelope } from '../../schemas/envelope.ts'
import type { EventContext, Operator, TimerContext } from '../runtime/operator.ts'
import { coalescer, DEFAULT_PUBLISH_EVERY_MS, type Coalesced } from './coalesce.ts'

export { DEFAULT_PUBLISH_EVERY_MS } from './coalesce.ts'

/** The stage live counts are published on: `seg.<project>.counts.<kg>`, one message kept per subject. */
export const COUNTS_STAGE = 'counts'

export interface CountsOptions {
  /** Least event time between two publications of one key group, ms. Default 250 (`DEFAULT_PUBLISH_EVERY_MS`). */
  publishEveryMs?: number
}

/** What the step reads: membership changes; profile changes share the stage and are skipped. */
export type CountsInput = SegmentMembershipEnvelope | ProfileEnvelope

/**
 * One key group's counts in one project (the key is the key group: one state per project and
 * key group). Plain data, bounded by the number of levels and saved segments.
 */
export interface CountsState extends Coalesced {
  project: string
  keyGroup: number
  /** Event time of the newest change applied. */
  asOf: number
  counts: Counts
}

const empty = (): CountsState => ({
  project: '', keyGroup: 0, version: 0, asOf: 0, counts: { engagement: {}, segments: {} }, publishedVersion: 0, publishedAt: {}, source: 'live',
})

function add(table: Record<string, number>, name: string, delta: number): Record<string, number> {
  const next = { ...table }
  const count = (Object.hasOwn(next, name) ? next[name]! : 0) + delta
  if (count === 0) delete next[name]
  else next[name] = count
  return next
}

/** A membership change as a delta: one user leaves `from` and joins `to` of its dimension. */
export function applyChange(counts: Counts, change: SegmentMembershipEnvelope['data']): Counts {
  const field = change.dimension === 'engagement' ? 'engagement' : 'segments'
  let table = counts[field]
  if (change.from !== undefined) table = add(table, change.from, -1)
  if (change.to !== undefined) table = add(table, change.to, 1)
  return { ...counts, [field]: table }
}

/** The publication of a state: its absolute counts under its version. */
export function liveCountsOf(state: CountsState): LiveCountsEnvelope {
  const data: LiveCounts = { keyGroup: state.keyGroup, version: state.version, asOf: state.asOf, counts: state.counts }
  return {
    v: ENVELOPE_VERSION, type: 'live_counts', project: state.project, id: `counts:${state.keyGroup}:${state.version}`,
    time: state.asOf, key: String(state.keyGroup), keyGroup: state.keyGroup, source: state.source, data,
  }
}

/**
 * Live counts: per project and key group, users per engagement level and per saved segment,
 * kept by applying each `segment_membership` change of the profile step as a delta. Publishes
 * the absolute counts with their version on the `counts` stage, coalesced in event time: a
 * change publishes at once when the key group's watermark has moved `publishEveryMs` since the
 * last publication, else when it does (a timer). Pure; docs/live.md.
 */
export function createCounts(options: CountsOptions = {}): Operator<CountsState, CountsInput> {
  const publication = coalescer<CountsState>(options.publishEveryMs ?? DEFAULT_PUBLISH_EVERY_MS, (state) => ({
    stage: COUNTS_STAGE, project: state.project, keyGroup: state.keyGroup, envelope: liveCountsOf(state),
  }))

  return {
    stepId: 'live-counts',
    // keys are key group numbers, not users: an identity merge (an anonymous id "3", say) moves nothing
    keyedByUser: false,
    init: empty,
    toInput(envelope: AnyEnvelope, _origin: Origin): CountsInput {
      if (envelope.type === 'segment_membership' || envelope.type === 'profile') return envelope
      throw new Error(`live-counts reads segment_membership (and skips profile) messages, got ${envelope.type}`)
    },
    // one state per (project, key group): the kernel's keys are per project already
    keyOf: (input) => String(input.keyGroup),
    onEvent(state, input, context: EventContext) {
      if (input.type !== 'segment_membership') return publication.unchanged(state)
      return publication.changed({
        ...state,
        project: input.project,
        keyGroup: input.keyGroup,
        version: state.version + 1,
        asOf: Math.max(state.asOf, input.time),
        counts: applyChange(state.counts, input.data),
        source: input.source,
      }, context.watermark)
    },
    onTimer(state, now: number, _context?: TimerContext) {
      return publication.timer(state, now)
    },
  }
}
