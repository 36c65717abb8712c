import { once } from 'node:events'
import { createWriteStream } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { ConfigError } from '../config/env.ts'
import { backoffMs, sleep } from '../operators/runtime/retry.ts'
import { computeExpected, type ExpectedAnswers } from './expected.ts'
import {
  defaultCohortMonth, ENGAGEMENT_TIERS, MAX_USERS, planUsers, resolveSimulationOptions, simulate, SIMULATION_DEFAULTS,
  SimulationOptionError, type SimulatedMessage, type SimulationOptions,
} from './model.ts'

/**
 * The effectful side of the simulator: computes the expected answers from the log and writes them,
 * then writes the log to a file or sends it through the collector (live at a rate, or as an import).
 * The log is generated twice (once for the answers, once to send): it is deterministic and cheap,
 * and so never has to sit in memory.
 */

export type SimulateMode = 'file' | 'import' | 'live'

export interface RunOptions {
  /** The simulated world; every field has a default (model.ts, SIMULATION_DEFAULTS). */
  simulation?: Partial<SimulationOptions>
  /** Default 'file'. */
  mode?: SimulateMode
  /** File mode: where the NDJSON goes. Default `simulated-<seed>.ndjson`. */
  out?: string
  /** Where the expected answers go (JSON). Default `simulated-<seed>.expected.json`. */
  expected?: string
  /** Acquisition month (YYYY-MM) of the funnel cohort. Default 2019-05 when the range covers it, else the range's first month. */
  cohortMonth?: string
  /** Gateway base URL for live and import. Default http://localhost:8080. */
  url?: string
  /** Live mode: the project's write key. */
  writeKey?: string
  /** Import mode: the project's API key. */
  apiKey?: string
  /** Messages per second; 0 sends as fast as the collector answers. Default 20 live, 0 import. */
  rate?: number
  /** Messages per request. Default (and most) 100 live; default 1000, most 10000 import. */
  batchSize?: number
  /** Messages of the log to leave out at its start (to resume an interrupted run). Default 0. */
  skip?: number
  /** Stops sending at the next batch; the result says how far it got. */
  signal?: AbortSignal
  /** Where the progress line goes. Default stderr. */
  progress?: { write(text: string): unknown; isTTY?: boolean }
  /** First wait before a retry, ms (doubles each attempt, with jitter, up to 10 s). Default 250. */
  retryBaseMs?: number
  /** Attempts per batch before giving up. Default 30. */
  maxAttempts?: number
}

export interface RunResult {
  options: SimulationOptions
  mode: SimulateMode
  messages: number
  /** Messages written or sent in this run (after --skip; fewer when stopped). */
  handled: number
  accepted: number
  duplicates: number
  rejected: number
  firstRejection?: string
  stopped: boolean
  out?: string
  expectedPath: string
  expected: ExpectedAnswers
}

/** A run that cannot go on: its message is for the user, one line. */
export class SimulateError extends Error {
  readonly code = 'SEG_SIMULATE'
}

/** What the expected-answers file holds. */
export interface ExpectedFile {
  generatedBy: 'segstream simulate'
  /** Everything needed to generate the same log again. */
  options: SimulationOptions & { cohortMonth: string }
  /** The generator's own view, not derived from the log: each person's engagement propensity tier. */
  model: { engagementTiers: Record<string, number>; tierByUser: Record<string, string> }
  /** Computed from the log by expected.ts. */
  expected: ExpectedAnswers
}

const LIVE_MAX_BATCH = 100
const IMPORT_MAX_BATCH = 10_000

export async function runSimulation(runOptions: RunOptions): Promise<RunResult> {
  const options = resolveSimulationOptions(runOptions.simulation)
  const mode = runOptions.mode ?? 'file'
  const cohortMonth = runOptions.cohortMonth ?? defaultCohortMonth(options)
  const expectedPath = runOptions.expected ?? `simulated-${options.seed}.expected.json`
  const out = mode === 'file' ? runOptions.out ?? `simulated-${options.seed}.ndjson` : undefined

  const expected = computeExpected(simulate(options), { timezone: options.timezone, cohortMonth })
  const plans = planUsers(options)
  const engagementTiers = Object.fromEntries(ENGAGEMENT_TIERS.map((tier) => [tier, plans.filter((plan) => plan.tier === tier).length]))
  const tierByUser = Object.fromEntries(plans.map((plan) => [plan.canonicalId, plan.tier] as const).sort(([a], [b]) => (a < b ? -1 : 1)))
  const file: ExpectedFile = { generatedBy: 'segstream simulate', options: { ...options, cohortMonth }, model: { engagementTiers, tierByUser }, expected }
  // written first: the answers are there while a live run is still sending
  await writeFile(expectedPath, `${JSON.stringify(file, null, 2)}\n`)

  const result: RunResult = {
    options, mode, messages: expected.messages.total, handled: 0, accepted: 0, duplicates: 0, rejected: 0, stopped: false, out, expectedPath, expected,
  }
  const skip = runOptions.skip ?? 0
  const messages = skipped(simulate(options), skip)
  if (mode === 'file') await writeNdjson(out!, messages, result, runOptions.signal)
  else await send(mode, messages, result, { ...runOptions, skip })
  return result
}

