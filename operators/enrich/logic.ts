import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type Origin, type RawEventEnvelope } from '../../schemas/envelope.ts'
import { eventNameOf } from '../../schemas/segment.ts'
import { keyGroupOf } from '../../topology/subjects.ts'
import type { Operator } from '../runtime/operator.ts'

export interface EnrichInput {
  envelope: RawEventEnvelope
  origin: Origin
}

export interface EnrichOptions {
  keyGroups: number
}

/**
 * Minimal enrich: names the event, resolves the canonical user (userId when
 * known, else anonymousId) and re-keys the event by it. Identity stitching,
 * device, channel, geo and bots come with the enrich issue.
 */
export function createEnrich(options: EnrichOptions): Operator<null, EnrichInput> {
  return {
    stepId: 'enrich',
    stateless: true,
    init: () => null,
    toInput(envelope, origin) {
      if (envelope.type !== 'raw_event') throw new Error(`enrich reads raw_event messages, got ${envelope.type}`)
      return { envelope, origin }
    },
    keyOf: (input) => input.envelope.key,
    onEvent(state, { envelope, origin }) {
      const message = envelope.data
      const canonicalId = (message.userId ?? message.anonymousId)!
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
        data: { name: eventNameOf(message), canonicalId, message },
      }
      return { state, emit: [{ stage: 'enriched', project: envelope.project, keyGroup, envelope: enriched }] }
    },
  }
}
