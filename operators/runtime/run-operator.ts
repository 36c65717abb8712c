import type { JetStreamClient, JsMsg } from '@nats-io/jetstream'
import type { PipelinedPublisher } from '../../broker/publisher.ts'
import type { Logger } from '../../config/logger.ts'
import { decodeEnvelope, encode } from '../../schemas/codec.ts'
import type { AnyEnvelope, Origin } from '../../schemas/envelope.ts'
import { subjectFor } from '../../topology/subjects.ts'
import { batchLoop } from './consume.ts'
import { deadLetterOf } from './dead-letter.ts'
import type { Emission, Operator } from './operator.ts'
import { backoffMs, sleep } from './retry.ts'

export interface RunOperatorOptions<State, Input> {
  js: JetStreamClient
  publisher: PipelinedPublisher
  operator: Operator<State, Input>
  /** (stream, durable consumer) pairs to read, from the topology. */
  consumers: { stream: string; name: string }[]
  batchSize: number
  /** Turns a decoded envelope into the operator's input; throws on the wrong type. */
  toInput: (envelope: AnyEnvelope, origin: Origin) => Input
  logger: Logger
  signal: AbortSignal
  /** Wall clock for dead-letter stamps only; operators never see it. */
  clock?: () => number
}

interface Outgoing {
  subject: string
  data: Uint8Array
  msgId: string
}

/**
 * Drives a stateless operator: decode, logic, publish every output with an id
 * derived from (stepId, stream, sequence, output index), then ack. Inputs are
 * acked only after all their outputs are stored, so a crash replays them and the
 * ids make the replay a no-op. Keyed state and ownership come with the runtime issue.
 */
export async function runOperator<State, Input>(options: RunOperatorOptions<State, Input>): Promise<void> {
  const { operator, publisher, signal } = options
  const clock = options.clock ?? Date.now
  const logger = options.logger.child({ stepId: operator.stepId })
  const state = operator.init()

  const outputsOf = (message: JsMsg, stream: string): Outgoing[] => {
    const origin: Origin = { stream, seq: message.seq }
    let emissions: Emission[]
    try {
      const envelope = decodeEnvelope(message.data)
      emissions = operator.onEvent(state, options.toInput(envelope, origin), envelope.time).emit
    } catch (error) {
      logger.warn({ err: error, subject: message.subject, seq: message.seq }, 'message dead-lettered')
      const letter = deadLetterOf(operator.stepId, message.subject, message.seq, message.data, (error as Error).message, clock())
      emissions = letter ? [letter] : []
    }
    return emissions.map((emission, index) => ({
      subject: subjectFor(emission.project, emission.stage, emission.keyGroup),
      data: encode(emission.envelope),
      msgId: `${operator.stepId}:${stream}:${message.seq}:${index}`,
    }))
  }

  await Promise.all(options.consumers.map(({ stream, name }) => batchLoop({
    js: options.js, stream, consumer: name, batchSize: options.batchSize, logger, signal,
    handle: async (messages) => {
      const outgoing = messages.flatMap((message) => outputsOf(message, stream))
      for (let attempt = 0; ; attempt++) {
        const results = await Promise.allSettled(outgoing.map((o) => publisher.publish(o.subject, o.data, o.msgId)))
        const failure = results.find((r) => r.status === 'rejected')
        if (!failure) break
        // the same ids again: what was stored the first time is recognised as a duplicate
        logger.warn({ err: failure.reason, attempt }, 'publishing outputs failed; retrying')
        if (signal.aborted) return
        await sleep(backoffMs(attempt, 200, 5_000), signal)
      }
      for (const message of messages) message.ack()
    },
  })))
}
