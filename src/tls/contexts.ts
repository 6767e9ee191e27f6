// Server certificates by SNI, and the client-certificate trust settings, built
// once per config load. The server swaps the whole table on reload.
import { readFileSync } from 'node:fs';
import { X509Certificate, createHash, createPrivateKey, randomBytes, verify, constants as C, type KeyObject } from 'node:crypto';
import { createSecureContext, type SecureContext, type SecureContextOptions } from 'node:tls';
import { isIP } from 'node:net';
import type { ConfigIssue } from '../errors.ts';
import type { OcspChecker } from './ocsp.ts';
import { isUrl, type CrlSources } from './crlfetch.ts';
import { crlSignature, pemBlocks, readCertificate, readCrl, nameToString, toPem } from './asn1.ts';

// TLS 1.3: the three AEAD suites, AES-128-GCM first as in TLS 1.2 below and in Mozilla's
// intermediate profile (OpenSSL's own order puts AES-256 first). The key exchange (X25519,
// P-256) gives 128-bit security either way, and the SHA-256 key schedule costs ~1.3 % less
// of a full handshake than SHA-384 (bench/RESULTS.md, thirteenth round).
const TLS13_SUITES = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'];
// TLS 1.2: ECDHE key exchange with AEAD ciphers only (BCP 195 / RFC 9325).
const TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384', 'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305', 'ECDHE-RSA-CHACHA20-POLY1305',
];
/** Node's `ciphers` option: names starting with TLS_ set the TLS 1.3 suites, the rest TLS 1.2's. */
const CIPHERS = [...TLS13_SUITES, ...TLS12_CIPHERS].join(':');

const SECURE_OPTIONS = C.SSL_OP_NO_RENEGOTIATION | C.SSL_OP_NO_COMPRESSION | C.SSL_OP_CIPHER_SERVER_PREFERENCE;

export interface ServerCertificate {
  readonly hosts: readonly string[];
  readonly certFile: string;
  readonly keyFile: string;
  readonly notAfter: number;
  readonly subject: string;
  readonly context: SecureContext;
  readonly options: SecureContextOptions;
}

export interface TlsTable {
  /** Options for the listener's default context (first certificate). */
  readonly defaultOptions: SecureContextOptions;
  readonly certificates: readonly ServerCertificate[];
  /** The context for an SNI name; undefined means refuse the handshake. */
  lookup(servername: string): SecureContext | undefined;
  /** Metric label for an SNI name: the configured host it matched, "other" or "none". */
  labelFor(servername: string | undefined): string;
  readonly requestCert: boolean;
  readonly minVersion: 'TLSv1.2' | 'TLSv1.3';
  readonly sessionTimeoutSec: number;
  readonly ticketKeys: Buffer;
  readonly clientCas: readonly { subject: string; notAfter: number }[];
  readonly crls: readonly { issuer: string; nextUpdate?: number }[];
  /** Parsed trust material, for `explain` (which verifies without a handshake). */
  readonly trust: { readonly cas: readonly X509Certificate[]; readonly revoked: ReadonlySet<string> };
  /** Fingerprint of the client-certificate trust (CAs and CRLs): a change re-judges live connections. */
  readonly trustKey: string;
  readonly files: readonly string[];
  /** OCSP checking of client certificates (tls.clientAuth.ocsp), when configured. */
  readonly ocsp?: OcspChecker;
  /** CRLs fetched by URL (tls.clientAuth.crl), refreshed every crlRefreshSec. */
  readonly crlUrls: readonly string[];
  readonly crlRefreshSec: number;
}

export interface TlsInput {
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  certificates: { hosts: string[]; cert: string; key: string }[];
  unknownSni: 'reject' | 'default';
  sessionTimeoutSec: number;
  clientAuth?: { ca: string; crl?: string | string[]; crlRefreshSec?: number };
}

function read(file: string, path: (string | number)[], issues: ConfigIssue[], shown: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    issues.push({ path, message: `cannot read ${shown}: ${(e as NodeJS.ErrnoException).code ?? e}` });
    return undefined;
  }
}

