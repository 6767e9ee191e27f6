// Node idioms on the response and request-body paths, compared inside one process: a
// bare https server (the Node ceiling's, client certificate required) alternates two
// ways of doing one thing every second under wrk's load, and reports the CPU per request
// of each, paired slice by slice. Both sides share the process, its JIT and heap, and the
// same seconds of a noisy machine, so differences of a few per cent show (bench/RESULTS.md,
// ninth round). The server runs with Portcullis' --max-semi-space-size=16 and (except in the
// empty idiom, which switches it) its optimizeEmptyRequests. Needs the PKI,
// configs and wrk shim `npm run bench` leaves in bench/.work.
//   npm run bench:idioms -- --idiom end|close|body|defer|rtt|raw|rawproxy|proxy|portcullis|empty|sni|suites|revision [--seconds 40] [--handshake] [--jwt] [--apikey] [--hmac] [--base REV]
//   end:   res.write(last) + res.end()            against res.end(last)
//   close: res.once('close', closure)             against res.on('close', shared function)
//   body:  a 1 KiB body read into a Promise chain against the same listeners with a callback
//   defer: answering itself at once              against answering in a setImmediate (what a
//          request's wait for another turn of the event loop costs, without an upstream)
//   rtt:   answering itself at once              against answering once a raw GET has gone to the
//          bench's nginx upstream and its answer come back on a plain net.Socket (no HTTP client:
//          what the round trip itself costs)
//   raw:   answering itself through Node's HTTP server (http.Server fed the TLS socket, as https.Server
//          does) against a hand-written HTTP/1.1 exchange on the same TLS socket: the request head
//          parsed into a header object with strict expressions, the same response bytes written as
//          one string (what Node's HTTP layer costs, and so what a server-side parser of Portcullis'
//          own could save at most; no timers, no limits beyond the head's size). The mode is chosen
//          per connection; a kept-alive connection from the other mode is closed after its next answer.
//          Bodiless requests only (a request with a body is refused with 400)
//   rawproxy: as raw, forwarding instead of answering: the bare proxy of http1-floor.ts behind Node's
//          HTTP server against Portcullis' HTTP/1.1 client behind the hand-written exchange (what a
//          server-side parser could save a forwarding proxy)
//   proxy: answering itself (the Node ceiling)    against forwarding to the bench's nginx
//          upstream on Portcullis' HTTP/1.1 client (the bare proxy of http1-floor.ts)
//   portcullis: the bare proxy above            against Portcullis' request handler (policy,
//          authentication, identity headers, metrics) over the same client and upstream, with
//          bench/.work/pc-mtls.yaml, or pc-jwt.yaml and the bench token sent by wrk (--jwt), or
//          pc-apikey.yaml and the bench API key (--apikey)
//   empty: Portcullis' request handler as above, with the server's optimizeEmptyRequests off
//          against on (Node 24.12+: a request without Content-Length or Transfer-Encoding is
//          handed over already ended, with no stream events)
//   sni:   Portcullis' request handler as above, with no SNICallback (Node's built-in one, which
//          never pauses the handshake) against Portcullis' own (src/server.ts) looking the name up
//          in pc-mtls.yaml's certificates; only meaningful with --handshake
//   suites: Portcullis' request handler and TLS settings as above, with OpenSSL's default TLS 1.3
//          suite order (AES-256-GCM first) against Portcullis' (AES-128-GCM first; wrk offers
//          OpenSSL's order and the server's wins); only meaningful with --handshake
//   revision: Portcullis' request handler as above from the source tree of git revision --base
//          (default HEAD; its src/ is exported to bench/.work/rev-<commit>) against the working
//          tree's: a change to the request path measured against what it replaces, in one process
//   --hmac: Portcullis' handler on pc-hmac.yaml, wrk sending the bench's signed 1 KiB POST
//          (portcullis, empty and revision only)
//   --handshake: every request on a new connection with a full TLS 1.3 handshake (wrk sends
//          `Connection: close`, the shim drops each session), so the figures are per handshake.
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { API_KEY, PORTS, median, mtlsServerOptions, shimCounts, stop, waitPort, writeHmacScript } from './common.ts';
import type { SecureContext, TLSSocket } from 'node:tls';
import { HOP, bareForwarder, barePool } from './bare-forward.ts';
import type { Http1Pool } from '../src/pipeline/http1.ts';
import { loadConfig } from '../src/config/load.ts';
import type { ConnectionInfo } from '../src/tls/peer.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const W = join(HERE, '.work');
const IDIOMS = ['end', 'close', 'body', 'defer', 'rtt', 'raw', 'rawproxy', 'proxy', 'portcullis', 'empty', 'sni', 'suites', 'revision'] as const;
type Idiom = (typeof IDIOMS)[number];
const { values: opt } = parseArgs({ options: { idiom: { type: 'string', default: 'end' }, seconds: { type: 'string', default: '40' }, serve: { type: 'boolean', default: false }, handshake: { type: 'boolean', default: false }, jwt: { type: 'boolean', default: false }, apikey: { type: 'boolean', default: false }, hmac: { type: 'boolean', default: false }, base: { type: 'string', default: 'HEAD' }, 'base-dir': { type: 'string' } } });
const idiom = opt.idiom as Idiom;
/** The idioms whose server answers each request itself: no upstream, no Portcullis handler. */
const ANSWERS_ITSELF: readonly Idiom[] = ['end', 'close', 'body', 'defer', 'raw'];
/** The idioms that run Portcullis' request handler (the rest answer themselves or forward bare). */
const RUNS_PORTCULLIS: readonly Idiom[] = ['portcullis', 'empty', 'sni', 'suites', 'revision'];
if (!IDIOMS.includes(idiom)) throw new Error(`--idiom must be one of ${IDIOMS.join(', ')}`);
if ([opt.jwt, opt.apikey, opt.hmac].filter(Boolean).length > 1) throw new Error('--jwt, --apikey and --hmac are different routes: pick one');
if (opt.hmac && !['portcullis', 'empty', 'revision'].includes(idiom)) throw new Error('--hmac goes with --idiom portcullis, empty or revision');
const PC_CONFIG = join(W, opt.jwt ? 'pc-jwt.yaml' : opt.apikey ? 'pc-apikey.yaml' : opt.hmac ? 'pc-hmac.yaml' : 'pc-mtls.yaml');

