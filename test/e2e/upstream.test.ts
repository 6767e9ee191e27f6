// Upstream failures as JSON errors, WebSocket upgrades behind the same policy,
// bodies streamed byte-for-byte, and a trusted proxy's X-Forwarded-For.
import t from 'tap';
import tls from 'node:tls';
import https from 'node:https';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer, type Socket } from 'node:net';
import { makeFixture } from '../helpers/pki.ts';
import { issue, makeCrl } from '../../src/tls/pki.ts';
import { parseProm } from '../helpers/prom.ts';

/** portcullis_upstream_errors_total by reason, from the admin port. */
async function upstreamErrors(h: { adminPort: number }): Promise<Record<string, number>> {
  const { samples } = parseProm(await fetch(`http://127.0.0.1:${h.adminPort}/metrics`).then((x) => x.text()));
  return Object.fromEntries(samples.filter((x) => x.name === 'portcullis_upstream_errors_total').map((x) => [x.labels.reason, x.value]));
}
import { startHarness, request, client, baseConfig, until } from '../helpers/harness.ts';

const fx = makeFixture();
const policies = `
authenticators:
  cert: { type: mtls }
policies:
  - name: slow
    match: { paths: ["/slow"] }
    authenticate: none
  - name: ws
    match: { paths: ["/ws/**"] }
    authenticate: cert
  - name: open
    match: { paths: ["/**"] }
    authenticate: none
`;

t.test('upstream refused -> 502 UPSTREAM_UNAVAILABLE as JSON', async (t) => {
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
  const port = (closed.address() as { port: number }).port;
  await new Promise<void>((r) => closed.close(() => r()));
  const h = await startHarness(fx, baseConfig(policies), { upstreamPort: port });
  t.teardown(() => h.close());
  const r = await request(h, fx, { path: '/x' });
  t.same([r.status, r.json.error.code], [502, 'UPSTREAM_UNAVAILABLE']);
  t.notMatch(r.body, /ECONNREFUSED|127\.0\.0\.1|stack/, 'no internals in the body');
  t.ok(h.logs.find((l) => l.msg === 'upstream error' && l.detail === 'ECONNREFUSED'), 'the detail goes to the log');
  t.same(await upstreamErrors(h), { connect: 1 }, 'upstream_errors_total{reason="connect"}');
});

t.test('upstream slower than upstream.timeoutMs -> 504; a reset -> 502', async (t) => {
  const h = await startHarness(fx, baseConfig(policies), {
    upstreamHandler: (req, res) => {
      if (req.url === '/slow') setTimeout(() => { if (!res.destroyed) res.end('late'); }, 3000);
      else if (req.url === '/reset') req.socket.destroy();
      else res.end('ok');
    },
  });
  t.teardown(() => h.close());
  const r = await request(h, fx, { path: '/slow' });
  t.same([r.status, r.json.error.code], [504, 'UPSTREAM_TIMEOUT']);
  const reset = await request(h, fx, { path: '/reset' });
  t.same([reset.status, reset.json.error.code], [502, 'UPSTREAM_UNAVAILABLE']);
  const ok = await request(h, fx, { path: '/fine' });
  t.same([ok.status, ok.body], [200, 'ok'], 'and the proxy keeps serving');
  t.same(await upstreamErrors(h), { timeout: 1, reset: 1 }, 'upstream_errors_total by reason');
});

t.test('bodies are streamed byte-for-byte', async (t) => {
  const h = await startHarness(fx, baseConfig(policies));
  t.teardown(() => h.close());
  const body = Buffer.from(Array.from({ length: 200_000 }, (_, i) => i % 251));
  const r = await request(h, fx, { method: 'POST', path: '/upload', body: body.toString('latin1'), headers: { 'content-type': 'application/octet-stream' } });
  t.equal(r.status, 200);
  t.equal(r.json.bodyBytes, Buffer.byteLength(body.toString('latin1'), 'utf8'), 'upstream got every byte');
  t.equal(h.seen.at(-1)!.headers.host, 'a.test', 'the Host the client sent is kept');
  t.equal(h.seen.at(-1)!.headers['content-type'], 'application/octet-stream');
});

