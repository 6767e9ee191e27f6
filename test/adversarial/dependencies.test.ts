// Failures of what Portcullis depends on: a JWKS endpoint that is down or slow,
// an upstream that resets mid-body, a client that leaves mid-authentication.
import t from 'tap';
import http from 'node:http';
import https from 'node:https';
import { generateKeyPairSync } from 'node:crypto';
import jsonwebtoken from 'jsonwebtoken';
import { exportJWK } from 'jose';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, baseConfig } from '../helpers/harness.ts';

const fx = makeFixture();
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const token = jsonwebtoken.sign({ sub: 'u' }, rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, { algorithm: 'RS256', keyid: 'k1', issuer: 'https://auth.example.com', expiresIn: 300 });
let mode: 'down' | 'slow' | 'drip' | 'up' = 'down';
let hits = 0;
const jwks = http.createServer(async (_q, s) => {
  hits++;
  if (mode === 'down') { s.writeHead(500); s.end(); return; }
  if (mode === 'slow') await new Promise((r) => setTimeout(r, 3000));
  if (mode === 'drip') {
    // Headers at once, then a byte every 100 ms: a socket idle timeout would never fire.
    s.writeHead(200, { 'content-type': 'application/json' });
    const body = JSON.stringify({ keys: [{ ...(await exportJWK(rsa.publicKey)), kid: 'k1', alg: 'RS256' }] });
    for (let i = 0; i < body.length && !s.destroyed; i++) { s.write(body[i]); await new Promise((r) => setTimeout(r, 100)); }
    if (!s.destroyed) s.end();
    return;
  }
  if (!s.destroyed) s.end(JSON.stringify({ keys: [{ ...(await exportJWK(rsa.publicKey)), kid: 'k1', alg: 'RS256' }] }));
});
await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', () => r()));
t.teardown(() => { jwks.closeAllConnections(); jwks.close(); });
const jwksUrl = `http://127.0.0.1:${(jwks.address() as { port: number }).port}/jwks`;

const cfg = `
authenticators:
  remote: { type: jwt, issuer: https://auth.example.com, anyAudience: true, algorithms: [RS256], jwks: { url: "${jwksUrl}", timeoutMs: 500, cooldownMs: 0 } }
policies:
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: remote
  - name: open
    match: { paths: ["/**"] }
    authenticate: none
`;

t.test('JWKS endpoint down with no keys yet: 503 and a clear log line, never an allow; then it recovers', async (t) => {
  mode = 'down';
  const h = await startHarness(fx, baseConfig(cfg));
  t.teardown(() => h.close());
  const r = await request(h, fx, { path: '/api/x', headers: { authorization: `Bearer ${token}` } });
  t.same([r.status, r.json.error.code], [503, 'INTERNAL']);
  t.equal(h.seen.length, 0);
  t.ok(h.logs.some((l) => l.msg === 'JWKS fetch failed; keeping the last good keys' && l.hasKeys === false), 'the fetch failure is logged');
  t.ok(h.logs.some((l) => l.msg === 'authentication failed with an internal error'), 'and the 503 is explained');
  mode = 'slow';
  const slow = await request(h, fx, { path: '/api/x', headers: { authorization: `Bearer ${token}` } });
  t.same([slow.status, slow.json.error.code], [503, 'INTERNAL'], 'a JWKS slower than timeoutMs: 503');
  mode = 'drip';
  const drip = await request(h, fx, { path: '/api/x', headers: { authorization: `Bearer ${token}` } });
  t.same([drip.status, drip.json.error.code], [503, 'INTERNAL'], 'a JWKS that trickles in past timeoutMs: 503 (one deadline for the whole answer)');
  t.ok(h.logs.some((l) => l.msg === 'JWKS fetch failed; keeping the last good keys' && /no answer within 500 ms|answer cut short/.test(l.reason)), 'logged with the deadline');
  mode = 'up';
  const ok = await request(h, fx, { path: '/api/x', headers: { authorization: `Bearer ${token}` } });
  t.equal(ok.status, 200, 'recovers without a restart');
});

t.test('upstream resets mid-body: 502 or a closed connection, never a hang; the proxy keeps serving', async (t) => {
  const h = await startHarness(fx, baseConfig(cfg), {
    upstreamHandler: (req, res) => {
      if (req.url === '/reset-request') { req.once('data', () => req.socket.destroy()); return; }
      if (req.url === '/reset-response') { res.writeHead(200, { 'content-length': '100000' }); res.write('partial'); setTimeout(() => res.socket?.destroy(), 50); return; }
      res.end('ok');
    },
  });
  t.teardown(() => h.close());
  const big = 'x'.repeat(300_000);
  const r1 = await request(h, fx, { method: 'POST', path: '/reset-request', body: big }).then((r) => r.status, (e: NodeJS.ErrnoException) => e.code);
  t.ok(r1 === 502 || r1 === 'ECONNRESET' || r1 === 'EPIPE', `reset while sending the body: ${r1}`);
  const r2 = await request(h, fx, { path: '/reset-response' }).then((r) => `status ${r.status} body ${r.body.length}`, (e: NodeJS.ErrnoException) => e.code ?? e.message);
  t.match(String(r2), /ECONNRESET|aborted|socket hang up/, `reset after the response head: the client sees the connection cut (${r2})`);
  const ok = await request(h, fx, { path: '/fine' });
  t.equal(ok.status, 200);
});

