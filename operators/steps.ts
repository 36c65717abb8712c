import { jetstream } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { PipelinedPublisher } from '../broker/publisher.ts'
import type { Logger } from '../config/logger.ts'
import { Kvm } from '@nats-io/kv'
import type { AnyEnvelope } from '../schemas/envelope.ts'
import { DEFAULT_SETTINGS, type ProjectSettings } from '../projects/model.ts'
import type { ProjectCache } from '../projects/registry.ts'
import type { Store } from '../store/store.ts'
import { DEFAULT_POLICY, type MaintenancePolicy } from '../store/maintenance.ts'
import type { IdentityLink } from '../store/sessions.ts'
import { consumersOf } from '../topology/apply.ts'
import type { StepSpec, Topology } from '../topology/model.ts'
import { stageFilter, type Stage } from '../topology/subjects.ts'
import type { ChannelOptions } from './enrich/channel.ts'
import { contextOf } from './enrich/context.ts'
import { noGeo, type GeoLookup } from './enrich/geo.ts'
import { createEnrich } from './enrich/logic.ts'
import { startInstance, type Failpoint } from './runtime/instance.ts'
import type { Metrics } from './runtime/metrics.ts'
import type { Operator } from './runtime/operator.ts'
import { runSink } from './runtime/run-sink.ts'
import { createFunnel, FUNNEL_STEP_ID } from './funnel/logic.ts'
import { startFunnelBackfill } from './funnel/backfill-worker.ts'
import { createAggregates } from './aggregate/logic.ts'
import { createCounts } from './counts/logic.ts'
import { createFunnelCounts } from './counts/funnels.ts'
import { createProfile } from './profile/logic.ts'
import { createSessionize, DEFAULT_HORIZON_MS as SESSION_HORIZON_MS } from './sessionize/logic.ts'
import { aggregateRowOf, eventsSinkItemOf, funnelProgressRowOf, profileRowOf, sessionRowOf } from './sink/rows.ts'

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
  /** Project settings (session gap, allowed lateness); defaults when absent. */
  projects?: ProjectCache
  /** Compression and retention of events, run by sink-events every hour. Default: compress after 30 days, keep all. */
  maintenance?: MaintenancePolicy
  /** IP → country and city (SEGSTREAM_GEO_DB); none by default. */
  geo?: GeoLookup
  /** Channel rules beyond the built-in ones (docs/enrich.md). */
  channels?: ChannelOptions
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
  enrich: (context) => {
    const dependencies = { geo: context.geo ?? noGeo, channels: context.channels ?? {} }
    return createEnrich({ keyGroups: context.keyGroups, contextOf: (message) => contextOf(message, dependencies) })
  },
  sessionize: (context) => createSessionize({ keyGroups: context.keyGroups, gapMsOf: (project) => settingsOf(context, project).sessionGapMs }),
  profile: (context) => createProfile({
    keyGroups: context.keyGroups,
    timezoneOf: (project) => context.projects?.byId(project)?.timezone ?? 'UTC',
    thresholdsOf: (project) => settingsOf(context, project).engagementThresholds,
  }),
  // sessionize runs with its defaults (7 days, 50 sessions), which are createFunnel's defaults too.
  // Events stay buffered (late ones applied exactly) for sessionize's horizon, 7 days, rather than
  // the operator's 1: sessionize announces, moves and (after a merge) re-announces sessions that
  // far back, and a $session_start behind the funnel's horizon is refused as late. In a fast
  // import it cut the inputs refused as late by two thirds (test/funnels.test.ts); bench-funnels:
  // mean state +1%, largest +24%, CPU per event +13% (docs/funnels.md, "How it runs").
  funnel: (context) => createFunnel({ keyGroups: context.keyGroups, horizonMs: SESSION_HORIZON_MS }),
  aggregates: (context) => createAggregates({
    keyGroups: context.keyGroups,
    timezoneOf: (project) => context.projects?.byId(project)?.timezone ?? 'UTC',
  }),
  'live-counts': () => createCounts(),
  'funnel-counts': () => createFunnelCounts(),
}

