// BIP32 public derivation (CKDpub) on secp256k1, for SPV Wallet's xPub-signed requests:
// the signing key is derived from the caller's xPub by the request's nonce, cut into
// 8-hex-digit child numbers as the wallet's clients cut it. The point arithmetic is in
// src/util/secp256k1.ts (Node offers a scalar multiplication only through ECDH keys, at
// ~0.38 ms for this curve, and no point addition).
import { ECDH, createHash, createHmac } from 'node:crypto';
import { mulGAdd, N, type Affine } from './secp256k1.ts';

const XPUB_VERSIONS = new Set(['0488b21e', '043587cf']); // xpub (main), tpub (test)
const ALPHABET = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';

export interface ExtendedPublicKey {
  /** Compressed point, 33 bytes. */
  readonly key: Buffer;
  /** The same point, affine. */
  readonly point: Affine;
  readonly chainCode: Buffer;
}

const big = (b: Buffer) => BigInt('0x' + (b.length ? b.toString('hex') : '0'));
const bytes32 = (n: bigint) => Buffer.from(n.toString(16).padStart(64, '0'), 'hex');

/** A compressed point's affine coordinates (OpenSSL decompresses, and refuses a point not on the curve). */
function decompress(point: Buffer): Affine {
  const full = ECDH.convertKey(point, 'secp256k1', undefined, undefined, 'uncompressed') as Buffer;
  return [big(full.subarray(1, 33)), big(full.subarray(33, 65))];
}

function compress([x, y]: Affine): Buffer {
  return Buffer.concat([Buffer.from([y & 1n ? 0x03 : 0x02]), bytes32(x)]);
}

/** CKDpub (BIP32): the child of `parent` at a non-hardened `index`; throws for an invalid child. */
export function deriveChild(parent: ExtendedPublicKey, index: number): ExtendedPublicKey {
  if (!Number.isInteger(index) || index < 0 || index >= 0x80000000) throw new Error(`child ${index} is hardened or out of range: not derivable from a public key`);
  const data = Buffer.alloc(37);
  parent.key.copy(data, 0);
  data.writeUInt32BE(index, 33);
  const I = createHmac('sha512', parent.chainCode).update(data).digest();
  const IL = I.subarray(0, 32);
  const il = big(IL);
  if (il === 0n || il >= N) throw new Error(`child ${index} is invalid (IL out of range)`);
  const sum = mulGAdd(IL, parent.point);
  if (!sum) throw new Error(`child ${index} is invalid (point at infinity)`);
  return { key: compress(sum), point: sum, chainCode: I.subarray(32) };
}

/** SPV Wallet's child numbers for a hex string: 8 hex digits each, those above 2³¹−1 lowered by 2³¹−1. */
export function childNumsFromHex(hex: string): number[] {
  if (!/^[0-9a-fA-F]*$/.test(hex)) throw new Error('not hex');
  const out: number[] = [];
  for (let i = 0; i < hex.length; i += 8) {
    let n = parseInt(hex.slice(i, i + 8), 16);
    if (n > 0x7fffffff) n -= 0x7fffffff;
    out.push(n);
  }
  return out;
}

/** Base58Check → payload; throws on a bad character or checksum. */
function base58check(s: string): Buffer {
  let n = 0n;
  for (const c of s) {
    const v = ALPHABET.indexOf(c);
    if (v < 0) throw new Error(`not base58 (${JSON.stringify(c)})`);
    n = n * 58n + BigInt(v);
  }
  let hex = n.toString(16);
  if (hex.length % 2) hex = '0' + hex;
  const zeros = /^1*/.exec(s)![0].length;
  const raw = Buffer.concat([Buffer.alloc(zeros), n === 0n ? Buffer.alloc(0) : Buffer.from(hex, 'hex')]);
  if (raw.length < 5) throw new Error('too short');
  const body = raw.subarray(0, -4);
  const sum = createHash('sha256').update(createHash('sha256').update(body).digest()).digest().subarray(0, 4);
  if (!sum.equals(raw.subarray(-4))) throw new Error('bad checksum');
  return body;
}

/** An xpub/tpub string → its key and chain code; throws with the reason it is not one. */
export function parseXpub(s: string): ExtendedPublicKey {
  if (s.length > 120) throw new Error('too long');
  const b = base58check(s);
  if (b.length !== 78) throw new Error(`${b.length} bytes, an extended key has 78`);
  if (!XPUB_VERSIONS.has(b.subarray(0, 4).toString('hex'))) throw new Error('not an extended public key (xpub/tpub version)');
  const key = Buffer.from(b.subarray(45, 78));
  if (key[0] !== 0x02 && key[0] !== 0x03) throw new Error('key is not a compressed point');
  return { key, point: decompress(key), chainCode: Buffer.from(b.subarray(13, 45)) };
}

/** The key SPV Wallet's clients sign with for `nonce` (hex): the xPub's descendant along its child numbers. */
export function deriveFromHex(root: ExtendedPublicKey, nonceHex: string): ExtendedPublicKey {
  let k = root;
  for (const n of childNumsFromHex(nonceHex)) k = deriveChild(k, n);
  return k;
}
