/**
 * The fixed set of exploration queries bench/explore.ts times (issue #7), each a call of
 * store/explore.ts exactly as the gateway's routes make it (own READ ONLY transaction, trait
 * catalogue, as-of look-up, then the query).
 */
import { countBy, createSegment, deleteSegment, getSegment, listDimensions, listUsers, type Database, type ExploreContext, type Filter } from '../store/explore.ts'

export interface TimedQuery {
  name: string
  /** One call of the API, through `db` (the pool, or a recording one for EXPLAIN). */
  run(db: Database): Promise<unknown>
}

/** Users per page in the users list. */
const PAGE = 50

export async function exploreQueries(pool: Database, context: ExploreContext): Promise<TimedQuery[]> {
  const mediumHigh = { dimension: 'engagement', equals: 'Medium-High' }
  const cell: Filter = { all: [mediumHigh, { dimension: 'acquisition_month', equals: '2019-05' }] }
  // the deep page: the one holding the cell's 80th percentile user, reached by walking the cursors once
  const cellSize = (await countBy(pool, context, { dimension: 'engagement', filter: cell })).total
  const deepPage = Math.max(1, Math.floor((cellSize * 0.8) / PAGE))
  let cursor: string | undefined
  let reached = 1
  while (reached <= deepPage) {
    const next: string | null = (await listUsers(pool, context, { filter: cell, limit: PAGE, cursor })).nextCursor
    if (next === null) break
    cursor = next
    reached++
  }
  return [
    { name: '1 users by engagement', run: (db) => countBy(db, context, { dimension: 'engagement' }) },
    { name: '2 Medium-High by acquisition month', run: (db) => countBy(db, context, { dimension: 'acquisition_month', filter: { all: [mediumHigh] } }) },
    {
      name: '3 channel | country=DE, device=mobile',
      run: (db) => countBy(db, context, { dimension: 'acquisition_channel', filter: { all: [{ dimension: 'country', equals: 'DE' }, { dimension: 'device', equals: 'mobile' }] } }),
    },
    {
      name: '4 country | month 2019-03..2019-08',
      run: (db) => countBy(db, context, { dimension: 'country', filter: { all: [{ dimension: 'acquisition_month', range: { from: '2019-03', to: '2019-08' } }] } }),
    },
    {
      name: '5 engagement | click_event1 >= 2 in 30 days',
      run: (db) => countBy(db, context, { dimension: 'engagement', filter: { all: [{ event: 'click_event1', atLeast: 2, inLastDays: 30 }] } }),
    },
    { name: '6 trait.plan | engagement Medium-High', run: (db) => countBy(db, context, { dimension: 'trait.plan', filter: { all: [mediumHigh] } }) },
    { name: `7a users of Medium-High x 2019-05, page 1`, run: (db) => listUsers(db, context, { filter: cell, limit: PAGE }) },
    { name: `7b users of Medium-High x 2019-05, page ${reached}`, run: (db) => listUsers(db, context, { filter: cell, limit: PAGE, cursor }) },
    { name: '8 dimensions', run: (db) => listDimensions(db, context.project) },
  ]
}

/** The saved segment `--extra`'s segment-size query reads (re-created by each run). */
const SEGMENT_ID = 'bench-clickers'

/**
 * `--extra`: behavioural conditions beyond query 5, through the same calls: beside a dimension
 * condition, the largest event name over the longest window, beside a negated one, a saved
 * segment's size, and grouped by a trait (not a column profile_event_series copies: joined with profiles).
 */
export async function extraBehaviouralQueries(pool: Database, context: ExploreContext): Promise<TimedQuery[]> {
  const did = { event: 'click_event1', atLeast: 2, inLastDays: 30 }
  await deleteSegment(pool, context, SEGMENT_ID)
  await createSegment(pool, context, { id: SEGMENT_ID, name: 'clicked twice in 30 days', filter: { all: [did] } })
  return [
    { name: '5b country | click_event1 >= 2 in 30 days, device=mobile', run: (db) => countBy(db, context, { dimension: 'country', filter: { all: [did, { dimension: 'device', equals: 'mobile' }] } }) },
    { name: '5c engagement | $page >= 1 in 90 days', run: (db) => countBy(db, context, { dimension: 'engagement', filter: { all: [{ event: '$page', atLeast: 1, inLastDays: 90 }] } }) },
    {
      name: '5d engagement | click_event1 >= 2, not search in 30 days',
      run: (db) => countBy(db, context, { dimension: 'engagement', filter: { all: [did, { event: 'search', atLeast: 1, inLastDays: 30, not: true }] } }),
    },
    { name: '5e segment size: click_event1 >= 2 in 30 days', run: (db) => getSegment(db, context, SEGMENT_ID) },
    { name: '5f trait.plan | click_event1 >= 2 in 30 days', run: (db) => countBy(db, context, { dimension: 'trait.plan', filter: { all: [did] } }) },
  ]
}
