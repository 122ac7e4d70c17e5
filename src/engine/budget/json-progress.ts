// Where a JSON value generated so far stands in its schema, and the shortest text that completes
// it validly: close the open string, finish the number or literal, add the required properties
// still missing (each with the smallest value its schema allows), the items `minItems` still
// asks for, and close every open array and object. It follows the text character by character
// (a stack of open values), in the layout xgrammar's schema grammars use: no whitespace but
// ", " and ": " between members, properties in the schema's order.
//
// The completion is a plan, not a guarantee: the grammar constraint still checks every token
// of it against xgrammar's matcher, so a schema this reading gets wrong costs the steering,
// never validity.

import { formatPattern, PatternAutomaton } from "./pattern";

type Schema = Record<string, unknown>;

/** A schema the shortest-completion reading does not cover (so the budget cannot be steered). */
export class UnsteerableSchemaError extends Error {
  override name = "UnsteerableSchemaError";
}

/** A schema that no finite JSON value meets: it needs itself (through a $ref) in every branch. */
export class InfiniteSchemaError extends UnsteerableSchemaError {
  override name = "InfiniteSchemaError";
}

/**
 * The longest shortest value the reading writes out, in characters: far past what any answer
 * holds. A client's schema asking for more (minItems or minLength of a billion) would otherwise
 * have it written out whole, until the server ran out of memory.
 */
export const MAX_SHORTEST_VALUE = 1 << 20;

/** A schema whose shortest value is longer than MAX_SHORTEST_VALUE: no answer could hold it. */
export class OversizedSchemaError extends Error {
  override name = "OversizedSchemaError";
  constructor() {
    super(
      `its shortest valid value is longer than ${MAX_SHORTEST_VALUE} characters (a minItems, minLength or minProperties too large)`,
    );
  }
}

/**
 * `parts` between `open` and `close`, a comma apart; an OversizedSchemaError past
 * MAX_SHORTEST_VALUE, as soon as the parts taken so far pass it (they may be made one by one).
 */
function joinedWithin(open: string, parts: Iterable<string>, close: string): string {
  const taken: string[] = [];
  let length = open.length + close.length;
  for (const part of parts) {
    if ((length += part.length + 2) > MAX_SHORTEST_VALUE) throw new OversizedSchemaError();
    taken.push(part);
  }
  return `${open}${taken.join(", ")}${close}`;
}

/** A JSON value laid out as xgrammar's schema grammars write one: ", " and ": " separators. */
export function layout(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(layout).join(", ")}]`;
  if (value && typeof value === "object")
    return `{${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)}: ${layout(v)}`)
      .join(", ")}}`;
  return JSON.stringify(value);
}

/**
 * A const or enum value as xgrammar's grammar writes it, which is not `layout`: no spaces, "/"
 * and DEL escaped in strings, and a number as its JSON reader kept it (a whole number within
 * 64 bits as written, any other as C's "%.17g": 0.1 is 0.10000000000000001).
 */
export function constantText(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(constantText).join(",")}]`;
  if (value && typeof value === "object")
    return `{${Object.entries(value)
      .map(([k, v]) => `${constantString(k)}:${constantText(v)}`)
      .join(",")}}`;
  if (typeof value === "string") return constantString(value);
  if (typeof value === "number") return constantNumber(value);
  return JSON.stringify(value);
}

const constantString = (s: string) => JSON.stringify(s).replaceAll("/", "\\/").replaceAll("\x7f", "\\u007f");

const INT64 = { min: -(2n ** 63n), max: 2n ** 63n - 1n };

function constantNumber(n: number): string {
  const text = JSON.stringify(n);
  if (/^-?[0-9]+$/.test(text) && BigInt(text) >= INT64.min && BigInt(text) <= INT64.max) return text;
  // "%.17g": 17 significant digits, trailing zeros dropped, an exponent (two digits at least) below 1e-4 or from 1e17.
  const exponent = Number(n.toExponential(16).split("e")[1]);
  const trim = (digits: string) => (digits.includes(".") ? digits.replace(/\.?0+$/, "") : digits);
  if (exponent < -4 || exponent >= 17) {
    const mantissa = trim(n.toExponential(16).split("e")[0]!);
    return `${mantissa}e${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  return trim(n.toFixed(16 - exponent));
}

const ANY: Schema = {};
type Kind = "object" | "array" | "string" | "number" | "integer" | "boolean" | "null";
const KINDS: Kind[] = ["object", "array", "string", "number", "integer", "boolean", "null"];

