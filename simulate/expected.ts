import { COUNTRY_NETWORKS, ipInNetwork, localDayOf } from './model.ts'

/**
 * The answers the pipeline should give for a log, computed the plain way: every event in memory,
 * grouped by person, sorted, counted. Deliberately independent of `operators/`: nothing here is
 * imported from the code it checks, and the rules are re-stated from the docs (identity.md,
 * sessions.md, enrich.md) in their simplest form. It reads only the log (and the simulator's own
 * table of which IP block is in which country).
 */

/** What this code reads of a message: Segment fields, any source. */
export interface LogMessage {
  type: string
  messageId: string
  anonymousId?: string
  userId?: string
  previousId?: string
  event?: string
  timestamp: string
  context?: {
    userAgent?: string
    ip?: string
    page?: { url?: string; referrer?: string; search?: string }
    campaign?: { source?: string; medium?: string; name?: string; term?: string; content?: string }
  }
}

export interface ExpectedOptions {
  /** The project's IANA timezone: acquisition months and session months are local to it. */
  timezone: string
  /** Acquisition month (YYYY-MM, local) whose users make up the funnel cohort. */
  cohortMonth: string
  /** Session gap: events at most this far apart are one session. Default 30 minutes. */
  sessionGapMs?: number
  /** Funnel conversion window, from the step-1 time. Default 14 days. */
  funnelWindowMs?: number
  /** Event time engagement is scored as of. Default: the newest event of the log. */
  engagementAsOf?: number
}

export const FUNNEL_STEPS = ['$session_start', 'click_event1', 'custom_event2'] as const

export interface ExpectedUser {
  /** Canonical id: the userId, else the user the anonymous id was first linked to, else the anonymous id. */
  id: string
  /** Anonymous ids linked to this user by identify or alias (sorted). */
  linkedAnonymousIds: string[]
  /** First event, ISO 8601. */
  firstSeen: string
  lastSeen: string
  /** Local month of the first event. */
  acquisitionMonth: string
  /** Channel of the first event. */
  channel: string
  /** Device type of the first event. */
  firstDevice: string
  /** Device type of the latest event whose device is known (what a profile shows). */
  device: string
  /** Country of the latest event whose IP is in a known block. */
  country?: string
  sessions: number
  events: number
  /** Highest funnel level reached (0-3), whatever the cohort. */
  funnelLevel: number
  /** Engagement score (0-100) and level as of `engagementAsOf` (docs/profiles.md). */
  engagementScore: number
  engagement: string
}

export interface ExpectedAnswers {
  timezone: string
  sessionGapMinutes: number
  messages: { total: number; bots: number; byType: Record<string, number> }
  /** Event names as the pipeline counts them: a track's `event`, `$page`, `$identify`, ... */
  events: { byName: Record<string, number>; byNameIncludingBots: Record<string, number> }
  identity: { links: number; refusedLinks: number }
  users: {
    total: number
    identified: number
    anonymous: number
    /** Distinct crawler ids (anonymous ids whose every message came with a bot user agent). */
    botIds: number
    byAcquisitionMonth: Record<string, number>
    byChannel: Record<string, number>
    byFirstDevice: Record<string, number>
    byDevice: Record<string, number>
    byCountry: Record<string, number>
    /** Users per engagement level as of `engagementAsOf`. */
    byEngagement: Record<string, number>
    /** Users per engagement level and acquisition month: step 2 of the flow. */
    byEngagementAndMonth: Record<string, Record<string, number>>
  }
  sessions: { total: number; byStartMonth: Record<string, number> }
  funnel: {
    cohort: string
    windowDays: number
    steps: { level: number; name: string; users: number }[]
    /** Cohort users who reached level 2 but not 3, sorted. */
    stuckAtLevel2: string[]
  }
  /** Users reaching levels 1, 2, 3, per acquisition month. */
  funnelByAcquisitionMonth: Record<string, [number, number, number]>
  perUser: ExpectedUser[]
}

const MINUTE = 60_000
const DAY = 24 * 60 * MINUTE

// ---------------------------------------------------------------------------------------------
// The rules, written out

/** A crawler by its user agent (the log's crawlers are Googlebot; the usual words cover others). */
export function isBotUserAgent(userAgent: string | undefined): boolean {
  return userAgent !== undefined && /bot\b|bot\/|crawler|spider|headless/i.test(userAgent)
}

