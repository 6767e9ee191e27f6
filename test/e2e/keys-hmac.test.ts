// API keys and signed requests through the real proxy: the Kindly (X-API-Key),
// SPV Wallet (x-auth-xpub) and HMAC (X-API-Key/X-Timestamp/X-Nonce/X-Signature)
// schemes of shared/seeds, RFC 9421 Appendix B vectors, and an independent
// RFC 9421 client (http-message-signatures).
import t from 'tap';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, continueRequest, baseConfig, type Harness } from '../helpers/harness.ts';
import { seed004, rfc9421Ed25519Post, RFC9421_VECTORS as VEC } from '../helpers/signing.ts';

const fx = makeFixture();
const vectors = JSON.parse(readFileSync(join(VEC, 'rfc9421-appendix-b.json'), 'utf8'));
const sha = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}`;
const KEY = 'kapi_prod_7f3d9a2b5c1e4890abcdef1234567890';
const XPUB = 'xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8';
const HMAC_SECRET = 'partner-a-shared-secret-0123456789';
let clock = Date.now();
const sentSignatures: string[] = [];
let h: Harness;

t.before(async () => {
  writeFileSync(join(fx.dir, 'api-keys.yaml'), `keys:
  - { id: prod-main, hash: "${sha(KEY)}", subject: svc-main, scopes: [read:compression, read:context] }
  - { id: old, hash: "${sha('kapi_prod_revokedrevokedrevokedrevoked00')}", subject: svc-old, revoked: true }
  - { id: expired, hash: "${sha('kapi_test_expiredexpiredexpiredexpired0')}", subject: svc-exp, expiresAt: "2020-01-01T00:00:00Z" }
  - { id: office-only, hash: "${sha('kapi_dev_officeofficeofficeofficeoffice')}", subject: svc-office, allowIps: [10.0.0.0/8] }
`);
  h = await startHarness(fx, baseConfig(`
authenticators:
  kindly-keys: { type: apiKey, keysFile: ${fx.dir}/api-keys.yaml }
  query-keys: { type: apiKey, from: { query: api_key }, keysFile: ${fx.dir}/api-keys.yaml }
  xpub:
    type: apiKey
    from: { header: x-auth-xpub }
    keys: [ { id: admin-xpub, hash: "${sha(XPUB)}", subject: spv-admin, scopes: [admin] } ]
  forwarded-keys: { type: apiKey, keysFile: ${fx.dir}/api-keys.yaml, forward: true }
  partner-hmac:
    type: hmac
    scheme: simple
    clients:
      - { id: partner-a, secret: "\${env:PARTNER_A_SECRET}", subject: partner-a, scopes: [orders] }
      - { id: partner-old, secret: "${HMAC_SECRET}", subject: old, revoked: true }
    headers: { keyId: X-API-Key, timestamp: X-Timestamp, nonce: X-Nonce, signature: X-Signature }
    message: [method, path, timestamp, nonce, body]
    encoding: hex
    algorithm: sha256
    maxSkewSec: 300
  rfc9421:
    type: hmac
    scheme: rfc9421
    requiredComponents: []
    requireDigestForBody: false   # the RFC's B.2.5/B.2.6 sign a request with a body without content-digest
    clients:
      - { id: test-key-rsa-pss, publicKey: ${VEC}keys/test-key-rsa-pss.pub.pem, algorithm: rsa-pss-sha512, subject: rsa-pss-client }
      - { id: test-key-ed25519, publicKey: ${VEC}keys/test-key-ed25519.pub.pem, algorithm: ed25519, subject: ed-client }
      - { id: test-key-ecc-p256, publicKey: ${VEC}keys/test-key-ecc-p256.pub.pem, algorithm: ecdsa-p256-sha256, subject: ec-client }
      - { id: test-shared-secret, secret: "${vectors.shared_secret_b64}", secretEncoding: base64, subject: hmac-client }
  rfc9421-strict:
    type: hmac
    scheme: rfc9421
    requiredComponents: ["@method", "@path", "@authority", content-digest]
    requireNonce: true
    clients:
      - { id: test-key-rsa-pss, publicKey: ${VEC}keys/test-key-rsa-pss.pub.pem, algorithm: rsa-pss-sha512, subject: rsa-pss-client }
      - { id: test-key-ed25519, publicKey: ${VEC}keys/test-key-ed25519.pub.pem, algorithm: ed25519, subject: ed-client }
