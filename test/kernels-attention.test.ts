// Our attention kernel (ffi/src/kernels/attention*) against MLX's scaled_dot_product_attention:
// decode over a long cache, causal prefill, chunked prefill at an offset, grouped-query heads,
// the batch path's masks, keys/values read in place from a larger cache, half-precision inputs.
import { describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import { relativeError, withMlxKernels } from "./helpers/kernels";

interface Case {
  batch?: number;
  qHeads: number;
  kvHeads: number;
  queries: number;
  keys: number;
  dim: number;
  mask?: "causal" | "bool" | "additive" | "prefix per head";
  dtype?: mx.DtypeCode;
  /** Keys' and values' dtype when not the queries' (a float16 cache under float32 activations). */
  kvDtype?: mx.DtypeCode;
  /** Keys whose head dimension is strided (a transposed buffer), not rows. */
  stridedKeys?: boolean;
  /** A learned logit per query head joining each softmax without a value (gpt-oss). */
  sinks?: boolean;
}

// Keys and values as the KV cache hands them over: the used part of a larger buffer.
function inputs(c: Case) {
  const b = c.batch ?? 1;
  const dtype = c.dtype ?? mx.Dtype.float32;
  const normal = (shape: number[], type = dtype) => mx.astype(mx.random.normal(shape), type);
  const capacity = c.keys + 37;
  const q = normal([b, c.qHeads, c.queries, c.dim]);
  const held = (shape: number[]) => normal(shape, c.kvDtype ?? dtype);
  const k = c.stridedKeys
    ? mx.transpose(held([b, c.kvHeads, c.dim, c.keys]), [0, 1, 3, 2])
    : mx.slice(held([b, c.kvHeads, capacity, c.dim]), [0, 0, 0, 0], [b, c.kvHeads, c.keys, c.dim]);
  const v = mx.slice(held([b, c.kvHeads, capacity, c.dim]), [0, 0, 0, 0], [b, c.kvHeads, c.keys, c.dim]);
  let mask: "causal" | mx.MxArray | undefined;
  if (c.mask === "causal") mask = "causal";
  else if (c.mask === "bool") mask = mx.greater(mx.random.normal([b, 1, c.queries, c.keys]), mx.scalar(-1));
  // Each query head hides its first 40·(heads - 1 - h) keys: a group's first head sees the fewest.
  else if (c.mask === "prefix per head")
    mask = mx.array(
      Array.from({ length: b * c.qHeads * c.queries * c.keys }, (_, i) => {
        const head = Math.floor(i / (c.queries * c.keys)) % c.qHeads;
        return i % c.keys >= 40 * (c.qHeads - 1 - head) ? 1 : 0;
      }),
      [b, c.qHeads, c.queries, c.keys],
      mx.Dtype.bool,
    );
  else if (c.mask === "additive") mask = mx.multiply(mx.random.uniform([b, 1, c.queries, c.keys]), mx.scalar(-4));
  const sinks = c.sinks ? mx.random.normal([c.qHeads]) : undefined;
  mx.evaluate(q, k, v, ...(mask && mask !== "causal" ? [mask] : []), ...(sinks ? [sinks] : []));
  return { q, k, v, mask, sinks, scale: c.dim ** -0.5 };
}

/** Our kernel against MLX's op on the same inputs; returns the relative error. */
function compare(c: Case, tolerance = 2e-5): number {
  return mx.scope(() => {
    const { q, k, v, mask, sinks, scale } = inputs(c);
    const ours = mx.fast.scaledDotProductAttention(q, k, v, scale, mask, sinks);
    // MLX's reference in fp32 (its half-precision CPU path rounds intermediate results).
    const f32 = (x: mx.MxArray) => mx.astype(x, mx.Dtype.float32);
    const reference = withMlxKernels(() =>
      mx.fast.scaledDotProductAttention(f32(q), f32(k), f32(v), scale, mask, sinks),
    );
    expect(ours.shape).toEqual(reference.shape);
    expect(ours.dtype).toBe(q.dtype);
    const error = relativeError(ours, reference);
    expect(error).toBeLessThan(tolerance);
    return error;
  });
}

describe("attention kernel", () => {
  mx.random.seed(7);

  test("decode: one query row over caches of 1 to 2,000 keys, grouped-query heads", () => {
    for (const keys of [1, 7, 64, 300]) compare({ qHeads: 9, kvHeads: 3, queries: 1, keys, dim: 64 });
    // Computed by our kernel, not MLX's op: the rounding differs somewhere in 2,000 keys.
    expect(compare({ qHeads: 9, kvHeads: 3, queries: 1, keys: 2000, dim: 64 })).toBeGreaterThan(0);
    compare({ qHeads: 4, kvHeads: 4, queries: 1, keys: 513, dim: 128 });
  });

  test("prefill: causal over the whole prompt, odd lengths and head sizes", () => {
    for (const n of [3, 17, 130]) compare({ qHeads: 9, kvHeads: 3, queries: n, keys: n, dim: 64, mask: "causal" });
    compare({ qHeads: 6, kvHeads: 2, queries: 33, keys: 33, dim: 10, mask: "causal" });
    compare({ qHeads: 2, kvHeads: 1, queries: 5, keys: 5, dim: 100, mask: "causal" });
  });

  test("chunked prefill: causal queries at an offset into the cache", () => {
    compare({ qHeads: 9, kvHeads: 3, queries: 17, keys: 300, dim: 64, mask: "causal" });
    compare({ qHeads: 8, kvHeads: 2, queries: 64, keys: 600, dim: 48, mask: "causal" });
  });

  test("the batch path: several rows with a boolean padding mask, or an additive mask", () => {
    compare({ batch: 3, qHeads: 9, kvHeads: 3, queries: 1, keys: 75, dim: 64, mask: "bool" });
    compare({ batch: 2, qHeads: 4, kvHeads: 2, queries: 12, keys: 40, dim: 32, mask: "bool" });
    compare({ batch: 2, qHeads: 4, kvHeads: 1, queries: 3, keys: 500, dim: 64, mask: "additive" });
    // Each head its own mask: a tile's work starts at the first key any head of its group sees.
    compare({ batch: 2, qHeads: 6, kvHeads: 2, queries: 1, keys: 300, dim: 64, mask: "prefix per head" });
    compare({ batch: 1, qHeads: 6, kvHeads: 2, queries: 40, keys: 300, dim: 64, mask: "prefix per head" });
  });

  test("bfloat16 and float16 inputs: fp32 inside, the output in the input's type", () => {
    compare({ qHeads: 9, kvHeads: 3, queries: 1, keys: 700, dim: 64, dtype: mx.Dtype.bfloat16 }, 1e-2);
    compare({ qHeads: 9, kvHeads: 3, queries: 20, keys: 20, dim: 64, mask: "causal", dtype: mx.Dtype.float16 }, 2e-3);
  });

  test("a float16 or bfloat16 KV cache under float32 queries: read in place, widened to fp32", () => {
    const { float16, bfloat16 } = mx.Dtype;
    // Decode (a group's few rows, each key scored directly) at long contexts, split over the pool.
    for (const keys of [1, 100, 2000, 8000])
      compare({ qHeads: 9, kvHeads: 3, queries: 1, keys, dim: 64, kvDtype: float16 });
    compare({ qHeads: 9, kvHeads: 3, queries: 1, keys: 700, dim: 64, kvDtype: bfloat16 });
    // Head sizes that are not a multiple of the vector width; two query positions (a draft to verify).
    compare({ qHeads: 4, kvHeads: 2, queries: 1, keys: 333, dim: 40, kvDtype: float16 });
    compare({ qHeads: 9, kvHeads: 3, queries: 2, keys: 300, dim: 72, mask: "causal", kvDtype: float16 });
    // Many rows per chunk (prefill: keys transposed and values widened once per chunk, head sizes
    // and key counts off the vector width included), and the batch path's mask.
    compare({ qHeads: 9, kvHeads: 3, queries: 40, keys: 300, dim: 64, mask: "causal", kvDtype: float16 });
    compare({ qHeads: 9, kvHeads: 3, queries: 33, keys: 45, dim: 72, mask: "causal", kvDtype: float16 });
    compare({ qHeads: 4, kvHeads: 1, queries: 19, keys: 150, dim: 40, mask: "causal", kvDtype: bfloat16 });
    compare({ batch: 3, qHeads: 9, kvHeads: 3, queries: 1, keys: 75, dim: 64, mask: "bool", kvDtype: float16 });
  });

  test("decode's few rows scored directly: 1 to 8 rows per key/value head, head sizes off the vector width", () => {
    const { float16, bfloat16, float32 } = mx.Dtype;
    // [query heads, kv heads, query positions]: rows per kv head = group × positions.
    const shapes = [
      [2, 2, 1],
      [4, 2, 1],
      [6, 2, 1],
      [8, 2, 1],
      [5, 1, 1],
      [3, 1, 2],
      [7, 1, 1],
      [4, 1, 2],
    ] as const;
    const kvDtypes = [float16, bfloat16, float32];
    shapes.forEach(([qHeads, kvHeads, queries], i) => {
      for (const dim of [8, 20, 64, 72])
        compare({ qHeads, kvHeads, queries, keys: 150 + i, dim, kvDtype: kvDtypes[i % kvDtypes.length] });
    });
    // Fewer keys than one block of key pairs, and a block with one key of a pair.
    for (const kvDtype of kvDtypes)
      for (const keys of [1, 2, 7, 17]) compare({ qHeads: 9, kvHeads: 3, queries: 1, keys, dim: 64, kvDtype });
  });

  test("attention sinks (gpt-oss): one logit per head in each softmax, once across split keys", () => {
    compare({ qHeads: 8, kvHeads: 2, queries: 1, keys: 2000, dim: 64, sinks: true, kvDtype: mx.Dtype.float16 });
    compare({ qHeads: 8, kvHeads: 2, queries: 1, keys: 5, dim: 64, sinks: true });
    compare({ qHeads: 8, kvHeads: 2, queries: 20, keys: 20, dim: 64, mask: "causal", sinks: true });
    compare({
      qHeads: 4,
      kvHeads: 2,
      queries: 12,
      keys: 12,
      dim: 32,
      mask: "causal",
      sinks: true,
      kvDtype: mx.Dtype.float16,
    });
    compare({ qHeads: 4, kvHeads: 2, queries: 1, keys: 13, dim: 32, sinks: true, kvDtype: mx.Dtype.float16 });
    compare({ batch: 2, qHeads: 4, kvHeads: 2, queries: 3, keys: 40, dim: 32, mask: "bool", sinks: true });
  });

  test("keys that are not rows (a strided head dimension) are copied a chunk at a time", () => {
    compare({ qHeads: 9, kvHeads: 3, queries: 1, keys: 300, dim: 64, stridedKeys: true });
    compare({ qHeads: 9, kvHeads: 3, queries: 30, keys: 300, dim: 64, mask: "causal", stridedKeys: true });
    compare({ qHeads: 9, kvHeads: 3, queries: 1, keys: 500, dim: 64, stridedKeys: true, kvDtype: mx.Dtype.float16 });
  });

  // A sequence in a batch (left-padded to the longest, its padding hidden by the batch's mask)
  // gets the bits it gets alone: its chunks and split ranges start at its first visible key.
  test.each([
    ["decode over keys split across the pool", { queries: 1, keys: 700 }],
    ["decode over a short cache, one part", { queries: 1, keys: 90 }],
    ["decode with sinks across split keys", { queries: 1, keys: 1100, sinks: true }],
    ["a speculative check's few causal rows", { queries: 3, keys: 600 }],
    ["a prefill chunk's many causal rows", { queries: 40, keys: 300 }],
  ] as const)("batch invariance: %s", (_, c) => {
    const sinks = "sinks" in c;
    for (const dtype of [mx.Dtype.float16, mx.Dtype.bfloat16, mx.Dtype.float32])
      mx.scope(() => {
        const [heads, kvHeads, dim] = [9, 3, 64];
        const normal = (shape: number[]) => mx.astype(mx.random.normal(shape), dtype);
        const padding = [0, 37, 301]; // row 1 is the sequence; the others are longer and shorter
        const longest = c.keys + 37;
        const lengths = padding.map((p) => longest - p);
        const q = normal([3, heads, c.queries, dim]);
        const k = normal([3, kvHeads, longest, dim]);
        const v = normal([3, kvHeads, longest, dim]);
        const sink = sinks ? mx.random.normal([heads]) : undefined;
        // Visible: past the row's padding and, causally, up to the query's own position.
        const visible: number[] = [];
        for (const p of padding)
          for (let i = 0; i < c.queries; i++)
            for (let j = 0; j < longest; j++) visible.push(j >= p && j <= i + longest - c.queries ? 1 : 0);
        const mask = mx.array(visible, [3, 1, c.queries, longest], mx.Dtype.bool);
        const batched = mx.fast.scaledDotProductAttention(q, k, v, dim ** -0.5, mask, sink);
        const row = (a: mx.MxArray, from = 0) => mx.slice(a, [1, 0, from, 0], [2, a.shape[1]!, a.shape[2]!, dim]);
        const alone = mx.fast.scaledDotProductAttention(
          row(q),
          row(k, padding[1]),
          row(v, padding[1]),
          dim ** -0.5,
          c.queries > 1 ? "causal" : undefined,
          sink,
        );
        expect(lengths[1]).toBe(c.keys);
        expect(relativeError(row(batched), alone)).toBe(0);
      });
  });

  // A speculative check's positions, causal over the cache, each get the bits of decoding that
  // position alone: greedy output with and without speculation stays the same, and so do its
  // logprobs, up to --num-draft's most (64 drafted, 65 checked), where many query heads share a
  // key-value head too (8 per head: a shared tile's 32 rows are 4 positions).
  test.each([mx.Dtype.float16, mx.Dtype.bfloat16, mx.Dtype.float32])(
    "a check's positions give decoding's bits (dtype %p)",
    (dtype) => {
      for (const [heads, kvHeads, positions] of [
        [9, 3, 4],
        [9, 3, 17],
        [9, 3, 65],
        [16, 2, 5],
      ] as const)
        mx.scope(() => {
          const dim = 64;
          for (const keys of [70, 700, 1300]) {
            const normal = (shape: number[]) => mx.astype(mx.random.normal(shape), dtype);
            const q = normal([1, heads, positions, dim]);
            const k = normal([1, kvHeads, keys, dim]);
            const v = normal([1, kvHeads, keys, dim]);
            const checked = mx.fast.scaledDotProductAttention(q, k, v, dim ** -0.5, "causal");
            for (let i = 0; i < positions; i++) {
              const seen = keys - positions + i + 1;
              const upTo = (a: mx.MxArray, n: number) => mx.slice(a, [0, 0, 0, 0], [1, a.shape[1]!, n, dim]);
              const one = (a: mx.MxArray) => mx.slice(a, [0, 0, i, 0], [1, heads, i + 1, dim]);
              const decoded = mx.fast.scaledDotProductAttention(one(q), upTo(k, seen), upTo(v, seen), dim ** -0.5);
              expect([heads, positions, keys, i, relativeError(one(checked), decoded)]).toEqual([
                heads,
                positions,
                keys,
                i,
                0,
              ]);
            }
          }
        });
    },
  );

  // A rotating cache (--max-kv-size) shows a position its sinks and its window, with hidden
  // columns between that come and go as the cache compacts (at other steps when speculating):
  // the same visible keys give the same bits however many columns lie hidden between them.
  test.each([mx.Dtype.float16, mx.Dtype.bfloat16, mx.Dtype.float32])(
    "a rotating cache's sinks and window: the same bits whatever lies hidden between (dtype %p)",
    (dtype) => {
      mx.scope(() => {
        const [heads, kvHeads, dim, sinks] = [9, 3, 64, 4];
        for (const window of [60, 900]) {
          const normal = (shape: number[]) => mx.astype(mx.random.normal(shape), dtype);
          const q = normal([1, heads, 1, dim]);
          const [k, v] = [normal([1, kvHeads, sinks + window, dim]), normal([1, kvHeads, sinks + window, dim])];
          const withHidden = (hidden: number) => {
            const part = (a: mx.MxArray, from: number, to: number) =>
              mx.slice(a, [0, 0, from, 0], [1, kvHeads, to, dim]);
            const spaced = (a: mx.MxArray) =>
              mx.concatenate([part(a, 0, sinks), normal([1, kvHeads, hidden, dim]), part(a, sinks, sinks + window)], 2);
            const visible = [...Array(sinks).fill(1), ...Array(hidden).fill(0), ...Array(window).fill(1)];
            const mask = mx.array(visible, [1, 1, 1, visible.length], mx.Dtype.bool);
            return mx.fast.scaledDotProductAttention(q, spaced(k), spaced(v), dim ** -0.5, mask);
          };
          const one = withHidden(1);
          for (const hidden of [2, 31, 256]) expect(relativeError(withHidden(hidden), one)).toBe(0);
        }
      });
    },
  );

  test("a lazy graph node like MLX's: the same result on a second stream", () => {
    mx.scope(() => {
      const { q, k, v, scale } = inputs({ qHeads: 9, kvHeads: 3, queries: 1, keys: 400, dim: 64 });
      const here = mx.fast.scaledDotProductAttention(q, k, v, scale);
      const side = mx.onStream(mx.newStream(), () => mx.fast.scaledDotProductAttention(q, k, v, scale));
      mx.evaluate(here, side);
      expect(relativeError(side, here)).toBe(0);
    });
  });
});
