import assert from 'node:assert/strict'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { AggregateEnvelope } from '../../operators/aggregate/envelopes.ts'
import { createAggregates, groupKeyOf, OTHER, type AggregateInput, type AggregateOptions, type AggregateState } from '../../operators/aggregate/logic.ts'
import type { Emission, Operator, StepResult } from '../../operators/runtime/operator.ts'
import type { AggregateDefinition, AggregateResult, Dimension } from '../../schemas/aggregate.ts'
import { decode, encode, validator } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type Control, type EnrichedEventEnvelope, type Source } from '../../schemas/envelope.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'
import { keyGroupOf } from '../../topology/subjects.ts'

const SECOND = 1000
const MINUTE = 60 * SECOND
const HOUR = 60 * MINUTE
const DAY = 24 * HOUR
const KEY_GROUPS = 4
const envelopeSchema = validator(AggregateEnvelope, 'aggregate')
const at = (iso: string) => Date.parse(iso)

interface EventFields {
  user?: string
  event?: string
  type?: SegmentMessage['type']
  country?: string
  device?: string
  channel?: string
  bot?: boolean
  noContext?: boolean
  source?: Source
  project?: string
  seq?: number
}

let nextSeq = 0
function eventAt(time: number, fields: EventFields = {}): AggregateInput {
  const user = fields.user ?? 'u1'
  const type = fields.type ?? 'track'
  const seq = fields.seq ?? ++nextSeq
  const messageId = `m-${seq}`
  const message: SegmentMessage = {
    type, messageId, userId: user, timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString(),
    ...(type === 'track' ? { event: fields.event ?? 'Clicked' } : {}),
  }
  const envelope: EnrichedEventEnvelope = {
    v: ENVELOPE_VERSION, type: 'enriched_event', project: fields.project ?? 'alpha', id: messageId, time, key: user,
    keyGroup: keyGroupOf(user, KEY_GROUPS), source: fields.source ?? 'live', origin: { stream: 'SEG_RAW', seq },
    data: {
      name: type === 'track' ? fields.event ?? 'Clicked' : `$${type}`, canonicalId: user, message,
      ...(fields.noContext ? {} : {
        context: {
          device: { type: fields.device ?? 'desktop' },
          acquisition: { channel: fields.channel ?? 'direct' },
          ...(fields.country ? { geo: { country: fields.country } } : {}),
          bot: fields.bot ?? false,
        },
      }),
    },
  }
  return { envelope, origin: { stream: 'SEG_ENRICHED', seq } }
}

/** The i-th of a list of user ids that all live in key group 0: their events make one partial. */
const neighbours: string[] = []
function neighbour(i: number): string {
  for (let n = neighbours.length === 0 ? 0 : Number(neighbours.at(-1)!.slice(1)) + 1; neighbours.length <= i; n++) {
    if (keyGroupOf(`n${n}`, KEY_GROUPS) === 0) neighbours.push(`n${n}`)
  }
  return neighbours[i]!
}

const controlOf = (name: string, version: number, definition: AggregateDefinition | null): Control => ({ stepId: 'aggregates', name, version, definition })

/** What must hold of every emission: the stage, the routing by group key, the schema, the id. */
function problemsOf(emission: Emission): string[] {
  const envelope = emission.envelope as unknown as AggregateEnvelope
  const problems = envelopeSchema.problems(envelope)
  if ((emission.stage as string) !== 'aggregates') problems.push(`stage ${emission.stage}`)
  if (emission.project !== envelope.project) problems.push('project')
  if (emission.keyGroup !== keyGroupOf(envelope.key, KEY_GROUPS) || envelope.keyGroup !== emission.keyGroup) problems.push('not routed by the group key')
  const data = envelope.data
  const values = Object.values(data.dimensions)
  if (envelope.key !== groupKeyOf({ definition: data.definition, definitionVersion: data.definitionVersion, start: data.window.start }, data.name, values)) problems.push(`key ${envelope.key}`)
  if (envelope.id !== `aggregate:${envelope.key}:${data.partition.source}:${data.partition.keyGroup}:${data.version}`) problems.push(`id ${envelope.id}`)
  if (envelope.time !== data.window.start || envelope.source !== data.partition.source) problems.push('time or source')
  if (data.distinctUsers > data.count) problems.push('more users than events')
  return problems
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !ArrayBuffer.isView(value) && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const inner of Object.values(value)) deepFreeze(inner)
  }
  return value
}

/**
 * The runtime in miniature (operators/runtime/kernel.ts): state per (key group, project, key),
 * watermarks per (key group, project, source) = largest event time − lateness, the definitions per
 * (key group, project) from control messages, and after each input the timers of its watermark
 * that are due. States are frozen before the logic sees them, or go through msgpack; the logic must
 * not change a state it was given (checked on the bytes, sketches included).
 */
class MiniRuntime {
  states = new Map<string, { state: AggregateState; wakeAt?: number; kg: number; project: string; source: Source }>()
  largest = new Map<string, number>()
  control = new Map<string, unknown>()
  readonly operator: Operator<AggregateState, AggregateInput>
  readonly lateness: number
  readonly roundTrip: boolean
  constructor(options: Partial<AggregateOptions> & { timezone?: string; lateness?: number; roundTrip?: boolean } = {}) {
    this.operator = createAggregates({ keyGroups: KEY_GROUPS, timezoneOf: () => options.timezone ?? 'UTC', ...options })
    this.lateness = options.lateness ?? 5 * MINUTE
    this.roundTrip = options.roundTrip ?? false
  }

  watermarkOf(kg: number, project: string, source: Source): number {
    const largest = this.largest.get(`${kg}|${project}|${source}`)
    return largest === undefined ? Number.NEGATIVE_INFINITY : largest - this.lateness
  }

  private store(id: string, where: { kg: number; project: string; source: Source }, before: AggregateState, result: StepResult<AggregateState>, bytesBefore: Uint8Array | undefined): Emission[] {
    if (bytesBefore && Buffer.compare(Buffer.from(encode(before)), Buffer.from(bytesBefore)) !== 0) throw new Error('the logic changed the state it was given')
    if (result.state === undefined) this.states.delete(id)
    else {
      const state = this.roundTrip ? (decode(encode(result.state)) as AggregateState) : deepFreeze(result.state)
      this.states.set(id, { state, ...where, ...(result.wakeAt === undefined ? {} : { wakeAt: result.wakeAt }) })
    }
    return result.emit
  }

