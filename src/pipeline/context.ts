// RequestContext: everything later stages need about one request, derived once
// from the socket's frozen ConnectionInfo and the request head. Malformed
// targets, hosts and SNI/Host mismatches stop here.
import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import type { IncomingHttpHeaders } from 'node:http';
import type { ConnectionInfo } from '../tls/peer.ts';
import type { CompiledConfig } from '../config/compile.ts';
import { inList } from './match.ts';
import { normalisePath } from './normalize.ts';

export interface RequestContext {
  readonly id: string;
  readonly method: string;
  readonly path: string;
  readonly query: string;
  /** Host used for policy matching: the SNI name, else the Host header's name. */
  readonly host?: string;
  /** The Host header (or absolute-form authority) as sent, forwarded upstream. */
  readonly authority: string;
  readonly clientIp: string;
  /** The TCP peer, and whether it is a trusted proxy. */
  readonly peerIp: string;
  readonly peerTrusted: boolean;
  /** X-Forwarded-For as received from a trusted proxy, to extend. */
  readonly priorForwardedFor?: string;
  readonly conn: ConnectionInfo;
  readonly headers: IncomingHttpHeaders;
  /** The request target as sent (origin form: path and query), for signatures over it (sigv4). */
  readonly target: string;
  /** Header lines as received, names and values alternating. */
  readonly rawHeaders: readonly string[];
}

export type ContextResult =
  | { ok: true; ctx: RequestContext }
  | { ok: false; code: 'BAD_REQUEST' | 'MISDIRECTED' | 'URI_TOO_LONG'; reason: string; id: string };

export interface RequestHead {
  httpVersion?: string;
  method?: string;
  url?: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{8,128}$/;
const HOST_NAME = /^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$/;

export const stripMapped = (ip: string) => (/^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(ip) ? ip.slice(7) : ip);

/** Parse a Host value: name or IP literal, optional port; no userinfo. */
export function parseHost(value: string): { name: string; ip: boolean } | undefined {
  if (!value || value.includes('@')) return undefined;
  let name: string;
  if (value.startsWith('[')) {
    const end = value.indexOf(']');
    if (end < 0) return undefined;
    name = value.slice(1, end);
    const rest = value.slice(end + 1);
    if (rest && !/^:\d{1,5}$/.test(rest)) return undefined;
    return isIP(name) === 6 ? { name: name.toLowerCase(), ip: true } : undefined;
  }
  const m = /^([^:]+)(?::(\d{1,5}))?$/.exec(value);
  if (!m) return undefined;
  name = m[1]!.toLowerCase().replace(/\.$/, '');
  if (isIP(name)) return { name, ip: true };
  return HOST_NAME.test(name) && name.length <= 253 ? { name, ip: false } : undefined;
}

function joinXff(v: string | string[] | undefined): string | undefined {
  return v === undefined ? undefined : Array.isArray(v) ? v.join(', ') : v;
}

function clientIpOf(peer: string, trusted: boolean, xff: string | string[] | undefined, cfg: CompiledConfig): string {
  if (!trusted || xff === undefined) return peer;
  const hops = (Array.isArray(xff) ? xff.join(',') : xff).split(',').map((s) => s.trim());
  // Walk from the nearest hop back; the first address not ours is the client.
  for (let i = hops.length - 1; i >= 0; i--) {
    const ip = stripMapped(hops[i]!);
    if (!isIP(ip)) return peer;
    if (!inList(cfg.server.trustedProxies, ip)) return ip;
  }
  return stripMapped(hops[0]!) || peer;
}

export function buildContext(head: RequestHead, conn: ConnectionInfo, cfg: CompiledConfig): ContextResult {
  const peerIp = stripMapped(conn.remoteAddress);
  const peerTrusted = cfg.server.hasTrustedProxies && inList(cfg.server.trustedProxies, peerIp);
  const sentId = head.headers['x-request-id'];
  const id = peerTrusted && typeof sentId === 'string' && REQUEST_ID.test(sentId) ? sentId : randomUUID();
  const fail = (code: 'BAD_REQUEST' | 'MISDIRECTED' | 'URI_TOO_LONG', reason: string): ContextResult => ({ ok: false, code, reason, id });

  // RFC 9110 §15.5.15 (catalogue DOS-06). Node reads the target as latin1: length = bytes.
  const urlLength = head.url?.length ?? 0;
  if (urlLength > cfg.server.maxUriBytes) return fail('URI_TOO_LONG', `request target of ${urlLength} bytes, over server.maxUriBytes (${cfg.server.maxUriBytes})`);

  if (head.httpVersion === '1.0' && head.headers['transfer-encoding'] !== undefined) {
    // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is a smuggling vector; refuse it.
    return fail('BAD_REQUEST', 'Transfer-Encoding in an HTTP/1.0 request');
  }
  let hostCount = 0;
  let authorizationCount = 0;
  for (let i = 0; i < head.rawHeaders.length; i += 2) {
    const name = head.rawHeaders[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') hostCount++;
    else if (name.length === 13 && name.toLowerCase() === 'authorization') authorizationCount++;
  }
  if (hostCount > 1) return fail('BAD_REQUEST', 'more than one Host header');
  // Node keeps the first Authorization and drops the others unseen: two are never one
  // credential (RFC 9110 §5.3; catalogue JWT-10, APIK-05), and an upstream may read the other.
  if (authorizationCount > 1) return fail('BAD_REQUEST', 'more than one Authorization header');

  let target = head.url ?? '';
  let authority = head.headers.host ?? '';
  const abs = target[0] === '/' ? null : /^https?:\/\/([^/?#]*)(.*)$/i.exec(target);
  if (abs) {
    // RFC 9112 §3.2.2: the absolute-form authority replaces Host.
    authority = abs[1]!;
    target = abs[2] || '/';
    if (target[0] === '?') target = '/' + target;
  }
  const host = parseHost(authority);
  if (!host) return fail('BAD_REQUEST', 'missing or malformed Host');
  if (conn.sni && !host.ip && host.name !== conn.sni) {
    return fail('MISDIRECTED', `Host ${host.name} does not match TLS server name ${conn.sni}`);
  }
  const norm = normalisePath(target);
  if (!norm.ok) return fail('BAD_REQUEST', norm.reason);

  return {
    ok: true,
    ctx: {
      id,
      method: head.method ?? 'GET',
      path: norm.path,
      query: norm.query,
      host: conn.sni ?? (host.ip ? undefined : host.name),
      authority,
      clientIp: clientIpOf(peerIp, peerTrusted, head.headers['x-forwarded-for'], cfg),
      peerIp,
      peerTrusted,
      priorForwardedFor: peerTrusted ? joinXff(head.headers['x-forwarded-for']) : undefined,
      conn,
      headers: head.headers,
      target,
      rawHeaders: head.rawHeaders,
    },
  };
}
