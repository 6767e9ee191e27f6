// What can be checked of the Dockerfile and the helm chart without Docker or helm:
// every chart file parses as YAML once template actions are stubbed out, every
// .Values path a template uses exists, the chart's embedded config is a valid
// Portcullis config, and the image runs the command the tests run.
import t from 'tap';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { parseConfigText } from '../../src/config/load.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const CHART = join(ROOT, 'helm/portcullis');
const values = parse(readFileSync(join(CHART, 'values.yaml'), 'utf8'));

/** Replace Go template actions: whole-line actions vanish, inline ones become a scalar. */
function stub(text: string): string {
  return text.split('\n').filter((l) => !/^\s*\{\{-?[^}]*-?\}\}\s*$/.test(l)).map((l) => l.replace(/\{\{-?.*?-?\}\}/g, 'x')).join('\n');
}

t.test('Chart.yaml and values.yaml parse', async (t) => {
  const chart = parse(readFileSync(join(CHART, 'Chart.yaml'), 'utf8'));
  t.equal(chart.apiVersion, 'v2');
  t.equal(chart.name, 'portcullis');
  t.ok(values.config && values.image);
});

t.test('every template parses as YAML after stubbing and names a kind', async (t) => {
  const kinds: string[] = [];
  for (const f of readdirSync(join(CHART, 'templates')).filter((f) => f.endsWith('.yaml'))) {
    const docs = parseAllDocuments(stub(readFileSync(join(CHART, 'templates', f), 'utf8')));
    for (const d of docs) {
      t.same(d.errors.map((e) => e.message), [], `${f} parses`);
      const js = d.toJS();
      if (js) kinds.push(js.kind);
    }
  }
  for (const k of ['Deployment', 'Service', 'ConfigMap', 'PodDisruptionBudget', 'HorizontalPodAutoscaler', 'ServiceMonitor']) t.ok(kinds.includes(k), `a ${k}`);
  t.ok(existsSync(join(CHART, 'templates/NOTES.txt')));
});

t.test('redis.url: the store the ConfigMap adds is a valid config, with the password from the Secret through ${env:}', async (t) => {
  const { stringify } = await import('yaml');
  const cm = readFileSync(join(CHART, 'templates/configmap.yaml'), 'utf8');
  const dep = readFileSync(join(CHART, 'templates/deployment.yaml'), 'utf8');
  // What the template renders for url redis://redis:6379/0 and a passwordSecret (helm is not available here).
  t.match(cm, /replace ":\/\/" ":\/\/:\$\{env:PORTCULLIS_REDIS_PASSWORD\}@" \$url/);
  t.match(cm, /set \$cfg "store" \(dict "type" "redis" "url" \$url "keyPrefix" \.Values\.redis\.keyPrefix "timeoutMs" \.Values\.redis\.timeoutMs\)/);
  t.match(dep, /- name: PORTCULLIS_REDIS_PASSWORD\n\s+valueFrom:\n\s+secretKeyRef: \{ name: \{\{ \.Values\.redis\.passwordSecret\.name \}\}, key: \{\{ \.Values\.redis\.passwordSecret\.key \}\} \}/);
  const store = { type: 'redis', url: 'redis://:${env:PORTCULLIS_REDIS_PASSWORD}@redis:6379/0', keyPrefix: values.redis.keyPrefix, timeoutMs: values.redis.timeoutMs };
  const parsed = parseConfigText(stringify({ ...values.config, store }), 'values.yaml#config', { PORTCULLIS_REDIS_PASSWORD: 'pw' });
  t.same((parsed.raw as { store: unknown }).store, { ...store, url: 'redis://:pw@redis:6379/0' });
});

t.test('every .Values path used by a template exists in values.yaml', async (t) => {
  const files = readdirSync(join(CHART, 'templates')).map((f) => readFileSync(join(CHART, 'templates', f), 'utf8'));
  const used = new Set(files.flatMap((s) => [...s.matchAll(/\.Values((?:\.[A-Za-z0-9_]+)+)/g)].map((m) => m[1]!.slice(1))));
  t.ok(used.size > 20, `${used.size} paths used`);
  for (const p of used) {
    let v: any = values;
    for (const k of p.split('.')) v = v?.[k];
    t.not(v, undefined, `.Values.${p} exists`);
  }
});

t.test('the chart\'s default config is a valid Portcullis config; probes and scrapes hit the admin port', async (t) => {
  const { stringify } = await import('yaml');
  t.doesNotThrow(() => parseConfigText(stringify(values.config), 'values.yaml#config'));
  t.match(values.config.admin.listen, /^0\.0\.0\.0:9901$/, 'admin reachable from the kubelet');
  const dep = readFileSync(join(CHART, 'templates/deployment.yaml'), 'utf8');
  t.match(dep, /httpGet: \{ path: \/healthz, port: admin \}/);
  t.match(dep, /httpGet: \{ path: \/readyz, port: admin \}/);
  t.match(dep, /checksum\/config:/);
  t.same([values.securityContext.readOnlyRootFilesystem, values.securityContext.allowPrivilegeEscalation, values.podSecurityContext.runAsNonRoot], [true, false, true]);
});

t.test('Dockerfile: multi-stage, production dependencies, non-root, runs `portcullis serve` as the tests do', async (t) => {
  const df = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  t.ok((df.match(/^FROM /gm) ?? []).length >= 2, 'multi-stage');
  t.match(df, /npm ci --omit=dev/);
  t.match(df, /^USER 10001:10001$/m);
  t.match(df, /^ENTRYPOINT \["node", "--max-semi-space-size=16", "\/app\/bin\/portcullis\.js"\]$/m, 'the same bin/portcullis.js the CLI tests spawn, with the flag its shebang sets');
  t.match(readFileSync(join(ROOT, 'bin/portcullis.js'), 'utf8'), /^#!\/usr\/bin\/env -S node --max-semi-space-size=16$/m, 'the shebang agrees');
  t.match(df, /COPY --from=build \/app\/dist \.\/dist/, 'the compiled build ships; bin/portcullis.js runs it when src/ is absent');
  t.notMatch(df.slice(df.lastIndexOf('\nFROM ')), /^COPY src /m, 'no TypeScript source in the final image');
  t.match(df, /^CMD \["serve", "--config", /m);
  for (const m of df.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) for (const src of m[1]!.split(' ')) t.ok(existsSync(join(ROOT, src)), `COPY source ${src} exists`);
  const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8');
  t.match(ignore, /^node_modules$/m);
  const dep = readFileSync(join(CHART, 'templates/deployment.yaml'), 'utf8');
  t.match(dep, /args: \["serve", "--config", /, 'the chart runs serve too');
});
