// Where a call's arguments as Qwen's XML parameters stand, and the shortest text that completes
// them validly, in the layout xmlParametersEbnf (engine/grammar/ebnf.ts) holds them to:
// `<parameter=p>\nvalue\n</parameter>\n` for each, in the schema's order (optional ones may be
// left out, required ones not), then the call's end (`</function>\n</tool_call>`). A value is
// read by its schema: a string is its bare text (any text up to `</parameter>`, or, under a
// length, pattern or format, one line of text), a const or enum value is bare too where it is a
// string, and anything else is JSON, followed by a JsonProgress. The reader takes the call's end
// too: only there does a call end (after a parameter, `<` opens another one or the end).
import { constantText, JsonProgress, SchemaShapes, UnsteerableSchemaError } from "./json-progress";

type Schema = Record<string, unknown>;

const CLOSING = "\n</parameter>\n";

type Value =
  | {
      t: "text";
      s: Schema;
      /** Any text up to the closing, newlines and "<" included (a string with no length, pattern or format). */
      free: boolean;
      /** The value's last characters (as many as the closing has but its last): where the closing may have begun. */
      tail: string;
      /** Code points so far (a restricted string's length). */
      length: number;
      /** For a pattern's string: the automaton's states so far, and a high surrogate awaiting its pair. */
      at: readonly number[] | undefined;
      high: string;
    }
  | { t: "literal"; texts: string[]; typed: string }
  | { t: "json"; json: JsonProgress };

type State =
  | { t: "tag"; typed: string }
  | { t: "value"; name: string; value: Value }
  | { t: "closing"; typed: string }
  | { t: "done" };

/** The parameters of a call as XML, and the call's `end` after them. */
export class XmlParametersProgress {
  private state: State = { t: "tag", typed: "" };
  /** Parameters written (or opened), in order. */
  private seen: string[] = [];
  /** The text left the layout as read here: the completion is unknown. */
  lost = false;

  constructor(
    private readonly shapes: SchemaShapes,
    private readonly schema: Schema,
    private readonly end: string,
  ) {}

  /** The parameters and the end are complete (what follows is not part of them). */
  get done(): boolean {
    return this.state.t === "done";
  }

  clone(): XmlParametersProgress {
    const copy = new XmlParametersProgress(this.shapes, this.schema, this.end);
    copy.lost = this.lost;
    copy.seen = [...this.seen];
    const s = this.state;
    copy.state =
      s.t === "value"
        ? { ...s, value: s.value.t === "json" ? { t: "json", json: s.value.json.clone() } : { ...s.value } }
        : { ...s };
    return copy;
  }

  // Free text changes the completion only where a newline may start the closing: every token
  // is followed (see BudgetSteering.narrow), none taken on trust.
  inFreeString(): boolean {
    return false;
  }

  inPatternString(): boolean {
    const s = this.state;
    if (s.t !== "value") return false;
    if (s.value.t === "json") return s.value.json.inPatternString();
    return s.value.t === "text" && s.value.at !== undefined;
  }

  /** Feeds text; returns how many characters of it belonged to the parameters and the end (all of them unless they ended). */
  feed(text: string): number {
    for (let i = 0; i < text.length; i++) {
      if (this.done || this.lost) return i;
      try {
        this.char(text[i]!);
      } catch (error) {
        if (!(error instanceof UnsteerableSchemaError)) throw error;
        this.lost = true;
      }
    }
    return text.length;
  }

  private char(c: string): void {
    const s = this.state;
    switch (s.t) {
      case "tag": {
        const typed = s.typed + c;
        const ends = this.missing().length === 0 && this.end.startsWith(typed);
        if (ends && typed === this.end) return void (this.state = { t: "done" });
        const name = this.nextNames().find((k) => opening(k) === typed);
        if (name !== undefined) {
          this.seen.push(name);
          this.state = { t: "value", name, value: this.valueReader(name) };
          return;
        }
        const open = this.nextNames().some((k) => opening(k).startsWith(typed));
        if (!open && !ends) this.lost = true;
        s.typed = typed;
        return;
      }
      case "closing":
        s.typed += c;
        if (!CLOSING.startsWith(s.typed)) this.lost = true;
        else if (s.typed === CLOSING) this.state = { t: "tag", typed: "" };
        return;
      case "value":
        return this.valueChar(s.value, c);
      case "done":
        this.lost = true;
    }
  }

