// The verified identity of a request, merged from the authenticators that
// allowed it, in policy order. Header mutation sees only this.
import type { PeerCert } from '../tls/peer.ts';
import type { Allowed } from './requirements.ts';

export interface Identity {
  readonly subject?: string;
  readonly keyId?: string;
  readonly scopes: readonly string[];
  /** Types of the authenticators that succeeded, e.g. ["mtls", "jwt"]. */
  readonly methods: readonly string[];
  /** Names of the authenticators that succeeded. */
  readonly authenticators: readonly string[];
  readonly claims?: Readonly<Record<string, unknown>>;
  readonly cert?: PeerCert;
}

export function mergeIdentity(allowed: readonly Allowed[]): Identity {
  const scopes = new Set<string>();
  for (const a of allowed) for (const s of a.identity.scopes) scopes.add(s);
  return {
    subject: allowed.find((a) => a.identity.subject !== undefined)?.identity.subject,
    keyId: allowed.find((a) => a.identity.keyId !== undefined)?.identity.keyId,
    scopes: [...scopes],
    methods: [...new Set(allowed.map((a) => a.auth.type))],
    authenticators: allowed.map((a) => a.auth.name),
    claims: allowed.find((a) => a.identity.claims)?.identity.claims,
    cert: allowed.find((a) => a.identity.cert)?.identity.cert,
  };
}
