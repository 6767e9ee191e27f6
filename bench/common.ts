// Pieces every benchmark script shares: ports, the Portcullis config they run,
// process control and the arithmetic of their tables. No side effects on import.
import type { ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';

/** The bare Node references' server options: the bench PKI's certificate, and a client certificate required. */
export function mtlsServerOptions(cert: string, key: string, ca: string) {
  return { cert: readFileSync(cert), key: readFileSync(key), ca: readFileSync(ca), requestCert: true, rejectUnauthorized: true };
}

/** The bench's API key (pc-apikey.yaml holds its hash). */
export const API_KEY = 'kapi_prod_BenchBenchBenchBenchBenchBench12';
export const PORTS = { upstream: 18080, proxy: 18443, admin: 19901, redis: 16379 } as const;

/** The signed route's shared secret and its 1 KiB JSON body. */
export const HMAC_SECRET = 'bench-hmac-secret-0123456789abcdef';
export const HMAC_BODY = JSON.stringify({ data: 'x'.repeat(1024 - 12) });
/** The bench config's `sig` authenticator: the signature covers method, path, timestamp and body. */
export const HMAC_AUTHENTICATOR = `  sig: { type: hmac, clients: [ { id: bench, secret: "${HMAC_SECRET}", subject: bench } ], message: [method, path, timestamp, body], requireNonce: false, maxSkewSec: 3600 }`;
/** The signature of POST `path` with HMAC_BODY at `ts` (Unix seconds). */
export const hmacSignature = (path: string, ts: string) => createHmac('sha256', HMAC_SECRET).update(`POST${path}${ts}${HMAC_BODY}`).digest('hex');
/** A wrk script sending that POST, signed for `path` at `ts` (accepted for maxSkewSec, an hour). */
export function writeHmacScript(file: string, path: string, ts: string): string {
  writeFileSync(file, `wrk.method = "POST"\nwrk.body = ${JSON.stringify(HMAC_BODY)}\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["X-API-Key"] = "bench"\nwrk.headers["X-Timestamp"] = "${ts}"\nwrk.headers["X-Signature"] = "${hmacSignature(path, ts)}"\n`);
  return file;
}

/**
 * A Portcullis config for the benchmark PKI in bench/.work (bench.test, client certificate
 * CA, the nginx upstream): `authenticators` and `policies` are YAML lines at their indent.
 */
export function portcullisYaml(o: { authenticators: string; policies: string; store?: string }): string {
  return `server: { listen: "127.0.0.1:${PORTS.proxy}" }
admin: { listen: "127.0.0.1:${PORTS.admin}" }
tls:
  certificates: [ { hosts: [bench.test], cert: server.crt, key: server.key } ]
  unknownSni: default
  clientAuth: { ca: ca.crt }
upstream: { url: "http://127.0.0.1:${PORTS.upstream}" }
authenticators:
  cert: { type: mtls }
${o.authenticators}
policies:
${o.policies}
${o.store ? `store: ${o.store}\n` : ''}logging: { level: warn, access: false }
`;
}

/** A policy matching /NAME/** (or every path when `all`). */
export const policyYaml = (name: string, authenticate: string, all = false) => `  - name: ${name}\n    match: { paths: ["${all ? '' : `/${name}`}/**"] }\n    authenticate: ${authenticate}`;

export function waitPort(port: number, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tryOnce = () => {
      const s = createConnection({ host: '127.0.0.1', port }, () => { s.destroy(); resolve(); });
      s.on('error', () => { s.destroy(); if (Date.now() > end) reject(new Error(`port ${port} not open`)); else setTimeout(tryOnce, 50); });
    };
    tryOnce();
  });
}

export async function stop(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return;
  const done = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await done;
}

/** utime + stime of a process, in clock ticks (1/100 s). */
export function cpuTicks(pid: number | undefined): number {
  if (!pid) return NaN;
  try { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' '); return Number(f[11]) + Number(f[12]); } catch { return NaN; }
}

export const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); const n = s.length; return n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2; };

/**
 * The wrk shim's counts (handshakes, resumed, TLS 1.3, and wrk's calls of SSL_connect: about 2
 * per handshake, or hundreds with WRK_CONNECT_SPIN) from wrk's output. For a run meant to
 * measure full handshakes, throws if the shim printed none or any session resumed: the
 * figure would then flatter the server.
 */
export function shimCounts(output: string, fullHandshakes: boolean): { handshakes: number; resumed: number; tls13: number; connectCalls: number } {
  const m = /wrk-mtls-shim: (\d+) handshakes, (\d+) resumed, (\d+) TLSv1\.3(?:, (\d+) SSL_connect calls)?/.exec(output);
  if (fullHandshakes && !m) throw new Error('the wrk shim reported no handshake count (is wrk linked against libssl?); resumptions cannot be ruled out');
  const c = m ? { handshakes: Number(m[1]), resumed: Number(m[2]), tls13: Number(m[3]), connectCalls: Number(m[4] ?? NaN) } : { handshakes: NaN, resumed: NaN, tls13: NaN, connectCalls: NaN };
  if (fullHandshakes && c.resumed !== 0) throw new Error(`${c.resumed} of ${c.handshakes} handshakes resumed a session; the full-handshake figure would be wrong`);
  return c;
}
