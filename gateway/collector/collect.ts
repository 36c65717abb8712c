import { createHash } from 'node:crypto'
import type { OutgoingMessage, PipelinedPublisher } from '../../broker/publisher.ts'
import { encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type DeadLetterEnvelope, type RawEventEnvelope } from '../../schemas/envelope.ts'
import type { SegmentType } from '../../schemas/segment.ts'
import { keyGroupOf, subjectFor, type Stage } from '../../topology/subjects.ts'
import { normalizeMessage, type StampContext } from './normalize.ts'

export interface Rejection {
  /** Position in the request's batch (0 for a single-message call). */
  index: number
  messageId?: string
  reason: string
}

export interface CollectResult {
  /** Messages stored (or recognised as already stored). */
  accepted: number
  /** The newest event time among them (absent when none was accepted): where the project's event time now is. */
  newestTime?: number
  /** Of those, how many JetStream had already stored under the same id. */
  duplicates: number
  rejected: Rejection[]
}

export interface CollectInput {
  project: string
  keyGroups: number
  /** `raw` for live traffic, `import` for history. */
  stage: 'raw' | 'import'
  messages: readonly unknown[]
  stamp: StampContext
  forcedType?: SegmentType
}

/**
 * Validates, stamps and publishes a batch. Resolves only when JetStream has
 * acknowledged every accepted message and every dead letter; rejects (and the
 * HTTP layer answers 503) if any of them was not stored.
 */
export async function collect(publisher: PipelinedPublisher, input: CollectInput): Promise<CollectResult> {
  const { project, keyGroups, stage } = input
  const source = stage === 'raw' ? 'live' : 'import'
  const eventSubjects = subjectsOf(project, stage, keyGroups)
  const events: OutgoingMessage[] = []
  const letters: OutgoingMessage[] = []
  const rejected: Rejection[] = []
  const messages = input.messages
  let newestTime = Number.NEGATIVE_INFINITY
  for (let index = 0; index < messages.length; index++) {
    const raw = messages[index]
    const normalized = normalizeMessage(raw, input.stamp, input.forcedType)
    if (!normalized.ok) {
      rejected.push({ index, messageId: normalized.messageId, reason: normalized.reason })
      const payload = safeJson(raw)
      const payloadHash = hash(payload)
      const key = routingKeyOf(raw) ?? normalized.messageId ?? payload
      const keyGroup = keyGroupOf(key, keyGroups)
      const letter: DeadLetterEnvelope = {
        v: ENVELOPE_VERSION, type: 'dead_letter', project, id: normalized.messageId ?? `dl-${payloadHash}`,
        time: input.stamp.receivedAt, key, keyGroup, source,
        data: { stepId: 'collector', reason: normalized.reason, payload },
      }
      letters.push({ subject: subjectFor(project, 'dlq', keyGroup), data: encode(letter), msgId: `${project}:dlq:collector:${payloadHash}` })
      continue
    }
    const message = normalized.message
    // an alias is routed by previousId: the id it links meets its own identity state in enrich
    const key = ((message.type === 'alias' ? message.previousId : undefined) ?? message.anonymousId ?? message.userId)!
    const keyGroup = keyGroupOfKey(key, keyGroups)
    const envelope: RawEventEnvelope = {
      v: ENVELOPE_VERSION, type: 'raw_event', project, id: message.messageId, time: normalized.time,
      key, keyGroup, source, data: message,
    }
    events.push({ subject: eventSubjects[keyGroup]!, data: encode(envelope), msgId: `${project}:${message.messageId}` })
    if (normalized.time > newestTime) newestTime = normalized.time
  }
  // wait for every ack, so no publish is left failing unobserved
  const [stored, deadLettered] = await Promise.allSettled([publisher.publishBatch(events), publisher.publishBatch(letters)])
  if (stored.status === 'rejected') throw stored.reason
  if (deadLettered.status === 'rejected') throw deadLettered.reason
  const result: CollectResult = { accepted: stored.value.stored, duplicates: stored.value.duplicates, rejected }
  if (events.length > 0) result.newestTime = newestTime
  return result
}

/**
 * `keyGroupOf`, without its UTF-8 buffer for the usual ASCII key: FNV-1a over
 * the characters is then the same hash over the same bytes.
 */
export function keyGroupOfKey(key: string, keyGroups: number): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    const code = key.charCodeAt(i)
    if (code > 0x7f) return keyGroupOf(key, keyGroups)
    hash = Math.imul(hash ^ code, 0x01000193) >>> 0
  }
  return hash % keyGroups
}

/** The subject of each key group of a project's stage, built (and validated) once. */
const subjectCache = new Map<string, string[]>()
function subjectsOf(project: string, stage: Stage, keyGroups: number): readonly string[] {
  const cacheKey = `${project}.${stage}.${keyGroups}`
  let subjects = subjectCache.get(cacheKey)
  if (!subjects) {
    subjects = Array.from({ length: keyGroups }, (_, keyGroup) => subjectFor(project, stage, keyGroup))
    // projects come and go; a bound keeps a long-running gateway's cache small
    if (subjectCache.size >= 10_000) subjectCache.clear()
    subjectCache.set(cacheKey, subjects)
  }
  return subjects
}

function routingKeyOf(raw: unknown): string | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined
  const { anonymousId, userId } = raw as Record<string, unknown>
  return typeof anonymousId === 'string' && anonymousId ? anonymousId : typeof userId === 'string' && userId ? userId : undefined
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value) ?? 'undefined'
  } catch {
    return String(value)
  }
}

const hash = (text: string) => createHash('sha256').update(text).digest('base64url').slice(0, 24)
