/**
 * What profile_event_series (migration 0012) costs the profiles sink: store/profiles.ts's batch
 * upsert (profiles, their day rows, and their rows of profile_event_series, the table's triggers
 * standing aside) timed against the write path before 0012 (the same statements but the series',
 * below, with the triggers disabled), batch by batch in turns, on a fresh PostgreSQL cluster
 * (test/harness/postgres.ts, default server settings).
 *
 *   node bench/explore-writes.ts [--users 20000] [--batch 2000] [--rounds 10] [--seed 1] [--no-triggers] [--workload events|replace]
 *
 * The users are written once (their first version, triggers on), then every round writes the next
 * version of one batch of them with each setting: a new version replaces a user's profile and its
 * per-day counts, which is what the sink does for every profile change (batches of 2,000, the
 * sink-profiles consumer's batch size). Each user starts with 3-25 day rows over 1-5 event names
 * within 90 days. Its next version (`--workload events`, the default) has 1-3 more events of one of
 * its names on its last day, as a profile change does; `--workload replace` draws every day row
 * anew (every series row of the user changes). Prints each setting's p50 / max per batch and per
 * profile; last line JSON.
 * `--no-triggers`: the table's triggers disabled for both (the sink writes the series rows itself
 * anyway): what capturing their transition tables costs the sink.
 */
import { parseArgs } from 'node:util'
import { createLogger } from '../config/logger.ts'
import type pg from 'pg'
import type { ProfileRow } from '../store/profiles.ts'
import { openStore } from '../store/store.ts'
import { startPostgres } from '../test/harness/postgres.ts'

const { values } = parseArgs({
  options: {
    users: { type: 'string', default: '20000' },
    batch: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '10' },
    seed: { type: 'string', default: '1' },
    'no-triggers': { type: 'boolean', default: false },
    workload: { type: 'string', default: 'events' },
  },
})
const USERS = Number(values.users)
const BATCH = Number(values.batch)
const ROUNDS = Number(values.rounds)
const WORKLOAD = values.workload
if (WORKLOAD !== 'events' && WORKLOAD !== 'replace') throw new Error(`--workload is events or replace, not ${JSON.stringify(WORKLOAD)}`)
let state = Number(values.seed) >>> 0 || 1
const random = () => {
  // xorshift32: the same users for the same seed
  state ^= state << 13
  state ^= state >>> 17
  state ^= state << 5
  return (state >>> 0) / 2 ** 32
}
const NAMES = ['$page', 'click_event1', 'search', 'custom_event2', 'add_to_cart']
const LEVELS = ['Low', 'Medium', 'Medium-High', 'High']
const COUNTRIES = ['US', 'DE', 'GB', 'FR', 'IN']
const FIRST_DAY = Date.parse('2019-10-01T00:00:00Z')

function days(): ProfileRow['days'] {
  const rows = new Map<string, ProfileRow['days'][number]>()
  const names = NAMES.slice(0, 1 + Math.floor(random() * NAMES.length))
  const n = 3 + Math.floor(random() * 23)
  for (let i = 0; i < n; i++) {
    const day = new Date(FIRST_DAY + Math.floor(random() * 90) * 86_400_000).toISOString().slice(0, 10)
    const name = names[Math.floor(random() * names.length)]!
    rows.set(`${day}/${name}`, { day, name, count: 1 + Math.floor(random() * 5) })
  }
  return [...rows.values()]
}

function profile(user: number, version: number): ProfileRow {
  return {
    project: 'bench', canonicalId: `user-${String(user).padStart(7, '0')}`, firstSeen: FIRST_DAY, lastSeen: FIRST_DAY + 89 * 86_400_000,
    acquisitionMonth: '2019-10', acquisitionChannel: 'direct', acquisitionSource: null, acquisitionMedium: null, acquisitionCampaign: null,
    deviceType: random() < 0.5 ? 'mobile' : 'desktop', browser: 'Chrome', os: 'Android', country: COUNTRIES[Math.floor(random() * COUNTRIES.length)]!,
    city: null, events: 20 * version, sessions: version, engagementLevel: LEVELS[Math.floor(random() * LEVELS.length)]!, engagementScore: 50,
    engagementAsOf: FIRST_DAY + 89 * 86_400_000, traits: { plan: 'pro' }, mergedInto: null, version, profilesSeq: version, days: days(),
  }
}

