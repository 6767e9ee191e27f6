// secp256k1 point arithmetic for BIP32 public derivation (src/util/bip32.ts): k·G from a
// fixed-base table (8-bit windows: 32 additions per product, no doublings), plus one more
// point, in Jacobian coordinates with a single inversion at the end. OpenSSL has no fast
// code for this curve: its k·G (an ECDH key set from k) costs ~0.38 ms here, k·G + K here ~0.19 ms
// (bench/RESULTS.md, twenty-first round). Public inputs only: nothing here handles a secret.
const P = 2n ** 256n - 2n ** 32n - 977n;
export const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
const GX = 0x79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798n;
const GY = 0x483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8n;

export type Affine = readonly [x: bigint, y: bigint];
/** Jacobian (X, Y, Z) for (X/Z², Y/Z³); Z = 0 is the point at infinity. */
interface Jacobian { readonly x: bigint; readonly y: bigint; readonly z: bigint }
const INFINITY: Jacobian = { x: 1n, y: 1n, z: 0n };

const LOW = (1n << 256n) - 1n;
const FOLD = (1n << 32n) + 977n; // 2²⁵⁶ ≡ FOLD (mod P)
/** x mod P for 0 ≤ x < P²: the high half folded in twice, then at most one subtraction. */
function red(x: bigint): bigint {
  x = (x & LOW) + (x >> 256n) * FOLD;
  x = (x & LOW) + (x >> 256n) * FOLD;
  return x >= P ? x - P : x;
}
const sub = (a: bigint, b: bigint) => (a >= b ? a - b : a - b + P);
const small = (x: bigint) => x % P; // small multiples of reduced values

/** a⁻¹ mod P by the extended Euclidean algorithm (a ≢ 0). */
function inverse(a: bigint): bigint {
  let r0 = ((a % P) + P) % P, r1 = P, s0 = 1n, s1 = 0n;
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  return ((s0 % P) + P) % P;
}

function double(p: Jacobian): Jacobian {
  if (p.z === 0n || p.y === 0n) return INFINITY;
  const a = red(p.x * p.x), b = red(p.y * p.y), c = red(b * b);
  const t = small(p.x + b);
  const d = small(2n * sub(sub(red(t * t), a), c));
  const e = small(3n * a), f = red(e * e);
  const x = sub(f, small(2n * d));
  return { x, y: sub(red(e * sub(d, x)), small(8n * c)), z: small(2n * red(p.y * p.z)) };
}

/** p + (qx, qy), the second point affine (madd-2007-bl without the Z2 terms). */
function addAffine(p: Jacobian, qx: bigint, qy: bigint): Jacobian {
  if (p.z === 0n) return { x: qx, y: qy, z: 1n };
  const z1z1 = red(p.z * p.z);
  const h = sub(red(qx * z1z1), p.x);
  const r = sub(red(qy * red(p.z * z1z1)), p.y);
  if (h === 0n) return r === 0n ? double(p) : INFINITY;
  const hh = red(h * h), hhh = red(h * hh), v = red(p.x * hh);
  const x = sub(sub(red(r * r), hhh), small(2n * v));
  return { x, y: sub(red(r * sub(v, x)), red(p.y * hhh)), z: red(p.z * h) };
}

function toAffine(p: Jacobian): Affine | undefined {
  if (p.z === 0n) return undefined;
  const zi = inverse(p.z), zi2 = red(zi * zi);
  return [red(p.x * zi2), red(p.y * red(zi2 * zi))];
}

/** TABLE[j][d − 1] = d · 2⁸ʲ · G, affine, for j < 32 and 1 ≤ d ≤ 255: built on first use (~0.1 s). */
let TABLE: Affine[][] | undefined;

function table(): Affine[][] {
  if (TABLE) return TABLE;
  const rows: Jacobian[][] = [];
  let base: Affine = [GX, GY];
  for (let j = 0; j < 32; j++) {
    const row: Jacobian[] = [{ x: base[0], y: base[1], z: 1n }];
    for (let d = 1; d < 255; d++) row.push(addAffine(row[d - 1]!, base[0], base[1]));
    rows.push(row);
    // The next row's base, 2⁸ times this one: 256·B = 255·B + B.
    base = toAffine(addAffine(row[254]!, base[0], base[1]))!;
  }
  // All to affine with one inversion (Montgomery's trick).
  const all = rows.flat();
  const prefix: bigint[] = [];
  let acc = 1n;
  for (const p of all) { prefix.push(acc); acc = red(acc * p.z); }
  let inv = inverse(acc);
  const out: Affine[] = new Array(all.length);
  for (let i = all.length - 1; i >= 0; i--) {
    const p = all[i]!;
    const zi = red(inv * prefix[i]!);
    inv = red(inv * p.z);
    const zi2 = red(zi * zi);
    out[i] = [red(p.x * zi2), red(p.y * red(zi2 * zi))];
  }
  TABLE = rows.map((_, j) => out.slice(j * 255, (j + 1) * 255));
  return TABLE;
}

/** Build the table now (at config load), so that no request pays for it. */
export function prepare(): void {
  table();
}

/** k·G + q for a 32-byte big-endian scalar k (1 ≤ k < N) and an affine q; undefined at infinity. */
export function mulGAdd(k: Buffer, q: Affine): Affine | undefined {
  const t = table();
  let acc = INFINITY;
  for (let j = 0; j < 32; j++) {
    const d = k[31 - j]!;
    if (d) { const e = t[j]![d - 1]!; acc = addAffine(acc, e[0], e[1]); }
  }
  return toAffine(addAffine(acc, q[0], q[1]));
}
