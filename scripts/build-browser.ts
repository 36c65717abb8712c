/**
 * Builds the browser tracker: tracker/src/index.ts to tracker/dist/t.js (minified
 * IIFE for a script tag) and tracker/dist/t.mjs (ES module exporting
 * createTracker). Prints the gzipped size of t.js and fails when it is over the
 * budget, so a size regression breaks the build rather than the sites using it.
 *
 *   node scripts/build-browser.ts [--out-dir DIR] [--budget BYTES]
 *
 * `--budget` overrides TRACKER_GZIP_BUDGET (the tests use it to see the check fail).
 */
import { readFileSync } from 'node:fs'
import { mkdir, readFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'
import { build } from 'esbuild'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')

/** Most bytes t.js may take minified and gzipped (level 9). */
export const TRACKER_GZIP_BUDGET = 3072

export interface BrowserBuild {
  /** Absolute paths of the written files. */
  iife: string
  module: string
  /** Bytes of t.js as written, and gzipped at level 9. */
  minifiedBytes: number
  gzipBytes: number
  moduleGzipBytes: number
}

/** Builds both files into `outDir` (default tracker/dist) and measures them; does not enforce the budget. */
export async function buildBrowser(outDir = join(root, 'tracker', 'dist')): Promise<BrowserBuild> {
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version
  await mkdir(outDir, { recursive: true })
  const common = {
    entryPoints: [join(root, 'tracker', 'src', 'index.ts')],
    bundle: true,
    minify: true,
    target: ['es2020'],
    platform: 'browser' as const,
    define: { __VERSION__: JSON.stringify(version) },
    legalComments: 'none' as const,
    logLevel: 'warning' as const,
  }
  const iife = join(outDir, 't.js')
  const module = join(outDir, 't.mjs')
  await Promise.all([
    build({ ...common, format: 'iife', outfile: iife }),
    build({ ...common, format: 'esm', outfile: module }),
  ])
  const [script, moduleScript] = await Promise.all([readFile(iife), readFile(module)])
  return {
    iife,
    module,
    minifiedBytes: script.length,
    gzipBytes: gzipSync(script, { level: 9 }).length,
    moduleGzipBytes: gzipSync(moduleScript, { level: 9 }).length,
  }
}

if (import.meta.main) {
  const flag = (name: string) => {
    const index = process.argv.indexOf(name)
    return index > 0 ? process.argv[index + 1] : undefined
  }
  const outDir = flag('--out-dir')
  const budget = Number(flag('--budget') ?? TRACKER_GZIP_BUDGET)
  if (!Number.isInteger(budget) || budget <= 0) throw new Error(`--budget must be a positive number of bytes, got ${flag('--budget')}`)
  const result = await buildBrowser(outDir ? resolve(outDir) : undefined)
  console.log(`tracker t.js: ${result.minifiedBytes} bytes minified, ${result.gzipBytes} bytes gzipped (budget ${budget}); t.mjs: ${result.moduleGzipBytes} bytes gzipped`)
  if (result.gzipBytes > budget) {
    console.error(`tracker t.js is ${result.gzipBytes} bytes gzipped, over the ${budget}-byte budget`)
    process.exit(1)
  }
}
