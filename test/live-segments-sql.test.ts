import t from 'tap'
import { createLogger } from '../config/logger.ts'
import { profileOf, profileValuesOf, type ProfileState } from '../operators/profile/logic.ts'
import { matches, segmentDefinitionOf } from '../operators/profile/segments.ts'
import { profileRowOf } from '../operators/sink/rows.ts'
import { ENVELOPE_VERSION, type ProfileEnvelope } from '../schemas/envelope.ts'
import type { EngagementLevel } from '../schemas/profile.ts'
import { countBy } from '../store/explore.ts'
import { openStore } from '../store/store.ts'
import { startPostgres } from './harness/postgres.ts'

// A saved segment's live size must be the size the exploration API counts in SQL. Random
// profiles go into the profiles table the way sink-profiles writes them (profileOf, then
// profileRowOf); random filters over every dimension kind (levels, months, strings with and
// without values, numbers, traits of mixed JSON types, negations) are counted by the SQL of
// store/explore.ts and by the profile step's live evaluation of the same users' states.

/** mulberry32: a small seeded generator, so a failure can be run again. */
function random(seed: number) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const SEED = Number(process.env.SEED ?? 7)
const next = random(SEED)
const pick = <T>(values: readonly T[]): T => values[Math.floor(next() * values.length)]!
const maybe = <T>(value: T, probability = 0.7): T | undefined => (next() < probability ? value : undefined)
const LEVELS: EngagementLevel[] = ['Low', 'Medium', 'Medium-High', 'High']
const MONTHS = ['2019-01', '2019-02', '2019-03', '2019-04', '2019-05', '2019-06']
const CHANNELS = ['direct', 'organic_search', 'paid_search']
const COUNTRIES = ['DE', 'FR', 'US']
const T0 = Date.parse('2019-01-01T00:00:00Z')

function userState(index: number): ProfileState {
  const first = T0 + Math.floor(next() * 150) * 86_400_000
  const last = first + Math.floor(next() * 30) * 86_400_000
  const traits: ProfileState['traits'] = {}
  const trait = (name: string, value: unknown) => { if (value !== undefined) traits[name] = { value, time: first, messageId: `m${index}`, once: false } }
  trait('plan', pick(['pro', 'free', null, undefined]))
  trait('age', pick([31, 45, '31', 'unknown', undefined]))
  trait('vip', pick([true, false, undefined]))
  trait('tags', pick([['a'], undefined]))
  const channel = maybe(pick(CHANNELS))
  const deviceType = maybe(pick(['mobile', 'desktop']))
  const country = maybe(pick(COUNTRIES))
  const score = Math.floor(next() * 101)
  return {
    canonicalId: `u${String(index).padStart(4, '0')}`, project: 'p', events: 1 + Math.floor(next() * 60), sessions: Math.floor(next() * 10),
    first: { time: first, messageId: `f${index}` }, last: { time: last, messageId: `l${index}` }, lastDay: Math.floor(last / 86_400_000),
    acquisition: { month: pick(MONTHS), ...(channel ? { channel } : {}) },
    ...(deviceType ? { device: { type: deviceType, time: last, messageId: `l${index}`, ...(next() < 0.5 ? { browser: 'Chrome' } : {}) } } : {}),
    ...(country ? { geo: { country, time: last, messageId: `l${index}`, ...(next() < 0.5 ? { city: 'Berlin' } : {}) } } : {}),
    traits, names: [], days: [], tracked: [],
    engagement: { level: pick(LEVELS), score, day: Math.floor(last / 86_400_000), recencyDays: 0, activeDays: 1, events: 1, asOf: last },
    profileVersion: 0, membershipVersion: 0, source: 'live', origin: { stream: 'SEG_ENRICHED', seq: index },
  }
}

/** One random condition, valid for the SQL (a range only where it applies, values of the dimension's kind). */
function condition(): Record<string, unknown> {
  const not = next() < 0.25 ? { not: true } : {}
  const kind = Math.floor(next() * 12)
  switch (kind) {
    case 0: return { dimension: 'engagement', equals: pick(LEVELS), ...not }
    case 1: {
      const low = Math.floor(next() * 4)
      const high = low + Math.floor(next() * (4 - low))
      return { dimension: 'engagement', range: { ...(next() < 0.7 ? { from: LEVELS[low] } : {}), to: LEVELS[high] }, ...not }
    }
    case 2: return { dimension: 'acquisition_month', range: { from: pick(MONTHS.slice(0, 3)), ...(next() < 0.5 ? { to: pick(MONTHS.slice(3)) } : {}) }, ...not }
    case 3: return { dimension: 'acquisition_channel', in: [pick(CHANNELS), ...(next() < 0.5 ? [null] : [])], ...not }
    case 4: return { dimension: 'country', equals: pick([...COUNTRIES, null]), ...not }
    case 5: return { dimension: pick(['device', 'browser', 'city']), equals: pick(['mobile', 'Chrome', 'Berlin', null]), ...not }
    case 6: return { dimension: pick(['events', 'sessions', 'engagement_score']), range: { from: Math.floor(next() * 30), ...(next() < 0.5 ? { to: 30 + Math.floor(next() * 70) } : {}) }, ...not }
    case 7: return { dimension: 'trait.plan', in: [pick(['pro', 'free']), ...(next() < 0.4 ? [null] : [])], ...not }
    case 8: return { dimension: 'trait.age', equals: pick([31, '31', 45, null]), ...not }
    case 9: return { dimension: 'trait.age', range: { from: pick([18, 31, 40]), ...(next() < 0.5 ? { to: pick([45, 60]) } : {}) }, ...not }
    case 10: return { dimension: 'trait.vip', equals: pick([true, false, null]), ...not }
    default: return { dimension: 'trait.tags', equals: 'a', ...not }
  }
}

t.test(`live segment membership equals the SQL count, random profiles and filters (seed ${SEED})`, async (t) => {
  const database = await startPostgres()
  const store = await openStore({ url: database.url, poolSize: 2, logger: createLogger('silent') })
  t.teardown(async () => { await store.close(); await database.close() })
  await store.migrate()

  const states = Array.from({ length: 400 }, (_, index) => userState(index))
  const rows = states.map((state, index) => {
    const envelope: ProfileEnvelope = {
      v: ENVELOPE_VERSION, type: 'profile', project: 'p', id: `${state.canonicalId}:profile:1`, time: state.last!.time, key: state.canonicalId, keyGroup: 0,
      source: 'live', origin: state.origin, data: { canonicalId: state.canonicalId, version: 1, profile: profileOf(state) },
    }
    return profileRowOf(envelope, index + 1)!
  })
  await store.upsertProfiles(rows)

  let nonTrivial = 0
  for (let round = 0; round < 250; round++) {
    const filter = { all: Array.from({ length: 1 + Math.floor(next() * 3) }, condition) }
    const sql = (await countBy(store.pool, { project: 'p', timezone: 'UTC' }, { dimension: 'engagement', filter: filter as never })).total
    const segment = segmentDefinitionOf('s', 1, filter)
    const live = states.filter((state) => matches(segment, profileValuesOf(state))).length
    if (live !== sql) {
      t.fail(`filter ${JSON.stringify(filter)}: SQL counts ${sql}, the live evaluation ${live}`)
      return
    }
    if (sql > 0 && sql < states.length) nonTrivial++
  }
  t.pass('250 random filters: the same count')
  t.ok(nonTrivial > 100, `most filters split the users (${nonTrivial} of 250)`)
})
