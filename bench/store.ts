// What `store: redis` costs a signed request, against `store: memory`: Portcullis
// (mTLS + the seed-004 HMAC scheme with a nonce on every request) under wrk, the two
// stores alternating over several rounds. Every wrk run replays nothing: it walks a
// fresh list of pre-signed requests, one nonce each. Redis, the proxy and the upstream
// share CPU 1 (all the server side on one core, as in bench/run.ts); wrk runs on CPU 0.
//   npm run bench:store -- [--rounds 5] [--seconds 4]    (after `npm run bench` made bench/.work)
import { spawn, spawnSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { PORTS, cpuTicks, median, policyYaml, portcullisYaml, stop, waitPort } from './common.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const W = join(HERE, '.work');
const { values: opt } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, seconds: { type: 'string', default: '4' } } });
const ROUNDS = Number(opt.rounds), SECONDS = Number(opt.seconds);
const SECRET = 'bench-hmac-secret-0123456789abcdef';
if (!existsSync(join(W, 'wrk-mtls-shim.so'))) throw new Error('run `npm run bench` once first: it makes bench/.work (PKI, wrk shim, upstream config)');
if (spawnSync('sh', ['-c', 'command -v redis-server']).status !== 0) throw new Error('redis-server is not installed (apt-get install redis-server)');

const config = (name: string, store: string) => {
  const f = join(W, `${name}.yaml`);
  writeFileSync(f, portcullisYaml({
    authenticators: `  sig: { type: hmac, clients: [ { id: bench, secret: "${SECRET}", subject: bench } ], message: [method, path, timestamp, nonce], maxSkewSec: 3600 }`,
    policies: policyYaml('signed', '{ all: [cert, sig] }', true),
    store,
  }));
  return f;
};
const CONFIGS = [
  { name: 'memory', label: 'store: memory', file: config('pc-store-memory', '{ type: memory }') },
  { name: 'redis', label: 'store: redis (same core)', file: config('pc-store-redis', `{ type: redis, url: "redis://127.0.0.1:${PORTS.redis}/0" }`) },
];

/** A wrk script walking `n` GETs, each signed with its own nonce (none is ever sent twice). */
function signedScript(n: number): string {
  const ts = String(Math.floor(Date.now() / 1000));
  const list: string[] = [];
  for (let i = 0; i < n; i++) {
    const nonce = randomBytes(12).toString('hex');
    list.push(`${nonce} ${createHmac('sha256', SECRET).update(`GET/bench${ts}${nonce}`).digest('hex')}`);
  }
  // The requests are data read at init: LuaJIT allows 65 536 constants per function.
  writeFileSync(join(W, 'store-signed.txt'), list.join('\n') + '\n');
  const f = join(W, 'store-signed.lua');
  writeFileSync(f, `local reqs, n, i = {}, 0, 0
init = function(args)
  for line in io.lines("${join(W, 'store-signed.txt')}") do
    local nonce, sig = line:match("(%S+) (%S+)")
    n = n + 1
    reqs[n] = wrk.format("GET", "/bench", { ["X-API-Key"] = "bench", ["X-Timestamp"] = "${ts}", ["X-Nonce"] = nonce, ["X-Signature"] = sig })
  end
end
request = function()
  i = i + 1
  if i > n then error("out of pre-signed requests") end
  return reqs[i]
end
`);
  return f;
}

