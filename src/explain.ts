// `portcullis explain`: one request described on the command line, run through
// the same context, decision and header stages as live traffic, without a network.
import { tellingDenial } from './tokens.ts';
import { isIP } from 'node:net';
import { METHODS, type IncomingHttpHeaders } from 'node:http';
import type { CompiledConfig } from './config/compile.ts';
import { ERRORS } from './errors.ts';
import { buildContext, type RequestContext } from './pipeline/context.ts';
import { decide, type Decision } from './pipeline/decide.ts';
import { headerObject, upstreamRequest } from './pipeline/headers.ts';
import type { ClientCertVerdict, ConnectionInfo } from './tls/peer.ts';
import { verifyOffline } from './tls/offline.ts';

/** `body`: the request body (`-d`), for policies whose authenticators verify it (hmac, bsm). */
export interface ExplainInput { method: string; url: string; headers: string[]; certPem?: string; ip?: string; body?: Buffer }

export interface Explanation {
  input: ExplainInput;
  sni?: string;
  conn: ConnectionInfo;
  /** The OCSP answer about the certificate, when tls.clientAuth.ocsp is on. */
  ocsp?: string;
  ctx?: RequestContext;
  decision?: Decision;
  /** Set when the request is refused before any policy (400, 421). */
  early?: { code: string; status: number; reason: string };
  /** A tokens endpoint: what Portcullis itself would answer with, if allowed (never forwarded). */
  ownEndpoint?: string;
  upstreamHeaders?: IncomingHttpHeaders;
  upstreamUrl?: string;
}

