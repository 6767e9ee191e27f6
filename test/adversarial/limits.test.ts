// Limits and slow clients: 431, 413, slowloris heads and slow bodies cut off,
// idle keep-alive closed, a connection cap with a clear refusal, and bounded
// memory while 500 slow connections are held.
import t from 'tap';
import tls from 'node:tls';
import net from 'node:net';
import { createHmac } from 'node:crypto';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, rawTls, request, baseConfig, until, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();
const cfg = (server: string) => baseConfig(`
authenticators:
  signed:
    type: hmac
    clients: [ { id: c1, secret: "0123456789abcdef0123456789abcdef", subject: c1 } ]
policies:
  - name: signed
    match: { paths: ["/signed/**"] }
    authenticate: signed
  - name: open
    match: { paths: ["/**"] }
    authenticate: none
`, server);

let h: Harness;
t.before(async () => { h = await startHarness(fx, cfg('  maxBodyBytes: 1024\n  timeouts: { headersMs: 600, requestMs: 1500, idleMs: 600 }')); });
t.teardown(() => h.close());

function connect(): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: h.port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined }, () => resolve(s));
    s.on('error', reject);
  });
}
const closed = (s: tls.TLSSocket) => new Promise<{ ms: number; data: string }>((resolve) => {
  const t0 = Date.now();
  let data = '';
  s.on('data', (d) => { data += d; });
  s.on('error', () => {});
  s.once('close', () => resolve({ ms: Date.now() - t0, data }));
});

