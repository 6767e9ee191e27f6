// Small DER readers over node-forge's ASN.1 parser, for the certificate and CRL
// fields we need. We never split Node's formatted subject/SAN strings (the
// ambiguity behind CVE-2021-44532/44533): every value comes from its own ASN.1 node.
import forge from 'node-forge';

const { asn1 } = forge;
type Node = forge.asn1.Asn1;

const ATTR_NAMES: Record<string, string> = {
  '2.5.4.3': 'CN', '2.5.4.11': 'OU', '2.5.4.10': 'O', '2.5.4.6': 'C', '2.5.4.7': 'L', '2.5.4.8': 'ST',
  '2.5.4.9': 'STREET', '2.5.4.5': 'SERIALNUMBER', '0.9.2342.19200300.100.1.25': 'DC',
  '0.9.2342.19200300.100.1.1': 'UID', '1.2.840.113549.1.9.1': 'emailAddress',
};

export function parseDer(der: Uint8Array): Node {
  return asn1.fromDer(forge.util.createBuffer(Buffer.from(der).toString('binary')), { strict: true, decodeBitStrings: false } as unknown as boolean);
}

export function derOf(node: Node): Buffer {
  return Buffer.from(asn1.toDer(node).getBytes(), 'binary');
}

function children(n: Node): Node[] {
  return Array.isArray(n.value) ? (n.value as Node[]) : [];
}

function bytes(n: Node): Buffer {
  return Buffer.from(typeof n.value === 'string' ? n.value : '', 'binary');
}

/** A directory string value decoded by its ASN.1 type. */
function stringValue(n: Node): string {
  const b = bytes(n);
  switch (n.type) {
    case asn1.Type.UTF8: return b.toString('utf8');
    case asn1.Type.BMPSTRING: {
      let s = '';
      for (let i = 0; i + 1 < b.length; i += 2) s += String.fromCharCode(b.readUInt16BE(i));
      return s;
    }
    default: return b.toString('latin1');
  }
}

export interface NameAttr { readonly type: string; readonly value: string }

/** Name → ordered attributes (RDNSequence order, most significant first). */
export function readName(name: Node): NameAttr[] {
  const out: NameAttr[] = [];
  for (const rdn of children(name)) {
    for (const atv of children(rdn)) {
      const [oid, val] = children(atv);
      if (!oid || !val) continue;
      const id = asn1.derToOid(forge.util.createBuffer(bytes(oid).toString('binary')));
      out.push({ type: ATTR_NAMES[id] ?? id, value: stringValue(val) });
    }
  }
  return out;
}

/** RFC 4514 string: least significant RDN first, special and control characters escaped. */
export function nameToString(attrs: readonly NameAttr[]): string {
  return [...attrs].reverse().map((a) => `${a.type}=${escapeDnValue(a.value)}`).join(',');
}

function escapeDnValue(v: string): string {
  let out = '';
  for (let i = 0; i < v.length; i++) {
    const c = v[i]!;
    const code = c.charCodeAt(0);
    if (code < 0x20 || code === 0x7f) out += '\\' + code.toString(16).padStart(2, '0');
    else if (',+"\\<>;='.includes(c) || (i === 0 && (c === '#' || c === ' ')) || (i === v.length - 1 && c === ' ')) out += '\\' + c;
    else out += c;
  }
  return out;
}

export interface CertFields {
  readonly subjectAttrs: readonly NameAttr[];
  readonly subjectDer: Buffer;
  readonly issuerDer: Buffer;
  readonly serialHex: string;
  readonly dns: readonly string[];
  readonly uris: readonly string[];
  readonly emails: readonly string[];
  readonly ips: readonly string[];
  readonly isCA: boolean;
}

const OID_SAN = '2.5.29.17';
const OID_BASIC_CONSTRAINTS = '2.5.29.19';

export function readCertificate(der: Uint8Array): CertFields {
  const root = parseDer(der);
  const tbs = children(root)[0];
  if (!tbs) throw new Error('not a certificate');
  const f = children(tbs);
  const off = f[0] && f[0].tagClass === asn1.Class.CONTEXT_SPECIFIC && f[0].type === 0 ? 1 : 0;
  const serial = f[off], issuer = f[off + 2], subject = f[off + 4];
  if (!serial || !issuer || !subject) throw new Error('truncated certificate');
  const dns: string[] = [], uris: string[] = [], emails: string[] = [], ips: string[] = [];
  let isCA = false;
  for (const el of f.slice(off + 6)) {
    if (el.tagClass !== asn1.Class.CONTEXT_SPECIFIC || el.type !== 3) continue;
    for (const ext of children(children(el)[0] ?? el)) {
      const parts = children(ext);
      const oidNode = parts[0];
      const valNode = parts[parts.length - 1];
      if (!oidNode || !valNode) continue;
      const oid = asn1.derToOid(forge.util.createBuffer(bytes(oidNode).toString('binary')));
      if (oid === OID_SAN) {
        for (const gn of children(parseDer(bytes(valNode)))) {
          const v = bytes(gn);
          if (gn.type === 1) emails.push(v.toString('latin1'));
          else if (gn.type === 2) dns.push(v.toString('latin1'));
          else if (gn.type === 6) uris.push(v.toString('latin1'));
          else if (gn.type === 7) ips.push(v.length === 4 ? [...v].join('.') : v.toString('hex').replace(/(.{4})(?!$)/g, '$1:'));
        }
      } else if (oid === OID_BASIC_CONSTRAINTS) {
        const bc = children(parseDer(bytes(valNode)));
        isCA = !!bc[0] && bc[0].type === asn1.Type.BOOLEAN && bytes(bc[0])[0] !== 0;
      }
    }
  }
  return {
    subjectAttrs: readName(subject), subjectDer: derOf(subject), issuerDer: derOf(issuer),
    serialHex: bytes(serial).toString('hex'), dns, uris, emails, ips, isCA,
  };
}

