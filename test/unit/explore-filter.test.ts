import t, { type Test } from 'tap'
import { csvField, csvRows, CSV_HEADER } from '../../gateway/explore/csv.ts'
import {
  BUILT_IN_DIMENSIONS, compileFilter, decodeCursor, encodeCursor, groupOrder, needsAsOf, Params, plannerSettings, resolveDimension, seriesDriver, traitKind,
  type Filter, type UserRow,
} from '../../store/explore.ts'

// The filter compiler without a database: the SQL and parameters it builds, and every mistake
// it refuses with the place it found it. test/explore.test.ts runs the same filters on both targets.

const traits = new Map([['plan', 'string'], ['age', 'mixed'], ['score', 'number'], ['address', 'json']] as const)
const compile = (filter: Filter | undefined, asOfDay?: string) => {
  const params = new Params('alpha')
  const sql = compileFilter(filter, { traits, asOfDay }, params)
  return { sql: sql.replace(/\s+/g, ' '), values: params.values }
}
const refuses = (test: Test, filter: unknown, message: RegExp, what = JSON.stringify(filter)) =>
  test.throws(() => compile(filter as Filter, '2019-12-31'), { code: 'SEG_EXPLORE_INVALID', message }, what)

t.test('an empty filter is every live user of the project', async (t) => {
  t.same(compile(undefined), { sql: 'p.project = $1 AND p.merged_into IS NULL', values: ['alpha'] })
  t.same(compile({}), { sql: 'p.project = $1 AND p.merged_into IS NULL', values: ['alpha'] })
  t.same(compile({ all: [] }).values, ['alpha'])
})

t.test('dimension conditions', async (t) => {
  t.same(compile({ all: [{ dimension: 'engagement', equals: 'Medium-High' }] }), {
    sql: 'p.project = $1 AND p.merged_into IS NULL AND (p.engagement_level = $2::text)', values: ['alpha', 'Medium-High'],
  })
  t.same(compile({ all: [{ dimension: 'country', in: ['DE', 'FR'] }] }).sql.split(' AND ').at(-1), '(p.country = ANY($2::text[]))')
  t.same(compile({ all: [{ dimension: 'country', in: ['DE', null] }] }), {
    sql: 'p.project = $1 AND p.merged_into IS NULL AND ((p.country = ANY($2::text[]) OR p.country IS NULL))', values: ['alpha', ['DE']],
  }, 'null in a list: or no value')
  t.match(compile({ all: [{ dimension: 'device', equals: null }] }).sql, /\(p\.device_type IS NULL\)$/, 'device reads device_type; null is no value')
  t.same(compile({ all: [{ dimension: 'acquisition_month', range: { from: '2019-03', to: '2019-08' } }] }), {
    sql: 'p.project = $1 AND p.merged_into IS NULL AND (p.acquisition_month >= $2::text AND p.acquisition_month <= $3::text)', values: ['alpha', '2019-03', '2019-08'],
  }, 'months compare as text: both ends inclusive')
  t.same(compile({ all: [{ dimension: 'engagement', range: { from: 'Medium' } }] }), {
    sql: 'p.project = $1 AND p.merged_into IS NULL AND (p.engagement_level = ANY($2::text[]))', values: ['alpha', ['Medium', 'Medium-High', 'High']],
  }, 'a range of levels is the list of levels in it')
  t.same(compile({ all: [{ dimension: 'events', range: { to: 10 } }] }).values, ['alpha', 10])
  t.match(compile({ all: [{ dimension: 'events', range: { to: 10 } }] }).sql, /p\.events <= \$2::numeric\)$/)
  t.match(compile({ all: [{ dimension: 'country', equals: 'DE', not: true }] }).sql, / AND \(p\.country = \$2::text\) IS NOT TRUE$/, 'not keeps users without a value')
})

