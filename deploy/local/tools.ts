import { existsSync } from 'node:fs'
import { join } from 'node:path'

/** The pinned nats-server release the setup step installs into .tools/bin. */
export const NATS_SERVER_VERSION = 'v2.15.2'
export const PROJECT_ROOT = join(import.meta.dirname, '../..')
export const TOOLS_BIN = join(PROJECT_ROOT, '.tools', 'bin')

/** The project's own nats-server, else one on PATH (NATS_SERVER_BIN overrides). */
export function natsServerBinary(): string {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN
  const local = join(TOOLS_BIN, 'nats-server')
  if (existsSync(local)) return local
  throw new Error(`nats-server ${NATS_SERVER_VERSION} is not installed in ${TOOLS_BIN}: run "make setup"`)
}
