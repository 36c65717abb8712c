import type { AggregateResult, Dimension, WindowKind } from '../../schemas/aggregate.ts'
import type { EnrichedContext } from '../../schemas/enriched.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type Origin, type Source } from '../../schemas/envelope.ts'
import { keyGroupOf } from '../../topology/subjects.ts'
import type { Emission, Operator, StepResult } from '../runtime/operator.ts'
import { applyControl, definitionsInForce, type ResolvedDefinition } from './definitions.ts'
import { addUser, countUsers, DEFAULT_EXACT_LIMIT, noUsers, type DistinctOptions, type DistinctUsers } from './distinct.ts'
import { AGGREGATES_STAGE, type AggregateEnvelope } from './envelopes.ts'
import { DEFAULT_PRECISION, userHash } from './hyperloglog.ts'
import { windowsOf } from './windows.ts'

/** Groups kept per window and state key; an event of a new group beyond it counts in the `$other` group. */
export const DEFAULT_MAX_GROUPS_PER_WINDOW = 1000
/** Dimension values are kept (and reported) up to this many characters. */
export const MAX_DIMENSION_LENGTH = 64
/** The values of the group past the bound. */
export const OTHER = '$other'

export interface AggregateOptions {
  /** Key groups of the installation: results are routed by their group key. */
  keyGroups: number
  /** A project's IANA timezone (`Project.timezone`): hour and day windows are local to it. */
  timezoneOf: (project: string) => string
  /** Distinct users counted exactly per partial; beyond, a HyperLogLog sketch. Default 512. */
  exactLimit?: number
  /** HyperLogLog precision (2^precision registers of a byte). Default 12: 4 KiB, 1.63% standard error. */
  precision?: number
  /** Groups per window and state key. Default 1,000 (`DEFAULT_MAX_GROUPS_PER_WINDOW`). */
  maxGroupsPerWindow?: number
}

export interface AggregateInput {
  envelope: EnrichedEventEnvelope
  origin: Origin
}

/** One group of one window: what this key saw of it, and what was last published. */
export interface GroupState {
  /** Value of each of the window's dimensions, in its definition's order. */
  values: string[]
  count: number
  users: DistinctUsers
  /** Version of the last result published (0: none yet). */
  version: number
  /** Changed since its last result. */
  dirty: boolean
}

export interface WindowState {
  definition: string
  definitionVersion: number
  kind: WindowKind
  start: number
  end: number
  /** The definition's settings when the window opened: timers run without the definitions. */
  dimensions: Dimension[]
  allowedLatenessMs: number
  earlyEveryMs: number
  /** The watermark passed `end` and every group's final result went out. */
  final: boolean
  /** Dirty groups are published when the key's event time or the watermark reaches it. */
  publishAt?: number
  /** Ascending by values. */
  groups: GroupState[]
}

/**
 * The state of one key: one event name from one source in one key group of one project. Plain
 * data (msgpack maps, arrays, strings, numbers, booleans, bytes); bounds in docs/aggregates.md.
 */
export interface AggregateState {
  /** Empty until the first input. */
  project: string
  name: string
  source: Source
  keyGroup: number
  /** The highest watermark seen (absent: none yet): a watermark that went back never reopens a window. */
  watermark?: number
  /** The newest event time seen: early results follow it, so the live view need not wait for the watermark. */
  newest?: number
  /** Of the last input: what results carry. */
  origin: Origin
  /** Ascending by (start, definition, definitionVersion). */
  windows: WindowState[]
}

const compareWindows = (a: WindowState, b: { start: number; definition: string; definitionVersion: number }) =>
  a.start - b.start || (a.definition < b.definition ? -1 : a.definition > b.definition ? 1 : a.definitionVersion - b.definitionVersion)

function compareValues(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < a.length; i++) {
    if (a[i]! < b[i]!) return -1
    if (a[i]! > b[i]!) return 1
  }
  return 0
}

/** Index of `values` in the ascending `groups`, or −(insertion point) − 1. */
function searchGroup(groups: readonly GroupState[], values: readonly string[]): number {
  let low = 0
  let high = groups.length - 1
  while (low <= high) {
    const middle = (low + high) >>> 1
    const order = compareValues(groups[middle]!.values, values)
    if (order < 0) low = middle + 1
    else if (order > 0) high = middle - 1
    else return middle
  }
  return -low - 1
}

const clip = (value: string | undefined) => (value ?? '').slice(0, MAX_DIMENSION_LENGTH)

function dimensionValue(context: EnrichedContext | undefined, dimension: Dimension): string {
  switch (dimension) {
    case 'country': return clip(context?.geo?.country)
    case 'deviceType': return clip(context?.device.type)
    case 'browser': return clip(context?.device.browser)
    case 'os': return clip(context?.device.os)
    case 'channel': return clip(context?.acquisition.channel)
    case 'utmSource': return clip(context?.acquisition.source)
    case 'utmMedium': return clip(context?.acquisition.medium)
    case 'utmCampaign': return clip(context?.acquisition.campaign)
  }
}

