import t from 'tap'
import pg from 'pg'
import type { InjectOptions } from 'fastify'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { decode } from '../schemas/codec.ts'
import { funnelResult, segmentToFilter } from '../store/funnels.ts'
import { subjectFor } from '../topology/subjects.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { startSystem, type System } from './harness/system.ts'

// The funnel API on real servers (nats-server and each database target), over profiles and
// funnel_progress rows written here with SQL, as the profile and funnel sinks would: every
// number is checked against values worked out by hand from the seed (percentiles: the small
// interpolating oracle below, PostgreSQL's percentile_cont definition).

type Request = InjectOptions & { url: string }

const S = 1_000
const at = (iso: string, ...offsetsS: number[]) => [iso, ...offsetsS.map((s) => new Date(Date.parse(iso) + s * S).toISOString())]

/** percentile_cont: linear interpolation between the closest ranks. */
function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  const position = p * (sorted.length - 1)
  const low = Math.floor(position)
  const high = Math.ceil(position)
  return sorted[low]! + (sorted[high]! - sorted[low]!) * (position - low)
}

interface Person { id: string; month: string | null; channel?: string; country?: string | null; level?: string | null; traits?: Record<string, unknown>; mergedInto?: string }
const ALPHA: Person[] = [
  { id: 'm01', month: '2019-05', country: 'DE', level: 'High', traits: { plan: 'pro' } },
  { id: 'm02', month: '2019-05', country: null, level: 'Medium-High', traits: { plan: 'free' } },
  { id: 'm03', month: '2019-05', country: 'FR', level: 'Medium' },
  { id: 'm04', month: '2019-05', country: 'FR', level: 'Low' },
  { id: 'm05', month: '2019-05' }, { id: 'm06', month: '2019-05' }, { id: 'm07', month: '2019-05' }, { id: 'm08', month: '2019-05' },
  { id: 'm09', month: '2019-05' }, { id: 'm10', month: '2019-05' },
  // merged into m01: counts for nothing, whatever its progress row says
  { id: 'm11', month: '2019-05', mergedInto: 'm01' },
  // acquired in April: outside the May segment
  { id: 'a01', month: '2019-04', country: 'DE' }, { id: 'a02', month: '2019-04' },
]
const BETA: Person[] = [{ id: 'm01', month: '2019-05' }, { id: 'b02', month: '2019-05' }]

interface Progress { id: string; level: number; status: string; times: string[]; breakdown?: string | null; mergedInto?: string }
// funnel "signup" ($session_start → click_event1 → custom_event2), first steps around May 2019;
// New York is UTC-4 then, so m01, m04 and m07 fall on the day before in local time
const SIGNUP: Progress[] = [
  { id: 'm01', level: 3, status: 'converted', times: at('2019-05-06T03:00:00Z', 60, 600), breakdown: 'google' },
  { id: 'm02', level: 3, status: 'converted', times: at('2019-05-06T12:00:00Z', 120, 1200), breakdown: 'google' },
  { id: 'm03', level: 3, status: 'converted', times: at('2019-05-07T05:00:00Z', 30, 300), breakdown: 'direct' },
  { id: 'm04', level: 2, status: 'in_progress', times: at('2019-05-07T03:30:00Z', 10), breakdown: 'google' },
  { id: 'm05', level: 2, status: 'dropped', times: at('2019-05-08T15:00:00Z', 3600), breakdown: 'direct' },
  { id: 'm06', level: 2, status: 'dropped', times: at('2019-05-13T10:00:00Z', 7200), breakdown: null },
  { id: 'm07', level: 1, status: 'in_progress', times: at('2019-05-13T02:00:00Z'), breakdown: 'direct' },
  { id: 'm08', level: 1, status: 'dropped', times: at('2019-05-09T10:00:00Z'), breakdown: 'google' },
  // not in the funnel (any more): none, and an anonymous id merged away
  { id: 'm09', level: 0, status: 'none', times: [] },
  { id: 'm10', level: 0, status: 'none', times: [], mergedInto: 'm02' },
  // a merged profile, a user outside the segment, a user without a profile: none counts
  { id: 'm11', level: 3, status: 'converted', times: at('2019-05-06T12:00:00Z', 1, 2), breakdown: 'google' },
  { id: 'a01', level: 3, status: 'converted', times: at('2019-05-06T12:00:00Z', 1, 2), breakdown: 'google' },
  { id: 'x01', level: 3, status: 'converted', times: at('2019-05-06T12:00:00Z', 1, 2), breakdown: 'google' },
]

const SIGNUP_DEFINITION = {
  id: 'signup', name: 'Signup',
  steps: [{ event: '$session_start' }, { event: 'click_event1', label: 'Clicked' }, { event: 'custom_event2' }],
  segment: { profile: [{ field: 'acquisition_month', value: '2019-05' }] },
  breakdown: { property: '$channel' },
}

