// The architectures we run, by config.json model_type. Each file builds a DecoderModel
// from weights; everything else (loading, caches, generation) is shared.
import * as gemma3 from "./gemma3";
import * as gptOss from "./gpt_oss";
import * as llama from "./llama";
import * as mistral from "./mistral";
import * as mixtral from "./mixtral";
import * as phi3 from "./phi3";
import * as qwen2 from "./qwen2";
import * as qwen3 from "./qwen3";
import * as qwen3Moe from "./qwen3_moe";
import type { Weights } from "./layers";
import type { DecoderModel } from "./model";

const architectures: Record<string, (w: Weights) => DecoderModel> = {
  gemma3_text: gemma3.build,
  gpt_oss: gptOss.build,
  llama: llama.build,
  mistral: mistral.build,
  mixtral: mixtral.build,
  phi3: phi3.build,
  qwen2: qwen2.build,
  qwen3: qwen3.build,
  qwen3_moe: qwen3Moe.build,
};

export const supportedArchitectures = Object.keys(architectures);

export function buildModel(w: Weights): DecoderModel {
  const build = architectures[w.config.modelType];
  if (!build) {
    throw new Error(`unsupported model_type '${w.config.modelType}' (supported: ${supportedArchitectures.join(", ")})`);
  }
  return build(w);
}

export { forward, hiddenStates, makeCaches, embeddingCaches, freeCaches, cacheState, type DecoderModel } from "./model";
export { KVCache } from "./cache";
export { parseConfig, type ModelConfig } from "./config";
export { Weights } from "./layers";
