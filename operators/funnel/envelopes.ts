import type { Stage } from '../../topology/subjects.ts'

/**
 * The funnel step's output. Its envelope lives in schemas/envelope.ts (in AnyEnvelope, decoded by
 * the codec) and its stage in topology/subjects.ts; these names stay here for the operator's
 * readers.
 */
export { FunnelProgressEnvelope } from '../../schemas/envelope.ts'

/** The stage progress is published on: `seg.<project>.funnels.<kg>`, routed by canonical user id. */
export const FUNNELS_STAGE = 'funnels' satisfies Stage
