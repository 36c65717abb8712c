import type { AggregateWindow, WindowKind } from '../../schemas/aggregate.ts'
import { localDayOf, startOfLocalDay } from '../profile/calendar.ts'

const MINUTE = 60_000
const HOUR = 60 * MINUTE

/** A hopping window puts an event in at most this many windows (`sizeMs / hopMs`), which bounds the work per event. */
export const MAX_WINDOWS_PER_EVENT = 24

export interface WindowBounds {
  /** Event time, ms; `end` exclusive. */
  start: number
  end: number
}

export const windowKindOf = (window: AggregateWindow): WindowKind => (window.kind === 'tumbling' ? window.unit : 'hopping')

/** Why a window specification cannot be used, or undefined when it can. */
export function windowProblem(window: AggregateWindow): string | undefined {
  if (window.kind === 'tumbling') return undefined
  if (window.hopMs > window.sizeMs) return `hopMs ${window.hopMs} is larger than sizeMs ${window.sizeMs}: every event must fall in a window`
  if (window.sizeMs / window.hopMs > MAX_WINDOWS_PER_EVENT) {
    return `sizeMs / hopMs is ${window.sizeMs / window.hopMs}: at most ${MAX_WINDOWS_PER_EVENT} windows per event`
  }
  return undefined
}

// most events fall on the same day as the one before: its bounds, per timezone, skip the calendar
const lastDays = new Map<string, Readonly<WindowBounds>>()

/** The local day (timezone) an instant falls on, as [start, end). */
export function dayWindowOf(time: number, timezone: string): Readonly<WindowBounds> {
  const last = lastDays.get(timezone)
  if (last && last.start <= time && time < last.end) return last
  const day = localDayOf(time, timezone)
  const bounds = { start: startOfLocalDay(day, timezone), end: startOfLocalDay(day + 1, timezone) }
  // where clocks fall back across midnight a day is two intervals and may not contain the instant: not cached
  if (bounds.start <= time && time < bounds.end) lastDays.set(timezone, Object.freeze(bounds))
  return bounds
}

/**
 * The local hour: whole hours counted from the local day's start, the last one cut at the next
 * day's start. Where the offset is whole hours this is the UTC hour; in Asia/Kolkata it starts at
 * :30 UTC; a day when clocks go forward has 23 of them, back 25, each a real hour long.
 */
export function hourWindowOf(time: number, timezone: string): WindowBounds {
  const day = dayWindowOf(time, timezone)
  if (time < day.start || time >= day.end) {
    // a zone whose clocks fall back across midnight: the local day is two intervals; use the UTC hour
    const start = Math.floor(time / HOUR) * HOUR
    return { start, end: start + HOUR }
  }
  const start = day.start + Math.floor((time - day.start) / HOUR) * HOUR
  return { start, end: Math.min(start + HOUR, day.end) }
}

/**
 * Every window of `window` that contains `time`, by ascending start. Tumbling windows give one;
 * hopping windows those starting at a multiple of `hopMs` in (time − sizeMs, time].
 */
export function windowsOf(time: number, window: AggregateWindow, timezone: string): Readonly<WindowBounds>[] {
  if (window.kind === 'tumbling') {
    if (window.unit === 'day') return [dayWindowOf(time, timezone)]
    if (window.unit === 'hour') return [hourWindowOf(time, timezone)]
    const start = Math.floor(time / MINUTE) * MINUTE
    return [{ start, end: start + MINUTE }]
  }
  const { sizeMs, hopMs } = window
  const windows: WindowBounds[] = []
  for (let k = Math.floor((time - sizeMs) / hopMs) + 1; k * hopMs <= time; k++) windows.push({ start: k * hopMs, end: k * hopMs + sizeMs })
  return windows
}
