import type { AnyEnvelope, Control, Origin, Source } from '../../schemas/envelope.ts'
import type { Stage } from '../../topology/subjects.ts'

/** A message an operator wants published. The runtime picks the subject and the id. */
export interface Emission {
  stage: Stage
  project: string
  keyGroup: number
  envelope: AnyEnvelope
}

export interface StepResult<State> {
  /** The key's new state; `undefined` drops the key (its next input starts from init()). */
  state: State | undefined
  emit: Emission[]
  /** Event time at which onTimer should run for this key (replaces any earlier timer). */
  wakeAt?: number
  /**
   * The input came too late for what it would change (a window already closed):
   * the runtime publishes it unchanged on the project's `late` subject and counts it.
   */
  late?: boolean
}

/** What the runtime tells the logic about time. Never the wall clock. */
export interface EventContext {
  /** This input's event time, ms. */
  eventTime: number
  /** The key group's watermark for the input's project and source, ms (before this input). */
  watermark: number
  source: Source
  /** The definitions in force for the input's project at this point of the input sequence. */
  control: unknown
}

/**
 * An operator's logic: pure. No I/O, no clock, no NATS types. For a key, given
 * its state and one input, it returns the new state, what to emit and maybe a
 * timer; the runtime loads and checkpoints the state, publishes and tracks time.
 * Outputs must follow only from state plus inputs, so a replay reproduces them.
 */
export interface Operator<State, Input> {
  readonly stepId: string
  /** No per-key state: the runtime keeps only offsets and watermarks (a pass-through or a map). */
  readonly stateless?: boolean
  /**
   * `false` for an operator whose keys are not user ids (a window and group, a key group): the
   * kernel then leaves identity merges alone instead of moving the state of key `from`.
   */
  readonly keyedByUser?: boolean
  init(): State
  /** Turns a decoded envelope (stored at `origin`) into the operator's input; throws for a message it cannot take. */
  toInput(envelope: AnyEnvelope, origin: Origin): Input
  /** The key (user) whose state this input touches. */
  keyOf(input: Input): string
  /**
   * The state is handed over: the runtime keeps only the state returned and never reads the one
   * it passed in again, so the logic may change it in place and return it (docs/operators.md).
   * What goes out in `emit` must not be changed afterwards.
   */
  onEvent(state: State, input: Input, context: EventContext): StepResult<State>
  /**
   * Applies a definition change (a control message) to the project's definitions:
   * pure, like everything here. Operators without it ignore control messages.
   */
  onControl?(definitions: unknown, control: Control): unknown
  /**
   * Runs for every key of the project in the key group (in key order) right after `onControl`
   * applied a definition change, at the control message's input position: what each key derives
   * from the definitions (a user's saved-segment memberships) is brought up to date there, in
   * every replay too. Pure. Without it, a definition change reaches a key at its next input.
   */
  onDefinitionChange?(state: State, context: DefinitionChangeContext): StepResult<State>
  /** Runs when the watermark passes the key's wakeAt; `now` is that watermark. */
  onTimer?(state: State, now: number, context?: TimerContext): StepResult<State>
  /**
   * Identity merge (docs/identity.md): the state of the anonymous key `from`
   * moves into the user key `into` of the same project. Returns `into`'s new
   * state and what to emit (corrections: retract what was counted under `from`,
   * re-emit it under `into`). Pure. Without it, `from`'s state is dropped at a merge.
   */
  mergeInto?(into: State | undefined, from: State, context: MergeContext): StepResult<State>
}

export interface TimerContext {
  /** The definitions in force for the key's project. */
  control: unknown
}

export interface DefinitionChangeContext {
  /** The change just applied. */
  change: Control
  /** The definitions in force from now on (what onControl returned). */
  control: unknown
  /** The key group's watermark for the key's project and source, ms. */
  watermark: number
}

export interface MergeContext {
  from: string
  into: string
  /** The key group's watermark for `into`'s project and source, ms. */
  watermark: number
  control: unknown
}
