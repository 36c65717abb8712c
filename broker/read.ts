import { DeliverPolicy, type JetStreamClient, type JsMsg } from '@nats-io/jetstream'

export interface ReadOptions {
  filterSubjects: string[]
  /** Default: every message; `LastPerSubject` reads a KV bucket's current values. */
  deliverPolicy?: DeliverPolicy
  /** Stop after this many messages. Default: all. */
  limit?: number
}

/**
 * Reads what a stream holds right now, in order, with a throwaway ordered
 * consumer: stops at the last message that was there when it started.
 */
export async function readStream(js: JetStreamClient, stream: string, options: ReadOptions, onMessage: (message: JsMsg) => void): Promise<number> {
  const consumer = await js.consumers.get(stream, { filter_subjects: options.filterSubjects, deliver_policy: options.deliverPolicy ?? DeliverPolicy.All })
  const limit = options.limit ?? Number.POSITIVE_INFINITY
  let remaining = (await consumer.info(true)).num_pending
  let read = 0
  try {
    while (remaining > 0 && read < limit) {
      let got = 0
      for await (const message of await consumer.fetch({ max_messages: Math.min(remaining, limit - read, 10_000), expires: 5_000 })) {
        got++
        read++
        remaining = message.info.pending
        onMessage(message)
        if (remaining === 0 || read >= limit) break
      }
      if (got === 0) break
    }
  } finally {
    await consumer.delete().catch(() => {})
  }
  return read
}
