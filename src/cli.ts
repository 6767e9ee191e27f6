// portcullis — command line. The only module that calls process.exit.
import { parseArgs } from 'node:util';
import { readFileSync, existsSync } from 'node:fs';
import { resolve, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfigFetching } from './config/load.ts';
import { Runtime } from './runtime.ts';
import { redactedUrl } from './store/redis.ts';
import { jsonSchema, parseListen } from './config/schema.ts';
import type { CompiledConfig } from './config/compile.ts';
import { ConfigError } from './errors.ts';
import { createLogger } from './log.ts';
import { PortcullisServer } from './server.ts';
import { createEchoServer } from './echo.ts';
import { writeDevPki } from './tls/pki.ts';
import { explain, formatExplanation } from './explain.ts';
import cluster from 'node:cluster';
import { runPrimary, workerCount, workerHooks } from './cluster.ts';
import { hashKey, newApiKey } from './authenticators/api-key.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const USAGE = `Usage: portcullis <command> [options]

Commands:
  serve   --config FILE             run the proxy (default command)
  check   --config FILE             validate the config and every file it names; print the policy table
  explain --config FILE METHOD URL [-H 'Name: value']... [-d BODY|@FILE] [--cert PEM] [--ip ADDR]
                                    dry-run one request through the policies
  keys new [--env prod|test|dev]    print a new API key (shown once) and the hash line for config
  keys hash                         read a key on stdin, print its sha256: hash
  certs dev --out DIR [--hosts a.test,b.test]
                                    write a dev CA, server and client certificates (keys mode 0600)
  echo    [--listen ADDR]           run the echo upstream (default 127.0.0.1:8080)
  demo                              generate dev certificates if missing, run echo + proxy on config/demo.yaml
  schema                            print the config JSON Schema

