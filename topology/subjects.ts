/**
 * The subject scheme: the public contract downstream systems subscribe to.
 *
 *   seg.<project>.<stage>.<keyGroup>
 *
 * `project` and `stage` are validated tokens, `keyGroup` is a decimal number in
 * [0, keyGroups). See docs/subjects.md.
 */

/** Root token of every segstream subject. */
export const SUBJECT_ROOT = 'seg'

/** Stages that carry per-key-group traffic. */
export const STAGES = ['raw', 'import', 'enriched', 'sessions', 'profiles', 'funnels', 'aggregates', 'counts', 'funnel_counts', 'backfill', 'late', 'dlq'] as const
export type Stage = (typeof STAGES)[number]

const PROJECT_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/

export class InvalidTokenError extends Error {
  readonly code = 'SEG_INVALID_TOKEN'
  constructor(what: string, value: string, rule: string) {
    super(`invalid ${what} ${JSON.stringify(value)}: ${rule}`)
  }
}

/**
 * A project id is used verbatim as a subject token, a KV key and a table key,
 * so it may never contain `.`, `*`, `>` or whitespace.
 */
export function assertProjectId(project: string): string {
  if (typeof project !== 'string' || !PROJECT_ID.test(project)) {
    throw new InvalidTokenError('project id', String(project), 'expected 1-63 characters of a-z, 0-9, "_" or "-", starting with a letter or digit')
  }
  return project
}

export function isProjectId(project: unknown): project is string {
  return typeof project === 'string' && PROJECT_ID.test(project)
}

/**
 * FNV-1a, 32 bit, over the UTF-8 bytes of the key: the hash NATS's own
 * `partition()` subject mapping uses, so a server-side mapping and this code
 * agree on where a key lives.
 */
export function fnv1a32(key: string): number {
  // ASCII (nearly every id) is its own UTF-8: hashed from the string, without encoding it
  let hash = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    const code = key.charCodeAt(i)
    if (code >= 0x80) return fnv1a32Bytes(key)
    hash = Math.imul(hash ^ code, 0x01000193)
  }
  return hash >>> 0
}

function fnv1a32Bytes(key: string): number {
  const bytes = Buffer.from(key, 'utf8')
  let hash = 0x811c9dc5
  for (let i = 0; i < bytes.length; i++) {
    hash ^= bytes[i]!
    hash = Math.imul(hash, 0x01000193) >>> 0
  }
  return hash >>> 0
}

/** The key group of a routing key: stable for a fixed number of key groups. */
export function keyGroupOf(routingKey: string, keyGroups: number): number {
  return fnv1a32(routingKey) % keyGroups
}

const KEY_GROUP = /^(0|[1-9]\d{0,9})$/

/** A subject of one key group, or of all (`'*'`). */
export function subjectFor(project: string, stage: Stage, keyGroup: number | '*'): string {
  assertProjectId(project)
  if (!(STAGES as readonly string[]).includes(stage)) throw new InvalidTokenError('stage', String(stage), `expected one of ${STAGES.join(', ')}`)
  if (keyGroup !== '*' && !(typeof keyGroup === 'number' && Number.isInteger(keyGroup) && keyGroup >= 0)) {
    throw new InvalidTokenError('key group', String(keyGroup), 'expected a non-negative integer or "*"')
  }
  return `${SUBJECT_ROOT}.${project}.${stage}.${keyGroup}`
}

/** A filter for every project and key group of one stage: `seg.*.<stage>.*`. */
export function stageFilter(stage: Stage): string {
  return `${SUBJECT_ROOT}.*.${stage}.*`
}

export interface ParsedSubject {
  project: string
  stage: string
  keyGroup: number
}

export function parseSubject(subject: string): ParsedSubject {
  const [root, project, stage, keyGroup, ...rest] = subject.split('.')
  const kg = Number(keyGroup)
  if (root !== SUBJECT_ROOT || rest.length > 0 || !isProjectId(project) || !stage || !/^[a-z_]+$/.test(stage) || !KEY_GROUP.test(keyGroup ?? '')) {
    throw new InvalidTokenError('subject', subject, 'expected seg.<project>.<stage>.<keyGroup>')
  }
  return { project, stage, keyGroup: kg }
}

/**
 * True when two subject patterns can both match some subject. Used to check
 * that every input of a step is produced by some step and captured by a stream.
 */
export function subjectsIntersect(a: string, b: string): boolean {
  const ta = a.split('.')
  const tb = b.split('.')
  for (let i = 0; i < Math.max(ta.length, tb.length); i++) {
    const x = ta[i]
    const y = tb[i]
    if (x === '>' || y === '>') return x !== undefined && y !== undefined
    if (x === undefined || y === undefined) return false
    if (x !== '*' && y !== '*' && x !== y) return false
  }
  return true
}
