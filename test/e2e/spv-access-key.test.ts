// shared/seeds/001 (SPV Wallet), "Access key": with an access key "the message must be
// signed". The client here signs as spv-wallet's JavaScript client does, with @bsv/sdk as an
// independent implementation of Bitcoin Signed Message: x-auth-key (the access public key),
// x-auth-hash (SHA-256 of the body), x-auth-nonce (32 random bytes, hex), x-auth-time
// (milliseconds) and x-auth-signature over key + hash + nonce + time. Portcullis (type: bsm)
// finds the key by its id, the SHA-256 of the public key, as the wallet stores it.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { BSM, HD, PrivateKey, Utils } from '@bsv/sdk';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, baseConfig, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();
const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');
const alice = PrivateKey.fromRandom();
const bob = PrivateKey.fromRandom();
const gone = PrivateKey.fromRandom();
const stranger = PrivateKey.fromRandom();
const pub = (k: PrivateKey) => k.toPublicKey().toString();
// xPriv holders (seed 001, "Admin" and "Authenticate with users xpub"): the admin, a user, a revoked user, a stranger.
const admin = HD.fromRandom(), user = HD.fromRandom(), former = HD.fromRandom(), outsider = HD.fromRandom();
const xpubOf = (k: HD) => k.toPublic().toString();
let h: Harness;

t.before(async () => {
  h = await startHarness(fx, baseConfig(`
authenticators:
  access-keys:
    type: bsm
    keys:
      - { id: "${sha(pub(alice))}", subject: xpub-id-alice, scopes: [user] }
      - { publicKey: "${pub(bob)}", subject: xpub-id-bob }
      - { id: "${sha(pub(gone))}", subject: xpub-id-gone, revoked: true }
    xpubs:
      - { xpub: "${xpubOf(admin)}", subject: admin, scopes: [admin] }
      - { xpub: "${xpubOf(user)}", subject: user-1 }
      - { xpub: "${xpubOf(former)}", subject: user-2, revoked: true }
policies:
  - name: wallet
    match: { paths: ["/v1/**"] }
    authenticate: access-keys
`));
});
t.teardown(() => h?.close());

/** The spv-wallet client's signing: headers for `body` signed with the access key `key`. */
function signed(key: PrivateKey, body: string, o: { time?: number; nonce?: string; sigKey?: PrivateKey } = {}): Record<string, string> {
  const accessKey = pub(key);
  const authHash = sha(body);
  const nonce = o.nonce ?? randomBytes(32).toString('hex');
  const time = String(o.time ?? Date.now());
  const signature = BSM.sign(Utils.toArray(`${accessKey}${authHash}${nonce}${time}`, 'utf8'), o.sigKey ?? key) as string;
  return { 'x-auth-key': accessKey, 'x-auth-hash': authHash, 'x-auth-nonce': nonce, 'x-auth-time': time, 'x-auth-signature': signature };
}

/**
 * The spv-wallet client's signing with an xPriv: the xPub in x-auth-xpub, and the signing key
 * derived from the xPriv along the nonce, cut into 8-hex-digit child numbers (those above
 * 2^31-1 lowered by 2^31-1), as spv-wallet-js-client's getChildNumsFromHex and
 * deriveChildKeyFromHex do; then the same Bitcoin Signed Message over xpub + hash + nonce + time.
 */
function xsigned(xpriv: HD, body: string, o: { time?: number; nonce?: string; signWith?: HD; xpub?: string } = {}): Record<string, string> {
  const xpub = o.xpub ?? xpubOf(xpriv);
  const authHash = sha(body);
  const nonce = o.nonce ?? randomBytes(32).toString('hex');
  const time = String(o.time ?? Date.now());
  let child = o.signWith ?? xpriv;
  for (let i = 0; i < nonce.length; i += 8) {
    let n = Number('0x' + nonce.substring(i, i + 8));
    if (n > 2147483647) n -= 2147483647;
    child = child.deriveChild(n);
  }
  const signature = BSM.sign(Utils.toArray(`${xpub}${authHash}${nonce}${time}`, 'utf8'), child.privKey) as string;
  return { 'x-auth-xpub': xpub, 'x-auth-hash': authHash, 'x-auth-nonce': nonce, 'x-auth-time': time, 'x-auth-signature': signature };
}

