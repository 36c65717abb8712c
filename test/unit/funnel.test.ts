import t from 'tap'
import { applyFunnelControl, createFunnel, type FunnelState } from '../../operators/funnel/logic.ts'
import { compileFunnel, filterTest, maskOf } from '../../operators/funnel/match.ts'
import { decode, encode } from '../../schemas/codec.ts'
import type { RawEventEnvelope } from '../../schemas/envelope.ts'
import { durationBucketOf, DURATION_BUCKETS_MS, funnelDefinitionProblems, type FunnelDefinition, type PropertyFilter } from '../../schemas/funnel.ts'
import { definitionsOf, eventInput, KEY_GROUPS, miniRuntime, resultOf, sessionInput } from '../reference/funnel-harness.ts'
import { referenceFilterHolds } from '../reference/funnel-reference.ts'

const MINUTE = 60_000
const HOUR = 60 * MINUTE
const DAY = 24 * HOUR
const T0 = Date.parse('2019-05-10T10:00:00.000Z')

const funnel = (fields: Partial<FunnelDefinition> = {}): FunnelDefinition => ({
  id: 'f', name: 'A then B then C', steps: [{ event: 'A' }, { event: 'B' }, { event: 'C' }], windowMs: HOUR, ...fields,
})

let ids = 0
/** An event of u1 at T0 + minutes. */
const at = (minutes: number, name: string, fields: { properties?: Record<string, unknown>; user?: string; id?: string; bot?: boolean; device?: string } = {}) =>
  eventInput({ time: T0 + minutes * MINUTE, id: fields.id ?? `e${String(++ids).padStart(5, '0')}`, name, ...fields })

function runtimeWith(definition: FunnelDefinition, options: Parameters<typeof miniRuntime>[0] = {}) {
  const runtime = miniRuntime(options)
  runtime.setDefinitions(definitionsOf(definition))
  return runtime
}

const stepTimes = (...minutes: number[]) => minutes.map((minute) => T0 + minute * MINUTE)

t.test('definitions: validation names what is wrong', async (t) => {
  t.same(funnelDefinitionProblems(funnel()), [])
  const problems = (value: unknown) => funnelDefinitionProblems(value).join(' | ')
  t.match(problems({ ...funnel(), steps: [{ event: 'A' }] }), /steps: .*2/)
  t.match(problems({ ...funnel(), steps: Array.from({ length: 21 }, () => ({ event: 'A' })) }), /steps/)
  t.match(problems({ ...funnel(), windowMs: 59_999 }), /windowMs/)
  t.match(problems({ ...funnel(), windowMs: 91 * DAY }), /windowMs/)
  t.match(problems({ ...funnel(), mode: 'loose' }), /mode/)
  t.match(problems({ ...funnel(), id: 'has space' }), /id/)
  t.match(problems({ ...funnel(), exclusions: [{ event: 'X', fromStep: 2, toStep: 2 }] }), /exclusions\/0: fromStep \(2\) must come before toStep \(2\)/)
  t.match(problems({ ...funnel(), exclusions: [{ event: 'X', fromStep: 1, toStep: 4 }] }), /exclusions\/0: toStep 4 is beyond the last step \(3\)/)
  t.match(problems({ ...funnel(), mode: 'any_order', exclusions: [{ event: 'X', fromStep: 1, toStep: 2 }] }), /not available in any_order/)
  t.match(problems({ ...funnel(), steps: [{ event: 'A', filters: [{ property: 'p', operator: 'gt', value: [1] }] }, { event: 'B' }] }), /steps\/0\/filters\/0: gt needs a number or a string/)
  t.match(problems({ ...funnel(), steps: [{ event: 'A', filters: [{ property: 'p', operator: 'in', value: [] }] }, { event: 'B' }] }), /in needs a non-empty array/)
  t.match(problems({ ...funnel(), steps: [{ event: 'A', filters: [{ property: 'p', operator: 'is_set', value: 1 }] }, { event: 'B' }] }), /is_set takes no value/)
  t.match(problems({ ...funnel(), steps: [{ event: 'A', filters: [{ property: 'p' }] }, { event: 'B' }] }), /eq needs a value/)
  t.match(problems({ ...funnel(), extra: 1 }), /definition|extra/)
  t.same(funnelDefinitionProblems({ ...funnel(), segment: { profile: [{ field: 'acquisition_month', value: '2019-05' }] }, breakdown: { property: '$channel' } }), [])
  t.same(funnelDefinitionProblems({ ...funnel(), segment: { segmentId: 'engaged' } }), [])
})

