import { decode, decodeEnvelope, encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type AnyEnvelope, type MergeStateEnvelope } from '../../schemas/envelope.ts'
import type { FunnelDefinition } from '../../schemas/funnel.ts'
import { keyGroupOf, parseSubject, subjectFor, type Stage } from '../../topology/subjects.ts'
import { emptyKeyGroup, newCounters, processMessage, type InputMessage, type KernelCounters, type KernelOptions, type KeyGroupState } from '../runtime/kernel.ts'
import type { Operator, StepResult } from '../runtime/operator.ts'
import { applyFunnelControl, createFunnel, DEFAULT_FUNNEL_HORIZON_MS, DEFAULT_MAX_EVENTS, FUNNEL_STEP_ID, SESSION_START, type FunnelInput, type FunnelOptions, type FunnelState } from './logic.ts'

/**
 * The pure half of a funnel backfill (docs/funnels.md, "Backfill"): the funnel step's own kernel
 * and logic, with only the funnel being backfilled defined from the start, run over the history
 * the step read before that funnel's control message. What each user's state holds at the end is
 * their seed: published as a `merge_state` message on the `backfill` stage, the step merges it into
 * what it tracked live since the control message.
 */

/** Held session messages are applied under this stream name, numbered in the order they are applied. */
const HELD_SESSIONS_STREAM = 'SEG_SESSIONS:by-time'

/** The stage seeds go on: read by the funnel step only. */
export const BACKFILL_STAGE = 'backfill' satisfies Stage
/** Seeds of one (project, funnel, version, user) carry this message id, so a run done again publishes nothing new within the duplicate window. */
export const seedMessageId = (project: string, funnelId: string, version: number, user: string) => `seed:${project}:${funnelId}:${version}:${user}`
/** The control message's envelope id in every key group (operators/runtime/control.ts). */
export const controlEnvelopeId = (funnelId: string, version: number) => `${FUNNEL_STEP_ID}:${funnelId}:${version}`

/** Whether a funnel reads the sessions stage (a `$session_start` step or exclusion). */
export function usesSessions(definition: FunnelDefinition): boolean {
  return definition.steps.some((step) => step.event === SESSION_START) || (definition.exclusions ?? []).some((exclusion) => exclusion.event === SESSION_START)
}

export interface SeedComputerOptions {
  project: string
  funnelId: string
  version: number
  definition: FunnelDefinition
  keyGroups: number
  /** As the funnel step runs the logic (horizon, buffer, sessionize's bounds). */
  funnel?: Omit<FunnelOptions, 'keyGroups'>
  /** The project's allowed lateness, ms, as the step has it. */
  latenessMs: number
  /** The funnel step's idle TTL of a key, ms of event time. */
  idleTtlMs: number
  /**
   * How far behind the watermark history events are still applied, ms; at least the step's own
   * horizon. Default 30 days (`DEFAULT_REPLAY_HORIZON_MS`): a stream's order is only roughly event
   * time (enrich's lanes in a fast import run days apart), and history is replayed once.
   */
  replayHorizonMs?: number
}

/** See {@link SeedComputerOptions.replayHorizonMs}. */
export const DEFAULT_REPLAY_HORIZON_MS = 30 * 86_400_000
/** Events kept per (user, funnel) while replaying: the replay horizon's worth for all but the busiest users. */
export const REPLAY_MAX_EVENTS = 4_096

/** One user's seed: what the funnel step merges into their state. */
export interface Seed {
  /** The user the history was kept under. */
  user: string
  state: FunnelState
  /** Event time of the user's last input in the history. */
  lastTime: number
  source: FunnelState['source']
}

/**
 * The logic the step runs, without its outputs (only states matter here), timers (they change
 * what is published, never a track) and control messages (the definitions are fixed: the one
 * funnel version).
 */
