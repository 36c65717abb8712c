import { decodeEnvelope, encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type AnyEnvelope, type Control, type MergeEnvelope, type MergeStateEnvelope, type Source } from '../../schemas/envelope.ts'
import { keyGroupOf, parseSubject, subjectFor, type Stage } from '../../topology/subjects.ts'
import { deadLetterOf } from './dead-letter.ts'
import { TimerHeap } from './heap.ts'
import type { Emission, Operator, StepResult } from './operator.ts'

/** One key's persisted state. */
export interface KeyEntry<State> {
  state: State
  /** Per input stream, the last sequence applied to this key (skips re-applying after a crash). */
  applied: Record<string, number>
  /** Event time of the key's last input: idle eviction is decided in event time, so replays agree. */
  lastTime: number
  project: string
  source: Source
  wakeAt?: number
}

/** Everything a key group needs to resume: the checkpoint plus its keys. */
export interface KeyGroupState<State> {
  keyGroup: number
  /** Ownership epoch this state was loaded under (fencing token). */
  epoch: number
  /** Per input stream, the last sequence fully processed. */
  offsets: Record<string, number>
  /** Per `project|source`, the largest event time seen. */
  maxEventTime: Record<string, number>
  keys: Map<string, KeyEntry<State>>
  /** Per project, the definitions in force (from control messages); checkpointed with the offsets. */
  control: Record<string, unknown>
  /** Keys changed (or dropped) since the last commit. */
  dirty: Set<string>
  timers: Map<string, TimerHeap>
}

export interface InputMessage {
  stream: string
  seq: number
  subject: string
  data: Uint8Array
  /** `data` already decoded and validated (decodeEnvelope) by a caller that had to read it: not decoded again. */
  envelope?: AnyEnvelope
}

export interface Outgoing {
  subject: string
  data: Uint8Array
  msgId: string
}

export interface KernelOptions {
  stepId: string
  /** Allowed lateness of a project, ms: watermark = max event time − lateness. */
  latenessOf: (project: string) => number
  /** A key idle (in event time) longer than this starts again from init(). */
  idleTtlMs: number
  /** Wall clock, used only to stamp dead letters. */
  clock: () => number
  /** Key groups of the installation: where a merged key's state goes. */
  keyGroups: number
  /** Stages a `watermark` input is forwarded to, in the same key group: the step's outputs (not dlq, late). */
  forwardWatermarksTo?: readonly Stage[]
  /**
   * Input streams that hold each other back: the watermark is the least of their newest event
   * times, not the newest over all inputs. For a step that reads a stage and one derived from it
   * (funnel: enriched and sessions), whose derived messages trail the stage they come from by the
   * upstream step's lag, which in an import can be weeks of event time. Default: none (the newest).
   */
  alignedStreams?: readonly string[]
}

export interface KernelCounters {
  applied: number
  skipped: number
  deadLettered: number
  timersFired: number
  /** Inputs the logic found too late (published on the late subject). */
  late: number
  /** Identity merges applied to this step's state. */
  merged: number
}

export const newCounters = (): KernelCounters => ({ applied: 0, skipped: 0, deadLettered: 0, timersFired: 0, late: 0, merged: 0 })

export function emptyKeyGroup<State>(keyGroup: number, epoch: number): KeyGroupState<State> {
  return { keyGroup, epoch, offsets: {}, maxEventTime: {}, keys: new Map(), control: {}, dirty: new Set(), timers: new Map() }
}

export const watermarkKey = (project: string, source: Source) => `${project}|${source}`

export function watermarkOf(group: KeyGroupState<unknown>, project: string, source: Source, lateness: number, alignedStreams?: readonly string[]): number {
  return watermarkNamed(group, watermarkKey(project, source), lateness, alignedStreams)
}

/** {@link watermarkOf} by the (project, source) name, for a caller that has it already. */
function watermarkNamed(group: KeyGroupState<unknown>, name: string, lateness: number, alignedStreams?: readonly string[]): number {
  if (alignedStreams !== undefined && alignedStreams.length > 0) {
    // a stream that has carried nothing of the project and source yet holds everything back
    let least = Number.POSITIVE_INFINITY
    for (const stream of alignedStreams) least = Math.min(least, group.maxEventTime[streamWatermarkKey(name, stream)] ?? Number.NEGATIVE_INFINITY)
    return least - lateness
  }
  const max = group.maxEventTime[name]
  return max === undefined ? Number.NEGATIVE_INFINITY : max - lateness
}

