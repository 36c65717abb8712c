import t from 'tap'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { connectNats } from '../broker/connect.ts'
import { PipelinedPublisher, PublishError, type OutgoingMessage } from '../broker/publisher.ts'
import { createLogger } from '../config/logger.ts'
import { startNats } from './harness/nats.ts'

// publishBatch writes a batch as one buffer of HPUB frames (broker/publisher.ts): what
// JetStream stores must be exactly what one nats-core publish per message would have stored.

t.test('publishBatch on a real nats-server', async (t) => {
  const nats = await startNats()
  const nc = await connectNats(nats.url, 'publisher-test', createLogger('warn'))
  t.teardown(async () => {
    await nc.close()
    await nats.close()
  })
  const jsm = await jetstreamManager(nc)
  await jsm.streams.add({ name: 'PUB', subjects: ['pub.>'], duplicate_window: 60_000_000_000 })
  /** Messages stored under the subjects `filter` matches. */
  const stored = async (filter: string) => Object.values((await jsm.streams.info('PUB', { subjects_filter: filter })).state.subjects ?? {}).reduce((a, b) => a + b, 0)
  const batch = (prefix: string, count: number, subject = (i: number) => `pub.${prefix}.${i % 4}`): OutgoingMessage[] =>
    Array.from({ length: count }, (_, i) => ({ subject: subject(i), data: Buffer.from(`${prefix} ${i} ${'x'.repeat(i * 7)}`), msgId: `${prefix}:${i}` }))

  t.test('every message stored with its subject, bytes and Nats-Msg-Id; a repeat counts as duplicates', async (t) => {
    const publisher = new PipelinedPublisher(nc)
    t.teardown(() => publisher.close())
    const messages = batch('a', 250)
    t.same(await publisher.publishBatch(messages), { stored: 250, duplicates: 0 })
    for (const i of [0, 1, 137, 249]) {
      const message = await jsm.streams.getMessage('PUB', { seq: i + 1 })
      t.equal(message!.subject, messages[i]!.subject)
      t.same(Buffer.from(message!.data), messages[i]!.data)
      t.equal(message!.header.get('Nats-Msg-Id'), `a:${i}`)
    }
    t.same(await publisher.publishBatch(messages.slice(100, 150)), { stored: 50, duplicates: 50 }, 'the same ids again are duplicates')
    t.equal((await jsm.streams.info('PUB')).state.messages, 250)
  })

  t.test('a message id in UTF-8 and an empty payload', async (t) => {
    const publisher = new PipelinedPublisher(nc)
    t.teardown(() => publisher.close())
    const messages: OutgoingMessage[] = [
      { subject: 'pub.utf8.0', data: Buffer.from('héllo ✓'), msgId: 'proj:ünïcødé-✓-𝄞' },
      { subject: 'pub.utf8.1', data: new Uint8Array(0), msgId: '  padded-id  ' },
    ]
    t.same(await publisher.publishBatch(messages), { stored: 2, duplicates: 0 })
    t.same(await publisher.publishBatch(messages), { stored: 2, duplicates: 2 }, 'the ids arrive as sent: a repeat is recognised')
    const first = await jsm.streams.getMessage('PUB', { last_by_subj: 'pub.utf8.0' })
    t.equal(first!.header.get('Nats-Msg-Id'), 'proj:ünïcødé-✓-𝄞')
    t.equal(Buffer.from(first!.data).toString(), 'héllo ✓')
    const second = await jsm.streams.getMessage('PUB', { last_by_subj: 'pub.utf8.1' })
    t.equal(second!.header.get('Nats-Msg-Id'), 'padded-id', 'trimmed, as nats-core trims a header value')
    t.equal(second!.data.length, 0)
  })

  t.test('a message nats-core would refuse fails alone; the rest are stored before the batch rejects', async (t) => {
    const publisher = new PipelinedPublisher(nc)
    t.teardown(() => publisher.close())
    const messages = batch('b', 5)
    messages[1] = { ...messages[1]!, data: new Uint8Array(nc.info!.max_payload + 1) }
    messages[3] = { ...messages[3]!, subject: 'pub.b has spaces' }
    const error = await publisher.publishBatch(messages).then(() => undefined, (e: unknown) => e)
    t.ok(error instanceof PublishError)
    t.equal((error as PublishError).code, 'SEG_PUBLISH_CLOSED')
    t.match((error as PublishError).message, /max_payload/)
    t.equal(await stored('pub.b.0'), 2, 'b:0 and b:4 stored')
    t.equal(await stored('pub.b.2'), 1, 'b:2 stored')
    t.equal(await stored('pub.b.1'), 0, 'the oversize b:1 not')
    t.equal(publisher.inFlight, 0)
  })

  t.test('a message id with a line break is refused before anything is sent', async (t) => {
    const publisher = new PipelinedPublisher(nc)
    t.teardown(() => publisher.close())
    const messages = batch('c', 3)
    messages[2] = { ...messages[2]!, msgId: 'c:2\r\nNats-Expected-Stream: other' }
    await t.rejects(publisher.publishBatch(messages), /Nats-Msg-Id cannot contain/)
    t.equal(await stored('pub.c.>'), 0)
  })

  t.test('without nats-core internals it publishes message by message, with the same result', async (t) => {
    // the same connection, only its (non-public) `protocol` hidden
    const hidden = new Proxy(nc, {
      get(target, property) {
        if (property === 'protocol') return undefined
        const value: unknown = Reflect.get(target, property, target)
        return typeof value === 'function' ? value.bind(target) : value
      },
    }) as NatsConnection
    const publisher = new PipelinedPublisher(hidden)
    t.teardown(() => publisher.close())
    const messages = batch('d', 40)
    t.same(await publisher.publishBatch(messages), { stored: 40, duplicates: 0 })
    t.same(await publisher.publishBatch(messages.slice(0, 10)), { stored: 10, duplicates: 10 })
    const message = await jsm.streams.getMessage('PUB', { last_by_subj: 'pub.d.3' })
    t.equal(message!.header.get('Nats-Msg-Id'), 'd:39')
  })

  t.test('a closed connection fails the whole batch as SEG_PUBLISH_CLOSED', async (t) => {
    const other = await connectNats(nats.url, 'publisher-test-closed', createLogger('warn'))
    const publisher = new PipelinedPublisher(other)
    await other.close()
    const error = await publisher.publishBatch(batch('e', 3)).then(() => undefined, (e: unknown) => e)
    t.equal((error as PublishError).code, 'SEG_PUBLISH_CLOSED')
    t.equal(publisher.inFlight, 0)
    publisher.close()
    t.equal(await stored('pub.e.>'), 0)
  })
})
