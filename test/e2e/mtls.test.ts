// Real TLS handshakes with certificates made at test start: SNI selection,
// the client-certificate matrix, allow-lists and per-route certificate policy.
import t from 'tap';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { issue } from '../../src/tls/pki.ts';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, client, baseConfig, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();
let h: Harness;

t.before(async () => {
  h = await startHarness(fx, baseConfig(`
authenticators:
  cert-cn: { type: mtls, identity: cn }
  spiffe:
    type: mtls
    identity: san-uri
    allow: { uri: ["spiffe://example.org/ns/*/sa/*"] }
  payments-only:
    type: mtls
    allow: { ou: [payments] }
  by-fp: { type: mtls, identity: fingerprint, allow: { fingerprints: ["${fx.clients.ops.cert ? new X509Certificate(fx.clients.ops.certPem).fingerprint256 : ''}"] } }
  by-dns: { type: mtls, identity: san-dns }
  by-email: { type: mtls, identity: san-email }
policies:
  - name: bootstrap
    match: { paths: [/system/login] }
    authenticate: none
  - name: spiffe
    match: { paths: ["/spiffe/**"] }
    authenticate: spiffe
  - name: payments
    match: { paths: ["/payments/**"] }
    authenticate: payments-only
  - name: fp
    match: { paths: ["/fp/**"] }
    authenticate: by-fp
  - name: dns
    match: { paths: ["/dns"] }
    authenticate: by-dns
  - name: email
    match: { paths: ["/email"] }
    authenticate: by-email
  - name: api
    match: { paths: ["/**"] }
    authenticate: cert-cn
`));
});
t.teardown(() => h.close());

function serverCertOf(servername: string | undefined): Promise<string | Error> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: h.port, servername, ca: fx.ca.certPem, checkServerIdentity: () => undefined }, () => {
      resolve(s.getPeerX509Certificate()!.subject);
      s.end();
    });
    s.on('error', (e) => resolve(e));
  });
}

t.test('SNI picks the certificate for each configured name', async (t) => {
  t.match(await serverCertOf('a.test'), /CN=a\.test/);
  t.match(await serverCertOf('api.a.test'), /CN=a\.test/);
  t.match(await serverCertOf('b.test'), /CN=b\.test/);
  t.match(await serverCertOf('B.TEST'), /CN=b\.test/, 'case-insensitive');
  t.match(await serverCertOf('x.wild.test'), /CN=\*\.wild\.test/, 'wildcard');
  t.type(await serverCertOf('a.b.wild.test'), Error, 'wildcard covers one label only');
  t.type(await serverCertOf('unknown.test'), Error, 'unknownSni: reject refuses the handshake');
  t.match(await serverCertOf(undefined), /CN=a\.test/, 'no SNI (IP clients): first certificate');
});

t.test('a verified client certificate reaches the upstream as identity and XFCC', async (t) => {
  const r = await request(h, fx, { path: '/orders/1', ...client(fx, 'valid') });
  t.equal(r.status, 200);
  const up = h.seen.at(-1)!;
  t.equal(up.url, '/orders/1');
  t.equal(up.headers['x-auth-user-id'], 'client-1');
  t.equal(up.headers['x-auth-method'], 'mtls');
  const fp = new X509Certificate(fx.clients.valid.certPem).fingerprint256.replace(/:/g, '').toLowerCase();
  t.equal(up.headers['x-forwarded-client-cert'], `Hash=${fp};Subject="CN=client-1,OU=payments";DNS=client-1.svc`);
  t.equal(up.headers['x-forwarded-proto'], 'https');
  t.equal(up.headers['x-forwarded-for'], '127.0.0.1');
  t.match(up.headers['x-request-id'], /^[0-9a-f-]{36}$/);
  t.equal(r.headers['x-request-id'], up.headers['x-request-id'], 'the client sees the same request id');
});

