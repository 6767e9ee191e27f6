// Every metric, defined in one place, on a registry of our own. Labels come only
// from config names (policy, authenticator, SNI name as configured) and fixed
// sets (outcome, code, result) — never from paths, subjects or key ids.
//
// The per-request and per-connection series are plain numbers in Maps, updated
// without prom-client's per-call label validation and hashing (measured in
// bench/RESULTS.md); prom-client's registry reads them at scrape time through the
// same get() interface its own metrics have, so /metrics, the text format and the
// cluster aggregation are unchanged.
import { Registry, Counter, Gauge, collectDefaultMetrics } from 'prom-client';

// Sub-millisecond resolution for authentication, up to the upstream timeout range.
const AUTH_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
const REQUEST_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

type Labels = Record<string, string>;
interface MetricValue { labels: Record<string, string | number>; value: number; metricName?: string }

/** A counter whose series are looked up by a key the caller builds from its label values. */
class FastCounter {
  readonly type = 'counter';
  readonly aggregator = 'sum';
  readonly #series = new Map<string, { labels: Labels; value: number }>();
  readonly name: string;
  readonly help: string;
  constructor(name: string, help: string, registry: Registry) {
    this.name = name;
    this.help = help;
    registry.registerMetric(this as never);
  }
  inc(key: string, labels: () => Labels, by = 1): void {
    let s = this.#series.get(key);
    if (!s) { s = { labels: labels(), value: 0 }; this.#series.set(key, s); }
    s.value += by;
  }
  async get() {
    const values: MetricValue[] = [...this.#series.values()].map((s) => ({ labels: { ...s.labels }, value: s.value }));
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
  reset(): void { this.#series.clear(); }
}

/** A histogram with the same series-by-key lookup; buckets are stored non-cumulative. */
class FastHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #series = new Map<string, { labels: Labels; counts: Float64Array; sum: number; count: number }>();
  readonly name: string;
  readonly help: string;
  readonly buckets: readonly number[];
  constructor(name: string, help: string, buckets: readonly number[], registry: Registry) {
    this.name = name;
    this.help = help;
    this.buckets = buckets;
    registry.registerMetric(this as never);
  }
  observe(key: string, labels: () => Labels, v: number): void {
    let s = this.#series.get(key);
    if (!s) { s = { labels: labels(), counts: new Float64Array(this.buckets.length + 1), sum: 0, count: 0 }; this.#series.set(key, s); }
    const b = this.buckets;
    let i = 0;
    while (i < b.length && v > b[i]!) i++;
    s.counts[i]!++;
    s.sum += v;
    s.count++;
  }
  async get() {
    const values: MetricValue[] = [];
    for (const s of this.#series.values()) {
      let acc = 0;
      this.buckets.forEach((le, i) => {
        acc += s.counts[i]!;
        values.push({ labels: { ...s.labels, le }, value: acc, metricName: `${this.name}_bucket` });
      });
      values.push({ labels: { ...s.labels, le: '+Inf' }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
  reset(): void { this.#series.clear(); }
}

const NO_LABELS = () => ({});

export function createMetrics() {
  const registry = new Registry();
  const p = 'portcullis_';
  collectDefaultMetrics({ register: registry, prefix: p });
  // prom-client names three gauges with a counter's `_total` suffix, which `promtool check
  // metrics` refuses (catalogue MET-02). The same counts stay as `nodejs_active_handles` and
  // `nodejs_active_resources` (by type) and `nodejs_active_requests` (by type, when any).
  for (const n of ['active_handles_total', 'active_requests_total', 'active_resources_total']) registry.removeSingleMetric(`${p}nodejs_${n}`);
  let open = 0;
  const m = {
    registry,
    authResults: new FastCounter(`${p}auth_results_total`, 'Verdicts of each authenticator: result (allow, deny: a credential failed, skip: none of its kind) and code (empty for allow)', registry),
    requests: new FastCounter(`${p}requests_total`, 'Requests by policy, outcome (allow, deny, would_deny, error) and code', registry),
    requestDuration: new FastHistogram(`${p}request_duration_seconds`, 'Time from request head to response end', REQUEST_BUCKETS, registry),
    authDuration: new FastHistogram(`${p}auth_duration_seconds`, 'Time spent in each authenticator', AUTH_BUCKETS, registry),
    upstreamDuration: new FastHistogram(`${p}upstream_duration_seconds`, 'Time from forwarding to the upstream until its response was relayed in full', REQUEST_BUCKETS, registry),
    upstreamErrors: new FastCounter(`${p}upstream_errors_total`, 'Upstream exchanges that failed, by reason (connect, timeout, reset, tls, protocol, request)', registry),
    tlsHandshakes: new FastCounter(`${p}tls_handshakes_total`, 'TLS handshakes by SNI name (as configured, or "other"/"none") and result', registry),
    tlsHandshakeErrors: new Counter({ name: `${p}tls_handshake_errors_total`, help: 'Failed TLS handshakes by reason: timeout, closed, not_tls, protocol_version, no_shared_cipher, no_alpn, client_alert (the client refused the server certificate or the session), other', labelNames: ['reason'], registers: [registry] }),
    clientCertVerifications: new FastCounter(`${p}client_cert_verifications_total`, 'Client certificates seen at handshake, by verification result', registry),
    certExpiry: new Gauge({ name: `${p}certificate_expiry_timestamp_seconds`, help: 'notAfter of server certificates and client CAs, nextUpdate of CRLs', labelNames: ['name', 'role'], aggregator: 'max', registers: [registry] }),
    configReloads: new Counter({ name: `${p}config_reloads_total`, help: 'Config loads by result', labelNames: ['result'], registers: [registry] }),
    configLastReloadSuccessful: new Gauge({ name: `${p}config_last_reload_successful`, help: 'Whether the last config load or reload succeeded (1) or was refused (0); the previous config keeps serving', aggregator: 'min', registers: [registry] }),
    configLastReloadSuccess: new Gauge({ name: `${p}config_last_reload_success_timestamp_seconds`, help: 'When the serving config was loaded', aggregator: 'min', registers: [registry] }),
    replaysRejected: new Counter({ name: `${p}replays_rejected_total`, help: 'Signed requests refused as replays or outside the time window', registers: [registry] }),
    crlFetches: new Counter({ name: `${p}crl_fetches_total`, help: 'Fetches of CRLs named by URL in tls.clientAuth.crl, by result: changed (a new CRL; the config reloads), unchanged, failure (the last good CRL stays)', labelNames: ['result'], registers: [registry] }),
    ocspLookups: new Counter({ name: `${p}ocsp_lookups_total`, help: 'Client-certificate status asked of OCSP responders, by result: good, revoked, unknown (the responder does not know the certificate), error (no usable answer)', labelNames: ['result'], registers: [registry] }),
    jwksRefresh: new Counter({ name: `${p}jwks_refresh_total`, help: 'Remote JWKS fetches by result', labelNames: ['result'], registers: [registry] }),
    lockouts: new Counter({ name: `${p}lockouts_total`, help: 'Client IPs locked out after repeated authentication failures (lockout)', registers: [registry] }),
    connectionsDropped: new Counter({ name: `${p}connections_dropped_total`, help: 'Connections refused, by reason: max_connections (server.maxConnections) or per_ip (server.maxConnectionsPerIp)', labelNames: ['reason'], registers: [registry] }),
    openConnections: new Gauge({ name: `${p}open_connections`, help: 'Client connections currently open', registers: [registry], collect() { this.set(open); } }),
  };
  return {
    ...m,
    countRequest(policy: string, outcome: string, code: string): void {
      m.requests.inc(`${policy}\u0000${outcome}\u0000${code}`, () => ({ policy, outcome, code }));
    },
    observeRequest(policy: string, seconds: number): void {
      m.requestDuration.observe(policy, () => ({ policy }), seconds);
    },
    observeAuth(authenticator: string, seconds: number, result: string, code: string): void {
      m.authDuration.observe(authenticator, () => ({ authenticator }), seconds);
      m.authResults.inc(`${authenticator}\u0000${result}\u0000${code}`, () => ({ authenticator, result, code }));
    },
    observeUpstream(seconds: number): void {
      m.upstreamDuration.observe('', NO_LABELS, seconds);
    },
    countUpstreamError(reason: string): void {
      m.upstreamErrors.inc(reason, () => ({ reason }));
    },
    countHandshake(sni: string, result: string): void {
      m.tlsHandshakes.inc(`${sni}\u0000${result}`, () => ({ sni, result }));
    },
    countClientCert(result: string): void {
      m.clientCertVerifications.inc(result, () => ({ result }));
    },
    connectionOpened(): void { open++; },
    connectionClosed(): void { open--; },
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
