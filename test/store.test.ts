import t from 'tap'
import { createLogger } from '../config/logger.ts'
import type { ProfileRow } from '../store/profiles.ts'
import type { SessionRow } from '../store/sessions.ts'
import { loadMigrations } from '../store/migrate.ts'
import { openStore, type EventRow } from '../store/store.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'

const logger = createLogger('silent')

const row = (overrides: Partial<EventRow>): EventRow => ({
  project: 'alpha', messageId: 'm', eventTime: Date.parse('2019-05-10T10:00:00Z'), receivedAt: Date.parse('2026-01-01T00:00:00Z'),
  type: 'track', name: 'click_event1', canonicalId: 'u1', anonymousId: 'a1', userId: 'u1', source: 'import', keyGroup: 3,
  rawStream: 'SEG_IMPORT', rawSeq: 1, enrichedSeq: 1, properties: { plan: 'pro', n: 2 }, traits: null,
  context: { ip: '10.0.0.1', page: { path: '/x' } }, extra: { integrations: { All: true } },
  enrichment: { device: { type: 'mobile', os: 'iOS' }, acquisition: { channel: 'email' }, geo: { country: 'DE' }, bot: false }, ...overrides,
})

// Every query the store offers, on each target: the answers must be the same.
for (const target of DATABASE_TARGETS) {
  t.test(`store on ${target.name}`, async (t) => {
    const database = await target.start()
    const store = await openStore({ url: database.url, poolSize: target.poolSize, logger })
    t.teardown(async () => { await store.close(); await database.close() })

    const first = await store.migrate()
    t.equal(first.target, target.name, `detected ${target.name}`)
    t.same(first.applied, (await loadMigrations()).map((migration) => migration.version), 'every migration applied')
    t.same((await store.migrate()).applied, [], 'migrating again applies nothing')

    t.equal(await store.insertEvents([]), 0, 'an empty batch is a no-op')
    const rows = [
      row({ messageId: 'm1', enrichedSeq: 11 }),
      // 22:30 UTC on April 30 is already May 1 in Berlin
      row({ messageId: 'm2', eventTime: Date.parse('2019-04-30T22:30:00Z'), canonicalId: 'u2', enrichedSeq: 12 }),
      row({ messageId: 'm3', eventTime: Date.parse('2019-05-01T10:00:00Z'), canonicalId: 'u2', enrichedSeq: 13 }),
      row({ messageId: 'm1', enrichedSeq: 11 }),
      row({ project: 'beta', messageId: 'm1', enrichedSeq: 14 }),
    ]
    t.equal(await store.insertEvents(rows), 4, 'a duplicate inside a batch is stored once')
    t.equal(await store.insertEvents(rows), 0, 'a replayed batch stores nothing')

    t.equal(await store.countEvents('alpha'), 3)
    t.equal(await store.countEvents('beta'), 1, 'the same message id in another project is its own row')
    t.equal(await store.countEvents('gamma'), 0)
    t.equal(await store.countEvents('alpha', { from: Date.parse('2019-05-01T00:00:00Z') }), 2, 'from is inclusive')
    t.equal(await store.countEvents('alpha', { to: Date.parse('2019-05-01T10:00:00Z') }), 1, 'to is exclusive')

    const stored = await store.getEvent('alpha', 'm1')
    t.same(stored, row({ messageId: 'm1', enrichedSeq: 11 }), 'a row reads back exactly as written, JSON included')
    t.equal(await store.getEvent('alpha', 'missing'), undefined)

    const berlin = await store.eventsPerDay('alpha', 'Europe/Berlin', { from: Date.parse('2019-04-01'), to: Date.parse('2019-06-01') })
    t.same(berlin, [{ day: '2019-05-01', events: 2, users: 1 }, { day: '2019-05-10', events: 1, users: 1 }], 'days bucketed in Europe/Berlin')
    const utc = await store.eventsPerDay('alpha', 'UTC', { from: Date.parse('2019-04-01'), to: Date.parse('2019-06-01') })
    t.same(utc, [{ day: '2019-04-30', events: 1, users: 1 }, { day: '2019-05-01', events: 1, users: 1 }, { day: '2019-05-10', events: 1, users: 1 }], 'days bucketed in UTC')

    t.equal(await store.lastEnrichedSeq('alpha'), 13)
    t.equal(await store.lastEnrichedSeq('gamma'), 0)

    // sessions: the newest version wins, in one batch or across batches; a retraction counts for nothing
    const session = (version: number, overrides: Partial<SessionRow> = {}): SessionRow => ({
      project: 'alpha', sessionId: 'u1:1', canonicalId: 'u1', startedAt: Date.parse('2019-05-10T10:00:00Z'), lastEventAt: Date.parse('2019-05-10T10:05:00Z'),
      durationMs: 300_000, events: version, pages: 1, entryPage: '/a', exitPage: '/b', channel: 'direct', device: 'desktop', firstMessageId: 'm1',
      status: '$session_start', version, sessionsSeq: version, ...overrides,
    })
    await store.upsertSessions([session(2), session(1)])
    t.match(await store.listSessions('alpha'), [{ version: 2, events: 2 }], 'the higher version of one batch is kept')
    await store.upsertSessions([session(1)])
    t.match(await store.listSessions('alpha'), [{ version: 2, events: 2 }], 'a replayed older version changes nothing')
    await store.upsertSessions([session(3, { status: '$session_end', events: 7 }), session(1, { sessionId: 'u1:2', startedAt: Date.parse('2019-05-11T10:00:00Z') })])
    t.same(await store.sessionTotals('alpha'), { sessions: 2, events: 8, users: 1 })
    await store.upsertSessions([session(2, { sessionId: 'u1:2', status: '$session_retract', startedAt: Date.parse('2019-05-11T10:00:00Z') })])
    t.same(await store.sessionTotals('alpha'), { sessions: 1, events: 7, users: 1 }, 'a retracted session is not counted')

    // identity links re-attribute stored events, once
    await store.insertEvents([row({ messageId: 'anon-1', canonicalId: 'cookie', userId: null, anonymousId: 'cookie' })])
    const link = { project: 'alpha', anonymousId: 'cookie', userId: 'u9', linkedAt: Date.parse('2019-05-10T11:00:00Z') }
    await store.applyLinks([link, link])
    t.equal((await store.getEvent('alpha', 'anon-1'))!.canonicalId, 'u9', 'the anonymous event now belongs to the user')
    t.equal((await store.getEvent('alpha', 'anon-1'))!.anonymousId, 'cookie', 'its original ids are kept')
    t.same((await store.pool.query(`SELECT user_id FROM identities WHERE project = 'alpha'`)).rows, [{ user_id: 'u9' }], 'one link recorded')

    // a session written after its anonymous id was linked is the user's
    await store.upsertSessions([session(1, { sessionId: 'cookie:1', canonicalId: 'cookie' })])
    t.same((await store.listSessions('alpha', 'u9')).map((s) => s.sessionId), ['cookie:1'], 'a session stored after the link is written under the user')

    // profiles: the newest version wins, and its per-day counts replace the older version's
    const profile = (version: number, overrides: Partial<ProfileRow> = {}): ProfileRow => ({
      project: 'alpha', canonicalId: 'u1', firstSeen: Date.parse('2019-05-01T08:00:00Z'), lastSeen: Date.parse('2019-05-10T10:00:00Z'),
      acquisitionMonth: '2019-05', acquisitionChannel: 'email', acquisitionSource: 'newsletter', acquisitionMedium: 'email', acquisitionCampaign: 'may',
      deviceType: 'mobile', browser: 'Safari', os: 'iOS', country: 'DE', city: 'Berlin', events: version * 10, sessions: version,
      engagementLevel: 'Medium', engagementScore: 40, engagementAsOf: Date.parse('2019-05-10T12:00:00Z'), traits: { plan: 'pro' },
      mergedInto: null, version, profilesSeq: 100 + version, days: [{ day: '2019-05-10', name: 'click_event1', count: version }], ...overrides,
    })
    t.equal(await store.upsertProfiles([profile(2), profile(1)]), 1, 'the newer of two versions in one batch is written')
    t.equal(await store.upsertProfiles([profile(1, { events: 999 })]), 0, 'an older version (a replay, a stale owner) changes nothing')
    t.same(await store.getProfile('alpha', 'u1'), profile(2), 'a profile reads back as written, days included')
    await store.upsertProfiles([profile(3, { days: [{ day: '2019-05-11', name: '$page', count: 4 }] })])
    t.same((await store.getProfile('alpha', 'u1'))!.days, [{ day: '2019-05-11', name: '$page', count: 4 }], 'a newer version replaces the per-day counts')
    await store.upsertProfiles([profile(1, { canonicalId: 'cookie', days: [] }), profile(2, { canonicalId: 'cookie', mergedInto: 'u1', engagementLevel: null, days: [] })])
    t.same(await store.profileCounts('alpha'), [{ level: 'Medium', month: '2019-05', users: 1 }], 'a profile merged away counts for nothing')
    t.same(await store.profileCounts('beta'), [], 'profiles are per project')

    // compression (TimescaleDB) and retention, driven by the application
    const now = Date.parse('2019-07-01T00:00:00Z')
    const kept = await store.maintain({ compressAfterMs: 30 * 86_400_000 }, now)
    if (target.name === 'timescaledb') t.ok(kept.compressedChunks >= 1, `chunks older than 30 days compressed (${kept.compressedChunks})`)
    else t.equal(kept.compressedChunks, 0, 'plain PostgreSQL has nothing to compress')
    t.equal(kept.removed, 0, 'no retention by default')
    t.equal((await store.maintain({ compressAfterMs: 30 * 86_400_000 }, now)).compressedChunks, 0, 'compressing again does nothing')
    t.equal(await store.countEvents('alpha'), 4, 'compressed rows still read')
    t.equal(await store.insertEvents([row({ messageId: 'm1', enrichedSeq: 11 })]), 0, 'a replay into a compressed chunk still collides')
    t.equal(await store.insertEvents([row({ messageId: 'late', eventTime: Date.parse('2019-05-10T12:00:00Z') })]), 1, 'a late event lands in a compressed chunk')
    await store.maintain({ compressAfterMs: 30 * 86_400_000, retentionMs: 60 * 86_400_000 }, now)
    t.equal(await store.countEvents('alpha', { to: Date.parse('2019-05-01T00:00:00Z') }), 0, 'events older than the retention are gone')
    t.equal(await store.countEvents('alpha', { from: Date.parse('2019-05-03T00:00:00Z') }), 3, 'newer ones stay')
    await store.ping()
    t.pass('ping answers')
  })
}

t.test('a database that goes away is reported as unavailable, then recovers', async (t) => {
  const target = DATABASE_TARGETS[0]
  const database = await target.start()
  const store = await openStore({ url: database.url, poolSize: 2, logger })
  t.teardown(async () => { await store.close(); await database.close() })
  await store.migrate()
  await database.stop()
  await t.rejects(store.ping(), { code: 'SEG_DB_UNAVAILABLE' })
  await t.rejects(store.insertEvents([row({ messageId: 'x' })]), { code: 'SEG_DB_UNAVAILABLE' })
  await database.restart()
  await store.ping()
  t.equal(await store.insertEvents([row({ messageId: 'x' })]), 1, 'writes work again after the restart')
})
