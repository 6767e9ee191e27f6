// The upstream leg's HTTP/1.1 client: a pool of keep-alive connections, one exchange
// at a time per connection, a request head written as one string and a strict
// response parser. It replaced undici's Pool for plain requests: Portcullis forwarded
// ~1.2× as many requests per second with it, at ~20 % less CPU per request
// (bench/RESULTS.md, fifth round), because each exchange is a socket write, a socket
// read and a handful of string operations, with no per-request promise, timer,
// WebAssembly call or header-object copy.
//
// Framing is strict and fails closed, because a connection is reused: anything that
// could make the proxy and the upstream disagree about where a response ends (both
// Content-Length and Transfer-Encoding, differing Content-Lengths, obs-fold, a bare
// CR or LF, a malformed chunk, bytes after a response) ends the exchange with an
// error and destroys the connection; nothing is ever read as the next response.
import net from 'node:net';
import tls from 'node:tls';
import type { Readable } from 'node:stream';

/** What the pool tells the party relaying a response; called at most once each for head and end. */
export interface ExchangeHandler {
  /** The final response head (1xx responses are skipped). Throwing ends the exchange as a bad response. */
  onHead(status: number, headers: string[]): void;
  /** A piece of the body; return false to stop reading until `resume` is called. */
  onData(chunk: Buffer): boolean;
  /**
   * The response is whole. `last`: the body's final piece, when it arrived in the same read
   * as the response's end (most small responses): the relay can write it and end at once.
   * Up to LAST_AS_STRING bytes it comes as a latin1 string (one byte per character), which
   * Node's response writes together with its head as one string: one socket write, no
   * Buffer copied out of the read.
   */
  onComplete(last?: Buffer | string): void;
  /** `code`: a Node error code or one of this module's (`UPSTREAM_*`); `timeout`: no answer in time. */
  onError(code: string, timeout: boolean): void;
}

export interface PoolOptions {
  readonly url: URL;
  readonly ca?: string;
  /** No byte from the upstream for this long while a request is outstanding ends it (504). */
  readonly timeoutMs: number;
  readonly maxConnections: number;
  /** The longest an idle connection is kept (the upstream's own Keep-Alive hint can shorten it). */
  readonly keepAliveMs: number;
}

const MAX_HEAD_BYTES = 64 * 1024;
const MAX_CHUNK_LINE = 1024;
/** A final body piece up to this size (a TLS record's worth) is handed over as a latin1 string. */
export const LAST_AS_STRING = 16 * 1024;
const CRLFCRLF = Buffer.from('\r\n\r\n');
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** A field value may hold HTAB, visible ASCII, SP and obs-text; nothing else (RFC 9110 §5.5). */
const BAD_VALUE = /[\0-\x08\x0a-\x1f\x7f\u0100-\uffff]/;
/** A request target may hold no whitespace or control character (it is already normalised). */
const BAD_TARGET = /[^\x21-\x7e\x80-\xff]/;
/** A chunk-size line: at most 8 hex digits (4 GiB), optional extensions (RFC 9112 §7.1). */
const CHUNK_SIZE = /^([0-9A-Fa-f]{1,8})(?:[\t ]*;[\t\x20-\x7e\x80-\xff]*)?$/;
/**
 * A response head is read with two sticky expressions, each match one whole line with its
 * CRLF: the status line, then each field line as a token name, a colon and a value whose
 * surrounding SP/HTAB (OWS) is left out. A line either expression refuses (obs-fold, a space
 * before the colon, a control character, a bare CR or LF) fails the response.
 */
