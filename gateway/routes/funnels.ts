import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyError, FastifyRequest } from 'fastify'
import { publishControl } from '../../operators/runtime/control.ts'
import type { Project } from '../../projects/model.ts'
import { funnelDefinitionProblems, type FunnelDefinition as Definition } from '../../schemas/funnel.ts'
import { ExploreInputError, ExploreTimeoutError, type ExploreContext } from '../../store/explore.ts'
import {
  createFunnel, deleteFunnel, funnelAudience, FunnelExistsError, FunnelNotFoundError, funnelResult, funnelTrends, getFunnel, listFunnels, replaceFunnel,
  streamFunnelAudience, type StoredFunnel,
} from '../../store/funnels.ts'
import type { Stage } from '../../topology/subjects.ts'
import { BadRequestError, UnauthorizedError } from '../errors.ts'
import { audienceCsvHeader, audienceCsvRows } from '../funnels/csv.ts'
import {
  AudienceAnswer, AudienceQuery, ErrorBody, FunnelAnswer, FunnelChangedAnswer, FunnelDefinition, FunnelDeletedAnswer, FunnelParams, FunnelsAnswer, ResultAnswer, ResultQuery, TrendsAnswer, TrendsQuery,
} from '../funnels/schemas.ts'
import { FUNNEL_STEP_ID, funnelStages } from '../funnels/stages.ts'
import { keyFromHeader } from './collector.ts'

const errors = { 400: ErrorBody, 401: ErrorBody, 503: ErrorBody }
const security: { [scheme: string]: string[] }[] = [{ apiKey: [] }, { basic: [] }]
// the body is a definition checked by funnelDefinitionProblems; Ajv would strip unknown fields instead of refusing them
const definitionChecked = { validatorCompiler: () => () => true }

/**
 * The funnel API (docs/funnels.md, "API"): definitions, published to the funnel step as control
 * messages, and what the step made of them: counts per step, trends, audiences (JSON pages or
 * CSV). Every route reads only the project of its API key.
 */
