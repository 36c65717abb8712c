import { createReadStream } from 'node:fs'
import { appendFile, readFile, stat, writeFile, rm } from 'node:fs/promises'
import { backoffMs, sleep } from '../operators/runtime/retry.ts'

export interface ImportOptions {
  file: string
  /** Gateway base URL, e.g. http://localhost:8080. */
  url: string
  apiKey: string
  /** Messages per request. Default 1000. */
  batchSize?: number
  /** Ignore a saved position and start from the first line. */
  restart?: boolean
  /** Where progress goes; default stderr. */
  progress?: NodeJS.WriteStream | { write(text: string): unknown; isTTY?: boolean }
}

export interface ImportResult {
  lines: number
  accepted: number
  duplicates: number
  rejected: number
  resumedFromLine: number
  rejectsFile: string
}

interface SavedState {
  size: number
  mtimeMs: number
  offset: number
  line: number
  accepted: number
  duplicates: number
  rejected: number
}

export class ImportError extends Error {
  readonly code = 'SEG_IMPORT'
}

const MAX_REQUEST_BYTES = 8 * 1024 * 1024

/**
 * Imports a newline-delimited JSON file of Segment messages through POST
 * /v1/import. After each acknowledged batch the byte position is saved beside
 * the file, so an interrupted import resumes where it stopped (re-sent
 * messages deduplicate by messageId). Lines that are not JSON, and messages
 * the collector refuses, are written with their line number and reason to
 * `<file>.rejected.ndjson`: nothing is dropped silently.
 */
export async function importFile(options: ImportOptions): Promise<ImportResult> {
  const stateFile = `${options.file}.import-state.json`
  const rejectsFile = `${options.file}.rejected.ndjson`
  const info = await stat(options.file)
  let state: SavedState = { size: info.size, mtimeMs: info.mtimeMs, offset: 0, line: 0, accepted: 0, duplicates: 0, rejected: 0 }
  if (!options.restart) {
    const saved = await readFile(stateFile, 'utf8').then((text) => JSON.parse(text) as SavedState).catch(() => undefined)
    if (saved && saved.size === info.size && saved.mtimeMs === info.mtimeMs) state = saved
  }
  if (state.offset === 0) await rm(rejectsFile, { force: true })
  const resumedFromLine = state.line
  const out = options.progress ?? process.stderr
  const batchSize = options.batchSize ?? 1000
  const started = Date.now()
  let lastPrinted = 0

  const printProgress = (final = false) => {
    const now = Date.now()
    if (!final && now - lastPrinted < (out.isTTY ? 200 : 5_000)) return
    lastPrinted = now
    const fraction = info.size === 0 ? 1 : state.offset / info.size
    const width = 24
    const bar = '#'.repeat(Math.round(fraction * width)).padEnd(width, '-')
    const rate = Math.round(((state.accepted + state.rejected) - 0) / Math.max(0.001, (now - started) / 1000))
    const text = `[${bar}] ${(fraction * 100).toFixed(1)}%  line ${state.line.toLocaleString('en')}  accepted ${state.accepted.toLocaleString('en')}  rejected ${state.rejected}  ${rate.toLocaleString('en')} msg/s`
    out.write(out.isTTY ? `\r${text}${final ? '\n' : ''}` : `${text}\n`)
  }

  const reject = async (line: number, reason: string, payload: string) => {
    state.rejected++
    await appendFile(rejectsFile, `${JSON.stringify({ line, reason, payload })}\n`)
  }

  const send = async (batch: { line: number; message: unknown }[]) => {
    const body = JSON.stringify({ batch: batch.map((b) => b.message), sentAt: new Date().toISOString() })
    for (let attempt = 0; ; attempt++) {
      let response: Response | undefined
      try {
        response = await fetch(new URL('/v1/import', options.url), {
          method: 'POST', body, headers: { 'content-type': 'application/json', authorization: `Bearer ${options.apiKey}` },
        })
      } catch (error) {
        if (attempt >= 30) throw new ImportError(`cannot reach ${options.url}: ${(error as Error).message}`)
      }
      if (response && (response.status === 200 || response.status === 400)) {
        const result = (await response.json()) as { accepted?: number; duplicates?: number; rejected?: { index: number; reason: string }[]; message?: string }
        if (response.status === 400 && !result.rejected) throw new ImportError(`the collector refused a batch: ${result.message}`)
        state.accepted += result.accepted ?? 0
        state.duplicates += result.duplicates ?? 0
        for (const r of result.rejected ?? []) await reject(batch[r.index]!.line, r.reason, JSON.stringify(batch[r.index]!.message))
        return
      }
      if (response?.status === 401) throw new ImportError('the API key was refused (401): pass the project\'s API key with --api-key or SEGSTREAM_API_KEY')
      if (response && response.status !== 429 && response.status < 500) throw new ImportError(`unexpected ${response.status} from ${options.url}: ${await response.text()}`)
      await response?.body?.cancel()
      const retryAfter = Number(response?.headers.get('retry-after'))
      await sleep(retryAfter > 0 ? retryAfter * 1000 : backoffMs(attempt, 250, 10_000))
    }
  }

  let batch: { line: number; message: unknown }[] = []
  let batchBytes = 0
  let pending: Buffer = Buffer.alloc(0)
  let offset = state.offset
  let line = state.line
  const flush = async (nextOffset: number) => {
    if (batch.length > 0) await send(batch)
    batch = []
    batchBytes = 0
    state.offset = nextOffset
    state.line = line
    await writeFile(stateFile, JSON.stringify(state))
    printProgress()
  }

  for await (const chunk of createReadStream(options.file, { start: state.offset })) {
    pending = pending.length ? Buffer.concat([pending, chunk as Buffer]) : (chunk as Buffer)
    let newline: number
    while ((newline = pending.indexOf(10)) >= 0) {
      const text = pending.subarray(0, newline).toString('utf8').trim()
      pending = pending.subarray(newline + 1)
      offset += newline + 1
      line++
      if (!text) continue
      try {
        batch.push({ line, message: JSON.parse(text) })
        batchBytes += text.length
      } catch (error) {
        await reject(line, `line is not JSON: ${(error as Error).message}`, text)
      }
      if (batch.length >= batchSize || batchBytes >= MAX_REQUEST_BYTES) await flush(offset)
    }
  }
  const last = pending.toString('utf8').trim()
  if (last) {
    line++
    offset += pending.length
    try {
      batch.push({ line, message: JSON.parse(last) })
    } catch (error) {
      await reject(line, `line is not JSON: ${(error as Error).message}`, last)
    }
  }
  await flush(offset)
  printProgress(true)
  return { lines: state.line, accepted: state.accepted, duplicates: state.duplicates, rejected: state.rejected, resumedFromLine, rejectsFile }
}
