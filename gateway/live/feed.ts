import { DeliverPolicy, jetstream, type ConsumerMessages } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Logger } from '../../config/logger.ts'
import { decodeEnvelope } from '../../schemas/codec.ts'
import { stageFilter } from '../../topology/subjects.ts'
import { backoffMs, sleep } from '../../operators/runtime/retry.ts'
import { LiveCountsBook, type LiveSums } from './book.ts'

/** The stream of live counts (topology/definition.ts): one message kept per (project, stage, key group). */
export const COUNTS_STREAM = 'SEG_COUNTS'

export type LiveListener = (sums: LiveSums) => void

/**
 * Keeps the gateway's book of live counts current: one ordered consumer over SEG_COUNTS (segment
 * counts and funnel step counts) that starts with the last message of every subject (each key
 * group's latest counts: the initial
 * load) and then receives every new one, with no gap between the two. Tells the listeners of a
 * project when its sums changed. A broker outage is waited out; the consumer resumes after the
 * last message it saw.
 */
export class LiveCountsFeed {
  readonly book = new LiveCountsBook()
  readonly #nc: NatsConnection
  readonly #logger: Logger
  readonly #listeners = new Map<string, Set<LiveListener>>()
  readonly #everyProject = new Set<(project: string, sums: LiveSums) => void>()
  readonly #abort = new AbortController()
  #messages: ConsumerMessages | undefined
  #running: Promise<void> | undefined
  #loaded!: () => void
  /** Resolves once the latest counts of every key group stored at start are in the book. */
  readonly loaded = new Promise<void>((resolve) => (this.#loaded = resolve))

  constructor(nc: NatsConnection, logger: Logger) {
    this.#nc = nc
    this.#logger = logger
  }

  start(): void {
    this.#running ??= this.#run()
  }

  /** Calls `listener` with the project's sums whenever they change; returns the unsubscribe. */
  listen(project: string, listener: LiveListener): () => void {
    let listeners = this.#listeners.get(project)
    if (!listeners) this.#listeners.set(project, (listeners = new Set()))
    listeners.add(listener)
    return () => {
      listeners.delete(listener)
      if (listeners.size === 0) this.#listeners.delete(project)
    }
  }

  /** Calls `listener` with the project and its sums whenever any project's sums change; returns the unsubscribe. */
  listenAll(listener: (project: string, sums: LiveSums) => void): () => void {
    this.#everyProject.add(listener)
    return () => this.#everyProject.delete(listener)
  }

  async stop(): Promise<void> {
    this.#abort.abort()
    await this.#messages?.close()
    await this.#running
  }

  async #run(): Promise<void> {
    const js = jetstream(this.#nc)
    const signal = this.#abort.signal
    let failures = 0
    while (!signal.aborted) {
      try {
        const stored = (await (await js.jetstreamManager()).streams.info(COUNTS_STREAM)).state.messages
        if (stored === 0) this.#loaded()
        const consumer = await js.consumers.get(COUNTS_STREAM, { filter_subjects: [stageFilter('counts'), stageFilter('funnel_counts')], deliver_policy: DeliverPolicy.LastPerSubject })
        this.#messages = await consumer.consume()
        if (signal.aborted) break
        for await (const message of this.#messages) {
          failures = 0
          this.#take(message.subject, message.data)
          if (message.info.pending === 0) this.#loaded()
        }
      } catch (error) {
        if (signal.aborted) break
        failures++
        this.#logger.warn({ err: error, stream: COUNTS_STREAM }, 'live counts feed failed; retrying')
        await sleep(backoffMs(failures, 200, 5_000), signal)
      }
    }
  }

  #take(subject: string, data: Uint8Array) {
    try {
      const envelope = decodeEnvelope(data)
      if (envelope.type === 'live_counts') {
        if (!this.book.apply(envelope.project, envelope.data)) return
      } else if (envelope.type === 'live_funnel_counts') {
        if (!this.book.applyFunnels(envelope.project, envelope.data)) return
      } else return
      const listeners = this.#listeners.get(envelope.project)
      if ((!listeners || listeners.size === 0) && this.#everyProject.size === 0) return
      const sums = this.book.sums(envelope.project)
      for (const listener of this.#everyProject) listener(envelope.project, sums)
      for (const listener of listeners ?? []) listener(sums)
    } catch (error) {
      this.#logger.warn({ err: error, subject }, 'live counts: a message that is not live_counts or live_funnel_counts was skipped')
    }
  }
}
