import type { NatsConnection } from '@nats-io/transport-node'
import { Kvm, type KV } from '@nats-io/kv'
import type { Logger } from '../../config/logger.ts'

export const LEASES_BUCKET = 'seg_leases'

interface Lease {
  owner: string
  epoch: number
  /** Wall-clock ms after which others may take the key group over. */
  until: number
}

export interface OwnershipOptions {
  stepId: string
  instanceId: string
  keyGroups: number
  /** A lease not renewed for this long may be taken over. Default 5000 ms. */
  leaseMs?: number
  /** Renewal and rebalancing period. Default 1000 ms. */
  heartbeatMs?: number
  logger: Logger
  clock?: () => number
}

export interface OwnershipEvents {
  /** A key group is ours from `epoch` on; resolve once it is loaded and claimed. */
  acquired(keyGroup: number, epoch: number): Promise<void>
  /** We must stop processing the key group now (lost, or handed to a newcomer). */
  released(keyGroup: number, reason: 'lost' | 'rebalanced' | 'stopping'): Promise<void>
  /**
   * A round is over (every heartbeat): after acquisitions and releases, the
   * moment to start reading the new set, once rather than once per key group.
   */
  roundEnded?(): Promise<void>
}

/**
 * Key-group ownership with KV leases: each instance heartbeats a member key,
 * renews its leases with compare-and-set, takes free or expired key groups up
 * to its fair share and gives back what it has beyond it when others join.
 * Every take-over increments the key group's epoch: the fencing token the
 * state store uses so a paused old owner cannot write after the hand-off.
 */
export class Ownership {
  readonly #options: Required<Omit<OwnershipOptions, 'logger'>> & { logger: Logger }
  readonly #events: OwnershipEvents
  #kv: KV | undefined
  #owned = new Map<number, { epoch: number; revision: number }>()
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> = Promise.resolve()
  #stopped = false
  /** Member id -> its last heartbeat (wall clock), kept current by a KV watch. */
  #members = new Map<string, number>()
  #stopWatch: (() => void) | undefined

  constructor(options: OwnershipOptions, events: OwnershipEvents) {
    // `?? default` per field: an option passed as undefined must not erase its default
    // (setInterval(undefined) fires every millisecond; a lease until NaN never expires)
    this.#options = { ...options, leaseMs: options.leaseMs ?? 5_000, heartbeatMs: options.heartbeatMs ?? 1_000, clock: options.clock ?? Date.now }
    this.#events = events
  }

  get owned(): number[] {
    return [...this.#owned.keys()].sort((a, b) => a - b)
  }

  epochOf(keyGroup: number): number | undefined {
    return this.#owned.get(keyGroup)?.epoch
  }

  async start(nc: NatsConnection): Promise<void> {
    this.#kv = await new Kvm(nc).open(LEASES_BUCKET)
    // members are followed with a watch (which resumes by itself after a reconnect), not
    // listed each round: a listing cut by an outage could hang a round forever
    const watch = await this.#kv.watch({ key: `m.${this.#options.stepId}.*` })
    this.#stopWatch = () => watch.stop()
    void (async () => {
      for await (const entry of watch) {
        const id = entry.key.split('.').pop()!
        if (entry.operation === 'PUT') this.#members.set(id, entry.json<{ at: number }>().at)
        else this.#members.delete(id)
      }
    })()
    await this.#tick()
    this.#timer = setInterval(() => {
      this.#running = this.#running.then(() => this.#tick()).catch((error) => this.#options.logger.warn({ err: error }, 'ownership round failed'))
    }, this.#options.heartbeatMs)
  }

