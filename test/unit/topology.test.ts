import t from 'tap'
import { segstreamTopology } from '../../topology/definition.ts'
import { topologyToMermaid } from '../../topology/graph.ts'
import { deepFreeze, type StepSpec, type StreamSpec, type Topology } from '../../topology/model.ts'
import { downstreamOf, TopologyError, topologyProblems, validateTopology } from '../../topology/validate.ts'

const CONSUMER = { maxAckPending: 10, ackWaitMs: 1000, batchSize: 10 }

function stream(name: string, subjects: string[]): StreamSpec {
  return { name, description: name, subjects, retention: 'limits', storage: 'memory', replicas: 1, duplicateWindowMs: 1000, maxAgeMs: 0, maxBytes: -1, discard: 'new' }
}

function step(stepId: string, kind: StepSpec['kind'], inputs: string[], outputs: string[], extra: Partial<StepSpec> = {}): StepSpec {
  return { stepId, kind, description: stepId, module: `operators/${stepId}`, inputs, outputs, ...(kind === 'source' ? {} : { consumer: CONSUMER }), ...extra }
}

/** source -> op -> sink over two streams: valid. */
function base(): { name: string; streams: StreamSpec[]; kv: []; steps: StepSpec[] } {
  return {
    name: 'test',
    streams: [stream('IN', ['x.in.*']), stream('OUT', ['x.out.*'])],
    kv: [],
    steps: [
      step('src', 'source', [], ['x.in.*']),
      step('op', 'operator', ['x.in.*'], ['x.out.*']),
      step('sink', 'sink', ['x.out.*'], [], { tables: ['t'] }),
    ],
  }
}

