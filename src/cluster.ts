// server.workers > 1 (or "auto"): node:cluster. The primary validates the config,
// owns the admin listener (metrics aggregated from every worker, readiness of
// all of them), watches files, and handles signals; workers serve the TLS port
// (shared by the cluster) and reload when the primary tells them to.
import cluster, { type Worker } from 'node:cluster';
import http from 'node:http';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { CompiledConfig } from './config/compile.ts';
import { loadConfigFetching } from './config/load.ts';
import { ConfigError } from './errors.ts';
import type { Logger } from './log.ts';
import { ConfigWatcher } from './watch.ts';

type ToWorker = { type: 'reload' };
type FromWorker = { type: 'ready' } | { type: 'reloaded'; ok: boolean };

export function workerCount(cfg: CompiledConfig): number {
  return cfg.server.workers === 'auto' ? availableParallelism() : cfg.server.workers;
}

/** In a worker: report readiness, reload on request, and share metrics with the primary. */
export function workerHooks(registry: Registry, reload: () => Promise<boolean>): { ready(): void } {
  AggregatorRegistry.setRegistries([registry]);
  // prom-client installs the worker's answer to the primary's metrics request in this constructor.
  new AggregatorRegistry();
  process.on('message', (m: ToWorker) => {
    if (m?.type === 'reload') void reload().then((ok) => process.send?.({ type: 'reloaded', ok } satisfies FromWorker));
  });
  return { ready: () => process.send?.({ type: 'ready' } satisfies FromWorker) };
}

export async function runPrimary(file: string, cfg: CompiledConfig, logger: Logger): Promise<void> {
  const n = workerCount(cfg);
  const ready = new Set<number>();
  let stopping = false;
  let current = cfg;
  const aggregator = new AggregatorRegistry();

  const fork = (): Worker => {
    const w = cluster.fork({ PORTCULLIS_WORKER: '1' });
    w.on('message', (m: FromWorker) => {
      if (m.type === 'ready') ready.add(w.id);
      if (m.type === 'reloaded' && !m.ok) logger.error({ msg: 'a worker refused the reload', worker: w.process.pid });
    });
    w.on('exit', (code, signal) => {
      ready.delete(w.id);
      if (!stopping) {
        logger.error({ msg: 'worker exited; starting another', worker: w.process.pid, code, signal });
        fork();
      }
    });
    return w;
  };
  for (let i = 0; i < n; i++) fork();

  const admin = http.createServer(async (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const json = (status: number, body: unknown) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)); };
    if (path === '/healthz') return json(200, { status: 'ok', workers: ready.size });
    if (path === '/readyz') return !stopping && ready.size === n ? json(200, { status: 'ready', workers: n }) : json(503, { status: stopping ? 'draining' : 'starting', ready: ready.size, workers: n });
    if (path === '/metrics') {
      try {
        const text = await aggregator.clusterMetrics();
        res.writeHead(200, { 'content-type': aggregator.contentType });
        res.end(text);
      } catch (e) {
        json(503, { error: (e as Error).message });
      }
      return;
    }
    json(404, { error: 'not found' });
  });
  await new Promise<void>((resolve, reject) => { admin.once('error', reject); admin.listen(cfg.admin.port, cfg.admin.host, () => resolve()); });
  logger.info({ msg: 'primary listening', admin: `${cfg.admin.host}:${cfg.admin.port}`, workers: n });

  const reloadAll = async () => {
    try {
      current = await loadConfigFetching(file, { runtime: current.runtime, refetch: current.tls.crlUrls });
    } catch (e) {
      logger.error({ msg: 'config reload refused; workers keep the previous config', issues: e instanceof ConfigError ? e.message.split('\n') : [(e as Error).message] });
      return;
    }
    if (workerCount(current) !== n) logger.warn({ msg: 'server.workers changed: takes effect on restart' });
    watcher.track(current.files);
    for (const w of Object.values(cluster.workers ?? {})) w?.send({ type: 'reload' } satisfies ToWorker);
  };
  const watcher = new ConfigWatcher(() => { logger.info({ msg: 'config files changed: reloading every worker' }); void reloadAll(); });
  watcher.track(cfg.files);
  process.on('SIGHUP', () => { logger.info({ msg: 'SIGHUP: reloading every worker' }); void reloadAll(); });

  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    watcher.close();
    logger.info({ msg: `${sig}: draining every worker`, shutdownMs: current.server.timeouts.shutdownMs });
    const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => !!w);
    let left = workers.length;
    const done = () => { admin.close(); logger.info({ msg: 'stopped' }); logger.flush(); process.exit(0); };
    if (!left) done();
    for (const w of workers) {
      w.once('exit', () => { if (--left === 0) done(); });
      w.process.kill('SIGTERM');
    }
    // A worker that does not finish in time is killed; the pod must not hang.
    setTimeout(() => { for (const w of workers) if (!w.isDead()) w.process.kill('SIGKILL'); }, current.server.timeouts.shutdownMs + 2000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
