// Rebuilding Hugging Face tokenizer files from a llama.cpp GGUF's metadata.
//
// A GGUF carries no tokenizer.json: it stores the vocabulary, merges, token types and special ids
// under llama.cpp's key names. We turn those back into a `tokenizer.json` (byte-level BPE) and a
// `tokenizer_config.json`-style object, so that one tokenizer code path (tokenizer.json) serves
// both GGUF and safetensors models, and `mlx convert` can write files mlx-lm/transformers load.
import { defaultChatTemplate } from "./default-templates";

/** What `tokenizerFilesFromGGUF` returns. */
export interface TokenizerFiles {
  /** A Hugging Face `tokenizer.json`. */
  tokenizerJson: Record<string, unknown>;
  /** A `tokenizer_config.json`: special tokens, add_bos_token, chat_template, ... */
  tokenizerConfig: Record<string, unknown>;
  /**
   * Every id that ends generation according to the file (eos, and eot/eom when present), for a
   * generation_config.json. The tokenizer_config can only name one eos_token.
   */
  eosTokenIds: number[];
}

// llama.cpp token types (llama_token_type in llama.cpp).
const TOKEN_TYPE_NORMAL = 1;
const TOKEN_TYPE_CONTROL = 3;
const TOKEN_TYPE_USER_DEFINED = 4;

// The pre-tokenizer split patterns, as llama.cpp and the models' own tokenizer.json define them.
const GPT2_SPLIT = null; // ByteLevel's built-in GPT-2 regex.
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}" +
  "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" +
  "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// o200k (GPT-4o, gpt-oss): words split before an upper-case run, contractions kept on the word.
const GPT4O_SPLIT =
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?" +
  "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?" +
  "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

interface PreTokenizerSpec {
  /** A regex split before the byte-level step, or null for ByteLevel's own GPT-2 regex. */
  split: string | null;
  /** Split every number into single characters first (SmolLM/StarCoder: "\p{N}" in llama.cpp). */
  isolateDigits?: boolean;
  /** Use a word whole when the vocabulary has it, before trying merges (llama.cpp does for llama3). */
  ignoreMerges?: boolean;
  /** Add BOS where the file does not say (tokenizer.ggml.add_bos_token), as llama.cpp does for llama3. */
  addBos?: boolean;
}

/** tokenizer.ggml.pre → how to split text before BPE. */
const PRE_TOKENIZERS: Record<string, PreTokenizerSpec> = {
  default: { split: GPT2_SPLIT },
  gpt2: { split: GPT2_SPLIT },
  smollm: { split: GPT2_SPLIT, isolateDigits: true },
  starcoder: { split: GPT2_SPLIT, isolateDigits: true },
  "llama-bpe": { split: LLAMA3_SPLIT, ignoreMerges: true, addBos: true },
  llama3: { split: LLAMA3_SPLIT, ignoreMerges: true, addBos: true },
  "llama-v3": { split: LLAMA3_SPLIT, ignoreMerges: true, addBos: true },
  qwen2: { split: QWEN2_SPLIT },
  "deepseek-r1-qwen": { split: QWEN2_SPLIT },
  "gpt-4o": { split: GPT4O_SPLIT },
};

const SUPPORTED_MODELS = ["gpt2", "llama"];

/**
 * Builds tokenizer.json and tokenizer_config.json contents from GGUF metadata
 * (`tokenizer.ggml.*` keys; lists as arrays, scalars as numbers/booleans/strings).
 * Throws for tokenizer models or pre-tokenizers we cannot reproduce faithfully.
 */
