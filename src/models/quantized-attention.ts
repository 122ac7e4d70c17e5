// Attention on a quantized key/value cache, as mlx-lm's quantized_scaled_dot_product_attention:
// the cache is never dequantized in full. On the CPU our kernel reads the packed keys and values
// in place (ffi/src/kernels/quantized_attention*); elsewhere MLX's quantized matmuls do.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { KvQuantization, Mask, Stored } from "./cache";

/**
 * softmax(q kᵀ · scale + mask) v for queries [B, heads, L, D] and quantized keys/values [B, kvHeads, T, ·];
 * with `sinks` [heads], each head's sink logit joins its softmax as a column without a value.
 */
export function quantizedAttention(
  queries: MxArray,
  keys: Stored,
  values: Stored,
  scale: number,
  mask: Mask,
  q: KvQuantization,
  sinks?: MxArray,
): MxArray {
  const parts = (t: Stored) => [t[0]!, t[1]!, t[2]!] as const;
  return mx.fast.quantizedScaledDotProductAttention(queries, parts(keys), parts(values), scale, q, mask, sinks);
}
