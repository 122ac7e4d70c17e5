// Reading a llama.cpp GGUF file as a model: its tensor names mapped to Hugging Face names,
// a config.json built from its metadata, and llama's query/key rows put back in HF order.
import { closeSync, openSync, readSync, statSync } from "node:fs";
import * as mx from "../mlx";
import type { LoadedFile, MetaValue, MxArray } from "../mlx";

/** GGUF architectures we run, and the model_type each becomes. */
const architectures: Record<string, string> = {
  llama: "llama",
  mistral: "mistral",
  qwen2: "qwen2",
  qwen3: "qwen3",
  qwen3moe: "qwen3_moe",
  gemma3: "gemma3_text",
  "gpt-oss": "gpt_oss",
};

const blockNames: Record<string, string> = {
  attn_norm: "input_layernorm",
  attn_q: "self_attn.q_proj",
  attn_k: "self_attn.k_proj",
  attn_v: "self_attn.v_proj",
  attn_output: "self_attn.o_proj",
  attn_q_norm: "self_attn.q_norm",
  attn_k_norm: "self_attn.k_norm",
  ffn_norm: "post_attention_layernorm",
  ffn_gate: "mlp.gate_proj",
  ffn_up: "mlp.up_proj",
  ffn_down: "mlp.down_proj",
  // Mixture of experts: the router, and each projection's experts stacked in one tensor.
  ffn_gate_inp: "mlp.gate",
  ffn_gate_exps: "mlp.switch_mlp.gate_proj",
  ffn_up_exps: "mlp.switch_mlp.up_proj",
  ffn_down_exps: "mlp.switch_mlp.down_proj",
};

/** Where an architecture names a block tensor differently (Gemma 3 has four norms per block). */
const archBlockNames: Record<string, Record<string, string>> = {
  gemma3: {
    post_attention_norm: "post_attention_layernorm",
    ffn_norm: "pre_feedforward_layernorm",
    post_ffw_norm: "post_feedforward_layernorm",
  },
  "gpt-oss": {
    post_attention_norm: "post_attention_layernorm",
    attn_sinks: "self_attn.sinks",
    ffn_gate_inp: "mlp.router",
    ffn_gate_exps: "mlp.experts.gate_proj",
    ffn_up_exps: "mlp.experts.up_proj",
    ffn_down_exps: "mlp.experts.down_proj",
  },
};

/** Tensors that are one array in Hugging Face's layout, named without a ".weight". */
const bareNames = new Set(["rope_freqs", "self_attn.sinks"]);

const topNames: Record<string, string> = {
  token_embd: "model.embed_tokens",
  output_norm: "model.norm",
  output: "lm_head",
  rope_freqs: "rope_freqs",
};

/** "blk.3.attn_q.scales" → "model.layers.3.self_attn.q_proj.scales"; undefined for tensors we do not use. */
export function hfTensorName(ggufName: string, arch = "llama"): string | undefined {
  const dot = ggufName.lastIndexOf(".");
  const base = ggufName.slice(0, dot);
  const suffix = ggufName.slice(dot + 1);
  const block = /^blk\.(\d+)\.(.+)$/.exec(base);
  if (block) {
    const mapped = archBlockNames[arch]?.[block[2]!] ?? blockNames[block[2]!];
    if (!mapped) return undefined;
    return bareNames.has(mapped)
      ? `model.layers.${block[1]}.${mapped}`
      : `model.layers.${block[1]}.${mapped}.${suffix}`;
  }
  const mapped = topNames[base];
  if (!mapped) return undefined;
  return bareNames.has(mapped) ? mapped : `${mapped}.${suffix}`;
}

export interface GGUFModel {
  /** A Hugging Face style config.json. */
  config: Record<string, unknown>;
  tensors: Map<string, MxArray>;
  metadata: Record<string, MetaValue>;
}

const meta = (m: Record<string, MetaValue>, key: string): MetaValue | undefined => m[key];

function metaNumber(m: Record<string, MetaValue>, key: string, fallback?: number): number {
  const v = meta(m, key);
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  if (v !== undefined)
    throw new Error(
      `GGUF metadata '${key}' must be a number, not ${Array.isArray(v) ? "a list" : JSON.stringify(v).slice(0, 40)}`,
    );
  if (fallback !== undefined) return fallback;
  throw new Error(`GGUF metadata '${key}' is missing`);
}

/**
 * A size or a count from the metadata: a whole number of at least `least`. Checked here, as
 * llama.cpp checks it at load, rather than found out later (a negative context, or heads of
 * zero giving a head size of Infinity).
 */
