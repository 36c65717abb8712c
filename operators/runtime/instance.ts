import { randomBytes } from 'node:crypto'
import type { NatsConnection } from '@nats-io/transport-node'
import { DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages } from '@nats-io/jetstream'
import type { PipelinedPublisher } from '../../broker/publisher.ts'
import type { Logger } from '../../config/logger.ts'
import { consumersOf } from '../../topology/apply.ts'
import type { StepSpec, Topology } from '../../topology/model.ts'
import { newCounters, processMessage, watermarkOf, type InputMessage, type KernelCounters, type KeyGroupState, type Outgoing } from './kernel.ts'
import { Ownership } from './leases.ts'
import type { Metrics } from './metrics.ts'
import type { Operator } from './operator.ts'
import { backoffMs, sleep } from './retry.ts'
import { FencedError, StateStore } from './state-store.ts'

/** Key groups committed at once; well under the server's 50 atomic batches in flight per stream. */
const COMMIT_CONCURRENCY = 16
/** Changed keys held in memory before a commit is forced. */
const MAX_UNCOMMITTED_KEYS = 20_000

/** Named places where a test can make the process die (SEGSTREAM_FAILPOINT). */
export type Failpoint = 'after-publish' | 'after-commit' | 'before-publish'

export interface InstanceOptions<State, Input> {
  nc: NatsConnection
  publisher: PipelinedPublisher
  operator: Operator<State, Input>
  step: StepSpec
  topology: Topology
  keyGroups: number
  logger: Logger
  metrics?: Metrics
  /** Default: random. Shows in leases and logs. */
  instanceId?: string
  /** Input messages handled per commit. Default: the step's consumer batch size. */
  batchSize?: number
  /** Allowed lateness per project, ms. Default 5 minutes. */
  latenessOf?: (project: string) => number
  /** Keys idle longer than this (event time) restart from init(). Default 30 days. */
  idleTtlMs?: number
  leaseMs?: number
  heartbeatMs?: number
  /** Longest time between checkpoints of a key group with new input, ms. Default 200. */
  commitIntervalMs?: number
  /** Called at each failpoint; tests make it kill the process. */
  failpoint?: (point: Failpoint) => void
}

interface Owned<State> {
  group: KeyGroupState<State>
  /** Revision of the checkpoint we last wrote: the next commit expects it. */
  revision: number
  /** Offsets of the last successful commit. */
  committed: Record<string, number>
}

/**
 * Runs one instance of an operator step: owns a share of the key groups,
 * replays each from its checkpoint with ordered consumers (no acks: the
 * checkpoint is the acknowledgement), applies the pure logic, publishes the
 * outputs with ids derived from the inputs, then commits state and offsets.
 * Any failure rewinds the key group to its last checkpoint.
 */
