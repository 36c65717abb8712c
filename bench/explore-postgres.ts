/**
 * A PostgreSQL server for bench/explore.ts on a data directory that can outlive the run: loading
 * 20,000,000 events takes minutes, so `--data-dir` starts the server on a directory loaded
 * before. The test harness (test/harness/postgres.ts) always initdbs a fresh temporary cluster
 * with the default settings, so this does the same steps (initdb as `postgres` when root, fsync
 * off) on a directory of our choosing, with server settings a deployment for this size would have.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chown, mkdir, readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import { freePort, waitForPort } from '../test/harness/ports.ts'

const run = promisify(execFile)

export interface BenchPostgres {
  url: string
  /** Fast shutdown; the data directory stays. */
  stop(): Promise<void>
}

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
 * Starts PostgreSQL on `dir` (initdb first when `dir/data` does not exist) on a free port.
 * `settings` are passed as `-c name=value`, so they hold for this run only.
 */
export async function startBenchPostgres(dir: string, settings: Record<string, string>): Promise<BenchPostgres> {
  const bin = await postgresBinDir()
  const port = await freePort()
  const asRoot = process.getuid?.() === 0
  const as = (cmd: string, args: string[]): [string, string[]] => (asRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args])
  await mkdir(dir, { recursive: true })
  if (asRoot) {
    const { stdout: uid } = await run('id', ['-u', 'postgres'])
    const { stdout: gid } = await run('id', ['-g', 'postgres'])
    await chown(dir, Number(uid), Number(gid))
  }
  const data = join(dir, 'data')
  if (!existsSync(join(data, 'PG_VERSION'))) {
    await run(...as(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C']))
  }
  const options = { listen_addresses: '127.0.0.1', fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', ...settings }
  const args = ['-D', data, '-p', String(port), '-k', dir, ...Object.entries(options).flatMap(([name, value]) => ['-c', `${name}=${value}`])]
  const child: ChildProcess = spawn(...as(join(bin, 'postgres'), args), { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)))
  const exited = new Promise<never>((_, reject) => child.once('exit', (code) => reject(new Error(`postgres exited with ${code}: ${stderr}`))))
  exited.catch(() => {})
  // a kept cluster may first replay its WAL (a run killed while loading): allow minutes
  await Promise.race([waitForPort(port, 600_000), exited])
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`
  for (let attempt = 0; ; attempt++) {
    const client = new pg.Client({ connectionString: url })
    try {
      await client.connect()
      await client.query('SELECT 1')
      await client.end()
      break
    } catch (error) {
      await client.end().catch(() => {})
      if (attempt > 3000 || child.exitCode !== null) throw error
      await new Promise((r) => setTimeout(r, 200))
    }
  }
  return {
    url,
    async stop() {
      if (child.exitCode !== null) return
      const done = new Promise((resolve) => child.once('exit', resolve))
      // SIGINT to the postmaster itself (runuser does not forward it): fast shutdown
      const pid = Number((await readFile(join(data, 'postmaster.pid'), 'utf8').catch(() => '')).split('\n')[0])
      if (pid > 0) process.kill(pid, 'SIGINT')
      else child.kill('SIGINT')
      await done
    },
  }
}
