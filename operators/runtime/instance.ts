import { randomBytes } from 'node:crypto'
import type { NatsConnection } from '@nats-io/transport-node'
import { DeliverPolicy, jetstream, jetstreamManager, type Consumer, type ConsumerMessages } from '@nats-io/jetstream'
import type { PipelinedPublisher } from '../../broker/publisher.ts'
import type { Logger } from '../../config/logger.ts'
import { consumersOf } from '../../topology/apply.ts'
import type { StepSpec, Topology } from '../../topology/model.ts'
import type { Stage } from '../../topology/subjects.ts'
import { newCounters, processMessage, watermarkOf, type InputMessage, type KernelCounters, type KeyGroupState, type Outgoing } from './kernel.ts'
import { Ownership } from './leases.ts'
import type { Metrics } from './metrics.ts'
import type { Operator } from './operator.ts'
import { backoffMs, sleep } from './retry.ts'
import { FencedError, StateStore, type PreparedCommit } from './state-store.ts'

/**
 * Changed keys held in memory before a commit is forced: it bounds one commit (its atomic
 * batches, and the encoded states held until they are sent). Well above the keys a stage sees
 * in one interval at a few tens of thousands of users, or the cap, not the interval, would set
 * how often each key is written.
 */
const MAX_UNCOMMITTED_KEYS = 50_000
/** Outputs awaiting their acks before the next batch waits: the publisher's window (its default). */
const MAX_OUTPUTS_IN_FLIGHT = 5_000
/**
 * Key groups are read in this many lanes (key group modulo lanes), each with at most one
 * batch whose acks are outstanding: batches of different lanes are in flight together,
 * while a key group never has an output in flight behind another of its own that may fail.
 */
const LANES = 4

/** Default checkpoint interval: see {@link InstanceOptions.commitIntervalMs}. */
export const DEFAULT_COMMIT_INTERVAL_MS = 10_000

/**
 * The checkpoint interval, fenced by the duplicate window of the step's output streams.
 * After a crash, outputs published since the last checkpoint go out again (same ids) once
 * the next owner has taken over (a lease) and replayed: at most the interval, the commit's
 * own time, the lease and the catch-up after their first publish. JetStream drops them as
 * duplicates only inside its window, so the interval keeps to a quarter of it; the rest is
 * the margin for the lease, the commit and the catch-up.
 */
export function commitIntervalOf(options: Pick<InstanceOptions<unknown, unknown>, 'commitIntervalMs' | 'step' | 'topology'>, logger?: Logger): number {
  const wanted = options.commitIntervalMs ?? DEFAULT_COMMIT_INTERVAL_MS
  const windows = options.topology.streams
    .filter((stream) => stream.subjects.some((subject) => options.step.outputs.includes(subject)))
    .map((stream) => stream.duplicateWindowMs)
  if (windows.length === 0) return wanted
  const cap = Math.floor(Math.min(...windows) / 4)
  if (wanted > cap) logger?.warn({ wanted, cap, duplicateWindowMs: Math.min(...windows) }, 'checkpoint interval capped at a quarter of the output streams\' duplicate window')
  return Math.min(wanted, cap)
}

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
  /** Input messages applied and published as one batch. Default: the step's consumer batch size. */
  batchSize?: number
  /** Allowed lateness per project, ms. Default 5 minutes. */
  latenessOf?: (project: string) => number
  /** Keys idle longer than this (event time) restart from init(). Default 30 days. */
  idleTtlMs?: number
  /** Input streams whose event times hold each other back (KernelOptions.alignedStreams). Default: none. */
  alignedStreams?: readonly string[]
  leaseMs?: number
  heartbeatMs?: number
  /**
   * Longest time between checkpoints of a key group with new input, ms. Default 10,000.
   * A key written several times between two checkpoints is written once, so with many keys
   * (every user) a long interval saves most state writes. What it costs: a crash replays up
   * to this much input, and the replayed outputs must still fall inside the duplicate window
   * of the streams they go to, so it is capped at a quarter of the shortest of those windows.
   */
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

/** One input stream being read. */
interface Pump {
  consumer: Consumer
  messages: ConsumerMessages
  stopped?: boolean
}

