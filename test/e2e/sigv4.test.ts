// AWS SigV4 verified on inbound requests (type: sigv4), over real TLS, with two
// independent signers as clients: curl's own (`curl --aws-sigv4`) and the aws4 package
// (the signer that ships AWS's test suite), which encode an escaped path differently.
import t from 'tap';
import { execFile } from 'node:child_process';
import https from 'node:https';
import aws4 from 'aws4';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, baseConfig, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();
const SECRET = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY';
let h: Harness;

t.before(async () => {
  h = await startHarness(fx, baseConfig(`
authenticators:
  aws:
    type: sigv4
    region: [us-east-1, eu-west-1]
    service: execute-api
    keys:
      - { accessKeyId: AKIAPORTCULLIS0001, secret: "${SECRET}", subject: build-bot, scopes: [deploy] }
      - { accessKeyId: AKIAPORTCULLIS0002, secret: "${SECRET}x", subject: old-bot, revoked: true }
  aws-single:
    type: sigv4
    region: us-east-1
    service: execute-api
    pathEncoding: single
    keys:
      - { accessKeyId: AKIAPORTCULLIS0001, secret: "${SECRET}", subject: build-bot }
  aws-links:
    type: sigv4
    region: us-east-1
    service: execute-api
    presignedUrls: true
    keys:
      - { accessKeyId: AKIAPORTCULLIS0001, secret: "${SECRET}", subject: link-holder }
policies:
  - name: links
    match: { paths: ["/links/**"] }
    authenticate: aws-links
  - name: single
    match: { paths: ["/single/**"] }
    authenticate: aws-single
  - name: api
    match: { paths: ["/**"] }
    authenticate: aws
`));
});
t.teardown(() => h?.close());

/** curl, signing with --aws-sigv4; asynchronous, since the server runs in this process. */
function curl(args: string[], o: { user?: string; sigv4?: string } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    execFile('curl', ['-sS', '-o', '-', '-w', '\n%{http_code}', '--cacert', fx.path('ca.crt'), '--resolve', `a.test:${h.port}:127.0.0.1`,
      '--aws-sigv4', o.sigv4 ?? 'aws:amz:us-east-1:execute-api', '--user', o.user ?? `AKIAPORTCULLIS0001:${SECRET}`, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err && !stdout) { reject(new Error(`${err.message} ${stderr}`)); return; }
      const i = stdout.lastIndexOf('\n');
      resolve({ status: Number(stdout.slice(i + 1)), body: stdout.slice(0, i) });
    });
  });
}
const url = (p: string) => `https://a.test:${(h as Harness).port}${p}`;

t.test('curl --aws-sigv4: GET, a query, a JSON POST; the identity reaches the upstream and the signature does not', async (t) => {
  let r = await curl([url('/v1/deployments/42')]);
  t.equal(r.status, 200, r.body);
  let up = h.seen.at(-1)!;
  t.same([up.headers['x-auth-user-id'], up.headers['x-auth-key-id'], up.headers['x-auth-scopes'], up.headers['x-auth-method']], ['build-bot', 'AKIAPORTCULLIS0001', 'deploy', 'sigv4']);
  t.notOk(up.headers.authorization, 'the Authorization header is not forwarded');
  t.ok(up.headers['x-amz-date'], 'the other headers are');
  r = await curl([url('/v1/deployments?status=running')]);
  t.equal(r.status, 200, 'with a query');
  const body = JSON.stringify({ service: 'web', version: '1.4.2' });
  r = await curl(['-X', 'POST', '-H', 'content-type: application/json', '--data-binary', body, url('/v1/deployments')]);
  t.equal(r.status, 200, 'a POST with a body');
  up = h.seen.at(-1)!;
  t.equal(up.body, body, 'the body arrives whole');
  r = await curl([url('/single/a%20b/%C3%A9')]);
  t.equal(r.status, 200, 'a path with escapes, where pathEncoding is single (curl 7.88 signs the path once)');
  r = await curl([url('/v1/a%20b/%C3%A9')]);
  t.same([r.status, JSON.parse(r.body).error.code], [401, 'AUTH_001'], 'and refused where it is double, the AWS rule curl 7.88 does not follow');
  r = await curl([url('/v1/deployments')], { sigv4: 'aws:amz:eu-west-1:execute-api' });
  t.equal(r.status, 200, 'the other accepted region');
});

