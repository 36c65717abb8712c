import { randomBytes } from 'node:crypto'
import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import type pg from 'pg'
import type { PipelinedPublisher } from '../../broker/publisher.ts'
import type { Logger } from '../../config/logger.ts'
import { decode } from '../../schemas/codec.ts'
import { consumersOf } from '../../topology/apply.ts'
import type { Topology } from '../../topology/model.ts'
import { subjectFor, type Stage } from '../../topology/subjects.ts'
import type { InputMessage } from '../runtime/kernel.ts'
import { sleep } from '../runtime/retry.ts'
import { stateBucketOf } from '../runtime/state-store.ts'
import { controlEnvelopeId, createSeedComputer, DEFAULT_REPLAY_HORIZON_MS, peekMessage, REPLAY_MAX_EVENTS, seedMessage, usesSessions, BACKFILL_STAGE, type Seed } from './backfill.ts'
import { claimBackfill, eventsBeforeStream, linkedUsers, reportBackfill, sessionsBeforeStream, type BackfillProgress, type ClaimedBackfill } from './backfill-store.ts'
import { createTableSeeder, historyColumnsOf, mergeSeeds } from './backfill-table.ts'
import { countHistory, readHistory, type HistoryQuery } from './backfill-table-store.ts'
import { FUNNEL_STEP_ID, type FunnelDefinitions, type FunnelOptions } from './logic.ts'

/**
 * The backfill worker (docs/funnels.md, "Backfill"): takes pending backfills from the `funnels`
 * table, replays the funnel step's inputs up to the funnel version's control message in every key
 * group through the same logic, waits until the funnel step has taken the definition everywhere,
 * and publishes one seed per user on the `backfill` stage. Progress goes to `funnels.backfill`.
 */

export interface BackfillWorkerOptions {
  nc: NatsConnection
  publisher: PipelinedPublisher
  pool: pg.Pool
  topology: Topology
  keyGroups: number
  logger: Logger
  /** The project's allowed lateness, as the funnel step has it. */
  latenessOf: (project: string) => number
  /** The funnel step's idle TTL of a key, ms of event time. */
  idleTtlMs: number
  /** The funnel step's logic options (horizon, buffer, sessionize's bounds). */
  funnel?: Omit<FunnelOptions, 'keyGroups'>
  /** How often the table is looked at for pending backfills, ms. Default 1,000. */
  pollMs?: number
  /** A running backfill whose worker has been silent this long is taken over, ms. Default 30,000. */
  staleMs?: number
  /** How long the history read waits for a control message not yet in the stream, ms. Default 60,000. */
  controlWaitMs?: number
}

class Superseded extends Error {}

const STREAM_BATCH = 10_000
const SEEDS_IN_FLIGHT = 5_000
/** Batches of seeds published and not yet acknowledged while more are made. */
const SEED_BATCHES_IN_FLIGHT = 2
/** Seeds of the table's history held while the funnel step does not have the definition everywhere yet (then the read waits). */
const SEEDS_HELD = 100_000

/** Starts the worker; `stop()` ends it (a run in hand is left running in the table and taken over later). */
export function startFunnelBackfill(options: BackfillWorkerOptions): { stop(): Promise<void> } {
  const owner = randomBytes(6).toString('hex')
  const logger = options.logger.child({ component: 'funnel-backfill', owner })
  const pollMs = options.pollMs ?? 1_000
  const staleMs = options.staleMs ?? 30_000
  const controller = new AbortController()
  const loop = (async () => {
    while (!controller.signal.aborted) {
      let claimed: ClaimedBackfill | undefined
      try {
        claimed = await claimBackfill(options.pool, owner, Date.now(), staleMs)
      } catch (error) {
        logger.warn({ err: error }, 'could not look for pending backfills')
      }
      if (claimed === undefined) {
        await sleep(pollMs, controller.signal).catch(() => undefined)
        continue
      }
      await runBackfill(options, claimed, owner, logger.child({ project: claimed.project, funnelId: claimed.funnelId, version: claimed.version }), controller.signal)
    }
  })()
  return {
    async stop() {
      controller.abort()
      await loop
    },
  }
}

