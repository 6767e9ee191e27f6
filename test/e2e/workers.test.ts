// server.workers: node:cluster with the real binary. Every worker serves, a
// reload reaches every worker, metrics are aggregated, SIGTERM drains them all.
import t from 'tap';
import { spawn } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { makeFixture } from '../helpers/pki.ts';
import { request, client, listenUpstream, baseConfig, freePort, until, OPEN_AND_CERT_POLICIES } from '../helpers/harness.ts';

const fx = makeFixture();

t.test('workers: 2 — every worker serves, reload reaches every worker, metrics aggregate, SIGTERM drains all', async (t) => {
  const up = await listenUpstream((req, res) => setTimeout(() => res.end(`ok ${req.url}`), req.url === '/open/slow' ? 700 : 0));
  t.teardown(() => { up.server.closeAllConnections(); up.server.close(); });
  const [port, admin] = [await freePort(), await freePort()];
  const file = join(mkdtempSync(join(fx.dir, 'workers-')), 'p.yaml');
  const yaml = baseConfig(OPEN_AND_CERT_POLICIES(`admin:\n  listen: 127.0.0.1:${admin}\n`), '  workers: 2\n  timeouts: { shutdownMs: 8000 }').replace('listen: 127.0.0.1:0', `listen: 127.0.0.1:${port}`).replaceAll('{{PKI}}', fx.dir).replace('{{UPSTREAM}}', `http://127.0.0.1:${up.port}`);
  writeFileSync(file, yaml);
  const child = spawn(process.execPath, [new URL('../../bin/portcullis.js', import.meta.url).pathname, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const lines = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  await until('ready', () => lines().filter((l) => l.msg === 'listening').length === 2);
  await until('/readyz', () => true);
  const ready = await fetch(`http://127.0.0.1:${admin}/readyz`).then((r) => r.json());
  t.same(ready, { status: 'ready', workers: 2 });

  const h = { port };
  for (let i = 0; i < 20; i++) {
    const r = await request(h, fx, { path: `/api/${i}`, ...client(fx, 'valid') });
    t.equal(r.status, 200);
  }
  await until('access lines', () => lines().filter((l) => l.msg === 'access').length >= 20);
  const servers = new Set(lines().filter((l) => l.msg === 'access').map((l) => l.pid));
  t.equal(servers.size, 2, 'both workers served requests');

  const metrics = await fetch(`http://127.0.0.1:${admin}/metrics`).then((r) => r.text());
  t.match(metrics, /portcullis_requests_total\{policy="api",outcome="allow",code="",?\} 20/, 'metrics summed over workers');

  writeFileSync(file, yaml.replace('policies:\n', 'policies:\n  - name: later\n    match: { paths: ["/later/**"] }\n    authenticate: none\n'));
  child.kill('SIGHUP');
  await until('every worker reloaded', () => new Set(lines().filter((l) => l.msg === 'config reloaded').map((l) => l.pid)).size === 2);
  for (let i = 0; i < 10; i++) t.equal((await request(h, fx, { path: `/later/${i}` })).status, 200, 'the new policy, whichever worker answers');

  const slow = request(h, fx, { path: '/open/slow' });
  await new Promise((r) => setTimeout(r, 200));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  child.kill('SIGTERM');
  await until('draining', () => out.includes('draining every worker'));
  t.equal((await fetch(`http://127.0.0.1:${admin}/readyz`).then((r) => r.status, () => 'down')), 503, '/readyz 503 while draining');
  const r = await slow;
  t.same([r.status, r.body], [200, 'ok /open/slow'], 'in-flight request finished');
  t.equal(await exited, 0);
  t.equal(new Set(lines().filter((l) => l.msg === 'stopped').map((l) => l.pid)).size, 3, 'both workers and the primary stopped cleanly');
});
