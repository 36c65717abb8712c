import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { gunzipSync, gzipSync } from 'node:zlib'
import Fastify from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import t from 'tap'
import { TRACKER_GZIP_BUDGET } from '../scripts/build-browser.ts'
import { trackerRoutes } from '../gateway/routes/tracker.ts'

const run = promisify(execFile)
const root = join(import.meta.dirname, '..')

// one build for the whole file, into a temporary folder: other test files may be building tracker/dist
const outDir = await mkdtemp(join(tmpdir(), 'segstream-tracker-'))
t.teardown(() => rm(outDir, { recursive: true, force: true }))
const built = await run(process.execPath, [join(root, 'scripts', 'build-browser.ts'), '--out-dir', outDir], { cwd: root })

t.test('size budget: t.js minified and gzipped stays within 3 KB', async (t) => {
  t.match(built.stdout, /tracker t\.js: \d+ bytes minified, \d+ bytes gzipped/, 'the build prints the sizes')
  const script = await readFile(join(outDir, 't.js'))
  const gzipBytes = gzipSync(script, { level: 9 }).length
  t.comment(`tracker t.js: ${script.length} bytes minified, ${gzipBytes} bytes gzipped (budget ${TRACKER_GZIP_BUDGET})`)
  t.ok(gzipBytes <= TRACKER_GZIP_BUDGET, `t.js is ${gzipBytes} bytes gzipped, budget ${TRACKER_GZIP_BUDGET}`)
  t.match(built.stdout, new RegExp(`${gzipBytes} bytes gzipped`), 'the printed size is the measured one')
  t.notMatch(script.toString(), /\bexport\b|\bimport\s*\(|__VERSION__/, 'the IIFE has no module syntax and the version is inlined')
  const version = (JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { version: string }).version
  t.match(script.toString(), `"${version}"`, 'carries the package version')
})

t.test('the build fails when the script is over budget', async (t) => {
  // the same build with a budget the script cannot meet: proves the exit code is wired up
  const script = join(root, 'scripts', 'build-browser.ts')
  const failed = await run(process.execPath, [script, '--out-dir', outDir, '--budget', '1000'], { cwd: root }).then(() => undefined, (error: { code: number; stderr: string }) => error)
  t.ok(failed, 'a build over budget exits non-zero')
  t.equal(failed?.code, 1)
  t.match(failed?.stderr, /over the 1000-byte budget/)
})

t.test('the ES module exports createTracker and does not start itself', async (t) => {
  const module = (await import(pathToFileURL(join(outDir, 't.mjs')).href)) as Record<string, unknown>
  t.same(Object.keys(module), ['createTracker'])
  t.type(module.createTracker, 'function')
})

t.test('GET /t.js and /t.mjs serve the build', async (t) => {
  const app = Fastify().withTypeProvider<TypeBoxTypeProvider>()
  await app.register(trackerRoutes, { distDir: outDir })
  t.teardown(() => app.close())
  for (const file of ['t.js', 't.mjs']) {
    const onDisk = await readFile(join(outDir, file))
    const plain = await app.inject({ method: 'GET', url: `/${file}` })
    t.equal(plain.statusCode, 200, `${file} found`)
    t.equal(plain.headers['content-type'], 'text/javascript; charset=utf-8')
    t.equal(plain.headers['cache-control'], 'public, max-age=3600')
    t.equal(plain.headers['access-control-allow-origin'], '*', 'any site may import the module')
    t.equal(plain.body, onDisk.toString(), `${file} is served as built`)

    const gzipped = await app.inject({ method: 'GET', url: `/${file}`, headers: { 'accept-encoding': 'gzip, deflate, br' } })
    t.equal(gzipped.headers['content-encoding'], 'gzip')
    t.equal(gunzipSync(gzipped.rawPayload).toString(), onDisk.toString(), 'gzipped body unpacks to the file')

    const etag = plain.headers.etag as string
    t.ok(etag, 'has an ETag')
    const again = await app.inject({ method: 'GET', url: `/${file}`, headers: { 'if-none-match': etag } })
    t.equal(again.statusCode, 304, 'unchanged file answers 304')
    t.equal(again.body, '')
  }

  // a rebuild is served without a restart
  const path = join(outDir, 't.mjs')
  const original = await readFile(path)
  await writeFile(path, `${original}\n// rebuilt`)
  t.teardown(() => writeFile(path, original))
  const rebuilt = await app.inject({ method: 'GET', url: '/t.mjs' })
  t.match(rebuilt.body, /\/\/ rebuilt$/)
})

t.test('503 naming the build command when the build is missing', async (t) => {
  const empty = await mkdtemp(join(tmpdir(), 'segstream-tracker-empty-'))
  t.teardown(() => rm(empty, { recursive: true, force: true }))
  const app = Fastify().withTypeProvider<TypeBoxTypeProvider>()
  await app.register(trackerRoutes, { distDir: empty })
  t.teardown(() => app.close())
  for (const file of ['t.js', 't.mjs']) {
    const response = await app.inject({ method: 'GET', url: `/${file}` })
    t.equal(response.statusCode, 503)
    t.equal(response.json().error, 'unavailable')
    t.match(response.json().message, /npm run build:browser/)
    t.match(response.json().message, file)
  }
})
