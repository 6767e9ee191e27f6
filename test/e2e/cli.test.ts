// The real `portcullis` binary: check, explain, certs dev, serve (with curl as
// the client), the `npm start` demo and its exit codes.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { statSync, writeFileSync, mkdtempSync, readFileSync, cpSync, symlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { makeFixture } from '../helpers/pki.ts';
import { listenUpstream, freePort } from '../helpers/harness.ts';
import { seed004 } from '../helpers/signing.ts';

const BIN = new URL('../../bin/portcullis.js', import.meta.url).pathname;
const run = (args: string[], input?: string) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', input, timeout: 30_000 });

const fx = makeFixture();
const dir = mkdtempSync(join(tmpdir(), 'portcullis-cli-'));

function config(port: number, admin: number, upstream: number): string {
  const f = join(dir, `p${port}.yaml`);
  writeFileSync(f, `server:
  listen: 127.0.0.1:${port}
  timeouts: { shutdownMs: 5000 }
admin:
  listen: 127.0.0.1:${admin}
tls:
  certificates:
    - hosts: [a.test]
      cert: ${fx.dir}/a.crt
      key: ${fx.dir}/a.key
  clientAuth:
    ca: ${fx.dir}/ca.crt
    crl: ${fx.dir}/ca.crl
upstream:
  url: http://127.0.0.1:${upstream}
authenticators:
  cert: { type: mtls }
policies:
  - name: login
    match: { paths: [/system/login] }
    authenticate: none
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: cert
logging: { level: info }
`);
  return f;
}

t.test('check: OK config prints the policy table; a broken one exits 1 with file:line:col', async (t) => {
  const f = config(1, 2, 3);
  let r = run(['check', '--config', f]);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /config .*: OK/);
  t.match(r.stdout, /1\s+api\s+\*\s+\*\s+\/api\/\*\*\s+cert\s+enforce/);
  writeFileSync(f, readFileSync(f, 'utf8').replace('authenticate: cert', 'authenticate: { any: [cert, corp-jwtt] }'));
  r = run(['check', '--config', f]);
  t.equal(r.status, 1);
  t.match(r.stderr, new RegExp(`^${f.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:24:\\d+: policies\\[1\\]\\.authenticate\\.any\\[1\\]: unknown authenticator "corp-jwtt"`, 'm'));
  r = run(['check', '--config', join(dir, 'missing.yaml')]);
  t.equal(r.status, 1);
  t.match(r.stderr, /missing\.yaml: \(root\): cannot read config: ENOENT/);
});

t.test('usage errors exit 2; --help exits 0', async (t) => {
  t.equal(run(['check']).status, 2);
  t.equal(run(['frobnicate']).status, 2);
  t.equal(run(['check', '--config', 'x', '--bogus']).status, 2);
  const h = run(['--help']);
  t.equal(h.status, 0);
  t.match(h.stdout, /portcullis <command>/);
});