t.test('requests signed with an xPriv are served with the xPub\'s subject', async (t) => {
  const body = JSON.stringify({ key: xpubOf(HD.fromRandom()) });
  let r = await request(h, fx, { method: 'POST', path: '/v1/xpub', headers: { ...xsigned(admin, body), 'content-type': 'application/json' }, body });
  t.equal(r.status, 200, 'the admin registers a user xPub (seed 001, "Register users xpub")');
  const up = h.seen.at(-1)!;
  t.same([up.headers['x-auth-user-id'], up.headers['x-auth-key-id'], up.headers['x-auth-scopes'], up.body], ['admin', sha(xpubOf(admin)), 'admin', body]);
  t.notOk(up.headers['x-auth-xpub'] || up.headers['x-auth-signature'], 'xPub and signature not forwarded');
  r = await request(h, fx, { path: '/v1/destination/count', headers: xsigned(user, '') });
  t.equal(r.status, 200, 'a user GET');
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'user-1');
  // Child numbers at both ends of the range: 2^31-1 (the highest a public key derives) and 0.
  r = await request(h, fx, { path: '/v1/destination/count', headers: xsigned(user, '', { nonce: '7fffffff'.repeat(8) }) });
  t.equal(r.status, 200, 'children 2^31-1');
  r = await request(h, fx, { path: '/v1/destination/count', headers: xsigned(user, '', { nonce: '0'.repeat(64) }) });
  t.equal(r.status, 200, 'children 0');
  r = await request(h, fx, { path: '/v1/destination/count', headers: xsigned(user, '', { nonce: 'abc' }) });
  t.equal(r.status, 200, 'a short nonce: one derivation');
});

t.test('xPub failures are refused with their codes and nothing is forwarded', async (t) => {
  const body = '{"amount":5}';
  const seen = h.seen.length;
  const cases: [string, Record<string, string>, number, string][] = [
    ['an xPub not configured', xsigned(outsider, body), 401, 'AUTH_004'],
    ['a revoked xPub', xsigned(former, body), 401, 'AUTH_004'],
    ['a configured xPub, signed by another xPriv', xsigned(user, body, { signWith: outsider }), 401, 'AUTH_001'],
    ['signed with the xPriv itself, not the derived key', (() => { const x = xsigned(user, body); const sig = BSM.sign(Utils.toArray(`${x['x-auth-xpub']}${x['x-auth-hash']}${x['x-auth-nonce']}${x['x-auth-time']}`, 'utf8'), user.privKey) as string; return { ...x, 'x-auth-signature': sig }; })(), 401, 'AUTH_001'],
    ['the nonce changed after signing', { ...xsigned(user, body), 'x-auth-nonce': randomBytes(32).toString('hex') }, 401, 'AUTH_001'],
    ['a nonce that is not hex', xsigned(user, body, { nonce: 'not-hex-at-all' }), 401, 'AUTH_003'],
    ['a nonce of 129 hex digits', { ...xsigned(user, body), 'x-auth-nonce': 'a'.repeat(129) }, 401, 'AUTH_003'],
    ['a hardened child ("ffffffff" lowered by 2^31-1 is 2^31): no public derivation', { ...xsigned(user, body), 'x-auth-nonce': 'ffffffff' }, 401, 'AUTH_003'],
    ['a minute old', xsigned(user, body, { time: Date.now() - 60_000 }), 401, 'AUTH_009'],
    ['the body changed after signing', { ...xsigned(user, body), 'x-auth-hash': sha('{"amount":500}') }, 401, 'AUTH_001'],
    ['both an access key and an xPub', { ...xsigned(user, body), 'x-auth-key': pub(alice) }, 401, 'AUTH_003'],
    ['an xpriv in the xPub header', { ...xsigned(user, body), 'x-auth-xpub': user.toString() }, 401, 'AUTH_004'],
  ];
  for (const [what, headers, status, code] of cases) {
    const r = await request(h, fx, { method: 'POST', path: '/v1/transaction', headers, body });
    t.same([r.status, r.json?.error?.code], [status, code], what);
  }
  t.equal(h.seen.length, seen, 'nothing reached the upstream');
  const again = xsigned(user, '');
  t.equal((await request(h, fx, { path: '/v1/destination/count', headers: again })).status, 200);
  const replay = await request(h, fx, { path: '/v1/destination/count', headers: again });
  t.same([replay.status, replay.json?.error?.code], [401, 'AUTH_009'], 'a replay is refused');
});

t.test('requests signed with an access key are served with the key\'s subject', async (t) => {
  let r = await request(h, fx, { path: '/v1/transaction/abc', headers: signed(alice, '') });
  t.equal(r.status, 200, 'a GET (empty body), key configured by its id');
  const up = h.seen.at(-1)!;
  t.equal(up.headers['x-auth-user-id'], 'xpub-id-alice');
  t.equal(up.headers['x-auth-key-id'], sha(pub(alice)), 'the access key id');
  t.equal(up.headers['x-auth-method'], 'bsm');
  t.notOk(up.headers['x-auth-signature'] || up.headers['x-auth-key'], 'key and signature not forwarded');
  const body = JSON.stringify({ outputs: [{ to: 'bob@example.com', satoshis: 1000 }] });
  r = await request(h, fx, { method: 'POST', path: '/v1/transaction', headers: { ...signed(bob, body), 'content-type': 'application/json' }, body });
  t.equal(r.status, 200, 'a POST with a body, key configured by its public key');
  t.same([h.seen.at(-1)!.headers['x-auth-user-id'], h.seen.at(-1)!.body], ['xpub-id-bob', body]);
});

