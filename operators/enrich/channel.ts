import type { Acquisition } from '../../schemas/enriched.ts'

/** Every channel acquisitionOf can return, in the order docs/enrich.md lists them. */
export const CHANNELS = [
  'direct',
  'organic_search',
  'paid_search',
  'paid_social',
  'social',
  'email',
  'display',
  'affiliate',
  'referral',
  'other',
] as const
export type Channel = (typeof CHANNELS)[number]

/**
 * A known host. `host` is either a domain, matching itself and its subdomains
 * ('bing.com' matches 'www.bing.com'), or a brand ending in a dot, matching that
 * label under any country domain ('google.' matches 'www.google.co.uk').
 * `name` is what `source` becomes for a referrer from it.
 */
export interface KnownHost {
  host: string
  name: string
}

/** A host as a string (its name is then its main label: 'search.example.com' → 'example') or with a name. */
export type HostEntry = string | KnownHost

/**
 * How acquisitionOf classifies. Lists are added to the built-in ones
 * (docs/enrich.md); an entry configured here wins over a built-in one for the
 * same host. Treat an options object as immutable: it is compiled once, on
 * first use, and the compiled form is kept for as long as the object lives.
 */
export interface ChannelOptions {
  /**
   * The site's own hosts, each matching its subdomains too: a referrer from
   * them is no referrer (the visit is direct, or what its UTM says). Also the
   * place for hosts that must never count as a source, such as payment pages.
   * The host of the page itself always counts as own. Default: none.
   */
  ownHosts?: readonly string[]
  /** Extra search engines. Default: none beyond the built-in list. */
  searchEngines?: readonly HostEntry[]
  /** Extra social sites. Default: none beyond the built-in list. */
  socialSites?: readonly HostEntry[]
  /** Extra webmail hosts. Default: none beyond the built-in list. */
  emailHosts?: readonly HostEntry[]
  /** Extra utm_medium values (compared lowercased) that mean paid traffic. Default: none beyond the built-in list. */
  paidMediums?: readonly string[]
}

type Kind = 'search' | 'social' | 'email'
interface Known {
  kind: Kind
  name: string
}

const SEARCH_ENGINES: readonly KnownHost[] = [
  { host: 'google.', name: 'google' },
  { host: 'com.google.android.googlequicksearchbox', name: 'google' },
  { host: 'bing.com', name: 'bing' },
  { host: 'duckduckgo.com', name: 'duckduckgo' },
  { host: 'yahoo.', name: 'yahoo' },
  { host: 'baidu.com', name: 'baidu' },
  { host: 'yandex.', name: 'yandex' },
  { host: 'ya.ru', name: 'yandex' },
  { host: 'ecosia.org', name: 'ecosia' },
  { host: 'startpage.com', name: 'startpage' },
  { host: 'qwant.com', name: 'qwant' },
  { host: 'search.brave.com', name: 'brave' },
  { host: 'kagi.com', name: 'kagi' },
  { host: 'naver.com', name: 'naver' },
  { host: 'daum.net', name: 'daum' },
  { host: 'seznam.cz', name: 'seznam' },
  { host: 'sogou.com', name: 'sogou' },
  { host: 'so.com', name: '360' },
  { host: 'ask.com', name: 'ask' },
  { host: 'search.aol.com', name: 'aol' },
]

