// The quantized KV cache's step in one graph node (mx.fast.quantizedCacheWrite, used by
// KVCache.update for decode's usual step with keys per channel): the codes, scales and biases
// bit for bit those of quantize with sliceUpdate (groups of 32/64/128, 4 and 8 bits, several
// groups a row, float32/float16/bfloat16 values, a batch's rows, several rows a step), the tail
// grown as concatenate and astype grow it; written in place while the cache holds its buffers
// alone, copied first otherwise; and a model decoding through it gives the same logits and cache
// as the cache's composed step, for one sequence and a left-padded batch.
import { describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import { buildModel, freeCaches, parseConfig, Weights, type DecoderModel } from "../src/models";
import { KVCache, type KvQuantization } from "../src/models/cache";
import { greedySteps } from "./helpers/generate";
import { peakAbove } from "./helpers/memory";
import { tinyConfig, tinyWeights } from "./helpers/tiny-model";

const same = (a: mx.MxArray, b: mx.MxArray) =>
  mx.scope(() => {
    expect(a.shape).toEqual(b.shape);
    expect(a.dtype).toBe(b.dtype);
    return Boolean(mx.all(mx.equal(a, b)).item());
  });

const normal = (shape: number[], seed: number, dtype: mx.DtypeCode = mx.Dtype.float32) =>
  mx.astype(mx.random.normal(shape, mx.Dtype.float32, mx.random.key(seed)), dtype);

/**
 * Value rows with what rounds at an edge: the first 32 elements constant (a zero range), one far
 * outlier, and multiples of 1/8 (codes landing halfway between two steps).
 */
function awkward(shape: number[], seed: number, dtype: mx.DtypeCode): mx.MxArray {
  const x = mx.divide(mx.round(mx.multiply(normal(shape, seed), 24)), 8);
  const position = mx.arange(0, shape.at(-1)!);
  const constant = mx.where(mx.less(position, 32), mx.scalar(0.75), x);
  return mx.astype(mx.where(mx.equal(position, shape.at(-1)! - 3), mx.scalar(-40), constant), dtype);
}

/** A cache's value buffers of `columns` positions [B, H, columns, ·], filled from random rows. */
function buffers(batch: number, heads: number, columns: number, dim: number, q: KvQuantization, dtype: mx.DtypeCode) {
  const parts = mx.quantize(normal([batch, heads, columns, dim], 7, dtype), q);
  return [parts.weight, parts.scales, parts.biases!] as const;
}

describe("quantizedCacheWrite against quantize and sliceUpdate", () => {
  const cases: [bits: number, groupSize: number, dim: number][] = [
    [4, 32, 96],
    [8, 32, 64],
    [4, 64, 64],
    [8, 64, 192],
    [4, 128, 128],
    [8, 128, 256],
  ];
  for (const [bits, groupSize, dim] of cases)
    for (const dtype of [mx.Dtype.float32, mx.Dtype.float16, mx.Dtype.bfloat16])
      test(`${bits}-bit, groups of ${groupSize}, head size ${dim}, ${mx.dtypeName(dtype)}: bit for bit`, () => {
        mx.scope(() => {
          const q = { bits, groupSize };
          const [batch, heads, columns] = [2, 3, 40];
          for (const [at, length] of [
            [0, 1],
            [17, 1],
            [20, 5],
            [39, 1],
          ] as const) {
            const values = awkward([batch, heads, length, dim], at + length, dtype);
            const held = buffers(batch, heads, columns, dim, q, dtype);
            mx.evaluate(...held);
            // The reference first: the fused write may take the buffers over.
            const parts = mx.quantize(values, q);
            const expected = [parts.weight, parts.scales, parts.biases!].map((part, i) => {
              const written = mx.sliceUpdate(held[i]!, part, [0, 0, at], [batch, heads, at + length]);
              return mx.slice(written, [0, 0, 0], [batch, heads, at + length]);
            });
            mx.evaluate(...expected);
            const keys = normal([batch, heads, length, dim], 99 + at, dtype);
            const tail = normal([batch, heads, 3, dim], 98, mx.Dtype.float16);
            // Keys per channel: codes of two groups of positions, a scale and bias per channel and group.
            const keyBuffers = [
              mx.quantize(normal([batch, heads, 2 * groupSize, dim], 97), q).weight,
              normal([batch, heads, 2, dim], 96, dtype),
              normal([batch, heads, 2, dim], 95, dtype),
            ] as const;
            const step = mx.fast.quantizedCacheWrite(values, held, at, q, {
              keys,
              tail,
              buffers: keyBuffers,
              coded: groupSize,
            });
            for (let i = 0; i < 3; i++) {
              expect(same(step.values[i]!, expected[i]!)).toBe(true);
              const part = step.buffers[i]!;
              expect(part.shape).toEqual(held[i]!.shape);
              expect(same(mx.slice(part, [0, 0, 0], [batch, heads, at + length]), expected[i]!)).toBe(true);
            }
            const [codes, scales, biases, grown] = step.keys!;
            expect(same(codes, mx.slice(keyBuffers[0], [0, 0, 0], [batch, heads, groupSize]))).toBe(true);
            expect(same(scales, mx.slice(keyBuffers[1], [0, 0, 0], [batch, heads, 1]))).toBe(true);
            expect(same(biases, mx.slice(keyBuffers[2], [0, 0, 0], [batch, heads, 1]))).toBe(true);
            expect(same(grown, mx.concatenate([tail, mx.astype(keys, mx.Dtype.float16)], 2))).toBe(true);
          }
        });
      });

  test("without keys: the values alone", () => {
    mx.scope(() => {
      const q = { bits: 4, groupSize: 64 };
      const held = buffers(1, 2, 8, 64, q, mx.Dtype.float32);
      const values = normal([1, 2, 2, 64], 3);
      const parts = mx.quantize(values, q);
      const expected = mx.sliceUpdate(held[0], parts.weight, [0, 0, 4], [1, 2, 6]);
      mx.evaluate(expected);
      const step = mx.fast.quantizedCacheWrite(values, held, 4, q);
      expect(step.keys).toBeUndefined();
      expect(same(step.buffers[0], expected)).toBe(true);
      expect(step.values[0].shape).toEqual([1, 2, 6, 8]);
    });
  });

  test("no room for the new rows, or keys unlike the values: refused", () => {
    mx.scope(() => {
      const q = { bits: 8, groupSize: 64 };
      const held = buffers(1, 2, 4, 64, q, mx.Dtype.float32);
      expect(() => mx.fast.quantizedCacheWrite(normal([1, 2, 2, 64], 1), held, 3, q)).toThrow();
      const tail = normal([1, 2, 1, 64], 2, mx.Dtype.float16);
      expect(() =>
        mx.fast.quantizedCacheWrite(normal([1, 2, 1, 64], 1), held, 0, q, {
          keys: normal([1, 2, 2, 64], 3),
          tail,
          buffers: held,
          coded: 0,
        }),
      ).toThrow();
    });
  });
});

describe("the cache's buffers", () => {
  const q = { bits: 4, groupSize: 64 };

  test("written in place while the cache holds the only reference: no copy of the cache a step", () => {
    const cache = new KVCache(q);
    const [heads, dim] = [3, 64];
    const step = (length: number, seed: number) =>
      mx.scope(() => {
        const keys = normal([1, heads, length, dim], seed);
        const [k, v] = cache.update(keys, normal([1, heads, length, dim], seed + 1));
        mx.evaluate(...k, ...v);
      });
    // A long prefill (value buffers of 8,192 columns), then decode steps one position each.
    step(8000, 1);
    const bytes = cache.values!.reduce((sum, t) => sum + t.nbytes, 0);
    expect(cache.values![0]!.shape[2]).toBe(8192);
    for (let i = 0; i < 8; i++) {
      // A copy of the value buffers would add their size to the step's peak.
      expect(peakAbove(() => step(1, 10 + i))).toBeLessThan(bytes / 16);
    }
    expect(cache.offset).toBe(8008);
    cache.free();
  });

  test("copied first where something else holds them: what it holds stays as it was", () => {
    mx.scope(() => {
      const held = buffers(1, 2, 8, 64, q, mx.Dtype.float32);
      mx.evaluate(...held);
      const before = held.map((t) => mx.add(t, 0));
      mx.evaluate(...before);
      const step = mx.fast.quantizedCacheWrite(normal([1, 2, 1, 64], 5), held, 3, q);
      mx.evaluate(...step.buffers);
      for (let i = 0; i < 3; i++) {
        expect(same(held[i]!, before[i]!)).toBe(true);
        const outside = (t: mx.MxArray) => mx.slice(t, [0, 0, 4], [1, 2, 8]);
        expect(same(outside(step.buffers[i]!), outside(held[i]!))).toBe(true);
      }
    });
  });
});

describe("a model decoding through it", () => {
  let model: DecoderModel;
  const tailTakes = Reflect.get(KVCache.prototype, "tailTakes") as (length: number, dtype: mx.DtypeCode) => boolean;

  /** Runs `f` with every cache taking the composed step (no fused write). */
  function composed<T>(f: () => T): T {
    Reflect.set(KVCache.prototype, "tailTakes", () => false);
    try {
      return f();
    } finally {
      Reflect.set(KVCache.prototype, "tailTakes", tailTakes);
    }
  }

  /** Logits of `steps` greedy steps after `prompts` (a left-padded batch when several), and the last layer's state. */
  function decode(prompts: number[][], steps: number, kv: KvQuantization) {
    const { logits, caches } = greedySteps(model, prompts, steps, kv);
    const last = caches.at(-1)!;
    const state = last.state.map((t) => mx.keep(mx.contiguous(t)));
    mx.evaluate(...state);
    freeCaches(caches);
    return { logits, state };
  }

  for (const kv of [
    { bits: 4, groupSize: 32 },
    { bits: 8, groupSize: 64 },
  ])
    for (const prompts of [
      [[5, 17, 200, 3, 99, 42, 7]],
      [
        [5, 17, 200, 3, 99, 42, 7],
        [12, 4],
        [150, 8, 1, 77, 23, 9, 100, 101, 102, 103, 104, 2, 40, 41],
      ],
    ])
      test(`${kv.bits}-bit, ${prompts.length > 1 ? "a left-padded batch" : "one sequence"}: the same logits and cache as the composed step, across a group's filling`, () => {
        model ??= buildModel(
          new Weights(tinyWeights({ headDim: 64, seed: 3 }), parseConfig(tinyConfig({ headDim: 64, seed: 3 }))),
        );
        let fused = 0;
        Reflect.set(KVCache.prototype, "tailTakes", function (this: KVCache, length: number, dtype: mx.DtypeCode) {
          const takes = tailTakes.call(this, length, dtype);
          if (takes) fused++;
          return takes;
        });
        const ours = (() => {
          try {
            return decode(prompts, 40, kv);
          } finally {
            Reflect.set(KVCache.prototype, "tailTakes", tailTakes);
          }
        })();
        expect(fused).toBeGreaterThan(0);
        const theirs = composed(() => decode(prompts, 40, kv));
        expect(ours.state.length).toBe(theirs.state.length);
        ours.state.forEach((t, i) => expect(same(t, theirs.state[i]!)).toBe(true));
        ours.logits.forEach((l, i) => expect(same(l, theirs.logits[i]!)).toBe(true));
        for (const t of [...ours.logits, ...ours.state, ...theirs.logits, ...theirs.state]) t.free();
      });
});
