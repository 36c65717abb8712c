import type { AnyEnvelope, EnrichedEventEnvelope } from '../../schemas/envelope.ts'
import type { AggregateRow } from '../../store/aggregates.ts'
import type { FunnelProgressRow } from '../../store/funnel-progress.ts'
import type { ProfileRow } from '../../store/profiles.ts'
import type { IdentityLink, SessionRow } from '../../store/sessions.ts'
import type { EventRow } from '../../store/store.ts'

const COLUMN_FIELDS = new Set(['type', 'messageId', 'anonymousId', 'userId', 'event', 'properties', 'traits', 'context', 'timestamp', 'receivedAt'])

/** An enriched event as an events-table row. Pure. */
export function eventRowOf(envelope: EnrichedEventEnvelope, enrichedSeq: number): EventRow {
  const message = envelope.data.message
  const extra: Record<string, unknown> = {}
  for (const [field, value] of Object.entries(message)) if (!COLUMN_FIELDS.has(field)) extra[field] = value
  // `event` is the name column only for a track; anywhere else it is kept as sent
  if (message.type !== 'track' && message.event !== undefined) extra.event = message.event
  return {
    project: envelope.project,
    messageId: envelope.id,
    eventTime: envelope.time,
    receivedAt: Date.parse(message.receivedAt),
    type: message.type,
    name: envelope.data.name,
    canonicalId: envelope.data.canonicalId,
    anonymousId: message.anonymousId ?? null,
    userId: message.userId ?? null,
    source: envelope.source,
    keyGroup: envelope.keyGroup,
    rawStream: envelope.origin.stream,
    rawSeq: envelope.origin.seq,
    enrichedSeq,
    properties: message.properties ?? {},
    traits: message.traits ?? null,
    context: message.context ?? {},
    extra,
    enrichment: envelope.data.context ?? null,
  }
}

/** What sink-events writes: an event row, or an identity link that re-attributes stored events. */
export type EventsSinkItem = { kind: 'event'; row: EventRow } | { kind: 'link'; link: IdentityLink }

/** Envelope on the enriched stage → what sink-events does with it; undefined: not the sink's. Pure. */
export function eventsSinkItemOf(envelope: AnyEnvelope, enrichedSeq: number): EventsSinkItem | undefined {
  switch (envelope.type) {
    case 'enriched_event':
      return { kind: 'event', row: eventRowOf(envelope, enrichedSeq) }
    case 'merge':
      return { kind: 'link', link: { project: envelope.project, anonymousId: envelope.data.from, userId: envelope.data.into, linkedAt: envelope.time } }
    case 'control':
    case 'merge_state':
    case 'watermark':
      return undefined
    default:
      throw new Error(`sink-events reads enriched_event and merge messages, got ${envelope.type}`)
  }
}

/** A session change as a sessions-table row; undefined: not the sink's. Pure. */
export function sessionRowOf(envelope: AnyEnvelope, sessionsSeq: number): SessionRow | undefined {
  if (envelope.type === 'control' || envelope.type === 'merge' || envelope.type === 'merge_state' || envelope.type === 'watermark') return undefined
  if (envelope.type !== 'session') throw new Error(`sink-sessions reads session messages, got ${envelope.type}`)
  const { name, version, session } = envelope.data
  return {
    project: envelope.project, sessionId: session.sessionId, canonicalId: session.canonicalId, startedAt: session.start, lastEventAt: session.end,
    durationMs: session.durationMs, events: session.events, pages: session.pages, entryPage: session.entryPage ?? null, exitPage: session.exitPage ?? null,
    channel: session.channel ?? null, device: session.device ?? null, firstMessageId: session.firstMessageId, status: name, version, sessionsSeq,
  }
}

/** A profile change as a profiles-table row; undefined: not the sink's (membership changes, control). Pure. */
export function profileRowOf(envelope: AnyEnvelope, profilesSeq: number): ProfileRow | undefined {
  if (envelope.type === 'control' || envelope.type === 'merge' || envelope.type === 'merge_state' || envelope.type === 'segment_membership' || envelope.type === 'watermark') return undefined
  if (envelope.type !== 'profile') throw new Error(`sink-profiles reads profile messages, got ${envelope.type}`)
  const { canonicalId, version, profile, mergedInto } = envelope.data
  const base = { project: envelope.project, canonicalId, version, profilesSeq }
  if (!profile) {
    return {
      ...base, firstSeen: null, lastSeen: null, acquisitionMonth: null, acquisitionChannel: null, acquisitionSource: null, acquisitionMedium: null,
      acquisitionCampaign: null, deviceType: null, browser: null, os: null, country: null, city: null, events: 0, sessions: 0,
      engagementLevel: null, engagementScore: null, engagementAsOf: null, traits: {}, mergedInto: mergedInto ?? null, days: [],
    }
  }
  const { acquisition, device, engagement } = profile
  return {
    ...base,
    firstSeen: profile.firstSeen, lastSeen: profile.lastSeen,
    acquisitionMonth: acquisition.month, acquisitionChannel: acquisition.channel ?? null, acquisitionSource: acquisition.source ?? null,
    acquisitionMedium: acquisition.medium ?? null, acquisitionCampaign: acquisition.campaign ?? null,
    deviceType: device?.type ?? null, browser: device?.browser ?? null, os: device?.os ?? null,
    country: profile.country ?? null, city: profile.city ?? null, events: profile.events, sessions: profile.sessions,
    engagementLevel: engagement.level, engagementScore: engagement.score, engagementAsOf: engagement.asOf,
    traits: profile.traits, mergedInto: null,
    days: profile.days.flatMap((day) => Object.entries(day.names).map(([name, count]) => ({ day: day.day, name, count }))),
  }
}

/** A user's funnel progress as a funnel_progress row; undefined: not the sink's (watermarks, control). Pure. */
export function funnelProgressRowOf(envelope: AnyEnvelope): FunnelProgressRow | undefined {
  if (envelope.type === 'control' || envelope.type === 'merge' || envelope.type === 'merge_state' || envelope.type === 'watermark') return undefined
  if (envelope.type !== 'funnel_progress') throw new Error(`sink-funnels reads funnel_progress messages, got ${envelope.type}`)
  const { data } = envelope
  return {
    project: envelope.project, funnelId: data.funnelId, funnelVersion: data.funnelVersion, canonicalId: data.canonicalId, version: data.version,
    level: data.level, steps: data.steps, status: data.status, stepTimes: data.stepTimes, breakdown: data.breakdown ?? null, asOf: data.asOf,
    mergedInto: data.mergedInto ?? null,
  }
}

/** A partial aggregate as an aggregate_partials row; undefined: not the sink's (control, merges, watermarks). Pure. */
export function aggregateRowOf(envelope: AnyEnvelope): AggregateRow | undefined {
  if (envelope.type === 'control' || envelope.type === 'merge' || envelope.type === 'merge_state' || envelope.type === 'watermark') return undefined
  if (envelope.type !== 'aggregate') throw new Error(`sink-aggregates reads aggregate messages, got ${envelope.type}`)
  const { data } = envelope
  return {
    project: envelope.project, groupKey: envelope.key, source: data.partition.source, keyGroup: data.partition.keyGroup,
    definition: data.definition, definitionVersion: data.definitionVersion, windowKind: data.window.kind,
    windowStart: data.window.start, windowEnd: data.window.end, name: data.name, dimensions: data.dimensions,
    count: data.count, distinctUsers: data.distinctUsers, exact: data.exact, final: data.final, version: data.version,
  }
}
