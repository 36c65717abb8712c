import type pg from 'pg'
import { segmentDefinitionOf } from '../../operators/profile/segments.ts'
import { DatabaseUnavailableError, isConnectionError } from '../../store/store.ts'

/** A saved segment as the live view needs it: whether the profile step keeps its size live. */
export interface LiveSegment {
  id: string
  name: string
  /** False for a filter with behavioural conditions or an `active` range: no live size (docs/live.md). */
  live: boolean
}

/**
 * The project's saved segments (all, or those of `ids`), oldest first. Liveness is decided by
 * the same code the profile step reads the definitions with, so the two always agree.
 */
export async function savedSegments(pool: Pick<pg.Pool, 'query'>, project: string, ids?: readonly string[]): Promise<LiveSegment[]> {
  try {
    const { rows } = ids === undefined
      ? await pool.query<{ id: string; name: string; filter: unknown }>('SELECT id, name, filter FROM segments WHERE project = $1 ORDER BY created_at, id', [project])
      : await pool.query<{ id: string; name: string; filter: unknown }>('SELECT id, name, filter FROM segments WHERE project = $1 AND id = ANY($2::text[]) ORDER BY created_at, id', [project, [...ids]])
    return rows.map((row) => ({ id: row.id, name: row.name, live: segmentDefinitionOf(row.id, 1, row.filter).live }))
  } catch (error) {
    throw isConnectionError(error) ? new DatabaseUnavailableError(error) : error
  }
}
