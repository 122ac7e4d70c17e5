// Python's values as chat templates see them (transformers renders with Python's Jinja2): repr
// and str, json.dumps as its tojson writes it, ==, the order of strings, len and range, over the
// values @huggingface/jinja holds while rendering (python-jinja.ts).
import type { Interpreter } from "@huggingface/jinja";

/** A value the library's interpreter gives back. */
export type Rendered = ReturnType<Interpreter["evaluate"]>;

/** A value as the library holds it while rendering (a string, number, list, dict...). */
export type TemplateValue = { type: string; value: unknown };

/**
 * An operation the template makes on the request's values that Python's Jinja2 refuses too (a
 * string added to a field the request does not give, or to a dict): the request's fault, as
 * transformers and vLLM take it, not a feature our renderer lacks.
 */
export class TemplateTypeError extends Error {
  override name = "TemplateTypeError";
}

/** Python's repr of a float: the shortest digits, positional from 1e-4 up to 1e16, else 1e-05 or 1.5e+16. */
function pythonFloat(x: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf";
  if (Object.is(x, -0)) return "-0.0";
  const [mantissa, exponentText] = Math.abs(x).toExponential().split("e") as [string, string];
  const exponent = Number(exponentText);
  const digits = mantissa.replace(".", "");
  const sign = x < 0 ? "-" : "";
  if (exponent < -4 || exponent >= 16)
    return `${sign}${mantissa}e${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
  if (exponent < 0) return `${sign}0.${"0".repeat(-exponent - 1)}${digits}`;
  const whole = digits.slice(0, exponent + 1).padEnd(exponent + 1, "0");
  return `${sign}${whole}.${digits.slice(exponent + 1) || "0"}`;
}

/** Python's repr of a str: single quotes unless it holds one and no double quote; escapes as Python's. */
function pythonStringRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  const escapes: Record<string, string> = {
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    [quote]: `\\${quote}`,
  };
  let out = "";
  for (const char of text) {
    const code = char.codePointAt(0)!;
    out +=
      escapes[char] ??
      (code < 0x20 || (code >= 0x7f && code < 0xa0) ? `\\x${code.toString(16).padStart(2, "0")}` : char);
  }
  return quote + out + quote;
}

type JsonOptions = { indent: number | null; separators: [string, string]; sortKeys: boolean; ensureAscii: boolean };

/**
 * transformers' tojson: Python's json.dumps, whose floats are their repr (1e-05, where the
 * library wrote JSON.stringify's 0.00001) and whose sort_keys orders keys by code point (the
 * library's by locale: "a" before "B").
 */
export function pythonJson(value: TemplateValue, options: JsonOptions, depth = 0): string {
  const { indent, separators, sortKeys, ensureAscii } = options;
  const string = (text: string) =>
    ensureAscii
      ? JSON.stringify(text).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
      : JSON.stringify(text);
  const lines = (items: string[], open: string, close: string) => {
    if (items.length === 0) return open + close;
    if (indent === null) return open + items.join(separators[0]) + close;
    const [inner, outer] = [`\n${" ".repeat(indent * (depth + 1))}`, `\n${" ".repeat(indent * depth)}`];
    return open + inner + items.join(separators[0] + inner) + outer + close;
  };
  switch (value.type) {
    case "NullValue":
      return "null";
    // Python's json.dumps refuses Jinja2's undefined (a tool without the description a template writes)
    case "UndefinedValue":
      throw new TemplateTypeError(
        "Object of type Undefined is not JSON serializable (a field the template reads is missing from the request)",
      );
    case "BooleanValue":
      return value.value ? "true" : "false";
    case "IntegerValue":
      return String(value.value);
    case "FloatValue": {
      const x = value.value as number;
      return Number.isFinite(x) ? pythonFloat(x) : Number.isNaN(x) ? "NaN" : x > 0 ? "Infinity" : "-Infinity";
    }
    case "StringValue":
      return string(value.value as string);
    case "ArrayValue":
    case "TupleValue":
      return lines(
        (value.value as TemplateValue[]).map((item) => pythonJson(item, options, depth + 1)),
        "[",
        "]",
      );
    case "ObjectValue":
    case "KeywordArgumentsValue":
    case "NamespaceValue": {
      const entries = [...(value.value as Map<string, TemplateValue>)];
      if (sortKeys) entries.sort(([a], [b]) => compareCodePoints(a, b));
      return lines(
        entries.map(([key, item]) => string(String(key)) + separators[1] + pythonJson(item, options, depth + 1)), // an int key as "1", as json.dumps writes it
        "{",
        "}",
      );
    }
    default:
      throw new Error(`Object of type ${value.type} is not JSON serializable`);
  }
}

/** Python's str() of a value, as Jinja2 prints it ({{ x }}, x | string, x ~ y): True, None, {'a': 1}. */
export function pythonStr(value: TemplateValue | undefined): string {
  if (value?.type === "StringValue") return value.value as string;
  return value?.type === "UndefinedValue" || value === undefined ? "" : pythonRepr(value);
}

export function pythonRepr(value: TemplateValue): string {
  switch (value.type) {
    case "StringValue":
      return pythonStringRepr(value.value as string);
    case "BooleanValue":
      return value.value ? "True" : "False";
    case "NullValue":
    case "UndefinedValue":
      return "None";
    case "FloatValue":
      return pythonFloat(value.value as number);
    case "ArrayValue":
      return `[${(value.value as TemplateValue[]).map(pythonRepr).join(", ")}]`;
    case "TupleValue": {
      const items = (value.value as TemplateValue[]).map(pythonRepr);
      return `(${items.join(", ")}${items.length === 1 ? "," : ""})`;
    }
    case "ObjectValue":
    case "KeywordArgumentsValue": {
      const entries = [...(value.value as Map<string, TemplateValue>)].map(
        ([key, item]) => `${typeof key === "number" ? key : pythonStringRepr(key)}: ${pythonRepr(item)}`, // an int key's repr is its digits
      );
      return `{${entries.join(", ")}}`;
    }
    default:
      return String(value.value);
  }
}

export const NUMERIC = new Set(["IntegerValue", "FloatValue", "BooleanValue"]);

/** Python's names of the library's types, for errors that say what Python's say. */
export const PYTHON_TYPE_NAMES: Record<string, string> = {
  IntegerValue: "int",
  FloatValue: "float",
  BooleanValue: "bool",
  StringValue: "str",
  ArrayValue: "list",
  TupleValue: "tuple",
  ObjectValue: "dict",
  NullValue: "NoneType",
  UndefinedValue: "Undefined",
};

/**
 * Python's ==: lists, tuples and dicts by their items (the library compared them by identity, so
 * [1] == [1] was False), numbers by value (True == 1), and no two values of other types equal (the
 * library's JavaScript == made 1 == '1' and None == an undefined value True).
 */
export function pythonEqual(a: TemplateValue, b: TemplateValue): boolean {
  if (NUMERIC.has(a.type) && NUMERIC.has(b.type)) return Number(a.value) === Number(b.value);
  const mapping = (value: TemplateValue) => value.type === "ObjectValue" || value.type === "KeywordArgumentsValue";
  if (mapping(a) && mapping(b)) {
    const [x, y] = [a.value as Map<string, TemplateValue>, b.value as Map<string, TemplateValue>];
    return x.size === y.size && [...x].every(([key, item]) => y.has(key) && pythonEqual(item, y.get(key)!));
  }
  if (a.type !== b.type) return false;
  if (a.type === "ArrayValue" || a.type === "TupleValue") {
    const [x, y] = [a.value as TemplateValue[], b.value as TemplateValue[]];
    return x.length === y.length && x.every((item, i) => pythonEqual(item, y[i]!));
  }
  return a.value === b.value;
}

/** Python's order of two strings: by code points (JavaScript's < orders UTF-16 units). */
export function compareCodePoints(a: string, b: string): number {
  const [x, y] = [[...a], [...b]];
  for (let i = 0; i < Math.min(x.length, y.length); i++)
    if (x[i] !== y[i]) return x[i]!.codePointAt(0)! - y[i]!.codePointAt(0)!;
  return x.length - y.length;
}

/** Python's len(): a string's code points (JavaScript's length counts an emoji twice); undefined's 0, as Jinja2's. */
export function pythonLen(value: TemplateValue | undefined): number {
  switch (value?.type) {
    case "StringValue":
      return [...(value.value as string)].length;
    case "ArrayValue":
    case "TupleValue":
      return (value.value as unknown[]).length;
    case "ObjectValue":
    case "KeywordArgumentsValue":
      return (value.value as Map<string, unknown>).size;
    case "UndefinedValue":
    case undefined:
      return 0;
    default: // None's, a number's: Python's TypeError
      throw new TemplateTypeError(`object of type '${PYTHON_TYPE_NAMES[value!.type] ?? value!.type}' has no len()`);
  }
}

/** Python's range(stop) and range(start, stop[, step]). */
export function pythonRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new Error("range() arg 3 must not be zero");
  const numbers: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) numbers.push(i);
  return numbers;
}
