import assert from 'node:assert/strict'
import fc from 'fast-check'
import t from 'tap'
import { applyProgress, createFunnelCounts, emptyStepCounts, type FunnelCountsState } from '../../operators/counts/funnels.ts'
import { emptyKeyGroup, newCounters, processMessage, type InputMessage, type KeyGroupState, type Outgoing } from '../../operators/runtime/kernel.ts'
import { checkpointCopy } from '../harness/checkpoint.ts'
import { decodeEnvelope, encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type FunnelProgressEnvelope, type LiveFunnelCountsEnvelope, type WatermarkEnvelope } from '../../schemas/envelope.ts'
import { DURATION_BUCKETS_MS, durationBucketOf, type FunnelDefinition, type FunnelProgress, type FunnelStepCounts } from '../../schemas/funnel.ts'
import { definitionsOf, eventInput, miniRuntime } from '../reference/funnel-harness.ts'

// The funnel-counts step: each progress message applied as its contribution minus the previous
// message's, per key group and funnel version, without remembering users; the sums equal counting
// each user's latest message (the consumer rule, what the /result API reads); a replay from any
// checkpoint publishes the same numbers under the same versions and ids.

const MINUTE = 60_000
const T0 = Date.parse('2026-11-27T00:00:00.000Z')

type Said = Pick<FunnelProgress, 'level' | 'status' | 'stepTimes'>
function progress(user: string, version: number, said: Said, previous?: Said, funnelVersion = 1, steps = 3): FunnelProgress {
  return { funnelId: 'f', funnelVersion, canonicalId: user, version, steps, asOf: T0, ...said, ...(previous ? { previous } : {}) }
}

/** Counting each user's latest message of the newest funnel version, as SQL over funnel_progress does. */
function bruteForce(emitted: readonly FunnelProgress[], funnelId: string, steps: number): FunnelStepCounts | undefined {
  const mine = emitted.filter((message) => message.funnelId === funnelId)
  if (mine.length === 0) return undefined
  const funnelVersion = Math.max(...mine.map((message) => message.funnelVersion))
  const latest = new Map<string, FunnelProgress>()
  for (const message of mine) {
    if (message.funnelVersion !== funnelVersion) continue
    const held = latest.get(message.canonicalId)
    if (!held || held.version < message.version) latest.set(message.canonicalId, message)
  }
  const counts = emptyStepCounts(funnelId, funnelVersion, steps)
  for (const { level, status, stepTimes } of latest.values()) {
    if (status === 'none' || level === 0) continue
    for (let step = 0; step < level; step++) counts.reached[step]!++
    if (status === 'in_progress') counts.inProgress[level - 1]!++
    if (status === 'dropped') counts.dropped[level - 1]!++
    for (let step = 1; step < level; step++) counts.conversionTimes[step - 1]![durationBucketOf(stepTimes[step]! - stepTimes[step - 1]!)]!++
  }
  return counts
}

