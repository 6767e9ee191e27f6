// The request handler: the one module that imports every stage.
// connection -> context -> decision -> header mutation -> upstream.
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { ERRORS, errorBody, type ErrorCode } from '../errors.ts';
import type { CompiledConfig } from '../config/compile.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { ClientCertVerdict, ConnectionInfo } from '../tls/peer.ts';
import { buildContext, type RequestContext } from './context.ts';
import { decide, policyFor, type Decision } from './decide.ts';
import { headerObject, headerSafe, upstreamRequest, type UpstreamRequest } from './headers.ts';
import { upstreamReason, type Forwarded, type Upstream, type UpstreamFailure } from './upstream.ts';
import { isPromise, type MaybePromise } from './requirements.ts';
import type { Verdict } from '../authenticators/types.ts';
import { Lockout } from './lockout.ts';
import { RateLimiter } from './ratelimit.ts';
import { BadCsr, issueCertificate, issueToken, tellingDenial, type CertificateIssuer, type CompiledTokens, type IssuedCertificate, type LoginEntry } from '../tokens.ts';
import type { RedisConnection } from '../store/redis.ts';

export interface HandlerDeps {
  /** The serving config; read once per request so in-flight requests keep theirs. */
  config(): CompiledConfig;
  upstream(cfg: CompiledConfig): Upstream;
  connection(socket: TLSSocket): ConnectionInfo;
  logger: Logger;
  metrics: Metrics;
  now(): number;
  /** False while draining: new requests get 503. */
  accepting(): boolean;
}

function challenge(d: Decision): string {
  return d.policy?.authenticators.find((a) => a.challenge)?.challenge ?? `Portcullis realm="${d.policy?.name ?? 'portcullis'}"`;
}

/** Buffer a body up to `max` bytes; never more. `ex.proceed` runs once the body is wanted. */
function readBody(req: IncomingMessage, max: number, ex: { proceed?(): void }): Promise<Buffer | 'too-large' | 'aborted'> {
  // No Content-Length or Transfer-Encoding: no body. The server hands such a request over
  // already ended (optimizeEmptyRequests), so no 'end' event would ever come.
  if (req.readableEnded) return Promise.resolve(Buffer.alloc(0));
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) return Promise.resolve('too-large');
  ex.proceed?.();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (v: Buffer | 'too-large' | 'aborted') => { req.off('data', onData); req.off('end', onEnd); req.off('error', onErr); req.off('aborted', onErr); resolve(v); };
    const onData = (c: Buffer) => { size += c.length; if (size > max) { req.pause(); done('too-large'); } else chunks.push(c); };
    // A small body arrives as one chunk, a buffer of its own: no copy needed.
    const onEnd = () => done(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    const onErr = () => done('aborted');
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onErr);
    req.once('aborted', onErr);
  });
}

/** The connection with its client certificate judged again (an OCSP answer). */
function withCert(conn: ConnectionInfo, clientCert: ClientCertVerdict): ConnectionInfo {
  return Object.freeze({ ...conn, clientCert: Object.freeze(clientCert) });
}

/** The connection's client certificate was judged under a client-certificate trust since replaced. */
function stale(conn: ConnectionInfo, cfg: CompiledConfig): boolean {
  return conn.trust !== undefined && conn.trust !== cfg.tls.trustKey;
}

/** How long, and how many more body bytes, a connection lingers after an early response. */
const LINGER_MS = 2000;
const LINGER_BYTES = 1 << 20;

/**
 * The response is done but the request's body is still arriving: a refusal (401, 413, ...)
 * or an upstream that answered early. Read and discard the rest for at most LINGER_MS and
 * LINGER_BYTES, and close the connection if it has not ended by then (catalogue DOS-05,
 * SMUG-09). Closing at once could reset the connection before the client read its
 * response (a lingering close, as nginx and Envoy do); reading for ever would let a
 * refused client stream at will, and a request timeout would later answer it twice.
 */
const lingering = new WeakSet<object>();
function linger(req: IncomingMessage): void {
  const socket = req.socket;
  if (socket.destroyed || lingering.has(socket)) return;
  lingering.add(socket);
  let seen = 0;
  const cut = () => { lingering.delete(socket); socket.destroy(); };
  const timer = setTimeout(cut, LINGER_MS).unref();
  req.on('data', (c: Buffer) => { seen += c.length; if (seen > LINGER_BYTES) { clearTimeout(timer); cut(); } });
  req.once('end', () => { clearTimeout(timer); lingering.delete(socket); });
  req.resume();
}