/** The newest event time of one input stream, kept (checkpointed with the others) only for aligned streams. */
const streamWatermarkKey = (name: string, stream: string) => `${name}|${stream}`

/** Moves the event time of (project, source) up to `time`, and that of the input stream when it is an aligned one; returns the newest over all. */
function advanceEventTime(group: KeyGroupState<unknown>, name: string, stream: string, time: number, options: KernelOptions): number {
  if (options.alignedStreams?.includes(stream)) {
    const key = streamWatermarkKey(name, stream)
    group.maxEventTime[key] = Math.max(group.maxEventTime[key] ?? Number.NEGATIVE_INFINITY, time)
  }
  return (group.maxEventTime[name] = Math.max(group.maxEventTime[name] ?? Number.NEGATIVE_INFINITY, time))
}

function scheduleTimer<State>(group: KeyGroupState<State>, key: string, entry: KeyEntry<State>) {
  if (entry.wakeAt === undefined) return
  const name = watermarkKey(entry.project, entry.source)
  let heap = group.timers.get(name)
  if (!heap) group.timers.set(name, (heap = new TimerHeap()))
  heap.schedule(entry.wakeAt, key)
}

/** Rebuilds the timer heaps after a key group was loaded. */
export function rebuildTimers<State>(group: KeyGroupState<State>): void {
  group.timers.clear()
  for (const [key, entry] of group.keys) scheduleTimer(group, key, entry)
}

function toOutgoing(stepId: string, emissions: Emission[], idPrefix: string, into: Outgoing[]) {
  emissions.forEach((emission, index) => {
    into.push({ subject: subjectFor(emission.project, emission.stage, emission.keyGroup), data: encode(emission.envelope), msgId: `${idPrefix}:${index}` })
  })
}

function applyResult<State>(group: KeyGroupState<State>, key: string, entry: KeyEntry<State>, result: StepResult<State>) {
  if (result.state === undefined) {
    group.keys.delete(key)
  } else {
    entry.state = result.state
    entry.wakeAt = result.wakeAt
    group.keys.set(key, entry)
    scheduleTimer(group, key, entry)
  }
  group.dirty.add(key)
}

/**
 * Applies one input message to a key group, in place, and returns what to
 * publish. Pure apart from mutating `group`: the same state and message always
 * give the same state and the same outputs with the same ids, which is what
 * makes replays after a crash effectively once.
 */
