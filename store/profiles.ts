import type pg from 'pg'

/** One event name's count on one local day of a user. */
export interface ProfileDayCount {
  /** `YYYY-MM-DD` in the project's timezone. */
  day: string
  name: string
  count: number
}

/**
 * One row of the profiles table (store/migrations/0005_profiles.sql), with the user's per-day
 * event-name counts. Times are ms since the epoch. A row with `mergedInto` is the end of a
 * profile whose user was merged into another: its fields are null and it counts for nothing.
 */
export interface ProfileRow {
  project: string
  canonicalId: string
  firstSeen: number | null
  lastSeen: number | null
  acquisitionMonth: string | null
  acquisitionChannel: string | null
  acquisitionSource: string | null
  acquisitionMedium: string | null
  acquisitionCampaign: string | null
  deviceType: string | null
  browser: string | null
  os: string | null
  country: string | null
  city: string | null
  events: number
  sessions: number
  engagementLevel: string | null
  engagementScore: number | null
  engagementAsOf: number | null
  traits: Record<string, unknown>
  mergedInto: string | null
  version: number
  /** Where this version is stored in SEG_PROFILES. */
  profilesSeq: number
  days: ProfileDayCount[]
}

type WithClient = <T>(work: (client: pg.PoolClient) => Promise<T>) => Promise<T>

const PROFILE_COLUMNS = [
  ['project', 'text'], ['canonical_id', 'text'], ['first_seen', 'timestamptz'], ['last_seen', 'timestamptz'], ['acquisition_month', 'text'],
  ['acquisition_channel', 'text'], ['acquisition_source', 'text'], ['acquisition_medium', 'text'], ['acquisition_campaign', 'text'],
  ['device_type', 'text'], ['browser', 'text'], ['os', 'text'], ['country', 'text'], ['city', 'text'], ['events', 'int'], ['sessions', 'int'],
  ['engagement_level', 'text'], ['engagement_score', 'int'], ['engagement_as_of', 'timestamptz'], ['traits', 'jsonb'], ['merged_into', 'text'],
  ['version', 'int'], ['profiles_seq', 'bigint'],
] as const
const names = PROFILE_COLUMNS.map(([column]) => column).join(', ')
const selected = PROFILE_COLUMNS.map(([column, type]) => (type === 'jsonb' ? `${column}::jsonb` : column)).join(', ')
// jsonb travels as text[] (pg has no jsonb[] literal encoder) and is cast per row
const params = PROFILE_COLUMNS.map(([, type], i) => `$${i + 1}::${type === 'jsonb' ? 'text' : type}[]`).join(', ')
const UPSERT_PROFILES = `INSERT INTO profiles (${names})
  SELECT ${selected} FROM unnest(${params}) AS t(${names})
  ON CONFLICT (project, canonical_id) DO UPDATE SET ${PROFILE_COLUMNS.slice(2).map(([column]) => `${column} = EXCLUDED.${column}`).join(', ')}, updated_at = now()
  WHERE profiles.version < EXCLUDED.version
  RETURNING project, canonical_id`
const DELETE_DAYS = `DELETE FROM profile_event_days d USING unnest($1::text[], $2::text[]) AS t(project, canonical_id)
  WHERE d.project = t.project AND d.canonical_id = t.canonical_id`
const INSERT_DAYS = `INSERT INTO profile_event_days (project, canonical_id, day, name, count)
  SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::int[])`

/**
 * profile_event_series (migration 0012, what behavioural conditions read) is kept by triggers on
 * profiles and profile_event_days; within an upsert they stand aside (this setting, for the
 * transaction) and the written users' rows are brought up to date here, computed from the rows in
 * hand: the same rows as the migration's profile_event_series_rebuild (test/explore-series.test.ts
 * checks both); rows that did not change are not written.
 */
const SERIES_BY_WRITER = `SET LOCAL segstream.series_by_writer = 'on'`
// the written users' rows of names they no longer have (all of them for a user merged away)
const DELETE_SERIES = `DELETE FROM profile_event_series s USING unnest($1::text[], $2::text[]) AS t(project, canonical_id)
  WHERE s.project = t.project AND s.canonical_id = t.canonical_id
    AND NOT EXISTS (SELECT 1 FROM unnest($3::text[], $4::text[], $5::text[]) AS k(project, canonical_id, name)
                     WHERE k.project = s.project AND k.canonical_id = s.canonical_id AND k.name = s.name)`
