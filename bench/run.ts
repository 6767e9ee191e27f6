// Portcullis benchmark: nginx, HAProxy, a bare Node proxy and Portcullis, each
// started fresh, measured interleaved over several rounds, load generator (wrk,
// with an mTLS shim) pinned to CPU 0 and proxy + upstream to CPU 1.
//   npm run bench -- [--rounds 3] [--seconds 5] [--connections 50] [--only a,b] [--out bench/RESULTS.md]
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, createPrivateKey, sign } from 'node:crypto';
import { parseArgs } from 'node:util';
import { cpus } from 'node:os';
import { API_KEY, HMAC_AUTHENTICATOR, PORTS, cpuTicks, median, policyYaml, portcullisYaml, shimCounts, stop, waitPort, writeHmacScript } from './common.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..');
const W = join(HERE, '.work');
const { values: opt } = parseArgs({ options: {
  rounds: { type: 'string', default: '3' }, seconds: { type: 'string', default: '5' }, connections: { type: 'string', default: '50' },
  only: { type: 'string' }, out: { type: 'string' }, 'no-handshake': { type: 'boolean', default: false },
  'auth-pairs': { type: 'string', default: '12' }, slice: { type: 'string', default: '1' },
} });
const ROUNDS = Number(opt.rounds), SECONDS = Number(opt.seconds), CONNS = Number(opt.connections);
const AUTH_PAIRS = Number(opt['auth-pairs']), SLICE = Number(opt.slice);
const LOAD_CPU = '0', SERVER_CPU = '1';

function sh(cmd: string, args: string[], o: { cwd?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: o.cwd ?? W });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

