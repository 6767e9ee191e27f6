// The container image's final stage, assembled as a folder without Docker: the Dockerfile's
// last stage is read, its COPY lines are carried out (dist/ from the build `npm test` just
// made, production dependencies from `npm ci --omit=dev`, the files it names), the folder is
// made read-only, and its ENTRYPOINT + CMD run as the image's user (10001, when the tests run
// as root) with the working directory `/`. So the image's dependency set, its dist-only
// layout (no src/), its command and its user are exercised here; what Docker itself adds (the
// base image, a read-only root filesystem) cannot be.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync, chmodSync, chownSync, existsSync, readdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { tmpdir } from 'node:os';
import { makeFixture } from '../helpers/pki.ts';
import { listenUpstream, freePort, until } from '../helpers/harness.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const fx = makeFixture();
const asRoot = process.getuid?.() === 0;

t.test('the image\'s final stage, as a read-only folder run as its user: serves, refuses, checks and stops', { timeout: 120_000 }, async (t) => {
  const df = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const final = df.slice(df.lastIndexOf('\nFROM '));
  const user = /^USER (\d+):(\d+)$/m.exec(final);
  const entry = /^ENTRYPOINT (\[.*\])$/m.exec(final);
  const cmd = /^CMD (\[.*\])$/m.exec(final);
  const workdir = /^WORKDIR (\S+)$/m.exec(final)?.[1];
  t.ok(user && entry && cmd && workdir === '/app', 'the final stage has USER, ENTRYPOINT, CMD and WORKDIR /app');
  if (!user || !entry || !cmd) return;

  // The image's /app, and a folder for what Kubernetes mounts (/etc/portcullis).
  const base = mkdtempSync(join(tmpdir(), 'portcullis-image-'));
  chmodSync(base, 0o755);
  const app = join(base, 'app');
  mkdirSync(app);
  const place = (dest: string) => (dest.startsWith('/app/') ? join(app, dest.slice(5)) : dest === './' || dest === '.' ? app : join(app, dest));
  for (const m of final.matchAll(/^COPY (.+)$/gm)) {
    const words = m[1]!.split(/\s+/);
    const from = words[0]!.startsWith('--from=') ? words.shift()!.slice(7) : undefined;
    const dest = words.pop()!;
    for (const src of words) {
      if (from === 'build' && src === '/app/dist') cpSync(join(ROOT, 'dist'), place(dest), { recursive: true });
      else if (from === 'deps' && src === '/app/node_modules') {
        // The deps stage: package.json and the lock, `npm ci --omit=dev` as the Dockerfile runs it.
        const deps = join(base, 'deps');
        mkdirSync(deps);
        for (const f of ['package.json', 'package-lock.json']) cpSync(join(ROOT, f), join(deps, f));
        const ci = /^RUN (npm ci --omit=dev.*)$/m.exec(df)?.[1];
        t.ok(ci, 'the deps stage runs npm ci --omit=dev');
        const r = spawnSync('sh', ['-c', `${ci} --prefer-offline`], { cwd: deps, encoding: 'utf8', timeout: 90_000 });
        t.equal(r.status, 0, r.status === 0 ? 'npm ci --omit=dev' : `npm ci --omit=dev: ${r.stderr.slice(-500)}`);
        cpSync(join(deps, 'node_modules'), place(dest), { recursive: true });
      } else if (from) t.fail(`COPY --from=${from} ${src}: not known to this test`);
      else {
        const target = dest.endsWith('/') ? join(place(dest), src.split('/').pop()!) : place(dest);
        mkdirSync(dirname(target), { recursive: true });
        cpSync(join(ROOT, src), target, { recursive: true });
      }
    }
  }
  t.notOk(existsSync(join(app, 'src')), 'no TypeScript source in the image');
  t.notOk(existsSync(join(app, 'node_modules', 'tap')) || existsSync(join(app, 'node_modules', 'typescript')), 'no dev dependencies');
  t.ok(existsSync(join(app, 'dist', 'cli.js')), 'the compiled build');

  // What the chart mounts: the config (ConfigMap) and the certificates (Secret).
  const up = await listenUpstream();
  t.teardown(() => { up.server.closeAllConnections(); up.server.close(); });
  const [port, admin] = [await freePort(), await freePort()];
  const etc = join(base, 'etc');
  mkdirSync(etc);
  for (const f of ['a.crt', 'a.key', 'ca.crt', 'ca.crl']) cpSync(fx.path(f), join(etc, f));
  writeFileSync(join(etc, 'portcullis.yaml'), `server:
  listen: 127.0.0.1:${port}
  timeouts: { shutdownMs: 5000 }
admin:
  listen: 127.0.0.1:${admin}
tls:
  certificates:
    - { hosts: [a.test], cert: a.crt, key: a.key }
  clientAuth: { ca: ca.crt, crl: ca.crl }
upstream:
  url: http://127.0.0.1:${up.port}
authenticators:
  cert: { type: mtls }
policies:
  - name: api
    match: { paths: ["/api/**"] }
    authenticate: cert
`);
  // Read-only for everyone; the secrets readable by the image's user only.
  const [uid, gid] = [Number(user[1]), Number(user[2])];
  if (asRoot) for (const f of readdirSync(etc)) chownSync(join(etc, f), uid, gid);
  for (const f of readdirSync(etc)) chmodSync(join(etc, f), f.endsWith('.key') ? 0o400 : 0o444);
  spawnSync('chmod', ['-R', 'a-w', app]);

  // ENTRYPOINT + CMD, with the config path the chart mounts replaced by this folder's.
  const argv = [...JSON.parse(entry[1]!) as string[], ...JSON.parse(cmd[1]!) as string[]]
    .map((a) => a.replace(/^\/app\//, `${app}/`).replace(/^\/etc\/portcullis\//, `${etc}/`));
  t.equal(argv[0], 'node', 'the entrypoint runs node');
  argv[0] = process.execPath; // the base image's node 24; here the project's
  // `env -u NODE_OPTIONS`: tap's process-info hooks, which it adds to every child, stay out of the image.
  const drop = ['env', '-u', 'NODE_OPTIONS', ...(asRoot ? ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--'] : [])];
  const run = () => spawn(drop[0]!, [...drop.slice(1), ...argv], { cwd: '/', env: { PATH: process.env.PATH, NODE_ENV: 'production' }, stdio: ['ignore', 'pipe', 'pipe'] });

  const checkArgv = argv.map((a) => (a === 'serve' ? 'check' : a));
  const check = spawnSync(drop[0]!, [...drop.slice(1), ...checkArgv], { cwd: '/', env: { PATH: process.env.PATH, NODE_ENV: 'production' }, encoding: 'utf8', timeout: 30_000 });
  t.equal(check.status, 0, `check in the image: ${check.stderr}`);
  t.match(check.stdout, /api\s+\*\s+\*\s+\/api\/\*\*/, 'check prints the policy table');

  const child = run();
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  t.teardown(() => { child.kill('SIGKILL'); });
  // A bound on start-up, not a measurement: on a loaded machine the whole suite runs beside it.
  await Promise.race([until('listening', () => out.includes('"listening"'), 45_000).catch((e: Error) => { throw new Error(`${e.message}; the process wrote: ${out || '(nothing)'}`); }), exited.then((c) => { throw new Error(`exited ${c}: ${out}`); })]);
  if (asRoot) {
    const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
    t.match(status, new RegExp(`^Uid:\\s+${uid}\\s`, 'm'), `running as uid ${uid}`);
  }
  // Asynchronous: the upstream runs in this process and must keep answering.
  const curl = (extra: string[]) => new Promise<string>((resolve) => {
    const c = spawn('curl', ['-s', '-m', '20', '-w', '\n%{http_code}', '--cacert', fx.path('ca.crt'), '--resolve', `a.test:${port}:127.0.0.1`, ...extra, `https://a.test:${port}/api/x`]);
    let o = '';
    c.stdout.on('data', (d) => { o += d; });
    c.once('close', () => resolve(o));
  });
  const ok = await curl(['--cert', fx.path('client-valid.crt'), '--key', fx.path('client-valid.key')]);
  t.match(ok, /\n200$/, 'a client certificate gets through');
  t.equal(JSON.parse(ok.slice(0, ok.lastIndexOf('\n'))).headers['x-auth-user-id'], 'client-1', 'with its identity');
  t.match(await curl([]), /"code":"AUTH_010"[^]*\n401$/, 'none: 401 AUTH_010');
  t.equal((await fetch(`http://127.0.0.1:${admin}/readyz`)).status, 200, '/readyz');
  t.match(await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text(), /^portcullis_requests_total\{/m, '/metrics');
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM: exit 0');
  t.notMatch(out, /EACCES|EROFS|"level":"(error|fatal)"/, 'it wrote nothing and logged no error');
  spawnSync('chmod', ['-R', 'u+w', base]);
});
