import { jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import t from 'tap'
import { connectNats } from '../broker/connect.ts'
import { createLogger } from '../config/logger.ts'
import { Ownership } from '../operators/runtime/leases.ts'
import { applyTopology } from '../topology/apply.ts'
import { segstreamTopology } from '../topology/definition.ts'
import { startNats } from './harness/nats.ts'

// Production passes leaseMs and heartbeatMs as undefined when unset: the defaults must hold
t.test('options left undefined take the defaults: 5 s leases renewed once a second', async (t) => {
  const nats = await startNats()
  const nc = await connectNats(nats.url, 'test', createLogger('silent'))
  t.teardown(async () => { await nc.close(); await nats.close() })
  await applyTopology(nc, segstreamTopology({ streamMaxBytes: 64 * 1024 ** 2 }), { keyGroups: 8 })
  const acquired: number[] = []
  const ownership = new Ownership(
    { stepId: 'probe', instanceId: 'one', keyGroups: 8, leaseMs: undefined, heartbeatMs: undefined, logger: createLogger('silent') },
    { acquired: async (kg) => { acquired.push(kg) }, released: async () => {} },
  )
  await ownership.start(nc)
  t.same(acquired.sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7], 'a lone member takes every key group')
  const jsm = await jetstreamManager(nc)
  const before = (await jsm.streams.info('KV_seg_leases')).state.last_seq
  await new Promise((r) => setTimeout(r, 3_000))
  const writes = (await jsm.streams.info('KV_seg_leases')).state.last_seq - before
  // 8 renewals and 1 membership heartbeat a second: about 27 in 3 s
  t.ok(writes >= 9 && writes <= 45, `lease writes in 3 s: ${writes}`)
  const lease = (await (await new Kvm(nc).open('seg_leases')).get('l.probe.0'))!.json<{ until: number }>()
  t.ok(Number.isFinite(lease.until) && lease.until > Date.now() + 2_000, 'the lease runs about 5 s ahead')
  await ownership.stop()
})