t.test('trait conditions', async (t) => {
  t.same(compile({ all: [{ dimension: 'trait.plan', equals: 'pro' }] }), {
    sql: 'p.project = $1 AND p.merged_into IS NULL AND (p.traits @> $2::jsonb)', values: ['alpha', '{"plan":"pro"}'],
  }, 'equality is containment, JSON-typed')
  t.same(compile({ all: [{ dimension: 'trait.plan', in: ['pro', 'free'] }] }).values, ['alpha', '{"plan":"pro"}', '{"plan":"free"}'])
  t.same(compile({ all: [{ dimension: 'trait.plan', equals: null }] }), {
    sql: "p.project = $1 AND p.merged_into IS NULL AND (nullif(p.traits -> $2::text, 'null'::jsonb) IS NULL)", values: ['alpha', 'plan'],
  }, 'absent or JSON null')
  const range = compile({ all: [{ dimension: 'trait.age', range: { from: 18, to: 30 } }] })
  t.match(range.sql, /jsonb_typeof\(p\.traits -> \$2::text\) = 'number' THEN \(p\.traits ->> \$2::text\)::numeric END\) >= \$3::numeric/, 'numbers only, never a failing cast')
  t.same(range.values, ['alpha', 'age', 18, 30])
})

t.test('behavioural conditions count local days back from the as-of day', async (t) => {
  const compiled = compile({ all: [{ event: 'click_event1', atLeast: 2, inLastDays: 7 }] }, '2019-12-31')
  t.match(compiled.sql, /p\.canonical_id IN \(SELECT s\.canonical_id FROM profile_event_series s WHERE s\.project = \$1 AND s\.name = \$3::text AND s\.last_day > \$2::date - \$4::int AND s\.first_day <= \$2::date AND coalesce\(s\.cumulative\[least\(\$2::date, s\.last_day\) - s\.first_day \+ 1\], 0\) - coalesce\(s\.cumulative\[\$2::date - \$4::int - s\.first_day \+ 1\], 0\) >= \$5::int ORDER BY s\.canonical_id\)/)
  t.same(compiled.values, ['alpha', '2019-12-31', 'click_event1', 7, 2])
  t.notMatch(compile({ all: [{ event: 'click_event1', atLeast: 2, inLastDays: 7, not: true }] }, '2019-12-31').sql, /ORDER BY/, 'a negated set is hashed, not merged: no sort')
  t.same(plannerSettings({ all: [{ event: 'click_event1', atLeast: 2, inLastDays: 7 }] }), ['SET LOCAL enable_nestloop = off', 'SET LOCAL max_parallel_workers_per_gather = 0'], 'a semi-join with the users who qualify: merged, not probed per user')
  t.same(plannerSettings({ all: [{ event: 'click_event1', atLeast: 2, inLastDays: 7, not: true }] }), [], 'negated: no join to steer')
  t.same(plannerSettings({ all: [{ event: 'click_event1', atLeast: 2, inLastDays: 7 }], active: { from: '2019-12-01T00:00:00Z', to: '2019-12-02T00:00:00Z' } }), [], 'the events probe stays a nested loop')
  t.same(plannerSettings({ all: [{ dimension: 'country', equals: 'DE' }] }), [], 'no behavioural condition: the planner\'s own choice')
  t.match(compile({ all: [{ event: 'click_event1', atLeast: 1, inLastDays: 90 }] }).sql, /\(false\)$/, 'no scored profile yet: nobody did it')
  t.ok(needsAsOf({ all: [{ dimension: 'country', equals: 'DE' }, { event: 'x', atLeast: 1, inLastDays: 1 }] }))
  t.notOk(needsAsOf({ all: [{ dimension: 'country', equals: 'DE' }] }))
  t.notOk(needsAsOf(undefined))
})

