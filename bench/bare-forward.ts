// The bare proxy's request handler: forward each request on Portcullis' own HTTP/1.1 client
// (src/pipeline/http1.ts) with only hop-by-hop framing headers dropped, and relay the answer.
// No authentication, policy, identity or metrics: what Node costs to proxy at all. Used by
// http1-floor.ts (a server of its own) and idioms.ts (`--idiom proxy`). No side effects on import.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Http1Pool } from '../src/pipeline/http1.ts';

/** The framing fields a hop sets for itself, dropped both ways (lower-case names). */
export const HOP = (k: string) => k === 'connection' || k === 'keep-alive' || k === 'transfer-encoding';

/** Portcullis' client to the bench's upstream, as the bare proxy sets it up. */
export const barePool = (upstreamPort: number) => new Http1Pool({ url: new URL(`http://127.0.0.1:${upstreamPort}`), timeoutMs: 30_000, maxConnections: 512, keepAliveMs: 30_000 });

export function bareForwarder(upstreamPort: number): (req: IncomingMessage, res: ServerResponse) => void {
  const pool = barePool(upstreamPort);
  return (req, res) => {
    const raw = req.rawHeaders;
    const headers: string[] = [];
    for (let i = 0; i < raw.length; i += 2) {
      const k = raw[i]!.toLowerCase();
      if (!HOP(k)) headers.push(k, raw[i + 1]!);
    }
    const length = req.headers['content-length'];
    const body = req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0') ? req : null;
    const ex = pool.request(req.method!, req.url!, headers, body, length, {
      onHead(status, h) {
        const out: string[] = [];
        for (let i = 0; i < h.length; i += 2) if (!HOP(h[i]!.toLowerCase())) out.push(h[i]!, h[i + 1]!);
        res.writeHead(status, out);
      },
      onData: (c) => res.write(c) || (res.once('drain', () => pool.resume(ex)), false),
      onComplete: (last) => (last !== undefined ? res.end(last, 'latin1') : res.end()),
      onError: () => { if (!res.headersSent) { res.writeHead(502); res.end(); } else res.destroy(); },
    });
  };
}
