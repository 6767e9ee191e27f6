// store: redis — nonces shared by every replica and worker. A nonce is one key,
// set only if absent (SET NX) and expiring when its time window ends (PX), so Redis
// forgets it exactly when a replay would be refused by the timestamp check anyway.
// Any failure (unreachable, timeout, out of memory) rejects: the request is refused
// with 503 INTERNAL, never forwarded on an unchecked nonce.
import { hash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { NonceStore, NonceVerdict } from './nonces.ts';

export interface RedisSettings {
  /** redis://[user:password@]host:port[/db] or rediss:// (TLS). */
  readonly url: string;
  readonly keyPrefix: string;
  /** Per command, waiting for a connection included: past it the request is refused. */
  readonly timeoutMs: number;
  /** PEM CA certificates for a rediss:// server (default: the system CAs). */
  readonly ca?: string;
}

export interface RedisEvents {
  log(level: 'info' | 'warn' | 'error', obj: Record<string, unknown>): void;
}

/** The URL without its password, for logs. */
export function redactedUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.href;
  } catch {
    return '(unparseable URL)';
  }
}

interface Pending { readonly deadline: number; readonly reject: (e: Error) => void }

export class RedisStoreUnavailable extends Error {
  constructor(cause: Error) {
    super(`nonce store (redis) unavailable: ${cause.message}`);
    this.name = 'RedisStoreUnavailable';
  }
}

/**
 * One connection per process (per URL and timeout), opened by `connect()` when a
 * server starts: `portcullis check` and `explain` never open one. ioredis is loaded
 * only then, so a memory-store deployment does not pay for it.
 */
export class RedisConnection {
  readonly settings: RedisSettings;
  readonly #events: () => RedisEvents;
  #client?: Promise<Redis>;
  #closed = false;
  readonly #pending = new Set<Pending>();
  #sweeper?: NodeJS.Timeout;
  /** A second connection, in subscriber mode (Redis takes no other command on one). */
  #subscriber?: Promise<Redis>;
  readonly #channels = new Map<string, (message: string) => void>();

  constructor(settings: RedisSettings, events: () => RedisEvents) {
    this.settings = settings;
    this.#events = events;
  }

  connect(): Promise<Redis> {
    this.#client ??= this.#open();
    return this.#client;
  }

  async #open(): Promise<Redis> {
    const { Redis } = await import('ioredis');
    const s = this.settings;
    const where = redactedUrl(s.url);
    const client = new Redis(s.url, {
      lazyConnect: true,
      connectTimeout: s.timeoutMs,
      // No commandTimeout: it arms and clears a timer per command, which cost the proxy
      // 25–50 µs per signed request (`npm run bench:store`); `run()` sweeps deadlines instead.
      // A command is sent once: re-sent after a reconnect, a SET NX that did land would
      // come back "already set" and refuse a genuine request as a replay.
      maxRetriesPerRequest: 0,
      // While (re)connecting, commands wait (bounded by run()'s deadline) rather than fail at once.
      enableOfflineQueue: true,
      // Commands issued in one turn of the event loop go out in one write: Redis' own CPU
      // per signed request 27 → 9 µs (`npm run bench:store`, bench/RESULTS.md).
      enableAutoPipelining: true,
      retryStrategy: (times) => Math.min(100 * times, 2000),
      reconnectOnError: () => false,
      // rediss:// turns TLS on (the server's certificate is verified); a private CA is added here.
      ...(s.ca !== undefined ? { tls: { ca: s.ca } } : {}),
    });
    let up: boolean | undefined;
    client.on('ready', () => {
      if (up !== true) this.#events().log('info', { msg: 'nonce store connected', store: 'redis', url: where });
      up = true;
    });
    client.on('error', (e: Error) => {
      // Logged once per outage, not once per reconnection attempt.
      if (up !== false) this.#events().log('error', { msg: 'nonce store unreachable: signed requests are refused (503) until it is back', store: 'redis', url: where, reason: e.message });
      up = false;
    });
    if (this.#closed) client.disconnect();
    else client.connect().catch(() => { /* reported by the 'error' listener; retried by retryStrategy */ });
    return client;
  }

