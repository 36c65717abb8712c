import { nanos, type NatsConnection } from '@nats-io/transport-node'
import {
  AckPolicy, DeliverPolicy, DiscardPolicy, jetstreamManager, RetentionPolicy, StorageType,
  type ConsumerConfig, type JetStreamManager, type StreamConfig, type StreamInfo,
} from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { bucketsOf, type StepSpec, type StreamSpec, type Topology } from './model.ts'
import { subjectsIntersect } from './subjects.ts'
import { validateTopology } from './validate.ts'

export interface ApplyChange {
  kind: 'stream' | 'consumer' | 'kv' | 'meta'
  name: string
  action: 'created' | 'updated' | 'unchanged'
  changes: string[]
}

/** An existing resource differs from the topology in a way apply will not change by itself. */
export class IncompatibleChangeError extends Error {
  readonly code = 'SEG_TOPOLOGY_INCOMPATIBLE'
  readonly resource: string
  readonly field: string
  constructor(resource: string, field: string, detail: string) {
    super(`${resource}: field "${field}" ${detail}; refusing to change it (it would drop or orphan stored data). Migrate by hand or choose a new name.`)
    this.resource = resource
    this.field = field
  }
}

const META_BUCKET = 'seg_meta'
const KEY_GROUPS_KEY = 'key_groups'

export function consumerName(step: StepSpec, streamName: string): string {
  return `${step.stepId}_${streamName}`
}

/** (stream, consumer, filter subjects) pairs a step reads from. */
export function consumersOf(topology: Topology, step: StepSpec): { stream: StreamSpec; name: string; filterSubjects: string[] }[] {
  return topology.streams.flatMap((stream) => {
    const filterSubjects = step.inputs.filter((input) => stream.subjects.some((s) => subjectsIntersect(s, input)))
    return filterSubjects.length > 0 ? [{ stream, name: consumerName(step, stream.name), filterSubjects }] : []
  })
}

function streamConfig(spec: StreamSpec): Partial<StreamConfig> & { name: string } {
  return {
    name: spec.name,
    description: spec.description,
    subjects: [...spec.subjects],
    retention: spec.retention as RetentionPolicy,
    storage: spec.storage as StorageType,
    num_replicas: spec.replicas,
    duplicate_window: nanos(spec.duplicateWindowMs),
    max_age: nanos(spec.maxAgeMs),
    max_bytes: spec.maxBytes,
    discard: spec.discard as DiscardPolicy,
    ...(spec.maxMessagesPerSubject === undefined ? {} : { max_msgs_per_subject: spec.maxMessagesPerSubject }),
  }
}

function compareStream(spec: StreamSpec, existing: StreamConfig): string[] {
  const resource = `stream ${spec.name}`
  const want = streamConfig(spec)
  if (existing.storage !== want.storage) throw new IncompatibleChangeError(resource, 'storage', `is "${existing.storage}" on the server, the topology wants "${want.storage}"`)
  if (existing.retention !== want.retention) throw new IncompatibleChangeError(resource, 'retention', `is "${existing.retention}" on the server, the topology wants "${want.retention}"`)
  const removed = existing.subjects.filter((s) => !want.subjects!.includes(s))
  if (removed.length > 0) throw new IncompatibleChangeError(resource, 'subjects', `would lose ${removed.join(', ')} (stored messages on them would be orphaned)`)
  const limit = (value: number) => (value <= 0 ? Infinity : value)
  if (limit(want.max_age!) < limit(existing.max_age)) throw new IncompatibleChangeError(resource, 'max_age', `would shrink from ${existing.max_age / 1e6} ms to ${want.max_age! / 1e6} ms, deleting older messages`)
  if (limit(want.max_bytes!) < limit(existing.max_bytes)) throw new IncompatibleChangeError(resource, 'max_bytes', `would shrink from ${existing.max_bytes} to ${want.max_bytes}, deleting messages`)
  const changes: string[] = []
  // absent and 0 both mean no limit on the server (-1 and 0)
  const perSubject = (value: number | undefined) => (value === undefined || value <= 0 ? -1 : value)
  if (perSubject(want.max_msgs_per_subject) !== perSubject(existing.max_msgs_per_subject)) {
    changes.push(`max_msgs_per_subject: ${perSubject(existing.max_msgs_per_subject)} -> ${perSubject(want.max_msgs_per_subject)}`)
  }
  for (const field of ['description', 'num_replicas', 'duplicate_window', 'max_age', 'max_bytes', 'discard'] as const) {
    if ((existing[field] ?? '') !== (want[field] ?? '')) changes.push(`${field}: ${existing[field]} -> ${want[field]}`)
  }
  const added = want.subjects!.filter((s) => !existing.subjects.includes(s))
  if (added.length > 0) changes.push(`subjects: + ${added.join(', ')}`)
  return changes
}

