import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import Type from 'typebox'

const Check = Type.Object({ ok: Type.Boolean(), message: Type.Optional(Type.String()) })
const Ready = Type.Object({ ready: Type.Boolean(), nats: Check, database: Check, projects: Check })

export const healthRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/healthz', { schema: { response: { 200: Type.Object({ ok: Type.Boolean() }) } } }, async () => ({ ok: true }))

  /** Ready when NATS is connected and the database answers; 503 names what is not. */
  app.get('/readyz', { schema: { response: { 200: Ready, 503: Ready } } }, async (request, reply) => {
    const { nc, store, projects } = app.services
    const nats = nc.isClosed() ? { ok: false, message: 'connection closed' } : nc.info ? { ok: true } : { ok: false, message: 'not connected' }
    let database: { ok: boolean; message?: string } = { ok: true }
    try {
      await store.ping()
    } catch (error) {
      database = { ok: false, message: (error as Error).message }
    }
    const body = { ready: nats.ok && database.ok, nats, database, projects: { ok: true, message: `${projects.size} projects` } }
    if (!body.ready) request.log.warn(body, 'not ready')
    return reply.code(body.ready ? 200 : 503).send(body)
  })
}
