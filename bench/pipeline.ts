// Portcullis' own per-request work, without the network, stage by stage: request
// context, policy match, the decision (each route's authenticators for real: the RS256
// JWT verified once and then found in the cache, the API key hashed, the HMAC over the
// 1 KiB body computed) and the upstream header list. The routes and requests are those
// of bench/run.ts. Within one run the rounds agree to a few per cent, where the
// network benchmark's req/s moves ±30 %; the machine's speed still moves every figure
// between runs, so compare two builds in alternating runs (or by the × mTLS column).
//   npm run bench:pipeline -- [--rounds 7] [--iterations 100000]
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { parseArgs } from 'node:util';
import { writeDevPki } from '../src/tls/pki.ts';
import { loadConfig } from '../src/config/load.ts';
import { peerCert, type ConnectionInfo } from '../src/tls/peer.ts';
import { buildContext } from '../src/pipeline/context.ts';
import { decide, policyFor, type Decision } from '../src/pipeline/decide.ts';
import { upstreamRequest } from '../src/pipeline/headers.ts';
import { isPromise } from '../src/pipeline/requirements.ts';
import { API_KEY, HMAC_AUTHENTICATOR, HMAC_BODY, hmacSignature, median, policyYaml, portcullisYaml } from './common.ts';

const { values: opt } = parseArgs({ options: { rounds: { type: 'string', default: '7' }, iterations: { type: 'string', default: '100000' } } });
const ROUNDS = Number(opt.rounds), N = Number(opt.iterations);
const W = join(dirname(fileURLToPath(import.meta.url)), '.work', 'pipeline');
mkdirSync(W, { recursive: true });

// ---- the same PKI shape, token, key and signed request as bench/run.ts ----------
const pki = writeDevPki(W, ['bench.test']);
const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
writeFileSync(join(W, 'jwks.json'), JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'bench', alg: 'RS256', use: 'sig' }] }));
const b64u = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
const now = Math.floor(Date.now() / 1000);
const jwtInput = `${b64u({ alg: 'RS256', typ: 'JWT', kid: 'bench' })}.${b64u({ sub: 'bench-user', iss: 'https://bench.test', aud: 'bench', scope: 'read', iat: now, exp: now + 86400 })}`;
const JWT = `${jwtInput}.${sign('sha256', Buffer.from(jwtInput), privateKey).toString('base64url')}`;
const BODY = Buffer.from(HMAC_BODY);
const TS = String(now);
const SIG = hmacSignature('/hmac/bench', TS);

writeFileSync(join(W, 'pipeline.yaml'), portcullisYaml({
  authenticators: `  jwt: { type: jwt, issuer: "https://bench.test", audience: bench, algorithms: [RS256], jwks: { file: jwks.json } }
  key: { type: apiKey, keys: [ { id: bench, hash: "sha256:${createHash('sha256').update(API_KEY).digest('hex')}", subject: bench } ] }
${HMAC_AUTHENTICATOR}`,
  policies: [policyYaml('mtls', 'cert'), policyYaml('jwt', '{ all: [cert, jwt] }'), policyYaml('apikey', '{ all: [cert, key] }'), policyYaml('hmac', '{ all: [cert, sig] }')].join('\n'),
}));
const cfg = loadConfig(join(W, 'pipeline.yaml'));
const x509 = new X509Certificate(readFileSync(join(pki.dir, 'client.crt')));
const conn: ConnectionInfo = {
  remoteAddress: '127.0.0.1', remotePort: 40000, tlsVersion: 'TLSv1.3', resumed: false,
  clientCert: { present: true, verified: true, cert: peerCert(x509.raw, Date.parse(x509.validFrom), Date.parse(x509.validTo)) },
};

