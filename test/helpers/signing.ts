// Request signers the tests use, written as those schemes' own clients sign.
import { createHash, createHmac, createPrivateKey, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { httpbis, createSigner } from 'http-message-signatures';

export const RFC9421_VECTORS = new URL('../../../shared/reference/vectors/rfc9421/', import.meta.url).pathname;

/**
 * The client of shared/seeds/004: HMAC-SHA256 over method + path + timestamp + nonce +
 * json.dumps(body, sort_keys=True), in X-API-Key / X-Timestamp / X-Nonce / X-Signature.
 */
export function seed004(secret: string, method: string, path: string, body: Record<string, unknown> | undefined, o: { ts?: number; nonce?: string; key?: string } = {}) {
  const timestamp = String(Math.floor((o.ts ?? Date.now()) / 1000));
  const nonce = o.nonce ?? randomBytes(16).toString('hex');
  const payload = body === undefined ? '' : JSON.stringify(body, Object.keys(body).sort()).replace(/":/g, '": ').replace(/,"/g, ', "');
  const signature = createHmac('sha256', secret).update(method + path + timestamp + nonce + payload).digest('hex');
  return { payload, signature, headers: { 'X-API-Key': o.key ?? 'partner-a', 'X-Timestamp': timestamp, 'X-Nonce': nonce, 'X-Signature': signature, 'Content-Type': 'application/json' } };
}

/**
 * A POST signed by the http-message-signatures client with the RFC 9421 Ed25519 test key:
 * @method @path @authority content-digest, with created, keyid, a fresh nonce and alg.
 */
export async function rfc9421Ed25519Post(url: string, body: string): Promise<Record<string, string>> {
  const ed = createPrivateKey(readFileSync(`${RFC9421_VECTORS}keys/test-key-ed25519.priv.pem`, 'utf8').replace(/^[^-]*/, ''));
  const digest = `sha-256=:${createHash('sha256').update(body).digest('base64')}:`;
  const signed = await httpbis.signMessage({
    key: createSigner(ed, 'ed25519', 'test-key-ed25519'),
    fields: ['@method', '@path', '@authority', 'content-digest'],
    params: ['created', 'keyid', 'nonce', 'alg'],
    paramValues: { nonce: randomBytes(12).toString('hex') },
  }, { method: 'POST', url, headers: { 'content-digest': digest, 'content-type': 'application/json' } });
  return signed.headers as Record<string, string>;
}