policies:
  - name: kindly
    match: { paths: ["/api/**"] }
    authenticate: kindly-keys
  - name: query
    match: { paths: ["/q/**"] }
    authenticate: query-keys
  - name: spv
    match: { paths: ["/v1/**"] }
    authenticate: xpub
    authorize: { scopes: { all: [admin] } }
  - name: fwd
    match: { paths: ["/fwd/**"] }
    authenticate: forwarded-keys
  - name: signed
    match: { paths: ["/signed/**"] }
    authenticate: partner-hmac
  - name: strict
    match: { paths: ["/strict/**"] }
    authenticate: rfc9421-strict
  - name: rfc
    match: { paths: ["/foo", "/rfc/**"] }
    authenticate: rfc9421
`, '  maxBodyBytes: 4096'), { now: () => clock });
});
t.teardown(() => h.close());
process.env.PARTNER_A_SECRET = HMAC_SECRET;

const denied = async (t: any, o: Parameters<typeof request>[2], status: number, code: string, what: string) => {
  const before = h.seen.length;
  const r = await request(h, fx, o);
  t.same([r.status, r.json?.error?.code], [status, code], what);
  t.equal(h.seen.length, before, `${what}: upstream not reached`);
};

t.test('API keys in X-API-Key (Kindly): found, revoked, unknown, expired, IP-restricted', async (t) => {
  const r = await request(h, fx, { path: '/api/compression/stats', headers: { 'x-api-key': KEY } });
  t.equal(r.status, 200);
  const up = h.seen.at(-1)!;
  t.same([up.headers['x-auth-user-id'], up.headers['x-auth-key-id'], up.headers['x-auth-method'], up.headers['x-auth-scopes']], ['svc-main', 'prod-main', 'apiKey', 'read:compression read:context']);
  t.notOk(up.headers['x-api-key'], 'the key is not forwarded');
  await denied(t, { path: '/api/x', headers: { 'x-api-key': 'kapi_prod_revokedrevokedrevokedrevoked00' } }, 401, 'AUTH_004', 'revoked');
  await denied(t, { path: '/api/x', headers: { 'x-api-key': 'kapi_prod_unknownunknownunknownunknown0' } }, 401, 'AUTH_004', 'unknown');
  await denied(t, { path: '/api/x', headers: { 'x-api-key': 'kapi_test_expiredexpiredexpiredexpired0' } }, 401, 'AUTH_002', 'expired');
  await denied(t, { path: '/api/x', headers: { 'x-api-key': 'kapi_dev_officeofficeofficeofficeoffice' } }, 403, 'AUTH_005', 'IP not allowed for this key');
  await denied(t, { path: '/api/x' }, 401, 'AUTH_003', 'missing');
  await denied(t, { path: '/api/x', headers: { 'x-api-key': [KEY, KEY] } }, 401, 'AUTH_003', 'sent twice');
});

t.test('only the exact key: no prefix, no extension, no case folding, no trimmed whitespace (catalogue APIK-03)', async (t) => {
  await denied(t, { path: '/api/x', headers: { 'x-api-key': KEY.slice(0, -1) } }, 401, 'AUTH_004', 'the key less its last character');
  await denied(t, { path: '/api/x', headers: { 'x-api-key': `${KEY}0` } }, 401, 'AUTH_004', 'the key with one more character');
  await denied(t, { path: '/api/x', headers: { 'x-api-key': KEY.toUpperCase() } }, 401, 'AUTH_004', 'the key in upper case');
  // Node writes header values as latin1: these are the bytes A0 (no-break space) and 09 (tab).
  await denied(t, { path: '/api/x', headers: { 'x-api-key': `${KEY}\u00a0` } }, 401, 'AUTH_003', 'a trailing no-break space');
  await denied(t, { path: '/api/x', headers: { 'x-api-key': `\u00a0${KEY}` } }, 401, 'AUTH_003', 'a leading no-break space');
  await denied(t, { path: '/api/x', headers: { 'x-api-key': `${KEY.slice(0, 10)}\t${KEY.slice(10)}` } }, 401, 'AUTH_003', 'a tab inside');
  await denied(t, { path: `/q/items?api_key=${KEY}%20` }, 401, 'AUTH_003', 'query: a trailing space');
  await denied(t, { path: `/q/items?api_key=${KEY}%00` }, 401, 'AUTH_003', 'query: a NUL');
  await denied(t, { path: `/q/items?api_key=${KEY}%C2%A0` }, 401, 'AUTH_003', 'query: a UTF-8 no-break space');
  await denied(t, { path: '/q/items?api_key=' }, 401, 'AUTH_003', 'query: empty');
  const r = await request(h, fx, { path: `/q/items?api_key=${KEY}` });
  t.equal(r.status, 200, 'the exact key still passes');
});

t.test('API key in the query string is removed from the URL the upstream gets; forward: true keeps the header', async (t) => {
  const r = await request(h, fx, { path: `/q/items?page=2&api_key=${KEY}&sort=asc` });
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.url, '/q/items?page=2&sort=asc');
  await request(h, fx, { path: '/fwd/x', headers: { 'x-api-key': KEY } });
  t.equal(h.seen.at(-1)!.headers['x-api-key'], KEY);
});

t.test('SPV Wallet admin xpub in x-auth-xpub (or X_AUTH_XPUB)', async (t) => {
  let r = await request(h, fx, { path: '/v1/destination/count', headers: { 'x-auth-xpub': XPUB } });
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'spv-admin');
  t.notOk(h.seen.at(-1)!.headers['x-auth-xpub']);
  r = await request(h, fx, { path: '/v1/destination/count', headers: { 'X_AUTH_XPUB': XPUB } });
  t.equal(r.status, 200, 'underscore spelling');
  t.notOk(Object.keys(h.seen.at(-1)!.headers).some((k) => k.replace(/_/g, '-') === 'x-auth-xpub'), 'no spelling is forwarded');
  await denied(t, { path: '/v1/destination/count', headers: { 'x-auth-xpub': XPUB, 'x_auth_xpub': 'xpub-other' } }, 401, 'AUTH_003', 'two spellings at once');
  await denied(t, { path: '/v1/destination/count', headers: { 'x-auth-xpub': 'xpub_not_registered' } }, 401, 'AUTH_004', 'unregistered xpub');
});

// The client of shared/seeds/004, at this suite's clock, with every signature kept to check the logs.
function seedSign(method: string, path: string, body: Record<string, unknown> | undefined, o: { ts?: number; nonce?: string; secret?: string; key?: string } = {}) {
  const s = seed004(o.secret ?? HMAC_SECRET, method, path, body, { ts: o.ts ?? clock, nonce: o.nonce, key: o.key });
  sentSignatures.push(s.signature);
  return s;
}

t.test('HMAC simple scheme: valid, replay, skew, tampering, missing headers, unknown and revoked key ids', async (t) => {
  const body = { amount: 10, currency: 'EUR' };
  const s = seedSign('POST', '/signed/orders', body);
  let r = await request(h, fx, { method: 'POST', path: '/signed/orders', headers: s.headers, body: s.payload });
  t.equal(r.status, 200);
  const up = h.seen.at(-1)!;
  t.equal(up.body, s.payload, 'body forwarded byte-for-byte');
  t.same([up.headers['x-auth-user-id'], up.headers['x-auth-key-id'], up.headers['x-auth-method']], ['partner-a', 'partner-a', 'hmac']);
  t.notOk(up.headers['x-signature'], 'signature not forwarded');
  await denied(t, { method: 'POST', path: '/signed/orders', headers: s.headers, body: s.payload }, 401, 'AUTH_009', 'replay of the same request');
  const old = seedSign('POST', '/signed/orders', body, { ts: clock - 301_000 });
  await denied(t, { method: 'POST', path: '/signed/orders', headers: old.headers, body: old.payload }, 401, 'AUTH_009', 'timestamp outside the window');
  const future = seedSign('POST', '/signed/orders', body, { ts: clock + 301_000 });
  await denied(t, { method: 'POST', path: '/signed/orders', headers: future.headers, body: future.payload }, 401, 'AUTH_009', 'timestamp in the future');
  const s2 = seedSign('POST', '/signed/orders', body);
  await denied(t, { method: 'POST', path: '/signed/orders', headers: s2.headers, body: s2.payload.replace('10', '99') }, 401, 'AUTH_001', 'tampered body');
  await denied(t, { method: 'POST', path: '/signed/refunds', headers: s2.headers, body: s2.payload }, 401, 'AUTH_001', 'tampered path');
  await denied(t, { method: 'PUT', path: '/signed/orders', headers: s2.headers, body: s2.payload }, 401, 'AUTH_001', 'tampered method');
  const { 'X-Nonce': _n, ...noNonce } = s2.headers;
  await denied(t, { method: 'POST', path: '/signed/orders', headers: noNonce, body: s2.payload }, 401, 'AUTH_003', 'missing nonce');
  const { 'X-Signature': _s, ...noSig } = s2.headers;
  await denied(t, { method: 'POST', path: '/signed/orders', headers: noSig, body: s2.payload }, 401, 'AUTH_003', 'missing signature');
  const unknown = seedSign('POST', '/signed/orders', body, { key: 'partner-z' });
  await denied(t, { method: 'POST', path: '/signed/orders', headers: unknown.headers, body: unknown.payload }, 401, 'AUTH_004', 'unknown key id');
  const revoked = seedSign('POST', '/signed/orders', body, { key: 'partner-old' });
  await denied(t, { method: 'POST', path: '/signed/orders', headers: revoked.headers, body: revoked.payload }, 401, 'AUTH_004', 'revoked key id');
  const wrong = seedSign('POST', '/signed/orders', body, { secret: 'not-the-secret-0123456789abcdef' });
  await denied(t, { method: 'POST', path: '/signed/orders', headers: wrong.headers, body: wrong.payload }, 401, 'AUTH_001', 'wrong secret');
  const big = seedSign('POST', '/signed/orders', { blob: 'x'.repeat(5000) });
  await denied(t, { method: 'POST', path: '/signed/orders', headers: big.headers, body: big.payload }, 413, 'BODY_TOO_LARGE', 'body over maxBodyBytes');
  const get = seedSign('GET', '/signed/orders', undefined);
  r = await request(h, fx, { path: '/signed/orders', headers: get.headers });
  t.equal(r.status, 200, 'GET without a body');
  const metrics = await fetch(`http://127.0.0.1:${h.adminPort}/metrics`).then((x) => x.text());
  t.match(metrics, /portcullis_replays_rejected_total 3/);
});

