import type { EnrichedEventEnvelope } from '../../schemas/envelope.ts'
import type { EventRow } from '../../store/store.ts'

const COLUMN_FIELDS = new Set(['type', 'messageId', 'anonymousId', 'userId', 'event', 'properties', 'traits', 'context', 'timestamp', 'receivedAt'])

/** An enriched event as an events-table row. Pure. */
export function eventRowOf(envelope: EnrichedEventEnvelope, enrichedSeq: number): EventRow {
  const message = envelope.data.message
  const extra: Record<string, unknown> = {}
  for (const [field, value] of Object.entries(message)) if (!COLUMN_FIELDS.has(field)) extra[field] = value
  // `event` is the name column only for a track; anywhere else it is kept as sent
  if (message.type !== 'track' && message.event !== undefined) extra.event = message.event
  return {
    project: envelope.project,
    messageId: envelope.id,
    eventTime: envelope.time,
    receivedAt: Date.parse(message.receivedAt),
    type: message.type,
    name: envelope.data.name,
    canonicalId: envelope.data.canonicalId,
    anonymousId: message.anonymousId ?? null,
    userId: message.userId ?? null,
    source: envelope.source,
    keyGroup: envelope.keyGroup,
    rawStream: envelope.origin.stream,
    rawSeq: envelope.origin.seq,
    enrichedSeq,
    properties: message.properties ?? {},
    traits: message.traits ?? null,
    context: message.context ?? {},
    extra,
  }
}
