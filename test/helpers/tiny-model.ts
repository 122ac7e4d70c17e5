// A tiny random-weight model, made by the tests themselves so fast tests need no download.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { tokenizerFilesFromGGUF } from "../../src/tokenizer/gguf";
import { join } from "node:path";
import * as mx from "../../src/mlx";
import type { MxArray } from "../../src/mlx";

export interface TinyOptions {
  modelType?: "llama" | "mistral" | "qwen2" | "qwen3" | "gemma3_text" | "qwen3_moe" | "mixtral" | "phi3" | "gpt_oss";
  /**
   * MLX's quantization of every linear layer, affine unless `mode` says (a Qwen3-MoE's routers in
   * mxfp4 are 8-bit affine, as mlx-lm converts it); gpt-oss in `mxfp4` has its experts in MX FP4
   * blocks and the rest plain, as OpenAI ships it.
   */
  quantize?: { groupSize: number; bits: number; mode?: "affine" | "mxfp4" };
  tied?: boolean;
  vocabSize?: number;
  layers?: number;
  seed?: number;
  /** Per-head width (16 unless set; a quantized KV cache needs a multiple of its group size). */
  headDim?: number;
  /** gemma3's sliding window (default 6). */
  window?: number;
  /** Other widths than tinyDims' (bench/synthetic-1b.ts writes a Llama-3.2-1B-shaped model). */
  dims?: Partial<Omit<typeof tinyDims, "headDim">>;
  /** The float tensors' dtype, as a half-precision checkpoint stores them (float32 unless set). */
  dtype?: "bfloat16" | "float16";
  /** config.json's rope_scaling (llama3, linear, dynamic, yarn, ...), where the architecture's own does not set one. */
  ropeScaling?: Record<string, unknown>;
  /** phi3: the share of each head's features the rotary embedding turns (Phi-4-mini's 0.75; all unless set). */
  partialRotaryFactor?: number;
}

export const tinyDims = { hidden: 64, heads: 4, kvHeads: 2, headDim: 16, intermediate: 128 };
export const tinyMoE = { experts: 4, intermediate: 32 };

export function tinyConfig(o: TinyOptions = {}): Record<string, unknown> {
  const { hidden, heads, kvHeads, intermediate } = { ...tinyDims, ...o.dims };
  const config: Record<string, unknown> = {
    model_type: o.modelType ?? "llama",
    hidden_size: hidden,
    num_hidden_layers: o.layers ?? 2,
    intermediate_size: intermediate,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: o.headDim ?? tinyDims.headDim,
    rms_norm_eps: 1e-5,
    vocab_size: o.vocabSize ?? 300,
    rope_theta: 10000,
    max_position_embeddings: 512,
    tie_word_embeddings: o.tied ?? true,
    eos_token_id: 2,
  };
  if (o.ropeScaling) config.rope_scaling = o.ropeScaling;
  if (o.modelType === "gemma3_text") {
    // A window shorter than the test sequences, and a global layer among local ones.
    Object.assign(config, {
      sliding_window: o.window ?? 6,
      sliding_window_pattern: 2,
      query_pre_attn_scalar: 16,
      rope_theta: 1_000_000,
      rope_local_base_freq: 10_000,
      rms_norm_eps: 1e-6,
    });
  }
  if (o.modelType === "qwen3_moe") {
    // Layer 0 dense, the others four experts, two per token.
    Object.assign(config, {
      num_experts: tinyMoE.experts,
      num_experts_per_tok: 2,
      decoder_sparse_step: 1,
      mlp_only_layers: [0],
      moe_intermediate_size: tinyMoE.intermediate,
      norm_topk_prob: true,
    });
  }
  if (o.modelType === "mixtral")
    Object.assign(config, { num_local_experts: tinyMoE.experts, num_experts_per_tok: 2, rope_theta: 1_000_000 });
  if (o.modelType === "phi3") {
    // LongRoPE with a context 4× the original one, so its scale is not 1; a factor per rotated pair.
    const rotated = Math.floor(tinyDims.headDim * (o.partialRotaryFactor ?? 1));
    const factors = Array.from({ length: rotated / 2 }, (_, i) => 1 + i * 0.5);
    if (o.partialRotaryFactor !== undefined) config.partial_rotary_factor = o.partialRotaryFactor;
    Object.assign(config, {
      original_max_position_embeddings: 128,
      rope_scaling: { type: "longrope", long_factor: factors, short_factor: factors.map(() => 1) },
    });
  }
  if (o.modelType === "gpt_oss") {
    // gpt-oss-20b's keys (but swiglu_limit, whose 7.0 JSON.stringify writes as 7, which transformers' config
    // refuses; 7 is its default); layers alternate sliding (window shorter than the test sequences) and full.
    const layers = o.layers ?? 2;
    Object.assign(config, {
      num_local_experts: tinyMoE.experts,
      num_experts_per_tok: 2,
      intermediate_size: tinyMoE.intermediate,
      sliding_window: o.window ?? 6,
      layer_types: Array.from({ length: layers }, (_, i) => (i % 2 ? "full_attention" : "sliding_attention")),
      attention_bias: true,
      rope_theta: 150000,
      rope_scaling: {
        rope_type: "yarn",
        factor: 32.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        original_max_position_embeddings: 4096,
        truncate: false,
      },
    });
    if (o.quantize?.mode === "mxfp4") {
      config.quantization_config = {
        quant_method: "mxfp4",
        modules_to_not_convert: [
          "model.layers.*.self_attn",
          "model.layers.*.mlp.router",
          "model.embed_tokens",
          "lm_head",
        ],
      };
      return config;
    }
  }
  if (o.quantize) {
    config.quantization = {
      group_size: o.quantize.groupSize,
      bits: o.quantize.bits,
      mode: o.quantize.mode ?? "affine",
    };
    // As mlx-lm converts Qwen3-MoE in mxfp4: its routers in 8 bits, an override that names no mode (affine, then).
    if (o.modelType === "qwen3_moe" && o.quantize.mode === "mxfp4")
      for (let i = 1; i < (o.layers ?? 2); i++)
        (config.quantization as Record<string, unknown>)[`model.layers.${i}.mlp.gate`] = { group_size: 64, bits: 8 };
    // As mlx-lm quantizes gpt-oss: its routers in 8 bits.
    if (o.modelType === "gpt_oss")
      for (let i = 0; i < (o.layers ?? 2); i++)
        (config.quantization as Record<string, unknown>)[`model.layers.${i}.mlp.router`] = { group_size: 64, bits: 8 };
  }
  return config;
}