  input(input: AggregateInput): { emit: Emission[]; late: boolean } {
    const { envelope } = input
    const kg = envelope.keyGroup
    const where = { kg, project: envelope.project, source: envelope.source }
    const id = `${kg}|${envelope.project}/${this.operator.keyOf(input)}`
    const state = this.states.get(id)?.state ?? this.operator.init()
    const bytes = encode(state)
    const watermark = this.watermarkOf(kg, envelope.project, envelope.source)
    const result = this.operator.onEvent(state, input, { eventTime: envelope.time, watermark, source: envelope.source, control: this.control.get(`${kg}|${envelope.project}`) })
    const emit = this.store(id, where, state, result, bytes)
    const name = `${kg}|${envelope.project}|${envelope.source}`
    this.largest.set(name, Math.max(this.largest.get(name) ?? Number.NEGATIVE_INFINITY, envelope.time))
    emit.push(...this.fire(where, this.watermarkOf(kg, envelope.project, envelope.source)))
    return { emit, late: result.late === true }
  }

  /** Timers of one watermark that are due, earliest first (as the kernel's heap). */
  fire(where: { kg: number; project: string; source: Source }, watermark: number, force = false): Emission[] {
    const emit: Emission[] = []
    for (;;) {
      const due = [...this.states].filter(([, entry]) => entry.kg === where.kg && entry.project === where.project && entry.source === where.source
        && (force || (entry.wakeAt !== undefined && entry.wakeAt <= watermark)))
        .sort(([a, x], [b, y]) => (x.wakeAt ?? 0) - (y.wakeAt ?? 0) || (a < b ? -1 : 1))
      if (due.length === 0) return emit
      for (const [id, entry] of due) {
        const bytes = encode(entry.state)
        emit.push(...this.store(id, where, entry.state, this.operator.onTimer!(entry.state, watermark), bytes))
        if (this.states.get(id)?.wakeAt !== undefined && this.states.get(id)!.wakeAt! <= watermark) throw new Error(`${id} set a timer it has already reached`)
      }
      if (force) return emit
    }
  }

  /** The watermark of every key group and source jumps to `to`: everything before it closes. */
  jump(to: number): Emission[] {
    const emit: Emission[] = []
    const wheres = new Map([...this.states.values()].map((entry) => [`${entry.kg}|${entry.project}|${entry.source}`, { kg: entry.kg, project: entry.project, source: entry.source }]))
    for (const [name, where] of [...wheres].sort(([a], [b]) => (a < b ? -1 : 1))) {
      this.largest.set(name, Math.max(this.largest.get(name) ?? Number.NEGATIVE_INFINITY, to + this.lateness))
      emit.push(...this.fire(where, to))
    }
    return emit
  }

  /** A control message reaches every key group. */
  define(project: string, control: Control) {
    for (let kg = 0; kg < KEY_GROUPS; kg++) this.control.set(`${kg}|${project}`, this.operator.onControl!(this.control.get(`${kg}|${project}`), control))
  }

  /** What the runtime checkpoints, through msgpack; and back. */
  checkpoint(): Uint8Array {
    return encode({ states: [...this.states], largest: [...this.largest], control: [...this.control] })
  }

  restore(bytes: Uint8Array) {
    const saved = decode(bytes) as { states: [string, never][]; largest: [string, number][]; control: [string, unknown][] }
    this.states = new Map(saved.states)
    this.largest = new Map(saved.largest)
    this.control = new Map(saved.control)
  }
}

/**
 * The rollup as a sink keeps it: per partial the highest version, and per window and group the
 * sum over its partials. A version seen twice (a replay) must carry the same result.
 */
class Rollup {
  readonly partials = new Map<string, AggregateResult>()
  readonly seen = new Map<string, string>()
  apply(t: Test | undefined, emissions: Emission[]) {
    for (const emission of emissions) {
      const problems = problemsOf(emission)
      if (problems.length > 0) {
        if (t) t.fail(`${emission.envelope.id}: ${problems.join('; ')}`)
        else throw new Error(`${emission.envelope.id}: ${problems.join('; ')}`)
      }
      const envelope = emission.envelope as unknown as AggregateEnvelope
      const json = JSON.stringify(envelope.data)
      const earlier = this.seen.get(envelope.id)
      if (earlier !== undefined && earlier !== json) throw new Error(`${envelope.id} published twice with different results`)
      this.seen.set(envelope.id, json)
      const partial = `${envelope.key}|${envelope.data.partition.source}|${envelope.data.partition.keyGroup}`
      const current = this.partials.get(partial)
      if (!current || current.version < envelope.data.version) this.partials.set(partial, envelope.data)
    }
  }

  totals() {
    const totals = new Map<string, { result: AggregateResult; count: number; distinctUsers: number; exact: boolean; final: boolean; partials: number }>()
    for (const [partial, result] of this.partials) {
      const key = partial.slice(0, partial.lastIndexOf('|', partial.lastIndexOf('|') - 1))
      const total = totals.get(key) ?? { result, count: 0, distinctUsers: 0, exact: true, final: true, partials: 0 }
      totals.set(key, {
        result, count: total.count + result.count, distinctUsers: total.distinctUsers + result.distinctUsers,
        exact: total.exact && result.exact, final: total.final && result.final, partials: total.partials + 1,
      })
    }
    return totals
  }
}

const results = (emissions: Emission[]) => emissions.map((emission) => (emission.envelope as unknown as AggregateEnvelope).data)
const brief = (result: AggregateResult) =>
  `${result.definition} ${new Date(result.window.start).toISOString()} ${result.name} ${Object.values(result.dimensions).join('/')} n=${result.count} u=${result.distinctUsers} v${result.version}${result.final ? ' final' : ''}`

t.test('toInput, keyOf and init: partial aggregates per source and event name', async (t) => {
  const operator = createAggregates({ keyGroups: KEY_GROUPS, timezoneOf: () => 'UTC' })
  t.equal(operator.stepId, 'aggregates')
  const input = eventAt(0, { event: 'Signed Up', source: 'import' })
  t.same(operator.toInput(input.envelope, input.origin), input)
  t.equal(operator.keyOf(input), 'import\u0000Signed Up')
  t.throws(() => operator.toInput({ ...input.envelope, type: 'control' } as never, input.origin), /aggregates reads enriched_event messages, got control/)
  t.same(operator.init().windows, [])
})