t.test('small binary responses arrive byte-for-byte: every byte value, with Content-Length and chunked', async (t) => {
  // Up to 16 KiB the proxy writes the final piece of a response with its head as one latin1
  // string: a UTF-8 slip would change every byte from 0x80 up.
  const every = Buffer.from(Array.from({ length: 256 }, (_, k) => k));
  const bodies: Record<string, Buffer> = { '/one': every.subarray(0xfe), '/every': every, '/2k': Buffer.concat(Array.from({ length: 8 }, () => every)), '/16k': Buffer.concat(Array.from({ length: 64 }, () => every)) };
  const h = await startHarness(fx, baseConfig(policies), {
    upstreamHandler: (req, res) => {
      const [path, framing] = req.url!.split('?');
      const b = bodies[path!]!;
      if (framing === 'chunked') { res.writeHead(200, { 'content-type': 'application/octet-stream' }); res.end(b); }
      else { res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': b.length }); res.end(b); }
    },
  });
  t.teardown(() => h.close());
  for (const [path, b] of Object.entries(bodies)) {
    for (const framing of ['length', 'chunked']) {
      const r = await request(h, fx, { path: `${path}?${framing}` });
      t.equal(r.status, 200);
      t.ok(r.bytes.equals(b), `${path} (${b.length} bytes, ${framing}): every byte unchanged`);
      if (framing === 'length') t.equal(r.headers['content-length'], String(b.length), 'Content-Length relayed');
    }
  }
});

t.test('large responses to a client that stops reading and one that does not: the upstream is held back, and every byte arrives in order', async (t) => {
  // 64 MiB per response, chunked, in 16 KiB pieces (several to a read), each numbered and
  // different per response, so a piece relayed twice, late, overwritten or to the wrong
  // client changes the digest. More than every socket buffer on the way holds. One client
  // stops reading for 1.5 s while the other downloads in full through the same proxy.
  const piece = 16 * 1024, pieces = 4096, size = piece * pieces;
  const noise = randomBytes(1024 * 1024 + 2);
  const pieceAt = (which: number, k: number) => {
    const at = (k * piece + which) % (noise.length - piece);
    const b = Buffer.from(noise.subarray(at, at + piece));
    b.writeUInt32BE(k, 0);
    b[4] = which;
    return b;
  };
  const digest = (which: number) => { const d = createHash('sha256'); for (let k = 0; k < pieces; k++) d.update(pieceAt(which, k)); return d.digest('hex'); };
  const written = [0, 0];
  const h = await startHarness(fx, baseConfig(policies), {
    upstreamHandler: (req, res) => {
      const which = req.url === '/big/1' ? 1 : 0;
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const more = () => {
        while (written[which]! < size) {
          const b = pieceAt(which, written[which]! / piece);
          written[which]! += piece;
          if (!res.write(b)) { res.once('drain', more); return; }
        }
        res.end();
      };
      more();
    },
  });
  t.teardown(() => h.close());
  let writtenWhilePaused = -1;
  const download = (which: number, pauseMs: number) => new Promise<{ status: number; bytes: number; digest: string }>((resolve, reject) => {
    const got = createHash('sha256');
    let bytes = 0;
    https.get({ host: '127.0.0.1', port: h.port, path: `/big/${which}`, servername: 'a.test', ca: fx.ca.certPem, agent: false, headers: { host: 'a.test' } }, (res) => {
      if (pauseMs) {
        res.once('data', () => {
          res.pause();
          setTimeout(() => { writtenWhilePaused = written[which]!; res.resume(); }, pauseMs);
        });
      }
      res.on('data', (c: Buffer) => { got.update(c); bytes += c.length; });
      res.on('end', () => resolve({ status: res.statusCode!, bytes, digest: got.digest('hex') }));
      res.on('error', reject);
    }).on('error', reject);
  });
  const [paused, steady] = await Promise.all([download(0, 1500), download(1, 0)]);
  t.ok(writtenWhilePaused > 0 && writtenWhilePaused < size, `while its client read nothing for 1.5 s the upstream was held back (${(writtenWhilePaused / 2 ** 20).toFixed(0)} of 64 MiB written)`);
  t.same([paused.status, paused.bytes], [200, size], 'the paused client got every byte');
  t.equal(paused.digest, digest(0), 'in order and unaltered');
  t.same([steady.status, steady.bytes], [200, size], 'the other client got every byte');
  t.equal(steady.digest, digest(1), 'in order and unaltered');
});

function wsUpgrade(port: number, path: string, c?: { cert: string; key: string }): Promise<{ head: string; echo?: string }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined, ...c }, () => {
      s.write(`GET ${path} HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Auth-User-ID: spoofed\r\n\r\n`);
    });
    let buf = '';
    let sent = false;
    s.on('data', (d) => {
      buf += d.toString('latin1');
      const i = buf.indexOf('\r\n\r\n');
      if (i < 0) return;
      const head = buf.slice(0, i);
      if (!head.startsWith('HTTP/1.1 101')) { resolve({ head: buf }); s.destroy(); return; }
      if (!sent) { sent = true; s.write('ping-bytes'); return; }
      if (buf.slice(i + 4).includes('ping-bytes')) { resolve({ head, echo: 'ping-bytes' }); s.destroy(); }
    });
    s.on('error', reject);
    setTimeout(() => { resolve({ head: buf }); s.destroy(); }, 3000);
  });
}