/** Device type of a user agent: bot, tablet, mobile, desktop, else unknown. */
export function deviceTypeOf(userAgent: string | undefined): string {
  if (!userAgent || !userAgent.trim()) return 'unknown'
  if (isBotUserAgent(userAgent)) return 'bot'
  if (/iPad/.test(userAgent)) return 'tablet'
  // Android without the Mobile token is a tablet
  if (/Android/.test(userAgent)) return /Mobile/.test(userAgent) ? 'mobile' : 'tablet'
  if (/iPhone|iPod|Mobile/.test(userAgent)) return 'mobile'
  if (/Windows NT|Macintosh|X11|CrOS/.test(userAgent)) return 'desktop'
  return 'unknown'
}

/** Country of an IP: the simulator's blocks only (the pipeline needs a GeoIP database for this). */
export function countryOfIp(ip: string | undefined): string | undefined {
  if (!ip || !/^\d+\.\d+\.\d+\.\d+$/.test(ip)) return undefined
  return COUNTRY_NETWORKS.find((entry) => ipInNetwork(ip, entry.network))?.country
}

type Kind = 'search' | 'social' | 'email'
/** Hosts; a trailing dot is a brand under any country domain (google.de, www.google.co.uk). Webmail first: it beats the search brand. */
const KNOWN_HOSTS: [string, Kind][] = [
  ['mail.google.com', 'email'], ['outlook.live.com', 'email'], ['mail.yahoo.com', 'email'],
  ['google.', 'search'], ['bing.com', 'search'], ['duckduckgo.com', 'search'], ['yahoo.', 'search'], ['ecosia.org', 'search'], ['yandex.', 'search'], ['baidu.com', 'search'],
  ['facebook.com', 'social'], ['t.co', 'social'], ['twitter.com', 'social'], ['x.com', 'social'], ['linkedin.com', 'social'], ['reddit.com', 'social'],
  ['instagram.com', 'social'], ['youtube.com', 'social'], ['tiktok.com', 'social'], ['pinterest.', 'social'], ['news.ycombinator.com', 'social'],
]
const SOURCE_NAMES: Record<string, Kind> = {
  google: 'search', bing: 'search', duckduckgo: 'search', yahoo: 'search', ecosia: 'search', adwords: 'search',
  facebook: 'social', fb: 'social', meta: 'social', instagram: 'social', twitter: 'social', x: 'social', linkedin: 'social', reddit: 'social', youtube: 'social', tiktok: 'social',
  email: 'email', 'e-mail': 'email', newsletter: 'email',
}
const PAID = new Set(['cpc', 'ppc', 'paid', 'paidsearch', 'paid_search', 'paid-search', 'paidsocial', 'paid_social', 'paid-social', 'retargeting'])

function kindOfHost(host: string): Kind | undefined {
  for (const [known, kind] of KNOWN_HOSTS) {
    if (known.endsWith('.')) {
      const labels = host.split('.')
      const at = labels.indexOf(known.slice(0, -1))
      const rest = at < 0 ? [] : labels.slice(at + 1)
      if (rest.length > 0 && rest.length <= 2 && rest.every((label) => label.length <= 3)) return kind
    } else if (host === known || host.endsWith(`.${known}`)) return kind
  }
  return undefined
}

function hostOfUrl(url: string | undefined): string | undefined {
  if (!url) return undefined
  try {
    return new URL(url).hostname.toLowerCase() || undefined
  } catch {
    return undefined
  }
}

/** The acquisition channel of a message's context: GA4's default grouping as docs/enrich.md states it. */
export function channelOf(context: LogMessage['context']): string {
  const page = context?.page
  const query = new URLSearchParams(page?.search ?? (page?.url?.includes('?') ? page.url.slice(page.url.indexOf('?')) : ''))
  const campaign = context?.campaign
  const fromCampaign = campaign && Object.values(campaign).some((value) => typeof value === 'string' && value.trim())
  const utm = fromCampaign
    ? { source: campaign.source, medium: campaign.medium, any: true }
    : { source: query.get('utm_source') ?? undefined, medium: query.get('utm_medium') ?? undefined,
        any: ['utm_source', 'utm_medium', 'utm_campaign', 'utm_term', 'utm_content'].some((name) => query.get(name)?.trim()) }
  const source = utm.source?.trim().toLowerCase()
  const medium = utm.medium?.trim().toLowerCase() ?? ''

  const pageHost = hostOfUrl(page?.url)?.replace(/^www\./, '')
  const referrerHost = hostOfUrl(page?.referrer)
  const external = referrerHost !== undefined && referrerHost.replace(/^www\./, '') !== pageHost ? referrerHost : undefined
  const referrerKind = external === undefined ? undefined : kindOfHost(external)

  if (!utm.any) {
    if (external === undefined) return 'direct'
    if (referrerKind === undefined) return 'referral'
    return referrerKind === 'search' ? 'organic_search' : referrerKind === 'social' ? 'social' : 'email'
  }
  const kind = (source === undefined ? undefined : SOURCE_NAMES[source] ?? kindOfHost(source)) ?? referrerKind
  if (PAID.has(medium)) {
    if (kind === 'search' || ['paidsearch', 'paid_search', 'paid-search'].includes(medium)) return 'paid_search'
    if (kind === 'social' || ['paidsocial', 'paid_social', 'paid-social'].includes(medium)) return 'paid_social'
    return 'other'
  }
  if (['display', 'banner', 'cpm', 'expandable', 'interstitial'].includes(medium)) return 'display'
  if (['email', 'e-mail', 'e_mail', 'newsletter'].includes(medium)) return 'email'
  if (['affiliate', 'affiliates'].includes(medium)) return 'affiliate'
  if (['social', 'social-network', 'social_network', 'social-media', 'social_media'].includes(medium)) return 'social'
  if (medium === 'organic') return 'organic_search'
  if (medium === 'referral') return 'referral'
  if (kind !== undefined) return kind === 'search' ? 'organic_search' : kind === 'social' ? 'social' : 'email'
  return external === undefined ? 'other' : 'referral'
}

