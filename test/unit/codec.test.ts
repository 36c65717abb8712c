import t from 'tap'
import { Packr, unpack } from 'msgpackr'
import { decode, decodeEnvelope, encode, SchemaError, validator } from '../../schemas/codec.ts'
import {
  AnyEnvelope,
  DeadLetterEnvelope,
  ENVELOPE_VERSION,
  EnrichedEventEnvelope,
  RawEventEnvelope,
  type DeadLetterEnvelope as DeadLetterEnvelopeType,
  type EnrichedEventEnvelope as EnrichedEventEnvelopeType,
  type RawEventEnvelope as RawEventEnvelopeType,
} from '../../schemas/envelope.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'

/**
 * A strict, spec-only msgpack decoder (no extension types at all): whatever it
 * reads back equal to the original is plain msgpack any other language can read.
 */
function strictMsgpackDecode(bytes: Uint8Array): unknown {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let at = 0
  const u8 = () => view.getUint8(at++)
  const take = (n: number) => {
    if (at + n > bytes.length) throw new Error('truncated')
    const out = bytes.subarray(at, at + n)
    at += n
    return out
  }
  const str = (n: number) => new TextDecoder('utf-8', { fatal: true }).decode(take(n))
  const num = (read: (offset: number) => number | bigint, n: number) => {
    const value = read(at)
    at += n
    return typeof value === 'bigint' ? Number(value) : value
  }
  const array = (n: number): unknown[] => Array.from({ length: n }, () => item())
  const map = (n: number): Record<string, unknown> => {
    const out: Record<string, unknown> = {}
    for (let i = 0; i < n; i++) {
      const key = item()
      if (typeof key !== 'string') throw new Error(`map key ${String(key)} is not a string`)
      out[key] = item()
    }
    return out
  }
  const item = (): unknown => {
    const b = u8()
    if (b <= 0x7f) return b
    if (b >= 0xe0) return b - 0x100
    if ((b & 0xf0) === 0x80) return map(b & 0x0f)
    if ((b & 0xf0) === 0x90) return array(b & 0x0f)
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f)
    switch (b) {
      case 0xc0: return null
      case 0xc2: return false
      case 0xc3: return true
      case 0xc4: return Uint8Array.from(take(u8()))
      case 0xc5: return Uint8Array.from(take(num((o) => view.getUint16(o), 2)))
      case 0xc6: return Uint8Array.from(take(num((o) => view.getUint32(o), 4)))
      case 0xca: return num((o) => view.getFloat32(o), 4)
      case 0xcb: return num((o) => view.getFloat64(o), 8)
      case 0xcc: return u8()
      case 0xcd: return num((o) => view.getUint16(o), 2)
      case 0xce: return num((o) => view.getUint32(o), 4)
      case 0xcf: return num((o) => view.getBigUint64(o), 8)
      case 0xd0: return num((o) => view.getInt8(o), 1)
      case 0xd1: return num((o) => view.getInt16(o), 2)
      case 0xd2: return num((o) => view.getInt32(o), 4)
      case 0xd3: return num((o) => view.getBigInt64(o), 8)
      case 0xd9: return str(u8())
      case 0xda: return str(num((o) => view.getUint16(o), 2))
      case 0xdb: return str(num((o) => view.getUint32(o), 4))
      case 0xdc: return array(num((o) => view.getUint16(o), 2))
      case 0xdd: return array(num((o) => view.getUint32(o), 4))
      case 0xde: return map(num((o) => view.getUint16(o), 2))
      case 0xdf: return map(num((o) => view.getUint32(o), 4))
      default: throw new Error(`byte 0x${b.toString(16)} at ${at - 1} is not plain msgpack`)
    }
  }
  const value = item()
  if (at !== bytes.length) throw new Error(`${bytes.length - at} trailing bytes`)
  return value
}

