/** The profile step's stage and messages; the envelopes live with the others in schemas/envelope.ts. */
export { ProfileEnvelope, SegmentMembershipEnvelope } from '../../schemas/envelope.ts'

/** The stage both are published on: `seg.<project>.profiles.<kg>`, routed by canonical user id. */
export const PROFILES_STAGE = 'profiles'
