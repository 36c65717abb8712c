import { jetstreamManager } from '@nats-io/jetstream'
import t from 'tap'
import { seededRandom } from '../operators/runtime/generator.ts'
import { decodeEnvelope } from '../schemas/codec.ts'
import { GOOGLEBOT_USER_AGENT } from '../simulate/model.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { eventually, startSystem, type System } from './harness/system.ts'

// Live funnel step counts end to end on real servers: a funnel created through the API, a history
// imported through the collector (people anonymous first and identified later, so identity merges
// move progress between key groups), enrich, sessionize, the funnel step, funnel-counts; the
// gateway's WebSocket and GET /v1/live/counts must equal GET /v1/funnels/:id/result (SQL over
// funnel_progress and profiles) per step once quiet. A re-run of funnel-counts from the start of
// SEG_FUNNELS (its state wiped, past the duplicate window: every progress message read again and
// every count republished) changes no number and pushes nothing. Funnels restricted to a segment
// (an inline profile condition, a saved segment) get the /result numbers, recomputed by SQL as the
// live counts move: a user in the segment moves them, one outside does not.

const STEPS = ['enrich', 'sessionize', 'profile', 'funnel', 'sink-profiles', 'sink-funnels', 'funnel-counts']
const KEY_GROUPS = 4
const MINUTE = 60_000
const HOUR = 60 * MINUTE
const START = Date.parse('2019-05-01T08:00:00.000Z')
const PEOPLE = 40
const target = DATABASE_TARGETS[0]

interface Logged { type: string; messageId: string; timestamp: string; anonymousId?: string; userId?: string; event?: string; traits?: object }

/**
 * A seeded history: each person views, maybe adds to the cart, maybe buys; a third are anonymous
 * until they identify (with the trait plan = pro). With `aprilEvery`, every such person first
 * browsed in April (acquired in 2019-04, outside a May cohort); the draw is the same.
 */
function history(seed: number, aprilEvery = 0): { events: Logged[]; entered: number; last: number } {
  const random = seededRandom(seed)
  const events: Logged[] = []
  let entered = 0
  let last = START
  for (let person = 0; person < PEOPLE; person++) {
    let time = START + person * 37 * MINUTE
    const anonymousUntil = person % 3 === 0 ? 1 + Math.floor(random() * 3) : 0
    const attempts = 1 + Math.floor(random() * 2)
    let step = 0
    const who = () => (step < anonymousUntil ? { anonymousId: `anon-${person}` } : { anonymousId: `anon-${person}`, userId: `person-${person}` })
    if (aprilEvery > 0 && person % aprilEvery === 1) {
      events.push({ type: 'track', messageId: `april-${person}`, timestamp: new Date(Date.parse('2019-04-20T12:00:00.000Z') + person * MINUTE).toISOString(), event: 'Browsed', ...who() })
    }
    const add = (event: string) => {
      if (step === anonymousUntil && anonymousUntil > 0) events.push({ type: 'identify', messageId: `identify-${person}`, timestamp: new Date(time).toISOString(), anonymousId: `anon-${person}`, userId: `person-${person}`, traits: { plan: 'pro' } })
      events.push({ type: 'track', messageId: `e-${person}-${step}`, timestamp: new Date(time).toISOString(), event, ...who() })
      step++
      last = Math.max(last, time)
    }
    if (random() < 0.1) { add('Browsed'); continue } // never enters
    entered++
    for (let attempt = 0; attempt < attempts; attempt++) {
      add('Viewed')
      time += Math.floor(random() * 50) * MINUTE
      if (random() < 0.6) {
        add('Added')
        time += Math.floor(random() * 70) * MINUTE // over an hour from the view now and then: dropped at level 2
        if (random() < 0.5) add('Bought')
      }
      time += 2 * HOUR
    }
  }
  // one who has just started: in progress at level 1 at the end of the history
  last += MINUTE
  events.push({ type: 'track', messageId: 'e-latest', timestamp: new Date(last).toISOString(), event: 'Viewed', userId: 'person-latest' })
  entered++
  return { events: events.sort((a, b) => a.timestamp.localeCompare(b.timestamp)), entered, last }
}

