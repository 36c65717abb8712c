import Fastify, { LogController, type FastifyBaseLogger, type FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import cors from '@fastify/cors'
import rateLimit from '@fastify/rate-limit'
import websocket from '@fastify/websocket'
import type { Logger } from '../config/logger.ts'
import { registerErrorHandler } from './errors.ts'
import { bodyPlugin } from './plugins/body.ts'
import { servicesPlugin, type Services } from './plugins/services.ts'
import { collectorRoutes } from './routes/collector.ts'
import { healthRoutes } from './routes/health.ts'
import { trackerRoutes } from './routes/tracker.ts'
import { metricsRoutes } from './routes/metrics.ts'
import { exploreRoutes } from './routes/explore.ts'
import { liveRoutes } from './routes/live.ts'
import { funnelRoutes } from './routes/funnels.ts'
import { openapiPlugin } from './routes/openapi.ts'
import { Metrics } from '../operators/runtime/metrics.ts'

export interface AppOptions {
  services: Services
  logger: Logger
  /** Operator metrics to serve on /metrics (those of operators running in this process). */
  metrics?: Metrics
  /** Requests per second per write key before the collector answers 429. Default 1000. */
  requestsPerSecond?: number
  /** Trust X-Forwarded-For (behind a load balancer). Default true. */
  trustProxy?: FastifyServerOptions['trustProxy']
}

/** Plugins, then services, then routes. Listening is server.ts's job. */
export async function buildApp(options: AppOptions) {
  const app = Fastify({
    loggerInstance: options.logger.child({ component: 'gateway' }) as FastifyBaseLogger,
    trustProxy: options.trustProxy ?? true,
    // one log line per collected event would drown everything else
    logController: new LogController({ disableRequestLogging: true }),
    // `type: [...]` (a value of several JSON types, e.g. a filter's value) without coercing it to the first
    ajv: { customOptions: { allowUnionTypes: true } },
  }).withTypeProvider<TypeBoxTypeProvider>()
  registerErrorHandler(app)
  await app.register(bodyPlugin)
  // browser trackers post from any site; write keys are public, nothing rides on cookies
  await app.register(cors, { origin: '*', methods: ['GET', 'POST', 'PUT', 'DELETE', 'OPTIONS'], allowedHeaders: ['content-type', 'authorization', 'content-encoding'], maxAge: 86_400 })
  await app.register(rateLimit, { global: false })
  // the live counts' socket (routes/live.ts); a message is a small JSON watch
  await app.register(websocket, { options: { maxPayload: 64 * 1024 } })
  await app.register(servicesPlugin, { services: options.services })
  // before every route: it documents the routes registered after it
  await app.register(openapiPlugin)
  await app.register(healthRoutes)
  await app.register(collectorRoutes, { requestsPerSecond: options.requestsPerSecond })
  await app.register(trackerRoutes)
  await app.register(metricsRoutes, { metrics: options.metrics ?? new Metrics() })
  await app.register(exploreRoutes)
  await app.register(liveRoutes)
  await app.register(funnelRoutes)
  return app
}

export type App = Awaited<ReturnType<typeof buildApp>>
