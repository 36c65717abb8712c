import fc from 'fast-check'
import t from 'tap'
import { createTableSeeder, historyColumnsOf, mergeSeeds, type HistoryRow } from '../../operators/funnel/backfill-table.ts'
import { historySql } from '../../operators/funnel/backfill-table-store.ts'
import type { Seed } from '../../operators/funnel/backfill.ts'
import { summarizeTrack } from '../../operators/funnel/match.ts'
import type { FunnelDefinition, PropertyFilter } from '../../schemas/funnel.ts'
import { FUNNEL_NAMES, funnelDefinitionArbitrary } from '../reference/funnel-arbitraries.ts'
import { referenceFunnel, type ReferenceEvent } from '../reference/funnel-reference.ts'

/**
 * Backfill from the tables, the pure part (docs/funnels.md, "Backfill"): history rows grouped by
 * user, in any order within a user, give each user the result of the brute-force reference over
 * the same events, with filters on event properties and on enrich's `$`-properties, breakdowns,
 * session starts, all three modes, and the track folded by a short horizon or a buffer of 1-4
 * events; a user's history split between the table and the stream, the two seeds merged, gives
 * the same.
 */

const SECOND = 1_000
const MINUTE = 60 * SECOND
const DEVICES = ['desktop', 'mobile'] as const
const CHANNELS = ['direct', 'email'] as const

const filterArbitrary: fc.Arbitrary<PropertyFilter> = fc.oneof(
  fc.record({ property: fc.constant('p'), operator: fc.constantFrom('eq', 'gte') as fc.Arbitrary<'eq' | 'gte'>, value: fc.integer({ min: 0, max: 3 }) }),
  fc.record({ property: fc.constant('$device'), value: fc.constantFrom(...DEVICES) }),
  fc.record({ property: fc.constant('$channel'), operator: fc.constant('neq' as const), value: fc.constantFrom(...CHANNELS) }),
)

const definitionArbitrary = funnelDefinitionArbitrary({
  name: 'from the table',
  filter: filterArbitrary,
  unfilteredFreq: 2,
  breakdown: fc.option(fc.constantFrom('q', '$channel', '$device'), { nil: undefined }),
})

interface Logged {
  time: number
  name: string
  p?: number
  q?: string
  device: string
  channel: string
  session: boolean
  id: string
}

const logArbitrary = fc.array(fc.record({
  time: fc.integer({ min: 0, max: 60 }).map((step) => step * 10 * SECOND),
  name: fc.constantFrom(...FUNNEL_NAMES),
  p: fc.option(fc.integer({ min: 0, max: 3 }), { nil: undefined, freq: 4 }),
  q: fc.option(fc.constantFrom('u', 'v'), { nil: undefined }),
  device: fc.constantFrom(...DEVICES),
  channel: fc.constantFrom(...CHANNELS),
  session: fc.integer({ min: 0, max: 7 }).map((n) => n === 0),
}), { minLength: 1, maxLength: 40 }).map((raw) => {
  const sessions = new Set<number>()
  return raw.map((event, index) => ({ ...event, id: `m${String((index * 7919) % 1000).padStart(3, '0')}-${index}` }))
    .filter((event) => !event.session || (!sessions.has(event.time) && sessions.add(event.time)))
})

/** As the table read gives it: an event row (the keys the funnel reads, enrich's context) or a session's start. */
function rowOf(user: string, event: Logged, seq: number): HistoryRow {
  if (event.session) return { kind: 'session', user, time: event.time, id: `$session_start:${user}:${event.time}`, source: 'live', seq, version: 1, device: event.device, channel: event.channel }
  const properties: Record<string, unknown> = {}
  if (event.p !== undefined) properties.p = event.p
  if (event.q !== undefined) properties.q = event.q
  return {
    kind: 'event', user, time: event.time, id: event.id, source: 'live', seq, name: event.name, properties,
    enrichment: { device: { type: event.device }, acquisition: { channel: event.channel }, bot: false },
  }
}

function referenceOf(user: string, event: Logged): ReferenceEvent {
  if (event.session) return { time: event.time, id: `$session_start:${user}:${event.time}`, name: '$session_start', properties: { $device: event.device, $channel: event.channel }, session: true }
  return { time: event.time, id: event.id, name: event.name, properties: { ...(event.p === undefined ? {} : { p: event.p }), ...(event.q === undefined ? {} : { q: event.q }), $device: event.device, $channel: event.channel } }
}

const summaryOf = (seed: Seed | undefined) => {
  if (seed === undefined) return { level: 0, stepTimes: [] as number[] }
  const summary = summarizeTrack(seed.state.funnels[0]!.track, Number.POSITIVE_INFINITY)
  return { level: summary.level, stepTimes: summary.stepTimes, ...(summary.breakdown === undefined ? {} : { breakdown: summary.breakdown }) }
}

const expectedOf = (definition: FunnelDefinition, user: string, log: Logged[]) => {
  const result = referenceFunnel(definition, log.map((event) => referenceOf(user, event)), Number.POSITIVE_INFINITY)
  return { level: result.level, stepTimes: result.level === 0 ? [] : result.stepTimes, ...(result.breakdown === undefined ? {} : { breakdown: result.breakdown }) }
}

