import { createServer, type Server, type Socket } from 'node:net'

/** What the wire server needs of the database: PGlite's raw protocol entry point. */
export interface RawProtocol {
  execProtocolRaw(message: Uint8Array): Promise<Uint8Array>
  query(sql: string): Promise<unknown>
}

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104

/**
 * Splits a byte stream into whole Postgres protocol messages. Until the startup message, a
 * message is `int32 length` + body (an SSL or GSSAPI request comes first, then the startup
 * message); after it, `type byte` + `int32 length` + body. TCP delivers a large message (a
 * batch insert's Bind) in several chunks, and PGlite must get it whole.
 */
export class MessageFramer {
  #buffer: Buffer = Buffer.alloc(0)
  #started = false

  /** Adds a chunk; returns every message now complete, concatenated (empty when none). */
  push(chunk: Buffer): Buffer {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk])
    let end = 0
    for (;;) {
      const header = this.#started ? 5 : 4
      if (this.#buffer.length - end < header) break
      const length = this.#started ? 1 + this.#buffer.readInt32BE(end + 1) : this.#buffer.readInt32BE(end)
      if (length < header - (this.#started ? 1 : 0)) throw new Error(`malformed protocol message (length ${length})`)
      if (this.#buffer.length - end < length) break
      if (!this.#started) {
        const code = this.#buffer.readInt32BE(end + 4)
        if (code !== SSL_REQUEST && code !== GSSENC_REQUEST) this.#started = true
      }
      end += length
    }
    const complete = this.#buffer.subarray(0, end)
    this.#buffer = this.#buffer.subarray(end)
    return complete
  }
}

/**
 * Serves one PGlite database on the Postgres wire protocol, one connection at a time (PGlite is
 * one session: others wait their turn), each message whole and in order. A connection that ends
 * inside a transaction has it rolled back before the next one starts.
 */
export function serveWire(db: RawProtocol, options: { port: number; host: string }): Promise<Server> {
  let turn: Promise<void> = Promise.resolve()

  const serve = (socket: Socket) => new Promise<void>((done) => {
    const framer = new MessageFramer()
    let work: Promise<void> = Promise.resolve()
    let closed = false
    const finish = () => {
      if (closed) return
      closed = true
      socket.pause() // nothing more is read; what was read is finished first
      void work.then(() => db.query('ROLLBACK')).catch(() => undefined).then(() => done())
    }
    socket.on('data', (chunk: Buffer) => {
      let messages: Buffer
      try {
        messages = framer.push(chunk)
      } catch {
        socket.destroy()
        return
      }
      if (messages.length === 0) return
      work = work.then(async () => {
        if (closed) return
        const reply = await db.execProtocolRaw(new Uint8Array(messages))
        if (reply.length > 0 && socket.writable) socket.write(reply)
      }).catch(() => { socket.destroy() })
    })
    socket.on('error', finish)
    socket.on('close', finish)
    socket.resume()
  })

  const server = createServer({ pauseOnConnect: true }, (socket) => {
    socket.setNoDelay(true)
    turn = turn.then(() => (socket.destroyed ? undefined : serve(socket)))
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port, options.host, () => resolve(server))
  })
}