/** The key under which results of one window and group are routed and identified. */
export function groupKeyOf(window: Pick<WindowState, 'definition' | 'definitionVersion' | 'start'>, name: string, values: readonly string[]): string {
  return `${window.definition}@${window.definitionVersion}|${window.start}|${JSON.stringify([name, ...values])}`
}

/** The next multiple of `every` after `now`: a window publishes early at most once per multiple. */
const nextMultiple = (now: number, every: number) => (Math.floor(now / every) + 1) * every

/**
 * Windowed aggregates: per event name and chosen dimensions, event counts and distinct users in
 * tumbling (minute, local hour, local day) and hopping windows, as partial aggregates per key
 * group that a sink sums. Early results while a window is open, a final result when the watermark
 * passes its end, corrections for late events within the allowed lateness, `late: true` beyond.
 * See docs/aggregates.md.
 */
export function createAggregates(options: AggregateOptions): Operator<AggregateState, AggregateInput> {
  const distinctOptions: DistinctOptions = { exactLimit: options.exactLimit ?? DEFAULT_EXACT_LIMIT, precision: options.precision ?? DEFAULT_PRECISION }
  const maxGroups = Math.max(1, options.maxGroupsPerWindow ?? DEFAULT_MAX_GROUPS_PER_WINDOW)

  /** The result of one group, as it now stands; the group with its new version. */
  function publish(state: AggregateState, window: WindowState, group: GroupState, out: Emission[]): GroupState {
    const version = group.version + 1
    const counted = countUsers(group.users)
    // what is known for sure bounds an estimate: more users than the exact limit, no more than events
    const users = counted.exact ? counted : { value: Math.min(group.count, Math.max(distinctOptions.exactLimit + 1, counted.value)), exact: false }
    const key = groupKeyOf(window, state.name, group.values)
    const dimensions: Record<string, string> = {}
    window.dimensions.forEach((dimension, index) => (dimensions[dimension] = group.values[index]!))
    const data: AggregateResult = {
      definition: window.definition, definitionVersion: window.definitionVersion,
      window: { kind: window.kind, start: window.start, end: window.end },
      name: state.name, dimensions, partition: { keyGroup: state.keyGroup, source: state.source },
      count: group.count, distinctUsers: users.value, exact: users.exact, version, final: window.final,
    }
    const keyGroup = keyGroupOf(key, options.keyGroups)
    const envelope: AggregateEnvelope = {
      v: ENVELOPE_VERSION, type: 'aggregate', project: state.project, id: `aggregate:${key}:${state.source}:${state.keyGroup}:${version}`,
      time: window.start, key, keyGroup, source: state.source, origin: state.origin, data,
    }
    out.push({ stage: AGGREGATES_STAGE, project: state.project, keyGroup, envelope })
    return { ...group, version, dirty: false }
  }

  function publishGroups(state: AggregateState, window: WindowState, out: Emission[], all: boolean): WindowState {
    const groups = window.groups.map((group) => (all || group.dirty ? publish(state, window, group, out) : group))
    const { publishAt: _published, ...rest } = window
    return { ...rest, groups }
  }

  /**
   * Brings the windows up to `watermark` and to the key's newest event time: finals for windows
   * the watermark passed, due early results and corrections, and windows past their allowed
   * lateness leave the state (their last correction published first).
   */
  function advance(state: AggregateState, watermark: number | undefined, out: Emission[]): AggregateState {
    const now = Math.max(watermark ?? Number.NEGATIVE_INFINITY, state.newest ?? Number.NEGATIVE_INFINITY)
    let changed = false
    const windows: WindowState[] = []
    for (let window of state.windows) {
      const passed = watermark !== undefined && watermark >= window.end
      const closing = watermark !== undefined && watermark >= window.end + window.allowedLatenessMs
      if (passed && !window.final) {
        window = publishGroups(state, { ...window, final: true }, out, true)
        changed = true
      } else if ((window.publishAt !== undefined && window.publishAt <= now) || (closing && window.groups.some((group) => group.dirty))) {
        window = publishGroups(state, window, out, false)
        changed = true
      }
      if (closing) changed = true
      else windows.push(window)
    }
    return changed ? { ...state, windows } : state
  }

  function withWakeAt(state: AggregateState, emit: Emission[], late: boolean): StepResult<AggregateState> {
    if (state.windows.length === 0) return late ? { state: undefined, emit, late } : { state: undefined, emit }
    let wakeAt = Number.POSITIVE_INFINITY
    for (const window of state.windows) {
      wakeAt = Math.min(wakeAt, window.final ? window.end + window.allowedLatenessMs : window.end, window.publishAt ?? Number.POSITIVE_INFINITY)
    }
    return { state, emit, wakeAt, ...(late ? { late } : {}) }
  }

  /** The event counted in one window of one definition; undefined when that window is closed (late). */
  function addToWindow(
    windows: WindowState[], definition: ResolvedDefinition, bounds: { start: number; end: number }, watermark: number | undefined,
    values: string[], hash: number,
  ): WindowState[] | undefined {
    const probe = { start: bounds.start, definition: definition.name, definitionVersion: definition.version }
    let low = 0
    let high = windows.length
    while (low < high) {
      const middle = (low + high) >>> 1
      if (compareWindows(windows[middle]!, probe) < 0) low = middle + 1
      else high = middle
    }
    const found = low < windows.length && compareWindows(windows[low]!, probe) === 0 ? windows[low] : undefined
    let window: WindowState
    if (found) {
      window = found
    } else {
      // a window no longer (or never) in state: closed if the watermark is past its lateness
      if (watermark !== undefined && watermark >= bounds.end + definition.allowedLatenessMs) return undefined
      window = {
        definition: definition.name, definitionVersion: definition.version, kind: definition.kind, start: bounds.start, end: bounds.end,
        dimensions: definition.dimensions, allowedLatenessMs: definition.allowedLatenessMs, earlyEveryMs: definition.earlyEveryMs,
        final: watermark !== undefined && watermark >= bounds.end, groups: [],
      }
    }
    let at = searchGroup(window.groups, values)
    if (at < 0 && window.groups.length >= maxGroups) {
      values = values.map(() => OTHER)
      at = searchGroup(window.groups, values)
    }
    const groups = [...window.groups]
    if (at >= 0) {
      const group = groups[at]!
      groups[at] = { ...group, count: group.count + 1, users: addUser(group.users, hash, distinctOptions), dirty: true }
    } else {
      groups.splice(-at - 1, 0, { values, count: 1, users: addUser(noUsers(), hash, distinctOptions), version: 0, dirty: true })
    }
    const next = [...windows]
    if (found) next[low] = { ...window, groups }
    else next.splice(low, 0, { ...window, groups })
    return next
  }

  /** Sets the publication time of windows that have dirty groups and none set, and publishes what is due. */
  function schedule(state: AggregateState, out: Emission[]): AggregateState {
    const now = Math.max(state.watermark ?? Number.NEGATIVE_INFINITY, state.newest ?? Number.NEGATIVE_INFINITY)
    let changed = false
    const windows = state.windows.map((window) => {
      if (window.publishAt !== undefined || !window.groups.some((group) => group.dirty)) return window
      if (window.earlyEveryMs === 0) {
        if (!window.final) return window // no early results: the final one says it all
        changed = true
        return publishGroups(state, window, out, false)
      }
      changed = true
      return { ...window, publishAt: nextMultiple(now, window.earlyEveryMs) }
    })
    return changed ? { ...state, windows } : state
  }

  const empty = (): AggregateState => ({ project: '', name: '', source: 'live', keyGroup: 0, origin: { stream: '', seq: 0 }, windows: [] })

  return {
    stepId: 'aggregates',
    // keys are (source, event name), not users: identity merges move nothing here
    keyedByUser: false,
    init: empty,
    toInput(envelope, origin) {
      if (envelope.type === 'enriched_event') return { envelope, origin }
      throw new Error(`aggregates reads enriched_event messages, got ${envelope.type}`)
    },
    // partial aggregates per event name and source; see docs/aggregates.md on why not per user
    keyOf: (input) => `${input.envelope.source}\u0000${input.envelope.data.name}`,
    onControl: applyControl,
    onEvent(state, input, context) {
      const { envelope, origin } = input
      const bot = envelope.data.context?.bot === true
      const definitions = definitionsInForce(context.control).filter((definition) =>
        (definition.countBots || !bot) && (definition.events === undefined || definition.events.has(envelope.data.name)))
      if (definitions.length === 0 && state.project === '') return { state: undefined, emit: [] }
      const out: Emission[] = []
      const watermark = Math.max(state.watermark ?? Number.NEGATIVE_INFINITY, context.watermark)
      let next: AggregateState = {
        ...state,
        project: envelope.project, name: envelope.data.name, source: envelope.source, keyGroup: envelope.keyGroup,
        ...(Number.isFinite(watermark) ? { watermark } : {}),
      }
      // what timers would have done by now: this step sees the same windows whichever came first
      next = advance(next, next.watermark, out)
      if (definitions.length === 0) return withWakeAt(next, out, false)
      const timezone = options.timezoneOf(envelope.project)
      const hash = userHash(envelope.data.canonicalId)
      let windows = next.windows
      let late = false
      for (const definition of definitions) {
        const values = definition.dimensions.map((dimension) => dimensionValue(envelope.data.context, dimension))
        for (const bounds of windowsOf(envelope.time, definition.window, timezone)) {
          const added = addToWindow(windows, definition, bounds, next.watermark, values, hash)
          if (added) windows = added
          else late = true
        }
      }
      next = { ...next, windows, origin, newest: Math.max(next.newest ?? Number.NEGATIVE_INFINITY, envelope.time) }
      next = advance(schedule(next, out), next.watermark, out)
      return withWakeAt(next, out, late)
    },
    onTimer(state, now) {
      const out: Emission[] = []
      const watermark = Math.max(state.watermark ?? Number.NEGATIVE_INFINITY, now)
      const next = advance(Number.isFinite(watermark) ? { ...state, watermark } : state, Number.isFinite(watermark) ? watermark : undefined, out)
      return withWakeAt(next, out, false)
    },
  }
}