// ---- one request through each stage, as handle.ts runs them ------------------------
interface Route { name: string; method: string; url: string; headers: IncomingHttpHeaders; body?: Buffer }
const wrkHeaders = (extra: Record<string, string>): IncomingHttpHeaders => ({ host: '127.0.0.1:18443', ...extra });
const routes: Route[] = [
  { name: 'mTLS', method: 'GET', url: '/mtls/bench', headers: wrkHeaders({}) },
  { name: 'mTLS + RS256 JWT', method: 'GET', url: '/jwt/bench', headers: wrkHeaders({ authorization: `Bearer ${JWT}` }) },
  { name: 'mTLS + API key', method: 'GET', url: '/apikey/bench', headers: wrkHeaders({ 'x-api-key': API_KEY }) },
  { name: 'mTLS + HMAC (1 KiB body)', method: 'POST', url: '/hmac/bench', body: BODY,
    headers: wrkHeaders({ 'content-length': String(BODY.length), 'content-type': 'application/json', 'x-api-key': 'bench', 'x-timestamp': TS, 'x-signature': SIG }) },
];
const STAGES = ['context', 'match', 'decision', 'headers'] as const;
type Stage = typeof STAGES[number];

function prepare(r: Route) {
  const head = { httpVersion: '1.1', method: r.method, url: r.url, headers: r.headers, rawHeaders: Object.entries(r.headers).flatMap(([k, v]) => [k, String(v)]) };
  const c = buildContext(head, conn, cfg);
  if (!c.ok) throw new Error(`${r.name}: ${c.reason}`);
  const policy = policyFor(cfg, c.ctx);
  if (policy?.name !== r.url.split('/')[1]) throw new Error(`${r.name}: matched policy ${policy?.name}`);
  return { head, ctx: c.ctx, policy };
}

/** ns per call of each stage, each timed over `N` calls. */
function measure(r: Route): Record<Stage, number> {
  const { head, ctx, policy } = prepare(r);
  const d = decide(cfg, ctx, Date.now(), { policy, body: r.body });
  if (isPromise(d)) throw new Error(`${r.name}: the decision did not finish synchronously`);
  if (d.outcome !== 'allow') throw new Error(`${r.name}: ${d.code} ${d.reason}`);
  let sink = 0;
  const time = (f: () => unknown) => { const t = process.hrtime.bigint(); for (let i = 0; i < N; i++) if (f()) sink++; return Number(process.hrtime.bigint() - t) / N; };
  const out = {
    context: time(() => buildContext(head, conn, cfg).ok),
    match: time(() => policyFor(cfg, ctx)),
    decision: time(() => (decide(cfg, ctx, Date.now(), { policy, body: r.body }) as Decision).outcome === 'allow'),
    headers: time(() => upstreamRequest(r.headers, ctx, d, cfg, false).headers.length),
  };
  if (sink !== 4 * N) throw new Error(`${r.name}: a stage failed during the loop (${sink})`);
  return out;
}

// The first JWT is verified asynchronously (jose); from then on it is a cache hit.
for (const r of routes) { const { ctx, policy } = prepare(r); await decide(cfg, ctx, Date.now(), { policy, body: r.body }); }
for (const r of routes) measure(r); // warm-up: JIT
const samples = routes.map(() => Object.fromEntries(STAGES.map((s) => [s, [] as number[]])) as Record<Stage, number[]>);
for (let round = 0; round < ROUNDS; round++) {
  const order = round % 2 ? [...routes.keys()].reverse() : [...routes.keys()];
  for (const i of order) { const m = measure(routes[i]!); for (const s of STAGES) samples[i]![s].push(m[s]); }
}
const us = (ns: number) => (ns / 1000).toFixed(2);
console.log(`Portcullis pipeline per request, without the network: ${ROUNDS} rounds × ${N} calls per stage and route, median µs (min–max); node ${process.version}\n`);
console.log(`| route | ${STAGES.join(' | ')} | total | × mTLS route |`);
console.log(`|---|${STAGES.map(() => '---|').join('')}---|---|`);
const totalOf = (i: number) => STAGES.reduce((a, s) => a + median(samples[i]![s]), 0);
routes.forEach((r, i) => {
  const cells = STAGES.map((s) => { const xs = samples[i]![s]; return `${us(median(xs))} (${us(Math.min(...xs))}–${us(Math.max(...xs))})`; });
  console.log(`| ${r.name} | ${cells.join(' | ')} | ${us(totalOf(i))} | ${(totalOf(i) / totalOf(0)).toFixed(1)} |`);
});