// RFC 9110 §10.1.1, attack catalogue SMUG-10: a client that holds its body back until the
// server answers `100 Continue` is told to send it only once the head is admitted, or, on a
// route that verifies the body, once the body is wanted. A refusal comes instead of the 100,
// and the connection closes, since the client may or may not send the body it held back.
t.test('Expect: 100-continue: the head is judged before the client is asked for its body', async (t) => {
  const head = (path: string, headers: Record<string, string>, length: number, close = true) =>
    `POST ${path} HTTP/1.1\r\nHost: a.test\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}Content-Length: ${length}\r\nExpect: 100-continue\r\n${close ? 'Connection: close\r\n' : ''}\r\n`;
  const finalOf = (out: string) => out.replace(/^HTTP\/1\.1 100 Continue\r\n\r\n/, '');
  const codeOf = (out: string) => JSON.parse(out.slice(out.indexOf('\r\n\r\n') + 4)).error.code;
  const payload = 'held-back body '.repeat(20);

  let before = h.seen.length;
  let r = await continueRequest(h, fx, head('/api/items', { 'X-API-Key': 'kapi_prod_unknownunknownunknownunknown0' }, payload.length, false), payload);
  t.match(r.out, /^HTTP\/1\.1 401 /, 'an unknown key: 401 with no 100 before it');
  t.equal(codeOf(r.out), 'AUTH_004');
  t.match(r.out, /\r\nconnection: close\r\n/i, 'the refusal says the connection closes');
  t.same([r.bodySent, r.serverClosed], [false, true], 'the body was never asked for; the server closed the connection');
  t.equal(h.seen.length, before, 'nothing reached the upstream');

  r = await continueRequest(h, fx, head('/api/items', { 'X-API-Key': KEY, 'Content-Type': 'text/plain' }, payload.length), payload);
  t.ok(r.bodySent, 'a valid key: 100 Continue, then the body');
  t.match(finalOf(r.out), /^HTTP\/1\.1 200 /);
  let up = h.seen.at(-1)!;
  t.same([up.url, up.body, up.headers['x-auth-user-id']], ['/api/items', payload, 'svc-main'], 'the body arrived whole, with the identity');
  t.notOk(up.headers.expect, 'the expectation is the proxy\'s to answer, not forwarded');

  const s = seedSign('POST', '/signed/orders', { amount: 12, note: payload });
  r = await continueRequest(h, fx, head('/signed/orders', s.headers, Buffer.byteLength(s.payload)), s.payload);
  t.ok(r.bodySent, 'a signed route wants the body it verifies: 100 Continue');
  t.match(finalOf(r.out), /^HTTP\/1\.1 200 /, 'then the signature verifies');
  up = h.seen.at(-1)!;
  t.same([up.body, up.headers['x-auth-user-id']], [s.payload, 'partner-a']);

  const bad = seedSign('POST', '/signed/orders', { amount: 13 }, { secret: 'not-the-secret-0123456789abcdef' });
  before = h.seen.length;
  r = await continueRequest(h, fx, head('/signed/orders', bad.headers, Buffer.byteLength(bad.payload)), bad.payload);
  t.ok(r.bodySent);
  t.match(finalOf(r.out), /^HTTP\/1\.1 401 /, 'a wrong signature: 401 once the body is read');
  t.equal(codeOf(finalOf(r.out)), 'AUTH_001');
  t.equal(h.seen.length, before, 'nothing reached the upstream');

  const big = seedSign('POST', '/signed/orders', { blob: 'x'.repeat(5000) });
  r = await continueRequest(h, fx, head('/signed/orders', big.headers, Buffer.byteLength(big.payload), false), big.payload);
  t.match(r.out, /^HTTP\/1\.1 413 /, 'a declared body over maxBodyBytes: 413 with no 100');
  t.equal(codeOf(r.out), 'BODY_TOO_LARGE');
  t.same([r.bodySent, r.serverClosed], [false, true]);
  t.equal(h.seen.length, before, 'nothing reached the upstream');
});

