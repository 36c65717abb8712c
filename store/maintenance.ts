import type pg from 'pg'
import type { DatabaseTarget } from './migrate.ts'

type Query = <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => Promise<pg.QueryResult<R>>

const DAY = 86_400_000

export interface MaintenancePolicy {
  /** Event chunks entirely older than this are compressed (TimescaleDB). Default 30 days. */
  compressAfterMs: number
  /** Events older than this are deleted; undefined keeps everything (the default). */
  retentionMs?: number
}

export const DEFAULT_POLICY: MaintenancePolicy = { compressAfterMs: 30 * DAY }

export interface MaintenanceResult {
  compressedChunks: number
  /** TimescaleDB: chunks dropped; PostgreSQL: rows deleted. */
  removed: number
}

/**
 * Compression and retention of the events table, as of `now`. On a TimescaleDB
 * server the compression policy (migration 0003) does the same on its own; this
 * is what runs where background workers cannot (the embedded database), and it
 * is harmless twice: chunks already compressed are skipped.
 */
export async function maintainEvents(query: Query, target: DatabaseTarget, policy: MaintenancePolicy, now: number): Promise<MaintenanceResult> {
  let compressedChunks = 0
  let removed = 0
  if (policy.retentionMs !== undefined) {
    const cutoff = new Date(now - policy.retentionMs)
    if (target === 'timescaledb') removed = (await query(`SELECT drop_chunks('events', older_than => $1::timestamptz)`, [cutoff])).rowCount ?? 0
    else removed = (await query(`DELETE FROM events WHERE event_time < $1`, [cutoff])).rowCount ?? 0
  }
  if (target === 'timescaledb') {
    const result = await query(
      `SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('events', older_than => $1::timestamptz) c
         WHERE NOT EXISTS (SELECT 1 FROM timescaledb_information.chunks i
                            WHERE format('%I.%I', i.chunk_schema, i.chunk_name)::regclass = c AND i.is_compressed)`,
      [new Date(now - policy.compressAfterMs)])
    compressedChunks = result.rowCount ?? 0
  }
  return { compressedChunks, removed }
}