t.test('a message is its contribution minus the previous one\'s', async (t) => {
  let funnels: FunnelStepCounts[] = []
  const apply = (message: FunnelProgress) => {
    const next = applyProgress(funnels, message)
    if (next) funnels = next
    return next
  }
  apply(progress('u1', 1, { level: 1, status: 'in_progress', stepTimes: [T0] }))
  apply(progress('u2', 1, { level: 2, status: 'in_progress', stepTimes: [T0, T0 + 3_000] }))
  t.same([funnels[0]!.reached, funnels[0]!.inProgress, funnels[0]!.dropped], [[2, 1, 0], [1, 1, 0], [0, 0, 0]], 'two users in progress, at levels 1 and 2')
  t.equal(funnels[0]!.conversionTimes[0]![durationBucketOf(3_000)], 1, 'u2 took 3 s from step 1 to 2')
  t.equal(funnels[0]!.conversionTimes.length, 2, 'one bucket list per pair of consecutive steps')
  t.equal(funnels[0]!.conversionTimes[0]!.length, DURATION_BUCKETS_MS.length + 1, 'the bounds and the open bucket')
  apply(progress('u2', 2, { level: 3, status: 'converted', stepTimes: [T0, T0 + 3_000, T0 + 90 * MINUTE] }, { level: 2, status: 'in_progress', stepTimes: [T0, T0 + 3_000] }))
  apply(progress('u1', 2, { level: 1, status: 'dropped', stepTimes: [T0] }, { level: 1, status: 'in_progress', stepTimes: [T0] }))
  t.same([funnels[0]!.reached, funnels[0]!.inProgress, funnels[0]!.dropped], [[2, 1, 1], [0, 0, 0], [1, 0, 0]], 'u2 converted, u1 dropped at level 1')
  apply(progress('u2', 3, { level: 0, status: 'none', stepTimes: [] }, { level: 3, status: 'converted', stepTimes: [T0, T0 + 3_000, T0 + 90 * MINUTE] }))
  t.same([funnels[0]!.reached, funnels[0]!.conversionTimes.flat().reduce((a, b) => a + b, 0)], [[1, 0, 0], 0], 'a merged-away user (none) takes everything they counted with them')

  t.equal(apply(progress('u9', 1, { level: 2, status: 'in_progress', stepTimes: [T0, T0 + 1] }, undefined, 2, 2))!.length, 1, 'a newer funnel version replaces the older one\'s counts')
  t.same([funnels[0]!.funnelVersion, funnels[0]!.reached], [2, [1, 1]], 'counted afresh, with its own number of steps')
  t.equal(apply(progress('u1', 3, { level: 2, status: 'in_progress', stepTimes: [T0, T0 + 1] }, { level: 1, status: 'dropped', stepTimes: [T0] }, 1)), undefined, 'an older version\'s message (a timer under it) changes nothing')
  apply({ ...progress('u1', 1, { level: 1, status: 'in_progress', stepTimes: [T0] }), funnelId: 'a' })
  t.same(funnels.map((counts) => counts.funnelId), ['a', 'f'], 'funnels kept in id order')
})

const NAMES = ['a', 'b', 'c', 'x'] as const
const scenario = fc.record({
  mode: fc.constantFrom('sequential', 'strict', 'any_order') as fc.Arbitrary<NonNullable<FunnelDefinition['mode']>>,
  steps: fc.array(fc.constantFrom(...NAMES), { minLength: 2, maxLength: 4 }),
  windowMs: fc.constantFrom(MINUTE, 5 * MINUTE),
  log: fc.array(fc.record({ user: fc.constantFrom('u1', 'u2', 'u3', 'anon'), name: fc.constantFrom(...NAMES), at: fc.nat({ max: 60 }) }), { minLength: 1, maxLength: 50 }),
  mergeAfter: fc.nat({ max: 50 }),
  newVersionAfter: fc.option(fc.nat({ max: 50 }), { nil: undefined }),
  jumps: fc.array(fc.nat({ max: 50 }), { maxLength: 4 }),
})

t.test('property: the counts applied message by message equal counting each user\'s latest message', async () => {
  fc.assert(fc.property(scenario, ({ mode, steps, windowMs, log, mergeAfter, newVersionAfter, jumps }) => {
    const definition: FunnelDefinition = { id: 'f', name: 'f', mode, windowMs, steps: steps.map((event) => ({ event })) }
    const runtime = miniRuntime({ roundTrip: true })
    runtime.setDefinitions(definitionsOf(definition))
    let counts: FunnelStepCounts[] = []
    let applied = 0
    const check = () => {
      for (; applied < runtime.emitted.length; applied++) counts = applyProgress(counts, runtime.emitted[applied]!) ?? counts
      const expected = bruteForce(runtime.emitted, 'f', steps.length)
      if (expected) assert.deepEqual(counts.find((entry) => entry.funnelId === 'f'), expected)
    }
    log.forEach((event, index) => {
      if (index === newVersionAfter) runtime.setDefinitions(definitionsOf([definition, 2]))
      if (index === mergeAfter) runtime.merge('anon', 'u1')
      if (jumps.includes(index)) runtime.jump(T0 + index * 10_000)
      runtime.event(eventInput({ user: index >= mergeAfter && event.user === 'anon' ? 'u1' : event.user, time: T0 + event.at * 10_000 + index, id: `m${index}`, name: event.name }))
      check()
    })
    runtime.finish()
    check()
  }), { numRuns: 300 })
})

// ---------------------------------------------------------------------------------------------
// Through the kernel: coalescing, versions and replays