t.test('the default definitions: per name, per local day and hour, by country and device; final when the watermark passes the end', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'Europe/Berlin' })
  const rollup = new Rollup()
  const T = at('2019-04-30T22:30:00Z') // 00:30 on May 1st in Berlin
  const [u1, u2, u3, u4] = [neighbour(0), neighbour(1), neighbour(2), neighbour(3)]
  const out = [
    runtime.input(eventAt(T, { user: u1, country: 'DE' })),
    runtime.input(eventAt(T + 5 * SECOND, { user: u1, country: 'DE' })),
    runtime.input(eventAt(T + 10 * SECOND, { user: u2, country: 'DE' })),
    runtime.input(eventAt(T + 20 * SECOND, { user: u3, country: 'FR', device: 'mobile' })),
  ]
  t.same(out.flatMap((step) => step.emit), [], 'nothing yet: early results wait for the next minute of event time')
  t.notOk(out.some((step) => step.late))
  // a later event crosses the minute: the early results of the windows it changed go out, not final
  const early = runtime.input(eventAt(T + 70 * SECOND, { user: u4, country: 'DE', event: 'Other' }))
  rollup.apply(t, early.emit)
  t.same(results(early.emit), [], 'another event name is another key: its own windows, its own minute')
  const crossing = runtime.input(eventAt(T + 61 * SECOND, { user: u2, country: 'DE' }))
  rollup.apply(t, crossing.emit)
  t.same(results(crossing.emit).map(brief).sort(), [
    'events-per-day 2019-04-30T22:00:00.000Z Clicked DE/desktop n=4 u=2 v1',
    'events-per-day 2019-04-30T22:00:00.000Z Clicked FR/mobile n=1 u=1 v1',
    'events-per-hour 2019-04-30T22:00:00.000Z Clicked DE/desktop n=4 u=2 v1',
    'events-per-hour 2019-04-30T22:00:00.000Z Clicked FR/mobile n=1 u=1 v1',
  ], 'the day of May 1st in Berlin starts 2019-04-30T22:00Z')
  const day = results(crossing.emit).find((result) => result.definition === 'events-per-day')!
  t.same(day.window, { kind: 'day', start: at('2019-04-30T22:00:00Z'), end: at('2019-05-01T22:00:00Z') })
  t.same(day.dimensions, { country: 'DE', deviceType: 'desktop' })
  t.same(day.partition, { keyGroup: 0, source: 'live' })
  // the hour ends at 23:00Z: the watermark (largest event time − 5 minutes) passes it at an event of 23:05Z
  const finals = runtime.input(eventAt(at('2019-04-30T23:05:00Z'), { user: 'u9', event: 'Clicked' }))
  rollup.apply(t, finals.emit)
  const keyGroupOfU9 = keyGroupOf('u9', KEY_GROUPS)
  const finalHours = results(finals.emit).filter((result) => result.definition === 'events-per-hour' && result.final)
  t.ok(finalHours.every((result) => result.partition.keyGroup === keyGroupOfU9), 'only the key group whose watermark moved closes its windows')
  // every key group's watermark passes the day's end: all final
  rollup.apply(t, runtime.jump(at('2019-05-02T00:00:00Z')))
  const totals = [...rollup.totals().values()].map((total) => `${total.result.definition} ${total.result.name} ${Object.values(total.result.dimensions).join('/')} n=${total.count} u=${total.distinctUsers}${total.exact ? ' exact' : ''}${total.final ? ' final' : ''}`).sort()
  t.same(totals, [
    'events-per-day Clicked /desktop n=1 u=1 exact final',
    'events-per-day Clicked DE/desktop n=4 u=2 exact final',
    'events-per-day Clicked FR/mobile n=1 u=1 exact final',
    'events-per-day Other DE/desktop n=1 u=1 exact final',
    'events-per-hour Clicked /desktop n=1 u=1 exact final',
    'events-per-hour Clicked DE/desktop n=4 u=2 exact final',
    'events-per-hour Clicked FR/mobile n=1 u=1 exact final',
    'events-per-hour Other DE/desktop n=1 u=1 exact final',
  ], 'u1 twice and u2 twice: 4 events, 2 users; an event without geo has country ""')
  t.equal(runtime.states.size, 0, 'windows past their allowed lateness leave; a key with none is dropped')
})

t.test('2019-04-30T22:30Z is May 1st in Europe/Berlin and April 30th in UTC', async (t) => {
  for (const [timezone, start] of [['Europe/Berlin', '2019-04-30T22:00:00Z'], ['UTC', '2019-04-30T00:00:00Z']] as const) {
    const runtime = new MiniRuntime({ timezone })
    runtime.input(eventAt(at('2019-04-30T22:30:00Z')))
    const [day] = results(runtime.jump(at('2019-06-01T00:00:00Z'))).filter((result) => result.definition === 'events-per-day')
    t.equal(day!.window.start, at(start), timezone)
  }
})

t.test('DST in Europe/Berlin: the day of the clock change has 23 (or 25) hour windows, each one real hour', async (t) => {
  for (const [day, hours] of [['2019-03-31', 23], ['2019-10-27', 25]] as const) {
    const runtime = new MiniRuntime({ timezone: 'Europe/Berlin' })
    const start = at(`${day}T00:00:00+01:00`.replace('+01:00', day === '2019-03-31' ? '+01:00' : '+02:00'))
    const published: Emission[] = []
    for (let minute = 0; minute < hours * 60; minute += 30) published.push(...runtime.input(eventAt(start + minute * MINUTE)).emit)
    published.push(...runtime.jump(at('2019-12-01T00:00:00Z')))
    const finals = results(published).filter((result) => result.final)
    const hourly = finals.filter((result) => result.definition === 'events-per-hour')
    t.equal(hourly.length, hours, `${day}: ${hours} hours`)
    t.ok(hourly.every((result) => result.window.end - result.window.start === HOUR && result.count === 2), 'each an hour with its two events')
    const daily = finals.filter((result) => result.definition === 'events-per-day')
    t.same(daily.map((result) => [result.count, (result.window.end - result.window.start) / HOUR]), [[hours * 2, hours]], 'one day of that many hours')
  }
})

