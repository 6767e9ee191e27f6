// Forwarding to the upstream. Plain requests go through an undici Pool (measured
// in bench/RESULTS.md: Node's http.request client, which http-proxy-3 uses, was
// the bottleneck); WebSocket upgrades go through http-proxy-3.
// Errors come back as a code the handler turns into a JSON 502/504.
import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { createProxyServer, type ProxyServer } from 'http-proxy-3';
import { Pool, type Dispatcher } from 'undici';
import { EventEmitter } from 'node:events';
import type { CompiledConfig } from '../config/compile.ts';

export type UpstreamFailure = 'UPSTREAM_UNAVAILABLE' | 'UPSTREAM_TIMEOUT';

export class Upstream {
  readonly key: string;
  readonly #proxy: ProxyServer;
  readonly #agent: http.Agent;
  readonly #pool: Pool;
  readonly #basePath: string;

  constructor(cfg: CompiledConfig['upstream']) {
    this.key = cfg.key;
    const tlsUpstream = cfg.url.protocol === 'https:';
    this.#agent = tlsUpstream
      ? new https.Agent({ keepAlive: true, maxSockets: 512, ca: cfg.ca })
      : new http.Agent({ keepAlive: true, maxSockets: 512 });
    this.#basePath = cfg.url.pathname.replace(/\/$/, '');
    this.#pool = new Pool(cfg.url.origin, {
      connections: 512,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      headersTimeout: cfg.timeoutMs,
      bodyTimeout: cfg.timeoutMs,
      ...(tlsUpstream && cfg.ca ? { connect: { ca: cfg.ca } } : {}),
    });
    // http-proxy-3 carries WebSocket upgrades only.
    this.#proxy = createProxyServer({ target: cfg.url.href, agent: this.#agent, xfwd: false, secure: true, ca: cfg.ca, ws: true });
  }

  /**
   * Forward a plain request; `body` is the already-buffered body of a signed
   * request, sent byte-for-byte, else the request is streamed.
   */
  web(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer | undefined, onError: (f: UpstreamFailure, detail: string) => void): void {
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      // undici frames the body itself and refuses these; they are hop-by-hop anyway.
      if (v === undefined || k === 'transfer-encoding' || k === 'connection' || k === 'keep-alive' || k === 'upgrade' || k === 'expect') continue;
      headers[k] = v;
    }
    const hasBody = body !== undefined || req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
    const fail = (err: Error & { code?: string }) => {
      const code = err.code ?? err.name;
      onError(code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNAVAILABLE', code);
    };
    // An EventEmitter is a valid undici signal and far cheaper than an AbortController per request.
    const signal = new EventEmitter();
    let aborted = false;
    res.once('close', () => { if (!res.writableFinished) { aborted = true; signal.emit('abort'); } });
    // stream(): undici writes the upstream body straight into the client response.
    this.#pool.stream({
      path: this.#basePath + (req.url ?? '/'),
      method: req.method as Dispatcher.HttpMethod,
      headers,
      body: body ?? (hasBody ? req : null),
      signal,
    }, ({ statusCode, headers: upHeaders }) => {
      const nominated = upHeaders.connection ? String(upHeaders.connection).split(',').map((t) => t.trim().toLowerCase()) : [];
      const out: Record<string, string | string[]> = {};
      for (const k in upHeaders) {
        const v = upHeaders[k];
        if (v === undefined || k === 'connection' || k === 'keep-alive' || k === 'proxy-connection' || k === 'transfer-encoding' || (nominated.length && nominated.includes(k))) continue;
        out[k] = v;
      }
      out.connection = res.shouldKeepAlive ? 'keep-alive' : 'close';
      res.writeHead(statusCode, out);
      return res;
    }).catch((err: Error & { code?: string }) => {
      if (aborted) return;
      if (res.headersSent) { res.destroy(); return; }
      fail(err);
    });
  }

  ws(req: http.IncomingMessage, socket: Duplex, head: Buffer, onError: (f: UpstreamFailure, detail: string) => void): void {
    this.#proxy.ws(req, socket, head, {}, (err) => {
      onError('UPSTREAM_UNAVAILABLE', (err as NodeJS.ErrnoException).code ?? (err as Error).message);
    });
  }

  close(): void {
    void this.#pool.destroy();
    this.#agent.destroy();
    this.#proxy.close();
  }
}
