/**
 * Live counts, the logic alone (no broker): what saved segments cost the profile step per event,
 * what creating one costs a key group full of users, and how fast the live-counts step applies
 * membership changes and funnel-counts funnel progress messages (beside it, in alternating rounds).
 * Prints figures, the last line JSON; asserts nothing.
 *
 *   node bench/live.ts [--users 20000] [--events 200000]
 */
import { parseArgs } from 'node:util'
import { createCounts, type CountsState } from '../operators/counts/logic.ts'
import { createFunnelCounts, type FunnelCountsState } from '../operators/counts/funnels.ts'
import { createProfile, type ProfileState } from '../operators/profile/logic.ts'
import { applySegmentControl, type ProfileDefinitions } from '../operators/profile/segments.ts'
import { emptyKeyGroup, newCounters, processMessage, type InputMessage } from '../operators/runtime/kernel.ts'
import { encode } from '../schemas/codec.ts'
import { ENVELOPE_VERSION, type ControlEnvelope, type EnrichedEventEnvelope, type FunnelProgressEnvelope, type SegmentMembershipEnvelope } from '../schemas/envelope.ts'
import type { FunnelPreviousProgress } from '../schemas/funnel.ts'

const { values } = parseArgs({ options: { users: { type: 'string', default: '20000' }, events: { type: 'string', default: '200000' } } })
const USERS = Number(values.users)
const EVENTS = Number(values.events)
const T0 = Date.parse('2026-11-01T00:00:00Z')
const COUNTRIES = ['DE', 'FR', 'US', 'GB', 'AT']
const PLANS = ['free', 'pro', 'team']

let seq = 0
function event(user: number, time: number): EnrichedEventEnvelope {
  const id = `u${user}`
  const messageId = `m${++seq}`
  return {
    v: ENVELOPE_VERSION, type: 'enriched_event', project: 'p', id: messageId, time, key: id, keyGroup: 0, source: 'live', origin: { stream: 'SEG_RAW', seq },
    data: {
      name: 'Clicked', canonicalId: id,
      message: { type: 'identify', messageId, userId: id, traits: { plan: PLANS[user % 3], age: 18 + (user % 60) }, timestamp: new Date(time).toISOString(), receivedAt: new Date(time).toISOString() },
      context: { device: { type: user % 2 ? 'mobile' : 'desktop' }, acquisition: { channel: 'direct' }, geo: { country: COUNTRIES[user % 5]! }, bot: false },
    },
  }
}

/** `n` saved segments of two or three dimension conditions each, as the API would store them. */
function definitionsOf(n: number): ProfileDefinitions {
  let definitions: unknown
  for (let i = 0; i < n; i++) {
    const filter = {
      all: [
        { dimension: 'country', in: [COUNTRIES[i % 5], COUNTRIES[(i + 1) % 5]] },
        { dimension: 'trait.plan', equals: PLANS[i % 3] },
        ...(i % 2 ? [{ dimension: 'engagement', range: { from: 'Medium' } }] : []),
      ],
    }
    definitions = applySegmentControl(definitions, { stepId: 'profile', name: `segment:s${i}`, version: 1, definition: { id: `s${i}`, name: `s${i}`, filter } })
  }
  return definitions as ProfileDefinitions
}

function profileEventsPerSecond(segments: number): { usPerEvent: number; changes: number } {
  const profile = createProfile({ keyGroups: 1, timezoneOf: () => 'UTC' })
  const control = definitionsOf(segments)
  const states = new Map<number, ProfileState>()
  let changes = 0
  const started = performance.now()
  for (let i = 0; i < EVENTS; i++) {
    const user = i % USERS
    const time = T0 + i * 1_000
    const result = profile.onEvent(states.get(user) ?? profile.init(), { envelope: event(user, time), origin: { stream: 'SEG_ENRICHED', seq: i } }, { eventTime: time, watermark: time - 300_000, source: 'live', control })
    states.set(user, result.state!)
    for (const emission of result.emit) if (emission.envelope.type === 'segment_membership' && emission.envelope.data.dimension === 'segment') changes++
  }
  return { usPerEvent: ((performance.now() - started) * 1000) / EVENTS, changes }
}