t.test('WebSocket upgrade: authenticated before the upgrade, refused without credentials', async (t) => {
  const h = await startHarness(fx, baseConfig(policies));
  t.teardown(() => h.close());
  const ok = await wsUpgrade(h.port, '/ws/chat', client(fx, 'valid'));
  t.match(ok.head, /^HTTP\/1\.1 101/);
  t.equal(ok.echo, 'ping-bytes', 'bytes flow both ways after the upgrade');
  const up = h.seen.at(-1)!;
  t.equal(up.headers['x-auth-user-id'], 'client-1', 'identity set on the upgrade request');
  t.equal(String(up.headers.upgrade).toLowerCase(), 'websocket');
  const before = h.seen.length;
  const denied = await wsUpgrade(h.port, '/ws/chat');
  t.match(denied.head, /^HTTP\/1\.1 401/);
  t.match(denied.head, /"code":"AUTH_010"/);
  t.equal(h.seen.length, before, 'the upstream never saw the refused upgrade');
});

t.test('a reload that changes client-certificate trust closes WebSockets opened under the old trust', async (t) => {
  const fx3 = makeFixture();
  const h = await startHarness(fx3, baseConfig(policies));
  t.teardown(() => h.close());
  const s = tls.connect({ host: '127.0.0.1', port: h.port, servername: 'a.test', ca: fx3.ca.certPem, checkServerIdentity: () => undefined, ...client(fx3, 'valid') });
  let buf = '';
  let closed = false;
  s.on('data', (d) => { buf += d.toString('latin1'); });
  s.on('close', () => { closed = true; });
  s.on('error', () => {});
  s.write('GET /ws/chat HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
  await until('the upgrade', () => buf.startsWith('HTTP/1.1 101'));
  s.write('still-open');
  await until('the echo', () => buf.includes('still-open'));
  writeFileSync(fx3.path('ca.crl'), makeCrl(fx3.ca, [fx3.clients.revoked.serial, fx3.clients.valid.serial]));
  t.ok(h.server.reloadFromFile());
  await until('the WebSocket to close', () => closed);
  t.pass('the proxy closed the WebSocket of the revoked client');
  t.ok(h.logs.some((l) => l.msg === 'client-certificate trust changed: closing connections judged under the previous trust' && l.webSockets === 1));
});

t.test('X-Forwarded-For is believed only from server.trustedProxies', async (t) => {
  const h = await startHarness(fx, baseConfig(`
policies:
  - name: office
    match: { paths: ["/office/**"] }
    authenticate: none
    allowIps: [198.51.100.0/24]
`, '  trustedProxies: [127.0.0.1/32]'));
  t.teardown(() => h.close());
  let r = await request(h, fx, { path: '/office/x', headers: { 'x-forwarded-for': '198.51.100.9', 'x-request-id': 'trusted-req-0001' } });
  t.equal(r.status, 200, 'client IP taken from XFF of a trusted proxy');
  const up = h.seen.at(-1)!;
  t.equal(up.headers['x-forwarded-for'], '198.51.100.9, 127.0.0.1', 'the chain is extended');
  t.equal(up.headers['x-request-id'], 'trusted-req-0001', 'a well-formed id from a trusted proxy is kept');
  r = await request(h, fx, { path: '/office/x', headers: { 'x-forwarded-for': '198.51.100.9, 203.0.113.5' } });
  t.same([r.status, r.json.error.code], [403, 'AUTH_005'], 'the rightmost untrusted hop is the client');
});

t.test('RFC 9440 Client-Cert format and debug headers on the response', async (t) => {
  const h = await startHarness(fx, baseConfig(`
identity:
  clientCertFormat: rfc9440
  debugHeaders: true
authenticators:
  cert: { type: mtls, identity: cn }
policies:
  - name: api
    match: { paths: ["/**"] }
    authenticate: cert
`));
  t.teardown(() => h.close());
  const r = await request(h, fx, { path: '/x', ...client(fx, 'valid') });
  t.equal(r.status, 200);
  const der = Buffer.from(fx.clients.valid.certPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  t.equal(h.seen.at(-1)!.headers['client-cert'], `:${der.toString('base64')}:`);
  t.notOk(h.seen.at(-1)!.headers['x-forwarded-client-cert']);
  t.equal(r.headers['x-auth-user-id'], 'client-1');
  t.equal(r.headers['x-auth-method'], 'mtls');
  t.equal(r.headers['x-auth-ip'], '127.0.0.1');
});

t.test('the response announces what the server does with the connection: close when the client asked', async (t) => {
  const h = await startHarness(fx, baseConfig(policies));
  t.teardown(() => h.close());
  const r = await request(h, fx, { path: '/x', headers: { connection: 'close' } });
  t.equal(r.headers.connection, 'close');
  const k = await request(h, fx, { path: '/x', headers: { connection: 'keep-alive' } });
  t.equal(k.headers.connection, 'keep-alive');
});

t.test('forwarding edge cases: HEAD, 204, several Set-Cookie, Expect: 100-continue, an upstream path prefix', async (t) => {
  const h = await startHarness(fx, baseConfig(policies), {
    upstreamHandler: (req, res) => {
      if (req.url?.endsWith('/empty')) { res.writeHead(204); res.end(); return; }
      if (req.url?.endsWith('/cookies')) { res.setHeader('set-cookie', ['a=1; Path=/', 'b=2; Path=/']); res.end('c'); return; }
      let n = 0;
      req.on('data', (d: Buffer) => { n += d.length; });
      req.on('end', () => { res.writeHead(200, { 'content-type': 'text/plain', 'x-seen-url': req.url ?? '' }); res.end(req.method === 'HEAD' ? undefined : `got ${n}`); });
    },
  });
  t.teardown(() => h.close());
  const head = await request(h, fx, { method: 'HEAD', path: '/x' });
  t.same([head.status, head.body], [200, '']);
  t.equal((await request(h, fx, { path: '/empty' })).status, 204);
  const c = await request(h, fx, { path: '/cookies' });
  t.same(c.headers['set-cookie'], ['a=1; Path=/', 'b=2; Path=/'], 'both cookies');
  const cont = await request(h, fx, { method: 'POST', path: '/upload', headers: { expect: '100-continue', 'content-length': '5' }, body: 'hello' });
  t.same([cont.status, cont.body], [200, 'got 5'], 'a 100-continue upload arrives whole');

  const prefixed = await startHarness(fx, baseConfig(policies).replace('url: {{UPSTREAM}}', 'url: {{UPSTREAM}}/base'));
  t.teardown(() => prefixed.close());
  await request(prefixed, fx, { path: '/x?y=1' });
  t.equal(prefixed.seen.at(-1)!.url, '/base/x?y=1', 'the upstream URL path is a prefix');
});

t.test('a client that leaves while the upstream is answering: the upstream exchange is cancelled and logged as 499', async (t) => {
  let upstreamClosed: () => void;
  const closedUpstream = new Promise<void>((r) => { upstreamClosed = r; });
  const h = await startHarness(fx, baseConfig(policies).replace('timeoutMs: 1000', 'timeoutMs: 10000'), {
    upstreamHandler: (req, res) => {
      if (req.url === '/hang') { res.once('close', () => upstreamClosed()); return; } // never answers
      res.end('ok');
    },
  });
  t.teardown(() => h.close());
  const gone = request(h, fx, { path: '/hang', onSocket: (s) => { setTimeout(() => s.destroy(), 300); } }).then(() => 'answered', (e: Error) => e.message);
  t.match(await gone, /socket hang up|aborted|ECONNRESET/i, 'the client gave up');
  const t0 = Date.now();
  await closedUpstream;
  t.ok(Date.now() - t0 < 3000, 'the upstream request was aborted at once, not left to upstream.timeoutMs (10 s)');
  await until('the access line', () => h.logs.some((l) => l.msg === 'access' && l.path === '/hang'));
  t.equal(h.logs.find((l) => l.msg === 'access' && l.path === '/hang')!.status, 499);
  t.equal((await request(h, fx, { path: '/fine' })).status, 200, 'and the proxy keeps serving');
});

t.test('an upstream that answers before the body is all sent: one answer, the rest discarded, the connection in step or closed', async (t) => {
  const h = await startHarness(fx, baseConfig(policies), {
    upstreamHandler: (req, res) => { res.end(`early ${req.url}`); }, // reads nothing of the body
  });
  t.teardown(() => h.close());
  const open = () => new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: h.port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined }, () => resolve(s));
    s.on('error', reject);
  });
  const statuses = (out: string) => out.match(/HTTP\/1\.1 \d{3}/g);
  const piece = `4000\r\n${'z'.repeat(0x4000)}\r\n`;

  // The body goes on for a while after the answer, then ends; the next request is served.
  let s = await open();
  let out = '';
  s.on('data', (d) => { out += d; });
  s.write(`POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n${piece}`);
  await until('the early answer', () => out.includes('early /upload'));
  s.write(`${piece.repeat(4)}0\r\n\r\nGET /after HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`);
  await new Promise((r) => s.once('close', r));
  t.same(statuses(out), ['HTTP/1.1 200', 'HTTP/1.1 200'], 'the upload answered once, the next request served on the same connection');
  t.match(out, /early \/after/);

  // A body that never ends: the connection is closed, with no second answer.
  s = await open();
  out = '';
  s.on('data', (d) => { out += d; });
  s.on('error', () => {});
  s.write(`POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n`);
  const iv = setInterval(() => { if (!s.destroyed) s.write(piece.repeat(4)); }, 5);
  let gaveUp = false;
  const stop = setTimeout(() => { gaveUp = true; s.destroy(); }, 10_000);
  await new Promise((r) => s.once('close', r));
  clearInterval(iv);
  clearTimeout(stop);
  t.same([statuses(out), gaveUp], [['HTTP/1.1 200'], false], 'answered once, then the connection closed by the proxy');
  t.equal((await request(h, fx, { path: '/fine' })).status, 200, 'and the proxy keeps serving');
});

