// SPEC §7, the flow of shared/seeds/000: a client logs in at POST /system/login with its
// bootstrap API key for a short-lived token scoped to the bootstrap; then, presenting its
// client certificate (SNI set, no password), for a production token bound to that
// certificate; it calls the API with certificate + token in X-Molly-Wallet-Token, gets
// 403 when the token expires, and refreshes it by logging in with the certificate again.
// Tokens are checked with jose against the JWKS Portcullis serves, as any client would.
import t from 'tap';
import { createHash, createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, client, baseConfig, until, type Harness } from '../helpers/harness.ts';
import { loadConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/errors.ts';

const fx = makeFixture();
const BOOTSTRAP = 'kapi_prod_bootstrapbootstrapbootstrap12';
const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const signingKey = join(fx.dir, 'tokens.key');
// The issuing CA is the test CA that tls.clientAuth trusts (an RSA key).
writeFileSync(join(fx.dir, 'issuing-ca.key'), fx.ca.keyPem);
writeFileSync(signingKey, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));

const tokensYaml = (extra = '') => `
authenticators:
  client-cert: { type: mtls }
  bootstrap-keys:
    type: apiKey
    keys: [ { id: ns-1, hash: "sha256:${sha(BOOTSTRAP)}", subject: namespace-1 } ]
  wallet:
    type: jwt
    from: { header: X-Molly-Wallet-Token }
    issuer: https://api.a.test
    audience: wallet-api
    algorithms: [ES256]
    jwks: { tokens: true }
    certificateBound: true
    clockToleranceSec: 0
  bootstrap-jwt:
    type: jwt
    issuer: https://api.a.test
    audience: wallet-api
    algorithms: [ES256]
    jwks: { tokens: true }
tokens:
  issuer: https://api.a.test
  audience: wallet-api
  signingKey: ${signingKey}
  logins:
    - path: /system/login
      authenticate: client-cert
      ttlSec: 3600
      scopes: [wallet]
    - path: /system/login
      authenticate: bootstrap-keys
      ttlSec: 300
      scopes: [certificate:request]
  certificates:
    path: /system/certificate
    authenticate: bootstrap-jwt
    scopes: [certificate:request]
    ca: {{PKI}}/ca.crt
    key: {{PKI}}/issuing-ca.key
    validityDays: 365
policies:
  - name: wallet
    match: { paths: ["/api/**"] }
    authenticate: { all: [client-cert, wallet] }
    authorize: { scopes: { all: [wallet] } }
    deny: { expiredStatus: 403 }
${extra}`;

let clock = Date.now();
let h: Harness;
t.before(async () => { h = await startHarness(fx, baseConfig(tokensYaml()), { now: () => clock }); });
t.teardown(() => h.close());

const jwks = async (): Promise<JSONWebKeySet> => (await request(h, fx, { path: '/.well-known/jwks.json' })).json;
const verify = async (token: string) => (await jwtVerify(token, createLocalJWKSet(await jwks()), { issuer: 'https://api.a.test', audience: 'wallet-api', currentDate: new Date(clock) })).payload;
const login = (o: { key?: string; cert?: 'valid' | 'ops' | 'untrusted' } = {}) => request(h, fx, {
  method: 'POST', path: '/system/login', body: JSON.stringify({ password: o.key ?? '' }),
  headers: { 'content-type': 'application/json', ...(o.key ? { 'x-api-key': o.key } : {}) },
  ...(o.cert ? client(fx, o.cert) : {}),
});
const code = (r: { status: number; json?: any }) => [r.status, r.json?.error?.code];

