import { pino, type Logger } from 'pino'

export type { Logger }

/** The root logger; components take `logger.child({ component, stepId })`. */
export function createLogger(level: string = process.env.LOG_LEVEL ?? 'info', destination?: NodeJS.WritableStream): Logger {
  return pino({ level, base: { service: 'segstream' } }, destination as never)
}