t.test('early results are coalesced: at most one per window and group per minute of event time', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC', lateness: 10 * MINUTE })
  const T = at('2024-05-10T10:00:00Z')
  const published: AggregateResult[] = []
  for (let second = 0; second < 300; second += 5) published.push(...results(runtime.input(eventAt(T + second * SECOND)).emit))
  const hourly = published.filter((result) => result.definition === 'events-per-hour')
  t.same(hourly.map((result) => [result.count, result.version, result.final]), [[13, 1, false], [25, 2, false], [37, 3, false], [49, 4, false]],
    'one result at each minute crossed, with every event up to the one that crossed it')
  // traffic stops: the watermark reaches the next minute, and the rest goes out
  const timer = results(runtime.jump(T + 6 * MINUTE)).filter((result) => result.definition === 'events-per-hour')
  t.same(timer.map((result) => [result.count, result.version, result.final]), [[60, 5, false]])
  t.same(results(runtime.jump(T + 7 * MINUTE)), [], 'nothing changed: nothing published')
})

t.test('earlyEveryMs 0: no early results, only the final one', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC' })
  runtime.define('alpha', controlOf('per-minute', 1, { window: { kind: 'tumbling', unit: 'minute' }, dimensions: [], earlyEveryMs: 0, allowedLatenessMs: 2 * MINUTE }))
  runtime.define('alpha', controlOf('events-per-day', 1, null))
  runtime.define('alpha', controlOf('events-per-hour', 1, null))
  const T = at('2024-05-10T10:00:00Z')
  const out: AggregateResult[] = []
  for (let second = 0; second < 180; second += 10) out.push(...results(runtime.input(eventAt(T + second * SECOND)).emit))
  t.same(out, [], 'the watermark (5 minutes behind) has passed no minute yet')
  out.push(...results(runtime.input(eventAt(T + 6 * MINUTE + 30 * SECOND)).emit))
  t.same(out.map((result) => [new Date(result.window.start).toISOString().slice(11, 16), result.count, result.version, result.final]), [['10:00', 6, 1, true]],
    'the watermark is now 10:01:30: the 10:00 minute is final, the others wait')
})

t.test('late events: a correction within the allowed lateness, late: true beyond, per window', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC', lateness: 0 })
  const rollup = new Rollup()
  const T = at('2024-05-10T10:00:00Z')
  rollup.apply(t, runtime.input(eventAt(T + 10 * MINUTE, { user: 'a' })).emit)
  // same key group throughout (user a), so one watermark
  const next = runtime.input(eventAt(T + HOUR + 1, { user: 'a' }))
  rollup.apply(t, next.emit)
  t.same(results(next.emit).map(brief), [
    'events-per-day 2024-05-10T00:00:00.000Z Clicked /desktop n=2 u=1 v1',
    'events-per-hour 2024-05-10T10:00:00.000Z Clicked /desktop n=1 u=1 v1',
    'events-per-hour 2024-05-10T10:00:00.000Z Clicked /desktop n=1 u=1 v2 final',
  ], 'early results were due (event time crossed 10:11); then the watermark passed 11:00 and the hour is final')
  // 11:00 + 30 minutes: the 10:00 hour is final but within its hour of allowed lateness
  const correction = runtime.input(eventAt(T + 20 * MINUTE, { user: 'a', seq: 1000 }))
  t.notOk(correction.late)
  t.same(results(correction.emit), [], 'corrections are coalesced too')
  rollup.apply(t, correction.emit)
  const moved = runtime.input(eventAt(T + HOUR + 2 * MINUTE, { user: 'a' }))
  rollup.apply(t, moved.emit)
  t.same(results(moved.emit).filter((result) => result.window.start === T).map(brief), ['events-per-hour 2024-05-10T10:00:00.000Z Clicked /desktop n=2 u=1 v3 final'],
    'a corrected final result, a higher version, once event time crossed the minute')
  // the watermark passes 11:00 + 1 h: the 10:00 hour is closed for good
  rollup.apply(t, runtime.input(eventAt(T + 2 * HOUR + 5 * MINUTE, { user: 'a' })).emit)
  const tooLate = runtime.input(eventAt(T + 30 * MINUTE, { user: 'a' }))
  t.ok(tooLate.late, 'late: the runtime publishes it on the late subject')
  rollup.apply(t, tooLate.emit)
  rollup.apply(t, runtime.jump(at('2024-05-12T00:00:00Z')))
  const totals = [...rollup.totals().values()].map((total) => `${total.result.definition} ${new Date(total.result.window.start).toISOString().slice(11, 16)} n=${total.count}`).sort()
  t.same(totals, ['events-per-day 00:00 n=6', 'events-per-hour 10:00 n=2', 'events-per-hour 11:00 n=2', 'events-per-hour 12:00 n=1'],
    'the too-late event still counts in its day, whose window was open: late means it missed at least one window')
  const never = runtime.input(eventAt(T, { user: 'a' }))
  t.ok(never.late)
  t.equal(runtime.states.size, 0, 'a late event opens no window and keeps no state')
})

t.test('a correction still waiting for its minute goes out when its window closes', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC', lateness: 0 })
  runtime.define('alpha', controlOf('hourly', 1, { window: { kind: 'tumbling', unit: 'hour' }, dimensions: [], allowedLatenessMs: 10 * MINUTE, earlyEveryMs: HOUR }))
  const T = at('2024-05-10T10:00:00Z')
  const hourly = (emit: Emission[]) => results(emit).filter((result) => result.definition === 'hourly').map((result) => `${result.count} v${result.version}${result.final ? ' final' : ''}`)
  runtime.input(eventAt(T + 10 * MINUTE, { user: 'a' }))
  t.same(hourly(runtime.input(eventAt(T + 65 * MINUTE, { user: 'a' })).emit), ['1 v1', '1 v2 final'])
  t.same(hourly(runtime.input(eventAt(T + 30 * MINUTE, { user: 'a' })).emit), [], 'a correction, due at 12:00 of event time')
  t.same(hourly(runtime.input(eventAt(T + 80 * MINUTE, { user: 'a' })).emit), ['2 v3 final'], 'the watermark passed 11:10: the window closes, its correction published first')
})