export function buildTls(input: TlsInput, resolvePath: (p: string) => string, now: number, issues: ConfigIssue[], sources?: CrlSources): TlsTable | undefined {
  const files: string[] = [];
  const crlUrls: string[] = [];
  // Fresh per load: sessions from an older trust configuration never resume.
  const ticketKeys = randomBytes(48);
  const sessionIdContext = randomBytes(16).toString('hex');

  let ca: string | undefined;
  let crl: string[] | undefined;
  const clientCas: { subject: string; notAfter: number }[] = [];
  const crls: { issuer: string; nextUpdate?: number }[] = [];
  const trustCas: X509Certificate[] = [];
  const revoked = new Set<string>();
  if (input.clientAuth) {
    const caFile = resolvePath(input.clientAuth.ca);
    files.push(caFile);
    ca = read(caFile, ['tls', 'clientAuth', 'ca'], issues, input.clientAuth.ca);
    const caFields: { subject: string; subjectDer: Buffer; isCA: boolean }[] = [];
    if (ca !== undefined) {
      const blocks = pemBlocks(ca, 'CERTIFICATE');
      if (!blocks.length) issues.push({ path: ['tls', 'clientAuth', 'ca'], message: `${input.clientAuth.ca} holds no PEM certificate` });
      for (const der of blocks) {
        try {
          const x = new X509Certificate(der);
          const f = readCertificate(der);
          const subject = nameToString(f.subjectAttrs);
          caFields.push({ subject, subjectDer: f.subjectDer, isCA: f.isCA });
          clientCas.push({ subject, notAfter: Date.parse(x.validTo) });
          trustCas.push(x);
          if (!f.isCA) issues.push({ path: ['tls', 'clientAuth', 'ca'], message: `${subject} in ${input.clientAuth.ca} is not a CA certificate (basicConstraints CA:TRUE)` });
        } catch (e) {
          issues.push({ path: ['tls', 'clientAuth', 'ca'], message: `${input.clientAuth.ca}: unparseable certificate (${(e as Error).message})` });
        }
      }
    }
    if (input.clientAuth.crl !== undefined) {
      const list = Array.isArray(input.clientAuth.crl) ? input.clientAuth.crl : [input.clientAuth.crl];
      crl = [];
      const issuers: Buffer[] = [];
      list.forEach((name, i) => {
        const path = Array.isArray(input.clientAuth!.crl) ? ['tls', 'clientAuth', 'crl', i] : ['tls', 'clientAuth', 'crl'];
        let text: string | undefined;
        if (isUrl(name)) {
          // Fetched, not read: src/tls/crlfetch.ts. A URL is logged with fetch failures, so it carries no credentials.
          let u: URL | undefined;
          try { u = new URL(name); } catch { /* below */ }
          if (!u || u.username || u.password) { issues.push({ path, message: `${u ? 'a CRL URL must not carry credentials' : 'not a URL'}` }); return; }
          crlUrls.push(name);
          const got = sources?.lookup(name) ?? { error: 'CRLs by URL are not fetched here' };
          if ('error' in got) { issues.push({ path, message: got.error }); return; }
          text = got.pem;
        } else {
          const file = resolvePath(name);
          files.push(file);
          text = read(file, path, issues, name);
        }
        if (text === undefined) return;
        const blocks = pemBlocks(text, 'X509 CRL');
        if (!blocks.length) { issues.push({ path, message: `${name} holds no PEM CRL (-----BEGIN X509 CRL-----)` }); return; }
        for (const der of blocks) {
          // Node parses one CRL per string: a bundle file becomes one entry per CRL.
          crl!.push(toPem(der, 'X509 CRL'));
          try {
            const c = readCrl(der);
            issuers.push(c.issuerDer);
            const issuer = nameToString(c.issuerAttrs);
            // A CRL its CA did not sign makes OpenSSL refuse every certificate of that CA
            // (CRL_SIGNATURE_FAILURE): say so now, and a reload keeps the CRL that serves.
            const ca = trustCas.find((x) => readCertificate(x.raw).subjectDer.equals(c.issuerDer));
            const signed = crlSignature(der);
            if (ca && signed && !verify(signed.digest, signed.tbs, ca.publicKey, signed.signature)) {
              issues.push({ path, message: `CRL of ${issuer} in ${name} is not signed by that CA's key (every certificate of that CA would be refused)` });
            }
            crls.push({ issuer, nextUpdate: c.nextUpdate?.getTime() });
            for (const s of c.revokedSerials) revoked.add(`${c.issuerDer.toString('hex')}/${s}`);
            if (c.nextUpdate && c.nextUpdate.getTime() < now) {
              issues.push({ path, message: `CRL of ${issuer} in ${name} expired at ${c.nextUpdate.toISOString()} (every certificate of that CA would be refused)` });
            }
          } catch (e) {
            issues.push({ path, message: `${name}: unparseable CRL (${(e as Error).message})` });
          }
        }
      });
      // OpenSSL checks revocation for every CA in the chain; a CA without its own
      // CRL makes every certificate it issued fail with UNABLE_TO_GET_CRL.
      for (const c of caFields) {
        if (c.isCA && !issuers.some((d) => d.equals(c.subjectDer))) {
          issues.push({ path: ['tls', 'clientAuth', 'crl'], message: `no CRL for CA "${c.subject}": when CRLs are configured, each CA in tls.clientAuth.ca needs its own CRL` });
        }
      }
    }
  }

  const base: SecureContextOptions = {
    minVersion: input.minVersion,
    ciphers: CIPHERS,
    honorCipherOrder: true,
    secureOptions: SECURE_OPTIONS,
    sessionIdContext,
    ticketKeys,
    ...(ca !== undefined ? { ca } : {}),
    ...(crl?.length ? { crl } : {}),
  };

  const certificates: ServerCertificate[] = [];
  const exact = new Map<string, SecureContext>();
  const wild = new Map<string, SecureContext>();
  input.certificates.forEach((c, i) => {
    const certFile = resolvePath(c.cert), keyFile = resolvePath(c.key);
    files.push(certFile, keyFile);
    const certPem = read(certFile, ['tls', 'certificates', i, 'cert'], issues, c.cert);
    const keyPem = read(keyFile, ['tls', 'certificates', i, 'key'], issues, c.key);
    if (certPem === undefined || keyPem === undefined) return;
    let x: X509Certificate, key: KeyObject;
    try { x = new X509Certificate(certPem); } catch (e) { issues.push({ path: ['tls', 'certificates', i, 'cert'], message: `${c.cert}: not a PEM certificate (${(e as Error).message})` }); return; }
    try { key = createPrivateKey(keyPem); } catch (e) { issues.push({ path: ['tls', 'certificates', i, 'key'], message: `${c.key}: not a PEM private key (${(e as Error).message})` }); return; }
    if (!x.checkPrivateKey(key)) { issues.push({ path: ['tls', 'certificates', i, 'key'], message: `${c.key} does not match the certificate in ${c.cert}` }); return; }
    if (Date.parse(x.validTo) < now) issues.push({ path: ['tls', 'certificates', i, 'cert'], message: `${c.cert} expired at ${new Date(x.validTo).toISOString()}` });
    if (Date.parse(x.validFrom) > now) issues.push({ path: ['tls', 'certificates', i, 'cert'], message: `${c.cert} is not valid before ${new Date(x.validFrom).toISOString()}` });
    // A name the certificate does not cover fails every client that checks it (catalogue CERT-06);
    // a reload with such a certificate keeps the one that serves.
    const covers = (h: string) => isIP(h) ? x.checkIP(h) !== undefined
      : x.checkHost(h.startsWith('*.') ? `portcullis-check${h.slice(1)}` : h.replace(/\.$/, ''), { wildcards: true, singleLabelSubdomains: false }) !== undefined;
    const uncovered = c.hosts.filter((h) => !covers(h));
    if (uncovered.length) issues.push({ path: ['tls', 'certificates', i, 'hosts'], message: `${c.cert} does not cover ${uncovered.join(', ')} (it names ${x.subjectAltName ?? x.subject.replace(/\n/g, ', ')})` });
    const options: SecureContextOptions = { ...base, cert: certPem, key: keyPem };
    let context: SecureContext;
    try { context = createSecureContext(options); } catch (e) { issues.push({ path: ['tls', 'certificates', i], message: `TLS context: ${(e as Error).message}` }); return; }
    for (const h of c.hosts) {
      const name = h.toLowerCase().replace(/\.$/, '');
      const table = name.startsWith('*.') ? wild : exact;
      const key2 = name.startsWith('*.') ? name.slice(2) : name;
      if (table.has(key2)) issues.push({ path: ['tls', 'certificates', i, 'hosts'], message: `host ${h} is listed for two certificates` });
      else table.set(key2, context);
    }
    certificates.push({ hosts: c.hosts, certFile, keyFile, notAfter: Date.parse(x.validTo), subject: x.subject.replace(/\n/g, ','), context, options });
  });
  if (!certificates.length) return undefined;

  const fallback = input.unknownSni === 'default' ? certificates[0]!.context : undefined;
  return {
    defaultOptions: certificates[0]!.options,
    certificates,
    lookup(servername: string): SecureContext | undefined {
      const name = servername.toLowerCase().replace(/\.$/, '');
      const hit = exact.get(name);
      if (hit) return hit;
      const dot = name.indexOf('.');
      if (dot > 0) { const w = wild.get(name.slice(dot + 1)); if (w) return w; }
      return fallback;
    },
    labelFor(servername: string | undefined): string {
      if (!servername) return 'none';
      const name = servername.toLowerCase().replace(/\.$/, '');
      if (exact.has(name)) return name;
      const dot = name.indexOf('.');
      if (dot > 0 && wild.has(name.slice(dot + 1))) return '*.' + name.slice(dot + 1);
      return 'other';
    },
    requestCert: ca !== undefined,
    minVersion: input.minVersion,
    sessionTimeoutSec: input.sessionTimeoutSec,
    ticketKeys,
    clientCas,
    crls,
    trust: { cas: trustCas, revoked },
    trustKey: createHash('sha256').update(ca ?? '').update('\0').update((crl ?? []).join('\0')).digest('hex'),
    files,
    crlUrls,
    crlRefreshSec: input.clientAuth?.crlRefreshSec ?? 300,
  };
}