export async function explain(cfg: CompiledConfig, input: ExplainInput, now = Date.now()): Promise<Explanation | { error: string }> {
  const m = /^https?:\/\/([^/?#]+)(.*)$/i.exec(input.url);
  if (!m) return { error: `URL must be absolute, e.g. https://api.example.com/path (got ${input.url})` };
  const authority = m[1]!;
  const hostOnly = authority.startsWith('[') ? authority.slice(1, authority.indexOf(']')) : authority.split(':')[0]!;
  const sni = isIP(hostOnly) ? undefined : hostOnly.toLowerCase().replace(/\.$/, '');
  const headers: IncomingHttpHeaders = { host: authority };
  const rawHeaders: string[] = [];
  for (const h of input.headers) {
    const i = h.indexOf(':');
    if (i <= 0) return { error: `-H "${h}": expected "Name: value"` };
    const name = h.slice(0, i).trim().toLowerCase(), value = h.slice(i + 1).trim();
    headers[name] = value;
    rawHeaders.push(h.slice(0, i).trim(), value);
  }
  if (!rawHeaders.some((_, i) => i % 2 === 0 && rawHeaders[i]!.toLowerCase() === 'host')) rawHeaders.push('Host', authority);
  let clientCert: ClientCertVerdict = input.certPem ? verifyOffline(input.certPem, cfg.tls, now) : { present: false, verified: false };
  // As the server does: with tls.clientAuth.ocsp, the responder is asked (a read; it changes nothing).
  let ocsp: string | undefined;
  if (cfg.tls.ocsp && clientCert.verified && clientCert.cert) {
    const a = await cfg.tls.ocsp.answer(clientCert.cert, now);
    const v = cfg.tls.ocsp.verdict(clientCert.cert, a);
    ocsp = `${a.status}${a.detail ? `: ${a.detail}` : ''}${a.status !== 'good' && !v ? ` (${cfg.tls.ocsp.settings.mode}: let through)` : ''}`;
    clientCert = v ?? clientCert;
  }
  const ip = input.ip ?? '127.0.0.1';
  if (!isIP(ip)) return { error: `--ip ${ip}: not an IP address` };
  const conn: ConnectionInfo = { remoteAddress: ip, remotePort: 0, sni, resumed: false, clientCert };
  const base = { input, sni, conn, ocsp };
  const method = input.method.toUpperCase();
  // Node's HTTP parser knows a fixed set of methods; the server answers any other with 400.
  if (!METHODS.includes(method)) return { ...base, early: { code: 'BAD_REQUEST', status: 400, reason: `${method} is not an HTTP method the server's parser accepts (node:http METHODS)` } };
  if (method === 'CONNECT') return { ...base, early: { code: 'BAD_REQUEST', status: 400, reason: 'CONNECT is not served: Portcullis is a reverse proxy, not a tunnel' } };
  const c = buildContext({ method, url: m[2] || '/', headers, rawHeaders }, conn, cfg);
  if (!c.ok) return { ...base, early: { code: c.code, status: ERRORS[c.code].status, reason: c.reason } };
  // As the server reads it: a policy that verifies the body gets one, empty when none was given.
  const body = input.body ?? Buffer.alloc(0);
  const tk = cfg.tokens;
  if (tk?.paths.has(c.ctx.path)) {
    // Portcullis' own endpoints: judged by their entries, answered here, never forwarded.
    const policies = tk.logins.get(c.ctx.path)?.map((e) => e.policy) ?? (c.ctx.path === tk.certificates?.path ? [tk.certificates.policy] : []);
    if (!policies.length) return { ...base, early: { code: 'OK', status: 200, reason: `the JWKS of tokens.signingKey (GET ${tk.jwksPath}), served by Portcullis` } };
    // As the server does: the first entry that allows; else the denial that says most.
    let decision: Decision | undefined;
    for (const policy of policies) {
      const d = await decide(cfg, c.ctx, now, { policy, body });
      if (d.outcome === 'allow') { decision = d; break; }
      decision = tellingDenial(decision, d);
    }
    return { ...base, ctx: c.ctx, decision: decision!, ownEndpoint: tk.logins.has(c.ctx.path) ? 'a token (tokens.logins)' : 'a client certificate (tokens.certificates)' };
  }
  const decision = await decide(cfg, c.ctx, now, { body });
  const ex: Explanation = { ...base, ctx: c.ctx, decision };
  if (decision.outcome !== 'deny') {
    const up = upstreamRequest(headers, c.ctx, decision, cfg, false);
    ex.upstreamHeaders = headerObject(up.headers);
    ex.upstreamUrl = new URL(up.url, cfg.upstream.url).href;
  }
  return ex;
}

export function formatExplanation(e: Explanation): string {
  const L: string[] = [];
  L.push(`request   ${e.input.method.toUpperCase()} ${e.input.url}`);
  L.push(`tls       sni=${e.sni ?? '(none)'} client-cert=${e.conn.clientCert.present ? (e.conn.clientCert.verified ? `verified ${e.conn.clientCert.cert?.subject}` : `refused: ${e.conn.clientCert.problem} (${e.conn.clientCert.detail})`) : 'none'}`);
  if (e.ocsp) L.push(`ocsp      ${e.ocsp}`);
  if (e.early) {
    L.push(`result    ${e.early.status} ${e.early.code}: ${e.early.reason}`);
    return L.join('\n');
  }
  const d = e.decision!;
  L.push(`path      ${e.ctx!.path}${e.ctx!.query ? '?' + e.ctx!.query : ''} (normalised)   client-ip ${e.ctx!.clientIp}`);
  L.push(`policy    ${d.policy ? `${d.policy.name} (#${d.policy.index}, ${d.policy.summary.authenticate}, ${d.policy.summary.mode}${d.policy.rateLimit ? `, rate limit ${d.policy.summary.rateLimit}: not counted by explain` : ''})` : '(none matches)'}`);
  for (const t of d.trace) L.push(`  ${t.authenticator.padEnd(16)} ${t.type.padEnd(7)} ${t.verdict.toUpperCase().padEnd(5)} ${t.code ?? ''}${t.code ? ' ' : ''}${t.reason}`);
  if (d.outcome === 'allow' && e.ownEndpoint) L.push(`result    ALLOW -> answered by Portcullis with ${e.ownEndpoint}, never forwarded (explain issues nothing)`);
  else if (d.outcome === 'allow') L.push(`result    ALLOW -> ${e.upstreamUrl}`);
  else if (d.outcome === 'would_deny') L.push(`result    WOULD DENY ${d.status} ${d.code} (report-only: forwarded) - ${d.reason}`);
  else L.push(`result    DENY ${d.status} ${d.code}: ${d.reason}`);
  if (e.upstreamHeaders) {
    L.push('upstream headers:');
    for (const [k, v] of Object.entries(e.upstreamHeaders)) L.push(`  ${k}: ${Array.isArray(v) ? v.join(', ') : v}`);
  }
  return L.join('\n');
}
