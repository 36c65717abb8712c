import type { EnrichedContext } from '../../schemas/enriched.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'
import { acquisitionOf, type ChannelOptions } from './channel.ts'
import { deviceOf } from './device.ts'
import type { GeoLookup } from './geo.ts'

export interface ContextDependencies {
  /** `noGeo` when no database is configured. */
  geo: GeoLookup
  channels: ChannelOptions
}

/**
 * Everything enrich derives from a message's context: device (context.userAgent),
 * acquisition (context.campaign / page URL UTM, context.page.referrer), geo
 * (context.ip) and whether the sender is a bot. Pure given its dependencies.
 */
export function contextOf(message: SegmentMessage, dependencies: ContextDependencies): EnrichedContext {
  const context = message.context
  const userAgent = typeof context?.userAgent === 'string' ? context.userAgent : undefined
  const ip = typeof context?.ip === 'string' ? context.ip : undefined
  const device = deviceOf(userAgent)
  const enriched: EnrichedContext = {
    device,
    acquisition: acquisitionOf(context, dependencies.channels),
    // deviceOf types a user agent 'bot' when bowser sees a bot platform or isBotAgent (isbot) matches it.
    bot: device.type === 'bot',
  }
  const geo = dependencies.geo.lookup(ip)
  if (geo !== undefined) enriched.geo = geo
  return enriched
}
