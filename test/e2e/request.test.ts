// Host/SNI rules, path normalisation, identity-header spoofing, IP rules,
// authorisation and report-only mode, all through the real listener.
import t from 'tap';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, rawTls, client, baseConfig, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();
let h: Harness;

t.before(async () => {
  h = await startHarness(fx, baseConfig(`
identity:
  headers: { subject: X-Auth-User-ID }
  claims: { X-Auth-Email: email }
authenticators:
  cert: { type: mtls }
policies:
  - name: public
    match: { paths: [/public/**] }
    authenticate: none
  - name: admin
    match: { hosts: [a.test], paths: ["/admin/**"], methods: [GET, POST] }
    authenticate: cert
    authorize: { subjects: [ops-*] }
  - name: internal-only
    match: { paths: ["/internal/**"] }
    authenticate: none
    allowIps: [10.0.0.0/8, "::1/128"]
  - name: blocked
    match: { paths: ["/blocked/**"] }
    authenticate: none
    denyIps: [127.0.0.0/8]
  - name: shadow
    match: { paths: ["/shadow/**"] }
    authenticate: cert
    mode: report-only
  - name: api
    match: { hosts: [a.test, b.test], paths: ["/api/**"] }
    authenticate: cert
`, '  trustedProxies: [10.0.0.0/8]'));
});
t.teardown(() => h.close());

t.test('nothing matches -> 403 AUTH_011', async (t) => {
  const r = await request(h, fx, { path: '/nowhere', ...client(fx, 'valid') });
  t.same([r.status, r.json.error.code], [403, 'AUTH_011']);
  t.notOk(r.headers['www-authenticate'], '403 carries no challenge');
  t.match(r.json.error.requestId, /^[0-9a-f-]{36}$/);
});

t.test('SNI/Host: a different DNS name is 421; an IP literal Host is fine; port and trailing dot ignored', async (t) => {
  const before = h.seen.length;
  let r = await request(h, fx, { path: '/public/x', servername: 'a.test', host: 'b.test' });
  t.same([r.status, r.json.error.code], [421, 'MISDIRECTED']);
  t.equal(h.seen.length, before);
  r = await request(h, fx, { path: '/public/x', servername: 'a.test', host: '203.0.113.7:8443' });
  t.equal(r.status, 200, 'IP literal Host with the fixed SNI name (000_b41f372df45dbe66 clients)');
  r = await request(h, fx, { path: '/public/x', servername: 'a.test', host: 'A.TEST.:443' });
  t.equal(r.status, 200, 'case, trailing dot and port do not matter');
  r = await request(h, fx, { path: '/public/x', servername: 'a.test', host: 'user@a.test' });
  t.same([r.status, r.json.error.code], [400, 'BAD_REQUEST'], 'userinfo refused');
  const raw = await rawTls(h, fx, 'GET /public/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n');
  t.match(raw, /^HTTP\/1\.1 400/, 'duplicate Host refused');
  const abs = await rawTls(h, fx, 'GET https://b.test/public/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
  t.match(abs, /^HTTP\/1\.1 421/, 'absolute-form authority is the host, and must match SNI');
});

t.test('policies match the SNI name: hosts restrict a policy', async (t) => {
  let r = await request(h, fx, { path: '/admin/users', servername: 'b.test', ...client(fx, 'ops') });
  t.same([r.status, r.json.error.code], [403, 'AUTH_011'], 'admin policy is for a.test only');
  r = await request(h, fx, { path: '/admin/users', servername: 'a.test', ...client(fx, 'ops') });
  t.equal(r.status, 200);
  r = await request(h, fx, { method: 'DELETE', path: '/admin/users', servername: 'a.test', ...client(fx, 'ops') });
  t.same([r.status, r.json.error.code], [403, 'AUTH_011'], 'method not in the policy');
});

t.test('path tricks never reach a protected path without its policy', async (t) => {
  const tricks = ['/public/../admin/users', '/public/%2e%2e/admin/users', '/%61dmin/users', '//admin/users', '/admin/./users', '/public/./../admin/users'];
  for (const p of tricks) {
    const before = h.seen.length;
    const r = await request(h, fx, { path: p, ...client(fx, 'valid') });
    t.same([r.status, r.json?.error?.code], [403, 'AUTH_008'], `${p}: judged as /admin/users (subject not allowed)`);
    t.equal(h.seen.length, before, `${p}: upstream not reached`);
    const ok = await request(h, fx, { path: p, ...client(fx, 'ops') });
    t.equal(ok.status, 200, `${p}: allowed for ops`);
    t.equal(h.seen.at(-1)!.url, '/admin/users', `${p}: the upstream gets the normalised path`);
  }
  for (const p of ['/admin%2Fusers', '/public/..%2fadmin', '/public/%5c..%5cadmin', '/public/%00', '/public/%zz', '/public/a\\..\\admin']) {
    const before = h.seen.length;
    const raw = await rawTls(h, fx, `GET ${p} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`);
    t.match(raw, /^HTTP\/1\.1 400/, `${p}: 400`);
    t.equal(h.seen.length, before, `${p}: upstream not reached`);
  }
  const r = await request(h, fx, { path: '/public/a%20b?x=%2F..&y=1' });
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.url, '/public/a%20b?x=%2F..&y=1', 'query kept as sent, reserved escapes kept');
});