const monthFormatters = new Map<string, Intl.DateTimeFormat>()
/** YYYY-MM of an instant in a timezone. */
export function localMonthOf(time: number, timezone: string): string {
  let formatter = monthFormatters.get(timezone)
  if (!formatter) monthFormatters.set(timezone, (formatter = new Intl.DateTimeFormat('en-US', { timeZone: timezone, year: 'numeric', month: '2-digit' })))
  const parts = formatter.formatToParts(time)
  return `${parts.find((part) => part.type === 'year')!.value}-${parts.find((part) => part.type === 'month')!.value}`
}

export function eventNameOf(message: Pick<LogMessage, 'type' | 'event'>): string {
  return message.type === 'track' ? message.event ?? '' : `$${message.type}`
}

/** Engagement levels, lowest first, and the default thresholds of Medium, Medium-High and High. */
export const ENGAGEMENT_LEVELS = ['Low', 'Medium', 'Medium-High', 'High'] as const
const THRESHOLDS = [25, 50, 75] as const

/**
 * Engagement as docs/profiles.md states it, written out: as of the local day of `asOf` (or of
 * the newest event, when later), recency R from whole local days since the newest event,
 * frequency F from active days and activity A from events in the 30 local days ending that day.
 */
export function engagementOf(times: readonly number[], asOf: number, timezone: string): { score: number; level: string } {
  const newest = Math.max(...times)
  const today = localDayOf(timezone, Math.max(asOf, newest))
  const since = today - localDayOf(timezone, newest)
  const days = times.map((time) => localDayOf(timezone, time)).filter((day) => day > today - 30 && day <= today)
  const recency = since <= 2 ? 1 : since >= 30 ? 0 : (30 - since) / 28
  const frequency = Math.min(new Set(days).size, 20) / 20
  const activity = Math.min(1, Math.log(1 + days.length) / Math.log(1 + 500))
  const score = Math.round(100 * recency * (0.6 * frequency + 0.4 * activity))
  const level = ENGAGEMENT_LEVELS[THRESHOLDS.filter((threshold) => score >= threshold).length]!
  return { score, level }
}

// ---------------------------------------------------------------------------------------------
// The computation

interface Stamp {
  time: number
  messageId: string
}
const before = (a: Stamp, b: Stamp) => a.time < b.time || (a.time === b.time && a.messageId < b.messageId)

/** Events under one id before ids are resolved: a userId, or an anonymous id. */
interface Group {
  canonical: () => string
  times: number[]
  names: string[]
  first?: Stamp & { context: LogMessage['context'] }
  lastDevice?: Stamp & { type: string }
  lastCountry?: Stamp & { country: string }
}

function increment(counts: Map<string, number>, key: string, by = 1): void {
  counts.set(key, (counts.get(key) ?? 0) + by)
}

