import { randomBytes } from 'node:crypto'
import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyError, FastifyRequest } from 'fastify'
import { publishControl } from '../../operators/runtime/control.ts'
import type { Project } from '../../projects/model.ts'
import {
  countBy, createSegment, deleteSegment, ExploreInputError, ExploreTimeoutError, getSegment, listDimensions, listEventNames, listSegments, listUsers, streamUsers,
  type ExploreContext, type Filter, type Segment,
} from '../../store/explore.ts'
import { BadRequestError, UnauthorizedError } from '../errors.ts'
import { CSV_HEADER, csvRows } from '../explore/csv.ts'
import {
  CountAnswer, CountBody, DeletedAnswer, DimensionsAnswer, ErrorBody, SegmentAnswer, SegmentBody, SegmentParams, SegmentsAnswer, UsersAnswer, UsersBody, UsersQuery,
} from '../explore/schemas.ts'
import { keyFromHeader } from './collector.ts'

/** The step saved segments are published to (as control messages on its input stage). */
export const SEGMENT_STEP_ID = 'profile'
const errors = { 400: ErrorBody, 401: ErrorBody, 503: ErrorBody }
const security: { [scheme: string]: string[] }[] = [{ apiKey: [] }, { basic: [] }]

/**
 * The exploration API (docs/explore.md): dimensions, counts, the users behind a count (JSON
 * pages or CSV), saved segments. Every route reads only the project of its API key.
 */
export const exploreRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const authenticate = (request: FastifyRequest): Project => {
    const apiKey = keyFromHeader(request)
    if (!apiKey) throw new UnauthorizedError('missing API key: send it as a Bearer token or the HTTP Basic user name')
    const project = app.services.projects.byApiKey(apiKey)
    if (!project) throw new UnauthorizedError('unknown API key')
    return project
  }
  const contextOf = (project: Project, timeoutMs?: number): ExploreContext => ({ project: project.id, timezone: project.timezone, timeoutMs })
  const db = () => app.services.store.pool

  // the store's own errors, in the gateway's words; everything else goes on to the central handler
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error instanceof ExploreInputError) throw new BadRequestError(error.message)
    if (error instanceof ExploreTimeoutError) {
      request.log.warn({ err: error, url: request.url }, 'exploration query timed out')
      return reply.code(503).header('retry-after', '5').send({ error: 'query_timeout', reason: 'statement_timeout', message: error.message, timeoutMs: error.timeoutMs })
    }
    throw error
  })

  const publishSegment = (project: Project, segment: Segment, definition: unknown) =>
    publishControl(app.services.publisher, {
      project: project.id, stages: ['enriched'], keyGroups: app.services.keyGroups, time: Date.now(),
      control: { stepId: SEGMENT_STEP_ID, name: `segment:${segment.id}`, version: segment.version, definition },
    }).then(() => {})

  app.get('/v1/dimensions', {
    schema: { summary: 'Every dimension users can be counted or filtered by, and the event names behavioural conditions can match', tags: ['explore'], security, response: { 200: DimensionsAnswer, ...errors } },
  }, async (request) => {
    const project = authenticate(request)
    return { dimensions: await listDimensions(db(), project.id), events: await listEventNames(db(), project.id) }
  })

  app.post('/v1/explore/counts', {
    schema: { summary: 'Users matching a filter, counted by one dimension', tags: ['explore'], security, body: CountBody, response: { 200: CountAnswer, ...errors } },
  }, async (request) => {
    const project = authenticate(request)
    const { dimension, filter, limit, timeoutMs } = request.body
    return countBy(db(), contextOf(project, timeoutMs), { dimension, filter: filter as Filter | undefined, limit })
  })

  app.post('/v1/explore/users', {
    schema: {
      summary: 'The users matching a filter: a page of JSON, or every one as CSV (Accept: text/csv or ?format=csv)',
      tags: ['explore'], security, body: UsersBody, querystring: UsersQuery, response: { 200: UsersAnswer, ...errors },
    },
  }, async (request, reply) => {
    const project = authenticate(request)
    const { filter, limit, cursor, timeoutMs } = request.body
    const context = contextOf(project, timeoutMs)
    const wantsCsv = request.query.format === 'csv' || (request.query.format === undefined && /\btext\/csv\b/.test(request.headers.accept ?? ''))
    if (!wantsCsv) return listUsers(db(), context, { filter: filter as Filter | undefined, limit, cursor })
    // checked, and the first page read, before the status goes out: mistakes and timeouts stay 400 / 503
    const pages = await streamUsers(db(), context, { filter: filter as Filter | undefined, cursor })
    const body = Readable.from((async function* () {
      yield CSV_HEADER
      for await (const users of pages) yield csvRows(users)
    })())
    body.on('error', (error) => request.log.error({ err: error }, 'CSV export ended early'))
    return reply.code(200).header('content-type', 'text/csv; charset=utf-8')
      .header('content-disposition', `attachment; filename="${project.id}-users.csv"`)
      // a stream bypasses the JSON schema's serializer; the type provider only knows the JSON answer
      .send(body as never)
  })

  app.post('/v1/segments', {
    schema: { summary: 'Save a segment: a name and a filter', tags: ['segments'], security, body: SegmentBody, response: { 201: SegmentAnswer, ...errors } },
  }, async (request, reply) => {
    const project = authenticate(request)
    const { name, filter } = request.body
    const id = `seg_${randomBytes(9).toString('base64url')}`
    const segment = await createSegment(db(), contextOf(project), { id, name, filter: filter as Filter },
      (stored) => publishSegment(project, stored, { id: stored.id, name: stored.name, filter: stored.filter }))
    return reply.code(201).send(segment)
  })

  app.get('/v1/segments', {
    schema: { summary: 'Every saved segment with its live size', tags: ['segments'], security, response: { 200: SegmentsAnswer, ...errors } },
  }, async (request) => {
    const project = authenticate(request)
    return { segments: await listSegments(db(), contextOf(project)) }
  })

  app.get('/v1/segments/:id', {
    schema: { summary: 'One saved segment with its live size', tags: ['segments'], security, params: SegmentParams, response: { 200: SegmentAnswer, 404: ErrorBody, ...errors } },
  }, async (request, reply) => {
    const project = authenticate(request)
    const segment = await getSegment(db(), contextOf(project), request.params.id)
    if (!segment) return reply.code(404).send({ error: 'not_found', message: `no segment "${request.params.id}" in this project` })
    return segment
  })

  app.delete('/v1/segments/:id', {
    schema: { summary: 'Delete a saved segment (and publish its end to the profile step)', tags: ['segments'], security, params: SegmentParams, response: { 200: DeletedAnswer, 404: ErrorBody, ...errors } },
  }, async (request, reply) => {
    const project = authenticate(request)
    const deleted = await deleteSegment(db(), contextOf(project), request.params.id, (segment) => publishSegment(project, segment, null))
    if (!deleted) return reply.code(404).send({ error: 'not_found', message: `no segment "${request.params.id}" in this project` })
    return { deleted: true, id: deleted.id }
  })
}
