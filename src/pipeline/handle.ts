// The request handler: the one module that imports every stage.
// connection -> context -> decision -> header mutation -> upstream.
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { ERRORS, errorBody, type ErrorCode } from '../errors.ts';
import type { CompiledConfig } from '../config/compile.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { ConnectionInfo } from '../tls/peer.ts';
import { buildContext, type RequestContext } from './context.ts';
import { decide, policyFor, type Decision } from './decide.ts';
import { prepareUpstreamRequest } from './headers.ts';
import type { Upstream, UpstreamFailure } from './upstream.ts';

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

/** Buffer a body up to `max` bytes; never more. */
function readBody(req: IncomingMessage, max: number): Promise<Buffer | 'too-large' | 'aborted'> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) return Promise.resolve('too-large');
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (v: Buffer | 'too-large' | 'aborted') => { req.off('data', onData); req.off('end', onEnd); req.off('error', onErr); req.off('aborted', onErr); resolve(v); };
    const onData = (c: Buffer) => { size += c.length; if (size > max) { req.pause(); done('too-large'); } else chunks.push(c); };
    const onEnd = () => done(Buffer.concat(chunks, size));
    const onErr = () => done('aborted');
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onErr);
    req.once('aborted', onErr);
  });
}

export function createHandler(deps: HandlerDeps) {
  const { logger, metrics } = deps;

  function errorHeaders(code: ErrorCode, id: string, d?: Decision): Record<string, string> {
    const h: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store', 'x-request-id': id };
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

  function logAccess(cfg: CompiledConfig, ctx: RequestContext | undefined, id: string, method: string | undefined, d: Decision | undefined, code: ErrorCode | undefined, status: number, t0: number, upstreamMs?: number): void {
    const policy = d?.policy?.name ?? 'none';
    const outcome = code && !d ? 'error' : d?.outcome ?? 'error';
    metrics.countRequest(policy, outcome, code ?? '');
    metrics.observeRequest(policy, (performance.now() - t0) / 1000);
    if (!cfg.logging.access) return;
    logger.info({
      msg: 'access', requestId: id, policy, outcome, code, status, method,
      path: ctx?.path, host: ctx?.host, clientIp: ctx?.clientIp ?? undefined,
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

  const timed = (auth: { name: string }, s: number) => metrics.observeAuth(auth.name, s);

  /** Shared by plain requests and upgrades: the context and decision, or a finished refusal. */
  async function admit(req: IncomingMessage, cfg: CompiledConfig, t0: number, refuse: (code: ErrorCode, id: string, d?: Decision) => void) {
    const conn = deps.connection(req.socket as TLSSocket);
    const c = buildContext(req, conn, cfg);
    if (!c.ok) {
      logger.info({ msg: 'bad request', requestId: c.id, code: c.code, reason: c.reason, sni: conn.sni });
      refuse(c.code, c.id);
      logAccess(cfg, undefined, c.id, req.method, undefined, c.code, ERRORS[c.code].status, t0);
      return undefined;
    }
    const ctx = c.ctx;
    const policy = policyFor(cfg, ctx);
    let body: Buffer | undefined;
    if (policy?.needsBody && req.headers.upgrade !== undefined) {
      body = Buffer.alloc(0); // an upgrade request has no body to wait for
    } else if (policy?.needsBody) {
      const b = await readBody(req, cfg.server.maxBodyBytes);
      if (b === 'too-large' || b === 'aborted') {
        if (b === 'too-large') logger.info({ msg: 'body too large', requestId: ctx.id, policy: policy.name, limit: cfg.server.maxBodyBytes });
        refuse('BODY_TOO_LARGE', ctx.id);
        logAccess(cfg, ctx, ctx.id, ctx.method, undefined, 'BODY_TOO_LARGE', 413, t0);
        return undefined;
      }
      body = b;
    }
    let d: Decision;
    try {
      d = await decide(cfg, ctx, deps.now(), { timed, policy, body });
      if (req.socket.destroyed) {
        // The client went away while we were deciding: nothing to forward or answer.
        logger.info({ msg: 'client disconnected during authentication', requestId: ctx.id });
        logAccess(cfg, ctx, ctx.id, ctx.method, d, d.code, 499, t0);
        return undefined;
      }
    } catch (e) {
      // An authenticator threw: a bug or an infrastructure failure. Never forward.
      logger.error({ msg: 'authentication failed with an internal error', requestId: ctx.id, err: { message: (e as Error).message } });
      refuse('INTERNAL', ctx.id);
      logAccess(cfg, ctx, ctx.id, ctx.method, undefined, 'INTERNAL', 503, t0);
      return undefined;
    }
    if (d.outcome !== 'allow') audit(ctx, d);
    if (d.outcome === 'deny') {
      refuse(d.code!, ctx.id, d);
      logAccess(cfg, ctx, ctx.id, ctx.method, d, d.code, d.status!, t0);
      return undefined;
    }
    // Allowed (or report-only): strip what the client may not set, set what we vouch for.
    req.url = prepareUpstreamRequest(req.headers, ctx, d, cfg, req.headers.upgrade !== undefined);
    return { ctx, d, body };
  }

  async function onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const t0 = performance.now();
    const cfg = deps.config();
    if (!deps.accepting()) { res.setHeader('connection', 'close'); sendError(res, 'NOT_READY', 'draining'); return; }
    const admitted = await admit(req, cfg, t0, (code, id, d) => sendError(res, code, id, d));
    if (!admitted) return;
    const { ctx, d, body } = admitted;
    if (cfg.identity.debugHeaders && d.identity) {
      res.setHeader('x-auth-method', d.identity.methods.join(','));
      if (d.identity.subject !== undefined) res.setHeader('x-auth-user-id', req.headers[cfg.identity.headers.subject] as string);
      if (d.identity.keyId !== undefined) res.setHeader('x-auth-key-id', req.headers[cfg.identity.headers.keyId] as string);
      res.setHeader('x-auth-ip', ctx.clientIp);
    }
    res.setHeader('x-request-id', ctx.id);
    const tUp = performance.now();
    let upstreamMs: number | undefined;
    res.once('finish', () => logAccess(cfg, ctx, ctx.id, ctx.method, d, d.code, res.statusCode, t0, upstreamMs));
    res.once('close', () => { if (!res.writableFinished && upstreamMs === undefined) logAccess(cfg, ctx, ctx.id, ctx.method, d, d.code, 499, t0); });
    const upstream = deps.upstream(cfg);
    upstream.web(req, res, body, (f: UpstreamFailure, detail) => {
      upstreamMs = performance.now() - tUp;
      logger.error({ msg: 'upstream error', requestId: ctx.id, code: f, detail });
      sendError(res, f, ctx.id);
    });
    res.once('prefinish', () => {
      upstreamMs ??= performance.now() - tUp;
      metrics.upstreamDuration.observe(upstreamMs / 1000);
    });
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
    const admitted = await admit(req, cfg, t0, (code, id, d) => sendErrorOnSocket(socket, code, id, d));
    if (!admitted) return;
    const { ctx, d } = admitted;
    logAccess(cfg, ctx, ctx.id, ctx.method, d, d.code, 101, t0);
    deps.upstream(cfg).ws(req, socket, head, (f, detail) => {
      logger.error({ msg: 'upstream error', requestId: ctx.id, code: f, detail });
      if (socket.writable) sendErrorOnSocket(socket, f, ctx.id);
      else socket.destroy();
    });
  }

  return { onRequest, onUpgrade, sendError };
}

function statusText(status: number): string {
  return STATUS_CODES[status] ?? 'Error';
}
