// Forwarding to the upstream. Plain requests go through Portcullis' own HTTP/1.1
// client (http1.ts) to a relay that writes the upstream's response straight into the
// client's (bench/RESULTS.md: Node's http.request client, which http-proxy-3 uses, was
// the bottleneck; undici's Pool was better, and this client better again).
// WebSocket upgrades go through http-proxy-3, loaded only when one arrives.
// Errors come back as a code the handler turns into a JSON 502/504.
import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import type { ProxyServer } from 'http-proxy-3';
import type { CompiledConfig } from '../config/compile.ts';
import type { UpstreamRequest } from './headers.ts';
import { Http1Pool, type Exchange, type ExchangeHandler } from './http1.ts';

export type UpstreamFailure = 'UPSTREAM_UNAVAILABLE' | 'UPSTREAM_TIMEOUT';

/**
 * The `reason` label of upstream_errors_total for a failure's detail (a Node error code or
 * one of http1.ts'): a bounded set, so the label never carries a raw error.
 */
export function upstreamReason(f: UpstreamFailure, detail: string): 'connect' | 'timeout' | 'reset' | 'tls' | 'protocol' | 'request' {
  if (f === 'UPSTREAM_TIMEOUT') return 'timeout';
  if (/^(ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|EADDRNOTAVAIL|ENOENT)$/.test(detail)) return 'connect';
  if (/^(ECONNRESET|EPIPE|ECONNABORTED|UPSTREAM_CLOSED_MID_RESPONSE)$/.test(detail)) return 'reset';
  if (/^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|DEPTH_ZERO|SELF_SIGNED|HOSTNAME_MISMATCH)/.test(detail)) return 'tls';
  if (detail === 'UPSTREAM_BAD_REQUEST') return 'request';
  return 'protocol';
}

/** Response headers never relayed: hop-by-hop (RFC 9110 §7.6.1); Node frames the response itself. */
const HOP_BY_HOP_RESPONSE = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer']);

export interface Forwarded {
  /** Headers Portcullis adds to the response, as [name, value, name, value, ...]. */
  readonly responseHeaders: string[];
  /** The response was relayed in full (before `res.end()` flushes it). */
  onComplete(): void;
  /** No response head could be relayed: the handler answers with a JSON error. */
  onError(f: UpstreamFailure, detail: string): void;
  /** The upstream failed after the head was relayed: the client's response is cut. */
  onBroken(f: UpstreamFailure, detail: string): void;
  /** How long a response may wait on a client that reads none of it (`server.timeouts.idleMs`). */
  readonly stallMs: number;
  /** The client read nothing for `stallMs`: its connection is about to be cut. */
  onStalled(): void;
}

/** Relays one upstream response into `res`; one object per request (a closure only under backpressure). */
class Relay implements ExchangeHandler {
  readonly #res: http.ServerResponse;
  readonly #f: Forwarded;
  readonly #pool: Http1Pool;
  #ex: Exchange | undefined;
  #resume: (() => void) | undefined;
  /** Armed only while the client holds the response back (backpressure). */
  #stall: NodeJS.Timeout | undefined;

  constructor(res: http.ServerResponse, f: Forwarded, pool: Http1Pool) {
    this.#res = res;
    this.#f = f;
    this.#pool = pool;
  }

