import { createHash, randomBytes } from 'node:crypto'
import type { NatsConnection } from '@nats-io/transport-node'
import { Kvm, KvWatchInclude, type KV } from '@nats-io/kv'
import { assertProjectId } from '../topology/subjects.ts'
import { validator } from '../schemas/codec.ts'
import { DEFAULT_SETTINGS, isValidTimezone, Project } from './model.ts'

export const PROJECTS_BUCKET = 'seg_projects'

export class ProjectError extends Error {
  readonly code: 'SEG_PROJECT_EXISTS' | 'SEG_PROJECT_INVALID' | 'SEG_PROJECT_NOT_FOUND'
  constructor(code: ProjectError['code'], message: string) {
    super(message)
    this.code = code
  }
}

const projectValidator = validator(Project, 'project')
const ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'

function randomKey(prefix: string, length: number): string {
  const bytes = randomBytes(length)
  let key = prefix
  for (const byte of bytes) key += ALPHABET[byte % ALPHABET.length]
  return key
}

export const sha256 = (text: string) => createHash('sha256').update(text).digest('hex')

export interface NewProject {
  id: string
  name?: string
  /** IANA timezone; default UTC. */
  timezone?: string
}

/** Creates a project; returns it with its first API key in clear (shown once). */
export async function createProject(nc: NatsConnection, input: NewProject, now = new Date()): Promise<{ project: Project; apiKey: string }> {
  try {
    assertProjectId(input.id)
  } catch (error) {
    throw new ProjectError('SEG_PROJECT_INVALID', (error as Error).message)
  }
  const timezone = input.timezone ?? 'UTC'
  if (!isValidTimezone(timezone)) throw new ProjectError('SEG_PROJECT_INVALID', `unknown timezone ${JSON.stringify(timezone)}: expected an IANA name such as Europe/Berlin`)
  const apiKey = randomKey('sk_', 32)
  const project: Project = {
    id: input.id,
    name: input.name ?? input.id,
    timezone,
    createdAt: now.toISOString(),
    writeKeys: [randomKey('wk_', 24)],
    apiKeys: [{ prefix: apiKey.slice(0, 7), sha256: sha256(apiKey), createdAt: now.toISOString() }],
    settings: { ...DEFAULT_SETTINGS },
  }
  const kv = await openProjects(nc)
  try {
    await kv.create(project.id, JSON.stringify(project))
  } catch (error) {
    if (/wrong last sequence|key exists/i.test(String(error))) throw new ProjectError('SEG_PROJECT_EXISTS', `project "${project.id}" already exists`)
    throw error
  }
  return { project, apiKey }
}

/**
 * Issues a new write key or API key. Old keys stop working unless `keepOld`
 * (a grace period while clients switch over; rotate again without it to revoke).
 * Compare-and-set on the KV revision, so concurrent rotations never lose a key.
 */
export async function rotateKey(nc: NatsConnection, id: string, kind: 'write' | 'api', options: { keepOld?: boolean } = {}, now = new Date()): Promise<{ project: Project; key: string }> {
  const kv = await openProjects(nc)
  for (;;) {
    const entry = await kv.get(id)
    if (!entry || entry.operation !== 'PUT') throw new ProjectError('SEG_PROJECT_NOT_FOUND', `no project "${id}"`)
    const project = projectValidator.assert(entry.json())
    let key: string
    if (kind === 'write') {
      key = randomKey('wk_', 24)
      project.writeKeys = [...(options.keepOld ? project.writeKeys : []), key]
    } else {
      key = randomKey('sk_', 32)
      const record = { prefix: key.slice(0, 7), sha256: sha256(key), createdAt: now.toISOString() }
      project.apiKeys = [...(options.keepOld ? project.apiKeys : []), record]
    }
    try {
      await kv.update(id, JSON.stringify(project), entry.revision)
      return { project, key }
    } catch (error) {
      if (!/wrong last sequence/i.test(String(error))) throw error
    }
  }
}

export async function openProjects(nc: NatsConnection): Promise<KV> {
  return new Kvm(nc).open(PROJECTS_BUCKET)
}

export async function getProject(nc: NatsConnection, id: string): Promise<Project | undefined> {
  const entry = await (await openProjects(nc)).get(id)
  return entry && entry.operation === 'PUT' ? projectValidator.assert(entry.json()) : undefined
}

export async function listProjects(nc: NatsConnection): Promise<Project[]> {
  const kv = await openProjects(nc)
  const projects: Project[] = []
  for await (const key of await kv.keys()) {
    const entry = await kv.get(key)
    if (entry && entry.operation === 'PUT') projects.push(projectValidator.assert(entry.json()))
  }
  return projects.sort((a, b) => a.id.localeCompare(b.id))
}

/**
 * A live, in-memory view of all projects, kept current by a KV watch, so every
 * request authenticates without a round trip.
 */
export class ProjectCache {
  #byId = new Map<string, Project>()
  #byWriteKey = new Map<string, Project>()
  #byApiKeyHash = new Map<string, Project>()
  #stop: (() => void) | undefined

  /** Resolves once the current contents are loaded; later changes apply as they happen. */
  async start(nc: NatsConnection): Promise<void> {
    const kv = await openProjects(nc)
    // watch first, then list: a change made while listing is applied after it, never missed
    const watch = await kv.watch({ include: KvWatchInclude.UpdatesOnly })
    this.#stop = () => watch.stop()
    for (const project of await listProjects(nc)) this.#apply(project.id, project)
    void (async () => {
      for await (const entry of watch) {
        const value = entry.operation === 'PUT' ? entry.json() : undefined
        this.#apply(entry.key, projectValidator.check(value) ? value : undefined)
      }
    })()
  }

  #apply(id: string, project: Project | undefined) {
    const previous = this.#byId.get(id)
    if (previous) this.#forget(previous)
    if (project) this.#remember(project)
  }

  #remember(project: Project) {
    this.#byId.set(project.id, project)
    for (const key of project.writeKeys) this.#byWriteKey.set(key, project)
    for (const key of project.apiKeys) this.#byApiKeyHash.set(key.sha256, project)
  }

  #forget(project: Project) {
    this.#byId.delete(project.id)
    for (const key of project.writeKeys) this.#byWriteKey.delete(key)
    for (const key of project.apiKeys) this.#byApiKeyHash.delete(key.sha256)
  }

  byId(id: string): Project | undefined {
    return this.#byId.get(id)
  }

  byWriteKey(writeKey: string): Project | undefined {
    return this.#byWriteKey.get(writeKey)
  }

  byApiKey(apiKey: string): Project | undefined {
    return this.#byApiKeyHash.get(sha256(apiKey))
  }

  get size(): number {
    return this.#byId.size
  }

  stop(): void {
    this.#stop?.()
  }
}
