import t from 'tap'
import { createEnrich } from '../../operators/enrich/logic.ts'
import { seenCount } from '../../operators/enrich/dedup.ts'
import { eventRowOf } from '../../operators/sink/rows.ts'
import { decodeEnvelope, encode, validator } from '../../schemas/codec.ts'
import { EnrichedEventEnvelope, ENVELOPE_VERSION, type EnrichedEventEnvelope as Enriched, type Origin, type RawEventEnvelope } from '../../schemas/envelope.ts'
import { eventNameOf, type SegmentMessage } from '../../schemas/segment.ts'
import { keyGroupOf } from '../../topology/subjects.ts'

const TIME = Date.parse('2024-05-10T11:59:55.000Z')
const enrichedSchema = validator(EnrichedEventEnvelope, 'enriched')

function messageOf(fields: Partial<SegmentMessage> & Pick<SegmentMessage, 'type'> & Record<string, unknown>): SegmentMessage {
  return { messageId: 'm-1', timestamp: new Date(TIME).toISOString(), receivedAt: '2024-05-10T12:00:00.000Z', ...fields }
}

function rawOf(message: SegmentMessage, overrides: Partial<RawEventEnvelope> = {}): RawEventEnvelope {
  const key = (message.anonymousId ?? message.userId)!
  return {
    v: ENVELOPE_VERSION, type: 'raw_event', project: 'alpha', id: message.messageId, time: TIME, key, keyGroup: keyGroupOf(key, 64), source: 'live',
    data: message, ...overrides,
  }
}

t.test('eventNameOf', async (t) => {
  const cases: Array<[Pick<SegmentMessage, 'type' | 'event'>, string]> = [
    [{ type: 'track', event: 'Order Completed' }, 'Order Completed'],
    [{ type: 'track' }, ''],
    [{ type: 'page' }, '$page'],
    [{ type: 'page', event: 'ignored' }, '$page'],
    [{ type: 'screen' }, '$screen'],
    [{ type: 'identify' }, '$identify'],
    [{ type: 'alias' }, '$alias'],
    [{ type: 'group' }, '$group'],
  ]
  for (const [message, name] of cases) t.equal(eventNameOf(message), name, `${JSON.stringify(message)} -> ${JSON.stringify(name)}`)
})

