// Rate limits (SPEC §5 AUTH_007 "rate limited"): a policy's `rateLimit` lets each caller
// make `requests` requests per `perSec` seconds, as a token bucket (a burst of up to
// `requests`, refilled at requests ÷ perSec per second). The caller is the client IP
// (`by: ip`, checked before the body is read or any authenticator runs) or the identity
// the request authenticated as (`by: identity`: the API key or HMAC client id, else the
// subject, else the client IP), checked once the request is allowed. A request over the
// limit gets 429 AUTH_007 with Retry-After and is not forwarded.
//
// With `store: memory` buckets live in this process (at most 100 000 callers, the least
// recently seen forgotten first). With `store: redis` every replica and worker draws from
// the same bucket: one script per request, timed by Redis' own clock. If Redis does not
// answer within `store.timeoutMs`, this process's own bucket decides, so a Redis outage
// weakens the limit to one per process rather than refusing or waving traffic through.
import { LRUCache } from 'lru-cache';
import type { RedisConnection } from '../store/redis.ts';

export interface RateLimitSettings {
  readonly requests: number;
  readonly perMs: number;
  readonly by: 'ip' | 'identity';
}

/** Callers remembered at once per process. */
export const MAX_CALLERS = 100_000;

interface Bucket { tokens: number; at: number }

/** KEYS: the bucket. ARGV: capacity, tokens per ms. Returns ms to wait, 0 when a token was taken. */
const TAKE_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = math.min(tonumber(b[2]) or now, now)
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate) + 1000)
return wait`;

export class RateLimiter {
  readonly #buckets = new LRUCache<string, Bucket>({ max: MAX_CALLERS });
  #shared?: RedisConnection;
  #onFallback: () => void = () => {};

  /** Share buckets through this Redis connection (undefined: this process only). */
  share(conn: RedisConnection | undefined, onFallback: () => void): void {
    this.#shared = conn;
    this.#onFallback = onFallback;
  }

  /**
   * Take one token from `caller`'s bucket under `policy`. Resolves to 0 when the request
   * may go on, else to the milliseconds until the next token.
   */
  take(policy: string, caller: string, now: number, s: RateLimitSettings): number | Promise<number> {
    const conn = this.#shared;
    if (!conn) return this.#takeLocal(policy, caller, now, s);
    const key = `${conn.settings.keyPrefix}ratelimit:${policy}:${caller}`;
    return conn.run((c) => c.eval(TAKE_SCRIPT, 1, key, s.requests, s.requests / s.perMs))
      .then((r) => Number(r), () => { this.#onFallback(); return this.#takeLocal(policy, caller, now, s); });
  }

  #takeLocal(policy: string, caller: string, now: number, s: RateLimitSettings): number {
    const key = `${policy}\u0000${caller}`;
    const rate = s.requests / s.perMs;
    let b = this.#buckets.get(key);
    if (!b) { b = { tokens: s.requests, at: now }; this.#buckets.set(key, b); }
    // A clock that steps back refills nothing, and the bucket keeps its later time.
    if (now > b.at) { b.tokens = Math.min(s.requests, b.tokens + (now - b.at) * rate); b.at = now; }
    if (b.tokens >= 1) { b.tokens -= 1; return 0; }
    return Math.ceil((1 - b.tokens) / rate);
  }
}
