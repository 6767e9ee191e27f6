// Catalogue UP-07 (ghostunnel test-server-handles-client-closes-connection): clients that
// leave at every stage of an exchange. The real `portcullis serve` runs as its own process,
// so its file descriptors are its own; after 240 abandoned exchanges its open descriptors,
// its connections to the upstream and the upstream's open exchanges return to where they
// were, and it keeps serving.
import t from 'tap';
import http from 'node:http';
import tls from 'node:tls';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHmac } from 'node:crypto';
import { makeFixture } from '../helpers/pki.ts';
import { request, client, freePort, until, baseConfig } from '../helpers/harness.ts';
import { parseProm, value } from '../helpers/prom.ts';

const fx = makeFixture();
const SECRET = 'aborts-test-hmac-secret-0123456789abcdef';
const BIN = new URL('../../bin/portcullis.js', import.meta.url).pathname;

t.test('clients that leave at every stage: descriptors, upstream connections and exchanges return to their baseline', async (t) => {
  // The upstream: /api/hang never answers, /api/stream sends until the client is gone.
  const open = new Set<http.ServerResponse>();
  const upstream = http.createServer((req, res) => {
    open.add(res);
    res.once('close', () => open.delete(res));
    req.resume();
    if (req.url === '/api/hang') return;
    if (req.url === '/api/stream') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      const iv = setInterval(() => res.write('x'.repeat(4096)), 5);
      res.once('close', () => clearInterval(iv));
      return;
    }
    res.end('ok');
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
  const upstreamPort = (upstream.address() as net.AddressInfo).port;
  t.teardown(() => { upstream.closeAllConnections(); upstream.close(); });
  const upstreamConnections = () => new Promise<number>((r) => upstream.getConnections((_e, n) => r(n)));

  const [port, admin] = [await freePort(), await freePort()];
  const file = join(fx.dir, 'aborts.yaml');
  writeFileSync(file, baseConfig(`
admin:
  listen: 127.0.0.1:${admin}
authenticators:
  cert: { type: mtls }
  sig: { type: hmac, clients: [ { id: p, secret: "${SECRET}", subject: p } ], requireNonce: false }
policies:
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: cert
  - name: signed
    match: { paths: ["/signed/**"] }
    authenticate: sig
logging: { level: info, access: false }
`, '  timeouts: { headersMs: 20000, requestMs: 30000 }').replace('listen: 127.0.0.1:0', `listen: 127.0.0.1:${port}`).replace('timeoutMs: 1000', 'timeoutMs: 30000')
    .replaceAll('{{PKI}}', fx.dir).replace('{{UPSTREAM}}', `http://127.0.0.1:${upstreamPort}`));
  const child = spawn(process.execPath, [BIN, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  t.teardown(() => { child.kill('SIGKILL'); });
  await until('listening', () => out.includes('"listening"'), 15_000);
  const fds = async () => value(parseProm(await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text()).samples, 'portcullis_process_open_fds')!;
  const h = { port };
  const cert = client(fx, 'valid');

  // Warm up: the upstream connection pool and the admin connection exist before the baseline.
  for (let i = 0; i < 4; i++) t.equal((await request(h, fx, { path: '/api/ok', ...cert })).status, 200);
  await new Promise((r) => setTimeout(r, 300));
  const fds0 = await fds();
  const pooled0 = await upstreamConnections();
  t.ok(fds0 > 0, `baseline: ${fds0} open descriptors, ${pooled0} upstream connections`);

  const tlsOpts = { host: '127.0.0.1', port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined, ...cert };
  /** A TLS connection that is torn down once `then` has run on it. */
  const viaTls = (then: (s: tls.TLSSocket, done: () => void) => void) => new Promise<void>((resolve) => {
    const s = tls.connect(tlsOpts, () => then(s, () => { s.destroy(); resolve(); }));
    s.on('error', () => resolve());
    s.on('close', () => resolve());
  });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const ts = String(Math.floor(Date.now() / 1000));
  const body = 'b'.repeat(2000);
  const sig = createHmac('sha256', SECRET).update(`POST/signed/x${ts}${body}`).digest('hex');
  const stages: Record<string, () => Promise<void>> = {
    'TCP connect, then close': () => new Promise((resolve) => { const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(); }); s.on('error', () => resolve()); }),
    'half a ClientHello': () => new Promise((resolve) => { const s = net.connect(port, '127.0.0.1', () => { s.write(Buffer.from('160301020001', 'hex')); setTimeout(() => { s.destroy(); resolve(); }, 20); }); s.on('error', () => resolve()); }),
    'handshake done, nothing sent': () => viaTls((_s, done) => done()),
    'half a request head': () => viaTls((s, done) => { s.write('GET /api/ok HTTP/1.1\r\nHost: a.test\r\nX-Half: '); setTimeout(done, 20); }),
    'a signed POST with half its body': () => viaTls((s, done) => {
      s.write(`POST /signed/x HTTP/1.1\r\nHost: a.test\r\nContent-Length: ${body.length}\r\nX-API-Key: p\r\nX-Timestamp: ${ts}\r\nX-Signature: ${sig}\r\n\r\n${body.slice(0, 1000)}`);
      setTimeout(done, 20);
    }),
    'an exchange the upstream has not answered': () => viaTls((s, done) => { s.write('GET /api/hang HTTP/1.1\r\nHost: a.test\r\n\r\n'); setTimeout(done, 50); }),
    'a response still streaming': () => viaTls((s, done) => { s.write('GET /api/stream HTTP/1.1\r\nHost: a.test\r\n\r\n'); s.once('data', () => setTimeout(done, 20)); }),
    'a response the client stopped reading': () => viaTls((s, done) => { s.write('GET /api/stream HTTP/1.1\r\nHost: a.test\r\n\r\n'); s.once('data', () => { s.pause(); setTimeout(done, 100); }); }),
  };
  for (const [what, leave] of Object.entries(stages)) {
    for (let round = 0; round < 3; round++) await Promise.all(Array.from({ length: 10 }, () => leave()));
    t.pass(`${what}: 30 clients left`);
  }
  await sleep(200);

  // Everything Portcullis opened for those clients is closed again.
  await until('the upstream exchanges end', () => open.size === 0, 10_000).catch(() => undefined);
  t.equal(open.size, 0, 'no upstream exchange is left open (each was cancelled when its client left)');
  let fds1 = await fds();
  for (let i = 0; i < 40 && fds1 > fds0 + 2; i++) { await sleep(250); fds1 = await fds(); }
  t.ok(fds1 <= fds0 + 2, `open descriptors ${fds0} -> ${fds1}`);
  const pooled1 = await upstreamConnections();
  t.ok(pooled1 <= Math.max(pooled0, 4), `upstream connections ${pooled0} -> ${pooled1}`);
  t.same([(await request(h, fx, { path: '/api/ok', ...cert })).status, (await request(h, fx, { path: '/api/ok' })).status], [200, 401], 'still serving, and still refusing');
  t.notMatch(out, /"level":"(error|fatal)"|unhandled|TypeError/, 'no error or crash in the logs');
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM: exit 0');
});
