import fc from 'fast-check'
import t from 'tap'
import {
  contentMessageId,
  MAX_MESSAGE_BYTES,
  normalizeMessage,
  RESERVED_EVENT_PREFIX,
  type StampContext,
} from '../../gateway/collector/normalize.ts'
import { validator } from '../../schemas/codec.ts'
import { SEGMENT_TYPES, SegmentMessage, type SegmentType } from '../../schemas/segment.ts'

const RECEIVED = Date.parse('2024-05-10T12:00:00.000Z')
const STAMP: StampContext = { receivedAt: RECEIVED }
const segmentMessage = validator(SegmentMessage, 'segment message')
const iso = (ms: number) => new Date(ms).toISOString()

/** Normalizes a message that must be accepted, failing the test if it is not. */
function accept(t: { fail: (message: string) => unknown }, input: unknown, stamp: StampContext = STAMP, forcedType?: SegmentType): SegmentMessage {
  const result = normalizeMessage(input, stamp, forcedType)
  if (!result.ok) {
    t.fail(`expected ${JSON.stringify(input).slice(0, 200)} to be accepted, got: ${result.reason}`)
    throw new Error(result.reason)
  }
  return result.message
}

t.test('constants', async (t) => {
  t.equal(MAX_MESSAGE_BYTES, 32 * 1024)
  t.equal(RESERVED_EVENT_PREFIX, '$session_')
  t.same([...SEGMENT_TYPES], ['track', 'identify', 'page', 'screen', 'alias', 'group'])
})

