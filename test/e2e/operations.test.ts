// Operations: /metrics parsed as Prometheus text, access and audit logs, hot
// reload (policy change on a live connection, broken YAML, certificate
// replacement, Kubernetes symlink swap), and drain on SIGTERM.
import t from 'tap';
import https from 'node:https';
import tls from 'node:tls';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync, symlinkSync, renameSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate, createHash } from 'node:crypto';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, client, baseConfig, listenUpstream, OPEN_AND_CERT_POLICIES, freePort, until, rawTls } from '../helpers/harness.ts';
import { parseProm, value } from '../helpers/prom.ts';
import { seed004 } from '../helpers/signing.ts';
import { issue } from '../../src/tls/pki.ts';

const fx = makeFixture();
const policies = OPEN_AND_CERT_POLICIES;
const promtool = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' }).stdout.trim();


t.test('/metrics: Prometheus text with counters that move, bounded labels', async (t) => {
  const h = await startHarness(fx, baseConfig(policies()));
  t.teardown(() => h.close());
  const scrape = async () => parseProm(await (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`)).text());
  const before = await scrape();
  t.equal(before.types.get('portcullis_requests_total'), 'counter');
  t.equal(before.types.get('portcullis_auth_duration_seconds'), 'histogram');
  for (const name of ['portcullis_request_duration_seconds', 'portcullis_upstream_duration_seconds']) t.equal(before.types.get(name), 'histogram', name);
  for (const name of ['portcullis_tls_handshakes_total', 'portcullis_client_cert_verifications_total', 'portcullis_config_reloads_total', 'portcullis_replays_rejected_total', 'portcullis_jwks_refresh_total']) t.equal(before.types.get(name), 'counter', name);
  t.ok(before.types.has('portcullis_process_cpu_user_seconds_total'), 'process metrics');
  const notAfter = Date.parse(new X509Certificate(fx.servers.a.certPem).validTo) / 1000;
  t.equal(value(before.samples, 'portcullis_certificate_expiry_timestamp_seconds', { name: 'a.test', role: 'server' }), notAfter);
  t.ok(value(before.samples, 'portcullis_certificate_expiry_timestamp_seconds', { role: 'client_ca' }));
  t.ok(value(before.samples, 'portcullis_certificate_expiry_timestamp_seconds', { role: 'crl' }));
  t.equal(value(before.samples, 'portcullis_config_reloads_total', { result: 'success' }), 1);

  await request(h, fx, { path: '/api/secret-path-1', ...client(fx, 'valid') });
  await request(h, fx, { path: '/api/secret-path-2', ...client(fx, 'valid') });
  await request(h, fx, { path: '/api/x', ...client(fx, 'expired') });
  await request(h, fx, { path: '/nowhere' });
  const after = await scrape();
  t.equal(value(after.samples, 'portcullis_requests_total', { policy: 'api', outcome: 'allow' }), 2);
  t.equal(value(after.samples, 'portcullis_requests_total', { policy: 'api', outcome: 'deny', code: 'AUTH_002' }), 1);
  t.equal(value(after.samples, 'portcullis_requests_total', { policy: 'none', outcome: 'deny', code: 'AUTH_011' }), 1);
  t.equal(value(after.samples, 'portcullis_tls_handshakes_total', { sni: 'a.test', result: 'ok' }), 4);
  t.equal(value(after.samples, 'portcullis_client_cert_verifications_total', { result: 'verified' }), 2);
  t.equal(value(after.samples, 'portcullis_client_cert_verifications_total', { result: 'expired' }), 1);
  t.equal(value(after.samples, 'portcullis_auth_duration_seconds_count', { authenticator: 'cert' }), 3);
  t.ok((value(after.samples, 'portcullis_auth_duration_seconds_bucket', { authenticator: 'cert', le: '0.001' }) ?? 0) >= 1, 'sub-millisecond buckets');
  t.equal(value(after.samples, 'portcullis_auth_results_total', { authenticator: 'cert', result: 'allow', code: '' }), 2, 'each authenticator\'s verdicts, by result');
  t.equal(value(after.samples, 'portcullis_auth_results_total', { authenticator: 'cert', result: 'deny', code: 'AUTH_002' }), 1, 'and by code');
  t.equal(value(after.samples, 'portcullis_upstream_duration_seconds_count'), 2);
  // Histogram shape: cumulative buckets, +Inf equal to _count, a _sum.
  const buckets = after.samples.filter((s) => s.name === 'portcullis_request_duration_seconds_bucket' && s.labels.policy === 'api');
  t.equal(buckets.length, 16, '15 bounds and +Inf');
  t.ok(buckets.every((b, i) => i === 0 || b.value >= buckets[i - 1]!.value), 'cumulative');
  t.equal(buckets.at(-1)!.labels.le, '+Inf');
  t.equal(buckets.at(-1)!.value, value(after.samples, 'portcullis_request_duration_seconds_count', { policy: 'api' }));
  t.equal(value(after.samples, 'portcullis_request_duration_seconds_count', { policy: 'api' }), 3);
  t.ok(value(after.samples, 'portcullis_request_duration_seconds_sum', { policy: 'api' })! > 0, 'a _sum');
  t.ok(value(after.samples, 'portcullis_open_connections')! >= 0, 'open connections gauge');
  const text = JSON.stringify(after.samples.map((s) => s.labels));
  for (const leak of ['secret-path', 'client-1', '/api']) t.notOk(text.includes(leak), `no "${leak}" in any label`);
  // Catalogue MET-02: the exposition passes Prometheus' own linter (naming: counters and only
  // counters end in _total, base units). Not a skip: without promtool this fails and says why.
  const exposition = await (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`)).text();
  if (!promtool) t.fail('promtool is not installed: apt-get install prometheus (.ci/run installs it)');
  else {
    const lint = spawnSync(promtool, ['check', 'metrics'], { input: exposition, encoding: 'utf8' });
    t.equal(lint.status, 0, `promtool check metrics: ${(lint.stdout + lint.stderr).trim() || 'clean'}`);
    t.equal((lint.stdout + lint.stderr).trim(), '', 'no lint findings');
  }
  const ready = await fetch(`http://127.0.0.1:${h.adminPort}/readyz`);
  t.equal(ready.status, 200);
  t.equal((await fetch(`http://127.0.0.1:${h.adminPort}/healthz`)).status, 200);
});

