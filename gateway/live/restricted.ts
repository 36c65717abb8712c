import type { Logger } from '../../config/logger.ts'
import type { AllUsersCounts, FunnelResult } from '../../store/funnels.ts'
import type { FunnelSums, LiveSums } from './book.ts'
import { restrictedFunnelView, type LiveFunnel, type LiveFunnelView } from './funnels.ts'

/**
 * The live view of funnels with a segment restriction (docs/live.md, "Restricted funnels").
 *
 * The restriction is on profile dimensions the funnel step does not read, so its counts are of
 * all users. The restricted numbers come from the `/result` query (SQL over `funnel_progress`
 * joined with `profiles`), run again whenever the live counts of all the funnel's users change:
 * - **coalesced** per funnel: one query in flight, at most one per `minIntervalMs`, and after a
 *   query a pause at least as long as it took (a funnel keeps the database busy half the time at
 *   most, over millions of users too); a change while one runs makes one more run after it (the
 *   latest change wins);
 * - **freshness**: the same statement counts all the funnel's users in `funnel_progress`; when
 *   that differs from the live counts (sink-funnels writes a little after funnel-counts
 *   publishes), the query runs again after `retryDelayMs`, at most `maxRetries` times in a row;
 * - **profiles move too** (a user's acquisition or engagement, a saved segment's members): the
 *   query runs again when the live size of the funnel's saved segment changes, and every
 *   `refreshMs` while the funnel is watched or was asked for in the last `keepMs`.
 * Funnels nobody watched or asked for in `keepMs` are forgotten.
 */
export interface RestrictedFunnelsOptions {
  /** Runs the /result query with the counts of all users (store's `funnelResultWithAllUsers`). */
  compute: (project: string, funnelId: string) => Promise<FunnelResult & { allUsers: AllUsersCounts }>
  /** The live counts of all users of a funnel version (the book's `funnelSums`). */
  liveSums: (project: string, funnel: LiveFunnel) => FunnelSums
  logger: Pick<Logger, 'warn'>
  /** Least time between two queries of one funnel, ms. Default 250 (at most 4 a second). */
  minIntervalMs?: number
  /** Wait before querying again when the SQL is behind the live counts, ms. Default 500. */
  retryDelayMs?: number
  /** Queries in a row while the SQL stays behind. Default 10 (5 s with the default delay). */
  maxRetries?: number
  /** Query again this often while watched or recently asked for, ms. Default 10,000. */
  refreshMs?: number
  /** How long a funnel asked for by GET /v1/live/counts is kept current, ms. Default 60,000. */
  keepMs?: number
}

type Listener = () => void

interface Entry {
  project: string
  funnel: LiveFunnel
  view: LiveFunnelView | undefined
  /** The first computation (and the one after a change of definition), for those who wait for a value. */
  ready: Promise<void>
  settleReady: () => void
  running: boolean
  again: boolean
  due: ReturnType<typeof setTimeout> | undefined
  lastRunAt: number
  /** When the last query ended and how long it took: the next waits at least as long. */
  lastEndAt: number
  lastTookMs: number
  retries: number
  /** The live counts (of all users) the last run was triggered by, as a comparable key. */
  liveKey: string
  segmentSize: number | undefined
  listeners: Set<Listener>
  askedAt: number
}

const keyOf = (project: string, funnelId: string) => `${project}\u0000${funnelId}`
const countsKey = (counts: Pick<AllUsersCounts, 'reached' | 'inProgress' | 'dropped'>) => JSON.stringify([counts.reached, counts.inProgress, counts.dropped])
const segmentIdOf = (funnel: LiveFunnel) => (funnel.definition.segment && 'segmentId' in funnel.definition.segment ? funnel.definition.segment.segmentId : undefined)

export class RestrictedFunnels {
  readonly #options: Required<Omit<RestrictedFunnelsOptions, 'compute' | 'liveSums' | 'logger'>> & Pick<RestrictedFunnelsOptions, 'compute' | 'liveSums' | 'logger'>
  readonly #entries = new Map<string, Entry>()
  readonly #refresh: ReturnType<typeof setInterval>
  /** Queries run so far (for tests and metrics). */
  queries = 0

  constructor(options: RestrictedFunnelsOptions) {
    this.#options = { minIntervalMs: 250, retryDelayMs: 500, maxRetries: 10, refreshMs: 10_000, keepMs: 60_000, ...options }
    this.#refresh = setInterval(() => this.#refreshAll(), this.#options.refreshMs)
    this.#refresh.unref()
  }

  /** Whether a funnel's live view is computed here (it has a segment restriction). */
  static applies(funnel: LiveFunnel): boolean {
    return funnel.definition.segment !== undefined
  }

  /**
   * Follows a restricted funnel for a WebSocket: `changed` is called whenever its view changes.
   * `ready` resolves once a view is there (the first query, when none was). Returns the unwatch.
   */
  watch(project: string, funnel: LiveFunnel, changed: Listener): { ready: Promise<void>; stop: () => void } {
    const entry = this.#entry(project, funnel)
    entry.listeners.add(changed)
    return { ready: entry.ready, stop: () => entry.listeners.delete(changed) }
  }

