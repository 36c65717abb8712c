/**
 * make bench-ingest: the collector's accepted events/s, beside the rate at which one
 * Node process alone gets the same messages acknowledged by nats-server with
 * pipelined publishing (the baseline), in the same run on the same machine.
 *
 *   node bench/ingest.ts [--events 300000] [--concurrency 16]
 *
 * The collector runs as its own process (`segstream gateway`), the load comes from
 * this process over HTTP keep-alive in batches of 100 events. Also printed: the CPU
 * time per event of the gateway, nats-server and the load generator. Last line: JSON.
 */
import { spawn } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { connect, type Socket } from 'node:net'
import { connectNats } from '../broker/connect.ts'
import { PipelinedPublisher } from '../broker/publisher.ts'
import { createLogger } from '../config/logger.ts'
import { createProject } from '../projects/registry.ts'
import { encode } from '../schemas/codec.ts'
import { ENVELOPE_VERSION, type RawEventEnvelope } from '../schemas/envelope.ts'
import { applyTopology } from '../topology/apply.ts'
import { benchTopology } from './topology.ts'
import { keyGroupOf, subjectFor } from '../topology/subjects.ts'
import { jetstreamManager } from '@nats-io/jetstream'
import { startNats } from '../test/harness/nats.ts'
import { startPostgres } from '../test/harness/postgres.ts'
import { cleanEnv, freePort, waitForPort } from '../test/harness/ports.ts'
import { pipelinedPublishRate } from './baseline.ts'

const { values } = parseArgs({ options: { events: { type: 'string', default: '300000' }, concurrency: { type: 'string', default: '16' } } })
const EVENTS = Number(values.events)
const BATCH = 100
const CONCURRENCY = Number(values.concurrency)
const KEY_GROUPS = 64
const logger = createLogger('warn')
const log = (line: string) => console.log(line)

const nats = await startNats()
const database = await startPostgres()
const nc = await connectNats(nats.url, 'bench', logger)
// CPU seconds (user + system, all threads) a process has used so far, from /proc (Linux; NaN elsewhere)
const cpuSeconds = (pid: number | undefined): number => {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return Number.NaN
  }
}
const natsPid = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).find((p) => {
  try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(nats.storeDir) } catch { return false }
})
await applyTopology(nc, benchTopology(['SEG_RAW'], 4 * 1024 ** 3), { keyGroups: KEY_GROUPS })
const { project } = await createProject(nc, { id: 'bench' })

