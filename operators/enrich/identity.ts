import type { SegmentMessage } from '../../schemas/segment.ts'

/**
 * Identity of one routing key of the raw stream: an anonymous id (or a user id
 * for messages without one). Every message carrying this anonymous id comes to
 * this key, so its link is decided here, by one owner, in input order
 * (docs/identity.md). Plain data: it is checkpointed with the key.
 */
export interface IdentityState {
  /** The user id this anonymous id is linked to: the first identify or alias wins, for good. */
  link?: string
  /** This id has been used as a user id: only an explicit alias links it into another user. */
  user?: boolean
}

export interface IdentityStep {
  state: IdentityState
  /** The id the message counts under. */
  canonicalId: string
  /** A link made by this message: published, and downstream state of `from` moves into `into`. */
  merge?: { from: string; into: string }
  /** Why a link the message asked for was not made (documented rules), for tests and logs. */
  refused?: string
}

/**
 * The identity transition of one message at its routing key. Pure.
 * - identify(anonymousId A, userId U): links A to U unless A is already linked or is itself a user id.
 * - alias(previousId P, userId U), routed by P: links P to U unless P is already linked (P may be a user id: alias is explicit).
 * - any message: canonical id = its userId, else the key's link, else its anonymousId.
 */
export function identityStep(state: IdentityState, key: string, message: SegmentMessage): IdentityStep {
  let next = state
  let merge: IdentityStep['merge']
  let refused: string | undefined
  const from = message.type === 'identify' ? message.anonymousId : message.type === 'alias' ? message.previousId : undefined
  const into = message.userId
  if (from !== undefined && into !== undefined && from !== into) {
    if (from !== key) refused = `${message.type} of ${from} arrived at key ${key}: only the key's own id can be linked here`
    else if (state.link !== undefined) refused = state.link === into ? undefined : `${from} is already linked to ${state.link} (the first link wins)`
    // identify links an anonymous id; an alias is the explicit way to link a user id too
    else if (state.user && message.type === 'identify') refused = `${from} is a user id: two identified users are never merged implicitly`
    else {
      // every link is published (downstream operators ignore one for an id they hold nothing of)
      next = { ...next, link: into }
      merge = { from, into }
    }
  }
  if (message.userId !== undefined && message.userId === key && !next.user) next = { ...next, user: true }
  const canonicalId = message.userId ?? next.link ?? message.anonymousId ?? key
  return { state: next, canonicalId, merge, refused }
}
