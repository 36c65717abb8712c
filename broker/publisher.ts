import { headers, nuid, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node'

export interface PubAck {
  stream: string
  seq: number
  duplicate: boolean
}

/** JetStream did not store a message: down, full, too slow, or no stream for the subject. */
export class PublishError extends Error {
  readonly code: 'SEG_PUBLISH_TIMEOUT' | 'SEG_PUBLISH_REFUSED' | 'SEG_PUBLISH_NO_STREAM' | 'SEG_PUBLISH_CLOSED'
  readonly subject: string
  constructor(code: PublishError['code'], subject: string, message: string) {
    super(message)
    this.code = code
    this.subject = subject
  }
}

interface Pending {
  subject: string
  deadline: number
  resolve: (ack: PubAck) => void
  reject: (error: Error) => void
}

export interface PublisherOptions {
  /** A publish not acknowledged within this many ms fails. Default 5000. */
  timeoutMs?: number
  /** Publishes in flight before `publish` waits. Default 5000. */
  maxInFlight?: number
}

/**
 * Pipelined JetStream publishing: every message goes out with a reply subject
 * on one shared inbox subscription, and acks are matched as they come back. One
 * awaited `js.publish()` per message leaves ~90% of the broker idle (FACTS.md).
 */
export class PipelinedPublisher {
  readonly #nc: NatsConnection
  readonly #prefix = `_INBOX.${nuid.next()}`
  readonly #pending = new Map<number, Pending>()
  readonly #timeoutMs: number
  readonly #maxInFlight: number
  readonly #subscription: Subscription
  readonly #sweeper: NodeJS.Timeout
  #next = 0
  #capacityWaiters: (() => void)[] = []

  constructor(nc: NatsConnection, options: PublisherOptions = {}) {
    this.#nc = nc
    this.#timeoutMs = options.timeoutMs ?? 5_000
    this.#maxInFlight = options.maxInFlight ?? 5_000
    this.#subscription = nc.subscribe(`${this.#prefix}.*`, { callback: (error, msg) => (error ? this.#failAll(error) : this.#onAck(msg)) })
    this.#sweeper = setInterval(() => this.#expire(), Math.min(250, this.#timeoutMs / 4))
    this.#sweeper.unref()
  }

  get inFlight(): number {
    return this.#pending.size
  }

  /** Publishes and resolves once JetStream has stored it (or recognised the id as a duplicate). */
  async publish(subject: string, data: Uint8Array, msgId: string): Promise<PubAck> {
    while (this.#pending.size >= this.#maxInFlight) await new Promise<void>((resolve) => this.#capacityWaiters.push(resolve))
    const id = ++this.#next
    const hdrs = headers()
    hdrs.set('Nats-Msg-Id', msgId)
    return new Promise<PubAck>((resolve, reject) => {
      this.#pending.set(id, { subject, deadline: Date.now() + this.#timeoutMs, resolve, reject })
      try {
        this.#nc.publish(subject, data, { reply: `${this.#prefix}.${id}`, headers: hdrs })
      } catch (error) {
        this.#settle(id)
        reject(new PublishError('SEG_PUBLISH_CLOSED', subject, `cannot publish to ${subject}: ${(error as Error).message}`))
      }
    })
  }

  #settle(id: number): Pending | undefined {
    const pending = this.#pending.get(id)
    if (!pending) return undefined
    this.#pending.delete(id)
    this.#capacityWaiters.shift()?.()
    return pending
  }

  #onAck(msg: Msg) {
    const id = Number(msg.subject.slice(this.#prefix.length + 1))
    const pending = this.#settle(id)
    if (!pending) return
    if (msg.headers && msg.headers.code === 503) {
      pending.reject(new PublishError('SEG_PUBLISH_NO_STREAM', pending.subject, `no JetStream stream accepts ${pending.subject} (run "segstream topology apply")`))
      return
    }
    try {
      const body = msg.json<{ stream?: string; seq?: number; duplicate?: boolean; error?: { code: number; description: string } }>()
      if (body.error) {
        pending.reject(new PublishError('SEG_PUBLISH_REFUSED', pending.subject, `JetStream refused ${pending.subject}: ${body.error.description} (${body.error.code})`))
      } else {
        pending.resolve({ stream: body.stream!, seq: body.seq!, duplicate: body.duplicate === true })
      }
    } catch (error) {
      pending.reject(new PublishError('SEG_PUBLISH_REFUSED', pending.subject, `unreadable JetStream ack for ${pending.subject}: ${(error as Error).message}`))
    }
  }

  #expire() {
    const now = Date.now()
    for (const [id, pending] of this.#pending) {
      if (pending.deadline > now) continue
      this.#settle(id)
      pending.reject(new PublishError('SEG_PUBLISH_TIMEOUT', pending.subject, `JetStream did not acknowledge ${pending.subject} within ${this.#timeoutMs} ms`))
    }
  }

  #failAll(error: Error) {
    for (const id of [...this.#pending.keys()]) {
      const pending = this.#settle(id)
      pending?.reject(new PublishError('SEG_PUBLISH_CLOSED', pending.subject, `connection failed: ${error.message}`))
    }
  }

  close(): void {
    clearInterval(this.#sweeper)
    this.#failAll(new Error('publisher closed'))
    this.#subscription.unsubscribe()
  }
}