// ---- PKI (EC P-256), JWT, shim -------------------------------------------
mkdirSync(W, { recursive: true });
const need = (b: string) => { if (spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0) throw new Error(`${b} is not installed (apt-get install nginx haproxy wrk)`); };
for (const b of ['nginx', 'haproxy', 'wrk', 'openssl', 'taskset', 'cc']) need(b);
const ossl = (...a: string[]) => sh('openssl', a);
writeFileSync(join(W, 'ext.cnf'), '[srv]\nsubjectAltName=DNS:bench.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n[cli]\nextendedKeyUsage=clientAuth\n');
ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-subj', '/CN=Bench CA', '-days', '30');
for (const [n, ext] of [['server', 'srv'], ['client', 'cli']]) {
  ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${n}.key`, '-out', `${n}.csr`, '-subj', `/CN=bench-${n}`);
  ossl('x509', '-req', '-in', `${n}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${n}.crt`, '-days', '30', '-extfile', 'ext.cnf', '-extensions', ext!);
}
writeFileSync(join(W, 'server.pem'), readFileSync(join(W, 'server.crt'), 'utf8') + readFileSync(join(W, 'server.key'), 'utf8'));
ossl('genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'jwt.key');
ossl('pkey', '-in', 'jwt.key', '-pubout', '-out', 'jwt.pub');
const jwk = { ...createPrivateKey(readFileSync(join(W, 'jwt.key'))).export({ format: 'jwk' }), kid: 'bench', alg: 'RS256', use: 'sig' } as Record<string, unknown>;
for (const k of ['d', 'p', 'q', 'dp', 'dq', 'qi']) delete jwk[k];
writeFileSync(join(W, 'jwks.json'), JSON.stringify({ keys: [jwk] }));
const b64u = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
const now = Math.floor(Date.now() / 1000);
const jwtInput = `${b64u({ alg: 'RS256', typ: 'JWT', kid: 'bench' })}.${b64u({ sub: 'bench-user', iss: 'https://bench.test', aud: 'bench', scope: 'read', iat: now, exp: now + 86400 })}`;
const JWT = `${jwtInput}.${sign('sha256', Buffer.from(jwtInput), createPrivateKey(readFileSync(join(W, 'jwt.key')))).toString('base64url')}`;
writeFileSync(join(W, 'token.txt'), JWT);
const TS = String(now);
const hmacScript = (file: string, path: string) => writeHmacScript(join(W, file), path, TS);
hmacScript('hmac.lua', '/bench');
const SHIM = join(W, 'wrk-mtls-shim.so');
sh('cc', ['-shared', '-fPIC', '-O2', '-o', SHIM, join(HERE, 'wrk-mtls-shim.c'), '-ldl']);

// ---- processes -------------------------------------------------------------
function startPinned(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  const p = spawn('taskset', ['-c', SERVER_CPU, cmd, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  p.stderr!.on('data', (d) => { const s = String(d); if (!/ExperimentalWarning|\[notice\]|NOTICE|^\s*$/.test(s)) process.stderr.write(`[${cmd}] ${s}`); });
  return p;
}
function peakRssMb(pid: number): number {
  try { return Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024; } catch { return NaN; }
}

function nginxConf(name: string, server: string): string {
  const f = join(W, `${name}.nginx.conf`);
  writeFileSync(f, `daemon off; master_process off; worker_processes 1; pid ${W}/${name}.pid; error_log stderr error;\nevents { worker_connections 4096; }\nhttp { access_log off; keepalive_requests 1000000; ${server} }\n`);
  return f;
}
const upstreamConf = nginxConf('upstream', `server { listen 127.0.0.1:${PORTS.upstream}; location / { return 200 "ok\\n"; } }`);

interface Target { name: string; label: string; scheme: 'http' | 'https'; start(): ChildProcess; headers?: string[]; script?: string; mtls: boolean; path?: string }
const pcConfig = (name: string, auth: string, authenticate: string, policies?: string) => {
  const f = join(W, `${name}.yaml`);
  writeFileSync(f, portcullisYaml({ authenticators: auth, policies: policies ?? policyYaml('bench', authenticate, true) }));
  return f;
};
const AUTH = {
  jwt: '  jwt: { type: jwt, issuer: "https://bench.test", audience: bench, algorithms: [RS256], jwks: { file: jwks.json } }',
  key: `  key: { type: apiKey, keys: [ { id: bench, hash: "sha256:${createHash('sha256').update(API_KEY).digest('hex')}", subject: bench } ] }`,
  sig: HMAC_AUTHENTICATOR,
};
const pc = (cfg: string) => () => startPinned(process.execPath, ['--max-semi-space-size=16', join(ROOT, 'bin/portcullis.js'), 'serve', '--config', cfg]);
/** A bare Node reference server (bench/*.ts) on the proxy port, with the bench PKI; `upstream` passes the upstream's port. */
const nodeReference = (file: string, upstream = true) => () => startPinned(process.execPath, [join(HERE, file), String(PORTS.proxy), ...(upstream ? [String(PORTS.upstream)] : []), join(W, 'server.crt'), join(W, 'server.key'), join(W, 'ca.crt')]);
/** The nginx server block's TLS: the bench certificate, client certificates required. */
const NGINX_MTLS = `listen 127.0.0.1:${PORTS.proxy} ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate ${W}/server.crt; ssl_certificate_key ${W}/server.key; ssl_client_certificate ${W}/ca.crt; ssl_verify_client on;`;
const TARGETS: Target[] = [
  { name: 'direct', label: 'direct to upstream (ceiling, plain HTTP)', scheme: 'http', mtls: false, start: () => startPinned('true', []) },
  { name: 'nginx', label: 'nginx mTLS proxy', scheme: 'https', mtls: true, start: () => startPinned('nginx', ['-c', nginxConf('nginx', `upstream up { server 127.0.0.1:${PORTS.upstream}; keepalive 64; }
server { ${NGINX_MTLS}
  location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Client-DN $ssl_client_s_dn; } }`)]) },
  // nginx's own TLS and HTTP with no upstream: against the proxy above, what forwarding costs nginx.
  { name: 'nginx-direct', label: 'nginx mTLS answering itself, no upstream (nginx ceiling)', scheme: 'https', mtls: true, start: () => startPinned('nginx', ['-c', nginxConf('nginx-direct', `server { ${NGINX_MTLS}
  location / { add_header X-Client-DN $ssl_client_s_dn; return 200 "ok\\n"; } }`)]) },
  { name: 'haproxy', label: 'HAProxy mTLS (verify required)', scheme: 'https', mtls: true, start: () => startHaproxy(false) },
  { name: 'haproxy-jwt', label: 'HAProxy mTLS + jwt_verify RS256', scheme: 'https', mtls: true, headers: [`Authorization: Bearer ${JWT}`], start: () => startHaproxy(true) },
  { name: 'node-direct', label: 'bare Node https answering itself, no upstream (Node ceiling)', scheme: 'https', mtls: true, start: nodeReference('node-direct.ts', false) },
  { name: 'node-floor', label: 'bare Node https + http-proxy-3, no auth', scheme: 'https', mtls: true, start: nodeReference('node-floor.ts') },
  { name: 'undici-floor', label: 'bare Node https + undici Pool, no auth', scheme: 'https', mtls: true, start: nodeReference('undici-floor.ts') },
  { name: 'http1-floor', label: "bare Node https + Portcullis' HTTP/1.1 client, no auth", scheme: 'https', mtls: true, start: nodeReference('http1-floor.ts') },
  { name: 'pc-mtls', label: 'Portcullis mTLS', scheme: 'https', mtls: true, start: pc(pcConfig('pc-mtls', '', 'cert')) },
  { name: 'pc-jwt', label: 'Portcullis mTLS + RS256 JWT', scheme: 'https', mtls: true, headers: [`Authorization: Bearer ${JWT}`],
    start: pc(pcConfig('pc-jwt', AUTH.jwt, '{ all: [cert, jwt] }')) },
  { name: 'pc-apikey', label: 'Portcullis mTLS + API key', scheme: 'https', mtls: true, headers: [`X-API-Key: ${API_KEY}`],
    start: pc(pcConfig('pc-apikey', AUTH.key, '{ all: [cert, key] }')) },
  { name: 'pc-hmac', label: 'Portcullis mTLS + HMAC over 1 KiB body', scheme: 'https', mtls: true, script: join(W, 'hmac.lua'),
    start: pc(pcConfig('pc-hmac', AUTH.sig, '{ all: [cert, sig] }')) },
];
function startHaproxy(jwt: boolean): ChildProcess {
  const f = join(W, `haproxy${jwt ? '-jwt' : ''}.cfg`);
  writeFileSync(f, `global
  nbthread 1
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:${PORTS.proxy} ssl crt ${W}/server.pem ca-file ${W}/ca.crt verify required alpn http/1.1
${jwt ? `  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny unless { var(txn.bearer),jwt_header_query('$.alg') -m str RS256 }
  http-request deny unless { var(txn.bearer),jwt_verify("RS256","${W}/jwt.pub") -m int 1 }
` : ''}  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:${PORTS.upstream}
`);
  return startPinned('haproxy', ['-db', '-f', f]);
}

// ---- wrk ---------------------------------------------------------------------
interface Run {
  rps: number; p50: number; p99: number; errors: number; cpuUs: number;
  /** wrk's own CPU over its life, as a share of the one core it is pinned to (1 = saturated). */
  loadCpu: number;
  /** Handshakes wrk completed, how many resumed, how many were TLS 1.3, its SSL_connect calls (from the shim). */
  handshakes: number; resumed: number; tls13: number; connectCalls: number;
}
const ms = (v: string, unit: string) => Number(v) * ({ us: 0.001, ms: 1, s: 1000 }[unit] ?? NaN);
function wrk(t: Target, handshake: boolean, pid?: number, seconds = SECONDS): Promise<Run> {
  const url = `${t.scheme}://127.0.0.1:${t.scheme === 'http' ? PORTS.upstream : PORTS.proxy}${t.path ?? '/bench'}`;
  const args = ['-c', LOAD_CPU, 'wrk', '-t1', `-c${CONNS}`, `-d${seconds}s`, '--latency', '--timeout', '5s'];
  for (const h of t.headers ?? []) args.push('-H', h);
  if (handshake) args.push('-H', 'Connection: close');
  if (t.script) args.push('-s', t.script);
  args.push(url);
  const env = { ...process.env, ...(t.mtls ? { LD_PRELOAD: SHIM, WRK_CLIENT_CERT: join(W, 'client.crt'), WRK_CLIENT_KEY: join(W, 'client.key') } : {}), ...(handshake ? { WRK_NO_RESUME: '1' } : {}) };
  const cpu0 = cpuTicks(pid);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    // bash's `times` prints its children's user and system CPU: wrk's own, to show
    // whether the load generator was the limit.
    const p = spawn('bash', ['-c', 'taskset "$@"; s=$?; times; exit $s', 'bash', ...args], { env });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('close', (code) => {
      if (code !== 0) return reject(new Error(`wrk failed: ${out}`));
      const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
      const pct = (q: string) => { const m = new RegExp(`^\\s+${q}%\\s+([\\d.]+)(us|ms|s)`, 'm').exec(out); return m ? ms(m[1]!, m[2]!) : NaN; };
      const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
      const sockErr = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
      const errors = non2xx + (sockErr ? Number(sockErr[1]) + Number(sockErr[4]) : 0);
      const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN);
      // CPU the proxy spent per request: far steadier than req/s on a shared machine.
      const cpuUs = ((cpuTicks(pid) - cpu0) * 10_000) / requests;
      const tm = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/.exec(out.trim());
      // Over wrk's whole life (its connection set-up included), not just its timed window.
      const loadCpu = tm ? (Number(tm[1]) * 60 + Number(tm[2]) + Number(tm[3]) * 60 + Number(tm[4])) / ((performance.now() - started) / 1000) : NaN;
      let counts: ReturnType<typeof shimCounts>;
      try { counts = shimCounts(out, handshake); } catch (e) { return reject(new Error(`${t.name}: ${(e as Error).message}`)); }
      resolve({ rps, p50: pct('50'), p99: pct('99'), errors, cpuUs, loadCpu, ...counts });
    });
  });
}

