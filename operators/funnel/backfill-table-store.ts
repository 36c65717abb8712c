import { StringDecoder } from 'node:string_decoder'
import type pg from 'pg'
import { to as copyTo } from 'pg-copy-streams'
import type { Source } from '../../schemas/envelope.ts'
import type { EnrichedContext } from '../../schemas/enriched.ts'
import type { HistoryColumns, HistoryRow } from './backfill-table.ts'
import { SESSION_EVENT_PREFIX, SESSION_START } from './logic.ts'

/**
 * Reads a funnel's history beyond the streams' retention from the tables (docs/funnels.md,
 * "Backfill"): the project's events whose `enriched_seq` is below SEG_ENRICHED's first sequence,
 * and, for `$session_start`, the sessions whose newest version's `sessions_seq` is below
 * SEG_SESSIONS's (the table holds a session's newest version only; a retracted one counts for
 * nothing), grouped by user. Only what the funnel reads is selected: the names of its steps and
 * exclusions (every name for a strict funnel), the property keys its filters and breakdown read,
 * enrich's context when a `$`-property is read; bots' events are left out, as the live step
 * leaves them out.
 *
 * On a real PostgreSQL server one statement streams every row (COPY ... TO STDOUT: the server
 * scans and sorts once, the client splits text lines); on the embedded database (PGlite, whose
 * wire server does not do COPY, and whose one connection the sinks share) pages of rows, each its
 * own short query, continue after the last row read.
 */

export interface HistoryQuery {
  project: string
  /** SEG_ENRICHED's first sequence: events below it are read. */
  enrichedBefore: number
  /** SEG_SESSIONS's first sequence: sessions below it are read (when the funnel reads sessions). */
  sessionsBefore: number
  columns: HistoryColumns
  /** Count bots' events (the funnel step's `countBots`). Default false. */
  countBots?: boolean
}

/** Rows per page on the embedded database. */
const PAGE_ROWS = 5_000
/** Sort memory of the one statement on a real server (its ORDER BY over the history). */
const SORT_MEMORY = '256MB'

/** kind, user, time, id, name, source, seq, version, page, enrichment; then one column per property key. */
const FIXED_COLUMNS = 10

/** The history's statement; with `after`, one page after the keyset (user, time, id) given as its last three parameters. */
export function historySql(query: HistoryQuery, after?: readonly [string, number, string]): { text: string; values: unknown[] } {
  const { columns } = query
  const values: unknown[] = [query.project, query.enrichedBefore]
  const param = (value: unknown) => {
    values.push(value)
    return `$${values.length}`
  }
  const propertyColumns = columns.properties.map((key) => `(properties -> ${param(key)}::text)::text`)
  const eventConditions = ['project = $1', 'enriched_seq < $2::int8', `left(name, 9) <> '$session_'`]
  if (columns.names !== undefined) eventConditions.push(`name = ANY(${param(columns.names)}::text[])`)
  if (!query.countBots) eventConditions.push(`(enrichment -> 'bot') IS DISTINCT FROM 'true'::jsonb`)
  const time = (column: string) => `round(date_part('epoch', ${column}) * 1000)::int8`
  // rows after (user, time, id); the user alone first, so an index on (project, canonical_id) starts there
  let keyset = (_user: string, _time: string, _id: string) => ''
  if (after) {
    const [user, at, id] = [param(after[0]), param(after[1]), param(after[2])]
    keyset = (userColumn, timeColumn, idColumn) => ` AND ${userColumn} >= ${user}::text AND (${userColumn} > ${user}::text OR (${timeColumn}, ${idColumn}) > (${at}::int8, ${id}::text))`
  }
  let text = `SELECT 'e' AS kind, canonical_id AS user_id, ${time('event_time')} AS t, message_id AS id, name, source, enriched_seq AS seq, NULL::int AS version,
      ${columns.page ? `(context -> 'page')::text` : 'NULL::text'} AS page, ${columns.enrichment ? 'enrichment::text' : 'NULL::text'} AS enrichment
      ${propertyColumns.map((column, index) => `, ${column} AS p${index}`).join('')}
    FROM events WHERE ${eventConditions.join(' AND ')}${keyset('canonical_id', time('event_time'), 'message_id')}`
  if (columns.sessions) {
    const sessionsBefore = param(query.sessionsBefore)
    const sessionId = `${param(SESSION_EVENT_PREFIX)}::text || session_id`
    text += `
    UNION ALL
    SELECT 's', canonical_id, ${time('started_at')}, ${sessionId}, ${param(SESSION_START)}::text, 'live', sessions_seq, version,
      NULL::text, jsonb_build_object('channel', channel, 'device', device, 'entryPage', entry_page)::text
      ${propertyColumns.map(() => ', NULL::text').join('')}
    FROM sessions WHERE project = $1 AND sessions_seq < ${sessionsBefore}::int8 AND status <> '$session_retract'${keyset('canonical_id', time('started_at'), sessionId)}`
  }
  text += ' ORDER BY 2, 3, 4'
  if (after) text += ` LIMIT ${PAGE_ROWS}`
  return { text, values }
}

/** How many rows the history's statement reads: events and session starts (the run's progress total). */
export async function countHistory(pool: pg.Pool, query: HistoryQuery): Promise<{ events: number; sessions: number }> {
  const { text, values } = historySql(query)
  const result = await pool.query<{ kind: string; n: string }>({ text: `SELECT kind, count(*) AS n FROM (${text.replace(/ ORDER BY 2, 3, 4$/, '')}) h GROUP BY kind`, values })
  const count = (kind: string) => Number(result.rows.find((row) => row.kind === kind)?.n ?? 0)
  return { events: count('e'), sessions: count('s') }
}

