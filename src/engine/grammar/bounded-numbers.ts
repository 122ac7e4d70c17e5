// Number bounds. xgrammar's range grammars let values past one side of a bound through (an
// integer with only a minimum of 3 allowed 1 and 2, a number with a maximum of 10 allowed
// 10.5, an exclusive minimum the bound itself). So each bounded integer or number goes to
// xgrammar as a placeholder constant, whose literal in its EBNF becomes a rule of ours.
import { SchemaError } from "../../errors";
import { formatPattern } from "../budget/pattern";
import {
  constrainsNoName,
  escapePointer,
  NUMBER_BOUNDS,
  REPLACING,
  SUBSCHEMA_LISTS,
  SUBSCHEMA_MAPS,
  SUBSCHEMA_SINGLE,
} from "./schema-keywords";

export const NUMBER_PLACEHOLDER = "mlx-bounded-number-";
export const numberRuleName = (i: number) => `mlx_bounded_number_${i}`;
// A fraction that changes the value: at most 6 digits (as xgrammar's), the last not 0.
const FRACTION = '"." [0-9]{0,5} [1-9]';

/**
 * A copy of `node` with each bounded number replaced by a placeholder (`rules` receives the
 * grammar each stands for), each format with a pattern of ours replaced by it, each
 * propertyNames that every name meets dropped, each
 * property name written as its grammar literal must hold it (see grammarPropertyName), and
 * each tuple written with prefixItems.
 */
export function replaceBoundedNumbers(node: unknown, path: string, rules: string[]): unknown {
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