type Handler = (req: IncomingMessage, res: ServerResponse) => void;
const kEx = Symbol('exchange');
interface Ex { closed(): void }
function onClose(this: ServerResponse & { [kEx]?: Ex }): void { this[kEx]!.closed(); }
let closedCount = 0;

function readBody(req: IncomingMessage, done: (b: Buffer | 'aborted') => void): void {
  const chunks: Buffer[] = [];
  let size = 0;
  const finish = (v: Buffer | 'aborted') => { req.off('data', onData); req.off('end', onEnd); req.off('error', onErr); done(v); };
  const onData = (c: Buffer) => { size += c.length; chunks.push(c); };
  const onEnd = () => finish(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
  const onErr = () => finish('aborted');
  req.on('data', onData);
  req.once('end', onEnd);
  req.once('error', onErr);
}
/** The bare proxy of http1-floor.ts, made on first use (the other idioms need no upstream). */
let forwarder: ((req: IncomingMessage, res: ServerResponse) => void) | undefined;
const forward: Handler = (req, res) => (forwarder ??= bareForwarder(PORTS.upstream))(req, res);

/** Portcullis' request handler as its server wires it (src/server.ts), on the bench's config, from the source tree at `root`. */
async function portcullisHandler(root: string): Promise<Handler> {
  const [{ loadConfig: load }, { Upstream }, { createHandler }, { connectionInfo }, { createLogger }, { createMetrics }] = await Promise.all([
    import(join(root, 'src/config/load.ts')) as Promise<typeof import('../src/config/load.ts')>,
    import(join(root, 'src/pipeline/upstream.ts')) as Promise<typeof import('../src/pipeline/upstream.ts')>,
    import(join(root, 'src/pipeline/handle.ts')) as Promise<typeof import('../src/pipeline/handle.ts')>,
    import(join(root, 'src/tls/peer.ts')) as Promise<typeof import('../src/tls/peer.ts')>,
    import(join(root, 'src/log.ts')) as Promise<typeof import('../src/log.ts')>,
    import(join(root, 'src/metrics.ts')) as Promise<typeof import('../src/metrics.ts')>,
  ]);
  const cfg = load(PC_CONFIG);
  const upstream = new Upstream(cfg.upstream);
  const conns = new WeakMap<TLSSocket, ConnectionInfo>();
  return createHandler({
    config: () => cfg,
    upstream: () => upstream,
    connection: (s) => {
      let c = conns.get(s);
      if (!c) { c = connectionInfo(s, Date.now(), cfg.tls.trustKey); conns.set(s, c); }
      return c;
    },
    logger: createLogger('warn'),
    metrics: createMetrics(),
    now: Date.now,
    accepting: () => true,
  }).onRequest;
}
const ROOT = join(HERE, '..');
// Loaded before the server starts, in the server process only (the other idioms need none).
const pcHandler = opt.serve && RUNS_PORTCULLIS.includes(idiom) ? await portcullisHandler(ROOT) : undefined;
const portcullis: Handler = (req, res) => pcHandler!(req, res);
const baseHandler = opt.serve && idiom === 'revision' ? await portcullisHandler(opt['base-dir']!) : undefined;
const base: Handler = (req, res) => baseHandler!(req, res);
/** The rtt idiom's upstream connections between round trips. */
const idle: net.Socket[] = [];
const answer = (res: ServerResponse) => { res.writeHead(200, ['content-type', 'text/plain', 'content-length', '3']); res.end('ok\n'); };

/** [mode 0, mode 1] for each idiom. */
const MODES: Record<Idiom, [Handler, Handler]> = {
  end: [
    (_req, res) => { res.writeHead(200, ['content-type', 'text/plain', 'content-length', '3']); res.write(Buffer.from('ok\n')); res.end(); },
    (_req, res) => { res.writeHead(200, ['content-type', 'text/plain', 'content-length', '3']); res.end(Buffer.from('ok\n')); },
  ],
  close: [
    (_req, res) => { const ex: Ex = { closed: () => { closedCount++; } }; res.once('close', () => ex.closed()); answer(res); },
    (_req, res) => { (res as ServerResponse & { [kEx]?: Ex })[kEx] = { closed: () => { closedCount++; } }; res.on('close', onClose); answer(res); },
  ],
  body: [
    (req, res) => {
      const p = new Promise<Buffer | 'aborted'>((resolve) => readBody(req, resolve)).then((b) => (b === 'aborted' ? undefined : b.length));
      p.then((n) => { if (n !== undefined) answer(res); }).catch(() => res.destroy());
    },
    (req, res) => readBody(req, (b) => { try { if (b !== 'aborted') answer(res); } catch { res.destroy(); } }),
  ],
  defer: [(_req, res) => answer(res), (_req, res) => { setImmediate(answer, res); }],
  // rawServer() serves mode 0 with these through Node's HTTP server, per connection; mode 1 is
  // the hand-written exchange (rawAnswer, rawForward), so the second entries are never called.
  raw: [(_req, res) => answer(res), (_req, res) => answer(res)],
  rawproxy: [forward, forward],
  rtt: [(_req, res) => answer(res), (_req, res) => {
    // The least JavaScript a round trip can take: nginx's short answer comes in one read.
    const s = idle.pop() ?? net.connect({ port: PORTS.upstream, host: '127.0.0.1', noDelay: true }).on('error', () => {});
    s.once('data', () => { idle.push(s); answer(res); });
    s.write('GET /bench HTTP/1.1\r\nhost: u\r\n\r\n');
  }],
  proxy: [(_req, res) => answer(res), forward],
  portcullis: [forward, portcullis],
  // The same handler both ways; the server's optimizeEmptyRequests is switched with the mode.
  empty: [portcullis, portcullis],
  // The same handler both ways; the server's SNICallback is switched with the mode.
  sni: [portcullis, portcullis],
  // The same handler both ways; the server's TLS 1.3 cipher-suite preference is switched with the mode.
  suites: [portcullis, portcullis],
  // The handler of git revision --base against the working tree's.
  revision: [base, portcullis],
};

// The raw idioms' mode 1: one HTTP/1.1 exchange after another, by hand, on the TLS socket. The
// expressions are those Portcullis' client reads a response head with (src/pipeline/http1.ts).
const REQUEST_LINE = /([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e\x80-\xff]+) HTTP\/1\.([01])\r\n/y;
const REQUEST_FIELD = /([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[\t ]*((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[\t ]*\r\n/y;
const CRLFCRLF = Buffer.from('\r\n\r\n');
const BAD_REQUEST = 'HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nConnection: close\r\n\r\n';
/** The Date header's text, made once a second as Node's HTTP server does. */
let dateSecond = 0, dateText = '';
const httpDate = (): string => {
  const now = Date.now();
  if (Math.floor(now / 1000) !== dateSecond) { dateSecond = Math.floor(now / 1000); dateText = new Date(now).toUTCString(); }
  return dateText;
};
/** A request the hand-written exchange has read: `fields` as [lower-case name, value, ...]. */
interface RawRequest { method: string; target: string; fields: string[]; close: boolean }
/** Answers `r` on `s`, then calls `done` (the exchange reads no further request until then). */
type RawAnswer = (s: TLSSocket, r: RawRequest, done: () => void) => void;
const keepAliveText = (close: boolean) => (close ? 'Connection: close\r\n\r\n' : 'Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n');
/** The raw idiom: the bytes Node's server writes for `answer()`. */
const rawAnswer: RawAnswer = (s, r, done) => {
  s.write(`HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nDate: ${httpDate()}\r\n${keepAliveText(r.close)}ok\n`, 'latin1');
  done();
};
let rawPool: Http1Pool | undefined;
/** The rawproxy idiom: the request forwarded on Portcullis' client, the answer relayed as bareForwarder's response writes it. */
const rawForward: RawAnswer = (s, r, done) => {
  const pool = (rawPool ??= barePool(PORTS.upstream));
  let head = '';
  const ex = pool.request(r.method, r.target, r.fields.filter((_, i, f) => !HOP(f[i - (i % 2)]!)), null, undefined, {
    onHead(status, h) {
      head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'unknown'}\r\n`;
      for (let i = 0; i < h.length; i += 2) if (!HOP(h[i]!.toLowerCase())) head += `${h[i]!}: ${h[i + 1]!}\r\n`;
      head += keepAliveText(r.close);
    },
    onData(c) {
      if (head) { s.write(head, 'latin1'); head = ''; }
      return s.write(c) || (s.once('drain', () => pool.resume(ex)), false);
    },
    onComplete(last) {
      if (typeof last === 'string') s.write(head + last, 'latin1');
      else { if (head) s.write(head, 'latin1'); if (last) s.write(last); }
      done();
    },
    onError: () => { s.end('HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nConnection: close\r\n\r\n', 'latin1'); },
  });
};
/** One bodiless HTTP/1.1 request after another on `s`, each answered by `answer`; `closing()` asks for Connection: close. */
function rawExchange(s: TLSSocket, counted: () => void, closing: () => boolean, answer: RawAnswer): void {
  let held: Buffer | undefined;
  let busy = false, closed = false;
  const refuse = () => { closed = true; s.off('data', onData); s.end(BAD_REQUEST, 'latin1'); };
  const onData = (d: Buffer): void => {
    const b = held && d.length ? Buffer.concat([held, d]) : held ?? d;
    held = undefined;
    if (busy) { held = b; return; }
    const end = b.indexOf(CRLFCRLF);
    if (end < 0) { if (b.length > 64 * 1024) refuse(); else if (b.length) held = b; return; }
    const head = b.toString('latin1', 0, end + 4);
    if (end + 4 < b.length) held = b.subarray(end + 4);
    REQUEST_LINE.lastIndex = 0;
    const m = REQUEST_LINE.exec(head);
    if (!m) { refuse(); return; }
    const fields: string[] = [];
    let connection: string | undefined;
    for (let i = REQUEST_LINE.lastIndex; i < head.length - 2; i = REQUEST_FIELD.lastIndex) {
      REQUEST_FIELD.lastIndex = i;
      const f = REQUEST_FIELD.exec(head);
      if (!f) { refuse(); return; }
      const k = f[1]!.toLowerCase();
      if (k === 'transfer-encoding' || (k === 'content-length' && f[2] !== '0')) { refuse(); return; }
      if (k === 'connection') connection = f[2]!.toLowerCase();
      fields.push(k, f[2]!);
    }
    counted();
    const close = (m[3] === '0' ? connection !== 'keep-alive' : connection === 'close') || closing();
    busy = true;
    try {
      answer(s, { method: m[1]!, target: m[2]!, fields, close }, () => {
        busy = false;
        if (close) { closed = true; s.off('data', onData); s.end(); } else if (held && !closed) onData(Buffer.alloc(0));
      });
    } catch {
      refuse(); // a target or field the client would not send upstream
    }
  };
  s.on('data', onData);
  s.on('error', () => s.destroy());
}

if (opt.serve) {
  // The server: modes alternate every second; CPU per request per slice from process.cpuUsage().
  let mode = 0, n = 0, last = process.cpuUsage(), warm = false;
  const slices: [number[], number[]] = [[], []];
  /** Every counted slice in time order, for the drift-corrected ratio. */
  const seq: { mode: number; v: number }[] = [];
  const modes = MODES[idiom];
  // The sni and suites idioms serve Portcullis' own TLS settings (ticket keys, session context,
  // ciphers), as src/server.ts does, so that only the callback or the suite order differs.
  const pcTls = idiom === 'sni' || idiom === 'suites' ? loadConfig(join(W, 'pc-mtls.yaml')).tls : undefined;
  const tlsOptions = pcTls ? { ...pcTls.defaultOptions, requestCert: true, rejectUnauthorized: false } : mtlsServerOptions(join(W, 'server.crt'), join(W, 'server.key'), join(W, 'ca.crt'));
  const server = idiom === 'raw' || idiom === 'rawproxy' ? rawServer() : https.createServer({ ...tlsOptions, optimizeEmptyRequests: idiom !== 'empty' }, (req, res) => { n++; modes[mode]!(req, res); });
  server.listen(PORTS.proxy, '127.0.0.1');
  /** The raw idioms: a TLS server handing each new connection to Node's HTTP server (mode 0) or to rawExchange (mode 1). */
  function rawServer(): tls.Server {
    const born = new WeakMap<object, number>();
    const stale = (s: object) => born.get(s) !== mode;
    const web = http.createServer({ optimizeEmptyRequests: true }, (req, res) => {
      n++;
      if (stale(req.socket)) res.shouldKeepAlive = false; // Connection: close, then the socket ends
      modes[0]!(req, res);
    });
    web.emit('listening'); // what https.Server's listen() starts: the HTTP server's connection tracking
    return tls.createServer(tlsOptions, (s) => {
      born.set(s, mode);
      if (mode === 0) web.emit('connection', s);
      else rawExchange(s, () => { n++; }, () => stale(s), idiom === 'rawproxy' ? rawForward : rawAnswer);
    });
  }
  // Node keeps the option under a symbol of its own, read as each request arrives.
  const kEmpty = Object.getOwnPropertySymbols(server).find((s) => s.description === 'OptimizeEmptyRequestsOption');
  if (idiom === 'empty' && !kEmpty) throw new Error(`this Node (${process.version}) has no optimizeEmptyRequests server option (v24.12+)`);
  const setEmpty = (on: boolean) => { if (idiom === 'empty') (server as unknown as Record<symbol, boolean>)[kEmpty!] = on; };
  // Node reads the server's SNICallback as each connection arrives; without one (and no
  // addContext entries) it does not pause the handshake for JavaScript at all.
  const kSni = Object.getOwnPropertySymbols(server).find((s) => s.description === 'snicallback');
  if (idiom === 'sni' && !kSni) throw new Error(`this Node (${process.version}) keeps no per-server SNICallback symbol`);
  const sniCallback = (name: string, cb: (err: Error | null, ctx?: SecureContext) => void) => {
    const ctx = pcTls!.lookup(name);
    if (ctx) cb(null, ctx);
    else cb(new Error('unknown SNI name'), undefined);
  };
  const setSni = (on: boolean) => { if (idiom === 'sni') (server as unknown as Record<symbol, unknown>)[kSni!] = on ? sniCallback : undefined; };
  // Mode 0: Portcullis' TLS settings without its TLS 1.3 suites, so OpenSSL's default order
  // (AES-256-GCM first) applies; mode 1: Portcullis' own order (AES-128-GCM first). Node uses
  // the new context for the connections that arrive after the switch.
  const setSuites = (on: boolean) => {
    if (idiom !== 'suites') return;
    const base = pcTls!.defaultOptions;
    server.setSecureContext(on ? base : { ...base, ciphers: (base.ciphers ?? '').split(':').filter((c) => !c.startsWith('TLS_')).join(':') });
  };
  setInterval(() => {
    const u = process.cpuUsage(last);
    last = process.cpuUsage();
    if (warm && n > 0) { slices[mode]!.push((u.user + u.system) / n); seq.push({ mode, v: (u.user + u.system) / n }); }
    if (n > (opt.handshake ? 100 : 1000)) warm = true; // the first busy slice warms the JIT and is not counted
    n = 0;
    mode ^= 1;
    setEmpty(mode === 1);
    setSni(mode === 1);
    setSuites(mode === 1);
  }, 1000);
  process.on('SIGTERM', () => {
    const pairs = Math.min(slices[0].length, slices[1].length);
    const ratios = Array.from({ length: pairs }, (_, i) => slices[1][i]! / slices[0][i]!);
    // Mode 1 always runs in the second after mode 0, so a machine that slows or speeds up
    // over the run tilts the paired ratio. Each mode 1 slice against the mean of the mode 0
    // slices either side of it cancels a linear drift.
    const between: number[] = [];
    for (let i = 1; i + 1 < seq.length; i++) {
      const [a, b, c] = [seq[i - 1]!, seq[i]!, seq[i + 1]!];
      if (b.mode === 1 && a.mode === 0 && c.mode === 0) between.push(b.v / ((a.v + c.v) / 2));
    }
    process.stdout.write(JSON.stringify({ mode0: median(slices[0]), mode1: median(slices[1]), ratio: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios), pairs, between: between.length ? median(between) : null, closedCount }));
    process.exit(0);
  });
} else {
  for (const f of ['server.crt', 'client.crt', 'wrk-mtls-shim.so']) {
    if (!existsSync(join(W, f))) throw new Error(`bench/.work/${f} is missing: run \`npm run bench\` once first`);
  }
  // The other idioms forward to the benchmark's upstream (nginx `return 200`), on the server's core as in `npm run bench`.
  const upstream = !ANSWERS_ITSELF.includes(idiom) ? spawn('taskset', ['-c', '1', 'nginx', '-c', join(W, 'upstream.nginx.conf')], { stdio: 'ignore' }) : undefined;
  if (upstream) {
    process.once('exit', () => upstream.kill('SIGKILL')); // also when a check below throws
    await waitPort(PORTS.upstream);
  }
  let baseDir: string[] = [];
  if (idiom === 'revision') {
    // The base revision's src/ beside the PKI; node_modules resolves from the checkout above it.
    const commit = execFileSync('git', ['rev-parse', '--verify', `${opt.base}^{commit}`], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dir = join(W, `rev-${commit.slice(0, 12)}`);
    if (!existsSync(join(dir, 'src'))) {
      mkdirSync(dir, { recursive: true });
      execFileSync('bash', ['-c', 'git archive "$1" src | tar -x -C "$2"', 'bash', commit, dir], { cwd: ROOT });
    }
    baseDir = ['--base-dir', dir];
    process.stdout.write(`revision: mode 0 is ${opt.base} (${commit.slice(0, 12)}), mode 1 the working tree\n`);
  }
  const server = spawn('taskset', ['-c', '1', process.execPath, '--max-semi-space-size=16', fileURLToPath(import.meta.url), '--serve', '--idiom', idiom, ...baseDir, ...(opt.handshake ? ['--handshake'] : []), ...(opt.jwt ? ['--jwt'] : []), ...(opt.apikey ? ['--apikey'] : []), ...(opt.hmac ? ['--hmac'] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  server.stdout!.on('data', (d) => { out += String(d); });
  await waitPort(PORTS.proxy);
  // The bench's signed 1 KiB POST, with a timestamp of now (pc-hmac.yaml accepts an hour's skew).
  const body = idiom === 'body' || opt.hmac ? ['-s', writeHmacScript(join(W, 'idioms-hmac.lua'), '/bench', String(Math.floor(Date.now() / 1000)))] : [];
  const headers = opt.handshake ? ['-H', 'Connection: close'] : [];
  if (opt.jwt) headers.push('-H', `Authorization: Bearer ${readFileSync(join(W, 'token.txt'), 'utf8').trim()}`);
  if (opt.apikey) headers.push('-H', `X-API-Key: ${API_KEY}`);
  const wrk = spawn('taskset', ['-c', '0', 'wrk', '-t1', '-c50', `-d${opt.seconds}s`, ...body, ...headers, `https://127.0.0.1:${PORTS.proxy}${opt.hmac ? '/bench' : '/'}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, LD_PRELOAD: join(W, 'wrk-mtls-shim.so'), WRK_CLIENT_CERT: join(W, 'client.crt'), WRK_CLIENT_KEY: join(W, 'client.key'), ...(opt.handshake ? { WRK_NO_RESUME: '1' } : {}) },
  });
  let wrkErr = '';
  wrk.stderr!.on('data', (d) => { wrkErr += String(d); });
  let wrkOut = '';
  wrk.stdout!.on('data', (d) => { wrkOut += String(d); });
  await new Promise((r) => wrk.once('exit', r));
  const exited = new Promise((r) => server.once('exit', r));
  server.kill('SIGTERM');
  await exited;
  if (upstream) await stop(upstream);
  const { handshakes } = shimCounts(wrkErr, opt.handshake);
  // Both modes must answer 200: a refusal is cheaper than forwarding and would flatter its mode.
  const bad = /Non-2xx or 3xx responses: (\d+)/.exec(wrkOut);
  if (bad) throw new Error(`${bad[1]} responses were not 2xx/3xx; the figures would not compare forwarded requests:\n${wrkOut}`);
  const r = JSON.parse(out) as { mode0: number; mode1: number; ratio: number; min: number; max: number; pairs: number; between: number | null };
  if (!r.pairs) throw new Error(`no pair of warm 1-s slices in ${opt.seconds} s (run longer with --seconds); wrk said:\n${wrkOut}${wrkErr}`);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(wrkOut)?.[1];
  const per = opt.handshake ? 'handshake' : 'req';
  process.stdout.write(`${idiom}${opt.handshake ? ` (full handshakes, ${handshakes} of them, none resumed)` : ''}: mode 0 ${r.mode0.toFixed(2)} µs/${per}, mode 1 ${r.mode1.toFixed(2)} µs/${per}; mode 1 ÷ mode 0, median of ${r.pairs} paired 1-s slices: ${r.ratio.toFixed(3)} (${r.min.toFixed(2)}–${r.max.toFixed(2)}); against the mode 0 slices either side: ${r.between?.toFixed(3) ?? '-'}; ${rps} req/s overall\n`);
}
