// What a model runs with beyond its weights: its KV cache's quantization and size, a LoRA/DoRA
// adapter and speculative decoding, as models.toml's alias gives them or a caller sets them, and
// the sampling values its requests get where they set none. The CLI's commands and the library
// put them on a loaded model here, alike; the server settles each request's sampling here too.
import type { SamplingInput } from "../api/common";
import type { KvQuantization } from "../models/cache";
import type { SamplingDefaults } from "../models/generation-config";
import type { LoadedModel, SpeculationChoice } from "../models/load";
import { loadAdapter } from "../models/lora";
import {
  aliasAdapter,
  aliasKvQuantization,
  aliasLimits,
  aliasMaxKvSize,
  aliasPrompt,
  aliasSampling,
  aliasSpeculation,
  type ModelLimits,
  type ModelPrompt,
} from "../store/aliases";
import { defaultSampling, type SamplingParams } from "./sampling";
import { attachSpeculation } from "./speculative";

export interface ModelSettings {
  kvQuantization?: KvQuantization;
  /** Most positions the KV cache holds per sequence, a rotating cache. */
  maxKvSize?: number;
  /** A LoRA/DoRA adapter directory applied to every generation. */
  adapter?: string;
  /** A draft model or prompt lookup. */
  speculation?: SpeculationChoice;
  /** The turns put before each prompt (the alias's system and messages). */
  prompt?: ModelPrompt;
  /** A request's stop strings, answer length and context where it sets none (the alias's stop, num_predict, num_ctx). */
  limits?: ModelLimits;
  /** The sampling values a generation gets where its caller sets none (the alias's temperature, top_p, seed, ...). */
  sampling?: SamplingDefaults;
}

/** What models.toml's alias `spec` (default: the default model) asks for. */
export function aliasSettings(spec: string | undefined): ModelSettings {
  return {
    kvQuantization: aliasKvQuantization(spec),
    maxKvSize: aliasMaxKvSize(spec),
    adapter: aliasAdapter(spec),
    speculation: aliasSpeculation(spec),
    prompt: aliasPrompt(spec),
    limits: aliasLimits(spec),
    sampling: aliasSampling(spec),
  };
}

/**
 * Puts `settings` on `lm`, a draft model opened with `openDraft`. `lm` is freed when one cannot
 * be applied (an adapter that does not fit it, a draft model of another vocabulary, unless
 * `speculation` says to skip it: then the reason is returned, as attachSpeculation's).
 */
export async function applySettings(
  lm: LoadedModel,
  settings: ModelSettings,
  openDraft: (name: string) => Promise<LoadedModel>,
  speculation?: Parameters<typeof attachSpeculation>[3],
): Promise<string | undefined> {
  lm.kvQuantization = settings.kvQuantization;
  lm.maxKvSize = settings.maxKvSize;
  lm.prompt = settings.prompt;
  lm.limits = settings.limits;
  lm.sampling = settings.sampling;
  try {
    if (settings.adapter) lm.adapter = loadAdapter(settings.adapter, lm.weights.lora);
    return await attachSpeculation(lm, settings.speculation, openDraft, speculation);
  } catch (error) {
    lm.free();
    throw error;
  }
}

/**
 * The sampling a generation runs with: the caller's values (a request's fields, the CLI's flags),
 * else the model's (its alias in models.toml, and for a server its generation_config.json), else
 * the caller's defaults (an API's: OpenAI's temperature 1, Ollama's 0.8), else ours (greedy), as
 * Ollama applies a Modelfile's PARAMETERs under a request's options.
 */
export function settleSampling(
  { randomSeed, ...given }: SamplingInput,
  callerDefaults: Partial<SamplingParams>,
  modelDefaults: SamplingDefaults,
): SamplingParams {
  const params: SamplingParams = {
    ...defaultSampling,
    ...withoutUndefined(callerDefaults),
    ...modelDefaults,
    ...withoutUndefined(given),
  };
  if (randomSeed) delete params.seed;
  if (params.repetitionContext === 0) params.repetitionPenalty = 1;
  return params;
}

const withoutUndefined = <T extends object>(o: T): Partial<T> =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
