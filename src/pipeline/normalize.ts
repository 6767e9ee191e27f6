// Request-target normalisation. The policy matches, and the upstream receives,
// exactly the string this returns, so the two can never disagree on a path.

export type Normalised = { ok: true; path: string; query: string } | { ok: false; reason: string };

const UNRESERVED = /[A-Za-z0-9\-._~]/;
const HEX = /^[0-9A-Fa-f]{2}$/;
/** Rejects overlong forms, surrogates, truncated sequences and bytes that begin none. */
const UTF8 = new TextDecoder('utf-8', { fatal: true });
/** A percent sign, an empty segment ("//") or a dot segment ("/." or "/.." ending a segment). */
const NEEDS_WORK = /%|\/\/|\/\.\.?(?:\/|$)/;

/**
 * - splits off the query (kept as sent);
 * - decodes percent-encoded unreserved characters, upper-cases the rest;
 * - refuses encoded "/", "\", NUL and control characters, a raw "\", invalid
 *   escapes, and fragments (a client never sends one);
 * - refuses encoded bytes that are not valid UTF-8: an overlong "%C0%AE" is "." to a
 *   lenient decoder upstream, so "/public/%C0%AE%C0%AE/admin" could reach /admin
 *   (catalogue PATH-07; CVE-2000-0884, CVE-2001-0333);
 * - merges repeated slashes and removes dot segments (RFC 3986 §5.2.4).
 */
export function normalisePath(target: string): Normalised {
  if (target.length === 0 || target[0] !== '/') return { ok: false, reason: 'request target must be origin-form (start with "/")' };
  if (target.includes('#')) return { ok: false, reason: 'fragment in request target' };
  const q = target.indexOf('?');
  const rawPath = q === -1 ? target : target.slice(0, q);
  const query = q === -1 ? '' : target.slice(q + 1);
  if (rawPath.includes('\\')) return { ok: false, reason: 'backslash in path' };
  // Servlet containers and some frameworks drop ";params" from a segment, so
  // "/admin;x/users" would be "/admin/users" upstream but not to a policy.
  if (rawPath.includes(';')) return { ok: false, reason: '";" path parameters are refused' };

  // Most paths are already normal: no escapes, no empty or dot segments.
  if (!NEEDS_WORK.test(rawPath)) return { ok: true, path: rawPath, query };

  let decoded = '';
  let high = false;
  for (let i = 0; i < rawPath.length; i++) {
    const c = rawPath[i]!;
    if (c !== '%') {
      decoded += c;
      continue;
    }
    const hex = rawPath.slice(i + 1, i + 3);
    if (!HEX.test(hex)) return { ok: false, reason: 'invalid percent-encoding in path' };
    const code = parseInt(hex, 16);
    if (code === 0x2f || code === 0x5c) return { ok: false, reason: 'encoded slash or backslash in path' };
    if (code < 0x20 || code === 0x7f) return { ok: false, reason: 'encoded control character in path' };
    if (code >= 0x80) high = true;
    const ch = String.fromCharCode(code);
    decoded += UNRESERVED.test(ch) ? ch : '%' + hex.toUpperCase();
    i += 2;
  }

  if (high && !validUtf8(rawPath)) return { ok: false, reason: 'percent-encoded bytes in path are not valid UTF-8' };

  const out: string[] = [];
  const segs = decoded.split('/');
  // segs[0] is "" (leading slash). Empty segments are merged slashes.
  for (let i = 1; i < segs.length; i++) {
    const s = segs[i]!;
    if (s === '.' || (s === '' && i < segs.length - 1)) continue;
    if (s === '..') { out.pop(); continue; }
    out.push(s);
  }
  // A trailing "/." or "/.." leaves a directory: keep the trailing slash.
  const last = segs[segs.length - 1];
  if ((last === '.' || last === '..') && out[out.length - 1] !== '') out.push('');
  let path = '/' + out.join('/');
  path = path.replace(/\/{2,}/g, '/');
  return { ok: true, path, query };
}

/** Whether the path's bytes, percent-escapes decoded, are valid UTF-8 (escapes already checked). */
function validUtf8(rawPath: string): boolean {
  const bytes: number[] = [];
  for (let i = 0; i < rawPath.length; i++) {
    if (rawPath[i] === '%') { bytes.push(parseInt(rawPath.slice(i + 1, i + 3), 16)); i += 2; }
    else bytes.push(rawPath.charCodeAt(i));
  }
  try {
    UTF8.decode(new Uint8Array(bytes));
    return true;
  } catch {
    return false;
  }
}
