// Catalogue PATH-10 (the http-garden method): the same request targets sent to nginx and
// to Portcullis. nginx answers each with the path it routes on ($uri, decoded and
// normalised); Portcullis forwards the path its policy judged. Where both serve a target
// they must mean the same path, byte for byte once decoded; where only one serves it, the
// difference is listed below with its reason, so a new one fails this test.
import t from 'tap';
import net from 'node:net';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeFixture } from '../helpers/pki.ts';
import { startHarness, rawTls, baseConfig, freePort, until, type Harness } from '../helpers/harness.ts';

const fx = makeFixture();

const CORPUS = [
  '/', '/a', '/a/', '/a//b', '//admin', '/public/../admin', '/public/./admin', '/a/b/..', '/a/b/../', '/a/./b/.',
  '/%61dmin', '/%41DMIN', '/a/%2e%2E/b', '/a/.%2e/b', '/a/%2e/b', '/a%2e%2e', '/..', '/../../etc', '/a/../../b',
  '/%7e%41%20%c3%a9', '/a%20b', '/a+b', '/a%2bb', '/~user', "/a'b", '/a!$&()*,=@:b',
  '/a%252e', '/a%25', '/a%2525', '/a%3fb', '/a%23b', '/a%3bb',
  '/a;b', '/admin;jsessionid=1/users', '/public/..;/admin',
  '/admin%2Fx', '/admin%2fx', '/a/..%2f', '/%5c', '/a%5cb', '/a\\b',
  '/a%00', '/a%0d%0ab', '/a%1f', '/a%7f', '/a/%zz', '/a%2', '/a%c0%ae', '/a%ff', '/a%e2%80%ae',
  '/x?y=1/../', '/x?a=%2F&b=..', '/a/b?', '/%3f',
  '/a.', '/a..', '/a/...', '/a/.../b', '/.well-known/x', '/a/.hidden',
];

/** nginx's answer: the status and, for a 200, the path it routes on ($uri). */
function viaNginx(port: number, target: string): Promise<{ status: number; path?: string }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(Buffer.from(`GET ${target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`, 'latin1')));
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    s.on('error', reject);
    s.on('close', () => {
      const raw = Buffer.concat(chunks).toString('latin1');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
      const body = raw.slice(raw.indexOf('\r\n\r\n') + 4);
      resolve(status === 200 ? { status, path: body } : { status });
    });
  });
}

/** Portcullis' answer: the status and, for a 200, the path the upstream received, decoded. */
async function viaPortcullis(h: Harness, target: string): Promise<{ status: number; path?: string }> {
  const before = h.seen.length;
  const raw = await rawTls(h, fx, Buffer.from(`GET ${target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`, 'latin1'));
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
  if (status !== 200 || h.seen.length === before) return { status };
  const url = h.seen.at(-1)!.url;
  const path = url.split('?')[0]!.replace(/%([0-9A-Fa-f]{2})/g, (_, x: string) => String.fromCharCode(parseInt(x, 16)));
  return { status, path };
}

/**
 * Targets nginx serves and Portcullis refuses (400): each is a path an upstream framework
 * may read differently from the proxy, so Portcullis takes no side.
 */
const REFUSED_ONLY_BY_PORTCULLIS: Record<string, string> = {
  '/a;b': 'path parameters: servlet containers drop ";…" (catalogue PATH-04)',
  '/admin;jsessionid=1/users': 'path parameters (PATH-04)',
  '/public/..;/admin': '"..;" is ".." to Tomcat (PATH-04)',
  '/admin%2Fx': 'an encoded slash is one segment to some upstreams and two to others (PATH-02)',
  '/admin%2fx': 'encoded slash (PATH-02)',
  '/a/..%2f': 'encoded slash (PATH-02)',
  '/%5c': 'a backslash is a separator to some upstreams (PATH-02)',
  '/a%5cb': 'encoded backslash (PATH-02)',
  '/a\\b': 'raw backslash (PATH-02)',
  '/a%0d%0ab': 'a control character once decoded: CR LF into an upstream\'s logs or headers (PATH-08)',
  '/a%1f': 'control character (PATH-08)',
  '/a%7f': 'control character (PATH-08); nginx drops it and routes on /a',
  '/a%c0%ae': 'overlong UTF-8 for ".": a lenient decoder upstream reads a dot segment (PATH-07)',
  '/a%ff': 'not UTF-8 (PATH-07)',
};