// shared/seeds/002 (Caf): its clients send certificate.crt + private.key with curl, or a
// PKCS#12 bundle made with `openssl pkcs12 -export`, and POST JSON bodies over mTLS.
t.test('seed 002\'s clients: curl with the .crt and .key, and with the PKCS#12 bundle; a POST body arrives whole', async (t) => {
  const { spawn, spawnSync } = await import('node:child_process');
  const p12 = fx.path('client-valid.p12');
  const made = spawnSync('openssl', ['pkcs12', '-export', '-out', p12, '-inkey', fx.path('client-valid.key'), '-in', fx.path('client-valid.crt'), '-passout', 'pass:caf-test'], { encoding: 'utf8' });
  t.equal(made.status, 0, `openssl pkcs12 -export ${made.stderr}`);
  // Asynchronous: the upstream runs in this process and must keep answering.
  const curl = (args: string[]) => new Promise<{ status: number; body: string }>((resolve) => {
    const c = spawn('curl', ['-s', '-m', '20', '-w', '\n%{http_code}', '--cacert', fx.path('ca.crt'), '--resolve', `a.test:${h.port}:127.0.0.1`, ...args]);
    let o = '';
    c.stdout.on('data', (d) => { o += d; });
    c.once('close', () => { const i = o.lastIndexOf('\n'); resolve({ status: Number(o.slice(i + 1)), body: o.slice(0, i) }); });
  });
  const url = `https://a.test:${h.port}/v1/transactions`;
  let r = await curl(['--cert', fx.path('client-valid.crt'), '--key', fx.path('client-valid.key'), url]);
  t.same([r.status, h.seen.at(-1)!.headers['x-auth-user-id']], [200, 'client-1'], 'curl --cert certificate.crt --key private.key');
  r = await curl(['--cert', `${p12}:caf-test`, '--cert-type', 'P12', '-X', 'POST', '-H', 'Content-Type: application/json', '-d', '{"key1": "value1", "key2": "value2"}', url]);
  t.same([r.status, h.seen.at(-1)!.method, h.seen.at(-1)!.body, h.seen.at(-1)!.headers['x-auth-user-id']], [200, 'POST', '{"key1": "value1", "key2": "value2"}', 'client-1'], 'curl --cert certificate.p12 --cert-type P12 -d ...');
  r = await curl([url]);
  t.same([r.status, JSON.parse(r.body).error.code], [401, 'AUTH_010'], 'no certificate: 401 AUTH_010');
});

t.test('client certificate matrix: each refusal has its exact status and code, and nothing reaches the upstream', async (t) => {
  const cases: [string, Parameters<typeof client>[1] | undefined, number, string][] = [
    ['no certificate', undefined, 401, 'AUTH_010'],
    ['expired', 'expired', 401, 'AUTH_002'],
    ['not yet valid', 'notYetValid', 401, 'AUTH_001'],
    ['untrusted CA with the same DN', 'untrusted', 401, 'AUTH_001'],
    ['revoked by CRL', 'revoked', 401, 'AUTH_010'],
    ['serverAuth-only EKU', 'serverOnly', 401, 'AUTH_001'],
  ];
  for (const [name, c, status, code] of cases) {
    const before = h.seen.length;
    const r = await request(h, fx, { path: '/orders/1', ...(c ? client(fx, c) : {}) });
    t.equal(r.status, status, `${name}: status`);
    t.equal(r.json?.error?.code, code, `${name}: code`);
    t.match(r.headers['www-authenticate'], /realm="api"/, `${name}: WWW-Authenticate`);
    t.equal(r.headers['content-type'], 'application/json');
    t.equal(h.seen.length, before, `${name}: upstream not reached`);
  }
  const denial = h.logs.find((l) => l.msg === 'denied' && l.code === 'AUTH_010' && /revoked/.test(l.reason));
  t.ok(denial, 'the audit log says why (revoked)');
  t.equal(denial!.trace[0].authenticator, 'cert-cn');
});

// Catalogue TLS-07: chains through an intermediate, checked by OpenSSL against the roots in
// tls.clientAuth.ca only; what the client sends is never a trust anchor.
t.test('intermediate chains: a leaf with its intermediate passes; a broken chain never does', async (t) => {
  const root = issue({ cn: 'Chain Root', ca: true });
  const inter = issue({ cn: 'Chain Intermediate', ca: true, issuer: root });
  const leaf = issue({ cn: 'chained-client', issuer: inter, eku: ['clientAuth'] });
  const notCa = issue({ cn: 'not-a-ca', issuer: root, eku: ['clientAuth'] });
  const underNotCa = issue({ cn: 'under-a-leaf', issuer: notCa, eku: ['clientAuth'] });
  const shortRoot = issue({ cn: 'Root with pathLen 0', ca: true, pathLen: 0 });
  const tooDeepInter = issue({ cn: 'Intermediate below pathLen 0', ca: true, issuer: shortRoot });
  const tooDeep = issue({ cn: 'too-deep', issuer: tooDeepInter, eku: ['clientAuth'] });
  const rogueRoot = issue({ cn: 'Chain Root', ca: true }); // the trusted root's name, another key
  const rogue = issue({ cn: 'rogue', issuer: rogueRoot, eku: ['clientAuth'] });
  writeFileSync(fx.path('chain-roots.crt'), root.certPem + shortRoot.certPem);
  const ch = await startHarness(fx, baseConfig(`
authenticators:
  cert: { type: mtls, identity: cn }
policies:
  - name: api
    match: { paths: ["/**"] }
    authenticate: cert
`).replace(/  clientAuth:\n.*\n.*\n/, `  clientAuth:\n    ca: ${fx.path('chain-roots.crt')}\n`));
  t.teardown(() => ch.close());
  const as = (c: { certPem: string; keyPem: string }, ...chain: { certPem: string }[]) => ({ cert: c.certPem + chain.map((x) => x.certPem).join(''), key: c.keyPem });
  const ok = await request(ch, fx, { path: '/chained', ...as(leaf, inter) });
  t.equal(ok.status, 200, 'leaf + intermediate, root in the bundle: allowed');
  t.equal(ch.seen.at(-1)!.headers['x-auth-user-id'], 'chained-client');
  for (const [what, c, why] of [
    ['the leaf without its intermediate', as(leaf), /UNABLE_TO_VERIFY_LEAF_SIGNATURE/],
    ['a chain through a certificate that is not a CA', as(underNotCa, notCa), /client certificate (invalid|untrusted)/],
    ['a chain longer than the root\'s pathLen allows', as(tooDeep, tooDeepInter), /PATH_LENGTH_EXCEEDED/],
    ['a chain ending in a root the client brought (same name as the trusted one)', as(rogue, rogueRoot), /CERT_SIGNATURE_FAILURE/],
  ] as const) {
    const before = ch.seen.length;
    const r = await request(ch, fx, { path: '/chained', ...c });
    t.same([r.status, r.json?.error?.code], [401, 'AUTH_001'], `${what}: 401 AUTH_001`);
    t.equal(ch.seen.length, before, `${what}: upstream not reached`);
    t.match(ch.logs.filter((l) => l.msg === 'denied').at(-1)?.trace[0].reason, why, `${what}: the audit line gives OpenSSL's reason`);
  }
});