t.test('the shipped topology is valid', async (t) => {
  const topology = segstreamTopology()
  t.same(topologyProblems(topology), [], 'no problems')
  t.equal(validateTopology(topology), topology, 'validateTopology returns it unchanged')
  t.same(
    topology.steps.map((s) => s.stepId),
    ['collector', 'enrich', 'sessionize', 'profile', 'funnel', 'funnel-backfill', 'aggregates', 'live-counts', 'funnel-counts', 'sink-events', 'sink-sessions', 'sink-profiles', 'sink-funnels', 'sink-aggregates'],
  )
  t.same(
    topology.streams.map((s) => s.name),
    ['SEG_RAW', 'SEG_IMPORT', 'SEG_ENRICHED', 'SEG_SESSIONS', 'SEG_PROFILES', 'SEG_FUNNELS', 'SEG_BACKFILL', 'SEG_AGGREGATES', 'SEG_COUNTS', 'SEG_LATE', 'SEG_DLQ'],
  )
  t.same(
    topology.streams.map((s) => s.subjects),
    [['seg.*.raw.*'], ['seg.*.import.*'], ['seg.*.enriched.*'], ['seg.*.sessions.*'], ['seg.*.profiles.*'], ['seg.*.funnels.*'], ['seg.*.backfill.*'], ['seg.*.aggregates.*'], ['seg.*.counts.*', 'seg.*.funnel_counts.*'], ['seg.*.late.*'], ['seg.*.dlq.*']],
  )
  const byId = (id: string) => topology.steps.find((s) => s.stepId === id)!
  t.same(downstreamOf(topology, byId('collector')).map((s) => s.stepId), ['enrich'], 'the collector feeds enrich')
  t.same(downstreamOf(topology, byId('enrich')).map((s) => s.stepId), ['sessionize', 'profile', 'funnel', 'funnel-backfill', 'aggregates', 'sink-events'], 'enrich feeds sessionize, profile, funnel, the funnel backfill, aggregates and the sink')
  t.same(downstreamOf(topology, byId('sessionize')).map((s) => s.stepId), ['profile', 'funnel', 'funnel-backfill', 'sink-sessions'], 'sessionize feeds profile, funnel, the funnel backfill and its sink')
  t.same(downstreamOf(topology, byId('profile')).map((s) => s.stepId), ['live-counts', 'sink-profiles'], 'profile feeds live counts and its sink')
  t.same(downstreamOf(topology, byId('live-counts')).map((s) => s.stepId), [], 'live counts are read by the gateway, not by a step')
  t.same(downstreamOf(topology, byId('funnel')).map((s) => s.stepId), ['funnel-counts', 'sink-funnels'], 'funnel feeds its step counts and its sink')
  t.same(downstreamOf(topology, byId('funnel-counts')).map((s) => s.stepId), [], 'funnel step counts are read by the gateway, not by a step')
  t.same(downstreamOf(topology, byId('funnel-backfill')).map((s) => s.stepId), ['funnel'], 'the funnel backfill feeds the funnel step (seeds)')
  t.same(downstreamOf(topology, byId('aggregates')).map((s) => s.stepId), ['sink-aggregates'], 'aggregates feeds its sink')
  t.same(downstreamOf(topology, byId('sink-events')).map((s) => s.stepId), [], 'nothing reads the dead letters')
  for (const s of topology.steps) {
    if (s.kind !== 'source') t.ok(s.consumer, `${s.stepId} has consumer settings`)
  }

  const tuned = segstreamTopology({ streamMaxAgeMs: 1000, streamMaxBytes: 2048, replicas: 3 })
  t.same(topologyProblems(tuned), [], 'a tuned topology is valid too')
  for (const s of tuned.streams) {
    t.equal(s.replicas, 3, `${s.name} replicas`)
    if (s.name !== 'SEG_DLQ' && s.name !== 'SEG_LATE' && s.name !== 'SEG_COUNTS') {
      t.equal(s.maxAgeMs, 1000, `${s.name} maxAgeMs follows the option`)
      t.equal(s.maxBytes, 2048, `${s.name} maxBytes follows the option`)
    }
  }
  const dlq = tuned.streams.find((s) => s.name === 'SEG_DLQ')!
  t.not(dlq.maxAgeMs, 1000, 'the DLQ keeps its own retention, not streamMaxAgeMs')
  t.ok(dlq.maxAgeMs > 0, 'and keeps dead letters for a while')
  t.ok(dlq.maxBytes > 0 && dlq.maxBytes <= 2048, 'the DLQ cap never exceeds the event stream cap')
  for (const kv of tuned.kv) t.equal(kv.replicas, 3, `${kv.bucket} replicas`)
  const defaults = segstreamTopology()
  const eventStreams = defaults.streams.filter((s) => s.name !== 'SEG_DLQ' && s.name !== 'SEG_LATE' && s.name !== 'SEG_COUNTS')
  const counts = tuned.streams.find((s) => s.name === 'SEG_COUNTS')!
  t.equal(counts.maxMessagesPerSubject, 1, 'live counts keep the latest message per subject')
  t.equal(counts.maxAgeMs, 0, 'however old: a quiet key group\'s counts stay')
  t.ok(counts.maxBytes > 0 && counts.maxBytes <= 2048, 'its cap never exceeds the event stream cap')
  t.ok(eventStreams.every((s) => s.maxAgeMs === 7 * 24 * 60 * 60_000), 'default retention is 7 days')
  const cap = eventStreams[0]!.maxBytes
  t.ok(Number.isInteger(cap) && cap > 0, `default cap is a positive byte count (${cap})`)
  t.ok(eventStreams.every((s) => s.maxBytes === cap), 'the same cap for every event stream')
  t.ok(defaults.streams.every((s) => s.duplicateWindowMs > 0 && s.discard === 'new' && s.retention === 'limits'), 'dedup window, discard new, limits retention')
  t.equal(defaults.streams[0]!.replicas, 1, 'default replicas is 1')
})

