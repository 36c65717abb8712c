import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import t from 'tap'
import { isBotAgent } from '../../operators/enrich/bots.ts'
import { acquisitionOf, CHANNELS, type ChannelOptions, hostOf } from '../../operators/enrich/channel.ts'
import { contextOf } from '../../operators/enrich/context.ts'
import { createDeviceParser, DEVICE_TYPES, deviceOf, MAX_USER_AGENT_LENGTH } from '../../operators/enrich/device.ts'
import { type GeoLookup, noGeo, openGeo } from '../../operators/enrich/geo.ts'
import { validator } from '../../schemas/codec.ts'
import { type Acquisition, type Device, EnrichedContext } from '../../schemas/enriched.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'
import { type MmdbNetwork, writeMmdb } from '../fixtures/mmdb-writer.ts'

const UA = {
  chromeWindows: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36',
  edgeWindows: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51',
  safariMac: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15',
  safariIphone: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1',
  safariIpad: 'Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1',
  chromeAndroidPhone: 'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36',
  chromeAndroidTablet: 'Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.6312.118 Safari/537.36',
  firefoxLinux: 'Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0',
  googlebot: 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
  bingbot: 'Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)',
  curl: 'curl/8.5.0',
  pythonRequests: 'python-requests/2.31.0',
  headlessChrome: 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.6367.60 Safari/537.36',
  samsungTv: 'Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) 76.0.3809.146/6.0 TV Safari/537.36',
  lgTv: 'Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/79.0.3945.79 Safari/537.36 WebAppManager',
  xbox: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19041',
  playstation: 'Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0 Safari/605.1.15',
  galaxyWatch: 'Mozilla/5.0 (Linux; Android 11; SM-R860 Build/RP1A.200720.012) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/92 Mobile Safari/537.36 Watch',
} as const

t.test('deviceOf: real-world user agents', async (t) => {
  const cases: Array<{ name: string; userAgent: string | undefined; device: Device }> = [
    { name: 'Chrome on Windows', userAgent: UA.chromeWindows, device: { type: 'desktop', browser: 'Chrome', browserVersion: '124.0.0.0', os: 'Windows', osVersion: '10' } },
    { name: 'Edge on Windows', userAgent: UA.edgeWindows, device: { type: 'desktop', browser: 'Microsoft Edge', browserVersion: '124.0.2478.51', os: 'Windows', osVersion: '10' } },
    { name: 'Safari on macOS', userAgent: UA.safariMac, device: { type: 'desktop', browser: 'Safari', browserVersion: '17.4', os: 'macOS', osVersion: '10.15.7' } },
    { name: 'Safari on iPhone', userAgent: UA.safariIphone, device: { type: 'mobile', browser: 'Safari', browserVersion: '17.4.1', os: 'iOS', osVersion: '17.4.1' } },
    { name: 'Safari on iPad', userAgent: UA.safariIpad, device: { type: 'tablet', browser: 'Safari', browserVersion: '16.6', os: 'iOS', osVersion: '16.6' } },
    { name: 'Chrome on an Android phone', userAgent: UA.chromeAndroidPhone, device: { type: 'mobile', browser: 'Chrome', browserVersion: '124.0.6367.82', os: 'Android', osVersion: '14' } },
    { name: 'Chrome on an Android tablet', userAgent: UA.chromeAndroidTablet, device: { type: 'tablet', browser: 'Chrome', browserVersion: '123.0.6312.118', os: 'Android', osVersion: '13' } },
    { name: 'Firefox on Linux', userAgent: UA.firefoxLinux, device: { type: 'desktop', browser: 'Firefox', browserVersion: '125.0', os: 'Linux' } },
    { name: 'Googlebot', userAgent: UA.googlebot, device: { type: 'bot', browser: 'Googlebot', browserVersion: '2.1' } },
    { name: 'bingbot', userAgent: UA.bingbot, device: { type: 'bot', browser: 'BingCrawler', browserVersion: '2.0' } },
    { name: 'curl', userAgent: UA.curl, device: { type: 'bot' } },
    { name: 'python-requests', userAgent: UA.pythonRequests, device: { type: 'bot' } },
    { name: 'headless Chrome keeps its browser but is a bot', userAgent: UA.headlessChrome, device: { type: 'bot', browser: 'Chrome', browserVersion: '124.0.6367.60', os: 'Linux' } },
    { name: 'Samsung smart TV', userAgent: UA.samsungTv, device: { type: 'tv', browser: 'Tizen', os: 'Tizen', osVersion: '6.0' } },
    { name: 'LG smart TV', userAgent: UA.lgTv, device: { type: 'tv', browser: 'WebOS Browser', os: 'WebOS' } },
    { name: 'Xbox is a console, not a Windows desktop', userAgent: UA.xbox, device: { type: 'console', browser: 'Microsoft Edge', browserVersion: '18.19041', os: 'Windows', osVersion: '10' } },
    { name: 'PlayStation', userAgent: UA.playstation, device: { type: 'console', browser: 'Safari', browserVersion: '13.0' } },
    { name: 'Galaxy Watch', userAgent: UA.galaxyWatch, device: { type: 'wearable', browser: 'Chrome', browserVersion: '92', os: 'Android', osVersion: '11' } },
    { name: 'no user agent', userAgent: undefined, device: { type: 'unknown' } },
    { name: 'empty user agent', userAgent: '', device: { type: 'unknown' } },
    { name: 'blank user agent', userAgent: '   ', device: { type: 'unknown' } },
    { name: 'a platform bowser cannot place', userAgent: 'Mozilla/5.0 (Foo 1.0; Bar) Baz/2', device: { type: 'unknown', browser: 'Mozilla', browserVersion: '5.0' } },
  ]
  for (const { name, userAgent, device } of cases) t.strictSame(deviceOf(userAgent), device, name)
})