export function startInstance<State, Input>(options: InstanceOptions<State, Input>) {
  const { nc, operator, step, publisher, metrics } = options
  const stepId = step.stepId
  const instanceId = options.instanceId ?? randomBytes(4).toString('hex')
  const logger = options.logger.child({ stepId, instanceId })
  const js = jetstream(nc)
  const store = new StateStore(nc, stepId)
  const inputs = consumersOf(options.topology, step).map(({ stream, filterSubjects }) => ({ stream: stream.name, filterSubjects }))
  const batchSize = options.batchSize ?? step.consumer?.batchSize ?? 1000
  const latenessOf = options.latenessOf ?? (() => 5 * 60_000)
  const counters: KernelCounters = newCounters()
  const kernelOptions = { stepId, latenessOf, idleTtlMs: options.idleTtlMs ?? 30 * 86_400_000, clock: Date.now, keyGroups: options.keyGroups }
  const groups = new Map<number, Owned<State>>()
  /** Key groups processed since their last commit. */
  const uncommitted = new Set<number>()
  let lastCommit = performance.now()
  const commitIntervalMs = options.commitIntervalMs ?? 200
  const failpoint = options.failpoint ?? (() => {})

  // each message remembers the consumer generation that read it: older ones are dropped
  let queue: (InputMessage & { generation: number })[] = []
  let wakeProcessor: (() => void) | undefined
  let wakePumps: (() => void) | undefined
  let generation = 0
  let pumps: ConsumerMessages[] = []
  let stopping = false
  // ownership changes and batches never interleave
  let exclusive: Promise<unknown> = Promise.resolve()
  const serially = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = exclusive.then(fn, fn)
    exclusive = next.catch(() => {})
    return next
  }

  const restartPumps = async () => {
    generation++
    const mine = generation
    for (const pump of pumps) pump.stop()
    pumps = []
    queue = []
    if (stopping || groups.size === 0) return
    for (const input of inputs) {
      const filterSubjects = [...groups.keys()].flatMap((keyGroup) => input.filterSubjects.map((s) => s.replace(/\*$/, String(keyGroup))))
      const start = Math.min(...[...groups.values()].map((owned) => owned.group.offsets[input.stream] ?? 0)) + 1
      const consumer = await js.consumers.get(input.stream, { filter_subjects: filterSubjects, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start })
      const messages = await consumer.consume({ max_messages: batchSize * 2 })
      pumps.push(messages)
      void (async () => {
        try {
          for await (const message of messages) {
            if (generation !== mine) break
            queue.push({ stream: input.stream, seq: message.seq, subject: message.subject, data: message.data, generation: mine })
            wakeProcessor?.()
            // backpressure: stop pulling while the processor is behind
            while (queue.length >= batchSize * 4 && generation === mine) await new Promise<void>((resolve) => (wakePumps = resolve))
          }
        } catch (error) {
          if (generation === mine && !stopping) logger.warn({ err: error, stream: input.stream }, 'input consumer failed; restarting from the checkpoints')
          if (generation === mine && !stopping) void serially(restartPumps)
        }
      })()
    }
  }

  const load = async (keyGroup: number, epoch: number) => {
    const loaded = await store.load<State>(keyGroup)
    if (loaded.epoch > epoch) throw new FencedError(keyGroup, `checkpoint epoch ${loaded.epoch} is newer than ours (${epoch})`)
    const revision = await store.claim(loaded.group, loaded.revision, epoch)
    groups.set(keyGroup, { group: loaded.group, revision, committed: { ...loaded.group.offsets } })
    metrics?.set('segstream_state_keys', 'keys of state held', { step: stepId, key_group: keyGroup }, loaded.group.keys.size)
  }

  /** Reloads a key group from its checkpoint; drops it if another owner has claimed it. */
  const rewind = async (keyGroup: number, reason: unknown) => {
    const owned = groups.get(keyGroup)
    if (!owned) return
    groups.delete(keyGroup)
    try {
      const loaded = await store.load<State>(keyGroup)
      if (loaded.epoch !== owned.group.epoch) {
        logger.warn({ keyGroup, ourEpoch: owned.group.epoch, theirEpoch: loaded.epoch }, 'key group fenced: another owner took over')
        metrics?.forget({ step: stepId, key_group: keyGroup })
        return
      }
      groups.set(keyGroup, { group: loaded.group, revision: loaded.revision, committed: { ...loaded.group.offsets } })
      logger.warn({ keyGroup, err: reason }, 'key group rewound to its checkpoint')
    } catch (error) {
      logger.warn({ keyGroup, err: error }, 'could not reload key group (broker unavailable?); retrying')
      retryReload(keyGroup, owned.group.epoch, 1)
    }
  }

  /** Keeps trying to reload a key group we still hold the lease of, until it works or the lease is gone. */
  const retryReload = (keyGroup: number, epoch: number, attempt: number) => {
    setTimeout(() => void serially(async () => {
      if (stopping || groups.has(keyGroup) || ownership.epochOf(keyGroup) !== epoch) return
      try {
        const loaded = await store.load<State>(keyGroup)
        if (loaded.epoch !== epoch) return
        groups.set(keyGroup, { group: loaded.group, revision: loaded.revision, committed: { ...loaded.group.offsets } })
        logger.info({ keyGroup }, 'key group reloaded from its checkpoint')
        await restartPumps()
      } catch (error) {
        logger.warn({ keyGroup, err: error, attempt }, 'reload failed; retrying')
        retryReload(keyGroup, epoch, attempt + 1)
      }
    }), backoffMs(attempt, 250, 5_000)).unref()
  }

  const ownership = new Ownership(
    { stepId, instanceId, keyGroups: options.keyGroups, leaseMs: options.leaseMs, heartbeatMs: options.heartbeatMs, logger },
    {
      acquired: (keyGroup, epoch) => serially(async () => {
        await load(keyGroup, epoch)
        logger.info({ keyGroup, epoch }, 'key group acquired')
        await restartPumps()
      }),
      released: (keyGroup, reason) => serially(async () => {
        // handing over in good order: checkpoint first, so the next owner replays nothing
        if (reason !== 'lost' && uncommitted.has(keyGroup)) await commitGroups([keyGroup])
        groups.delete(keyGroup)
        uncommitted.delete(keyGroup)
        metrics?.forget({ step: stepId, key_group: keyGroup })
        logger.info({ keyGroup, reason }, 'key group released')
        await restartPumps()
      }),
    },
  )

  /** Commits state and offsets of these key groups; one that fails is rewound to its checkpoint. */
  const commitGroups = async (keyGroups: number[]) => {
    let rewound = false
    lastCommit = performance.now()
    // the server allows 50 atomic batches in flight per stream: commit a few key groups at a time
    const pendingGroups = [...keyGroups]
    await Promise.all(Array.from({ length: Math.min(COMMIT_CONCURRENCY, pendingGroups.length) }, async () => {
      for (let keyGroup = pendingGroups.shift(); keyGroup !== undefined; keyGroup = pendingGroups.shift()) {
        uncommitted.delete(keyGroup)
        const owned = groups.get(keyGroup)
        if (!owned) continue
        try {
          owned.revision = await store.commit(owned.group, owned.revision, owned.committed)
          owned.committed = { ...owned.group.offsets }
        } catch (error) {
          rewound = true
          await rewind(keyGroup, error)
        }
      }
    }))
    if (rewound) await restartPumps()
  }

  const handleBatch = async (batch: (InputMessage & { generation: number })[]) => {
    const started = performance.now()
    const outgoing: Outgoing[] = []
    const touched = new Set<number>()
    for (const message of batch) {
      // read before a rewind or an ownership change: the new consumers deliver it again, in order
      if (message.generation !== generation) continue
      const keyGroup = Number(message.subject.slice(message.subject.lastIndexOf('.') + 1))
      const owned = groups.get(keyGroup)
      if (!owned) continue
      touched.add(keyGroup)
      const out = processMessage(operator, owned.group, message, kernelOptions, counters)
      for (const o of out) outgoing.push(o)
    }
    if (touched.size === 0) return
    failpoint('before-publish')
    const results = await Promise.allSettled(outgoing.map((o) => publisher.publish(o.subject, o.data, o.msgId)))
    const failure = results.find((r) => r.status === 'rejected')
    if (failure) {
      for (const keyGroup of touched) await rewind(keyGroup, failure.reason)
      await restartPumps()
      throw failure.reason
    }
    failpoint('after-publish')
    metrics?.inc('segstream_events_in_total', 'input messages handled', { step: stepId }, batch.length)
    metrics?.inc('segstream_events_out_total', 'messages published', { step: stepId }, outgoing.length)
    for (const keyGroup of touched) uncommitted.add(keyGroup)
    // checkpoints every commitIntervalMs, not every batch: outputs are already stored, and a
    // replay of the batches since re-publishes them under the same ids (duplicates, dropped)
    const dirtyKeys = [...uncommitted].reduce((sum, keyGroup) => sum + (groups.get(keyGroup)?.group.dirty.size ?? 0), 0)
    if (performance.now() - lastCommit < commitIntervalMs && dirtyKeys < MAX_UNCOMMITTED_KEYS) return
    const committing = performance.now()
    await commitGroups([...uncommitted])
    failpoint('after-commit')
    metrics?.inc('segstream_checkpoint_seconds_sum', 'time spent checkpointing', { step: stepId }, (performance.now() - committing) / 1000)
    metrics?.inc('segstream_checkpoint_seconds_count', 'checkpoints', { step: stepId }, 1)
    metrics?.inc('segstream_batch_seconds_sum', 'time spent per batch, publish and checkpoint included', { step: stepId }, (performance.now() - started) / 1000)
  }

  const processor = (async () => {
    let failures = 0
    while (!stopping) {
      if (queue.length === 0 && uncommitted.size > 0 && performance.now() - lastCommit >= commitIntervalMs) {
        await serially(() => commitGroups([...uncommitted])).catch((error) => logger.warn({ err: error }, 'commit failed'))
        failpoint('after-commit')
        continue
      }
      if (queue.length === 0) {
        await new Promise<void>((resolve) => {
          wakeProcessor = resolve
          setTimeout(resolve, 200)
        })
        continue
      }
      const batch = queue.splice(0, batchSize)
      wakePumps?.()
      try {
        await serially(() => handleBatch(batch))
        failures = 0
      } catch (error) {
        failures++
        logger.warn({ err: error, failures }, 'batch failed; key groups rewound to their checkpoints')
        await sleep(backoffMs(failures, 200, 5_000))
      }
    }
  })()

  if (metrics) {
    metrics.collect(async () => {
      metrics.set('segstream_owned_key_groups', 'key groups this instance owns', { step: stepId, instance: instanceId }, groups.size)
      metrics.setCounter('segstream_dead_lettered_total', 'inputs sent to the dead-letter subject', { step: stepId }, counters.deadLettered)
      metrics.setCounter('segstream_timers_fired_total', 'event-time timers fired', { step: stepId }, counters.timersFired)
      metrics.setCounter('segstream_late_total', 'inputs too late for what they would change, published on the late subject', { step: stepId }, counters.late)
      metrics.setCounter('segstream_merged_total', 'identity merges applied to state', { step: stepId }, counters.merged)
      const jsm = await jetstreamManager(nc)
      for (const input of inputs) {
        const info = await jsm.streams.info(input.stream, { subjects_filter: input.filterSubjects[0]! }).catch(() => undefined)
        // the last sequence of each key group's subjects (one per project), via direct gets
        const lastSeq = new Map<number, number>()
        for (const subject of Object.keys(info?.state.subjects ?? {})) {
          const keyGroup = Number(subject.slice(subject.lastIndexOf('.') + 1))
          if (!groups.has(keyGroup)) continue
          const last = await jsm.streams.getMessage(input.stream, { last_by_subj: subject }).catch(() => undefined)
          if (last) lastSeq.set(keyGroup, Math.max(lastSeq.get(keyGroup) ?? 0, last.seq))
        }
        for (const [keyGroup, owned] of groups) {
          // lag: how far the key group's newest input is beyond its checkpoint, in stream sequence
          metrics.set('segstream_consumer_lag', 'stream sequences between the checkpoint and the key group\'s newest input', { step: stepId, stream: input.stream, key_group: keyGroup }, Math.max(0, (lastSeq.get(keyGroup) ?? 0) - (owned.group.offsets[input.stream] ?? 0)))
          for (const name of Object.keys(owned.group.maxEventTime)) {
            const [project, source] = name.split('|') as [string, 'live' | 'import']
            const watermark = watermarkOf(owned.group, project, source, latenessOf(project))
            metrics.set('segstream_watermark_delay_seconds', 'wall clock minus watermark', { step: stepId, key_group: keyGroup, project, source }, (Date.now() - watermark) / 1000)
          }
          metrics.set('segstream_state_keys', 'keys of state held', { step: stepId, key_group: keyGroup }, owned.group.keys.size)
        }
      }
    })
  }

  return {
    instanceId,
    stepId,
    start: () => ownership.start(nc),
    owned: () => [...groups.keys()].sort((a, b) => a - b),
    /** Input messages read but not yet handled: bounded by four batches. */
    buffered: () => queue.length,
    counters,
    /** Graceful stop: finish the batch in hand, checkpoint, give the key groups back. */
    async stop(): Promise<void> {
      stopping = true
      wakeProcessor?.()
      await processor
      await serially(async () => {
        if (uncommitted.size > 0) await commitGroups([...uncommitted])
        generation++
        for (const pump of pumps) pump.stop()
        pumps = []
      })
      await ownership.stop()
    },
  }
}

export type OperatorInstance = ReturnType<typeof startInstance>
