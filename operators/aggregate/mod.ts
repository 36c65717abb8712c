export { createAggregates, groupKeyOf, DEFAULT_MAX_GROUPS_PER_WINDOW, MAX_DIMENSION_LENGTH, OTHER } from './logic.ts'
export type { AggregateInput, AggregateOptions, AggregateState, GroupState, WindowState } from './logic.ts'
export { applyControl, assertDefinition, definitionsInForce, DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_DEFINITIONS, DEFAULT_EARLY_EVERY_MS } from './definitions.ts'
export type { Definitions, ResolvedDefinition } from './definitions.ts'
export { dayWindowOf, hourWindowOf, windowKindOf, windowProblem, windowsOf, MAX_WINDOWS_PER_EVENT } from './windows.ts'
export type { WindowBounds } from './windows.ts'
export { addUser, countUsers, mergeUsers, noUsers, DEFAULT_EXACT_LIMIT, DISTINCT_DEFAULTS } from './distinct.ts'
export type { DistinctOptions, DistinctUsers } from './distinct.ts'
export {
  addToSketch, emptySketch, estimateSketch, mergeSketches, relativeStandardError, userHash, DEFAULT_PRECISION, HASH_BITS, MAX_PRECISION, MIN_PRECISION,
} from './hyperloglog.ts'
export { AggregateEnvelope, AGGREGATES_STAGE } from './envelopes.ts'
