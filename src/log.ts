// pino factory. Redaction is the second line of defence: call sites never pass
// credential values, and these paths catch any header object that slips through.
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export const REDACT_PATHS = [
  'headers.authorization', 'headers.cookie', 'headers["set-cookie"]', 'headers["x-api-key"]',
  'headers["proxy-authorization"]', 'headers.signature', 'headers["x-signature"]',
  '*.secret', '*.token', '*.key', '*.password', '*.privateKey',
];

export function createLogger(level: string, dest?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { name: 'portcullis', pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    dest ?? pino.destination({ fd: 1, sync: false }),
  );
}