async function seedProfiles(pool: pg.Pool, project: string, people: Person[]) {
  for (const p of people) {
    await pool.query(
      `INSERT INTO profiles (project, canonical_id, first_seen, last_seen, acquisition_month, acquisition_channel, country, engagement_level, traits, merged_into, events, sessions, version, profiles_seq)
       VALUES ($1, $2, '2019-05-01T00:00:00Z', '2019-05-20T00:00:00Z', $3, $4, $5, $6, $7::jsonb, $8, 10, 2, 1, 1)`,
      [project, p.id, p.month, p.channel ?? null, p.country ?? null, p.level ?? null, JSON.stringify(p.traits ?? {}), p.mergedInto ?? null])
  }
}

async function seedProgress(pool: pg.Pool, project: string, funnelId: string, funnelVersion: number, steps: number, rows: Progress[]) {
  for (const row of rows) {
    await pool.query(
      `INSERT INTO funnel_progress (project, funnel_id, funnel_version, canonical_id, version, level, steps, status, step_times, breakdown, as_of, merged_into)
       VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8::timestamptz[], $9, '2019-05-20T00:00:00Z', $10)`,
      [project, funnelId, funnelVersion, row.id, row.level, steps, row.status, row.times, row.breakdown ?? null, row.mergedInto ?? null])
  }
}

