import t from 'tap'
import pg from 'pg'
import { decode } from '../schemas/codec.ts'
import { countBy, listUsers, streamUsers } from '../store/explore.ts'
import type { EventRow } from '../store/store.ts'
import { subjectFor } from '../topology/subjects.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { startSystem, type System } from './harness/system.ts'

// The exploration API on real servers (nats-server and each database target), over profiles
// seeded here with SQL: every answer is compared with one computed from the seed by hand or
// by the small, independent oracle below.

interface Seed {
  id: string
  month: string | null
  channel: string | null
  source: string | null
  medium: string | null
  campaign: string | null
  device: string | null
  browser: string | null
  os: string | null
  country: string | null
  city: string | null
  level: string | null
  score: number | null
  events: number
  sessions: number
  traits: Record<string, unknown>
  /** Every event time of the user: first_seen and last_seen are their ends. */
  times: string[]
  mergedInto?: string
}

const AS_OF = '2019-12-31T12:00:00.000Z'
const seed = (id: string, row: string, traits: Record<string, unknown>, times: string[], mergedInto?: string): Seed => {
  const [month, channel, source, medium, campaign, device, browser, os, country, city, level, score, events, sessions] = row.split('|').map((v) => (v === '-' ? null : v))
  return {
    id, month, channel, source, medium, campaign, device, browser, os, country, city, level,
    score: score === null ? null : Number(score), events: Number(events), sessions: Number(sessions), traits, times, mergedInto,
  } as Seed
}

// month|channel|source|medium|campaign|device|browser|os|country|city|level|score|events|sessions
const ALPHA: Seed[] = [
  seed('u01', '2019-01|direct|-|-|-|desktop|Chrome|Windows|DE|Berlin|Low|5|3|1', { plan: 'free' }, ['2019-01-10T10:00:00Z', '2019-06-15T10:00:00Z']),
  seed('u02', '2019-01|organic_search|google|organic|-|mobile|Safari|iOS|DE|Munich|Medium|30|20|4', { plan: 'pro', age: 31 }, ['2019-01-20T10:00:00Z', '2019-03-05T10:00:00Z', '2019-12-20T10:00:00Z']),
  seed('u03', '2019-02|paid_search|google|cpc|spring|desktop|Firefox|Linux|FR|Paris|Medium-High|60|80|10', { plan: 'pro', age: 45 }, ['2019-02-01T10:00:00Z', '2019-12-30T10:00:00Z']),
  seed('u04', '2019-02|paid_search|google|cpc|spring|mobile|Chrome|Android|FR|Lyon|Medium-High|55|60|9', { plan: 'free', age: 'unknown' }, ['2019-02-14T10:00:00Z', '2019-05-20T10:00:00Z', '2019-12-01T10:00:00Z']),
  seed('u05', '2019-03|email|newsletter|email|march|tablet|Safari|iOS|US|New York, "NY"|High|90|300|40', { plan: 'enterprise', vip: true }, ['2019-03-02T10:00:00Z', '2019-12-31T10:00:00Z']),
  seed('u06', '2019-03|social|facebook|social|-|mobile|Chrome|Android|US|Boston|Medium-High|70|120|15', {}, ['2019-03-09T10:00:00Z', '2019-12-25T10:00:00Z']),
  seed('u07', '2019-03|direct|-|-|-|desktop|Chrome|Windows|-|-|Low|0|1|1', { plan: 'free' }, ['2019-03-30T10:00:00Z']),
  seed('u08', '2019-04|referral|example.com|referral|-|desktop|Edge|Windows|DE|Berlin|Medium-High|52|50|7', { plan: 'pro' }, ['2019-04-01T10:00:00Z', '2019-12-31T09:00:00Z']),
  seed('u09', '2019-04|organic_search|bing|organic|-|mobile|Safari|iOS|GB|London|High|80|200|30', { plan: 'pro', vip: false }, ['2019-04-02T10:00:00Z', '2019-12-29T10:00:00Z']),
  // seen server-side only: no acquisition, no device, never scored
  seed('u10', '-|-|-|-|-|-|-|-|-|-|-|-|2|1', {}, ['2019-05-05T10:00:00Z', '2019-05-06T10:00:00Z']),
  // merged into u02: counts for nothing, anywhere
  seed('u11', '2019-01|direct|-|-|-|desktop|Chrome|Windows|DE|Berlin|Medium-High|60|70|9', { plan: 'pro', merged_only: 1 }, ['2019-01-05T10:00:00Z'], 'u02'),
  seed('u12', '2019-02|direct|-|-|-|desktop|Chrome|Windows|DE|Berlin|Medium-High|65|90|12', { plan: 'pro' }, ['2019-02-20T10:00:00Z', '2019-11-30T10:00:00Z']),
]
// another project: same ids, other values, a trait of its own; none of it may leak into alpha
const BETA: Seed[] = [
  seed('u01', '2018-07|email|-|-|-|mobile|Safari|iOS|JP|Tokyo|High|99|900|90', { beta_only: 'x', plan: 'pro' }, ['2018-07-01T10:00:00Z', '2019-12-31T10:00:00Z']),
  seed('b02', '2018-08|direct|-|-|-|desktop|Chrome|Windows|JP|Osaka|Medium-High|60|60|6', { plan: 'pro' }, ['2018-08-01T10:00:00Z']),
]
// per local day (Europe/Berlin) counts; alpha's as-of day is 2019-12-31
const EVENT_DAYS: [string, string, string, string, number][] = [
  ['alpha', 'u03', '2019-12-30', 'click_event1', 2],
  ['alpha', 'u03', '2019-12-01', 'click_event1', 5],
  ['alpha', 'u05', '2019-12-31', 'click_event1', 3],
  ['alpha', 'u06', '2019-12-24', 'click_event1', 1],
  ['alpha', 'u06', '2019-12-25', 'click_event1', 1],
  ['alpha', 'u11', '2019-12-31', 'click_event1', 10],
  ['alpha', 'u08', '2019-12-31', 'custom_event2', 4],
  ['beta', 'u01', '2019-12-31', 'click_event1', 50],
  ['beta', 'u01', '2019-12-30', 'beta_event', 1],
]

