// State and hooks that outlive one compiled config: JWKS key sets, nonce stores,
// and the events authenticators report (metrics, logs). A reload that does not
// change an authenticator's settings gets the same instances back.

export interface AuthEvents {
  jwksRefresh(result: 'success' | 'failure'): void;
  replayRejected(): void;
  log(level: 'info' | 'warn' | 'error', obj: Record<string, unknown>): void;
}

const NO_EVENTS: AuthEvents = { jwksRefresh() {}, replayRejected() {}, log() {} };

export class Runtime {
  events: AuthEvents = NO_EVENTS;
  readonly #shared = new Map<string, unknown>();

  /** One instance per key for the life of the process (keys encode the settings). */
  shared<T>(key: string, create: () => T): T {
    let v = this.#shared.get(key) as T | undefined;
    if (v === undefined) { v = create(); this.#shared.set(key, v); }
    return v;
  }
}
