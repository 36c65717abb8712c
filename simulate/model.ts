import { seededRandom } from '../operators/runtime/generator.ts'

/**
 * The simulated world: people acquired over a range of local days, each with a channel, a device,
 * a country and an engagement propensity, browsing in sessions that run funnel-like sequences
 * (page views, then `click_event1`, then `custom_event2`, with drop-off at each step), some of them
 * identifying (a share on a second device too), plus a little crawler traffic.
 *
 * Pure and deterministic: the same options give the same log, message for message, on every
 * machine. Every person draws from their own PRNG (seeded from the seed and their index), so the
 * order in which the merge below pulls their events changes nothing. Nothing here reads the clock
 * or does I/O; `run.ts` sends or writes the log, `expected.ts` computes the answers from it.
 */

export const ENGAGEMENT_TIERS = ['Low', 'Medium', 'Medium-High', 'High'] as const
export type EngagementTier = (typeof ENGAGEMENT_TIERS)[number]

export interface SimulationOptions {
  /** Seed of every random draw, an integer from 0 to 4294967295. Default 1. */
  seed: number
  /** People to simulate (crawlers come on top). Default 1000. */
  users: number
  /** First local day people are acquired on, YYYY-MM-DD in `timezone`. Default 2019-01-01. */
  from: string
  /** Last local day people are acquired on (inclusive), YYYY-MM-DD in `timezone`. Default 2019-12-31. */
  to: string
  /** The project's IANA timezone: acquisition days and times of day are local to it. Default Europe/Berlin. */
  timezone: string
  /** Crawler visitors (Googlebot) per person, 0 to 1. Default 0.02. */
  botShare: number
  /** Base share of people who identify (sign up or log in), scaled by engagement. Default 0.4. */
  identifyShare: number
  /** Of the people who identify, the share who also use a second device. Default 0.3. */
  secondDeviceShare: number
  /** Base chance that a session has a `click_event1`, scaled by engagement. Default 0.3. */
  clickProbability: number
  /** Base chance of a `custom_event2` after the session's `click_event1`, scaled by engagement. Default 0.35. */
  convertProbability: number
  /** Acquisitions per day at the end of the range over those at its start (a growing product). Default 2. */
  growth: number
  /** Start of every message id, so runs with other seeds never collide. Default `sim-<seed>`. */
  idPrefix: string
  /** Last local day of the log (inclusive), YYYY-MM-DD in `timezone`: "today" of the scenario. Default: none, the log runs until its people stop coming (months after `to`). */
  until?: string
}

export const SIMULATION_DEFAULTS: Omit<SimulationOptions, 'idPrefix'> = Object.freeze({
  seed: 1,
  users: 1000,
  from: '2019-01-01',
  to: '2019-12-31',
  timezone: 'Europe/Berlin',
  botShare: 0.02,
  identifyShare: 0.4,
  secondDeviceShare: 0.3,
  clickProbability: 0.3,
  convertProbability: 0.35,
  growth: 2,
})

/** The expected answers keep every event's time and name (about 100 events a person by default): bounded so a run fits in memory. */
export const MAX_USERS = 100_000

/** A message as the simulator sends it: the collector stamps receivedAt (and keeps `timestamp` as the event time). */
export interface SimulatedMessage {
  type: 'page' | 'track' | 'identify'
  messageId: string
  anonymousId: string
  userId?: string
  event?: string
  name?: string
  properties?: Record<string, unknown>
  traits?: Record<string, unknown>
  context: SimulatedContext
  /** Event time, ISO 8601 in UTC with milliseconds. */
  timestamp: string
}

export interface SimulatedContext {
  page: { path: string; url: string; title: string; referrer?: string; search?: string }
  userAgent: string
  ip: string
  locale: string
  library: { name: string; version: string }
}

/** An option the simulator cannot use; `option` names it (run.ts turns it into the flag's name). */
export class SimulationOptionError extends Error {
  readonly code = 'SEG_SIMULATE_OPTION'
  readonly option: keyof SimulationOptions
  readonly expected: string
  readonly got: unknown
  constructor(option: keyof SimulationOptions, expected: string, got: unknown) {
    super(`${option}=${JSON.stringify(got)} is invalid: expected ${expected}`)
    this.option = option
    this.expected = expected
    this.got = got
  }
}

// ---------------------------------------------------------------------------------------------
// The catalogue: devices, acquisition landings, countries, pages

export type DeviceType = 'desktop' | 'mobile' | 'tablet' | 'bot'

export interface UserAgentEntry {
  type: DeviceType
  userAgent: string
  weight: number
}

