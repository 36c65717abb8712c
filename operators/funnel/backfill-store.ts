import type pg from 'pg'
import type { FunnelDefinition } from '../../schemas/funnel.ts'

/**
 * The backfill worker's reads and writes of the `funnels` table (store/migrations/0008_funnels.sql):
 * claiming a pending backfill, its progress, its end. Every write names the version and the run's
 * owner, so a run overtaken by a newer version (the API set the row pending again) or by another
 * worker that took over a stale run writes nothing more.
 */

/** What `funnels.backfill` holds while a worker runs it and after. */
export interface BackfillProgress {
  state: 'pending' | 'running' | 'done' | 'failed'
  /** History messages read (done) of about `total`. */
  done: number
  total: number
  error?: string
  /** The run's worker and when it last reported (ms): a running row silent for longer than the stale time is taken over. */
  owner?: string
  heartbeat?: number
  /** What the run is doing now: reading history, waiting for the funnel step, publishing seeds. */
  phase?: string
  /** Users seeded (when done). */
  seeds?: number
  /** History inputs the funnel logic refused as too late (behind its horizon), as the live step would have. */
  late?: number
  /**
   * History beyond the streams' retention, read from the tables (docs/funnels.md, "Backfill"): the
   * events stored before SEG_ENRICHED's first sequence and the sessions before SEG_SESSIONS's (when
   * the funnel reads sessions); `read` of those rows are the funnel's (its names, no bots), and
   * `done` and `total` count them beside the streams' messages.
   */
  table?: { events: number; sessions: number; read: number; enrichedBefore: number; sessionsBefore?: number }
}

export interface ClaimedBackfill {
  project: string
  funnelId: string
  version: number
  definition: FunnelDefinition
}

/**
 * Takes one backfill to run: a pending one, or a running one whose worker has been silent for
 * `staleMs` (it died; the run is simply done again). Atomic: two workers never take the same row.
 */
export async function claimBackfill(pool: pg.Pool, owner: string, now: number, staleMs: number): Promise<ClaimedBackfill | undefined> {
  const result = await pool.query<{ project: string; id: string; version: number; definition: FunnelDefinition }>(
    `UPDATE funnels SET backfill = jsonb_build_object('state', 'running', 'done', 0, 'total', 0, 'owner', $1::text, 'heartbeat', $2::bigint, 'phase', 'starting')
      WHERE (project, id) IN (
        SELECT project, id FROM funnels
         WHERE deleted_at IS NULL AND backfill IS NOT NULL
           AND (backfill->>'state' = 'pending' OR (backfill->>'state' = 'running' AND coalesce((backfill->>'heartbeat')::bigint, 0) < $3::bigint))
         ORDER BY updated_at LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING project, id, version, definition`,
    [owner, now, now - staleMs],
  )
  const row = result.rows[0]
  return row === undefined ? undefined : { project: row.project, funnelId: row.id, version: row.version, definition: row.definition }
}

/** Writes the run's progress; false when the row is no longer this run's (a newer version, another owner, deleted). */
export async function reportBackfill(pool: pg.Pool, claimed: ClaimedBackfill, owner: string, progress: BackfillProgress): Promise<boolean> {
  const result = await pool.query(
    `UPDATE funnels SET backfill = $5::jsonb
      WHERE project = $1 AND id = $2 AND version = $3 AND deleted_at IS NULL AND backfill->>'owner' = $4 AND backfill->>'state' = 'running'`,
    [claimed.project, claimed.funnelId, claimed.version, owner, JSON.stringify(progress)],
  )
  return (result.rowCount ?? 0) > 0
}

/** The users the given anonymous ids have been linked to (identities table, written by sink-events). */
export async function linkedUsers(pool: pg.Pool, project: string, anonymousIds: readonly string[]): Promise<Map<string, string>> {
  const linked = new Map<string, string>()
  for (let start = 0; start < anonymousIds.length; start += 5_000) {
    const result = await pool.query<{ anonymous_id: string; user_id: string }>(
      'SELECT anonymous_id, user_id FROM identities WHERE project = $1 AND anonymous_id = ANY($2::text[])',
      [project, anonymousIds.slice(start, start + 5_000)],
    )
    for (const row of result.rows) if (row.user_id !== row.anonymous_id) linked.set(row.anonymous_id, row.user_id)
  }
  return linked
}

/** Sessions whose newest version is stored from before the stream's first message (retracted ones count for nothing). */
export async function sessionsBeforeStream(pool: pg.Pool, project: string, firstSeq: number): Promise<number> {
  const result = await pool.query<{ n: string }>(`SELECT count(*) AS n FROM sessions WHERE project = $1 AND sessions_seq < $2 AND status <> '$session_retract'`, [project, firstSeq])
  return Number(result.rows[0]!.n)
}

/** Events stored in the table from before the stream's first message (the stream's retention removed them there). */
export async function eventsBeforeStream(pool: pg.Pool, project: string, firstSeq: number): Promise<number> {
  const result = await pool.query<{ n: string }>('SELECT count(*) AS n FROM events WHERE project = $1 AND enriched_seq < $2', [project, firstSeq])
  return Number(result.rows[0]!.n)
}
