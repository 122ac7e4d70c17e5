// The adapters checked against mlx-lm (test/parity-adapters.test.ts): random LoRA and DoRA
// adapters for tiny models (plain, quantized, with biases) and for the default model.
// scripts/reference/write-adapters.ts writes the same files for mlx-lm to record its outputs
// from (scripts/parity-adapters.sh).
import type { RandomAdapterOptions } from "./random-adapter";
import { lastLayers } from "./random-adapter";
import { tinyDims, type TinyOptions } from "./tiny-model";

const { hidden, heads, kvHeads, headDim, intermediate } = tinyDims;
const tinyProjections: Record<string, [number, number]> = {
  "self_attn.q_proj": [hidden, heads * headDim],
  "self_attn.k_proj": [hidden, kvHeads * headDim],
  "self_attn.v_proj": [hidden, kvHeads * headDim],
  "self_attn.o_proj": [heads * headDim, hidden],
  "mlp.gate_proj": [hidden, intermediate],
  "mlp.down_proj": [intermediate, hidden],
};

export interface AdapterParityCase {
  model: TinyOptions;
  adapter: RandomAdapterOptions;
}

const q4 = { groupSize: 32, bits: 4 };
const lora = (seed: number, count = 2): RandomAdapterOptions => ({
  layers: lastLayers(3, count, tinyProjections),
  rank: 4,
  scale: 4,
  seed,
  strength: 0.3,
});

export const adapterParityCases: Record<string, AdapterParityCase> = {
  "llama-lora": { model: { layers: 3, seed: 21 }, adapter: lora(1) },
  "llama-4bit-lora": { model: { layers: 3, seed: 21, quantize: q4 }, adapter: lora(2) },
  "llama-dora": { model: { layers: 3, seed: 21 }, adapter: { ...lora(3, 1), kind: "dora" } },
  "qwen2-lora": { model: { modelType: "qwen2", layers: 3, seed: 22 }, adapter: lora(4, 3) },
};

export const adapterParityPrompt = Array.from({ length: 24 }, (_, i) => (i * 7919 + 5) % 49152);
export const adapterParityTokens = 32;

/** SmolLM2-135M's projections, for its adapter: the last 8 of its 30 blocks. */
export const smollm2Adapter: RandomAdapterOptions = {
  layers: lastLayers(30, 8, {
    "self_attn.q_proj": [576, 576],
    "self_attn.v_proj": [576, 192],
    "mlp.down_proj": [1536, 576],
  }),
  rank: 8,
  scale: 10,
  seed: 30,
  strength: 0.02,
};
export const smollm2AdapterPrompts = 3;
export const smollm2AdapterTokens = 32;