const message = (i: number, prefix: string) => ({
  type: 'track', event: i % 3 ? 'click_event1' : 'custom_event2', messageId: `${prefix}-${i}`, anonymousId: `anon-${i % 50_000}`,
  timestamp: new Date(1_557_000_000_000 + i).toISOString(),
  properties: { plan: 'pro', price: i % 100, path: '/pricing' },
  context: { ip: '10.1.2.3', userAgent: 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36', locale: 'de-DE', page: { path: '/pricing', url: 'https://shop.example/pricing' } },
})

// Baseline: the same messages, published by one process with pipelined acks.
{
  const publisher = new PipelinedPublisher(nc, { timeoutMs: 30_000, maxInFlight: 5_000 })
  const received = new Date().toISOString()
  const envelopes = Array.from({ length: EVENTS }, (_, i) => {
    const m = { ...message(i, 'base'), receivedAt: received } as RawEventEnvelope['data']
    const keyGroup = keyGroupOf(m.anonymousId!, KEY_GROUPS)
    const envelope: RawEventEnvelope = { v: ENVELOPE_VERSION, type: 'raw_event', project: 'baseline', id: m.messageId, time: Date.parse(m.timestamp), key: m.anonymousId!, keyGroup, source: 'live', data: m }
    return { subject: subjectFor('baseline', 'raw', keyGroup), data: encode(envelope), id: `baseline:${m.messageId}` }
  })
  const before = { nats: cpuSeconds(natsPid), publisher: process.cpuUsage() }
  var baselinePerS = await pipelinedPublishRate(publisher, envelopes)
  const publisherCpu = process.cpuUsage(before.publisher)
  var baselineCpu = { nats: (cpuSeconds(natsPid) - before.nats) * 1e6 / EVENTS, publisher: (publisherCpu.user + publisherCpu.system) / EVENTS }
  publisher.close()
  log(`baseline: ${Math.round(baselinePerS).toLocaleString('en')} acked msg/s (one process, pipelined publish); cpu per message: publisher ${baselineCpu.publisher.toFixed(1)} µs, nats-server ${baselineCpu.nats.toFixed(1)} µs`)
}

// The collector, in its own process.
const port = await freePort()
const gateway = spawn(process.execPath, [...(process.env.BENCH_PROFILE ? ['--cpu-prof', '--cpu-prof-dir=/tmp/prof'] : []), join(import.meta.dirname, '../bin/segstream.js'), 'gateway'], {
  stdio: ['ignore', 'inherit', 'inherit'],
  env: cleanEnv({ SEGSTREAM_NATS_URL: nats.url, DATABASE_URL: database.url, SEGSTREAM_HTTP_PORT: String(port), SEGSTREAM_KEY_GROUPS: String(KEY_GROUPS), LOG_LEVEL: 'warn', SEGSTREAM_PUBLISH_TIMEOUT_MS: '30000',
    // the collector's capacity, not one write key's rate limit (1,000 requests/s: 100,000 events/s in bursts of 100)
    SEGSTREAM_RATE_LIMIT: '1000000' }),
})
await waitForPort(port)

const auth = `Basic ${Buffer.from(`${project.writeKeys[0]}:`).toString('base64')}`
// whole requests, prepared before the clock starts (what Node's http client sends, headers and all)
const requests: Buffer[] = []
for (let start = 0; start < EVENTS; start += BATCH) {
  const body = Buffer.from(JSON.stringify({ batch: Array.from({ length: Math.min(BATCH, EVENTS - start) }, (_, j) => message(start + j, 'http')), sentAt: new Date().toISOString() }))
  const head = `POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nAuthorization: ${auth}\r\nConnection: keep-alive\r\n\r\n`
  requests.push(Buffer.concat([Buffer.from(head), body]))
}

/**
 * One keep-alive connection sending one request at a time, as light as wrk: the
 * load generator shares the two cores with the collector and nats-server, and
 * Node's http client cost it about as much CPU per event as nats-server's acks.
 */
class Connection {
  readonly #socket: Socket
  #received: Buffer = Buffer.alloc(0)
  #waiting: { resolve: (response: { status: number; body: string }) => void; reject: (error: Error) => void } | undefined
  constructor() {
    this.#socket = connect(port, '127.0.0.1')
    this.#socket.setNoDelay(true)
    this.#socket.on('data', (chunk: Buffer) => this.#onData(chunk))
    this.#socket.on('error', (error) => this.#fail(error))
    this.#socket.on('close', () => this.#fail(new Error('the collector closed the connection')))
  }
  send(request: Buffer): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      this.#waiting = { resolve, reject }
      this.#socket.write(request)
    })
  }
  close(): void {
    this.#socket.removeAllListeners('close')
    this.#socket.destroy()
  }
  #fail(error: Error) {
    const waiting = this.#waiting
    this.#waiting = undefined
    waiting?.reject(error)
  }
  #onData(chunk: Buffer) {
    this.#received = this.#received.length === 0 ? chunk : Buffer.concat([this.#received, chunk])
    const headEnd = this.#received.indexOf('\r\n\r\n')
    if (headEnd < 0) return
    const head = this.#received.toString('latin1', 0, headEnd)
    const length = /\r\ncontent-length: *(\d+)/i.exec(head)
    if (!length) return this.#fail(new Error(`response without content-length: ${head}`))
    const end = headEnd + 4 + Number(length[1])
    if (this.#received.length < end) return
    const body = this.#received.toString('utf8', headEnd + 4, end)
    this.#received = this.#received.subarray(end)
    const waiting = this.#waiting
    this.#waiting = undefined
    waiting?.resolve({ status: Number(head.slice(9, 12)), body })
  }
}
const connections = Array.from({ length: CONCURRENCY }, () => new Connection())

