import { addToSketch, addToSketchInPlace, DEFAULT_PRECISION, emptySketch, estimateSketch, mergeSketches } from './hyperloglog.ts'

/**
 * Distinct users of one group: exact while small, a HyperLogLog sketch beyond. Plain data for
 * msgpack: either `ids`, the users' 52-bit hashes in ascending order, or `sketch`, the registers.
 *
 * Whether it is exact, and its value, depend only on the set of users added: up to `exactLimit`
 * users it is that set, beyond it the sketch of that set (a sketch never goes back). So adding in
 * any order, and merging in any grouping, give the same result.
 */
export type DistinctUsers = { ids: number[] } | { sketch: Uint8Array }

export interface DistinctOptions {
  /** Users counted exactly; past this many the set becomes a sketch. Default 512 (about 4.6 KB of msgpack, the size of the sketch). */
  exactLimit: number
  /** HyperLogLog precision: 2^precision one-byte registers. Default 12 (4 KiB, 1.63% standard error). */
  precision: number
}

export const DEFAULT_EXACT_LIMIT = 512

export const DISTINCT_DEFAULTS: DistinctOptions = { exactLimit: DEFAULT_EXACT_LIMIT, precision: DEFAULT_PRECISION }

export const noUsers = (): DistinctUsers => ({ ids: [] })

/** Index of `hash` in the ascending `ids`, or −(insertion point) − 1. */
function search(ids: readonly number[], hash: number): number {
  let low = 0
  let high = ids.length - 1
  while (low <= high) {
    const middle = (low + high) >>> 1
    const value = ids[middle]!
    if (value < hash) low = middle + 1
    else if (value > hash) high = middle - 1
    else return middle
  }
  return -low - 1
}

function sketchOf(ids: readonly number[], precision: number): Uint8Array {
  const sketch = emptySketch(precision)
  for (const id of ids) addToSketchInPlace(sketch, id)
  return sketch
}

/** With one more user (by userHash). Pure; returns the same object when the user was counted already. */
export function addUser(users: DistinctUsers, hash: number, options: DistinctOptions = DISTINCT_DEFAULTS): DistinctUsers {
  if ('sketch' in users) {
    const sketch = addToSketch(users.sketch, hash)
    return sketch === users.sketch ? users : { sketch }
  }
  const at = search(users.ids, hash)
  if (at >= 0) return users
  const insertion = -at - 1
  // one allocation: this runs for every new user of a group
  const ids = new Array<number>(users.ids.length + 1)
  for (let i = 0; i < insertion; i++) ids[i] = users.ids[i]!
  ids[insertion] = hash
  for (let i = insertion; i < users.ids.length; i++) ids[i + 1] = users.ids[i]!
  if (ids.length > options.exactLimit) return { sketch: sketchOf(ids, options.precision) }
  return { ids }
}

/** The distinct users of both (their union). Associative and commutative. */
export function mergeUsers(a: DistinctUsers, b: DistinctUsers, options: DistinctOptions = DISTINCT_DEFAULTS): DistinctUsers {
  if ('ids' in a && 'ids' in b) {
    const ids: number[] = []
    let i = 0
    let j = 0
    while (i < a.ids.length || j < b.ids.length) {
      const x = i < a.ids.length ? a.ids[i]! : Number.POSITIVE_INFINITY
      const y = j < b.ids.length ? b.ids[j]! : Number.POSITIVE_INFINITY
      if (x <= y) i++
      if (y <= x) j++
      ids.push(Math.min(x, y))
    }
    return ids.length > options.exactLimit ? { sketch: sketchOf(ids, options.precision) } : { ids }
  }
  const sketchA = 'sketch' in a ? a.sketch : sketchOf(a.ids, options.precision)
  const sketchB = 'sketch' in b ? b.sketch : sketchOf(b.ids, options.precision)
  return { sketch: mergeSketches(sketchA, sketchB) }
}

/** How many distinct users: exact, or the sketch's estimate rounded (at least 1 once anyone was added). */
export function countUsers(users: DistinctUsers): { value: number; exact: boolean } {
  if ('ids' in users) return { value: users.ids.length, exact: true }
  return { value: Math.max(1, Math.round(estimateSketch(users.sketch))), exact: false }
}
