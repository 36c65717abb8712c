import { execFile } from 'node:child_process'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { normalizeMessage } from '../../gateway/collector/normalize.ts'
import { acquisitionOf } from '../../operators/enrich/channel.ts'
import { deviceOf } from '../../operators/enrich/device.ts'
import { isBotAgent } from '../../operators/enrich/bots.ts'
import { channelOf, computeExpected, countryOfIp, deviceTypeOf, isBotUserAgent, type LogMessage } from '../../simulate/expected.ts'
import {
  ACQUISITION_LANDINGS, COUNTRY_NETWORKS, dayOfDate, ENGAGEMENT_TIERS, generateLog, GOOGLEBOT_USER_AGENT, localDayStart,
  MAX_GAP_IN_SESSION_MS, MIN_GAP_BETWEEN_SESSIONS_MS, planBots, planUsers, resolveSimulationOptions, RETURN_LANDINGS, SITE, USER_AGENTS,
  type SimulationOptions,
} from '../../simulate/model.ts'
import { parseSimulateArgs, runSimulation, SimulateError } from '../../simulate/run.ts'
import { cleanEnv } from '../harness/ports.ts'

const ROOT = join(import.meta.dirname, '..', '..')
const exec = promisify(execFile)
const MINUTE = 60_000
const DAY = 24 * 60 * MINUTE

function answersFor(options: Partial<SimulationOptions>, cohortMonth = '2019-05') {
  const resolved = resolveSimulationOptions(options)
  return computeExpected(generateLog(resolved), { timezone: resolved.timezone, cohortMonth })
}

t.test('determinism: the same seed gives the same log and answers, another seed another', async (t) => {
  const first = generateLog({ seed: 7, users: 120 })
  const again = generateLog({ seed: 7, users: 120 })
  t.same(again, first, 'same log, message for message')
  t.same(answersFor({ seed: 7, users: 120 }), answersFor({ seed: 7, users: 120 }), 'same expected answers')
  const other = generateLog({ seed: 8, users: 120 })
  t.not(JSON.stringify(other), JSON.stringify(first), 'another seed, another log')
  t.not(JSON.stringify(answersFor({ seed: 8, users: 120 })), JSON.stringify(answersFor({ seed: 7, users: 120 })), 'and other answers')
  const ids = new Set(first.map((message) => message.messageId))
  t.equal(ids.size, first.length, 'message ids are unique')
  t.notOk(other.some((message) => ids.has(message.messageId)), 'and never collide with another seed\'s')

  // each person draws from their own generator: more people leave the first ones unchanged
  const fewer = generateLog({ seed: 7, users: 60 }).filter((message) => !message.messageId.includes('-bot'))
  const ofFirst60 = first.filter((message) => /^sim-7-(\d+)-/.exec(message.messageId) && Number(/^sim-7-(\d+)-/.exec(message.messageId)![1]) < 60)
  t.same(fewer, ofFirst60, 'person i is the same with 60 or 120 people')

  for (let i = 1; i < first.length; i++) {
    if (Date.parse(first[i]!.timestamp) < Date.parse(first[i - 1]!.timestamp)) {
      t.fail(`log out of time order at ${i}`)
      break
    }
  }
})

