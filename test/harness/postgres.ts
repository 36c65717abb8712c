import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { chown, mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { cleanEnv, freePort, waitForPort } from './ports.ts'

const run = promisify(execFile)

export interface DatabaseServer {
  target: 'postgres' | 'timescaledb'
  url: string
  port: number
  stop(): Promise<void>
  restart(): Promise<void>
  close(): Promise<void>
}

/** The newest PostgreSQL server binaries on this machine (Debian keeps them per version). */
async function postgresBinDir(): Promise<string> {
  if (process.env.PG_BINDIR) return process.env.PG_BINDIR
  const versions = (await readdir('/usr/lib/postgresql').catch(() => [])).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))
  for (const version of versions) {
    const dir = `/usr/lib/postgresql/${version}/bin`
    if (existsSync(join(dir, 'initdb'))) return dir
  }
  throw new Error('no PostgreSQL server binaries found under /usr/lib/postgresql (apt-get install postgresql) and PG_BINDIR is unset')
}

/**
 * A real PostgreSQL server: its own cluster (initdb) in a temporary directory on
 * a free port, durability traded for speed (fsync off). initdb refuses to run as
 * root, so as root the cluster belongs to the `postgres` user.
 */
export async function startPostgres(): Promise<DatabaseServer> {
  const bin = await postgresBinDir()
  const port = await freePort()
  const dir = await mkdtemp(join(tmpdir(), 'segstream-pg-'))
  const asRoot = process.getuid?.() === 0
  const as = (cmd: string, args: string[]): [string, string[]] => (asRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args])
  if (asRoot) {
    const { stdout } = await run('id', ['-u', 'postgres'])
    const { stdout: gid } = await run('id', ['-g', 'postgres'])
    await chown(dir, Number(stdout), Number(gid))
  }
  const data = join(dir, 'data')
  await run(...as(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C']))
  let child: ChildProcess | undefined
  const start = async () => {
    const [cmd, args] = as(join(bin, 'postgres'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'])
    child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr!.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)))
    const exited = new Promise<never>((_, reject) => child!.once('exit', (code) => reject(new Error(`postgres exited with ${code}: ${stderr}`))))
    await Promise.race([waitForPort(port), exited])
    await waitForQuery(`postgres://postgres@127.0.0.1:${port}/postgres`)
  }
  const stop = async () => {
    if (!child || child.exitCode !== null) return
    const done = new Promise((resolve) => child!.once('exit', resolve))
    // SIGINT to the postmaster itself (runuser does not forward it): fast shutdown
    const pid = Number((await readFile(join(data, 'postmaster.pid'), 'utf8').catch(() => '')).split('\n')[0])
    if (pid > 0) process.kill(pid, 'SIGINT')
    else child.kill('SIGINT')
    await done
  }
  await start()
  return {
    target: 'postgres',
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    stop,
    restart: start,
    async close() {
      await stop()
      await rm(dir, { recursive: true, force: true })
    },
  }
}

async function waitForQuery(url: string): Promise<void> {
  const { default: pg } = await import('pg')
  for (let attempt = 0; ; attempt++) {
    const client = new pg.Client({ connectionString: url })
    try {
      await client.connect()
      await client.query('SELECT 1')
      await client.end()
      return
    } catch (error) {
      await client.end().catch(() => {})
      if (attempt > 100) throw error
      await new Promise((r) => setTimeout(r, 100))
    }
  }
}

/** The embedded TimescaleDB (PGlite) in a child process on a free port, in memory. */
export async function startEmbeddedTimescale(): Promise<DatabaseServer> {
  const port = await freePort()
  let child: ChildProcess | undefined
  const stopping = new WeakSet<ChildProcess>()
  const start = async () => {
    child = spawn(process.execPath, [join(import.meta.dirname, '../../store/embedded.ts'), '--port', String(port)], { stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv() })
    let output = ''
    child.stderr!.on('data', (chunk) => (output = (output + chunk).slice(-4000)))
    await new Promise<void>((resolve, reject) => {
      child!.stdout!.on('data', (chunk) => { if (String(chunk).includes('ready')) resolve() })
      child!.once('exit', (code) => reject(new Error(`embedded database exited with ${code}: ${output}`)))
    })
    // a crash later on is otherwise only an ECONNREFUSED somewhere: say why
    const running = child
    running.once('exit', (code, signal) => {
      if (!stopping.has(running)) process.stderr.write(`embedded database exited unexpectedly (${code ?? signal}): ${output}\n`)
    })
  }
  const stop = async () => {
    if (!child || child.exitCode !== null) return
    stopping.add(child)
    const done = new Promise((resolve) => child!.once('exit', resolve))
    child.kill('SIGTERM')
    await done
  }
  await start()
  return {
    target: 'timescaledb',
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    stop,
    restart: start,
    close: stop,
  }
}

/** Both supported targets, for suites that must give the same answers on each. */
export const DATABASE_TARGETS = [
  { name: 'postgres', start: startPostgres, poolSize: 4 },
  { name: 'timescaledb', start: startEmbeddedTimescale, poolSize: 1 },
] as const
