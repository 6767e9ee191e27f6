// The decision for one request: policy match, IP rules, the requirement tree,
// authorisation. Pure with respect to the network: `explain` runs it too.
import type { AuthCode } from '../errors.ts';
import { ERRORS } from '../errors.ts';
import type { CompiledConfig } from '../config/compile.ts';
import type { AuthRequest } from '../authenticators/types.ts';
import type { RequestContext } from './context.ts';
import { inList, matchPolicy, type CompiledPolicy } from './match.ts';
import { evaluate, isPromise, type MaybePromise, type Observe, type TraceEntry, type TreeResult } from './requirements.ts';
import { mergeIdentity, type Identity } from './identity.ts';

export interface Decision {
  readonly policy?: CompiledPolicy;
  /** allow: forward with identity; deny: refuse; would_deny: report-only policy, forwarded anyway. */
  readonly outcome: 'allow' | 'deny' | 'would_deny';
  readonly code?: AuthCode;
  readonly status?: number;
  readonly reason: string;
  readonly identity?: Identity;
  readonly trace: readonly TraceEntry[];
  /** A 429 (failure lockout, rate limit): seconds until the client may try again. */
  readonly retryAfterSec?: number;
}

const noTiming = () => {};

function authorise(p: CompiledPolicy, id: Identity): string | undefined {
  for (const s of p.scopesAll) if (!id.scopes.includes(s)) return `missing scope "${s}"`;
  if (p.scopesAny.length && !p.scopesAny.some((s) => id.scopes.includes(s))) return `needs one of the scopes ${p.scopesAny.join(', ')}`;
  if (p.subjects && !(id.subject !== undefined && p.subjects.some((r) => r.test(id.subject!)))) return `subject ${id.subject ?? '(none)'} is not allowed`;
  return undefined;
}

export interface DecideOptions {
  timed?: Observe;
  /** The policy, when the caller matched it already (to buffer a body first). */
  policy?: CompiledPolicy;
  body?: Buffer;
}

export function policyFor(cfg: CompiledConfig, ctx: RequestContext): CompiledPolicy | undefined {
  return matchPolicy(cfg.policies, ctx.host, ctx.path, ctx.method);
}

/** The decision; synchronous when every authenticator consulted answers synchronously. */
export function decide(cfg: CompiledConfig, ctx: RequestContext, now: number, o: DecideOptions = {}): MaybePromise<Decision> {
  const policy = o.policy ?? policyFor(cfg, ctx);
  const timed = o.timed ?? noTiming;
  if (!policy) return { outcome: 'deny', code: 'AUTH_011', status: 403, reason: `no policy matches ${ctx.method} ${ctx.host ?? '(no host)'}${ctx.path}`, trace: [] };

  const trace: TraceEntry[] = [];
  if (policy.denyIps && inList(policy.denyIps, ctx.clientIp)) return refuse(policy, trace, 'AUTH_005', `client IP ${ctx.clientIp} is in denyIps`);
  if (policy.allowIps && !inList(policy.allowIps, ctx.clientIp)) return refuse(policy, trace, 'AUTH_005', `client IP ${ctx.clientIp} is not in allowIps`);

  const req: AuthRequest = { conn: ctx.conn, method: ctx.method, path: ctx.path, query: ctx.query, headers: ctx.headers, authority: ctx.authority, clientIp: ctx.clientIp, now, body: o.body, target: ctx.target, rawHeaders: ctx.rawHeaders };
  const result = evaluate(policy.requirement, req, trace, timed);
  return isPromise(result) ? result.then((r) => conclude(policy, trace, r)) : conclude(policy, trace, result);
}

function refuse(policy: CompiledPolicy, trace: TraceEntry[], code: AuthCode, reason: string, identity?: Identity): Decision {
  const status = code === 'AUTH_002' ? policy.expiredStatus : ERRORS[code].status;
  return { policy, outcome: policy.reportOnly ? 'would_deny' : 'deny', code, status, reason, identity, trace };
}

function conclude(policy: CompiledPolicy, trace: TraceEntry[], result: TreeResult): Decision {
  if (result.kind !== 'allow') return refuse(policy, trace, result.code, result.reason);
  const identity = mergeIdentity(result.allowed);
  const why = authorise(policy, identity);
  if (why) return refuse(policy, trace, 'AUTH_008', why, identity);
  return { policy, outcome: 'allow', reason: 'allowed', identity, trace };
}
