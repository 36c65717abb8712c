/**
 * Test helpers for the funnel operator: inputs made from plain event records, and the runtime in
 * miniature (one key group: watermark = largest event time minus the lateness, timers fired once
 * the watermark reaches them, merges, msgpack round trips of state and definitions). Every
 * emission is checked against the progress schema and the consumer rule's preconditions.
 */
import { FunnelProgressEnvelope } from '../../operators/funnel/envelopes.ts'
import { applyFunnelControl, createFunnel, type FunnelInput, type FunnelOptions, type FunnelState } from '../../operators/funnel/logic.ts'
import type { Operator, StepResult } from '../../operators/runtime/operator.ts'
import { decode, encode, validator } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type SessionEnvelope } from '../../schemas/envelope.ts'
import type { FunnelDefinition, FunnelProgress } from '../../schemas/funnel.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'
import type { SessionName } from '../../schemas/session.ts'
import { keyGroupOf } from '../../topology/subjects.ts'
import type { ReferenceEvent } from './funnel-reference.ts'

export const KEY_GROUPS = 16
const progressSchema = validator(FunnelProgressEnvelope, 'funnel_progress')

export interface EventSpec {
  user?: string
  time: number
  id: string
  name: string
  properties?: Record<string, unknown>
  device?: string
  channel?: string
  bot?: boolean
  seq?: number
  project?: string
}

let nextSeq = 0

/** An enriched event: a track named `name` (or `$page` as a page view). */
export function eventInput(spec: EventSpec): FunnelInput & { envelope: EnrichedEventEnvelope } {
  const user = spec.user ?? 'u1'
  const seq = spec.seq ?? ++nextSeq
  const isPage = spec.name === '$page'
  const message: SegmentMessage = {
    type: isPage ? 'page' : 'track', messageId: spec.id, userId: user, timestamp: new Date(spec.time).toISOString(), receivedAt: new Date(spec.time).toISOString(),
    ...(isPage ? {} : { event: spec.name }), ...(spec.properties ? { properties: spec.properties } : {}),
  }
  const envelope: EnrichedEventEnvelope = {
    v: ENVELOPE_VERSION, type: 'enriched_event', project: spec.project ?? 'alpha', id: spec.id, time: spec.time, key: user,
    keyGroup: keyGroupOf(user, KEY_GROUPS), source: 'live', origin: { stream: 'SEG_RAW', seq },
    data: {
      name: spec.name, canonicalId: user, message,
      context: { device: { type: spec.device ?? 'desktop' }, acquisition: { channel: spec.channel ?? 'direct' }, bot: spec.bot ?? false },
    },
  }
  return { envelope, origin: { stream: 'SEG_ENRICHED', seq } }
}

export interface SessionSpec {
  user?: string
  opened: number
  start?: number
  end?: number
  version?: number
  name?: SessionName
  channel?: string
  device?: string
  seq?: number
}

export function sessionInput(spec: SessionSpec): FunnelInput & { envelope: SessionEnvelope } {
  const user = spec.user ?? 'u1'
  const seq = spec.seq ?? ++nextSeq
  const start = spec.start ?? spec.opened
  const end = spec.end ?? start
  const sessionId = `${user}:${spec.opened}`
  const version = spec.version ?? 1
  const name = spec.name ?? '$session_start'
  const envelope: SessionEnvelope = {
    v: ENVELOPE_VERSION, type: 'session', project: 'alpha', id: `${sessionId}:${version}`, time: name === '$session_end' ? end : start, key: user,
    keyGroup: keyGroupOf(user, KEY_GROUPS), source: 'live', origin: { stream: 'SEG_ENRICHED', seq },
    data: {
      name: name as never, version,
      session: {
        sessionId, canonicalId: user, start, end, durationMs: end - start, events: 1, pages: 0, firstMessageId: 'm',
        ...(spec.channel ? { channel: spec.channel } : {}), ...(spec.device ? { device: spec.device } : {}),
      },
    },
  }
  return { envelope, origin: { stream: 'SEG_SESSIONS', seq } }
}

/** What the reference sees of an event made by `eventInput`. */
export function referenceEventOf(spec: EventSpec): ReferenceEvent {
  return { time: spec.time, id: spec.id, name: spec.name, properties: { ...spec.properties, $device: spec.device ?? 'desktop', $channel: spec.channel ?? 'direct' } }
}

/** Definitions as the runtime keeps them: each funnel put through onControl, version 1 unless given. */
export function definitionsOf(...definitions: Array<FunnelDefinition | [FunnelDefinition, number]>): unknown {
  let current: unknown
  for (const item of definitions) {
    const [definition, version] = Array.isArray(item) ? item : [item, 1]
    current = applyFunnelControl(current, { stepId: 'funnel', name: definition.id, version, definition })
  }
  return current
}

export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const inner of Object.values(value)) deepFreeze(inner)
  }
  return value
}

export interface Harness {
  operator: Operator<FunnelState, FunnelInput>
  emitted: FunnelProgress[]
  states: Map<string, { state: FunnelState; wakeAt?: number }>
  readonly watermark: number
  lates: number
  setDefinitions(definitions: unknown): void
  event(input: FunnelInput): FunnelProgress[]
  jump(to: number): FunnelProgress[]
  merge(from: string, into: string): FunnelProgress[]
  finish(): FunnelProgress[]
  /** The consumer rule: the highest version per (funnel, funnel version, user). */
  latest(funnelId: string, user?: string): FunnelProgress | undefined
}

/**
 * The runtime in miniature. `lateness` as the runtime's allowed lateness; `roundTrip` puts states
 * and definitions through msgpack between steps, as checkpoints would.
 */
