// RFC 9421 details not covered by the Appendix B vectors, every algorithm, and
// the nonce store's "deny rather than forget" rule.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createPrivateKey, createHash, sign, constants } from 'node:crypto';
import { AUTHENTICATORS_BY_TYPE } from '../../src/authenticators/registry.ts';
import type { AuthRequest, Verdict } from '../../src/authenticators/types.ts';
import { Runtime } from '../../src/runtime.ts';
import { MemoryNonceStore } from '../../src/store/nonces.ts';

const KEYS = new URL('../../../shared/reference/vectors/rfc9421/keys/', import.meta.url).pathname;
const pem = (f: string) => { const s = readFileSync(join(KEYS, f), 'utf8'); return s.slice(s.indexOf('-----BEGIN')); };
const NOW = 1_700_000_000_000;

const hmacType = AUTHENTICATORS_BY_TYPE.get('hmac')!;
function make(extra: Record<string, unknown> = {}) {
  const cfg = hmacType.schema.parse({
    type: 'hmac', scheme: 'rfc9421', requiredComponents: ['@method', '@target-uri'],
    clients: [
      { id: 'rsa', publicKey: 'test-key-rsa.pub.pem', algorithm: 'rsa-v1_5-sha256', subject: 'rsa' },
      { id: 'ec', publicKey: 'test-key-ecc-p256.pub.pem', algorithm: 'ecdsa-p256-sha256', subject: 'ec' },
      { id: 'ed', publicKey: 'test-key-ed25519.pub.pem', algorithm: 'ed25519', subject: 'ed' },
      { id: 'pss', publicKey: 'test-key-rsa-pss.pub.pem', algorithm: 'rsa-pss-sha512', subject: 'pss' },
      { id: 'gone', publicKey: 'test-key-ed25519.pub.pem', algorithm: 'ed25519', subject: 'x', revoked: true },
    ],
    ...extra,
  });
  return hmacType.create(cfg, { name: 'sigs', clientAuth: false, runtime: new Runtime(), store: { type: 'memory' }, resolvePath: (p) => join(KEYS, p), readFile: (p) => readFileSync(join(KEYS, p), 'utf8') });
}

const SIGNERS = {
  rsa: (d: Buffer) => sign('sha256', d, createPrivateKey(pem('test-key-rsa.priv.pem'))),
  ec: (d: Buffer) => sign('sha256', d, { key: createPrivateKey(pem('test-key-ecc-p256.priv.pem')), dsaEncoding: 'ieee-p1363' }),
  ed: (d: Buffer) => sign(null, d, createPrivateKey(pem('test-key-ed25519.priv.pem'))),
  pss: (d: Buffer) => sign('sha512', d, { key: createPrivateKey(pem('test-key-rsa-pss.priv.pem')), padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 }),
  gone: (d: Buffer) => sign(null, d, createPrivateKey(pem('test-key-ed25519.priv.pem'))),
};

/** Sign like a client would: the base is written out by hand here, independently of the verifier. */
function signed(keyid: keyof typeof SIGNERS, o: { params?: string; components?: [string, string][]; method?: string; path?: string; query?: string; body?: string } = {}): AuthRequest {
  const components = o.components ?? [['"@method"', o.method ?? 'POST'], ['"@target-uri"', `https://api.example.com${o.path ?? '/orders'}${o.query ? '?' + o.query : ''}`]];
  const params = `(${components.map(([c]) => c).join(' ')});created=${NOW / 1000};keyid="${keyid}"${o.params ?? ''}`;
  const base = [...components.map(([c, v]) => `${c}: ${v}`), `"@signature-params": ${params}`].join('\n');
  const sig = SIGNERS[keyid](Buffer.from(base));
  const body = o.body === undefined ? undefined : Buffer.from(o.body);
  return {
    conn: { remoteAddress: '127.0.0.1', remotePort: 1, resumed: false, clientCert: { present: false, verified: false } },
    method: o.method ?? 'POST', path: o.path ?? '/orders', query: o.query ?? '', authority: 'api.example.com', clientIp: '127.0.0.1', now: NOW, body,
    headers: { 'signature-input': `sig1=${params}`, signature: `sig1=:${sig.toString('base64')}:`, ...(body ? { 'content-digest': `sha-512=:${createHash('sha512').update(body).digest('base64')}:` } : {}) },
  };
}

const code = (v: Verdict) => (v.kind === 'allow' ? 'allow' : v.code);

t.test('every registered algorithm verifies, and a flipped bit does not', async (t) => {
  const a = make();
  for (const k of ['rsa', 'ec', 'ed', 'pss'] as const) {
    const r = signed(k);
    t.equal(code(await a.verify(r)), 'allow', k);
    const bad = { ...r, method: 'PUT' };
    t.equal(code(await a.verify(bad)), 'AUTH_001', `${k}: method changed`);
  }
  t.equal(code(await a.verify(signed('gone'))), 'AUTH_004', 'revoked key');
});

