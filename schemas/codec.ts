import { Packr } from 'msgpackr'
import { Compile } from 'typebox/compile'
import type { TSchema, Static } from 'typebox'
import { AggregateEnvelope, AnyEnvelope, ControlEnvelope, DeadLetterEnvelope, EnrichedEventEnvelope, FunnelProgressEnvelope, LiveCountsEnvelope, LiveFunnelCountsEnvelope, MergeEnvelope, MergeStateEnvelope, ProfileEnvelope, RawEventEnvelope, SegmentMembershipEnvelope, SessionEnvelope, WatermarkEnvelope } from './envelope.ts'

/**
 * Plain msgpack maps (no msgpackr records or structured clones) so any msgpack
 * decoder, in any language, reads what segstream publishes. Binary values are
 * copied when decoded: a view into the message would keep the whole buffer it was
 * read into alive for as long as a state holds it (enrich's packed message ids).
 */
const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false, copyBuffers: true })

export function encode(value: unknown): Uint8Array {
  return packr.pack(value)
}

export function decode(bytes: Uint8Array): unknown {
  return packr.unpack(bytes)
}

export class SchemaError extends Error {
  readonly code = 'SEG_SCHEMA'
  readonly problems: string[]
  constructor(what: string, problems: string[]) {
    super(`${what} does not match its schema: ${problems.join('; ')}`)
    this.problems = problems
  }
}

/** A compiled schema with a check that explains itself. */
export function validator<T extends TSchema>(schema: T, what: string) {
  const compiled = Compile(schema)
  return {
    check: (value: unknown): value is Static<T> => compiled.Check(value),
    problems: (value: unknown): string[] =>
      compiled.Errors(value).slice(0, 5).map((e) => `${e.instancePath || '/'} ${e.message}`),
    assert(value: unknown): Static<T> {
      if (compiled.Check(value)) return value as Static<T>
      throw new SchemaError(what, this.problems(value))
    },
  }
}

const envelopeValidator = validator(AnyEnvelope, 'envelope')
// per type, so a bad message is explained against the schema of its own type
const byType = {
  raw_event: validator(RawEventEnvelope, 'envelope'),
  enriched_event: validator(EnrichedEventEnvelope, 'envelope'),
  dead_letter: validator(DeadLetterEnvelope, 'envelope'),
  control: validator(ControlEnvelope, 'envelope'),
  merge: validator(MergeEnvelope, 'envelope'),
  merge_state: validator(MergeStateEnvelope, 'envelope'),
  session: validator(SessionEnvelope, 'envelope'),
  profile: validator(ProfileEnvelope, 'envelope'),
  segment_membership: validator(SegmentMembershipEnvelope, 'envelope'),
  watermark: validator(WatermarkEnvelope, 'envelope'),
  funnel_progress: validator(FunnelProgressEnvelope, 'envelope'),
  aggregate: validator(AggregateEnvelope, 'envelope'),
  live_counts: validator(LiveCountsEnvelope, 'envelope'),
  live_funnel_counts: validator(LiveFunnelCountsEnvelope, 'envelope'),
} as const

/**
 * Decodes and validates any segstream message. Throws SchemaError on a bad message.
 * Every member of the AnyEnvelope union is tagged by its own `type` literal, so the
 * schema of that type alone gives the union's verdict, without trying the members
 * before it: this runs for every message every operator reads.
 */
export function decodeEnvelope(bytes: Uint8Array): AnyEnvelope {
  const value = decode(bytes)
  const type = (value as { type?: unknown } | null)?.type
  if (typeof type === 'string' && Object.hasOwn(byType, type)) return byType[type as keyof typeof byType].assert(value)
  // a type of the union not (yet) listed above still decodes
  if (envelopeValidator.check(value)) return value
  throw new SchemaError('envelope', [`/type must be one of ${Object.keys(byType).join(', ')}, got ${JSON.stringify(type)}`, ...envelopeValidator.problems(value).slice(0, 2)])
}
