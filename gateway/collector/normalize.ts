import { createHash } from 'node:crypto'
import { validator } from '../../schemas/codec.ts'
import { SEGMENT_TYPES, SegmentMessage, type SegmentType } from '../../schemas/segment.ts'

const segmentMessage = validator(SegmentMessage, 'Segment message')

/** Segment's limit for one message. */
export const MAX_MESSAGE_BYTES = 32 * 1024
/** Segment's limit for one batch request. */
export const MAX_BATCH_BYTES = 500 * 1024
/** Event names the sessionize operator owns. */
export const RESERVED_EVENT_PREFIX = '$session_'

/** Fields the collector sets itself (or drops, like the write key). */
const STAMPED_FIELDS = new Set(['type', 'messageId', 'anonymousId', 'userId', 'event', 'name', 'previousId', 'groupId', 'timestamp', 'receivedAt', 'context', 'originalTimestamp', 'sentAt', 'writeKey'])
const DROPPED_WHEN_NULL = new Set(['properties', 'traits', 'integrations'])

export type Normalized = { ok: true; message: SegmentMessage } | { ok: false; reason: string; messageId?: string }

export interface StampContext {
  /** When the collector received the request, ms. */
  receivedAt: number
  /** The batch's `sentAt`, used when a message has none of its own. */
  batchSentAt?: unknown
  /** The request's client address, used when `context.ip` is absent. */
  clientIp?: string
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)
const ISO_DATE = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/

// receivedAt and a batch's sentAt repeat for every message of a request: format each once
let lastIsoMs = Number.NaN
let lastIso = ''
function iso(ms: number): string {
  if (ms !== lastIsoMs) {
    lastIsoMs = ms
    lastIso = new Date(ms).toISOString()
  }
  return lastIso
}

/** ISO 8601 to ms. A time without an offset is read as UTC, never as the server's local time. */
function parseTime(value: unknown): number | undefined {
  const match = typeof value === 'string' ? ISO_DATE.exec(value) : null
  if (!match) return undefined
  const ms = Date.parse(match[1] && !match[4] ? `${value}Z` : (value as string))
  return Number.isFinite(ms) ? ms : undefined
}

/** JSON with object keys sorted, so equal content always hashes the same. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (isObject(value)) return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(',')}}`
  return JSON.stringify(value) ?? 'null'
}

/**
 * A messageId for a message that came without one: a hash of its content,
 * leaving out `sentAt` (restamped on every retry), so retries still deduplicate.
 */
export function contentMessageId(raw: Record<string, unknown>): string {
  const { sentAt: _sentAt, writeKey: _writeKey, ...content } = raw
  return `h-${createHash('sha256').update(canonicalJson(content)).digest('base64url').slice(0, 32)}`
}

function optionalString(raw: Record<string, unknown>, field: string, max = 256): string | undefined {
  const value = raw[field]
  if (value === undefined || value === null) return undefined
  if (typeof value === 'number' && Number.isFinite(value)) return String(value)
  if (typeof value !== 'string') throw new Error(`${field} must be a string`)
  if (value.length === 0) return undefined
  if (value.length > max) throw new Error(`${field} is longer than ${max} characters`)
  return value
}

function optionalObject(raw: Record<string, unknown>, field: string): Record<string, unknown> | undefined {
  const value = raw[field]
  if (value === undefined || value === null) return undefined
  if (!isObject(value)) throw new Error(`${field} must be an object`)
  return value
}

/**
 * Validates one Segment message and stamps it: messageId (content hash when
 * absent), receivedAt, clock-skew-corrected timestamp, context.ip. Pure: the
 * caller passes the time. Unknown fields are kept as they are.
 */
