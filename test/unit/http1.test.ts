// The upstream HTTP/1.1 client against raw TCP servers that answer with hand-written
// bytes: framing (length, chunked, until close, 1xx, HEAD/204/304), the responses it
// must refuse rather than guess at, connection reuse and its limits, request framing,
// timeouts, backpressure and TLS.
import t from 'tap';
import { createServer, type Socket } from 'node:net';
import tls from 'node:tls';
import { Readable } from 'node:stream';
import { Http1Pool, LAST_AS_STRING, type ExchangeHandler } from '../../src/pipeline/http1.ts';
import { issue } from '../../src/tls/pki.ts';

type T = { teardown(fn: () => unknown): void };

interface Got { status?: number; headers?: string[]; body: Buffer; error?: string; timeout?: boolean; pieces: number; last?: number; lastAs?: string }

/**
 * A handler that collects one response; `slow` makes it refuse data (backpressure) until
 * resumed; `keep` receives every body chunk as given, uncopied (as a slow client's socket
 * queue holds them), instead of `body`.
 */
function collect(o: { slowFor?: number; pool?: () => Http1Pool; ex?: () => unknown; keep?: Buffer[] } = {}): { h: ExchangeHandler; done: Promise<Got> } {
  const got: Got = { body: Buffer.alloc(0), pieces: 0 };
  let resolve!: (g: Got) => void;
  const done = new Promise<Got>((r) => { resolve = r; });
  let paused = false;
  const h: ExchangeHandler = {
    onHead(status, headers) { got.status = status; got.headers = headers; },
    onData(chunk) {
      got.pieces++;
      if (o.keep) { o.keep.push(chunk); return true; }
      got.body = Buffer.concat([got.body, chunk]);
      if (o.slowFor && !paused) {
        paused = true;
        setTimeout(() => o.pool!().resume(o.ex!() as never), o.slowFor);
        return false;
      }
      return true;
    },
    onComplete(last) {
      if (last !== undefined) {
        const b = typeof last === 'string' ? Buffer.from(last, 'latin1') : last;
        got.last = b.length;
        got.lastAs = typeof last;
        if (o.keep) o.keep.push(b);
        else got.body = Buffer.concat([got.body, b]);
      }
      resolve(got);
    },
    onError(code, timeout) { got.error = code; got.timeout = timeout; resolve(got); },
  };
  return { h, done };
}

/** A raw upstream: `answer` gets each connection's accumulated request bytes and writes what it likes. */
async function raw(t: T, answer: (s: Socket, req: string, conn: number) => void): Promise<{ port: number; conns: () => number; requests: string[] }> {
  let conns = 0;
  const requests: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    const n = ++conns;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      // One request per head (bodies in these tests are framed by Content-Length or chunked and small).
      while (true) {
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = buf.slice(0, end + 4);
        let rest = buf.slice(end + 4);
        let body = '';
        const cl = /\r\ncontent-length: (\d+)/i.exec(head);
        if (cl) { if (rest.length < Number(cl[1])) return; body = rest.slice(0, Number(cl[1])); rest = rest.slice(Number(cl[1])); }
        else if (/\r\ntransfer-encoding: chunked/i.test(head)) { const z = rest.indexOf('0\r\n\r\n'); if (z === -1) return; body = rest.slice(0, z + 5); rest = rest.slice(z + 5); }
        buf = rest;
        requests.push(head + body);
        answer(s, head + body, n);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { for (const s of sockets) s.destroy(); server.close(); });
  return { port: (server.address() as { port: number }).port, conns: () => conns, requests };
}

function pool(t: T, port: number, o: { timeoutMs?: number; maxConnections?: number; keepAliveMs?: number; url?: string; ca?: string } = {}): Http1Pool {
  const p = new Http1Pool({ url: new URL(o.url ?? `http://127.0.0.1:${port}`), ca: o.ca, timeoutMs: o.timeoutMs ?? 2000, maxConnections: o.maxConnections ?? 16, keepAliveMs: o.keepAliveMs ?? 30_000 });
  t.teardown(() => p.close());
  return p;
}

const H = ['host', 'up.test', 'x-a', '1'];
function get(p: Http1Pool, path = '/x', method = 'GET', body: Buffer | Readable | null = null, length?: string): Promise<Got> {
  const c = collect();
  p.request(method, path, H, body, length, c.h);
  return c.done;
}
const hdr = (g: Got, name: string) => { const i = g.headers?.findIndex((v, k) => k % 2 === 0 && v.toLowerCase() === name); return i === undefined || i < 0 ? undefined : g.headers![i + 1]; };

