// Constrained decoding: JSON (any object) or a JSON Schema enforced while sampling, so the
// answer is valid by construction. xgrammar (compiled to WASM) turns the schema into a grammar
// over the model's vocabulary; at each step its allowed-token bitmask becomes one boolean
// array and one mx.where that sets every other logit to -inf. When the JSON is complete only
// the end-of-sequence tokens stay allowed, so generation ends with finish reason "stop".
// Other grammars (tool calls, see tools/) go through createGrammarConstraint as EBNF.
//
// Use: `const c = await createJsonConstraint(tokenizer, { schema }, { maxTokens })`, pass
// `c.processor` in `logitsProcessors`, `c.dispose()` when the sequence is done. Each constraint
// carries its own matcher, so sequences are constrained independently; the latest compiled
// grammars are cached per tokenizer and grammar. Given the sequence's max_tokens, the
// constraint also steers to the shortest valid completion as the budget runs out (see
// budget/), so an answer cut by the budget still parses.
import { createHash } from "node:crypto";
import Ajv, { type ErrorObject, type ValidateFunction } from "ajv";
import { setNewest } from "../bounded-map";
import type * as XG from "@mlc-ai/web-xgrammar";
// The library's text, evaluated by us (see loadInstance): one WASM instance per evaluation.
import xgrammarSource from "@mlc-ai/web-xgrammar/lib/index.js" with { type: "text" };
import * as mx from "../mlx";
import { SchemaError } from "../errors";
import { compileAnswerSchema } from "./json-schema";
import type { MxArray } from "../mlx";
import type { Tokenizer } from "../tokenizer/tokenizer";
import type { LogitsProcessor } from "./sampling";
import {
  InfiniteSchemaError,
  JsonProgress,
  OversizedSchemaError,
  SchemaShapes,
  UnsteerableSchemaError,
} from "./budget/json-progress";
import { formatPattern } from "./budget/pattern";
import { budgetSteering, type BudgetSteering } from "./budget/steering";

/** "json": any JSON object. A schema: JSON matching it (`strict`, default true: no properties or items the schema does not name). */
export type JsonFormat = "json" | { schema: object; strict?: boolean };

export interface GrammarConstraint {
  /** The logits processor for a request (GenerationSpec.processors); it follows the sequence's history itself. */
  processor: LogitsProcessor;
  /**
   * The processor for an answer the grammar shapes in part: the tokens `shaped` refuses (a
   * reasoning before the answer) are the model's own, and a step that writes one keeps its
   * logits. The token budget still counts every generated token, as max_tokens does. (A
   * constraint serves one sequence: use this processor or `processor`, not both.)
   */
  processorShaping(shaped: ShapedTokens): LogitsProcessor;
  /**
   * Whether `answer` (the generated tokens, without the end-of-sequence token) is complete under
   * the grammar. The processor never sees an answer's last token (no step follows it), so the
   * caller hands over the whole answer.
   */
  accepted(answer: readonly number[]): boolean;
  /** Whether the token budget narrowed the grammar's choices (the answer was closed early to stay valid). */
  closedEarly(): boolean;
  /** Frees the matcher (the constraint must not be used afterwards). Safe to call twice. */
  dispose(): void;
}

/** Whether the grammar shapes the token at `index` of a sequence's history (the next one's at `history.length`); asked in order. */
export type ShapedTokens = (history: readonly number[], index: number) => boolean;

// Defined with the other typed errors (the CLI's error layer names it without loading MLX).
export { SchemaError };

// ---------------------------------------------------------------------------------------------
// The xgrammar instance. The WASM build aborts on a schema it refuses, and every abort leaks
// part of its stack: after some dozens the instance is broken. So we evaluate the library
// ourselves, count aborts, and move to a fresh instance well before that (matchers made on
// the old one keep working: they never abort).

type Xg = typeof XG;

/** The parts of xgrammar's embind module we call ourselves (see newTokenizerInfo). */
interface Binding {
  vecStringFromJSArray(values: string[]): { delete(): void };
  vecIntFromJSArray(values: number[]): { delete(): void };
  TokenizerInfo: new (...args: unknown[]) => unknown;
  GrammarMatcher: new (...args: unknown[]) => unknown;
}

interface Instance {
  xg: Xg;
  binding: Binding;
  /** The instance's linear memory, to read bitmasks without a copy through embind. */
  memory: WebAssembly.Memory | undefined;
  /** Set while a call's diagnostics are collected instead of printed. */
  log: string[] | undefined;
  aborts: number;
  /** Whether reading a bitmask straight from memory was checked to agree with the library. */
  directBitmask: boolean;
}

const MAX_ABORTS = 4;
let current: Promise<Instance> | undefined;
let loading: Promise<unknown> = Promise.resolve();

/** Loads xgrammar's WASM once (later calls return at once). Everything else awaits it too. */
export async function initGrammar(): Promise<void> {
  await instance();
}

function instance(): Promise<Instance> {
  current ??= loadInstance();
  return current;
}

async function loadInstance(): Promise<Instance> {
  // One load at a time: it briefly patches globals to catch the instance's memory and stderr.
  const previous = loading;
  let done!: () => void;
  loading = new Promise<void>((resolve) => (done = resolve));
  await previous;
  const exports = {} as Xg;
  const inst: Instance = {
    xg: exports,
    binding: undefined as unknown as Binding,
    memory: undefined,
    log: undefined,
    aborts: 0,
    directBitmask: false,
  };
  const originalLog = console.log;
  const originalError = console.error;
  const originalInstantiate = WebAssembly.instantiate;
  try {
    new Function(
      "exports",
      "module",
      "require",
      "__filename",
      withBindingExported(xgrammarSource as unknown as string),
    )(exports, { exports }, require, "/xgrammar/index.js");
    // The emscripten module binds console.log and console.error when it starts: route both
    // through us (its warnings go to stdout, which carries the answer): collected during a
    // guarded call, else sent to stderr.
    console.log = console.error = (...args: unknown[]) => {
      if (inst.log) inst.log.push(args.map(String).join(" "));
      else originalError(...args);
    };
    (WebAssembly as { instantiate: unknown }).instantiate = async (...args: unknown[]) => {
      const result = await (
        originalInstantiate as (...a: unknown[]) => Promise<WebAssembly.WebAssemblyInstantiatedSource>
      )(...args);
      const wasm =
        (result as { instance?: WebAssembly.Instance }).instance ?? (result as unknown as WebAssembly.Instance);
      inst.memory = Object.values(wasm.exports).find((e): e is WebAssembly.Memory => e instanceof WebAssembly.Memory);
      return result;
    };
    await exports.Testings._jsonSchemaToEBNF('{"type":"integer"}');
    inst.binding = (exports as unknown as { [BINDING_EXPORT]: () => Binding })[BINDING_EXPORT]();
  } finally {
    console.log = originalLog;
    console.error = originalError;
    WebAssembly.instantiate = originalInstantiate;
    done();
  }
  await checkDirectBitmask(inst);
  return inst;
}

// web-xgrammar's factories copy their arguments into C++ vectors they never free: the whole
// vocabulary with each TokenizerInfo (~2.5 MB of xgrammar's memory a vocabulary for SmolLM2's:
// disposing the TokenizerInfo never gave it back), the stop tokens and a TokenizerInfo handle
// with each matcher (~46 bytes a request), and compileGrammar(text) never frees the Grammar it
// parses (~4.7 KB a compiled grammar). So we make these through its binding and free what we
// hand it: the module's binding is exported by the text we evaluate.
const BINDING_DECLARATION = "let binding = null;";
const BINDING_EXPORT = "__mlxBinding";

function withBindingExported(source: string): string {
  if (!source.includes(BINDING_DECLARATION))
    throw new Error(`web-xgrammar's module no longer declares "${BINDING_DECLARATION}": update withBindingExported`);
  return source.replace(BINDING_DECLARATION, `${BINDING_DECLARATION} exports.${BINDING_EXPORT} = () => binding;`);
}

/** xgrammar's TokenizerInfo.createTokenizerInfo, with the vectors it converts freed. */
function newTokenizerInfo(
  inst: Instance,
  vocab: string[],
  vocabType: string,
  prependSpace: boolean,
  vocabSize: number,
  stopIds: number[],
): XG.TokenizerInfo {
  const vocabVector = inst.binding.vecStringFromJSArray(vocab);
  const stopVector = inst.binding.vecIntFromJSArray(stopIds);
  try {
    const handle = new inst.binding.TokenizerInfo(
      vocabVector,
      vocabType.toUpperCase(),
      vocabSize,
      stopVector,
      prependSpace,
    );
    return new inst.xg.TokenizerInfo(handle);
  } finally {
    vocabVector.delete();
    stopVector.delete();
  }
}

/** xgrammar's GrammarMatcher.createGrammarMatcher, with its stop-token vector freed and no TokenizerInfo handle made. */
function newMatcher(
  inst: Instance,
  grammar: XG.CompiledGrammar,
  stopIds: number[],
  vocabSize: number,
): XG.GrammarMatcher {
  const stopVector = inst.binding.vecIntFromJSArray(stopIds);
  try {
    const handle = new inst.binding.GrammarMatcher(
      (grammar as unknown as { handle: unknown }).handle,
      stopVector,
      false,
      -1,
    );
    const Matcher = inst.xg.GrammarMatcher as unknown as new (handle: unknown, vocabSize: number) => XG.GrammarMatcher;
    return new Matcher(handle, vocabSize);
  } finally {
    stopVector.delete();
  }
}