// a row written only when it changed: a new version usually adds events to one name, the user's
// other names keep their rows untouched. The running totals travel as array literals, one per row
// (unnest would flatten an array of arrays).
const SERIES_COLUMNS = ['project', 'name', 'canonical_id', 'first_day', 'last_day', 'cumulative', 'engagement_level', 'acquisition_month', 'acquisition_channel', 'country', 'device_type']
const SERIES_VALUES = SERIES_COLUMNS.slice(3)
const UPSERT_SERIES = `INSERT INTO profile_event_series (${SERIES_COLUMNS.join(', ')})
  SELECT project, name, canonical_id, first_day, last_day, cumulative::integer[], engagement_level, acquisition_month, acquisition_channel, country, device_type
    FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::date[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
      AS t(${SERIES_COLUMNS.join(', ')})
  ON CONFLICT (project, canonical_id, name) DO UPDATE SET ${SERIES_VALUES.map((column) => `${column} = EXCLUDED.${column}`).join(', ')}
  WHERE (${SERIES_VALUES.map((column) => `profile_event_series.${column}`).join(', ')}) IS DISTINCT FROM (${SERIES_VALUES.map((column) => `EXCLUDED.${column}`).join(', ')})`
const DAY_MS = 86_400_000

/**
 * A live user's rows of profile_event_series, one per event name: the days from its first to its
 * last with events, each holding the running total of the name's counts up to that day.
 */
export function seriesRows(user: ProfileRow): unknown[][] {
  if (user.mergedInto !== null) return []
  const byName = new Map<string, ProfileDayCount[]>()
  for (const day of user.days) byName.set(day.name, [...(byName.get(day.name) ?? []), day])
  return [...byName].map(([name, days]) => {
    const sorted = days.map((day) => ({ at: Date.parse(`${day.day}T00:00:00Z`) / DAY_MS, count: day.count, day: day.day })).sort((a, b) => a.at - b.at)
    const first = sorted[0]!
    const last = sorted[sorted.length - 1]!
    const totals = new Array<number>(last.at - first.at + 1).fill(0)
    for (const day of sorted) totals[day.at - first.at]! += day.count
    for (let i = 1; i < totals.length; i++) totals[i]! += totals[i - 1]!
    return [user.project, name, user.canonicalId, first.day, last.day, `{${totals.join(',')}}`,
      user.engagementLevel, user.acquisitionMonth, user.acquisitionChannel, user.country, user.deviceType]
  })
}

const date = (ms: number | null) => (ms === null ? null : new Date(ms))

/** The newest version of each user among `rows`: a batch may hold several. */
function newestPerUser(rows: readonly ProfileRow[]): ProfileRow[] {
  const newest = new Map<string, ProfileRow>()
  for (const row of rows) {
    const key = `${row.project}\u0000${row.canonicalId}`
    const seen = newest.get(key)
    if (!seen || seen.version < row.version) newest.set(key, row)
  }
  return [...newest.values()]
}

