import Bowser from 'bowser'
import type { Device } from '../../schemas/enriched.ts'
import { isBotAgent } from './bots.ts'

/** Distinct user agents remembered by the default parser. */
export const USER_AGENT_CACHE_SIZE = 10_000

/**
 * Longest user agent parsed. Real ones stay well under 1 KiB (in-app browsers
 * with long app tokens included); a longer one is cut before parsing so that a
 * hostile client cannot make parsing or the cache expensive.
 */
export const MAX_USER_AGENT_LENGTH = 1024

/** Device types enrich reports; see docs/enrich.md. */
export const DEVICE_TYPES = ['desktop', 'mobile', 'tablet', 'tv', 'console', 'wearable', 'bot', 'unknown'] as const
export type DeviceType = (typeof DEVICE_TYPES)[number]

export interface DeviceParserOptions {
  /** Distinct user agents kept, least recently used dropped first. Default USER_AGENT_CACHE_SIZE. */
  cacheSize?: number
}

export interface DeviceParser {
  deviceOf(userAgent: string | undefined): Device
  /** Entries currently cached (for tests and metrics). */
  cachedEntries(): number
}

const UNKNOWN: Device = Object.freeze({ type: 'unknown' })

// Bowser has no console or wearable platforms (it calls an Xbox a desktop and a
// PlayStation nothing), so these are recognised first. Compiled once.
const CONSOLE = /xbox|playstation|nintendo (?:switch|wiiu|3ds)/i
const WEARABLE = /\bwatch(?:os)?\b|wear ?os/i

const BOWSER_PLATFORM_TYPES: ReadonlySet<string> = new Set(['desktop', 'mobile', 'tablet', 'tv', 'bot'])

/**
 * A device parser with its own bounded cache. The result for a user agent
 * never depends on what was parsed before: the cache only saves the work.
 */
export function createDeviceParser(options: DeviceParserOptions = {}): DeviceParser {
  const capacity = Math.max(1, options.cacheSize ?? USER_AGENT_CACHE_SIZE)
  // A Map iterates in insertion order, so re-inserting on a hit and evicting the
  // first key gives least-recently-used eviction without a linked list.
  const cache = new Map<string, Device>()

  function deviceOf(userAgent: string | undefined): Device {
    if (typeof userAgent !== 'string' || userAgent.length === 0) return UNKNOWN
    const key = userAgent.length > MAX_USER_AGENT_LENGTH ? userAgent.slice(0, MAX_USER_AGENT_LENGTH) : userAgent
    const cached = cache.get(key)
    if (cached !== undefined) {
      cache.delete(key)
      cache.set(key, cached)
      return cached
    }
    const device = parseDevice(key)
    if (cache.size >= capacity) cache.delete(cache.keys().next().value!)
    cache.set(key, device)
    return device
  }

  return { deviceOf, cachedEntries: () => cache.size }
}

const defaultParser = createDeviceParser()

/**
 * Device type, browser and OS of a user agent. Missing, blank or unparseable
 * → `{ type: 'unknown' }`; crawlers, headless browsers and HTTP libraries →
 * type `bot` (bowser's bot platforms and isbot's list). Results are frozen and
 * shared between calls: do not mutate them.
 */
export function deviceOf(userAgent: string | undefined): Device {
  return defaultParser.deviceOf(userAgent)
}

function parseDevice(userAgent: string): Device {
  let browser: Record<string, string | undefined>
  let os: Record<string, string | undefined>
  let platformType: string
  try {
    // Lazy parser: only browser, OS and platform are parsed, never the engine.
    const parser = Bowser.getParser(userAgent, true)
    browser = parser.getBrowser() as Record<string, string | undefined>
    os = parser.getOS() as Record<string, string | undefined>
    platformType = parser.getPlatformType(true)
  } catch {
    // Bowser throws on blank input; anything it cannot take is simply unknown.
    return isBotAgent(userAgent) ? Object.freeze({ type: 'bot' }) : UNKNOWN
  }

  const type = typeOf(userAgent, platformType)
  const device: Device = { type }
  if (nonEmpty(browser.name)) device.browser = browser.name
  if (nonEmpty(browser.version)) device.browserVersion = browser.version
  if (nonEmpty(os.name)) device.os = os.name
  // Windows reports its kernel version ("NT 10.0"); the marketing name ("10") is what people filter on.
  const osVersion = os.name === 'Windows' && nonEmpty(os.versionName) ? os.versionName : os.version
  if (nonEmpty(osVersion)) device.osVersion = osVersion
  if (type === 'unknown' && device.browser === undefined && device.os === undefined) return UNKNOWN
  return Object.freeze(device)
}

function typeOf(userAgent: string, platformType: string): DeviceType {
  if (platformType === 'bot' || isBotAgent(userAgent)) return 'bot'
  if (CONSOLE.test(userAgent)) return 'console'
  if (WEARABLE.test(userAgent)) return 'wearable'
  return BOWSER_PLATFORM_TYPES.has(platformType) ? (platformType as DeviceType) : 'unknown'
}

function nonEmpty(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0
}
