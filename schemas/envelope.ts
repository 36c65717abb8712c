import Type, { type Static } from 'typebox'
import { EnrichedContext } from './enriched.ts'
import { SegmentMessage } from './segment.ts'
import { ProfileChange, SegmentMembershipChange } from './profile.ts'
import { SessionChange } from './session.ts'
import { LiveCounts, LiveFunnelCounts } from './counts.ts'
import { FunnelProgress } from './funnel.ts'
import { Source } from './source.ts'
import { AggregateResult } from './aggregate.ts'

/** Bumped only for incompatible envelope changes; additive fields keep the version. */
export const ENVELOPE_VERSION = 1

export { Source } from './source.ts'

/** The stored message a derived message comes from. */
export const Origin = Type.Object({
  /** Stream holding the originating message, e.g. SEG_RAW. */
  stream: Type.String(),
  /** Its stream sequence. */
  seq: Type.Integer({ minimum: 0 }),
})
export type Origin = Static<typeof Origin>

const envelopeFields = {
  v: Type.Literal(ENVELOPE_VERSION),
  project: Type.String(),
  /** Message id, unique within the project (the Segment messageId for events). */
  id: Type.String(),
  /** Event time, ms since the epoch (UTC). */
  time: Type.Number(),
  /** Routing key the key group was computed from. */
  key: Type.String(),
  keyGroup: Type.Integer({ minimum: 0 }),
  source: Source,
}

/** On `seg.<project>.raw|import.<kg>`: a message as the collector accepted it. */
export const RawEventEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('raw_event'), data: SegmentMessage })
export type RawEventEnvelope = Static<typeof RawEventEnvelope>

export const EnrichedEvent = Type.Object({
  /** The name the event is counted under (see eventNameOf). */
  name: Type.String(),
  /** userId when known, else anonymousId: the key every downstream operator uses. */
  canonicalId: Type.String(),
  /** The original message, unchanged (original ids included). */
  message: SegmentMessage,
  /** Device, acquisition channel, geo and the bot flag (absent only in messages from before enrich derived them). */
  context: Type.Optional(EnrichedContext),
})
export type EnrichedEvent = Static<typeof EnrichedEvent>

/** On `seg.<project>.enriched.<kg>`, routed by canonical user id. */
export const EnrichedEventEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('enriched_event'), origin: Origin, data: EnrichedEvent })
export type EnrichedEventEnvelope = Static<typeof EnrichedEventEnvelope>

/** Raw bytes (msgpack bin). */
const Bytes = Type.Refine(Type.Unsafe<Uint8Array>({ description: 'bytes' }), (value) => value instanceof Uint8Array)

export const DeadLetter = Type.Object({
  /** The step that refused the message (`collector` at the HTTP edge). */
  stepId: Type.String(),
  reason: Type.String(),
  /** The payload as received: JSON text at the edge, the raw bytes inside. */
  payload: Type.Union([Type.String(), Bytes]),
  /** Where the refused message was stored, when it was. */
  subject: Type.Optional(Type.String()),
  seq: Type.Optional(Type.Integer()),
})
export type DeadLetter = Static<typeof DeadLetter>

/** On `seg.<project>.dlq.<kg>`. */
export const DeadLetterEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('dead_letter'), data: DeadLetter })
export type DeadLetterEnvelope = Static<typeof DeadLetterEnvelope>

export const Control = Type.Object({
  /** The step whose behaviour it changes. */
  stepId: Type.String(),
  /** What is defined, e.g. a funnel id. */
  name: Type.String(),
  version: Type.Integer({ minimum: 1 }),
  /** The definition; null deletes it. */
  definition: Type.Unknown(),
})
export type Control = Static<typeof Control>

/**
 * A definition change (funnel, segment, setting) for one step, published into
 * every key group of the step's input stage: its position in each key group's
 * input sequence is where it takes effect, so a replay applies it at the same
 * point. Other readers of the stage skip it.
 */
export const ControlEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('control'), data: Control })
export type ControlEnvelope = Static<typeof ControlEnvelope>

/**
 * An identity link, published by enrich on the enriched stage into the key group
 * of `from`, after every event it routed there under `from`: each downstream
 * operator with per-user state moves the state of `from` into `into` (docs/identity.md).
 */