const counter = createFunnelCounts({ publishEveryMs: 250 })
const kernelOptions = { stepId: 'funnel-counts', latenessOf: () => 0, idleTtlMs: Number.POSITIVE_INFINITY, clock: () => 0, keyGroups: 4, forwardWatermarksTo: [] }
let seq = 0
function stored(time: number, data: FunnelProgress, keyGroup = 1): InputMessage {
  const envelope: FunnelProgressEnvelope = {
    v: ENVELOPE_VERSION, type: 'funnel_progress', project: 'p', id: `${data.funnelId}:${data.funnelVersion}:${data.canonicalId}:${data.version}`, time,
    key: data.canonicalId, keyGroup, source: 'live', origin: { stream: 'SEG_ENRICHED', seq: 1 }, data: { ...data, asOf: time },
  }
  return { stream: 'SEG_FUNNELS', seq: ++seq, subject: `seg.p.funnels.${keyGroup}`, data: encode(envelope) }
}
function watermark(time: number, keyGroup = 1): InputMessage {
  const envelope: WatermarkEnvelope = { v: ENVELOPE_VERSION, type: 'watermark', project: 'p', id: `w${time}`, time, key: '', keyGroup, source: 'live' }
  return { stream: 'SEG_FUNNELS', seq: ++seq, subject: `seg.p.funnels.${keyGroup}`, data: encode(envelope) }
}
const published = (outputs: Outgoing[]) => outputs.map((output) => ({ subject: output.subject, id: output.msgId, envelope: decodeEnvelope(output.data) as LiveFunnelCountsEnvelope }))


t.test('through the kernel: published on funnel_counts, coalesced, and a replay from any checkpoint publishes the same', async (t) => {
  const messages: InputMessage[] = []
  for (let user = 0; user < 12; user++) {
    const first = { level: 1, status: 'in_progress' as const, stepTimes: [T0 + user * 100] }
    messages.push(stored(T0 + user * 100, progress(`u${user}`, 1, first)))
    if (user % 3 === 0) messages.push(stored(T0 + user * 100 + 50, progress(`u${user}`, 2, { level: 2, status: 'in_progress', stepTimes: [T0 + user * 100, T0 + user * 100 + 50] }, first)))
    if (user % 4 === 0) messages.push(watermark(T0 + user * 100 + 60))
  }
  messages.push(watermark(T0 + 10_000))
  const run = (group: KeyGroupState<FunnelCountsState>, from: number) => messages.slice(from).flatMap((message) => processMessage(counter, group, message, kernelOptions, newCounters()))
  const straight = emptyKeyGroup<FunnelCountsState>(1, 1)
  const outputs = published(run(straight, 0))
  t.ok(outputs.length >= 2 && outputs.length < 16, `coalesced: ${outputs.length} publications for 16 messages`)
  t.ok(outputs.every((output) => output.subject === 'seg.p.funnel_counts.1' && output.envelope.type === 'live_funnel_counts'), 'on the key group\'s funnel_counts subject')
  const last = outputs.at(-1)!.envelope.data
  t.same([last.version, last.funnels[0]!.reached, last.funnels[0]!.inProgress], [16, [12, 4, 0], [8, 4, 0]], 'every message applied: 12 users, 4 of them at level 2')
  t.equal(outputs.at(-1)!.envelope.id, 'funnel-counts:1:16', 'the id names the key group and the version')

  // a replay from every checkpoint: the same publications (ids, versions, numbers) from there on
  const group = emptyKeyGroup<FunnelCountsState>(1, 1)
  const all: ReturnType<typeof published> = []
  for (let at = 0; at < messages.length; at++) {
    const checkpoint = checkpointCopy(group)
    const once = published(processMessage(counter, group, messages[at]!, kernelOptions, newCounters()))
    const again = published(processMessage(counter, checkpoint, messages[at]!, kernelOptions, newCounters()))
    assert.deepEqual(again, once, `message ${at}: replayed from the checkpoint before it`)
    all.push(...once)
    const redelivered = processMessage(counter, group, messages[at]!, kernelOptions, newCounters())
    assert.deepEqual(redelivered, [], `message ${at} redelivered: skipped`)
  }
  t.same(all, outputs, 'message by message with checkpoints and redeliveries: the same as straight through')
})
