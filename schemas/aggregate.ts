import Type, { type Static } from 'typebox'
import { Source } from './source.ts'

/**
 * Windowed aggregates (docs/aggregates.md): event counts and distinct users per window, event
 * name and chosen dimensions. A definition arrives as a control message for the `aggregates` step
 * (`Control.name` is the definition's name, `Control.definition` this object, null deletes it).
 */

/** What an event can be grouped by besides its name, from enrich's context (schemas/enriched.ts). */
export const Dimension = Type.Union([
  /** `geo.country`, ISO 3166-1 alpha-2. */
  Type.Literal('country'),
  /** `device.type`: desktop, mobile, tablet, ... */
  Type.Literal('deviceType'),
  Type.Literal('browser'),
  Type.Literal('os'),
  /** `acquisition.channel`: direct, organic_search, paid_search, ... */
  Type.Literal('channel'),
  /** `acquisition.source` / `medium` / `campaign`. */
  Type.Literal('utmSource'),
  Type.Literal('utmMedium'),
  Type.Literal('utmCampaign'),
])
export type Dimension = Static<typeof Dimension>

export const DIMENSIONS: readonly Dimension[] = ['country', 'deviceType', 'browser', 'os', 'channel', 'utmSource', 'utmMedium', 'utmCampaign']

/**
 * Tumbling: back-to-back windows. `minute` follows UTC minutes; `hour` and `day` follow the
 * project's timezone (an hour starts at a whole local hour, a day at local midnight, so a DST day
 * has 23 or 25 hour windows). Hopping: windows of `sizeMs` starting every `hopMs`, aligned to the
 * Unix epoch (UTC), so an event falls in about `sizeMs / hopMs` of them.
 */
export const AggregateWindow = Type.Union([
  Type.Object({ kind: Type.Literal('tumbling'), unit: Type.Union([Type.Literal('minute'), Type.Literal('hour'), Type.Literal('day')]) }),
  Type.Object({
    kind: Type.Literal('hopping'),
    sizeMs: Type.Integer({ minimum: 1000 }),
    /** At most `sizeMs`, and at least `sizeMs / 24` (MAX_WINDOWS_PER_EVENT). */
    hopMs: Type.Integer({ minimum: 1000 }),
  }),
])
export type AggregateWindow = Static<typeof AggregateWindow>

export const AggregateDefinition = Type.Object({
  window: AggregateWindow,
  /** Grouped by event name and these, in this order (none: by event name only). At most 4, no repeats. */
  dimensions: Type.Array(Dimension, { maxItems: 4 }),
  /** Count only these event names (`$page`, `$identify`, a track's `event`). Absent: every name. */
  events: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { minItems: 1, maxItems: 100 })),
  /**
   * How long after a window's end (in watermark time) a late event still corrects its final
   * result, ms. Default 1 hour; at most 7 days. Later events are reported late.
   */
  allowedLatenessMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 7 * 86_400_000 })),
  /**
   * Early (non-final) results and corrections of a window go out at most once per this much
   * event time, ms. Default 60 s. 0: no early results, corrections at once.
   */
  earlyEveryMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 86_400_000 })),
  /** Count events of bots (`context.bot`). Default false. */
  countBots: Type.Optional(Type.Boolean()),
})
export type AggregateDefinition = Static<typeof AggregateDefinition>

/** A definition's name: a token, as it appears in result ids and rollup rows. */
export const DEFINITION_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/

export const WindowKind = Type.Union([Type.Literal('minute'), Type.Literal('hour'), Type.Literal('day'), Type.Literal('hopping')])
export type WindowKind = Static<typeof WindowKind>

/**
 * One partial aggregate: what one key group saw of one window and group, from one source.
 * Users are routed by canonical id, so the partials of a window and group (one per key group and
 * source) count disjoint users: the window's count is the sum of its partials' counts, and so is
 * its distinct users (see docs/aggregates.md for the one exception). Consumers keep the highest
 * `version` per (definition, definitionVersion, window, name, dimensions, partition) and sum.
 */
export const AggregateResult = Type.Object({
  definition: Type.String(),
  /** The control version of the definition (0: the built-in default). */
  definitionVersion: Type.Integer({ minimum: 0 }),
  window: Type.Object({
    kind: WindowKind,
    /** Event time, ms since the epoch (UTC); `end` exclusive. */
    start: Type.Number(),
    end: Type.Number(),
  }),
  /** The event name. */
  name: Type.String(),
  /** Value of each of the definition's dimensions; '' when the event had none, '$other' past the group bound. */
  dimensions: Type.Record(Type.String(), Type.String()),
  /** Which partial this is. */
  partition: Type.Object({ keyGroup: Type.Integer({ minimum: 0 }), source: Source }),
  /** Events counted. */
  count: Type.Integer({ minimum: 1 }),
  /** Distinct canonical user ids among them: exact, or a HyperLogLog estimate when `exact` is false. */
  distinctUsers: Type.Integer({ minimum: 1 }),
  exact: Type.Boolean(),
  /** From 1, +1 with every result of this partial. */
  version: Type.Integer({ minimum: 1 }),
  /** The watermark has passed the window's end: complete, unless a correction (higher version, final too) follows. */
  final: Type.Boolean(),
})
export type AggregateResult = Static<typeof AggregateResult>
