// OCSP checking of client certificates (RFC 6960, in RFC 5019's lightweight profile:
// one certificate per request, SHA-1 CertID, POST). The client's own certificate is
// checked; the responder is the one its authorityInfoAccess names, or the configured
// one. Answers are verified (signed by the issuing CA, or by a responder certificate
// that CA issued for OCSP signing), cached until their nextUpdate (at most maxAgeSec),
// and refreshed in the background before they run out, so a client that keeps coming
// back never waits. Requests wait only for the first answer about a certificate.
//
// `require` refuses a certificate whose status cannot be learnt (responder down,
// malformed or unsigned answer, status "unknown"); `best-effort` lets it through and
// logs. A "revoked" answer refuses in both modes.
import { createHash, verify, X509Certificate } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { oidString, SIGNATURE_DIGESTS, tlv, tlvChildren, type Tlv } from './asn1.ts';
import type { ClientCertVerdict, PeerCert } from './peer.ts';
import { fetchBytes } from '../util/fetch.ts';

export interface OcspSettings {
  readonly mode: 'require' | 'best-effort';
  /** Asked instead of the responder each certificate names. */
  readonly responder?: URL;
  readonly timeoutMs: number;
  /** The longest an answer is used, whatever its nextUpdate. */
  readonly maxAgeSec: number;
  /** How long a failed lookup is remembered before the responder is asked again. */
  readonly retrySec: number;
}

export interface OcspEvents {
  ocspLookup(result: OcspStatus): void;
  log(level: 'info' | 'warn' | 'error', obj: Record<string, unknown>): void;
}

export type OcspStatus = 'good' | 'revoked' | 'unknown' | 'error';

export interface OcspAnswer {
  readonly status: OcspStatus;
  /** Why, for the decision trace and the log ('' for good). */
  readonly detail: string;
  /** Used until then (ms since the epoch). */
  readonly until: number;
  /** A background refresh starts after then. */
  readonly refreshAt: number;
}

const OID_OCSP = '1.3.6.1.5.5.7.48.1';
const OID_OCSP_BASIC = '1.3.6.1.5.5.7.48.1.1';
const OID_OCSP_SIGNING = '1.3.6.1.5.5.7.3.9';
const OID_AIA = '1.3.6.1.5.5.7.1.1';
const OID_SHA1 = '1.3.14.3.2.26';
const OID_SHA256 = '2.16.840.1.101.3.4.2.1';
/** SHA-1 signatures are still common on OCSP answers; they are verified as OpenSSL does. */
const OCSP_SIGNATURES: Readonly<Record<string, string | null>> = {
  ...SIGNATURE_DIGESTS, '1.2.840.113549.1.1.5': 'sha1', '1.2.840.10045.4.1': 'sha1',
};
const RESPONSE_STATUS = ['successful', 'malformedRequest', 'internalError', 'tryLater', '(4)', 'sigRequired', 'unauthorized'];
const REVOCATION_REASONS = ['unspecified', 'keyCompromise', 'cACompromise', 'affiliationChanged', 'superseded', 'cessationOfOperation', 'certificateHold', '(7)', 'removeFromCRL', 'privilegeWithdrawn', 'aACompromise'];
/** Clock difference tolerated between us and the responder. */
const SKEW_MS = 5 * 60_000;
const MAX_RESPONSE_BYTES = 64 * 1024;

// ---- DER, written and read by hand: the few structures OCSP needs -------------------

function der(tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const n = body.length;
  const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : n < 0x10000 ? Buffer.from([0x82, n >> 8, n & 0xff]) : Buffer.from([0x83, n >> 16, (n >> 8) & 0xff, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, body]);
}

const body = (b: Buffer, t: Tlv) => b.subarray(t.start, t.end);
const whole = (b: Buffer, t: Tlv) => b.subarray(t.at, t.end);
const sha1 = (b: Buffer) => createHash('sha1').update(b).digest();

