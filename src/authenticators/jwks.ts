// A remote JWKS that keeps serving its last good keys when the endpoint fails,
// refetches when a token names a kid it does not know (at most once per
// cooldown), and refreshes in the background after maxAge. Key selection is
// jose's local key set. One instance per URL for the life of the process, so
// reloads do not drop the keys.
import { createLocalJWKSet, type JWSHeaderParameters, type FlattenedJWSInput, type JSONWebKeySet } from 'jose';
import type { AuthEvents } from '../runtime.ts';
import { fetchBytes } from '../util/fetch.ts';

export interface RemoteJwksOptions {
  timeoutMs: number;
  cooldownMs: number;
  maxAgeMs: number;
  ca?: string;
  maxBytes: number;
}

/** Thrown when no keys were ever loaded: an infrastructure failure (503), never a denial that could be retried as an allow. */
export class JwksUnavailable extends Error {}

type GetKey = ReturnType<typeof createLocalJWKSet>;

async function fetchJson(url: URL, o: RemoteJwksOptions): Promise<unknown> {
  const body = await fetchBytes(url, { timeoutMs: o.timeoutMs, maxBytes: o.maxBytes, ca: o.ca, headers: { accept: 'application/json' } });
  return JSON.parse(body.toString('utf8'));
}

export class RemoteJwks {
  readonly url: URL;
  readonly #o: RemoteJwksOptions;
  #events: () => AuthEvents;
  #local?: GetKey;
  #fetchedAt = 0;
  #attemptAt = 0;
  #inflight?: Promise<boolean>;

  constructor(url: URL, o: RemoteJwksOptions, events: () => AuthEvents) {
    this.url = url;
    this.#o = o;
    this.#events = events;
  }

  get loaded(): boolean { return !!this.#local; }

  /** Fetch now (single flight). Resolves true when new keys were installed. */
  refresh(): Promise<boolean> {
    this.#inflight ??= (async () => {
      this.#attemptAt = Date.now();
      try {
        const body = await fetchJson(this.url, this.#o);
        if (!body || typeof body !== 'object' || !Array.isArray((body as JSONWebKeySet).keys)) throw new Error('not a JWKS (no "keys" array)');
        this.#local = createLocalJWKSet(body as JSONWebKeySet);
        this.#fetchedAt = Date.now();
        this.#events().jwksRefresh('success');
        return true;
      } catch (e) {
        this.#events().jwksRefresh('failure');
        this.#events().log('error', { msg: 'JWKS fetch failed; keeping the last good keys', url: this.url.href, hasKeys: !!this.#local, reason: (e as Error).message });
        return false;
      } finally {
        this.#inflight = undefined;
      }
    })();
    return this.#inflight;
  }

  async getKey(header: JWSHeaderParameters, token: FlattenedJWSInput) {
    const now = Date.now();
    if (!this.#local) {
      if (now - this.#attemptAt >= this.#o.cooldownMs || this.#inflight) await this.refresh();
      if (!this.#local) throw new JwksUnavailable(`no keys from ${this.url.href} yet`);
    } else if (now - this.#fetchedAt > this.#o.maxAgeMs) {
      void this.refresh();
    }
    try {
      return await this.#local!(header, token);
    } catch (e) {
      // A key we do not know yet: perhaps rotated in. Refetch, but at most once per cooldown.
      if ((e as { code?: string }).code === 'ERR_JWKS_NO_MATCHING_KEY' && Date.now() - this.#attemptAt >= this.#o.cooldownMs) {
        if (await this.refresh()) return this.#local!(header, token);
      }
      throw e;
    }
  }
}
