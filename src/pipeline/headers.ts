// Header mutation for the upstream: the client's headers minus what a client must not
// set, plus what Portcullis vouches for, built as a new list (the request is not mutated).
import type { IncomingHttpHeaders } from 'node:http';
import type { CompiledConfig } from '../config/compile.ts';
import { foldHeader } from '../util/net.ts';
import type { PeerCert } from '../tls/peer.ts';
import type { Identity } from './identity.ts';
import type { RequestContext } from './context.ts';
import type { Authenticator } from '../authenticators/types.ts';

const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'http2-settings'];

/**
 * A value safe in a header and unambiguous to the upstream: printable ASCII
 * kept, "%" and everything else (CR, LF, NUL, non-ASCII) percent-encoded as UTF-8.
 */
export function headerSafe(v: string): string {
  if (/^[\x20-\x24\x26-\x7e]*$/.test(v)) return v;
  let out = '';
  for (const ch of v) {
    const c = ch.codePointAt(0)!;
    if (c >= 0x20 && c <= 0x7e && c !== 0x25) out += ch;
    else for (const b of Buffer.from(ch, 'utf8')) out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

function xfccValue(v: string): string {
  return /[,;="\s\\]/.test(v) ? `"${v.replace(/["\\]/g, '\\$&')}"` : v;
}

// A certificate's XFCC element never changes; certificates are parsed once and
// cached (tls/peer.ts), so build the element once per certificate, not per request.
const xfccCache = new WeakMap<PeerCert, string>();

/** Envoy's X-Forwarded-Client-Cert element for one certificate. */
export function xfcc(cert: PeerCert): string {
  const hit = xfccCache.get(cert);
  if (hit !== undefined) return hit;
  const value = buildXfcc(cert);
  xfccCache.set(cert, value);
  return value;
}

function buildXfcc(cert: PeerCert): string {
  const parts = [`Hash=${cert.fingerprint}`, `Subject=${xfccValue(cert.subject)}`];
  for (const u of cert.uris) parts.push(`URI=${xfccValue(u)}`);
  for (const d of cert.dns) parts.push(`DNS=${xfccValue(d)}`);
  return headerSafe(parts.join(';'));
}

/**
 * Names (folded) never forwarded as the client sent them: hop-by-hop, those the
 * upstream client frames itself, reserved identity headers, what Portcullis sets itself, and the
 * credential headers of the policy's authenticators. One set per policy, built on
 * first use (policies and their authenticators are fixed for a config's lifetime).
 */
const NOT_FORWARDED = [
  'transfer-encoding', 'expect', 'host', 'x-request-id',
  // RFC 7239 Forwarded: a client's for=/proto=/host= would contradict the X-Forwarded-* set here.
  'forwarded',
  // A path or method the application would take instead of the request line's (IIS, Symfony,
  // Laravel, Express method-override): policy is judged on the request line, so the upstream
  // must act on it, not on a header the client chose (attack catalogue, "one canonical view").
  'x-original-url', 'x-rewrite-url', 'x-http-method-override', 'x-http-method', 'x-method-override',
];
const dropSets = new WeakMap<object, ReadonlySet<string>>();
function dropSet(cfg: CompiledConfig, policy: { readonly authenticators: readonly Authenticator[] } | undefined): ReadonlySet<string> {
  const key = policy ?? cfg.identity;
  let set = dropSets.get(key);
  if (!set) {
    set = new Set([...HOP_BY_HOP, ...NOT_FORWARDED, ...cfg.identity.reserved, ...(policy?.authenticators.flatMap((a) => a.credentialHeaders) ?? [])].map(foldHeader));
    dropSets.set(key, set);
  }
  return set;
}

/** Append what Portcullis vouches for: the identity, the client certificate, forwarding headers. */
function pushIdentity(out: string[], ctx: RequestContext, identity: Identity | undefined, cfg: CompiledConfig): void {
  const h = cfg.identity.headers;
  if (identity) {
    if (identity.subject !== undefined) out.push(h.subject, headerSafe(identity.subject));
    if (identity.methods.length) out.push(h.method, identity.methods.join(','));
    if (identity.keyId !== undefined) out.push(h.keyId, headerSafe(identity.keyId));
    if (identity.scopes.length) out.push(h.scopes, headerSafe(identity.scopes.join(' ')));
    if (identity.claims) {
      for (const [header, claim] of cfg.identity.claims) {
        const v = identity.claims[claim];
        if (v !== undefined && v !== null) out.push(header, headerSafe(typeof v === 'string' ? v : JSON.stringify(v)));
      }
    }
  }
  // The client certificate is vouched for whenever the handshake verified it.
  const cc = ctx.conn.clientCert;
  if (cc.verified && cc.cert) {
    if (cfg.identity.clientCertFormat === 'rfc9440') out.push('client-cert', `:${cc.cert.der.toString('base64')}:`);
    else out.push(h.clientCert, xfcc(cc.cert));
  }
  out.push(
    'x-forwarded-for', ctx.priorForwardedFor ? `${ctx.priorForwardedFor}, ${ctx.peerIp}` : ctx.peerIp,
    'x-forwarded-proto', 'https',
    'x-forwarded-host', headerSafe(ctx.authority),
    'x-request-id', ctx.id,
    'host', ctx.authority,
  );
}

/** The query string without the named parameters; every other byte kept as sent. */
export function withoutParams(query: string, names: readonly string[]): string {
  if (!query) return query;
  return query.split('&').filter((pair) => {
    const raw = pair.split('=')[0]!;
    let name: string;
    try { name = decodeURIComponent(raw.replace(/\+/g, ' ')); } catch { name = raw; }
    return !names.includes(name);
  }).join('&');
}

/** An admitted request as it goes upstream. */
export interface UpstreamRequest {
  /** Normalised path and the query without credential parameters. */
  readonly url: string;
  /** Headers as [name, value, name, value, ...]. */
  readonly headers: string[];
}

/**
 * Everything done to an admitted request before it goes upstream, in one pass over
 * the client's headers (they are read, never mutated): credentials removed (headers
 * and query parameters), hop-by-hop and reserved headers dropped in any "-"/"_"
 * spelling, then the identity set.
 */
export function upstreamRequest(
  headers: IncomingHttpHeaders,
  ctx: RequestContext,
  d: { readonly policy?: { readonly authenticators: readonly Authenticator[] }; readonly identity?: Identity },
  cfg: CompiledConfig,
  upgrade: boolean,
): UpstreamRequest {
  let query = ctx.query;
  for (const a of d.policy?.authenticators ?? []) {
    if (a.credentialQueryParams?.length) query = withoutParams(query, a.credentialQueryParams);
  }
  const drop = dropSet(cfg, d.policy);
  // Headers the client nominated as hop-by-hop in its Connection header.
  const conn = headers.connection;
  const nominated = conn ? String(conn).split(',').map((t) => foldHeader(t.trim().toLowerCase())) : undefined;
  const out: string[] = [];
  for (const name in headers) {
    const v = headers[name];
    if (v === undefined) continue;
    const f = foldHeader(name);
    // `upgrade` is hop-by-hop, but a WebSocket handshake forwards it.
    // Every X-Forwarded-* (Prefix, Port, Server, Uri… as well as For, Proto, Host): only
    // Portcullis's own reach the upstream.
    if ((drop.has(f) || nominated?.includes(f) || f.startsWith('x-forwarded-')) && !(upgrade && f === 'upgrade')) continue;
    if (typeof v === 'string') out.push(name, v);
    else for (const one of v) out.push(name, one);
  }
  if (upgrade) out.push('connection', 'upgrade');
  // A report-only denial forwards with whatever identity was verified (none if authentication failed).
  pushIdentity(out, ctx, d.identity, cfg);
  return { url: query ? `${ctx.path}?${query}` : ctx.path, headers: out };
}

/** The header list as an object (for http-proxy-3 and `explain`); repeated names become arrays. */
export function headerObject(list: readonly string[]): IncomingHttpHeaders {
  const o: Record<string, string | string[]> = {};
  for (let i = 0; i < list.length; i += 2) {
    const k = list[i]!, v = list[i + 1]!;
    const prev = o[k];
    o[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return o as IncomingHttpHeaders;
}