/**
 * A project's settings as the runtime knows them. They are fixed at creation
 * today; a settings change would apply from when each instance sees it, not at
 * a fixed input position (docs/operators.md, limits).
 */
function settingsOf(context: StepContext, project: string): ProjectSettings {
  return context.projects?.byId(project)?.settings ?? DEFAULT_SETTINGS
}

/** How long a key may sit idle (event time) before its state starts over, per step. */
const IDLE_TTL_MS: Record<string, number> = {
  // an anonymous id's link must outlive long absences: a returning visitor stays their user
  enrich: 400 * 86_400_000,
  // a profile is the user's whole history (first seen, acquisition): it never starts over
  profile: Number.POSITIVE_INFINITY,
  // A funnel attempt can stay open for the longest window (90 days) after the user's last input, so
  // anything under 90 days + the 1-day horizon would lose open attempts. But any finite TTL is
  // wrong here: starting over restarts the per-(funnel, user) message version at 1, and the
  // consumer rule (highest version wins, docs/funnels.md) would keep the row from before and
  // ignore the new progress until its version caught up; it would also forget the counted attempt
  // (a conversion). Eviction is decided at the key's next input and frees no memory meanwhile, so
  // never starting over costs nothing: the state is bounded per user (docs/funnels.md, "State").
  funnel: Number.POSITIVE_INFINITY,
  // a key holds the open windows of one event name: it drops itself once they close, never by idleness
  aggregates: Number.POSITIVE_INFINITY,
  // a key is one key group's counts: starting over would lose every member counted so far
  'live-counts': Number.POSITIVE_INFINITY,
  'funnel-counts': Number.POSITIVE_INFINITY,
}

/**
 * Input stages whose event times hold each other back, per step: funnel reads sessions, derived
 * from the enriched events it also reads and trailing them by sessionize's lag (weeks of event time
 * in a fast import). Were the watermark the newest of the two, it would fold a user's events before
 * their session's $session_start arrived and refuse that as late.
 */
const ALIGNED_STAGES: Record<string, Stage[]> = {
  funnel: ['enriched', 'sessions'],
}

/** The streams holding the given stages. */
function streamsOf(topology: Topology, stages: readonly Stage[] | undefined): string[] | undefined {
  return stages?.map((stage) => {
    const stream = topology.streams.find((candidate) => candidate.subjects.includes(stageFilter(stage)))
    if (!stream) throw new Error(`no stream holds the ${stage} stage`)
    return stream.name
  })
}

const runOperatorStep: StepRunner = async (step, context) => {
  const factory = OPERATORS[step.stepId]
  if (!factory) throw new Error(`operator step "${step.stepId}" has no logic in operators/steps.ts`)
  const instance = startInstance({
    nc: context.nc, publisher: context.publisher, operator: factory(context), step, topology: context.topology,
    keyGroups: context.keyGroups, logger: context.logger, metrics: context.metrics, failpoint: context.failpoint,
    leaseMs: context.leaseMs, heartbeatMs: context.heartbeatMs, idleTtlMs: IDLE_TTL_MS[step.stepId],
    alignedStreams: streamsOf(context.topology, ALIGNED_STAGES[step.stepId]),
    latenessOf: (project) => settingsOf(context, project).allowedLatenessMs,
  })
  await instance.start()
  return instance
}

/** A failure worth waiting out (the broker is down): the sink holds the batch and retries. */
class UnavailableError extends Error {
  readonly retryable = true
}

/** Publishes links in the seg_identity bucket: create only, so the first link stays (docs/identity.md). */
async function publishLinks(kv: Awaited<ReturnType<Kvm['open']>>, links: readonly IdentityLink[]) {
  for (const link of links) {
    const key = `${link.project}.${Buffer.from(link.anonymousId).toString('base64url')}`
    try {
      await kv.create(key, link.userId)
    } catch (error) {
      const existing = await kv.get(key).catch((cause) => { throw new UnavailableError(`identity bucket: ${(cause as Error).message}`) })
      if (!existing || existing.operation !== 'PUT') throw new UnavailableError(`identity bucket: ${(error as Error).message}`)
    }
  }
}

