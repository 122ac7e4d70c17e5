// How the model families we load write tool calls, behind one interface: where a call starts,
// how to read calls out of an answer, and how a call is laid out around its arguments (for the
// grammar that keeps calls valid).
//
// - hermes (Qwen 2/2.5/3, Hermes, and our prompt for templates without tools):
//     <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>
// - llama3 (Llama 3.1+ JSON calls): {"name": "f", "parameters": {...}}, optionally after <|python_tag|>
// - mistral: [TOOL_CALLS] [{"name": "f", "arguments": {...}}]
// - mistralArgs (Mistral's v11+ templates: Mistral Small 3.2, Devstral, Magistral):
//     [TOOL_CALLS]f[ARGS]{...} for each call, optionally after prose
// - qwen3coder (Qwen3-Coder, Qwen3.5): XML parameters, each typed by the function's schema:
//     <tool_call>\n<function=f>\n<parameter=p>\nvalue\n</parameter>\n</function>\n</tool_call>
// - harmony (gpt-oss): <|channel|>commentary to=functions.f <|constrain|>json<|message|>{...}<|call|>,
//     as the HarmonySplitter (engine/harmony.ts) passes calls on from the model's messages
// - deepseekV3 (DeepSeek V3, R1): <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{...}\n```<｜tool▁call▁end｜>
//     (calls apart by "\n"), then <｜tool▁calls▁end｜>, optionally after prose
// - deepseekV31 (DeepSeek V3.1): <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{...}<｜tool▁call▁end｜>
//     (calls chained with nothing between), then <｜tool▁calls▁end｜>, optionally after prose
// - phi4mini (Phi-4-mini, with vLLM's template): functools[{"name": "f", "arguments": {...}}, ...]
import { createHash } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import { exactInteger, isExactInteger, isJsonObject, parseExactJson } from "../../exact-json";
import { SchemaShapes, UnsteerableSchemaError } from "../budget/json-progress";
import type { ToolCall, ToolSpec } from "./types";

export interface ParsedAnswer {
  /** The prose around the calls (the whole answer when it holds none). */
  content: string;
  calls: ToolCall[];
}

/** What reading calls out of an answer takes (a remote model's calls need no more). */
export type ToolCallParser = Pick<ToolCallFormat, "markers" | "anywhere" | "parse" | "callHead">;

/** Where a call begins in an answer being streamed: its id and function, and where its arguments start. */
export interface CallHead {
  id: string;
  name: string;
  /** Where the arguments' JSON object starts (its "{"), or, for XML parameters, the function's body. */
  argumentsAt: number;
  /**
   * For arguments that are not JSON text (Qwen's XML parameters): the arguments written from
   * `argumentsAt` in `text` so far, as the JSON text of the parameters that are whole (a prefix
   * of the whole call's), and where the call ends once it has.
   */
  argumentsSoFar?(text: string): { json: string; end?: number };
}

export interface ToolCallFormat {
  name:
    | "hermes"
    | "llama3"
    | "mistral"
    | "mistral-args"
    | "qwen3coder"
    | "harmony"
    | "deepseek-v3"
    | "deepseek-v31"
    | "phi4mini";
  /** Texts that open a call. */
  markers: string[];
  /** Whether a call may follow prose (hermes) or only opens the answer (llama3, mistral). */
  anywhere: boolean;
  /** Splits an answer into prose and calls; a call that does not parse stays prose. */
  parse(text: string): ParsedAnswer;
  /**
   * For streaming a call as it is written: the first call whose head (its function's name, up
   * to its arguments) is whole in `text` from `from` on. `parse` has the last word: a call
   * found here may still not read.
   */
  callHead?(text: string, from: number): CallHead | undefined;
  /** The text around a call's arguments object, as the family writes it. */
  callLayout(name: string): { begin: string; end: string };
  /** Between parallel calls. */
  separator: string;
  /** Around the whole list of calls, when the family writes one. */
  list?: { begin: string; end: string };
  /** The text that opens calls in free text (a prefix of every call's layout, list included). */
  trigger: string;
  /** Whether a call's arguments are Qwen's XML parameters (`<parameter=p>\nvalue\n</parameter>`), not a JSON object. */
  xmlParameters?: boolean;
  /** The format reading calls to `tools` (for a format whose arguments are typed by the functions' schemas). */
  withTools?(tools: ToolSpec[]): ToolCallFormat;
  /** Whether the family's templates take only call ids of nine alphanumerics (Mistral's): others are mapped to such. */
  nineCharacterIds?: boolean;
  /** Whether the family's templates take a call's arguments as JSON text, not an object (DeepSeek's join them with "+"). */
  argumentsAsText?: boolean;
}

