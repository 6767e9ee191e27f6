// BIP32 public derivation (src/util/bip32.ts) against BIP32's own test vector 1, against
// @bsv/sdk's HD keys (an independent implementation) on random keys and nonces, and the
// refusals: xprv, bad checksum, hardened children, SPV Wallet's child numbers.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { HD } from '@bsv/sdk';
import { childNumsFromHex, deriveChild, deriveFromHex, parseXpub } from '../../src/util/bip32.ts';

// BIP32, "Test vector 1" (seed 000102030405060708090a0b0c0d0e0f): the extended public keys of
// m/0H/1/2H, m/0H/1/2H/2 and m/0H/1/2H/2/1000000000. The last two steps are not hardened, so
// they derive from the first xpub alone.
const TV1 = [
  'xpub6D4BDPcP2GT577Vvch3R8wDkScZWzQzMMUm3PWbmWvVJrZwQY4VUNgqFJPMM3No2dFDFGTsxxpG5uJh7n7epu4trkrX7x7DogT5Uv6fcLW5',
  'xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV',
  'xpub6H1LXWLaKsWFhvm6RVpEL9P4KfRZSW7abD2ttkWP3SSQvnyA8FSVqNTEcYFgJS2UaFcxupHiYkro49S8yGasTvXEYBVPamhGW6cFJodrTHy',
];

t.test('BIP32 test vector 1: m/0H/1/2H -> /2 -> /1000000000', async (t) => {
  const [a, b, c] = TV1.map(parseXpub);
  const b2 = deriveChild(a!, 2);
  t.same([b2.key.toString('hex'), b2.chainCode.toString('hex')], [b!.key.toString('hex'), b!.chainCode.toString('hex')], '/2');
  const c2 = deriveChild(b2, 1_000_000_000);
  t.same([c2.key.toString('hex'), c2.chainCode.toString('hex')], [c!.key.toString('hex'), c!.chainCode.toString('hex')], '/1000000000');
});

t.test('the same keys as @bsv/sdk along SPV Wallet nonces', async (t) => {
  for (let i = 0; i < 25; i++) {
    const hd = HD.fromRandom();
    const nonce = randomBytes(32).toString('hex');
    let ref = hd;
    for (const n of childNumsFromHex(nonce)) ref = ref.deriveChild(n);
    t.equal(deriveFromHex(parseXpub(hd.toPublic().toString()), nonce).key.toString('hex'), Buffer.from(ref.pubKey.encode(true) as number[]).toString('hex'), `key ${i}`);
  }
});

t.test('SPV Wallet\'s child numbers: 8 hex digits each, above 2^31-1 lowered by 2^31-1', async (t) => {
  t.same(childNumsFromHex('00000000' + '7fffffff' + '80000000' + 'ffffffff' + 'abc'), [0, 0x7fffffff, 1, 0x80000000, 0xabc]);
  t.same(childNumsFromHex(''), []);
  t.throws(() => childNumsFromHex('xyz'), /not hex/);
  t.throws(() => deriveChild(parseXpub(TV1[0]!), 0x80000000), /hardened/, 'a hardened child cannot come from a public key');
  t.throws(() => deriveChild(parseXpub(TV1[0]!), -1), /hardened or out of range/);
});

t.test('what is not an xpub is refused with the reason', async (t) => {
  const xprv = HD.fromRandom().toString();
  t.throws(() => parseXpub(xprv), /xpub\/tpub version/, 'a private extended key');
  t.throws(() => parseXpub(TV1[0]!.slice(0, -1) + (TV1[0]!.endsWith('5') ? '6' : '5')), /bad checksum/);
  t.throws(() => parseXpub(TV1[0]! + 'l'), /not base58/);
  t.throws(() => parseXpub('1111'), /too short/);
  t.throws(() => parseXpub('x'.repeat(200)), /too long/);
  t.throws(() => parseXpub('3QJmnh'), /too short|bytes/);
});

t.test('secp256k1: k·G + Q against OpenSSL\'s (k + m)·G, doubling and infinity included', async (t) => {
  const { mulGAdd, N } = await import('../../src/util/secp256k1.ts');
  const { createECDH, ECDH } = await import('node:crypto');
  const gMul = (k: bigint): [bigint, bigint] => {
    const e = createECDH('secp256k1');
    e.setPrivateKey(Buffer.from(k.toString(16).padStart(64, '0'), 'hex'));
    const u = e.getPublicKey();
    return [BigInt('0x' + u.subarray(1, 33).toString('hex')), BigInt('0x' + u.subarray(33).toString('hex'))];
  };
  const buf = (k: bigint) => Buffer.from(k.toString(16).padStart(64, '0'), 'hex');
  const rand = () => (BigInt('0x' + randomBytes(32).toString('hex')) % (N - 1n)) + 1n;
  const cases: [string, bigint, bigint][] = [['1 and 1 (a doubling)', 1n, 1n], ['N-1 and 2', N - 1n, 2n], ['2^255 and 7', 2n ** 255n, 7n], ['255 and 256', 255n, 256n]];
  for (let i = 0; i < 20; i++) cases.push([`random ${i}`, rand(), rand()]);
  const k0 = rand();
  cases.push(['k and k (a doubling)', k0, k0]);
  for (const [what, k, m] of cases) {
    const sum = mulGAdd(buf(k), gMul(m));
    t.same(sum, gMul((k + m) % N), what);
  }
  t.equal(mulGAdd(buf(k0), gMul(N - k0)), undefined, 'k·G + (−k·G) is the point at infinity');
  t.same(ECDH.convertKey(Buffer.concat([Buffer.from([4]), buf(gMul(5n)[0]), buf(gMul(5n)[1])]), 'secp256k1', undefined, undefined, 'compressed').length, 33, 'OpenSSL takes the point back');
});
