/**
 * The fixed set of exploration queries bench/explore.ts times (issue #7).
 * Interim: SQL equivalent to the exploration API's, until store/explore.ts lands.
 */
import type pg from 'pg'

export interface TimedQuery {
  name: string
  run(): Promise<unknown>
}

const ACTIVE = 'project = $1 AND merged_into IS NULL'

export async function exploreQueries(pool: pg.Pool, project: string): Promise<TimedQuery[]> {
  const q = (text: string, values: unknown[]) => () => pool.query(text, values)
  const cell = (await pool.query<{ n: string }>(`SELECT count(*) AS n FROM profiles WHERE ${ACTIVE} AND engagement_level = 'Medium-High' AND acquisition_month = '2019-05'`, [project])).rows[0]!.n
  // the last full page of the cell's 80th percentile: deep, but never empty
  const deepOffset = Math.max(0, Math.floor((Number(cell) * 0.8) / 50) * 50)
  return [
    { name: '1 users by engagement', run: q(`SELECT engagement_level AS value, count(*)::int AS users FROM profiles WHERE ${ACTIVE} GROUP BY 1 ORDER BY 2 DESC`, [project]) },
    { name: '2 Medium-High by acquisition month', run: q(`SELECT acquisition_month AS value, count(*)::int AS users FROM profiles WHERE ${ACTIVE} AND engagement_level = $2 GROUP BY 1 ORDER BY 1`, [project, 'Medium-High']) },
    { name: '3 channel | country=DE, device=mobile', run: q(`SELECT acquisition_channel AS value, count(*)::int AS users FROM profiles WHERE ${ACTIVE} AND country = $2 AND device_type = $3 GROUP BY 1 ORDER BY 2 DESC`, [project, 'DE', 'mobile']) },
    { name: '4 country | month 2019-03..2019-08', run: q(`SELECT country AS value, count(*)::int AS users FROM profiles WHERE ${ACTIVE} AND acquisition_month BETWEEN $2 AND $3 GROUP BY 1 ORDER BY 2 DESC`, [project, '2019-03', '2019-08']) },
    {
      name: '5 engagement | click_event1 >= 2 in 30 days',
      run: q(
        `WITH as_of AS (SELECT (max(engagement_as_of) AT TIME ZONE 'Europe/Berlin')::date AS as_of_day FROM profiles WHERE project = $1),
              did AS (SELECT canonical_id FROM profile_event_days, as_of
                       WHERE project = $1 AND name = $2 AND day > as_of_day - 30 AND day <= as_of_day
                       GROUP BY canonical_id HAVING sum(count) >= $3)
         SELECT p.engagement_level AS value, count(*)::int AS users FROM profiles p JOIN did USING (canonical_id)
          WHERE p.project = $1 AND p.merged_into IS NULL GROUP BY 1 ORDER BY 2 DESC`,
        [project, 'click_event1', 2],
      ),
    },
    { name: '6 trait.plan | engagement Medium-High', run: q(`SELECT traits->>'plan' AS value, count(*)::int AS users FROM profiles WHERE ${ACTIVE} AND engagement_level = $2 GROUP BY 1 ORDER BY 2 DESC`, [project, 'Medium-High']) },
    { name: '7a users of Medium-High x 2019-05, page 1', run: q(`SELECT canonical_id, first_seen, last_seen, country, device_type, engagement_score, traits FROM profiles WHERE ${ACTIVE} AND engagement_level = $2 AND acquisition_month = $3 ORDER BY canonical_id LIMIT 50`, [project, 'Medium-High', '2019-05']) },
    { name: `7b users of Medium-High x 2019-05, offset ${deepOffset}`, run: q(`SELECT canonical_id, first_seen, last_seen, country, device_type, engagement_score, traits FROM profiles WHERE ${ACTIVE} AND engagement_level = $2 AND acquisition_month = $3 ORDER BY canonical_id LIMIT 50 OFFSET $4`, [project, 'Medium-High', '2019-05', deepOffset]) },
    { name: '8 dimensions', run: q(`SELECT name, type FROM profile_traits WHERE project = $1 ORDER BY name`, [project]) },
  ]
}