t.test('headers over maxHeaderBytes -> 431, in one header or many', async (t) => {
  let out = await rawTls(h, fx, `GET /x HTTP/1.1\r\nHost: a.test\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
  t.match(out, /^HTTP\/1\.1 431 /);
  const many = Array.from({ length: 1500 }, (_, i) => `X-H${i}: ${'v'.repeat(10)}`).join('\r\n');
  out = await rawTls(h, fx, `GET /x HTTP/1.1\r\nHost: a.test\r\n${many}\r\n\r\n`);
  t.match(out, /^HTTP\/1\.1 431 /);
  out = await rawTls(h, fx, `GET /${'a/'.repeat(9000)} HTTP/1.1\r\nHost: a.test\r\n\r\n`);
  t.match(out, /^HTTP\/1\.1 431 /, 'a very long path');
});

// Catalogue DOS-06, RFC 9110 §15.5.15: a target over server.maxUriBytes (8 KiB by default)
// is a 414 before any policy or upstream sees it; one at the limit is served.
t.test('a request target over maxUriBytes -> 414 URI_TOO_LONG; at the limit, served', async (t) => {
  const before = h.seen.length;
  let out = await rawTls(h, fx, `GET /${'a'.repeat(9000)} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`);
  t.match(out, /^HTTP\/1\.1 414 /, 'a 9 KB path');
  t.match(out, /"code":"URI_TOO_LONG"/);
  out = await rawTls(h, fx, `GET /x?${'q=1&'.repeat(2500)} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`);
  t.match(out, /^HTTP\/1\.1 414 /, 'a short path with a 10 KB query');
  out = await rawTls(h, fx, `GET https://a.test/${'a'.repeat(9000)} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`);
  t.match(out, /^HTTP\/1\.1 414 /, 'the absolute form');
  t.equal(h.seen.length, before, 'the upstream saw none of them');
  const atLimit = `/${'b'.repeat(8191)}`;
  out = await rawTls(h, fx, `GET ${atLimit} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`);
  t.match(out, /^HTTP\/1\.1 200 /, 'a target of exactly 8192 bytes is served');
  t.equal(h.seen.at(-1)?.url, atLimit, 'and forwarded whole');
  const line = h.logs.find((l) => l.code === 'URI_TOO_LONG');
  t.match(line?.reason, /^request target of 9001 bytes, over server\.maxUriBytes \(8192\)$/, 'the log says why, without the target');
});

t.test('a body over maxBodyBytes on a route that reads it -> 413 (declared or chunked)', async (t) => {
  const before = h.seen.length;
  let out = await rawTls(h, fx, `POST /signed/x HTTP/1.1\r\nHost: a.test\r\nX-API-Key: c1\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n`);
  t.match(out, /^HTTP\/1\.1 413 /);
  t.match(out, /"code":"BODY_TOO_LARGE"/);
  const chunk = 'x'.repeat(600);
  out = await rawTls(h, fx, `POST /signed/x HTTP/1.1\r\nHost: a.test\r\nX-API-Key: c1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`);
  t.match(out, /^HTTP\/1\.1 413 /);
  t.equal(h.seen.length, before);
  // Within the limit the signed body goes through, byte-for-byte.
  const ts = String(Math.floor(Date.now() / 1000)), nonce = 'n-' + Date.now(), body = '{"a":1}';
  const sig = createHmac('sha256', '0123456789abcdef0123456789abcdef').update(`POST/signed/x${ts}${nonce}${body}`).digest('hex');
  const ok = await request(h, fx, { method: 'POST', path: '/signed/x', body, headers: { 'x-api-key': 'c1', 'x-timestamp': ts, 'x-nonce': nonce, 'x-signature': sig } });
  t.equal(ok.status, 200);
});

// After an early answer the rest of the body is read and thrown away for a little while
// (a lingering close): a short remainder keeps the connection in step for the next request;
// an endless or dribbling one gets the connection closed, and never a second answer.
t.test('a refused body still arriving: the rest is discarded, the connection stays in step, and there is one answer only', async (t) => {
  const before = h.seen.length;
  const chunk = 'x'.repeat(600);
  const out = await rawTls(h, fx, `POST /signed/x HTTP/1.1\r\nHost: a.test\r\nX-API-Key: c1\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n${chunk}\r\n258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`, { waitMs: 3000 });
  t.same(out.match(/HTTP\/1\.1 \d{3}/g), ['HTTP/1.1 413', 'HTTP/1.1 200'], 'the body over the cap is refused, the request after it served');
  t.same(h.seen.slice(before).map((r) => r.url), ['/next'], 'and only that one reached the upstream');

  const endless = async (pace: 'flood' | 'dribble') => {
    const s = await connect();
    const done = closed(s);
    s.write(`POST /signed/x HTTP/1.1\r\nHost: a.test\r\nX-API-Key: c1\r\n${pace === 'flood' ? 'Transfer-Encoding: chunked' : 'Content-Length: 5000'}\r\n\r\n`);
    const piece = pace === 'flood' ? `10000\r\n${'y'.repeat(0x10000)}\r\n` : 'y';
    const iv = setInterval(() => { if (!s.destroyed) s.write(piece); }, pace === 'flood' ? 5 : 100);
    const stop = setTimeout(() => s.destroy(), 8000);
    const r = await done;
    clearInterval(iv);
    clearTimeout(stop);
    return r;
  };
  for (const pace of ['flood', 'dribble'] as const) {
    const r = await endless(pace);
    t.same(r.data.match(/HTTP\/1\.1 \d{3}/g), ['HTTP/1.1 413'], `${pace}: one answer, the 413, and no 408 after it`);
    t.ok(r.ms < 7000, `${pace}: the proxy closed the connection (after ${r.ms} ms)`);
  }
  t.equal(h.seen.length, before + 1);
});

// Catalogue TLS-14: a client that opens TCP and never finishes the handshake (ghostunnel's
// handshake-timeout test) is cut off, and counted as a failed handshake.
t.test('a TLS handshake not finished within headersMs is cut off and counted', async (t) => {
  const handshakeErrors = async () => {
    const text = await fetch(`http://127.0.0.1:${h.adminPort}/metrics`).then((r) => r.text());
    return Number(/portcullis_tls_handshakes_total\{[^}]*result="error"[^}]*\} (\d+)/.exec(text)?.[1] ?? 0);
  };
  const before = await handshakeErrors();
  const timeouts = async () => Number(/^portcullis_tls_handshake_errors_total\{reason="timeout"\} (\d+)$/m.exec(await fetch(`http://127.0.0.1:${h.adminPort}/metrics`).then((r) => r.text()))?.[1] ?? 0);
  const timeoutsBefore = await timeouts();
  for (const [what, bytes] of [['nothing', ''], ['half a ClientHello', '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03']] as const) {
    const s = net.connect(h.port, '127.0.0.1');
    s.on('error', () => {});
    const t0 = Date.now();
    await new Promise<void>((r) => s.once('connect', () => r()));
    if (bytes) s.write(Buffer.from(bytes, 'latin1'));
    await new Promise((r) => s.once('close', r));
    t.ok(Date.now() - t0 < 4000, `${what}: closed after ${Date.now() - t0} ms (headersMs 600)`);
  }
  let after = before;
  for (let i = 0; i < 100 && after < before + 2; i++) { await new Promise((r) => setTimeout(r, 50)); after = await handshakeErrors(); }
  t.equal(after, before + 2, 'both counted as failed handshakes');
  t.equal(await timeouts(), timeoutsBefore + 2, 'both for the reason "timeout" (tls_handshake_errors_total)');
});

