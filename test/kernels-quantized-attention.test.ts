// Our quantized attention kernel (ffi/src/kernels/quantized_attention*) against MLX's reference:
// float attention on the dequantized keys and values. 4 and 8 bits, groups of 32/64/128, decode,
// several rows (prefill chunks, speculative verification), grouped-query heads, the batch path's
// masks, sinks, half-precision scales, keys/values read in place from a larger cache; one row and
// several rows give the same numbers; MLX's own composition (the fallback) agrees too. Keys
// quantized per channel with a float tail (src/models/channel-keys.ts) likewise.
import { describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import type { ChannelKeyParts } from "../src/mlx/fast";
import { decodeKeys, encodeKeys } from "../src/models/channel-keys";
import { relativeError, withMlxKernels } from "./helpers/kernels";

interface Case {
  bits: 4 | 8;
  group: 32 | 64 | 128;
  batch?: number;
  qHeads: number;
  kvHeads: number;
  queries: number;
  keys: number;
  dim?: number;
  valueDim?: number;
  mask?: "causal" | "bool" | "additive";
  sinks?: boolean;
  dtype?: mx.DtypeCode;
  /** Keys per channel: query channel 3 times this (a row whose rounding one element sets). */
  queryOutlier?: number;
}

type Parts = readonly [mx.MxArray, mx.MxArray, mx.MxArray];

// Keys and values as the KV cache hands them over: the used part of a larger quantized buffer.
function inputs(c: Case) {
  const b = c.batch ?? 1;
  const dim = c.dim ?? 64;
  const valueDim = c.valueDim ?? dim;
  const dtype = c.dtype ?? mx.Dtype.float32;
  const quantization = { bits: c.bits, groupSize: c.group };
  const capacity = c.keys + 37;
  const quantized = (width: number): Parts => {
    const full = mx.quantize(mx.astype(mx.random.normal([b, c.kvHeads, capacity, width]), dtype), quantization);
    const cut = (t: mx.MxArray) => mx.slice(t, [0, 0, 0, 0], [b, c.kvHeads, c.keys, t.shape[3]!]);
    return [cut(full.weight), cut(full.scales), cut(full.biases!)];
  };
  const q = mx.astype(mx.multiply(mx.random.normal([b, c.qHeads, c.queries, dim]), mx.scalar(2)), dtype);
  const keys = quantized(dim);
  const values = quantized(valueDim);
  let mask: "causal" | mx.MxArray | undefined;
  if (c.mask === "causal") mask = "causal";
  else if (c.mask === "bool") mask = mx.greater(mx.random.normal([b, 1, c.queries, c.keys]), mx.scalar(-1));
  else if (c.mask === "additive") mask = mx.multiply(mx.random.uniform([b, 1, c.queries, c.keys]), mx.scalar(-4));
  const sinks = c.sinks ? mx.random.normal([c.qHeads]) : undefined;
  mx.evaluate(q, ...keys, ...values, ...(mask && mask !== "causal" ? [mask] : []), ...(sinks ? [sinks] : []));
  return { q, keys, values, mask, sinks, scale: dim ** -0.5, quantization };
}

const f32 = (x: mx.MxArray) => mx.astype(x, mx.Dtype.float32);

/**
 * Ours against float attention on the dequantized keys/values, and MLX's composition too;
 * returns how far ours is from the composition.
 */
function compare(c: Case, tolerance = 2e-5): number {
  return mx.scope(() => {
    const { q, keys, values, mask, sinks, scale, quantization } = inputs(c);
    const ours = mx.fast.quantizedScaledDotProductAttention(q, keys, values, scale, quantization, mask, sinks);
    const reference = withMlxKernels(() => {
      // fp32 scales and biases: MLX's dequantize rounds to half-precision ones' type, our kernel does not.
      const dequantized = (t: Parts) => mx.dequantize(t[0], f32(t[1]), f32(t[2]), quantization);
      return mx.fast.scaledDotProductAttention(f32(q), dequantized(keys), dequantized(values), scale, mask, sinks);
    });
    const composed = withMlxKernels(() =>
      mx.fast.quantizedScaledDotProductAttention(f32(q), keys, values, scale, quantization, mask, sinks),
    );
    expect(ours.shape).toEqual(reference.shape);
    expect(ours.dtype).toBe(q.dtype);
    expect(relativeError(ours, reference)).toBeLessThan(tolerance);
    // MLX's quantized matmuls compute in the scales' type.
    expect(relativeError(composed, reference)).toBeLessThan(c.dtype ? 2e-2 : 1e-4);
    return relativeError(ours, composed);
  });
}

describe("quantized attention kernel", () => {
  mx.random.seed(11);

  test("decode: one row over 1 to 2,001 keys, every bit width and group size, grouped-query heads", () => {
    for (const bits of [4, 8] as const)
      for (const group of [32, 64, 128] as const) {
        for (const keys of [1, 7, 300]) compare({ bits, group, qHeads: 9, kvHeads: 3, queries: 1, keys, dim: 128 });
        // Computed by our kernel, not MLX's ops: the rounding differs somewhere in 2,001 keys.
        expect(compare({ bits, group, qHeads: 8, kvHeads: 2, queries: 1, keys: 2001, dim: 128 })).toBeGreaterThan(0);
      }
  });

  test("several rows: causal prefill and chunks at an offset (3 and 17 rows), odd lengths", () => {
    for (const bits of [4, 8] as const) {
      for (const queries of [3, 17]) {
        compare({ bits, group: 64, qHeads: 9, kvHeads: 3, queries, keys: queries, mask: "causal" });
        compare({ bits, group: 32, qHeads: 6, kvHeads: 2, queries, keys: 301, mask: "causal" });
      }
      compare({ bits, group: 128, qHeads: 4, kvHeads: 4, queries: 65, keys: 700, dim: 128, mask: "causal" });
    }
  });

  test("the batch path's masks, sinks, another value width", () => {
    for (const bits of [4, 8] as const) {
      compare({ bits, group: 64, batch: 3, qHeads: 9, kvHeads: 3, queries: 1, keys: 75, mask: "bool" });
      compare({ bits, group: 32, batch: 2, qHeads: 4, kvHeads: 2, queries: 12, keys: 40, mask: "bool", sinks: true });
      compare({ bits, group: 64, batch: 2, qHeads: 4, kvHeads: 1, queries: 3, keys: 500, mask: "additive" });
      compare({ bits, group: 32, qHeads: 8, kvHeads: 2, queries: 5, keys: 900, mask: "causal", sinks: true });
      compare({ bits, group: 32, qHeads: 4, kvHeads: 2, queries: 2, keys: 50, valueDim: 96, mask: "causal" });
    }
  });

  test("bfloat16 and float16 caches: fp32 inside, the output in the queries' type", () => {
    compare({ bits: 4, group: 64, qHeads: 9, kvHeads: 3, queries: 1, keys: 700, dtype: mx.Dtype.bfloat16 }, 5e-3);
    compare(
      { bits: 8, group: 32, qHeads: 9, kvHeads: 3, queries: 20, keys: 20, mask: "causal", dtype: mx.Dtype.float16 },
      2e-3,
    );
  });

  test("one row at a time gives what several rows give at once (ours, and MLX's composition)", () => {
    for (const bits of [4, 8] as const)
      mx.scope(() => {
        const rows = 17;
        const { q, keys, values, scale, quantization } = inputs({
          bits,
          group: 64,
          qHeads: 9,
          kvHeads: 3,
          queries: rows,
          keys: 1200,
        });
        const attend = (queries: mx.MxArray, k: Parts, v: Parts, mask?: "causal") =>
          mx.fast.quantizedScaledDotProductAttention(queries, k, v, scale, quantization, mask);
        const [b, heads, , dim] = q.shape as number[];
        for (const ours of [true, false]) {
          const previous = mx.useCpuKernels(ours);
          try {
            const all = attend(q, keys, values, "causal");
            for (let i = 0; i < rows; i++) {
              const seen = 1200 - rows + i + 1;
              const cut = (t: Parts) =>
                t.map((x) => mx.slice(x, [0, 0, 0, 0], [b!, 3, seen, x.shape[3]!])) as unknown as Parts;
              const one = attend(mx.slice(q, [0, 0, i, 0], [b!, heads!, i + 1, dim!]), cut(keys), cut(values));
              // Ours splits one row's keys over the threads and sums the parts in another order.
              const error = relativeError(one, mx.slice(all, [0, 0, i, 0], [b!, heads!, i + 1, dim!]));
              expect(error).toBeLessThan(ours ? 1e-5 : 1e-6);
            }
          } finally {
            mx.useCpuKernels(previous);
          }
        }
      });
  });

  test("parts strided along their rows (not the cache's views) are read as well", () => {
    mx.scope(() => {
      const c = { bits: 4, group: 32, qHeads: 4, kvHeads: 2, queries: 3, keys: 90 } as const;
      const { q, keys, values, scale, quantization } = inputs(c);
      // The same numbers, each part the transpose of a [B, H, width, T] array (adding 0 lays it out so).
      const swap = (p: mx.MxArray) => mx.transpose(p, [0, 1, 3, 2]);
      const strided = (t: Parts) => t.map((p) => swap(mx.add(swap(p), mx.scalar(0, p.dtype)))) as unknown as Parts;
      const here = mx.fast.quantizedScaledDotProductAttention(q, keys, values, scale, quantization, "causal");
      const there = mx.fast.quantizedScaledDotProductAttention(
        q,
        strided(keys),
        strided(values),
        scale,
        quantization,
        "causal",
      );
      expect(relativeError(there, here)).toBe(0);
    });
  });

  test("a lazy graph node like MLX's: the same result on a second stream", () => {
    mx.scope(() => {
      const c = { bits: 4, group: 64, qHeads: 9, kvHeads: 3, queries: 1, keys: 400 } as const;
      const { q, keys, values, scale, quantization } = inputs(c);
      const here = mx.fast.quantizedScaledDotProductAttention(q, keys, values, scale, quantization);
      const side = mx.onStream(mx.newStream(), () =>
        mx.fast.quantizedScaledDotProductAttention(q, keys, values, scale, quantization),
      );
      mx.evaluate(here, side);
      expect(relativeError(side, here)).toBe(0);
    });
  });
});

describe("keys quantized per channel (KIVI)", () => {
  mx.random.seed(12);

  // Keys with an outlier channel in the per-channel layout (whole groups, then the float tail:
  // float16 under our kernels), values per row, queries.
  function channelInputs(c: Case) {
    const b = c.batch ?? 1;
    const dim = c.dim ?? 64;
    const quantization = { bits: c.bits, groupSize: c.group };
    const outlier = mx.multiply(mx.reshape(mx.equal(mx.arange(0, dim), 5), [1, 1, 1, dim]), mx.scalar(6));
    const keys = encodeKeys(mx.add(mx.random.normal([b, c.kvHeads, c.keys, dim]), outlier), quantization);
    const v = mx.quantize(mx.random.normal([b, c.kvHeads, c.keys, dim]), quantization);
    const values = [v.weight, v.scales, v.biases!] as const;
    const channel3 = mx.reshape(mx.equal(mx.arange(0, dim), 3), [1, 1, 1, dim]);
    const q = mx.multiply(
      mx.multiply(mx.random.normal([b, c.qHeads, c.queries, dim]), mx.scalar(2)),
      mx.add(mx.scalar(1), mx.multiply(channel3, mx.scalar((c.queryOutlier ?? 1) - 1))),
    );
    let mask: "causal" | mx.MxArray | undefined;
    if (c.mask === "causal") mask = "causal";
    else if (c.mask === "bool") mask = mx.greater(mx.random.normal([b, 1, c.queries, c.keys]), mx.scalar(-1));
    const sinks = c.sinks ? mx.random.normal([c.qHeads]) : undefined;
    mx.evaluate(q, ...keys, ...values, ...(mask && mask !== "causal" ? [mask] : []), ...(sinks ? [sinks] : []));
    return { q, keys: keys as unknown as ChannelKeyParts, values, mask, sinks, scale: dim ** -0.5, quantization };
  }

  // Ours and MLX's composition (decoded keys, MLX's attention) against float attention on the decoded keys and values.
  function compareChannel(c: Case): number {
    return mx.scope(() => {
      const { q, keys, values, mask, sinks, scale, quantization } = channelInputs(c);
      const ours = mx.fast.quantizedScaledDotProductAttention(q, keys, values, scale, quantization, mask, sinks);
      const reference = withMlxKernels(() => {
        const k = decodeKeys(keys as unknown as mx.MxArray[], c.keys, quantization, mx.Dtype.float32);
        const v = mx.dequantize(values[0], values[1], values[2], quantization);
        return mx.fast.scaledDotProductAttention(q, k, v, scale, mask, sinks);
      });
      const composed = withMlxKernels(() =>
        mx.fast.quantizedScaledDotProductAttention(q, keys, values, scale, quantization, mask, sinks),
      );
      expect(relativeError(ours, reference)).toBeLessThan(2e-5);
      expect(relativeError(composed, reference)).toBeLessThan(1e-5);
      return relativeError(ours, composed);
    });
  }

  test("decode over keys all in the tail, whole groups only, and groups with a tail; 4 and 8 bits", () => {
    for (const bits of [4, 8] as const)
      for (const group of [32, 64] as const)
        for (const keys of [1, group - 1, group, 2 * group + 5, 2001]) {
          const apart = compareChannel({ bits, group, qHeads: 9, kvHeads: 3, queries: 1, keys, dim: 128 - group });
          // Computed by our kernel, not MLX's ops: the rounding differs somewhere in 2,001 keys.
          if (keys === 2001) expect(apart).toBeGreaterThan(0);
        }
  });

  test("prefill chunks, the batch path's masks and sinks", () => {
    for (const bits of [4, 8] as const) {
      compareChannel({ bits, group: 64, qHeads: 9, kvHeads: 3, queries: 17, keys: 150, mask: "causal" });
      compareChannel({ bits, group: 64, batch: 3, qHeads: 6, kvHeads: 2, queries: 1, keys: 200, mask: "bool" });
      compareChannel({
        bits,
        group: 32,
        batch: 2,
        qHeads: 4,
        kvHeads: 2,
        queries: 3,
        keys: 70,
        mask: "bool",
        sinks: true,
      });
    }
  });

  // With AVX-512 VNNI the codes are summed as integers (quantized_attention_codes.h): queries
  // and weights rounded to 24 bits, keys and values in pieces of 64 elements.
  test("on their codes: heads of several pieces, value groups along D, a query's outlier channel", () => {
    for (const bits of [4, 8] as const) {
      compareChannel({ bits, group: 64, qHeads: 8, kvHeads: 2, queries: 1, keys: 1500, dim: 128 });
      compareChannel({ bits, group: 128, qHeads: 4, kvHeads: 1, queries: 1, keys: 701, dim: 256 });
      compareChannel({ bits, group: 64, qHeads: 9, kvHeads: 3, queries: 5, keys: 333, mask: "causal" });
      // One element sets the row's rounding step, and the softmax is nearly one key.
      compareChannel({ bits, group: 64, qHeads: 9, kvHeads: 3, queries: 1, keys: 900, queryOutlier: 50 });
    }
  });

  test("per channel, a key's outlier channel no longer sets the other channels' rounding", () => {
    mx.scope(() => {
      const quantization = { bits: 8, groupSize: 64 };
      const outlier = mx.multiply(mx.reshape(mx.equal(mx.arange(0, 64), 3), [1, 1, 1, 64]), mx.scalar(8));
      const keys = mx.add(mx.random.normal([1, 2, 128, 64]), outlier);
      const rows = mx.quantize(keys, quantization);
      const perRow = mx.dequantize(rows.weight, rows.scales, rows.biases, quantization);
      const perChannel = decodeKeys(encodeKeys(keys, quantization), 128, quantization, mx.Dtype.float32);
      const error = (back: mx.MxArray) => mx.sqrt(mx.mean(mx.square(mx.subtract(back, keys)))).item();
      expect(error(perChannel)).toBeLessThan(0.5 * error(perRow));
    });
  });
});
