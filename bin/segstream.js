#!/usr/bin/env node
// A JavaScript shim so the command works from npm's bin links; the CLI itself is TypeScript,
// which Node >= 22.18 runs directly.
const [major, minor] = process.versions.node.split('.').map(Number)
if (major < 22 || (major === 22 && minor < 18)) {
  console.error(`segstream needs Node >= 22.18 (this is ${process.version}); run it through "npx segstream" or "make", which use the project's Node 24`)
  process.exit(1)
}
await import('../cli/main.ts')
