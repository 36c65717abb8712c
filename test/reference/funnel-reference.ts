/**
 * A brute-force funnel, written from docs/funnels.md and nothing else (it imports nothing from
 * operators/funnel): sort and deduplicate the user's events, start one attempt at every
 * first-step event, walk each attempt forward on its own, and pick the counted one. Slow on
 * purpose; the tests compare the operator with it.
 */
import type { FunnelDefinition, PropertyFilter } from '../../schemas/funnel.ts'

export interface ReferenceEvent {
  time: number
  id: string
  /** The name the event is counted under (`$session_start` for a session's start). */
  name: string
  /** Every property a filter may name, `$`-fields included. */
  properties: Record<string, unknown>
  /** A session start from the sessions stage: never "another event" in strict mode. */
  session?: boolean
}

export interface ReferenceResult {
  level: number
  status: 'converted' | 'in_progress' | 'dropped' | 'none'
  stepTimes: number[]
  breakdown?: string
}

interface Walk {
  start: ReferenceEvent
  level: number
  /** Steps reached, for any order. */
  done: Set<number>
  times: number[]
  completion: ReferenceEvent
  /** How the walk ended: it can still go on, it was broken (strict), it was discarded (exclusion), or it reached the last step. */
  end: 'open' | 'broken' | 'discarded' | 'complete'
}

function scalar(value: unknown): value is string | number | boolean {
  return ['string', 'number', 'boolean'].includes(typeof value)
}

function equalish(a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (!scalar(a) || !scalar(b)) return false
  return `${a}` === `${b}`
}

function compare(value: unknown, expected: unknown): number | undefined {
  if (typeof expected === 'number') {
    let number: number
    if (typeof value === 'number') number = value
    else if (typeof value === 'string' && value.trim().length > 0) number = Number(value)
    else return undefined
    if (Number.isNaN(number)) return undefined
    return number === expected ? 0 : number < expected ? -1 : 1
  }
  if (typeof value !== 'string') return undefined
  const text = `${expected}`
  return value === text ? 0 : value < text ? -1 : 1
}

export function referenceFilterHolds(filter: PropertyFilter, properties: Record<string, unknown>): boolean {
  const value = Object.hasOwn(properties, filter.property) ? properties[filter.property] : undefined
  const expected = filter.value
  const operator = filter.operator ?? 'eq'
  if (operator === 'is_set') return value !== undefined && value !== null
  if (operator === 'eq') return equalish(value, expected)
  if (operator === 'neq') return !equalish(value, expected)
  if (operator === 'in') return (Array.isArray(expected) ? expected : [expected]).some((option) => equalish(value, option))
  if (operator === 'contains') return typeof value === 'string' && value.toLowerCase().indexOf(`${expected}`.toLowerCase()) !== -1
  const order = compare(value, expected)
  if (order === undefined) return false
  if (operator === 'gt') return order > 0
  if (operator === 'gte') return order >= 0
  if (operator === 'lt') return order < 0
  return order <= 0
}

const holds = (condition: { event: string; filters?: PropertyFilter[] }, event: ReferenceEvent) =>
  condition.event === event.name && (condition.filters ?? []).every((filter) => referenceFilterHolds(filter, event.properties))

const before = (a: ReferenceEvent, b: ReferenceEvent) => a.time < b.time || (a.time === b.time && a.id < b.id)

/** Does the event concern the funnel at all (what the status's "newest event" counts)? */
function concerns(definition: FunnelDefinition, event: ReferenceEvent): boolean {
  if (definition.mode === 'strict' && !event.session) return true
  return definition.steps.some((step) => holds(step, event)) || (definition.exclusions ?? []).some((exclusion) => holds(exclusion, event))
}

function walk(definition: FunnelDefinition, events: ReferenceEvent[], startIndex: number, firstStep: number): Walk {
  const steps = definition.steps
  const windowMs = definition.windowMs ?? 14 * 24 * 3_600_000
  const start = events[startIndex]!
  const attempt: Walk = { start, level: 1, done: new Set([firstStep]), times: [start.time], completion: start, end: 'open' }
  for (let index = startIndex + 1; index < events.length && attempt.end === 'open'; index++) {
    const event = events[index]!
    if (event.time > start.time + windowMs) break
    if (definition.mode === 'any_order') {
      const next = steps.findIndex((step, at) => !attempt.done.has(at) && holds(step, event))
      if (next >= 0) {
        attempt.done.add(next)
        attempt.level++
        attempt.times.push(event.time)
        attempt.completion = event
      }
    } else if (holds(steps[attempt.level]!, event)) {
      attempt.level++
      attempt.times.push(event.time)
      attempt.completion = event
    } else if ((definition.exclusions ?? []).some((exclusion) => holds(exclusion, event) && attempt.level >= exclusion.fromStep && attempt.level < exclusion.toStep)) {
      attempt.end = 'discarded'
    } else if (definition.mode === 'strict' && !event.session) {
      attempt.end = 'broken'
    }
    if (attempt.end === 'open' && attempt.level === steps.length) attempt.end = 'complete'
  }
  return attempt
}

/** The user's result in a funnel, as of `watermark`, over every event given (in any order, duplicates included). */
export function referenceFunnel(definition: FunnelDefinition, input: ReferenceEvent[], watermark: number): ReferenceResult {
  const byKey = new Map<string, ReferenceEvent>()
  for (const event of input) byKey.set(`${event.time}|${event.id}`, event)
  const events = [...byKey.values()].sort((a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0))
  const windowMs = definition.windowMs ?? 14 * 24 * 3_600_000
  const attempts: Walk[] = []
  events.forEach((event, index) => {
    const first = definition.mode === 'any_order' ? definition.steps.findIndex((step) => holds(step, event)) : holds(definition.steps[0]!, event) ? 0 : -1
    if (first >= 0) attempts.push(walk(definition, events, index, first))
  })
  const counted = attempts.filter((attempt) => attempt.end !== 'discarded')
  if (counted.length === 0) return { level: 0, status: 'none', stepTimes: [] }
  const ranked = [...counted].sort((a, b) => {
    if (a.level !== b.level) return b.level - a.level
    if (a.completion !== b.completion) return before(a.completion, b.completion) ? -1 : 1
    return before(a.start, b.start) ? 1 : -1
  })
  const best = ranked[0]!
  const breakdownProperty = definition.breakdown?.property
  const rawBreakdown = breakdownProperty === undefined ? undefined : best.start.properties[breakdownProperty]
  const breakdown = rawBreakdown === undefined || rawBreakdown === null ? undefined : typeof rawBreakdown === 'string' ? rawBreakdown : JSON.stringify(rawBreakdown)
  const result: ReferenceResult = { level: best.level, status: 'dropped', stepTimes: best.times, ...(breakdown === undefined || breakdown === '' ? {} : { breakdown }) }
  if (best.level === definition.steps.length) return { ...result, status: 'converted' }
  const newest = Math.max(...events.filter((event) => concerns(definition, event)).map((event) => event.time))
  const asOf = Math.max(watermark, newest)
  const open = counted.some((attempt) => attempt.level === best.level && attempt.end === 'open' && attempt.start.time + windowMs >= asOf)
  return { ...result, status: open ? 'in_progress' : 'dropped' }
}
