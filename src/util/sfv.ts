// RFC 8941 structured field values: the subset RFC 9421 needs (dictionaries whose
// members are items or inner lists, with parameters), parsed strictly. Any
// deviation throws SfvError; callers turn it into a denial.

export class SfvError extends Error {}

export type BareItem = string | number | boolean | Uint8Array | Token;
export class Token {
  readonly value: string;
  constructor(value: string) { this.value = value; }
}
export type Params = Map<string, BareItem>;
export interface Item { value: BareItem; params: Params }
export interface InnerList { items: Item[]; params: Params }
export type Member = Item | InnerList;

export const isInnerList = (m: Member): m is InnerList => 'items' in m;

const KEY = /^[a-z*][a-z0-9_\-.*]*/;

class Parser {
  i = 0;
  readonly s: string;
  constructor(s: string) { this.s = s; }
  peek(): string { return this.s[this.i] ?? ''; }
  eof(): boolean { return this.i >= this.s.length; }
  fail(msg: string): never { throw new SfvError(`${msg} at offset ${this.i}`); }
  sp(): void { while (this.peek() === ' ') this.i++; }
  ows(): void { while (this.peek() === ' ' || this.peek() === '\t') this.i++; }

  key(): string {
    const m = KEY.exec(this.s.slice(this.i));
    if (!m) this.fail('expected a key');
    this.i += m[0].length;
    return m[0];
  }

  bare(): BareItem {
    const c = this.peek();
    if (c === '-' || (c >= '0' && c <= '9')) return this.number();
    if (c === '"') return this.string();
    if (c === ':') return this.bytes();
    if (c === '?') { this.i++; const b = this.peek(); if (b !== '0' && b !== '1') this.fail('bad boolean'); this.i++; return b === '1'; }
    if (c === '*' || /[A-Za-z]/.test(c)) {
      const m = /^[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*/.exec(this.s.slice(this.i))!;
      this.i += m[0].length;
      return new Token(m[0]);
    }
    return this.fail('expected an item');
  }

  number(): number {
    const m = /^-?\d{1,15}(\.\d{1,3})?/.exec(this.s.slice(this.i));
    if (!m) this.fail('bad number');
    if (!m[1] && m[0].replace('-', '').length > 15) this.fail('integer too long');
    this.i += m[0].length;
    return Number(m[0]);
  }

  string(): string {
    this.i++;
    let out = '';
    for (;;) {
      if (this.eof()) this.fail('unterminated string');
      const c = this.s[this.i++]!;
      if (c === '\\') {
        const n = this.s[this.i++];
        if (n !== '"' && n !== '\\') this.fail('bad escape');
        out += n;
      } else if (c === '"') return out;
      else if (c < ' ' || c > '~') this.fail('bad string character');
      else out += c;
    }
  }

  bytes(): Uint8Array {
    this.i++;
    const end = this.s.indexOf(':', this.i);
    if (end < 0) this.fail('unterminated byte sequence');
    const b64 = this.s.slice(this.i, end);
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) this.fail('bad base64');
    this.i = end + 1;
    return new Uint8Array(Buffer.from(b64, 'base64'));
  }

  params(): Params {
    const p: Params = new Map();
    while (this.peek() === ';') {
      this.i++;
      this.sp();
      const k = this.key();
      let v: BareItem = true;
      if (this.peek() === '=') { this.i++; v = this.bare(); }
      p.set(k, v);
    }
    return p;
  }

  item(): Item { const value = this.bare(); return { value, params: this.params() }; }

  member(): Member {
    if (this.peek() !== '(') return this.item();
    this.i++;
    const items: Item[] = [];
    for (;;) {
      this.sp();
      if (this.peek() === ')') { this.i++; return { items, params: this.params() }; }
      items.push(this.item());
      const c = this.peek();
      if (c !== ' ' && c !== ')') this.fail('expected space or ) in inner list');
    }
  }
}

export function parseDictionary(input: string): Map<string, Member> {
  const p = new Parser(input);
  const out = new Map<string, Member>();
  p.sp();
  if (p.eof()) return out;
  for (;;) {
    const k = p.key();
    let m: Member;
    if (p.peek() === '=') { p.i++; m = p.member(); } else m = { value: true, params: p.params() };
    out.set(k, m);
    p.ows();
    if (p.eof()) return out;
    if (p.peek() !== ',') p.fail('expected ,');
    p.i++;
    p.ows();
    if (p.eof()) p.fail('trailing comma');
  }
}

export function serializeBare(v: BareItem): string {
  if (v instanceof Token) return v.value;
  if (v instanceof Uint8Array) return `:${Buffer.from(v).toString('base64')}:`;
  if (typeof v === 'boolean') return v ? '?1' : '?0';
  if (typeof v === 'number') return String(v);
  return `"${v.replace(/[\\"]/g, '\\$&')}"`;
}

export function serializeParams(p: Params): string {
  let s = '';
  for (const [k, v] of p) s += v === true ? `;${k}` : `;${k}=${serializeBare(v)}`;
  return s;
}

export function serializeItem(i: Item): string { return serializeBare(i.value) + serializeParams(i.params); }

export function serializeInnerList(l: InnerList): string {
  return `(${l.items.map(serializeItem).join(' ')})${serializeParams(l.params)}`;
}
