/**
 * The events table of bench/funnels-backfill.ts: --events seeded rows of --users users, written
 * straight into `events` by COPY from a generated stream (the pipeline would take an hour for
 * 10,000,000), as the events sink writes them (operators/sink/rows.ts: properties, the client's
 * context, what enrich derived in `enrichment`). Rows go in the order events arrive: users
 * interleaved, each user's clock moving forward (minutes apart, sometimes days), so a user's rows
 * are spread over the whole table as live data is. Names and properties are the funnel
 * benchmarks' (bench/funnels-workload.ts). Every row's `enriched_seq` is its position (1, 2, ...):
 * the bench then makes SEG_ENRICHED begin after the last one, so the backfill reads them all from
 * the table. Indexes and the primary key are dropped for the COPY and built again after it.
 */
import { once } from 'node:events'
import { finished } from 'node:stream/promises'
import type pg from 'pg'
import { from as copyFrom } from 'pg-copy-streams'
import { seededRandom } from '../operators/runtime/generator.ts'
import { keyGroupOf } from '../topology/subjects.ts'
import { DAY, MINUTE, pickName, propertiesOf, T0 } from './funnels-workload.ts'

export interface BackfillDataOptions {
  seed: number
  users: number
  events: number
  project: string
  keyGroups: number
}

const DEVICES = ['desktop', 'desktop', 'mobile', 'mobile', 'tablet']
const CHANNELS = ['direct', 'organic_search', 'paid_search', 'social', 'email', 'referral']
const COUNTRIES = ['DE', 'US', 'FR', 'GB', 'BR', 'IN']
/** Of users, the share that are bots (their events are excluded from funnels, as enrich flags them). */
const BOT_SHARE = 0.01

const COLUMNS = 'project, message_id, event_time, received_at, type, name, canonical_id, anonymous_id, user_id, source, key_group, raw_stream, raw_seq, enriched_seq, properties, traits, context, extra, enrichment'

/** JSON as COPY's text format wants it (the generated values hold no backslash, tab or newline). */
const json = (value: unknown) => JSON.stringify(value)

export interface LoadedEvents {
  events: number
  users: number
  /** The events of users enrich flagged as bots. */
  botEvents: number
  copySeconds: number
  indexSeconds: number
  analyzeSeconds: number
  tableMb: number
}

/** Generates the rows as COPY text, in pieces of about 1 MB. */
function* rowsOf(options: BackfillDataOptions): Generator<{ text: string; rows: number; botRows: number }> {
  const next = seededRandom(options.seed)
  const users = Array.from({ length: options.users }, (_, index) => `user-${index.toString(36)}-${Math.floor(next() * 1e9).toString(36)}`)
  const clock = Array.from({ length: options.users }, () => T0 + Math.floor(next() * 20 * DAY))
  // each user's enrichment, fixed per user (one device, one acquisition), and its JSON made once
  const enrichment = users.map(() => json({
    device: { type: DEVICES[Math.floor(next() * DEVICES.length)]! }, acquisition: { channel: CHANNELS[Math.floor(next() * CHANNELS.length)]! },
    geo: { country: COUNTRIES[Math.floor(next() * COUNTRIES.length)]! }, bot: next() < BOT_SHARE,
  }))
  const keyGroup = users.map((user) => keyGroupOf(user, options.keyGroups))
  const context = json({ library: { name: 'bench' } })
  let text = ''
  let rows = 0
  let botRows = 0
  for (let index = 0; index < options.events; index++) {
    // some users are much busier than others
    const userIndex = Math.floor(options.users * next() ** 2)
    const user = users[userIndex]!
    clock[userIndex]! += next() < 0.9 ? Math.floor(next() * 5 * MINUTE) : Math.floor(next() * 2 * DAY)
    const name = pickName(next)
    const properties = propertiesOf(name, next)
    const time = new Date(clock[userIndex]!).toISOString()
    const type = name === '$page' ? 'page' : 'track'
    const seq = index + 1
    text += `${options.project}\t${user}-${index}\t${time}\t${time}\t${type}\t${name}\t${user}\t\\N\t${user}\tlive\t${keyGroup[userIndex]}\tSEG_RAW\t${seq}\t${seq}\t${json(properties)}\t\\N\t${context}\t{}\t${enrichment[userIndex]}\n`
    rows++
    if (enrichment[userIndex]!.endsWith('true}')) botRows++
    if (text.length >= 1 << 20) {
      yield { text, rows, botRows }
      text = ''
      rows = 0
      botRows = 0
    }
  }
  if (rows > 0) yield { text, rows, botRows }
}

/**
 * Replaces the project's events with the generated rows. The table's indexes (primary key
 * included) are dropped for the COPY and built again after it, two at a time; then VACUUM ANALYZE.
 */
export async function loadBackfillEvents(pool: pg.Pool, options: BackfillDataOptions, onProgress: (rows: number) => void): Promise<LoadedEvents> {
  const indexes = (await pool.query<{ name: string; definition: string; primary: boolean }>(
    `SELECT i.relname AS name, pg_get_indexdef(i.oid) AS definition, x.indisprimary AS primary
       FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = 'events'::regclass`,
  )).rows
  for (const index of indexes) {
    if (index.primary) await pool.query(`ALTER TABLE events DROP CONSTRAINT ${index.name}`)
    else await pool.query(`DROP INDEX ${index.name}`)
  }
  const copyStarted = performance.now()
  const client = await pool.connect()
  let events = 0
  let botEvents = 0
  try {
    await client.query('BEGIN')
    await client.query('TRUNCATE events')
    // FREEZE: rows written already frozen and all-visible (the table was truncated in this transaction)
    const copy = client.query(copyFrom(`COPY events (${COLUMNS}) FROM STDIN WITH (FREEZE)`))
    let reported = performance.now()
    for (const piece of rowsOf(options)) {
      events += piece.rows
      botEvents += piece.botRows
      if (!copy.write(piece.text)) await once(copy, 'drain')
      if (performance.now() - reported > 5_000) {
        reported = performance.now()
        onProgress(events)
      }
    }
    copy.end()
    await finished(copy)
    await client.query('COMMIT')
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined)
    throw error
  } finally {
    client.release()
  }
  const copySeconds = (performance.now() - copyStarted) / 1000
  const indexStarted = performance.now()
  const queue = [...indexes]
  await Promise.all([0, 1].map(async () => {
    for (let index = queue.shift(); index !== undefined; index = queue.shift()) {
      if (index.primary) {
        const columns = /\((.*)\)/.exec(index.definition)![1]
        await pool.query(`ALTER TABLE events ADD CONSTRAINT ${index.name} PRIMARY KEY (${columns})`)
      } else {
        await pool.query(index.definition)
      }
    }
  }))
  const indexSeconds = (performance.now() - indexStarted) / 1000
  const analyzeStarted = performance.now()
  await pool.query('VACUUM ANALYZE events')
  const analyzeSeconds = (performance.now() - analyzeStarted) / 1000
  const size = await pool.query<{ bytes: string }>(`SELECT pg_total_relation_size('events') AS bytes`)
  return { events, users: options.users, botEvents, copySeconds, indexSeconds, analyzeSeconds, tableMb: Math.round(Number(size.rows[0]!.bytes) / 1e6) }
}