export function tokenizerFilesFromGGUF(meta: Record<string, unknown>): TokenizerFiles {
  const tokens = list<string>(meta, "tokenizer.ggml.tokens");
  if (!tokens || tokens.length === 0) throw new Error("GGUF metadata has no tokenizer.ggml.tokens");
  const types = list<number>(meta, "tokenizer.ggml.token_type") ?? [];
  const sentencePiece = str(meta, "tokenizer.ggml.model") === "llama";
  const model = sentencePiece ? sentencePieceModel(meta, tokens, types) : byteLevelModel(meta, tokens, types);

  const special = (name: string): SpecialToken | undefined => {
    const id = num(meta, `tokenizer.ggml.${name}_token_id`);
    return id !== undefined && id >= 0 && id < tokens.length ? { token: tokens[id]!, id } : undefined;
  };
  const bos = special("bos");
  const eos = special("eos");
  // Where the file does not say (converted before llama.cpp wrote the key: Llama 2, Mistral), llama.cpp's
  // default: BOS for a SentencePiece vocabulary and Llama 3's, which answer worse without it.
  const pre = PRE_TOKENIZERS[str(meta, "tokenizer.ggml.pre") ?? "default"];
  const addBos = bool(meta, "tokenizer.ggml.add_bos_token") ?? (sentencePiece || (pre?.addBos ?? false));
  const addEos = bool(meta, "tokenizer.ggml.add_eos_token") ?? false;
  const addedTokens = buildAddedTokens(tokens, types);

  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: model.normalizer,
    pre_tokenizer: model.preTokenizer,
    post_processor: bosEosPostProcessor(addBos ? bos : undefined, addEos ? eos : undefined),
    decoder: model.decoder,
    model: model.model,
  };

  const tokenizerConfig: Record<string, unknown> = {
    // Not LlamaTokenizer(Fast): transformers would rebuild a SentencePiece pipeline for a llama.
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: bos?.token ?? null,
    eos_token: eos?.token ?? null,
    pad_token: special("padding")?.token ?? null,
    unk_token: special("unknown")?.token ?? null,
    add_bos_token: addBos,
    add_eos_token: addEos,
    // Byte-level BPE decodes losslessly; the WordPiece-era cleanup would eat spaces before punctuation.
    clean_up_tokenization_spaces: false,
    added_tokens_decoder: Object.fromEntries(addedTokens.map(({ id, ...rest }) => [String(id), rest])),
  };
  const arch = str(meta, "general.architecture");
  const chatTemplate = str(meta, "tokenizer.chat_template");
  const eosTokenIds = ["eos", "eot", "eom"].flatMap((name) => special(name)?.id ?? []);
  // llama.cpp's converter writes a model's other named templates as tokenizer.chat_template.<name>.
  const toolUseTemplate = str(meta, "tokenizer.chat_template.tool_use");
  if (chatTemplate)
    tokenizerConfig.chat_template = toolUseTemplate
      ? [
          { name: "default", template: chatTemplate },
          { name: "tool_use", template: toolUseTemplate },
        ]
      : chatTemplate;
  else if (instructionTuned(meta)) {
    // None in the file: the family's own turn format, whose end-of-turn token then ends generation.
    // (Not for a base model, such as the `gemma3` alias: turns it was never taught make it ramble.)
    const fallback = defaultChatTemplate(arch);
    const endOfTurn = fallback ? tokens.indexOf(fallback.endOfTurn) : -1;
    if (fallback && endOfTurn >= 0) {
      tokenizerConfig.chat_template = fallback.template;
      eosTokenIds.push(endOfTurn);
    }
  }
  const contextLength = arch ? num(meta, `${arch}.context_length`) : undefined;
  if (contextLength) tokenizerConfig.model_max_length = contextLength;

  return { tokenizerJson, tokenizerConfig, eosTokenIds: [...new Set(eosTokenIds)] };
}

/** Whether the file says its model was tuned to follow instructions (llama.cpp's general.finetune: "it", "instruct", "chat"). */
function instructionTuned(meta: Record<string, unknown>): boolean {
  const labels = [str(meta, "general.finetune"), str(meta, "general.name")].filter(Boolean).join(" ");
  return /\b(it|instruct|chat)\b/i.test(labels);
}

interface ModelParts {
  normalizer: unknown;
  preTokenizer: unknown;
  decoder: unknown;
  model: Record<string, unknown>;
}

/** GPT-2 style byte-level BPE: the file's merges, a pre-tokenizer split by its `pre` type. */
function byteLevelModel(meta: Record<string, unknown>, tokens: string[], types: number[]): ModelParts {
  const spec = supportedPreTokenizer(meta);
  const merges = list<string>(meta, "tokenizer.ggml.merges");
  if (!merges) throw new Error("GGUF metadata has no tokenizer.ggml.merges (needed for a BPE tokenizer)");
  return {
    normalizer: null,
    preTokenizer: preTokenizer(spec),
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: spec.ignoreMerges ?? false,
      vocab: buildVocab(tokens, types),
      merges: merges.map(splitMerge),
    },
  };
}

/**
 * SentencePiece BPE (llama.cpp's "llama" model: Gemma, Llama 2, Mistral v0.1): spaces become
 * "▁", pieces merge by score, unknown characters fall back to <0xXX> byte tokens. The file has
 * scores instead of merges; the merges are rebuilt from them as transformers does for a
 * SentencePiece model (every split of a piece into two pieces, the highest-scoring piece first).
 */
