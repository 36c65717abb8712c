import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { natsServerBinary } from '../../deploy/local/tools.ts'
import { freePort, waitForPort } from './ports.ts'

export interface NatsServer {
  url: string
  port: number
  storeDir: string
  /** Stops the server (SIGTERM) but keeps its store. */
  stop(): Promise<void>
  /** Starts it again on the same port and store. */
  restart(): Promise<void>
  /** Stops it and removes its store. */
  close(): Promise<void>
}

/** A real nats-server with JetStream on a free port and a temporary store. */
export async function startNats(): Promise<NatsServer> {
  const port = await freePort()
  const storeDir = await mkdtemp(join(tmpdir(), 'segstream-nats-'))
  let child: ChildProcess | undefined
  const start = async () => {
    child = spawn(natsServerBinary(), ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr!.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)))
    const exited = new Promise<never>((_, reject) => child!.once('exit', (code) => reject(new Error(`nats-server exited with ${code}: ${stderr}`))))
    await Promise.race([waitForPort(port), exited])
  }
  const stop = async () => {
    if (!child || child.exitCode !== null) return
    const done = new Promise((resolve) => child!.once('exit', resolve))
    child.kill('SIGTERM')
    await done
  }
  await start()
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    stop,
    restart: start,
    async close() {
      await stop()
      await rm(storeDir, { recursive: true, force: true })
    },
  }
}