t.test('slowloris: a request head not finished within headersMs is cut off', async (t) => {
  const s = await connect();
  const done = closed(s);
  s.write('GET /x HTTP/1.1\r\nHost: a.test\r\n');
  const iv = setInterval(() => { if (!s.destroyed) s.write('X-Slow: 1\r\n'); }, 150);
  const r = await done;
  clearInterval(iv);
  t.ok(r.ms < 3000, `closed after ${r.ms} ms (headersMs 600)`);
  t.match(r.data, /^(HTTP\/1\.1 408 |$)/, '408 or a bare close');
});

t.test('slow body: a request not finished within requestMs is cut off', async (t) => {
  const s = await connect();
  const done = closed(s);
  s.write('POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n');
  const iv = setInterval(() => { if (!s.destroyed) s.write('a'); }, 100);
  const r = await done;
  clearInterval(iv);
  t.ok(r.ms < 4500, `closed after ${r.ms} ms (requestMs 1500)`);
});

t.test('an idle keep-alive connection is closed after idleMs', async (t) => {
  const s = await connect();
  const done = closed(s);
  s.write('GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n');
  const r = await done;
  t.match(r.data, /^HTTP\/1\.1 200 /);
  t.ok(r.ms >= 500 && r.ms < 3000, `closed ${r.ms} ms after the response (idleMs 600)`);
});

// Catalogue DOS-03 (slowhttptest -X): a client that asks for a large response and stops
// reading it would otherwise hold its connection and an upstream connection for ever.
t.test('slow read: a client that stops reading a response is cut off after idleMs, and so is the upstream exchange', async (t) => {
  const BIG = Buffer.alloc(64 << 20, 'x'); // far more than the socket buffers on either leg hold
  let upstream: 'finished' | 'cut' | undefined;
  const slow = await startHarness(fx, cfg('  timeouts: { headersMs: 600, requestMs: 1500, idleMs: 600 }'), {
    upstreamHandler: (_req, res) => {
      res.once('close', () => { upstream = res.writableFinished ? 'finished' : 'cut'; });
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': BIG.length });
      res.end(BIG);
    },
  });
  t.teardown(() => slow.close());
  const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const c = tls.connect({ host: '127.0.0.1', port: slow.port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined }, () => resolve(c));
    c.on('error', reject);
  });
  s.on('error', () => {});
  s.write('GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n');
  s.pause(); // reads nothing from here on
  await until('the upstream exchange to end', () => upstream !== undefined, 15_000);
  t.equal(upstream, 'cut', 'the proxy closed its upstream connection mid-response');
  await until('the proxy to log the stalled client', () => slow.logs.some((l) => l.msg === 'client stopped reading the response: connection closed'));
  const line = slow.logs.find((l) => l.msg === 'client stopped reading the response: connection closed')!;
  t.same([line.idleMs, typeof line.requestId], [600, 'string']);
  // What the client can still read is a cut response, never the whole body.
  let got = 0;
  s.on('data', (d: Buffer) => { got += d.length; });
  s.resume();
  await new Promise((r) => s.once('close', r));
  t.ok(got > 0 && got < BIG.length, `the client read ${got} of ${BIG.length} bytes, then the connection closed`);
  const r = await request(slow, fx, { path: '/still' });
  t.equal(r.status, 200, 'still serving');
});

