// type: hmac — signed requests. scheme "simple": an HMAC over configured parts
// (method, path, timestamp, nonce, body, ...) in configured headers, as many
// APIs define it. scheme "rfc9421": HTTP Message Signatures with Content-Digest.
// Both check a time window and remember nonces so a request is accepted once.
import { createHmac, createPublicKey, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.ts';
import { MemoryNonceStore, type NonceStore, type NonceVerdict } from '../store/nonces.ts';
import { RedisNonceStore } from '../store/redis.ts';
import { foldHeader, singleHeader } from '../util/net.ts';
import { allow, defineAuthenticator, deny, skip, type AuthRequest, type Verdict } from './types.ts';
import { RFC9421_ALGORITHMS, Refusal, checkContentDigest, parseSignature, signatureBase, verifySignature, type Key } from './rfc9421.ts';

const client = z.strictObject({
  id: z.string().min(1),
  secret: z.string().min(1).optional(),
  secretEncoding: z.enum(['utf8', 'base64', 'base64url', 'hex']).default('utf8'),
  /** rfc9421 with a public-key algorithm: a PEM or JWK file. */
  publicKey: z.string().min(1).optional(),
  algorithm: z.enum(RFC9421_ALGORITHMS).optional(),
  subject: z.string().min(1),
  scopes: z.array(z.string().min(1)).default([]),
  revoked: z.boolean().default(false),
});

const PART = z.string().regex(/^(method|path|query|pathAndQuery|timestamp|nonce|body|keyId|header:[A-Za-z0-9-]+)$/, 'must be method, path, query, pathAndQuery, timestamp, nonce, body, keyId or header:<Name>');

const schema = z.strictObject({
  type: z.literal('hmac'),
  scheme: z.enum(['simple', 'rfc9421']).default('simple'),
  clients: z.array(client).min(1),
  maxSkewSec: z.number().int().min(1).max(3600).default(300),
  /** Nonces remembered at once (per authenticator); when full of live nonces, requests are refused (429). */
  nonceCapacity: z.number().int().min(100).default(100_000),
  forward: z.boolean().default(false),
  // scheme: simple
  headers: z.strictObject({
    keyId: z.string().min(1).default('X-API-Key'),
    timestamp: z.string().min(1).default('X-Timestamp'),
    nonce: z.string().min(1).default('X-Nonce'),
    signature: z.string().min(1).default('X-Signature'),
  }).prefault({}),
  message: z.array(PART).min(1).default(['method', 'path', 'timestamp', 'nonce', 'body']),
  separator: z.string().default(''),
  encoding: z.enum(['hex', 'base64', 'base64url']).default('hex'),
  algorithm: z.enum(['sha256', 'sha512']).default('sha256'),
  timestampFormat: z.enum(['seconds', 'milliseconds', 'rfc3339']).default('seconds'),
  /** Default: true for simple, false for rfc9421 (whose nonce is an optional parameter). */
  requireNonce: z.boolean().optional(),
  /**
   * A regular expression the whole nonce must match, e.g. "[0-9a-f]{32}" for seed 004's
   * `os.urandom(16).hex()`. With `separator: ""` it fixes where the nonce ends and the next
   * part begins, which the signature alone does not (catalogue HMAC-04).
   */
  noncePattern: z.string().min(1).optional(),
  // scheme: rfc9421
  requiredComponents: z.array(z.string().min(1)).default(['@method', '@authority', '@path']),
  label: z.string().min(1).optional(),
  tag: z.string().min(1).optional(),
  requireCreated: z.boolean().default(true),
  /** A request with a body must cover content-digest (so the body is signed too). */
  requireDigestForBody: z.boolean().default(true),
});

type Cfg = z.output<typeof schema>;

// Secrets are KeyObjects made at load: Node's createHmac with a Buffer key costs ~4x more per call.
interface Client { id: string; subject: string; scopes: readonly string[]; revoked: boolean; secret?: KeyObject; key?: Key }

function loadClients(cfg: Cfg, readFile: (p: string, path: readonly (string | number)[]) => string, base: (string | number)[]): Map<string, Client> {
  const issues: ConfigIssue[] = [];
  const out = new Map<string, Client>();
  cfg.clients.forEach((c, i) => {
    const path = [...base, 'clients', i];
    if (out.has(c.id)) issues.push({ path: [...path, 'id'], message: `duplicate client id "${c.id}"` });
    const entry: Client = { id: c.id, subject: c.subject, scopes: Object.freeze([...c.scopes]), revoked: c.revoked };
    const alg = c.algorithm ?? (cfg.scheme === 'rfc9421' && c.secret ? 'hmac-sha256' : undefined);
    if (c.secret !== undefined) {
      const secret = Buffer.from(c.secret, c.secretEncoding);
      // RFC 2104 §3: a key shorter than the hash output (32 bytes for SHA-256) weakens the MAC;
      // the same floor as JWT HS256 secrets (RFC 7518 §3.2; catalogue HMAC-09).
      if (secret.length < 32) issues.push({ path: [...path, 'secret'], message: `secret is ${secret.length} bytes; HMAC keys must be at least 32 bytes (RFC 2104 §3)` });
      if (cfg.scheme === 'rfc9421' && alg !== 'hmac-sha256') issues.push({ path: [...path, 'algorithm'], message: 'a shared secret goes with algorithm hmac-sha256' });
      entry.secret = createSecretKey(secret);
      if (alg === 'hmac-sha256') entry.key = { alg, secret: entry.secret };
    } else if (c.publicKey !== undefined) {
      if (cfg.scheme !== 'rfc9421') issues.push({ path: [...path, 'publicKey'], message: 'public keys are for scheme rfc9421' });
      if (!alg || alg === 'hmac-sha256') { issues.push({ path: [...path, 'algorithm'], message: `a public key needs algorithm: one of ${RFC9421_ALGORITHMS.slice(1).join(', ')}` }); return; }
      const text = readFile(c.publicKey, [...path, 'publicKey']);
      let key: KeyObject;
      try {
        key = text.trim().startsWith('{') ? createPublicKey({ key: JSON.parse(text), format: 'jwk' }) : createPublicKey(text.slice(text.indexOf('-----BEGIN')));
      } catch (e) {
        issues.push({ path: [...path, 'publicKey'], message: `${c.publicKey}: not a public key (${(e as Error).message})` });
        return;
      }
      const want = { ed25519: 'ed25519', 'ecdsa-p256-sha256': 'ec', 'rsa-pss-sha512': 'rsa-pss', 'rsa-v1_5-sha256': 'rsa' }[alg];
      const type = key.asymmetricKeyType === 'rsa' && alg === 'rsa-pss-sha512' ? 'rsa-pss' : key.asymmetricKeyType;
      if (type !== want) issues.push({ path: [...path, 'algorithm'], message: `${c.publicKey} is a ${key.asymmetricKeyType} key, not for ${alg}` });
      entry.key = { alg, publicKey: key };
    } else {
      issues.push({ path, message: 'a client needs `secret` or `publicKey`' });
    }
    out.set(c.id, entry);
  });
  if (issues.length) throw new ConfigError(issues);
  return out;
}

const one = (req: AuthRequest, want: string) => singleHeader(req.headers, want);

const decoders = {
  hex: (s: string) => (/^(?:[0-9a-fA-F]{2})+$/.test(s) ? Buffer.from(s, 'hex') : undefined),
  base64: (s: string) => (/^[A-Za-z0-9+/]+={0,2}$/.test(s) ? Buffer.from(s, 'base64') : undefined),
  base64url: (s: string) => (/^[A-Za-z0-9_-]+$/.test(s) ? Buffer.from(s, 'base64url') : undefined),
};

export const hmac = defineAuthenticator({
  type: 'hmac',
  schema,
  create(cfg, ctx) {
    const base = ['authenticators', ctx.name];
    const clients = loadClients(cfg, ctx.readFile, base);
    let noncePattern: RegExp | undefined;
    try {
      noncePattern = cfg.noncePattern === undefined ? undefined : new RegExp(`^(?:${cfg.noncePattern})$`, 'u');
    } catch (e) {
      throw new ConfigError([{ path: [...base, 'noncePattern'], message: `not a regular expression: ${(e as Error).message}` }]);
    }
    // The pattern is the operator's; the nonce is bounded before it is tested.
    const nonceMismatch = (nonce: string | undefined): Verdict | undefined =>
      nonce === undefined || !noncePattern ? undefined
        : nonce.length > 128 ? deny('AUTH_003', 'nonce longer than 128 characters')
        : noncePattern.test(nonce) ? undefined : deny('AUTH_003', `nonce does not match noncePattern ${cfg.noncePattern}`);
    const skewMs = cfg.maxSkewSec * 1000;
    const rt = ctx.runtime;
    // The same settings after a reload keep the same nonce memory. With store: redis the
    // nonces are shared by every replica and worker (`check` and `explain` stay offline).
    const store = ctx.store;
    const nonces: NonceStore = store.type === 'redis' && !rt.offline
      ? new RedisNonceStore(rt.redis(store), ctx.name)
      : rt.shared(`nonces|${ctx.name}|${cfg.scheme}|${cfg.nonceCapacity}`, () => new MemoryNonceStore(cfg.nonceCapacity));

    const judged = (c: Client, r: NonceVerdict): Verdict | undefined => {
      if (r === 'replay') { rt.events.replayRejected(); return deny('AUTH_009', `nonce already used by ${c.id}`); }
      if (r === 'full') { rt.events.log('warn', { msg: 'nonce store full: refusing signed requests until nonces expire', authenticator: ctx.name, capacity: cfg.nonceCapacity }); return deny('AUTH_007', 'nonce store full'); }
      return undefined;
    };
    /** The verdict once the nonce is recorded: `ok`, or the replay/full refusal. A shared store answers later. */
    const remember = (c: Client, nonce: string, until: number, now: number, ok: Verdict): Verdict | Promise<Verdict> => {
      const r = nonces.remember(`${c.id}\u0000${nonce}`, until, now);
      return typeof r === 'string' ? judged(c, r) ?? ok : r.then((x) => judged(c, x) ?? ok);
    };
    const lookup = (id: string): Client | Verdict => {
      const c = clients.get(id);
      if (!c) return deny('AUTH_004', 'unknown signing key id');
      if (c.revoked) return deny('AUTH_004', `signing key ${c.id} is revoked`);
      return c;
    };

    if (cfg.scheme === 'simple') {
      const h = { keyId: cfg.headers.keyId, timestamp: cfg.headers.timestamp, nonce: cfg.headers.nonce, signature: cfg.headers.signature };
      const f = { keyId: foldHeader(h.keyId), timestamp: foldHeader(h.timestamp), nonce: foldHeader(h.nonce), signature: foldHeader(h.signature) };
      const allowed = new Map([...clients.values()].map((c) => [c, allow({ subject: c.subject, keyId: c.id, scopes: c.scopes }, `signed by ${c.id}`)]));
      const decode = decoders[cfg.encoding];
      const needsBody = cfg.message.includes('body');
      const credentialHeaders = cfg.forward ? [] : [h.signature, h.keyId].map(foldHeader);
      const parseTs = (s: string): number | undefined => {
        if (cfg.timestampFormat === 'rfc3339') { const t = Date.parse(s); return /^\d{4}-\d\d-\d\dT/.test(s) && !Number.isNaN(t) ? t : undefined; }
        if (!/^\d{1,16}$/.test(s)) return undefined;
        return cfg.timestampFormat === 'seconds' ? Number(s) * 1000 : Number(s);
      };
      return {
        name: ctx.name,
        type: 'hmac',
        credentialHeaders,
        needsBody,
        challenge: `HMAC realm="${ctx.name}"`,
        verify(req): Verdict | Promise<Verdict> {
          const keyId = one(req, f.keyId);
          const sig = one(req, f.signature);
          if (keyId === undefined && sig === undefined) return skip('AUTH_003', `no ${h.keyId} / ${h.signature} headers`);
          const ts = one(req, f.timestamp);
          const nonce = one(req, f.nonce);
          if (keyId === 'twice' || sig === 'twice' || ts === 'twice' || nonce === 'twice') {
            const n = keyId === 'twice' ? h.keyId : sig === 'twice' ? h.signature : ts === 'twice' ? h.timestamp : h.nonce;
            return deny('AUTH_003', `${n} sent more than once`);
          }
          if (!keyId || !sig || !ts) return deny('AUTH_003', `missing ${[!keyId && h.keyId, !sig && h.signature, !ts && h.timestamp].filter(Boolean).join(', ')}`);
          if ((cfg.requireNonce ?? true) && !nonce) return deny('AUTH_003', `missing ${h.nonce}`);
          if (nonce && (nonce.length > 128 || !/^[\x21-\x7e]+$/.test(nonce))) return deny('AUTH_003', 'malformed nonce');
          const badNonce = nonceMismatch(nonce);
          if (badNonce) return badNonce;
          const c = lookup(keyId);
          if ('kind' in c) return c;
          const t = parseTs(ts);
          if (t === undefined) return deny('AUTH_003', `malformed ${h.timestamp}`);
          if (Math.abs(req.now - t) > skewMs) { rt.events.replayRejected(); return deny('AUTH_009', `timestamp ${Math.round((req.now - t) / 1000)} s from now, window ±${cfg.maxSkewSec} s`); }
          const provided = decode(sig);
          if (!provided) return deny('AUTH_003', `signature is not ${cfg.encoding}`);
          const mac = createHmac(cfg.algorithm, c.secret!);
          cfg.message.forEach((part, i) => {
            if (i > 0 && cfg.separator) mac.update(cfg.separator);
            if (part === 'body') { if (req.body) mac.update(req.body); return; }
            const value = part === 'method' ? req.method.toUpperCase()
              : part === 'path' ? req.path
              : part === 'query' ? req.query
              : part === 'pathAndQuery' ? (req.query ? `${req.path}?${req.query}` : req.path)
              : part === 'timestamp' ? ts
              : part === 'nonce' ? (nonce ?? '')
              : part === 'keyId' ? keyId
              : (() => { const v = one(req, foldHeader(part.slice(7))); return typeof v === 'string' ? v : ''; })();
            mac.update(value, 'utf8');
          });
          const expected = mac.digest();
          if (expected.length !== provided.length || !timingSafeEqual(expected, provided)) return deny('AUTH_001', 'signature does not match');
          return nonce ? remember(c, nonce, t + skewMs, req.now, allowed.get(c)!) : allowed.get(c)!;
        },
      };
    }

    // scheme: rfc9421
    const required = cfg.requiredComponents;
    return {
      name: ctx.name,
      type: 'hmac',
      credentialHeaders: cfg.forward ? [] : ['signature', 'signature-input'],
      needsBody: true,
      challenge: `Signature realm="${ctx.name}"`,
      verify(req): Verdict | Promise<Verdict> {
        if (req.headers['signature-input'] === undefined && req.headers['signature'] === undefined) return skip('AUTH_003', 'no Signature-Input / Signature headers');
        try {
          const s = parseSignature(req, cfg.label);
          if (!s.keyid) return deny('AUTH_003', 'signature has no keyid');
          const c = lookup(s.keyid);
          if ('kind' in c) return c;
          if (!c.key) return deny('AUTH_001', `client ${c.id} has no RFC 9421 key`);
          if (s.alg !== undefined && s.alg !== c.key.alg) return deny('AUTH_001', `alg ${s.alg} is not the algorithm registered for ${c.id}`);
          if (cfg.tag !== undefined && s.tag !== cfg.tag) return deny('AUTH_003', `signature tag must be ${cfg.tag}`);
          const covered = s.input.items.map((i) => (typeof i.value === 'string' ? i.value : ''));
          const missing = required.filter((r) => !covered.includes(r));
          if (missing.length) return deny('AUTH_003', `signature does not cover ${missing.join(', ')}`);
          const hasBody = !!req.body && req.body.length > 0;
          if (cfg.requireDigestForBody && hasBody && !covered.includes('content-digest')) return deny('AUTH_003', 'a request with a body must cover content-digest');
          if (s.created === undefined && cfg.requireCreated) return deny('AUTH_003', 'signature has no created parameter');
          if (s.created !== undefined && Math.abs(req.now - s.created * 1000) > skewMs) { rt.events.replayRejected(); return deny('AUTH_009', `created ${Math.round(req.now / 1000 - s.created)} s from now, window ±${cfg.maxSkewSec} s`); }
          if (s.expires !== undefined && req.now > s.expires * 1000) { rt.events.replayRejected(); return deny('AUTH_009', 'signature expired'); }
          if ((cfg.requireNonce ?? false) && s.nonce === undefined) return deny('AUTH_003', 'signature has no nonce parameter');
          const badNonce = nonceMismatch(s.nonce);
          if (badNonce) return badNonce;
          const baseText = signatureBase(s.input, req);
          if (!verifySignature(c.key, baseText, s.signature)) return deny('AUTH_001', 'signature does not verify');
          if (covered.includes('content-digest')) checkContentDigest(req.headers['content-digest'], req.body ?? Buffer.alloc(0));
          const ok = allow({ subject: c.subject, keyId: c.id, scopes: c.scopes }, `RFC 9421 signature ${s.label} by ${c.id}`);
          if (s.nonce === undefined) return ok;
          const until = s.expires !== undefined ? s.expires * 1000 : (s.created ?? req.now / 1000) * 1000 + skewMs;
          return remember(c, s.nonce, until, req.now, ok);
        } catch (e) {
          if (e instanceof Refusal) return deny(e.code, e.message);
          throw e;
        }
      },
    };
  },
});
