// The Node floor: a bare https server with requestCert + http-proxy-3 and no
// authentication, as a user would write it. Usage: node node-floor.ts PORT UPSTREAM_PORT CERT KEY CA
import https from 'node:https';
import http from 'node:http';
import { mtlsServerOptions } from './common.ts';
import { createProxyServer } from 'http-proxy-3';

const [port, upstream, cert, key, ca] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 512 });
const proxy = createProxyServer({ target: `http://127.0.0.1:${upstream}`, agent });
proxy.on('error', (_e, _req, res) => { if ('writeHead' in res && !res.headersSent) { res.writeHead(502); res.end(); } });
https.createServer(mtlsServerOptions(cert!, key!, ca!), (req, res) => proxy.web(req, res))
  .listen(Number(port), '127.0.0.1');
