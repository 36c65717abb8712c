/**
 * The funnel benchmarks' shared workload (bench/funnels.ts, bench/funnels-state.ts,
 * bench/funnels-runtime.ts): 10 funnels (sequential, strict and any order; filters, exclusions, a
 * breakdown), seeded traffic, and the funnel logic driven as the kernel drives it.
 */
import { applyFunnelControl, createFunnel, type FunnelDefinitions, type FunnelInput, type FunnelState } from '../operators/funnel/logic.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope } from '../schemas/envelope.ts'
import type { FunnelDefinition } from '../schemas/funnel.ts'
import { seededRandom } from '../operators/runtime/generator.ts'
import { TimerHeap } from '../operators/runtime/heap.ts'
import { keyGroupOf } from '../topology/subjects.ts'

export const KEY_GROUPS = 64
export const MINUTE = 60_000
export const HOUR = 60 * MINUTE
export const DAY = 24 * HOUR
export const T0 = Date.parse('2019-05-01T00:00:00Z')

export const FUNNELS: FunnelDefinition[] = [
  { id: 'signup', name: 'Sign-up', steps: [{ event: '$page', filters: [{ property: 'path', value: '/' }] }, { event: 'signup_started' }, { event: 'signup_completed' }] },
  { id: 'activation', name: 'Activation', steps: [{ event: 'signup_completed' }, { event: 'project_created' }, { event: 'invite_sent' }, { event: 'report_viewed' }], windowMs: 7 * DAY },
  { id: 'purchase', name: 'Purchase', steps: [{ event: 'product_viewed' }, { event: 'add_to_cart' }, { event: 'checkout_started' }, { event: 'purchase', filters: [{ property: 'amount', operator: 'gt', value: 0 }] }], exclusions: [{ event: 'cart_cleared', fromStep: 2, toStep: 3 }], breakdown: { property: 'category' } },
  { id: 'purchase-strict', name: 'Checkout without detours', mode: 'strict', steps: [{ event: 'add_to_cart' }, { event: 'checkout_started' }, { event: 'purchase' }], windowMs: HOUR },
  { id: 'click-custom', name: 'Click then custom', steps: [{ event: 'click_event1' }, { event: 'custom_event2' }] },
  { id: 'engaged', name: 'Engaged any order', mode: 'any_order', steps: [{ event: 'report_viewed' }, { event: 'search', filters: [{ property: 'query', operator: 'is_set' }] }, { event: 'export' }] },
  { id: 'pricing', name: 'Pricing to plan', steps: [{ event: '$page', filters: [{ property: 'path', operator: 'in', value: ['/pricing', '/plans'] }] }, { event: 'plan_selected', filters: [{ property: 'plan', operator: 'neq', value: 'free' }] }, { event: 'purchase' }], windowMs: 30 * DAY },
  { id: 'docs', name: 'Docs to API key', steps: [{ event: '$page', filters: [{ property: 'path', operator: 'contains', value: 'docs' }] }, { event: 'api_key_created' }], windowMs: DAY },
  { id: 'retention', name: 'Search, then search again', steps: [{ event: 'search' }, { event: 'search' }, { event: 'search' }], windowMs: 3 * DAY },
  { id: 'support', name: 'Help any order', mode: 'any_order', steps: [{ event: 'help_opened' }, { event: 'ticket_created' }], windowMs: 2 * DAY },
]

export const NAMES: Array<[string, number]> = [
  ['$page', 40], ['click_event1', 8], ['custom_event2', 3], ['product_viewed', 8], ['add_to_cart', 4], ['checkout_started', 2], ['purchase', 1.5],
  ['cart_cleared', 0.5], ['signup_started', 2], ['signup_completed', 1.5], ['project_created', 1], ['invite_sent', 0.7], ['report_viewed', 3],
  ['search', 5], ['export', 1], ['plan_selected', 0.8], ['api_key_created', 0.5], ['help_opened', 0.8], ['ticket_created', 0.3], ['scroll', 6], ['video_played', 2],
]
export const PATHS = ['/', '/pricing', '/plans', '/docs/start', '/docs/api', '/blog', '/about', '/product/1', '/product/2']
const TOTAL_WEIGHT = NAMES.reduce((sum, [, weight]) => sum + weight, 0)

/** An event name drawn by weight. */
export function pickName(next: () => number): string {
  let roll = next() * TOTAL_WEIGHT
  for (const [name, weight] of NAMES) if ((roll -= weight) <= 0) return name
  return NAMES[0]![0]
}

/** The properties an event of `name` carries (what the funnels' filters read). */
export function propertiesOf(name: string, next: () => number): Record<string, unknown> {
  const properties: Record<string, unknown> = {}
  if (name === '$page') properties.path = PATHS[Math.floor(next() * PATHS.length)]
  if (name === 'purchase') properties.amount = Math.floor(next() * 200)
  if (name === 'product_viewed' || name === 'add_to_cart') properties.category = next() < 0.5 ? 'books' : 'games'
  if (name === 'search' && next() < 0.8) properties.query = 'q'
  if (name === 'plan_selected') properties.plan = next() < 0.4 ? 'free' : 'pro'
  return properties
}