/** Random weights with Hugging Face names (quantized linear layers when asked). */
export function tinyWeights(o: TinyOptions = {}): Map<string, MxArray> {
  const { hidden, heads, kvHeads, intermediate } = { ...tinyDims, ...o.dims };
  const headDim = o.headDim ?? tinyDims.headDim;
  const vocab = o.vocabSize ?? 300;
  let key = mx.keep(mx.random.key(o.seed ?? 0));
  const normal = (shape: number[], scale = 0.08) => {
    const [next, sub] = mx.random.split(key);
    key.free();
    key = mx.keep(next);
    const t = mx.keep(mx.scope(() => mx.multiply(mx.random.normal(shape, mx.Dtype.float32, sub), scale)));
    sub.free();
    return t;
  };
  const w = new Map<string, MxArray>();
  // gpt-oss in mxfp4 is as OpenAI ships it (addFp4Experts); other models have every linear layer in the mode.
  const affine = o.quantize?.mode === "mxfp4" && o.modelType === "gpt_oss" ? undefined : o.quantize;
  const addLinear = (
    name: string,
    out: number,
    inp: number,
    bias = false,
    stack?: number,
    quantize = affine as { groupSize: number; bits: number } | undefined,
  ) => {
    const weight = normal(stack ? [stack, out, inp] : [out, inp]);
    if (quantize) {
      const q = mx.quantize(weight, quantize);
      // Evaluated one layer at a time, so a large model never holds all its float weights at once.
      mx.evaluate(q.weight, q.scales, ...(q.biases ? [q.biases] : []));
      w.set(`${name}.weight`, mx.keep(q.weight));
      w.set(`${name}.scales`, mx.keep(q.scales));
      if (q.biases) w.set(`${name}.biases`, mx.keep(q.biases));
      weight.free();
    } else w.set(`${name}.weight`, weight);
    if (bias) w.set(`${name}.bias`, normal(stack ? [stack, out] : [out], 0.02));
  };
  /** Experts' matrices in MX FP4 as OpenAI ships them: `_blocks` of bytes [experts, out, in / 32, 16] and `_scales`. */
  const addFp4Experts = (name: string, out: number, inp: number) => {
    const weight = normal([tinyMoE.experts, out, inp]);
    const q = mx.quantize(weight, { groupSize: 32, bits: 4, mode: "mxfp4" });
    weight.free();
    w.set(
      `${name}_blocks`,
      mx.keep(mx.reshape(mx.view(q.weight, mx.Dtype.uint8), [tinyMoE.experts, out, inp / 32, 16])),
    );
    w.set(`${name}_scales`, mx.keep(q.scales));
    w.set(`${name}_bias`, normal([tinyMoE.experts, out], 0.02));
  };
  const addNorm = (name: string, size: number) =>
    w.set(`${name}.weight`, mx.keep(mx.scope(() => mx.add(normal([size], 0.05), 1))));
  addLinear("model.embed_tokens", vocab, hidden);
  const qwen2 = o.modelType === "qwen2";
  const gptOss = o.modelType === "gpt_oss";
  for (let i = 0; i < (o.layers ?? 2); i++) {
    const p = `model.layers.${i}`;
    addNorm(`${p}.input_layernorm`, hidden);
    addNorm(`${p}.post_attention_layernorm`, hidden);
    if (o.modelType === "phi3") addLinear(`${p}.self_attn.qkv_proj`, (heads + 2 * kvHeads) * headDim, hidden);
    else {
      addLinear(`${p}.self_attn.q_proj`, heads * headDim, hidden, qwen2 || gptOss);
      addLinear(`${p}.self_attn.k_proj`, kvHeads * headDim, hidden, qwen2 || gptOss);
      addLinear(`${p}.self_attn.v_proj`, kvHeads * headDim, hidden, qwen2 || gptOss);
    }
    addLinear(`${p}.self_attn.o_proj`, hidden, heads * headDim, gptOss);
    if (gptOss) w.set(`${p}.self_attn.sinks`, normal([heads], 1));
    if (o.modelType === "gemma3_text") {
      addNorm(`${p}.pre_feedforward_layernorm`, hidden);
      addNorm(`${p}.post_feedforward_layernorm`, hidden);
    }
    if (o.modelType === "qwen3" || o.modelType === "qwen3_moe" || o.modelType === "gemma3_text") {
      addNorm(`${p}.self_attn.q_norm`, headDim);
      addNorm(`${p}.self_attn.k_norm`, headDim);
    }
    const moe =
      o.modelType === "mixtral" ? "block_sparse_moe" : o.modelType === "qwen3_moe" && i > 0 ? "mlp" : undefined;
    if (gptOss) {
      const router = affine && { groupSize: 64, bits: 8 };
      addLinear(`${p}.mlp.router`, tinyMoE.experts, hidden, true, undefined, router);
      if (o.quantize?.mode === "mxfp4") {
        // gate_up_proj: the gate's and the up projection's rows interleaved.
        addFp4Experts(`${p}.mlp.experts.gate_up_proj`, 2 * tinyMoE.intermediate, hidden);
        addFp4Experts(`${p}.mlp.experts.down_proj`, hidden, tinyMoE.intermediate);
      } else {
        // As mlx-lm saves them (its sanitize splits gate_up_proj).
        addLinear(`${p}.mlp.experts.gate_proj`, tinyMoE.intermediate, hidden, true, tinyMoE.experts);
        addLinear(`${p}.mlp.experts.up_proj`, tinyMoE.intermediate, hidden, true, tinyMoE.experts);
        addLinear(`${p}.mlp.experts.down_proj`, hidden, tinyMoE.intermediate, true, tinyMoE.experts);
      }
    } else if (moe) {
      const mxfp4Router = o.modelType === "qwen3_moe" && o.quantize?.mode === "mxfp4" && { groupSize: 64, bits: 8 };
      addLinear(`${p}.${moe}.gate`, tinyMoE.experts, hidden, false, undefined, mxfp4Router || affine);
      // Mixtral's experts are intermediate_size wide, Qwen3-MoE's moe_intermediate_size.
      const expertHidden = o.modelType === "mixtral" ? intermediate : tinyMoE.intermediate;
      const projections: [string, string, number, number][] = [
        ["gate_proj", "w1", expertHidden, hidden],
        ["up_proj", "w3", expertHidden, hidden],
        ["down_proj", "w2", hidden, expertHidden],
      ];
      for (const [proj, mixtralName, out, inp] of projections) {
        // Quantized: stacked per layer, as mlx-lm saves them; plain: one matrix per expert, as Hugging Face checkpoints have them.
        if (o.quantize) addLinear(`${p}.${moe}.switch_mlp.${proj}`, out, inp, false, tinyMoE.experts);
        else
          for (let e = 0; e < tinyMoE.experts; e++)
            addLinear(`${p}.${moe}.experts.${e}.${o.modelType === "mixtral" ? mixtralName : proj}`, out, inp);
      }
    } else if (o.modelType === "phi3") {
      addLinear(`${p}.mlp.gate_up_proj`, 2 * intermediate, hidden);
      addLinear(`${p}.mlp.down_proj`, hidden, intermediate);
    } else {
      addLinear(`${p}.mlp.gate_proj`, intermediate, hidden);
      addLinear(`${p}.mlp.up_proj`, intermediate, hidden);
      addLinear(`${p}.mlp.down_proj`, hidden, intermediate);
    }
  }
  addNorm("model.norm", hidden);
  if (o.tied === false) addLinear("lm_head", vocab, hidden);
  key.free();
  if (o.dtype) {
    const dtype = mx.Dtype[o.dtype];
    for (const [name, t] of w) {
      if (t.dtype !== mx.Dtype.float32) continue;
      const cast = mx.keep(mx.scope(() => mx.astype(t, dtype)));
      mx.evaluate(cast);
      w.set(name, cast);
      t.free();
    }
  }
  mx.evaluate(...w.values());
  return w;
}

