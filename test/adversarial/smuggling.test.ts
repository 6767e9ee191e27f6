// Request smuggling and HTTP/1.1 framing over raw TLS sockets: every case ends
// in a 400 (or is handled as exactly one well-framed request), the upstream never
// sees a request it should not, and the process keeps serving.
import t from 'tap';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, rawTls, request, client, baseConfig, OPEN_AND_CERT_POLICIES, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();
let h: Harness;
t.before(async () => {
  h = await startHarness(fx, baseConfig(OPEN_AND_CERT_POLICIES()));
});
t.teardown(() => h.close());

const H = 'Host: a.test\r\n';
const FRAMING: [string, string][] = [
  ['CL + TE together', `POST /open/x HTTP/1.1\r\n${H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/admin HTTP/1.1\r\n${H}\r\n`],
  ['duplicate Content-Length', `POST /open/x HTTP/1.1\r\n${H}Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd`],
  ['list Content-Length', `POST /open/x HTTP/1.1\r\n${H}Content-Length: 4, 4\r\n\r\nabcd`],
  ['TE: chunked, identity', `POST /open/x HTTP/1.1\r\n${H}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`],
  ['space before colon', `POST /open/x HTTP/1.1\r\n${H}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n`],
  ['TE with a tab', `POST /open/x HTTP/1.1\r\n${H}Transfer-Encoding:\tchunked\t, x\r\n\r\n0\r\n\r\n`],
  ['obs-fold', `GET /open/x HTTP/1.1\r\n${H}X-A: 1\r\n  folded\r\n\r\n`],
  ['bare LF line ending', `GET /open/x HTTP/1.1\n${H.trim()}\n\n`],
  ['bare CR', `GET /open/x HTTP/1.1\r\n${H}X-A: a\rb\r\n\r\n`],
  ['invalid chunk size', `POST /open/x HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n`],
  ['chunk size overflow', `POST /open/x HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n`],
  ['NUL in header', `GET /open/x HTTP/1.1\r\n${H}X-A: a\u0000b\r\n\r\n`],
  ['TE in HTTP/1.0', `POST /open/x HTTP/1.0\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n`],
  ['header name with space', `GET /open/x HTTP/1.1\r\n${H}X Auth: 1\r\n\r\n`],
];

for (const [name, payload] of FRAMING) {
  t.test(`framing: ${name} -> 400, nothing forwarded`, async (t) => {
    const before = h.seen.length;
    const out = await rawTls(h, fx, payload, { waitMs: 800 });
    t.match(out, /^HTTP\/1\.1 400 /, '400');
    t.equal(h.seen.length, before, 'the upstream saw nothing');
  });
}

// Catalogue HDR-06: CR, LF and NUL are refused above. Bytes 80-FF are obs-text, which RFC 9110
// §5.5 lets a field value carry: they reach the upstream byte for byte, never re-encoded.
t.test('header values with bytes 80-FF are forwarded byte for byte (latin1 E9; UTF-8 C3 A9)', async (t) => {
  const head = Buffer.concat([
    Buffer.from(`GET /open/x HTTP/1.1\r\n${H}X-Latin: caf`), Buffer.from([0xe9]),
    Buffer.from('\r\nX-Utf8: caf'), Buffer.from([0xc3, 0xa9]), Buffer.from('\r\nConnection: close\r\n\r\n'),
  ]);
  const out = await rawTls(h, fx, head);
  t.match(out, /^HTTP\/1\.1 200 /);
  // The recording upstream reads values as latin1, one character per byte.
  const up = h.seen.at(-1)!;
  t.equal(up.headers['x-latin'], 'caf\u00e9', 'the single byte E9 arrives as one byte');
  t.equal(up.headers['x-utf8'], 'caf\u00c3\u00a9', 'the UTF-8 pair C3 A9 arrives as the same two bytes');
});