/** Every object in the tree is a plain object (or array / byte array). */
function plainProblems(value: unknown, path = '$'): string[] {
  if (value === null || typeof value !== 'object') return []
  if (value instanceof Uint8Array) return []
  if (Array.isArray(value)) return value.flatMap((v, i) => plainProblems(v, `${path}[${i}]`))
  const proto = Object.getPrototypeOf(value)
  if (proto !== Object.prototype && proto !== null) return [`${path} is a ${proto?.constructor?.name}`]
  return Object.entries(value).flatMap(([k, v]) => plainProblems(v, `${path}.${k}`))
}

const message = {
  type: 'track',
  messageId: 'm-1',
  anonymousId: 'anon-1',
  userId: 'user-1',
  event: 'Signed Up',
  properties: { plan: 'pro', seats: 3, price: 9.99, tags: ['a', 'b'], nested: { deep: true, none: null } },
  context: { ip: '203.0.113.7', library: { name: 'analytics.js', version: '4.1.0' } },
  timestamp: '2024-05-10T10:00:00.000Z',
  receivedAt: '2024-05-10T10:00:01.000Z',
  sentAt: '2024-05-10T10:00:00.500Z',
  customField: 'kept',
} as SegmentMessage

const raw: RawEventEnvelopeType = {
  v: ENVELOPE_VERSION, type: 'raw_event', project: 'alpha', id: 'm-1', time: 1715335200000, key: 'anon-1', keyGroup: 17, source: 'live', data: message,
}
const enriched: EnrichedEventEnvelopeType = {
  v: ENVELOPE_VERSION, type: 'enriched_event', project: 'alpha', id: 'm-1', time: 1715335200000, key: 'user-1', keyGroup: 3, source: 'import',
  origin: { stream: 'SEG_IMPORT', seq: 123456789 }, data: { name: 'Signed Up', canonicalId: 'user-1', message },
}
const payload = Uint8Array.from([0, 1, 2, 0xc1, 0xff, 0x80, 0x7f, 0xd4, 0x72])
const deadBytes: DeadLetterEnvelopeType = {
  v: ENVELOPE_VERSION, type: 'dead_letter', project: 'beta', id: 'enrich:seg.beta.raw.5:9', time: 1715335200123, key: 'seg.beta.raw.5', keyGroup: 5, source: 'live',
  data: { stepId: 'enrich', reason: 'bad envelope', payload, subject: 'seg.beta.raw.5', seq: 9 },
}
const deadText: DeadLetterEnvelopeType = {
  v: ENVELOPE_VERSION, type: 'dead_letter', project: 'beta', id: 'dl-abc', time: 1715335200123, key: 'anon-9', keyGroup: 0, source: 'import',
  data: { stepId: 'collector', reason: 'event is required for a track call', payload: '{"type":"track"}' },
}

const fixtures: Array<[string, Record<string, unknown>]> = [
  ['raw_event', raw],
  ['enriched_event', enriched],
  ['dead_letter with a byte payload', deadBytes],
  ['dead_letter with a text payload', deadText],
]

t.test('ENVELOPE_VERSION', async (t) => {
  t.equal(ENVELOPE_VERSION, 1)
})

