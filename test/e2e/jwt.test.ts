// JWT authenticator through the real proxy: tokens minted by an independent
// library (jsonwebtoken) and by jose, the attack battery, key rotation via a
// remote JWKS, certificate-bound tokens (RFC 8705).
import t from 'tap';
import http from 'node:http';
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync, createHash, sign, X509Certificate } from 'node:crypto';
import jsonwebtoken from 'jsonwebtoken';
import { SignJWT, exportJWK, importPKCS8, type JWK } from 'jose';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, client, baseConfig, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();
const SECRET = 'kindly-test-secret-0123456789abcdef-0123';
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsa2 = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const rsaPem = rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
const rsaPubPem = rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string;
const jwk = async (k: typeof rsa.publicKey, kid: string, alg: string): Promise<JWK> => ({ ...(await exportJWK(k)), kid, alg, use: 'sig' });
const now = () => Math.floor(Date.now() / 1000);

let jwks: { keys: JWK[] };
let jwksDown = false;
const jwksServer = http.createServer((_req, res) => {
  if (jwksDown) { res.writeHead(503); res.end(); return; }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(jwks));
});
let h: Harness;

t.before(async () => {
  jwks = { keys: [await jwk(rsa.publicKey, 'k1', 'RS256'), await jwk(ec.publicKey, 'e1', 'ES256')] };
  writeFileSync(join(fx.dir, 'jwks.json'), JSON.stringify(jwks));
  await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', () => r()));
  const jwksPort = (jwksServer.address() as { port: number }).port;
  h = await startHarness(fx, baseConfig(`
identity:
  claims: { X-Auth-Email: email }
authenticators:
  kindly-jwt:
    type: jwt
    issuer: https://api.kindly.com
    audience: kindly-api
    algorithms: [HS256]
    secret: ${SECRET}
  corp-jwt:
    type: jwt
    issuer: https://auth.example.com
    audience: [api, other]
    algorithms: [RS256, ES256]
    jwks: { file: ${fx.dir}/jwks.json }
    clockToleranceSec: 5
  remote-jwt:
    type: jwt
    anyAudience: true
    issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: { url: "http://127.0.0.1:${jwksPort}/jwks.json", cooldownMs: 0, timeoutMs: 1000 }
  wallet:
    type: jwt
    anyAudience: true
    from: { header: X-Molly-Wallet-Token }
    issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: { file: ${fx.dir}/jwks.json }
  session:
    type: jwt
    anyAudience: true
    from: { cookie: session }
    issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: { file: ${fx.dir}/jwks.json }
    scopesClaim: permissions
  bound:
    type: jwt
    anyAudience: true
    issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: { file: ${fx.dir}/jwks.json }
    certificateBound: true
  access-tokens:
    type: jwt
    issuer: https://auth.example.com
    audience: api
    typ: at+jwt
    algorithms: [RS256]
    jwks: { file: ${fx.dir}/jwks.json }
  keys:
    type: apiKey
    keys: [ { id: k1, hash: "sha256:${createHash('sha256').update('kapi_prod_7f3d9a2b5c1e4890abcdef1234567890').digest('hex')}", subject: svc } ]
policies:
  - name: typed
    match: { paths: ["/typed/**"] }
    authenticate: access-tokens
  - name: kindly
    match: { paths: ["/kindly/**"] }
    authenticate: kindly-jwt
  - name: scoped
    match: { paths: ["/scoped/**"] }
    authenticate: corp-jwt
    authorize: { scopes: { all: [orders:read] } }
  - name: remote
    match: { paths: ["/remote/**"] }
    authenticate: remote-jwt
  - name: wallet
    match: { paths: ["/wallet/**"] }
    authenticate: wallet
    deny: { expiredStatus: 403 }
  - name: session
    match: { paths: ["/session/**"] }
    authenticate: session
    authorize: { scopes: { any: [admin, support] } }
  - name: bound
    match: { paths: ["/bound/**"] }
    authenticate: { all: [client-cert, bound] }
  - name: either
    match: { paths: ["/either/**"] }
    authenticate: { any: [keys, corp-jwt] }
  - name: api
    match: { paths: ["/**"] }
    authenticate: corp-jwt
`).replace('authenticators:\n', 'authenticators:\n  client-cert: { type: mtls }\n'));
});
t.teardown(async () => { await h.close(); jwksServer.close(); });