function segmentCreationMs(segmentsBefore: number): { ms: number; entered: number } {
  const profile = createProfile({ keyGroups: 1, timezoneOf: () => 'UTC' })
  const group = emptyKeyGroup<ProfileState>(0, 1)
  const options = { stepId: 'profile', latenessOf: () => 300_000, idleTtlMs: Number.POSITIVE_INFINITY, clock: () => 0, keyGroups: 1 }
  const counters = newCounters()
  const input = (envelope: ControlEnvelope | EnrichedEventEnvelope): InputMessage => ({ stream: 'SEG_ENRICHED', seq: ++seq, subject: 'seg.p.enriched.0', data: encode(envelope) })
  const control = (i: number, filter: unknown): ControlEnvelope => ({
    v: ENVELOPE_VERSION, type: 'control', project: 'p', id: `c${i}`, time: 0, key: `segment:s${i}`, keyGroup: 0, source: 'live',
    data: { stepId: 'profile', name: `segment:s${i}`, version: 1, definition: { id: `s${i}`, name: `s${i}`, filter } },
  })
  for (let i = 0; i < segmentsBefore; i++) processMessage(profile, group, input(control(i, { all: [{ dimension: 'trait.plan', equals: PLANS[i % 3] }] })), options, counters)
  for (let user = 0; user < USERS; user++) processMessage(profile, group, input(event(user, T0 + user)), options, counters)
  const message = input(control(9_999, { all: [{ dimension: 'country', equals: 'DE' }, { dimension: 'trait.plan', equals: 'pro' }] }))
  const started = performance.now()
  const out = processMessage(profile, group, message, options, counters)
  return { ms: performance.now() - started, entered: out.length }
}

function countsChangesPerSecond(): number {
  const counts = createCounts()
  const group = emptyKeyGroup<CountsState>(0, 1)
  const options = { stepId: 'live-counts', latenessOf: () => 300_000, idleTtlMs: Number.POSITIVE_INFINITY, clock: () => 0, keyGroups: 1 }
  const levels = ['Low', 'Medium', 'Medium-High', 'High'] as const
  const messages: InputMessage[] = []
  for (let i = 0; i < EVENTS; i++) {
    const user = i % USERS
    const version = Math.floor(i / USERS) + 1
    const envelope: SegmentMembershipEnvelope = {
      v: ENVELOPE_VERSION, type: 'segment_membership', project: 'p', id: `u${user}:engagement:${version}`, time: T0 + i * 10, key: `u${user}`, keyGroup: 0, source: 'live',
      origin: { stream: 'SEG_ENRICHED', seq: i }, data: { dimension: 'engagement', canonicalId: `u${user}`, ...(version > 1 ? { from: levels[(version - 2) % 4] } : {}), to: levels[(version - 1) % 4], version },
    }
    messages.push({ stream: 'SEG_PROFILES', seq: i + 1, subject: 'seg.p.profiles.0', data: encode(envelope) })
  }
  const counters = newCounters()
  const started = performance.now()
  let published = 0
  for (const message of messages) published += processMessage(counts, group, message, options, counters).length
  const seconds = (performance.now() - started) / 1000
  console.log(`live-counts: ${EVENTS} changes 10 ms of event time apart -> ${published} publications (one per 250 ms of event time)`)
  return EVENTS / seconds
}

/**
 * funnel-counts through the kernel: each user of a 3-step funnel goes in progress at level 1, 2,
 * then converts or drops, one progress message per change with its `previous`.
 */