t.test('distributions: acquisition in range, the engagement mix, funnels with drop-off', async (t) => {
  const options = resolveSimulationOptions({ seed: 1, users: 400 })
  const plans = planUsers(options)
  const log = generateLog(options)
  const expected = computeExpected(log, { timezone: options.timezone, cohortMonth: '2019-05' })

  t.same(Object.keys(expected.users.byAcquisitionMonth), ['2019-01', '2019-02', '2019-03', '2019-04', '2019-05', '2019-06', '2019-07', '2019-08', '2019-09', '2019-10', '2019-11', '2019-12'],
    'every month of 2019 has acquisitions, and no other month (in Europe/Berlin)')
  const tiers = Object.fromEntries(ENGAGEMENT_TIERS.map((tier) => [tier, plans.filter((plan) => plan.tier === tier).length]))
  for (const tier of ENGAGEMENT_TIERS) t.ok(tiers[tier]! >= 20, `engagement tier ${tier} present (${tiers[tier]})`)
  t.ok(tiers.Low! > tiers.Medium! && tiers.Medium! > tiers.High!, `most people are Low, fewest High: ${JSON.stringify(tiers)}`)
  const eventsOf = (tier: string) => {
    const ofTier = expected.perUser.filter((user) => plans.find((plan) => plan.canonicalId === user.id)!.tier === tier)
    return ofTier.reduce((sum, user) => sum + user.events, 0) / ofTier.length
  }
  t.ok(eventsOf('High') > 5 * eventsOf('Low'), `High people are far more active (${eventsOf('High').toFixed(0)} vs ${eventsOf('Low').toFixed(0)} events each)`)

  const [level1, level2, level3] = expected.funnel.steps.map((step) => step.users) as [number, number, number]
  t.ok(level1 >= level2 && level2 >= level3 && level3 > 0, `funnel drops off: ${level1} → ${level2} → ${level3}`)
  t.ok(level1 > level2 && level2 > level3, 'drop-off at each step')
  t.equal(level1, expected.users.byAcquisitionMonth['2019-05'], 'the May 2019 cohort: every user has a session')
  t.ok(level1 > 0, 'May 2019 cohort non-empty')
  t.equal(expected.funnel.stuckAtLevel2.length, level2 - level3)
  t.ok(expected.events.byName.click_event1! > expected.events.byName.custom_event2!, 'fewer custom_event2 than click_event1')

  // the answers agree with what the model meant to generate
  t.equal(expected.users.total, options.users, 'one user per simulated person')
  t.equal(expected.users.identified, plans.filter((plan) => plan.userId).length)
  t.ok(plans.some((plan) => plan.devices.length === 2), 'some people use a second device')
  let mismatches = 0
  for (const plan of plans) {
    const user = expected.perUser.find((candidate) => candidate.id === plan.canonicalId)
    if (!user) {
      t.fail(`no expected user for ${plan.canonicalId}`)
      continue
    }
    const planned = {
      sessions: plan.sessionStarts.length, channel: plan.channel, firstDevice: plan.devices[0]!.type, country: plan.country,
      firstSeen: new Date(plan.acquiredAt).toISOString(), linked: plan.devices.filter(() => plan.userId).map((device) => device.anonymousId).sort(),
    }
    const got = { sessions: user.sessions, channel: user.channel, firstDevice: user.firstDevice, country: user.country, firstSeen: user.firstSeen, linked: user.linkedAnonymousIds }
    if (JSON.stringify(planned) !== JSON.stringify(got)) {
      if (mismatches++ < 3) t.same(got, planned, `user ${plan.canonicalId} as planned`)
    }
  }
  t.equal(mismatches, 0, 'every user has the planned sessions, channel, devices, country and links')

  // sessions are well separated: no gap between 20 and 45 minutes inside a person's events
  const byPerson = new Map<string, number[]>()
  for (const message of log) {
    if (message.context.userAgent === GOOGLEBOT_USER_AGENT) continue
    const key = message.messageId.replace(/-\d+$/, '')
    const times = byPerson.get(key)
    if (times) times.push(Date.parse(message.timestamp))
    else byPerson.set(key, [Date.parse(message.timestamp)])
  }
  let badGaps = 0
  for (const times of byPerson.values()) {
    for (let i = 1; i < times.length; i++) {
      const gap = times[i]! - times[i - 1]!
      if (gap <= 0 || (gap > MAX_GAP_IN_SESSION_MS && gap < MIN_GAP_BETWEEN_SESSIONS_MS)) badGaps++
    }
  }
  t.equal(badGaps, 0, 'event gaps are ≤ 20 min (same session) or ≥ 45 min (next session), never in between')

  const bots = planBots(options)
  t.equal(bots.length, 8, '2% crawlers')
  t.equal(expected.users.botIds, bots.length, 'every crawler id seen')
  t.ok(expected.messages.bots > 0 && expected.events.byNameIncludingBots.$page! - expected.events.byName.$page! === expected.messages.bots, 'crawler page views counted only with bots')
})