t.test('derived components: @scheme, @request-target, @query, @authority, @query-param', async (t) => {
  const a = make({ requiredComponents: [] });
  const r = signed('ed', { query: 'a=1&b=two%20words', components: [['"@scheme"', 'https'], ['"@request-target"', '/orders?a=1&b=two%20words'], ['"@query"', '?a=1&b=two%20words'], ['"@authority"', 'api.example.com'], ['"@query-param";name="b"', 'two%20words'], ['"@path"', '/orders']] });
  t.equal(code(await a.verify(r)), 'allow');
  t.equal(code(await a.verify({ ...r, query: 'a=1&b=other' })), 'AUTH_001', 'query changed');
  const status = signed('ed', { components: [['"@status"', '200']] });
  t.equal(code(await a.verify(status)), 'AUTH_003', '@status is for responses');
});

t.test('parameters: alg must match the key, expires, tag, required coverage, body digest', async (t) => {
  const a = make();
  t.equal(code(await a.verify(signed('ed', { params: ';alg="ed25519"' }))), 'allow');
  t.equal(code(await a.verify(signed('ed', { params: ';alg="hmac-sha256"' }))), 'AUTH_001', 'alg mismatch');
  t.equal(code(await a.verify(signed('ed', { params: `;expires=${NOW / 1000 - 1}` }))), 'AUTH_009', 'expired signature');
  t.equal(code(await make({ tag: 'app' }).verify(signed('ed', { params: ';tag="other"' }))), 'AUTH_003', 'wrong tag');
  t.equal(code(await make({ tag: 'app' }).verify(signed('ed', { params: ';tag="app"' }))), 'allow', 'right tag');
  t.equal(code(await a.verify(signed('ed', { components: [['"@method"', 'POST']] }))), 'AUTH_003', '@target-uri not covered');
  const withBody = signed('ed', { body: '{"a":1}', components: [['"@method"', 'POST'], ['"@target-uri"', 'https://api.example.com/orders'], ['"content-digest"', '']] });
  // The content-digest line must carry the header value: re-sign with it.
  const digest = `sha-512=:${createHash('sha512').update('{"a":1}').digest('base64')}:`;
  const ok = signed('ed', { body: '{"a":1}', components: [['"@method"', 'POST'], ['"@target-uri"', 'https://api.example.com/orders'], ['"content-digest"', digest]] });
  t.equal(code(await a.verify(ok)), 'allow', 'body with a covered, matching digest');
  t.equal(code(await a.verify(withBody)), 'AUTH_001', 'base with the wrong digest line');
  t.equal(code(await a.verify({ ...ok, body: Buffer.from('{"a":2}') })), 'AUTH_001', 'body changed');
  t.equal(code(await a.verify({ ...signed('ed'), body: Buffer.from('x') })), 'AUTH_003', 'a body without content-digest coverage');
  for (const garbage of ['sig1=(', 'sig1=("@method";created=1', 'sig1=:notbase64', '', 'sig1=?2', 'sig1=("@method");created=1.5']) {
    const r = { ...signed('ed'), headers: { 'signature-input': garbage, signature: 'sig1=:AAAA:' } };
    t.equal(code(await a.verify(r)), 'AUTH_003', `garbage Signature-Input ${JSON.stringify(garbage)}`);
  }
});

// RFC 9421 §7.2.5–7.2.6, catalogue HMAC-08: with several signatures, the one verified is the
// configured label, else the first present in both fields; any other never stands in for it.
t.test('several signatures: the chosen one must verify, and another label never stands in for it', async (t) => {
  const a = make();
  const good = signed('ed');
  const [gi, gs] = [good.headers['signature-input'] as string, good.headers['signature'] as string];
  const forgedInput = `sig0=("@method" "@target-uri");created=${NOW / 1000};keyid="ed"`;
  const forged = 'sig0=:' + Buffer.alloc(64, 7).toString('base64') + ':';
  const withExtra = (input: string, sig: string) => ({ ...good, headers: { ...good.headers, 'signature-input': input, signature: sig } });
  t.equal(code(await a.verify(withExtra(`${forgedInput}, ${gi}`, `${forged}, ${gs}`))), 'AUTH_001', 'a forged signature added first is the one verified, and fails');
  t.equal(code(await a.verify(withExtra(`${gi}, ${forgedInput}`, `${gs}, ${forged}`))), 'allow', 'a forged one added after the valid one changes nothing');
  t.equal(code(await make({ label: 'sig0' }).verify(withExtra(`${gi}, ${forgedInput}`, `${gs}, ${forged}`))), 'AUTH_001', 'the configured label is verified, not the valid one beside it');
  t.equal(code(await make({ label: 'sig1' }).verify(withExtra(`${forgedInput}, ${gi}`, `${forged}, ${gs}`))), 'allow', 'the configured label found after another');
  // The same label twice (two header lines, joined): RFC 8941 keeps the last, which must verify.
  const otherInput = gi.replace('keyid="ed"', 'keyid="ec"');
  t.equal(code(await a.verify(withExtra(`${gi}, ${otherInput}`, gs))), 'AUTH_001', 'a second sig1 in Signature-Input replaces the first');
});

