// JSON Schema keywords as xgrammar reads them, shared by schema-check.ts (which refuses what
// xgrammar would not enforce), bounded-numbers.ts (which rewrites the schema xgrammar is given)
// and Ollama's format (whose objects are closed as Ollama closes them).

export const SUBSCHEMA_MAPS = ["properties", "$defs", "definitions", "patternProperties", "dependentSchemas"];
export const SUBSCHEMA_LISTS = ["anyOf", "oneOf", "allOf", "prefixItems"];
export const SUBSCHEMA_SINGLE = [
  "items",
  "additionalProperties",
  "propertyNames",
  "additionalItems",
  "unevaluatedProperties",
];
export const NUMBER_BOUNDS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];

// xgrammar reads a schema by its first keyword in this order and ignores the rest of the node:
// beside a $ref, say, a maxLength would not be enforced.
export const REPLACING = ["$ref", "const", "enum", "anyOf", "oneOf", "allOf"];
// The keywords that constrain a value (those that would be ignored beside a replacing one).
export const CONSTRAINING = new Set([
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
 * Whether a `propertyNames` schema holds for every name: `true`, `{}`, or `{"type": "string"}`
 * (every name is a string), which zod writes for a record of string keys. Such a one is dropped
 * (see replaceBoundedNumbers), so the properties and additionalProperties beside it stand.
 */
export function constrainsNoName(names: unknown): boolean {
  if (names === true) return true;
  if (typeof names !== "object" || names === null || Array.isArray(names)) return false;
  const n = names as Record<string, unknown>;
  return Object.keys(n).every((k) => !CONSTRAINING.has(k) || (k === "type" && n.type === "string"));
}

export const escapePointer = (key: string) => key.replaceAll("~", "~0").replaceAll("/", "~1");