t.test('acquisition stays in another range and timezone', async (t) => {
  const options = resolveSimulationOptions({ seed: 3, users: 200, from: '2019-03-25', to: '2019-04-02', timezone: 'America/New_York' })
  const start = localDayStart(options.timezone, dayOfDate(options.from)!)
  const end = localDayStart(options.timezone, dayOfDate(options.to)! + 1)
  const plans = planUsers(options)
  t.ok(plans.every((plan) => plan.acquiredAt >= start && plan.acquiredAt < end), 'every acquisition within the local days of the range')
  const expected = computeExpected(generateLog(options), { timezone: options.timezone, cohortMonth: '2019-03' })
  t.same(Object.keys(expected.users.byAcquisitionMonth), ['2019-03', '2019-04'])
  t.ok(expected.funnel.steps[0]!.users > 0)
})

t.test('property: for any seed, sessions come out as planned', async () => {
  fc.assert(fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 1, max: 15 }), (seed, users) => {
    const options = resolveSimulationOptions({ seed, users })
    const expected = computeExpected(generateLog(options), { timezone: options.timezone, cohortMonth: '2019-05' })
    const plans = planUsers(options)
    return expected.users.total === users &&
      plans.every((plan) => expected.perUser.find((user) => user.id === plan.canonicalId)?.sessions === plan.sessionStarts.length)
  }), { numRuns: 25 })
})

t.test('the simulator\'s device and channel rules agree with enrich on everything it generates', async (t) => {
  for (const agent of USER_AGENTS) {
    t.equal(deviceOf(agent.userAgent).type, agent.type, `enrich: ${agent.userAgent.slice(13, 40)} is ${agent.type}`)
    t.equal(deviceTypeOf(agent.userAgent), agent.type, `expected.ts: ${agent.userAgent.slice(13, 40)} is ${agent.type}`)
    t.equal(isBotUserAgent(agent.userAgent), false)
    t.equal(isBotAgent(agent.userAgent), false)
  }
  t.equal(deviceOf(GOOGLEBOT_USER_AGENT).type, 'bot')
  t.equal(deviceTypeOf(GOOGLEBOT_USER_AGENT), 'bot')
  t.equal(isBotUserAgent(GOOGLEBOT_USER_AGENT), true)

  const contexts: { context: LogMessage['context']; channel?: string }[] = [...ACQUISITION_LANDINGS, ...RETURN_LANDINGS].map((landing) => {
    const search = landing.utm ? `?utm_source=${landing.utm.source}&utm_medium=${landing.utm.medium}&utm_campaign=${landing.utm.campaign}` : undefined
    return { channel: landing.channel, context: { page: { url: `${SITE}/${search ?? ''}`, ...(landing.referrer ? { referrer: landing.referrer } : {}), ...(search ? { search } : {}) } } }
  })
  // and a few the model does not make, so the rules are not only right by accident
  for (const [url, referrer] of [
    [`${SITE}/`, 'https://mail.google.com/mail/u/0/'], [`${SITE}/`, 'https://www.google.co.uk/'], [`${SITE}/`, `${SITE}/pricing`],
    [`${SITE}/`, 'https://www.shop.example.com/cart'], [`${SITE}/?utm_source=twitter&utm_medium=social`, undefined],
    [`${SITE}/?utm_source=partner&utm_medium=cpc`, undefined], [`${SITE}/?utm_campaign=x`, 'https://news.example.org/a'],
    [`${SITE}/?utm_source=google&utm_medium=organic`, undefined], [`${SITE}/`, 'not a url'], [`${SITE}/?utm_medium=banner`, undefined],
  ] as const) contexts.push({ context: { page: { url, ...(referrer ? { referrer } : {}) } } })
  contexts.push({ context: { page: { url: `${SITE}/` }, campaign: { source: 'facebook', medium: 'paid_social' } } })
  contexts.push({ context: undefined })
  for (const { context, channel } of contexts) {
    const enrich = acquisitionOf(context).channel
    t.equal(channelOf(context), enrich, `expected.ts and enrich agree on ${JSON.stringify(context)}`)
    if (channel) t.equal(enrich, channel, `the landing is ${channel}`)
  }
  for (const network of COUNTRY_NETWORKS) t.equal(countryOfIp(network.network.split('/')[0]!.replace(/0$/, '1')), network.country)
  t.equal(countryOfIp('10.0.0.1'), undefined)
})