/**
 * A schema's structure as the completion needs it: references resolved, unions expanded,
 * the shortest valid value of each part (memoized).
 */
export class SchemaShapes {
  private readonly shortest = new Map<Schema, string>();
  private readonly visiting = new Set<Schema>();
  private readonly resolved = new Map<object, Schema>();
  private readonly automata = new Map<Schema, PatternAutomaton | undefined>();

  constructor(
    private readonly root: Schema,
    readonly strict: boolean,
  ) {}

  /** Follows `$ref` (local pointers) and a one-schema `allOf`, merged with the sibling keywords. */
  resolve(node: unknown): Schema {
    if (node === true || node === undefined) return ANY;
    if (node === false || typeof node !== "object" || node === null)
      throw new UnsteerableSchemaError("a false schema has no valid value");
    const known = this.resolved.get(node);
    if (known) return known;
    const s = this.follow(node as Schema);
    this.resolved.set(node, s);
    return s;
  }

  private follow(s: Schema): Schema {
    const followed = new Set<string>();
    for (let depth = 0; depth < 32; depth++) {
      if (typeof s.$ref === "string") {
        const { $ref, ...rest } = s;
        if (followed.has($ref)) throw new InfiniteSchemaError(`$ref ${$ref} leads back to itself`);
        followed.add($ref);
        s = { ...rest, ...this.pointer($ref) };
      } else if (Array.isArray(s.allOf) && s.allOf.length === 1) {
        const { allOf, ...rest } = s;
        s = { ...rest, ...(allOf[0] as Schema) };
      } else return s;
    }
    throw new UnsteerableSchemaError("$ref chain too deep");
  }

  private pointer(ref: string): Schema {
    if (!ref.startsWith("#")) throw new UnsteerableSchemaError(`$ref ${ref} is not local`);
    let at: unknown = this.root;
    for (const part of ref.slice(1).split("/").filter(Boolean)) {
      at = (at as Record<string, unknown> | undefined)?.[
        decodeURIComponent(part).replaceAll("~1", "/").replaceAll("~0", "~")
      ];
    }
    if (!at || typeof at !== "object") throw new UnsteerableSchemaError(`$ref ${ref} does not resolve`);
    return at as Schema;
  }

  /** The alternatives a value may take: one schema per union branch and per listed type. */
  branches(node: unknown): Schema[] {
    const s = this.resolve(node);
    const union = (s.anyOf ?? s.oneOf) as unknown[] | undefined;
    if (Array.isArray(union)) {
      const { anyOf: _a, oneOf: _o, ...rest } = s;
      return union.flatMap((b) => this.branches({ ...rest, ...this.resolve(b) }));
    }
    if (Array.isArray(s.type)) return (s.type as string[]).map((type) => ({ ...s, type }));
    return [s];
  }

  /** The literal texts a branch allows, when it is an enum or a const. */
  literals(s: Schema): string[] | undefined {
    if ("const" in s) return [constantText(s.const)];
    if (Array.isArray(s.enum)) return s.enum.map(constantText);
    return undefined;
  }

  kind(s: Schema): Kind | "any" {
    if (typeof s.type === "string" && KINDS.includes(s.type as Kind)) return s.type as Kind;
    if (s.properties || s.required || s.additionalProperties !== undefined) return "object";
    if (s.items !== undefined || s.prefixItems || s.minItems !== undefined) return "array";
    return "any";
  }

  /** The shortest text of a valid value. */
  minText(node: unknown): string {
    const s = this.resolve(node);
    const known = this.shortest.get(s);
    if (known !== undefined) return known;
    // A schema that needs itself (a recursive $ref with required recursion) has no finite value
    // along that branch: another branch, if any, gives the answer.
    if (this.visiting.has(s)) throw new InfiniteSchemaError("a recursive schema with no finite value");
    this.visiting.add(s);
    try {
      let best: string | undefined;
      let infinite = true; // whether every branch failed for needing itself
      for (const branch of this.branches(s)) {
        let text: string;
        try {
          text = this.branchMinText(branch);
        } catch (error) {
          if (!(error instanceof UnsteerableSchemaError)) throw error;
          infinite &&= error instanceof InfiniteSchemaError;
          continue;
        }
        if (best === undefined || text.length < best.length) best = text;
      }
      if (best === undefined && infinite)
        throw new InfiniteSchemaError("every branch requires a value of its own schema inside it");
      if (best === undefined)
        throw new UnsteerableSchemaError("no branch of the schema has a value the steering can write");
      this.shortest.set(s, best);
      return best;
    } finally {
      this.visiting.delete(s);
    }
  }

