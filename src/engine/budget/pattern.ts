// A string's `pattern` (or `format`, as the pattern xgrammar's grammar for it matches) as a
// small NFA, so the budget steering can follow the characters typed and name the shortest text
// that completes a match. It reads the regular expressions constrained decoding accepts
// (validateSchema refuses lookarounds, backreferences and escapes of quotes or control
// characters): anything else is an UnsteerableSchemaError, and the grammar alone decides.
// Like xgrammar, a pattern must match the whole string (its ^ and $ are implied).
import { UnsteerableSchemaError } from "./json-progress";

/** One character of a class: whether it matches, and the character the completion writes for it. */
interface CharSet {
  has(c: string): boolean;
  /** Undefined for a class of only non-ASCII or unwritable characters: the steering cannot name one. */
  sample: string | undefined;
}

interface State {
  /** Edges reading one character. */
  on: { set: CharSet; to: number }[];
  /** Edges reading nothing. */
  free: number[];
}

type Node =
  | { t: "char"; set: CharSet }
  | { t: "seq"; parts: Node[] }
  | { t: "alt"; options: Node[] }
  | { t: "repeat"; node: Node; min: number; max: number };

// Past this many states (a large {m,n} repeated) the steering leaves the string to the grammar.
const MAX_STATES = 20_000;

/** A compiled pattern: the states a prefix leads to, and the shortest text to a match from them. */
export class PatternAutomaton {
  private readonly states: State[] = [];
  private readonly accept: number;
  /** Each state's shortest completion to a match (undefined: none). */
  private readonly shortest: (string | undefined)[];
  readonly start: readonly number[];
  /** The longest of the states' shortest completions: the most one character can add to a completion. */
  readonly longestCompletion: number;

  constructor(pattern: string) {
    const node = new Parser(pattern).parse();
    const entry = this.newState();
    this.accept = this.build(node, entry);
    this.start = this.closure([entry]);
    this.shortest = this.shortestCompletions();
    this.longestCompletion = Math.max(0, ...this.shortest.map((s) => s?.length ?? 0));
    if (this.completion(this.start) === undefined) throw new UnsteerableSchemaError("a pattern no string matches");
  }

  /** The states after reading `c` (one code point) from `from`: empty when the text left the pattern. */
  step(from: readonly number[], c: string): number[] {
    const next: number[] = [];
    for (const s of from) for (const edge of this.states[s]!.on) if (edge.set.has(c)) next.push(edge.to);
    return this.closure(next);
  }

  /** The shortest text that, after the text that led to `at`, makes a match (undefined: none). */
  completion(at: readonly number[]): string | undefined {
    let best: string | undefined;
    for (const s of at) {
      const text = this.shortest[s];
      if (text !== undefined && (best === undefined || text.length < best.length)) best = text;
    }
    return best;
  }

  private newState(): number {
    if (this.states.length >= MAX_STATES) throw new UnsteerableSchemaError("a pattern too large to follow");
    this.states.push({ on: [], free: [] });
    return this.states.length - 1;
  }

  /** Adds `node`'s states after `from`; returns the state it ends in. */
  private build(node: Node, from: number): number {
    switch (node.t) {
      case "char": {
        const to = this.newState();
        this.states[from]!.on.push({ set: node.set, to });
        return to;
      }
      case "seq":
        return node.parts.reduce((at, part) => this.build(part, at), from);
      case "alt": {
        const end = this.newState();
        for (const option of node.options) this.states[this.build(option, from)]!.free.push(end);
        return end;
      }
      case "repeat": {
        let at = from;
        for (let i = 0; i < node.min; i++) at = this.build(node.node, at);
        if (node.max === Infinity) {
          const loop = this.newState();
          this.states[at]!.free.push(loop);
          this.states[this.build(node.node, loop)]!.free.push(loop);
          return loop;
        }
        const end = this.newState();
        this.states[at]!.free.push(end);
        for (let i = node.min; i < node.max; i++) {
          at = this.build(node.node, at);
          this.states[at]!.free.push(end);
        }
        return end;
      }
    }
  }

  private closure(from: readonly number[]): number[] {
    const seen = new Set(from);
    const stack = [...from];
    while (stack.length > 0) {
      for (const next of this.states[stack.pop()!]!.free) {
        if (seen.has(next)) continue;
        seen.add(next);
        stack.push(next);
      }
    }
    return [...seen];
  }

