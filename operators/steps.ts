import { jetstream } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { PipelinedPublisher } from '../broker/publisher.ts'
import type { Logger } from '../config/logger.ts'
import type { Store } from '../store/store.ts'
import { consumersOf } from '../topology/apply.ts'
import type { StepSpec, Topology } from '../topology/model.ts'
import { createEnrich } from './enrich/logic.ts'
import { runOperator } from './runtime/run-operator.ts'
import { runSink } from './runtime/run-sink.ts'
import { eventRowOf } from './sink/rows.ts'
import type { EnrichedEventEnvelope } from '../schemas/envelope.ts'

export interface StepContext {
  nc: NatsConnection
  publisher: PipelinedPublisher
  store: Store
  topology: Topology
  keyGroups: number
  logger: Logger
  signal: AbortSignal
}

type StepRunner = (step: StepSpec, context: StepContext) => Promise<void>

const consumersFor = (context: StepContext, step: StepSpec) =>
  consumersOf(context.topology, step).map(({ stream, name }) => ({ stream: stream.name, name }))

/** The code behind each runnable stepId of the topology. */
export const STEP_RUNNERS: Record<string, StepRunner> = {
  enrich: (step, context) => runOperator({
    js: jetstream(context.nc),
    publisher: context.publisher,
    operator: createEnrich({ keyGroups: context.keyGroups }),
    consumers: consumersFor(context, step),
    batchSize: step.consumer!.batchSize,
    toInput: (envelope, origin) => {
      if (envelope.type !== 'raw_event') throw new Error(`enrich reads raw_event messages, got ${envelope.type}`)
      return { envelope, origin }
    },
    logger: context.logger,
    signal: context.signal,
  }),
  'sink-events': (step, context) => runSink({
    stepId: step.stepId,
    js: jetstream(context.nc),
    publisher: context.publisher,
    consumers: consumersFor(context, step),
    batchSize: step.consumer!.batchSize,
    toRow: (envelope, seq) => {
      if (envelope.type !== 'enriched_event') throw new Error(`sink-events reads enriched_event messages, got ${envelope.type}`)
      return eventRowOf(envelope as EnrichedEventEnvelope, seq)
    },
    write: (rows) => context.store.insertEvents(rows),
    logger: context.logger,
    signal: context.signal,
  }),
}

/** Steps that run as operators (everything but sources). */
export function runnableSteps(topology: Topology): StepSpec[] {
  return topology.steps.filter((step) => step.kind !== 'source')
}

/**
 * Starts the named steps (all runnable ones when `stepIds` is empty) in this
 * process; `stop()` lets each finish its batch in hand, then resolves.
 */
export function startSteps(context: Omit<StepContext, 'signal'>, stepIds: readonly string[] = []) {
  const steps = runnableSteps(context.topology)
  const unknown = stepIds.filter((id) => !steps.some((step) => step.stepId === id))
  if (unknown.length > 0) throw new Error(`unknown stepId ${unknown.join(', ')}: runnable steps are ${steps.map((s) => s.stepId).join(', ')}`)
  const chosen = stepIds.length === 0 ? steps : steps.filter((step) => stepIds.includes(step.stepId))
  const controller = new AbortController()
  const running = chosen.map((step) => {
    const runner = STEP_RUNNERS[step.stepId]
    if (!runner) throw new Error(`step "${step.stepId}" has no runner in operators/steps.ts`)
    context.logger.info({ stepId: step.stepId }, 'step started')
    return runner(step, { ...context, signal: controller.signal, logger: context.logger.child({ component: 'operator' }) })
  })
  return {
    steps: chosen.map((step) => step.stepId),
    async stop(): Promise<void> {
      controller.abort()
      await Promise.allSettled(running)
    },
  }
}