  private branchMinText(s: Schema): string {
    const literals = this.literals(s);
    if (literals) return shortestOf(literals);
    switch (this.kind(s)) {
      case "object":
        return joinedWithin("{", this.neededMembers(s, []), "}");
      case "array":
        return joinedWithin("[", this.minItemTexts(s), "]");
      case "string":
        return `"${this.stringRest(s, 0, undefined)}"`;
      case "integer":
      case "number":
        return numberCompletion(s, "");
      case "boolean":
        return "true";
      case "null":
        return "null";
      case "any":
        return "0";
    }
  }

  /**
   * The most one opening character ({ [ " , :) can add to a completion, in bytes: the largest
   * smallest value of any part of the schema below the root (the root opens only once, at
   * the start), with the longest key and separators.
   */
  largestOpening(root: unknown): number {
    let value = 0;
    let key = 2;
    // What typing inside a pattern's string can add to its completion.
    let growth = 0;
    const seen = new Set<Schema>();
    const visit = (node: unknown, opened: boolean): void => {
      let s: Schema;
      try {
        s = this.resolve(node);
        if (opened) {
          if (seen.has(s)) return;
          seen.add(s);
          value = Math.max(value, Buffer.byteLength(this.minText(s)));
        }
      } catch (error) {
        if (error instanceof UnsteerableSchemaError) return;
        throw error;
      }
      for (const b of this.branches(s)) {
        if (this.kind(b) === "string") growth = Math.max(growth, this.typingGrowth(b));
        for (const [k, v] of Object.entries(properties(b))) {
          key = Math.max(key, Buffer.byteLength(JSON.stringify(k)));
          visit(v, true);
        }
        for (const part of [
          b.additionalProperties,
          b.items,
          b.additionalItems,
          ...((b.prefixItems as unknown[]) ?? []),
          ...(Array.isArray(b.items) ? b.items : []),
        ]) {
          if (part && typeof part === "object" && !Array.isArray(part)) visit(part, true);
        }
      }
    };
    // A root with alternatives opens again where the model picks a larger one than the smallest.
    let alternatives = 1;
    try {
      alternatives = this.branches(root).length;
    } catch (error) {
      if (!(error instanceof UnsteerableSchemaError)) throw error;
    }
    visit(root, alternatives > 1);
    return value + key + 6 + growth;
  }

  /** The most typing inside a string of `s` can add to its completion (0 for free text, or where the steering cannot follow it). */
  private typingGrowth(s: Schema): number {
    try {
      return this.automaton(s)?.longestCompletion ?? 0;
    } catch (error) {
      if (error instanceof UnsteerableSchemaError) return 0;
      throw error;
    }
  }

  /** The automaton of a string's pattern or format (undefined for free text), made once per schema. */
  automaton(s: Schema): PatternAutomaton | undefined {
    if (this.automata.has(s)) return this.automata.get(s);
    let pattern: string | undefined;
    if (typeof s.pattern === "string") pattern = s.pattern;
    else if (typeof s.format === "string") {
      pattern = formatPattern(s.format);
      if (pattern === undefined) throw new UnsteerableSchemaError(`a string of format ${s.format}`);
    }
    const automaton = pattern === undefined ? undefined : new PatternAutomaton(pattern);
    this.automata.set(s, automaton);
    return automaton;
  }

  /**
   * The text that completes a string of `s` (before its closing quote), `length` characters
   * in: for a pattern, the shortest match from the automaton's states `at` (its start when undefined).
   */
  stringRest(s: Schema, length: number, at: readonly number[] | undefined): string {
    const automaton = this.automaton(s);
    if (!automaton) {
      const min = typeof s.minLength === "number" ? s.minLength : 0;
      if (min - length > MAX_SHORTEST_VALUE) throw new OversizedSchemaError();
      return "a".repeat(Math.max(0, min - length));
    }
    const rest = automaton.completion(at ?? automaton.start);
    if (rest === undefined) throw new UnsteerableSchemaError("the string left its pattern");
    return rest;
  }

