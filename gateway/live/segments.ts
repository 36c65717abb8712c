import type pg from 'pg'
import type { PipelinedPublisher } from '../../broker/publisher.ts'
import { SEGMENT_CONTROL_PREFIX, segmentDefinitionOf } from '../../operators/profile/segments.ts'
import { publishControl } from '../../operators/runtime/control.ts'
import { SEGMENT_STEP_ID } from '../routes/explore.ts'
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

/**
 * Publishes the control message of every saved segment (of `project`, or of all projects) to
 * the profile step again, with its stored version. For segments saved before the profile step
 * kept definitions (their control messages went by unread): the step learns them there and every
 * user is evaluated, so they get a live size. A segment the step already holds at that version
 * changes nothing and costs no pass over the users (the runtime skips `onDefinitionChange` when
 * the definitions come back unchanged). Message ids are those of the first publication, so one
 * inside JetStream's duplicate window (2 minutes) is dropped as a duplicate. Returns how many.
 */
export async function republishSegments(
  pool: Pick<pg.Pool, 'query'>, publisher: PipelinedPublisher, options: { keyGroups: number; project?: string; now?: number },
): Promise<number> {
  const { rows } = options.project === undefined
    ? await pool.query<{ project: string; id: string; name: string; filter: unknown; version: number }>('SELECT project, id, name, filter, version FROM segments ORDER BY project, created_at, id')
    : await pool.query<{ project: string; id: string; name: string; filter: unknown; version: number }>('SELECT project, id, name, filter, version FROM segments WHERE project = $1 ORDER BY created_at, id', [options.project])
  for (const row of rows) {
    await publishControl(publisher, {
      project: row.project, stages: ['enriched'], keyGroups: options.keyGroups, time: options.now ?? Date.now(),
      control: { stepId: SEGMENT_STEP_ID, name: `${SEGMENT_CONTROL_PREFIX}${row.id}`, version: row.version, definition: { id: row.id, name: row.name, filter: row.filter } },
    })
  }
  return rows.length
}