/** compiler.compileGrammar(ebnf), with the Grammar it parses freed (the compiled grammar keeps its own). */
async function compileEbnf(inst: Instance, compiler: XG.GrammarCompiler, ebnf: string): Promise<XG.CompiledGrammar> {
  const parsed = await inst.xg.Grammar.fromEBNF(ebnf);
  try {
    return await compiler.compileGrammar(parsed);
  } finally {
    parsed.dispose();
  }
}

/** Runs an xgrammar call that may abort, turning an abort into an Error with xgrammar's message. */
async function guarded<T>(inst: Instance, what: string, call: () => Promise<T> | T): Promise<T> {
  const log: string[] = [];
  inst.log = log;
  try {
    const result = await call();
    const warning = log.find((line) => line.includes("[WARNING]"));
    if (warning) throw new SchemaError(`${what}: ${diagnostic(warning)} (it would not be enforced)`);
    return result;
  } catch (error) {
    if (error instanceof SchemaError) throw error;
    const fatal = log.find((line) => line.includes("[FATAL]")) ?? log.find((line) => line !== "Aborted()");
    // A trap other than an abort (a deeply nested schema ran xgrammar's recursion past the end of
    // its WASM stack) leaks the whole stack, where an abort leaks part: every later call trapped too.
    const trapped = error instanceof WebAssembly.RuntimeError && !error.message.startsWith("Aborted(");
    if ((trapped || ++inst.aborts >= MAX_ABORTS) && current) {
      // Retire this instance; compiled grammars made on it stay usable by their matchers.
      current = undefined;
      perVocabulary = new Map();
    }
    if (trapped) throw new SchemaError(`${what}: it nests too deeply or is too large for constrained decoding`);
    throw new SchemaError(`${what}: ${fatal ? diagnostic(fatal) : (error as Error).message}`);
  } finally {
    inst.log = undefined;
  }
}

/** "[FATAL] /path/file.cc:123: Check failed: (...) is false: message" → "message". */
function diagnostic(line: string): string {
  return line
    .replace(/^\[(FATAL|WARNING)\]\s+\S+:\d+:\s*/, "")
    .replace(/^Check failed: \(.*?\) is false:\s*/, "")
    .trim();
}

// ---------------------------------------------------------------------------------------------
// Schema validation: ajv says whether it is JSON Schema at all, then we refuse what xgrammar
// would silently not enforce, then xgrammar converts it (and may refuse it).

// Made on first use: building an Ajv instance costs start-up time every command would pay.
let ajv: Ajv | undefined;

// Keywords xgrammar parses but does not enforce: accepting them would break "valid by construction".
const UNENFORCED = [
  "not",
  "if",
  "then",
  "else",
  "multipleOf",
  "uniqueItems",
  "contains",
  "minContains",
  "maxContains",
  "dependentRequired",
  "dependentSchemas",
  "dependencies",
  "unevaluatedItems",
];
/** The counts a schema may bound, and the largest xgrammar reads. */
const COUNTS = ["minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"];
const MAX_COUNT = 2 ** 31 - 1;
const SUBSCHEMA_MAPS = ["properties", "$defs", "definitions", "patternProperties", "dependentSchemas"];
const SUBSCHEMA_LISTS = ["anyOf", "oneOf", "allOf", "prefixItems"];
const SUBSCHEMA_SINGLE = ["items", "additionalProperties", "propertyNames", "additionalItems", "unevaluatedProperties"];

/** Schemas checked, by `strict` and canonical text; the latest MAX_VALIDATED_SCHEMAS kept (a client may send a new one each request). */
const validated = new Map<string, SchemaError | true>();
export const MAX_VALIDATED_SCHEMAS = 1024;

const rememberValidation = (key: string, result: SchemaError | true) =>
  setNewest(validated, key, result, MAX_VALIDATED_SCHEMAS);

/** How many schema checks are remembered (for tests). */
export const validatedSchemaCount = (): number => validated.size;

/**
 * Checks that `schema` is a JSON Schema this engine can enforce; throws a SchemaError whose
 * message names the offending part (a JSON pointer into the schema) otherwise.
 */
export async function validateSchema(schema: unknown, { strict = true }: { strict?: boolean } = {}): Promise<void> {
  if (typeof schema !== "object" || schema === null || Array.isArray(schema)) {
    throw new SchemaError("invalid schema: a JSON Schema must be a JSON object");
  }
  const key = `${strict}:${canonicalJson(schema)}`;
  const known = validated.get(key);
  if (known === true) return;
  if (known) throw known;
  try {
    // Before ajv, whose own compile of a large schema holds the event loop too (a 1 MB enum: 15 s).
    checkGrammarSize(key.length - `${strict}:`.length, "the schema");
    checkWellFormedStrings(schema, "");
    checkJsonSchema(schema);
    walkSchema(schema as Record<string, unknown>, "");
    checkGrammarBudget(await schemaEbnf(schema, strict));
    checkFiniteValue(schema as Record<string, unknown>, strict);
    rememberValidation(key, true);
  } catch (error) {
    const e = error instanceof SchemaError ? error : new SchemaError(`invalid schema: ${(error as Error).message}`);
    rememberValidation(key, e);
    throw e;
  }
}

/**
 * A schema that needs itself in every branch ({"$ref": "#"}, a required child of its own kind)
 * has no finite value: xgrammar's grammar of it would allow no token at all, or none that ends.
 * What the shortest-value reading cannot follow otherwise is left to the grammar alone.
 */
function checkFiniteValue(schema: Record<string, unknown>, strict: boolean): void {
  try {
    new SchemaShapes(schema, strict).minText(schema);
  } catch (error) {
    if (error instanceof InfiniteSchemaError)
      throw new SchemaError(`unsupported schema: no finite JSON value matches it (${error.message})`);
    if (error instanceof OversizedSchemaError) throw new SchemaError(`unsupported schema: ${error.message}`);
    if (!(error instanceof UnsteerableSchemaError)) throw error;
  }
}

/** Throws a SchemaError unless `schema` is JSON Schema at all (whether it can be enforced is validateSchema's question). */
export function checkJsonSchema(schema: object): void {
  const { $schema: _ignored, ...rest } = schema as Record<string, unknown>; // drafts ajv's default build lacks
  ajv ??= new Ajv({ strict: false, validateFormats: false, allErrors: false });
  if (!ajv.validateSchema(rest)) throw new SchemaError(`invalid schema: ${ajvMessage(ajv.errors ?? [])}`);
  try {
    // Unresolvable $ref, bad regex. Not on `ajv`: an Ajv instance keeps every schema it compiles
    // for good, and schemas come from requests (1,200 new ones grew the heap by ~120 MB).
    compileAnswerSchema(rest);
  } catch (error) {
    // Ajv follows references that lead only to references (a to b, b to a) until the stack ends.
    if (error instanceof RangeError)
      throw new SchemaError(
        "invalid schema: its $ref references go round in a cycle that reaches no schema of a value",
      );
    throw new SchemaError(`invalid schema: ${(error as Error).message}`);
  }
}

/**
 * Throws a SchemaError naming the first string (a value, or a property name) in `node` that holds
 * a lone UTF-16 surrogate: no Unicode character, so no answer can hold it. xgrammar refused it
 * with its JSON parser's "syntax error" and the whole schema quoted back, or embind with "String
 * contained an illegal UTF-16 sequence", naming no place.
 */
function checkWellFormedStrings(node: unknown, path: string): void {
  const refuse = (where: string) => {
    throw new SchemaError(
      `invalid schema: ${where || "/"} holds a lone UTF-16 surrogate, which is not a Unicode character`,
    );
  };
  if (typeof node === "string") {
    if (!node.isWellFormed()) refuse(path);
  } else if (Array.isArray(node)) node.forEach((v, i) => checkWellFormedStrings(v, `${path}/${i}`));
  else if (node && typeof node === "object")
    for (const [k, v] of Object.entries(node)) {
      if (!k.isWellFormed()) refuse(`${path}/${escapePointer(k)} (the name)`);
      checkWellFormedStrings(v, `${path}/${escapePointer(k)}`);
    }
}

function ajvMessage(errors: ErrorObject[]): string {
  const e = errors[0];
  if (!e) return "not valid JSON Schema";
  const where = e.instancePath || "/";
  const allowed = (e.params as { allowedValues?: unknown[] }).allowedValues;
  return `${where} ${e.message}${allowed ? ` (${allowed.map((v) => JSON.stringify(v)).join(", ")})` : ""}`;
}