// Catalogue MET-03: exactly one count per request and outcome, under faults too. A batch of
// requests with known outcomes (allowed, each kind of denial, upstream timeout and reset, a
// client that left, and heads Node's parser refuses before there is a request) moves
// requests_total by exactly what was sent, and every one has its access line.
t.test('metrics under faults: one count per request and outcome, parser refusals included', async (t) => {
  const h = await startHarness(fx, baseConfig(policies(), '  maxHeaderBytes: 4096\n  timeouts: { headersMs: 400 }'), {
    upstreamHandler: (req, res) => {
      req.resume();
      if (req.url === '/api/slow') { setTimeout(() => { if (!res.destroyed) res.end('late'); }, 1500); return; }
      if (req.url === '/api/reset') { req.socket.destroy(); return; }
      if (req.url === '/api/hang') return;
      res.end('ok');
    },
  });
  t.teardown(() => h.close());
  const scrape = async () => parseProm(await (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`)).text()).samples;
  const count = (samples: Awaited<ReturnType<typeof scrape>>, name: string) => new Map(samples.filter((s) => s.name === name).map((s) => [JSON.stringify(s.labels), s.value]));
  const before = await scrape();
  const c = client(fx, 'valid');
  const st = (o: Parameters<typeof request>[2]) => request(h, fx, o).then((r) => [r.status, r.json?.error?.code ?? '', r.json?.error?.requestId], (e: Error) => [e.message]);
  const results = [
    await st({ path: '/api/ok', ...c }), await st({ path: '/api/ok', ...c }), await st({ path: '/open/x' }),
    await st({ path: '/api/ok' }), await st({ path: '/api/ok', ...client(fx, 'expired') }), await st({ path: '/nowhere' }),
    await st({ path: '/api/slow', ...c }), await st({ path: '/api/reset', ...c }),
    await st({ path: '/api/hang', ...c, onSocket: (s) => { setTimeout(() => s.destroy(), 200); } }),
    await st({ path: '/api/%00', ...c }),
    await st({ path: '/api/ok', ...c, headers: { 'x-big': 'a'.repeat(5000) } }),
  ];
  const raw = [
    await rawTls(h, fx, 'GET /api/ok HTTP/1.1\r\nHost: a.test\r\nBad Header: x\r\n\r\n', c),
    await rawTls(h, fx, 'GET /api/ok HTTP/1.1\r\nHost: a.test\r\nX-Slow: ', { ...c, waitMs: 3000 }),
  ];
  t.same(results.map((r) => r.slice(0, 2)), [
    [200, ''], [200, ''], [200, ''], [401, 'AUTH_010'], [401, 'AUTH_002'], [403, 'AUTH_011'],
    [504, 'UPSTREAM_TIMEOUT'], [502, 'UPSTREAM_UNAVAILABLE'], ['socket hang up'], [400, 'BAD_REQUEST'], [431, 'HEADERS_TOO_LARGE'],
  ], 'what the clients saw');
  t.match(raw[0], /^HTTP\/1\.1 400 Bad Request\r\n[^]*"code":"BAD_REQUEST"/, 'a malformed header line: 400');
  t.match(raw[1], /^HTTP\/1\.1 408 Request Timeout\r\n[^]*"code":"REQUEST_TIMEOUT"/, 'a head not finished within headersMs: 408 REQUEST_TIMEOUT');
  await until('every access line', () => h.logs.filter((l) => l.msg === 'access').length >= 13);
  const after = await scrape();

  const moved = new Map<string, number>();
  for (const [k, v] of count(after, 'portcullis_requests_total')) { const d = v - (count(before, 'portcullis_requests_total').get(k) ?? 0); if (d) moved.set(k, d); }
  const key = (policy: string, outcome: string, code: string) => JSON.stringify({ policy, outcome, code });
  t.same(Object.fromEntries(moved), Object.fromEntries([
    [key('api', 'allow', ''), 3], // two served, one whose client left (499 in its access line)
    [key('open', 'allow', ''), 1],
    [key('api', 'deny', 'AUTH_010'), 1], [key('api', 'deny', 'AUTH_002'), 1], [key('none', 'deny', 'AUTH_011'), 1],
    [key('api', 'allow', 'UPSTREAM_TIMEOUT'), 1], [key('api', 'allow', 'UPSTREAM_UNAVAILABLE'), 1],
    [key('none', 'error', 'BAD_REQUEST'), 2], [key('none', 'error', 'HEADERS_TOO_LARGE'), 1], [key('none', 'error', 'REQUEST_TIMEOUT'), 1],
  ]), 'requests_total moved by exactly one per request, by outcome and code');
  const total = [...moved.values()].reduce((a, b) => a + b, 0);
  t.equal(total, results.length + raw.length, `${total} counts for ${results.length + raw.length} requests`);
  const durations = [...count(after, 'portcullis_request_duration_seconds_count').entries()].reduce((a, [k, v]) => a + v - (count(before, 'portcullis_request_duration_seconds_count').get(k) ?? 0), 0);
  t.equal(durations, total, 'request_duration_seconds observed once per request');
  t.same(Object.fromEntries(count(after, 'portcullis_upstream_errors_total')), { [JSON.stringify({ reason: 'timeout' })]: 1, [JSON.stringify({ reason: 'reset' })]: 1 }, 'upstream errors by reason');
  const access = h.logs.filter((l) => l.msg === 'access');
  t.equal(access.length, total, 'one access line per request');
  t.same(access.filter((l) => l.path === '/api/hang').map((l) => l.status), [499], 'the client that left: 499');
  // A refusal before there was a request names itself to the client and in the log.
  const big = results[10]![2] as string;
  t.match(big, /^[0-9a-f-]{36}$/, 'the 431 carries a request id');
  const bad = h.logs.find((l) => l.msg === 'bad request' && l.requestId === big);
  t.match(bad, { code: 'HEADERS_TOO_LARGE', reason: 'request head over server.maxHeaderBytes (4096)', clientIp: '127.0.0.1' }, 'logged with the reason and the address');
  t.match(access.find((l) => l.requestId === big), { status: 431, code: 'HEADERS_TOO_LARGE', policy: 'none', clientIp: '127.0.0.1' });
  t.match(h.logs.find((l) => l.msg === 'bad request' && l.code === 'BAD_REQUEST' && /malformed request head/.test(l.reason))?.reason, /^malformed request head: .+ \(HPE_/, 'the parser\'s reason for a malformed head');
  t.notMatch(JSON.stringify(h.logs), /aaaaaaaaaa/, 'the refused header\'s value is not logged');
});

t.test('logs: one access line per request, an audit line per denial, startup line', async (t) => {
  const h = await startHarness(fx, baseConfig(policies()));
  t.teardown(() => h.close());
  t.ok(h.logs.find((l) => l.msg === 'listening'));
  const ids: string[] = [];
  for (const o of [{ path: '/open/a' }, { path: '/api/b', ...client(fx, 'valid') }, { path: '/api/c' }, { path: '/zzz' }]) {
    const r = await request(h, fx, o);
    ids.push(String(r.headers['x-request-id']));
  }
  await until('access lines', () => h.logs.filter((l) => l.msg === 'access').length >= 4);
  const access = h.logs.filter((l) => l.msg === 'access');
  t.same(access.map((l) => l.requestId), ids, 'one access line per request, in order');
  const b = access[1]!;
  t.same([b.policy, b.outcome, b.status, b.subject, b.method, b.path], ['api', 'allow', 200, 'client-1', 'GET', '/api/b']);
  t.same(b.authenticators, ['cert']);
  t.type(b.durationMs, 'number');
  const audits = h.logs.filter((l) => l.msg === 'denied');
  t.same(audits.map((l) => [l.requestId, l.code]), [[ids[2], 'AUTH_010'], [ids[3], 'AUTH_011']]);
  t.ok(h.logs.every((l) => typeof l.time === 'string' && typeof l.level === 'string'), 'JSON lines with time and level');
});

t.test('reload: a policy change applies on a live keep-alive connection; broken YAML is refused and the old config serves', async (t) => {
  const h = await startHarness(fx, baseConfig(policies()));
  t.teardown(() => h.close());
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: fx.ca.certPem, servername: 'a.test', checkServerIdentity: () => undefined });
  t.teardown(() => agent.destroy());
  const get = (path: string) => new Promise<{ status: number; reused: boolean }>((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: h.port, path, agent, headers: { host: 'a.test' } }, (res) => { res.resume(); res.on('end', () => resolve({ status: res.statusCode!, reused: req.reusedSocket })); });
    req.on('error', reject);
    req.end();
  });
  t.equal((await get('/open/x')).status, 200);
  t.equal((await get('/later/x')).status, 403);
  const text = readFileSync(h.configFile, 'utf8');
  writeFileSync(h.configFile, text.replace('policies:\n', 'policies:\n  - name: later\n    match: { paths: ["/later/**"] }\n    authenticate: none\n'));
  await until('reload', () => h.logs.some((l) => l.msg === 'config reloaded'));
  const r = await get('/later/x');
  t.equal(r.status, 200, 'new policy in force');
  t.ok(r.reused, 'on the same connection: nothing was dropped');
  const metrics = async () => parseProm(await (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`)).text()).samples;
  const good = await metrics();
  t.equal(value(good, 'portcullis_config_last_reload_successful'), 1, 'the reload is reported successful');
  const goodAt = value(good, 'portcullis_config_last_reload_success_timestamp_seconds');

  writeFileSync(h.configFile, text + '\n  - name: [broken\n');
  await until('refusal', () => h.logs.some((l) => l.msg?.startsWith('config reload refused')));
  const refused = h.logs.find((l) => l.msg?.startsWith('config reload refused'))!;
  t.match(refused.issues[0], /portcullis\.yaml:\d+:\d+: /, 'the refusal names file:line:col');
  t.equal((await get('/later/x')).status, 200, 'the last good config keeps serving');
  const m = await metrics();
  t.equal(value(m, 'portcullis_config_reloads_total', { result: 'failure' }), 1);
  t.equal(value(m, 'portcullis_config_last_reload_successful'), 0, 'the refusal flips config_last_reload_successful to 0 (catalogue CFG-01)');
  t.equal(value(m, 'portcullis_config_last_reload_success_timestamp_seconds'), goodAt, 'the success timestamp still names the serving config');
  t.equal((await fetch(`http://127.0.0.1:${h.adminPort}/readyz`)).status, 200, '/readyz stays 200');

  const reloads = h.logs.filter((l) => l.msg === 'config reloaded').length;
  writeFileSync(h.configFile, text);
  await until('the fixed file reloads', () => h.logs.filter((l) => l.msg === 'config reloaded').length > reloads);
  t.equal(value(await metrics(), 'portcullis_config_last_reload_successful'), 1, 'a good reload sets it back to 1');
  t.equal((await get('/later/x')).status, 403, 'the fixed file is in force');
});

