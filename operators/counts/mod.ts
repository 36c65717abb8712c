export { applyChange, createCounts, liveCountsOf, COUNTS_STAGE, DEFAULT_PUBLISH_EVERY_MS } from './logic.ts'
export type { CountsInput, CountsOptions, CountsState } from './logic.ts'
