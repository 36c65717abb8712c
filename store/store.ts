import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import pg from 'pg'
import { from as copyFrom } from 'pg-copy-streams'
import type { Logger } from '../config/logger.ts'
import type { EnrichedContext } from '../schemas/enriched.ts'
import { migrate, type DatabaseTarget } from './migrate.ts'
import { maintainEvents, type MaintenancePolicy } from './maintenance.ts'
import { funnelProgressStore } from './funnel-progress.ts'
import { profileStore } from './profiles.ts'
import { aggregateStore } from './aggregates.ts'
import { sessionStore } from './sessions.ts'

/** One row of the events table. Times are ms since the epoch. */
export interface EventRow {
  project: string
  messageId: string
  eventTime: number
  receivedAt: number
  type: string
  name: string
  canonicalId: string
  anonymousId: string | null
  userId: string | null
  source: string
  keyGroup: number
  rawStream: string
  rawSeq: number
  enrichedSeq: number
  properties: Record<string, unknown>
  traits: Record<string, unknown> | null
  context: Record<string, unknown>
  extra: Record<string, unknown>
  /** What enrich derived (device, acquisition, geo, bot); null or absent when it derived nothing (migration 0013). */
  enrichment?: EnrichedContext | null
}

export class DatabaseUnavailableError extends Error {
  readonly code = 'SEG_DB_UNAVAILABLE'
  constructor(cause: unknown) {
    super(`database unavailable: ${(cause as Error)?.message ?? cause}`, { cause })
  }
}

/** Connection-level failures (server down, restarting, refused) rather than bad SQL. */
export function isConnectionError(error: unknown): boolean {
  const e = error as { code?: string; message?: string }
  if (!e) return false
  if (e.code && /^(ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|57P01|57P02|57P03|08\w{3})$/.test(e.code)) return true
  return /Connection terminated|connection error|Client has encountered a connection error|timeout exceeded when trying to connect/i.test(e.message ?? '')
}

export interface StoreOptions {
  url: string
  /** auto detects TimescaleDB; default auto. */
  target?: 'auto' | DatabaseTarget
  /** Connections in the pool; default 4. The embedded database wants 1. */
  poolSize?: number
  /** Statement timeout for queries, ms; default 30000. */
  statementTimeoutMs?: number
  /** How long a query waits for a pooled connection, ms; default 5000. With a pool of one (the embedded database) it waits behind the sinks' batches. */
  connectionTimeoutMs?: number
  logger: Logger
}

const EVENT_COLUMNS = [
  ['project', 'text'], ['message_id', 'text'], ['event_time', 'timestamptz'], ['received_at', 'timestamptz'],
  ['type', 'text'], ['name', 'text'], ['canonical_id', 'text'], ['anonymous_id', 'text'], ['user_id', 'text'],
  ['source', 'text'], ['key_group', 'int'], ['raw_stream', 'text'], ['raw_seq', 'bigint'], ['enriched_seq', 'bigint'],
  ['properties', 'jsonb'], ['traits', 'jsonb'], ['context', 'jsonb'], ['extra', 'jsonb'], ['enrichment', 'jsonb'],
] as const

const columnNames = EVENT_COLUMNS.map(([column]) => column).join(', ')
// jsonb travels as text[] (pg has no jsonb[] literal encoder) and is cast per row
const unnestParams = EVENT_COLUMNS.map(([, type], i) => `$${i + 1}::${type === 'jsonb' ? 'text' : type}[]`).join(', ')
const selected = EVENT_COLUMNS.map(([column, type]) => (type === 'jsonb' ? `${column}::jsonb` : column)).join(', ')
const INSERT_EVENTS = `INSERT INTO events (${columnNames})
  SELECT ${selected} FROM unnest(${unnestParams}) AS t(${columnNames})
  ON CONFLICT DO NOTHING`

const COPY_EVENTS = `COPY events (${columnNames}) FROM STDIN`

/** A value as COPY's text format wants it: backslash, newline, carriage return and tab escaped. */
const copyText = (value: string) => (/[\\\n\r\t]/.test(value) ? value.replace(/[\\\n\r\t]/g, (c) => (c === '\\' ? '\\\\' : c === '\n' ? '\\n' : c === '\r' ? '\\r' : '\\t')) : value)
const copyNullable = (value: string | null) => (value === null ? '\\N' : copyText(value))

