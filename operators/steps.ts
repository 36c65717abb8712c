import { jetstream } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { PipelinedPublisher } from '../broker/publisher.ts'
import type { Logger } from '../config/logger.ts'
import type { EnrichedEventEnvelope } from '../schemas/envelope.ts'
import type { Store } from '../store/store.ts'
import { consumersOf } from '../topology/apply.ts'
import type { StepSpec, Topology } from '../topology/model.ts'
import { createEnrich } from './enrich/logic.ts'
import { startInstance, type Failpoint } from './runtime/instance.ts'
import type { Metrics } from './runtime/metrics.ts'
import type { Operator } from './runtime/operator.ts'
import { runSink } from './runtime/run-sink.ts'
import { eventRowOf } from './sink/rows.ts'

export interface StepContext {
  nc: NatsConnection
  publisher: PipelinedPublisher
  store: Store
  topology: Topology
  keyGroups: number
  logger: Logger
  metrics?: Metrics
  /** Test hook: SEGSTREAM_FAILPOINT wiring. */
  failpoint?: (point: Failpoint) => void
  /** Lease timing, shortened in tests. */
  leaseMs?: number
  heartbeatMs?: number
}

/** A running step: stop() finishes the batch in hand, checkpoints and leaves. */
export interface RunningStep {
  stop(): Promise<void>
}

type StepRunner = (step: StepSpec, context: StepContext) => Promise<RunningStep>

/** Operators by stepId: the pure logic the runtime drives. */
export const OPERATORS: Record<string, (context: StepContext) => Operator<any, any>> = {
  enrich: (context) => createEnrich({ keyGroups: context.keyGroups }),
}

const runOperatorStep: StepRunner = async (step, context) => {
  const factory = OPERATORS[step.stepId]
  if (!factory) throw new Error(`operator step "${step.stepId}" has no logic in operators/steps.ts`)
  const instance = startInstance({
    nc: context.nc, publisher: context.publisher, operator: factory(context), step, topology: context.topology,
    keyGroups: context.keyGroups, logger: context.logger, metrics: context.metrics, failpoint: context.failpoint,
    leaseMs: context.leaseMs, heartbeatMs: context.heartbeatMs,
  })
  await instance.start()
  return instance
}

/** Sinks by stepId. */
const SINKS: Record<string, StepRunner> = {
  'sink-events': async (step, context) => {
    const controller = new AbortController()
    const running = runSink({
      stepId: step.stepId,
      js: jetstream(context.nc),
      publisher: context.publisher,
      consumers: consumersOf(context.topology, step).map(({ stream, name }) => ({ stream: stream.name, name })),
      batchSize: step.consumer!.batchSize,
      toRow: (envelope, seq) => {
        if (envelope.type !== 'enriched_event') throw new Error(`sink-events reads enriched_event messages, got ${envelope.type}`)
        return eventRowOf(envelope as EnrichedEventEnvelope, seq)
      },
      write: (rows) => context.store.insertEvents(rows),
      logger: context.logger,
      signal: controller.signal,
    })
    return { stop: async () => { controller.abort(); await running } }
  },
}

/** Steps that run in processes (everything but sources). */
export function runnableSteps(topology: Topology): StepSpec[] {
  return topology.steps.filter((step) => step.kind !== 'source')
}

/**
 * Starts the named steps (all runnable ones when `stepIds` is empty) in this
 * process; `stop()` lets each finish its batch in hand, checkpoint, and leave.
 */
export async function startSteps(context: StepContext, stepIds: readonly string[] = []) {
  const steps = runnableSteps(context.topology)
  const unknown = stepIds.filter((id) => !steps.some((step) => step.stepId === id))
  if (unknown.length > 0) throw new Error(`unknown stepId ${unknown.join(', ')}: runnable steps are ${steps.map((s) => s.stepId).join(', ')}`)
  const chosen = stepIds.length === 0 ? steps : steps.filter((step) => stepIds.includes(step.stepId))
  const logger = context.logger.child({ component: 'operator' })
  const running: RunningStep[] = []
  for (const step of chosen) {
    const runner = step.kind === 'operator' ? runOperatorStep : SINKS[step.stepId]
    if (!runner) throw new Error(`step "${step.stepId}" has no runner in operators/steps.ts`)
    running.push(await runner(step, { ...context, logger }))
    logger.info({ stepId: step.stepId }, 'step started')
  }
  return {
    steps: chosen.map((step) => step.stepId),
    async stop(): Promise<void> {
      await Promise.allSettled(running.map((step) => step.stop()))
    },
  }
}
