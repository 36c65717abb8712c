import Type from 'typebox'
import { ENGAGEMENT_LEVELS, MAX_CONDITIONS, MAX_GROUPS, MAX_IN_VALUES, MAX_PAGE, MAX_TIMEOUT_MS, MAX_WINDOW_DAYS } from '../../store/explore.ts'

// Request schemas describe the grammar (and OpenAPI shows it); store/explore.ts checks the
// meaning and names the place of a mistake (`filter.all[2].range: from ... is after to ...`).
// No `additionalProperties: false`: Fastify's Ajv would silently strip an unknown field, so a
// typo (`al` for `all`) would widen the filter; the store rejects unknown fields instead.

/** A dimension's value: engagement levels, months and other text are strings; null is "no value". */
export const Scalar = Type.Unsafe<string | number | boolean | null>({
  type: ['string', 'number', 'boolean', 'null'],
  description: 'a value of the dimension; null means "no value" (not set)',
})

export const Condition = Type.Object({
  dimension: Type.Optional(Type.String({ description: 'a dimension (GET /v1/dimensions): engagement, acquisition_month, country, trait.plan, ...' })),
  equals: Type.Optional(Scalar),
  in: Type.Optional(Type.Array(Scalar, { minItems: 1, maxItems: MAX_IN_VALUES, description: 'any of these values' })),
  range: Type.Optional(Type.Object({
    from: Type.Optional(Scalar),
    to: Type.Optional(Scalar),
  }, { description: `both ends inclusive; for engagement (${ENGAGEMENT_LEVELS.join(' < ')}), months (YYYY-MM) and numbers` })),
  event: Type.Optional(Type.String({ minLength: 1, description: 'behavioural condition: an event name (click_event1, $page, ...)' })),
  atLeast: Type.Optional(Type.Integer({ minimum: 1, description: 'with event: at least this many times' })),
  inLastDays: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_WINDOW_DAYS, description: 'with event: over this many local days ending on the as-of day (included)' })),
  not: Type.Optional(Type.Boolean({ description: 'keep the users the condition does not hold for (users without a value included)' })),
}, { description: 'either { dimension, equals | in | range } or { event, atLeast, inLastDays }; optional not' })

export const Filter = Type.Object({
  all: Type.Optional(Type.Array(Condition, { maxItems: MAX_CONDITIONS, description: 'every condition must hold' })),
  active: Type.Optional(Type.Object({
    from: Type.Optional(Type.String({ description: 'ISO 8601 time, inclusive' })),
    to: Type.Optional(Type.String({ description: 'ISO 8601 time, exclusive' })),
  }, { description: 'users with at least one event in [from, to)' })),
  asOf: Type.Optional(Type.String({ description: 'ISO 8601 time behavioural windows end at; default the project\'s newest engagement_as_of' })),
}, { description: 'the AND of all conditions and the active range; an empty filter is every user' })

const timeoutMs = Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_TIMEOUT_MS, description: 'statement timeout of this query, ms; default 10000' }))

export const CountBody = Type.Object({
  dimension: Type.String({ description: 'what to count users by' }),
  filter: Type.Optional(Filter),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_GROUPS, description: 'groups to return; default 100' })),
  timeoutMs,
})

export const Group = Type.Object({
  value: Type.Unknown({ description: 'the value (a trait\'s as JSON); null: users without one' }),
  count: Type.Integer(),
})

export const CountAnswer = Type.Object({
  dimension: Type.String(),
  kind: Type.String(),
  total: Type.Integer({ description: 'users matching the filter, in all groups' }),
  groupCount: Type.Integer({ description: 'groups there are (more than returned when limit cut them)' }),
  groups: Type.Array(Group, { description: 'engagement Low→High (all four), months ascending, others by count descending' }),
  asOf: Type.Optional(Type.String({ description: 'where behavioural windows ended, when the filter had any' })),
})

export const UsersBody = Type.Object({
  filter: Type.Optional(Filter),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_PAGE, description: 'users per page; default 100 (CSV: ignored, every user is sent)' })),
  cursor: Type.Optional(Type.String({ description: 'nextCursor of the previous page' })),
  timeoutMs,
})

export const UsersQuery = Type.Object({
  format: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('csv')], { description: 'csv: the same as Accept: text/csv' })),
})

const nullable = (schema: ReturnType<typeof Type.String>) => Type.Union([schema, Type.Null()])

export const User = Type.Object({
  canonicalId: Type.String(),
  firstSeen: nullable(Type.String()),
  lastSeen: nullable(Type.String()),
  acquisitionMonth: nullable(Type.String()),
  acquisitionChannel: nullable(Type.String()),
  acquisitionSource: nullable(Type.String()),
  acquisitionMedium: nullable(Type.String()),
  acquisitionCampaign: nullable(Type.String()),
  device: nullable(Type.String()),
  browser: nullable(Type.String()),
  os: nullable(Type.String()),
  country: nullable(Type.String()),
  city: nullable(Type.String()),
  events: Type.Integer(),
  sessions: Type.Integer(),
  engagement: nullable(Type.String()),
  engagementScore: Type.Union([Type.Integer(), Type.Null()]),
  engagementAsOf: nullable(Type.String()),
  traits: Type.Record(Type.String(), Type.Unknown()),
})

export const UsersAnswer = Type.Object({
  users: Type.Array(User),
  nextCursor: Type.Union([Type.String(), Type.Null()], { description: 'pass it back as cursor; null on the last page' }),
  asOf: Type.Optional(Type.String()),
})

export const Dimension = Type.Object({
  name: Type.String(),
  kind: Type.String({ description: 'level (ordered: values), month (YYYY-MM), string, number, boolean, json or mixed' }),
  description: Type.String(),
  values: Type.Optional(Type.Array(Type.String())),
})
export const DimensionsAnswer = Type.Object({
  dimensions: Type.Array(Dimension),
  events: Type.Array(Type.String(), { description: 'event names behavioural conditions can match (those in the last 90 days of some profile), ascending, at most 1000' }),
})

export const SegmentBody = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200 }),
  filter: Filter,
})

export const SegmentAnswer = Type.Object({
  id: Type.String(),
  name: Type.String(),
  filter: Filter,
  version: Type.Integer({ description: 'version of the control message that published the definition' }),
  createdAt: Type.String(),
  size: Type.Integer({ description: 'users matching the filter now, counted when read' }),
  asOf: Type.Optional(Type.String()),
})
export const SegmentsAnswer = Type.Object({ segments: Type.Array(SegmentAnswer) })
export const DeletedAnswer = Type.Object({ deleted: Type.Boolean(), id: Type.String() })
export const SegmentParams = Type.Object({ id: Type.String() })

export const ErrorBody = Type.Object({
  error: Type.String({ description: 'bad_request, unauthorized, not_found, query_timeout, unavailable' }),
  message: Type.String(),
  reason: Type.Optional(Type.String({ description: 'on 503: statement_timeout or the dependency down' })),
  timeoutMs: Type.Optional(Type.Integer()),
  dependency: Type.Optional(Type.String()),
  details: Type.Optional(Type.Unknown()),
})
