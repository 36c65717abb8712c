import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import Type from 'typebox'
import type { FastifyRequest } from 'fastify'
import type { WebSocket } from '@fastify/websocket'
import type { Project } from '../../projects/model.ts'
import { sleep } from '../../operators/runtime/retry.ts'
import { funnelResultWithAllUsers } from '../../store/funnels.ts'
import { UnauthorizedError } from '../errors.ts'
import { ErrorBody } from '../explore/schemas.ts'
import { LiveCountsFeed } from '../live/feed.ts'
import { funnelView, liveFunnels, LiveFunnelView, type LiveFunnel } from '../live/funnels.ts'
import { countsMessage, MAX_PUSHES_PER_SECOND, numbersOf, parseWatch, type ServerMessage, type Watch } from '../live/protocol.ts'
import { RestrictedFunnels } from '../live/restricted.ts'
import { savedSegments } from '../live/segments.ts'
import { PushThrottle } from '../live/throttle.ts'
import { keyFromHeader } from './collector.ts'

/** How long a first request waits for the initial load of the counts stream. */
const LOAD_WAIT_MS = 5_000

const LiveCountsAnswer = Type.Object({
  asOf: Type.Union([Type.String(), Type.Null()], { description: 'event time of the newest change counted, ISO 8601; null before any' }),
  keyGroups: Type.Object({ reporting: Type.Integer(), total: Type.Integer() }, { description: 'key groups that have published counts for the project, of all there are' }),
  engagement: Type.Object({ Low: Type.Integer(), Medium: Type.Integer(), 'Medium-High': Type.Integer(), High: Type.Integer() }),
  segments: Type.Array(Type.Object({
    id: Type.String(), name: Type.String(),
    live: Type.Boolean({ description: 'false: the filter has behavioural conditions or an active range, which are not counted live' }),
    size: Type.Union([Type.Integer(), Type.Null()], { description: 'users in the segment now; null when not live' }),
  })),
  funnels: Type.Array(LiveFunnelView, { description: 'every funnel of the project, oldest first: users per step of its current version (a restricted funnel\'s by SQL, segmentApplied true)' }),
})

const LiveQuery = Type.Object({ key: Type.Optional(Type.String({ description: 'the API key, for browsers (a WebSocket cannot send headers)' })) })

/**
 * Live counts (docs/live.md): `GET /v1/live/counts` answers the project's summed counts; the
 * WebSocket `/v1/live` pushes the numbers a client watches as they change. The API key decides
 * the project, as for the exploration API.
 */
