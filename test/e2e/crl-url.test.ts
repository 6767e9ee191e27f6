// CRLs named by URL in tls.clientAuth.crl (src/tls/crlfetch.ts): fetched before the config
// loads, fetched again every crlRefreshSec, and a changed CRL reloads the config as a
// changed CRL file does. A CRL server on 127.0.0.1 plays the CA's distribution point.
import t from 'tap';
import { createServer, type Server } from 'node:http';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFile, spawnSync } from 'node:child_process';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, request, client, baseConfig, freePort, until, type Harness } from '../helpers/harness.ts';
import { parseProm, value } from '../helpers/prom.ts';
import { loadConfigFetching } from '../../src/config/load.ts';
import { makeCrl } from '../../src/tls/pki.ts';
import { pemBlocks } from '../../src/tls/asn1.ts';

const fx = makeFixture();
/** What the distribution point answers: [status, body]. */
let answer: [number, string | Buffer] = [200, pemBlocks(makeCrl(fx.ca, [fx.clients.revoked.serial]), 'X509 CRL')[0]!];
let hits = 0;
let crlServer: Server, crlPort: number, h: Harness;
const url = () => `http://127.0.0.1:${crlPort}/ca.crl`;
const yaml = (u: string) => baseConfig(`
authenticators:
  cert: { type: mtls }
policies:
  - { name: api, match: { paths: ["/**"] }, authenticate: cert }
`).replace('    crl: {{PKI}}/ca.crl\n', `    crl: ["${u}"]\n    crlRefreshSec: 1\n`);
const scrape = async () => parseProm(await (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`)).text()).samples;

t.before(async () => {
  crlServer = createServer((_q, s) => { hits++; s.writeHead(answer[0], { 'content-type': 'application/pkix-crl' }); s.end(answer[1]); });
  await new Promise<void>((r) => crlServer.listen(0, '127.0.0.1', () => r()));
  crlPort = (crlServer.address() as { port: number }).port;
  h = await startHarness(fx, yaml(url()));
});
t.teardown(async () => { await h?.close(); crlServer?.closeAllConnections(); crlServer?.close(); });

t.test('a CRL fetched at start (DER) is enforced', async (t) => {
  t.equal((await request(h, fx, { path: '/x', ...client(fx, 'valid') })).status, 200);
  const r = await request(h, fx, { path: '/x', ...client(fx, 'revoked') });
  t.same([r.status, r.json?.error?.code], [401, 'AUTH_010'], 'the revoked certificate');
  await until('the denial logged', () => h.logs.some((l) => l.msg === 'denied' && l.requestId === r.json.error.requestId));
  t.match(h.logs.find((l) => l.msg === 'denied' && l.requestId === r.json.error.requestId)!.reason, /CERT_REVOKED/);
});

t.test('a new CRL at the URL (PEM now) reaches new handshakes without a restart', async (t) => {
  const reloads = value(await scrape(), 'portcullis_config_reloads_total', { result: 'success' }) ?? 0;
  answer = [200, makeCrl(fx.ca, [fx.clients.revoked.serial, fx.clients.valid.serial])];
  let status = 200;
  for (let i = 0; i < 60 && status === 200; i++) { await new Promise((r) => setTimeout(r, 100)); status = (await request(h, fx, { path: '/x', ...client(fx, 'valid') })).status; }
  t.equal(status, 401, 'the newly revoked certificate is refused');
  t.equal((await request(h, fx, { path: '/x', ...client(fx, 'ops') })).status, 200, 'another client still passes');
  const s = await scrape();
  // (The fetch before the first load happens before the server, and its metrics, exist.)
  t.ok((value(s, 'portcullis_crl_fetches_total', { result: 'changed' }) ?? 0) >= 1, 'the new CRL counted as changed');
  t.ok((value(s, 'portcullis_config_reloads_total', { result: 'success' }) ?? 0) > reloads, 'the change reloaded the config');
});

t.test('a distribution point that fails keeps the last good CRL', async (t) => {
  const b0 = hits;
  await until('a refetch of the same CRL', () => hits >= b0 + 2, 10_000);
  t.ok((value(await scrape(), 'portcullis_crl_fetches_total', { result: 'unchanged' }) ?? 0) >= 1, 'a refetch of the same CRL counted as unchanged');
  answer = [503, 'down'];
  const before = hits;
  await until('two more fetches', () => hits >= before + 2, 10_000);
  t.equal((await request(h, fx, { path: '/x', ...client(fx, 'ops') })).status, 200, 'still serving');
  t.equal((await request(h, fx, { path: '/x', ...client(fx, 'valid') })).status, 401, 'still revoked');
  t.ok((value(await scrape(), 'portcullis_crl_fetches_total', { result: 'failure' }) ?? 0) >= 1, 'counted as failures');
  t.ok(h.logs.some((l) => l.msg === 'CRL fetch failed; keeping the last good CRL' && /HTTP 503/.test(l.reason)), 'and logged');
  // Junk, then a CRL signed by another key: neither replaces the CRL that serves.
  answer = [200, 'not a CRL'];
  const b2 = hits;
  await until('a fetch of junk', () => hits >= b2 + 2, 10_000);
  answer = [200, makeCrl(fx.forgedCa, [])];
  const b3 = hits;
  await until('a fetch of the forged CRL', () => hits >= b3 + 2, 10_000);
  await until('the reload refused', () => h.logs.some((l) => l.msg === 'config reload refused; still serving the previous config' && /not signed by that CA's key/.test(JSON.stringify(l.issues))), 10_000);
  t.equal((await request(h, fx, { path: '/x', ...client(fx, 'valid') })).status, 401, 'the good CRL still serves');
  t.equal((await request(h, fx, { path: '/x', ...client(fx, 'ops') })).status, 200);
});

t.test('a CRL that cannot be fetched at start fails the load, saying why', async (t) => {
  const closed = await freePort();
  const f = join(fx.dir, 'crl-down.yaml');
  writeFileSync(f, yaml(`http://127.0.0.1:${closed}/ca.crl`).replaceAll('{{PKI}}', fx.dir).replace('{{UPSTREAM}}', 'http://127.0.0.1:1'));
  await t.rejects(loadConfigFetching(f), /tls\.clientAuth\.crl\[0\]: cannot fetch CRL http:\/\/127\.0\.0\.1:\d+\/ca\.crl: connect ECONNREFUSED/);
  writeFileSync(join(fx.dir, 'crl-creds.yaml'), yaml('http://user:secret@127.0.0.1:1/ca.crl').replaceAll('{{PKI}}', fx.dir).replace('{{UPSTREAM}}', 'http://127.0.0.1:1'));
  await t.rejects(loadConfigFetching(join(fx.dir, 'crl-creds.yaml')), /tls\.clientAuth\.crl\[0\]: a CRL URL must not carry credentials/, 'credentials in the URL (they would be logged)');
  const BIN = new URL('../../bin/portcullis.js', import.meta.url).pathname;
  const r = spawnSync(process.execPath, [BIN, 'check', '--config', f], { encoding: 'utf8', timeout: 30_000 });
  t.equal(r.status, 1);
  t.match(r.stderr, /crl-down\.yaml:\d+:\d+: tls\.clientAuth\.crl\[0\]: cannot fetch CRL/);
  answer = [200, makeCrl(fx.ca, [])];
  writeFileSync(f, yaml(url()).replaceAll('{{PKI}}', fx.dir).replace('{{UPSTREAM}}', 'http://127.0.0.1:1'));
  // Asynchronously: the distribution point is served by this process.
  const ok = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [BIN, 'check', '--config', f], { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? 1 : 0, stdout, stderr }));
  });
  t.equal(ok.code, 0, ok.stderr);
  t.match(ok.stdout, /CRLs:[^]*CN=Test Client CA/, 'check fetches it and lists it');
});
