import { jetstreamManager } from '@nats-io/jetstream'
import t from 'tap'
import { republishSegments } from '../gateway/live/segments.ts'
import { decodeEnvelope } from '../schemas/codec.ts'
import type { LiveCountsEnvelope } from '../schemas/envelope.ts'
import { GOOGLEBOT_USER_AGENT } from '../simulate/model.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { eventually, startSystem, type System } from './harness/system.ts'

// Live counts end to end on real servers: events through the collector, enrich, sessionize and
// the profile step into membership changes; live-counts turns them into absolute, versioned
// counts per key group on SEG_COUNTS; the gateway sums them and pushes them over its WebSocket.
// Saved segments created through the API count the users already there. A re-run of
// live-counts from the start of SEG_PROFILES (its state wiped, past the duplicate window)
// leaves every number as it was. A project's key sees only its own counts.

const STEPS = ['enrich', 'sessionize', 'profile', 'sink-profiles', 'live-counts']
const KEY_GROUPS = 4

interface Client {
  messages: Array<Record<string, unknown>>
  send(message: unknown): void
  /** The last `counts` message. */
  last(): Record<string, any> | undefined
  close(): void
}

async function connect(system: System, apiKey: string): Promise<Client> {
  const socket = await system.app.injectWS(`/v1/live?key=${encodeURIComponent(apiKey)}`)
  const messages: Array<Record<string, unknown>> = []
  // receivedAt: when it arrived (wall clock), for the latency the test reports
  socket.on('message', (data: Buffer) => messages.push({ ...JSON.parse(data.toString('utf8')), receivedAt: Date.now() }))
  return {
    messages,
    send: (message) => socket.send(JSON.stringify(message)),
    last: () => messages.filter((message) => message.type === 'counts').at(-1) as Record<string, any> | undefined,
    close: () => socket.terminate(),
  }
}

async function post(system: System, writeKey: string, batch: object[]) {
  const response = await system.app.inject({ method: 'POST', url: '/v1/batch', headers: { authorization: `Basic ${Buffer.from(`${writeKey}:`).toString('base64')}` }, payload: { batch } })
  if (response.statusCode !== 200) throw new Error(`batch answered ${response.statusCode}: ${response.body}`)
}

let hit = 0
/** A crawler's hit now: counts for nobody, but moves event time on, so held counts go out. */
const tick = (system: System, writeKey: string) => post(system, writeKey, [{
  type: 'page', messageId: `tick-${++hit}`, anonymousId: `crawler-${hit % 8}`, timestamp: new Date().toISOString(), context: { userAgent: GOOGLEBOT_USER_AGENT, ip: '66.249.66.1' },
}])

const track = (user: string, n: number, traits?: object) => [
  ...(traits ? [{ type: 'identify', messageId: `${user}-identify-${n}`, userId: user, traits, timestamp: new Date().toISOString() }] : []),
  { type: 'track', messageId: `${user}-${n}`, userId: user, event: 'Clicked', timestamp: new Date().toISOString() },
]

/** Waits for `check`, moving event time on meanwhile. */
async function until(system: System, writeKey: string, what: string, check: () => boolean | Promise<boolean>) {
  await eventually(what, async () => {
    if (await check()) return true
    await tick(system, writeKey)
    return false
  }, 60_000)
}

async function liveCounts(system: System, apiKey: string) {
  const response = await system.app.inject({ method: 'GET', url: '/v1/live/counts', headers: { authorization: `Bearer ${apiKey}` } })
  if (response.statusCode !== 200) throw new Error(`live counts answered ${response.statusCode}: ${response.body}`)
  return response.json() as { asOf: string | null; keyGroups: { reporting: number; total: number }; engagement: Record<string, number>; segments: Array<{ id: string; name: string; live: boolean; size: number | null }> }
}