t.test('topologyProblems detects each problem', async (t) => {
  t.same(topologyProblems(base()), [], 'the base fixture is valid')

  const cases: Array<{ name: string; mutate: (topology: ReturnType<typeof base>) => void; expect: RegExp[] }> = [
    {
      name: 'duplicate stepId',
      mutate: (tp) => tp.steps.push(step('op', 'operator', ['x.in.*'], ['x.out.*'])),
      expect: [/^duplicate stepId "op"$/],
    },
    {
      name: 'invalid stepId',
      mutate: (tp) => (tp.steps[1] = { ...tp.steps[1]!, stepId: 'op 1' }),
      expect: [/^step "op 1": stepId must match/],
    },
    {
      name: 'operator without consumer settings',
      mutate: (tp) => (tp.steps[1] = { ...tp.steps[1]!, consumer: undefined }),
      expect: [/^step "op": a operator needs consumer settings$/],
    },
    {
      name: 'sink without consumer settings',
      mutate: (tp) => (tp.steps[2] = { ...tp.steps[2]!, consumer: undefined }),
      expect: [/^step "sink": a sink needs consumer settings$/],
    },
    {
      name: 'an input no step produces',
      mutate: (tp) => {
        tp.streams.push(stream('NOWHERE', ['x.nowhere']))
        tp.steps[1] = { ...tp.steps[1]!, inputs: ['x.in.*', 'x.nowhere'] }
      },
      expect: [/^step "op": input subject "x\.nowhere" is produced by no step$/],
    },
    {
      name: 'an input only the step itself produces',
      mutate: (tp) => {
        tp.streams.push(stream('SELF', ['x.self']))
        tp.steps.push(step('lonely', 'operator', ['x.self'], ['x.self']))
      },
      // it reads only itself: nothing feeds it, and it is a one-step cycle
      expect: [/^step "lonely": input subject "x\.self" is produced by no step$/, /^cycle: lonely -> lonely$/],
    },
    {
      name: 'an output no stream captures',
      mutate: (tp) => (tp.steps[1] = { ...tp.steps[1]!, outputs: ['x.out.*', 'y.lost'] }),
      expect: [/^step "op": subject "y\.lost" is captured by no stream$/],
    },
    {
      name: 'an input no stream captures',
      mutate: (tp) => {
        tp.steps[0] = { ...tp.steps[0]!, outputs: ['x.in.*', 'y.side'] }
        tp.steps[1] = { ...tp.steps[1]!, inputs: ['x.in.*', 'y.side'] }
      },
      expect: [/^step "src": subject "y\.side" is captured by no stream$/, /^step "op": subject "y\.side" is captured by no stream$/],
    },
    {
      name: 'overlapping streams',
      mutate: (tp) => tp.streams.push(stream('ALL', ['x.>'])),
      expect: [/^streams "ALL" and "IN" overlap on "x\.>" \/ "x\.in\.\*"$/, /^streams "ALL" and "OUT" overlap on "x\.>" \/ "x\.out\.\*"$/],
    },
    {
      name: 'duplicate stream name',
      mutate: (tp) => tp.streams.push(stream('IN', ['z.in'])),
      expect: [/^duplicate stream "IN"$/],
    },
    {
      name: 'invalid stream name',
      mutate: (tp) => tp.streams.push(stream('BAD.NAME', ['z.in'])),
      expect: [/^stream "BAD\.NAME": name must match/],
    },
    {
      name: 'a cycle of two operators feeding each other',
      mutate: (tp) => {
        tp.streams.push(stream('LOOP', ['x.a', 'x.b']))
        tp.steps.push(step('a', 'operator', ['x.a'], ['x.b']), step('b', 'operator', ['x.b'], ['x.a']))
      },
      expect: [/^cycle: a -> b -> a$/],
    },
    {
      name: 'a longer cycle',
      mutate: (tp) => {
        tp.streams.push(stream('LOOP', ['x.a', 'x.b', 'x.c']))
        tp.steps.push(step('a', 'operator', ['x.a'], ['x.b']), step('b', 'operator', ['x.b'], ['x.c']), step('c', 'operator', ['x.c'], ['x.a']))
      },
      expect: [/^cycle: a -> b -> c -> a$/],
    },
    {
      name: 'a cycle through the sink',
      mutate: (tp) => (tp.steps[2] = { ...tp.steps[2]!, outputs: ['x.in.back'] }),
      expect: [/^cycle: op -> sink -> op$/],
    },
  ]
  for (const c of cases) {
    const topology = base()
    c.mutate(topology)
    const problems = topologyProblems(topology)
    t.equal(problems.length, c.expect.length, `${c.name}: exactly ${c.expect.length} problem(s): ${JSON.stringify(problems)}`)
    for (const pattern of c.expect) {
      t.ok(problems.some((p) => pattern.test(p)), `${c.name}: reports ${pattern}`)
    }
    const thrown = (() => {
      try {
        validateTopology(topology)
      } catch (error) {
        return error
      }
      return undefined
    })() as TopologyError | undefined
    t.ok(thrown instanceof TopologyError, `${c.name}: validateTopology throws a TopologyError`)
    t.equal(thrown?.code, 'SEG_TOPOLOGY_INVALID')
    t.same(thrown?.problems, problems, `${c.name}: the error carries the problems`)
    t.ok(c.expect.every((pattern) => thrown?.message.split('\n').some((line) => pattern.test(line.replace(/^ {2}- /, '')))), `${c.name}: the message lists them`)
  }

  // several problems at once are all reported
  const broken = base()
  broken.steps.push(step('op', 'operator', ['x.in.*'], ['y.lost']))
  broken.streams.push(stream('ALL', ['>']))
  const problems = topologyProblems(broken)
  t.ok(problems.some((p) => p === 'duplicate stepId "op"'), 'duplicate reported alongside')
  t.ok(problems.some((p) => p.startsWith('streams "ALL" and "IN" overlap')), 'overlap reported alongside')
})

