// Wires the TLS listener, the handler and the admin listener. start() / reload() / close().
import https from 'node:https';
import http from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { CompiledConfig } from './config/compile.ts';
import { CRL_FETCH_TIMEOUT_MS, loadConfig, loadConfigFetching } from './config/load.ts';
import { ConfigError } from './errors.ts';
import type { Logger } from './log.ts';
import { createMetrics, type Metrics } from './metrics.ts';
import { connectionInfo, type ConnectionInfo } from './tls/peer.ts';
import { answered, createHandler } from './pipeline/handle.ts';
import { Upstream } from './pipeline/upstream.ts';
import { ConfigWatcher } from './watch.ts';
import type { RedisConnection } from './store/redis.ts';

export interface ServerOptions {
  config: CompiledConfig;
  logger: Logger;
  metrics?: Metrics;
  now?: () => number;
  /** Reload when the config or a file it names changes (default true). */
  watch?: boolean;
  /** Override listen addresses (tests use port 0). */
  listen?: { host?: string; port?: number };
  adminListen?: { host?: string; port?: number } | false;
}

export class PortcullisServer {
  #config: CompiledConfig;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly now: () => number;
  readonly #https: https.Server;
  #admin?: http.Server;
  #upstream: Upstream;
  readonly #conns = new WeakMap<TLSSocket, ConnectionInfo>();
  readonly #sockets = new Set<Socket>();
  /** Open connections by client address, and the addresses refused since they were last under the cap (logged once). */
  readonly #perIp = new Map<string, number>();
  readonly #perIpLogged = new Set<string>();
  readonly #refused = new WeakSet<Socket>();
  readonly #upgraded = new Set<Duplex>();
  #inFlight: () => number = () => 0;
  #shareStore: (o: { lockout?: RedisConnection; rateLimits?: RedisConnection }) => void = () => {};
  #accepting = true;
  #ready = false;
  readonly #opts: ServerOptions;
  #watcher?: ConfigWatcher;
  #crlTimer?: NodeJS.Timeout;

