// Validated config -> everything the request path needs, built once and frozen:
// TLS contexts, authenticator instances with their keys, policies, block lists,
// header names. Nothing here runs per request.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { BlockList } from 'node:net';
import { ConfigError, type ConfigIssue } from '../errors.ts';
import type { RawConfig } from './schema.ts';
import { parseListen } from './schema.ts';
import { DEFAULTS as D } from './defaults.ts';
import { AUTHENTICATORS_BY_TYPE } from '../authenticators/registry.ts';
import type { Authenticator } from '../authenticators/types.ts';
import { buildTls, type TlsTable } from '../tls/contexts.ts';
import { OcspCache, OcspChecker } from '../tls/ocsp.ts';
import { Runtime } from '../runtime.ts';
import type { RedisSettings } from '../store/redis.ts';
import { compilePolicies, type CompiledPolicy } from '../pipeline/match.ts';
import type { LockoutSettings } from '../pipeline/lockout.ts';
import { compileTokens, loadSigningKey, type CompiledTokens } from '../tokens.ts';
import { blockList, foldHeader } from '../util/net.ts';

export interface CompileOptions {
  file: string;
  baseDir: string;
  refFiles: string[];
  now?: number;
  env?: NodeJS.ProcessEnv;
  /** Survives reloads: JWKS sets, nonce stores, event hooks. */
  runtime?: Runtime;
}

export interface CompiledIdentity {
  /** Lower-case header names. */
  readonly headers: { readonly subject: string; readonly method: string; readonly keyId: string; readonly scopes: string; readonly clientCert: string };
  readonly clientCertFormat: 'xfcc' | 'rfc9440';
  readonly claims: readonly (readonly [header: string, claim: string])[];
  readonly debugHeaders: boolean;
  /** Header names (lower-case, "_" folded to "-") never accepted from a client. */
  readonly reserved: ReadonlySet<string>;
}

export interface CompiledConfig {
  readonly file: string;
  readonly baseDir: string;
  readonly loadedAt: number;
  readonly server: {
    readonly host: string; readonly port: number; readonly workers: number | 'auto';
    readonly maxHeaderBytes: number; readonly maxUriBytes: number; readonly maxBodyBytes: number; readonly maxConnections: number; readonly maxConnectionsPerIp: number;
    readonly timeouts: { readonly headersMs: number; readonly requestMs: number; readonly idleMs: number; readonly shutdownMs: number };
    readonly trustedProxies: BlockList; readonly hasTrustedProxies: boolean;
  };
  readonly admin: { readonly host: string; readonly port: number };
  readonly tls: TlsTable;
  readonly upstream: { readonly url: URL; readonly timeoutMs: number; readonly websockets: boolean; readonly ca?: string; readonly key: string };
  readonly identity: CompiledIdentity;
  readonly authenticators: ReadonlyMap<string, Authenticator>;
  readonly policies: readonly CompiledPolicy[];
  readonly logging: { readonly level: string; readonly access: boolean };
  /** Every file the config names, for `check` and reload-on-change. */
  readonly files: readonly string[];
  readonly runtime: Runtime;
  readonly store: StoreSettings;
  /** SPEC §7: tokens Portcullis issues at its own login paths (src/tokens.ts); undefined when off. */
  readonly tokens?: CompiledTokens;
  /** Failure lockout (src/pipeline/lockout.ts); undefined when off. */
  readonly lockout?: LockoutSettings;
}

export type StoreSettings = { readonly type: 'memory' } | ({ readonly type: 'redis' } & RedisSettings);

const ALWAYS_RESERVED = ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-client-cert', 'client-cert', 'client-cert-chain', 'x-real-ip'];

export { foldHeader } from '../util/net.ts';