// Catalogue CFG-08: a file rewritten 100 times a second reloads a handful of times, not 100,
// and the last content wins.
t.test('reload storm: 100 writes in a second are debounced into few reloads, the last one in force', async (t) => {
  const h = await startHarness(fx, baseConfig(policies()));
  t.teardown(() => h.close());
  const text = readFileSync(h.configFile, 'utf8');
  for (let i = 0; i < 100; i++) {
    writeFileSync(h.configFile, text.replace('policies:\n', `policies:\n  - name: storm-${i}\n    match: { paths: ["/storm-${i}/**"] }\n    authenticate: none\n`));
    await new Promise((r) => setTimeout(r, 10));
  }
  await until('the last write in force', () => h.server.config.policies.some((p) => p.name === 'storm-99'));
  await new Promise((r) => setTimeout(r, 1000));
  const m = parseProm(await (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`)).text());
  const reloads = (value(m.samples, 'portcullis_config_reloads_total', { result: 'success' }) ?? 0) - 1; // the start counts once
  t.ok(reloads >= 1 && reloads <= 5, `${reloads} reloads for 100 writes`);
  t.equal(value(m.samples, 'portcullis_config_reloads_total', { result: 'failure' }) ?? 0, 0, 'no half-written file was ever loaded');
  t.equal((await request(h, fx, { path: '/storm-99/x' })).status, 200);
});

// Catalogue CFG-06 (ghostunnel test-server-reload-under-load): six keep-alive clients send
// requests without pause while the config is reloaded back and forth, three with an API key
// and three with seed 004's signed POST (whose body is read before the verdict). The two
// versions name the subject header differently and give each caller a different subject, so
// a request judged half by one and half by the other would show at the upstream. Two requests
// straddle a reload: one held by the upstream, and a signed POST whose body is still arriving.
t.test('reload under load: every request judged by one whole config, in-flight ones finish under theirs, no connection dropped', async (t) => {
  const KEY = 'reload-under-load-key-0123456789';
  const SECRET = 'reload-under-load-hmac-secret-0123456789';
  const seen: { url: string; v1?: string; v2?: string; id: string; body: string }[] = [];
  let releaseSlow!: () => void;
  const slowHeld = new Promise<void>((r) => { releaseSlow = r; });
  const upstreamHandler: import('node:http').RequestListener = (req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      seen.push({ url: req.url!, v1: req.headers['x-auth-user-id'] as string | undefined, v2: req.headers['x-subject-v2'] as string | undefined, id: String(req.headers['x-request-id']), body });
      if (req.url === '/api/slow') void slowHeld.then(() => res.end('slow done'));
      else res.end('ok');
    });
  };
  const version = (v: 1 | 2) => baseConfig(`
identity:
  headers: { subject: ${v === 1 ? 'X-Auth-User-ID' : 'X-Subject-V2'} }
authenticators:
  keys:
    type: apiKey
    from: { header: X-API-Key }
    keys: [ { id: k, hash: "sha256:${createHash('sha256').update(KEY).digest('hex')}", subject: alice-v${v} } ]
  partner:
    type: hmac
    clients: [ { id: partner-a, secret: "${SECRET}", subject: partner-v${v} } ]
policies:
  - name: api-v${v}
    match: { paths: ["/api/**"] }
    authenticate: keys
  - name: signed-v${v}
    match: { paths: ["/signed/**"] }
    authenticate: partner
`).replace('timeoutMs: 1000', 'timeoutMs: 20000').replaceAll('{{PKI}}', fx.dir);
  const h = await startHarness(fx, version(1), { upstreamHandler });
  t.teardown(() => h.close());
  const agent = new https.Agent({ keepAlive: true, maxSockets: 6, ca: fx.ca.certPem, servername: 'a.test', checkServerIdentity: () => undefined });
  t.teardown(() => agent.destroy());
  let fresh = 0;
  const failures: string[] = [];
  /** A request; a signed one sends its body in `parts`, awaiting each promise between them. */
  const send = (path: string, o: { agent?: https.Agent | false; signed?: boolean; between?: Promise<unknown> } = {}) => new Promise<{ status: number; body: string }>((resolve) => {
    const a = o.agent ?? agent;
    const payload = { path, pad: 'x'.repeat(200) };
    const sig = o.signed ? seed004(SECRET, 'POST', path, payload) : undefined;
    const req = https.request({
      host: '127.0.0.1', port: h.port, path, agent: a, method: sig ? 'POST' : 'GET', servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined,
      headers: { host: 'a.test', ...(sig ? { ...sig.headers, 'content-length': String(Buffer.byteLength(sig.payload)) } : { 'x-api-key': KEY }) },
    }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('socket', () => { if (a && !req.reusedSocket) fresh++; });
    req.on('error', (e) => { failures.push(`${path}: ${e.message}`); resolve({ status: 0, body: '' }); });
    if (!sig) { req.end(); return; }
    const half = sig.payload.length >> 1;
    req.write(sig.payload.slice(0, half));
    void (o.between ?? Promise.resolve()).then(() => req.end(sig.payload.slice(half)));
  });

  const reloaded = () => h.logs.filter((l) => l.msg === 'config reloaded').length;
  const firstReload = until('the first reload', () => reloaded() >= 1, 15_000);
  const slow = send('/api/slow', { agent: false });
  const straddling = send('/signed/straddling', { agent: false, signed: true, between: firstReload.then(() => new Promise((r) => setTimeout(r, 50))) });
  await until('the slow request reaches the upstream', () => seen.some((s) => s.url === '/api/slow'));
  await new Promise((r) => setTimeout(r, 100)); // the straddling request's head and half its body are in
  let stop = false;
  const statuses = new Map<number, number>();
  const loops = Array.from({ length: 6 }, async (_, i) => {
    for (let n = 0; !stop; n++) {
      const r = await send(`/${i < 3 ? 'api' : 'signed'}/c${i}/${n}`, { signed: i >= 3 });
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    }
  });
  for (let i = 0; i < 8; i++) {
    const before = reloaded();
    writeFileSync(h.configFile, version(i % 2 === 0 ? 2 : 1).replaceAll('{{UPSTREAM}}', `http://127.0.0.1:${h.upstreamPort}`));
    await until(`reload ${i + 1}`, () => reloaded() > before);
    await new Promise((r) => setTimeout(r, 100)); // requests under this version
    if (i === 0) releaseSlow(); // the slow request ends under version 2
  }
  stop = true;
  await Promise.all(loops);
  const [s, st] = [await slow, await straddling];

  t.same(failures, [], 'no request failed or lost its connection');
  t.same([...statuses.keys()], [200], `every request served (${[...statuses.values()][0]} requests over 8 reloads)`);
  t.ok(fresh <= 6, `${fresh} connections opened for 6 clients: none was closed by a reload`);
  const subject = (r: { url: string }, v: number) => `${r.url.startsWith('/signed/') ? 'partner' : 'alice'}-v${v}`;
  const mixed = seen.filter((r) => !((r.v1 === subject(r, 1) && r.v2 === undefined) || (r.v2 === subject(r, 2) && r.v1 === undefined)));
  t.same(mixed, [], 'each upstream request carries one version\'s header with that version\'s subject');
  const version_ = new Map(seen.map((r) => [r.id, r.v1 ? 1 : 2]));
  const access = h.logs.filter((l) => l.msg === 'access' && version_.has(l.requestId));
  t.equal(access.length, seen.length, 'one access line per forwarded request');
  t.same(access.filter((l) => !l.policy.endsWith(`-v${version_.get(l.requestId)}`)).map((l) => [l.requestId, l.policy]), [], 'each logged under the policy of the config that judged it');
  for (const kind of ['/api/', '/signed/']) t.ok([1, 2].every((v) => seen.filter((r) => r.url.startsWith(kind) && version_.get(r.id) === v).length > 3), `${kind} requests served under both versions`);
  t.same([s.status, s.body], [200, 'slow done'], 'the request held by the upstream across the reloads completed');
  const logged = (url: string) => h.logs.find((l) => l.msg === 'access' && l.requestId === seen.find((r) => r.url === url)?.id)?.policy;
  t.equal(logged('/api/slow'), 'api-v1', 'and is logged under the config it started with');
  t.equal(st.status, 200, 'the signed POST whose body arrived across a reload was served');
  const sr = seen.find((r) => r.url === '/signed/straddling')!;
  t.same([sr.v1, sr.v2, logged('/signed/straddling')], ['partner-v1', undefined, 'signed-v1'], 'judged wholly by the config its head arrived under');
  t.ok(sr.body.includes('"path": "/signed/straddling"'), 'with its whole body forwarded');
});

function serverSerial(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined, session: undefined }, () => { resolve(s.getPeerX509Certificate()!.serialNumber); s.end(); });
    s.on('error', reject);
  });
}