const corp = (claims: Record<string, unknown> = {}, opts: jsonwebtoken.SignOptions = {}) =>
  jsonwebtoken.sign({ sub: 'user-42', scope: 'orders:read orders:write', email: 'u@example.com', ...claims }, rsaPem, { algorithm: 'RS256', keyid: 'k1', issuer: 'https://auth.example.com', audience: 'api', expiresIn: 300, ...opts });
const bearer = (tok: string) => ({ headers: { authorization: `Bearer ${tok}` } });
const get = (path: string, o: Parameters<typeof request>[2] = {}) => request(h, fx, { path, ...o });
const expectDenied = async (t: any, path: string, o: Parameters<typeof request>[2], status: number, code: string, what: string) => {
  const before = h.seen.length;
  const r = await get(path, o);
  t.same([r.status, r.json?.error?.code], [status, code], what);
  t.equal(h.seen.length, before, `${what}: upstream not reached`);
  return r;
};

t.test('a token from jsonwebtoken (RS256, JWKS file) is accepted; identity, scopes and claims forwarded; token removed', async (t) => {
  const r = await get('/orders', bearer(corp()));
  t.equal(r.status, 200);
  const up = h.seen.at(-1)!;
  t.equal(up.headers['x-auth-user-id'], 'user-42');
  t.equal(up.headers['x-auth-method'], 'jwt');
  t.equal(up.headers['x-auth-scopes'], 'orders:read orders:write');
  t.equal(up.headers['x-auth-email'], 'u@example.com');
  t.notOk(up.headers.authorization, 'Authorization is not forwarded by default');
});

// Catalogue JWT-11: with `typ: at+jwt` only RFC 9068 access tokens pass, not an ID token or a
// plain JWT from the same issuer for the same audience.
t.test('typ: at+jwt admits access tokens only', async (t) => {
  const at = corp({}, { header: { alg: 'RS256', kid: 'k1', typ: 'at+jwt' } as jsonwebtoken.JwtHeader });
  let r = await get('/typed/x', bearer(at));
  t.equal(r.status, 200, 'typ at+jwt');
  const appType = corp({}, { header: { alg: 'RS256', kid: 'k1', typ: 'application/at+jwt' } as jsonwebtoken.JwtHeader });
  r = await get('/typed/x', bearer(appType));
  t.equal(r.status, 200, 'typ application/at+jwt (RFC 7515 §4.1.9)');
  await expectDenied(t, '/typed/x', bearer(corp()), 401, 'AUTH_001', 'typ JWT (an ID token, say)');
  await expectDenied(t, '/typed/x', bearer(corp({}, { header: { alg: 'RS256', kid: 'k1', typ: undefined } as jsonwebtoken.JwtHeader })), 401, 'AUTH_001', 'no typ');
  t.equal((await get('/orders', bearer(corp()))).status, 200, 'an authenticator without typ takes either');
});

t.test('ES256 from jose; HS256 from jsonwebtoken (the Kindly API scheme)', async (t) => {
  const es = await new SignJWT({ sub: 'es-user' }).setProtectedHeader({ alg: 'ES256', kid: 'e1' }).setIssuer('https://auth.example.com').setAudience('other').setExpirationTime('5m').sign(ec.privateKey);
  let r = await get('/orders', bearer(es));
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'es-user');
  const hs = jsonwebtoken.sign({ sub: '550e8400-e29b-41d4-a716-446655440000', email: 'user@example.com', jti: 'unique-token-id' }, SECRET, { algorithm: 'HS256', issuer: 'https://api.kindly.com', audience: 'kindly-api', expiresIn: 3600 });
  r = await get('/kindly/api/compression/stats', bearer(hs));
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], '550e8400-e29b-41d4-a716-446655440000');
});