const alphanumeric = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
function randomId(length: number): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (b) => alphanumeric[b % alphanumeric.length]).join("");
}
const openaiCallId = () => `call_${randomId(24)}`;
// Mistral's templates accept exactly nine alphanumerics.
const mistralCallId = () => randomId(9);

/**
 * A call id as Mistral's templates take it: nine alphanumerics, the id itself when it is one,
 * else derived from it (the same for a call and its result), as clients send other ids
 * (OpenAI's "call_…").
 */
export function mistralToolCallId(id: string): string {
  if (/^[A-Za-z0-9]{9}$/.test(id)) return id;
  const digest = createHash("sha256").update(id).digest();
  return Array.from(digest.subarray(0, 9), (b) => alphanumeric[b % alphanumeric.length]).join("");
}

/** One call read from a parsed JSON value: `{name, arguments}` (or `parameters`; arguments may arrive as JSON text). */
function readCall(value: unknown, newId: () => string): ToolCall | undefined {
  if (!value || typeof value !== "object" || Array.isArray(value)) return undefined;
  const v = value as Record<string, unknown>;
  if (typeof v.name !== "string" || !v.name) return undefined;
  let args: unknown = v.arguments ?? v.parameters ?? {};
  if (typeof args === "string") {
    try {
      args = parseExactJson(args);
    } catch {
      return undefined;
    }
  }
  if (!isJsonObject(args)) return undefined;
  return { id: newId(), name: v.name, arguments: args };
}

/**
 * The call written at `at` in `text` as a head, then its arguments' JSON (`head` matches from the
 * call's start to where the JSON starts, the function's name in its group 1), and where the JSON
 * ends; undefined when it does not read (cut off by a stop string or the token budget).
 */
function headedCall(
  text: string,
  at: number,
  head: RegExp,
  newId: () => string,
): { call: ToolCall; end: number } | undefined {
  const h = head.exec(text.slice(at));
  if (!h) return undefined;
  const argsAt = at + h[0].length;
  const end = jsonEnd(text, argsAt);
  const call =
    end < 0 ? undefined : readCall({ name: h[1]!.trim(), arguments: parseJson(text.slice(argsAt, end)) }, newId);
  return call && { call, end };
}

/**
 * A `callHead` finding heads that `pattern` matches: the function's name in its group 1 (as a
 * JSON string, or bare), up to the "{" that opens the arguments (a lookahead).
 */
function callHeads(pattern: RegExp, newId: () => string): (text: string, from: number) => CallHead | undefined {
  const global = new RegExp(pattern.source, "g");
  return (text, from) => {
    global.lastIndex = from;
    const head = global.exec(text);
    if (!head) return undefined;
    const name = head[1]!.startsWith('"') ? parseJson(head[1]!) : head[1]!.trim();
    return typeof name === "string" && name
      ? { id: newId(), name, argumentsAt: head.index + head[0].length }
      : undefined;
  };
}

/** A call's JSON object up to its arguments: `{"name": "f", "arguments": ` (or "parameters"), the name first. */
const jsonCallHead = /\{\s*"name"\s*:\s*("(?:[^"\\\n]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)/;

/** The prose before and after an answer's calls, as its content: a line apart, where both are. */
const proseAround = (before: string, after: string) => [before.trim(), after.trim()].filter(Boolean).join("\n");

/** An answer that is nothing but calls, or, if any value is not a call, nothing but prose. */
function onlyCalls(text: string, values: unknown, newId: () => string): ParsedAnswer {
  const list = Array.isArray(values) ? values : values === undefined ? [] : [values];
  const calls = list.map((v) => readCall(v, newId));
  if (calls.length === 0 || calls.some((c) => !c)) return { content: text, calls: [] };
  return { content: "", calls: calls as ToolCall[] };
}

/** A call's JSON object around its arguments: `{"name": "f", "<key>": ` … `}`. */
function jsonCall(name: string, key: "arguments" | "parameters"): { begin: string; end: string } {
  return { begin: `{"name": ${JSON.stringify(name)}, "${key}": `, end: "}" };
}

/**
 * JSON with ", " and ": " between items, as the call grammar makes models write arguments (and
 * as Python's json.dumps, and so the families' own templates, render them).
 */
