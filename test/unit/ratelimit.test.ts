import t from 'tap';
import { RateLimiter } from '../../src/pipeline/ratelimit.ts';

const s = { requests: 4, perMs: 2000, by: 'identity' as const }; // one token per 500 ms

t.test('a token bucket: a full burst, then one per refill interval, never more than the bucket holds', async (t) => {
  const l = new RateLimiter();
  const take = (at: number, who = 'a', p = 'api') => l.take(p, who, at, s) as number;
  t.same([take(0), take(0), take(0), take(0)], [0, 0, 0, 0], 'a burst of 4');
  t.equal(take(0), 500, 'the fifth waits 500 ms');
  t.equal(take(100), 400, 'a refused request takes nothing, and the wait shrinks');
  t.equal(take(500), 0, 'after 500 ms: one token');
  t.equal(take(500), 500);
  t.equal(take(750), 250, 'half a token is not a token');
  t.equal(take(1000), 0);
  t.equal(take(1_000_000), 0, 'a long silence refills to the bucket size...');
  t.same([take(1_000_000), take(1_000_000), take(1_000_000), take(1_000_000)], [0, 0, 0, 500], '...and no further');
  t.equal(take(0, 'b'), 0, 'another caller has its own bucket');
  t.equal(take(1_000_000, 'a', 'other'), 0, 'so does the same caller under another policy');
  t.equal(take(999_000), 500, 'a clock that steps back refills nothing');
  t.equal(take(1_000_500), 0, 'and gives nothing extra when it comes forward again');
  t.equal(take(1_000_500), 500);
});