  constructor(opts: ServerOptions) {
    this.#opts = opts;
    this.#config = opts.config;
    this.logger = opts.logger;
    this.metrics = opts.metrics ?? createMetrics();
    this.now = opts.now ?? Date.now;
    this.#upstream = new Upstream(opts.config.upstream);
    opts.config.runtime.events = {
      jwksRefresh: (result) => this.metrics.jwksRefresh.inc({ result }),
      ocspLookup: (result) => this.metrics.ocspLookups.inc({ result }),
      crlFetch: (result) => this.metrics.crlFetches.inc({ result }),
      replayRejected: () => this.metrics.replaysRejected.inc(),
      log: (level, obj) => this.logger[level](obj),
    };
    const cfg = opts.config;
    this.#https = https.createServer({
      ...cfg.tls.defaultOptions,
      requestCert: cfg.tls.requestCert,
      // Verification failures are judged per policy (a bootstrap path may need no certificate).
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
      sessionTimeout: cfg.tls.sessionTimeoutSec,
      handshakeTimeout: cfg.server.timeouts.headersMs,
      maxHeaderSize: cfg.server.maxHeaderBytes,
      // A request with neither Content-Length nor Transfer-Encoding has no body (RFC 9112
      // §6.3): Node 24.12+ then hands it over already ended, with no 'data'/'end'/'close'
      // stream events (1-2 % less CPU per GET, bench/RESULTS.md eleventh round). Ignored by
      // older Node; readBody() handles both.
      optimizeEmptyRequests: true,
      // Node checks headersTimeout/requestTimeout only this often (default 30 s): slowloris
      // connections must be cut close to their deadline.
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(Math.min(cfg.server.timeouts.headersMs, cfg.server.timeouts.requestMs) / 4))),
      SNICallback: (name, cb) => {
        const ctx = this.#config.tls.lookup(name);
        if (ctx) cb(null, ctx);
        else {
          this.metrics.countHandshake('other', 'unknown_sni');
          cb(new Error(`unknown SNI name`), undefined);
        }
      },
    });
    this.#applyServerSettings(cfg);
    // Runs before the TLS wrapper is made: a connection over the per-address cap is closed
    // before any handshake work (catalogue DOS-01).
    this.#https.prependListener('connection', (s: Socket) => {
      const ip = s.remoteAddress ?? '';
      const n = (this.#perIp.get(ip) ?? 0) + 1;
      const cap = this.#config.server.maxConnectionsPerIp;
      if (cap > 0 && n > cap) {
        this.#refused.add(s);
        s.destroy();
        this.metrics.connectionsDropped.inc({ reason: 'per_ip' });
        if (!this.#perIpLogged.has(ip)) {
          this.#perIpLogged.add(ip);
          this.logger.warn({ msg: 'connection refused: server.maxConnectionsPerIp reached for this address', max: cap, remoteAddress: ip });
        }
        return;
      }
      this.#perIp.set(ip, n);
      this.#sockets.add(s);
      this.metrics.connectionOpened();
      s.once('close', () => {
        this.#sockets.delete(s);
        this.metrics.connectionClosed();
        const left = (this.#perIp.get(ip) ?? 1) - 1;
        if (left > 0) this.#perIp.set(ip, left);
        else this.#perIp.delete(ip);
        if (left < this.#config.server.maxConnectionsPerIp) this.#perIpLogged.delete(ip);
      });
    });
    this.#https.on('secureConnection', (s: TLSSocket) => {
      const info = connectionInfo(s, this.now(), this.#config.tls.trustKey);
      this.#conns.set(s, info);
      this.metrics.countHandshake(this.#config.tls.labelFor(info.sni), info.resumed ? 'resumed' : 'ok');
      const cc = info.clientCert;
      if (cc.present) this.metrics.countClientCert(cc.verified ? 'verified' : (cc.problem ?? 'invalid'));
    });
    this.#https.on('drop', (d?: { remoteAddress?: string }) => {
      this.metrics.connectionsDropped.inc({ reason: 'max_connections' });
      this.logger.warn({ msg: 'connection refused: server.maxConnections reached', max: this.#config.server.maxConnections, remoteAddress: d?.remoteAddress });
    });
    this.#https.on('tlsClientError', (err: Error & { code?: string }, s: TLSSocket) => {
      // The TLS wrapper of a connection refused by the per-address cap reports a hang-up; it
      // was counted as dropped, not as a failed handshake. (_parent: the wrapped net.Socket.)
      if (this.#refused.has((s as unknown as { _parent: Socket })._parent)) return;
      if (!/unknown SNI/.test(err.message)) {
        this.metrics.countHandshake('none', 'error');
        this.metrics.tlsHandshakeErrors.inc({ reason: handshakeFailure(err.code) });
      }
      this.logger.debug({ msg: 'TLS handshake failed', code: err.code, reason: err.message });
    });

    const handler = createHandler({
      config: () => this.#config,
      upstream: () => this.#upstream,
      connection: (s) => {
        let c = this.#conns.get(s);
        if (!c) { c = connectionInfo(s, this.now(), this.#config.tls.trustKey); this.#conns.set(s, c); }
        return c;
      },
      logger: this.logger,
      metrics: this.metrics,
      now: this.now,
      accepting: () => this.#accepting,
    });
    this.#inFlight = handler.inFlight;
    this.#shareStore = handler.shareStore;
    this.#https.on('request', handler.onRequest);
    // With this listener Node no longer answers `Expect: 100-continue` itself: the request is
    // judged on its head before the client is asked for the body (attack catalogue SMUG-10).
    this.#https.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => handler.onRequest(req, res, true));
    this.#https.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
      this.#upgraded.add(socket);
      socket.once('close', () => this.#upgraded.delete(socket));
      handler.onUpgrade(req, socket, head).catch((e: Error) => {
        this.logger.error({ msg: 'unhandled error in upgrade handler', err: { message: e.message } });
        socket.destroy();
      });
    });
    this.#https.on('connect', (req: http.IncomingMessage, socket: Duplex) => handler.onConnect(req, socket));
    this.#https.on('clientError', (err: Error & { code?: string }, socket: Duplex) => {
      // Node's https server hands TLS failures (a handshake timeout, a bad ClientHello) to this
      // listener too, and then no longer destroys the socket itself: there is no HTTP to answer
      // on a connection that never finished its handshake, so close it (catalogue TLS-14).
      const http1 = err.code?.startsWith('HPE_') || err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
      // A request timeout while the rest of an answered request is discarded: no second answer.
      if (!http1 || !socket.writable || answered(socket)) { socket.destroy(); return; }
      handler.onParseError(err, socket);
    });
  }

  get config(): CompiledConfig { return this.#config; }
  get ready(): boolean { return this.#ready && this.#accepting; }

  #applyServerSettings(cfg: CompiledConfig): void {
    const t = cfg.server.timeouts;
    this.#https.headersTimeout = t.headersMs;
    this.#https.requestTimeout = t.requestMs;
    this.#https.keepAliveTimeout = t.idleMs;
    this.#https.maxConnections = cfg.server.maxConnections;
    this.#recordExpiry(cfg);
  }

  #recordExpiry(cfg: CompiledConfig): void {
    const g = this.metrics.certExpiry;
    g.reset();
    for (const c of cfg.tls.certificates) g.set({ name: c.hosts[0]!, role: 'server' }, c.notAfter / 1000);
    for (const c of cfg.tls.clientCas) g.set({ name: c.subject, role: 'client_ca' }, c.notAfter / 1000);
    for (const c of cfg.tls.crls) if (c.nextUpdate) g.set({ name: c.issuer, role: 'crl' }, c.nextUpdate / 1000);
  }

  async start(): Promise<{ port: number; adminPort?: number }> {
    const cfg = this.#config;
    const host = this.#opts.listen?.host ?? cfg.server.host;
    const port = this.#opts.listen?.port ?? cfg.server.port;
    await new Promise<void>((resolve, reject) => {
      this.#https.once('error', reject);
      this.#https.listen(port, host, () => { this.#https.off('error', reject); resolve(); });
    });
    let adminPort: number | undefined;
    if (this.#opts.adminListen !== false) {
      this.#admin = http.createServer((req, res) => void this.#adminRequest(req, res));
      const ah = this.#opts.adminListen?.host ?? cfg.admin.host;
      const ap = this.#opts.adminListen?.port ?? cfg.admin.port;
      await new Promise<void>((resolve, reject) => {
        this.#admin!.once('error', reject);
        this.#admin!.listen(ap, ah, () => { this.#admin!.off('error', reject); resolve(); });
      });
      adminPort = (this.#admin.address() as { port: number }).port;
    }
    for (const a of cfg.authenticators.values()) a.start?.();
    this.#useStore(cfg);
    if (this.#opts.watch !== false) {
      this.#watcher = new ConfigWatcher(() => { this.logger.info({ msg: 'config files changed: reloading' }); void this.reloadFetching(); });
      this.#watcher.track(cfg.files);
    }
    this.#ready = true;
    this.#scheduleCrlRefresh();
    this.metrics.configReloads.inc({ result: 'success' });
    this.metrics.configLastReloadSuccessful.set(1);
    this.metrics.configLastReloadSuccess.set(cfg.loadedAt / 1000);
    const actual = (this.#https.address() as { port: number }).port;
    this.logger.info({ msg: 'listening', address: `${host}:${actual}`, admin: adminPort, policies: cfg.policies.length, upstream: cfg.upstream.url.origin });
    return { port: actual, adminPort };
  }

  /** Connect to the config's shared store now (not on the first signed request); close any other. */
  #useStore(cfg: CompiledConfig): void {
    const s = cfg.store.type === 'redis' ? cfg.store : undefined;
    cfg.runtime.retainStore(s, cfg.server.timeouts.shutdownMs);
    if (s) void cfg.runtime.redis(s).connect();
    const conn = s && cfg.runtime.redis(s);
    this.#shareStore({ lockout: cfg.lockout && conn, rateLimits: cfg.policies.some((p) => p.rateLimit) ? conn : undefined });
  }

  async #adminRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    const json = (status: number, body: unknown) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)); };
    if (path === '/healthz') return json(200, { status: 'ok' });
    if (path === '/readyz') return this.ready ? json(200, { status: 'ready' }) : json(503, { status: this.#accepting ? 'starting' : 'draining' });
    if (path === '/metrics') {
      const text = await this.metrics.registry.metrics();
      res.writeHead(200, { 'content-type': this.metrics.registry.contentType });
      res.end(text);
      return;
    }
    json(404, { error: 'not found' });
  }

  /** Swap in a new compiled config atomically. In-flight requests keep theirs. */
  reload(next: CompiledConfig): void {
    const prev = this.#config;
    this.#https.setSecureContext({ ...next.tls.defaultOptions });
    if (next.upstream.key !== this.#upstream.key) {
      const old = this.#upstream;
      this.#upstream = new Upstream(next.upstream);
      setTimeout(() => old.close(), next.server.timeouts.shutdownMs).unref();
    }
    this.#config = next;
    if (next.tls.trustKey !== prev.tls.trustKey) {
      // A CA or CRL was added or removed: every live connection's verdict was reached under the
      // old trust. Idle ones close now; busy ones after their current request; a request that
      // starts on one gets 421 CONNECTION_STALE (catalogue CFG-07, CERT-05). Clients reconnect
      // and are judged by a full handshake (sessions never resume across config loads).
      this.#https.closeIdleConnections();
      const webSockets = [...this.#upgraded];
      for (const s of webSockets) s.destroy();
      this.logger.info({ msg: 'client-certificate trust changed: closing connections judged under the previous trust', webSockets: webSockets.length });
    }
    this.#applyServerSettings(next);
    for (const a of next.authenticators.values()) a.start?.();
    this.#useStore(next);
    this.#watcher?.track(next.files);
    this.#scheduleCrlRefresh();
    this.metrics.configReloads.inc({ result: 'success' });
    this.metrics.configLastReloadSuccessful.set(1);
    this.metrics.configLastReloadSuccess.set(next.loadedAt / 1000);
    this.logger.info({ msg: 'config reloaded', file: next.file, policies: next.policies.length, previousLoadedAt: new Date(prev.loadedAt).toISOString() });
  }

  /** Re-read the config file; a broken one is refused and the old one keeps serving. */
  reloadFromFile(): boolean {
    try {
      this.reload(loadConfig(this.#config.file, { runtime: this.#config.runtime }));
      return true;
    } catch (e) {
      return this.#reloadRefused(e);
    }
  }

  /** The same, fetching again the CRLs the config names by URL (file change, SIGHUP, a worker's reload). */
  async reloadFetching(): Promise<boolean> {
    try {
      this.reload(await loadConfigFetching(this.#config.file, { runtime: this.#config.runtime, refetch: this.#config.tls.crlUrls }));
      return true;
    } catch (e) {
      return this.#reloadRefused(e);
    }
  }

  /** CRLs named by URL: fetched every crlRefreshSec; a changed one reloads the config. */
  #scheduleCrlRefresh(): void {
    clearTimeout(this.#crlTimer);
    const t = this.#config.tls;
    if (!t.crlUrls.length || !this.#accepting) return;
    this.#crlTimer = setTimeout(() => {
      const urls = this.#config.tls.crlUrls;
      void this.#config.runtime.crls.fetch(urls, CRL_FETCH_TIMEOUT_MS, this.#config.runtime.events).then((changed) => {
        if (changed) this.logger.info({ msg: 'a CRL fetched by URL changed: reloading', urls });
        // A reload schedules the next fetch itself.
        if (!(changed && this.reloadFromFile())) this.#scheduleCrlRefresh();
      });
    }, t.crlRefreshSec * 1000);
    this.#crlTimer.unref();
  }

  #reloadRefused(e: unknown): false {
    this.metrics.configReloads.inc({ result: 'failure' });
    this.metrics.configLastReloadSuccessful.set(0);
    const issues = e instanceof ConfigError ? e.message.split('\n') : [(e as Error).message];
    this.logger.error({ msg: 'config reload refused; still serving the previous config', issues });
    return false;
  }

  /** Stop accepting, fail /readyz, drain in-flight requests within shutdownMs, then close. */
  async close(): Promise<void> {
    this.#accepting = false;
    clearTimeout(this.#crlTimer);
    this.#watcher?.close();
    const deadline = Date.now() + this.#config.server.timeouts.shutdownMs;
    const closed = new Promise<void>((r) => this.#https.close(() => r()));
    this.#https.closeIdleConnections();
    while ((this.#inFlight() > 0 || this.#upgraded.size > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 25));
      this.#https.closeIdleConnections();
    }
    for (const s of this.#upgraded) s.destroy();
    this.#https.closeAllConnections();
    for (const s of this.#sockets) s.destroy();
    await closed;
    this.#upstream.close();
    await this.#config.runtime.close();
    if (this.#admin) {
      this.#admin.closeAllConnections();
      await new Promise<void>((r) => this.#admin!.close(() => r()));
    }
    this.logger.info({ msg: 'stopped' });
  }
}

/**
 * A bounded reason for a failed handshake (catalogue TLS-14), from Node's and OpenSSL's
 * error codes, so that an operator sees why clients fail without turning on debug logs.
 */
export function handshakeFailure(code: string | undefined): string {
  switch (code) {
    case 'ERR_TLS_HANDSHAKE_TIMEOUT': return 'timeout';
    case 'ECONNRESET': case 'EPIPE': return 'closed';
    case 'ERR_SSL_HTTP_REQUEST': case 'ERR_SSL_WRONG_VERSION_NUMBER': case 'ERR_SSL_PACKET_LENGTH_TOO_LONG': case 'ERR_SSL_RECORD_LENGTH_MISMATCH': return 'not_tls';
    case 'ERR_SSL_UNSUPPORTED_PROTOCOL': case 'ERR_SSL_VERSION_TOO_LOW': case 'ERR_SSL_UNKNOWN_PROTOCOL': return 'protocol_version';
    case 'ERR_SSL_NO_SHARED_CIPHER': case 'ERR_SSL_NO_SHARED_GROUPS': case 'ERR_SSL_NO_SUITABLE_KEY_SHARE': case 'ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM': return 'no_shared_cipher';
    case 'ERR_SSL_NO_APPLICATION_PROTOCOL': return 'no_alpn';
    default: return code && /^ERR_SSL_(SSLV3|TLSV1)_ALERT_/.test(code) ? 'client_alert' : 'other';
  }
}
