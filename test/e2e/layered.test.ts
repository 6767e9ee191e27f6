// shared/seeds/003: "a multi security approach" — an access token (JWT) on every request,
// an HMAC over the request with a timestamp and a nonce, and a gateway whitelist of client
// addresses, all three required at once. Here as one policy: `all: [access-token,
// request-hmac]` with `allowIps`, through the real proxy. The client signs as that document
// describes (HMAC-SHA256 over the request data with a shared secret, timestamp and nonce in
// headers) and presents a token minted by jose for the issuer's RS256 key.
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync, createHmac, randomBytes } from 'node:crypto';
import { SignJWT, exportJWK } from 'jose';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, baseConfig, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();
const SECRET = 'seed-003-partner-shared-secret-0123456789';
const issuer = generateKeyPairSync('rsa', { modulusLength: 2048 });
const now = () => Math.floor(Date.now() / 1000);
let h: Harness;

t.before(async () => {
  writeFileSync(join(fx.dir, 'issuer-jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(issuer.publicKey)), kid: 'acc-1', alg: 'RS256', use: 'sig' }] }));
  h = await startHarness(fx, baseConfig(`
authenticators:
  access-token:
    type: jwt
    issuer: https://auth.partner.example
    audience: payments
    algorithms: [RS256]
    jwks: { file: ${fx.dir}/issuer-jwks.json }
  request-hmac:
    type: hmac
    scheme: simple
    clients: [ { id: merchant-7, secret: "${SECRET}", subject: merchant-7, scopes: [payments] } ]
    headers: { keyId: X-Client-Id, timestamp: X-Timestamp, nonce: X-Nonce, signature: X-Signature }
    message: [method, pathAndQuery, timestamp, nonce, body]
    separator: "\\n"
    encoding: base64
    maxSkewSec: 120
policies:
  - name: payments
    match: { paths: ["/v3/**"] }
    authenticate: { all: [access-token, request-hmac] }
    allowIps: [127.0.0.1/32]
  - name: elsewhere-only
    match: { paths: ["/restricted/**"] }
    authenticate: { all: [access-token, request-hmac] }
    allowIps: [10.0.0.0/8]
`));
});
t.teardown(() => h?.close());

const token = (claims: Record<string, unknown> = {}, exp = now() + 300) =>
  new SignJWT({ scope: 'payments', ...claims }).setProtectedHeader({ alg: 'RS256', kid: 'acc-1', typ: 'JWT' })
    .setIssuer('https://auth.partner.example').setAudience('payments').setSubject('user-42').setIssuedAt().setExpirationTime(exp).sign(issuer.privateKey);

/** The partner's client: HMAC-SHA256 over method, path and query, timestamp, nonce and body, one per line. */
function signed(method: string, pathAndQuery: string, body: string, o: { ts?: number; nonce?: string; secret?: string } = {}) {
  const ts = String(o.ts ?? now());
  const nonce = o.nonce ?? randomBytes(12).toString('hex');
  const sig = createHmac('sha256', o.secret ?? SECRET).update([method, pathAndQuery, ts, nonce, body].join('\n')).digest('base64');
  return { 'X-Client-Id': 'merchant-7', 'X-Timestamp': ts, 'X-Nonce': nonce, 'X-Signature': sig, 'Content-Type': 'application/json' };
}

const post = async (path: string, headers: Record<string, string>, body: string) => request(h, fx, { method: 'POST', path, headers, body });

t.test('token, signature and address all good: served, with both identities', async (t) => {
  const body = JSON.stringify({ amount: 1250, currency: 'IDR' });
  const r = await post('/v3/payments?idempotency=abc', { authorization: `Bearer ${await token()}`, ...signed('POST', '/v3/payments?idempotency=abc', body) }, body);
  t.equal(r.status, 200, 'served');
  const up = h.seen.at(-1)!;
  t.equal(up.headers['x-auth-user-id'], 'user-42', 'the subject: the token\'s (first in the policy\'s list)');
  t.equal(up.headers['x-auth-method'], 'jwt,hmac', 'both layers named');
  t.equal(up.headers['x-auth-key-id'], 'merchant-7', 'the signing client');
  t.equal(up.body, body, 'the body arrives as signed');
  for (const gone of ['authorization', 'x-signature', 'x-client-id']) t.notOk(up.headers[gone], `${gone} not forwarded`);
});

t.test('each layer is required: missing or bad in any one is refused with its code, nothing forwarded', async (t) => {
  const body = '{"amount":1}';
  const path = '/v3/payments';
  const seen = h.seen.length;
  const cases: [string, () => Promise<Record<string, string>>, string, number, string][] = [
    ['token only', async () => ({ authorization: `Bearer ${await token()}` }), body, 401, 'AUTH_003'],
    ['signature only', async () => signed('POST', path, body), body, 401, 'AUTH_003'],
    ['expired token, good signature', async () => ({ authorization: `Bearer ${await token({}, now() - 60)}`, ...signed('POST', path, body) }), body, 401, 'AUTH_002'],
    ['token from another key', async () => ({ authorization: `Bearer ${await new SignJWT({}).setProtectedHeader({ alg: 'RS256', kid: 'acc-1' }).setIssuer('https://auth.partner.example').setAudience('payments').setSubject('x').setExpirationTime(now() + 60).sign(generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey)}`, ...signed('POST', path, body) }), body, 401, 'AUTH_001'],
    ['good token, body changed after signing', async () => ({ authorization: `Bearer ${await token()}`, ...signed('POST', path, body) }), '{"amount":9}', 401, 'AUTH_001'],
    ['good token, signed with another secret', async () => ({ authorization: `Bearer ${await token()}`, ...signed('POST', path, body, { secret: 'x'.repeat(40) }) }), body, 401, 'AUTH_001'],
    ['good token, timestamp 10 minutes old', async () => ({ authorization: `Bearer ${await token()}`, ...signed('POST', path, body, { ts: now() - 600 }) }), body, 401, 'AUTH_009'],
    ['good token, signed for another path', async () => ({ authorization: `Bearer ${await token()}`, ...signed('POST', '/v3/refunds', body) }), body, 401, 'AUTH_001'],
  ];
  for (const [what, headers, sent, status, code] of cases) {
    const r = await post(path, await headers(), sent);
    t.same([r.status, r.json?.error?.code], [status, code], what);
  }
  t.equal(h.seen.length, seen, 'nothing reached the upstream');
});

t.test('a replayed request is refused even with a fresh token', async (t) => {
  const body = '{"amount":2}';
  const sig = signed('POST', '/v3/payments', body);
  t.equal((await post('/v3/payments', { authorization: `Bearer ${await token()}`, ...sig }, body)).status, 200);
  const again = await post('/v3/payments', { authorization: `Bearer ${await token({ jti: 'new' })}`, ...sig }, body);
  t.same([again.status, again.json?.error?.code], [401, 'AUTH_009'], 'the nonce was used');
});

t.test('the gateway whitelist: an address outside it is refused first, and uses no nonce', async (t) => {
  const body = '{"amount":3}';
  const sig = signed('POST', '/restricted/x', body);
  const r = await post('/restricted/x', { authorization: `Bearer ${await token()}`, ...sig }, body);
  t.same([r.status, r.json?.error?.code], [403, 'AUTH_005'], '127.0.0.1 is not in 10.0.0.0/8');
  const audit = h.logs.filter((l) => l.msg === 'denied' && l.code === 'AUTH_005').at(-1);
  t.same(audit?.trace ?? [], [], 'refused before any authenticator ran');
  // The same signed request on a route whose whitelist admits this address: its nonce is unused.
  const sig2 = { ...signed('POST', '/v3/payments', body, { nonce: sig['X-Nonce'], ts: Number(sig['X-Timestamp']) }) };
  t.equal((await post('/v3/payments', { authorization: `Bearer ${await token()}`, ...sig2 }, body)).status, 200, 'the nonce was not consumed by the refusal');
});
