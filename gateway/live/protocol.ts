import type { LiveSums } from './book.ts'
import type { LiveFunnelView } from './funnels.ts'

/**
 * The WebSocket protocol of `/v1/live` (docs/live.md). JSON text frames.
 *
 * Client → server: `{ "type": "watch", "engagement"?: true, "segments"?: ["seg_..."], "funnels"?: ["signup"] }`
 * says what the client shows; each watch replaces the previous one.
 * Server → client: `counts` at once after a watch, then whenever a watched number changes, at
 * most `MAX_PUSHES_PER_SECOND` a second; `error` for a message it cannot take (the socket stays
 * open).
 */

/** Pushes per connection per second at most: changes in between are sent together. */
export const MAX_PUSHES_PER_SECOND = 4
/** Segments one watch may name. */
export const MAX_WATCHED_SEGMENTS = 200
/** Funnels one watch may name (a project has at most 100). */
export const MAX_WATCHED_FUNNELS = 100

export interface Watch {
  engagement: boolean
  segments: string[]
  funnels: string[]
}

export interface CountsMessage {
  type: 'counts'
  /** Event time of the newest change counted (ISO 8601), null before any. */
  asOf: string | null
  /** Key groups of the project that have published counts, of all there are. */
  keyGroups: { reporting: number; total: number }
  engagement?: LiveSums['engagement']
  /** Users per watched segment; null for a segment without a live size (behavioural conditions). */
  segments?: Record<string, number | null>
  /** Per watched funnel id, its step counts (the version current when watched; a restricted funnel's from SQL). */
  funnels?: Record<string, LiveFunnelView>
}

export interface ErrorMessage {
  type: 'error'
  message: string
}

export type ServerMessage = CountsMessage | ErrorMessage

/** A client's message as a watch, or the reason it is not one. */
export function parseWatch(text: string): Watch | { error: string } {
  let message: unknown
  try {
    message = JSON.parse(text)
  } catch {
    return { error: 'not JSON: send {"type":"watch","engagement":true,"segments":["seg_..."]}' }
  }
  if (typeof message !== 'object' || message === null || (message as { type?: unknown }).type !== 'watch') {
    return { error: 'unknown message: the one message is {"type":"watch","engagement":true,"segments":["seg_..."]}' }
  }
  const { engagement, segments, funnels, ...rest } = message as { type: string; engagement?: unknown; segments?: unknown; funnels?: unknown }
  const unknown = Object.keys(rest).filter((field) => field !== 'type')
  if (unknown.length > 0) return { error: `watch: unknown field "${unknown[0]}"; expected engagement, segments, funnels` }
  if (engagement !== undefined && typeof engagement !== 'boolean') return { error: 'watch.engagement: true or false' }
  if (segments !== undefined && (!Array.isArray(segments) || !segments.every((id) => typeof id === 'string' && id.length > 0 && id.length <= 64))) {
    return { error: 'watch.segments: a list of segment ids' }
  }
  const ids = [...new Set((segments as string[] | undefined) ?? [])]
  if (ids.length > MAX_WATCHED_SEGMENTS) return { error: `watch.segments: at most ${MAX_WATCHED_SEGMENTS}` }
  if (funnels !== undefined && (!Array.isArray(funnels) || !funnels.every((id) => typeof id === 'string' && id.length > 0 && id.length <= 128))) {
    return { error: 'watch.funnels: a list of funnel ids' }
  }
  const funnelIds = [...new Set((funnels as string[] | undefined) ?? [])]
  if (funnelIds.length > MAX_WATCHED_FUNNELS) return { error: `watch.funnels: at most ${MAX_WATCHED_FUNNELS}` }
  return { engagement: engagement === true, segments: ids, funnels: funnelIds }
}

/**
 * What a watch shows of the sums; `notLive` are the watched segments without a live size; `funnels`
 * the watched funnels' views (funnelView of their summed step counts, or a restricted funnel's view).
 */
export function countsMessage(sums: LiveSums, watch: Watch, notLive: ReadonlySet<string>, totalKeyGroups: number, funnels: readonly LiveFunnelView[] = []): CountsMessage {
  const message: CountsMessage = {
    type: 'counts',
    asOf: sums.asOf === null ? null : new Date(sums.asOf).toISOString(),
    keyGroups: { reporting: sums.keyGroups, total: totalKeyGroups },
  }
  if (watch.engagement) message.engagement = sums.engagement
  if (watch.segments.length > 0) {
    message.segments = Object.fromEntries(watch.segments.map((id) => [id, notLive.has(id) ? null : Object.hasOwn(sums.segments, id) ? sums.segments[id]! : 0]))
  }
  if (watch.funnels.length > 0) message.funnels = Object.fromEntries(funnels.map((view) => [view.id, view]))
  return message
}

/** The numbers a push is about: a new push only when they differ from the last one's. */
export const numbersOf = (message: CountsMessage) =>
  JSON.stringify([message.engagement, message.segments, Object.values(message.funnels ?? {}).map((funnel) => funnel.steps)])
