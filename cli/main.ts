import { parseArgs } from 'node:util'
import { connectNats } from '../broker/connect.ts'
import { ConfigError, loadConfig, type Config } from '../config/env.ts'
import { createLogger } from '../config/logger.ts'
import { createProject, listProjects, ProjectError, rotateKey } from '../projects/registry.ts'
import { importFile, ImportError } from './import.ts'
import { listDeadLetters, replayDeadLetters } from './dlq.ts'
import { PipelinedPublisher } from '../broker/publisher.ts'
import { republishSegments } from '../gateway/live/segments.ts'
import { openStore } from '../store/store.ts'
import { SimulateError, simulateCommand } from '../simulate/run.ts'
import { applyTopology, IncompatibleChangeError } from '../topology/apply.ts'
import { segstreamTopology } from '../topology/definition.ts'
import { topologyToMermaid } from '../topology/graph.ts'
import { topologyProblems, TopologyError } from '../topology/validate.ts'

const USAGE = `segstream <command>

  topology validate          check the dataflow definition
  topology graph             print the dataflow as a Mermaid flowchart
  topology apply             provision streams, KV buckets and consumers (idempotent)
  migrate                    apply database migrations (idempotent)
  project create <id> [--name N] [--timezone Europe/Berlin]
  project list
  project rotate-key <id> --write|--api [--keep-old]
                             issue a new key; old ones stop working unless --keep-old
  import <file.ndjson> --api-key KEY [--url http://localhost:8080] [--batch-size 1000] [--restart]
                             import history (one Segment message per line) through POST /v1/import;
                             resumable: an interrupted import continues where it stopped
  simulate [--mode file|import|live] [--seed N] [--users N] [--from D] [--to D] [--timezone Z]
           [--rate N] [--url U] [--write-key K | --api-key K] [--out F] [--expected F]
                             simulated users and their events, written to a file or sent through the
                             collector, with the answers the pipeline should give (simulate --help)
  segments republish [--project P]
                             publish every saved segment to the profile step again (segments saved
                             before it kept definitions get their live size; docs/live.md)
  dlq list [--project P] [--step S]
                             dead letters with their step and reason
  dlq replay [--project P] [--step S] [--seq N ...]
                             re-inject dead letters after a fix (each once)
  run [stepId ...]           run operator steps in this process (all when none named)
  gateway                    run the HTTP gateway
  up                         the local stack: nats-server, database, every step, gateway

Environment: SEGSTREAM_NATS_URL, DATABASE_URL, SEGSTREAM_HTTP_PORT, SEGSTREAM_KEY_GROUPS, LOG_LEVEL
(see docs/configuration.md).`

/** Errors we expect users to meet print one clear line, not a stack trace. */
const EXPECTED = [ConfigError, TopologyError, IncompatibleChangeError, ProjectError, ImportError, SimulateError]

async function withNats<T>(config: Config, fn: (nc: Awaited<ReturnType<typeof connectNats>>) => Promise<T>): Promise<T> {
  const logger = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel)
  let nc
  try {
    nc = await connectNats(config.natsUrl, 'segstream-cli', logger)
  } catch (error) {
    throw new Error(`cannot reach NATS at ${config.natsUrl} (SEGSTREAM_NATS_URL): ${(error as Error).message}`)
  }
  try {
    return await fn(nc)
  } finally {
    await nc.close()
  }
}