async function streamInfo(jsm: JetStreamManager, name: string): Promise<StreamInfo | undefined> {
  try {
    return await jsm.streams.info(name)
  } catch (error) {
    if ((error as { name?: string }).name === 'StreamNotFoundError' || /stream not found/i.test(String(error))) return undefined
    throw error
  }
}

async function applyStream(jsm: JetStreamManager, spec: StreamSpec): Promise<ApplyChange> {
  const info = await streamInfo(jsm, spec.name)
  if (!info) {
    await jsm.streams.add(streamConfig(spec))
    return { kind: 'stream', name: spec.name, action: 'created', changes: [] }
  }
  const changes = compareStream(spec, info.config)
  if (changes.length === 0) return { kind: 'stream', name: spec.name, action: 'unchanged', changes }
  await jsm.streams.update(spec.name, { ...info.config, ...streamConfig(spec) })
  return { kind: 'stream', name: spec.name, action: 'updated', changes }
}

async function applyConsumer(jsm: JetStreamManager, stream: string, name: string, filterSubjects: string[], step: StepSpec): Promise<ApplyChange> {
  const settings = step.consumer!
  const want: Partial<ConsumerConfig> = {
    durable_name: name,
    description: `${step.stepId}: ${step.description}`,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    filter_subjects: filterSubjects,
    max_ack_pending: settings.maxAckPending,
    ack_wait: nanos(settings.ackWaitMs),
    max_deliver: -1,
  }
  let existing: ConsumerConfig | undefined
  try {
    existing = (await jsm.consumers.info(stream, name)).config
  } catch (error) {
    if (!/consumer not found/i.test(String(error)) && (error as { name?: string }).name !== 'ConsumerNotFoundError') throw error
  }
  if (!existing) {
    await jsm.consumers.add(stream, want)
    return { kind: 'consumer', name: `${stream}/${name}`, action: 'created', changes: [] }
  }
  const resource = `consumer ${stream}/${name}`
  if (existing.ack_policy !== want.ack_policy) throw new IncompatibleChangeError(resource, 'ack_policy', `is "${existing.ack_policy}", the topology wants "${want.ack_policy}"`)
  if (existing.deliver_policy !== want.deliver_policy) throw new IncompatibleChangeError(resource, 'deliver_policy', `is "${existing.deliver_policy}", the topology wants "${want.deliver_policy}"`)
  const changes: string[] = []
  const existingFilters = existing.filter_subjects ?? (existing.filter_subject ? [existing.filter_subject] : [])
  if (existingFilters.join(',') !== filterSubjects.join(',')) changes.push(`filter_subjects: ${existingFilters.join(',')} -> ${filterSubjects.join(',')}`)
  for (const field of ['description', 'max_ack_pending', 'ack_wait'] as const) {
    if (existing[field] !== want[field]) changes.push(`${field}: ${existing[field]} -> ${want[field]}`)
  }
  if (changes.length === 0) return { kind: 'consumer', name: `${stream}/${name}`, action: 'unchanged', changes }
  await jsm.consumers.update(stream, name, { description: want.description, filter_subjects: filterSubjects, max_ack_pending: want.max_ack_pending, ack_wait: want.ack_wait })
  return { kind: 'consumer', name: `${stream}/${name}`, action: 'updated', changes }
}

