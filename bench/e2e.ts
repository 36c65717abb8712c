/**
 * make bench: events through collector -> enrich -> sessionize -> sink with
 * everything on this machine, against a real PostgreSQL server. Last line: JSON.
 *
 *   node bench/e2e.ts [--events 1000000] [--steady-s 300] [--users 20000] [--concurrency 8]
 *
 * Processes: this one (load generator and measurements), the gateway
 * (`segstream gateway`), the operators (`segstream run enrich sessionize`), the
 * sinks (`segstream run sink-events sink-sessions`), nats-server, PostgreSQL.
 *
 * 1. Baseline: one process publishing the same number of messages with pipelined
 *    acks into a stream of its own, divided by the stored hops per event (every
 *    message JetStream stored during the flood, streams and state buckets alike,
 *    per event: measured, not assumed): the ceiling this design could reach here.
 * 2. Flood: every event as fast as the collector takes them; e2e_events_per_s is
 *    events / (last row committed - first event sent), where the last row is the later of
 *    the last event row (its stored_at) and the moment sessionize had taken every enriched
 *    message and sink-sessions had stored every session it published. The load comes over
 *    plain keep-alive sockets in batches of 100 events, 8 requests at a time.
 * 3. Steady: 50% of that rate for --steady-s seconds; latency from collector
 *    acceptance (received_at) to commit (stored_at) of those events; RSS of each
 *    process sampled every 5 s, its slope over the last 4 minutes.
 * Then lost (events without a row) and duplicated (enriched messages or rows beyond one per event).
 * Also printed: the CPU time per event of every process during the flood (nats-server and
 * PostgreSQL included), which says more than events/s on a shared machine: on two cores,
 * 20,000 events/s leaves 100 µs of CPU per event for all of them together.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { jetstream, jetstreamManager, RetentionPolicy, StorageType, DiscardPolicy } from '@nats-io/jetstream'
import { connectNats } from '../broker/connect.ts'
import { PipelinedPublisher } from '../broker/publisher.ts'
import { readStream } from '../broker/read.ts'
import { createLogger } from '../config/logger.ts'
import { seededRandom } from '../operators/runtime/generator.ts'
import { createProject } from '../projects/registry.ts'
import { decode, encode } from '../schemas/codec.ts'
import { openStore } from '../store/store.ts'
import { applyTopology } from '../topology/apply.ts'
import { benchTopology } from './topology.ts'
import { startNats } from '../test/harness/nats.ts'
import { startPostgres } from '../test/harness/postgres.ts'
import { cleanEnv, freePort, waitForPort } from '../test/harness/ports.ts'
import { pipelinedPublishRate } from './baseline.ts'

const { values } = parseArgs({
  options: {
    events: { type: 'string', default: '1000000' },
    'steady-s': { type: 'string', default: '300' },
    users: { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '8' },
  },
})
const EVENTS = Number(values.events)
const STEADY_S = Number(values['steady-s'])
const USERS = Number(values.users)
const CONCURRENCY = Number(values.concurrency)
const BATCH = 100
const KEY_GROUPS = 64
const logger = createLogger('warn')
const log = (line: string) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${line}`)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const nats = await startNats()
const database = await startPostgres()
const allPids = () => readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number)
const cmdlineOf = (pid: number) => {
  try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8') } catch { return '' }
}
const parentOf = (pid: number) => {
  try { return Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]) } catch { return -1 }
}
const natsPid = allPids().find((pid) => cmdlineOf(pid).includes(nats.storeDir))
const postmasterPid = allPids().find((pid) => cmdlineOf(pid).includes(`\0-p\0${database.port}\0`) && cmdlineOf(pid).startsWith('/usr/lib/postgresql'))
// a run that fails leaves no server behind
let processes: Record<string, ChildProcess> = {}
let closed = false
process.on('exit', () => {
  if (closed) return
  for (const child of Object.values(processes)) if (child.exitCode === null) child.kill('SIGKILL')
  for (const [pid, signal] of [[natsPid, 'SIGTERM'], [postmasterPid, 'SIGINT']] as const) {
    try {
      if (pid !== undefined) process.kill(pid, signal)
    } catch {}
  }
})
const nc = await connectNats(nats.url, 'bench', logger)
await applyTopology(nc, benchTopology(['SEG_RAW', 'SEG_ENRICHED', 'SEG_SESSIONS'], 4 * 1024 ** 3), { keyGroups: KEY_GROUPS })
const store = await openStore({ url: database.url, poolSize: 2, logger })
await store.migrate()
const { project } = await createProject(nc, { id: 'bench' })
log(`nats-server ${nats.url}, PostgreSQL ${new URL(database.url).host}; ${EVENTS.toLocaleString('en')} events of ${USERS.toLocaleString('en')} users`)

// Realistic enough: users browse in bursts, a few pages and clicks a visit, ~500 bytes of context each.
const AGENTS = [
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36',
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15',
  'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36',
]
const REFERRERS = ['', 'https://www.google.com/', 'https://t.co/abc', 'https://news.example.org/post']
const NAMES = ['click_event1', 'custom_event2', 'add_to_cart', 'search']
/** `spacingMs`: mean event time between two events (of any users). */
function* events(prefix: string, count: number, seed: number, start: number, spacingMs = 50) {
  const random = seededRandom(seed)
  let time = start
  for (let i = 0; i < count; i++) {
    time += Math.round(-Math.log(1 - random()) * spacingMs)
    const user = Math.floor(random() * USERS)
    const page = random() < 0.4
    yield {
      type: page ? 'page' : 'track', ...(page ? { name: 'Pricing' } : { event: NAMES[Math.floor(random() * NAMES.length)] }),
      messageId: `${prefix}-${i}`, anonymousId: `anon-${user}`, timestamp: new Date(time).toISOString(),
      properties: { plan: 'pro', price: i % 100 },
      context: {
        ip: `10.${user % 256}.${(user >> 8) % 256}.7`, userAgent: AGENTS[user % AGENTS.length], locale: 'de-DE', timezone: 'Europe/Berlin',
        page: { path: '/pricing', url: `https://shop.example/pricing${user % 5 === 0 ? '?utm_source=newsletter&utm_medium=email' : ''}`, referrer: REFERRERS[user % REFERRERS.length] },
        library: { name: 'bench', version: '1' },
      },
    }
  }
}
const bodiesOf = (all: object[]) => {
  const bodies: Buffer[] = []
  for (let i = 0; i < all.length; i += BATCH) bodies.push(requestOf(Buffer.from(JSON.stringify({ batch: all.slice(i, i + BATCH), sentAt: new Date().toISOString() }))))
  return bodies
}

