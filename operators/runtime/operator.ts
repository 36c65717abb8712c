import type { AnyEnvelope } from '../../schemas/envelope.ts'
import type { Stage } from '../../topology/subjects.ts'

/** A message an operator wants published. The runtime picks the subject and the id. */
export interface Emission {
  stage: Stage
  project: string
  keyGroup: number
  envelope: AnyEnvelope
}

export interface StepResult<State> {
  state: State
  emit: Emission[]
  /** Event time at which onTimer should run for this key. */
  wakeAt?: number
}

/**
 * An operator's logic: pure. No I/O, no clock, no NATS types. The runtime passes
 * the event time in, persists the state, publishes what is emitted and acks.
 */
export interface Operator<State, Input> {
  readonly stepId: string
  init(): State
  /** The key (user) whose state this input touches. */
  keyOf(input: Input): string
  onEvent(state: State, input: Input, eventTime: number): StepResult<State>
  onTimer?(state: State, eventTime: number): StepResult<State>
}
