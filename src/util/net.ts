// Address, CIDR and header-name helpers shared by config, pipeline and authenticators.
import { BlockList, isIP } from 'node:net';
import type { IncomingHttpHeaders } from 'node:http';
import { z } from 'zod';

export function parseCidr(s: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const [address, p, extra] = s.split('/');
  if (extra !== undefined || !address) return undefined;
  const v = isIP(address);
  if (v === 0) return undefined;
  const max = v === 4 ? 32 : 128;
  if (p !== undefined && !/^\d{1,3}$/.test(p)) return undefined;
  const prefix = p === undefined ? max : Number(p);
  if (prefix > max) return undefined;
  return { address, prefix, family: v === 4 ? 'ipv4' : 'ipv6' };
}

export const cidr = z.string().refine((s) => parseCidr(s) !== undefined, { message: 'must be an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)' });

export function blockList(cidrs: readonly string[]): BlockList {
  const bl = new BlockList();
  for (const c of cidrs) {
    const p = parseCidr(c)!;
    bl.addSubnet(p.address, p.prefix, p.family);
  }
  return bl;
}

/** True when an address (v4, v6 or v4-mapped v6) is in the list. */
export function inList(bl: BlockList, ip: string): boolean {
  if (ip.includes(':')) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
    if (mapped) return bl.check(mapped[1]!, 'ipv4') || bl.check(ip, 'ipv6');
    return bl.check(ip, 'ipv6');
  }
  return bl.check(ip, 'ipv4');
}

/** Already folded: Node lower-cases names, and "_" spellings are rare (no allocation then). */
const FOLDED = /^[^A-Z_]*$/;
/** Header names compared case-insensitively with "_" folded to "-". */
export const foldHeader = (name: string) => (FOLDED.test(name) ? name : name.toLowerCase().replace(/_/g, '-'));

/**
 * The one value of the header `want` (already folded) in any "-"/"_" spelling, trimmed;
 * 'twice' when it comes more than once (a credential header is never merged).
 */
export function singleHeader(headers: IncomingHttpHeaders, want: string): string | undefined | 'twice' {
  let value: string | undefined;
  for (const k in headers) {
    const v = headers[k];
    if (v === undefined || k.length !== want.length || (k !== want && foldHeader(k) !== want)) continue;
    if (value !== undefined || (Array.isArray(v) && v.length !== 1)) return 'twice';
    value = Array.isArray(v) ? v[0]! : v;
  }
  return value?.trim();
}