  /** Backward breadth-first search from the accepting state: each state's shortest text to it. */
  private shortestCompletions(): (string | undefined)[] {
    const into: { from: number; sample: string }[][] = this.states.map(() => []);
    this.states.forEach((s, from) => {
      for (const edge of s.on)
        if (edge.set.sample !== undefined) into[edge.to]!.push({ from, sample: edge.set.sample });
      for (const to of s.free) into[to]!.push({ from, sample: "" });
    });
    const text: (string | undefined)[] = this.states.map(() => undefined);
    text[this.accept] = "";
    // Free edges cost nothing, characters one: a deque keeps the search in order of length.
    const queue = [this.accept];
    while (queue.length > 0) {
      const at = queue.shift()!;
      for (const { from, sample } of into[at]!) {
        const candidate = sample + text[at]!;
        if (text[from] !== undefined && text[from]!.length <= candidate.length) continue;
        text[from] = candidate;
        if (sample === "") queue.unshift(from);
        else queue.push(from);
      }
    }
    return text;
  }
}

// ---------------------------------------------------------------------------------------------
// Reading a regular expression.

const DIGIT = "0-9";
const WORD = "0-9A-Za-z_";
const SPACE = " \t\n\r\f\v";

class Parser {
  private i = 0;
  constructor(private readonly source: string) {}

  parse(): Node {
    const node = this.alternation();
    if (this.i < this.source.length) throw this.unsupported();
    return node;
  }

  private unsupported(): UnsteerableSchemaError {
    return new UnsteerableSchemaError(`a pattern the steering cannot read: ${this.source}`);
  }

  private alternation(): Node {
    const options = [this.sequence()];
    while (this.source[this.i] === "|") {
      this.i++;
      options.push(this.sequence());
    }
    return options.length === 1 ? options[0]! : { t: "alt", options };
  }

  private sequence(): Node {
    const parts: Node[] = [];
    while (this.i < this.source.length && this.source[this.i] !== "|" && this.source[this.i] !== ")") {
      const c = this.source[this.i]!;
      // Anchors: the whole string is matched anyway.
      if (c === "^" || c === "$") {
        this.i++;
        continue;
      }
      parts.push(this.quantified(this.atom()));
    }
    return { t: "seq", parts };
  }

  private atom(): Node {
    const c = this.source[this.i++]!;
    if (c === "(") {
      if (this.source.startsWith("?:", this.i)) this.i += 2;
      else if (this.source[this.i] === "?") throw this.unsupported();
      const inner = this.alternation();
      if (this.source[this.i++] !== ")") throw this.unsupported();
      return inner;
    }
    if (c === "[") return { t: "char", set: this.characterClass() };
    if (c === ".") return { t: "char", set: allBut("\n\r") };
    if (c === "\\") return { t: "char", set: this.escape() };
    if (c === "*" || c === "+" || c === "?" || c === "{" || c === ")") throw this.unsupported();
    const code = this.source.codePointAt(this.i - 1)!;
    if (code > 0xffff) this.i++;
    return { t: "char", set: ranges([[code, code]]) };
  }

  private quantified(node: Node): Node {
    let result = node;
    for (;;) {
      const c = this.source[this.i];
      let bounds: [number, number] | undefined;
      if (c === "*") bounds = [0, Infinity];
      else if (c === "+") bounds = [1, Infinity];
      else if (c === "?") bounds = [0, 1];
      else if (c === "{") {
        const m = /^\{(\d+)(,(\d*))?\}/.exec(this.source.slice(this.i));
        if (!m) throw this.unsupported();
        const min = Number(m[1]);
        bounds = [min, m[2] === undefined ? min : m[3] === "" ? Infinity : Number(m[3])];
        this.i += m[0].length - 1;
      }
      if (!bounds) return result;
      this.i++;
      if (this.source[this.i] === "?") this.i++; // lazy: the same strings match
      result = { t: "repeat", node: result, min: bounds[0], max: bounds[1] };
    }
  }

  /** After a backslash: a class escape or an escaped character. */
  private escape(): CharSet {
    const c = this.source[this.i++];
    if (c === undefined) throw this.unsupported();
    const named = namedClass(c);
    if (named) return named;
    if (c === "u" && /^[0-9a-fA-F]{4}/.test(this.source.slice(this.i))) {
      const code = Number.parseInt(this.source.slice(this.i, this.i + 4), 16);
      this.i += 4;
      return ranges([[code, code]]);
    }
    if (/[A-Za-z0-9]/.test(c)) throw this.unsupported();
    return ranges([[c.codePointAt(0)!, c.codePointAt(0)!]]);
  }

  /** After "[": the class up to its "]". */
  private characterClass(): CharSet {
    const negated = this.source[this.i] === "^";
    if (negated) this.i++;
    const spans: [number, number][] = [];
    const sets: CharSet[] = [];
    let first = true;
    while (this.source[this.i] !== "]" || first) {
      first = false;
      if (this.i >= this.source.length) throw this.unsupported();
      const low = this.classMember();
      if (typeof low !== "number") {
        sets.push(low);
        continue;
      }
      if (this.source[this.i] === "-" && this.source[this.i + 1] !== "]" && this.i + 1 < this.source.length) {
        this.i++;
        const high = this.classMember();
        if (typeof high !== "number" || high < low) throw this.unsupported();
        spans.push([low, high]);
      } else spans.push([low, low]);
    }
    this.i++;
    const listed = union([ranges(spans), ...sets]);
    return negated ? complement(listed) : listed;
  }