  /**
   * The members an object that holds `seen` still needs, as `"key": value`: each required
   * property not in `seen`, in the schema's order, and as many more as `minProperties` asks
   * for: the cheapest properties the schema names that may still come (in strict mode, those
   * after the last one written, as the grammar writes them in the schema's order), then
   * properties it does not name, under the shortest names not yet used.
   */
  neededMembers(s: Schema, seen: readonly string[]): string[] {
    const names = Object.keys(properties(s));
    const required = this.requiredKeys(s).filter((k) => !seen.includes(k));
    // A name written twice counts once, as JSON readers keep one of them.
    let extra = (typeof s.minProperties === "number" ? s.minProperties : 0) - new Set(seen).size - required.length;
    if (extra <= 0) return required.map((k) => this.member(s, k));
    const last = Math.max(-1, ...seen.map((k) => names.indexOf(k)));
    const optional = names
      .filter((k, i) => !seen.includes(k) && !required.includes(k) && (!this.strict || i > last))
      .map((k) => ({ k, text: this.member(s, k) }))
      .sort((a, b) => a.text.length - b.text.length)
      .slice(0, extra)
      .map(({ k }) => k);
    const named = names.filter((k) => required.includes(k) || optional.includes(k)).map((k) => this.member(s, k));
    extra -= optional.length;
    if (extra <= 0) return named;
    // Properties the schema does not name: where their names are free, and can be told apart
    // from those written (the same name twice would count once).
    const unnamed = this.additional(s);
    if (unnamed === undefined || s.patternProperties !== undefined || s.propertyNames !== undefined)
      throw new UnsteerableSchemaError("minProperties asks for more properties than the steering can name");
    const value = this.minText(unnamed);
    // Each at least `"": value, ` long: a minProperties of a billion is refused before its loop.
    if (extra * (value.length + 6) > MAX_SHORTEST_VALUE) throw new OversizedSchemaError();
    // The names freshName("", taken) would pick one after another, in one pass.
    const taken = new Set([...names, ...seen]);
    const added: string[] = [];
    for (let n = 0; added.length < extra; n++) {
      const name = n === 0 ? "" : (n - 1).toString(36);
      if (!taken.has(name)) added.push(`${JSON.stringify(name)}: ${value}`);
    }
    return [...named, ...added];
  }

  /** The shortest text that makes a name starting with `start` none of `taken` ("" when `start` is free already). */
  freshName(start: string, taken: readonly string[]): string {
    for (let n = 0; ; n++) {
      const rest = n === 0 ? "" : (n - 1).toString(36);
      if (!taken.includes(start + rest)) return rest;
    }
  }

  member(s: Schema, key: string): string {
    return `${JSON.stringify(key)}: ${this.minText(this.propertySchema(s, key))}`;
  }

  requiredKeys(s: Schema): string[] {
    const required = Array.isArray(s.required) ? (s.required as string[]) : [];
    const order = Object.keys(properties(s));
    return [...order.filter((k) => required.includes(k)), ...required.filter((k) => !order.includes(k))];
  }

  propertySchema(s: Schema, key: string): unknown {
    const props = properties(s);
    if (key in props) return props[key];
    return this.additional(s) ?? ANY;
  }

  /** The schema of properties the object does not name, or undefined when there may be none. */
  additional(s: Schema): unknown {
    const extra = s.additionalProperties;
    if (extra === false) return undefined;
    if (extra !== undefined && extra !== true) return extra;
    return this.strict && Object.keys(properties(s)).length > 0 ? undefined : ANY;
  }

  /** The shortest text of each item an array needs (minItems), made one at a time. */
  private *minItemTexts(s: Schema): Generator<string> {
    for (let i = 0; i < minItems(s); i++) yield this.minText(this.itemSchema(s, i));
  }

  itemSchema(s: Schema, i: number): unknown {
    const prefix = (s.prefixItems ?? (Array.isArray(s.items) ? s.items : undefined)) as unknown[] | undefined;
    if (prefix && i < prefix.length) return prefix[i];
    if (Array.isArray(s.items)) return s.additionalItems ?? ANY;
    return s.items ?? ANY;
  }
}

const properties = (s: Schema) => (s.properties ?? {}) as Record<string, unknown>;
const minItems = (s: Schema) => (typeof s.minItems === "number" ? s.minItems : 0);
const shortestOf = (texts: string[]) => texts.reduce((a, b) => (b.length < a.length ? b : a));

