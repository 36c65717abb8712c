import type { EngagementLevel } from '../../schemas/profile.ts'
import { localDayOf } from './calendar.ts'

/**
 * The engagement score: RFM-style, from three things the per-day counts already hold, as of a day.
 * Written out with its reasoning in docs/profiles.md; the constants are named there.
 *
 *   recency   R = 1 while the user was last seen at most 2 days ago, then falls linearly to 0 at 30 days
 *   frequency F = active days among the last 30, up to 20, / 20
 *   activity  A = ln(1 + events in the last 30 days) / ln(1 + 500), at most 1
 *   score       = round(100 × R × (0.6 F + 0.4 A))        (0-100)
 *
 * Only days count, never the time of day: the score changes at local midnights and nowhere else,
 * which is what lets the operator know exactly when a user's level will next change.
 */

/** The window frequency and activity look at, in days, today included. */
export const WINDOW_DAYS = 30
/** Days without an event that cost nothing: last seen today, yesterday or the day before. */
export const RECENCY_GRACE_DAYS = 2
/** Active days in the window that count as fully frequent (two days out of three). */
export const FREQUENT_DAYS = 20
/** Events in the window that count as fully active (about 17 a day); log-scaled below that. */
export const ACTIVE_EVENTS = 500
export const FREQUENCY_WEIGHT = 0.6
export const ACTIVITY_WEIGHT = 0.4

/** Score thresholds for Medium, Medium-High and High: the project setting's default. */
export const DEFAULT_THRESHOLDS: readonly [number, number, number] = [25, 50, 75]

export const ENGAGEMENT_LEVELS = ['Low', 'Medium', 'Medium-High', 'High'] as const satisfies readonly EngagementLevel[]

/** What the score is computed from: a user's newest event and their events per local day. */
export interface Activity {
  /** Local day of the user's newest event. */
  lastDay: number
  /** Days with events (days with none may be left out), in any order. */
  days: ReadonlyArray<{ day: number; events: number }>
}

export interface Engagement {
  level: EngagementLevel
  /** 0-100, an integer. */
  score: number
  /** Local day the score is as of. */
  day: number
  /** Whole local days since the newest event. */
  recencyDays: number
  /** Days with at least one event among the 30 ending on `day`. */
  activeDays: number
  /** Events in those 30 days. */
  events: number
}

export function levelOf(score: number, thresholds: readonly [number, number, number] = DEFAULT_THRESHOLDS): EngagementLevel {
  if (score < thresholds[0]) return 'Low'
  if (score < thresholds[1]) return 'Medium'
  if (score < thresholds[2]) return 'Medium-High'
  return 'High'
}

const LOG_ACTIVE_EVENTS = Math.log1p(ACTIVE_EVENTS)

const recencyFactor = (recencyDays: number) =>
  recencyDays <= RECENCY_GRACE_DAYS ? 1 : Math.max(0, (WINDOW_DAYS - recencyDays) / (WINDOW_DAYS - RECENCY_GRACE_DAYS))

/** The score from its three inputs. */
export function scoreOf(recencyDays: number, activeDays: number, events: number): number {
  const frequency = Math.min(activeDays, FREQUENT_DAYS) / FREQUENT_DAYS
  const intensity = Math.min(1, Math.log1p(events) / LOG_ACTIVE_EVENTS)
  return Math.round(100 * recencyFactor(recencyDays) * (FREQUENCY_WEIGHT * frequency + ACTIVITY_WEIGHT * intensity))
}

/** The score as of local day `day` (not before the newest event's day: an earlier one counts as that day). */
export function engagementOnDay(activity: Activity, day: number, thresholds: readonly [number, number, number] = DEFAULT_THRESHOLDS): Engagement {
  const today = Math.max(day, activity.lastDay)
  let activeDays = 0
  let events = 0
  for (const entry of activity.days) {
    if (entry.events > 0 && entry.day > today - WINDOW_DAYS && entry.day <= today) {
      activeDays++
      events += entry.events
    }
  }
  const recencyDays = today - activity.lastDay
  const score = scoreOf(recencyDays, activeDays, events)
  return { level: levelOf(score, thresholds), score, day: today, recencyDays, activeDays, events }
}

/**
 * A user's engagement as of `asOf` (ms, event time: the project's watermark or an explicit time,
 * never the wall clock), in the project's timezone. Takes a profile's state as it is. An `asOf`
 * before the user's newest event counts as that event's day; `asOf` = +Infinity is "long after":
 * score 0.
 */
export function engagementOf(
  activity: Omit<Activity, 'lastDay'> & { lastDay?: number }, asOf: number, options: { timezone: string; thresholds?: readonly [number, number, number] },
): Engagement {
  const { lastDay, days } = activity
  if (lastDay === undefined) {
    // no event yet (a profile state before its first event)
    const day = Number.isFinite(asOf) ? localDayOf(asOf, options.timezone) : 0
    return { level: levelOf(0, options.thresholds), score: 0, day, recencyDays: 0, activeDays: 0, events: 0 }
  }
  const day = Number.isFinite(asOf) ? localDayOf(asOf, options.timezone) : asOf > 0 ? lastDay + WINDOW_DAYS : lastDay
  return engagementOnDay({ lastDay, days }, day, options.thresholds)
}

/**
 * The first local day after `day` on which the level differs, with no new event; undefined when
 * it never will (the score is 0 from the newest event's day + 30 on, and it never rises by itself).
 * Slides the window one day at a time: every day after the newest event only loses days.
 */
export function nextLevelChangeDay(activity: Activity, day: number, thresholds: readonly [number, number, number] = DEFAULT_THRESHOLDS): number | undefined {
  const today = Math.max(day, activity.lastDay)
  const current = engagementOnDay(activity, today, thresholds)
  const leaving = new Map<number, number>()
  for (const entry of activity.days) {
    if (entry.events > 0 && entry.day > today - WINDOW_DAYS && entry.day <= today) leaving.set(entry.day, entry.events)
  }
  let { activeDays, events } = current
  for (let next = today + 1; next <= activity.lastDay + WINDOW_DAYS; next++) {
    const left = leaving.get(next - WINDOW_DAYS)
    if (left !== undefined) {
      activeDays--
      events -= left
    }
    if (levelOf(scoreOf(next - activity.lastDay, activeDays, events), thresholds) !== current.level) return next
  }
  return undefined
}
