import { isIP } from 'node:net'
import maxmind, { type CityResponse } from 'maxmind'
import type { Geo } from '../../schemas/enriched.ts'

/** Country and city of an IP address; undefined when unknown, invalid or missing. */
export interface GeoLookup {
  lookup(ip: string | undefined): Geo | undefined
}

export interface GeoOptions {
  /** Decoded database records kept in memory by the reader. Default 10,000. */
  cacheSize?: number
}

/** The lookup used when no database is configured: there is no geo, rather than a guessed one. */
export const noGeo: GeoLookup = Object.freeze({ lookup: () => undefined })

/**
 * Opens a MaxMind-format database (.mmdb: GeoLite2-City, GeoIP2-City, a
 * Country database, or any file with the same record shape) and answers
 * lookups from memory. The only I/O of enrich: call it once at start.
 */
export async function openGeo(path: string, options: GeoOptions = {}): Promise<GeoLookup> {
  const reader = await maxmind.open<CityResponse>(path, { cache: { max: options.cacheSize ?? 10_000 } })
  const ipv4Only = reader.metadata.ipVersion === 4
  return {
    lookup(ip) {
      if (typeof ip !== 'string' || ip.length === 0) return undefined
      // Dual-stack servers report IPv4 clients as IPv4-mapped IPv6 ('::ffff:1.2.3.4').
      const address = ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip
      const version = isIP(address)
      // The reader does not validate: garbage would walk the tree as 0.0.0.0.
      if (version === 0 || (version === 6 && ipv4Only)) return undefined
      return geoOf(reader.get(address))
    },
  }
}

function geoOf(record: CityResponse | null): Geo | undefined {
  if (record === null || typeof record !== 'object') return undefined
  const country = record.country?.iso_code
  const city = record.city?.names?.en
  if (typeof country !== 'string' && typeof city !== 'string') return undefined
  const geo: Geo = {}
  if (typeof country === 'string' && country.length > 0) geo.country = country
  if (typeof city === 'string' && city.length > 0) geo.city = city
  return geo.country === undefined && geo.city === undefined ? undefined : geo
}
