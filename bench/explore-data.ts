/**
 * The data set of bench/explore.ts: seeded users of 2019 and their events, written straight into
 * `profiles`, `profile_event_days` and `events` by COPY (the pipeline would take hours for
 * 20,000,000 events), then `profile_event_series` from the first two by one INSERT ... SELECT. Every row is consistent with the others: a profile's counts, first and last
 * seen, per-day per-name counts (its last 90 days) and engagement level are computed from exactly
 * the events written for that user, with the profile operator's own score (operators/profile).
 *
 * Who the users are (shares of users; events per user come out ~20 on average):
 * - one-off visitors (58%): one day, a third of them come back once within 45 days;
 * - occasional (25%): active on ~15% of days until they churn (mean 60 days);
 * - regular (12%) and daily (5%): active on ~40% / ~80% of days; 30% of them never churn.
 * So as of the end of 2019 most users are Low (lapsed), a few percent Medium-High or High, and
 * acquisitions grow over the year (twice as many a day in December as in January), fewer at weekends.
 * Countries (40, skewed), devices, channels (the simulator's acquisition landings), and for users
 * who identify (15-80% by activity) traits: plan, company_size, role, newsletter, email.
 *
 * The total number of events is exact: raw per-day counts are drawn, summed in a first pass
 * over the users, then scaled to the requested total with the rounding carried from day to day.
 */
import { once } from 'node:events'
import { finished } from 'node:stream/promises'
import type pg from 'pg'
import { from as copyFrom, type CopyStreamQuery } from 'pg-copy-streams'
import { dayLabelOf, dayOfLabel, startOfLocalDay } from '../operators/profile/calendar.ts'
import { levelOf, scoreOf, WINDOW_DAYS } from '../operators/profile/engagement.ts'
import { DEFAULT_DAY_HISTORY } from '../operators/profile/logic.ts'
import { ACQUISITION_LANDINGS, mixSeed, SITE } from '../simulate/model.ts'

export interface DatasetOptions {
  /** Seed of every draw. */
  seed: number
  users: number
  /** Total events, at least one per user. */
  events: number
  project: string
  /** The project's timezone: acquisition months and days are local to it. */
  timezone: string
}

export interface LoadProgress {
  events: number
  rows: number
}

const YEAR_FIRST_DAY = dayOfLabel('2019-01-01')
const DAYS = 365

interface Tier {
  name: string
  share: number
  /** Chance of activity on each day after acquisition, until churn. 0: a one-off visitor. */
  dailyChance: number
  /** One-off visitors: chance of coming back once, within 45 days. */
  returnChance: number
  /** Mean days from acquisition to churn (exponential). */
  meanLifetimeDays: number
  /** Share that never churns. */
  loyalShare: number
  /** Mean raw events on an active day. */
  meanEventsPerDay: number
  identifyChance: number
}

const TIERS: readonly Tier[] = [
  { name: 'one-off', share: 0.58, dailyChance: 0, returnChance: 0.33, meanLifetimeDays: 0, loyalShare: 0, meanEventsPerDay: 4, identifyChance: 0.15 },
  { name: 'occasional', share: 0.25, dailyChance: 0.15, returnChance: 0, meanLifetimeDays: 60, loyalShare: 0, meanEventsPerDay: 3, identifyChance: 0.35 },
  { name: 'regular', share: 0.12, dailyChance: 0.4, returnChance: 0, meanLifetimeDays: 45, loyalShare: 0.3, meanEventsPerDay: 2.5, identifyChance: 0.6 },
  { name: 'daily', share: 0.05, dailyChance: 0.8, returnChance: 0, meanLifetimeDays: 45, loyalShare: 0.3, meanEventsPerDay: 2.5, identifyChance: 0.8 },
]

