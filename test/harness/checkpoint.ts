import { emptyKeyGroup, rebuildTimers, type KeyGroupState } from '../../operators/runtime/kernel.ts'
import { decode, encode } from '../../schemas/codec.ts'

/**
 * A key group as a restart would load it from its checkpoint: offsets, event times, definitions and
 * keys through msgpack, timers rebuilt. Processing the same message on the copy must give what it
 * gave on the original (a replay after a crash).
 */
export function checkpointCopy<State>(group: KeyGroupState<State>): KeyGroupState<State> {
  const copy = emptyKeyGroup<State>(group.keyGroup, group.epoch)
  copy.offsets = decode(encode(group.offsets)) as Record<string, number>
  copy.maxEventTime = decode(encode(group.maxEventTime)) as Record<string, number>
  copy.control = decode(encode(group.control)) as Record<string, unknown>
  for (const [key, entry] of group.keys) copy.keys.set(key, decode(encode(entry)) as typeof entry)
  rebuildTimers(copy)
  return copy
}
