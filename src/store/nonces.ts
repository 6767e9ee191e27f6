// Nonces seen within their time window. The store never forgets a nonce before
// its window ends: when it is full of live nonces it answers "full" and the
// request is refused, rather than evicting one and reopening a replay.

export type NonceVerdict = 'fresh' | 'replay' | 'full';

export interface NonceStore {
  /** Record `key` until `expiresAt` (ms); say whether it was already live. A shared store answers later. */
  remember(key: string, expiresAt: number, now: number): NonceVerdict | Promise<NonceVerdict>;
}

export class MemoryNonceStore implements NonceStore {
  readonly #live = new Map<string, number>();
  readonly capacity: number;

  constructor(capacity: number) { this.capacity = capacity; }

  get size(): number { return this.#live.size; }

  remember(key: string, expiresAt: number, now: number): NonceVerdict {
    const seen = this.#live.get(key);
    if (seen !== undefined && seen > now) return 'replay';
    if (seen === undefined && this.#live.size >= this.capacity) {
      // Drop expired entries (insertion order ~ expiry order for one window length).
      for (const [k, exp] of this.#live) {
        if (exp > now) break;
        this.#live.delete(k);
      }
      if (this.#live.size >= this.capacity) {
        for (const [k, exp] of this.#live) if (exp <= now) this.#live.delete(k);
        if (this.#live.size >= this.capacity) return 'full';
      }
    }
    this.#live.delete(key);
    this.#live.set(key, expiresAt);
    return 'fresh';
  }
}
