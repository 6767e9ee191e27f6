// State and hooks that outlive one compiled config: JWKS key sets, nonce stores,
// the connection to a shared store, and the events authenticators report (metrics,
// logs). A reload that does not change an authenticator's settings gets the same
// instances back.
import { RedisConnection, type RedisSettings } from './store/redis.ts';
import { CrlSources } from './tls/crlfetch.ts';

export interface AuthEvents {
  jwksRefresh(result: 'success' | 'failure'): void;
  /** A CRL named by URL was fetched (src/tls/crlfetch.ts). */
  crlFetch(result: 'changed' | 'unchanged' | 'failure'): void;
  /** An OCSP responder was asked about a client certificate (src/tls/ocsp.ts). */
  ocspLookup(result: 'good' | 'revoked' | 'unknown' | 'error'): void;
  replayRejected(): void;
  log(level: 'info' | 'warn' | 'error', obj: Record<string, unknown>): void;
}

const redisKey = (s: RedisSettings) => `${s.url}|${s.keyPrefix}|${s.timeoutMs}|${s.ca ?? ''}`;

const NO_EVENTS: AuthEvents = { jwksRefresh() {}, crlFetch() {}, ocspLookup() {}, replayRejected() {}, log() {} };

export interface RuntimeOptions {
  /**
   * `portcullis check` and `explain`: nothing may reach a shared store (an explained
   * request must not use up a real nonce); nonces are remembered in memory instead.
   */
  offline?: boolean;
}

export class Runtime {
  events: AuthEvents = NO_EVENTS;
  readonly offline: boolean;
  readonly #shared = new Map<string, unknown>();
  readonly #redis = new Map<string, RedisConnection>();
  /** CRLs named by URL, fetched (src/tls/crlfetch.ts). */
  readonly crls = new CrlSources();

  constructor(opts: RuntimeOptions = {}) {
    this.offline = opts.offline ?? false;
  }

  /**
   * The process's connection to a Redis store, one per settings. Compiling a config
   * only adds one (a config refused at reload must not disturb the serving one); the
   * server closes the others when it adopts a config (`retainStore`).
   */
  redis(settings: RedisSettings): RedisConnection {
    const key = redisKey(settings);
    let conn = this.#redis.get(key);
    if (!conn) { conn = new RedisConnection(settings, () => this.events); this.#redis.set(key, conn); }
    return conn;
  }

  /** A config was adopted: connections it does not use close once requests in flight under them are done. */
  retainStore(settings: RedisSettings | undefined, graceMs: number): void {
    const keep = settings && redisKey(settings);
    for (const [key, conn] of this.#redis) {
      if (key === keep) continue;
      this.#redis.delete(key);
      setTimeout(() => void conn.close(), graceMs).unref();
    }
  }

  /** Server shutdown: close connections to shared stores. */
  async close(): Promise<void> {
    const all = [...this.#redis.values()];
    this.#redis.clear();
    await Promise.all(all.map((c) => c.close()));
  }

  /** One instance per key for the life of the process (keys encode the settings). */
  shared<T>(key: string, create: () => T): T {
    let v = this.#shared.get(key) as T | undefined;
    if (v === undefined) { v = create(); this.#shared.set(key, v); }
    return v;
  }
}