// Catalogue PATH-05: policies match paths case-sensitively (RFC 3986 §6.2.2.1); in front of an
// upstream that folds case, /ADMIN would reach the admin pages under a laxer catch-all.
t.test('match.caseInsensitive: a policy for an upstream that folds case catches /ADMIN too', async (t) => {
  const ci = await startHarness(fx, baseConfig(`
authenticators:
  cert: { type: mtls }
policies:
  - name: admin
    match: { paths: ["/admin/**"], caseInsensitive: true }
    authenticate: cert
  - name: reports
    match: { paths: ["/reports/**"] }
    authenticate: cert
  - name: rest
    match: { paths: ["/**"] }
    authenticate: none
`));
  t.teardown(() => ci.close());
  for (const p of ['/admin/users', '/ADMIN/users', '/Admin/Users', '/%41dmin/users', '/aDmIn']) {
    const before = ci.seen.length;
    const r = await request(ci, fx, { path: p });
    t.same([r.status, r.json?.error?.code], [401, 'AUTH_010'], `${p}: the admin policy, a certificate required`);
    t.equal(ci.seen.length, before, `${p}: upstream not reached`);
    const ok = await request(ci, fx, { path: p, ...client(fx, 'valid') });
    t.equal(ok.status, 200, `${p}: allowed with a certificate`);
    t.equal(ci.seen.at(-1)!.url, p.replace('%41', 'A'), `${p}: forwarded in the case it was sent`);
  }
  const r = await request(ci, fx, { path: '/REPORTS/q1' });
  t.equal(r.status, 200, 'case-sensitive by default: /REPORTS is another path, for the next policy');
  t.equal(ci.logs.findLast((l) => l.msg === 'access')!.policy, 'rest');
});

t.test('spoofed identity headers never reach the upstream, in any spelling', async (t) => {
  const spoof = [
    'X-Auth-User-ID: admin', 'x-auth-user-id: admin2', 'X_Auth_User_ID: admin3', 'X-AUTH-METHOD: jwt',
    'X-Auth-Key-ID: k', 'X-Auth-Scopes: admin', 'X-Auth-Email: a@b', 'X-Forwarded-Client-Cert: Hash=00;Subject="CN=admin"',
    'Client-Cert: :AAAA:', 'X-Forwarded-For: 10.1.1.1', 'X-Forwarded-Host: evil', 'X-Forwarded-Proto: http', 'X-Real-IP: 10.0.0.1',
    'X-Request-ID: attacker-chosen-id',
    // RFC 7239, the other X-Forwarded-* names, and headers some frameworks take as the real path or method.
    'Forwarded: for=10.1.1.1;proto=http;host=evil', 'X-Forwarded-Prefix: /admin', 'X-Forwarded-Port: 80', 'X_Forwarded_Server: evil',
    'X-Original-URL: /admin/delete', 'X-Rewrite-URL: /admin/delete', 'X-HTTP-Method-Override: DELETE', 'X-HTTP-Method: DELETE', 'X-Method-Override: DELETE',
    'X-Kept-Header: yes',
  ];
  const raw = await rawTls(h, fx, `GET /public/spoof HTTP/1.1\r\nHost: a.test\r\n${spoof.join('\r\n')}\r\nConnection: close\r\n\r\n`);
  t.match(raw, /^HTTP\/1\.1 200/);
  const up = h.seen.at(-1)!;
  t.equal(up.url, '/public/spoof');
  const names = up.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
  for (const n of ['x-auth-user-id', 'x_auth_user_id', 'x-auth-method', 'x-auth-key-id', 'x-auth-scopes', 'x-auth-email', 'x-forwarded-client-cert', 'client-cert', 'x-real-ip',
    'forwarded', 'x-forwarded-prefix', 'x-forwarded-port', 'x_forwarded_server', 'x-original-url', 'x-rewrite-url', 'x-http-method-override', 'x-http-method', 'x-method-override']) {
    t.notOk(names.includes(n), `${n} stripped`);
  }
  t.equal(up.headers['x-kept-header'], 'yes', 'other headers are forwarded');
  t.equal(up.method, 'GET', 'the upstream is told the method the policy judged, and nothing else');
  t.same(names.filter((n) => n.startsWith('x-forwarded-')).sort(), ['x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto'], 'only Portcullis\'s X-Forwarded-* headers');
  t.equal(up.headers['x-forwarded-for'], '127.0.0.1', 'XFF from an untrusted peer replaced');
  t.equal(up.headers['x-forwarded-host'], 'a.test');
  t.equal(up.headers['x-forwarded-proto'], 'https');
  t.not(up.headers['x-request-id'], 'attacker-chosen-id', 'request id from an untrusted peer replaced');

  // With a verified certificate, the identity is ours, not the client's.
  await rawTls(h, fx, `GET /api/x HTTP/1.1\r\nHost: a.test\r\nX-Auth-User-ID: admin\r\nX_Auth_User_Id: admin\r\nConnection: close\r\n\r\n`, client(fx, 'valid'));
  const up2 = h.seen.at(-1)!;
  const ids = up2.rawHeaders.flatMap((n, i) => (i % 2 === 0 && n.toLowerCase().replace(/_/g, '-') === 'x-auth-user-id' ? [up2.rawHeaders[i + 1]] : []));
  t.same(ids, ['client-1'], 'exactly one identity header, set by Portcullis');
});

