import { endianness } from 'node:os'
import { fnv1a32 } from '../../topology/subjects.ts'

const DAY = 86_400_000
/** Bytes an id takes: three little-endian signed 32-bit words (hash high 20 bits, hash low 32 bits, day number). */
const ENTRY_BYTES = 12
const ENTRY_WORDS = 3

/**
 * Message ids a key has processed recently, to drop a message re-sent after the stream's
 * duplicate window (a tracker queue flushed hours later). Each id is kept as a 52-bit hash with
 * the day (event time) it was seen, 12 bytes in one byte array (msgpack `bin`): the same 12
 * bytes in memory and in a checkpoint, one object per key whatever its count, and nothing for
 * the garbage collector to walk. Ids are appended in place (the state is the operator's:
 * docs/operators.md, "State"). The chance of two of one key's ids colliding is below 1e-9 at
 * the cap.
 *
 * (Two arrays of numbers before: msgpackr's encoder, reading them in optimised code beside
 * arrays of other kinds, turned them into arrays of boxed numbers, about 40 bytes an id in memory.)
 */
export interface SeenIds {
  /** `ids.length / 12` entries in the order recorded (see ENTRY_BYTES). */
  ids: Uint8Array
}

/** A checkpoint written before the ids were packed: two arrays, read once and packed. */
interface SeenIdsV1 {
  hashes: number[]
  days: number[]
}

export interface DedupOptions {
  /** Ids are remembered this long in event time after the key's newest event. Default 7 days. */
  horizonMs: number
  /** At most this many ids per key; beyond it the oldest are forgotten first. Default 2,000. */
  maxIds: number
}

export const DEDUP_DEFAULTS: DedupOptions = { horizonMs: 7 * DAY, maxIds: 2_000 }

// entries are read as native 32-bit words: the bytes are little-endian on every platform Node runs on here
if (endianness() !== 'LE') throw new Error('enrich keeps message id hashes as little-endian words: this platform is big-endian')

/** Buffers this module allocated, with room to grow: a decoded array (in a buffer of msgpack's) is copied into one of these before it is read or written. */
const owned = new WeakSet<ArrayBuffer>()

export const emptySeen = (): SeenIds => ({ ids: allocate(0, 0) })

export function idHash(messageId: string): number {
  return (fnv1a32(messageId) & 0xfffff) * 2 ** 32 + fnv1a32(`${messageId}\u0000`)
}

/** `seen` with its ids in a buffer of this module's: an older checkpoint's arrays packed into a new object, a decoded view copied. */
function normalized(seen: SeenIds | SeenIdsV1): SeenIds {
  if (!('ids' in seen)) {
    const { hashes, days } = seen
    const ids = allocate(hashes.length * ENTRY_BYTES, hashes.length * ENTRY_BYTES)
    const words = wordsOf(ids)
    hashes.forEach((hash, index) => {
      words[index * ENTRY_WORDS] = Math.floor(hash / 2 ** 32)
      words[index * ENTRY_WORDS + 1] = hash | 0
      words[index * ENTRY_WORDS + 2] = days[index]!
    })
    return { ids }
  }
  const ids = seen.ids
  if (ids.byteOffset !== 0 || !owned.has(ids.buffer as ArrayBuffer)) {
    const copy = allocate(ids.length, ids.length)
    copy.set(ids)
    seen.ids = copy
  }
  return seen
}

/** The words of a normalized array's whole buffer (its entries are the first `ids.length / 12`). */
const wordsOf = (ids: Uint8Array) => new Int32Array(ids.buffer)

/** A view of `length` bytes over a new buffer of at least `capacity`. */
function allocate(length: number, capacity: number): Uint8Array {
  const buffer = new ArrayBuffer(Math.max(capacity, ENTRY_BYTES * 4))
  owned.add(buffer)
  return new Uint8Array(buffer, 0, length)
}

/** How many ids are remembered. */
export function seenCount(seen: SeenIds): number {
  return normalized(seen).ids.length / ENTRY_BYTES
}

/** The position of an id among the first `count` entries, or -1. */
function indexOf(words: Int32Array, count: number, high: number, low: number): number {
  const end = count * ENTRY_WORDS
  for (let at = 0; at < end; at += ENTRY_WORDS) if (words[at + 1] === low && words[at] === high) return at / ENTRY_WORDS
  return -1
}

export function hasSeen(seen: SeenIds, messageId: string): boolean {
  const hash = idHash(messageId)
  const { ids } = normalized(seen)
  return indexOf(wordsOf(ids), ids.length / ENTRY_BYTES, Math.floor(hash / 2 ** 32), hash | 0) >= 0
}

/**
 * Records a message id in `given`, in place, and returns it (a new object only for a state from
 * a checkpoint of the older format); returns undefined when the id was seen already (a late
 * duplicate), the ids the same. Appending costs the same at any
 * count (the array has room to grow, doubled when full).
 */
export function markSeen(given: SeenIds, messageId: string, eventTime: number, newest: number, options: DedupOptions): SeenIds | undefined {
  const hash = idHash(messageId)
  const high = Math.floor(hash / 2 ** 32)
  const low = hash | 0
  const seen = normalized(given)
  let ids = seen.ids
  if (indexOf(wordsOf(ids), ids.length / ENTRY_BYTES, high, low) >= 0) return undefined
  const length = ids.length + ENTRY_BYTES
  if (length > ids.buffer.byteLength) {
    const grown = allocate(length, ids.buffer.byteLength * 2)
    grown.set(ids)
    ids = grown
  } else {
    ids = new Uint8Array(ids.buffer, 0, length)
  }
  const words = wordsOf(ids)
  const count = length / ENTRY_BYTES
  const at = (count - 1) * ENTRY_WORDS
  words[at] = high
  words[at + 1] = low
  words[at + 2] = Math.floor(eventTime / DAY)
  seen.ids = ids
  if (count > options.maxIds) seen.ids = pruned(words, count, newest, options)
  return seen
}

/** Forgets ids beyond the horizon, then the oldest, until a quarter of the room is free. */
function pruned(words: Int32Array, count: number, newest: number, options: DedupOptions): Uint8Array {
  const cutoff = Math.floor((newest - options.horizonMs) / DAY)
  const dayOf = (index: number) => words[index * ENTRY_WORDS + 2]!
  const order = Array.from({ length: count }, (_, index) => index).filter((index) => dayOf(index) >= cutoff).sort((a, b) => dayOf(b) - dayOf(a) || b - a)
  const keep = order.slice(0, Math.floor(options.maxIds * 0.75)).sort((a, b) => a - b)
  const ids = allocate(keep.length * ENTRY_BYTES, options.maxIds * ENTRY_BYTES + ENTRY_BYTES)
  const kept = wordsOf(ids)
  keep.forEach((index, position) => kept.set(words.subarray(index * ENTRY_WORDS, index * ENTRY_WORDS + ENTRY_WORDS), position * ENTRY_WORDS))
  return ids
}
