// Certificates and CRLs for development and tests (`portcullis certs dev`).
// Keys come from Node's crypto (fast); node-forge builds and signs the X.509.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync, chmodSync, existsSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';
import forge from 'node-forge';
import { toPem } from './asn1.ts';

const { pki, asn1 } = forge;

export interface Issued {
  readonly certPem: string;
  readonly keyPem: string;
  readonly cert: forge.pki.Certificate;
  readonly key: forge.pki.rsa.PrivateKey;
  readonly serial: string;
}

export interface CertSpec {
  cn: string;
  ou?: string[];
  o?: string;
  issuer?: Issued;
  ca?: boolean;
  /** basicConstraints pathLenConstraint of a CA. */
  pathLen?: number;
  notBefore?: Date;
  notAfter?: Date;
  dns?: string[];
  uris?: string[];
  emails?: string[];
  ips?: string[];
  /** Extended key usage; default serverAuth+clientAuth for leaves, none for CAs. */
  eku?: ('serverAuth' | 'clientAuth')[];
  /** Extra subject attributes in forge form, e.g. a CN with control characters. */
  subjectOverride?: forge.pki.CertificateField[];
}

const DAY = 86_400_000;

export function issue(spec: CertSpec): Issued {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keyPem = privateKey.export({ type: 'pkcs1', format: 'pem' }) as string;
  const key = pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const cert = pki.createCertificate();
  cert.publicKey = pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }) as string);
  // Positive, non-zero, 16 bytes.
  const serialBytes = randomBytes(16);
  serialBytes[0] = (serialBytes[0]! & 0x7f) | 0x01;
  cert.serialNumber = serialBytes.toString('hex');
  const now = Date.now();
  cert.validity.notBefore = spec.notBefore ?? new Date(now - DAY);
  cert.validity.notAfter = spec.notAfter ?? new Date(now + 365 * DAY);
  const subject: forge.pki.CertificateField[] = spec.subjectOverride ?? [
    ...(spec.o ? [{ name: 'organizationName', value: spec.o }] : []),
    ...(spec.ou ?? []).map((v) => ({ name: 'organizationalUnitName', value: v })),
    { name: 'commonName', value: spec.cn, valueTagClass: asn1.Type.UTF8 as unknown as forge.asn1.Class },
  ];
  cert.setSubject(subject);
  cert.setIssuer(spec.issuer ? spec.issuer.cert.subject.attributes : subject);
  const exts: any[] = [];
  if (spec.ca) {
    exts.push({ name: 'basicConstraints', cA: true, critical: true, ...(spec.pathLen !== undefined ? { pathLenConstraint: spec.pathLen } : {}) });
    exts.push({ name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true });
  } else {
    exts.push({ name: 'basicConstraints', cA: false });
    exts.push({ name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true });
    const eku = spec.eku ?? ['serverAuth', 'clientAuth'];
    if (eku.length) exts.push({ name: 'extKeyUsage', serverAuth: eku.includes('serverAuth'), clientAuth: eku.includes('clientAuth') });
  }
  const alt = [
    ...(spec.dns ?? []).map((value) => ({ type: 2, value })),
    ...(spec.uris ?? []).map((value) => ({ type: 6, value })),
    ...(spec.emails ?? []).map((value) => ({ type: 1, value })),
    ...(spec.ips ?? []).map((ip) => ({ type: 7, ip })),
  ];
  if (alt.length) exts.push({ name: 'subjectAltName', altNames: alt });
  exts.push({ name: 'subjectKeyIdentifier' });
  cert.setExtensions(exts);
  cert.sign(spec.issuer ? spec.issuer.key : key, forge.md.sha256.create());
  return { certPem: pki.certificateToPem(cert), keyPem, cert, key, serial: cert.serialNumber };
}

/** A v2 CRL signed by `ca`, revoking the given serials (hex). */
export function makeCrl(ca: Issued, revokedSerials: string[], opts: { thisUpdate?: Date; nextUpdate?: Date } = {}): string {
  const now = Date.now();
  const thisUpdate = opts.thisUpdate ?? new Date(now - 60_000);
  const nextUpdate = opts.nextUpdate ?? new Date(now + 7 * DAY);
  const sigAlg = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(pki.oids.sha256WithRSAEncryption!).getBytes()),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, ''),
  ]);
  const time = (d: Date) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTCTIME, false, asn1.dateToUtcTime(d));
  const revoked = revokedSerials.map((s) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, forge.util.hexToBytes(s)),
    time(thisUpdate),
  ]));
  const tbs = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(1).getBytes()),
    sigAlg,
    pki.distinguishedNameToAsn1(ca.cert.subject),
    time(thisUpdate),
    time(nextUpdate),
    ...(revoked.length ? [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, revoked)] : []),
  ]);
  const md = forge.md.sha256.create();
  md.update(asn1.toDer(tbs).getBytes());
  const signature = ca.key.sign(md);
  const crl = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    tbs, sigAlg, asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, String.fromCharCode(0) + signature),
  ]);
  return toPem(Buffer.from(asn1.toDer(crl).getBytes(), 'binary'), 'X509 CRL');
}

export interface DevPki { dir: string; files: Record<string, string> }

/**
 * `mkdir -p`, one level at a time. Node's `recursive: true` spins for ever where mkdir answers
 * ENOENT under a parent that exists (anything under /proc or /sys); this throws that ENOENT.
 */
function makeDirs(dir: string): void {
  const missing: string[] = [];
  for (let d = resolve(dir); !existsSync(d); d = dirname(d)) {
    missing.unshift(d);
    if (dirname(d) === d) break;
  }
  for (const d of missing) mkdirSync(d);
}

/** `portcullis certs dev`: a CA, a server certificate for the hosts, a client certificate, an empty CRL. */
export function writeDevPki(dir: string, hosts: string[]): DevPki {
  makeDirs(dir);
  const ca = issue({ cn: 'Portcullis Dev CA', o: 'Portcullis dev', ca: true, notAfter: new Date(Date.now() + 3650 * DAY) });
  const dns = hosts.filter((h) => !/^[\d.]+$|:/.test(h));
  const ips = hosts.filter((h) => /^[\d.]+$|:/.test(h));
  const server = issue({ cn: dns[0] ?? 'localhost', issuer: ca, dns, ips, eku: ['serverAuth'] });
  const client = issue({ cn: 'dev-client', ou: ['dev'], o: 'Portcullis dev', issuer: ca, uris: ['spiffe://portcullis.dev/client/dev-client'], eku: ['clientAuth'] });
  const files: Record<string, string> = {
    'ca.crt': ca.certPem, 'ca.key': ca.keyPem, 'ca.crl': makeCrl(ca, [], { nextUpdate: new Date(Date.now() + 365 * DAY) }),
    'server.crt': server.certPem, 'server.key': server.keyPem,
    'client.crt': client.certPem, 'client.key': client.keyPem,
  };
  for (const [name, content] of Object.entries(files)) {
    const p = join(dir, name);
    writeFileSync(p, content, { mode: name.endsWith('.key') ? 0o600 : 0o644 });
    if (name.endsWith('.key')) chmodSync(p, 0o600);
  }
  return { dir, files };
}
