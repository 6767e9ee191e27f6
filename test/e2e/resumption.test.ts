// TLS session resumption must never give a connection a client identity that
// a full handshake would not (the nginx CVE-2025-23419 class; Node resumes
// sessions across SNI names and keeps the first handshake's verdict).
import t from 'tap';
import https from 'node:https';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, client, baseConfig, until } from '../helpers/harness.ts';
import { loadConfig } from '../../src/config/load.ts';
import { makeCrl } from '../../src/tls/pki.ts';

const fx = makeFixture();
const policies = `
authenticators:
  cert: { type: mtls }
policies:
  - name: api
    match: { paths: ["/**"] }
    authenticate: cert
`;

interface Result { status: number; reused: boolean; session?: Buffer; body: any }

function get(port: number, servername: string, o: { session?: Buffer; cert?: string; key?: string; minVersion?: 'TLSv1.2' | 'TLSv1.3'; maxVersion?: 'TLSv1.2' | 'TLSv1.3' } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    let session: Buffer | undefined;
    let reused = false;
    const req = https.request({
      host: '127.0.0.1', port, path: '/x', servername, agent: false, ca: fx.ca.certPem, checkServerIdentity: () => undefined,
      headers: { host: servername }, session: o.session, cert: o.cert, key: o.key, maxVersion: o.maxVersion, minVersion: o.minVersion,
    } as https.RequestOptions, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => setTimeout(() => resolve({ status: res.statusCode!, reused, session, body: JSON.parse(b) }), 20));
    });
    req.on('socket', (s) => {
      const ts = s as TLSSocket;
      ts.on('session', (sess: Buffer) => { session = sess; });
      ts.once('secureConnect', () => { reused = ts.isSessionReused(); });
    });
    req.on('error', reject);
    req.end();
  });
}

for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
  t.test(`${version}: resumption across SNI names gives the identity a full handshake would`, async (t) => {
    const h = await startHarness(fx, baseConfig(policies));
    t.teardown(() => h.close());
    const v = { minVersion: version, maxVersion: version };
    const first = await get(h.port, 'a.test', { ...client(fx, 'valid'), ...v });
    t.equal(first.status, 200);
    t.ok(first.session, 'got a session to resume');
    const resumed = await get(h.port, 'b.test', { session: first.session, ...v });
    // Client-certificate trust is one setting for every name, so a resumed
    // session may carry the certificate the client proved it holds; a full
    // handshake under b.test with it gives the same identity.
    if (resumed.reused) {
      t.equal(resumed.status, 200);
      t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'client-1');
    } else {
      t.same([resumed.status, resumed.body.error.code], [401, 'AUTH_010']);
    }
    const full = await get(h.port, 'b.test', { ...client(fx, 'valid'), ...v });
    t.equal(full.status, 200);
    t.equal(h.seen.at(-1)!.headers['x-auth-user-id'], 'client-1');
  });

  t.test(`${version}: after a reload that stops trusting the CA, an old session cannot resume`, async (t) => {
    const h = await startHarness(fx, baseConfig(policies));
    t.teardown(() => h.close());
    const v = { minVersion: version, maxVersion: version };
    const first = await get(h.port, 'a.test', { ...client(fx, 'valid'), ...v });
    t.equal(first.status, 200);
    const again = await get(h.port, 'a.test', { session: first.session, ...v });
    t.ok(again.reused, 'resumption works while the trust configuration is unchanged');
    t.equal(again.status, 200);

    // Trust only the other CA now (no CRL for it).
    writeFileSync(h.configFile, baseConfig(policies).replaceAll('{{UPSTREAM}}', `http://127.0.0.1:${h.upstreamPort}`).replaceAll('{{PKI}}', fx.dir)
      .replace(`ca: ${fx.dir}/ca.crt`, `ca: ${fx.dir}/forged-ca.crt`).replace(`    crl: ${fx.dir}/ca.crl\n`, ''));
    h.server.reload(loadConfig(h.configFile));
    const after = await get(h.port, 'a.test', { session: first.session, ...v });
    t.notOk(after.reused, 'the old session is not resumed');
    t.same([after.status, after.body.error.code], [401, 'AUTH_010'], 'no certificate on the new handshake');
    const full = await get(h.port, 'a.test', { ...client(fx, 'valid'), ...v });
    t.same([full.status, full.body.error.code], [401, 'AUTH_001'], 'and a full handshake refuses the now-untrusted certificate');
  });

  t.test(`${version}: a resumed session does not outlive its certificate`, async (t) => {
    let clock = Date.now();
    const h = await startHarness(fx, baseConfig(policies), { now: () => clock });
    t.teardown(() => h.close());
    const v = { minVersion: version, maxVersion: version };
    const first = await get(h.port, 'a.test', { ...client(fx, 'valid'), ...v });
    t.equal(first.status, 200);
    clock += 400 * 86_400_000; // past notAfter (365 days)
    const resumed = await get(h.port, 'a.test', { session: first.session, ...v });
    t.ok(resumed.reused, 'OpenSSL resumed the session');
    t.same([resumed.status, resumed.body.error.code], [401, 'AUTH_002'], 'but the expired certificate is refused');
  });
}

