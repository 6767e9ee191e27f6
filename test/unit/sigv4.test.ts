// AWS SigV4 (type: sigv4) against the AWS SigV4 test suite
// (shared/reference/vectors/aws-sigv4): each request's canonical request byte for byte,
// and its Authorization accepted at the suite's time; then every part changed in turn.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { AUTHENTICATORS_BY_TYPE } from '../../src/authenticators/registry.ts';
import type { AuthRequest, Authenticator } from '../../src/authenticators/types.ts';
import { canonicalRequest } from '../../src/authenticators/sigv4.ts';
import { Runtime } from '../../src/runtime.ts';

const VEC = JSON.parse(readFileSync(new URL('../../../shared/reference/vectors/aws-sigv4/aws-sig-v4-test-suite-subset.json', import.meta.url), 'utf8'));
const { access_key_id: AKID, secret_access_key: SECRET, region: REGION, service: SERVICE } = VEC.credentials;
const NOW = Date.UTC(2015, 7, 30, 12, 36, 0);

function create(extra: Record<string, unknown> = {}): Authenticator {
  const type = AUTHENTICATORS_BY_TYPE.get('sigv4')!;
  return type.create(type.schema.parse({ type: 'sigv4', region: REGION, service: SERVICE, keys: [{ accessKeyId: AKID, secret: SECRET, subject: 'aws-client', scopes: ['s3:read'] }], ...extra }), {
    name: 'aws', clientAuth: false, runtime: new Runtime(), store: { type: 'memory' }, resolvePath: (p) => resolve(p), readFile: () => '',
  });
}

/** A suite request ("METHOD target HTTP/1.1", "Name:value" lines, a blank line, the body) as the server would hand it over. */
function parse(raw: string, authz?: string): AuthRequest {
  const [head, body = ''] = raw.split('\n\n');
  const [line, ...headerLines] = head!.split('\n');
  const [method, target] = line!.split(' ') as [string, string];
  const rawHeaders: string[] = [];
  for (const l of headerLines) { const i = l.indexOf(':'); rawHeaders.push(l.slice(0, i), l.slice(i + 1)); }
  if (authz) rawHeaders.push('Authorization', authz);
  const headers: Record<string, string> = {};
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const n = rawHeaders[i]!.toLowerCase();
    headers[n] = headers[n] === undefined ? rawHeaders[i + 1]!.trim() : `${headers[n]}, ${rawHeaders[i + 1]!.trim()}`;
  }
  const q = target.indexOf('?');
  return {
    conn: { remoteAddress: '127.0.0.1', remotePort: 1, resumed: false, clientCert: { present: false, verified: false } },
    method, path: q < 0 ? target : target.slice(0, q), query: q < 0 ? '' : target.slice(q + 1), headers, authority: headers.host!, clientIp: '127.0.0.1',
    now: NOW, body: Buffer.from(body), target, rawHeaders,
  };
}

// get-header-value-multiline needs obs-fold, which Node's HTTP parser refuses with 400 before
// any authenticator runs (test/adversarial/smuggling.test.ts), so no request reaches here with one.
const CASES = Object.entries(VEC.cases as Record<string, { req: string; creq: string; authz: string }>).filter(([name]) => name !== 'get-header-value-multiline');

t.test('the AWS SigV4 test suite: canonical requests byte for byte, signatures accepted', async (t) => {
  const a = create();
  t.ok(CASES.length >= 12, `${CASES.length} cases`);
  for (const [name, c] of CASES) {
    const req = parse(c.req, c.authz);
    const signed = /SignedHeaders=([^,]+)/.exec(c.authz)![1]!;
    const payloadHash = c.creq.split('\n').at(-1)!;
    const built = canonicalRequest({ method: req.method, target: req.target!, rawHeaders: req.rawHeaders!.slice(0, -2), signedHeaders: signed, payloadHash, normalizePath: true });
    t.same(built, { creq: c.creq }, `${name}: canonical request`);
    const v = await a.verify(req);
    t.same([v.kind, v.kind === 'allow' ? v.identity.subject : v.reason], ['allow', 'aws-client'], `${name}: accepted`);
  }
});

