import { jetstreamManager } from '@nats-io/jetstream'
import t, { type Test } from 'tap'
import type { FunnelDefinition } from '../schemas/funnel.ts'
import { FUNNEL_STEPS } from '../simulate/expected.ts'
import { generateLog } from '../simulate/model.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { backfillDone, createFunnel, importAll, progressOf, referenceFromTables, settled, type ProgressRow } from './harness/funnel-backfill.ts'
import { eventually, startSystem, type System } from './harness/system.ts'

// Backfill end to end (docs/funnels.md, "Backfill"): the simulator's users go through the real
// pipeline with one funnel defined before the data; the same funnel under another id is created
// afterwards (a funnels row with a pending backfill and its control message, as the API does). The
// backfill worker, running beside the funnel step, replays the history and seeds every user; the
// second funnel's funnel_progress must then equal the first's, user by user, and the backfill must
// end done with done == total. A user with step 1 before the creation and step 2 after counts once,
// at level 2.

const TIMEZONE = 'Europe/Berlin'
const KEY_GROUPS = 8
const DAY = 86_400_000
const STEPS = ['enrich', 'sessionize', 'funnel', 'sink-events', 'sink-sessions', 'sink-funnels']

const definitionOf = (id: string): FunnelDefinition => ({ id, name: 'Session, click, conversion', mode: 'sequential', windowMs: 14 * DAY, steps: FUNNEL_STEPS.map((event) => ({ event })) })

type Row = ProgressRow

/** DEBUG_BACKFILL=1: the users whose backfilled level differs from the reference's. */
async function debugBackfill(t: Test, system: System, project: string, reference: Map<string, { level: number; times: string }>) {
  const after = await progressOf(system, project, 'after')
  const before = await progressOf(system, project, 'before')
  for (const id of new Set([...after.keys(), ...reference.keys()])) {
    if (after.get(id)?.times !== reference.get(id)?.times) t.comment(`${id}: reference ${JSON.stringify(reference.get(id))}, before ${JSON.stringify(before.get(id))}, after ${JSON.stringify(after.get(id))}`)
  }
  const jsm = await jetstreamManager(system.nc)
  for (const stream of ['SEG_LATE', 'SEG_BACKFILL', 'SEG_DLQ']) t.comment(`${stream}: ${(await jsm.streams.info(stream)).state.messages} messages`)
}

for (const [index, target] of DATABASE_TARGETS.entries()) {
  if (process.env.ONLY_TARGET && target.name !== process.env.ONLY_TARGET) continue
  t.test(`a funnel created after the data gives the same answer as one created before (backfill), on ${target.name}`, async (t) => {
    const users = index === 0 ? 80 : 30
    const log = generateLog({ seed: 21 + index, users, timezone: TIMEZONE })
    const system = await startSystem({ database: target.start, poolSize: target.poolSize, keyGroups: KEY_GROUPS })
    t.teardown(() => system.close())
    const { project, apiKey } = await system.createProject('sim', TIMEZONE)
    await system.startOperators(STEPS)

    await createFunnel(system, project.id, definitionOf('before'), false)
    // the switch-over user: a session (step 1) in the history, its click (step 2) after the creation
    const last = Math.max(...log.map((message) => Date.parse((message as { timestamp: string }).timestamp)))
    const switchUser = { userId: 'switch-user', context: { page: { path: '/', url: 'https://example.com/', title: 'Home' } } }
    await importAll(system, apiKey, [...log, { ...switchUser, type: 'page', messageId: 'switch-1', name: 'Home', timestamp: new Date(last + 60_000).toISOString() }])
    const eventRows = async () => Number((await system.store.pool.query<{ n: string }>('SELECT count(*) AS n FROM events WHERE project = $1', [project.id])).rows[0]!.n)
    await eventually('every event stored', async () => (await eventRows()) === log.length + 1, 180_000)
    // the funnel step has applied the history when its progress stops changing
    await settled(system, project.id, 'before', 'the first funnel settled', 180_000)

    await createFunnel(system, project.id, definitionOf('after'), true)
    await importAll(system, apiKey, [{ ...switchUser, type: 'track', messageId: 'switch-2', event: FUNNEL_STEPS[1], timestamp: new Date(last + 120_000).toISOString() }])

    const done = await backfillDone(system, project.id, 'after', 180_000)
    t.ok(done.total > log.length, `it read the history (${done.done} messages)`)
    t.equal(done.done, done.total, 'done == total')
    t.ok((done.seeds ?? 0) > 0, `users seeded (${done.seeds})`)
    t.equal(done.table, undefined, 'the streams hold the whole history: no table read')
    t.comment(`backfill: ${JSON.stringify(done)}`)

    // the truth: the reference funnel over what the tables hold (events by canonical id, session starts)
    const reference = await referenceFromTables(system, project.id, definitionOf('reference'))
    // the seeds are applied once every user of the history has a row in the backfilled funnel and the rows stop changing
    await settled(system, project.id, 'after', 'the backfilled funnel settled', 60_000, (rows) => rows.has('switch-user'))
    const before = await progressOf(system, project.id, 'before')
    const afterRows = await progressOf(system, project.id, 'after')
    const off = (rows: Map<string, Row>) => [...new Set([...rows.keys(), ...reference.keys()])].filter((id) => ((rows.get(id)?.level ?? 0) > 0 ? rows.get(id)!.times : undefined) !== reference.get(id)?.times).sort()
    const jsm = await jetstreamManager(system.nc)
    t.comment(`off the reference (level or step times): backfilled ${off(afterRows).length} [${off(afterRows).join(', ')}] (history inputs refused as late: ${done.late ?? 0}), defined before the data ${off(before).length} [${off(before).join(', ')}] (${(await jsm.streams.info('SEG_LATE')).state.messages} inputs refused as late)`)
    if (process.env.DEBUG_BACKFILL && off(afterRows).length > 0) await debugBackfill(t, system, project.id, reference)
    // a fast import puts the streams only roughly in event time (enrich's lanes days apart, sessions re-announced at identity
    // merges): the live step refuses what comes more than a day behind its watermark, the backfill what comes a month behind
    t.ok(off(afterRows).length <= off(before).length, 'the backfilled funnel is at least as right as the one defined before the data')
    t.ok(off(afterRows).length <= Math.ceil(reference.size / 20), `and right for all but a few users of ${reference.size} (the ones with history refused as late)`)
    const after = await progressOf(system, project.id, 'after')
    t.ok(after.size > users / 2, `most users are in the funnel (${after.size})`)
    t.ok([...after.values()].some((row) => row.level === 3) && [...after.values()].some((row) => row.level === 2), 'some convert, some stop at step 2')
    const switched = after.get('switch-user')
    t.equal(switched?.level, 2, 'step 1 before the creation, step 2 after: level 2')
    t.equal(switched?.times.split(',').length, 2, 'two step times, one each')
    const rows = await system.store.pool.query('SELECT count(*) AS n FROM funnel_progress WHERE project = $1 AND funnel_id = $2 AND canonical_id = $3', [project.id, 'after', 'switch-user'])
    t.equal(Number(rows.rows[0].n), 1, 'one row for the user: counted once')
  })
}
