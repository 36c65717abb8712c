import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import Type from 'typebox'
import type { Project } from '../../projects/model.ts'
import { SEGMENT_TYPES, type SegmentType } from '../../schemas/segment.ts'
import { collect, type CollectResult } from '../collector/collect.ts'
import { MAX_BATCH_BYTES, MAX_MESSAGE_BYTES } from '../collector/normalize.ts'
import { WatermarkTicker } from '../collector/watermarks.ts'
import { BadRequestError, UnauthorizedError } from '../errors.ts'

const Rejection = Type.Object({ index: Type.Integer(), messageId: Type.Optional(Type.String()), reason: Type.String() })
const Accepted = Type.Object({
  success: Type.Boolean(),
  accepted: Type.Integer({ description: 'messages stored by JetStream' }),
  duplicates: Type.Integer({ description: 'of those, already stored under the same messageId' }),
  rejected: Type.Array(Rejection, { description: 'messages refused, each with its reason; they went to the dead-letter subject' }),
})
const ErrorBody = Type.Object({
  error: Type.String(),
  message: Type.String(),
  dependency: Type.Optional(Type.String({ description: 'on 503: nats or database' })),
  details: Type.Optional(Type.Unknown()),
  rejected: Type.Optional(Type.Array(Rejection, { description: 'on 400 for a batch: why each message was refused' })),
})
const responses = { 200: Accepted, 400: ErrorBody, 401: ErrorBody, 503: ErrorBody }

/** A key sent as HTTP Basic user name (what Segment clients do) or as a Bearer token. */
export function keyFromHeader(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization
  if (header?.startsWith('Basic ')) {
    const user = Buffer.from(header.slice(6), 'base64').toString('utf8').split(':')[0]
    if (user) return user
  }
  if (header?.startsWith('Bearer ')) return header.slice(7).trim() || undefined
  return undefined
}

/** The write key: from the Authorization header, else `writeKey` in the body. */
function writeKeyOf(request: FastifyRequest): string | undefined {
  const body = request.body as { writeKey?: unknown } | undefined
  return keyFromHeader(request) ?? (typeof body?.writeKey === 'string' ? body.writeKey : undefined)
}

/** Historical imports may send far larger batches than live traffic. */
export const MAX_IMPORT_BYTES = 16 * 1024 * 1024

export interface CollectorOptions {
  /** Requests per second per write key before 429. Default 1000. */
  requestsPerSecond?: number
}

export const collectorRoutes: FastifyPluginAsyncTypebox<CollectorOptions> = async (app, options) => {
  // limited per write key (not per IP: many users of one site share a key, and one NAT many sites)
  const rateLimit = {
    max: options.requestsPerSecond ?? 1000,
    timeWindow: 1000,
    hook: 'preHandler' as const,
    keyGenerator: (request: FastifyRequest) => writeKeyOf(request) ?? request.ip,
  }
  const authenticate = (request: FastifyRequest): Project => {
    const writeKey = writeKeyOf(request)
    if (!writeKey) throw new UnauthorizedError('missing write key: send it as the HTTP Basic user name or as "writeKey" in the body')
    const project = app.services.projects.byWriteKey(writeKey)
    if (!project) throw new UnauthorizedError('unknown write key')
    return project
  }

  const answer = ({ accepted, duplicates, rejected }: CollectResult, status: 200 | 400) => ({ success: status === 200, accepted, duplicates, rejected })

  // every key group learns how far the project's event time has got (gateway/collector/watermarks.ts)
  const watermarks = new WatermarkTicker(app.services.publisher, app.services.keyGroups)
  app.addHook('onClose', () => watermarks.stop())
  const noted = (project: string, stage: 'raw' | 'import', result: CollectResult) => {
    if (result.newestTime !== undefined) watermarks.note(project, stage, result.newestTime)
    return result
  }

  const batchHandler = (stage: 'raw' | 'import', authenticateRequest: (request: FastifyRequest) => Project) =>
    async (request: FastifyRequest, reply: FastifyReply) => {
      const project = authenticateRequest(request)
      const body = request.body as { batch?: unknown; sentAt?: unknown } | null
      if (typeof body !== 'object' || body === null || !Array.isArray(body.batch)) throw new BadRequestError('batch must be an array of messages')
      if (body.batch.length === 0) throw new BadRequestError('batch is empty')
      const result = noted(project.id, stage, await collect(app.services.publisher, {
        project: project.id, keyGroups: app.services.keyGroups, stage, messages: body.batch,
        stamp: { receivedAt: Date.now(), batchSentAt: body.sentAt, clientIp: request.ip },
      }))
      if (result.accepted === 0) {
        return reply.code(400).send({ error: 'bad_request', message: `every message was rejected: ${result.rejected[0]!.reason}`, rejected: result.rejected })
      }
      return reply.code(200).send(answer(result, 200))
    }

  app.post('/v1/batch', { bodyLimit: MAX_BATCH_BYTES, config: { rateLimit }, schema: { body: Type.Unknown(), response: responses } }, batchHandler('raw', authenticate))

  /** History: the batch format, the project's API key, its own subject so live traffic is undisturbed. */
  app.post('/v1/import', { bodyLimit: MAX_IMPORT_BYTES, schema: { body: Type.Unknown(), response: responses } }, batchHandler('import', (request) => {
    const apiKey = keyFromHeader(request)
    if (!apiKey) throw new UnauthorizedError('missing API key: send it as a Bearer token or the HTTP Basic user name')
    const project = app.services.projects.byApiKey(apiKey)
    if (!project) throw new UnauthorizedError('unknown API key')
    return project
  }))

  for (const type of SEGMENT_TYPES) {
    app.post(`/v1/${type}`, { bodyLimit: MAX_MESSAGE_BYTES + 1024, config: { rateLimit }, schema: { body: Type.Unknown(), response: responses } }, async (request, reply) => {
      const project = authenticate(request)
      const result = noted(project.id, 'raw', await collect(app.services.publisher, {
        project: project.id, keyGroups: app.services.keyGroups, stage: 'raw', messages: [request.body],
        stamp: { receivedAt: Date.now(), clientIp: request.ip }, forcedType: type as SegmentType,
      }))
      if (result.accepted === 0) return reply.code(400).send({ error: 'bad_request', message: result.rejected[0]!.reason, rejected: result.rejected })
      return reply.code(200).send(answer(result, 200))
    })
  }
}