t.test('reload: a replaced certificate file is served on the next handshake; also via a Kubernetes-style symlink swap', async (t) => {
  // Files live behind ..data -> ..v1, as kubelet mounts a Secret.
  const mount = mkdtempSync(join(fx.dir, 'secret-'));
  const write = (ver: string, cert: { certPem: string; keyPem: string }) => {
    mkdirSync(join(mount, ver));
    writeFileSync(join(mount, ver, 'tls.crt'), cert.certPem);
    writeFileSync(join(mount, ver, 'tls.key'), cert.keyPem);
  };
  write('..v1', fx.servers.a);
  symlinkSync('..v1', join(mount, '..data'));
  symlinkSync('..data/tls.crt', join(mount, 'tls.crt'));
  symlinkSync('..data/tls.key', join(mount, 'tls.key'));
  const yaml = baseConfig(policies()).replace('cert: {{PKI}}/a.crt', `cert: ${mount}/tls.crt`).replace('key: {{PKI}}/a.key', `key: ${mount}/tls.key`);
  const h = await startHarness(fx, yaml);
  t.teardown(() => h.close());
  t.equal(await serverSerial(h.port), fx.servers.a.cert.serialNumber.toUpperCase());

  const next = issue({ cn: 'a.test', issuer: fx.ca, dns: ['a.test', 'api.a.test'], eku: ['serverAuth'] });
  write('..v2', next);
  symlinkSync('..v2', join(mount, '..tmp'));
  renameSync(join(mount, '..tmp'), join(mount, '..data')); // the atomic swap kubelet does
  await until('reload after symlink swap', () => h.logs.some((l) => l.msg === 'config reloaded'));
  t.equal(await serverSerial(h.port), next.cert.serialNumber.toUpperCase(), 'new handshakes get the new certificate');

  const third = issue({ cn: 'a.test', issuer: fx.ca, dns: ['a.test', 'api.a.test'], eku: ['serverAuth'] });
  writeFileSync(join(mount, '..v2', 'tls.key'), third.keyPem);
  writeFileSync(join(mount, '..v2', 'tls.crt'), third.certPem);
  await until('reload after in-place write', () => h.logs.filter((l) => l.msg === 'config reloaded').length >= 2);
  t.equal(await serverSerial(h.port), third.cert.serialNumber.toUpperCase());

  // Catalogue CERT-06: a certificate that does not cover a configured name, or is not valid
  // yet, is refused; the one that serves stays.
  const refusals = () => h.logs.filter((l) => l.msg === 'config reload refused; still serving the previous config').length;
  for (const [what, bad, reason] of [
    ['a certificate without api.a.test', issue({ cn: 'a.test', issuer: fx.ca, dns: ['a.test'], eku: ['serverAuth'] }), /does not cover api\.a\.test/],
    ['a certificate not valid yet', issue({ cn: 'a.test', issuer: fx.ca, dns: ['a.test', 'api.a.test'], eku: ['serverAuth'], notBefore: new Date(Date.now() + 86_400_000) }), /is not valid before/],
  ] as const) {
    const before = refusals();
    writeFileSync(join(mount, '..v2', 'tls.key'), bad.keyPem);
    writeFileSync(join(mount, '..v2', 'tls.crt'), bad.certPem);
    await until(`the reload with ${what} refused`, () => refusals() > before);
    t.match(JSON.stringify(h.logs.filter((l) => l.msg === 'config reload refused; still serving the previous config').at(-1)), reason, `${what}: refused with the reason`);
    t.equal(await serverSerial(h.port), third.cert.serialNumber.toUpperCase(), `${what}: the serving certificate stays`);
  }
});

