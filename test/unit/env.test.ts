import t from 'tap'
import { ConfigError, loadConfig, type Config } from '../../config/env.ts'

const DEFAULTS: Partial<Config> = {
  natsUrl: 'nats://127.0.0.1:14222',
  databaseUrl: undefined,
  databaseTarget: 'auto',
  databasePoolSize: 4,
  httpHost: '127.0.0.1',
  httpPort: 8080,
  keyGroups: 64,
  logLevel: 'info',
  publishTimeoutMs: 5000,
  requestsPerSecond: 1000,
}

const envNames = {
  SEGSTREAM_NATS_URL: 'natsUrl',
  DATABASE_URL: 'databaseUrl',
  SEGSTREAM_DB_TARGET: 'databaseTarget',
  SEGSTREAM_DB_POOL: 'databasePoolSize',
  SEGSTREAM_HTTP_HOST: 'httpHost',
  SEGSTREAM_HTTP_PORT: 'httpPort',
  SEGSTREAM_KEY_GROUPS: 'keyGroups',
  LOG_LEVEL: 'logLevel',
  SEGSTREAM_PUBLISH_TIMEOUT_MS: 'publishTimeoutMs',
  SEGSTREAM_RATE_LIMIT: 'requestsPerSecond',
} as const satisfies Record<string, keyof Config>

function configError(env: NodeJS.ProcessEnv): ConfigError | undefined {
  try {
    loadConfig(env)
  } catch (error) {
    return error as ConfigError
  }
  return undefined
}

t.test('defaults', async (t) => {
  for (const [label, env] of [['an empty environment', {}], ['empty strings', Object.fromEntries(Object.keys(envNames).map((k) => [k, '']))]] as const) {
    const config = loadConfig(env)
    for (const [field, value] of Object.entries(DEFAULTS)) {
      t.equal(config[field as keyof Config], value, `${label}: ${field} defaults to ${String(value)}`)
    }
  }
  t.ok('databaseUrl' in loadConfig({}), 'databaseUrl is present (undefined) when unset')
  const unrelated = loadConfig({ PATH: '/usr/bin', HOME: '/root', SEGSTREAM_UNKNOWN: 'x' })
  t.equal(unrelated.httpPort, 8080, 'unrelated variables are ignored')
})