export const funnelRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const authenticate = (request: FastifyRequest): Project => {
    const apiKey = keyFromHeader(request)
    if (!apiKey) throw new UnauthorizedError('missing API key: send it as a Bearer token or the HTTP Basic user name')
    const project = app.services.projects.byApiKey(apiKey)
    if (!project) throw new UnauthorizedError('unknown API key')
    return project
  }
  const contextOf = (project: Project, timeoutMs?: number): ExploreContext => ({ project: project.id, timezone: project.timezone, timeoutMs })
  const db = () => app.services.store.pool
  // looked up when first needed, from the topology the code defines
  let stages: Stage[] | undefined

  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error instanceof ExploreInputError) throw new BadRequestError(error.message)
    if (error instanceof FunnelNotFoundError) return reply.code(404).send({ error: 'not_found', message: error.message })
    if (error instanceof FunnelExistsError) return reply.code(409).send({ error: 'conflict', message: error.message })
    if (error instanceof ExploreTimeoutError) {
      request.log.warn({ err: error, url: request.url }, 'funnel query timed out')
      return reply.code(503).header('retry-after', '5').send({ error: 'query_timeout', reason: 'statement_timeout', message: error.message, timeoutMs: error.timeoutMs })
    }
    throw error
  })

  const publish = (project: Project, funnel: StoredFunnel, definition: Definition | null) =>
    publishControl(app.services.publisher, {
      project: project.id, stages: (stages ??= funnelStages()), keyGroups: app.services.keyGroups, time: Date.now(),
      control: { stepId: FUNNEL_STEP_ID, name: funnel.id, version: funnel.version, definition },
    }).then(() => {})

  /** The body as a definition, or a 400 listing every problem funnelDefinitionProblems finds. */
  const definitionOf = (body: unknown, id?: string): Definition => {
    let value = body
    if (id !== undefined && typeof body === 'object' && body !== null && !Array.isArray(body)) {
      const given = (body as { id?: unknown }).id
      if (given !== undefined && given !== id) throw new BadRequestError(`id: the body's id ${JSON.stringify(given)} is not the path's "${id}"; a funnel's id does not change`)
      value = { ...body, id }
    }
    const problems = funnelDefinitionProblems(value)
    if (problems.length > 0) throw new BadRequestError(`the funnel definition is not valid: ${problems.join('; ')}`, { problems })
    return value as Definition
  }

  const notFound = { 404: ErrorBody }

  app.post('/v1/funnels', {
    schema: {
      summary: 'Create a funnel: published to the funnel step, backfill pending', tags: ['funnels'], security, body: FunnelDefinition,
      response: { 201: FunnelAnswer, 409: ErrorBody, ...errors },
    },
    ...definitionChecked,
  }, async (request, reply) => {
    const project = authenticate(request)
    const definition = definitionOf(request.body)
    const funnel = await createFunnel(db(), contextOf(project), definition, (stored) => publish(project, stored, stored.definition))
    return reply.code(201).send(funnel)
  })

  app.get('/v1/funnels', {
    schema: { summary: 'The project\'s funnels, oldest first', tags: ['funnels'], security, response: { 200: FunnelsAnswer, ...errors } },
  }, async (request) => {
    const project = authenticate(request)
    return { funnels: await listFunnels(db(), contextOf(project)) }
  })

  app.get('/v1/funnels/:id', {
    schema: { summary: 'One funnel: its definition, version and backfill', tags: ['funnels'], security, params: FunnelParams, response: { 200: FunnelAnswer, ...notFound, ...errors } },
  }, async (request) => {
    const project = authenticate(request)
    return getFunnel(db(), contextOf(project), request.params.id)
  })

  app.put('/v1/funnels/:id', {
    schema: {
      summary: 'Change a funnel: a new version published to the funnel step (progress starts afresh, backfill pending), or in place when only the name or segment changes',
      tags: ['funnels'], security, params: FunnelParams, body: FunnelDefinition, response: { 200: FunnelChangedAnswer, ...notFound, ...errors },
    },
    ...definitionChecked,
  }, async (request) => {
    const project = authenticate(request)
    const { id } = request.params as { id: string }
    const definition = definitionOf(request.body, id)
    return replaceFunnel(db(), contextOf(project), definition, (stored) => publish(project, stored, stored.definition))
  })

  app.delete('/v1/funnels/:id', {
    schema: { summary: 'Delete a funnel (and publish its end to the funnel step)', tags: ['funnels'], security, params: FunnelParams, response: { 200: FunnelDeletedAnswer, ...notFound, ...errors } },
  }, async (request) => {
    const project = authenticate(request)
    const deleted = await deleteFunnel(db(), contextOf(project), request.params.id, (stored) => publish(project, stored, null))
    return { deleted: true, id: deleted.id, version: deleted.version }
  })

  app.get('/v1/funnels/:id/result', {
    schema: {
      summary: 'Per step: users reached, conversion, drop-off (in progress / dropped), time to convert; optionally per breakdown value', tags: ['funnels'], security,
      params: FunnelParams, querystring: ResultQuery, response: { 200: ResultAnswer, ...notFound, ...errors },
    },
  }, async (request) => {
    const project = authenticate(request)
    const { from, to, breakdown, timeoutMs } = request.query
    return funnelResult(db(), contextOf(project, timeoutMs), request.params.id, { from, to, breakdown })
  })

  app.get('/v1/funnels/:id/trends', {
    schema: {
      summary: 'Conversion by day or week of the first step, in the project\'s timezone', tags: ['funnels'], security,
      params: FunnelParams, querystring: TrendsQuery, response: { 200: TrendsAnswer, ...notFound, ...errors },
    },
  }, async (request) => {
    const project = authenticate(request)
    const { interval, from, to, timeoutMs } = request.query
    return funnelTrends(db(), contextOf(project, timeoutMs), request.params.id, { interval, from, to })
  })

  app.get('/v1/funnels/:id/audiences', {
    schema: {
      summary: 'The users who reached exactly one step and not the next: a page of JSON, or every one as CSV (Accept: text/csv or ?format=csv)', tags: ['funnels'], security,
      params: FunnelParams, querystring: AudienceQuery, response: { 200: AudienceAnswer, ...notFound, ...errors },
    },
  }, async (request, reply) => {
    const project = authenticate(request)
    const { level, status, from, to, limit, cursor, format, timeoutMs } = request.query
    const context = contextOf(project, timeoutMs)
    const { id } = request.params
    const wantsCsv = format === 'csv' || (format === undefined && /\btext\/csv\b/.test(request.headers.accept ?? ''))
    if (!wantsCsv) return funnelAudience(db(), context, id, { level, status, from, to, limit, cursor })
    // checked, and the first page read, before the status goes out: mistakes and timeouts stay 400 / 503
    const { pages } = await streamFunnelAudience(db(), context, id, { level, status, from, to, cursor })
    const body = Readable.from((async function* () {
      yield audienceCsvHeader(level)
      for await (const users of pages) yield audienceCsvRows(users)
    })())
    body.on('error', (error) => request.log.error({ err: error }, 'CSV export ended early'))
    return reply.code(200).header('content-type', 'text/csv; charset=utf-8')
      .header('content-disposition', `attachment; filename="${project.id}-${id}-level${level}-${status ?? 'all'}.csv"`)
      // a stream bypasses the JSON schema's serializer; the type provider only knows the JSON answer
      .send(body as never)
  })
}
