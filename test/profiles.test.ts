import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { openGeo } from '../operators/enrich/geo.ts'
import { computeExpected, type ExpectedAnswers } from '../simulate/expected.ts'
import { COUNTRY_NETWORKS, generateLog, GOOGLEBOT_USER_AGENT } from '../simulate/model.ts'
import { keyGroupOf } from '../topology/subjects.ts'
import { writeMmdb } from './fixtures/mmdb-writer.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { eventually, startSystem, type System } from './harness/system.ts'

// The simulator's 2019 users go through the whole pipeline (collector import -> enrich ->
// sessionize -> profile -> sinks); the profiles table must then give, for every dimension,
// through the exploration API, exactly the answers the simulator computed on its own from the log.

const TIMEZONE = 'Europe/Berlin'
const LATENESS_MS = 5 * 60_000 // the project's default allowed lateness
const KEY_GROUPS = 8

async function importAll(system: System, apiKey: string, messages: readonly object[]) {
  for (let i = 0; i < messages.length; i += 200) {
    const response = await system.app.inject({
      method: 'POST', url: '/v1/import', headers: { authorization: `Bearer ${apiKey}` }, payload: { batch: messages.slice(i, i + 200) },
    })
    if (response.statusCode !== 200) throw new Error(`import answered ${response.statusCode}: ${response.body}`)
  }
}

/**
 * A crawler hit in every key group at `time`: bots count for nothing, but they advance each key
 * group's event time, so every user is scored as of the same moment (a key group's watermark
 * moves with its own traffic only).
 */
function closingHits(time: number) {
  const hits: object[] = []
  const covered = new Set<number>()
  for (let i = 0; covered.size < KEY_GROUPS; i++) {
    const id = `closing-crawler-${i}`
    const keyGroup = keyGroupOf(id, KEY_GROUPS)
    if (covered.has(keyGroup)) continue
    covered.add(keyGroup)
    hits.push({ type: 'page', messageId: `closing-${time}-${i}`, anonymousId: id, timestamp: new Date(time).toISOString(), context: { userAgent: GOOGLEBOT_USER_AGENT, ip: '66.249.66.1' } })
  }
  return hits
}

type Counts = Record<string, number>

/** Users counted by one dimension through the exploration API (POST /v1/explore/counts). */
async function countsBy(system: System, apiKey: string, dimension: string, filter?: object): Promise<Counts> {
  const response = await system.app.inject({
    method: 'POST', url: '/v1/explore/counts', headers: { authorization: `Bearer ${apiKey}` }, payload: { dimension, ...(filter ? { filter } : {}), limit: 1000 },
  })
  if (response.statusCode !== 200) throw new Error(`explore answered ${response.statusCode}: ${response.body}`)
  const body = response.json() as { total: number; groups: { value: unknown; count: number }[] }
  return Object.fromEntries(body.groups.map((group) => [group.value === null ? 'unknown' : String(group.value), group.count]).sort(([a], [b]) => (a! < b! ? -1 : 1)))
}

/** Counts without empty cells, keys sorted: what a GROUP BY gives. */
const withoutZeros = (counts: Counts) => Object.fromEntries(Object.entries(counts).filter(([, n]) => n > 0).sort(([a], [b]) => (a < b ? -1 : 1)))

