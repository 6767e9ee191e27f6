// Runs the real Portcullis server (real TLS on 127.0.0.1:0) in front of a real
// recording upstream, with a config written as YAML, and logs captured as JSON.
import https from 'node:https';
import tls from 'node:tls';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createServer, type AddressInfo } from 'node:net';
import type http from 'node:http';
import { loadConfigFetching } from '../../src/config/load.ts';
import { createLogger } from '../../src/log.ts';
import { PortcullisServer } from '../../src/server.ts';
import { createEchoServer, type EchoRecord } from '../../src/echo.ts';
import type { Fixture } from './pki.ts';

export interface Harness {
  port: number;
  adminPort: number;
  server: PortcullisServer;
  upstream: http.Server;
  upstreamPort: number;
  /** Every request the upstream received. */
  seen: EchoRecord[];
  logs: Record<string, any>[];
  configFile: string;
  close(): Promise<void>;
}

export function logSink(lines: Record<string, any>[]): Writable {
  let buf = '';
  return new Writable({
    write(chunk, _enc, cb) {
      buf += chunk.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) { lines.push(JSON.parse(buf.slice(0, i))); buf = buf.slice(i + 1); }
      cb();
    },
  });
}

export async function listenUpstream(handler?: http.RequestListener): Promise<{ server: http.Server; port: number; seen: EchoRecord[] }> {
  const seen: EchoRecord[] = [];
  const server = createEchoServer((r) => seen.push(r));
  if (handler) { server.removeAllListeners('request'); server.on('request', handler); }
  // Upgraded sockets leave the server's connection tracking; close them ourselves.
  const upgraded = new Set<import('node:stream').Duplex>();
  server.on('upgrade', (_req, socket) => { upgraded.add(socket); socket.once('close', () => upgraded.delete(socket)); });
  server.once('close', () => { for (const s of upgraded) s.destroy(); });
  const close = server.close.bind(server);
  server.close = ((cb?: (err?: Error) => void) => { for (const s of upgraded) s.destroy(); return close(cb); }) as typeof server.close;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { server, port: (server.address() as AddressInfo).port, seen };
}

/** `yaml` may use {{UPSTREAM}} for the upstream URL; paths are relative to the fixture dir. */
export async function startHarness(fx: Fixture, yaml: string, opts: { upstreamPort?: number; now?: () => number; upstreamHandler?: http.RequestListener } = {}): Promise<Harness> {
  const up = await listenUpstream(opts.upstreamHandler);
  const dir = mkdtempSync(join(fx.dir, 'cfg-'));
  const configFile = join(dir, 'portcullis.yaml');
  const text = yaml.replaceAll('{{UPSTREAM}}', `http://127.0.0.1:${opts.upstreamPort ?? up.port}`).replaceAll('{{PKI}}', fx.dir);
  writeFileSync(configFile, text);
  const logs: Record<string, any>[] = [];
  const logger = createLogger('debug', logSink(logs) as never);
  let server: PortcullisServer, port: number, adminPort: number | undefined;
  try {
    server = new PortcullisServer({ config: await loadConfigFetching(configFile), logger, now: opts.now, listen: { host: '127.0.0.1', port: 0 }, adminListen: { host: '127.0.0.1', port: 0 } });
    ({ port, adminPort } = await server.start());
  } catch (e) {
    // A config that does not load must fail the test, not leave the upstream listening (tap would wait for it).
    up.server.closeAllConnections();
    up.server.close();
    throw e;
  }
  return {
    port, adminPort: adminPort!, server, upstream: up.server, upstreamPort: up.port, seen: up.seen, logs, configFile,
    async close() {
      const t0 = Date.now();
      await server.close();
      if (process.env.HARNESS_DEBUG) console.error('proxy closed in', Date.now() - t0);
      up.server.closeAllConnections();
      await new Promise<void>((r) => up.server.close(() => r()));
    },
  };
}

export interface Res { status: number; headers: http.IncomingHttpHeaders; body: string; json: any; bytes: Buffer }

export interface ReqOpts {
  method?: string;
  path?: string;
  servername?: string | false;
  host?: string;
  headers?: Record<string, string | string[]>;
  cert?: string;
  key?: string;
  body?: string | Buffer;
  session?: Buffer;
  onSession?: (s: Buffer) => void;
  onSocket?: (s: tls.TLSSocket) => void;
}

