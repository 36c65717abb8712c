import t from 'tap'
import { LiveCountsBook } from '../../gateway/live/book.ts'
import { countsMessage, parseWatch } from '../../gateway/live/protocol.ts'
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

t.test('watch messages', async (t) => {
  t.same(parseWatch('{"type":"watch","engagement":true,"segments":["a","a","b"]}'), { engagement: true, segments: ['a', 'b'] })
  t.same(parseWatch('{"type":"watch"}'), { engagement: false, segments: [] })
  t.match(parseWatch('nope'), { error: /not JSON/ })
  t.match(parseWatch('{"type":"subscribe"}'), { error: /unknown message/ })
  t.match(parseWatch('{"type":"watch","segment":["a"]}'), { error: /unknown field "segment"/ })
  t.match(parseWatch('{"type":"watch","segments":"a"}'), { error: /a list of segment ids/ })
})

t.test('counts messages show what is watched', async (t) => {
  const book = new LiveCountsBook()
  book.apply('p', counts(0, 1, { Low: 1 }, { s1: 4 }))
  const sums = book.sums('p')
  t.same(countsMessage(sums, { engagement: true, segments: [] }, new Set(), 8),
    { type: 'counts', asOf: new Date(1_000).toISOString(), keyGroups: { reporting: 1, total: 8 }, engagement: { Low: 1, Medium: 0, 'Medium-High': 0, High: 0 } })
  t.same(countsMessage(sums, { engagement: false, segments: ['s1', 's2', 's3'] }, new Set(['s3']), 8).segments, { s1: 4, s2: 0, s3: null },
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