  private valueChar(v: Value, c: string): void {
    if (v.t === "json") {
      // A newline ends a JSON value (which holds none) where it is complete.
      if (c === "\n") {
        if (v.json.done || v.json.completion() === "") this.state = { t: "closing", typed: c };
        else this.lost = true;
        return;
      }
      if (v.json.done || (v.json.feed(c), v.json.lost)) this.lost = true;
      return;
    }
    if (v.t === "literal") {
      const typed = v.typed + c;
      if (v.texts.some((t) => t.startsWith(typed))) v.typed = typed;
      else if (c === "\n" && v.texts.includes(v.typed)) this.state = { t: "closing", typed: c };
      else this.lost = true;
      return;
    }
    if (v.free) {
      // Any text, up to the first </parameter> (after a newline): the grammar allows no other.
      v.tail = (v.tail + c).slice(-(CLOSING.length - 1));
      if (v.tail === CLOSING.slice(0, -1)) this.state = { t: "closing", typed: v.tail };
      return;
    }
    // One line under a length, pattern or format: a newline starts the closing.
    if (c === "\n") {
      if (this.shapes.stringRest(v.s, v.length, v.at) !== "") this.lost = true;
      else this.state = { t: "closing", typed: c };
      return;
    }
    if (v.at === undefined) {
      // A length counts code points, as JSON Schema (and the grammar) do: a surrogate pair is one.
      if (!(c >= "\udc00" && c <= "\udfff")) v.length++;
      return;
    }
    if (c >= "\ud800" && c <= "\udbff") {
      v.high = c;
      return;
    }
    v.at = this.shapes.automaton(v.s)!.step(v.at, v.high + c);
    v.high = "";
    v.length++;
    if (v.at.length === 0) this.lost = true;
  }

  /** The shortest text that completes the parameters and the end ("" once they are); throws if unknown. */
  completion(): string {
    if (this.lost) throw new UnsteerableSchemaError("the text left the XML parameters as read here");
    const s = this.state;
    switch (s.t) {
      case "done":
        return "";
      case "closing":
        return CLOSING.slice(s.typed.length) + this.rest();
      case "value":
        return this.valueRest(s.value) + this.rest();
      case "tag": {
        const candidates: string[] = [];
        if (this.missing().length === 0 && this.end.startsWith(s.typed))
          candidates.push(this.end.slice(s.typed.length));
        for (const k of this.nextNames())
          if (opening(k).startsWith(s.typed))
            candidates.push(
              opening(k).slice(s.typed.length) + minValue(this.shapes, this.property(k)) + CLOSING + this.rest([k]),
            );
        if (candidates.length === 0) throw new UnsteerableSchemaError("no parameter may come next");
        return candidates.reduce((a, b) => (b.length < a.length ? b : a));
      }
    }
  }

  /** What finishes the open value, up to and with its closing. */
  private valueRest(v: Value): string {
    if (v.t === "json") return v.json.completion() + CLOSING;
    if (v.t === "literal") {
      const texts = v.texts.filter((t) => t.startsWith(v.typed));
      return texts.reduce((a, b) => (b.length < a.length ? b : a)).slice(v.typed.length) + CLOSING;
    }
    if (!v.free) return this.shapes.stringRest(v.s, v.length, v.at) + CLOSING;
    // Free text may have begun the closing already: its last characters a start of it.
    for (let n = Math.min(v.tail.length, CLOSING.length - 1); n > 0; n--)
      if (CLOSING.startsWith(v.tail.slice(-n))) return CLOSING.slice(n);
    return CLOSING;
  }

  /** The required parameters still missing (after those written and `more`), whole, then the end. */
  private rest(more: string[] = []): string {
    return (
      this.missing(more)
        .map((k) => opening(k) + minValue(this.shapes, this.property(k)) + CLOSING)
        .join("") + this.end
    );
  }

  private properties(): Record<string, unknown> {
    return (this.schema.properties ?? {}) as Record<string, unknown>;
  }

  private property(name: string): unknown {
    return this.properties()[name];
  }

