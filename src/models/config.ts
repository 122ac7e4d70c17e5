// The model arguments every architecture reads from config.json, with mlx-lm's defaults.
import { isJsonObject } from "../exact-json";

export interface QuantConfig {
  groupSize: number;
  bits: number;
  mode: string;
}

export interface RopeScaling {
  type: string;
  factor: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
  /** LongRoPE / SuScaled (Phi-3): per-frequency factors for long contexts. */
  longFactor?: number[];
  /** YaRN (gpt-oss): the rotations bounding the blend between extrapolated and interpolated frequencies, and its attention scale. */
  betaFast?: number;
  betaSlow?: number;
  mscale?: number;
  mscaleAllDim?: number;
}

export interface ModelConfig {
  modelType: string;
  hiddenSize: number;
  numHiddenLayers: number;
  intermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  rmsNormEps: number;
  vocabSize: number;
  ropeTheta: number;
  ropeTraditional: boolean;
  ropeScaling?: RopeScaling;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  attentionBias: boolean;
  mlpBias: boolean;
  eosTokenIds: number[];
  /** Default quantization, and per-layer overrides by weight prefix (false = not quantized). */
  quantization?: QuantConfig;
  quantizationOverrides: Record<string, QuantConfig | false>;
  /** A Hugging Face quantization_config's quant_method that is not MLX's (gptq, awq, fp8, ...). */
  foreignQuantization?: string;
  /** The config.json as read, for writing it back out. */
  raw: Record<string, unknown>;
}

const num = (v: unknown, fallback?: number): number => {
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (fallback !== undefined) return fallback;
  throw new Error(`expected a number, got ${JSON.stringify(v)}`);
};

function field(raw: Record<string, unknown>, name: string, fallback?: number): number {
  try {
    return num(raw[name], fallback);
  } catch {
    throw new Error(`config.json: '${name}' is missing or not a number`);
  }
}

/** `originalContext`: Phi-3 gives original_max_position_embeddings beside rope_scaling, not in it. */
function parseRopeScaling(value: unknown, originalContext?: unknown): RopeScaling | undefined {
  if (!value || typeof value !== "object") return undefined;
  const v: Record<string, unknown> = {
    original_max_position_embeddings: originalContext,
    ...(value as Record<string, unknown>),
  };
  const type = String(v.rope_type ?? v.type ?? "default");
  if (type === "default") return undefined;
  // A value given but not a number is refused by name: a "factor": "4" read as no factor at all
  // would run the model unscaled without a word.
  const optional = (key: string): number | undefined => {
    if (v[key] === undefined || v[key] === null) return undefined;
    if (typeof v[key] === "number" && Number.isFinite(v[key])) return v[key];
    throw new Error(`config.json: 'rope_scaling.${key}' is not a number (${JSON.stringify(v[key])})`);
  };
  const factor = optional("factor");
  // These scale by it, and mlx-lm requires it.
  if (factor === undefined && FACTOR_SCALINGS.includes(type))
    throw new Error(`config.json: rope_scaling of type '${type}' needs a 'factor'`);
  return {
    type,
    factor: factor ?? 1,
    lowFreqFactor: optional("low_freq_factor"),
    highFreqFactor: optional("high_freq_factor"),
    originalMaxPositionEmbeddings: optional("original_max_position_embeddings"),
    longFactor: Array.isArray(v.long_factor) ? v.long_factor.map((f) => num(f)) : undefined,
    betaFast: optional("beta_fast"),
    betaSlow: optional("beta_slow"),
    mscale: optional("mscale"),
    mscaleAllDim: optional("mscale_all_dim"),
  };
}

/** The RoPE scalings whose `factor` sets how far they stretch the rotations. */
const FACTOR_SCALINGS = ["linear", "dynamic", "llama3", "yarn"];

