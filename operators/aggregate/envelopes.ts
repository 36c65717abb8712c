import type { Stage } from '../../topology/subjects.ts'

/** The envelope the aggregates step publishes lives with the others, in schemas/envelope.ts. */
export { AggregateEnvelope } from '../../schemas/envelope.ts'

/** `seg.<project>.aggregates.<kg>`, routed by the window and group (all partials of one group in one subject). */
export const AGGREGATES_STAGE: Stage = 'aggregates'