t.test('the JWT attack battery: each refused with its exact code, nothing forwarded', async (t) => {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const payload = { sub: 'admin', iss: 'https://auth.example.com', aud: 'api', exp: now() + 300 };
  for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
    await expectDenied(t, '/orders', bearer(`${b64({ alg, typ: 'JWT' })}.${b64(payload)}.`), 401, 'AUTH_001', `alg ${alg}`);
  }
  const good = corp();
  const [hd, pl] = good.split('.');
  await expectDenied(t, '/orders', bearer(`${hd}.${pl}.`), 401, 'AUTH_001', 'empty signature');
  await expectDenied(t, '/orders', bearer(`${hd}.${pl}.AAAA`), 401, 'AUTH_001', 'truncated signature');
  await expectDenied(t, '/orders', bearer(`${hd}.${b64({ ...payload, sub: 'someone-else' })}.${good.split('.')[2]}`), 401, 'AUTH_001', 'payload swapped');
  // RS256 -> HS256 confusion: the public key used as an HMAC secret.
  const confused = jsonwebtoken.sign(payload, rsaPubPem, { algorithm: 'HS256', keyid: 'k1' } as jsonwebtoken.SignOptions);
  await expectDenied(t, '/orders', bearer(confused), 401, 'AUTH_001', 'RS->HS key confusion');
  // Header injection: keys the attacker controls must never be used or fetched.
  const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const attackerJwk = await exportJWK(attacker.publicKey);
  let evilHits = 0;
  const evil = http.createServer((_q, s) => { evilHits++; s.end(JSON.stringify({ keys: [attackerJwk] })); });
  await new Promise<void>((r) => evil.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => evil.close());
  const evilPort = (evil.address() as { port: number }).port;
  const atkKey = await importPKCS8(attacker.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 'RS256');
  for (const [name, header] of [
    ['embedded jwk', { alg: 'RS256', jwk: attackerJwk }],
    ['jku', { alg: 'RS256', jku: `http://127.0.0.1:${evilPort}/evil.json`, kid: 'k1' }],
    ['x5u', { alg: 'RS256', x5u: `http://127.0.0.1:${evilPort}/evil.pem`, kid: 'k1' }],
    ['kid path traversal', { alg: 'RS256', kid: '../../../../dev/null' }],
    ['kid of another key', { alg: 'RS256', kid: 'k1' }],
  ] as const) {
    const tok = await new SignJWT(payload).setProtectedHeader(header as never).sign(atkKey);
    await expectDenied(t, '/orders', bearer(tok), 401, 'AUTH_001', name);
  }
  t.equal(evilHits, 0, 'no jku/x5u URL was ever fetched');
  await expectDenied(t, '/orders', bearer(corp({}, { expiresIn: -60 })), 401, 'AUTH_002', 'expired');
  await expectDenied(t, '/orders', bearer(corp({ nbf: now() + 600 })), 401, 'AUTH_001', 'nbf in the future');
  await expectDenied(t, '/orders', bearer(corp({}, { issuer: 'https://evil.example.com' })), 401, 'AUTH_001', 'wrong issuer');
  await expectDenied(t, '/orders', bearer(corp({}, { audience: 'not-api' })), 401, 'AUTH_001', 'wrong audience');
  const noExp = jsonwebtoken.sign({ sub: 'x' }, rsaPem, { algorithm: 'RS256', keyid: 'k1', issuer: 'https://auth.example.com', audience: 'api' });
  await expectDenied(t, '/orders', bearer(noExp), 401, 'AUTH_001', 'no exp');
  const critInput = `${b64({ alg: 'RS256', kid: 'k1', crit: ['x-unknown'], 'x-unknown': 1 })}.${b64(payload)}`;
  const crit = `${critInput}.${sign('sha256', Buffer.from(critInput), rsa.privateKey).toString('base64url')}`;
  await expectDenied(t, '/orders', bearer(crit), 401, 'AUTH_001', 'unknown crit');
  // NumericDates no clock can pass (JSON's 1e309 parses as Infinity), a token issued in the
  // future, and a date as a string (catalogue JWT-06); each validly signed by the issuer's key.
  const rawClaims = (claims: string) => {
    const input = `${b64({ alg: 'RS256', kid: 'k1' })}.${Buffer.from(`{"sub":"x","iss":"https://auth.example.com","aud":"api",${claims}}`).toString('base64url')}`;
    return `${input}.${sign('sha256', Buffer.from(input), rsa.privateKey).toString('base64url')}`;
  };
  await expectDenied(t, '/orders', bearer(rawClaims('"exp":1e309')), 401, 'AUTH_001', 'exp 1e309 (a token that would never expire)');
  await expectDenied(t, '/orders', bearer(rawClaims(`"exp":${now() + 300},"nbf":-1e309`)), 401, 'AUTH_001', 'nbf -1e309');
  await expectDenied(t, '/orders', bearer(rawClaims(`"exp":${now() + 300},"iat":${now() + 600}`)), 401, 'AUTH_001', 'iat in the future');
  await expectDenied(t, '/orders', bearer(rawClaims(`"exp":"${now() + 300}"`)), 401, 'AUTH_001', 'exp as a string');
  t.equal((await get('/orders', bearer(rawClaims(`"exp":${now() + 300}.5,"iat":${now() - 10}`)))).status, 200, 'a fractional exp and a past iat are fine (RFC 7519 NumericDate)');
  await expectDenied(t, '/orders', bearer(corp({ pad: 'x'.repeat(10_000) })), 401, 'AUTH_003', 'oversized token');
  await expectDenied(t, '/orders', bearer('not-a-token'), 401, 'AUTH_003', 'malformed');
  await expectDenied(t, '/orders', bearer('e30.e30.e30.e30'), 401, 'AUTH_003', 'four segments');
  // One signature, another spelling: unused bits set in the last character (catalogue JWT-10).
  const [gh, gp, gs] = good.split('.') as [string, string, string];
  const ALPHA = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const respelt = `${gh}.${gp}.${gs.slice(0, -1)}${ALPHA[ALPHA.indexOf(gs.at(-1)!) ^ 1]}`;
  t.equal(Buffer.from(respelt.split('.')[2]!, 'base64url').compare(Buffer.from(gs, 'base64url')), 0, 'the respelt signature decodes to the same bytes');
  await expectDenied(t, '/orders', bearer(respelt), 401, 'AUTH_003', 'non-canonical base64url');
  // Two Authorization headers: Node would keep the first and drop the other unseen.
  await expectDenied(t, '/orders', { headers: { authorization: [`Bearer ${good}`, 'Bearer forged'] } }, 400, 'BAD_REQUEST', 'two Authorization headers, the valid one first');
  await expectDenied(t, '/orders', { headers: { authorization: ['Bearer forged', `Bearer ${good}`] } }, 400, 'BAD_REQUEST', 'two Authorization headers, the valid one last');
  const r = await expectDenied(t, '/orders', {}, 401, 'AUTH_003', 'no token');
  t.equal(r.headers['www-authenticate'], 'Bearer error="invalid_token"', 'RFC 6750 challenge');
  const audit = h.logs.filter((l) => l.msg === 'denied' && l.policy === 'api');
  t.ok(audit.length >= 15, 'each denial has an audit line');
});