t.test('bots are not counted unless a definition says so; names can be filtered', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC' })
  runtime.define('alpha', controlOf('signups', 1, { window: { kind: 'tumbling', unit: 'day' }, dimensions: ['channel'], events: ['Signed Up'], countBots: true }))
  const T = at('2024-05-10T10:00:00Z')
  runtime.input(eventAt(T, { user: 'crawler', bot: true }))
  t.equal(runtime.states.size, 0, 'a bot event no definition counts: no state')
  runtime.input(eventAt(T, { user: 'crawler', bot: true, event: 'Signed Up', channel: 'email' }))
  runtime.input(eventAt(T, { user: 'human', event: 'Signed Up', channel: 'email' }))
  const finals = results(runtime.jump(at('2024-05-12T00:00:00Z')))
  t.same(finals.map((result) => `${result.definition} ${result.name} ${JSON.stringify(result.dimensions)} n=${result.count}`).sort(), [
    'events-per-day Signed Up {"country":"","deviceType":"desktop"} n=1',
    'events-per-hour Signed Up {"country":"","deviceType":"desktop"} n=1',
    'signups Signed Up {"channel":"email"} n=1',
    'signups Signed Up {"channel":"email"} n=1',
  ], 'the bot only in the definition that counts bots (in its own key group)')
})

t.test('a definition change applies from its position: windows of the old version close with what they had', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC' })
  const rollup = new Rollup()
  const T = at('2024-05-10T10:00:00Z')
  rollup.apply(t, runtime.input(eventAt(T, { country: 'DE' })).emit)
  runtime.define('alpha', controlOf('events-per-hour', 1, { window: { kind: 'tumbling', unit: 'hour' }, dimensions: ['channel'] }))
  runtime.define('alpha', controlOf('events-per-day', 1, null))
  rollup.apply(t, runtime.input(eventAt(T + MINUTE, { country: 'DE', channel: 'email' })).emit)
  rollup.apply(t, runtime.jump(at('2024-05-12T00:00:00Z')))
  const totals = [...rollup.totals().values()].map((total) => `${total.result.definition}@${total.result.definitionVersion} ${JSON.stringify(total.result.dimensions)} n=${total.count}`).sort()
  t.same(totals, ['events-per-day@0 {"country":"DE","deviceType":"desktop"} n=1', 'events-per-hour@0 {"country":"DE","deviceType":"desktop"} n=1', 'events-per-hour@1 {"channel":"email"} n=1'])
  t.throws(() => runtime.define('alpha', controlOf('broken', 1, { window: { kind: 'hopping', sizeMs: MINUTE, hopMs: HOUR }, dimensions: [] })), /larger than sizeMs/,
    'an invalid definition throws in onControl: the kernel dead-letters the control message')
})

t.test('hopping windows: an event counts in every window that contains it', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC' })
  runtime.define('alpha', controlOf('rolling-hour', 1, { window: { kind: 'hopping', sizeMs: HOUR, hopMs: 15 * MINUTE }, dimensions: [] }))
  const T = at('2024-05-10T10:00:00Z')
  const rollup = new Rollup()
  for (const minute of [0, 20, 40, 50, 70]) rollup.apply(t, runtime.input(eventAt(T + minute * MINUTE, { user: `u${minute}` })).emit)
  rollup.apply(t, runtime.jump(at('2024-05-12T00:00:00Z')))
  const rolling = [...rollup.totals().values()].filter((total) => total.result.definition === 'rolling-hour').sort((a, b) => a.result.window.start - b.result.window.start)
  t.same(rolling.map((total) => `${new Date(total.result.window.start).toISOString().slice(11, 16)} n=${total.count} u=${total.distinctUsers}`), [
    '09:15 n=1 u=1', '09:30 n=2 u=2', '09:45 n=3 u=3', '10:00 n=4 u=4', '10:15 n=4 u=4', '10:30 n=3 u=3', '10:45 n=2 u=2', '11:00 n=1 u=1',
  ])
})

t.test('distinct users past the exact limit: a HyperLogLog estimate, exact false; partials of several key groups sum', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC', exactLimit: 10 })
  const rollup = new Rollup()
  const T = at('2024-05-10T10:00:00Z')
  for (let i = 0; i < 200; i++) rollup.apply(t, runtime.input(eventAt(T + i * SECOND, { user: `user-${i % 100}` })).emit)
  rollup.apply(t, runtime.jump(at('2024-05-12T00:00:00Z')))
  const day = [...rollup.totals().values()].find((total) => total.result.definition === 'events-per-day')!
  t.equal(day.count, 200)
  t.equal(day.partials, KEY_GROUPS, 'one partial per key group')
  t.equal(day.exact, false)
  t.ok(Math.abs(day.distinctUsers - 100) <= 3, `about 100 users: ${day.distinctUsers}`)
  const small = new MiniRuntime({ timezone: 'UTC' })
  const exactRollup = new Rollup()
  for (let i = 0; i < 200; i++) small.input(eventAt(T + i * SECOND, { user: `user-${i % 100}` }))
  exactRollup.apply(t, small.jump(at('2024-05-12T00:00:00Z')))
  const exactDay = [...exactRollup.totals().values()].find((total) => total.result.definition === 'events-per-day')!
  t.same([exactDay.distinctUsers, exactDay.exact], [100, true], 'users are disjoint across key groups: the sum of exact partials is exact')
})

t.test('groups per window are bounded: past the bound, the $other group', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC', maxGroupsPerWindow: 3 })
  const T = at('2024-05-10T10:00:00Z')
  for (const country of ['DE', 'FR', 'IT', 'ES', 'PL', 'DE']) runtime.input(eventAt(T, { user: 'same-user', country }))
  const day = results(runtime.jump(at('2024-05-12T00:00:00Z'))).filter((result) => result.definition === 'events-per-day')
  t.same(day.map((result) => `${result.dimensions.country}/${result.dimensions.deviceType} n=${result.count}`), [`${OTHER}/${OTHER} n=2`, 'DE/desktop n=2', 'FR/desktop n=1', 'IT/desktop n=1'])
})

t.test('sources have their own keys and watermarks: an import of 2019 beside live traffic of 2024', async (t) => {
  const runtime = new MiniRuntime({ timezone: 'UTC' })
  const live = at('2024-05-10T10:00:00Z')
  const history = at('2019-05-01T10:00:00Z')
  runtime.input(eventAt(live, { user: 'u1' }))
  runtime.input(eventAt(history, { user: 'u1', source: 'import' }))
  t.equal(runtime.states.size, 2)
  const liveMore = runtime.input(eventAt(live + 2 * DAY, { user: 'u1' }))
  t.notOk(results(liveMore.emit).some((result) => result.partition.source === 'import'), 'the live watermark closes no imported window')
  t.ok(results(liveMore.emit).some((result) => result.partition.source === 'live' && result.final))
  const importMore = runtime.input(eventAt(history + 2 * DAY, { user: 'u1', source: 'import' }))
  t.same(results(importMore.emit).filter((result) => result.final).map((result) => [result.partition.source, new Date(result.window.start).toISOString().slice(0, 10)]),
    [['import', '2019-05-01'], ['import', '2019-05-01']], 'the import closes its own 2019 windows')
})

