/**
 * The shape of a topology: plain, frozen data. Running it is somebody else's job
 * (operators/runtime); provisioning it is apply.ts.
 */

export interface StreamSpec {
  /** JetStream stream name. */
  readonly name: string
  readonly description: string
  readonly subjects: readonly string[]
  /** `limits`: messages stay until an age/size limit; consumers do not remove them. */
  readonly retention: 'limits' | 'workqueue' | 'interest'
  readonly storage: 'file' | 'memory'
  readonly replicas: number
  /** Window in which a repeated `Nats-Msg-Id` is refused as a duplicate, in ms. */
  readonly duplicateWindowMs: number
  /** Oldest message kept, in ms (0 = forever). */
  readonly maxAgeMs: number
  /** Size cap in bytes (-1 = none). With `discard: 'new'` a full stream refuses writes. */
  readonly maxBytes: number
  readonly discard: 'new' | 'old'
  /**
   * Messages kept per subject (absent: no limit). 1 makes a latest-value stream: each subject
   * holds only its newest message (SEG_COUNTS). The runtime forwards no watermarks into such a
   * stream, as one would replace the value.
   */
  readonly maxMessagesPerSubject?: number
}

export interface KvSpec {
  readonly bucket: string
  readonly description: string
  /** Values kept per key. */
  readonly history: number
  readonly storage: 'file' | 'memory'
  readonly replicas: number
  /** Entry lifetime in ms (0 = forever). */
  readonly ttlMs: number
  /** Allow atomic batch writes (state buckets commit keys and checkpoint together). */
  readonly atomic?: boolean
}

export interface ConsumerSpec {
  /** Messages handed out and not yet acknowledged, per consumer. */
  readonly maxAckPending: number
  /** Redelivery delay of an unacknowledged message, in ms. */
  readonly ackWaitMs: number
  /** Messages pulled per batch. */
  readonly batchSize: number
}

/** A step reads subjects and writes subjects (or a table). */
export interface StepSpec {
  /** Unique; durable consumer names, KV keys, metric labels and log fields derive from it. */
  readonly stepId: string
  /**
   * `source`: outside the runtime (the collector). `operator`: keyed state in
   * `seg_state_<stepId>`, inputs replayed from checkpoints. `sink`: durable
   * consumers, acked after the database commit.
   */
  readonly kind: 'source' | 'operator' | 'sink'
  readonly description: string
  /** Folder under operators/ (or gateway/ for the collector) holding the code. */
  readonly module: string
  readonly inputs: readonly string[]
  readonly outputs: readonly string[]
  /** Tables a sink writes. */
  readonly tables?: readonly string[]
  readonly consumer?: ConsumerSpec
}

export interface Topology {
  readonly name: string
  readonly streams: readonly StreamSpec[]
  readonly kv: readonly KvSpec[]
  readonly steps: readonly StepSpec[]
}

/** Every operator step keeps its keyed state and checkpoints in a bucket of its own. */
export function stateBucketOf(step: StepSpec, replicas = 1): KvSpec {
  return { bucket: `seg_state_${step.stepId}`, description: `${step.stepId}: keyed state and per-key-group checkpoints`, history: 1, storage: 'file', replicas, ttlMs: 0, atomic: true }
}

/** The buckets a topology needs: those it lists plus one state bucket per operator step. */
export function bucketsOf(topology: Topology): KvSpec[] {
  const replicas = topology.kv[0]?.replicas ?? 1
  return [...topology.kv, ...topology.steps.filter((step) => step.kind === 'operator').map((step) => stateBucketOf(step, replicas))]
}

/** Recursively freezes a topology so nobody mutates the shared definition. */
export function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const child of Object.values(value as Record<string, unknown>)) deepFreeze(child)
  }
  return value
}