function walkSchema(node: unknown, path: string): void {
  if (typeof node !== "object" || node === null || Array.isArray(node)) return;
  const s = node as Record<string, unknown>;
  for (const keyword of UNENFORCED) {
    if (keyword in s)
      throw new SchemaError(`unsupported schema: ${path}/${keyword} is not supported in constrained decoding`);
  }
  // xgrammar's email grammar allows backslash escapes that are not valid JSON (a pattern beside it is enforced instead).
  if ((s.format === "email" || s.format === "idn-email") && typeof s.pattern !== "string")
    throw new SchemaError(
      `unsupported schema: ${path}/format "${s.format}" is not supported in constrained decoding (use a pattern)`,
    );
  if (Array.isArray(s.allOf) && s.allOf.length > 1)
    throw new SchemaError(`unsupported schema: ${path}/allOf with more than one schema is not supported`);
  checkIgnoredSiblings(s, path);
  checkPropertyListReplaced(s, path);
  checkRequiredDefined(s, path);
  if (typeof s.pattern === "string") {
    checkPattern(s.pattern, `${path}/pattern`);
    // A format beside it is an annotation of it (JSON Schema 2020-12's default; zod writes each
    // of its string formats so): the pattern is what is enforced (see formatAsPattern).
    const also = ["minLength", "maxLength"].find((k) => k in s);
    if (also)
      throw new SchemaError(
        `unsupported schema: ${path}/${also} cannot be combined with a pattern in constrained decoding (put the length in the pattern)`,
      );
  } else if (typeof s.format === "string") {
    // A format's grammar would silently drop the length.
    const length = ["minLength", "maxLength"].find((k) => k in s);
    if (length)
      throw new SchemaError(
        `unsupported schema: ${path}/${length} cannot be combined with a format in constrained decoding (use a pattern instead)`,
      );
  }
  // Without a type xgrammar allows any value, its numbers unbounded.
  const untypedBound = NUMBER_BOUNDS.find((k) => k in s);
  if (untypedBound && s.type === undefined && REPLACING.every((k) => !(k in s)))
    throw new SchemaError(
      `unsupported schema: ${path}/${untypedBound} needs "type": "integer" or "number" beside it in constrained decoding`,
    );
  const isNumber = s.type === "number" || (Array.isArray(s.type) && s.type.includes("number"));
  for (const bound of NUMBER_BOUNDS) {
    const v = s[bound];
    // xgrammar's range grammar for fractional bounds is wrong (it can emit invalid numbers).
    if (isNumber && typeof v === "number" && !Number.isInteger(v)) {
      throw new SchemaError(
        `unsupported schema: ${path}/${bound} must be a whole number in constrained decoding (got ${v})`,
      );
    }
  }
  // xgrammar reads counts as 32-bit integers: a larger one wrapped around (maxLength 3e9 was "greater
  // than maxLength -1294967296", maxItems 1e12 an EBNF parser error).
  for (const count of COUNTS) {
    const v = s[count];
    if (typeof v === "number" && v > MAX_COUNT)
      throw new SchemaError(
        `unsupported schema: ${path}/${count} ${v} is past what constrained decoding counts to (${MAX_COUNT})`,
      );
  }
  // A patternProperties key is a pattern for the property names.
  if (s.patternProperties && typeof s.patternProperties === "object")
    for (const key of Object.keys(s.patternProperties))
      checkPattern(key, `${path}/patternProperties/${escapePointer(key)}`);
  for (const name of SUBSCHEMA_MAPS) {
    const map = s[name];
    if (map && typeof map === "object")
      for (const [k, v] of Object.entries(map)) walkSchema(v, `${path}/${name}/${escapePointer(k)}`);
  }
  for (const name of SUBSCHEMA_LISTS) {
    const list = s[name];
    if (Array.isArray(list)) list.forEach((v, i) => walkSchema(v, `${path}/${name}/${i}`));
  }
  for (const name of SUBSCHEMA_SINGLE) walkSchema(s[name], `${path}/${name}`);
  if (Array.isArray(s.items)) s.items.forEach((v, i) => walkSchema(v, `${path}/items/${i}`));
}

// xgrammar reads a schema by its first keyword in this order and ignores the rest of the node:
// beside a $ref, say, a maxLength would not be enforced.
const REPLACING = ["$ref", "const", "enum", "anyOf", "oneOf", "allOf"];
// The keywords that constrain a value (those that would be ignored beside a replacing one).
const CONSTRAINING = new Set([
  ...REPLACING,
  "type",
  "properties",
  "required",
  "additionalProperties",
  "patternProperties",
  "propertyNames",
  "minProperties",
  "maxProperties",
  "items",
  "prefixItems",
  "additionalItems",
  "unevaluatedProperties",
  "minItems",
  "maxItems",
  "minLength",
  "maxLength",
  "pattern",
  "format",
  "minimum",
  "maximum",
  "exclusiveMinimum",
  "exclusiveMaximum",
]);

/**
 * Refuses constraints beside a keyword that replaces the node in xgrammar ($ref, const, enum,
 * anyOf, oneOf, allOf). Beside const or enum they are fine when every value listed meets them
 * (`{"type": "string", "enum": [...]}`): then they hold already.
 */
function checkIgnoredSiblings(s: Record<string, unknown>, path: string): void {
  const replacing = REPLACING.find((k) => k in s);
  if (!replacing) return;
  const ignored = Object.keys(s).filter((k) => k !== replacing && CONSTRAINING.has(k));
  if (ignored.length === 0) return;
  if (replacing === "const" || replacing === "enum") {
    const values = replacing === "const" ? [s.const] : Array.isArray(s.enum) ? s.enum : [];
    const rest = Object.fromEntries(ignored.map((k) => [k, s[k]]));
    if (REPLACING.every((k) => !(k in rest)) && values.every((v) => meets(rest, v))) return;
  }
  throw new SchemaError(
    `unsupported schema: ${path}/${ignored[0]} cannot be combined with ${replacing} in constrained decoding (it would not be enforced; ${SIBLING_ADVICE[replacing]})`,
  );
}

const SIBLING_ADVICE: Record<string, string> = {
  $ref: "move it into the referenced schema",
  const: "the value does not meet it",
  enum: "not every value listed meets it",
  anyOf: "move it into each alternative",
  oneOf: "move it into each alternative",
  allOf: "move it into the schema in allOf",
};

/** Validators of the constraints beside a const or enum, by canonical text: the same few recur across schemas. */
const siblingValidators = new Map<string, ValidateFunction>();

/** Whether `value` meets the constraints of `schema` (one without references). */
function meets(schema: Record<string, unknown>, value: unknown): boolean {
  try {
    const key = canonicalJson(schema);
    let validate = siblingValidators.get(key);
    if (!validate) setNewest(siblingValidators, key, (validate = compileAnswerSchema(schema)), MAX_VALIDATED_SCHEMAS);
    return validate(value) === true;
  } catch {
    return false;
  }
}

/**
 * Refuses what xgrammar drops where `propertyNames` or `patternProperties` replace an object's
 * list of properties: under propertyNames it writes any name propertyNames allows followed by
 * any value, under patternProperties only names its patterns match. So `properties` (and the
 * `required` among them: `{}` came out where one was required) would not be enforced beside
 * either, nor `patternProperties` and `additionalProperties` (a schema, or false) beside
 * propertyNames.
 */
function checkPropertyListReplaced(s: Record<string, unknown>, path: string): void {
  const describes = (k: string) =>
    k === "additionalProperties"
      ? s[k] !== undefined && s[k] !== true
      : s[k] !== undefined && Object.keys(s[k] as object).length > 0;
  const replacing =
    "propertyNames" in s && !constrainsNoName(s.propertyNames)
      ? "propertyNames"
      : describes("patternProperties")
        ? "patternProperties"
        : undefined;
  if (!replacing) return;
  const dropped =
    replacing === "propertyNames" ? ["properties", "patternProperties", "additionalProperties"] : ["properties"];
  const ignored = dropped.find(describes);
  if (ignored)
    throw new SchemaError(
      `unsupported schema: ${path}/${ignored} cannot be combined with ${replacing} in constrained decoding (it would not be enforced)`,
    );
}

/**
 * Whether a `propertyNames` schema holds for every name: `true`, `{}`, or `{"type": "string"}`
 * (every name is a string), which zod writes for a record of string keys. Such a one is dropped
 * (see replaceBoundedNumbers), so the properties and additionalProperties beside it stand.
 */
function constrainsNoName(names: unknown): boolean {
  if (names === true) return true;
  if (typeof names !== "object" || names === null || Array.isArray(names)) return false;
  const n = names as Record<string, unknown>;
  return Object.keys(n).every((k) => !CONSTRAINING.has(k) || (k === "type" && n.type === "string"));
}

/** Refuses `required` names that `properties` does not define: xgrammar would not require them. */
function checkRequiredDefined(s: Record<string, unknown>, path: string): void {
  if (!Array.isArray(s.required)) return;
  const properties = s.properties && typeof s.properties === "object" ? s.properties : {};
  const missing = s.required.find((name) => typeof name === "string" && !Object.hasOwn(properties, name));
  if (missing !== undefined)
    throw new SchemaError(
      `unsupported schema: ${path}/required names '${missing}', which ${path}/properties does not define (constrained decoding requires only defined properties)`,
    );
}

function checkPattern(pattern: string, where: string): void {
  if (/"|\\\\|\\[tnrfv0]|\\x[01]|\\u00[01]|\\c/.test(pattern)) {
    throw new SchemaError(
      `unsupported schema: ${where} names a quote, a backslash or a control character, which constrained decoding cannot escape`,
    );
  }
  if (/\(\?<?[=!]/.test(pattern))
    throw new SchemaError(`unsupported schema: ${where} uses a lookaround assertion, which is not supported`);
  if (/\\[1-9]|\\k</.test(pattern))
    throw new SchemaError(`unsupported schema: ${where} uses a backreference, which is not supported`);
  // xgrammar writes \S, and a negated class of \s, \W or \D, as classes reaching past ASCII,
  // which its grammar parser then refuses ("Negative Character class contains byte greater than
  // 127") only once a model's tokenizer compiles it.
  if (/\\S/.test(pattern) || characterClasses(pattern).some((cls) => cls.startsWith("[^") && /\\[sWD]/.test(cls)))
    throw new SchemaError(
      `unsupported schema: ${where} uses \\S, or \\s, \\W or \\D in a negated class, which constrained decoding cannot enforce (list the characters allowed instead, e.g. [!-~] for visible ASCII)`,
    );
  if (characterClasses(pattern).some((cls) => /[^\x00-\x7f]|\\u(?!00[0-7][0-9a-f])|\\x[89a-f]|\\p/i.test(cls)))
    throw new SchemaError(
      `unsupported schema: ${where} has a non-ASCII character in a character class, which constrained decoding cannot enforce (list the characters as alternatives instead)`,
    );
}

/**
 * The character classes ("[...]") of a regular expression, as written. xgrammar matches a class
 * only on ASCII: one with a non-ASCII member allows other characters than it lists (or none).
 */
function characterClasses(pattern: string): string[] {
  const classes: string[] = [];
  let start = -1;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "\\") i++;
    else if (c === "[" && start < 0) start = i;
    else if (c === "]" && start >= 0) {
      classes.push(pattern.slice(start, i + 1));
      start = -1;
    }
  }
  return classes;
}