export function miniRuntime(options: { lateness?: number; roundTrip?: boolean; operator?: Partial<FunnelOptions> } = {}): Harness {
  const operator = createFunnel({ keyGroups: KEY_GROUPS, ...options.operator })
  const lateness = options.lateness ?? 0
  const emitted: FunnelProgress[] = []
  const states = new Map<string, { state: FunnelState; wakeAt?: number }>()
  const versions = new Map<string, number>()
  const sent = new Map<string, FunnelProgress>()
  const ids = new Set<string>()
  let definitions: unknown
  let watermark = Number.NEGATIVE_INFINITY
  let largest = Number.NEGATIVE_INFINITY
  let lates = 0
  const check = (result: StepResult<FunnelState>): FunnelProgress[] => {
    const out: FunnelProgress[] = []
    for (const emission of result.emit) {
      const envelope = emission.envelope as unknown as FunnelProgressEnvelope
      const problems = progressSchema.problems(envelope)
      if ((emission.stage as string) !== 'funnels') problems.push(`stage ${emission.stage}`)
      if (emission.keyGroup !== keyGroupOf(envelope.key, KEY_GROUPS) || envelope.keyGroup !== emission.keyGroup) problems.push('not routed by the canonical id')
      if (envelope.data.canonicalId !== envelope.key) problems.push('key')
      const { funnelId, funnelVersion, canonicalId, version, level, stepTimes, status } = envelope.data
      const id = `${funnelId}:${funnelVersion}:${canonicalId}:${version}`
      if (envelope.id !== id) problems.push(`id ${envelope.id}`)
      if (ids.has(id)) problems.push(`duplicate id ${id}`)
      ids.add(id)
      const key = `${funnelId}:${funnelVersion}:${canonicalId}`
      if (version !== (versions.get(key) ?? 0) + 1) problems.push(`${key}: version ${version} after ${versions.get(key) ?? 0}`)
      versions.set(key, version)
      // `previous` is what the message before said (docs/funnels.md, "Messages"): counters rely on it
      const said = sent.get(key)
      const previous = said && { level: said.level, status: said.status, stepTimes: said.stepTimes, ...(said.breakdown === undefined ? {} : { breakdown: said.breakdown }) }
      if (JSON.stringify(envelope.data.previous) !== JSON.stringify(previous)) problems.push(`${key}: previous ${JSON.stringify(envelope.data.previous)}, but the message before said ${JSON.stringify(previous)}`)
      sent.set(key, envelope.data)
      if (stepTimes.length !== level) problems.push(`${level} steps but ${stepTimes.length} times`)
      if ((level === 0) !== (status === 'none')) problems.push(`level ${level} with status ${status}`)
      if ((status === 'converted') !== (level === envelope.data.steps)) problems.push(`level ${level} of ${envelope.data.steps} with status ${status}`)
      if (problems.length > 0) throw new Error(`emission ${envelope.id}: ${problems.join('; ')}`)
      out.push(envelope.data)
    }
    emitted.push(...out)
    return out
  }
  const store = (key: string, result: StepResult<FunnelState>) => {
    // what was published is never changed afterwards (its step times are shared with the state's
    // attempts, which are immutable); the state itself is the operator's to change at its next input
    deepFreeze(result.emit)
    const out = check(result)
    if (result.late) lates++
    if (result.state === undefined) states.delete(key)
    else {
      const state = options.roundTrip ? (decode(encode(result.state)) as FunnelState) : result.state
      states.set(key, { state, ...(result.wakeAt === undefined ? {} : { wakeAt: result.wakeAt }) })
    }
    return out
  }
  const fireTimers = (force = false) => {
    const out: FunnelProgress[] = []
    for (const [key, entry] of [...states]) {
      // `force` runs onTimer even when nothing is due: it must then change nothing
      if (force || (entry.wakeAt !== undefined && entry.wakeAt <= watermark)) out.push(...store(key, operator.onTimer!(entry.state, watermark)))
    }
    return out
  }
  return {
    operator, emitted, states,
    get watermark() { return watermark },
    get lates() { return lates },
    set lates(value) { lates = value },
    setDefinitions(value) {
      definitions = options.roundTrip ? decode(encode(value)) : deepFreeze(value)
    },
    event(input) {
      const key = operator.keyOf(input)
      const current = states.get(key)?.state ?? operator.init()
      const out = store(key, operator.onEvent(current, input, { eventTime: input.envelope.time, watermark, source: 'live', control: definitions }))
      largest = Math.max(largest, input.envelope.time)
      watermark = Math.max(watermark, largest - lateness)
      return [...out, ...fireTimers()]
    },
    jump(to) {
      watermark = Math.max(watermark, to)
      return fireTimers(true)
    },
    merge(from, into) {
      const fromEntry = states.get(from)
      if (!fromEntry) return []
      states.delete(from)
      const out = store(into, operator.mergeInto!(states.get(into)?.state, fromEntry.state, { from, into, watermark, control: definitions }))
      return [...out, ...fireTimers()]
    },
    finish() {
      watermark = Number.POSITIVE_INFINITY
      return fireTimers(true)
    },
    latest(funnelId, user = 'u1') {
      let best: FunnelProgress | undefined
      for (const progress of emitted) {
        if (progress.funnelId !== funnelId || progress.canonicalId !== user) continue
        if (!best || progress.funnelVersion > best.funnelVersion || (progress.funnelVersion === best.funnelVersion && progress.version > best.version)) best = progress
      }
      return best
    },
  }
}

/** The part of a progress message the reference computes. */
export function resultOf(progress: FunnelProgress | undefined) {
  if (!progress) return { level: 0, status: 'none', stepTimes: [] as number[] }
  return { level: progress.level, status: progress.status, stepTimes: progress.stepTimes, ...(progress.breakdown === undefined ? {} : { breakdown: progress.breakdown }) }
}
