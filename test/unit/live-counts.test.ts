import fc from 'fast-check'
import t from 'tap'
import { applyChange, createCounts, type CountsState } from '../../operators/counts/logic.ts'
import { emptyKeyGroup, newCounters, processMessage, type InputMessage, type KeyGroupState, type Outgoing } from '../../operators/runtime/kernel.ts'
import { checkpointCopy } from '../harness/checkpoint.ts'
import { decodeEnvelope, encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type LiveCountsEnvelope, type SegmentMembershipEnvelope, type Source, type WatermarkEnvelope } from '../../schemas/envelope.ts'
import type { SegmentMembershipChange } from '../../schemas/profile.ts'

// The live-counts step: membership changes applied as deltas to absolute counts per key group,
// published with their version, coalesced in event time; a replay from any checkpoint publishes
// the same numbers under the same versions and ids.

const T0 = Date.parse('2026-11-27T00:00:00.000Z')
const counts = createCounts({ publishEveryMs: 250 })
const kernelOptions = { stepId: 'live-counts', latenessOf: () => 0, idleTtlMs: Number.POSITIVE_INFINITY, clock: () => 0, keyGroups: 4, forwardWatermarksTo: [] }

let seq = 0
function change(time: number, data: SegmentMembershipChange, options: { project?: string; keyGroup?: number; source?: Source } = {}): InputMessage {
  const project = options.project ?? 'p'
  const keyGroup = options.keyGroup ?? 2
  const envelope: SegmentMembershipEnvelope = {
    v: ENVELOPE_VERSION, type: 'segment_membership', project, id: `${data.canonicalId}:${data.dimension}:${data.version}`, time, key: data.canonicalId, keyGroup,
    source: options.source ?? 'live', origin: { stream: 'SEG_ENRICHED', seq: 1 }, data,
  }
  return { stream: 'SEG_PROFILES', seq: ++seq, subject: `seg.${project}.profiles.${keyGroup}`, data: encode(envelope) }
}
function watermark(time: number, project = 'p', keyGroup = 2): InputMessage {
  const envelope: WatermarkEnvelope = { v: ENVELOPE_VERSION, type: 'watermark', project, id: `w${time}`, time, key: '', keyGroup, source: 'live' }
  return { stream: 'SEG_PROFILES', seq: ++seq, subject: `seg.${project}.profiles.${keyGroup}`, data: encode(envelope) }
}
const published = (outputs: Outgoing[]) => outputs.map((output) => decodeEnvelope(output.data) as LiveCountsEnvelope).filter((envelope) => envelope.type === 'live_counts')
const summary = (outputs: Outgoing[]) => published(outputs).map((envelope) => ({ version: envelope.data.version, ...envelope.data.counts }))


t.test('a change is a delta on absolute counts', async (t) => {
  let table = { engagement: {}, segments: {} }
  table = applyChange(table, { dimension: 'engagement', canonicalId: 'u1', to: 'Low', version: 1 })
  table = applyChange(table, { dimension: 'engagement', canonicalId: 'u2', to: 'Low', version: 1 })
  table = applyChange(table, { dimension: 'engagement', canonicalId: 'u1', from: 'Low', to: 'Medium', version: 2 })
  table = applyChange(table, { dimension: 'segment', canonicalId: 'u1', to: 'seg_a', version: 1 })
  t.same(table, { engagement: { Low: 1, Medium: 1 }, segments: { seg_a: 1 } })
  table = applyChange(table, { dimension: 'segment', canonicalId: 'u1', from: 'seg_a', version: 2 })
  t.same(table.segments, {}, 'a count back at zero is left out')
})

t.test('publications: at once after a quiet spell, then at most one per 250 ms of event time, by the timer', async (t) => {
  const group = emptyKeyGroup<CountsState>(2, 1)
  const run = (messages: InputMessage[]) => messages.flatMap((message) => processMessage(counts, group, message, kernelOptions, newCounters()))
  t.same(summary(run([change(T0, { dimension: 'engagement', canonicalId: 'u1', to: 'Low', version: 1 })])),
    [{ version: 1, engagement: { Low: 1 }, segments: {} }], 'the first change publishes at once')
  t.same(summary(run([
    change(T0 + 10, { dimension: 'engagement', canonicalId: 'u2', to: 'Low', version: 1 }),
    change(T0 + 20, { dimension: 'segment', canonicalId: 'u2', to: 'seg_a', version: 1 }),
    change(T0 + 100, { dimension: 'engagement', canonicalId: 'u1', from: 'Low', to: 'Medium', version: 2 }),
  ])), [], 'within 250 ms of event time: held')
  t.same(summary(run([watermark(T0 + 200)])), [], 'the watermark not yet 250 ms on')
  t.same(summary(run([watermark(T0 + 250)])), [{ version: 4, engagement: { Low: 1, Medium: 1 }, segments: { seg_a: 1 } }], 'then the timer publishes every change so far')
  t.same(summary(run([watermark(T0 + 5_000)])), [], 'nothing new: nothing published')
  t.same(summary(run([change(T0 + 5_001, { dimension: 'segment', canonicalId: 'u2', from: 'seg_a', version: 2 })])),
    [{ version: 5, engagement: { Low: 1, Medium: 1 }, segments: {} }], 'a change long after the last publication: at once')
  const profile = { v: ENVELOPE_VERSION, type: 'profile' as const, project: 'p', id: 'x', time: T0 + 6_000, key: 'u9', keyGroup: 2, source: 'live' as const, origin: { stream: 'S', seq: 1 }, data: { canonicalId: 'u9', version: 1, mergedInto: 'u8' } }
  t.same(run([{ stream: 'SEG_PROFILES', seq: ++seq, subject: 'seg.p.profiles.2', data: encode(profile) }]), [], 'profile changes are skipped')
})