t.test('server.maxConnections: connections over the cap are refused, logged and counted', async (t) => {
  const capped = await startHarness(fx, cfg('  maxConnections: 5'));
  t.teardown(() => capped.close());
  const socks: tls.TLSSocket[] = [];
  const open = () => new Promise<'open' | 'refused'>((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: capped.port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined }, () => { socks.push(s); resolve('open'); });
    s.on('error', () => resolve('refused'));
    s.on('close', () => resolve('refused'));
  });
  const results = [];
  for (let i = 0; i < 7; i++) results.push(await open());
  t.same(results, ['open', 'open', 'open', 'open', 'open', 'refused', 'refused']);
  t.ok(capped.logs.some((l) => l.msg === 'connection refused: server.maxConnections reached'));
  const m = await (await fetch(`http://127.0.0.1:${capped.adminPort}/metrics`)).text();
  t.match(m, /portcullis_connections_dropped_total\{reason="max_connections"\} 2/);
  for (const s of socks) s.destroy();
});

// Catalogue DOS-01: one address cannot take every connection slot.
t.test('server.maxConnectionsPerIp: one address over its cap is refused before the handshake; others and later connections are served', async (t) => {
  const capped = await startHarness(fx, cfg('  maxConnectionsPerIp: 3'));
  t.teardown(() => capped.close());
  const socks: tls.TLSSocket[] = [];
  const open = (localAddress = '127.0.0.1') => new Promise<'open' | 'refused'>((resolve) => {
    const s = tls.connect({ socket: net.connect({ host: '127.0.0.1', port: capped.port, localAddress }), servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined }, () => { socks.push(s); resolve('open'); });
    s.on('error', () => resolve('refused'));
    s.on('close', () => resolve('refused'));
  });
  const results = [];
  for (let i = 0; i < 5; i++) results.push(await open());
  t.same(results, ['open', 'open', 'open', 'refused', 'refused'], 'the fourth and fifth connection from 127.0.0.1 are refused');
  t.equal(await open('127.0.0.2'), 'open', 'another address is served');
  const refusals = capped.logs.filter((l) => l.msg === 'connection refused: server.maxConnectionsPerIp reached for this address');
  t.same(refusals.map((l) => [l.remoteAddress, l.max]), [['127.0.0.1', 3]], 'logged once for the address, not once per refused connection');

  // One of the three closes: the address may connect again, and a request on it is served.
  socks.shift()!.destroy();
  for (let i = 0; i < 200; i++) {
    const open = await (await fetch(`http://127.0.0.1:${capped.adminPort}/metrics`)).text();
    if (/^portcullis_open_connections 3$/m.test(open)) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  t.equal(await open(), 'open', 'under the cap again: served');
  const raw = await new Promise<string>((resolve, reject) => {
    const s = socks.at(-1)!;
    let data = '';
    s.on('data', (d) => { data += d; if (data.includes('\r\n\r\n')) resolve(data); });
    s.on('error', reject);
    s.write('GET /x HTTP/1.1\r\nhost: a.test\r\n\r\n');
  });
  t.match(raw, /^HTTP\/1\.1 200 /);

  const m = await (await fetch(`http://127.0.0.1:${capped.adminPort}/metrics`)).text();
  t.match(m, /portcullis_connections_dropped_total\{reason="per_ip"\} 2/, 'counted by reason');
  t.notMatch(m, /portcullis_tls_handshakes_total\{[^}]*result="error"/, 'a refused connection is not a failed handshake');
  for (const s of socks) s.destroy();
});

t.test('memory stays bounded while 500 slow connections are held', async (t) => {
  const big = await startHarness(fx, cfg('  timeouts: { headersMs: 20000, requestMs: 30000 }'));
  t.teardown(() => big.close());
  global.gc?.();
  const rss0 = process.memoryUsage().rss;
  const socks: tls.TLSSocket[] = [];
  for (let i = 0; i < 500; i++) {
    const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const c = tls.connect({ host: '127.0.0.1', port: big.port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined }, () => resolve(c));
      c.on('error', reject);
    });
    s.write('GET /x HTTP/1.1\r\nHost: a.test\r\nX-Slow: ');
    socks.push(s);
  }
  const rss1 = process.memoryUsage().rss;
  const grewMb = (rss1 - rss0) / 1048576;
  t.comment(`500 slow TLS connections (both ends in this process): RSS +${grewMb.toFixed(1)} MiB`);
  t.ok(grewMb < 200, `RSS grew ${grewMb.toFixed(1)} MiB (bound: 200 MiB for both client and server sides)`);
  const r = await request(big, fx, { path: '/still' });
  t.equal(r.status, 200, 'still serving with 500 slow connections open');
  for (const s of socks) s.destroy();
});
