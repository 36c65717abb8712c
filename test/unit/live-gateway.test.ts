import t from 'tap'
import { LiveCountsBook } from '../../gateway/live/book.ts'
import { funnelView, type LiveFunnel } from '../../gateway/live/funnels.ts'
import { emptyStepCounts } from '../../operators/counts/funnels.ts'
import { DURATION_BUCKETS_MS, durationBucketOf } from '../../schemas/funnel.ts'
import { countsMessage, parseWatch } from '../../gateway/live/protocol.ts'
import { RestrictedFunnels } from '../../gateway/live/restricted.ts'
import { PushThrottle } from '../../gateway/live/throttle.ts'

// The gateway's side of live counts, pure: the book keeps the highest version per key group and
// sums over key groups; the WebSocket protocol's watch and counts messages.

const counts = (keyGroup: number, version: number, engagement: Record<string, number>, segments: Record<string, number> = {}, asOf = 1_000 * version) =>
  ({ keyGroup, version, asOf, counts: { engagement, segments } })

t.test('the book: the highest version per key group, summed', async (t) => {
  const book = new LiveCountsBook()
  t.same(book.sums('p'), { engagement: { Low: 0, Medium: 0, 'Medium-High': 0, High: 0 }, segments: {}, asOf: null, keyGroups: 0 }, 'nothing yet: zeros')
  t.ok(book.apply('p', counts(0, 2, { Low: 2 }, { s1: 1 })))
  t.ok(book.apply('p', counts(1, 5, { Low: 1, High: 3 }, { s1: 2, s2: 1 })))
  t.ok(book.apply('q', counts(0, 9, { Medium: 7 })))
  t.same(book.sums('p'), { engagement: { Low: 3, Medium: 0, 'Medium-High': 0, High: 3 }, segments: { s1: 3, s2: 1 }, asOf: 5_000, keyGroups: 2 })
  t.notOk(book.apply('p', counts(0, 2, { Low: 2 }, { s1: 1 })), 'the same version again (a replay, a redelivery): nothing changes')
  t.notOk(book.apply('p', counts(0, 1, { Low: 1 })), 'an older version arriving late: ignored')
  t.same(book.sums('p').engagement.Low, 3, 'never counted twice')
  t.ok(book.apply('p', counts(0, 3, { Low: 1, Medium: 1 })))
  t.same(book.sums('p').engagement, { Low: 2, Medium: 1, 'Medium-High': 0, High: 3 })
  t.same(book.sums('q').engagement, { Low: 0, Medium: 7, 'Medium-High': 0, High: 0 }, 'projects apart')
})

t.test('funnel step counts: the highest version per key group, summed for the funnel version asked', async (t) => {
  const book = new LiveCountsBook()
  const group = (keyGroup: number, version: number, reached: number[], inProgress: number[], dropped: number[], funnelVersion = 2) => {
    const counts = { ...emptyStepCounts('signup', funnelVersion, 3), reached, inProgress, dropped }
    counts.conversionTimes[0]![durationBucketOf(4_000)] = reached[1]!
    counts.conversionTimes[1]![durationBucketOf(3_600_000)] = reached[2]!
    return { keyGroup, version, asOf: 1_000 * version, funnels: [counts] }
  }
  t.ok(book.applyFunnels('p', group(0, 4, [3, 2, 1], [1, 0, 0], [0, 1, 0])))
  t.ok(book.applyFunnels('p', group(1, 7, [2, 1, 0], [0, 1, 0], [1, 0, 0])))
  t.ok(book.applyFunnels('p', group(2, 1, [5, 5, 5], [0, 0, 0], [0, 0, 0], 1)), 'a key group that has only seen version 1')
  t.notOk(book.applyFunnels('p', group(0, 3, [9, 9, 9], [0, 0, 0], [0, 0, 0])), 'an older publication: ignored')
  t.same(book.apply('p', { keyGroup: 0, version: 1, asOf: 0, counts: { engagement: {}, segments: {} } }), true, 'segment counts are versioned apart')
  const sums = book.funnelSums('p', 'signup', 2, 3)
  t.same([sums.reached, sums.inProgress, sums.dropped, sums.asOf, sums.keyGroups], [[5, 3, 1], [1, 1, 0], [1, 1, 0], 7_000, 3], 'summed over the key groups counting version 2')
  const funnel: LiveFunnel = { id: 'signup', name: 'Signup', version: 2, definition: { id: 'signup', name: 'Signup', steps: [{ event: 'a' }, { event: 'b', label: 'B' }, { event: 'c' }] } }
  const view = funnelView(funnel, sums)
  t.same(view.steps.map((step) => [step.reached, step.dropOff, step.inProgress, step.dropped]), [[5, 2, 1, 1], [3, 2, 1, 1], [1, 0, 0, 0]], 'per step as the /result API: reached, drop-off split by status')
  t.same([view.entered, view.converted, view.segmentApplied, view.steps[1]!.label], [5, 1, true, 'B'])
  t.same(view.steps.map((step) => step.timeToConvert), [null, { users: 3, medianAtMostMs: 5_000, p90AtMostMs: 5_000 }, { users: 1, medianAtMostMs: 3_600_000, p90AtMostMs: 3_600_000 }], 'times to convert to a bucket\'s precision')
  t.equal(DURATION_BUCKETS_MS[durationBucketOf(4_000)], 5_000)
  t.equal(funnelView({ ...funnel, definition: { ...funnel.definition, segment: { segmentId: 'seg_x' } } }, sums).segmentApplied, false, 'a restricted funnel says its live counts are of all users')
  t.same(book.funnelSums('p', 'signup', 3, 3).reached, [0, 0, 0], 'a version nobody has counted yet: zeros')
})

