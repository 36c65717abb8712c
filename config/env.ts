/**
 * Configuration comes from environment variables, validated once at start. A bad
 * value stops the process with a message naming the variable and the form expected.
 */

export class ConfigError extends Error {
  readonly code = 'SEG_CONFIG'
  readonly variable: string
  constructor(variable: string, expected: string, got: string) {
    super(`${variable}=${JSON.stringify(redact(got))} is invalid: expected ${expected}`)
    this.variable = variable
  }
}

/** A password in a URL-like value never reaches a log. */
function redact(value: string): string {
  return value.replace(/(\/\/[^:/@\s]*:)[^@\s]*@/g, '$1***@')
}

type Parser<T> = { expected: string; parse: (raw: string) => T | undefined }

const integer = (min: number, max: number): Parser<number> => ({
  expected: `an integer from ${min} to ${max}`,
  parse: (raw) => (/^\d+$/.test(raw) && Number(raw) >= min && Number(raw) <= max ? Number(raw) : undefined),
})
const url = (protocols: string[]): Parser<string> => ({
  expected: `a URL starting with ${protocols.map((p) => `${p}//`).join(' or ')}`,
  parse: (raw) => {
    try {
      return raw.split(',').every((part) => protocols.includes(new URL(part.trim()).protocol)) ? raw : undefined
    } catch {
      return undefined
    }
  },
})
const oneOf = <const T extends string>(values: readonly T[]): Parser<T> => ({
  expected: `one of ${values.join(', ')}`,
  parse: (raw) => (values as readonly string[]).includes(raw) ? (raw as T) : undefined,
})

function read<T>(env: NodeJS.ProcessEnv, name: string, parser: Parser<T>, fallback: T): T {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  const value = parser.parse(raw)
  if (value === undefined) throw new ConfigError(name, parser.expected, raw)
  return value
}

export interface Config {
  /** SEGSTREAM_NATS_URL, default nats://127.0.0.1:14222 (the local stack's own server). */
  natsUrl: string
  /** DATABASE_URL; unset means the embedded database of the local stack. */
  databaseUrl: string | undefined
  /** SEGSTREAM_DB_TARGET: auto (detect TimescaleDB), timescaledb or postgres. Default auto. */
  databaseTarget: 'auto' | 'timescaledb' | 'postgres'
  /** SEGSTREAM_DB_POOL: connections per process. Default 4 (1 for the embedded database). */
  databasePoolSize: number
  /** SEGSTREAM_HTTP_HOST, default 127.0.0.1. */
  httpHost: string
  /** SEGSTREAM_HTTP_PORT, default 8080. */
  httpPort: number
  /** SEGSTREAM_KEY_GROUPS: key groups per project and stage, fixed at provisioning. Default 64. */
  keyGroups: number
  /** LOG_LEVEL, default info. */
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
  /** SEGSTREAM_STREAM_MAX_BYTES: size cap of each event stream, reserved by JetStream up front. Default 2147483648 (2 GiB). */
  streamMaxBytes: number
  /** SEGSTREAM_PUBLISH_TIMEOUT_MS: how long the collector waits for JetStream acks before a 503. Default 5000. */
  publishTimeoutMs: number
  /** SEGSTREAM_RATE_LIMIT: collector requests per second per write key before 429. Default 1000. */
  requestsPerSecond: number
  /** SEGSTREAM_RETENTION_DAYS: events older than this are deleted. Unset: kept forever. */
  retentionDays: number | undefined
  /** SEGSTREAM_COMPRESS_AFTER_DAYS: event chunks older than this are compressed (TimescaleDB). Default 30. */
  compressAfterDays: number
  /** SEGSTREAM_GEO_DB: path of a MaxMind-format (.mmdb) city or country database for enrich. Unset: no geo. */
  geoDatabase: string | undefined
  /** SEGSTREAM_SIMULATE: what `make up` feeds the demo project: live (default, through the collector at a gentle rate), import (as fast as it goes) or off. */
  simulate: 'live' | 'import' | 'off'
  /** SEGSTREAM_SIMULATE_RATE: messages per second of `make up`'s live simulation. Default 50. */
  simulateRate: number
  /** SEGSTREAM_SIMULATE_USERS: people `make up` simulates. Default 1000. */
  simulateUsers: number
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const databaseUrl = read(env, 'DATABASE_URL', url(['postgres:', 'postgresql:']), undefined as string | undefined)
  return {
    natsUrl: read(env, 'SEGSTREAM_NATS_URL', url(['nats:', 'tls:', 'ws:', 'wss:']), 'nats://127.0.0.1:14222'),
    databaseUrl,
    databaseTarget: read(env, 'SEGSTREAM_DB_TARGET', oneOf(['auto', 'timescaledb', 'postgres'] as const), 'auto'),
    databasePoolSize: read(env, 'SEGSTREAM_DB_POOL', integer(1, 100), 4),
    httpHost: read(env, 'SEGSTREAM_HTTP_HOST', { expected: 'a host name or IP address', parse: (raw) => (/^[\w.:-]+$/.test(raw) ? raw : undefined) }, '127.0.0.1'),
    httpPort: read(env, 'SEGSTREAM_HTTP_PORT', integer(0, 65535), 8080),
    keyGroups: read(env, 'SEGSTREAM_KEY_GROUPS', integer(1, 4096), 64),
    logLevel: read(env, 'LOG_LEVEL', oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const), 'info'),
    streamMaxBytes: read(env, 'SEGSTREAM_STREAM_MAX_BYTES', integer(1024 * 1024, 2 ** 50), 2 * 1024 ** 3),
    publishTimeoutMs: read(env, 'SEGSTREAM_PUBLISH_TIMEOUT_MS', integer(100, 600_000), 5000),
    requestsPerSecond: read(env, 'SEGSTREAM_RATE_LIMIT', integer(1, 1_000_000), 1000),
    retentionDays: read(env, 'SEGSTREAM_RETENTION_DAYS', integer(1, 100_000), undefined as number | undefined),
    compressAfterDays: read(env, 'SEGSTREAM_COMPRESS_AFTER_DAYS', integer(1, 100_000), 30),
    geoDatabase: read(env, 'SEGSTREAM_GEO_DB', { expected: 'the path of a .mmdb file', parse: (raw) => raw }, undefined as string | undefined),
    simulate: read(env, 'SEGSTREAM_SIMULATE', oneOf(['live', 'import', 'off'] as const), 'live'),
    simulateRate: read(env, 'SEGSTREAM_SIMULATE_RATE', integer(1, 100_000), 50),
    simulateUsers: read(env, 'SEGSTREAM_SIMULATE_USERS', integer(1, 100_000), 1000),
  }
}