/** Portcullis in front of a raw TCP upstream that answers with hand-written bytes. */
async function behindRawUpstream(t: { teardown(fn: () => unknown): void }, onConnection: (s: Socket) => void) {
  const raw = createServer(onConnection);
  await new Promise<void>((r) => raw.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => raw.close());
  const h = await startHarness(fx, baseConfig(policies), { upstreamPort: (raw.address() as { port: number }).port });
  t.teardown(() => h.close());
  return h;
}

t.test('an upstream response Node cannot relay (a control character in a header value) -> 502, not a crash', async (t) => {
  const h = await behindRawUpstream(t, (s) => s.once('data', () => s.end('HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok')));
  const r = await request(h, fx, { path: '/x' });
  t.same([r.status, r.json.error.code], [502, 'UPSTREAM_UNAVAILABLE']);
  t.equal(r.headers['x-bad'], undefined, 'the header never reached the client');
  const again = await request(h, fx, { path: '/x' });
  t.equal(again.status, 502, 'the proxy is still up');
  t.same(await upstreamErrors(h), { protocol: 2 }, 'counted as protocol errors');
});

t.test('response hop-by-hop headers from the upstream are not relayed; the rest arrive as sent', async (t) => {
  const h = await behindRawUpstream(t, (s) => s.on('data', () => s.write('HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: internal\r\nKeep-Alive: timeout=99\r\nProxy-Connection: keep-alive\r\nX-Kept: Mixed Case Value\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok')));
  const r = await request(h, fx, { path: '/x' });
  t.same([r.status, r.body], [200, 'ok']);
  t.equal(r.headers['x-hop'], undefined, 'a header the upstream nominated in Connection');
  t.equal(r.headers['proxy-connection'], undefined);
  t.notMatch(String(r.headers['keep-alive'] ?? ''), /99/, "the upstream's Keep-Alive is not ours");
  t.equal(r.headers.connection, 'close', 'Connection states what Portcullis does (this client asked to close), not what the upstream said');
  t.equal(r.headers['x-kept'], 'Mixed Case Value');
  t.same(r.headers['set-cookie'], ['a=1', 'b=2']);
  t.match(r.headers['x-request-id'], /^[0-9a-f-]{36}$/, 'and Portcullis adds its request id');
});

