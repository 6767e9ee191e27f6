// CRLs named by URL in tls.clientAuth.crl, fetched and kept for the life of the process.
// A config load reads them from here, as it reads CRL files from disk; what has not been
// fetched yet makes the load fail, and the loader fetches it and loads again
// (loadConfigFetching). The server refetches every tls.clientAuth.crlRefreshSec and reloads
// when a CRL changed: the same validation and swap as a CRL file that changed on disk.
// A failed fetch keeps the last good CRL; once its nextUpdate passes, OpenSSL refuses the
// certificates of its CA (fail closed), as with a stale file.
import { pemBlocks, toPem } from './asn1.ts';
import { fetchBytes } from '../util/fetch.ts';

/** CRLs of large CAs run to megabytes; anything beyond this is refused. */
const MAX_CRL_BYTES = 32 << 20;

export const isUrl = (s: string) => /^https?:\/\//i.test(s);

/** PEM text of the CRL(s) in a body that is PEM or a single DER CRL; throws when it is neither. */
function asPem(body: Buffer): string {
  const text = body.toString('latin1');
  if (text.includes('-----BEGIN X509 CRL-----')) {
    const blocks = pemBlocks(text, 'X509 CRL');
    if (!blocks.length) throw new Error('malformed PEM');
    return blocks.map((b) => toPem(b, 'X509 CRL')).join('');
  }
  if (body[0] !== 0x30) throw new Error('neither a PEM nor a DER CRL');
  return toPem(body, 'X509 CRL');
}

export interface CrlFetchEvents {
  crlFetch(result: 'changed' | 'unchanged' | 'failure'): void;
  log(level: 'info' | 'warn' | 'error', obj: Record<string, unknown>): void;
}

export class CrlSources {
  readonly #pem = new Map<string, string>();
  readonly #error = new Map<string, string>();
  /** URLs a config load asked for and did not find. */
  readonly #wanted = new Set<string>();

  /** For a config load: the PEM, or why there is none (and the URL is noted as wanted). */
  lookup(url: string): { pem: string } | { error: string } {
    const pem = this.#pem.get(url);
    if (pem !== undefined) return { pem };
    this.#wanted.add(url);
    return { error: this.#error.get(url) ?? 'not fetched yet' };
  }

  takeWanted(): string[] {
    const w = [...this.#wanted];
    this.#wanted.clear();
    return w;
  }

  /** Fetch each URL; true when any CRL is new or changed. A failure keeps the last good one. */
  async fetch(urls: readonly string[], timeoutMs: number, events?: CrlFetchEvents): Promise<boolean> {
    let changed = false;
    await Promise.all(urls.map(async (url) => {
      try {
        const pem = asPem(await fetchBytes(url, { timeoutMs, maxBytes: MAX_CRL_BYTES, headers: { accept: 'application/pkix-crl, application/x-pem-file' } }));
        this.#error.delete(url);
        if (this.#pem.get(url) === pem) { events?.crlFetch('unchanged'); return; }
        this.#pem.set(url, pem);
        changed = true;
        events?.crlFetch('changed');
      } catch (e) {
        const reason = `cannot fetch CRL ${url}: ${(e as Error).message}`;
        this.#error.set(url, reason);
        events?.crlFetch('failure');
        events?.log('warn', { msg: 'CRL fetch failed; keeping the last good CRL', url, reason: (e as Error).message, haveOne: this.#pem.has(url) });
      }
    }));
    return changed;
  }
}
