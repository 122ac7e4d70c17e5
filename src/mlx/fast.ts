// MLX's fused kernels (mlx.core.fast): normalisation, rotary embeddings, attention.
import { check, cstr, lib, outPtr, readOut } from "./ffi";
import { MxArray, wrap } from "./array";
import type { QuantizedArrays, QuantSpec } from "./ops";

export function rmsNorm(x: MxArray, weight: MxArray | undefined, eps: number): MxArray {
  return wrap(lib.mlxs_rms_norm(outPtr, x.handle, weight?.handle ?? null, eps), "rms_norm");
}

export function layerNorm(x: MxArray, weight: MxArray | undefined, bias: MxArray | undefined, eps: number): MxArray {
  return wrap(lib.mlxs_layer_norm(outPtr, x.handle, weight?.handle ?? null, bias?.handle ?? null, eps), "layer_norm");
}

export interface RopeOptions {
  dims: number;
  traditional: boolean;
  /** Frequency base; ignored when `freqs` is given. */
  base?: number;
  scale: number;
  /** Position of the first row: one number, or an array with one offset per batch row. */
  offset: number | MxArray;
  freqs?: MxArray;
}

export function rope(x: MxArray, o: RopeOptions): MxArray {
  return wrap(lib.mlxs_rope(outPtr, x.handle, ...ropeArgs(o)), "rope");
}

/** RoPE's settings as the shim takes them: dims, traditional, base, scale, offset, offsets, freqs. */
function ropeArgs(o: RopeOptions) {
  const offsetArray = typeof o.offset === "number" ? null : o.offset.handle;
  const offset = typeof o.offset === "number" ? o.offset : 0;
  return [
    o.dims,
    o.traditional ? 1 : 0,
    o.base ?? Number.NaN,
    o.scale,
    offset,
    offsetArray,
    o.freqs?.handle ?? null,
  ] as const;
}