const SOCIAL_SITES: readonly KnownHost[] = [
  { host: 'facebook.com', name: 'facebook' },
  { host: 'fb.com', name: 'facebook' },
  { host: 'fb.me', name: 'facebook' },
  { host: 'messenger.com', name: 'facebook' },
  { host: 'com.facebook.katana', name: 'facebook' },
  { host: 'instagram.com', name: 'instagram' },
  { host: 't.co', name: 'twitter' },
  { host: 'twitter.com', name: 'twitter' },
  { host: 'x.com', name: 'twitter' },
  { host: 'com.twitter.android', name: 'twitter' },
  { host: 'linkedin.com', name: 'linkedin' },
  { host: 'lnkd.in', name: 'linkedin' },
  { host: 'com.linkedin.android', name: 'linkedin' },
  { host: 'reddit.com', name: 'reddit' },
  { host: 'com.reddit.frontpage', name: 'reddit' },
  { host: 'youtube.com', name: 'youtube' },
  { host: 'youtu.be', name: 'youtube' },
  { host: 'tiktok.com', name: 'tiktok' },
  { host: 'pinterest.', name: 'pinterest' },
  { host: 'pin.it', name: 'pinterest' },
  { host: 'snapchat.com', name: 'snapchat' },
  { host: 'threads.net', name: 'threads' },
  { host: 'threads.com', name: 'threads' },
  { host: 'bsky.app', name: 'bluesky' },
  { host: 'mastodon.social', name: 'mastodon' },
  { host: 'quora.com', name: 'quora' },
  { host: 'tumblr.com', name: 'tumblr' },
  { host: 'medium.com', name: 'medium' },
  { host: 'news.ycombinator.com', name: 'hackernews' },
  { host: 'discord.com', name: 'discord' },
  { host: 'whatsapp.com', name: 'whatsapp' },
  { host: 't.me', name: 'telegram' },
  { host: 'telegram.org', name: 'telegram' },
  { host: 'twitch.tv', name: 'twitch' },
  { host: 'vk.com', name: 'vk' },
  { host: 'ok.ru', name: 'odnoklassniki' },
  { host: 'weibo.com', name: 'weibo' },
  { host: 'line.me', name: 'line' },
  { host: 'xing.com', name: 'xing' },
]

const EMAIL_HOSTS: readonly KnownHost[] = [
  { host: 'mail.google.com', name: 'gmail' },
  { host: 'com.google.android.gm', name: 'gmail' },
  { host: 'outlook.live.com', name: 'outlook' },
  { host: 'outlook.office.com', name: 'outlook' },
  { host: 'outlook.office365.com', name: 'outlook' },
  { host: 'com.microsoft.office.outlook', name: 'outlook' },
  { host: 'mail.yahoo.com', name: 'yahoo_mail' },
  { host: 'mail.aol.com', name: 'aol_mail' },
  { host: 'mail.proton.me', name: 'protonmail' },
  { host: 'mail.zoho.com', name: 'zoho_mail' },
  { host: 'mail.yandex.ru', name: 'yandex_mail' },
  { host: 'fastmail.com', name: 'fastmail' },
]

/** utm_source spellings that are not a host or a name above. */
const SOURCE_ALIASES: ReadonlyArray<readonly [string, Kind, string]> = [
  ['adwords', 'search', 'google'],
  ['googleads', 'search', 'google'],
  ['google_ads', 'search', 'google'],
  ['google ads', 'search', 'google'],
  ['fb', 'social', 'facebook'],
  ['meta', 'social', 'facebook'],
  ['ig', 'social', 'instagram'],
  ['x', 'social', 'twitter'],
  ['yt', 'social', 'youtube'],
  ['email', 'email', 'email'],
  ['e-mail', 'email', 'email'],
  ['newsletter', 'email', 'email'],
]

const PAID_MEDIUMS = ['cpc', 'ppc', 'paid', 'paidsearch', 'paid_search', 'paid-search', 'paidsocial', 'paid_social', 'paid-social', 'retargeting']
// A paid medium that names its kind needs no recognisable source.
const PAID_SEARCH_MEDIUMS: ReadonlySet<string> = new Set(['paidsearch', 'paid_search', 'paid-search'])
const PAID_SOCIAL_MEDIUMS: ReadonlySet<string> = new Set(['paidsocial', 'paid_social', 'paid-social'])
const DISPLAY_MEDIUMS: ReadonlySet<string> = new Set(['display', 'banner', 'cpm', 'expandable', 'interstitial'])
const EMAIL_MEDIUMS: ReadonlySet<string> = new Set(['email', 'e-mail', 'e_mail', 'newsletter'])
const AFFILIATE_MEDIUMS: ReadonlySet<string> = new Set(['affiliate', 'affiliates'])
const SOCIAL_MEDIUMS: ReadonlySet<string> = new Set(['social', 'social-network', 'social_network', 'social-media', 'social_media'])
const ORGANIC_MEDIUMS: ReadonlySet<string> = new Set(['organic'])
const REFERRAL_MEDIUMS: ReadonlySet<string> = new Set(['referral'])