t.test('a behavioural condition drives the statement from profile_event_series when it reads only the columns copied there', async (t) => {
  const did = { event: 'click_event1', atLeast: 2, inLastDays: 30 }
  const by = (name: string) => resolveDimension(name, traits)
  t.equal(seriesDriver({ all: [did] }), 0, 'a behavioural condition alone (a segment size)')
  t.equal(seriesDriver({ all: [did] }, by('engagement')), 0, 'grouped by engagement')
  for (const name of ['acquisition_month', 'acquisition_channel', 'country', 'device']) t.equal(seriesDriver({ all: [did] }, by(name)), 0, `grouped by ${name}`)
  t.equal(seriesDriver({ all: [{ dimension: 'country', equals: 'DE' }, { ...did, not: true }, did, { event: 'search', atLeast: 1, inLastDays: 7 }] }, by('device')), 2, 'the first condition that is not negated, beside copied dimensions and other behavioural conditions')
  t.equal(seriesDriver({ all: [did] }, by('events')), undefined, 'grouped by a column not copied')
  t.equal(seriesDriver({ all: [did] }, by('trait.plan')), undefined, 'grouped by a trait')
  t.equal(seriesDriver({ all: [did, { dimension: 'trait.plan', equals: 'pro' }] }), undefined, 'a trait condition')
  t.equal(seriesDriver({ all: [did, { dimension: 'city', equals: 'Berlin' }] }), undefined, 'a condition on a column not copied')
  t.equal(seriesDriver({ all: [did], active: { from: '2019-12-01T00:00:00Z' } }), undefined, 'active reads first and last seen')
  t.equal(seriesDriver({ all: [{ ...did, not: true }] }), undefined, 'negated only: the users who did not are not in the table')
  t.equal(seriesDriver({ all: [{ dimension: 'country', equals: 'DE' }] }), undefined, 'no behavioural condition')
  t.equal(seriesDriver(undefined), undefined)
  const params = new Params('alpha')
  const sql = compileFilter({ all: [{ dimension: 'country', equals: 'DE' }, did] }, { traits, asOfDay: '2019-12-31', driver: 1 }, params).replace(/\s+/g, ' ')
  t.equal(sql, 'p.project = $1 AND (p.country = $2::text) AND (p.name = $4::text AND p.last_day > $3::date - $5::int AND p.first_day <= $3::date'
    + ' AND coalesce(p.cumulative[least($3::date, p.last_day) - p.first_day + 1], 0) - coalesce(p.cumulative[$3::date - $5::int - p.first_day + 1], 0) >= $6::int)',
  'the rows of one name whose running total grew by atLeast in the window; no merged_into (the table holds live profiles only)')
  t.same(params.values, ['alpha', 'DE', '2019-12-31', 'click_event1', 30, 2])
  t.same(plannerSettings({ all: [did] }, 0), [], 'driven: no join to steer')
  t.same(plannerSettings({ all: [did, { ...did, event: 'search', not: true }] }, 0), ['SET LOCAL max_parallel_workers_per_gather = 0'], 'driven beside another behavioural condition: its hashed set built once')
})

t.test('active [from, to): profile bounds alone with one end, the events table with both', async (t) => {
  const from = compile({ active: { from: '2019-05-01T00:00:00Z' } })
  t.equal(from.sql, 'p.project = $1 AND p.merged_into IS NULL AND p.last_seen >= $2::timestamptz')
  t.same(from.values, ['alpha', new Date('2019-05-01T00:00:00Z')])
  t.equal(compile({ active: { to: '2019-06-01' } }).sql, 'p.project = $1 AND p.merged_into IS NULL AND p.first_seen < $2::timestamptz')
  const both = compile({ active: { from: '2019-05-01T00:00:00Z', to: '2019-06-01T00:00:00+02:00' } })
  t.match(both.sql, /p\.last_seen >= \$2::timestamptz AND p\.first_seen < \$3::timestamptz AND EXISTS \(SELECT 1 FROM events e WHERE e\.project = \$1 AND e\.canonical_id = p\.canonical_id AND e\.event_time >= \$4::timestamptz AND e\.event_time < \$5::timestamptz\)/)
  t.same(both.values.slice(3), [new Date('2019-05-01T00:00:00Z'), new Date('2019-05-31T22:00:00Z')], 'offsets honoured')
})