// 1. Baseline, into a stream of its own so no operator reads it
const jsm = await jetstreamManager(nc)
await jsm.streams.add({ name: 'BENCH_BASELINE', subjects: ['bench.baseline.*'], retention: RetentionPolicy.Limits, storage: StorageType.File, discard: DiscardPolicy.New, duplicate_window: 120e9, max_bytes: 2 * 1024 ** 3 })
let baselinePublishPerS: number
{
  const publisher = new PipelinedPublisher(nc, { timeoutMs: 30_000 })
  const sample = Math.min(EVENTS, 300_000)
  const prepared = [...events('base', sample, 7, Date.parse('2019-05-01T00:00:00Z'))].map((m, i) => ({
    subject: `bench.baseline.${i % KEY_GROUPS}`, data: encode({ v: 1, type: 'raw_event', project: 'bench', id: m.messageId, time: 0, key: m.anonymousId, keyGroup: i % KEY_GROUPS, source: 'live', data: { ...m, receivedAt: m.timestamp } }), id: `b:${m.messageId}`,
  }))
  baselinePublishPerS = await pipelinedPublishRate(publisher, prepared)
  publisher.close()
  await jsm.streams.delete('BENCH_BASELINE')
  log(`baseline: ${Math.round(baselinePublishPerS).toLocaleString('en')} acked publishes/s (one process, pipelined)`)
}

