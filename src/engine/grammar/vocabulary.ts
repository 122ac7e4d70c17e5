// Per tokenizer: xgrammar's view of the vocabulary, its compiler, and compiled grammars.
import { createHash } from "node:crypto";
import type * as XG from "@mlc-ai/web-xgrammar";
import type { Tokenizer } from "../../tokenizer/tokenizer";
import { checkGrammarBudget, grammarStrings } from "./compile-budget";
import { compileEbnf, guarded, instance, newTokenizerInfo, onInstanceRetired, type Instance } from "./xgrammar";

export interface TokenizerGrammars {
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
// A retired instance's vocabularies are made again on the next one (the grammars compiled on it
// stay usable by their matchers).
onInstanceRetired(() => (perVocabulary = new Map()));

export function grammarsFor(tokenizer: Tokenizer): Promise<TokenizerGrammars> {
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
function describeVocabulary(tokenizer: Tokenizer): {
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

/** The compiled grammar for `source`, taken for one constraint until releaseGrammar. */
export function takeGrammar(t: TokenizerGrammars, source: GrammarSource): CompiledEntry {
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

export function releaseGrammar(t: TokenizerGrammars, entry: CompiledEntry): void {
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

/** How many compiled grammars `tokenizer`'s model keeps (for tests). */
export async function compiledGrammarCount(tokenizer: Tokenizer): Promise<number> {
  return (await grammarsFor(tokenizer)).compiled.size;
}
