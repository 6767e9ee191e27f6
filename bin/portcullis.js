#!/usr/bin/env node
// Node >= 22.18 runs the TypeScript source directly (type stripping).
import { main } from '../src/cli.ts';
main(process.argv.slice(2)).then((code) => { if (code >= 0) process.exitCode = code; }, (e) => {
  process.stderr.write(`portcullis: internal error: ${e?.stack ?? e}\n`);
  process.exit(1);
});