/** Seeded traffic of `users` users: `events` events, in arrival order, with some late and duplicated (ids repeat). */
export function makeEvents(seed: number, USERS: number, EVENTS: number, project = 'bench', keyGroups = KEY_GROUPS): EnrichedEventEnvelope[] {
  const next = seededRandom(seed)
  const users = Array.from({ length: USERS }, (_, index) => `user-${index.toString(36)}-${Math.floor(next() * 1e9).toString(36)}`)
  const clock = Array.from({ length: USERS }, () => T0 + Math.floor(next() * 20 * DAY))
  const events: EnrichedEventEnvelope[] = []
  for (let index = 0; index < EVENTS; index++) {
    // some users are much busier than others
    const userIndex = Math.floor(USERS * next() ** 2)
    const user = users[userIndex]!
    clock[userIndex]! += next() < 0.9 ? Math.floor(next() * 5 * MINUTE) : Math.floor(next() * 2 * DAY)
    const name = pickName(next)
    const properties = propertiesOf(name, next)
    const id = `${user}-${index}`
    const time = clock[userIndex]!
    events.push({
      v: ENVELOPE_VERSION, type: 'enriched_event', project, id, time, key: user, keyGroup: keyGroupOf(user, keyGroups), source: 'live',
      origin: { stream: 'SEG_RAW', seq: index + 1 },
      data: {
        name, canonicalId: user,
        message: { type: name === '$page' ? 'page' : 'track', ...(name === '$page' ? {} : { event: name }), messageId: id, userId: user, timestamp: '', receivedAt: '', properties },
        context: { device: { type: 'desktop' }, acquisition: { channel: 'direct' }, bot: false },
      },
    })
  }
  // arrival: in time order, but 3% of events arrive up to an hour late (and 1% twice, below)
  const arrival = events.map((event) => event.time + (next() < 0.03 ? Math.floor(next() * HOUR) : 0))
  const order = events.map((_, index) => index).sort((a, b) => arrival[a]! - arrival[b]!)
  const arriving = order.map((index) => events[index]!)
  const withDuplicates: EnrichedEventEnvelope[] = []
  for (const event of arriving) {
    withDuplicates.push(event)
    if (next() < 0.01) withDuplicates.push(event)
  }
  return withDuplicates
}

export function definitions(): FunnelDefinitions {
  let current: unknown
  for (const definition of FUNNELS) current = applyFunnelControl(current, { stepId: 'funnel', name: definition.id, version: 1, definition })
  return current as FunnelDefinitions
}

export const LATENESS = 5 * MINUTE

/**
 * The funnel logic as the kernel drives it: a state per key in a Map, the watermark (largest event
 * time minus the lateness) passed in, and each key's latest timer fired from the kernel's own heap
 * once the watermark passes it. Fed batch by batch, as the runtime is.
 */
export function funnelRunner(control: FunnelDefinitions) {
  const operator = createFunnel({ keyGroups: KEY_GROUPS })
  // a key's state and timer in one entry, as the kernel keeps them
  const entries = new Map<string, { state: FunnelState; wakeAt: number | undefined }>()
  const timers = new TimerHeap()
  let largest = Number.NEGATIVE_INFINITY
  const counts = { emitted: 0, late: 0, timersFired: 0 }
  const origin = { stream: 'SEG_ENRICHED', seq: 0 }
  const store = (key: string, entry: { state: FunnelState; wakeAt: number | undefined } | undefined, state: FunnelState | undefined, wakeAt: number | undefined) => {
    if (state === undefined) {
      entries.delete(key)
      return
    }
    if (entry === undefined) entries.set(key, (entry = { state, wakeAt: undefined }))
    else entry.state = state
    if (wakeAt !== undefined && entry.wakeAt !== wakeAt) timers.schedule(wakeAt, key) // one heap entry per key, as the kernel keeps
    entry.wakeAt = wakeAt
  }
  return {
    counts,
    /** Keys with a state. */
    get users(): number {
      return entries.size
    },
    /** The states, copied into a map of their own. */
    get states(): Map<string, FunnelState> {
      return new Map([...entries].map(([key, entry]) => [key, entry.state]))
    },
    apply(batch: EnrichedEventEnvelope[]) {
      for (const envelope of batch) {
        const input: FunnelInput = { envelope, origin }
        const key = operator.keyOf(input)
        const entry = entries.get(key)
        const result = operator.onEvent(entry?.state ?? operator.init(), input, { eventTime: envelope.time, watermark: largest - LATENESS, source: 'live', control })
        counts.emitted += result.emit.length
        if (result.late) counts.late++
        store(key, entry, result.state, result.wakeAt)
        if (envelope.time <= largest) continue
        largest = envelope.time
        const now = largest - LATENESS
        while (timers.size > 0 && timers.peekAt()! <= now) {
          const { at, key: timerKey } = timers.pop()!
          const due = entries.get(timerKey)
          if (due === undefined || due.wakeAt === undefined) continue
          if (due.wakeAt > at) {
            timers.schedule(due.wakeAt, timerKey) // moved later while this entry stood for it, as in the kernel
            continue
          }
          if (due.wakeAt !== at) continue // superseded, as in the kernel
          due.wakeAt = undefined
          const result = operator.onTimer!(due.state, now)
          counts.emitted += result.emit.length
          counts.timersFired++
          store(timerKey, due, result.state, result.wakeAt)
        }
      }
    },
  }
}

