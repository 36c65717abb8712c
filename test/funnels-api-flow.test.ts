import t from 'tap'
import { computeExpected, FUNNEL_STEPS, type ExpectedAnswers } from '../simulate/expected.ts'
import { generateLog } from '../simulate/model.ts'
import { startPostgres } from './harness/postgres.ts'
import { eventually, startSystem } from './harness/system.ts'

// Step 3 of the product's flow through the real pipeline, driven by the API alone: the marketer
// defines the funnel $session_start → click_event1 → custom_event2 (14 days) restricted to users
// acquired in May 2019 with POST /v1/funnels, the simulator's 2019 history is imported (collector
// → enrich → sessionize → funnel → sink-funnels, profile → sink-profiles), and the result and the
// level-2 audience must be the simulator's own answers (simulate/expected.ts, which imports
// nothing from operators/). On PostgreSQL; test/funnels-api.test.ts covers both targets.

const TIMEZONE = 'Europe/Berlin'
const KEY_GROUPS = 4
const DAY = 86_400_000
const STEPS = ['enrich', 'sessionize', 'profile', 'funnel', 'sink-profiles', 'sink-funnels']

t.test('the May 2019 funnel and its users stuck at level 2, from the API, equal the simulator\'s answers', async (t) => {
  const log = generateLog({ seed: 7, users: 120, timezone: TIMEZONE })
  const expected: ExpectedAnswers = computeExpected(log, { timezone: TIMEZONE, cohortMonth: '2019-05', funnelWindowMs: 14 * DAY })
  const system = await startSystem({ database: startPostgres, poolSize: 4, keyGroups: KEY_GROUPS })
  t.teardown(() => system.close())
  const { apiKey } = await system.createProject('sim', TIMEZONE)
  const headers = { authorization: `Bearer ${apiKey}` }
  await system.startOperators(STEPS)

  const created = await system.app.inject({
    method: 'POST', url: '/v1/funnels', headers,
    payload: {
      id: 'may', name: 'May 2019 cohort', windowMs: 14 * DAY, steps: FUNNEL_STEPS.map((event) => ({ event })),
      segment: { profile: [{ field: 'acquisition_month', value: expected.funnel.cohort }] },
    },
  })
  if (created.statusCode !== 201) throw new Error(`POST /v1/funnels answered ${created.statusCode}: ${created.body}`)

  for (let i = 0; i < log.length; i += 200) {
    const response = await system.app.inject({ method: 'POST', url: '/v1/import', headers, payload: { batch: log.slice(i, i + 200) } })
    if (response.statusCode !== 200) throw new Error(`import answered ${response.statusCode}: ${response.body}`)
  }

  const wanted = expected.funnel.steps.map((step) => step.users)
  let reached: number[] = []
  const result = async () => {
    const response = await system.app.inject({ url: '/v1/funnels/may/result', headers })
    if (response.statusCode !== 200) throw new Error(`result answered ${response.statusCode}: ${response.body}`)
    return response.json() as { steps: { reached: number; dropOff: number; inProgress: number; dropped: number }[] }
  }
  try {
    await eventually('the API\'s funnel equals the simulator\'s', async () => {
      reached = (await result()).steps.map((step) => step.reached)
      return JSON.stringify(reached) === JSON.stringify(wanted)
    }, Number(process.env.SETTLE_MS ?? 180_000))
  } finally {
    t.same(reached, wanted, `users reaching each step, acquired ${expected.funnel.cohort} (${wanted.join(' → ')})`)
  }
  t.ok(wanted[2]! > 0 && wanted[1]! > wanted[2]!, 'some convert, some stop at level 2')

  const stuck: string[] = []
  let cursor: string | undefined
  do {
    const page = (await system.app.inject({ url: `/v1/funnels/may/audiences?level=2&limit=5${cursor ? `&cursor=${cursor}` : ''}`, headers })).json()
    stuck.push(...page.users.map((user: { canonicalId: string }) => user.canonicalId))
    cursor = page.nextCursor ?? undefined
  } while (cursor)
  t.same(stuck, [...expected.funnel.stuckAtLevel2].sort(), `the users stuck at level 2 (${stuck.length}), paged`)

  const csv = await system.app.inject({ url: '/v1/funnels/may/audiences?level=2&format=csv', headers })
  t.same(csv.body.trimEnd().split('\r\n').slice(1).map((line) => line.split(',')[0]), stuck, 'the same users as CSV')
  const counts = (await result()).steps[1]!
  t.equal(counts.inProgress + counts.dropped, stuck.length, 'level 2 split into in progress and dropped')
  t.equal(counts.dropOff, stuck.length)
})
