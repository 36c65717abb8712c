/**
 * What grew in a process's heap between two V8 heap snapshots: bytes and object counts by (type,
 * constructor), largest growth first. With one snapshot: its largest groups.
 *
 *   node --max-old-space-size=12000 bench/heap-diff.ts before.heapsnapshot [after.heapsnapshot] [--top 30]
 *
 * Snapshots of the system's processes under `make bench`:
 * `BENCH_NODE_ARGS=--heapsnapshot-signal=SIGUSR2 node bench/e2e.ts ...`, then `kill -USR2 <pid>`
 * twice during the steady phase (each snapshot is written in the process's working directory and
 * pauses it for a few seconds). The README's `make bench` section has a worked example.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

interface Group {
  count: number
  bytes: number
}

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]] } }
  nodes: number[]
  strings: string[]
}

const COLLAPSED: Record<string, string> = {
  string: '(string)', 'concatenated string': '(string)', 'sliced string': '(string)', number: '(number)', code: '(code)',
}

function groupsOf(file: string): { groups: Map<string, Group>; total: number } {
  const parsed = JSON.parse(readFileSync(file, 'utf8')) as Snapshot
  const fields = parsed.snapshot.meta.node_fields
  const types = parsed.snapshot.meta.node_types[0]
  const width = fields.length
  const typeAt = fields.indexOf('type')
  const nameAt = fields.indexOf('name')
  const sizeAt = fields.indexOf('self_size')
  const groups = new Map<string, Group>()
  let total = 0
  for (let index = 0; index < parsed.nodes.length; index += width) {
    const type = types[parsed.nodes[index + typeAt]!]!
    const name = COLLAPSED[type] ?? parsed.strings[parsed.nodes[index + nameAt]!]!.slice(0, 60)
    const key = `${type} ${name}`
    const size = parsed.nodes[index + sizeAt]!
    const group = groups.get(key) ?? { count: 0, bytes: 0 }
    group.count++
    group.bytes += size
    groups.set(key, group)
    total += size
  }
  return { groups, total }
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '30' } } })
const top = Number(values.top)
if (positionals.length === 0) {
  console.error('usage: node bench/heap-diff.ts before.heapsnapshot [after.heapsnapshot] [--top 30]')
  process.exit(2)
}
const mb = (bytes: number) => `${(bytes / 1e6).toFixed(2).padStart(8)} MB`
const before = groupsOf(positionals[0]!)
if (positionals.length === 1) {
  console.log(`${mb(before.total)} in all`)
  for (const [key, group] of [...before.groups].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, top)) console.log(`${mb(group.bytes)} ${String(group.count).padStart(10)}  ${key}`)
} else {
  const after = groupsOf(positionals[1]!)
  console.log(`${mb(before.total)} -> ${mb(after.total)}: ${mb(after.total - before.total)} grown`)
  const keys = new Set([...before.groups.keys(), ...after.groups.keys()])
  const rows = [...keys].map((key) => ({
    key,
    bytes: (after.groups.get(key)?.bytes ?? 0) - (before.groups.get(key)?.bytes ?? 0),
    count: (after.groups.get(key)?.count ?? 0) - (before.groups.get(key)?.count ?? 0),
  }))
  for (const row of rows.sort((a, b) => b.bytes - a.bytes).slice(0, top)) console.log(`${mb(row.bytes)} ${String(row.count).padStart(10)}  ${row.key}`)
}
