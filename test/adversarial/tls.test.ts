// TLS configuration: only TLS 1.2 and 1.3, ECDHE + AEAD only, renegotiation
// refused; and testssl.sh against the live listener (installed by .ci/run).
import t from 'tap';
import tls from 'node:tls';
import net from 'node:net';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, baseConfig, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();
let h: Harness;
t.before(async () => {
  h = await startHarness(fx, baseConfig(`
policies:
  - name: open
    match: { paths: ["/**"] }
    authenticate: none
`));
});
t.teardown(() => h.close());

function hello(o: tls.ConnectionOptions): Promise<string> {
  return new Promise((resolve) => {
    let s: tls.TLSSocket;
    try {
      s = tls.connect({ host: '127.0.0.1', port: h.port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined, ...o }, () => {
        resolve(`${s.getProtocol()} ${s.getCipher().name}`);
        s.end();
      });
    } catch (e) {
      // This client's OpenSSL cannot even offer the suite.
      resolve(`refused (client) ${(e as Error).message}`);
      return;
    }
    s.on('error', (e: NodeJS.ErrnoException) => resolve(`refused ${e.code ?? e.message}`));
  });
}

t.test('protocol versions: 1.2 and 1.3 only', async (t) => {
  t.match(await hello({}), /^TLSv1\.3 /);
  t.match(await hello({ maxVersion: 'TLSv1.2' }), /^TLSv1\.2 ECDHE-RSA-AES128-GCM-SHA256$/);
  for (const v of ['TLSv1', 'TLSv1.1'] as const) {
    t.match(await hello({ minVersion: v, maxVersion: v, ciphers: 'DEFAULT@SECLEVEL=0' }), /^refused/, `${v} refused`);
  }
});