// The system, one process per role
const gatewayPort = await freePort()
const env = async (extra: Record<string, string> = {}) => cleanEnv({
  SEGSTREAM_NATS_URL: nats.url, DATABASE_URL: database.url, SEGSTREAM_KEY_GROUPS: String(KEY_GROUPS), LOG_LEVEL: 'warn',
  SEGSTREAM_PUBLISH_TIMEOUT_MS: '30000', SEGSTREAM_METRICS_PORT: String(await freePort()), ...extra,
})
const bin = join(import.meta.dirname, '../bin/segstream.js')
// BENCH_PROFILE=dir: each process writes a .cpuprofile there; BENCH_NODE_ARGS: more flags for each
// (NODE_OPTIONS does not reach them), e.g. `--heapsnapshot-signal=SIGUSR2` to take heap snapshots
const profile = [
  ...(process.env.BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : []),
  ...(process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? []),
]
processes = {
  gateway: spawn(process.execPath, [...profile, bin, 'gateway'], { stdio: ['ignore', 'inherit', 'inherit'], env: await env({ SEGSTREAM_HTTP_PORT: String(gatewayPort) }) }),
  operators: spawn(process.execPath, [...profile, bin, 'run', 'enrich', 'sessionize'], { stdio: ['ignore', 'inherit', 'inherit'], env: await env() }),
  sinks: spawn(process.execPath, [...profile, bin, 'run', 'sink-events', 'sink-sessions'], { stdio: ['ignore', 'inherit', 'inherit'], env: await env() }),
}
await waitForPort(gatewayPort)

const rssMb = (pid: number | undefined) => {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024
  } catch {
    return Number.NaN
  }
}
// CPU seconds (user + system, all threads) a process has used so far, from /proc (Linux; NaN elsewhere)
const cpuSeconds = (pid: number | undefined): number => {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return Number.NaN
  }
}
/** CPU seconds so far of every process of the run (PostgreSQL: the postmaster and its backends). */
const cpuNow = () => {
  const out: Record<string, number> = { bench: (process.cpuUsage().user + process.cpuUsage().system) / 1e6, nats_server: cpuSeconds(natsPid) }
  for (const [name, child] of Object.entries(processes)) out[name] = cpuSeconds(child.pid)
  out.postgres = postmasterPid === undefined ? Number.NaN : allPids().filter((pid) => pid === postmasterPid || parentOf(pid) === postmasterPid).reduce((a, pid) => a + cpuSeconds(pid), 0)
  return out
}
const peakRss: Record<string, number> = {}
const rssSamples: Record<string, { t: number; mb: number }[]> = {}
const sampler = setInterval(() => {
  for (const [name, child] of Object.entries(processes)) {
    const mb = rssMb(child.pid)
    peakRss[name] = Math.max(peakRss[name] ?? 0, mb)
    ;(rssSamples[name] ??= []).push({ t: performance.now() / 60_000, mb })
  }
}, 5_000)

const auth = `Basic ${Buffer.from(`${project.writeKeys[0]}:`).toString('base64')}`
/** A whole HTTP request (head and body) posting one batch. */
const requestOf = (body: Buffer) => Buffer.concat([Buffer.from(
  `POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:${gatewayPort}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nAuthorization: ${auth}\r\nConnection: keep-alive\r\n\r\n`), body])

/**
 * One keep-alive connection, one request at a time, as light as wrk (bench/ingest.ts): the
 * load generator shares the two cores with the system it measures, and Node's http client
 * cost it ~30 µs of CPU per event, as much as the collector itself.
 */
class Connection {
  readonly #socket: Socket
  #received: Buffer = Buffer.alloc(0)
  #waiting: { resolve: (status: number) => void; reject: (error: Error) => void } | undefined
  closed = false
  constructor() {
    this.#socket = connect(gatewayPort, '127.0.0.1')
    this.#socket.setNoDelay(true)
    this.#socket.on('data', (chunk: Buffer) => this.#onData(chunk))
    this.#socket.on('error', (error) => this.#fail(error))
    this.#socket.on('close', () => this.#fail(new Error('the collector closed the connection')))
  }
  send(request: Buffer): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#waiting = { resolve, reject }
      this.#socket.write(request)
    })
  }
  destroy(): void {
    this.#socket.removeAllListeners('close')
    this.#socket.destroy()
  }
  #fail(error: Error) {
    this.closed = true
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
    this.#received = this.#received.subarray(end)
    const waiting = this.#waiting
    this.#waiting = undefined
    waiting?.resolve(Number(head.slice(9, 12)))
  }
}
/**
 * At most CONCURRENCY requests in flight, each on an idle connection. The collector closes
 * connections idle for a few seconds (between the phases): such a one is replaced, and a
 * request whose connection closed before any answer is sent again (the collector stores a
 * message once per id, so a batch sent twice is stored once).
 */
