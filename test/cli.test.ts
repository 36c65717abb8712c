import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { segstreamTopology } from '../topology/definition.ts'
import { topologyToMermaid } from '../topology/graph.ts'
import { startNats } from './harness/nats.ts'
import { cleanEnv } from './harness/ports.ts'

const ROOT = join(import.meta.dirname, '..')
const exec = promisify(execFile)

async function segstream(args: string[], env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await exec(process.execPath, [join(ROOT, 'bin/segstream.js'), ...args], { env: cleanEnv(env), cwd: ROOT })
    return { code: 0, stdout, stderr }
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string }
    return { code: e.code, stdout: e.stdout, stderr: e.stderr }
  }
}

t.test('the README shows the current topology graph', async (t) => {
  const readme = await readFile(join(ROOT, 'README.md'), 'utf8')
  const block = /```mermaid\n([\s\S]*?)\n```/.exec(readme)?.[1]
  t.equal(block, topologyToMermaid(segstreamTopology()), 'README mermaid block equals `segstream topology graph` (regenerate it)')
})

t.test('topology validate and graph', async (t) => {
  const validate = await segstream(['topology', 'validate'])
  t.equal(validate.code, 0, validate.stderr)
  t.match(validate.stdout, /topology valid: 11 streams, 4 KV buckets, 14 steps/)
  const graph = await segstream(['topology', 'graph'])
  t.equal(graph.stdout.trim(), topologyToMermaid(segstreamTopology()))
})

t.test('a bad environment variable is named, with the expected form', async (t) => {
  const result = await segstream(['topology', 'apply'], { SEGSTREAM_KEY_GROUPS: 'many' })
  t.equal(result.code, 1)
  t.match(result.stderr, /SEGSTREAM_KEY_GROUPS="many" is invalid: expected an integer from 1 to 4096/)
  t.notMatch(result.stderr, /at .*\.ts:\d+/, 'no stack trace for a user mistake')
})

t.test('unknown commands print the usage', async (t) => {
  const result = await segstream(['frobnicate'])
  t.equal(result.code, 2)
  t.match(result.stderr, /unknown command: frobnicate/)
  t.match(result.stderr, /topology apply/)
})

t.test('apply, project create and list against a real server', async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.close())
  const env = { SEGSTREAM_NATS_URL: nats.url, SEGSTREAM_STREAM_MAX_BYTES: String(64 * 1024 * 1024) }
  const first = await segstream(['topology', 'apply'], env)
  t.equal(first.code, 0, first.stderr)
  t.match(first.stdout, /created\s+stream\s+SEG_RAW/)
  const second = await segstream(['topology', 'apply'], env)
  t.match(second.stdout, /nothing to change/, 'apply twice changes nothing')

  const created = await segstream(['project', 'create', 'shop', '--timezone', 'Europe/Berlin', '--name', 'Shop'], env)
  t.equal(created.code, 0, created.stderr)
  t.match(created.stdout, /write key wk_\w{24}/)
  t.match(created.stdout, /API key\s+sk_\w{32}/)
  const again = await segstream(['project', 'create', 'shop'], env)
  t.equal(again.code, 1)
  t.match(again.stderr, /project "shop" already exists/)
  const badZone = await segstream(['project', 'create', 'other', '--timezone', 'Mars/Olympus'], env)
  t.match(badZone.stderr, /unknown timezone "Mars\/Olympus"/)
  const badId = await segstream(['project', 'create', 'a.b'], env)
  t.match(badId.stderr, /invalid project id "a.b"/)
  const list = await segstream(['project', 'list'], env)
  t.match(list.stdout, /shop\s+Europe\/Berlin/)
})

t.test('an unreachable NATS is named', async (t) => {
  const result = await segstream(['project', 'list'], { SEGSTREAM_NATS_URL: 'nats://127.0.0.1:1' })
  t.equal(result.code, 1)
  t.match(result.stderr, /cannot reach NATS at nats:\/\/127.0.0.1:1 \(SEGSTREAM_NATS_URL\)/)
})
