// Failure lockout (SPEC §5 AUTH_007): a client IP that fails authentication `failures`
// times within `windowSec` is refused with 429 for `lockSec`, before any authenticator
// runs again. Guessing keys, secrets or signatures then costs the attacker time, and the
// proxy no verification work while the lock holds.
//
// Counted: denials that mean a credential was presented and was wrong (AUTH_001 invalid,
// AUTH_004 unknown or revoked key, AUTH_009 replayed or stale signature). Not counted: a
// missing or malformed credential (AUTH_003), an expired one (AUTH_002), a missing client
// certificate (AUTH_010), IP rules, authorisation and unmatched requests: none of these is
// a guess, and counting them would lock out clients that only need to log in again.
//
// Keyed by client IP only, never by credential: locking a key id because someone else
// failed against it would let anyone lock a victim out. State is per process (bounded,
// least-recently-seen clients forgotten first) and survives config reloads.
import type { BlockList } from 'node:net';
import { LRUCache } from 'lru-cache';
import type { AuthCode } from '../errors.ts';
import { inList } from './match.ts';

export interface LockoutSettings {
  readonly failures: number;
  readonly windowMs: number;
  readonly lockMs: number;
  readonly exemptIps?: BlockList;
}

/** The denial codes that count as a failed guess. */
export const COUNTED: ReadonlySet<AuthCode> = new Set<AuthCode>(['AUTH_001', 'AUTH_004', 'AUTH_009']);

/** Clients remembered at once; the least recently seen are forgotten first. */
export const MAX_CLIENTS = 100_000;

interface Entry { failures: number; windowStart: number; lockedUntil: number }

export class Lockout {
  readonly #clients = new LRUCache<string, Entry>({ max: MAX_CLIENTS });

  /** Milliseconds this client stays locked out, or 0. */
  lockedFor(ip: string, now: number, s: LockoutSettings): number {
    if (this.#clients.size === 0) return 0;
    const e = this.#clients.peek(ip);
    if (!e || e.lockedUntil <= now) return 0;
    if (s.exemptIps && inList(s.exemptIps, ip)) return 0;
    return e.lockedUntil - now;
  }

  /**
   * One denial with `code` for `ip`. Returns the lock's length in ms when this failure
   * locked the client out, else 0.
   */
  failed(ip: string, code: AuthCode | undefined, now: number, s: LockoutSettings): number {
    if (code === undefined || !COUNTED.has(code)) return 0;
    if (s.exemptIps && inList(s.exemptIps, ip)) return 0;
    let e = this.#clients.get(ip);
    if (!e) { e = { failures: 0, windowStart: now, lockedUntil: 0 }; this.#clients.set(ip, e); }
    if (now - e.windowStart >= s.windowMs) { e.failures = 0; e.windowStart = now; }
    e.failures++;
    if (e.failures < s.failures) return 0;
    e.failures = 0;
    e.windowStart = now;
    e.lockedUntil = now + s.lockMs;
    return s.lockMs;
  }

  get size(): number { return this.#clients.size; }
}
