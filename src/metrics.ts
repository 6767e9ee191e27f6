// Every metric, defined in one place, on a registry of our own. Labels come only
// from config names (policy, authenticator, SNI name as configured) and fixed
// sets (outcome, code, result) — never from paths, subjects or key ids.
import { Registry, Counter, Histogram, Gauge, collectDefaultMetrics } from 'prom-client';

// Sub-millisecond resolution for authentication, up to the upstream timeout range.
const AUTH_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
const REQUEST_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export function createMetrics() {
  const registry = new Registry();
  const p = 'portcullis_';
  collectDefaultMetrics({ register: registry, prefix: p });
  const m = {
    registry,
    requests: new Counter({ name: `${p}requests_total`, help: 'Requests by policy, outcome (allow, deny, would_deny, error) and code', labelNames: ['policy', 'outcome', 'code'], registers: [registry] }),
    requestDuration: new Histogram({ name: `${p}request_duration_seconds`, help: 'Time from request head to response end', labelNames: ['policy'], buckets: REQUEST_BUCKETS, registers: [registry] }),
    authDuration: new Histogram({ name: `${p}auth_duration_seconds`, help: 'Time spent in each authenticator', labelNames: ['authenticator'], buckets: AUTH_BUCKETS, registers: [registry] }),
    upstreamDuration: new Histogram({ name: `${p}upstream_duration_seconds`, help: 'Time from forwarding to the upstream until its response was relayed in full', buckets: REQUEST_BUCKETS, registers: [registry] }),
    tlsHandshakes: new Counter({ name: `${p}tls_handshakes_total`, help: 'TLS handshakes by SNI name (as configured, or "other"/"none") and result', labelNames: ['sni', 'result'], registers: [registry] }),
    clientCertVerifications: new Counter({ name: `${p}client_cert_verifications_total`, help: 'Client certificates seen at handshake, by verification result', labelNames: ['result'], registers: [registry] }),
    certExpiry: new Gauge({ name: `${p}certificate_expiry_timestamp_seconds`, help: 'notAfter of server certificates and client CAs, nextUpdate of CRLs', labelNames: ['name', 'role'], aggregator: 'max', registers: [registry] }),
    configReloads: new Counter({ name: `${p}config_reloads_total`, help: 'Config loads by result', labelNames: ['result'], registers: [registry] }),
    configLastReloadSuccess: new Gauge({ name: `${p}config_last_reload_success_timestamp_seconds`, help: 'When the serving config was loaded', aggregator: 'min', registers: [registry] }),
    replaysRejected: new Counter({ name: `${p}replays_rejected_total`, help: 'Signed requests refused as replays or outside the time window', registers: [registry] }),
    jwksRefresh: new Counter({ name: `${p}jwks_refresh_total`, help: 'Remote JWKS fetches by result', labelNames: ['result'], registers: [registry] }),
    connectionsDropped: new Counter({ name: `${p}connections_dropped_total`, help: 'Connections refused because server.maxConnections was reached', registers: [registry] }),
    openConnections: new Gauge({ name: `${p}open_connections`, help: 'Client connections currently open', registers: [registry] }),
  };
  // Label children cached by value: the label sets are small and bounded (config
  // names x fixed outcomes/codes), and a cached child skips prom-client's per-call
  // label hashing on the request path.
  const reqChildren = new Map<string, { inc(): void }>();
  const durChildren = new Map<string, { observe(v: number): void }>();
  const authChildren = new Map<string, { observe(v: number): void }>();
  return {
    ...m,
    countRequest(policy: string, outcome: string, code: string): void {
      const k = `${policy}\u0000${outcome}\u0000${code}`;
      let c = reqChildren.get(k);
      if (!c) { c = m.requests.labels({ policy, outcome, code }); reqChildren.set(k, c); }
      c.inc();
    },
    observeRequest(policy: string, seconds: number): void {
      let c = durChildren.get(policy);
      if (!c) { c = m.requestDuration.labels({ policy }); durChildren.set(policy, c); }
      c.observe(seconds);
    },
    observeAuth(authenticator: string, seconds: number): void {
      let c = authChildren.get(authenticator);
      if (!c) { c = m.authDuration.labels({ authenticator }); authChildren.set(authenticator, c); }
      c.observe(seconds);
    },
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
