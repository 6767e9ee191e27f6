// OCSP checking of client certificates (tls.clientAuth.ocsp) against OpenSSL's own
// OCSP responder (`openssl ocsp -index`), with a PKI made by the openssl CLI at test
// time: a delegated responder certificate, a CA that signs its own answers, an
// intermediate the client sends in its chain, and responders that must not be trusted.
// The responders listen on a port the kernel picks; the tests only send to 127.0.0.1.
import t from 'tap';
import https from 'node:https';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as netServer, type Server as NetServer } from 'node:net';
import { createServer as httpServer, type Server as HttpServer } from 'node:http';
import { join } from 'node:path';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, freePort, until, type Harness } from '../helpers/harness.ts';
import { parseProm, value } from '../helpers/prom.ts';
import { loadConfig } from '../../src/config/load.ts';
import { explain } from '../../src/explain.ts';
import { ocspQuestion, readResponse } from '../../src/tls/ocsp.ts';
import { X509Certificate } from 'node:crypto';

const fx = makeFixture();
const dir = join(fx.dir, 'ocsp');
mkdirSync(dir);
const p = (n: string) => join(dir, n);
const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });

// ---- The PKI, by the openssl CLI ------------------------------------------------------
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
function selfSigned(name: string, cn: string): void {
  ssl('req', '-x509', ...EC, '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '30', '-subj', `/CN=${cn}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
}
function issued(name: string, cn: string, ca: string, serial: string, ext: string): void {
  ssl('req', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
  writeFileSync(p(`${name}.ext`), ext);
  ssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-set_serial', `0x${serial}`, '-days', '30', '-extfile', `${name}.ext`, '-out', `${name}.crt`);
}
const leafExt = (port?: number) => `extendedKeyUsage=clientAuth\n${port ? `authorityInfoAccess=OCSP;URI:http://127.0.0.1:${port}/\n` : ''}`;
const EXPIRY = '301231235959Z';
const index = (rows: [state: 'V' | 'R', serial: string, cn: string][]) =>
  rows.map(([s, serial, cn]) => `${s}\t${EXPIRY}\t${s === 'R' ? '261101000000Z,keyCompromise' : ''}\t${serial}\tunknown\t/CN=${cn}`).join('\n') + '\n';

selfSigned('ca', 'OCSP Test Root CA');
selfSigned('rogue-ca', 'Rogue CA');
issued('responder', 'Root OCSP responder', 'ca', '1001', 'extendedKeyUsage=OCSPSigning\nkeyUsage=critical,digitalSignature\n');
issued('rogue-responder', 'Root OCSP responder', 'rogue-ca', '1001', 'extendedKeyUsage=OCSPSigning\nkeyUsage=critical,digitalSignature\n');
issued('not-a-responder', 'Root OCSP responder', 'ca', '1002', 'extendedKeyUsage=clientAuth\n');
issued('int', 'OCSP Test Intermediate CA', 'ca', '3001', 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n');

// ---- Responders -------------------------------------------------------------------------
const children: ChildProcess[] = [];
/** `openssl ocsp` answering from an index file, signed by `signer`, for certificates `ca` issued. */
async function responder(indexFile: string, signer: string, ca: string, port = 0): Promise<{ port: number; proc: ChildProcess }> {
  const proc = spawn('openssl', ['ocsp', '-index', indexFile, '-port', String(port), '-rsigner', `${signer}.crt`, '-rkey', `${signer}.key`, '-CA', `${ca}.crt`, '-ndays', '1'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let out = '';
  const bound = await new Promise<number>((resolve, reject) => {
    const on = (c: Buffer) => { out += c; const m = /ACCEPT .*:(\d+)/.exec(out); if (m) resolve(+m[1]!); };
    proc.stdout!.on('data', on);
    proc.stderr!.on('data', on);
    proc.once('exit', (code) => reject(new Error(`openssl ocsp exited (${code}): ${out}`)));
  });
  return { port: bound, proc };
}
function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((r) => { proc.once('exit', () => r()); proc.kill('SIGTERM'); });
}

let root: { port: number; proc: ChildProcess }, intermediate: { port: number }, rotating: { port: number; proc: ChildProcess };
let rogue: { port: number }, unauthorised: { port: number }, selfSigning: { port: number };
let silent: NetServer, garbage: HttpServer, stall: HttpServer, closedPort: number, silentPort: number, garbagePort: number, stallPort: number;
let h: Harness, soft: Harness;
const held: import('node:net').Socket[] = [];

t.before(async () => {
  writeFileSync(p('root.idx'), index([['V', '2001', 'alice'], ['R', '2002', 'rex'], ['V', '2004', 'nia']]));
  writeFileSync(p('int.idx'), index([['V', '4001', 'bob']]));
  writeFileSync(p('carol.idx'), index([['V', '5001', 'carol']]));
  root = await responder('root.idx', 'responder', 'ca');
  intermediate = await responder('int.idx', 'int', 'int');
  rotating = await responder('carol.idx', 'responder', 'ca');
  rogue = await responder('root.idx', 'rogue-responder', 'ca');
  unauthorised = await responder('root.idx', 'not-a-responder', 'ca');
  selfSigning = await responder('root.idx', 'ca', 'ca');
  issued('alice', 'alice', 'ca', '2001', leafExt(root.port));
  issued('rex', 'rex', 'ca', '2002', leafExt(root.port));
  issued('uma', 'uma', 'ca', '2003', leafExt(root.port)); // not in the responder's index: "unknown"
  issued('nia', 'nia', 'ca', '2004', leafExt()); // names no responder
  issued('bob', 'bob', 'int', '4001', leafExt(intermediate.port));
  issued('carol', 'carol', 'ca', '5001', leafExt(rotating.port));
  writeFileSync(p('bob-chain.crt'), readFileSync(p('bob.crt'), 'utf8') + readFileSync(p('int.crt'), 'utf8'));

  // A port nothing listens on; one that accepts and never answers; one that answers junk.
  closedPort = await freePort();
  silent = netServer((c) => { held.push(c); });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
  silentPort = (silent.address() as { port: number }).port;
  garbage = httpServer((_q, s) => { s.writeHead(200, { 'content-type': 'application/ocsp-response' }); s.end('not DER at all'); });
  await new Promise<void>((r) => garbage.listen(0, '127.0.0.1', () => r()));
  garbagePort = (garbage.address() as { port: number }).port;
  // One that starts an answer and never finishes it.
  stall = httpServer((_q, s) => { s.writeHead(200, { 'content-type': 'application/ocsp-response', 'content-length': '500' }); s.write(Buffer.from([0x30, 0x82])); });
  await new Promise<void>((r) => stall.listen(0, '127.0.0.1', () => r()));
  stallPort = (stall.address() as { port: number }).port;

  h = await startHarness(fx, config('require'));
  soft = await startHarness(fx, config('best-effort', `http://127.0.0.1:${closedPort}/`));
});

t.teardown(async () => {
  await h?.close();
  await soft?.close();
  for (const c of held) c.destroy();
  silent?.close();
  garbage?.close();
  stall?.closeAllConnections();
  stall?.close();
  await Promise.all(children.map(stop));
});

function config(mode: string, responder?: string, extra = ''): string {
  return `
server:
  listen: 127.0.0.1:0
tls:
  certificates:
    - hosts: [a.test]
      cert: {{PKI}}/a.crt
      key: {{PKI}}/a.key
  clientAuth:
    ca: {{PKI}}/ocsp/ca.crt
    ocsp:
      mode: ${mode}
      timeoutMs: 500
      maxAgeSec: 1
      retrySec: 0${responder ? `\n      responder: ${responder}` : ''}
upstream:
  url: {{UPSTREAM}}
authenticators:
  cert: { type: mtls }
policies:
  - name: public
    match: { paths: ["/public"] }
    authenticate: none
  - name: api
    match: { paths: ["/**"] }
    authenticate: cert
${extra}`;
}

const who = (name: string, certFile = `${name}.crt`) => ({ cert: readFileSync(p(certFile), 'utf8'), key: readFileSync(p(`${name}.key`), 'utf8') });
/** The reason the 'denied' log line of a request gives (logs are written asynchronously). */
async function denial(hh: Harness, requestId: string): Promise<string> {
  await until(`the denial of ${requestId} logged`, () => hh.logs.some((l) => l.msg === 'denied' && l.requestId === requestId));
  return hh.logs.find((l) => l.msg === 'denied' && l.requestId === requestId)!.reason;
}
const scrape = async (hh: Harness) => parseProm(await (await fetch(`http://127.0.0.1:${hh.adminPort}/metrics`)).text()).samples;

t.test('a certificate the responder calls good is let through with its identity', async (t) => {
  const r = await request(h, fx, { path: '/api/x', ...who('alice') });
  t.equal(r.status, 200);
  t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'alice');
});

t.test('a revoked certificate is refused with 401 AUTH_010 and never reaches the upstream', async (t) => {
  const seen = h.seen.length;
  const r = await request(h, fx, { path: '/api/x', ...who('rex') });
  t.equal(r.status, 401);
  t.equal(r.json.error.code, 'AUTH_010');
  t.equal(h.seen.length, seen, 'nothing forwarded');
  t.match(await denial(h, r.json.error.requestId), /OCSP: revoked at 2026-11-01T00:00:00.000Z \(keyCompromise\)/, 'the log says why: OCSP, when, and the reason');
  // The certificate is not needed on a public path, so it is not consulted there.
  t.equal((await request(h, fx, { path: '/public', ...who('rex') })).status, 200, 'a public path does not need the certificate');
});

t.test('require: a status that cannot be learnt is refused, each with its reason', async (t) => {
  const cases: [string, RegExp][] = [
    ['uma', /OCSP: the responder does not know the certificate/],
    ['nia', /OCSP: the certificate names no OCSP responder/],
  ];
  for (const [name, why] of cases) {
    const r = await request(h, fx, { path: '/api/x', ...who(name) });
    t.equal(r.status, 401, name);
    t.equal(r.json.error.code, 'AUTH_010', name);
    t.match(await denial(h, r.json.error.requestId), why, `${name}: logged reason`);
  }
});

t.test('a client under an intermediate: its issuing CA must be in tls.clientAuth.ca', async (t) => {
  // Only the root there: the handshake verifies (the client sends the intermediate), but
  // the OCSP question needs the issuer's key, and require refuses what it cannot ask.
  const r = await request(h, fx, { path: '/api/x', ...who('bob', 'bob-chain.crt') });
  t.equal(r.status, 401);
  t.equal(r.json.error.code, 'AUTH_010');
  t.match(await denial(h, r.json.error.requestId), /OCSP: the CA that issued it is not in tls.clientAuth.ca/);
  // Root and intermediate there: the intermediate's own responder (it signs its answers itself) is asked.
  writeFileSync(p('root-and-int.crt'), readFileSync(p('ca.crt'), 'utf8') + readFileSync(p('int.crt'), 'utf8'));
  const hh = await startHarness(fx, config('require').replace('ocsp/ca.crt', 'ocsp/root-and-int.crt'));
  try {
    const ok = await request(hh, fx, { path: '/api/x', ...who('bob') });
    t.equal(ok.status, 200);
    t.equal(hh.seen.at(-1)!.headers['x-auth-user-id'], 'bob');
    t.equal((await request(hh, fx, { path: '/api/x', ...who('alice') })).status, 200, 'and the root\'s clients still pass');
  } finally {
    await hh.close();
  }
});

t.test('answers that must not be trusted are refused (require)', async (t) => {
  const cases: [string, number, RegExp][] = [
    ['a responder certificate from another CA', rogue.port, /which the certificate's CA did not issue/],
    ['a certificate of the right CA without OCSPSigning', unauthorised.port, /not authorised for OCSP signing/],
    ['a responder that never answers', 0, /no answer within 500 ms/],
    ['nothing listening', -1, /ECONNREFUSED/],
    ['an answer that is not DER', -2, /OCSP: responder http:\/\/127\.0\.0\.1:\d+: (malformed|not an OCSP response|truncated)/],
    ['an answer begun and never finished', -3, /OCSP: responder http:\/\/127\.0\.0\.1:\d+: (no answer within 500 ms|answer cut short)/],
  ];
  for (const [what, port, why] of cases) {
    const url = `http://127.0.0.1:${port === 0 ? silentPort : port === -1 ? closedPort : port === -2 ? garbagePort : port === -3 ? stallPort : port}/`;
    const hh = await startHarness(fx, config('require', url));
    try {
      const r = await request(hh, fx, { path: '/api/x', ...who('alice') });
      t.equal(r.status, 401, what);
      t.equal(r.json.error.code, 'AUTH_010', what);
      t.equal(hh.seen.length, 0, `${what}: nothing forwarded`);
      t.match(await denial(hh, r.json.error.requestId), why, `${what}: logged reason`);
      const s = await scrape(hh);
      t.equal(value(s, 'portcullis_ocsp_lookups_total', { result: 'error' }), 1, `${what}: counted as an error`);
    } finally {
      await hh.close();
    }
  }
  // The CA signing its own answers (no delegated responder) is trusted.
  const hh = await startHarness(fx, config('require', `http://127.0.0.1:${selfSigning.port}/`));
  try {
    t.equal((await request(hh, fx, { path: '/api/x', ...who('alice') })).status, 200, 'an answer signed by the issuing CA itself');
    const r = await request(hh, fx, { path: '/api/x', ...who('rex') });
    t.equal(r.status, 401, 'and its "revoked" refuses');
  } finally {
    await hh.close();
  }
});

t.test('best-effort: an unreachable responder lets a verified certificate through, and says so', async (t) => {
  const r = await request(soft, fx, { path: '/api/x', ...who('alice') });
  t.equal(r.status, 200);
  t.equal(soft.seen.at(-1)!.headers['x-auth-user-id'], 'alice');
  await until('the failure logged', () => soft.logs.some((l) => l.msg === 'OCSP lookup: error' && l.mode === 'best-effort' && /ECONNREFUSED/.test(l.detail)));
  // The handshake's own verdict still stands: a certificate no configured CA issued is refused.
  const fxClient = { cert: fx.clients.valid.certPem, key: fx.clients.valid.keyPem };
  const u = await request(soft, fx, { path: '/api/x', ...fxClient });
  t.equal(u.status, 401);
  t.equal(u.json.error.code, 'AUTH_001');
  // best-effort still refuses what a responder says is revoked.
  const hh = await startHarness(fx, config('best-effort'));
  try {
    const rr = await request(hh, fx, { path: '/api/x', ...who('rex') });
    t.equal(rr.status, 401);
    t.equal(rr.json.error.code, 'AUTH_010');
    t.equal((await request(hh, fx, { path: '/api/x', ...who('uma') })).status, 200, 'an "unknown" answer is let through in best-effort');
  } finally {
    await hh.close();
  }
});

t.test('answers are cached: many requests, one lookup; a revocation reaches a kept-alive connection', async (t) => {
  const hh = await startHarness(fx, config('require', undefined).replace('maxAgeSec: 1', 'maxAgeSec: 2'));
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: fx.ca.certPem, servername: 'a.test', checkServerIdentity: () => undefined, ...who('carol') });
  const sockets = new Set<unknown>();
  const get = () => new Promise<{ status: number; code?: string }>((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: hh.port, path: '/api/x', agent, headers: { host: 'a.test' } }, (res) => {
      let b = '';
      res.on('data', (c) => { b += c; });
      res.on('end', () => resolve({ status: res.statusCode!, code: b ? JSON.parse(b).error?.code : undefined }));
    });
    req.on('socket', (s) => sockets.add(s));
    req.on('error', reject);
    req.end();
  });
  try {
    for (let i = 0; i < 5; i++) t.equal((await get()).status, 200, `request ${i + 1}`);
    t.equal(value(await scrape(hh), 'portcullis_ocsp_lookups_total', { result: 'good' }), 1, 'five requests, one lookup');
    // The CA revokes carol: its responder restarts with the new index, on the same port.
    await stop(rotating.proc);
    writeFileSync(p('carol.idx'), index([['R', '5001', 'carol']]));
    rotating = await responder('carol.idx', 'responder', 'ca', rotating.port);
    // Within maxAgeSec the cached "good" answer is used; after it, the next request asks again.
    let last = await get();
    for (let i = 0; i < 40 && last.status === 200; i++) { await new Promise((r) => setTimeout(r, 100)); last = await get(); }
    t.equal(last.status, 401, 'refused once the cached answer ran out');
    t.equal(last.code, 'AUTH_010');
    t.equal(sockets.size, 1, 'all on one kept-alive connection');
    t.ok((value(await scrape(hh), 'portcullis_ocsp_lookups_total', { result: 'revoked' }) ?? 0) >= 1, 'the revoked answer counted');
  } finally {
    agent.destroy();
    await hh.close();
  }
});

