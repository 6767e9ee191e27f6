// Failure lockout (SPEC §5 AUTH_007): a client IP that presents wrong credentials
// `failures` times within `windowSec` gets 429 AUTH_007 with Retry-After for `lockSec`,
// even with the right credential; other clients, open routes and exempt IPs are not
// affected; missing, malformed and expired credentials do not count. Client IPs come from
// X-Forwarded-For, believed from 127.0.0.1 (server.trustedProxies); the clock is the
// harness's, moved by hand.
import t from 'tap';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, baseConfig, until, type Harness } from '../helpers/harness.ts';
import { parseProm, value } from '../helpers/prom.ts';

const fx = makeFixture();
const KEY = 'kapi_prod_lockoutlockoutlockoutlockout12';
const EXPIRED = 'kapi_prod_expiredexpiredexpiredexpired12';
const WRONG = ['kapi_prod_guess1guess1guess1guess1guess1', 'kapi_prod_guess2guess2guess2guess2guess2', 'kapi_prod_guess3guess3guess3guess3guess3'];
const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const yaml = baseConfig(`
authenticators:
  keys:
    type: apiKey
    keys:
      - { id: k1, hash: "sha256:${sha(KEY)}", subject: svc }
      - { id: old, hash: "sha256:${sha(EXPIRED)}", subject: svc, expiresAt: "2020-01-01T00:00:00Z" }
policies:
  - name: open
    match: { paths: ["/open/**"] }
    authenticate: none
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: keys
lockout: { failures: 3, windowSec: 60, lockSec: 120, exemptIps: [198.51.100.0/24] }
`, '  trustedProxies: [127.0.0.1/32]');

let clock = Date.now();
let h: Harness;
t.before(async () => { h = await startHarness(fx, yaml, { now: () => clock }); });
t.teardown(() => h.close());

const as = (ip: string, key?: string, path = '/api/x') => request(h, fx, { path, headers: { 'x-forwarded-for': ip, ...(key ? { 'x-api-key': key } : {}) } });
const code = (r: { json?: any }) => r.json?.error?.code;
const metrics = async () => parseProm(await (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`)).text()).samples;

t.test('three wrong keys lock the client IP out: 429 AUTH_007 with Retry-After, even with the right key, nothing forwarded', async (t) => {
  const ip = '203.0.113.7';
  for (const k of WRONG) {
    const r = await as(ip, k);
    t.same([r.status, code(r)], [401, 'AUTH_004'], 'each wrong key is answered as such, the third too');
  }
  const before = h.seen.length;
  const r = await as(ip, KEY);
  t.same([r.status, code(r)], [429, 'AUTH_007'], 'the right key is refused while the lock holds');
  t.equal(r.headers['retry-after'], '120', 'Retry-After: the lock\'s remaining seconds');
  t.equal(h.seen.length, before, 'the upstream saw nothing');
  clock += 100_000;
  t.equal((await as(ip, KEY)).headers['retry-after'], '20', 'Retry-After counts down');

  t.equal((await as('203.0.113.8', KEY)).status, 200, 'another client IP is not affected');
  t.equal((await as(ip, undefined, '/open/x')).status, 200, 'a route with authenticate: none still serves the locked IP');

  const locked = h.logs.filter((l) => l.msg === 'client locked out after repeated authentication failures');
  t.equal(locked.length, 1, 'one log line for the lock');
  t.match(locked[0], { clientIp: ip, policy: 'api', code: 'AUTH_004', failures: 3, windowSec: 60, lockSec: 120 });
  const all = JSON.stringify(h.logs);
  for (const k of [KEY, ...WRONG]) t.notOk(all.includes(k), 'no key in any log line');
  const m = await metrics();
  t.equal(value(m, 'portcullis_lockouts_total'), 1);
  t.equal(value(m, 'portcullis_requests_total', { policy: 'api', outcome: 'deny', code: 'AUTH_007' }), 2);

  clock += 20_001;
  t.equal((await as(ip, KEY)).status, 200, 'once the lock has run out, the right key passes');
});

t.test('missing, expired and unknown-IP-exempt failures never lock', async (t) => {
  for (let i = 0; i < 5; i++) t.same(code(await as('203.0.113.9')), 'AUTH_003', 'no key: AUTH_003, not counted');
  for (let i = 0; i < 5; i++) t.same(code(await as('203.0.113.9', EXPIRED)), 'AUTH_002', 'an expired key: AUTH_002, not counted');
  t.equal((await as('203.0.113.9', KEY)).status, 200, 'still served');
  for (let i = 0; i < 5; i++) t.same(code(await as('198.51.100.20', WRONG[0])), 'AUTH_004', 'an exempt IP: its failures answered, never locked');
  t.equal((await as('198.51.100.20', KEY)).status, 200);
});

t.test('failures spread wider than windowSec do not add up', async (t) => {
  const ip = '203.0.113.10';
  for (let i = 0; i < 4; i++) {
    t.equal(code(await as(ip, WRONG[0])), 'AUTH_004');
    if (i % 2 === 1) clock += 61_000; // two failures per window, at most
  }
  t.equal((await as(ip, KEY)).status, 200, 'four failures, never three within 60 s: not locked');
});

t.test('a lock survives a config reload', async (t) => {
  const ip = '203.0.113.11';
  for (const k of WRONG) await as(ip, k);
  t.equal((await as(ip, KEY)).status, 429);
  const reloads = h.logs.filter((l) => l.msg === 'config reloaded').length;
  writeFileSync(h.configFile, readFileSync(h.configFile, 'utf8').replace('policies:\n', 'policies:\n  - name: later\n    match: { paths: ["/later/**"] }\n    authenticate: none\n'));
  await until('reload', () => h.logs.filter((l) => l.msg === 'config reloaded').length > reloads);
  t.equal((await as(ip, undefined, '/later/x')).status, 200, 'the new config serves');
  const r = await as(ip, KEY);
  t.same([r.status, code(r)], [429, 'AUTH_007'], 'and the lock still holds');
});
