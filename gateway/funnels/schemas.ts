import Type from 'typebox'
import { FunnelDefinition, FunnelStatus } from '../../schemas/funnel.ts'
import { MAX_PAGE, MAX_TIMEOUT_MS } from '../../store/explore.ts'
import { ErrorBody, User } from '../explore/schemas.ts'

// The definition in a request body is checked by funnelDefinitionProblems (schemas/funnel.ts),
// which names every problem; the schema here documents it (OpenAPI). The routes turn Ajv off for
// it: Fastify's Ajv would strip an unknown field (a typo) instead of refusing it.
export { FunnelDefinition, ErrorBody }

const nullableNumber = Type.Union([Type.Number(), Type.Null()])
const timeoutMs = Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_TIMEOUT_MS, description: 'statement timeout of this query, ms; default 10000' }))

export const FunnelParams = Type.Object({ id: Type.String() })

export const Backfill = Type.Object({
  state: Type.String({ description: 'pending, running, done or failed' }),
  done: Type.Integer(),
  total: Type.Integer(),
  error: Type.Optional(Type.String()),
}, { description: 'the backfill over history of this version: pending when created or changed, until the backfill worker takes it' })

export const FunnelAnswer = Type.Object({
  id: Type.String(),
  name: Type.String(),
  version: Type.Integer({ description: 'version of the control message that carried this definition to the funnel step; each change adds 1' }),
  definition: FunnelDefinition,
  createdAt: Type.String(),
  updatedAt: Type.String(),
  backfill: Type.Union([Backfill, Type.Null()]),
})
export const FunnelsAnswer = Type.Object({ funnels: Type.Array(FunnelAnswer) })
export const FunnelChangedAnswer = Type.Object({
  ...FunnelAnswer.properties,
  newVersion: Type.Boolean({ description: 'true: what the funnel step computes changed, so a new version was published and progress starts afresh (backfill pending); false: only the name or the segment changed, in place' }),
})
export const FunnelDeletedAnswer = Type.Object({ deleted: Type.Boolean(), id: Type.String(), version: Type.Integer({ description: 'the version the deletion was published as' }) })

const range = {
  from: Type.Optional(Type.String({ description: 'ISO 8601: users whose first step is at or after it' })),
  to: Type.Optional(Type.String({ description: 'ISO 8601: users whose first step is before it' })),
}

export const ResultQuery = Type.Object({
  ...range,
  breakdown: Type.Optional(Type.Boolean({ description: 'also per value of the funnel\'s breakdown property' })),
  timeoutMs,
})

const FunnelRef = Type.Object({ id: Type.String(), name: Type.String(), version: Type.Integer() })

export const StepResult = Type.Object({
  step: Type.Integer({ description: '1-based' }),
  event: Type.String(),
  label: Type.Optional(Type.String()),
  reached: Type.Integer({ description: 'users whose counted attempt reached this step or further' }),
  conversionFromPrevious: Type.Union([Type.Number(), Type.Null()], { description: 'reached / reached at the previous step (null: nobody reached it)' }),
  conversionFromFirst: Type.Union([Type.Number(), Type.Null()], { description: 'reached / reached at step 1 (null: nobody entered)' }),
  dropOff: Type.Integer({ description: 'reached this step and not the next: inProgress + dropped (0 on the last step)' }),
  inProgress: Type.Integer({ description: 'of dropOff: an attempt can still go on (its window is open)' }),
  dropped: Type.Integer({ description: 'of dropOff: every attempt has closed' }),
  timeToConvert: Type.Union([Type.Object({
    users: Type.Integer(),
    medianMs: Type.Number({ description: 'from the previous step, interpolated median, ms' }),
    p90Ms: Type.Number({ description: 'from the previous step, interpolated 90th percentile, ms' }),
  }), Type.Null()], { description: 'from the previous step to this one; null on step 1 and when nobody reached this step' }),
})

const counts = {
  entered: Type.Integer({ description: 'users who reached step 1' }),
  converted: Type.Integer({ description: 'users who reached the last step' }),
  conversion: Type.Union([Type.Number(), Type.Null()], { description: 'converted / entered' }),
  steps: Type.Array(StepResult),
}

export const ResultAnswer = Type.Object({
  funnel: FunnelRef,
  from: Type.Union([Type.String(), Type.Null()]),
  to: Type.Union([Type.String(), Type.Null()]),
  ...counts,
  breakdown: Type.Optional(Type.Object({
    property: Type.String(),
    values: Type.Array(Type.Object({ value: Type.Union([Type.String(), Type.Null()], { description: 'null: users whose first step had no value' }), ...counts }), { description: 'most users first' }),
  })),
  asOf: Type.Optional(Type.String({ description: 'where the segment\'s behavioural windows ended, when it has any' })),
})

export const TrendsQuery = Type.Object({
  interval: Type.Optional(Type.String({ description: 'day (default) or week (weeks start on Monday), in the project\'s timezone' })),
  ...range,
  timeoutMs,
})

export const TrendsAnswer = Type.Object({
  funnel: FunnelRef,
  interval: Type.String(),
  timezone: Type.String(),
  from: Type.Union([Type.String(), Type.Null()]),
  to: Type.Union([Type.String(), Type.Null()]),
  buckets: Type.Array(Type.Object({
    start: Type.String({ description: 'local date the day or week starts on, YYYY-MM-DD' }),
    entered: Type.Integer({ description: 'users whose first step fell in the bucket' }),
    converted: Type.Integer(),
    conversion: nullableNumber,
    reached: Type.Array(Type.Integer(), { description: 'reached[k]: of those, users who reached step k + 1' }),
  }), { description: 'every bucket from the first to the last, empty ones with zeros' }),
  asOf: Type.Optional(Type.String()),
})

export const AudienceQuery = Type.Object({
  level: Type.Integer({ description: 'users who reached exactly this step and not the next (1 to the number of steps; the last: converted users)' }),
  status: Type.Optional(Type.String({ description: 'dropped, in_progress or all (default)' })),
  ...range,
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_PAGE, description: 'users per page; default 100 (CSV: every user is sent)' })),
  cursor: Type.Optional(Type.String({ description: 'nextCursor of the previous page' })),
  format: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('csv')], { description: 'csv: the same as Accept: text/csv' })),
  timeoutMs,
})

export const AudienceUser = Type.Object({
  ...User.properties,
  status: FunnelStatus,
  stepTimes: Type.Array(Type.String(), { description: 'when each step was reached, level entries' }),
})

export const AudienceAnswer = Type.Object({
  funnel: FunnelRef,
  level: Type.Integer(),
  status: Type.String(),
  users: Type.Array(AudienceUser),
  nextCursor: Type.Union([Type.String(), Type.Null()], { description: 'pass it back as cursor; null on the last page' }),
  asOf: Type.Optional(Type.String()),
})
