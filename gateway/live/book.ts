import type { Counts, LiveCounts, LiveFunnelCounts } from '../../schemas/counts.ts'
import { DURATION_BUCKETS_MS } from '../../schemas/funnel.ts'

/** Engagement levels, lowest first: every sum has all four. */
export const LEVELS = ['Low', 'Medium', 'Medium-High', 'High'] as const

/** A project's counts summed over its key groups. */
export interface LiveSums {
  /** Users per engagement level, all four levels present. */
  engagement: Record<(typeof LEVELS)[number], number>
  /** Users per saved segment id, for the segments with anyone counted. */
  segments: Record<string, number>
  /** Event time (ms) of the newest change counted in any key group; null before any. */
  asOf: number | null
  /** Key groups that have published counts for the project. */
  keyGroups: number
}

/** One funnel version's step counts summed over the key groups that have counted it. */
export interface FunnelSums {
  /** Per step: users who reached it, and who are at exactly that level in progress / dropped. */
  reached: number[]
  inProgress: number[]
  dropped: number[]
  /** Per pair of consecutive steps, users per time-to-convert bucket (DURATION_BUCKETS_MS, then the open bucket). */
  conversionTimes: number[][]
  /** Event time (ms) of the newest progress counted in any key group; null before any. */
  asOf: number | null
  /** Key groups that have published funnel counts for the project. */
  keyGroups: number
}

/**
 * Per (project, key group), the publication with the highest version: what a replay's
 * republication (the same version) or a late older one cannot change.
 */
class LatestPerKeyGroup<Published extends { keyGroup: number; version: number }> {
  readonly #projects = new Map<string, Map<number, Published>>()

  /** True when it replaced what was held. */
  apply(project: string, published: Published): boolean {
    let groups = this.#projects.get(project)
    if (!groups) this.#projects.set(project, (groups = new Map()))
    const held = groups.get(published.keyGroup)
    if (held && held.version >= published.version) return false
    groups.set(published.keyGroup, published)
    return true
  }

  /** The project's held publications, one per key group that has published. */
  of(project: string): Published[] {
    return [...(this.#projects.get(project)?.values() ?? [])]
  }
}

/**
 * The latest counts per (project, key group) and their sums: what the gateway serves live
 * (docs/live.md). Each key group's counts are absolute and versioned, so a message is kept only
 * when its version is above the one held: a redelivery or a replay's republication (the same
 * version) changes nothing, an older one arriving late cannot undo a newer one. Segment counts
 * (`live_counts`) and funnel step counts (`live_funnel_counts`) are versioned apart. Pure.
 */
export class LiveCountsBook {
  readonly #counts = new LatestPerKeyGroup<LiveCounts>()
  readonly #funnels = new LatestPerKeyGroup<LiveFunnelCounts>()

  /** Takes one key group's publication; true when it changed what is held. */
  apply(project: string, counts: LiveCounts): boolean {
    return this.#counts.apply(project, counts)
  }

  /** Takes one key group's funnel step counts; true when it changed what is held. */
  applyFunnels(project: string, counts: LiveFunnelCounts): boolean {
    return this.#funnels.apply(project, counts)
  }

  /** The project's counts summed over every key group (zeros when none has published). */
  sums(project: string): LiveSums {
    const engagement = Object.fromEntries(LEVELS.map((level) => [level, 0])) as LiveSums['engagement']
    const segments: Record<string, number> = {}
    let asOf: number | null = null
    const groups = this.#counts.of(project)
    for (const { counts, asOf: groupAsOf, version } of groups) {
      addInto(engagement, counts.engagement)
      addInto(segments, counts.segments)
      if (version > 0) asOf = asOf === null ? groupAsOf : Math.max(asOf, groupAsOf)
    }
    for (const [id, count] of Object.entries(segments)) if (count === 0) delete segments[id]
    return { engagement, segments, asOf, keyGroups: groups.length }
  }

  /**
   * One funnel version's step counts summed over the key groups (zeros where none has counted it;
   * a key group holding another version of the funnel adds nothing).
   */
  funnelSums(project: string, funnelId: string, funnelVersion: number, steps: number): FunnelSums {
    const zeros = () => new Array<number>(steps).fill(0)
    const sums: FunnelSums = {
      reached: zeros(), inProgress: zeros(), dropped: zeros(),
      conversionTimes: Array.from({ length: steps - 1 }, () => new Array<number>(DURATION_BUCKETS_MS.length + 1).fill(0)),
      asOf: null, keyGroups: 0,
    }
    for (const group of this.#funnels.of(project)) {
      sums.keyGroups++
      const counts = group.funnels.find((entry) => entry.funnelId === funnelId && entry.funnelVersion === funnelVersion)
      if (!counts || counts.reached.length !== steps) continue
      addArray(sums.reached, counts.reached)
      addArray(sums.inProgress, counts.inProgress)
      addArray(sums.dropped, counts.dropped)
      counts.conversionTimes.forEach((buckets, pair) => addArray(sums.conversionTimes[pair]!, buckets))
      sums.asOf = sums.asOf === null ? group.asOf : Math.max(sums.asOf, group.asOf)
    }
    return sums
  }
}

function addArray(into: number[], from: readonly number[]) {
  for (let index = 0; index < into.length && index < from.length; index++) into[index]! += from[index]!
}

function addInto(into: Record<string, number>, from: Counts[keyof Counts]) {
  for (const [name, count] of Object.entries(from)) into[name] = (Object.hasOwn(into, name) ? into[name]! : 0) + count
}