t.test('valid values are read', async (t) => {
  const cases: Array<[keyof typeof envNames, string, unknown]> = [
    ['SEGSTREAM_NATS_URL', 'nats://nats.internal:4222', 'nats://nats.internal:4222'],
    ['SEGSTREAM_NATS_URL', 'tls://nats.internal:4222', 'tls://nats.internal:4222'],
    ['SEGSTREAM_NATS_URL', 'ws://127.0.0.1:8080', 'ws://127.0.0.1:8080'],
    ['SEGSTREAM_NATS_URL', 'wss://nats.example.com', 'wss://nats.example.com'],
    ['SEGSTREAM_NATS_URL', 'nats://a:4222,nats://b:4222', 'nats://a:4222,nats://b:4222'],
    ['SEGSTREAM_NATS_URL', 'nats://a:4222, tls://b:4222', 'nats://a:4222, tls://b:4222'],
    ['SEGSTREAM_NATS_URL', 'nats://user:pass@a:4222', 'nats://user:pass@a:4222'],
    ['DATABASE_URL', 'postgres://u:p@db:5432/segstream', 'postgres://u:p@db:5432/segstream'],
    ['DATABASE_URL', 'postgresql://db/segstream?sslmode=require', 'postgresql://db/segstream?sslmode=require'],
    ['SEGSTREAM_DB_TARGET', 'auto', 'auto'],
    ['SEGSTREAM_DB_TARGET', 'timescaledb', 'timescaledb'],
    ['SEGSTREAM_DB_TARGET', 'postgres', 'postgres'],
    ['SEGSTREAM_DB_POOL', '1', 1],
    ['SEGSTREAM_DB_POOL', '100', 100],
    ['SEGSTREAM_HTTP_HOST', '0.0.0.0', '0.0.0.0'],
    ['SEGSTREAM_HTTP_HOST', '::1', '::1'],
    ['SEGSTREAM_HTTP_HOST', 'collector-1.internal', 'collector-1.internal'],
    ['SEGSTREAM_HTTP_PORT', '0', 0],
    ['SEGSTREAM_HTTP_PORT', '3000', 3000],
    ['SEGSTREAM_HTTP_PORT', '65535', 65535],
    ['SEGSTREAM_KEY_GROUPS', '1', 1],
    ['SEGSTREAM_KEY_GROUPS', '4096', 4096],
    ['LOG_LEVEL', 'fatal', 'fatal'],
    ['LOG_LEVEL', 'error', 'error'],
    ['LOG_LEVEL', 'warn', 'warn'],
    ['LOG_LEVEL', 'debug', 'debug'],
    ['LOG_LEVEL', 'trace', 'trace'],
    ['LOG_LEVEL', 'silent', 'silent'],
    ['SEGSTREAM_PUBLISH_TIMEOUT_MS', '100', 100],
    ['SEGSTREAM_PUBLISH_TIMEOUT_MS', '600000', 600_000],
    ['SEGSTREAM_RATE_LIMIT', '1', 1],
    ['SEGSTREAM_RATE_LIMIT', '1000000', 1_000_000],
  ]
  for (const [variable, raw, expected] of cases) {
    const config = loadConfig({ [variable]: raw })
    t.equal(config[envNames[variable]], expected, `${variable}=${raw}`)
    for (const [other, field] of Object.entries(envNames)) {
      if (other !== variable && config[field] !== DEFAULTS[field]) t.fail(`${variable}=${raw} changed ${field}`)
    }
  }
  const all = loadConfig({
    SEGSTREAM_NATS_URL: 'tls://n:1', DATABASE_URL: 'postgres://d/x', SEGSTREAM_DB_TARGET: 'postgres', SEGSTREAM_DB_POOL: '9',
    SEGSTREAM_HTTP_HOST: 'h', SEGSTREAM_HTTP_PORT: '1', SEGSTREAM_KEY_GROUPS: '2', LOG_LEVEL: 'warn', SEGSTREAM_PUBLISH_TIMEOUT_MS: '1000', SEGSTREAM_RATE_LIMIT: '50',
  })
  t.match(all, {
    natsUrl: 'tls://n:1', databaseUrl: 'postgres://d/x', databaseTarget: 'postgres', databasePoolSize: 9,
    httpHost: 'h', httpPort: 1, keyGroups: 2, logLevel: 'warn', publishTimeoutMs: 1000, requestsPerSecond: 50,
  }, 'all variables at once')
})

t.test('loadConfig reads process.env by default', async (t) => {
  const saved = process.env.SEGSTREAM_HTTP_PORT
  t.teardown(() => {
    if (saved === undefined) delete process.env.SEGSTREAM_HTTP_PORT
    else process.env.SEGSTREAM_HTTP_PORT = saved
  })
  process.env.SEGSTREAM_HTTP_PORT = '9191'
  t.equal(loadConfig().httpPort, 9191)
  process.env.SEGSTREAM_HTTP_PORT = 'nope'
  t.equal(configError(process.env)?.variable, 'SEGSTREAM_HTTP_PORT', 'an invalid process.env value is refused')
  t.throws(() => loadConfig(), { code: 'SEG_CONFIG' }, 'also without an argument')
})

