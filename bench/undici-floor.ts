// A second Node reference: a bare https server with requestCert whose upstream
// client is an undici Pool (stream()), no authentication. Portcullis uses the same
// client, so the gap to this is Portcullis' own per-request work.
// Usage: node undici-floor.ts PORT UPSTREAM_PORT CERT KEY CA
import https from 'node:https';
import { mtlsServerOptions } from './common.ts';
import { Pool, type Dispatcher } from 'undici';

const [port, upstream, cert, key, ca] = process.argv.slice(2);
const pool = new Pool(`http://127.0.0.1:${upstream}`, { connections: 512 });
https.createServer(mtlsServerOptions(cert!, key!, ca!), (req, res) => {
  const headers: Record<string, string | string[]> = {};
  for (const k in req.headers) if (k !== 'connection' && k !== 'keep-alive' && k !== 'transfer-encoding') headers[k] = req.headers[k]!;
  pool.stream({ path: req.url!, method: req.method as Dispatcher.HttpMethod, headers, body: null }, ({ statusCode, headers: h }) => {
    const out: Record<string, string | string[]> = {};
    for (const k in h) if (k !== 'connection' && k !== 'keep-alive' && k !== 'transfer-encoding') out[k] = h[k]!;
    res.writeHead(statusCode, out);
    return res;
  }).catch(() => { if (!res.headersSent) { res.writeHead(502); res.end(); } else res.destroy(); });
}).listen(Number(port), '127.0.0.1');