export function normalizeMessage(input: unknown, stamp: StampContext, forcedType?: SegmentType): Normalized {
  if (!isObject(input)) return { ok: false, reason: 'message must be a JSON object' }
  const size = Buffer.byteLength(JSON.stringify(input))
  const suppliedId = typeof input.messageId === 'string' ? input.messageId : undefined
  if (size > MAX_MESSAGE_BYTES) return { ok: false, reason: `message is ${size} bytes; the limit is ${MAX_MESSAGE_BYTES} bytes (32 KB)`, messageId: suppliedId }
  try {
    const type = forcedType ?? input.type
    if (typeof type !== 'string' || !(SEGMENT_TYPES as readonly string[]).includes(type)) {
      throw new Error(`type must be one of ${SEGMENT_TYPES.join(', ')}${type === undefined ? '' : `, got ${JSON.stringify(type)}`}`)
    }
    const messageId = optionalString(input, 'messageId') ?? contentMessageId({ ...input, type })
    const anonymousId = optionalString(input, 'anonymousId')
    const userId = optionalString(input, 'userId')
    if (!anonymousId && !userId) throw new Error('anonymousId or userId is required')
    const event = optionalString(input, 'event')
    if (type === 'track' && !event) throw new Error('event is required for a track call')
    if (event?.startsWith(RESERVED_EVENT_PREFIX)) throw new Error(`event names starting with "${RESERVED_EVENT_PREFIX}" are reserved for segstream's sessions`)
    const previousId = optionalString(input, 'previousId')
    if (type === 'alias' && !previousId) throw new Error('previousId is required for an alias call')
    if (type === 'alias' && !userId) throw new Error('userId is required for an alias call')
    const groupId = optionalString(input, 'groupId')
    if (type === 'group' && !groupId) throw new Error('groupId is required for a group call')
    const name = optionalString(input, 'name')
    for (const field of ['properties', 'traits', 'context', 'integrations']) optionalObject(input, field)

    const clientTime = input.timestamp === undefined || input.timestamp === null ? undefined : parseTime(input.timestamp)
    if (input.timestamp !== undefined && input.timestamp !== null && clientTime === undefined) throw new Error('timestamp must be an ISO 8601 date')
    const sentAtRaw = input.sentAt ?? stamp.batchSentAt
    const sentAt = sentAtRaw === undefined || sentAtRaw === null ? undefined : parseTime(sentAtRaw)
    if (sentAtRaw !== undefined && sentAtRaw !== null && sentAt === undefined) throw new Error('sentAt must be an ISO 8601 date')
    // the client's clock may be wrong, but the gap between its timestamp and its sentAt is right
    const eventTime = clientTime === undefined ? stamp.receivedAt : sentAt === undefined ? clientTime : stamp.receivedAt - (sentAt - clientTime)

    const clientContext = optionalObject(input, 'context')
    const context = clientContext?.ip !== undefined || !stamp.clientIp ? (clientContext ?? {}) : { ...clientContext, ip: stamp.clientIp }

    // one pass, no `delete` (it would turn the object into a slow dictionary): the checked
    // values (numbers become strings, empty and null fields go), then every other field as sent
    const message: Record<string, unknown> = { type, messageId }
    if (anonymousId !== undefined) message.anonymousId = anonymousId
    if (userId !== undefined) message.userId = userId
    if (event !== undefined) message.event = event
    if (name !== undefined) message.name = name
    if (previousId !== undefined) message.previousId = previousId
    if (groupId !== undefined) message.groupId = groupId
    for (const field in input) {
      if (STAMPED_FIELDS.has(field)) continue
      const value = input[field]
      if (value === null && DROPPED_WHEN_NULL.has(field)) continue
      message[field] = value
    }
    message.timestamp = new Date(eventTime).toISOString()
    message.receivedAt = iso(stamp.receivedAt)
    message.context = context
    if (clientTime !== undefined && clientTime !== eventTime) message.originalTimestamp = new Date(clientTime).toISOString()
    else if (typeof input.originalTimestamp === 'string') message.originalTimestamp = input.originalTimestamp
    if (sentAt !== undefined) message.sentAt = input.sentAt === undefined || input.sentAt === null ? iso(sentAt) : new Date(sentAt).toISOString()
    // last line of defence: what is published must match the published schema
    if (!segmentMessage.check(message)) throw new Error(`message does not match the Segment schema: ${segmentMessage.problems(message).join('; ')}`)
    return { ok: true, message }
  } catch (error) {
    return { ok: false, reason: (error as Error).message, messageId: suppliedId }
  }
}
