import { fnv1a32 } from '../../topology/subjects.ts'

/**
 * Message ids a key has processed recently, to drop a message re-sent after the
 * stream's duplicate window (a tracker queue flushed hours later). Ids are kept
 * as 52-bit hashes (about 11 characters each) with their event time: the
 * chance of two of one key's ids colliding is below 1e-9 at the cap.
 */
export interface SeenIds {
  /** hash (base 36) → event time, ms. */
  ids: Record<string, number>
  count: number
}

export interface DedupOptions {
  /** Ids are remembered this long in event time after the key's newest event. Default 7 days. */
  horizonMs: number
  /** At most this many ids per key; beyond it the oldest are forgotten first. Default 2,000. */
  maxIds: number
}

export const DEDUP_DEFAULTS: DedupOptions = { horizonMs: 7 * 86_400_000, maxIds: 2_000 }

export const emptySeen = (): SeenIds => ({ ids: {}, count: 0 })

export function idHash(messageId: string): string {
  const high = fnv1a32(messageId) & 0xfffff
  const low = fnv1a32(`${messageId}\u0000`)
  return (high * 2 ** 32 + low).toString(36)
}

/**
 * Records a message id; returns whether it had been seen (then nothing changes).
 * Mutates `seen`, which the caller owns (a fresh copy per key state).
 */
export function markSeen(seen: SeenIds, messageId: string, eventTime: number, newest: number, options: DedupOptions): boolean {
  const hash = idHash(messageId)
  if (seen.ids[hash] !== undefined) return true
  seen.ids[hash] = eventTime
  seen.count++
  if (seen.count > options.maxIds) prune(seen, newest, options)
  return false
}

/** Forgets ids older than the horizon, then the oldest until a quarter of the room is free. */
function prune(seen: SeenIds, newest: number, options: DedupOptions) {
  const cutoff = newest - options.horizonMs
  let entries = Object.entries(seen.ids).filter(([, time]) => time >= cutoff)
  const keep = Math.floor(options.maxIds * 0.75)
  if (entries.length > keep) entries = entries.sort((a, b) => b[1] - a[1]).slice(0, keep)
  seen.ids = Object.fromEntries(entries)
  seen.count = entries.length
}
