// The error table and the README's table stay in step.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { ERRORS, errorBody } from '../../src/errors.ts';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

t.test('every error code is documented with its status', async (t) => {
  for (const [code, { status }] of Object.entries(ERRORS)) {
    t.match(readme, new RegExp(`\\| ${code} \\| ${status} \\|`), `${code} ${status} in README`);
  }
});

t.test('error bodies carry only code, message and request id', async (t) => {
  t.same(JSON.parse(errorBody('AUTH_010', 'r1')), { error: { code: 'AUTH_010', message: ERRORS.AUTH_010.message, requestId: 'r1' } });
});