t.test('expired -> 403 where the policy says so (the Molly Wallet scheme), from a custom header', async (t) => {
  let r = await get('/wallet/balance', { headers: { 'x-molly-wallet-token': corp() } });
  t.equal(r.status, 200);
  t.notOk(h.seen.at(-1)!.headers['x-molly-wallet-token'], 'the token header is removed');
  await expectDenied(t, '/wallet/balance', { headers: { 'x-molly-wallet-token': corp({}, { expiresIn: -120 }) } }, 403, 'AUTH_002', 'expired wallet token');
});

t.test('cookie tokens and array scopes ("permissions"); authorisation failures are 403 AUTH_008', async (t) => {
  let r = await get('/session/x', { headers: { cookie: `theme=dark; session=${corp({ permissions: ['support'] })}` } });
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-scopes'], 'support');
  await expectDenied(t, '/session/x', { headers: { cookie: `session=${corp({ permissions: ['viewer'] })}` } }, 403, 'AUTH_008', 'no admin/support scope');
  r = await get('/scoped/x', bearer(corp()));
  t.equal(r.status, 200);
  await expectDenied(t, '/scoped/x', bearer(corp({ scope: 'orders:write' })), 403, 'AUTH_008', 'missing orders:read');
});

t.test('certificate-bound tokens (RFC 8705): right certificate, wrong certificate, none', async (t) => {
  const thumb = (pem: string) => createHash('sha256').update(new X509Certificate(pem).raw).digest('base64url');
  const tok = corp({ cnf: { 'x5t#S256': thumb(fx.clients.valid.certPem) } });
  let r = await get('/bound/x', { ...bearer(tok), ...client(fx, 'valid') });
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-method'], 'mtls,jwt');
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'client-1', 'the first authenticator in the policy gives the subject');
  await expectDenied(t, '/bound/x', { ...bearer(tok), ...client(fx, 'ops') }, 401, 'AUTH_001', 'token bound to another certificate');
  await expectDenied(t, '/bound/x', { ...bearer(corp()), ...client(fx, 'valid') }, 401, 'AUTH_001', 'token without cnf');
  r = await get('/bound/x', bearer(tok));
  t.same([r.status, r.json.error.code], [401, 'AUTH_010'], 'no certificate');
});