function* skipped(messages: Iterable<SimulatedMessage>, count: number): Generator<SimulatedMessage> {
  let index = 0
  for (const message of messages) if (index++ >= count) yield message
}

async function writeNdjson(path: string, messages: Iterable<SimulatedMessage>, result: RunResult, signal?: AbortSignal): Promise<void> {
  const stream = createWriteStream(path)
  const failed = once(stream, 'error').then(([error]) => { throw new SimulateError(`cannot write ${path}: ${(error as Error).message}`) })
  failed.catch(() => undefined)
  let chunk = ''
  for (const message of messages) {
    if (signal?.aborted) {
      result.stopped = true
      break
    }
    chunk += `${JSON.stringify(message)}\n`
    result.handled++
    if (chunk.length >= 1 << 16) {
      if (!stream.write(chunk)) await Promise.race([once(stream, 'drain'), failed])
      chunk = ''
    }
  }
  stream.end(chunk)
  await Promise.race([once(stream, 'finish'), failed])
}

interface BatchAnswer {
  accepted?: number
  duplicates?: number
  rejected?: { index: number; reason: string }[]
  message?: string
}

async function send(mode: 'live' | 'import', messages: Iterable<SimulatedMessage>, result: RunResult, options: RunOptions): Promise<void> {
  const live = mode === 'live'
  const key = live ? options.writeKey : options.apiKey
  if (!key) throw new SimulateError(live ? 'live mode needs the project\'s write key: --write-key (or SEGSTREAM_WRITE_KEY)' : 'import mode needs the project\'s API key: --api-key (or SEGSTREAM_API_KEY)')
  const base = options.url ?? 'http://localhost:8080'
  const endpoint = new URL(live ? '/v1/batch' : '/v1/import', base)
  // the write key as HTTP Basic user name, as Segment SDKs send it; the API key as a Bearer token
  const authorization = live ? `Basic ${Buffer.from(`${key}:`).toString('base64')}` : `Bearer ${key}`
  const rate = options.rate ?? (live ? 20 : 0)
  const maxBatch = live ? LIVE_MAX_BATCH : IMPORT_MAX_BATCH
  // at a gentle rate, small batches spread the events over time (about ten requests a second at most)
  const batchSize = Math.min(options.batchSize ?? (live ? LIVE_MAX_BATCH : 1000), maxBatch, rate > 0 ? Math.max(1, Math.ceil(rate / 10)) : maxBatch)
  const retryBase = options.retryBaseMs ?? 250
  const maxAttempts = options.maxAttempts ?? 30
  const progress = options.progress ?? process.stderr
  const total = result.messages - (options.skip ?? 0)
  const started = performance.now()
  let lastPrinted = 0
  let lastEventTime = ''

  const print = (final = false) => {
    const now = performance.now()
    if (!final && now - lastPrinted < (progress.isTTY ? 250 : 10_000)) return
    lastPrinted = now
    const perSecond = result.handled / Math.max(0.001, (now - started) / 1000)
    const percent = total > 0 ? (100 * result.handled) / total : 100
    const text = `[simulate ${mode}] ${result.handled.toLocaleString('en')}/${total.toLocaleString('en')} (${percent.toFixed(1)}%)  accepted ${result.accepted.toLocaleString('en')}  duplicates ${result.duplicates.toLocaleString('en')}  rejected ${result.rejected}  ${perSecond.toFixed(1)} msg/s  event time ${lastEventTime.slice(0, 16) || '-'}`
    progress.write(progress.isTTY ? `\r${text}${final ? '\n' : ''}` : `${text}\n`)
  }

  const post = async (batch: SimulatedMessage[]) => {
    // no sentAt: the collector then takes each timestamp as the event time, unshifted
    const body = JSON.stringify({ batch })
    let lastProblem = ''
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      let response: Response | undefined
      try {
        // fetch keeps the connection alive between requests
        response = await fetch(endpoint, { method: 'POST', body, headers: { 'content-type': 'application/json', authorization } })
      } catch (error) {
        lastProblem = `cannot reach ${base}: ${(error as Error).cause instanceof Error ? ((error as Error).cause as Error).message : (error as Error).message}`
      }
      if (response && (response.status === 200 || response.status === 400)) {
        const answer = (await response.json().catch(() => ({}))) as BatchAnswer
        if (response.status === 400 && !answer.rejected) throw new SimulateError(`the collector refused a batch: ${answer.message ?? 'bad request'}`)
        result.accepted += answer.accepted ?? 0
        result.duplicates += answer.duplicates ?? 0
        result.rejected += answer.rejected?.length ?? 0
        if (!result.firstRejection && answer.rejected?.[0]) {
          const rejection = answer.rejected[0]
          result.firstRejection = `${batch[rejection.index]?.messageId}: ${rejection.reason}`
        }
        return
      }
      if (response?.status === 401) {
        throw new SimulateError(live ? 'the write key was refused (401): pass the project\'s write key with --write-key' : 'the API key was refused (401): pass the project\'s API key with --api-key')
      }
      if (response && response.status !== 429 && response.status < 500) {
        throw new SimulateError(`unexpected ${response.status} from ${endpoint.href}: ${(await response.text()).slice(0, 500)}`)
      }
      if (response) lastProblem = `${response.status} from ${endpoint.href}`
      await response?.body?.cancel()
      const retryAfter = Number(response?.headers.get('retry-after'))
      await sleep(retryAfter > 0 ? Math.min(retryAfter * 1000, 60_000) : backoffMs(attempt, retryBase, 10_000), options.signal)
      if (options.signal?.aborted) throw new SimulateError(`stopped while retrying a batch (${lastProblem})`)
    }
    throw new SimulateError(`gave up after ${maxAttempts} attempts: ${lastProblem}`)
  }

  let batch: SimulatedMessage[] = []
  const flush = async () => {
    if (batch.length === 0) return
    if (rate > 0) {
      const due = started + (result.handled / rate) * 1000
      const wait = due - performance.now()
      if (wait > 0) await sleep(wait, options.signal)
      if (options.signal?.aborted) return
    }
    await post(batch)
    result.handled += batch.length
    lastEventTime = batch[batch.length - 1]!.timestamp
    batch = []
    print()
  }
  for (const message of messages) {
    if (options.signal?.aborted) break
    batch.push(message)
    if (batch.length >= batchSize) await flush()
  }
  if (!options.signal?.aborted) await flush()
  result.stopped = options.signal?.aborted === true && result.handled < total
  print(true)
}