function vectorRequest(c: { signature_input: string; signature: string }, path = '/foo?param=Value&Pet=dog') {
  return {
    method: 'POST', path, servername: false as const, host: 'example.com',
    headers: {
      date: 'Tue, 20 Apr 2021 02:07:55 GMT', 'content-type': 'application/json',
      'content-digest': 'sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:',
      'signature-input': c.signature_input, signature: c.signature,
    },
    body: '{"hello": "world"}',
  };
}

t.test('RFC 9421 Appendix B request signatures verify through the proxy (clock pinned to the RFC)', async (t) => {
  clock = 1618884473_000 + 10_000;
  t.teardown(() => { clock = Date.now(); });
  for (const [name, subject] of [['sig-b22', 'rsa-pss-client'], ['sig-b23', 'rsa-pss-client'], ['sig-b25', 'hmac-client'], ['sig-b26', 'ed-client']] as const) {
    const r = await request(h, fx, vectorRequest(vectors.cases[name]));
    t.equal(r.status, 200, name);
    t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], subject, `${name}: identity`);
    t.notOk(h.seen.at(-1)!.headers['signature'], `${name}: signature not forwarded`);
  }
  // B.2.1 covers no components: cryptographically valid, refused where a policy requires coverage.
  await denied(t, { ...vectorRequest(vectors.cases['sig-b21']), path: '/strict/x' }, 401, 'AUTH_003', 'sig-b21 under requiredComponents');
  const b26 = vectors.cases['sig-b26'];
  const uncovered = await request(h, fx, vectorRequest(b26, '/foo?param=Value&Pet=cat'));
  t.equal(uncovered.status, 200, 'sig-b26 does not cover the query: changing it is allowed (coverage is the policy\'s job)');
  const b22 = await request(h, fx, vectorRequest(vectors.cases['sig-b22'], '/foo?param=Value&Pet=cat'));
  t.same([b22.status, b22.json?.error?.code], [401, 'AUTH_001'], 'sig-b22 covers @query-param Pet: changing it breaks the signature');
  const tampered = vectorRequest(b26);
  tampered.headers['content-type'] = 'text/plain';
  await denied(t, tampered, 401, 'AUTH_001', 'sig-b26 with a covered header changed');
  const wrongDigest = vectorRequest(vectors.cases['sig-b23']);
  wrongDigest.body = '{"hello": "w0rld"}';
  await denied(t, wrongDigest, 401, 'AUTH_001', 'sig-b23 with a body that does not match Content-Digest');
  clock = 1618884473_000 + 301_000;
  await denied(t, vectorRequest(vectors.cases['sig-b25']), 401, 'AUTH_009', 'created outside the window');
});