const escapePointer = (key: string) => key.replaceAll("~", "~0").replaceAll("/", "~1");

/** JSON with object keys sorted, so equal schemas share one cache entry. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(
          Object.keys(v)
            .sort()
            .map((k) => [k, (v as Record<string, unknown>)[k]]),
        )
      : v,
  );
}

// ---------------------------------------------------------------------------------------------
// Per tokenizer: xgrammar's view of the vocabulary, its compiler, and compiled grammars.

interface TokenizerGrammars {
  inst: Instance;
  info: XG.TokenizerInfo;
  compiler: XG.GrammarCompiler;
  vocabSize: number;
  stopIds: number[];
  /** By key, the least recently used first. */
  compiled: Map<string, CompiledEntry>;
  /** Let go of (past MAX_VOCABULARIES): freed as its last constraint is disposed. */
  retired: boolean;
  /** Whether its compiler and TokenizerInfo were freed. */
  freed: boolean;
}

interface CompiledEntry {
  grammar: Promise<XG.CompiledGrammar>;
  /** Constraints taking it and not yet disposed: it is not freed while one of them may still use it. */
  users: number;
}

/**
 * Compiled grammars kept per tokenizer. Each holds its token masks in xgrammar's memory, and a
 * client may send a schema (or tools) of its own with every request: unbounded, they grew the
 * server's memory for good with each new one.
 */
export const MAX_COMPILED_GRAMMARS = 64;

/** Each tokenizer's vocabulary key (hashing a vocabulary costs a pass over it). */
const vocabularyKeys = new WeakMap<Tokenizer, string>();

/**
 * Per vocabulary, what xgrammar is given of it: a model loaded again (keep_alive 0, another
 * model loaded between) brings a new Tokenizer of the same vocabulary, which finds its
 * TokenizerInfo, compiler and compiled grammars here. The latest MAX_VOCABULARIES are kept
 * (the least recently used first): each holds ~2.5 MB of xgrammar's memory for SmolLM2's
 * vocabulary and up to MAX_COMPILED_GRAMMARS grammars, and a server that loads model after
 * model grew by that for every vocabulary it ever served. One let go is freed once no
 * constraint uses it.
 */
let perVocabulary = new Map<string, Promise<TokenizerGrammars>>();
export const MAX_VOCABULARIES = 4;

function grammarsFor(tokenizer: Tokenizer): Promise<TokenizerGrammars> {
  let described: ReturnType<typeof describeVocabulary> | undefined;
  const stopIds = [...tokenizer.eosTokenIds].filter((id) => id < tokenizer.vocabSize);
  let key = vocabularyKeys.get(tokenizer);
  if (key === undefined) {
    described = describeVocabulary(tokenizer);
    key = createHash("sha256")
      .update(JSON.stringify([described, tokenizer.vocabSize, stopIds]))
      .digest("hex");
    vocabularyKeys.set(tokenizer, key);
  }
  const known = perVocabulary.get(key);
  if (known) {
    perVocabulary.delete(key);
    perVocabulary.set(key, known);
    return known;
  }
  const made = buildTokenizerGrammars(described ?? describeVocabulary(tokenizer), tokenizer.vocabSize, stopIds);
  const vocabularies = perVocabulary;
  vocabularies.set(key, made);
  made.catch(() => vocabularies.get(key) === made && vocabularies.delete(key));
  for (const [oldest, entry] of vocabularies) {
    if (vocabularies.size <= MAX_VOCABULARIES) break;
    vocabularies.delete(oldest);
    entry.then(retire, () => {});
  }
  return made;
}

/** Lets go of a vocabulary: its grammars no constraint holds now, the rest as they are released, then its compiler and TokenizerInfo. */
function retire(t: TokenizerGrammars): void {
  t.retired = true;
  freeRetired(t);
}

function freeRetired(t: TokenizerGrammars): void {
  for (const [key, entry] of t.compiled) {
    if (entry.users > 0) continue;
    t.compiled.delete(key);
    entry.grammar.then(
      (grammar) => grammar.dispose(),
      () => {},
    );
  }
  if (t.compiled.size > 0 || t.freed) return;
  t.freed = true;
  t.compiler.dispose();
  t.info.dispose();
}

/** How many vocabularies xgrammar is given now (for tests). */
export const vocabularyCount = (): number => perVocabulary.size;

async function buildTokenizerGrammars(
  { vocab, vocabType, prependSpace }: ReturnType<typeof describeVocabulary>,
  vocabSize: number,
  stopIds: number[],
): Promise<TokenizerGrammars> {
  const inst = await instance();
  if (stopIds.length === 0)
    throw new Error("the model's tokenizer has no end-of-sequence token, so constrained output could not end");
  const info = newTokenizerInfo(inst, vocab, vocabType, prependSpace, vocabSize, stopIds);
  // Without xgrammar's own cache (ours, `compiled`, keys by grammar already): that cache keys a
  // grammar by its printed text, which writes a non-ASCII character as a hex escape of no fixed
  // width ("ß" then "e" prints as "\xdfe", read back as U+0DFE), so a property name, enum value
  // or literal with such a character would be compiled into another text.
  const compiler = await inst.xg.GrammarCompiler.createGrammarCompiler(info, false);
  return { inst, info, compiler, vocabSize, stopIds, compiled: new Map(), retired: false, freed: false };
}

// Special tokens some families write their tool calls with: a grammar must be able to pick them
// (gpt-oss's harmony heads each call's message with them; DeepSeek's wrap calls in theirs).
const TOOL_MARKER_TOKENS = new Set([
  "<｜tool▁calls▁begin｜>",
  "<｜tool▁call▁begin｜>",
  "<｜tool▁sep｜>",
  "<｜tool▁call▁end｜>",
  "<｜tool▁calls▁end｜>",
  "<tool_call>",
  "</tool_call>",
  "<|python_tag|>",
  "[TOOL_CALLS]",
  "<|channel|>",
  "<|constrain|>",
  "<|message|>",
]);

/**
 * The vocabulary as xgrammar wants it: each id's token text in the tokenizer's own encoding
 * (byte-level "Ġ" forms, or sentencepiece "▁" with <0xXX> byte tokens), special tokens other
 * than the stop tokens and tool-call markers as "" so the grammar never picks them.
 */
export function describeVocabulary(tokenizer: Tokenizer): {
  vocab: string[];
  vocabType: "byte_level" | "byte_fallback" | "raw";
  prependSpace: boolean;
} {
  const vocab = new Array<string>(tokenizer.vocabSize);
  let byteTokens = 0;
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    const token = tokenizer.idToToken(id) ?? "";
    vocab[id] =
      tokenizer.isSpecial(id) && !tokenizer.eosTokenIds.has(id) && !TOOL_MARKER_TOKENS.has(token) ? "" : token;
    if (/^<0x[0-9A-Fa-f]{2}>$/.test(token)) byteTokens++;
  }
  if (tokenizer.isByteLevel) return { vocab, vocabType: "byte_level", prependSpace: false };
  if (byteTokens >= 256 || vocab.some((t) => t.includes("\u2581")))
    return { vocab, vocabType: "byte_fallback", prependSpace: prependsSpace(tokenizer) };
  return { vocab, vocabType: "raw", prependSpace: false };
}

/** Whether a sentencepiece-style tokenizer puts "▁" before the text: seen by encoding a letter. */
function prependsSpace(tokenizer: Tokenizer): boolean {
  const [first] = tokenizer.encode("a", { addSpecialTokens: false });
  return first !== undefined && (tokenizer.idToToken(first) ?? "").startsWith("\u2581");
}

/**
 * A grammar for the constraint to follow, made on demand and compiled once per tokenizer and
 * `key`: EBNF text (its rule `root` first), or an xgrammar structural tag (text with tagged
 * parts such as tool calls). JSON formats and tool calls both reduce to it.
 */
export type GrammarSource = { key: string } & (
  | { ebnf: () => Promise<string> }
  | { structuralTag: () => Promise<XG.StructuralTag> }
);

// ---------------------------------------------------------------------------------------------
// The compile budget. xgrammar compiles a grammar on the engine's thread (its WASM build has no
// threads, and a compiled grammar cannot leave the instance its matchers run on, so it cannot
// be compiled in a Worker and handed over), and nothing can interrupt it: while it runs no
// request is answered, not even /health, and no stream gets a token. Measured on SmolLM2's
// vocabulary (49,152 tokens, on two shared CPU cores): each position of a counted repetition of
// a broad character class (a string's maxLength or minLength, a pattern's [^,]{0,n}) costs it a
// pass over the vocabulary, 10-30 ms (maxLength 50: 0.9 s, 100: 2-3 s, 256: up to 7 s; five
// strings of maxLength 100 to 104: 16 s with not one /health answer), though a bound in the
// thousands or more cost no more than 100 (3 s: xgrammar writes it another way); and a grammar
// costs ~1 s a 100 KB of its text (2,000 properties: 268 KB, 2.7 s; an enum of 10,000 values:
// 280 KB, 1.3 s). So a grammar past either budget is refused before it is compiled, as llama.cpp
// refuses a grammar's repetitions past 2,000, rather than stall every other request: one
// string of any length, or two, fit; a schema of many long strings is refused.