/** One HTTPS request on a fresh connection (no agent pooling). */
export function request(h: { port: number }, fx: Fixture, o: ReqOpts = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const servername = o.servername === undefined ? 'a.test' : o.servername;
    const req = https.request({
      host: '127.0.0.1', port: h.port, method: o.method ?? 'GET', path: o.path ?? '/',
      // '' (not undefined): Node would otherwise take the SNI name from the Host header.
      servername: servername || '', ca: fx.ca.certPem, agent: false,
      checkServerIdentity: () => undefined,
      cert: o.cert, key: o.key, session: o.session,
      headers: { host: o.host ?? (servername || '127.0.0.1'), ...o.headers },
    } as https.RequestOptions, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('close', () => { if (!res.complete) reject(Object.assign(new Error('response aborted'), { code: 'ECONNRESET' })); });
      res.on('end', () => {
        const bytes = Buffer.concat(chunks);
        const body = bytes.toString('utf8');
        let json: any;
        try { json = JSON.parse(body); } catch { json = undefined; }
        resolve({ status: res.statusCode!, headers: res.headers, body, json, bytes });
      });
    });
    req.on('socket', (s) => {
      const t = s as tls.TLSSocket;
      o.onSocket?.(t);
      if (o.onSession) t.once('session', (sess: Buffer) => o.onSession!(sess));
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

export function client(fx: Fixture, name: keyof Fixture['clients']): { cert: string; key: string } {
  return { cert: fx.clients[name].certPem, key: fx.clients[name].keyPem };
}

/** Raw bytes over TLS: for requests an HTTP client refuses to send. */
export function rawTls(h: { port: number }, fx: Fixture, payload: string | Buffer, o: { servername?: string; cert?: string; key?: string; waitMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: h.port, servername: o.servername ?? 'a.test', ca: fx.ca.certPem, cert: o.cert, key: o.key, checkServerIdentity: () => undefined }, () => s.write(payload));
    let out = '';
    s.on('data', (d) => { out += d.toString(); });
    const timer = setTimeout(() => s.end(), o.waitMs ?? 1500);
    s.on('close', () => { clearTimeout(timer); resolve(out); });
    s.on('error', (e) => { clearTimeout(timer); if (out) resolve(out); else reject(e); });
  });
}

/**
 * A request with `Expect: 100-continue`, sent as a careful client sends it: the head, then the
 * body only once the server answers `100 Continue`. `serverClosed`: the server ended the
 * connection (before the client gave up `waitMs` after the last byte).
 */
export function continueRequest(h: { port: number }, fx: Fixture, head: string, body: string, o: { cert?: string; key?: string; waitMs?: number } = {}): Promise<{ out: string; bodySent: boolean; serverClosed: boolean }> {
  return new Promise((resolve, reject) => {
    let out = '';
    let bodySent = false;
    let serverClosed = false;
    let gaveUp = false;
    let timer: NodeJS.Timeout | undefined;
    const idle = () => { clearTimeout(timer); timer = setTimeout(() => { gaveUp = true; s.end(); }, o.waitMs ?? 1500); };
    const s = tls.connect({ host: '127.0.0.1', port: h.port, servername: 'a.test', ca: fx.ca.certPem, cert: o.cert, key: o.key, checkServerIdentity: () => undefined }, () => { s.write(head); idle(); });
    s.on('data', (d) => {
      out += d.toString();
      if (!bodySent && out.startsWith('HTTP/1.1 100 Continue\r\n\r\n')) { bodySent = true; s.write(body); }
      idle();
    });
    s.on('end', () => { if (!gaveUp) serverClosed = true; });
    s.on('close', () => { clearTimeout(timer); resolve({ out, bodySent, serverClosed }); });
    s.on('error', (e) => { clearTimeout(timer); if (out) resolve({ out, bodySent, serverClosed }); else reject(e); });
  });
}

export const baseConfig = (extra = '', serverExtra = '') => `
server:
  listen: 127.0.0.1:0
${serverExtra}
tls:
  certificates:
    - hosts: [a.test, api.a.test]
      cert: {{PKI}}/a.crt
      key: {{PKI}}/a.key
    - hosts: [b.test]
      cert: {{PKI}}/b.crt
      key: {{PKI}}/b.key
    - hosts: ["*.wild.test"]
      cert: {{PKI}}/wild.crt
      key: {{PKI}}/wild.key
  clientAuth:
    ca: {{PKI}}/ca.crt
    crl: {{PKI}}/ca.crl
upstream:
  url: {{UPSTREAM}}
  timeoutMs: 1000
${extra}`;

/** Policies used by several suites: /open/** needs nothing, /api/** a client certificate. */
export const OPEN_AND_CERT_POLICIES = (extra = '') => `
authenticators:
  cert: { type: mtls }
policies:
  - name: open
    match: { paths: ["/open/**"] }
    authenticate: none
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: cert
${extra}`;

/** A port that was free a moment ago, for child processes that need a fixed one. */
export function freePort(): Promise<number> {
  return new Promise((r) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as AddressInfo).port; s.close(() => r(p)); }); });
}

/** Poll until `fn` holds, or fail naming `what`. */
export async function until(what: string, fn: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