t.test('each validation rule rejects with a reason naming the field', async (t) => {
  const cases: Array<{ name: string; input: unknown; reason: RegExp; stamp?: StampContext; forcedType?: SegmentType }> = [
    { name: 'a string', input: 'track', reason: /^message must be a JSON object$/ },
    { name: 'null', input: null, reason: /^message must be a JSON object$/ },
    { name: 'an array', input: [{ type: 'track' }], reason: /^message must be a JSON object$/ },
    { name: 'a number', input: 42, reason: /^message must be a JSON object$/ },
    { name: 'missing type', input: { anonymousId: 'a', event: 'e' }, reason: /^type must be one of track, identify, page, screen, alias, group$/ },
    { name: 'unknown type', input: { type: 'purchase', anonymousId: 'a' }, reason: /^type must be one of .*, got "purchase"$/ },
    { name: 'type with the wrong case', input: { type: 'Track', anonymousId: 'a', event: 'e' }, reason: /^type must be one of .*, got "Track"$/ },
    { name: 'numeric type', input: { type: 1, anonymousId: 'a' }, reason: /^type must be one of .*, got 1$/ },
    { name: 'neither anonymousId nor userId', input: { type: 'track', event: 'e' }, reason: /^anonymousId or userId is required$/ },
    { name: 'both ids empty', input: { type: 'identify', anonymousId: '', userId: '' }, reason: /^anonymousId or userId is required$/ },
    { name: 'both ids null', input: { type: 'identify', anonymousId: null, userId: null }, reason: /^anonymousId or userId is required$/ },
    { name: 'anonymousId an object', input: { type: 'identify', anonymousId: { id: 1 } }, reason: /^anonymousId must be a string$/ },
    { name: 'userId a boolean', input: { type: 'identify', userId: true }, reason: /^userId must be a string$/ },
    { name: 'userId NaN', input: { type: 'identify', userId: Number.NaN }, reason: /^userId must be a string$/ },
    { name: 'anonymousId over 256 characters', input: { type: 'identify', anonymousId: 'a'.repeat(257) }, reason: /^anonymousId is longer than 256 characters$/ },
    { name: 'messageId an object', input: { type: 'identify', anonymousId: 'a', messageId: { id: 1 } }, reason: /^messageId must be a string$/ },
    { name: 'messageId over 256 characters', input: { type: 'identify', anonymousId: 'a', messageId: 'm'.repeat(257) }, reason: /^messageId is longer than 256 characters$/ },
    { name: 'track without event', input: { type: 'track', anonymousId: 'a' }, reason: /^event is required for a track call$/ },
    { name: 'track with an empty event', input: { type: 'track', anonymousId: 'a', event: '' }, reason: /^event is required for a track call$/ },
    { name: 'track with an event over 256 characters', input: { type: 'track', anonymousId: 'a', event: 'e'.repeat(257) }, reason: /^event is longer than 256 characters$/ },
    { name: 'event an array', input: { type: 'track', anonymousId: 'a', event: ['x'] }, reason: /^event must be a string$/ },
    { name: 'reserved $session_ event', input: { type: 'track', anonymousId: 'a', event: '$session_start' }, reason: /^event names starting with "\$session_" are reserved/ },
    { name: 'reserved prefix on its own', input: { type: 'track', anonymousId: 'a', event: '$session_' }, reason: /"\$session_" are reserved/ },
    { name: 'reserved prefix on a page', input: { type: 'page', anonymousId: 'a', event: '$session_end' }, reason: /"\$session_" are reserved/ },
    { name: 'alias without previousId', input: { type: 'alias', userId: 'u' }, reason: /^previousId is required for an alias call$/ },
    { name: 'alias with an empty previousId', input: { type: 'alias', userId: 'u', previousId: '' }, reason: /^previousId is required for an alias call$/ },
    { name: 'alias without userId', input: { type: 'alias', anonymousId: 'a', previousId: 'p' }, reason: /^userId is required for an alias call$/ },
    { name: 'group without groupId', input: { type: 'group', userId: 'u' }, reason: /^groupId is required for a group call$/ },
    { name: 'group with groupId an object', input: { type: 'group', userId: 'u', groupId: {} }, reason: /^groupId must be a string$/ },
    { name: 'name an object', input: { type: 'page', anonymousId: 'a', name: { x: 1 } }, reason: /^name must be a string$/ },
    { name: 'timestamp not a date', input: { type: 'identify', anonymousId: 'a', timestamp: 'yesterday' }, reason: /^timestamp must be an ISO 8601 date$/ },
    { name: 'timestamp a number', input: { type: 'identify', anonymousId: 'a', timestamp: 1715342400000 }, reason: /^timestamp must be an ISO 8601 date$/ },
    { name: 'timestamp empty', input: { type: 'identify', anonymousId: 'a', timestamp: '' }, reason: /^timestamp must be an ISO 8601 date$/ },
    { name: 'timestamp month 13', input: { type: 'identify', anonymousId: 'a', timestamp: '2024-13-01T00:00:00Z' }, reason: /^timestamp must be an ISO 8601 date$/ },
    { name: 'timestamp in RFC 2822 form', input: { type: 'identify', anonymousId: 'a', timestamp: 'Fri, 10 May 2024 12:00:00 GMT' }, reason: /^timestamp must be an ISO 8601 date$/ },
    { name: 'timestamp with a space separator', input: { type: 'identify', anonymousId: 'a', timestamp: '2024-05-10 12:00:00Z' }, reason: /^timestamp must be an ISO 8601 date$/ },
    { name: 'sentAt not a date', input: { type: 'identify', anonymousId: 'a', sentAt: 'now' }, reason: /^sentAt must be an ISO 8601 date$/ },
    { name: 'sentAt a number', input: { type: 'identify', anonymousId: 'a', sentAt: 1715342400000 }, reason: /^sentAt must be an ISO 8601 date$/ },
    { name: 'batch sentAt not a date', input: { type: 'identify', anonymousId: 'a' }, stamp: { receivedAt: RECEIVED, batchSentAt: 'garbage' }, reason: /^sentAt must be an ISO 8601 date$/ },
    { name: 'properties a string', input: { type: 'track', anonymousId: 'a', event: 'e', properties: 'x' }, reason: /^properties must be an object$/ },
    { name: 'properties an array', input: { type: 'track', anonymousId: 'a', event: 'e', properties: [1] }, reason: /^properties must be an object$/ },
    { name: 'properties a number', input: { type: 'track', anonymousId: 'a', event: 'e', properties: 5 }, reason: /^properties must be an object$/ },
    { name: 'traits an array', input: { type: 'identify', anonymousId: 'a', traits: [] }, reason: /^traits must be an object$/ },
    { name: 'context a string', input: { type: 'identify', anonymousId: 'a', context: 'web' }, reason: /^context must be an object$/ },
    { name: 'integrations a boolean', input: { type: 'identify', anonymousId: 'a', integrations: true }, reason: /^integrations must be an object$/ },
    { name: 'message over 32 KB', input: { type: 'track', anonymousId: 'a', event: 'e', properties: { blob: 'x'.repeat(MAX_MESSAGE_BYTES) } }, reason: /^message is \d+ bytes; the limit is 32768 bytes \(32 KB\)$/ },
    { name: 'forced type overrides the body', input: { type: 'identify', anonymousId: 'a' }, forcedType: 'track', reason: /^event is required for a track call$/ },
  ]
  for (const c of cases) {
    const result = normalizeMessage(c.input, c.stamp ?? STAMP, c.forcedType)
    t.equal(result.ok, false, `${c.name}: rejected`)
    if (!result.ok) t.match(result.reason, c.reason, `${c.name}: ${result.reason}`)

    // a supplied string messageId is passed back with the rejection
    if (c.input !== null && typeof c.input === 'object' && !Array.isArray(c.input) && !('messageId' in c.input)) {
      const withId = normalizeMessage({ ...c.input, messageId: 'client-id-1' }, c.stamp ?? STAMP, c.forcedType)
      t.equal(withId.ok, false, `${c.name}: rejected with a messageId too`)
      if (!withId.ok) {
        t.match(withId.reason, c.reason, `${c.name}: same reason with a messageId`)
        t.equal(withId.messageId, 'client-id-1', `${c.name}: the rejection carries the client's messageId`)
      }
    }
  }
})