t.test('explain asks the responder too, and shows its answer', async (t) => {
  const cfg = loadConfig(h.configFile);
  const ok = await explain(cfg, { method: 'GET', url: 'https://a.test/api/x', headers: [], certPem: readFileSync(p('alice.crt'), 'utf8') });
  t.ok(!('error' in ok) && ok.decision?.outcome === 'allow', 'alice: allowed');
  const no = await explain(cfg, { method: 'GET', url: 'https://a.test/api/x', headers: [], certPem: readFileSync(p('rex.crt'), 'utf8') });
  t.ok(!('error' in no) && no.decision?.outcome === 'deny' && no.decision.code === 'AUTH_010', 'rex: AUTH_010');
  t.match(!('error' in no) ? no.conn.clientCert.detail : '', /OCSP: revoked/);
  t.match(!('error' in ok) ? ok.ocsp : '', /^good$/, 'the answer is shown');
  t.match(!('error' in no) ? no.ocsp : '', /^revoked: revoked at 2026-11-01T00:00:00.000Z \(keyCompromise\)$/);
  const softCfg = loadConfig(soft.configFile);
  const let1 = await explain(softCfg, { method: 'GET', url: 'https://a.test/api/x', headers: [], certPem: readFileSync(p('alice.crt'), 'utf8') });
  t.match(!('error' in let1) ? let1.ocsp : '', /^error: responder http:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED.* \(best-effort: let through\)$/, 'best-effort says it let an unanswered certificate through');
  t.equal(!('error' in let1) && let1.decision?.outcome, 'allow');
});