/** The digits that finish `typed` (a number's start) as the shortest number in the schema's range. */
function numberCompletion(s: Schema, typed: string): string {
  let head = typed;
  if (head === "" || head === "-" || /[.eE+-]$/.test(head)) head += head === "-" ? "1" : "0";
  const inRange = (text: string) => {
    const v = Number(text);
    // Digits alone are a whole number however many: past 309 of them Number reads Infinity.
    if (s.type === "integer" && !Number.isInteger(v) && !/^-?[0-9]+$/.test(text)) return false;
    if (typeof s.minimum === "number" && v < s.minimum) return false;
    if (typeof s.maximum === "number" && v > s.maximum) return false;
    if (typeof s.exclusiveMinimum === "number" && v <= s.exclusiveMinimum) return false;
    if (typeof s.exclusiveMaximum === "number" && v >= s.exclusiveMaximum) return false;
    return true;
  };
  if (typed === "") {
    // A fresh number: 0 if allowed, else the bound closest to it.
    for (const v of [0, s.minimum, s.maximum, (s.exclusiveMinimum as number) + 1, (s.exclusiveMaximum as number) - 1]) {
      if (typeof v === "number" && Number.isFinite(v) && inRange(String(v))) return String(v);
    }
    throw new UnsteerableSchemaError("a number range with no whole number");
  }
  // The fewest digits (then the smallest) that bring what was typed into the range.
  let heads = [head];
  for (let extra = 0; extra <= 3; extra++) {
    const fits = heads.filter(inRange);
    if (fits.length > 0) return fits[0]!.slice(typed.length);
    heads = heads.flatMap((h) => [..."0123456789"].map((d) => h + d));
  }
  throw new UnsteerableSchemaError("a number that cannot be finished in its range");
}

// ---------------------------------------------------------------------------------------------
// The open values.

type Frame =
  | { t: "value"; schema: unknown }
  | { t: "object"; s: Schema; seen: string[]; state: "open" | "key" | "colon" | "value" | "after"; key: string }
  | { t: "array"; s: Schema; count: number; state: "open" | "item" | "after" }
  | {
      t: "string";
      s: Schema;
      key: boolean;
      /** A key's text as typed, escapes as written (JSON's spelling of the name). */
      text: string;
      length: number;
      escape: string | undefined;
      /** For a pattern's string: the automaton's states so far, and a high surrogate awaiting its pair. */
      at: readonly number[] | undefined;
      high: string;
    }
  | { t: "number"; s: Schema; text: string }
  | { t: "literal"; texts: string[]; text: string };

// Readings of one text followed at once, at most: past that, later unions' other branches are dropped.
const MAX_READINGS = 16;

/**
 * The progress of one JSON value through `shapes`' schema. Where a union has several branches
 * of the kind the text opens (objects told apart by a `const` discriminator, say), each is
 * followed as its own reading; those the text leaves are dropped, and the completion is the
 * shortest of those left.
 */
export class JsonProgress {
  private readings: Reading[];

  constructor(shapes: SchemaShapes, schema: unknown) {
    this.readings = [new Reading(shapes, schema)];
  }

  /** The value is complete (what follows is not part of it). */
  get done(): boolean {
    return this.readings.some((r) => r.done);
  }

  /** The text did not follow the schema as read here: the completion is unknown. */
  get lost(): boolean {
    return this.readings.every((r) => r.lost);
  }

  clone(): JsonProgress {
    const copy = Object.create(JsonProgress.prototype) as JsonProgress;
    copy.readings = this.readings.map((r) => r.clone());
    return copy;
  }

  /** Whether the innermost open value is a free-text string: text without a quote or a backslash leaves the completion as it is. */
  inFreeString(): boolean {
    return this.readings.every((r) => r.inFreeString());
  }

  /** Whether the innermost open value is a string under a pattern (each character typed may change its completion). */
  inPatternString(): boolean {
    return this.readings.some((r) => r.inPatternString());
  }

  /** Feeds text; returns how many characters of it belonged to the value (all of them unless it ended). */
  feed(text: string): number {
    for (let i = 0; i < text.length; i++) {
      if (this.done || this.lost) return i;
      const next: Reading[] = [];
      for (const reading of this.readings) next.push(reading, ...reading.char(text[i]!));
      const followed = next.filter((r) => !r.lost);
      this.readings = followed.length > 0 ? followed.slice(0, MAX_READINGS) : next.slice(0, 1);
    }
    return text.length;
  }

