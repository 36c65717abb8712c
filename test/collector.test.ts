import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { Analytics } from '@segment/analytics-node'
import { importFile } from '../cli/import.ts'
import { startPostgres } from './harness/postgres.ts'
import { eventually, startSystem } from './harness/system.ts'

const basic = (key: string) => `Basic ${Buffer.from(`${key}:`).toString('base64')}`

t.test('collector', async (t) => {
  const system = await startSystem({ database: startPostgres, poolSize: 2, requestsPerSecond: 5 })
  t.teardown(() => system.close())
  const { project, apiKey } = await system.createProject('shop', 'Europe/Berlin')
  const writeKey = project.writeKeys[0]!
  const auth = { authorization: basic(writeKey) }
  await system.startOperators()
  const inject = system.app.inject.bind(system.app)
  // each subtest waits out the rate limit window of the one before
  const pause = () => new Promise((r) => setTimeout(r, 1100))

  t.test('every endpoint lands with its meaning', async (t) => {
    const calls: [string, Record<string, unknown>][] = [
      ['track', { messageId: 'e-track', userId: 'u1', event: 'click_event1', properties: { price: 9.5 } }],
      ['identify', { messageId: 'e-identify', userId: 'u1', anonymousId: 'a1', traits: { email: 'u1@example.com' } }],
      ['page', { messageId: 'e-page', anonymousId: 'a1', name: 'Pricing', properties: { path: '/pricing' } }],
      ['screen', { messageId: 'e-screen', userId: 'u1', name: 'Home' }],
      ['alias', { messageId: 'e-alias', userId: 'u1', previousId: 'a1' }],
      ['group', { messageId: 'e-group', userId: 'u1', groupId: 'g1', traits: { plan: 'team' } }],
    ]
    for (const [type, body] of calls) {
      const response = await inject({ method: 'POST', url: `/v1/${type}`, headers: auth, payload: body })
      t.equal(response.statusCode, 200, `${type}: ${response.body}`)
    }
    await eventually('six rows', async () => (await system.store.countEvents('shop')) >= 6)
    const track = await system.store.getEvent('shop', 'e-track')
    t.equal(track?.name, 'click_event1')
    t.same(track?.properties, { price: 9.5 })
    const identify = await system.store.getEvent('shop', 'e-identify')
    t.equal(identify?.type, 'identify')
    t.equal(identify?.name, '$identify')
    t.same(identify?.traits, { email: 'u1@example.com' })
    t.equal(identify?.anonymousId, 'a1')
    t.equal(identify?.userId, 'u1')
    t.equal((await system.store.getEvent('shop', 'e-page'))?.name, '$page')
    t.equal((await system.store.getEvent('shop', 'e-page'))?.extra.name, 'Pricing', 'page name kept')
    t.equal((await system.store.getEvent('shop', 'e-alias'))?.extra.previousId, 'a1')
    t.equal((await system.store.getEvent('shop', 'e-group'))?.extra.groupId, 'g1')
    t.equal((await system.store.getEvent('shop', 'e-screen'))?.name, '$screen')
    await pause()
  })

  t.test('clock skew is corrected with message-level and batch-level sentAt', async (t) => {
    // the client clock is 1 hour fast: it says the event happened 10 s before sending
    const clientNow = Date.now() + 3_600_000
    const iso = (ms: number) => new Date(ms).toISOString()
    const before = Date.now()
    const response = await inject({
      method: 'POST', url: '/v1/batch', headers: auth,
      payload: {
        sentAt: iso(clientNow),
        batch: [
          { type: 'track', userId: 'u9', event: 'skew', messageId: 'skew-batch', timestamp: iso(clientNow - 10_000) },
          { type: 'track', userId: 'u9', event: 'skew', messageId: 'skew-message', timestamp: iso(clientNow - 20_000), sentAt: iso(clientNow - 5_000) },
          { type: 'track', userId: 'u9', event: 'skew', messageId: 'skew-none' },
        ],
      },
    })
    const after = Date.now()
    t.equal(response.statusCode, 200)
    await eventually('skew rows', async () => (await system.store.getEvent('shop', 'skew-none')) !== undefined)
    const batchLevel = (await system.store.getEvent('shop', 'skew-batch'))!
    t.ok(batchLevel.eventTime >= before - 10_000 && batchLevel.eventTime <= after - 10_000, 'batch sentAt: 10 s before receipt')
    t.equal(batchLevel.receivedAt - batchLevel.eventTime, 10_000)
    t.equal(batchLevel.extra.originalTimestamp, iso(clientNow - 10_000), 'the client timestamp is kept')
    const messageLevel = (await system.store.getEvent('shop', 'skew-message'))!
    t.equal(messageLevel.receivedAt - messageLevel.eventTime, 15_000, 'the message sentAt wins over the batch one')
    const none = (await system.store.getEvent('shop', 'skew-none'))!
    t.equal(none.eventTime, none.receivedAt, 'no timestamp: the receipt time')
    await pause()
  })

  t.test('rate limit per write key: 429 with Retry-After', async (t) => {
    const statuses: number[] = []
    let retryAfter: string | undefined
    for (let i = 0; i < 8; i++) {
      const response = await inject({ method: 'POST', url: '/v1/track', headers: auth, payload: { userId: 'r', event: 'burst', messageId: `burst-${i}` } })
      statuses.push(response.statusCode)
      if (response.statusCode === 429) retryAfter = response.headers['retry-after'] as string
    }
    t.same(statuses.slice(0, 5), [200, 200, 200, 200, 200], 'the first 5 in a second pass')
    t.ok(statuses.slice(5).every((s) => s === 429), 'the rest are limited')
    t.ok(Number(retryAfter) >= 1, `Retry-After is ${retryAfter}`)
    await pause()
  })

  t.test('CORS for browser trackers', async (t) => {
    const preflight = await inject({ method: 'OPTIONS', url: '/v1/batch', headers: { origin: 'https://shop.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' } })
    t.equal(preflight.statusCode, 204)
    t.equal(preflight.headers['access-control-allow-origin'], '*')
    t.match(String(preflight.headers['access-control-allow-methods']), /POST/)
    // a dashboard on another origin changes and deletes funnels and segments with its API key
    const change = await inject({ method: 'OPTIONS', url: '/v1/funnels/f', headers: { origin: 'https://dash.example', 'access-control-request-method': 'PUT', 'access-control-request-headers': 'authorization, content-type' } })
    t.equal(change.statusCode, 204)
    t.match(String(change.headers['access-control-allow-methods']), /PUT/)
    t.match(String(change.headers['access-control-allow-methods']), /DELETE/)
    t.match(String(change.headers['access-control-allow-headers']), /authorization/)
  })

  t.test('import: API key, its own subject, NDJSON file with progress and resume', async (t) => {
    const withWriteKey = await inject({ method: 'POST', url: '/v1/import', headers: { authorization: `Bearer ${writeKey}` }, payload: { batch: [{ type: 'track', userId: 'h', event: 'old' }] } })
    t.equal(withWriteKey.statusCode, 401, 'a write key cannot import')
    const direct = await inject({ method: 'POST', url: '/v1/import', headers: { authorization: `Bearer ${apiKey}` }, payload: { batch: [{ type: 'track', userId: 'h', event: 'old', messageId: 'imp-0', timestamp: '2019-05-02T08:00:00Z' }] } })
    t.equal(direct.statusCode, 200, direct.body)
    await eventually('imported row', async () => (await system.store.getEvent('shop', 'imp-0')) !== undefined)
    const row = (await system.store.getEvent('shop', 'imp-0'))!
    t.equal(row.source, 'import')
    t.equal(row.rawStream, 'SEG_IMPORT', 'history travels on the import subject, apart from live traffic')

    await system.app.listen({ port: 0, host: '127.0.0.1' })
    const url = `http://127.0.0.1:${(system.app.server.address() as { port: number }).port}`
    const dir = await mkdtemp(join(tmpdir(), 'segstream-import-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const file = join(dir, 'history.ndjson')
    const lines = Array.from({ length: 250 }, (_, i) => JSON.stringify({ type: 'track', userId: `h${i % 17}`, event: 'custom_event2', messageId: `hist-${i}`, timestamp: new Date(Date.parse('2019-05-01T00:00:00Z') + i * 60_000).toISOString() }))
    lines.splice(100, 0, '{not json')
    lines.splice(200, 0, JSON.stringify({ type: 'track', userId: 'h1', messageId: 'no-event' }))
    await writeFile(file, `${lines.join('\n')}\n`)

    // an import interrupted after its first batches...
    let writes = 0
    const interrupting = { isTTY: false, write: () => { if (++writes === 1) throw new Error('interrupted') } }
    await t.rejects(importFile({ file, url, apiKey, batchSize: 40, progress: interrupting }), /interrupted/)
    const saved = JSON.parse(await readFile(`${file}.import-state.json`, 'utf8'))
    t.ok(saved.line > 0 && saved.line < lines.length, `position saved at line ${saved.line}`)
    // ...resumes where it stopped
    const progress: string[] = []
    const result = await importFile({ file, url, apiKey, batchSize: 40, progress: { isTTY: false, write: (text: string) => progress.push(text) } })
    t.equal(result.resumedFromLine, saved.line)
    t.equal(result.lines, lines.length)
    t.equal(result.rejected, 2, 'the bad line and the message without event')
    t.ok(progress.some((text) => /100\.0%/.test(text)), 'progress reaches 100%')
    const rejects = (await readFile(result.rejectsFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l))
    t.same(rejects.map((r) => r.line), [101, 201])
    t.match(rejects[0].reason, /not JSON/)
    t.match(rejects[1].reason, /event is required/)
    await eventually('250 history rows', async () => (await system.store.countEvents('shop', { from: Date.parse('2019-05-01'), to: Date.parse('2019-05-02') })) === 250)
    await new Promise((r) => setTimeout(r, 300))
    t.equal(await system.store.countEvents('shop', { from: Date.parse('2019-05-01'), to: Date.parse('2019-05-02') }), 250, 'every history line once, resume included')
  })

  t.test('an existing Segment client (@segment/analytics-node) works unchanged', async (t) => {
    await pause()
    const url = `http://127.0.0.1:${(system.app.server.address() as { port: number }).port}`
    const analytics = new Analytics({ writeKey, host: url, flushAt: 10, flushInterval: 200, maxRetries: 3 })
    const errors: unknown[] = []
    analytics.on('error', (error) => errors.push(error))
    analytics.track({ userId: 'seg-u', event: 'click_event1', properties: { via: 'sdk' }, messageId: 'sdk-track' })
    analytics.identify({ userId: 'seg-u', anonymousId: 'seg-a', traits: { name: 'Ada' }, messageId: 'sdk-identify' })
    analytics.page({ anonymousId: 'seg-a', name: 'Docs', properties: { path: '/docs' }, messageId: 'sdk-page' })
    analytics.alias({ userId: 'seg-u', previousId: 'seg-a', messageId: 'sdk-alias' })
    await analytics.closeAndFlush({ timeout: 10_000 })
    t.same(errors, [], 'the SDK saw no error')
    await eventually('sdk rows', async () => (await system.store.getEvent('shop', 'sdk-alias')) !== undefined && (await system.store.getEvent('shop', 'sdk-page')) !== undefined)
    const track = (await system.store.getEvent('shop', 'sdk-track'))!
    t.equal(track.name, 'click_event1')
    t.same(track.properties, { via: 'sdk' })
    t.equal(track.userId, 'seg-u')
    t.match(track.context, { library: { name: '@segment/analytics-node' } })
    const identify = (await system.store.getEvent('shop', 'sdk-identify'))!
    t.same(identify.traits, { name: 'Ada' })
    t.equal(identify.anonymousId, 'seg-a')
    t.equal((await system.store.getEvent('shop', 'sdk-page'))!.extra.name, 'Docs')
    t.equal((await system.store.getEvent('shop', 'sdk-alias'))!.extra.previousId, 'seg-a')
  })
})
