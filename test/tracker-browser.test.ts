import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Browser, BrowserContext, BrowserContextOptions, Page, Request } from 'playwright-core'
import t, { type Test } from 'tap'
import { trackerRoutes } from '../gateway/routes/tracker.ts'
import { buildBrowser } from '../scripts/build-browser.ts'
import type { EventRow } from '../store/store.ts'
import { launchBrowser } from './harness/browser.ts'
import { startPostgres } from './harness/postgres.ts'
import { eventually, startSystem } from './harness/system.ts'

/** A message as the tracker sends it. */
interface SentMessage {
  type: string
  messageId: string
  anonymousId: string
  userId?: string
  timestamp: string
  event?: string
  name?: string
  previousId?: string
  properties?: Record<string, unknown>
  traits?: Record<string, unknown>
  context: Record<string, any>
}

/** One POST /v1/batch the browser made, and what became of it. */
interface Attempt {
  messages: SentMessage[]
  sentAt: string
  writeKey: string
  resourceType: string
  /** Requests of earlier page loads than `generation` come from before a reload. */
  generation: number
  status?: number
  failure?: string
  result?: { accepted: number; duplicates: number }
}

const root = join(import.meta.dirname, '..')
const version = (JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { version: string }).version
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const html = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

/** Watches every batch request of a browser context, including beacons and failed attempts. */
function observe(context: BrowserContext) {
  const attempts: Attempt[] = []
  const byRequest = new Map<Request, Attempt>()
  const state = { generation: 0 }
  context.on('request', (request) => {
    if (request.method() !== 'POST' || !new URL(request.url()).pathname.endsWith('/v1/batch')) return
    const body = request.postDataJSON() as { batch: SentMessage[]; sentAt: string; writeKey: string }
    const attempt: Attempt = { messages: body.batch, sentAt: body.sentAt, writeKey: body.writeKey, resourceType: request.resourceType(), generation: state.generation }
    attempts.push(attempt)
    byRequest.set(request, attempt)
  })
  context.on('requestfinished', async (request) => {
    const attempt = byRequest.get(request)
    const response = await request.response().catch(() => null)
    if (!attempt || !response) return
    attempt.result = await response.json().catch(() => undefined)
    attempt.status = response.status()
  })
  context.on('requestfailed', (request) => {
    const attempt = byRequest.get(request)
    if (attempt) attempt.failure = request.failure()?.errorText ?? 'failed'
  })
  const delivered = () => attempts.filter((attempt) => attempt.status === 200)
  return {
    attempts,
    state,
    /** Every message of every attempt, failed ones included. */
    sent: () => attempts.flatMap((attempt) => attempt.messages),
    delivered,
    /** How many accepted (200) requests carried the message. */
    deliveries: (messageId: string) => delivered().filter((attempt) => attempt.messages.some((m) => m.messageId === messageId)).length,
    duplicatesReported: () => delivered().reduce((sum, attempt) => sum + (attempt.result?.duplicates ?? 0), 0),
  }
}

// a real browser against real servers takes longer than tap's 30 s default when run with plain node
t.setTimeout(300_000)

