// A model's own sampling defaults: what the generation_config.json of a Hugging Face model
// recommends (Qwen's temperature 0.7, top_p 0.8, top_k 20, say), which vLLM's server applies to
// every request that does not set them. A GGUF has no such file.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { WHOLE_CONTEXT } from "../api/common";
import type { SamplingParams } from "../engine/sampling";
import type { ModelLimits } from "../store/aliases";

/** The sampling values a model or its alias may recommend. */
export type SamplingDefaults = Partial<
  Pick<
    SamplingParams,
    | "temperature"
    | "topP"
    | "topK"
    | "minP"
    | "repetitionPenalty"
    | "repetitionContext"
    | "seed"
    | "presencePenalty"
    | "frequencyPenalty"
  >
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
  /** Set where only models.toml gives it (an Ollama Modelfile's PARAMETER), not generation_config.json. */
  aliasOnly?: true;
  valid: (v: number) => boolean;
  range: string;
  /** The engine's value for the one written, where they differ (repeat_last_n's -1: the whole context). */
  engine?: (v: number) => number;
  /** The value written for the engine's (engine's inverse). */
  written?: (v: number) => number;
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
  // Ollama's options a Modelfile's PARAMETER keeps with a model, applied as /api/chat applies them.
  {
    key: "repetitionContext",
    name: "repeat_last_n",
    aliasOnly: true,
    valid: (v) => Number.isInteger(v) && v >= -1,
    range: "a whole number >= -1 (-1: the whole context, 0: no repetition penalty)",
    engine: (v) => (v === -1 ? WHOLE_CONTEXT : v),
    written: (v) => (v === WHOLE_CONTEXT ? -1 : v),
  },
  {
    key: "seed",
    name: "seed",
    aliasOnly: true,
    valid: (v) => Number.isSafeInteger(v) && v >= 0,
    range: "a whole number >= 0",
  },
  {
    key: "presencePenalty",
    name: "presence_penalty",
    aliasOnly: true,
    valid: (v) => v >= -2 && v <= 2,
    range: "a number in [-2, 2]",
  },
  {
    key: "frequencyPenalty",
    name: "frequency_penalty",
    aliasOnly: true,
    valid: (v) => v >= -2 && v <= 2,
    range: "a number in [-2, 2]",
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
  for (const { key, name, valid, aliasOnly } of SAMPLING_DEFAULT_KEYS) {
    if (aliasOnly) continue;
    const value = config?.[name];
    if (typeof value === "number" && valid(value)) defaults[key] = value;
  }
  return defaults;
}

/**
 * The values a model's requests get where they set none, each by its name as an Ollama Modelfile's
 * PARAMETER (Ollama's clients read them by those): its sampling values, then its alias's context,
 * answer length and stop strings (each stop string a value of its own, as Ollama lists them).
 * /api/show and `mlx show` both list these.
 */
export function ollamaParameters(
  defaults: SamplingDefaults,
  { stop = [], numPredict, numCtx }: ModelLimits = {},
): [name: string, value: number | string][] {
  return [
    ...SAMPLING_DEFAULT_KEYS.filter(({ key }) => defaults[key] !== undefined).map(
      ({ key, name, ollamaName, written }): [string, number] => [
        ollamaName ?? name,
        written ? written(defaults[key]!) : defaults[key]!,
      ],
    ),
    ...(numCtx === undefined ? [] : [["num_ctx", numCtx] as [string, number]]),
    ...(numPredict === undefined ? [] : [["num_predict", numPredict] as [string, number]]),
    ...stop.map((text): [string, string] => ["stop", text]),
  ];
}

/** A parameter's value as Ollama's /api/show lists it: a number as it is, a string as Go's %#v quotes it. */
export const ollamaParameterText = (value: number | string) =>
  typeof value === "string" ? JSON.stringify(value) : String(value);
