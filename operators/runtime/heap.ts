/**
 * A binary min-heap of (at, key) pairs, ordered by `at` then by key, so that timers due at the
 * same time fire in the same order in every run and every replay (their outputs' ids count
 * them). Stale entries are skipped by the caller. The pairs live in two parallel arrays (the
 * times unboxed), not as an object each: a key group can hold a timer for each of 100,000 keys,
 * and sifting then walks memory, not pointers.
 */
export class TimerHeap {
  #at: number[] = []
  #key: string[] = []
  /** Per key scheduled with {@link schedule}, the earliest `at` it has in the heap. */
  #earliest = new Map<string, number>()

  get size(): number {
    return this.#at.length
  }

  /**
   * Schedules `key` at `at`, keeping at most one entry per key: if the key already has one at
   * or before `at`, nothing is added, and the caller schedules the later time again when that
   * entry comes out (a key's timer moves later at each of its inputs; one entry per input would
   * hold every input of the last gap in memory).
   */
  schedule(at: number, key: string): void {
    const earliest = this.#earliest.get(key)
    if (earliest !== undefined && earliest <= at) return
    this.#earliest.set(key, at)
    this.push(at, key)
  }

  push(at: number, key: string): void {
    const ats = this.#at
    const keys = this.#key
    let i = ats.length
    ats.push(at)
    keys.push(key)
    // sift up: parents after (at, key) move down one level, then (at, key) goes in the hole
    while (i > 0) {
      const parent = (i - 1) >> 1
      const parentAt = ats[parent]!
      if (parentAt < at || (parentAt === at && keys[parent]! <= key)) break
      ats[i] = parentAt
      keys[i] = keys[parent]!
      i = parent
    }
    ats[i] = at
    keys[i] = key
  }

  /** The earliest time in the heap, if any. */
  peekAt(): number | undefined {
    return this.#at[0]
  }

  pop(): { at: number; key: string } | undefined {
    const ats = this.#at
    const keys = this.#key
    if (ats.length === 0) return undefined
    const top = { at: ats[0]!, key: keys[0]! }
    const lastAt = ats.pop()!
    const lastKey = keys.pop()!
    const size = ats.length
    if (size > 0) {
      // sift down: the smaller child moves up one level while it comes before the last entry
      let i = 0
      for (;;) {
        const left = 2 * i + 1
        if (left >= size) break
        let child = left
        const right = left + 1
        if (right < size && (ats[right]! < ats[left]! || (ats[right] === ats[left] && keys[right]! < keys[left]!))) child = right
        const childAt = ats[child]!
        if (lastAt < childAt || (lastAt === childAt && lastKey <= keys[child]!)) break
        ats[i] = childAt
        keys[i] = keys[child]!
        i = child
      }
      ats[i] = lastAt
      keys[i] = lastKey
    }
    if (this.#earliest.get(top.key) === top.at) this.#earliest.delete(top.key)
    return top
  }
}