t.test('the 32 KB limit counts UTF-8 bytes of the JSON', async (t) => {
  const base = { type: 'track', anonymousId: 'a', event: 'e', properties: { blob: '' } }
  const overhead = Buffer.byteLength(JSON.stringify(base))
  const exact = { ...base, properties: { blob: 'x'.repeat(MAX_MESSAGE_BYTES - overhead) } }
  t.equal(Buffer.byteLength(JSON.stringify(exact)), MAX_MESSAGE_BYTES, 'fixture is exactly 32768 bytes')
  t.equal(normalizeMessage(exact, STAMP).ok, true, 'exactly 32 KB is accepted')
  const over = { ...base, properties: { blob: 'x'.repeat(MAX_MESSAGE_BYTES - overhead + 1) } }
  const rejected = normalizeMessage({ ...over, messageId: 'big-1' }, STAMP)
  t.same(rejected, { ok: false, reason: `message is ${MAX_MESSAGE_BYTES + 1 + Buffer.byteLength(',"messageId":"big-1"')} bytes; the limit is 32768 bytes (32 KB)`, messageId: 'big-1' }, 'one byte over is rejected, naming the size and the limit')
  // 11,000 three-byte characters: under 32 K characters, over 32 KB
  const multibyte = { ...base, properties: { blob: '€'.repeat(11_000) } }
  t.ok(JSON.stringify(multibyte).length < MAX_MESSAGE_BYTES, 'fewer characters than the limit')
  const result = normalizeMessage(multibyte, STAMP)
  t.equal(result.ok, false, 'but more bytes: rejected')
})

