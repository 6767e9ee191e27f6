// type: bsm — access keys that sign each request with a Bitcoin Signed Message (secp256k1),
// as SPV Wallet's clients do (shared/seeds/001, "Access key"): the access public key in
// x-auth-key, the SHA-256 of the body in x-auth-hash, a random x-auth-nonce, the time in
// milliseconds in x-auth-time, and in x-auth-signature the compact signature over
// key + hash + nonce + time. An access key's id is the SHA-256 of its public key (hex), as
// the wallet stores it; a key can be configured by that id or by its public key.
// Requests signed with an xPriv carry the xPub in x-auth-xpub instead, and are signed with
// the key BIP32 derives from it along the nonce (src/util/bip32.ts): SPV Wallet's admin and
// user xPub authentication.
import { createHash, createPublicKey, hash, verify, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.ts';
import { MemoryNonceStore, type NonceStore, type NonceVerdict } from '../store/nonces.ts';
import { RedisNonceStore } from '../store/redis.ts';
import { foldHeader, singleHeader } from '../util/net.ts';
import { deriveFromHex, parseXpub, type ExtendedPublicKey } from '../util/bip32.ts';
import { prepare as prepareSecp256k1 } from '../util/secp256k1.ts';
import { allow, defineAuthenticator, deny, skip, type AuthRequest, type Verdict } from './types.ts';

const PUBLIC_KEY = /^(0[23][0-9a-f]{64}|04[0-9a-f]{128})$/;

const keyEntry = z.strictObject({
  /** The access key id: the SHA-256 (hex) of the public key's hex string. */
  id: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lower-case hex digits (the SHA-256 of the access public key)').optional(),
  /** The access public key, hex (33-byte compressed or 65-byte uncompressed point). */
  publicKey: z.string().transform((s) => s.toLowerCase()).pipe(z.string().regex(PUBLIC_KEY, 'must be a secp256k1 public key in hex (02/03 + 32 bytes, or 04 + 64 bytes)')).optional(),
  subject: z.string().min(1),
  scopes: z.array(z.string().min(1)).default([]),
  revoked: z.boolean().default(false),
});

const xpubEntry = z.strictObject({
  /** The extended public key (xpub… or tpub…), as the wallet was given it. */
  xpub: z.string().min(1),
  subject: z.string().min(1),
  scopes: z.array(z.string().min(1)).default([]),
  revoked: z.boolean().default(false),
});

const schema = z.strictObject({
  type: z.literal('bsm'),
  keys: z.array(keyEntry).default([]),
  /** xPubs whose xPriv-signed requests (x-auth-xpub) are accepted. */
  xpubs: z.array(xpubEntry).default([]),
  headers: z.strictObject({
    key: z.string().min(1).default('x-auth-key'),
    xpub: z.string().min(1).default('x-auth-xpub'),
    hash: z.string().min(1).default('x-auth-hash'),
    nonce: z.string().min(1).default('x-auth-nonce'),
    time: z.string().min(1).default('x-auth-time'),
    signature: z.string().min(1).default('x-auth-signature'),
  }).prefault({}),
  /** How far x-auth-time may be from now (SPV Wallet's clients: "only valid for 30 seconds"). */
  maxSkewSec: z.number().int().min(1).max(3600).default(30),
  /** Nonces remembered at once; each is accepted once within the window. When full, refused (429). */
  nonceCapacity: z.number().int().min(100).default(100_000),
  forward: z.boolean().default(false),
});

interface Key { id: string; subject: string; scopes: readonly string[]; revoked: boolean; publicKey?: KeyObject; allowed: Verdict; root?: ExtendedPublicKey }

// SubjectPublicKeyInfo for secp256k1 (id-ecPublicKey, 1.3.132.0.10) before the point's bytes.
const SPKI = { 33: Buffer.from('3036301006072a8648ce3d020106052b8104000a032200', 'hex'), 65: Buffer.from('3056301006072a8648ce3d020106052b8104000a034200', 'hex') } as Record<number, Buffer>;
const importKey = (hex: string): KeyObject => {
  const point = Buffer.from(hex, 'hex');
  return createPublicKey({ key: Buffer.concat([SPKI[point.length]!, point]), format: 'der', type: 'spki' });
};
const MAGIC = Buffer.from('Bitcoin Signed Message:\n');

/** Bitcoin's variable-length integer, for the message's length prefix. */
function varint(n: number): Buffer {
  if (n < 0xfd) return Buffer.from([n]);
  const b = Buffer.alloc(3);
  b[0] = 0xfd;
  b.writeUInt16LE(n, 1);
  return b;
}

/** Whether `sig` (65-byte compact: recovery byte, r, s) signs `message` for `key` (ECDSA over SHA-256d of the prefixed message). */
function verifyMessage(key: KeyObject, message: string, sig: Buffer): boolean {
  const m = Buffer.from(message, 'utf8');
  // crypto.verify hashes its input once more: SHA-256 of SHA-256(prefix + message), as signed.
  const once = createHash('sha256').update(varint(MAGIC.length)).update(MAGIC).update(varint(m.length)).update(m).digest();
  return verify('sha256', once, { key, dsaEncoding: 'ieee-p1363' }, sig.subarray(1));
}

export const bsm = defineAuthenticator({
  type: 'bsm',
  schema,
  create(cfg, ctx) {
    const base = ['authenticators', ctx.name];
    const issues: ConfigIssue[] = [];
    const byId = new Map<string, Key>();
    cfg.keys.forEach((e, i) => {
      const path = [...base, 'keys', i];
      if (!e.id && !e.publicKey) { issues.push({ path, message: 'a key needs `id` (the SHA-256 of its public key) or `publicKey`' }); return; }
      const fromKey = e.publicKey ? hash('sha256', e.publicKey, 'hex') : undefined;
      if (e.id && fromKey && e.id !== fromKey) { issues.push({ path: [...path, 'id'], message: `is not the SHA-256 of publicKey (${fromKey})` }); return; }
      const id = (e.id ?? fromKey)!;
      if (byId.has(id)) { issues.push({ path, message: `access key ${id} is listed twice` }); return; }
      let publicKey: KeyObject | undefined;
      try {
        publicKey = e.publicKey ? importKey(e.publicKey) : undefined;
      } catch (err) {
        issues.push({ path: [...path, 'publicKey'], message: `not a point on secp256k1 (${(err as Error).message})` });
        return;
      }
      const scopes = Object.freeze([...e.scopes]);
      byId.set(id, { id, subject: e.subject, scopes, revoked: e.revoked, publicKey, allowed: allow({ subject: e.subject, keyId: id, scopes }, `signed by access key ${id.slice(0, 12)}…`) });
    });
    // xPubs: by their own string; the id is the SHA-256 of it (SPV Wallet's xpub id).
    const byXpub = new Map<string, Key>();
    cfg.xpubs.forEach((e, i) => {
      const path = [...base, 'xpubs', i, 'xpub'];
      let root: ExtendedPublicKey;
      try { root = parseXpub(e.xpub); } catch (err) { issues.push({ path, message: `not an extended public key (${(err as Error).message})` }); return; }
      if (byXpub.has(e.xpub)) { issues.push({ path, message: 'listed twice' }); return; }
      const id = hash('sha256', e.xpub, 'hex');
      const scopes = Object.freeze([...e.scopes]);
      byXpub.set(e.xpub, { id, subject: e.subject, scopes, revoked: e.revoked, root, allowed: allow({ subject: e.subject, keyId: id, scopes }, `signed by a key of xPub ${id.slice(0, 12)}…`) });
    });
    // The multiplication table for xPub derivations is built once, here, not on a request.
    if (byXpub.size) prepareSecp256k1();
    if (!cfg.keys.length && !cfg.xpubs.length) issues.push({ path: base, message: 'needs `keys` (access keys) or `xpubs`, or both' });
    if (issues.length) throw new ConfigError(issues);

    const h = cfg.headers;
    const f = { key: foldHeader(h.key), xpub: foldHeader(h.xpub), hash: foldHeader(h.hash), nonce: foldHeader(h.nonce), time: foldHeader(h.time), signature: foldHeader(h.signature) };
    const skewMs = cfg.maxSkewSec * 1000;
    const rt = ctx.runtime;
    const nonces: NonceStore = ctx.store.type === 'redis' && !rt.offline
      ? new RedisNonceStore(rt.redis(ctx.store), ctx.name)
      : rt.shared(`nonces|${ctx.name}|bsm|${cfg.nonceCapacity}`, () => new MemoryNonceStore(cfg.nonceCapacity));
    const judged = (k: Key, r: NonceVerdict): Verdict => {
      if (r === 'replay') { rt.events.replayRejected(); return deny('AUTH_009', `nonce already used by ${k.root ? 'xPub' : 'access key'} ${k.id.slice(0, 12)}…`); }
      if (r === 'full') { rt.events.log('warn', { msg: 'nonce store full: refusing signed requests until nonces expire', authenticator: ctx.name, capacity: cfg.nonceCapacity }); return deny('AUTH_007', 'nonce store full'); }
      return k.allowed;
    };

    const one = (req: AuthRequest, want: string) => singleHeader(req.headers, want);

    return {
      name: ctx.name,
      type: 'bsm',
      needsBody: true,
      credentialHeaders: cfg.forward ? [] : [f.key, f.xpub, f.signature],
      challenge: `Signature realm="${ctx.name}"`,
      verify(req): Verdict | Promise<Verdict> {
        const key = one(req, f.key), xpub = one(req, f.xpub), sig = one(req, f.signature);
        if (key === undefined && xpub === undefined && sig === undefined) return skip('AUTH_003', `no ${h.key} (or ${h.xpub}) / ${h.signature} headers`);
        if (key !== undefined && xpub !== undefined) return deny('AUTH_003', `both ${h.key} and ${h.xpub}: send one`);
        const bodyHash = one(req, f.hash), nonce = one(req, f.nonce), time = one(req, f.time);
        const signer = xpub !== undefined ? h.xpub : h.key;
        const values = { [signer]: key ?? xpub, [h.signature]: sig, [h.hash]: bodyHash, [h.nonce]: nonce, [h.time]: time };
        const twice = Object.keys(values).find((n) => values[n] === 'twice');
        if (twice) return deny('AUTH_003', `${twice} sent more than once`);
        const missing = Object.keys(values).filter((n) => !values[n]);
        if (missing.length) return deny('AUTH_003', `missing ${missing.join(', ')}`);
        if (xpub !== undefined) {
          // The xPub's key is derived along the nonce's hex digits, 8 at a time: SPV Wallet's
          // clients send 64 (eight derivations); more than 128 would only cost us more.
          if (!/^[0-9a-fA-F]{1,128}$/.test(nonce!)) return deny('AUTH_003', 'malformed nonce (an xPub signature needs a hex nonce)');
        } else {
          if (!PUBLIC_KEY.test(key!.toLowerCase())) return deny('AUTH_003', `${h.key} is not a secp256k1 public key in hex`);
          if (!/^[\x21-\x7e]{1,128}$/.test(nonce!)) return deny('AUTH_003', 'malformed nonce');
        }
        if (!/^\d{1,16}$/.test(time!)) return deny('AUTH_003', `${h.time} is not milliseconds since the epoch`);
        const raw = /^[A-Za-z0-9+/]{86}[AEIMQUYcgkosw048]=$/.test(sig!) ? Buffer.from(sig!, 'base64') : undefined;
        if (!raw || raw.length !== 65 || raw[0]! < 27 || raw[0]! > 34) return deny('AUTH_003', `${h.signature} is not a 65-byte compact signature in base64`);
        // Found or not, revoked or not: no key math yet. An access key's id is the SHA-256 of its hex, as the wallet stores it.
        const what = xpub !== undefined ? 'xPub' : 'access key';
        const k = xpub !== undefined ? byXpub.get(xpub) : byId.get(hash('sha256', key!.toLowerCase(), 'hex'));
        if (!k) return deny('AUTH_004', `${what} not found`);
        if (k.revoked) return deny('AUTH_004', `${what} ${k.id.slice(0, 12)}… is revoked`);
        const t = Number(time);
        if (Math.abs(req.now - t) > skewMs) { rt.events.replayRejected(); return deny('AUTH_009', `${h.time} ${Math.round((req.now - t) / 1000)} s from now, window ±${cfg.maxSkewSec} s`); }
        if (bodyHash!.toLowerCase() !== hash('sha256', req.body ?? Buffer.alloc(0), 'hex')) return deny('AUTH_001', `${h.hash} is not the SHA-256 of the body`);
        let publicKey: KeyObject;
        if (k.root) {
          // Eight BIP32 steps for a 64-digit nonce (~2 ms of CPU): the costliest check, so the last but one.
          try {
            publicKey = importKey(deriveFromHex(k.root, nonce!).key.toString('hex'));
          } catch (err) {
            return deny('AUTH_003', `no key derives from the xPub along this nonce (${(err as Error).message})`);
          }
        } else {
          // A key configured by id alone is imported once, on its first signed request.
          try {
            publicKey = k.publicKey ??= importKey(key!.toLowerCase());
          } catch {
            return deny('AUTH_003', `${h.key} is not a point on secp256k1`);
          }
        }
        if (!verifyMessage(publicKey, `${key ?? xpub}${bodyHash}${nonce}${time}`, raw)) return deny('AUTH_001', 'signature does not verify');
        const r = nonces.remember(`${k.id}\u0000${nonce}`, t + skewMs, req.now);
        return typeof r === 'string' ? judged(k, r) : r.then((x) => judged(k, x));
      },
    };
  },
});
