// The embeddings requests: OpenAI's /v1/embeddings, Ollama's /api/embed and its older
// /api/embeddings; validated and reduced to the same inputs and options, and the base64 form
// of a vector.
import type { EmbedInput } from "../engine/embed";
import { parseKeepAlive } from "./ollama";
import { Fields, ValidationError } from "./validate";

export interface EmbeddingsRequest {
  model?: string;
  inputs: EmbedInput[];
  dimensions?: number;
  /** OpenAI's encoding_format. */
  base64: boolean;
  /** Ollama's truncate (default true); OpenAI refuses an input over the context. */
  truncate: boolean;
  keepAlive?: number;
}

/** Most inputs in one request (OpenAI's limit). */
export const MAX_INPUTS = 2048;

/** `input`: a string, a list of strings, a list of token ids, or a list of such lists. */
function inputs(f: Fields, field: string): EmbedInput[] {
  const raw = f.raw(field);
  if (typeof raw === "string") return [raw];
  const list = f.array(field, { required: true, nonEmpty: true, max: MAX_INPUTS })!;
  if (list.every((t) => typeof t === "number")) return [tokenIds(list, field)];
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
  f.onlyKnown(["model", "input", "dimensions", "encoding_format", "user"]);
  const format = f.string("encoding_format") ?? "float";
  if (format !== "float" && format !== "base64")
    f.fail("encoding_format", `must be 'float' or 'base64'; got '${format}'`);
  f.string("user");
  return {
    model: f.string("model", { nonEmpty: true }),
    inputs: inputs(f, "input"),
    dimensions: f.integer("dimensions", { min: 1 }),
    base64: format === "base64",
    truncate: false,
  };
}

/** /api/embed: `input` (a string or strings), `truncate`, `dimensions`, `keep_alive`; /api/embeddings: `prompt`. */
export function parseOllamaEmbed(body: unknown, legacy: boolean): EmbeddingsRequest & { model: string } {
  const f = Fields.of(body);
  f.onlyKnown(["model", legacy ? "prompt" : "input", "truncate", "dimensions", "keep_alive", "options"]);
  // Options change sampling, which an embedding has none of; a model's context cannot grow here.
  const options = f.object("options");
  options?.onlyKnown(["num_ctx"]);
  options?.integer("num_ctx", { min: 1 });
  const input = legacy ? [f.string("prompt", { required: true }) ?? ""] : inputs(f, "input");
  return {
    model: f.string("model", { required: true, nonEmpty: true })!,
    inputs: input,
    dimensions: f.integer("dimensions", { min: 1 }),
    base64: false,
    truncate: f.boolean("truncate") ?? true,
    keepAlive: parseKeepAlive(f.raw("keep_alive")),
  };
}

/** A vector as OpenAI's base64 encoding_format sends it: little-endian float32 bytes. */
export function base64Vector(v: number[]): string {
  return Buffer.from(Float32Array.from(v).buffer).toString("base64");
}