// Catalogue CFG-07 / CERT-05: a reload that revokes a connected client (a new CRL) must not
// let its open connections go on with the verdict of the old trust.
t.test('a reload that changes client-certificate trust: open connections are not judged by the old verdict', async (t) => {
  const fx2 = makeFixture();
  const h = await startHarness(fx2, baseConfig(policies), {
    upstreamHandler: (req, res) => { setTimeout(() => res.end(`ok ${req.url}`), req.url === '/slow' ? 800 : 0); },
  });
  t.teardown(() => h.close());
  const open = (who: 'valid' | 'ops' = 'valid') => new Promise<TLSSocket>((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port: h.port, servername: 'a.test', ca: fx2.ca.certPem, checkServerIdentity: () => undefined, ...client(fx2, who) }, () => resolve(s));
    s.on('error', reject);
  });
  const collect = (s: TLSSocket) => {
    const st = { out: '', closed: false };
    s.on('data', (d) => { st.out += d; });
    s.on('close', () => { st.closed = true; });
    return st;
  };
  const statuses = (out: string) => out.match(/HTTP\/1\.1 \d{3}/g) ?? [];

  // An idle keep-alive connection and a busy one, both verified before the reload.
  const idle = await open();
  const si = collect(idle);
  idle.write('GET /one HTTP/1.1\r\nHost: a.test\r\n\r\n');
  await until('the idle connection\'s first answer', () => statuses(si.out).length === 1);
  const busy = await open();
  const sb = collect(busy);
  busy.write('GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n');
  await new Promise((r) => setTimeout(r, 150));

  // Revoke the connected client, as an operator would: a new CRL, then the reload.
  writeFileSync(fx2.path('ca.crl'), makeCrl(fx2.ca, [fx2.clients.revoked.serial, fx2.clients.valid.serial]));
  t.ok(h.server.reloadFromFile(), 'the new CRL loads');
  await until('the idle connection to close', () => si.closed);
  t.same(statuses(si.out), ['HTTP/1.1 200'], 'the idle connection was closed by the proxy, without another answer');

  // A request that starts on the busy connection after the reload is refused, retryably.
  busy.write('GET /two HTTP/1.1\r\nHost: a.test\r\n\r\n');
  await until('the busy connection to close', () => sb.closed);
  t.same(statuses(sb.out), ['HTTP/1.1 200', 'HTTP/1.1 421'], 'the request in flight finished; the next one got 421');
  t.match(sb.out, /"code":"CONNECTION_STALE"/);
  t.notOk(h.seen.some((r) => r.url === '/two'), 'it never reached the upstream');

  // A new connection with the revoked certificate is refused at the handshake's verdict.
  const fresh = await open();
  const sf = collect(fresh);
  fresh.write('GET /three HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
  await until('the fresh connection to close', () => sf.closed);
  t.same(statuses(sf.out), ['HTTP/1.1 401'], 'a full handshake under the new CRL: 401');
  t.match(sf.out, /"code":"AUTH_010"/);

  // A reload that leaves the trust alone closes nothing: another client keeps its connection.
  const keep = await open('ops');
  const sk = collect(keep);
  keep.write('GET /four HTTP/1.1\r\nHost: a.test\r\n\r\n');
  await until('the first answer', () => statuses(sk.out).length === 1);
  writeFileSync(h.configFile, readFileSync(h.configFile, 'utf8') + '\n# touched\n');
  t.ok(h.server.reloadFromFile());
  keep.write('GET /five HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
  await until('the unaffected connection to finish', () => sk.closed);
  t.same(statuses(sk.out), ['HTTP/1.1 200', 'HTTP/1.1 200'], 'both requests served on the one connection');
});