Exit codes: 0 ok, 1 invalid config or input, 2 usage.`;

class UsageError extends Error {}

function out(s: string): void { process.stdout.write(s.endsWith('\n') ? s : s + '\n'); }
function err(s: string): void { process.stderr.write(s.endsWith('\n') ? s : s + '\n'); }

type Opts = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>;

function args(argv: string[], options: Opts): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  try {
    return parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' }, ...options }, allowPositionals: true, strict: true }) as never;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function needConfig(v: unknown): string {
  if (typeof v !== 'string') throw new UsageError('--config FILE is required');
  return v;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

export function describeConfig(cfg: CompiledConfig): string {
  const lines: string[] = [];
  lines.push(`config ${cfg.file}: OK`);
  lines.push(`listen ${cfg.server.host}:${cfg.server.port}  admin ${cfg.admin.host}:${cfg.admin.port}  upstream ${cfg.upstream.url.href}`);
  lines.push(`store  ${cfg.store.type === 'redis' ? `redis ${redactedUrl(cfg.store.url)} (nonces, lockout counts and rate limits shared by every replica; not contacted by check)` : 'memory (nonces, lockout counts and rate limits kept in this process)'}`);
  const lo = cfg.lockout;
  const tk = cfg.tokens;
  if (tk) {
    const logins = [...tk.logins].map(([path, es]) => `POST ${path} (${es.map((e) => `${e.policy.summary.authenticate} -> ${e.ttlSec} s`).join('; ')})`).join(', ');
    lines.push(`tokens ${tk.signing.alg} kid ${tk.signing.kid}, issuer ${tk.issuer}, audience ${tk.audience}; ${logins}; JWKS at GET ${tk.jwksPath}`);
    const ci = tk.certificates;
    if (ci) lines.push(`certificates POST ${ci.path} (${ci.policy.summary.authenticate}) -> signed by ${ci.ca.subject.replaceAll('\n', ', ')}, ${ci.validityMs / 86_400_000} days`);
  }
  lines.push(`lockout ${lo ? `${lo.failures} failed credentials from one client IP within ${lo.windowMs / 1000} s -> 429 for ${lo.lockMs / 1000} s` : 'off'}`);
  lines.push('', 'policies (first match wins; nothing matches -> 403 AUTH_011):');
  lines.push(table([['#', 'name', 'hosts', 'methods', 'paths', 'authenticate', 'mode', 'rate limit'],
    ...cfg.policies.map((p) => [String(p.index), p.name, p.summary.hosts, p.summary.methods, p.summary.paths, p.summary.authenticate, p.summary.mode, p.summary.rateLimit])]));
  if (cfg.authenticators.size) {
    lines.push('', 'authenticators:');
    lines.push(table([['name', 'type', 'used by'], ...[...cfg.authenticators.values()].map((a) => [a.name, a.type,
      cfg.policies.filter((p) => p.authenticators.includes(a)).map((p) => p.name).join(', ') || '(unused)'])]));
  }
  lines.push('', 'server certificates:');
  lines.push(table([['hosts', 'subject', 'expires'], ...cfg.tls.certificates.map((c) => [c.hosts.join(' '), c.subject, new Date(c.notAfter).toISOString()])]));
  if (cfg.tls.clientCas.length) {
    lines.push('', 'client certificate CAs:');
    lines.push(table([['subject', 'expires'], ...cfg.tls.clientCas.map((c) => [c.subject, new Date(c.notAfter).toISOString()])]));
  }
  if (cfg.tls.crls.length) {
    lines.push('', 'CRLs:');
    lines.push(table([['issuer', 'next update'], ...cfg.tls.crls.map((c) => [c.issuer, c.nextUpdate ? new Date(c.nextUpdate).toISOString() : '-'])]));
  }
  const o = cfg.tls.ocsp?.settings;
  if (o) {
    lines.push('', `OCSP: ${o.mode}${o.mode === 'require' ? ' (no usable answer -> 401 AUTH_010)' : ' (no usable answer -> let through, logged)'}; responder ${o.responder?.href ?? "named by each certificate (authorityInfoAccess)"}; answers kept until nextUpdate, at most ${o.maxAgeSec} s; timeout ${o.timeoutMs} ms`);
  }
  return lines.join('\n');
}

/**
 * `offline` (check, explain): nothing reaches a shared store; an explained request uses up no
 * real nonce. CRLs named by URL are fetched (src/tls/crlfetch.ts).
 */
function load(file: string, offline = false): Promise<CompiledConfig> {
  return loadConfigFetching(file, offline ? { runtime: new Runtime({ offline: true }) } : {});
}

async function serve(file: string): Promise<void> {
  const cfg = await load(file);
  const logger = createLogger(cfg.logging.level);
  const clustered = workerCount(cfg) > 1;
  if (clustered && cluster.isPrimary) { await runPrimary(file, cfg, logger); return; }
  // A worker serves TLS only: the primary owns the admin port, the file watch and SIGHUP.
  const server = new PortcullisServer({ config: cfg, logger, adminListen: clustered ? false : undefined, watch: !clustered });
  await server.start();
  if (clustered) workerHooks(server.metrics.registry, () => server.reloadFetching()).ready();
  else process.on('SIGHUP', () => { logger.info({ msg: 'SIGHUP: reloading config' }); void server.reloadFetching(); });
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ msg: `${sig}: draining`, shutdownMs: server.config.server.timeouts.shutdownMs });
    server.close().then(() => { logger.flush(); process.exit(0); }, () => process.exit(1));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function listenEcho(addr: string): Promise<void> {
  const l = parseListen(addr);
  if (!l) throw new UsageError(`--listen ${addr}: expected HOST:PORT`);
  const server = createEchoServer();
  await new Promise<void>((r) => server.listen(l.port, l.host, () => r()));
  err(`echo upstream listening on http://${addr}`);
}

async function demo(): Promise<void> {
  const dir = join(ROOT, '.demo');
  if (!existsSync(join(dir, 'client.crt'))) {
    writeDevPki(dir, ['localhost', 'api.localhost', '127.0.0.1']);
    err(`generated dev certificates in ${dir}`);
  }
  await listenEcho('127.0.0.1:8080');
  await serve(join(ROOT, 'config', 'demo.yaml'));
  err(`
Portcullis demo: https://localhost:8443 -> echo upstream http://127.0.0.1:8080, admin http://127.0.0.1:9901

  # 200: client certificate verified, identity headers set (see the echo's "headers")
  curl --cacert .demo/ca.crt --cert .demo/client.crt --key .demo/client.key https://localhost:8443/api/hello
  # 401 AUTH_010: the same route without a certificate
  curl --cacert .demo/ca.crt https://localhost:8443/api/hello
  # 200: a public route, no certificate needed
  curl --cacert .demo/ca.crt https://localhost:8443/public/status
  # 403 AUTH_011: no policy matches
  curl --cacert .demo/ca.crt --cert .demo/client.crt --key .demo/client.key https://localhost:8443/other
  # 403 AUTH_008: certificate fine, but its subject is not allowed on /admin
  curl --cacert .demo/ca.crt --cert .demo/client.crt --key .demo/client.key https://localhost:8443/admin/users
`);
}