/** An input read and not yet handled, with the consumer generation that read it. */
interface QueuedInput extends InputMessage {
  keyGroup: number
  generation: number
}

/** A batch whose outputs are published and not all acknowledged yet. */
interface PublishedBatch {
  lane: number
  /** Key groups whose state or offsets the batch moved. */
  touched: Set<number>
  /** Resolves (never rejects) once every output is stored or one was refused. */
  settled: Promise<void>
  done: boolean
  failure?: unknown
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
  // watermarks go on down the topology, into the same key group of each stage this step writes
  // (not into a latest-value stream, one message per subject: a watermark would replace the value)
  const latestValue = (filter: string) => options.topology.streams.some((stream) => stream.maxMessagesPerSubject !== undefined && stream.subjects.includes(filter))
  const forwardWatermarksTo = options.step.outputs
    .filter((filter) => !latestValue(filter)).map((filter) => filter.split('.')[2] as Stage).filter((stage) => stage !== 'dlq' && stage !== 'late')
  const kernelOptions = { stepId, latenessOf, idleTtlMs: options.idleTtlMs ?? 30 * 86_400_000, clock: Date.now, keyGroups: options.keyGroups, forwardWatermarksTo, alignedStreams: options.alignedStreams }
  const groups = new Map<number, Owned<State>>()
  /** Key groups processed since their last commit. */
  const uncommitted = new Set<number>()
  let lastCommit = performance.now()
  const commitIntervalMs = commitIntervalOf(options, logger)
  const failpoint = options.failpoint ?? (() => {})

