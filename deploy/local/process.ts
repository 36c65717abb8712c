import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, existsSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import { connect as tcpConnect } from 'node:net'
import { join } from 'node:path'
import { connectNats } from '../../broker/connect.ts'
import { PipelinedPublisher } from '../../broker/publisher.ts'
import type { Config } from '../../config/env.ts'
import { createLogger, type Logger } from '../../config/logger.ts'
import { buildApp } from '../../gateway/app.ts'
import { openGeo } from '../../operators/enrich/geo.ts'
import { startSteps } from '../../operators/steps.ts'
import { Metrics } from '../../operators/runtime/metrics.ts'
import { createProject, getProject, ProjectCache } from '../../projects/registry.ts'
import { runSimulation } from '../../simulate/run.ts'
import { openStore } from '../../store/store.ts'
import { applyTopology } from '../../topology/apply.ts'
import { segstreamTopology } from '../../topology/definition.ts'
import { natsServerBinary, PROJECT_ROOT } from './tools.ts'

/** The topology as this installation's configuration sizes it. */
const topologyOf = (config: Config) => segstreamTopology({ streamMaxBytes: config.streamMaxBytes })

/** The local stack's ports: beside, not on, the standard ones (a system nats-server or PostgreSQL may hold those). */
export const LOCAL_NATS_PORT = 14222
export const LOCAL_NATS_MONITOR_PORT = 18222
export const LOCAL_DATABASE_PORT = 15432

interface Services {
  nc: Awaited<ReturnType<typeof connectNats>>
  store: Awaited<ReturnType<typeof openStore>>
  publisher: PipelinedPublisher
  projects: ProjectCache
}

async function openServices(config: Config, logger: Logger, databaseUrl: string, poolSize: number, options: { provision: boolean }): Promise<Services> {
  const nc = await connectNats(config.natsUrl, 'segstream', logger.child({ component: 'nats' }), { waitOnFirstConnect: true })
  if (options.provision) await applyTopology(nc, topologyOf(config), { keyGroups: config.keyGroups })
  // one connection (the embedded database): a query waits its turn behind the sinks' batches
  const store = await openStore({ url: databaseUrl, target: config.databaseTarget, poolSize, connectionTimeoutMs: poolSize === 1 ? 60_000 : undefined, logger: logger.child({ component: 'store' }) })
  await store.migrate()
  const projects = new ProjectCache()
  await projects.start(nc)
  const publisher = new PipelinedPublisher(nc, { timeoutMs: config.publishTimeoutMs })
  return { nc, store, publisher, projects }
}

async function closeServices(services: Services): Promise<void> {
  services.projects.stop()
  services.publisher.close()
  await services.nc.drain().catch(() => {})
  await services.store.close().catch(() => {})
}

/** Resolves on the first SIGINT or SIGTERM. */
function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'))
    process.once('SIGTERM', () => resolve('SIGTERM'))
  })
}

const maintenanceOf = (config: Config) => ({
  compressAfterMs: config.compressAfterDays * 86_400_000,
  retentionMs: config.retentionDays === undefined ? undefined : config.retentionDays * 86_400_000,
})

/** The geo database named by SEGSTREAM_GEO_DB, if any (docs/enrich.md). */
async function geoOf(config: Config) {
  if (!config.geoDatabase) return undefined
  try {
    return await openGeo(config.geoDatabase)
  } catch (error) {
    throw new Error(`SEGSTREAM_GEO_DB=${config.geoDatabase}: cannot read it as a MaxMind-format database: ${(error as Error).message}`)
  }
}

export async function runProcess(mode: 'run' | 'gateway' | 'up', args: string[], config: Config): Promise<number> {
  if (mode === 'up') return up(config)
  const logger = createLogger(config.logLevel)
  if (!config.databaseUrl) throw new Error('DATABASE_URL is not set: expected a postgres:// URL')
  const services = await openServices(config, logger, config.databaseUrl, config.databasePoolSize, { provision: false })
  if (mode === 'run') {
    const metrics = new Metrics()
    const steps = await startSteps({ ...services, topology: topologyOf(config), keyGroups: config.keyGroups, logger, metrics, geo: await geoOf(config), maintenance: maintenanceOf(config) }, args)
    const metricsPort = Number(process.env.SEGSTREAM_METRICS_PORT ?? 9464)
    const server = createServer((request, response) => {
      if (request.url !== '/metrics') return void response.writeHead(404).end()
      void metrics.render().then((text) => response.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(text))
    }).listen(metricsPort, config.httpHost)
    logger.info({ steps: steps.steps, metrics: `http://${config.httpHost}:${metricsPort}/metrics` }, 'operators running')
    const signal = await untilSignal()
    logger.info({ signal }, 'stopping: finishing the batches in hand')
    await steps.stop()
    server.close()
  } else {
    const app = await buildApp({ services: { ...services, keyGroups: config.keyGroups }, logger, requestsPerSecond: config.requestsPerSecond })
    await app.listen({ host: config.httpHost, port: config.httpPort })
    const signal = await untilSignal()
    logger.info({ signal }, 'stopping gateway')
    await app.close()
  }
  await closeServices(services)
  return 0
}