export function processMessage<State, Input>(
  operator: Operator<State, Input>, group: KeyGroupState<State>, message: InputMessage, options: KernelOptions, counters: KernelCounters,
): Outgoing[] {
  const outgoing: Outgoing[] = []
  const { stream, seq } = message
  if (seq <= (group.offsets[stream] ?? 0)) {
    counters.skipped++
    return outgoing
  }
  group.offsets[stream] = seq
  const idPrefix = `${options.stepId}:${stream}:${seq}`
  const deadLetter = (reason: string) => {
    const letter = deadLetterOf(options.stepId, message.subject, seq, message.data, reason, options.clock())
    if (letter) toOutgoing(options.stepId, [letter], idPrefix, outgoing)
    counters.deadLettered++
  }
  let envelope
  let input: Input
  let key: string
  try {
    envelope = message.envelope ?? decodeEnvelope(message.data)
    if (envelope.type === 'watermark') {
      // event time has reached envelope.time for this key group, though none of its keys had an event
      const name = watermarkKey(envelope.project, envelope.source)
      advanceEventTime(group, name, stream, envelope.time, options)
      const watermark = watermarkOf(group, envelope.project, envelope.source, options.latenessOf(envelope.project), options.alignedStreams)
      if (!operator.stateless) fireTimers(operator, group, name, watermark, idPrefix, outgoing, counters)
      for (const stage of options.forwardWatermarksTo ?? []) {
        outgoing.push({ subject: subjectFor(envelope.project, stage, group.keyGroup), data: message.data, msgId: `${idPrefix}:w:${stage}` })
      }
      return outgoing
    }
    if (envelope.type === 'control') {
      // a definition change takes effect here, at this input position, in every replay too
      if (envelope.data.stepId === operator.stepId && operator.onControl) {
        const before = group.control[envelope.project]
        group.control[envelope.project] = operator.onControl(before, envelope.data)
        // definitions returned unchanged (a version already held, published again): no key to revisit
        if (operator.onDefinitionChange && !operator.stateless && group.control[envelope.project] !== before) {
          try {
            applyDefinitionChange(operator, group, message, envelope.project, envelope.data, options, idPrefix, outgoing)
          } catch (error) {
            deadLetter(`${operator.stepId} threw on a definition change: ${(error as Error).message}`)
          }
        }
      }
      return outgoing
    }
    if (envelope.type === 'merge' || envelope.type === 'merge_state') {
      if (!operator.stateless && operator.keyedByUser !== false && (envelope.type === 'merge' || envelope.data.stepId === operator.stepId)) {
        try {
          applyMerge(operator, group, message, envelope, options, idPrefix, outgoing, counters)
        } catch (error) {
          deadLetter(`${operator.stepId} threw on a merge: ${(error as Error).message}`)
        }
      }
      return outgoing
    }
    input = operator.toInput(envelope, { stream, seq })
    // state is per project: two projects may well have a user of the same id
    key = `${envelope.project}/${operator.keyOf(input)}`
  } catch (error) {
    deadLetter((error as Error).message)
    return outgoing
  }
  const lateness = options.latenessOf(envelope.project)
  const name = watermarkKey(envelope.project, envelope.source)
  const context = {
    eventTime: envelope.time,
    watermark: watermarkNamed(group, name, lateness, options.alignedStreams),
    source: envelope.source,
    control: group.control[envelope.project],
  }
  if (operator.stateless) {
    try {
      const result = operator.onEvent(operator.init(), input, context)
      toOutgoing(options.stepId, result.emit, idPrefix, outgoing)
      if (result.late) publishLate(message, envelope.project, group.keyGroup, idPrefix, outgoing, counters)
      counters.applied++
    } catch (error) {
      deadLetter(`${operator.stepId} threw: ${(error as Error).message}`)
    }
    advanceEventTime(group, name, stream, envelope.time, options)
    return outgoing
  }
  let entry = group.keys.get(key)
  if (entry && (entry.applied[stream] ?? 0) >= seq) {
    // applied before a crash that came before the checkpoint: its outputs are already out
    counters.skipped++
  } else {
    if (!entry || envelope.time - entry.lastTime > options.idleTtlMs) {
      entry = { state: operator.init(), applied: {}, lastTime: envelope.time, project: envelope.project, source: envelope.source }
    }
    try {
      const result = operator.onEvent(entry.state, input, context)
      entry.applied[stream] = seq // each entry has an object of its own
      entry.lastTime = Math.max(entry.lastTime, envelope.time)
      entry.source = envelope.source
      applyResult(group, key, entry, result)
      toOutgoing(options.stepId, result.emit, idPrefix, outgoing)
      if (result.late) publishLate(message, envelope.project, group.keyGroup, idPrefix, outgoing, counters)
      counters.applied++
    } catch (error) {
      deadLetter(`${operator.stepId} threw: ${(error as Error).message}`)
      return outgoing
    }
  }
  advanceEventTime(group, name, stream, envelope.time, options)
  fireTimers(operator, group, name, watermarkNamed(group, name, lateness, options.alignedStreams), idPrefix, outgoing, counters)
  return outgoing
}

/** The input as it came, on the project's late subject. */
function publishLate(message: InputMessage, project: string, keyGroup: number, idPrefix: string, outgoing: Outgoing[], counters: KernelCounters) {
  outgoing.push({ subject: subjectFor(project, 'late', keyGroup), data: message.data, msgId: `${idPrefix}:late` })
  counters.late++
}

/**
 * An identity merge. `merge {from, into}` arrives in the key group of `from`
 * after every event routed there under `from`: its state leaves, straight into
 * `into` when that is in the same key group, else as a `merge_state` message
 * on this step's input stage in the key group of `into`, where it is merged in
 * when it arrives. Either way the operator's mergeInto decides what it means.
 */