/** SmolLM2's real tokenizer (from the committed GGUF metadata fixture), so tiny models speak text. */
export function smolTokenizerFiles() {
  const meta = JSON.parse(
    gunzipSync(readFileSync(join(import.meta.dir, "..", "fixtures", "tokenizer-smollm2-gguf-meta.json.gz"))).toString(
      "utf8",
    ),
  );
  return tokenizerFilesFromGGUF(meta);
}

export const smolVocabSize = 49152;

/**
 * Writes a complete tiny model directory: config.json, model.safetensors and SmolLM2's
 * tokenizer files (so its vocabulary is SmolLM2's; `chatTemplate` replaces SmolLM2's). Random
 * weights: its text is gibberish.
 */
export function writeTinyModel(
  dir: string,
  o: TinyOptions & { contextLength?: number; chatTemplate?: string } = {},
): void {
  mkdirSync(dir, { recursive: true });
  // SmolLM2's vocabulary unless a larger embedding is asked for (its ids then leave the rest unused).
  const options = { ...o, vocabSize: o.vocabSize ?? smolVocabSize };
  const weights = tinyWeights(options);
  mx.saveSafetensors(join(dir, "model.safetensors"), weights, { format: "mlx" });
  const config = { ...tinyConfig(options), max_position_embeddings: o.contextLength ?? 512 };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
  const { tokenizerJson, tokenizerConfig } = smolTokenizerFiles();
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tokenizerJson));
  writeFileSync(
    join(dir, "tokenizer_config.json"),
    JSON.stringify(o.chatTemplate ? { ...tokenizerConfig, chat_template: o.chatTemplate } : tokenizerConfig),
  );
  for (const t of weights.values()) t.free();
}

