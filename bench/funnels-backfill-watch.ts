/**
 * What bench/funnels-backfill.ts and bench/funnels-runtime.ts both do to time a backfill: define a
 * funnel as the API does (its row with a pending backfill, then its control message), and follow
 * the row's progress until the worker says done or failed.
 */
import type pg from 'pg'
import type { PipelinedPublisher } from '../broker/publisher.ts'
import { publishControl } from '../operators/runtime/control.ts'
import type { FunnelDefinition } from '../schemas/funnel.ts'

/** The `backfill` column of a funnels row (operators/funnel/backfill-worker.ts writes it). */
export interface BackfillProgress {
  state: string
  done: number
  total: number
  phase?: string
  seeds?: number
  late?: number
  error?: string
  table?: { events: number }
}

/** A new funnel, as the API creates one: its row with a pending backfill, then its control message on the funnel step's inputs. */
export async function defineBackfilledFunnel(pool: pg.Pool, publisher: PipelinedPublisher, project: string, keyGroups: number, definition: FunnelDefinition): Promise<void> {
  await pool.query(`INSERT INTO funnels (project, id, name, definition, version, backfill) VALUES ($1, $2, $3, $4::jsonb, 1, $5::jsonb)`,
    [project, definition.id, definition.name, JSON.stringify(definition), JSON.stringify({ state: 'pending', done: 0, total: 0 })])
  await publishControl(publisher, { project, stages: ['enriched', 'sessions'], keyGroups, time: Date.now(), control: { stepId: 'funnel', name: definition.id, version: 1, definition } })
}

export interface WatchOptions {
  /** performance.now() the phases are timed from. */
  started: number
  timeoutMs: number
  /** A progress line at most this often, ms. */
  printEveryMs: number
  print: (row: BackfillProgress) => void
  /** After each read of the row (every 100 ms): to sample the RSS, say. */
  onPoll?: () => void
}

/**
 * Reads the funnel's backfill progress every 100 ms until it is done or failed, or the timeout
 * passes: the last progress read, and the seconds after `started` at which each phase was first
 * seen (a phase shorter than the poll is not seen).
 */
export async function watchBackfill(pool: pg.Pool, project: string, funnelId: string, options: WatchOptions): Promise<{ row: BackfillProgress | undefined; phases: Record<string, number> }> {
  const phases: Record<string, number> = {}
  let row: BackfillProgress | undefined
  let lastPhase = ''
  let lastPrint = performance.now()
  while (performance.now() - options.started < options.timeoutMs) {
    row = (await pool.query<{ backfill: BackfillProgress }>('SELECT backfill FROM funnels WHERE project = $1 AND id = $2', [project, funnelId])).rows[0]!.backfill
    options.onPoll?.()
    const phase = row.state === 'running' ? row.phase ?? 'running' : row.state
    if (phase !== lastPhase) {
      phases[phase] = (performance.now() - options.started) / 1000
      lastPhase = phase
    }
    if (row.state === 'done' || row.state === 'failed') break
    if (performance.now() - lastPrint > options.printEveryMs) {
      lastPrint = performance.now()
      options.print(row)
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return { row, phases }
}
