import { headers, type NatsConnection } from '@nats-io/transport-node'
import { DeliverPolicy, jetstream, type JetStreamClient, type JsMsg } from '@nats-io/jetstream'
import { readStream } from '../../broker/read.ts'
import { decode, encode } from '../../schemas/codec.ts'
import type { Source } from '../../schemas/envelope.ts'
import { emptyKeyGroup, rebuildTimers, type KeyEntry, type KeyGroupState } from './kernel.ts'

/** The state bucket of a step: `seg_state_<stepId>`. */
export const stateBucketOf = (stepId: string) => `seg_state_${stepId}`

/** Our checkpoint was overwritten by another owner: this instance no longer owns the key group. */
export class FencedError extends Error {
  readonly code = 'SEG_FENCED'
  readonly keyGroup: number
  constructor(keyGroup: number, detail: string) {
    super(`key group ${keyGroup} was taken over by a newer owner: ${detail}`)
    this.keyGroup = keyGroup
  }
}

interface StoredCheckpoint {
  epoch: number
  offsets: Record<string, number>
  maxEventTime: Record<string, number>
  control?: Record<string, unknown>
}

interface StoredKey {
  s: unknown
  a: Record<string, number>
  t: number
  p: string
  o: Source
  w?: number
}

/** Keys may hold any character; KV keys may not: base64url keeps them valid and distinct. */
const encodeKey = (key: string) => Buffer.from(key, 'utf8').toString('base64url')
const decodeKey = (token: string) => Buffer.from(token, 'base64url').toString('utf8')

/** Atomic batches hold at most 1000 messages, the checkpoint included. */
const MAX_BATCH = 1000

/**
 * Keyed state and checkpoints of one step in a KV bucket. A key group's commit
 * is an atomic batch whose first message rewrites the checkpoint with an
 * expected revision: an owner that lost the key group (paused, partitioned)
 * cannot write a single key, because the new owner bumped that revision.
 */
export class StateStore {
  readonly bucket: string
  readonly #js: JetStreamClient
  readonly #stream: string

  constructor(nc: NatsConnection, stepId: string) {
    this.bucket = stateBucketOf(stepId)
    this.#stream = `KV_${this.bucket}`
    this.#js = jetstream(nc)
  }

