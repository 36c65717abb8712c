export {
  applyFunnelControl, createFunnel, DEFAULT_FUNNEL_HORIZON_MS, DEFAULT_MAX_EVENTS, FUNNEL_STEP_ID, SESSION_START,
} from './logic.ts'
export type { FunnelDefinitions, FunnelInput, FunnelOptions, FunnelState, SeenSession, SentProgress, UserFunnel } from './logic.ts'
export {
  advance, better, compileFunnel, emptyMatch, filterTest, insert, maskOf, mergeTracks, newestOf, newTrack, removeEvents, replay, summarize, summarizeTrack,
  EXCLUSION_SHIFT, MAX_LIVE_ATTEMPTS, PASSIVE_BIT, MODE_ANY_ORDER, MODE_SEQUENTIAL, MODE_STRICT,
} from './match.ts'
export type { Attempt, CompiledFunnel, InsertOutcome, MatchState, ModeCode, PropertyLookup, Summary, Track, TrackLimits } from './match.ts'
export { FunnelProgressEnvelope, FUNNELS_STAGE } from './envelopes.ts'