t.test('nonce store: replays refused; when full of live nonces it refuses rather than forgets', async (t) => {
  const s = new MemoryNonceStore(3);
  t.equal(s.remember('a', 1000, 0), 'fresh');
  t.equal(s.remember('a', 1000, 10), 'replay');
  t.equal(s.remember('b', 1000, 0), 'fresh');
  t.equal(s.remember('c', 1000, 0), 'fresh');
  t.equal(s.remember('d', 1000, 500), 'full', 'full of live nonces: refuse');
  t.equal(s.remember('a', 2000, 600), 'replay', 'and a is still remembered');
  t.equal(s.remember('d', 3000, 1001), 'fresh', 'once the window passed, room again');
  t.equal(s.remember('a', 3000, 1002), 'fresh', 'an expired nonce may be used again (its timestamp would be outside the window anyway)');
});

// Catalogue HMAC-03: the signature is compared with crypto.timingSafeEqual over the decoded
// bytes, and a signature of the wrong length is refused without any byte comparison. The
// module is loaded with node:crypto whose timingSafeEqual records its arguments before it
// compares; everything else (the HMAC itself included) is the real node:crypto. How long a
// refusal takes is measured by `npm run bench:timing`, not asserted here.
t.test('signatures are compared in constant time: timingSafeEqual over equal lengths, no compare for a wrong length', async (t) => {
  const crypto = await import('node:crypto');
  const calls: [number, number][] = [];
  const timingSafeEqual = (a: NodeJS.ArrayBufferView, b: NodeJS.ArrayBufferView) => { calls.push([a.byteLength, b.byteLength]); return crypto.timingSafeEqual(a, b); };
  const { hmac } = await t.mockImport<typeof import('../../src/authenticators/hmac.ts')>('../../src/authenticators/hmac.ts', { 'node:crypto': t.createMock(crypto, { timingSafeEqual }) });
  const secret = 'constant-time-test-secret-0123456789abcdef';
  const sha = (s: string) => crypto.createHmac('sha256', secret).update(s).digest();
  const ctx = { name: 'sig', clientAuth: false, runtime: new Runtime(), store: { type: 'memory' as const }, resolvePath: (p: string) => p, readFile: () => '' };
  const simple = hmac.create(hmac.schema.parse({ type: 'hmac', clients: [{ id: 'p', secret, subject: 'p' }], message: ['method', 'path', 'timestamp'], requireNonce: false }), ctx);
  const ts = String(NOW / 1000);
  const req = (sig: string): AuthRequest => ({
    conn: { remoteAddress: '127.0.0.1', remotePort: 1, resumed: false, clientCert: { present: false, verified: false } },
    method: 'GET', path: '/x', query: '', authority: 'a.test', clientIp: '127.0.0.1', now: NOW,
    headers: { 'x-api-key': 'p', 'x-timestamp': ts, 'x-signature': sig },
  });
  const good = sha(`GET/x${ts}`).toString('hex');
  const cases: [string, string, string, [number, number][]][] = [
    ['the right signature', good, 'allow', [[32, 32]]],
    ['first byte wrong', (good[0] === 'a' ? 'b' : 'a') + good.slice(1), 'AUTH_001', [[32, 32]]],
    ['last byte wrong', good.slice(0, -1) + (good.at(-1) === 'a' ? 'b' : 'a'), 'AUTH_001', [[32, 32]]],
    ['one byte short', good.slice(0, -2), 'AUTH_001', []],
    ['one byte long', good + '00', 'AUTH_001', []],
  ];
  for (const [what, sig, want, compared] of cases) {
    calls.length = 0;
    t.equal(code(await simple.verify(req(sig))), want, what);
    t.same(calls, compared, `${what}: ${compared.length ? 'one timingSafeEqual of the 32-byte MACs' : 'refused on its length, with no byte compared'}`);
  }

  // RFC 9421 hmac-sha256 (B.2.5's shared secret shape): the same comparator.
  const rfc = hmac.create(hmac.schema.parse({ type: 'hmac', scheme: 'rfc9421', requiredComponents: ['@method'], clients: [{ id: 'k', secret, subject: 'k' }] }), ctx);
  const params = `("@method");created=${NOW / 1000};keyid="k"`;
  const mac = sha(`"@method": GET\n"@signature-params": ${params}`);
  const rreq = (m: Buffer): AuthRequest => ({ ...req(''), headers: { 'signature-input': `sig1=${params}`, signature: `sig1=:${m.toString('base64')}:` } });
  calls.length = 0;
  t.equal(code(await rfc.verify(rreq(mac))), 'allow', 'RFC 9421: the right MAC');
  const wrong = Buffer.from(mac); wrong[31]! ^= 1;
  t.equal(code(await rfc.verify(rreq(wrong))), 'AUTH_001', 'RFC 9421: last byte wrong');
  t.equal(code(await rfc.verify(rreq(mac.subarray(0, 31)))), 'AUTH_001', 'RFC 9421: one byte short');
  t.same(calls, [[32, 32], [32, 32]], 'RFC 9421: timingSafeEqual for the two full-length MACs, nothing for the short one');
});

