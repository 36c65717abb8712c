import Type, { type Static } from 'typebox'
import { ENVELOPE_VERSION, Origin, Source } from '../../schemas/envelope.ts'
import { FunnelProgress } from '../../schemas/funnel.ts'

/**
 * The message the funnel step publishes, as an envelope. It belongs in schemas/envelope.ts (beside
 * SessionEnvelope, in AnyEnvelope) and its stage in topology/subjects.ts; until another change adds
 * them it lives here and leaves the operator through one cast (`emissionOf` in logic.ts).
 */

/** The stage progress is published on: `seg.<project>.funnels.<kg>`, routed by canonical user id. */
export const FUNNELS_STAGE = 'funnels'

export const FunnelProgressEnvelope = Type.Object({
  v: Type.Literal(ENVELOPE_VERSION),
  project: Type.String(),
  /** `<funnelId>:<funnelVersion>:<canonicalId>:<version>`. */
  id: Type.String(),
  /** Event time of the furthest step reached (`asOf` when none is). */
  time: Type.Number(),
  key: Type.String(),
  keyGroup: Type.Integer({ minimum: 0 }),
  source: Source,
  type: Type.Literal('funnel_progress'),
  origin: Origin,
  data: FunnelProgress,
})
export type FunnelProgressEnvelope = Static<typeof FunnelProgressEnvelope>
