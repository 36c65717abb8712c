import Type, { type Static } from 'typebox'

const MINUTE = 60_000

/** Processing settings; every field has a default so old records stay valid. */
export const ProjectSettings = Type.Object({
  /** How far behind the newest event an event may arrive and still land in an open window. Default 5 minutes. */
  allowedLatenessMs: Type.Integer({ minimum: 0, default: 5 * MINUTE }),
  /** Inactivity that ends a session. Default 30 minutes. */
  sessionGapMs: Type.Integer({ minimum: MINUTE, default: 30 * MINUTE }),
  /** Engagement score thresholds (0-100) for Medium, Medium-High, High. Default 25 / 50 / 75. */
  engagementThresholds: Type.Tuple([Type.Number(), Type.Number(), Type.Number()], { default: [25, 50, 75] }),
})
export type ProjectSettings = Static<typeof ProjectSettings>

export const DEFAULT_SETTINGS: ProjectSettings = {
  allowedLatenessMs: 5 * MINUTE,
  sessionGapMs: 30 * MINUTE,
  engagementThresholds: [25, 50, 75],
}

export const ApiKeyRecord = Type.Object({
  /** First characters of the key, to tell keys apart in listings. */
  prefix: Type.String(),
  /** SHA-256 of the key, hex: the key itself is shown once, at creation. */
  sha256: Type.String(),
  createdAt: Type.String(),
})

export const Project = Type.Object({
  id: Type.String(),
  name: Type.String(),
  /** IANA timezone; every calendar bucket (acquisition month, day, week) uses it. */
  timezone: Type.String(),
  createdAt: Type.String(),
  /** Public keys trackers and SDKs send events with. */
  writeKeys: Type.Array(Type.String()),
  /** Secret keys for the query API and imports. */
  apiKeys: Type.Array(ApiKeyRecord),
  settings: ProjectSettings,
})
export type Project = Static<typeof Project>

export function isValidTimezone(timezone: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: timezone })
    return true
  } catch {
    return false
  }
}
