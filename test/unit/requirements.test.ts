// The requirement tree: any/all semantics, order, short-circuiting, and the same
// answer whether authenticators answer synchronously or with a Promise (the
// request path stays synchronous when they all do).
import t from 'tap';
import { evaluate, isPromise, type ReqNode, type TraceEntry, type TreeResult } from '../../src/pipeline/requirements.ts';
import { allow, deny, skip, type Authenticator, type AuthRequest, type Verdict } from '../../src/authenticators/types.ts';

const calls: string[] = [];
function auth(name: string, v: Verdict | Error, async: boolean): Authenticator {
  return {
    name, type: 'test', credentialHeaders: [],
    verify() {
      calls.push(name);
      if (v instanceof Error) { if (async) return Promise.reject(v); throw v; }
      return async ? new Promise((r) => setTimeout(() => r(v), 1)) : v;
    },
  };
}
const ok = (n: string) => allow({ subject: n, scopes: [] });
const leaf = (a: Authenticator): ReqNode => ({ kind: 'auth', auth: a });
const any = (...c: ReqNode[]): ReqNode => ({ kind: 'any', children: c });
const all = (...c: ReqNode[]): ReqNode => ({ kind: 'all', children: c });
const req = {} as AuthRequest;
const run = (n: ReqNode) => { calls.length = 0; const trace: TraceEntry[] = []; const r = evaluate(n, req, trace, () => {}); return { r, trace }; };
const names = (r: TreeResult) => (r.kind === 'allow' ? r.allowed.map((a) => a.identity.subject) : r.kind);

t.test('synchronous authenticators give a synchronous answer', async (t) => {
  const { r, trace } = run(all(leaf(auth('a', ok('a'), false)), leaf(auth('b', ok('b'), false))));
  t.notOk(isPromise(r), 'no promise when nobody waits');
  t.same(names(r as TreeResult), ['a', 'b']);
  t.same(trace.map((e) => e.authenticator), ['a', 'b']);
  const none = run({ kind: 'none' });
  t.same(names(none.r as TreeResult), []);
});

t.test('all: every child in order, mixed sync and async; the first refusal stops it', async (t) => {
  const mixed = run(all(leaf(auth('a', ok('a'), false)), leaf(auth('b', ok('b'), true)), leaf(auth('c', ok('c'), false))));
  t.ok(isPromise(mixed.r), 'a Promise once one authenticator waits');
  t.same(names(await mixed.r), ['a', 'b', 'c']);
  t.same(mixed.trace.map((e) => e.authenticator), ['a', 'b', 'c']);
  const stop = run(all(leaf(auth('a', ok('a'), false)), leaf(auth('b', deny('AUTH_001', 'bad'), true)), leaf(auth('c', ok('c'), false))));
  const r = await stop.r;
  t.same([r.kind, r.kind !== 'allow' && r.code], ['deny', 'AUTH_001']);
  t.same(calls, ['a', 'b'], 'c never consulted');
});

t.test('any: the first allow wins; else a denial beats a skip, whatever answered first', async (t) => {
  const first = run(any(leaf(auth('a', skip('AUTH_003', 'none'), true)), leaf(auth('b', deny('AUTH_002', 'expired'), false)), leaf(auth('c', ok('c'), true)), leaf(auth('d', ok('d'), false))));
  t.same(names(await first.r), ['c']);
  t.same(calls, ['a', 'b', 'c'], 'd never consulted');
  const refused = run(any(leaf(auth('a', skip('AUTH_010', 'no cert'), false)), leaf(auth('b', deny('AUTH_002', 'expired'), true)), leaf(auth('c', deny('AUTH_001', 'bad'), false))));
  const r = await refused.r;
  t.same([r.kind, r.kind !== 'allow' && r.code], ['deny', 'AUTH_002'], 'the first denial, not the skip before it');
  const skips = run(any(leaf(auth('a', skip('AUTH_010', 'no cert'), true)), leaf(auth('b', skip('AUTH_003', 'no token'), false))));
  const s = await skips.r;
  t.same([s.kind, s.kind !== 'allow' && s.code], ['skip', 'AUTH_010'], 'all absent: the first skip');
});

t.test('nested trees agree between sync and async authenticators', async (t) => {
  for (const async of [false, true]) {
    const tree = any(all(leaf(auth('a', ok('a'), async)), leaf(auth('b', deny('AUTH_001', 'x'), !async))), all(leaf(auth('c', ok('c'), async)), leaf(auth('d', ok('d'), false))));
    const { r, trace } = run(tree);
    t.same(names(await r), ['c', 'd'], `async=${async}`);
    t.same(trace.map((e) => `${e.authenticator}:${e.verdict}`), ['a:allow', 'b:deny', 'c:allow', 'd:allow']);
  }
});

t.test('an authenticator that throws propagates (the handler answers 503, never forwards)', async (t) => {
  t.throws(() => run(all(leaf(auth('a', new Error('boom'), false)))).r, /boom/);
  await t.rejects(run(all(leaf(auth('a', ok('a'), false)), leaf(auth('b', new Error('jwks down'), true)))).r as Promise<TreeResult>, /jwks down/);
});
