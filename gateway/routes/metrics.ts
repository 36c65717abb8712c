import type { FastifyPluginAsync } from 'fastify'
import type { Metrics } from '../../operators/runtime/metrics.ts'

/** Prometheus text for this process: the operators running in it, if any. */
export const metricsRoutes: FastifyPluginAsync<{ metrics: Metrics }> = async (app, options) => {
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', 'text/plain; version=0.0.4; charset=utf-8')
    return options.metrics.render()
  })
}
