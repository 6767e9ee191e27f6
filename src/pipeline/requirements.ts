// The requirement tree (none / name / any / all), compiled at load and
// evaluated per request. A thrown authenticator error propagates: the handler
// answers 503 and never forwards.
import type { AuthCode, ConfigIssue } from '../errors.ts';
import type { Authenticator, AuthIdentity, AuthRequest, Verdict } from '../authenticators/types.ts';
import type { Requirement } from '../config/schema.ts';

export type ReqNode =
  | { readonly kind: 'none' }
  | { readonly kind: 'auth'; readonly auth: Authenticator }
  | { readonly kind: 'any' | 'all'; readonly children: readonly ReqNode[] };

export interface TraceEntry {
  readonly authenticator: string;
  readonly type: string;
  readonly verdict: 'allow' | 'deny' | 'skip';
  readonly code?: AuthCode;
  readonly reason: string;
  readonly ms: number;
}

export interface Allowed { readonly auth: Authenticator; readonly identity: AuthIdentity }

export type TreeResult =
  | { readonly kind: 'allow'; readonly allowed: readonly Allowed[] }
  | { readonly kind: 'deny' | 'skip'; readonly code: AuthCode; readonly reason: string };

export function compileRequirement(
  r: 'none' | Requirement,
  lookup: (name: string) => Authenticator | undefined,
  path: (string | number)[],
  errors: ConfigIssue[],
): ReqNode {
  if (r === 'none') return { kind: 'none' };
  if (typeof r === 'string') {
    const auth = lookup(r);
    if (!auth) {
      errors.push({ path, message: `unknown authenticator "${r}"` });
      return { kind: 'none' };
    }
    return { kind: 'auth', auth };
  }
  const kind = 'any' in r ? 'any' : 'all';
  const list = 'any' in r ? r.any : r.all;
  return { kind, children: list.map((c, i) => compileRequirement(c, lookup, [...path, kind, i], errors)) };
}

/** Authenticators reachable in a tree, in order. */
export function authenticatorsOf(n: ReqNode): Authenticator[] {
  if (n.kind === 'auth') return [n.auth];
  if (n.kind === 'none') return [];
  return n.children.flatMap(authenticatorsOf);
}

/** A value now, or later: authenticators that need no I/O answer synchronously. */
export type MaybePromise<T> = T | Promise<T>;
export const isPromise = <T>(v: MaybePromise<T>): v is Promise<T> => typeof (v as { then?: unknown } | null)?.then === 'function';

const ALLOW_NONE: TreeResult = Object.freeze({ kind: 'allow', allowed: Object.freeze([]) as readonly Allowed[] });

/** Told of each authenticator's verdict and the seconds it took (metrics). */
export type Observe = (auth: Authenticator, seconds: number, verdict: Verdict) => void;

/**
 * Evaluate a requirement tree. Synchronous while every authenticator on the way
 * answers synchronously (mTLS, API keys, a cached JWT); a Promise from the first
 * one that does not.
 */
export function evaluate(
  n: ReqNode,
  req: AuthRequest,
  trace: TraceEntry[],
  timed: Observe,
): MaybePromise<TreeResult> {
  switch (n.kind) {
    case 'none':
      return ALLOW_NONE;
    case 'auth': {
      const t0 = performance.now();
      const v = n.auth.verify(req);
      return isPromise(v) ? v.then((x) => settle(n.auth, x, t0, trace, timed)) : settle(n.auth, v, t0, trace, timed);
    }
    case 'any':
      return anyFrom(n.children, 0, req, trace, timed, undefined);
    case 'all':
      return allFrom(n.children, 0, req, trace, timed, []);
  }
}

function settle(auth: Authenticator, v: Verdict, t0: number, trace: TraceEntry[], timed: Observe): TreeResult {
  const ms = performance.now() - t0;
  timed(auth, ms / 1000, v);
  trace.push({ authenticator: auth.name, type: auth.type, verdict: v.kind, code: v.kind === 'allow' ? undefined : v.code, reason: v.reason, ms });
  return v.kind === 'allow' ? { kind: 'allow', allowed: [{ auth, identity: v.identity }] } : v;
}

type Refusal = Exclude<TreeResult, { kind: 'allow' }>;

/** any: the first child that allows; else the first denial (a credential that was present and failed says more than one that was absent), else the first skip. */
function anyFrom(children: readonly ReqNode[], i: number, req: AuthRequest, trace: TraceEntry[], timed: Observe, best: Refusal | undefined): MaybePromise<TreeResult> {
  for (; i < children.length; i++) {
    const r = evaluate(children[i]!, req, trace, timed);
    if (isPromise(r)) {
      const next = i + 1;
      return r.then((x) => (x.kind === 'allow' ? x : anyFrom(children, next, req, trace, timed, better(best, x))));
    }
    if (r.kind === 'allow') return r;
    best = better(best, r);
  }
  return best!;
}

const better = (best: Refusal | undefined, r: Refusal): Refusal => (!best || (best.kind === 'skip' && r.kind === 'deny') ? r : best);

/** all: every child must allow; the first refusal ends it. */
function allFrom(children: readonly ReqNode[], i: number, req: AuthRequest, trace: TraceEntry[], timed: Observe, allowed: Allowed[]): MaybePromise<TreeResult> {
  for (; i < children.length; i++) {
    const r = evaluate(children[i]!, req, trace, timed);
    if (isPromise(r)) {
      const next = i + 1;
      return r.then((x) => {
        if (x.kind !== 'allow') return x;
        for (const a of x.allowed) allowed.push(a);
        return allFrom(children, next, req, trace, timed, allowed);
      });
    }
    if (r.kind !== 'allow') return r;
    for (const a of r.allowed) allowed.push(a);
  }
  return { kind: 'allow', allowed };
}
