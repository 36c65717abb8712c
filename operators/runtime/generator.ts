import type { SegmentMessage } from '../../schemas/segment.ts'

/** mulberry32: a tiny, fast, seedable PRNG. Same seed, same sequence, on every machine. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export interface GeneratorOptions {
  seed: number
  users: number
  events: number
  /** Event time of the first event, ms. Default 2019-05-01T00:00:00Z. */
  start?: number
  /** Mean gap between consecutive events (all users), ms. Default 1000. */
  meanGapMs?: number
  /** Event names drawn uniformly. */
  names?: readonly string[]
  /** Prefix of message ids, so runs do not collide. Default 'gen'. */
  idPrefix?: string
}

/**
 * Deterministic Segment track events: users drawn at random, event times
 * increasing with exponential gaps, names drawn from a list. The realistic
 * simulator builds on this; tests and benchmarks use it as is.
 */
export function* generateEvents(options: GeneratorOptions): Generator<SegmentMessage> {
  const random = seededRandom(options.seed)
  const names = options.names ?? ['page_view', 'click_event1', 'custom_event2']
  const meanGap = options.meanGapMs ?? 1000
  let time = options.start ?? Date.parse('2019-05-01T00:00:00Z')
  const prefix = options.idPrefix ?? 'gen'
  for (let i = 0; i < options.events; i++) {
    time += Math.round(-Math.log(1 - random()) * meanGap)
    const user = Math.floor(random() * options.users)
    const at = new Date(time).toISOString()
    yield {
      type: 'track',
      messageId: `${prefix}-${options.seed}-${i}`,
      anonymousId: `user-${user}`,
      event: names[Math.floor(random() * names.length)]!,
      properties: { i },
      timestamp: at,
      receivedAt: at,
    }
  }
}
