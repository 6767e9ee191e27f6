// store: redis — nonces shared by replicas and workers, against a real redis-server
// on 127.0.0.1: a signed request (the HMAC scheme of shared/seeds/004) accepted by one
// replica is a replay at another; the store going away refuses signed requests with
// 503 and forwards nothing; it is used again when it comes back; `explain` never
// touches it; workers: 2 share it.
import t, { type Test } from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { makeFixture } from '../helpers/pki.ts';
import { seed004, rfc9421Ed25519Post, RFC9421_VECTORS as VEC } from '../helpers/signing.ts';
import { issue } from '../../src/tls/pki.ts';
import { startHarness, request, client, baseConfig, freePort, until, listenUpstream, type Harness } from '../helpers/harness.ts';
import { parseProm, value } from '../helpers/prom.ts';

const fx = makeFixture();
const SECRET = 'partner-a-shared-secret-0123456789';
const PASSWORD = 'redis-pass-Zq7Xw2';
const BIN = new URL('../../bin/portcullis.js', import.meta.url).pathname;
const haveRedis = spawnSync('sh', ['-c', 'command -v redis-server']).status === 0;

/** A throwaway redis-server (no persistence) on `port`, with a password; `tls`: TLS only, on that port. */
async function startRedis(port: number, tls?: { cert: string; key: string }): Promise<ChildProcess> {
  // Not a skip: without Redis these tests fail, and say why.
  if (!haveRedis) throw new Error('redis-server is not installed: apt-get install redis-server (.ci/run installs it)');
  const listen = tls ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', tls.cert, '--tls-key-file', tls.key, '--tls-auth-clients', 'no'] : ['--port', String(port)];
  const p = spawn('redis-server', [...listen, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--requirepass', PASSWORD], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  p.stdout!.on('data', (d) => { out += d; });
  await until('redis-server ready', () => out.includes('Ready to accept connections') || p.exitCode !== null);
  if (p.exitCode !== null) throw new Error(`redis-server exited: ${out}`);
  return p;
}
async function stopRedis(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return;
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await gone;
}

/** The test's own client of the throwaway server, to look at what Portcullis stored. */
async function connectDirect(t: Test, port: number): Promise<Redis> {
  const direct = new Redis({ port, host: '127.0.0.1', password: PASSWORD, lazyConnect: true, maxRetriesPerRequest: 1 });
  direct.on('error', () => { /* while the server is stopped on purpose */ });
  await direct.connect();
  t.teardown(() => direct.disconnect());
  return direct;
}

/** One API key `key` on /api/** (plus `policyExtra` lines), `extra` top-level YAML, and the store. */
const keyedConfig = (key: string, redisPort: number, keyPrefix: string, o: { policyExtra?: string; extra?: string; server?: string } = {}) => baseConfig(`
authenticators:
  keys:
    type: apiKey
    keys: [ { id: k1, hash: "sha256:${createHash('sha256').update(key).digest('hex')}", subject: svc } ]
policies:
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: keys
${o.policyExtra ?? ''}${o.extra ?? ''}
store: { type: redis, url: "redis://:\${env:PORTCULLIS_TEST_REDIS_PASSWORD}@127.0.0.1:${redisPort}/0", keyPrefix: "${keyPrefix}", timeoutMs: 300 }
`, o.server);

const config = (redisPort: number) => baseConfig(`
authenticators:
  cert: { type: mtls }
  rfc9421:
    type: hmac
    scheme: rfc9421
    requiredComponents: ["@method", "@path", "@authority", content-digest]
    requireNonce: true
    clients: [ { id: test-key-ed25519, publicKey: ${VEC}keys/test-key-ed25519.pub.pem, algorithm: ed25519, subject: ed-client } ]
  partner-hmac:
    type: hmac
    clients: [ { id: partner-a, secret: "${SECRET}", subject: partner-a } ]
    headers: { keyId: X-API-Key, timestamp: X-Timestamp, nonce: X-Nonce, signature: X-Signature }
    message: [method, path, timestamp, nonce, body]
    maxSkewSec: 300
policies:
  - name: signed
    match: { paths: ["/signed/**"] }
    authenticate: partner-hmac
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: cert
  - name: strict
    match: { paths: ["/strict/**"] }
    authenticate: rfc9421
store: { type: redis, url: "redis://:\${env:PORTCULLIS_TEST_REDIS_PASSWORD}@127.0.0.1:${redisPort}/0", keyPrefix: "pc-test:", timeoutMs: 300 }
logging: { level: info, access: true }
`);
process.env.PORTCULLIS_TEST_REDIS_PASSWORD = PASSWORD;

// A POST signed by the client of shared/seeds/004 (a fresh nonce each time).
function signed(path: string, body: Record<string, unknown> | undefined) {
  const s = seed004(SECRET, 'POST', path, body);
  return { method: 'POST', path, body: s.payload, headers: s.headers };
}

t.test('store: redis', async (t) => {
  const redisPort = await freePort();
  let redis = await startRedis(redisPort);
  t.teardown(() => stopRedis(redis));
  const direct = await connectDirect(t, redisPort);

  const a: Harness = await startHarness(fx, config(redisPort));
  const b: Harness = await startHarness(fx, config(redisPort));
  t.teardown(() => Promise.all([a.close(), b.close()]));

  t.test('a nonce accepted by one replica is a replay at another, and lives in Redis only for its window', async (t) => {
    const s = signed('/signed/orders', { amount: 10, currency: 'EUR' });
    const first = await request(a, fx, s);
    t.equal(first.status, 200, 'replica A accepts the signed request');
    t.equal(a.seen.length, 1);
    const replay = await request(b, fx, s);
    t.same([replay.status, replay.json?.error?.code], [401, 'AUTH_009'], 'replica B refuses the same request');
    t.equal(b.seen.length, 0, 'nothing forwarded by B');
    const again = await request(a, fx, s);
    t.same([again.status, again.json?.error?.code], [401, 'AUTH_009'], 'and so does A');

    const fresh = signed('/signed/orders', { amount: 11, currency: 'EUR' });
    t.equal((await request(b, fx, fresh)).status, 200, 'a fresh nonce at B is accepted');
    t.same([(await request(a, fx, fresh)).status], [401], '...and is then a replay at A');

    const keys = await direct.keys('pc-test:nonce:partner-hmac:*');
    t.equal(keys.length, 2, 'one key per accepted nonce, under keyPrefix + authenticator');
    for (const k of keys) {
      const ttl = await direct.pttl(k);
      t.ok(ttl > 290_000 && ttl <= 300_000, `expires with the ${300} s window (PTTL ${ttl} ms)`);
    }
    const metrics = parseProm(await fetch(`http://127.0.0.1:${b.adminPort}/metrics`).then((r) => r.text()));
    t.equal(value(metrics.samples, 'portcullis_replays_rejected_total'), 1, 'B counted its replay');
  });

  t.test('RFC 9421: a signature nonce used at one replica is refused at another (http-message-signatures client, Ed25519)', async (t) => {
    const body = JSON.stringify({ order: 7 });
    const o = { method: 'POST', path: '/strict/orders', headers: await rfc9421Ed25519Post('https://a.test/strict/orders', body), body };
    t.equal((await request(a, fx, o)).status, 200, 'replica A accepts it');
    const r = await request(b, fx, o);
    t.same([r.status, r.json?.error?.code], [401, 'AUTH_009'], 'replica B refuses the replay');
    t.equal((await direct.keys('pc-test:nonce:rfc9421:*')).length, 1, 'the nonce is under the rfc9421 authenticator');
  });

  t.test('store hanging: a signed request gets 503 INTERNAL after timeoutMs, not forwarded', async (t) => {
    const before = a.seen.length;
    redis.kill('SIGSTOP');
    const t0 = Date.now();
    const r = await request(a, fx, signed('/signed/orders', { amount: 99 })).finally(() => redis.kill('SIGCONT'));
    t.same([r.status, r.json?.error?.code], [503, 'INTERNAL'], 'refused');
    t.ok(Date.now() - t0 < 2000, `answered within the store timeout, not left hanging (${Date.now() - t0} ms)`);
    t.equal(a.seen.length, before, 'nothing forwarded');
  });

  t.test('store unreachable: signed requests get 503 INTERNAL and are not forwarded; other routes serve; back when it returns', async (t) => {
    await stopRedis(redis);
    const before = a.seen.length;
    const s = signed('/signed/orders', { amount: 12 });
    const r = await request(a, fx, s);
    t.same([r.status, r.json?.error?.code], [503, 'INTERNAL'], 'refused: the nonce could not be checked');
    t.equal(a.seen.length, before, 'nothing forwarded');
    t.equal((await request(a, fx, { path: '/api/x', ...client(fx, 'valid') })).status, 200, 'a route without nonces still serves');
    await until('outage logged', () => a.logs.some((l) => l.msg?.startsWith('nonce store unreachable')));
    const logged = JSON.stringify(a.logs);
    t.notOk(logged.includes(PASSWORD), 'the Redis password is never logged');
    t.match(logged, /redis:\/\/:\*\*\*@127\.0\.0\.1/, 'the URL is logged with its password masked');
    t.ok(a.logs.some((l) => l.msg === 'authentication failed with an internal error' && /nonce store \(redis\) unavailable/.test(l.err?.message)), 'the reason is logged');

    redis = await startRedis(redisPort);
    let status = 0;
    const end = Date.now() + 10_000;
    while (status !== 200 && Date.now() < end) {
      status = (await request(a, fx, signed('/signed/orders', { amount: 13 }))).status;
      if (status !== 200) await new Promise((res) => setTimeout(res, 200));
    }
    t.equal(status, 200, 'signed requests are accepted again once Redis is back');
    t.same((await request(a, fx, s)).status, 200, 'the request refused during the outage was never recorded: it may be sent again');
    t.same((await request(b, fx, s)).status, 401, '...once');
  });

  t.test('portcullis check names the store with its password masked, and does not contact it', async (t) => {
    const connections = async () => Number(/total_connections_received:(\d+)/.exec(await direct.info('stats'))![1]);
    const before = await connections();
    const r = spawnSync(process.execPath, [BIN, 'check', '--config', a.configFile], { encoding: 'utf8' });
    t.equal(r.status, 0, r.stderr);
    t.match(r.stdout, new RegExp(`store  redis redis://:\\*\\*\\*@127\\.0\\.0\\.1:${redisPort}/0`));
    t.notOk(r.stdout.includes(PASSWORD), 'password not printed');
    t.equal(await connections(), before, 'no connection was opened');
  });

  t.test('portcullis explain runs the decision without using up the nonce', async (t) => {
    const s = signed('/signed/explained', undefined);
    const before = (await direct.keys('pc-test:nonce:*')).length;
    const connections = async () => Number(/total_connections_received:(\d+)/.exec(await direct.info('stats'))![1]);
    const opened = await connections();
    const args = ['explain', '--config', a.configFile, 'POST', 'https://a.test/signed/explained'];
    for (const [k, v] of Object.entries(s.headers)) args.push('-H', `${k}: ${v}`);
    const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
    t.match(r.stdout, /result\s+ALLOW/, r.stderr);
    t.equal((await direct.keys('pc-test:nonce:*')).length, before, 'no key written');
    t.equal(await connections(), opened, 'no connection opened');
    t.equal((await request(a, fx, s)).status, 200, 'the explained request is still accepted live');
  });
});

t.test('rediss:// with a private CA (store.ca): verified TLS to Redis; without the CA, signed requests are refused', async (t) => {
  const ca = issue({ cn: 'Redis Test CA', ca: true });
  const server = issue({ cn: 'redis.test', issuer: ca, ips: ['127.0.0.1'], eku: ['serverAuth'] });
  const dir = mkdtempSync(join(fx.dir, 'redis-tls-'));
  for (const [f, v] of [['ca.crt', ca.certPem], ['redis.crt', server.certPem], ['redis.key', server.keyPem]] as const) writeFileSync(join(dir, f), v);
  const redisPort = await freePort();
  const redis = await startRedis(redisPort, { cert: join(dir, 'redis.crt'), key: join(dir, 'redis.key') });
  t.teardown(() => stopRedis(redis));
  const tlsStore = (extra: string) => config(redisPort).replace(/store: \{ type: redis, url: "redis:/, 'store: { type: redis, url: "rediss:').replace('timeoutMs: 300 }', `timeoutMs: 300${extra} }`);

  const trusted = await startHarness(fx, tlsStore(`, ca: ${join(dir, 'ca.crt')}`));
  t.teardown(() => trusted.close());
  const s = signed('/signed/orders', { amount: 1 });
  t.equal((await request(trusted, fx, s)).status, 200, 'accepted over TLS');
  const again = await request(trusted, fx, s);
  t.same([again.status, again.json?.error?.code], [401, 'AUTH_009'], 'the replay is refused: the nonce is in Redis');

  const untrusted = await startHarness(fx, tlsStore(''));
  t.teardown(() => untrusted.close());
  const r = await request(untrusted, fx, signed('/signed/orders', { amount: 2 }));
  t.same([r.status, r.json?.error?.code], [503, 'INTERNAL'], 'the system CAs do not know the Redis CA: refused, not forwarded');
  t.equal(untrusted.seen.length, 0);
  await until('TLS failure logged', () => untrusted.logs.some((l) => l.msg?.startsWith('nonce store unreachable')));
  t.match(untrusted.logs.find((l) => l.msg?.startsWith('nonce store unreachable'))!.reason, /certificate/i, 'the reason names the certificate');
});

t.test('workers: 2 with store: redis — a replay to the other worker is refused; a rate limit is one budget for both', async (t) => {
  const redisPort = await freePort();
  const redis = await startRedis(redisPort);
  t.teardown(() => stopRedis(redis));
  const up = await listenUpstream();
  t.teardown(() => { up.server.closeAllConnections(); up.server.close(); });
  const [port, admin] = [await freePort(), await freePort()];
  const file = join(mkdtempSync(join(fx.dir, 'redis-workers-')), 'p.yaml');
  const limited = 'policies:\n  - name: limited\n    match: { paths: ["/limited/**"] }\n    authenticate: none\n    rateLimit: { requests: 4, perSec: 3600, by: ip }\n';
  writeFileSync(file, config(redisPort).replace('policies:\n', limited).replace('listen: 127.0.0.1:0', `listen: 127.0.0.1:${port}\n  workers: 2`).replaceAll('{{PKI}}', fx.dir).replace('{{UPSTREAM}}', `http://127.0.0.1:${up.port}`) + `admin:\n  listen: 127.0.0.1:${admin}\n`);
  const child = spawn(process.execPath, [BIN, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const lines = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  await until('both workers listening', () => lines().filter((l) => l.msg === 'listening').length === 2);

  const h = { port };
  const statuses: number[] = [];
  for (let i = 0; i < 8; i++) {
    const s = signed(`/signed/${i}`, { i });
    statuses.push((await request(h, fx, s)).status, (await request(h, fx, s)).status);
  }
  t.same(statuses, Array.from({ length: 8 }, () => [200, 401]).flat(), 'every request accepted once, every replay refused');
  t.equal(up.seen.length, 8, 'the upstream saw each signed request once');
  await until('access lines', () => lines().filter((l) => l.msg === 'access').length >= 16);
  const access = lines().filter((l) => l.msg === 'access' && l.policy === 'signed');
  t.equal(new Set(access.map((l) => l.pid)).size, 2, 'both workers served');
  const crossed = Array.from({ length: 8 }, (_, i) => {
    const [ok, replay] = [access.find((l) => l.path === `/signed/${i}` && l.status === 200), access.find((l) => l.path === `/signed/${i}` && l.status === 401)];
    return ok && replay && ok.pid !== replay.pid;
  }).filter(Boolean).length;
  t.ok(crossed > 0, `replays refused by the worker that had not accepted the request: ${crossed} of 8`);

  const limitedStatuses: number[] = [];
  for (let i = 0; i < 6; i++) limitedStatuses.push((await request(h, fx, { path: `/limited/${i}` })).status);
  t.same(limitedStatuses, [200, 200, 200, 200, 429, 429], 'four requests a client IP, counted across both workers');
  await until('access lines for the limited policy', () => lines().filter((l) => l.msg === 'access' && l.policy === 'limited').length >= 6);
  t.equal(new Set(lines().filter((l) => l.msg === 'access' && l.policy === 'limited' && l.status === 200).map((l) => l.pid)).size, 2, 'both workers served some of the four');
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'clean shutdown (Redis connections closed)');
});

// Failure lockout shared by replicas (SPEC §5 AUTH_007): wrong keys spread over two
// replicas add up to one count; the lock reaches every replica; a replica that missed
// the message learns it on the client's next failure; it ends after lockSec; without
// Redis each replica counts on its own.
t.test('lockout with store: redis counts failures across replicas and locks the client out at every one', async (t) => {
  const redisPort = await freePort();
  let redis = await startRedis(redisPort);
  t.teardown(() => stopRedis(redis));
  const direct = await connectDirect(t, redisPort);

  const KEY = 'kapi_prod_sharedlockoutsharedlockout12';
  const yaml = keyedConfig(KEY, redisPort, 'pc-lock:', { extra: 'lockout: { failures: 3, windowSec: 60, lockSec: 2 }', server: '  trustedProxies: [127.0.0.1/32]' });
  const a = await startHarness(fx, yaml);
  const b = await startHarness(fx, yaml);
  t.teardown(() => Promise.all([a.close(), b.close()]));
  const as = (h: Harness, ip: string, key: string) => request(h, fx, { path: '/api/x', headers: { 'x-forwarded-for': ip, 'x-api-key': key } });
  const code = (r: { status: number; json?: any }) => [r.status, r.json?.error?.code];
  const lockouts = async (h: Harness) => value(parseProm(await (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`)).text()).samples, 'portcullis_lockouts_total');
  const wrong = (i: number) => `kapi_prod_wrong${i}wrong${i}wrong${i}wrong${i}wrong${i}`;
  const settle = async (what: string, fn: () => Promise<boolean>) => {
    for (let i = 0; i < 200; i++) { if (await fn()) return; await new Promise((r) => setTimeout(r, 25)); }
    throw new Error(`timed out waiting for ${what}`);
  };

  const ip = '203.0.113.50';
  t.same(code(await as(a, ip, wrong(1))), [401, 'AUTH_004']);
  t.same(code(await as(b, ip, wrong(2))), [401, 'AUTH_004']);
  await settle('two failures counted in Redis', async () => (await direct.get(`pc-lock:lockout:failures:${ip}`)) === '2');
  t.equal(await lockouts(a) ?? 0, 0, 'two failures, one at each replica: not locked yet');
  t.same(code(await as(a, ip, wrong(3))), [401, 'AUTH_004'], 'the third failure is answered as such');
  await settle('the lock key', async () => (await direct.pttl(`pc-lock:lockout:lock:${ip}`)) > 0);
  await new Promise((r) => setTimeout(r, 100)); // the published lock reaches B
  const before = a.seen.length + b.seen.length;
  for (const h of [a, b]) {
    const r = await as(h, ip, KEY);
    t.same(code(r), [429, 'AUTH_007'], 'the right key is refused at both replicas');
    t.ok(Number(r.headers['retry-after']) >= 1 && Number(r.headers['retry-after']) <= 2, 'Retry-After: the lock\'s remaining seconds');
  }
  t.equal(a.seen.length + b.seen.length, before, 'nothing forwarded');
  t.equal(await lockouts(a), 1, 'the replica whose failure locked the client counts the lockout');
  t.equal(await lockouts(b) ?? 0, 0, 'the other one does not count it again');
  t.ok(a.logs.some((l) => l.msg === 'client locked out after repeated authentication failures' && l.clientIp === ip));
  t.equal((await as(a, '203.0.113.51', KEY)).status, 200, 'another client is served');

  // A replica that was not listening when the lock was published learns it from Redis at
  // the client's next failure there.
  const c = await startHarness(fx, yaml);
  t.teardown(() => c.close());
  t.same(code(await as(c, ip, wrong(4))), [401, 'AUTH_004'], 'the new replica judges this request itself');
  await settle('the new replica learns the lock', async () => code(await as(c, ip, wrong(5)))[0] === 429);
  t.same(code(await as(c, ip, KEY)), [429, 'AUTH_007'], 'and refuses the right key too');

  await settle('the lock ends after lockSec', async () => (await as(a, ip, KEY)).status === 200);
  t.equal((await as(b, ip, KEY)).status, 200, 'at every replica');

  // Redis gone: each replica counts alone, still locking after `failures` at it.
  await stopRedis(redis);
  const ip2 = '203.0.113.60';
  for (let i = 0; i < 3; i++) t.same(code(await as(a, ip2, wrong(i))), [401, 'AUTH_004']);
  await settle('counted locally without Redis', async () => code(await as(a, ip2, KEY))[0] === 429);
  t.equal((await as(b, ip2, KEY)).status, 200, 'only at the replica that saw the failures');

  // A replica started while Redis is down subscribes once it is back; A re-subscribes.
  const d = await startHarness(fx, yaml);
  t.teardown(() => d.close());
  redis = await startRedis(redisPort);
  await settle('all four replicas subscribed again', async () => {
    const r = await direct.pubsub('NUMSUB', 'pc-lock:lockout').catch(() => []) as [string, number];
    return Number(r[1]) === 4;
  });
  const ip3 = '203.0.113.70';
  await settle('Redis counts again', async () => {
    await as(a, ip3, wrong(7));
    return (await direct.pttl(`pc-lock:lockout:lock:${ip3}`).catch(() => -2)) > 0;
  });
  await settle('the lock reaches the replica that started without Redis', async () => code(await as(d, ip3, KEY))[0] === 429);
  t.pass('published to a replica that subscribed after Redis came back');
});

// Rate limits shared by replicas: one bucket per caller in Redis, timed by Redis' clock;
// without Redis each replica counts on its own.
t.test('rateLimit with store: redis: one budget per caller across replicas', async (t) => {
  const redisPort = await freePort();
  let redis = await startRedis(redisPort);
  t.teardown(() => stopRedis(redis));
  const KEY = 'kapi_prod_sharedratelimitsharedratelimit1';
  const yaml = keyedConfig(KEY, redisPort, 'pc-rl:', { policyExtra: '    rateLimit: { requests: 3, perSec: 3600 }\n' });
  const a = await startHarness(fx, yaml);
  const b = await startHarness(fx, yaml);
  t.teardown(() => Promise.all([a.close(), b.close()]));
  const get = (h: Harness) => request(h, fx, { path: '/api/x', headers: { 'x-api-key': KEY } });
  t.same([(await get(a)).status, (await get(b)).status, (await get(a)).status], [200, 200, 200], 'three requests, at either replica');
  for (const h of [a, b]) {
    const r = await get(h);
    t.same([r.status, r.json?.error?.code], [429, 'AUTH_007'], 'the fourth is refused at both');
    t.equal(r.headers['retry-after'], '1200', 'Retry-After: one request every 1200 s');
  }

  await stopRedis(redis);
  const r = await get(a);
  t.equal(r.status, 200, 'Redis gone: this replica\'s own bucket decides (still full)');
  t.ok(a.logs.some((l) => l.msg === 'rate-limit store (redis) not answering: limits are counted in this process until it does'), 'and says so');
  for (let i = 0; i < 2; i++) await get(a);
  t.equal((await get(a)).status, 429, 'and still limits, per process');
  redis = await startRedis(redisPort);
});
