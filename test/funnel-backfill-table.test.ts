import { jetstreamManager } from '@nats-io/jetstream'
import t from 'tap'
import type { FunnelDefinition } from '../schemas/funnel.ts'
import { FUNNEL_STEPS } from '../simulate/expected.ts'
import { generateLog } from '../simulate/model.ts'
import { backfillDone, createFunnel, importAll, progressOf, referenceFromTables, settled, type ProgressRow, type ReferenceRow } from './harness/funnel-backfill.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'
import { eventually, startSystem } from './harness/system.ts'

// Backfill beyond the streams' retention (docs/funnels.md, "Backfill"): the simulator's users go
// through the real pipeline with two funnels defined before the data; then the older half of
// SEG_ENRICHED and SEG_SESSIONS is purged (as retention would remove it), and the same funnels are
// created again under other ids. Their backfill reads what the streams no longer hold from the
// events and sessions tables and the rest from the streams: every user must end where the funnel
// defined before the data ends (and the reference over the tables), counted once, with a filter on
// `$device` and a breakdown by `$channel` read from the rows' enrich context.

const TIMEZONE = 'Europe/Berlin'
const KEY_GROUPS = 8
const DAY = 86_400_000
const STEPS = ['enrich', 'sessionize', 'funnel', 'sink-events', 'sink-sessions', 'sink-funnels']

/** Session, click, conversion: events and sessions. */
const sessionsFunnel = (id: string): FunnelDefinition => ({ id, name: 'Session, click, conversion', windowMs: 14 * DAY, steps: FUNNEL_STEPS.map((event) => ({ event })) })
/** Events only, a filter and a breakdown on enrich's context. */
const desktopFunnel = (id: string): FunnelDefinition => ({
  id, name: 'Desktop click, conversion', windowMs: 14 * DAY,
  steps: [{ event: FUNNEL_STEPS[1], filters: [{ property: '$device', value: 'desktop' }] }, { event: FUNNEL_STEPS[2] }], breakdown: { property: '$channel' },
})

/** The users whose result (level, step times, breakdown) differs from the reference's. */
const offReference = (rows: Map<string, ProgressRow>, reference: Map<string, ReferenceRow>, breakdown: boolean) =>
  [...new Set([...rows.keys(), ...reference.keys()])].filter((id) => {
    const row = rows.get(id)
    const expected = reference.get(id)
    if ((row?.times ?? undefined) !== expected?.times) return true
    return breakdown && (row?.breakdown ?? undefined) !== expected?.breakdown
  }).sort()