function metaCount(m: Record<string, MetaValue>, key: string, fallback?: number, least = 1): number {
  const n = metaNumber(m, key, fallback);
  if (!Number.isInteger(n) || n < least)
    throw new Error(`GGUF metadata '${key}' must be a whole number of at least ${least}, not ${n}`);
  return n;
}

export function ggufModel(file: LoadedFile & { groupSizes?: Map<string, number> }): GGUFModel {
  const m = file.metadata;
  // llama.cpp's LoRA adapters and vision projectors (mmproj) are GGUFs too: told as such, not by the first key they lack.
  const kind = meta(m, "general.type");
  if (typeof kind === "string" && kind !== "model")
    throw new Error(
      `the file is a GGUF ${kind} (general.type), not a model${kind === "adapter" ? "; --adapter takes mlx-lm's adapter directories" : ""}`,
    );
  const arch = String(meta(m, "general.architecture") ?? "");
  // Mixtral is a llama with experts to llama.cpp.
  const experts = metaCount(m, `${arch}.expert_count`, 0, 0);
  const modelType = arch === "llama" && experts > 0 ? "mixtral" : architectures[arch];
  if (!modelType) {
    throw new Error(`unsupported GGUF architecture '${arch}' (supported: ${Object.keys(architectures).join(", ")})`);
  }
  const heads = metaCount(m, `${arch}.attention.head_count`);
  const kvHeads = metaCount(m, `${arch}.attention.head_count_kv`, heads);
  const hidden = metaCount(m, `${arch}.embedding_length`);
  const headDim = metaCount(m, `${arch}.attention.key_length`, hidden / heads);
  const eos = [meta(m, "tokenizer.ggml.eos_token_id"), meta(m, "tokenizer.ggml.eot_token_id")].filter(
    (v) => typeof v === "number",
  );

  const tensors = new Map<string, MxArray>();
  for (const [name, tensor] of file.tensors) {
    const hf = hfTensorName(name, arch);
    if (hf) tensors.set(hf, tensor);
    else tensor.free();
  }
  const groupSizes = new Map<string, number>();
  for (const [prefix, size] of file.groupSizes ?? []) {
    const hf = hfTensorName(`${prefix}.weight`, arch);
    if (hf) groupSizes.set(hf.slice(0, -".weight".length), size);
  }
  // llama.cpp stores llama's q/k rows interleaved for its rotary layout; undo that so the
  // weights match the Hugging Face layout that mlx-lm and our model code use.
  if (arch === "llama" || arch === "mistral") {
    // Every layer present: a pipeline stage's file holds only some.
    const layers = [...tensors.keys()].filter((n) => n.endsWith(".self_attn.q_proj.weight"));
    for (const q of layers) {
      const prefix = q.slice(0, -".q_proj.weight".length);
      unpermuteRows(tensors, `${prefix}.q_proj`, heads);
      unpermuteRows(tensors, `${prefix}.k_proj`, kvHeads);
    }
  }
  // llama.cpp stores Gemma's norm weights as 1 + weight (its RMS norm multiplies by the weight alone).
  if (arch === "gemma3") {
    for (const [name, t] of tensors) {
      if (!name.endsWith("norm.weight")) continue;
      tensors.set(name, mx.keep(mx.scope(() => mx.subtract(t, 1))));
      t.free();
    }
  }
  if (modelType === "mixtral") {
    for (const [name, t] of [...tensors]) {
      const moe = name.replace(/\.mlp\.(gate|switch_mlp)\./, ".block_sparse_moe.$1.");
      if (moe === name) continue;
      tensors.delete(name);
      tensors.set(moe, t);
    }
  }
  const ropeBase = metaNumber(m, `${arch}.rope.freq_base`, 10000);
  if (tensors.has("rope_freqs"))
    tensors.set("rope_freqs", ropeFrequencies(tensors.get("rope_freqs")!, headDim, ropeBase));

  const config: Record<string, unknown> = {
    architectures: [archClass(modelType)],
    model_type: modelType,
    hidden_size: hidden,
    num_hidden_layers: metaCount(m, `${arch}.block_count`),
    intermediate_size: metaCount(m, `${arch}.feed_forward_length`, undefined, 0),
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    rms_norm_eps: metaNumber(m, `${arch}.attention.layer_norm_rms_epsilon`, 1e-6),
    vocab_size: vocabularySize(m, arch),
    rope_theta: ropeBase,
    max_position_embeddings: metaCount(m, `${arch}.context_length`, 4096),
    tie_word_embeddings: !tensors.has("lm_head.weight"),
    bos_token_id: meta(m, "tokenizer.ggml.bos_token_id"),
    eos_token_id: eos.length === 1 ? eos[0] : eos,
    ...quantizationOf(tensors, groupSizes),
    ...ropeScalingConfig(m, arch),
    ...(arch === "gemma3" ? gemma3Config(m, headDim) : {}),
    ...(experts > 0 ? expertsConfig(m, arch, modelType, experts, tensors) : {}),
    ...(arch === "gpt-oss" ? gptOssConfig(m) : {}),
  };
  return { config, tensors, metadata: m };
}

