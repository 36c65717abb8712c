export {
  createProfile, profileOf, profileValuesOf, traitUpdatesOf,
  DEFAULT_DAY_HISTORY, DEFAULT_PUBLISH_EVERY_MS, MAX_EVENT_NAMES, MAX_FIELD_LENGTH, MAX_TRAITS, MAX_TRAIT_NAME_LENGTH, MAX_TRAIT_VALUE_LENGTH,
} from './logic.ts'
export type { DayCounts, ProfileInput, ProfileOptions, ProfileState, Stamp, StoredDevice, StoredEngagement, StoredGeo, StoredTrait, TrackedSession } from './logic.ts'
export {
  engagementOf, engagementOnDay, levelOf, nextLevelChangeDay, scoreOf,
  ACTIVE_EVENTS, ACTIVITY_WEIGHT, DEFAULT_THRESHOLDS, ENGAGEMENT_LEVELS, FREQUENCY_WEIGHT, FREQUENT_DAYS, RECENCY_GRACE_DAYS, WINDOW_DAYS,
} from './engagement.ts'
export type { Activity, Engagement } from './engagement.ts'
export { acquisitionMonthOf, dayLabelOf, dayOfLabel, localDayOf, startOfLocalDay, DAY_MS } from './calendar.ts'
export { ProfileEnvelope, SegmentMembershipEnvelope, PROFILES_STAGE } from './envelopes.ts'
export { applySegmentControl, definitionsOf, matches, segmentChanges, segmentDefinitionOf, segmentsOf, SEGMENT_CONTROL_PREFIX } from './segments.ts'
export type { LiveCondition, ProfileDefinitions, ProfileValues, SegmentDefinition } from './segments.ts'