function seedingOperator(options: SeedComputerOptions): Operator<FunnelState, FunnelInput> {
  const logic = createFunnel({
    ...options.funnel, keyGroups: options.keyGroups,
    horizonMs: Math.max(options.funnel?.horizonMs ?? DEFAULT_FUNNEL_HORIZON_MS, options.replayHorizonMs ?? DEFAULT_REPLAY_HORIZON_MS),
    maxEvents: Math.max(options.funnel?.maxEvents ?? DEFAULT_MAX_EVENTS, REPLAY_MAX_EVENTS),
  })
  const quiet = (result: StepResult<FunnelState>): StepResult<FunnelState> => (result.emit.length === 0 ? result : { ...result, emit: [] })
  return {
    stepId: logic.stepId,
    init: logic.init,
    toInput: logic.toInput,
    keyOf: logic.keyOf,
    onEvent: (state, input, context) => quiet(logic.onEvent(state, input, context)),
    mergeInto: (into, from, context) => quiet(logic.mergeInto!(into, from, context)),
  }
}

/**
 * Feeds history messages, key group by key group in each stream's order, through the funnel
 * step's kernel with only this funnel version defined. An identity merge whose user lives in
 * another key group is applied there at once (the live step sends it through the stream).
 */
export function createSeedComputer(options: SeedComputerOptions) {
  const operator = seedingOperator(options)
  const definitions = applyFunnelControl(undefined, { stepId: FUNNEL_STEP_ID, name: options.funnelId, version: options.version, definition: options.definition })
  const kernelOptions: KernelOptions = {
    stepId: FUNNEL_STEP_ID, latenessOf: () => options.latenessMs, idleTtlMs: options.idleTtlMs, clock: () => 0, keyGroups: options.keyGroups,
  }
  const groups = new Map<number, KeyGroupState<FunnelState>>()
  const counters: KernelCounters = newCounters()
  let mergeSeq = 0
  const refused: Array<{ stage: string; keyGroup: number; type: string; id: string; key: string; time: string }> = []
  const groupOf = (keyGroup: number) => {
    let group = groups.get(keyGroup)
    if (group === undefined) {
      group = emptyKeyGroup<FunnelState>(keyGroup, 0)
      group.control[options.project] = definitions
      groups.set(keyGroup, group)
    }
    return group
  }
  const run = (keyGroup: number, message: InputMessage) => {
    for (const out of processMessage(operator, groupOf(keyGroup), message, kernelOptions, counters)) {
      const target = parseSubject(out.subject)
      if (target.stage === 'late' || target.stage === 'dlq') {
        // the history's own refusals (the live step made them, or would have): the first few are named in the log
        if (refused.length < 10) {
          const envelope = decode(out.data) as { type: string; id: string; time: number; key: string }
          refused.push({ stage: target.stage, keyGroup, type: envelope.type, id: envelope.id, key: envelope.key, time: new Date(envelope.time).toISOString() })
        }
        continue
      }
      // only a merge's state crosses key groups
      if (target.keyGroup === keyGroup) continue
      run(target.keyGroup, { stream: '$backfill-merges', seq: ++mergeSeq, subject: out.subject, data: out.data })
    }
  }
  // session messages held per key group, fed in event-time order beside the events (docs/funnels.md, "Backfill")
  const held = new Map<number, { time: number; message: InputMessage }[]>()
  const next = new Map<number, number>()
  let heldSeq = 0
  const flush = (keyGroup: number, until: number) => {
    const list = held.get(keyGroup)
    if (list === undefined) return
    let at = next.get(keyGroup) ?? 0
    while (at < list.length && list[at]!.time <= until) {
      // numbered in the order they are applied: the kernel skips a sequence at or below one it has applied
      const { message } = list[at++]!
      run(keyGroup, { ...message, stream: HELD_SESSIONS_STREAM, seq: ++heldSeq })
    }
    next.set(keyGroup, at)
  }
  return {
    counters,
    /** The first history inputs refused (too late, or dead-lettered), for the log. */
    refused,
    /** One history message of a key group (control messages are skipped: the definitions are fixed). */
    apply(message: InputMessage): void {
      run(parseSubject(message.subject).keyGroup, message)
    },
    /** A message of the sessions stage, held until the events of its key group reach its time (`sortHeld` first). */
    hold(message: InputMessage, time: number, type = 'session'): void {
      if (type === 'watermark') return
      const keyGroup = parseSubject(message.subject).keyGroup
      let list = held.get(keyGroup)
      if (list === undefined) held.set(keyGroup, (list = []))
      // the whole sessions history waits here: its bytes, not decoded envelopes (decoded again when applied)
      const { envelope: _decoded, ...bytes } = message
      list.push({ time, message: bytes })
    },
    /** Once every session message is held: orders each key group's by event time (stable: a session's versions keep their order at equal times). */
    sortHeld(): void {
      for (const list of held.values()) list.sort((a, b) => a.time - b.time)
    },
    /** An event of the events stage at `time`: the held session messages up to it go first. Other messages (controls, watermarks, merges) carry other times. */
    applyEvent(message: InputMessage, type: string, time: number): void {
      // watermark messages only fire timers, which the seeds do without; the collector's run ahead of
      // a key group's events in a fast import and would make them late here (docs/funnels.md, "Backfill")
      if (type === 'watermark') return
      const keyGroup = parseSubject(message.subject).keyGroup
      if (type === 'enriched_event') flush(keyGroup, time)
      run(keyGroup, message)
    },
    /** After the last event: the session messages still held. */
    finish(): void {
      for (const keyGroup of [...held.keys()].sort((a, b) => a - b)) flush(keyGroup, Number.POSITIVE_INFINITY)
    },
    /** Every user with something tracked for the funnel version, key group by key group. */
    *seeds(): Generator<Seed> {
      for (const keyGroup of [...groups.keys()].sort((a, b) => a - b)) {
        for (const entry of groups.get(keyGroup)!.keys.values()) {
          const state = entry.state
          const funnels = state.funnels.filter((item) => item.id === options.funnelId && item.track.v === options.version && (item.track.t.length > 0 || item.track.cutT !== undefined))
          if (funnels.length === 0) continue
          const seed: FunnelState = {
            canonicalId: state.canonicalId, project: state.project, funnels: funnels.map(({ id, track }) => ({ id, track })), sessions: state.sessions,
            source: state.source, origin: state.origin, seed: { id: options.funnelId, v: options.version },
          }
          yield { user: state.canonicalId, state: seed, lastTime: entry.lastTime, source: entry.source }
        }
      }
    },
  }
}