/** Its tokens' count, else `<arch>.vocab_size`; a file with neither has no tokenizer, which is what to tell. */
function vocabularySize(m: Record<string, MetaValue>, arch: string): number {
  const tokens = meta(m, "tokenizer.ggml.tokens");
  if (Array.isArray(tokens)) return tokens.length;
  if (meta(m, `${arch}.vocab_size`) === undefined)
    throw new Error("GGUF metadata has no tokenizer.ggml.tokens: the file carries no tokenizer");
  return metaCount(m, `${arch}.vocab_size`);
}

function archClass(modelType: string): string {
  return {
    llama: "LlamaForCausalLM",
    mistral: "MistralForCausalLM",
    mixtral: "MixtralForCausalLM",
    qwen2: "Qwen2ForCausalLM",
    qwen3: "Qwen3ForCausalLM",
    qwen3_moe: "Qwen3MoeForCausalLM",
    gemma3_text: "Gemma3ForCausalLM",
    gpt_oss: "GptOssForCausalLM",
  }[modelType]!;
}

/** The config keys of a mixture of experts; layers without a router keep a dense MLP. */
function expertsConfig(
  m: Record<string, MetaValue>,
  arch: string,
  modelType: string,
  experts: number,
  tensors: Map<string, MxArray>,
): Record<string, unknown> {
  const perToken = metaCount(m, `${arch}.expert_used_count`);
  if (modelType === "mixtral") return { num_local_experts: experts, num_experts_per_tok: perToken };
  if (modelType === "gpt_oss")
    return {
      num_local_experts: experts,
      num_experts_per_tok: perToken,
      intermediate_size: metaCount(m, `${arch}.expert_feed_forward_length`),
    };
  const layers = metaCount(m, `${arch}.block_count`);
  return {
    num_experts: experts,
    num_experts_per_tok: perToken,
    moe_intermediate_size: metaCount(m, `${arch}.expert_feed_forward_length`),
    decoder_sparse_step: 1,
    mlp_only_layers: Array.from({ length: layers }, (_, i) => i).filter(
      (i) => !tensors.has(`model.layers.${i}.mlp.gate.weight`),
    ),
    norm_topk_prob: true,
  };
}

/**
 * The RoPE scaling llama.cpp applies (`<arch>.rope.scaling.*`, or the older `rope.scale_linear`), as
 * config.json's rope_scaling: a model trained with stretched positions (linear, as DeepSeek-Coder;
 * YaRN, as long-context Qwen) answers with the wrong positions without it.
 */
function ropeScalingConfig(m: Record<string, MetaValue>, arch: string): Record<string, unknown> {
  const key = (name: string) => `${arch}.rope.${name}`;
  const legacyLinear = metaNumber(m, key("scale_linear"), 1);
  const declared = meta(m, key("scaling.type"));
  const type = typeof declared === "string" ? declared : legacyLinear !== 1 ? "linear" : "none";
  if (type === "none") return {};
  const optional = (name: string, gguf: string) =>
    meta(m, key(gguf)) === undefined ? {} : { [name]: metaNumber(m, key(gguf)) };
  return {
    rope_scaling: {
      rope_type: type,
      factor: metaNumber(m, key("scaling.factor"), legacyLinear),
      ...optional("original_max_position_embeddings", "scaling.original_context_length"),
      ...optional("beta_fast", "scaling.yarn_beta_fast"),
      ...optional("beta_slow", "scaling.yarn_beta_slow"),
    },
  };
}

/** Gemma 3's own config keys; llama.cpp fixes the layer pattern (a global layer every 6) and the local rope base. */
function gemma3Config(m: Record<string, MetaValue>, headDim: number): Record<string, unknown> {
  return {
    sliding_window: metaCount(m, "gemma3.attention.sliding_window", 512),
    sliding_window_pattern: 6,
    query_pre_attn_scalar: headDim,
    rope_local_base_freq: 10_000,
  };
}

