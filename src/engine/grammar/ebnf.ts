// EBNF rewriting: xgrammar's grammar of a JSON Schema (or of Qwen's XML parameters) made what
// the answer must be, where xgrammar's own lets through what the schema or JSON does not allow.
import { guarded, instance } from "./xgrammar";
import { NUMBER_PLACEHOLDER, numberRuleName, replaceBoundedNumbers } from "./bounded-numbers";

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
