// Client-certificate verification without a handshake, for `portcullis explain`.
// It mirrors the checks the TLS layer applies for a certificate issued directly
// by a CA in tls.clientAuth.ca: signature, validity, clientAuth purpose, CRL.
import { X509Certificate } from 'node:crypto';
import type { TlsTable } from './contexts.ts';
import { readCertificate } from './asn1.ts';
import { peerCert, type ClientCertVerdict } from './peer.ts';

const OID_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

export function verifyOffline(pem: string, tls: TlsTable, now: number): ClientCertVerdict {
  let x: X509Certificate;
  try { x = new X509Certificate(pem); } catch { return { present: true, verified: false, problem: 'unparseable', detail: 'not a PEM certificate' }; }
  const notBefore = Date.parse(x.validFrom), notAfter = Date.parse(x.validTo);
  const cert = peerCert(x.raw, notBefore, notAfter);
  const fail = (problem: ClientCertVerdict['problem'], detail: string): ClientCertVerdict => ({ present: true, verified: false, problem, detail, cert });
  const issuer = tls.trust.cas.find((ca) => x.checkIssued(ca) && x.verify(ca.publicKey));
  if (!issuer) return fail('untrusted', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE (no CA in tls.clientAuth.ca issued it)');
  if (now > notAfter) return fail('expired', 'CERT_HAS_EXPIRED');
  if (now < notBefore) return fail('not-yet-valid', 'CERT_NOT_YET_VALID');
  if (x.keyUsage && !x.keyUsage.includes(OID_CLIENT_AUTH)) return fail('wrong-purpose', 'INVALID_PURPOSE (no clientAuth extended key usage)');
  const f = readCertificate(x.raw);
  if (tls.trust.revoked.has(`${f.issuerDer.toString('hex')}/${f.serialHex}`)) return fail('revoked', 'CERT_REVOKED');
  return { present: true, verified: true, cert };
}