  /** The shortest text that makes the value complete ("" once it is); throws if unknown. */
  completion(): string {
    let best: string | undefined;
    let failure: unknown;
    for (const reading of this.readings) {
      try {
        const text = reading.completion();
        if (best === undefined || text.length < best.length) best = text;
      } catch (error) {
        if (!(error instanceof UnsteerableSchemaError)) throw error;
        failure ??= error;
      }
    }
    if (best === undefined) throw failure;
    return best;
  }
}

/** One reading of the text: the open values, each under the schema (one union branch) it was read by. */
class Reading {
  private stack: Frame[];
  /** A ", " or ": " whose space is still to come. */
  private space = false;
  /** The value is complete (what follows is not part of it). */
  done = false;
  /** The text did not follow the schema as read here: the completion is unknown. */
  lost = false;

  /** Readings this one split into at the last character (other branches of a union opened there). */
  private forks: Reading[] = [];

  constructor(
    private readonly shapes: SchemaShapes,
    schema: unknown,
  ) {
    this.stack = [{ t: "value", schema }];
  }

  clone(): Reading {
    const copy = Object.create(Reading.prototype) as Reading;
    Object.assign(copy, this);
    copy.stack = this.stack.map((f) => ("seen" in f ? { ...f, seen: [...f.seen] } : { ...f }));
    return copy;
  }

  inFreeString(): boolean {
    const top = this.stack.at(-1);
    if (top?.t !== "string" || top.escape !== undefined || top.at) return false;
    if (!top.key) return true;
    // A key is free text only where the object names no properties (any key will do).
    const object = this.stack.at(-2);
    return object?.t === "object" && Object.keys(properties(object.s)).length === 0;
  }

  inPatternString(): boolean {
    const top = this.stack.at(-1);
    return top?.t === "string" && top.at !== undefined;
  }

  /** Follows one character; returns the readings it split into beside this one. */
  char(c: string): Reading[] {
    this.forks = [];
    try {
      this.follow(c);
    } catch (error) {
      if (!(error instanceof UnsteerableSchemaError)) throw error;
      this.lost = true;
    }
    return this.forks;
  }

  private follow(c: string): void {
    const top = this.stack.at(-1)!;
    if (top.t === "string") return this.stringChar(top, c);
    if (top.t === "number") {
      if (/[0-9.eE+-]/.test(c)) {
        top.text += c;
        return;
      }
      this.close();
      return this.follow(c);
    }
    if (top.t === "literal") {
      const text = top.text + c;
      const next = top.texts.filter((t) => t.startsWith(text));
      if (next.length > 0) {
        top.text = text;
        top.texts = next;
        return;
      }
      if (!top.texts.includes(top.text)) return void (this.lost = true);
      this.close();
      return this.follow(c);
    }
    if (c === " " || c === "\n" || c === "\t" || c === "\r") {
      this.space = false;
      return;
    }
    this.space = false;
    if (top.t === "value") return this.startValue(top.schema, c);
    if (top.t === "object") {
      if (c === "}" && top.state !== "key" && top.state !== "colon") return this.close();
      if (c === "," && top.state === "after") {
        top.state = "key";
        this.space = true;
        return;
      }
      if (c === ":" && top.state === "colon") {
        top.state = "value";
        this.stack.push({ t: "value", schema: this.shapes.propertySchema(top.s, top.key) });
        this.space = true;
        return;
      }
      if (c === '"' && (top.state === "open" || top.state === "key")) {
        this.stack.push({
          t: "string",
          s: ANY,
          key: true,
          text: "",
          length: 0,
          escape: undefined,
          at: undefined,
          high: "",
        });
        return;
      }
      return void (this.lost = true);
    }
    if (top.t === "array") {
      if (c === "]" && top.state !== "item") return this.close();
      if (c === "," && top.state === "after") {
        top.state = "item";
        this.space = true;
        return;
      }
      if (top.state === "after") return void (this.lost = true);
      this.stack.push({ t: "value", schema: this.shapes.itemSchema(top.s, top.count) });
      return this.follow(c);
    }
  }

