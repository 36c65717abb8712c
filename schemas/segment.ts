import Type, { type Static } from 'typebox'

/** Segment message types the collector accepts. */
export const SEGMENT_TYPES = ['track', 'identify', 'page', 'screen', 'alias', 'group'] as const
export type SegmentType = (typeof SEGMENT_TYPES)[number]

const Json = Type.Record(Type.String(), Type.Unknown())

/**
 * A Segment-spec message after the collector has stamped it: messageId,
 * receivedAt and a skew-corrected timestamp are always present. Unknown fields
 * are kept (additionalProperties), not dropped.
 */
export const SegmentMessage = Type.Object(
  {
    type: Type.Union([Type.Literal('track'), Type.Literal('identify'), Type.Literal('page'), Type.Literal('screen'), Type.Literal('alias'), Type.Literal('group')]),
    messageId: Type.String({ minLength: 1, maxLength: 256 }),
    anonymousId: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    userId: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    event: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    name: Type.Optional(Type.String({ maxLength: 256 })),
    properties: Type.Optional(Json),
    traits: Type.Optional(Json),
    context: Type.Optional(Json),
    previousId: Type.Optional(Type.String({ minLength: 1 })),
    groupId: Type.Optional(Type.String({ minLength: 1 })),
    /** Event time after clock-skew correction (ISO 8601). */
    timestamp: Type.String(),
    /** The client's own timestamp, when it differed from the corrected one. */
    originalTimestamp: Type.Optional(Type.String()),
    sentAt: Type.Optional(Type.String()),
    /** When the collector accepted the message (ISO 8601). */
    receivedAt: Type.String(),
  },
  { additionalProperties: true },
)
export type SegmentMessage = Static<typeof SegmentMessage>

/** The name an event is counted under: a track's `event`, `$page` for a page, ... */
export function eventNameOf(message: Pick<SegmentMessage, 'type' | 'event'>): string {
  return message.type === 'track' ? message.event ?? '' : `$${message.type}`
}
