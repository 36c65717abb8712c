import Type, { type Static } from 'typebox'
import { ENVELOPE_VERSION, Origin, Source } from '../../schemas/envelope.ts'
import { ProfileChange, SegmentMembershipChange } from '../../schemas/profile.ts'

/**
 * The two messages the profile step publishes, as envelopes. They belong in schemas/envelope.ts
 * (beside SessionEnvelope, with the same envelope fields, and in AnyEnvelope) and their stage in
 * topology/subjects.ts; until then they live here and leave the operator through one cast
 * (`emissionOf` in logic.ts).
 */

/** The stage both are published on: `seg.<project>.profiles.<kg>`, routed by canonical user id. */
export const PROFILES_STAGE = 'profiles'

const envelopeFields = {
  v: Type.Literal(ENVELOPE_VERSION),
  project: Type.String(),
  id: Type.String(),
  time: Type.Number(),
  key: Type.String(),
  keyGroup: Type.Integer({ minimum: 0 }),
  source: Source,
}

export const ProfileEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('profile'), origin: Origin, data: ProfileChange })
export type ProfileEnvelope = Static<typeof ProfileEnvelope>

export const SegmentMembershipEnvelope = Type.Object({ ...envelopeFields, type: Type.Literal('segment_membership'), origin: Origin, data: SegmentMembershipChange })
export type SegmentMembershipEnvelope = Static<typeof SegmentMembershipEnvelope>
