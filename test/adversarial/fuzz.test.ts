// Property-based fuzzing (fast-check, fixed seed, bounded runs) of every parser
// that sees attacker input: no input throws out of an authenticator, none is
// accepted that should not be, and the path normaliser is safe and idempotent.
import t from 'tap';
import fc from 'fast-check';
import { readFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { generateKeyPairSync } from 'node:crypto';
import { exportJWK } from 'jose';
import { AUTHENTICATORS_BY_TYPE } from '../../src/authenticators/registry.ts';
import type { AuthRequest, Authenticator } from '../../src/authenticators/types.ts';
import { Runtime } from '../../src/runtime.ts';
import { ConfigError } from '../../src/errors.ts';
import { parseDictionary, SfvError } from '../../src/util/sfv.ts';
import { normalisePath } from '../../src/pipeline/normalize.ts';
import { headerSafe, xfcc } from '../../src/pipeline/headers.ts';
import { readCertificate } from '../../src/tls/asn1.ts';
import { peerCert } from '../../src/tls/peer.ts';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, baseConfig } from '../helpers/harness.ts';

const SEED = 20261122;
const RUNS = 400;
const dir = mkdtempSync(join(tmpdir(), 'portcullis-fuzz-'));
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(rsa.publicKey)), kid: 'k1', alg: 'RS256' }] }));
const VEC = new URL('../../../shared/reference/vectors/rfc9421/', import.meta.url).pathname;

function create(cfg: Record<string, unknown>): Authenticator {
  const type = AUTHENTICATORS_BY_TYPE.get(cfg.type as string)!;
  return type.create(type.schema.parse(cfg), {
    name: 'f', clientAuth: true, runtime: new Runtime(), store: { type: 'memory' }, resolvePath: (p) => resolve(dir, p),
    readFile: (p, path) => { try { return readFileSync(resolve(dir, p), 'utf8'); } catch { throw new ConfigError([{ path, message: p }]); } },
  });
}
const base = (headers: AuthRequest['headers'], extra: Partial<AuthRequest> = {}): AuthRequest => ({
  conn: { remoteAddress: '127.0.0.1', remotePort: 1, resumed: false, clientCert: { present: false, verified: false } },
  method: 'POST', path: '/x', query: '', headers, authority: 'a.test', clientIp: '127.0.0.1', now: Date.now(), body: Buffer.from('{}'), ...extra,
});
const b64u = (s: string) => Buffer.from(s).toString('base64url');
const anyText = fc.string({ maxLength: 300, unit: 'binary' });

async function neverThrowsNeverAllows(t: any, a: Authenticator, arb: fc.Arbitrary<AuthRequest['headers']>, extra: (h: AuthRequest['headers']) => Partial<AuthRequest> = () => ({})) {
  let allowed = 0;
  await fc.assert(fc.asyncProperty(arb, async (headers) => {
    const v = await a.verify(base(headers, extra(headers)));
    if (v.kind === 'allow') allowed++;
    return v.kind !== 'allow';
  }), { seed: SEED, numRuns: RUNS });
  t.equal(allowed, 0, `${a.type}: ${RUNS} random inputs, none allowed, none threw`);
}

t.test('JWT: random and structurally plausible tokens', async (t) => {
  const a = create({ type: 'jwt', algorithms: ['RS256'], jwks: { file: 'jwks.json' }, anyAudience: true });
  const jsonish = fc.oneof(fc.json(), fc.constantFrom('{"alg":"none"}', '{"alg":"RS256","kid":"k1"}', '{"alg":"HS256","kid":"k1"}', '{"alg":"RS256","crit":["b64"],"b64":false}', '{"alg":"RS256","jwk":{}}'));
  const token = fc.oneof(
    anyText,
    fc.tuple(jsonish, fc.json(), fc.string({ maxLength: 400 })).map(([h, p, s]) => `${b64u(h)}.${b64u(p)}.${b64u(s)}`),
    fc.tuple(jsonish, fc.json()).map(([h, p]) => `${b64u(h)}.${b64u(p)}.`),
  );
  await neverThrowsNeverAllows(t, a, token.map((tok) => ({ authorization: `Bearer ${tok}` })));
  await neverThrowsNeverAllows(t, a, anyText.map((v) => ({ authorization: v })));
});

t.test('API key: random header values', async (t) => {
  const a = create({ type: 'apiKey', keys: [{ id: 'k', hash: `sha256:${'a'.repeat(64)}`, subject: 's' }] });
  await neverThrowsNeverAllows(t, a, fc.oneof(anyText, fc.array(anyText, { maxLength: 3 })).map((v) => ({ 'x-api-key': v as string })));
});