const idle: Connection[] = []
let open = 0
const connectionWaiters: ((connection: Connection | undefined) => void)[] = []
const post = async (request: Buffer): Promise<number> => {
  for (let attempt = 0; ; attempt++) {
    let connection = idle.pop()
    while (connection?.closed) {
      connection.destroy()
      open--
      connection = idle.pop()
    }
    if (!connection && open < CONCURRENCY) {
      open++
      connection = new Connection()
    }
    // a waiter handed undefined may open a connection of its own
    connection ??= (await new Promise<Connection | undefined>((resolve) => connectionWaiters.push(resolve))) ?? (open++, new Connection())
    try {
      return await connection.send(request)
    } catch (error) {
      if (!connection.closed || attempt >= 3) throw error
    } finally {
      if (connection.closed) {
        connection.destroy()
        open--
        connectionWaiters.shift()?.(undefined)
      } else if (connectionWaiters.length > 0) connectionWaiters.shift()!(connection)
      else idle.push(connection)
    }
  }
}
/** Posts a batch until the collector takes it (503 and 429 are retried, as SDKs do). */
const send = async (body: Buffer) => {
  for (let attempt = 0; ; attempt++) {
    const status = await post(body)
    if (status === 200) return
    if (status !== 503 && status !== 429) throw new Error(`collector answered ${status}`)
    await sleep(Math.min(1_000, 50 * 2 ** attempt))
  }
}
const rows = async (prefix: string) => Number((await store.pool.query(`SELECT count(*) AS n FROM events WHERE project = 'bench' AND message_id LIKE $1`, [`${prefix}-%`])).rows[0].n)
const waitForRows = async (prefix: string, expected: number, progress: boolean) => {
  let last = -1
  let lastChange = performance.now()
  let lastReport = performance.now()
  for (;;) {
    const n = await rows(prefix)
    if (n === expected) return performance.now()
    if (n !== last) { last = n; lastChange = performance.now() }
    if (performance.now() - lastChange > 120_000) throw new Error(`stalled at ${n} of ${expected} rows`)
    if (progress && performance.now() - lastReport > 10_000) {
      lastReport = performance.now()
      log(`  ${n.toLocaleString('en')} / ${expected.toLocaleString('en')} rows committed`)
    }
    // a count is a scan of the rows so far, on the same two cores: once a second, and the
    // time of the last commit comes from the rows themselves (lastStoredAt)
    await sleep(1_000)
  }
}
/** Wall-clock ms of the last commit of these rows: stored_at is the start of the sink's transaction. */
const lastStoredAt = async (prefix: string) => Number((await store.pool.query(`SELECT extract(epoch FROM max(stored_at)) * 1000 AS t FROM events WHERE project = 'bench' AND message_id LIKE $1`, [`${prefix}-%`])).rows[0].t)

/**
 * Waits until sessionize has been delivered every enriched message and sink-sessions has
 * acknowledged (after its commit) every session message, with SEG_SESSIONS not growing for a
 * second after: returns when that first held, and the CPU used by then.
 */
const waitForSessions = async () => {
  let since: { at: number; cpu: Record<string, number>; seq: number } | undefined
  let lastChange = performance.now()
  let lastSeq = -1
  for (;;) {
    const seq = (await jsm.streams.info('SEG_SESSIONS')).state.last_seq
    const sink = await jsm.consumers.info('SEG_SESSIONS', 'sink-sessions_SEG_SESSIONS')
    // sessionize reads SEG_ENRICHED with ordered consumers (not durable): the only ones there in this run
    let sessionizeDelivered = true
    let ordered = 0
    for await (const consumer of jsm.consumers.list('SEG_ENRICHED')) {
      if (consumer.config.durable_name) continue
      ordered++
      if (consumer.num_pending > 0) sessionizeDelivered = false
    }
    const caughtUp = ordered > 0 && sessionizeDelivered && sink.num_pending === 0 && sink.num_ack_pending === 0
    const now = performance.now()
    if (seq !== lastSeq) {
      lastSeq = seq
      lastChange = now
    }
    if (!caughtUp) since = undefined
    else if (!since || since.seq !== seq) since = { at: now, cpu: cpuNow(), seq }
    else if (now - since.at >= 1_000) return since
    if (now - lastChange > 120_000) throw new Error(`sessions stalled at SEG_SESSIONS sequence ${seq}`)
    await sleep(250)
  }
}

