// Timing side channels (catalogue HMAC-03, APIK-01): does the time of a refusal say how
// close a guess was? Portcullis' decision (bench/run.ts' HMAC and API-key routes, the real
// authenticators) runs in one process for classes of request that differ only in the
// credential: an HMAC signature wrong in its first byte or in its last, or of the wrong
// length; an API key wrong in its first character or its last, or unrelated to any key.
// Each round times every class over `--iterations` calls, in a new random order; the
// rounds' per-call times are compared class against class, round by round, with a two-sided
// Wilcoxon signed-rank test. Timing is measured here, never asserted in a test (the machine is shared).
//   npm run bench:timing -- [--rounds 200] [--iterations 2000]
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, X509Certificate } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { parseArgs } from 'node:util';
import { writeDevPki } from '../src/tls/pki.ts';
import { loadConfig } from '../src/config/load.ts';
import { peerCert, type ConnectionInfo } from '../src/tls/peer.ts';
import { buildContext } from '../src/pipeline/context.ts';
import { decide, policyFor, type Decision } from '../src/pipeline/decide.ts';
import { isPromise } from '../src/pipeline/requirements.ts';
import { API_KEY, HMAC_AUTHENTICATOR, HMAC_BODY, hmacSignature, median, policyYaml, portcullisYaml } from './common.ts';

const { values: opt } = parseArgs({ options: { rounds: { type: 'string', default: '200' }, iterations: { type: 'string', default: '2000' } } });
const ROUNDS = Number(opt.rounds), N = Number(opt.iterations);
const W = join(dirname(fileURLToPath(import.meta.url)), '.work', 'timing');
mkdirSync(W, { recursive: true });

const pki = writeDevPki(W, ['bench.test']);
writeFileSync(join(W, 'timing.yaml'), portcullisYaml({
  authenticators: `  key: { type: apiKey, keys: [ { id: bench, hash: "sha256:${createHash('sha256').update(API_KEY).digest('hex')}", subject: bench } ] }
${HMAC_AUTHENTICATOR}`,
  policies: [policyYaml('apikey', '{ all: [cert, key] }'), policyYaml('hmac', '{ all: [cert, sig] }')].join('\n'),
}));
const cfg = loadConfig(join(W, 'timing.yaml'));
const x509 = new X509Certificate(readFileSync(join(pki.dir, 'client.crt')));
const conn: ConnectionInfo = {
  remoteAddress: '127.0.0.1', remotePort: 40000, tlsVersion: 'TLSv1.3', resumed: false,
  clientCert: { present: true, verified: true, cert: peerCert(x509.raw, Date.parse(x509.validFrom), Date.parse(x509.validTo)) },
};

const NOW = Date.now();
const TS = String(Math.floor(NOW / 1000));
const SIG = hmacSignature('/hmac/bench', TS);
const BODY = Buffer.from(HMAC_BODY);
/** `s` with the character at `i` replaced by another of the same alphabet. */
const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'a' ? 'b' : 'a') + s.slice(i + 1);

interface Class { name: string; url: string; method: string; headers: IncomingHttpHeaders; body?: Buffer; want: string }
const hmac = (sig: string, want: string, name: string): Class => ({
  name, url: '/hmac/bench', method: 'POST', body: BODY, want,
  headers: { host: '127.0.0.1:18443', 'content-length': String(BODY.length), 'x-api-key': 'bench', 'x-timestamp': TS, 'x-signature': sig },
});
const apikey = (key: string, want: string, name: string): Class => ({ name, url: '/apikey/bench', method: 'GET', want, headers: { host: '127.0.0.1:18443', 'x-api-key': key } });
const HMAC_AT = [0, 8, 16, 24, 31]; // byte of the 32-byte MAC (two hex digits each)
const KEY_AT = [0, 10, 20, 30, API_KEY.length - 1];
const classes: Class[] = [
  hmac(SIG, 'allow', 'HMAC: the right signature'),
  ...HMAC_AT.map((i) => hmac(flip(SIG, 2 * i), 'AUTH_001', `HMAC: byte ${i} wrong`)),
  hmac(SIG.slice(0, 62), 'AUTH_001', 'HMAC: one byte short'),
  apikey(API_KEY, 'allow', 'API key: the right key'),
  ...KEY_AT.map((i) => apikey(flip(API_KEY, i), 'AUTH_004', `API key: character ${i} wrong`)),
  apikey(`kapi_prod_${'Z'.repeat(API_KEY.length - 10)}`, 'AUTH_004', 'API key: unrelated'),
];
// An early-exit comparison would make a guess slower the later its first wrong byte: each
// position is compared with position 0, and the short MAC and unrelated key with it too.
const COMPARE: [string, string][] = [
  ...[...HMAC_AT.slice(1).map((i) => `HMAC: byte ${i} wrong`), 'HMAC: one byte short'].map((c): [string, string] => [c, 'HMAC: byte 0 wrong']),
  ...[...KEY_AT.slice(1).map((i) => `API key: character ${i} wrong`), 'API key: unrelated'].map((c): [string, string] => [c, 'API key: character 0 wrong']),
];