t.test('a watermark that goes back (a lateness raised) reopens nothing', async (t) => {
  const operator = createAggregates({ keyGroups: KEY_GROUPS, timezoneOf: () => 'UTC' })
  const T = at('2024-05-10T10:00:00Z')
  const context = (watermark: number) => ({ eventTime: 0, watermark, source: 'live' as const, control: undefined })
  let result = operator.onEvent(operator.init(), eventAt(T + 3 * HOUR), context(T + 3 * HOUR))
  result = operator.onEvent(result.state!, eventAt(T), context(T))
  t.ok(result.late, 'the hour closed at the higher watermark stays closed')
})

t.test('state: plain data through msgpack, bounded, and the size of a busy key', async (t) => {
  const operator = createAggregates({ keyGroups: KEY_GROUPS, timezoneOf: () => 'Europe/Berlin' })
  const T = at('2024-05-10T10:00:00Z')
  let state = operator.init()
  const countries = ['DE', 'FR', 'US', 'GB', 'IT', 'ES', 'PL', 'NL', 'SE', 'AT']
  const devices = ['desktop', 'mobile', 'tablet']
  // one key: 2,000 users in 30 groups over two hours, every user in one group
  for (let i = 0; i < 6000; i++) {
    const user = i % 2000
    const input = eventAt(T + i * SECOND, { user: `user-${user}`, country: countries[user % 10], device: devices[Math.floor(user / 10) % 3] })
    state = operator.onEvent(state, input, { eventTime: input.envelope.time, watermark: T + i * SECOND - 5 * MINUTE, source: 'live', control: undefined }).state!
  }
  const bytes = encode(state)
  t.same(decode(bytes), decode(encode(decode(bytes))), 'msgpack round trip')
  t.equal(state.windows.length, 3, 'the day and two hours (10:00 final, within its lateness, and 11:00)')
  t.comment(`a key with 30 groups of about 67 users in 3 windows (6,000 user ids): ${(bytes.length / 1024).toFixed(1)} KiB of msgpack`)
  t.ok(bytes.length < 6000 * 10 + 30 * 3 * 100, 'about 9 bytes an id, and a little per group')
})

t.test('an early timer, or a timer with nothing due, changes nothing and emits nothing', async (t) => {
  const operator = createAggregates({ keyGroups: KEY_GROUPS, timezoneOf: () => 'UTC' })
  const T = at('2024-05-10T10:00:00Z')
  const result = operator.onEvent(operator.init(), eventAt(T), { eventTime: T, watermark: T - 5 * MINUTE, source: 'live', control: undefined })
  t.equal(result.wakeAt, T + MINUTE, 'the next early publication')
  const early = operator.onTimer!(result.state!, T)
  t.same(early.emit, [])
  t.equal(early.wakeAt, T + MINUTE)
})

// ---------------------------------------------------------------------------------------------
// The property: random logs, arriving shuffled, late and replayed after crashes, against a
// recomputation that shares nothing with the operator but the definitions' meaning.

const TIMEZONES = ['Europe/Berlin', 'America/New_York', 'Asia/Kolkata', 'Pacific/Apia', 'UTC']
const BASES = ['2019-03-30T12:00:00Z', '2019-04-30T12:00:00Z', '2019-10-26T12:00:00Z', '2024-01-01T00:00:00Z'].map(at)

interface LogEvent {
  offsetMinutes: number
  second: number
  user: number
  event: string
  country?: string
  device: string
  channel: string
  bot: boolean
  source: Source
  /** Minutes it arrives after its event time (most arrive in order). */
  delayMinutes: number
}

const logEvent = (spanMinutes: number) => fc.record({
  offsetMinutes: fc.integer({ min: 0, max: spanMinutes }),
  second: fc.integer({ min: 0, max: 59 }),
  user: fc.integer({ min: 0, max: 5 }),
  event: fc.constantFrom('Clicked', '$page', 'Signed Up'),
  country: fc.option(fc.constantFrom('DE', 'FR'), { nil: undefined, freq: 4 }),
  device: fc.constantFrom('desktop', 'desktop', 'mobile'),
  channel: fc.constantFrom('direct', 'email'),
  bot: fc.integer({ min: 0, max: 19 }).map((n) => n === 0),
  source: fc.constantFrom<Source>('live', 'live', 'live', 'import'),
  // most in order, some a little late, some around the hour of allowed lateness, some hours late
  delayMinutes: fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 30 }), fc.integer({ min: 30, max: 150 }), fc.integer({ min: 0, max: 8 * 60 })),
})

const extraDefinition: fc.Arbitrary<AggregateDefinition> = fc.record({
  window: fc.oneof(
    fc.constant({ kind: 'tumbling' as const, unit: 'minute' as const }),
    fc.constant({ kind: 'tumbling' as const, unit: 'day' as const }),
    fc.constantFrom(1, 2, 3, 4).map((ratio) => ({ kind: 'hopping' as const, sizeMs: ratio * 20 * MINUTE, hopMs: 20 * MINUTE })),
  ),
  dimensions: fc.subarray<Dimension>(['channel', 'deviceType', 'country'], { maxLength: 2 }),
  events: fc.option(fc.subarray(['Clicked', '$page', 'Signed Up'], { minLength: 1 }), { nil: undefined }),
  allowedLatenessMs: fc.constantFrom(0, 10 * MINUTE, HOUR, 6 * HOUR),
  earlyEveryMs: fc.constantFrom(0, 10 * SECOND, MINUTE),
  countBots: fc.boolean(),
}).map((definition) => {
  // optional fields left out rather than undefined, as a control message would carry them
  const { events, ...rest } = definition
  return events === undefined ? rest : { ...rest, events }
})

