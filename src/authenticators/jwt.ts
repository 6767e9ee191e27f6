// type: jwt — bearer tokens verified with jose against a shared secret, a local
// JWKS file or a remote JWKS. Verified tokens are cached until exp; a cache hit is the
// whole token, byte for byte, found by its signature's tail.
import { createSecretKey } from 'node:crypto';
import { z } from 'zod';
import { LRUCache } from 'lru-cache';
import { jwtVerify, createLocalJWKSet, type JWTPayload, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose';
import { ConfigError, type AuthCode } from '../errors.ts';
import { allow, defineAuthenticator, deny, skip, type AuthRequest, type Verdict } from './types.ts';
import { RemoteJwks, JwksUnavailable } from './jwks.ts';

const HMAC_ALGS = ['HS256', 'HS384', 'HS512'] as const;
const ASYMMETRIC_ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const;

const stringOrList = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

export const tokenSource = z.union([
  z.strictObject({ header: z.string().min(1), scheme: z.string().min(1).optional() }),
  z.strictObject({ cookie: z.string().min(1) }),
]);

const schema = z.strictObject({
  type: z.literal('jwt'),
  /** Where the token is: a header (optionally with a scheme such as Bearer) or a cookie. */
  from: tokenSource.default({ header: 'Authorization', scheme: 'Bearer' }),
  issuer: stringOrList.optional(),
  audience: stringOrList.optional(),
  /** Accept tokens minted for any audience. Off by default: set `audience`, or say so. */
  anyAudience: z.boolean().default(false),
  /** Required; "none" is not a member of either list, so it can never be configured. */
  algorithms: z.array(z.enum([...HMAC_ALGS, ...ASYMMETRIC_ALGS])).min(1),
  secret: z.string().min(1).optional(),
  secretEncoding: z.enum(['utf8', 'base64', 'base64url']).default('utf8'),
  jwks: z.union([
    z.strictObject({ file: z.string().min(1) }),
    /** The key Portcullis signs its own tokens with (top-level `tokens`, SPEC §7). */
    z.strictObject({ tokens: z.literal(true) }),
    z.strictObject({
      url: z.string().url(),
      timeoutMs: z.number().int().min(100).default(5_000), // 5 s per fetch
      cooldownMs: z.number().int().min(0).default(30_000), // 30 s between refetches for unknown kids
      maxAgeMs: z.number().int().min(1_000).default(600_000), // 10 min, then refreshed in the background
      ca: z.string().min(1).optional(),
    }),
  ]).optional(),
  /** Require this JOSE header `typ`, e.g. `at+jwt` for RFC 9068 access tokens (no ID token passes for one). */
  typ: z.string().min(1).optional(),
  clockToleranceSec: z.number().int().min(0).max(600).default(30),
  requireExp: z.boolean().default(true),
  subjectClaim: z.string().min(1).default('sub'),
  scopesClaim: z.string().min(1).default('scope'),
  /** RFC 8705: the token's cnf["x5t#S256"] must be this connection's client certificate. */
  certificateBound: z.boolean().default(false),
  maxTokenBytes: z.number().int().min(256).max(65_536).default(8_192),
  cache: z.strictObject({ maxEntries: z.number().int().min(0).default(10_000) }).prefault({}),
  /** Keep the credential in the forwarded request (default: removed). */
  forward: z.boolean().default(false),
});

type Cfg = z.output<typeof schema>;

interface Verified { payload: JWTPayload; expMs: number; subject?: string; scopes: readonly string[] }
/** A cache entry: the verified token itself, and its verdict when it depends on nothing but the token. */
interface Cached { readonly token: string; readonly v: Verified; verdict?: Verdict }

/**
 * Cache key: the last 43 characters (>= 256 bits of every JWS signature). Hashing a
 * whole 600-byte token cost ~1 µs per request; a hit is confirmed against the whole
 * token, so two tokens sharing a tail only miss (and are verified in full).
 */
const KEY_CHARS = 43;
const keyOf = (token: string): string => (token.length > KEY_CHARS ? token.slice(-KEY_CHARS) : token);

const NUMERIC_DATES = ['exp', 'nbf', 'iat'] as const;

const JOSE_CODES: Record<string, AuthCode> = {
  ERR_JWT_EXPIRED: 'AUTH_002',
  ERR_JWT_CLAIM_VALIDATION_FAILED: 'AUTH_001',
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'AUTH_001',
  ERR_JOSE_ALG_NOT_ALLOWED: 'AUTH_001',
  ERR_JOSE_NOT_SUPPORTED: 'AUTH_001',
  ERR_JWKS_NO_MATCHING_KEY: 'AUTH_001',
  ERR_JWKS_MULTIPLE_MATCHING_KEYS: 'AUTH_001',
  ERR_JWS_INVALID: 'AUTH_003',
  ERR_JWT_INVALID: 'AUTH_003',
  ERR_JWK_INVALID: 'AUTH_001',
};

const COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/**
 * Canonical base64url (RFC 4648 §3.5): a length that encodes whole bytes and no unused bits
 * set in the last character. Otherwise one signature has many spellings, each a token of its
 * own to the cache and to any list of tokens (catalogue JWT-10).
 */
function canonicalSegments(token: string): boolean {
  let start = 0;
  for (;;) {
    const end = token.indexOf('.', start);
    const stop = end < 0 ? token.length : end;
    const r = (stop - start) % 4;
    if (r === 1) return false;
    if (r !== 0 && (B64URL.indexOf(token[stop - 1]!) & (r === 2 ? 15 : 3)) !== 0) return false;
    if (end < 0) return true;
    start = end + 1;
  }
}

export function scopesOf(v: unknown): string[] {
  if (typeof v === 'string') return v.split(/\s+/).filter(Boolean);
  if (Array.isArray(v)) return v.filter((s): s is string => typeof s === 'string');
  return [];
}

/** Read one cookie's value from Cookie headers. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

function extract(req: AuthRequest, from: Cfg['from']): { token: string } | Verdict {
  if ('cookie' in from) {
    const v = cookieValue(req.headers.cookie, from.cookie);
    return v ? { token: v } : skip('AUTH_003', `no ${from.cookie} cookie`);
  }
  const raw = req.headers[from.header.toLowerCase()];
  if (raw === undefined) return skip('AUTH_003', `no ${from.header} header`);
  if (Array.isArray(raw)) return deny('AUTH_003', `${from.header} sent more than once`);
  if (!from.scheme) return raw ? { token: raw.trim() } : deny('AUTH_003', `empty ${from.header}`);
  const m = /^(\S+)\s+(\S+)\s*$/.exec(raw);
  if (!m || m[1]!.toLowerCase() !== from.scheme.toLowerCase()) return skip('AUTH_003', `${from.header} is not a ${from.scheme} credential`);
  return { token: m[2]! };
}

export const jwt = defineAuthenticator({
  type: 'jwt',
  schema,
  create(cfg, ctx) {
    const base = ['authenticators', ctx.name];
    if (cfg.audience === undefined && !cfg.anyAudience) {
      throw new ConfigError([{ path: [...base, 'audience'], message: 'required: the audience this API accepts (or anyAudience: true to accept tokens minted for any audience)' }]);
    }
    if (cfg.audience !== undefined && cfg.anyAudience) throw new ConfigError([{ path: [...base, 'anyAudience'], message: 'anyAudience: true and audience exclude each other' }]);
    const hmac = cfg.algorithms.filter((a) => (HMAC_ALGS as readonly string[]).includes(a));
    // Key confusion (RS256 -> HS256 with the public key as secret) is impossible by construction:
    // an authenticator has either a secret and HMAC algorithms, or keys and asymmetric ones.
    if (hmac.length && hmac.length !== cfg.algorithms.length) throw new ConfigError([{ path: [...base, 'algorithms'], message: 'do not mix HMAC (HS*) and asymmetric algorithms in one authenticator (key confusion); use two' }]);
    let getKey: JWTVerifyGetKey | Uint8Array | ReturnType<typeof createSecretKey>;
    let remote: RemoteJwks | undefined;
    if (hmac.length) {
      if (!cfg.secret || cfg.jwks) throw new ConfigError([{ path: [...base, 'secret'], message: 'HS* algorithms need `secret` (and no `jwks`)' }]);
      const key = Buffer.from(cfg.secret, cfg.secretEncoding);
      if (key.length < 32) throw new ConfigError([{ path: [...base, 'secret'], message: `secret is ${key.length} bytes; HMAC keys must be at least 32 bytes (RFC 7518 §3.2)` }]);
      getKey = createSecretKey(key);
    } else {
      if (!cfg.jwks || cfg.secret) throw new ConfigError([{ path: [...base, 'jwks'], message: 'asymmetric algorithms need `jwks` ({ file } or { url }) and no `secret`' }]);
      if ('tokens' in cfg.jwks) {
        if (!ctx.tokensConfigured) throw new ConfigError([{ path: [...base, 'jwks', 'tokens'], message: 'needs the top-level tokens section (the key Portcullis signs its tokens with)' }]);
        // Its key failed to load: that is reported under tokens.signingKey.
        getKey = createLocalJWKSet(ctx.tokensJwks ?? { keys: [] });
      } else if ('file' in cfg.jwks) {
        const text = ctx.readFile(cfg.jwks.file, [...base, 'jwks', 'file']);
        let set: JSONWebKeySet;
        try { set = JSON.parse(text); if (!Array.isArray(set.keys)) throw new Error('no "keys" array'); } catch (e) {
          throw new ConfigError([{ path: [...base, 'jwks', 'file'], message: `${cfg.jwks.file}: not a JWKS (${(e as Error).message})` }]);
        }
        getKey = createLocalJWKSet(set);
      } else {
        const j = cfg.jwks;
        const ca = j.ca ? ctx.readFile(j.ca, [...base, 'jwks', 'ca']) : undefined;
        const url = new URL(j.url);
        if (url.protocol !== 'https:' && !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) {
          throw new ConfigError([{ path: [...base, 'jwks', 'url'], message: 'a remote JWKS must be fetched over https (plain http only for loopback)' }]);
        }
        const key = `jwks|${url.href}|${j.timeoutMs}|${j.cooldownMs}|${j.maxAgeMs}|${ca ?? ''}`;
        const rt = ctx.runtime;
        remote = rt.shared(key, () => new RemoteJwks(url, { timeoutMs: j.timeoutMs, cooldownMs: j.cooldownMs, maxAgeMs: j.maxAgeMs, ca, maxBytes: 1_048_576 }, () => rt.events));
        const r = remote;
        getKey = (h, t) => r.getKey(h, t);
      }
    }

    const cache = cfg.cache.maxEntries > 0 ? new LRUCache<string, Cached>({ max: cfg.cache.maxEntries }) : undefined;
    const tolMs = cfg.clockToleranceSec * 1000;
    const credentialHeaders = cfg.forward ? [] : 'cookie' in cfg.from ? [] : [cfg.from.header.toLowerCase()];
    const header = 'cookie' in cfg.from ? undefined : cfg.from.header.toLowerCase();
    const prefix = 'cookie' in cfg.from || !cfg.from.scheme ? '' : `${cfg.from.scheme} `;
    const prefixLower = prefix.toLowerCase();

    async function verifyToken(token: string, now: number): Promise<Verified | Verdict> {
      try {
        const { payload } = await jwtVerify(token, getKey as JWTVerifyGetKey, {
          algorithms: cfg.algorithms,
          issuer: cfg.issuer,
          audience: cfg.audience,
          clockTolerance: cfg.clockToleranceSec,
          typ: cfg.typ,
          requiredClaims: cfg.requireExp ? ['exp'] : [],
          currentDate: new Date(now),
        });
        // jose takes JSON's 1e309 (Infinity) as a date: a token that never expires, or an nbf
        // any clock passes. A token issued after now (beyond the tolerance) is not valid yet
        // either (catalogue JWT-06).
        for (const c of NUMERIC_DATES) {
          const v = payload[c];
          if (v !== undefined && !Number.isFinite(v)) return deny('AUTH_001', `token rejected: "${c}" is not a finite NumericDate`);
        }
        if (payload.iat !== undefined && payload.iat * 1000 > now + tolMs) return deny('AUTH_001', 'token rejected: "iat" is in the future');
        const sub = payload[cfg.subjectClaim];
        return {
          payload,
          expMs: typeof payload.exp === 'number' ? payload.exp * 1000 : Number.POSITIVE_INFINITY,
          subject: typeof sub === 'string' ? sub : typeof sub === 'number' ? String(sub) : undefined,
          scopes: Object.freeze(scopesOf(payload[cfg.scopesClaim])),
        };
      } catch (e) {
        if (e instanceof JwksUnavailable) throw e;
        const code = (e as { code?: string }).code;
        const mapped = code ? JOSE_CODES[code] : undefined;
        if (mapped) return deny(mapped, `token rejected: ${(e as Error).message}`);
        if (code === 'ERR_JWKS_TIMEOUT') throw e;
        if (e instanceof TypeError) return deny('AUTH_001', `token rejected: ${e.message}`);
        throw e;
      }
    }

    return {
      name: ctx.name,
      type: 'jwt',
      credentialHeaders,
      challenge: 'Bearer error="invalid_token"',
      start() { if (remote && !remote.loaded) void remote.refresh(); },
      // Synchronous for a token verified before (the cache); a first sighting waits for the signature check.
      verify(req): Verdict | Promise<Verdict> {
        if (cache && header) {
          // Fast path: the header holds exactly a token verified before; no parsing, no copy.
          const raw = req.headers[header];
          if (typeof raw === 'string' && raw.length > prefix.length && (raw.startsWith(prefix) || raw.slice(0, prefix.length).toLowerCase() === prefixLower)) {
            const hit = cache.get(keyOf(raw));
            // `slice() ===` compares the characters with memcmp; `endsWith` walks them one at a
            // time (0.3–1.3 µs for a 600-character token, against 45 ns: bench/RESULTS.md).
            if (hit && raw.length === prefix.length + hit.token.length && raw.slice(prefix.length) === hit.token && hit.v.expMs + tolMs > req.now) return accept(hit, req);
          }
        }
        const found = extract(req, cfg.from);
        if ('kind' in found) return found;
        const token = found.token;
        if (token.length > cfg.maxTokenBytes) return deny('AUTH_003', `token is ${token.length} bytes, over maxTokenBytes`);
        if (!COMPACT.test(token)) return deny('AUTH_003', 'not a compact JWS (three base64url parts)');
        if (!canonicalSegments(token)) return deny('AUTH_003', 'not canonical base64url');
        const key = keyOf(token);
        const c = cache?.get(key);
        if (c && c.token === token) {
          if (c.v.expMs + tolMs > req.now) return accept(c, req);
          cache!.delete(key);
        }
        return verifyToken(token, req.now).then((r) => {
          if ('kind' in r) return r;
          const entry: Cached = { token, v: r };
          cache?.set(key, entry);
          return accept(entry, req);
        });
      },
    };

    /** A verified token (fresh or cached) is accepted: checks that depend on this request. */
    function accept(c: Cached, req: AuthRequest): Verdict {
      const v = c.v;
      if (cfg.certificateBound) {
        const cnf = v.payload.cnf as Record<string, unknown> | undefined;
        const want = cnf?.['x5t#S256'];
        const cc = req.conn.clientCert;
        if (typeof want !== 'string') return deny('AUTH_001', 'token is not certificate-bound (no cnf["x5t#S256"])');
        if (!cc.present) return deny('AUTH_010', 'certificate-bound token without a client certificate');
        if (!cc.verified || !cc.cert) return deny('AUTH_010', `certificate-bound token with a refused client certificate (${cc.problem})`);
        if (cc.cert.x5tS256 !== want) return deny('AUTH_001', 'token is bound to a different client certificate');
      }
      // Verdicts are immutable: one per cached token serves every request that presents it.
      return (c.verdict ??= allow({ subject: v.subject, scopes: v.scopes, claims: v.payload }, 'token verified'));
    }
  },
});
