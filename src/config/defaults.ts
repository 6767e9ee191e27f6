// Every default in one place, with its unit. The schema reads these; the JSON
// Schema for editors shows them; nothing else hard-codes a default.
export const DEFAULTS = {
  server: {
    listen: '0.0.0.0:8443',
    workers: 1,
    maxHeaderBytes: 16_384, // 16 KiB, as Node's own default
    maxUriBytes: 8_192, // 8 KiB request target, as nginx's and Apache's default request-line limits
    maxBodyBytes: 1_048_576, // 1 MiB; bodies are buffered only for routes that sign the body
    maxConnections: 10_000,
    maxConnectionsPerIp: 0,
    timeouts: {
      headersMs: 10_000, // 10 s to send the request head (slowloris)
      requestMs: 60_000, // 60 s for the whole request
      idleMs: 60_000, // 60 s idle keep-alive
      shutdownMs: 15_000, // 15 s drain on SIGTERM
    },
    trustedProxies: [] as string[], // nobody's X-Forwarded-For is believed
  },
  admin: { listen: '127.0.0.1:9901' },
  lockout: {
    windowSec: 60, // failures counted over 1 min
    lockSec: 300, // then 5 min of 429 AUTH_007
  },
  tls: {
    minVersion: 'TLSv1.2' as const,
    unknownSni: 'reject' as const,
    sessionTimeoutSec: 300, // 5 min: how long a TLS session may be resumed
    crlRefreshSec: 300, // CRLs named by URL are fetched again every 5 min
    ocsp: {
      mode: 'require' as const, // fail closed: a certificate whose status cannot be learnt is refused
      timeoutMs: 3_000, // 3 s for the responder's answer
      maxAgeSec: 3_600, // an answer is used for at most 1 h, even with a later nextUpdate
      retrySec: 10, // a failed lookup is asked again after 10 s
    },
  },
  upstream: {
    timeoutMs: 30_000, // 30 s waiting for the upstream's response
    websockets: true,
  },
  identity: {
    headers: {
      subject: 'X-Auth-User-ID',
      method: 'X-Auth-Method',
      keyId: 'X-Auth-Key-ID',
      scopes: 'X-Auth-Scopes',
      clientCert: 'X-Forwarded-Client-Cert',
    },
    clientCertFormat: 'xfcc' as const,
    debugHeaders: false,
  },
  policy: { mode: 'enforce' as const, rateLimitBy: 'identity' as const },
  logging: { level: 'info' as const, access: true },
} as const;