function funnelProgressPerSecond(): { perSecond: number; published: number; meanBytes: number; meanBytesWithoutPrevious: number } {
  const counter = createFunnelCounts()
  const group = emptyKeyGroup<FunnelCountsState>(0, 1)
  const options = { stepId: 'funnel-counts', latenessOf: () => 300_000, idleTtlMs: Number.POSITIVE_INFINITY, clock: () => 0, keyGroups: 1 }
  const messages: InputMessage[] = []
  let bytes = 0
  let bytesWithoutPrevious = 0
  for (let i = 0; i < EVENTS; i++) {
    const user = i % USERS
    const version = Math.floor(i / USERS) + 1
    const time = T0 + i * 10
    const start = T0 + user * 10
    const said = (n: number): FunnelPreviousProgress => {
      const level = Math.min(3, n)
      const status = n >= 4 ? (user % 2 === 0 ? 'dropped' : 'converted') : level === 3 ? 'converted' : 'in_progress'
      return { level: status === 'dropped' ? 2 : level, status, stepTimes: Array.from({ length: status === 'dropped' ? 2 : level }, (_, k) => start + k * 60_000) }
    }
    const envelope: FunnelProgressEnvelope = {
      v: ENVELOPE_VERSION, type: 'funnel_progress', project: 'p', id: `checkout:1:u${user}:${version}`, time, key: `u${user}`, keyGroup: 0, source: 'live',
      origin: { stream: 'SEG_ENRICHED', seq: i },
      data: { funnelId: 'checkout', funnelVersion: 1, canonicalId: `u${user}`, version, steps: 3, asOf: time, ...said(version), ...(version > 1 ? { previous: said(version - 1) } : {}) },
    }
    const data = encode(envelope)
    bytes += data.length
    const { previous: _previous, ...withoutPrevious } = envelope.data
    bytesWithoutPrevious += encode({ ...envelope, data: withoutPrevious }).length
    messages.push({ stream: 'SEG_FUNNELS', seq: i + 1, subject: 'seg.p.funnels.0', data })
  }
  const counters = newCounters()
  const started = performance.now()
  let published = 0
  for (const message of messages) published += processMessage(counter, group, message, options, counters).length
  return { perSecond: EVENTS / ((performance.now() - started) / 1000), published, meanBytes: bytes / EVENTS, meanBytesWithoutPrevious: bytesWithoutPrevious / EVENTS }
}

console.log(`users ${USERS}, events ${EVENTS}`)
// the machine is shared: rounds alternate the configurations, and the median of each is printed
const ROUNDS = 3
const timings = new Map<number, number[]>()
const changed = new Map<number, number>()
for (let round = 0; round < ROUNDS; round++) {
  for (const segments of [0, 10, 50, 200]) {
    const { usPerEvent, changes } = profileEventsPerSecond(segments)
    timings.set(segments, [...(timings.get(segments) ?? []), usPerEvent])
    changed.set(segments, changes)
  }
}
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!
for (const [segments, values] of timings) {
  console.log(`profile step, ${String(segments).padStart(3)} saved segments: ${median(values).toFixed(1)} µs per event (onEvent alone, median of ${ROUNDS}: ${values.map((v) => v.toFixed(1)).join(' / ')}), ${changed.get(segments)} saved-segment changes`)
}
for (const before of [0, 199]) {
  const { ms, entered } = segmentCreationMs(before)
  console.log(`a segment created (${before} already defined) in a key group of ${USERS} users: ${ms.toFixed(0)} ms at the control message, ${entered} users entered`)
}
// the two counters in alternating rounds: the figures of one round share the machine's load
const countsRates: number[] = []
const funnelRates: number[] = []
let funnelRun = { perSecond: 0, published: 0, meanBytes: 0, meanBytesWithoutPrevious: 0 }
for (let round = 0; round < ROUNDS; round++) {
  countsRates.push(countsChangesPerSecond())
  funnelRun = funnelProgressPerSecond()
  funnelRates.push(funnelRun.perSecond)
}
const rates = (values: number[]) => values.map((value) => Math.round(value).toLocaleString('en')).join(' / ')
console.log(`live-counts through the kernel (decode included): ${Math.round(median(countsRates)).toLocaleString('en')} membership changes/s (median of ${ROUNDS}: ${rates(countsRates)})`)
console.log(`funnel-counts through the kernel (decode included): ${Math.round(median(funnelRates)).toLocaleString('en')} progress messages/s (median of ${ROUNDS}: ${rates(funnelRates)}), ${funnelRun.published} publications, ${funnelRun.meanBytes.toFixed(0)} B per progress message with previous (${funnelRun.meanBytesWithoutPrevious.toFixed(0)} B without)`)
console.log(JSON.stringify({
  users: USERS, events: EVENTS, live_counts_changes_per_s: Math.round(median(countsRates)), funnel_counts_progress_per_s: Math.round(median(funnelRates)),
  funnel_counts_publications: funnelRun.published, funnel_progress_mean_bytes: Math.round(funnelRun.meanBytes), funnel_progress_mean_bytes_without_previous: Math.round(funnelRun.meanBytesWithoutPrevious),
}))