t.test('pipelined: an unauthenticated second request never inherits the first one\'s identity', async (t) => {
  const before = h.seen.length;
  const out = await rawTls(h, fx, `GET /api/one HTTP/1.1\r\n${H}\r\nGET /api/two HTTP/1.1\r\n${H}X-Auth-User-ID: client-1\r\nConnection: close\r\n\r\n`, { waitMs: 1500 });
  t.equal((out.match(/HTTP\/1\.1 401 /g) ?? []).length, 2, 'both refused on a connection without a certificate');
  t.equal(h.seen.length, before);
  // With a certificate both are allowed, each as its own well-framed request.
  const out2 = await rawTls(h, fx, `POST /api/one HTTP/1.1\r\n${H}Content-Length: 5\r\n\r\nhelloGET /api/two HTTP/1.1\r\n${H}Connection: close\r\n\r\n`, { ...client(fx, 'valid'), waitMs: 1500 });
  t.equal((out2.match(/HTTP\/1\.1 200 /g) ?? []).length, 2);
  const [a, b] = h.seen.slice(-2);
  t.same([a!.method, a!.url, a!.body, b!.method, b!.url, b!.body], ['POST', '/api/one', 'hello', 'GET', '/api/two', '']);
});

t.test('pipelined: a body that smuggles a request is delivered as body, never as a request', async (t) => {
  const smuggled = `GET /api/admin HTTP/1.1\r\n${H}\r\n`;
  const before = h.seen.length;
  const out = await rawTls(h, fx, `POST /open/x HTTP/1.1\r\n${H}Content-Length: ${smuggled.length}\r\nConnection: close\r\n\r\n${smuggled}`, { waitMs: 1000 });
  t.match(out, /^HTTP\/1\.1 200 /);
  t.equal(h.seen.length, before + 1, 'exactly one request upstream');
  t.equal(h.seen.at(-1)!.body, smuggled);
  t.notOk(h.seen.some((r) => r.url === '/api/admin'));
});

t.test('chunked bodies are re-framed, not passed through raw; trailers are dropped (catalogue HDR-08)', async (t) => {
  const out = await rawTls(h, fx, `POST /open/chunked HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n`, { waitMs: 1000 });
  t.match(out, /^HTTP\/1\.1 200 /);
  t.equal(h.seen.at(-1)!.body, 'hello world');
  // A trailer section may not smuggle in a field the proxy strips from the head.
  const out2 = await rawTls(h, fx, `POST /api/chunked HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTrailer: X-Auth-User-ID\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Auth-User-ID: admin\r\nX-Forwarded-Client-Cert: Hash=00\r\n\r\n`, { ...client(fx, 'valid'), waitMs: 1000 });
  t.match(out2, /^HTTP\/1\.1 200 /);
  const up = h.seen.at(-1)!;
  t.same([up.url, up.body, up.rawTrailers], ['/api/chunked', 'hello', []], 'the body arrives, the trailers do not');
  t.notOk(up.headers.trailer, 'nor the Trailer field announcing them');
  t.not(up.headers['x-auth-user-id'], 'admin', 'the identity is the certificate\'s');
});

// Catalogue PATH-09: a reverse proxy gives no tunnels and serves no server-wide OPTIONS.
t.test('CONNECT and OPTIONS * -> 400 BAD_REQUEST as JSON, nothing forwarded', async (t) => {
  for (const line of ['CONNECT a.test:443 HTTP/1.1', 'CONNECT 127.0.0.1:22 HTTP/1.1', 'OPTIONS * HTTP/1.1']) {
    const before = h.seen.length;
    const out = await rawTls(h, fx, `${line}\r\n${H}\r\n`, { ...client(fx, 'valid'), waitMs: 1500 });
    t.match(out, /^HTTP\/1\.1 400 /, `${line}: 400`);
    t.match(out, /"code":"BAD_REQUEST"/, `${line}: the JSON error`);
    t.equal(h.seen.length, before, `${line}: the upstream saw nothing`);
  }
  t.ok(h.logs.some((l) => l.msg === 'bad request' && /CONNECT is not served/.test(l.reason)), 'the refusal is logged with its reason');
});

t.test('still serving', async (t) => {
  const r = await request(h, fx, { path: '/open/alive' });
  t.equal(r.status, 200);
});