t.test('SIGTERM: in-flight request completes, new connections refused, /readyz 503, exit 0', async (t) => {
  const up = await listenUpstream((req, res) => { setTimeout(() => res.end(`slow ${req.url}`), req.url === '/open/slow' ? 800 : 0); });
  t.teardown(() => { up.server.closeAllConnections(); up.server.close(); });
  const [port, admin] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(fx.dir, 'drain-'));
  const file = join(dir, 'p.yaml');
  writeFileSync(file, baseConfig(policies(), '  timeouts: { shutdownMs: 10000 }').replace('listen: 127.0.0.1:0', `listen: 127.0.0.1:${port}`).replaceAll('{{PKI}}', fx.dir).replace('{{UPSTREAM}}', `http://127.0.0.1:${up.port}`) + `admin:\n  listen: 127.0.0.1:${admin}\n`);
  const child = spawn(process.execPath, [new URL('../../bin/portcullis.js', import.meta.url).pathname, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  await until('listening', () => out.includes('"listening"'), 15000);
  const h = { port };
  const slow = request(h, fx, { path: '/open/slow' });
  await new Promise((r) => setTimeout(r, 200)); // the slow request is now in flight
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  child.kill('SIGTERM');
  await until('draining', () => out.includes('SIGTERM: draining'));
  const ready = await fetch(`http://127.0.0.1:${admin}/readyz`).then((r) => r.status, () => 'down');
  t.equal(ready, 503, '/readyz is 503 while draining');
  const refused = await request(h, fx, { path: '/open/new' }).then(() => 'served', (e: NodeJS.ErrnoException) => e.code);
  t.equal(refused, 'ECONNREFUSED', 'new connections are refused');
  const r = await slow;
  t.same([r.status, r.body], [200, 'slow /open/slow'], 'the in-flight request completed');
  t.equal(await exited, 0, 'exit 0');
});