t.test('control messages: add, ignore stale versions, delete, refuse invalid definitions', async (t) => {
  const control = (version: number, definition: unknown, name = 'f') => ({ stepId: 'funnel', name, version, definition })
  const one = applyFunnelControl(undefined, control(2, funnel()))
  t.same(Object.keys(one), ['f'])
  t.equal(applyFunnelControl(one, control(2, funnel({ name: 'again' }))), one, 'the same version again changes nothing')
  t.equal(applyFunnelControl(one, control(1, funnel({ name: 'older' }))), one, 'an older version changes nothing')
  const three = applyFunnelControl(one, control(3, funnel({ name: 'newer' })))
  t.equal(three.f!.definition.name, 'newer')
  t.same(applyFunnelControl(three, control(4, null)), {}, 'null deletes')
  t.same(applyFunnelControl(three, control(2, null)), three, 'an older deletion changes nothing')
  t.throws(() => applyFunnelControl(one, control(5, { ...funnel(), windowMs: 1 })), /funnel f version 5 refused: windowMs/)
  t.throws(() => applyFunnelControl(undefined, control(1, funnel(), 'other')), /differs from the control's name "other"/)
})

t.test('toInput, keyOf and init', async (t) => {
  const operator = createFunnel({ keyGroups: KEY_GROUPS })
  t.equal(operator.stepId, 'funnel')
  const event = at(0, 'A', { user: 'user-7' })
  t.equal(operator.keyOf(operator.toInput(event.envelope, event.origin)), 'user-7')
  const session = sessionInput({ user: 'user-8', opened: T0 })
  t.equal(operator.keyOf(operator.toInput(session.envelope, session.origin)), 'user-8')
  const raw = { ...event.envelope, type: 'raw_event', data: event.envelope.data.message } as unknown as RawEventEnvelope
  t.throws(() => operator.toInput(raw, event.origin), /funnel reads enriched_event and session messages, got raw_event/)
  const result = operator.onEvent(operator.init(), event, { eventTime: event.envelope.time, watermark: 0, source: 'live', control: undefined })
  t.same(result, { state: undefined, emit: [] }, 'no funnel defined: nothing kept, nothing published')
})

t.test('sequential: other events between steps are fine; the message says where the user is', async (t) => {
  const runtime = runtimeWith(funnel())
  const first = runtime.event(at(0, 'A'))
  t.match(first, [{ funnelId: 'f', funnelVersion: 1, canonicalId: 'u1', version: 1, level: 1, steps: 3, status: 'in_progress', stepTimes: stepTimes(0) }])
  t.same(runtime.event(at(1, 'noise')), [], 'an event no step names changes nothing')
  t.same(runtime.event(at(2, 'C')), [], 'C before B does not count')
  t.match(runtime.event(at(3, 'B')), [{ version: 2, level: 2, status: 'in_progress', stepTimes: stepTimes(0, 3) }])
  t.match(runtime.event(at(4, 'C')), [{ version: 3, level: 3, status: 'converted', stepTimes: stepTimes(0, 3, 4) }])
  t.equal(runtime.states.get('u1')?.wakeAt, undefined, 'converted: no timer')
})

t.test('strict: any other event of the user between two steps breaks the attempt', async (t) => {
  const runtime = runtimeWith(funnel({ mode: 'strict' }))
  runtime.event(at(0, 'A'))
  runtime.event(at(1, 'B'))
  t.match(runtime.event(at(2, 'noise')), [{ level: 2, status: 'dropped' }], 'broken: it can no longer advance')
  t.same(runtime.event(at(3, 'C')), [])
  t.match(runtime.event(at(4, 'A')), [{ level: 2, status: 'dropped' }].slice(0, 0), 'a new attempt at level 1 changes nothing shown')
  runtime.event(at(5, 'B'))
  t.match(runtime.latest('f'), { level: 2, status: 'in_progress', stepTimes: stepTimes(0, 1) }, 'an open attempt at the furthest level: in progress; the earlier one still counts')
  t.match(runtime.event(at(6, 'C')), [{ level: 3, status: 'converted', stepTimes: stepTimes(4, 5, 6) }])
})

t.test('strict: late steps landing inside a run of other events are broken by the one between them', async (t) => {
  // found by the benchmark's traffic: keeping only the first and last of a run of other events
  // (an optimisation tried and withdrawn) let two late steps inside the run join up
  const runtime = runtimeWith(funnel({ mode: 'strict' }))
  for (const minute of [0, 1, 3, 5]) runtime.event(at(minute, 'noise'))
  runtime.event(at(2, 'A'))
  runtime.event(at(4, 'B'))
  t.match(runtime.latest('f'), { level: 1, stepTimes: stepTimes(2) }, 'the noise at minute 3 breaks A before B')
  runtime.event(at(3.5, 'A'))
  t.match(runtime.latest('f'), { level: 2, stepTimes: stepTimes(3.5, 4) }, 'an A after that noise reaches B')
})

t.test('strict: a session start never breaks an attempt', async (t) => {
  const runtime = runtimeWith(funnel({ mode: 'strict', steps: [{ event: 'A' }, { event: '$session_start' }, { event: 'B' }] }))
  runtime.event(at(0, 'A'))
  runtime.event(sessionInput({ opened: T0 + MINUTE }))
  t.match(runtime.latest('f'), { level: 2 })
  runtime.event(sessionInput({ opened: T0 + 2 * MINUTE }))
  t.match(runtime.event(at(3, 'B')), [{ level: 3, status: 'converted' }])
})

t.test('any order: the steps in any order within the window', async (t) => {
  const runtime = runtimeWith(funnel({ mode: 'any_order' }))
  t.match(runtime.event(at(0, 'C')), [{ level: 1, stepTimes: stepTimes(0) }])
  runtime.event(at(1, 'C'))
  t.match(runtime.event(at(2, 'A')), [{ level: 2 }])
  t.match(runtime.event(at(3, 'B')), [{ level: 3, status: 'converted', stepTimes: stepTimes(1, 2, 3) }], 'both attempts reached two steps at the same event: the later start counts')
})

t.test('the window is measured from the first step, both ends included', async (t) => {
  const runtime = runtimeWith(funnel({ steps: [{ event: 'A' }, { event: 'B' }] }))
  runtime.event(at(0, 'A'))
  t.match(runtime.event(at(60, 'B')), [{ level: 2, status: 'converted' }], 'exactly the window after: converts')
  const late = runtimeWith(funnel({ steps: [{ event: 'A' }, { event: 'B' }] }))
  late.event(at(0, 'A'))
  late.event(eventInput({ time: T0 + HOUR + 1, id: 'late-b', name: 'B' }))
  t.match(late.latest('f'), { level: 1, status: 'dropped' }, 'a millisecond more: it does not, and the later event shows the window is over')
})

t.test('in progress until the watermark passes the window, then dropped by the timer', async (t) => {
  const runtime = runtimeWith(funnel())
  runtime.event(at(0, 'A'))
  runtime.event(at(10, 'B'))
  t.equal(runtime.states.get('u1')?.wakeAt, T0 + HOUR + 1)
  t.same(runtime.jump(T0 + HOUR), [], 'the watermark at the window end: still in progress')
  t.match(runtime.jump(T0 + HOUR + 1), [{ level: 2, status: 'dropped', version: 3, asOf: T0 + HOUR + 1 }])
  t.equal(runtime.states.get('u1')?.wakeAt, undefined)
  t.match(runtime.event(at(70, 'A')), [{ level: 2, status: 'dropped' }].slice(0, 0), 'a new first step does not reopen level 2')
})

t.test('the furthest attempt counts; among equals the one that got there first', async (t) => {
  const runtime = runtimeWith(funnel({ windowMs: 10 * MINUTE }))
  runtime.event(at(0, 'A'))
  runtime.event(at(5, 'A'))
  runtime.event(at(8, 'B'))
  t.match(runtime.latest('f'), { level: 2, stepTimes: stepTimes(5, 8) }, 'both attempts reach B at once: the later start (the shorter one) counts')
  t.match(runtime.event(at(12, 'C')), [{ level: 3, stepTimes: stepTimes(5, 8, 12) }], 'only the second attempt is still within its window')
})

t.test('one event advances an attempt by one step at most', async (t) => {
  const runtime = runtimeWith(funnel({ steps: [{ event: 'A' }, { event: 'A' }, { event: 'A' }] }))
  t.match(runtime.event(at(0, 'A')), [{ level: 1 }])
  t.match(runtime.event(at(1, 'A')), [{ level: 2 }])
  t.match(runtime.event(at(2, 'A')), [{ level: 3, status: 'converted', stepTimes: stepTimes(0, 1, 2) }])
})

t.test('exclusions: an attempt with the excluded event between its two steps is discarded', async (t) => {
  const definition = funnel({ exclusions: [{ event: 'X', fromStep: 1, toStep: 2 }] })
  const discarded = runtimeWith(definition)
  discarded.event(at(0, 'A'))
  t.match(discarded.event(at(1, 'X')), [{ level: 0, status: 'none', stepTimes: [] }], 'its only attempt is gone: the user leaves the funnel')
  t.same(discarded.event(at(2, 'B')), [])
  t.match(discarded.event(at(3, 'A')), [{ level: 1 }], 'a new attempt starts clean')
  const after = runtimeWith(definition)
  after.event(at(0, 'A'))
  after.event(at(1, 'B'))
  t.same(after.event(at(2, 'X')), [], 'after step 2: outside the range')
  t.match(after.event(at(3, 'C')), [{ level: 3, status: 'converted' }])
  const before = runtimeWith(funnel({ exclusions: [{ event: 'X', fromStep: 2, toStep: 3 }] }))
  before.event(at(0, 'A'))
  before.event(at(1, 'X'))
  t.match(before.event(at(2, 'B')), [{ level: 2 }], 'before step 2: outside the range of 2..3')
  const both = runtimeWith(funnel({ steps: [{ event: 'A' }, { event: 'B' }], exclusions: [{ event: 'B', fromStep: 1, toStep: 2 }] }))
  both.event(at(0, 'A'))
  t.match(both.event(at(1, 'B')), [{ level: 2, status: 'converted' }], 'the event that reaches step 2 is a step of the attempt, not an exclusion')
})

t.test('property filters: each operator', async (t) => {
  const cases: Array<[PropertyFilter, unknown, boolean]> = [
    [{ property: 'p', value: 'pro' }, 'pro', true],
    [{ property: 'p', value: 'pro' }, 'Pro', false],
    [{ property: 'p', value: 42 }, '42', true],
    [{ property: 'p', value: true }, 'true', true],
    [{ property: 'p', operator: 'eq', value: 1 }, undefined, false],
    [{ property: 'p', operator: 'neq', value: 1 }, 2, true],
    [{ property: 'p', operator: 'neq', value: 1 }, undefined, true],
    [{ property: 'p', operator: 'neq', value: 1 }, 1, false],
    [{ property: 'p', operator: 'gt', value: 10 }, 11, true],
    [{ property: 'p', operator: 'gt', value: 10 }, '11', true],
    [{ property: 'p', operator: 'gt', value: 10 }, 10, false],
    [{ property: 'p', operator: 'gt', value: 10 }, 'eleven', false],
    [{ property: 'p', operator: 'gt', value: 10 }, '', false],
    [{ property: 'p', operator: 'gte', value: 10 }, 10, true],
    [{ property: 'p', operator: 'lt', value: 10 }, 9.5, true],
    [{ property: 'p', operator: 'lt', value: 10 }, null, false],
    [{ property: 'p', operator: 'lte', value: 10 }, 10, true],
    [{ property: 'p', operator: 'gt', value: '2019-05' }, '2019-06', true],
    [{ property: 'p', operator: 'lt', value: '2019-05' }, 201904, false],
    [{ property: 'p', operator: 'in', value: ['a', 'b'] }, 'b', true],
    [{ property: 'p', operator: 'in', value: [1, 2] }, '2', true],
    [{ property: 'p', operator: 'in', value: ['a'] }, 'c', false],
    [{ property: 'p', operator: 'contains', value: 'docs' }, '/Docs/api', true],
    [{ property: 'p', operator: 'contains', value: 'docs' }, 7, false],
    [{ property: 'p', operator: 'is_set' }, 0, true],
    [{ property: 'p', operator: 'is_set' }, null, false],
    [{ property: 'p', operator: 'is_set' }, undefined, false],
  ]
  for (const [filter, value, expected] of cases) {
    const label = `${filter.operator ?? 'eq'} ${JSON.stringify(filter.value)} on ${JSON.stringify(value)}`
    t.equal(filterTest(filter)(value), expected, label)
    t.equal(referenceFilterHolds(filter, value === undefined ? {} : { p: value }), expected, `reference: ${label}`)
  }
  const compiled = compileFunnel(funnel({ steps: [{ event: 'A', filters: [{ property: 'plan', value: 'pro' }, { property: '$device', value: 'mobile' }] }, { event: 'A' }] }), 1)
  const lookup = (values: Record<string, unknown>) => (property: string) => values[property]
  t.equal(maskOf(compiled, 'A', lookup({ plan: 'pro', $device: 'mobile' })), 0b11, 'all filters hold: steps 1 and 2')
  t.equal(maskOf(compiled, 'A', lookup({ plan: 'pro', $device: 'desktop' })), 0b10, 'one fails: only the unfiltered step')
  t.equal(maskOf(compiled, 'B', lookup({})), 0)
  const runtime = runtimeWith(funnel({ steps: [{ event: 'A', filters: [{ property: '$device', value: 'mobile' }] }, { event: 'B', filters: [{ property: 'amount', operator: 'gte', value: 10 }] }] }))
  t.same(runtime.event(at(0, 'A')), [], 'enriched fields: a desktop event is not a mobile one')
  runtime.event(at(1, 'A', { device: 'mobile' }))
  t.same(runtime.event(at(2, 'B', { properties: { amount: 5 } })), [])
  t.match(runtime.event(at(3, 'B', { properties: { amount: 10 } })), [{ level: 2, status: 'converted' }])
})

t.test('late, shuffled and duplicated events give what in-order processing gives', async (t) => {
  const runtime = runtimeWith(funnel(), { lateness: 5 * MINUTE })
  const c = at(20, 'C', { id: 'c' })
  t.same(runtime.event(c), [])
  t.same(runtime.event(at(10, 'B', { id: 'b' })), [])
  t.match(runtime.event(at(0, 'A', { id: 'a' })), [{ level: 3, status: 'converted', stepTimes: stepTimes(0, 10, 20) }], 'the late first step completes the funnel at once')
  t.same(runtime.event(c), [], 'a duplicate (same message id) changes nothing')
  t.match(runtime.event(at(5, 'A', { id: 'a2' })), [{ level: 3, stepTimes: stepTimes(5, 10, 20) }], 'a later start that reaches C at the same event: the shorter attempt counts')
})

t.test('an event more than the horizon behind the watermark is not applied: late', async (t) => {
  const runtime = runtimeWith(funnel({ windowMs: 7 * DAY }), { operator: { horizonMs: HOUR } })
  runtime.event(at(0, 'A'))
  runtime.event(at(3 * 60, 'noise-in-strict-only'))
  runtime.jump(T0 + 3 * HOUR)
  runtime.event(at(3 * 60 + 1, 'A'))
  const state = runtime.states.get('u1')!.state
  t.equal(state.funnels.find((entry) => entry.id === 'f')!.track.t.length, 1, 'the first A left the buffer; its attempt lives on in the base')
  t.equal(state.funnels.find((entry) => entry.id === 'f')!.track.cutT, T0)
  runtime.event(at(1, 'B'))
  t.equal(runtime.lates, 0, 'after the cut: applied')
  t.match(runtime.latest('f'), { level: 2, stepTimes: stepTimes(0, 1) })
  runtime.lates = 0
  runtime.event(eventInput({ time: T0 - MINUTE, id: 'too-late', name: 'A' }))
  t.equal(runtime.lates, 1, 'before the cut: returned as late, for the runtime to publish on the late subject')
  t.match(runtime.latest('f'), { level: 2, stepTimes: stepTimes(0, 1) }, 'and not applied')
})

t.test('the buffer keeps at most maxEvents events', async (t) => {
  const runtime = runtimeWith(funnel({ mode: 'strict' }), { operator: { maxEvents: 3 } })
  for (let minute = 0; minute < 10; minute++) runtime.event(at(minute, minute % 2 === 0 ? 'A' : 'noise'))
  const track = runtime.states.get('u1')!.state.funnels.find((entry) => entry.id === 'f')!.track
  t.equal(track.t.length, 3)
  t.equal(track.cutT, T0 + 6 * MINUTE)
  t.match(runtime.latest('f'), { level: 1 })
})

t.test('$session_start steps come from the sessions stage; moves and retractions are applied', async (t) => {
  const runtime = runtimeWith(funnel({ steps: [{ event: '$session_start', filters: [{ property: '$channel', value: 'email' }] }, { event: 'click_event1' }, { event: 'custom_event2' }] }))
  t.same(runtime.event(sessionInput({ opened: T0, channel: 'direct' })), [], 'a session from another channel does not match')
  t.match(runtime.event(sessionInput({ opened: T0 + 10 * MINUTE, channel: 'email' })), [{ level: 1, stepTimes: stepTimes(10) }])
  t.match(runtime.event(at(11, 'click_event1')), [{ level: 2 }])
  t.same(runtime.event(sessionInput({ opened: T0 + 10 * MINUTE, channel: 'email' })), [], 'the same version again: nothing')
  t.match(runtime.event(sessionInput({ opened: T0 + 10 * MINUTE, start: T0 + 12 * MINUTE, version: 2, channel: 'email' })), [{ level: 1, stepTimes: stepTimes(12) }], 'its start moved after the click: the click no longer follows it')
  t.match(runtime.event(sessionInput({ opened: T0 + 10 * MINUTE, start: T0 + 12 * MINUTE, version: 3, name: '$session_retract', channel: 'email' })), [{ level: 0, status: 'none' }], 'retracted: gone')
  t.same(runtime.event(sessionInput({ opened: T0 + 10 * MINUTE, version: 2, channel: 'email' })), [], 'an older version after the retraction changes nothing')
  const untouched = runtimeWith(funnel())
  t.same(untouched.event(sessionInput({ opened: T0 })), [], 'no funnel uses session starts: ignored')
  t.equal(untouched.states.size, 0)
})

t.test('identity merge: the anonymous id withdraws its progress, the user gets the union', async (t) => {
  const runtime = runtimeWith(funnel())
  runtime.event(at(0, 'A', { user: 'anon' }))
  runtime.event(at(2, 'C', { user: 'anon' }))
  runtime.event(at(1, 'B'))
  const out = runtime.merge('anon', 'u1')
  t.match(out, [
    { canonicalId: 'anon', level: 0, status: 'none', mergedInto: 'u1', version: 2 },
    { canonicalId: 'u1', level: 3, status: 'converted', stepTimes: stepTimes(0, 1, 2) },
  ])
  t.equal(runtime.states.has('anon'), false)
})

t.test('identity merge: session starts sessionize announces again are left to it', async (t) => {
  const runtime = runtimeWith(funnel({ steps: [{ event: '$session_start' }, { event: 'B' }] }))
  runtime.event(sessionInput({ user: 'anon', opened: T0 }))
  runtime.event(at(1, 'B', { user: 'anon' }))
  t.match(runtime.latest('f', 'anon'), { level: 2 })
  const out = runtime.merge('anon', 'u1')
  t.match(out, [{ canonicalId: 'anon', status: 'none', mergedInto: 'u1' }])
  t.equal(out.length, 1, 'nothing under the user until sessionize re-announces the session')
  t.match(runtime.event(sessionInput({ user: 'u1', opened: T0 })), [{ canonicalId: 'u1', level: 2, status: 'converted' }])
})

t.test('identity merge with folded history: the anonymous attempt still advances with the user\'s events', async (t) => {
  const runtime = runtimeWith(funnel({ windowMs: 7 * DAY }), { operator: { horizonMs: HOUR } })
  runtime.event(at(0, 'A', { user: 'anon' }))
  runtime.event(at(24 * 60, 'noise', { user: 'u1' }))
  runtime.jump(T0 + 2 * DAY)
  runtime.event(at(2 * 24 * 60, 'A', { user: 'anon', id: 'anon-late-a' }))
  runtime.event(at(2 * 24 * 60 + 1, 'B'))
  runtime.merge('anon', 'u1')
  runtime.event(at(2 * 24 * 60 + 2, 'C'))
  t.match(runtime.latest('f'), { level: 3, status: 'converted' })
})

t.test('a new definition version starts afresh; a deleted funnel leaves nothing', async (t) => {
  const runtime = runtimeWith(funnel())
  runtime.event(at(0, 'A'))
  runtime.event(at(1, 'B'))
  runtime.setDefinitions(definitionsOf([funnel({ steps: [{ event: 'B' }, { event: 'C' }] }), 2]))
  t.match(runtime.event(at(2, 'B')), [{ funnelVersion: 2, version: 1, level: 1, steps: 2 }], 'version 2 counts from its own start, with its own message versions')
  runtime.setDefinitions({})
  t.same(runtime.event(at(3, 'C')), [])
  t.equal(runtime.states.size, 0, 'no funnel: the state goes')
})

t.test('breakdown: the counted attempt\'s first step property', async (t) => {
  const runtime = runtimeWith(funnel({ breakdown: { property: 'plan' } }))
  runtime.event(at(0, 'A', { properties: { plan: 'free' } }))
  runtime.event(at(1, 'A', { properties: { plan: 'pro' } }))
  t.match(runtime.event(at(2, 'B')), [{ level: 2, breakdown: 'pro' }])
  const none = runtimeWith(funnel({ breakdown: { property: 'plan' } }))
  const [first] = none.event(at(0, 'A'))
  t.equal(first!.breakdown, undefined, 'the step did not have it')
})

t.test('bots and reserved names are ignored', async (t) => {
  const runtime = runtimeWith(funnel())
  t.same(runtime.event(at(0, 'A', { bot: true })), [])
  t.equal(runtime.states.size, 0)
  const counting = runtimeWith(funnel(), { operator: { countBots: true } })
  t.match(counting.event(at(0, 'A', { bot: true })), [{ level: 1 }])
  t.same(runtime.event(at(0, '$session_fake')), [])
})

t.test('several funnels at once, and the state survives msgpack', async (t) => {
  const runtime = miniRuntime({ roundTrip: true })
  runtime.setDefinitions(definitionsOf(funnel(), funnel({ id: 'g', steps: [{ event: 'B' }, { event: 'C' }], mode: 'strict' })))
  runtime.event(at(0, 'A'))
  runtime.event(at(1, 'B'))
  runtime.event(at(2, 'C'))
  t.match(resultOf(runtime.latest('f')), { level: 3, status: 'converted' })
  t.match(resultOf(runtime.latest('g')), { level: 2, status: 'converted' })
  const state = runtime.states.get('u1')!.state
  t.same(decode(encode(state)) as FunnelState, state)
})

t.test('time-to-convert buckets', async (t) => {
  t.equal(durationBucketOf(0), 0)
  t.equal(durationBucketOf(1_000), 0)
  t.equal(durationBucketOf(1_001), 1)
  t.equal(durationBucketOf(90 * DAY), DURATION_BUCKETS_MS.length - 1)
  t.equal(durationBucketOf(91 * DAY), DURATION_BUCKETS_MS.length, 'beyond the last bound: the open bucket')
})