export function compile(raw: RawConfig, opts: CompileOptions): CompiledConfig {
  const now = opts.now ?? Date.now();
  const issues: ConfigIssue[] = [];
  const resolvePath = (p: string) => resolve(opts.baseDir, p);

  const runtime = opts.runtime ?? new Runtime();
  const table = buildTls(raw.tls, resolvePath, now, issues, runtime.crls);
  const ocsp = raw.tls.clientAuth?.ocsp;
  const tls: TlsTable | undefined = table && ocsp ? Object.freeze({
    ...table,
    ocsp: new OcspChecker({ ...ocsp, responder: ocsp.responder === undefined ? undefined : new URL(ocsp.responder) }, table.trust.cas,
      runtime.shared('ocsp', () => new OcspCache()), () => runtime.events),
  }) : table;
  // The request line counts towards the head: a target as long as the head would always be a
  // 431. Unset, the limit is 8 KiB, or half the head when maxHeaderBytes is set lower.
  const maxUriBytes = raw.server.maxUriBytes ?? Math.min(D.server.maxUriBytes, Math.floor(raw.server.maxHeaderBytes / 2));
  if (maxUriBytes >= raw.server.maxHeaderBytes) {
    issues.push({ path: ['server', 'maxUriBytes'], message: `must be less than server.maxHeaderBytes (${raw.server.maxHeaderBytes}), which the request line counts towards` });
  }
  if (raw.server.workers !== 1 && raw.store.type === 'memory') {
    // A limit counted per worker would let each caller through once per worker.
    raw.policies.forEach((p, i) => {
      if (p.rateLimit) issues.push({ path: ['policies', i, 'rateLimit'], message: 'rate limits need state shared between workers: with server.workers other than 1, use store: { type: redis, url: ... } (or workers: 1)' });
    });
    // Nonces must be shared by every worker, or a replay to another worker succeeds.
    for (const [name, a] of Object.entries(raw.authenticators)) {
      const type = (a as { type: string }).type;
      if (type === 'hmac' || type === 'bsm') issues.push({ path: ['authenticators', name, 'type'], message: `${type} nonces need state shared between workers: with server.workers other than 1, use store: { type: redis, url: ... } (or workers: 1)` });
    }
  }
  let store: StoreSettings = { type: 'memory' };
  const storeFiles: string[] = [];
  if (raw.store.type === 'redis') {
    const r = raw.store;
    try { new URL(r.url); } catch { issues.push({ path: ['store', 'url'], message: 'not a valid URL' }); }
    let ca: string | undefined;
    if (r.ca !== undefined) {
      if (!r.url.startsWith('rediss://')) issues.push({ path: ['store', 'ca'], message: 'a CA is for TLS: use a rediss:// URL' });
      const file = resolvePath(r.ca);
      storeFiles.push(file);
      try { ca = readFileSync(file, 'utf8'); } catch (e) { issues.push({ path: ['store', 'ca'], message: `cannot read ${r.ca}: ${(e as NodeJS.ErrnoException).code ?? e}` }); }
      if (ca !== undefined && !ca.includes('-----BEGIN CERTIFICATE-----')) issues.push({ path: ['store', 'ca'], message: `${r.ca} holds no PEM certificate` });
    }
    store = { type: 'redis', url: r.url, keyPrefix: r.keyPrefix, timeoutMs: r.timeoutMs, ...(ca !== undefined ? { ca } : {}) };
  }

  const authFiles: string[] = [];
  const readFile = (p: string, path: readonly (string | number)[]): string => {
    const abs = resolvePath(p);
    authFiles.push(abs);
    try {
      return readFileSync(abs, 'utf8');
    } catch (e) {
      throw new ConfigError([{ path, message: `cannot read ${p}: ${(e as NodeJS.ErrnoException).code ?? e}` }]);
    }
  };
  // SPEC §7: the key Portcullis signs its own tokens with; jwt authenticators may trust it.
  const signing = raw.tokens ? loadSigningKey(raw.tokens, readFile, issues) : undefined;
  const authenticators = new Map<string, Authenticator>();
  for (const [name, cfg] of Object.entries(raw.authenticators)) {
    const type = AUTHENTICATORS_BY_TYPE.get((cfg as { type: string }).type)!;
    try {
      authenticators.set(name, type.create(cfg, { name, resolvePath, clientAuth: !!raw.tls.clientAuth, readFile, runtime, store, tokensJwks: signing?.jwks, tokensConfigured: !!raw.tokens }));
    } catch (e) {
      if (e instanceof ConfigError) issues.push(...e.issues);
      else issues.push({ path: ['authenticators', name], message: (e as Error).message });
    }
  }

  const policyIssues: ConfigIssue[] = [];
  const policies = compilePolicies(raw.policies, (n) => authenticators.get(n), policyIssues);
  const tokens = raw.tokens && signing ? compileTokens(raw.tokens, signing, (n) => authenticators.get(n), issues, readFile, tls?.trust.cas ?? []) : undefined;
  // An authenticator that failed to build was already reported; do not report every use of it too.
  issues.push(...policyIssues.filter((i) => !(/^unknown authenticator "(.*)"$/.exec(i.message)?.[1]! in raw.authenticators)));

  let upstreamCa: string | undefined;
  if (raw.upstream.ca) {
    try { upstreamCa = readFileSync(resolvePath(raw.upstream.ca), 'utf8'); } catch (e) {
      issues.push({ path: ['upstream', 'ca'], message: `cannot read ${raw.upstream.ca}: ${(e as NodeJS.ErrnoException).code ?? e}` });
    }
  }

  const h = raw.identity.headers;
  const headers = { subject: h.subject.toLowerCase(), method: h.method.toLowerCase(), keyId: h.keyId.toLowerCase(), scopes: h.scopes.toLowerCase(), clientCert: h.clientCert.toLowerCase() };
  const claims = Object.entries(raw.identity.claims).map(([hdr, claim]) => [hdr.toLowerCase(), claim] as const);
  const reserved = new Set([...Object.values(headers), ...claims.map(([hdr]) => hdr), ...ALWAYS_RESERVED].map(foldHeader));

  if (issues.length || !tls) throw new ConfigError(issues.length ? issues : [{ path: ['tls', 'certificates'], message: 'no usable server certificate' }]);

  const listen = parseListen(raw.server.listen)!;
  const admin = parseListen(raw.admin.listen)!;
  const files = [opts.file, ...opts.refFiles, ...tls.files, ...authFiles, ...(raw.upstream.ca ? [resolvePath(raw.upstream.ca)] : []), ...storeFiles];

  return Object.freeze({
    file: opts.file,
    baseDir: opts.baseDir,
    loadedAt: now,
    server: Object.freeze({
      host: listen.host, port: listen.port, workers: raw.server.workers,
      maxHeaderBytes: raw.server.maxHeaderBytes, maxUriBytes, maxBodyBytes: raw.server.maxBodyBytes, maxConnections: raw.server.maxConnections, maxConnectionsPerIp: raw.server.maxConnectionsPerIp,
      timeouts: Object.freeze({ ...raw.server.timeouts }),
      trustedProxies: blockList(raw.server.trustedProxies), hasTrustedProxies: raw.server.trustedProxies.length > 0,
    }),
    admin: Object.freeze({ host: admin.host, port: admin.port }),
    tls,
    upstream: Object.freeze({
      url: new URL(raw.upstream.url), timeoutMs: raw.upstream.timeoutMs, websockets: raw.upstream.websockets, ca: upstreamCa,
      key: `${raw.upstream.url}|${upstreamCa ?? ''}`,
    }),
    identity: Object.freeze({ headers: Object.freeze(headers), clientCertFormat: raw.identity.clientCertFormat, claims, debugHeaders: raw.identity.debugHeaders, reserved }),
    authenticators,
    policies: Object.freeze(policies),
    logging: Object.freeze({ ...raw.logging }),
    files: Object.freeze([...new Set(files)]),
    runtime,
    store: Object.freeze(store),
    tokens,
    lockout: raw.lockout && Object.freeze({
      failures: raw.lockout.failures, windowMs: raw.lockout.windowSec * 1000, lockMs: raw.lockout.lockSec * 1000,
      exemptIps: raw.lockout.exemptIps.length ? blockList(raw.lockout.exemptIps) : undefined,
    }),
  });
}
