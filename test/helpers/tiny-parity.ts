// The tiny random-weight models checked against mlx-lm (test/parity-architectures.test.ts), one
// per architecture and quantization; scripts/reference/write-tiny-models.ts writes the same
// directories for mlx-lm to record its outputs from.
import type { TinyOptions } from "./tiny-model";

export const tinyParityModels: Record<string, TinyOptions> = {
  // Llama 3.1's rotary scaling, its original context short enough that the smooth blend is reached.
  "llama-llama3": {
    layers: 2,
    seed: 8,
    ropeScaling: {
      rope_type: "llama3",
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    },
  },
  // Dynamic NTK scaling, which mlx-lm runs (as plain RoPE within the model's context).
  "llama-dynamic": { layers: 2, seed: 8, ropeScaling: { type: "dynamic", factor: 2 } },
  // Qwen2.5 / Qwen3's long-context YaRN.
  "qwen2-yarn": {
    modelType: "qwen2",
    layers: 2,
    seed: 9,
    tied: false,
    ropeScaling: { type: "yarn", factor: 4, original_max_position_embeddings: 128 },
  },
  gemma3_text: { modelType: "gemma3_text", layers: 4, seed: 3 },
  "gemma3_text-4bit": { modelType: "gemma3_text", layers: 4, seed: 3, quantize: { groupSize: 32, bits: 4 } },
  qwen3_moe: { modelType: "qwen3_moe", layers: 3, seed: 4 },
  "qwen3_moe-4bit": { modelType: "qwen3_moe", layers: 3, seed: 4, quantize: { groupSize: 32, bits: 4 } },
  // As mlx-lm converts it with --q-mode mxfp4: the routers' 8-bit override names no mode.
  "qwen3_moe-mxfp4": {
    modelType: "qwen3_moe",
    layers: 3,
    seed: 4,
    quantize: { groupSize: 32, bits: 4, mode: "mxfp4" },
  },
  mixtral: { modelType: "mixtral", layers: 2, seed: 5, tied: false },
  "mixtral-4bit": { modelType: "mixtral", layers: 2, seed: 5, tied: false, quantize: { groupSize: 32, bits: 4 } },
  gpt_oss: { modelType: "gpt_oss", layers: 4, seed: 7, tied: false },
  "gpt_oss-4bit": { modelType: "gpt_oss", layers: 4, seed: 7, tied: false, quantize: { groupSize: 32, bits: 4 } },
  "gpt_oss-mxfp4": {
    modelType: "gpt_oss",
    layers: 4,
    seed: 7,
    tied: false,
    quantize: { groupSize: 32, bits: 4, mode: "mxfp4" },
  },
  phi3: { modelType: "phi3", layers: 2, seed: 6, tied: false },
  // Phi-4-mini's partial rotary embedding (three quarters of each head's features turned).
  "phi3-partial": { modelType: "phi3", layers: 2, seed: 6, tied: false, partialRotaryFactor: 0.75 },
  "phi3-4bit": { modelType: "phi3", layers: 2, seed: 6, tied: false, quantize: { groupSize: 32, bits: 4 } },
};

/**
 * Prompt token ids (SmolLM2's vocabulary, which every tiny model uses): 40 of them, longer than
 * gemma3's window and enough for the experts' prefill to take the sorted path (≥ 64 picks).
 */
export const tinyParityPrompt = Array.from({ length: 40 }, (_, i) => (i * 7919 + 11) % 49152);

export const tinyParityTokens = 32;
