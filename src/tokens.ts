// SPEC §7: Portcullis as the issuer of its own access tokens, for APIs such as the one in
// shared/seeds/000, where a client logs in with a bootstrap API key for a short-lived,
// narrowly scoped token, then with its client certificate for a production token bound
// to that certificate (RFC 8705 cnf["x5t#S256"]), refreshed the same way when it expires.
//
// `tokens.logins` are paths Portcullis answers itself (POST, never forwarded): the first
// entry for the path whose `authenticate` allows the request issues a token signed with
// `tokens.signingKey` (ES256 or EdDSA, kid = the key's RFC 7638 thumbprint). `jwksPath`
// serves the public key. A jwt authenticator with `jwks: { tokens: true }` verifies the
// tokens with that key, so the whole flow needs no other service.
//
// Not built here: certificate issuance (SPEC §7's second bullet). Clients' certificates
// come from the operator's CA, as for any mtls authenticator.
import { createHash, createPrivateKey, createPublicKey, randomUUID, type KeyObject } from 'node:crypto';
import { SignJWT, type JSONWebKeySet, type JWK } from 'jose';
import type { RawConfig, RawPolicy } from './config/schema.ts';
import type { ConfigIssue } from './errors.ts';
import { compilePolicies, type CompiledPolicy } from './pipeline/match.ts';
import type { Authenticator } from './authenticators/types.ts';
import type { Identity } from './pipeline/identity.ts';

type RawTokens = NonNullable<RawConfig['tokens']>;

export interface SigningKey {
  readonly key: KeyObject;
  readonly alg: 'ES256' | 'EdDSA';
  readonly kid: string;
  /** The public half, as served at `jwksPath` and trusted by `jwks: { tokens: true }`. */
  readonly jwks: JSONWebKeySet;
}

export interface LoginEntry {
  /** The entry as a policy (its requirement, authenticators), named `login <path> #<n>`. */
  readonly policy: CompiledPolicy;
  readonly ttlSec: number;
  readonly scopes?: readonly string[];
}

export interface CompiledTokens {
  readonly issuer: string;
  readonly audience: string;
  readonly signing: SigningKey;
  readonly jwksPath: string;
  readonly jwksBody: string;
  /** Entries by path, in config order. */
  readonly logins: ReadonlyMap<string, readonly LoginEntry[]>;
}

/** RFC 7638: SHA-256 over the required members in lexicographic order. */
function thumbprint(jwk: JWK): string {
  const members = jwk.kty === 'EC' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y } : { crv: jwk.crv, kty: jwk.kty, x: jwk.x };
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

/** The signing key, read and checked at load (the public JWKS is needed by jwt authenticators). */
export function loadSigningKey(raw: RawTokens, readFile: (p: string, path: readonly (string | number)[]) => string, issues: ConfigIssue[]): SigningKey | undefined {
  const path = ['tokens', 'signingKey'];
  let key: KeyObject;
  try {
    key = createPrivateKey(readFile(raw.signingKey, path));
  } catch (e) {
    issues.push({ path, message: (e as { issues?: ConfigIssue[] }).issues?.[0]?.message ?? `${raw.signingKey}: not a PEM private key (${(e as Error).message})` });
    return undefined;
  }
  const type = key.asymmetricKeyType;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  let alg: SigningKey['alg'];
  if (type === 'ec' && curve === 'prime256v1') alg = 'ES256';
  else if (type === 'ed25519') alg = 'EdDSA';
  else {
    issues.push({ path, message: `${raw.signingKey} is a ${type}${curve ? ` ${curve}` : ''} key: use EC P-256 (ES256) or Ed25519 (EdDSA)` });
    return undefined;
  }
  const jwk = createPublicKey(key).export({ format: 'jwk' }) as JWK;
  const kid = thumbprint(jwk);
  return { key, alg, kid, jwks: { keys: [{ ...jwk, kid, alg, use: 'sig' }] } };
}

/** The login entries as policies, once the authenticators exist. */
export function compileTokens(raw: RawTokens, signing: SigningKey, lookup: (name: string) => Authenticator | undefined, issues: ConfigIssue[]): CompiledTokens {
  const logins = new Map<string, LoginEntry[]>();
  raw.logins.forEach((l, i) => {
    const base = ['tokens', 'logins', i];
    if (l.path === raw.jwksPath) issues.push({ path: [...base, 'path'], message: `${l.path} is also tokens.jwksPath` });
    if (l.authenticate === 'none') issues.push({ path: [...base, 'authenticate'], message: 'a login must authenticate the caller: name an authenticator' });
    const list = logins.get(l.path) ?? [];
    const rawPolicy = { name: `login ${l.path} #${list.length}`, match: { paths: [l.path], caseInsensitive: false }, authenticate: l.authenticate, mode: 'enforce' } as RawPolicy;
    const errors: ConfigIssue[] = [];
    const [policy] = compilePolicies([rawPolicy], lookup, errors);
    // compilePolicies names `policies[0]`: this is tokens.logins[i].
    issues.push(...errors.map((e) => ({ ...e, path: [...base, ...e.path.slice(2)] })));
    if (policy!.needsBody) issues.push({ path: [...base, 'authenticate'], message: 'a login cannot use an authenticator that reads the body (hmac)' });
    list.push({ policy: policy!, ttlSec: l.ttlSec, scopes: l.scopes });
    logins.set(l.path, list);
  });
  return Object.freeze({
    issuer: raw.issuer, audience: raw.audience, signing, jwksPath: raw.jwksPath,
    jwksBody: JSON.stringify(signing.jwks), logins,
  });
}

export interface Issued {
  /** The OAuth 2.0 token response (RFC 6749 §5.1). */
  readonly body: string;
  readonly subject: string;
  readonly jti: string;
  readonly bound: boolean;
}

/**
 * Sign an access token (RFC 9068 `at+jwt`) for `identity`. Bound to the client certificate
 * (cnf["x5t#S256"], RFC 8705) when the login was authenticated by it.
 */
export async function issueToken(t: CompiledTokens, entry: LoginEntry, identity: Identity, now: number): Promise<Issued | undefined> {
  const subject = identity.subject ?? identity.keyId;
  if (subject === undefined) return undefined;
  const scopes = entry.scopes ?? identity.scopes;
  const bound = identity.methods.includes('mtls') && identity.cert !== undefined;
  const iat = Math.floor(now / 1000);
  const jti = randomUUID();
  const token = await new SignJWT({
    scope: scopes.join(' '),
    ...(bound ? { cnf: { 'x5t#S256': identity.cert!.x5tS256 } } : {}),
    ...(identity.keyId !== undefined ? { client_id: identity.keyId } : {}),
  })
    .setProtectedHeader({ alg: t.signing.alg, kid: t.signing.kid, typ: 'at+jwt' })
    .setIssuer(t.issuer)
    .setAudience(t.audience)
    .setSubject(subject)
    .setIssuedAt(iat)
    .setNotBefore(iat)
    .setExpirationTime(iat + entry.ttlSec)
    .setJti(jti)
    .sign(t.signing.key);
  const body = JSON.stringify({ access_token: token, token_type: 'Bearer', expires_in: entry.ttlSec, scope: scopes.join(' ') });
  return { body, subject, jti, bound };
}
