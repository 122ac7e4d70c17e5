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
import { SchemaError } from "../../errors";

/** The most characters of a schema, or of the grammar made of it, that constrained decoding compiles. */
const MAX_GRAMMAR_CHARS = 131_072;
/**
 * The most positions of counted character-class repetitions a grammar may hold, each distinct
 * repetition counting up to REPETITION_POSITIONS_COUNTED of its bound, a class that allows few
 * characters less than one that allows most (a string's maxLength of 200: 128; two: 256).
 */
const MAX_REPEATED_POSITIONS = 256;
const REPETITION_POSITIONS_COUNTED = 128;

export function checkGrammarSize(chars: number, what: string): void {
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
export function grammarStrings(node: unknown): string[] {
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