const pinned = (cmd: string, args: string[]) => spawn('taskset', ['-c', '1', cmd, ...args], { stdio: ['ignore', 'ignore', 'inherit'], cwd: W });
interface Run { rps: number; p50: number; p99: number; bad: number; cpuUs: number; redisUs: number }
function wrk(seconds: number, pid: number, redisPid: number | undefined): Promise<Run> {
  // Enough distinct requests for 25k req/s, far above what one core reaches here.
  const script = signedScript(25_000 * seconds);
  const c0 = cpuTicks(pid), r0 = redisPid ? cpuTicks(redisPid) : 0;
  return new Promise((resolve, reject) => {
    const p = spawn('taskset', ['-c', '0', 'wrk', '-t1', '-c50', `-d${seconds}s`, '--latency', '-s', script, `https://127.0.0.1:${PORTS.proxy}/bench`],
      { env: { ...process.env, LD_PRELOAD: join(W, 'wrk-mtls-shim.so'), WRK_CLIENT_CERT: join(W, 'client.crt'), WRK_CLIENT_KEY: join(W, 'client.key') } });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('close', (code) => {
      if (code !== 0 || /out of pre-signed requests/.test(out)) return reject(new Error(`wrk: ${out}`));
      const ms = (re: RegExp) => { const m = re.exec(out); return m ? Number(m[1]) * ({ us: 0.001, ms: 1, s: 1000 }[m[2]!] ?? NaN) : NaN; };
      const n = Number(/(\d+) requests in/.exec(out)?.[1]);
      resolve({
        rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]),
        p50: ms(/^\s+50%\s+([\d.]+)(us|ms|s)/m), p99: ms(/^\s+99%\s+([\d.]+)(us|ms|s)/m),
        bad: Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
        cpuUs: ((cpuTicks(pid) - c0) * 10_000) / n,
        redisUs: redisPid ? ((cpuTicks(redisPid) - r0) * 10_000) / n : 0,
      });
    });
  });
}

const upstream = pinned('nginx', ['-c', join(W, 'upstream.nginx.conf')]);
const redis = pinned('redis-server', ['--port', String(PORTS.redis), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--maxmemory-policy', 'noeviction']);
const results = new Map<string, Run[]>(CONFIGS.map((c) => [c.name, []]));
try {
  await waitPort(PORTS.upstream);
  await waitPort(PORTS.redis);
  for (let round = 1; round <= ROUNDS; round++) {
    for (const c of round % 2 ? CONFIGS : [...CONFIGS].reverse()) {
      const p = pinned(process.execPath, ['--max-semi-space-size=16', join(HERE, '..', 'bin/portcullis.js'), 'serve', '--config', c.file]);
      try {
        await waitPort(PORTS.proxy);
        await new Promise((r) => setTimeout(r, 300));
        await wrk(1, p.pid!, undefined); // warm-up
        const r = await wrk(SECONDS, p.pid!, c.name === 'redis' ? redis.pid : undefined);
        if (r.bad) throw new Error(`${c.name}: ${r.bad} requests refused (a nonce store that refuses fresh nonces is a bug)`);
        results.get(c.name)!.push(r);
        process.stderr.write(`round ${round} ${c.name.padEnd(7)} ${r.rps.toFixed(0).padStart(6)} req/s  cpu ${r.cpuUs.toFixed(0)} µs/req (+ Redis ${r.redisUs.toFixed(0)})  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms\n`);
      } finally {
        await stop(p);
      }
    }
  }
} finally {
  await stop(upstream);
  await stop(redis);
}

const mem = results.get('memory')!;
console.log(`\nSigned requests with a nonce each (mTLS + HMAC, seed-004 scheme), ${ROUNDS} rounds × ${SECONDS} s, 50 connections; ${new Date().toISOString()}, node ${process.version}\n`);
console.log('| store | req/s, median (min–max) | × store: memory (per round) | proxy CPU µs/req | Redis CPU µs/req | p50 ms | p99 ms |');
console.log('|---|---|---|---|---|---|---|');
for (const c of CONFIGS) {
  const rs = results.get(c.name)!;
  const ratio = median(rs.map((r, i) => r.rps / mem[i]!.rps));
  console.log(`| ${c.label} | ${median(rs.map((r) => r.rps)).toFixed(0)} (${Math.min(...rs.map((r) => r.rps)).toFixed(0)}–${Math.max(...rs.map((r) => r.rps)).toFixed(0)}) | ${ratio.toFixed(2)} | ${median(rs.map((r) => r.cpuUs)).toFixed(0)} | ${median(rs.map((r) => r.redisUs)).toFixed(0)} | ${median(rs.map((r) => r.p50)).toFixed(2)} | ${median(rs.map((r) => r.p99)).toFixed(2)} |`);
}
