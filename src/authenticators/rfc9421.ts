// RFC 9421 HTTP Message Signatures (request side) and RFC 9530 Content-Digest.
// Builds the signature base from the request as Portcullis will forward it.
import { createHash, createHmac, timingSafeEqual, verify as cryptoVerify, constants, type KeyObject } from 'node:crypto';
import type { AuthRequest } from './types.ts';
import { isInnerList, parseDictionary, serializeInnerList, serializeItem, SfvError, type InnerList, type Item } from '../util/sfv.ts';

export const RFC9421_ALGORITHMS = ['hmac-sha256', 'ed25519', 'ecdsa-p256-sha256', 'rsa-pss-sha512', 'rsa-v1_5-sha256'] as const;
export type Rfc9421Alg = (typeof RFC9421_ALGORITHMS)[number];

export type Key = { alg: 'hmac-sha256'; secret: KeyObject } | { alg: Exclude<Rfc9421Alg, 'hmac-sha256'>; publicKey: KeyObject };

export class Refusal extends Error {
  readonly code: 'AUTH_001' | 'AUTH_003';
  constructor(code: 'AUTH_001' | 'AUTH_003', msg: string) { super(msg); this.code = code; }
}
const malformed = (m: string) => new Refusal('AUTH_003', m);

export interface ParsedSignature {
  label: string;
  input: InnerList;
  signature: Buffer;
  keyid?: string;
  alg?: string;
  created?: number;
  expires?: number;
  nonce?: string;
  tag?: string;
}

function headerValue(v: string | string[] | undefined): string | undefined {
  if (v === undefined) return undefined;
  return (Array.isArray(v) ? v : [v]).map((s) => s.trim().replace(/\s*\r?\n\s+/g, ' ')).join(', ');
}

/** Parse Signature-Input and Signature; pick `label` or the first label present in both. */
export function parseSignature(req: AuthRequest, label?: string): ParsedSignature {
  const inputHdr = headerValue(req.headers['signature-input']);
  const sigHdr = headerValue(req.headers['signature']);
  if (!inputHdr || !sigHdr) throw malformed('Signature-Input and Signature headers are both required');
  let inputs, sigs;
  try {
    inputs = parseDictionary(inputHdr);
    sigs = parseDictionary(sigHdr);
  } catch (e) {
    throw malformed(`unparseable signature header (${(e as Error).message})`);
  }
  const chosen = label ?? [...inputs.keys()].find((k) => sigs.has(k));
  if (!chosen || !inputs.has(chosen) || !sigs.has(chosen)) throw malformed(label ? `no signature labelled ${label}` : 'no label present in both Signature-Input and Signature');
  const input = inputs.get(chosen)!;
  const sig = sigs.get(chosen)!;
  if (!isInnerList(input)) throw malformed('Signature-Input member is not an inner list');
  if (isInnerList(sig) || !(sig.value instanceof Uint8Array)) throw malformed('Signature member is not a byte sequence');
  const p = input.params;
  const str = (k: string) => { const v = p.get(k); if (v === undefined) return undefined; if (typeof v !== 'string') throw malformed(`parameter ${k} must be a string`); return v; };
  const int = (k: string) => { const v = p.get(k); if (v === undefined) return undefined; if (typeof v !== 'number' || !Number.isInteger(v)) throw malformed(`parameter ${k} must be an integer`); return v; };
  for (const k of p.keys()) if (!['created', 'expires', 'nonce', 'alg', 'keyid', 'tag'].includes(k)) throw malformed(`unknown signature parameter ${k}`);
  return { label: chosen, input, signature: Buffer.from(sig.value), keyid: str('keyid'), alg: str('alg'), created: int('created'), expires: int('expires'), nonce: str('nonce'), tag: str('tag') };
}

