import { nuid, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/transport-node'

export interface PubAck {
  stream: string
  seq: number
  duplicate: boolean
}

/** What {@link PipelinedPublisher.publishBatch} resolves with once every message is stored. */
export interface BatchPubAck {
  /** Messages stored, or recognised by JetStream as already stored. */
  stored: number
  /** Of those, how many JetStream had already stored under the same Nats-Msg-Id. */
  duplicates: number
}

/** One message of a {@link PipelinedPublisher.publishBatch} call. */
export interface OutgoingMessage {
  subject: string
  data: Uint8Array
  /** Sent as Nats-Msg-Id, so JetStream stores a retried message once. */
  msgId: string
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

interface AckBody {
  stream?: string
  seq?: number
  duplicate?: boolean
  error?: { code: number; description: string }
}

/**
 * Messages published together and awaited together: one entry in the pending
 * map, one promise and one deadline per call instead of one per message.
 */
class Outstanding {
  readonly subjects: readonly string[]
  readonly deadline: number
  readonly #resolve: (outstanding: Outstanding) => void
  readonly #reject: (error: Error) => void
  /** 1 once a message's ack (or failure) has arrived: a repeated reply never counts twice (one message: `remaining` says it). */
  readonly #settled: Uint8Array | undefined
  remaining: number
  duplicates = 0
  /** The single message's ack, kept for `publish()`. */
  lastAck: PubAck | undefined
  firstError: Error | undefined

  constructor(subjects: readonly string[], deadline: number, resolve: (outstanding: Outstanding) => void, reject: (error: Error) => void) {
    this.subjects = subjects
    this.deadline = deadline
    this.remaining = subjects.length
    this.#settled = subjects.length > 1 ? new Uint8Array(subjects.length) : undefined
    this.#resolve = resolve
    this.#reject = reject
  }

  /** Records one message's outcome; true when that was the last one outstanding. */
  settle(index: number, ack: PubAck | undefined, error: Error | undefined): boolean {
    if (index >= this.subjects.length || this.remaining === 0) return false
    if (this.#settled) {
      if (this.#settled[index]) return false
      this.#settled[index] = 1
    }
    this.remaining--
    if (error) this.firstError ??= error
    else if (ack) {
      if (ack.duplicate) this.duplicates++
      this.lastAck = ack
    }
    return this.remaining === 0
  }

  /** Fails every message not yet settled with the error `failure` makes for its subject. */
  failRemaining(failure: (subject: string) => Error): void {
    for (let i = 0; i < this.subjects.length && this.remaining > 0; i++) if (!this.#settled?.[i]) this.settle(i, undefined, failure(this.subjects[i]!))
  }

  finish(): void {
    if (this.firstError) this.#reject(this.firstError)
    else this.#resolve(this)
  }
}

/** What a batch records for an ack read by {@link isPlainStoredAck}: it keeps no stream or sequence. */
const STORED: PubAck = Object.freeze({ stream: '', seq: 0, duplicate: false })

const ACK_START = Buffer.from('{"stream":"')
const ACK_SEQ = Buffer.from('"seq":')

/**
 * True for an ack of the form `{"stream":"…",…"seq":<digits>}` with no nested
 * object: stored, not a duplicate (that flag and an error both come after the
 * sequence or nest). Anything else is left to the JSON parser; this only saves
 * decoding and parsing tens of thousands of identical small acks a second.
 */
function isPlainStoredAck(data: Uint8Array): boolean {
  const length = data.length
  if (length < ACK_START.length + ACK_SEQ.length + 3 || data[length - 1] !== 0x7d /* } */) return false
  for (let i = 0; i < ACK_START.length; i++) if (data[i] !== ACK_START[i]) return false
  let digits = length - 2
  while (digits >= 0 && data[digits]! >= 0x30 && data[digits]! <= 0x39) digits--
  if (digits === length - 2) return false
  const seqStart = digits - ACK_SEQ.length + 1
  if (seqStart < ACK_START.length) return false
  for (let i = 0; i < ACK_SEQ.length; i++) if (data[seqStart + i] !== ACK_SEQ[i]) return false
  for (let i = 1; i < seqStart; i++) if (data[i] === 0x7b /* { */) return false
  return true
}

/** What nats-core puts before a message id in its headers, and its own check of the value. */
const msgIdHeaderOf = (msgId: string): string => {
  // the same checks and trimming as nats-core's `headers().set()`
  if (/[\r\n]/.test(msgId)) throw new TypeError(`Nats-Msg-Id cannot contain \\r or \\n: ${JSON.stringify(msgId.slice(0, 100))}`)
  return `NATS/1.0\r\nNats-Msg-Id: ${msgId.trim()}\r\n\r\n`
}

/**
 * The Nats-Msg-Id header, encoded once. nats-core only ever calls `encode()` on
 * the headers of a message it publishes; its general-purpose header object
 * (a Map, key canonicalisation, a regex per value, a fresh TextEncoder buffer)
 * cost about a tenth of the collector's time per event.
 */
class MsgIdHeader {
  readonly #bytes: Uint8Array
  /** `header`: from {@link msgIdHeaderOf}. */
  constructor(header: string) {
    this.#bytes = Buffer.from(header)
  }
  encode(): Uint8Array {
    return this.#bytes
  }
}

/**
 * The part of nats-core's protocol handler (`nc.protocol`, not public API) a batch is
 * written through. `sendCommand` is where nats-core's own `publish` queues a message's
 * bytes: sent on the next microtask (at once past 32 KB), held and sent after a reconnect.
 */
interface WireProtocol {
  sendCommand(bytes: Uint8Array): void
  noMorePublishing: boolean
  info?: { max_payload?: number; headers?: boolean }
  outMsgs: number
  outBytes: number
}

function wireProtocolOf(nc: NatsConnection): WireProtocol | undefined {
  const protocol = (nc as unknown as { protocol?: Partial<WireProtocol> }).protocol
  return typeof protocol?.sendCommand === 'function' && typeof protocol.outMsgs === 'number' ? protocol as WireProtocol : undefined
}

/** nats-core's test of a subject it will publish to. */
const UNUSABLE_SUBJECT = /[ \n\r\t]/

/**
 * A whole batch as the protocol lines nats-core's `publish` would send, one
 * `HPUB <subject> <reply> <header bytes> <total bytes>` frame per message, in one
 * buffer. nats-core's per-message publish (a protocol string, a TextEncoder
 * buffer, four pieces copied together again before the write) made publishBatch
 * cost 2.3-3.5 µs of CPU per message; this, 1.6-1.9 (batches of 100, same runs).
 * `heads[i]` is message i's protocol line and header, or undefined for a message
 * left out.
 */
function batchFrames(messages: readonly OutgoingMessage[], heads: readonly (string | undefined)[]): Uint8Array {
  let size = 0
  const headBytes = new Array<number>(messages.length)
  for (let i = 0; i < messages.length; i++) {
    const head = heads[i]
    if (head === undefined) continue
    headBytes[i] = Buffer.byteLength(head)
    size += headBytes[i]! + messages[i]!.data.length + 2
  }
  const frames = Buffer.allocUnsafe(size)
  let offset = 0
  for (let i = 0; i < messages.length; i++) {
    const head = heads[i]
    if (head === undefined) continue
    offset += frames.write(head, offset, headBytes[i], 'utf8')
    const data = messages[i]!.data
    frames.set(data, offset)
    offset += data.length
    frames[offset++] = 0x0d
    frames[offset++] = 0x0a
  }
  return frames
}

export interface PublisherOptions {
  /** A publish not acknowledged within this many ms fails. Default 5000. */
  timeoutMs?: number
  /**
   * Messages in flight before `publish` and `publishBatch` wait. Default 5000.
   * A batch is sent whole once the count is below the limit, so it may go over by one batch.
   */
  maxInFlight?: number
}

/**
 * Pipelined JetStream publishing: every message goes out with a reply subject
 * on one shared inbox subscription, and acks are matched as they come back. One
 * awaited `js.publish()` per message leaves ~90% of the broker idle (FACTS.md).
 */
export class PipelinedPublisher {
  readonly #nc: NatsConnection
  /** How batches are written; undefined if nats-core's internals ever change (then: one `publish` per message). */
  readonly #protocol: WireProtocol | undefined
  readonly #prefix = `_INBOX.${nuid.next()}`
  /** By call id; the reply subject of a message is `<prefix>.<call id>.<index in the call>`. */
  readonly #pending = new Map<number, Outstanding>()
  readonly #timeoutMs: number
  readonly #maxInFlight: number
  readonly #subscription: Subscription
  readonly #sweeper: NodeJS.Timeout
  #next = 0
  #inFlight = 0
  #capacityWaiters: (() => void)[] = []

  constructor(nc: NatsConnection, options: PublisherOptions = {}) {
    this.#nc = nc
    this.#protocol = wireProtocolOf(nc)
    this.#timeoutMs = options.timeoutMs ?? 5_000
    this.#maxInFlight = options.maxInFlight ?? 5_000
    this.#subscription = nc.subscribe(`${this.#prefix}.*.*`, { callback: (error, msg) => (error ? this.#failAll(error) : this.#onAck(msg)) })
    this.#sweeper = setInterval(() => this.#expire(), Math.min(250, this.#timeoutMs / 4))
    this.#sweeper.unref()
  }

  /** Messages published and not yet acknowledged. */
  get inFlight(): number {
    return this.#inFlight
  }

  /** Publishes and resolves once JetStream has stored it (or recognised the id as a duplicate). */
  publish(subject: string, data: Uint8Array, msgId: string): Promise<PubAck> {
    // no async wrapper and no arrays: this is the per-message path of operators and of the baseline benchmark
    if (this.#inFlight >= this.#maxInFlight) return this.#capacity().then(() => this.publish(subject, data, msgId))
    let header: MsgHdrs
    try {
      header = new MsgIdHeader(msgIdHeaderOf(msgId)) as unknown as MsgHdrs
    } catch (error) {
      return Promise.reject(error)
    }
    const id = ++this.#next
    return new Promise<PubAck>((resolve, reject) => {
      const outstanding = new Outstanding([subject], Date.now() + this.#timeoutMs, (done) => resolve(done.lastAck!), reject)
      this.#pending.set(id, outstanding)
      this.#inFlight++
      try {
        this.#nc.publish(subject, data, { reply: `${this.#prefix}.${id}.0`, headers: header })
      } catch (error) {
        this.#settleOne(id, outstanding, 0, undefined, new PublishError('SEG_PUBLISH_CLOSED', subject, `cannot publish to ${subject}: ${(error as Error).message}`))
      }
    })
  }

  /**
   * Publishes every message and resolves once JetStream has stored all of them
   * (or recognised their ids as duplicates). If any was not stored, rejects with
   * the first PublishError, but only after every other message has settled too.
   */
  async publishBatch(messages: readonly OutgoingMessage[]): Promise<BatchPubAck> {
    if (messages.length === 0) return { stored: 0, duplicates: 0 }
    if (this.#inFlight >= this.#maxInFlight) await this.#capacity()
    // header validation throws before anything is sent, as nats-core's own would
    const headers = messages.map((m) => msgIdHeaderOf(m.msgId))
    const id = ++this.#next
    const replyPrefix = `${this.#prefix}.${id}.`
    const subjects = messages.map((m) => m.subject)
    const outstanding = await new Promise<Outstanding>((resolve, reject) => {
      const outstanding = new Outstanding(subjects, Date.now() + this.#timeoutMs, resolve, reject)
      this.#pending.set(id, outstanding)
      this.#inFlight += messages.length
      const protocol = this.#protocol
      if (protocol) this.#sendFrames(protocol, id, outstanding, messages, headers, replyPrefix)
      else {
        for (let i = 0; i < messages.length; i++) {
          const m = messages[i]!
          try {
            this.#nc.publish(m.subject, m.data, { reply: replyPrefix + i, headers: new MsgIdHeader(headers[i]!) as unknown as MsgHdrs })
          } catch (error) {
            this.#settleOne(id, outstanding, i, undefined, new PublishError('SEG_PUBLISH_CLOSED', m.subject, `cannot publish to ${m.subject}: ${(error as Error).message}`))
          }
        }
      }
    })
    return { stored: messages.length, duplicates: outstanding.duplicates }
  }

  /**
   * Writes a batch as one buffer of HPUB frames, with the checks nats-core's
   * `publish` makes of each message (a message it would refuse fails alone).
   */
  #sendFrames(protocol: WireProtocol, id: number, outstanding: Outstanding, messages: readonly OutgoingMessage[], headers: readonly string[], replyPrefix: string): void {
    const refusal = this.#nc.isClosed() ? 'connection closed' : protocol.noMorePublishing ? 'connection draining' : protocol.info && !protocol.info.headers ? 'headers are not available on this server' : undefined
    const maxPayload = protocol.info?.max_payload ?? Number.POSITIVE_INFINITY
    const heads = new Array<string | undefined>(messages.length)
    let sent = 0
    let bytes = 0
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]!
      const header = headers[i]!
      const headerBytes = Buffer.byteLength(header)
      const problem = refusal ?? (m.subject.length === 0 || UNUSABLE_SUBJECT.test(m.subject) ? `invalid subject "${m.subject}"` : headerBytes + m.data.length > maxPayload ? 'max_payload size exceeded' : undefined)
      if (problem) {
        this.#settleOne(id, outstanding, i, undefined, new PublishError('SEG_PUBLISH_CLOSED', m.subject, `cannot publish to ${m.subject}: ${problem}`))
        continue
      }
      heads[i] = `HPUB ${m.subject} ${replyPrefix}${i} ${headerBytes} ${headerBytes + m.data.length}\r\n${header}`
      sent++
      bytes += headerBytes + m.data.length
    }
    if (sent === 0) return
    protocol.outMsgs += sent
    protocol.outBytes += bytes
    protocol.sendCommand(batchFrames(messages, heads))
  }

  /** Resolves once fewer than `maxInFlight` messages are in flight. */
  async #capacity(): Promise<void> {
    while (this.#inFlight >= this.#maxInFlight) await new Promise<void>((resolve) => this.#capacityWaiters.push(resolve))
  }

  #settleOne(id: number, outstanding: Outstanding, index: number, ack: PubAck | undefined, error: Error | undefined): void {
    const before = outstanding.remaining
    const done = outstanding.settle(index, ack, error)
    if (outstanding.remaining !== before) this.#release(1)
    if (done) {
      this.#pending.delete(id)
      outstanding.finish()
    }
  }

  #release(count: number): void {
    this.#inFlight -= count
    for (let i = 0; i < count && this.#capacityWaiters.length > 0; i++) this.#capacityWaiters.shift()!()
  }

  #onAck(msg: Msg) {
    const subject = msg.subject
    const dot = subject.indexOf('.', this.#prefix.length + 1)
    const id = Number(subject.slice(this.#prefix.length + 1, dot))
    const index = Number(subject.slice(dot + 1))
    const outstanding = this.#pending.get(id)
    if (!outstanding) return
    const published = outstanding.subjects[index]
    if (published === undefined) return
    if (msg.headers && msg.headers.code === 503) {
      this.#settleOne(id, outstanding, index, undefined, new PublishError('SEG_PUBLISH_NO_STREAM', published, `no JetStream stream accepts ${published} (run "segstream topology apply")`))
      return
    }
    // a batch needs no more than "stored, not a duplicate": read that from the bytes
    if (outstanding.subjects.length > 1 && isPlainStoredAck(msg.data)) {
      this.#settleOne(id, outstanding, index, STORED, undefined)
      return
    }
    let body: AckBody
    try {
      body = msg.json<AckBody>()
    } catch (error) {
      this.#settleOne(id, outstanding, index, undefined, new PublishError('SEG_PUBLISH_REFUSED', published, `unreadable JetStream ack for ${published}: ${(error as Error).message}`))
      return
    }
    if (body.error) {
      this.#settleOne(id, outstanding, index, undefined, new PublishError('SEG_PUBLISH_REFUSED', published, `JetStream refused ${published}: ${body.error.description} (${body.error.code})`))
    } else {
      this.#settleOne(id, outstanding, index, { stream: body.stream!, seq: body.seq!, duplicate: body.duplicate === true }, undefined)
    }
  }

  #expire() {
    const now = Date.now()
    for (const [id, outstanding] of this.#pending) {
      if (outstanding.deadline > now) continue
      this.#failOutstanding(id, outstanding, (subject) => new PublishError('SEG_PUBLISH_TIMEOUT', subject, `JetStream did not acknowledge ${subject} within ${this.#timeoutMs} ms`))
    }
  }

  #failOutstanding(id: number, outstanding: Outstanding, failure: (subject: string) => Error) {
    const before = outstanding.remaining
    outstanding.failRemaining(failure)
    this.#pending.delete(id)
    this.#release(before - outstanding.remaining)
    outstanding.finish()
  }

  #failAll(error: Error) {
    for (const [id, outstanding] of [...this.#pending]) {
      this.#failOutstanding(id, outstanding, (subject) => new PublishError('SEG_PUBLISH_CLOSED', subject, `connection failed: ${error.message}`))
    }
  }

  close(): void {
    clearInterval(this.#sweeper)
    this.#failAll(new Error('publisher closed'))
    this.#subscription.unsubscribe()
  }
}
