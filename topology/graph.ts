import type { Topology } from './model.ts'
import { subjectsIntersect } from './subjects.ts'

const id = (name: string) => name.replace(/[^A-Za-z0-9_]/g, '_')

/** The dataflow as a Mermaid flowchart: steps are boxes, streams are cylinders. */
export function topologyToMermaid(topology: Topology): string {
  const lines = ['flowchart LR']
  for (const stream of topology.streams) lines.push(`  ${id(stream.name)}[("${stream.name}<br/>${stream.subjects.join(', ')}")]`)
  for (const step of topology.steps) {
    const shape = step.kind === 'source' ? [`([`, `])`] : step.kind === 'sink' ? [`[/`, `/]`] : [`[`, `]`]
    lines.push(`  step_${id(step.stepId)}${shape[0]}"${step.stepId}"${shape[1]}`)
  }
  for (const step of topology.steps) {
    for (const stream of topology.streams) {
      const writes = step.outputs.filter((o) => stream.subjects.some((s) => subjectsIntersect(s, o)))
      const reads = step.inputs.filter((i) => stream.subjects.some((s) => subjectsIntersect(s, i)))
      if (writes.length > 0) lines.push(`  step_${id(step.stepId)} --> ${id(stream.name)}`)
      if (reads.length > 0) lines.push(`  ${id(stream.name)} --> step_${id(step.stepId)}`)
    }
    for (const table of step.tables ?? []) {
      lines.push(`  table_${id(table)}[("table ${table}")]`)
      lines.push(`  step_${id(step.stepId)} --> table_${id(table)}`)
    }
  }
  return lines.join('\n')
}