  /** The required parameters after the last one written, in the schema's order. */
  private missing(more: string[] = []): string[] {
    const seen = [...this.seen, ...more];
    const names = Object.keys(this.properties());
    const last = Math.max(-1, ...seen.map((k) => names.indexOf(k)));
    const required = this.shapes.requiredKeys(this.schema);
    if (required.some((k) => !names.includes(k)))
      throw new UnsteerableSchemaError("a required parameter the schema does not name");
    return names.filter((k, i) => i > last && required.includes(k));
  }

  /** The parameters that may come next: those after the last one written, up to the first required one. */
  private nextNames(): string[] {
    const names = Object.keys(this.properties());
    const last = Math.max(-1, ...this.seen.map((k) => names.indexOf(k)));
    const required = this.shapes.requiredKeys(this.schema);
    const after = names.slice(last + 1);
    const firstRequired = after.findIndex((k) => required.includes(k));
    return firstRequired < 0 ? after : after.slice(0, firstRequired + 1);
  }

  private valueReader(name: string): Value {
    const node = this.property(name);
    const kind = valueKind(this.shapes, node);
    if (kind.t === "literal") return { t: "literal", texts: kind.texts, typed: "" };
    if (kind.t === "json") return { t: "json", json: new JsonProgress(this.shapes, node) };
    return {
      t: "text",
      s: kind.s,
      free: kind.free,
      tail: "",
      length: 0,
      at: this.shapes.automaton(kind.s)?.start,
      high: "",
    };
  }
}

/** The text that opens parameter `name`. */
const opening = (name: string) => `<parameter=${name}>\n`;

type Kind = { t: "text"; s: Schema; free: boolean } | { t: "literal"; texts: string[] } | { t: "json" };

/**
 * How a parameter's value is written, as xmlParametersEbnf lays it out: bare text (a string, or
 * a value of any type), bare literals (a const or enum), or JSON.
 */
function valueKind(shapes: SchemaShapes, node: unknown): Kind {
  const branches = shapes.branches(node);
  const values = branches.map((b) =>
    "const" in b ? [b.const] : Array.isArray(b.enum) ? (b.enum as unknown[]) : undefined,
  );
  if (values.every((v) => v !== undefined))
    return { t: "literal", texts: values.flat().map((v) => (typeof v === "string" ? v : constantText(v))) };
  const only = branches.length === 1 ? branches[0]! : undefined;
  if (only && shapes.kind(only) === "string") {
    const free = ["minLength", "maxLength", "pattern", "format"].every((k) => only[k] === undefined);
    return { t: "text", s: only, free };
  }
  // A value of any type is bare text or JSON (xgrammar's xml_any): any text up to the closing
  // is one, as a free string's is.
  if (only && shapes.kind(only) === "any") return { t: "text", s: only, free: true };
  // Anything else is JSON, a string among other values too (["string", "null"]: quoted).
  return { t: "json" };
}

/** The shortest value text of a parameter. */
function minValue(shapes: SchemaShapes, node: unknown): string {
  const kind = valueKind(shapes, node);
  if (kind.t === "literal") return kind.texts.reduce((a, b) => (b.length < a.length ? b : a));
  if (kind.t === "text") return shapes.stringRest(kind.s, 0, undefined);
  return shapes.minText(node);
}

/** The shortest XML parameters `schema` allows: its required ones, each with its shortest value. */
export function minXmlParameters(shapes: SchemaShapes, schema: Schema): string {
  const progress = new XmlParametersProgress(shapes, schema, "");
  return progress.completion();
}

/**
 * The most one opening character can add to a completion in XML parameters, in bytes: a
 * parameter's whole text (`<` opens any of them), or what opens inside a JSON value.
 */
export function xmlLargestOpening(shapes: SchemaShapes, schema: Schema): number {
  let most = shapes.largestOpening(schema);
  for (const [k, node] of Object.entries((schema.properties ?? {}) as Record<string, unknown>)) {
    try {
      most = Math.max(most, Buffer.byteLength(opening(k) + minValue(shapes, node) + CLOSING));
    } catch (error) {
      if (!(error instanceof UnsteerableSchemaError)) throw error;
    }
  }
  return most;
}
