import { createHash } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import Type from 'typebox'

const DEFAULT_DIST_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'tracker', 'dist')

export interface TrackerRoutesOptions {
  /** Folder holding the built t.js and t.mjs. Default tracker/dist of this checkout. */
  distDir?: string
  /** Cache-Control of the scripts. Default one hour: the URL carries no version, so a release must reach browsers soon. */
  cacheControl?: string
}

const Unavailable = Type.Object({ error: Type.String(), message: Type.String() })

interface Built {
  mtimeMs: number
  body: Buffer
  gzipped: Buffer
  etag: string
}

/**
 * The browser tracker as built by scripts/build-browser.ts: `GET /t.js` for a
 * script tag, `GET /t.mjs` to import. Gzipped when the browser accepts it, with an
 * ETag; 503 naming the build command when the build has not run.
 */
export const trackerRoutes: FastifyPluginAsyncTypebox<TrackerRoutesOptions> = async (app, options) => {
  const distDir = options.distDir ?? DEFAULT_DIST_DIR
  const cacheControl = options.cacheControl ?? 'public, max-age=3600'
  // rebuilt files are picked up by their modification time, without a restart
  const cache = new Map<string, Built>()

  const load = async (file: string): Promise<Built | undefined> => {
    const path = join(distDir, file)
    const info = await stat(path).catch(() => undefined)
    if (!info?.isFile()) return undefined
    const cached = cache.get(file)
    if (cached?.mtimeMs === info.mtimeMs) return cached
    const body = await readFile(path)
    const built = {
      mtimeMs: info.mtimeMs,
      body,
      gzipped: gzipSync(body, { level: 9 }),
      etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`,
    }
    cache.set(file, built)
    return built
  }

  for (const file of ['t.js', 't.mjs']) {
    app.get(`/${file}`, {
      schema: {
        response: {
          // JavaScript sent as bytes (possibly gzipped), which fastify does not serialize
          200: Type.Unsafe<Buffer>(Type.String({ description: `the tracker (${file === 't.js' ? 'script tag, sets window.segstream' : 'ES module exporting createTracker'})` })),
          304: Type.Null({ description: 'unchanged since the ETag in If-None-Match' }),
          503: Unavailable,
        },
      },
    }, async (request, reply) => {
      const built = await load(file)
      if (!built) {
        return reply.code(503).send({
          error: 'unavailable',
          message: `the browser tracker is not built (${join(distDir, file)} is missing): run \`npm run build:browser\` (node scripts/build-browser.ts)`,
        })
      }
      reply
        .header('content-type', 'text/javascript; charset=utf-8')
        .header('cache-control', cacheControl)
        .header('etag', built.etag)
        .header('vary', 'accept-encoding')
        // a public script any site may embed or import (module scripts are fetched with CORS)
        .header('access-control-allow-origin', '*')
        .header('cross-origin-resource-policy', 'cross-origin')
      if (request.headers['if-none-match'] === built.etag) return reply.code(304).send(null)
      if (/\bgzip\b/.test(request.headers['accept-encoding'] ?? '')) {
        return reply.header('content-encoding', 'gzip').send(built.gzipped)
      }
      return reply.send(built.body)
    })
  }
}
