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
// `tokens.certificates` (SPEC §7's second bullet) issues client certificates to callers
// it authenticates (typically with a bootstrap token): signed by an issuing CA that is one
// of tls.clientAuth's, with the caller's subject as CN, from the caller's CSR or from a key
// pair made for it and returned once. X.509 is built with @peculiar/x509 (WebCrypto),
// loaded on the first issuance.
import { X509Certificate, createHash, createPrivateKey, createPublicKey, randomBytes, randomUUID, webcrypto, type KeyObject } from 'node:crypto';
import { SignJWT, type JSONWebKeySet, type JWK } from 'jose';
import type { RawConfig, RawPolicy } from './config/schema.ts';
import type { ConfigIssue } from './errors.ts';
import { compilePolicies, type CompiledPolicy } from './pipeline/match.ts';
import type { Authenticator } from './authenticators/types.ts';
import type { Identity } from './pipeline/identity.ts';
import type { Decision } from './pipeline/decide.ts';

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

export interface CertificateIssuer {
  readonly path: string;
  /** The endpoint as a policy (authenticate, and the scopes the caller must hold). */
  readonly policy: CompiledPolicy;
  readonly caPem: string;
  readonly ca: X509Certificate;
  readonly key: KeyObject;
  readonly validityMs: number;
}

export interface CompiledTokens {
  readonly issuer: string;
  readonly audience: string;
  readonly signing: SigningKey;
  readonly jwksPath: string;
  readonly jwksBody: string;
  /** Entries by path, in config order. */
  readonly logins: ReadonlyMap<string, readonly LoginEntry[]>;
  readonly certificates?: CertificateIssuer;
  /** Every path Portcullis answers itself (JWKS, logins, certificates): one lookup per request. */
  readonly paths: ReadonlySet<string>;
}

/** The message of a ConfigError that `readFile` threw (a file that cannot be read), if that is what `e` is. */
const loadError = (e: unknown): string | undefined => (e as { issues?: ConfigIssue[] }).issues?.[0]?.message;

/**
 * Of two refusals, the one that says more: a credential that was presented and failed
 * (AUTH_004 for a wrong key) before one that was missing; else the earlier.
 */