  start(ex: Exchange): void { this.#ex = ex; }

  /** The client went away: stop the upstream exchange. */
  cancel(): void {
    if (this.#ex) this.#pool.cancel(this.#ex);
  }

  onHead(statusCode: number, raw: string[]): void {
    const out: string[] = [];
    let nominated: string[] | undefined;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!;
      const lower = name.toLowerCase();
      if (HOP_BY_HOP_RESPONSE.has(lower)) {
        if (lower === 'connection') (nominated ??= []).push(...raw[i + 1]!.split(',').map((t) => t.trim().toLowerCase()));
        continue;
      }
      out.push(name, raw[i + 1]!);
    }
    if (nominated) {
      // Headers the upstream nominated as hop-by-hop in its Connection header.
      for (let i = out.length - 2; i >= 0; i -= 2) if (nominated.includes(out[i]!.toLowerCase())) out.splice(i, 2);
    }
    const extra = this.#f.responseHeaders;
    for (let i = 0; i < extra.length; i++) out.push(extra[i]!);
    // Node states Connection (keep-alive or close) itself, as it will behave; a header
    // value Node refuses throws here and becomes a 502 (nothing has been written yet).
    this.#res.writeHead(statusCode, out);
  }

  onData(chunk: Buffer): boolean {
    if (this.#res.write(chunk)) return true;
    this.#res.once('drain', this.#resume ??= () => {
      clearTimeout(this.#stall);
      this.#stall = undefined;
      if (this.#ex) this.#pool.resume(this.#ex);
    });
    this.#watch();
    return false;
  }

  onComplete(last?: Buffer | string): void {
    this.#f.onComplete();
    // The final piece and the end in one call: Node then writes once, with no extra tick;
    // a string piece (latin1 bytes) goes out in one string with the head.
    if (last !== undefined) this.#res.end(last, 'latin1');
    else this.#res.end();
    // All relayed, but more than a socket buffer of it waits for a client that is not reading.
    if (this.#res.socket?.writableNeedDrain) this.#watch();
  }

  /**
   * The client is holding the response back: if it reads nothing more for `stallMs`, cut its
   * connection, and with it the upstream exchange (catalogue DOS-03, slow read). Otherwise
   * such a client would hold a connection on both legs for ever.
   */
  #watch(): void {
    if (this.#stall) return;
    this.#stall = setTimeout(() => {
      this.#stall = undefined;
      const res = this.#res;
      if (res.destroyed || res.writableFinished) return;
      this.#f.onStalled();
      res.destroy();
    }, this.#f.stallMs).unref();
  }

  onError(code: string, timeout: boolean): void {
    if (this.#res.destroyed) return;
    const f = timeout ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNAVAILABLE';
    if (this.#res.headersSent) { this.#f.onBroken(f, code); this.#res.destroy(); return; }
    this.#f.onError(f, code);
  }
}

export class Upstream {
  readonly key: string;
  readonly #cfg: CompiledConfig['upstream'];
  #proxy?: ProxyServer;
  #agent?: http.Agent;
  readonly #pool: Http1Pool;

  constructor(cfg: CompiledConfig['upstream']) {
    this.key = cfg.key;
    this.#cfg = cfg;
    this.#pool = new Http1Pool({ url: cfg.url, ca: cfg.ca, timeoutMs: cfg.timeoutMs, maxConnections: 512, keepAliveMs: 30_000 });
  }

  /**
   * Forward a plain request with the headers and URL admission prepared; `body` is the
   * already-buffered body of a signed request, sent byte-for-byte, else the request is
   * streamed. Returns a cancel function for when the client goes away.
   */
  web(req: http.IncomingMessage, res: http.ServerResponse, up: UpstreamRequest, body: Buffer | undefined, f: Forwarded): () => void {
    const h = req.headers;
    const length = h['content-length'];
    const streamed = body === undefined && (h['transfer-encoding'] !== undefined || (length !== undefined && length !== '0'));
    const relay = new Relay(res, f, this.#pool);
    try {
      relay.start(this.#pool.request(req.method!, up.url, up.headers, body ?? (streamed ? req : null), length, relay));
    } catch (e) {
      // A target or header that cannot be written safely: nothing was sent.
      f.onError('UPSTREAM_UNAVAILABLE', (e as NodeJS.ErrnoException).code ?? (e as Error).message);
    }
    return () => relay.cancel();
  }

  ws(req: http.IncomingMessage, socket: Duplex, head: Buffer, onError: (f: UpstreamFailure, detail: string) => void): void {
    void this.#wsProxy().then((proxy) => proxy.ws(req, socket, head, {}, (err) => {
      onError('UPSTREAM_UNAVAILABLE', (err as NodeJS.ErrnoException).code ?? (err as Error).message);
    }), (err: Error) => onError('UPSTREAM_UNAVAILABLE', err.message));
  }

  async #wsProxy(): Promise<ProxyServer> {
    if (this.#proxy) return this.#proxy;
    const { createProxyServer } = await import('http-proxy-3');
    if (this.#proxy) return this.#proxy;
    const cfg = this.#cfg;
    this.#agent = cfg.url.protocol === 'https:'
      ? new https.Agent({ keepAlive: true, maxSockets: 512, ca: cfg.ca })
      : new http.Agent({ keepAlive: true, maxSockets: 512 });
    this.#proxy = createProxyServer({ target: cfg.url.href, agent: this.#agent, xfwd: false, secure: true, ca: cfg.ca, ws: true });
    return this.#proxy;
  }

  close(): void {
    this.#pool.close();
    this.#agent?.destroy();
    this.#proxy?.close();
  }
}