t.test('watch messages', async (t) => {
  t.same(parseWatch('{"type":"watch","engagement":true,"segments":["a","a","b"]}'), { engagement: true, segments: ['a', 'b'], funnels: [] })
  t.same(parseWatch('{"type":"watch"}'), { engagement: false, segments: [], funnels: [] })
  t.same(parseWatch('{"type":"watch","funnels":["signup","signup"]}'), { engagement: false, segments: [], funnels: ['signup'] })
  t.match(parseWatch('{"type":"watch","funnels":"signup"}'), { error: /a list of funnel ids/ })
  t.match(parseWatch('nope'), { error: /not JSON/ })
  t.match(parseWatch('{"type":"subscribe"}'), { error: /unknown message/ })
  t.match(parseWatch('{"type":"watch","segment":["a"]}'), { error: /unknown field "segment"/ })
  t.match(parseWatch('{"type":"watch","segments":"a"}'), { error: /a list of segment ids/ })
})

t.test('counts messages show what is watched', async (t) => {
  const book = new LiveCountsBook()
  book.apply('p', counts(0, 1, { Low: 1 }, { s1: 4 }))
  const sums = book.sums('p')
  t.same(countsMessage(sums, { engagement: true, segments: [], funnels: [] }, new Set(), 8),
    { type: 'counts', asOf: new Date(1_000).toISOString(), keyGroups: { reporting: 1, total: 8 }, engagement: { Low: 1, Medium: 0, 'Medium-High': 0, High: 0 } })
  t.same(countsMessage(sums, { engagement: false, segments: ['s1', 's2', 's3'], funnels: [] }, new Set(['s3']), 8).segments, { s1: 4, s2: 0, s3: null },
    'a segment nobody is in: 0; one without a live size: null')
})

t.test('pushes: at most one per interval, the changes in between together', async (t) => {
  let now = 0
  const pushedAt: number[] = []
  const timers: Array<{ at: number; run: () => void; cancelled: boolean }> = []
  const throttle = new PushThrottle({
    intervalMs: 250, now: () => now, push: () => pushedAt.push(now),
    schedule: (run, ms) => {
      const timer = { at: now + ms, run, cancelled: false }
      timers.push(timer)
      return { cancel: () => { timer.cancelled = true } }
    },
  })
  const advance = (to: number) => {
    for (;;) {
      const next = timers.filter((timer) => !timer.cancelled && timer.at <= to).sort((a, b) => a.at - b.at)[0]
      if (!next) break
      timers.splice(timers.indexOf(next), 1)
      now = next.at
      next.run()
    }
    now = to
  }
  throttle.changed()
  t.same(pushedAt, [0], 'the first change goes out at once')
  for (let at = 10; at < 1_000; at += 10) { advance(at); throttle.changed() }
  advance(1_500)
  t.same(pushedAt, [0, 250, 500, 750, 1_000], 'a change every 10 ms: 4 pushes a second')
  advance(2_000)
  throttle.changed()
  t.same(pushedAt.at(-1), 2_000, 'after a quiet spell: at once again')
  throttle.pushed()
  advance(2_100)
  throttle.changed()
  advance(2_200)
  t.equal(pushedAt.length, 6, 'a watch answered at 2,000 counts as a push: the next waits')
  advance(2_250)
  t.same(pushedAt.at(-1), 2_250)
  throttle.changed()
  throttle.stop()
  advance(3_000)
  t.equal(pushedAt.length, 7, 'stopped (the socket closed): nothing more')
})

