// A call's arguments as the model writes them, re-written as they come in the layout the APIs
// send them (JSON.stringify of the parsed object: no whitespace, strings and numbers as
// JavaScript writes them back), so that a streamed call's argument pieces add up to the
// arguments of the call read whole. It follows the text character by character (a stack of
// open values) and writes each value once it is sure of it: punctuation at once, a string's
// characters as they come (an escape once it is whole), a key, number or literal once it ends.
import { parseExactJson } from "../../exact-json";

/** What may come next: a value, a key (or, first in an object, its end), ":", "," (or the end), or an array's first value (or its end). */
type Expect = "value" | "key" | "firstKey" | "colon" | "comma" | "firstValue";

export class CanonicalJson {
  /** Where the text fed so far stops being JSON (it is not written on), or its object closed. */
  private state: "open" | "done" | "failed" = "open";
  private readonly stack: ("object" | "array")[] = [];
  private expect: Expect = "value";
  /** The string, number or literal being read: its text not written on yet (a key's, all of it). */
  private token: { kind: "string" | "key" | "number" | "literal"; raw: string } | undefined;
  /** Once the object closed: how much of the text fed (UTF-16 units) it took, its "}" included. */
  end = -1;
  private fed = 0;

  /** Whether the text read so far may still be the object's start. */
  get open(): boolean {
    return this.state === "open";
  }

  /** Whether the object closed. */
  get done(): boolean {
    return this.state === "done";
  }

  /** Reads `text`, the next characters; returns the canonical JSON they complete. */
  feed(text: string): string {
    let out = "";
    for (const c of text) {
      if (this.state !== "open") break;
      this.fed += c.length;
      out += this.take(c);
    }
    if (this.state === "open" && this.token?.kind === "string") out += this.stringSoFar();
    return out;
  }

  private fail(): string {
    this.state = "failed";
    return "";
  }

  private take(c: string): string {
    const token = this.token;
    if (token?.kind === "string" || token?.kind === "key") {
      if (c === '"' && !escapeOpen(token.raw)) {
        this.token = undefined;
        const rest = this.stringSoFar(token, true);
        if (rest === undefined) return this.fail();
        this.expect = token.kind === "key" ? "colon" : "comma";
        return token.kind === "key" ? rest : `${rest}"`;
      }
      token.raw += c;
      return "";
    }
    if (token) {
      if (token.kind === "number" ? /[-+.eE0-9]/.test(c) : /[a-z]/.test(c)) {
        token.raw += c;
        return "";
      }
      this.token = undefined;
      const value = readJson(token.raw);
      if (value === undefined) return this.fail();
      this.expect = "comma";
      return JSON.stringify(value) + this.take(c);
    }
    if (/\s/.test(c)) return "";
    const top = this.stack.at(-1);
    switch (this.expect) {
      case "colon":
        if (c !== ":") return this.fail();
        this.expect = "value";
        return ":";
      case "comma":
        if (c === ",") {
          this.expect = top === "object" ? "key" : "value";
          return ",";
        }
        return this.close(c);
      case "firstKey":
      case "key":
        if (c === '"') {
          this.token = { kind: "key", raw: "" };
          return "";
        }
        return this.expect === "firstKey" ? this.close(c) : this.fail();
      case "firstValue":
        if (c === "]") return this.close(c);
        break;
    }
    // A value (the arguments themselves are an object).
    if (this.stack.length === 0 && c !== "{") return this.fail();
    if (c === "{" || c === "[") {
      this.stack.push(c === "{" ? "object" : "array");
      this.expect = c === "{" ? "firstKey" : "firstValue";
      return c;
    }
    if (c === '"') {
      this.token = { kind: "string", raw: "" };
      return '"';
    }
    if (/[-0-9]/.test(c)) this.token = { kind: "number", raw: c };
    else if (/[tfn]/.test(c)) this.token = { kind: "literal", raw: c };
    else return this.fail();
    return "";
  }

  /** Closes the innermost object or array with `c`, if `c` closes it. */
  private close(c: string): string {
    const top = this.stack.at(-1);
    if (c !== (top === "object" ? "}" : "]")) return this.fail();
    this.stack.pop();
    this.expect = "comma";
    if (this.stack.length === 0) {
      this.state = "done";
      this.end = this.fed;
    }
    return c;
  }

  /**
   * The string being read, re-written from where it was last written: up to its last whole
   * character (an escape that is not whole, or half a surrogate pair, waits). A key is written
   * whole, once it closes (`whole`); undefined where it is not a JSON string.
   */
  private stringSoFar(token = this.token!, whole = false): string | undefined {
    if (token.kind === "key" && !whole) return "";
    const raw = whole ? token.raw : token.raw.slice(0, wholeLength(token.raw));
    const value = readJson(`"${raw}"`);
    if (typeof value !== "string") return whole ? undefined : "";
    // A high surrogate alone waits for its pair (JSON.stringify escapes a lone one).
    const pending = !whole && /[\uD800-\uDBFF]$/.test(value) ? lastEscapeLength(raw) : 0;
    // What is written is dropped (the rest starts on a whole character, an escape's backslash included).
    token.raw = token.raw.slice(raw.length - pending);
    const text = pending ? value.slice(0, -1) : value;
    const written = JSON.stringify(text).slice(1, -1);
    return token.kind === "key" ? `"${written}"` : written;
  }
}

/** Whether `raw` (a string's text) ends inside an escape's backslash. */
function escapeOpen(raw: string): boolean {
  let slashes = 0;
  for (let i = raw.length - 1; i >= 0 && raw[i] === "\\"; i--) slashes++;
  return slashes % 2 === 1;
}

/** How much of `raw` (a string's text) is whole characters: up to an escape not yet whole. */
function wholeLength(raw: string): number {
  const cut = /\\(u[0-9a-fA-F]{0,3})?$/.exec(raw);
  if (cut && escapeOpen(raw.slice(0, cut.index + 1))) return cut.index;
  return raw.length;
}

/** The length of the escape (or character) that ends `raw`. */
function lastEscapeLength(raw: string): number {
  return /\\u[0-9a-fA-F]{4}$/.test(raw) ? 6 : 1;
}

function readJson(text: string): unknown {
  try {
    return parseExactJson(text);
  } catch {
    return undefined;
  }
}
