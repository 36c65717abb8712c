import { readdirSync, readFileSync } from 'node:fs'

/** Reads the CPU time (µs) of the nats-server serving this store directory, from /proc. */
export function serverCpu(storeDir: string): () => number {
  const pid = readdirSync('/proc').find((entry) => /^\d+$/.test(entry) && (() => {
    try {
      return readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(storeDir)
    } catch {
      return false
    }
  })())
  return () => {
    if (!pid) return 0
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
    // utime and stime, in clock ticks (100 per second on Linux)
    return (Number(fields[11]) + Number(fields[12])) * 10_000
  }
}
