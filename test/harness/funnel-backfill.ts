import { publishControl } from '../../operators/runtime/control.ts'
import type { FunnelDefinition } from '../../schemas/funnel.ts'
import { referenceFunnel, type ReferenceEvent } from '../reference/funnel-reference.ts'
import { eventually, type System } from './system.ts'

/** Helpers of the funnel backfill tests on real servers (test/funnel-backfill*.test.ts). */

/** Messages through the collector's import route, 200 at a time. */
export async function importAll(system: System, apiKey: string, messages: readonly object[]): Promise<void> {
  for (let i = 0; i < messages.length; i += 200) {
    const response = await system.app.inject({
      method: 'POST', url: '/v1/import', headers: { authorization: `Bearer ${apiKey}` }, payload: { batch: messages.slice(i, i + 200) },
    })
    if (response.statusCode !== 200) throw new Error(`import answered ${response.statusCode}: ${response.body}`)
  }
}

/** A funnel created as the API creates it: its row (with a pending backfill, or none), then its control message. */
export async function createFunnel(system: System, project: string, definition: FunnelDefinition, backfill: boolean): Promise<void> {
  await system.store.pool.query(
    `INSERT INTO funnels (project, id, name, definition, version, backfill) VALUES ($1, $2, $3, $4::jsonb, 1, $5::jsonb)`,
    [project, definition.id, definition.name, JSON.stringify(definition), backfill ? JSON.stringify({ state: 'pending', done: 0, total: 0 }) : null],
  )
  await publishControl(system.publisher, {
    project, stages: ['enriched', 'sessions'], keyGroups: system.keyGroups, time: Date.now(), control: { stepId: 'funnel', name: definition.id, version: 1, definition },
  })
}

export interface ProgressRow { id: string; level: number; status: string; times: string; breakdown: string | null }

/** Each user's progress in a funnel (funnel_progress, as sink-funnels keeps it), users at level 0 left out. */
export const progressOf = async (system: System, project: string, funnelId: string): Promise<Map<string, ProgressRow>> => new Map((await system.store.pool.query<ProgressRow>(
  `SELECT canonical_id AS id, level, status, breakdown, array_to_string(ARRAY(SELECT round(extract(epoch FROM x) * 1000)::bigint FROM unnest(step_times) x), ',') AS times FROM funnel_progress
    WHERE project = $1 AND funnel_id = $2 AND funnel_version = 1 AND status <> 'none' ORDER BY 1`, [project, funnelId])).rows.map((row) => [row.id, row]))

/** Waits until a funnel's progress rows stop changing over two seconds (and `also` holds). */
export async function settled(system: System, project: string, funnelId: string, what: string, timeoutMs: number, also: (rows: Map<string, ProgressRow>) => boolean = (rows) => rows.size > 0): Promise<void> {
  let previous = ''
  await eventually(what, async () => {
    const rows = await progressOf(system, project, funnelId)
    const now = JSON.stringify([...rows])
    const done = now === previous && also(rows)
    previous = now
    if (!done) await new Promise((resolve) => setTimeout(resolve, 2_000))
    return done
  }, timeoutMs)
}

export interface BackfillRow {
  state: string
  done: number
  total: number
  seeds?: number
  error?: string
  late?: number
  table?: { events: number; sessions: number; read: number; enrichedBefore: number; sessionsBefore?: number }
}

export const backfillOf = async (system: System, project: string, funnelId: string): Promise<BackfillRow> =>
  (await system.store.pool.query<{ backfill: BackfillRow }>('SELECT backfill FROM funnels WHERE project = $1 AND id = $2', [project, funnelId])).rows[0]!.backfill

/** Waits until a funnel's backfill is done; a failed one throws. */
export async function backfillDone(system: System, project: string, funnelId: string, timeoutMs: number): Promise<BackfillRow> {
  await eventually(`the backfill of ${funnelId} done`, async () => {
    const row = await backfillOf(system, project, funnelId)
    if (row.state === 'failed') throw new Error(`backfill of ${funnelId} failed: ${row.error}`)
    return row.state === 'done'
  }, timeoutMs)
  return backfillOf(system, project, funnelId)
}

export interface ReferenceRow { level: number; times: string; breakdown?: string }

/**
 * Each user's result by the reference funnel (test/reference, written from docs/funnels.md) over
 * what the tables hold: the events by canonical id, with the `$`-properties enrich derived
 * (`events.enrichment`), bots' events left out, and the session starts (retracted ones left out).
 */
export async function referenceFromTables(system: System, project: string, definition: FunnelDefinition): Promise<Map<string, ReferenceRow>> {
  type Enrichment = { device?: { type?: string }; acquisition?: { channel?: string }; geo?: { country?: string }; bot?: boolean } | null
  const events = await system.store.pool.query<{ id: string; message_id: string; t: Date; name: string; properties: Record<string, unknown>; enrichment: Enrichment }>(
    'SELECT canonical_id AS id, message_id, event_time AS t, name, properties, enrichment FROM events WHERE project = $1', [project])
  const sessions = await system.store.pool.query<{ id: string; session_id: string; t: Date; channel: string | null; device: string | null }>(
    `SELECT canonical_id AS id, session_id, started_at AS t, channel, device FROM sessions WHERE project = $1 AND status <> '$session_retract'`, [project])
  const byUser = new Map<string, ReferenceEvent[]>()
  const add = (id: string, event: ReferenceEvent) => {
    let list = byUser.get(id)
    if (!list) byUser.set(id, (list = []))
    list.push(event)
  }
  for (const row of events.rows) {
    if (row.enrichment?.bot === true) continue
    const derived = { $device: row.enrichment?.device?.type, $channel: row.enrichment?.acquisition?.channel, $country: row.enrichment?.geo?.country }
    add(row.id, { time: row.t.getTime(), id: row.message_id, name: row.name, properties: { ...row.properties, ...derived } })
  }
  for (const row of sessions.rows) {
    add(row.id, { time: row.t.getTime(), id: `$session_start:${row.session_id}`, name: '$session_start', properties: { $device: row.device ?? undefined, $channel: row.channel ?? undefined }, session: true })
  }
  const results = new Map<string, ReferenceRow>()
  for (const [id, list] of byUser) {
    const result = referenceFunnel(definition, list, Number.POSITIVE_INFINITY)
    if (result.level > 0) results.set(id, { level: result.level, times: result.stepTimes.join(','), ...(result.breakdown === undefined ? {} : { breakdown: result.breakdown }) })
  }
  return results
}