/**
 * A seed as the message the funnel step reads: a `merge_state` of the funnel step from the user
 * the history was kept under into `into` (the same user, or the user that anonymous id has been
 * linked to since), on the `backfill` stage of `into`'s key group.
 */
export function seedMessage(project: string, seed: Seed, into: string, keyGroups: number): { subject: string; data: Uint8Array; msgId: string } {
  const keyGroup = keyGroupOf(into, keyGroups)
  const { id, v } = seed.state.seed!
  const envelope: MergeStateEnvelope = {
    v: ENVELOPE_VERSION, type: 'merge_state', project, id: seedMessageId(project, id, v, seed.user), time: seed.lastTime, key: into, keyGroup, source: seed.source,
    data: { stepId: FUNNEL_STEP_ID, from: seed.user, into, state: seed.state, lastTime: seed.lastTime },
  }
  return { subject: subjectFor(project, BACKFILL_STAGE, keyGroup), data: encode(envelope), msgId: seedMessageId(project, id, v, seed.user) }
}

/**
 * What the worker needs of a history message: its type, id, time, a control's name and version,
 * and the validated envelope to hand the kernel (which then does not decode it again). A message
 * that does not match its schema is peeked at unvalidated and left for the kernel to dead-letter.
 */
export function peekMessage(data: Uint8Array): { type: string; id: string; time: number; control?: { stepId: string; name: string; version: number }; envelope?: AnyEnvelope } {
  let valid: AnyEnvelope | undefined
  try {
    valid = decodeEnvelope(data)
  } catch {
    valid = undefined
  }
  const envelope = (valid ?? decode(data)) as { type: string; id: string; time: number; data?: { stepId?: string; name?: string; version?: number } }
  const peeked = { type: envelope.type, id: envelope.id, time: envelope.time, ...(valid ? { envelope: valid } : {}) }
  if (envelope.type === 'control' && envelope.data) {
    return { ...peeked, control: { stepId: String(envelope.data.stepId), name: String(envelope.data.name), version: Number(envelope.data.version) } }
  }
  return peeked
}