function expect(t: Tlv | undefined, tag: number, what: string): Tlv {
  if (!t || t.tag !== tag) throw new Error(`malformed ${what}`);
  return t;
}

/** GeneralizedTime (YYYYMMDDHHMMSS[.fff]Z) -> ms since the epoch. */
function generalizedTime(b: Buffer, t: Tlv): number {
  const s = body(b, t).toString('latin1');
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(?:\.(\d{1,3})\d*)?Z$/.exec(s);
  if (t.tag !== 0x18 || !m) throw new Error(`malformed time ${JSON.stringify(s)}`);
  return Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!, m[7] ? +m[7].padEnd(3, '0') : 0);
}

/** What a certificate contributes to an OCSP exchange, read from its exact DER. */
interface CertParts { serial: Buffer; issuer: Buffer; subject: Buffer; keyBits: Buffer; ocspUrls: string[] }

function certParts(d: Buffer): CertParts {
  const tbs = expect(tlvChildren(d, tlv(d, 0))[0], 0x30, 'certificate');
  const f = tlvChildren(d, tbs);
  const o = f[0]?.tag === 0xa0 ? 1 : 0;
  const serial = expect(f[o], 0x02, 'certificate serial');
  const issuer = expect(f[o + 2], 0x30, 'certificate issuer');
  const subject = expect(f[o + 4], 0x30, 'certificate subject');
  const spki = expect(f[o + 5], 0x30, 'certificate key');
  const bits = expect(tlvChildren(d, spki)[1], 0x03, 'certificate key');
  const ocspUrls: string[] = [];
  const exts = f.slice(o + 6).find((t) => t.tag === 0xa3);
  if (exts) {
    for (const ext of tlvChildren(d, expect(tlvChildren(d, exts)[0], 0x30, 'extensions'))) {
      const parts = tlvChildren(d, ext);
      if (oidString(d, parts[0]!) !== OID_AIA) continue;
      const value = body(d, expect(parts[parts.length - 1], 0x04, 'authorityInfoAccess'));
      for (const ad of tlvChildren(value, tlv(value, 0))) {
        const [method, location] = tlvChildren(value, ad);
        if (method && location?.tag === 0x86 && oidString(value, method) === OID_OCSP) ocspUrls.push(body(value, location).toString('latin1'));
      }
    }
  }
  return { serial: body(d, serial), issuer: whole(d, issuer), subject: whole(d, subject), keyBits: d.subarray(bits.start + 1, bits.end), ocspUrls };
}

// ---- One certificate's question, prepared once ---------------------------------------

export interface Question {
  readonly url?: URL;
  readonly request: Buffer;
  readonly serial: Buffer;
  readonly issuer: X509Certificate;
  readonly issuerName: Buffer;
  readonly issuerKeyBits: Buffer;
  /** Cache key: the responder and the CertID. */
  readonly key: string;
}