const COLUMNS: Record<string, (s: Seed) => unknown> = {
  engagement: (s) => s.level, acquisition_month: (s) => s.month, acquisition_channel: (s) => s.channel, acquisition_source: (s) => s.source,
  acquisition_medium: (s) => s.medium, acquisition_campaign: (s) => s.campaign, country: (s) => s.country, city: (s) => s.city,
  device: (s) => s.device, browser: (s) => s.browser, os: (s) => s.os, engagement_score: (s) => s.score, events: (s) => s.events, sessions: (s) => s.sessions,
}
const LEVELS = ['Low', 'Medium', 'Medium-High', 'High']

/** What a count must answer, computed from the seed with none of the store's code. */
function oracle(dimension: string, keep: (s: Seed) => boolean = () => true) {
  const read = dimension.startsWith('trait.') ? (s: Seed) => s.traits[dimension.slice(6)] ?? null : COLUMNS[dimension]!
  const counts = new Map<unknown, number>()
  const live = ALPHA.filter((s) => !s.mergedInto && keep(s))
  for (const s of live) counts.set(read(s), (counts.get(read(s)) ?? 0) + 1)
  let groups = [...counts].map(([value, count]) => ({ value, count }))
  const nullsLast = (a: unknown, b: unknown) => (a === null ? 1 : b === null ? -1 : 0)
  const byValue = (a: unknown, b: unknown) => nullsLast(a, b) || (typeof a === 'number' ? (a as number) - (b as number) : String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0)
  if (dimension === 'engagement') {
    groups = [...LEVELS.map((level) => ({ value: level as unknown, count: counts.get(level) ?? 0 })), ...(counts.get(null) ? [{ value: null, count: counts.get(null)! }] : [])]
  } else if (dimension === 'acquisition_month') groups.sort((a, b) => byValue(a.value, b.value))
  else groups.sort((a, b) => b.count - a.count || byValue(a.value, b.value))
  return { total: live.length, groups }
}

async function seedProfiles(pool: pg.Pool, system: System, project: string, seeds: Seed[]) {
  for (const s of seeds) {
    const first = s.times[0]!
    const last = s.times[s.times.length - 1]!
    await pool.query(
      `INSERT INTO profiles (project, canonical_id, first_seen, last_seen, acquisition_month, acquisition_channel, acquisition_source, acquisition_medium,
         acquisition_campaign, device_type, browser, os, country, city, events, sessions, engagement_level, engagement_score, engagement_as_of, traits,
         merged_into, version, profiles_seq)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20::jsonb, $21, 1, 1)`,
      [project, s.id, first, last, s.month, s.channel, s.source, s.medium, s.campaign, s.device, s.browser, s.os, s.country, s.city, s.events, s.sessions,
        s.level, s.score, s.level === null ? null : AS_OF, JSON.stringify(s.traits), s.mergedInto ?? null])
  }
  const events: EventRow[] = seeds.flatMap((s) => s.times.map((time, i) => ({
    project, messageId: `${s.id}-${i}`, eventTime: Date.parse(time), receivedAt: Date.parse(time), type: 'track', name: 'click_event1', canonicalId: s.id,
    anonymousId: null, userId: s.id, source: 'import', keyGroup: 0, rawStream: 'SEG_IMPORT', rawSeq: i + 1, enrichedSeq: i + 1,
    properties: {}, traits: null, context: {}, extra: {},
  })))
  await system.store.insertEvents(events)
}