t.test('what curl signs wrongly is refused with the exact code, and nothing is forwarded', async (t) => {
  const seen = h.seen.length;
  const cases: [string, Promise<{ status: number; body: string }>, number, string][] = [
    ['a wrong secret', curl([url('/v1/x')], { user: `AKIAPORTCULLIS0001:${SECRET}wrong` }), 401, 'AUTH_001'],
    ['an unknown key', curl([url('/v1/x')], { user: `AKIAUNKNOWN0000001:${SECRET}` }), 401, 'AUTH_004'],
    ['a revoked key', curl([url('/v1/x')], { user: `AKIAPORTCULLIS0002:${SECRET}x` }), 401, 'AUTH_004'],
    ['a region not accepted', curl([url('/v1/x')], { sigv4: 'aws:amz:ap-south-1:execute-api' }), 401, 'AUTH_001'],
    ['another service', curl([url('/v1/x')], { sigv4: 'aws:amz:us-east-1:s3' }), 401, 'AUTH_001'],
    ['an X-Amz-Date of its own beside curl\'s', curl(['-H', 'x-amz-date: 20200101T000000Z', url('/v1/x')]), 401, 'AUTH_003'],
  ];
  for (const [what, p, status, code] of cases) {
    const r = await p;
    t.same([r.status, JSON.parse(r.body).error?.code], [status, code], what);
  }
  t.equal(h.seen.length, seen, 'nothing reached the upstream');
  const reasons = h.logs.filter((l) => l.msg === 'denied').map((l) => l.trace?.[0]?.reason).join('\n');
  for (const why of ['signature does not match', 'access key AKIAUNKNOWN0000001 not found', 'access key AKIAPORTCULLIS0002 is revoked', 'credential scope ap-south-1/execute-api is not accepted', 'credential scope us-east-1/s3 is not accepted', 'X-Amz-Date is not yyyymmddThhmmssZ']) {
    t.ok(reasons.includes(why), `logged: ${why}`);
  }
  const plain = await new Promise<{ status: number; body: string }>((resolve) => execFile('curl', ['-sS', '-o', '-', '-w', '\n%{http_code}', '--cacert', fx.path('ca.crt'), '--resolve', `a.test:${h.port}:127.0.0.1`, url('/v1/x')], (_e, out) => { const i = out.lastIndexOf('\n'); resolve({ status: Number(out.slice(i + 1)), body: out.slice(0, i) }); }));
  t.same([plain.status, JSON.parse(plain.body).error.code], [401, 'AUTH_003'], 'unsigned');
});

/** A request signed by the aws4 package, sent with Node's https client. */
function aws4Request(o: { method?: string; path: string; body?: string; headers?: Record<string, string>; region?: string; signQuery?: boolean; tamper?: (path: string) => string; port?: number }): Promise<{ status: number; body: string }> {
  const opts: Record<string, unknown> = {
    host: 'a.test', method: o.method ?? 'GET', path: o.path, service: 'execute-api', region: o.region ?? 'us-east-1',
    headers: { ...(o.headers ?? {}) }, ...(o.body !== undefined ? { body: o.body } : {}), ...(o.signQuery ? { signQuery: true } : {}),
  };
  aws4.sign(opts, { accessKeyId: 'AKIAPORTCULLIS0001', secretAccessKey: SECRET });
  if (o.tamper) opts.path = o.tamper(opts.path as string);
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: o.port ?? h.port, servername: 'a.test', ca: fx.ca.certPem, method: opts.method as string, path: opts.path as string, headers: opts.headers as Record<string, string>, agent: false }, (res) => {
      let b = '';
      res.on('data', (c) => { b += c; });
      res.on('end', () => resolve({ status: res.statusCode!, body: b }));
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

t.test('aws4 (AWS\'s own rule for escaped paths): escapes, an unsorted query, a body', async (t) => {
  let r = await aws4Request({ path: '/v1/a%20b/%C3%A9' });
  t.equal(r.status, 200, 'a path with escapes, encoded twice as AWS signs it');
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'build-bot');
  r = await aws4Request({ path: '/v1/search?z=1&a=two%20words&a=b' });
  t.equal(r.status, 200, 'an unsorted query with a repeated name and an escape');
  const body = '{"replicas":3}';
  r = await aws4Request({ method: 'PUT', path: '/v1/services/web', body, headers: { 'content-type': 'application/json' } });
  t.equal(r.status, 200, 'a PUT with a body');
  t.equal(h.seen.at(-1)!.body, body);
  r = await aws4Request({ path: '/single/a%20b' });
  t.same([r.status, JSON.parse(r.body).error.code], [401, 'AUTH_001'], 'and the double-encoded signature refused where pathEncoding is single');
});

