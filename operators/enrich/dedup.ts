import { fnv1a32 } from '../../topology/subjects.ts'

const DAY = 86_400_000

/**
 * Message ids a key has processed recently, to drop a message re-sent after the
 * stream's duplicate window (a tracker queue flushed hours later). Ids are kept
 * as 52-bit hashes with the day (event time) they were seen, in two parallel
 * arrays of numbers: about 12 bytes an id in msgpack and 16 in memory (the
 * hashes unboxed), appended to in place. The chance of two of one key's ids
 * colliding is below 1e-9 at the cap.
 */
export interface SeenIds {
  hashes: number[]
  /** Day number (event time / 86,400,000) of each id. */
  days: number[]
}

export interface DedupOptions {
  /** Ids are remembered this long in event time after the key's newest event. Default 7 days. */
  horizonMs: number
  /** At most this many ids per key; beyond it the oldest are forgotten first. Default 2,000. */
  maxIds: number
}

export const DEDUP_DEFAULTS: DedupOptions = { horizonMs: 7 * DAY, maxIds: 2_000 }

export const emptySeen = (): SeenIds => ({ hashes: [], days: [] })

export function idHash(messageId: string): number {
  return (fnv1a32(messageId) & 0xfffff) * 2 ** 32 + fnv1a32(`${messageId}\u0000`)
}

export function hasSeen(seen: SeenIds, messageId: string): boolean {
  return seen.hashes.includes(idHash(messageId))
}

/**
 * Records a message id in `seen`, in place (the state is the operator's: docs/operators.md,
 * "State"), and returns it; returns undefined, `seen` unchanged, when the id was seen already (a
 * late duplicate). Appending in place keeps a key's cost per message flat: a copy would grow
 * with the ids kept (up to `maxIds`).
 */
export function markSeen(seen: SeenIds, messageId: string, eventTime: number, newest: number, options: DedupOptions): SeenIds | undefined {
  const hash = idHash(messageId)
  if (seen.hashes.includes(hash)) return undefined
  seen.hashes.push(hash)
  seen.days.push(Math.floor(eventTime / DAY))
  if (seen.hashes.length > options.maxIds) {
    // forget ids beyond the horizon, then the oldest, until a quarter of the room is free
    const { hashes, days } = seen
    const cutoff = Math.floor((newest - options.horizonMs) / DAY)
    const order = hashes.map((_, i) => i).filter((i) => days[i]! >= cutoff).sort((a, b) => days[b]! - days[a]! || b - a)
    const keep = order.slice(0, Math.floor(options.maxIds * 0.75)).sort((a, b) => a - b)
    seen.hashes = keep.map((i) => hashes[i]!)
    seen.days = keep.map((i) => days[i]!)
  }
  return seen
}