t.test('explain: the decision trace and the headers the upstream would get, without a network', async (t) => {
  const f = config(1, 2, 3);
  let r = run(['explain', '--config', f, 'GET', 'https://a.test/api/orders', '--cert', fx.path('client-valid.crt'), '-H', 'X-Auth-User-ID: spoof']);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /policy\s+api \(#1, cert, enforce\)/);
  t.match(r.stdout, /cert\s+mtls\s+ALLOW/);
  t.match(r.stdout, /result\s+ALLOW -> http:\/\/127\.0\.0\.1:3\/api\/orders/);
  t.match(r.stdout, /x-auth-user-id: client-1\n/);
  t.notMatch(r.stdout, /spoof/);
  r = run(['explain', '--config', f, 'GET', 'https://a.test/api/orders', '--cert', fx.path('client-revoked.crt')]);
  t.match(r.stdout, /client-cert=refused: revoked/);
  t.match(r.stdout, /result\s+DENY 401 AUTH_010/);
  r = run(['explain', '--config', f, 'GET', 'https://a.test/api/orders', '--cert', fx.path('client-untrusted.crt')]);
  t.match(r.stdout, /DENY 401 AUTH_001/);
  r = run(['explain', '--config', f, 'GET', 'https://a.test/nothing']);
  t.match(r.stdout, /DENY 403 AUTH_011/);
  r = run(['explain', '--config', f, 'GET', 'https://a.test/public/../api/x', '-H', 'Host: b.test']);
  t.match(r.stdout, /result\s+421 MISDIRECTED/);
  // As the server answers: a method Node's parser does not know, and CONNECT, are 400 before any policy.
  r = run(['explain', '--config', f, 'FOO', 'https://a.test/api/x', '--cert', fx.path('client-valid.crt')]);
  t.match(r.stdout, /result\s+400 BAD_REQUEST: FOO is not an HTTP method/);
  r = run(['explain', '--config', f, 'connect', 'https://a.test/api/x']);
  t.match(r.stdout, /result\s+400 BAD_REQUEST: CONNECT is not served/);
  r = run(['explain', '--config', f, 'propfind', 'https://a.test/api/x', '--cert', fx.path('client-valid.crt')]);
  t.match(r.stdout, /request\s+PROPFIND [^]*result\s+ALLOW/, 'a WebDAV method the parser knows is judged by the policies');
});

t.test('explain -d: a signed request is judged with its body, as the server reads it', async (t) => {
  const secret = 'explain-hmac-secret-0123456789abcdef0123';
  const f = join(dir, 'explain-hmac.yaml');
  writeFileSync(f, readFileSync(config(4, 5, 6), 'utf8').replace('authenticators:\n', `authenticators:\n  sig: { type: hmac, clients: [ { id: partner-a, secret: "${secret}", subject: partner-a } ] }\n`)
    .replace('policies:\n', 'policies:\n  - name: orders\n    match: { paths: ["/orders/**"] }\n    authenticate: sig\n'));
  const body = { item: 'book', qty: 2 };
  const s = seed004(secret, 'POST', '/orders/new', body);
  const hs = Object.entries(s.headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  let r = run(['explain', '--config', f, 'POST', 'https://a.test/orders/new', ...hs, '-d', s.payload]);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /sig\s+hmac\s+ALLOW signed by partner-a/, 'the body that was signed: allowed');
  t.match(r.stdout, /x-auth-user-id: partner-a/);
  writeFileSync(join(dir, 'body.json'), s.payload.replace('2', '3'));
  r = run(['explain', '--config', f, 'POST', 'https://a.test/orders/new', ...hs, '-d', `@${join(dir, 'body.json')}`]);
  t.match(r.stdout, /result\s+DENY 401 AUTH_001: signature does not match/, 'another body (-d @FILE): the denial the server would give');
  r = run(['explain', '--config', f, 'POST', 'https://a.test/orders/new', ...hs]);
  t.match(r.stdout, /DENY 401 AUTH_001/, 'no -d: judged with an empty body');
  r = run(['explain', '--config', f, 'POST', 'https://a.test/orders/new', ...hs, '-d', '@/nonexistent']);
  t.same([r.status, r.stderr.trim()], [1, 'cannot read -d @/nonexistent: ENOENT']);
});

t.test('certs dev writes a usable PKI with private keys mode 0600', async (t) => {
  const out = join(dir, 'dev');
  const r = run(['certs', 'dev', '--out', out, '--hosts', 'a.test,b.test']);
  t.equal(r.status, 0, r.stderr);
  for (const k of ['ca.key', 'server.key', 'client.key']) t.equal(statSync(join(out, k)).mode & 0o777, 0o600, `${k} is 0600`);
  const ossl = spawnSync('openssl', ['verify', '-CAfile', join(out, 'ca.crt'), '-purpose', 'sslclient', join(out, 'client.crt')], { encoding: 'utf8' });
  t.match(ossl.stdout, /client\.crt: OK/, 'openssl accepts the client certificate for clientAuth');
  const crl = spawnSync('openssl', ['crl', '-in', join(out, 'ca.crl'), '-CAfile', join(out, 'ca.crt'), '-noout'], { encoding: 'utf8' });
  t.match(crl.stderr + crl.stdout, /verify OK/, 'openssl verifies the CRL signature');
});

t.test('certs dev into a folder it cannot make: exit 1 with the reason, never a hang or a stack trace', async (t) => {
  writeFileSync(join(dir, 'a-file'), '');
  const cases: [string, RegExp][] = [
    [join(dir, 'a-file', 'out'), /^portcullis: ENOTDIR: not a directory, mkdir '.*a-file\/out'\n$/],
    // procfs answers ENOENT for a child of an existing folder: Node's recursive mkdir spins on it.
    ['/proc/portcullis-test/out', /^portcullis: ENOENT: no such file or directory, mkdir '\/proc\/portcullis-test'\n$/],
  ];
  for (const [out, want] of cases) {
    const r = run(['certs', 'dev', '--out', out]);
    t.equal(r.status, 1, `${out}: exit 1${r.error ? ` (${r.error.message})` : ''}`);
    t.match(r.stderr, want, `${out}: the reason, and no stack`);
  }
  const nested = join(dir, 'new', 'a', 'b');
  t.equal(run(['certs', 'dev', '--out', nested]).status, 0, 'missing parent folders are made');
  t.ok(statSync(join(nested, 'ca.crt')).isFile());
});

t.test('serve: curl with a client certificate gets through; SIGTERM drains and exits 0', async (t) => {
  const up = await listenUpstream();
  t.teardown(() => { up.server.closeAllConnections(); up.server.close(); });
  const [port, admin] = [await freePort(), await freePort()];
  const f = config(port, admin, up.port);
  const child = spawn(process.execPath, [BIN, 'serve', '--config', f], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.on('data', (d) => { stdout += d; });
  await new Promise<void>((resolve, reject) => {
    const iv = setInterval(() => { if (stdout.includes('"listening"')) { clearInterval(iv); resolve(); } }, 50);
    child.once('exit', (c) => { clearInterval(iv); reject(new Error(`exited ${c}`)); });
  });
  // Asynchronous: the upstream runs in this process and must keep answering.
  const curl = (extra: string[]) => new Promise<{ stdout: string }>((resolve) => {
    const c = spawn('curl', ['-s', '-o', '-', '-w', '\n%{http_code}', '--cacert', fx.path('ca.crt'), '--resolve', `a.test:${port}:127.0.0.1`, ...extra, `https://a.test:${port}/api/x`]);
    let o = '';
    c.stdout.on('data', (d) => { o += d; });
    c.once('close', () => resolve({ stdout: o }));
  });
  let r = await curl(['--cert', fx.path('client-valid.crt'), '--key', fx.path('client-valid.key')]);
  t.match(r.stdout, /"x-auth-user-id": "client-1"/);
  t.match(r.stdout, /\n200$/);
  r = await curl([]);
  t.match(r.stdout, /"code":"AUTH_010".*\n401$/s);
  const ready = await fetch(`http://127.0.0.1:${admin}/readyz`);
  t.equal(ready.status, 200);
  child.kill('SIGTERM');
  const code = await new Promise<number | null>((r2) => child.once('exit', (c) => r2(c)));
  t.equal(code, 0, 'exit 0 after SIGTERM');
  t.match(stdout, /"msg":"SIGTERM: draining"/);
  t.match(stdout, /"msg":"stopped"/);
  t.notMatch(stdout, /BEGIN|PRIVATE/, 'no key material in the logs');
});

t.test('keys new prints a kapi_<env>_<32 base62> key once with its hash line; keys hash hashes stdin', async (t) => {
  const r = run(['keys', 'new', '--env', 'test']);
  t.equal(r.status, 0);
  const [key, hashLine] = r.stdout.trim().split('\n');
  t.match(key, /^kapi_test_[A-Za-z0-9]{32}$/);
  const h = run(['keys', 'hash'], key + '\n');
  t.equal(h.status, 0);
  t.match(hashLine, new RegExp(`^hash: "${h.stdout.trim()}"`));
  t.match(h.stdout.trim(), /^sha256:[0-9a-f]{64}$/);
  t.equal(run(['keys', 'hash'], 'kapi_prod_7f3d9a2b5c1e4890abcdef1234567890').stdout.trim(), 'sha256:522a81f1128ea07df68f105ad2901de715cb387d66f1df870fe3ff98bcf67c63', 'the same as sha256sum');
  t.equal(run(['keys', 'new', '--env', 'staging']).status, 2);
  t.not(run(['keys', 'new']).stdout.split('\n')[0], run(['keys', 'new']).stdout.split('\n')[0], 'random');
});

t.test('check on the shipped example config prints the policy table (after `certs dev` made .demo)', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'portcullis-example-'));
  const repo = new URL('../../', import.meta.url).pathname;
  spawnSync('cp', ['-r', join(repo, 'config'), join(root, 'config')]);
  t.equal(run(['certs', 'dev', '--out', join(root, '.demo'), '--hosts', 'localhost,api.localhost']).status, 0);
  const r = run(['check', '--config', join(root, 'config/portcullis.example.yaml')]);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /2\s+api\s+\*\s+\*\s+\/\*\*\s+any\(spiffe-workloads, client-cert, users-jwt, partner-keys, partner-hmac\)\s+enforce\s+600\/60s per identity/);
  t.match(r.stdout, /^lockout 10 failed credentials from one client IP within 60 s -> 429 for 300 s$/m);
  t.match(r.stdout, /users-jwt\s+jwt\s+api/);
});

