/**
 * At most one push per `intervalMs`: a change right after a push is sent when the interval has
 * passed, together with every change in between (one timer at a time). The clock and the timer
 * are handed in, so the rule is tested without waiting.
 */
export class PushThrottle {
  readonly #intervalMs: number
  readonly #push: () => void
  readonly #now: () => number
  readonly #schedule: (run: () => void, ms: number) => { cancel(): void }
  #lastPushAt = Number.NEGATIVE_INFINITY
  #due: { cancel(): void } | undefined

  constructor(options: {
    intervalMs: number
    push: () => void
    now?: () => number
    schedule?: (run: () => void, ms: number) => { cancel(): void }
  }) {
    this.#intervalMs = options.intervalMs
    this.#push = options.push
    this.#now = options.now ?? Date.now
    this.#schedule = options.schedule ?? ((run, ms) => {
      const timer = setTimeout(run, ms)
      return { cancel: () => clearTimeout(timer) }
    })
  }

  /** Something changed: push now if the interval has passed, else once it has. */
  changed(): void {
    if (this.#due) return // a push is already due: it will carry this change too
    const wait = this.#lastPushAt + this.#intervalMs - this.#now()
    if (wait <= 0) return this.#fire()
    this.#due = this.#schedule(() => { this.#due = undefined; this.#fire() }, wait)
  }

  /** A push that happened outside the throttle (the answer to a watch): the interval starts again. */
  pushed(): void {
    this.#lastPushAt = this.#now()
  }

  stop(): void {
    this.#due?.cancel()
    this.#due = undefined
  }

  #fire() {
    this.#lastPushAt = this.#now()
    this.#push()
  }
}