  private startValue(schema: unknown, c: string): void {
    const branches = this.shapes.branches(schema);
    // A literal (enum, const, true/false/null) is followed as text among its allowed spellings.
    const texts = branches
      .flatMap((b) => this.shapes.literals(b) ?? literalTexts(this.shapes.kind(b), c))
      .filter((t) => t.startsWith(c));
    const kind =
      c === "{" ? "object" : c === "[" ? "array" : c === '"' ? "string" : /[-0-9]/.test(c) ? "number" : undefined;
    const opened = kind
      ? branches.filter((b) => !this.shapes.literals(b) && matchesKind(this.shapes.kind(b), kind))
      : [];
    this.stack.pop();
    if (kind && opened.length > 0) {
      // Each other branch is read on a copy of this reading, from where the value opens.
      for (const other of opened.slice(1)) {
        const fork = this.clone();
        fork.forks = [];
        try {
          fork.open(other, kind, c);
          this.forks.push(fork);
        } catch (error) {
          if (!(error instanceof UnsteerableSchemaError)) throw error;
        }
      }
      return this.open(opened[0]!, kind, c);
    }
    if (texts.length > 0) {
      this.stack.push({ t: "literal", texts, text: c });
      return;
    }
    this.lost = true;
  }

  /** Opens a value of `kind` under `s`, `c` its first character. */
  private open(s: Schema, kind: "object" | "array" | "string" | "number", c: string): void {
    if (kind === "object") this.stack.push({ t: "object", s, seen: [], state: "open", key: "" });
    else if (kind === "array") this.stack.push({ t: "array", s, count: 0, state: "open" });
    else if (kind === "string")
      this.stack.push({
        t: "string",
        s,
        key: false,
        text: "",
        length: 0,
        escape: undefined,
        at: this.shapes.automaton(s)?.start,
        high: "",
      });
    else this.stack.push({ t: "number", s, text: c });
  }

  private stringChar(top: Extract<Frame, { t: "string" }>, c: string): void {
    if (top.key && (top.escape !== undefined || c !== '"')) top.text += c;
    if (top.escape !== undefined) {
      top.escape += c;
      if (top.escape[0] === "u" && top.escape.length < 5) return;
      top.escape = undefined;
      top.length++;
      return;
    }
    if (c === "\\") {
      top.escape = "";
      return;
    }
    if (c === '"') return this.close();
    if (top.at) return this.patternChar(top, c);
    // A length counts code points, as JSON Schema (and the grammar) do: a surrogate pair is one.
    if (!isLowSurrogate(c)) top.length++;
  }

  /** A character of a pattern's string: the automaton follows whole code points. */
  private patternChar(top: Extract<Frame, { t: "string" }>, c: string): void {
    if (c >= "\ud800" && c <= "\udbff") {
      top.high = c;
      return;
    }
    const automaton = this.shapes.automaton(top.s)!;
    top.at = automaton.step(top.at!, top.high + c);
    top.high = "";
    top.length++;
    if (top.at.length === 0) this.lost = true;
  }

  /** The innermost value is complete: hand it to its container. */
  private close(): void {
    const closed = this.stack.pop()!;
    const parent = this.stack.at(-1);
    if (!parent) {
      this.done = true;
      return;
    }
    if (parent.t === "object") {
      if (closed.t === "string" && closed.key) {
        parent.key = keyName(closed.text);
        parent.state = "colon";
      } else {
        parent.seen.push(parent.key);
        parent.state = "after";
      }
    } else if (parent.t === "array") {
      parent.count++;
      parent.state = "after";
    }
  }

  /** The shortest text that makes the value complete ("" once it is); throws if unknown. */
  completion(): string {
    if (this.lost) throw new UnsteerableSchemaError("the text left the schema as read here");
    if (this.done) return "";
    let out = this.space ? " " : "";
    for (let i = this.stack.length - 1; i >= 0; i--) out += this.rest(this.stack[i]!, this.stack[i + 1]);
    return out;
  }

  /** What frame `f` still needs after `inner`, the value open inside it if any (whose completion comes first). */
  private rest(f: Frame, inner: Frame | undefined): string {
    const shapes = this.shapes;
    switch (f.t) {
      case "value":
        return shapes.minText(f.schema);
      case "literal":
        return shortestOf(f.texts).slice(f.text.length);
      case "number":
        return numberCompletion(f.s, f.text);
      case "string":
        if (f.key) return ""; // the object completes the key (see below)
        return `${escapeRest(f)}${this.shapes.stringRest(f.s, f.length + (f.escape === undefined ? 0 : 1), f.at)}"`;
      case "array": {
        const count = f.count + (inner ? 1 : 0);
        const items: string[] = [];
        for (let i = count; i < minItems(f.s); i++) items.push(shapes.minText(shapes.itemSchema(f.s, i)));
        if (f.state === "item" && !inner)
          return `${[shapes.minText(shapes.itemSchema(f.s, count)), ...items.slice(1)].join(", ")}]`;
        const lead = count === 0 ? "" : ", ";
        return items.length > 0 ? `${lead}${items.join(", ")}]` : "]";
      }
      case "object": {
        if (inner?.t === "string" && inner.key) return this.cheapestMember(f, f.seen, inner.text, escapeRest(inner));
        const seen = inner ? [...f.seen, f.key] : f.seen;
        if (f.state === "colon")
          return `: ${shapes.minText(shapes.propertySchema(f.s, f.key))}${this.membersAfter(f.s, [...seen, f.key], true)}`;
        if (f.state === "key" && !inner) return `"${this.cheapestMember(f, seen, "")}`;
        return this.membersAfter(f.s, seen, seen.length > 0);
      }
    }
  }

