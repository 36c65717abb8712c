import type { JetStreamClient, JsMsg } from '@nats-io/jetstream'
import type { PipelinedPublisher } from '../../broker/publisher.ts'
import type { Logger } from '../../config/logger.ts'
import { decodeEnvelope, encode } from '../../schemas/codec.ts'
import type { AnyEnvelope } from '../../schemas/envelope.ts'
import { DatabaseUnavailableError } from '../../store/store.ts'
import { subjectFor } from '../../topology/subjects.ts'
import { batchLoop } from './consume.ts'
import { deadLetterOf } from './dead-letter.ts'
import { backoffMs, sleep } from './retry.ts'

export interface RunSinkOptions<Row> {
  stepId: string
  js: JetStreamClient
  publisher: PipelinedPublisher
  consumers: { stream: string; name: string }[]
  batchSize: number
  /** Envelope to row; undefined for a message that is not this sink's (acked, skipped); throws for one it cannot store. */
  toRow: (envelope: AnyEnvelope, streamSeq: number) => Row | undefined
  /** Writes rows idempotently (a replayed row changes nothing). */
  write: (rows: Row[]) => Promise<unknown>
  logger: Logger
  signal: AbortSignal
  clock?: () => number
}

/**
 * Writes batches to the database and acks only after the commit. While the
 * database is down the batch in hand is retried (never acked, never dropped);
 * a row the database refuses for its content goes to the dead-letter subject.
 */
export async function runSink<Row>(options: RunSinkOptions<Row>): Promise<void> {
  const { publisher, signal, stepId } = options
  const clock = options.clock ?? Date.now
  const logger = options.logger.child({ stepId })

  const deadLetter = async (message: JsMsg, reason: string) => {
    logger.warn({ subject: message.subject, seq: message.seq, reason }, 'message dead-lettered')
    const letter = deadLetterOf(stepId, message.subject, message.seq, message.data, reason, clock())
    if (letter) await publisher.publish(subjectFor(letter.project, 'dlq', letter.keyGroup), encode(letter.envelope), `${stepId}:dlq:${message.subject}:${message.seq}`)
  }

  /** Retries while the database is unavailable; returns false if stopped first. */
  const writeWithRetry = async (rows: Row[]): Promise<boolean> => {
    for (let attempt = 0; ; attempt++) {
      try {
        await options.write(rows)
        return true
      } catch (error) {
        if (!(error instanceof DatabaseUnavailableError) && (error as { retryable?: boolean })?.retryable !== true) throw error
        if (attempt === 0 || attempt % 20 === 0) logger.warn({ err: error, attempt }, 'database unavailable; holding the batch and retrying')
        if (signal.aborted) return false
        await sleep(backoffMs(attempt, 200, 5_000), signal)
      }
    }
  }

  await Promise.all(options.consumers.map(({ stream, name }) => batchLoop({
    js: options.js, stream, consumer: name, batchSize: options.batchSize, logger, signal,
    handle: async (messages) => {
      const good: { message: JsMsg; row: Row }[] = []
      for (const message of messages) {
        try {
          const row = options.toRow(decodeEnvelope(message.data), message.seq)
          // definition changes and state hand-offs travel on the operators' input stages; they are not rows
          if (row === undefined) {
            message.ack()
            continue
          }
          good.push({ message, row })
        } catch (error) {
          await deadLetter(message, (error as Error).message)
          message.ack()
        }
      }
      try {
        if (!(await writeWithRetry(good.map((g) => g.row)))) return
      } catch (error) {
        // the batch has a row the database refuses: find it by writing rows one at a time
        logger.warn({ err: error }, 'batch refused; writing row by row')
        for (const { message, row } of good) {
          try {
            if (!(await writeWithRetry([row]))) return
          } catch (rowError) {
            await deadLetter(message, (rowError as Error).message)
          }
        }
      }
      for (const { message } of good) message.ack()
    },
  })))
}