/** The most characters of a schema, or of the grammar made of it, that constrained decoding compiles. */
export const MAX_GRAMMAR_CHARS = 131_072;
/**
 * The most positions of counted character-class repetitions a grammar may hold, each distinct
 * repetition counting up to REPETITION_POSITIONS_COUNTED of its bound, a class that allows few
 * characters less than one that allows most (a string's maxLength of 200: 128; two: 256).
 */
export const MAX_REPEATED_POSITIONS = 256;
const REPETITION_POSITIONS_COUNTED = 128;

function checkGrammarSize(chars: number, what: string): void {
  if (chars > MAX_GRAMMAR_CHARS)
    throw new SchemaError(
      `unsupported schema: ${what} is too large for constrained decoding (${chars} characters${what === "the schema" ? "" : " of grammar"}, over the limit of ${MAX_GRAMMAR_CHARS}): compiling it would stall the server`,
    );
}

/**
 * Throws a SchemaError when compiling `grammar` (EBNF, or a structural tag as JSON, whose
 * grammars are `parts`) would cost past the budget.
 */
export function checkGrammarBudget(grammar: string, parts: string[] = [grammar]): void {
  checkGrammarSize(grammar.length, "the grammar (the schema, or the tools' schemas together)");
  const positions = parts.reduce((sum, part) => sum + repeatedPositions(part), 0);
  if (positions > MAX_REPEATED_POSITIONS)
    throw new SchemaError(
      `unsupported schema: its counted repetitions (maxLength, minLength, or a pattern's {m,n}) span ${Math.round(positions)} positions, over the limit of ${MAX_REPEATED_POSITIONS} for constrained decoding (each string's length counts up to ${REPETITION_POSITIONS_COUNTED}): compiling it would stall the server`,
    );
}

/**
 * The positions of counted repetitions in `grammar` (EBNF) that cost xgrammar a pass over the
 * vocabulary each: each distinct repetition counted once (xgrammar writes one rule for equal
 * subschemas), at most REPETITION_POSITIONS_COUNTED of its bound, weighted by how many of the 95
 * visible ASCII characters its broadest class allows (a negated class: most), and a group by its
 * alternatives too. Measured: [^"]{0,200} and a pattern's "(.){0,200}" 3 s, "(.|x){0,200}" 15 s;
 * a repeated literal or rule costs little (a pattern's "(a|b){0,300}" 0.4 s, maxItems 10,000
 * 13 ms), as does a narrow class ([0-9]{0,199}: 0.1 s).
 */
function repeatedPositions(grammar: string): number {
  const seen = new Set<string>();
  let positions = 0;
  // Open groups: where each starts, its broadest class so far, and its alternatives.
  const open: { start: number; breadth: number; alternatives: number }[] = [];
  const count = (end: number, part: string, breadth: number, alternatives: number) => {
    const bounds = /^\s*\{(\d+)(?:,(\d*))?\}/.exec(grammar.slice(end, end + 32));
    if (!bounds || breadth === 0) return;
    const key = part + bounds[0];
    if (seen.has(key)) return;
    seen.add(key);
    const bound = Math.max(Number(bounds[1]), bounds[2] ? Number(bounds[2]) : 0);
    positions += Math.min(bound, REPETITION_POSITIONS_COUNTED) * breadth * alternatives ** 2;
  };
  for (let i = 0; i < grammar.length; i++) {
    const c = grammar[i];
    if (c === '"') {
      for (i++; i < grammar.length && grammar[i] !== '"'; i++) if (grammar[i] === "\\") i++;
    } else if (c === "[") {
      const start = i;
      for (i++; i < grammar.length && grammar[i] !== "]"; i++) if (grammar[i] === "\\") i++;
      const cls = grammar.slice(start, i + 1);
      const breadth = classBreadth(cls);
      for (const group of open) group.breadth = Math.max(group.breadth, breadth);
      count(i + 1, cls, breadth, 1);
    } else if (c === "(") open.push({ start: i, breadth: 0, alternatives: 1 });
    else if (c === "|" && open.length > 0) open.at(-1)!.alternatives++;
    else if (c === ")" && open.length > 0) {
      const group = open.pop()!;
      count(i + 1, grammar.slice(group.start, i + 1), group.breadth, group.alternatives);
    } else if (c === "\n") open.length = 0;
  }
  return positions;
}

/** Every string in a structural tag (its grammars among them), each read as EBNF on its own. */
function grammarStrings(node: unknown): string[] {
  if (typeof node === "string") return [node];
  if (node && typeof node === "object") return Object.values(node).flatMap(grammarStrings);
  return [];
}

/** The share of the 95 visible ASCII characters a class ("[a-z0-9]", "[^...]") allows, roughly. */
function classBreadth(cls: string): number {
  if (cls.startsWith("[^")) return 1;
  let members = 0;
  const body = cls.slice(1, -1);
  for (let i = 0; i < body.length; ) {
    const first = body[i] === "\\" ? body.slice(i, (i += 2)) : body[i++]!;
    if (body[i] === "-" && i + 1 < body.length) {
      const last = body[i + 1] === "\\" ? body.slice(i + 1, (i += 3)) : body[(i += 2) - 1]!;
      members += Math.max(1, (last.at(-1)!.codePointAt(0) ?? 0) - (first.at(-1)!.codePointAt(0) ?? 0) + 1);
    } else members++;
  }
  return Math.min(1, members / 95);
}

/** The compiled grammar for `source`, taken for one constraint until releaseGrammar. */
function takeGrammar(t: TokenizerGrammars, source: GrammarSource): CompiledEntry {
  let entry = t.compiled.get(source.key);
  if (entry) t.compiled.delete(source.key);
  else {
    const grammar =
      "ebnf" in source
        ? source.ebnf().then((ebnf) => {
            checkGrammarBudget(ebnf);
            return guarded(t.inst, "unsupported grammar", () => compileEbnf(t.inst, t.compiler, ebnf));
          })
        : source.structuralTag().then((tag) => {
            checkGrammarBudget(JSON.stringify(tag), grammarStrings(tag));
            return guarded(t.inst, "unsupported grammar", () => t.compiler.compileStructuralTag(tag));
          });
    const failed = (entry = { grammar, users: 0 });
    grammar.catch(() => t.compiled.get(source.key) === failed && t.compiled.delete(source.key));
  }
  t.compiled.set(source.key, entry);
  entry.users++;
  letGoOfUnused(t);
  return entry;
}

function releaseGrammar(t: TokenizerGrammars, entry: CompiledEntry): void {
  entry.users--;
  if (t.retired) freeRetired(t);
  else letGoOfUnused(t);
}

/** Past MAX_COMPILED_GRAMMARS, frees the least recently used grammars no constraint holds. */
function letGoOfUnused(t: TokenizerGrammars): void {
  for (const [key, entry] of t.compiled) {
    if (t.compiled.size <= MAX_COMPILED_GRAMMARS) return;
    if (entry.users > 0) continue;
    t.compiled.delete(key);
    entry.grammar.then(
      (grammar) => grammar.dispose(),
      () => {},
    );
  }
}

/** Bytes of xgrammar's instance memory (for tests: it grows and never shrinks). */
export async function grammarMemoryBytes(): Promise<number> {
  return (await instance()).memory?.buffer.byteLength ?? 0;
}

/** How many compiled grammars `tokenizer`'s model keeps (for tests). */
export async function compiledGrammarCount(tokenizer: Tokenizer): Promise<number> {
  return (await grammarsFor(tokenizer)).compiled.size;
}

/** A JSON Schema as EBNF whose rule `root` is one JSON value matching it, on one line. */
export async function schemaEbnf(schema: object, strict: boolean): Promise<string> {
  return unrepeatedPropertyNames(jsonSafeStrings(await boundedSchemaEbnf(schema, strict, "json")));
}

/**
 * `ebnf` with each object's other properties (additionalProperties, or any under strict: false)
 * named by anything but the names its properties define. xgrammar writes such a name as any
 * string, so the model could write a defined property again with any value ({"b": 1, "b": "x"}
 * where b is an integer), which a JSON reader takes last: the answer failed its schema. An
 * object's rule and its `_part_<n>` rules hold its property names (as key literals) and its other
 * names (`basic_string ": "`).
 */
function unrepeatedPropertyNames(ebnf: string): string {
  const lines = ebnf.split("\n");
  const objectOf = (line: string) => line.slice(0, line.indexOf(" ::= ")).replace(/_part_\d+$/, "");
  const names = new Map<string, Set<string>>();
  for (const line of lines) {
    if (line.startsWith("basic_") || !line.includes('basic_string ": "')) continue;
    names.set(objectOf(line), new Set());
  }
  for (const line of lines) {
    const defined = names.get(objectOf(line));
    // A key literal: the name as JSON spells it, in an EBNF literal ("\"name\""), then ": ".
    for (const [, literal] of defined ? line.matchAll(/"((?:[^"\\]|\\.)*)" ": "/g) : []) {
      const key = JSON.parse(`"${literal}"`) as string;
      if (/^".*"$/s.test(key)) defined!.add(JSON.parse(key) as string);
    }
  }
  const rules: string[] = [];
  const out = lines.map((line) => {
    const object = objectOf(line);
    const defined = names.get(object);
    if (!defined || defined.size === 0 || line.startsWith("basic_")) return line;
    if (!rules.some((r) => r.startsWith(`${object}_other_name_0 ::= `))) rules.push(...otherNameRules(object, defined));
    return line.replaceAll('basic_string ": "', `${object}_other_name_0 ": "`);
  });
  return [...out, ...rules].join("\n");
}

/**
 * Rules `<object>_other_name_<i>` for a JSON string (quotes included) that is none of `names`:
 * a trie of the names as JSON spells them, one character (or escape) a step; a string leaves it
 * by a character no name has there (then it is free), or closes where no name ends. An escape
 * leaves it only past a whole name that none goes on from (elsewhere "\u0061" could spell a
 * name's "a").
 */
