// type: sigv4 — AWS Signature Version 4 (AWS4-HMAC-SHA256) verified on inbound requests,
// so that callers that already sign with an AWS SDK, the AWS CLI's signer or
// `curl --aws-sigv4` can authenticate to any service behind Portcullis with an access key
// pair. Envoy only signs outbound requests; none of the proxies compared verifies inbound
// SigV4 (shared/reference/anchors.md). The canonical request is rebuilt from the request as
// received (raw target, raw header lines, the body's SHA-256), per AWS's rules and its test
// suite (shared/reference/vectors/aws-sigv4).
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { ConfigError } from '../errors.ts';
import { MemoryNonceStore, type NonceStore, type NonceVerdict } from '../store/nonces.ts';
import { RedisNonceStore } from '../store/redis.ts';
import { singleHeader } from '../util/net.ts';
import { allow, defineAuthenticator, deny, skip, type AuthRequest, type Verdict } from './types.ts';

const keyEntry = z.strictObject({
  accessKeyId: z.string().regex(/^[A-Za-z0-9]{4,128}$/, 'must be 4-128 letters and digits'),
  secret: z.string().min(16, 'must be at least 16 characters'),
  subject: z.string().min(1),
  scopes: z.array(z.string().min(1)).default([]),
  revoked: z.boolean().default(false),
});

const schema = z.strictObject({
  type: z.literal('sigv4'),
  /** The credential scope's region: one, or a list of those accepted. */
  region: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
  /** The credential scope's service name. */
  service: z.string().min(1),
  keys: z.array(keyEntry).min(1),
  /** How far X-Amz-Date may be from now (AWS allows 15 min; a smaller window is stricter). */
  maxSkewSec: z.number().int().min(1).max(3600).default(300),
  /** Remove dot segments and empty segments from the path before signing, as AWS does for every service but S3. */
  normalizePath: z.boolean().default(true),
  /** double: the path as sent is encoded again (AWS's rule but for S3; the AWS SDKs); single: decoded, then encoded once (S3; curl --aws-sigv4 before 8.x). */
  pathEncoding: z.enum(['double', 'single']).default('double'),
  /** Accept `x-amz-content-sha256: UNSIGNED-PAYLOAD` (the body is then not covered). */
  unsignedPayload: z.boolean().default(false),
  /** Refuse a signature seen before within the window (AWS does not; two identical requests in one second then collide). */
  rejectReplays: z.boolean().default(false),
  /** Accept presigned URLs (X-Amz-Signature and the rest in the query, valid for X-Amz-Expires seconds). */
  presignedUrls: z.boolean().default(false),
  nonceCapacity: z.number().int().min(100).default(100_000),
  forward: z.boolean().default(false),
});

const ALGORITHM = 'AWS4-HMAC-SHA256';
const sha256 = (b: string | Buffer) => createHash('sha256').update(b).digest('hex');
const hmac = (k: string | Buffer, m: string) => createHmac('sha256', k).update(m).digest();

/** RFC 3986 encoding: everything but A-Z a-z 0-9 - _ . ~ as %XY. */
const encode = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

function decode(s: string): string | undefined {
  try { return decodeURIComponent(s); } catch { return undefined; }
}

/**
 * The canonical URI of a raw path (as sent, percent-escapes and all); undefined when it holds
 * a malformed escape. `double` (AWS's rule for every service but S3, as the AWS SDKs sign):
 * each segment as sent is encoded again, so "%20" becomes "%2520". `single` (S3, and curl's
 * `--aws-sigv4` up to 8.x): each segment is decoded, then encoded once.
 */
export function canonicalUri(rawPath: string, normalize: boolean, encoding: 'double' | 'single' = 'double'): string | undefined {
  const out: string[] = [];
  for (const p of rawPath.split('/').slice(1)) {
    const d = decode(p);
    if (d === undefined) return undefined;
    if (normalize) {
      if (d === '' || d === '.') continue;
      if (d === '..') { out.pop(); continue; }
    }
    out.push(encode(encoding === 'double' ? p : d));
  }
  let path = '/' + out.join('/');
  if (normalize && rawPath.endsWith('/') && path !== '/') path += '/';
  return path;
}

