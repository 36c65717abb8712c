import type { StepSpec, Topology } from './model.ts'
import { subjectsIntersect } from './subjects.ts'

export class TopologyError extends Error {
  readonly code = 'SEG_TOPOLOGY_INVALID'
  readonly problems: readonly string[]
  constructor(problems: readonly string[]) {
    super(`topology is invalid:\n  - ${problems.join('\n  - ')}`)
    this.problems = problems
  }
}

const NAME = /^[A-Za-z0-9_-]+$/

const reads = (to: StepSpec, from: StepSpec) => to.inputs.some((input) => from.outputs.some((output) => subjectsIntersect(input, output)))

/** Other steps that read what `from` writes. */
export function downstreamOf(topology: Topology, from: StepSpec): StepSpec[] {
  return topology.steps.filter((to) => to !== from && reads(to, from))
}

/** Every problem found, empty when the topology is valid. */
export function topologyProblems(topology: Topology): string[] {
  const problems: string[] = []
  const seen = new Set<string>()
  for (const step of topology.steps) {
    if (!NAME.test(step.stepId)) problems.push(`step "${step.stepId}": stepId must match ${NAME}`)
    if (seen.has(step.stepId)) problems.push(`duplicate stepId "${step.stepId}"`)
    seen.add(step.stepId)
    if (step.kind !== 'source' && !step.consumer) problems.push(`step "${step.stepId}": a ${step.kind} needs consumer settings`)
    for (const input of step.inputs) {
      const producers = topology.steps.filter((other) => other !== step && other.outputs.some((output) => subjectsIntersect(input, output)))
      if (producers.length === 0) problems.push(`step "${step.stepId}": input subject "${input}" is produced by no step`)
    }
    for (const subject of [...step.inputs, ...step.outputs]) {
      const streams = topology.streams.filter((stream) => stream.subjects.some((s) => subjectsIntersect(s, subject)))
      if (streams.length === 0) problems.push(`step "${step.stepId}": subject "${subject}" is captured by no stream`)
    }
  }
  const streamNames = new Set<string>()
  for (const stream of topology.streams) {
    if (!NAME.test(stream.name)) problems.push(`stream "${stream.name}": name must match ${NAME}`)
    if (streamNames.has(stream.name)) problems.push(`duplicate stream "${stream.name}"`)
    streamNames.add(stream.name)
    for (const other of topology.streams) {
      if (other === stream || other.name < stream.name) continue
      for (const a of stream.subjects) for (const b of other.subjects) {
        if (subjectsIntersect(a, b)) problems.push(`streams "${stream.name}" and "${other.name}" overlap on "${a}" / "${b}"`)
      }
    }
  }
  const cycle = findCycle(topology)
  if (cycle) problems.push(`cycle: ${cycle.join(' -> ')}`)
  return problems
}

/** Depth-first search over "writes a subject the other reads" edges. */
function findCycle(topology: Topology): string[] | undefined {
  const state = new Map<string, 'visiting' | 'done'>()
  const path: string[] = []
  const visit = (step: StepSpec): string[] | undefined => {
    if (state.get(step.stepId) === 'done') return undefined
    if (state.get(step.stepId) === 'visiting') return [...path.slice(path.indexOf(step.stepId)), step.stepId]
    state.set(step.stepId, 'visiting')
    path.push(step.stepId)
    // a step reading its own output is a cycle too
    for (const next of topology.steps.filter((to) => reads(to, step))) {
      const found = visit(next)
      if (found) return found
    }
    path.pop()
    state.set(step.stepId, 'done')
    return undefined
  }
  for (const step of topology.steps) {
    const found = visit(step)
    if (found) return found
  }
  return undefined
}

export function validateTopology(topology: Topology): Topology {
  const problems = topologyProblems(topology)
  if (problems.length > 0) throw new TopologyError(problems)
  return topology
}
