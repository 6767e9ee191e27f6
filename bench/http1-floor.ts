// A third Node reference: a bare https server with requestCert whose upstream client is
// Portcullis' own (src/pipeline/http1.ts), no authentication, no policy, no identity, no
// metrics. Portcullis uses the same client and server option (optimizeEmptyRequests), so the
// gap to this is its own per-request work.
// Usage: node http1-floor.ts PORT UPSTREAM_PORT CERT KEY CA
import https from 'node:https';
import { mtlsServerOptions } from './common.ts';
import { bareForwarder } from './bare-forward.ts';

const [port, upstream, cert, key, ca] = process.argv.slice(2);
https.createServer({ ...mtlsServerOptions(cert!, key!, ca!), optimizeEmptyRequests: true }, bareForwarder(Number(upstream))).listen(Number(port), '127.0.0.1');