function portInUse(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

async function waitForPort(port: number, child: ChildProcess, what: string, log: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode}; see ${log}`)
    if (await portInUse(port)) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`${what} did not listen on port ${port} within 60 s; see ${log}`)
}

/**
 * `make up`: nats-server and the embedded database as child processes, then
 * every operator step and the gateway in this one process (one shared database
 * connection, which the embedded database serves best). Ctrl-C stops it all.
 */
async function up(config: Config): Promise<number> {
  const dataDir = process.env.SEGSTREAM_DATA_DIR ?? join(PROJECT_ROOT, 'data')
  const logDir = join(dataDir, 'logs')
  await mkdir(logDir, { recursive: true })
  const appLog = join(logDir, 'segstream.log')
  const logger = createLogger(config.logLevel, createWriteStream(appLog, { flags: 'a' }))
  const say = (line: string) => console.log(`[segstream] ${line}`)
  const children: { name: string; child: ChildProcess }[] = []

  const startChild = async (name: string, command: string, args: string[], port: number) => {
    if (await portInUse(port)) throw new Error(`port ${port} is already in use (is another "make up" running?); ${name} needs it`)
    const log = join(logDir, `${name}.log`)
    const out = createWriteStream(log, { flags: 'a' })
    // its own process group: Ctrl-C reaches only us, and we stop the children after the operators
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    child.stdout!.pipe(out)
    child.stderr!.pipe(out)
    children.push({ name, child })
    await waitForPort(port, child, name, log)
    say(`${name} listening on 127.0.0.1:${port} (log: ${log})`)
  }

  const stopChildren = async () => {
    for (const { name, child } of children.reverse()) {
      if (child.exitCode !== null) continue
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(timer)
      say(`${name} stopped`)
    }
  }

  try {
    const natsUrl = process.env.SEGSTREAM_NATS_URL ? config.natsUrl : `nats://127.0.0.1:${LOCAL_NATS_PORT}`
    if (!process.env.SEGSTREAM_NATS_URL) {
      await startChild('nats-server', natsServerBinary(), ['-a', '127.0.0.1', '-p', String(LOCAL_NATS_PORT), '-m', String(LOCAL_NATS_MONITOR_PORT), '-js', '-sd', join(dataDir, 'nats')], LOCAL_NATS_PORT)
    }
    let databaseUrl = config.databaseUrl
    let poolSize = config.databasePoolSize
    if (!databaseUrl) {
      await startChild('database', process.execPath, [join(PROJECT_ROOT, 'store/embedded.ts'), '--port', String(LOCAL_DATABASE_PORT), '--data', join(dataDir, 'pglite')], LOCAL_DATABASE_PORT)
      databaseUrl = `postgres://postgres@127.0.0.1:${LOCAL_DATABASE_PORT}/postgres`
      poolSize = 1
      say('database: embedded PGlite with TimescaleDB (set DATABASE_URL to use your own PostgreSQL)')
    } else {
      say(`database: ${new URL(databaseUrl).host} (DATABASE_URL)`)
    }
    const services = await openServices({ ...config, natsUrl }, logger, databaseUrl, poolSize, { provision: true })
    say(`topology applied on ${natsUrl}; database migrated (${services.store.target})`)
    const demo = await ensureDemoProject(services.nc, dataDir)
    const metrics = new Metrics()
    const steps = await startSteps({ ...services, topology: topologyOf(config), keyGroups: config.keyGroups, logger, metrics, geo: await geoOf(config), maintenance: maintenanceOf(config) }, [])
    say(`operators running: ${steps.steps.join(', ')}`)
    const app = await buildApp({ services: { ...services, keyGroups: config.keyGroups }, logger, metrics, requestsPerSecond: config.requestsPerSecond })
    await app.listen({ host: config.httpHost, port: config.httpPort })
    const base = `http://localhost:${config.httpPort}`
    say(`gateway on ${base}  (health: ${base}/readyz)`)
    say(`demo project "${demo.id}": write key ${demo.writeKey}  API key ${demo.apiKey}`)
    say(`try: curl -u ${demo.writeKey}: ${base}/v1/track -H 'content-type: application/json' -d '{"userId":"u1","event":"click_event1"}'`)
    const simulation = startSimulation(config, demo, base, dataDir, logDir, say)
    say(`logs: ${logDir}/ (segstream.log, nats-server.log${config.databaseUrl ? '' : ', database.log'}); Ctrl-C stops everything`)
    const signal = await untilSignal()
    say(`${signal}: stopping (finishing the batches in hand)`)
    await simulation.stop()
    await app.close()
    await steps.stop()
    await closeServices(services)
  } catch (error) {
    console.error(`[segstream] failed: ${(error as Error).message}`)
    logger.error({ err: error }, 'local stack failed')
    await stopChildren()
    return 1
  }
  await stopChildren()
  say('stopped')
  return 0
}

