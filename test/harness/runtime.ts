import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import type { NatsConnection } from '@nats-io/transport-node'
import { jetstream } from '@nats-io/jetstream'
import { readStream } from '../../broker/read.ts'
import { PipelinedPublisher } from '../../broker/publisher.ts'
import { decodeEnvelope, encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type EnrichedEventEnvelope, type RawEventEnvelope } from '../../schemas/envelope.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'
import { keyGroupOf, subjectFor } from '../../topology/subjects.ts'
import { cleanEnv } from './ports.ts'

/** Publishes Segment messages to the raw stage as the collector would. */
export async function publishRaw(nc: NatsConnection, project: string, messages: Iterable<SegmentMessage>, keyGroups: number): Promise<number> {
  const publisher = new PipelinedPublisher(nc, { timeoutMs: 10_000 })
  const pending: Promise<unknown>[] = []
  for (const message of messages) {
    const key = message.anonymousId ?? message.userId!
    const keyGroup = keyGroupOf(key, keyGroups)
    const envelope: RawEventEnvelope = { v: ENVELOPE_VERSION, type: 'raw_event', project, id: message.messageId, time: Date.parse(message.timestamp), key, keyGroup, source: 'live', data: message }
    pending.push(publisher.publish(subjectFor(project, 'raw', keyGroup), encode(envelope), `${project}:${message.messageId}`))
  }
  await Promise.all(pending)
  publisher.close()
  return pending.length
}

/** Every enriched-stage message of a project, in stream order. */
export async function readEnriched(nc: NatsConnection, project: string): Promise<EnrichedEventEnvelope[]> {
  const out: EnrichedEventEnvelope[] = []
  await readStream(jetstream(nc), 'SEG_ENRICHED', { filterSubjects: [`seg.${project}.enriched.*`] }, (message) => out.push(decodeEnvelope(message.data) as EnrichedEventEnvelope))
  return out
}

/**
 * Compares the counter's outputs with what exactly-once processing must give:
 * per user, "count:1" .. "count:k", each once, in order, k = the user's inputs.
 */
export function countProblems(outputs: EnrichedEventEnvelope[], inputs: SegmentMessage[]): string[] {
  const expected = new Map<string, number>()
  for (const message of inputs) expected.set(message.anonymousId!, (expected.get(message.anonymousId!) ?? 0) + 1)
  const actual = new Map<string, number[]>()
  for (const output of outputs) {
    const list = actual.get(output.key) ?? []
    list.push(Number(output.data.name.split(':')[1]))
    actual.set(output.key, list)
  }
  const problems: string[] = []
  for (const [user, count] of expected) {
    const got = actual.get(user) ?? []
    const want = Array.from({ length: count }, (_, i) => i + 1)
    if (got.join(',') !== want.join(',')) problems.push(`${user}: expected counts 1..${count}, got [${got.join(',')}]`)
  }
  for (const user of actual.keys()) if (!expected.has(user)) problems.push(`${user}: outputs for a user with no input`)
  return problems
}

export interface CounterProcess {
  child: ChildProcess
  instanceId: string
  /** Key groups it reported owning last. */
  owned(): number[]
  exited: Promise<number | null>
}

/** Starts test/fixtures/counter-process.ts; resolves once it runs. */
export async function spawnCounter(env: Record<string, string>, options: { waitReady?: boolean } = {}): Promise<CounterProcess> {
  const child = spawn(process.execPath, [join(import.meta.dirname, '../fixtures/counter-process.ts')], { stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv(env) })
  let owned: number[] = []
  let stderr = ''
  child.stderr!.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)))
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const instanceId = await new Promise<string>((resolve, reject) => {
    let buffer = ''
    child.stdout!.on('data', (chunk) => {
      buffer += chunk
      let newline
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline)
        buffer = buffer.slice(newline + 1)
        if (line.startsWith('ready ')) resolve(line.slice(6))
        if (line.startsWith('owned ')) owned = line.slice(6).split(',').filter(Boolean).map(Number)
      }
    })
    void exited.then((code) => (options.waitReady === false ? resolve('(exited)') : reject(new Error(`counter process exited with ${code} before it was ready: ${stderr}`))))
    if (options.waitReady === false) resolve('(not waited)')
  })
  return { child, instanceId, owned: () => owned, exited }
}