t.test('deviceOf: results are cached per user agent, bounded, least recently used evicted first', async (t) => {
  const parser = createDeviceParser({ cacheSize: 2 })
  const chrome = parser.deviceOf(UA.chromeWindows)
  t.ok(Object.isFrozen(chrome), 'shared results cannot be mutated')
  t.equal(parser.deviceOf(UA.chromeWindows), chrome, 'a repeated user agent is not parsed again')
  const firefox = parser.deviceOf(UA.firefoxLinux)
  t.equal(parser.deviceOf(UA.chromeWindows), chrome, 'chrome is now the most recently used')
  parser.deviceOf(UA.safariIphone)
  t.equal(parser.cachedEntries(), 2, 'never more entries than the capacity')
  t.equal(parser.deviceOf(UA.chromeWindows), chrome, 'the recently used entry survived')
  const firefoxAgain = parser.deviceOf(UA.firefoxLinux)
  t.not(firefoxAgain, firefox, 'the least recently used entry was evicted and parsed again')
  t.strictSame(firefoxAgain, firefox, 'with the same result')
  t.equal(parser.deviceOf(undefined), parser.deviceOf(''), 'unknown is one shared value')
  t.equal(parser.cachedEntries(), 2, 'missing user agents take no cache entry')
})

t.test('deviceOf: an oversized user agent is parsed from its first MAX_USER_AGENT_LENGTH characters', async (t) => {
  const padded = `${UA.safariIphone} ${'x'.repeat(5000)}`
  t.strictSame(deviceOf(padded), deviceOf(padded.slice(0, MAX_USER_AGENT_LENGTH)))
  t.equal(deviceOf(padded).type, 'mobile')
})

t.test('isBotAgent', async (t) => {
  const cases: Array<[string | undefined, boolean]> = [
    [undefined, false],
    ['', false],
    [' \t', false],
    [UA.chromeWindows, false],
    [UA.safariIphone, false],
    [UA.samsungTv, false],
    [UA.googlebot, true],
    [UA.bingbot, true],
    [UA.curl, true],
    [UA.pythonRequests, true],
    [UA.headlessChrome, true],
    ['facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)', true],
  ]
  for (const [userAgent, bot] of cases) t.equal(isBotAgent(userAgent), bot, JSON.stringify(userAgent))
})

t.test('hostOf', async (t) => {
  const cases: Array<[string | undefined, string | undefined]> = [
    ['https://www.Google.co.UK/search?q=x', 'www.google.co.uk'],
    ['http://example.com', 'example.com'],
    ['https://user:secret@t.co:8443/abc', 't.co'],
    ['https://example.com./path', 'example.com'],
    ['https://example.com?x=1', 'example.com'],
    ['https://example.com#top', 'example.com'],
    ['https://example.com\\evil', 'example.com'],
    ['//cdn.example.com/x', 'cdn.example.com'],
    ['android-app://com.google.android.gm/', 'com.google.android.gm'],
    ['https://[2001:db8::1]:8080/x', '[2001:db8::1]'],
    ['https:///nohost', undefined],
    ['/relative/path', undefined],
    ['example.com/no-scheme', undefined],
    ['not a url', undefined],
    ['https://exa mple.com/', undefined],
    ['', undefined],
    [undefined, undefined],
  ]
  for (const [url, host] of cases) t.equal(hostOf(url), host, JSON.stringify(url))
})