/**
 * `--workload events`: the next version as the profile step makes one, the user's last profile
 * with 1-3 more events of one of its names on its last day (its other names' counts unchanged),
 * the engagement level changed one time in ten.
 */
function nextVersion(last: ProfileRow): ProfileRow {
  const lastDay = last.days.reduce((max, day) => (day.day > max ? day.day : max), '')
  const name = last.days[Math.floor(random() * last.days.length)]!.name
  const added = 1 + Math.floor(random() * 3)
  const found = last.days.some((day) => day.day === lastDay && day.name === name)
  const days = found
    ? last.days.map((day) => (day.day === lastDay && day.name === name ? { ...day, count: day.count + added } : day))
    : [...last.days, { day: lastDay, name, count: added }]
  return {
    ...last, days, events: last.events + added, version: last.version + 1, profilesSeq: last.profilesSeq + 1,
    engagementLevel: random() < 0.1 ? LEVELS[Math.floor(random() * LEVELS.length)]! : last.engagementLevel,
  }
}

/** store/profiles.ts's upsertProfiles before migration 0012: profiles, then the written users' day rows replaced. */
async function upsertBefore0012(pool: pg.Pool, rows: ProfileRow[]): Promise<number> {
  const columns = ['project', 'canonical_id', 'first_seen', 'last_seen', 'acquisition_month', 'acquisition_channel', 'acquisition_source', 'acquisition_medium',
    'acquisition_campaign', 'device_type', 'browser', 'os', 'country', 'city', 'events', 'sessions', 'engagement_level', 'engagement_score', 'engagement_as_of',
    'traits', 'merged_into', 'version', 'profiles_seq']
  const types = ['text', 'text', 'timestamptz', 'timestamptz', 'text', 'text', 'text', 'text', 'text', 'text', 'text', 'text', 'text', 'text', 'int', 'int', 'text',
    'int', 'timestamptz', 'text', 'text', 'int', 'bigint']
  const date = (ms: number | null) => (ms === null ? null : new Date(ms))
  const values = rows.map((r) => [r.project, r.canonicalId, date(r.firstSeen), date(r.lastSeen), r.acquisitionMonth, r.acquisitionChannel, r.acquisitionSource,
    r.acquisitionMedium, r.acquisitionCampaign, r.deviceType, r.browser, r.os, r.country, r.city, r.events, r.sessions, r.engagementLevel,
    r.engagementScore, date(r.engagementAsOf), JSON.stringify(r.traits), r.mergedInto, r.version, r.profilesSeq])
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    const written = await client.query<{ project: string; canonical_id: string }>(
      `INSERT INTO profiles (${columns.join(', ')})
       SELECT ${columns.map((c) => (c === 'traits' ? 'traits::jsonb' : c)).join(', ')} FROM unnest(${types.map((type, i) => `$${i + 1}::${type}[]`).join(', ')}) AS t(${columns.join(', ')})
       ON CONFLICT (project, canonical_id) DO UPDATE SET ${columns.slice(2).map((c) => `${c} = EXCLUDED.${c}`).join(', ')}, updated_at = now()
       WHERE profiles.version < EXCLUDED.version
       RETURNING project, canonical_id`, columns.map((_, c) => values.map((v) => v[c])))
    const byUser = new Map(rows.map((row) => [row.canonicalId, row]))
    const users = written.rows.map((row) => byUser.get(row.canonical_id)!)
    await client.query(`DELETE FROM profile_event_days d USING unnest($1::text[], $2::text[]) AS t(project, canonical_id)
      WHERE d.project = t.project AND d.canonical_id = t.canonical_id`, [users.map((u) => u.project), users.map((u) => u.canonicalId)])
    const days = users.flatMap((user) => user.days.map((day) => [user.project, user.canonicalId, day.day, day.name, day.count]))
    await client.query(`INSERT INTO profile_event_days (project, canonical_id, day, name, count)
      SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::int[])`, [0, 1, 2, 3, 4].map((c) => days.map((day) => day[c])))
    await client.query('COMMIT')
    return written.rows.length
  } catch (error) {
    await client.query('ROLLBACK')
    throw error
  } finally {
    client.release()
  }
}