export const liveRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const feed = new LiveCountsFeed(app.services.nc, app.log as never)
  feed.start()
  app.addHook('onClose', async () => feed.stop())
  const loaded = () => Promise.race([feed.loaded, sleep(LOAD_WAIT_MS)])
  const sumsOf = (project: string, funnel: LiveFunnel) => feed.book.funnelSums(project, funnel.id, funnel.version, funnel.definition.steps.length)
  const restricted = new RestrictedFunnels({
    compute: (project, funnelId) => funnelResultWithAllUsers(app.services.store.pool, { project, timezone: app.services.projects.byId(project)?.timezone ?? 'UTC' }, funnelId),
    liveSums: sumsOf,
    logger: app.log as never,
  })
  const unlistenRestricted = feed.listenAll((project, sums) => restricted.liveChanged(project, sums))
  app.addHook('onClose', async () => {
    unlistenRestricted()
    restricted.stop()
  })
  /** A funnel's view now: a restricted funnel's last SQL one (its live counts of all users if it has none: the SQL failed). */
  const viewOf = (project: string, funnel: LiveFunnel) =>
    (RestrictedFunnels.applies(funnel) ? restricted.view(project, funnel.id) : undefined) ?? funnelView(funnel, sumsOf(project, funnel))

  const authenticate = (request: FastifyRequest): Project => {
    const query = request.query as { key?: string } | undefined
    const apiKey = keyFromHeader(request) ?? query?.key
    if (!apiKey) throw new UnauthorizedError('missing API key: send it as a Bearer token, the HTTP Basic user name or (WebSocket) ?key=')
    const project = app.services.projects.byApiKey(apiKey)
    if (!project) throw new UnauthorizedError('unknown API key')
    return project
  }

  app.get('/v1/live/counts', {
    schema: {
      summary: 'Users per engagement level, per saved segment and per funnel step now, summed over key groups', tags: ['live'],
      security: [{ apiKey: [] }, { basic: [] }], response: { 200: LiveCountsAnswer, 401: ErrorBody, 503: ErrorBody },
    },
  }, async (request) => {
    const project = authenticate(request)
    await loaded()
    const sums = feed.book.sums(project.id)
    const segments = await savedSegments(app.services.store.pool, project.id)
    const funnels = await liveFunnels(app.services.store.pool, project.id)
    // no SQL for unrestricted funnels; a restricted one's last computed view (its first query on first demand)
    await Promise.all(funnels.filter(RestrictedFunnels.applies).map((funnel) => restricted.current(project.id, funnel)))
    return {
      asOf: sums.asOf === null ? null : new Date(sums.asOf).toISOString(),
      keyGroups: { reporting: sums.keyGroups, total: app.services.keyGroups },
      engagement: sums.engagement,
      segments: segments.map((segment) => ({ ...segment, size: segment.live ? (Object.hasOwn(sums.segments, segment.id) ? sums.segments[segment.id]! : 0) : null })),
      funnels: funnels.map((funnel) => viewOf(project.id, funnel)),
    }
  })

  app.get('/v1/live', {
    websocket: true,
    schema: { summary: 'WebSocket: live counts pushed as they change (docs/live.md)', tags: ['live'], querystring: LiveQuery, security: [{ apiKey: [] }] },
    // refused before the upgrade: a wrong key is an HTTP 401, not a socket that closes
    preValidation: async (request) => { authenticate(request) },
  }, (socket: WebSocket, request) => {
    const project = authenticate(request)
    const log = request.log.child({ project: project.id })
    let watch: Watch | undefined
    let notLive = new Set<string>()
    let funnels: LiveFunnel[] = []
    let unwatchRestricted: Array<() => void> = []
    let closed = false
    let lastNumbers: string | undefined
    const send = (message: ServerMessage) => {
      if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message))
    }
    const push = (force: boolean) => {
      if (!watch) return
      const message = countsMessage(feed.book.sums(project.id), watch, notLive, app.services.keyGroups, funnels.map((funnel) => viewOf(project.id, funnel)))
      const numbers = numbersOf(message)
      if (!force && numbers === lastNumbers) return
      lastNumbers = numbers
      send(message)
    }
    const throttle = new PushThrottle({ intervalMs: 1000 / MAX_PUSHES_PER_SECOND, push: () => push(false) })
    const unlisten = feed.listen(project.id, () => throttle.changed())
    let pending = Promise.resolve()
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      // one at a time, in order: a watch looks its segments up in the database
      pending = pending.then(async () => {
        const parsed = isBinary ? { error: 'send text frames of JSON' } : parseWatch(data.toString('utf8'))
        if ('error' in parsed) return send({ type: 'error', message: parsed.error })
        const known = parsed.segments.length === 0 ? [] : await savedSegments(app.services.store.pool, project.id, parsed.segments)
        const unknown = parsed.segments.filter((id) => !known.some((segment) => segment.id === id))
        if (unknown.length > 0) return send({ type: 'error', message: `watch.segments: no segment "${unknown[0]}" in this project` })
        // the version current now is the one counted: after a change of the funnel, watch again
        const knownFunnels = parsed.funnels.length === 0 ? [] : await liveFunnels(app.services.store.pool, project.id, parsed.funnels)
        const unknownFunnel = parsed.funnels.find((id) => !knownFunnels.some((funnel) => funnel.id === id))
        if (unknownFunnel !== undefined) return send({ type: 'error', message: `watch.funnels: no funnel "${unknownFunnel}" in this project` })
        await loaded()
        const watched = parsed.funnels.map((id) => knownFunnels.find((funnel) => funnel.id === id)!)
        // restricted funnels: their views follow the live counts by SQL; the first one is awaited
        const following = watched.filter(RestrictedFunnels.applies).map((funnel) => restricted.watch(project.id, funnel, () => throttle.changed()))
        for (const stop of unwatchRestricted) stop()
        unwatchRestricted = following.map((follow) => follow.stop)
        if (closed) return unwatchRestricted.forEach((stop) => stop())
        await Promise.all(following.map((follow) => follow.ready))
        watch = parsed
        notLive = new Set(known.filter((segment) => !segment.live).map((segment) => segment.id))
        funnels = watched
        push(true)
        throttle.pushed()
      }).catch((error) => {
        log.warn({ err: error }, 'live: a watch failed')
        send({ type: 'error', message: `watch failed: ${(error as Error).message}` })
      })
    })
    socket.on('close', () => {
      closed = true
      unlisten()
      for (const stop of unwatchRestricted) stop()
      throttle.stop()
    })
  })
}