t.test('createEnrich', async (t) => {
  const origin: Origin = { stream: 'SEG_RAW', seq: 42 }
  const cases: Array<{ name: string; message: SegmentMessage; canonicalId: string; eventName: string; source?: 'live' | 'import' }> = [
    { name: 'track with both ids: userId', message: messageOf({ type: 'track', event: 'Clicked', anonymousId: 'anon-1', userId: 'user-1' }), canonicalId: 'user-1', eventName: 'Clicked' },
    { name: 'track, anonymous: anonymousId', message: messageOf({ type: 'track', event: 'Viewed', anonymousId: 'anon-2' }), canonicalId: 'anon-2', eventName: 'Viewed' },
    { name: 'identify, user only', message: messageOf({ type: 'identify', userId: 'user-3', traits: { email: 'a@b.c' } }), canonicalId: 'user-3', eventName: '$identify' },
    { name: 'page', message: messageOf({ type: 'page', anonymousId: 'anon-4', name: 'Home' }), canonicalId: 'anon-4', eventName: '$page' },
    { name: 'screen with both ids', message: messageOf({ type: 'screen', anonymousId: 'anon-5', userId: 'user-5' }), canonicalId: 'user-5', eventName: '$screen' },
    { name: 'alias', message: messageOf({ type: 'alias', userId: 'user-6', previousId: 'anon-6' }), canonicalId: 'user-6', eventName: '$alias' },
    { name: 'group', message: messageOf({ type: 'group', anonymousId: 'anon-7', groupId: 'g-1' }), canonicalId: 'anon-7', eventName: '$group' },
    { name: 'an import', message: messageOf({ type: 'track', event: 'Old', userId: 'user-8' }), canonicalId: 'user-8', eventName: 'Old', source: 'import' },
  ]
  for (const keyGroups of [1, 16, 64, 4096]) {
    const enrich = createEnrich({ keyGroups })
    t.equal(enrich.stepId, 'enrich')
    const state = enrich.init()
    t.same([state.identity, seenCount(state.seen), state.newest], [{}, 0, Number.NEGATIVE_INFINITY], 'starts with no identity and no ids seen')
    for (const c of cases) {
      const label = `${c.name} (${keyGroups} key groups)`
      const raw = rawOf(c.message, { source: c.source ?? 'live' })
      const snapshot = JSON.stringify(raw)
      const input = { envelope: raw, origin }
      t.equal(enrich.keyOf(input), raw.key, `${label}: keyed by the raw routing key`)
      // a state of its own each: the state is handed over (docs/operators.md), and enrich appends its ids in place
      const result = enrich.onEvent(enrich.init(), input, { eventTime: TIME, watermark: TIME, source: 'live', control: undefined })
      t.equal(seenCount(result.state!.seen), 1, `${label}: the message id is remembered`)
      t.equal(enrich.onEvent(result.state!, input, { eventTime: TIME, watermark: TIME, source: 'live', control: undefined }).emit.length, 0, `${label}: the same message again is a late duplicate, dropped`)
      t.equal(result.wakeAt, undefined, `${label}: no timer`)
      t.equal(result.emit.length, 1, `${label}: one output`)
      const emission = result.emit[0]!
      const keyGroup = keyGroupOf(c.canonicalId, keyGroups)
      t.match(emission, { stage: 'enriched', project: 'alpha', keyGroup }, `${label}: published to enriched, keyed by the canonical id`)
      t.ok(keyGroup >= 0 && keyGroup < keyGroups, `${label}: key group in range`)
      const expected: Enriched = {
        v: ENVELOPE_VERSION, type: 'enriched_event', project: 'alpha', id: 'm-1', time: TIME, key: c.canonicalId, keyGroup,
        source: c.source ?? 'live', origin: { stream: 'SEG_RAW', seq: 42 },
        data: { name: c.eventName, canonicalId: c.canonicalId, message: c.message },
      }
      t.strictSame(emission.envelope, expected, `${label}: the enriched envelope`)
      const data = (emission.envelope as Enriched).data
      t.equal(data.message, c.message, `${label}: the original message itself is kept`)
      t.equal(JSON.stringify(raw), snapshot, `${label}: the input is not mutated`)
      t.ok(enrichedSchema.check(emission.envelope), `${label}: valid against EnrichedEventEnvelope`)
      t.strictSame(decodeEnvelope(encode(emission.envelope)), expected, `${label}: survives encode/decode`)
    }
  }
  const enrich = createEnrich({ keyGroups: 64 })
  const a = enrich.onEvent(enrich.init(), { envelope: rawOf(messageOf({ type: 'track', event: 'e', anonymousId: 'device-a', userId: 'same-user' })), origin }, { eventTime: TIME, watermark: TIME, source: 'live', control: undefined })
  const b = enrich.onEvent(enrich.init(), { envelope: rawOf(messageOf({ type: 'track', event: 'e', anonymousId: 'device-b', userId: 'same-user' })), origin }, { eventTime: TIME, watermark: TIME, source: 'live', control: undefined })
  t.equal(a.emit[0]!.keyGroup, b.emit[0]!.keyGroup, 'two devices of one user meet in one key group')
  t.equal(a.emit[0]!.envelope.key, 'same-user', 'keyed by the user')
  t.equal(enrich.onEvent(enrich.init(), { envelope: rawOf(messageOf({ type: 'track', event: 'e', userId: 'foobar' })), origin }, { eventTime: TIME, watermark: TIME, source: 'live', control: undefined }).emit[0]!.keyGroup, 40, 'pinned: foobar -> key group 40 of 64')
})

