import { connect, type NatsConnection } from '@nats-io/transport-node'
import type { Logger } from '../config/logger.ts'

/**
 * Connects with endless reconnects: a restarted nats-server is waited for, never
 * a crash loop. Connection status changes are logged with the server named.
 */
export async function connectNats(url: string, name: string, logger: Logger, options: { waitOnFirstConnect?: boolean } = {}): Promise<NatsConnection> {
  const nc = await connect({ servers: url.split(','), name, maxReconnectAttempts: -1, reconnectTimeWait: 500, waitOnFirstConnect: options.waitOnFirstConnect ?? false })
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'disconnect') logger.warn({ server: status.server }, 'NATS disconnected; reconnecting')
      else if (status.type === 'reconnect') logger.info({ server: status.server }, 'NATS reconnected')
      else if (status.type === 'error') logger.error({ err: status.error }, 'NATS error')
    }
  })()
  return nc
}
