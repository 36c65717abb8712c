import t from 'tap'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { eventually, startSystem } from './harness/system.ts'

const basic = (writeKey: string) => `Basic ${Buffer.from(`${writeKey}:`).toString('base64')}`

for (const target of DATABASE_TARGETS) {
  t.test(`HTTP to events table on ${target.name}`, async (t) => {
    const system = await startSystem({ database: target.start, poolSize: target.poolSize })
    t.teardown(() => system.close())
    const alpha = await system.createProject('alpha', 'Europe/Berlin')
    const beta = await system.createProject('beta')
    await system.startOperators()

    // 40 distinct events, each sent twice, plus the same ids in a second project
    const batch = Array.from({ length: 40 }, (_, i) => ({
      type: 'track', event: i % 2 ? 'click_event1' : 'custom_event2', messageId: `m-${i}`,
      anonymousId: `anon-${i % 7}`, timestamp: '2019-05-10T10:00:00.000Z', properties: { i },
    }))
    for (const round of [1, 2]) {
      const response = await system.app.inject({ method: 'POST', url: '/v1/batch', headers: { authorization: basic(alpha.project.writeKeys[0]!) }, payload: { batch } })
      t.equal(response.statusCode, 200, `alpha round ${round}: ${response.body}`)
      t.equal(response.json().accepted, 40)
      t.equal(response.json().duplicates, round === 1 ? 0 : 40, 'the second round is recognised as duplicates')
    }
    const betaResponse = await system.app.inject({ method: 'POST', url: '/v1/batch', payload: { writeKey: beta.project.writeKeys[0], batch: batch.slice(0, 10) } })
    t.equal(betaResponse.statusCode, 200, betaResponse.body)
    t.equal(betaResponse.json().duplicates, 0, 'the same messageId in another project is not a duplicate')

    await eventually('all rows stored', async () => (await system.store.countEvents('alpha')) === 40 && (await system.store.countEvents('beta')) === 10)
    // give a stray duplicate time to show up before the final count
    await new Promise((r) => setTimeout(r, 500))
    t.equal(await system.store.countEvents('alpha'), 40, 'exactly one row per alpha message')
    t.equal(await system.store.countEvents('beta'), 10, 'exactly one row per beta message')

    const row = await system.store.getEvent('alpha', 'm-3')
    t.ok(row, 'row m-3 stored')
    t.equal(row!.name, 'click_event1')
    t.equal(row!.canonicalId, 'anon-3')
    t.same(row!.properties, { i: 3 })
    t.equal(new Date(row!.eventTime).toISOString(), '2019-05-10T10:00:00.000Z')
    t.equal(row!.rawStream, 'SEG_RAW')
    t.ok(row!.rawSeq > 0 && row!.enrichedSeq > 0, 'source sequences recorded')
    t.equal(row!.context.ip, '127.0.0.1', 'client IP stamped when context.ip is absent')

    const days = await system.store.eventsPerDay('alpha', 'Europe/Berlin', { from: Date.parse('2019-05-01'), to: Date.parse('2019-06-01') })
    t.same(days, [{ day: '2019-05-10', events: 40, users: 7 }])
  })
}