/** Messages JetStream has stored so far in every stream (KV buckets included), by stream. */
const storedSoFar = async () => {
  const out: Record<string, number> = {}
  for await (const info of jsm.streams.list()) out[info.config.name] = info.state.last_seq
  return out
}

// 2. Flood
const storedBefore = await storedSoFar()
const floodBodies = bodiesOf([...events('flood', EVENTS, 42, Date.parse('2019-05-01T00:00:00Z'))])
const cpuBefore = cpuNow()
log(`flood: ${floodBodies.length.toLocaleString('en')} batches of ${BATCH} over ${CONCURRENCY} connections`)
const floodStart = performance.now()
const floodStartWall = Date.now()
let next = 0
const sending = Promise.all(Array.from({ length: CONCURRENCY }, async () => {
  while (next < floodBodies.length) await send(floodBodies[next++]!)
}))
const watching = waitForRows('flood', EVENTS, true)
await sending
const acceptedAt = performance.now()
await watching
const rowsCommittedAt = floodStart + (await lastStoredAt('flood')) - floodStartWall
// the sessions too: sessionize shares its process with enrich, and may still be behind
const sessionsDone = await waitForSessions()
const committedAt = Math.max(rowsCommittedAt, sessionsDone.at)
log(`flood: last event row committed after ${((rowsCommittedAt - floodStart) / 1000).toFixed(1)} s, sessions done after ${((sessionsDone.at - floodStart) / 1000).toFixed(1)} s`)
const cpuAfter = sessionsDone.at > rowsCommittedAt ? sessionsDone.cpu : cpuNow()
const cpuPerEvent = Object.fromEntries(Object.entries(cpuAfter).map(([name, seconds]) => [name, Math.round((seconds - cpuBefore[name]!) * 1e6 / EVENTS)]))
const cpuTotal = Object.values(cpuPerEvent).reduce((a, n) => a + n, 0)
log(`flood cpu per event: ${Object.entries(cpuPerEvent).map(([k, v]) => `${k} ${v} µs`).join(', ')}; ${cpuTotal} µs in all (${((cpuTotal * EVENTS / 1e6) / ((committedAt - floodStart) / 1000)).toFixed(2)} cores busy)`)
// every message stored because of the flood: raw, enriched, sessions, state writes, checkpoints
const storedAfter = await storedSoFar()
const hopsByStream: Record<string, number> = Object.fromEntries(Object.entries(storedAfter).map(([name, seq]) => [name, Number(((seq - (storedBefore[name] ?? 0)) / EVENTS).toFixed(3))]).filter(([, n]) => (n as number) > 0))
const STORED_HOPS = Object.values(hopsByStream).reduce((a, n) => a + n, 0)
log(`stored hops per event: ${STORED_HOPS.toFixed(2)} (${Object.entries(hopsByStream).map(([k, v]) => `${k} ${v}`).join(', ')}); baseline ${Math.round(baselinePublishPerS / STORED_HOPS).toLocaleString('en')} events/s`)
const e2ePerS = EVENTS / ((committedAt - floodStart) / 1000)
const collectorPerS = EVENTS / ((acceptedAt - floodStart) / 1000)
log(`flood: collector took them at ${Math.round(collectorPerS).toLocaleString('en')}/s; the last row committed at ${Math.round(e2ePerS).toLocaleString('en')} events/s end to end`)

// 3. Steady, at half that rate
const steadyRate = Math.max(BATCH, Math.round(e2ePerS / 2))
const steadyEvents = Math.round(steadyRate * STEADY_S / BATCH) * BATCH
// event time advances as fast as wall time, as with live traffic: at 50 ms per event it ran
// ~20-50 times faster, and per-user state (sessions, seen ids) grew as many times faster
const steadyBodies = bodiesOf([...events('steady', steadyEvents, 43, Date.parse('2019-06-01T00:00:00Z'), 1000 / steadyRate)])
log(`steady: ${steadyRate.toLocaleString('en')} events/s for ${STEADY_S} s (${steadyEvents.toLocaleString('en')} events)`)
const steadyStart = performance.now()
const intervalMs = 1000 * BATCH / steadyRate
const inFlight: Promise<void>[] = []
for (let i = 0; i < steadyBodies.length; i++) {
  const due = steadyStart + i * intervalMs
  const wait = due - performance.now()
  if (wait > 0) await sleep(wait)
  inFlight.push(send(steadyBodies[i]!))
  if (i % Math.round(steadyRate / BATCH * 30) === 0 && i > 0) log(`  steady: ${Math.round((performance.now() - steadyStart) / 1000)} s, ${(i * BATCH).toLocaleString('en')} sent`)
}
await Promise.all(inFlight)
await waitForRows('steady', steadyEvents, false)
clearInterval(sampler)
const latency = (await store.pool.query(
  `SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - received_at) * 1000) AS p
     FROM events WHERE project = 'bench' AND message_id LIKE 'steady-%'`)).rows[0].p as number[]