t.test('RFC 9421 from an independent client (http-message-signatures), with nonce replay protection', async (t) => {
  const body = JSON.stringify({ order: 7 });
  const headers = await rfc9421Ed25519Post('https://a.test/strict/orders', body);
  const o = { method: 'POST', path: '/strict/orders', headers, body };
  const r = await request(h, fx, o);
  t.equal(r.status, 200, `signed by the library: ${r.body}`);
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'ed-client');
  t.equal(h.seen.at(-1)!.body, body);
  await denied(t, o, 401, 'AUTH_009', 'the same signature (same nonce) again');
  await denied(t, { ...o, body: JSON.stringify({ order: 8 }) }, 401, 'AUTH_001', 'body changed under the same Content-Digest');
});

t.test('nothing secret in the logs', async (t) => {
  const all = JSON.stringify(h.logs);
  for (const s of [KEY, XPUB, HMAC_SECRET, vectors.shared_secret_b64]) t.notOk(all.includes(s), `${s.slice(0, 12)}… not logged`);
  for (const s of sentSignatures) t.notOk(all.includes(s), 'no signature value logged');
  for (const c of (Object.values(vectors.cases) as { signature?: string }[]).filter((c): c is { signature: string } => typeof c.signature === 'string' && c.signature.includes('=:'))) t.notOk(all.includes(c.signature.split('=:')[1]!.slice(0, 40)), 'no RFC 9421 signature logged');
});