/** Targets Portcullis serves and nginx refuses, with the path the upstream receives. */
const SERVED_ONLY_BY_PORTCULLIS: Record<string, string> = {
  // RFC 3986 §5.2.4 removes a ".." at the root ("/../../etc" is "/etc"); nginx answers 400.
  // The upstream receives the resolved path, the one the policy judged.
  '/..': '/',
  '/../../etc': '/etc',
  '/a/../../b': '/b',
};

let nginx: ChildProcess;
let nginxPort: number;
let h: Harness;
t.before(async () => {
  // Not a skip: without nginx this test fails, and says why.
  if (spawnSync('sh', ['-c', 'command -v nginx']).status !== 0) throw new Error('nginx is not installed: apt-get install nginx (.ci/run installs it)');
  const dir = mkdtempSync(join(fx.dir, 'nginx-'));
  nginxPort = await freePort();
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, `daemon off; master_process off; worker_processes 1; pid ${dir}/nginx.pid; error_log stderr error;
events { worker_connections 64; }
http { access_log off; client_body_temp_path ${dir}; proxy_temp_path ${dir}; fastcgi_temp_path ${dir}; uwsgi_temp_path ${dir}; scgi_temp_path ${dir};
  server { listen 127.0.0.1:${nginxPort}; location / { default_type text/plain; return 200 "$uri"; } } }
`);
  nginx = spawn('nginx', ['-c', conf, '-p', dir, '-e', 'stderr'], { stdio: ['ignore', 'ignore', 'inherit'] });
  let up = false;
  const probe = () => { const s = net.connect(nginxPort, '127.0.0.1', () => { up = true; s.destroy(); }); s.on('error', () => {}); };
  await until('nginx listening', () => { if (!up) probe(); return up || nginx.exitCode !== null; });
  if (nginx.exitCode !== null) throw new Error(`nginx exited with ${nginx.exitCode}`);
  h = await startHarness(fx, baseConfig(`
policies:
  - name: open
    match: { paths: ["/**"] }
    authenticate: none
`));
});
t.teardown(async () => {
  nginx?.kill('SIGKILL');
  await h?.close();
});

t.test('nginx and Portcullis read every target of the corpus the same way, or one refuses it for a listed reason', async (t) => {
  const rows: string[] = [];
  const refusedByUs: string[] = [];
  const servedByUs: string[] = [];
  for (const target of CORPUS) {
    const [n, p] = [await viaNginx(nginxPort, target), await viaPortcullis(h, target)];
    rows.push(`${target}  nginx ${n.status} ${JSON.stringify(n.path ?? '')}  portcullis ${p.status} ${JSON.stringify(p.path ?? '')}`);
    if (n.status === 200 && p.status === 200) t.equal(p.path, n.path, `${target}: the same path for both`);
    else if (n.status === 200) refusedByUs.push(target);
    else if (p.status === 200) {
      servedByUs.push(target);
      t.equal(p.path, SERVED_ONLY_BY_PORTCULLIS[target], `${target}: forwarded as the listed path`);
    }
    if (p.status !== 200) t.equal(p.status, 400, `${target}: Portcullis refuses with 400`);
  }
  if (process.env.DIFFERENTIAL_DEBUG) console.error(rows.join('\n'));
  t.same(refusedByUs.sort(), Object.keys(REFUSED_ONLY_BY_PORTCULLIS).sort(), 'the targets only Portcullis refuses are the listed ones');
  t.same(servedByUs.sort(), Object.keys(SERVED_ONLY_BY_PORTCULLIS).sort(), 'the targets only Portcullis serves are the listed ones');
});