async function importBatch(system: System, apiKey: string, batch: object[]) {
  const response = await system.app.inject({ method: 'POST', url: '/v1/import', headers: { authorization: `Bearer ${apiKey}` }, payload: { batch } })
  if (response.statusCode !== 200) throw new Error(`import answered ${response.statusCode}: ${response.body}`)
}

let tick = 0
/** A crawler's hit at `time`: counts for nobody, moves the import's event time on (timers fire, held counts go out). */
const crawl = (system: System, apiKey: string, time: number) => importBatch(system, apiKey, [{
  type: 'page', messageId: `crawl-${++tick}`, anonymousId: `crawler-${tick % 8}`, timestamp: new Date(time).toISOString(), context: { userAgent: GOOGLEBOT_USER_AGENT, ip: '66.249.66.1' },
}])

/** Waits for `check`, moving the import's event time on a second at a time meanwhile (a change held by the coalescing goes out once it moves). */
async function settle(system: System, apiKey: string, clock: { time: number }, what: string, check: () => Promise<boolean>, timeoutMs = 60_000) {
  await eventually(what, async () => {
    if (await check()) return true
    await crawl(system, apiKey, (clock.time += 1_000))
    return false
  }, timeoutMs)
}

type Step = { reached: number; inProgress: number; dropped: number; dropOff: number }
const numbers = (steps: Step[]) => steps.map(({ reached, inProgress, dropped, dropOff }) => ({ reached, inProgress, dropped, dropOff }))

/** The latest publication of every key group's funnel counts: subject -> [version, funnels]. */
async function storedFunnelCounts(system: System): Promise<Record<string, [number, unknown]>> {
  const jsm = await jetstreamManager(system.nc)
  const info = await jsm.streams.info('SEG_COUNTS', { subjects_filter: 'seg.*.funnel_counts.*' })
  const stored: Record<string, [number, unknown]> = {}
  for (const subject of Object.keys(info.state.subjects ?? {}).sort()) {
    const envelope = decodeEnvelope((await jsm.streams.getMessage('SEG_COUNTS', { last_by_subj: subject }))!.data)
    if (envelope.type !== 'live_funnel_counts') throw new Error(`${subject} holds a ${envelope.type}: only funnel counts belong there (no watermarks)`)
    stored[subject] = [envelope.data.version, envelope.data.funnels]
  }
  return stored
}