t.test('browser tracker in Chromium against the real collector', async (t) => {
  const distDir = await mkdtemp(join(tmpdir(), 'segstream-tracker-dist-'))
  t.teardown(() => rm(distDir, { recursive: true, force: true }))
  const build = await buildBrowser(distDir)
  t.comment(`tracker t.js ${build.gzipBytes} bytes gzipped`)

  const system = await startSystem({ database: startPostgres, poolSize: 2 })
  t.teardown(() => system.close())
  system.startOperators()

  // Test pages on the gateway's own origin, so no CORS is involved. The tracker is
  // served by its real route under a prefix, which cannot clash with /t.js in app.ts.
  await system.app.register(trackerRoutes, { prefix: '/test-tracker', distDir })
  system.app.get('/test-tracker/page/*', async (request, reply) => {
    const query = request.query as Record<string, string | undefined>
    const attributes = [`data-write-key="${html(query.key ?? '')}"`]
    if (query.autoPage) attributes.push(`data-auto-page="${html(query.autoPage)}"`)
    if (query.dnt) attributes.push(`data-respect-dnt="${html(query.dnt)}"`)
    return reply.type('text/html; charset=utf-8').send(
      `<!doctype html><html><head><title>${html(query.title ?? 'Home')}</title>` +
        `<script src="/test-tracker/t.js" ${attributes.join(' ')}></script></head><body><p>tracker test page</p></body></html>`,
    )
  })
  system.app.get('/test-tracker/module/*', async (request, reply) => {
    const { key = '' } = request.query as { key?: string }
    return reply.type('text/html; charset=utf-8').send(
      `<!doctype html><html><head><title>Module</title><script type="module">` +
        `import { createTracker } from '/test-tracker/t.mjs'; window.segstream = createTracker({ writeKey: ${JSON.stringify(key).replace(/</g, '\\u003c')}, autoPage: false })` +
        `</script></head><body></body></html>`,
    )
  })
  /** Every batch the collector received, as the server saw it (a beacon of an unloading page is invisible to playwright). */
  const received: { writeKey: string; mode: string | undefined; contentType: string | undefined; messageIds: string[] }[] = []
  system.app.addHook('preHandler', async (request) => {
    if (request.method !== 'POST' || request.url !== '/v1/batch') return
    const body = request.body as { writeKey?: string; batch?: { messageId?: string }[] }
    received.push({
      writeKey: body.writeKey ?? '',
      mode: request.headers['sec-fetch-mode'] as string | undefined,
      contentType: request.headers['content-type'],
      messageIds: (body.batch ?? []).map((m) => m.messageId ?? ''),
    })
  })
  system.app.get('/test-tracker/blank', async (_request, reply) => reply.type('text/html; charset=utf-8').send('<!doctype html><title>Blank</title>'))
  const base = await system.app.listen({ port: 0, host: '127.0.0.1' })

  const browser: Browser = await launchBrowser()
  t.teardown(() => browser.close())

  let projects = 0
  /** A fresh project, a fresh browser profile (storage, cookies) and a watcher on its requests. */
  const setup = async (t: Test, options: BrowserContextOptions = {}) => {
    const { project } = await system.createProject(`tracker-${++projects}`)
    const context = await browser.newContext({ locale: 'de-DE', timezoneId: 'Europe/Berlin', screen: { width: 1920, height: 1080 }, ...options })
    t.teardown(() => context.close())
    const seen = observe(context)
    const page = await context.newPage()
    const errors: string[] = []
    page.on('pageerror', (error) => errors.push(error.message))
    const key = project.writeKeys[0]!
    const open = async (path: string, query: Record<string, string> = {}) => {
      await page.goto(`${base}/test-tracker/${path}?${new URLSearchParams({ key, ...query })}`)
      await page.waitForFunction(() => window.segstream !== undefined)
    }
    /** Waits until exactly these messages are rows, then a little longer to catch a late duplicate. */
    const rows = async (messages: SentMessage[]) => {
      await eventually(`${messages.length} rows in ${project.id}`, async () => (await system.store.countEvents(project.id)) >= messages.length)
      await sleep(700)
      t.equal(await system.store.countEvents(project.id), messages.length, `exactly ${messages.length} rows`)
      const found = await Promise.all(messages.map((m) => system.store.getEvent(project.id, m.messageId)))
      found.forEach((row, i) => t.ok(row, `row for ${messages[i]!.type} ${messages[i]!.event ?? messages[i]!.properties?.path ?? ''}`))
      // context is free-form JSON; the assertions below walk into it
      return found.map((row) => row as EventRow & { context: Record<string, any> })
    }
    const queued = () => page.evaluate((k) => localStorage.getItem(`segstream_queue_${k}`), key)
    return { project, key, context, page, seen, errors, open, rows, queued }
  }

  /** A subtest on its own project and browser profile that also fails on any error the page saw. */
  const browserTest = (name: string, body: (t: Test, browser: Awaited<ReturnType<typeof setup>>) => Promise<void>) =>
    t.test(name, async (t) => {
      const session = await setup(t)
      await body(t, session)
      t.same(session.errors, [], 'the page saw no errors')
    })

  browserTest('page views, SPA navigation, track and context', async (t, { page, seen, open, rows, key }) => {
    await open('page/home', { utm_source: 'news', utm_campaign: 'spring' })
    const homeUrl = page.url()
    await page.evaluate(() => {
      history.pushState({}, '', '/test-tracker/page/products')
      // frameworks set the title after pushing: the page view reads it a tick later
      document.title = 'Products'
    })
    await page.evaluate(() => history.replaceState({ scroll: 10 }, ''))
    await page.evaluate(() => history.replaceState({}, '', '/test-tracker/page/products/42'))
    await page.evaluate(() => new Promise((resolve) => {
      addEventListener('popstate', resolve, { once: true })
      history.back()
    }))
    await page.evaluate(() => (location.hash = 'reviews'))
    await page.evaluate(() => window.segstream!.track('Clicked Buy', { button: 'buy', price: 12.5 }))

    await eventually('five messages delivered', () => seen.delivered().flatMap((a) => a.messages).length >= 5)
    const sent = seen.sent()
    t.same(sent.map((m) => m.type), ['page', 'page', 'page', 'page', 'track'], 'four page views (not the same-URL replaceState, not the fragment), then the track')
    const stored = await rows(sent)
    const pages = stored.filter((row) => row.type === 'page')
    t.same(pages.map((row) => row.properties.path), ['/test-tracker/page/home', '/test-tracker/page/products', '/test-tracker/page/products/42', '/test-tracker/page/home'])
    t.same(pages.map((row) => row.properties.referrer), ['', homeUrl, `${base}/test-tracker/page/products`, `${base}/test-tracker/page/products/42`], 'an SPA page view refers to the previous URL')
    t.same(pages.map((row) => row.properties.title), ['Home', 'Products', 'Products', 'Products'])
    t.same(pages[0]!.properties, { url: homeUrl, path: '/test-tracker/page/home', referrer: '', title: 'Home', search: `?key=${key}&utm_source=news&utm_campaign=spring` })
    t.same(pages[0]!.context.page, pages[0]!.properties, 'context.page holds the same page fields')
    t.same(pages[0]!.context.campaign, { source: 'news', name: 'spring' }, 'UTM parameters become context.campaign')
    t.equal(pages[1]!.context.campaign, undefined, 'no campaign without UTM parameters')
    t.ok(pages.every((row) => row.name === '$page'))

    const track = stored[4]!
    t.equal(track.name, 'Clicked Buy')
    t.same(track.properties, { button: 'buy', price: 12.5 })
    t.equal(track.context.page.url, `${base}/test-tracker/page/home?key=${key}&utm_source=news&utm_campaign=spring#reviews`)
    t.equal(track.context.locale, 'de-DE')
    t.equal(track.context.timezone, 'Europe/Berlin')
    t.same(track.context.screen, { width: 1920, height: 1080 })
    t.match(track.context.userAgent, /HeadlessChrome/)
    t.same(track.context.library, { name: 'segstream-tracker', version })

    const { anonymousId } = await page.evaluate(() => window.segstream!.user())
    t.match(anonymousId, UUID)
    t.ok(stored.every((row) => row.anonymousId === anonymousId && row.userId === null), 'one anonymous user, no userId')
    t.ok(sent.every((m) => UUID.test(m.messageId) && !Number.isNaN(Date.parse(m.timestamp))), 'uuid messageIds, ISO timestamps')
    t.equal(new Set(sent.map((m) => m.messageId)).size, 5, 'messageIds are unique')
    const sessions = new Set(stored.map((row) => row.context.sessionId))
    t.equal(sessions.size, 1, 'one session')
    t.type([...sessions][0], 'number')
    t.ok(seen.attempts.every((a) => a.writeKey === key && !Number.isNaN(Date.parse(a.sentAt))), 'each request has writeKey and sentAt')
  })

  browserTest('batches: the 20th queued message sends at once, the rest follows', async (t, { page, seen, open, rows }) => {
    await open('page/batch', { autoPage: 'false' })
    await page.evaluate(() => {
      for (let n = 1; n <= 25; n++) window.segstream!.track('Bulk', { n })
    })
    await eventually('25 delivered', () => seen.delivered().flatMap((a) => a.messages).length === 25)
    t.same(seen.attempts.map((a) => a.messages.length), [20, 5], 'at most 20 per request')
    const stored = await rows(seen.sent())
    t.same(stored.map((row) => row.properties.n), Array.from({ length: 25 }, (_, i) => i + 1))
  })

  browserTest('identify, alias, reset; data-auto-page="false" sends no page views', async (t, { page, seen, open, rows }) => {
    await open('page/account', { autoPage: 'false' })
    const first = await page.evaluate(() => window.segstream!.user())
    t.same(first.userId, null)
    await page.evaluate(() => {
      window.segstream!.identify('user-42', { plan: 'pro', email: 'ada@example.com' })
      window.segstream!.track('After Identify')
      window.segstream!.flush()
    })
    await eventually('identify delivered', () => seen.delivered().length === 1)

    await page.reload()
    await page.waitForFunction(() => window.segstream !== undefined)
    t.same(await page.evaluate(() => window.segstream!.user()), { anonymousId: first.anonymousId, userId: 'user-42' }, 'identity survives a reload')
    await page.evaluate(() => {
      const s = window.segstream!
      s.track('After Reload')
      s.alias('user-43')
      s.track('After Alias')
      s.reset()
      s.track('After Reset')
      s.flush()
    })
    await eventually('all delivered', () => seen.delivered().flatMap((a) => a.messages).length === 6)
    const sent = seen.sent()
    t.same(sent.map((m) => m.event ?? m.type), ['identify', 'After Identify', 'After Reload', 'alias', 'After Alias', 'After Reset'], 'no page views')
    const [identify, afterIdentify, afterReload, alias, afterAlias, afterReset] = await rows(sent)
    t.equal(identify!.userId, 'user-42')
    t.same(identify!.traits, { plan: 'pro', email: 'ada@example.com' })
    t.equal(afterIdentify!.userId, 'user-42', 'later events carry the userId')
    // (the explicit alias below later re-attributes user-42's events to user-43: test/identity.test.ts)
    t.ok(['user-42', 'user-43'].includes(afterIdentify!.canonicalId), 'counted for the identified user')
    t.equal(afterReload!.userId, 'user-42')
    t.equal(afterReload!.anonymousId, first.anonymousId)
    t.equal(alias!.userId, 'user-43')
    t.equal(alias!.extra.previousId, 'user-42', 'alias links the previous userId')
    t.equal(afterAlias!.userId, 'user-43')
    t.equal(afterReset!.userId, null, 'reset forgets the userId')
    t.not(afterReset!.anonymousId, first.anonymousId, 'reset starts a new anonymous user')
    t.not(afterReset!.context.sessionId, afterAlias!.context.sessionId, 'and a new session')
  })

  browserTest('offline, then back online: queued events arrive exactly once', async (t, { project, page, context, seen, open, rows, queued }) => {
    await open('page/offline')
    await eventually('page view stored', async () => (await system.store.countEvents(project.id)) === 1)
    await context.setOffline(true)
    await page.evaluate(() => {
      for (let i = 1; i <= 5; i++) window.segstream!.track('While Offline', { i })
      window.segstream!.flush()
    })
    await eventually('a send failed', () => seen.attempts.some((a) => a.failure))
    t.equal(await system.store.countEvents(project.id), 1, 'nothing arrived while offline')
    t.equal(JSON.parse((await queued())!).length, 5, 'the five wait in localStorage')

    await context.setOffline(false)
    await eventually('offline events delivered', () => seen.delivered().length >= 2)
    const sent = [...new Map(seen.sent().map((m) => [m.messageId, m])).values()]
    t.equal(sent.length, 6)
    const stored = await rows(sent)
    t.same(stored.slice(1).map((row) => row.properties.i), [1, 2, 3, 4, 5])
    t.ok(sent.every((m) => seen.deliveries(m.messageId) === 1), 'each message in exactly one accepted request')
    t.equal(seen.duplicatesReported(), 0, 'the collector saw no repeat')
    const failedAt = seen.attempts.find((a) => a.failure)!.sentAt
    const deliveredAt = seen.attempts.at(-1)!.sentAt
    t.ok(Date.parse(deliveredAt) > Date.parse(failedAt), 'sentAt is stamped at each attempt')
    t.equal(await queued(), '[]', 'queue emptied')
  })

  browserTest('collector unreachable, then 503, then up: retried with backoff; a 400 is dropped', async (t, { page, context, seen, open, rows }) => {
    await open('page/retry', { autoPage: 'false' })
    // one handler whose answer the test switches, so no retry slips through between two routes
    let collector: 'refuse' | '503' | '400' | 'up' = 'refuse'
    await context.route('**/v1/batch', (route) => {
      if (collector === 'refuse') return route.abort('connectionrefused')
      if (collector === '503') return route.fulfill({ status: 503, contentType: 'application/json', body: '{"error":"unavailable","message":"down"}' })
      if (collector === '400') return route.fulfill({ status: 400, contentType: 'application/json', body: '{"error":"bad_request","message":"no"}' })
      return route.fallback()
    })
    await page.evaluate(() => {
      window.segstream!.track('Retried')
      window.segstream!.flush()
    })
    await eventually('a refused attempt', () => seen.attempts.some((a) => a.failure))
    collector = '503'
    await eventually('a 503 attempt', () => seen.attempts.some((a) => a.status === 503), 10_000)
    collector = 'up'
    await eventually('delivered after retries', () => seen.delivered().length === 1, 15_000)
    t.ok(seen.attempts.length >= 3, `${seen.attempts.length} attempts`)
    t.ok(seen.attempts.every((a) => a.messages.length === 1 && a.messages[0]!.event === 'Retried'), 'every attempt carried the same message')
    t.equal(new Set(seen.attempts.map((a) => a.messages[0]!.messageId)).size, 1, 'with the same messageId')

    collector = '400'
    await page.evaluate(() => {
      window.segstream!.track('Refused')
      window.segstream!.flush()
    })
    await eventually('a 400 attempt', () => seen.attempts.some((a) => a.status === 400))
    collector = 'up'
    await page.evaluate(() => {
      window.segstream!.track('After Refused')
      window.segstream!.flush()
    })
    await eventually('next event delivered', () => seen.delivered().length === 2)
    await sleep(2500)
    const refused = seen.sent().filter((m) => m.event === 'Refused')
    t.equal(refused.length, 1, 'a message answered with 400 is not sent again')
    const sent = seen.delivered().flatMap((a) => a.messages)
    t.same(sent.map((m) => m.event), ['Retried', 'After Refused'])
    await rows(sent)
  })

  browserTest('a reload with events still queued sends them after the reload, once', async (t, { page, context, seen, open, rows, queued }) => {
    await open('page/reload', { autoPage: 'false' })
    await context.route('**/v1/batch', (route) => route.abort('connectionrefused'))
    await page.evaluate(() => {
      for (const n of [1, 2, 3]) window.segstream!.track('Before Reload', { n })
      window.segstream!.flush()
    })
    await eventually('a refused attempt', () => seen.attempts.some((a) => a.failure))
    const before = seen.sent()
    t.same(JSON.parse((await queued())!).map((m: SentMessage) => m.messageId), before.map((m) => m.messageId), 'the three are stored in localStorage')

    seen.state.generation = 1
    await page.reload()
    await page.waitForFunction(() => window.segstream !== undefined)
    await context.unrouteAll()
    await page.evaluate(() => {
      window.segstream!.track('After Reload')
    })
    await eventually('all four delivered', () => seen.delivered().flatMap((a) => a.messages).length === 4)
    const delivered = seen.delivered()
    t.ok(delivered.every((a) => a.generation === 1), 'delivered by the reloaded page')
    t.ok(before.every((m) => seen.deliveries(m.messageId) === 1), 'each queued message in exactly one accepted request')
    t.equal(seen.duplicatesReported(), 0)
    const stored = await rows([...before, delivered.flatMap((a) => a.messages).find((m) => m.event === 'After Reload')!])
    t.same(stored.map((row) => row.name), ['Before Reload', 'Before Reload', 'Before Reload', 'After Reload'])
    t.equal(await queued(), '[]', 'nothing left queued')
  })

  browserTest('leaving the page hands queued events to sendBeacon', async (t, { key, page, seen, open, rows, queued }) => {
    await open('page/leave', { autoPage: 'false' })
    await page.evaluate(() => {
      window.segstream!.track('Before Leaving', { n: 1 })
      window.segstream!.track('Before Leaving', { n: 2 })
    })
    const waiting: SentMessage[] = JSON.parse((await queued())!)
    t.equal(waiting.length, 2, 'both queued, waiting for the 2 s timer')
    // well within the 2 s timer: only the pagehide handler can send them
    await page.goto(`${base}/test-tracker/blank`)
    t.equal(await queued(), '[]', 'the beaconed messages left the stored queue')
    const stored = await rows(waiting)
    t.same(stored.map((row) => row.properties.n), [1, 2])
    const requests = received.filter((r) => r.writeKey === key)
    t.equal(requests.length, 1, 'one request')
    t.same(requests[0]!.messageIds, waiting.map((m) => m.messageId))
    t.equal(requests[0]!.mode, 'no-cors', 'a beacon (fetch would be mode cors)')
    t.match(requests[0]!.contentType, /^text\/plain/, 'as text/plain, which needs no CORS preflight')
    t.equal(seen.attempts.filter((a) => a.resourceType === 'fetch').length, 0, 'no fetch was made')
  })

  browserTest('opt-out is persisted and sends nothing; optIn resumes', async (t, { page, seen, open, rows }) => {
    await open('page/privacy')
    await eventually('page view delivered', () => seen.delivered().length === 1)
    await page.evaluate(() => {
      window.segstream!.optOut()
      window.segstream!.track('Opted Out')
      window.segstream!.flush()
    })
    await page.reload()
    await page.waitForFunction(() => window.segstream !== undefined)
    await page.evaluate(() => {
      window.segstream!.track('Still Opted Out')
      window.segstream!.flush()
    })
    await sleep(2500)
    t.equal(seen.attempts.length, 1, 'no request after optOut, not even the page view of the reload')
    t.equal(await page.evaluate(() => localStorage.getItem('segstream_optout')), '1', 'persisted in localStorage')

    await page.evaluate(() => {
      window.segstream!.optIn()
      window.segstream!.track('Opted In')
      window.segstream!.flush()
    })
    await eventually('delivered after optIn', () => seen.delivered().length === 2)
    const sent = seen.sent()
    t.same(sent.map((m) => m.event ?? m.type), ['page', 'Opted In'])
    await rows(sent)
  })

  browserTest('data-respect-dnt="true" honours Do Not Track', async (t, { page, seen, open, rows }) => {
    await page.addInitScript(() => Object.defineProperty(Navigator.prototype, 'doNotTrack', { get: () => '1' }))
    await open('page/dnt', { dnt: 'true' })
    await page.evaluate(() => {
      window.segstream!.track('Not Tracked')
      window.segstream!.flush()
    })
    await sleep(2500)
    t.equal(seen.attempts.length, 0, 'no request with DNT on and data-respect-dnt="true"')
    t.equal(await page.evaluate(() => localStorage.getItem('segstream_anonymous_id')), null, 'nothing stored either')

    await open('page/dnt-ignored')
    await page.evaluate(() => window.segstream!.track('Tracked'))
    await eventually('delivered without data-respect-dnt', () => seen.delivered().flatMap((a) => a.messages).length === 2)
    t.same(seen.sent().map((m) => m.event ?? m.type), ['page', 'Tracked'])
    await rows(seen.sent())
  })

  browserTest('ES module: createTracker; a session ends after 30 minutes without messages', async (t, { page, seen, open, rows }) => {
    await page.clock.install()
    await open('module/app')
    await page.evaluate(() => window.segstream!.track('First'))
    await page.clock.fastForward('29:00')
    await page.evaluate(() => window.segstream!.track('Within 30 Minutes'))
    await page.clock.fastForward('31:00')
    await page.evaluate(() => {
      window.segstream!.track('After 31 Minutes Idle')
      window.segstream!.flush()
    })
    await eventually('three delivered', () => seen.delivered().flatMap((a) => a.messages).length === 3)
    const sent = seen.sent().filter((m, i, all) => all.findIndex((other) => other.messageId === m.messageId) === i)
    t.same(sent.map((m) => m.event), ['First', 'Within 30 Minutes', 'After 31 Minutes Idle'], 'autoPage: false sends no page view')
    const [first, within, after] = await rows(sent)
    t.equal(within!.context.sessionId, first!.context.sessionId, '29 minutes apart: same session')
    t.not(after!.context.sessionId, within!.context.sessionId, '31 idle minutes: a new session')
    t.ok(after!.context.sessionId > first!.context.sessionId, 'session ids are their start times')
    t.equal(first!.context.library.version, version)
    t.equal(first!.context.page.path, '/test-tracker/module/app', 'host defaults to the page origin')
  })

  browserTest('blocked localStorage: cookie fallback, and bad input never throws into the page', async (t, { page, context, seen, open, rows }) => {
    await page.addInitScript(() => Object.defineProperty(window, 'localStorage', { get: () => { throw new DOMException('blocked', 'SecurityError') } }))
    await open('page/blocked', { autoPage: 'false' })
    const threw = await page.evaluate(() => {
      const cyclic: Record<string, unknown> = {}
      cyclic.self = cyclic
      try {
        window.segstream!.track('Cyclic', cyclic)
        window.segstream!.identify('user-7', { big: 10n as unknown as number })
        // @ts-expect-error wrong argument types from untyped host code
        window.segstream!.page(null, 42)
        window.segstream!.track('Works')
        window.segstream!.flush()
        return false
      } catch {
        return true
      }
    })
    t.equal(threw, false, 'no call threw')
    await eventually('delivered', () => seen.delivered().length === 1)
    const sent = seen.sent()
    t.same(sent.map((m) => m.event ?? m.type), ['page', 'Works'], 'unserializable calls are dropped, the rest goes on')
    const { anonymousId } = await page.evaluate(() => window.segstream!.user())
    const cookies = await context.cookies()
    t.equal(cookies.find((c) => c.name === 'segstream_anonymous_id')?.value, anonymousId, 'anonymousId kept in a cookie')
    t.equal(cookies.find((c) => c.name === 'segstream_user_id')?.value, 'user-7', 'identify stored the userId although its traits failed')
    await page.reload()
    await page.waitForFunction(() => window.segstream !== undefined)
    t.equal((await page.evaluate(() => window.segstream!.user())).anonymousId, anonymousId, 'same anonymousId after a reload')
    const stored = await rows(sent)
    t.ok(stored.every((row) => row.anonymousId === anonymousId && row.userId === 'user-7'))
  })
})
