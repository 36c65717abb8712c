import fc from 'fast-check'
import type { FunnelDefinition, FunnelStep, PropertyFilter } from '../../schemas/funnel.ts'

const MINUTE = 60_000
/** The step names of generated funnels: few, so steps repeat and events match several. */
export const FUNNEL_NAMES = ['a', 'b', 'c', 'x'] as const

export interface FunnelArbitraryOptions {
  /** The definitions' display name. */
  name: string
  /** A step's optional filter. */
  filter: fc.Arbitrary<PropertyFilter>
  /** How often a step has no filter, against once with one (fast-check's `freq`). */
  unfilteredFreq: number
  /** The breakdown property, or undefined for none. */
  breakdown: fc.Arbitrary<string | undefined>
}

/**
 * Funnel definitions for the backfill property tests: 2-4 steps, the three modes, windows of 1-5
 * minutes, sometimes an exclusion of the next step, half of them with a `$session_start` second step
 * (so the sessions stage is part of the history).
 */
export function funnelDefinitionArbitrary(options: FunnelArbitraryOptions): fc.Arbitrary<FunnelDefinition> {
  const step: fc.Arbitrary<FunnelStep> = fc.record({ event: fc.constantFrom(...FUNNEL_NAMES), filter: fc.option(options.filter, { nil: undefined, freq: options.unfilteredFreq }) })
    .map(({ event, filter }) => (filter ? { event, filters: [filter] } : { event }))
  return fc.record({
    steps: fc.array(step, { minLength: 2, maxLength: 4 }),
    mode: fc.constantFrom('sequential', 'strict', 'any_order') as fc.Arbitrary<FunnelDefinition['mode']>,
    windowMs: fc.constantFrom(MINUTE, 2 * MINUTE, 5 * MINUTE),
    exclusion: fc.option(fc.record({ event: fc.constantFrom('x', 'b'), from: fc.integer({ min: 1, max: 3 }) }), { nil: undefined, freq: 3 }),
    session: fc.boolean(),
    breakdown: options.breakdown,
  }).map(({ steps, mode, windowMs, exclusion, session, breakdown }) => {
    const definition: FunnelDefinition = { id: 'f', name: options.name, steps: session ? steps.map((value, index) => (index === 1 ? { event: '$session_start' } : value)) : steps, mode, windowMs }
    if (exclusion && mode !== 'any_order' && exclusion.from < steps.length) definition.exclusions = [{ event: exclusion.event, fromStep: exclusion.from, toStep: Math.min(steps.length, exclusion.from + 1) }]
    if (breakdown !== undefined) definition.breakdown = { property: breakdown }
    return definition
  })
}