export async function main(argv: string[]): Promise<number> {
  const [cmd0, ...rest0] = argv;
  let cmd = cmd0 ?? 'serve';
  let rest = rest0;
  if (cmd.startsWith('-')) { cmd = 'serve'; rest = argv; }
  try {
    switch (cmd) {
      case 'help': case '--help': case '-h': out(USAGE); return 0;
      case 'serve': {
        const a = args(rest, { config: { type: 'string', short: 'c' } });
        if (a.values.help) { out(USAGE); return 0; }
        await serve(needConfig(a.values.config));
        return -1; // keep running
      }
      case 'check': {
        const a = args(rest, { config: { type: 'string', short: 'c' } });
        if (a.values.help) { out(USAGE); return 0; }
        out(describeConfig(await load(needConfig(a.values.config), true)));
        return 0;
      }
      case 'explain': {
        const a = args(rest, { config: { type: 'string', short: 'c' }, header: { type: 'string', short: 'H', multiple: true }, cert: { type: 'string' }, ip: { type: 'string' }, data: { type: 'string', short: 'd' } });
        if (a.values.help) { out(USAGE); return 0; }
        const [method, url] = a.positionals;
        if (!method || !url) throw new UsageError('explain needs METHOD and URL');
        const cfg = await load(needConfig(a.values.config), true);
        let certPem: string | undefined;
        if (typeof a.values.cert === 'string') {
          try { certPem = readFileSync(a.values.cert, 'utf8'); } catch (e) { err(`cannot read --cert ${a.values.cert}: ${(e as NodeJS.ErrnoException).code}`); return 1; }
        }
        const headers = (a.values.header as string[] | undefined) ?? [];
        // -d as curl takes it: the body itself, or @FILE for a file's bytes.
        let body: Buffer | undefined;
        const data = a.values.data;
        if (typeof data === 'string') {
          try { body = data.startsWith('@') ? readFileSync(data.slice(1)) : Buffer.from(data); } catch (e) { err(`cannot read -d ${data}: ${(e as NodeJS.ErrnoException).code}`); return 1; }
        }
        const res = await explain(cfg, { method, url, headers, certPem, ip: a.values.ip as string | undefined, body });
        if ('error' in res) { err(res.error); return 1; }
        out(formatExplanation(res));
        return 0;
      }
      case 'keys': {
        const [sub, ...r] = rest;
        if (sub === 'new') {
          const a = args(r, { env: { type: 'string' } });
          const env = typeof a.values.env === 'string' ? a.values.env : 'prod';
          if (!['prod', 'test', 'dev'].includes(env)) throw new UsageError('--env must be prod, test or dev');
          const key = newApiKey(env as 'prod' | 'test' | 'dev');
          out(key);
          out(`hash: "${hashKey(key)}"   # put this line in config; the key itself is not stored anywhere`);
          return 0;
        }
        if (sub === 'hash') {
          const input = readFileSync(0, 'utf8').replace(/\r?\n$/, '');
          if (!input) { err('portcullis: no key on stdin'); return 1; }
          out(hashKey(input));
          return 0;
        }
        throw new UsageError('usage: portcullis keys new [--env prod|test|dev] | portcullis keys hash');
      }
      case 'certs': {
        const [sub, ...r] = rest;
        if (sub !== 'dev') throw new UsageError('usage: portcullis certs dev --out DIR [--hosts a.test,b.test]');
        const a = args(r, { out: { type: 'string' }, hosts: { type: 'string' } });
        if (typeof a.values.out !== 'string') throw new UsageError('--out DIR is required');
        const hosts = (typeof a.values.hosts === 'string' ? a.values.hosts : 'localhost').split(',').map((h) => h.trim()).filter(Boolean);
        const p = writeDevPki(resolve(a.values.out), hosts);
        out(`wrote ${Object.keys(p.files).map((f) => join(p.dir, f)).join('\n      ')}`);
        return 0;
      }
      case 'echo': {
        const a = args(rest, { listen: { type: 'string' } });
        await listenEcho(typeof a.values.listen === 'string' ? a.values.listen : '127.0.0.1:8080');
        return -1;
      }
      case 'demo': await demo(); return -1;
      case 'schema': out(JSON.stringify(jsonSchema(), null, 2)); return 0;
      default: throw new UsageError(`unknown command "${cmd}"`);
    }
  } catch (e) {
    if (e instanceof UsageError) { err(`portcullis: ${e.message}\n\n${USAGE}`); return 2; }
    if (e instanceof ConfigError) { for (const l of e.message.split('\n')) err(l); return 1; }
    // A file or socket the command was told to use cannot be used (EADDRINUSE, EACCES, ENOENT, ...).
    if ((e as NodeJS.ErrnoException).syscall) { err(`portcullis: ${(e as Error).message}`); return 1; }
    throw e;
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then((code) => { if (code >= 0) process.exitCode = code; }, (e: Error) => {
    err(`portcullis: internal error: ${e.stack ?? e.message}`);
    process.exit(1);
  });
}
