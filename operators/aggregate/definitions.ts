import { AggregateDefinition, DEFINITION_NAME, type AggregateWindow, type Dimension, type WindowKind } from '../../schemas/aggregate.ts'
import { validator } from '../../schemas/codec.ts'
import type { Control } from '../../schemas/envelope.ts'
import { windowKindOf, windowProblem } from './windows.ts'

const MINUTE = 60_000

/** A late event corrects a final result up to this long after the window's end, by default. */
export const DEFAULT_ALLOWED_LATENESS_MS = 60 * MINUTE
/** Early results and corrections go out at most once per this much event time per window, by default. */
export const DEFAULT_EARLY_EVERY_MS = MINUTE

/**
 * What every project aggregates until a control message says otherwise: events per name per local
 * day and per local hour, by country and device type. Their version is 0, so any control message
 * for the same name (versions start at 1) replaces them, and `definition: null` removes one.
 */
export const DEFAULT_DEFINITIONS: Readonly<Record<string, AggregateDefinition>> = {
  'events-per-day': { window: { kind: 'tumbling', unit: 'day' }, dimensions: ['country', 'deviceType'] },
  'events-per-hour': { window: { kind: 'tumbling', unit: 'hour' }, dimensions: ['country', 'deviceType'] },
}

/** A project's definitions as the kernel keeps them (checkpointed with msgpack): per name, the last version applied. */
export type Definitions = Record<string, { version: number; definition: AggregateDefinition | null }>

/** A definition in force, with its defaults filled in. */
export interface ResolvedDefinition {
  name: string
  version: number
  window: AggregateWindow
  kind: WindowKind
  dimensions: Dimension[]
  /** Absent: every event name. */
  events?: ReadonlySet<string>
  allowedLatenessMs: number
  earlyEveryMs: number
  countBots: boolean
}

const definitionSchema = validator(AggregateDefinition, 'aggregate definition')

/** Throws, naming the problem, for a definition the operator cannot run (the kernel dead-letters the control message). */
export function assertDefinition(name: string, definition: unknown): AggregateDefinition {
  if (!DEFINITION_NAME.test(name)) throw new RangeError(`aggregate definition name ${JSON.stringify(name)}: expected 1-63 characters of a-z, 0-9, "_" or "-"`)
  const checked = definitionSchema.assert(definition)
  const problem = windowProblem(checked.window)
  if (problem) throw new RangeError(`aggregate definition ${name}: ${problem}`)
  if (new Set(checked.dimensions).size !== checked.dimensions.length) throw new RangeError(`aggregate definition ${name}: a dimension is named twice`)
  return checked
}

/**
 * The kernel's reducer for control messages addressed to the aggregates step: a newer version of
 * a name replaces it (null removes it); an older or equal version changes nothing, so a control
 * message published twice applies once. Pure; throws for an invalid definition.
 */
export function applyControl(definitions: unknown, control: Control): Definitions {
  const current = (definitions ?? {}) as Definitions
  const existing = Object.hasOwn(current, control.name) ? current[control.name]! : undefined
  if (existing && existing.version >= control.version) return current
  const definition = control.definition === null ? null : assertDefinition(control.name, control.definition)
  return { ...current, [control.name]: { version: control.version, definition } }
}

function resolve(name: string, version: number, definition: AggregateDefinition): ResolvedDefinition {
  return {
    name, version, window: definition.window, kind: windowKindOf(definition.window), dimensions: definition.dimensions,
    ...(definition.events ? { events: new Set(definition.events) } : {}),
    allowedLatenessMs: definition.allowedLatenessMs ?? DEFAULT_ALLOWED_LATENESS_MS,
    earlyEveryMs: definition.earlyEveryMs ?? DEFAULT_EARLY_EVERY_MS,
    countBots: definition.countBots ?? false,
  }
}

const resolvedDefaults = Object.entries(DEFAULT_DEFINITIONS).map(([name, definition]) => resolve(name, 0, definition)).sort((a, b) => (a.name < b.name ? -1 : 1))
// the kernel hands the same object to every event until the next control message
const cache = new WeakMap<object, ResolvedDefinition[]>()

/** The definitions in force, by name: the defaults overlaid with what control messages set. */
export function definitionsInForce(definitions: unknown): ResolvedDefinition[] {
  if (definitions === undefined || definitions === null || typeof definitions !== 'object') return resolvedDefaults
  const cached = cache.get(definitions)
  if (cached) return cached
  const entries = definitions as Definitions
  const names = new Set([...Object.keys(DEFAULT_DEFINITIONS), ...Object.keys(entries)])
  const resolved: ResolvedDefinition[] = []
  for (const name of [...names].sort()) {
    const entry = Object.hasOwn(entries, name) ? entries[name]! : undefined
    if (entry) {
      if (entry.definition) resolved.push(resolve(name, entry.version, entry.definition))
    } else if (Object.hasOwn(DEFAULT_DEFINITIONS, name)) {
      resolved.push(resolve(name, 0, DEFAULT_DEFINITIONS[name]!))
    }
  }
  cache.set(definitions, resolved)
  return resolved
}