async function runBackfill(options: BackfillWorkerOptions, claimed: ClaimedBackfill, owner: string, logger: Logger, signal: AbortSignal): Promise<void> {
  const started = Date.now()
  const progress: BackfillProgress = { state: 'running', done: 0, total: 0, owner, heartbeat: started, phase: 'reading history' }
  let reportedAt = 0
  const report = async (force = false) => {
    const now = Date.now()
    if (!force && now - reportedAt < 1_000) return
    reportedAt = now
    progress.heartbeat = now
    if (!(await reportBackfill(options.pool, claimed, owner, progress))) throw new Superseded('the funnel changed or another worker took the backfill over')
  }
  try {
    logger.info('funnel backfill started')
    const { computer, table } = await computeSeeds(options, claimed, progress, report, logger, signal)
    progress.phase = table === undefined ? 'waiting for the funnel step to take the definition' : 'reading the events table, publishing seeds'
    await report(true)
    // the table is read meanwhile: its seeds are held until the step has the definition everywhere
    const handOver = new AbortController()
    const stopHandOver = () => handOver.abort()
    signal.addEventListener('abort', stopHandOver, { once: true })
    const inForce = waitForDefinition(options, claimed, report, handOver.signal)
    inForce.catch(() => undefined)
    let published: number
    try {
      published = await publishSeeds(options, claimed, computer, table, progress, report, signal, inForce)
    } finally {
      signal.removeEventListener('abort', stopHandOver)
      handOver.abort()
    }
    progress.state = 'done'
    progress.total = progress.done
    progress.seeds = published
    // inputs the logic refused as too late for the horizon, as the live step would have: said, not hidden
    if (computer.counters.late > 0) progress.late = computer.counters.late
    if (computer.refused.length > 0) logger.warn({ late: computer.counters.late, deadLettered: computer.counters.deadLettered, first: computer.refused }, 'funnel backfill: history inputs refused by the funnel logic')
    delete progress.phase
    await report(true)
    logger.info({ messages: progress.done, seeds: published, ms: Date.now() - started, ...(progress.table ? { table: progress.table } : {}) }, 'funnel backfill done')
  } catch (error) {
    if (signal.aborted) return
    if (error instanceof Superseded) {
      logger.info({ reason: error.message }, 'funnel backfill dropped')
      return
    }
    logger.error({ err: error }, 'funnel backfill failed')
    progress.state = 'failed'
    progress.error = (error as Error).message
    delete progress.phase
    await report(true).catch(() => undefined)
  }
}

/** The stages the funnel step reads history from, with their streams. */
function historyInputs(topology: Topology, definition: ClaimedBackfill['definition']): { stream: string; stage: Stage }[] {
  const step = topology.steps.find((candidate) => candidate.stepId === FUNNEL_STEP_ID)
  if (!step) throw new Error(`the topology has no ${FUNNEL_STEP_ID} step`)
  return consumersOf(topology, step).flatMap(({ stream, filterSubjects }) => filterSubjects.map((filter) => ({ stream: stream.name, stage: filter.split('.')[2] as Stage })))
    .filter(({ stage }) => stage !== BACKFILL_STAGE && (stage !== 'sessions' || usesSessions(definition)))
}

type Computer = ReturnType<typeof createSeedComputer>

async function computeSeeds(
  options: BackfillWorkerOptions, claimed: ClaimedBackfill, progress: BackfillProgress, report: (force?: boolean) => Promise<void>, logger: Logger, signal: AbortSignal,
) {
  const { project, funnelId, version, definition } = claimed
  const jsm = await jetstreamManager(options.nc)
  const inputs = historyInputs(options.topology, definition)
  // the streams' first sequences: what their retention removed is read from the tables (docs/funnels.md, "Backfill")
  const firstSeq: Partial<Record<Stage, number>> = {}
  for (const input of inputs) {
    const info = await jsm.streams.info(input.stream, { subjects_filter: subjectFor(project, input.stage, '*') })
    for (const count of Object.values(info.state.subjects ?? {})) progress.total += count
    firstSeq[input.stage] = Math.max(1, info.state.first_seq)
  }
  const enrichedStream = inputs.find((input) => input.stage === 'enriched')?.stream ?? 'SEG_ENRICHED'
  const sessionsStream = inputs.find((input) => input.stage === 'sessions')?.stream ?? 'SEG_SESSIONS'
  const columns = historyColumnsOf(definition)
  const query: HistoryQuery = { project, enrichedBefore: firstSeq.enriched ?? 1, sessionsBefore: firstSeq.sessions ?? 1, columns, countBots: options.funnel?.countBots }
  const stored = { events: query.enrichedBefore > 1 ? await eventsBeforeStream(options.pool, project, query.enrichedBefore) : 0, sessions: columns.sessions && query.sessionsBefore > 1 ? await sessionsBeforeStream(options.pool, project, query.sessionsBefore) : 0 }
  let table: TableHistory | undefined
  if (stored.events + stored.sessions > 0) {
    table = { query, enrichedStream, sessionsStream }
    // the rows the funnel reads of them (its names, no bots): what `done` counts
    const read = await countHistory(options.pool, query)
    progress.total += read.events + read.sessions
    progress.table = { events: stored.events, sessions: stored.sessions, read: read.events + read.sessions, enrichedBefore: query.enrichedBefore, ...(columns.sessions ? { sessionsBefore: query.sessionsBefore } : {}) }
    logger.info({ table: progress.table }, 'funnel backfill: history beyond the streams\' retention is read from the tables')
  }
  await report(true)
  const computer = createSeedComputer({
    project, funnelId, version, definition, keyGroups: options.keyGroups, funnel: options.funnel, latenessMs: options.latenessOf(project), idleTtlMs: options.idleTtlMs,
  })
  const sessions = inputs.find((input) => input.stage === 'sessions')
  const enriched = inputs.find((input) => input.stage === 'enriched')
  // session messages are held per key group and fed in event-time order beside the events (as the
  // live step takes both stages at once), so a session's start is not behind the events' watermark
  if (sessions) {
    await readUntilControl(options, claimed, sessions, signal, async (_keyGroup, type, time, message) => {
      computer.hold(message, time, type)
      progress.done++
      await report()
    })
    computer.sortHeld()
  }
  if (enriched) {
    await readUntilControl(options, claimed, enriched, signal, async (_keyGroup, type, time, message) => {
      computer.applyEvent(message, type, time)
      progress.done++
      await report()
    })
  }
  computer.finish()
  return { computer, table }
}

