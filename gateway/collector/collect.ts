import { createHash } from 'node:crypto'
import type { PipelinedPublisher } from '../../broker/publisher.ts'
import { encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type DeadLetterEnvelope, type RawEventEnvelope } from '../../schemas/envelope.ts'
import type { SegmentType } from '../../schemas/segment.ts'
import { keyGroupOf, subjectFor } from '../../topology/subjects.ts'
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
  const pending: Promise<{ duplicate: boolean }>[] = []
  const eventAcks: Promise<{ duplicate: boolean }>[] = []
  const rejected: Rejection[] = []
  input.messages.forEach((raw, index) => {
    const normalized = normalizeMessage(raw, input.stamp, input.forcedType)
    if (!normalized.ok) {
      rejected.push({ index, messageId: normalized.messageId, reason: normalized.reason })
      const payload = safeJson(raw)
      const payloadHash = hash(payload)
      const key = routingKeyOf(raw) ?? normalized.messageId ?? payload
      const keyGroup = keyGroupOf(key, keyGroups)
      const letter: DeadLetterEnvelope = {
        v: ENVELOPE_VERSION, type: 'dead_letter', project, id: normalized.messageId ?? `dl-${payloadHash}`,
        time: input.stamp.receivedAt, key, keyGroup, source: stage === 'raw' ? 'live' : 'import',
        data: { stepId: 'collector', reason: normalized.reason, payload },
      }
      pending.push(publisher.publish(subjectFor(project, 'dlq', keyGroup), encode(letter), `${project}:dlq:collector:${payloadHash}`))
      return
    }
    const message = normalized.message
    const key = (message.anonymousId ?? message.userId)!
    const keyGroup = keyGroupOf(key, keyGroups)
    const envelope: RawEventEnvelope = {
      v: ENVELOPE_VERSION, type: 'raw_event', project, id: message.messageId, time: Date.parse(message.timestamp),
      key, keyGroup, source: stage === 'raw' ? 'live' : 'import', data: message,
    }
    const ack = publisher.publish(subjectFor(project, stage, keyGroup), encode(envelope), `${project}:${message.messageId}`)
    pending.push(ack)
    eventAcks.push(ack)
  })
  // wait for every ack, so no publish is left failing unobserved
  const settled = await Promise.allSettled(pending)
  const failure = settled.find((result) => result.status === 'rejected')
  if (failure) throw failure.reason
  const duplicates = (await Promise.all(eventAcks)).filter((ack) => ack.duplicate).length
  return { accepted: eventAcks.length, duplicates, rejected }
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