function parseQuantization(
  raw: Record<string, unknown>,
): Pick<ModelConfig, "quantization" | "quantizationOverrides" | "foreignQuantization"> {
  const q = (raw.quantization ?? raw.quantization_config) as Record<string, unknown> | undefined;
  const overrides: Record<string, QuantConfig | false> = {};
  if (!q || typeof q !== "object") return { quantization: undefined, quantizationOverrides: overrides };
  // A Hugging Face checkpoint in MX FP4 (gpt-oss as OpenAI ships it): the layers with scales are MLX's mxfp4.
  if (q.quant_method === "mxfp4")
    return { quantization: { groupSize: 32, bits: 4, mode: "mxfp4" }, quantizationOverrides: overrides };
  // Other Hugging Face schemes (GPTQ, AWQ, FP8, bitsandbytes, ...) pack their weights otherwise, so
  // their parameters are not MLX's: the section is left aside, as mlx-lm does, and the loader
  // refuses weights packed that way (foreignQuantization names the scheme for its message).
  if (q.quant_method !== undefined)
    return { quantization: undefined, quantizationOverrides: overrides, foreignQuantization: String(q.quant_method) };
  const base: QuantConfig = {
    groupSize: num(q.group_size, 64),
    bits: num(q.bits, 4),
    mode: String(q.mode ?? "affine"),
  };
  for (const [key, value] of Object.entries(q)) {
    if (value === false) overrides[key] = false;
    else if (value && typeof value === "object") {
      const o = value as Record<string, unknown>;
      // A layer's override is MLX's to_quantized arguments, whose mode is affine unless named: mlx-lm
      // writes its 8-bit routers so in an mxfp4 (nvfp4, mxfp8) conversion of a mixture of experts.
      overrides[key] = {
        groupSize: num(o.group_size, base.groupSize),
        bits: num(o.bits, base.bits),
        mode: String(o.mode ?? "affine"),
      };
    }
  }
  return { quantization: base, quantizationOverrides: overrides };
}

/**
 * Gemma 3's text settings that its multimodal checkpoints leave out of text_config, as
 * transformers' Gemma3TextConfig and mlx-lm's gemma3 take them (google/gemma-3-4b-it and the
 * mlx-community conversions of it give only what differs).
 */
const GEMMA3_TEXT_DEFAULTS = {
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 256,
  rms_norm_eps: 1e-6,
  vocab_size: 262208,
  rope_theta: 1_000_000,
  rope_local_base_freq: 10_000,
  query_pre_attn_scalar: 256,
  sliding_window: 4096,
  sliding_window_pattern: 6,
  max_position_embeddings: 131072,
};

/**
 * Settings a config.json may leave out whose default depends on the architecture, as mlx-lm's
 * ModelArgs give them (for any other: RoPE base 10,000, norm epsilon 1e-6, a 4,096-token context).
 */
const ARCHITECTURE_DEFAULTS: Record<
  string,
  { rope_theta?: number; rms_norm_eps?: number; max_position_embeddings?: number }
> = {
  qwen2: { rope_theta: 1_000_000, max_position_embeddings: 32768 },
  mixtral: { rope_theta: 1_000_000, rms_norm_eps: 1e-5 },
  gemma3_text: { rope_theta: 1_000_000, max_position_embeddings: 32768 },
  gpt_oss: { rope_theta: 150_000, rms_norm_eps: 1e-5 },
  // Phi-3's LongRoPE scale is computed from it, beside original_max_position_embeddings.
  phi3: { max_position_embeddings: 131072 },
};

/** The language model's part of a multimodal model (its vision tower is not loaded), as mlx-lm's gemma3 reads it. */
export const LANGUAGE_MODEL_PREFIX = "language_model.";
export const VISION_PREFIXES = ["vision_tower.", "multi_modal_projector."];

/**
 * A multimodal Gemma 3 checkpoint (model_type "gemma3" with a text_config, the weights under
 * language_model.) read as its language model: its text settings over Gemma 3's defaults, with
 * the checkpoint's own quantization (per-layer entries named as the loader names the weights)
 * and end tokens. Text only: its images are not read.
 */
function languageModelConfig(raw: Record<string, unknown>): Record<string, unknown> {
  const text = raw.text_config;
  if (raw.model_type !== "gemma3" || !text || typeof text !== "object" || Array.isArray(text)) return raw;
  const quantization = raw.quantization ?? raw.quantization_config;
  return {
    ...GEMMA3_TEXT_DEFAULTS,
    ...(text as Record<string, unknown>),
    model_type: "gemma3_text",
    ...(raw.eos_token_id !== undefined && { eos_token_id: raw.eos_token_id }),
    ...(quantization && typeof quantization === "object" ? { quantization: languageModelEntries(quantization) } : {}),
  };
}

