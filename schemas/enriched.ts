import Type, { type Static } from 'typebox'

/**
 * What enrich derives from a message's context. Every field is optional but
 * `bot` and `channel`: a value enrich could not determine is left out, never guessed.
 */
export const Device = Type.Object({
  /** desktop | mobile | tablet | tv | console | wearable | bot | unknown */
  type: Type.String(),
  browser: Type.Optional(Type.String()),
  browserVersion: Type.Optional(Type.String()),
  os: Type.Optional(Type.String()),
  osVersion: Type.Optional(Type.String()),
})
export type Device = Static<typeof Device>

export const Acquisition = Type.Object({
  /** direct | organic_search | paid_search | paid_social | social | email | display | affiliate | referral | other (docs/enrich.md) */
  channel: Type.String(),
  /** utm_source, else the referring host's known name (google, facebook, ...). */
  source: Type.Optional(Type.String()),
  medium: Type.Optional(Type.String()),
  campaign: Type.Optional(Type.String()),
  /** Host of an external referrer (the site's own host is not a referrer). */
  referrerHost: Type.Optional(Type.String()),
})
export type Acquisition = Static<typeof Acquisition>

export const Geo = Type.Object({
  /** ISO 3166-1 alpha-2. */
  country: Type.Optional(Type.String()),
  city: Type.Optional(Type.String()),
})
export type Geo = Static<typeof Geo>

export const EnrichedContext = Type.Object({
  device: Device,
  acquisition: Acquisition,
  /** Present only when a MaxMind-format database is configured and knows the IP. */
  geo: Type.Optional(Geo),
  /** A crawler, spider or headless client: kept and stored, excluded from counts by default. */
  bot: Type.Boolean(),
})
export type EnrichedContext = Static<typeof EnrichedContext>