/** Browsers of 2019 and their share; `type` is what enrich's device parser says (checked by the tests). */
export const USER_AGENTS: readonly UserAgentEntry[] = Object.freeze([
  { type: 'desktop', weight: 22, userAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.169 Safari/537.36' },
  { type: 'desktop', weight: 8, userAgent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.1 Safari/605.1.15' },
  { type: 'desktop', weight: 8, userAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:67.0) Gecko/20100101 Firefox/67.0' },
  { type: 'desktop', weight: 5, userAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.18362' },
  { type: 'desktop', weight: 2, userAgent: 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/75.0.3770.100 Safari/537.36' },
  { type: 'mobile', weight: 17, userAgent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 12_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.1 Mobile/15E148 Safari/604.1' },
  { type: 'mobile', weight: 12, userAgent: 'Mozilla/5.0 (Linux; Android 9; SM-G960F) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.157 Mobile Safari/537.36' },
  { type: 'mobile', weight: 5, userAgent: 'Mozilla/5.0 (Linux; Android 9; Pixel 3) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/75.0.3770.101 Mobile Safari/537.36' },
  { type: 'mobile', weight: 5, userAgent: 'Mozilla/5.0 (Linux; Android 9; SAMSUNG SM-G973F) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/9.2 Chrome/67.0.3396.87 Mobile Safari/537.36' },
  { type: 'tablet', weight: 10, userAgent: 'Mozilla/5.0 (iPad; CPU OS 12_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.1 Mobile/15E148 Safari/604.1' },
  { type: 'tablet', weight: 4, userAgent: 'Mozilla/5.0 (Linux; Android 9; SM-T820) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.157 Safari/537.36' },
])

export const GOOGLEBOT_USER_AGENT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'

export interface Utm {
  source: string
  medium: string
  campaign: string
}

/** How a visit arrives: a referrer, UTM parameters on the landing URL, or neither. */
export interface LandingEntry {
  /** The channel enrich derives from it (checked by the tests). */
  channel: string
  weight: number
  referrer?: string
  utm?: Utm
}

/** Where new people come from, and their share. */
export const ACQUISITION_LANDINGS: readonly LandingEntry[] = Object.freeze([
  { channel: 'direct', weight: 28 },
  { channel: 'organic_search', weight: 18, referrer: 'https://www.google.com/' },
  { channel: 'organic_search', weight: 7, referrer: 'https://www.google.de/' },
  { channel: 'organic_search', weight: 3, referrer: 'https://www.bing.com/' },
  { channel: 'organic_search', weight: 2, referrer: 'https://duckduckgo.com/' },
  { channel: 'social', weight: 4, referrer: 'https://t.co/' },
  { channel: 'social', weight: 3, referrer: 'https://l.facebook.com/' },
  { channel: 'social', weight: 2, referrer: 'https://www.linkedin.com/' },
  { channel: 'social', weight: 1, referrer: 'https://www.reddit.com/' },
  { channel: 'referral', weight: 3, referrer: 'https://www.techblog.example.org/best-analytics-tools' },
  { channel: 'referral', weight: 2, referrer: 'https://partner.example.net/' },
  { channel: 'email', weight: 7, utm: { source: 'newsletter', medium: 'email', campaign: 'monthly' } },
  { channel: 'paid_search', weight: 12, utm: { source: 'google', medium: 'cpc', campaign: 'brand' } },
  { channel: 'paid_search', weight: 3, utm: { source: 'bing', medium: 'cpc', campaign: 'brand' } },
  { channel: 'paid_social', weight: 5, utm: { source: 'facebook', medium: 'paid_social', campaign: 'spring' } },
])

/** How returning people come back at the start of a later session. */
export const RETURN_LANDINGS: readonly LandingEntry[] = Object.freeze([
  { channel: 'direct', weight: 55 },
  { channel: 'organic_search', weight: 25, referrer: 'https://www.google.com/' },
  { channel: 'email', weight: 12, utm: { source: 'newsletter', medium: 'email', campaign: 'weekly' } },
  { channel: 'social', weight: 8, referrer: 'https://t.co/' },
])

export interface CountryNetwork {
  country: string
  locale: string
  /** An IPv4 block allocated to a large access provider of the country: a GeoLite2 database places it there. */
  network: string
  weight: number
}

export const COUNTRY_NETWORKS: readonly CountryNetwork[] = Object.freeze([
  { country: 'DE', locale: 'de-DE', network: '91.0.0.0/10', weight: 35 },
  { country: 'US', locale: 'en-US', network: '73.0.0.0/8', weight: 20 },
  { country: 'GB', locale: 'en-GB', network: '86.128.0.0/10', weight: 12 },
  { country: 'FR', locale: 'fr-FR', network: '90.0.0.0/9', weight: 12 },
  { country: 'ES', locale: 'es-ES', network: '83.32.0.0/11', weight: 11 },
  { country: 'PL', locale: 'pl-PL', network: '83.0.0.0/11', weight: 10 },
])

/** Googlebot's crawl addresses. */
export const GOOGLEBOT_NETWORK = '66.249.64.0/19'

export const SITE = 'https://shop.example.com'

interface Page {
  path: string
  title: string
  weight: number
}
const LANDING_PAGES: readonly Page[] = [
  { path: '/', title: 'Example Shop', weight: 50 },
  { path: '/blog/segmentation-basics', title: 'Segmentation basics', weight: 15 },
  { path: '/pricing', title: 'Pricing', weight: 15 },
  { path: '/features', title: 'Features', weight: 20 },
]
const BROWSING_PAGES: readonly Page[] = [
  { path: '/', title: 'Example Shop', weight: 15 },
  { path: '/features', title: 'Features', weight: 15 },
  { path: '/pricing', title: 'Pricing', weight: 15 },
  { path: '/products/42', title: 'Product 42', weight: 15 },
  { path: '/products/7', title: 'Product 7', weight: 10 },
  { path: '/blog/funnels-explained', title: 'Funnels explained', weight: 10 },
  { path: '/docs/getting-started', title: 'Getting started', weight: 10 },
  { path: '/customers', title: 'Customers', weight: 10 },
]
const ACCOUNT_PAGES: readonly Page[] = [
  { path: '/account', title: 'Your account', weight: 30 },
  { path: '/account/orders', title: 'Orders', weight: 40 },
  { path: '/account/settings', title: 'Settings', weight: 30 },
]

/** Relative chance of each local hour (0-23) for the start of a visit. */
const HOUR_WEIGHTS = [2, 1, 0.5, 0.5, 0.5, 1, 3, 6, 9, 10, 10, 10, 10, 10, 9.5, 9.5, 10, 10.5, 11, 12, 13, 12, 9, 5]
/** Relative chance of each weekday (Sunday first) for an acquisition. */
const WEEKDAY_WEIGHTS = [0.7, 1, 1, 1, 1, 0.95, 0.7]

const MINUTE = 60_000
const HOUR = 60 * MINUTE
export const DAY_MS = 24 * HOUR

/**
 * Margins around the 30-minute session gap: events of a session are at most 20 minutes apart, a new
 * session starts at least 45 minutes after the previous one ends. So a clock shift of a few
 * milliseconds (an import that stamps `sentAt`) never changes the session count.
 */
export const MAX_GAP_IN_SESSION_MS = 20 * MINUTE
export const MIN_GAP_BETWEEN_SESSIONS_MS = 45 * MINUTE

const LIBRARY = Object.freeze({ name: 'segstream-simulate', version: '1' })

// ---------------------------------------------------------------------------------------------
// Options

/** Defaults filled in, every value checked: a bad one throws a SimulationOptionError naming it. */
export function resolveSimulationOptions(partial: Partial<SimulationOptions> = {}): SimulationOptions {
  const options: SimulationOptions = { ...SIMULATION_DEFAULTS, idPrefix: '', ...stripUndefined(partial) }
  if (!partial.idPrefix) options.idPrefix = `sim-${options.seed}`
  const { seed, users } = options
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new SimulationOptionError('seed', 'an integer from 0 to 4294967295', seed)
  if (!Number.isInteger(users) || users < 1 || users > MAX_USERS) throw new SimulationOptionError('users', `an integer from 1 to ${MAX_USERS}`, users)
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: options.timezone })
  } catch {
    throw new SimulationOptionError('timezone', 'an IANA timezone such as Europe/Berlin', options.timezone)
  }
  const fromDay = dayOfDate(options.from)
  if (fromDay === undefined) throw new SimulationOptionError('from', 'a date YYYY-MM-DD', options.from)
  const toDay = dayOfDate(options.to)
  if (toDay === undefined) throw new SimulationOptionError('to', 'a date YYYY-MM-DD', options.to)
  if (toDay < fromDay) throw new SimulationOptionError('to', `a date not before --from ${options.from}`, options.to)
  for (const share of ['botShare', 'identifyShare', 'secondDeviceShare', 'clickProbability', 'convertProbability'] as const) {
    const value = options[share]
    if (typeof value !== 'number' || !(value >= 0 && value <= 1)) throw new SimulationOptionError(share, 'a number from 0 to 1', value)
  }
  if (typeof options.growth !== 'number' || !(options.growth > 0 && options.growth <= 100)) throw new SimulationOptionError('growth', 'a number above 0, at most 100', options.growth)
  if (/[\s]/.test(options.idPrefix)) throw new SimulationOptionError('idPrefix', 'no white space', options.idPrefix)
  if (options.until !== undefined) {
    const untilDay = dayOfDate(options.until)
    if (untilDay === undefined) throw new SimulationOptionError('until', 'a date YYYY-MM-DD', options.until)
    if (untilDay < fromDay) throw new SimulationOptionError('until', `a date not before --from ${options.from}`, options.until)
  }
  return options
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>
}

/** YYYY-MM-DD to its day number (days since 1970-01-01), or undefined when it is no calendar date. */
export function dayOfDate(text: string): number | undefined {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text)
  if (!match) return undefined
  const ms = Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3]))
  const day = ms / DAY_MS
  return new Date(ms).toISOString().slice(0, 10) === text ? day : undefined
}

