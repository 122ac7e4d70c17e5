// The tiny random-weight models checked against mlx-lm (test/parity-architectures.test.ts), one
// per architecture and quantization; scripts/reference/write-tiny-models.ts writes the same
// directories for mlx-lm to record its outputs from.
import type { TinyOptions } from "./tiny-model";

export const tinyParityModels: Record<string, TinyOptions> = {
  "gemma3_text": { modelType: "gemma3_text", layers: 4, seed: 3 },
  "gemma3_text-4bit": { modelType: "gemma3_text", layers: 4, seed: 3, quantize: { groupSize: 32, bits: 4 } },
};

/** Prompt token ids (SmolLM2's vocabulary, which every tiny model uses). */
export const tinyParityPrompt = [1, 504, 3458, 282, 4649, 314, 1137, 30, 2];

export const tinyParityTokens = 32;