t.test('restricted funnels: one query in flight per funnel, the latest change wins, bounded retries while SQL is behind', async (t) => {
  const definition = { id: 'may', name: 'May', steps: [{ event: 'a' }, { event: 'b' }], segment: { segmentId: 'seg_may' } }
  const funnel: LiveFunnel = { id: 'may', name: 'May', version: 1, definition }
  let live = { reached: [2, 1], inProgress: [1, 0], dropped: [0, 0] }
  let sqlAllUsers = live
  const waiting: Array<() => void> = []
  let slow = false
  const restricted = new RestrictedFunnels({
    minIntervalMs: 0, retryDelayMs: 1, maxRetries: 3, refreshMs: 3_600_000, logger: { warn: () => {} },
    liveSums: () => ({ ...live, conversionTimes: [[]], asOf: 5_000, keyGroups: 2 }),
    compute: async () => {
      if (slow) await new Promise<void>((resolve) => waiting.push(resolve))
      return {
        funnel: { id: 'may', name: 'May', version: 1 }, from: null, to: null, entered: 1, converted: 0, conversion: 0,
        steps: [
          { step: 1, event: 'a', reached: 1, conversionFromPrevious: 1, conversionFromFirst: 1, dropOff: 1, inProgress: 1, dropped: 0, timeToConvert: null },
          { step: 2, event: 'b', reached: 0, conversionFromPrevious: 0, conversionFromFirst: 0, dropOff: 0, inProgress: 0, dropped: 0, timeToConvert: null },
        ],
        allUsers: sqlAllUsers,
      }
    },
  })
  t.teardown(() => restricted.stop())
  // waits for a state the code holds until something else moves it; fails (instead of hanging) after 10 s
  const until = async (check: () => boolean) => {
    const deadline = Date.now() + 10_000
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`still waiting after 10 s (queries: ${restricted.queries}, waiting: ${waiting.length})`)
      await new Promise((resolve) => setTimeout(resolve, 2))
    }
  }
  const sums = { engagement: { Low: 0, Medium: 0, 'Medium-High': 0, High: 0 }, segments: { seg_may: 1 }, asOf: 5_000, keyGroups: 2 }

  const view = await restricted.current('p', funnel)
  t.same([view!.segmentApplied, view!.entered, view!.asOf, restricted.queries], [true, 1, new Date(5_000).toISOString(), 1], 'computed on first demand, from SQL')
  restricted.liveChanged('p', sums)
  await until(() => restricted.queries === 2)
  restricted.liveChanged('p', sums)
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(restricted.queries, 2, 'live counts and segment size unchanged: no query')

  slow = true
  live = { reached: [3, 1], inProgress: [2, 0], dropped: [0, 0] }
  sqlAllUsers = live
  restricted.liveChanged('p', sums)
  await until(() => waiting.length === 1)
  for (let change = 0; change < 5; change++) {
    live = { reached: [4 + change, 1], inProgress: [3 + change, 0], dropped: [0, 0] }
    restricted.liveChanged('p', sums)
  }
  sqlAllUsers = live
  waiting.shift()!()
  await until(() => waiting.length === 1)
  t.equal(restricted.queries, 4, 'five changes while a query ran: one more query after it')
  slow = false
  waiting.shift()!()
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(restricted.queries, 4, 'and none after: SQL agrees with the live counts')

  live = { reached: [10, 2], inProgress: [8, 0], dropped: [0, 0] }
  restricted.liveChanged('p', sums) // SQL stays behind: sqlAllUsers is not this
  await until(() => restricted.queries === 8)
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(restricted.queries, 8, 'SQL behind the live counts: queried again, 3 retries at most')
  sqlAllUsers = live // caught up: the next query ends the run of retries (else retries after query 9 could pass 9 between two polls)
  restricted.liveChanged('p', { ...sums, segments: { seg_may: 2 } })
  await until(() => restricted.queries === 9)
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(restricted.queries, 9, 'the saved segment\'s live size moved: queried again, once')

  // the funnel's segment changed in place while a query runs: the view waits for a query of the new definition
  slow = true
  restricted.liveChanged('p', { ...sums, segments: { seg_may: 3 } })
  await until(() => waiting.length === 1)
  const changed = restricted.current('p', { ...funnel, definition: { ...definition, segment: { segmentId: 'seg_june' } } })
  slow = false
  waiting.shift()!()
  t.ok(await changed, 'answered')
  t.equal(restricted.queries, 11, 'by the query after the one that ran under the old definition')
})