/** The heads of attention's fused input projection: queries, then keys, then values. */
export interface AttentionHeads {
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** A float KV cache's key and value buffers [B, kvHeads, T, headDim] and the column new rows go to. */
export interface CacheRows {
  keys: MxArray;
  values: MxArray;
  at: number;
  /**
   * The cache vouches that the buffers are its own (KVCache.ownsBuffers): written in place even
   * while steps queued before still hold them (they run first), as a pipelined token loop needs.
   * Otherwise only where nothing else holds them.
   */
  owned?: boolean;
}

/** attentionInput's parameters before a cache: x, the norm's weight and eps, the product, its heads, the rotation. */
type InputParams = [
  x: MxArray,
  normWeight: MxArray,
  eps: number,
  qkv: QuantizedWeights,
  heads: AttentionHeads,
  rotation: RopeOptions,
];

/**
 * Rotated queries [B, heads, L, headDim] and keys [B, kvHeads, L, headDim], and values, of x
 * [B, L, ·]: rmsNorm(x, normWeight), the fused q/k/v product, the split into heads and RoPE, as
 * one op on our CPU kernels (exactly the composition's result), composed of the ops elsewhere.
 */
export function attentionInput(...args: InputParams): [MxArray, MxArray, MxArray];
/**
 * With a cache: the queries, the cache's buffers with the new keys and values written at
 * `cache.at` (in their dtype; in place where nothing else holds them, as sliceUpdate), and the
 * buffers' first `at + L` columns (what attention reads), still one op on our CPU kernels.
 */
export function attentionInput(
  ...args: [...InputParams, cache: CacheRows]
): [MxArray, MxArray, MxArray, MxArray, MxArray];
export function attentionInput(...args: [...InputParams, cache?: CacheRows]): MxArray[] {
  const cache = args[6];
  check(
    lib.mlxs_attention_input(
      outPtr,
      ...inputArgs(args),
      cache?.keys.handle ?? null,
      cache?.values.handle ?? null,
      cache?.at ?? 0,
      cache?.owned ? 1 : 0,
    ),
    "attention_input",
  );
  return Array.from({ length: cache ? 5 : 3 }, (_, i) => new MxArray(readOut(i)));
}

/** attentionInput's arguments before a cache's (the first six of `args`), as the shim takes them. */
function inputArgs([x, normWeight, eps, qkv, heads, rotation]: readonly [...InputParams, ...unknown[]]) {
  return [
    x.handle,
    normWeight.handle,
    eps,
    ...weightArgs(qkv),
    heads.heads,
    heads.kvHeads,
    heads.headDim,
    ...ropeArgs(rotation),
  ] as const;
}

/** silu(gate) * up, SwiGLU's activation: one fused op on our CPU kernels, MLX's ops elsewhere. */
export function siluMul(gate: MxArray, up: MxArray): MxArray {
  return wrap(lib.mlxs_silu_mul(outPtr, gate.handle, up.handle), "silu_mul");
}

/** gelu_approx(gate) * up (GELU's tanh approximation: Gemma's GeGLU), likewise: mlx.nn.gelu_approx's ops elsewhere. */
export function geluApproxMul(gate: MxArray, up: MxArray): MxArray {
  return wrap(lib.mlxs_gelu_approx_mul(outPtr, gate.handle, up.handle), "gelu_approx_mul");
}

/**
 * A greedy step's sampling of logits [B, V]: each row's token, argmax(logprobs), and its logprob,
 * logprobs = logits - logsumexp(logits). One op on our CPU kernels (no logprobs array); the same
 * numbers as MLX's ops, which run elsewhere.
 */
export function greedyTokens(logits: MxArray): { tokens: MxArray; chosen: MxArray } {
  check(lib.mlxs_greedy_tokens(outPtr, logits.handle), "greedy_tokens");
  return { tokens: new MxArray(readOut(0)), chosen: new MxArray(readOut(1)) };
}

/** An affine-quantized projection (transposed weights, no bias of its own) as fused ops take it. */
export interface QuantizedWeights extends QuantizedArrays {
  quant: QuantSpec;
}

/**
 * x + oProj(heads [B, H, L, D] back into rows [B, L, H·D]): attention's output and the block's
 * residual add, one op on our CPU kernels (exactly the composition's result), composed elsewhere.
 */
export function attentionOutput(x: MxArray, heads: MxArray, oProj: QuantizedWeights): MxArray {
  return wrap(lib.mlxs_attention_output(outPtr, x.handle, heads.handle, ...weightArgs(oProj)), "attention_output");
}

/**
 * h + down(silu(gate) · up), where gate and up are the halves of gateUp(rmsNorm(h, normWeight)):
 * the MLP half of a pre-norm block as one op on our CPU kernels (exactly the composition's
 * result), composed of the ops elsewhere.
 */
export function mlpBlock(
  h: MxArray,
  normWeight: MxArray,
  eps: number,
  gateUp: QuantizedWeights,
  down: QuantizedWeights,
): MxArray {
  return wrap(
    lib.mlxs_mlp_block(outPtr, h.handle, normWeight.handle, eps, ...weightArgs(gateUp), ...weightArgs(down)),
    "mlp_block",
  );
}

/**
 * mlpBlock(attentionOutput(x, heads, oProj), normWeight, eps, gateUp, down): a pre-norm block's
 * second half from attention's heads, one op on our CPU kernels (exactly the two ops' result).
 */
export function attentionOutputMlp(
  x: MxArray,
  heads: MxArray,
  oProj: QuantizedWeights,
  normWeight: MxArray,
  eps: number,
  gateUp: QuantizedWeights,
  down: QuantizedWeights,
): MxArray {
  return wrap(
    lib.mlxs_attention_output_mlp(
      outPtr,
      x.handle,
      heads.handle,
      ...weightArgs(oProj),
      normWeight.handle,
      eps,
      ...weightArgs(gateUp),
      ...weightArgs(down),
    ),
    "attention_output_mlp",
  );
}

const weightArgs = (w: QuantizedWeights) =>
  [w.weight.handle, w.scales.handle, w.biases.handle, w.quant.groupSize, w.quant.bits] as const;

const causalMode = cstr("causal");
const noMode = cstr("");

/** The shim's mask arguments: its mode string, and the mask array's handle when one is given. */
function maskArgs(mask?: "causal" | MxArray) {
  return [mask === "causal" ? causalMode : noMode, mask && mask !== "causal" ? mask.handle : null] as const;
}

/** softmax(q kᵀ · scale + mask) v with grouped-query heads; mask is "causal", an array, or none. */
export function scaledDotProductAttention(
  q: MxArray,
  k: MxArray,
  v: MxArray,
  scale: number,
  mask?: "causal" | MxArray,
  sinks?: MxArray,
): MxArray {
  const [mode, maskArray] = maskArgs(mask);
  return wrap(
    lib.mlxs_sdpa(outPtr, q.handle, k.handle, v.handle, scale, mode, maskArray, sinks?.handle ?? null),
    "scaled_dot_product_attention",
  );
}

/** Keys or values [B, kvHeads, T, ·] as `quantize` makes them (affine): packed codes, scales, biases. */
export type QuantizedParts = readonly [packed: MxArray, scales: MxArray, biases: MxArray];

/**
 * Keys quantized per channel (src/models/channel-keys.ts): codes [B, kvHeads, nG, ·] as `quantize`
 * packs rows, scales and biases [B, kvHeads, n, D] per channel and group of G positions, and the
 * newest T - nG positions in float [B, kvHeads, T - nG, D].
 */
export type ChannelKeyParts = readonly [packed: MxArray, scales: MxArray, biases: MxArray, tail: MxArray];

/**
 * scaledDotProductAttention on quantized keys and values (a quantized KV cache), read in place
 * at `bits` per element: our CPU kernel, or MLX's ops where it does not apply. With `length`, the
 * parts are a cache's whole buffers, of which the first `length` positions are attended to
 * (per-channel keys: their first `length` minus the tail's).
 */
export function quantizedScaledDotProductAttention(
  q: MxArray,
  keys: QuantizedParts | ChannelKeyParts,
  values: QuantizedParts,
  scale: number,
  quantization: { groupSize: number; bits: number },
  mask?: "causal" | MxArray,
  sinks?: MxArray,
  length?: number,
): MxArray {
  const [mode, maskArray] = maskArgs(mask);
  return wrap(
    lib.mlxs_quantized_sdpa(
      outPtr,
      q.handle,
      keys[0].handle,
      keys[1].handle,
      keys[2].handle,
      values[0].handle,
      values[1].handle,
      values[2].handle,
      scale,
      mode,
      maskArray,
      sinks?.handle ?? null,
      keys[3]?.handle ?? null,
      quantization.groupSize,
      quantization.bits,
      length ?? 0,
    ),
    "quantized_scaled_dot_product_attention",
  );
}

/** A quantized KV cache's step as quantizedCacheWrite returns it. */
export interface QuantizedCacheStep {
  /** The values' buffers, written (in place where the cache held them alone). */
  buffers: QuantizedParts;
  /** Their first `at + L` positions: the values attention reads. */
  values: QuantizedParts;
  /** With keys per channel: their coded groups and the tail grown by the new keys, as attention reads them. */
  keys?: ChannelKeyParts;
}

/** Keys per channel for quantizedCacheWrite: the new ones, the tail they join, and the coded ones. */
export interface ChannelKeyStep {
  keys: MxArray;
  tail: MxArray;
  buffers: QuantizedParts;
  /** Positions of `buffers` that hold whole coded groups. */
  coded: number;
}

// Written by the shim, read at once: a typed array passed for one call is not moved during it.
const stepOuts = new BigUint64Array(10);

/**
 * A quantized KV cache's step: values [B, kvHeads, L, D] quantized as `quantize` does (bit for
 * bit) into the cache's buffers at column `at`, and with `keys` the new keys appended to the
 * per-channel tail: one graph node on our CPU kernels (in place where the cache holds its buffers
 * alone, or owns them: see CacheRows.owned), MLX's ops composed elsewhere (quantize, sliceUpdate,
 * slice, astype, concatenate).
 */
export function quantizedCacheWrite(
  values: MxArray,
  buffers: QuantizedParts,
  at: number,
  quantization: { groupSize: number; bits: number },
  keys?: ChannelKeyStep,
  owned = false,
): QuantizedCacheStep {
  check(
    lib.mlxs_quantized_cache_write(
      stepOuts,
      values.handle,
      buffers[0].handle,
      buffers[1].handle,
      buffers[2].handle,
      at,
      keys?.keys.handle ?? null,
      keys?.tail.handle ?? null,
      keys?.buffers[0].handle ?? null,
      keys?.buffers[1].handle ?? null,
      keys?.buffers[2].handle ?? null,
      keys?.coded ?? 0,
      quantization.groupSize,
      quantization.bits,
      owned ? 1 : 0,
    ),
    "quantized_cache_write",
  );
  const out = Array.from(stepOuts.subarray(0, keys ? 10 : 6), (handle) => new MxArray(Number(handle)));
  return {
    buffers: [out[0]!, out[1]!, out[2]!],
    values: [out[3]!, out[4]!, out[5]!],
    keys: keys && [out[6]!, out[7]!, out[8]!, out[9]!],
  };
}

/**
 * A quantized KV cache with keys per channel, as attentionInputQuantized writes a step into it:
 * the values' buffers, the keys' (their float tail and coded buffers), the column new rows go to.
 */
export interface QuantizedCacheRows {
  values: QuantizedParts;
  keys: Omit<ChannelKeyStep, "keys">;
  at: number;
  quantization: { groupSize: number; bits: number };
  /** As CacheRows.owned, for the values' buffers. */
  owned?: boolean;
}

/** A quantized cache's step as attentionInputQuantized writes it. */
export interface QuantizedCacheWritten {
  queries: MxArray;
  /** The values' buffers, written (in place where the cache owns them). */
  buffers: QuantizedParts;
  /** The keys' float tail, grown by the new keys. */
  tail: MxArray;
}

/**
 * attentionInput, then quantizedCacheWrite of its keys and values into a quantized cache (keys
 * per channel), as one op on our CPU kernels (exactly the two ops' buffers and tail) where a
 * quantized cache's decode step is otherwise a node more a layer; the two ops elsewhere. No views
 * of the buffers: attention reads them whole (quantizedScaledDotProductAttention's `length`).
 */
export function attentionInputQuantized(...args: [...InputParams, cache: QuantizedCacheRows]): QuantizedCacheWritten {
  const cache = args[6];
  const { values, keys } = cache;
  check(
    lib.mlxs_attention_input_quantized(
      stepOuts,
      ...inputArgs(args),
      values[0].handle,
      values[1].handle,
      values[2].handle,
      keys.buffers[0].handle,
      keys.buffers[1].handle,
      keys.buffers[2].handle,
      keys.tail.handle,
      keys.coded,
      cache.at,
      cache.quantization.groupSize,
      cache.quantization.bits,
      cache.owned ? 1 : 0,
    ),
    "attention_input",
  );
  const [queries, codes, scales, biases, tail] = Array.from(stepOuts.subarray(0, 5), (h) => new MxArray(Number(h)));
  return { queries: queries!, buffers: [codes!, scales!, biases!], tail: tail! };
}