t.test('any: the most informative failure is reported (a bad token beats a missing API key)', async (t) => {
  await expectDenied(t, '/either/x', bearer(corp({}, { expiresIn: -120 })), 401, 'AUTH_002', 'expired token, no key');
  await expectDenied(t, '/either/x', {}, 401, 'AUTH_003', 'nothing at all');
  const r = await get('/either/x', { headers: { 'x-api-key': 'kapi_prod_7f3d9a2b5c1e4890abcdef1234567890' } });
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-key-id'], 'k1');
});

t.test('remote JWKS: a key rotated in after start is used without a restart; last good keys survive an outage', async (t) => {
  let r = await get('/remote/x', bearer(corp()));
  t.equal(r.status, 200);
  jwks.keys.push(await jwk(rsa2.publicKey, 'k2', 'RS256'));
  const rotated = jsonwebtoken.sign({ sub: 'rotated' }, rsa2.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, { algorithm: 'RS256', keyid: 'k2', issuer: 'https://auth.example.com', expiresIn: 60 });
  r = await get('/remote/x', bearer(rotated));
  t.equal(r.status, 200, 'unknown kid triggers a refetch');
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'rotated');
  jwksDown = true;
  r = await get('/remote/x', bearer(corp({ sub: 'during-outage' })));
  t.equal(r.status, 200, 'cached keys keep serving while the endpoint is down');
  const unknown = jsonwebtoken.sign({ sub: 'x' }, rsaPem, { algorithm: 'RS256', keyid: 'k9', issuer: 'https://auth.example.com', expiresIn: 60 });
  await expectDenied(t, '/remote/x', bearer(unknown), 401, 'AUTH_001', 'unknown kid while the endpoint is down');
  jwksDown = false;
  const metrics = await fetch(`http://127.0.0.1:${h.adminPort}/metrics`).then((x) => x.text());
  t.match(metrics, /portcullis_jwks_refresh_total\{result="success"\} [1-9]/);
  t.match(metrics, /portcullis_jwks_refresh_total\{result="failure"\} [1-9]/);
});

t.test('audience is required unless anyAudience says so', async (t) => {
  const { loadConfig } = await import('../../src/config/load.ts');
  const f = join(fx.dir, 'noaud.yaml');
  writeFileSync(f, readFileSync(h.configFile, 'utf8').replace('    anyAudience: true\n', ''));
  t.throws(() => loadConfig(f), /authenticators\.remote-jwt\.audience: required/);
});

t.test('nothing secret in the logs', async (t) => {
  const tok = corp({ sub: 'log-check' });
  await get('/orders', bearer(tok));
  await get('/orders', bearer(tok.slice(0, -4) + 'AAAA'));
  const all = JSON.stringify(h.logs);
  t.notOk(all.includes(tok.split('.')[2]!), 'no token signature');
  t.notOk(all.includes(tok.split('.')[1]!), 'no token payload');
  t.notOk(all.includes(SECRET), 'no HMAC secret');
  t.notOk(all.includes('kapi_prod_7f3d9a2b5c1e4890abcdef1234567890'), 'no API key');
});
