// The one table of request errors: code -> HTTP status and the public message.
// Clients see only `code` and `message`; the detail of a denial goes to the log.
// docs: README "Errors" lists the same table; test/unit/errors.test.ts keeps them in step.

export const ERRORS = {
  AUTH_001: { status: 401, message: 'Invalid credentials' },
  AUTH_002: { status: 401, message: 'Credential expired' },
  AUTH_003: { status: 401, message: 'Malformed or missing credential' },
  AUTH_004: { status: 401, message: 'API key not found or revoked' },
  AUTH_005: { status: 403, message: 'IP address not allowed' },
  AUTH_007: { status: 429, message: 'Too many requests' },
  AUTH_008: { status: 403, message: 'Not authorised for this resource' },
  AUTH_009: { status: 401, message: 'Replayed request or timestamp outside the allowed window' },
  AUTH_010: { status: 401, message: 'Valid client certificate required' },
  AUTH_011: { status: 403, message: 'No policy matches the request' },
  BAD_REQUEST: { status: 400, message: 'Malformed request' },
  BODY_TOO_LARGE: { status: 413, message: 'Request body too large' },
  METHOD_NOT_ALLOWED: { status: 405, message: 'Method not allowed' },
  MISDIRECTED: { status: 421, message: 'Host does not match the TLS server name' },
  URI_TOO_LONG: { status: 414, message: 'Request URI too long' },
  CONNECTION_STALE: { status: 421, message: 'Client-certificate trust changed since this connection was made: retry on a new connection' },
  REQUEST_TIMEOUT: { status: 408, message: 'Request not received in time' },
  HEADERS_TOO_LARGE: { status: 431, message: 'Request headers too large' },
  UPSTREAM_UNAVAILABLE: { status: 502, message: 'Upstream unavailable' },
  NOT_READY: { status: 503, message: 'Service not ready' },
  INTERNAL: { status: 503, message: 'Authentication temporarily unavailable' },
  UPSTREAM_TIMEOUT: { status: 504, message: 'Upstream timed out' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

/** A denial code produced by an authenticator or a policy check. */
export type AuthCode = Extract<ErrorCode, `AUTH_${string}`>;

export function errorBody(code: ErrorCode, requestId: string): string {
  return JSON.stringify({ error: { code, message: ERRORS[code].message, requestId } });
}

/** Where in the config an operator's mistake is: a YAML path, and a message. */
export interface ConfigIssue {
  path: readonly (string | number)[];
  message: string;
  /** Set by the loader: `file:line:col` of the node the path names. */
  where?: string;
}

export function formatPath(path: readonly (string | number)[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${p}` : p;
  return out || '(root)';
}

export function formatIssue(i: ConfigIssue): string {
  return `${i.where ? i.where + ': ' : ''}${formatPath(i.path)}: ${i.message}`;
}

/** An operator's configuration error: found at load, never at request time. */
export class ConfigError extends Error {
  readonly issues: readonly ConfigIssue[];
  constructor(issues: readonly ConfigIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}
