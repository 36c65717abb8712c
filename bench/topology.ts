import { deepFreeze, type Topology } from '../topology/model.ts'
import { segstreamTopology } from '../topology/definition.ts'

const SMALL = 256 * 1024 ** 2

/**
 * The shipped topology with room only where a benchmark writes: JetStream reserves every file
 * stream's max bytes up front, and with a dozen streams at several GiB each the server refuses
 * the topology ("insufficient storage resources") on a disk that holds the benchmark many times.
 */
export function benchTopology(bigStreams: readonly string[], bigBytes: number): Topology {
  const base = segstreamTopology({ streamMaxBytes: bigBytes })
  return deepFreeze({
    ...base,
    streams: base.streams.map((stream) => (bigStreams.includes(stream.name) ? stream : { ...stream, maxBytes: Math.min(stream.maxBytes, SMALL) })),
  })
}