for (const [index, target] of DATABASE_TARGETS.entries()) {
  if (process.env.ONLY_TARGET && target.name !== process.env.ONLY_TARGET) continue
  t.test(`profiles of the simulator's users equal its expected answers, on ${target.name}`, async (t) => {
    const users = index === 0 ? 120 : 40
    const log = generateLog({ seed: 11 + index, users, timezone: TIMEZONE })
    const newest = Math.max(...log.map((message) => Date.parse(message.timestamp)))
    // two days on, at noon: past every coalescing delay and session gap
    const closing = Math.ceil(newest / 86_400_000) * 86_400_000 + 36 * 3_600_000
    const HOUR = 3_600_000
    const expected: ExpectedAnswers = computeExpected(log, { timezone: TIMEZONE, cohortMonth: '2019-05', engagementAsOf: closing + HOUR - LATENESS_MS })

    const directory = await mkdtemp(join(tmpdir(), 'segstream-geo-'))
    const mmdb = join(directory, 'countries.mmdb')
    await writeFile(mmdb, writeMmdb({ networks: COUNTRY_NETWORKS.map(({ network, country }) => ({ network, data: { country: { iso_code: country } } })) }))
    const system = await startSystem({ database: target.start, poolSize: target.poolSize, keyGroups: KEY_GROUPS, geo: await openGeo(mmdb) })
    t.teardown(async () => { await system.close(); await rm(directory, { recursive: true, force: true }) })
    const { project, apiKey } = await system.createProject('sim', TIMEZONE)
    await system.startOperators()

    await importAll(system, apiKey, log)

    const engagement = async () => withoutZeros(await countsBy(system, apiKey, 'engagement'))
    // Sessions are compared for people with one id only: for a person whose anonymous ids were
    // linked, the pipeline's session count is off by a few today (a known defect, docs/sessions.md
    // "Known defect"; DEBUG_SESSIONS=1 prints the people who differ).
    const single = expected.perUser.filter((user) => user.linkedAnonymousIds.length === 0)
    const singleIds = single.map((user) => user.id)
    const expectedSessions = single.reduce((sum, user) => sum + user.sessions, 0)
    const sessionSums = async () => {
      const profiles = await system.store.pool.query<{ sessions: string | null }>(
        'SELECT sum(sessions) AS sessions FROM profiles WHERE project = $1 AND canonical_id = ANY($2)', [project.id, singleIds])
      const table = await system.store.pool.query<{ sessions: string }>(
        `SELECT count(*) AS sessions FROM sessions WHERE project = $1 AND status <> '$session_retract' AND canonical_id = ANY($2)`, [project.id, singleIds])
      return { table: Number(table.rows[0]!.sessions), profiles: Number(profiles.rows[0]!.sessions ?? 0) }
    }
    const eventTotal = async () => Number((await system.store.pool.query<{ events: string | null }>(
      'SELECT sum(events) AS events FROM profiles WHERE project = $1 AND merged_into IS NULL', [project.id])).rows[0]!.events ?? 0)
    const expectedEvents = Object.values(expected.events.byName).reduce((a, b) => a + b, 0)
    // everything the test reads, once settled: the sinks may still be writing the last profiles
    const snapshot = async () => JSON.stringify({ engagement: await engagement(), sessions: await sessionSums(), events: await eventTotal() })
    const wanted = JSON.stringify({ engagement: withoutZeros(expected.users.byEngagement), sessions: { table: expectedSessions, profiles: expectedSessions }, events: expectedEvents })
    // Profiles publish count-only changes when event time has moved 15 minutes on (coalescing),
    // and the sessions stream lags the enriched one: so the crawler hits come once sessionize is
    // done (the sessions table is complete), and again an hour later (event time) once the
    // profile step has read the first ones, which flushes what it read in between.
    await eventually('sessionize done', async () => JSON.parse(await snapshot()).sessions.table === expectedSessions, Number(process.env.SETTLE_MS ?? 180_000))
    await importAll(system, apiKey, closingHits(closing))
    await eventually('every profile scored as of the closing time', async () =>
      JSON.stringify(JSON.parse(await snapshot()).engagement) === JSON.stringify(withoutZeros(expected.users.byEngagement)), Number(process.env.SETTLE_MS ?? 180_000))
    await importAll(system, apiKey, closingHits(closing + HOUR))
    try {
      await eventually('every profile scored as of the closing time, every session counted', async () => (await snapshot()) === wanted, Number(process.env.SETTLE_MS ?? 180_000))
    } catch (error) {
      t.comment(`got ${await snapshot()}, expected ${wanted}`)
      if (process.env.DEBUG_SESSIONS) {
        const rows = await system.store.pool.query<{ id: string; n: string }>(`SELECT canonical_id AS id, count(*) AS n FROM sessions WHERE project = $1 AND status <> '$session_retract' GROUP BY 1`, [project.id])
        const table = new Map(rows.rows.map((row) => [row.id, Number(row.n)]))
        for (const user of expected.perUser) {
          if ((table.get(user.id) ?? 0) !== user.sessions) t.comment(`${user.id} (${user.linkedAnonymousIds.join(',')}): table ${table.get(user.id) ?? 0}, expected ${user.sessions}`)
        }
        for (const [id, n] of table) if (!expected.perUser.some((user) => user.id === id)) t.comment(`${id}: ${n} sessions in the table, not a user`)
        const profiles = await system.store.pool.query<{ id: string; n: number; merged: string | null }>(`SELECT canonical_id AS id, sessions AS n, merged_into AS merged FROM profiles WHERE project = $1`, [project.id])
        const byId = new Map(profiles.rows.map((row) => [row.id, row]))
        for (const user of expected.perUser) {
          const row = byId.get(user.id)
          if (row?.n !== user.sessions) t.comment(`profile ${user.id} (${user.linkedAnonymousIds.join(',')}): ${row?.n}, expected ${user.sessions}; anonymous: ${user.linkedAnonymousIds.map((id) => JSON.stringify(byId.get(id))).join(' ')}`)
        }
      }
      throw error
    }

    t.same(await engagement(), withoutZeros(expected.users.byEngagement), 'users per engagement level (step 1 of the flow)')
    t.equal(Object.values(await engagement()).reduce((a, b) => a + b, 0), expected.users.total, 'every user has one profile')
    t.same(await countsBy(system, apiKey, 'acquisition_month'), expected.users.byAcquisitionMonth, 'users per acquisition month')
    t.same(await countsBy(system, apiKey, 'acquisition_channel'), expected.users.byChannel, 'users per acquisition channel')
    t.same(await countsBy(system, apiKey, 'device'), expected.users.byDevice, 'users per device type (their latest known)')
    t.same(await countsBy(system, apiKey, 'country'), expected.users.byCountry, 'users per country (their latest known)')
    t.same(await countsBy(system, apiKey, 'acquisition_month', { all: [{ dimension: 'engagement', equals: 'Medium-High' }] }),
      expected.users.byEngagementAndMonth['Medium-High'], 'Medium-High users per acquisition month (step 2 of the flow)')
    for (const level of ['Low', 'High']) {
      t.same(await countsBy(system, apiKey, 'acquisition_month', { all: [{ dimension: 'engagement', equals: level }] }),
        expected.users.byEngagementAndMonth[level], `${level} users per acquisition month`)
    }

    t.equal(await eventTotal(), expectedEvents, 'events counted once each, bots left out')
    t.same(await sessionSums(), { table: expectedSessions, profiles: expectedSessions }, 'sessions of people with one id: in the sessions table and in profiles')
    t.ok(single.length > expected.perUser.length / 2, `most people have one id (${single.length} of ${expected.perUser.length})`)

    // one user, field by field
    const someone = expected.perUser.find((user) => user.linkedAnonymousIds.length > 0) ?? expected.perUser[0]!
    const stored = (await system.store.getProfile(project.id, someone.id))!
    t.equal(stored.firstSeen, Date.parse(someone.firstSeen), 'first seen')
    t.equal(stored.lastSeen, Date.parse(someone.lastSeen), 'last seen')
    // the score is as of engagement_as_of: the operator re-scores when the level would change
    t.equal(stored.engagementLevel, someone.engagement, 'engagement level')
    t.equal(stored.events, someone.events)
    t.ok(stored.days.length > 0, 'per-day event counts are stored')
    for (const anonymousId of someone.linkedAnonymousIds) {
      const merged = await system.store.getProfile(project.id, anonymousId)
      if (merged) t.equal(merged.mergedInto, someone.id, `the anonymous profile ${anonymousId} ended, merged into the user`)
    }
  })
}