t.test('every segment type is accepted with its required fields', async (t) => {
  const minimal: Record<SegmentType, Record<string, unknown>> = {
    track: { type: 'track', anonymousId: 'a', event: 'Clicked' },
    identify: { type: 'identify', userId: 'u', traits: { email: 'x@example.com' } },
    page: { type: 'page', anonymousId: 'a', name: 'Home' },
    screen: { type: 'screen', anonymousId: 'a', name: 'Settings' },
    alias: { type: 'alias', userId: 'u', previousId: 'a' },
    group: { type: 'group', userId: 'u', groupId: 'g' },
  }
  for (const type of SEGMENT_TYPES) {
    const message = accept(t, minimal[type])
    t.equal(message.type, type, `${type}: type kept`)
    t.ok(segmentMessage.check(message), `${type}: satisfies the SegmentMessage schema ${JSON.stringify(segmentMessage.problems(message))}`)
    t.equal(message.receivedAt, iso(RECEIVED), `${type}: receivedAt stamped`)
    t.equal(message.timestamp, iso(RECEIVED), `${type}: no timestamp means receivedAt`)
    t.match(message.messageId, /^h-[A-Za-z0-9_-]{32}$/, `${type}: a content messageId`)
    const { type: _type, ...untyped } = minimal[type]
    t.equal(accept(t, untyped, STAMP, type).type, type, `${type}: as a forced type (the /v1/${type} route)`)
  }
  t.equal(accept(t, { type: 'track', anonymousId: 'a', event: 'e' }, STAMP, 'page').type, 'page', 'a forced type wins over the body')
  t.equal(accept(t, { type: 'track', userId: 'u', event: '$sessionized' }).event, '$sessionized', 'only the exact "$session_" prefix is reserved')
  t.equal(accept(t, { type: 'track', userId: 'u', event: 'my $session_ thing' }).event, 'my $session_ thing', 'the prefix is only reserved at the start')
})

t.test('messageId', async (t) => {
  const base = { type: 'track', anonymousId: 'anon-1', event: 'Clicked', properties: { a: 1, b: [1, 2] }, timestamp: '2024-05-10T10:00:00.000Z' }
  const id = accept(t, base).messageId
  t.match(id, /^h-[A-Za-z0-9_-]{32}$/, 'generated when absent')
  t.equal(accept(t, base).messageId, id, 'deterministic')
  t.equal(accept(t, { ...base }, { receivedAt: RECEIVED + 60_000, clientIp: '10.0.0.1' }).messageId, id, 'independent of receivedAt and the client address')
  t.equal(contentMessageId(base), id, 'the same as contentMessageId')

  const sameContent: Array<[string, Record<string, unknown>, StampContext?]> = [
    ['a different sentAt (a retry)', { ...base, sentAt: '2024-05-10T10:00:05.000Z' }],
    ['another sentAt', { ...base, sentAt: '2024-05-10T10:07:00.000Z' }],
    ['a batch sentAt', base, { receivedAt: RECEIVED, batchSentAt: '2024-05-10T10:00:09.000Z' }],
    ['a writeKey in the body', { ...base, writeKey: 'wk_123' }],
    ['keys in another order', { properties: { b: [1, 2], a: 1 }, event: 'Clicked', timestamp: base.timestamp, anonymousId: 'anon-1', type: 'track' }],
  ]
  for (const [label, input, stamp] of sameContent) {
    t.equal(accept(t, input, stamp).messageId, id, `unchanged with ${label}`)
  }
  const { type: _type, ...untyped } = base
  t.equal(accept(t, untyped, STAMP, 'track').messageId, id, 'unchanged when the type comes from the route')

  const otherContent: Array<[string, Record<string, unknown>]> = [
    ['another event', { ...base, event: 'Clicked!' }],
    ['another property value', { ...base, properties: { a: 2, b: [1, 2] } }],
    ['another array order', { ...base, properties: { a: 1, b: [2, 1] } }],
    ['a property value of another type', { ...base, properties: { a: '1', b: [1, 2] } }],
    ['another timestamp', { ...base, timestamp: '2024-05-10T10:00:00.001Z' }],
    ['another anonymousId', { ...base, anonymousId: 'anon-2' }],
    ['a userId added', { ...base, userId: 'u' }],
    ['an unknown field added', { ...base, channel: 'server' }],
    ['another type', { ...base, type: 'page' }],
  ]
  const ids = new Set([id])
  for (const [label, input] of otherContent) {
    const other = accept(t, input).messageId
    t.not(other, id, `different with ${label}`)
    ids.add(other)
  }
  t.equal(ids.size, otherContent.length + 1, 'all different from each other')

  t.equal(accept(t, { ...base, messageId: 'client-42' }).messageId, 'client-42', 'a supplied messageId is kept')
  t.equal(accept(t, { ...base, messageId: 42 }).messageId, '42', 'a numeric messageId becomes a string')
  const emptyId = accept(t, { ...base, messageId: '' }).messageId
  t.equal(emptyId, contentMessageId({ ...base, messageId: '' }), 'an empty messageId is replaced by a content hash')
  t.equal(accept(t, { ...base, messageId: '', sentAt: '2024-05-10T10:00:09.000Z' }).messageId, emptyId, 'which retries repeat')
  t.equal(accept(t, { ...base, messageId: null }).messageId, contentMessageId({ ...base, messageId: null }), 'a null messageId is replaced by a content hash')
  t.equal(accept(t, { ...base, messageId: 'm'.repeat(256) }).messageId, 'm'.repeat(256), '256 characters is allowed')
})