t.test('the collector accepts every message, and takes its timestamp as the event time', async (t) => {
  const log = generateLog({ seed: 9, users: 60 })
  const receivedAt = Date.parse('2025-01-01T00:00:00.000Z')
  let refused = 0
  for (const message of log) {
    const normalized = normalizeMessage(message, { receivedAt, clientIp: '127.0.0.1' })
    if (!normalized.ok || normalized.time !== Date.parse(message.timestamp) || normalized.message.context?.ip !== message.context.ip) {
      if (refused++ < 3) t.fail(`${message.messageId}: ${JSON.stringify(normalized).slice(0, 300)}`)
    }
  }
  t.equal(refused, 0, `${log.length} messages accepted unchanged in time`)
})

// ---------------------------------------------------------------------------------------------
// The expected-answer code on logs written by hand

let nextId = 0
const CHROME = USER_AGENTS[0]!.userAgent
function message(fields: Partial<LogMessage> & { at: string; ua?: string; ip?: string; url?: string; referrer?: string }): LogMessage {
  const { at, ua, ip, url, referrer, ...rest } = fields
  return {
    type: 'page', messageId: `m${String(nextId++).padStart(4, '0')}`, timestamp: at,
    context: { userAgent: ua ?? CHROME, ip: ip ?? '91.1.2.3', page: { url: url ?? `${SITE}/`, ...(referrer ? { referrer } : {}) } },
    ...rest,
  }
}
const track = (event: string, fields: Parameters<typeof message>[0]) => message({ type: 'track', event, ...fields })

