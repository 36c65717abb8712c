import Type, { type Static } from 'typebox'
import { AggregateResult } from '../../schemas/aggregate.ts'
import { ENVELOPE_VERSION, Origin, Source } from '../../schemas/envelope.ts'

/**
 * The message the aggregates step publishes, as an envelope. It belongs in schemas/envelope.ts (in
 * AnyEnvelope) and its stage in topology/subjects.ts; until the step is wired it lives here and
 * leaves the operator through one cast (`emissionOf` in logic.ts), as the profile step's did.
 */

/** `seg.<project>.aggregates.<kg>`, routed by the window and group (all partials of one group in one subject). */
export const AGGREGATES_STAGE = 'aggregates'

export const AggregateEnvelope = Type.Object({
  v: Type.Literal(ENVELOPE_VERSION),
  project: Type.String(),
  /** `aggregate:<group key>:<source>:<key group>:<version>`. */
  id: Type.String(),
  /** The window's start. */
  time: Type.Number(),
  /** The group key: `<definition>@<definitionVersion>|<window start>|<name>|<dimension values joined by |>`. */
  key: Type.String(),
  /** keyGroupOf(key): every partial of one window and group lands in one subject. */
  keyGroup: Type.Integer({ minimum: 0 }),
  source: Source,
  type: Type.Literal('aggregate'),
  /** The last input of the producing key before this result (a timer's results carry it too). */
  origin: Origin,
  data: AggregateResult,
})
export type AggregateEnvelope = Static<typeof AggregateEnvelope>
