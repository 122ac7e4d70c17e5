// How a model's hidden states become one embedding: a sentence-transformers directory says so
// in modules.json and its Pooling module's config.json (e.g. 1_Pooling/config.json), a GGUF in
// llama.cpp's <arch>.pooling_type; any other model is pooled on its last token, as decoder
// embedding models (Qwen3-Embedding, e5-mistral) are.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { UnsupportedError } from "../errors";
import { readGGUFHeader } from "./gguf-header";
import { ModelLoadError } from "./load";
import { poolingConfigOf } from "../store/model-files";

export type Pooling = "last" | "mean" | "cls" | "max";

const POOLING_MODES: [string, Pooling][] = [
  ["pooling_mode_lasttoken", "last"],
  ["pooling_mode_mean_tokens", "mean"],
  ["pooling_mode_cls_token", "cls"],
  ["pooling_mode_max_tokens", "max"],
];

/** llama.cpp's llama_pooling_type (a GGUF's <arch>.pooling_type): the ones applied here, the others' names. */
const GGUF_POOLINGS: Record<number, Pooling> = { 1: "mean", 2: "cls", 3: "last" };
const GGUF_POOLING_NAMES: Record<number, string> = { 0: "none", 4: "rank" };

/** The sentence-transformers modules an embedding here applies: the model itself, its pooling, L2 normalisation (always). */
const APPLIED_MODULES = ["models.Transformer", "models.Pooling", "models.Normalize"];

/** The pooling of the model at `path` (a directory or a GGUF file). */
export function modelPooling(path: string): Pooling {
  if (!statSync(path).isDirectory()) return ggufPooling(path);
  const modulesPath = join(path, "modules.json");
  if (!existsSync(modulesPath)) return "last";
  const modules = readJsonFile(modulesPath);
  // A module past the pooling that changes the vector (Dense, LayerNorm, ...) is not applied here:
  // refused, rather than giving the pooled vector as if it were the model's embedding.
  const unapplied = Array.isArray(modules)
    ? modules.find((m) => typeof m?.type === "string" && !APPLIED_MODULES.some((kind) => m.type.endsWith(kind)))
    : undefined;
  if (unapplied)
    throw new UnsupportedError(
      `${path}: modules.json has a ${unapplied.type} module ('${unapplied.path ?? unapplied.name}'), which embeddings here do not apply (only the model, its pooling and normalisation)`,
      "model",
    );
  const poolingConfig = poolingConfigOf(modules);
  if (!poolingConfig) return "last";
  const config = readJsonFile(join(path, poolingConfig));
  // Weighted mean, mean by √length, or several modes at once (sentence-transformers joins their
  // vectors): refused, rather than pooled by the one mode known here among them.
  const otherMode = Object.keys(config ?? {}).find(
    (key) => key.startsWith("pooling_mode_") && config[key] === true && !POOLING_MODES.some(([known]) => known === key),
  );
  if (otherMode)
    throw new UnsupportedError(
      `${path}: its sentence-transformers pooling sets ${otherMode}, which embeddings here do not apply (only ${POOLING_MODES.map(([k]) => k).join(", ")}, one of them)`,
      "model",
    );
  const modes = POOLING_MODES.filter(([key]) => config?.[key] === true).map(([, mode]) => mode);
  if (modes.length !== 1)
    throw new ModelLoadError(
      `${path}: the sentence-transformers pooling must set exactly one of ${POOLING_MODES.map(([k]) => k).join(", ")}`,
    );
  return modes[0]!;
}

/** Whether the model at `path` is a sentence-transformers model: a directory with a modules.json. */
export function isSentenceTransformersModel(path: string): boolean {
  return statSync(path).isDirectory() && existsSync(join(path, "modules.json"));
}

/** The GGUF metadata key naming a model's pooling: llama.cpp's (and Ollama's) sign of an embedding model. */
export const ggufPoolingKey = (metadata: ReadonlyMap<string, unknown>) =>
  `${metadata.get("general.architecture")}.pooling_type`;

/**
 * The pooling a GGUF's metadata names, as llama.cpp reads it (Qwen3-Embedding's GGUFs say last,
 * nomic-embed's mean); the last token where it names none. No pooling (a vector per token) and
 * rank (a reranker's score) are refused, rather than pooled some other way.
 */
function ggufPooling(path: string): Pooling {
  const { key, type, pooling } = ggufPoolingType(readGGUFHeader(path).metadata);
  if (type === undefined) return "last";
  if (pooling) return pooling;
  const name = typeof type === "number" ? (GGUF_POOLING_NAMES[type] ?? "unknown") : "not a number";
  throw new UnsupportedError(
    `${path}: its ${key} is ${JSON.stringify(type)} (${name}), which embeddings here do not apply (only 1 mean, 2 cls or 3 last)`,
    "model",
  );
}