const prepared = classes.map((c) => {
  const head = { httpVersion: '1.1', method: c.method, url: c.url, headers: c.headers, rawHeaders: Object.entries(c.headers).flatMap(([k, v]) => [k, String(v)]) };
  const b = buildContext(head, conn, cfg);
  if (!b.ok) throw new Error(`${c.name}: ${b.reason}`);
  const policy = policyFor(cfg, b.ctx);
  const d = decide(cfg, b.ctx, Date.now(), { policy, body: c.body });
  if (isPromise(d)) throw new Error(`${c.name}: not decided synchronously`);
  const got = d.outcome === 'allow' ? 'allow' : d.code;
  if (got !== c.want) throw new Error(`${c.name}: ${got}, not ${c.want} (${d.reason})`);
  return { ctx: b.ctx, policy, body: c.body };
});

/** ns per decision of class `i`, over N calls. */
function time(i: number): number {
  const { ctx, policy, body } = prepared[i]!;
  let sink = 0;
  const t = process.hrtime.bigint();
  for (let n = 0; n < N; n++) if ((decide(cfg, ctx, NOW, { policy, body }) as Decision).outcome === 'allow') sink++;
  const ns = Number(process.hrtime.bigint() - t) / N;
  if (sink !== (classes[i]!.want === 'allow' ? N : 0)) throw new Error(`${classes[i]!.name}: the verdict changed during the loop`);
  return ns;
}

/**
 * Two-sided Wilcoxon signed-rank test (normal approximation, ties averaged) on the rounds'
 * paired log-ratios: the p-value for "neither class is systematically slower". Pairing by
 * round cancels the machine's drift, which moves every class together.
 */
function signedRank(a: number[], b: number[]): number {
  const d = a.map((x, i) => Math.log(x / b[i]!)).filter((x) => x !== 0);
  const s = d.map((v) => ({ abs: Math.abs(v), pos: v > 0 })).sort((x, y) => x.abs - y.abs);
  let wPlus = 0, tie = 0;
  for (let i = 0; i < s.length;) {
    let j = i;
    while (j + 1 < s.length && s[j + 1]!.abs === s[i]!.abs) j++;
    for (let k = i; k <= j; k++) if (s[k]!.pos) wPlus += (i + j) / 2 + 1;
    const t = j - i + 1;
    tie += t ** 3 - t;
    i = j + 1;
  }
  const n = s.length;
  const sd = Math.sqrt((n * (n + 1) * (2 * n + 1)) / 24 - tie / 48);
  return 2 * (1 - phi(Math.abs(wPlus - (n * (n + 1)) / 4) / sd));
}
/** The standard normal CDF (Abramowitz & Stegun 26.2.17). */
function phi(z: number): number {
  const t = 1 / (1 + 0.2316419 * z);
  const d = Math.exp((-z * z) / 2) / Math.sqrt(2 * Math.PI);
  return 1 - d * t * (0.31938153 + t * (-0.356563782 + t * (1.781477937 + t * (-1.821255993 + t * 1.330274429))));
}

for (let i = 0; i < classes.length; i++) time(i); // warm-up: JIT
const samples = classes.map(() => [] as number[]);
for (let r = 0; r < ROUNDS; r++) {
  const order = [...classes.keys()].sort(() => Math.random() - 0.5);
  for (const i of order) samples[i]!.push(time(i));
}
const q = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.floor(p * (xs.length - 1))]!;
console.log(`Timing of Portcullis' decision by credential, ${ROUNDS} rounds × ${N} calls per class in random order; node ${process.version}\n`);
console.log('| request | verdict | median ns per decision | p10–p90 |');
console.log('|---|---|---|---|');
classes.forEach((c, i) => console.log(`| ${c.name} | ${c.want} | ${median(samples[i]!).toFixed(0)} | ${q(samples[i]!, 0.1).toFixed(0)}–${q(samples[i]!, 0.9).toFixed(0)} |`));
console.log('\n| compared | median of the per-round ratios | Wilcoxon signed-rank p (two-sided) |');
console.log('|---|---|---|');
const idx = (name: string) => classes.findIndex((c) => c.name === name);
for (const [a, b] of COMPARE) {
  const [x, y] = [samples[idx(a)]!, samples[idx(b)]!];
  console.log(`| ${a} ÷ ${b} | ${median(x.map((v, i) => v / y[i]!)).toFixed(3)} | ${signedRank(x, y).toFixed(3)} |`);
}
