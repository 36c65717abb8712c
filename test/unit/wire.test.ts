import fc from 'fast-check'
import t from 'tap'
import { MessageFramer } from '../../store/wire.ts'

// The embedded database's wire server hands PGlite whole protocol messages only, however TCP
// splits them: a large Bind arrives in several chunks, several small messages in one.

const int32 = (n: number) => {
  const buffer = Buffer.alloc(4)
  buffer.writeInt32BE(n)
  return buffer
}
/** Before startup: int32 length (itself included) + body. */
const untyped = (body: Buffer) => Buffer.concat([int32(body.length + 4), body])
/** After: type byte + int32 length (itself included) + body. */
const typed = (type: string, body: Buffer) => Buffer.concat([Buffer.from(type), int32(body.length + 4), body])

const sslRequest = untyped(int32(80877103))
const startup = untyped(Buffer.concat([int32(196608), Buffer.from('user\0postgres\0\0')]))
const session = (sizes: number[]) => [sslRequest, startup, ...sizes.map((size, i) => typed(i % 2 ? 'B' : 'P', Buffer.alloc(size, i)))]

t.test('whole messages, in order, however the stream is cut', async (t) => {
  fc.assert(fc.property(
    fc.array(fc.integer({ min: 0, max: 200_000 }), { minLength: 1, maxLength: 6 }),
    fc.array(fc.integer({ min: 1, max: 100_000 }), { minLength: 1, maxLength: 40 }),
    (sizes, cuts) => {
      const messages = session(sizes)
      const stream = Buffer.concat(messages)
      const framer = new MessageFramer()
      const out: Buffer[] = []
      let at = 0
      for (let i = 0; at < stream.length; i++) {
        const next = Math.min(stream.length, at + cuts[i % cuts.length]!)
        const complete = framer.push(stream.subarray(at, next))
        if (complete.length > 0) out.push(Buffer.from(complete))
        at = next
      }
      // every delivery ends on a message boundary, and all of them together are the stream
      const ends = new Set<number>()
      let offset = 0
      for (const message of messages) ends.add((offset += message.length))
      let delivered = 0
      for (const chunk of out) {
        delivered += chunk.length
        if (!ends.has(delivered)) return false
      }
      return Buffer.concat(out).equals(stream)
    },
  ), { numRuns: 200 })
  t.pass('every delivery ends on a message boundary and nothing is lost or reordered')
})

t.test('an incomplete message is held back until its last byte', async (t) => {
  const framer = new MessageFramer()
  t.equal(framer.push(startup).length, startup.length, 'the startup message, whole')
  const bind = typed('B', Buffer.alloc(100_000, 7))
  t.equal(framer.push(bind.subarray(0, 3)).length, 0, 'not even the length yet')
  t.equal(framer.push(bind.subarray(3, 70_000)).length, 0, 'most of it')
  t.same(framer.push(bind.subarray(70_000)), bind, 'the rest: the message, whole')
})

t.test('a length shorter than its own header is refused', async (t) => {
  const framer = new MessageFramer()
  framer.push(startup)
  t.throws(() => framer.push(Buffer.concat([Buffer.from('Q'), int32(2)])), /malformed protocol message/)
})