const SITE = 'https://shop.example.com/products?id=1'

/** A context with a page on the site, the given referrer and optional campaign. */
function visit(referrer?: string, campaign?: Record<string, string>, url = SITE): Record<string, unknown> {
  const page: Record<string, string> = { url, path: '/products', title: 'Products' }
  if (referrer !== undefined) page.referrer = referrer
  return campaign === undefined ? { page } : { page, campaign }
}

t.test('acquisitionOf: every channel and the precedence between rules', async (t) => {
  const cases: Array<{ name: string; context: unknown; options?: ChannelOptions; acquisition: Acquisition }> = [
    // direct
    { name: 'no referrer, no UTM', context: visit(), acquisition: { channel: 'direct' } },
    { name: 'no context at all (server SDK)', context: undefined, acquisition: { channel: 'direct' } },
    { name: 'same-site referrer is no referrer', context: visit('https://shop.example.com/cart'), acquisition: { channel: 'direct' } },
    { name: 'www. on one side only is still the same site', context: visit('https://www.shop.example.com/'), acquisition: { channel: 'direct' } },
    {
      name: 'a configured own host (and its subdomains) is no referrer',
      context: visit('https://blog.example.com/post'),
      options: { ownHosts: ['example.com'] },
      acquisition: { channel: 'direct' },
    },
    { name: 'a sibling subdomain is external unless configured', context: visit('https://blog.example.com/post'), acquisition: { channel: 'referral', source: 'blog.example.com', referrerHost: 'blog.example.com' } },
    { name: 'unparseable referrer is ignored', context: visit('not a url'), acquisition: { channel: 'direct' } },

    // organic search from the referrer
    { name: 'google country domain', context: visit('https://www.google.co.uk/'), acquisition: { channel: 'organic_search', source: 'google', referrerHost: 'www.google.co.uk' } },
    { name: 'google.com.br', context: visit('https://www.google.com.br/'), acquisition: { channel: 'organic_search', source: 'google', referrerHost: 'www.google.com.br' } },
    { name: 'bing', context: visit('https://www.bing.com/search?q=shop'), acquisition: { channel: 'organic_search', source: 'bing', referrerHost: 'www.bing.com' } },
    { name: 'duckduckgo', context: visit('https://duckduckgo.com/'), acquisition: { channel: 'organic_search', source: 'duckduckgo', referrerHost: 'duckduckgo.com' } },
    { name: 'yahoo japan', context: visit('https://search.yahoo.co.jp/search?p=x'), acquisition: { channel: 'organic_search', source: 'yahoo', referrerHost: 'search.yahoo.co.jp' } },
    { name: 'yandex', context: visit('https://yandex.ru/search/?text=x'), acquisition: { channel: 'organic_search', source: 'yandex', referrerHost: 'yandex.ru' } },
    { name: 'ecosia', context: visit('https://www.ecosia.org/search?q=x'), acquisition: { channel: 'organic_search', source: 'ecosia', referrerHost: 'www.ecosia.org' } },
    { name: 'baidu', context: visit('https://www.baidu.com/link?url=x'), acquisition: { channel: 'organic_search', source: 'baidu', referrerHost: 'www.baidu.com' } },
    {
      name: 'a brand is matched only as the registered name',
      context: visit('https://google.example.com/'),
      acquisition: { channel: 'referral', source: 'google.example.com', referrerHost: 'google.example.com' },
    },

    // social from the referrer
    { name: 't.co', context: visit('https://t.co/AbCdEf'), acquisition: { channel: 'social', source: 'twitter', referrerHost: 't.co' } },
    { name: 'm.facebook.com', context: visit('https://m.facebook.com/'), acquisition: { channel: 'social', source: 'facebook', referrerHost: 'm.facebook.com' } },
    { name: 'linkedin', context: visit('https://www.linkedin.com/feed/'), acquisition: { channel: 'social', source: 'linkedin', referrerHost: 'www.linkedin.com' } },
    { name: 'reddit', context: visit('https://old.reddit.com/r/x'), acquisition: { channel: 'social', source: 'reddit', referrerHost: 'old.reddit.com' } },
    { name: 'youtube', context: visit('https://www.youtube.com/'), acquisition: { channel: 'social', source: 'youtube', referrerHost: 'www.youtube.com' } },
    { name: 'pinterest country domain', context: visit('https://www.pinterest.de/'), acquisition: { channel: 'social', source: 'pinterest', referrerHost: 'www.pinterest.de' } },

    // email from the referrer: a webmail host beats the search brand it lives under
    { name: 'gmail beats google', context: visit('https://mail.google.com/mail/u/0/'), acquisition: { channel: 'email', source: 'gmail', referrerHost: 'mail.google.com' } },
    { name: 'outlook', context: visit('https://outlook.live.com/'), acquisition: { channel: 'email', source: 'outlook', referrerHost: 'outlook.live.com' } },
    { name: 'gmail android app', context: visit('android-app://com.google.android.gm/'), acquisition: { channel: 'email', source: 'gmail', referrerHost: 'com.google.android.gm' } },

    // referral
    { name: 'unknown external referrer', context: visit('https://news.example.org/article'), acquisition: { channel: 'referral', source: 'news.example.org', referrerHost: 'news.example.org' } },

    // UTM: paid
    {
      name: 'cpc from google is paid search',
      context: visit(undefined, { source: 'google', medium: 'cpc', name: 'Spring Sale' }),
      acquisition: { channel: 'paid_search', source: 'google', medium: 'cpc', campaign: 'Spring Sale' },
    },
    {
      name: 'ppc with no source takes the search engine from the referrer',
      context: visit('https://www.bing.com/', { medium: 'ppc' }),
      acquisition: { channel: 'paid_search', source: 'bing', medium: 'ppc', referrerHost: 'www.bing.com' },
    },
    { name: 'adwords is google', context: visit(undefined, { source: 'adwords', medium: 'paid' }), acquisition: { channel: 'paid_search', source: 'adwords', medium: 'paid' } },
    { name: 'paidsearch needs no known source', context: visit(undefined, { source: 'partner', medium: 'paidsearch' }), acquisition: { channel: 'paid_search', source: 'partner', medium: 'paidsearch' } },
    { name: 'cpc from facebook is paid social', context: visit(undefined, { source: 'facebook', medium: 'cpc' }), acquisition: { channel: 'paid_social', source: 'facebook', medium: 'cpc' } },
    { name: 'paid_social from ig', context: visit(undefined, { source: 'ig', medium: 'paid_social' }), acquisition: { channel: 'paid_social', source: 'ig', medium: 'paid_social' } },
    { name: 'paid from an unknown source is other', context: visit(undefined, { source: 'partner', medium: 'cpc' }), acquisition: { channel: 'other', source: 'partner', medium: 'cpc' } },

    // UTM: mediums
    { name: 'display', context: visit(undefined, { source: 'dv360', medium: 'display' }), acquisition: { channel: 'display', source: 'dv360', medium: 'display' } },
    { name: 'banner', context: visit(undefined, { source: 'partner', medium: 'banner' }), acquisition: { channel: 'display', source: 'partner', medium: 'banner' } },
    { name: 'cpm is display, not paid', context: visit(undefined, { source: 'google', medium: 'cpm' }), acquisition: { channel: 'display', source: 'google', medium: 'cpm' } },
    { name: 'email', context: visit(undefined, { source: 'mailchimp', medium: 'email' }), acquisition: { channel: 'email', source: 'mailchimp', medium: 'email' } },
    { name: 'e-mail', context: visit(undefined, { source: 'crm', medium: 'e-mail' }), acquisition: { channel: 'email', source: 'crm', medium: 'e-mail' } },
    { name: 'newsletter', context: visit(undefined, { source: 'weekly', medium: 'newsletter' }), acquisition: { channel: 'email', source: 'weekly', medium: 'newsletter' } },
    { name: 'affiliate', context: visit(undefined, { source: 'awin', medium: 'affiliate' }), acquisition: { channel: 'affiliate', source: 'awin', medium: 'affiliate' } },
    { name: 'social medium', context: visit(undefined, { source: 'community', medium: 'social' }), acquisition: { channel: 'social', source: 'community', medium: 'social' } },
    { name: 'organic medium', context: visit(undefined, { source: 'partner', medium: 'organic' }), acquisition: { channel: 'organic_search', source: 'partner', medium: 'organic' } },
    { name: 'referral medium', context: visit(undefined, { source: 'partner', medium: 'referral' }), acquisition: { channel: 'referral', source: 'partner', medium: 'referral' } },
    { name: 'a known source with no medium', context: visit(undefined, { source: 'facebook' }), acquisition: { channel: 'social', source: 'facebook' } },
    { name: 'a known host as source', context: visit(undefined, { source: 'www.bing.com' }), acquisition: { channel: 'organic_search', source: 'www.bing.com' } },
    { name: 'any other UTM is other', context: visit(undefined, { source: 'flyer', medium: 'print', name: 'Q3' }), acquisition: { channel: 'other', source: 'flyer', medium: 'print', campaign: 'Q3' } },
    {
      name: 'any other UTM with an external referrer is referral',
      context: visit('https://news.example.org/', { source: 'flyer', medium: 'print' }),
      acquisition: { channel: 'referral', source: 'flyer', medium: 'print', referrerHost: 'news.example.org' },
    },
    { name: 'only utm_campaign', context: visit(undefined, { name: 'launch' }), acquisition: { channel: 'other', campaign: 'launch' } },

    // UTM beats the referrer
    {
      name: 'an email medium beats a search referrer',
      context: visit('https://www.google.com/', { source: 'crm', medium: 'email' }),
      acquisition: { channel: 'email', source: 'crm', medium: 'email', referrerHost: 'www.google.com' },
    },
    {
      name: 'UTM on an own-host referrer: UTM decides, no referrer host',
      context: visit('https://shop.example.com/', { source: 'google', medium: 'cpc' }),
      acquisition: { channel: 'paid_search', source: 'google', medium: 'cpc' },
    },
    {
      name: 'source and medium are lowercased and trimmed, campaign kept as sent',
      context: visit(undefined, { source: ' Google ', medium: 'CPC', name: 'Black Friday' }),
      acquisition: { channel: 'paid_search', source: 'google', medium: 'cpc', campaign: 'Black Friday' },
    },

    // UTM from the page URL when context.campaign is absent
    {
      name: 'UTM in page.url',
      context: visit(undefined, undefined, 'https://shop.example.com/?utm_source=Google&utm_medium=cpc&utm_campaign=Spring%20Sale#top'),
      acquisition: { channel: 'paid_search', source: 'google', medium: 'cpc', campaign: 'Spring Sale' },
    },
    {
      name: 'UTM in page.search',
      context: { page: { url: 'https://shop.example.com/', search: '?utm_source=weekly&utm_medium=newsletter' } },
      acquisition: { channel: 'email', source: 'weekly', medium: 'newsletter' },
    },
    {
      name: 'context.campaign wins over the URL',
      context: visit(undefined, { source: 'facebook', medium: 'social' }, 'https://shop.example.com/?utm_source=google&utm_medium=cpc'),
      acquisition: { channel: 'social', source: 'facebook', medium: 'social' },
    },
    {
      name: 'an empty context.campaign falls back to the URL',
      context: { page: { url: 'https://shop.example.com/?utm_medium=affiliate&utm_source=awin' }, campaign: {} },
      acquisition: { channel: 'affiliate', source: 'awin', medium: 'affiliate' },
    },
    {
      name: 'utm_ outside the query string is not UTM',
      context: { page: { url: 'https://shop.example.com/utm_source=google', referrer: 'https://t.co/x' } },
      acquisition: { channel: 'social', source: 'twitter', referrerHost: 't.co' },
    },

    // configuration
    {
      name: 'a configured search engine',
      context: visit('https://search.example.net/?q=x'),
      options: { searchEngines: ['search.example.net'] },
      acquisition: { channel: 'organic_search', source: 'example', referrerHost: 'search.example.net' },
    },
    {
      name: 'a configured name replaces the built-in one',
      context: visit('https://duckduckgo.com/'),
      options: { searchEngines: [{ host: 'duckduckgo.com', name: 'ddg' }] },
      acquisition: { channel: 'organic_search', source: 'ddg', referrerHost: 'duckduckgo.com' },
    },
    {
      name: 'a configured social brand matches any country domain',
      context: visit('https://www.example-social.co.uk/'),
      options: { socialSites: ['example-social.'] },
      acquisition: { channel: 'social', source: 'example-social', referrerHost: 'www.example-social.co.uk' },
    },
    {
      name: 'a configured webmail host',
      context: visit('https://webmail.example.org/'),
      options: { emailHosts: [{ host: 'webmail.example.org', name: 'corpmail' }] },
      acquisition: { channel: 'email', source: 'corpmail', referrerHost: 'webmail.example.org' },
    },
    {
      name: 'a configured paid medium',
      context: visit(undefined, { source: 'google', medium: 'Sponsored' }),
      options: { paidMediums: ['sponsored'] },
      acquisition: { channel: 'paid_search', source: 'google', medium: 'sponsored' },
    },
    {
      name: 'own hosts beat every list (payment provider)',
      context: visit('https://www.paypal.com/checkoutnow'),
      options: { ownHosts: ['paypal.com'] },
      acquisition: { channel: 'direct' },
    },

    // malformed contexts
    { name: 'page is not an object', context: { page: 'https://t.co/' }, acquisition: { channel: 'direct' } },
    { name: 'campaign is not an object', context: { campaign: 42, page: { referrer: 42 } }, acquisition: { channel: 'direct' } },
    { name: 'context is an array', context: [1, 2], acquisition: { channel: 'direct' } },
  ]
  for (const { name, context, options, acquisition } of cases) t.strictSame(acquisitionOf(context, options), acquisition, name)
})

