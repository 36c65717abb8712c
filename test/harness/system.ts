import type { GeoLookup } from '../../operators/enrich/geo.ts'
import type { NatsConnection } from '@nats-io/transport-node'
import { PipelinedPublisher } from '../../broker/publisher.ts'
import { connectNats } from '../../broker/connect.ts'
import { createLogger } from '../../config/logger.ts'
import { buildApp, type App } from '../../gateway/app.ts'
import { startSteps } from '../../operators/steps.ts'
import { createProject, ProjectCache } from '../../projects/registry.ts'
import type { Project } from '../../projects/model.ts'
import { openStore, type Store } from '../../store/store.ts'
import { applyTopology } from '../../topology/apply.ts'
import { segstreamTopology } from '../../topology/definition.ts'
import { startNats, type NatsServer } from './nats.ts'
import type { DatabaseServer } from './postgres.ts'

export interface System {
  nats: NatsServer
  database: DatabaseServer
  nc: NatsConnection
  store: Store
  app: App
  projects: ProjectCache
  publisher: PipelinedPublisher
  keyGroups: number
  createProject(id: string, timezone?: string): Promise<{ project: Project; apiKey: string }>
  /** Starts the operator steps in this process. */
  startOperators(stepIds?: string[]): ReturnType<typeof startSteps>
  close(): Promise<void>
}

/**
 * The whole system on real servers: a nats-server, a database of the given
 * target, the topology applied, migrations run, the gateway built (use
 * app.inject) and, on demand, the operators.
 */
export async function startSystem(options: {
  database: () => Promise<DatabaseServer>
  poolSize: number
  keyGroups?: number
  /** Collector rate limit per write key (requests per second). */
  requestsPerSecond?: number
  /** Receives every log line (JSON) at level info and above. */
  logLines?: string[]
  /** JetStream's duplicate window, ms (shortened to test late duplicates). */
  duplicateWindowMs?: number
  /** IP → country for enrich (a test .mmdb); none by default. */
  geo?: GeoLookup
}): Promise<System> {
  const lines = options.logLines
  const logger = lines
    ? createLogger('info', { write: (line: string) => { lines.push(line); return true } } as unknown as NodeJS.WritableStream)
    : createLogger(process.env.TEST_LOG_LEVEL ?? 'silent')
  const keyGroups = options.keyGroups ?? 8
  const [nats, database] = await Promise.all([startNats(), options.database()])
  const nc = await connectNats(nats.url, 'test', logger)
  const topology = segstreamTopology({ streamMaxBytes: 256 * 1024 * 1024, duplicateWindowMs: options.duplicateWindowMs })
  await applyTopology(nc, topology, { keyGroups })
  const store = await openStore({ url: database.url, poolSize: options.poolSize, logger })
  await store.migrate()
  const projects = new ProjectCache()
  await projects.start(nc)
  const publisher = new PipelinedPublisher(nc, { timeoutMs: 2_000 })
  const app = await buildApp({ services: { nc, publisher, projects, store, keyGroups }, logger, requestsPerSecond: options.requestsPerSecond })
  const running: Awaited<ReturnType<typeof startSteps>>[] = []
  return {
    nats, database, nc, store, app, projects, publisher, keyGroups,
    async createProject(id, timezone) {
      const created = await createProject(nc, { id, timezone })
      for (let i = 0; i < 100 && !projects.byId(id); i++) await new Promise((r) => setTimeout(r, 20))
      return created
    },
    async startOperators(stepIds = []) {
      const steps = await startSteps({ nc, publisher, store, projects, topology, keyGroups, logger, geo: options.geo, leaseMs: 2_000, heartbeatMs: 250 }, stepIds)
      running.push(steps)
      return steps
    },
    async close() {
      for (const steps of running) await steps.stop()
      await app.close()
      projects.stop()
      publisher.close()
      await nc.close()
      await store.close()
      await Promise.all([nats.close(), database.close()])
    },
  }
}

/** Polls until `check` returns true, or fails after `timeoutMs` with `what`. */
export async function eventually(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}
