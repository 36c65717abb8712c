import type { EnrichedContext } from '../../schemas/enriched.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type MergeEnvelope, type Origin, type RawEventEnvelope } from '../../schemas/envelope.ts'
import { eventNameOf, type SegmentMessage } from '../../schemas/segment.ts'
import { keyGroupOf } from '../../topology/subjects.ts'
import type { Emission, Operator } from '../runtime/operator.ts'
import { DEDUP_DEFAULTS, emptySeen, markSeen, type DedupOptions, type SeenIds } from './dedup.ts'
import { identityStep, type IdentityState } from './identity.ts'

export interface EnrichInput {
  envelope: RawEventEnvelope
  origin: Origin
}

/** Per raw routing key (an anonymous id, or a user id sent without one). Bounded: see docs/identity.md. */
export interface EnrichState {
  identity: IdentityState
  seen: SeenIds
  /** The key's newest event time, ms. */
  newest: number
}

export interface EnrichOptions {
  keyGroups: number
  /** Device, channel, geo and bot flag of a message (operators/enrich/context.ts). Pure. */
  contextOf?: (message: SegmentMessage) => EnrichedContext
  dedup?: Partial<DedupOptions>
}

/**
 * enrich: drops late duplicates, links identities, derives the context, and
 * re-keys each event by its canonical user. Keyed by the raw routing key, so
 * every message of one anonymous id meets its identity state in order.
 */
export function createEnrich(options: EnrichOptions): Operator<EnrichState, EnrichInput> {
  const dedup = { ...DEDUP_DEFAULTS, ...options.dedup }
  return {
    stepId: 'enrich',
    init: () => ({ identity: {}, seen: emptySeen(), newest: Number.NEGATIVE_INFINITY }),
    toInput(envelope, origin) {
      if (envelope.type !== 'raw_event') throw new Error(`enrich reads raw_event messages, got ${envelope.type}`)
      return { envelope, origin }
    },
    keyOf: (input) => input.envelope.key,
    onEvent(state, { envelope, origin }) {
      const message = envelope.data
      const newest = Math.max(state.newest, envelope.time)
      const seen: SeenIds | undefined = markSeen(state.seen, message.messageId, envelope.time, newest, dedup)
      // re-sent after the stream's duplicate window: counted once already
      if (!seen) return { state, emit: [] }
      const step = identityStep(state.identity, envelope.key, message)
      const canonicalId = step.canonicalId
      const keyGroup = keyGroupOf(canonicalId, options.keyGroups)
      const enriched: EnrichedEventEnvelope = {
        v: ENVELOPE_VERSION,
        type: 'enriched_event',
        project: envelope.project,
        id: envelope.id,
        time: envelope.time,
        key: canonicalId,
        keyGroup,
        source: envelope.source,
        origin,
        data: { name: eventNameOf(message), canonicalId, message, ...(options.contextOf ? { context: options.contextOf(message) } : {}) },
      }
      const emit: Emission[] = [{ stage: 'enriched', project: envelope.project, keyGroup, envelope: enriched }]
      if (step.merge) {
        // after every event routed under `from`: its key group sees the merge last
        const { from, into } = step.merge
        const merge: MergeEnvelope = {
          v: ENVELOPE_VERSION, type: 'merge', project: envelope.project, id: `${envelope.id}:merge`, time: envelope.time,
          key: from, keyGroup: keyGroupOf(from, options.keyGroups), source: envelope.source, data: { from, into },
        }
        emit.push({ stage: 'enriched', project: envelope.project, keyGroup: merge.keyGroup, envelope: merge })
      }
      return { state: { identity: step.state, seen, newest }, emit }
    },
  }
}