/** Event rows in COPY's text format, columns in EVENT_COLUMNS order. */
function copyLinesOf(rows: readonly EventRow[]): string {
  let out = ''
  for (const row of rows) {
    out += `${copyText(row.project)}\t${copyText(row.messageId)}\t${new Date(row.eventTime).toISOString()}\t${new Date(row.receivedAt).toISOString()}\t`
      + `${copyText(row.type)}\t${copyText(row.name)}\t${copyText(row.canonicalId)}\t${copyNullable(row.anonymousId)}\t${copyNullable(row.userId)}\t`
      + `${copyText(row.source)}\t${row.keyGroup}\t${copyText(row.rawStream)}\t${row.rawSeq}\t${row.enrichedSeq}\t`
      + `${copyText(JSON.stringify(row.properties))}\t${row.traits === null ? '\\N' : copyText(JSON.stringify(row.traits))}\t`
      + `${copyText(JSON.stringify(row.context))}\t${copyText(JSON.stringify(row.extra))}\t${row.enrichment ? copyText(JSON.stringify(row.enrichment)) : '\\N'}\n`
  }
  return out
}

export type Store = Awaited<ReturnType<typeof openStore>>

/**
 * The one pg-based store. Same results on TimescaleDB and plain PostgreSQL; the
 * target only changes how tables are laid out and how time is bucketed.
 */