  #leaseKey(keyGroup: number) {
    return `l.${this.#options.stepId}.${keyGroup}`
  }

  #memberKey(instanceId: string) {
    return `m.${this.#options.stepId}.${instanceId}`
  }

  #liveMembers(now: number): string[] {
    return [...this.#members].filter(([, at]) => now - at < this.#options.leaseMs).map(([id]) => id).sort()
  }

  /** One round: heartbeat, renew, then take or give back towards the fair share. */
  async #tick(): Promise<void> {
    if (this.#stopped) return
    try {
      await this.#round()
    } finally {
      if (!this.#stopped) await this.#events.roundEnded?.()
    }
  }

  async #round(): Promise<void> {
    const kv = this.#kv!
    const { clock, leaseMs, keyGroups, instanceId, logger } = this.#options
    const now = clock()
    await kv.put(this.#memberKey(instanceId), JSON.stringify({ at: now }))

    // renewed all at once: one by one, a busy server could make the round outlast the leases
    const renewals = await Promise.all([...this.#owned].map(async ([keyGroup, held]) => {
      const lease: Lease = { owner: instanceId, epoch: held.epoch, until: now + leaseMs }
      try {
        held.revision = await kv.update(this.#leaseKey(keyGroup), JSON.stringify(lease), held.revision)
        return undefined
      } catch (error) {
        return { keyGroup, error }
      }
    }))
    for (const lost of renewals) {
      if (!lost) continue
      logger.warn({ keyGroup: lost.keyGroup, err: lost.error }, 'lease lost')
      this.#owned.delete(lost.keyGroup)
      await this.#events.released(lost.keyGroup, 'lost')
    }

    const members = this.#liveMembers(now)
    if (!members.includes(instanceId)) members.push(instanceId)
    const index = members.sort().indexOf(instanceId)
    // fair share: key groups split as evenly as possible, the first members taking the remainder
    const share = Math.floor(keyGroups / members.length) + (index < keyGroups % members.length ? 1 : 0)

    if (this.#owned.size > share) {
      for (const keyGroup of this.owned.slice(share)) await this.#release(keyGroup, 'rebalanced')
      return
    }
    for (let keyGroup = 0; keyGroup < keyGroups && this.#owned.size < share; keyGroup++) {
      if (this.#owned.has(keyGroup) || this.#stopped) continue
      const entry = await kv.get(this.#leaseKey(keyGroup))
      const current = entry && entry.operation === 'PUT' ? entry.json<Lease>() : undefined
      if (current && current.owner !== instanceId && current.until > now) continue
      const epoch = (current?.epoch ?? 0) + 1
      const lease: Lease = { owner: instanceId, epoch, until: now + leaseMs }
      let revision: number
      try {
        revision = entry ? await kv.update(this.#leaseKey(keyGroup), JSON.stringify(lease), entry.revision) : await kv.create(this.#leaseKey(keyGroup), JSON.stringify(lease))
      } catch {
        continue // somebody else was quicker
      }
      this.#owned.set(keyGroup, { epoch, revision })
      try {
        await this.#events.acquired(keyGroup, epoch)
      } catch (error) {
        logger.warn({ keyGroup, err: error }, 'could not take over key group; giving it back')
        this.#owned.delete(keyGroup)
        await kv.delete(this.#leaseKey(keyGroup)).catch(() => {})
      }
    }
  }

  async #release(keyGroup: number, reason: 'rebalanced' | 'stopping') {
    const held = this.#owned.get(keyGroup)
    if (!held) return
    this.#owned.delete(keyGroup)
    await this.#events.released(keyGroup, reason)
    // expire the lease now (keeping its epoch) so the next owner need not wait
    const lease: Lease = { owner: this.#options.instanceId, epoch: held.epoch, until: 0 }
    await this.#kv!.update(this.#leaseKey(keyGroup), JSON.stringify(lease), held.revision).catch(() => {})
  }

  /** Gives every key group back and leaves the membership. */
  async stop(): Promise<void> {
    this.#stopped = true
    clearInterval(this.#timer)
    await this.#running.catch(() => {})
    for (const keyGroup of this.owned) await this.#release(keyGroup, 'stopping')
    await this.#kv?.delete(this.#memberKey(this.#options.instanceId)).catch(() => {})
    this.#stopWatch?.()
  }
}