t.test('presigned URLs (presignedUrls: true): served within X-Amz-Expires, the signature kept from the upstream', async (t) => {
  let r = await aws4Request({ path: '/links/report.csv?format=csv', signQuery: true });
  t.equal(r.status, 200, r.body);
  const up = h.seen.at(-1)!;
  t.equal(up.headers['x-auth-user-id'], 'link-holder');
  t.equal(up.url, '/links/report.csv?format=csv', 'the upstream gets the URL without the X-Amz-* parameters');
  r = await aws4Request({ path: '/links/report.csv?format=csv', signQuery: true, tamper: (p) => p.replace('format=csv', 'format=xlsx') });
  t.same([r.status, JSON.parse(r.body).error.code], [401, 'AUTH_001'], 'a parameter changed after signing');
  r = await aws4Request({ path: '/links/report.csv', signQuery: true, tamper: (p) => `${p}&X-Amz-Signature=${'0'.repeat(64)}` });
  t.same([r.status, JSON.parse(r.body).error.code], [401, 'AUTH_003'], 'X-Amz-Signature twice');
  r = await aws4Request({ path: '/v1/report.csv', signQuery: true });
  t.same([r.status, JSON.parse(r.body).error.code], [401, 'AUTH_003'], 'not accepted where presignedUrls is off (the default)');
  // The same links, judged by servers whose clocks run ahead. Without X-Amz-Expires (aws4 sends
  // none outside S3) a link lives maxSkewSec (300 s); with X-Amz-Expires=600, 600 s.
  const ahead = async (ms: number) => startHarness(fx, baseConfig(`
authenticators:
  aws-links: { type: sigv4, region: us-east-1, service: execute-api, presignedUrls: true, keys: [ { accessKeyId: AKIAPORTCULLIS0001, secret: "${SECRET}", subject: s } ] }
policies:
  - { name: links, match: { paths: ["/links/**"] }, authenticate: aws-links }
`), { now: () => Date.now() + ms });
  const eight = await ahead(8 * 60_000), twenty = await ahead(20 * 60_000);
  try {
    r = await aws4Request({ path: '/links/report.csv', signQuery: true, port: eight.port });
    t.same([r.status, JSON.parse(r.body).error.code], [401, 'AUTH_009'], 'no X-Amz-Expires, 8 minutes on: expired');
    r = await aws4Request({ path: '/links/report.csv?X-Amz-Expires=600', signQuery: true, port: eight.port });
    t.equal(r.status, 200, 'X-Amz-Expires=600, 8 minutes on: still valid');
    t.equal(eight.seen.at(-1)!.url, '/links/report.csv', 'X-Amz-Expires removed too');
    r = await aws4Request({ path: '/links/report.csv?X-Amz-Expires=600', signQuery: true, port: twenty.port });
    t.same([r.status, JSON.parse(r.body).error.code], [401, 'AUTH_009'], 'X-Amz-Expires=600, 20 minutes on: expired');
    t.match(twenty.logs.filter((l) => l.msg === 'denied').map((l) => l.reason).join(' '), /presigned URL expired \d+ s ago/);
  } finally {
    await eight.close();
    await twenty.close();
  }
});

t.test('a signature that does not match says what to compare: the canonical request\'s hash live, the request itself in explain', async (t) => {
  const { explain, formatExplanation } = await import('../../src/explain.ts');
  const { loadConfigFetching } = await import('../../src/config/load.ts');
  const { Runtime } = await import('../../src/runtime.ts');
  const opts: Record<string, unknown> = { host: 'a.test', method: 'GET', path: '/v1/things?b=2&a=1', service: 'execute-api', region: 'us-east-1', headers: {} };
  aws4.sign(opts, { accessKeyId: 'AKIAPORTCULLIS0001', secretAccessKey: `${SECRET}-not-it` });
  const headers = Object.entries(opts.headers as Record<string, string>).filter(([n]) => n.toLowerCase() !== 'host').map(([n, v]) => `${n}: ${v}`);
  const cfg = await loadConfigFetching(h.configFile, { runtime: new Runtime({ offline: true }) });
  const e = await explain(cfg, { method: 'GET', url: 'https://a.test/v1/things?b=2&a=1', headers });
  if ('error' in e) throw new Error(e.error);
  t.equal(e.decision?.code, 'AUTH_001');
  const text = formatExplanation(e);
  t.match(text, /signature does not match; the canonical request here:\nGET\n\/v1\/things\na=1&b=2\nhost:a\.test\nx-amz-date:\d{8}T\d{6}Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nand the string to sign:\nAWS4-HMAC-SHA256\n/, 'explain shows the canonical request and the string to sign');
  // Live, from the wrong-secret request above: the hash, not the request.
  const r = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: h.port, servername: 'a.test', ca: fx.ca.certPem, path: '/v1/things?b=2&a=1', headers: opts.headers as Record<string, string>, agent: false }, (res) => { let b = ''; res.on('data', (c) => { b += c; }); res.on('end', () => resolve({ status: res.statusCode!, body: b })); });
    req.on('error', reject);
    req.end();
  });
  t.equal(r.status, 401);
  const id = JSON.parse(r.body).error.requestId;
  const { until } = await import('../helpers/harness.ts');
  await until('the denial logged', () => h.logs.some((l) => l.msg === 'denied' && l.requestId === id));
  const reason = h.logs.find((l) => l.msg === 'denied' && l.requestId === id)!.reason as string;
  t.match(reason, /^signature does not match \(canonical request SHA-256 here: [0-9a-f]{64}; compare with the signer's\)$/, 'live: the hash only');
});
