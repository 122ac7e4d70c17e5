// Attention on a quantized key/value cache, as mlx-lm's quantized_scaled_dot_product_attention:
// scores and output come from quantized matmuls on the packed keys and values, so the cache
// is never dequantized in full. Grouped-query heads share their key/value head through a
// broadcast axis instead of a repeat.
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
  const [batch, heads, length, dim] = queries.shape as [number, number, number, number];
  const kvHeads = keys[0]!.shape[1]!;
  const repeats = heads / kvHeads;
  let scaled = mx.multiply(queries, mx.scalar(scale, queries.dtype));
  let k = keys;
  let v = values;
  if (repeats > 1) {
    scaled = mx.reshape(scaled, [batch, kvHeads, repeats, length, dim]);
    k = keys.map((t) => mx.expandDims(t, -3));
    v = values.map((t) => mx.expandDims(t, -3));
  }
  let scores = mx.quantizedMatmul(scaled, k[0]!, k[1]!, k[2], q, true);
  if (mask !== undefined) {
    const total = scores.shape.at(-1)!;
    let allowed = mask === "causal" ? causal(length, total) : mask;
    if (repeats > 1 && mask !== "causal") allowed = mx.expandDims(allowed, -3);
    scores = mx.where(allowed, scores, mx.scalar(-Infinity, scores.dtype));
  }
  let weights: MxArray;
  if (sinks) {
    // The sink as a first column (scores' shape with one column), dropped after the softmax.
    const perHead = mx.reshape(mx.astype(sinks, scores.dtype), repeats > 1 ? [kvHeads, repeats, 1, 1] : [heads, 1, 1]);
    const column = mx.broadcastTo(perHead, [...scores.shape.slice(0, -1), 1]);
    const all = mx.softmax(mx.concatenate([column, scores], -1), -1, true);
    const shape = all.shape;
    weights = mx.slice(all, [...shape.slice(0, -1).map(() => 0), 1], shape);
  } else weights = mx.softmax(scores, -1, true);
  const out = mx.quantizedMatmul(weights, v[0]!, v[1]!, v[2], q, false);
  return repeats > 1 ? mx.reshape(out, [batch, heads, length, dim]) : out;
}

/** [L, T]: the L newest positions each see themselves and everything before. */
function causal(length: number, total: number): MxArray {
  const rows = mx.reshape(mx.arange(total - length, total), [length, 1]);
  const columns = mx.reshape(mx.arange(0, total), [1, total]);
  return mx.greaterEqual(rows, columns);
}