export interface CrlFields {
  readonly issuerDer: Buffer;
  readonly issuerAttrs: readonly NameAttr[];
  readonly nextUpdate?: Date;
  readonly revokedSerials: readonly string[];
}

function readTime(n: Node | undefined): Date | undefined {
  if (!n) return undefined;
  if (n.type === asn1.Type.UTCTIME) return asn1.utcTimeToDate(bytes(n).toString('latin1'));
  if (n.type === asn1.Type.GENERALIZEDTIME) return asn1.generalizedTimeToDate(bytes(n).toString('latin1'));
  return undefined;
}

export function readCrl(der: Uint8Array): CrlFields {
  const tbs = children(parseDer(der))[0];
  if (!tbs) throw new Error('not a CRL');
  const f = children(tbs);
  const off = f[0] && f[0].type === asn1.Type.INTEGER ? 1 : 0;
  const issuer = f[off + 1];
  if (!issuer || issuer.type !== asn1.Type.SEQUENCE) throw new Error('not a CRL');
  const next = f[off + 3];
  const nextUpdate = readTime(next);
  const revokedNode = f[off + 3 + (nextUpdate ? 1 : 0)];
  const revokedSerials = revokedNode && revokedNode.type === asn1.Type.SEQUENCE
    ? children(revokedNode).map((r) => bytes(children(r)[0]!).toString('hex'))
    : [];
  return { issuerDer: derOf(issuer), issuerAttrs: readName(issuer), nextUpdate, revokedSerials };
}

/** One DER TLV at `at`: its tag byte, where its contents start and where it ends (definite lengths, one-byte tags). */
export interface Tlv { readonly tag: number; readonly at: number; readonly start: number; readonly end: number }

export function tlv(der: Buffer, at: number, limit = der.length): Tlv {
  if (at + 2 > limit) throw new Error('truncated DER');
  const tag = der[at]!;
  if ((tag & 0x1f) === 0x1f) throw new Error('unsupported DER tag');
  let i = at + 1;
  const first = der[i++]!;
  let len = first;
  if (first & 0x80) {
    const n = first & 0x7f;
    if (n < 1 || n > 4) throw new Error('unsupported DER length');
    len = 0;
    for (let k = 0; k < n; k++) len = len * 256 + der[i++]!;
  }
  if (i + len > limit) throw new Error('truncated DER');
  return { tag, at, start: i, end: i + len };
}

/** The TLVs inside a constructed one, in order. */
export function tlvChildren(der: Buffer, t: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let at = t.start; at < t.end;) { const c = tlv(der, at, t.end); out.push(c); at = c.end; }
  return out;
}

/** Dotted form of an OBJECT IDENTIFIER's contents. */
export function oidString(der: Buffer, t: Tlv): string {
  return asn1.derToOid(forge.util.createBuffer(der.subarray(t.start, t.end).toString('binary')));
}

/** Signature algorithm OID -> the digest it names (null: Ed25519, which has none). */
export const SIGNATURE_DIGESTS: Readonly<Record<string, string | null>> = {
  '1.2.840.113549.1.1.11': 'sha256', '1.2.840.113549.1.1.12': 'sha384', '1.2.840.113549.1.1.13': 'sha512',
  '1.2.840.10045.4.3.2': 'sha256', '1.2.840.10045.4.3.3': 'sha384', '1.2.840.10045.4.3.4': 'sha512',
  '1.3.101.112': null,
};

/**
 * The signed part of a CRL as its exact bytes, the digest its signature algorithm names
 * (null for Ed25519), and the signature; undefined for an algorithm not listed here.
 */
export function crlSignature(der: Uint8Array): { tbs: Buffer; digest: string | null; signature: Buffer } | undefined {
  const b = Buffer.from(der);
  const outer = tlv(b, 0);
  const tbs = tlv(b, outer.start);
  const alg = tlv(b, tbs.end);
  const oid = tlv(b, alg.start);
  const id = oidString(b, oid);
  if (!(id in SIGNATURE_DIGESTS)) return undefined;
  const sig = tlv(b, alg.end);
  return { tbs: b.subarray(outer.start, tbs.end), digest: SIGNATURE_DIGESTS[id]!, signature: b.subarray(sig.start + 1, sig.end) };
}

/** DER -> PEM with 64-character lines (no blank line when the length divides evenly). */
export function toPem(der: Uint8Array, label: string): string {
  const lines = Buffer.from(der).toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** Split a PEM bundle into DER blocks of the given label. */
export function pemBlocks(pem: string, label: string): Buffer[] {
  const re = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`, 'g');
  return [...pem.matchAll(re)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
}