t.test('Content-Length, chunked (extensions, trailers) and close-delimited bodies arrive whole, even one byte per write', async (t) => {
  const responses: Record<string, string> = {
    '/length': 'HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Up: yes\r\n\r\nhello world',
    '/chunked': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n',
    '/close': 'HTTP/1.0 200 OK\r\n\r\nuntil the end',
  };
  for (const split of [false, true]) {
    const up = await raw(t, (s, req) => {
      const path = /^GET (\S+)/.exec(req)![1]!;
      const bytes = Buffer.from(responses[path]!, 'latin1');
      if (!split) { s.write(bytes); if (path === '/close') s.end(); return; }
      let i = 0;
      const next = () => { if (i < bytes.length) { s.write(bytes.subarray(i, i + 1)); i++; setImmediate(next); } else if (path === '/close') s.end(); };
      next();
    });
    const p = pool(t, up.port);
    for (const path of Object.keys(responses)) {
      const g = await get(p, path);
      t.equal(g.error, undefined, `${path} ${split ? 'byte by byte' : 'in one write'}: no error`);
      t.equal(g.status, 200);
      t.equal(g.body.toString(), path === '/close' ? 'until the end' : 'hello world', `${path} ${split ? 'byte by byte' : 'in one write'}: body`);
      // In one read, the body's final piece comes with the end (the relay then writes and
      // ends in one call); a close-delimited body ends later, with nothing held back.
      if (!split) t.same([g.pieces, g.last], { '/length': [0, 11], '/chunked': [1, 6], '/close': [1, undefined] }[path], `${path}: pieces before the end, and the final one with it`);
    }
    t.equal(hdr(await get(p, '/length'), 'x-up'), 'yes', 'headers as sent');
  }
});

t.test('the final piece of a body read whole: a latin1 string up to LAST_AS_STRING bytes, byte for byte; a Buffer above', async (t) => {
  // Every byte value, so a wrong encoding (UTF-8 for the string) would show.
  const every = Buffer.from(Array.from({ length: 256 }, (_, k) => k));
  const small = Buffer.concat(Array.from({ length: 8 }, () => every)); // 2 KiB
  const large = Buffer.concat(Array.from({ length: LAST_AS_STRING / 256 + 4 }, () => every)); // 17 KiB
  const up = await raw(t, (s, req) => {
    const body = /^GET \/small/.test(req) ? small : large;
    s.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body]));
  });
  const p = pool(t, up.port);
  const a = await get(p, '/small');
  t.same([a.pieces, a.last, a.lastAs], [0, small.length, 'string'], '2 KiB in one read: the whole body with the end, as a string');
  t.ok(a.body.equals(small), 'every byte value arrives unchanged');
  const b = await get(p, '/large');
  t.equal(b.error, undefined);
  t.ok(b.body.equals(large), '17 KiB arrives unchanged');
  // The final piece is whatever the last read held: all 17 KiB in one read here, but the check holds however they split.
  t.equal(b.lastAs, b.last! > LAST_AS_STRING ? 'object' : 'string', 'a final piece over the limit stays a Buffer');
});

t.test('field lines: OWS around a value is dropped, obs-text and inner spaces kept, an empty value relayed, no headers at all', async (t) => {
  const responses: Record<string, string> = {
    '/ows': 'HTTP/1.1 200 OK\r\nX-Spaced: \t two  words \t\r\nX-Empty:\r\nX-Blank:   \r\nX-Latin: caf\xe9\xa0\r\nContent-Length:2\r\n\r\nok',
    '/bare': 'HTTP/1.1 204\r\n\r\n',
  };
  const up = await raw(t, (s, req) => s.write(Buffer.from(responses[/^GET (\S+)/.exec(req)![1]!]!, 'latin1')));
  const p = pool(t, up.port);
  const g = await get(p, '/ows');
  t.same([g.error, g.status, g.body.toString()], [undefined, 200, 'ok']);
  t.same(g.headers, ['X-Spaced', 'two  words', 'X-Empty', '', 'X-Blank', '', 'X-Latin', 'caf\xe9\xa0', 'Content-Length', '2'], 'names as sent, values without their OWS');
  const b = await get(p, '/bare');
  t.same([b.error, b.status, b.headers], [undefined, 204, []], 'a status line with no reason phrase and no header');
  t.equal(up.conns(), 1, 'both on one kept-alive connection');
});