t.test('each invalid variable throws a ConfigError naming it', async (t) => {
  const cases: Array<[keyof typeof envNames, string, RegExp]> = [
    ['SEGSTREAM_NATS_URL', 'http://x', /expected a URL starting with nats:\/\/ or tls:\/\/ or ws:\/\/ or wss:\/\/$/],
    ['SEGSTREAM_NATS_URL', 'nats://a:4222,http://b:4222', /expected a URL/],
    ['SEGSTREAM_NATS_URL', 'localhost:4222', /expected a URL/],
    ['SEGSTREAM_NATS_URL', 'not a url', /expected a URL/],
    ['DATABASE_URL', 'mysql://x', /expected a URL starting with postgres:\/\/ or postgresql:\/\/$/],
    ['DATABASE_URL', 'postgres', /expected a URL/],
    ['DATABASE_URL', 'http://db/x', /expected a URL/],
    ['SEGSTREAM_HTTP_PORT', 'abc', /expected an integer from 0 to 65535$/],
    ['SEGSTREAM_HTTP_PORT', '65536', /expected an integer from 0 to 65535$/],
    ['SEGSTREAM_HTTP_PORT', '-1', /expected an integer/],
    ['SEGSTREAM_HTTP_PORT', '80.5', /expected an integer/],
    ['SEGSTREAM_HTTP_PORT', ' 80', /expected an integer/],
    ['SEGSTREAM_HTTP_PORT', '1e3', /expected an integer/],
    ['SEGSTREAM_HTTP_PORT', '0x50', /expected an integer/],
    ['SEGSTREAM_KEY_GROUPS', '0', /expected an integer from 1 to 4096$/],
    ['SEGSTREAM_KEY_GROUPS', '4097', /expected an integer from 1 to 4096$/],
    ['SEGSTREAM_KEY_GROUPS', 'many', /expected an integer/],
    ['LOG_LEVEL', 'loud', /expected one of fatal, error, warn, info, debug, trace, silent$/],
    ['LOG_LEVEL', 'INFO', /expected one of/],
    ['LOG_LEVEL', 'info ', /expected one of/],
    ['SEGSTREAM_DB_TARGET', 'oracle', /expected one of auto, timescaledb, postgres$/],
    ['SEGSTREAM_DB_TARGET', 'Postgres', /expected one of/],
    ['SEGSTREAM_DB_POOL', '0', /expected an integer from 1 to 100$/],
    ['SEGSTREAM_DB_POOL', '101', /expected an integer from 1 to 100$/],
    ['SEGSTREAM_HTTP_HOST', 'a b', /expected a host name or IP address$/],
    ['SEGSTREAM_HTTP_HOST', 'host/path', /expected a host name or IP address$/],
    ['SEGSTREAM_PUBLISH_TIMEOUT_MS', '99', /expected an integer from 100 to 600000$/],
    ['SEGSTREAM_PUBLISH_TIMEOUT_MS', '600001', /expected an integer from 100 to 600000$/],
    ['SEGSTREAM_RATE_LIMIT', '0', /expected an integer from 1 to 1000000$/],
    ['SEGSTREAM_RATE_LIMIT', 'fast', /expected an integer/],
  ]
  for (const [variable, raw, expected] of cases) {
    const error = configError({ [variable]: raw })
    t.ok(error instanceof ConfigError, `${variable}=${raw}: throws a ConfigError`)
    t.ok(error instanceof Error, `${variable}=${raw}: which is an Error`)
    t.equal(error?.variable, variable, `${variable}=${raw}: .variable`)
    t.equal(error?.code, 'SEG_CONFIG', `${variable}=${raw}: .code`)
    t.ok(error?.message.startsWith(`${variable}=${JSON.stringify(raw)} is invalid: `), `${variable}=${raw}: the message names the variable and the value (${error?.message})`)
    t.match(error?.message, expected, `${variable}=${raw}: the message says what is expected`)
  }
  // with several variables set, the bad one is named
  const error = configError({ SEGSTREAM_NATS_URL: 'nats://ok:4222', SEGSTREAM_HTTP_PORT: '8081', LOG_LEVEL: 'loud', SEGSTREAM_KEY_GROUPS: '16' })
  t.equal(error?.variable, 'LOG_LEVEL', 'the one bad variable among good ones is named')
})

t.test('an invalid DATABASE_URL does not put its password in the error', async (t) => {
  const error = configError({ DATABASE_URL: 'mysql://admin:s3cr3t-pw@db.internal/segstream' })
  t.equal(error?.variable, 'DATABASE_URL', 'still names the variable')
  t.notMatch(error?.message, /s3cr3t-pw/, 'the password is not in the message')
})