/**
 * Feeds the demo project with the simulator's scenario (SEGSTREAM_SIMULATE), so a new user sees
 * data at once. How far it got is kept in data/simulate.json: a restart resumes there.
 */
function startSimulation(config: Config, demo: { writeKey: string; apiKey: string }, url: string, dataDir: string, logDir: string, say: (line: string) => void) {
  if (config.simulate === 'off') return { stop: async () => {} }
  const mode = config.simulate === 'import' && demo.apiKey.startsWith('sk_') ? 'import' : 'live'
  const stateFile = join(dataDir, 'simulate.json')
  const controller = new AbortController()
  const progress = createWriteStream(join(logDir, 'simulate.log'), { flags: 'a' })
  const running = (async () => {
    const saved = existsSync(stateFile) ? JSON.parse(await readFile(stateFile, 'utf8')) as { sent: number; done: boolean } : { sent: 0, done: false }
    if (saved.done) {
      say(`simulator: the scenario was sent in full before (${stateFile}); delete that file to send it again`)
      return
    }
    say(`simulator: ${config.simulateUsers} people acquired in 2019 (Europe/Berlin, until 2019-12-31) into project "demo", ${mode}${mode === 'live' ? ` at ${config.simulateRate} messages/s` : ''} (SEGSTREAM_SIMULATE=off to stop it; progress: ${join(logDir, 'simulate.log')})`)
    const result = await runSimulation({
      mode, url, writeKey: demo.writeKey, apiKey: demo.apiKey, rate: mode === 'live' ? config.simulateRate : 0, skip: saved.sent,
      simulation: { users: config.simulateUsers, idPrefix: 'demo', until: '2019-12-31' }, expected: join(dataDir, 'simulate.expected.json'), signal: controller.signal, progress,
    })
    const sent = saved.sent + result.handled
    await writeFile(stateFile, `${JSON.stringify({ sent, done: !result.stopped })}\n`)
    if (!result.stopped) say(`simulator: done, ${sent} messages sent (the expected answers: ${join(dataDir, 'simulate.expected.json')})`)
  })().catch((error) => say(`simulator stopped: ${(error as Error).message}`))
  return {
    async stop() {
      controller.abort()
      await running
      progress.end()
    },
  }
}

/** The demo project's keys are kept in data/ so every `make up` can print them (the API key is not recoverable from NATS). */
async function ensureDemoProject(nc: Services['nc'], dataDir: string): Promise<{ id: string; writeKey: string; apiKey: string }> {
  const file = join(dataDir, 'demo-project.json')
  if (existsSync(file)) {
    const saved = JSON.parse(await readFile(file, 'utf8')) as { id: string; writeKey: string; apiKey: string }
    if (await getProject(nc, saved.id)) return saved
  }
  const existing = await getProject(nc, 'demo')
  if (existing) return { id: existing.id, writeKey: existing.writeKeys[0]!, apiKey: `(not recoverable: ${file} is gone; create another project)` }
  const { project, apiKey } = await createProject(nc, { id: 'demo', name: 'Demo', timezone: 'Europe/Berlin' })
  const saved = { id: project.id, writeKey: project.writeKeys[0]!, apiKey }
  await writeFile(file, JSON.stringify(saved, null, 2))
  return saved
}