/** The latest publication of every key group of SEG_COUNTS: subject -> [version, counts]. */
async function storedCounts(system: System): Promise<Record<string, [number, unknown]>> {
  const jsm = await jetstreamManager(system.nc)
  const info = await jsm.streams.info('SEG_COUNTS', { subjects_filter: '>' })
  const stored: Record<string, [number, unknown]> = {}
  for (const subject of Object.keys(info.state.subjects ?? {}).sort()) {
    const message = await jsm.streams.getMessage('SEG_COUNTS', { last_by_subj: subject })
    const envelope = decodeEnvelope(message!.data) as LiveCountsEnvelope
    if (envelope.type !== 'live_counts') throw new Error(`${subject} holds a ${envelope.type}: only live counts belong there (no watermarks)`)
    stored[subject] = [envelope.data.version, envelope.data.counts]
  }
  return stored
}

const target = DATABASE_TARGETS[0]

t.test('live counts: pushed as profiles change, saved segments counted from the users already there, equal after a re-run, per project', async (t) => {
  // a short duplicate window: the re-run's republications are stored again, not dropped as duplicates
  const system = await startSystem({ database: target.start, poolSize: target.poolSize, keyGroups: KEY_GROUPS, duplicateWindowMs: 2_000 })
  t.teardown(() => system.close())
  const alpha = await system.createProject('alpha')
  const beta = await system.createProject('beta')
  const alphaWrite = alpha.project.writeKeys[0]!
  const steps = await system.startOperators(STEPS)

  const denied = await system.app.inject({ method: 'GET', url: '/v1/live?key=sk_nope', headers: { connection: 'upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' } })
  t.equal(denied.statusCode, 401, 'an unknown key is refused before the upgrade')
  t.equal((await system.app.inject({ method: 'GET', url: '/v1/live/counts' })).statusCode, 401, 'counts over HTTP need the key too')

  const client = await connect(system, alpha.apiKey)
  client.send({ type: 'watch', engagement: true })
  await eventually('the first counts, at once', () => client.last() !== undefined)
  t.same(client.last()!.engagement, { Low: 0, Medium: 0, 'Medium-High': 0, High: 0 }, 'nobody yet')

  await post(system, alphaWrite, [...track('u1', 1, { plan: 'pro' }), ...track('u2', 1, { plan: 'pro' }), ...track('u3', 1, { plan: 'free' })])
  await until(system, alphaWrite, 'three new users counted Low', () => client.last()?.engagement.Low === 3)
  t.same(client.last()!.engagement, { Low: 3, Medium: 0, 'Medium-High': 0, High: 0 }, 'pushed over the socket: three users, all Low')

  // saved segments, created once the profiles are stored (the API checks the trait exists)
  await eventually('profiles stored', async () => (await system.store.pool.query("SELECT count(*)::int AS n FROM profiles WHERE project = 'alpha'")).rows[0].n === 3)
  const created = await system.app.inject({ method: 'POST', url: '/v1/segments', headers: { authorization: `Bearer ${alpha.apiKey}` }, payload: { name: 'Pro', filter: { all: [{ dimension: 'trait.plan', equals: 'pro' }] } } })
  t.equal(created.statusCode, 201, created.body)
  const pro = created.json().id as string
  const behavioural = await system.app.inject({ method: 'POST', url: '/v1/segments', headers: { authorization: `Bearer ${alpha.apiKey}` }, payload: { name: 'Clickers', filter: { all: [{ event: 'Clicked', atLeast: 1, inLastDays: 7 }] } } })
  const clickers = behavioural.json().id as string
  client.send({ type: 'watch', engagement: true, segments: [pro, clickers] })
  await until(system, alphaWrite, 'the users already there counted in the new segment', () => client.last()?.segments?.[pro] === 2)
  t.equal(client.last()!.segments[clickers], null, 'a behavioural segment has no live size')
  const sql = (await system.app.inject({ method: 'GET', url: `/v1/segments/${pro}`, headers: { authorization: `Bearer ${alpha.apiKey}` } })).json()
  t.equal(sql.size, 2, 'the size the exploration API counts in SQL agrees')

  // a profile change moves the segment's size
  const posted = Date.now()
  await post(system, alphaWrite, track('u3', 2, { plan: 'pro' }))
  await until(system, alphaWrite, 'u3 enters the segment', () => client.last()?.segments?.[pro] === 3)
  t.comment(`from the POST to the push over the socket: ${client.last()!.receivedAt - posted} ms (collector, enrich, profile, live-counts, gateway; one run, not asserted)`)
  await post(system, alphaWrite, track('u1', 2, { plan: 'free' }))
  await until(system, alphaWrite, 'u1 leaves it', () => client.last()?.segments?.[pro] === 2)
  const pushes = client.messages.filter((message) => message.type === 'counts').length

  const http = await liveCounts(system, alpha.apiKey)
  t.same(http.engagement, { Low: 3, Medium: 0, 'Medium-High': 0, High: 0 })
  t.same(http.segments.map((segment) => [segment.name, segment.live, segment.size]), [['Pro', true, 2], ['Clickers', false, null]])
  t.ok(http.keyGroups.reporting >= 1 && http.keyGroups.total === KEY_GROUPS)

  // another project's key: its own (empty) counts, and alpha's segments are unknown to it
  const other = await connect(system, beta.apiKey)
  other.send({ type: 'watch', engagement: true, segments: [pro] })
  await eventually('beta told the segment is not its', () => other.messages.some((message) => message.type === 'error'))
  t.match(other.messages.find((message) => message.type === 'error')!.message, /no segment/)
  other.send({ type: 'watch', engagement: true })
  await eventually('beta counts', () => other.last() !== undefined)
  t.same(other.last()!.engagement, { Low: 0, Medium: 0, 'Medium-High': 0, High: 0 }, 'beta counts nobody of alpha')
  t.same((await liveCounts(system, beta.apiKey)).segments, [], 'and lists none of its segments')
  other.close()

  // re-run live-counts from the start of SEG_PROFILES: state and checkpoints wiped
  const before = await storedCounts(system)
  t.ok(Object.keys(before).length >= 1, 'counts stored per key group')
  await steps.stop()
  const jsm = await jetstreamManager(system.nc)
  await jsm.streams.purge('KV_seg_state_live-counts')
  await new Promise((resolve) => setTimeout(resolve, 2_500)) // past the duplicate window
  const sequenceBefore = (await jsm.streams.info('SEG_COUNTS')).state.last_seq
  await system.startOperators(STEPS)
  await until(system, alphaWrite, 'the re-run republished every key group', async () => (await jsm.streams.info('SEG_COUNTS')).state.last_seq >= sequenceBefore + Object.keys(before).length)
  await until(system, alphaWrite, 'the re-run caught up', async () => JSON.stringify(await storedCounts(system)) === JSON.stringify(before))
  t.same(await storedCounts(system), before, 'the same versions and counts in every key group')
  t.same((await liveCounts(system, alpha.apiKey)).engagement, { Low: 3, Medium: 0, 'Medium-High': 0, High: 0 }, 'the gateway did not count anything twice')
  t.equal(client.messages.filter((message) => message.type === 'counts').length, pushes, 'and pushed nothing: no number changed')
  t.same(client.last()!.segments, { [pro]: 2, [clickers]: null })

  // a segment saved before the profile step kept definitions: its row exists, its control message
  // went by unread. Published again, it gets its live size; the segments already held change nothing
  await system.store.pool.query(`INSERT INTO segments (project, id, name, filter, version) VALUES ('alpha', 'seg_older', 'Free (older)', '{"all":[{"dimension":"trait.plan","equals":"free"}]}', 1)`)
  client.send({ type: 'watch', engagement: true, segments: [pro, 'seg_older'] })
  await eventually('the older segment watched', () => client.last()?.segments?.seg_older !== undefined)
  t.equal(client.last()!.segments.seg_older, 0, 'unknown to the profile step: nobody counted yet')
  t.equal(await republishSegments(system.store.pool, system.publisher, { keyGroups: KEY_GROUPS, project: 'alpha' }), 3, 'every segment of the project published again')
  await until(system, alphaWrite, 'the older segment counted', () => client.last()?.segments?.seg_older === 1)
  t.same(client.last()!.segments, { [pro]: 2, seg_older: 1 }, 'u1, the one free user, is in it; the held segments are unchanged')
  client.close()
})
