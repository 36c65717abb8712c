import t from 'tap'
import { createLogger } from '../config/logger.ts'
import type { ProfileRow } from '../store/profiles.ts'
import { openStore } from '../store/store.ts'
import { DATABASE_TARGETS } from './harness/postgres.ts'

// profile_event_series (migration 0012) is what behavioural conditions read: one row per (project,
// event name, live user) with a running total of the per-day counts and a copy of the grouping
// columns. Its triggers keep it equal to what profile_event_days and profiles say, whoever writes
// them: the profiles sink (a new version replacing a user's days, a merge) or plain SQL. Checked
// here against the rows recomputed in JS from the two tables, on each target.

const logger = createLogger('silent')
const DAY = 86_400_000
const dayNumber = (day: string) => Date.parse(`${day}T00:00:00Z`) / DAY

interface SeriesRow {
  project: string
  name: string
  canonical_id: string
  first_day: string
  last_day: string
  cumulative: number[]
  engagement_level: string | null
  acquisition_month: string | null
  acquisition_channel: string | null
  country: string | null
  device_type: string | null
}

for (const target of DATABASE_TARGETS) {
  t.test(`profile_event_series on ${target.name}`, async (t) => {
    const database = await target.start()
    const store = await openStore({ url: database.url, poolSize: target.poolSize, logger })
    t.teardown(async () => { await store.close(); await database.close() })
    await store.migrate()
    const pool = store.pool

    const stored = async (): Promise<SeriesRow[]> => (await pool.query<SeriesRow>(
      `SELECT project, name, canonical_id, to_char(first_day, 'YYYY-MM-DD') AS first_day, to_char(last_day, 'YYYY-MM-DD') AS last_day, cumulative,
              engagement_level, acquisition_month, acquisition_channel, country, device_type
         FROM profile_event_series ORDER BY project, name, canonical_id`)).rows
    // the oracle: from the day rows and the live profiles, a running total over every day of the span
    const expected = async (): Promise<SeriesRow[]> => {
      const days = (await pool.query<{ project: string; canonical_id: string; day: string; name: string; count: number }>(
        `SELECT project, canonical_id, to_char(day, 'YYYY-MM-DD') AS day, name, count FROM profile_event_days`)).rows
      const profiles = new Map((await pool.query<Record<string, string | null>>('SELECT * FROM profiles WHERE merged_into IS NULL')).rows
        .map((p) => [`${p.project}/${p.canonical_id}`, p]))
      const groups = new Map<string, typeof days>()
      for (const row of days) {
        const key = `${row.project}/${row.canonical_id}/${row.name}`
        groups.set(key, [...(groups.get(key) ?? []), row])
      }
      const rows: SeriesRow[] = []
      for (const group of groups.values()) {
        const { project, canonical_id, name } = group[0]!
        const profile = profiles.get(`${project}/${canonical_id}`)
        if (!profile) continue
        const sorted = [...group].map((row) => row.day).sort()
        const first = dayNumber(sorted[0]!)
        const cumulative: number[] = new Array(dayNumber(sorted.at(-1)!) - first + 1).fill(0)
        for (const row of group) cumulative[dayNumber(row.day) - first]! += row.count
        for (let i = 1; i < cumulative.length; i++) cumulative[i]! += cumulative[i - 1]!
        rows.push({
          project, name, canonical_id, first_day: sorted[0]!, last_day: sorted.at(-1)!, cumulative,
          engagement_level: profile.engagement_level!, acquisition_month: profile.acquisition_month!, acquisition_channel: profile.acquisition_channel!,
          country: profile.country!, device_type: profile.device_type!,
        })
      }
      const key = (r: SeriesRow) => `${r.project}\u0000${r.name}\u0000${r.canonical_id}`
      return rows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0))
    }
    const agrees = async (what: string) => t.same(await stored(), await expected(), what)

    const profile = (canonicalId: string, version: number, days: ProfileRow['days'], overrides: Partial<ProfileRow> = {}): ProfileRow => ({
      project: 'alpha', canonicalId, firstSeen: Date.parse('2019-05-01T08:00:00Z'), lastSeen: Date.parse('2019-05-10T10:00:00Z'),
      acquisitionMonth: '2019-05', acquisitionChannel: 'email', acquisitionSource: null, acquisitionMedium: null, acquisitionCampaign: null,
      deviceType: 'mobile', browser: 'Safari', os: 'iOS', country: 'DE', city: 'Berlin', events: 10, sessions: 2,
      engagementLevel: 'Medium', engagementScore: 40, engagementAsOf: Date.parse('2019-05-10T12:00:00Z'), traits: {},
      mergedInto: null, version, profilesSeq: version, days, ...overrides,
    })

    // the sink's path
    await store.upsertProfiles([
      profile('u1', 1, [{ day: '2019-05-01', name: 'click', count: 2 }, { day: '2019-05-04', name: 'click', count: 3 }, { day: '2019-05-04', name: '$page', count: 1 }]),
      profile('u2', 1, [{ day: '2019-05-10', name: 'click', count: 1 }], { engagementLevel: 'High', country: null }),
      profile('u3', 1, []),
    ])
    t.same((await stored()).find((r) => r.canonical_id === 'u1' && r.name === 'click')?.cumulative, [2, 2, 2, 5], 'May 1..4: 2, nothing, nothing, 3 more')
    await agrees('new profiles from the sink')
    await store.upsertProfiles([profile('u1', 2, [{ day: '2019-05-09', name: 'click', count: 1 }], { engagementLevel: 'High' }), profile('u2', 1, [])])
    await agrees('a newer version replaces the days and the grouping columns; an older one changes nothing')
    t.equal((await stored()).filter((r) => r.canonical_id === 'u2').length, 1, 'u2 (version 1 again) kept its row')
    const v2 = [{ day: '2019-05-09', name: 'click', count: 1 }]
    await store.upsertProfiles([profile('u1', 3, [...v2, { day: '2019-05-12', name: 'search', count: 2 }], { engagementLevel: 'High' })])
    await agrees('a version adding a name keeps the unchanged one')
    await store.upsertProfiles([profile('u1', 4, [...v2, { day: '2019-05-12', name: 'search', count: 2 }], { engagementLevel: 'Low', country: 'PL' })])
    await agrees('the same days, the grouping columns changed')
    await store.upsertProfiles([profile('u1', 5, [{ day: '2019-05-09', name: 'click', count: 1 }, { day: '2019-05-11', name: 'click', count: 3 }], { engagementLevel: 'Low', country: 'PL' })])
    await agrees('a name dropped, another grown')
    await store.upsertProfiles([profile('u2', 2, [], { mergedInto: 'u1', engagementLevel: null })])
    await agrees('a user merged away has no rows')
    t.notOk((await stored()).some((r) => r.canonical_id === 'u2'))

    // plain SQL, as tests and imports write
    await pool.query(`INSERT INTO profile_event_days (project, canonical_id, day, name, count) VALUES ('alpha', 'u3', '2019-05-02', 'search', 1), ('alpha', 'u3', '2019-05-07', 'search', 4), ('alpha', 'nobody', '2019-05-07', 'search', 4)`)
    await agrees('days inserted after their profile; days of a user without a profile count for nothing')
    await pool.query(`INSERT INTO profiles (project, canonical_id, country, engagement_level, version, profiles_seq) VALUES ('alpha', 'nobody', 'FR', 'Low', 1, 1)`)
    await agrees('a profile inserted after its days')
    await pool.query(`UPDATE profiles SET country = 'AT', acquisition_channel = 'social' WHERE canonical_id = 'u3'`)
    await agrees('grouping columns copied again')
    await pool.query(`UPDATE profile_event_days SET count = 9 WHERE canonical_id = 'u3' AND day = '2019-05-02'`)
    await pool.query(`DELETE FROM profile_event_days WHERE canonical_id = 'nobody'`)
    await agrees('days updated and deleted')
    await pool.query(`UPDATE profiles SET merged_into = NULL, engagement_level = 'Low' WHERE canonical_id = 'u2'`)
    await pool.query(`INSERT INTO profile_event_days (project, canonical_id, day, name, count) VALUES ('alpha', 'u2', '2019-05-03', 'click', 2)`)
    await agrees('a user live again')
    await pool.query(`DELETE FROM profiles WHERE canonical_id = 'u3'`)
    await agrees('a profile deleted')
    const before = await stored()
    await pool.query('SELECT profile_event_series_rebuild(NULL, NULL)')
    t.same(await stored(), before, 'the fill of migration 0012 and of bench-explore\'s load (every user at once) writes the same rows')
    await pool.query('TRUNCATE profile_event_days')
    t.same(await stored(), [], 'nothing left after a TRUNCATE')
  })
}
