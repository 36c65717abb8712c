import type { PipelinedPublisher } from '../broker/publisher.ts'

export interface Prepared {
  subject: string
  data: Uint8Array
  id: string
}

/**
 * The baseline every benchmark stands beside: one process publishing prepared
 * messages with pipelined acks, 5,000 in flight. Returns acked messages per second.
 */
export async function pipelinedPublishRate(publisher: PipelinedPublisher, messages: readonly Prepared[]): Promise<number> {
  const started = performance.now()
  const pending: Promise<unknown>[] = []
  for (const m of messages) {
    pending.push(publisher.publish(m.subject, m.data, m.id))
    if (pending.length >= 5_000) await Promise.all(pending.splice(0))
  }
  await Promise.all(pending)
  return messages.length / ((performance.now() - started) / 1000)
}