t.test('1xx responses are skipped; HEAD, 204 and 304 have no body whatever their headers say', async (t) => {
  const up = await raw(t, (s, req) => {
    if (req.startsWith('HEAD')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n');
    else if (req.includes('/204')) s.write('HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n');
    else if (req.includes('/304')) s.write('HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n');
    else s.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok');
  });
  const p = pool(t, up.port);
  const g = await get(p, '/x');
  t.same([g.status, g.body.toString(), hdr(g, 'link')], [201, 'ok', undefined], 'the final response, without the early hints');
  const head = await get(p, '/x', 'HEAD');
  t.same([head.status, head.body.length, hdr(head, 'content-length')], [200, 0, '5000']);
  t.same([(await get(p, '/204')).status, (await get(p, '/304')).status], [204, 304]);
  t.equal(up.conns(), 1, 'and the connection stayed in step for all four');
});

t.test('responses that could desynchronise a reused connection are refused, and the connection is never reused', async (t) => {
  const bad: [string, string, string][] = [
    ['Content-Length and Transfer-Encoding', 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 'UPSTREAM_BAD_CONTENT_LENGTH'],
    ['two different Content-Lengths', 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc', 'UPSTREAM_BAD_CONTENT_LENGTH'],
    ['a Content-Length that is not a number', 'HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nab', 'UPSTREAM_BAD_CONTENT_LENGTH'],
    ['a negative Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', 'UPSTREAM_BAD_CONTENT_LENGTH'],
    ['obs-fold', 'HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_HEADER'],
    ['a space before the colon', 'HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n', 'UPSTREAM_BAD_HEADER'],
    ['a bare LF inside the head', 'HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_HEADER'],
    ['a control character in a value', 'HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_HEADER'],
    ['a bare CR inside a value', 'HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_HEADER'],
    ['a vertical tab at the end of a value (not OWS)', 'HTTP/1.1 200 OK\r\nX-A: a\x0b\r\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_HEADER'],
    ['a field line without a colon', 'HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_HEADER'],
    ['an empty field name', 'HTTP/1.1 200 OK\r\n: a\r\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_HEADER'],
    ['a bare LF ending the status line', 'HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_STATUS_LINE'],
    ['not HTTP/1.x', 'HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_STATUS_LINE'],
    ['a status that is not three digits', 'HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n', 'UPSTREAM_BAD_STATUS_LINE'],
    ['an unasked-for 101', 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n', 'UPSTREAM_UNEXPECTED_UPGRADE'],
  ];
  for (const [what, bytes, code] of bad) {
    const up = await raw(t, (s) => s.write(bytes));
    const p = pool(t, up.port);
    const g = await get(p);
    t.same([g.error, g.status], [code, undefined], `${what}: ${code}, no response head relayed`);
  }
  // Errors after the head: the head was relayed, then the exchange fails.
  const chunkBad: [string, string][] = [
    ['a chunk size that is not hex', '5\r\nhello\r\nzz\r\n'],
    ['a chunk without its CRLF', '5\r\nhelloXY0\r\n\r\n'],
    ['a chunk size over 8 hex digits', '100000000\r\n'],
  ];
  for (const [what, body] of chunkBad) {
    const up = await raw(t, (s) => s.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${body}`));
    const g = await get(pool(t, up.port));
    t.same([g.status, g.error], [200, 'UPSTREAM_BAD_CHUNK'], `${what}: the exchange fails after the head`);
  }
  const huge = await raw(t, (s) => s.write(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70_000)}\r\n\r\n`));
  t.equal((await get(pool(t, huge.port))).error, 'UPSTREAM_HEAD_TOO_LARGE', 'a head over 64 KiB');
});

t.test('bytes after a complete response are never read as the next response', async (t) => {
  const up = await raw(t, (s, _req, conn) => {
    // A response followed by a forged second one, on the first connection only.
    if (conn === 1) s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Forged: 1\r\n\r\nforged');
    else s.write(`HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal`);
  });
  const p = pool(t, up.port);
  t.equal((await get(p)).body.toString(), 'first');
  const second = await get(p);
  t.same([second.body.toString(), hdr(second, 'x-forged')], ['real', undefined], 'the second request got its own response');
  t.equal(up.conns(), 2, 'on a new connection');
  // The same for bytes that arrive on an idle connection.
  const late = await raw(t, (s, _req, conn) => {
    s.write(`HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n${conn}`);
    if (conn === 1) setTimeout(() => s.write('HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged'), 30);
  });
  const q = pool(t, late.port);
  t.equal((await get(q)).body.toString(), '1');
  await new Promise((r) => setTimeout(r, 100));
  t.equal((await get(q)).body.toString(), '2', 'unsolicited bytes on an idle connection end it');
});


t.test('what outlives a read stays intact while other connections read: partial heads, chunk-size lines and kept body chunks', async (t) => {
  // Two responses written piece by piece, the two connections' pieces alternating, so each
  // read on one connection is followed by a read on the other. The head and a chunk-size
  // line are split mid-way. The handler keeps every body chunk it is given, uncopied, as a
  // slow client's socket queue does, and looks at them only once both responses are done.
  const bodyA = Buffer.from(Array.from({ length: 40 }, (_, k) => `a${k}-`.padEnd(50, String.fromCharCode(97 + (k % 26)))).join(''));
  const bodyB = Buffer.from(Array.from({ length: 40 }, (_, k) => `B${k}-`.padEnd(50, String.fromCharCode(65 + (k % 26)))).join(''));
  const responseA = Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nX-Which: first\r\nContent-Length: ${bodyA.length}\r\n\r\n`), bodyA]);
  const responseB = Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nX-Which: second\r\nTransfer-Encoding: chunked\r\n\r\n'),
    ...Array.from({ length: 8 }, (_, k) => Buffer.concat([Buffer.from(`${(250).toString(16)}\r\n`), bodyB.subarray(k * 250, k * 250 + 250), Buffer.from('\r\n')])),
    Buffer.from('0\r\n\r\n')]);
  const pieces = (b: Buffer) => { const out: Buffer[] = [b.subarray(0, 20)]; for (let i = 20; i < b.length; i += 37) out.push(b.subarray(i, i + 37)); return out; };
  const waiting: Socket[] = [];
  const up = await raw(t, (s) => {
    waiting.push(s);
    if (waiting.length < 2) return;
    const [sa, sb] = waiting as [Socket, Socket];
    const pa = pieces(responseA), pb = pieces(responseB);
    let k = 0;
    const next = () => {
      if (k >= pa.length && k >= pb.length) return;
      if (k < pa.length) sa.write(pa[k]!);
      setTimeout(() => { if (k < pb.length) sb.write(pb[k]!); k++; setTimeout(next, 1); }, 1);
    };
    next();
  });
  const p = pool(t, up.port);
  const keptA: Buffer[] = [], keptB: Buffer[] = [];
  const a = collect({ keep: keptA }), b = collect({ keep: keptB });
  p.request('GET', '/a', H, null, undefined, a.h);
  p.request('GET', '/b', H, null, undefined, b.h);
  const [ga, gb] = await Promise.all([a.done, b.done]);
  t.equal(up.conns(), 2, 'two connections, read in turn');
  t.same([ga.error, ga.status, hdr(ga, 'x-which')], [undefined, 200, 'first'], 'the first head, split after 20 bytes, parsed whole');
  t.same([gb.error, gb.status, hdr(gb, 'x-which')], [undefined, 200, 'second'], 'the second head too');
  t.ok(keptA.length > 10 && keptB.length > 10, 'each body came in many reads');
  t.ok(Buffer.concat(keptA).equals(bodyA), 'every kept chunk of the Content-Length body still holds its bytes');
  t.ok(Buffer.concat(keptB).equals(bodyB), 'every kept chunk of the chunked body still holds its bytes');
});
t.test('keep-alive: one connection reused; Connection: close, HTTP/1.0 and a short Keep-Alive hint are honoured', async (t) => {
  const up = await raw(t, (s, req) => {
    if (req.includes('/close')) s.write('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nc');
    else if (req.includes('/http10')) s.write('HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nd');
    else if (req.includes('/hint1')) s.write('HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 1\r\n\r\nh');
    else s.write('HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nk');
  });
  const p = pool(t, up.port);
  for (let i = 0; i < 5; i++) await get(p);
  t.equal(up.conns(), 1, 'five requests, one connection');
  await get(p, '/close');
  await get(p);
  t.equal(up.conns(), 2, 'after Connection: close, a new one');
  await get(p, '/http10');
  await get(p);
  t.equal(up.conns(), 3, 'HTTP/1.0 without keep-alive: a new one');
  await get(p, '/hint1');
  await get(p);
  t.equal(up.conns(), 4, 'Keep-Alive: timeout=1 leaves no safe idle time: a new one');
  const short = pool(t, up.port, { keepAliveMs: 50 });
  await get(short);
  const before = up.conns();
  await new Promise((r) => setTimeout(r, 120));
  await get(short);
  t.equal(up.conns(), before + 1, 'an idle connection past keepAliveMs is not reused');
});

t.test('a reused connection the upstream closed: an idempotent request is sent again once, a POST is not', async (t) => {
  // Every connection answers one request and then closes without a word on the next.
  const up = await raw(t, (s, _req) => {
    const n = (s as Socket & { n?: number }).n = ((s as Socket & { n?: number }).n ?? 0) + 1;
    if (n === 1) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    else s.destroy();
  });
  const p = pool(t, up.port);
  await get(p);
  const again = await get(p);
  t.same([again.status, again.body.toString(), up.conns()], [200, 'ok', 2], 'GET: retried on a new connection');
  const post = await get(p, '/x', 'POST', Buffer.from('once'));
  t.equal(post.error, 'ECONNRESET', 'POST on the reused connection: not retried, an error');
  t.equal(up.requests.filter((r) => r.startsWith('POST')).length, 1, 'the POST was sent once');
  const refused = await raw(t, (s) => s.destroy());
  const fresh = await get(pool(t, refused.port));
  t.equal(fresh.error, 'ECONNRESET', 'a fresh connection that closes is not retried');
  t.equal(refused.conns(), 1);
});

t.test('request framing: buffered, Content-Length-streamed and chunked-streamed bodies; Host and lengths set once', async (t) => {
  const up = await raw(t, (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'));
  const p = pool(t, up.port);
  const c = collect();
  p.request('POST', '/buf', ['host', 'h.test', 'content-length', '999'], Buffer.from('signed body'), undefined, c.h);
  await c.done;
  t.match(up.requests[0], /^POST \/buf HTTP\/1\.1\r\nhost: h\.test\r\ncontent-length: 11\r\n\r\nsigned body$/, 'a buffered body: its own length, the client\'s dropped');
  await get(p, '/stream', 'PUT', Readable.from([Buffer.from('ab'), Buffer.from('cd')]), '4');
  t.match(up.requests[1], /^PUT \/stream HTTP\/1\.1\r\nhost: up\.test\r\nx-a: 1\r\ncontent-length: 4\r\n\r\nabcd$/);
  await get(p, '/chunked', 'POST', Readable.from([Buffer.from('hello'), Buffer.from(' world!')]));
  t.match(up.requests[2], /transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n$/, 'no length: re-framed as chunked');
  await get(p, '/empty', 'POST');
  t.match(up.requests[3], /content-length: 0\r\n\r\n$/, 'a POST without a body says so');
  await get(pool(t, 0, { url: `http://127.0.0.1:${up.port}/base/` }), '/p?q=1');
  t.match(up.requests[4], /^GET \/base\/p\?q=1 HTTP\/1\.1\r\nhost: up\.test\r\n/, 'the upstream path is a prefix; Host as given');
  t.equal(up.requests.filter((r) => (r.match(/\r\nhost:/gi) ?? []).length !== 1).length, 0, 'one Host per request');
});

t.test('what cannot be written safely is refused before a byte is sent', async (t) => {
  const up = await raw(t, (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'));
  const p = pool(t, up.port);
  const c = collect();
  for (const [what, path, headers] of [
    ['CRLF in a header value', '/x', ['host', 'h', 'x-id', 'a\r\nx-injected: 1']],
    ['LF in a header value', '/x', ['host', 'h', 'x-id', 'a\nb']],
    ['a character beyond Latin-1', '/x', ['host', 'h', 'x-id', 'caf\u20ac']],
    ['a bad header name', '/x', ['host', 'h', 'x id', 'a']],
    ['a space in the target', '/a b', ['host', 'h']],
    ['CRLF in the target', '/a\r\nx: y', ['host', 'h']],
  ] as [string, string, string[]][]) {
    t.throws(() => p.request('GET', path, headers, null, undefined, c.h), { code: 'UPSTREAM_BAD_REQUEST' }, what);
  }
  await new Promise((r) => setTimeout(r, 50));
  t.equal(up.conns(), 0, 'nothing was sent');
});

t.test('timeouts: a silent upstream times out; a slow client does not make the upstream late', async (t) => {
  const silent = await raw(t, () => undefined);
  const p = pool(t, silent.port, { timeoutMs: 200 });
  const t0 = Date.now();
  const g = await get(p);
  t.same([g.error, g.timeout], ['UPSTREAM_TIMEOUT', true]);
  t.ok(Date.now() - t0 < 1500, 'within the timeout, give or take the timer');
  const big = Buffer.alloc(8 * 1024 * 1024, 'x');
  const up = await raw(t, (s) => { s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n`); s.write(big); });
  let q!: Http1Pool;
  let ex: unknown;
  const c = collect({ slowFor: 600, pool: () => q, ex: () => ex });
  q = pool(t, up.port, { timeoutMs: 200 });
  ex = q.request('GET', '/big', H, null, undefined, c.h);
  const slow = await c.done;
  t.same([slow.error, slow.body.length], [undefined, big.length], 'paused for 3× the timeout, then the whole body');
});

t.test('the connection limit queues exchanges; a cancelled exchange leaves the queue', async (t) => {
  const up = await raw(t, (s) => { setTimeout(() => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'), 30); });
  const p = pool(t, up.port, { maxConnections: 2 });
  const all = Array.from({ length: 6 }, () => get(p));
  const cancelled = collect();
  const ex = p.request('GET', '/cancelled', H, null, undefined, cancelled.h);
  p.cancel(ex);
  const got = await Promise.all(all);
  t.same(got.map((g) => g.body.toString()), Array(6).fill('ok'), 'all six answered');
  t.equal(up.conns(), 2, 'over two connections');
  t.notOk(up.requests.some((r) => r.includes('/cancelled')), 'the cancelled one was never sent');
});

t.test('TLS upstream: verified against upstream.ca by name or IP; an unverifiable certificate is an error', async (t) => {
  const ca = issue({ cn: 'Upstream CA', ca: true });
  const leaf = issue({ cn: 'up.test', issuer: ca, dns: ['localhost'], ips: ['127.0.0.1'], eku: ['serverAuth'] });
  const server = tls.createServer({ cert: leaf.certPem, key: leaf.keyPem }, (s) => s.on('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls')));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as { port: number }).port;
  t.equal((await get(pool(t, port, { url: `https://127.0.0.1:${port}`, ca: ca.certPem }))).body.toString(), 'tls', 'by IP');
  t.equal((await get(pool(t, port, { url: `https://localhost:${port}`, ca: ca.certPem }))).body.toString(), 'tls', 'by name (SNI)');
  const untrusted = await get(pool(t, port, { url: `https://127.0.0.1:${port}` }));
  t.match(untrusted.error, /UNABLE_TO_VERIFY|SELF_SIGNED|UNABLE_TO_GET_ISSUER/, 'not signed by a trusted CA');
  const other = issue({ cn: 'other', issuer: ca, dns: ['other.test'], eku: ['serverAuth'] });
  const wrong = tls.createServer({ cert: other.certPem, key: other.keyPem }, (s) => s.on('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n')));
  await new Promise<void>((r) => wrong.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => wrong.close());
  const wp = (wrong.address() as { port: number }).port;
  t.equal((await get(pool(t, wp, { url: `https://127.0.0.1:${wp}`, ca: ca.certPem }))).error, 'ERR_TLS_CERT_ALTNAME_INVALID', 'a certificate for another name');
});

t.test('an upstream by IPv6 literal or by name', async (t) => {
  const server = createServer((s) => s.on('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv6')));
  await new Promise<void>((r) => server.listen(0, '::1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as { port: number }).port;
  t.equal((await get(pool(t, 0, { url: `http://[::1]:${port}` }))).body.toString(), 'v6', 'http://[::1]:port');
  const up = await raw(t, (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nname'));
  const byName = await get(pool(t, 0, { url: `http://localhost:${up.port}` }));
  // localhost may resolve to ::1 first; the raw server listens on 127.0.0.1 only, which
  // Node's connect reaches by trying each address (autoSelectFamily).
  t.same([byName.error, byName.body.toString()], [undefined, 'name'], 'http://localhost:port');
});