t.test('live funnel step counts equal the /result API once quiet, over the WebSocket and HTTP, and a re-run changes nothing', async (t) => {
  const system = await startSystem({ database: target.start, poolSize: target.poolSize, keyGroups: KEY_GROUPS, duplicateWindowMs: 2_000 })
  t.teardown(() => system.close())
  const { apiKey } = await system.createProject('shop')
  const headers = { authorization: `Bearer ${apiKey}` }
  const steps = await system.startOperators(STEPS)

  const created = await system.app.inject({
    method: 'POST', url: '/v1/funnels', headers,
    payload: { id: 'checkout', name: 'Checkout', windowMs: HOUR, steps: [{ event: 'Viewed' }, { event: 'Added', label: 'Cart' }, { event: 'Bought' }] },
  })
  t.equal(created.statusCode, 201, created.body)

  const socket = await system.app.injectWS(`/v1/live?key=${encodeURIComponent(apiKey)}`)
  t.teardown(() => socket.terminate())
  const messages: Array<Record<string, any>> = []
  socket.on('message', (data: Buffer) => messages.push(JSON.parse(data.toString('utf8'))))
  const last = () => messages.filter((message) => message.type === 'counts').at(-1)
  socket.send(JSON.stringify({ type: 'watch', funnels: ['nope'] }))
  await eventually('an unknown funnel refused', () => messages.some((message) => message.type === 'error'))
  t.match(messages.find((message) => message.type === 'error')!.message, /no funnel "nope"/)
  socket.send(JSON.stringify({ type: 'watch', funnels: ['checkout'] }))
  await eventually('the first counts, at once', () => last()?.funnels?.checkout !== undefined)
  t.same(last()!.funnels.checkout.steps.map((step: Step) => step.reached), [0, 0, 0], 'nobody yet')

  const { events, entered, last: lastTime } = history(11)
  for (let at = 0; at < events.length; at += 100) await importBatch(system, apiKey, events.slice(at, at + 100))
  // event time 10 minutes past the last event: windows opened in the last hour stay open
  const clock = { time: lastTime + 10 * MINUTE }
  await crawl(system, apiKey, clock.time)

  const result = async () => {
    const response = await system.app.inject({ url: '/v1/funnels/checkout/result', headers })
    if (response.statusCode !== 200) throw new Error(`result answered ${response.statusCode}: ${response.body}`)
    return response.json() as { entered: number; steps: Step[] }
  }
  let sql: Step[] = []
  let live: Step[] = []
  try {
    await settle(system, apiKey, clock, 'the live counts equal the result', async () => {
      const answer = await result()
      sql = numbers(answer.steps)
      live = last()?.funnels?.checkout ? numbers(last()!.funnels.checkout.steps) : []
      return answer.entered === entered && JSON.stringify(live) === JSON.stringify(sql)
    }, 120_000)
  } finally {
    t.same(live, sql, `pushed over the WebSocket: per step what GET /v1/funnels/checkout/result counts (${sql.map((step) => step.reached).join(' → ')})`)
  }
  t.equal(sql[0]!.reached, entered, `every person who viewed entered, once (${entered}; merged anonymous ids are not counted apart)`)
  t.ok(sql[1]!.dropped > 0 && sql[2]!.reached > 0, 'some dropped at level 2, some converted')
  t.ok(sql.some((step) => step.inProgress > 0), 'and some are still in progress')

  const http = (await system.app.inject({ url: '/v1/live/counts', headers })).json()
  const funnel = http.funnels.find((entry: { id: string }) => entry.id === 'checkout')
  t.same(numbers(funnel.steps), sql, 'GET /v1/live/counts: the same')
  t.same([funnel.version, funnel.segmentApplied, funnel.entered, funnel.steps[1].label], [1, true, entered, 'Cart'])
  t.ok(funnel.steps[2].timeToConvert.users === sql[2]!.reached && funnel.steps[2].timeToConvert.medianAtMostMs > 0, 'times to convert, to a bucket')

  // event time well past every window: the in-progress users drop, live and SQL alike
  clock.time = lastTime + 3 * HOUR
  await settle(system, apiKey, clock, 'everyone\'s window closed, live as in SQL', async () => {
    sql = numbers((await result()).steps)
    live = numbers(last()!.funnels.checkout.steps)
    return sql.every((step) => step.inProgress === 0) && JSON.stringify(live) === JSON.stringify(sql)
  })
  t.same(live, sql, 'after the windows closed: equal, nobody in progress')

  // re-run funnel-counts from the start of SEG_FUNNELS: every progress message read again
  const before = await storedFunnelCounts(system)
  t.ok(Object.keys(before).length >= 2, `funnel counts stored per key group (${Object.keys(before).length})`)
  const pushes = messages.filter((message) => message.type === 'counts').length
  await steps.stop()
  const jsm = await jetstreamManager(system.nc)
  await jsm.streams.purge('KV_seg_state_funnel-counts')
  await new Promise((resolve) => setTimeout(resolve, 2_500)) // past the duplicate window: republications are stored again
  const sequenceBefore = (await jsm.streams.info('SEG_COUNTS')).state.last_seq
  await system.startOperators(STEPS)
  await settle(system, apiKey, clock, 'the re-run republished', async () => (await jsm.streams.info('SEG_COUNTS')).state.last_seq > sequenceBefore)
  await settle(system, apiKey, clock, 'the re-run caught up', async () => JSON.stringify(await storedFunnelCounts(system)) === JSON.stringify(before))
  t.same(await storedFunnelCounts(system), before, 'the same versions and counts in every key group')
  t.same(numbers(last()!.funnels.checkout.steps), sql, 'the gateway counted nothing twice')
  t.equal(messages.filter((message) => message.type === 'counts').length, pushes, 'and pushed nothing: no number changed')
})

