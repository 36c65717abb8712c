import t from 'tap'
import { jetstreamManager } from '@nats-io/jetstream'
import { connectNats } from '../broker/connect.ts'
import { createLogger } from '../config/logger.ts'
import { applyTopology, IncompatibleChangeError } from '../topology/apply.ts'
import { segstreamTopology } from '../topology/definition.ts'
import type { Topology } from '../topology/model.ts'
import { startNats } from './harness/nats.ts'

const logger = createLogger('silent')
const small = { streamMaxBytes: 64 * 1024 * 1024 }

t.test('apply creates everything, then changes nothing', async (t) => {
  const nats = await startNats()
  const nc = await connectNats(nats.url, 'test', logger)
  t.teardown(async () => { await nc.close(); await nats.close() })
  const first = await applyTopology(nc, segstreamTopology(small), { keyGroups: 16 })
  t.ok(first.every((c) => c.action === 'created'), 'first apply creates every resource')
  t.same(first.filter((c) => c.kind === 'stream').map((c) => c.name), ['SEG_RAW', 'SEG_IMPORT', 'SEG_ENRICHED', 'SEG_SESSIONS', 'SEG_PROFILES', 'SEG_FUNNELS', 'SEG_BACKFILL', 'SEG_AGGREGATES', 'SEG_COUNTS', 'SEG_LATE', 'SEG_DLQ'])
  const second = await applyTopology(nc, segstreamTopology(small), { keyGroups: 16 })
  t.same(second.filter((c) => c.action !== 'unchanged'), [], 'second apply changes nothing')
  t.equal(second.length, first.length)

  const jsm = await jetstreamManager(nc)
  const raw = await jsm.streams.info('SEG_RAW')
  t.equal(raw.config.discard, 'new', 'a full stream refuses writes instead of dropping old data')
  t.equal(raw.config.duplicate_window, 2 * 60 * 1e9)
  t.same(raw.config.subjects, ['seg.*.raw.*'])
  const counts = await jsm.streams.info('SEG_COUNTS')
  t.equal(counts.config.max_msgs_per_subject, 1, 'live counts: the latest message per subject is all that is kept')
  t.equal(counts.config.max_age, 0, 'however old')
  t.same(counts.config.subjects, ['seg.*.counts.*', 'seg.*.funnel_counts.*'], 'segment counts and funnel step counts, each key group on its own subject')

  // a safe change (longer retention) is applied as an update
  const longer = await applyTopology(nc, segstreamTopology({ ...small, streamMaxAgeMs: 14 * 86_400_000 }), { keyGroups: 16 })
  const updated = longer.filter((c) => c.action === 'updated').map((c) => c.name)
  t.same(updated, ['SEG_RAW', 'SEG_IMPORT', 'SEG_ENRICHED', 'SEG_SESSIONS', 'SEG_PROFILES', 'SEG_FUNNELS', 'SEG_BACKFILL', 'SEG_AGGREGATES', 'SEG_LATE'], 'longer max age is an update')
  t.match(longer.find((c) => c.name === 'SEG_RAW')!.changes.join(), /max_age/)
})

t.test('incompatible changes are refused, naming the resource and the field', async (t) => {
  const nats = await startNats()
  const nc = await connectNats(nats.url, 'test', logger)
  t.teardown(async () => { await nc.close(); await nats.close() })
  await applyTopology(nc, segstreamTopology(small), { keyGroups: 16 })

  const memory: Topology = { ...segstreamTopology(small), streams: segstreamTopology(small).streams.map((s) => (s.name === 'SEG_RAW' ? { ...s, storage: 'memory' as const } : s)) }
  await t.rejects(applyTopology(nc, memory, { keyGroups: 16 }), { code: 'SEG_TOPOLOGY_INCOMPATIBLE', resource: 'stream SEG_RAW', field: 'storage' })

  const shrunk = segstreamTopology({ streamMaxBytes: 32 * 1024 * 1024 })
  const error = await applyTopology(nc, shrunk, { keyGroups: 16 }).catch((e: unknown) => e)
  t.type(error, IncompatibleChangeError)
  t.match((error as Error).message, /stream SEG_RAW: field "max_bytes" would shrink/)

  await t.rejects(applyTopology(nc, segstreamTopology(small), { keyGroups: 32 }), { field: 'key_groups', message: /provisioned as 16/ })

  const jsm = await jetstreamManager(nc)
  t.equal((await jsm.streams.info('SEG_RAW')).config.storage, 'file', 'the refused change left the stream as it was')
})

t.test('an invalid topology is refused before touching the server', async (t) => {
  const nats = await startNats()
  const nc = await connectNats(nats.url, 'test', logger)
  t.teardown(async () => { await nc.close(); await nats.close() })
  const base = segstreamTopology(small)
  const duplicate: Topology = { ...base, steps: [...base.steps, base.steps[1]!] }
  await t.rejects(applyTopology(nc, duplicate, { keyGroups: 16 }), { code: 'SEG_TOPOLOGY_INVALID', message: /duplicate stepId "enrich"/ })
  const jsm = await jetstreamManager(nc)
  t.same(await jsm.streams.names().next(), [], 'no stream was created')
})