function componentValue(item: Item, req: AuthRequest): string {
  if (typeof item.value !== 'string') throw malformed('component identifiers must be strings');
  const name = item.value;
  const params = [...item.params.keys()];
  const authority = () => req.authority.toLowerCase().replace(/:443$/, '');
  if (name.startsWith('@')) {
    if (name !== '@query-param' && params.length) throw malformed(`unsupported parameters on ${name}`);
    switch (name) {
      case '@method': return req.method.toUpperCase();
      case '@target-uri': return `https://${authority()}${req.path}${req.query ? '?' + req.query : ''}`;
      case '@authority': return authority();
      case '@scheme': return 'https';
      case '@request-target': return `${req.path}${req.query ? '?' + req.query : ''}`;
      case '@path': return req.path;
      case '@query': return `?${req.query}`;
      case '@query-param': {
        const want = item.params.get('name');
        if (typeof want !== 'string' || params.length !== 1) throw malformed('@query-param needs exactly a name parameter');
        const hits: string[] = [];
        for (const pair of req.query ? req.query.split('&') : []) {
          const i = pair.indexOf('=');
          const [k, v] = i < 0 ? [pair, ''] : [pair.slice(0, i), pair.slice(i + 1)];
          let dk: string, dv: string;
          try { dk = decodeURIComponent(k.replace(/\+/g, ' ')); dv = decodeURIComponent(v.replace(/\+/g, ' ')); } catch { throw malformed('bad percent-encoding in query'); }
          if (dk === want) hits.push(encodeURIComponent(dv));
        }
        if (hits.length !== 1) throw malformed(`@query-param ${want}: ${hits.length ? 'repeated' : 'absent'}`);
        return hits[0]!;
      }
      default: throw malformed(`unsupported derived component ${name}`);
    }
  }
  if (params.length) throw malformed(`unsupported parameters on ${name}`);
  if (name !== name.toLowerCase()) throw malformed(`component ${name} must be lower case`);
  const v = headerValue(req.headers[name]);
  if (v === undefined) throw malformed(`covered header ${name} is absent`);
  return v;
}

/** The signature base (RFC 9421 §2.5): one line per component, then @signature-params, no trailing newline. */
export function signatureBase(input: InnerList, req: AuthRequest): string {
  const seen = new Set<string>();
  const lines: string[] = [];
  for (const item of input.items) {
    const id = serializeItem(item);
    if (seen.has(id)) throw malformed(`component ${id} covered twice`);
    seen.add(id);
    lines.push(`${id}: ${componentValue(item, req)}`);
  }
  lines.push(`"@signature-params": ${serializeInnerList(input)}`);
  return lines.join('\n');
}

export function verifySignature(key: Key, base: string | Buffer, signature: Buffer): boolean {
  const data = typeof base === 'string' ? Buffer.from(base, 'utf8') : base;
  switch (key.alg) {
    case 'hmac-sha256': {
      const mac = createHmac('sha256', key.secret).update(data).digest();
      return mac.length === signature.length && timingSafeEqual(mac, signature);
    }
    case 'ed25519': return cryptoVerify(null, data, key.publicKey, signature);
    case 'ecdsa-p256-sha256': return signature.length === 64 && cryptoVerify('sha256', data, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, signature);
    case 'rsa-pss-sha512': return cryptoVerify('sha512', data, { key: key.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 }, signature);
    case 'rsa-v1_5-sha256': return cryptoVerify('sha256', data, { key: key.publicKey, padding: constants.RSA_PKCS1_PADDING }, signature);
  }
}

/** RFC 9530: every supported digest in Content-Digest must match the body; at least one must be present. */
export function checkContentDigest(header: string | string[] | undefined, body: Buffer): void {
  const v = headerValue(header);
  if (!v) throw malformed('Content-Digest header is absent');
  let dict;
  try { dict = parseDictionary(v); } catch (e) { throw malformed(`unparseable Content-Digest (${(e as SfvError).message})`); }
  let checked = 0;
  for (const [alg, m] of dict) {
    const hash = alg === 'sha-256' ? 'sha256' : alg === 'sha-512' ? 'sha512' : undefined;
    if (!hash) continue;
    if (isInnerList(m) || !(m.value instanceof Uint8Array)) throw malformed(`Content-Digest ${alg} is not a byte sequence`);
    const want = createHash(hash).update(body).digest();
    const got = Buffer.from(m.value);
    if (want.length !== got.length || !timingSafeEqual(want, got)) throw new Refusal('AUTH_001', `Content-Digest ${alg} does not match the body`);
    checked++;
  }
  if (!checked) throw malformed('Content-Digest has no sha-256 or sha-512 member');
}
