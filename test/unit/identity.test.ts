import fc from 'fast-check'
import t from 'tap'
import { DEDUP_DEFAULTS, emptySeen, hasSeen, idHash, markSeen, seenCount, type SeenIds } from '../../operators/enrich/dedup.ts'
import { decode, encode } from '../../schemas/codec.ts'
import { identityStep, type IdentityState } from '../../operators/enrich/identity.ts'
import type { SegmentMessage } from '../../schemas/segment.ts'

const at = '2019-05-01T00:00:00.000Z'
const msg = (fields: Partial<SegmentMessage> & Pick<SegmentMessage, 'type'>): SegmentMessage => ({ messageId: 'm', timestamp: at, receivedAt: at, ...fields })

t.test('identity transitions', async (t) => {
  const cases: Array<{ name: string; state: IdentityState; key: string; message: SegmentMessage; canonical: string; next: IdentityState; merge?: [string, string]; refused?: RegExp }> = [
    { name: 'anonymous event', state: {}, key: 'a', message: msg({ type: 'track', event: 'e', anonymousId: 'a' }), canonical: 'a', next: {} },
    { name: 'identify after anonymous events links and merges', state: {}, key: 'a', message: msg({ type: 'identify', anonymousId: 'a', userId: 'u' }), canonical: 'u', next: { link: 'u' }, merge: ['a', 'u'] },
    
    { name: 'anonymous event after the link counts for the user', state: { link: 'u' }, key: 'a', message: msg({ type: 'page', anonymousId: 'a' }), canonical: 'u', next: { link: 'u' } },
    { name: 'second identify to another user: the first link wins', state: { link: 'u' }, key: 'a', message: msg({ type: 'identify', anonymousId: 'a', userId: 'v' }), canonical: 'v', next: { link: 'u' }, refused: /already linked to u/ },
    { name: 'identify again to the same user: nothing new', state: { link: 'u' }, key: 'a', message: msg({ type: 'identify', anonymousId: 'a', userId: 'u' }), canonical: 'u', next: { link: 'u' } },
    { name: 'event of a user with an anonymous id: the user id', state: {}, key: 'a', message: msg({ type: 'track', event: 'e', anonymousId: 'a', userId: 'u' }), canonical: 'u', next: {} },
    { name: 'user-only message at its own key marks a user id', state: {}, key: 'u', message: msg({ type: 'track', event: 'e', userId: 'u' }), canonical: 'u', next: { user: true } },
    { name: 'alias of an anonymous id, routed by previousId', state: {}, key: 'p', message: msg({ type: 'alias', previousId: 'p', userId: 'u' }), canonical: 'u', next: { link: 'u' }, merge: ['p', 'u'] },
    { name: 'alias of a user id into another user: explicit, so linked', state: { user: true }, key: 'u1', message: msg({ type: 'alias', previousId: 'u1', userId: 'u2' }), canonical: 'u2', next: { user: true, link: 'u2' }, merge: ['u1', 'u2'] },
    { name: 'identify of a user id as another user: refused', state: { user: true }, key: 'u1', message: msg({ type: 'identify', anonymousId: 'u1', userId: 'u2' }), canonical: 'u2', next: { user: true }, refused: /never merged implicitly/ },
    { name: 'alias routed elsewhere: no link', state: {}, key: 'x', message: msg({ type: 'alias', anonymousId: 'x', previousId: 'p', userId: 'u' }), canonical: 'u', next: {}, refused: /only the key's own id/ },
  ]
  for (const c of cases) {
    const step = identityStep(c.state, c.key, c.message)
    t.equal(step.canonicalId, c.canonical, `${c.name}: canonical id`)
    t.same(step.state, c.next, `${c.name}: next state`)
    t.same(step.merge, c.merge ? { from: c.merge[0], into: c.merge[1] } : undefined, `${c.name}: merge`)
    if (c.refused) t.match(step.refused, c.refused, `${c.name}: reason`)
    else t.equal(step.refused, undefined, `${c.name}: nothing refused`)
  }
})

t.test('property: an anonymous id ends linked to the first user it was identified as, published once', async () => {
  const anon = fc.constantFrom('a1', 'a2')
  const user = fc.constantFrom('u1', 'u2', 'u3')
  const message = fc.oneof(
    anon.map((a) => msg({ type: 'track', event: 'e', anonymousId: a })),
    fc.tuple(anon, user).map(([a, u]) => msg({ type: 'identify', anonymousId: a, userId: u })),
    fc.tuple(anon, user).map(([a, u]) => msg({ type: 'track', event: 'e', anonymousId: a, userId: u })),
    fc.tuple(anon, user).map(([a, u]) => msg({ type: 'alias', anonymousId: a, previousId: a, userId: u })),
  )
  fc.assert(fc.property(fc.array(message, { maxLength: 30 }), (log) => {
    const states: Record<string, IdentityState> = {}
    const merges: string[] = []
    for (const m of log) {
      const key = m.anonymousId!
      const step = identityStep(states[key] ?? {}, key, m)
      states[key] = step.state
      if (step.merge) merges.push(`${step.merge.from}->${step.merge.into}`)
      // the canonical id is the message's user id, else the link as it stands
      if (step.canonicalId !== (m.userId ?? step.state.link ?? key)) return false
    }
    for (const a of ['a1', 'a2']) {
      const mine = log.filter((m) => m.anonymousId === a)
      const firstLink = mine.find((m) => m.type === 'identify' || m.type === 'alias')
      if (states[a]?.link !== firstLink?.userId) return false
      // one link message, naming the first user
      const mergesOfA = merges.filter((x) => x.startsWith(`${a}->`))
      if (mergesOfA.length !== (firstLink ? 1 : 0) || (firstLink && mergesOfA[0] !== `${a}->${firstLink.userId}`)) return false
    }
    return true
  }), { numRuns: 500 })
})

t.test('late duplicates: an id is remembered within the horizon and the cap', async (t) => {
  const DAY = 86_400_000
  const options = { horizonMs: 2 * DAY, maxIds: 8 }
  let seen = emptySeen()
  seen = markSeen(seen, 'x', 0, 0, options)!
  t.ok(seen, 'a new id is recorded')
  const before = JSON.stringify(seen)
  t.equal(markSeen(seen, 'x', 0, 0, options), undefined, 'the same id again: a duplicate')
  t.equal(JSON.stringify(seen), before, 'the set given is not changed')
  for (let i = 0; i < 8; i++) seen = markSeen(seen, `m${i}`, 10 * DAY + i, 10 * DAY + i, options)!
  t.ok(seenCount(seen) <= 8, `bounded (${seenCount(seen)} ids)`)
  t.notOk(hasSeen(seen, 'x'), 'an id beyond the horizon is forgotten first')
  t.ok(hasSeen(seen, 'm7'), 'the newest ids are kept')
  t.equal(markSeen(seen, 'm7', 10 * DAY, 10 * DAY, options), undefined)
  t.not(idHash('message-1'), idHash('message-2'))
  t.ok(Number.isSafeInteger(idHash('some-long-message-id')) && idHash('some-long-message-id') < 2 ** 52)
  t.equal(DEDUP_DEFAULTS.horizonMs, 7 * DAY)
})

t.test('late duplicates: the ids survive a checkpoint, and a checkpoint of the older format is read', async (t) => {
  const DAY = 86_400_000
  const options = { horizonMs: 7 * DAY, maxIds: 2_000 }
  let seen = emptySeen()
  const ids = Array.from({ length: 300 }, (_, i) => `message-${i}`)
  // appended one by one past several doublings of the array's room, days before 1970 too
  ids.forEach((id, i) => (seen = markSeen(seen, id, (i - 150) * DAY / 10, (i - 150) * DAY / 10, options)!))
  t.equal(seenCount(seen), 300)
  const bytes = encode({ seen })
  t.ok(bytes.length < 300 * 12 + 40, `12 bytes an id in a checkpoint (${bytes.length} bytes for 300)`)
  // decoded: a view into a buffer msgpack shares; recording more must not write into it
  const decoded = (decode(bytes) as { seen: SeenIds }).seen
  const shared = Buffer.from(decoded.ids.buffer, decoded.ids.byteOffset, decoded.ids.length).toString('hex')
  t.ok(ids.every((id) => hasSeen(decoded, id)), 'every id is known after a checkpoint')
  const more = markSeen(decoded, 'message-new', 0, 0, options)!
  t.equal(seenCount(more), 301)
  t.equal(markSeen(more, 'message-7', 0, 0, options), undefined, 'an old id is still a duplicate')
  t.equal(Buffer.from(bytes).subarray(bytes.length - 300 * 12).toString('hex'), shared, 'the decoded bytes were copied, not written over')
  // the format of checkpoints before the ids were packed: two arrays
  const older = { hashes: ids.slice(0, 10).map(idHash), days: ids.slice(0, 10).map(() => 20_000) } as unknown as SeenIds
  t.ok(hasSeen(older, 'message-3'), 'an id of an older checkpoint is known')
  const upgraded = markSeen(older, 'message-11', 20_000 * DAY, 20_000 * DAY, options)!
  t.equal(seenCount(upgraded), 11)
  t.equal(markSeen(upgraded, 'message-9', 20_000 * DAY, 20_000 * DAY, options), undefined, 'and stays known once packed')
  t.same(Object.keys(upgraded), ['ids'], 'packed into the current format')
  // the cap with the horizon: the oldest days go first, the newest stay
  let capped = emptySeen()
  for (let i = 0; i < 30; i++) capped = markSeen(capped, `c${i}`, i * DAY, i * DAY, { horizonMs: 100 * DAY, maxIds: 20 })!
  t.ok(seenCount(capped) <= 20, `bounded (${seenCount(capped)})`)
  t.ok(hasSeen(capped, 'c29') && !hasSeen(capped, 'c0'), 'the newest kept, the oldest forgotten')
})
