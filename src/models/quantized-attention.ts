// Attention on a quantized key/value cache, as mlx-lm's quantized_scaled_dot_product_attention:
// the cache is never dequantized in full. On the CPU our kernel reads the packed keys and values
// in place (ffi/src/kernels/quantized_attention*); elsewhere MLX's quantized matmuls do.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { KvQuantization, Mask, Stored } from "./cache";

/**
 * softmax(q kᵀ · scale + mask) v for queries [B, heads, L, D] and quantized keys/values [B, kvHeads, T, ·]
 * (keys per row, or per channel: four parts, see channel-keys.ts); with `sinks` [heads], each
 * head's sink logit joins its softmax as a column without a value. With `length`, the parts are
 * a cache's whole buffers holding T = `length` positions.
 */
export function quantizedAttention(
  queries: MxArray,
  keys: Stored,
  values: Stored,
  scale: number,
  mask: Mask,
  q: KvQuantization,
  sinks?: MxArray,
  length?: number,
): MxArray {
  const parts = (t: Stored) => [t[0]!, t[1]!, t[2]!] as const;
  const keyParts = keys.length === 4 ? ([...parts(keys), keys[3]!] as const) : parts(keys);
  return mx.fast.quantizedScaledDotProductAttention(queries, keyParts, parts(values), scale, q, mask, sinks, length);
}

/**
 * x [..., D] with each group of `groupSize` along D multiplied by the orthonormal Hadamard matrix
 * H (Sylvester's, over √groupSize), which is symmetric and its own inverse. Keys are quantized
 * after this rotation (as QuaRot rotates them): a key's few outlier channels, which otherwise set
 * the range of every row's group and so the rounding step of all its values, are spread over the
 * whole group. The queries rotated alike give the same q·k (Hᵀ H = I). Measured on the default
 * model: 8-bit's mean abs logit difference 0.073 → 0.055, 4-bit's about halved (bench/RESULTS.md,
 * "KV cache, fourth pass").
 */
export function rotateGroups(x: MxArray, groupSize: number): MxArray {
  const shape = x.shape;
  // One group per row (head_dim = group size, the common case): no reshapes, one graph node.
  if (shape.at(-1) === groupSize) return mx.matmul(x, hadamard(groupSize, x.dtype));
  const grouped = mx.reshape(x, [...shape.slice(0, -1), shape.at(-1)! / groupSize, groupSize]);
  return mx.reshape(mx.matmul(grouped, hadamard(groupSize, x.dtype)), shape);
}

const hadamards = new Map<string, MxArray>();

/** The orthonormal Hadamard matrix of order n (a power of 2) in `dtype`, made once and kept. */
function hadamard(n: number, dtype: mx.DtypeCode): MxArray {
  const key = `${n}:${dtype}`;
  let h = hadamards.get(key);
  if (!h) {
    const entries = new Float32Array(n * n);
    // Sylvester: H[i][j] = (-1)^popcount(i & j).
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) entries[i * n + j] = (popcount(i & j) % 2 ? -1 : 1) / Math.sqrt(n);
    h = mx.keep(mx.scope(() => mx.astype(mx.array(entries, [n, n]), dtype)));
    mx.evaluate(h);
    hadamards.set(key, h);
  }
  return h;
}

function popcount(bits: number): number {
  let count = 0;
  for (; bits; bits &= bits - 1) count++;
  return count;
}