const scenario = fc.record({
  timezone: fc.constantFrom(...TIMEZONES),
  base: fc.constantFrom(...BASES),
  lateness: fc.constantFrom(0, MINUTE, 5 * MINUTE, 20 * MINUTE),
  exactLimit: fc.constantFrom(3, 512),
  roundTrip: fc.boolean(),
  extra: fc.option(extraDefinition, { nil: undefined }),
  /** Replace the hourly default, at some point of the log, by this version 1 (or delete it). */
  change: fc.option(fc.record({ at: fc.nat(), definition: fc.option(extraDefinition, { nil: null }) }), { nil: undefined }),
  log: fc.tuple(fc.constantFrom(3 * 60, 12 * 60, 48 * 60), fc.boolean()).chain(([span, dense]): fc.Arbitrary<LogEvent[]> => fc.array(logEvent(span), { minLength: 1, maxLength: 50, size: 'max' })
    // dense: few users and groups, so that late events correct results already final
    .map((log) => (dense ? log.map((event): LogEvent => ({ ...event, user: event.user % 2, event: 'Clicked', country: 'DE', device: 'desktop' })) : log))),
  /** Crashes: at `from` a checkpoint, at `to` the runtime goes back to it and replays. */
  crashes: fc.array(fc.record({ from: fc.nat(), length: fc.integer({ min: 1, max: 20 }) }), { maxLength: 2 }),
})
type Scenario = typeof scenario extends fc.Arbitrary<infer T> ? T : never

const timeOf = (scenario: Scenario, event: LogEvent) => scenario.base + event.offsetMinutes * MINUTE + event.second * SECOND
const userOf = (event: LogEvent) => `user-${event.user}`
const inputOf = (scenario: Scenario, event: LogEvent, index: number) =>
  eventAt(timeOf(scenario, event), { user: userOf(event), event: event.event, country: event.country, device: event.device, channel: event.channel, bot: event.bot, source: event.source, seq: index + 1 })

