import { createGunzip } from 'node:zlib'
import fp from 'fastify-plugin'

/**
 * Request bodies as Segment clients send them: gzip-compressed JSON, and
 * `text/plain` JSON from `navigator.sendBeacon`, which cannot set a content type
 * without a CORS preflight.
 */
export const bodyPlugin = fp(async (app) => {
  app.addHook('preParsing', async (request, _reply, payload) => {
    const encoding = request.headers['content-encoding']
    if (encoding === 'gzip') {
      delete request.headers['content-length']
      const gunzip = createGunzip()
      // a corrupt stream is the client's mistake: a 400, not a 500
      gunzip.on('error', (error) => Object.assign(error, { statusCode: 400, message: `request body is not valid gzip: ${error.message}` }))
      return payload.pipe(gunzip)
    }
    if (encoding && encoding !== 'identity') throw Object.assign(new Error(`unsupported content-encoding "${encoding}": send gzip or nothing`), { statusCode: 400 })
    return payload
  })
  app.addContentTypeParser('text/plain', { parseAs: 'string' }, (_request, body, done) => {
    try {
      done(null, JSON.parse(body as string))
    } catch (error) {
      done(Object.assign(new Error(`body is not valid JSON: ${(error as Error).message}`), { statusCode: 400 }), undefined)
    }
  })
}, { name: 'body' })