function otherNameRules(object: string, names: Set<string>): string[] {
  interface Node {
    ends: boolean;
    next: Map<string, Node>;
  }
  const root: Node = { ends: false, next: new Map() };
  for (const name of names) {
    let node = root;
    for (const c of name) {
      const spelled = JSON.stringify(c).slice(1, -1);
      let child = node.next.get(spelled);
      if (!child) node.next.set(spelled, (child = { ends: false, next: new Map() }));
      node = child;
    }
    node.ends = true;
  }
  // Rule 0 is the opening quote; each node of the trie is a rule after it.
  const rules = [""];
  const rule = (node: Node): string => {
    const index = rules.length;
    rules.push("");
    const alternatives = [
      ...(node.ends ? [] : ['"\\""']),
      ...[...node.next].map(([spelled, child]) => `${JSON.stringify(spelled)} ${rule(child)}`),
      `${freeCharacterClass([...node.next.keys()].map((spelled) => spelled[0]!))} basic_string_sub`,
      // Past a whole name where none goes on, any escape makes another name.
      ...(node.next.size === 0 ? ['"\\\\" basic_escape basic_string_sub'] : []),
    ];
    rules[index] = `${object}_other_name_${index} ::= ${alternatives.join(" | ")}`;
    return `${object}_other_name_${index}`;
  };
  rules[0] = `${object}_other_name_0 ::= "\\"" ${rule(root)}`;
  return rules;
}

/**
 * A class of the characters a JSON string may hold unescaped, but for `taken`. xgrammar matches
 * a class on ASCII only, so where a non-ASCII character is taken the class lists ASCII alone.
 */
function freeCharacterClass(taken: string[]): string {
  const member = (c: string) => (/[\\\]\[^-]/.test(c) ? `\\${c}` : c);
  const ascii = taken
    .filter((c) => c < "\x80")
    .map(member)
    .join("");
  if (taken.every((c) => c < "\x80")) return `[^${JSON_UNSAFE}${ascii}]`;
  const allowed = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)).filter(
    (c) => c !== '"' && c !== "\\" && !taken.includes(c),
  );
  return `[${allowed.map(member).join("")}]`;
}

/**
 * The JSON Schema of an arguments object as EBNF whose rule `root` is its properties as Qwen's
 * XML parameters, as Qwen3-Coder's template writes them: `<parameter=p>\nvalue\n</parameter>\n`
 * for each, in the schema's order, a string's value as its text and any other as JSON.
 * xgrammar's layout lets any whitespace around a parameter and its value (which a model can
 * fill forever) and quotes a string const or enum value as JSON: both are made the template's.
 */
