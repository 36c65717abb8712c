import Fastify, { LogController, type FastifyBaseLogger, type FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Logger } from '../config/logger.ts'
import { registerErrorHandler } from './errors.ts'
import { bodyPlugin } from './plugins/body.ts'
import { servicesPlugin, type Services } from './plugins/services.ts'
import { collectorRoutes } from './routes/collector.ts'
import { healthRoutes } from './routes/health.ts'

export interface AppOptions {
  services: Services
  logger: Logger
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
  }).withTypeProvider<TypeBoxTypeProvider>()
  registerErrorHandler(app)
  await app.register(bodyPlugin)
  await app.register(servicesPlugin, { services: options.services })
  await app.register(healthRoutes)
  await app.register(collectorRoutes)
  return app
}

export type App = Awaited<ReturnType<typeof buildApp>>
