import fp from 'fastify-plugin'
import type { NatsConnection } from '@nats-io/transport-node'
import type { PipelinedPublisher } from '../../broker/publisher.ts'
import type { ProjectCache } from '../../projects/registry.ts'
import type { Store } from '../../store/store.ts'

/** What routes use; built by the caller so tests hand in real servers. */
export interface Services {
  nc: NatsConnection
  publisher: PipelinedPublisher
  projects: ProjectCache
  store: Store
  keyGroups: number
}

declare module 'fastify' {
  interface FastifyInstance {
    services: Services
  }
}

export const servicesPlugin = fp<{ services: Services }>(async (app, options) => {
  app.decorate('services', options.services)
}, { name: 'services' })
