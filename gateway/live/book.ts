import type { Counts, LiveCounts } from '../../schemas/counts.ts'

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

/**
 * The latest counts per (project, key group) and their sums: what the gateway serves live
 * (docs/live.md). Each key group's counts are absolute and versioned, so a message is kept only
 * when its version is above the one held: a redelivery or a replay's republication (the same
 * version) changes nothing, an older one arriving late cannot undo a newer one. Pure.
 */
export class LiveCountsBook {
  readonly #projects = new Map<string, Map<number, LiveCounts>>()

  /** Takes one key group's publication; true when it changed what is held. */
  apply(project: string, counts: LiveCounts): boolean {
    let groups = this.#projects.get(project)
    if (!groups) this.#projects.set(project, (groups = new Map()))
    const held = groups.get(counts.keyGroup)
    if (held && held.version >= counts.version) return false
    groups.set(counts.keyGroup, counts)
    return true
  }

  /** The project's counts summed over every key group (zeros when none has published). */
  sums(project: string): LiveSums {
    const engagement = Object.fromEntries(LEVELS.map((level) => [level, 0])) as LiveSums['engagement']
    const segments: Record<string, number> = {}
    let asOf: number | null = null
    const groups = this.#projects.get(project)
    for (const { counts, asOf: groupAsOf, version } of groups?.values() ?? []) {
      addInto(engagement, counts.engagement)
      addInto(segments, counts.segments)
      if (version > 0) asOf = asOf === null ? groupAsOf : Math.max(asOf, groupAsOf)
    }
    for (const [id, count] of Object.entries(segments)) if (count === 0) delete segments[id]
    return { engagement, segments, asOf, keyGroups: groups?.size ?? 0 }
  }
}

function addInto(into: Record<string, number>, from: Counts[keyof Counts]) {
  for (const [name, count] of Object.entries(from)) into[name] = (Object.hasOwn(into, name) ? into[name]! : 0) + count
}