/** The canonical query string: each name and value decoded, encoded again, sorted. */
function canonicalQuery(rawQuery: string): string | undefined {
  const pairs: [string, string][] = [];
  for (const part of rawQuery.split('&')) {
    if (!part) continue;
    const i = part.indexOf('=');
    const k = decode(i < 0 ? part : part.slice(0, i)), v = decode(i < 0 ? '' : part.slice(i + 1));
    if (k === undefined || v === undefined) return undefined;
    pairs.push([encode(k), encode(v)]);
  }
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

export interface CanonicalInput {
  method: string;
  /** The request target as sent: path and query. */
  target: string;
  /** Header lines as received: [name, value, name, value, ...]. */
  rawHeaders: readonly string[];
  /** Lower-case, sorted, ";"-joined. */
  signedHeaders: string;
  payloadHash: string;
  normalizePath: boolean;
  pathEncoding?: 'double' | 'single';
}

/** AWS's canonical request; a string naming the problem when one cannot be built. */
export function canonicalRequest(c: CanonicalInput): { creq: string } | { error: string } {
  const q = c.target.indexOf('?');
  const uri = canonicalUri(q < 0 ? c.target : c.target.slice(0, q), c.normalizePath, c.pathEncoding);
  const query = canonicalQuery(q < 0 ? '' : c.target.slice(q + 1));
  if (uri === undefined || query === undefined) return { error: 'malformed percent-encoding in the request target' };
  const values = new Map<string, string[]>();
  for (let i = 0; i + 1 < c.rawHeaders.length; i += 2) {
    const name = c.rawHeaders[i]!.toLowerCase();
    let list = values.get(name);
    if (!list) values.set(name, (list = []));
    list.push(c.rawHeaders[i + 1]!.trim().replace(/\s+/g, ' '));
  }
  const lines: string[] = [];
  for (const name of c.signedHeaders.split(';')) {
    const v = values.get(name);
    if (!v) return { error: `signed header ${name} is not in the request` };
    lines.push(`${name}:${v.join(',')}`);
  }
  return { creq: [c.method, uri, query, lines.join('\n') + '\n', c.signedHeaders, c.payloadHash].join('\n') };
}

const HEADER_LIST = /^[a-z0-9!#$%&'*+.^_`|~-]+(;[a-z0-9!#$%&'*+.^_`|~-]+)*$/;
const AMZ_DATE = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;

/** A presigned URL's query parameters (removed from the URL the upstream gets, unless forward). */
const PRESIGN_PARAMS = new Set(['X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Signature', 'X-Amz-Security-Token']);

/** What a request says it was signed with: from the Authorization header, or a presigned URL. */
interface Signed {
  credential: string;
  signed: string;
  signature: string;
  presigned?: { amzDate: string; expiresSec?: number; target: string };
}

interface Key { readonly id: string; readonly secret: string; readonly revoked: boolean; readonly allowed: Verdict }

export const sigv4 = defineAuthenticator({
  type: 'sigv4',
  schema,
  create(cfg, ctx) {
    const byId = new Map<string, Key>();
    cfg.keys.forEach((k, i) => {
      if (byId.has(k.accessKeyId)) throw new ConfigError([{ path: ['authenticators', ctx.name, 'keys', i, 'accessKeyId'], message: `${k.accessKeyId} is listed twice` }]);
      const scopes = Object.freeze([...k.scopes]);
      byId.set(k.accessKeyId, { id: k.accessKeyId, secret: k.secret, revoked: k.revoked, allowed: allow({ subject: k.subject, keyId: k.accessKeyId, scopes }, `signed with access key ${k.accessKeyId}`) });
    });
    const regions = new Set(Array.isArray(cfg.region) ? cfg.region : [cfg.region]);
    const skewMs = cfg.maxSkewSec * 1000;
    // The signing key depends on the day, region and service only: derived once per day per key.
    const signingKeys = new Map<string, Buffer>();
    const signingKey = (k: Key, date: string, region: string): Buffer => {
      const id = `${k.id}/${date}/${region}`;
      let sk = signingKeys.get(id);
      if (!sk) {
        if (signingKeys.size > 10_000) signingKeys.clear();
        sk = hmac(hmac(hmac(hmac(`AWS4${k.secret}`, date), region), cfg.service), 'aws4_request');
        signingKeys.set(id, sk);
      }
      return sk;
    };
    const rt = ctx.runtime;
    const nonces: NonceStore | undefined = !cfg.rejectReplays ? undefined : ctx.store.type === 'redis' && !rt.offline
      ? new RedisNonceStore(rt.redis(ctx.store), ctx.name)
      : rt.shared(`nonces|${ctx.name}|sigv4|${cfg.nonceCapacity}`, () => new MemoryNonceStore(cfg.nonceCapacity));
    const judged = (k: Key, r: NonceVerdict): Verdict => {
      if (r === 'replay') { rt.events.replayRejected(); return deny('AUTH_009', `signature already used by access key ${k.id}`); }
      if (r === 'full') { rt.events.log('warn', { msg: 'nonce store full: refusing signed requests until nonces expire', authenticator: ctx.name, capacity: cfg.nonceCapacity }); return deny('AUTH_007', 'nonce store full'); }
      return k.allowed;
    };

    return {
      name: ctx.name,
      type: 'sigv4',
      needsBody: true,
      credentialHeaders: cfg.forward ? [] : ['authorization'],
      credentialQueryParams: cfg.forward || !cfg.presignedUrls ? [] : [...PRESIGN_PARAMS],
      challenge: ALGORITHM,
      verify(req: AuthRequest): Verdict | Promise<Verdict> {
        const auth = singleHeader(req.headers, 'authorization');
        const s = auth === undefined ? (cfg.presignedUrls ? fromQuery(req) : undefined) : fromHeader(auth);
        if (s === undefined) return skip('AUTH_003', cfg.presignedUrls ? 'no Authorization header or X-Amz-Signature query parameter' : 'no Authorization header');
        if ('kind' in s) return s;
        return check(req, s);
      },
    };

    /** Parameters from the Authorization header; a skip for another scheme. */
    function fromHeader(auth: string): Signed | Verdict {
      if (auth === 'twice') return deny('AUTH_003', 'Authorization sent more than once');
      if (!auth.startsWith(`${ALGORITHM} `)) return skip('AUTH_003', `Authorization is not ${ALGORITHM}`);
      const params = new Map<string, string>();
      for (const part of auth.slice(ALGORITHM.length + 1).split(',')) {
        const p = part.trim(), i = p.indexOf('=');
        if (i <= 0 || params.has(p.slice(0, i))) return deny('AUTH_003', 'malformed Authorization parameters');
        params.set(p.slice(0, i), p.slice(i + 1));
      }
      const credential = params.get('Credential'), signed = params.get('SignedHeaders'), signature = params.get('Signature');
      if (params.size !== 3 || !credential || !signed || !signature) return deny('AUTH_003', 'Authorization needs exactly Credential, SignedHeaders and Signature');
      return { credential, signed, signature };
    }

    /** Parameters from a presigned URL's query (X-Amz-*); undefined when it carries no signature. */
    function fromQuery(req: AuthRequest): Signed | Verdict | undefined {
      const target = req.target ?? '';
      const q = target.indexOf('?');
      if (q < 0) return undefined;
      const found = new Map<string, string>();
      const kept: string[] = [];
      for (const part of target.slice(q + 1).split('&')) {
        const i = part.indexOf('=');
        const name = decode(i < 0 ? part : part.slice(0, i));
        if (name !== undefined && PRESIGN_PARAMS.has(name)) {
          if (found.has(name)) return deny('AUTH_003', `${name} sent more than once`);
          const v = decode(i < 0 ? '' : part.slice(i + 1));
          if (v === undefined) return deny('AUTH_003', `malformed ${name}`);
          found.set(name, v);
        }
        // Everything but the signature itself is signed.
        if (name !== 'X-Amz-Signature') kept.push(part);
      }
      if (!found.has('X-Amz-Signature')) return undefined;
      const [alg, credential, amzDate, expires, signed, signature] = ['X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Signature'].map((n) => found.get(n));
      if (alg !== ALGORITHM || !credential || !amzDate || !signed || !signature) return deny('AUTH_003', `a presigned URL needs X-Amz-Algorithm=${ALGORITHM}, X-Amz-Credential, X-Amz-Date, X-Amz-SignedHeaders and X-Amz-Signature`);
      // S3's presigners always send X-Amz-Expires; without it, the window is maxSkewSec either side, as for a signed header.
      if (expires !== undefined && (!/^\d{1,6}$/.test(expires) || +expires < 1 || +expires > 604_800)) return deny('AUTH_003', 'X-Amz-Expires is not 1 to 604800 seconds');
      return { credential, signed, signature, presigned: { amzDate, expiresSec: expires === undefined ? undefined : +expires, target: target.slice(0, q) + (kept.length ? `?${kept.join('&')}` : '') } };
    }

    function check(req: AuthRequest, s: Signed): Verdict | Promise<Verdict> {
      const { credential, signed, signature, presigned } = s;
      if (!/^[0-9a-f]{64}$/.test(signature)) return deny('AUTH_003', 'Signature is not 64 lower-case hex digits');
      const scope = credential.split('/');
      if (scope.length !== 5 || scope[4] !== 'aws4_request' || !/^\d{8}$/.test(scope[1]!)) return deny('AUTH_003', 'Credential is not <key id>/<yyyymmdd>/<region>/<service>/aws4_request');
      const [keyId, day, region, service] = scope as [string, string, string, string, string];
      const names = signed.split(';');
      if (!HEADER_LIST.test(signed) || names.some((n, i) => i > 0 && names[i - 1]! >= n)) return deny('AUTH_003', 'SignedHeaders must be lower-case names, sorted, each once');
      if (!names.includes('host')) return deny('AUTH_003', 'SignedHeaders must include host');
      let amzDate: string;
      if (presigned) amzDate = presigned.amzDate;
      else {
        const h = singleHeader(req.headers, 'x-amz-date');
        if (h === undefined || h === 'twice') return deny('AUTH_003', 'one X-Amz-Date header is required');
        if (!names.includes('x-amz-date')) return deny('AUTH_003', 'SignedHeaders must include x-amz-date');
        amzDate = h;
      }
      const m = AMZ_DATE.exec(amzDate);
      if (!m) return deny('AUTH_003', 'X-Amz-Date is not yyyymmddThhmmssZ');
      const claimed = singleHeader(req.headers, 'x-amz-content-sha256');
      if (claimed === 'twice') return deny('AUTH_003', 'x-amz-content-sha256 sent more than once');
      if (claimed !== undefined && !names.includes('x-amz-content-sha256')) return deny('AUTH_003', 'x-amz-content-sha256 is sent but not signed');
      // Found or not, revoked or not, in scope or not: no HMAC yet.
      const k = byId.get(keyId);
      if (!k) return deny('AUTH_004', `access key ${keyId} not found`);
      if (k.revoked) return deny('AUTH_004', `access key ${keyId} is revoked`);
      if (!regions.has(region) || service !== cfg.service) return deny('AUTH_001', `credential scope ${region}/${service} is not accepted here`);
      if (day !== amzDate.slice(0, 8)) return deny('AUTH_001', 'the credential scope\'s date is not X-Amz-Date\'s');
      const t = Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
      let until: number;
      if (presigned?.expiresSec !== undefined) {
        until = t + presigned.expiresSec * 1000;
        if (req.now < t - skewMs || req.now > until) { rt.events.replayRejected(); return deny('AUTH_009', req.now > until ? `presigned URL expired ${Math.round((req.now - until) / 1000)} s ago` : 'presigned URL dated in the future'); }
      } else {
        until = t + skewMs;
        if (Math.abs(req.now - t) > skewMs) { rt.events.replayRejected(); return deny('AUTH_009', `X-Amz-Date ${Math.round((req.now - t) / 1000)} s from now, window ±${cfg.maxSkewSec} s`); }
      }
      // The payload hashes the signer may have used: the one it sent, else the body's (and, for a presigned URL
      // where accepted, UNSIGNED-PAYLOAD as S3's presigners use).
      const hashes: string[] = [];
      if (claimed === 'UNSIGNED-PAYLOAD') {
        if (!cfg.unsignedPayload) return deny('AUTH_001', 'UNSIGNED-PAYLOAD is not accepted (unsignedPayload: false)');
        hashes.push(claimed);
      } else {
        const body = sha256(req.body ?? Buffer.alloc(0));
        if (claimed !== undefined && claimed !== body) return deny('AUTH_001', 'x-amz-content-sha256 is not the SHA-256 of the body');
        hashes.push(body);
        if (presigned && claimed === undefined && cfg.unsignedPayload) hashes.push('UNSIGNED-PAYLOAD');
      }
      const given = Buffer.from(signature, 'hex');
      const target = presigned?.target ?? req.target ?? `${req.path}${req.query ? `?${req.query}` : ''}`;
      let match = false, first: { creq: string; sts: string } | undefined;
      for (const payloadHash of hashes) {
        const c = canonicalRequest({ method: req.method, target, rawHeaders: req.rawHeaders ?? [], signedHeaders: signed, payloadHash, normalizePath: cfg.normalizePath, pathEncoding: cfg.pathEncoding });
        if ('error' in c) return deny('AUTH_003', c.error);
        const sts = `${ALGORITHM}\n${amzDate}\n${day}/${region}/${service}/aws4_request\n${sha256(c.creq)}`;
        first ??= { creq: c.creq, sts };
        if (timingSafeEqual(createHmac('sha256', signingKey(k, day, region)).update(sts).digest(), given)) { match = true; break; }
      }
      if (!match) {
        // What to compare with the signer's own (AWS SDKs can log theirs): the canonical request's
        // SHA-256, which is the string to sign's last line. The request itself only in `explain`,
        // where the operator typed it: live, signed header values (a session token) stay out of the logs.
        const hash = first!.sts.slice(first!.sts.lastIndexOf('\n') + 1);
        return deny('AUTH_001', rt.offline
          ? `signature does not match; the canonical request here:\n${first!.creq}\nand the string to sign:\n${first!.sts}`
          : `signature does not match (canonical request SHA-256 here: ${hash}; compare with the signer's)`);
      }
      if (!nonces) return k.allowed;
      const r = nonces.remember(`${k.id}\u0000${signature}`, until, req.now);
      return typeof r === 'string' ? judged(k, r) : r.then((x) => judged(k, x));
    }
  },
});
