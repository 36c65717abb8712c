import type { Control } from '../../schemas/envelope.ts'

/**
 * Saved segments, evaluated live against a user's profile (docs/live.md). The exploration API
 * stores a segment as a name and a filter (docs/explore.md) and publishes it as a control message
 * `{ stepId: 'profile', name: 'segment:<id>', version, definition: { id, name, filter } | null }`;
 * `applySegmentControl` keeps a project's definitions from those, and `segmentsOf` says which of
 * them a user is in. Both pure.
 *
 * Only dimension conditions (`equals`, `in`, `range`, `not`) on profile fields are evaluated here,
 * with the SQL's meaning (store/explore.ts `compileFilter`): a missing value satisfies no
 * condition, so `not` keeps it; trait equality is JSON-typed (30 is not "30"); a range on a trait
 * takes numbers only. A segment with a behavioural condition (`event`) or an `active` range has no
 * live size: it depends on a sliding window of days or on the events table, which this operator
 * does not keep current. Such segments are remembered as not live and nobody is counted in them.
 */

export type Scalar = string | number | boolean | null

export interface LiveCondition {
  dimension: string
  equals?: Scalar
  in?: Scalar[]
  range?: { from?: Scalar; to?: Scalar }
  not?: boolean
}

export interface SegmentDefinition {
  id: string
  /** Version of the control message that defined it. */
  version: number
  /** False when the filter has conditions this operator does not evaluate (behavioural, `active`). */
  live: boolean
  /** Every one must hold. */
  conditions: LiveCondition[]
}

/** What the profile step keeps per project from its control messages: saved segments by id. */
export interface ProfileDefinitions {
  segments: Record<string, SegmentDefinition>
}

/** The control message name prefix of a saved segment: `segment:<id>`. */
export const SEGMENT_CONTROL_PREFIX = 'segment:'

const LEVELS = ['Low', 'Medium', 'Medium-High', 'High'] as const

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)

const NO_SEGMENTS: ProfileDefinitions = { segments: {} }

export function definitionsOf(control: unknown): ProfileDefinitions {
  return isRecord(control) && isRecord(control.segments) ? (control as unknown as ProfileDefinitions) : NO_SEGMENTS
}

/** A stored filter as this operator reads it: its dimension conditions, and whether that is all of it. */
export function segmentDefinitionOf(id: string, version: number, filter: unknown): SegmentDefinition {
  const conditions: LiveCondition[] = []
  let live = true
  if (isRecord(filter)) {
    if (filter.active !== undefined) live = false
    for (const condition of Array.isArray(filter.all) ? filter.all : []) {
      if (!isRecord(condition) || typeof condition.dimension !== 'string') {
        live = false // a behavioural condition (or something newer than this code)
        continue
      }
      const kept: LiveCondition = { dimension: condition.dimension }
      if (condition.equals !== undefined) kept.equals = condition.equals as Scalar
      if (Array.isArray(condition.in)) kept.in = condition.in as Scalar[]
      if (isRecord(condition.range)) {
        kept.range = {}
        if (condition.range.from !== undefined) kept.range.from = condition.range.from as Scalar
        if (condition.range.to !== undefined) kept.range.to = condition.range.to as Scalar
      }
      if (condition.not === true) kept.not = true
      conditions.push(kept)
    }
  }
  return { id, version, live, conditions }
}

/**
 * The profile step's `onControl` for saved segments: a definition adds (or replaces) one, `null`
 * removes it. An older version than the one held changes nothing (a control message published
 * twice with different versions arrives in version order anyway; this keeps it so if not).
 * Control messages not about segments leave the definitions as they are.
 */
export function applySegmentControl(current: unknown, control: Control): ProfileDefinitions {
  const definitions = definitionsOf(current)
  if (!control.name.startsWith(SEGMENT_CONTROL_PREFIX)) return definitions
  const id = control.name.slice(SEGMENT_CONTROL_PREFIX.length)
  const held = Object.hasOwn(definitions.segments, id) ? definitions.segments[id] : undefined
  if (held && held.version >= control.version) return definitions
  const segments = { ...definitions.segments }
  if (control.definition === null || control.definition === undefined) delete segments[id]
  else segments[id] = segmentDefinitionOf(id, control.version, isRecord(control.definition) ? control.definition.filter : undefined)
  return { ...definitions, segments }
}

