// The client certificate of a connection, parsed once and frozen, and the
// verification verdict OpenSSL reached for it.
import { createHash, type X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { LRUCache } from 'lru-cache';
import { readCertificate, nameToString } from './asn1.ts';

export interface PeerCert {
  /** RFC 4514 distinguished name, control characters escaped. */
  readonly subject: string;
  readonly cn?: string;
  readonly ou: readonly string[];
  readonly dns: readonly string[];
  readonly uris: readonly string[];
  readonly emails: readonly string[];
  /** SHA-256 of the DER, lower-case hex: the RFC 8705 x5t#S256 and XFCC Hash. */
  readonly fingerprint: string;
  /** base64url SHA-256 thumbprint, as in a token's cnf["x5t#S256"]. */
  readonly x5tS256: string;
  readonly der: Buffer;
  readonly notBefore: number;
  readonly notAfter: number;
}

/** Why a presented certificate was refused; each maps to one error code in the mtls authenticator. */
export type CertProblem = 'expired' | 'not-yet-valid' | 'untrusted' | 'revoked' | 'revocation-unknown' | 'wrong-purpose' | 'unparseable' | 'invalid';

export interface ClientCertVerdict {
  readonly present: boolean;
  readonly verified: boolean;
  readonly problem?: CertProblem;
  /** OpenSSL's verify code, for the log. */
  readonly detail?: string;
  readonly cert?: PeerCert;
}

export interface ConnectionInfo {
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** Lower-case SNI without a trailing dot, when the client sent one. */
  readonly sni?: string;
  readonly tlsVersion?: string;
  readonly resumed: boolean;
  readonly clientCert: ClientCertVerdict;
  /** The client-certificate trust (TlsTable.trustKey) the verdict was reached under. */
  readonly trust?: string;
}

const OPENSSL_PROBLEMS: Record<string, CertProblem> = {
  CERT_HAS_EXPIRED: 'expired',
  CERT_NOT_YET_VALID: 'not-yet-valid',
  CERT_REVOKED: 'revoked',
  UNABLE_TO_GET_CRL: 'revocation-unknown',
  CRL_HAS_EXPIRED: 'revocation-unknown',
  CRL_NOT_YET_VALID: 'revocation-unknown',
  CRL_SIGNATURE_FAILURE: 'revocation-unknown',
  UNABLE_TO_DECRYPT_CRL_SIGNATURE: 'revocation-unknown',
  INVALID_PURPOSE: 'wrong-purpose',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'untrusted',
  UNABLE_TO_GET_ISSUER_CERT: 'untrusted',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'untrusted',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'untrusted',
  SELF_SIGNED_CERT_IN_CHAIN: 'untrusted',
  CERT_SIGNATURE_FAILURE: 'untrusted',
  CERT_UNTRUSTED: 'untrusted',
  CERT_CHAIN_TOO_LONG: 'untrusted',
  PATH_LENGTH_EXCEEDED: 'untrusted',
  INVALID_CA: 'untrusted',
};

export function problemOf(opensslCode: string): CertProblem {
  return OPENSSL_PROBLEMS[opensslCode] ?? 'invalid';
}

// Parsing a certificate is the costly part; the same clients reconnect often.
const certCache = new LRUCache<string, PeerCert>({ max: 10_000 });

export function peerCert(der: Buffer, notBefore: number, notAfter: number): PeerCert {
  const fpBuf = createHash('sha256').update(der).digest();
  const fingerprint = fpBuf.toString('hex');
  const hit = certCache.get(fingerprint);
  if (hit) return hit;
  const f = readCertificate(der);
  const cert: PeerCert = Object.freeze({
    subject: nameToString(f.subjectAttrs),
    cn: f.subjectAttrs.findLast((a) => a.type === 'CN')?.value,
    ou: Object.freeze(f.subjectAttrs.filter((a) => a.type === 'OU').map((a) => a.value)),
    dns: Object.freeze([...f.dns]), uris: Object.freeze([...f.uris]), emails: Object.freeze([...f.emails]),
    fingerprint, x5tS256: fpBuf.toString('base64url'), der, notBefore, notAfter,
  });
  certCache.set(fingerprint, cert);
  return cert;
}

// The same certificate, by OpenSSL's own SHA-256 fingerprint: a reconnecting client
// costs no DER copy, no date parsing and no hashing in JavaScript.
const byFingerprint = new LRUCache<string, PeerCert>({ max: 10_000 });

function peerCertOf(x509: X509Certificate): PeerCert {
  const key = x509.fingerprint256;
  const hit = byFingerprint.get(key);
  if (hit) return hit;
  const cert = peerCert(x509.raw, Date.parse(x509.validFrom), Date.parse(x509.validTo));
  byFingerprint.set(key, cert);
  return cert;
}

function normaliseSni(name: string | false | undefined): string | undefined {
  if (!name) return undefined;
  return name.toLowerCase().replace(/\.$/, '');
}

/**
 * Built once per TLS connection, at 'secureConnection', and frozen.
 *
 * Session resumption: a resumed session carries the certificate and OpenSSL
 * verdict of the handshake that created it (in Node even across SNI names,
 * the CVE-2025-23419 class). That verdict is safe to reuse here because
 * (1) client-certificate trust (tls.clientAuth) is one setting for every SNI
 * name, so a full handshake under any name reaches the same verdict; (2) every
 * config load installs fresh ticket keys and a fresh session-id context, so a
 * session from an older trust configuration cannot resume; and (3) validity
 * dates are re-checked below against the clock, since a session may outlive
 * the certificate.
 */
export function connectionInfo(socket: TLSSocket, now: number, trust?: string): ConnectionInfo {
  const resumed = socket.isSessionReused();
  const x509 = socket.getPeerX509Certificate();
  let clientCert: ClientCertVerdict;
  if (!x509) {
    clientCert = { present: false, verified: false };
  } else {
    let cert: PeerCert | undefined;
    try {
      cert = peerCertOf(x509);
    } catch {
      cert = undefined;
    }
    const err = socket.authorizationError;
    if (!cert) clientCert = { present: true, verified: false, problem: 'unparseable', detail: 'certificate fields could not be parsed' };
    else if (!socket.authorized) {
      const code = typeof err === 'string' ? err : (err as unknown as { code?: string } | null)?.code ?? String(err);
      clientCert = { present: true, verified: false, problem: problemOf(code), detail: code, cert };
    } else if (now > cert.notAfter) clientCert = { present: true, verified: false, problem: 'expired', detail: 'CERT_HAS_EXPIRED (resumed session)', cert };
    else if (now < cert.notBefore) clientCert = { present: true, verified: false, problem: 'not-yet-valid', detail: 'CERT_NOT_YET_VALID (resumed session)', cert };
    else clientCert = { present: true, verified: true, cert };
  }
  return Object.freeze({
    remoteAddress: socket.remoteAddress ?? '',
    remotePort: socket.remotePort ?? 0,
    sni: normaliseSni((socket as TLSSocket & { servername?: string | false }).servername),
    tlsVersion: socket.getProtocol() ?? undefined,
    resumed,
    clientCert: Object.freeze(clientCert),
    trust,
  });
}