/** What to ask about `cert` and whom, or why it cannot be asked. */
export function ocspQuestion(cert: Buffer, issuer: X509Certificate, responder: URL | undefined): Question | string {
  const leaf = certParts(cert);
  const ca = certParts(issuer.raw);
  const nameHash = sha1(ca.subject), keyHash = sha1(ca.keyBits);
  const certId = der(0x30, der(0x30, der(0x06, Buffer.from('2b0e03021a', 'hex')), Buffer.from([0x05, 0x00])), der(0x04, nameHash), der(0x04, keyHash), der(0x02, leaf.serial));
  const request = der(0x30, der(0x30, der(0x30, der(0x30, certId))));
  let url = responder;
  if (!url) {
    const named = leaf.ocspUrls.find((u) => /^https?:\/\//i.test(u));
    if (!named) return 'the certificate names no OCSP responder (authorityInfoAccess) and tls.clientAuth.ocsp.responder is not set';
    try { url = new URL(named); } catch { return `the certificate's OCSP responder ${JSON.stringify(named)} is not a URL`; }
  }
  return { url, request, serial: leaf.serial, issuer, issuerName: ca.subject, issuerKeyBits: ca.keyBits, key: `${url.href} ${certId.toString('base64')}` };
}

// ---- The answer ------------------------------------------------------------------------

type Parsed = { status: 'good' | 'revoked' | 'unknown'; detail: string; thisUpdate: number; nextUpdate?: number };

/** Parse and verify an OCSPResponse for `q`; throws with the reason it cannot be used. */
export function readResponse(b: Buffer, q: Pick<Question, 'serial' | 'issuer' | 'issuerName' | 'issuerKeyBits'>, now: number): Parsed {
  const top = tlv(b, 0);
  if (top.tag !== 0x30 || top.end !== b.length) throw new Error('not an OCSP response');
  const [st, rb] = tlvChildren(b, top);
  const code = body(b, expect(st, 0x0a, 'response status'))[0]!;
  if (code !== 0) throw new Error(`responder answered ${RESPONSE_STATUS[code] ?? code}`);
  const [type, octets] = tlvChildren(b, expect(tlvChildren(b, expect(rb, 0xa0, 'response bytes'))[0], 0x30, 'response bytes'));
  if (!type || oidString(b, expect(type, 0x06, 'response type')) !== OID_OCSP_BASIC) throw new Error('not a basic OCSP response');
  const basic = body(b, expect(octets, 0x04, 'response bytes'));
  const [tbs, alg, sig, certs] = tlvChildren(basic, expect(tlv(basic, 0), 0x30, 'basic response'));
  expect(tbs, 0x30, 'response data');
  const digest = OCSP_SIGNATURES[oidString(basic, expect(tlvChildren(basic, expect(alg, 0x30, 'signature algorithm'))[0], 0x06, 'signature algorithm'))];
  if (digest === undefined) throw new Error('unsupported signature algorithm');
  const sigBits = expect(sig, 0x03, 'signature');
  if (basic[sigBits.start] !== 0) throw new Error('malformed signature');
  const signature = basic.subarray(sigBits.start + 1, sigBits.end);

  const f = tlvChildren(basic, tbs!);
  const o = f[0]?.tag === 0xa0 ? 1 : 0;
  const rid = f[o];
  if (!rid || (rid.tag !== 0xa1 && rid.tag !== 0xa2)) throw new Error('malformed responder id');
  const ridValue = tlvChildren(basic, rid)[0]!;

  // The signer: the issuing CA itself, or a certificate it issued for OCSP signing (RFC 6960 §4.2.2.2).
  const candidates: X509Certificate[] = [q.issuer];
  if (certs) {
    for (const c of tlvChildren(basic, expect(tlvChildren(basic, expect(certs, 0xa0, 'certificates'))[0], 0x30, 'certificates'))) {
      try { candidates.push(new X509Certificate(whole(basic, c))); } catch { /* not a certificate: cannot sign */ }
    }
  }
  const names = (x: X509Certificate) => {
    const p = x === q.issuer ? { subject: q.issuerName, keyBits: q.issuerKeyBits } : certParts(x.raw);
    return rid.tag === 0xa1 ? p.subject.equals(whole(basic, ridValue)) : sha1(p.keyBits).equals(body(basic, ridValue));
  };
  const signer = candidates.find((x) => names(x));
  if (!signer) throw new Error('signed by a responder the answer does not include');
  if (signer !== q.issuer) {
    if (!signer.checkIssued(q.issuer) || !signer.verify(q.issuer.publicKey)) throw new Error(`signed by ${signer.subject.replace(/\n/g, ',')}, which the certificate's CA did not issue`);
    if (!signer.keyUsage?.includes(OID_OCSP_SIGNING)) throw new Error(`signed by ${signer.subject.replace(/\n/g, ',')}, which is not authorised for OCSP signing`);
    if (now < Date.parse(signer.validFrom) || now > Date.parse(signer.validTo)) throw new Error('signed by a responder certificate outside its validity');
  }
  if (!verify(digest, whole(basic, tbs!), signer.publicKey, signature)) throw new Error('bad signature');

  // Our certificate's SingleResponse.
  const responses = expect(f[o + 2], 0x30, 'responses');
  for (const single of tlvChildren(basic, responses)) {
    const [cid, status, thisUpd, ...rest] = tlvChildren(basic, single);
    const [halg, nameHash, keyHash, serial] = tlvChildren(basic, expect(cid, 0x30, 'cert id'));
    const h = oidString(basic, expect(tlvChildren(basic, expect(halg, 0x30, 'cert id'))[0], 0x06, 'cert id'));
    const hash = h === OID_SHA1 ? 'sha1' : h === OID_SHA256 ? 'sha256' : undefined;
    if (!hash || !serial || !body(basic, serial).equals(q.serial)) continue;
    if (!body(basic, expect(nameHash, 0x04, 'cert id')).equals(createHash(hash).update(q.issuerName).digest())) continue;
    if (!body(basic, expect(keyHash, 0x04, 'cert id')).equals(createHash(hash).update(q.issuerKeyBits).digest())) continue;
    const thisUpdate = generalizedTime(basic, expect(thisUpd, 0x18, 'thisUpdate'));
    const nu = rest.find((t) => t.tag === 0xa0);
    const nextUpdate = nu ? generalizedTime(basic, tlvChildren(basic, nu)[0]!) : undefined;
    if (thisUpdate > now + SKEW_MS) throw new Error(`answer dated in the future (thisUpdate ${new Date(thisUpdate).toISOString()})`);
    if (nextUpdate !== undefined && nextUpdate < now - SKEW_MS) throw new Error(`stale answer (nextUpdate ${new Date(nextUpdate).toISOString()})`);
    if (status!.tag === 0x80) return { status: 'good', detail: '', thisUpdate, nextUpdate };
    if (status!.tag === 0x82) return { status: 'unknown', detail: 'the responder does not know the certificate', thisUpdate, nextUpdate };
    if (status!.tag === 0xa1) {
      const [when, reason] = tlvChildren(basic, status!);
      const at = new Date(generalizedTime(basic, expect(when, 0x18, 'revocation time'))).toISOString();
      const r = reason?.tag === 0xa0 ? body(basic, tlvChildren(basic, reason)[0]!)[0] : undefined;
      return { status: 'revoked', detail: `revoked at ${at}${r !== undefined ? ` (${REVOCATION_REASONS[r] ?? r})` : ''}`, thisUpdate, nextUpdate };
    }
    throw new Error('malformed certificate status');
  }
  throw new Error('the answer is not about this certificate');
}

// ---- The checker -----------------------------------------------------------------------

/** Answers and lookups in flight, for the life of the process (a reload keeps them). */
export class OcspCache {
  readonly answers = new LRUCache<string, OcspAnswer>({ max: 50_000 });
  readonly inFlight = new Map<string, Promise<OcspAnswer>>();
}

export class OcspChecker {
  readonly settings: OcspSettings;
  readonly #cas: readonly X509Certificate[];
  readonly #cache: OcspCache;
  readonly #events: () => OcspEvents;
  /** Each client certificate's question, by fingerprint (or why none can be asked). */
  readonly #questions = new LRUCache<string, Question | { error: string }>({ max: 10_000 });

  constructor(settings: OcspSettings, cas: readonly X509Certificate[], cache: OcspCache, events: () => OcspEvents) {
    this.settings = settings;
    this.#cas = cas;
    this.#cache = cache;
    this.#events = events;
  }

  /** The certificate's question, prepared once; its issuer must be in tls.clientAuth.ca. */
  #prepare(cert: PeerCert): Question | { error: string } {
    let q: Question | { error: string };
    try {
      const x = new X509Certificate(cert.der);
      const issuer = this.#cas.find((c) => x.checkIssued(c) && x.verify(c.publicKey));
      if (!issuer) q = { error: 'the CA that issued it is not in tls.clientAuth.ca (OCSP needs each issuing CA there, intermediates included)' };
      else {
        const r = ocspQuestion(cert.der, issuer, this.settings.responder);
        q = typeof r === 'string' ? { error: r } : r;
      }
    } catch (e) {
      q = { error: `certificate not readable (${(e as Error).message})` };
    }
    this.#questions.set(cert.fingerprint, q);
    return q;
  }

  /**
   * The certificate's current answer: synchronous while a cached one is current (refreshed in
   * the background once three quarters of its life are gone), else asked now. Never rejects.
   */
  answer(cert: PeerCert, now: number): OcspAnswer | Promise<OcspAnswer> {
    const q = this.#questions.get(cert.fingerprint) ?? this.#prepare(cert);
    if ('error' in q) return { status: 'error', detail: q.error, until: 0, refreshAt: 0 };
    const hit = this.#cache.answers.get(q.key);
    if (hit && now < hit.until) {
      if (now >= hit.refreshAt) void this.#lookup(q, now);
      return hit;
    }
    return this.#lookup(q, now);
  }

  /** The certificate's status: undefined when it may pass, else the verdict that replaces the handshake's. */
  check(cert: PeerCert, now: number): ClientCertVerdict | undefined | Promise<ClientCertVerdict | undefined> {
    const a = this.answer(cert, now);
    return a instanceof Promise ? a.then((x) => this.verdict(cert, x)) : this.verdict(cert, a);
  }

  /** What an answer means for the certificate under this mode: undefined when it may pass. */
  verdict(cert: PeerCert, a: OcspAnswer): ClientCertVerdict | undefined {
    if (a.status === 'good') return undefined;
    if (a.status === 'revoked') return { present: true, verified: false, problem: 'revoked', detail: `OCSP: ${a.detail}`, cert };
    if (this.settings.mode === 'best-effort') return undefined;
    return { present: true, verified: false, problem: 'revocation-unknown', detail: `OCSP: ${a.detail}`, cert };
  }

  /** Ask the responder, once per certificate at a time; a failure is remembered for retrySec. */
  #lookup(q: Question, now: number): Promise<OcspAnswer> {
    const running = this.#cache.inFlight.get(q.key);
    if (running) return running;
    const s = this.settings;
    const maxMs = s.maxAgeSec * 1000;
    const p = fetchBytes(q.url!, { method: 'POST', body: q.request, timeoutMs: s.timeoutMs, maxBytes: MAX_RESPONSE_BYTES, headers: { 'content-type': 'application/ocsp-request', accept: 'application/ocsp-response', 'content-length': q.request.length } })
      .then((b) => {
        const r = readResponse(b, q, now);
        const until = Math.min(r.nextUpdate ?? now + maxMs, now + maxMs);
        return { status: r.status, detail: r.detail, until, refreshAt: now + (until - now) * 0.75 };
      })
      .catch((e: Error): OcspAnswer => {
        const retry = now + s.retrySec * 1000;
        return { status: 'error', detail: `responder ${q.url!.origin}: ${e.message}`, until: retry, refreshAt: retry };
      })
      .then((a) => {
        this.#cache.inFlight.delete(q.key);
        // A failed refresh keeps a current answer: the responder's outage does not turn a good certificate away early.
        const prev = this.#cache.answers.get(q.key);
        if (!(a.status === 'error' && prev && prev.status !== 'error' && now < prev.until)) this.#cache.answers.set(q.key, a);
        this.#events().ocspLookup(a.status);
        if (a.status !== 'good') {
          this.#events().log(a.status === 'error' ? 'warn' : 'info', { msg: `OCSP lookup: ${a.status}`, responder: q.url!.origin, serial: q.serial.toString('hex'), issuer: q.issuer.subject.replace(/\n/g, ','), detail: a.detail, mode: s.mode });
        }
        return a;
      });
    this.#cache.inFlight.set(q.key, p);
    return p;
  }
}
