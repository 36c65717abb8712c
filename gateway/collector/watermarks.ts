import type { OutgoingMessage, PipelinedPublisher } from '../../broker/publisher.ts'
import { encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type WatermarkEnvelope } from '../../schemas/envelope.ts'
import { subjectFor } from '../../topology/subjects.ts'

/** How often the collector tells every key group how far a project's event time has got. Default 1 s. */
export const DEFAULT_TICK_MS = 1_000

/**
 * A key group's event time moves only with its own messages, so a quiet one (few users, an
 * import that has ended) would hold its timers (sessions ending, engagement levels falling) at
 * its own newest event. The collector therefore publishes, at most once per tick and per
 * (project, stage), a `watermark` message into every key group carrying the newest event time
 * it has stored for the project: after every message it stands for, so each key group's
 * operators may move their event time up to it. Operators forward it to their own outputs
 * (operators/runtime/kernel.ts), so it flows down the topology like the events do.
 */
export class WatermarkTicker {
  readonly #publisher: PipelinedPublisher
  readonly #keyGroups: number
  readonly #pending = new Map<string, { project: string; stage: 'raw' | 'import'; time: number }>()
  readonly #sent = new Map<string, number>()
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> = Promise.resolve()

  constructor(publisher: PipelinedPublisher, keyGroups: number, everyMs = DEFAULT_TICK_MS) {
    this.#publisher = publisher
    this.#keyGroups = keyGroups
    this.#timer = setInterval(() => void this.flush(), everyMs).unref()
  }

  /** The collector stored events of `project` on `stage` up to `time` (acknowledged). */
  note(project: string, stage: 'raw' | 'import', time: number): void {
    const key = `${project}.${stage}`
    if (time <= (this.#sent.get(key) ?? Number.NEGATIVE_INFINITY)) return
    const pending = this.#pending.get(key)
    if (!pending || pending.time < time) this.#pending.set(key, { project, stage, time })
  }

  /** Publishes what is pending now; a failure leaves it pending for the next tick. */
  flush(): Promise<void> {
    this.#running = this.#running.then(async () => {
      const due = [...this.#pending.entries()]
      this.#pending.clear()
      for (const [key, { project, stage, time }] of due) {
        const messages: OutgoingMessage[] = []
        const source = stage === 'raw' ? 'live' : 'import'
        for (let keyGroup = 0; keyGroup < this.#keyGroups; keyGroup++) {
          const envelope: WatermarkEnvelope = { v: ENVELOPE_VERSION, type: 'watermark', project, id: `watermark:${time}`, time, key: '', keyGroup, source }
          messages.push({ subject: subjectFor(project, stage, keyGroup), data: encode(envelope), msgId: `${project}:watermark:${stage}:${time}:${keyGroup}` })
        }
        try {
          await this.#publisher.publishBatch(messages)
          this.#sent.set(key, Math.max(time, this.#sent.get(key) ?? Number.NEGATIVE_INFINITY))
        } catch {
          this.note(project, stage, time) // the broker is away: the next tick tries again
        }
      }
    })
    return this.#running
  }

  /** Sends what is pending, then stops. */
  async stop(): Promise<void> {
    clearInterval(this.#timer)
    this.#timer = undefined
    await this.flush()
  }
}
