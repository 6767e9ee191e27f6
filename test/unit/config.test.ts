// Every config error class ends in a ConfigError naming file:line:col and the YAML path.
import t from 'tap';
import { writeFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeFixture } from '../helpers/pki.ts';
import { loadConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/errors.ts';
import { jsonSchema } from '../../src/config/schema.ts';
import { issue, makeCrl } from '../../src/tls/pki.ts';

const fx = makeFixture();
const dir = mkdtempSync(join(fx.dir, 'conf-'));

const good = `server:
  listen: 127.0.0.1:8443
tls:
  certificates:
    - hosts: [a.test]
      cert: ${fx.dir}/a.crt
      key: ${fx.dir}/a.key
  clientAuth:
    ca: ${fx.dir}/ca.crt
    crl: ${fx.dir}/ca.crl
upstream:
  url: http://127.0.0.1:8080
authenticators:
  cert: { type: mtls }
policies:
  - name: health
    match: { paths: [/health] }
    authenticate: none
  - name: api
    match: { paths: ["/**"] }
    authenticate: { any: [cert] }
`;

function errorsOf(text: string, env?: NodeJS.ProcessEnv): string[] {
  const f = join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(f, text);
  try {
    loadConfig(f, { env });
  } catch (e) {
    if (e instanceof ConfigError) return e.message.split('\n').map((l) => l.replace(f, 'FILE'));
    throw e;
  }
  return [];
}

t.test('a good config loads and is frozen', async (t) => {
  t.same(errorsOf(good), []);
  const f = join(dir, 'good.yaml');
  writeFileSync(f, good);
  const cfg = loadConfig(f);
  t.ok(Object.isFrozen(cfg) && Object.isFrozen(cfg.server) && Object.isFrozen(cfg.policies));
  t.equal(cfg.server.timeouts.idleMs, 60_000, 'defaults applied');
  t.equal(cfg.policies.length, 2);
});

// Catalogue CFG-03: a catch-all written before the stricter policy it should follow.
t.test('a policy that an earlier one shadows is refused; policies that only overlap load', async (t) => {
  const withPolicies = (policies: string) => good.slice(0, good.indexOf('policies:')) + 'policies:\n' + policies;
  const P = (name: string, match: string, auth = 'cert') => `  - name: ${name}\n    match: ${match}\n    authenticate: ${auth}\n`;
  const refused: [string, string, RegExp][] = [
    ['catch-all first', P('open', '{ paths: ["/**"] }', 'none') + P('admin', '{ paths: ["/admin/**"] }'), /^FILE:\d+:\d+: policies\[1\]\.match: policy "admin" can never match: policy "open" \(policies\[0\]\) comes first/],
    ['no match restriction first', P('open', '{}', 'none') + P('admin', '{ paths: ["/admin"], methods: [GET] }'), /policies\[1\]\.match: policy "admin" can never match/],
    ['a parent glob first', P('api', '{ paths: ["/api/**"] }', 'none') + P('keys', '{ paths: ["/api/keys", "/api/keys/**"], methods: [POST] }'), /policies\[1\]\.match: policy "keys" can never match: policy "api"/],
    ['same hosts and wider methods first', P('a', '{ hosts: [A.test], paths: ["/x"] }', 'none') + P('b', '{ hosts: [a.test], paths: ["/x"], methods: [get] }'), /policies\[1\]\.match: policy "b" can never match/],
    ['a catch-all before a case-insensitive one', P('open', '{ paths: ["/**"] }', 'none') + P('ci', '{ paths: ["/admin/**"], caseInsensitive: true }'), /policies\[1\]\.match: policy "ci" can never match/],
    ['case-insensitive first', P('ci', '{ paths: ["/Admin/**"], caseInsensitive: true }', 'none') + P('admin', '{ paths: ["/admin/users"] }'), /policies\[1\]\.match: policy "admin" can never match/],
  ];
  for (const [what, policies, re] of refused) {
    const errs = errorsOf(withPolicies(policies));
    t.equal(errs.length, 1, what);
    t.match(errs[0], re, what);
  }
  const loads: [string, string][] = [
    ['specific before catch-all', P('admin', '{ paths: ["/admin/**"] }') + P('open', '{ paths: ["/**"] }', 'none')],
    ['earlier one limited by method', P('reads', '{ paths: ["/**"], methods: [GET] }', 'none') + P('writes', '{ paths: ["/**"] }')],
    ['earlier one limited by host', P('a', '{ hosts: [a.test] }', 'none') + P('rest', '{}')],
    ['a later case-insensitive one', P('admin', '{ paths: ["/admin/**"] }', 'none') + P('ci', '{ paths: ["/admin/**"], caseInsensitive: true }')],
    ['a sibling prefix', P('api', '{ paths: ["/api/**"] }', 'none') + P('apix', '{ paths: ["/apix/**"] }')],
  ];
  for (const [what, policies] of loads) t.same(errorsOf(withPolicies(policies)), [], what);
});

// Catalogue CFG-04: a "billion laughs" alias bomb and a huge file end in a config error, not a crash.
t.test('a YAML alias bomb and an oversized file are refused with a config error', async (t) => {
  const laughs = ['a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]', ...'bcdefgh'.split('').map((k, i) => `${k}: &${k} [${Array(9).fill('*' + 'abcdefgh'[i]).join(', ')}]`)].join('\n');
  const bomb = errorsOf(good + laughs + '\n');
  t.equal(bomb.length, 1);
  t.match(bomb[0], /^FILE: \(root\): YAML aliases expand too far/);
  const f = join(dir, 'huge.yaml');
  writeFileSync(f, good + '#'.repeat(5 << 20));
  t.throws(() => loadConfig(f), { message: /config is over 4 MiB/ });
});

t.test('error classes, each with position and path', async (t) => {
  const cases: [string, string, RegExp][] = [
    ['unknown top-level key', good + 'extra: 1\n', /^FILE:22:1: extra: unknown key "extra"$/],
    ['unknown nested key', good.replace('  listen: 127.0.0.1:8443', '  listen: 127.0.0.1:8443\n  lsten: x'), /^FILE:3:3: server\.lsten: unknown key "lsten"$/],
    ['unknown authenticator reference', good.replace('any: [cert]', 'any: [cert, corp-jwtt]'), /^FILE:21:\d+: policies\[1\]\.authenticate\.any\[1\]: unknown authenticator "corp-jwtt"$/],
    ['unknown authenticator type', good.replace('type: mtls', 'type: mtlz'), /^FILE:14:\d+: authenticators\.cert\.type: unknown type; expected one of: mtls/],
    ['missing file', good.replace(`${fx.dir}/a.key`, `${fx.dir}/nope.key`), /^FILE:7:\d+: tls\.certificates\[0\]\.key: cannot read .*nope\.key: ENOENT$/],
    ['cert/key mismatch', good.replace(`${fx.dir}/a.key`, `${fx.dir}/b.key`), /tls\.certificates\[0\]\.key: .*b\.key does not match the certificate in .*a\.crt$/],
    ['a certificate that does not cover a listed host', good.replace('hosts: [a.test]', 'hosts: [a.test, other.test, "10.1.2.3"]'), /tls\.certificates\[0\]\.hosts: .*a\.crt does not cover other\.test, 10\.1\.2\.3 \(it names DNS:a\.test, DNS:api\.a\.test\)$/],
    ['an HMAC secret under 32 bytes', good.replace('  cert: { type: mtls }', '  cert: { type: mtls }\n  sig: { type: hmac, clients: [ { id: a, secret: "0123456789abcdef0123456789abcde", subject: a } ] }'), /authenticators\.sig\.clients\[0\]\.secret: secret is 31 bytes; HMAC keys must be at least 32 bytes \(RFC 2104 §3\)$/],
    ['a URI limit the head limit would always pre-empt', good.replace('  listen: 127.0.0.1:8443', '  listen: 127.0.0.1:8443\n  maxHeaderBytes: 8192\n  maxUriBytes: 8192'), /^FILE:\d+:\d+: server\.maxUriBytes: must be less than server\.maxHeaderBytes \(8192\), which the request line counts towards$/],
    ['bad CIDR', good.replace('authenticate: none', 'authenticate: none\n    allowIps: [10.0.0.0/33]'), /^FILE:19:16: policies\[0\]\.allowIps\[0\]: must be an IP address or CIDR/],
    ['bad glob', good.replace('[/health]', '[health/**]'), /^FILE:17:\d+: policies\[0\]\.match\.paths\[0\]: path glob "health\/\*\*" must start with "\/"$/],
    ['bad glob 2', good.replace('[/health]', '["/a**"]'), /policies\[0\]\.match\.paths\[0\]: path glob "\/a\*\*": "\*\*" must be a whole segment$/],
    ['authenticate missing', good.replace('    authenticate: none\n', ''), /policies\[0\]\.authenticate: must be an authenticator name/],
    ['YAML syntax', good.replace('hosts: [a.test]', 'hosts: [a.test'), /^FILE:\d+:\d+: \(root\): /],
    ['duplicate key', good + 'server: {}\n', /^FILE:22:1: \(root\): Map keys must be unique/],
    ['bad upstream URL', good.replace('http://127.0.0.1:8080', 'ftp://x'), /^FILE:12:8: upstream\.url: must be an http/],
    ['duplicate policy name', good.replace('name: api', 'name: health'), /policies\[1\]\.name: duplicate policy name "health"/],
    ['mtls without clientAuth', good.replace(/  clientAuth:\n.*\n.*\n/, ''), /authenticators\.cert\.type: type mtls needs tls\.clientAuth\.ca/],
    ['unset env reference', good.replace('http://127.0.0.1:8080', '${env:PORTCULLIS_TEST_UNSET}'), /^FILE:12:8: \(root\): environment variable PORTCULLIS_TEST_UNSET is not set$/],
    ['no policies', good.slice(0, good.indexOf('policies:')) + 'policies: []\n', /policies: at least one policy is required/],
    ['hmac nonces with several workers', good.replace('  listen: 127.0.0.1:8443', '  listen: 127.0.0.1:8443\n  workers: auto').replace('  cert: { type: mtls }', '  cert: { type: mtls }\n  sig: { type: hmac, clients: [ { id: a, secret: "0123456789abcdef0123456789abcdef", subject: a } ] }'), /authenticators\.sig\.type: hmac nonces need state shared between workers/],
    ['a rate limit by identity on a policy without one', good.replace('authenticate: none', 'authenticate: none\n    rateLimit: { requests: 10, perSec: 1 }'), /policies\[0\]\.rateLimit\.by: a policy with authenticate: none has no identity to limit: use by: ip$/],
    ['rate limits with several workers', good.replace('  listen: 127.0.0.1:8443', '  listen: 127.0.0.1:8443\n  workers: 2').replace('authenticate: none', 'authenticate: none\n    rateLimit: { requests: 10, perSec: 1, by: ip }'), /policies\[0\]\.rateLimit: rate limits need state shared between workers: with server\.workers other than 1, use store: \{ type: redis/],
    ['a rate limit of 0 requests', good.replace('authenticate: none', 'authenticate: none\n    rateLimit: { requests: 0, perSec: 1, by: ip }'), /policies\[0\]\.rateLimit\.requests: /],
    ['redis store URL that is not redis://', good + 'store: { type: redis, url: "http://127.0.0.1:6379" }\n', /^FILE:22:\d+: store\.url: must be redis:\/\/\[user:password@\]host:port\[\/db\] or rediss:\/\//],
    ['redis store without a URL', good + 'store: { type: redis }\n', /^FILE:22:\d+: store\.url: required \(string\)$/],
    ['redis CA without TLS', good + 'store: { type: redis, url: "redis://127.0.0.1:6379", ca: ca.crt }\n', /^FILE:22:\d+: store\.ca: a CA is for TLS: use a rediss:\/\/ URL$/],
    ['redis CA file missing', good + 'store: { type: redis, url: "rediss://127.0.0.1:6379", ca: nope-ca.crt }\n', /^FILE:22:\d+: store\.ca: cannot read nope-ca\.crt: ENOENT$/],
    ['unknown store type', good + 'store: { type: memcached }\n', /^FILE:22:\d+: store\.type: unknown type; expected one of: memory, redis$/],
    ['CA bundle that is not a CA', good.replace(`ca: ${fx.dir}/ca.crt`, `ca: ${fx.dir}/client-valid.crt`), /tls\.clientAuth\.ca: CN=client-1,OU=payments in .* is not a CA certificate/],
  ];
  for (const [name, text, re] of cases) {
    const errs = errorsOf(text);
    t.ok(errs.some((e) => re.test(e)), `${name}: ${errs.join(' | ') || '(no error)'}`);
  }
});

t.test('server.maxUriBytes follows a smaller maxHeaderBytes unless it is set', async (t) => {
  const loaded = (extra: string) => { const f = join(dir, 'uri.yaml'); writeFileSync(f, good.replace('  listen: 127.0.0.1:8443', `  listen: 127.0.0.1:8443\n${extra}`)); return loadConfig(f).server; };
  t.same([loaded('  maxHeaderBytes: 16384').maxUriBytes, loaded('  maxHeaderBytes: 65536').maxUriBytes], [8192, 8192], 'default 8 KiB');
  t.equal(loaded('  maxHeaderBytes: 4096').maxUriBytes, 2048, 'half of a head limit under 16 KiB: lowering maxHeaderBytes alone loads');
  t.equal(loaded('  maxHeaderBytes: 4096\n  maxUriBytes: 3000').maxUriBytes, 3000, 'set: as set');
});

t.test('hmac with several workers is accepted once nonces live in a shared store', async (t) => {
  const several = good.replace('  listen: 127.0.0.1:8443', '  listen: 127.0.0.1:8443\n  workers: auto').replace('  cert: { type: mtls }', '  cert: { type: mtls }\n  sig: { type: hmac, clients: [ { id: a, secret: "0123456789abcdef0123456789abcdef", subject: a } ] }');
  t.match(errorsOf(several).join(' | '), /hmac nonces need state shared between workers: with server\.workers other than 1, use store: \{ type: redis/, 'store: memory (the default): refused');
  t.same(errorsOf(several + 'store: { type: redis, url: "redis://:${env:REDIS_PASSWORD}@127.0.0.1:6379/2" }\n', { REDIS_PASSWORD: 'pw' }), [], 'store: redis: accepted');
});

// Catalogue TLS-05: a CRL its CA did not sign would make OpenSSL refuse every client of that CA.
t.test('a CRL not signed by its CA is refused at load; one that is loads', async (t) => {
  writeFileSync(join(dir, 'forged.crl'), makeCrl(fx.forgedCa, [])); // same issuer name, another key
  const errs = errorsOf(good.replace(`crl: ${fx.dir}/ca.crl`, `crl: ${join(dir, 'forged.crl')}`));
  t.equal(errs.length, 1);
  t.match(errs[0], /tls\.clientAuth\.crl: CRL of CN=Test Client CA,O=Portcullis test in .*forged\.crl is not signed by that CA's key/);
  writeFileSync(join(dir, 'fresh.crl'), makeCrl(fx.ca, [fx.clients.revoked.serial]));
  t.same(errorsOf(good.replace(`crl: ${fx.dir}/ca.crl`, `crl: ${join(dir, 'fresh.crl')}`)), []);
});

t.test('every CA needs its own CRL when CRLs are configured', async (t) => {
  const other = issue({ cn: 'Partner CA', ca: true });
  writeFileSync(join(dir, 'two-cas.crt'), fx.ca.certPem + other.certPem);
  const errs = errorsOf(good.replace(`ca: ${fx.dir}/ca.crt`, `ca: ${join(dir, 'two-cas.crt')}`));
  t.same(errs, [`FILE:10:10: tls.clientAuth.crl: no CRL for CA "CN=Partner CA": when CRLs are configured, each CA in tls.clientAuth.ca needs its own CRL`]);
  writeFileSync(join(dir, 'two.crl'), makeCrl(fx.ca, []) + makeCrl(other, []));
  t.same(errorsOf(good.replace(`ca: ${fx.dir}/ca.crt`, `ca: ${join(dir, 'two-cas.crt')}`).replace(`crl: ${fx.dir}/ca.crl`, `crl: ${join(dir, 'two.crl')}`)), [], 'one CRL each: fine');
  writeFileSync(join(dir, 'stale.crl'), makeCrl(fx.ca, [], { thisUpdate: new Date(Date.now() - 2e9), nextUpdate: new Date(Date.now() - 1e9) }));
  const stale = errorsOf(good.replace(`crl: ${fx.dir}/ca.crl`, `crl: ${join(dir, 'stale.crl')}`));
  t.match(stale[0], /tls\.clientAuth\.crl: CRL of CN=Test Client CA,O=Portcullis test in .*stale\.crl expired at /);
});

t.test('${env:} and ${file:} references resolve; relative paths resolve against the config folder', async (t) => {
  writeFileSync(join(dir, 'upstream.txt'), 'http://127.0.0.1:9999\n');
  const text = good.replace('http://127.0.0.1:8080', '${file:upstream.txt}').replace('listen: 127.0.0.1:8443', 'listen: ${env:PC_LISTEN}');
  const f = join(dir, 'refs.yaml');
  writeFileSync(f, text);
  const cfg = loadConfig(f, { env: { PC_LISTEN: '127.0.0.1:7443' } });
  t.equal(cfg.upstream.url.href, 'http://127.0.0.1:9999/');
  t.equal(cfg.server.port, 7443);
  t.ok(cfg.files.includes(join(dir, 'upstream.txt')), 'referenced files are watched');
});

t.test('the committed JSON Schema is the one generated from the source', async (t) => {
  const committed = JSON.parse(readFileSync(new URL('../../config/portcullis.schema.json', import.meta.url), 'utf8'));
  t.same(committed, jsonSchema(), 'run `npm run schema` after changing src/config/schema.ts');
});

t.test('the example config is valid', async (t) => {
  // It names files under .demo-like paths; validate the schema part only.
  const { parseConfigText } = await import('../../src/config/load.ts');
  const path = new URL('../../config/portcullis.example.yaml', import.meta.url).pathname;
  t.doesNotThrow(() => parseConfigText(readFileSync(path, 'utf8'), path, {}));
});

t.test('tls.clientAuth.ocsp: defaults, and settings that are refused', async (t) => {
  const withOcsp = (o: string) => good.replace(`    crl: ${fx.dir}/ca.crl\n`, `    crl: ${fx.dir}/ca.crl\n    ocsp: ${o}\n`);
  const f = join(dir, 'ocsp.yaml');
  writeFileSync(f, withOcsp('{}'));
  const s = loadConfig(f).tls.ocsp!.settings;
  t.same({ ...s }, { mode: 'require', timeoutMs: 3000, maxAgeSec: 3600, retrySec: 10, responder: undefined }, 'fail closed by default');
  t.match(errorsOf(withOcsp('{ responder: "ldap://ocsp.example" }')).join(' | '), /tls\.clientAuth\.ocsp\.responder: must be an http:\/\/ or https:\/\/ URL/);
  t.match(errorsOf(withOcsp('{ responder: "http://user:pw@ocsp.example/" }')).join(' | '), /tls\.clientAuth\.ocsp\.responder: must be an http:\/\/ or https:\/\/ URL without credentials/);
  t.match(errorsOf(withOcsp('{ mode: soft }')).join(' | '), /tls\.clientAuth\.ocsp\.mode/);
  t.match(errorsOf(withOcsp('{ timeoutMs: 0 }')).join(' | '), /tls\.clientAuth\.ocsp\.timeoutMs/);
  t.match(errorsOf(withOcsp('{ maxAge: 60 }')).join(' | '), /tls\.clientAuth\.ocsp.*maxAge/, 'an unknown key');
  t.equal(loadConfig(join(dir, 'ocsp.yaml')).tls.ocsp !== undefined, true);
  writeFileSync(f, good);
  t.equal(loadConfig(f).tls.ocsp, undefined, 'off unless configured');
});