// ---------------------------------------------------------------------------------------------
// The command

export const SIMULATE_USAGE = `segstream simulate [--mode file|import|live] [options]

  Simulates people acquired over a range of days in a project timezone, browsing in sessions
  (page views, click_event1, custom_event2 with drop-off, identify on some, a second device on
  a few, a little Googlebot traffic), and writes the answers the pipeline should give.

  --mode file|import|live    file: write NDJSON (default); import: POST /v1/import with the API key;
                             live: POST /v1/batch with the write key at --rate
  --seed N                   PRNG seed, 0-4294967295 (default ${SIMULATION_DEFAULTS.seed}): same seed, same log
  --users N                  people, 1-${MAX_USERS} (default ${SIMULATION_DEFAULTS.users}); crawlers come on top
  --from YYYY-MM-DD          first local day of acquisition (default ${SIMULATION_DEFAULTS.from})
  --to YYYY-MM-DD            last local day of acquisition, inclusive (default ${SIMULATION_DEFAULTS.to})
  --timezone ZONE            the project's IANA timezone (default ${SIMULATION_DEFAULTS.timezone})
  --until YYYY-MM-DD         last local day of the log, "today" of the scenario (default: until people stop coming, months after --to)
  --cohort YYYY-MM           acquisition month of the expected funnel (default 2019-05 when in range)
  --out FILE                 file mode: the NDJSON (default simulated-<seed>.ndjson)
  --expected FILE            the expected answers, JSON (default simulated-<seed>.expected.json)
  --url URL                  the gateway (default SEGSTREAM_URL, else http://localhost:<SEGSTREAM_HTTP_PORT>)
  --write-key KEY            live: the project's write key (or SEGSTREAM_WRITE_KEY)
  --api-key KEY              import: the project's API key (or SEGSTREAM_API_KEY)
  --rate N                   messages per second, 0 = as fast as accepted (default 20 live, 0 import)
  --batch-size N             messages per request (default and most 100 live; default 1000, most 10000 import)
  --skip N                   leave out the first N messages (resume an interrupted run)
  --bots SHARE               Googlebot visitors per person, 0-1 (default ${SIMULATION_DEFAULTS.botShare})
  --identify-share P         base share of people who identify, 0-1 (default ${SIMULATION_DEFAULTS.identifyShare})
  --second-device-share P    of those, the share with a second device, 0-1 (default ${SIMULATION_DEFAULTS.secondDeviceShare})
  --click-probability P      base chance of click_event1 in a session, 0-1 (default ${SIMULATION_DEFAULTS.clickProbability})
  --convert-probability P    base chance of custom_event2 after it, 0-1 (default ${SIMULATION_DEFAULTS.convertProbability})
  --growth G                 acquisitions a day at the range's end over its start (default ${SIMULATION_DEFAULTS.growth})`