t.test('a tampered answer is never accepted', async (t) => {
  // A real answer from OpenSSL's responder, then every byte of its signed part flipped in turn.
  const out = p('alice.resp');
  ssl('ocsp', '-issuer', 'ca.crt', '-cert', 'alice.crt', '-url', `http://127.0.0.1:${root.port}/`, '-no_nonce', '-respout', out, '-noverify');
  const der = readFileSync(out);
  const q = ocspQuestion(new X509Certificate(readFileSync(p('alice.crt'))).raw, new X509Certificate(readFileSync(p('ca.crt'))), undefined);
  if (typeof q === 'string') throw new Error(q);
  t.equal(readResponse(der, q, Date.now()).status, 'good', 'the untouched answer verifies');
  let accepted = 0, tried = 0;
  for (let i = 0; i < der.length; i++) {
    const bad = Buffer.from(der);
    bad[i]! ^= 0x01;
    tried++;
    try { if (readResponse(bad, q, Date.now()).status === 'good') accepted++; } catch { /* refused */ }
  }
  t.equal(accepted, 0, `no flipped bit is accepted (${tried} tried)`);
  for (let n = 0; n < der.length; n++) t.throws(() => readResponse(der.subarray(0, n), q, Date.now()), `truncated to ${n} bytes`);
  t.throws(() => readResponse(der, q, Date.now() + 3 * 86_400_000), /stale answer/, 'an answer past its nextUpdate');
  t.throws(() => readResponse(der, q, Date.now() - 86_400_000), /in the future|outside its validity/, 'an answer dated after now');
});


t.test('portcullis check and explain, as commands, say what OCSP does', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const BIN = new URL('../../bin/portcullis.js', import.meta.url).pathname;
  const check = spawnSync(process.execPath, [BIN, 'check', '--config', h.configFile], { encoding: 'utf8', timeout: 30_000 });
  t.equal(check.status, 0, check.stderr);
  t.match(check.stdout, /OCSP: require \(no usable answer -> 401 AUTH_010\); responder named by each certificate \(authorityInfoAccess\); answers kept until nextUpdate, at most 1 s; timeout 500 ms/);
  const ex = spawnSync(process.execPath, [BIN, 'explain', '--config', h.configFile, 'GET', 'https://a.test/api/x', '--cert', p('rex.crt')], { encoding: 'utf8', timeout: 30_000 });
  t.match(ex.stdout, /ocsp +revoked: revoked at 2026-11-01T00:00:00\.000Z \(keyCompromise\)/);
  t.match(ex.stdout, /result +DENY 401 AUTH_010/);
});
