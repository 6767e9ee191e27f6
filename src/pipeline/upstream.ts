// Forwarding to the upstream. Plain requests go to an undici Pool through a
// dispatch handler that writes the upstream's response straight into the
// client's (measured in bench/RESULTS.md: Node's http.request client, which
// http-proxy-3 uses, was the bottleneck; undici's stream() wrapper cost a promise,
// an AsyncResource, a parsed header object and stream.finished() per request).
// WebSocket upgrades go through http-proxy-3, loaded only when one arrives.
// Errors come back as a code the handler turns into a JSON 502/504.
import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import type { ProxyServer } from 'http-proxy-3';
import type { Dispatcher } from 'undici';
// undici's Pool alone: its index also loads fetch, WebSocket, caches and Node's own
// bundled undici (~13 MiB of resident memory) that Portcullis never uses.
import Pool from 'undici/lib/dispatcher/pool.js';
import type { CompiledConfig } from '../config/compile.ts';
import type { UpstreamRequest } from './headers.ts';

export type UpstreamFailure = 'UPSTREAM_UNAVAILABLE' | 'UPSTREAM_TIMEOUT';

/** Response headers never relayed: hop-by-hop (RFC 9110 §7.6.1); Node frames the response itself. */
const HOP_BY_HOP_RESPONSE = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer']);

export interface Forwarded {
  /** Headers Portcullis adds to the response, as [name, value, name, value, ...]. */
  readonly responseHeaders: string[];
  /** The response was relayed in full (before `res.end()` flushes it). */
  onComplete(): void;
  /** No response head could be relayed: the handler answers with a JSON error. */
  onError(f: UpstreamFailure, detail: string): void;
}

/** Relays one upstream response into `res`; one object per request, no closures. */
class Relay implements Dispatcher.DispatchHandler {
  #abort: ((err?: Error) => void) | null = null;
  #cancelled = false;
  #resume: (() => void) | null = null;
  #done = false;
  readonly #res: http.ServerResponse;
  readonly #f: Forwarded;

  constructor(res: http.ServerResponse, f: Forwarded) {
    this.#res = res;
    this.#f = f;
  }

  /** The client went away: stop the upstream exchange. */
  cancel(): void {
    if (this.#done) return;
    this.#cancelled = true;
    this.#abort?.(new Error('client closed the connection'));
  }

  onConnect(abort: (err?: Error) => void): void {
    if (this.#cancelled) abort(new Error('client closed the connection'));
    else this.#abort = abort;
  }

  onHeaders(statusCode: number, raw: Buffer[], resume: () => void): boolean {
    if (statusCode < 200) return true; // 1xx: undici continues to the final response
    this.#resume = resume;
    const out: string[] = [];
    let nominated: string[] | undefined;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toString('latin1');
      const lower = name.toLowerCase();
      if (HOP_BY_HOP_RESPONSE.has(lower)) {
        if (lower === 'connection') (nominated ??= []).push(...raw[i + 1]!.toString('latin1').split(',').map((t) => t.trim().toLowerCase()));
        continue;
      }
      out.push(name, raw[i + 1]!.toString('latin1'));
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
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.#res.write(chunk)) return true;
    this.#res.once('drain', this.#resume!);
    return false;
  }

  onComplete(): void {
    this.#done = true;
    this.#f.onComplete();
    this.#res.end();
  }

  onError(err: Error & { code?: string }): void {
    this.#done = true;
    if (this.#cancelled || this.#res.destroyed) return;
    if (this.#res.headersSent) { this.#res.destroy(); return; }
    const code = err.code ?? err.name;
    this.#f.onError(code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNAVAILABLE', code === 'Error' ? err.message : code);
  }
}

export class Upstream {
  readonly key: string;
  readonly #cfg: CompiledConfig['upstream'];
  #proxy?: ProxyServer;
  #agent?: http.Agent;
  readonly #pool: InstanceType<typeof Pool>;
  readonly #basePath: string;

  constructor(cfg: CompiledConfig['upstream']) {
    this.key = cfg.key;
    this.#cfg = cfg;
    const tlsUpstream = cfg.url.protocol === 'https:';
    this.#basePath = cfg.url.pathname.replace(/\/$/, '');
    this.#pool = new Pool(cfg.url.origin, {
      connections: 512,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      headersTimeout: cfg.timeoutMs,
      bodyTimeout: cfg.timeoutMs,
      ...(tlsUpstream && cfg.ca ? { connect: { ca: cfg.ca } } : {}),
    });
  }

  /**
   * Forward a plain request with the headers and URL admission prepared; `body` is the
   * already-buffered body of a signed request, sent byte-for-byte, else the request is
   * streamed. Returns a cancel function for when the client goes away.
   */
  web(req: http.IncomingMessage, res: http.ServerResponse, up: UpstreamRequest, body: Buffer | undefined, f: Forwarded): () => void {
    const h = req.headers;
    const hasBody = body !== undefined || h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
    const relay = new Relay(res, f);
    this.#pool.dispatch({
      path: this.#basePath + up.url,
      method: req.method as Dispatcher.HttpMethod,
      headers: up.headers,
      body: body ?? (hasBody ? req : null),
    }, relay);
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
    void this.#pool.destroy();
    this.#agent?.destroy();
    this.#proxy?.close();
  }
}