const TRIGGERS = [
  ['profiles', 'profile_event_series_on_profiles_insert'], ['profiles', 'profile_event_series_on_profiles_update'],
  ['profile_event_days', 'profile_event_series_on_days_insert'], ['profile_event_days', 'profile_event_series_on_days_delete'],
] as const

const database = await startPostgres()
const store = await openStore({ url: database.url, poolSize: 2, logger: createLogger('warn'), target: 'postgres' })
try {
  await store.migrate()
  const pool = store.pool
  const setTriggers = async (on: boolean) => {
    for (const [table, trigger] of TRIGGERS) await pool.query(`ALTER TABLE ${table} ${on ? 'ENABLE' : 'DISABLE'} TRIGGER ${trigger}`)
  }
  const latest: ProfileRow[] = Array.from({ length: USERS }, (_, user) => profile(user, 1))
  for (let start = 0; start < USERS; start += BATCH) await store.upsertProfiles(latest.slice(start, start + BATCH))
  await pool.query('VACUUM ANALYZE profiles, profile_event_days, profile_event_series')
  const dayRows = Number((await pool.query<{ n: string }>('SELECT count(*) AS n FROM profile_event_days')).rows[0]!.n)
  process.stderr.write(`${USERS.toLocaleString('en')} users, ${dayRows.toLocaleString('en')} day rows written; ${ROUNDS} rounds of a ${BATCH}-profile batch per setting\n`)
  const samples = { with_series: [] as number[], without_series: [] as number[] }
  let next = 0
  for (let round = 0; round < ROUNDS; round++) {
    // the order of the two settings alternates, so drift (autovacuum, other work) falls on both
    const order = round % 2 === 0 ? (['with_series', 'without_series'] as const) : (['without_series', 'with_series'] as const)
    for (const setting of order) {
      await setTriggers(!values['no-triggers'] && setting === 'with_series')
      const batch = Array.from({ length: BATCH }, () => {
        const user = next++ % USERS
        const version = WORKLOAD === 'events' ? nextVersion(latest[user]!) : profile(user, latest[user]!.version + 1)
        latest[user] = version
        return version
      })
      const started = performance.now()
      const written = setting === 'with_series' ? await store.upsertProfiles(batch) : await upsertBefore0012(pool, batch)
      samples[setting].push(performance.now() - started)
      if (written !== BATCH) throw new Error(`wrote ${written} of ${BATCH}`)
    }
  }
  await setTriggers(true)
  // the batches written without the triggers left the table behind: refilled, it agrees again
  await pool.query('SELECT profile_event_series_rebuild(NULL, NULL)')
  const figure = (ms: number[]) => {
    const sorted = [...ms].sort((a, b) => a - b)
    const p50 = sorted[Math.floor((sorted.length - 1) / 2)]!
    return { p50_ms: Math.round(p50), max_ms: Math.round(sorted.at(-1)!), p50_us_per_profile: Math.round((1000 * p50) / BATCH) }
  }
  const result = { users: USERS, day_rows: dayRows, batch: BATCH, rounds: ROUNDS, workload: WORKLOAD, triggers: !values['no-triggers'], with_series: figure(samples.with_series), without_series: figure(samples.without_series) }
  for (const setting of ['without_series', 'with_series'] as const) {
    const f = result[setting]
    console.log(`${setting.padEnd(15)} p50 ${String(f.p50_ms).padStart(5)} ms  max ${String(f.max_ms).padStart(5)} ms  per profile ${f.p50_us_per_profile} µs`)
  }
  console.log(JSON.stringify(result))
} finally {
  await store.close()
  await database.close()
}