t.test('a route with authenticate: none works without a certificate on the same host', async (t) => {
  const r = await request(h, fx, { method: 'POST', path: '/system/login', body: '{}' });
  t.equal(r.status, 200);
  t.notOk(h.seen.at(-1)!.headers['x-auth-user-id']);
  const withBad = await request(h, fx, { path: '/system/login', ...client(fx, 'expired') });
  t.equal(withBad.status, 200, 'a bad certificate does not matter where none is required');
  t.notOk(h.seen.at(-1)!.headers['x-forwarded-client-cert'], 'but it is not vouched for either');
});

t.test('allow-lists: SPIFFE URI wildcard, OU, fingerprint', async (t) => {
  let r = await request(h, fx, { path: '/spiffe/x', ...client(fx, 'spiffe') });
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'spiffe://example.org/ns/prod/sa/billing');
  r = await request(h, fx, { path: '/spiffe/x', ...client(fx, 'valid') });
  t.same([r.status, r.json.error.code], [401, 'AUTH_001'], 'no URI SAN: not on the allow-list');
  r = await request(h, fx, { path: '/spiffe/x', ...client(fx, 'twoUris') });
  t.same([r.status, r.json.error.code], [401, 'AUTH_001'], 'two URIs: not on the list (one segment wildcard)');

  r = await request(h, fx, { path: '/payments/1', ...client(fx, 'valid') });
  t.equal(r.status, 200, 'OU payments');
  r = await request(h, fx, { path: '/payments/1', ...client(fx, 'ops') });
  t.same([r.status, r.json.error.code], [401, 'AUTH_001'], 'OU ops refused');

  r = await request(h, fx, { path: '/fp/1', ...client(fx, 'ops') });
  t.equal(r.status, 200, 'pinned fingerprint');
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], new X509Certificate(fx.clients.ops.certPem).fingerprint256.replace(/:/g, '').toLowerCase());
  r = await request(h, fx, { path: '/fp/1', ...client(fx, 'valid') });
  t.same([r.status, r.json.error.code], [401, 'AUTH_001'], 'other fingerprint refused');
});

t.test('identity from DNS and email SANs; a missing field is a denial', async (t) => {
  let r = await request(h, fx, { path: '/dns', ...client(fx, 'valid') });
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'client-1.svc');
  r = await request(h, fx, { path: '/email', ...client(fx, 'valid') });
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'client-1@example.org');
  r = await request(h, fx, { path: '/email', ...client(fx, 'ops') });
  t.same([r.status, r.json.error.code], [401, 'AUTH_001']);
});

t.test('certificate fields cannot forge headers or XFCC elements', async (t) => {
  const r = await request(h, fx, { path: '/spiffe-not/x', ...client(fx, 'evilCn') });
  t.equal(r.status, 200);
  const up = h.seen.at(-1)!;
  t.equal(up.headers['x-auth-user-id'], 'evil%0D%0AX-Auth-User-ID: admin", DNS=x;', 'CR/LF percent-encoded');
  const xfcc = String(up.headers['x-forwarded-client-cert']);
  t.notMatch(xfcc, /[\r\n]/);
  // RFC 4514 escapes inside the DN, then XFCC quoting escapes every backslash and quote.
  t.ok(xfcc.includes(String.raw`;Subject="CN=evil\\0d\\0aX-Auth-User-ID: admin\\\"\\, DNS\\=x\\;";`), 'subject quoted and escaped');
  t.ok(xfcc.endsWith(String.raw`;URI="spiffe://example.org/x,y;z=\"w\""`), 'URI with separators quoted');
  t.equal(up.rawHeaders.filter((n, i) => i % 2 === 0 && n.toLowerCase() === 'x-auth-user-id').length, 1);
});
