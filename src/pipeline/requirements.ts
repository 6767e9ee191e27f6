// The requirement tree (none / name / any / all), compiled at load and
// evaluated per request. A thrown authenticator error propagates: the handler
// answers 503 and never forwards.
import type { AuthCode, ConfigIssue } from '../errors.ts';
import type { Authenticator, AuthIdentity, AuthRequest } from '../authenticators/types.ts';
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

export async function evaluate(
  n: ReqNode,
  req: AuthRequest,
  trace: TraceEntry[],
  timed: (auth: Authenticator, seconds: number) => void,
): Promise<TreeResult> {
  switch (n.kind) {
    case 'none':
      return { kind: 'allow', allowed: [] };
    case 'auth': {
      const t0 = performance.now();
      const v = await n.auth.verify(req);
      const ms = performance.now() - t0;
      timed(n.auth, ms / 1000);
      trace.push({ authenticator: n.auth.name, type: n.auth.type, verdict: v.kind, code: v.kind === 'allow' ? undefined : v.code, reason: v.reason, ms });
      return v.kind === 'allow' ? { kind: 'allow', allowed: [{ auth: n.auth, identity: v.identity }] } : v;
    }
    case 'any': {
      let firstDeny: TreeResult | undefined, firstSkip: TreeResult | undefined;
      for (const c of n.children) {
        const r = await evaluate(c, req, trace, timed);
        if (r.kind === 'allow') return r;
        // A credential that was present and failed says more than one that was absent.
        if (r.kind === 'deny') firstDeny ??= r;
        else firstSkip ??= r;
      }
      return (firstDeny ?? firstSkip)!;
    }
    case 'all': {
      const allowed: Allowed[] = [];
      for (const c of n.children) {
        const r = await evaluate(c, req, trace, timed);
        if (r.kind !== 'allow') return r;
        allowed.push(...r.allowed);
      }
      return { kind: 'allow', allowed };
    }
  }
}