async function main(argv: string[]): Promise<number> {
  const [command, sub, ...rest] = argv
  if (!command || command === 'help' || command === '--help' || command === '-h') {
    console.log(USAGE)
    return command ? 0 : 1
  }
  const config = loadConfig()
  const topology = segstreamTopology({ streamMaxBytes: config.streamMaxBytes })
  switch (command) {
    case 'topology': {
      if (sub === 'validate') {
        const problems = topologyProblems(topology)
        if (problems.length > 0) throw new TopologyError(problems)
        console.log(`topology valid: ${topology.streams.length} streams, ${topology.kv.length} KV buckets, ${topology.steps.length} steps`)
        return 0
      }
      if (sub === 'graph') {
        console.log(topologyToMermaid(topology))
        return 0
      }
      if (sub === 'apply') {
        const changes = await withNats(config, (nc) => applyTopology(nc, topology, { keyGroups: config.keyGroups }))
        for (const change of changes) console.log(`${change.action.padEnd(9)} ${change.kind.padEnd(8)} ${change.name}${change.changes.length ? `  (${change.changes.join('; ')})` : ''}`)
        const changed = changes.filter((c) => c.action !== 'unchanged').length
        console.log(changed === 0 ? 'nothing to change' : `${changed} changed`)
        return 0
      }
      break
    }
    case 'migrate': {
      if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'a postgres:// URL (the local stack sets it itself in "segstream up")', '')
      const store = await openStore({ url: config.databaseUrl, target: config.databaseTarget, poolSize: 1, logger: createLogger(config.logLevel) })
      try {
        const { target, applied } = await store.migrate()
        console.log(`database target: ${target}; ${applied.length ? `applied ${applied.join(', ')}` : 'up to date'}`)
      } finally {
        await store.close()
      }
      return 0
    }
    case 'project': {
      if (sub === 'create') {
        const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { name: { type: 'string' }, timezone: { type: 'string' } } })
        if (!positionals[0]) throw new ConfigError('project id', 'segstream project create <id>', '')
        const { project, apiKey } = await withNats(config, (nc) => createProject(nc, { id: positionals[0]!, name: values.name, timezone: values.timezone }))
        console.log(`project   ${project.id} (${project.name}), timezone ${project.timezone}`)
        console.log(`write key ${project.writeKeys[0]}`)
        console.log(`API key   ${apiKey}   (shown once: store it now)`)
        return 0
      }
      if (sub === 'rotate-key') {
        const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { write: { type: 'boolean' }, api: { type: 'boolean' }, 'keep-old': { type: 'boolean' } } })
        if (!positionals[0] || values.write === values.api) throw new ConfigError('arguments', 'segstream project rotate-key <id> --write|--api [--keep-old]', rest.join(' '))
        const { key } = await withNats(config, (nc) => rotateKey(nc, positionals[0]!, values.write ? 'write' : 'api', { keepOld: values['keep-old'] }))
        console.log(`new ${values.write ? 'write' : 'API'} key ${key}${values['keep-old'] ? ' (old keys still work)' : ' (old keys revoked)'}`)
        return 0
      }
      if (sub === 'list') {
        const projects = await withNats(config, (nc) => listProjects(nc))
        for (const p of projects) console.log(`${p.id.padEnd(20)} ${p.timezone.padEnd(20)} write key ${p.writeKeys[0]}  (${p.apiKeys.length} API keys)`)
        if (projects.length === 0) console.log('no projects yet: segstream project create <id>')
        return 0
      }
      break
    }
    case 'import': {
      const { values, positionals } = parseArgs({
        args: [sub, ...rest].filter((x): x is string => Boolean(x)), allowPositionals: true,
        options: { 'api-key': { type: 'string' }, url: { type: 'string' }, 'batch-size': { type: 'string' }, restart: { type: 'boolean' } },
      })
      const apiKey = values['api-key'] ?? process.env.SEGSTREAM_API_KEY
      if (!positionals[0]) throw new ConfigError('file', 'segstream import <file.ndjson> --api-key KEY', '')
      if (!apiKey) throw new ConfigError('--api-key', "the project's API key (or SEGSTREAM_API_KEY)", '')
      const batchSize = Number(values['batch-size'] ?? 1000)
      if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 10_000) throw new ConfigError('--batch-size', 'an integer from 1 to 10000', values['batch-size'] ?? '')
      const url = values.url ?? process.env.SEGSTREAM_URL ?? `http://localhost:${config.httpPort}`
      const result = await importFile({ file: positionals[0], url, apiKey, batchSize, restart: values.restart })
      if (result.resumedFromLine > 0) console.log(`resumed after line ${result.resumedFromLine}`)
      console.log(`imported ${result.lines} lines: ${result.accepted} accepted (${result.duplicates} already stored), ${result.rejected} rejected${result.rejected ? ` (see ${result.rejectsFile})` : ''}`)
      return 0
    }
    case 'simulate':
      return simulateCommand([sub, ...rest].filter((x): x is string => x !== undefined), config.httpPort)
    case 'segments': {
      const { values } = parseArgs({ args: rest, options: { project: { type: 'string' } } })
      if (sub !== 'republish') {
        console.error('usage: segstream segments republish [--project P]')
        return 2
      }
      if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'a postgres:// URL: the saved segments are read from the database', '')
      const store = await openStore({ url: config.databaseUrl, target: config.databaseTarget, poolSize: 1, logger: createLogger(config.logLevel) })
      try {
        return await withNats(config, async (nc) => {
          const publisher = new PipelinedPublisher(nc, { timeoutMs: 10_000 })
          try {
            const published = await republishSegments(store.pool, publisher, { keyGroups: config.keyGroups, project: values.project })
            console.log(`published ${published} saved segments to the profile step again`)
            return 0
          } finally {
            publisher.close()
          }
        })
      } finally {
        await store.close()
      }
    }
    case 'dlq': {
      const { values } = parseArgs({ args: rest, options: { project: { type: 'string' }, step: { type: 'string' }, seq: { type: 'string', multiple: true } } })
      return withNats(config, async (nc) => {
        const wanted = new Set((values.seq ?? []).map(Number))
        const rows = (await listDeadLetters(nc, values.project, 100_000)).filter((row) =>
          (!values.step || row.letter.data.stepId === values.step) && (wanted.size === 0 || wanted.has(row.seq)))
        if (sub === 'list') {
          for (const { seq, letter } of rows) console.log(`${String(seq).padStart(8)}  ${new Date(letter.time).toISOString()}  ${letter.project}  ${letter.data.stepId.padEnd(12)}  ${letter.id}  ${letter.data.reason}`)
          console.log(`${rows.length} dead letters`)
          return 0
        }
        if (sub === 'replay') {
          const { replayed, refusedAgain } = await replayDeadLetters(nc, rows, config.keyGroups)
          console.log(`replayed ${replayed} dead letters${refusedAgain ? `; ${refusedAgain} refused again (back in the dead-letter stream)` : ''}`)
          return 0
        }
        console.error('usage: segstream dlq list|replay [--project P] [--step S] [--seq N ...]')
        return 2
      })
    }
    case 'run':
    case 'gateway':
    case 'up': {
      const { runProcess } = await import('../deploy/local/process.ts')
      return runProcess(command, [sub, ...rest].filter((x): x is string => Boolean(x)), config)
    }
  }
  console.error(`unknown command: ${argv.join(' ')}\n\n${USAGE}`)
  return 2
}

try {
  process.exitCode = await main(process.argv.slice(2))
} catch (error) {
  if (EXPECTED.some((kind) => error instanceof kind) || (error as Error).message?.startsWith('cannot reach')) {
    console.error(`segstream: ${(error as Error).message}`)
  } else {
    console.error(error)
  }
  process.exitCode = 1
}
