import t from 'tap'
import { compileFilter, Params } from '../../store/explore.ts'
import { stepsOf, segmentToFilter, trackedPart, type TimeToConvert } from '../../store/funnels.ts'
import type { FunnelDefinition, ProfileCondition } from '../../schemas/funnel.ts'
import { funnelStages } from '../../gateway/funnels/stages.ts'
import { segstreamTopology } from '../../topology/definition.ts'

// The pure parts of the funnel API: per-step numbers from per-level counts, the segment's
// conditions as an exploration filter, the stages a definition is published to.

const definition: FunnelDefinition = { id: 'f', name: 'F', steps: [{ event: 'a' }, { event: 'b', label: 'B' }, { event: 'c' }, { event: 'd' }] }

t.test('stepsOf: reached adds the levels above; drop-off is the level itself; ratios of nothing are null', async (t) => {
  const atLevel = new Map([
    [1, { inProgress: 2, dropped: 3, total: 5 }],
    [3, { inProgress: 0, dropped: 1, total: 1 }],
    [4, { inProgress: 0, dropped: 0, total: 4 }],
  ])
  const times = new Map<number, TimeToConvert>([[1, { users: 5, medianMs: 10, p90Ms: 20 }]])
  const counts = stepsOf(definition, atLevel, times)
  t.same(counts.steps.map((s) => s.reached), [10, 5, 5, 4])
  t.same(counts.steps.map((s) => [s.dropOff, s.inProgress, s.dropped]), [[5, 2, 3], [0, 0, 0], [1, 0, 1], [0, 0, 0]], 'the last level is converted: no drop-off')
  t.same(counts.steps.map((s) => s.conversionFromPrevious), [1, 0.5, 1, 0.8])
  t.same(counts.steps.map((s) => s.conversionFromFirst), [1, 0.5, 0.5, 0.4])
  t.same(counts.steps.map((s) => s.timeToConvert), [null, { users: 5, medianMs: 10, p90Ms: 20 }, null, null], 'times[k] is from step k to step k + 1')
  t.equal(counts.steps[1]!.label, 'B')
  t.notOk('label' in counts.steps[0]!)
  t.same([counts.entered, counts.converted, counts.conversion], [10, 4, 0.4])

  const nobody = stepsOf(definition, new Map(), new Map())
  t.same([nobody.entered, nobody.converted, nobody.conversion], [0, 0, null])
  t.ok(nobody.steps.every((s) => s.conversionFromPrevious === null && s.conversionFromFirst === null && s.reached === 0))
})

t.test('segmentToFilter: each operator as an exploration condition, compiled by the exploration code', async (t) => {
  const cases: [ProfileCondition, object[]][] = [
    [{ field: 'country', value: 'DE' }, [{ dimension: 'country', equals: 'DE' }]],
    [{ field: 'country', operator: 'eq', value: null }, [{ dimension: 'country', equals: null }]],
    [{ field: 'country', operator: 'neq', value: 'DE' }, [{ dimension: 'country', equals: 'DE', not: true }]],
    [{ field: 'country', operator: 'in', value: ['DE', 'FR'] }, [{ dimension: 'country', in: ['DE', 'FR'] }]],
    [{ field: 'acquisition_month', operator: 'gte', value: '2019-05' }, [{ dimension: 'acquisition_month', range: { from: '2019-05' } }]],
    [{ field: 'acquisition_month', operator: 'lte', value: '2019-05' }, [{ dimension: 'acquisition_month', range: { to: '2019-05' } }]],
    [{ field: 'engagement', operator: 'gt', value: 'Medium' }, [{ dimension: 'engagement', range: { from: 'Medium' } }, { dimension: 'engagement', equals: 'Medium', not: true }]],
    [{ field: 'trait.age', operator: 'lt', value: 30 }, [{ dimension: 'trait.age', range: { to: 30 } }, { dimension: 'trait.age', equals: 30, not: true }]],
    [{ field: 'trait.plan', operator: 'is_set' }, [{ dimension: 'trait.plan', equals: null, not: true }]],
  ]
  const traits = new Map([['age', 'number' as const], ['plan', 'string' as const]])
  for (const [condition, expected] of cases) {
    const { filter, places } = segmentToFilter([condition])
    t.same(filter.all, expected, `${condition.field} ${condition.operator ?? 'eq'}`)
    t.same(places, expected.map(() => 0))
    t.doesNotThrow(() => compileFilter(filter, { traits }, new Params('p')), 'the exploration code compiles it')
  }
  t.same(segmentToFilter([{ field: 'country', value: 'DE' }, { field: 'engagement', operator: 'lt', value: 'High' }, { field: 'device', value: 'mobile' }]).places, [0, 1, 1, 2])
  t.throws(() => segmentToFilter([{ field: 'country', value: 'DE' }, { field: 'city', operator: 'contains', value: 'ber' }]), { message: /segment\/profile\/1: contains is not available/ })
})

t.test('definitions go to the stages the funnel step reads events from', async (t) => {
  t.same(funnelStages(), ['enriched', 'sessions'])
  const topology = segstreamTopology()
  t.throws(() => funnelStages({ ...topology, steps: topology.steps.filter((step) => step.stepId !== 'funnel') }), { message: /no step "funnel"/ })
})

t.test('trackedPart: what the funnel step computes from, without the name and the segment', async (t) => {
  const segment = { profile: [{ field: 'country', value: 'DE' }] }
  t.same(trackedPart({ ...definition, name: 'Other', segment }), trackedPart(definition))
  t.notSame(trackedPart({ ...definition, windowMs: 60_000 }), trackedPart(definition))
  t.notSame(trackedPart({ ...definition, breakdown: { property: '$channel' } }), trackedPart(definition))
})