t.test('restricted funnels: the live view is the /result of the segment, moved by a user in it and not by one outside', async (t) => {
  const system = await startSystem({ database: target.start, poolSize: target.poolSize, keyGroups: KEY_GROUPS })
  t.teardown(() => system.close())
  const { apiKey } = await system.createProject('shop')
  const headers = { authorization: `Bearer ${apiKey}` }
  await system.startOperators(STEPS)

  // a saved segment on a trait needs a profile with the trait first
  await importBatch(system, apiKey, [{ type: 'identify', messageId: 'early', timestamp: '2019-04-01T00:00:00.000Z', userId: 'person-early', traits: { plan: 'free' } }])
  let segmentId = ''
  await eventually('the pro segment saved', async () => {
    const segment = await system.app.inject({ method: 'POST', url: '/v1/segments', headers, payload: { name: 'Pro', filter: { all: [{ dimension: 'trait.plan', equals: 'pro' }] } } })
    segmentId = segment.statusCode === 201 ? segment.json().id : ''
    return segmentId !== ''
  }, 30_000)
  const steps = [{ event: 'Viewed' }, { event: 'Added', label: 'Cart' }, { event: 'Bought' }]
  for (const payload of [
    { id: 'all', name: 'Everyone', windowMs: HOUR, steps },
    { id: 'may', name: 'May cohort', windowMs: HOUR, steps, segment: { profile: [{ field: 'acquisition_month', value: '2019-05' }] } },
    { id: 'pro', name: 'Pro', windowMs: HOUR, steps, segment: { segmentId } },
  ]) {
    const created = await system.app.inject({ method: 'POST', url: '/v1/funnels', headers, payload })
    t.equal(created.statusCode, 201, created.body)
  }
  const ids = ['all', 'may', 'pro'] as const

  const socket = await system.app.injectWS(`/v1/live?key=${encodeURIComponent(apiKey)}`)
  t.teardown(() => socket.terminate())
  const messages: Array<Record<string, any>> = []
  socket.on('message', (data: Buffer) => messages.push(JSON.parse(data.toString('utf8'))))
  const last = () => messages.filter((message) => message.type === 'counts').at(-1)
  socket.send(JSON.stringify({ type: 'watch', funnels: ids }))
  await eventually('the first counts, at once', () => last()?.funnels?.pro !== undefined)
  t.same(ids.map((id) => last()!.funnels[id].segmentApplied), [true, true, true], 'every view applies its funnel\'s restriction')

  const { events, last: lastTime } = history(11, 4)
  for (let at = 0; at < events.length; at += 100) await importBatch(system, apiKey, events.slice(at, at + 100))
  const clock = { time: lastTime + 10 * MINUTE }
  await crawl(system, apiKey, clock.time)

  const result = async (id: string) => {
    const response = await system.app.inject({ url: `/v1/funnels/${id}/result`, headers })
    if (response.statusCode !== 200) throw new Error(`result answered ${response.statusCode}: ${response.body}`)
    return numbers((response.json() as { steps: Step[] }).steps)
  }
  const pushed = (id: string) => (last()?.funnels?.[id] ? numbers(last()!.funnels[id].steps) : [])
  const sql: Record<string, Step[]> = {}
  /** Every watched funnel's pushed numbers equal its /result. */
  const allEqual = async () => {
    for (const id of ids) sql[id] = await result(id)
    return ids.every((id) => JSON.stringify(pushed(id)) === JSON.stringify(sql[id]))
  }
  try {
    await settle(system, apiKey, clock, 'every pushed funnel equals its result', async () => (await result('all'))[0]!.reached > 0 && allEqual(), 120_000)
  } finally {
    for (const id of ids) t.same(pushed(id), sql[id], `pushed over the WebSocket, funnel "${id}": per step what /result counts (${sql[id]?.map((step) => step.reached).join(' → ')})`)
  }
  t.ok(sql.may![0]!.reached < sql.all![0]!.reached && sql.may![0]!.reached > 0, `the May cohort is a part of everyone (${sql.may![0]!.reached} of ${sql.all![0]!.reached})`)
  t.ok(sql.pro![0]!.reached < sql.all![0]!.reached && sql.pro![0]!.reached > 0, `so are the pro users (${sql.pro![0]!.reached})`)

  const http = (await system.app.inject({ url: '/v1/live/counts', headers })).json() as { funnels: Array<{ id: string; segmentApplied: boolean; steps: Step[] & Array<{ timeToConvert: any }> }> }
  for (const id of ids) {
    const funnel = http.funnels.find((entry) => entry.id === id)!
    t.same([funnel.segmentApplied, numbers(funnel.steps)], [true, sql[id]], `GET /v1/live/counts, funnel "${id}": the same`)
  }
  const may = http.funnels.find((entry) => entry.id === 'may')!
  if (sql.may![1]!.reached > 0) t.ok(may.steps[1]!.timeToConvert.medianMs >= 0 && may.steps[1]!.timeToConvert.users === sql.may![1]!.reached, 'exact times to convert from SQL')

  // a new user of the May cohort, in the pro segment: both restricted views move by one entry
  const before = { may: pushed('may'), pro: pushed('pro') }
  clock.time += MINUTE
  await importBatch(system, apiKey, [
    { type: 'identify', messageId: 'new-in-identify', timestamp: new Date(clock.time).toISOString(), userId: 'person-new-in', traits: { plan: 'pro' } },
    { type: 'track', messageId: 'new-in-view', timestamp: new Date(clock.time + 1_000).toISOString(), userId: 'person-new-in', event: 'Viewed' },
  ])
  clock.time += 1_000
  await settle(system, apiKey, clock, 'a user in the segments moved the restricted views', async () =>
    pushed('may')[0]!.reached === before.may[0]!.reached + 1 && pushed('pro')[0]!.reached === before.pro[0]!.reached + 1 && allEqual())
  t.same([pushed('may')[0]!.reached, pushed('pro')[0]!.reached], [before.may[0]!.reached + 1, before.pro[0]!.reached + 1], 'a user in the segment: one more entered, pushed')
  for (const id of ids) t.same(pushed(id), sql[id], `and funnel "${id}" still equals /result`)

  // person-early (acquired in April, plan free) views: everyone's view moves, the restricted ones do not
  const outside = { all: pushed('all'), may: pushed('may'), pro: pushed('pro') }
  clock.time += MINUTE
  await importBatch(system, apiKey, [
    { type: 'track', messageId: 'early-view', timestamp: new Date(clock.time).toISOString(), userId: 'person-early', event: 'Viewed' },
  ])
  await settle(system, apiKey, clock, 'the outside user counted in everyone\'s view', async () => {
    if (pushed('all')[0]!.reached !== outside.all[0]!.reached + 1) return false
    return JSON.stringify(await result('all')) === JSON.stringify(pushed('all')) // sink-funnels has written it too
  })
  await new Promise((resolve) => setTimeout(resolve, 1_500)) // a restricted query or two later
  t.same([pushed('may'), pushed('pro')], [outside.may, outside.pro], 'a user outside the segments: the restricted views did not change')
  t.same([await result('may'), await result('pro')], [outside.may, outside.pro], 'nor did /result')
})
