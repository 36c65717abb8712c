import assert from 'node:assert/strict'
import fc from 'fast-check'
import t from 'tap'
import { addUser, countUsers, DISTINCT_DEFAULTS, mergeUsers, noUsers, type DistinctOptions, type DistinctUsers } from '../../operators/aggregate/distinct.ts'
import {
  addToSketch, addToSketchInPlace, emptySketch, estimateSketch, mergeSketches, relativeStandardError, userHash, DEFAULT_PRECISION, HASH_BITS,
} from '../../operators/aggregate/hyperloglog.ts'
import { decode, encode } from '../../schemas/codec.ts'

const sigma = relativeStandardError(DEFAULT_PRECISION)

function sketchOfIds(ids: Iterable<string>, precision = DEFAULT_PRECISION): Uint8Array {
  const sketch = emptySketch(precision)
  for (const id of ids) addToSketchInPlace(sketch, userHash(id))
  return sketch
}

function* idsOf(prefix: string, n: number) {
  for (let i = 0; i < n; i++) yield `${prefix}-${i}`
}

t.test('userHash: a deterministic 52-bit integer, spread over the registers', async (t) => {
  t.equal(userHash('u1'), userHash('u1'))
  t.not(userHash('u1'), userHash('u2'))
  const buckets = new Array<number>(16).fill(0)
  for (const id of idsOf('user', 160_000)) {
    const hash = userHash(id)
    if (!Number.isSafeInteger(hash) || hash < 0 || hash >= 2 ** HASH_BITS) t.fail(`hash ${hash}`)
    buckets[Math.floor(hash / 2 ** (HASH_BITS - 4))]!++
  }
  // 10,000 expected per bucket, standard deviation 97
  t.ok(buckets.every((count) => Math.abs(count - 10_000) < 500), `top 4 bits uniform: ${buckets.join(' ')}`)
  // sequential ids differ in their last character only: the second half must still be independent of the first
  let equalLow = 0
  for (let i = 0; i < 10_000; i++) if (userHash(`a${i}`) % 16 === Math.floor(userHash(`a${i}`) / 2 ** 48)) equalLow++
  t.ok(Math.abs(equalLow - 625) < 120, `low and high bits independent (${equalLow} of 10,000 agree, 625 expected)`)
})

t.test(`HyperLogLog error within its documented bound: standard error 1.04/√m = ${(sigma * 100).toFixed(2)}% at precision ${DEFAULT_PRECISION}`, async (t) => {
  const figures: string[] = []
  for (const [n, trials] of [[1_000, 20], [10_000, 20], [100_000, 20]] as const) {
    let squares = 0
    let sum = 0
    let worst = 0
    for (let trial = 0; trial < trials; trial++) {
      const error = (estimateSketch(sketchOfIds(idsOf(`set${trial}`, n))) - n) / n
      squares += error * error
      sum += error
      worst = Math.max(worst, Math.abs(error))
    }
    const rms = Math.sqrt(squares / trials)
    figures.push(`n=${n}: rms ${(rms * 100).toFixed(2)}% (${(rms / sigma).toFixed(2)}σ), mean ${(sum / trials * 100).toFixed(2)}%, worst ${(worst * 100).toFixed(2)}%`)
    // every estimate within 3σ, the RMS near σ (20 trials: within 1.5σ), no bias beyond what 20 trials can show
    t.ok(worst <= 3 * sigma, `n=${n}: every estimate within 3σ = ${(3 * sigma * 100).toFixed(2)}% (worst ${(worst * 100).toFixed(2)}%)`)
    t.ok(rms <= 1.5 * sigma, `n=${n}: RMS error ${(rms * 100).toFixed(2)}% within 1.5σ`)
    t.ok(Math.abs(sum / trials) <= 3 * sigma / Math.sqrt(trials), `n=${n}: mean error ${(sum / trials * 100).toFixed(3)}% (no bias)`)
  }
  t.comment(figures.join('\n'))
})

t.test('small sets: the sketch is close to exact (linear-counting range), empty is 0', async (t) => {
  t.equal(estimateSketch(emptySketch()), 0)
  for (const n of [1, 2, 5, 10, 50]) {
    const estimate = estimateSketch(sketchOfIds(idsOf('small', n)))
    t.ok(Math.abs(estimate - n) < 0.5 + n * 0.02, `${n} ids: ${estimate.toFixed(2)}`)
  }
})

