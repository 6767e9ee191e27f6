// The authenticator contract. An authenticator sees a read-only view of the
// request and its connection and returns a Verdict; it never throws for an
// expected outcome, never sees the upstream, never writes headers.
import type { z } from 'zod';
import type { JSONWebKeySet } from 'jose';
import type { IncomingHttpHeaders } from 'node:http';
import type { AuthCode } from '../errors.ts';
import type { ConnectionInfo, PeerCert } from '../tls/peer.ts';
import type { Runtime } from '../runtime.ts';
import type { StoreSettings } from '../config/compile.ts';

export type { ConnectionInfo, PeerCert };

export interface AuthRequest {
  readonly conn: ConnectionInfo;
  readonly method: string;
  /** Normalised path, as the policy matched it and the upstream will get it. */
  readonly path: string;
  /** Raw query string without the leading "?", or "". */
  readonly query: string;
  readonly headers: IncomingHttpHeaders;
  /** Host[:port] the client addressed (Host header or absolute-form authority). */
  readonly authority: string;
  readonly clientIp: string;
  /** The request target as sent (origin form), and the header lines as received. */
  readonly target?: string;
  readonly rawHeaders?: readonly string[];
  /** The request body, present only when the authenticator declared needsBody. */
  readonly body?: Buffer;
  /** Milliseconds since the epoch, injected so tests control time. */
  readonly now: number;
}

export interface AuthIdentity {
  readonly subject?: string;
  readonly keyId?: string;
  readonly scopes: readonly string[];
  readonly claims?: Readonly<Record<string, unknown>>;
  readonly cert?: PeerCert;
}

export type Verdict =
  /** No credential of my kind here; `code` is what a requirement of me alone reports. */
  | { readonly kind: 'skip'; readonly code: AuthCode; readonly reason: string }
  /** A credential was present and failed. */
  | { readonly kind: 'deny'; readonly code: AuthCode; readonly reason: string }
  | { readonly kind: 'allow'; readonly identity: AuthIdentity; readonly reason: string };

export const skip = (code: AuthCode, reason: string): Verdict => ({ kind: 'skip', code, reason });
export const deny = (code: AuthCode, reason: string): Verdict => ({ kind: 'deny', code, reason });
export const allow = (identity: AuthIdentity, reason = 'ok'): Verdict => ({ kind: 'allow', identity, reason });

export interface Authenticator {
  readonly name: string;
  readonly type: string;
  /** Lower-case request header names that carry this credential (removed before forwarding). */
  readonly credentialHeaders: readonly string[];
  /** Query parameters that carry this credential (removed from the forwarded URL). */
  readonly credentialQueryParams?: readonly string[];
  /** The body must be buffered (up to server.maxBodyBytes) before verify(). */
  readonly needsBody?: boolean;
  /** Called when a server starts serving this config (not by check/explain): warm caches, prefetch keys. */
  start?(): void;
  /** The WWW-Authenticate challenge for a 401 from a policy using this authenticator. */
  readonly challenge?: string;
  verify(req: AuthRequest): Verdict | Promise<Verdict>;
}

export interface CreateContext {
  /** The authenticator's name in `authenticators:`. */
  readonly name: string;
  /** Absolute path of a file named in config, resolved against the config's folder. */
  resolvePath(p: string): string;
  /** Whether tls.clientAuth is configured (client certificates are requested). */
  readonly clientAuth: boolean;
  /** Read a file named in config at load time (path resolved); throws ConfigError naming `path`. */
  readFile(p: string, path: readonly (string | number)[]): string;
  /** Process-lifetime state (JWKS sets, nonce stores) and event hooks. */
  readonly runtime: Runtime;
  /** The config's `store`: where state shared across replicas (nonces) lives. */
  readonly store: StoreSettings;
  /** The public key of `tokens.signingKey` (SPEC §7), when it loaded. */
  readonly tokensJwks?: JSONWebKeySet;
  /** Whether the config has a `tokens` section (its key may have failed to load). */
  readonly tokensConfigured?: boolean;
}

export interface AuthenticatorType<S extends z.ZodType = z.ZodType> {
  readonly type: string;
  readonly schema: S;
  /** Runs once at config load: import keys, compile allow-lists. Throws ConfigError. */
  create(config: z.output<S>, ctx: CreateContext): Authenticator;
}

export function defineAuthenticator<S extends z.ZodType>(t: AuthenticatorType<S>): AuthenticatorType<S> {
  return t;
}