t.test('projects and key groups are counted apart', async (t) => {
  const group = emptyKeyGroup<CountsState>(2, 1)
  const out = [
    change(T0, { dimension: 'engagement', canonicalId: 'u1', to: 'Low', version: 1 }, { project: 'p' }),
    change(T0, { dimension: 'engagement', canonicalId: 'u1', to: 'High', version: 1 }, { project: 'q' }),
  ].flatMap((message) => processMessage(counts, group, message, kernelOptions, newCounters()))
  t.same(published(out).map((envelope) => [envelope.project, envelope.keyGroup, envelope.data.keyGroup, envelope.data.counts.engagement]), [['p', 2, 2, { Low: 1 }], ['q', 2, 2, { High: 1 }]])
  t.same(published(out).map((envelope) => envelope.key), ['2', '2'])
})

const levels = ['Low', 'Medium', 'Medium-High', 'High'] as const

t.test('property: from any checkpoint, a replay publishes the same counts under the same ids; the last equals a count of the users', async (t) => {
  fc.assert(fc.property(
    fc.array(fc.record({ user: fc.integer({ min: 0, max: 5 }), level: fc.integer({ min: -1, max: 3 }), step: fc.integer({ min: 0, max: 400 }) }), { minLength: 1, maxLength: 60 }),
    fc.nat(),
    (moves, cut) => {
      // each user's chain of levels (-1: gone), as the profile step emits it
      const current = new Map<number, number>()
      const versions = new Map<number, number>()
      const messages: InputMessage[] = []
      let time = T0
      for (const move of moves) {
        time += move.step
        const before = current.get(move.user) ?? -1
        if (before === move.level) {
          messages.push(watermark(time))
          continue
        }
        const version = (versions.get(move.user) ?? 0) + 1
        versions.set(move.user, version)
        current.set(move.user, move.level)
        messages.push(change(time, {
          dimension: 'engagement', canonicalId: `u${move.user}`, version,
          ...(before >= 0 ? { from: levels[before] } : {}), ...(move.level >= 0 ? { to: levels[move.level] } : {}),
        }))
      }
      messages.push(watermark(time + 1_000))
      const group = emptyKeyGroup<CountsState>(2, 1)
      const outputs: Outgoing[] = []
      let checkpoint: KeyGroupState<CountsState> | undefined
      const at = cut % messages.length
      messages.forEach((message, index) => {
        if (index === at) checkpoint = checkpointCopy(group)
        outputs.push(...processMessage(counts, group, message, kernelOptions, newCounters()))
      })
      const replay = checkpointCopy(checkpoint!)
      const again = messages.slice(at).flatMap((message) => processMessage(counts, replay, message, kernelOptions, newCounters()))
      const tail = outputs.slice(outputs.length - again.length)
      if (JSON.stringify(again.map((o) => [o.msgId, [...o.data]])) !== JSON.stringify(tail.map((o) => [o.msgId, [...o.data]]))) throw new Error('a replay published something else')
      const last = published(outputs).at(-1)
      const expected: Record<string, number> = {}
      for (const level of current.values()) if (level >= 0) expected[levels[level]!] = (expected[levels[level]!] ?? 0) + 1
      const changes = messages.filter((message) => decodeEnvelope(message.data).type === 'segment_membership').length
      if (changes > 0 && JSON.stringify(Object.entries(last!.data.counts.engagement).sort()) !== JSON.stringify(Object.entries(expected).sort())) {
        throw new Error(`last published ${JSON.stringify(last!.data.counts.engagement)}, users are ${JSON.stringify(expected)}`)
      }
      if (changes > 0 && last!.data.version !== changes) throw new Error(`version ${last!.data.version} after ${changes} changes`)
    },
  ), { numRuns: 300 })
  t.pass('replays agree with the first run')
})
