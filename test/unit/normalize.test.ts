import t from 'tap';
import { normalisePath } from '../../src/pipeline/normalize.ts';
import { compilePathGlob, compileHostPattern, compileValuePattern } from '../../src/util/patterns.ts';

t.test('normalisation', async (t) => {
  const ok: [string, string, string][] = [
    ['/', '/', ''], ['/a//b', '/a/b', ''], ['/public/../admin', '/admin', ''], ['/%61dmin', '/admin', ''],
    ['//admin', '/admin', ''], ['/admin/./x', '/admin/x', ''], ['/a/b/..', '/a/', ''], ['/a/%2e%2E/b', '/b', ''],
    ['/../../etc', '/etc', ''], ['/%7e%41%20%c3%a9', '/~A%20%C3%A9', ''], ['/a%252e', '/a%252e', ''],
    ['/x?y=1/../', '/x', 'y=1/../'], ['/caf%C3%A9/%e2%80%ae/%F0%9F%98%80', '/caf%C3%A9/%E2%80%AE/%F0%9F%98%80', ''],
  ];
  for (const [input, path, query] of ok) t.same(normalisePath(input), { ok: true, path, query }, input);
  // Encoded bytes that are not UTF-8 (catalogue PATH-07): overlong "." and "/", a lone
  // continuation byte, a truncated sequence, a surrogate, Latin-1 "é", beyond U+10FFFF.
  for (const bad of ['/public/%C0%AE%C0%AE/admin', '/a%c0%af', '/a%e0%80%ae', '/a%80', '/a%c3', '/a%ed%a0%80', '/caf%e9', '/a%f4%90%80%80', '/a%ff']) {
    t.same(normalisePath(bad), { ok: false, reason: 'percent-encoded bytes in path are not valid UTF-8' }, `${bad} refused`);
  }
  for (const bad of ['/a;b', '/admin;jsessionid=1/users', '/admin%2Fx', '/a/..%2f', '/%5c', '/a%00', '/a%1f', '/a/%zz', '/a%2', 'admin', '*', '/a#frag', '/a\\b', '']) {
    t.equal(normalisePath(bad).ok, false, `${bad} refused`);
  }
});

t.test('path globs', async (t) => {
  const re = (g: string) => compilePathGlob(g) as RegExp;
  t.ok(re('/admin/**').test('/admin'));
  t.ok(re('/admin/**').test('/admin/'));
  t.ok(re('/admin/**').test('/admin/a/b'));
  t.notOk(re('/admin/**').test('/administrator'));
  t.ok(re('/users/*/orders').test('/users/42/orders'));
  t.notOk(re('/users/*/orders').test('/users/4/2/orders'));
  t.ok(re('/a/**/z').test('/a/z') && re('/a/**/z').test('/a/b/c/z'));
  t.ok(re('/**').test('/anything/at/all'));
  t.ok(re('/v1.0/x').test('/v1.0/x') && !re('/v1.0/x').test('/v1a0/x'), 'dots are literal');
  for (const bad of ['admin', '/a**', '/a/../b', '/a?', '/[a]']) t.type(compilePathGlob(bad), 'string', `${bad} is an error`);
});

t.test('host and value patterns', async (t) => {
  const w = compileHostPattern('*.Example.com');
  t.ok(w('a.example.com'));
  t.notOk(w('example.com'));
  t.notOk(w('a.b.example.com'));
  t.ok(compileHostPattern('API.example.com.')('api.example.com'));
  const u = compileValuePattern('spiffe://example.org/ns/*/sa/*');
  t.ok(u.test('spiffe://example.org/ns/prod/sa/billing'));
  t.notOk(u.test('spiffe://example.org/ns/prod/x/sa/billing'));
  t.ok(compileValuePattern('spiffe://example.org/**').test('spiffe://example.org/a/b/c'));
  t.notOk(compileValuePattern('ops-*').test('xops-1'), 'anchored');
});