t.test('clock-skew correction', async (t) => {
  const at = (time: string) => `2024-05-10T${time}Z`
  const cases: Array<{
    name: string
    timestamp?: string | null
    sentAt?: string | null
    batchSentAt?: unknown
    expect: { timestamp: string; originalTimestamp?: string; sentAt?: string }
  }> = [
    {
      name: 'message sentAt: receivedAt - (sentAt - timestamp)',
      timestamp: at('10:00:00.000'), sentAt: at('10:00:05.000'),
      expect: { timestamp: at('11:59:55.000'), originalTimestamp: at('10:00:00.000'), sentAt: at('10:00:05.000') },
    },
    {
      name: 'batch sentAt when the message has none',
      timestamp: at('10:00:00.000'), batchSentAt: at('10:00:05.000'),
      expect: { timestamp: at('11:59:55.000'), originalTimestamp: at('10:00:00.000'), sentAt: at('10:00:05.000') },
    },
    {
      name: 'message sentAt wins over batch sentAt',
      timestamp: at('10:00:00.000'), sentAt: at('10:00:05.000'), batchSentAt: at('10:00:30.000'),
      expect: { timestamp: at('11:59:55.000'), originalTimestamp: at('10:00:00.000'), sentAt: at('10:00:05.000') },
    },
    {
      name: 'null message sentAt falls back to the batch',
      timestamp: at('10:00:00.000'), sentAt: null, batchSentAt: at('10:00:30.000'),
      expect: { timestamp: at('11:59:30.000'), originalTimestamp: at('10:00:00.000'), sentAt: at('10:00:30.000') },
    },
    {
      name: 'client clock ahead',
      timestamp: '2030-01-01T00:00:00.000Z', sentAt: '2030-01-01T00:00:02.500Z',
      expect: { timestamp: at('11:59:57.500'), originalTimestamp: '2030-01-01T00:00:00.000Z', sentAt: '2030-01-01T00:00:02.500Z' },
    },
    {
      name: 'timestamp after sentAt (negative gap)',
      timestamp: at('10:00:03.000'), sentAt: at('10:00:00.000'),
      expect: { timestamp: at('12:00:03.000'), originalTimestamp: at('10:00:03.000'), sentAt: at('10:00:00.000') },
    },
    {
      name: 'offsets are honoured',
      timestamp: '2024-05-10T12:00:00+02:00', sentAt: at('10:00:01.000'),
      expect: { timestamp: at('11:59:59.000'), originalTimestamp: at('10:00:00.000'), sentAt: at('10:00:01.000') },
    },
    {
      name: 'milliseconds are kept',
      timestamp: at('10:00:00.123'), sentAt: at('10:00:00.456'),
      expect: { timestamp: at('11:59:59.667'), originalTimestamp: at('10:00:00.123'), sentAt: at('10:00:00.456') },
    },
    {
      name: 'sentAt equal to timestamp',
      timestamp: at('08:00:00.000'), sentAt: at('08:00:00.000'),
      expect: { timestamp: at('12:00:00.000'), originalTimestamp: at('08:00:00.000'), sentAt: at('08:00:00.000') },
    },
    {
      name: 'an accurate clock: no originalTimestamp',
      timestamp: at('11:59:58.000'), sentAt: at('12:00:00.000'),
      expect: { timestamp: at('11:59:58.000'), sentAt: at('12:00:00.000') },
    },
    {
      name: 'no sentAt at all: the client timestamp as is',
      timestamp: at('10:00:00.000'),
      expect: { timestamp: at('10:00:00.000') },
    },
    {
      name: 'no timestamp: receivedAt',
      expect: { timestamp: at('12:00:00.000') },
    },
    {
      name: 'null timestamp: receivedAt',
      timestamp: null,
      expect: { timestamp: at('12:00:00.000') },
    },
    {
      name: 'no timestamp but a sentAt: receivedAt, sentAt kept',
      sentAt: at('10:00:05.000'),
      expect: { timestamp: at('12:00:00.000'), sentAt: at('10:00:05.000') },
    },
    {
      name: 'a date without a time (UTC midnight)',
      timestamp: '2024-05-09',
      expect: { timestamp: '2024-05-09T00:00:00.000Z' },
    },
    {
      name: 'sentAt normalised to UTC milliseconds',
      timestamp: at('10:00:00.000'), sentAt: '2024-05-10T12:00:05+02:00',
      expect: { timestamp: at('11:59:55.000'), originalTimestamp: at('10:00:00.000'), sentAt: at('10:00:05.000') },
    },
  ]
  for (const c of cases) {
    const input: Record<string, unknown> = { type: 'track', anonymousId: 'a', event: 'e' }
    if (c.timestamp !== undefined) input.timestamp = c.timestamp
    if (c.sentAt !== undefined) input.sentAt = c.sentAt
    const message = accept(t, input, { receivedAt: RECEIVED, batchSentAt: c.batchSentAt })
    t.equal(message.timestamp, c.expect.timestamp, `${c.name}: timestamp`)
    t.equal(message.originalTimestamp, c.expect.originalTimestamp, `${c.name}: originalTimestamp`)
    if (c.expect.sentAt !== undefined) t.equal(message.sentAt, c.expect.sentAt, `${c.name}: sentAt`)
    else t.notOk('sentAt' in message && message.sentAt !== null, `${c.name}: no sentAt`)
    t.equal(message.receivedAt, iso(RECEIVED), `${c.name}: receivedAt`)
  }
})