  #checkpointSubject(keyGroup: number) {
    return `$KV.${this.bucket}.c.${keyGroup}`
  }

  #keySubject(keyGroup: number, key: string) {
    return `$KV.${this.bucket}.k.${keyGroup}.${encodeKey(key)}`
  }

  /** Reads a key group's checkpoint and every key, in one pass over the bucket's stream. */
  async load<State>(keyGroup: number): Promise<{ group: KeyGroupState<State>; revision: number; epoch: number }> {
    const group = emptyKeyGroup<State>(keyGroup, 0)
    let revision = 0
    let epoch = 0
    const keyPrefix = `$KV.${this.bucket}.k.${keyGroup}.`
    const take = (message: JsMsg) => {
      const operation = message.headers?.get('KV-Operation')
      if (message.subject === this.#checkpointSubject(keyGroup)) {
        revision = message.seq
        if (operation) return
        const checkpoint = decode(message.data) as StoredCheckpoint
        epoch = checkpoint.epoch
        group.offsets = checkpoint.offsets
        group.maxEventTime = checkpoint.maxEventTime
        group.control = checkpoint.control ?? {}
        return
      }
      if (operation === 'DEL' || operation === 'PURGE') return
      const stored = decode(message.data) as StoredKey
      const entry: KeyEntry<State> = { state: stored.s as State, applied: stored.a, lastTime: stored.t, project: stored.p, source: stored.o, wakeAt: stored.w }
      group.keys.set(decodeKey(message.subject.slice(keyPrefix.length)), entry)
    }
    await readStream(this.#js, this.#stream, {
      filterSubjects: [this.#checkpointSubject(keyGroup), `$KV.${this.bucket}.k.${keyGroup}.>`],
      deliverPolicy: DeliverPolicy.LastPerSubject,
    }, take)
    group.epoch = epoch
    rebuildTimers(group)
    return { group, revision, epoch }
  }

  /** Takes over a key group: rewrites its checkpoint under a new epoch, fencing the previous owner. */
  async claim(group: KeyGroupState<unknown>, revision: number, epoch: number): Promise<number> {
    group.epoch = epoch
    return this.#writeCheckpoint(group, revision, group.offsets)
  }

  async #writeCheckpoint(group: KeyGroupState<unknown>, revision: number, offsets: Record<string, number>): Promise<number> {
    const value: StoredCheckpoint = { epoch: group.epoch, offsets, maxEventTime: group.maxEventTime, control: group.control }
    try {
      const ack = await this.#js.publish(this.#checkpointSubject(group.keyGroup), encode(value), { expect: { lastSubjectSequence: revision } })
      return ack.seq
    } catch (error) {
      throw fencedOrRethrow(group.keyGroup, error)
    }
  }

  /**
   * Writes the dirty keys and the checkpoint (offsets last). Returns the
   * checkpoint's new revision. Throws FencedError if another owner took over.
   */
  async commit<State>(group: KeyGroupState<State>, revision: number, committedOffsets: Record<string, number>): Promise<number> {
    const dirty = [...group.dirty]
    group.dirty.clear()
    if (dirty.length === 0) return this.#writeCheckpoint(group, revision, group.offsets)
    let current = revision
    for (let start = 0; start < dirty.length; start += MAX_BATCH - 1) {
      const chunk = dirty.slice(start, start + MAX_BATCH - 1)
      const last = start + MAX_BATCH - 1 >= dirty.length
      // only the last chunk moves the offsets: keys of earlier chunks carry their own applied sequence
      const checkpoint: StoredCheckpoint = { epoch: group.epoch, offsets: last ? group.offsets : committedOffsets, maxEventTime: group.maxEventTime, control: group.control }
      try {
        const batch = await this.#js.startBatch(this.#checkpointSubject(group.keyGroup), encode(checkpoint), { expect: { lastSubjectSequence: current } })
        for (let i = 0; i < chunk.length - 1; i++) this.#add(batch, group, chunk[i]!)
        const tail = this.#message(group, chunk[chunk.length - 1]!)
        const ack = await batch.commit(tail.subject, tail.data, tail.options as never)
        current = ack.seq - ack.count + 1
      } catch (error) {
        throw fencedOrRethrow(group.keyGroup, error)
      }
    }
    return current
  }

  #message(group: KeyGroupState<unknown>, key: string): { subject: string; data: Uint8Array; options: { headers?: ReturnType<typeof headers> } } {
    const subject = this.#keySubject(group.keyGroup, key)
    const entry = group.keys.get(key)
    if (!entry) {
      const hdrs = headers()
      hdrs.set('KV-Operation', 'DEL')
      return { subject, data: new Uint8Array(0), options: { headers: hdrs } }
    }
    const stored: StoredKey = { s: entry.state, a: entry.applied, t: entry.lastTime, p: entry.project, o: entry.source }
    if (entry.wakeAt !== undefined) stored.w = entry.wakeAt
    return { subject, data: encode(stored), options: {} }
  }

  #add(batch: { add(subject: string, data: Uint8Array, options?: object): void }, group: KeyGroupState<unknown>, key: string) {
    const message = this.#message(group, key)
    batch.add(message.subject, message.data, message.options)
  }
}

function fencedOrRethrow(keyGroup: number, error: unknown): Error {
  const text = String((error as Error)?.message ?? error)
  if (/wrong last sequence|last sequence mismatch|batch didn't contain/i.test(text) || (error as { code?: number }).code === 10071) {
    return new FencedError(keyGroup, text)
  }
  return error as Error
}