const FLAG_OF_OPTION: Record<keyof SimulationOptions, string> = {
  seed: '--seed', users: '--users', from: '--from', to: '--to', timezone: '--timezone', botShare: '--bots',
  identifyShare: '--identify-share', secondDeviceShare: '--second-device-share', clickProbability: '--click-probability',
  convertProbability: '--convert-probability', growth: '--growth', idPrefix: '--id-prefix', until: '--until',
}

const FLAGS = {
  mode: { type: 'string' }, seed: { type: 'string' }, users: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' }, until: { type: 'string' },
  timezone: { type: 'string' }, cohort: { type: 'string' }, out: { type: 'string' }, expected: { type: 'string' }, url: { type: 'string' },
  'write-key': { type: 'string' }, 'api-key': { type: 'string' }, rate: { type: 'string' }, 'batch-size': { type: 'string' },
  skip: { type: 'string' }, bots: { type: 'string' }, 'identify-share': { type: 'string' }, 'second-device-share': { type: 'string' },
  'click-probability': { type: 'string' }, 'convert-probability': { type: 'string' }, growth: { type: 'string' }, help: { type: 'boolean', short: 'h' },
} as const

function integerFlag(flag: string, raw: string | undefined, min: number, max: number): number | undefined {
  if (raw === undefined) return undefined
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) throw new ConfigError(flag, `an integer from ${min} to ${max}`, raw)
  return Number(raw)
}

function numberFlag(flag: string, raw: string | undefined, min: number, max: number): number | undefined {
  if (raw === undefined) return undefined
  const value = Number(raw)
  if (raw.trim() === '' || !Number.isFinite(value) || value < min || value > max) throw new ConfigError(flag, `a number from ${min} to ${max}`, raw)
  return value
}

