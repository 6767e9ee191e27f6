// Every registered authenticator through the same contract, and the known-answer
// vectors (RFC 7515/7520 JWS, Wycheproof ECDSA P-256 and HMAC-SHA256).
import t from 'tap';
import { readFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createHmac, createPublicKey, createSecretKey } from 'node:crypto';
import { compactVerify, importJWK } from 'jose';
import { AUTHENTICATOR_TYPES, AUTHENTICATORS_BY_TYPE } from '../../src/authenticators/registry.ts';
import type { AuthRequest, CreateContext, Authenticator } from '../../src/authenticators/types.ts';
import { Runtime } from '../../src/runtime.ts';
import { ConfigError, ERRORS } from '../../src/errors.ts';
import { verifySignature } from '../../src/authenticators/rfc9421.ts';
import { configSchema } from '../../src/config/schema.ts';

const VEC = new URL('../../../shared/reference/vectors/', import.meta.url).pathname;
const json = (p: string) => JSON.parse(readFileSync(join(VEC, p), 'utf8'));
const dir = mkdtempSync(join(tmpdir(), 'portcullis-auth-'));
/** The public part of a JWK (vectors ship private keys). */
const pub = (k: Record<string, unknown>) => Object.fromEntries(Object.entries(k).filter(([n]) => !['d', 'p', 'q', 'dp', 'dq', 'qi'].includes(n)));

function ctx(name: string): CreateContext {
  return {
    name, clientAuth: true, runtime: new Runtime(), store: { type: 'memory' },
    resolvePath: (p) => resolve(dir, p),
    readFile: (p, path) => { try { return readFileSync(resolve(dir, p), 'utf8'); } catch { throw new ConfigError([{ path, message: `cannot read ${p}` }]); } },
  };
}

function create(cfg: Record<string, unknown>, name = 'a'): Authenticator {
  const type = AUTHENTICATORS_BY_TYPE.get(cfg.type as string)!;
  return type.create(type.schema.parse(cfg), ctx(name));
}

const noCert = { present: false, verified: false } as const;
function req(o: Partial<AuthRequest> & { headers?: AuthRequest['headers'] } = {}): AuthRequest {
  return { conn: { remoteAddress: '127.0.0.1', remotePort: 1, resumed: false, clientCert: noCert }, method: 'GET', path: '/', query: '', headers: {}, authority: 'a.test', clientIp: '127.0.0.1', now: Date.now(), ...o };
}

writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys: [pub(json('jws/rfc7515-appendix-a.json').cases['A.2'].jwk)] }));

