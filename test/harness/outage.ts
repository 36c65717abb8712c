import type { Test } from 'tap'
import { DATABASE_TARGETS } from './postgres.ts'
import { eventually, startSystem } from './system.ts'

/**
 * The database goes away for `outageMs` while events keep arriving through the
 * collector; afterwards every event is stored once and every session counts
 * each event once. Shared by the short test and make test-chaos (one minute).
 */
export async function databaseOutageUnderLoad(t: Test, outageMs: number) {
  const target = DATABASE_TARGETS[0]
  const system = await startSystem({ database: target.start, poolSize: target.poolSize, keyGroups: 8 })
  t.teardown(() => system.close())
  const { project } = await system.createProject('outage')
  await system.startOperators()
  const T0 = Date.parse('2019-05-01T08:00:00Z')
  let sent = 0
  let stopped = false
  const users = 50
  // load: a batch of 50 events every 100 ms, a user's events 1 minute apart (one session each)
  const load = (async () => {
    for (let round = 0; !stopped; round++) {
      const batch = Array.from({ length: 50 }, (_, i) => ({
        type: 'track', event: 'click_event1', messageId: `m-${round}-${i}`, anonymousId: `user-${i % users}`,
        timestamp: new Date(T0 + round * 60_000).toISOString(),
      }))
      const response = await system.app.inject({ method: 'POST', url: '/v1/batch', payload: { writeKey: project.writeKeys[0], batch } })
      if (response.statusCode !== 200) throw new Error(`collector: ${response.statusCode} ${response.body}`)
      sent += 50
      await new Promise((r) => setTimeout(r, 100))
    }
  })()
  // a failure of the load is reported where it is awaited, not as an unhandled rejection mid-test
  load.catch(() => undefined)
  await eventually('some events stored before the outage', async () => (await system.store.countEvents('outage')) > 200)
  await system.database.stop()
  const atStop = sent
  await new Promise((r) => setTimeout(r, outageMs))
  t.ok(sent - atStop > 0, `the collector kept accepting during the outage (${sent - atStop} events)`)
  await system.database.restart()
  await new Promise((r) => setTimeout(r, 1_000))
  stopped = true
  await load
  // a day later each user comes back: event time moves past every first session's gap, closing it with its totals
  const later = Array.from({ length: users }, (_, i) => ({ type: 'track', event: 'custom_event2', messageId: `back-${i}`, anonymousId: `user-${i}`, timestamp: new Date(T0 + 86_400_000 * 2).toISOString() }))
  const back = await system.app.inject({ method: 'POST', url: '/v1/batch', payload: { writeKey: project.writeKeys[0], batch: later } })
  t.equal(back.statusCode, 200)
  const closed = async () => (await system.store.pool.query<{ sessions: string; events: string | null }>(
    `SELECT count(*) AS sessions, sum(events) AS events FROM sessions WHERE project = 'outage' AND status = '$session_end'`)).rows[0]!
  await eventually('every event stored', async () => (await system.store.countEvents('outage')) === sent + users, 120_000)
  await eventually('every first session closed', async () => Number((await closed()).sessions) === users, 120_000)
  await new Promise((r) => setTimeout(r, 500))
  t.equal(await system.store.countEvents('outage'), sent + users, `nothing lost, nothing doubled: ${sent + users} events, as many rows`)
  t.equal(Number((await closed()).events), sent, 'the closed sessions count every event of the load once')
  const totals = await system.store.sessionTotals('outage')
  t.equal(totals.sessions, 2 * users, 'two sessions per user: the load, and the return')
  t.equal(totals.users, users)
}
