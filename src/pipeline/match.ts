// Policies compiled at load; the first whose host, path and method match wins.
import type { BlockList } from 'node:net';
import type { RawPolicy } from '../config/schema.ts';
import type { ConfigIssue } from '../errors.ts';
import { blockList } from '../util/net.ts';

export { blockList, inList } from '../util/net.ts';
import { compileHostPattern, compilePathGlob, compileValuePattern } from '../util/patterns.ts';
import type { Authenticator } from '../authenticators/types.ts';
import { authenticatorsOf, compileRequirement, type ReqNode } from './requirements.ts';
import type { RateLimitSettings } from './ratelimit.ts';

export interface CompiledPolicy {
  readonly name: string;
  readonly index: number;
  readonly hosts?: readonly ((h: string) => boolean)[];
  readonly paths?: readonly RegExp[];
  readonly methods?: ReadonlySet<string>;
  readonly requirement: ReqNode;
  readonly authenticators: readonly Authenticator[];
  /** Some authenticator reads the body: buffer it (capped) before deciding. */
  readonly needsBody: boolean;
  readonly scopesAll: readonly string[];
  readonly scopesAny: readonly string[];
  readonly subjects?: readonly RegExp[];
  readonly allowIps?: BlockList;
  readonly denyIps?: BlockList;
  readonly reportOnly: boolean;
  readonly expiredStatus: 401 | 403;
  /** Requests per caller (src/pipeline/ratelimit.ts); undefined when unlimited. */
  readonly rateLimit?: RateLimitSettings;
  /** For `check` and `explain`: the policy as written. */
  readonly summary: { hosts: string; paths: string; methods: string; authenticate: string; mode: string; rateLimit: string };
}

function describe(r: RawPolicy['authenticate']): string {
  if (typeof r === 'string') return r;
  if ('any' in r) return `any(${r.any.map(describe).join(', ')})`;
  return `all(${r.all.map(describe).join(', ')})`;
}

export function compilePolicies(
  raw: readonly RawPolicy[],
  lookup: (name: string) => Authenticator | undefined,
  errors: ConfigIssue[],
): CompiledPolicy[] {
  const seen = new Set<string>();
  shadowedPolicies(raw, errors);
  return raw.map((p, i) => {
    const base = ['policies', i];
    if (seen.has(p.name)) errors.push({ path: [...base, 'name'], message: `duplicate policy name "${p.name}"` });
    seen.add(p.name);
    const paths = p.match.paths?.map((g, j) => {
      const re = compilePathGlob(g, p.match.caseInsensitive);
      if (typeof re === 'string') { errors.push({ path: [...base, 'match', 'paths', j], message: re }); return /$^/; }
      return re;
    });
    const requirement = compileRequirement(p.authenticate, lookup, [...base, 'authenticate'], errors);
    if (p.rateLimit?.by === 'identity' && p.authenticate === 'none') errors.push({ path: [...base, 'rateLimit', 'by'], message: 'a policy with authenticate: none has no identity to limit: use by: ip' });
    return {
      name: p.name,
      index: i,
      hosts: p.match.hosts?.map(compileHostPattern),
      paths,
      methods: p.match.methods ? new Set(p.match.methods) : undefined,
      requirement,
      authenticators: authenticatorsOf(requirement),
      needsBody: authenticatorsOf(requirement).some((a) => a.needsBody),
      scopesAll: p.authorize?.scopes?.all ?? [],
      scopesAny: p.authorize?.scopes?.any ?? [],
      subjects: p.authorize?.subjects?.map(compileValuePattern),
      allowIps: p.allowIps ? blockList(p.allowIps) : undefined,
      denyIps: p.denyIps ? blockList(p.denyIps) : undefined,
      reportOnly: p.mode === 'report-only',
      expiredStatus: p.deny?.expiredStatus ?? 401,
      rateLimit: p.rateLimit && Object.freeze({ requests: p.rateLimit.requests, perMs: p.rateLimit.perSec * 1000, by: p.rateLimit.by }),
      summary: {
        hosts: p.match.hosts?.join(' ') ?? '*',
        paths: (p.match.paths?.join(' ') ?? '/**') + (p.match.caseInsensitive && p.match.paths ? ' (any case)' : ''),
        methods: p.match.methods?.join(' ') ?? '*',
        authenticate: describe(p.authenticate),
        mode: p.mode,
        rateLimit: p.rateLimit ? `${p.rateLimit.requests}/${p.rateLimit.perSec}s per ${p.rateLimit.by}` : '-',
      },
    };
  });
}

/** Does path glob `a` match every path glob `b` matches? Only the sure cases: equal, `/**`, `P/**` over `P` and below. */
function globCovers(a: string, b: string): boolean {
  if (a === b || a === '/**') return true;
  if (!a.endsWith('/**')) return false;
  const prefix = a.slice(0, -3);
  return b === prefix || b.startsWith(prefix + '/');
}

/**
 * A policy that can never match is dead config, and most often a hole: a catch-all
 * written before the stricter policy it was meant to follow (catalogue CFG-03). An
 * earlier policy shadows a later one when it matches every method, host and path the
 * later one does; only the sure cases are reported.
 */
function shadowedPolicies(raw: readonly RawPolicy[], errors: ConfigIssue[]): void {
  const lower = (l?: readonly string[]) => l?.map((x) => x.toLowerCase());
  raw.forEach((b, j) => {
    for (let i = 0; i < j; i++) {
      const a = raw[i]!;
      const am = a.match.methods, bm = b.match.methods;
      if (am && !(bm && bm.every((m) => am.includes(m)))) continue;
      const ah = lower(a.match.hosts), bh = lower(b.match.hosts);
      if (ah && !(bh && bh.every((h) => ah.includes(h)))) continue;
      const ap = a.match.paths, bp = b.match.paths ?? ['/**'];
      if (ap && !ap.includes('/**')) {
        // A case-insensitive later policy also matches spellings a case-sensitive one does not.
        if (b.match.caseInsensitive && !a.match.caseInsensitive) continue;
        const fold = (g: string) => (a.match.caseInsensitive ? g.toLowerCase() : g);
        if (!bp.every((g) => ap.some((f) => globCovers(fold(f), fold(g))))) continue;
      }
      errors.push({ path: ['policies', j, 'match'], message: `policy "${b.name}" can never match: policy "${a.name}" (policies[${i}]) comes first and matches every request it would (first match wins); put "${b.name}" before it, or narrow "${a.name}"` });
      return;
    }
  });
}

export function matchPolicy(policies: readonly CompiledPolicy[], host: string | undefined, path: string, method: string): CompiledPolicy | undefined {
  for (const p of policies) {
    if (p.methods && !p.methods.has(method)) continue;
    if (p.hosts && (host === undefined || !p.hosts.some((h) => h(host)))) continue;
    if (p.paths && !p.paths.some((r) => r.test(path))) continue;
    return p;
  }
  return undefined;
}
