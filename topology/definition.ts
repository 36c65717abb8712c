import { deepFreeze, type Topology } from './model.ts'
import { stageFilter } from './subjects.ts'

const MINUTE = 60_000
const DAY = 24 * 60 * MINUTE
const GIB = 1024 ** 3
/** Durable consumer settings of the operators (keyed state, checkpoints) and of the sinks (database writes, bigger batches). */
const OPERATOR_CONSUMER = { maxAckPending: 20_000, ackWaitMs: 30_000, batchSize: 1_000 } as const
const SINK_CONSUMER = { maxAckPending: 20_000, ackWaitMs: 60_000, batchSize: 2_000 } as const

/** Limits a deployment may tune; the defaults suit one machine. */
export interface TopologyOptions {
  /** Retention of raw and enriched streams, ms. Default 7 days. */
  streamMaxAgeMs?: number
  /** Size cap per event stream, bytes (JetStream reserves it up front). Default 2 GiB. */
  streamMaxBytes?: number
  /** Replicas of every stream and bucket. Default 1. */
  replicas?: number
  /** JetStream's duplicate window (Nats-Msg-Id) of every stream, ms. Default 2 minutes; beyond it enrich drops late duplicates. */
  duplicateWindowMs?: number
}

/** The segstream dataflow. */
export function segstreamTopology(options: TopologyOptions = {}): Topology {
  const maxAgeMs = options.streamMaxAgeMs ?? 7 * DAY
  const maxBytes = options.streamMaxBytes ?? 2 * GIB
  const replicas = options.replicas ?? 1
  const eventStream = {
    retention: 'limits',
    storage: 'file',
    replicas,
    duplicateWindowMs: options.duplicateWindowMs ?? 2 * MINUTE,
    maxAgeMs,
    maxBytes,
    discard: 'new',
  } as const
  return deepFreeze<Topology>({
    name: 'segstream',
    streams: [
      { name: 'SEG_RAW', description: 'Live events as the collector accepted them, routed by anonymousId else userId', subjects: [stageFilter('raw')], ...eventStream },
      { name: 'SEG_IMPORT', description: 'Historical imports, kept apart from live traffic', subjects: [stageFilter('import')], ...eventStream },
      { name: 'SEG_ENRICHED', description: 'Enriched events, routed by canonical user id', subjects: [stageFilter('enriched')], ...eventStream },
      { name: 'SEG_SESSIONS', description: 'Session starts, ends and retractions, routed by canonical user id', subjects: [stageFilter('sessions')], ...eventStream },
      { name: 'SEG_PROFILES', description: 'Profile changes and engagement membership changes, routed by canonical user id', subjects: [stageFilter('profiles')], ...eventStream },
      { name: 'SEG_FUNNELS', description: 'Funnel progress: each user\'s level, step times and status per funnel version, routed by canonical user id', subjects: [stageFilter('funnels')], ...eventStream },
      { name: 'SEG_BACKFILL', description: 'Backfill seeds: each user\'s funnel track over the history before a new funnel version, read by the funnel step only', subjects: [stageFilter('backfill')], ...eventStream },
      { name: 'SEG_AGGREGATES', description: 'Windowed aggregates: per key group and source, partial event counts and distinct users of each window and group, routed by the group', subjects: [stageFilter('aggregates')], ...eventStream },
      // latest values, not a log: one message per subject (project, key group), kept however old
      { name: 'SEG_COUNTS', description: 'Live counts per project and key group (segments; funnel steps): absolute, versioned, the latest per subject', subjects: [stageFilter('counts'), stageFilter('funnel_counts')], ...eventStream, maxAgeMs: 0, maxBytes: Math.min(maxBytes, GIB / 4), maxMessagesPerSubject: 1 },
      { name: 'SEG_LATE', description: 'Inputs too late for a window already closed, as they came', subjects: [stageFilter('late')], ...eventStream, maxBytes: Math.min(maxBytes, GIB / 4) },
      { name: 'SEG_DLQ', description: 'Rejected and poison messages with the reason and the original payload', subjects: [stageFilter('dlq')], ...eventStream, maxAgeMs: 30 * DAY, maxBytes: Math.min(maxBytes, GIB / 4) },
    ],
    kv: [
      { bucket: 'seg_projects', description: 'Projects: name, timezone, keys, settings', history: 5, storage: 'file', replicas, ttlMs: 0 },
      { bucket: 'seg_meta', description: 'Installation facts fixed at provisioning (key groups)', history: 1, storage: 'file', replicas, ttlMs: 0 },
      { bucket: 'seg_identity', description: 'Identity map: <project>.<anonymous id, base64url> -> user id, first link wins', history: 1, storage: 'file', replicas, ttlMs: 0 },
      { bucket: 'seg_leases', description: 'Key-group ownership: leases with epochs, and live members, per step', history: 1, storage: 'file', replicas, ttlMs: 0 },
    ],
    steps: [
      {
        stepId: 'collector',
        kind: 'source',
        description: 'HTTP collector: validates, stamps and publishes events',
        module: 'gateway',
        inputs: [],
        outputs: [stageFilter('raw'), stageFilter('import'), stageFilter('dlq')],
      },
      {
        stepId: 'enrich',
        kind: 'operator',
        description: 'Drops late duplicates, links identities, derives device, channel, geo and bots; re-keys events by canonical user',
        module: 'operators/enrich',
        inputs: [stageFilter('raw'), stageFilter('import')],
        outputs: [stageFilter('enriched'), stageFilter('dlq')],
        consumer: OPERATOR_CONSUMER,
      },
      {
        stepId: 'sessionize',
        kind: 'operator',
        description: 'Sessions per canonical user in event time: starts, ends, corrections',
        module: 'operators/sessionize',
        inputs: [stageFilter('enriched')],
        outputs: [stageFilter('sessions'), stageFilter('dlq')],
        consumer: OPERATOR_CONSUMER,
      },
      {
        stepId: 'profile',
        kind: 'operator',
        description: 'Profiles per canonical user: first/last seen, acquisition, traits, device, geo, counts, engagement level in event time',
        module: 'operators/profile',
        inputs: [stageFilter('enriched'), stageFilter('sessions')],
        outputs: [stageFilter('profiles'), stageFilter('dlq')],
        consumer: OPERATOR_CONSUMER,
      },
      {
        stepId: 'funnel',
        kind: 'operator',
        description: 'Funnel progress per canonical user and funnel: level reached, step times, in progress or dropped (definitions arrive as control messages)',
        module: 'operators/funnel',
        inputs: [stageFilter('enriched'), stageFilter('sessions'), stageFilter('backfill')],
        // late: events behind the operator's horizon (7 days) are refused, not applied
        outputs: [stageFilter('funnels'), stageFilter('late'), stageFilter('dlq')],
        consumer: OPERATOR_CONSUMER,
      },
      {
        stepId: 'funnel-backfill',
        // not a step of its own: the funnel step's processes run it (operators/steps.ts); it keeps no durable consumer
        kind: 'source',
        description: 'Funnel backfill: replays the funnel step\'s inputs before a new funnel version\'s control message and seeds each user\'s track over that history',
        module: 'operators/funnel',
        inputs: [stageFilter('enriched'), stageFilter('sessions')],
        outputs: [stageFilter('backfill')],
      },
      {
        stepId: 'aggregates',
        kind: 'operator',
        description: 'Windowed aggregates in event time: events and distinct users per window (minute, hour, day in the project timezone) and dimensions, early results, finals and corrections',
        module: 'operators/aggregate',
        inputs: [stageFilter('enriched')],
        // late: events for windows closed beyond the allowed lateness
        outputs: [stageFilter('aggregates'), stageFilter('late'), stageFilter('dlq')],
        consumer: OPERATOR_CONSUMER,
      },
      {
        stepId: 'live-counts',
        kind: 'operator',
        description: 'Live counts per key group: users per engagement level and per saved segment, from membership changes; absolute and versioned',
        module: 'operators/counts',
        inputs: [stageFilter('profiles')],
        outputs: [stageFilter('counts'), stageFilter('dlq')],
        consumer: OPERATOR_CONSUMER,
      },
      {
        stepId: 'funnel-counts',
        kind: 'operator',
        description: 'Funnel step counts per key group: users per step reached, in progress and dropped, times to convert, from progress messages; absolute and versioned',
        module: 'operators/counts',
        inputs: [stageFilter('funnels')],
        outputs: [stageFilter('funnel_counts'), stageFilter('dlq')],
        consumer: OPERATOR_CONSUMER,
      },
      {
        stepId: 'sink-events',
        kind: 'sink',
        description: 'Writes enriched events to the events table; re-attributes them on identity links',
        module: 'operators/sink',
        inputs: [stageFilter('enriched')],
        outputs: [stageFilter('dlq')],
        tables: ['events', 'identities'],
        consumer: SINK_CONSUMER,
      },
      {
        stepId: 'sink-sessions',
        kind: 'sink',
        description: 'Writes sessions to the sessions table, newest version wins',
        module: 'operators/sink',
        inputs: [stageFilter('sessions')],
        outputs: [stageFilter('dlq')],
        tables: ['sessions'],
        consumer: SINK_CONSUMER,
      },
      {
        stepId: 'sink-profiles',
        kind: 'sink',
        description: 'Writes profiles and their per-day event counts (and the per-event series behavioural filters read), newest version wins',
        module: 'operators/sink',
        inputs: [stageFilter('profiles')],
        outputs: [stageFilter('dlq')],
        tables: ['profiles', 'profile_event_days', 'profile_event_series'],
        consumer: SINK_CONSUMER,
      },
      {
        stepId: 'sink-funnels',
        kind: 'sink',
        description: 'Writes each user\'s funnel progress to the funnel_progress table, newest version wins',
        module: 'operators/sink',
        inputs: [stageFilter('funnels')],
        outputs: [stageFilter('dlq')],
        tables: ['funnel_progress'],
        consumer: SINK_CONSUMER,
      },
      {
        stepId: 'sink-aggregates',
        kind: 'sink',
        description: 'Writes partial aggregates, newest version per (group, source, key group) wins; the aggregates view sums them',
        module: 'operators/sink',
        inputs: [stageFilter('aggregates')],
        outputs: [stageFilter('dlq')],
        tables: ['aggregate_partials'],
        consumer: SINK_CONSUMER,
      },
    ],
  })
}
