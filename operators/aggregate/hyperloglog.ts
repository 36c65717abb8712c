/**
 * A small HyperLogLog over 52-bit user hashes (Flajolet et al. 2007) with Ertl's improved
 * estimator ("New cardinality estimation algorithms for HyperLogLog sketches", 2017), which needs
 * neither bias tables nor the switch to linear counting: one formula over the whole range.
 *
 * A sketch is its registers: one byte each, `2^precision` of them, as a plain Uint8Array (msgpack
 * bin), so it goes through state and messages as bytes. Relative standard error 1.04 / √m:
 * 1.63% at the default precision 12 (4 KiB). Sketches of one precision merge by register-wise
 * maximum, which is associative, commutative and idempotent: the merge of sketches is the sketch
 * of the union.
 */

/** Bits of a user hash (see userHash). */
export const HASH_BITS = 52
/** Default precision: 4,096 registers, 4 KiB, 1.63% standard error. */
export const DEFAULT_PRECISION = 12
export const MIN_PRECISION = 4
export const MAX_PRECISION = 18

const TWO_32 = 2 ** 32

function murmur3(key: string, seed: number): number {
  // MurmurHash3 x86_32 over UTF-16 code units, two per block: no encoding to bytes on the hot path
  let h = seed | 0
  const length = key.length
  let i = 0
  for (; i + 1 < length; i += 2) {
    let k = key.charCodeAt(i) | (key.charCodeAt(i + 1) << 16)
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, 0x1b873593)
    h ^= k
    h = (h << 13) | (h >>> 19)
    h = (Math.imul(h, 5) + 0xe6546b64) | 0
  }
  if (i < length) {
    let k = key.charCodeAt(i)
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, 0x1b873593)
    h ^= k
  }
  h ^= length * 2
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/**
 * A user id as a 52-bit integer (exact in a double, so it is a plain msgpack number): 20 bits of
 * one MurmurHash3 and 32 of another with a different seed. Two ids of a set of n collide with
 * probability about n² / 2⁵³ (1e-10 for 1,000 ids).
 */
export function userHash(id: string): number {
  return (murmur3(id, 0x9747b28c) >>> 12) * TWO_32 + murmur3(id, 0x5bd1e995)
}

export const registerCount = (precision: number) => 2 ** precision

/** The relative standard error of an estimate from sketches of this precision: 1.04 / √m. */
export const relativeStandardError = (precision: number) => 1.04 / Math.sqrt(registerCount(precision))

export function emptySketch(precision = DEFAULT_PRECISION): Uint8Array {
  if (!Number.isInteger(precision) || precision < MIN_PRECISION || precision > MAX_PRECISION) {
    throw new RangeError(`HyperLogLog precision ${precision}: expected an integer in ${MIN_PRECISION}..${MAX_PRECISION}`)
  }
  return new Uint8Array(registerCount(precision))
}

export const precisionOf = (sketch: Uint8Array) => Math.log2(sketch.length)

/** The register a hash falls in and the value it offers it (1 + leading zeros of the rest). */
function slotOf(hash: number, precision: number): { index: number; rank: number } {
  const high = Math.floor(hash / TWO_32) // 20 bits
  const low = hash >>> 0
  const highRestBits = 20 - precision
  const index = high >>> highRestBits
  const highRest = high & ((1 << highRestBits) - 1)
  let rank: number
  if (highRest !== 0) rank = Math.clz32(highRest) - (32 - highRestBits) + 1
  else if (low !== 0) rank = highRestBits + Math.clz32(low) + 1
  else rank = HASH_BITS - precision + 1
  return { index, rank }
}

/**
 * The sketch with one more hash. Pure: when a register rises the result is a copy, else the same
 * array (most additions to a large set change nothing, and then nothing is copied).
 */
export function addToSketch(sketch: Uint8Array, hash: number): Uint8Array {
  const { index, rank } = slotOf(hash, precisionOf(sketch))
  if (sketch[index]! >= rank) return sketch
  const copy = new Uint8Array(sketch)
  copy[index] = rank
  return copy
}

/** In place, for building a sketch that is not shared yet. */
export function addToSketchInPlace(sketch: Uint8Array, hash: number): void {
  const { index, rank } = slotOf(hash, precisionOf(sketch))
  if (sketch[index]! < rank) sketch[index] = rank
}

/** The sketch of the union. Both must have the same precision. */
export function mergeSketches(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length !== b.length) throw new RangeError(`cannot merge HyperLogLog sketches of ${a.length} and ${b.length} registers`)
  const merged = new Uint8Array(a.length)
  for (let i = 0; i < a.length; i++) merged[i] = Math.max(a[i]!, b[i]!)
  return merged
}

function sigma(x: number): number {
  if (x === 1) return Number.POSITIVE_INFINITY
  let y = 1
  let z = x
  for (;;) {
    x *= x
    const previous = z
    z += x * y
    y += y
    if (z === previous) return z
  }
}

function tau(x: number): number {
  if (x === 0 || x === 1) return 0
  let y = 1
  let z = 1 - x
  for (;;) {
    x = Math.sqrt(x)
    const previous = z
    y *= 0.5
    z -= (1 - x) ** 2 * y
    if (z === previous) return z / 3
  }
}

/** Ertl's improved raw estimator: unbiased from 0 to far beyond any user count. */
export function estimateSketch(sketch: Uint8Array): number {
  const m = sketch.length
  const q = HASH_BITS - precisionOf(sketch)
  const histogram = new Array<number>(q + 2).fill(0)
  for (let i = 0; i < m; i++) histogram[sketch[i]!]!++
  let z = m * tau(1 - histogram[q + 1]! / m)
  for (let k = q; k >= 1; k--) z = 0.5 * (z + histogram[k]!)
  z += m * sigma(histogram[0]! / m)
  return (m * m) / (2 * Math.LN2 * z)
}
