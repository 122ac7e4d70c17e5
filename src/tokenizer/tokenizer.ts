// The tokenizer the engine talks to: Hugging Face tokenizer.json semantics (via
// @huggingface/tokenizers), chat templates (via @huggingface/jinja), and the special ids
// generation needs. Loads either a model directory or a GGUF's metadata.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer as HFTokenizer } from "@huggingface/tokenizers";
import type { Template } from "@huggingface/jinja";
import { bosEosPostProcessor, byteToChar, tokenizerFilesFromGGUF } from "./gguf";
import { cachedTokenizerFiles } from "./gguf-cache";
import { runSteps, type Steps } from "../event-loop";
import { parseTemplate, renderTemplate } from "./python-jinja";

export interface ChatMessage {
  role: string;
  content?: unknown;
  [key: string]: unknown;
}

export interface EncodeOptions {
  /** Add what the tokenizer's post-processor adds (BOS for most llama-3 style models). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (<|im_end|>, BOS, ...) from the text. Default false. */
  skipSpecialTokens?: boolean;
}

export interface ChatTemplateOptions {
  /** End with the assistant's turn header so the model answers. Default true. */
  addGenerationPrompt?: boolean;
  /** Tool JSON schemas, handed to the template as `tools`. */
  tools?: unknown[];
  /** Further template variables (e.g. enable_thinking). */
  extra?: Record<string, unknown>;
}

type Json = Record<string, unknown>;

// The named special tokens transformers hands to chat templates (SPECIAL_TOKENS_ATTRIBUTES).
const NAMED_SPECIAL_TOKENS = [
  "bos_token",
  "eos_token",
  "unk_token",
  "sep_token",
  "pad_token",
  "cls_token",
  "mask_token",
];

export class Tokenizer {
  /** Every id that ends generation. */
  readonly eosTokenIds: Set<number>;
  readonly bosTokenId: number | undefined;
  /** Number of ids the tokenizer knows (highest id + 1, added tokens included). */
  readonly vocabSize: number;
  /** The raw chat template, if the model has one. */
  readonly chatTemplate: string | undefined;
  /** The template a model names "tool_use" beside its default one (Hermes 2 Pro's, 3's), for a conversation that offers tools. */
  readonly toolUseChatTemplate: string | undefined;
  /** The tokenizer_config.json contents. */
  readonly config: Json;
  /** True when decoding is byte-level BPE, so `tokenBytes` gives each token's exact bytes. */
  readonly isByteLevel: boolean;

  private readonly hf: HFTokenizer;
  private readonly specialIds: Set<number>;
  private readonly addedIds: Set<number>;
  /** Characters each side of a place encodeSteps may cut that are checked: more than any added token spans. */
  private readonly cutCheck: number;
  private readonly cleanUpSpaces: boolean;
  /** SentencePiece-style: "▁" stands for a space, and <0xNN> tokens for single bytes (byte_fallback). */
  private readonly metaspace: boolean;
  private readonly byteFallback: boolean;
  private readonly templates = new Map<string, Template>();
  private bytesCache: (Uint8Array | undefined)[] = [];