t.test('acquisitionOf: a changed options object is a new configuration', async (t) => {
  const referrer = visit('https://search.example.net/')
  t.equal(acquisitionOf(referrer, {}).channel, 'referral')
  t.equal(acquisitionOf(referrer, { searchEngines: ['example.net'] }).channel, 'organic_search')
})

t.test('properties', async (t) => {
  const channels: ReadonlySet<string> = new Set(CHANNELS)
  const deviceTypes: ReadonlySet<string> = new Set(DEVICE_TYPES)
  // Any code point, surrogates included (fc.string's 'binary' unit does this too but takes seconds to build).
  const codePoint = fc.integer({ min: 0, max: 0x10ffff }).map((code) => String.fromCodePoint(code))
  // fc.webUrl's own query and fragment options take seconds to build their first time; a suffix does the same job.
  const webUrl = fc.tuple(fc.webUrl({ authoritySettings: { withUserInfo: true, withPort: true } }), fc.constantFrom('', '/', '?', '#', '?a=1#'), fc.string()).map(([url, separator, rest]) => (separator === '' ? url : url + separator + rest))
  const text = fc.oneof(fc.string(), fc.string({ unit: codePoint }), webUrl)
  const maybe = <T>(arbitrary: fc.Arbitrary<T>) => fc.option(arbitrary, { nil: undefined })
  const utmQuery = fc
    .record({ utm_source: maybe(fc.string()), utm_medium: maybe(fc.constantFrom('cpc', 'email', 'social', 'display', 'x', '')), utm_campaign: maybe(fc.string()) })
    .map((parameters) => `?${new URLSearchParams(Object.entries(parameters).filter(([, value]) => value !== undefined) as Array<[string, string]>)}`)
  const context = fc.oneof(
    fc.anything(),
    fc.record(
      {
        page: fc.record({ url: fc.oneof(text, fc.webUrl().chain((url) => utmQuery.map((query) => url + query))), referrer: fc.oneof(text, fc.constant(undefined)), search: maybe(utmQuery) }, { requiredKeys: [] }),
        campaign: fc.record({ source: maybe(text), medium: maybe(text), name: maybe(text), term: maybe(fc.anything()) }, { requiredKeys: [] }),
      },
      { requiredKeys: [] },
    ),
  )
  const options: fc.Arbitrary<ChannelOptions> = fc.record(
    { ownHosts: fc.array(fc.oneof(fc.domain(), fc.string())), searchEngines: fc.array(fc.oneof(fc.domain(), fc.string())), paidMediums: fc.array(fc.string()) },
    { requiredKeys: [] },
  )

  t.test('acquisitionOf is total, deterministic and answers a documented channel', async (t) => {
    fc.assert(
      fc.property(context, options, (context, options) => {
        const acquisition = acquisitionOf(context, options)
        if (!channels.has(acquisition.channel)) return false
        for (const value of Object.values(acquisition)) if (typeof value !== 'string') return false
        return JSON.stringify(acquisitionOf(context, options)) === JSON.stringify(acquisition)
      }),
      { numRuns: 2000 },
    )
    t.pass('2000 contexts')
  })

  t.test('a referrer on the page host never makes a referral', async (t) => {
    fc.assert(
      fc.property(fc.webUrl(), fc.webPath(), (url, path) => {
        const host = new URL(url).host
        const acquisition = acquisitionOf({ page: { url, referrer: `https://${host}${path}` } })
        return acquisition.channel === 'direct' && acquisition.referrerHost === undefined
      }),
    )
    t.pass()
  })

  t.test('hostOf agrees with the WHATWG URL parser on web URLs', async (t) => {
    fc.assert(
      fc.property(webUrl, (url) => {
        return hostOf(url) === new URL(url).hostname
      }),
      { numRuns: 2000 },
    )
    t.pass()
  })

  t.test('deviceOf is total, deterministic and answers a documented type', async (t) => {
    const userAgent = fc.oneof(fc.string(), fc.string({ unit: codePoint, maxLength: 2000 }), fc.constantFrom(...Object.values(UA)), fc.constant(undefined))
    fc.assert(
      fc.property(userAgent, (userAgent) => {
        const device = deviceOf(userAgent)
        return deviceTypes.has(device.type) && JSON.stringify(createDeviceParser().deviceOf(userAgent)) === JSON.stringify(device)
      }),
      { numRuns: 2000 },
    )
    t.pass()
  })
})