export function tellingDenial(a: Decision | undefined, b: Decision): Decision {
  return !a || (!a.trace.some((x) => x.verdict === 'deny') && b.trace.some((x) => x.verdict === 'deny')) ? b : a;
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
    issues.push({ path, message: loadError(e) ?? `${raw.signingKey}: not a PEM private key (${(e as Error).message})` });
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

/** A requirement (and scopes) as a policy, its config issues placed at `base`. */
function entryPolicy(name: string, path: string, authenticate: RawPolicy['authenticate'], scopes: readonly string[] | undefined, base: (string | number)[], lookup: (name: string) => Authenticator | undefined, issues: ConfigIssue[]): CompiledPolicy {
  if (authenticate === 'none') issues.push({ path: [...base, 'authenticate'], message: 'must authenticate the caller: name an authenticator' });
  const rawPolicy = { name, match: { paths: [path], caseInsensitive: false }, authenticate, mode: 'enforce', ...(scopes ? { authorize: { scopes: { all: [...scopes] } } } : {}) } as RawPolicy;
  const errors: ConfigIssue[] = [];
  const [policy] = compilePolicies([rawPolicy], lookup, errors);
  // compilePolicies names `policies[0]`.
  issues.push(...errors.map((e) => ({ ...e, path: [...base, ...e.path.slice(2)] })));
  if (policy!.needsBody) issues.push({ path: [...base, 'authenticate'], message: 'cannot use an authenticator that reads the body (hmac)' });
  return policy!;
}

/** The issuing CA: a CA, with its key, and one of the CAs trusted for client certificates. */
function loadIssuer(raw: NonNullable<RawTokens['certificates']>, readFile: (p: string, path: readonly (string | number)[]) => string, trusted: readonly X509Certificate[], policy: CompiledPolicy, issues: ConfigIssue[]): CertificateIssuer | undefined {
  const base = ['tokens', 'certificates'];
  let ca: X509Certificate, caPem: string, key: KeyObject;
  try {
    caPem = readFile(raw.ca, [...base, 'ca']);
    ca = new X509Certificate(caPem);
  } catch (e) {
    issues.push({ path: [...base, 'ca'], message: loadError(e) ?? `${raw.ca}: not a PEM certificate` });
    return undefined;
  }
  try {
    key = createPrivateKey(readFile(raw.key, [...base, 'key']));
  } catch (e) {
    issues.push({ path: [...base, 'key'], message: loadError(e) ?? `${raw.key}: not a PEM private key` });
    return undefined;
  }
  if (!ca.ca) issues.push({ path: [...base, 'ca'], message: `${raw.ca} (${ca.subject.replaceAll('\n', ', ')}) is not a CA certificate` });
  if (!ca.checkPrivateKey(key)) issues.push({ path: [...base, 'key'], message: `${raw.key} does not match the certificate in ${raw.ca}` });
  if (!trusted.some((t) => t.fingerprint256 === ca.fingerprint256)) issues.push({ path: [...base, 'ca'], message: `${raw.ca} is not in tls.clientAuth.ca: certificates it issued would not be trusted for mTLS` });
  if (!['ec', 'rsa', 'ed25519'].includes(key.asymmetricKeyType ?? '') || (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve !== 'prime256v1')) {
    issues.push({ path: [...base, 'key'], message: `${raw.key}: use an EC P-256, RSA or Ed25519 key` });
  }
  return { path: raw.path, policy, caPem: caPem.trim() + '\n', ca, key, validityMs: raw.validityDays * 86_400_000 };
}

/** The login entries and the certificate endpoint as policies, once the authenticators exist. */
export function compileTokens(raw: RawTokens, signing: SigningKey, lookup: (name: string) => Authenticator | undefined, issues: ConfigIssue[], readFile: (p: string, path: readonly (string | number)[]) => string, trusted: readonly X509Certificate[]): CompiledTokens {
  const logins = new Map<string, LoginEntry[]>();
  raw.logins.forEach((l, i) => {
    const base = ['tokens', 'logins', i];
    if (l.path === raw.jwksPath) issues.push({ path: [...base, 'path'], message: `${l.path} is also tokens.jwksPath` });
    const list = logins.get(l.path) ?? [];
    const policy = entryPolicy(`login ${l.path} #${list.length}`, l.path, l.authenticate, undefined, base, lookup, issues);
    list.push({ policy, ttlSec: l.ttlSec, scopes: l.scopes });
    logins.set(l.path, list);
  });
  const c = raw.certificates;
  let certificates: CertificateIssuer | undefined;
  if (c) {
    const base = ['tokens', 'certificates'];
    if (c.path === raw.jwksPath || logins.has(c.path)) issues.push({ path: [...base, 'path'], message: `${c.path} is also a login or the JWKS path` });
    const policy = entryPolicy(`certificates ${c.path}`, c.path, c.authenticate, c.scopes, base, lookup, issues);
    certificates = loadIssuer(c, readFile, trusted, policy, issues);
  }
  return Object.freeze({
    issuer: raw.issuer, audience: raw.audience, signing, jwksPath: raw.jwksPath,
    jwksBody: JSON.stringify(signing.jwks), logins, certificates,
    paths: new Set([raw.jwksPath, ...logins.keys(), ...(certificates ? [certificates.path] : [])]),
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

let x509Module: Promise<typeof import('@peculiar/x509')> | undefined;
/** @peculiar/x509, on the first issuance only (it sets up reflect-metadata and tsyringe). */
function x509(): Promise<typeof import('@peculiar/x509')> {
  x509Module ??= import('@peculiar/x509').then((m) => { m.cryptoProvider.set(webcrypto as unknown as Crypto); return m; });
  return x509Module;
}

const signingKeys = new WeakMap<KeyObject, CryptoKey>();

/** WebCrypto's view of the CA key and the algorithm to sign with (made once per key). */
function caSigner(key: KeyObject): { alg: Algorithm | EcdsaParams | RsaHashedImportParams; cryptoKey: CryptoKey } {
  const type = key.asymmetricKeyType;
  const importAlg = type === 'ec' ? { name: 'ECDSA', namedCurve: 'P-256' } : type === 'rsa' ? { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } : { name: 'Ed25519' };
  const signAlg = type === 'ec' ? { name: 'ECDSA', hash: 'SHA-256' } : importAlg;
  let cryptoKey = signingKeys.get(key);
  if (!cryptoKey) {
    cryptoKey = key.toCryptoKey(importAlg, false, ['sign']) as unknown as CryptoKey;
    signingKeys.set(key, cryptoKey);
  }
  return { alg: signAlg, cryptoKey };
}

export class BadCsr extends Error {}

export interface IssuedCertificate {
  /** The JSON answer: certificate, caCertificate, privateKey (only when made here), notAfter. */
  readonly body: string;
  readonly serial: string;
  readonly notAfter: string;
  readonly generatedKey: boolean;
}

/**
 * A client certificate for `subject` (its CN; whatever subject a CSR asks for is ignored),
 * for the key in `csrPem`, or for a new EC P-256 key pair whose private key is returned.
 */
export async function issueCertificate(issuer: CertificateIssuer, subject: string, csrPem: string, now: number): Promise<IssuedCertificate> {
  const m = await x509();
  let publicKey: import('@peculiar/x509').PublicKey | CryptoKey;
  let privateKeyPem: string | undefined;
  if (csrPem.trim()) {
    let csr: import('@peculiar/x509').Pkcs10CertificateRequest;
    try { csr = new m.Pkcs10CertificateRequest(csrPem.trim()); } catch (e) { throw new BadCsr(`not a PEM certificate request (${(e as Error).message})`); }
    if (!(await csr.verify().catch(() => false))) throw new BadCsr('the certificate request is not signed by its own key');
    publicKey = csr.publicKey;
  } else {
    const pair = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']) as CryptoKeyPair;
    publicKey = pair.publicKey;
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', pair.privateKey)).toString('base64');
    privateKeyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.match(/.{1,64}/g)!.join('\n')}\n-----END PRIVATE KEY-----\n`;
  }
  const ca = new m.X509Certificate(issuer.caPem);
  const { alg, cryptoKey } = caSigner(issuer.key);
  // A positive 128-bit serial (RFC 5280 §4.1.2.2: at most 20 octets, non-negative).
  const serial = randomBytes(16);
  serial[0] = serial[0]! & 0x7f;
  const notBefore = new Date(now - 60_000);
  const notAfter = new Date(Math.min(now + issuer.validityMs, Date.parse(issuer.ca.validTo)));
  const cert = await m.X509CertificateGenerator.create({
    serialNumber: serial.toString('hex'),
    subject: [{ CN: [subject] }],
    issuer: ca.subjectName,
    notBefore,
    notAfter,
    signingAlgorithm: alg,
    publicKey,
    signingKey: cryptoKey,
    extensions: [
      new m.BasicConstraintsExtension(false, undefined, true),
      new m.KeyUsagesExtension(m.KeyUsageFlags.digitalSignature, true),
      new m.ExtendedKeyUsageExtension([m.ExtendedKeyUsage.clientAuth]),
      await m.SubjectKeyIdentifierExtension.create(publicKey),
      await m.AuthorityKeyIdentifierExtension.create(ca),
    ],
  });
  const body = JSON.stringify({ certificate: cert.toString('pem') + '\n', caCertificate: issuer.caPem, ...(privateKeyPem ? { privateKey: privateKeyPem } : {}), notAfter: notAfter.toISOString() });
  return { body, serial: cert.serialNumber, notAfter: notAfter.toISOString(), generatedKey: privateKeyPem !== undefined };
}