t.test('expected answers of hand-written logs', async (t) => {
  const aprilEvening = [message({ anonymousId: 'a1', at: '2019-04-30T22:30:00.000Z', referrer: 'https://www.google.de/' })]
  const cases: { name: string; log: LogMessage[]; timezone?: string; check: (t: Test, answers: ReturnType<typeof computeExpected>) => void }[] = [
    {
      name: 'events at 2019-04-30T22:30Z are May in Europe/Berlin, April in UTC',
      log: aprilEvening,
      check: (t, answers) => {
        t.same(answers.users.byAcquisitionMonth, { '2019-05': 1 })
        t.same(answers.perUser[0]!.channel, 'organic_search')
        t.same(answers.funnel.steps.map((step) => step.users), [1, 0, 0])
        t.same(computeExpected(aprilEvening, { timezone: 'UTC', cohortMonth: '2019-05' }).users.byAcquisitionMonth, { '2019-04': 1 })
      },
    },
    {
      name: 'an identify merges two anonymous ids into one user',
      log: [
        message({ anonymousId: 'laptop', at: '2019-05-02T10:00:00.000Z', url: `${SITE}/?utm_source=google&utm_medium=cpc` }),
        message({ type: 'identify', anonymousId: 'laptop', userId: 'alice', at: '2019-05-02T10:05:00.000Z' }),
        message({ anonymousId: 'laptop', userId: 'alice', at: '2019-05-02T10:10:00.000Z' }),
        message({ anonymousId: 'phone', at: '2019-05-02T10:20:00.000Z', ua: USER_AGENTS[5]!.userAgent }),
        message({ type: 'identify', anonymousId: 'phone', userId: 'alice', at: '2019-05-02T10:21:00.000Z', ua: USER_AGENTS[5]!.userAgent }),
      ],
      check: (t, answers) => {
        t.equal(answers.users.total, 1)
        const alice = answers.perUser[0]!
        t.equal(alice.id, 'alice')
        t.same(alice.linkedAnonymousIds, ['laptop', 'phone'])
        t.equal(alice.events, 5)
        t.equal(alice.sessions, 1, 'both devices in one session: at most 30 minutes apart')
        t.equal(alice.channel, 'paid_search', 'acquisition from the first event, before the identify')
        t.equal(alice.firstDevice, 'desktop')
        t.equal(alice.device, 'mobile', 'the latest device')
        t.equal(alice.country, 'DE')
        t.same(answers.identity, { links: 2, refusedLinks: 0 })
        t.same(answers.events.byName, { $identify: 2, $page: 3 })
      },
    },
    {
      name: 'the first link wins; the later identify still counts for the user it names',
      log: [
        message({ anonymousId: 'a', at: '2019-05-03T10:00:00.000Z' }),
        message({ type: 'identify', anonymousId: 'a', userId: 'u1', at: '2019-05-03T10:01:00.000Z' }),
        message({ type: 'identify', anonymousId: 'a', userId: 'u2', at: '2019-05-03T10:02:00.000Z' }),
        message({ anonymousId: 'a', at: '2019-05-03T10:03:00.000Z' }),
      ],
      check: (t, answers) => {
        t.same(answers.perUser.map((user) => [user.id, user.events, user.linkedAnonymousIds]), [['u1', 3, ['a']], ['u2', 1, []]])
        t.same(answers.identity, { links: 1, refusedLinks: 1 })
      },
    },
    {
      name: 'an id used as a user id is never linked into another user',
      log: [
        message({ userId: 'bob', at: '2019-05-03T10:00:00.000Z' }),
        message({ type: 'identify', anonymousId: 'bob', userId: 'carol', at: '2019-05-03T10:01:00.000Z' }),
      ],
      check: (t, answers) => {
        t.same(answers.perUser.map((user) => user.id), ['bob', 'carol'])
        t.same(answers.identity, { links: 0, refusedLinks: 1 })
      },
    },
    {
      name: 'a crawler is stored but counted nowhere else',
      log: [
        message({ anonymousId: 'crawler', at: '2019-05-04T10:00:00.000Z', ua: GOOGLEBOT_USER_AGENT }),
        message({ anonymousId: 'crawler', at: '2019-05-04T10:00:05.000Z', ua: GOOGLEBOT_USER_AGENT }),
        message({ anonymousId: 'human', at: '2019-05-04T10:00:00.000Z' }),
      ],
      check: (t, answers) => {
        t.same(answers.perUser.map((user) => user.id), ['human'])
        t.equal(answers.messages.total, 3)
        t.equal(answers.messages.bots, 2)
        t.equal(answers.users.botIds, 1)
        t.equal(answers.sessions.total, 1)
        t.same(answers.events.byName, { $page: 1 })
        t.same(answers.events.byNameIncludingBots, { $page: 3 })
      },
    },
    {
      name: 'a gap of exactly 30 minutes joins, 31 minutes splits',
      log: [
        message({ anonymousId: 'joins', at: '2019-05-05T10:00:00.000Z' }),
        message({ anonymousId: 'joins', at: '2019-05-05T10:30:00.000Z' }),
        message({ anonymousId: 'joins', at: '2019-05-05T11:00:00.000Z' }),
        message({ anonymousId: 'splits', at: '2019-05-05T10:00:00.000Z' }),
        message({ anonymousId: 'splits', at: '2019-05-05T10:31:00.000Z' }),
        message({ anonymousId: 'splits', at: '2019-05-05T10:31:00.001Z' }),
      ],
      check: (t, answers) => {
        t.same(answers.perUser.map((user) => [user.id, user.sessions]), [['joins', 1], ['splits', 2]])
        t.same(answers.sessions, { total: 3, byStartMonth: { '2019-05': 3 } })
      },
    },
    {
      name: 'the May funnel: order, the 14-day window, the cohort',
      log: [
        // converts: session, click, custom
        message({ anonymousId: 'converts', at: '2019-05-10T10:00:00.000Z' }),
        track('click_event1', { anonymousId: 'converts', at: '2019-05-10T10:01:00.000Z' }),
        track('custom_event2', { anonymousId: 'converts', at: '2019-05-10T10:02:00.000Z' }),
        // clicks only
        message({ anonymousId: 'clicks', at: '2019-05-11T10:00:00.000Z' }),
        track('click_event1', { anonymousId: 'clicks', at: '2019-05-11T10:01:00.000Z' }),
        // custom_event2 before the click: not in order
        message({ anonymousId: 'wrong-order', at: '2019-05-12T10:00:00.000Z' }),
        track('custom_event2', { anonymousId: 'wrong-order', at: '2019-05-12T10:01:00.000Z' }),
        track('click_event1', { anonymousId: 'wrong-order', at: '2019-05-12T10:02:00.000Z' }),
        // custom_event2 20 days after the session the click was in: outside the window
        message({ anonymousId: 'too-late', at: '2019-05-13T10:00:00.000Z' }),
        track('click_event1', { anonymousId: 'too-late', at: '2019-05-13T10:01:00.000Z' }),
        track('custom_event2', { anonymousId: 'too-late', at: '2019-06-02T10:00:00.000Z' }),
        // custom_event2 13 days later, in a later session: inside the window
        message({ anonymousId: 'in-window', at: '2019-05-14T10:00:00.000Z' }),
        track('click_event1', { anonymousId: 'in-window', at: '2019-05-14T10:01:00.000Z' }),
        track('custom_event2', { anonymousId: 'in-window', at: '2019-05-27T10:00:00.000Z' }),
        // a session only
        message({ anonymousId: 'browses', at: '2019-05-15T10:00:00.000Z' }),
        // acquired in April: converts, but not in the May cohort
        message({ anonymousId: 'april', at: '2019-04-15T10:00:00.000Z' }),
        track('click_event1', { anonymousId: 'april', at: '2019-05-15T10:01:00.000Z' }),
        track('custom_event2', { anonymousId: 'april', at: '2019-05-15T10:02:00.000Z' }),
      ].sort((a, b) => a.timestamp.localeCompare(b.timestamp)),
      check: (t, answers) => {
        t.same(answers.funnel.steps.map((step) => step.users), [6, 5, 2])
        t.same(answers.funnel.stuckAtLevel2, ['clicks', 'too-late', 'wrong-order'])
        t.same(answers.funnelByAcquisitionMonth, { '2019-04': [1, 1, 1], '2019-05': [6, 5, 2] })
        t.equal(answers.perUser.find((user) => user.id === 'april')!.sessions, 2)
      },
    },
  ]
  for (const { name, log, check, timezone } of cases) {
    t.test(name, async (t) => check(t, computeExpected(log, { timezone: timezone ?? 'Europe/Berlin', cohortMonth: '2019-05' })))
  }
})

