// The embeddings requests: OpenAI's /v1/embeddings, Ollama's /api/embed and its older
// /api/embeddings; validated and reduced to the same inputs and options, and the base64 form
// of a vector.
import type { EmbedInput } from "../engine/embed";
import { OPTIONS as OLLAMA_OPTIONS, parseKeepAlive } from "./ollama";
import { truncatePromptTokens } from "./openai";
import { Fields, ValidationError } from "./validate";

export interface EmbeddingsRequest {
  model?: string;
  inputs: EmbedInput[];
  dimensions?: number;
  /** OpenAI's encoding_format. */
  base64: boolean;
  /** Ollama's truncate (default true); OpenAI refuses an input over the context. */
  truncate: boolean;
  /** Ollama's options.num_ctx: a context shorter than the model's. */
  context?: number;
  /** vLLM's truncate_prompt_tokens: each input cut to this many tokens (-1: to the context). */
  truncatePromptTokens?: number;
  keepAlive?: number;
  /** The field that holds the inputs, for errors about them. */
  param: string;
}

/** Most inputs in one request (OpenAI's limit). */
export const MAX_INPUTS = 2048;

/** `input`: a string, a list of strings, a list of token ids, or a list of such lists. */
function inputs(f: Fields, field: string): EmbedInput[] {
  const raw = f.raw(field);
  if (typeof raw === "string") return [raw];
  if (raw !== undefined && raw !== null && !Array.isArray(raw))
    f.fail(field, "must be a string, a list of strings, a list of token ids or a list of such lists");
  const list = f.array(field, { required: true, nonEmpty: true })!;
  // One list of token ids is one input, as long as the context allows: the limit counts inputs.
  if (list.every((t) => typeof t === "number")) return [tokenIds(list, field)];
  if (list.length > MAX_INPUTS) f.fail(field, `may hold at most ${MAX_INPUTS} inputs, got ${list.length}`);
  return list.map((item, i) => {
    if (typeof item === "string") return item;
    if (Array.isArray(item)) return tokenIds(item, `${field}.${i}`);
    throw new ValidationError(`'${field}.${i}' must be a string or a list of token ids`, `${field}.${i}`);
  });
}

function tokenIds(list: unknown[], at: string): number[] {
  if (list.length === 0) throw new ValidationError(`'${at}' must not be empty`, at);
  list.forEach((t, i) => {
    if (!Number.isInteger(t) || (t as number) < 0)
      throw new ValidationError(`'${at}.${i}' must be a token id (a whole number >= 0)`, `${at}.${i}`);
  });
  return list as number[];
}

export function parseOpenAIEmbeddings(body: unknown): EmbeddingsRequest {
  const f = Fields.of(body);
  f.onlyKnown(["model", "input", "dimensions", "encoding_format", "user", "truncate_prompt_tokens"]);
  const format = f.string("encoding_format") ?? "float";
  if (format !== "float" && format !== "base64")
    f.fail("encoding_format", `must be 'float' or 'base64'; got '${format}'`);
  f.string("user");
  return {
    model: f.string("model", { nonEmpty: true }),
    inputs: inputs(f, "input"),
    dimensions: f.integer("dimensions", { min: 1 }),
    base64: format === "base64",
    // OpenAI refuses an input over the context; vLLM cuts it where truncate_prompt_tokens is sent.
    truncate: false,
    truncatePromptTokens: truncatePromptTokens(f),
    param: "input",
  };
}

/** /api/embed: `input` (a string or strings), `truncate`, `dimensions`, `keep_alive`; /api/embeddings: `prompt`. */
export function parseOllamaEmbed(body: unknown, legacy: boolean): EmbeddingsRequest & { model: string } {
  const f = Fields.of(body);
  const param = legacy ? "prompt" : "input";
  f.onlyKnown(["model", param, "truncate", "dimensions", "keep_alive", "options"]);
  // Ollama takes the options a generation takes (clients send one set to both) and an embedding
  // reads only num_ctx, which can shorten the context, not grow it: the others cannot change it.
  const options = f.object("options");
  options?.onlyKnown(OLLAMA_OPTIONS);
  return {
    model: f.string("model", { required: true, nonEmpty: true })!,
    inputs: ollamaInputs(f, param),
    dimensions: f.integer("dimensions", { min: 1 }),
    base64: false,
    truncate: f.boolean("truncate") ?? true,
    context: options?.integer("num_ctx", { min: 1 }),
    keepAlive: parseKeepAlive(f.raw("keep_alive")),
    param,
  };
}

/** No input, "" or [] embeds nothing: Ollama's way to load a model ahead of use. */
function ollamaInputs(f: Fields, param: string): EmbedInput[] {
  const raw = f.raw(param);
  if (raw === undefined || raw === null || raw === "" || (Array.isArray(raw) && raw.length === 0)) return [];
  return param === "prompt" ? [f.string(param)!] : inputs(f, param);
}

/** A vector as OpenAI's base64 encoding_format sends it: little-endian float32 bytes. */
export function base64Vector(v: number[]): string {
  return Buffer.from(Float32Array.from(v).buffer).toString("base64");
}
