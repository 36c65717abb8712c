import { Kvm } from '@nats-io/kv'
import { jetstream } from '@nats-io/jetstream'
import t from 'tap'
import { readStream } from '../broker/read.ts'
import { decodeEnvelope } from '../schemas/codec.ts'
import type { AnyEnvelope } from '../schemas/envelope.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { eventually, startSystem, type System } from './harness/system.ts'

const CHROME = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36'
const IPHONE = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1'
const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const T0 = Date.parse('2019-05-10T10:00:00.000Z')
const at = (minutes: number) => new Date(T0 + minutes * 60_000).toISOString()

async function send(system: System, writeKey: string, batch: object[]) {
  const response = await system.app.inject({ method: 'POST', url: '/v1/batch', payload: { writeKey, batch } })
  if (response.statusCode !== 200) throw new Error(`collector answered ${response.statusCode}: ${response.body}`)
  return response.json() as { accepted: number; duplicates: number }
}

async function enriched(system: System, project: string): Promise<AnyEnvelope[]> {
  const out: AnyEnvelope[] = []
  await readStream(jetstream(system.nc), 'SEG_ENRICHED', { filterSubjects: [`seg.${project}.enriched.*`] }, (m) => out.push(decodeEnvelope(m.data)))
  return out
}

const canonicalOf = (envelopes: AnyEnvelope[], messageId: string) =>
  envelopes.flatMap((e) => (e.type === 'enriched_event' && e.id === messageId ? [e.data.canonicalId] : []))