// ---------------------------------------------------------------------------------------------
// Sending, and the command

interface Received {
  path: string
  authorization: string | undefined
  body: { batch: { messageId: string }[]; sentAt?: unknown }
}

/** A stand-in for the collector's HTTP answers (refusals first), recording what it accepted. */
async function fakeCollector(t: Test, answers: number[]) {
  const accepted: Received[] = []
  let requests = 0
  let connections = 0
  const server = createServer(async (request: IncomingMessage, response) => {
    const chunks: Buffer[] = []
    for await (const chunk of request) chunks.push(chunk as Buffer)
    const status = answers[requests++] ?? 200
    if (status !== 200) {
      response.writeHead(status, status === 429 ? { 'retry-after': '0' } : {}).end(JSON.stringify({ error: 'busy', message: 'try again' }))
      return
    }
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Received['body']
    accepted.push({ path: request.url!, authorization: request.headers.authorization, body })
    response.writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ success: true, accepted: body.batch.length, duplicates: 0, rejected: [] }))
  })
  server.on('connection', () => connections++)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  server.keepAliveTimeout = 10_000
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, accepted, requests: () => requests, connections: () => connections }
}

t.test('live: batches of at most 100 with the write key, retried on 429 and 503, in log order', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'simulate-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const collector = await fakeCollector(t, [429, 503, 200, 503])
  const progress: string[] = []
  const result = await runSimulation({
    mode: 'live', simulation: { seed: 4, users: 25 }, url: collector.url, writeKey: 'wk_test', rate: 0,
    expected: join(dir, 'expected.json'), retryBaseMs: 1, progress: { write: (text: string) => progress.push(text) },
  })
  const log = generateLog({ seed: 4, users: 25 })
  const sent = collector.accepted.flatMap((request) => request.body.batch.map((message) => message.messageId))
  t.same(sent, log.map((message) => message.messageId), 'every message once, in log order, despite the refusals')
  t.ok(collector.accepted.every((request) => request.path === '/v1/batch' && request.body.batch.length <= 100))
  t.ok(collector.accepted.every((request) => request.authorization === `Basic ${Buffer.from('wk_test:').toString('base64')}`))
  t.ok(collector.accepted.every((request) => request.body.sentAt === undefined), 'no sentAt: timestamps are taken as sent')
  t.equal(result.accepted, log.length)
  t.equal(result.handled, log.length)
  t.equal(collector.requests(), collector.accepted.length + 3)
  t.ok(collector.connections() < collector.requests() / 2, `connections kept alive (${collector.connections()} for ${collector.requests()} requests)`)
  t.match(progress.at(-1)!, /\[simulate live\] [\d,]+\/[\d,]+ \(100\.0%\)\s+accepted/)
  const file = JSON.parse(await readFile(join(dir, 'expected.json'), 'utf8'))
  t.equal(file.expected.messages.total, log.length)
  t.same(Object.keys(file.model.engagementTiers), [...ENGAGEMENT_TIERS])
})