t.test('every envelope type round-trips', async (t) => {
  for (const [name, envelope] of fixtures) {
    const bytes = encode(envelope)
    t.ok(bytes instanceof Uint8Array && bytes.length > 0, `${name}: encodes to bytes`)
    const decoded = decodeEnvelope(bytes)
    t.strictSame(normal(decoded), normal(envelope), `${name}: decodes to the same value`)
    t.same(decode(bytes), envelope, `${name}: decode gives the same value`)
    t.ok(validator(AnyEnvelope, 'x').check(envelope), `${name}: the fixture itself is valid`)
  }
  const specific: Array<[string, Record<string, unknown>, Parameters<typeof validator>[0]]> = [
    ['raw_event', raw, RawEventEnvelope],
    ['enriched_event', enriched, EnrichedEventEnvelope],
    ['dead_letter', deadBytes, DeadLetterEnvelope],
  ]
  for (const [name, envelope, schema] of specific) {
    t.ok(validator(schema, name).check(decodeEnvelope(encode(envelope))), `${name}: decodes to its own schema`)
  }
  const decoded = decodeEnvelope(encode(deadBytes)) as DeadLetterEnvelopeType
  t.ok(decoded.data.payload instanceof Uint8Array, 'a byte payload comes back as bytes')
  t.equal(Buffer.compare(Buffer.from(decoded.data.payload as Uint8Array), Buffer.from(payload)), 0, 'with the same bytes')
  t.equal(typeof (decodeEnvelope(encode(deadText)) as DeadLetterEnvelopeType).data.payload, 'string', 'a text payload comes back as text')
  t.equal(((decodeEnvelope(encode(enriched)) as EnrichedEventEnvelopeType).data.message as Record<string, unknown>).customField, 'kept', 'unknown message fields survive')
  t.equal(decodeEnvelope(encode(raw)).time, 1715335200000, 'a millisecond timestamp keeps its precision')
  t.equal(decodeEnvelope(encode({ ...raw, time: 1715335200000.25 })).time, 1715335200000.25, 'a fractional time too')
})

/** Byte arrays (Buffer or Uint8Array) as `{ bytes: [...] }`, so values compare by content. */
function normal(value: unknown): unknown {
  if (value instanceof Uint8Array) return { bytes: [...value] }
  if (Array.isArray(value)) return value.map(normal)
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normal(v)]))
  return value
}

t.test('encoded bytes are plain msgpack', async (t) => {
  for (const [name, envelope] of fixtures) {
    const bytes = encode(envelope)
    t.ok((bytes[0]! & 0xf0) === 0x80 || bytes[0] === 0xde || bytes[0] === 0xdf, `${name}: the top level is a plain msgpack map`)
    const plain = unpack(bytes)
    t.same(plainProblems(plain), [], `${name}: msgpackr unpack (default options) gives plain objects`)
    t.same(plain, envelope, `${name}: with the same content`)
    t.notOk(plain instanceof Map, `${name}: not a Map`)
    const strict = strictMsgpackDecode(bytes)
    t.same(plainProblems(strict), [], `${name}: a spec-only decoder gives plain objects`)
    t.strictSame(normal(strict), normal(envelope), `${name}: a spec-only decoder reads the same value`)
  }
  // the control: msgpackr's own default packing (records) is not plain msgpack, and the check above notices
  const withRecords = new Packr().pack([raw, raw])
  t.throws(() => strictMsgpackDecode(withRecords), /not plain msgpack/, 'records (msgpackr default) are refused by the spec-only decoder')
  t.doesNotThrow(() => strictMsgpackDecode(encode([raw, raw])), 'repeated structures are still plain maps with encode()')
  t.equal((strictMsgpackDecode(encode(deadBytes)) as DeadLetterEnvelopeType).data.payload instanceof Uint8Array, true, 'a byte payload is a msgpack bin')
})