t.test('identity stitching, late duplicates and context, end to end', async (t) => {
  const target = DATABASE_TARGETS[0]
  const system = await startSystem({ database: target.start, poolSize: target.poolSize, keyGroups: 16, duplicateWindowMs: 1_000 })
  t.teardown(() => system.close())
  const { project } = await system.createProject('shop', 'Europe/Berlin')
  const writeKey = project.writeKeys[0]!
  // two instances of each operator: key groups spread over them
  await system.startOperators()
  await system.startOperators(['enrich', 'sessionize'])

  const page = { url: 'https://shop.example/home?utm_source=newsletter&utm_medium=email&utm_campaign=may', path: '/home', referrer: '' }
  // a visitor browses anonymously on a laptop, logs in, goes on; then uses a phone, anonymous, then logs in there too
  await send(system, writeKey, [
    { type: 'page', messageId: 'a-1', anonymousId: 'laptop', timestamp: at(0), context: { userAgent: CHROME, page } },
    { type: 'track', event: 'click_event1', messageId: 'a-2', anonymousId: 'laptop', timestamp: at(1), context: { userAgent: CHROME } },
  ])
  await send(system, writeKey, [
    { type: 'identify', messageId: 'a-3', anonymousId: 'laptop', userId: 'alice', timestamp: at(2), traits: { email: 'alice@example.com' } },
    { type: 'track', event: 'custom_event2', messageId: 'a-4', anonymousId: 'laptop', userId: 'alice', timestamp: at(3) },
    // after the link, an event with only the anonymous id is hers as well
    { type: 'track', event: 'click_event1', messageId: 'a-5', anonymousId: 'laptop', timestamp: at(4) },
  ])
  await send(system, writeKey, [
    { type: 'track', event: 'click_event1', messageId: 'p-1', anonymousId: 'phone', timestamp: at(60 * 24), context: { userAgent: IPHONE } },
    { type: 'identify', messageId: 'p-2', anonymousId: 'phone', userId: 'alice', timestamp: at(60 * 24 + 1) },
    { type: 'track', event: 'custom_event2', messageId: 'p-3', anonymousId: 'phone', userId: 'alice', timestamp: at(60 * 24 + 2) },
  ])
  // an alias: an old anonymous id becomes bob
  await send(system, writeKey, [
    { type: 'track', event: 'click_event1', messageId: 'b-1', anonymousId: 'old-cookie', timestamp: at(10) },
    { type: 'alias', messageId: 'b-2', previousId: 'old-cookie', userId: 'bob', timestamp: at(11) },
    { type: 'track', event: 'custom_event2', messageId: 'b-3', userId: 'bob', timestamp: at(12) },
    { type: 'track', event: 'click_event1', messageId: 'b-4', anonymousId: 'old-cookie', timestamp: at(13) },
  ])
  // a crawler
  await send(system, writeKey, [{ type: 'page', messageId: 'bot-1', anonymousId: 'crawler', timestamp: at(5), context: { userAgent: GOOGLEBOT } }])

  // one anonymous id identified as two users at once, by two requests in flight together
  await send(system, writeKey, [{ type: 'track', event: 'click_event1', messageId: 's-1', anonymousId: 'shared', timestamp: at(20) }])
  await Promise.all([
    send(system, writeKey, [{ type: 'identify', messageId: 's-2', anonymousId: 'shared', userId: 'carol', timestamp: at(21) }]),
    send(system, writeKey, [{ type: 'identify', messageId: 's-3', anonymousId: 'shared', userId: 'dave', timestamp: at(21) }]),
  ])
  await send(system, writeKey, [{ type: 'track', event: 'custom_event2', messageId: 's-4', anonymousId: 'shared', timestamp: at(22) }])

  // a message re-sent after the stream's duplicate window (1 s here): JetStream stores it again, enrich drops it
  await new Promise((r) => setTimeout(r, 1_500))
  const resent = await send(system, writeKey, [{ type: 'track', event: 'click_event1', messageId: 'a-2', anonymousId: 'laptop', timestamp: at(1), context: { userAgent: CHROME } }])
  t.equal(resent.duplicates, 0, 'beyond the duplicate window JetStream takes it as new')

  const ALL = 17
  await eventually('every event stored', async () => (await system.store.countEvents('shop')) === ALL)
  const identities = async () => (await system.store.pool.query(`SELECT anonymous_id, user_id FROM identities WHERE project = 'shop' ORDER BY anonymous_id`)).rows
  await eventually('every link stored', async () => (await identities()).length === 4)
  await new Promise((r) => setTimeout(r, 500))
  t.equal(await system.store.countEvents('shop'), ALL, 'the late duplicate is stored once')

  const stream = await enriched(system, 'shop')
  t.equal(canonicalOf(stream, 'a-2').length, 1, 'the late duplicate reached the enriched stream once')
  t.same(canonicalOf(stream, 'a-1'), ['laptop'], 'before the link, the laptop counts as itself on the stream')
  t.same(canonicalOf(stream, 'a-5'), ['alice'], 'after the link, the anonymous id counts as alice')
  t.same(canonicalOf(stream, 'b-4'), ['bob'], 'after an alias, the old id counts as bob')
  const merges = stream.filter((e) => e.type === 'merge').map((e) => (e.type === 'merge' ? `${e.data.from}->${e.data.into}` : ''))
  const shared = merges.filter((m) => m.startsWith('shared->'))
  t.equal(shared.length, 1, 'the contested anonymous id is linked once')
  const winner = shared[0]!.split('->')[1]!
  t.ok(['carol', 'dave'].includes(winner))
  t.same(canonicalOf(stream, 's-4'), [winner], 'its later events go to the winner')

  // the database: everything the laptop, the phone and the old cookie did is alice's and bob's
  const rows = (await system.store.pool.query(`SELECT message_id, canonical_id, anonymous_id, user_id, context FROM events WHERE project = 'shop' ORDER BY message_id`)).rows
  const byId = Object.fromEntries(rows.map((r) => [r.message_id, r]))
  for (const id of ['a-1', 'a-2', 'a-3', 'a-4', 'a-5', 'p-1', 'p-2', 'p-3']) t.equal(byId[id].canonical_id, 'alice', `${id} belongs to alice`)
  for (const id of ['b-1', 'b-2', 'b-3', 'b-4']) t.equal(byId[id].canonical_id, 'bob', `${id} belongs to bob`)
  t.equal(byId['s-1'].canonical_id, winner, 'the contested id\'s earlier event follows the winner')
  t.equal(byId['a-1'].anonymous_id, 'laptop', 'the original ids are kept')
  t.same(await identities(), [
    { anonymous_id: 'laptop', user_id: 'alice' }, { anonymous_id: 'old-cookie', user_id: 'bob' },
    { anonymous_id: 'phone', user_id: 'alice' }, { anonymous_id: 'shared', user_id: winner },
  ])
  const kv = await new Kvm(system.nc).open('seg_identity')
  const entry = await kv.get(`shop.${Buffer.from('shared').toString('base64url')}`)
  t.equal(entry?.string(), winner, 'the identity bucket names the same winner')

  // context: device, channel, bot flag on the enriched events
  const enrichedOf = (id: string) => stream.find((e) => e.type === 'enriched_event' && e.id === id)
  const first = enrichedOf('a-1')
  t.match(first?.type === 'enriched_event' && first.data.context, { device: { type: 'desktop', browser: 'Chrome' }, acquisition: { channel: 'email', source: 'newsletter', campaign: 'may' }, bot: false })
  const phone = enrichedOf('p-1')
  t.match(phone?.type === 'enriched_event' && phone.data.context, { device: { type: 'mobile', os: 'iOS' }, bot: false })
  const bot = enrichedOf('bot-1')
  t.match(bot?.type === 'enriched_event' && bot.data.context, { bot: true })

  // sessions: alice's two devices a day apart are two sessions, both hers; the bot has none
  await eventually('sessions stored', async () => {
    const { rows } = await system.store.pool.query(`SELECT canonical_id FROM sessions WHERE project = 'shop' AND status <> '$session_retract' ORDER BY canonical_id`)
    return rows.filter((r) => r.canonical_id === 'alice').length === 2 && rows.filter((r) => r.canonical_id === 'bob').length === 1
  })
  const live = (await system.store.pool.query(`SELECT canonical_id, events, entry_page, channel, device FROM sessions WHERE project = 'shop' AND status <> '$session_retract' ORDER BY canonical_id, started_at`)).rows
  // the losing identify still counts for its own user id (it names one): carol and dave each have a session
  t.same(live.map((r) => r.canonical_id).sort(), ['alice', 'alice', 'bob', 'carol', 'dave'], 'one session per person and day; none for the anonymous ids, none for the bot')
  t.match(live.find((r) => r.canonical_id === 'alice'), { events: 5, entry_page: '/home', channel: 'email', device: 'desktop' })
})