/** Flags to run options; a bad flag throws a ConfigError or SimulateError that names it. */
export function parseSimulateArgs(args: string[], env: NodeJS.ProcessEnv = process.env, httpPort = 8080): RunOptions & { help?: boolean } {
  let parsed
  try {
    parsed = parseArgs({ args, options: FLAGS, allowPositionals: false, strict: true })
  } catch (error) {
    const flag = /'(--?[\w-]+)/.exec((error as Error).message)?.[1]
    const code = (error as { code?: string }).code
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw new SimulateError(`unknown flag ${flag} for simulate (segstream simulate --help lists them)`)
    if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') throw new SimulateError(`simulate takes no positional arguments, got ${/'([^']*)'/.exec((error as Error).message)?.[1]} (segstream simulate --help)`)
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && flag) throw new SimulateError(`${flag} needs a value (for one starting with a dash, write ${flag}=-N)`)
    throw new SimulateError(`${(error as Error).message.split('\n')[0]} (segstream simulate --help)`)
  }
  const values = parsed.values
  if (values.help) return { help: true }
  const mode = values.mode ?? 'file'
  if (mode !== 'file' && mode !== 'import' && mode !== 'live') throw new ConfigError('--mode', 'one of file, import, live', mode)
  if (values.cohort !== undefined && !/^\d{4}-(0[1-9]|1[0-2])$/.test(values.cohort)) throw new ConfigError('--cohort', 'a month YYYY-MM', values.cohort)
  if (values.url !== undefined) {
    let ok = false
    try {
      ok = ['http:', 'https:'].includes(new URL(values.url).protocol)
    } catch {}
    if (!ok) throw new ConfigError('--url', 'an http:// or https:// URL', values.url)
  }
  for (const [flag, value] of [['--out', values.out], ['--expected', values.expected]] as const) {
    if (value !== undefined && value.trim() === '') throw new ConfigError(flag, 'a file path', value)
  }
  const isImport = mode === 'import'
  return {
    mode,
    simulation: {
      seed: integerFlag('--seed', values.seed, 0, 0xffffffff),
      users: integerFlag('--users', values.users, 1, MAX_USERS),
      from: values.from, to: values.to, until: values.until, timezone: values.timezone,
      botShare: numberFlag('--bots', values.bots, 0, 1),
      identifyShare: numberFlag('--identify-share', values['identify-share'], 0, 1),
      secondDeviceShare: numberFlag('--second-device-share', values['second-device-share'], 0, 1),
      clickProbability: numberFlag('--click-probability', values['click-probability'], 0, 1),
      convertProbability: numberFlag('--convert-probability', values['convert-probability'], 0, 1),
      growth: numberFlag('--growth', values.growth, 0.01, 100),
    },
    cohortMonth: values.cohort,
    out: values.out,
    expected: values.expected,
    url: values.url ?? env.SEGSTREAM_URL ?? `http://localhost:${httpPort}`,
    writeKey: values['write-key'] ?? (env.SEGSTREAM_WRITE_KEY || undefined),
    apiKey: values['api-key'] ?? (env.SEGSTREAM_API_KEY || undefined),
    rate: numberFlag('--rate', values.rate, 0, 1_000_000),
    batchSize: integerFlag('--batch-size', values['batch-size'], 1, isImport ? IMPORT_MAX_BATCH : LIVE_MAX_BATCH),
    skip: integerFlag('--skip', values.skip, 0, Number.MAX_SAFE_INTEGER),
  }
}

/** `segstream simulate ...`: returns the exit code. */
export async function simulateCommand(args: string[], httpPort = 8080): Promise<number> {
  const options = parseSimulateArgs(args, process.env, httpPort)
  if (options.help) {
    console.log(SIMULATE_USAGE)
    return 0
  }
  const mode = options.mode!
  if (mode === 'live' && !options.writeKey) throw new ConfigError('--write-key', 'the project\'s write key for live mode (or SEGSTREAM_WRITE_KEY)', '')
  if (mode === 'import' && !options.apiKey) throw new ConfigError('--api-key', 'the project\'s API key for import mode (or SEGSTREAM_API_KEY)', '')

  const controller = new AbortController()
  const stop = () => controller.abort()
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  let result: RunResult
  try {
    result = await runSimulation({ ...options, signal: controller.signal })
  } catch (error) {
    if (error instanceof SimulationOptionError) throw new ConfigError(FLAG_OF_OPTION[error.option], error.expected, String(error.got))
    throw error
  } finally {
    process.off('SIGINT', stop)
    process.off('SIGTERM', stop)
  }

  const { options: simulation, expected } = result
  const crawlers = Math.round(simulation.users * simulation.botShare)
  const funnel = expected.funnel.steps.map((step) => step.users).join(' → ')
  console.log(`simulated ${simulation.users.toLocaleString('en')} people and ${crawlers} crawler${crawlers === 1 ? '' : 's'} acquired ${simulation.from}..${simulation.to} (${simulation.timezone}, seed ${simulation.seed}): ${result.messages.toLocaleString('en')} messages`)
  console.log(`expected answers in ${result.expectedPath}: ${expected.users.total.toLocaleString('en')} users, ${expected.sessions.total.toLocaleString('en')} sessions; ${expected.funnel.cohort} funnel ${funnel} (${expected.funnel.stuckAtLevel2.length} stuck at level 2)`)
  if (mode === 'file') console.log(`wrote ${result.handled.toLocaleString('en')} messages to ${result.out}`)
  else console.log(`sent ${result.handled.toLocaleString('en')} messages to ${options.url}${mode === 'live' ? '/v1/batch' : '/v1/import'}: ${result.accepted.toLocaleString('en')} accepted (${result.duplicates.toLocaleString('en')} already stored), ${result.rejected} rejected${result.firstRejection ? ` (first: ${result.firstRejection})` : ''}`)
  if (result.stopped) {
    console.log(mode === 'file' ? `stopped early: ${result.out} is incomplete` : `stopped early: run the same command with --skip ${(options.skip ?? 0) + result.handled} to continue`)
    return 130
  }
  return result.rejected > 0 ? 1 : 0
}
