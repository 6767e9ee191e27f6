// A third Node reference: a bare https server with requestCert whose upstream client is
// Portcullis' own (src/pipeline/http1.ts), no authentication, no policy, no identity, no
// metrics. Portcullis uses the same client, so the gap to this is its own per-request work.
// Usage: node http1-floor.ts PORT UPSTREAM_PORT CERT KEY CA
import https from 'node:https';
import { mtlsServerOptions } from './common.ts';
import { Http1Pool } from '../src/pipeline/http1.ts';

const [port, upstream, cert, key, ca] = process.argv.slice(2);
const pool = new Http1Pool({ url: new URL(`http://127.0.0.1:${upstream}`), timeoutMs: 30_000, maxConnections: 512, keepAliveMs: 30_000 });
https.createServer(mtlsServerOptions(cert!, key!, ca!), (req, res) => {
  const raw = req.rawHeaders;
  const headers: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (k !== 'connection' && k !== 'keep-alive' && k !== 'transfer-encoding') headers.push(k, raw[i + 1]!);
  }
  const length = req.headers['content-length'];
  const body = req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0') ? req : null;
  const ex = pool.request(req.method!, req.url!, headers, body, length, {
    onHead(status, h) {
      const out: string[] = [];
      for (let i = 0; i < h.length; i += 2) { const k = h[i]!.toLowerCase(); if (k !== 'connection' && k !== 'keep-alive' && k !== 'transfer-encoding') out.push(h[i]!, h[i + 1]!); }
      res.writeHead(status, out);
    },
    onData: (c) => res.write(c) || (res.once('drain', () => pool.resume(ex)), false),
    onComplete: (last) => (last ? res.end(last) : res.end()),
    onError: () => { if (!res.headersSent) { res.writeHead(502); res.end(); } else res.destroy(); },
  });
}).listen(Number(port), '127.0.0.1');
