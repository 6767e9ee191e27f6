// The echo upstream: answers every request with JSON describing what it
// received (method, url, headers, body size), so the identity headers
// Portcullis set are visible. Upgraded connections echo bytes back.
import http from 'node:http';
import { createHash } from 'node:crypto';

export interface EchoRecord { method: string; url: string; headers: http.IncomingHttpHeaders; rawHeaders: string[]; body: string; rawTrailers: string[] }

export function createEchoServer(onRequest?: (r: EchoRecord) => void): http.Server {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const rec: EchoRecord = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body, rawTrailers: req.rawTrailers };
      onRequest?.(rec);
      const out = JSON.stringify({ method: rec.method, url: rec.url, headers: rec.headers, bodyBytes: Buffer.byteLength(body) }, null, 2);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(out + '\n');
    });
  });
  server.on('upgrade', (req, socket, head) => {
    onRequest?.({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body: '', rawTrailers: [] });
    const key = String(req.headers['sec-websocket-key'] ?? '');
    const accept = createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`);
    if (head.length) socket.write(head);
    socket.on('data', (d) => socket.write(d));
    socket.on('error', () => socket.destroy());
  });
  return server;
}
