import Type, { type Static } from 'typebox'

/** Engagement levels, lowest first (docs/profiles.md). */
export const EngagementLevel = Type.Union([Type.Literal('Low'), Type.Literal('Medium'), Type.Literal('Medium-High'), Type.Literal('High')])
export type EngagementLevel = Static<typeof EngagementLevel>

/** Where the user came from: their earliest event's acquisition (enrich), in the month of that event. */
export const ProfileAcquisition = Type.Object({
  /** `YYYY-MM` of the first event in the project's timezone: the acquisition cohort. */
  month: Type.String({ pattern: '^\\d{4}-\\d{2}$' }),
  /** Channel, UTM source / medium / campaign and referrer of the first event (absent when it had no enriched context). */
  channel: Type.Optional(Type.String()),
  source: Type.Optional(Type.String()),
  medium: Type.Optional(Type.String()),
  campaign: Type.Optional(Type.String()),
  referrerHost: Type.Optional(Type.String()),
})
export type ProfileAcquisition = Static<typeof ProfileAcquisition>

/** One local day (project timezone) of a user's activity. */
export const ProfileDay = Type.Object({
  /** `YYYY-MM-DD` in the project's timezone. */
  day: Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$' }),
  /** Events that day (bots excluded). */
  events: Type.Integer({ minimum: 0 }),
  /** Sessions that started that day. */
  sessions: Type.Integer({ minimum: 0 }),
  /** Events that day per event name (a track's `event`, `$page`, `$identify`, ...); names past the per-user cap are left out here but counted in `events`. */
  names: Type.Record(Type.String(), Type.Integer({ minimum: 1 })),
})
export type ProfileDay = Static<typeof ProfileDay>

export const ProfileEngagement = Type.Object({
  level: EngagementLevel,
  /** 0-100. */
  score: Type.Integer({ minimum: 0, maximum: 100 }),
  /** Event time (ms) the score is as of: the watermark, or the user's newest event when later. */
  asOf: Type.Number(),
  /** Whole days (project timezone) from the newest event to `asOf`. */
  recencyDays: Type.Integer({ minimum: 0 }),
  /** Days with an event among the 30 ending on `asOf`'s day. */
  activeDays: Type.Integer({ minimum: 0, maximum: 30 }),
  /** Events in those 30 days. */
  events: Type.Integer({ minimum: 0 }),
})
export type ProfileEngagement = Static<typeof ProfileEngagement>

/** What a query shows of one canonical user. */
export const Profile = Type.Object({
  canonicalId: Type.String(),
  /** Event time (ms) of the earliest and the newest event. */
  firstSeen: Type.Number(),
  lastSeen: Type.Number(),
  acquisition: ProfileAcquisition,
  /** Identify traits: `$set` overwrites (the latest by event time wins), `$set_once` only fills a trait never set. */
  traits: Type.Record(Type.String(), Type.Unknown()),
  /** Device of the newest event that had a known one (`type` not `unknown`). */
  device: Type.Optional(Type.Object({
    /** desktop | mobile | tablet | tv | console | wearable */
    type: Type.String(),
    browser: Type.Optional(Type.String()),
    os: Type.Optional(Type.String()),
  })),
  /** ISO 3166-1 alpha-2 country (and city) of the newest event that had one. */
  country: Type.Optional(Type.String()),
  city: Type.Optional(Type.String()),
  /** Every event and every session of the user, all time (bots excluded). */
  events: Type.Integer({ minimum: 0 }),
  sessions: Type.Integer({ minimum: 0 }),
  /** The last days (default 90, up to the newest event) with activity, oldest first: any rolling window is a sum over them. */
  days: Type.Array(ProfileDay),
  engagement: ProfileEngagement,
})
export type Profile = Static<typeof Profile>

/**
 * On `seg.<project>.profiles.<kg>` (routed by canonical user id): a user's profile as it now
 * stands, or, without `profile`, its end (an identity merge moved it into `mergedInto`).
 * Consumers keep the highest `version` per `canonicalId`.
 */
export const ProfileChange = Type.Object({
  canonicalId: Type.String(),
  /** Increases with every change of this user's profile, from 1. */
  version: Type.Integer({ minimum: 1 }),
  profile: Type.Optional(Profile),
  /** The profile no longer exists under this id: it was merged into this user's. */
  mergedInto: Type.Optional(Type.String()),
})
export type ProfileChange = Static<typeof ProfileChange>

/** The dimensions a user's segment membership is published for: engagement levels, and saved segments (docs/live.md). */
export const MembershipDimension = Type.Union([Type.Literal('engagement'), Type.Literal('segment')])
export type MembershipDimension = Static<typeof MembershipDimension>

/**
 * On `seg.<project>.profiles.<kg>`: a user left segment `from` and joined `to` of a dimension
 * (`from` absent: the user is new; `to` absent: the user is gone, merged into another). A live
 * count per segment adds 1 to `to` and takes 1 from `from`; the version (per user and dimension,
 * from 1, one step per change) lets a counter apply each change once and in order.
 */
export const EngagementMembershipChange = Type.Object({
  dimension: Type.Literal('engagement'),
  canonicalId: Type.String(),
  from: Type.Optional(EngagementLevel),
  to: Type.Optional(EngagementLevel),
  version: Type.Integer({ minimum: 1 }),
})
export type EngagementMembershipChange = Static<typeof EngagementMembershipChange>

/**
 * On `seg.<project>.profiles.<kg>`: a user entered (`to` = the saved segment's id) or left
 * (`from` = its id) a saved segment, never both in one message: a user may be in several saved
 * segments at once. The same counting rule as for engagement applies (add 1 to `to`, take 1 from
 * `from`). The version counts the user's saved-segment changes, all segments together, from 1.
 */
export const SavedSegmentMembershipChange = Type.Object({
  dimension: Type.Literal('segment'),
  canonicalId: Type.String(),
  from: Type.Optional(Type.String()),
  to: Type.Optional(Type.String()),
  version: Type.Integer({ minimum: 1 }),
})
export type SavedSegmentMembershipChange = Static<typeof SavedSegmentMembershipChange>

export const SegmentMembershipChange = Type.Union([EngagementMembershipChange, SavedSegmentMembershipChange])
export type SegmentMembershipChange = Static<typeof SegmentMembershipChange>
