/**
 * Calendar days in a project's timezone, as plain numbers: local day `d` is the calendar date of
 * `new Date(d * DAY_MS)` read in UTC (0 is 1970-01-01), so day arithmetic is integer arithmetic and
 * a label is one `toISOString()`. Only the boundaries between days need the timezone database.
 *
 * `Intl.DateTimeFormat#formatToParts` costs about 5 µs a call; every event needs its day, so the
 * boundaries are computed once per (timezone, day) and kept: a day's local start is found by a
 * binary search on the formatter, after which `localDayOf` is a few map look-ups.
 */

export const DAY_MS = 86_400_000
const HOUR_MS = 3_600_000

/** Timezones offset from UTC by at most +14 h and −12 h, and DST shifts by at most 2 h: local midnight of day d lies in this range. */
const EARLIEST_START = -18 * HOUR_MS
const LATEST_START = 16 * HOUR_MS
/** Past this many days cached for one timezone the cache starts over (an import spanning decades). */
const MAX_CACHED_DAYS = 20_000

interface Zone {
  formatter: Intl.DateTimeFormat
  /** Local day → UTC instant its first millisecond falls on. */
  starts: Map<number, number>
}

const zones = new Map<string, Zone>()

function zoneOf(timezone: string): Zone {
  let zone = zones.get(timezone)
  if (!zone) {
    let formatter: Intl.DateTimeFormat
    try {
      formatter = new Intl.DateTimeFormat('en-US', { timeZone: timezone, year: 'numeric', month: 'numeric', day: 'numeric' })
    } catch {
      throw new RangeError(`unknown timezone ${JSON.stringify(timezone)}: expected an IANA name such as Europe/Berlin`)
    }
    zones.set(timezone, (zone = { formatter, starts: new Map() }))
  }
  return zone
}

/** The local day of an instant, straight from the formatter (slow: the cache below is built from it). */
function formattedDayOf(zone: Zone, time: number): number {
  let year = 0
  let month = 0
  let day = 0
  for (const part of zone.formatter.formatToParts(time)) {
    if (part.type === 'year') year = Number(part.value)
    else if (part.type === 'month') month = Number(part.value)
    else if (part.type === 'day') day = Number(part.value)
  }
  // Date.UTC maps years 0-99 to 1900-1999: setUTCFullYear does not
  const date = new Date(0)
  date.setUTCFullYear(year, month - 1, day)
  return Math.floor(date.getTime() / DAY_MS)
}

function startOf(zone: Zone, day: number): number {
  const cached = zone.starts.get(day)
  if (cached !== undefined) return cached
  // the first instant whose local day is `day` or later
  let low = day * DAY_MS + EARLIEST_START
  let high = day * DAY_MS + LATEST_START
  while (low < high) {
    const middle = Math.floor((low + high) / 2)
    if (formattedDayOf(zone, middle) >= day) high = middle
    else low = middle + 1
  }
  if (zone.starts.size >= MAX_CACHED_DAYS) zone.starts.clear()
  zone.starts.set(day, low)
  return low
}

/** The UTC instant (ms) at which local day `day` begins in `timezone`. */
export function startOfLocalDay(day: number, timezone: string): number {
  return startOf(zoneOf(timezone), day)
}

/** The local calendar day (days since 1970-01-01) of an instant in `timezone`. */
export function localDayOf(time: number, timezone: string): number {
  if (!Number.isFinite(time)) throw new RangeError(`localDayOf: not a time: ${time}`)
  const zone = zoneOf(timezone)
  const utcDay = Math.floor(time / DAY_MS)
  for (let day = utcDay - 1; day <= utcDay + 1; day++) {
    if (startOf(zone, day) <= time && time < startOf(zone, day + 1)) return day
  }
  // only where clocks fall back across midnight, so a local day is two intervals: ask the formatter
  return formattedDayOf(zone, time)
}

/** `YYYY-MM-DD` of a local day. */
export function dayLabelOf(day: number): string {
  return new Date(day * DAY_MS).toISOString().slice(0, 10)
}

/** The local day of a `YYYY-MM-DD` label. */
export function dayOfLabel(label: string): number {
  return Math.floor(Date.parse(`${label}T00:00:00.000Z`) / DAY_MS)
}

/**
 * `YYYY-MM`: the calendar month of an instant in `timezone` (the acquisition cohort of a user
 * first seen then). 2019-04-30T22:30Z is `2019-05` in Europe/Berlin and `2019-04` in UTC.
 */
export function acquisitionMonthOf(time: number, timezone: string): string {
  return dayLabelOf(localDayOf(time, timezone)).slice(0, 7)
}
