import t from 'tap'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { connectNats } from '../broker/connect.ts'
import { createLogger } from '../config/logger.ts'
import { generateEvents } from '../operators/runtime/generator.ts'
import { decodeEnvelope } from '../schemas/codec.ts'
import type { DeadLetterEnvelope } from '../schemas/envelope.ts'
import type { SegmentMessage } from '../schemas/segment.ts'
import { applyTopology } from '../topology/apply.ts'
import { counter, counterTopology } from './fixtures/counter.ts'
import { Metrics } from '../operators/runtime/metrics.ts'
import { startInstance } from '../operators/runtime/instance.ts'
import { startNats } from './harness/nats.ts'
import { countProblems, publishRaw, readEnriched, spawnCounter, type CounterProcess } from './harness/runtime.ts'
import { eventually } from './harness/system.ts'
import { PipelinedPublisher } from '../broker/publisher.ts'
import { publishControl } from '../operators/runtime/control.ts'
import { listDeadLetters, replayDeadLetters } from '../cli/dlq.ts'
import { readStream } from '../broker/read.ts'

/** A test's handle: the assertions of `t`, whatever plugins are built. */
type Test = Pick<typeof t, 'equal' | 'same' | 'ok' | 'match' | 'teardown'>

const KEY_GROUPS = 8
const logger = createLogger('silent')

