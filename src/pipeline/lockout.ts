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
//
// With `store: redis` the count is shared by every replica and worker: each counted
// failure is one script run in Redis (INCR in a window; at `failures`, a lock key for
// `lockSec` and a PUBLISH). Every process subscribes and copies the lock into its own
// table, so the check on each request stays a local lookup; a process that missed the
// message (it started later, or was disconnected) learns of the lock from Redis on the
// client's next failure there. If Redis does not answer, the failure is counted locally.
import type { BlockList } from 'node:net';
import type { RedisConnection } from '../store/redis.ts';
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

/**
 * KEYS: failure counter, lock. ARGV: windowMs, failures, lockMs, channel, ip.
 * Returns the lock's remaining ms as a negative number when the client was already locked
 * (by another process), lockMs when this failure locked it, else 0.
 */
const FAIL_SCRIPT = `
local left = redis.call('PTTL', KEYS[2])
if left > 0 then return -left end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n < tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3] .. ' ' .. ARGV[5])
return tonumber(ARGV[3])`;

const CHANNEL = 'lockout';

export class Lockout {
  readonly #clients = new LRUCache<string, Entry>({ max: MAX_CLIENTS });
  #shared?: RedisConnection;
  /** The clock of the requests (a test's may differ from Redis's): locks learned are placed on it. */
  #now: () => number = Date.now;

  /** Share counts and locks through this Redis connection (undefined: this process only). */
  share(conn: RedisConnection | undefined, now: () => number): void {
    this.#now = now;
    if (conn === this.#shared) return;
    this.#shared = conn;
    conn?.subscribe(CHANNEL, (message) => {
      // "<lockMs> <ip>", published by whichever process locked the client.
      const sp = message.indexOf(' ');
      const ms = Number(message.slice(0, sp));
      if (sp > 0 && Number.isSafeInteger(ms) && ms > 0 && this.#shared === conn) this.#lock(message.slice(sp + 1), this.#now() + ms);
    });
  }

  #lock(ip: string, until: number): void {
    const e = this.#clients.get(ip);
    if (e) { e.lockedUntil = Math.max(e.lockedUntil, until); e.failures = 0; }
    else this.#clients.set(ip, { failures: 0, windowStart: 0, lockedUntil: until });
  }

  /**
   * One denial with `code` for `ip`: counted here, or in Redis when shared. Resolves to the
   * lock's length in ms when this failure locked the client out, else 0.
   */
  record(ip: string, code: AuthCode | undefined, now: number, s: LockoutSettings): number | Promise<number> {
    const conn = this.#shared;
    if (!conn || code === undefined || !COUNTED.has(code) || (s.exemptIps && inList(s.exemptIps, ip))) return this.failed(ip, code, now, s);
    const p = conn.settings.keyPrefix;
    return conn.run((c) => c.eval(FAIL_SCRIPT, 2, `${p}lockout:failures:${ip}`, `${p}lockout:lock:${ip}`, s.windowMs, s.failures, s.lockMs, conn.channel(CHANNEL), ip))
      .then((r) => {
        const v = Number(r);
        if (v < 0) { this.#lock(ip, now - v); return 0; }
        if (v > 0) this.#lock(ip, now + v);
        return v;
      }, () => this.failed(ip, code, now, s));
  }

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
