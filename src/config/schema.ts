// The configuration schema. One source for validation, defaults and the JSON
// Schema published for editors (config/portcullis.schema.json).
import { z } from 'zod';
import { isIP } from 'node:net';
import { DEFAULTS } from './defaults.ts';
import { cidr } from '../util/net.ts';

export { cidr, parseCidr } from '../util/net.ts';
import { AUTHENTICATOR_TYPES } from '../authenticators/registry.ts';

const D = DEFAULTS;

export const NAME = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'must be 1-63 letters, digits, ".", "_" or "-"');

export const listenAddress = z.string().refine((s) => parseListen(s) !== undefined, {
  message: 'must be HOST:PORT, e.g. 0.0.0.0:8443 or [::1]:8443',
});

export function parseListen(s: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  const host = m[1] ?? m[2]!;
  if (m[1] && isIP(m[1]) !== 6) return undefined;
  return { host, port };
}

const headerName = z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, 'must be an HTTP header name');
const hostPattern = z.string().regex(/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$|^[0-9.]+$|^[0-9a-fA-F:]+$/, 'must be a DNS name, "*.name" or an IP address');

/**
 * A requirement: an authenticator name, { any: [...] } or { all: [...] }.
 * Validated by hand so errors read `policies[1].authenticate.any[0]: ...` rather
 * than a union dump; the editor schema for it is written out in jsonSchema().
 */
export type Requirement = string | { any: Requirement[] } | { all: Requirement[] };

function checkRequirement(v: unknown, path: (string | number)[], ctx: z.RefinementCtx): void {
  if (typeof v === 'string') {
    if (!NAME.safeParse(v).success) ctx.addIssue({ code: 'custom', path, message: `"${v}" is not a valid authenticator name` });
    return;
  }
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    const keys = Object.keys(v);
    if (keys.length === 1 && (keys[0] === 'any' || keys[0] === 'all')) {
      const list = (v as Record<string, unknown>)[keys[0]];
      if (!Array.isArray(list) || list.length === 0) {
        ctx.addIssue({ code: 'custom', path: [...path, keys[0]], message: 'must be a non-empty list of authenticator names or groups' });
        return;
      }
      list.forEach((item, i) => checkRequirement(item, [...path, keys[0]!, i], ctx));
      return;
    }
  }
  ctx.addIssue({ code: 'custom', path, message: 'must be an authenticator name, { any: [...] } or { all: [...] }' });
}

const requirement = z.unknown().superRefine((v, ctx) => {
  if (v === 'none') return;
  checkRequirement(v, [], ctx);
}) as unknown as z.ZodType<'none' | Requirement>;

const policy = z.strictObject({
  name: NAME,
  match: z.strictObject({
    hosts: z.array(hostPattern).min(1).optional(),
    paths: z.array(z.string()).min(1).optional(),
    /** Match `paths` in any letter case: for an upstream that folds case (IIS, some frameworks). */
    caseInsensitive: z.boolean().default(false),
    methods: z.array(z.string().regex(/^[A-Za-z]+$/, 'must be an HTTP method').transform((m) => m.toUpperCase())).min(1).optional(),
  }),
  authenticate: requirement,
  authorize: z.strictObject({
    scopes: z.strictObject({ all: z.array(z.string()).optional(), any: z.array(z.string()).optional() }).optional(),
    subjects: z.array(z.string()).min(1).optional(),
  }).optional(),
  allowIps: z.array(cidr).optional(),
  denyIps: z.array(cidr).optional(),
  mode: z.enum(['enforce', 'report-only']).default(D.policy.mode),
  /** Each caller may make `requests` requests per `perSec` seconds (a token bucket); more get 429 AUTH_007. */
  rateLimit: z.strictObject({
    requests: z.number().int().min(1).max(1_000_000_000),
    perSec: z.number().int().min(1).max(86_400),
    /** ip: the client IP, before authentication; identity: the API key or HMAC client id, else the subject, else the IP. */
    by: z.enum(['ip', 'identity']).default(D.policy.rateLimitBy),
  }).optional(),
  deny: z.strictObject({ expiredStatus: z.union([z.literal(401), z.literal(403)]).default(401) }).optional(),
});

const authenticatorSchemas = AUTHENTICATOR_TYPES.map((t) => t.schema);