function sentencePieceModel(meta: Record<string, unknown>, tokens: string[], types: number[]): ModelParts {
  const scores = list<number>(meta, "tokenizer.ggml.scores");
  if (!scores || scores.length !== tokens.length)
    throw new Error("GGUF metadata has no tokenizer.ggml.scores for its SentencePiece vocabulary");
  // The first id of each piece (a Map: lookups in an object of 262,144 keys are slow).
  const ids = new Map<string, number>();
  tokens.forEach((token, id) => {
    if (!ids.has(token)) ids.set(token, id);
  });
  const merges = mergesByScore(tokens, types, scores, ids);
  const vocab: Record<string, number> = Object.create(null);
  for (const [token, id] of ids) vocab[token] = id;
  const addSpacePrefix = bool(meta, "tokenizer.ggml.add_space_prefix") ?? true;
  const replaceSpaces = { type: "Replace", pattern: { String: " " }, content: "▁" };
  const unknown = num(meta, "tokenizer.ggml.unknown_token_id");
  return {
    normalizer: addSpacePrefix
      ? { type: "Sequence", normalizers: [{ type: "Prepend", prepend: "▁" }, replaceSpaces] }
      : replaceSpaces,
    preTokenizer: null,
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        ...(addSpacePrefix ? [{ type: "Strip", content: " ", start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: unknown !== undefined ? (tokens[unknown] ?? null) : null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

/**
 * Every split of a normal or user-defined piece into two pieces of the vocabulary, as a merge
 * ranked by the piece's score (highest first), then the longer left part, the longer right part,
 * then the piece's id and the parts' ids (the order of transformers' SentencePiece converter).
 */
function mergesByScore(tokens: string[], types: number[], scores: number[], ids: Map<string, number>): string[][] {
  const piece: number[] = [];
  const leftId: number[] = [];
  const rightId: number[] = [];
  for (let id = 0; id < tokens.length; id++) {
    if (types[id] !== undefined && types[id] !== TOKEN_TYPE_NORMAL && types[id] !== TOKEN_TYPE_USER_DEFINED) continue;
    const token = tokens[id]!;
    const n = token.length;
    for (let i = 1; i < n; i++) {
      // Splits between characters, not inside a surrogate pair.
      const unit = token.charCodeAt(i);
      if (unit >= 0xdc00 && unit <= 0xdfff) continue;
      const l = ids.get(token.slice(0, i));
      if (l === undefined) continue;
      const r = ids.get(token.slice(i));
      if (r === undefined) continue;
      piece.push(id);
      leftId.push(l);
      rightId.push(r);
    }
  }
  const order = Array.from(piece.keys());
  order.sort((x, y) => {
    const [px, py] = [piece[x]!, piece[y]!];
    return (
      scores[py]! - scores[px]! ||
      tokens[leftId[y]!]!.length - tokens[leftId[x]!]!.length ||
      tokens[rightId[y]!]!.length - tokens[rightId[x]!]!.length ||
      px - py ||
      leftId[x]! - leftId[y]! ||
      rightId[x]! - rightId[y]!
    );
  });
  return order.map((i) => [tokens[leftId[i]!]!, tokens[rightId[i]!]!]);
}

/** The pre-tokenizer spec for this file, or an error naming what is supported. */
function supportedPreTokenizer(meta: Record<string, unknown>): PreTokenizerSpec {
  const model = str(meta, "tokenizer.ggml.model");
  if (!model || !SUPPORTED_MODELS.includes(model)) {
    throw new Error(
      `unsupported GGUF tokenizer model ${JSON.stringify(model ?? null)}; supported: ${SUPPORTED_MODELS.join(", ")}`,
    );
  }
  // llama.cpp treats a missing pre type as "default" too.
  const pre = str(meta, "tokenizer.ggml.pre") ?? "default";
  const spec = PRE_TOKENIZERS[pre];
  if (!spec) {
    throw new Error(
      `unsupported GGUF pre-tokenizer ${JSON.stringify(pre)} (tokenizer model "${model}"); ` +
        `supported: ${Object.keys(PRE_TOKENIZERS).join(", ")}`,
    );
  }
  return spec;
}

interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/**
 * Control tokens (<|im_start|>, <|endoftext|>) become special added tokens and user-defined ones
 * (<think>) plain added tokens: llama.cpp matches both whole in the input text, so they must never
 * be cut into BPE pieces.
 */
function buildAddedTokens(tokens: string[], types: number[]): AddedTokenJson[] {
  const added: AddedTokenJson[] = [];
  types.forEach((type, id) => {
    if (type !== TOKEN_TYPE_CONTROL && type !== TOKEN_TYPE_USER_DEFINED) return;
    const content = tokens[id];
    if (!content) return;
    const special = type === TOKEN_TYPE_CONTROL;
    added.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special });
  });
  return added;
}

/**
 * token → id. Ordinary tokens in a byte-level vocabulary are already spelled in the byte alphabet;
 * one that is not (a converter slip) is respelled from its UTF-8 bytes, as transformers does.
 * Added tokens keep their literal text: that is how tokenizer.json lists them too.
 */
function buildVocab(tokens: string[], types: number[]): Record<string, number> {
  // Null prototype: tokens such as "constructor" or "__proto__" must be plain keys.
  const vocab: Record<string, number> = Object.create(null);
  tokens.forEach((token, id) => {
    const literal = types[id] === TOKEN_TYPE_CONTROL || types[id] === TOKEN_TYPE_USER_DEFINED;
    const spelled = literal || BYTE_LEVEL_SPELLING.test(token) ? token : toByteLevel(token);
    // Keep the first id if two tokens collide, so ids stay those of the file.
    if (!(spelled in vocab)) vocab[spelled] = id;
  });
  return vocab;
}

/** "Ġ t" → ["Ġ", "t"]. Byte-level tokens never contain a real space, so the first space is the divider. */
function splitMerge(merge: string): [string, string] {
  const space = merge.indexOf(" ", 1);
  if (space < 0) throw new Error(`malformed GGUF merge ${JSON.stringify(merge)}`);
  return [merge.slice(0, space), merge.slice(space + 1)];
}

function preTokenizer(spec: PreTokenizerSpec): Record<string, unknown> {
  const steps: Record<string, unknown>[] = [];
  // A regex split rather than the `Digits` pre-tokenizer: Rust's Digits uses Unicode numerics but
  // tokenizers.js only ASCII \d; "\p{N}" means the same in both and is llama.cpp's own pattern.
  if (spec.isolateDigits) steps.push(isolatedSplit("\\p{N}"));
  if (spec.split) steps.push(isolatedSplit(spec.split));
  steps.push({ type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: spec.split === null });
  return steps.length === 1 ? steps[0]! : { type: "Sequence", pretokenizers: steps };
}

function isolatedSplit(regex: string): Record<string, unknown> {
  return { type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false };
}

export interface SpecialToken {
  token: string;
  id: number;
}

/**
 * A post-processor putting BOS/EOS around each sequence ("[BOS] $A [EOS]"), as transformers'
 * TokenizersBackend builds it from add_bos_token/add_eos_token.
 */
export function bosEosPostProcessor(bos?: SpecialToken, eos?: SpecialToken): Record<string, unknown> {
  const seq = (id: "A" | "B", typeId: number) => ({ Sequence: { id, type_id: typeId } });
  const special = (t: SpecialToken | undefined, typeId: number) =>
    t ? [{ SpecialToken: { id: t.token, type_id: typeId } }] : [];
  const specialTokens: Record<string, unknown> = {};
  for (const t of [bos, eos]) if (t) specialTokens[t.token] = { id: t.token, ids: [t.id], tokens: [t.token] };
  return {
    type: "TemplateProcessing",
    single: [...special(bos, 0), seq("A", 0), ...special(eos, 0)],
    pair: [...special(bos, 0), seq("A", 0), ...special(eos, 0), ...special(bos, 1), seq("B", 1), ...special(eos, 1)],
    special_tokens: specialTokens,
  };
}

// GPT-2's byte-level alphabet: each byte gets a printable character, so a token is a plain string.

let byteToCharCache: string[] | undefined;

/** byte → its character in the byte-level alphabet (GPT-2's bytes_to_unicode). */
export function byteToChar(): string[] {
  if (byteToCharCache) return byteToCharCache;
  const table: string[] = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : next++);
  }
  return (byteToCharCache = table);
}

/** Strings written only in the byte alphabet: printable Latin-1 as itself, the other 68 bytes as U+0100–U+0143. */
const BYTE_LEVEL_SPELLING = /^[\u0021-\u007e\u00a1-\u00ac\u00ae-\u0143]*$/;

function toByteLevel(text: string): string {
  const table = byteToChar();
  return Array.from(new TextEncoder().encode(text), (b) => table[b]).join("");
}

// Metadata accessors: the engine hands scalars as numbers/booleans/strings and lists as arrays.

function str(meta: Record<string, unknown>, key: string): string | undefined {
  const v = meta[key];
  return typeof v === "string" ? v : undefined;
}

function num(meta: Record<string, unknown>, key: string): number | undefined {
  const v = meta[key];
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  return undefined;
}

function bool(meta: Record<string, unknown>, key: string): boolean | undefined {
  const v = meta[key];
  if (typeof v === "boolean") return v;
  if (typeof v === "number") return v !== 0;
  return undefined;
}

function list<T>(meta: Record<string, unknown>, key: string): T[] | undefined {
  const v = meta[key];
  if (Array.isArray(v)) return v as T[];
  // Typed arrays (a reader may hand token types as Int32Array).
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) return Array.from(v as unknown as ArrayLike<T>);
  return undefined;
}