  /** One member of a class: a code point, or a class escape (\d, \w, \s). */
  private classMember(): number | CharSet {
    const c = this.source[this.i++]!;
    if (c !== "\\") {
      const code = this.source.codePointAt(this.i - 1)!;
      if (code > 0xffff) this.i++;
      return code;
    }
    const e = this.source[this.i++];
    if (e === undefined) throw this.unsupported();
    const named = namedClass(e);
    if (named) return named;
    if (e === "u" && /^[0-9a-fA-F]{4}/.test(this.source.slice(this.i))) {
      this.i += 4;
      return Number.parseInt(this.source.slice(this.i - 4, this.i), 16);
    }
    if (/[A-Za-z0-9]/.test(e)) throw this.unsupported();
    return e.codePointAt(0)!;
  }
}

function namedClass(c: string): CharSet | undefined {
  const spans: Record<string, string> = { d: DIGIT, w: WORD, s: SPACE };
  const lower = c.toLowerCase();
  if (!(lower in spans)) return undefined;
  const set = listed(spans[lower]!);
  return c === lower ? set : complement(set);
}

/** A class written as in a regular expression's brackets ("0-9A-Z_"). */
function listed(members: string): CharSet {
  const spans: [number, number][] = [];
  for (let i = 0; i < members.length; i++) {
    const low = members.charCodeAt(i);
    if (members[i + 1] === "-" && i + 2 < members.length) {
      spans.push([low, members.charCodeAt(i + 2)]);
      i += 2;
    } else spans.push([low, low]);
  }
  return ranges(spans);
}

// The characters a completion may write: printable ASCII that JSON text need not escape (the
// grammar leaves quotes, backslashes and control characters out of a pattern's classes).
const WRITABLE = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)).filter(
  (c) => c !== '"' && c !== "\\",
);
// Tried first: the plainest characters.
const PREFERRED = ["a", "0", "A", ...WRITABLE];

function withSample(has: (c: string) => boolean): CharSet {
  return { has, sample: PREFERRED.find(has) };
}

function ranges(spans: [number, number][]): CharSet {
  return withSample((c) => {
    const code = c.codePointAt(0)!;
    return spans.some(([low, high]) => code >= low && code <= high);
  });
}

function union(sets: CharSet[]): CharSet {
  return withSample((c) => sets.some((s) => s.has(c)));
}

function complement(set: CharSet): CharSet {
  return withSample((c) => !set.has(c));
}

function allBut(excluded: string): CharSet {
  return withSample((c) => !excluded.includes(c));
}

// ---------------------------------------------------------------------------------------------
// Formats as patterns. xgrammar's own format grammars allow values the formats do not (minute
// 60 in a date-time, second 60 at any hour in a time, 31 February, an IPv4 part with a leading
// zero, a hostname label past 63 characters), so the grammar gets these patterns instead: each
// allows only valid values (leap days and leap seconds left out, a hostname of at most three
// labels), and the steering follows the same pattern.

const DATE =
  "[0-9]{4}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))";
const TIME = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])";
const IPV4_PART = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
const HOST_LABEL = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
const HEX = "[0-9a-fA-F]";
const CLOCK = "T([0-9]+S|[0-9]+M([0-9]+S)?|[0-9]+H([0-9]+M([0-9]+S)?)?)";

const FORMAT_PATTERNS: Record<string, string> = {
  date: `^${DATE}$`,
  time: `^${TIME}$`,
  "date-time": `^${DATE}T${TIME}$`,
  uuid: `^${HEX}{8}-${HEX}{4}-${HEX}{4}-${HEX}{4}-${HEX}{12}$`,
  ipv4: `^(${IPV4_PART}\\.){3}${IPV4_PART}$`,
  hostname: `^${HOST_LABEL}(\\.${HOST_LABEL}){0,2}$`,
  duration: `^P(([0-9]+D|[0-9]+M([0-9]+D)?|[0-9]+Y([0-9]+M([0-9]+D)?)?)(${CLOCK})?|${CLOCK}|[0-9]+W)$`,
};

/** The pattern constrained decoding writes a `format` by, or undefined where xgrammar's own grammar stands. */
export function formatPattern(format: string): string | undefined {
  return Object.hasOwn(FORMAT_PATTERNS, format) ? FORMAT_PATTERNS[format] : undefined;
}
