// YAML text -> resolved references -> validated -> compiled -> frozen.
// Every error carries file:line:col and the YAML path of the offending node.
import { readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { LineCounter, parseDocument, visit, isScalar, isMap, isPair, type Document, type Node as YamlNode } from 'yaml';
import type { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.ts';
import { configSchema, type RawConfig } from './schema.ts';
import { AUTHENTICATOR_TYPES } from '../authenticators/registry.ts';
import { compile, type CompiledConfig, type CompileOptions } from './compile.ts';
import { Runtime } from '../runtime.ts';

/** How long one CRL fetch may take. */
export const CRL_FETCH_TIMEOUT_MS = 10_000;

/** A config file over this is refused before it is read (catalogue CFG-04). */
const MAX_CONFIG_BYTES = 4 << 20;

const REF = /\$\{(env|file):([^}]*)\}/g;

interface Parsed {
  raw: RawConfig;
  doc: Document;
  lines: LineCounter;
  /** Files named by ${file:...} references, watched for reload. */
  refFiles: string[];
}

function position(file: string, lines: LineCounter, offset: number): string {
  const { line, col } = lines.linePos(offset);
  return `${file}:${line}:${col}`;
}

/** The nearest YAML node on a path, for pointing at an error. */
function locate(doc: Document, path: readonly (string | number)[], preferKey = false): YamlNode | undefined {
  for (let n = path.length; n >= 0; n--) {
    const node = doc.getIn(path.slice(0, n), true) as YamlNode | undefined;
    if (node && typeof node === 'object' && 'range' in node && node.range) {
      // Point at the key of an unknown or misspelt entry rather than its value.
      if (preferKey && n === path.length && n > 0) {
        const parent = doc.getIn(path.slice(0, n - 1), true);
        if (isMap(parent)) {
          const pair = parent.items.find((p) => isPair(p) && isScalar(p.key) && p.key.value === path[n - 1]);
          if (pair && isScalar(pair.key) && pair.key.range) return pair.key as YamlNode;
        }
      }
      return node;
    }
  }
  return doc.contents ?? undefined;
}

function zodIssues(err: z.ZodError): { path: (string | number)[]; message: string }[] {
  const out: { path: (string | number)[]; message: string }[] = [];
  for (const i of err.issues) {
    const path = i.path.filter((p): p is string | number => typeof p !== 'symbol');
    if (i.code === 'unrecognized_keys') {
      for (const k of i.keys) out.push({ path: [...path, k], message: `unknown key "${k}"` });
    } else if (i.code === 'invalid_union' && 'discriminator' in i && i.discriminator) {
      const p = path.at(-1) === i.discriminator ? path : [...path, i.discriminator];
      const types = p[0] === 'store' ? ['memory', 'redis'] : AUTHENTICATOR_TYPES.map((a) => a.type);
      out.push({ path: p, message: `unknown type; expected one of: ${types.join(', ')}` });
    } else if (i.code === 'invalid_type' && i.message.endsWith('received undefined')) {
      out.push({ path, message: `required (${i.expected})` });
    } else {
      out.push({ path, message: i.message });
    }
  }
  return out;
}

export function parseConfigText(text: string, file: string, env: NodeJS.ProcessEnv = process.env): Parsed {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const baseDir = dirname(file);
  const issues: ConfigIssue[] = [];
  for (const e of doc.errors) {
    issues.push({ path: [], message: e.message.split('\n')[0]!, where: position(file, lines, e.pos[0]) });
  }
  if (issues.length) throw new ConfigError(issues);

  const refFiles: string[] = [];
  visit(doc, {
    Scalar(_key, node) {
      if (typeof node.value !== 'string' || !node.value.includes('${')) return;
      node.value = node.value.replace(REF, (_m, kind: string, arg: string) => {
        const where = position(file, lines, node.range?.[0] ?? 0);
        if (kind === 'env') {
          const v = env[arg];
          if (v === undefined) { issues.push({ path: [], message: `environment variable ${arg} is not set`, where }); return ''; }
          return v;
        }
        const p = resolve(baseDir, arg);
        try {
          refFiles.push(p);
          return readFileSync(p, 'utf8').replace(/\r?\n$/, '');
        } catch (e) {
          issues.push({ path: [], message: `cannot read ${arg}: ${(e as NodeJS.ErrnoException).code ?? e}`, where });
          return '';
        }
      });
    },
  });
  if (issues.length) throw new ConfigError(issues);

  let plain: unknown;
  try {
    // The yaml library stops alias expansion past 100 aliases (a "billion laughs" bomb).
    plain = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new ConfigError([{ path: [], message: `YAML aliases expand too far (${(e as Error).message}); a config never needs that many`, where: file }]);
  }
  const parsed = configSchema.safeParse(plain ?? {});
  if (!parsed.success) {
    throw new ConfigError(zodIssues(parsed.error).map((i) => {
      const node = locate(doc, i.path, i.message.startsWith('unknown key'));
      return { ...i, where: node?.range ? position(file, lines, node.range[0]) : file };
    }));
  }
  return { raw: parsed.data, doc, lines, refFiles };
}

/** Load, validate and compile a config file. Throws ConfigError with positions. */
export function loadConfig(file: string, opts: Partial<CompileOptions> = {}): CompiledConfig {
  const abs = resolve(file);
  let text: string;
  try {
    if (statSync(abs).size > MAX_CONFIG_BYTES) throw new ConfigError([{ path: [], message: `config is over ${MAX_CONFIG_BYTES >> 20} MiB; keys and policies that large belong in keysFile or jwks files`, where: file }]);
    text = readFileSync(abs, 'utf8');
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError([{ path: [], message: `cannot read config: ${(e as NodeJS.ErrnoException).code ?? e}`, where: file }]);
  }
  const p = parseConfigText(text, file, opts.env);
  try {
    return compile(p.raw, { file: abs, baseDir: dirname(abs), refFiles: p.refFiles, ...opts });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    throw new ConfigError(e.issues.map((i) => {
      if (i.where) return i;
      const node = locate(p.doc, i.path);
      return { ...i, where: node?.range ? position(file, p.lines, node.range[0]) : file };
    }));
  }
}

/**
 * loadConfig, fetching the CRLs the config names by URL first (src/tls/crlfetch.ts): those
 * not fetched yet, or all of them with `refetch` (a reload). A CRL that cannot be fetched
 * and was never fetched fails the load, with the reason.
 */
export async function loadConfigFetching(file: string, opts: Partial<CompileOptions> & { refetch?: readonly string[] } = {}): Promise<CompiledConfig> {
  const { refetch, ...rest } = opts;
  const runtime = rest.runtime ?? new Runtime();
  const o = { ...rest, runtime };
  if (refetch?.length) await runtime.crls.fetch(refetch, CRL_FETCH_TIMEOUT_MS, runtime.events);
  try {
    return loadConfig(file, o);
  } catch (e) {
    const wanted = runtime.crls.takeWanted();
    if (!(e instanceof ConfigError) || !wanted.length) throw e;
    await runtime.crls.fetch(wanted, CRL_FETCH_TIMEOUT_MS, runtime.events);
    runtime.crls.takeWanted();
    return loadConfig(file, o);
  }
}
