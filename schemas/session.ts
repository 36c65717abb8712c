import Type, { type Static } from 'typebox'

/** One session of one canonical user, as sessionize last computed it. */
export const Session = Type.Object({
  /** Stable for the life of the session: `<canonicalId>:<event time of its first event, ms>` when it was opened. */
  sessionId: Type.String(),
  canonicalId: Type.String(),
  /** Event time of the first and the last event, ms. */
  start: Type.Number(),
  end: Type.Number(),
  durationMs: Type.Number({ minimum: 0 }),
  events: Type.Integer({ minimum: 1 }),
  /** Page and screen views. */
  pages: Type.Integer({ minimum: 0 }),
  entryPage: Type.Optional(Type.String()),
  exitPage: Type.Optional(Type.String()),
  /** Acquisition channel and device type of the session's first event. */
  channel: Type.Optional(Type.String()),
  device: Type.Optional(Type.String()),
  /** Event ids of the first event (what a funnel step "started a session" points at). */
  firstMessageId: Type.String(),
})
export type Session = Static<typeof Session>

export const SESSION_NAMES = ['$session_start', '$session_end', '$session_retract'] as const
export type SessionName = (typeof SESSION_NAMES)[number]

/**
 * On `seg.<project>.sessions.<kg>` (routed by canonical user id):
 * - `$session_start`: a session opened (live: at its first event);
 * - `$session_end`: a session closed, with its totals (when the watermark passed
 *   its last event plus the gap; again, with a higher version, if a late event changed it);
 * - `$session_retract`: a session withdrawn, because a late event or an identity
 *   merge joined it into another, which is then (re-)emitted with `$session_start`/`$session_end`.
 * Consumers keep the highest `version` per `sessionId`; a retracted session counts for nothing.
 */
export const SessionChange = Type.Object({
  name: Type.Union([Type.Literal('$session_start'), Type.Literal('$session_end'), Type.Literal('$session_retract')]),
  /** Increases with every change of this sessionId, so a sink applies only newer versions. */
  version: Type.Integer({ minimum: 1 }),
  session: Session,
})
export type SessionChange = Static<typeof SessionChange>