/** The history the tables hold beyond the streams' retention, when there is any. */
interface TableHistory {
  query: HistoryQuery
  enrichedStream: string
  sessionsStream: string
}

/**
 * Reads a stage of the project from its stream's first message, key group by key group up to the
 * funnel version's control message there, handing each message to `apply`.
 */
async function readUntilControl(
  options: BackfillWorkerOptions, claimed: ClaimedBackfill, input: { stream: string; stage: Stage }, signal: AbortSignal,
  apply: (keyGroup: number, type: string, time: number, message: InputMessage) => Promise<void>,
): Promise<void> {
  const js = jetstream(options.nc)
  const controlId = controlEnvelopeId(claimed.funnelId, claimed.version)
  const reached = new Set<number>()
  const consumer = await js.consumers.get(input.stream, { filter_subjects: [subjectFor(claimed.project, input.stage, '*')], deliver_policy: DeliverPolicy.All })
  const messages = await consumer.consume({ max_messages: STREAM_BATCH })
  const controlWaitMs = options.controlWaitMs ?? 60_000
  let timedOut = false
  let quiet: NodeJS.Timeout | undefined
  const armQuiet = () => {
    clearTimeout(quiet)
    quiet = setTimeout(() => { timedOut = true; void messages.close() }, controlWaitMs)
  }
  const onAbort = () => void messages.close()
  signal.addEventListener('abort', onAbort, { once: true })
  armQuiet()
  try {
    for await (const message of messages) {
      armQuiet()
      const subject = message.subject
      const keyGroup = Number(subject.slice(subject.lastIndexOf('.') + 1))
      if (reached.has(keyGroup)) continue
      const peeked = peekMessage(message.data)
      if (peeked.control !== undefined && peeked.control.stepId === FUNNEL_STEP_ID && peeked.control.name === claimed.funnelId) {
        if (peeked.id === controlId) {
          reached.add(keyGroup)
          if (reached.size === options.keyGroups) break
          continue
        }
        if (peeked.control.version > claimed.version) throw new Superseded(`version ${peeked.control.version} came before this version's control message in key group ${keyGroup}`)
      }
      await apply(keyGroup, peeked.type, peeked.time, { stream: input.stream, seq: message.seq, subject, data: message.data, envelope: peeked.envelope })
    }
  } finally {
    clearTimeout(quiet)
    signal.removeEventListener('abort', onAbort)
    await messages.close().catch(() => undefined)
    await consumer.delete().catch(() => undefined)
  }
  if (signal.aborted) throw new Error('stopped')
  if (reached.size < options.keyGroups) {
    const missing = Array.from({ length: options.keyGroups }, (_, keyGroup) => keyGroup).filter((keyGroup) => !reached.has(keyGroup))
    throw new Error(`the control message of ${claimed.funnelId} version ${claimed.version} is not in ${input.stream} for key groups ${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ', ...' : ''}${timedOut ? ` (nothing new for ${controlWaitMs} ms)` : ''}`)
  }
}

/**
 * Waits until the funnel step's checkpoint of every key group has the funnel version in force: a
 * seed published after that is applied after the control message, in every replay too.
 */