t.test('an upstream that sends a second, unasked-for response: it never reaches the next client', async (t) => {
  let n = 0;
  const h = await behindRawUpstream(t, (s) => s.on('data', () => {
    n++;
    if (n === 1) s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Forged: 1\r\n\r\nforged');
    else s.write('HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond');
  }));
  const first = await request(h, fx, { path: '/a' });
  const second = await request(h, fx, { path: '/b' });
  t.same([first.body, second.body, second.headers['x-forged']], ['first', 'second', undefined], 'each client got the response to its own request');
});

t.test('a chunked upstream response is relayed whole; one that breaks off mid-body closes the client connection', async (t) => {
  const h = await behindRawUpstream(t, (s) => s.on('data', (d) => {
    if (d.toString().startsWith('GET /broken')) { s.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'); return; }
    s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n');
  }));
  const r = await request(h, fx, { path: '/chunked' });
  t.same([r.status, r.body, r.headers['content-type']], [200, 'hello, world', 'text/plain']);
  await t.rejects(request(h, fx, { path: '/broken' }), { code: 'ECONNRESET' }, 'the client sees an incomplete response, never a complete-looking one');
});

t.test('upstream over TLS: verified against upstream.ca; an upstream the CA did not sign -> 502', async (t) => {
  const upCa = issue({ cn: 'Upstream CA', ca: true });
  const leaf = issue({ cn: 'upstream', issuer: upCa, ips: ['127.0.0.1'], eku: ['serverAuth'] });
  const seen: string[] = [];
  const server = https.createServer({ cert: leaf.certPem, key: leaf.keyPem }, (req, res) => { seen.push(String(req.headers['x-auth-method'])); res.end('over tls'); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { server.closeAllConnections(); server.close(); });
  const port = (server.address() as { port: number }).port;
  const caFile = join(fx.dir, 'upstream-ca.crt');
  writeFileSync(caFile, upCa.certPem);
  const cfg = (ca: string) => baseConfig(policies).replace('url: {{UPSTREAM}}', `url: https://127.0.0.1:${port}\n  ca: ${ca}`);
  const h = await startHarness(fx, cfg(caFile));
  t.teardown(() => h.close());
  const r = await request(h, fx, { path: '/ws/x', ...client(fx, 'valid') });
  t.same([r.status, r.body, seen], [200, 'over tls', ['mtls']], 'forwarded over TLS with the identity');
  const wrongCa = join(fx.dir, 'other-ca.crt');
  writeFileSync(wrongCa, issue({ cn: 'Other CA', ca: true }).certPem);
  const bad = await startHarness(fx, cfg(wrongCa));
  t.teardown(() => bad.close());
  const refused = await request(bad, fx, { path: '/x' });
  t.same([refused.status, refused.json.error.code], [502, 'UPSTREAM_UNAVAILABLE']);
  t.ok(bad.logs.find((l) => l.msg === 'upstream error' && /UNABLE_TO_VERIFY|SELF_SIGNED|ISSUER/.test(l.detail)), 'the TLS failure is in the log');
  t.equal(seen.length, 1, 'nothing reached the upstream through the untrusted connection');
  t.same([await upstreamErrors(h), await upstreamErrors(bad)], [{}, { tls: 1 }], 'counted as a TLS error');
});

t.test('an upstream that stalls mid-body: the client connection is cut after upstream.timeoutMs, and the proxy keeps serving', async (t) => {
  const h = await behindRawUpstream(t, (s) => s.on('data', (d) => {
    if (d.toString().startsWith('GET /stall')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial'); // and nothing more
    else s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
  }));
  const t0 = Date.now();
  await t.rejects(request(h, fx, { path: '/stall' }), { code: 'ECONNRESET' }, 'an incomplete response is cut, not completed');
  t.ok(Date.now() - t0 < 5000, 'within the timeout (1 s), give or take the timer');
  await until('the access line', () => h.logs.some((l) => l.msg === 'access' && l.path === '/stall'));
  t.match(h.logs.find((l) => l.msg === 'upstream error'), { code: 'UPSTREAM_TIMEOUT', detail: 'UPSTREAM_TIMEOUT', afterHead: true }, 'logged as an upstream failure');
  t.match(h.logs.find((l) => l.msg === 'access' && l.path === '/stall'), { status: 200, code: 'UPSTREAM_TIMEOUT' }, 'not as a client that left (499)');
  t.same(await upstreamErrors(h), { timeout: 1 }, 'and counted');
  t.equal((await request(h, fx, { path: '/ok' })).body, 'ok');
});