async function setup(t: Test) {
  const nats = await startNats()
  const nc = await connectNats(nats.url, 'test', logger)
  await applyTopology(nc, counterTopology(), { keyGroups: KEY_GROUPS })
  const env = { NATS_URL: nats.url, KEY_GROUPS: String(KEY_GROUPS), LEASE_MS: '1500', HEARTBEAT_MS: '250', BATCH_SIZE: '50' }
  const children: CounterProcess[] = []
  const spawn = async (extra: Record<string, string> = {}, waitReady = true) => {
    const child = await spawnCounter({ ...env, ...extra }, { waitReady })
    children.push(child)
    return child
  }
  t.teardown(async () => {
    for (const { child } of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await nc.close()
    await nats.close()
  })
  return { nats, nc, spawn }
}


const events = (seed: number, count: number, users = 40): SegmentMessage[] => [...generateEvents({ seed, users, events: count })]

async function expectExact(t: Test, nc: Awaited<ReturnType<typeof setup>>['nc'], project: string, inputs: SegmentMessage[], timeoutMs = 60_000) {
  await eventually(`${inputs.length} outputs for ${project}`, async () => (await readEnriched(nc, project)).length >= inputs.length, timeoutMs)
  // a doubled output would arrive late: give it the chance
  await new Promise((r) => setTimeout(r, 500))
  const outputs = await readEnriched(nc, project)
  t.equal(outputs.length, inputs.length, `${project}: one output per input`)
  t.same(countProblems(outputs, inputs), [], `${project}: every user's counts are 1..k, once each, in order`)
}

t.test('effectively once across SIGKILL at each failpoint', async (t) => {
  const { nc, spawn } = await setup(t)
  for (const point of ['before-publish', 'after-publish', 'after-commit'] as const) {
    const project = `fp-${point}`
    const inputs = events(point.length, 500)
    await publishRaw(nc, project, inputs, KEY_GROUPS)
    // a checkpoint after every batch, so the failpoint is reached at a known batch
    const doomed = await spawn({ SEGSTREAM_FAILPOINT: `${point}:3`, COMMIT_INTERVAL_MS: '0' }, false)
    const code = await Promise.race([doomed.exited, new Promise<string>((r) => setTimeout(() => r('still running'), 60_000))])
    t.equal(code, null, `${point}: the process died at the failpoint (SIGKILL)`)
    t.equal(doomed.child.signalCode, 'SIGKILL')
    const survivor = await spawn()
    await expectExact(t, nc, project, inputs)
    survivor.child.kill('SIGTERM')
    await survivor.exited
  }
})

t.test('effectively once across random SIGKILLs under load', async (t) => {
  const { nc, spawn } = await setup(t)
  const inputs = events(42, 3000, 60)
  let seed = 7
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
  const publishing = publishRaw(nc, 'chaos', inputs, KEY_GROUPS)
  for (let round = 0; round < 4; round++) {
    const victim = await spawn()
    await new Promise((r) => setTimeout(r, 200 + random() * 600))
    victim.child.kill('SIGKILL')
    await victim.exited
  }
  await publishing
  await spawn()
  await expectExact(t, nc, 'chaos', inputs)
})

t.test('ownership: key groups spread over three instances and move when one dies', async (t) => {
  const { nc, spawn } = await setup(t)
  const instances = [await spawn(), await spawn(), await spawn()]
  await eventually('key groups spread over three', () => {
    const owned = instances.map((i) => i.owned())
    return owned.every((o) => o.length >= 2) && new Set(owned.flat()).size === KEY_GROUPS && owned.flat().length === KEY_GROUPS
  }, 20_000)
  t.same(instances.map((i) => i.owned().length).sort(), [2, 3, 3], 'a fair share each, no key group twice')

  const first = events(1, 1500)
  await publishRaw(nc, 'handoff', first, KEY_GROUPS)
  instances[0]!.child.kill('SIGKILL')
  const second = events(2, 1500).map((m) => ({ ...m, messageId: `second-${m.messageId}` }))
  await publishRaw(nc, 'handoff', second, KEY_GROUPS)
  await eventually('the survivors own every key group', () => {
    const owned = [instances[1]!.owned(), instances[2]!.owned()]
    return new Set(owned.flat()).size === KEY_GROUPS && owned.flat().length === KEY_GROUPS
  }, 20_000)
  await expectExact(t, nc, 'handoff', [...first, ...second])
})

t.test('a paused owner (SIGSTOP) that wakes after the hand-off cannot overwrite newer work', async (t) => {
  const { nc, spawn } = await setup(t)
  const a = await spawn()
  const b = await spawn()
  await eventually('two owners', () => a.owned().length > 0 && b.owned().length > 0 && a.owned().length + b.owned().length === KEY_GROUPS, 20_000)
  const inputs = events(3, 3000, 50)
  const publishing = publishRaw(nc, 'paused', inputs.slice(0, 1500), KEY_GROUPS)
  await new Promise((r) => setTimeout(r, 150))
  a.child.kill('SIGSTOP')
  await publishing
  await eventually('b took every key group', () => b.owned().length === KEY_GROUPS, 20_000)
  await publishRaw(nc, 'paused', inputs.slice(1500), KEY_GROUPS)
  a.child.kill('SIGCONT')
  await expectExact(t, nc, 'paused', inputs)
  // the woken instance rejoins and gets its share back, with the state b built
  await eventually('a has a share again', () => a.owned().length > 0 && a.owned().length + b.owned().length === KEY_GROUPS, 20_000)
  const more = events(4, 600, 50).map((m) => ({ ...m, messageId: `more-${m.messageId}` }))
  await publishRaw(nc, 'paused', more, KEY_GROUPS)
  await expectExact(t, nc, 'paused', [...inputs, ...more])
})

t.test('a poison message goes to the dead-letter subject and processing continues', async (t) => {
  const { nc, spawn } = await setup(t)
  const first = await spawn()
  const inputs = events(5, 200, 10)
  const poison = { ...inputs[100]!, messageId: 'the-poison', event: 'poison' }
  await publishRaw(nc, 'poison', [...inputs.slice(0, 100), poison, ...inputs.slice(100)], KEY_GROUPS)
  await expectExact(t, nc, 'poison', inputs)
  const js = jetstream(nc)
  const consumer = await js.consumers.get('SEG_DLQ')
  const letters: DeadLetterEnvelope[] = []
  for await (const m of await consumer.fetch({ max_messages: 10, expires: 1000 })) letters.push(decodeEnvelope(m.data) as DeadLetterEnvelope)
  t.equal(letters.length, 1, 'one dead letter')
  t.equal(letters[0]!.data.stepId, 'counter')
  t.match(letters[0]!.data.reason, /poison event/)
  t.same((decodeEnvelope(letters[0]!.data.payload as Uint8Array) as { id: string }).id, 'the-poison', 'with the original payload')

  // after a fix, `segstream dlq replay` re-injects it, once
  first.child.kill('SIGTERM')
  await first.exited
  await spawn({ ACCEPT_POISON: '1' })
  const listed = await listDeadLetters(nc, 'poison')
  t.same(listed.map((row) => row.letter.id), [letters[0]!.id], 'dlq list shows it')
  t.same(await replayDeadLetters(nc, listed, KEY_GROUPS), { replayed: 1, refusedAgain: 0 })
  t.same(await listDeadLetters(nc, 'poison'), [], 'the replayed letter left the dead-letter stream')
  await expectExact(t, nc, 'poison', [...inputs, poison])
})

t.test('an input too late for a closed window goes, unchanged, to the late subject (counted: test/unit/kernel.test.ts)', async (t) => {
  const { nc, spawn } = await setup(t)
  await spawn()
  const inputs = events(11, 300, 12)
  const late = [50, 150, 250].map((i) => ({ ...inputs[i]!, messageId: `late-${i}`, event: 'too-late' }))
  await publishRaw(nc, 'late', [...inputs.slice(0, 100), late[0]!, ...inputs.slice(100, 200), late[1]!, late[2]!, ...inputs.slice(200)], KEY_GROUPS)
  await expectExact(t, nc, 'late', inputs)
  const stored: string[] = []
  await readStream(jetstream(nc), 'SEG_LATE', { filterSubjects: ['seg.late.late.*'] }, (m) => stored.push((decodeEnvelope(m.data) as { id: string }).id))
  t.same(stored.sort(), late.map((m) => m.messageId).sort(), 'each late input once, as it came')
})

t.test('nats-server restarted mid-stream: the operator waits, reconnects and resumes', async (t) => {
  const { nats, nc, spawn } = await setup(t)
  await spawn()
  const inputs = events(6, 2000, 30)
  await publishRaw(nc, 'restart', inputs.slice(0, 1000), KEY_GROUPS)
  await nats.stop()
  await new Promise((r) => setTimeout(r, 1000))
  await nats.restart()
  await eventually('client reconnected', async () => { try { await nc.flush(); return true } catch { return false } }, 20_000)
  await publishRaw(nc, 'restart', inputs.slice(1000), KEY_GROUPS)
  await expectExact(t, nc, 'restart', inputs, 90_000)
})

t.test('graceful stop checkpoints and hands over at once', async (t) => {
  const { nc, spawn } = await setup(t)
  const first = await spawn()
  const inputs = events(8, 1000)
  await publishRaw(nc, 'graceful', inputs.slice(0, 500), KEY_GROUPS)
  await eventually('first half done', async () => (await readEnriched(nc, 'graceful')).length === 500)
  first.child.kill('SIGTERM')
  t.equal(await first.exited, 0, 'exits cleanly on SIGTERM')
  const started = Date.now()
  await spawn()
  await publishRaw(nc, 'graceful', inputs.slice(500), KEY_GROUPS)
  await expectExact(t, nc, 'graceful', inputs)
  t.ok(Date.now() - started < 15_000, 'the next instance did not wait for leases to expire')
})

t.test('a definition published as control messages takes effect at one point, across a crash', async (t) => {
  const { nc, spawn } = await setup(t)
  const inputs = events(9, 900, 20)
  await publishRaw(nc, 'defs', inputs.slice(0, 300), KEY_GROUPS)
  const publisher = new PipelinedPublisher(nc)
  t.teardown(() => publisher.close())
  t.equal(await publishControl(publisher, { project: 'defs', stages: ['raw'], keyGroups: KEY_GROUPS, control: { stepId: 'counter', name: 'labels', version: 1, definition: { label: 'v1' } }, time: 0 }), KEY_GROUPS)
  await publishRaw(nc, 'defs', inputs.slice(300), KEY_GROUPS)
  // killed after its second commit, then replayed by the next instance
  const doomed = await spawn({ SEGSTREAM_FAILPOINT: 'after-commit:2', COMMIT_INTERVAL_MS: '0' }, false)
  t.equal(await Promise.race([doomed.exited, new Promise<string>((r) => setTimeout(() => r('still running'), 60_000))]), null, 'killed at its second commit')
  await spawn()
  await expectExact(t, nc, 'defs', inputs)
  const outputs = await readEnriched(nc, 'defs')
  const labelled = outputs.filter((o) => o.data.name.endsWith(':v1')).map((o) => o.id.replace(/:count$/, ''))
  const expected = inputs.slice(300).map((m) => m.messageId)
  t.same(labelled.sort(), expected.sort(), 'exactly the events after the definition carry its label')
})

t.test('metrics: Prometheus text with events, owned key groups, lag and watermark delay', async (t) => {
  const { nc } = await setup(t)
  const topology = counterTopology()
  const metrics = new Metrics()
  const publisher = new PipelinedPublisher(nc)
  const instance = startInstance({ nc, publisher, operator: counter, step: topology.steps[1]!, topology, keyGroups: KEY_GROUPS, logger, metrics, leaseMs: 1500, heartbeatMs: 250 })
  t.teardown(async () => { await instance.stop(); publisher.close() })
  await instance.start()
  const inputs = events(10, 300, 10)
  await publishRaw(nc, 'metrics', inputs, KEY_GROUPS)
  await expectExact(t, nc, 'metrics', inputs)
  const text = await metrics.render()
  t.match(text, /# TYPE segstream_events_in_total counter/)
  t.match(text, /segstream_events_in_total\{step="counter"\} 300\b/, 'every input counted')
  t.match(text, /segstream_events_out_total\{step="counter"\} 300\b/)
  t.match(text, new RegExp(`segstream_owned_key_groups\\{step="counter",instance="${instance.instanceId}"\\} ${KEY_GROUPS}`))
  t.match(text, /segstream_consumer_lag\{step="counter",stream="SEG_RAW",key_group="0"\} 0\b/, 'no lag once caught up')
  t.match(text, /segstream_watermark_delay_seconds\{step="counter",key_group="\d+",project="metrics",source="live"\} \d/)
  t.match(text, /segstream_state_keys\{step="counter",key_group="\d+"\} \d+/)
})

t.test('backpressure: a downstream that refuses writes stops consumption, memory stays flat, nothing is lost', async (t) => {
  const { nc } = await setup(t)
  const jsm = await jetstreamManager(nc)
  const { config } = await jsm.streams.info('SEG_ENRICHED')
  // the downstream stream is full: it refuses every write beyond 100 messages
  await jsm.streams.update('SEG_ENRICHED', { ...config, max_msgs: 100 })
  const topology = counterTopology()
  const publisher = new PipelinedPublisher(nc, { timeoutMs: 2_000 })
  const instance = startInstance({ nc, publisher, operator: counter, step: topology.steps[1]!, topology, keyGroups: KEY_GROUPS, logger, leaseMs: 1500, heartbeatMs: 250, batchSize: 50 })
  t.teardown(async () => { await instance.stop(); publisher.close() })
  await instance.start()
  const inputs = events(11, 20_000, 50)
  await publishRaw(nc, 'slow', inputs, KEY_GROUPS)
  await eventually('the stream filled up', async () => (await jsm.streams.info('SEG_ENRICHED')).state.messages === 100, 30_000)
  const buffered: number[] = []
  const heap: number[] = []
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 500))
    buffered.push(instance.buffered())
    heap.push(process.memoryUsage().heapUsed)
  }
  t.equal((await jsm.streams.info('SEG_ENRICHED')).state.messages, 100, 'nothing more was stored while the downstream refused')
  // memory is flat because what is read ahead is bounded: four batches, not the 20,000 waiting inputs
  t.ok(Math.max(...buffered) <= 4 * 50 + 2 * 50, `at most a few batches held in memory (max ${Math.max(...buffered)})`)
  t.comment(`heap while blocked: ${heap.map((h) => Math.round(h / 1e6)).join(', ')} MB`)
  // the downstream recovers: processing resumes from the checkpoints and ends exact
  await jsm.streams.update('SEG_ENRICHED', { ...config, max_msgs: -1 })
  await expectExact(t, nc, 'slow', inputs, 120_000)
})