t.test('decodeEnvelope names the problem', async (t) => {
  const without = (envelope: Record<string, unknown>, field: string) => {
    const copy = { ...envelope }
    delete copy[field]
    return copy
  }
  const cases: Array<[string, unknown, RegExp]> = [
    ['version 2', { ...raw, v: 2 }, /\/v must be equal to constant/],
    ['version 0', { ...enriched, v: 0 }, /\/v must be equal to constant/],
    ['version as a string', { ...deadText, v: '1' }, /\/v must be equal to constant/],
    ['no version', without(raw, 'v'), /required properties[^;]*\bv\b/],
    ['no project', without(raw, 'project'), /required properties[^;]*\bproject\b/],
    ['no id', without(raw, 'id'), /required properties[^;]*\bid\b/],
    ['no time', without(raw, 'time'), /required properties[^;]*\btime\b/],
    ['no key', without(raw, 'key'), /required properties[^;]*\bkey\b/],
    ['no keyGroup', without(raw, 'keyGroup'), /required properties[^;]*\bkeyGroup\b/],
    ['no source', without(raw, 'source'), /required properties[^;]*\bsource\b/],
    ['no data', without(raw, 'data'), /required properties[^;]*\bdata\b/],
    ['no type tag', without(raw, 'type'), /required properties[^;]*\btype\b/],
    ['no origin on an enriched event', without(enriched, 'origin'), /required properties[^;]*\borigin\b/],
    ['an unknown type tag', { ...raw, type: 'bogus_event' }, /\/type must be equal to constant/],
    ['a type tag for another shape', { ...raw, type: 'dead_letter' }, /\/data must have required properties[^;]*stepId/],
    ['a fractional keyGroup', { ...raw, keyGroup: 1.5 }, /\/keyGroup must be integer/],
    ['a negative keyGroup', { ...raw, keyGroup: -1 }, /\/keyGroup/],
    ['time as a string', { ...raw, time: '1715335200000' }, /\/time must be number/],
    ['an unknown source', { ...raw, source: 'replay' }, /\/source/],
    ['a message without messageId', { ...raw, data: { ...message, messageId: undefined } }, /\/data\/messageId/],
    ['a message with an unknown segment type', { ...raw, data: { ...message, type: 'purchase' } }, /\/data\/type/],
    ['a message with a numeric event', { ...raw, data: { ...message, event: 5 } }, /\/data\/event must be string/],
    ['properties that are not an object', { ...raw, data: { ...message, properties: 'x' } }, /\/data\/properties/],
    ['an origin without seq', { ...enriched, origin: { stream: 'SEG_RAW' } }, /\/origin must have required properties seq/],
  ]
  for (const [name, value, pattern] of cases) {
    let caught: unknown
    try {
      decodeEnvelope(encode(value))
    } catch (error) {
      caught = error
    }
    t.ok(caught instanceof SchemaError, `${name}: throws a SchemaError`)
    const error = caught as SchemaError
    t.equal(error?.code, 'SEG_SCHEMA', `${name}: code`)
    t.match(error?.message, /^envelope does not match its schema: /, `${name}: says what did not match`)
    t.match(error?.message, pattern, `${name}: names the problem (${error?.message})`)
    t.ok(Array.isArray(error?.problems) && error.problems.length > 0 && error.problems.length <= 5, `${name}: lists 1-5 problems`)
  }
  for (const [name, value] of [['a string', 'hello'], ['null', null], ['an array', [raw]], ['a number', 1], ['an empty map', {}]] as const) {
    t.throws(() => decodeEnvelope(encode(value)), { code: 'SEG_SCHEMA' }, `${name} is not an envelope`)
  }
  t.throws(() => decodeEnvelope(Uint8Array.from([0xc1])), 'bytes that are not msgpack throw')
  const bytes = encode(raw)
  t.throws(() => decodeEnvelope(bytes.subarray(0, bytes.length - 3)), 'truncated bytes throw')
})

t.test('decodeEnvelope names the problem of a dead letter', async (t) => {
  // the problems are those of the message's own type, not of every branch of the union
  const cases: Array<[string, unknown, RegExp]> = [
    ['no stepId', { ...deadText, data: { reason: 'r', payload: 'p' } }, /stepId/],
    ['no reason', { ...deadText, data: { stepId: 's', payload: 'p' } }, /reason/],
    ['a numeric payload', { ...deadText, data: { stepId: 's', reason: 'r', payload: 5 } }, /\/data\/payload/],
    ['a fractional seq', { ...deadBytes, data: { ...deadBytes.data, seq: 1.5 } }, /\/data\/seq/],
  ]
  for (const [name, value, pattern] of cases) {
    let caught: unknown
    try {
      decodeEnvelope(encode(value))
    } catch (error) {
      caught = error
    }
    t.ok(caught instanceof SchemaError, `${name}: throws a SchemaError`)
    t.match((caught as Error | undefined)?.message, pattern, `${name}: names the problem`)
  }
})
