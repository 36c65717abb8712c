import type { NatsConnection } from '@nats-io/transport-node'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { readStream } from '../broker/read.ts'
import { PipelinedPublisher } from '../broker/publisher.ts'
import { collect } from '../gateway/collector/collect.ts'
import { decodeEnvelope } from '../schemas/codec.ts'
import type { DeadLetterEnvelope } from '../schemas/envelope.ts'

export interface DeadLetterRow {
  seq: number
  letter: DeadLetterEnvelope
}

/** Every dead letter (of one project, or all), oldest first. */
export async function listDeadLetters(nc: NatsConnection, project?: string, limit = 1000): Promise<DeadLetterRow[]> {
  const rows: DeadLetterRow[] = []
  await readStream(jetstream(nc), 'SEG_DLQ', { filterSubjects: [project ? `seg.${project}.dlq.*` : 'seg.*.dlq.*'], limit }, (message) => {
    try {
      rows.push({ seq: message.seq, letter: decodeEnvelope(message.data) as DeadLetterEnvelope })
    } catch {
      // a dead letter that is itself unreadable stays where it is
    }
  })
  return rows
}

/**
 * Re-injects dead letters after a fix: a message refused at the collector goes
 * through the collector's checks again; a message an operator refused is
 * published again to the subject it was read from (a new stream sequence, so
 * the operator handles it afresh). Each replayed letter is removed from the
 * dead-letter stream, so a replay never runs twice.
 */
export async function replayDeadLetters(nc: NatsConnection, rows: DeadLetterRow[], keyGroups: number): Promise<{ replayed: number; refusedAgain: number }> {
  const publisher = new PipelinedPublisher(nc, { timeoutMs: 10_000 })
  const jsm = await jetstreamManager(nc)
  let replayed = 0
  let refusedAgain = 0
  try {
    for (const { seq, letter } of rows) {
      const { payload, subject, stepId } = letter.data
      if (stepId === 'collector' && typeof payload === 'string') {
        const result = await collect(publisher, { project: letter.project, keyGroups, stage: letter.source === 'import' ? 'import' : 'raw', messages: [JSON.parse(payload)], stamp: { receivedAt: letter.time } })
        refusedAgain += result.rejected.length
      } else if (subject && payload instanceof Uint8Array) {
        await publisher.publish(subject, payload, `replay:${letter.project}:${seq}`)
      } else {
        continue
      }
      await jsm.streams.deleteMessage('SEG_DLQ', seq)
      replayed++
    }
  } finally {
    publisher.close()
  }
  return { replayed, refusedAgain }
}