for (const [index, target] of DATABASE_TARGETS.entries()) {
  if (process.env.ONLY_TARGET && target.name !== process.env.ONLY_TARGET) continue
  t.test(`a funnel created after the streams lost the older history reads it from the tables, on ${target.name}`, async (t) => {
    const users = index === 0 ? 80 : 30
    const log = generateLog({ seed: 31 + index, users, timezone: TIMEZONE })
    const system = await startSystem({ database: target.start, poolSize: target.poolSize, keyGroups: KEY_GROUPS })
    t.teardown(() => system.close())
    const { project, apiKey } = await system.createProject('sim', TIMEZONE)
    await system.startOperators(STEPS)

    await createFunnel(system, project.id, sessionsFunnel('sessions-before'), false)
    await createFunnel(system, project.id, desktopFunnel('desktop-before'), false)
    await importAll(system, apiKey, log)
    const count = async (sql: string) => Number((await system.store.pool.query<{ n: string }>(sql, [project.id])).rows[0]!.n)
    await eventually('every event stored', async () => (await count('SELECT count(*) AS n FROM events WHERE project = $1')) === log.length, 180_000)
    await settled(system, project.id, 'sessions-before', 'the first funnel settled', 180_000)
    await settled(system, project.id, 'desktop-before', 'the second funnel settled', 60_000)
    await eventually('the sessions stored', async () => (await count('SELECT count(*) AS n FROM sessions WHERE project = $1')) > 0, 60_000)

    // retention: the older half of each stream gone (the message at the median sequence of what the tables hold is the first left)
    const median = async (sql: string) => Number((await system.store.pool.query<{ seq: string }>(sql, [project.id])).rows[0]!.seq)
    const enrichedFirst = await median('SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY enriched_seq) AS seq FROM events WHERE project = $1')
    const sessionsFirst = await median('SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY sessions_seq) AS seq FROM sessions WHERE project = $1')
    const jsm = await jetstreamManager(system.nc)
    await jsm.streams.purge('SEG_ENRICHED', { seq: enrichedFirst })
    await jsm.streams.purge('SEG_SESSIONS', { seq: sessionsFirst })
    t.equal((await jsm.streams.info('SEG_ENRICHED')).state.first_seq, enrichedFirst, 'SEG_ENRICHED begins in the middle of the history')
    const eventsInTableOnly = await count(`SELECT count(*) AS n FROM events WHERE project = $1 AND enriched_seq < ${enrichedFirst}`)
    const sessionsInTableOnly = await count(`SELECT count(*) AS n FROM sessions WHERE project = $1 AND sessions_seq < ${sessionsFirst} AND status <> '$session_retract'`)
    t.ok(eventsInTableOnly > log.length / 3, `${eventsInTableOnly} events only in the table`)

    await createFunnel(system, project.id, sessionsFunnel('sessions-after'), true)
    await createFunnel(system, project.id, desktopFunnel('desktop-after'), true)

    for (const [before, after, definition, breakdown] of [
      ['sessions-before', 'sessions-after', sessionsFunnel('reference'), false], ['desktop-before', 'desktop-after', desktopFunnel('reference'), true],
    ] as const) {
      const done = await backfillDone(system, project.id, after, 180_000)
      t.comment(`${after}: ${JSON.stringify(done)}`)
      t.equal(done.done, done.total, `${after}: done == total`)
      // of them, the rows the funnel reads: its names, no bots
      const names = definition.steps.map((step) => step.event).filter((name) => name !== '$session_start')
      const eventsRead = await count(`SELECT count(*) AS n FROM events WHERE project = $1 AND enriched_seq < ${enrichedFirst} AND name IN (${names.map((name) => `'${name}'`).join(', ')}) AND (enrichment -> 'bot') IS DISTINCT FROM 'true'`)
      t.same(done.table, {
        events: eventsInTableOnly, sessions: breakdown ? 0 : sessionsInTableOnly, read: eventsRead + (breakdown ? 0 : sessionsInTableOnly),
        enrichedBefore: enrichedFirst, ...(breakdown ? {} : { sessionsBefore: sessionsFirst }),
      }, `${after}: the events (and sessions) before the streams' first messages read from the tables`)
      const reference = await referenceFromTables(system, project.id, definition)
      await settled(system, project.id, after, `${after} settled`, 60_000, (rows) => rows.size >= reference.size)
      const beforeRows = await progressOf(system, project.id, before)
      const afterRows = await progressOf(system, project.id, after)
      const offAfter = offReference(afterRows, reference, breakdown)
      const offBefore = offReference(beforeRows, reference, breakdown)
      t.comment(`${after}: off the reference ${offAfter.length} [${offAfter.join(', ')}]; the funnel defined before the data ${offBefore.length} [${offBefore.join(', ')}]`)
      t.ok(afterRows.size > 0 && [...afterRows.values()].some((row) => row.level === definition.steps.length), `${after}: users in the funnel (${afterRows.size}), some converted`)
      // a fast import puts the streams only roughly in event time: the live step refuses what comes more than a day behind its watermark
      t.ok(offAfter.length <= offBefore.length, `${after}: at least as right as the funnel defined before the data`)
      t.ok(offAfter.length <= Math.ceil(reference.size / 20), `${after}: right for all but a few of ${reference.size} users`)
      for (const id of offAfter) t.comment(`${id}: reference ${JSON.stringify(reference.get(id))}, before ${JSON.stringify(beforeRows.get(id))}, after ${JSON.stringify(afterRows.get(id))}`)
      if (process.env.DEBUG_BACKFILL) {
        for (const id of offAfter) {
          const rows = await system.store.pool.query(`SELECT 'e' AS k, name, message_id AS id, round(extract(epoch FROM event_time) * 1000)::bigint AS t, enriched_seq AS seq FROM events WHERE project = $1 AND canonical_id = $2 AND name <> '$page'
            UNION ALL SELECT 's', status, session_id, round(extract(epoch FROM started_at) * 1000)::bigint, sessions_seq FROM sessions WHERE project = $1 AND canonical_id = $2 ORDER BY 4`, [project.id, id])
          for (const row of rows.rows) t.comment(JSON.stringify(row))
        }
      }
      if (breakdown) t.ok([...afterRows.values()].some((row) => row.breakdown !== null), `${after}: broken down by $channel from the rows' enrich context`)
      const twice = await count(`SELECT count(*) AS n FROM (SELECT canonical_id FROM funnel_progress WHERE project = $1 AND funnel_id = '${after}' GROUP BY canonical_id, funnel_version HAVING count(*) > 1) x`)
      t.equal(twice, 0, `${after}: one row per user`)
    }
  })
}