log(`steady: latency from acceptance to commit p50 ${Math.round(latency[0]!)} ms, p99 ${Math.round(latency[1]!)} ms`)

/** Least-squares slope of RSS over the last 4 minutes, MB per minute. */
const slope = (samples: { t: number; mb: number }[]) => {
  const end = samples.at(-1)?.t ?? 0
  const window = samples.filter((s) => s.t >= end - 4)
  if (window.length < 3) return Number.NaN
  const mt = window.reduce((a, s) => a + s.t, 0) / window.length
  const mm = window.reduce((a, s) => a + s.mb, 0) / window.length
  return window.reduce((a, s) => a + (s.t - mt) * (s.mb - mm), 0) / window.reduce((a, s) => a + (s.t - mt) ** 2, 0)
}
const slopes = Object.fromEntries(Object.entries(rssSamples).map(([name, samples]) => [name, Number(slope(samples).toFixed(2))]))

// lost and duplicated, over everything sent
const sent = EVENTS + steadyEvents
const stored = await store.pool.query(`SELECT count(*) AS n, count(DISTINCT message_id) AS d FROM events WHERE project = 'bench'`)
const enrichedIds = new Map<string, number>()
await readStream(jetstream(nc), 'SEG_ENRICHED', { filterSubjects: ['seg.bench.enriched.*'] }, (m) => {
  const envelope = decode(m.data) as { type: string; id: string }
  if (envelope.type === 'enriched_event') enrichedIds.set(envelope.id, (enrichedIds.get(envelope.id) ?? 0) + 1)
})
const duplicatedOnStream = [...enrichedIds.values()].reduce((a, n) => a + n - 1, 0)
const lost = sent - Number(stored.rows[0].d)
const duplicated = duplicatedOnStream + Number(stored.rows[0].n) - Number(stored.rows[0].d)
const sessions = await store.sessionTotals('bench')
log(`checked: ${sent.toLocaleString('en')} sent, ${Number(stored.rows[0].n).toLocaleString('en')} rows, ${enrichedIds.size.toLocaleString('en')} distinct enriched events; ${sessions.sessions.toLocaleString('en')} sessions of ${sessions.users.toLocaleString('en')} users`)

for (const child of Object.values(processes)) child.kill('SIGTERM')
await Promise.all(Object.values(processes).map((child) => new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)))))
for (const connection of idle) connection.destroy()
await store.close()
await nc.close()
await Promise.all([nats.close(), database.close()])
closed = true
console.log(JSON.stringify({
  e2e_events_per_s: Math.round(e2ePerS),
  p50_ms: Math.round(latency[0]!),
  p99_ms: Math.round(latency[1]!),
  baseline_per_s: Math.round(baselinePublishPerS / STORED_HOPS),
  baseline_publish_per_s: Math.round(baselinePublishPerS),
  stored_hops: Number(STORED_HOPS.toFixed(2)),
  stored_hops_by_stream: hopsByStream,
  collector_flood_per_s: Math.round(collectorPerS),
  flood_cpu_us_per_event: { ...cpuPerEvent, all: cpuTotal },
  steady_rate_per_s: steadyRate,
  steady_s: STEADY_S,
  peak_rss_mb: Object.fromEntries(Object.entries(peakRss).map(([k, v]) => [k, Math.round(v)])),
  rss_slope_mb_per_min: slopes,
  events: sent,
  users: USERS,
  sessions: sessions.sessions,
  lost,
  duplicated,
  target_e2e_events_per_s: 20_000,
}))
process.exit(0)