function applyMerge<State, Input>(
  operator: Operator<State, Input>, group: KeyGroupState<State>, message: InputMessage,
  envelope: MergeEnvelope | MergeStateEnvelope, options: KernelOptions, idPrefix: string, outgoing: Outgoing[], counters: KernelCounters,
) {
  const { project, source } = envelope
  const { from, into } = envelope.data
  const intoGroup = keyGroupOf(into, options.keyGroups)
  let fromState: State
  let fromTime: number
  if (envelope.type === 'merge') {
    const fromKey = `${project}/${from}`
    const entry = group.keys.get(fromKey)
    if (!entry || from === into) return
    group.keys.delete(fromKey)
    group.dirty.add(fromKey)
    if (intoGroup !== group.keyGroup) {
      const state: MergeStateEnvelope = {
        v: ENVELOPE_VERSION, type: 'merge_state', project, id: `${idPrefix}:merge`, time: envelope.time, key: into, keyGroup: intoGroup, source,
        data: { stepId: operator.stepId, from, into, state: entry.state, lastTime: entry.lastTime },
      }
      const stage = parseSubject(message.subject).stage as Stage
      toOutgoing(options.stepId, [{ stage, project, keyGroup: intoGroup, envelope: state }], `${idPrefix}:m`, outgoing)
      return
    }
    fromState = entry.state
    fromTime = entry.lastTime
  } else {
    fromState = envelope.data.state as State
    fromTime = envelope.data.lastTime
  }
  const intoKey = `${project}/${into}`
  const existing = group.keys.get(intoKey)
  if (existing && (existing.applied[message.stream] ?? 0) >= message.seq) {
    counters.skipped++
    return
  }
  if (!operator.mergeInto) {
    counters.merged++
    return
  }
  const result = operator.mergeInto(existing?.state, fromState, {
    from, into, watermark: watermarkOf(group, project, source, options.latenessOf(project), options.alignedStreams), control: group.control[project],
  })
  const entry: KeyEntry<State> = existing ?? { state: operator.init(), applied: {}, lastTime: fromTime, project, source }
  entry.applied = { ...entry.applied, [message.stream]: message.seq }
  entry.lastTime = Math.max(entry.lastTime, fromTime)
  applyResult(group, intoKey, entry, result)
  toOutgoing(options.stepId, result.emit, idPrefix, outgoing)
  counters.merged++
}

/**
 * A definition change reaches every key of its project in this key group at once, in key order
 * (a Map's order differs between a live key group and one loaded from a checkpoint; the outputs'
 * ids count the keys that emitted, so the order must not). A key that did not change is left
 * alone (not written at the next commit).
 */
function applyDefinitionChange<State, Input>(
  operator: Operator<State, Input>, group: KeyGroupState<State>, message: InputMessage, project: string, change: Control, options: KernelOptions, idPrefix: string, outgoing: Outgoing[],
) {
  const prefix = `${project}/`
  const keys = [...group.keys.keys()].filter((key) => key.startsWith(prefix)).sort()
  let changed = 0
  for (const key of keys) {
    const entry = group.keys.get(key)!
    // applied before a crash that came before the checkpoint: its outputs are already out
    if ((entry.applied[message.stream] ?? 0) >= message.seq) continue
    const watermark = watermarkOf(group, project, entry.source, options.latenessOf(project), options.alignedStreams)
    const result = operator.onDefinitionChange!(entry.state, { change, control: group.control[project], watermark })
    if (result.state === entry.state && result.emit.length === 0 && result.wakeAt === entry.wakeAt) continue
    entry.applied = { ...entry.applied, [message.stream]: message.seq }
    applyResult(group, key, entry, result)
    toOutgoing(operator.stepId, result.emit, `${idPrefix}:d${changed}`, outgoing)
    changed++
  }
}

/** Runs onTimer for every key of one watermark whose wakeAt the watermark has passed. */
function fireTimers<State, Input>(
  operator: Operator<State, Input>, group: KeyGroupState<State>, name: string, watermark: number, idPrefix: string, outgoing: Outgoing[], counters: KernelCounters,
) {
  const heap = group.timers.get(name)
  if (!heap || !operator.onTimer) return
  let fired = 0
  while (heap.size > 0 && heap.peekAt()! <= watermark) {
    const { at, key } = heap.pop()!
    const entry = group.keys.get(key)
    if (!entry || entry.wakeAt === undefined) continue // dropped, or its timer cleared
    if (entry.wakeAt > at) {
      // moved later while this entry stood for it (one entry per key): it waits for its time
      heap.schedule(entry.wakeAt, key)
      continue
    }
    if (entry.wakeAt !== at) continue // superseded by an earlier timer, which came out first
    entry.wakeAt = undefined
    const result = operator.onTimer(entry.state, watermark, { control: group.control[entry.project] })
    applyResult(group, key, entry, result)
    toOutgoing(operator.stepId, result.emit, `${idPrefix}:t${fired}`, outgoing)
    fired++
    counters.timersFired++
  }
}