// Second-level labels under which country domains register names: google.co.uk, yahoo.co.jp, google.com.br.
const SECOND_LEVEL_LABELS: ReadonlySet<string> = new Set(['co', 'com', 'net', 'org', 'ac', 'gov', 'edu', 'ne', 'or', 'go', 'gob'])

const ABSOLUTE_URL = /^[a-z][a-z0-9+.-]*:\/\//i
const VALID_HOST = /^(?:[^\s/\\?#@:[\]<>"'`{}|^%]+|\[[0-9a-f:.]+\])$/

interface Rules {
  /** Domain → known, matched on the host and each of its parent domains, longest first. */
  domains: Map<string, Known>
  /** Brand label → known, matched when followed by a country domain only. */
  brands: Map<string, Known>
  /** utm_source (lowercased) → known. */
  sourceNames: Map<string, Known>
  ownHosts: readonly string[]
  ownSuffixes: readonly string[]
  paidMediums: ReadonlySet<string>
}

const compiled = new WeakMap<ChannelOptions, Rules>()
const NO_OPTIONS: ChannelOptions = Object.freeze({})

function rulesFor(options: ChannelOptions): Rules {
  let rules = compiled.get(options)
  if (rules === undefined) {
    rules = compile(options)
    compiled.set(options, rules)
  }
  return rules
}

function compile(options: ChannelOptions): Rules {
  const domains = new Map<string, Known>()
  const brands = new Map<string, Known>()
  const sourceNames = new Map<string, Known>()
  const add = (entries: readonly HostEntry[] | undefined, kind: Kind) => {
    for (const entry of entries ?? []) {
      const host = normalizeHostPattern(typeof entry === 'string' ? entry : entry.host)
      if (host === undefined) continue
      const name = (typeof entry === 'string' ? '' : entry.name.trim().toLowerCase()) || mainLabelOf(host)
      const known: Known = { kind, name }
      if (host.endsWith('.')) brands.set(host.slice(0, -1), known)
      else domains.set(host, known)
      if (!sourceNames.has(name)) sourceNames.set(name, known)
    }
  }
  // Built-ins first, so that a configured entry for the same host replaces them.
  add(SEARCH_ENGINES, 'search')
  add(SOCIAL_SITES, 'social')
  add(EMAIL_HOSTS, 'email')
  add(options.searchEngines, 'search')
  add(options.socialSites, 'social')
  add(options.emailHosts, 'email')
  for (const [alias, kind, name] of SOURCE_ALIASES) sourceNames.set(alias, { kind, name })
  const ownHosts = (options.ownHosts ?? []).map((host) => normalizeHostPattern(host)).filter((host) => host !== undefined && !host.endsWith('.')) as string[]
  return {
    domains,
    brands,
    sourceNames,
    ownHosts,
    ownSuffixes: ownHosts.map((host) => `.${host}`),
    paidMediums: new Set([...PAID_MEDIUMS, ...(options.paidMediums ?? []).map((medium) => medium.trim().toLowerCase())]),
  }
}

/** 'https://www.Example.com/x' → 'www.example.com'; '*.example.com' → 'example.com'; 'google.' stays a brand. */
function normalizeHostPattern(pattern: string): string | undefined {
  let host = pattern.trim().toLowerCase()
  if (ABSOLUTE_URL.test(host)) host = hostOf(host) ?? ''
  if (host.startsWith('*.')) host = host.slice(2)
  else if (host.startsWith('.')) host = host.slice(1)
  return host.length === 0 || host === '.' ? undefined : host
}

/** The label a domain is registered under: 'search.example.co.uk' → 'example', 'google.' → 'google'. */
function mainLabelOf(host: string): string {
  const labels = host.split('.').filter((label) => label.length > 0)
  if (labels.length <= 1) return labels[0] ?? host
  if (host.endsWith('.')) return labels[labels.length - 1]
  const last = labels.length - 1
  const registeredAt = last >= 2 && SECOND_LEVEL_LABELS.has(labels[last - 1]) ? last - 2 : last - 1
  return labels[registeredAt]
}

/**
 * The host of an absolute URL, lowercased, without user info, port or
 * trailing dot; undefined for a relative, malformed or missing URL. Cheaper
 * than `new URL()`, which this runs in place of for every event.
 */
export function hostOf(url: string | undefined): string | undefined {
  if (url === undefined || url.length === 0) return undefined
  let start: number
  if (url.startsWith('//')) start = 2
  else {
    const scheme = ABSOLUTE_URL.exec(url)
    if (scheme === null) return undefined
    start = scheme[0].length
  }
  let end = url.length
  for (let index = start; index < url.length; index++) {
    const code = url.charCodeAt(index)
    // '/', '?', '#', '\' end the authority (browsers treat '\' as '/').
    if (code === 47 || code === 63 || code === 35 || code === 92) {
      end = index
      break
    }
  }
  let host = url.slice(start, end)
  const at = host.lastIndexOf('@')
  if (at >= 0) host = host.slice(at + 1)
  if (host.startsWith('[')) {
    const close = host.indexOf(']')
    if (close < 0) return undefined
    host = host.slice(0, close + 1)
  } else {
    const colon = host.indexOf(':')
    if (colon >= 0) host = host.slice(0, colon)
    if (host.endsWith('.')) host = host.slice(0, -1)
  }
  host = host.toLowerCase()
  if (host.length === 0 || host.length > 253 || !VALID_HOST.test(host)) return undefined
  return host
}

function classifyHost(host: string, rules: Rules): Known | undefined {
  // Longest matching domain first, so 'mail.google.com' (email) beats the google brand (search).
  let suffix = host
  let dot = -1
  for (;;) {
    const known = rules.domains.get(suffix)
    if (known !== undefined) return known
    dot = host.indexOf('.', dot + 1)
    if (dot < 0) break
    suffix = host.slice(dot + 1)
  }
  if (rules.brands.size === 0) return undefined
  const labels = host.split('.')
  for (let index = 0; index < labels.length - 1; index++) {
    const known = rules.brands.get(labels[index])
    if (known === undefined) continue
    const rest = labels.length - index - 1
    if (rest === 1 || (rest === 2 && SECOND_LEVEL_LABELS.has(labels[index + 1]))) return known
  }
  return undefined
}

function classifySource(source: string, rules: Rules): Known | undefined {
  const known = rules.sourceNames.get(source)
  if (known !== undefined) return known
  if (!source.includes('.')) return undefined
  const host = hostOf(source) ?? source
  return VALID_HOST.test(host) ? classifyHost(host, rules) : undefined
}

function isOwnHost(host: string, pageHost: string | undefined, rules: Rules): boolean {
  if (pageHost !== undefined && withoutWww(host) === withoutWww(pageHost)) return true
  for (let index = 0; index < rules.ownHosts.length; index++) {
    if (host === rules.ownHosts[index] || host.endsWith(rules.ownSuffixes[index])) return true
  }
  return false
}

function withoutWww(host: string): string {
  return host.startsWith('www.') ? host.slice(4) : host
}

interface Utm {
  source?: string
  medium?: string
  campaign?: string
  present: boolean
}

const NO_UTM: Utm = Object.freeze({ present: false })

/** context.campaign when it has any value, else the utm_* parameters of the page's query string. */
function utmOf(context: Record<string, unknown> | undefined, page: Record<string, unknown> | undefined): Utm {
  const campaign = recordAt(context, 'campaign')
  if (campaign !== undefined) {
    const utm = utmFrom(
      stringAt(campaign, 'source'),
      stringAt(campaign, 'medium'),
      stringAt(campaign, 'name'),
      stringAt(campaign, 'term') !== undefined || stringAt(campaign, 'content') !== undefined,
    )
    if (utm.present) return utm
  }
  const query = queryOf(stringAt(page, 'search')) ?? queryOf(stringAt(page, 'url'))
  if (query === undefined) return NO_UTM
  const parameters = new URLSearchParams(query)
  return utmFrom(
    blankToUndefined(parameters.get('utm_source')),
    blankToUndefined(parameters.get('utm_medium')),
    blankToUndefined(parameters.get('utm_campaign')),
    blankToUndefined(parameters.get('utm_term')) !== undefined || blankToUndefined(parameters.get('utm_content')) !== undefined,
  )
}

function utmFrom(source: string | undefined, medium: string | undefined, campaign: string | undefined, other: boolean): Utm {
  const utm: Utm = { present: source !== undefined || medium !== undefined || campaign !== undefined || other }
  if (source !== undefined) utm.source = source.toLowerCase()
  if (medium !== undefined) utm.medium = medium.toLowerCase()
  if (campaign !== undefined) utm.campaign = campaign
  return utm
}

/** The query string of a URL or `?search`, only when it can hold a utm_ parameter (the cheap check spares the parse). */
function queryOf(text: string | undefined): string | undefined {
  if (text === undefined || !text.includes('utm_')) return undefined
  const question = text.indexOf('?')
  if (question < 0) return undefined
  const hash = text.indexOf('#', question)
  return text.slice(question + 1, hash < 0 ? undefined : hash)
}

/**
 * The acquisition of a message: its channel, source, medium, campaign and
 * external referrer, from `context.campaign` (or the page URL's utm_*
 * parameters) and `context.page.referrer`. Rules and their order: docs/enrich.md.
 * Never throws, whatever the context holds.
 */
export function acquisitionOf(context: unknown, options: ChannelOptions = NO_OPTIONS): Acquisition {
  const rules = rulesFor(options)
  const contextRecord = asRecord(context)
  const page = recordAt(contextRecord, 'page')
  const utm = utmOf(contextRecord, page)
  const referrer = hostOf(stringAt(page, 'referrer'))
  const referrerHost = referrer !== undefined && !isOwnHost(referrer, hostOf(stringAt(page, 'url')), rules) ? referrer : undefined
  const referrerKnown = referrerHost === undefined ? undefined : classifyHost(referrerHost, rules)

  const acquisition: Acquisition = { channel: channelOf(utm, referrerHost, referrerKnown, rules) }
  const source = utm.source ?? referrerKnown?.name ?? referrerHost
  if (source !== undefined) acquisition.source = source
  if (utm.medium !== undefined) acquisition.medium = utm.medium
  if (utm.campaign !== undefined) acquisition.campaign = utm.campaign
  if (referrerHost !== undefined) acquisition.referrerHost = referrerHost
  return acquisition
}

function channelOf(utm: Utm, referrerHost: string | undefined, referrerKnown: Known | undefined, rules: Rules): Channel {
  if (!utm.present) {
    if (referrerHost === undefined) return 'direct'
    return referrerKnown === undefined ? 'referral' : channelOfKind(referrerKnown.kind)
  }
  const medium = utm.medium ?? ''
  // What the source is: utm_source when recognised, else the referrer.
  const kind = (utm.source === undefined ? undefined : classifySource(utm.source, rules)?.kind) ?? referrerKnown?.kind
  if (rules.paidMediums.has(medium)) {
    if (kind === 'search' || PAID_SEARCH_MEDIUMS.has(medium)) return 'paid_search'
    if (kind === 'social' || PAID_SOCIAL_MEDIUMS.has(medium)) return 'paid_social'
    // Paid from elsewhere (GA4's "paid other") has no channel of its own.
    return 'other'
  }
  if (DISPLAY_MEDIUMS.has(medium)) return 'display'
  if (EMAIL_MEDIUMS.has(medium)) return 'email'
  if (AFFILIATE_MEDIUMS.has(medium)) return 'affiliate'
  if (SOCIAL_MEDIUMS.has(medium)) return 'social'
  if (ORGANIC_MEDIUMS.has(medium)) return 'organic_search'
  if (REFERRAL_MEDIUMS.has(medium)) return 'referral'
  if (kind !== undefined) return channelOfKind(kind)
  return referrerHost === undefined ? 'other' : 'referral'
}

function channelOfKind(kind: Kind): Channel {
  return kind === 'search' ? 'organic_search' : kind === 'social' ? 'social' : 'email'
}

function asRecord(value: unknown): Record<string, unknown> | undefined {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined
}

function recordAt(record: Record<string, unknown> | undefined, key: string): Record<string, unknown> | undefined {
  return record === undefined ? undefined : asRecord(record[key])
}

function stringAt(record: Record<string, unknown> | undefined, key: string): string | undefined {
  const value = record?.[key]
  return typeof value === 'string' ? blankToUndefined(value) : undefined
}

function blankToUndefined(value: string | null): string | undefined {
  if (value === null) return undefined
  const trimmed = value.trim()
  return trimmed.length === 0 ? undefined : trimmed
}