t.test('the JWKS: the public key only, with the kid the tokens carry', async (t) => {
  const r = await request(h, fx, { path: '/.well-known/jwks.json' });
  t.equal(r.status, 200);
  t.equal(r.headers['content-type'], 'application/jwk-set+json');
  const k = r.json.keys;
  t.equal(k.length, 1);
  t.match(k[0], { kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
  t.notOk('d' in k[0], 'no private part');
  t.same(code(await request(h, fx, { method: 'POST', path: '/.well-known/jwks.json', body: '{}' })), [405, 'METHOD_NOT_ALLOWED']);
  t.equal(h.seen.length, 0, 'nothing reached the upstream');
});

t.test('phase 1: the bootstrap key buys a 5-minute token scoped to the bootstrap, not bound, useless on the API', async (t) => {
  const r = await login({ key: BOOTSTRAP });
  t.equal(r.status, 200, r.body);
  t.equal(r.headers['cache-control'], 'no-store');
  t.match(r.json, { token_type: 'Bearer', expires_in: 300, scope: 'certificate:request' });
  const token: string = r.json.access_token;
  const p = await verify(token);
  t.match(p, { iss: 'https://api.a.test', aud: 'wallet-api', sub: 'namespace-1', scope: 'certificate:request', client_id: 'ns-1' });
  t.equal(p.exp! - p.iat!, 300);
  t.notOk(p.cnf, 'not bound to any certificate');
  const header = decodeProtectedHeader(token);
  t.match(header, { alg: 'ES256', typ: 'at+jwt', kid: (await jwks()).keys[0]!.kid });
  t.notOk(JSON.stringify(h.logs).includes(BOOTSTRAP), 'the key is never logged');
  t.notOk(JSON.stringify(h.logs).includes(token), 'nor the token');
  t.match(h.logs.findLast((l) => l.msg === 'token issued'), { subject: 'namespace-1', certificateBound: false, expiresIn: 300, login: 'login /system/login #1' });

  const api = await request(h, fx, { path: '/api/balance', headers: { 'x-molly-wallet-token': token }, ...client(fx, 'valid') });
  t.same(code(api), [401, 'AUTH_001'], 'a bootstrap token is not certificate-bound: refused on the API');
  t.equal(h.seen.length, 0);
});

t.test('phase 2: the client certificate buys a production token bound to it; certificate + token reach the API', async (t) => {
  const r = await login({ cert: 'valid' });
  t.equal(r.status, 200, r.body);
  t.match(r.json, { token_type: 'Bearer', expires_in: 3600, scope: 'wallet' });
  const token: string = r.json.access_token;
  const p = await verify(token);
  const thumb = createHash('sha256').update(new X509Certificate(fx.clients.valid.certPem).raw).digest('base64url');
  t.match(p, { sub: 'client-1', scope: 'wallet', cnf: { 'x5t#S256': thumb } }, 'bound to the certificate (RFC 8705)');

  const ok = await request(h, fx, { path: '/api/balance', headers: { 'x-molly-wallet-token': token }, ...client(fx, 'valid') });
  t.equal(ok.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'client-1');
  t.equal(h.seen.at(-1)!.headers['x-molly-wallet-token'], undefined, 'the token is not forwarded');

  t.same(code(await request(h, fx, { path: '/api/balance', headers: { 'x-molly-wallet-token': token }, ...client(fx, 'ops') })), [401, 'AUTH_001'], 'with another client certificate: refused');
  t.same(code(await request(h, fx, { path: '/api/balance', headers: { 'x-molly-wallet-token': token } })), [401, 'AUTH_010'], 'without one: refused');
  const forged = token.slice(0, token.lastIndexOf('.') + 1) + 'A'.repeat(86);
  t.same(code(await request(h, fx, { path: '/api/balance', headers: { 'x-molly-wallet-token': forged }, ...client(fx, 'valid') })), [401, 'AUTH_001'], 'a forged signature: refused');

  // Expired: 403, as the seed's clients expect; they log in with the certificate again.
  clock += 3601_000;
  t.same(code(await request(h, fx, { path: '/api/balance', headers: { 'x-molly-wallet-token': token }, ...client(fx, 'valid') })), [403, 'AUTH_002'], 'an expired token: 403');
  const again = await login({ cert: 'valid' });
  t.equal(again.status, 200);
  t.equal((await request(h, fx, { path: '/api/balance', headers: { 'x-molly-wallet-token': again.json.access_token }, ...client(fx, 'valid') })).status, 200, 'the refreshed token works');
});

t.test('failed logins: a wrong key, no credential, an untrusted certificate, a GET', async (t) => {
  t.same(code(await login({ key: 'kapi_prod_wrongwrongwrongwrongwrongwrong' })), [401, 'AUTH_004'], 'a wrong key says so (not that no certificate came)');
  t.same(code(await login()), [401, 'AUTH_010'], 'nothing presented: the first entry\'s answer');
  t.same(code(await login({ cert: 'untrusted' })), [401, 'AUTH_001'], 'a certificate from another CA: untrusted');
  const r = await request(h, fx, { path: '/system/login' });
  t.same(code(r), [405, 'METHOD_NOT_ALLOWED']);
  t.equal(r.headers.allow, 'POST');
  t.equal(h.seen.filter((s) => s.url.startsWith('/system')).length, 0, 'no login ever reaches the upstream');
  t.match(h.logs.findLast((l) => l.msg === 'denied' && l.code === 'AUTH_004'), { policy: 'login /system/login #1' }, 'audited like any denial');
});

t.test('config: what a tokens section must hold', async (t) => {
  const dir = fx.dir;
  const errorsOf = (yaml: string) => {
    const f = join(dir, `tokens-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(f, yaml.replaceAll('{{PKI}}', dir).replaceAll('{{UPSTREAM}}', 'http://127.0.0.1:1'));
    try { loadConfig(f); return ''; } catch (e) { return e instanceof ConfigError ? e.message : String(e); }
  };
  const rsa = join(dir, 'rsa.key');
  writeFileSync(rsa, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  t.match(errorsOf(baseConfig(tokensYaml()).replace(signingKey, rsa)), /tokens\.signingKey: .*rsa\.key is a rsa key: use EC P-256 \(ES256\) or Ed25519 \(EdDSA\)/);
  t.match(errorsOf(baseConfig(tokensYaml()).replace(signingKey, join(dir, 'ca.crt'))), /tokens\.signingKey: .*not a PEM private key/);
  t.match(errorsOf(baseConfig(tokensYaml()).replace('      authenticate: client-cert\n      ttlSec: 3600', '      authenticate: none\n      ttlSec: 3600')), /tokens\.logins\[0\]\.authenticate: must authenticate the caller/);
  t.match(errorsOf(baseConfig(tokensYaml()).replace(/tokens:\n(?:  .*\n|    .*\n|      .*\n)*/, '')), /authenticators\.wallet\.jwks\.tokens: needs the top-level tokens section/);
  t.match(errorsOf(baseConfig(tokensYaml()).replace('ca: {{PKI}}/ca.crt\n    key', 'ca: {{PKI}}/forged-ca.crt\n    key')), /tokens\.certificates\.ca: .*forged-ca\.crt is not in tls\.clientAuth\.ca/);
  t.match(errorsOf(baseConfig(tokensYaml()).replace('key: {{PKI}}/issuing-ca.key', 'key: {{PKI}}/client-valid.key')), /tokens\.certificates\.key: .*client-valid\.key does not match the certificate/);
  const ed = join(dir, 'ed.key');
  writeFileSync(ed, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
  t.equal(errorsOf(baseConfig(tokensYaml()).replace(signingKey, ed).replace('algorithms: [ES256]', 'algorithms: [EdDSA]')), '', 'an Ed25519 key loads');
});

t.test('lockout covers the login: guessing bootstrap keys locks the client IP out of it', async (t) => {
  const locked = await startHarness(fx, baseConfig(tokensYaml('lockout: { failures: 2, lockSec: 60 }')));
  t.teardown(() => locked.close());
  const post = (key: string) => request(locked, fx, { method: 'POST', path: '/system/login', headers: { 'x-api-key': key } });
  for (const k of ['kapi_prod_guess1guess1guess1guess1guess1', 'kapi_prod_guess2guess2guess2guess2guess2']) t.same(code(await post(k)), [401, 'AUTH_004']);
  const r = await post(BOOTSTRAP);
  t.same(code(r), [429, 'AUTH_007'], 'the right key is refused while the lock holds');
  t.equal(r.headers['retry-after'], '60');
});

t.test('a new signing key, by reload: tokens signed with the old one are refused, new logins work', async (t) => {
  const keyFile = join(fx.dir, 'rotating.key');
  writeFileSync(keyFile, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const r = await startHarness(fx, baseConfig(tokensYaml().replace(signingKey, keyFile)));
  t.teardown(() => r.close());
  const post = () => request(r, fx, { method: 'POST', path: '/system/login', ...client(fx, 'valid') });
  const call = (token: string) => request(r, fx, { path: '/api/x', headers: { 'x-molly-wallet-token': token }, ...client(fx, 'valid') });
  const old: string = (await post()).json.access_token;
  t.equal((await call(old)).status, 200);
  const kid = (await request(r, fx, { path: '/.well-known/jwks.json' })).json.keys[0].kid;
  const reloads = r.logs.filter((l) => l.msg === 'config reloaded').length;
  writeFileSync(keyFile, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  await until('reload', () => r.logs.filter((l) => l.msg === 'config reloaded').length > reloads);
  t.not((await request(r, fx, { path: '/.well-known/jwks.json' })).json.keys[0].kid, kid, 'the JWKS names the new key');
  t.same(code(await call(old)), [401, 'AUTH_001'], 'a token signed with the old key: refused');
  t.equal((await call((await post()).json.access_token)).status, 200, 'a new login works');
});

t.test('phase 1b: a bootstrap token buys a client certificate (CA, certificate, private key), which then logs in', async (t) => {
  const bootstrap: string = (await login({ key: BOOTSTRAP })).json.access_token;
  const r = await request(h, fx, { method: 'POST', path: '/system/certificate', headers: { authorization: `Bearer ${bootstrap}` } });
  t.equal(r.status, 200, r.body.slice(0, 200));
  t.equal(r.headers['cache-control'], 'no-store');
  const cert = new X509Certificate(r.json.certificate);
  const ca = new X509Certificate(fx.ca.certPem);
  t.equal(cert.subject, 'CN=namespace-1', 'named after the token\'s subject');
  t.ok(cert.checkIssued(ca) && cert.verify(ca.publicKey), 'issued and signed by the trusted client CA');
  t.notOk(cert.ca, 'not a CA');
  t.same(cert.keyUsage, ['1.3.6.1.5.5.7.3.2'], 'for client authentication only');
  const days = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 86_400_000;
  t.ok(days > 364 && days < 366, `valid for a year (${days.toFixed(2)} days)`);
  t.equal(r.json.caCertificate.trim(), fx.ca.certPem.trim(), 'the CA to trust comes with it');
  t.ok(cert.checkPrivateKey(createPrivateKey(r.json.privateKey)), 'the private key made for it, returned once');
  t.notOk(JSON.stringify(h.logs).includes(r.json.privateKey.split('\n')[1]), 'and never logged');
  t.match(h.logs.findLast((l) => l.msg === 'certificate issued'), { subject: 'namespace-1', keyMadeHere: true });

  // The seed's next step: certificate login, then the API with certificate + token.
  const mine = { cert: r.json.certificate, key: r.json.privateKey };
  const prod = await request(h, fx, { method: 'POST', path: '/system/login', ...mine });
  t.equal(prod.status, 200, 'the new certificate logs in');
  const api = await request(h, fx, { path: '/api/balance', headers: { 'x-molly-wallet-token': prod.json.access_token }, ...mine });
  t.equal(api.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'namespace-1');
});

t.test('a certificate from the caller\'s own CSR (openssl req): its key, but the token\'s subject', async (t) => {
  const bootstrap: string = (await login({ key: BOOTSTRAP })).json.access_token;
  const key = join(fx.dir, 'csr.key'), csr = join(fx.dir, 'csr.pem');
  const made = spawnSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', '/CN=someone-else/O=Evil'], { encoding: 'utf8' });
  t.equal(made.status, 0, made.stderr);
  const r = await request(h, fx, { method: 'POST', path: '/system/certificate', headers: { authorization: `Bearer ${bootstrap}`, 'content-type': 'application/pkcs10' }, body: readFileSync(csr, 'utf8') });
  t.equal(r.status, 200, r.body.slice(0, 200));
  const cert = new X509Certificate(r.json.certificate);
  t.equal(cert.subject, 'CN=namespace-1', 'the subject the CSR asked for is ignored');
  t.ok(cert.checkPrivateKey(createPrivateKey(readFileSync(key))), 'for the CSR\'s key');
  t.notOk('privateKey' in r.json, 'no private key when the caller brought its own');

  const tampered = readFileSync(csr, 'utf8').replace(/([A-Za-z0-9+/])(={0,2}\n-----END)/, (_, c: string, end: string) => (c === 'A' ? 'B' : 'A') + end);
  t.same(code(await request(h, fx, { method: 'POST', path: '/system/certificate', headers: { authorization: `Bearer ${bootstrap}` }, body: tampered })), [400, 'BAD_REQUEST'], 'a CSR whose signature does not verify');
  t.same(code(await request(h, fx, { method: 'POST', path: '/system/certificate', headers: { authorization: `Bearer ${bootstrap}` }, body: 'not a CSR' })), [400, 'BAD_REQUEST'], 'a body that is no CSR');
});

t.test('the certificate endpoint refuses: no token, a token without the scope, a GET', async (t) => {
  t.same(code(await request(h, fx, { method: 'POST', path: '/system/certificate' })), [401, 'AUTH_003']);
  const prod: string = (await login({ cert: 'valid' })).json.access_token;
  t.same(code(await request(h, fx, { method: 'POST', path: '/system/certificate', headers: { authorization: `Bearer ${prod}` } })), [403, 'AUTH_008'], 'a production token lacks certificate:request');
  t.same(code(await request(h, fx, { path: '/system/certificate' })), [405, 'METHOD_NOT_ALLOWED']);
  t.equal(h.seen.filter((s) => s.url.startsWith('/system')).length, 0, 'never forwarded');
});

t.test('explain shows which login entry would issue a token, and issues none', async (t) => {
  const f = join(fx.dir, 'explain-tokens.yaml');
  writeFileSync(f, baseConfig(tokensYaml()).replaceAll('{{PKI}}', fx.dir).replaceAll('{{UPSTREAM}}', 'http://127.0.0.1:1').replace('listen: 127.0.0.1:0', 'listen: 127.0.0.1:8443'));
  const bin = new URL('../../bin/portcullis.js', import.meta.url).pathname;
  const r = spawnSync(process.execPath, [bin, 'explain', '--config', f, 'POST', 'https://a.test/system/login', '-H', `X-API-Key: ${BOOTSTRAP}`], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /policy\s+login \/system\/login #1/);
  t.match(r.stdout, /result\s+ALLOW -> answered by Portcullis with a token \(tokens\.logins\), never forwarded/);
  const bad = spawnSync(process.execPath, [bin, 'explain', '--config', f, 'POST', 'https://a.test/system/login', '-H', 'X-API-Key: kapi_prod_wrongwrongwrongwrongwrongwrong'], { encoding: 'utf8' });
  t.match(bad.stdout, /result\s+DENY 401 AUTH_004/);
});