  /** The view now (GET /v1/live/counts): the last computed one, or the first query's when there is none yet. */
  async current(project: string, funnel: LiveFunnel): Promise<LiveFunnelView | undefined> {
    const entry = this.#entry(project, funnel)
    entry.askedAt = Date.now()
    await entry.ready
    return entry.view
  }

  /** The last computed view, if any. */
  view(project: string, funnelId: string): LiveFunnelView | undefined {
    return this.#entries.get(keyOf(project, funnelId))?.view
  }

  /** The project's live counts changed (the feed's listener): query again the funnels whose live counts of all users or saved segment size moved. */
  liveChanged(project: string, sums: LiveSums): void {
    for (const entry of this.#entries.values()) {
      if (entry.project !== project) continue
      const segmentId = segmentIdOf(entry.funnel)
      const segmentSize = segmentId === undefined ? undefined : sums.segments[segmentId] ?? 0
      const liveKey = countsKey(this.#options.liveSums(project, entry.funnel))
      if (liveKey === entry.liveKey && segmentSize === entry.segmentSize) continue
      entry.liveKey = liveKey
      entry.segmentSize = segmentSize
      entry.retries = 0
      this.#schedule(entry)
    }
  }

  stop(): void {
    clearInterval(this.#refresh)
    for (const entry of this.#entries.values()) clearTimeout(entry.due)
    this.#entries.clear()
  }

  #entry(project: string, funnel: LiveFunnel): Entry {
    const key = keyOf(project, funnel.id)
    let entry = this.#entries.get(key)
    if (entry && entry.funnel.version === funnel.version && JSON.stringify(entry.funnel.definition) === JSON.stringify(funnel.definition)) return entry
    if (entry) {
      // the funnel changed (a new version, or its segment in place): its view is no longer its own
      entry.funnel = funnel
      entry.view = undefined
      entry.ready = new Promise((resolve) => (entry!.settleReady = resolve))
      entry.retries = 0
      this.#schedule(entry)
      return entry
    }
    let settleReady!: () => void
    const ready = new Promise<void>((resolve) => (settleReady = resolve))
    entry = {
      project, funnel, view: undefined, ready, settleReady, running: false, again: false, due: undefined, lastRunAt: Number.NEGATIVE_INFINITY, lastEndAt: 0, lastTookMs: 0,
      retries: 0, liveKey: '', segmentSize: undefined, listeners: new Set(), askedAt: Date.now(),
    }
    this.#entries.set(key, entry)
    this.#schedule(entry)
    return entry
  }

  #schedule(entry: Entry, delayMs = 0): void {
    if (entry.running) {
      entry.again = true
      return
    }
    if (entry.due !== undefined) return // a run is due: it will see this change too
    const now = Date.now()
    const wait = Math.max(delayMs, entry.lastRunAt + this.#options.minIntervalMs - now, entry.lastEndAt + entry.lastTookMs - now, 0)
    entry.due = setTimeout(() => {
      entry.due = undefined
      void this.#run(entry)
    }, wait)
  }

  async #run(entry: Entry): Promise<void> {
    if (this.#entries.get(keyOf(entry.project, entry.funnel.id)) !== entry) return
    entry.running = true
    entry.again = false
    entry.lastRunAt = Date.now()
    const funnel = entry.funnel
    let behind = false
    try {
      this.queries++
      const result = await this.#options.compute(entry.project, funnel.id)
      // a funnel changed while the query ran is answered by the run after it (scheduled by the change)
      if (entry.funnel === funnel) {
        const live = this.#options.liveSums(entry.project, funnel)
        // only the same version compares; another one means the funnel changed under the watch
        behind = result.funnel.version === funnel.version && countsKey(result.allUsers) !== countsKey(live)
        const view = restrictedFunnelView(funnel, result, live)
        const changed = entry.view === undefined || JSON.stringify(entry.view) !== JSON.stringify(view)
        entry.view = view
        entry.settleReady()
        if (changed) for (const listener of entry.listeners) listener()
      }
    } catch (error) {
      this.#options.logger.warn({ err: error, project: entry.project, funnel: funnel.id }, 'live: the restricted counts of a funnel could not be computed; the last ones stay')
      if (entry.funnel === funnel) entry.settleReady()
    } finally {
      entry.running = false
      entry.lastEndAt = Date.now()
      entry.lastTookMs = entry.lastEndAt - entry.lastRunAt
    }
    if (entry.again) this.#schedule(entry)
    else if (behind && entry.retries < this.#options.maxRetries) {
      entry.retries++
      this.#schedule(entry, this.#options.retryDelayMs)
    }
  }

  #refreshAll(): void {
    const now = Date.now()
    for (const [key, entry] of this.#entries) {
      const wanted = entry.listeners.size > 0 || now - entry.askedAt < this.#options.keepMs
      if (wanted) this.#schedule(entry)
      else if (!entry.running) {
        clearTimeout(entry.due)
        this.#entries.delete(key)
      }
    }
  }
}