// The README's first command, `npm ci && npm start`, and the curl commands it shows. The demo
// runs from a copy of the checkout (bin, src, config; node_modules linked), so its first run
// generates .demo/ there as it would for a new user. Its ports are fixed (8443, 8080, 9901).
const demoPortsBusy: number[] = [];
for (const port of [8443, 8080, 9901]) {
  const free = await new Promise<boolean>((r) => { const s = createServer(); s.once('error', () => r(false)); s.listen(port, '127.0.0.1', () => s.close(() => r(true))); });
  if (!free) demoPortsBusy.push(port);
}
// Not a skip: with a demo port in use (an `npm start` running?) this test fails and says which.
t.test('npm start: the demo generates its certificates and answers the README\'s curl commands as shown', async (t) => {
  const repo = new URL('../../', import.meta.url).pathname;
  t.same(demoPortsBusy, [], 'the demo\'s ports (8443, 8080, 9901) are free; an `npm start` running here would hold them');
  if (demoPortsBusy.length) return;
  const root = mkdtempSync(join(tmpdir(), 'portcullis-demo-'));
  for (const d of ['bin', 'src', 'config', 'package.json']) cpSync(join(repo, d), join(root, d), { recursive: true });
  symlinkSync(join(repo, 'node_modules'), join(root, 'node_modules'));
  // What `npm start` runs (package.json "start"), from the copy.
  const start = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts.start as string;
  t.equal(start, 'node --max-semi-space-size=16 bin/portcullis.js demo');
  const child = spawn(process.execPath, ['--max-semi-space-size=16', join(root, 'bin/portcullis.js'), 'demo'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  t.teardown(() => { child.kill('SIGKILL'); });
  await new Promise<void>((resolve, reject) => {
    const iv = setInterval(() => { if (out.includes('Portcullis demo: https://localhost:8443')) { clearInterval(iv); resolve(); } }, 50);
    void exited.then((c) => { clearInterval(iv); reject(new Error(`the demo exited ${c}: ${out}`)); });
  });
  t.match(out, /generated dev certificates in .*\.demo/, 'first run: dev certificates generated');
  // The README's commands, run as written (from the copy's folder, which holds .demo).
  const curl = (args: string) => new Promise<{ body: string; status: number }>((resolve) => {
    const c = spawn('sh', ['-c', `curl -s -w '\\n%{http_code}' ${args}`], { cwd: root });
    let o = '';
    c.stdout.on('data', (d) => { o += d; });
    c.once('close', () => { const i = o.lastIndexOf('\n'); resolve({ body: o.slice(0, i), status: Number(o.slice(i + 1)) }); });
  });
  const withCert = '--cacert .demo/ca.crt --cert .demo/client.crt --key .demo/client.key';
  const ok = await curl(`${withCert} https://localhost:8443/api/hello`);
  t.equal(ok.status, 200, 'certificate verified');
  const echo = JSON.parse(ok.body);
  t.equal(echo.url, '/api/hello');
  t.equal(echo.headers['x-auth-user-id'], 'spiffe://portcullis.dev/client/dev-client', 'the echo shows the identity the README shows');
  t.equal(echo.headers['x-auth-method'], 'mtls');
  t.match(echo.headers['x-forwarded-client-cert'], /^Hash=[0-9a-f]{64};Subject="CN=dev-client,OU=dev,O=Portcullis dev";URI=spiffe:\/\/portcullis\.dev\/client\/dev-client$/);
  const code = async (args: string) => { const r = await curl(args); return [r.status, JSON.parse(r.body).error?.code]; };
  t.same(await code('--cacert .demo/ca.crt https://localhost:8443/api/hello'), [401, 'AUTH_010'], 'no certificate');
  t.same(await code(`${withCert} https://localhost:8443/admin/users`), [403, 'AUTH_008'], '/admin allows only ops-*');
  t.same(await code(`${withCert} https://localhost:8443/other`), [403, 'AUTH_011'], 'no policy matches');
  const open = await curl('--cacert .demo/ca.crt https://localhost:8443/public/status');
  t.same([open.status, JSON.parse(open.body).headers['x-auth-user-id']], [200, undefined], 'a public route, no identity');
  const explain = spawnSync(process.execPath, [join(root, 'bin/portcullis.js'), 'explain', '--config', 'config/demo.yaml', 'GET', 'https://localhost/admin/users', '--cert', '.demo/client.crt'], { cwd: root, encoding: 'utf8', timeout: 30_000 });
  t.match(explain.stdout, /result\s+DENY 403 AUTH_008/, 'explain gives the same answer offline');
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM stops the demo, exit 0');
});