t.test('every failure is refused with its code and nothing is forwarded', async (t) => {
  const body = '{"amount":5}';
  const seen = h.seen.length;
  const good = signed(alice, body);
  const cases: [string, Record<string, string>, string, number, string][] = [
    ['a key not configured', signed(stranger, body), body, 401, 'AUTH_004'],
    ['a revoked key', signed(gone, body), body, 401, 'AUTH_004'],
    ['the body changed after signing', good, '{"amount":500}', 401, 'AUTH_001'],
    ['the body and its hash changed, the signature not', { ...signed(alice, body), 'x-auth-hash': sha('{"amount":500}') }, '{"amount":500}', 401, 'AUTH_001'],
    ['signed by another key for this key', signed(alice, body, { sigKey: stranger }), body, 401, 'AUTH_001'],
    ['the time changed after signing', { ...signed(alice, body), 'x-auth-time': String(Date.now() + 1) }, body, 401, 'AUTH_001'],
    ['a minute old', signed(alice, body, { time: Date.now() - 60_000 }), body, 401, 'AUTH_009'],
    ['a signature that is not base64 of 65 bytes', { ...signed(alice, body), 'x-auth-signature': 'AAAA' }, body, 401, 'AUTH_003'],
    ['no nonce', (({ 'x-auth-nonce': _n, ...rest }) => rest)(signed(alice, body)), body, 401, 'AUTH_003'],
    ['not a public key', { ...signed(alice, body), 'x-auth-key': 'xpub661MyMwAqRbcF' }, body, 401, 'AUTH_003'],
    ['nothing at all', {}, body, 401, 'AUTH_003'],
  ];
  for (const [what, headers, sent, status, code] of cases) {
    const r = await request(h, fx, { method: 'POST', path: '/v1/transaction', headers, body: sent });
    t.same([r.status, r.json?.error?.code], [status, code], what);
  }
  t.equal(h.seen.length, seen, 'nothing reached the upstream');
  t.match(h.logs.filter((l) => l.msg === 'denied').map((l) => l.trace?.[0]?.reason).join('\n'), /x-auth-hash is not the SHA-256 of the body[^]*signature does not verify[^]*s from now/, 'the log says which check failed');
});

t.test('a signed request is accepted once', async (t) => {
  const headers = signed(alice, '');
  t.equal((await request(h, fx, { path: '/v1/destination/count', headers })).status, 200);
  const again = await request(h, fx, { path: '/v1/destination/count', headers });
  t.same([again.status, again.json?.error?.code], [401, 'AUTH_009'], 'the replay is refused');
});

t.test('config: a key needs its id or public key, and an id must be the public key\'s hash', async (t) => {
  const { loadConfig } = await import('../../src/config/load.ts');
  const { writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const bad = (keys: string) => {
    const f = join(fx.dir, 'bsm-bad.yaml');
    writeFileSync(f, baseConfig(`authenticators:\n  k: { type: bsm, keys: [ ${keys} ] }\npolicies:\n  - { name: p, match: { paths: ["/**"] }, authenticate: k }\n`).replaceAll('{{PKI}}', fx.dir).replace('{{UPSTREAM}}', 'http://127.0.0.1:1'));
    try { loadConfig(f); return ''; } catch (e) { return (e as Error).message; }
  };
  t.match(bad('{ subject: x }'), /keys\[0\]: a key needs `id`/);
  t.match(bad(`{ id: "${sha('other')}", publicKey: "${pub(alice)}", subject: x }`), /keys\[0\]\.id: is not the SHA-256 of publicKey/);
  t.match(bad('{ publicKey: "02abcd", subject: x }'), /keys\[0\]\.publicKey: must be a secp256k1 public key/);
  t.match(bad(`{ publicKey: "02${'f'.repeat(64)}", subject: x }`), /keys\[0\]\.publicKey: not a point on secp256k1/);
  const f = (yaml: string) => {
    const file = join(fx.dir, 'bsm-x.yaml');
    writeFileSync(file, baseConfig(`authenticators:\n  k: { type: bsm, ${yaml} }\npolicies:\n  - { name: p, match: { paths: ["/**"] }, authenticate: k }\n`).replaceAll('{{PKI}}', fx.dir).replace('{{UPSTREAM}}', 'http://127.0.0.1:1'));
    try { loadConfig(file); return ''; } catch (e) { return (e as Error).message; }
  };
  t.match(f('keys: []'), /authenticators\.k: needs `keys` \(access keys\) or `xpubs`/);
  t.match(f(`xpubs: [ { xpub: "${user.toString()}", subject: x } ]`), /xpubs\[0\]\.xpub: not an extended public key \(not an extended public key \(xpub\/tpub version\)\)/, 'an xprv');
  t.match(f(`xpubs: [ { xpub: "${xpubOf(user).slice(0, -1)}1", subject: x } ]`), /xpubs\[0\]\.xpub: not an extended public key \(bad checksum\)/);
  t.match(f(`xpubs: [ { xpub: "${xpubOf(user)}0", subject: x } ]`), /xpubs\[0\]\.xpub: not an extended public key \(not base58/);
  t.equal(f(`xpubs: [ { xpub: "${xpubOf(user)}", subject: x } ]`), '', 'an xPub alone loads');
});