t.test('merging sketches is the sketch of the union; addToSketch copies only when a register rises', async (t) => {
  const a = sketchOfIds(idsOf('a', 3000))
  const b = sketchOfIds(idsOf('b', 2000))
  const union = sketchOfIds([...idsOf('a', 3000), ...idsOf('b', 2000)])
  t.same(Array.from(mergeSketches(a, b)), Array.from(union))
  t.same(Array.from(mergeSketches(a, a)), Array.from(a), 'idempotent')
  const before = Array.from(a)
  const same = addToSketch(a, userHash('a-7'))
  t.equal(same, a, 'an id already counted leaves the very same array')
  let grown = a
  for (const id of idsOf('c', 100)) grown = addToSketch(grown, userHash(id))
  t.not(grown, a)
  t.same(Array.from(a), before, 'the original is not changed')
  t.throws(() => mergeSketches(emptySketch(10), emptySketch(12)), /cannot merge/)
  t.throws(() => emptySketch(3), /precision/)
})

t.test('distinct users: exact up to the limit, a sketch beyond, through msgpack', async (t) => {
  const options: DistinctOptions = { exactLimit: 4, precision: 10 }
  let users = noUsers()
  for (const id of ['a', 'b', 'a', 'c', 'd']) users = addUser(users, userHash(id), options)
  t.same(countUsers(users), { value: 4, exact: true })
  const same = addUser(users, userHash('b'), options)
  t.equal(same, users, 'a user counted already changes nothing')
  users = addUser(users, userHash('e'), options)
  t.same(countUsers(users), { value: 5, exact: false }, 'past the limit: a sketch, whose estimate is 5 here')
  const roundTrip = decode(encode(users)) as DistinctUsers
  t.ok('sketch' in roundTrip && roundTrip.sketch instanceof Uint8Array && roundTrip.sketch.length === 1024, 'the sketch is msgpack bytes')
  t.same(countUsers(roundTrip), countUsers(users))
  const exact = decode(encode(addUser(noUsers(), userHash('someone'), options))) as DistinctUsers
  t.same(exact, { ids: [userHash('someone')] }, '52-bit hashes survive msgpack as numbers')
  const one = encode(addUser(noUsers(), userHash('x'))).length
  t.equal(encode(addUser(addUser(noUsers(), userHash('x')), userHash('y'))).length - one, 9, '9 bytes an id (a float64)')
  t.equal(encode({ sketch: emptySketch() }).length, 4096 + 13, 'the default sketch: 4 KiB and a few bytes')
})

// Partial aggregates as a sink or a combiner would merge them: the count sums, the users unite.
interface Partial {
  count: number
  users: DistinctUsers
}
const options: DistinctOptions = { exactLimit: 20, precision: 8 }
const mergePartials = (a: Partial, b: Partial): Partial => ({ count: a.count + b.count, users: mergeUsers(a.users, b.users, options) })
const partialOf = (ids: string[]): Partial => ({ count: ids.length, users: ids.reduce((users, id) => addUser(users, userHash(id), options), noUsers()) })
const plain = (partial: Partial) => ({ count: partial.count, users: 'ids' in partial.users ? { ids: partial.users.ids } : { sketch: Array.from(partial.users.sketch) } })
const ids = fc.array(fc.integer({ min: 0, max: 60 }).map((n) => `user-${n}`), { maxLength: 30 })

t.test('merging partial aggregates is associative and commutative, across the exact/sketch boundary', async (t) => {
  fc.assert(
    fc.property(ids, ids, ids, (x, y, z) => {
      const [a, b, c] = [partialOf(x), partialOf(y), partialOf(z)]
      const left = plain(mergePartials(mergePartials(a, b), c))
      const right = plain(mergePartials(a, mergePartials(b, c)))
      assert.deepEqual(left, right, 'associative')
      assert.deepEqual(plain(mergePartials(a, b)), plain(mergePartials(b, a)), 'commutative')
      // and it is the aggregate of everything at once, whatever the split
      assert.deepEqual(left.users, plain(partialOf([...x, ...y, ...z])).users, 'the union')
      return true
    }),
    { numRuns: 300 },
  )
  t.pass('300 random triples of partials')
})

t.test('exact while at most exactLimit distinct users, whatever the order of additions', async () => {
  fc.assert(
    fc.property(ids, (list) => {
      const distinct = new Set(list).size
      const counted = countUsers(partialOf(list).users)
      if (distinct <= options.exactLimit) assert.deepEqual(counted, { value: distinct, exact: true })
      else assert.equal(counted.exact, false)
      return true
    }),
    { numRuns: 200 },
  )
  t.equal(DISTINCT_DEFAULTS.exactLimit, 512)
})