t.test('a step that consumes its own output is a cycle', async (t) => {
  const topology = base()
  // op reads x.in.* (produced by src) and also writes x.in.again, which it reads back
  topology.steps[1] = { ...topology.steps[1]!, outputs: ['x.out.*', 'x.in.again'] }
  const problems = topologyProblems(topology)
  t.ok(problems.some((p) => p.startsWith('cycle: op -> op')), `reports the self-loop: ${JSON.stringify(problems)}`)
  t.throws(() => validateTopology(topology), { code: 'SEG_TOPOLOGY_INVALID' }, 'validateTopology refuses it')
})

t.test('topologyToMermaid', async (t) => {
  const topology = segstreamTopology()
  const mermaid = topologyToMermaid(topology)
  const lines = mermaid.split('\n')
  t.equal(lines[0], 'flowchart LR', 'starts with flowchart LR')
  t.ok(mermaid.startsWith('flowchart LR\n'))
  t.ok(lines.slice(1).every((line) => line.startsWith('  ')), 'every other line is indented')
  for (const s of topology.steps) t.ok(mermaid.includes(`"${s.stepId}"`), `names step ${s.stepId}`)
  for (const s of topology.streams) t.ok(mermaid.includes(`"${s.name}<br/>`), `names stream ${s.name}`)
  const expectedLines = [
    '  SEG_RAW[("SEG_RAW<br/>seg.*.raw.*")]',
    '  step_collector(["collector"])',
    '  step_enrich["enrich"]',
    '  step_sink_events[/"sink-events"/]',
    '  step_collector --> SEG_RAW',
    '  step_collector --> SEG_IMPORT',
    '  step_collector --> SEG_DLQ',
    '  SEG_RAW --> step_enrich',
    '  SEG_IMPORT --> step_enrich',
    '  step_enrich --> SEG_ENRICHED',
    '  step_enrich --> SEG_DLQ',
    '  SEG_ENRICHED --> step_sink_events',
    '  step_sink_events --> SEG_DLQ',
    '  table_events[("table events")]',
    '  step_sink_events --> table_events',
  ]
  for (const line of expectedLines) t.ok(lines.includes(line), `has line ${line.trim()}`)
  t.notOk(lines.includes('  SEG_DLQ --> step_enrich'), 'no edge where no step reads')
  t.notOk(lines.includes('  SEG_ENRICHED --> step_enrich'), 'enrich does not read the enriched stream')
  const ids = new Set(lines.slice(1).flatMap((line) => line.trim().split(/[\s[("/\])-]+/).filter((token) => /^(step|table)_/.test(token))))
  t.ok([...ids].every((id) => /^[A-Za-z0-9_]+$/.test(id)), 'node ids are sanitised')

  const custom = topologyToMermaid(base())
  t.ok(custom.startsWith('flowchart LR'), 'a custom topology too')
  for (const name of ['"src"', '"op"', '"sink"', '"IN<br/>x.in.*"', '"OUT<br/>x.out.*"', 'table t']) t.ok(custom.includes(name), `custom names ${name}`)
})

t.test('the topology is deeply frozen', async (t) => {
  const topology = segstreamTopology()
  const parts: Array<[string, unknown]> = [
    ['topology', topology],
    ['streams', topology.streams],
    ['a stream', topology.streams[0]],
    ['a stream subjects', topology.streams[0]!.subjects],
    ['kv', topology.kv],
    ['a kv bucket', topology.kv[0]],
    ['steps', topology.steps],
    ['a step', topology.steps[1]],
    ['a step inputs', topology.steps[1]!.inputs],
    ['a step outputs', topology.steps[1]!.outputs],
    ['a step consumer', topology.steps[1]!.consumer],
    ['a step tables', topology.steps[2]!.tables],
  ]
  for (const [label, value] of parts) t.ok(Object.isFrozen(value), `${label} is frozen`)

  type Loose = Record<string, any>
  const mutations: Array<[string, (tp: Loose) => void]> = [
    ['rename the topology', (tp) => (tp.name = 'x')],
    ['add a field', (tp) => (tp.extra = 1)],
    ['push a stream', (tp) => tp.streams.push({})],
    ['replace a stream', (tp) => (tp.streams[0] = {})],
    ['change a stream limit', (tp) => (tp.streams[0].maxAgeMs = 1)],
    ['add a stream subject', (tp) => tp.streams[0].subjects.push('seg.>')],
    ['change a stream subject', (tp) => (tp.streams[0].subjects[0] = 'seg.>')],
    ['change a kv bucket', (tp) => (tp.kv[0].history = 99)],
    ['remove a step', (tp) => tp.steps.pop()],
    ['rename a step', (tp) => (tp.steps[1].stepId = 'other')],
    ['add a step input', (tp) => tp.steps[1].inputs.push('seg.>')],
    ['change consumer settings', (tp) => (tp.steps[1].consumer.batchSize = 1)],
    ['delete consumer settings', (tp) => delete tp.steps[1].consumer],
    ['add a table', (tp) => tp.steps[2].tables.push('other')],
  ]
  for (const [label, mutate] of mutations) {
    t.throws(() => mutate(topology as Loose), TypeError, `${label} throws in strict mode`)
  }
  t.same(topology, segstreamTopology(), 'the failed mutations left it unchanged')
  t.not(segstreamTopology(), segstreamTopology(), 'each call builds its own object')

  const nested = deepFreeze({ a: { b: [{ c: 1 }] } })
  t.ok(Object.isFrozen(nested.a.b[0]), 'deepFreeze reaches objects inside arrays')
  t.throws(() => {
    ;(nested.a.b[0] as { c: number }).c = 2
  }, TypeError, 'and they cannot be changed')
  t.equal(deepFreeze(null), null, 'deepFreeze passes null through')
  t.equal(deepFreeze(5), 5, 'and primitives')
})