// ---- rounds --------------------------------------------------------------------
const only = opt.only ? new Set(opt.only.split(',')) : undefined;
const targets = TARGETS.filter((t) => !only || only.has(t.name) || t.name === 'nginx' || t.name === 'node-floor');
interface Sample { ka: Run; hs?: Run; rss: number }
interface Pair { route: string; plain: Run; same: Run; auth: Run }
const pairs: Pair[] = [];
const results = new Map<string, Sample[]>(targets.map((t) => [t.name, []]));
const upstream = startPinned('nginx', ['-c', upstreamConf]);
await waitPort(PORTS.upstream);
try {
  for (let round = 1; round <= ROUNDS; round++) {
    // Every other round runs the list backwards, so no configuration always follows the same one.
    for (const t of round % 2 ? targets : [...targets].reverse()) {
      const p = t.start();
      if (t.name !== 'direct') await waitPort(PORTS.proxy);
      await new Promise((r) => setTimeout(r, 300));
      await wrk({ ...t }, false).catch(() => undefined); // warm-up (JIT, caches, connections)
      const ka = await wrk(t, false, p.pid);
      const hs = t.name === 'direct' || opt['no-handshake'] ? undefined : await wrk(t, true, p.pid);
      const rss = t.name === 'direct' ? peakRssMb(upstream.pid!) : peakRssMb(p.pid!);
      results.get(t.name)!.push({ ka, hs, rss });
      process.stderr.write(`round ${round} ${t.name.padEnd(12)} ${ka.rps.toFixed(0).padStart(7)} req/s  cpu ${ka.cpuUs.toFixed(0)} µs/req  p50 ${ka.p50.toFixed(2)} ms  p99 ${ka.p99.toFixed(2)} ms  handshakes ${hs ? `${hs.rps.toFixed(0)}/s (${hs.cpuUs.toFixed(0)} µs, wrk ${(hs.loadCpu * 100).toFixed(0)} %, ${hs.tls13 === hs.handshakes ? 'TLS 1.3' : `${hs.tls13}/${hs.handshakes} TLS 1.3`})` : '-'}  wrk ${(ka.loadCpu * 100).toFixed(0)} %  rss ${rss.toFixed(0)} MiB${ka.errors || hs?.errors ? `  ERRORS ${ka.errors}/${hs?.errors ?? 0}` : ''}\n`);
      await stop(p);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  // Authentication cost within one process: the mTLS-only route and each authenticated
  // route alternate in short slices (order reversed every other triple), so both sides of
  // a ratio share the process, its JIT and heap, and the same few seconds of a noisy machine.
  if (AUTH_PAIRS > 0 && (!only || only.has('pc-mtls'))) {
    const cfg = pcConfig('pc-auth', `${AUTH.jwt}\n${AUTH.key}\n${AUTH.sig}`, '', [policyYaml('mtls', 'cert'), policyYaml('jwt', '{ all: [cert, jwt] }'), policyYaml('apikey', '{ all: [cert, key] }'), policyYaml('hmac', '{ all: [cert, sig] }')].join('\n'));
    const p = pc(cfg)();
    try {
      await waitPort(PORTS.proxy);
      const route = (path: string, o: Partial<Target> = {}): Target => ({ name: path, label: path, scheme: 'https', mtls: true, start: () => p, path, ...o });
      const hmacPair = hmacScript('hmac-pair.lua', '/hmac/bench');
      const plain = route('/mtls/bench');
      const routes: { name: string; auth: Target; same: Target }[] = [
        { name: 'pc-jwt', auth: route('/jwt/bench', { headers: [`Authorization: Bearer ${JWT}`] }), same: route('/mtls/bench', { headers: [`Authorization: Bearer ${JWT}`] }) },
        { name: 'pc-apikey', auth: route('/apikey/bench', { headers: [`X-API-Key: ${API_KEY}`] }), same: route('/mtls/bench', { headers: [`X-API-Key: ${API_KEY}`] }) },
        { name: 'pc-hmac', auth: route('/hmac/bench', { script: hmacPair }), same: route('/mtls/bench', { script: hmacPair }) },
      ];
      for (const t of [plain, ...routes.flatMap((r) => [r.auth, r.same])]) await wrk(t, false, p.pid, 1); // warm-up
      for (const r of routes) {
        for (let i = 0; i < AUTH_PAIRS; i++) {
          const order = i % 2 === 0 ? ['plain', 'same', 'auth'] as const : ['auth', 'same', 'plain'] as const;
          const got: Partial<Record<'plain' | 'same' | 'auth', Run>> = {};
          for (const k of order) got[k] = await wrk(k === 'plain' ? plain : r[k], false, p.pid, SLICE);
          const x = got as Record<'plain' | 'same' | 'auth', Run>;
          pairs.push({ route: r.name, ...x });
          process.stderr.write(`auth cost ${r.name.padEnd(10)} ${i + 1}/${AUTH_PAIRS}  req/s ${x.auth.rps.toFixed(0)} vs same request ${x.same.rps.toFixed(0)} vs plain ${x.plain.rps.toFixed(0)}  cpu ${x.auth.cpuUs.toFixed(0)}/${x.same.cpuUs.toFixed(0)}/${x.plain.cpuUs.toFixed(0)} µs/req${x.auth.errors + x.same.errors + x.plain.errors ? `  ERRORS ${x.auth.errors}/${x.same.errors}/${x.plain.errors}` : ''}\n`);
        }
      }
    } finally {
      await stop(p);
    }
  }
} finally {
  await stop(upstream);
}

// ---- report ----------------------------------------------------------------------
const fmt = (x: number, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const range = (xs: number[], d = 0) => `${fmt(Math.min(...xs), d)}–${fmt(Math.max(...xs), d)}`;
/** `name`'s figure ÷ `ref`'s in each round where both were measured. */
const perRound = (name: string, ref: string, f: (s: Sample) => number | undefined) => {
  const a = results.get(name), b = results.get(ref);
  if (!a || !b) return [];
  return a.map((s, i) => { const x = f(s), y = b[i] ? f(b[i]!) : undefined; return x !== undefined && y ? x / y : NaN; }).filter(Number.isFinite);
};
const ratio = (name: string, ref: string, f: (s: Sample) => number | undefined) => {
  const per = perRound(name, ref, f);
  return per.length ? median(per) : NaN;
};
/** Median (min–max) of ratios. */
const cell = (xs: number[]) => `${fmt(median(xs), 2)} (${range(xs, 2)})`;
const pctCell = (xs: number[]) => fmt(median(xs) * 100);
const rows = targets.map((t) => {
  const s = results.get(t.name)!;
  const rps = s.map((x) => x.ka.rps), hsRuns = s.flatMap((x) => (x.hs ? [x.hs] : [])), hs = hsRuns.map((r) => r.rps);
  return `| ${t.label} | ${fmt(median(rps))} (${range(rps)}) | ${fmt(ratio(t.name, 'nginx', (x) => x.ka.rps), 2)} | ${fmt(ratio(t.name, 'node-floor', (x) => x.ka.rps), 2)} | ${fmt(median(s.map((x) => x.ka.cpuUs)))} | ${fmt(median(s.map((x) => x.ka.p50)), 2)} | ${fmt(median(s.map((x) => x.ka.p99)), 2)} | ${fmt(ratio(t.name, 'nginx', (x) => x.ka.p99), 2)} | ${hs.length ? `${fmt(median(hs))} (${range(hs)})` : '-'} | ${hs.length ? fmt(ratio(t.name, 'nginx', (x) => x.hs?.rps), 2) : '-'} | ${hs.length ? fmt(median(hsRuns.map((r) => r.cpuUs))) : '-'} | ${hs.length ? fmt(ratio('nginx', t.name, (x) => x.hs?.cpuUs), 2) : '-'} | ${pctCell(s.map((x) => x.ka.loadCpu))} / ${hs.length ? pctCell(hsRuns.map((r) => r.loadCpu)) : '-'} | ${fmt(median(s.map((x) => x.rss)))} |`;
});
// Authentication cost: each Portcullis route against Portcullis mTLS-only, by req/s and by
// CPU per request (mTLS-only CPU / route CPU: 1.0 = free), each per round, then the median.
const authRows = targets.filter((t) => t.name.startsWith('pc-') && t.name !== 'pc-mtls' && results.has('pc-mtls')).map((t) =>
  `| ${t.label} | ${fmt(ratio(t.name, 'pc-mtls', (x) => x.ka.rps), 2)} | ${fmt(ratio('pc-mtls', t.name, (x) => x.ka.cpuUs), 2)} |`);
const authTable = authRows.length ? `\n| route vs Portcullis mTLS-only | req/s ratio | CPU-per-request ratio (mTLS-only ÷ route) |\n|---|---|---|\n${authRows.join('\n')}\n` : '';
// Portcullis verifying each token once against HAProxy verifying every token (issue 6's
// moonshot), round by round: by rate, and by CPU per request (HAProxy's ÷ Portcullis').
const versus = (xs: number[]) => `${cell(xs)}; rounds ${xs.map((x) => fmt(x, 2)).join(', ')}`;
const jwtRate = perRound('pc-jwt', 'haproxy-jwt', (x) => x.ka.rps), jwtCpu = perRound('haproxy-jwt', 'pc-jwt', (x) => x.ka.cpuUs);
const jwtTable = jwtRate.length ? `\n| Portcullis mTLS + RS256 JWT ÷ HAProxy mTLS + jwt_verify RS256, same round | median (min–max); each round |\n|---|---|\n| req/s | ${versus(jwtRate)} |\n| CPU per request (HAProxy's ÷ Portcullis') | ${versus(jwtCpu)} |\n` : '';
// What forwarding costs each kind of server: the proxy's CPU ÷ that of the same server
// answering itself, per kept-alive request and per full handshake, each per round.
const forwardRows = ([['nginx proxy ÷ nginx answering itself', 'nginx', 'nginx-direct'], ["bare Node proxy on Portcullis' client ÷ the Node ceiling", 'http1-floor', 'node-direct'], ['Portcullis mTLS ÷ the Node ceiling', 'pc-mtls', 'node-direct']] as const)
  .filter(([, a, b]) => results.get(a)?.length && results.get(b)?.length)
  .map(([label, a, b]) => {
    const hs = perRound(a, b, (x) => x.hs?.cpuUs);
    return `| ${label} | ${cell(perRound(a, b, (x) => x.ka.cpuUs))} | ${hs.length ? cell(hs) : '-'} |`;
  });
const forwardTable = forwardRows.length ? `\n| what forwarding costs: CPU ÷ the same server's answering itself, same round | per kept-alive request, median (min–max) | per full handshake |\n|---|---|---|\n${forwardRows.join('\n')}\n` : '';
const pairRows = TARGETS.filter((t) => pairs.some((p) => p.route === t.name)).map((t) => {
  const ps = pairs.filter((p) => p.route === t.name);
  return `| ${t.label} | ${cell(ps.map((p) => p.auth.rps / p.same.rps))} | ${cell(ps.map((p) => p.same.cpuUs / p.auth.cpuUs))} | ${cell(ps.map((p) => p.auth.rps / p.plain.rps))} | ${cell(ps.map((p) => p.plain.cpuUs / p.auth.cpuUs))} |`;
});
const pairTable = pairRows.length ? `\nAuthentication cost in one Portcullis process (\`/mtls/**\` → cert; \`/jwt/**\`, \`/apikey/**\`, \`/hmac/**\` → cert + that authenticator), ${AUTH_PAIRS} alternating triples of ${SLICE} s slices per route: the route, the mTLS-only route sent the very same request (token, key or signed 1 KiB POST, which it forwards unread), and the mTLS-only route with a plain GET. Median of the per-triple ratios (min–max).

| route vs mTLS-only, same process | req/s ratio, same request | CPU/req ratio, same request | req/s ratio vs plain GET | CPU/req ratio vs plain GET |
|---|---|---|---|---|
${pairRows.join('\n')}
` : '';
const allHs = [...results.values()].flatMap((xs) => xs.flatMap((x) => (x.hs ? [x.hs] : [])));
const handshakeTotal = allHs.reduce((a, r) => a + r.handshakes, 0), resumedTotal = allHs.reduce((a, r) => a + r.resumed, 0), tls13Total = allHs.reduce((a, r) => a + r.tls13, 0), callsTotal = allHs.reduce((a, r) => a + r.connectCalls, 0);
const handshakeNote = handshakeTotal ? `Full handshakes: every connection sends one request with \`Connection: close\` and negotiates a new session (the wrk shim drops the previous one and counts resumptions: ${resumedTotal} of ${handshakeTotal}; ${tls13Total} of them TLS 1.3; wrk called SSL_connect ${(callsTotal / handshakeTotal).toFixed(1)} times per handshake, the shim having it wait for the server's flight instead of polling). When wrk's CPU is near 100 %, the handshake rate is the load generator's limit as much as the server's; the proxy's CPU per handshake is then the fairer comparison.` : 'Full handshakes: not measured (--no-handshake).';
const version = (cmd: string, args: string[]) => { const r = spawnSync(cmd, args, { encoding: 'utf8' }); return (r.stdout + r.stderr).split('\n').find((l) => l.trim())?.trim() ?? '?'; };
const table = [
  `| configuration | keep-alive req/s, median (min–max) | × nginx | × Node floor | proxy CPU µs/req | p50 ms | p99 ms | p99 × nginx | full handshakes/s, median (min–max) | × nginx | proxy CPU µs/handshake | handshake capacity × nginx (its CPU ÷ this CPU) | wrk CPU %, keep-alive / handshakes | peak RSS MiB |`,
  `|---|---|---|---|---|---|---|---|---|---|---|---|---|---|`,
  ...rows,
].join('\n');
const report = `Run ${new Date().toISOString()} on ${cpus().length} × ${cpus()[0]?.model ?? '?'}; ${ROUNDS} rounds × ${SECONDS} s per figure, ${CONNS} connections, wrk on CPU ${LOAD_CPU}, proxy + upstream (nginx \`return 200\`) on CPU ${SERVER_CPU}.
Versions: node ${process.version}; ${version('nginx', ['-v'])}; ${version('haproxy', ['-v'])}; ${version('wrk', ['-v'])}; ${version('openssl', ['version'])}.
Command: \`npm run bench -- --rounds ${ROUNDS} --seconds ${SECONDS} --connections ${CONNS} --auth-pairs ${AUTH_PAIRS} --slice ${SLICE}${opt.only ? ` --only ${opt.only}` : ''}\`

${table}
${jwtTable}${forwardTable}${authTable}${pairTable}
Ratios are computed per round against the reference measured in the same round, then the median is taken.
${handshakeNote}
`;
console.log(report);
if (opt.out) {
  const path = join(ROOT, opt.out);
  const prev = existsSync(path) ? readFileSync(path, 'utf8') : '';
  const marker = '<!-- latest run -->';
  const head = prev.includes(marker) ? prev.slice(0, prev.indexOf(marker)) : prev;
  writeFileSync(path, `${head}${marker}\n${report}`);
}