  // each message remembers the consumer generation that read it: older ones are dropped
  let lanes: QueuedInput[][] = Array.from({ length: LANES }, () => [])
  /** Inputs in all lanes: at most four batches are held, beyond that the consumers stop pulling. */
  let queued = 0
  const maxQueued = batchSize * 4
  const clearLanes = () => {
    lanes = Array.from({ length: LANES }, () => [])
    queued = 0
  }
  let wakeProcessor: (() => void) | undefined
  let pumpWaiters: (() => void)[] = []
  let generation = 0
  let pumps: Pump[] = []
  let stopping = false
  // ownership changes, batches, commit starts and rewinds never interleave
  let exclusive: Promise<unknown> = Promise.resolve()
  const serially = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = exclusive.then(fn, fn)
    exclusive = next.catch(() => {})
    return next
  }
  const wake = () => {
    const resolve = wakeProcessor
    wakeProcessor = undefined
    resolve?.()
  }
  const wakePumps = () => {
    const waiters = pumpWaiters
    pumpWaiters = []
    for (const resolve of waiters) resolve()
  }

  // The pipeline: batch N+1 is applied and published while the acks of batch N are on their
  // way (one batch per lane). A commit is prepared (encoded) at a batch boundary and sent once
  // every batch before that boundary is acknowledged, so a checkpoint never covers an output
  // that is not stored.
  let pipeline: PublishedBatch[] = []
  let commitInFlight: Promise<void> | undefined
  /** The first publish failure not yet recovered from: the key groups of failed batches rewind. */
  let publishFailure: unknown
  /** Key groups whose commit failed: they rewind to their checkpoint. */
  const commitFailures = new Map<number, unknown>()
  /** The consumers could not be recreated (broker unavailable): the processor tries again. */
  let pumpsBroken = false
  /** Key groups were acquired or released: the consumers restart at the end of the ownership round. */
  let pumpsStale = false
  /** Failures since the last acknowledged batch: the backoff before reading again grows with them. */
  let failures = 0

  /**
   * Stops reading, and deletes the consumer on the server: an ordered consumer
   * otherwise lives on for minutes, delivering its outstanding pull into an
   * inbox nobody listens to.
   */
  const stopPump = (pump: Pump) => {
    if (pump.stopped) return
    pump.stopped = true
    pump.messages.stop()
    pump.consumer.delete().catch(() => {})
  }

  const restartPumps = async () => {
    generation++
    pumpsStale = false
    const mine = generation
    for (const pump of pumps) stopPump(pump)
    pumps = []
    clearLanes()
    // a pump parked on backpressure sees the new generation and lets its consumer go
    wakePumps()
    if (stopping || groups.size === 0) return
    for (const input of inputs) {
      // owning every key group, the stage's own filter says the same with one subject, which the
      // server matches much faster than one subject per key group
      const filterSubjects = groups.size === options.keyGroups
        ? [...input.filterSubjects]
        : [...groups.keys()].flatMap((keyGroup) => input.filterSubjects.map((s) => s.replace(/\*$/, String(keyGroup))))
      const start = Math.min(...[...groups.values()].map((owned) => owned.group.offsets[input.stream] ?? 0)) + 1
      const consumer = await js.consumers.get(input.stream, { filter_subjects: filterSubjects, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start })
      const messages = await consumer.consume({ max_messages: batchSize * 2 })
      const pump: Pump = { consumer, messages }
      if (generation !== mine) {
        stopPump(pump)
        return
      }
      pumps.push(pump)
      void (async () => {
        try {
          for await (const message of messages) {
            if (generation !== mine) break
            const subject = message.subject
            const keyGroup = Number(subject.slice(subject.lastIndexOf('.') + 1))
            const lane = lanes[keyGroup % LANES]!
            lane.push({ stream: input.stream, seq: message.seq, subject, data: message.data, keyGroup, generation: mine })
            queued++
            if (lane.length === batchSize || pipeline.length === 0 || queued >= maxQueued) wake()
            // backpressure: stop pulling while the processor is behind
            while (queued >= maxQueued && generation === mine) await new Promise<void>((resolve) => pumpWaiters.push(resolve))
          }
        } catch (error) {
          if (generation === mine && !stopping) logger.warn({ err: error, stream: input.stream }, 'input consumer failed; restarting from the checkpoints')
          if (generation === mine && !stopping) {
            serially(restartPumps).catch(() => {
              pumpsBroken = true
              wake()
            })
          }
        } finally {
          stopPump(pump)
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
    uncommitted.delete(keyGroup)
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

  /** Waits until nothing is in flight: every published batch settled, the commit in hand finished. */
  const settleAll = async () => {
    while (commitInFlight || pipeline.some((batch) => !batch.done)) {
      await Promise.all(pipeline.map((batch) => batch.settled))
      await commitInFlight
    }
  }

  const ownership = new Ownership(
    { stepId, instanceId, keyGroups: options.keyGroups, leaseMs: options.leaseMs, heartbeatMs: options.heartbeatMs, logger },
    {
      acquired: (keyGroup, epoch) => serially(async () => {
        await load(keyGroup, epoch)
        logger.info({ keyGroup, epoch }, 'key group acquired')
        // what was read before is dropped (the key group may have been ours before, at other
        // offsets); reading starts again, from the checkpoints, when the round ends
        generation++
        clearLanes()
        pumpsStale = true
      }),
      released: (keyGroup, reason) => serially(async () => {
        // handing over in good order: its outputs stored and a checkpoint, so the next owner replays nothing
        await settleAll()
        const clean = publishFailure === undefined && !commitFailures.has(keyGroup)
        if (reason !== 'lost' && clean && uncommitted.has(keyGroup)) await commitNow([keyGroup])
        groups.delete(keyGroup)
        uncommitted.delete(keyGroup)
        metrics?.forget({ step: stepId, key_group: keyGroup })
        logger.info({ keyGroup, reason }, 'key group released')
        // its inputs are skipped until then: the consumers narrow to the key groups left when the round ends
        pumpsStale = true
      }),
      roundEnded: () => serially(async () => {
        if (pumpsStale) await restartPumps()
      }).catch((error) => {
        logger.warn({ err: error }, 'could not start the input consumers; retrying')
        pumpsBroken = true
        wake()
      }),
    },
  )

  const dirtyKeys = () => {
    let sum = 0
    for (const keyGroup of uncommitted) sum += groups.get(keyGroup)?.group.dirty.size ?? 0
    return sum
  }

  /** Encodes the changes of these key groups as they are now (synchronously, at a batch boundary). */
  const prepareCommit = (keyGroups: Iterable<number>) => {
    lastCommit = performance.now()
    const prepared: { owned: Owned<State>; prepared: PreparedCommit }[] = []
    for (const keyGroup of keyGroups) {
      uncommitted.delete(keyGroup)
      const owned = groups.get(keyGroup)
      if (owned) prepared.push({ owned, prepared: store.prepare(owned.group, owned.committed) })
    }
    return prepared
  }

  /** Writes prepared commits; a key group whose commit fails is rewound by the processor. */
  const sendCommit = async (prepared: { owned: Owned<State>; prepared: PreparedCommit }[]) => {
    const started = performance.now()
    let outcomes
    try {
      outcomes = await store.commit(prepared.map(({ owned, prepared }) => ({ prepared, revision: owned.revision })))
    } catch (error) {
      outcomes = prepared.map(({ prepared }) => ({ keyGroup: prepared.keyGroup, error: error as Error }))
    }
    outcomes.forEach((outcome, index) => {
      const { owned, prepared: commit } = prepared[index]!
      if (outcome.error) {
        commitFailures.set(outcome.keyGroup, outcome.error)
      } else {
        owned.revision = outcome.revision
        owned.committed = commit.offsets
      }
    })
    failpoint('after-commit')
    metrics?.inc('segstream_checkpoint_seconds_sum', 'time spent checkpointing', { step: stepId }, (performance.now() - started) / 1000)
    metrics?.inc('segstream_checkpoint_seconds_count', 'checkpoints', { step: stepId }, 1)
  }

  /** Commits these key groups now: nothing may be in flight (after settleAll). */
  const commitNow = (keyGroups: Iterable<number>) => sendCommit(prepareCommit(keyGroups))

  /**
   * Starts a commit of every key group that moved, prepared now and sent once
   * every batch published so far is acknowledged; processing goes on meanwhile.
   * If one of those batches fails, the commit is abandoned: its keys are dirty again.
   */
  const startCommit = () => {
    const before = [...pipeline]
    const prepared = prepareCommit([...uncommitted])
    commitInFlight = (async () => {
      await Promise.all(before.map((batch) => batch.settled))
      if (before.some((batch) => batch.failure !== undefined)) {
        for (const { owned, prepared: commit } of prepared) {
          if (groups.get(commit.keyGroup) !== owned) continue
          for (const key of commit.keys) owned.group.dirty.add(key)
          uncommitted.add(commit.keyGroup)
        }
        return
      }
      await sendCommit(prepared)
    })().finally(() => {
      commitInFlight = undefined
      wake()
    })
  }

  const handleBatch = async (lane: number, batch: QueuedInput[]) => {
    const started = performance.now()
    const outgoing: Outgoing[] = []
    const touched = new Set<number>()
    let handled = 0
    try {
      for (const message of batch) {
        // read before a rewind or an ownership change: the new consumers deliver it again, in order
        if (message.generation !== generation) continue
        const owned = groups.get(message.keyGroup)
        if (!owned) continue
        touched.add(message.keyGroup)
        handled++
        const out = processMessage(operator, owned.group, message, kernelOptions, counters)
        for (const o of out) outgoing.push(o)
      }
    } catch (error) {
      // the kernel itself failed (the logic's errors are dead letters): the key groups rewind
      pipeline.push({ lane, touched, settled: Promise.resolve(), done: true, failure: error })
      publishFailure ??= error
      return
    }
    if (touched.size === 0) return
    failpoint('before-publish')
    for (const keyGroup of touched) uncommitted.add(keyGroup)
    const published: PublishedBatch = { lane, touched, settled: Promise.resolve(), done: false }
    published.settled = publisher.publishBatch(outgoing).then(
      () => {
        published.done = true
        failures = 0
        failpoint('after-publish')
        wake()
        metrics?.inc('segstream_events_in_total', 'input messages handled', { step: stepId }, handled)
        metrics?.inc('segstream_events_out_total', 'messages published', { step: stepId }, outgoing.length)
        metrics?.inc('segstream_batch_seconds_sum', 'time from a batch\'s first input applied to its last output acknowledged', { step: stepId }, (performance.now() - started) / 1000)
        // acknowledged, it leaves the pipeline; a failed one stays until the rewind
        pipeline.splice(pipeline.indexOf(published), 1)
      },
      (error: unknown) => {
        published.done = true
        published.failure = error
        publishFailure ??= error
        wake()
      },
    )
    pipeline.push(published)
  }

  /**
   * After a failed publish or commit: once nothing is in flight, every key group
   * a failed batch touched, and every key group whose commit failed, rewinds to
   * its checkpoint; everything read after is discarded and read again. A key
   * group has no batch in flight behind a failed one (one per lane), so its
   * outputs are stored in input order whatever fails.
   */
  const recover = async () => {
    await settleAll()
    const reason = publishFailure ?? [...commitFailures.values()][0]
    const affected = new Set(commitFailures.keys())
    for (const batch of pipeline) if (batch.failure !== undefined) for (const keyGroup of batch.touched) affected.add(keyGroup)
    pipeline = []
    publishFailure = undefined
    commitFailures.clear()
    for (const keyGroup of affected) await rewind(keyGroup, reason)
    pumpsBroken = true
    await restartPumps()
    pumpsBroken = false
    return reason
  }

  /**
   * The lane to handle next: one with no batch in flight, and a full batch waiting, or
   * anything waiting when nothing at all is in flight (or reading has stopped on the
   * bound). While acks are on their way, inputs gather into full batches: taking whatever
   * has arrived would publish batches of a message or two, each with its own write and
   * ack round, for the same work.
   */
  const nextLane = (): number | undefined => {
    const idle = pipeline.length === 0 || queued >= maxQueued
    let best: number | undefined
    for (let lane = 0; lane < LANES; lane++) {
      const waiting = lanes[lane]!.length
      if (waiting === 0 || (waiting < batchSize && !idle) || pipeline.some((batch) => batch.lane === lane)) continue
      if (best === undefined || waiting > lanes[best]!.length) best = lane
    }
    return best
  }

  const processor = (async () => {
    while (!stopping) {
      if (publishFailure !== undefined || commitFailures.size > 0 || pumpsBroken) {
        failures++
        const reason = await serially(recover).catch((error) => error)
        logger.warn({ err: reason, failures }, pumpsBroken ? 'could not restart the input consumers; retrying' : 'batch failed; key groups rewound to their checkpoints')
        await sleep(backoffMs(failures, 200, 5_000))
        continue
      }
      const now = performance.now()
      const overfull = dirtyKeys() >= MAX_UNCOMMITTED_KEYS
      if (uncommitted.size > 0 && !commitInFlight && (now - lastCommit >= commitIntervalMs || overfull)) {
        await serially(async () => startCommit())
        continue
      }
      if (overfull && commitInFlight) {
        await commitInFlight
        continue
      }
      const lane = nextLane()
      if (lane === undefined) {
        await new Promise<void>((resolve) => {
          // a commit in flight wakes us when it ends
          const timer = setTimeout(resolve, uncommitted.size > 0 && !commitInFlight ? Math.max(1, commitIntervalMs - (now - lastCommit)) : 200)
          wakeProcessor = () => {
            clearTimeout(timer)
            resolve()
          }
        })
        continue
      }
      // the publisher's window is full: wait for the oldest batch's acks rather than queue behind it
      if (pipeline.length > 0 && publisher.inFlight >= MAX_OUTPUTS_IN_FLIGHT) {
        await pipeline[0]!.settled
        continue
      }
      const batch = lanes[lane]!.splice(0, batchSize)
      queued -= batch.length
      wakePumps()
      await serially(() => handleBatch(lane, batch))
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
    buffered: () => queued,
    counters,
    /** Graceful stop: finish the batch in hand, wait for its acks, checkpoint, give the key groups back. */
    async stop(): Promise<void> {
      stopping = true
      wake()
      await processor
      await serially(async () => {
        await settleAll()
        if (publishFailure === undefined && uncommitted.size > 0) {
          const failed = new Set(commitFailures.keys())
          await commitNow([...uncommitted].filter((keyGroup) => !failed.has(keyGroup)))
        }
        generation++
        for (const pump of pumps) stopPump(pump)
        pumps = []
        wakePumps()
      })
      await ownership.stop()
    },
  }
}

export type OperatorInstance = ReturnType<typeof startInstance>