/** A GGUF's <arch>.pooling_type: its key, its value, and the pooling it means here (undefined for none, rank or other values). */
function ggufPoolingType(metadata: ReadonlyMap<string, unknown>): { key: string; type: unknown; pooling?: Pooling } {
  const key = ggufPoolingKey(metadata);
  const type = metadata.get(key);
  return { key, type, pooling: typeof type === "number" ? GGUF_POOLINGS[type] : undefined };
}

/**
 * The files that keep a GGUF's pooling in a directory converted from it, as sentence-transformers
 * writes them (modules.json, 1_Pooling/config.json), so the directory embeds as the GGUF did;
 * none where the GGUF names no pooling applied here (the directory then pools the last token).
 */
export function sentenceTransformersPoolingFiles(
  metadata: ReadonlyMap<string, unknown>,
  hiddenSize: number,
): Record<string, unknown> | undefined {
  const { pooling } = ggufPoolingType(metadata);
  if (!pooling) return undefined;
  const modules = [
    { idx: 0, name: "0", path: "", type: "sentence_transformers.models.Transformer" },
    { idx: 1, name: "1", path: "1_Pooling", type: "sentence_transformers.models.Pooling" },
    { idx: 2, name: "2", path: "2_Normalize", type: "sentence_transformers.models.Normalize" },
  ];
  const modes = Object.fromEntries(POOLING_MODES.map(([key, mode]) => [key, mode === pooling]));
  return {
    "modules.json": modules,
    "1_Pooling/config.json": { word_embedding_dimension: hiddenSize, ...modes, include_prompt: true },
  };
}

/**
 * The prompt a sentence-transformers model at `path` puts before every text it embeds: its
 * config_sentence_transformers.json's prompts[default_prompt_name], as SentenceTransformer.encode
 * applies it when asked for no other; undefined when it names none (nor do our APIs name one).
 */
export function sentenceTransformersPrompt(path: string, pooling: Pooling): string | undefined {
  const configPath = join(path, "config_sentence_transformers.json");
  if (!statSync(path).isDirectory() || !existsSync(configPath)) return undefined;
  const { prompts, default_prompt_name: name } = readJsonFile(configPath) ?? {};
  if (name === undefined || name === null) return undefined;
  const prompt = typeof prompts === "object" && prompts !== null ? prompts[name] : undefined;
  if (typeof prompt !== "string")
    throw new ModelLoadError(
      `${path}: config_sentence_transformers.json's default_prompt_name '${name}' is not among its prompts (${Object.keys(prompts ?? {}).join(", ")})`,
    );
  // Its tokens, which such a pooling would leave out of the mean or maximum, are pooled here:
  // refused, rather than pooled with them.
  if (prompt && (pooling === "mean" || pooling === "max") && poolingModuleConfig(path)?.include_prompt === false)
    throw new UnsupportedError(
      `${path}: its sentence-transformers pooling leaves the prompt's tokens out (include_prompt false), which embeddings here do not do`,
      "model",
    );
  return prompt || undefined;
}

/** The settings of the Pooling module a sentence-transformers directory's modules.json names, if any. */
function poolingModuleConfig(path: string): any {
  const modulesPath = join(path, "modules.json");
  const poolingConfig = existsSync(modulesPath) ? poolingConfigOf(readJsonFile(modulesPath)) : undefined;
  return poolingConfig ? readJsonFile(join(path, poolingConfig)) : undefined;
}

/**
 * The most tokens a sentence-transformers model at `path` embeds (sentence_bert_config.json's
 * max_seq_length, which sentence-transformers cuts its inputs to); undefined when it says none.
 */
export function sentenceTransformersMaxLength(path: string): number | undefined {
  const max = sentenceBertConfig(path).max_seq_length;
  return typeof max === "number" && Number.isInteger(max) && max > 0 ? max : undefined;
}

/**
 * Whether a sentence-transformers model at `path` lower-cases its texts (prompt included) before
 * tokenizing them: sentence_bert_config.json's do_lower_case, which its Transformer module applies.
 */
export function sentenceTransformersLowerCase(path: string): boolean {
  return sentenceBertConfig(path).do_lower_case === true;
}

/** A sentence-transformers Transformer module's settings (sentence_bert_config.json); none where it has none. */
function sentenceBertConfig(path: string): Record<string, unknown> {
  const configPath = join(path, "sentence_bert_config.json");
  if (!statSync(path).isDirectory() || !existsSync(configPath)) return {};
  return readJsonFile(configPath) ?? {};
}

function readJsonFile(path: string): any {
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new ModelLoadError(`cannot read ${path}: ${(error as Error).message}`);
  }
}