/** A map as an object with sorted keys, so the JSON is the same for the same answers. */
function sorted(counts: Map<string, number>): Record<string, number> {
  return Object.fromEntries([...counts].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
}

/**
 * The expected answers of a log, read in its order (the order it is sent in: the first link
 * of an anonymous id wins in that order).
 */
export function computeExpected(log: Iterable<LogMessage>, options: ExpectedOptions): ExpectedAnswers {
  const gap = options.sessionGapMs ?? 30 * MINUTE
  const window = options.funnelWindowMs ?? 14 * DAY
  const byType = new Map<string, number>()
  const byName = new Map<string, number>()
  const byNameIncludingBots = new Map<string, number>()
  let total = 0
  let bots = 0
  let refusedLinks = 0

  // identity: anonymous id → user id (first link wins); ids used as a user id are never linked
  const links = new Map<string, string>()
  const usedAsUserId = new Set<string>()
  const botIds = new Set<string>()
  const humanIds = new Set<string>()
  const groups = new Map<string, Group>()

  for (const message of log) {
    total++
    increment(byType, message.type)
    const name = eventNameOf(message)
    increment(byNameIncludingBots, name)
    const time = Date.parse(message.timestamp)

    // links, for every message (a bot could identify too; the model's never do). An identify
    // never links an id used as a user id (two users are never merged implicitly); an alias,
    // the explicit merge, does
    const from = message.type === 'identify' ? message.anonymousId : message.type === 'alias' ? message.previousId : undefined
    if (from !== undefined && message.userId !== undefined && from !== message.userId) {
      if (links.has(from) || (message.type !== 'alias' && usedAsUserId.has(from))) {
        if (links.get(from) !== message.userId) refusedLinks++
      } else links.set(from, message.userId)
    }
    // a message routed by its userId (no anonymous id, or the same) marks that id as a user id
    if (message.userId !== undefined && (message.anonymousId === undefined || message.anonymousId === message.userId) && message.type !== 'alias') usedAsUserId.add(message.userId)

    const userAgent = message.context?.userAgent
    if (isBotUserAgent(userAgent)) {
      bots++
      if (message.anonymousId !== undefined) botIds.add(message.anonymousId)
      continue
    }
    if (message.anonymousId !== undefined) humanIds.add(message.anonymousId)
    increment(byName, name)

    const key = message.userId !== undefined ? `u:${message.userId}` : `a:${message.anonymousId}`
    let group = groups.get(key)
    if (!group) {
      const userId = message.userId
      const anonymousId = message.anonymousId!
      group = { canonical: userId !== undefined ? () => userId : () => links.get(anonymousId) ?? anonymousId, times: [], names: [] }
      groups.set(key, group)
    }
    group.times.push(time)
    group.names.push(name)
    const stamp = { time, messageId: message.messageId }
    if (!group.first || before(stamp, group.first)) group.first = { ...stamp, context: message.context }
    const device = deviceTypeOf(userAgent)
    if (device !== 'unknown' && (!group.lastDevice || before(group.lastDevice, stamp))) group.lastDevice = { ...stamp, type: device }
    const country = countryOfIp(message.context?.ip)
    if (country && (!group.lastCountry || before(group.lastCountry, stamp))) group.lastCountry = { ...stamp, country }
  }

  // people: the groups under one canonical id together
  const people = new Map<string, Group[]>()
  for (const group of groups.values()) {
    const id = group.canonical()
    const list = people.get(id)
    if (list) list.push(group)
    else people.set(id, [group])
  }
  const linkedTo = new Map<string, string[]>()
  for (const [anonymousId, userId] of links) {
    const list = linkedTo.get(userId)
    if (list) list.push(anonymousId)
    else linkedTo.set(userId, [anonymousId])
  }
  const userIds = new Set([...groups.keys()].filter((key) => key.startsWith('u:')).map((key) => key.slice(2)))

  let newestEvent = Number.NEGATIVE_INFINITY
  for (const group of groups.values()) for (const time of group.times) newestEvent = Math.max(newestEvent, time)
  const asOf = options.engagementAsOf ?? newestEvent
  const engagementByMonth = new Map<string, Map<string, number>>()
  const counts = {
    engagement: new Map<string, number>(),
    month: new Map<string, number>(), channel: new Map<string, number>(), firstDevice: new Map<string, number>(),
    device: new Map<string, number>(), country: new Map<string, number>(), sessionMonth: new Map<string, number>(),
  }
  const funnelByMonth = new Map<string, [number, number, number]>()
  const perUser: ExpectedUser[] = []
  let sessionsTotal = 0
  let identified = 0

  for (const [id, list] of [...people].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const events: { time: number; name: string }[] = []
    let first: Group['first']
    let lastDevice: Group['lastDevice']
    let lastCountry: Group['lastCountry']
    for (const group of list) {
      for (let i = 0; i < group.times.length; i++) events.push({ time: group.times[i]!, name: group.names[i]! })
      if (group.first && (!first || before(group.first, first))) first = group.first
      if (group.lastDevice && (!lastDevice || before(lastDevice, group.lastDevice))) lastDevice = group.lastDevice
      if (group.lastCountry && (!lastCountry || before(lastCountry, group.lastCountry))) lastCountry = group.lastCountry
    }
    events.sort((a, b) => a.time - b.time)

    // sessions: cut where consecutive events are more than the gap apart
    const sessionStarts: number[] = []
    for (let i = 0; i < events.length; i++) {
      if (i === 0 || events[i]!.time - events[i - 1]!.time > gap) sessionStarts.push(events[i]!.time)
    }
    for (const start of sessionStarts) increment(counts.sessionMonth, localMonthOf(start, options.timezone))
    sessionsTotal += sessionStarts.length

    // funnel: a session start, then click_event1, then custom_event2, each at or after the
    // previous step and all within the window of the session start
    const clicks = events.filter((event) => event.name === FUNNEL_STEPS[1]).map((event) => event.time)
    const conversions = events.filter((event) => event.name === FUNNEL_STEPS[2]).map((event) => event.time)
    let level = sessionStarts.length > 0 ? 1 : 0
    for (const start of sessionStarts) {
      const click = clicks.find((time) => time >= start && time <= start + window)
      if (click === undefined) continue
      level = Math.max(level, 2)
      if (conversions.some((time) => time >= click && time <= start + window)) {
        level = 3
        break
      }
    }

    const acquisitionMonth = localMonthOf(first!.time, options.timezone)
    const channel = channelOf(first!.context)
    const firstDevice = deviceTypeOf(first!.context?.userAgent)
    const device = lastDevice?.type ?? 'unknown'
    increment(counts.month, acquisitionMonth)
    increment(counts.channel, channel)
    increment(counts.firstDevice, firstDevice)
    increment(counts.device, device)
    increment(counts.country, lastCountry?.country ?? 'unknown')
    const engagement = engagementOf(events.map((event) => event.time), asOf, options.timezone)
    increment(counts.engagement, engagement.level)
    const levelMonths = engagementByMonth.get(engagement.level) ?? new Map<string, number>()
    increment(levelMonths, acquisitionMonth)
    engagementByMonth.set(engagement.level, levelMonths)
    const monthFunnel = funnelByMonth.get(acquisitionMonth) ?? [0, 0, 0]
    for (let step = 0; step < level; step++) monthFunnel[step]!++
    funnelByMonth.set(acquisitionMonth, monthFunnel)
    if (userIds.has(id)) identified++

    perUser.push({
      id,
      linkedAnonymousIds: (linkedTo.get(id) ?? []).sort(),
      firstSeen: new Date(first!.time).toISOString(),
      lastSeen: new Date(events[events.length - 1]!.time).toISOString(),
      acquisitionMonth, channel, firstDevice, device,
      ...(lastCountry ? { country: lastCountry.country } : {}),
      sessions: sessionStarts.length, events: events.length, funnelLevel: level,
      engagementScore: engagement.score, engagement: engagement.level,
    })
  }

  const cohort = perUser.filter((user) => user.acquisitionMonth === options.cohortMonth)
  const reached = (level: number) => cohort.filter((user) => user.funnelLevel >= level).length
  return {
    timezone: options.timezone,
    sessionGapMinutes: gap / MINUTE,
    messages: { total, bots, byType: sorted(byType) },
    events: { byName: sorted(byName), byNameIncludingBots: sorted(byNameIncludingBots) },
    identity: { links: links.size, refusedLinks },
    users: {
      total: perUser.length, identified, anonymous: perUser.length - identified,
      botIds: [...botIds].filter((id) => !humanIds.has(id)).length,
      byAcquisitionMonth: sorted(counts.month), byChannel: sorted(counts.channel), byFirstDevice: sorted(counts.firstDevice),
      byDevice: sorted(counts.device), byCountry: sorted(counts.country),
      byEngagement: Object.fromEntries(ENGAGEMENT_LEVELS.map((level) => [level, counts.engagement.get(level) ?? 0])),
      byEngagementAndMonth: Object.fromEntries(ENGAGEMENT_LEVELS.map((level) => [level, sorted(engagementByMonth.get(level) ?? new Map())])),
    },
    sessions: { total: sessionsTotal, byStartMonth: sorted(counts.sessionMonth) },
    funnel: {
      cohort: options.cohortMonth,
      windowDays: window / DAY,
      steps: FUNNEL_STEPS.map((name, index) => ({ level: index + 1, name, users: reached(index + 1) })),
      stuckAtLevel2: cohort.filter((user) => user.funnelLevel === 2).map((user) => user.id),
    },
    funnelByAcquisitionMonth: Object.fromEntries([...funnelByMonth].sort(([a], [b]) => (a < b ? -1 : 1))),
    perUser,
  }
}