/** Networks in the shape of GeoLite2-City records. */
const NETWORKS: MmdbNetwork[] = [
  { network: '81.2.69.0/24', data: { country: { iso_code: 'GB', geoname_id: 2635167, names: { en: 'United Kingdom' } }, city: { geoname_id: 2643743, names: { en: 'London', de: 'London' } } } },
  // More specific, inserted later: wins inside its range.
  { network: '81.2.69.160/27', data: { country: { iso_code: 'GB' }, city: { names: { en: 'Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch', fr: 'x' } } } },
  { network: '89.160.20.112/28', data: { country: { iso_code: 'SE' }, city: { names: { en: 'Linköping' } }, location: { latitude: 58.4167, longitude: 15.6167, accuracy_radius: 76 } } },
  { network: '216.160.83.56/29', data: { country: { iso_code: 'US' } } },
  { network: '67.43.156.0/24', data: { registered_country: { iso_code: 'BT' }, traits: { is_anonymous_proxy: true } } },
]
const IPV6_NETWORKS: MmdbNetwork[] = [{ network: '2001:218::/32', data: { country: { iso_code: 'JP' }, city: { names: { en: 'Tokyo' } } } }]

t.test('geo: lookups through maxmind on a generated database', async (t) => {
  const directory = await mkdtemp(join(tmpdir(), 'segstream-geo-'))
  t.teardown(() => rm(directory, { recursive: true, force: true }))

  for (const ipVersion of [4, 6] as const) {
    for (const recordSize of [24, 28, 32] as const) {
      t.test(`IPv${ipVersion} tree, ${recordSize}-bit records`, async (t) => {
        const path = join(directory, `city-v${ipVersion}-${recordSize}.mmdb`)
        await writeFile(path, writeMmdb({ ipVersion, recordSize, networks: ipVersion === 6 ? [...NETWORKS, ...IPV6_NETWORKS] : NETWORKS }))
        const geo = await openGeo(path)
        const cases: Array<[string | undefined, unknown]> = [
          ['81.2.69.1', { country: 'GB', city: 'London' }],
          ['81.2.69.159', { country: 'GB', city: 'London' }],
          ['81.2.69.160', { country: 'GB', city: 'Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch' }],
          ['81.2.69.191', { country: 'GB', city: 'Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch' }],
          ['81.2.69.192', { country: 'GB', city: 'London' }],
          ['89.160.20.120', { country: 'SE', city: 'Linköping' }],
          ['216.160.83.60', { country: 'US' }],
          ['::ffff:81.2.69.1', { country: 'GB', city: 'London' }],
          ['67.43.156.1', undefined], // a registered country only is not where the user is
          ['1.1.1.1', undefined],
          ['10.0.0.1', undefined],
          ['0.0.0.0', undefined],
          ['not-an-ip', undefined],
          ['', undefined],
          [undefined, undefined],
          ['2001:218:1::1', ipVersion === 6 ? { country: 'JP', city: 'Tokyo' } : undefined],
          ['2001:219::1', undefined],
        ]
        for (const [ip, expected] of cases) t.strictSame(geo.lookup(ip), expected, JSON.stringify(ip))
      })
    }
  }

  t.test('noGeo knows nothing', async (t) => {
    t.equal(noGeo.lookup('81.2.69.1'), undefined)
  })

  t.test('a missing database fails at open, not per lookup', async (t) => {
    await t.rejects(openGeo(join(directory, 'missing.mmdb')))
    const notADatabase = join(directory, 'not-a-database.mmdb')
    await writeFile(notADatabase, 'this is not a MaxMind database\n'.repeat(8))
    await t.rejects(openGeo(notADatabase))
  })

  t.test('lookup never throws', async (t) => {
    const path = join(directory, 'property.mmdb')
    await writeFile(path, writeMmdb({ networks: [...NETWORKS, ...IPV6_NETWORKS] }))
    const geo = await openGeo(path)
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.ipV4(), fc.ipV6(), fc.ipV4Extended()), (ip) => {
        const result = geo.lookup(ip)
        return result === undefined || typeof result.country === 'string' || typeof result.city === 'string'
      }),
      { numRuns: 1000 },
    )
    t.pass()
  })
})