for (const target of DATABASE_TARGETS) {
  t.test(`exploration API on ${target.name}`, async (t) => {
    const system = await startSystem({ database: target.start, poolSize: target.poolSize })
    t.teardown(() => system.close())
    const alpha = await system.createProject('alpha', 'Europe/Berlin')
    const beta = await system.createProject('beta', 'Asia/Tokyo')
    const pool = system.store.pool
    await seedProfiles(pool, system, 'alpha', ALPHA)
    await seedProfiles(pool, system, 'beta', BETA)
    for (const [project, id, day, name, count] of EVENT_DAYS) {
      await pool.query('INSERT INTO profile_event_days (project, canonical_id, day, name, count) VALUES ($1, $2, $3, $4, $5)', [project, id, day, name, count])
    }

    const bearer = { authorization: `Bearer ${alpha.apiKey}` }
    const inject = system.app.inject.bind(system.app)
    const count = async (body: object, headers: Record<string, string> = bearer) => inject({ method: 'POST', url: '/v1/explore/counts', headers, payload: body })
    const counted = async (body: object) => {
      const response = await count(body)
      if (response.statusCode !== 200) throw new Error(`${response.statusCode}: ${response.body}`)
      return response.json()
    }

    t.test('dimensions: the built-in ones and every trait seen, with its kind', async (t) => {
      const response = await inject({ url: '/v1/dimensions', headers: bearer })
      t.equal(response.statusCode, 200, response.body)
      const dimensions = response.json().dimensions as { name: string; kind: string; values?: string[] }[]
      const names = dimensions.map((d) => d.name)
      for (const name of ['engagement', 'acquisition_month', 'acquisition_channel', 'acquisition_source', 'acquisition_medium', 'acquisition_campaign', 'country', 'city', 'device', 'browser', 'os']) {
        t.ok(names.includes(name), `built-in ${name}`)
      }
      t.match(dimensions.find((d) => d.name === 'engagement'), { name: 'engagement', kind: 'level', values: LEVELS })
      t.match(dimensions.find((d) => d.name === 'acquisition_month'), { kind: 'month' })
      t.same(response.json().events, ['click_event1', 'custom_event2'], 'event names for behavioural conditions, this project\'s only')
      const traits = Object.fromEntries(dimensions.filter((d) => d.name.startsWith('trait.')).map((d) => [d.name, d.kind]))
      // merged_only is seen (the catalogue records what was written), beta_only is another project's
      t.same(traits, { 'trait.age': 'mixed', 'trait.merged_only': 'number', 'trait.plan': 'string', 'trait.vip': 'boolean' })

      // a trait written later, by an update, appears
      await pool.query(`UPDATE profiles SET traits = traits || '{"company": "ACME"}'::jsonb WHERE project = 'alpha' AND canonical_id = 'u07'`)
      const again = (await inject({ url: '/v1/dimensions', headers: bearer })).json().dimensions as { name: string; kind: string }[]
      t.match(again.find((d) => d.name === 'trait.company'), { kind: 'string' }, 'a trait added by an UPDATE is listed')
    })

    t.test('engagement of all users: every level, in order, by hand', async (t) => {
      const answer = await counted({ dimension: 'engagement' })
      t.same(answer, {
        dimension: 'engagement', kind: 'level', total: 11, groupCount: 5,
        groups: [{ value: 'Low', count: 2 }, { value: 'Medium', count: 1 }, { value: 'Medium-High', count: 5 }, { value: 'High', count: 2 }, { value: null, count: 1 }],
      })
    })

    t.test('the Medium-High users by month of acquisition, by hand', async (t) => {
      const answer = await counted({ dimension: 'acquisition_month', filter: { all: [{ dimension: 'engagement', equals: 'Medium-High' }] } })
      t.same(answer.groups, [{ value: '2019-02', count: 3 }, { value: '2019-03', count: 1 }, { value: '2019-04', count: 1 }])
      t.equal(answer.total, 5)
      const germans = await counted({ dimension: 'acquisition_month', filter: { all: [{ dimension: 'engagement', equals: 'Medium-High' }, { dimension: 'country', equals: 'DE' }] } })
      t.same(germans.groups, [{ value: '2019-02', count: 1 }, { value: '2019-04', count: 1 }], 'sliced further by country')
    })

    t.test('every built-in dimension, with and without filters, equals the oracle', async (t) => {
      const filters: [string, object | undefined, (s: Seed) => boolean][] = [
        ['no filter', undefined, () => true],
        ['engagement in Medium-High, High', { all: [{ dimension: 'engagement', in: ['Medium-High', 'High'] }] }, (s) => s.level === 'Medium-High' || s.level === 'High'],
        ['engagement range Medium..Medium-High', { all: [{ dimension: 'engagement', range: { from: 'Medium', to: 'Medium-High' } }] }, (s) => s.level === 'Medium' || s.level === 'Medium-High'],
        ['months 2019-02..2019-03 and not country DE', { all: [{ dimension: 'acquisition_month', range: { from: '2019-02', to: '2019-03' } }, { dimension: 'country', equals: 'DE', not: true }] },
          (s) => s.month !== null && s.month >= '2019-02' && s.month <= '2019-03' && s.country !== 'DE'],
        ['device in mobile, tablet', { all: [{ dimension: 'device', in: ['mobile', 'tablet'] }] }, (s) => s.device === 'mobile' || s.device === 'tablet'],
        ['country not set', { all: [{ dimension: 'country', equals: null }] }, (s) => s.country === null],
        ['events 50..200', { all: [{ dimension: 'events', range: { from: 50, to: 200 } }] }, (s) => s.events >= 50 && s.events <= 200],
        ['trait plan = pro', { all: [{ dimension: 'trait.plan', equals: 'pro' }] }, (s) => s.traits.plan === 'pro'],
        ['trait age 40..50', { all: [{ dimension: 'trait.age', range: { from: 40, to: 50 } }] }, (s) => typeof s.traits.age === 'number' && s.traits.age >= 40 && s.traits.age <= 50],
        ['channel in [paid_search, null]', { all: [{ dimension: 'acquisition_channel', in: ['paid_search', null] }] }, (s) => s.channel === 'paid_search' || s.channel === null],
      ]
      for (const [what, filter, keep] of filters) {
        for (const dimension of Object.keys(COLUMNS)) {
          const answer = await counted({ dimension, filter })
          const expected = oracle(dimension, keep)
          t.same({ total: answer.total, groups: answer.groups }, expected, `${dimension}, ${what}`)
        }
      }
    })

    t.test('a trait dimension', async (t) => {
      const plan = await counted({ dimension: 'trait.plan' })
      t.same(plan.groups, [{ value: 'pro', count: 5 }, { value: 'free', count: 3 }, { value: null, count: 2 }, { value: 'enterprise', count: 1 }])
      t.equal(plan.kind, 'string')
      t.same(await counted({ dimension: 'trait.vip' }).then((a) => a.groups), oracle('trait.vip').groups, 'booleans stay JSON booleans')
      // ties of mixed JSON types follow jsonb's order (strings before numbers): compared as a set
      const bySize = (groups: { value: unknown; count: number }[]) => groups.map((g) => `${g.count}:${JSON.stringify(g.value)}`).sort()
      const age = await counted({ dimension: 'trait.age' })
      t.same(bySize(age.groups), bySize(oracle('trait.age').groups), 'values of mixed types')
      t.same(age.groups[0], { value: null, count: 8 })
      const vip = await counted({ dimension: 'country', filter: { all: [{ dimension: 'trait.vip', equals: true }] } })
      t.same(vip.groups, [{ value: 'US', count: 1 }], 'equals is JSON-typed: true, not "true"')
      const notVip = await counted({ dimension: 'country', filter: { all: [{ dimension: 'trait.vip', equals: 'true' }] } })
      t.equal(notVip.total, 0)
    })

    t.test('behavioural conditions count back from the newest engagement_as_of (2019), in local days', async (t) => {
      const did = async (atLeast: number, inLastDays: number, extra: object = {}) => {
        const answer = await counted({ dimension: 'engagement', filter: { all: [{ event: 'click_event1', atLeast, inLastDays }], ...extra } })
        return { total: answer.total, asOf: answer.asOf }
      }
      // as-of day 2019-12-31: the last 7 days are Dec 25..31
      t.same(await did(2, 7), { total: 2, asOf: AS_OF }, 'u03 (2) and u05 (3); u06 has 1 of its 2 in the window; merged u11 not counted')
      t.same(await did(2, 8), { total: 3, asOf: AS_OF }, 'Dec 24..31 takes in u06\'s second click')
      t.equal((await did(7, 31)).total, 1, 'u03: 5 on Dec 1 + 2')
      t.equal((await did(7, 30)).total, 0, 'Dec 1 is outside 30 days')
      t.same(await did(2, 7, { asOf: '2019-12-26T12:00:00Z' }), { total: 1, asOf: '2019-12-26T12:00:00.000Z' }, 'an explicit asOf: Dec 20..26, only u06')
      const notClicked = await counted({ dimension: 'engagement', filter: { all: [{ event: 'click_event1', atLeast: 1, inLastDays: 90, not: true }] } })
      t.equal(notClicked.total, 8, 'not: the 11 users but u03, u05, u06')
      const both = await counted({ dimension: 'country', filter: { all: [{ event: 'custom_event2', atLeast: 4, inLastDays: 1 }, { dimension: 'engagement', equals: 'Medium-High' }] } })
      t.same(both.groups, [{ value: 'DE', count: 1 }], 'u08, with a dimension condition')
    })

    t.test('active in [from, to)', async (t) => {
      const active = async (from?: string, to?: string) => (await counted({ dimension: 'engagement', filter: { active: { from, to } } })).total
      const oracleActive = (from?: string, to?: string) => ALPHA.filter((s) => !s.mergedInto && s.times.some((time) =>
        (from === undefined || Date.parse(time) >= Date.parse(from)) && (to === undefined || Date.parse(time) < Date.parse(to)))).length
      t.equal(await active('2019-05-01T00:00:00Z', '2019-06-01T00:00:00Z'), 2, 'u04 and u10 had events in May; u01, u02 span it without one')
      t.equal(oracleActive('2019-05-01T00:00:00Z', '2019-06-01T00:00:00Z'), 2)
      t.equal(await active('2019-06-15T10:00:00Z', '2019-06-15T10:00:01Z'), 1, 'from is inclusive')
      t.equal(await active('2019-06-15T10:00:01Z', '2019-11-30T10:00:00Z'), 0, 'to is exclusive (u12 at 2019-11-30T10:00)')
      for (const [from, to] of [['2019-12-01T00:00:00Z', undefined], [undefined, '2019-02-01T00:00:00Z'], ['2019-03-01T00:00:00Z', '2019-04-01T00:00:00Z']] as const) {
        t.equal(await active(from, to), oracleActive(from, to), `[${from ?? '-∞'}, ${to ?? '∞'})`)
      }
    })

    t.test('paging through a cell returns each user exactly once', async (t) => {
      const collect = async (filter: object | undefined, limit: number) => {
        const seen: string[] = []
        let cursor: string | undefined
        let pages = 0
        do {
          const response = await inject({ method: 'POST', url: '/v1/explore/users', headers: bearer, payload: { filter, limit, cursor } })
          t.equal(response.statusCode, 200, response.body)
          const page = response.json()
          t.ok(page.users.length <= limit)
          seen.push(...page.users.map((u: { canonicalId: string }) => u.canonicalId))
          cursor = page.nextCursor ?? undefined
          pages++
        } while (cursor && pages < 50)
        return { seen, pages }
      }
      const all = await collect(undefined, 3)
      t.same(all.seen, ALPHA.filter((s) => !s.mergedInto).map((s) => s.id), 'all 11 users, in id order, merged u11 left out')
      t.equal(all.pages, 4)
      const cell = await collect({ all: [{ dimension: 'engagement', equals: 'Medium-High' }] }, 2)
      t.same(cell.seen, ['u03', 'u04', 'u06', 'u08', 'u12'], 'the Medium-High cell')
      const exact = await collect({ all: [{ dimension: 'engagement', equals: 'Medium-High' }] }, 5)
      t.equal(exact.pages, 1, 'a page that ends the cell says so (nextCursor null)')
      const nullCell = await collect({ all: [{ dimension: 'engagement', equals: null }] }, 10)
      t.same(nullCell.seen, ['u10'], 'the cell of users without a value')

      const one = (await inject({ method: 'POST', url: '/v1/explore/users', headers: bearer, payload: { filter: { all: [{ dimension: 'trait.vip', equals: true }] } } })).json()
      t.same(one.users, [{
        canonicalId: 'u05', firstSeen: '2019-03-02T10:00:00.000Z', lastSeen: '2019-12-31T10:00:00.000Z', acquisitionMonth: '2019-03', acquisitionChannel: 'email',
        acquisitionSource: 'newsletter', acquisitionMedium: 'email', acquisitionCampaign: 'march', device: 'tablet', browser: 'Safari', os: 'iOS', country: 'US',
        city: 'New York, "NY"', events: 300, sessions: 40, engagement: 'High', engagementScore: 90, engagementAsOf: AS_OF, traits: { plan: 'enterprise', vip: true },
      }], 'a user with every profile field')
    })

    t.test('the store functions the benchmark calls, directly on the pool', async (t) => {
      const context = { project: 'alpha', timezone: 'Europe/Berlin' }
      const pages: string[][] = []
      for await (const users of await streamUsers(pool, context, { pageSize: 3 })) pages.push(users.map((u) => u.canonicalId))
      t.same(pages, [['u01', 'u02', 'u03'], ['u04', 'u05', 'u06'], ['u07', 'u08', 'u09'], ['u10', 'u12']], 'a CSV export reads page after page, each user once')
      const cities = await countBy(pool, context, { dimension: 'city', limit: 2 })
      t.same(cities.groups, [{ value: 'Berlin', count: 3 }, { value: null, count: 2 }], 'limit cuts the groups')
      t.equal(cities.groupCount, 8, 'but says how many there are: 7 cities and no city')
      t.equal(cities.total, 11, 'and the total counts every user')
      const first = await listUsers(pool, context, { limit: 10 })
      const rest = await listUsers(pool, context, { limit: 10, cursor: first.nextCursor! })
      t.same([first.users.length, rest.users.length, rest.nextCursor], [10, 1, null])
      await t.rejects(countBy(pool, { ...context, timeoutMs: 0 }, { dimension: 'engagement' }), { code: 'SEG_EXPLORE_INVALID' })
    })

    t.test('CSV: by Accept header or ?format=csv, every user of the cell', async (t) => {
      const filter = { all: [{ dimension: 'country', in: ['US', 'GB'] }] }
      const byHeader = await inject({ method: 'POST', url: '/v1/explore/users', headers: { ...bearer, accept: 'text/csv' }, payload: { filter } })
      t.equal(byHeader.statusCode, 200)
      t.match(byHeader.headers['content-type'], /^text\/csv/)
      const lines = byHeader.body.trimEnd().split('\r\n')
      t.equal(lines[0], 'canonicalId,firstSeen,lastSeen,acquisitionMonth,acquisitionChannel,acquisitionSource,acquisitionMedium,acquisitionCampaign,device,browser,os,country,city,events,sessions,engagement,engagementScore,engagementAsOf,traits')
      t.same(lines.slice(1).map((line) => line.split(',')[0]), ['u05', 'u06', 'u09'])
      t.equal(lines[1], 'u05,2019-03-02T10:00:00.000Z,2019-12-31T10:00:00.000Z,2019-03,email,newsletter,email,march,tablet,Safari,iOS,US,"New York, ""NY""",300,40,High,90,2019-12-31T12:00:00.000Z,"{""vip"":true,""plan"":""enterprise""}"',
        "quotes, commas and the traits as JSON (in jsonb's key order)")
      const byQuery = await inject({ method: 'POST', url: '/v1/explore/users?format=csv', headers: bearer, payload: { filter } })
      t.equal(byQuery.body, byHeader.body)
      const everyone = await inject({ method: 'POST', url: '/v1/explore/users?format=csv', headers: bearer, payload: {} })
      t.equal(everyone.body.trimEnd().split('\r\n').length, 12, 'header and the 11 users, past the JSON page size')
      const bad = await inject({ method: 'POST', url: '/v1/explore/users?format=csv', headers: bearer, payload: { filter: { all: [{ dimension: 'colour', equals: 'red' }] } } })
      t.equal(bad.statusCode, 400, 'a mistake is still a 400 before any CSV is sent')
    })

    t.test('segments: create, list with live size, get, delete; published to the profile step', async (t) => {
      const controls: { name: string; version: number; definition: unknown }[] = []
      const subscription = system.nc.subscribe(subjectFor('alpha', 'enriched', '*'))
      ;(async () => {
        for await (const message of subscription) {
          const envelope = decode(message.data) as { type: string; data: { stepId: string; name: string; version: number; definition: unknown } }
          if (envelope.type === 'control' && envelope.data.stepId === 'profile') controls.push(envelope.data)
        }
      })()
      t.teardown(() => subscription.unsubscribe())

      const filter = { all: [{ dimension: 'engagement', in: ['Medium-High', 'High'] }, { dimension: 'country', equals: 'DE' }] }
      const created = await inject({ method: 'POST', url: '/v1/segments', headers: bearer, payload: { name: 'Engaged Germans', filter } })
      t.equal(created.statusCode, 201, created.body)
      const segment = created.json()
      t.match(segment, { id: /^seg_/, name: 'Engaged Germans', filter, version: 1, size: 2 }, 'u08 and u12')
      const clickers = (await inject({ method: 'POST', url: '/v1/segments', headers: bearer, payload: { name: 'Clickers', filter: { all: [{ event: 'click_event1', atLeast: 2, inLastDays: 7 }] } } })).json()
      t.match(clickers, { size: 2, asOf: AS_OF })

      const listed = await inject({ url: '/v1/segments', headers: bearer })
      t.same(listed.json().segments.map((s: { id: string; size: number }) => [s.id, s.size]), [[segment.id, 2], [clickers.id, 2]])
      t.match((await inject({ url: `/v1/segments/${segment.id}`, headers: bearer })).json(), { id: segment.id, size: 2 })

      // the size is live: a user who becomes High and German joins it
      await pool.query(`UPDATE profiles SET engagement_level = 'High', country = 'DE' WHERE project = 'alpha' AND canonical_id = 'u09'`)
      t.equal((await inject({ url: `/v1/segments/${segment.id}`, headers: bearer })).json().size, 3, 'counted when read')
      await pool.query(`UPDATE profiles SET engagement_level = 'High', country = 'GB' WHERE project = 'alpha' AND canonical_id = 'u09'`)

      const removed = await inject({ method: 'DELETE', url: `/v1/segments/${segment.id}`, headers: bearer })
      t.same(removed.json(), { deleted: true, id: segment.id })
      t.equal((await inject({ url: `/v1/segments/${segment.id}`, headers: bearer })).statusCode, 404)
      t.equal((await inject({ method: 'DELETE', url: `/v1/segments/${segment.id}`, headers: bearer })).statusCode, 404)
      t.same((await inject({ url: '/v1/segments', headers: bearer })).json().segments.map((s: { id: string }) => s.id), [clickers.id])

      for (let i = 0; i < 100 && controls.length < system.keyGroups * 3; i++) await new Promise((r) => setTimeout(r, 20))
      const ofSegment = controls.filter((c) => c.name === `segment:${segment.id}`)
      t.equal(ofSegment.filter((c) => c.version === 1).length, system.keyGroups, 'the definition went to every key group of the enriched stage')
      t.same(ofSegment.find((c) => c.version === 1)!.definition, { id: segment.id, name: 'Engaged Germans', filter })
      t.same(ofSegment.filter((c) => c.version === 2).map((c) => c.definition), new Array(system.keyGroups).fill(null), 'its deletion: version 2, definition null')
    })

    t.test('one project\'s key reads nothing of another\'s', async (t) => {
      const betaAuth = { authorization: `Basic ${Buffer.from(`${beta.apiKey}:`).toString('base64')}` }
      const betaCount = (await count({ dimension: 'engagement' }, betaAuth)).json()
      t.equal(betaCount.total, 2, 'beta sees its 2 users')
      t.same((await count({ dimension: 'country' }, betaAuth)).json().groups, [{ value: 'JP', count: 2 }])
      t.equal((await counted({ dimension: 'country', filter: { all: [{ dimension: 'country', equals: 'JP' }] } })).total, 0, 'alpha sees no JP user')
      const betaUsers = (await inject({ method: 'POST', url: '/v1/explore/users', headers: betaAuth, payload: {} })).json().users
      t.same(betaUsers.map((u: { canonicalId: string; country: string }) => [u.canonicalId, u.country]), [['b02', 'JP'], ['u01', 'JP']], 'the same id is each project\'s own user')
      const betaClicks = (await count({ dimension: 'engagement', filter: { all: [{ event: 'click_event1', atLeast: 50, inLastDays: 1 }] } }, betaAuth)).json()
      t.equal(betaClicks.total, 1, 'beta\'s own behaviour')
      t.equal((await counted({ dimension: 'engagement', filter: { all: [{ event: 'click_event1', atLeast: 50, inLastDays: 1 }] } })).total, 0, 'alpha does not see beta\'s clicks')
      const unknownTrait = await count({ dimension: 'trait.beta_only' })
      t.equal(unknownTrait.statusCode, 400, 'beta\'s trait is unknown to alpha')
      t.match(unknownTrait.json().message, /no profile of this project has the trait "beta_only"/)
      t.notOk(((await inject({ url: '/v1/dimensions', headers: bearer })).json().dimensions as { name: string }[]).some((d) => d.name === 'trait.beta_only'))

      const betaSegment = (await inject({ method: 'POST', url: '/v1/segments', headers: betaAuth, payload: { name: 'All', filter: {} } })).json()
      t.equal(betaSegment.size, 2)
      t.equal((await inject({ url: `/v1/segments/${betaSegment.id}`, headers: bearer })).statusCode, 404, 'alpha cannot read beta\'s segment')
      t.equal((await inject({ method: 'DELETE', url: `/v1/segments/${betaSegment.id}`, headers: bearer })).statusCode, 404, 'nor delete it')
      t.equal((await inject({ url: `/v1/segments/${betaSegment.id}`, headers: betaAuth })).statusCode, 200, 'still there for beta')
      t.notOk((await inject({ url: '/v1/segments', headers: bearer })).json().segments.some((s: { id: string }) => s.id === betaSegment.id))
    })

    t.test('authentication', async (t) => {
      const routes = [
        { method: 'GET' as const, url: '/v1/dimensions' },
        { method: 'POST' as const, url: '/v1/explore/counts', payload: { dimension: 'engagement' } },
        { method: 'POST' as const, url: '/v1/explore/users', payload: {} },
        { method: 'GET' as const, url: '/v1/segments' },
        { method: 'POST' as const, url: '/v1/segments', payload: { name: 'x', filter: {} } },
        { method: 'GET' as const, url: '/v1/segments/seg_x' },
        { method: 'DELETE' as const, url: '/v1/segments/seg_x' },
      ]
      for (const route of routes) {
        const none = await inject(route)
        t.equal(none.statusCode, 401, `${route.method} ${route.url} without a key`)
        t.match(none.json().message, /missing API key/)
        const wrong = await inject({ ...route, headers: { authorization: 'Bearer sk_nope' } })
        t.equal(wrong.statusCode, 401)
        t.match(wrong.json().message, /unknown API key/)
        const writeKey = await inject({ ...route, headers: { authorization: `Bearer ${alpha.project.writeKeys[0]}` } })
        t.equal(writeKey.statusCode, 401, 'a write key is public: it reads nothing')
      }
    })

    t.test('bad input is a 400 naming the problem', async (t) => {
      const cases: [object, RegExp][] = [
        [{ dimension: 'colour' }, /unknown dimension "colour"/],
        [{ dimension: 'trait.nope' }, /no profile of this project has the trait "nope"/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'colour', equals: 'red' }] } }, /filter\.all\[0\]\.dimension: unknown dimension "colour"/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'engagement', equals: 'Med' }] } }, /engagement takes one of Low, Medium, Medium-High, High/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'acquisition_month', equals: '2019-13' }] } }, /a month as YYYY-MM/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'country', equals: 'DE', in: ['FR'] }] } }, /exactly one of equals, in or range, not equals and in/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'country' }] } }, /exactly one of equals, in or range/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'country', equal: 'DE' }] } }, /unknown field "equal"/],
        [{ dimension: 'engagement', filter: { al: [] } }, /filter: unknown field "al"/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'country', event: 'x', atLeast: 1, inLastDays: 1 }] } }, /either "dimension".* or "event"/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'country', range: { from: 'A', to: 'Z' } }] } }, /range applies to engagement, months and numbers/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'acquisition_month', range: { from: '2019-05', to: '2019-02' } }] } }, /filter\.all\[0\]\.range: from \("2019-05"\) is after to \("2019-02"\)/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'engagement', range: { from: 'High', to: 'Low' } }] } }, /from \(High\) is above to \(Low\)/],
        [{ dimension: 'engagement', filter: { all: [{ dimension: 'events', range: { from: 10, to: 1 } }] } }, /from \(10\) is after to \(1\)/],
        [{ dimension: 'engagement', filter: { active: { from: '2019-06-01T00:00:00Z', to: '2019-05-01T00:00:00Z' } } }, /active: from .* must be before to/],
        [{ dimension: 'engagement', filter: { active: { from: 'last tuesday' } } }, /filter\.active\.from: an ISO 8601 time/],
        [{ dimension: 'engagement', filter: { all: [{ event: 'click_event1', atLeast: 1, inLastDays: 91 }] } }, /inLastDays must be <= 90/],
        [{ dimension: 'engagement', filter: { all: [{ event: 'click_event1', atLeast: 0, inLastDays: 7 }] } }, /atLeast must be >= 1/],
        [{ dimension: 'engagement', filter: { all: [{ event: 'click_event1', inLastDays: 7 }] } }, /atLeast: a whole number/],
        [{ dimension: 'engagement', filter: { all: 'everyone' } }, /filter\/all\/0 must be object/],
        [{ dimension: 'engagement', limit: 5000 }, /limit must be <= 1000/],
        [{ filter: {} }, /must have required property 'dimension'/],
      ]
      for (const [body, reason] of cases) {
        const response = await count(body)
        t.equal(response.statusCode, 400, JSON.stringify(body))
        t.equal(response.json().error, 'bad_request')
        t.match(response.json().message, reason, JSON.stringify(body))
      }
      const cursor = await inject({ method: 'POST', url: '/v1/explore/users', headers: bearer, payload: { cursor: 'not-a-cursor' } })
      t.equal(cursor.statusCode, 400)
      t.match(cursor.json().message, /cursor: malformed/)
      const page = await inject({ method: 'POST', url: '/v1/explore/users', headers: bearer, payload: { limit: 0 } })
      t.equal(page.statusCode, 400)
      const segment = await inject({ method: 'POST', url: '/v1/segments', headers: bearer, payload: { name: 'bad', filter: { all: [{ dimension: 'colour', equals: 'red' }] } } })
      t.equal(segment.statusCode, 400, 'a segment with a bad filter is not stored')
      t.match(segment.json().message, /unknown dimension "colour"/)
      const nameless = await inject({ method: 'POST', url: '/v1/segments', headers: bearer, payload: { filter: {} } })
      t.equal(nameless.statusCode, 400)
    })

    if (target.name === 'postgres') {
      // PGlite serves one connection at a time and has no statement timer: the lock and the timeout need a real server
      t.test('a query past its statement timeout is a 503 with the reason, and the connection is fine after', async (t) => {
        const locker = new pg.Client({ connectionString: system.database.url })
        await locker.connect()
        await locker.query('BEGIN')
        await locker.query('LOCK TABLE profiles IN ACCESS EXCLUSIVE MODE')
        const started = Date.now()
        const slow = await count({ dimension: 'engagement', timeoutMs: 300 })
        t.equal(slow.statusCode, 503, slow.body)
        t.match(slow.json(), { error: 'query_timeout', reason: 'statement_timeout', timeoutMs: 300, message: /longer than its statement timeout of 300 ms/ })
        t.ok(Date.now() - started < 5_000, 'answered promptly, not hung')
        await locker.query('ROLLBACK')
        await locker.end()
        t.equal((await count({ dimension: 'engagement' })).statusCode, 200, 'the next query runs')
      })
    }

    t.test('GET /openapi.json documents the routes from their schemas', async (t) => {
      const response = await inject({ url: '/openapi.json' })
      t.equal(response.statusCode, 200)
      const document = response.json()
      t.equal(document.openapi, '3.1.0')
      for (const path of ['/v1/dimensions', '/v1/explore/counts', '/v1/explore/users', '/v1/segments', '/v1/segments/{id}', '/v1/track', '/v1/import']) t.ok(document.paths[path], path)
      const counts = document.paths['/v1/explore/counts'].post
      t.ok(counts.requestBody.content['application/json'].schema.properties.filter.properties.all, 'the filter grammar is in the document')
      t.ok(counts.responses['200'].content['application/json'].schema.properties.groups)
      t.ok(counts.responses['503'], 'the timeout answer is documented')
      t.notOk(document.paths['/openapi.json'], 'the document does not list itself')
    })
  })
}