/** A quantization section's entries for the language model, named without its prefix; the vision tower's dropped. */
function languageModelEntries(section: object): Record<string, unknown> {
  const entries = Object.entries(section).filter(([key]) => !VISION_PREFIXES.some((p) => key.startsWith(p)));
  return Object.fromEntries(
    entries.map(([key, value]) => [
      key.startsWith(LANGUAGE_MODEL_PREFIX) ? key.slice(LANGUAGE_MODEL_PREFIX.length) : key,
      value,
    ]),
  );
}

/**
 * Architectures whose output layer is its own unless config.json says otherwise: mlx-lm's default
 * for phi3, mixtral and qwen3_moe, gpt-oss never ties, and transformers' for qwen3 (mlx-lm requires
 * the key there). Elsewhere mlx-lm ties by default (llama, mistral, qwen2); gemma3 decides by
 * whether lm_head is in the weights.
 */
const untiedByDefault = new Set(["phi3", "mixtral", "qwen3", "qwen3_moe", "gpt_oss"]);

function tiedWordEmbeddings(raw: Record<string, unknown>, modelType: string): boolean {
  if (typeof raw.tie_word_embeddings === "boolean") return raw.tie_word_embeddings;
  return !untiedByDefault.has(modelType);
}

function eosIds(value: unknown): number[] {
  if (typeof value === "number") return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === "number");
  return [];
}

/**
 * transformers 5 writes rope_theta and rope_scaling inside one rope_parameters section (its
 * rope_type "default" when there is no scaling), as mlx-lm reads them: the flat form, one
 * section for every layer; or one section per kind of layer (Gemma 3's full_attention and
 * sliding_attention), of which the global layers' is the model's rope_theta and scaling (the
 * sliding layers' base is rope_local_base_freq: see ropeSection).
 */
function ropeParameters(raw: Record<string, unknown>): Record<string, unknown> | undefined {
  return ropeSection(raw, "full_attention") ?? ropeSection(raw);
}

/** rope_parameters, or its section for one kind of layer (`kind`), when it has one. */
export function ropeSection(raw: Record<string, unknown>, kind?: string): Record<string, unknown> | undefined {
  const section = raw.rope_parameters;
  if (!isJsonObject(section)) return undefined;
  if (kind === undefined) return section;
  return isJsonObject(section[kind]) ? section[kind] : undefined;
}

export function parseConfig(json: unknown): ModelConfig {
  if (!json || typeof json !== "object" || Array.isArray(json)) throw new Error("config.json is not a JSON object");
  const raw = languageModelConfig(json as Record<string, unknown>);
  if (typeof raw.model_type !== "string") throw new Error("config.json: 'model_type' is missing");
  const hiddenSize = field(raw, "hidden_size");
  const numAttentionHeads = field(raw, "num_attention_heads");
  const rope = ropeParameters(raw);
  const defaults = ARCHITECTURE_DEFAULTS[raw.model_type] ?? {};
  return {
    modelType: raw.model_type,
    hiddenSize,
    numHiddenLayers: field(raw, "num_hidden_layers"),
    intermediateSize: field(raw, "intermediate_size"),
    numAttentionHeads,
    numKeyValueHeads: field(raw, "num_key_value_heads", numAttentionHeads),
    headDim: typeof raw.head_dim === "number" ? raw.head_dim : hiddenSize / numAttentionHeads,
    rmsNormEps: field(raw, "rms_norm_eps", defaults.rms_norm_eps ?? 1e-6),
    vocabSize: field(raw, "vocab_size"),
    ropeTheta: field(raw.rope_theta === undefined && rope ? rope : raw, "rope_theta", defaults.rope_theta ?? 10000),
    ropeTraditional: raw.rope_traditional === true,
    ropeScaling: parseRopeScaling(raw.rope_scaling ?? rope, raw.original_max_position_embeddings),
    maxPositionEmbeddings: field(raw, "max_position_embeddings", defaults.max_position_embeddings ?? 4096),
    tieWordEmbeddings: tiedWordEmbeddings(raw, raw.model_type),
    attentionBias: raw.attention_bias === true,
    mlpBias: raw.mlp_bias === true,
    eosTokenIds: eosIds(raw.eos_token_id),
    ...parseQuantization(raw),
    raw,
  };
}