const cpuBefore = { gateway: cpuSeconds(gateway.pid), nats: cpuSeconds(natsPid), load: process.cpuUsage() }

let next = 0
let accepted = 0
let failed = 0
/** Requests not answered 200, by status: a 429 means the write key's rate limit, a 503 that acks were too slow. */
const failedByStatus: Record<number, number> = {}
const started = performance.now()
await Promise.all(connections.map(async (connection) => {
  while (next < requests.length) {
    const response = await connection.send(requests[next++]!)
    if (response.status === 200) accepted += (JSON.parse(response.body) as { accepted: number }).accepted
    else {
      failed++
      failedByStatus[response.status] = (failedByStatus[response.status] ?? 0) + 1
    }
  }
}))
const elapsedS = (performance.now() - started) / 1000
const collectorPerS = accepted / elapsedS
const loadCpu = process.cpuUsage(cpuBefore.load)
// CPU per accepted event: steadier than events/s on a shared machine, and it shows which process is the limit
const cpuUsed = { gateway: cpuSeconds(gateway.pid) - cpuBefore.gateway, nats: cpuSeconds(natsPid) - cpuBefore.nats, load: (loadCpu.user + loadCpu.system) / 1e6 }
const cpu = { gateway: cpuUsed.gateway * 1e6 / accepted, nats: cpuUsed.nats * 1e6 / accepted, load: cpuUsed.load * 1e6 / accepted }
const ofACore = (seconds: number) => `${Math.round(seconds / elapsedS * 100)}%`
log(`collector: ${Math.round(collectorPerS).toLocaleString('en')} accepted events/s (${CONCURRENCY} connections, batches of ${BATCH}; ${failed} failed requests${failed ? ` ${JSON.stringify(failedByStatus)}` : ''})`)
log(`cpu per event: gateway ${cpu.gateway.toFixed(1)} µs, nats-server ${cpu.nats.toFixed(1)} µs, load generator ${cpu.load.toFixed(1)} µs (${ofACore(cpuUsed.gateway)}, ${ofACore(cpuUsed.nats)}, ${ofACore(cpuUsed.load)} of a core)`)

const jsm = await jetstreamManager(nc)
const stored = (await jsm.streams.info('SEG_RAW', { subjects_filter: 'seg.bench.>' })).state
const storedBench = Object.values(stored.subjects ?? {}).reduce((a, b) => a + b, 0)

gateway.kill('SIGTERM')
await new Promise((r) => gateway.once('exit', r))
for (const connection of connections) connection.close()
await nc.close()
await Promise.all([nats.close(), database.close()])
console.log(JSON.stringify({
  collector_events_per_s: Math.round(collectorPerS),
  baseline_pipelined_publish_per_s: Math.round(baselinePerS),
  ratio: Number((collectorPerS / baselinePerS).toFixed(3)),
  events: EVENTS,
  batch_size: BATCH,
  accepted,
  stored_in_stream: storedBench,
  failed_requests: failed,
  failed_by_status: failedByStatus,
  cpu_us_per_event: { gateway: Number(cpu.gateway.toFixed(1)), nats_server: Number(cpu.nats.toFixed(1)), load_generator: Number(cpu.load.toFixed(1)) },
  baseline_cpu_us_per_message: { publisher: Number(baselineCpu.publisher.toFixed(1)), nats_server: Number(baselineCpu.nats.toFixed(1)) },
  target_events_per_s: 50_000,
}))