  /**
   * @param tokenizerJson parsed tokenizer.json
   * @param tokenizerConfig parsed tokenizer_config.json ({} if none)
   * @param extraEosIds eos ids from generation_config.json / config.json / GGUF metadata
   */
  constructor(tokenizerJson: Json, tokenizerConfig: Json = {}, extraEosIds: number[] = []) {
    this.config = tokenizerConfig;
    this.hf = new HFTokenizer(withUnicodeWhitespace(withConfiguredPostProcessor(tokenizerJson, tokenizerConfig)), {
      ...tokenizerConfig,
      // We apply cleanup ourselves (see decode); keep the library from doing it on its own default.
      clean_up_tokenization_spaces: false,
    });

    const added = (tokenizerJson.added_tokens as { id: number; content: string; special?: boolean }[]) ?? [];
    this.addedIds = new Set(added.map((t) => t.id));
    this.cutCheck = added.reduce((most, t) => Math.max(most, t.content.length + 1), CUT_CHECK);
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));
    for (const token of asList(tokenizerConfig.additional_special_tokens)) {
      const id = this.tokenToId(tokenString(token));
      if (id !== undefined) this.specialIds.add(id);
    }

    this.vocabSize = added.reduce((max, t) => Math.max(max, t.id), maxModelId(tokenizerJson)) + 1;

    this.bosTokenId = this.tokenToId(tokenString(tokenizerConfig.bos_token));
    const eos = this.tokenToId(tokenString(tokenizerConfig.eos_token));
    this.eosTokenIds = new Set([...(eos === undefined ? [] : [eos]), ...extraEosIds]);

    this.chatTemplate = pickChatTemplate(tokenizerConfig.chat_template);
    this.toolUseChatTemplate = namedChatTemplate(tokenizerConfig.chat_template, "tool_use");
    this.isByteLevel = (tokenizerJson.decoder as Json | null)?.type === "ByteLevel";
    // transformers (v5) never cleans up after BPE: it would delete real spaces before punctuation.
    const modelType = (tokenizerJson.model as Json | undefined)?.type;
    this.cleanUpSpaces = tokenizerConfig.clean_up_tokenization_spaces === true && modelType !== "BPE";
    this.metaspace = JSON.stringify(tokenizerJson.decoder ?? null).includes("\u2581");
    this.byteFallback = (tokenizerJson.model as Json | undefined)?.byte_fallback === true;
  }

  /** Loads tokenizer.json, tokenizer_config.json, chat_template.jinja (or .json) and eos ids from a model directory. */
  static fromDirectory(dir: string): Tokenizer {
    const tokenizerJson = readJson(join(dir, "tokenizer.json"), "tokenizer.json");
    if (!tokenizerJson) throw new Error(`no tokenizer.json in ${dir}`);
    const config = readJson(join(dir, "tokenizer_config.json"), "tokenizer_config.json") ?? {};

    // transformers v5 saves the template beside the config, and that file wins; a multimodal
    // model's processor saved it in chat_template.json (google/gemma-3-*-it), read where the
    // config has none.
    const templatePath = join(dir, "chat_template.jinja");
    if (existsSync(templatePath)) config.chat_template = readFileSync(templatePath, "utf8");
    config.chat_template ??= readJson(join(dir, "chat_template.json"), "chat_template.json")?.chat_template;
    // v5 saves a model's other named templates (Hermes' tool_use) in a folder beside it.
    const named = namedTemplateFiles(join(dir, "additional_chat_templates"));
    if (named.length > 0 && typeof config.chat_template === "string")
      config.chat_template = [{ name: "default", template: config.chat_template }, ...named];

    const eosIds = [
      ...idList(readJson(join(dir, "generation_config.json"), "generation_config.json")?.eos_token_id),
      ...configEosIds(readJson(join(dir, "config.json"), "config.json")),
    ];
    try {
      return new Tokenizer(tokenizerJson, config, eosIds);
    } catch (e) {
      throw new Error(`cannot load tokenizer.json in ${dir}: ${(e as Error).message}`);
    }
  }

  /**
   * Builds the tokenizer a GGUF describes (see tokenizerFilesFromGGUF for what is supported);
   * given the GGUF's `file`, through the cache of files built before (gguf-cache.ts).
   */
  static fromGGUFMetadata(meta: Record<string, unknown>, file?: string): Tokenizer {
    return runSteps(Tokenizer.fromGGUFMetadataSteps(meta, file));
  }

  /** As fromGGUFMetadata, pausing between its two long pieces: reading the files, building from them. */
  static *fromGGUFMetadataSteps(meta: Record<string, unknown>, file?: string): Steps<Tokenizer> {
    const { tokenizerJson, tokenizerConfig, eosTokenIds } = file
      ? cachedTokenizerFiles(file, meta)
      : tokenizerFilesFromGGUF(meta);
    yield;
    return new Tokenizer(tokenizerJson, tokenizerConfig, eosTokenIds);
  }

  encode(text: string, { addSpecialTokens = true }: EncodeOptions = {}): number[] {
    return this.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /**
   * As encode, pausing between pieces of a long text (a multi-megabyte one takes seconds in
   * one go), so that a server keeps answering meanwhile. The same ids: a piece ends only where
   * the text around the cut tokenizes as its two sides apart do (see #cutFrom); the special
   * tokens the post-processor adds around a text are added once, around all of them.
   */
  *encodeSteps(text: string, { addSpecialTokens = true }: EncodeOptions = {}): Steps<number[]> {
    if (text.length <= ENCODE_PIECE) return this.encode(text, { addSpecialTokens });
    const around = addSpecialTokens ? this.specialsAround() : { before: [], after: [] };
    if (!around) return this.encode(text, { addSpecialTokens });
    const ids = [...around.before];
    for (let start = 0; start < text.length; ) {
      const end = this.#cutFrom(text, start + ENCODE_PIECE);
      for (const id of this.encode(text.slice(start, end), { addSpecialTokens: false })) ids.push(id);
      start = end;
      yield;
    }
    ids.push(...around.after);
    return ids;
  }

  /**
   * Where a piece of `text` may end, at `from` or after: after a letter or digit that a space
   * and a letter follow, or after a letter that punctuation follows (text without spaces, as
   * Chinese), where pre-tokenizers split; once the text around it is seen to tokenize the same
   * cut there or not (a normalizer that prepends to or strips each text does not, nor a token
   * spanning the place). The end of the text when no nearby place does.
   */
  #cutFrom(text: string, from: number): number {
    const places = /[\p{L}\p{N}](?= \p{L})|\p{L}(?=[^\s\p{L}\p{N}])/gu;
    places.lastIndex = from;
    for (let tries = 0; tries < CUT_TRIES; tries++) {
      const found = places.exec(text);
      if (!found) break;
      const cut = found.index + found[0].length;
      const [left, right] = [text.slice(cut - this.cutCheck, cut), text.slice(cut, cut + this.cutCheck)];
      const apart = [
        ...this.encode(left, { addSpecialTokens: false }),
        ...this.encode(right, { addSpecialTokens: false }),
      ];
      const whole = this.encode(left + right, { addSpecialTokens: false });
      if (apart.length === whole.length && apart.every((id, i) => id === whole[i])) return cut;
    }
    return text.length;
  }

  /** The ids the post-processor adds before and after a text's; undefined when it does more than that. */
  specialsAround(): { before: number[]; after: number[] } | undefined {
    const bare = this.encode("a", { addSpecialTokens: false });
    const full = this.encode("a");
    for (let at = 0; at + bare.length <= full.length; at++)
      if (bare.every((id, i) => full[at + i] === id))
        return { before: full.slice(0, at), after: full.slice(at + bare.length) };
    return undefined;
  }

  decode(ids: readonly number[], { skipSpecialTokens = false }: DecodeOptions = {}): string {
    // Like the Rust tokenizers: ids with no token (padding rows of a larger embedding) are dropped.
    const kept = ids.filter((id) => this.hasId(id) && !(skipSpecialTokens && this.specialIds.has(id)));
    if (kept.length === 0) return ""; // the library refuses an empty list
    const text = this.hf.decode(kept, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
    return this.cleanUpSpaces ? cleanUpTokenization(text) : text;
  }

  /**
   * As decode, pausing between pieces of a long list of ids (a million take a second in one
   * go). The same text: a piece ends only where the ids around the cut decode as their two
   * sides apart do (not inside a character's bytes, nor before a token whose leading space a
   * decoder strips at the start of a text).
   */
  *decodeSteps(ids: readonly number[], options: DecodeOptions = {}): Steps<string> {
    if (ids.length <= DECODE_PIECE) return this.decode(ids, options);
    const parts: string[] = [];
    for (let start = 0; start < ids.length; ) {
      const end = this.#decodeCutFrom(ids, start + DECODE_PIECE, options);
      parts.push(this.decode(ids.slice(start, end), options));
      start = end;
      yield;
    }
    return parts.join("");
  }

  #decodeCutFrom(ids: readonly number[], from: number, options: DecodeOptions): number {
    for (let cut = from; cut < Math.min(ids.length, from + CUT_TRIES); cut++) {
      const [left, right] = [ids.slice(cut - CUT_CHECK, cut), ids.slice(cut, cut + CUT_CHECK)];
      if (this.decode(left, options) + this.decode(right, options) === this.decode([...left, ...right], options))
        return cut;
    }
    return ids.length;
  }

  /** Whether `decode` post-processes the whole text (so streaming must re-decode, not concatenate). */
  get cleansUpSpaces(): boolean {
    return this.cleanUpSpaces;
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  tokenToId(token: string | undefined): number | undefined {
    return token === undefined ? undefined : this.hf.token_to_id(token);
  }

  /** Whether `token` is one the tokenizer reads whole out of any text (an added token, as a FIM or chat marker). */
  isAddedToken(token: string): boolean {
    const id = this.tokenToId(token);
    return id !== undefined && this.addedIds.has(id);
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /**
   * The exact bytes a token decodes to, for a byte-level tokenizer (see isByteLevel): its
   * characters mapped back through the byte alphabet, or an added token's own UTF-8 text.
   * Concatenating these and decoding as UTF-8 equals `decode`.
   */
  tokenBytes(id: number): Uint8Array {
    if (!this.isByteLevel) throw new Error("tokenBytes needs a byte-level (ByteLevel decoder) tokenizer");
    let bytes = this.bytesCache[id];
    if (!bytes) {
      const token = this.hasId(id) ? this.idToToken(id)! : "";
      bytes = this.addedIds.has(id) ? utf8.encode(token) : byteLevelBytes(token);
      this.bytesCache[id] = bytes;
    }
    return bytes;
  }

  /**
   * The bytes one token stands for on its own, as llama.cpp's token_to_piece gives them: a
   * byte-level token's bytes, a SentencePiece byte token's (<0xE6>) one byte, a "▁" as a space
   * (also at the start, where a whole-text decode would strip it), else the token decoded alone.
   * May be part of a character.
   */
  pieceBytes(id: number): Uint8Array {
    if (this.isByteLevel) return this.tokenBytes(id);
    const token = this.hasId(id) ? this.idToToken(id)! : "";
    if (this.addedIds.has(id)) return utf8.encode(token);
    const byte = this.byteFallback ? /^<0x([0-9A-Fa-f]{2})>$/.exec(token) : null;
    if (byte) return Uint8Array.of(Number.parseInt(byte[1]!, 16));
    return utf8.encode(this.metaspace ? token.replaceAll("\u2581", " ") : this.decode([id]));
  }

  /**
   * The chat template a conversation is rendered with: given tools, the model's "tool_use" one
   * where it names one, as transformers' get_chat_template and llama.cpp's server pick it.
   */
  chatTemplateFor(tools: unknown[] | undefined): string | undefined {
    return (tools !== undefined && this.toolUseChatTemplate) || this.chatTemplate;
  }

  /** Renders a conversation with the model's chat template, as transformers' apply_chat_template(tokenize=False). */
  applyChatTemplate(
    messages: ChatMessage[],
    { addGenerationPrompt = true, tools, extra }: ChatTemplateOptions = {},
  ): string {
    const source = this.chatTemplateFor(tools);
    if (!source) throw new Error("this model has no chat template");
    let template = this.templates.get(source);
    if (!template) this.templates.set(source, (template = parseTemplate(source)));
    const specialTokens: Record<string, string> = {};
    for (const name of NAMED_SPECIAL_TOKENS) {
      const token = tokenString(this.config[name]);
      if (token !== undefined) specialTokens[name] = token;
    }
    return renderTemplate(template, {
      ...specialTokens,
      // transformers always passes these, as None when absent; templates test `tools is defined`.
      messages,
      tools: tools ?? null,
      documents: null,
      add_generation_prompt: addGenerationPrompt,
      ...extra,
    });
  }

  private hasId(id: number): boolean {
    return Number.isInteger(id) && id >= 0 && this.idToToken(id) !== undefined;
  }
}

const utf8 = new TextEncoder();

/**
 * Characters of text encodeSteps encodes between two pauses: a few ms (a BPE without
 * pre-tokenizer, as Gemma's, takes more than linear time in a piece's length).
 */
const ENCODE_PIECE = 4 * 1024;
/** Characters (or ids) at least each side of a piece's end checked to tokenize (or decode) the same cut or not. */
const CUT_CHECK = 64;
/** Ids decodeSteps decodes between two pauses. */
const DECODE_PIECE = 32 * 1024;
/**
 * Places to end a piece tried before the rest is encoded (or decoded) in one go: a tokenizer
 * that never cuts, or a long added token in the way.
 */
const CUT_TRIES = 64;

let charToByte: Map<string, number> | undefined;

/** A byte-level token's bytes; a token with a character outside the alphabet is taken as UTF-8, as Rust tokenizers does. */
function byteLevelBytes(token: string): Uint8Array {
  charToByte ??= new Map(byteToChar().map((c, b) => [c, b]));
  const chars = [...token];
  const bytes = new Uint8Array(chars.length);
  for (let i = 0; i < chars.length; i++) {
    const b = charToByte.get(chars[i]!);
    if (b === undefined) return utf8.encode(token);
    bytes[i] = b;
  }
  return bytes;
}

/**
 * transformers v5: when tokenizer_config says add_bos_token/add_eos_token, or tokenizer.json has
 * no post-processor, the post-processor becomes "[BOS] $A [EOS]" per those flags; otherwise
 * tokenizer.json's own post-processor decides.
 */
function withConfiguredPostProcessor(tokenizerJson: Json, config: Json): Json {
  const explicit = typeof config.add_bos_token === "boolean" || typeof config.add_eos_token === "boolean";
  if (!explicit && tokenizerJson.post_processor) return tokenizerJson;
  const vocabId = (token: string | undefined) => {
    if (token === undefined) return undefined;
    const added = (tokenizerJson.added_tokens as { id: number; content: string }[] | undefined)?.find(
      (t) => t.content === token,
    );
    return added?.id ?? ((tokenizerJson.model as Json)?.vocab as Record<string, number> | undefined)?.[token];
  };
  const pick = (flag: unknown, name: string) => {
    const token = flag === true ? tokenString(config[name]) : undefined;
    const id = vocabId(token);
    return token !== undefined && id !== undefined ? { token, id } : undefined;
  };
  return {
    ...tokenizerJson,
    post_processor: bosEosPostProcessor(
      pick(config.add_bos_token, "bos_token"),
      pick(config.add_eos_token, "eos_token"),
    ),
  };
}

// GPT-2's split rule, which a ByteLevel pre-tokenizer applies itself when use_regex is on.
const GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/**
 * tokenizers.js runs a ByteLevel pre-tokenizer's own split with JavaScript's \s, which misses
 * U+0085 and takes U+FEFF, so text holding them splits (and encodes) otherwise than in Rust
 * tokenizers and llama.cpp. The same rule as a Split pattern gets Unicode's White_Space from the
 * library's regex translation. Only without add_prefix_space, which ByteLevel adds before its split.
 */
function withUnicodeWhitespace(tokenizerJson: Json): Json {
  const rewrite = (step: Json | null | undefined): Json | null | undefined => {
    if (!step) return step;
    if (step.type === "Sequence" && Array.isArray(step.pretokenizers))
      return { ...step, pretokenizers: (step.pretokenizers as Json[]).map(rewrite) };
    if (step.type !== "ByteLevel" || step.use_regex === false || step.add_prefix_space === true) return step;
    const split = { type: "Split", pattern: { Regex: GPT2_SPLIT }, behavior: "Isolated", invert: false };
    return { type: "Sequence", pretokenizers: [split, { ...step, use_regex: false }] };
  };
  return { ...tokenizerJson, pre_tokenizer: rewrite(tokenizerJson.pre_tokenizer as Json | null) };
}

/** The highest id of the model's vocabulary: a token → id map (BPE, WordPiece) or a list (Unigram). */
function maxModelId(tokenizerJson: Json): number {
  const vocab = (tokenizerJson.model as Json | undefined)?.vocab;
  if (Array.isArray(vocab)) return vocab.length - 1;
  let max = -1;
  for (const id of Object.values((vocab ?? {}) as Record<string, number>)) if (id > max) max = id;
  return max;
}

/** transformers' clean_up_tokenization (WordPiece-era space fixes). */
function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(" .", ".")
    .replaceAll(" ?", "?")
    .replaceAll(" !", "!")
    .replaceAll(" ,", ",")
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

/** Reads a JSON file; undefined when it does not exist, a one-line error when it is corrupt. */
function readJson(path: string, name: string): Json | undefined {
  if (!existsSync(path)) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new Error(`${name} is corrupt (${path}): ${(e as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`${name} is corrupt (${path}): not a JSON object`);
  }
  return value as Json;
}

/** A special token in tokenizer_config is a string or an AddedToken object ({content: ...}). */
function tokenString(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as Json).content === "string")
    return (value as Json).content as string;
  return undefined;
}

/** chat_template is a string, or (older files) a list of {name, template} where "default" is the one to use. */
function pickChatTemplate(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (!Array.isArray(value)) return undefined;
  return namedChatTemplate(value, "default") ?? (value[0] as { template?: string } | undefined)?.template;
}

/** The template of a list of named ones (see pickChatTemplate) called `name`, if there is one. */
function namedChatTemplate(value: unknown, name: string): string | undefined {
  if (!Array.isArray(value)) return undefined;
  return (value as { name?: string; template?: string }[]).find((t) => t.name === name)?.template;
}

/** `<dir>/<name>.jinja` files as named templates; none when there is no such folder. */
function namedTemplateFiles(dir: string): { name: string; template: string }[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((file) => file.endsWith(".jinja"))
    .map((file) => ({ name: file.slice(0, -".jinja".length), template: readFileSync(join(dir, file), "utf8") }));
}

function asList(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/** An eos_token_id field: an int, a list of ints, or absent. */
function idList(value: unknown): number[] {
  if (typeof value === "number") return [value];
  return asList(value).filter((v): v is number => typeof v === "number");
}

/** config.json eos ids, including a multimodal model's text_config. */
function configEosIds(config: Json | undefined): number[] {
  if (!config) return [];
  return [...idList(config.eos_token_id), ...idList((config.text_config as Json | undefined)?.eos_token_id)];
}
