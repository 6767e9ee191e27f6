// Wildcard patterns compiled once at load into anchored regular expressions.

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Path glob: `*` is one segment (or part of one), `**` as a whole segment is any
 * depth, including none (`/admin/**` matches `/admin` and `/admin/a/b`).
 * Returns an error message for a malformed glob.
 */
export function compilePathGlob(glob: string, caseInsensitive = false): RegExp | string {
  if (!glob.startsWith('/')) return `path glob "${glob}" must start with "/"`;
  if (/[?[\]{}\\#%\s]/.test(glob)) return `path glob "${glob}" may use only "*" and "**" as wildcards`;
  const segs = glob.split('/').slice(1);
  let re = '';
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    if (s === '**') {
      // "/**" at the end: nothing, or "/" followed by anything.
      re += i === segs.length - 1 ? '(?:/.*)?' : '(?:/[^/]*)*';
      continue;
    }
    if (s.includes('**')) return `path glob "${glob}": "**" must be a whole segment`;
    if (s === '.' || s === '..') return `path glob "${glob}" must not contain dot segments`;
    re += '/' + s.split('*').map(escapeRe).join('[^/]*');
  }
  return new RegExp(`^${re || '/'}$`, caseInsensitive ? 'i' : '');
}

/** Host pattern: exact (case-insensitive) or `*.example.com` for exactly one more label. */
export function compileHostPattern(p: string): (host: string) => boolean {
  const lower = p.toLowerCase().replace(/\.$/, '');
  if (lower.startsWith('*.')) {
    const suffix = lower.slice(1);
    return (h) => h.endsWith(suffix) && h.length > suffix.length && !h.slice(0, -suffix.length).includes('.');
  }
  return (h) => h === lower;
}

/** Value pattern for allow-lists: `*` any run except "/", `**` any run at all. */
export function compileValuePattern(p: string): RegExp {
  const re = p.split('**').map((part) => part.split('*').map(escapeRe).join('[^/]*')).join('.*');
  return new RegExp(`^${re}$`);
}