t.test('TLS 1.3 suites: AES-128-GCM preferred over the client\'s order; the other two AEAD suites accepted; CCM refused', async (t) => {
  // OpenSSL clients (curl, Node, wrk) offer AES-256-GCM first: the server's order wins.
  t.equal(await hello({ ciphers: 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256' }), 'TLSv1.3 TLS_AES_128_GCM_SHA256');
  t.equal(await hello({}), 'TLSv1.3 TLS_AES_128_GCM_SHA256', 'with the client library\'s default suites');
  for (const c of ['TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256']) {
    t.equal(await hello({ ciphers: c }), `TLSv1.3 ${c}`, `${c} alone accepted`);
  }
  // The client offers CCM (a server configured with it would accept); this one answers with a handshake_failure alert.
  t.equal(await hello({ minVersion: 'TLSv1.3', ciphers: 'TLS_AES_128_CCM_SHA256' }), 'refused ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE', 'TLS_AES_128_CCM_SHA256 refused by the server');
});

t.test('TLS 1.2 ciphers: no RSA key exchange, no CBC, no 3DES/RC4/NULL/anon', async (t) => {
  for (const c of ['AES128-SHA', 'AES256-GCM-SHA384', 'ECDHE-RSA-AES128-SHA', 'ECDHE-RSA-AES256-SHA384', 'DES-CBC3-SHA', 'NULL-SHA256', 'ADH-AES128-GCM-SHA256']) {
    t.match(await hello({ maxVersion: 'TLSv1.2', ciphers: `${c}@SECLEVEL=0` }), /^refused/, `${c} refused`);
  }
  for (const c of ['ECDHE-RSA-AES256-GCM-SHA384', 'ECDHE-RSA-CHACHA20-POLY1305']) {
    t.match(await hello({ maxVersion: 'TLSv1.2', ciphers: c }), new RegExp(`^TLSv1\\.2 ${c}$`), `${c} accepted`);
  }
});

// Catalogue TLS-14: an operator sees why handshakes fail without turning on debug logs.
t.test('failed handshakes are counted by reason: protocol version, cipher, ALPN, not TLS, a client refusing the certificate', async (t) => {
  const reasons = async () => {
    const text = await fetch(`http://127.0.0.1:${h.adminPort}/metrics`).then((r) => r.text());
    return Object.fromEntries([...text.matchAll(/^portcullis_tls_handshake_errors_total\{reason="([a-z_]+)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])]));
  };
  const cases: [string, () => Promise<string>][] = [
    ['protocol_version', () => hello({ minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' })],
    ['no_shared_cipher', () => hello({ maxVersion: 'TLSv1.2', ciphers: 'AES128-SHA@SECLEVEL=0' })],
    ['no_alpn', () => hello({ ALPNProtocols: ['h2'] })],
    // openssl s_client trusting nothing: it answers the server's certificate with an alert
    // (Node's client would finish the handshake and only then close).
    ['client_alert', () => new Promise((resolve) => {
      // Not spawnSync: the server under test runs in this process.
      const p = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${h.port}`, '-servername', 'a.test', '-verify_return_error', '-no-CAfile', '-no-CApath', '-no-CAstore'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (d) => { out += d; });
      p.stderr.on('data', (d) => { out += d; });
      p.stdin.end();
      p.on('close', (code) => resolve(code !== 0 && /verify error|unable to get local issuer/i.test(out) ? 'refused by the client' : `exit ${code}: ${out.slice(0, 200)}`));
    })],
    ['not_tls', () => new Promise((resolve) => {
      // Plain HTTP to the TLS port: closed without an answer.
      let got = '';
      const s = net.connect(h.port, '127.0.0.1', () => s.write('GET / HTTP/1.1\r\nhost: a.test\r\n\r\n'));
      s.on('data', (d) => { got += d; });
      s.on('error', () => {});
      s.on('close', () => resolve(got ? `answered ${got.slice(0, 20)}` : 'refused (closed)'));
    })],
  ];
  for (const [reason, attempt] of cases) {
    const before = (await reasons())[reason] ?? 0;
    t.match(await attempt(), /^refused/, `${reason}: the handshake fails`);
    let after = before;
    for (let i = 0; i < 100 && after === before; i++) { await new Promise((r) => setTimeout(r, 20)); after = (await reasons())[reason] ?? 0; }
    t.equal(after, before + 1, `counted as ${reason}`);
  }
});

t.test('client-initiated renegotiation is refused', async (t) => {
  const result = await new Promise<string>((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: h.port, servername: 'a.test', ca: fx.ca.certPem, checkServerIdentity: () => undefined, maxVersion: 'TLSv1.2' }, () => {
      const ok = s.renegotiate({ rejectUnauthorized: false }, (err) => { resolve(err ? `refused: ${err.message}` : 'renegotiated'); s.destroy(); });
      if (!ok) resolve('refused: not started');
    });
    s.on('error', (e) => resolve(`refused: ${e.message}`));
    s.on('close', () => resolve('refused: closed'));
  });
  t.match(result, /^refused/, result);
});

const testssl = spawnSync('sh', ['-c', 'command -v testssl || command -v testssl.sh'], { encoding: 'utf8' }).stdout.trim();
t.test('testssl.sh finds nothing at MEDIUM or above in the TLS configuration', { timeout: 240_000 }, async (t) => {
  // Not a skip: without testssl.sh this test fails, and says why.
  if (!testssl) { t.fail('testssl.sh is not installed: apt-get install testssl.sh (.ci/run installs it)'); return; }
  const out = join(mkdtempSync(join(tmpdir(), 'testssl-')), 'r.json');
  // Asynchronous: the server under test runs in this process.
  const code = await new Promise<number | null>((resolve) => {
    const c = spawn(testssl, ['--quiet', '--color', '0', '--warnings', 'batch', '--jsonfile-pretty', out, '--ip', '127.0.0.1', '-p', '-s', '-P', '-S', '-U', '-R', `a.test:${h.port}`], { stdio: 'ignore' });
    const timer = setTimeout(() => c.kill(), 220_000);
    c.on('close', (x) => { clearTimeout(timer); resolve(x); });
  });
  t.not(code, null, 'testssl finished');
  const scan = JSON.parse(readFileSync(out, 'utf8')).scanResult as Record<string, unknown>[];
  // Findings about the certificate's issuer, not the TLS configuration: the test PKI is a
  // private CA made at test time, and its certificates carry no CRL/OCSP URLs.
  const certificateOnly = new Set(['cert_chain_of_trust', 'cert_revocation', 'cert_trust', 'cert_caIssuers', 'cert_ocspURL', 'cert_crlDistributionPoints']);
  const findings = scan.flatMap((s) => Object.values(s).filter(Array.isArray).flat() as { id: string; severity: string; finding: string }[]);
  const serious = findings.filter((f) => ['MEDIUM', 'HIGH', 'CRITICAL'].includes(f.severity) && !certificateOnly.has(f.id));
  t.same(serious.map((f) => `${f.id}: ${f.finding}`), [], 'no MEDIUM/HIGH/CRITICAL finding');
  t.ok(findings.some((f) => f.id === 'TLS1_3' && /offered/.test(f.finding)), 'TLS 1.3 offered');
  t.ok(findings.some((f) => f.id === 'TLS1_1' && /not offered/.test(f.finding)), 'TLS 1.1 not offered');
  t.comment(`testssl.sh: ${findings.length} findings, none at MEDIUM or above outside the test certificate's trust`);
});