// Catalogue HMAC-04: with `separator: ""` (seed 004) the signature does not fix where the nonce
// ends and the body begins. From one captured request, moving the nonce's last character to the
// front of the body gives a request with a new nonce and the same, valid signature. A
// `noncePattern` the client's nonces always match (seed 004: os.urandom(16).hex()) fixes the boundary.
t.test('noncePattern closes the nonce/body boundary shift of separator-free messages', async (t) => {
  const { createHmac, randomBytes } = await import('node:crypto');
  const secret = 'nonce-pattern-test-secret-0123456789abcdef';
  // Each its own process state (its own nonce memory).
  const make = (extra: Record<string, unknown>) => hmacType.create(hmacType.schema.parse({ type: 'hmac', clients: [{ id: 'p', secret, subject: 'p' }], ...extra }),
    { name: 'sig', clientAuth: false, runtime: new Runtime(), store: { type: 'memory' }, resolvePath: (p) => p, readFile: () => '' });
  const ts = String(NOW / 1000);
  const nonce = randomBytes(16).toString('hex');
  const body = '{"amount": 5}';
  const sig = createHmac('sha256', secret).update(`POST/orders${ts}${nonce}${body}`).digest('hex');
  const req = (n: string, b: string): AuthRequest => ({
    conn: { remoteAddress: '127.0.0.1', remotePort: 1, resumed: false, clientCert: { present: false, verified: false } },
    method: 'POST', path: '/orders', query: '', authority: 'a.test', clientIp: '127.0.0.1', now: NOW, body: Buffer.from(b),
    headers: { 'x-api-key': 'p', 'x-timestamp': ts, 'x-nonce': n, 'x-signature': sig },
  });
  const shifted = () => req(nonce.slice(0, -1), nonce.slice(-1) + body);

  const open = make({});
  t.equal(code(await open.verify(req(nonce, body))), 'allow', 'the captured request');
  t.equal(code(await open.verify(req(nonce, body))), 'AUTH_009', 'replayed as is: refused');
  t.equal(code(await open.verify(shifted())), 'allow', 'without noncePattern the shifted copy verifies under a new nonce (the ambiguity)');

  const pinned = make({ noncePattern: '[0-9a-f]{32}' });
  t.equal(code(await pinned.verify(req(nonce, body))), 'allow', 'with noncePattern: the captured request');
  t.equal(code(await pinned.verify(shifted())), 'AUTH_003', 'the shifted copy: its nonce is not 32 hex digits');
  const longer = req(nonce + body.slice(0, 1), body.slice(1));
  t.equal(code(await pinned.verify(longer)), 'AUTH_003', 'and shifting the other way');
  t.equal(code(await pinned.verify(req('x'.repeat(129), body))), 'AUTH_003', 'over 128 characters: refused before the pattern runs');

  // RFC 9421's nonce parameter is checked the same way.
  const rfc = make({ scheme: 'rfc9421', requiredComponents: ['@method'], noncePattern: '[0-9a-f]{32}', clients: [{ id: 'k', secret, subject: 'k' }] });
  const signedWith = (n: string): AuthRequest => {
    const params = `("@method");created=${NOW / 1000};keyid="k";nonce="${n}"`;
    const mac = createHmac('sha256', secret).update(`"@method": GET\n"@signature-params": ${params}`).digest('base64');
    return { ...req('', ''), method: 'GET', body: undefined, headers: { 'signature-input': `sig1=${params}`, signature: `sig1=:${mac}:` } };
  };
  t.equal(code(await rfc.verify(signedWith(randomBytes(16).toString('hex')))), 'allow', 'RFC 9421: a nonce that matches');
  t.equal(code(await rfc.verify(signedWith('not-hex'))), 'AUTH_003', 'RFC 9421: one that does not');

  t.throws(() => make({ noncePattern: '[0-9' }), /noncePattern: not a regular expression/, 'a bad pattern is a config error');
});