/** A user's values as a segment condition reads them (the columns of the profiles table); undefined and null are both "no value". */
export type ProfileValues = (dimension: string) => unknown

function equalsValue(value: unknown, wanted: Scalar, trait: boolean): boolean {
  if (wanted === null) return value === undefined || value === null
  if (value === undefined || value === null) return false
  // a trait is JSON: only a scalar of the same type equals it (an array holding it does not)
  if (trait) return typeof value === typeof wanted && value === wanted
  return value === wanted
}

function inRange(value: unknown, range: { from?: Scalar; to?: Scalar }, dimension: string, trait: boolean): boolean {
  if (value === undefined || value === null) return false
  if (dimension === 'engagement') {
    const at = LEVELS.indexOf(value as (typeof LEVELS)[number])
    const low = range.from === undefined ? 0 : LEVELS.indexOf(range.from as (typeof LEVELS)[number])
    const high = range.to === undefined ? LEVELS.length - 1 : LEVELS.indexOf(range.to as (typeof LEVELS)[number])
    return at >= 0 && at >= low && at <= high
  }
  if (trait && typeof value !== 'number') return false
  if (typeof value !== typeof (range.from ?? range.to)) return false
  const comparable = value as string | number
  if (range.from !== undefined && range.from !== null && comparable < (range.from as string | number)) return false
  if (range.to !== undefined && range.to !== null && comparable > (range.to as string | number)) return false
  return true
}

type Test = (values: ProfileValues) => boolean

/** One condition as a test of a user's values, `not` applied. */
function compileCondition(condition: LiveCondition): Test {
  const { dimension } = condition
  const trait = dimension.startsWith('trait.')
  let holds: (value: unknown) => boolean
  if (condition.equals !== undefined) {
    const wanted = condition.equals
    holds = (value) => equalsValue(value, wanted, trait)
  } else if (condition.in !== undefined) {
    const list = condition.in
    holds = (value) => list.some((wanted) => equalsValue(value, wanted, trait))
  } else if (condition.range !== undefined) {
    const range = condition.range
    holds = (value) => inRange(value, range, dimension, trait)
  } else {
    holds = () => false
  }
  return condition.not === true ? (values) => !holds(values(dimension)) : (values) => holds(values(dimension))
}

function compileSegment(segment: SegmentDefinition): Test {
  if (!segment.live) return () => false
  const tests = segment.conditions.map(compileCondition)
  return (values) => tests.every((test) => test(values))
}

export function matches(segment: SegmentDefinition, values: ProfileValues): boolean {
  return compileSegment(segment)(values)
}

/**
 * The live segments of a definitions object, sorted by id and compiled: built once per object.
 * The runtime hands every input of a project the same object until the next control message
 * (and a new one after a reload), so each event pays for the tests only.
 */
const compiled = new WeakMap<ProfileDefinitions, Array<{ id: string; test: Test }>>()

function compiledOf(definitions: ProfileDefinitions) {
  let list = compiled.get(definitions)
  if (!list) {
    list = Object.keys(definitions.segments).sort()
      .filter((id) => definitions.segments[id]!.live)
      .map((id) => ({ id, test: compileSegment(definitions.segments[id]!) }))
    compiled.set(definitions, list)
  }
  return list
}

/** The ids of the live segments a user is in, sorted. */
export function segmentsOf(definitions: ProfileDefinitions, values: ProfileValues): string[] {
  const ids: string[] = []
  for (const { id, test } of compiledOf(definitions)) if (test(values)) ids.push(id)
  return ids
}

/** Which segments a user left and entered, each sorted. */
export function segmentChanges(before: readonly string[], after: readonly string[]): { left: string[]; entered: string[] } {
  if (before.length === after.length && before.every((id, index) => after[index] === id)) return { left: [], entered: [] }
  const was = new Set(before)
  const is = new Set(after)
  return { left: before.filter((id) => !is.has(id)), entered: after.filter((id) => !was.has(id)) }
}
