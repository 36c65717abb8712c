import t from 'tap'
import { createLogger } from '../config/logger.ts'
import { funnelProgressRowOf } from '../operators/sink/rows.ts'
import { ENVELOPE_VERSION, type FunnelProgressEnvelope } from '../schemas/envelope.ts'
import type { FunnelProgressRow } from '../store/funnel-progress.ts'
import { openStore } from '../store/store.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'

// sink-funnels' half: a progress message becomes a funnel_progress row, and a row is replaced only
// by a higher version of the same (project, funnel, funnel version, user), on both database targets.

const logger = createLogger('silent')
const T0 = Date.parse('2019-05-10T10:00:00.123Z')

const progress = (overrides: Partial<FunnelProgressRow>): FunnelProgressRow => ({
  project: 'alpha', funnelId: 'checkout', funnelVersion: 1, canonicalId: 'u1', version: 1, level: 1, steps: 3, status: 'in_progress',
  stepTimes: [T0], breakdown: null, asOf: T0, mergedInto: null, ...overrides,
})

t.test('funnelProgressRowOf: a funnel_progress envelope as a row; watermarks and control are not the sink\'s', async (t) => {
  const envelope: FunnelProgressEnvelope = {
    v: ENVELOPE_VERSION, type: 'funnel_progress', project: 'alpha', id: 'checkout:2:u1:3', time: T0 + 60_000, key: 'u1', keyGroup: 5, source: 'import',
    origin: { stream: 'SEG_ENRICHED', seq: 42 },
    data: {
      funnelId: 'checkout', funnelVersion: 2, canonicalId: 'u1', version: 3, level: 2, steps: 3, status: 'dropped', stepTimes: [T0, T0 + 60_000],
      breakdown: 'organic_search', asOf: T0 + 20 * 86_400_000,
    },
  }
  t.same(funnelProgressRowOf(envelope), progress({
    funnelVersion: 2, version: 3, level: 2, status: 'dropped', stepTimes: [T0, T0 + 60_000], breakdown: 'organic_search', asOf: T0 + 20 * 86_400_000,
  }))
  const merged = { ...envelope, data: { ...envelope.data, level: 0, status: 'none' as const, stepTimes: [], mergedInto: 'user-9' } }
  delete (merged.data as { breakdown?: string }).breakdown
  t.same(funnelProgressRowOf(merged), progress({ funnelVersion: 2, version: 3, level: 0, status: 'none', stepTimes: [], asOf: T0 + 20 * 86_400_000, mergedInto: 'user-9' }))
  t.equal(funnelProgressRowOf({ v: ENVELOPE_VERSION, type: 'watermark', project: 'alpha', id: 'w', time: T0, key: '', keyGroup: 5, source: 'live' }), undefined)
  t.throws(() => funnelProgressRowOf({
    v: ENVELOPE_VERSION, type: 'dead_letter', project: 'alpha', id: 'd', time: T0, key: '', keyGroup: 5, source: 'live', data: { stepId: 'x', reason: 'y', payload: '' },
  }), /sink-funnels reads funnel_progress messages, got dead_letter/)
})

for (const target of DATABASE_TARGETS) {
  if (process.env.ONLY_TARGET && target.name !== process.env.ONLY_TARGET) continue
  t.test(`funnel_progress upserts on ${target.name}: the highest version wins`, async (t) => {
    const database = await target.start()
    const store = await openStore({ url: database.url, poolSize: target.poolSize, logger })
    t.teardown(async () => { await store.close(); await database.close() })
    await store.migrate()
    const read = async () => (await store.pool.query<Record<string, unknown>>(
      `SELECT project, funnel_id, funnel_version, canonical_id, version, level, steps, status, step_times, breakdown, as_of, merged_into
         FROM funnel_progress ORDER BY project, funnel_id, funnel_version, canonical_id`)).rows.map((row): Record<string, unknown> => ({
      ...row, step_times: (row.step_times as Date[]).map((time) => time.getTime()), as_of: (row.as_of as Date).getTime(),
    }))

    t.equal(await store.upsertFunnelProgress([]), 0, 'an empty batch is a no-op')
    t.equal(await store.upsertFunnelProgress([
      progress({}),
      // the same user twice in one batch: the higher version, whatever the order
      progress({ canonicalId: 'u2', version: 2, level: 2, stepTimes: [T0, T0 + 1_000] }),
      progress({ canonicalId: 'u2', version: 1 }),
      // other funnel versions and projects are rows of their own
      progress({ funnelVersion: 2 }),
      progress({ project: 'beta' }),
    ]), 4, 'one row per (project, funnel, funnel version, user)')
    t.equal(await store.upsertFunnelProgress([progress({ version: 1, level: 3, status: 'converted' })]), 0, 'the same version again changes nothing')
    t.equal(await store.upsertFunnelProgress([progress({ canonicalId: 'u2', version: 1, level: 1 })]), 0, 'a lower version changes nothing')
    t.equal(await store.upsertFunnelProgress([
      progress({ version: 2, level: 3, status: 'converted', stepTimes: [T0, T0 + 1_000, T0 + 2_000], breakdown: 'email', asOf: T0 + 2_000 }),
      progress({ canonicalId: 'u2', version: 3, level: 0, status: 'none', stepTimes: [], asOf: T0 + 5_000, mergedInto: 'u1' }),
    ]), 2, 'higher versions replace')
    const rows = await read()
    t.same(rows.find((row) => row.project === 'alpha' && row.canonical_id === 'u1' && row.funnel_version === 1), {
      project: 'alpha', funnel_id: 'checkout', funnel_version: 1, canonical_id: 'u1', version: 2, level: 3, steps: 3, status: 'converted',
      step_times: [T0, T0 + 1_000, T0 + 2_000], breakdown: 'email', as_of: T0 + 2_000, merged_into: null,
    }, 'a row reads back as written, step times to the millisecond')
    t.same(rows.find((row) => row.canonical_id === 'u2'), {
      project: 'alpha', funnel_id: 'checkout', funnel_version: 1, canonical_id: 'u2', version: 3, level: 0, steps: 3, status: 'none',
      step_times: [], as_of: T0 + 5_000, breakdown: null, merged_into: 'u1',
    }, 'an anonymous id merged away: status none, no step times')
    t.equal(rows.length, 4)
  })
}