t.test('every part of a signed request changed in turn is refused with its code', async (t) => {
  const a = create();
  const c = VEC.cases['post-x-www-form-urlencoded'];
  const base = c.authz as string;
  const mutate = (req: AuthRequest, f: (r: { rawHeaders: string[]; headers: Record<string, string>; target: string; method: string; body: Buffer; now: number }) => void): AuthRequest => {
    const r = { ...req, rawHeaders: [...req.rawHeaders!], headers: { ...req.headers } as Record<string, string>, body: req.body!, target: req.target!, method: req.method, now: req.now };
    f(r);
    return r as AuthRequest;
  };
  const setHeader = (r: { rawHeaders: string[]; headers: Record<string, string> }, name: string, value: string) => {
    for (let i = 0; i < r.rawHeaders.length; i += 2) if (r.rawHeaders[i]!.toLowerCase() === name) r.rawHeaders[i + 1] = value;
    r.headers[name] = value;
  };
  const ok = parse(c.req, base);
  t.equal((await a.verify(ok)).kind, 'allow', 'the request as signed');
  const cases: [string, AuthRequest, string, string][] = [
    ['the body changed', mutate(ok, (r) => { r.body = Buffer.from('Param1=value2'); }), 'deny', 'AUTH_001'],
    ['the method changed', mutate(ok, (r) => { r.method = 'PUT'; }), 'deny', 'AUTH_001'],
    ['a query added', mutate(ok, (r) => { r.target = '/?admin=true'; }), 'deny', 'AUTH_001'],
    ['a signed header changed', mutate(ok, (r) => setHeader(r, 'content-type', 'application/json')), 'deny', 'AUTH_001'],
    ['the host changed', mutate(ok, (r) => setHeader(r, 'host', 'evil.example')), 'deny', 'AUTH_001'],
    ['X-Amz-Date changed (same day)', mutate(ok, (r) => setHeader(r, 'x-amz-date', '20150830T123601Z')), 'deny', 'AUTH_001'],
    ['16 minutes later', mutate(ok, (r) => { r.now = NOW + 16 * 60_000; }), 'deny', 'AUTH_009'],
    ['an unknown key', mutate(ok, (r) => setHeader(r, 'authorization', base.replace('AKIDEXAMPLE', 'AKIDOTHER'))), 'deny', 'AUTH_004'],
    ['another region', mutate(ok, (r) => setHeader(r, 'authorization', base.replace('us-east-1', 'eu-west-1'))), 'deny', 'AUTH_001'],
    ['another service', mutate(ok, (r) => setHeader(r, 'authorization', base.replace('/service/', '/s3/'))), 'deny', 'AUTH_001'],
    ['a scope date not X-Amz-Date\'s', mutate(ok, (r) => setHeader(r, 'authorization', base.replace('20150830', '20150831'))), 'deny', 'AUTH_001'],
    ['host not signed', mutate(ok, (r) => setHeader(r, 'authorization', base.replace('content-type;host;x-amz-date', 'content-type;x-amz-date'))), 'deny', 'AUTH_003'],
    ['unsorted SignedHeaders', mutate(ok, (r) => setHeader(r, 'authorization', base.replace('content-type;host;x-amz-date', 'host;content-type;x-amz-date'))), 'deny', 'AUTH_003'],
    ['a signed header missing', mutate(ok, (r) => setHeader(r, 'authorization', base.replace('content-type;host;x-amz-date', 'content-type;host;x-amz-date;x-extra'))), 'deny', 'AUTH_003'],
    ['a short signature', mutate(ok, (r) => setHeader(r, 'authorization', base.slice(0, -2))), 'deny', 'AUTH_003'],
    ['Credential twice', mutate(ok, (r) => setHeader(r, 'authorization', `${base}, Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request`)), 'deny', 'AUTH_003'],
    ['no X-Amz-Date', mutate(ok, (r) => { r.rawHeaders = r.rawHeaders.filter((_, i, all) => all[i - (i % 2)]!.toLowerCase() !== 'x-amz-date'); delete r.headers['x-amz-date']; }), 'deny', 'AUTH_003'],
    ['an x-amz-content-sha256 sent but not signed', mutate(ok, (r) => { r.rawHeaders.push('X-Amz-Content-Sha256', 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'); r.headers['x-amz-content-sha256'] = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'; }), 'deny', 'AUTH_003'],
    ['a bearer token instead', mutate(ok, (r) => setHeader(r, 'authorization', 'Bearer abc')), 'skip', 'AUTH_003'],
    ['no Authorization', mutate(ok, (r) => { delete r.headers.authorization; }), 'skip', 'AUTH_003'],
  ];
  for (const [what, req, kind, code] of cases) {
    const v = await a.verify(req);
    t.same([v.kind, v.kind === 'allow' ? '' : v.code], [kind, code], `${what}: ${v.kind === 'allow' ? 'allowed' : v.reason}`);
  }
  const revoked = AUTHENTICATORS_BY_TYPE.get('sigv4')!;
  const r = revoked.create(revoked.schema.parse({ type: 'sigv4', region: REGION, service: SERVICE, keys: [{ accessKeyId: AKID, secret: SECRET, subject: 's', revoked: true }] }), { name: 'aws', clientAuth: false, runtime: new Runtime(), store: { type: 'memory' }, resolvePath: (p) => resolve(p), readFile: () => '' });
  t.same([(await r.verify(ok)).kind, ((await r.verify(ok)) as { code: string }).code], ['deny', 'AUTH_004'], 'a revoked key');
});

t.test('rejectReplays: the same signature is accepted once', async (t) => {
  const a = create({ rejectReplays: true });
  const c = VEC.cases['get-vanilla'];
  t.equal((await a.verify(parse(c.req, c.authz))).kind, 'allow');
  const again = await a.verify(parse(c.req, c.authz));
  t.same([again.kind, again.kind === 'allow' ? '' : again.code], ['deny', 'AUTH_009']);
  t.equal((await create().verify(parse(c.req, c.authz))).kind, 'allow', 'without it, as AWS does, a repeat passes');
});

t.test('the path\'s escapes: encoded again (AWS, every service but S3) or once (S3)', async (t) => {
  const { canonicalUri } = await import('../../src/authenticators/sigv4.ts');
  t.equal(canonicalUri('/a%20b/%C3%A9', true, 'double'), '/a%2520b/%25C3%25A9');
  t.equal(canonicalUri('/a%20b/%C3%A9', true, 'single'), '/a%20b/%C3%A9');
  t.equal(canonicalUri('/a b', true, 'single'), '/a%20b', 'a raw space, once');
  t.equal(canonicalUri('//x/./y/../z//', true), '/x/z/', 'normalised');
  t.equal(canonicalUri('//x/./y/../z//', false, 'single'), '//x/./y/../z//', 'not normalised (S3)');
  t.equal(canonicalUri('/%zz', true), undefined, 'a malformed escape');
});
