// What a model runs with beyond its weights: its KV cache's quantization and size, a LoRA/DoRA
// adapter and speculative decoding, as models.toml's alias gives them or a caller sets them. The
// CLI's commands and the library put them on a loaded model here, alike.
import type { KvQuantization } from "../models/cache";
import type { LoadedModel, SpeculationChoice } from "../models/load";
import { loadAdapter } from "../models/lora";
import {
  aliasAdapter,
  aliasKvQuantization,
  aliasLimits,
  aliasMaxKvSize,
  aliasPrompt,
  aliasSpeculation,
  type ModelLimits,
  type ModelPrompt,
} from "../store/aliases";
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
  try {
    if (settings.adapter) lm.adapter = loadAdapter(settings.adapter, lm.weights.lora);
    return await attachSpeculation(lm, settings.speculation, openDraft, speculation);
  } catch (error) {
    lm.free();
    throw error;
  }
}