const seederOf = (definition: FunnelDefinition, limits?: { horizonMs?: number; maxEvents?: number }) =>
  createTableSeeder({ project: 'alpha', funnelId: 'f', version: 1, definition, limits, enrichedStream: 'SEG_ENRICHED', sessionsStream: 'SEG_SESSIONS' })

/** The rows a read would give (the names the funnel reads, or all for a strict one), users one after the other, `order` within each. */
function seedsOf(definition: FunnelDefinition, logs: Logged[][], order: (rows: HistoryRow[]) => HistoryRow[], limits?: { horizonMs?: number; maxEvents?: number }): Map<string, Seed> {
  const columns = historyColumnsOf(definition)
  const seeder = seederOf(definition, limits)
  const seeds = new Map<string, Seed>()
  const take = (seed: Seed | undefined) => seed && seeds.set(seed.user, seed)
  logs.forEach((log, index) => {
    const user = `u${index}`
    const rows = log.map((event, at) => rowOf(user, event, at + 1))
      .filter((row) => (row.kind === 'session' ? columns.sessions : columns.names === undefined || columns.names.includes(row.name)))
    for (const row of order(rows)) take(seeder.add(row))
  })
  take(seeder.end())
  return seeds
}

t.test('each user from the table rows equals the reference', async (t) => {
  fc.assert(fc.property(
    definitionArbitrary, fc.array(logArbitrary, { minLength: 1, maxLength: 4 }), fc.integer(), fc.option(fc.record({ horizonMs: fc.constantFrom(10 * SECOND, 30 * SECOND), maxEvents: fc.integer({ min: 1, max: 4 }) }), { nil: undefined }),
    (definition, logs, shuffleSeed, limits) => {
      // within a user, rows in any order (the database's collation orders ids its own way)
      const shuffle = (rows: HistoryRow[]) => fc.sample(fc.shuffledSubarray(rows, { minLength: rows.length, maxLength: rows.length }), { seed: shuffleSeed, numRuns: 1 })[0]!
      const seeds = seedsOf(definition, logs, shuffle, limits)
      logs.forEach((log, index) => {
        const user = `u${index}`
        t.same(summaryOf(seeds.get(user)), expectedOf(definition, user, log), `${user}: ${JSON.stringify(definition)}`)
        const seed = seeds.get(user)
        if (seed) {
          t.equal(seed.state.seed?.id, 'f')
          t.equal(seed.lastTime, Math.max(...seed.state.funnels[0]!.track.t, seed.state.funnels[0]!.track.cutT ?? Number.NEGATIVE_INFINITY))
        }
      })
    },
  ), { numRuns: 150 })
})

t.test('a history split between the table and the stream (under two ids), the seeds merged, equals the reference: nothing counted twice', async (t) => {
  fc.assert(fc.property(definitionArbitrary, logArbitrary, fc.nat(), (definition, log, cutAt) => {
    // the table holds the first messages in stream order, the stream the rest
    const cut = cutAt % (log.length + 1)
    // the stream's part under two ids (the user, and an anonymous id linked to it whose link the stream no longer holds)
    const table = seedsOf(definition, [log.slice(0, cut)], (rows) => rows).get('u0')
    const streams = [0, 1].map((side) => seedsOf(definition, [log.slice(cut).filter((_, index) => index % 2 === side)], (rows) => rows).get('u0')).filter((seed) => seed !== undefined)
    const funnel = seederOf(definition).funnel
    const merged = table ? mergeSeeds(funnel, table, streams) : streams.length === 2 ? mergeSeeds(funnel, streams[0]!, [streams[1]!]) : streams[0]
    t.same(summaryOf(merged), expectedOf(definition, 'u0', log), JSON.stringify(definition))
  }), { numRuns: 150 })
})

t.test('the read selects what the funnel reads', async (t) => {
  const definition: FunnelDefinition = {
    id: 'f', name: 'f', steps: [{ event: '$page', filters: [{ property: '$path', value: '/' }] }, { event: '$session_start' }, { event: 'buy', filters: [{ property: 'amount', operator: 'gt', value: 0 }, { property: '$device', value: 'mobile' }] }],
    breakdown: { property: 'plan' },
  }
  t.same(historyColumnsOf(definition), { names: ['$page', 'buy'], properties: ['amount', 'path', 'plan'], page: true, enrichment: true, sessions: true })
  t.same(historyColumnsOf({ ...definition, mode: 'strict' }).names, undefined, 'a strict funnel reads every name')
  const sql = historySql({ project: 'p', enrichedBefore: 10, sessionsBefore: 5, columns: historyColumnsOf(definition) })
  t.match(sql.text, /enriched_seq < \$2::int8/)
  t.match(sql.text, /sessions_seq < \$\d+::int8 AND status <> '\$session_retract'/)
  t.match(sql.text, /IS DISTINCT FROM 'true'::jsonb/, 'bots left out')
  t.notMatch(historySql({ project: 'p', enrichedBefore: 10, sessionsBefore: 5, columns: historyColumnsOf(definition), countBots: true }).text, /'true'::jsonb/, 'unless counted')
})