export const Merge = Type.Object({
  /** The anonymous id that has just been linked. */
  from: Type.String(),
  /** The user id it is linked to: the canonical id from now on. */
  into: Type.String(),
})
export type Merge = Static<typeof Merge>
export const MergeEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('merge'), data: Merge })
export type MergeEnvelope = Static<typeof MergeEnvelope>

/**
 * The runtime's half of a merge: the operator `stepId` that held the state of
 * `from` sends it to the key group of `into` on its own input stage. Other
 * readers of the stage skip it.
 */
export const MergeStateEnvelope = Type.Object({
  ...envelopeFields,
  type: Type.Literal('merge_state'),
  data: Type.Object({ stepId: Type.String(), from: Type.String(), into: Type.String(), state: Type.Unknown(), lastTime: Type.Number() }),
})
export type MergeStateEnvelope = Static<typeof MergeStateEnvelope>

/** On `seg.<project>.sessions.<kg>`, routed by canonical user id. */
export const SessionEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('session'), origin: Origin, data: SessionChange })
export type SessionEnvelope = Static<typeof SessionEnvelope>

/**
 * On `seg.<project>.funnels.<kg>`, routed by canonical user id: one user's progress in one funnel
 * version, as it now stands (docs/funnels.md, "Messages"). `id` =
 * `<funnelId>:<funnelVersion>:<canonicalId>:<version>`; `time` = the event time of the furthest step
 * reached (`asOf` when none is). Consumers keep the highest `data.version` per (funnelId,
 * funnelVersion, canonicalId).
 */
export const FunnelProgressEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('funnel_progress'), origin: Origin, data: FunnelProgress })
export type FunnelProgressEnvelope = Static<typeof FunnelProgressEnvelope>

/** On `seg.<project>.profiles.<kg>`, routed by canonical user id: a user's profile as it now stands (docs/profiles.md). */
export const ProfileEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('profile'), origin: Origin, data: ProfileChange })
export type ProfileEnvelope = Static<typeof ProfileEnvelope>

/** On `seg.<project>.profiles.<kg>`: a user moved from one engagement level to another (docs/profiles.md). */
export const SegmentMembershipEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('segment_membership'), origin: Origin, data: SegmentMembershipChange })
export type SegmentMembershipEnvelope = Static<typeof SegmentMembershipEnvelope>

/**
 * On `seg.<project>.aggregates.<kg>`, routed by the group key (every partial of one window and
 * group in one subject): one key group's and source's partial aggregate of a window and group, as
 * it now stands (docs/aggregates.md). `id` = `aggregate:<group key>:<source>:<key group>:<version>`,
 * `time` = the window's start, `key` = the group key
 * `<definition>@<definitionVersion>|<window start>|<JSON [name, ...dimension values]>`.
 */
export const AggregateEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('aggregate'), origin: Origin, data: AggregateResult })
export type AggregateEnvelope = Static<typeof AggregateEnvelope>

/** On `seg.<project>.counts.<kg>`: one key group's absolute, versioned live counts (docs/live.md). Not routed by a user: `key` is the key group. */
export const LiveCountsEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('live_counts'), data: LiveCounts })
export type LiveCountsEnvelope = Static<typeof LiveCountsEnvelope>

/** On `seg.<project>.funnel_counts.<kg>`: one key group's absolute, versioned funnel step counts (docs/live.md). `key` is the key group. */
export const LiveFunnelCountsEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('live_funnel_counts'), data: LiveFunnelCounts })
export type LiveFunnelCountsEnvelope = Static<typeof LiveFunnelCountsEnvelope>

/**
 * Event time has reached `time` for the project and source in this key group: published by the
 * collector into every key group (gateway/collector/watermarks.ts) and forwarded by every
 * operator to its outputs, so a quiet key group's timers still fire. Carries no data.
 */
export const WatermarkEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('watermark') })
export type WatermarkEnvelope = Static<typeof WatermarkEnvelope>

export const AnyEnvelope = Type.Union([
  RawEventEnvelope, EnrichedEventEnvelope, DeadLetterEnvelope, ControlEnvelope, MergeEnvelope, MergeStateEnvelope, SessionEnvelope,
  ProfileEnvelope, SegmentMembershipEnvelope, WatermarkEnvelope, AggregateEnvelope,
  FunnelProgressEnvelope, LiveCountsEnvelope, LiveFunnelCountsEnvelope,
])
export type AnyEnvelope = Static<typeof AnyEnvelope>