export function profileStore(withClient: WithClient) {
  return {
    /**
     * Upserts profiles in one transaction; a row is replaced only by a higher version, and a
     * replaced (or new) user's per-day counts are replaced by the new version's. Returns the
     * users written.
     */
    async upsertProfiles(rows: readonly ProfileRow[]): Promise<number> {
      if (rows.length === 0) return 0
      const newest = newestPerUser(rows)
      const columns: unknown[][] = PROFILE_COLUMNS.map(() => new Array(newest.length))
      newest.forEach((r, i) => {
        const values = [r.project, r.canonicalId, date(r.firstSeen), date(r.lastSeen), r.acquisitionMonth, r.acquisitionChannel, r.acquisitionSource,
          r.acquisitionMedium, r.acquisitionCampaign, r.deviceType, r.browser, r.os, r.country, r.city, r.events, r.sessions, r.engagementLevel,
          r.engagementScore, date(r.engagementAsOf), JSON.stringify(r.traits), r.mergedInto, r.version, r.profilesSeq]
        values.forEach((value, c) => (columns[c]![i] = value))
      })
      return withClient(async (client) => {
        await client.query('BEGIN')
        try {
          // profile_event_series (migration 0012): its triggers stand aside, the users are rebuilt once below
          await client.query(SERIES_BY_WRITER)
          const written = await client.query<{ project: string; canonical_id: string }>(UPSERT_PROFILES, columns)
          if (written.rows.length > 0) {
            const byUser = new Map(newest.map((row) => [`${row.project}\u0000${row.canonicalId}`, row]))
            const users = written.rows.map((row) => byUser.get(`${row.project}\u0000${row.canonical_id}`)!)
            const keys = [users.map((u) => u.project), users.map((u) => u.canonicalId)]
            await client.query(DELETE_DAYS, keys)
            const days = users.flatMap((user) => user.days.map((day) => [user.project, user.canonicalId, day.day, day.name, day.count] as const))
            if (days.length > 0) await client.query(INSERT_DAYS, [0, 1, 2, 3, 4].map((c) => days.map((day) => day[c])))
            const series = users.flatMap(seriesRows)
            await client.query(DELETE_SERIES, [...keys, series.map((row) => row[0]), series.map((row) => row[2]), series.map((row) => row[1])])
            if (series.length > 0) await client.query(UPSERT_SERIES, series[0]!.map((_, c) => series.map((row) => row[c])))
          }
          await client.query('COMMIT')
          return written.rows.length
        } catch (error) {
          await client.query('ROLLBACK').catch(() => undefined)
          throw error
        }
      })
    },

    /** A user's stored profile (merged ones included), or undefined. */
    async getProfile(project: string, canonicalId: string): Promise<ProfileRow | undefined> {
      return withClient(async (client) => {
        const result = await client.query<Record<string, unknown>>('SELECT * FROM profiles WHERE project = $1 AND canonical_id = $2', [project, canonicalId])
        const row = result.rows[0]
        if (!row) return undefined
        const days = await client.query<{ day: string; name: string; count: number }>(
          `SELECT to_char(day, 'YYYY-MM-DD') AS day, name, count FROM profile_event_days WHERE project = $1 AND canonical_id = $2 ORDER BY day, name`,
          [project, canonicalId])
        return toProfileRow(row, days.rows)
      })
    },

    /** Users (not merged away) per engagement level and acquisition month: what the README's walkthrough shows. */
    async profileCounts(project: string): Promise<{ level: string | null; month: string | null; users: number }[]> {
      return withClient(async (client) => {
        const result = await client.query<{ level: string | null; month: string | null; users: string }>(
          `SELECT engagement_level AS level, acquisition_month AS month, count(*) AS users FROM profiles
            WHERE project = $1 AND merged_into IS NULL GROUP BY 1, 2 ORDER BY 1, 2`, [project])
        return result.rows.map((row) => ({ level: row.level, month: row.month, users: Number(row.users) }))
      })
    },
  }
}

const time = (value: unknown) => (value instanceof Date ? value.getTime() : null)

function toProfileRow(row: Record<string, unknown>, days: ProfileDayCount[]): ProfileRow {
  return {
    project: row.project as string, canonicalId: row.canonical_id as string, firstSeen: time(row.first_seen), lastSeen: time(row.last_seen),
    acquisitionMonth: row.acquisition_month as string | null, acquisitionChannel: row.acquisition_channel as string | null,
    acquisitionSource: row.acquisition_source as string | null, acquisitionMedium: row.acquisition_medium as string | null,
    acquisitionCampaign: row.acquisition_campaign as string | null, deviceType: row.device_type as string | null, browser: row.browser as string | null,
    os: row.os as string | null, country: row.country as string | null, city: row.city as string | null, events: row.events as number,
    sessions: row.sessions as number, engagementLevel: row.engagement_level as string | null, engagementScore: row.engagement_score as number | null,
    engagementAsOf: time(row.engagement_as_of), traits: row.traits as Record<string, unknown>, mergedInto: row.merged_into as string | null,
    version: row.version as number, profilesSeq: Number(row.profiles_seq), days,
  }
}
