// Header mutation for the upstream: strip what a client must not set, then set
// what Portcullis vouches for. Works on the request's header object in place.
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

/** Remove hop-by-hop headers, those nominated by Connection, and reserved identity headers. */
export function stripInbound(headers: IncomingHttpHeaders, reserved: ReadonlySet<string>, keepUpgrade: boolean): void {
  const conn = headers.connection;
  if (conn) {
    for (const tok of String(conn).split(',')) {
      const name = tok.trim().toLowerCase();
      if (name && !(keepUpgrade && name === 'upgrade')) delete headers[name];
    }
  }
  for (const h of HOP_BY_HOP) if (!(keepUpgrade && h === 'upgrade')) delete headers[h];
  for (const name in headers) {
    if (reserved.has(foldHeader(name))) delete headers[name];
  }
  if (keepUpgrade) headers.connection = 'upgrade';
}

export function setIdentity(headers: IncomingHttpHeaders, ctx: RequestContext, identity: Identity | undefined, cfg: CompiledConfig): void {
  const h = cfg.identity.headers;
  if (identity) {
    if (identity.subject !== undefined) headers[h.subject] = headerSafe(identity.subject);
    if (identity.methods.length) headers[h.method] = identity.methods.join(',');
    if (identity.keyId !== undefined) headers[h.keyId] = headerSafe(identity.keyId);
    if (identity.scopes.length) headers[h.scopes] = headerSafe(identity.scopes.join(' '));
    if (identity.claims) {
      for (const [header, claim] of cfg.identity.claims) {
        const v = identity.claims[claim];
        if (v !== undefined && v !== null) headers[header] = headerSafe(typeof v === 'string' ? v : JSON.stringify(v));
      }
    }
  }
  // The client certificate is vouched for whenever the handshake verified it.
  const cc = ctx.conn.clientCert;
  if (cc.verified && cc.cert) {
    if (cfg.identity.clientCertFormat === 'rfc9440') headers['client-cert'] = `:${cc.cert.der.toString('base64')}:`;
    else headers[h.clientCert] = xfcc(cc.cert);
  }
  headers['x-forwarded-for'] = ctx.priorForwardedFor ? `${ctx.priorForwardedFor}, ${ctx.peerIp}` : ctx.peerIp;
  headers['x-forwarded-proto'] = 'https';
  headers['x-forwarded-host'] = headerSafe(ctx.authority);
  headers['x-request-id'] = ctx.id;
  headers.host = ctx.authority;
}

/** Remove a header in every spelling ("-" or "_", any case). */
function deleteHeader(headers: IncomingHttpHeaders, name: string): void {
  delete headers[name];
  for (const k in headers) if (k !== name && foldHeader(k) === name) delete headers[k];
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

/**
 * Everything done to an admitted request before it goes upstream: credentials
 * removed (headers and query parameters), reserved headers stripped, identity
 * set. Returns the URL (normalised path + remaining query) to forward.
 */
export function prepareUpstreamRequest(
  headers: IncomingHttpHeaders,
  ctx: RequestContext,
  d: { readonly policy?: { readonly authenticators: readonly Authenticator[] }; readonly identity?: Identity },
  cfg: CompiledConfig,
  upgrade: boolean,
): string {
  let query = ctx.query;
  for (const a of d.policy?.authenticators ?? []) {
    for (const h of a.credentialHeaders) deleteHeader(headers, h);
    if (a.credentialQueryParams?.length) query = withoutParams(query, a.credentialQueryParams);
  }
  stripInbound(headers, cfg.identity.reserved, upgrade);
  // A report-only denial forwards with whatever identity was verified (none if authentication failed).
  setIdentity(headers, ctx, d.identity, cfg);
  return query ? `${ctx.path}?${query}` : ctx.path;
}