// A minimal valid config per registered type, and a request carrying garbage of its kind.
const CONTRACT: Record<string, { cfg: Record<string, unknown>; garbage: AuthRequest['headers']; codes: string[] }> = {
  mtls: { cfg: { type: 'mtls' }, garbage: {}, codes: ['AUTH_010'] },
  jwt: { cfg: { type: 'jwt', algorithms: ['RS256'], jwks: { file: 'jwks.json' }, anyAudience: true }, garbage: { authorization: 'Bearer %%%.garbage' }, codes: ['AUTH_003'] },
  apiKey: { cfg: { type: 'apiKey', keys: [{ id: 'k', hash: `sha256:${'0'.repeat(64)}`, subject: 's' }] }, garbage: { 'x-api-key': '\u0000\u00ff garbage' }, codes: ['AUTH_003'] },
  hmac: { cfg: { type: 'hmac', clients: [{ id: 'c', secret: 'x'.repeat(32), subject: 's' }] }, garbage: { 'x-api-key': 'c', 'x-signature': 'zz', 'x-timestamp': 'yesterday', 'x-nonce': 'n' }, codes: ['AUTH_003'] },
  bsm: { cfg: { type: 'bsm', keys: [{ publicKey: '0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798', subject: 's' }] }, garbage: { 'x-auth-key': 'xpub?', 'x-auth-signature': 'zz', 'x-auth-hash': 'h', 'x-auth-nonce': 'n', 'x-auth-time': 'now' }, codes: ['AUTH_003'] },
  sigv4: { cfg: { type: 'sigv4', region: 'us-east-1', service: 'service', keys: [{ accessKeyId: 'AKIDEXAMPLE', secret: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY', subject: 's' }] }, garbage: { authorization: 'AWS4-HMAC-SHA256 Credential=%%, Signature=zz' }, codes: ['AUTH_003'] },
};

t.test('contract: every registered authenticator', async (t) => {
  t.same(AUTHENTICATOR_TYPES.map((a) => a.type).sort(), Object.keys(CONTRACT).sort(), 'every type has a contract case');
  for (const [type, c] of Object.entries(CONTRACT)) {
    const a = create(c.cfg);
    const none = await a.verify(req());
    t.equal(none.kind, 'skip', `${type}: no credential -> skip`);
    if (type !== 'mtls') {
      const bad = await a.verify(req({ headers: c.garbage }));
      t.equal(bad.kind, 'deny', `${type}: garbage -> deny`);
      t.ok(bad.kind !== 'allow' && c.codes.includes(bad.code) && bad.code in ERRORS, `${type}: documented code ${bad.kind !== 'allow' ? bad.code : ''}`);
    }
    const unknownKey = configSchema.shape.authenticators.safeParse({ x: { ...c.cfg, bogus: 1 } });
    t.notOk(unknownKey.success, `${type}: unknown config key refused`);
  }
});

t.test('RFC 7515 Appendix A through the jwt authenticator (clock pinned before exp)', async (t) => {
  const cases = json('jws/rfc7515-appendix-a.json').cases;
  const pinned = (1300819380 - 60) * 1000;
  const hs = cases['A.1'];
  writeFileSync(join(dir, 'a3.json'), JSON.stringify({ keys: [pub(cases['A.3'].jwk)] }));
  const k = Buffer.from(hs.jwk.k, 'base64url');
  const auths = {
    'A.1': create({ type: 'jwt', algorithms: ['HS256'], secret: k.toString('base64url'), secretEncoding: 'base64url', issuer: 'joe', anyAudience: true }),
    'A.2': create({ type: 'jwt', algorithms: ['RS256'], jwks: { file: 'jwks.json' }, issuer: 'joe', anyAudience: true }),
    'A.3': create({ type: 'jwt', algorithms: ['ES256'], jwks: { file: 'a3.json' }, issuer: 'joe', anyAudience: true }),
  };
  for (const [id, a] of Object.entries(auths)) {
    const tok = cases[id].compact;
    const ok = await a.verify(req({ headers: { authorization: `Bearer ${tok}` }, now: pinned }));
    t.equal(ok.kind, 'allow', `${id} (${cases[id].alg}) verifies at its own time`);
    const late = await a.verify(req({ headers: { authorization: `Bearer ${tok}` } }));
    t.same(late.kind === 'deny' && late.code, 'AUTH_002', `${id} is expired today`);
  }
  const none = cases['A.5'].compact;
  for (const a of Object.values(auths)) {
    const r = await a.verify(req({ headers: { authorization: `Bearer ${none}` }, now: pinned }));
    t.same(r.kind === 'deny' && r.code, 'AUTH_001', 'A.5 alg none refused');
  }
  const confused = await auths['A.2'].verify(req({ headers: { authorization: `Bearer ${cases['A.1'].compact}` }, now: pinned }));
  t.same(confused.kind === 'deny' && confused.code, 'AUTH_001', 'an HS256 token where RS256 is configured');
});

t.test('jwt cache: a hit is the whole token, found by its signature tail', async (t) => {
  const secret = 'cache-test-secret-0123456789abcdef0123456789';
  const a = create({ type: 'jwt', algorithms: ['HS256'], secret, issuer: 'iss', audience: 'aud' });
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Date.now();
  const exp = Math.floor(now / 1000) + 60;
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'alice', iss: 'iss', aud: 'aud', exp })}`;
  const sig = createHmac('sha256', secret).update(input).digest('base64url');
  const token = `${input}.${sig}`;
  const at = (h: string, when = now) => req({ headers: { authorization: h }, now: when });

  const first = a.verify(at(`Bearer ${token}`));
  t.ok(first instanceof Promise, 'first sighting: the signature is checked');
  t.same(await first, { kind: 'allow', identity: { subject: 'alice', scopes: [], claims: { sub: 'alice', iss: 'iss', aud: 'aud', exp } }, reason: 'token verified' });
  const again = a.verify(at(`Bearer ${token}`));
  t.notOk(again instanceof Promise, 'the same token again: answered from the cache, synchronously');
  t.equal((again as { kind: string }).kind, 'allow');
  t.equal((a.verify(at(`bearer ${token}`)) as { kind: string }).kind, 'allow', 'scheme matched case-insensitively on the fast path');

  // Same signature (so the same cache key), different payload: must not ride on the cached entry.
  const forged = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'mallory', iss: 'iss', aud: 'aud', exp })}.${sig}`;
  const f = a.verify(at(`Bearer ${forged}`));
  t.ok(f instanceof Promise, 'a token sharing the signature tail is verified in full');
  t.match(await f, { kind: 'deny', code: 'AUTH_001' }, 'and refused: its signature does not match its payload');
  const prefixed = a.verify(at(`Bearer x${token}`));
  t.match(await prefixed, { kind: 'deny' }, 'the cached token with a byte in front is not a hit');
  t.equal((a.verify(at(`Bearer ${token}`)) as { kind: string }).kind, 'allow', 'the genuine token is still cached');

  const late = await a.verify(at(`Bearer ${token}`, exp * 1000 + 61_000));
  t.match(late, { kind: 'deny', code: 'AUTH_002' }, 'a cached token past exp (+ tolerance) is expired, not served from the cache');
});

t.test('RFC 7520 §4: valid signatures over non-JWT payloads are not tokens', async (t) => {
  for (const f of ['jws/rfc7520-4_1.rsa_v15_signature.json', 'jws/rfc7520-4_3.ecdsa_signature.json', 'jws/rfc7520-4_4.hmac-sha2_integrity_protection.json']) {
    const v = json(f);
    const key = await importJWK(v.input.alg.startsWith('HS') ? v.input.key : pub(v.input.key), v.input.alg);
    const { payload } = await compactVerify(v.output.compact, key);
    t.equal(Buffer.from(payload).toString(), v.input.payload, `${f}: the vector verifies`);
    const cfg = v.input.alg.startsWith('HS')
      ? { type: 'jwt', algorithms: [v.input.alg], secret: v.input.key.k, secretEncoding: 'base64url', anyAudience: true }
      : (writeFileSync(join(dir, 'c.json'), JSON.stringify({ keys: [pub(v.input.key)] })), { type: 'jwt', algorithms: [v.input.alg], jwks: { file: 'c.json' }, anyAudience: true });
    const r = await create(cfg).verify(req({ headers: { authorization: `Bearer ${v.output.compact}` } }));
    t.same(r.kind === 'deny' && r.code, 'AUTH_003', `${f}: refused as a JWT (payload is not a claims set)`);
  }
});

t.test('Wycheproof ECDSA P-256 (P1363) through the RFC 9421 ecdsa-p256-sha256 verifier', async (t) => {
  const w = json('wycheproof/ecdsa_secp256r1_sha256_p1363_test.json');
  let n = 0, wrong = 0;
  for (const g of w.testGroups) {
    const publicKey = createPublicKey(g.publicKeyPem);
    for (const c of g.tests) {
      let ok: boolean;
      try { ok = verifySignature({ alg: 'ecdsa-p256-sha256', publicKey }, Buffer.from(c.msg, 'hex'), Buffer.from(c.sig, 'hex')); } catch { ok = false; }
      n++;
      if ((c.result === 'valid' && !ok) || (c.result === 'invalid' && ok)) { wrong++; t.fail(`tcId ${c.tcId} (${c.comment}): expected ${c.result}`); }
    }
  }
  t.equal(wrong, 0, `${n} vectors, including r=s=0 (CVE-2022-21449)`);
});

t.test('Wycheproof HMAC-SHA256 (full-length tags) through the RFC 9421 hmac-sha256 verifier', async (t) => {
  const w = json('wycheproof/hmac_sha256_test.json');
  let n = 0, wrong = 0;
  for (const g of w.testGroups) {
    for (const c of g.tests) {
      const ok = verifySignature({ alg: 'hmac-sha256', secret: createSecretKey(Buffer.from(c.key, 'hex')) }, Buffer.from(c.msg, 'hex'), Buffer.from(c.tag, 'hex'));
      n++;
      // A truncated tag is never accepted here (the whole MAC is required).
      const expect = c.result === 'valid' && g.tagSize === 256;
      if (ok !== expect) { wrong++; t.fail(`tcId ${c.tcId}: got ${ok}`); }
    }
  }
  t.equal(wrong, 0, `${n} vectors`);
});