export async function xmlParametersEbnf(schema: object): Promise<string> {
  const ebnf = (await boundedSchemaEbnf(schema, true, "xml"))
    .replace(/\[ \\n\\t\]\* (\(*)"<parameter=/g, '$1"<parameter=')
    .replace(/("<parameter=[^"]*>") \[ \\n\\t\]\*/g, '$1 "\\n"')
    .replace(/\[ \\n\\t\]\* "<\/parameter>"/g, '"\\n</parameter>\\n"')
    // Rules xgrammar prints but cannot read back: an empty lookahead (its XML string's), and an
    // empty root (a function without parameters).
    .replace(/ \(= \)$/gm, "")
    .replace(/^root ::= *$/m, 'root ::= ""');
  return [
    ...ebnf.split("\n").map((line) => {
      if (/^root_prop_\d+ ::= /.test(line)) return withBareStringLiterals(line);
      // A string's text is any text (code, on many lines) up to the </parameter> that ends it,
      // as the template writes it and vLLM reads it; xgrammar's allowed no newline, "<" or "&".
      return line.startsWith("xml_string ::= ") ? "xml_string ::= xml_text_0" : line;
    }),
    ...textBeforeRules("</parameter>", "xml_text_"),
  ].join("\n");
}

/** xgrammar's integer and number, as its EBNF writes them (basic_integer, basic_number, and inlined). */
const UNBOUNDED_INTEGER = '("0" | "-"? [1-9] [0-9]*)';
const UNBOUNDED_NUMBER = '"-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [+-]? [0-9]+)?';

/**
 * `ebnf` with its integers and numbers held within a double's range: at most 200 digits before
 * the point and two in the exponent (up to about 1e299). A tool call's arguments are read into
 * JavaScript values and sent on as JSON, which has no Infinity: a number past that range
 * (1e400, 400 digits) came back as null, against its schema. (An answer in a JSON format goes
 * out as the model wrote it, so its numbers need no bound.)
 */
export function finiteNumbers(ebnf: string): string {
  return ebnf
    .replaceAll(UNBOUNDED_INTEGER, '("0" | "-"? [1-9] [0-9]{0,199})')
    .replaceAll(UNBOUNDED_NUMBER, '"-"? ("0" | [1-9] [0-9]{0,199}) ("." [0-9]+)? ([eE] [+-]? [0-9] [0-9]?)?');
}

/**
 * A parameter's rule that is only literals (a const or an enum) with its strings' quotes taken
 * off: a string's value is its bare text. (A rule with anything else, an object, stays JSON.)
 */
function withBareStringLiterals(line: string): string {
  const [name, body] = line.split(" ::= ", 2) as [string, string];
  const alternatives = body.trim().split(" | ");
  if (!alternatives.every((a) => /^\(?"(?:[^"\\]|\\.)*"\)?$/.test(a))) return line;
  try {
    // The literal's text is the value's JSON: a string's comes back as the string, in a literal.
    const bare = alternatives.map((a) => {
      const literal = a.replace(/^\((.*)\)$/, "$1");
      const value: unknown = JSON.parse(JSON.parse(literal));
      return typeof value === "string" ? JSON.stringify(value) : literal;
    });
    return `${name} ::= ${bare.join(" | ")}`;
  } catch {
    return line;
  }
}

/**
 * Rules `<prefix>0`... for any text that does not hold `end` (whose first character it holds
 * nowhere else): rule `<prefix>i` is the text after `i` characters of `end` were matched.
 */
function textBeforeRules(end: string, prefix: string): string[] {
  const literal = (c: string) => JSON.stringify(c);
  const first = end[0]!;
  return Array.from(end, (c, i) => {
    const others = i === 0 ? `[^${first}]` : `[^${first}${c}]`;
    const alternatives = ['""', `${others} ${prefix}0`, `${literal(first)} ${prefix}1`];
    if (i > 0 && i + 1 < end.length) alternatives.push(`${literal(c)} ${prefix}${i + 1}`);
    return `${prefix}${i} ::= ${alternatives.join(" | ")}`;
  });
}

/** xgrammar's EBNF for `schema` (JSON, or Qwen's XML parameters), with each bounded number's grammar ours (see replaceBoundedNumbers). */
async function boundedSchemaEbnf(schema: object, strict: boolean, layout: "json" | "xml"): Promise<string> {
  const inst = await instance();
  const rules: string[] = [];
  const placeheld = replaceBoundedNumbers(schema, "", rules);
  let ebnf = await guarded(inst, "unsupported schema", () =>
    inst.xg.Testings._jsonSchemaToEBNF(JSON.stringify(placeheld), false, -1, undefined, strict, undefined, layout),
  );
  rules.forEach((_, i) => (ebnf = ebnf.replaceAll(`"\\"${NUMBER_PLACEHOLDER}${i}\\""`, numberRuleName(i))));
  return [ebnf, ...rules.map((body, i) => `${numberRuleName(i)} ::= ${body}`)].join("\n");
}

// ---------------------------------------------------------------------------------------------
// Number bounds. xgrammar's range grammars let values past one side of a bound through (an
// integer with only a minimum of 3 allowed 1 and 2, a number with a maximum of 10 allowed
// 10.5, an exclusive minimum the bound itself). So each bounded integer or number goes to
// xgrammar as a placeholder constant, whose literal in its EBNF becomes a rule of ours.

const NUMBER_PLACEHOLDER = "mlx-bounded-number-";
const numberRuleName = (i: number) => `mlx_bounded_number_${i}`;
// A fraction that changes the value: at most 6 digits (as xgrammar's), the last not 0.
const FRACTION = '"." [0-9]{0,5} [1-9]';

/**
 * A copy of `node` with each bounded number replaced by a placeholder (`rules` receives the
 * grammar each stands for), each format with a pattern of ours replaced by it, each
 * propertyNames that every name meets dropped, each
 * property name written as its grammar literal must hold it (see grammarPropertyName), and
 * each tuple written with prefixItems.
 */
function replaceBoundedNumbers(node: unknown, path: string, rules: string[]): unknown {
  if (typeof node !== "object" || node === null || Array.isArray(node)) return node;
  const s: Record<string, unknown> = { ...(node as Record<string, unknown>) };
  if ("propertyNames" in s && constrainsNoName(s.propertyNames)) delete s.propertyNames;
  const inner = (value: unknown, at: string) => replaceBoundedNumbers(value, at, rules);
  for (const name of SUBSCHEMA_MAPS) {
    const map = s[name];
    const key = name === "properties" ? grammarPropertyName : (k: string) => k;
    if (map && typeof map === "object" && !Array.isArray(map))
      s[name] = Object.fromEntries(
        Object.entries(map).map(([k, v]) => [key(k), inner(v, `${path}/${name}/${escapePointer(k)}`)]),
      );
  }
  if (Array.isArray(s.required))
    s.required = s.required.map((k) => (typeof k === "string" ? grammarPropertyName(k) : k));
  // A tuple as drafts before 2020-12 write it, which xgrammar refuses ("items must be a boolean
  // or an object", naming no place): its items are the prefixItems, additionalItems the rest.
  if (Array.isArray(s.items) && s.prefixItems === undefined) {
    s.prefixItems = s.items;
    if (s.additionalItems === undefined) delete s.items;
    else s.items = s.additionalItems;
    delete s.additionalItems;
  }
  for (const name of [...SUBSCHEMA_LISTS, ...SUBSCHEMA_SINGLE]) {
    const value = s[name];
    if (Array.isArray(value)) s[name] = value.map((v, i) => inner(v, `${path}/${name}/${i}`));
    else if (value !== undefined) s[name] = inner(value, `${path}/${name}`);
  }
  return boundedNumber(s, path, rules) ?? formatAsPattern(s);
}

/**
 * xgrammar writes a property name into its grammar unescaped, between the quotes of an EBNF
 * literal: a quote or a backslash in it broke the grammar's text, and a tab or a control
 * character went into the answer as it is, which is not JSON. So it is given the name as JSON
 * writes it, escaped once more for the EBNF literal.
 */
function grammarPropertyName(name: string): string {
  return JSON.stringify(name).slice(1, -1).replace(/["\\]/g, "\\$&");
}

/**
 * `s` with its `format` written as the pattern constrained decoding enforces for it (see
 * formatPattern); beside a pattern of the schema's own, the format is dropped, the pattern enforced.
 */
function formatAsPattern(s: Record<string, unknown>): Record<string, unknown> {
  if (typeof s.format !== "string") return s;
  const pattern = typeof s.pattern === "string" ? s.pattern : formatPattern(s.format);
  if (pattern === undefined) return s;
  const { format: _replaced, ...rest } = s;
  return { ...rest, pattern };
}

/** The placeholder for `s` when it is a bounded integer or number (with the other types it lists beside it). */
function boundedNumber(s: Record<string, unknown>, path: string, rules: string[]): object | undefined {
  if (REPLACING.some((k) => k in s)) return undefined; // an enum or const: its values met the bounds already
  const types = typeof s.type === "string" ? [s.type] : Array.isArray(s.type) ? (s.type as string[]) : [];
  const isNumeric = (t: string) => t === "integer" || t === "number";
  const numeric = types.filter(isNumeric);
  if (numeric.length === 0 || !NUMBER_BOUNDS.some((k) => typeof s[k] === "number")) return undefined;
  const kind: "integer" | "number" = numeric.includes("number") ? "number" : "integer";
  const body = boundedNumberEbnf(s, kind);
  if (!body) throw new SchemaError(`unsupported schema: no ${kind} lies within the bounds of ${path || "/"}`);
  const placeholder = { const: `${NUMBER_PLACEHOLDER}${rules.length}` };
  rules.push(body);
  const others = types.filter((t) => !isNumeric(t));
  return others.length === 0 ? placeholder : { anyOf: [placeholder, { ...s, type: others }] };
}

const NUMBER_BOUNDS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];

/** The values `s`'s bounds allow, as an EBNF expression (undefined when none). */
function boundedNumberEbnf(s: Record<string, unknown>, kind: "integer" | "number"): string | undefined {
  const bound = (k: string) => (typeof s[k] === "number" ? (s[k] as number) : undefined);
  const tighter = (pick: (a: bigint, b: bigint) => bigint, ...values: (bigint | undefined)[]) =>
    values.reduce<bigint | undefined>((a, b) => (a === undefined ? b : b === undefined ? a : pick(a, b)), undefined);
  const whole = (v: number | undefined, round: (x: number) => number, shift = 0) =>
    v === undefined ? undefined : BigInt(round(v)) + BigInt(shift);
  const max = (a: bigint, b: bigint) => (a > b ? a : b);
  const min = (a: bigint, b: bigint) => (a < b ? a : b);
  const [minimum, maximum] = [bound("minimum"), bound("maximum")];
  const [above, below] = [bound("exclusiveMinimum"), bound("exclusiveMaximum")];
  // The whole values allowed: from the smallest above every lower bound to the largest below every upper one.
  const lowest = tighter(max, whole(minimum, Math.ceil), whole(above, Math.floor, 1));
  const highest = tighter(min, whole(maximum, Math.floor), whole(below, Math.ceil, -1));
  const parts = [integerRange(lowest, highest)];
  if (kind === "number") {
    // A number's bounds are whole (validateSchema): n.f (f > 0) lies strictly between n and
    // n + 1, so it is allowed when both are within the bounds, exclusive or not; -n.f alike.
    const low = tighter(max, whole(minimum, Math.floor), whole(above, Math.floor));
    const high = tighter(min, whole(maximum, Math.ceil), whole(below, Math.ceil));
    const positive = naturalRange(low === undefined || low < 0n ? 0n : low, high === undefined ? undefined : high - 1n);
    const negative = naturalRange(
      high === undefined || high > 0n ? 0n : -high,
      low === undefined ? undefined : -low - 1n,
    );
    parts.push(positive && `(${positive}) ${FRACTION}`, negative && `"-" (${negative}) ${FRACTION}`);
  }
  const allowed = parts.filter((p): p is string => p !== undefined);
  return allowed.length > 0 ? allowed.join(" | ") : undefined;
}

/** The whole numbers from `lo` to `hi` (undefined: unbounded), written as JSON writes them. */
function integerRange(lo: bigint | undefined, hi: bigint | undefined): string | undefined {
  const nonNegative =
    hi === undefined || hi >= 0n ? naturalRange(lo === undefined || lo < 0n ? 0n : lo, hi) : undefined;
  // -m for m from 1 (no "-0") or -hi up to -lo.
  const magnitudes =
    lo === undefined || lo < 0n
      ? naturalRange(hi === undefined || hi >= 0n ? 1n : -hi, lo === undefined ? undefined : -lo)
      : undefined;
  const parts = [nonNegative, magnitudes && `"-" (${magnitudes})`].filter((p): p is string => p !== undefined);
  return parts.length > 0 ? parts.join(" | ") : undefined;
}

/** The numbers from `a` >= 0 to `b` (undefined: unbounded) without leading zeros, or undefined when there are none. */
function naturalRange(a: bigint, b: bigint | undefined): string | undefined {
  if (b !== undefined && a > b) return undefined;
  const shortest = String(a).length;
  const longest = b === undefined ? shortest : String(b).length;
  const parts: string[] = [];
  for (let digits = shortest; digits <= longest; digits++) {
    const from = digits === shortest ? a : 10n ** BigInt(digits - 1);
    const to = b !== undefined && digits === longest ? b : 10n ** BigInt(digits) - 1n;
    parts.push(sameLengthRange(String(from), String(to)));
  }
  if (b === undefined) parts.push(`[1-9] [0-9]{${shortest},}`);
  return parts.join(" | ");
}

/** The digit strings from `from` to `to`, both of the same length. */
function sameLengthRange(from: string, to: string): string {
  if (from === to) return `"${from}"`;
  if (/^0*$/.test(from) && /^9*$/.test(to)) return `[0-9]{${from.length}}`;
  const [first, last] = [Number(from[0]), Number(to[0])];
  if (from.length === 1) return `[${first}-${last}]`;
  const [fromRest, toRest] = [from.slice(1), to.slice(1)];
  if (first === last) return `"${first}" (${sameLengthRange(fromRest, toRest)})`;
  const parts = [`"${first}" (${sameLengthRange(fromRest, "9".repeat(fromRest.length))})`];
  if (last - first > 1) parts.push(`[${first + 1}-${last - 1}] [0-9]{${fromRest.length}}`);
  parts.push(`"${last}" (${sameLengthRange("0".repeat(toRest.length), toRest)})`);
  return parts.join(" | ");
}

/** The grammar of a JSON format ("json" is any object, laid out on one line like a schema's output). */
function jsonGrammar(format: JsonFormat): GrammarSource {
  if (format === "json") return { key: "json", ebnf: () => schemaEbnf({ type: "object" }, false) };
  const strict = format.strict ?? true;
  return { key: `${strict}:${canonicalJson(format.schema)}`, ebnf: () => schemaEbnf(format.schema, strict) };
}

/**
 * xgrammar writes the characters a string's `pattern` or length allows as they are, but JSON
 * text must escape quotes, backslashes and control characters. So in the schema's own rules
 * (its `basic_*` rules are right already), a class that allows any character (a pattern's
 * ".") or a negated class leaves those out, and a listed class loses its control characters
 * (a pattern's "\s"). Patterns that name a quote, a backslash or a control character itself
 * are refused by validateSchema.
 */
export function jsonSafeStrings(ebnf: string): string {
  return ebnf
    .split("\n")
    .map((line) => (line.startsWith("basic_") ? line : jsonSafeLine(line)))
    .join("\n");
}

const JSON_UNSAFE = '\\0-\\x1f"\\\\'; // as EBNF class members: \0-\x1f " \\

function jsonSafeLine(line: string): string {
  let out = "";
  for (let i = 0; i < line.length; ) {
    const c = line[i]!;
    if (c === '"' || c === "[") {
      const close = c === '"' ? '"' : "]";
      let j = i + 1;
      if (c === "[" && line[j] === "^") j++;
      while (j < line.length && line[j] !== close) j += line[j] === "\\" ? 2 : 1;
      const part = line.slice(i, j + 1);
      out += c === "[" ? jsonSafeClass(part) : part;
      i = j + 1;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

function jsonSafeClass(cls: string): string {
  if (cls === "[\\u0000-\\U0010FFFF]") return `[^${JSON_UNSAFE}]`;
  if (cls.startsWith("[^")) return `${cls.slice(0, -1)}${JSON_UNSAFE}]`;
  return cls.replace(/\\[fnrtv0]|\\x[01][0-9a-fA-F]|\\u00[01][0-9a-fA-F]/g, "");
}

// ---------------------------------------------------------------------------------------------
// The constraint: one matcher per sequence.

export interface BudgetOptions {
  /** The sequence's max_tokens: steer to a valid end within it (a BudgetError if it is too small for any). */
  maxTokens?: number;
}

/**
 * A JSON constraint for one sequence on `tokenizer`'s model: "json" for any JSON object, or
 * `{ schema }` for a JSON Schema (validated first: a SchemaError names what is wrong).
 */
export async function createJsonConstraint(
  tokenizer: Tokenizer,
  format: JsonFormat,
  budget: BudgetOptions = {},
): Promise<GrammarConstraint> {
  if (format !== "json") await validateSchema(format.schema, { strict: format.strict });
  const schema = format === "json" ? { type: "object" } : format.schema;
  const strict = format === "json" ? false : (format.strict ?? true);
  const steering =
    budget.maxTokens === undefined
      ? undefined
      : budgetSteering(tokenizer, budget.maxTokens, () => {
          const shapes = new SchemaShapes(schema as Record<string, unknown>, strict);
          return { progress: new JsonProgress(shapes, schema), opening: shapes.largestOpening(schema) };
        });
  return createGrammarConstraint(tokenizer, jsonGrammar(format), steering);
}

/**
 * Text of a shape other than JSON, as vLLM's guided decoding asks for it: the whole answer
 * matching a regular expression, one of a list of strings, or a grammar in xgrammar's EBNF (the
 * GBNF form: rules `name ::= ...`, the first named root).
 */
export type TextPattern = { regex: string } | { choice: string[] } | { grammar: string };

/** A constraint for one sequence on `tokenizer`'s model whose answer is `pattern` (a SchemaError when xgrammar refuses it). */
export function createPatternConstraint(tokenizer: Tokenizer, pattern: TextPattern): Promise<GrammarConstraint> {
  return createGrammarConstraint(tokenizer, patternGrammar(pattern));
}

function patternGrammar(pattern: TextPattern): GrammarSource {
  if ("grammar" in pattern) return { key: `grammar:${pattern.grammar}`, ebnf: async () => pattern.grammar };
  const format: XG.StructuralTagFormat =
    "regex" in pattern
      ? { type: "regex", pattern: pattern.regex }
      : { type: "or", elements: pattern.choice.map((value) => ({ type: "const_string", value })) };
  return { key: `pattern:${canonicalJson(format)}`, structuralTag: async () => ({ type: "structural_tag", format }) };
}

/** A constraint for one sequence on `tokenizer`'s model that follows any grammar (and the budget, given `steering`). */
export async function createGrammarConstraint(
  tokenizer: Tokenizer,
  source: GrammarSource,
  steering?: BudgetSteering,
): Promise<GrammarConstraint> {
  let t = await grammarsFor(tokenizer);
  // Let go of and freed while this waited (other vocabularies came since): made again.
  while (t.freed) t = await grammarsFor(tokenizer);
  const entry = takeGrammar(t, source);
  try {
    const matcher = newMatcher(t.inst, await entry.grammar, t.stopIds, t.vocabSize);
    return new Constraint(t, matcher, steering, () => releaseGrammar(t, entry));
  } catch (error) {
    releaseGrammar(t, entry);
    throw error;
  }
}

const words = (vocab: number) => Math.ceil(vocab / 32);

class Constraint implements GrammarConstraint {
  private history: readonly number[] | undefined;
  private seen = 0;
  /** Where the generated tokens start in the history (after the prompt). */
  private start = 0;
  private shaped: ShapedTokens = () => true;
  private mask: Uint8Array | undefined;
  private disposed = false;
  readonly processor: LogitsProcessor;

  constructor(
    private readonly t: TokenizerGrammars,
    private readonly matcher: XG.GrammarMatcher,
    private readonly steering: BudgetSteering | undefined,
    private readonly release: () => void,
  ) {
    this.processor = (history, logits) => this.process(history, logits);
  }

  processorShaping(shaped: ShapedTokens): LogitsProcessor {
    this.shaped = shaped;
    return this.processor;
  }

  private process(history: readonly number[], logits: MxArray): MxArray {
    if (this.disposed) throw new Error("this grammar constraint was disposed");
    // The first step sees the prompt: the grammar starts after it. Later steps may pass the
    // same growing array or a fresh copy; either way the tokens past `seen` are new.
    if (!this.history) this.seen = this.start = history.length;
    this.history = history;
    this.catchUp();
    if (this.matcher.isTerminated() || !this.shaped(history, history.length)) return logits;
    const vocab = logits.shape.at(-1)!;
    const mask = this.unpack(readBitmask(this.t, this.matcher), vocab);
    this.steering?.narrow(mask, this.seen - this.start);
    const allowed = mx.array(mask, [1, vocab], mx.Dtype.bool);
    return mx.where(allowed, logits, mx.full([], -Infinity, logits.dtype));
  }

  /** Feeds the matcher the tokens sampled since the last step. */
  private catchUp(): void {
    const history = this.history;
    if (!history) return;
    for (; this.seen < history.length; this.seen++) {
      if (this.matcher.isTerminated() || !this.shaped(history, this.seen)) continue;
      const token = history[this.seen]!;
      if (!this.matcher.acceptToken(token))
        throw new Error(`the grammar rejected token ${token}: it was sampled despite the mask`);
      if (!this.t.stopIds.includes(token)) this.steering?.observe(token);
    }
  }

  /** The bitmask as one byte per logit: ids past the tokenizer's vocabulary are never allowed. */
  private unpack(bits: Int32Array, vocab: number): Uint8Array {
    if (!this.mask || this.mask.length !== vocab) this.mask = new Uint8Array(vocab);
    const mask = this.mask;
    const n = Math.min(vocab, this.t.vocabSize);
    for (let w = 0, base = 0; base < n; w++, base += 32) {
      const word = bits[w]!;
      const end = Math.min(base + 32, n);
      if (word === 0) mask.fill(0, base, end);
      else if (word === -1) mask.fill(1, base, end);
      else for (let i = base, b = 0; i < end; i++, b++) mask[i] = (word >>> b) & 1;
    }
    if (n < vocab) mask.fill(0, n);
    return mask;
  }

  accepted(answer: readonly number[]): boolean {
    if (this.disposed) return false;
    this.catchUp();
    // The matcher is finished with the answer: feed it the tokens the processor did not see.
    for (const token of answer.slice(this.seen - this.start)) {
      if (this.matcher.isTerminated()) break;
      if (!this.matcher.acceptToken(token)) return false;
      this.seen++;
    }
    if (this.matcher.isTerminated()) return true;
    const bits = readBitmask(this.t, this.matcher);
    return this.t.stopIds.some((id) => ((bits[id >> 5]! >>> (id & 31)) & 1) === 1);
  }

  closedEarly(): boolean {
    return this.steering?.closedEarly ?? false;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.matcher.dispose();
    this.release();
  }
}

// The library only offers the bitmask through a promise (it awaits its own start-up each
// time), and the token loop's processors are synchronous. So we call the matcher's binding
// directly: it returns a std::vector<int32_t>, whose data we read from the instance's memory
// (libc++ lays a vector out as begin, end, capacity), or, if that could not be verified at
// start-up, element by element.
interface EmbindVector {
  $$: { ptr: number };
  size(): number;
  get(i: number): number;
  delete(): void;
}

function readBitmask(t: TokenizerGrammars, matcher: XG.GrammarMatcher): Int32Array {
  const handle = (matcher as unknown as { handle: { GetNextTokenBitmask(vocab: number): EmbindVector } }).handle;
  const vector = handle.GetNextTokenBitmask(t.vocabSize);
  try {
    return copyVector(t.inst, vector, words(t.vocabSize));
  } finally {
    vector.delete();
  }
}

function copyVector(inst: Instance, vector: EmbindVector, expected: number): Int32Array {
  if (inst.directBitmask && inst.memory) {
    const header = new Uint32Array(inst.memory.buffer, vector.$$.ptr, 2);
    const begin = header[0]!;
    const length = (header[1]! - begin) / 4;
    if (length === expected) return new Int32Array(inst.memory.buffer, begin, length).slice();
  }
  const n = vector.size();
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = vector.get(i);
  return out;
}

/** Checks the direct read against the library's own on a small vocabulary with a known mask. */
async function checkDirectBitmask(inst: Instance): Promise<void> {
  if (!inst.memory) return;
  const vocab = [
    "{",
    "}",
    "a",
    "[",
    "]",
    "x",
    "0",
    "1",
    '"',
    " ",
    ...Array.from({ length: 60 }, (_, i) => `t${i}`),
    "</s>",
  ];
  const info = newTokenizerInfo(inst, vocab, "raw", false, vocab.length, [vocab.length - 1]);
  const compiler = await inst.xg.GrammarCompiler.createGrammarCompiler(info, false);
  const grammar = await compileEbnf(inst, compiler, 'root ::= "[" ("0" | "1")* "]"');
  const matcher = newMatcher(inst, grammar, [vocab.length - 1], vocab.length);
  try {
    const reference = await matcher.getNextTokenBitmask();
    inst.directBitmask = true;
    const vector = (
      matcher as unknown as { handle: { GetNextTokenBitmask(vocab: number): EmbindVector } }
    ).handle.GetNextTokenBitmask(vocab.length);
    const direct = copyVector(inst, vector, words(vocab.length));
    vector.delete();
    inst.directBitmask =
      direct.length === reference.length && direct.every((w, i) => w === reference[i]) && reference[0] === 1 << 3;
  } catch {
    inst.directBitmask = false;
  } finally {
    matcher.dispose();
    grammar.dispose();
    compiler.dispose();
    info.dispose();
  }
}