export const configSchema = z.strictObject({
  server: z.strictObject({
    listen: listenAddress.default(D.server.listen),
    workers: z.union([z.number().int().min(1).max(64), z.literal('auto')]).default(D.server.workers),
    maxHeaderBytes: z.number().int().min(1024).max(1_048_576).default(D.server.maxHeaderBytes),
    /** The longest request target (path and query) served; a longer one gets 414. Below maxHeaderBytes; by default 8 KiB, or half of a smaller maxHeaderBytes. */
    maxUriBytes: z.number().int().min(256).max(1_048_576).optional(),
    maxBodyBytes: z.number().int().min(0).default(D.server.maxBodyBytes),
    maxConnections: z.number().int().min(1).default(D.server.maxConnections),
    /** Connections one client address may hold at once (per worker); 0: no per-address cap. */
    maxConnectionsPerIp: z.number().int().min(0).default(D.server.maxConnectionsPerIp),
    timeouts: z.strictObject({
      headersMs: z.number().int().min(100).default(D.server.timeouts.headersMs),
      requestMs: z.number().int().min(100).default(D.server.timeouts.requestMs),
      idleMs: z.number().int().min(100).default(D.server.timeouts.idleMs),
      shutdownMs: z.number().int().min(0).default(D.server.timeouts.shutdownMs),
    }).prefault({}),
    trustedProxies: z.array(cidr).default([...D.server.trustedProxies]),
  }).prefault({}),
  admin: z.strictObject({ listen: listenAddress.default(D.admin.listen) }).prefault({}),
  tls: z.strictObject({
    minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default(D.tls.minVersion),
    certificates: z.array(z.strictObject({
      hosts: z.array(hostPattern).min(1),
      cert: z.string().min(1),
      key: z.string().min(1),
    })).min(1, 'at least one server certificate is required'),
    unknownSni: z.enum(['reject', 'default']).default(D.tls.unknownSni),
    sessionTimeoutSec: z.number().int().min(0).max(86_400).default(D.tls.sessionTimeoutSec),
    clientAuth: z.strictObject({
      ca: z.string().min(1),
      /** PEM files, or http(s):// URLs fetched at load and every crlRefreshSec (src/tls/crlfetch.ts). */
      crl: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
      crlRefreshSec: z.number().int().min(1).max(86_400).default(D.tls.crlRefreshSec),
      /** OCSP checking of each client certificate (src/tls/ocsp.ts). */
      ocsp: z.strictObject({
        mode: z.enum(['require', 'best-effort']).default(D.tls.ocsp.mode),
        responder: z.string().refine((s) => { try { const u = new URL(s); return (u.protocol === 'http:' || u.protocol === 'https:') && !u.username; } catch { return false; } },
          { message: 'must be an http:// or https:// URL without credentials' }).optional(),
        timeoutMs: z.number().int().min(1).max(60_000).default(D.tls.ocsp.timeoutMs),
        maxAgeSec: z.number().int().min(1).max(7 * 86_400).default(D.tls.ocsp.maxAgeSec),
        retrySec: z.number().int().min(0).max(3_600).default(D.tls.ocsp.retrySec),
      }).optional(),
    }).optional(),
  }),
  upstream: z.strictObject({
    url: z.string().refine((s) => { try { const u = new URL(s); return (u.protocol === 'http:' || u.protocol === 'https:') && !u.username && !u.search && !u.hash; } catch { return false; } },
      { message: 'must be an http:// or https:// URL without credentials, query or fragment' }),
    timeoutMs: z.number().int().min(1).default(D.upstream.timeoutMs),
    websockets: z.boolean().default(D.upstream.websockets),
    ca: z.string().min(1).optional(),
  }),
  identity: z.strictObject({
    headers: z.strictObject({
      subject: headerName.default(D.identity.headers.subject),
      method: headerName.default(D.identity.headers.method),
      keyId: headerName.default(D.identity.headers.keyId),
      scopes: headerName.default(D.identity.headers.scopes),
      clientCert: headerName.default(D.identity.headers.clientCert),
    }).prefault({}),
    clientCertFormat: z.enum(['xfcc', 'rfc9440']).default(D.identity.clientCertFormat),
    claims: z.record(headerName, z.string().min(1)).default({}),
    debugHeaders: z.boolean().default(D.identity.debugHeaders),
  }).prefault({}),
  authenticators: z.record(NAME, z.discriminatedUnion('type', authenticatorSchemas as unknown as [z.ZodObject, ...z.ZodObject[]])).default({}),
  policies: z.array(policy).min(1, 'at least one policy is required (nothing matches -> denied)'),
  /** Where nonces live: this process (memory), or Redis, shared by every replica and worker. */
  store: z.discriminatedUnion('type', [
    z.strictObject({ type: z.literal('memory') }),
    z.strictObject({
      type: z.literal('redis'),
      url: z.string().regex(/^rediss?:\/\/[^\s]+$/, 'must be redis://[user:password@]host:port[/db] or rediss://… (TLS); ${env:NAME} keeps a password out of the file'),
      keyPrefix: z.string().max(64).default('portcullis:'),
      timeoutMs: z.number().int().min(10).max(10_000).default(250),
      /** PEM file of the CA that signed the Redis server's certificate (rediss:// only; default: the system CAs). */
      ca: z.string().min(1).optional(),
    }),
  ]).prefault({ type: 'memory' }),
  /** Lock a client IP out (429 AUTH_007) after repeated failed credentials; counted across replicas with store: redis. Off unless given. */
  lockout: z.strictObject({
    failures: z.number().int().min(1).max(1_000_000),
    windowSec: z.number().int().min(1).max(86_400).default(D.lockout.windowSec),
    lockSec: z.number().int().min(1).max(86_400).default(D.lockout.lockSec),
    exemptIps: z.array(cidr).default([]),
  }).optional(),
  /** SPEC §7: Portcullis signs its own access tokens, at login paths it serves itself. Off unless given. */
  tokens: z.strictObject({
    /** `iss` of every token; a jwt authenticator with `jwks: { tokens: true }` verifies them. */
    issuer: z.string().min(1),
    audience: z.string().min(1),
    /** PKCS#8 PEM private key: EC P-256 (ES256) or Ed25519 (EdDSA). */
    signingKey: z.string().min(1),
    /** GET: the public key as a JWKS, unauthenticated. */
    jwksPath: z.string().regex(/^\/[^?#]*$/, 'must be a path').default('/.well-known/jwks.json'),
    /** POST: the first entry for the path whose `authenticate` allows the request issues a token. */
    logins: z.array(z.strictObject({
      path: z.string().regex(/^\/[^?#]*$/, 'must be a path'),
      authenticate: requirement,
      ttlSec: z.number().int().min(30).max(2_592_000),
      /** The token's scopes (default: the identity's own). */
      scopes: z.array(z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/, 'a scope is visible ASCII without space, " or \\')).optional(),
    })).min(1),
    /** POST: a client certificate for the caller (CN = its subject), from a PEM CSR body or a key pair made for it. */
    certificates: z.strictObject({
      path: z.string().regex(/^\/[^?#]*$/, 'must be a path'),
      authenticate: requirement,
      /** Scopes the caller must hold, e.g. the bootstrap token's `certificate:request`. */
      scopes: z.array(z.string().min(1)).min(1).optional(),
      /** The issuing CA: one of tls.clientAuth.ca, so that what it issues is trusted for mTLS. */
      ca: z.string().min(1),
      key: z.string().min(1),
      validityDays: z.number().int().min(1).max(825).default(365),
    }).optional(),
  }).optional(),
  logging: z.strictObject({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default(D.logging.level),
    access: z.boolean().default(D.logging.access),
  }).prefault({}),
});

export type RawConfig = z.output<typeof configSchema>;
export type RawPolicy = RawConfig['policies'][number];

const REQUIREMENT_JSON_SCHEMA = {
  anyOf: [
    { type: 'string', description: 'an authenticator name, or "none" for an explicitly open route' },
    { type: 'object', properties: { any: { type: 'array', minItems: 1, items: { $ref: '#/$defs/requirement' } } }, required: ['any'], additionalProperties: false },
    { type: 'object', properties: { all: { type: 'array', minItems: 1, items: { $ref: '#/$defs/requirement' } } }, required: ['all'], additionalProperties: false },
  ],
};

/** The JSON Schema for editors, generated from the same zod source. */
export function jsonSchema(): Record<string, unknown> {
  const s = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as Record<string, any>;
  s.$id = 'https://portcullis.dev/schema/portcullis.schema.json';
  s.title = 'Portcullis configuration';
  s.$defs = { ...(s.$defs ?? {}), requirement: REQUIREMENT_JSON_SCHEMA };
  const pol = s.properties.policies.items.properties;
  pol.authenticate = { $ref: '#/$defs/requirement' };
  return s;
}
