// Schema validation: ajv says whether it is JSON Schema at all, then we refuse what xgrammar
// would silently not enforce, then xgrammar converts it (and may refuse it).
import Ajv, { type ErrorObject, type ValidateFunction } from "ajv";
import { setNewest } from "../../bounded-map";
import { SchemaError } from "../../errors";
import { compileAnswerSchema } from "../json-schema";
import {
  InfiniteSchemaError,
  OversizedSchemaError,
  SchemaShapes,
  UnsteerableSchemaError,
} from "../budget/json-progress";
import { checkGrammarBudget, checkGrammarSize } from "./compile-budget";
import { schemaEbnf } from "./ebnf";
import {
  CONSTRAINING,
  constrainsNoName,
  escapePointer,
  NUMBER_BOUNDS,
  REPLACING,
  SUBSCHEMA_LISTS,
  SUBSCHEMA_MAPS,
  SUBSCHEMA_SINGLE,
} from "./schema-keywords";

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

/** Schemas checked, by `strict` and canonical text; the latest MAX_VALIDATED_SCHEMAS kept (a client may send a new one each request). */
const validated = new Map<string, SchemaError | true>();
export const MAX_VALIDATED_SCHEMAS = 1024;

/** Schemas checkJsonSchema found to be JSON Schema, by canonical text; the latest MAX_VALIDATED_SCHEMAS kept. */
const soundSchemas = new Map<string, true>();

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
  // A client sends the same tools with every request: each check compiled their schemas again
  // (generated code Ajv keeps until its instance is let go), so those found sound are remembered.
  const key = canonicalJson(rest);
  if (soundSchemas.has(key)) return;
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
  setNewest(soundSchemas, key, true, MAX_VALIDATED_SCHEMAS);
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
