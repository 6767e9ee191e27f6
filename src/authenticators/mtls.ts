// type: mtls — the client certificate verified in the TLS handshake, with an
// identity taken from one of its fields and optional allow-lists.
import { z } from 'zod';
import type { AuthCode } from '../errors.ts';
import type { CertProblem, PeerCert } from '../tls/peer.ts';
import { compileHostPattern, compileValuePattern } from '../util/patterns.ts';
import { ConfigError } from '../errors.ts';
import { allow, defineAuthenticator, deny, skip, type Verdict } from './types.ts';

const list = z.array(z.string().min(1)).optional();

const schema = z.strictObject({
  type: z.literal('mtls'),
  /** Which certificate field becomes the subject (X-Auth-User-ID). */
  identity: z.enum(['cn', 'san-uri', 'san-dns', 'san-email', 'fingerprint']).default('cn'),
  /** A certificate passes when any listed value matches (ghostunnel's --allow-* semantics). */
  allow: z.strictObject({ cn: list, ou: list, dns: list, uri: list, fingerprints: list }).optional(),
});

const PROBLEM_CODES: Record<CertProblem, AuthCode> = {
  expired: 'AUTH_002',
  revoked: 'AUTH_010',
  'revocation-unknown': 'AUTH_010',
  'not-yet-valid': 'AUTH_001',
  untrusted: 'AUTH_001',
  'wrong-purpose': 'AUTH_001',
  unparseable: 'AUTH_001',
  invalid: 'AUTH_001',
};

type Matcher = (c: PeerCert) => boolean;

export const mtls = defineAuthenticator({
  type: 'mtls',
  schema,
  create(cfg, ctx) {
    if (!ctx.clientAuth) {
      throw new ConfigError([{ path: ['authenticators', ctx.name, 'type'], message: 'type mtls needs tls.clientAuth.ca (client certificates are not requested without it)' }]);
    }
    const matchers: Matcher[] = [];
    const a = cfg.allow ?? {};
    if (a.cn?.length) { const res = a.cn.map(compileValuePattern); matchers.push((c) => !!c.cn && res.some((r) => r.test(c.cn!))); }
    if (a.ou?.length) { const res = a.ou.map(compileValuePattern); matchers.push((c) => c.ou.some((ou) => res.some((r) => r.test(ou)))); }
    if (a.dns?.length) { const fns = a.dns.map(compileHostPattern); matchers.push((c) => c.dns.some((d) => fns.some((f) => f(d.toLowerCase())))); }
    if (a.uri?.length) { const res = a.uri.map(compileValuePattern); matchers.push((c) => c.uris.some((u) => res.some((r) => r.test(u)))); }
    if (a.fingerprints?.length) {
      const fps = new Set(a.fingerprints.map((f) => f.toLowerCase().replace(/^sha256:/, '').replace(/:/g, '')));
      for (const [i, f] of [...fps].entries()) {
        if (!/^[0-9a-f]{64}$/.test(f)) throw new ConfigError([{ path: ['authenticators', ctx.name, 'allow', 'fingerprints', i], message: 'must be a SHA-256 fingerprint (64 hex digits, colons allowed)' }]);
      }
      matchers.push((c) => fps.has(c.fingerprint));
    }
    const field = cfg.identity;
    const subjectOf = (c: PeerCert): string | { error: string } => {
      switch (field) {
        case 'cn': return c.cn ?? { error: 'certificate has no CN' };
        case 'fingerprint': return c.fingerprint;
        case 'san-uri': return c.uris.length === 1 ? c.uris[0]! : { error: `certificate has ${c.uris.length} URI SANs, identity needs exactly one` };
        case 'san-dns': return c.dns[0] ?? { error: 'certificate has no DNS SAN' };
        case 'san-email': return c.emails[0] ?? { error: 'certificate has no email SAN' };
      }
    };
    return {
      name: ctx.name,
      type: 'mtls',
      credentialHeaders: [],
      verify(req): Verdict {
        const cc = req.conn.clientCert;
        if (!cc.present) return skip('AUTH_010', 'no client certificate presented');
        if (!cc.verified || !cc.cert) {
          const problem = cc.problem ?? 'invalid';
          return deny(PROBLEM_CODES[problem], `client certificate ${problem}${cc.detail ? ` (${cc.detail})` : ''}`);
        }
        const cert = cc.cert;
        if (matchers.length && !matchers.some((m) => m(cert))) {
          return deny('AUTH_001', `client certificate ${cert.subject} is not on the allow-list`);
        }
        const subject = subjectOf(cert);
        if (typeof subject !== 'string') return deny('AUTH_001', subject.error);
        return allow({ subject, scopes: [], cert }, `client certificate ${cert.subject}`);
      },
    };
  },
});
