import t from 'tap'
import { seededRandom } from '../operators/runtime/generator.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { eventually, startSystem, type System } from './harness/system.ts'

/**
 * Windowed aggregates through the pipeline (collector → enrich → aggregates → sink-aggregates)
 * on real servers, both database targets: the `aggregates` view's totals per Berlin day, event
 * name and device type equal a recomputation from what the test sent (bots left out), the days
 * the watermark passed are final, and a redelivered partial changes nothing.
 */

const CHROME = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36'
const IPHONE = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1'
const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const HOUR = 3_600_000
// 2019-04-30T20:00Z is 22:00 in Berlin: the first events fall on April 30th, local, and the later ones on May 1st and 2nd
const T0 = Date.parse('2019-04-30T20:00:00.000Z')
const NAMES = ['click_event1', 'custom_event2', 'Signed Up']

interface Sent { user: string; name: string; time: number; device: 'desktop' | 'mobile'; bot: boolean }

/** Berlin's local day of an instant, as the operator's day windows cut them. */
const berlinDay = (ms: number) => new Intl.DateTimeFormat('en-CA', { timeZone: 'Europe/Berlin', year: 'numeric', month: '2-digit', day: '2-digit' }).format(ms)

function scenario(): Sent[] {
  const random = seededRandom(7)
  const sent: Sent[] = []
  for (let i = 0; i < 400; i++) {
    const user = `u${Math.floor(random() * 60)}`
    // a user keeps one device: the first 20 are on phones, the last 5 are crawlers
    const index = Number(user.slice(1))
    sent.push({ user, name: NAMES[Math.floor(random() * NAMES.length)]!, time: T0 + Math.floor(random() * 30 * HOUR), device: index < 20 ? 'mobile' : 'desktop', bot: index >= 55 })
  }
  return sent.sort((a, b) => a.time - b.time)
}

async function send(system: System, writeKey: string, events: Sent[]) {
  for (let i = 0; i < events.length; i += 100) {
    const batch = events.slice(i, i + 100).map((event, j) => ({
      type: 'track', event: event.name, messageId: `m-${i + j}`, anonymousId: event.user, timestamp: new Date(event.time).toISOString(),
      context: { userAgent: event.bot ? GOOGLEBOT : event.device === 'mobile' ? IPHONE : CHROME },
    }))
    const response = await system.app.inject({ method: 'POST', url: '/v1/batch', payload: { writeKey, batch } })
    if (response.statusCode !== 200) throw new Error(`collector answered ${response.statusCode}: ${response.body}`)
  }
}

for (const target of DATABASE_TARGETS) {
  t.test(`windowed aggregates end to end (${target.name})`, async (t) => {
    const system = await startSystem({ database: target.start, poolSize: target.poolSize, keyGroups: 8 })
    t.teardown(() => system.close())
    const { project } = await system.createProject('agg', 'Europe/Berlin')
    await system.startOperators(['enrich', 'aggregates', 'sink-aggregates'])
    const sent = scenario()
    await send(system, project.writeKeys[0]!, sent)
    // two days later: the watermark (largest event time − the hour of allowed lateness) passes every day above
    const closing: Sent = { user: 'closer', name: 'tick', time: T0 + 80 * HOUR, device: 'desktop', bot: false }
    await send(system, project.writeKeys[0]!, [closing])

    const expected = new Map<string, { count: number; users: Set<string> }>()
    for (const event of sent.filter((e) => !e.bot)) {
      const key = `${berlinDay(event.time)}|${event.name}|${event.device}`
      const entry = expected.get(key) ?? { count: 0, users: new Set<string>() }
      entry.count++
      entry.users.add(event.user)
      expected.set(key, entry)
    }
    const days = [...new Set(sent.map((e) => berlinDay(e.time)))].sort()
    t.same(days, ['2019-04-30', '2019-05-01', '2019-05-02'], 'the scenario spans three Berlin days')

    const read = async () => {
      const totals = await system.store.aggregateTotals('agg', 'events-per-day', T0 - 24 * HOUR, T0 + 48 * HOUR)
      return new Map(totals.map((total) => [`${berlinDay(total.windowStart)}|${total.name}|${total.dimensions.deviceType}`, total]))
    }
    await eventually('every day final with the expected counts', async () => {
      const got = await read()
      return got.size === expected.size && [...expected].every(([key, want]) => got.get(key)?.count === want.count && got.get(key)?.final === true)
    }, 60_000).catch(() => undefined)

    const got = await read()
    t.same([...got.keys()].sort(), [...expected.keys()].sort(), 'one row per Berlin day, event name and device type; bots left out')
    for (const [key, want] of expected) {
      const total = got.get(key)
      t.equal(total?.count, want.count, `${key}: events`)
      t.equal(total?.distinctUsers, want.users.size, `${key}: distinct users`)
      t.equal(total?.exact, true, `${key}: exact below the sketch limit`)
      t.equal(total?.final, true, `${key}: final once the watermark passed the day`)
      t.equal(total?.dimensions.country, '', `${key}: no geo database, no country`)
      t.equal(total?.windowEnd! - total?.windowStart!, 24 * HOUR, `${key}: a Berlin day without a clock change is 24 hours`)
    }
    const firstDay = [...got].filter(([key]) => key.startsWith('2019-04-30|'))
    t.ok(firstDay.length > 0 && firstDay.every(([, total]) => total.windowStart === Date.parse('2019-04-29T22:00:00Z')), 'April 30th starts at 22:00Z the day before (Berlin, UTC+2)')

    // the sink's rule: a partial is replaced only by a higher version, so a redelivery changes nothing
    const partials = await system.store.withClient((client) => client.query('SELECT * FROM aggregate_partials WHERE project = $1 ORDER BY group_key, key_group', ['agg']))
    const one = partials.rows[0]!
    const rewritten = await system.store.upsertAggregates([{
      project: 'agg', groupKey: one.group_key, source: one.source, keyGroup: one.key_group, definition: one.definition, definitionVersion: one.definition_version,
      windowKind: one.window_kind, windowStart: one.window_start.getTime(), windowEnd: one.window_end.getTime(), name: one.name, dimensions: one.dimensions,
      count: Number(one.count) + 1000, distinctUsers: Number(one.distinct_users), exact: one.exact, final: one.final, version: one.version,
    }])
    t.equal(rewritten, 0, 'the same version again is not applied')
    const after = await system.store.withClient((client) => client.query('SELECT count FROM aggregate_partials WHERE project = $1 AND group_key = $2 AND key_group = $3', ['agg', one.group_key, one.key_group]))
    t.equal(Number(after.rows[0]!.count), Number(one.count), 'the stored partial is unchanged')
  })
}