// ---------------------------------------------------------------------------------------------
// Local time in the project's timezone

const wallClocks = new Map<string, Intl.DateTimeFormat>()
const dayStarts = new Map<string, Map<number, number>>()

function wallClockOf(timezone: string): Intl.DateTimeFormat {
  let formatter = wallClocks.get(timezone)
  if (!formatter) {
    formatter = new Intl.DateTimeFormat('en-US', {
      timeZone: timezone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric',
    })
    wallClocks.set(timezone, formatter)
  }
  return formatter
}

/** The local wall-clock time of an instant, as if it were UTC (ms, whole seconds). */
function wallTimeOf(timezone: string, time: number): number {
  const parts: Record<string, number> = {}
  for (const part of wallClockOf(timezone).formatToParts(time)) if (part.type !== 'literal') parts[part.type] = Number(part.value)
  const date = new Date(0)
  date.setUTCFullYear(parts.year!, parts.month! - 1, parts.day!)
  date.setUTCHours(parts.hour!, parts.minute!, parts.second!, 0)
  return date.getTime()
}

/** Local day number (days since 1970-01-01 of the local calendar) of an instant. */
export function localDayOf(timezone: string, time: number): number {
  return Math.floor(wallTimeOf(timezone, time) / DAY_MS)
}

/** The first instant of a local day (its midnight, or the first existing time when a DST jump skips midnight). */
export function localDayStart(timezone: string, day: number): number {
  let cache = dayStarts.get(timezone)
  if (!cache) dayStarts.set(timezone, (cache = new Map()))
  const cached = cache.get(day)
  if (cached !== undefined) return cached
  const wall = day * DAY_MS
  let time = wall - (wallTimeOf(timezone, wall) - wall)
  time = wall - (wallTimeOf(timezone, time) - time)
  // the offset can differ across the day boundary (DST): step to the exact first instant of the day
  while (localDayOf(timezone, time) >= day) time -= 15 * MINUTE
  while (localDayOf(timezone, time) < day) time += 15 * MINUTE
  while (localDayOf(timezone, time - 1000) === day) time -= 1000
  cache.set(day, time)
  return time
}

