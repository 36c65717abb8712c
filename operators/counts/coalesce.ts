import type { Source } from '../../schemas/envelope.ts'
import type { Emission, StepResult } from '../runtime/operator.ts'

/** At most one publication per key group per this much event time, by default: a few a second in live traffic. */
export const DEFAULT_PUBLISH_EVERY_MS = 250

/** What the coalescing rule reads and keeps in a counter's state (one state per project and key group). */
export interface Coalesced {
  /** Changes applied. */
  version: number
  /** The version last published (0: none yet). */
  publishedVersion: number
  /** Per source, the key group's watermark when it last published: the next one waits `publishEveryMs` past it. */
  publishedAt: Partial<Record<Source, number>>
  /** Of the last change: what the publication carries. */
  source: Source
}

export interface Coalescer<State extends Coalesced> {
  /** After a change (the state's version already counts it): publish now, or hold it for the timer. */
  changed(state: State, watermark: number): StepResult<State>
  /** The timer: publishes what is held. */
  timer(state: State, now: number): StepResult<State>
  /** No change: the state as it is, with the timer of a publication still due. */
  unchanged(state: State): StepResult<State>
}

/**
 * The counters' publication rule (docs/live.md, "Coalescing"): a change publishes the absolute
 * counts at once when the key group's watermark (for the change's source) has moved at least
 * `publishEveryMs` of event time since the last publication; otherwise a timer publishes every
 * change held when the watermark gets there. Pure; `publication` builds the message of a state.
 */
export function coalescer<State extends Coalesced>(publishEveryMs: number, publication: (state: State) => Emission): Coalescer<State> {
  const every = Math.max(1, publishEveryMs)

  function publish(state: State, watermark: number, source: Source): StepResult<State> {
    // before the key group's first input its watermark is -Infinity: the next change then starts the interval
    const next: State = { ...state, publishedVersion: state.version, publishedAt: { ...state.publishedAt, [source]: watermark } }
    return { state: next, emit: [publication(next)] }
  }

  /** What every result carries: the timer of a publication still due (the runtime replaces a timer with each result). */
  function unchanged(state: State): StepResult<State> {
    const since = state.publishedAt[state.source]
    if (state.version === state.publishedVersion || since === undefined || !Number.isFinite(since)) return { state, emit: [] }
    return { state, emit: [], wakeAt: since + every }
  }

  return {
    changed(state, watermark) {
      const since = state.publishedAt[state.source]
      if (since === undefined || watermark >= since + every) {
        if (since !== Number.NEGATIVE_INFINITY || !Number.isFinite(watermark)) return publish(state, watermark, state.source)
        // published before the watermark was known: the interval starts now
        return unchanged({ ...state, publishedAt: { ...state.publishedAt, [state.source]: watermark } })
      }
      return unchanged(state)
    },
    timer(state, now) {
      if (state.version === state.publishedVersion) return { state, emit: [] }
      return publish(state, now, state.source)
    },
    unchanged,
  }
}
