import assert from 'node:assert/strict'
import fc from 'fast-check'
import t from 'tap'
import { applyControl, definitionsInForce, DEFAULT_DEFINITIONS, type Definitions } from '../../operators/aggregate/definitions.ts'
import { dayWindowOf, hourWindowOf, windowProblem, windowsOf } from '../../operators/aggregate/windows.ts'
import type { AggregateWindow } from '../../schemas/aggregate.ts'

const MINUTE = 60_000
const HOUR = 60 * MINUTE
const at = (iso: string) => Date.parse(iso)
const iso = (time: number) => new Date(time).toISOString().replace('.000Z', 'Z')
const span = (bounds: { start: number; end: number }) => [iso(bounds.start), iso(bounds.end)]

const DAY: AggregateWindow = { kind: 'tumbling', unit: 'day' }
const HOUR_WINDOW: AggregateWindow = { kind: 'tumbling', unit: 'hour' }

/** The wall clock of an instant in a timezone, as `YYYY-MM-DD HH:mm`, read straight from Intl. */
function wallClock(time: number, timezone: string): string {
  const parts = Object.fromEntries(new Intl.DateTimeFormat('en-CA', {
    timeZone: timezone, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
  }).formatToParts(time).map((part) => [part.type, part.value]))
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}`
}

t.test('day windows: local days of the project timezone', async (t) => {
  const table: [string, string, string, string][] = [
    // time, timezone, start, end
    ['2019-04-30T22:30:00Z', 'Europe/Berlin', '2019-04-30T22:00:00Z', '2019-05-01T22:00:00Z'], // May 1st in Berlin
    ['2019-04-30T22:30:00Z', 'UTC', '2019-04-30T00:00:00Z', '2019-05-01T00:00:00Z'], // still April 30th in UTC
    ['2019-05-01T03:59:59Z', 'America/New_York', '2019-04-30T04:00:00Z', '2019-05-01T04:00:00Z'],
    ['2019-03-31T12:00:00Z', 'Europe/Berlin', '2019-03-30T23:00:00Z', '2019-03-31T22:00:00Z'], // clocks forward: 23 hours
    ['2019-10-27T12:00:00Z', 'Europe/Berlin', '2019-10-26T22:00:00Z', '2019-10-27T23:00:00Z'], // clocks back: 25 hours
    ['2019-10-27T23:00:00Z', 'Europe/Berlin', '2019-10-27T23:00:00Z', '2019-10-28T23:00:00Z'], // the first instant of a day is in it
    ['2019-05-01T10:00:00Z', 'Asia/Kolkata', '2019-04-30T18:30:00Z', '2019-05-01T18:30:00Z'],
    ['2011-12-29T12:00:00Z', 'Pacific/Apia', '2011-12-29T10:00:00Z', '2011-12-30T10:00:00Z'], // Samoa skipped December 30th 2011
    ['2011-12-30T10:00:00Z', 'Pacific/Apia', '2011-12-30T10:00:00Z', '2011-12-31T10:00:00Z'], // ... straight to the 31st
  ]
  for (const [time, timezone, start, end] of table) {
    t.same(span(dayWindowOf(at(time), timezone)), [start, end], `${time} in ${timezone}`)
    t.same(windowsOf(at(time), DAY, timezone), [dayWindowOf(at(time), timezone)])
  }
  t.equal(wallClock(at('2011-12-30T10:00:00Z'), 'Pacific/Apia'), '2011-12-31 00:00', 'Intl agrees that Apia went from the 29th to the 31st')
})

t.test('hour windows: whole local hours from local midnight, 23 or 25 of them on DST days', async (t) => {
  const table: [string, string, string, string][] = [
    ['2019-03-31T00:30:00Z', 'Europe/Berlin', '2019-03-31T00:00:00Z', '2019-03-31T01:00:00Z'], // 01:00-02:00 CET
    ['2019-03-31T01:30:00Z', 'Europe/Berlin', '2019-03-31T01:00:00Z', '2019-03-31T02:00:00Z'], // 03:00-04:00 CEST: 02:00 does not exist
    ['2019-10-27T00:30:00Z', 'Europe/Berlin', '2019-10-27T00:00:00Z', '2019-10-27T01:00:00Z'], // 02:00-03:00 CEST
    ['2019-10-27T01:30:00Z', 'Europe/Berlin', '2019-10-27T01:00:00Z', '2019-10-27T02:00:00Z'], // 02:00-03:00 CET, the second one
    ['2019-05-01T10:15:00Z', 'Asia/Kolkata', '2019-05-01T09:30:00Z', '2019-05-01T10:30:00Z'], // 15:00-16:00 IST
    ['2019-05-01T10:15:00Z', 'UTC', '2019-05-01T10:00:00Z', '2019-05-01T11:00:00Z'],
    ['2019-04-30T22:30:00Z', 'Europe/Berlin', '2019-04-30T22:00:00Z', '2019-04-30T23:00:00Z'], // 00:00-01:00 on May 1st
  ]
  for (const [time, timezone, start, end] of table) t.same(span(hourWindowOf(at(time), timezone)), [start, end], `${time} in ${timezone}`)

  const hoursOfDay = (dayStart: string, timezone: string) => {
    const day = dayWindowOf(at(dayStart), timezone)
    const hours: string[] = []
    for (let time = day.start; time < day.end; time = hourWindowOf(time, timezone).end) hours.push(wallClock(time, timezone).slice(11))
    return hours
  }
  const spring = hoursOfDay('2019-03-31T12:00:00Z', 'Europe/Berlin')
  t.equal(spring.length, 23)
  t.same(spring.slice(0, 3), ['00:00', '01:00', '03:00'])
  const autumn = hoursOfDay('2019-10-27T12:00:00Z', 'Europe/Berlin')
  t.equal(autumn.length, 25)
  t.same(autumn.slice(0, 5), ['00:00', '01:00', '02:00', '02:00', '03:00'])
  t.equal(hoursOfDay('2019-05-01T12:00:00Z', 'Asia/Kolkata').length, 24)
})

t.test('minute windows are UTC minutes; hopping windows start at multiples of the hop', async (t) => {
  t.same(windowsOf(at('2019-05-01T10:15:42.123Z'), { kind: 'tumbling', unit: 'minute' }, 'Asia/Kolkata').map(span), [['2019-05-01T10:15:00Z', '2019-05-01T10:16:00Z']])
  const hopping: AggregateWindow = { kind: 'hopping', sizeMs: HOUR, hopMs: 15 * MINUTE }
  t.same(windowsOf(at('2019-05-01T10:20:00Z'), hopping, 'UTC').map(span), [
    ['2019-05-01T09:30:00Z', '2019-05-01T10:30:00Z'],
    ['2019-05-01T09:45:00Z', '2019-05-01T10:45:00Z'],
    ['2019-05-01T10:00:00Z', '2019-05-01T11:00:00Z'],
    ['2019-05-01T10:15:00Z', '2019-05-01T11:15:00Z'],
  ])
  t.same(windowsOf(at('2019-05-01T10:15:00Z'), hopping, 'UTC').map((bounds) => iso(bounds.start)).at(-1), '2019-05-01T10:15:00Z', 'a window contains its start')
  t.equal(windowsOf(at('2019-05-01T10:30:00Z'), hopping, 'UTC')[0]!.start, at('2019-05-01T09:45:00Z'), '... not its end')
  t.equal(windowsOf(at('2019-05-01T10:20:00Z'), { kind: 'hopping', sizeMs: 10 * MINUTE, hopMs: 10 * MINUTE }, 'UTC').length, 1, 'hop = size: tumbling')
  t.same(windowsOf(-1, { kind: 'hopping', sizeMs: 2000, hopMs: 1000 }, 'UTC').map((bounds) => bounds.start), [-2000, -1000], 'before 1970 too')
  t.match(windowProblem({ kind: 'hopping', sizeMs: MINUTE, hopMs: HOUR }), /larger than sizeMs/)
  t.match(windowProblem({ kind: 'hopping', sizeMs: 25 * HOUR, hopMs: HOUR }), /at most 24 windows/)
  t.equal(windowProblem({ kind: 'hopping', sizeMs: 24 * HOUR, hopMs: HOUR }), undefined)
})

const TIMEZONES = ['Europe/Berlin', 'America/New_York', 'Asia/Kolkata', 'Pacific/Apia', 'Australia/Lord_Howe', 'UTC']
const instant = fc.integer({ min: at('2010-01-01T00:00:00Z'), max: at('2030-01-01T00:00:00Z') })

t.test('every window contains its instant; local hours tile local days; boundaries are where the wall clock says', async (t) => {
  fc.assert(
    fc.property(instant, fc.constantFrom(...TIMEZONES), (time, timezone) => {
      const day = dayWindowOf(time, timezone)
      const hour = hourWindowOf(time, timezone)
      assert.ok(day.start <= time && time < day.end, 'the day contains the instant')
      assert.ok(day.start <= hour.start && hour.end <= day.end && hour.start <= time && time < hour.end, 'the hour is in the day')
      assert.ok(hour.end - hour.start <= HOUR && hour.end - hour.start >= 30 * MINUTE)
      // the day starts at local midnight (or the first instant after, where midnight was skipped) and ends at the next
      assert.notEqual(wallClock(day.start, timezone).slice(0, 10), wallClock(day.start - 1, timezone).slice(0, 10))
      assert.equal(wallClock(day.end - 1, timezone).slice(0, 10), wallClock(day.start, timezone).slice(0, 10))
      assert.equal(wallClock(time, timezone).slice(0, 10), wallClock(day.start, timezone).slice(0, 10))
      // neighbours meet: the next hour starts where this one ends, the next day where this one ends
      assert.equal(hourWindowOf(hour.end, timezone).start, hour.end)
      assert.equal(dayWindowOf(day.end, timezone).start, day.end)
      return true
    }),
    { numRuns: 500 },
  )
  t.pass('500 random instants in six timezones')
})

t.test('hopping windows: exactly those that contain the instant', async (t) => {
  fc.assert(
    fc.property(instant, fc.integer({ min: 1, max: 24 }), fc.integer({ min: 1, max: 120 }), (time, ratio, hopMinutes) => {
      const window: AggregateWindow = { kind: 'hopping', sizeMs: ratio * hopMinutes * MINUTE, hopMs: hopMinutes * MINUTE }
      const windows = windowsOf(time, window, 'UTC')
      assert.equal(windows.length, ratio)
      for (const bounds of windows) {
        assert.ok(bounds.start <= time && time < bounds.end)
        assert.equal(bounds.start % window.hopMs, 0)
      }
      return true
    }),
    { numRuns: 300 },
  )
  t.pass('300 random hopping windows')
})

t.test('definitions: defaults until a control message, newer versions win, null removes, invalid ones are refused', async (t) => {
  t.same(definitionsInForce(undefined).map((definition) => [definition.name, definition.version, definition.kind]), [['events-per-day', 0, 'day'], ['events-per-hour', 0, 'hour']])
  t.same(Object.keys(DEFAULT_DEFINITIONS), ['events-per-day', 'events-per-day'.replace('day', 'hour')])
  const control = (name: string, version: number, definition: unknown) => ({ stepId: 'aggregates', name, version, definition })
  let definitions: Definitions = applyControl(undefined, control('signups-by-channel', 1, { window: { kind: 'hopping', sizeMs: HOUR, hopMs: 15 * MINUTE }, dimensions: ['channel'], events: ['Signed Up'] }))
  definitions = applyControl(definitions, control('events-per-hour', 1, null))
  t.same(definitionsInForce(definitions).map((definition) => [definition.name, definition.version]), [['events-per-day', 0], ['signups-by-channel', 1]])
  const resolved = definitionsInForce(definitions)[1]!
  t.same([resolved.allowedLatenessMs, resolved.earlyEveryMs, resolved.countBots, [...resolved.events!]], [HOUR, MINUTE, false, ['Signed Up']], 'defaults filled in')
  t.equal(definitionsInForce(definitions), definitionsInForce(definitions), 'resolved once per definitions object')
  const same = applyControl(definitions, control('events-per-hour', 1, { window: { kind: 'tumbling', unit: 'minute' }, dimensions: [] }))
  t.equal(same, definitions, 'an equal version (a control message published twice) changes nothing')
  const restored = applyControl(definitions, control('events-per-hour', 2, { window: { kind: 'tumbling', unit: 'minute' }, dimensions: [] }))
  t.same(definitionsInForce(restored).map((definition) => [definition.name, definition.version, definition.kind]), [['events-per-day', 0, 'day'], ['events-per-hour', 2, 'minute'], ['signups-by-channel', 1, 'hopping']])
  t.throws(() => applyControl(definitions, control('Bad Name', 1, DEFAULT_DEFINITIONS['events-per-day'])), /definition name/)
  t.throws(() => applyControl(definitions, control('x', 1, { window: { kind: 'tumbling', unit: 'week' }, dimensions: [] })), /schema/)
  t.throws(() => applyControl(definitions, control('x', 1, { window: { kind: 'tumbling', unit: 'day' }, dimensions: ['country', 'country'] })), /named twice/)
  t.throws(() => applyControl(definitions, control('x', 1, { window: { kind: 'hopping', sizeMs: MINUTE, hopMs: HOUR }, dimensions: [] })), /larger than sizeMs/)
  t.throws(() => applyControl(definitions, control('x', 1, { window: { kind: 'tumbling', unit: 'day' }, dimensions: ['city'] })), /schema/)
})