t.test('a timestamp in the form toISOString writes reads as Date.parse reads it, edge days and hours included', async (t) => {
  const two = (max: number) => fc.integer({ min: 0, max }).map((n) => String(n).padStart(2, '0'))
  // the shape of `new Date().toISOString()` with any digits: Feb 30, hour 24, second 60, month 13, year 0000
  const shaped = fc.tuple(fc.integer({ min: 0, max: 9999 }), two(14), two(32), two(25), two(61), two(61), fc.integer({ min: 0, max: 999 }))
    .map(([y, mo, d, h, mi, s, ms]) => `${String(y).padStart(4, '0')}-${mo}-${d}T${h}:${mi}:${s}.${String(ms).padStart(3, '0')}Z`)
  const real = fc.integer({ min: -62_167_219_200_000, max: 253_402_300_799_999 }).map((ms) => new Date(ms).toISOString())
  let checked = 0
  fc.assert(fc.property(fc.oneof(shaped, real), fc.boolean(), (timestamp, withSentAt) => {
    const input: Record<string, unknown> = { type: 'track', anonymousId: 'a', event: 'e', timestamp }
    // with a sentAt 5 s apart (inside years 0000-9999) the event time moves and originalTimestamp says what the client sent
    const expected = Date.parse(timestamp)
    const gap = expected > 0 ? -5_000 : 5_000
    if (withSentAt && Number.isFinite(expected)) input.sentAt = new Date(expected + gap).toISOString()
    const result = normalizeMessage(input, STAMP)
    checked++
    if (!Number.isFinite(expected)) return !result.ok && result.reason === 'timestamp must be an ISO 8601 date'
    if (!result.ok) return false
    if (!withSentAt) return result.message.timestamp === iso(expected) && result.time === expected
    return result.message.originalTimestamp === iso(expected) && result.time === RECEIVED - gap
  }), { numRuns: 5_000 })
  t.equal(checked, 5_000)
  // the same day again after another (the reader keeps the last two days)
  for (const timestamp of ['2019-02-30T10:00:00.000Z', '2019-02-28T10:00:00.000Z', '2019-02-30T11:00:00.000Z', '2019-03-01T00:00:00.000Z', '2019-02-30T12:00:00.000Z']) {
    t.equal(accept(t, { type: 'track', anonymousId: 'a', event: 'e', timestamp }).timestamp, iso(Date.parse(timestamp)), timestamp)
  }
})