t.test('Connection-nominated headers cannot remove the identity Portcullis sets', async (t) => {
  await rawTls(h, fx, `GET /api/conn HTTP/1.1\r\nHost: a.test\r\nConnection: close, X-Auth-User-ID, X-Forwarded-Client-Cert, X_Secret_Hop\r\nX-Secret-Hop: 1\r\nX-Kept: yes\r\n\r\n`, client(fx, 'valid'));
  const up = h.seen.at(-1)!;
  t.equal(up.url, '/api/conn');
  t.equal(up.headers['x-secret-hop'], undefined, 'a header the client nominated in Connection (any spelling) is hop-by-hop: not forwarded');
  t.equal(up.headers['x-kept'], 'yes', 'other headers are forwarded');
  t.equal(up.headers['x-auth-user-id'], 'client-1');
  t.ok(up.headers['x-forwarded-client-cert']);
  t.notMatch(String(up.headers.connection ?? ''), /x-auth/i, 'Connection header not forwarded as sent');
});

t.test('IP rules: allowIps and denyIps -> 403 AUTH_005', async (t) => {
  let r = await request(h, fx, { path: '/internal/x' });
  t.same([r.status, r.json.error.code], [403, 'AUTH_005'], '127.0.0.1 is not in allowIps');
  r = await request(h, fx, { path: '/blocked/x' });
  t.same([r.status, r.json.error.code], [403, 'AUTH_005'], '127.0.0.1 is in denyIps');
  r = await request(h, fx, { path: '/internal/x', headers: { 'x-forwarded-for': '10.1.2.3' } });
  t.equal(r.status, 403, 'X-Forwarded-For from an untrusted peer is not believed');
});

t.test('report-only: the denial is logged and counted, the request forwarded without identity', async (t) => {
  const before = h.seen.length;
  const r = await request(h, fx, { path: '/shadow/x' });
  t.equal(r.status, 200);
  t.equal(h.seen.length, before + 1);
  t.notOk(h.seen.at(-1)!.headers['x-auth-user-id']);
  const line = h.logs.find((l) => l.msg === 'would deny (report-only)' && l.policy === 'shadow');
  t.ok(line, 'audit line');
  t.equal(line!.code, 'AUTH_010');
  const metrics = await fetch(`http://127.0.0.1:${h.adminPort}/metrics`).then((x) => x.text());
  t.match(metrics, /portcullis_requests_total\{policy="shadow",outcome="would_deny",code="AUTH_010"\} 1/);
});

t.test('every request has an access line; denials an audit line with the trace', async (t) => {
  await request(h, fx, { path: '/api/z', ...client(fx, 'expired') });
  const id = h.logs.filter((l) => l.msg === 'denied').at(-1)!;
  t.equal(id.code, 'AUTH_002');
  t.same(id.trace.map((x: any) => [x.authenticator, x.verdict, x.code]), [['cert', 'deny', 'AUTH_002']]);
  const access = h.logs.find((l) => l.msg === 'access' && l.requestId === id.requestId);
  t.ok(access);
  t.equal(access!.status, 401);
  t.equal(access!.policy, 'api');
});