/** The FIM tokens writeFimTinyModel gives SmolLM2's vocabulary, by id. */
export const tinyFimTokens = { prefix: 3, suffix: 4, middle: 5 };

/**
 * A tiny model whose vocabulary has StarCoder's FIM tokens (<fim_prefix>, <fim_suffix>,
 * <fim_middle>) in place of three of SmolLM2's added tokens (tinyFimTokens' ids), as a code model's has them.
 */
export function writeFimTinyModel(dir: string, o: Parameters<typeof writeTinyModel>[1] = {}): void {
  writeTinyModel(dir, o);
  const path = join(dir, "tokenizer.json");
  const tokenizer = JSON.parse(readFileSync(path, "utf8"));
  const names = new Map(Object.entries(tinyFimTokens).map(([part, id]) => [id, `<fim_${part}>`]));
  for (const added of tokenizer.added_tokens as { id: number; content: string }[]) {
    const name = names.get(added.id);
    if (name === undefined) continue;
    delete tokenizer.model.vocab[added.content];
    added.content = name;
    tokenizer.model.vocab[name] = added.id;
  }
  writeFileSync(path, JSON.stringify(tokenizer));
}

/** A tiny model whose weights are split into `files` safetensors files, named by an index as a hub's are. */
export function writeShardedTinyModel(dir: string, files: number, o: TinyOptions = {}): void {
  writeTinyModel(dir, o);
  const whole = join(dir, "model.safetensors");
  const { tensors } = mx.loadSafetensors(whole);
  rmSync(whole);
  const names = [...tensors.keys()];
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < files; i++) {
    const file = `model-${i + 1}-of-${files}.safetensors`;
    const part = new Map(names.filter((_, n) => n % files === i).map((name) => [name, tensors.get(name)!]));
    mx.saveSafetensors(join(dir, file), part, { format: "mlx" });
    for (const name of part.keys()) weightMap[name] = file;
  }
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: weightMap }));
  for (const t of tensors.values()) t.free();
}
