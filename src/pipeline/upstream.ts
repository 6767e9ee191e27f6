// Forwarding to the upstream with http-proxy-3 over a keep-alive agent.
// Errors come back as a code the handler turns into a JSON 502/504.
import http from 'node:http';
import https from 'node:https';
import { Readable, type Duplex } from 'node:stream';
import { createProxyServer, type ProxyServer } from 'http-proxy-3';
import type { CompiledConfig } from '../config/compile.ts';

export type UpstreamFailure = 'UPSTREAM_UNAVAILABLE' | 'UPSTREAM_TIMEOUT';

const TIMEOUT = 'PORTCULLIS_UPSTREAM_TIMEOUT';

export class Upstream {
  readonly key: string;
  readonly #proxy: ProxyServer;
  readonly #agent: http.Agent;

  constructor(cfg: CompiledConfig['upstream']) {
    this.key = cfg.key;
    const tlsUpstream = cfg.url.protocol === 'https:';
    this.#agent = tlsUpstream
      ? new https.Agent({ keepAlive: true, maxSockets: 512, ca: cfg.ca })
      : new http.Agent({ keepAlive: true, maxSockets: 512 });
    this.#proxy = createProxyServer({ target: cfg.url.href, agent: this.#agent, xfwd: false, secure: true, ca: cfg.ca, ws: true });
    // The upstream's hop-by-hop response headers describe its connection to us, not ours to the client.
    this.#proxy.on('proxyRes', (proxyRes, _req, res) => {
      // An upstream that dies mid-response: cut the client's connection too, so it
      // sees a truncated response rather than waiting for bytes that never come.
      proxyRes.once('close', () => { if (!proxyRes.complete && !res.destroyed) res.destroy(); });
      const h = proxyRes.headers;
      const nominated = h.connection ? String(h.connection).split(',').map((t) => t.trim().toLowerCase()) : [];
      for (const name of [...nominated, 'keep-alive', 'proxy-connection', 'connection']) if (name !== 'upgrade') delete h[name];
      // Say what this server will really do with the client's connection (http-proxy-3
      // would otherwise guess from the request's Connection header, which we strip).
      if (proxyRes.statusCode !== 101) h.connection = (res as http.ServerResponse).shouldKeepAlive ? 'keep-alive' : 'close';
    });
    const timeoutMs = cfg.timeoutMs;
    this.#proxy.on('proxyReq', (proxyReq) => {
      proxyReq.setTimeout(timeoutMs, () => proxyReq.destroy(Object.assign(new Error('upstream timed out'), { code: TIMEOUT })));
    });
  }

  /** Forward; `body` is the already-buffered body of a signed request, sent byte-for-byte. */
  web(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer | undefined, onError: (f: UpstreamFailure, detail: string) => void): void {
    this.#proxy.web(req, res, body ? { buffer: Readable.from([body]) } : {}, (err) => {
      const code = (err as NodeJS.ErrnoException).code;
      onError(code === TIMEOUT ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNAVAILABLE', code ?? (err as Error).message);
    });
  }

  ws(req: http.IncomingMessage, socket: Duplex, head: Buffer, onError: (f: UpstreamFailure, detail: string) => void): void {
    this.#proxy.ws(req, socket, head, {}, (err) => {
      onError('UPSTREAM_UNAVAILABLE', (err as NodeJS.ErrnoException).code ?? (err as Error).message);
    });
  }

  close(): void {
    this.#agent.destroy();
    this.#proxy.close();
  }
}
