/** A binary min-heap of (at, key) pairs; stale entries are skipped by the caller. */
export class TimerHeap {
  #items: { at: number; key: string }[] = []

  get size(): number {
    return this.#items.length
  }

  push(at: number, key: string): void {
    const items = this.#items
    items.push({ at, key })
    let i = items.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (items[parent]!.at <= items[i]!.at) break
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
        if (left < items.length && items[left]!.at < items[smallest]!.at) smallest = left
        if (right < items.length && items[right]!.at < items[smallest]!.at) smallest = right
        if (smallest === i) break
        ;[items[smallest], items[i]] = [items[i]!, items[smallest]!]
        i = smallest
      }
    }
    return top
  }
}