// ---------------------------------------------------------------------------------------------
// Random draws

/** A 32-bit seed from several numbers (murmur3's finaliser after an FNV-style combine). */
export function mixSeed(...parts: number[]): number {
  let hash = 0x811c9dc5
  for (const part of parts) {
    hash = Math.imul(hash ^ (part >>> 0), 0x01000193)
    hash ^= hash >>> 16
    hash = Math.imul(hash, 0x85ebca6b)
    hash ^= hash >>> 13
    hash = Math.imul(hash, 0xc2b2ae35)
    hash ^= hash >>> 16
  }
  return hash >>> 0
}

class Draw {
  readonly next: () => number
  constructor(seed: number) {
    this.next = seededRandom(seed)
  }
  chance(probability: number): boolean {
    return this.next() < probability
  }
  /** An integer from min to max, both included. */
  integer(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1))
  }
  uniform(min: number, max: number): number {
    return min + this.next() * (max - min)
  }
  weighted<T extends { weight: number }>(entries: readonly T[]): T {
    let total = 0
    for (const entry of entries) total += entry.weight
    let point = this.next() * total
    for (const entry of entries) {
      point -= entry.weight
      if (point < 0) return entry
    }
    return entries[entries.length - 1]!
  }
  exponential(mean: number): number {
    return -Math.log(1 - this.next()) * mean
  }
  /** Log-normal around a median; sigma is that of the logarithm. */
  logNormal(median: number, sigma: number): number {
    const u = 1 - this.next()
    const v = this.next()
    return median * Math.exp(sigma * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v))
  }
  hex(length: number): string {
    let text = ''
    while (text.length < length) text += Math.floor(this.next() * 0x10000).toString(16).padStart(4, '0')
    return text.slice(0, length)
  }
  /** A version-4-shaped UUID, as analytics.js makes anonymous ids. */
  uuid(): string {
    const h = this.hex(32)
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${'89ab'[this.integer(0, 3)]}${h.slice(17, 20)}-${h.slice(20, 32)}`
  }
}

const HOUR_ENTRIES = HOUR_WEIGHTS.map((weight, hour) => ({ weight, hour }))
/** A milliseconds offset into a local day, by the hour weights. */
function timeOfDay(draw: Draw): number {
  return draw.weighted(HOUR_ENTRIES).hour * HOUR + Math.floor(draw.next() * HOUR)
}

function ipIn(draw: Draw, network: string): string {
  const [base, bits] = network.split('/') as [string, string]
  const start = base.split('.').reduce((sum, octet) => sum * 256 + Number(octet), 0)
  const size = 2 ** (32 - Number(bits))
  const address = start + draw.integer(1, size - 2)
  return [24, 16, 8, 0].map((shift) => Math.floor(address / 2 ** shift) % 256).join('.')
}

/** Whether an IPv4 address lies in a network written a.b.c.d/n. */
export function ipInNetwork(ip: string, network: string): boolean {
  const [base, bits] = network.split('/') as [string, string]
  const toNumber = (text: string) => text.split('.').reduce((sum, octet) => sum * 256 + Number(octet), 0)
  const size = 2 ** (32 - Number(bits))
  return Math.floor(toNumber(ip) / size) === Math.floor(toNumber(base) / size)
}

// ---------------------------------------------------------------------------------------------
// People

export interface DeviceProfile {
  type: DeviceType
  userAgent: string
  anonymousId: string
}

export interface UserPlan {
  /** 0-based; message ids carry it. */
  index: number
  /** Set when the person identifies; their canonical id is then this, else the first device's anonymous id. */
  userId?: string
  /** The id every count should use for this person. */
  canonicalId: string
  /** The first event's time: the acquisition. */
  acquiredAt: number
  /** The channel of the first visit (as enrich derives it from `landing`). */
  channel: string
  landing: LandingEntry
  country: string
  locale: string
  ip: string
  /** 0-1: how active the person is; skewed to low values. */
  propensity: number
  tier: EngagementTier
  devices: DeviceProfile[]
  /** Planned session starts, ascending; the first is `acquiredAt`. The log has exactly this many sessions. */
  sessionStarts: number[]
  /** Session in which the first device identifies. */
  identifyAtSession?: number
  /** First session on the second device (it browses anonymously, then identifies in that session). */
  secondDeviceFromSession?: number
}

/** Tier of a propensity: the quarters of 0-1, like the profile's engagement thresholds 25/50/75. */
export function tierOf(propensity: number): EngagementTier {
  return propensity < 0.25 ? 'Low' : propensity < 0.5 ? 'Medium' : propensity < 0.75 ? 'Medium-High' : 'High'
}

interface Range {
  fromDay: number
  toDay: number
  start: number
  /** First instant after the range. */
  end: number
}

function rangeOf(options: SimulationOptions): Range {
  const fromDay = dayOfDate(options.from)!
  const toDay = dayOfDate(options.to)!
  return { fromDay, toDay, start: localDayStart(options.timezone, fromDay), end: localDayStart(options.timezone, toDay + 1) }
}

/** A local day of the range, denser towards its end by `growth`, lighter at weekends. */
function acquisitionDay(draw: Draw, range: Range, growth: number): number {
  const days = range.toDay - range.fromDay + 1
  for (;;) {
    // inverse of the CDF of the density 1 + (growth - 1) x on [0, 1]
    const slope = growth - 1
    const u = draw.next()
    const x = Math.abs(slope) < 1e-9 ? u : (Math.sqrt(1 + slope * (2 + slope) * u) - 1) / slope
    const day = range.fromDay + Math.min(days - 1, Math.floor(x * days))
    const weekday = (((day + 4) % 7) + 7) % 7 // 1970-01-01 was a Thursday
    if (draw.chance(WEEKDAY_WEIGHTS[weekday]!)) return day
  }
}

/** A time on a local day, never past its end (a DST day may be 23 hours long). */
function timeOnDay(draw: Draw, timezone: string, day: number): number {
  return Math.min(localDayStart(timezone, day) + timeOfDay(draw), localDayStart(timezone, day + 1) - 1000)
}

function deviceOfType(draw: Draw, types: readonly DeviceType[]): Omit<DeviceProfile, 'anonymousId'> {
  const entry = draw.weighted(USER_AGENTS.filter((agent) => types.includes(agent.type)))
  return { type: entry.type, userAgent: entry.userAgent }
}

/** Every person's plan, in index order. Cheap (no events): the events come from `personEvents`. */
export function planUsers(options: SimulationOptions): UserPlan[] {
  const range = rangeOf(options)
  const plans: UserPlan[] = []
  for (let index = 0; index < options.users; index++) plans.push(planUser(options, range, index))
  return plans
}

function planUser(options: SimulationOptions, range: Range, index: number): UserPlan {
  const draw = new Draw(mixSeed(options.seed, index, 1))
  const { timezone } = options
  const day = acquisitionDay(draw, range, options.growth)
  const acquiredAt = timeOnDay(draw, timezone, day)
  const landing = draw.weighted(ACQUISITION_LANDINGS)
  const place = draw.weighted(COUNTRY_NETWORKS)
  const first = draw.weighted(USER_AGENTS)
  const devices: DeviceProfile[] = [{ type: first.type, userAgent: first.userAgent, anonymousId: draw.uuid() }]
  // most people do little, a few do a lot
  const propensity = draw.next() ** 2.2
  const p = propensity

  // sessions: the first at acquisition, then on active days of a lifetime that grows with propensity
  const sessionStarts = [acquiredAt]
  if (draw.chance(0.3 * p)) sessionStarts.push(acquiredAt + draw.uniform(1, 6) * HOUR)
  const activeDayChance = 0.02 + 0.83 * p ** 1.5
  const lifetimeDays = Math.round(7 + 120 * p * (0.5 + draw.next()))
  for (let offset = 1; offset <= lifetimeDays; offset++) {
    if (!draw.chance(activeDayChance)) continue
    const count = 1 + (draw.chance(0.25 * p) ? 1 : 0) + (draw.chance(0.1 * p) ? 1 : 0)
    const starts: number[] = []
    for (let i = 0; i < count; i++) starts.push(timeOnDay(draw, timezone, day + offset))
    sessionStarts.push(...starts.sort((a, b) => a - b))
  }
  sessionStarts.sort((a, b) => a - b)

  const plan: UserPlan = {
    index, canonicalId: devices[0]!.anonymousId, acquiredAt, channel: landing.channel, landing,
    country: place.country, locale: place.locale, ip: ipIn(draw, place.network),
    propensity, tier: tierOf(propensity), devices, sessionStarts,
  }
  if (draw.chance(Math.min(0.95, options.identifyShare * (0.4 + 1.6 * p)))) {
    plan.userId = `${options.idPrefix}-user-${index}`
    plan.canonicalId = plan.userId
    plan.identifyAtSession = draw.chance(0.4) ? 0 : draw.integer(0, sessionStarts.length - 1)
    if (sessionStarts.length - plan.identifyAtSession >= 2 && draw.chance(options.secondDeviceShare)) {
      const second = deviceOfType(draw, first.type === 'desktop' ? ['mobile', 'tablet'] : ['desktop'])
      devices.push({ ...second, anonymousId: draw.uuid() })
      plan.secondDeviceFromSession = draw.integer(plan.identifyAtSession + 1, sessionStarts.length - 1)
    }
  }
  return plan
}

// ---------------------------------------------------------------------------------------------
// Events

type Step = 'page' | 'identify' | 'click' | 'convert'

interface Emitter {
  draw: Draw
  idPrefix: string
  nextId: number
}

function landingPage(landing: LandingEntry, page: Page): SimulatedContext['page'] {
  const search = landing.utm ? `?utm_source=${encodeURIComponent(landing.utm.source)}&utm_medium=${encodeURIComponent(landing.utm.medium)}&utm_campaign=${encodeURIComponent(landing.utm.campaign)}` : undefined
  return {
    path: page.path, url: `${SITE}${page.path}${search ?? ''}`, title: page.title,
    ...(landing.referrer ? { referrer: landing.referrer } : {}),
    ...(search ? { search } : {}),
  }
}

/**
 * One person's messages in time order: session after session, each a run of page views with, by
 * chance, `click_event1` and then `custom_event2`, and the identify where the plan puts it.
 */
export function* personEvents(plan: UserPlan, options: SimulationOptions): Generator<SimulatedMessage> {
  const draw = new Draw(mixSeed(options.seed, plan.index, 2))
  const p = plan.propensity
  const clickChance = Math.min(1, options.clickProbability * (0.6 + 0.8 * p))
  const convertChance = Math.min(1, options.convertProbability * (0.6 + 0.8 * p))
  const identified = [false, false]
  let last = -Infinity
  let id = 0

  for (let session = 0; session < plan.sessionStarts.length; session++) {
    const onSecond = plan.secondDeviceFromSession !== undefined && session >= plan.secondDeviceFromSession &&
      (session === plan.secondDeviceFromSession || draw.chance(0.5))
    const deviceIndex = onSecond ? 1 : 0
    const device = plan.devices[deviceIndex]!
    const identifyHere = (deviceIndex === 0 && session === plan.identifyAtSession) || (deviceIndex === 1 && session === plan.secondDeviceFromSession)

    const pages = Math.min(30, 1 + Math.floor(draw.exponential(0.3 + 3 * p)))
    const identifyAfter = identifyHere ? draw.integer(0, Math.min(2, pages - 1)) : -1
    const clickAfter = draw.chance(clickChance) ? draw.integer(0, pages - 1) : -1
    const convertAfter = clickAfter >= 0 && draw.chance(convertChance) ? Math.min(pages - 1, clickAfter + draw.integer(0, 2)) : -1
    const steps: Step[] = []
    for (let i = 0; i < pages; i++) {
      steps.push('page')
      if (i === identifyAfter) steps.push('identify')
      if (i === clickAfter) steps.push('click')
      if (i === convertAfter) steps.push('convert')
    }

    let time = session === 0 ? plan.acquiredAt
      : Math.round(Math.max(plan.sessionStarts[session]!, last + MIN_GAP_BETWEEN_SESSIONS_MS + draw.uniform(0, 30) * MINUTE))
    const landing = session === 0 ? plan.landing : draw.weighted(RETURN_LANDINGS)
    let page: SimulatedContext['page'] = landingPage(landing, draw.weighted(LANDING_PAGES))
    let first = true
    for (const step of steps) {
      if (!first) {
        // reading a page takes a while; clicks follow sooner
        const gap = step === 'page' ? draw.logNormal(30_000, 1) : draw.uniform(2_000, 60_000)
        time += Math.round(Math.min(MAX_GAP_IN_SESSION_MS, Math.max(1_000, gap)))
      }
      if (step === 'page' && !first) {
        const next = draw.weighted(identified[deviceIndex] && draw.chance(0.4) ? ACCOUNT_PAGES : BROWSING_PAGES)
        // the previous page is the referrer: the site's own host, so no new channel
        page = { path: next.path, url: `${SITE}${next.path}`, title: next.title, referrer: page.url }
      }
      first = false
      const message: SimulatedMessage = {
        type: step === 'page' ? 'page' : step === 'identify' ? 'identify' : 'track',
        messageId: `${options.idPrefix}-${plan.index}-${id++}`,
        anonymousId: device.anonymousId,
        context: { page, userAgent: device.userAgent, ip: plan.ip, locale: plan.locale, library: LIBRARY },
        timestamp: new Date(time).toISOString(),
      }
      if (identified[deviceIndex] || step === 'identify') message.userId = plan.userId
      if (step === 'page') {
        message.name = page.title
        message.properties = { path: page.path, url: page.url, title: page.title, ...(page.referrer ? { referrer: page.referrer } : {}), ...(page.search ? { search: page.search } : {}) }
      } else if (step === 'identify') {
        identified[deviceIndex] = true
        message.traits = { email: `${plan.userId}@example.com`, plan: draw.chance(0.2) ? 'pro' : 'free' }
      } else if (step === 'click') {
        message.event = 'click_event1'
        message.properties = { element: draw.chance(0.5) ? 'cta-primary' : 'cta-secondary', path: page.path }
      } else {
        message.event = 'custom_event2'
        message.properties = { value: draw.integer(5, 200), currency: 'EUR' }
      }
      last = time
      yield reorder(message)
    }
  }
}

/** A fixed key order, so the NDJSON reads the same way for every message. */
function reorder(message: SimulatedMessage): SimulatedMessage {
  const { type, messageId, anonymousId, userId, event, name, properties, traits, context, timestamp } = message
  return {
    type, messageId, anonymousId, ...(userId !== undefined ? { userId } : {}), ...(event !== undefined ? { event } : {}),
    ...(name !== undefined ? { name } : {}), ...(properties ? { properties } : {}), ...(traits ? { traits } : {}), context, timestamp,
  }
}

// ---------------------------------------------------------------------------------------------
// Crawlers

export interface BotPlan {
  index: number
  anonymousId: string
  ip: string
  /** Crawl starts, ascending. */
  crawls: number[]
}

export function planBots(options: SimulationOptions): BotPlan[] {
  const range = rangeOf(options)
  const count = Math.round(options.users * options.botShare)
  const bots: BotPlan[] = []
  for (let index = 0; index < count; index++) {
    const draw = new Draw(mixSeed(options.seed, index, 3))
    const crawls: number[] = []
    const visits = draw.integer(1, 6)
    for (let i = 0; i < visits; i++) crawls.push(Math.floor(draw.uniform(range.start, range.end)))
    crawls.sort((a, b) => a - b)
    bots.push({ index, anonymousId: draw.uuid(), ip: ipIn(draw, GOOGLEBOT_NETWORK), crawls })
  }
  return bots
}

/** A crawler's page views: bursts of 5 to 40 pages a few seconds apart, no referrer, Googlebot's user agent. */
export function* botEvents(bot: BotPlan, options: SimulationOptions): Generator<SimulatedMessage> {
  const draw = new Draw(mixSeed(options.seed, bot.index, 4))
  let id = 0
  let last = -Infinity
  for (const crawl of bot.crawls) {
    let time = Math.max(crawl, last + HOUR)
    const pages = draw.integer(5, 40)
    for (let i = 0; i < pages; i++) {
      if (i > 0) time += draw.integer(1_000, 15_000)
      const target = draw.weighted(i === 0 ? LANDING_PAGES : BROWSING_PAGES)
      const page = { path: target.path, url: `${SITE}${target.path}`, title: target.title }
      last = time
      yield {
        type: 'page', messageId: `${options.idPrefix}-bot${bot.index}-${id++}`, anonymousId: bot.anonymousId, name: page.title,
        properties: { path: page.path, url: page.url, title: page.title },
        context: { page, userAgent: GOOGLEBOT_USER_AGENT, ip: bot.ip, locale: 'en-US', library: LIBRARY },
        timestamp: new Date(time).toISOString(),
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The whole log

interface Pending {
  time: number
  message: SimulatedMessage
  source: Iterator<SimulatedMessage>
}

const earlier = (a: Pending, b: Pending) => a.time < b.time || (a.time === b.time && a.message.messageId < b.message.messageId)

/**
 * Every message of the simulation in event-time order (ties by message id): the people's and the
 * crawlers' streams merged lazily, so memory holds the plans and one pending message per active
 * participant, not the log.
 */
export function* simulate(partial: Partial<SimulationOptions> = {}): Generator<SimulatedMessage> {
  const options = resolveSimulationOptions(partial)
  const starts: { at: number; open: () => Iterator<SimulatedMessage> }[] = [
    ...planUsers(options).map((plan) => ({ at: plan.acquiredAt, open: () => personEvents(plan, options) })),
    ...planBots(options).map((bot) => ({ at: bot.crawls[0]!, open: () => botEvents(bot, options) })),
  ]
  starts.sort((a, b) => a.at - b.at) // stable: ties keep people before crawlers, by index
  const heap: Pending[] = []
  const push = (source: Iterator<SimulatedMessage>) => {
    const next = source.next()
    if (next.done) return
    heap.push({ time: Date.parse(next.value.timestamp), message: next.value, source })
    for (let i = heap.length - 1; i > 0;) {
      const parent = (i - 1) >> 1
      if (!earlier(heap[i]!, heap[parent]!)) break
      ;[heap[i], heap[parent]] = [heap[parent]!, heap[i]!]
      i = parent
    }
  }
  const pop = (): Pending => {
    const top = heap[0]!
    const last = heap.pop()!
    if (heap.length > 0) {
      heap[0] = last
      for (let i = 0; ;) {
        const left = 2 * i + 1
        let least = i
        if (left < heap.length && earlier(heap[left]!, heap[least]!)) least = left
        if (left + 1 < heap.length && earlier(heap[left + 1]!, heap[least]!)) least = left + 1
        if (least === i) break
        ;[heap[i], heap[least]] = [heap[least]!, heap[i]!]
        i = least
      }
    }
    return top
  }
  // the log is in time order: it ends at the first message after the last local day
  const end = options.until === undefined ? Number.POSITIVE_INFINITY : localDayStart(options.timezone, dayOfDate(options.until)! + 1)
  let opened = 0
  while (opened < starts.length || heap.length > 0) {
    // open every participant whose first message is due before the earliest pending one
    while (opened < starts.length && (heap.length === 0 || starts[opened]!.at <= heap[0]!.time)) push(starts[opened++]!.open())
    if (heap.length === 0) continue
    const next = pop()
    if (next.time >= end) return
    yield next.message
    push(next.source)
  }
}

/** The whole log as an array (tests, small runs). */
export function generateLog(partial: Partial<SimulationOptions> = {}): SimulatedMessage[] {
  return [...simulate(partial)]
}

/** The default cohort month: May 2019 (the scenario) when the range covers it, else the range's first month. */
export function defaultCohortMonth(options: Pick<SimulationOptions, 'from' | 'to'>): string {
  return options.from.slice(0, 7) <= '2019-05' && options.to.slice(0, 7) >= '2019-05' ? '2019-05' : options.from.slice(0, 7)
}
