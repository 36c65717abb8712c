/**
 * A binary min-heap of (at, key) pairs, ordered by `at` then by key, so that timers due at the
 * same time fire in the same order in every run and every replay (their outputs' ids count
 * them). Stale entries are skipped by the caller.
 */
export class TimerHeap {
  #items: { at: number; key: string }[] = []
  /** Per key scheduled with {@link schedule}, the earliest `at` it has in the heap. */
  #earliest = new Map<string, number>()

  get size(): number {
    return this.#items.length
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
    const items = this.#items
    items.push({ at, key })
    let i = items.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!before(items[i]!, items[parent]!)) break
      ;[items[parent], items[i]] = [items[i]!, items[parent]!]
      i = parent
    }
  }

  peek(): { at: number; key: string } | undefined {
    return this.#items[0]
  }

  pop(): { at: number; key: string } | undefined {
    const items = this.#items
    const top = items[0]
    const last = items.pop()
    if (items.length > 0 && last) {
      items[0] = last
      let i = 0
      for (;;) {
        const left = 2 * i + 1
        const right = left + 1
        let smallest = i
        if (left < items.length && before(items[left]!, items[smallest]!)) smallest = left
        if (right < items.length && before(items[right]!, items[smallest]!)) smallest = right
        if (smallest === i) break
        ;[items[smallest], items[i]] = [items[i]!, items[smallest]!]
        i = smallest
      }
    }
    if (top && this.#earliest.get(top.key) === top.at) this.#earliest.delete(top.key)
    return top
  }
}

const before = (a: { at: number; key: string }, b: { at: number; key: string }) => a.at < b.at || (a.at === b.at && a.key < b.key)