  /** The required members not in `seen`, then "}" (after a ", " when members came before). */
  private membersAfter(s: Schema, seen: string[], lead: boolean): string {
    const members = this.shapes.neededMembers(s, seen);
    if (members.length === 0) return "}";
    return `${lead ? ", " : ""}${members.join(", ")}}`;
  }

  /**
   * Inside a key (after its opening quote, `typed` written since, escapes as written): the
   * cheapest property it can name, the rest, and "}". `escapeRest` finishes an escape `typed`
   * ends inside, for a name the object does not define.
   */
  private cheapestMember(f: Extract<Frame, { t: "object" }>, seen: string[], typed: string, escapeRest = ""): string {
    const shapes = this.shapes;
    const names = Object.keys(properties(f.s));
    const last = Math.max(-1, ...seen.map((k) => names.indexOf(k)));
    // In strict mode the grammar writes properties in the schema's order: none may skip a
    // required one.
    const required = shapes.requiredKeys(f.s);
    const firstMissing = names.findIndex((k, i) => i > last && required.includes(k) && !seen.includes(k));
    const next = names.filter(
      (k, i) =>
        !seen.includes(k) &&
        (!shapes.strict || (i > last && (firstMissing < 0 || i <= firstMissing))) &&
        JSON.stringify(k).startsWith(`"${typed}`),
    );
    const candidates: string[] = [];
    // A member the object cannot be completed after (minProperties asking for more than may follow it) is no candidate.
    const consider = (candidate: () => string) => {
      try {
        candidates.push(candidate());
      } catch (error) {
        if (!(error instanceof UnsteerableSchemaError)) throw error;
      }
    };
    for (const k of next)
      consider(
        () =>
          `${JSON.stringify(k).slice(1 + typed.length)}: ${shapes.minText(shapes.propertySchema(f.s, k))}${this.membersAfter(f.s, [...seen, k], true)}`,
      );
    const unnamed = shapes.additional(f.s);
    if (unnamed !== undefined)
      consider(() => {
        // A name not written yet: the same name twice counts once (minProperties).
        const rest = shapes.freshName(keyName(typed + escapeRest), [...Object.keys(properties(f.s)), ...seen]);
        const name = `${escapeRest}${JSON.stringify(rest).slice(1, -1)}`;
        return `${name}": ${shapes.minText(unnamed)}${this.membersAfter(f.s, [...seen, keyName(typed + name)], true)}`;
      });
    if (candidates.length === 0) throw new UnsteerableSchemaError("no property may come next");
    return shortestOf(candidates);
  }
}

/** The property name a key's text (as typed, without its quotes) spells. */
function keyName(typed: string): string {
  try {
    return JSON.parse(`"${typed}"`) as string;
  } catch {
    throw new UnsteerableSchemaError("a key JSON does not read");
  }
}

/** What finishes the escape a string's text ends inside ("" when none is open). */
function escapeRest(f: Extract<Frame, { t: "string" }>): string {
  if (f.escape === undefined) return "";
  if (f.escape === "") return "n";
  return f.escape.startsWith("u") ? "0".repeat(5 - f.escape.length) : "";
}

const isLowSurrogate = (c: string) => c >= "\udc00" && c <= "\udfff";

function matchesKind(kind: Kind | "any", opened: "object" | "array" | "string" | "number"): boolean {
  return kind === "any" || kind === opened || (opened === "number" && kind === "integer");
}

/** true/false/null as literal texts for the kinds that write them. */
function literalTexts(kind: Kind | "any", c: string): string[] {
  const texts =
    kind === "boolean"
      ? ["true", "false"]
      : kind === "null"
        ? ["null"]
        : kind === "any"
          ? ["true", "false", "null"]
          : [];
  return texts.filter((t) => t[0] === c);
}