/**
 * Provisions the topology on JetStream: creates what is missing, updates what may
 * change safely, refuses (with the stream and field named) what would lose data.
 * Running it twice changes nothing the second time.
 */
export async function applyTopology(nc: NatsConnection, topology: Topology, options: { keyGroups: number }): Promise<ApplyChange[]> {
  validateTopology(topology)
  const jsm = await jetstreamManager(nc)
  const results: ApplyChange[] = []
  for (const stream of topology.streams) results.push(await applyStream(jsm, stream))
  const kvm = new Kvm(nc)
  for (const bucket of bucketsOf(topology)) {
    const existing = await streamInfo(jsm, `KV_${bucket.bucket}`)
    if (existing) {
      if (existing.config.max_msgs_per_subject !== bucket.history) {
        throw new IncompatibleChangeError(`kv ${bucket.bucket}`, 'history', `is ${existing.config.max_msgs_per_subject} on the server, the topology wants ${bucket.history}`)
      }
      if (Boolean(bucket.atomic) && !existing.config.allow_atomic) {
        await jsm.streams.update(existing.config.name, { ...existing.config, allow_atomic: true })
        results.push({ kind: 'kv', name: bucket.bucket, action: 'updated', changes: ['allow_atomic: false -> true'] })
        continue
      }
      results.push({ kind: 'kv', name: bucket.bucket, action: 'unchanged', changes: [] })
      continue
    }
    await kvm.create(bucket.bucket, { description: bucket.description, history: bucket.history, storage: bucket.storage as StorageType, replicas: bucket.replicas, ttl: bucket.ttlMs })
    if (bucket.atomic) {
      const created = await jsm.streams.info(`KV_${bucket.bucket}`)
      await jsm.streams.update(created.config.name, { ...created.config, allow_atomic: true })
    }
    results.push({ kind: 'kv', name: bucket.bucket, action: 'created', changes: [] })
  }
  results.push(await applyKeyGroups(kvm, options.keyGroups))
  for (const step of topology.steps) {
    // operators replay from their own checkpoints with ordered consumers; only sinks keep durable ones
    if (step.kind !== 'sink') continue
    for (const { stream, name, filterSubjects } of consumersOf(topology, step)) {
      results.push(await applyConsumer(jsm, stream.name, name, filterSubjects, step))
    }
  }
  return results
}

/** The number of key groups is fixed at provisioning: every stored subject depends on it. */
async function applyKeyGroups(kvm: Kvm, keyGroups: number): Promise<ApplyChange> {
  const kv = await kvm.open(META_BUCKET)
  const entry = await kv.get(KEY_GROUPS_KEY)
  if (entry && entry.operation === 'PUT') {
    const stored = Number(entry.string())
    if (stored !== keyGroups) {
      throw new IncompatibleChangeError('installation', 'key_groups', `was provisioned as ${stored}, SEGSTREAM_KEY_GROUPS asks for ${keyGroups} (every stored subject depends on it)`)
    }
    return { kind: 'meta', name: KEY_GROUPS_KEY, action: 'unchanged', changes: [] }
  }
  await kv.create(KEY_GROUPS_KEY, String(keyGroups))
  return { kind: 'meta', name: KEY_GROUPS_KEY, action: 'created', changes: [`${keyGroups}`] }
}

/** Reads the provisioned number of key groups (undefined before apply). */
export async function provisionedKeyGroups(nc: NatsConnection): Promise<number | undefined> {
  const kv = await new Kvm(nc).open(META_BUCKET)
  const entry = await kv.get(KEY_GROUPS_KEY)
  return entry && entry.operation === 'PUT' ? Number(entry.string()) : undefined
}
