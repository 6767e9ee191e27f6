// Rate limits (SPEC §5 AUTH_007 "rate limited"): a policy's `rateLimit` lets each caller
// make `requests` requests per `perSec` seconds; one more gets 429 AUTH_007 with
// Retry-After and is not forwarded. By identity (the API key's id here), or by client IP
// before any authenticator runs; report-only policies log and forward. Client IPs come
// from X-Forwarded-For, believed from 127.0.0.1; the clock is the harness's, moved by hand.
import t from 'tap';
import { createHash } from 'node:crypto';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, baseConfig, type Harness } from '../helpers/harness.ts';
import { parseProm, value } from '../helpers/prom.ts';

const fx = makeFixture();
const KEY_A = 'kapi_prod_ratelimitAratelimitAratelimitA1';
const KEY_B = 'kapi_prod_ratelimitBratelimitBratelimitB1';
const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const yaml = baseConfig(`
authenticators:
  keys:
    type: apiKey
    keys:
      - { id: key-a, hash: "sha256:${sha(KEY_A)}", subject: shared-subject }
      - { id: key-b, hash: "sha256:${sha(KEY_B)}", subject: shared-subject }
policies:
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: keys
    rateLimit: { requests: 3, perSec: 60 }
  - name: login
    match: { paths: ["/login/**"] }
    authenticate: keys
    rateLimit: { requests: 2, perSec: 10, by: ip }
  - name: public
    match: { paths: ["/public/**"] }
    authenticate: none
    rateLimit: { requests: 2, perSec: 10, by: ip }
  - name: trial
    match: { paths: ["/trial/**"] }
    authenticate: keys
    mode: report-only
    rateLimit: { requests: 1, perSec: 60 }
`, '  trustedProxies: [127.0.0.1/32]');

let clock = Date.now();
let h: Harness;
t.before(async () => { h = await startHarness(fx, yaml, { now: () => clock }); });
t.teardown(() => h.close());

const get = (path: string, ip: string, key?: string) => request(h, fx, { path, headers: { 'x-forwarded-for': ip, ...(key ? { 'x-api-key': key } : {}) } });
const code = (r: { status: number; json?: any }) => [r.status, r.json?.error?.code];
const metrics = async () => parseProm(await (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`)).text()).samples;

t.test('by identity: each API key gets 3 requests a minute, then 429 AUTH_007 with Retry-After; nothing over the limit is forwarded', async (t) => {
  for (let i = 0; i < 3; i++) t.equal((await get('/api/x', '203.0.113.1', KEY_A)).status, 200, `request ${i + 1} of 3`);
  const before = h.seen.length;
  const r = await get('/api/x', '203.0.113.2', KEY_A);
  t.same(code(r), [429, 'AUTH_007'], 'the fourth, even from another IP');
  t.equal(r.headers['retry-after'], '20', 'Retry-After: one request every 20 s');
  t.equal(h.seen.length, before, 'not forwarded');
  t.equal((await get('/api/x', '203.0.113.1', KEY_B)).status, 200, 'another key with the same subject has its own budget');
  const audit = h.logs.findLast((l) => l.msg === 'denied');
  t.match(audit, { code: 'AUTH_007', policy: 'api' });
  t.match(audit?.reason, /rate limit: key key-a made more than 3 requests in 60 s/);
  t.notOk(JSON.stringify(h.logs).includes(KEY_A), 'the key itself is never logged');

  clock += 20_000;
  t.equal((await get('/api/x', '203.0.113.1', KEY_A)).status, 200, '20 s later: one more');
  t.same(code(await get('/api/x', '203.0.113.1', KEY_A)), [429, 'AUTH_007'], 'and only one');
  const m = await metrics();
  t.equal(value(m, 'portcullis_requests_total', { policy: 'api', outcome: 'deny', code: 'AUTH_007' }), 2);
});

t.test('a request that fails authentication is answered as such and uses no budget', async (t) => {
  const wrong = 'kapi_prod_wrongwrongwrongwrongwrongwrong1';
  clock += 60_000;
  for (let i = 0; i < 5; i++) t.same(code(await get('/api/x', '203.0.113.3', wrong)), [401, 'AUTH_004']);
  for (let i = 0; i < 3; i++) t.equal((await get('/api/x', '203.0.113.3', KEY_B)).status, 200, 'the key still has its 3');
});

t.test('by ip: refused before the body is read or any authenticator runs, per client IP', async (t) => {
  const authRuns = async () => value(await metrics(), 'portcullis_auth_results_total', { authenticator: 'keys', result: 'allow', code: '' }) ?? 0;
  t.equal((await get('/login/x', '198.51.100.1', KEY_A)).status, 200);
  t.equal((await get('/login/x', '198.51.100.1', 'kapi_prod_wrongwrongwrongwrongwrongwrong1')).status, 401, 'a failed request counts too: it reached the proxy');
  const runs = await authRuns();
  const r = await get('/login/x', '198.51.100.1', KEY_A);
  t.same(code(r), [429, 'AUTH_007'], 'the third request from the IP');
  t.equal(r.headers['retry-after'], '5');
  t.equal(await authRuns(), runs, 'no authenticator ran for it');
  t.equal((await get('/login/x', '198.51.100.2', KEY_A)).status, 200, 'another IP is served');

  t.equal((await get('/public/x', '198.51.100.3')).status, 200);
  t.equal((await get('/public/x', '198.51.100.3')).status, 200);
  t.same(code(await get('/public/x', '198.51.100.3')), [429, 'AUTH_007'], 'a policy with authenticate: none is limited by IP too');
  clock += 5_000;
  t.equal((await get('/public/x', '198.51.100.3')).status, 200, 'a token back after 5 s');
});

t.test('report-only: over the limit is logged as a would-be denial and forwarded', async (t) => {
  t.equal((await get('/trial/x', '192.0.2.1', KEY_A)).status, 200);
  const before = h.seen.length;
  const r = await get('/trial/x', '192.0.2.1', KEY_A);
  t.equal(r.status, 200, 'forwarded anyway');
  t.equal(h.seen.length, before + 1);
  t.match(h.logs.findLast((l) => l.msg === 'would deny (report-only)'), { code: 'AUTH_007', policy: 'trial' });
});
