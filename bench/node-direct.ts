// The Node ceiling: a bare https server with requestCert that answers every request
// itself (no upstream, no proxying, no authentication). No Node proxy can beat its rate,
// latency tail or handshake rate; the benchmark measures it beside nginx so the targets
// that Node's own TLS and HTTP server bound are visible in the same run. It runs with
// Portcullis' optimizeEmptyRequests, so that no Node setting Portcullis uses is missing here.
// Usage: node node-direct.ts PORT CERT KEY CA
import https from 'node:https';
import { mtlsServerOptions } from './common.ts';

const [port, cert, key, ca] = process.argv.slice(2);
https.createServer({ ...mtlsServerOptions(cert!, key!, ca!), optimizeEmptyRequests: true }, (_req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '3' });
  res.end('ok\n');
}).listen(Number(port), '127.0.0.1');