const COUNTRIES: readonly { country: string; locale: string; weight: number; cities?: readonly string[] }[] = [
  { country: 'US', locale: 'en-US', weight: 20, cities: ['New York', 'San Francisco', 'Chicago', 'Austin', 'Seattle'] },
  { country: 'DE', locale: 'de-DE', weight: 12, cities: ['Berlin', 'Hamburg', 'Munich', 'Cologne'] },
  { country: 'GB', locale: 'en-GB', weight: 8, cities: ['London', 'Manchester', 'Leeds'] },
  { country: 'FR', locale: 'fr-FR', weight: 6, cities: ['Paris', 'Lyon'] },
  { country: 'IN', locale: 'en-IN', weight: 6 }, { country: 'BR', locale: 'pt-BR', weight: 5 },
  { country: 'CA', locale: 'en-CA', weight: 4 }, { country: 'ES', locale: 'es-ES', weight: 4 }, { country: 'IT', locale: 'it-IT', weight: 4 },
  { country: 'NL', locale: 'nl-NL', weight: 3 }, { country: 'PL', locale: 'pl-PL', weight: 3 }, { country: 'AU', locale: 'en-AU', weight: 3 },
  { country: 'JP', locale: 'ja-JP', weight: 2.5 }, { country: 'MX', locale: 'es-MX', weight: 2.5 }, { country: 'SE', locale: 'sv-SE', weight: 2 },
  { country: 'CH', locale: 'de-CH', weight: 2 }, { country: 'AT', locale: 'de-AT', weight: 2 }, { country: 'BE', locale: 'nl-BE', weight: 1.5 },
  { country: 'TR', locale: 'tr-TR', weight: 1.5 }, { country: 'RU', locale: 'ru-RU', weight: 1.5 }, { country: 'KR', locale: 'ko-KR', weight: 1.2 },
  { country: 'ID', locale: 'id-ID', weight: 1.2 }, { country: 'AR', locale: 'es-AR', weight: 1 }, { country: 'ZA', locale: 'en-ZA', weight: 1 },
  { country: 'NG', locale: 'en-NG', weight: 1 }, { country: 'EG', locale: 'ar-EG', weight: 0.8 }, { country: 'PT', locale: 'pt-PT', weight: 0.8 },
  { country: 'DK', locale: 'da-DK', weight: 0.8 }, { country: 'NO', locale: 'nb-NO', weight: 0.8 }, { country: 'FI', locale: 'fi-FI', weight: 0.7 },
  { country: 'IE', locale: 'en-IE', weight: 0.7 }, { country: 'CZ', locale: 'cs-CZ', weight: 0.7 }, { country: 'RO', locale: 'ro-RO', weight: 0.7 },
  { country: 'HU', locale: 'hu-HU', weight: 0.5 }, { country: 'GR', locale: 'el-GR', weight: 0.5 }, { country: 'IL', locale: 'he-IL', weight: 0.5 },
  { country: 'SG', locale: 'en-SG', weight: 0.5 }, { country: 'NZ', locale: 'en-NZ', weight: 0.5 }, { country: 'CL', locale: 'es-CL', weight: 0.5 },
  { country: 'CO', locale: 'es-CO', weight: 0.5 },
]