/** A connection discarding the rest of a request that was already answered: never answer it again. */
export function answered(socket: object): boolean {
  return lingering.has(socket);
}

export function createHandler(deps: HandlerDeps) {
  const { logger, metrics } = deps;
  /** Failure counts and locks by client IP: one per process, kept across reloads. */
  const lockout = new Lockout();
  /** Policies' rate-limit buckets: one per process, kept across reloads. */
  const limiter = new RateLimiter();
  let fallbackLoggedAt = -Infinity;
  const rateLimitFallback = () => {
    const now = performance.now();
    if (now - fallbackLoggedAt < 60_000) return;
    fallbackLoggedAt = now;
    logger.warn({ msg: 'rate-limit store (redis) not answering: limits are counted in this process until it does' });
  };

  function errorHeaders(code: ErrorCode, id: string, d?: Decision): Record<string, string> {
    const h: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store', 'x-request-id': id };
    if (code === 'CONNECTION_STALE') h.connection = 'close';
    if (d?.retryAfterSec !== undefined) h['retry-after'] = String(d.retryAfterSec);
    if (ERRORS[code].status === 401 || (d?.status === 401)) h['www-authenticate'] = d ? challenge(d) : 'Portcullis realm="portcullis"';
    return h;
  }

  function sendError(res: ServerResponse, code: ErrorCode, id: string, d?: Decision): void {
    if (res.headersSent) { res.destroy(); return; }
    const status = d?.status ?? ERRORS[code].status;
    const body = errorBody(code, id);
    res.writeHead(status, { ...errorHeaders(code, id, d), 'content-length': String(Buffer.byteLength(body)) });
    res.end(body);
  }

  function sendErrorOnSocket(socket: Duplex, code: ErrorCode, id: string, d?: Decision): void {
    const status = d?.status ?? ERRORS[code].status;
    const body = errorBody(code, id);
    const head = Object.entries({ ...errorHeaders(code, id, d), 'content-length': String(Buffer.byteLength(body)), connection: 'close' })
      .map(([k, v]) => `${k}: ${v}`).join('\r\n');
    socket.end(`HTTP/1.1 ${status} ${statusText(status)}\r\n${head}\r\n\r\n${body}`);
  }

  function logAccess(cfg: CompiledConfig, ctx: RequestContext | undefined, id: string, method: string | undefined, d: Decision | undefined, code: ErrorCode | undefined, status: number, t0: number, upstreamMs?: number, peer?: string): void {
    const policy = d?.policy?.name ?? 'none';
    const outcome = code && !d ? 'error' : d?.outcome ?? 'error';
    metrics.countRequest(policy, outcome, code ?? '');
    metrics.observeRequest(policy, (performance.now() - t0) / 1000);
    if (!cfg.logging.access) return;
    logger.info({
      msg: 'access', requestId: id, policy, outcome, code, status, method,
      path: ctx?.path, host: ctx?.host, clientIp: ctx?.clientIp ?? peer,
      subject: d?.identity?.subject, keyId: d?.identity?.keyId, authenticators: d?.identity?.authenticators,
      durationMs: +(performance.now() - t0).toFixed(3), upstreamMs,
    });
  }

  function audit(ctx: RequestContext, d: Decision): void {
    logger.warn({
      msg: d.outcome === 'would_deny' ? 'would deny (report-only)' : 'denied',
      requestId: ctx.id, policy: d.policy?.name, code: d.code, reason: d.reason,
      method: ctx.method, path: ctx.path, host: ctx.host, clientIp: ctx.clientIp, sni: ctx.conn.sni,
      trace: d.trace.map((t) => ({ authenticator: t.authenticator, verdict: t.verdict, code: t.code, reason: t.reason })),
    });
  }

  const timed = (auth: { name: string }, s: number, v: Verdict) => metrics.observeAuth(auth.name, s, v.kind, v.kind === 'allow' ? '' : v.code);

  interface Admitted { ctx: RequestContext; d: Decision; body?: Buffer; up: UpstreamRequest }
  /** What admission learnt about a request, for its access log line. */
  interface Outcome {
    id: string; ctx?: RequestContext; d?: Decision; code?: ErrorCode; clientGone?: boolean;
    /** The request may send its body now: answers an `Expect: 100-continue`. */
    proceed?(): void;
    /** Answer with Portcullis' own response (token endpoints); absent on upgrades. */
    send?(status: number, body: string, headers: Record<string, string>): void;
  }
  type Refuse = (code: ErrorCode, id: string, d?: Decision) => void;

  /**
   * Shared by plain requests and upgrades: the context and decision, or a
   * finished refusal (undefined). Synchronous unless a body must be read or an
   * authenticator must wait (a JWKS fetch, an uncached token, a nonce store).
   */
  function admit(req: IncomingMessage, cfg: CompiledConfig, ex: Outcome, refuse: Refuse): MaybePromise<Admitted | undefined> {
    const conn = deps.connection(req.socket as TLSSocket);
    if (stale(conn, cfg)) {
      ex.id = randomUUID();
      ex.code = 'CONNECTION_STALE';
      logger.info({ msg: 'request on a connection judged under the previous client-certificate trust: refused, closing', requestId: ex.id, sni: conn.sni });
      refuse('CONNECTION_STALE', ex.id);
      return undefined;
    }
    // OCSP (tls.clientAuth.ocsp): the certificate's current status, per request, so that a
    // revocation learnt later reaches kept-alive connections too. Waits only for a first answer.
    const ocsp = cfg.tls.ocsp;
    if (ocsp && conn.clientCert.verified && conn.clientCert.cert) {
      const v = ocsp.check(conn.clientCert.cert, deps.now());
      if (isPromise(v)) return v.then((w) => admitOn(req, cfg, ex, refuse, w ? withCert(conn, w) : conn));
      if (v) return admitOn(req, cfg, ex, refuse, withCert(conn, v));
    }
    return admitOn(req, cfg, ex, refuse, conn);
  }

  function admitOn(req: IncomingMessage, cfg: CompiledConfig, ex: Outcome, refuse: Refuse, conn: ConnectionInfo): MaybePromise<Admitted | undefined> {
    const c = buildContext(req, conn, cfg);
    if (!c.ok) {
      logger.info({ msg: 'bad request', requestId: c.id, code: c.code, reason: c.reason, sni: conn.sni });
      ex.id = c.id;
      ex.code = c.code;
      refuse(c.code, c.id);
      return undefined;
    }
    const ctx = c.ctx;
    ex.ctx = ctx;
    ex.id = ctx.id;
    const tk = cfg.tokens;
    if (tk?.paths.has(ctx.path)) return tokenEndpoint(req, cfg, tk, ex, ctx, refuse);
    const policy = policyFor(cfg, ctx);
    // Locked out: refused before the body is read or any authenticator runs.
    if (policy && policy.authenticators.length && !policy.reportOnly && lockedOut(cfg, ex, ctx, policy, refuse)) return undefined;
    const rl = policy?.rateLimit;
    if (rl?.by === 'ip') {
      // By client IP: before the body is read or any authenticator runs.
      const caller = `ip ${ctx.clientIp}`;
      const ms = limiter.take(policy!.name, caller, deps.now(), rl);
      if (isPromise(ms)) return ms.then((w) => (overLimit(ex, ctx, policy!, w, caller, refuse) ? undefined : authenticate(req, cfg, ex, ctx, policy, refuse)));
      if (overLimit(ex, ctx, policy!, ms, caller, refuse)) return undefined;
    }
    return authenticate(req, cfg, ex, ctx, policy, refuse);
  }

  /**
   * A caller over its policy's rate limit (`waitMs` > 0): refused with 429 AUTH_007 and
   * Retry-After (true), or, under report-only, logged as a would-be denial and let through.
   */
  function overLimit(ex: Outcome, ctx: RequestContext, policy: NonNullable<Decision['policy']>, waitMs: number, caller: string, refuse: Refuse): boolean {
    if (waitMs <= 0) return false;
    const rl = policy.rateLimit!;
    const d: Decision = { policy, outcome: policy.reportOnly ? 'would_deny' : 'deny', code: 'AUTH_007', status: 429, reason: `rate limit: ${caller} made more than ${rl.requests} requests in ${rl.perMs / 1000} s`, trace: [], retryAfterSec: Math.ceil(waitMs / 1000) };
    audit(ctx, d);
    if (policy.reportOnly) return false;
    ex.d = d;
    ex.code = 'AUTH_007';
    refuse('AUTH_007', ctx.id, d);
    return true;
  }

  /** The body, if the policy's authenticators read it, then the decision. */
  function authenticate(req: IncomingMessage, cfg: CompiledConfig, ex: Outcome, ctx: RequestContext, policy: Decision['policy'], refuse: Refuse): MaybePromise<Admitted | undefined> {
    if (policy?.needsBody && req.headers.upgrade === undefined) {
      return readBody(req, cfg.server.maxBodyBytes, ex).then((b) => {
        if (b === 'too-large' || b === 'aborted') {
          if (b === 'too-large') logger.info({ msg: 'body too large', requestId: ctx.id, policy: policy.name, limit: cfg.server.maxBodyBytes });
          ex.code = 'BODY_TOO_LARGE';
          refuse('BODY_TOO_LARGE', ctx.id);
          return undefined;
        }
        return judge(req, cfg, ex, ctx, policy, b, refuse);
      });
    }
    // An upgrade request has no body to wait for.
    return judge(req, cfg, ex, ctx, policy, policy?.needsBody ? Buffer.alloc(0) : undefined, refuse);
  }

  function judge(req: IncomingMessage, cfg: CompiledConfig, ex: Outcome, ctx: RequestContext, policy: Decision['policy'], body: Buffer | undefined, refuse: Refuse): MaybePromise<Admitted | undefined> {
    const failed = (e: unknown) => {
      // An authenticator threw: a bug or an infrastructure failure. Never forward.
      logger.error({ msg: 'authentication failed with an internal error', requestId: ctx.id, err: { message: (e as Error).message } });
      ex.code = 'INTERNAL';
      refuse('INTERNAL', ctx.id);
      return undefined;
    };
    let d: MaybePromise<Decision>;
    try {
      d = decide(cfg, ctx, deps.now(), { timed, policy, body });
    } catch (e) {
      return failed(e);
    }
    return isPromise(d) ? d.then((x) => conclude(req, cfg, ex, ctx, x, body, refuse), failed) : conclude(req, cfg, ex, ctx, d, body, refuse);
  }

  function conclude(req: IncomingMessage, cfg: CompiledConfig, ex: Outcome, ctx: RequestContext, d: Decision, body: Buffer | undefined, refuse: Refuse): MaybePromise<Admitted | undefined> {
    ex.d = d;
    ex.code = d.code;
    if (req.socket.destroyed) {
      // The client went away while we were deciding: nothing to forward or answer.
      ex.clientGone = true;
      logger.info({ msg: 'client disconnected during authentication', requestId: ctx.id });
      return undefined;
    }
    if (d.outcome !== 'allow') audit(ctx, d);
    if (d.outcome === 'deny') {
      recordFailure(cfg, ctx, d);
      refuse(d.code!, ctx.id, d);
      return undefined;
    }
    // Allowed (or report-only): strip what the client may not set, set what we vouch for.
    const rl = d.policy?.rateLimit;
    if (rl?.by === 'identity' && d.outcome === 'allow') {
      // By identity: the API key or HMAC client, else the subject, else the client IP.
      const caller = d.identity?.keyId !== undefined ? `key ${d.identity.keyId}` : d.identity?.subject !== undefined ? `subject ${d.identity.subject}` : `ip ${ctx.clientIp}`;
      const ms = limiter.take(d.policy!.name, caller, deps.now(), rl);
      if (isPromise(ms)) return ms.then((w) => (overLimit(ex, ctx, d.policy!, w, caller, refuse) ? undefined : admitted(req, cfg, ctx, d, body)));
      if (overLimit(ex, ctx, d.policy!, ms, caller, refuse)) return undefined;
    }
    return admitted(req, cfg, ctx, d, body);
  }

  /** A denial, for the failure lockout. Counted after the answer is decided: a shared count (Redis) never delays it. */
  function recordFailure(cfg: CompiledConfig, ctx: RequestContext, d: Decision): void {
    const ls = cfg.lockout;
    if (!ls) return;
    const locked = (ms: number) => {
      if (ms <= 0) return;
      metrics.lockouts.inc();
      logger.warn({ msg: 'client locked out after repeated authentication failures', requestId: ctx.id, clientIp: ctx.clientIp, policy: d.policy?.name, code: d.code, failures: ls.failures, windowSec: ls.windowMs / 1000, lockSec: ms / 1000 });
    };
    const ms = lockout.record(ctx.clientIp, d.code, deps.now(), ls);
    if (isPromise(ms)) void ms.then(locked);
    else locked(ms);
  }

  /** Refused while the client IP is locked out (true), before any authenticator runs. */
  function lockedOut(cfg: CompiledConfig, ex: Outcome, ctx: RequestContext, policy: NonNullable<Decision['policy']>, refuse: Refuse): boolean {
    if (!cfg.lockout) return false;
    const ms = lockout.lockedFor(ctx.clientIp, deps.now(), cfg.lockout);
    if (ms <= 0) return false;
    const d: Decision = { policy, outcome: 'deny', code: 'AUTH_007', status: 429, reason: `client IP ${ctx.clientIp} is locked out after repeated authentication failures`, trace: [], retryAfterSec: Math.ceil(ms / 1000) };
    ex.d = d;
    ex.code = 'AUTH_007';
    audit(ctx, d);
    refuse('AUTH_007', ctx.id, d);
    return true;
  }

  /**
   * SPEC §7 (src/tokens.ts): Portcullis' own endpoints, never forwarded: the JWKS (GET), a
   * login (POST) or a client certificate (POST).
   */
  function tokenEndpoint(req: IncomingMessage, cfg: CompiledConfig, tk: CompiledTokens, ex: Outcome, ctx: RequestContext, refuse: Refuse): MaybePromise<undefined> {
    const send = ex.send?.bind(ex);
    if (!send) { ex.code = 'BAD_REQUEST'; refuse('BAD_REQUEST', ctx.id); return undefined; }
    const jwks = ctx.path === tk.jwksPath;
    const allowed = jwks ? ['GET', 'HEAD'] : ['POST'];
    if (!allowed.includes(ctx.method)) {
      ex.code = 'METHOD_NOT_ALLOWED';
      send(405, errorBody('METHOD_NOT_ALLOWED', ctx.id), { 'content-type': 'application/json', 'cache-control': 'no-store', allow: allowed.join(', ') });
      return undefined;
    }
    if (jwks) {
      send(200, tk.jwksBody, { 'content-type': 'application/jwk-set+json', 'cache-control': 'public, max-age=300' });
      return undefined;
    }
    const ci = tk.certificates;
    return ci && ctx.path === ci.path ? certificateEndpoint(req, cfg, ci, ex, ctx, send, refuse) : loginEndpoint(cfg, tk, ex, ctx, send, refuse);
  }

  type Send = NonNullable<Outcome['send']>;

  /** A token endpoint failed internally: 503 INTERNAL, never a token or a certificate. */
  function endpointFailed(ex: Outcome, ctx: RequestContext, refuse: Refuse, e: unknown): undefined {
    logger.error({ msg: 'token endpoint failed with an internal error', requestId: ctx.id, err: { message: (e as Error).message } });
    ex.code = 'INTERNAL';
    refuse('INTERNAL', ctx.id);
    return undefined;
  }

  /** A refused login or certificate request: audited, counted towards the lockout. */
  function endpointDenied(cfg: CompiledConfig, ex: Outcome, ctx: RequestContext, refuse: Refuse, d: Decision): undefined {
    ex.d = d;
    ex.code = d.code;
    audit(ctx, d);
    recordFailure(cfg, ctx, d);
    refuse(d.code!, ctx.id, d);
    return undefined;
  }

  /** The first login entry for the path that allows the request issues a token. */
  function loginEndpoint(cfg: CompiledConfig, tk: CompiledTokens, ex: Outcome, ctx: RequestContext, send: Send, refuse: Refuse): MaybePromise<undefined> {
    const entries = tk.logins.get(ctx.path)!;
    if (lockedOut(cfg, ex, ctx, entries[0]!.policy, refuse)) return undefined;
    const failed = (e: unknown) => endpointFailed(ex, ctx, refuse, e);
    const issue = (entry: LoginEntry, d: Decision): Promise<undefined> => issueToken(tk, entry, d.identity!, deps.now()).then((t) => {
      if (!t) return failed(new Error(`${entry.policy.name} allowed an identity with no subject or key id: no token issued`));
      ex.d = d;
      send(200, t.body, { 'content-type': 'application/json', 'cache-control': 'no-store', pragma: 'no-cache' });
      logger.info({ msg: 'token issued', requestId: ctx.id, login: entry.policy.name, subject: t.subject, jti: t.jti, certificateBound: t.bound, expiresIn: entry.ttlSec });
      return undefined;
    }, failed);
    const attempt = (i: number, best: Decision | undefined): MaybePromise<undefined> => {
      if (i === entries.length) return endpointDenied(cfg, ex, ctx, refuse, best!);
      const entry = entries[i]!;
      let d: MaybePromise<Decision>;
      try { d = decide(cfg, ctx, deps.now(), { timed, policy: entry.policy }); } catch (e) { return failed(e); }
      const next = (x: Decision): MaybePromise<undefined> => (x.outcome === 'allow' ? issue(entry, x) : attempt(i + 1, tellingDenial(best, x)));
      return isPromise(d) ? d.then(next, failed) : next(d);
    };
    return attempt(0, undefined);
  }

  /** A client certificate for the caller, from the CSR in the body (or a key pair made here). */
  function certificateEndpoint(req: IncomingMessage, cfg: CompiledConfig, ci: CertificateIssuer, ex: Outcome, ctx: RequestContext, send: Send, refuse: Refuse): MaybePromise<undefined> {
    if (lockedOut(cfg, ex, ctx, ci.policy, refuse)) return undefined;
    const failed = (e: unknown) => endpointFailed(ex, ctx, refuse, e);
    const certify = async (d: Decision): Promise<undefined> => {
      if (d.outcome !== 'allow') return endpointDenied(cfg, ex, ctx, refuse, d);
      const subject = d.identity?.subject;
      if (subject === undefined) return failed(new Error('the caller has no subject to name in a certificate'));
      const b = await readBody(req, Math.min(cfg.server.maxBodyBytes, 65_536), ex);
      if (b === 'too-large' || b === 'aborted') { ex.code = 'BODY_TOO_LARGE'; refuse('BODY_TOO_LARGE', ctx.id); return undefined; }
      let c: IssuedCertificate;
      try {
        // Wall time, not the request clock: OpenSSL checks the validity against it at the handshake.
        c = await issueCertificate(ci, subject, b.toString('latin1'), Date.now());
      } catch (e) {
        if (!(e instanceof BadCsr)) return failed(e);
        logger.info({ msg: 'bad certificate request', requestId: ctx.id, reason: e.message });
        ex.code = 'BAD_REQUEST';
        refuse('BAD_REQUEST', ctx.id);
        return undefined;
      }
      ex.d = d;
      send(200, c.body, { 'content-type': 'application/json', 'cache-control': 'no-store', pragma: 'no-cache' });
      logger.info({ msg: 'certificate issued', requestId: ctx.id, subject, serial: c.serial, notAfter: c.notAfter, keyMadeHere: c.generatedKey });
      return undefined;
    };
    let d: MaybePromise<Decision>;
    try { d = decide(cfg, ctx, deps.now(), { timed, policy: ci.policy }); } catch (e) { return failed(e); }
    return (isPromise(d) ? d.then(certify) : certify(d)).catch(failed);
  }

  function admitted(req: IncomingMessage, cfg: CompiledConfig, ctx: RequestContext, d: Decision, body: Buffer | undefined): Admitted {
    return { ctx, d, body, up: upstreamRequest(req.headers, ctx, d, cfg, req.headers.upgrade !== undefined) };
  }

  /**
   * One request's bookkeeping: everything the single 'close' listener needs to
   * log it, count it and stop its upstream exchange if the client leaves.
   */
  class Exchange implements Outcome, Forwarded {
    id = 'none';
    ctx?: RequestContext;
    d?: Decision;
    code?: ErrorCode;
    tUp = 0;
    upstreamMs?: number;
    broken = false;
    cancel?: () => void;
    /** The client sent `Expect: 100-continue` and has not been told to send its body yet. */
    awaitsContinue: boolean;
    readonly responseHeaders: string[] = [];
    readonly t0: number;
    readonly cfg: CompiledConfig;
    readonly req: IncomingMessage;
    readonly res: ServerResponse;

    constructor(req: IncomingMessage, res: ServerResponse, cfg: CompiledConfig, t0: number, expectsContinue: boolean) {
      this.req = req;
      this.res = res;
      this.cfg = cfg;
      this.t0 = t0;
      this.awaitsContinue = expectsContinue;
    }

    /**
     * Admitted, or about to read the body the policy verifies: only now is the client told
     * to send it. A refusal sent without a 100 closes the connection (Node's server does),
     * since the client may or may not send the body it held back.
     */
    proceed(): void {
      if (!this.awaitsContinue) return;
      this.awaitsContinue = false;
      if (!this.req.readableEnded) this.res.writeContinue();
    }

    send(status: number, body: string, headers: Record<string, string>): void {
      this.res.writeHead(status, { ...headers, 'x-request-id': this.id, 'content-length': String(Buffer.byteLength(body)) });
      this.res.end(this.req.method === 'HEAD' ? undefined : body);
    }

    onComplete(): void {
      this.upstreamMs = performance.now() - this.tUp;
      metrics.observeUpstream(this.upstreamMs / 1000);
    }

    onError(f: UpstreamFailure, detail: string): void {
      this.upstreamMs = performance.now() - this.tUp;
      logger.error({ msg: 'upstream error', requestId: this.id, code: f, detail });
      metrics.countUpstreamError(upstreamReason(f, detail));
      this.code = f;
      sendError(this.res, f, this.id);
    }

    onBroken(f: UpstreamFailure, detail: string): void {
      this.upstreamMs = performance.now() - this.tUp;
      logger.error({ msg: 'upstream error', requestId: this.id, code: f, detail, afterHead: true });
      metrics.countUpstreamError(upstreamReason(f, detail));
      this.code = f;
      this.broken = true;
    }

    get stallMs(): number { return this.cfg.server.timeouts.idleMs; }

    onStalled(): void {
      logger.info({ msg: 'client stopped reading the response: connection closed', requestId: this.id, idleMs: this.stallMs });
    }

    /** The response is finished or the connection closed: the one place a request is logged and counted. */
    closed(): void {
      inFlight--;
      const open = exchanging.get(this.req.socket)! - 1;
      if (open) exchanging.set(this.req.socket, open); else exchanging.delete(this.req.socket);
      const finished = this.res.writableFinished;
      if (!finished) this.cancel?.();
      else if (!this.req.complete && !this.req.readableEnded) linger(this.req);
      // In flight when the client-certificate trust changed: this connection serves no more.
      else if (this.ctx && stale(this.ctx.conn, deps.config())) this.req.socket.end();
      const ctx = this.ctx;
      // 499: the client left; a response the upstream broke off keeps the status the client saw.
      logAccess(this.cfg, ctx, this.id, ctx?.method ?? this.req.method, this.d, this.code, finished || this.broken ? this.res.statusCode : 499, this.t0, this.upstreamMs);
    }
  }

  let inFlight = 0;
  /** Requests per socket whose exchange has not closed (pipelined ones too): each exchange logs and counts its own. */
  const exchanging = new WeakMap<object, number>();

  /**
   * One request. `expectsContinue`: the server's 'checkContinue' event, a request with
   * `Expect: 100-continue` that Node has not answered; it is judged on its head first.
   */
  function onRequest(req: IncomingMessage, res: ServerResponse, expectsContinue = false): void {
    const t0 = performance.now();
    const cfg = deps.config();
    inFlight++;
    const ex = new Exchange(req, res, cfg, t0, expectsContinue);
    exchanging.set(req.socket, (exchanging.get(req.socket) ?? 0) + 1);
    res.once('close', () => ex.closed());
    try {
      if (!deps.accepting()) {
        ex.id = 'draining';
        ex.code = 'NOT_READY';
        res.setHeader('connection', 'close');
        sendError(res, 'NOT_READY', 'draining');
        return;
      }
      const refuse: Refuse = (code, id, d) => sendError(res, code, id, d);
      const a = admit(req, cfg, ex, refuse);
      if (isPromise(a)) a.then((x) => { if (x) forward(req, res, cfg, ex, x); }).catch((e: Error) => internalError(res, ex, e));
      else if (a) forward(req, res, cfg, ex, a);
    } catch (e) {
      internalError(res, ex, e as Error);
    }
  }

  function internalError(res: ServerResponse, ex: Exchange, e: Error): void {
    logger.error({ msg: 'unhandled error in request handler', requestId: ex.id, err: { message: e.message, stack: e.stack } });
    ex.code = 'INTERNAL';
    sendError(res, 'INTERNAL', ex.id);
  }

  function forward(req: IncomingMessage, res: ServerResponse, cfg: CompiledConfig, ex: Exchange, { ctx, d, body, up }: Admitted): void {
    const h = ex.responseHeaders;
    if (cfg.identity.debugHeaders && d.identity) {
      h.push('x-auth-method', d.identity.methods.join(','));
      if (d.identity.subject !== undefined) h.push('x-auth-user-id', headerSafe(d.identity.subject));
      if (d.identity.keyId !== undefined) h.push('x-auth-key-id', headerSafe(d.identity.keyId));
      h.push('x-auth-ip', ctx.clientIp);
    }
    h.push('x-request-id', ctx.id);
    ex.proceed();
    ex.tUp = performance.now();
    ex.cancel = deps.upstream(cfg).web(req, res, up, body, ex);
  }

  async function onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const t0 = performance.now();
    const cfg = deps.config();
    socket.on('error', () => socket.destroy());
    if (!deps.accepting()) { sendErrorOnSocket(socket, 'NOT_READY', 'draining'); return; }
    if (!cfg.upstream.websockets || String(req.headers.upgrade).toLowerCase() !== 'websocket') {
      sendErrorOnSocket(socket, 'BAD_REQUEST', 'upgrade');
      return;
    }
    const ex: Outcome = { id: 'none' };
    const admitted = await admit(req, cfg, ex, (code, id, d) => sendErrorOnSocket(socket, code, id, d));
    if (!admitted) {
      const status = ex.clientGone || !ex.code ? 499 : ex.d?.status ?? ERRORS[ex.code].status;
      logAccess(cfg, ex.ctx, ex.id, ex.ctx?.method ?? req.method, ex.d, ex.code, status, t0);
      return;
    }
    const { ctx, d, up } = admitted;
    // http-proxy-3 forwards the request object: give it the upstream URL and headers.
    req.url = up.url;
    req.headers = headerObject(up.headers);
    logAccess(cfg, ctx, ctx.id, ctx.method, d, d.code, 101, t0);
    deps.upstream(cfg).ws(req, socket, head, (f, detail) => {
      logger.error({ msg: 'upstream error', requestId: ctx.id, code: f, detail });
      metrics.countUpstreamError(upstreamReason(f, detail));
      if (socket.writable) sendErrorOnSocket(socket, f, ctx.id);
      else socket.destroy();
    });
  }

  /**
   * A request head Node's parser refused, so there is no request object: a head over
   * maxHeaderBytes (431), a malformed head (400), or one not received in time (408). It is
   * answered, logged (with a request id the client also gets) and counted like any other
   * refusal. A body too slow for requestMs belongs to a request in progress, which its own
   * exchange logs and counts: that one only gets its answer here.
   */
  function onParseError(err: Error & { code?: string; reason?: string }, socket: Duplex): void {
    const code: ErrorCode = err.code === 'HPE_HEADER_OVERFLOW' ? 'HEADERS_TOO_LARGE' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'REQUEST_TIMEOUT' : 'BAD_REQUEST';
    if (exchanging.has(socket)) { sendErrorOnSocket(socket, code, 'none'); return; }
    const t0 = performance.now();
    const cfg = deps.config();
    const id = randomUUID();
    const conn = deps.connection(socket as TLSSocket);
    const s = cfg.server;
    const reason = code === 'HEADERS_TOO_LARGE' ? `request head over server.maxHeaderBytes (${s.maxHeaderBytes})`
      : code === 'REQUEST_TIMEOUT' ? `request head not received within server.timeouts (headersMs ${s.timeouts.headersMs}, requestMs ${s.timeouts.requestMs})`
      : `malformed request head: ${err.reason ?? err.message} (${err.code})`;
    logger.info({ msg: 'bad request', requestId: id, code, reason, clientIp: conn.remoteAddress, sni: conn.sni });
    logAccess(cfg, undefined, id, undefined, undefined, code, ERRORS[code].status, t0, undefined, conn.remoteAddress);
    sendErrorOnSocket(socket, code, id);
  }

  /** CONNECT asks for a tunnel, which a reverse proxy does not give (catalogue PATH-09). */
  function onConnect(req: IncomingMessage, socket: Duplex): void {
    const t0 = performance.now();
    const id = randomUUID();
    socket.on('error', () => socket.destroy());
    logger.info({ msg: 'bad request', requestId: id, code: 'BAD_REQUEST', reason: 'CONNECT is not served: Portcullis is a reverse proxy, not a tunnel', target: headerSafe(String(req.url).slice(0, 256)) });
    sendErrorOnSocket(socket, 'BAD_REQUEST', id);
    logAccess(deps.config(), undefined, id, 'CONNECT', undefined, 'BAD_REQUEST', 400, t0);
  }

  /** The config's shared store for lockout counts and rate limits (undefined: this process only). */
  const shareStore = (o: { lockout?: RedisConnection; rateLimits?: RedisConnection }) => {
    lockout.share(o.lockout, deps.now);
    limiter.share(o.rateLimits, rateLimitFallback);
  };

  return { onRequest, onUpgrade, onConnect, onParseError, sendError, shareStore, inFlight: () => inFlight };
}

function statusText(status: number): string {
  return STATUS_CODES[status] ?? 'Error';
}
