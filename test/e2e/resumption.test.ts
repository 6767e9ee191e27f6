// TLS session resumption must never give a connection a client identity that
// a full handshake would not (the nginx CVE-2025-23419 class; Node resumes
// sessions across SNI names and keeps the first handshake's verdict).
import t from 'tap';
import https from 'node:https';
import { writeFileSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, client, baseConfig } from '../helpers/harness.ts';
import { loadConfig } from '../../src/config/load.ts';

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