export async function openStore(options: StoreOptions) {
  const logger = options.logger
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.poolSize ?? 4,
    connectionTimeoutMillis: options.connectionTimeoutMs ?? 5_000,
    idleTimeoutMillis: 30_000,
    statement_timeout: options.statementTimeoutMs ?? 30_000,
  })
  // an idle client losing its server must not crash the process; the next query reports it
  pool.on('error', (error) => logger.warn({ err: error }, 'database connection lost'))
  let target: DatabaseTarget | undefined
  /**
   * Whether events go in by COPY: not into the embedded database (PGlite, compiled by Emscripten),
   * whose wire server drops the connection on COPY FROM STDIN, nor into a server that refused it.
   */
  let copyWorks: Promise<boolean> | undefined

  const query = async <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => {
    try {
      return await pool.query<R>(text, values)
    } catch (error) {
      throw isConnectionError(error) ? new DatabaseUnavailableError(error) : error
    }
  }

  /** A pooled client for work that needs one connection (a transaction). */
  const withClient = async <T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> => {
    let client: pg.PoolClient
    try {
      client = await pool.connect()
    } catch (error) {
      throw isConnectionError(error) ? new DatabaseUnavailableError(error) : error
    }
    let broken = false
    // a checked-out client whose server goes away emits 'error'; unheard, it would end the process
    const onError = () => (broken = true)
    client.on('error', onError)
    try {
      return await work(client)
    } catch (error) {
      broken ||= isConnectionError(error)
      throw broken ? new DatabaseUnavailableError(error) : error
    } finally {
      client.off('error', onError)
      // a client whose connection failed is destroyed, not handed to the next caller
      client.release(broken || undefined)
    }
  }

  /** One COPY of every row, in its own transaction: all stored, or none. */
  const copyEvents = (rows: readonly EventRow[]): Promise<number> => withClient(async (client) => {
    const copy = client.query(copyFrom(COPY_EVENTS))
    await pipeline(Readable.from([Buffer.from(copyLinesOf(rows))]), copy)
    return copy.rowCount
  })

  return {
    pool,
    withClient,
    ...sessionStore(query),
    ...profileStore(withClient),
    ...funnelProgressStore(query),
    ...aggregateStore(withClient),
    get target(): DatabaseTarget {
      if (!target) throw new Error('store not migrated yet: call migrate() first')
      return target
    },

    async migrate() {
      const result = await migrate(pool, options.target ?? 'auto', logger)
      target = result.target
      return result
    },

    /** Compression and retention of events as of `now` (store/maintenance.ts). */
    maintain(policy: MaintenancePolicy, now = Date.now()) {
      if (!target) throw new Error('store not migrated yet: call migrate() first')
      return maintainEvents(query, target, policy, now)
    },

    async ping(): Promise<void> {
      await query('SELECT 1')
    },

    /**
     * Inserts rows; a row whose (project, message_id, event_time) exists is skipped. Returns rows inserted.
     * First as one COPY (PostgreSQL parses no arrays and the client escapes none: about half the
     * CPU per row on both sides); a batch with a row already stored (a redelivery) makes the COPY
     * fail as a whole, and then goes in through INSERT ... ON CONFLICT DO NOTHING.
     */
    async insertEvents(rows: readonly EventRow[]): Promise<number> {
      if (rows.length === 0) return 0
      copyWorks ??= query<{ version: string }>('SELECT version()').then((result) => !/emscripten/i.test(result.rows[0]!.version), (error) => {
        copyWorks = undefined
        throw error
      })
      if (await copyWorks) {
        try {
          return await copyEvents(rows)
        } catch (error) {
          if (error instanceof DatabaseUnavailableError) throw error
          const code = (error as { code?: unknown }).code
          // 23505: a row stored before; class 22: a value the table refuses (the insert below says
          // which); no code: a value this side could not write (an invalid date). Only a server
          // refusing COPY itself turns it off.
          if (typeof code === 'string' && code !== '23505' && !code.startsWith('22')) {
            copyWorks = Promise.resolve(false)
            logger.warn({ err: error }, 'COPY into events refused; inserting rows with INSERT from now on')
          }
        }
      }
      const columns: unknown[][] = EVENT_COLUMNS.map(() => new Array(rows.length))
      rows.forEach((row, i) => {
        const values = [
          row.project, row.messageId, new Date(row.eventTime), new Date(row.receivedAt), row.type, row.name,
          row.canonicalId, row.anonymousId, row.userId, row.source, row.keyGroup, row.rawStream, row.rawSeq,
          row.enrichedSeq, JSON.stringify(row.properties), row.traits === null ? null : JSON.stringify(row.traits),
          JSON.stringify(row.context), JSON.stringify(row.extra), row.enrichment ? JSON.stringify(row.enrichment) : null,
        ]
        values.forEach((value, c) => (columns[c]![i] = value))
      })
      const result = await query(INSERT_EVENTS, columns)
      return result.rowCount ?? 0
    },

    async countEvents(project: string, range: { from?: number; to?: number } = {}): Promise<number> {
      const result = await query<{ n: string }>(
        `SELECT count(*) AS n FROM events WHERE project = $1
           AND ($2::timestamptz IS NULL OR event_time >= $2) AND ($3::timestamptz IS NULL OR event_time < $3)`,
        [project, range.from === undefined ? null : new Date(range.from), range.to === undefined ? null : new Date(range.to)],
      )
      return Number(result.rows[0]!.n)
    },

    async getEvent(project: string, messageId: string): Promise<EventRow | undefined> {
      const result = await query<Record<string, unknown>>(`SELECT * FROM events WHERE project = $1 AND message_id = $2 LIMIT 1`, [project, messageId])
      const row = result.rows[0]
      return row ? toEventRow(row) : undefined
    },

    /**
     * Events per calendar day in an IANA timezone, oldest first. TimescaleDB buckets
     * with time_bucket, plain PostgreSQL with date_trunc; both give the same days.
     */
    async eventsPerDay(project: string, timezone: string, range: { from: number; to: number }): Promise<{ day: string; events: number; users: number }[]> {
      const bucket = target === 'timescaledb'
        ? `time_bucket(INTERVAL '1 day', event_time, $2::text)`
        : `date_trunc('day', event_time, $2::text)`
      const result = await query<{ day: string; events: string; users: string }>(
        `SELECT to_char(${bucket} AT TIME ZONE $2::text, 'YYYY-MM-DD') AS day, count(*) AS events, count(DISTINCT canonical_id) AS users
           FROM events WHERE project = $1 AND event_time >= $3 AND event_time < $4
          GROUP BY 1 ORDER BY 1`,
        [project, timezone, new Date(range.from), new Date(range.to)],
      )
      return result.rows.map((r) => ({ day: r.day, events: Number(r.events), users: Number(r.users) }))
    },

    /** The highest SEG_ENRICHED sequence stored for a project: where a stream replay takes over. */
    async lastEnrichedSeq(project: string): Promise<number> {
      const result = await query<{ seq: string | null }>('SELECT max(enriched_seq) AS seq FROM events WHERE project = $1', [project])
      return Number(result.rows[0]!.seq ?? 0)
    },

    async close(): Promise<void> {
      await pool.end()
    },
  }
}

function toEventRow(row: Record<string, unknown>): EventRow {
  return {
    project: row.project as string,
    messageId: row.message_id as string,
    eventTime: (row.event_time as Date).getTime(),
    receivedAt: (row.received_at as Date).getTime(),
    type: row.type as string,
    name: row.name as string,
    canonicalId: row.canonical_id as string,
    anonymousId: (row.anonymous_id as string | null) ?? null,
    userId: (row.user_id as string | null) ?? null,
    source: row.source as string,
    keyGroup: row.key_group as number,
    rawStream: row.raw_stream as string,
    rawSeq: Number(row.raw_seq),
    enrichedSeq: Number(row.enriched_seq),
    properties: row.properties as Record<string, unknown>,
    traits: (row.traits as Record<string, unknown> | null) ?? null,
    context: row.context as Record<string, unknown>,
    extra: row.extra as Record<string, unknown>,
    enrichment: (row.enrichment as EnrichedContext | null) ?? null,
  }
}