export function spacedJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(spacedJson).join(", ")}]`;
  if (value && typeof value === "object" && !isExactInteger(value))
    return `{${Object.entries(value)
      .map(([key, item]) => `${JSON.stringify(key)}: ${spacedJson(item)}`)
      .join(", ")}}`;
  return JSON.stringify(value);
}

function parseJson(text: string): unknown {
  try {
    return parseExactJson(text);
  } catch {
    return undefined;
  }
}

/**
 * `text` without a call block opened by `open` and never closed: a stop string or the token
 * budget cut the call off, and such a stub is neither a call nor prose (never shown as text).
 */
function withoutOpenCall(text: string, open: string, close: string): string {
  const opened = text.lastIndexOf(open);
  return opened >= 0 && !text.includes(close, opened) ? text.slice(0, opened).trimEnd() : text;
}

/**
 * `content` (what is left around an answer's calls) without a call that its end cut off: an
 * open block, or the start of `open` itself. That happens where the token budget ran out after
 * the calls it held room for.
 */
function withoutCutCall(content: string, open: string, close: string): string {
  const uncut = withoutOpenCall(content, open, close);
  if (uncut !== content) return uncut;
  for (let n = open.length - 1; n > 0; n--)
    if (content.endsWith(open.slice(0, n))) return content.slice(0, -n).trimEnd();
  return content;
}

/**
 * The call in a hermes block whose JSON starts at `from`: up to the first closing tag after which
 * it reads as a call (a string argument may hold the tag itself), or to the end of the text (a
 * last call cut off before its tag, the model having stopped right after the JSON).
 */
function hermesBlock(text: string, from: number): { call: ToolCall; end: number } | undefined {
  const close = "</tool_call>";
  for (let at = text.indexOf(close, from); ; at = text.indexOf(close, at + 1)) {
    const call = readCall(parseJson(text.slice(from, at >= 0 ? at : undefined).trim()), openaiCallId);
    if (call) return { call, end: at >= 0 ? at + close.length : text.length };
    if (at < 0) return undefined;
  }
}

const hermes: ToolCallFormat = {
  name: "hermes",
  markers: ["<tool_call>"],
  anywhere: true,
  parse(text) {
    const open = "<tool_call>";
    const calls: ToolCall[] = [];
    let content = "";
    let done = 0; // text before this is in `content` or a call
    for (let at = text.indexOf(open); at >= 0; at = text.indexOf(open, at + open.length)) {
      if (at < done) continue; // inside a call read already
      const block = hermesBlock(text, at + open.length);
      if (!block) continue; // no call: prose, as it is
      calls.push(block.call);
      content += text.slice(done, at);
      done = block.end;
    }
    content += text.slice(done);
    return calls.length > 0
      ? { content: withoutCutCall(content.trim(), "<tool_call>", "</tool_call>"), calls }
      : { content: withoutOpenCall(text, "<tool_call>", "</tool_call>"), calls };
  },
  callHead: callHeads(jsonCallHead, openaiCallId),
  callLayout: (name) => {
    const call = jsonCall(name, "arguments");
    return { begin: `<tool_call>\n${call.begin}`, end: `${call.end}\n</tool_call>` };
  },
  separator: "\n",
  trigger: "<tool_call>",
};

/** JSON values read off the start of an answer's body, and the text after them. */
interface LeadingValues {
  /** One value (a call, or a list of them), or undefined when none reads. */
  values: unknown;
  rest: string;
}

/**
 * Reads an answer that opens with calls: an optional marker token, then JSON that `read` turns
 * into call values (anything else is prose). An answer that opened a call (the marker, then
 * JSON or nothing; or the family's `trigger`) whose JSON does not read was cut off by a stop
 * string or the token budget: it is neither a call nor prose. After the calls, a call cut off
 * the same way is dropped, and prose is the answer's content.
 */
function leadingCalls(
  marker: string,
  trigger: string,
  opens: string[],
  read: (body: string) => LeadingValues,
  newId: () => string,
): (text: string) => ParsedAnswer {
  return (text) => {
    const trimmed = text.trim();
    const marked = trimmed.startsWith(marker);
    const body = (marked ? trimmed.slice(marker.length) : trimmed).trim();
    const json = opens.some((o) => body.startsWith(o));
    const { values, rest } = json ? read(body) : { values: undefined, rest: body };
    const cut = values === undefined && ((marked && (json || !body)) || trimmed.startsWith(trigger));
    if (cut) return { content: "", calls: [] };
    const answer = onlyCalls(text, values, newId);
    const cutCall = opens.some((o) => rest.startsWith(o));
    return answer.calls.length > 0 && !cutCall ? { ...answer, content: rest.trim() } : answer;
  };
}

/** The JSON value that opens the body (a list of calls), and the text after it (prose the model went on with). */
function leadingValue(body: string): LeadingValues {
  const end = jsonEnd(body, 0);
  return end < 0
    ? { values: undefined, rest: body }
    : { values: parseJson(body.slice(0, end)), rest: body.slice(end).trimStart() };
}

/**
 * The JSON objects that open `body`, one after another, apart by ";" (as Llama 3.2 writes
 * parallel calls) or whitespace (one per line), and the text after them.
 */
function leadingObjects(body: string): LeadingValues {
  const values: unknown[] = [];
  let at = 0;
  while (body.startsWith("{", at)) {
    const end = jsonEnd(body, at);
    const value = end < 0 ? undefined : parseJson(body.slice(at, end));
    if (value === undefined) break;
    values.push(value);
    at = end + /^\s*;?\s*/.exec(body.slice(end))![0].length;
  }
  return { values: values.length > 1 ? values : values[0], rest: body.slice(at) };
}

/** Where the JSON object or list that opens `text` at `from` ends (past its closing bracket); -1 if it never closes. */
function jsonEnd(text: string, from: number): number {
  let depth = 0;
  let inString = false;
  for (let i = from; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{" || c === "[") depth++;
    else if ((c === "}" || c === "]") && --depth === 0) return i + 1;
  }
  return -1;
}

const llama3Trigger = '{"name": ';
const llama3: ToolCallFormat = {
  name: "llama3",
  markers: ["<|python_tag|>", "{"],
  anywhere: false,
  parse: leadingCalls("<|python_tag|>", llama3Trigger, ["{"], leadingObjects, openaiCallId),
  callHead: callHeads(jsonCallHead, openaiCallId),
  callLayout: (name) => jsonCall(name, "parameters"),
  separator: "; ",
  trigger: llama3Trigger,
};

const mistralMarker = "[TOOL_CALLS]";
const mistral: ToolCallFormat = {
  name: "mistral",
  // A bare list of calls is read too.
  markers: [mistralMarker, "["],
  anywhere: false,
  parse: leadingCalls(mistralMarker, mistralMarker, ["[", "{"], leadingValue, mistralCallId),
  callHead: callHeads(jsonCallHead, mistralCallId),
  callLayout: (name) => jsonCall(name, "arguments"),
  separator: ", ",
  list: { begin: `${mistralMarker} [`, end: "]" },
  trigger: mistralMarker,
  nineCharacterIds: true,
};

/** A v11+ Mistral call's head after [TOOL_CALLS]: the name, an optional [CALL_ID] (Magistral's), then [ARGS]. */
const mistralArgsHead = /^([^[\]\s]+)(?:\[CALL_ID\][A-Za-z0-9]*)?\[ARGS\]/;

const mistralArgs: ToolCallFormat = {
  name: "mistral-args",
  markers: [mistralMarker],
  anywhere: true,
  // Prose, then calls from the first [TOOL_CALLS] on; the first that does not read was cut off
  // by a stop string or the token budget, and is dropped with what follows it (as for the other
  // families); prose after the last call is the content's.
  parse(text) {
    const first = text.indexOf(mistralMarker);
    if (first < 0) return { content: text, calls: [] };
    const calls: ToolCall[] = [];
    let at = first;
    let after = "";
    while (text.startsWith(mistralMarker, at)) {
      const read = headedCall(text, at + mistralMarker.length, mistralArgsHead, mistralCallId);
      if (!read) break;
      calls.push(read.call);
      at = read.end + /^\s*/.exec(text.slice(read.end))![0].length;
      after = text.slice(at);
    }
    if (text.startsWith(mistralMarker, at)) after = "";
    return { content: proseAround(text.slice(0, first), after), calls };
  },
  callHead: callHeads(new RegExp(`\\[TOOL_CALLS\\]${mistralArgsHead.source.slice(1)}\\s*(?=\\{)`), mistralCallId),
  // Laid out for the grammar as a list: [TOOL_CALLS] opens it and goes between its calls.
  callLayout: (name) => ({ begin: `${name}[ARGS]`, end: "" }),
  separator: mistralMarker,
  list: { begin: mistralMarker, end: "" },
  trigger: mistralMarker,
  nineCharacterIds: true,
};

/** A function's parameter schemas by name (an unknown function's parameters have none), and its schema's shapes that read them. */
interface ParameterSchemas {
  properties: Map<string, unknown>;
  shapes: SchemaShapes;
}

/** The alternatives a parameter's value may take ($ref followed, unions and type lists split); none without a schema. */
function parameterBranches(node: unknown, shapes: SchemaShapes | undefined): Record<string, unknown>[] {
  if (node === undefined || !shapes) return [];
  try {
    return shapes.branches(node);
  } catch (error) {
    if (error instanceof UnsteerableSchemaError) return [];
    throw error;
  }
}

/**
 * A parameter's text as the value its schema types it, as the call grammar lays values out
 * (xmlParametersEbnf) and vLLM's qwen3coder parser reads them: a string alone verbatim; a const
 * or an enum bare (a string as its text, another value as JSON); every other value JSON, a
 * string among other types included (["string", "null"], or anyOf string and integer: quoted).
 * Written without the grammar, an integer, number or boolean (True too) is parsed and "null" is
 * null unless the parameter is a string only, as vLLM reads them. Text that does not read as
 * its type stays text (as does a parameter with no schema, of an unknown function or name, or
 * of any type).
 */
function typedParameter(text: string, node: unknown, shapes: SchemaShapes | undefined): unknown {
  const branches = parameterBranches(node, shapes);
  const value = text.trim();
  // The value read as JSON (undefined where it is not), and as a number (a number past a
  // double's range stays text: JSON has no Infinity).
  const json = parseJson(value);
  const finite = Number.isFinite(Number(value));
  const literals = branches.map((b) => ("const" in b ? [b.const] : Array.isArray(b.enum) ? b.enum : undefined));
  if (literals.length > 0 && literals.every((l) => l !== undefined)) {
    const allowed = literals.flat();
    if (allowed.includes(text)) return text;
    if (json !== undefined && typeof json !== "string" && allowed.some((a) => isDeepStrictEqual(a, json))) return json;
  }
  const kinds = branches.map((b) => shapes!.kind(b));
  if (value.toLowerCase() === "null" && !(kinds.length > 0 && kinds.every((k) => k === "string"))) return null;
  for (const kind of kinds) {
    if (kind === "string" || kind === "any") {
      // Alone, its text is the value; among other alternatives the grammar writes it as JSON.
      if (branches.length === 1) return text;
      if (kind === "any" ? json !== undefined : typeof json === "string") return json;
    }
    if (kind === "integer" && finite && /^-?\d+$/.test(value)) return exactInteger(value);
    if (kind === "number" && finite && /^-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(value)) return Number(value);
    if (kind === "boolean" && /^(true|false)$/i.test(value)) return value.toLowerCase() === "true";
    if (kind === "object" || kind === "array") {
      if (kind === "array" ? Array.isArray(json) : json && typeof json === "object" && !Array.isArray(json))
        return json;
    }
  }
  return text;
}

/**
 * The parameters in a Qwen XML function body: each `<parameter=p>` up to its `</parameter>` (or
 * the next parameter, or the body's end, as vLLM reads a missing one), its value without the
 * one newline after the opening tag and the one before the closing one.
 */
function xmlParameters(body: string, schemas: ParameterSchemas | undefined): Record<string, unknown> | undefined {
  const open = "<parameter=";
  const args: Record<string, unknown> = {};
  for (let at = body.indexOf(open); at >= 0; ) {
    const nameEnd = body.indexOf(">", at);
    if (nameEnd < 0) return undefined;
    const name = body.slice(at + open.length, nameEnd).trim();
    const next = body.indexOf(open, nameEnd);
    const close = body.indexOf("</parameter>", nameEnd);
    const end = [close, next, body.length].filter((i) => i >= 0).reduce((a, b) => Math.min(a, b));
    let value = body.slice(nameEnd + 1, end);
    if (value.startsWith("\n")) value = value.slice(1);
    if (value.endsWith("\n")) value = value.slice(0, -1);
    if (!name) return undefined;
    args[name] = typedParameter(value, schemas?.properties.get(name), schemas?.shapes);
    at = next;
  }
  return args;
}

/** The call whose `<function=` is at `at`, and where it ends (past `</function>`, and `</tool_call>` when it follows); none if `</function>` never comes (a cut call). */
function xmlCall(
  text: string,
  at: number,
  schemas: Map<string, ParameterSchemas>,
): { call: ToolCall; end: number } | undefined {
  const head = /^<function=([^>\n<]+)>/.exec(text.slice(at));
  const close = "</function>";
  const closed = text.indexOf(close, at);
  if (!head || closed < 0) return undefined;
  const name = head[1]!.trim();
  const args = xmlParameters(text.slice(at + head[0].length, closed), schemas.get(name));
  if (!name || !args) return undefined;
  const after = /^\s*<\/tool_call>/.exec(text.slice(closed + close.length));
  return { call: { id: openaiCallId(), name, arguments: args }, end: closed + close.length + (after?.[0].length ?? 0) };
}

/** Qwen3-Coder's format, reading parameters as `tools` type them. */
function qwen3coderFormat(tools: ToolSpec[]): ToolCallFormat {
  const schemas = new Map(
    tools.map((t): [string, ParameterSchemas] => {
      const properties = (t.parameters.properties ?? {}) as Record<string, unknown>;
      return [
        t.name,
        { properties: new Map(Object.entries(properties)), shapes: new SchemaShapes(t.parameters, true) },
      ];
    }),
  );
  return {
    name: "qwen3coder",
    // vLLM reads a <function=...> block without <tool_call> around it too.
    markers: ["<tool_call>", "<function="],
    anywhere: true,
    // Prose, calls (each in <tool_call>, or bare), prose: the prose around them is the content.
    // A call that does not close (cut off by a stop string or the token budget) is neither.
    parse(text) {
      const calls: ToolCall[] = [];
      let content = "";
      let done = 0; // text before this is in `content` or a call
      const fn = "<function=";
      for (let at = text.indexOf(fn); at >= 0; at = text.indexOf(fn, at + fn.length)) {
        if (at < done) continue; // inside a call read already
        const read = xmlCall(text, at, schemas);
        if (!read) continue;
        const opened = /<tool_call>\s*$/.exec(text.slice(done, at));
        const start = opened ? done + opened.index : at;
        calls.push(read.call);
        content += text.slice(done, start);
        done = read.end;
      }
      content += text.slice(done);
      const withoutCut = (t: string) =>
        withoutOpenCall(withoutOpenCall(t, "<tool_call>", "</tool_call>"), fn, "</function>");
      return calls.length > 0
        ? { content: withoutCut(withoutCutCall(content.trim(), "<tool_call>", "</tool_call>")), calls }
        : { content: withoutCut(text), calls };
    },
    // Each parameter goes out once it is whole (its </parameter>, or the next parameter, came).
    callHead(text, from) {
      const fn = /<function=([^>\n<]+)>/g;
      fn.lastIndex = from;
      const head = fn.exec(text);
      const name = head?.[1]!.trim();
      if (!head || !name) return undefined;
      const argumentsAt = head.index + head[0].length;
      return {
        id: openaiCallId(),
        name,
        argumentsAt,
        argumentsSoFar(text) {
          const close = text.indexOf("</function>", argumentsAt);
          let body = text.slice(argumentsAt, close >= 0 ? close : undefined);
          if (close < 0) {
            // Up to the last parameter that is whole: its </parameter> came, or it is cut before its name's ">".
            const last = body.lastIndexOf("<parameter=");
            const closed = last >= 0 ? body.indexOf("</parameter>", last) : -1;
            if (last >= 0) body = closed >= 0 ? body.slice(0, closed + "</parameter>".length) : body.slice(0, last);
          }
          const args = xmlParameters(body, schemas.get(name)) ?? {};
          const json = JSON.stringify(args);
          return close >= 0 ? { json, end: close + "</function>".length } : { json: json.slice(0, -1) };
        },
      };
    },
    // As the template writes calls: each parameter ends in a newline, up to </function>.
    callLayout: (name) => ({ begin: `<tool_call>\n<function=${name}>\n`, end: "</function>\n</tool_call>" }),
    separator: "\n",
    trigger: "<tool_call>",
    xmlParameters: true,
    withTools: qwen3coderFormat,
  };
}

/** Without the offered tools: every parameter read as text. */
const qwen3coder = qwen3coderFormat([]);

const harmonyTrigger = "<|channel|>commentary to=";
/** A harmony call's head: its function, an optional content type (`<|constrain|>json`, or `json`), then <|message|>. */
const harmonyHead = /^functions\.([^\s<]+)\s*(?:<\|constrain\|>\s*\w+|\w+)?\s*<\|message\|>/;

const harmony: ToolCallFormat = {
  name: "harmony",
  markers: [harmonyTrigger],
  anywhere: true,
  // Prose (the final answer, a preamble) around calls; a call whose arguments do not read was
  // cut off by a stop string or the token budget, and is dropped with what follows it.
  parse(text) {
    const calls: ToolCall[] = [];
    let content = "";
    let done = 0;
    for (let at = text.indexOf(harmonyTrigger); at >= 0; at = text.indexOf(harmonyTrigger, done)) {
      content += text.slice(done, at);
      const read = headedCall(text, at + harmonyTrigger.length, harmonyHead, openaiCallId);
      if (!read) return { content: content.trim(), calls };
      calls.push(read.call);
      done = read.end + (text.startsWith("<|call|>", read.end) ? "<|call|>".length : 0);
    }
    content += text.slice(done);
    return { content: calls.length > 0 ? content.trim() : content, calls };
  },
  callHead: callHeads(
    new RegExp(`${harmonyTrigger.replaceAll("|", "\\|")}${harmonyHead.source.slice(1)}\\s*(?=\\{)`),
    openaiCallId,
  ),
  // The <|call|> that ends a call is an end token: once the arguments close, the grammar lets
  // the model end there. Each call is a message of its own, the answer's last: one call an answer.
  callLayout: (name) => ({ begin: `${harmonyTrigger}functions.${name} <|constrain|>json<|message|>`, end: "" }),
  separator: "<|start|>assistant",
  trigger: harmonyTrigger,
};

const deepseek = {
  callsBegin: "<｜tool▁calls▁begin｜>",
  callsEnd: "<｜tool▁calls▁end｜>",
  callBegin: "<｜tool▁call▁begin｜>",
  callEnd: "<｜tool▁call▁end｜>",
  sep: "<｜tool▁sep｜>",
};

/**
 * `text` without a <｜tool▁calls▁begin｜> the answer's end cut off (the token budget, with no
 * steering for this layout): its start up to the full-width bar at least. A "<" alone is prose's
 * (an answer cut within the bar's bytes ends before it: see withoutUnfinishedCharacter).
 */
function withoutCutMarker(text: string): string {
  for (let n = Math.min(deepseek.callsBegin.length - 1, text.length); n >= 2; n--)
    if (text.endsWith(deepseek.callsBegin.slice(0, n))) return text.slice(0, -n).trimEnd();
  return text;
}

/**
 * A DeepSeek format: each call's head after <｜tool▁call▁begin｜> (`head`: the function's name
 * in its group 1, up to where the arguments' JSON starts), what closes it up to
 * <｜tool▁call▁end｜> (`tail`), and the calls' layout for the grammar.
 */
function deepseekFormat(
  name: "deepseek-v3" | "deepseek-v31",
  head: RegExp,
  tail: RegExp,
  layout: Pick<ToolCallFormat, "callLayout" | "separator" | "list">,
): ToolCallFormat {
  /** The call whose head is at `at` (past <｜tool▁call▁begin｜>), and where it ends (past <｜tool▁call▁end｜>); none if it does not read (cut off). */
  function readOne(text: string, at: number): { call: ToolCall; end: number } | undefined {
    const read = headedCall(text, at, head, openaiCallId);
    if (!read) return undefined;
    const closing = tail.exec(text.slice(read.end));
    return closing ? { call: read.call, end: read.end + closing[0].length } : undefined;
  }
  return {
    name,
    markers: [deepseek.callsBegin],
    anywhere: true,
    // As vLLM's deepseekv3/deepseekv31 parsers: prose before <｜tool▁calls▁begin｜>, then each
    // call in turn. The first call that does not read was cut off by a stop string or the token
    // budget, and is dropped with what follows it; prose after <｜tool▁calls▁end｜> is kept too.
    parse(text) {
      const first = text.indexOf(deepseek.callsBegin);
      if (first < 0) return { content: withoutCutMarker(text), calls: [] };
      const calls: ToolCall[] = [];
      let at = first + deepseek.callsBegin.length;
      let cut = false;
      for (;;) {
        at += /^\s*/.exec(text.slice(at))![0].length;
        if (!text.startsWith(deepseek.callBegin, at)) break;
        const read = readOne(text, at + deepseek.callBegin.length);
        if (!read) {
          cut = true;
          break;
        }
        calls.push(read.call);
        at = read.end;
      }
      let after = cut ? "" : text.slice(at);
      // A marker the answer's end cut off is dropped.
      if (after.startsWith(deepseek.callsEnd)) after = after.slice(deepseek.callsEnd.length);
      else if (deepseek.callsEnd.startsWith(after) || deepseek.callBegin.startsWith(after)) after = "";
      return { content: proseAround(text.slice(0, first), after), calls };
    },
    callHead: callHeads(new RegExp(`${deepseek.callBegin}${head.source.slice(1)}(?=\\{)`), openaiCallId),
    ...layout,
    trigger: deepseek.callsBegin,
    // Their templates join a call's arguments to their text with "+".
    argumentsAsText: true,
  };
}

const deepseekV3 = deepseekFormat(
  "deepseek-v3",
  // vLLM reads `type<｜tool▁sep｜>name\n```json\n`; the fence is optional here.
  /^[^\n<]*<｜tool▁sep｜>([^\n<`]+)\s*(?:```(?:json)?\s*)?/,
  /^\s*(?:```)?\s*<｜tool▁call▁end｜>/,
  {
    callLayout: (name) => ({
      begin: `${deepseek.callBegin}function${deepseek.sep}${name}\n\`\`\`json\n`,
      end: `\n\`\`\`${deepseek.callEnd}`,
    }),
    separator: "\n",
    list: { begin: deepseek.callsBegin, end: deepseek.callsEnd },
  },
);

const deepseekV31 = deepseekFormat(
  "deepseek-v31",
  /^([^\n<]+)<｜tool▁sep｜>\s*/,
  /^\s*<｜tool▁call▁end｜>/,
  // Laid out for the grammar with <｜tool▁call▁begin｜> between calls (xgrammar takes no empty
  // separator): the first call's opens the list.
  {
    callLayout: (name) => ({ begin: `${name}${deepseek.sep}`, end: deepseek.callEnd }),
    separator: deepseek.callBegin,
    list: { begin: deepseek.callsBegin + deepseek.callBegin, end: deepseek.callsEnd },
  },
);

const phi4Marker = "functools[";
const phi4mini: ToolCallFormat = {
  name: "phi4mini",
  markers: [phi4Marker],
  anywhere: true,
  // One JSON list of calls after "functools" (vLLM's phi4mini parser). Unlike vLLM, which drops
  // it, prose around the list is the content, as for the other families; a list that does not
  // close was cut off by a stop string or the token budget, and is dropped.
  parse(text) {
    const at = text.indexOf(phi4Marker);
    if (at < 0) return { content: text, calls: [] };
    const listAt = at + phi4Marker.length - 1;
    const end = jsonEnd(text, listAt);
    if (end < 0) {
      const cut = /^\s*(\{|$)/.test(text.slice(listAt + 1));
      return cut ? { content: text.slice(0, at).trim(), calls: [] } : { content: text, calls: [] };
    }
    const answer = onlyCalls(text, parseJson(text.slice(listAt, end)), openaiCallId);
    if (answer.calls.length === 0) return answer;
    return { content: proseAround(text.slice(0, at), text.slice(end)), calls: answer.calls };
  },
  callHead: callHeads(jsonCallHead, openaiCallId),
  callLayout: (name) => jsonCall(name, "arguments"),
  separator: ", ",
  list: { begin: phi4Marker, end: "]" },
  trigger: phi4Marker,
};

export const toolCallFormats = {
  hermes,
  llama3,
  mistral,
  mistralArgs,
  qwen3coder,
  harmony,
  deepseekV3,
  deepseekV31,
  phi4mini,
};

/** How a chat template handles tools: natively (it renders `tools` itself) in one format, or not at all. */
export interface ToolTemplate {
  native: boolean;
  format: ToolCallFormat;
}

export function toolTemplate(chatTemplate: string | undefined): ToolTemplate {
  const t = chatTemplate ?? "";
  if (/\btools\b/.test(t)) {
    if (t.includes("<|channel|>")) return { native: true, format: harmony };
    // DeepSeek V3's and R1's templates fence each call's JSON in ```json; V3.1's writes it bare.
    if (t.includes(deepseek.callsBegin))
      return { native: true, format: t.includes("```json") ? deepseekV3 : deepseekV31 };
    // vLLM's Phi-4-mini template asks for calls as functools[...].
    if (t.includes("functools[")) return { native: true, format: phi4mini };
    // Qwen3-Coder's and Qwen3.5's templates show calls as XML inside <tool_call>.
    if (t.includes("<tool_call>") && t.includes("<function=")) return { native: true, format: qwen3coder };
    if (t.includes("<tool_call>")) return { native: true, format: hermes };
    if (t.includes("[TOOL_CALLS]")) return { native: true, format: t.includes("[ARGS]") ? mistralArgs : mistral };
    if (t.includes("<|python_tag|>") || t.includes("ipython")) return { native: true, format: llama3 };
  }
  // A template without tools (or in a format we do not read): we describe the tools in the
  // system prompt ourselves and ask for hermes-style calls.
  return { native: false, format: hermes };
}
