import { jetstreamManager } from '@nats-io/jetstream'
import t, { type Test } from 'tap'
import { referenceFunnel, type ReferenceEvent } from './reference/funnel-reference.ts'
import { publishControl } from '../operators/runtime/control.ts'
import type { FunnelDefinition } from '../schemas/funnel.ts'
import { FUNNEL_STEPS } from '../simulate/expected.ts'
import { generateLog } from '../simulate/model.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
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

async function importAll(system: System, apiKey: string, messages: readonly object[]) {
  for (let i = 0; i < messages.length; i += 200) {
    const response = await system.app.inject({
      method: 'POST', url: '/v1/import', headers: { authorization: `Bearer ${apiKey}` }, payload: { batch: messages.slice(i, i + 200) },
    })
    if (response.statusCode !== 200) throw new Error(`import answered ${response.statusCode}: ${response.body}`)
  }
}

/** A funnel created as the API creates it: its row with a pending backfill, then its control message. */
async function createFunnel(system: System, project: string, definition: FunnelDefinition, backfill: boolean) {
  await system.store.pool.query(
    `INSERT INTO funnels (project, id, name, definition, version, backfill) VALUES ($1, $2, $3, $4::jsonb, 1, $5::jsonb)`,
    [project, definition.id, definition.name, JSON.stringify(definition), backfill ? JSON.stringify({ state: 'pending', done: 0, total: 0 }) : null],
  )
  await publishControl(system.publisher, {
    project, stages: ['enriched', 'sessions'], keyGroups: KEY_GROUPS, time: Date.now(), control: { stepId: 'funnel', name: definition.id, version: 1, definition },
  })
}

interface Row { id: string; level: number; status: string; times: string }

const progressOf = async (system: System, project: string, funnelId: string): Promise<Map<string, Row>> => new Map((await system.store.pool.query<Row>(
  `SELECT canonical_id AS id, level, status, array_to_string(ARRAY(SELECT round(extract(epoch FROM x) * 1000)::bigint FROM unnest(step_times) x), ',') AS times FROM funnel_progress
    WHERE project = $1 AND funnel_id = $2 AND funnel_version = 1 AND status <> 'none' ORDER BY 1`, [project, funnelId])).rows.map((row) => [row.id, row]))

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

/** Each user's level by the reference funnel over what the tables hold: events by canonical id, session starts. */
async function referenceOf(system: System, project: string): Promise<Map<string, { level: number; times: string }>> {
  const events = await system.store.pool.query<{ id: string; message_id: string; t: Date; name: string }>('SELECT canonical_id AS id, message_id, event_time AS t, name FROM events WHERE project = $1', [project])
  const sessions = await system.store.pool.query<{ id: string; session_id: string; t: Date }>(`SELECT canonical_id AS id, session_id, started_at AS t FROM sessions WHERE project = $1 AND status <> '$session_retract'`, [project])
  const byUser = new Map<string, ReferenceEvent[]>()
  const add = (id: string, event: ReferenceEvent) => { let list = byUser.get(id); if (!list) byUser.set(id, (list = [])); list.push(event) }
  for (const row of events.rows) add(row.id, { time: row.t.getTime(), id: row.message_id, name: row.name, properties: {} })
  for (const row of sessions.rows) add(row.id, { time: row.t.getTime(), id: `$session_start:${row.session_id}`, name: '$session_start', properties: {}, session: true })
  const results = new Map<string, { level: number; times: string }>()
  for (const [id, list] of byUser) {
    const result = referenceFunnel(definitionOf('reference'), list, Number.POSITIVE_INFINITY)
    if (result.level > 0) results.set(id, { level: result.level, times: result.stepTimes.join(',') })
  }
  return results
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
    let previous = ''
    await eventually('the first funnel settled', async () => {
      const now = JSON.stringify([...(await progressOf(system, project.id, 'before'))])
      const settled = now === previous && now !== '[]'
      previous = now
      if (!settled) await new Promise((resolve) => setTimeout(resolve, 2_000))
      return settled
    }, 180_000)

    await createFunnel(system, project.id, definitionOf('after'), true)
    await importAll(system, apiKey, [{ ...switchUser, type: 'track', messageId: 'switch-2', event: FUNNEL_STEPS[1], timestamp: new Date(last + 120_000).toISOString() }])

    const backfill = async () => (await system.store.pool.query<{ backfill: { state: string; done: number; total: number; seeds?: number; error?: string; table?: unknown; late?: number } }>(
      'SELECT backfill FROM funnels WHERE project = $1 AND id = $2', [project.id, 'after'])).rows[0]!.backfill
    await eventually('the backfill done', async () => {
      const state = (await backfill()).state
      if (state === 'failed') throw new Error(`backfill failed: ${(await backfill()).error}`)
      return state === 'done'
    }, 180_000)
    const done = await backfill()
    t.ok(done.total > log.length, `it read the history (${done.done} messages)`)
    t.equal(done.done, done.total, 'done == total')
    t.ok((done.seeds ?? 0) > 0, `users seeded (${done.seeds})`)
    t.equal(done.table, undefined, 'the streams hold the whole history: no table read')
    t.comment(`backfill: ${JSON.stringify(done)}`)

    // the truth: the reference funnel over what the tables hold (events by canonical id, session starts)
    const reference = await referenceOf(system, project.id)
    // the seeds are applied once every user of the history has a row in the backfilled funnel and the rows stop changing
    let seen = ''
    await eventually('the backfilled funnel settled', async () => {
      const now = JSON.stringify([...(await progressOf(system, project.id, 'after'))])
      const settled = now === seen && (await progressOf(system, project.id, 'after')).has('switch-user')
      seen = now
      if (!settled) await new Promise((resolve) => setTimeout(resolve, 2_000))
      return settled
    }, 60_000)
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