t.test('eventRowOf', async (t) => {
  const message = messageOf({
    type: 'track', event: 'Order Completed', anonymousId: 'anon-1', userId: 'user-1', messageId: 'm-1',
    properties: { total: 9.5 }, traits: { plan: 'pro' }, context: { ip: '203.0.113.7' },
    timestamp: '2024-05-10T11:59:55.000Z', originalTimestamp: '2024-05-10T10:00:00.000Z', sentAt: '2024-05-10T10:00:05.000Z',
    receivedAt: '2024-05-10T12:00:00.000Z',
    integrations: { All: true }, channel: 'server', custom: { a: [1, 2] },
  })
  const envelope: Enriched = {
    v: ENVELOPE_VERSION, type: 'enriched_event', project: 'alpha', id: 'm-1', time: TIME, key: 'user-1', keyGroup: 12, source: 'import',
    origin: { stream: 'SEG_IMPORT', seq: 77 }, data: { name: 'Order Completed', canonicalId: 'user-1', message },
  }
  t.strictSame(eventRowOf(envelope, 1234), {
    project: 'alpha',
    messageId: 'm-1',
    eventTime: TIME,
    receivedAt: Date.parse('2024-05-10T12:00:00.000Z'),
    type: 'track',
    name: 'Order Completed',
    canonicalId: 'user-1',
    anonymousId: 'anon-1',
    userId: 'user-1',
    source: 'import',
    keyGroup: 12,
    rawStream: 'SEG_IMPORT',
    rawSeq: 77,
    enrichedSeq: 1234,
    properties: { total: 9.5 },
    traits: { plan: 'pro' },
    context: { ip: '203.0.113.7' },
    extra: {
      originalTimestamp: '2024-05-10T10:00:00.000Z',
      sentAt: '2024-05-10T10:00:05.000Z',
      integrations: { All: true },
      channel: 'server',
      custom: { a: [1, 2] },
    },
    enrichment: null,
  }, 'every column, unknown fields in extra')
  const context = { device: { type: 'mobile', os: 'iOS' }, acquisition: { channel: 'email', source: 'newsletter' }, geo: { country: 'DE' }, bot: false }
  t.strictSame(eventRowOf({ ...envelope, data: { ...envelope.data, context } }, 1).enrichment, context, "enrich's context in the enrichment column (migration 0013)")

  const cases: Array<{ name: string; message: SegmentMessage; expect: Record<string, unknown> }> = [
    {
      name: 'an anonymous page without properties, traits or context',
      message: messageOf({ type: 'page', anonymousId: 'anon-2', name: 'Home' }),
      expect: { type: 'page', anonymousId: 'anon-2', userId: null, properties: {}, traits: null, context: {}, extra: { name: 'Home' } },
    },
    {
      name: 'an identify without anonymousId',
      message: messageOf({ type: 'identify', userId: 'user-3', traits: { email: 'x@y.z' } }),
      expect: { type: 'identify', anonymousId: null, userId: 'user-3', traits: { email: 'x@y.z' }, extra: {} },
    },
    {
      name: 'an alias: previousId in extra',
      message: messageOf({ type: 'alias', userId: 'user-4', previousId: 'anon-4' }),
      expect: { type: 'alias', extra: { previousId: 'anon-4' } },
    },
    {
      name: 'a group: groupId and traits',
      message: messageOf({ type: 'group', userId: 'user-5', groupId: 'g-9', traits: { name: 'Acme' } }),
      expect: { type: 'group', traits: { name: 'Acme' }, extra: { groupId: 'g-9' } },
    },
  ]
  for (const c of cases) {
    const canonicalId = (c.message.userId ?? c.message.anonymousId)!
    const env: Enriched = { ...envelope, key: canonicalId, data: { name: eventNameOf(c.message), canonicalId, message: c.message } }
    const row = eventRowOf(env, 5)
    t.match(row, { ...c.expect, canonicalId, name: eventNameOf(c.message), enrichedSeq: 5 }, c.name)
    t.strictSame(row.extra, c.expect.extra, `${c.name}: exactly these extra fields`)
    for (const column of ['type', 'messageId', 'anonymousId', 'userId', 'event', 'properties', 'traits', 'context', 'timestamp', 'receivedAt']) {
      if (column in row.extra) t.fail(`${c.name}: column field ${column} leaked into extra`)
    }
  }
  t.equal(eventRowOf({ ...envelope, time: TIME + 1 }, 1).eventTime, TIME + 1, 'eventTime is the envelope time')
  t.equal(eventRowOf({ ...envelope, id: 'other' }, 1).messageId, 'other', 'messageId is the envelope id')
  t.equal(eventRowOf({ ...envelope, data: { ...envelope.data, name: 'Renamed' } }, 1).name, 'Renamed', 'name is the enriched name')
  const snapshot = JSON.stringify(envelope)
  eventRowOf(envelope, 1)
  t.equal(JSON.stringify(envelope), snapshot, 'building the row does not mutate the envelope')
})