t.test('import: /v1/import with the API key; a slow rate makes small batches; a stop says how far it got', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'simulate-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const collector = await fakeCollector(t, [])
  const result = await runSimulation({
    mode: 'import', simulation: { seed: 4, users: 5 }, url: collector.url, apiKey: 'sk_test', expected: join(dir, 'e.json'), progress: { write: () => true },
  })
  t.ok(collector.accepted.every((request) => request.path === '/v1/import' && request.authorization === 'Bearer sk_test'))
  t.equal(result.accepted, result.messages)

  const slow = await fakeCollector(t, [])
  const controller = new AbortController()
  const stopping = runSimulation({
    mode: 'live', simulation: { seed: 4, users: 5 }, url: slow.url, writeKey: 'wk', rate: 50, expected: join(dir, 'e2.json'),
    signal: controller.signal, progress: { write: () => true },
  })
  while (slow.accepted.length < 2) await new Promise((resolve) => setTimeout(resolve, 20))
  controller.abort()
  const stopped = await stopping
  t.ok(slow.accepted.every((request) => request.body.batch.length === 5), 'at 50 messages/s, batches of 5')
  t.equal(stopped.stopped, true)
  t.equal(stopped.handled, slow.accepted.length * 5)
  t.ok(stopped.handled < stopped.messages)

  await t.rejects(runSimulation({ mode: 'live', simulation: { users: 1 }, url: collector.url, expected: join(dir, 'e3.json') }), { code: 'SEG_SIMULATE', message: /write key/ }, 'no write key')
  t.ok(new SimulateError('x') instanceof Error)
})

async function segstream(args: string[], env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await exec(process.execPath, [join(ROOT, 'bin/segstream.js'), ...args], { env: cleanEnv(env), cwd: ROOT })
    return { code: 0, stdout, stderr }
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string }
    return { code: e.code, stdout: e.stdout, stderr: e.stderr }
  }
}

t.test('segstream simulate --mode file writes the NDJSON and the expected answers, the same each time', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'simulate-cli-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const args = (name: string) => ['simulate', '--mode', 'file', '--seed', '5', '--users', '40', '--timezone', 'Europe/Berlin', '--out', join(dir, `${name}.ndjson`), '--expected', join(dir, `${name}.json`)]
  const first = await segstream(args('a'))
  t.equal(first.code, 0, first.stderr)
  t.match(first.stdout, /simulated 40 people and 1 crawler acquired 2019-01-01\.\.2019-12-31 \(Europe\/Berlin, seed 5\)/)
  t.match(first.stdout, /2019-05 funnel \d+ → \d+ → \d+/)
  const lines = (await readFile(join(dir, 'a.ndjson'), 'utf8')).trimEnd().split('\n')
  const messages = lines.map((line) => JSON.parse(line) as LogMessage)
  const file = JSON.parse(await readFile(join(dir, 'a.json'), 'utf8'))
  t.equal(file.generatedBy, 'segstream simulate')
  t.equal(file.options.seed, 5)
  t.equal(file.options.cohortMonth, '2019-05')
  t.equal(messages.length, file.expected.messages.total)
  t.equal(file.expected.users.total, 40)
  t.same(file.expected, computeExpected(messages, { timezone: 'Europe/Berlin', cohortMonth: '2019-05' }), 'the answers are those of the file\'s log')
  t.ok(messages.every((message) => message.messageId.startsWith('sim-5-') && typeof message.timestamp === 'string' && message.anonymousId))

  const second = await segstream(args('b'))
  t.equal(second.code, 0, second.stderr)
  t.equal(await readFile(join(dir, 'b.ndjson'), 'utf8'), await readFile(join(dir, 'a.ndjson'), 'utf8'), 'same NDJSON byte for byte')
  t.equal(await readFile(join(dir, 'b.json'), 'utf8'), await readFile(join(dir, 'a.json'), 'utf8'), 'same expected answers byte for byte')
})

