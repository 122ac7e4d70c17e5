// Constrained decoding: JSON (any object) or a JSON Schema enforced while sampling, so the
// answer is valid by construction. xgrammar (compiled to WASM) turns the schema into a grammar
// over the model's vocabulary; at each step its allowed-token bitmask becomes one boolean
// array and one mx.where that sets every other logit to -inf. When the JSON is complete only
// the end-of-sequence tokens stay allowed, so generation ends with finish reason "stop".
// Other grammars (tool calls, see ../tools/) go through createGrammarConstraint as EBNF.
//
// Use: `const c = await createJsonConstraint(tokenizer, { schema }, { maxTokens })`, pass
// `c.processor` in `logitsProcessors`, `c.dispose()` when the sequence is done. Each constraint
// carries its own matcher, so sequences are constrained independently; the latest compiled
// grammars are cached per tokenizer and grammar. Given the sequence's max_tokens, the
// constraint also steers to the shortest valid completion as the budget runs out (see
// ../budget/), so an answer cut by the budget still parses.
//
// The parts: xgrammar.ts loads the WASM instance and makes its objects without leaks;
// schema-check.ts refuses a schema xgrammar would not enforce; ebnf.ts (with bounded-numbers.ts)
// makes xgrammar's grammar of a schema exact; compile-budget.ts refuses a grammar too costly to
// compile; vocabulary.ts keeps each vocabulary's compiler and compiled grammars. Here: the
// constraint a sequence follows.
import type * as XG from "@mlc-ai/web-xgrammar";
import * as mx from "../../mlx";
import { SchemaError } from "../../errors";
import type { MxArray } from "../../mlx";
import type { Tokenizer } from "../../tokenizer/tokenizer";
import type { LogitsProcessor } from "../sampling";
import { JsonProgress, SchemaShapes } from "../budget/json-progress";
import { budgetSteering, type BudgetSteering } from "../budget/steering";
import { canonicalJson, validateSchema } from "./schema-check";
import { schemaEbnf } from "./ebnf";
import { grammarsFor, releaseGrammar, takeGrammar, type GrammarSource, type TokenizerGrammars } from "./vocabulary";
import { newMatcher, readBitmask } from "./xgrammar";

export { initGrammar, grammarMemoryBytes } from "./xgrammar";
export {
  canonicalJson,
  checkJsonSchema,
  MAX_VALIDATED_SCHEMAS,
  validatedSchemaCount,
  validateSchema,
} from "./schema-check";
export { finiteNumbers, jsonSafeStrings, schemaEbnf, xmlParametersEbnf } from "./ebnf";
export {
  compiledGrammarCount,
  MAX_COMPILED_GRAMMARS,
  MAX_VOCABULARIES,
  vocabularyCount,
  type GrammarSource,
} from "./vocabulary";

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

// The constraint: one matcher per sequence.

/** The grammar of a JSON format ("json" is any object, laid out on one line like a schema's output). */
function jsonGrammar(format: JsonFormat): GrammarSource {
  if (format === "json") return { key: "json", ebnf: () => schemaEbnf({ type: "object" }, false) };
  const strict = format.strict ?? true;
  return { key: `${strict}:${canonicalJson(format.schema)}`, ebnf: () => schemaEbnf(format.schema, strict) };
}

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
export async function createPatternConstraint(tokenizer: Tokenizer, pattern: TextPattern): Promise<GrammarConstraint> {
  // Half of a UTF-16 pair (JSON lets a request send one) is no character an answer could hold:
  // embind refused it as the grammar's text, which the error said as "unsupported grammar: undefined".
  const [what, texts] =
    "regex" in pattern
      ? ["the regular expression", [pattern.regex]]
      : "choice" in pattern
        ? ["a choice", pattern.choice]
        : ["the grammar", [pattern.grammar]];
  if (texts.some((text) => !text.isWellFormed()))
    throw new SchemaError(`${what} holds a lone UTF-16 surrogate, which is not a Unicode character`);
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
    const vocab = logits.shape.at(-1)!;
    let mask: Uint8Array;
    if (this.matcher.isTerminated()) {
      // Past the end token it accepted (ignore_eos generates on): end tokens only, which show no
      // text, so the answer stays the one the grammar completed instead of going on in free text.
      mask = this.mask?.length === vocab ? this.mask.fill(0) : (this.mask = new Uint8Array(vocab));
      for (const id of this.t.stopIds) if (id < vocab) mask[id] = 1;
    } else {
      if (!this.shaped(history, history.length)) return logits;
      mask = this.unpack(readBitmask(this.t, this.matcher), vocab);
      this.steering?.narrow(mask, this.seen - this.start);
    }
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