const DEVICES: readonly { type: string; browser: string; os: string; weight: number; userAgent: string }[] = [
  { type: 'desktop', browser: 'Chrome', os: 'Windows', weight: 24, userAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.169 Safari/537.36' },
  { type: 'desktop', browser: 'Safari', os: 'macOS', weight: 8, userAgent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.1 Safari/605.1.15' },
  { type: 'desktop', browser: 'Firefox', os: 'Windows', weight: 8, userAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:67.0) Gecko/20100101 Firefox/67.0' },
  { type: 'desktop', browser: 'Edge', os: 'Windows', weight: 5, userAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.18362' },
  { type: 'mobile', browser: 'Mobile Safari', os: 'iOS', weight: 20, userAgent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 12_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.1 Mobile/15E148 Safari/604.1' },
  { type: 'mobile', browser: 'Chrome', os: 'Android', weight: 17, userAgent: 'Mozilla/5.0 (Linux; Android 9; SM-G960F) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.157 Mobile Safari/537.36' },
  { type: 'mobile', browser: 'Samsung Internet', os: 'Android', weight: 5, userAgent: 'Mozilla/5.0 (Linux; Android 9; SAMSUNG SM-G973F) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/9.2 Chrome/67.0.3396.87 Mobile Safari/537.36' },
  { type: 'tablet', browser: 'Mobile Safari', os: 'iOS', weight: 9, userAgent: 'Mozilla/5.0 (iPad; CPU OS 12_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.1 Mobile/15E148 Safari/604.1' },
  { type: 'tablet', browser: 'Chrome', os: 'Android', weight: 4, userAgent: 'Mozilla/5.0 (Linux; Android 9; SM-T820) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.157 Safari/537.36' },
]

/** Source and medium enrich reports for a landing without UTM parameters. */
const REFERRER_SOURCES: Record<string, { source?: string; medium: string }> = {
  'www.google.com': { source: 'google', medium: 'organic' }, 'www.google.de': { source: 'google', medium: 'organic' },
  'www.bing.com': { source: 'bing', medium: 'organic' }, 'duckduckgo.com': { source: 'duckduckgo', medium: 'organic' },
  't.co': { source: 'twitter', medium: 'social' }, 'l.facebook.com': { source: 'facebook', medium: 'social' },
  'www.linkedin.com': { source: 'linkedin', medium: 'social' }, 'www.reddit.com': { source: 'reddit', medium: 'social' },
}

const PAGES = ['/', '/features', '/pricing', '/products/42', '/products/7', '/blog/funnels-explained', '/docs/getting-started', '/customers', '/account', '/account/orders']
const TRACKS: readonly { name: string; weight: number }[] = [
  { name: '$page', weight: 50 }, { name: 'click_event1', weight: 25 }, { name: 'search', weight: 10 }, { name: 'custom_event2', weight: 8 }, { name: 'add_to_cart', weight: 7 },
]
const PLANS = [{ value: 'free', weight: 60 }, { value: 'pro', weight: 25 }, { value: 'business', weight: 10 }, { value: 'enterprise', weight: 5 }]
const COMPANY_SIZES = [{ value: '1-10', weight: 40 }, { value: '11-50', weight: 30 }, { value: '51-200', weight: 18 }, { value: '201-1000', weight: 8 }, { value: '1000+', weight: 4 }]
const ROLES = [{ value: 'marketing', weight: 35 }, { value: 'product', weight: 25 }, { value: 'engineering', weight: 20 }, { value: 'sales', weight: 12 }, { value: 'founder', weight: 8 }]
/** Relative chance of each local hour (0-23) for the start of a visit. */
const HOUR_WEIGHTS = [2, 1, 0.5, 0.5, 0.5, 1, 3, 6, 9, 10, 10, 10, 10, 10, 9.5, 9.5, 10, 10.5, 11, 12, 13, 12, 9, 5]
/** Sunday first. */
const WEEKDAY_WEIGHTS = [0.7, 1, 1, 1, 1, 0.95, 0.7]
const GROWTH = 2
const HOUR_MS = 3_600_000
const MAX_EVENT_GAP_MS = 240_000

/** Cumulative weights, for a draw by binary search. */
function cumulative(weights: readonly number[]): Float64Array {
  const sums = new Float64Array(weights.length)
  let total = 0
  weights.forEach((weight, i) => (sums[i] = total += weight))
  return sums
}
function pick(sums: Float64Array, random: number): number {
  const point = random * sums[sums.length - 1]!
  let low = 0
  let high = sums.length - 1
  while (low < high) {
    const middle = (low + high) >> 1
    if (sums[middle]! > point) high = middle
    else low = middle + 1
  }
  return low
}

const TIER_SUMS = cumulative(TIERS.map((t) => t.share))
const ACQUISITION_SUMS = cumulative(Array.from({ length: DAYS }, (_, k) => (1 + ((GROWTH - 1) * k) / (DAYS - 1)) * WEEKDAY_WEIGHTS[(YEAR_FIRST_DAY + k + 4) % 7]!))
const COUNTRY_SUMS = cumulative(COUNTRIES.map((c) => c.weight))
const DEVICE_SUMS = cumulative(DEVICES.map((d) => d.weight))
const LANDING_SUMS = cumulative(ACQUISITION_LANDINGS.map((l) => l.weight))
const TRACK_SUMS = cumulative(TRACKS.map((t) => t.weight))
const HOUR_SUMS = cumulative(HOUR_WEIGHTS)
const PLAN_SUMS = cumulative(PLANS.map((p) => p.weight))
const SIZE_SUMS = cumulative(COMPANY_SIZES.map((p) => p.weight))
const ROLE_SUMS = cumulative(ROLES.map((p) => p.weight))

interface Plan {
  tier: Tier
  /** Active days (0 = 2019-01-01 local), ascending, and raw event counts on them. */
  days: number[]
  counts: number[]
}

/** A user's days and raw counts: the first draws of their PRNG, so both passes see the same. */
function planOf(random: () => number): Plan {
  const tier = TIERS[pick(TIER_SUMS, random())]!
  const acquired = pick(ACQUISITION_SUMS, random())
  const days = [acquired]
  if (tier.dailyChance === 0) {
    if (random() < tier.returnChance) {
      const back = acquired + 1 + Math.floor(random() * 45)
      if (back < DAYS) days.push(back)
    }
  } else {
    const loyal = random() < tier.loyalShare
    const end = loyal ? DAYS - 1 : Math.min(DAYS - 1, acquired + Math.floor(-Math.log(1 - random()) * tier.meanLifetimeDays))
    const logMiss = Math.log(1 - tier.dailyChance)
    for (let day = acquired; ;) {
      // geometric gap to the next active day
      day += 1 + Math.floor(Math.log(1 - random()) / logMiss)
      if (day > end) break
      days.push(day)
    }
  }
  const counts = days.map(() => 1 + Math.floor(-Math.log(1 - random()) * (tier.meanEventsPerDay - 1)))
  return { tier, days, counts }
}

/**
 * sfc32 seeded per user. Not the project's mulberry32 (seededRandom): its 32-bit state is one cycle
 * that a million users' streams would enter at random points, and ~46,000 pairs of them would
 * overlap, the same draws shifted, so twins and repeated ids. 128 bits of state make that negligible.
 */
function userRandom(seed: number, user: number): () => number {
  let a = mixSeed(seed, user, 1)
  let b = mixSeed(seed, user, 2)
  let c = mixSeed(seed, user, 3)
  let d = 1
  const next = () => {
    const t = (((a + b) | 0) + d) | 0
    d = (d + 1) | 0
    a = b ^ (b >>> 9)
    b = (c + (c << 3)) | 0
    c = (c << 21) | (c >>> 11)
    c = (c + t) | 0
    return (t >>> 0) / 4294967296
  }
  for (let i = 0; i < 12; i++) next()
  return next
}

/** Sum of raw counts over all users: the first pass. */
export function rawEventTotal(options: DatasetOptions): number {
  let total = 0
  for (let user = 0; user < options.users; user++) {
    for (const count of planOf(userRandom(options.seed, user)).counts) total += count
  }
  return total
}

// 20,000,000 events need ~60,000,000 ids and times as text: table look-ups instead of toString/toISOString
const HEX4 = Array.from({ length: 0x10000 }, (_, i) => i.toString(16).padStart(4, '0'))
/** A version-4-shaped UUID whose last 12 hex digits are `unique` (< 2^48): random-looking, never repeated. */
function uuid(random: () => number, unique: number): string {
  const a = Math.floor(random() * 0x100000000)
  const b = Math.floor(random() * 0x100000000)
  const c = Math.floor(random() * 0x100000000)
  const high = Math.floor(unique / 0x100000000)
  const low = unique >>> 0
  return `${HEX4[a >>> 16]}${HEX4[a & 0xffff]}-${HEX4[b >>> 16]}-4${HEX4[b & 0xffff]!.slice(1)}-${'89ab'[c >>> 30]}${HEX4[(c >>> 16) & 0xfff]!.slice(1)}-${HEX4[high & 0xffff]}${HEX4[low >>> 16]}${HEX4[low & 0xffff]}`
}
const TWO_DIGITS = Array.from({ length: 60 }, (_, i) => String(i).padStart(2, '0'))
const THREE_DIGITS = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, '0'))
const utcDayPrefixes = new Map<number, string>()
/** ISO 8601 in UTC with milliseconds, as toISOString() gives it. */
function iso(time: number): string {
  const day = Math.floor(time / 86_400_000)
  let prefix = utcDayPrefixes.get(day)
  if (prefix === undefined) utcDayPrefixes.set(day, (prefix = new Date(day * 86_400_000).toISOString().slice(0, 11)))
  let rest = time - day * 86_400_000
  const ms = rest % 1000
  rest = (rest - ms) / 1000
  const seconds = rest % 60
  rest = (rest - seconds) / 60
  return `${prefix}${TWO_DIGITS[Math.floor(rest / 60)]}:${TWO_DIGITS[rest % 60]}:${TWO_DIGITS[seconds]}.${THREE_DIGITS[ms]}Z`
}

/** Rows of the three tables, as COPY text, one user at a time. */
export interface UserRows {
  profile: string
  days: string
  dayRows: number
  events: string
  eventCount: number
  level: string
}

/**
 * Generates every user in order. `raw` is rawEventTotal(options); each user's rows come from
 * their own PRNG, and the event counts from a running rounding shared by all users.
 */
export function* generateUsers(options: DatasetOptions, raw: number): Generator<UserRows> {
  const { project, timezone, seed } = options
  if (options.events < options.users) throw new Error(`--events ${options.events} is fewer than --users ${options.users}: every user has at least one event`)
  const dayStarts = Array.from({ length: DAYS + 1 }, (_, k) => startOfLocalDay(YEAR_FIRST_DAY + k, timezone))
  const dayLabels = Array.from({ length: DAYS }, (_, k) => dayLabelOf(YEAR_FIRST_DAY + k))
  const asOfDay = DAYS - 1
  const asOf = iso(dayStarts[DAYS]! - 1)
  const scale = options.events / raw
  let wanted = 0
  let emitted = 0
  let sequence = 0
  for (let user = 0; user < options.users; user++) {
    const random = userRandom(seed, user)
    const plan = planOf(random)
    // exact total: this user's share of the scaled counts, the first day never empty
    const counts: number[] = []
    const days: number[] = []
    plan.days.forEach((day, i) => {
      wanted += plan.counts[i]! * scale
      let count = Math.round(wanted) - emitted
      if (i === 0) count = Math.max(1, count)
      if (user === options.users - 1 && i === plan.days.length - 1) count = Math.max(1, options.events - emitted)
      if (count <= 0) return
      emitted += count
      days.push(day)
      counts.push(count)
    })

    const country = COUNTRIES[pick(COUNTRY_SUMS, random())]!
    const city = country.cities ? country.cities[Math.floor(random() * country.cities.length)]! : null
    const device = DEVICES[pick(DEVICE_SUMS, random())]!
    const landing = ACQUISITION_LANDINGS[pick(LANDING_SUMS, random())]!
    const ip = `${1 + Math.floor(random() * 223)}.${Math.floor(random() * 256)}.${Math.floor(random() * 256)}.${1 + Math.floor(random() * 254)}`
    const anonymousId = uuid(random, user)
    // an identify is the first event of a visit other than the landing: a user with one event never identifies
    const identified = random() < plan.tier.identifyChance && (days.length > 1 || counts[0]! > 1)
    const userId = identified ? `usr_${(mixSeed(seed, user, 0x1d) % 900_000_000) + 100_000_000}_${user}` : null
    const canonicalId = userId ?? anonymousId
    let identifyDayIndex = identified ? Math.floor(random() * days.length) : -1
    if (identifyDayIndex === 0 && counts[0] === 1) identifyDayIndex = 1
    const identifyEvent = identifyDayIndex === 0 ? 1 : 0
    const traits = identified
      ? JSON.stringify({
          plan: PLANS[pick(PLAN_SUMS, random())]!.value, company_size: COMPANY_SIZES[pick(SIZE_SUMS, random())]!.value,
          role: ROLES[pick(ROLE_SUMS, random())]!.value, newsletter: random() < 0.4, email: `${userId}@example.com`,
        })
      : '{}'
    const keyGroup = mixSeed(user) % 64
    let referrerHost: string | null = null
    if (landing.referrer) referrerHost = new URL(landing.referrer).host
    const acquisitionSource = landing.utm?.source ?? (referrerHost ? (REFERRER_SOURCES[referrerHost]?.source ?? null) : null)
    const acquisitionMedium = landing.utm?.medium ?? (referrerHost ? (REFERRER_SOURCES[referrerHost]?.medium ?? 'referral') : null)
    const landingQuery = landing.utm ? `?utm_source=${landing.utm.source}&utm_medium=${landing.utm.medium}&utm_campaign=${landing.utm.campaign}` : ''
    const contextHead = `{"ip":"${ip}","userAgent":"${device.userAgent}","locale":"${country.locale}","library":{"name":"analytics.js","version":"4.1.0"},"page":`
    const fixed = `\t${canonicalId}\t${anonymousId}\t`

    let eventRows = ''
    let dayRows = ''
    let dayRowCount = 0
    let firstSeen = 0
    let lastSeen = 0
    let sessions = 0
    let active30 = 0
    let events30 = 0
    let total = 0
    const lastDay = days[days.length - 1]!
    days.forEach((day, dayIndex) => {
      const count = counts[dayIndex]!
      const perName = new Map<string, number>()
      const dayStart = dayStarts[day]!
      const dayEnd = dayStarts[day + 1]!
      // one visit, two for a busy day; times clamped inside the local day
      const visits = count > 10 ? 2 : 1
      sessions += visits
      let time = 0
      for (let e = 0; e < count; e++) {
        const visitStart = e === 0 || (visits === 2 && e === Math.ceil(count / 2))
        if (visitStart) {
          const latest = dayEnd - (count - e + 1) * MAX_EVENT_GAP_MS
          const start = dayStart + pick(HOUR_SUMS, random()) * HOUR_MS + Math.floor(random() * HOUR_MS)
          time = Math.max(time + 45 * 60_000, Math.max(dayStart, Math.min(start, latest)))
        } else {
          time += 5_000 + Math.floor(random() * (MAX_EVENT_GAP_MS - 5_000))
        }
        if (time >= dayEnd) time = dayEnd - 1 - (count - e)
        const landingEvent = dayIndex === 0 && e === 0
        const identify = dayIndex === identifyDayIndex && e === identifyEvent
        const name = identify ? '$identify' : visitStart ? '$page' : TRACKS[pick(TRACK_SUMS, random())]!.name
        const path = landingEvent ? '/' : PAGES[Math.floor(random() * PAGES.length)]!
        let type: string
        let properties: string
        if (name === '$page') {
          type = 'page'
          properties = `{"path":"${path}","url":"${SITE}${path}${landingEvent ? landingQuery : ''}"${landingEvent && landing.referrer ? `,"referrer":"${landing.referrer}"` : ''}}`
        } else if (name === '$identify') {
          type = 'identify'
          properties = '{}'
        } else {
          type = 'track'
          properties = name === 'click_event1' ? `{"button":"cta-${1 + Math.floor(random() * 4)}"}`
            : name === 'add_to_cart' ? `{"product_id":"${[42, 7, 13][Math.floor(random() * 3)]}","price":${(9 + Math.floor(random() * 90)) + 0.99}}`
            : name === 'search' ? `{"query":"q${Math.floor(random() * 500)}"}`
            : `{"value":${Math.floor(random() * 100)}}`
        }
        const afterIdentify = identified && (dayIndex > identifyDayIndex || (dayIndex === identifyDayIndex && e >= identifyEvent))
        sequence++
        eventRows += `${project}\t${uuid(random, sequence)}\t${iso(time)}\t${iso(time + 40 + Math.floor(random() * 400))}\t${type}\t${name}${fixed}${afterIdentify ? userId : '\\N'}\timport\t${keyGroup}\tSEG_IMPORT\t${sequence}\t${sequence}\t${properties}\t${identify ? traits : '\\N'}\t${contextHead}{"path":"${path}","url":"${SITE}${path}"}}\t{}\n`
        perName.set(name, (perName.get(name) ?? 0) + 1)
        if (total === 0) firstSeen = time
        lastSeen = time
        total++
      }
      if (day > lastDay - DEFAULT_DAY_HISTORY) {
        for (const [name, n] of perName) {
          dayRows += `${project}\t${canonicalId}\t${dayLabels[day]}\t${name}\t${n}\n`
          dayRowCount++
        }
      }
      if (day > asOfDay - WINDOW_DAYS) {
        active30++
        events30 += count
      }
    })
    const score = scoreOf(asOfDay - lastDay, active30, events30)
    const level = levelOf(score)
    const nullable = (value: string | null) => value ?? '\\N'
    const profile = [
      project, canonicalId, iso(firstSeen), iso(lastSeen), dayLabels[days[0]!]!.slice(0, 7), landing.channel, nullable(acquisitionSource),
      nullable(acquisitionMedium), nullable(landing.utm?.campaign ?? null), device.type, device.browser, device.os, country.country, nullable(city),
      total, sessions, level, score, asOf, traits, '\\N', days.length + 1, user + 1, iso(lastSeen + 20 * 60_000),
    ].join('\t') + '\n'
    yield { profile, days: dayRows, dayRows: dayRowCount, events: eventRows, eventCount: total, level }
  }
}

const PROFILE_COLUMNS = 'project, canonical_id, first_seen, last_seen, acquisition_month, acquisition_channel, acquisition_source, acquisition_medium, acquisition_campaign, device_type, browser, os, country, city, events, sessions, engagement_level, engagement_score, engagement_as_of, traits, merged_into, version, profiles_seq, updated_at'
const DAY_COLUMNS = 'project, canonical_id, day, name, count'
const EVENT_COLUMNS = 'project, message_id, event_time, received_at, type, name, canonical_id, anonymous_id, user_id, source, key_group, raw_stream, raw_seq, enriched_seq, properties, traits, context, extra'

const TABLES = ['profiles', 'profile_event_days', 'events'] as const
/**
 * The triggers that keep profile_event_series (migration 0012) while the two tables are written: off
 * during the COPY (each table is loaded in its own transaction, so a trigger would see the other's
 * rows missing), the table filled after it by one INSERT ... SELECT.
 */
const SERIES_TRIGGERS = [
  ['profiles', 'profile_event_series_on_profiles_insert'], ['profiles', 'profile_event_series_on_profiles_truncate'],
  ['profile_event_days', 'profile_event_series_on_days_insert'], ['profile_event_days', 'profile_event_series_on_days_truncate'],
] as const

/** Buffers COPY text and writes it in ~1 MB pieces, waiting when the server falls behind. */
class CopyWriter {
  private buffer = ''
  readonly stream: CopyStreamQuery
  constructor(stream: CopyStreamQuery) {
    this.stream = stream
  }
  async add(text: string): Promise<void> {
    this.buffer += text
    if (this.buffer.length >= 1 << 20) await this.flush()
  }
  async flush(): Promise<void> {
    if (this.buffer.length === 0) return
    const text = this.buffer
    this.buffer = ''
    if (!this.stream.write(text)) await once(this.stream, 'drain')
  }
  async end(): Promise<void> {
    await this.flush()
    this.stream.end()
    await finished(this.stream)
  }
}

export interface LoadResult {
  profiles: number
  profileEventDays: number
  events: number
  levels: Record<string, number>
  /** Seconds: COPY, then index builds, then profile_event_series filled, then VACUUM ANALYZE. */
  copySeconds: number
  indexSeconds: number
  seriesSeconds: number
  /** Rows of profile_event_series. */
  series: number
  analyzeSeconds: number
}

/**
 * Replaces the contents of the three tables with the data set. Secondary indexes and primary keys
 * are dropped first and built once at the end (several times faster than maintaining them row by
 * row); their definitions are kept in `bench_explore_indexes` meanwhile, so a run killed while
 * loading still gets them back on the next load. COPY FREEZE into tables truncated in the same
 * transaction writes rows already frozen and all-visible: no vacuum pass over 20,000,000 rows.
 */
export async function loadDataset(pool: pg.Pool, options: DatasetOptions, onProgress: (progress: LoadProgress) => void): Promise<LoadResult> {
  await pool.query(`CREATE TABLE IF NOT EXISTS bench_explore_indexes (index_name text PRIMARY KEY, table_name text NOT NULL, definition text NOT NULL, constraint_kind text)`)
  await pool.query(
    `INSERT INTO bench_explore_indexes (index_name, table_name, definition, constraint_kind)
     SELECT i.relname, t.relname, pg_get_indexdef(i.oid), CASE con.contype WHEN 'p' THEN 'PRIMARY KEY' WHEN 'u' THEN 'UNIQUE' END
       FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
       LEFT JOIN pg_constraint con ON con.conindid = i.oid AND con.contype IN ('p', 'u')
      WHERE t.relname = ANY($1) AND t.relnamespace = 'public'::regnamespace
     ON CONFLICT (index_name) DO NOTHING`,
    [TABLES],
  )
  const indexes = (await pool.query<{ index_name: string; table_name: string; definition: string; constraint_kind: string | null }>('SELECT * FROM bench_explore_indexes')).rows
  for (const index of indexes) {
    if (index.constraint_kind) await pool.query(`ALTER TABLE ${index.table_name} DROP CONSTRAINT IF EXISTS ${index.index_name}`)
    else await pool.query(`DROP INDEX IF EXISTS ${index.index_name}`)
  }

  const copyStarted = performance.now()
  for (const [table, trigger] of SERIES_TRIGGERS) await pool.query(`ALTER TABLE ${table} DISABLE TRIGGER ${trigger}`)
  const raw = rawEventTotal(options)
  const clients = await Promise.all(TABLES.map(() => pool.connect()))
  const writers: CopyWriter[] = []
  const columns = { profiles: PROFILE_COLUMNS, profile_event_days: DAY_COLUMNS, events: EVENT_COLUMNS }
  for (const [i, table] of TABLES.entries()) {
    const client = clients[i]!
    await client.query('BEGIN')
    await client.query(`TRUNCATE ${table}`)
    writers.push(new CopyWriter(client.query(copyFrom(`COPY ${table} (${columns[table]}) FROM STDIN WITH (FREEZE)`))))
  }
  const [profiles, days, events] = writers as [CopyWriter, CopyWriter, CopyWriter]
  const levels: Record<string, number> = {}
  let eventCount = 0
  let dayCount = 0
  let userCount = 0
  const report = setInterval(() => onProgress({ events: eventCount, rows: eventCount + dayCount + userCount }), 2_000)
  try {
    for (const user of generateUsers(options, raw)) {
      userCount++
      eventCount += user.eventCount
      dayCount += user.dayRows
      levels[user.level] = (levels[user.level] ?? 0) + 1
      await profiles.add(user.profile)
      await days.add(user.days)
      await events.add(user.events)
      // while the socket takes every write at once, nothing here leaves the microtask queue: let the progress timer run
      if (userCount % 2_000 === 0) await new Promise((resolve) => setImmediate(resolve))
    }
    clearInterval(report)
    onProgress({ events: eventCount, rows: eventCount + dayCount + userCount })
    process.stderr.write('  every row sent; the server finishes the COPY and commits\n')
    await Promise.all(writers.map((w) => w.end()))
    for (const client of clients) await client.query('COMMIT')
  } finally {
    clearInterval(report)
    for (const client of clients) client.release()
    for (const [table, trigger] of SERIES_TRIGGERS) await pool.query(`ALTER TABLE ${table} ENABLE TRIGGER ${trigger}`)
  }
  const copySeconds = (performance.now() - copyStarted) / 1000

  // the largest first, two at a time: one per core
  const indexStarted = performance.now()
  const sizes = new Map((await pool.query<{ relname: string; n: string }>(`SELECT relname, pg_relation_size(oid) AS n FROM pg_class WHERE relname = ANY($1)`, [TABLES])).rows.map((r) => [r.relname, Number(r.n)]))
  const queue = [...indexes].sort((a, b) => (sizes.get(b.table_name) ?? 0) - (sizes.get(a.table_name) ?? 0))
  await Promise.all([0, 1].map(async () => {
    const client = await pool.connect()
    try {
      await client.query(`SET maintenance_work_mem = '1GB'`)
      await client.query('SET max_parallel_maintenance_workers = 0')
      for (let index = queue.shift(); index; index = queue.shift()) {
        const started = performance.now()
        // a key's index built by CREATE INDEX (a SHARE lock, so the table's other indexes build beside it), then adopted
        await client.query(index.definition)
        if (index.constraint_kind) await client.query(`ALTER TABLE ${index.table_name} ADD CONSTRAINT ${index.index_name} ${index.constraint_kind} USING INDEX ${index.index_name}`)
        process.stderr.write(`  index ${index.index_name} on ${index.table_name}: ${((performance.now() - started) / 1000).toFixed(1)} s\n`)
      }
    } finally {
      client.release()
    }
  }))
  await pool.query('DELETE FROM bench_explore_indexes')
  const indexSeconds = (performance.now() - indexStarted) / 1000
  // what the triggers would have written: one INSERT ... SELECT over every user (the function migration 0012 fills with)
  const seriesStarted = performance.now()
  await pool.query('TRUNCATE profile_event_series')
  await pool.query('SELECT profile_event_series_rebuild(NULL, NULL)')
  const seriesSeconds = (performance.now() - seriesStarted) / 1000
  const series = Number((await pool.query<{ n: string }>('SELECT count(*) AS n FROM profile_event_series')).rows[0]!.n)
  const analyzeStarted = performance.now()
  for (const table of [...TABLES, 'profile_event_series']) await pool.query(`VACUUM (ANALYZE) ${table}`)
  const analyzeSeconds = (performance.now() - analyzeStarted) / 1000
  return { profiles: userCount, profileEventDays: dayCount, events: eventCount, levels, copySeconds, indexSeconds, seriesSeconds, series, analyzeSeconds }
}
