import type { FastifyError, FastifyInstance } from 'fastify'
import { PublishError } from '../broker/publisher.ts'
import { DatabaseUnavailableError } from '../store/store.ts'

/** A client mistake with a reason the client can act on. */
export class BadRequestError extends Error {
  readonly code = 'SEG_BAD_REQUEST'
  readonly statusCode = 400
  readonly details: unknown
  constructor(message: string, details?: unknown) {
    super(message)
    this.details = details
  }
}

export class UnauthorizedError extends Error {
  readonly code = 'SEG_UNAUTHORIZED'
  readonly statusCode = 401
}

/**
 * The one error handler. Segment SDKs retry everything but 2xx and 400, so every
 * client mistake is a 400 naming what is wrong, and every outage a 503.
 */
export function registerErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error instanceof PublishError) {
      request.log.error({ err: error, dependency: 'nats' }, 'NATS unavailable: events not acknowledged')
      return reply.code(503).header('retry-after', '1').send({ error: 'unavailable', dependency: 'nats', message: error.message })
    }
    if (error instanceof DatabaseUnavailableError) {
      request.log.error({ err: error, dependency: 'database' }, 'database unavailable')
      return reply.code(503).header('retry-after', '1').send({ error: 'unavailable', dependency: 'database', message: error.message })
    }
    if (error instanceof BadRequestError) return reply.code(400).send({ error: 'bad_request', message: error.message, details: error.details })
    if (error instanceof UnauthorizedError) return reply.code(401).send({ error: 'unauthorized', message: error.message })
    if (error.statusCode === 429) return reply.code(429).send({ error: 'rate_limited', message: error.message })
    if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return reply.code(400).send({ error: 'bad_request', message: `request body is larger than the limit of ${request.routeOptions.bodyLimit} bytes` })
    if (error.validation) return reply.code(400).send({ error: 'bad_request', message: `${error.validationContext ?? 'request'}${error.message.startsWith('/') ? '' : ' '}${error.message}` })
    if (error.statusCode && error.statusCode >= 400 && error.statusCode < 500) {
      return reply.code(error.statusCode === 413 || error.statusCode === 415 ? 400 : error.statusCode).send({ error: 'bad_request', message: error.message })
    }
    request.log.error({ err: error }, 'unhandled error')
    return reply.code(500).send({ error: 'internal', message: 'internal error' })
  })
  app.setNotFoundHandler((request, reply) => reply.code(404).send({ error: 'not_found', message: `no route ${request.method} ${request.url}` }))
}