const STATUS_LINE = /HTTP\/1\.([01]) ([1-9]\d\d)(?: [\t\x20-\x7e\x80-\xff]*)?\r\n/y;
const FIELD_LINE = /([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[\t ]*((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[\t ]*\r\n/y;
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
const EXPECTS_BODY = new Set(['POST', 'PUT', 'PATCH']);
/**
 * Plain-TCP upstream connections read into this one buffer (net's `onread`): no buffer,
 * stream push or 'data' event per read. It is reused by the next read on any connection,
 * so whatever outlives the read (a partial head, a body chunk) is copied out of it.
 */
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

/** One request as it goes upstream. */
export class Exchange {
  readonly method: string;
  readonly head: string;
  /** A buffered body, sent whole; or the client's request, streamed; or none. */
  readonly body: Buffer | Readable | null;
  readonly chunked: boolean;
  readonly handler: ExchangeHandler;
  conn: Conn | null = null;
  cancelled = false;
  /** Sent again once, on a new connection, if a reused one closed before any response byte. */
  retried = false;

  constructor(method: string, head: string, body: Buffer | Readable | null, chunked: boolean, handler: ExchangeHandler) {
    this.method = method;
    this.head = head;
    this.body = body;
    this.chunked = chunked;
    this.handler = handler;
  }
}

/** Where a connection is in reading a response. */
const Phase = { Idle: 0, Head: 1, Length: 2, ChunkSize: 3, ChunkData: 4, ChunkEnd: 5, Trailers: 6, UntilClose: 7, Done: 8 } as const;
type Phase = (typeof Phase)[keyof typeof Phase];

/**
 * Upstream writes are held (corked) until the end of the current turn of the event loop
 * and then sent together: the upstream is woken once for the batch of requests admitted
 * in that turn instead of once per request, and a body that arrived with its head goes
 * out in the same write. Measured in bench/RESULTS.md (fifth round): ~1.18× req/s for
 * GETs, ~1.37× for 1 KiB POSTs, on a machine where the upstream shares the proxy's core.
 */
let corked: net.Socket[] = [];
function flush(): void {
  const list = corked;
  corked = [];
  for (let i = 0; i < list.length; i++) list[i]!.uncork();
}
function flushLater(s: net.Socket): void {
  if (corked.push(s) === 1) setImmediate(flush);
}

class Conn {
  readonly socket: net.Socket;
  readonly pool: Http1Pool;
  ex: Exchange | null = null;
  phase: Phase = Phase.Idle;
  /** Exchanges this connection has carried: a reused connection may have been closed by the upstream meanwhile. */
  uses = 0;
  /** When an idle connection stops being reused; how long after its last response that is. */
  idleUntil = 0;
  idleAllowance = 0;
  /** Reading is paused because the client is slower than the upstream (no timeout then). */
  paused = false;
  timeoutSkipped = false;
  /** Bytes of body left (Length, ChunkData). */
  left = 0;
  /** Bytes of a chunk's trailing CRLF still to read (ChunkEnd). */
  crlfLeft = 0;
  keepAlive = true;
  sawResponseByte = false;
  requestDone = true;
  headOnly = false;
  pending: Buffer | null = null;
  /**
   * The latest body piece of this read, not yet handed over: if the response ends in the
   * same read it goes with onComplete, else to onData when the read has been parsed. It may
   * still point into READ_BUFFER: whatever hands it over copies it first (`keep`).
   */
  held: Buffer | null = null;
  /** Reads land in READ_BUFFER (plain TCP): copy what is kept past the read. */
  readonly sharedReads: boolean;
  /** The body stream being sent, and its listeners (bound once per connection). */
  streaming: Readable | null = null;
  readonly onBodyData = (c: Buffer): void => this.sendBodyChunk(c);
  readonly onBodyEnd = (): void => this.endBody();
  readonly onDrain = (): void => { this.streaming?.resume(); };

  constructor(pool: Http1Pool, o: PoolOptions) {
    this.pool = pool;
    const host = o.url.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = Number(o.url.port) || (o.url.protocol === 'https:' ? 443 : 80);
    this.sharedReads = o.url.protocol !== 'https:';
    if (this.sharedReads) {
      this.socket = net.connect({ host, port, onread: { buffer: READ_BUFFER, callback: (n: number, b: Uint8Array) => { this.onData((b as Buffer).subarray(0, n)); return true; } } });
    } else {
      this.socket = tls.connect({ host, port, ca: o.ca, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'] });
      this.socket.on('data', (d: Buffer) => this.onData(d));
    }
    this.socket.setNoDelay(true);
    this.socket.setTimeout(o.timeoutMs);
    this.socket.on('end', () => this.onEnd());
    this.socket.on('close', () => this.onClose());
    this.socket.on('error', (e: NodeJS.ErrnoException) => this.fail(e.code ?? e.message, false));
    this.socket.on('timeout', () => this.onTimeout());
  }

  start(ex: Exchange): void {
    this.ex = ex;
    ex.conn = this;
    this.uses++;
    this.phase = Phase.Head;
    this.keepAlive = true;
    this.paused = false;
    this.sawResponseByte = false;
    this.pending = null;
    this.held = null;
    this.headOnly = ex.method === 'HEAD';
    const s = this.socket;
    const body = ex.body;
    // The request leaves at the end of this turn of the event loop, together with every
    // other request admitted in it (see flushLater), and with a body that arrived with it.
    s.cork();
    flushLater(s);
    s.write(ex.head, 'latin1');
    if (body === null || Buffer.isBuffer(body)) {
      this.requestDone = true;
      if (body !== null) s.write(body);
    } else {
      this.requestDone = false;
      this.streaming = body;
      body.on('data', this.onBodyData);
      body.on('end', this.onBodyEnd);
      body.resume();
    }
  }

  sendBodyChunk(c: Buffer): void {
    if (!c.length) return;
    const s = this.socket;
    let ok: boolean;
    if (this.ex?.chunked) {
      s.cork();
      s.write(c.length.toString(16) + '\r\n', 'latin1');
      s.write(c);
      ok = s.write('\r\n', 'latin1');
      s.uncork();
    } else ok = s.write(c);
    if (!ok) {
      this.streaming!.pause();
      s.once('drain', this.onDrain);
    }
  }

  endBody(): void {
    if (this.ex?.chunked) this.socket.write('0\r\n\r\n', 'latin1');
    this.detachBody();
    this.requestDone = true;
  }

  detachBody(): void {
    const b = this.streaming;
    if (!b) return;
    this.streaming = null;
    b.off('data', this.onBodyData);
    b.off('end', this.onBodyEnd);
    this.socket.off('drain', this.onDrain);
  }

  onData(d: Buffer): void {
    const ex = this.ex;
    if (!ex) { this.socket.destroy(); return; } // unsolicited bytes: this connection is no longer in step
    this.parse(d, ex);
    const held = this.held;
    if (held !== null) {
      // The response goes on in a later read: hand over what this one brought.
      this.held = null;
      if (this.ex === ex) this.hand(held);
    }
  }

  parse(d: Buffer, ex: Exchange): void {
    this.sawResponseByte = true;
    if (this.pending) { d = Buffer.concat([this.pending, d]); this.pending = null; }
    let i = 0;
    while (i < d.length && this.ex === ex) {
      switch (this.phase) {
        case Phase.Head: {
          const end = d.indexOf(CRLFCRLF, i);
          if (end === -1) {
            if (d.length - i > MAX_HEAD_BYTES) return this.fail('UPSTREAM_HEAD_TOO_LARGE', false);
            this.pending = this.keep(d.subarray(i));
            return;
          }
          if (end - i > MAX_HEAD_BYTES) return this.fail('UPSTREAM_HEAD_TOO_LARGE', false);
          const head = d.toString('latin1', i, end + 2);
          i = end + 4;
          if (!this.parseHead(head)) return;
          break;
        }
        case Phase.Length:
          i = this.body(d, i, Phase.Done);
          break;
        case Phase.UntilClose: {
          this.deliver(i === 0 ? d : d.subarray(i));
          i = d.length;
          break;
        }
        case Phase.ChunkSize:
        case Phase.Trailers: {
          const eol = d.indexOf(10, i);
          if (eol === -1) {
            if (d.length - i > MAX_CHUNK_LINE) return this.fail('UPSTREAM_BAD_CHUNK', false);
            this.pending = this.keep(d.subarray(i));
            return;
          }
          if (eol === i || d[eol - 1] !== 13 || eol - i > MAX_CHUNK_LINE) return this.fail('UPSTREAM_BAD_CHUNK', false);
          const line = d.toString('latin1', i, eol - 1);
          i = eol + 1;
          if (this.phase === Phase.Trailers) {
            if (line === '') this.phase = Phase.Done;
            else if (BAD_VALUE.test(line) || !line.includes(':')) return this.fail('UPSTREAM_BAD_CHUNK', false);
            break;
          }
          const m = CHUNK_SIZE.exec(line);
          if (!m) return this.fail('UPSTREAM_BAD_CHUNK', false);
          const size = parseInt(m[1]!, 16);
          if (size === 0) this.phase = Phase.Trailers;
          else { this.left = size; this.crlfLeft = 2; this.phase = Phase.ChunkData; }
          break;
        }
        case Phase.ChunkData:
          i = this.body(d, i, Phase.ChunkEnd);
          break;
        case Phase.ChunkEnd: {
          // The CRLF after a chunk's data, possibly split across reads.
          const want = this.crlfLeft === 2 ? 13 : 10;
          if (d[i] !== want) return this.fail('UPSTREAM_BAD_CHUNK', false);
          i++;
          if (--this.crlfLeft === 0) this.phase = Phase.ChunkSize;
          break;
        }
        case Phase.Done:
          // Bytes after a complete response: the connection is out of step; never reused.
          this.keepAlive = false;
          i = d.length;
          break;
        default:
          return this.fail('UPSTREAM_PROTOCOL', false);
      }
    }
    if (this.ex === ex && this.phase === Phase.Done) {
      if (i < d.length) this.keepAlive = false;
      this.complete();
    }
  }

  /** Up to `left` body bytes of `d` from `i` to the handler; `next` once none are left. Returns the new offset. */
  body(d: Buffer, i: number, next: Phase): number {
    const n = Math.min(this.left, d.length - i);
    this.left -= n;
    if (this.left === 0) this.phase = next;
    this.deliver(d.subarray(i, i + n));
    return i + n;
  }

  deliver(chunk: Buffer): void {
    if (!chunk.length) return;
    if (this.held !== null) this.hand(this.held);
    this.held = chunk;
  }

  hand(chunk: Buffer): void {
    this.held = null;
    if (!this.ex!.handler.onData(this.keep(chunk))) { this.paused = true; this.socket.pause(); }
  }

  /** `b` as a buffer that outlives this read. */
  keep(b: Buffer): Buffer {
    return this.sharedReads ? Buffer.from(b) : b;
  }

  /**
   * One response head, each line with its CRLF (a 1xx is consumed and the final one
   * awaited); false when the exchange ended in an error.
   */
  parseHead(head: string): boolean {
    STATUS_LINE.lastIndex = 0;
    const m = STATUS_LINE.exec(head);
    if (!m) { this.fail('UPSTREAM_BAD_STATUS_LINE', false); return false; }
    const http10 = m[1] === '0';
    const status = Number(m[2]);
    const out: string[] = [];
    let length = -1;
    let te: string | undefined;
    let close = http10, keepAliveToken = false;
    let hintMs = -1;
    let at = STATUS_LINE.lastIndex;
    while (at < head.length) {
      FIELD_LINE.lastIndex = at;
      const f = FIELD_LINE.exec(head);
      if (!f) { this.fail('UPSTREAM_BAD_HEADER', false); return false; }
      at = FIELD_LINE.lastIndex;
      const name = f[1]!, value = f[2]!;
      switch (name.length) {
        case 10:
          if (name.toLowerCase() === 'connection') {
            for (const tok of value.toLowerCase().split(',')) {
              const tt = tok.trim();
              if (tt === 'close') close = true;
              else if (tt === 'keep-alive') keepAliveToken = true;
            }
          } else if (name.toLowerCase() === 'keep-alive') {
            const t = /(?:^|[,\s])timeout\s*=\s*(\d+)/i.exec(value);
            if (t) hintMs = Number(t[1]) * 1000;
          }
          break;
        case 14:
          if (name.toLowerCase() === 'content-length') {
            if (!/^\d{1,15}$/.test(value)) { this.fail('UPSTREAM_BAD_CONTENT_LENGTH', false); return false; }
            const n = Number(value);
            if (length !== -1 && length !== n) { this.fail('UPSTREAM_BAD_CONTENT_LENGTH', false); return false; }
            length = n;
          }
          break;
        case 17:
          if (name.toLowerCase() === 'transfer-encoding') te = te === undefined ? value : `${te}, ${value}`;
          break;
      }
      out.push(name, value);
    }
    if (status < 200) {
      // 100 Continue, 102, 103: skipped; the final response follows. 101 was never asked for.
      if (status === 101) { this.fail('UPSTREAM_UNEXPECTED_UPGRADE', false); return false; }
      return true;
    }
    if (http10 && keepAliveToken) close = false;
    this.keepAlive = !close;
    // Stop reusing a connection a second before the upstream said it would close it.
    this.idleAllowance = hintMs >= 0 ? Math.min(this.pool.keepAliveMs, hintMs - 1000) : this.pool.keepAliveMs;
    if (this.headOnly || status === 204 || status === 304) this.phase = Phase.Done;
    else if (te !== undefined) {
      if (length !== -1) { this.fail('UPSTREAM_BAD_CONTENT_LENGTH', false); return false; } // both: a smuggling vector
      const codings = te.toLowerCase().split(',');
      if (codings[codings.length - 1]!.trim() === 'chunked') this.phase = Phase.ChunkSize;
      else { this.phase = Phase.UntilClose; this.keepAlive = false; }
    } else if (length >= 0) {
      this.left = length;
      this.phase = length === 0 ? Phase.Done : Phase.Length;
    } else { this.phase = Phase.UntilClose; this.keepAlive = false; }
    try {
      this.ex!.handler.onHead(status, out);
    } catch (e) {
      this.fail((e as NodeJS.ErrnoException).code ?? 'UPSTREAM_BAD_HEADER', false);
      return false;
    }
    return true;
  }

  /** The response is whole: the exchange ends, and the connection goes back to the pool if it can. */
  complete(): void {
    const ex = this.ex!;
    const held = this.held;
    this.held = null;
    const last = held === null ? undefined : held.length <= LAST_AS_STRING ? held.toString('latin1') : this.keep(held);
    ex.conn = null;
    this.ex = null;
    this.phase = Phase.Idle;
    ex.handler.onComplete(last);
    // A request body still being sent (the upstream answered early) would be read as the
    // next request; bytes after the response, or a Connection: close, end the connection too.
    if (!this.requestDone || !this.keepAlive) {
      this.detachBody();
      this.socket.destroy();
      return;
    }
    if (this.paused) { this.paused = false; this.socket.resume(); }
    this.pool.release(this);
  }

  onEnd(): void {
    if (this.ex && this.phase === Phase.UntilClose) { this.complete(); return; }
    this.socket.destroy();
  }

  onClose(): void {
    this.pool.forget(this);
    const ex = this.ex;
    if (!ex) return;
    if (this.phase === Phase.UntilClose) { this.complete(); return; }
    this.fail(this.sawResponseByte ? 'UPSTREAM_CLOSED_MID_RESPONSE' : 'ECONNRESET', false);
  }

  onTimeout(): void {
    if (!this.ex) { this.socket.destroy(); return; } // idle for timeoutMs: let it go
    // Reading is paused for a slow client: the upstream is not the one late.
    if (this.paused) { this.timeoutSkipped = true; return; }
    this.fail('UPSTREAM_TIMEOUT', true);
  }

  /** End the current exchange with an error; the connection is never reused. */
  fail(code: string, timeout: boolean): void {
    const ex = this.ex;
    const held = this.held;
    this.held = null;
    this.ex = null;
    this.phase = Phase.Idle;
    this.detachBody();
    this.socket.destroy();
    if (!ex) return;
    ex.conn = null;
    if (ex.cancelled) return;
    // What arrived before the fault still reaches the client, as it would have unheld.
    if (held !== null) ex.handler.onData(this.keep(held));
    // A reused connection the upstream had already closed: send an idempotent request again, once.
    if (!this.sawResponseByte && !timeout && this.uses > 1 && !ex.retried && IDEMPOTENT.has(ex.method) && !(ex.body !== null && !Buffer.isBuffer(ex.body))) {
      ex.retried = true;
      this.pool.dispatch(ex, true);
      return;
    }
    ex.handler.onError(code, timeout);
  }

  /** The client left: stop this exchange; the connection is dropped (its response is unread). */
  cancel(ex: Exchange): void {
    if (this.ex !== ex) return;
    this.ex = null;
    this.held = null;
    ex.conn = null;
    this.detachBody();
    this.socket.destroy();
  }

  resume(ex: Exchange): void {
    if (this.ex !== ex || !this.paused) return;
    this.paused = false;
    if (this.timeoutSkipped) { this.timeoutSkipped = false; this.socket.setTimeout(this.pool.timeoutMs); }
    this.socket.resume();
  }
}

export class Http1Pool {
  readonly #o: PoolOptions;
  readonly #idle: Conn[] = [];
  readonly #queue: Exchange[] = [];
  #open = 0;
  #closed = false;
  readonly #basePath: string;
  readonly #host: string;
  readonly keepAliveMs: number;
  readonly timeoutMs: number;

  constructor(o: PoolOptions) {
    this.#o = o;
    this.keepAliveMs = o.keepAliveMs;
    this.timeoutMs = o.timeoutMs;
    this.#basePath = o.url.pathname.replace(/\/$/, '');
    this.#host = o.url.host;
  }

  /**
   * Start one exchange. `headers` is [name, value, ...] as admission built it; `body` a
   * buffered body sent whole, the client's request to stream, or null. Throws (before
   * anything is sent) if the target or a header could not be written safely.
   */
  request(method: string, target: string, headers: readonly string[], body: Buffer | Readable | null, streamLength: string | undefined, handler: ExchangeHandler): Exchange {
    const path = this.#basePath + target;
    if (BAD_TARGET.test(path) || !TOKEN.test(method)) throw Object.assign(new Error('request target or method cannot be sent'), { code: 'UPSTREAM_BAD_REQUEST' });
    let head = method + ' ' + path + ' HTTP/1.1\r\n';
    const buffered = Buffer.isBuffer(body);
    let hasHost = false, hasLength = false;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!, value = headers[i + 1]!;
      if (name.length === 14 && name === 'content-length') {
        if (buffered) continue; // written below from the body itself
        hasLength = true;
      } else if (name.length === 4 && name === 'host') hasHost = true;
      if (!TOKEN.test(name) || BAD_VALUE.test(value)) throw Object.assign(new Error(`header ${JSON.stringify(name)} cannot be sent`), { code: 'UPSTREAM_BAD_REQUEST' });
      head += name + ': ' + value + '\r\n';
    }
    if (!hasHost) head += 'host: ' + this.#host + '\r\n';
    let chunked = false;
    if (buffered) head += 'content-length: ' + body.length + '\r\n';
    else if (body !== null) {
      if (streamLength === undefined) { chunked = true; head += 'transfer-encoding: chunked\r\n'; }
      else if (!hasLength) head += 'content-length: ' + streamLength + '\r\n';
    } else if (!hasLength && EXPECTS_BODY.has(method)) head += 'content-length: 0\r\n';
    const ex = new Exchange(method, head + '\r\n', body, chunked, handler);
    this.dispatch(ex, false);
    return ex;
  }

  dispatch(ex: Exchange, fresh: boolean): void {
    if (this.#closed) { ex.handler.onError('UPSTREAM_POOL_CLOSED', false); return; }
    if (!fresh) {
      const now = Date.now();
      let c: Conn | undefined;
      while ((c = this.#idle.pop()) !== undefined) {
        if (c.idleUntil > now && !c.socket.destroyed) { c.start(ex); return; }
        c.socket.destroy();
      }
    }
    if (this.#open < this.#o.maxConnections) {
      this.#open++;
      new Conn(this, this.#o).start(ex);
      return;
    }
    this.#queue.push(ex);
  }

  cancel(ex: Exchange): void {
    ex.cancelled = true;
    if (ex.conn) { ex.conn.cancel(ex); return; }
    const i = this.#queue.indexOf(ex);
    if (i !== -1) this.#queue.splice(i, 1);
  }

  resume(ex: Exchange): void {
    ex.conn?.resume(ex);
  }

  release(c: Conn): void {
    const next = this.#queue.shift();
    if (next) { c.start(next); return; }
    if (this.#closed) { c.socket.destroy(); return; }
    c.idleUntil = Date.now() + c.idleAllowance;
    this.#idle.push(c);
  }

  forget(c: Conn): void {
    this.#open--;
    const i = this.#idle.indexOf(c);
    if (i !== -1) this.#idle.splice(i, 1);
    // A queued exchange waiting for a free slot gets a new connection.
    const next = this.#queue.shift();
    if (next) this.dispatch(next, true);
  }

  close(): void {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.socket.destroy();
    for (const ex of this.#queue.splice(0)) ex.handler.onError('UPSTREAM_POOL_CLOSED', false);
  }
}
