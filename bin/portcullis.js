#!/usr/bin/env -S node --max-semi-space-size=16
// Runs the compiled build (dist/, `npm run build`; made by `npm ci` and `npm test`)
// when it is at least as new as every source file, else the TypeScript source
// directly (Node >= 22.18 strips types). The build saves the type stripper's
// ~20 MiB of resident memory and its startup time.
//
// --max-semi-space-size=16 (MiB): on a machine with much memory V8 lets the young
// generation grow to 64 MiB per semi-space; for a proxy's short-lived garbage that
// costs resident memory and tail latency without buying throughput (bench/RESULTS.md).
// The shebang sets it for `portcullis ...`/`npx portcullis ...`; the Dockerfile and
// `npm start` pass it explicitly; cluster workers inherit it.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

function newestSource(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    newest = Math.max(newest, e.isDirectory() ? newestSource(p) : statSync(p).mtimeMs);
  }
  return newest;
}

function entry() {
  const built = `${root}dist/cli.js`;
  if (process.env.PORTCULLIS_FROM_SOURCE !== '1' && existsSync(built)) {
    // A source tree is absent from a production image: the build is all there is.
    if (!existsSync(`${root}src`) || statSync(built).mtimeMs >= newestSource(`${root}src`)) return built;
  }
  return `${root}src/cli.ts`;
}

const { main } = await import(entry());
main(process.argv.slice(2)).then((code) => { if (code >= 0) process.exitCode = code; }, (e) => {
  process.stderr.write(`portcullis: internal error: ${e?.stack ?? e}\n`);
  process.exit(1);
});
