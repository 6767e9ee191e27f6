// One HTTP(S) exchange with a remote Portcullis depends on (a JWKS, an OCSP responder, a CRL
// distribution point): one deadline for the whole exchange (a socket timeout would reset on
// every byte), a cap on the body, 200 only, and no pooled connection left behind.
import http from 'node:http';
import https from 'node:https';

export interface FetchOptions {
  timeoutMs: number;
  maxBytes: number;
  method?: 'GET' | 'POST';
  headers?: Record<string, string | number>;
  body?: Buffer;
  /** CA bundle for an https:// URL (default: Node's). */
  ca?: string;
}

export function fetchBytes(url: URL | string, o: FetchOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const u = typeof url === 'string' ? new URL(url) : url;
    const mod = u.protocol === 'https:' ? https : http;
    const req = mod.request(u, { method: o.method ?? 'GET', agent: false, headers: o.headers, ...(o.ca ? { ca: o.ca } : {}) }, (res) => {
      if (res.statusCode !== 200) { res.resume(); reject(new Error(`HTTP ${res.statusCode}`)); return; }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => { size += c.length; if (size > o.maxBytes) req.destroy(new Error(`answer over ${o.maxBytes} bytes`)); else chunks.push(c); });
      res.on('end', () => resolve(Buffer.concat(chunks)));
      res.on('error', reject);
      // Cut off mid-answer (the deadline, or the server): settle rather than wait for an 'end' that never comes.
      res.on('close', () => { if (!res.complete) reject(new Error('answer cut short')); });
    });
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${o.timeoutMs} ms`)), o.timeoutMs);
    req.on('close', () => clearTimeout(timer));
    req.on('error', reject);
    req.end(o.body);
  });
}