t.test('mistakes are refused with their place', async (t) => {
  refuses(t, { all: [{ dimension: 'colour', equals: 'red' }] }, /^filter\.all\[0\]\.dimension: unknown dimension "colour": expected one of engagement, /)
  refuses(t, { all: [{ dimension: 'trait.nope', equals: 1 }] }, /no profile of this project has the trait "nope"/)
  refuses(t, { all: [{ dimension: 'country', equals: 'DE' }, { dimension: 'engagement', equals: 'Med' }] }, /^filter\.all\[1\]\.equals: engagement takes one of Low, Medium, Medium-High, High, not "Med"$/)
  refuses(t, { all: [{ dimension: 'acquisition_month', in: ['2019-01', '2019-1'] }] }, /filter\.all\[0\]\.in\[1\]: acquisition_month takes a month as YYYY-MM/)
  refuses(t, { all: [{ dimension: 'events', equals: '3' }] }, /events takes a number/)
  refuses(t, { all: [{ dimension: 'country', equals: 3 }] }, /country takes a string/)
  refuses(t, { all: [{ dimension: 'trait.plan', equals: { a: 1 } }] }, /takes a string, number, boolean or null/)
  refuses(t, { all: [{ dimension: 'country' }] }, /give exactly one of equals, in or range$/)
  refuses(t, { all: [{ dimension: 'country', equals: 'DE', range: { from: 'A' } }] }, /not equals and range/)
  refuses(t, { all: [{ dimension: 'country', in: [] }] }, /in: a non-empty list/)
  refuses(t, { all: [{ dimension: 'country', range: { from: 'A' } }] }, /country holds strings; range applies to engagement, months and numbers \(use in\)/)
  refuses(t, { all: [{ dimension: 'trait.address', range: { from: 1 } }] }, /holds objects or arrays/)
  refuses(t, { all: [{ dimension: 'trait.age', range: { from: 'a' } }] }, /range\.from: a range on trait\.age takes numbers/)
  refuses(t, { all: [{ dimension: 'events', range: {} }] }, /give from, to or both/)
  refuses(t, { all: [{ dimension: 'events', range: { from: null } }] }, /cannot be null/)
  refuses(t, { all: [{ dimension: 'events', range: { from: 5, to: 4 } }] }, /^filter\.all\[0\]\.range: from \(5\) is after to \(4\)$/)
  refuses(t, { all: [{ dimension: 'acquisition_month', range: { from: '2019-05', to: '2019-04' } }] }, /from \("2019-05"\) is after to \("2019-04"\)/)
  refuses(t, { all: [{ dimension: 'engagement', range: { from: 'High', to: 'Medium' } }] }, /from \(High\) is above to \(Medium\)/)
  refuses(t, { all: [{ dimension: 'events', range: { from: 1, upto: 4 } }] }, /range: unknown field "upto"; expected from, to/)
  refuses(t, { all: [{ dimension: 'country', equal: 'DE' }] }, /filter\.all\[0\]: unknown field "equal"/)
  refuses(t, { every: [] }, /^filter: unknown field "every"; expected all, active, asOf$/)
  refuses(t, { all: [{}] }, /either "dimension" .* or "event"/)
  refuses(t, { all: [{ dimension: 'country', event: 'x' }] }, /either "dimension" .* or "event"/)
  refuses(t, { all: ['country'] }, /filter\.all\[0\]: a condition object is required/)
  refuses(t, { all: { dimension: 'country' } }, /filter\.all: a list of conditions/)
  refuses(t, { all: [{ dimension: 'country', equals: 'DE', not: 'yes' }] }, /not: true or false/)
  refuses(t, { all: [{ event: 'x', atLeast: 0, inLastDays: 7 }] }, /atLeast: a whole number ≥ 1/)
  refuses(t, { all: [{ event: 'x', atLeast: 1.5, inLastDays: 7 }] }, /atLeast: a whole number ≥ 1/)
  refuses(t, { all: [{ event: 'x', atLeast: 1, inLastDays: 91 }] }, /inLastDays: a whole number of days from 1 to 90/)
  refuses(t, { all: [{ event: '', atLeast: 1, inLastDays: 1 }] }, /event: an event name is required/)
  refuses(t, { all: [{ event: 'x', atLeast: 1, inLastDays: 1, days: 3 }] }, /unknown field "days"/)
  refuses(t, { active: { from: '2019-06-01T00:00:00Z', to: '2019-05-01T00:00:00Z' } }, /^filter\.active: from \(2019-06-01T00:00:00Z\) must be before to \(2019-05-01T00:00:00Z\); the range is \[from, to\)$/)
  refuses(t, { active: { from: '2019-06-01T00:00:00Z', to: '2019-06-01T00:00:00Z' } }, /must be before/, 'an empty range')
  refuses(t, { active: { from: 'yesterday' } }, /filter\.active\.from: an ISO 8601 time/)
  refuses(t, { active: { from: '2019-02-30T00:00:00Z' } }, /an ISO 8601 time/, 'not a real date either')
  refuses(t, { asOf: 1577750400000 }, /filter\.asOf: an ISO 8601 time/)
  refuses(t, { all: new Array(51).fill({ dimension: 'country', equals: 'DE' }) }, /at most 50 conditions/)
  refuses(t, { all: [{ dimension: 'country', in: new Array(1001).fill('DE') }] }, /at most 1000 values/)
  refuses(t, [], /filter: an object/)
})