t.test('a timestamp without a UTC offset does not depend on the process timezone', async (t) => {
  const saved = process.env.TZ
  const timestampIn = (tz: string) => {
    process.env.TZ = tz
    try {
      const result = normalizeMessage({ type: 'track', anonymousId: 'a', event: 'e', timestamp: '2024-05-10T12:00:00' }, STAMP)
      return result.ok ? result.message.timestamp : result.reason
    } finally {
      if (saved === undefined) delete process.env.TZ
      else process.env.TZ = saved
    }
  }
  t.equal(timestampIn('Asia/Tokyo'), timestampIn('UTC'), 'Tokyo and UTC read it the same')
  t.equal(timestampIn('America/New_York'), timestampIn('UTC'), 'New York and UTC read it the same')
  t.equal(normalizeMessage({ type: 'track', anonymousId: 'a', event: 'e', timestamp: '2024-05-10T12:00:00Z' }, STAMP).ok, true, 'with an offset it is fine')
})

t.test('context.ip', async (t) => {
  const ABSENT = Symbol('absent')
  const cases: Array<[string, Record<string, unknown> | null | typeof ABSENT, string | undefined, Record<string, unknown>]> = [
    ['no context: filled from the client address', ABSENT, '203.0.113.7', { ip: '203.0.113.7' }],
    ['a context without ip: filled, other fields kept', { library: { name: 'x' } }, '203.0.113.7', { library: { name: 'x' }, ip: '203.0.113.7' }],
    ['a context with ip: kept', { ip: '198.51.100.1' }, '203.0.113.7', { ip: '198.51.100.1' }],
    ['an empty-string ip counts as present', { ip: '' }, '203.0.113.7', { ip: '' }],
    ['no client address: no ip', ABSENT, undefined, {}],
    ['no client address, context kept', { locale: 'de-DE' }, undefined, { locale: 'de-DE' }],
    ['an empty client address: no ip', ABSENT, '', {}],
    ['null context: filled', null, '203.0.113.7', { ip: '203.0.113.7' }],
  ]
  for (const [label, context, clientIp, expected] of cases) {
    const input: Record<string, unknown> = { type: 'track', anonymousId: 'a', event: 'e' }
    if (context !== ABSENT) input.context = context
    const snapshot = JSON.stringify(input)
    const message = accept(t, input, { receivedAt: RECEIVED, clientIp })
    t.strictSame(message.context, expected, label)
    t.equal(JSON.stringify(input), snapshot, `${label}: the input is not mutated`)
  }
})