t.test('HMAC simple: random header values', async (t) => {
  const a = create({ type: 'hmac', clients: [{ id: 'c1', secret: 'x'.repeat(32), subject: 's' }] });
  await neverThrowsNeverAllows(t, a, fc.record({
    'x-api-key': fc.oneof(fc.constant('c1'), anyText), 'x-timestamp': fc.oneof(fc.constant(String(Math.floor(Date.now() / 1000))), anyText),
    'x-nonce': anyText, 'x-signature': fc.oneof(fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex')), anyText),
  }));
});

t.test('bsm access keys: random header values around a configured key', async (t) => {
  // A real secp256k1 point (the generator's x), so the lookup by id succeeds and the signature math runs.
  const G = '0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798';
  const a = create({ type: 'bsm', keys: [{ publicKey: G, subject: 's' }] });
  const hex = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((b) => Buffer.from(b).toString('hex'));
  await neverThrowsNeverAllows(t, a, fc.record({
    'x-auth-key': fc.oneof(fc.constant(G), hex(33), anyText),
    'x-auth-hash': fc.oneof(fc.constant('44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'), hex(32), anyText),
    'x-auth-nonce': anyText,
    'x-auth-time': fc.oneof(fc.constant(String(Date.now())), anyText),
    'x-auth-signature': fc.oneof(fc.tuple(fc.integer({ min: 27, max: 34 }), fc.uint8Array({ minLength: 64, maxLength: 64 })).map(([h, b]) => Buffer.concat([Buffer.from([h]), b]).toString('base64')), anyText),
  }));
});

t.test('bsm xPubs: random nonces (each derives a key) and signatures around a configured xPub', async (t) => {
  // BIP32 test vector 1, m/0H/1/2H: every hex nonce below runs the BIP32 derivation.
  const X = 'xpub6D4BDPcP2GT577Vvch3R8wDkScZWzQzMMUm3PWbmWvVJrZwQY4VUNgqFJPMM3No2dFDFGTsxxpG5uJh7n7epu4trkrX7x7DogT5Uv6fcLW5';
  const a = create({ type: 'bsm', xpubs: [{ xpub: X, subject: 's' }] });
  const hexText = fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF'), minLength: 0, maxLength: 140 });
  await neverThrowsNeverAllows(t, a, fc.record({
    'x-auth-xpub': fc.oneof(fc.constant(X), anyText),
    'x-auth-hash': fc.constant('44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'),
    'x-auth-nonce': fc.oneof(hexText, fc.uint8Array({ minLength: 32, maxLength: 64 }).map((b) => Buffer.from(b).toString('hex')), anyText),
    'x-auth-time': fc.constant(String(Date.now())),
    'x-auth-signature': fc.oneof(fc.tuple(fc.integer({ min: 27, max: 34 }), fc.uint8Array({ minLength: 64, maxLength: 64 })).map(([h, b]) => Buffer.concat([Buffer.from([h]), b]).toString('base64')), anyText),
  }));
});

t.test('sigv4: random and mutated Authorization / X-Amz-Date around a configured key', async (t) => {
  const a = create({ type: 'sigv4', region: 'us-east-1', service: 'service', keys: [{ accessKeyId: 'AKIDEXAMPLE', secret: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY', subject: 's' }] });
  const valid = 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31';
  // Every input but the suite's own signed request (a valid signature of GET /, accepted at the suite's time).
  const mutated = fc.tuple(fc.nat(valid.length), fc.nat(valid.length), anyText).map(([i, j, s]) => valid.slice(0, Math.min(i, j)) + s.slice(0, 8) + valid.slice(Math.max(i, j))).filter((x) => x !== valid);
  const now = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+/, '');
  await neverThrowsNeverAllows(t, a, fc.record({ host: fc.constant('example.amazonaws.com'), authorization: fc.oneof(anyText, mutated), 'x-amz-date': fc.oneof(fc.constant(now), fc.constant('20150830T123600Z'), anyText) }),
    // As the server hands it over: the header lines as received, so that the canonical request is built.
    (h) => ({ method: 'GET', target: '/', body: Buffer.alloc(0), now: Date.UTC(2015, 7, 30, 12, 36, 0), rawHeaders: Object.entries(h).flatMap(([k, v]) => [k, String(v)]) }));
});

t.test('RFC 9421 structured fields: random and mutated Signature-Input / Signature', async (t) => {
  const a = create({ type: 'hmac', scheme: 'rfc9421', requiredComponents: [], clients: [{ id: 'test-key-ed25519', publicKey: join(VEC, 'keys/test-key-ed25519.pub.pem'), algorithm: 'ed25519', subject: 's' }] });
  const valid = 'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"';
  const mutated = fc.tuple(fc.nat(valid.length), fc.nat(valid.length), anyText).map(([i, j, s]) => valid.slice(0, Math.min(i, j)) + s.slice(0, 8) + valid.slice(Math.max(i, j)));
  await neverThrowsNeverAllows(t, a, fc.record({ 'signature-input': fc.oneof(anyText, mutated), signature: fc.oneof(anyText, fc.constant('sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:')) }));
  await fc.assert(fc.property(anyText, (s) => {
    try { parseDictionary(s); } catch (e) { if (!(e instanceof SfvError)) throw e; }
    return true;
  }), { seed: SEED, numRuns: 2000 });
  t.pass('parseDictionary throws only SfvError on 2000 random inputs');
});

t.test('path normalisation: safe and idempotent on random targets', async (t) => {
  const seg = fc.oneof(fc.constantFrom('..', '.', '', '%2e', '%2E%2e', '%2f', '%5c', '%00', '%25', '%2525', 'admin', 'a;b', '%c0%ae', '\\'), fc.string({ maxLength: 6 }));
  const target = fc.oneof(fc.array(seg, { maxLength: 8 }).map((s) => '/' + s.join('/')), anyText);
  await fc.assert(fc.property(target, (raw) => {
    const n = normalisePath(raw);
    if (!n.ok) return true;
    const p = n.path;
    const again = normalisePath(p);
    return p.startsWith('/') && !p.includes('//') && !p.split('/').some((s) => s === '.' || s === '..') && !/%2f|%5c|%00/i.test(p) && !p.includes('\\') && again.ok && again.path === p;
  }), { seed: SEED, numRuns: 3000 });
  t.pass('3000 random targets: refused, or normalised to a fixed point with no dot segments, no encoded slash/backslash/NUL');
});

t.test('certificate fields and header values: unparseable DER is refused, values are always header-safe', async (t) => {
  const fx = makeFixture();
  const der = Buffer.from(fx.clients.evilCn.certPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  await fc.assert(fc.property(fc.nat(der.length - 1), fc.integer({ min: 0, max: 255 }), (i, b) => {
    const m = Buffer.from(der);
    m[i] = b;
    try { readCertificate(m); } catch (e) { if (!(e instanceof Error)) throw e; }
    return true;
  }), { seed: SEED, numRuns: 1500 });
  t.pass('1500 single-byte mutations of a certificate: parsed or refused with an Error');
  await fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (s) => /^[\x20-\x7e]*$/.test(headerSafe(s)) && !headerSafe(s).includes('\r')), { seed: SEED, numRuns: 2000 });
  const cert = peerCert(der, 0, Date.now() + 1e9);
  t.notMatch(xfcc(cert), /[\r\n\x00]/, 'XFCC of a hostile certificate is one header line');
});

t.test('through the live proxy: random credentials never produce a 5xx or reach the upstream', async (t) => {
  const fx = makeFixture();
  writeFileSync(join(fx.dir, 'jwks.json'), readFileSync(join(dir, 'jwks.json')));
  const h = await startHarness(fx, baseConfig(`
authenticators:
  j: { type: jwt, algorithms: [RS256], anyAudience: true, jwks: { file: ${fx.dir}/jwks.json } }
  k: { type: apiKey, keys: [ { id: k, hash: "sha256:${'a'.repeat(64)}", subject: s } ] }
  s: { type: hmac, clients: [ { id: c1, secret: "${'x'.repeat(32)}", subject: s } ] }
policies:
  - name: api
    match: { paths: ["/**"] }
    authenticate: { any: [j, k, s] }
`));
  t.teardown(() => h.close());
  const printable = fc.string({ minLength: 1, maxLength: 200 }).map((s) => s.replace(/[^\x21-\x7e]/g, 'x'));
  const statuses = new Set<number>();
  await fc.assert(fc.asyncProperty(printable, printable, printable, async (a, k, s) => {
    const r = await request(h, fx, { path: '/x', method: 'POST', body: '{}', headers: { authorization: `Bearer ${a}`, 'x-api-key': k, 'x-signature': s, 'x-timestamp': '1', 'x-nonce': 'n' } });
    statuses.add(r.status);
    return r.status < 500 && r.status >= 400;
  }), { seed: SEED, numRuns: 60 });
  t.equal(h.seen.length, 0, 'nothing reached the upstream');
  t.comment(`statuses seen: ${[...statuses].join(', ')}`);
});
