// A model's own sampling defaults: what the generation_config.json of a Hugging Face model
// recommends (Qwen's temperature 0.7, top_p 0.8, top_k 20, say), which vLLM's server applies to
// every request that does not set them. A GGUF has no such file.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import type { SamplingParams } from "../engine/sampling";

/** The sampling values a model or its alias may recommend. */
export type SamplingDefaults = Partial<
  Pick<SamplingParams, "temperature" | "topP" | "topK" | "minP" | "repetitionPenalty">
>;

/**
 * Each value's name in generation_config.json and models.toml, and the values it may take: those
 * validateSampling takes, or every request to the model would be refused over a field it never sent.
 */
export const SAMPLING_DEFAULT_KEYS: {
  key: keyof SamplingDefaults;
  name: string;
  /** Its name as an Ollama Modelfile's PARAMETER, where that is not `name`. */
  ollamaName?: string;
  valid: (v: number) => boolean;
  range: string;
}[] = [
  { key: "temperature", name: "temperature", valid: (v) => v >= 0 && v < Infinity, range: "a number >= 0" },
  { key: "topP", name: "top_p", valid: (v) => v > 0 && v <= 1, range: "a number in (0, 1]" },
  { key: "topK", name: "top_k", valid: (v) => Number.isInteger(v) && v >= 0, range: "a whole number >= 0" },
  { key: "minP", name: "min_p", valid: (v) => v >= 0 && v <= 1, range: "a number in [0, 1]" },
  {
    key: "repetitionPenalty",
    name: "repetition_penalty",
    ollamaName: "repeat_penalty",
    valid: (v) => v > 0 && v < Infinity,
    range: "a number > 0",
  },
];

/**
 * The sampling values the model directory at `path` recommends. A value that is not a number in
 * range is left out: the file is the model maker's, and the rest of it still holds.
 */
export function readGenerationDefaults(path: string): SamplingDefaults {
  const defaults: SamplingDefaults = {};
  const file = join(path, "generation_config.json");
  if (!statSync(path, { throwIfNoEntry: false })?.isDirectory() || !existsSync(file)) return defaults;
  let config: Record<string, unknown> = {};
  try {
    config = JSON.parse(readFileSync(file, "utf8"));
  } catch {
    // Unreadable: no recommendation (the tokenizer reads its end tokens the same forgiving way).
  }
  for (const { key, name, valid } of SAMPLING_DEFAULT_KEYS) {
    const value = config?.[name];
    if (typeof value === "number" && valid(value)) defaults[key] = value;
  }
  return defaults;
}

/** The values `defaults` sets, each by its name as an Ollama Modelfile's PARAMETER (Ollama's clients read them by those). */
export function ollamaParameters(defaults: SamplingDefaults): [name: string, value: number][] {
  return SAMPLING_DEFAULT_KEYS.filter(({ key }) => defaults[key] !== undefined).map(({ key, name, ollamaName }) => [
    ollamaName ?? name,
    defaults[key]!,
  ]);
}
