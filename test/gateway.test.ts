import { gzipSync } from 'node:zlib'
import t from 'tap'
import { jetstream } from '@nats-io/jetstream'
import { decodeEnvelope } from '../schemas/codec.ts'
import type { DeadLetterEnvelope } from '../schemas/envelope.ts'
import { startPostgres } from './harness/postgres.ts'
import { startSystem } from './harness/system.ts'

const basic = (writeKey: string) => `Basic ${Buffer.from(`${writeKey}:`).toString('base64')}`

t.test('gateway: routes, bad input, outages', async (t) => {
  const logLines: string[] = []
  const system = await startSystem({ database: startPostgres, poolSize: 2, logLines })
  t.teardown(() => system.close())
  const { project } = await system.createProject('alpha')
  const auth = { authorization: basic(project.writeKeys[0]!) }
  const inject = system.app.inject.bind(system.app)

  t.test('health', async (t) => {
    t.equal((await inject({ url: '/healthz' })).statusCode, 200)
    const ready = await inject({ url: '/readyz' })
    t.equal(ready.statusCode, 200)
    t.same(ready.json().nats, { ok: true })
  })

  t.test('unknown route is a 404 naming it', async (t) => {
    const response = await inject({ method: 'GET', url: '/v1/nothing' })
    t.equal(response.statusCode, 404)
    t.match(response.json().message, 'GET /v1/nothing')
  })

  t.test('write keys', async (t) => {
    const missing = await inject({ method: 'POST', url: '/v1/track', payload: { userId: 'u', event: 'e' } })
    t.equal(missing.statusCode, 401)
    t.match(missing.json().message, /missing write key/)
    const unknown = await inject({ method: 'POST', url: '/v1/track', headers: { authorization: basic('wk_nope') }, payload: { userId: 'u', event: 'e' } })
    t.equal(unknown.statusCode, 401)
    t.match(unknown.json().message, /unknown write key/)
    const inBody = await inject({ method: 'POST', url: '/v1/track', payload: { writeKey: project.writeKeys[0], userId: 'u', event: 'e' } })
    t.equal(inBody.statusCode, 200, 'writeKey in the body works too')
  })

  t.test('a malformed event is a 400 naming the field', async (t) => {
    const cases: [string, unknown, RegExp][] = [
      ['/v1/track', { userId: 'u' }, /event is required/],
      ['/v1/track', { event: 'e' }, /anonymousId or userId is required/],
      ['/v1/track', { userId: 'u', event: 'e', timestamp: 'yesterday' }, /timestamp must be an ISO 8601 date/],
      ['/v1/track', { userId: 'u', event: 'e', properties: [1, 2] }, /properties must be an object/],
      ['/v1/alias', { userId: 'u' }, /previousId is required/],
      ['/v1/track', { userId: 'u', event: '$session_start' }, /reserved/],
      ['/v1/batch', { batch: 'nope' }, /batch must be an array/],
      ['/v1/batch', { batch: [] }, /batch is empty/],
    ]
    for (const [url, payload, reason] of cases) {
      const response = await inject({ method: 'POST', url, headers: auth, payload: payload as object })
      t.equal(response.statusCode, 400, `${url} ${JSON.stringify(payload)}`)
      t.match(response.json().message, reason)
    }
    const notJson = await inject({ method: 'POST', url: '/v1/track', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"userId":' })
    t.equal(notJson.statusCode, 400, 'invalid JSON is a 400')
    const huge = await inject({ method: 'POST', url: '/v1/batch', headers: auth, payload: { batch: [{ userId: 'u', event: 'e', properties: { blob: 'x'.repeat(600 * 1024) } }] } })
    t.equal(huge.statusCode, 400, 'a body over 500 KB is a 400, not a 413 that SDKs would retry')
    t.match(huge.json().message, /larger than the limit/)
  })

  t.test('text/plain and gzip bodies', async (t) => {
    const beacon = await inject({ method: 'POST', url: '/v1/batch', headers: { ...auth, 'content-type': 'text/plain' }, payload: JSON.stringify({ batch: [{ type: 'track', userId: 'u', event: 'beacon' }] }) })
    t.equal(beacon.statusCode, 200, beacon.body)
    const gzipped = await inject({
      method: 'POST', url: '/v1/batch', headers: { ...auth, 'content-type': 'application/json', 'content-encoding': 'gzip' },
      payload: gzipSync(JSON.stringify({ batch: [{ type: 'track', userId: 'u', event: 'zipped' }] })),
    })
    t.equal(gzipped.statusCode, 200, gzipped.body)
  })

  t.test('a mixed batch: good messages stored, bad ones dead-lettered with reason and payload', async (t) => {
    const batch = [
      { type: 'track', userId: 'u1', event: 'ok1', messageId: 'good-1' },
      { type: 'track', userId: 'u1', messageId: 'bad-1' },
      { type: 'page', anonymousId: 'a1', messageId: 'good-2' },
      { type: 'track', userId: 'u1', event: 'big', messageId: 'bad-2', properties: { blob: 'y'.repeat(40 * 1024) } },
    ]
    const response = await inject({ method: 'POST', url: '/v1/batch', headers: auth, payload: { batch } })
    t.equal(response.statusCode, 200)
    const body = response.json()
    t.equal(body.accepted, 2)
    t.same(body.rejected.map((r: { index: number; messageId: string }) => [r.index, r.messageId]), [[1, 'bad-1'], [3, 'bad-2']])
    t.match(body.rejected[1].reason, /limit is 32768 bytes/)

    const js = jetstream(system.nc)
    const letters: DeadLetterEnvelope[] = []
    const consumer = await js.consumers.get('SEG_DLQ')
    const messages = await consumer.fetch({ max_messages: 100, expires: 1000 })
    for await (const m of messages) letters.push(decodeEnvelope(m.data) as DeadLetterEnvelope)
    const bad1 = letters.find((l) => l.id === 'bad-1')
    t.ok(bad1, 'bad-1 is in the dead-letter stream')
    t.equal(bad1!.data.stepId, 'collector')
    t.match(bad1!.data.reason, /event is required/)
    t.same(JSON.parse(bad1!.data.payload as string), batch[1], 'with its original payload')
    t.ok(letters.find((l) => l.id === 'bad-2'), 'the oversize message too')

    const allBad = await inject({ method: 'POST', url: '/v1/batch', headers: auth, payload: { batch: [batch[1]] } })
    t.equal(allBad.statusCode, 400, 'a batch with no good message is a 400')
    t.equal(allBad.json().rejected.length, 1)
  })

  t.test('database down: readyz says 503 and names it', async (t) => {
    await system.database.stop()
    const ready = await inject({ url: '/readyz' })
    t.equal(ready.statusCode, 503)
    t.equal(ready.json().database.ok, false)
    t.equal(ready.json().nats.ok, true)
    await system.database.restart()
    t.equal((await inject({ url: '/readyz' })).statusCode, 200, 'ready again once the database is back')
  })

  t.test('NATS down: 503, nothing acknowledged, a log line naming NATS', async (t) => {
    await system.nats.stop()
    const response = await inject({ method: 'POST', url: '/v1/track', headers: auth, payload: { userId: 'u', event: 'during-outage', messageId: 'outage-1' } })
    t.equal(response.statusCode, 503)
    t.equal(response.json().dependency, 'nats')
    t.equal(response.headers['retry-after'], '1')
    t.ok(logLines.some((line) => /NATS unavailable/.test(line)), 'the log says NATS is the problem')
    await system.nats.restart()
    // the client retries after the outage and is stored once
    let retry
    for (let i = 0; i < 50; i++) {
      retry = await inject({ method: 'POST', url: '/v1/track', headers: auth, payload: { userId: 'u', event: 'during-outage', messageId: 'outage-1' } })
      if (retry.statusCode === 200) break
      await new Promise((r) => setTimeout(r, 200))
    }
    t.equal(retry!.statusCode, 200, 'accepted once NATS is back')
  })
})