/** The wall clock in a timezone as `YYYY-MM-DD HH:mm`, straight from Intl. */
const clocks = new Map<string, Intl.DateTimeFormat>()
function wallClock(time: number, timezone: string): string {
  let format = clocks.get(timezone)
  if (!format) {
    format = new Intl.DateTimeFormat('en-CA', { timeZone: timezone, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' })
    clocks.set(timezone, format)
  }
  const parts = Object.fromEntries(format.formatToParts(time).map((part) => [part.type, part.value]))
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}`
}

/** Reference windows: found by walking the wall clock minute by minute, not by the calendar code. */
const referenceCache = new Map<string, { start: number; end: number }>()
function referenceWindows(time: number, definition: AggregateDefinition, timezone: string): { start: number; end: number }[] {
  const window = definition.window
  if (window.kind === 'hopping') {
    const windows: { start: number; end: number }[] = []
    for (let start = Math.floor(time / window.hopMs) * window.hopMs; start > time - window.sizeMs; start -= window.hopMs) windows.unshift({ start, end: start + window.sizeMs })
    return windows
  }
  if (window.unit === 'minute') {
    const start = time - (((time % MINUTE) + MINUTE) % MINUTE)
    return [{ start, end: start + MINUTE }]
  }
  const minute = Math.floor(time / MINUTE) * MINUTE
  const cacheKey = `${window.unit}|${timezone}|${minute}`
  const cached = referenceCache.get(cacheKey)
  if (cached) return [cached]
  // a day: the minutes whose wall-clock date is this one; an hour: those whose date and hour are this one, cut where the clock jumps
  const label = (at: number) => (window.unit === 'day' ? wallClock(at, timezone).slice(0, 10) : wallClock(at, timezone).slice(0, 13))
  const own = label(minute)
  const step = window.unit === 'day' ? HOUR : MINUTE
  let start = minute
  while (label(start - step) === own) start -= step
  while (label(start - MINUTE) === own) start -= MINUTE
  let end = minute + MINUTE
  while (label(end + step) === own && label(end) === own) end += step
  while (label(end) === own) end += MINUTE
  // a repeated wall-clock hour (clocks back) is two windows: where the offset changes, the earlier one ends
  if (window.unit === 'hour' && end - start > HOUR) {
    if (minute - start >= HOUR) start += HOUR
    else end = start + HOUR
  }
  const bounds = { start, end }
  referenceCache.set(cacheKey, bounds)
  return [bounds]
}

interface Expected {
  count: number
  /** Per source: the sum over sources is what the partials add up to (see docs/aggregates.md). */
  users: Map<Source, Set<string>>
}

/** What the final results must be, recomputed from the log and the order it arrived in. */
function recompute(scenario: Scenario, arrival: number[]) {
  const expected = new Map<string, Expected>()
  const late = new Set<number>()
  const largest = new Map<string, number>()
  const defaults: Record<string, AggregateDefinition> = {
    'events-per-day': { window: { kind: 'tumbling', unit: 'day' }, dimensions: ['country', 'deviceType'] },
    'events-per-hour': { window: { kind: 'tumbling', unit: 'hour' }, dimensions: ['country', 'deviceType'] },
  }
  arrival.forEach((index, position) => {
    const event = scenario.log[index]!
    const time = timeOf(scenario, event)
    const definitions: [string, number, AggregateDefinition][] = [['events-per-day', 0, defaults['events-per-day']!]]
    const changed = scenario.change !== undefined && position >= scenario.change.at % (arrival.length + 1)
    if (!changed) definitions.push(['events-per-hour', 0, defaults['events-per-hour']!])
    else if (scenario.change!.definition) definitions.push(['events-per-hour', 1, scenario.change!.definition])
    if (scenario.extra) definitions.push(['extra', 1, scenario.extra])
    const stream = `${keyGroupOf(userOf(event), KEY_GROUPS)}|${event.source}`
    const watermark = (largest.get(stream) ?? Number.NEGATIVE_INFINITY) - scenario.lateness
    largest.set(stream, Math.max(largest.get(stream) ?? Number.NEGATIVE_INFINITY, time))
    for (const [name, version, definition] of definitions) {
      if (event.bot && !definition.countBots) continue
      if (definition.events && !definition.events.includes(event.event)) continue
      const values = definition.dimensions.map((dimension) =>
        dimension === 'country' ? event.country ?? '' : dimension === 'deviceType' ? event.device : dimension === 'channel' ? event.channel : '?')
      for (const window of referenceWindows(time, definition, scenario.timezone)) {
        if (watermark >= window.end + (definition.allowedLatenessMs ?? HOUR)) {
          late.add(position)
          continue
        }
        const key = `${name}@${version}|${window.start}|${window.end}|${event.event}|${values.join('|')}`
        const entry = expected.get(key) ?? { count: 0, users: new Map() }
        entry.count++
        const users = entry.users.get(event.source) ?? new Set()
        users.add(userOf(event))
        entry.users.set(event.source, users)
        expected.set(key, entry)
      }
    }
  })
  return { expected, late }
}

/** Plays the log through the miniature runtime, with crashes and replays; returns the rollup and the late flags. */
function play(scenario: Scenario, arrival: number[]) {
  const runtime = new MiniRuntime({ timezone: scenario.timezone, lateness: scenario.lateness, exactLimit: scenario.exactLimit, roundTrip: scenario.roundTrip })
  const rollup = new Rollup()
  if (scenario.extra) runtime.define('alpha', controlOf('extra', 1, scenario.extra))
  const changeAt = scenario.change === undefined ? -1 : scenario.change.at % (arrival.length + 1)
  const crashes = new Map(scenario.crashes.map((crash) => [crash.from % arrival.length, crash.length]))
  const late = new Set<number>()
  const firstRun = new Map<number, string>()
  let position = 0
  let checkpoint: { bytes: Uint8Array; position: number; crashAt: number } | undefined
  while (position < arrival.length) {
    if (!checkpoint && crashes.has(position)) {
      checkpoint = { bytes: runtime.checkpoint(), position, crashAt: Math.min(arrival.length, position + crashes.get(position)!) }
      crashes.delete(position)
    }
    if (checkpoint && position === checkpoint.crashAt) {
      // the process dies; the next owner loads the checkpoint and reads on from there
      runtime.restore(checkpoint.bytes)
      position = checkpoint.position
      checkpoint = undefined
      continue
    }
    if (position === changeAt) runtime.define('alpha', controlOf('events-per-hour', 1, scenario.change!.definition))
    const step = runtime.input(inputOf(scenario, scenario.log[arrival[position]!]!, arrival[position]!))
    // a replay publishes what the first run did, under the same ids (the rollup checks the content)
    const published = JSON.stringify([results(step.emit), step.late])
    const first = firstRun.get(position)
    if (first !== undefined && first !== published) throw new Error(`the replay of arrival ${position} published something else`)
    firstRun.set(position, published)
    rollup.apply(undefined, step.emit)
    if (step.late) late.add(position)
    position++
  }
  if (changeAt === arrival.length) runtime.define('alpha', controlOf('events-per-hour', 1, scenario.change!.definition))
  rollup.apply(undefined, runtime.jump(scenario.base + 30 * DAY))
  return { rollup, late, runtime }
}

function check(scenario: Scenario) {
  const arrival = scenario.log.map((event, index) => ({ index, at: timeOf(scenario, event) + event.delayMinutes * MINUTE }))
    .sort((a, b) => a.at - b.at || a.index - b.index).map((entry) => entry.index)
  const { rollup, late, runtime } = play(scenario, arrival)
  const reference = recompute(scenario, arrival)
  assert.deepEqual([...late].sort((a, b) => a - b), [...reference.late].sort((a, b) => a - b), 'late: the inputs that missed a window')
  const actual = new Map<string, { count: number; distinctUsers: number; exact: boolean; final: boolean }>()
  for (const total of rollup.totals().values()) {
    const result = total.result
    actual.set(`${result.definition}@${result.definitionVersion}|${result.window.start}|${result.window.end}|${result.name}|${Object.values(result.dimensions).join('|')}`, total)
  }
  assert.deepEqual([...actual.keys()].sort(), [...reference.expected.keys()].sort(), 'the same windows and groups')
  for (const [key, expected] of reference.expected) {
    const total = actual.get(key)!
    assert.equal(total.count, expected.count, `${key}: count`)
    assert.ok(total.final, `${key}: final`)
    const bySource = [...expected.users.values()]
    const users = bySource.reduce((sum, set) => sum + set.size, 0)
    if (scenario.exactLimit >= 10) {
      assert.deepEqual([total.distinctUsers, total.exact], [users, true], `${key}: distinct users`)
    } else {
      // some partial past 3 users: estimates, which for a handful of users are close to exact
      assert.ok(Math.abs(total.distinctUsers - users) <= 1 + users * 0.05, `${key}: ${total.distinctUsers} users estimated, ${users} counted`)
      const anyOver = [...expected.users.values()].some((set) => set.size > scenario.exactLimit)
      if (!anyOver) assert.equal(total.exact, true, `${key}: exact while every partial is small`)
    }
  }
  assert.equal(runtime.states.size, 0, 'every window closed and left the state')
  // every partial's versions went 1, 2, 3, ... with final ones last
  const versions = new Map<string, { version: number; final: boolean; count: number }[]>()
  for (const json of rollup.seen.values()) {
    const result = JSON.parse(json) as AggregateResult
    const partial = `${groupKeyOf({ definition: result.definition, definitionVersion: result.definitionVersion, start: result.window.start }, result.name, Object.values(result.dimensions))}|${result.partition.source}|${result.partition.keyGroup}`
    versions.set(partial, [...(versions.get(partial) ?? []), { version: result.version, final: result.final, count: result.count }])
  }
  for (const [partial, list] of versions) {
    list.sort((a, b) => a.version - b.version)
    list.forEach((entry, index) => {
      assert.equal(entry.version, index + 1, `${partial}: versions from 1 without gaps`)
      if (index > 0) {
        assert.ok(entry.count >= list[index - 1]!.count, `${partial}: counts only grow`)
        assert.ok(entry.final || !list[index - 1]!.final, `${partial}: once final, final`)
      }
    })
  }
}

t.test('property: shuffled, late and replayed logs give the final results of a brute-force recomputation', async (t) => {
  fc.assert(fc.property(scenario, (scenario) => {
    check(scenario)
    return true
  }), { numRuns: 150 })
  t.pass('150 random logs')
})

t.test('property: the same with every event arriving in a random order', async (t) => {
  const shuffled = scenario.chain((base) => fc.shuffledSubarray(base.log.map((_, index) => index), { minLength: base.log.length, maxLength: base.log.length })
    .map((order) => ({ ...base, log: order.map((index, position) => ({ ...base.log[index]!, delayMinutes: position * 7 - timeOfMinutes(base.log[index]!) })) })))
  fc.assert(fc.property(shuffled, (scenario) => {
    check(scenario)
    return true
  }), { numRuns: 100 })
  t.pass('100 random logs in random orders')
})

/** So that arrival = event time + delay puts the events in list order. */
const timeOfMinutes = (event: LogEvent) => event.offsetMinutes + event.second / 60
