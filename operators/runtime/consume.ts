import type { JetStreamClient, JsMsg } from '@nats-io/jetstream'
import type { Logger } from '../../config/logger.ts'
import { backoffMs, sleep } from './retry.ts'

export interface BatchLoopOptions {
  js: JetStreamClient
  stream: string
  consumer: string
  batchSize: number
  logger: Logger
  signal: AbortSignal
  /** Handles one batch; the messages are acked by it (or left for redelivery). */
  handle: (messages: JsMsg[]) => Promise<void>
}

/**
 * Pulls batches from a durable consumer until the signal aborts, then returns
 * after the batch in hand is handled. A broker outage is waited out.
 */
export async function batchLoop(options: BatchLoopOptions): Promise<void> {
  const { js, stream, consumer: name, logger, signal } = options
  let failures = 0
  while (!signal.aborted) {
    try {
      const consumer = await js.consumers.get(stream, name)
      while (!signal.aborted) {
        const batch: JsMsg[] = []
        const messages = await consumer.fetch({ max_messages: options.batchSize, expires: 1_000 })
        for await (const message of messages) batch.push(message)
        if (batch.length > 0) await options.handle(batch)
        failures = 0
      }
    } catch (error) {
      if (signal.aborted) break
      failures++
      logger.warn({ err: error, stream, consumer: name }, 'consumer failed; retrying')
      await sleep(backoffMs(failures, 200, 5_000), signal)
    }
  }
}