/** One row of the statement (every column as text, null for SQL NULL) as a HistoryRow. */
export function rowOf(fields: ReadonlyArray<string | null>, properties: readonly string[]): HistoryRow {
  const user = fields[1]!
  const time = Number(fields[2])
  const id = fields[3]!
  const source = fields[5] as Source
  const seq = Number(fields[6])
  if (fields[0] === 's') {
    const session = JSON.parse(fields[9]!) as { channel: string | null; device: string | null; entryPage: string | null }
    const row: HistoryRow = { kind: 'session', user, time, id, source, seq, version: Number(fields[7]) }
    if (session.channel !== null) row.channel = session.channel
    if (session.device !== null) row.device = session.device
    if (session.entryPage !== null) row.entryPage = session.entryPage
    return row
  }
  const values: Record<string, unknown> = {}
  for (let index = 0; index < properties.length; index++) {
    // SQL NULL: the event lacks the key; JSON null is the text 'null'
    const text = fields[FIXED_COLUMNS + index]
    if (text !== null && text !== undefined) values[properties[index]!] = JSON.parse(text)
  }
  const row: HistoryRow = { kind: 'event', user, time, id, source, seq, name: fields[4]!, properties: values }
  if (fields[8] !== null) row.page = JSON.parse(fields[8]!)
  if (fields[9] !== null) row.enrichment = JSON.parse(fields[9]!) as EnrichedContext
  return row
}

const ESCAPES: Record<string, string> = { b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\\': '\\' }

/** A field of COPY's text format: `\N` is NULL; backslash sequences undone (COPY TO writes no octal or hex ones). */
function copyField(text: string): string | null {
  if (text === '\\N') return null
  if (!text.includes('\\')) return text
  return text.replace(/\\(.)/g, (_, c: string) => ESCAPES[c] ?? c)
}

export interface HistoryReader {
  /** Rows read so far. */
  readonly rows: number
}

/**
 * Every row of the history in (user, time, id) order, handed to `onRows` in batches (awaited: the
 * reader waits while the caller publishes). Whether the server takes COPY decides the way.
 */
export async function readHistory(pool: pg.Pool, query: HistoryQuery, onRows: (rows: HistoryRow[]) => Promise<void> | void, signal?: AbortSignal): Promise<number> {
  const version = await pool.query<{ version: string }>('SELECT version()')
  return /emscripten/i.test(version.rows[0]!.version) ? readPages(pool, query, onRows, signal) : readCopy(pool, query, onRows, signal)
}

async function readCopy(pool: pg.Pool, query: HistoryQuery, onRows: (rows: HistoryRow[]) => Promise<void> | void, signal?: AbortSignal): Promise<number> {
  const client = await pool.connect()
  let broken = false
  const onError = () => (broken = true)
  client.on('error', onError)
  let count = 0
  try {
    // one statement over the whole history: no statement timeout, room to sort in memory
    await client.query(`SET statement_timeout = 0`)
    await client.query(`SET work_mem = '${SORT_MEMORY}'`)
    const { text, values } = historySql(query)
    const stream = client.query(copyTo(`COPY (${inline(text, values)}) TO STDOUT`))
    const decoder = new StringDecoder('utf8')
    let pending = ''
    const properties = query.columns.properties
    for await (const chunk of stream) {
      if (signal?.aborted) {
        stream.destroy()
        throw new Error('stopped')
      }
      const text = pending + decoder.write(chunk as Buffer)
      const lines = text.split('\n')
      pending = lines.pop()!
      const rows: HistoryRow[] = new Array(lines.length)
      for (let index = 0; index < lines.length; index++) rows[index] = rowOf(lines[index]!.split('\t').map(copyField), properties)
      count += rows.length
      await onRows(rows)
    }
    if (pending !== '') throw new Error('the history ended inside a row')
    await client.query('RESET statement_timeout')
    await client.query('RESET work_mem')
    return count
  } catch (error) {
    broken = true
    throw error
  } finally {
    client.off('error', onError)
    client.release(broken || undefined)
  }
}

async function readPages(pool: pg.Pool, query: HistoryQuery, onRows: (rows: HistoryRow[]) => Promise<void> | void, signal?: AbortSignal): Promise<number> {
  let after: [string, number, string] | undefined
  let count = 0
  const raw = { getTypeParser: () => (value: string) => value }
  for (;;) {
    if (signal?.aborted) throw new Error('stopped')
    const { text, values } = historySql(query, after)
    const result = await pool.query<Array<string | null>>({ text, values, rowMode: 'array', types: raw as never })
    const rows = result.rows.map((fields) => rowOf(fields, query.columns.properties))
    count += rows.length
    await onRows(rows)
    if (rows.length < PAGE_ROWS) return count
    const last = rows[rows.length - 1]!
    after = [last.user, last.time, last.id]
  }
}

/** COPY takes no parameters: the values written into the statement as literals. */
function inline(text: string, values: readonly unknown[]): string {
  const literal = (value: unknown): string => {
    if (Array.isArray(value)) return `ARRAY[${value.map(literal).join(', ')}]::text[]`
    if (typeof value === 'number') return Number.isFinite(value) ? String(value) : 'NULL'
    return `'${String(value).replace(/'/g, "''")}'`
  }
  return text.replace(/\$(\d+)/g, (_, index: string) => literal(values[Number(index) - 1]))
}