t.test('dimensions', async (t) => {
  t.same(BUILT_IN_DIMENSIONS.map((d) => d.name), [
    'engagement', 'acquisition_month', 'acquisition_channel', 'acquisition_source', 'acquisition_medium', 'acquisition_campaign',
    'country', 'city', 'device', 'browser', 'os', 'engagement_score', 'events', 'sessions',
  ])
  t.same(resolveDimension('trait.plan', traits), { name: 'trait.plan', source: 'trait', trait: 'plan', kind: 'string' })
  t.same(resolveDimension('trait.a.b', new Map([['a.b', 'number']])), { name: 'trait.a.b', source: 'trait', trait: 'a.b', kind: 'number' }, 'a trait name may hold dots')
  t.throws(() => resolveDimension('', traits), { code: 'SEG_EXPLORE_INVALID', message: /a dimension name is required/ })
  t.throws(() => resolveDimension('trait.', traits), /no profile of this project has the trait ""/)
  t.equal(traitKind(['string']), 'string')
  t.equal(traitKind(['number', 'null']), 'number', 'nulls do not make a trait mixed')
  t.equal(traitKind(['number', 'string']), 'mixed')
  t.equal(traitKind(['object', 'array']), 'json')
  t.equal(traitKind(['null']), 'string', 'only nulls so far')
  t.match(groupOrder(resolveDimension('engagement', traits)), /^array_position\(ARRAY\['Low','Medium','Medium-High','High'\]::text\[\], value\)/)
  t.equal(groupOrder(resolveDimension('acquisition_month', traits)), 'value ASC NULLS LAST')
  t.equal(groupOrder(resolveDimension('country', traits)), 'count DESC, value ASC NULLS LAST')
})

t.test('cursors', async (t) => {
  for (const id of ['u1', 'user:with,odd "chars" é', '']) t.equal(decodeCursor(encodeCursor(id)), id)
  t.match(encodeCursor('u1'), /^[A-Za-z0-9_-]+$/, 'URL-safe')
  for (const bad of ['', 'not-a-cursor', Buffer.from('{"after":3}').toString('base64url'), Buffer.from('null').toString('base64url')]) {
    t.throws(() => decodeCursor(bad), { code: 'SEG_EXPLORE_INVALID', message: /cursor: malformed/ }, JSON.stringify(bad))
  }
})

t.test('CSV fields', async (t) => {
  t.equal(csvField(null), '')
  t.equal(csvField('plain'), 'plain')
  t.equal(csvField('a,b'), '"a,b"')
  t.equal(csvField('say "hi"'), '"say ""hi"""')
  t.equal(csvField('two\nlines'), '"two\nlines"')
  t.equal(csvField(42), '42')
  t.equal(csvField({ plan: 'pro' }), '"{""plan"":""pro""}"')
  t.equal(csvField({}), '{}')
  const user: UserRow = {
    canonicalId: 'u1', firstSeen: null, lastSeen: null, acquisitionMonth: '2019-01', acquisitionChannel: null, acquisitionSource: null, acquisitionMedium: null,
    acquisitionCampaign: null, device: null, browser: null, os: null, country: 'DE', city: null, events: 3, sessions: 1, engagement: 'Low',
    engagementScore: 5, engagementAsOf: null, traits: {},
  }
  t.equal(csvRows([user]), 'u1,,,2019-01,,,,,,,,DE,,3,1,Low,5,,{}\r\n')
  t.equal(CSV_HEADER.split(',').length, 19)
})