for (const target of DATABASE_TARGETS) {
  t.test(`funnel API on ${target.name}`, async (t) => {
    const system: System = await startSystem({ database: target.start, poolSize: target.poolSize })
    t.teardown(() => system.close())
    const alpha = await system.createProject('alpha', 'America/New_York')
    const beta = await system.createProject('beta', 'UTC')
    const pool = system.store.pool
    await seedProfiles(pool, 'alpha', ALPHA)
    await seedProfiles(pool, 'beta', BETA)

    const bearer = { authorization: `Bearer ${alpha.apiKey}` }
    const betaAuth = { authorization: `Basic ${Buffer.from(`${beta.apiKey}:`).toString('base64')}` }
    const inject = system.app.inject.bind(system.app)
    const ok = async (request: Request, status = 200) => {
      const response = await inject({ headers: bearer, ...request })
      if (response.statusCode !== status) throw new Error(`${request.method ?? 'GET'} ${request.url}: ${response.statusCode} ${response.body}`)
      return response.json()
    }

    t.test('create, read, change, delete; published to the stages the funnel step reads', async (t) => {
      const created = await ok({ method: 'POST', url: '/v1/funnels', payload: SIGNUP_DEFINITION }, 201)
      t.match(created, { id: 'signup', name: 'Signup', version: 1, definition: SIGNUP_DEFINITION, backfill: { state: 'pending', done: 0, total: 0 } })
      t.same(created.definition, SIGNUP_DEFINITION, 'the definition as given')

      const again = await inject({ method: 'POST', url: '/v1/funnels', headers: bearer, payload: SIGNUP_DEFINITION })
      t.equal(again.statusCode, 409, 'an existing id is a conflict')
      t.match(again.json().message, /a funnel "signup" exists already/)

      // the backfill worker's progress shows in GET
      await pool.query(`UPDATE funnels SET backfill = '{"state":"running","done":5,"total":20}' WHERE project = 'alpha' AND id = 'signup'`)
      t.same((await ok({ url: '/v1/funnels/signup' })).backfill, { state: 'running', done: 5, total: 20 })

      const changed = await ok({ method: 'PUT', url: '/v1/funnels/signup', payload: { ...SIGNUP_DEFINITION, id: undefined, name: 'Signup (May cohort)', windowMs: 7 * 86_400_000 } })
      t.match(changed, { id: 'signup', name: 'Signup (May cohort)', version: 2, newVersion: true, backfill: { state: 'pending', done: 0, total: 0 } }, 'a change of what is tracked is a new version with a pending backfill')
      t.equal(changed.definition.id, 'signup', 'the path gives the id')
      t.equal(changed.definition.windowMs, 7 * 86_400_000)

      // the segment alone: in place, same version, nothing published, the backfill left as it is
      await pool.query(`UPDATE funnels SET backfill = '{"state":"done","done":20,"total":20}' WHERE project = 'alpha' AND id = 'signup'`)
      const MAY = { profile: [{ field: 'acquisition_month', operator: 'in', value: ['2019-05'] }] }
      const restricted = await ok({ method: 'PUT', url: '/v1/funnels/signup', payload: { ...changed.definition, segment: MAY } })
      t.match(restricted, { version: 2, newVersion: false, backfill: { state: 'done', done: 20, total: 20 }, definition: { segment: MAY, windowMs: 7 * 86_400_000 } }, 'a new segment changes no version')

      const temporary = await ok({ method: 'POST', url: '/v1/funnels', payload: { id: 'temp', name: 'Temp', steps: [{ event: 'a' }, { event: 'b' }] } }, 201)
      t.equal(temporary.version, 1)
      t.same((await ok({ url: '/v1/funnels' })).funnels.map((f: { id: string; version: number }) => [f.id, f.version]), [['signup', 2], ['temp', 1]], 'listed oldest first')
      t.same(await ok({ method: 'DELETE', url: '/v1/funnels/temp' }), { deleted: true, id: 'temp', version: 2 })
      t.equal((await inject({ url: '/v1/funnels/temp', headers: bearer })).statusCode, 404, 'a deleted funnel is gone')
      t.equal((await inject({ method: 'DELETE', url: '/v1/funnels/temp', headers: bearer })).statusCode, 404)
      t.equal((await inject({ method: 'PUT', url: '/v1/funnels/temp', headers: bearer, payload: { name: 'x', steps: [{ event: 'a' }, { event: 'b' }] } })).statusCode, 404)
      const recreated = await ok({ method: 'POST', url: '/v1/funnels', payload: { id: 'temp', name: 'Temp again', steps: [{ event: 'a' }, { event: 'c' }] } }, 201)
      t.equal(recreated.version, 3, 'the id of a deleted funnel comes back at the version after its deletion, never lower')
      await ok({ method: 'DELETE', url: '/v1/funnels/temp' })

      // read back from JetStream: every key group of enriched and sessions, each version once
      const js = jetstream(system.nc)
      const jsm = await jetstreamManager(system.nc)
      const controls: { stream: string; subject: string; data: { stepId: string; name: string; version: number; definition: unknown } }[] = []
      for (const [stream, stage] of [['SEG_ENRICHED', 'enriched'], ['SEG_SESSIONS', 'sessions']] as const) {
        const consumer = await js.consumers.get(stream, { filter_subjects: [subjectFor('alpha', stage, '*')] })
        const info = await jsm.streams.info(stream)
        const messages = await consumer.fetch({ max_messages: info.state.messages, expires: 2_000 })
        for await (const message of messages) {
          const envelope = decode(message.data) as { type: string; data: { stepId: string; name: string; version: number; definition: unknown } }
          if (envelope.type === 'control' && envelope.data.stepId === 'funnel') controls.push({ stream, subject: message.subject, data: envelope.data })
          if (message.info.pending === 0) break
        }
      }
      const of = (stream: string, name: string, version: number) => controls.filter((c) => c.stream === stream && c.data.name === name && c.data.version === version)
      for (const stream of ['SEG_ENRICHED', 'SEG_SESSIONS']) {
        const first = of(stream, 'signup', 1)
        t.equal(first.length, system.keyGroups, `${stream}: the creation went to every key group`)
        t.same(new Set(first.map((c) => c.subject)).size, system.keyGroups, 'one per key group')
        t.same(first[0]!.data.definition, SIGNUP_DEFINITION, 'carrying the definition')
        t.equal(of(stream, 'signup', 2).length, system.keyGroups, 'the change, as version 2')
        t.match(of(stream, 'signup', 2)[0]!.data.definition, { id: 'signup', name: 'Signup (May cohort)', windowMs: 7 * 86_400_000 })
        t.equal(of(stream, 'signup', 3).length, 0, 'the segment change published nothing')
        t.same(of(stream, 'temp', 2).map((c) => c.data.definition), new Array(system.keyGroups).fill(null), 'the deletion: definition null')
        t.equal(of(stream, 'temp', 3).length, system.keyGroups)
        t.same(of(stream, 'temp', 4).map((c) => c.data.definition), new Array(system.keyGroups).fill(null))
      }
      t.equal(controls.length, 2 * system.keyGroups * 6, 'nothing else: signup 1, 2; temp 1, 2 (deleted), 3, 4 (deleted)')
    })

    // progress of the old version must not count; of the current one, exactly the rows above
    await seedProgress(pool, 'alpha', 'signup', 1, 3, SIGNUP.map((row) => ({ ...row, level: 3, status: 'converted', times: at('2019-05-06T12:00:00Z', 1, 2) })))
    await seedProgress(pool, 'alpha', 'signup', 2, 3, SIGNUP)

    t.test('result: every step\'s numbers, by hand', async (t) => {
      const result = await ok({ url: '/v1/funnels/signup/result' })
      const gaps12 = [60, 120, 30, 10, 3600, 7200].map((s) => s * S)
      const gaps23 = [540, 1080, 270].map((s) => s * S)
      t.equal(percentile(gaps12, 0.5), 90_000)
      t.equal(percentile(gaps12, 0.9), 5_400_000)
      t.equal(percentile(gaps23, 0.9), 972_000)
      t.same(result, {
        funnel: { id: 'signup', name: 'Signup (May cohort)', version: 2 }, from: null, to: null,
        entered: 8, converted: 3, conversion: 3 / 8,
        steps: [
          { step: 1, event: '$session_start', reached: 8, conversionFromPrevious: 1, conversionFromFirst: 1, dropOff: 2, inProgress: 1, dropped: 1, timeToConvert: null },
          { step: 2, event: 'click_event1', label: 'Clicked', reached: 6, conversionFromPrevious: 6 / 8, conversionFromFirst: 6 / 8, dropOff: 3, inProgress: 1, dropped: 2,
            timeToConvert: { users: 6, medianMs: 90_000, p90Ms: 5_400_000 } },
          { step: 3, event: 'custom_event2', reached: 3, conversionFromPrevious: 3 / 6, conversionFromFirst: 3 / 8, dropOff: 0, inProgress: 0, dropped: 0,
            timeToConvert: { users: 3, medianMs: 540_000, p90Ms: 972_000 } },
        ],
      })
    })

    t.test('result by breakdown value', async (t) => {
      const result = await ok({ url: '/v1/funnels/signup/result?breakdown=true' })
      t.equal(result.entered, 8, 'the totals as without breakdown')
      t.equal(result.breakdown.property, '$channel')
      const summary = result.breakdown.values.map((v: { value: string | null; entered: number; converted: number; steps: { reached: number; inProgress: number; dropped: number }[] }) =>
        [v.value, v.entered, v.converted, v.steps.map((s) => s.reached), v.steps.map((s) => [s.inProgress, s.dropped])])
      t.same(summary, [
        ['google', 4, 2, [4, 3, 2], [[0, 1], [1, 0], [0, 0]]],
        ['direct', 3, 1, [3, 2, 1], [[1, 0], [0, 1], [0, 0]]],
        [null, 1, 0, [1, 1, 0], [[0, 0], [0, 1], [0, 0]]],
      ], 'most users first, users without a value last')
      const google = result.breakdown.values[0]
      t.same(google.steps[1].timeToConvert, { users: 3, medianMs: 60_000, p90Ms: percentile([60, 120, 10].map((s) => s * S), 0.9) })
      t.same(google.steps[2].timeToConvert, { users: 2, medianMs: 810_000, p90Ms: 1_026_000 })
      t.equal(google.conversion, 0.5)
      t.same(result.breakdown.values[2].steps[2].timeToConvert, null, 'nobody reached it')
      t.equal(result.breakdown.values[2].steps[2].conversionFromPrevious, 0)
    })

    t.test('result between from and to (of the first step)', async (t) => {
      const result = await ok({ url: '/v1/funnels/signup/result?from=2019-05-07T00:00:00Z&to=2019-05-09T00:00:00Z' })
      t.same([result.from, result.to], ['2019-05-07T00:00:00.000Z', '2019-05-09T00:00:00.000Z'])
      t.same(result.steps.map((s: { reached: number }) => s.reached), [3, 3, 1], 'm03 (converted), m04, m05 (level 2)')
      const edge = await ok({ url: '/v1/funnels/signup/result?from=2019-05-06T03:00:00Z&to=2019-05-06T12:00:00Z' })
      t.equal(edge.entered, 1, 'from inclusive (m01), to exclusive (m02)')
      const empty = await ok({ url: '/v1/funnels/signup/result?from=2020-01-01' })
      t.same([empty.entered, empty.conversion, empty.steps[1].conversionFromPrevious, empty.steps[0].conversionFromPrevious], [0, null, null, null], 'nobody: no ratios')
    })

    t.test('trends by local day and week (America/New_York)', async (t) => {
      const days = await ok({ url: '/v1/funnels/signup/trends?interval=day' })
      t.equal(days.timezone, 'America/New_York')
      t.same(days.buckets.map((b: { start: string; entered: number; converted: number; reached: number[] }) => [b.start, b.entered, b.converted, b.reached]), [
        ['2019-05-05', 1, 1, [1, 1, 1]], // m01 at 03:00Z is 23:00 on the 5th
        ['2019-05-06', 2, 1, [2, 2, 1]], // m02, and m04 at 03:30Z on the 7th
        ['2019-05-07', 1, 1, [1, 1, 1]],
        ['2019-05-08', 1, 0, [1, 1, 0]],
        ['2019-05-09', 1, 0, [1, 0, 0]],
        ['2019-05-10', 0, 0, [0, 0, 0]],
        ['2019-05-11', 0, 0, [0, 0, 0]],
        ['2019-05-12', 1, 0, [1, 0, 0]], // m07 at 02:00Z on the 13th
        ['2019-05-13', 1, 0, [1, 1, 0]],
      ])
      t.equal(days.buckets[1].conversion, 0.5)
      t.equal(days.buckets[5].conversion, null)
      const weeks = await ok({ url: '/v1/funnels/signup/trends?interval=week' })
      t.same(weeks.buckets.map((b: { start: string; reached: number[] }) => [b.start, b.reached]), [
        ['2019-04-29', [1, 1, 1]], // Sunday the 5th belongs to the week of Monday April 29
        ['2019-05-06', [6, 4, 2]],
        ['2019-05-13', [1, 1, 0]],
      ])
      const range = await ok({ url: `/v1/funnels/signup/trends?from=${encodeURIComponent('2019-05-10T00:00:00-04:00')}&to=2019-05-12T04:00:00Z` })
      t.same(range.buckets.map((b: { start: string; entered: number }) => [b.start, b.entered]), [['2019-05-10', 0], ['2019-05-11', 0]], 'from and to bound the buckets, empty ones included')
      t.equal((await ok({ url: '/v1/funnels/signup/trends' })).interval, 'day', 'day by default')
    })

    t.test('audiences: the users stuck at a level, paged, with their profile', async (t) => {
      const collect = async (query: string, limit: number) => {
        const seen: { canonicalId: string; status: string; stepTimes: string[] }[] = []
        let cursor: string | undefined
        let pages = 0
        do {
          const page = await ok({ url: `/v1/funnels/signup/audiences?${query}&limit=${limit}${cursor ? `&cursor=${cursor}` : ''}` })
          t.ok(page.users.length <= limit)
          seen.push(...page.users)
          cursor = page.nextCursor ?? undefined
          pages++
        } while (cursor && pages < 20)
        return { ids: seen.map((u) => u.canonicalId), seen, pages }
      }
      const level2 = await collect('level=2', 1)
      t.same(level2.ids, ['m04', 'm05', 'm06'])
      t.equal(level2.pages, 3)
      t.same((await collect('level=2&status=dropped', 10)).ids, ['m05', 'm06'])
      t.same((await collect('level=2&status=in_progress', 10)).ids, ['m04'])
      t.same((await collect('level=1&status=all', 10)).ids, ['m07', 'm08'])
      t.same((await collect('level=3', 2)).ids, ['m01', 'm02', 'm03'], 'the last level: converted users')
      t.same((await collect('level=2&from=2019-05-08T00:00:00Z', 10)).ids, ['m05', 'm06'], 'from / to as in the result')

      const page = await ok({ url: '/v1/funnels/signup/audiences?level=2&status=in_progress' })
      t.same(page, {
        funnel: { id: 'signup', name: 'Signup (May cohort)', version: 2 }, level: 2, status: 'in_progress', nextCursor: null,
        users: [{
          canonicalId: 'm04', firstSeen: '2019-05-01T00:00:00.000Z', lastSeen: '2019-05-20T00:00:00.000Z', acquisitionMonth: '2019-05', acquisitionChannel: null,
          acquisitionSource: null, acquisitionMedium: null, acquisitionCampaign: null, device: null, browser: null, os: null, country: 'FR', city: null,
          events: 10, sessions: 2, engagement: 'Low', engagementScore: null, engagementAsOf: null, traits: {},
          status: 'in_progress', stepTimes: ['2019-05-07T03:30:00.000Z', '2019-05-07T03:30:10.000Z'],
        }],
      })
    })

    t.test('audiences as CSV: by Accept header or ?format=csv, every user', async (t) => {
      const byHeader = await inject({ url: '/v1/funnels/signup/audiences?level=2&status=dropped&limit=1', headers: { ...bearer, accept: 'text/csv' } })
      t.equal(byHeader.statusCode, 200)
      t.match(byHeader.headers['content-type'], /^text\/csv/)
      const lines = byHeader.body.trimEnd().split('\r\n')
      t.equal(lines[0], 'canonicalId,firstSeen,lastSeen,acquisitionMonth,acquisitionChannel,acquisitionSource,acquisitionMedium,acquisitionCampaign,device,browser,os,country,city,events,sessions,engagement,engagementScore,engagementAsOf,traits,status,step1Time,step2Time')
      t.same(lines.slice(1), [
        'm05,2019-05-01T00:00:00.000Z,2019-05-20T00:00:00.000Z,2019-05,,,,,,,,,,10,2,,,,{},dropped,2019-05-08T15:00:00.000Z,2019-05-08T16:00:00.000Z',
        'm06,2019-05-01T00:00:00.000Z,2019-05-20T00:00:00.000Z,2019-05,,,,,,,,,,10,2,,,,{},dropped,2019-05-13T10:00:00.000Z,2019-05-13T12:00:00.000Z',
      ], 'limit does not apply: every user of the audience')
      const byQuery = await inject({ url: '/v1/funnels/signup/audiences?level=2&status=dropped&format=csv', headers: bearer })
      t.equal(byQuery.body, byHeader.body)
      const bad = await inject({ url: '/v1/funnels/signup/audiences?level=4&format=csv', headers: bearer })
      t.equal(bad.statusCode, 400, 'a mistake is still a 400 before any CSV is sent')
    })

    t.test('segments: a saved segment, profile operators, a trait nobody has yet', async (t) => {
      const saved = await ok({ method: 'POST', url: '/v1/segments', payload: { name: 'Germans', filter: { all: [{ dimension: 'country', equals: 'DE' }] } } }, 201)
      await ok({ method: 'POST', url: '/v1/funnels', payload: { id: 'de', name: 'DE', steps: [{ event: '$session_start' }, { event: 'click_event1' }], segment: { segmentId: saved.id } } }, 201)
      await seedProgress(pool, 'alpha', 'de', 1, 2, [
        { id: 'm01', level: 2, status: 'converted', times: at('2019-05-06T03:00:00Z', 60) },
        { id: 'm03', level: 2, status: 'converted', times: at('2019-05-06T03:00:00Z', 60) },
        { id: 'a01', level: 1, status: 'dropped', times: at('2019-05-06T03:00:00Z') },
      ])
      const de = await ok({ url: '/v1/funnels/de/result' })
      t.same([de.entered, de.converted], [2, 1], 'the saved segment\'s users: m01 and a01')

      // engagement above Medium, country not FR (no country included), plan set: m01 and m02
      const segment = { profile: [{ field: 'engagement', operator: 'gt', value: 'Medium' }, { field: 'country', operator: 'neq', value: 'FR' }, { field: 'trait.plan', operator: 'is_set' }] }
      await ok({ method: 'POST', url: '/v1/funnels', payload: { id: 'ops', name: 'Ops', steps: [{ event: 'x' }, { event: 'y' }], segment } }, 201)
      await seedProgress(pool, 'alpha', 'ops', 1, 2, ALPHA.map((p) => ({ id: p.id, level: 1, status: 'in_progress', times: at('2019-05-06T03:00:00Z') })))
      t.same((await ok({ url: '/v1/funnels/ops/audiences?level=1' })).users.map((u: { canonicalId: string }) => u.canonicalId), ['m01', 'm02'])
      t.same(segmentToFilter(segment.profile as never), {
        filter: { all: [
          { dimension: 'engagement', range: { from: 'Medium' } }, { dimension: 'engagement', equals: 'Medium', not: true },
          { dimension: 'country', equals: 'FR', not: true }, { dimension: 'trait.plan', equals: null, not: true },
        ] },
        places: [0, 0, 1, 2],
      }, 'gt is a range and not the value')

      await ok({ method: 'POST', url: '/v1/funnels', payload: { id: 'vip', name: 'VIP', steps: [{ event: 'x' }, { event: 'y' }], segment: { profile: [{ field: 'trait.vip', value: true }] } } }, 201)
      await seedProgress(pool, 'alpha', 'vip', 1, 2, [{ id: 'm01', level: 1, status: 'in_progress', times: at('2019-05-06T03:00:00Z') }])
      t.equal((await ok({ url: '/v1/funnels/vip/result' })).entered, 0, 'a trait no profile has yet: defined, matches nobody')

      await ok({ method: 'DELETE', url: `/v1/segments/${saved.id}` })
      const gone = await inject({ url: '/v1/funnels/de/result', headers: bearer })
      t.equal(gone.statusCode, 400)
      t.match(gone.json().message, new RegExp(`segment/segmentId: no saved segment "${saved.id}"`))
    })

    t.test('a funnel without a segment counts every live profile; the store function directly', async (t) => {
      await ok({ method: 'POST', url: '/v1/funnels', payload: { id: 'everyone', name: 'Everyone', steps: [{ event: '$session_start' }, { event: 'click_event1' }] } }, 201)
      await seedProgress(pool, 'alpha', 'everyone', 1, 2, [
        { id: 'a01', level: 2, status: 'converted', times: at('2019-05-06T03:00:00Z', 60) },
        { id: 'm01', level: 1, status: 'dropped', times: at('2019-05-06T03:00:00Z') },
        { id: 'm11', level: 2, status: 'converted', times: at('2019-05-06T03:00:00Z', 60) },
        { id: 'x01', level: 2, status: 'converted', times: at('2019-05-06T03:00:00Z', 60) },
      ])
      const direct = await funnelResult(pool, { project: 'alpha', timezone: 'America/New_York' }, 'everyone')
      t.same([direct.entered, direct.converted, direct.steps[1]!.timeToConvert], [2, 1, { users: 1, medianMs: 60_000, p90Ms: 60_000 }], 'a01 and m01; not the merged m11, nor x01 without a profile')
      const noBreakdown = await inject({ url: '/v1/funnels/everyone/result?breakdown=true', headers: bearer })
      t.equal(noBreakdown.statusCode, 400)
      t.match(noBreakdown.json().message, /has no breakdown property/)
    })

    t.test('one project\'s key reads nothing of another\'s', async (t) => {
      t.equal((await inject({ url: '/v1/funnels/signup', headers: betaAuth })).statusCode, 404, 'beta cannot read alpha\'s funnel')
      t.equal((await inject({ url: '/v1/funnels/signup/result', headers: betaAuth })).statusCode, 404)
      t.equal((await inject({ url: '/v1/funnels/signup/trends', headers: betaAuth })).statusCode, 404)
      t.equal((await inject({ url: '/v1/funnels/signup/audiences?level=2', headers: betaAuth })).statusCode, 404)
      t.equal((await inject({ method: 'PUT', url: '/v1/funnels/signup', headers: betaAuth, payload: SIGNUP_DEFINITION })).statusCode, 404, 'nor change it')
      t.equal((await inject({ method: 'DELETE', url: '/v1/funnels/signup', headers: betaAuth })).statusCode, 404, 'nor delete it')
      t.same((await inject({ url: '/v1/funnels', headers: betaAuth })).json().funnels, [])

      // beta's own funnel of the same id, with progress of the same user ids
      const own = await inject({ method: 'POST', url: '/v1/funnels', headers: betaAuth, payload: SIGNUP_DEFINITION })
      t.equal(own.statusCode, 201, 'the same id in another project')
      t.equal(own.json().version, 1)
      await seedProgress(pool, 'beta', 'signup', 1, 3, [{ id: 'm01', level: 1, status: 'dropped', times: at('2019-05-06T03:00:00Z') }, { id: 'b02', level: 1, status: 'dropped', times: at('2019-05-06T03:00:00Z') }])
      const betaResult = (await inject({ url: '/v1/funnels/signup/result', headers: betaAuth })).json()
      t.same([betaResult.funnel.version, betaResult.entered, betaResult.converted], [1, 2, 0], 'beta sees its own two users')
      t.same((await inject({ url: '/v1/funnels/signup/audiences?level=1', headers: betaAuth })).json().users.map((u: { canonicalId: string }) => u.canonicalId), ['b02', 'm01'])
      const alphaResult = await ok({ url: '/v1/funnels/signup/result' })
      t.same([alphaResult.funnel.version, alphaResult.entered, alphaResult.converted], [2, 8, 3], 'alpha\'s unchanged')
    })

    t.test('authentication on every route', async (t) => {
      const routes = [
        { method: 'GET' as const, url: '/v1/funnels' },
        { method: 'POST' as const, url: '/v1/funnels', payload: SIGNUP_DEFINITION },
        { method: 'GET' as const, url: '/v1/funnels/signup' },
        { method: 'PUT' as const, url: '/v1/funnels/signup', payload: SIGNUP_DEFINITION },
        { method: 'DELETE' as const, url: '/v1/funnels/signup' },
        { method: 'GET' as const, url: '/v1/funnels/signup/result' },
        { method: 'GET' as const, url: '/v1/funnels/signup/trends' },
        { method: 'GET' as const, url: '/v1/funnels/signup/audiences?level=2' },
        { method: 'GET' as const, url: '/v1/funnels/signup/audiences?level=2&format=csv' },
      ]
      for (const route of routes) {
        const none = await inject(route)
        t.equal(none.statusCode, 401, `${route.method} ${route.url} without a key`)
        t.match(none.json().message, /missing API key/)
        t.equal((await inject({ ...route, headers: { authorization: 'Bearer sk_nope' } })).statusCode, 401)
        t.equal((await inject({ ...route, headers: { authorization: `Bearer ${alpha.project.writeKeys[0]}` } })).statusCode, 401, 'a write key reads nothing')
      }
      t.equal((await ok({ url: '/v1/funnels/signup' })).version, 2, 'nothing was changed or deleted')
    })

    t.test('bad input is a 400 (or 404) naming the problem', async (t) => {
      const cases: [Request, number, RegExp][] = [
        [{ method: 'POST', url: '/v1/funnels', payload: { id: 'x', name: 'X', steps: [{ event: 'a' }] } }, 400, /steps: must contain at least 2 items|steps.*2/],
        [{ method: 'POST', url: '/v1/funnels', payload: { id: 'x', name: 'X', steps: [{ event: 'a' }, { event: 'b' }], exclusions: [{ event: 'c', fromStep: 2, toStep: 3 }] } }, 400, /exclusions\/0: toStep 3 is beyond the last step \(2\)/],
        [{ method: 'POST', url: '/v1/funnels', payload: { id: 'x', name: 'X', steps: [{ event: 'a', filterz: [] }, { event: 'b' }] } }, 400, /steps\/0/],
        [{ method: 'POST', url: '/v1/funnels', payload: { id: 'x', name: 'X', steps: [{ event: 'a', filters: [{ property: 'n', operator: 'gt', value: true }] }, { event: 'b' }] } }, 400, /steps\/0\/filters\/0: gt needs a number or a string/],
        [{ method: 'POST', url: '/v1/funnels', payload: { id: 'x', name: 'X', steps: [{ event: 'a' }, { event: 'b' }], segment: { profile: [{ field: 'acquisition_month', value: '2019-13' }] } } }, 400, /segment\/profile\/0\.equals: acquisition_month takes a month as YYYY-MM/],
        [{ method: 'POST', url: '/v1/funnels', payload: { id: 'x', name: 'X', steps: [{ event: 'a' }, { event: 'b' }], segment: { profile: [{ field: 'country', value: 'DE' }, { field: 'colour', value: 'red' }] } } }, 400, /segment\/profile\/1\.dimension: unknown dimension "colour"/],
        [{ method: 'POST', url: '/v1/funnels', payload: { id: 'x', name: 'X', steps: [{ event: 'a' }, { event: 'b' }], segment: { profile: [{ field: 'country', operator: 'contains', value: 'D' }] } } }, 400, /segment\/profile\/0: contains is not available/],
        [{ method: 'POST', url: '/v1/funnels', payload: { id: 'x', name: 'X', steps: [{ event: 'a' }, { event: 'b' }], segment: { segmentId: 'seg_nope' } } }, 400, /no saved segment "seg_nope"/],
        [{ method: 'PUT', url: '/v1/funnels/signup', payload: { ...SIGNUP_DEFINITION, id: 'other' } }, 400, /the body's id "other" is not the path's "signup"/],
        [{ url: '/v1/funnels/nope' }, 404, /no funnel "nope" in this project/],
        [{ url: '/v1/funnels/nope/result' }, 404, /no funnel "nope"/],
        [{ url: '/v1/funnels/nope/audiences?level=1' }, 404, /no funnel "nope"/],
        [{ url: '/v1/funnels/signup/audiences?level=4' }, 400, /level: the funnel "signup" has 3 steps; level is 1 to 3/],
        [{ url: '/v1/funnels/signup/audiences?level=0' }, 400, /level is 1 to 3/],
        [{ url: '/v1/funnels/signup/audiences' }, 400, /required property 'level'/],
        [{ url: '/v1/funnels/signup/audiences?level=2&status=gone' }, 400, /status: "gone" is not one of dropped, in_progress, all/],
        [{ url: '/v1/funnels/signup/audiences?level=2&cursor=nonsense' }, 400, /cursor: malformed/],
        [{ url: '/v1/funnels/signup/trends?interval=month' }, 400, /interval: "month" is not one of day, week/],
        [{ url: '/v1/funnels/signup/trends?from=2000-01-01&to=2019-01-01' }, 400, /more than 1000 days; narrow the range or ask by week/],
        [{ url: '/v1/funnels/signup/result?from=2019-06-01T00:00:00Z&to=2019-05-01T00:00:00Z' }, 400, /from \(2019-06-01T00:00:00Z\) must be before to/],
        [{ url: '/v1/funnels/signup/trends?from=2019-06-01&to=2019-05-01' }, 400, /must be before to/],
        [{ url: '/v1/funnels/signup/result?from=yesterday' }, 400, /from: an ISO 8601 time/],
      ]
      for (const [request, status, message] of cases) {
        const response = await inject({ headers: bearer, ...request })
        const what = `${request.method ?? 'GET'} ${request.url} ${JSON.stringify(request.payload ?? '')}`
        t.equal(response.statusCode, status, what)
        t.match(response.json().message, message, what)
      }
      t.same((await ok({ url: '/v1/funnels' })).funnels.map((f: { id: string }) => f.id).includes('x'), false, 'nothing was stored')
      const listed = (await inject({ method: 'POST', url: '/v1/funnels', headers: bearer, payload: { id: 'bad id!', name: '', steps: [] } })).json()
      t.ok(listed.details.problems.length >= 3, 'every problem is listed in details.problems')
    })

    if (target.name === 'postgres') {
      t.test('a query past its statement timeout is a 503 with the reason', async (t) => {
        const locker = new pg.Client({ connectionString: system.database.url })
        await locker.connect()
        await locker.query('BEGIN')
        await locker.query('LOCK TABLE funnel_progress IN ACCESS EXCLUSIVE MODE')
        const slow = await inject({ url: '/v1/funnels/signup/result?timeoutMs=300', headers: bearer })
        t.equal(slow.statusCode, 503, slow.body)
        t.match(slow.json(), { error: 'query_timeout', reason: 'statement_timeout', timeoutMs: 300 })
        await locker.query('ROLLBACK')
        await locker.end()
        t.equal((await inject({ url: '/v1/funnels/signup/result', headers: bearer })).statusCode, 200, 'the next query runs')
      })
    }

    t.test('GET /openapi.json documents the funnel routes', async (t) => {
      const document = (await inject({ url: '/openapi.json' })).json()
      for (const path of ['/v1/funnels', '/v1/funnels/{id}', '/v1/funnels/{id}/result', '/v1/funnels/{id}/trends', '/v1/funnels/{id}/audiences']) t.ok(document.paths[path], path)
      t.ok(document.paths['/v1/funnels'].post.requestBody.content['application/json'].schema.properties.steps, 'the definition grammar is in the document')
      t.ok(document.paths['/v1/funnels/{id}/result'].get.responses['200'].content['application/json'].schema.properties.steps)
      t.ok(document.paths['/v1/funnels/{id}/audiences'].get.parameters.some((p: { name: string }) => p.name === 'level'))
    })
  })
}