async function waitForDefinition(options: BackfillWorkerOptions, claimed: ClaimedBackfill, report: (force?: boolean) => Promise<void>, signal: AbortSignal): Promise<void> {
  const kv = await new Kvm(options.nc).open(stateBucketOf(FUNNEL_STEP_ID))
  const pending = new Set(Array.from({ length: options.keyGroups }, (_, keyGroup) => keyGroup))
  while (pending.size > 0) {
    for (const keyGroup of [...pending]) {
      const entry = await kv.get(`c.${keyGroup}`)
      if (!entry || entry.operation !== 'PUT') continue
      const checkpoint = decode(entry.value) as { control?: Record<string, FunnelDefinitions | undefined> }
      const inForce = checkpoint.control?.[claimed.project]?.[claimed.funnelId]?.version
      if (inForce === undefined) continue
      if (inForce > claimed.version) throw new Superseded(`version ${inForce} is in force in key group ${keyGroup}`)
      if (inForce === claimed.version) pending.delete(keyGroup)
    }
    if (pending.size === 0) return
    if (signal.aborted) throw new Error('stopped')
    await report()
    await sleep(500, signal)
  }
}

/**
 * Publishes every seed: the table's history user by user as it is read (a user the streams' history
 * holds too gets the two as one, mergeSeeds), then the users only the streams hold.
 */
async function publishSeeds(
  options: BackfillWorkerOptions, claimed: ClaimedBackfill, computer: Computer, table: TableHistory | undefined, progress: BackfillProgress,
  report: (force?: boolean) => Promise<void>, signal: AbortSignal, inForce: Promise<void>,
): Promise<number> {
  // the stream replay's seeds by the user they go to (an anonymous id linked since goes to its user)
  const streamSeeds = [...computer.seeds()]
  const linkedInStreams = await linkedUsers(options.pool, claimed.project, streamSeeds.map((seed) => seed.user))
  const fromStreams = new Map<string, Seed[]>()
  for (const seed of streamSeeds) {
    const into = linkedInStreams.get(seed.user) ?? seed.user
    const list = fromStreams.get(into)
    if (list === undefined) fromStreams.set(into, [seed])
    else list.push(seed)
  }
  streamSeeds.length = 0
  let published = 0
  let batch: Seed[] = []
  let handedOver = false
  void inForce.then(() => (handedOver = true), () => undefined)
  const full = () => batch.length >= (handedOver ? SEEDS_IN_FLIGHT : SEEDS_HELD)
  const flush = async () => {
    // every seed is applied after the control message: published once the step has the definition everywhere
    await inForce
    if (progress.phase === 'waiting for the funnel step to take the definition') progress.phase = 'publishing seeds'
    const seeds = batch
    batch = []
    // an anonymous id linked to a user since the history's end: its seed goes to the user
    const linked = await linkedUsers(options.pool, claimed.project, seeds.map((seed) => seed.user))
    // one batch: one pending entry and one promise in the publisher for all of them; a few batches
    // in flight while the next are read and matched
    if (seeds.length > 0) {
      const sending = options.publisher.publishBatch(seeds.map((seed) => seedMessage(claimed.project, seed, linked.get(seed.user) ?? seed.user, options.keyGroups)))
      sending.catch(() => undefined)
      inFlight.push(sending)
      if (inFlight.length > SEED_BATCHES_IN_FLIGHT) await inFlight.shift()
    }
    published += seeds.length
    await report()
  }
  const inFlight: Promise<unknown>[] = []
  if (table !== undefined) {
    const limits = { horizonMs: options.funnel?.horizonMs, maxEvents: options.funnel?.maxEvents }
    const seeder = createTableSeeder({
      project: claimed.project, funnelId: claimed.funnelId, version: claimed.version, definition: claimed.definition, limits,
      wide: (user) => fromStreams.has(user), wideLimits: { horizonMs: DEFAULT_REPLAY_HORIZON_MS, maxEvents: REPLAY_MAX_EVENTS },
      enrichedStream: table.enrichedStream, sessionsStream: table.sessionsStream,
    })
    const take = (seed: Seed | undefined) => {
      if (seed === undefined) return
      const alsoStreamed = fromStreams.get(seed.user)
      if (alsoStreamed !== undefined) fromStreams.delete(seed.user)
      batch.push(alsoStreamed === undefined ? seed : mergeSeeds(seeder.funnel, seed, alsoStreamed, limits))
    }
    await readHistory(options.pool, table.query, async (rows) => {
      for (const row of rows) take(seeder.add(row))
      progress.done += rows.length
      if (full()) await flush()
      else await report()
    }, signal)
    take(seeder.end())
    progress.phase = 'publishing seeds'
  }
  for (const seeds of fromStreams.values()) {
    batch.push(...seeds)
    if (batch.length >= SEEDS_IN_FLIGHT) await flush()
  }
  await flush()
  await Promise.all(inFlight)
  return published
}