t.test('segstream simulate names a bad flag', async (t) => {
  // through the command: exit code 1, one line, no stack trace
  const viaCommand: [string[], RegExp][] = [
    [['--users', 'many'], /^segstream: --users="many" is invalid: expected an integer from 1 to 100000\n$/],
    [['--frobnicate'], /^segstream: unknown flag --frobnicate for simulate/],
    [['--timezone', 'Mars/Olympus'], /^segstream: --timezone="Mars\/Olympus" is invalid: expected an IANA timezone/],
    [['--from', '2019-06-01', '--to', '2019-05-01'], /^segstream: --to="2019-05-01" is invalid: expected a date not before --from 2019-06-01/],
    [['--mode', 'live', '--users', '1'], /^segstream: --write-key="" is invalid: expected the project's write key/],
  ]
  for (const [args, expected] of viaCommand) {
    const result = await segstream(['simulate', ...args])
    t.equal(result.code, 1, args.join(' '))
    t.match(result.stderr, expected, args.join(' '))
  }
  const help = await segstream(['simulate', '--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, /--mode file\|import\|live/)

  // the rest of the flag checks, in this process
  const parsed: [string[], RegExp][] = [
    [['--seed=-3'], /--seed="-3" is invalid: expected an integer from 0 to 4294967295/],
    [['--seed'], /--seed needs a value/],
    [['--mode', 'stream'], /--mode="stream" is invalid: expected one of file, import, live/],
    [['--bots', '2'], /--bots="2" is invalid: expected a number from 0 to 1/],
    [['--rate', 'fast'], /--rate="fast" is invalid: expected a number from 0 to 1000000/],
    [['--cohort', 'May'], /--cohort="May" is invalid: expected a month YYYY-MM/],
    [['--mode', 'live', '--batch-size', '500'], /--batch-size="500" is invalid: expected an integer from 1 to 100/],
    [['--mode', 'import', '--batch-size', '20000'], /--batch-size="20000" is invalid: expected an integer from 1 to 10000/],
    [['--url', 'localhost:8080'], /--url="localhost:8080" is invalid: expected an http:\/\/ or https:\/\/ URL/],
    [['extra'], /simulate takes no positional arguments, got extra/],
  ]
  for (const [args, expected] of parsed) t.throws(() => parseSimulateArgs(args, {}), { message: expected }, args.join(' '))
  t.throws(() => resolveSimulationOptions({ from: '2019-02-30' }), { option: 'from', message: /from="2019-02-30" is invalid: expected a date YYYY-MM-DD/ })
  t.throws(() => resolveSimulationOptions({ users: 0 }), { option: 'users', message: /users=0 is invalid/ })

  const defaults = parseSimulateArgs([], { SEGSTREAM_URL: 'http://gateway:9000', SEGSTREAM_WRITE_KEY: 'wk_env' })
  t.equal(defaults.mode, 'file')
  t.equal(defaults.url, 'http://gateway:9000')
  t.equal(defaults.writeKey, 'wk_env')
  t.equal(parseSimulateArgs([], {}, 8181).url, 'http://localhost:8181')
})

t.test('--until ends the log at the end of that local day, a prefix of the whole log', async (t) => {
  const whole = generateLog({ seed: 3, users: 60 })
  const cut = generateLog({ seed: 3, users: 60, until: '2019-06-30' })
  const end = Date.parse('2019-06-30T22:00:00Z') // midnight in Europe/Berlin (summer time)
  t.ok(cut.length > 0 && cut.length < whole.length, `some messages, not all (${cut.length} of ${whole.length})`)
  t.ok(cut.every((message) => Date.parse(message.timestamp) < end), 'none after the last local day')
  t.same(cut, whole.slice(0, cut.length), 'the same messages as the whole log, up to there')
  t.ok(Date.parse(whole[cut.length]!.timestamp) >= end, 'and the next one of the whole log is after it')
  const answers = computeExpected(cut, { timezone: 'Europe/Berlin', cohortMonth: '2019-05', engagementAsOf: end - 1 })
  t.equal(Object.values(answers.users.byEngagement).reduce((a, b) => a + b, 0), answers.users.total, 'every user has one engagement level')
  t.throws(() => generateLog({ until: '2018-12-31' }), /until/, 'a last day before --from is refused, naming the option')
  t.same(parseSimulateArgs(['--until', '2019-12-31']).simulation?.until, '2019-12-31', '--until reaches the options')
})
