// The one table of authenticator types. Adding one: a new file exporting a
// defineAuthenticator(...) and one line here.
import type { AuthenticatorType } from './types.ts';
import { mtls } from './mtls.ts';
import { jwt } from './jwt.ts';
import { apiKey } from './api-key.ts';
import { hmac } from './hmac.ts';
import { bsm } from './bsm.ts';
import { sigv4 } from './sigv4.ts';

export const AUTHENTICATOR_TYPES: readonly AuthenticatorType<any>[] = [mtls, jwt, apiKey, hmac, bsm, sigv4];

export const AUTHENTICATORS_BY_TYPE: ReadonlyMap<string, AuthenticatorType<any>> = new Map(
  AUTHENTICATOR_TYPES.map((t) => [t.type, t]),
);
