// A fixture PKI made at test time: CAs, server and client certificates for
// every case the mTLS tests need, written to a temp folder.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { issue, makeCrl, type Issued } from '../../src/tls/pki.ts';

const DAY = 86_400_000;

export interface Fixture {
  dir: string;
  ca: Issued;
  /** A different CA with the same subject DN as `ca` (TLS-01). */
  forgedCa: Issued;
  servers: { a: Issued; b: Issued; wild: Issued };
  clients: {
    valid: Issued; expired: Issued; notYetValid: Issued; untrusted: Issued; revoked: Issued;
    serverOnly: Issued; spiffe: Issued; ops: Issued; twoUris: Issued; evilCn: Issued;
  };
  /** Paths of files in `dir`. */
  path(name: string): string;
}

export function makeFixture(): Fixture {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-pki-'));
  const ca = issue({ cn: 'Test Client CA', o: 'Portcullis test', ca: true });
  const forgedCa = issue({ cn: 'Test Client CA', o: 'Portcullis test', ca: true });
  const serverCa = ca;
  const now = Date.now();
  const servers = {
    a: issue({ cn: 'a.test', issuer: serverCa, dns: ['a.test', 'api.a.test'], eku: ['serverAuth'] }),
    b: issue({ cn: 'b.test', issuer: serverCa, dns: ['b.test'], eku: ['serverAuth'] }),
    wild: issue({ cn: '*.wild.test', issuer: serverCa, dns: ['*.wild.test'], eku: ['serverAuth'] }),
  };
  const clients = {
    valid: issue({ cn: 'client-1', ou: ['payments'], issuer: ca, eku: ['clientAuth'], dns: ['client-1.svc'], emails: ['client-1@example.org'] }),
    expired: issue({ cn: 'client-expired', issuer: ca, eku: ['clientAuth'], notBefore: new Date(now - 10 * DAY), notAfter: new Date(now - DAY) }),
    notYetValid: issue({ cn: 'client-future', issuer: ca, eku: ['clientAuth'], notBefore: new Date(now + DAY), notAfter: new Date(now + 10 * DAY) }),
    untrusted: issue({ cn: 'client-1', ou: ['payments'], issuer: forgedCa, eku: ['clientAuth'] }),
    revoked: issue({ cn: 'client-revoked', issuer: ca, eku: ['clientAuth'] }),
    serverOnly: issue({ cn: 'client-server-eku', issuer: ca, eku: ['serverAuth'] }),
    spiffe: issue({ cn: 'workload', issuer: ca, eku: ['clientAuth'], uris: ['spiffe://example.org/ns/prod/sa/billing'] }),
    ops: issue({ cn: 'ops-alice', ou: ['ops'], issuer: ca, eku: ['clientAuth'] }),
    twoUris: issue({ cn: 'two', issuer: ca, eku: ['clientAuth'], uris: ['spiffe://example.org/a', 'spiffe://example.org/b'] }),
    evilCn: issue({ cn: 'evil\r\nX-Auth-User-ID: admin", DNS=x;', issuer: ca, eku: ['clientAuth'], uris: ['spiffe://example.org/x,y;z="w"'] }),
  };
  const files: Record<string, string> = {
    'ca.crt': ca.certPem,
    'ca.crl': makeCrl(ca, [clients.revoked.serial]),
    'forged-ca.crt': forgedCa.certPem,
    'a.crt': servers.a.certPem + ca.certPem, 'a.key': servers.a.keyPem,
    'b.crt': servers.b.certPem, 'b.key': servers.b.keyPem,
    'wild.crt': servers.wild.certPem, 'wild.key': servers.wild.keyPem,
  };
  for (const [name, c] of Object.entries(clients)) {
    files[`client-${name}.crt`] = c.certPem;
    files[`client-${name}.key`] = c.keyPem;
  }
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
  return { dir, ca, forgedCa, servers, clients, path: (n) => join(dir, n) };
}