t.test('a client that leaves during authentication: nothing forwarded, no leaked sockets or timers', async (t) => {
  mode = 'slow';
  const h = await startHarness(fx, baseConfig(cfg.replace('timeoutMs: 500', 'timeoutMs: 5000')));
  t.teardown(() => h.close());
  const handles0 = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length;
  for (let i = 0; i < 5; i++) {
    await new Promise<void>((resolve) => {
      const req = https.request({ host: '127.0.0.1', port: h.port, path: '/api/x', servername: 'a.test', ca: fx.ca.certPem, agent: false, checkServerIdentity: () => undefined, headers: { host: 'a.test', authorization: `Bearer ${token}` } });
      req.on('error', () => resolve());
      req.end();
      setTimeout(() => { req.destroy(); resolve(); }, 200);
    });
  }
  await new Promise((r) => setTimeout(r, 3500)); // the slow JWKS answers; the decisions finish
  t.equal(h.seen.length, 0, 'nothing reached the upstream');
  t.ok(h.logs.filter((l) => l.msg === 'client disconnected during authentication').length >= 1, 'logged');
  const handles1 = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length;
  t.ok(handles1 <= handles0 + 1, `open handles ${handles0} -> ${handles1}`);
  mode = 'up';
});

t.test('remote JWKS over https with its own CA (jwks.ca); an untrusted JWKS server is never used', async (t) => {
  const { writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const jwksBody = JSON.stringify({ keys: [{ ...(await exportJWK(rsa.publicKey)), kid: 'k1', alg: 'RS256' }] });
  const { issue } = await import('../../src/tls/pki.ts');
  const ipCert = issue({ cn: '127.0.0.1', issuer: fx.ca, ips: ['127.0.0.1'], eku: ['serverAuth'] });
  const tlsJwks = https.createServer({ cert: ipCert.certPem + fx.ca.certPem, key: ipCert.keyPem }, (_q, s) => s.end(jwksBody));
  await new Promise<void>((r) => tlsJwks.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { tlsJwks.closeAllConnections(); tlsJwks.close(); });
  const port = (tlsJwks.address() as { port: number }).port;
  writeFileSync(join(fx.dir, 'jwks-ca.pem'), fx.ca.certPem);
  const mk = (ca: string) => `
authenticators:
  remote: { type: jwt, issuer: https://auth.example.com, anyAudience: true, algorithms: [RS256], jwks: { url: "https://127.0.0.1:${port}/jwks", ca: ${ca}, timeoutMs: 1000, cooldownMs: 0 } }
policies:
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: remote
`;
  const good = await startHarness(fx, baseConfig(mk(`${fx.dir}/jwks-ca.pem`)));
  t.teardown(() => good.close());
  const r = await request(good, fx, { path: '/api/x', headers: { authorization: `Bearer ${token}` } });
  t.equal(r.status, 200, 'keys fetched over https, verified against jwks.ca');
  writeFileSync(join(fx.dir, 'other-ca.pem'), fx.forgedCa.certPem);
  const bad = await startHarness(fx, baseConfig(mk(`${fx.dir}/other-ca.pem`)));
  t.teardown(() => bad.close());
  const r2 = await request(bad, fx, { path: '/api/x', headers: { authorization: `Bearer ${token}` } });
  t.same([r2.status, r2.json.error.code], [503, 'INTERNAL'], 'a JWKS server the CA does not vouch for gives no keys');
  t.ok(bad.logs.some((l) => l.msg === 'JWKS fetch failed; keeping the last good keys' && /certificate|self.signed|verify/i.test(l.reason)), 'the TLS failure is logged');
  // A certificate from the right CA for another name is refused too (hostname checked).
  const wrongName = https.createServer({ cert: fx.servers.a.certPem + fx.ca.certPem, key: fx.servers.a.keyPem }, (_q, s) => s.end(jwksBody));
  await new Promise<void>((r) => wrongName.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { wrongName.closeAllConnections(); wrongName.close(); });
  const named = await startHarness(fx, baseConfig(mk(`${fx.dir}/jwks-ca.pem`).replace(`127.0.0.1:${port}`, `127.0.0.1:${(wrongName.address() as { port: number }).port}`)));
  t.teardown(() => named.close());
  const r3 = await request(named, fx, { path: '/api/x', headers: { authorization: `Bearer ${token}` } });
  t.same([r3.status, r3.json.error.code], [503, 'INTERNAL'], 'a JWKS certificate for another host name gives no keys');
});