  /**
   * One command, refused once `timeoutMs` has passed (waiting for a connection
   * included). A single timer sweeps the deadlines of every pending command.
   */
  run<T>(command: (c: Redis) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { deadline: performance.now() + this.settings.timeoutMs, reject };
      this.#pending.add(p);
      this.#sweeper ??= setInterval(() => this.#sweep(), Math.max(5, Math.floor(this.settings.timeoutMs / 5))).unref();
      this.connect().then(command).then(
        (v) => { this.#pending.delete(p); resolve(v); },
        (e: Error) => { this.#pending.delete(p); reject(e); },
      );
    });
  }

  /**
   * Call `onMessage` with every message published on `channel` (prefixed with keyPrefix),
   * for as long as this connection lives; ioredis re-subscribes after a reconnection.
   * Messages published while disconnected are lost: callers use them to learn sooner
   * what they could also learn on their next command.
   */
  subscribe(channel: string, onMessage: (message: string) => void): void {
    const name = this.settings.keyPrefix + channel;
    if (this.#channels.has(name)) { this.#channels.set(name, onMessage); return; }
    this.#channels.set(name, onMessage);
    this.#subscriber ??= this.connect().then((c) => {
      // A SUBSCRIBE sent while Redis is unreachable waits for it (the main connection's
      // commands give up at once instead): ioredis re-subscribes only to channels it had.
      const sub = c.duplicate({ maxRetriesPerRequest: null });
      sub.on('error', () => { /* the main connection reports outages */ });
      sub.on('message', (ch: string, message: string) => this.#channels.get(ch)?.(message));
      if (this.#closed) sub.disconnect();
      else sub.connect().catch(() => { /* retried by retryStrategy */ });
      return sub;
    });
    void this.#subscriber.then((sub) => sub.subscribe(name)).catch(() => { /* closed, or retried on reconnection */ });
  }

  /** The prefixed channel name, for PUBLISH. */
  channel(name: string): string { return this.settings.keyPrefix + name; }

  #sweep(): void {
    const now = performance.now();
    // Insertion order is deadline order (one timeout for every command).
    for (const p of this.#pending) {
      if (p.deadline > now) break;
      this.#pending.delete(p);
      p.reject(new Error(`no answer within ${this.settings.timeoutMs} ms`));
    }
  }

  /** Close the connection (server shutdown, or a reload that changed the store). */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#sweeper) clearInterval(this.#sweeper);
    for (const p of this.#pending) p.reject(new Error('connection closed'));
    this.#pending.clear();
    if (this.#subscriber) (await this.#subscriber).disconnect();
    if (!this.#client) return;
    const c = await this.#client;
    c.disconnect();
  }
}

/** The nonces of one authenticator, under `<keyPrefix>nonce:<authenticator>:`. */
export class RedisNonceStore implements NonceStore {
  readonly #conn: RedisConnection;
  readonly #prefix: string;

  constructor(conn: RedisConnection, authenticator: string) {
    this.#conn = conn;
    this.#prefix = `${conn.settings.keyPrefix}nonce:${authenticator}:`;
  }

  remember(key: string, expiresAt: number, now: number): Promise<NonceVerdict> {
    // The key is hashed: client ids and nonces are the caller's text, of any length.
    const k = this.#prefix + hash('sha256', key, 'base64url');
    const ttl = Math.max(1, Math.ceil(expiresAt - now));
    return this.#conn.run((c) => c.set(k, '1', 'PX', ttl, 'NX'))
      .then((r) => (r === 'OK' ? 'fresh' : 'replay'), (e: Error) => { throw new RedisStoreUnavailable(e); });
  }
}