function sinkRunner<Row>(toRow: (envelope: AnyEnvelope, seq: number) => Row | undefined, write: (context: StepContext, rows: Row[]) => Promise<unknown>): StepRunner {
  return async (step, context) => {
    const controller = new AbortController()
    const running = runSink({
      stepId: step.stepId,
      js: jetstream(context.nc),
      publisher: context.publisher,
      consumers: consumersOf(context.topology, step).map(({ stream, name }) => ({ stream: stream.name, name })),
      batchSize: step.consumer!.batchSize,
      toRow,
      write: (rows) => write(context, rows),
      logger: context.logger,
      signal: controller.signal,
    })
    return { stop: async () => { controller.abort(); await running } }
  }
}

const MAINTENANCE_EVERY_MS = 3_600_000

/** Runs the events table's compression and retention now and then, beside sink-events. */
const withMaintenance = (runner: StepRunner): StepRunner => async (step, context) => {
  const running = await runner(step, context)
  const policy = context.maintenance ?? DEFAULT_POLICY
  const run = async () => {
    try {
      const result = await context.store.maintain(policy)
      if (result.compressedChunks > 0 || result.removed > 0) context.logger.info({ stepId: step.stepId, ...result }, 'events compressed / expired')
    } catch (error) {
      context.logger.warn({ stepId: step.stepId, err: error }, 'events maintenance failed; next try in an hour')
    }
  }
  const first = setTimeout(run, 60_000).unref()
  const every = setInterval(run, MAINTENANCE_EVERY_MS).unref()
  return { stop: async () => { clearTimeout(first); clearInterval(every); await running.stop() } }
}

/**
 * Runs the funnel backfill worker beside the funnel step (docs/funnels.md, "Backfill"): it takes
 * pending backfills from the funnels table, so every process running the step runs one, and a
 * claim in the table keeps two from doing the same backfill.
 */
const withFunnelBackfill = (runner: StepRunner): StepRunner => async (step, context) => {
  const running = await runner(step, context)
  const worker = startFunnelBackfill({
    nc: context.nc, publisher: context.publisher, pool: context.store.pool, topology: context.topology, keyGroups: context.keyGroups,
    logger: context.logger, latenessOf: (project) => settingsOf(context, project).allowedLatenessMs, idleTtlMs: IDLE_TTL_MS[step.stepId] ?? 30 * 86_400_000,
  })
  return { stop: async () => { await worker.stop(); await running.stop() } }
}

/** Sinks by stepId. */
const SINKS: Record<string, StepRunner> = {
  'sink-events': withMaintenance(sinkRunner(eventsSinkItemOf, async (context, items) => {
    const rows = items.flatMap((item) => (item.kind === 'event' ? [item.row] : []))
    const links = items.flatMap((item) => (item.kind === 'link' ? [item.link] : []))
    await context.store.insertEvents(rows)
    // after the rows of the same batch: a link re-attributes what was stored before it
    if (links.length === 0) return
    await context.store.applyLinks(links)
    await publishLinks(await new Kvm(context.nc).open('seg_identity'), links)
  })),
  'sink-sessions': sinkRunner(sessionRowOf, (context, rows) => context.store.upsertSessions(rows)),
  'sink-profiles': sinkRunner(profileRowOf, (context, rows) => context.store.upsertProfiles(rows)),
  'sink-funnels': sinkRunner(funnelProgressRowOf, (context, rows) => context.store.upsertFunnelProgress(rows)),
  'sink-aggregates': sinkRunner(aggregateRowOf, (context, rows) => context.store.upsertAggregates(rows)),
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
    const runner = step.kind === 'operator' ? (step.stepId === FUNNEL_STEP_ID ? withFunnelBackfill(runOperatorStep) : runOperatorStep) : SINKS[step.stepId]
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