t.test('fields kept, removed and converted', async (t) => {
  const input = {
    type: 'track',
    event: 'Ordered',
    anonymousId: 'anon-1',
    writeKey: 'wk_secret',
    properties: { total: 10 },
    integrations: { All: false, Mixpanel: true },
    channel: 'server',
    version: 2,
    custom: { nested: { deep: [1, 'two', null] } },
    originalTimestamp: '2024-05-10T09:00:00.000Z',
  }
  const snapshot = JSON.stringify(input)
  const message = accept(t, input)
  t.notOk('writeKey' in message, 'writeKey removed')
  t.equal(JSON.stringify(input), snapshot, 'the input is not mutated')
  for (const field of ['integrations', 'channel', 'version', 'custom', 'properties', 'event', 'anonymousId'] as const) {
    t.strictSame((message as Record<string, unknown>)[field], input[field], `${field} kept as is`)
  }
  t.equal(message.originalTimestamp, '2024-05-10T09:00:00.000Z', 'a client originalTimestamp is kept when nothing is corrected')
  t.ok(segmentMessage.check(message), 'the message satisfies the SegmentMessage schema')

  const conversions: Array<[string, Record<string, unknown>, Partial<Record<'userId' | 'anonymousId' | 'messageId', string>>]> = [
    ['numeric userId', { type: 'identify', userId: 12345 }, { userId: '12345' }],
    ['zero userId', { type: 'identify', userId: 0 }, { userId: '0' }],
    ['negative fractional userId', { type: 'identify', userId: -1.5 }, { userId: '-1.5' }],
    ['numeric anonymousId', { type: 'identify', anonymousId: 987 }, { anonymousId: '987' }],
    ['numeric messageId', { type: 'identify', userId: 'u', messageId: 7 }, { messageId: '7' }],
  ]
  for (const [label, raw, expected] of conversions) {
    const converted = accept(t, raw)
    for (const [field, value] of Object.entries(expected)) t.equal(converted[field as 'userId'], value, `${label}: ${field} is the string ${value}`)
    t.ok(segmentMessage.check(converted), `${label}: satisfies the schema`)
  }

  const onlyUser = accept(t, { type: 'identify', userId: 'u', anonymousId: '' })
  t.notOk('anonymousId' in onlyUser, 'an empty anonymousId is dropped')
  const onlyAnon = accept(t, { type: 'identify', anonymousId: 'a', userId: null })
  t.notOk('userId' in onlyAnon, 'a null userId is dropped')
  const both = accept(t, { type: 'identify', anonymousId: 'a', userId: 'u' })
  t.equal(both.anonymousId, 'a')
  t.equal(both.userId, 'u')
  const spoofed = accept(t, { type: 'identify', userId: 'u', receivedAt: '1999-01-01T00:00:00.000Z' })
  t.equal(spoofed.receivedAt, iso(RECEIVED), 'a client receivedAt is overwritten')
})

t.test('every accepted message satisfies the SegmentMessage schema', async (t) => {
  // The envelope validator downstream (enrich, sink) rejects what does not match SegmentMessage,
  // so a message the collector accepts (HTTP 200) but that does not match is dead-lettered later.
  const cases: Array<[string, Record<string, unknown>]> = [
    ['numeric event on a track', { type: 'track', anonymousId: 'a', event: 123 }],
    ['numeric name on a page', { type: 'page', anonymousId: 'a', name: 7 }],
    ['numeric previousId on an alias', { type: 'alias', userId: 'u', previousId: 99 }],
    ['numeric groupId on a group', { type: 'group', userId: 'u', groupId: 5 }],
    ['empty event on a page', { type: 'page', anonymousId: 'a', event: '' }],
    ['empty groupId on an identify', { type: 'identify', userId: 'u', groupId: '' }],
    ['null event on a page', { type: 'page', anonymousId: 'a', event: null }],
    ['null properties', { type: 'track', anonymousId: 'a', event: 'e', properties: null }],
    ['null traits', { type: 'identify', userId: 'u', traits: null }],
    ['null sentAt', { type: 'track', anonymousId: 'a', event: 'e', sentAt: null }],
  ]
  for (const [label, input] of cases) {
    const result = normalizeMessage(input, STAMP)
    t.ok(result.ok, `${label}: accepted`)
    if (!result.ok) continue
    t.ok(segmentMessage.check(result.message), `${label}: satisfies SegmentMessage ${JSON.stringify(segmentMessage.problems(result.message))}`)
  }
})
