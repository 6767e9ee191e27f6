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
  if (allowed.length === 1) {
    // One authenticator allowed the request: nothing to merge.
    const { auth, identity: id } = allowed[0]!;
    return { subject: id.subject, keyId: id.keyId, scopes: id.scopes, methods: [auth.type], authenticators: [auth.name], claims: id.claims, cert: id.cert };
  }
  let subject: string | undefined, keyId: string | undefined, claims: Identity['claims'], cert: PeerCert | undefined;
  const scopes = new Set<string>();
  const methods: string[] = [], authenticators: string[] = [];
  for (const a of allowed) {
    const id = a.identity;
    subject ??= id.subject;
    keyId ??= id.keyId;
    claims ??= id.claims;
    cert ??= id.cert;
    for (const s of id.scopes) scopes.add(s);
    if (!methods.includes(a.auth.type)) methods.push(a.auth.type);
    authenticators.push(a.auth.name);
  }
  return { subject, keyId, scopes: [...scopes], methods, authenticators, claims, cert };
}
