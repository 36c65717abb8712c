import t from 'tap'
import { claimBackfill, reportBackfill } from '../operators/funnel/backfill-store.ts'
import { createLogger } from '../config/logger.ts'
import { openStore } from '../store/store.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'

// Who runs a backfill (docs/funnels.md, "Backfill"): a pending row is taken by one worker; a running
// row whose worker went silent is taken over (a worker that died: the run is done again); a run
// overtaken by a newer version or another owner writes nothing more.

const definition = { id: 'f', name: 'f', steps: [{ event: 'a' }, { event: 'b' }] }

for (const target of DATABASE_TARGETS) {
  if (process.env.ONLY_TARGET && target.name !== process.env.ONLY_TARGET) continue
  t.test(`backfill claims and progress, on ${target.name}`, async (t) => {
    const database = await target.start()
    const store = await openStore({ url: database.url, poolSize: target.poolSize, logger: createLogger('silent') })
    t.teardown(async () => { await store.close(); await database.close() })
    await store.migrate()
    const pool = store.pool
    const insert = (id: string, backfill: object | null, deleted = false) => pool.query(
      `INSERT INTO funnels (project, id, name, definition, version, backfill, deleted_at) VALUES ('p', $1, $1, $2::jsonb, 1, $3::jsonb, $4)`,
      [id, JSON.stringify({ ...definition, id }), backfill === null ? null : JSON.stringify(backfill), deleted ? new Date() : null],
    )
    const backfillOf = async (id: string) => (await pool.query<{ backfill: Record<string, unknown> | null }>(`SELECT backfill FROM funnels WHERE project = 'p' AND id = $1`, [id])).rows[0]!.backfill
    await insert('none', null)
    await insert('deleted', { state: 'pending', done: 0, total: 0 }, true)
    await insert('finished', { state: 'done', done: 5, total: 5 })
    t.equal(await claimBackfill(pool, 'w1', 1_000_000, 30_000), undefined, 'nothing pending: nothing claimed (no backfill asked, deleted, done)')

    await insert('f', { state: 'pending', done: 0, total: 0 })
    const claimed = await claimBackfill(pool, 'w1', 1_000_000, 30_000)
    t.same(claimed, { project: 'p', funnelId: 'f', version: 1, definition: { ...definition, id: 'f' } })
    t.match(await backfillOf('f'), { state: 'running', owner: 'w1', heartbeat: 1_000_000 })
    t.equal(await claimBackfill(pool, 'w2', 1_010_000, 30_000), undefined, 'a running row whose worker reported 10 s ago is left to it')
    t.ok(await reportBackfill(pool, claimed!, 'w1', { state: 'running', done: 3, total: 9, owner: 'w1', heartbeat: 1_020_000 }), 'its owner reports progress')
    t.match(await backfillOf('f'), { state: 'running', done: 3, total: 9 })

    const takenOver = await claimBackfill(pool, 'w2', 1_060_000, 30_000)
    t.equal(takenOver?.funnelId, 'f', 'silent for 40 s: another worker takes it over, from the start')
    t.match(await backfillOf('f'), { state: 'running', done: 0, owner: 'w2' })
    t.notOk(await reportBackfill(pool, claimed!, 'w1', { state: 'done', done: 9, total: 9, owner: 'w1' }), 'the first worker, back, writes nothing more')
    t.match(await backfillOf('f'), { owner: 'w2', state: 'running' })

    // the API changes the funnel: version 2, pending again
    await pool.query(`UPDATE funnels SET version = 2, backfill = '{"state":"pending","done":0,"total":0}'::jsonb, updated_at = now() WHERE project = 'p' AND id = 'f'`)
    t.notOk(await reportBackfill(pool, takenOver!, 'w2', { state: 'running', done: 1, total: 9, owner: 'w2' }), 'a run of version 1 writes nothing on version 2')
    const second = await claimBackfill(pool, 'w2', 1_070_000, 30_000)
    t.equal(second?.version, 2, 'version 2 is claimed afresh')
    t.ok(await reportBackfill(pool, second!, 'w2', { state: 'done', done: 9, total: 9, owner: 'w2', seeds: 4 }))
    t.match(await backfillOf('f'), { state: 'done', done: 9, total: 9, seeds: 4 })
    t.equal(await claimBackfill(pool, 'w3', 2_000_000, 30_000), undefined, 'a finished backfill is not taken again')
  })
}
