import { nuid, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node'
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

/** Atomic batches hold at most 1000 messages, checkpoints included. */
const MAX_BATCH = 1000
/**
 * Atomic batches of one commit in flight at once. The server takes 50 per stream, shared by
 * every instance of the step; each one is a staging file store on the server, fsynced.
 */
const BATCHES_IN_FLIGHT = 4
/** How long the server may take to store and fsync one atomic batch. */
const COMMIT_TIMEOUT_MS = 10_000

/** One message of an atomic batch: subject, payload and the headers that differ per message. */
interface BatchMessage {
  subject: string
  data: Uint8Array
  /** The checkpoint's compare-and-set: the revision the key group's checkpoint must still have. */
  expectRevision?: number
  deleted?: boolean
}

/** A key group's checkpoint followed by (some of) its changed keys. */
interface Chunk {
  checkpoint: Uint8Array
  keys: BatchMessage[]
}

/**
 * A key group's changes, encoded at a batch boundary: exactly the state whose
 * outputs were published by then, whatever the runtime processes while the
 * commit waits for those outputs' acks and is sent.
 */
export interface PreparedCommit {
  keyGroup: number
  /** The offsets the checkpoint moves to once every chunk is written. */
  offsets: Record<string, number>
  /** The keys it writes: marked dirty again if the commit is abandoned before it is sent. */
  keys: string[]
  /** In order; each chunk's checkpoint expects the revision the previous one wrote. Only the last moves the offsets. */
  chunks: Chunk[]
}

export type CommitOutcome = { keyGroup: number; revision: number; error?: undefined } | { keyGroup: number; error: Error }

/**
 * Headers encoded once, as nats-core only ever calls `encode()` on the headers
 * of a message it publishes: its general-purpose header object (a Map, key
 * canonicalisation, a check per value) would be built for every key a commit writes.
 */
class BatchHeaders {
  readonly #bytes: Uint8Array
  /** `lines`: header lines, each ending in CRLF. */
  constructor(lines: string) {
    this.#bytes = Buffer.from(`NATS/1.0\r\n${lines}\r\n`)
  }
  encode(): Uint8Array {
    return this.#bytes
  }
}

/**
 * Keyed state and checkpoints of one step in a KV bucket. A key group's commit
 * is written in an atomic batch whose first message for that key group rewrites
 * its checkpoint with an expected revision: an owner that lost the key group
 * (paused, partitioned) cannot write a single key, because the new owner bumped
 * that revision. One atomic batch carries the commits of several key groups
 * (each fenced by its own checkpoint), as every batch costs the server a staging
 * store and an fsync.
 */
export class StateStore {
  readonly bucket: string
  readonly #nc: NatsConnection
  readonly #js: JetStreamClient
  readonly #stream: string

  constructor(nc: NatsConnection, stepId: string) {
    this.bucket = stateBucketOf(stepId)
    this.#stream = `KV_${this.bucket}`
    this.#nc = nc
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
    const [outcome] = await this.commit([{ prepared: this.prepare(group, group.offsets), revision }])
    if (outcome!.error) throw outcome!.error
    return outcome!.revision
  }

  /**
   * Encodes a key group's changed keys and checkpoint as they are now, and
   * clears its dirty set. `committedOffsets` (those of the last commit) go into
   * the checkpoints of all but the last chunk: keys of earlier chunks carry their
   * own applied sequence, so a crash between chunks replays nothing twice.
   */
  prepare(group: KeyGroupState<unknown>, committedOffsets: Record<string, number>): PreparedCommit {
    const keys = [...group.dirty]
    group.dirty.clear()
    const offsets = { ...group.offsets }
    const checkpointWith = (chunkOffsets: Record<string, number>) =>
      encode({ epoch: group.epoch, offsets: chunkOffsets, maxEventTime: group.maxEventTime, control: group.control } satisfies StoredCheckpoint)
    const chunks: Chunk[] = []
    const perChunk = MAX_BATCH - 1
    for (let start = 0; start < keys.length || chunks.length === 0; start += perChunk) {
      const last = start + perChunk >= keys.length
      chunks.push({ checkpoint: checkpointWith(last ? offsets : committedOffsets), keys: keys.slice(start, start + perChunk).map((key) => this.#keyMessage(group, key)) })
    }
    return { keyGroup: group.keyGroup, offsets, keys, chunks }
  }

  /**
   * Writes prepared commits, each from the checkpoint revision given with it,
   * packing several key groups into each atomic batch. Returns per key group the
   * checkpoint's new revision, or the error that stopped it: FencedError if
   * another owner took the key group over. A batch refused for one key group's
   * revision is retried key group by key group, so the others still commit.
   */
  async commit(commits: { prepared: PreparedCommit; revision: number }[]): Promise<CommitOutcome[]> {
    const revisions = new Map(commits.map(({ prepared, revision }) => [prepared.keyGroup, revision]))
    const failed = new Map<number, Error>()
    const rounds = Math.max(0, ...commits.map(({ prepared }) => prepared.chunks.length))
    for (let round = 0; round < rounds; round++) {
      // a key group's next chunk expects the revision its previous chunk wrote: one chunk per key group per round
      const segments = commits
        .filter(({ prepared }) => round < prepared.chunks.length && !failed.has(prepared.keyGroup))
        .map(({ prepared }) => ({ keyGroup: prepared.keyGroup, chunk: prepared.chunks[round]! }))
      const batches: Segment[][] = []
      let open: Segment[] = []
      let size = 0
      for (const segment of segments) {
        const length = 1 + segment.chunk.keys.length
        if (size + length > MAX_BATCH && open.length > 0) {
          batches.push(open)
          open = []
          size = 0
        }
        open.push(segment)
        size += length
      }
      if (open.length > 0) batches.push(open)
      await inParallel(batches, BATCHES_IN_FLIGHT, async (batch) => {
        try {
          await this.#send(batch, revisions)
        } catch (error) {
          if (batch.length > 1 && isFencing(error)) {
            // which key group was taken over? each alone, so the others still commit
            await inParallel(batch, BATCHES_IN_FLIGHT, async (segment) => {
              await this.#send([segment], revisions).catch((alone) => failed.set(segment.keyGroup, fencedOrRethrow(segment.keyGroup, alone)))
            })
          } else {
            for (const segment of batch) failed.set(segment.keyGroup, fencedOrRethrow(segment.keyGroup, error))
          }
        }
      })
    }
    return commits.map(({ prepared: { keyGroup } }) => {
      const error = failed.get(keyGroup)
      return error ? { keyGroup, error } : { keyGroup, revision: revisions.get(keyGroup)! }
    })
  }

  /** One atomic batch: every message but the last published without a reply, the last one the commit request. */
  async #send(segments: Segment[], revisions: Map<number, number>): Promise<void> {
    const messages: BatchMessage[] = []
    const checkpointAt: number[] = []
    for (const { keyGroup, chunk } of segments) {
      checkpointAt.push(messages.length)
      messages.push({ subject: this.#checkpointSubject(keyGroup), data: chunk.checkpoint, expectRevision: revisions.get(keyGroup) ?? 0 })
      for (const key of chunk.keys) messages.push(key)
    }
    const batchId = `Nats-Batch-Id: ${nuid.next()}\r\nNats-Batch-Sequence: `
    const headersOf = (message: BatchMessage, sequence: number, commit: boolean) => {
      let lines = `${batchId}${sequence}\r\n`
      if (message.expectRevision !== undefined) lines += `Nats-Expected-Last-Subject-Sequence: ${message.expectRevision}\r\n`
      if (message.deleted) lines += 'KV-Operation: DEL\r\n'
      if (commit) lines += 'Nats-Batch-Commit: 1\r\n'
      return new BatchHeaders(lines) as unknown as MsgHdrs
    }
    // no reply before the commit: a refused message makes the commit fail as an incomplete batch
    for (let i = 0; i < messages.length - 1; i++) this.#nc.publish(messages[i]!.subject, messages[i]!.data, { headers: headersOf(messages[i]!, i + 1, false) })
    const last = messages[messages.length - 1]!
    const reply = await this.#nc.request(last.subject, last.data, { headers: headersOf(last, messages.length, true), timeout: COMMIT_TIMEOUT_MS })
    const ack = reply.json<{ seq?: number; count?: number; error?: { code: number; err_code?: number; description: string } }>()
    if (ack.error) throw new CommitRefusedError(ack.error.description, ack.error.err_code)
    if (ack.count !== messages.length || ack.seq === undefined) throw new CommitRefusedError(`atomic batch stored ${ack.count} of ${messages.length} messages`)
    // a batch is stored at consecutive sequences
    const first = ack.seq - ack.count + 1
    segments.forEach(({ keyGroup }, index) => revisions.set(keyGroup, first + checkpointAt[index]!))
  }

  #keyMessage(group: KeyGroupState<unknown>, key: string): BatchMessage {
    const subject = this.#keySubject(group.keyGroup, key)
    const entry = group.keys.get(key)
    if (!entry) return { subject, data: new Uint8Array(0), deleted: true }
    const stored: StoredKey = { s: entry.state, a: entry.applied, t: entry.lastTime, p: entry.project, o: entry.source }
    if (entry.wakeAt !== undefined) stored.w = entry.wakeAt
    return { subject, data: encode(stored) }
  }
}

interface Segment {
  keyGroup: number
  chunk: Chunk
}

/** JetStream refused an atomic batch (its description and JetStream error code). */
class CommitRefusedError extends Error {
  readonly errorCode: number | undefined
  constructor(description: string, errorCode?: number) {
    super(description)
    this.errorCode = errorCode
  }
}

/** Runs `work` over `items`, at most `limit` at a time. */
async function inParallel<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await work(items[next++]!)
  }))
}

/** A checkpoint's revision moved on: another owner wrote it. */
function isFencing(error: unknown): boolean {
  const text = String((error as Error)?.message ?? error)
  return /wrong last sequence|last sequence mismatch|last sequence by subject mismatch/i.test(text) || (error as { errorCode?: number }).errorCode === 10071
}

function fencedOrRethrow(keyGroup: number, error: unknown): Error {
  if (isFencing(error)) return new FencedError(keyGroup, String((error as Error)?.message ?? error))
  return error as Error
}
