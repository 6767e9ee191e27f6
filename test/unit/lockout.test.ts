// The failure lockout's counting, on its own clock: which codes count, the window, the
// lock's length, exempt IPs, and clients kept apart.
import t from 'tap';
import { Lockout, COUNTED } from '../../src/pipeline/lockout.ts';
import { blockList } from '../../src/util/net.ts';
import type { AuthCode } from '../../src/errors.ts';

const S = { failures: 3, windowMs: 60_000, lockMs: 300_000 };

t.test('the third counted failure within the window locks for lockMs, then the lock runs out', async (t) => {
  const l = new Lockout();
  t.equal(l.failed('10.0.0.1', 'AUTH_001', 0, S), 0);
  t.equal(l.failed('10.0.0.1', 'AUTH_004', 1_000, S), 0);
  t.equal(l.lockedFor('10.0.0.1', 1_000, S), 0, 'two failures: not locked');
  t.equal(l.failed('10.0.0.1', 'AUTH_009', 2_000, S), 300_000, 'the third locks');
  t.equal(l.lockedFor('10.0.0.1', 2_000, S), 300_000);
  t.equal(l.lockedFor('10.0.0.1', 301_999, S), 1);
  t.equal(l.lockedFor('10.0.0.1', 302_000, S), 0, 'over at lockMs');
  t.equal(l.lockedFor('10.0.0.2', 2_000, S), 0, 'another IP is not locked');
  t.equal(l.failed('10.0.0.1', 'AUTH_001', 302_000, S), 0, 'after a lock the count starts again');
});

t.test('only AUTH_001, AUTH_004 and AUTH_009 count', async (t) => {
  t.same([...COUNTED].sort(), ['AUTH_001', 'AUTH_004', 'AUTH_009']);
  const l = new Lockout();
  const others: (AuthCode | undefined)[] = ['AUTH_002', 'AUTH_003', 'AUTH_005', 'AUTH_007', 'AUTH_008', 'AUTH_010', 'AUTH_011', undefined];
  for (const c of others) for (let i = 0; i < 5; i++) t.equal(l.failed('10.0.0.3', c, i, S), 0, `${c} never locks`);
  t.equal(l.lockedFor('10.0.0.3', 10, S), 0);
  t.equal(l.size, 0, 'and is not even remembered');
});

t.test('the window: failures older than windowMs are forgotten', async (t) => {
  const l = new Lockout();
  l.failed('10.0.0.4', 'AUTH_001', 0, S);
  l.failed('10.0.0.4', 'AUTH_001', 59_999, S);
  t.equal(l.failed('10.0.0.4', 'AUTH_001', 60_000, S), 0, 'the window started again at 60 s');
  t.equal(l.failed('10.0.0.4', 'AUTH_001', 60_001, S), 0);
  t.equal(l.failed('10.0.0.4', 'AUTH_001', 60_002, S), 300_000, 'three within the new window');
});

t.test('exempt IPs are never counted nor locked (IPv4, and IPv4-mapped IPv6)', async (t) => {
  const s = { ...S, exemptIps: blockList(['192.0.2.0/24']) };
  const l = new Lockout();
  for (let i = 0; i < 10; i++) t.equal(l.failed('192.0.2.5', 'AUTH_001', i, s), 0);
  for (let i = 0; i < 10; i++) t.equal(l.failed('::ffff:192.0.2.6', 'AUTH_001', i, s), 0);
  t.equal(l.lockedFor('192.0.2.5', 10, s), 0);
  for (let i = 0; i < 3; i++) l.failed('2001:db8::1', 'AUTH_001', i, s);
  t.equal(l.lockedFor('2001:db8::1', 3, s), 300_000 - 1, 'an IPv6 client outside the list is locked');
});