t.test('contextOf composes device, acquisition, geo and bot', async (t) => {
  const enrichedContext = validator(EnrichedContext, 'enriched context')
  const directory = await mkdtemp(join(tmpdir(), 'segstream-geo-'))
  t.teardown(() => rm(directory, { recursive: true, force: true }))
  const path = join(directory, 'city.mmdb')
  await writeFile(path, writeMmdb({ networks: NETWORKS }))
  const geo: GeoLookup = await openGeo(path)
  const channels: ChannelOptions = { ownHosts: ['example.com'] }
  const message = (context?: Record<string, unknown>): SegmentMessage => ({
    type: 'page',
    messageId: 'm-1',
    anonymousId: 'a-1',
    timestamp: '2024-05-10T12:00:00.000Z',
    receivedAt: '2024-05-10T12:00:00.000Z',
    ...(context === undefined ? {} : { context }),
  })

  const cases: Array<{ name: string; message: SegmentMessage; geo?: GeoLookup; expected: EnrichedContext }> = [
    {
      name: 'a browser visit from a search engine',
      message: message({
        userAgent: UA.safariIphone,
        ip: '81.2.69.1',
        page: { url: 'https://shop.example.com/', path: '/', referrer: 'https://www.google.de/', title: 'Shop' },
        locale: 'de-DE',
        library: { name: 'analytics.js', version: '5.0.0' },
      }),
      expected: {
        device: { type: 'mobile', browser: 'Safari', browserVersion: '17.4.1', os: 'iOS', osVersion: '17.4.1' },
        acquisition: { channel: 'organic_search', source: 'google', referrerHost: 'www.google.de' },
        geo: { country: 'GB', city: 'London' },
        bot: false,
      },
    },
    {
      name: 'without a database there is no geo',
      message: message({ userAgent: UA.chromeWindows, ip: '81.2.69.1', campaign: { source: 'crm', medium: 'email', name: 'welcome' } }),
      geo: noGeo,
      expected: {
        device: { type: 'desktop', browser: 'Chrome', browserVersion: '124.0.0.0', os: 'Windows', osVersion: '10' },
        acquisition: { channel: 'email', source: 'crm', medium: 'email', campaign: 'welcome' },
        bot: false,
      },
    },
    {
      name: 'a server SDK message (no context) is not a bot',
      message: message(),
      expected: { device: { type: 'unknown' }, acquisition: { channel: 'direct' }, bot: false },
    },
    {
      name: 'a crawler is a bot',
      message: message({ userAgent: UA.googlebot, ip: '66.249.66.1', page: { url: 'https://shop.example.com/' } }),
      expected: { device: { type: 'bot', browser: 'Googlebot', browserVersion: '2.1' }, acquisition: { channel: 'direct' }, bot: true },
    },
    {
      name: 'a headless browser is a bot',
      message: message({ userAgent: UA.headlessChrome, page: { url: 'https://shop.example.com/', referrer: 'https://blog.example.com/' } }),
      expected: { device: { type: 'bot', browser: 'Chrome', browserVersion: '124.0.6367.60', os: 'Linux' }, acquisition: { channel: 'direct' }, bot: true },
    },
    {
      name: 'non-string context fields are ignored',
      message: message({ userAgent: 42, ip: ['81.2.69.1'], page: null }),
      expected: { device: { type: 'unknown' }, acquisition: { channel: 'direct' }, bot: false },
    },
  ]
  for (const { name, message, geo: lookup, expected } of cases) {
    const enriched = contextOf(message, { geo: lookup ?? geo, channels })
    t.strictSame(enriched, expected, name)
    t.ok(enrichedContext.check(enriched), `${name}: matches the EnrichedContext schema ${enrichedContext.problems(enriched).join('; ')}`)
  }
})