/** gpt-oss's own config keys; llama.cpp fixes the layer pattern (sliding first, then every other layer). */
function gptOssConfig(m: Record<string, MetaValue>): Record<string, unknown> {
  const layers = metaCount(m, "gpt-oss.block_count");
  const scaling = meta(m, "gpt-oss.rope.scaling.type");
  return {
    sliding_window: metaCount(m, "gpt-oss.attention.sliding_window", 128),
    layer_types: Array.from({ length: layers }, (_, i) => (i % 2 === 0 ? "sliding_attention" : "full_attention")),
    ...(scaling === "yarn"
      ? {
          rope_scaling: {
            rope_type: "yarn",
            factor: metaNumber(m, "gpt-oss.rope.scaling.factor", 1),
            original_max_position_embeddings: metaNumber(m, "gpt-oss.rope.scaling.original_context_length", 4096),
            beta_fast: 32,
            beta_slow: 1,
          },
        }
      : {}),
  };
}

/** The inverse of llama.cpp's q/k permutation: row (h, j, i) of the file is row (h, i, j) in HF order. */
function unpermuteRows(tensors: Map<string, MxArray>, prefix: string, heads: number): void {
  const weight = tensors.get(`${prefix}.weight`)!;
  const rows = weight.shape[0]!;
  const half = rows / heads / 2;
  const order = new Int32Array(rows);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < half; j++) order[h * 2 * half + i * half + j] = h * 2 * half + j * 2 + i;
    }
  }
  const index = mx.array(order);
  for (const suffix of ["weight", "scales", "biases", "bias"]) {
    const t = tensors.get(`${prefix}.${suffix}`);
    if (!t) continue;
    tensors.set(`${prefix}.${suffix}`, mx.keep(mx.take(t, index, 0)));
    t.free();
  }
  index.free();
}

/** llama.cpp stores per-frequency divisors (Llama 3 scaling); MLX's rope wants the periods themselves. */
function ropeFrequencies(factors: MxArray, dims: number, base: number): MxArray {
  return mx.keep(
    mx.scope(() =>
      mx.multiply(
        mx.power(base, mx.divide(mx.arange(0, dims, 2, mx.Dtype.float32), dims)),
        mx.astype(factors, mx.Dtype.float32),
      ),
    ),
  );
}

/**
 * Derives mlx-lm's "quantization" section from the packed shapes: the most common bits as the
 * default, the other layers by name. Every GGUF type MLX keeps quantized uses groups of 32;
 * `groupSizes` names layers quantized otherwise (re-quantized by `mlx convert`, or Q6_K's groups
 * of 16 held for our kernels). Scales of one
 * byte each are MX FP4's (mode mxfp4), float ones affine.
 */
export function quantizationOf(
  tensors: Map<string, MxArray>,
  groupSizes = new Map<string, number>(),
): Record<string, unknown> {
  const perLayer = new Map<string, { group_size: number; bits: number; mode: string }>();
  for (const [name, scales] of tensors) {
    if (!name.endsWith(".scales")) continue;
    const prefix = name.slice(0, -".scales".length);
    const packed = tensors.get(`${prefix}.weight`)!.shape.at(-1)!;
    const groups = scales.shape.at(-1)!;
    const groupSize = groupSizes.get(prefix) ?? 32;
    const inputs = groups * groupSize;
    const mode = scales.dtype === mx.Dtype.uint8 ? "mxfp4" : "affine";
    perLayer.set(prefix, { group_size: groupSize, bits: (packed * 32) / inputs, mode });
  }
  if (perLayer.size === 0) return {};
  const counts = new Map<string, number>();
  for (const q of perLayer.values()) counts.set(JSON.stringify(q), (counts.get(JSON.stringify(q)) ?? 0) + 1);
  const [commonKey] = [...counts.entries()].sort((a, b) => b[1] - a[1])[0]!;
  const quantization: Record<string, unknown> = JSON.parse(commonKey);
  for (const [prefix, q] of perLayer) if (JSON.stringify(q) !== commonKey) quantization[prefix] = q;
  return { quantization };
}

/** Whether a file starts with GGUF's magic bytes (store blobs have no extension to go by); a pipe is none (opening one with no writer would wait). */
export function isGGUFFile(path: string): boolean {
  if (!statSync(path).isFile()) return false;
  const fd = openSync(path, "r");
  try {
    const magic = Buffer.alloc(4);
    return readSync(fd, magic, 0, 4, 0) === 4 && magic.toString("latin1") === "GGUF";
  } finally {
    closeSync(fd);
  }
}
