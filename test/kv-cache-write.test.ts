// The float KV cache written inside our fused attention input (KVCache.roomFor, and
// mx.fast.attentionInput given the cache's buffers): the same logits and the same cache contents
// as the cache's own sliceUpdate writes, for one sequence and a left-padded batch, float32
// models (float16 caches) and bfloat16 ones; a quantized cache's step likewise
// (mx.fast.attentionInputQuantized, against the cache's own quantizedCacheWrite); the rows written in place while the cache holds the
// only reference to its buffers, into a copy when something else holds them; and the engine's
// decode steps (one sequence: the fused write; serving's batch: the cache's own writes) copy no
// layer's buffers, which a second reference held to them shows.
import { afterEach, describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import { BatchGenerator } from "../src/engine/batch";
import { defaultSampling } from "../src/engine/sampling";
import { buildModel, forward, freeCaches, makeCaches, parseConfig, Weights, type DecoderModel } from "../src/models";
import { KVCache } from "../src/models/cache";
import { snapshotRow } from "../src/engine/prefix-cache";
import { RotatingKVCache } from "../src/models/rotating-cache";
import { SlidingKVCache } from "../src/models/sliding-cache";
import { writesFused } from "../src/models/llama";
import { greedySteps } from "./helpers/generate";
import { peakAbove } from "./helpers/memory";
import { tinyConfig, tinyWeights } from "./helpers/tiny-model";

/** A tiny model whose attention input runs fused (4-bit projections), its float weights in `dtype`. */
function tinyModel(dtype: "float32" | "bfloat16"): DecoderModel {
  const o = { headDim: 64, seed: 5, quantize: { groupSize: 32, bits: 4 } };
  const weights = tinyWeights(o);
  if (dtype === "bfloat16")
    for (const [name, t] of weights)
      if (t.dtype === mx.Dtype.float32) weights.set(name, mx.keep(mx.astype(t, mx.Dtype.bfloat16)));
  return buildModel(new Weights(weights, parseConfig(tinyConfig(o))));
}

const roomFor = KVCache.prototype.roomFor;
afterEach(() => {
  KVCache.prototype.roomFor = roomFor;
});

/** Runs `f` with every cache writing its new positions itself (sliceUpdate), as before the fused write. */
function withOwnWrites<T>(f: () => T): T {
  KVCache.prototype.roomFor = () => undefined;
  try {
    return f();
  } finally {
    KVCache.prototype.roomFor = roomFor;
  }
}

const ids = (rows: number[][]) => mx.array(Int32Array.from(rows.flat()), [rows.length, rows[0]!.length]);

/**
 * Logits of a prefill of `prompts` (one sequence each, joined into a left-padded batch when
 * several) and `steps` greedy decode steps, and the first layer's valid keys and values after.
 */
function decode(model: DecoderModel, prompts: number[][], steps: number) {
  const { logits, caches } = greedySteps(model, prompts, steps);
  const [layer] = caches;
  const valid = (t: mx.MxArray) => mx.keep(mx.slice(t, [0, 0, 0], [t.shape[0]!, t.shape[1]!, layer!.offset]));
  const held = { keys: valid(layer!.keys![0]!), values: valid(layer!.values![0]!), dtype: layer!.keys![0]!.dtype };
  mx.evaluate(held.keys, held.values);
  freeCaches(caches);
  return { logits, held };
}

const same = (a: mx.MxArray, b: mx.MxArray) => mx.scope(() => mx.max(mx.abs(mx.subtract(a, b))).item());

describe("the float KV cache written inside the fused attention input", () => {
  for (const dtype of ["float32", "bfloat16"] as const)
    for (const prompts of [
      [[5, 17, 200, 3, 99, 42, 7]],
      [
        [5, 17, 200, 3, 99, 42, 7],
        [12, 4],
      ],
    ])
      test(`${dtype}, ${prompts.length > 1 ? "a left-padded batch" : "one sequence"}: identical logits and cache`, () => {
        const model = tinyModel(dtype);
        let written = 0;
        KVCache.prototype.roomFor = function (this: KVCache, rows) {
          const room = roomFor.call(this, rows);
          if (room) written++;
          return room;
        };
        const ours = decode(model, prompts, 12);
        KVCache.prototype.roomFor = roomFor;
        expect(written).toBeGreaterThan(0);
        const theirs = withOwnWrites(() => decode(model, prompts, 12));
        expect(ours.held.dtype).toBe(dtype === "float32" ? mx.Dtype.float16 : mx.Dtype.bfloat16);
        expect(ours.held.dtype).toBe(theirs.held.dtype);
        expect(same(ours.held.keys, theirs.held.keys)).toBe(0);
        expect(same(ours.held.values, theirs.held.values)).toBe(0);
        for (const [i, l] of ours.logits.entries()) expect(same(l, theirs.logits[i]!)).toBe(0);
      });
});

describe("the quantized KV cache's step written inside the fused attention input", () => {
  // Past 64 positions a group of keys fills (a step through update), then steps join the tail again.
  const prompts = [
    [[5, 17, 200, 3, 99, 42, 7]],
    [
      [5, 17, 200, 3, 99, 42, 7],
      [12, 4],
    ],
  ];
  for (const bits of [8, 4])
    for (const dtype of ["float32", "bfloat16"] as const)
      for (const rows of prompts)
        test(`${bits}-bit, ${dtype}, ${rows.length > 1 ? "a left-padded batch" : "one sequence"}: identical logits and cache`, () => {
          const model = tinyModel(dtype);
          const kv = { bits, groupSize: 64 };
          let written = 0;
          KVCache.prototype.roomFor = function (this: KVCache, r) {
            const room = roomFor.call(this, r);
            if (room && "quantization" in room) written++;
            return room;
          };
          const ours = greedySteps(model, rows, 70, kv);
          KVCache.prototype.roomFor = roomFor;
          const theirs = withOwnWrites(() => greedySteps(model, rows, 70, kv));
          expect(written).toBeGreaterThan(60 * model.numLayers);
          for (const [i, l] of ours.logits.entries()) expect(same(l, theirs.logits[i]!)).toBe(0);
          for (const [layer, cache] of ours.caches.entries()) {
            const other = theirs.caches[layer]!;
            expect(cache.offset).toBe(other.offset);
            expect(cache.keys!.length).toBe(4);
            mx.evaluate(...cache.state, ...other.state);
            for (const [i, t] of cache.state.entries()) {
              expect(t.shape).toEqual(other.state[i]!.shape);
              expect(Buffer.compare(t.bytes(), other.state[i]!.bytes())).toBe(0);
            }
          }
          freeCaches(ours.caches);
          freeCaches(theirs.caches);
        });
});

describe("a rotating cache written inside the fused attention input", () => {
  const rotatingRoom = RotatingKVCache.prototype.roomFor;
  const size = 20;
  /** Each step's logits of `prompt` and 40 greedy steps on a rotating cache of `size` (compacted every 20 steps). */
  const rotate = (model: DecoderModel, prompt: number[]) => {
    const caches = makeCaches(model, { maxKvSize: size });
    const logits: mx.MxArray[] = [];
    let input = [prompt];
    for (let step = 0; step <= 40; step++) {
      const out = mx.keep(mx.scope(() => forward(model, ids(input), caches)));
      mx.evaluate(out);
      logits.push(out);
      const last = mx.scope(() =>
        mx.argmax(mx.slice(out, [0, input[0]!.length - 1, 0], [1, input[0]!.length, out.shape[2]!]), -1).item(),
      );
      input = [[last]];
    }
    const cache = caches[0] as RotatingKVCache;
    const held = { offset: cache.offset, dropped: [...cache.dropped], keys: mx.keep(mx.contiguous(cache.keys![0]!)) };
    mx.evaluate(held.keys);
    freeCaches(caches);
    return { logits, held };
  };

  for (const dtype of ["float32", "bfloat16"] as const)
    test(`${dtype}: past the size and through compactions, the logits and the cache of its own writes`, () => {
      const model = tinyModel(dtype);
      let written = 0;
      RotatingKVCache.prototype.roomFor = function (this: RotatingKVCache, rows) {
        const room = rotatingRoom.call(this, rows);
        if (room) written++;
        return room;
      };
      const ours = rotate(model, [5, 17, 200, 3, 99, 42, 7]);
      RotatingKVCache.prototype.roomFor = () => undefined;
      const theirs = rotate(model, [5, 17, 200, 3, 99, 42, 7]);
      RotatingKVCache.prototype.roomFor = rotatingRoom;
      expect(written).toBeGreaterThanOrEqual(40 * model.numLayers);
      // 7 + 40 positions through a cache of 20: positions were dropped, the rows compacted.
      expect(ours.held.dropped[0]).toBeGreaterThan(0);
      expect(ours.held.offset).toBe(theirs.held.offset);
      expect(ours.held.dropped).toEqual(theirs.held.dropped);
      expect(Buffer.compare(ours.held.keys.bytes(), theirs.held.keys.bytes())).toBe(0);
      for (const [i, l] of ours.logits.entries()) expect(same(l, theirs.logits[i]!)).toBe(0);
    });

  test("a quantized one (keys per row) keeps its own writes", () => {
    const cache = RotatingKVCache.forSequence(size, { bits: 8, groupSize: 64 });
    expect(cache.roomFor({ batch: 1, heads: 2, length: 1, dim: 64, activations: mx.Dtype.float32 })).toBeUndefined();
  });
});

describe("the cache's buffers", () => {
  const shape = { heads: 2, kvHeads: 2, headDim: 64 };
  const dim = 128;
  const weights = () => {
    const q = mx.quantize(
      mx.multiply(mx.random.normal([(shape.heads + 2 * shape.kvHeads) * shape.headDim, dim]), 0.05),
      {
        groupSize: 32,
        bits: 4,
      },
    );
    return {
      norm: mx.keep(mx.ones([dim])),
      qkv: {
        weight: mx.keep(q.weight),
        scales: mx.keep(q.scales),
        biases: mx.keep(q.biases!),
        quant: { groupSize: 32, bits: 4 },
      },
    };
  };
  const rotation = { dims: 64, traditional: false, base: 10000, scale: 1 };
  /** Two new rows of a random x written at column 3 of `room`'s buffers (the fused attention input). */
  const writeTwoRows = (w: ReturnType<typeof weights>, room: mx.fast.CacheRows) =>
    mx.fast.attentionInput(mx.random.normal([1, 2, dim]), w.norm, 1e-5, w.qkv, shape, { ...rotation, offset: 3 }, room);

  test("written in place while the cache holds the only reference: no copy of the cache a step", () => {
    const { norm, qkv } = weights();
    const cache = new KVCache();
    const columns = 4096;
    const rows = {
      batch: 1,
      heads: shape.kvHeads,
      length: columns - 16,
      dim: shape.headDim,
      activations: mx.Dtype.float32,
    };
    // A long prefill first (a buffer of 4,096 columns), then decode steps one position each.
    const step = (length: number) =>
      mx.scope(() => {
        const x = mx.random.normal([1, length, dim]);
        const room = cache.roomFor({ ...rows, length }) as mx.fast.CacheRows;
        const [queries, keys, values, validKeys, validValues] = mx.fast.attentionInput(
          x,
          norm,
          1e-5,
          qkv,
          shape,
          { ...rotation, offset: cache.offset },
          room,
        );
        cache.wrote(keys, values, length);
        mx.evaluate(mx.fast.scaledDotProductAttention(queries, validKeys, validValues, 0.125, undefined));
      });
    step(rows.length);
    const buffer = cache.keys![0]!.nbytes;
    expect(cache.keys![0]!.shape[2]).toBe(columns);
    // A copy of either buffer would add its size to the step's peak.
    for (let i = 0; i < 8; i++) {
      expect(peakAbove(() => step(1))).toBeLessThan(buffer / 16);
    }
    expect(cache.offset).toBe(columns - 8);
    cache.free();
  });

  test("copied first where something else holds them: what it holds stays as it was", () => {
    const { norm, qkv } = weights();
    const held = mx.keep(mx.random.normal([1, shape.kvHeads, 8, shape.headDim]));
    const heldValues = mx.keep(mx.random.normal([1, shape.kvHeads, 8, shape.headDim]));
    mx.evaluate(held, heldValues);
    const before = mx.keep(mx.add(held, 0));
    mx.scope(() => {
      const [, keys, values, validKeys] = writeTwoRows({ norm, qkv }, { keys: held, values: heldValues, at: 3 });
      mx.evaluate(keys, values, validKeys);
      expect(same(held, before)).toBe(0);
      expect(validKeys.shape).toEqual([1, shape.kvHeads, 5, shape.headDim]);
      expect(
        same(mx.slice(keys, [0, 0, 0], [1, shape.kvHeads, 3]), mx.slice(held, [0, 0, 0], [1, shape.kvHeads, 3])),
      ).toBe(0);
      expect(
        same(mx.slice(keys, [0, 0, 5], [1, shape.kvHeads, 8]), mx.slice(held, [0, 0, 5], [1, shape.kvHeads, 8])),
      ).toBe(0);
    });
  });

  test("buffers the cache owns are written in place though something still holds them (work queued before)", () => {
    const { norm, qkv } = weights();
    const held = mx.keep(mx.zeros([1, shape.kvHeads, 8, shape.headDim]));
    const heldValues = mx.keep(mx.zeros([1, shape.kvHeads, 8, shape.headDim]));
    mx.evaluate(held, heldValues);
    // A second handle on the keys buffer, as a step queued before holds it until it has run.
    const earlier = mx.keep(mx.retain(held));
    mx.scope(() => {
      const [, keys] = writeTwoRows({ norm, qkv }, { keys: held, values: heldValues, at: 3, owned: true });
      mx.evaluate(keys);
      // The new rows landed in the very buffer the other handle sees.
      expect(same(earlier, keys)).toBe(0);
      expect(
        same(mx.slice(earlier, [0, 0, 3], [1, shape.kvHeads, 5]), mx.zeros([1, shape.kvHeads, 2, shape.headDim])),
      ).toBeGreaterThan(0);
    });
    for (const t of [held, heldValues, earlier]) t.free();
  });

  test("a cache owns the buffers it grew, not a seeded prefix's, nor ones a snapshot shares", () => {
    const rows = { batch: 1, heads: 1, length: 1, dim: shape.headDim, activations: mx.Dtype.float32 };
    const cache = new KVCache();
    expect(cache.roomFor(rows)!.owned).toBe(true);
    const stored = [mx.keep(mx.zeros([1, 1, 300, shape.headDim], mx.Dtype.float16))];
    cache.seed(stored, [mx.keep(mx.zeros([1, 1, 300, shape.headDim], mx.Dtype.float16))], 10);
    expect(cache.roomFor(rows)!.owned).toBe(false);
    cache.offset = 300;
    expect(cache.roomFor(rows)!.owned).toBe(true); // full: grown into buffers of its own
    cache.offset = 12;
    // One head: the row's slice is contiguous, so the snapshot is a view of the cache's buffer.
    const snapshot = snapshotRow([cache], 0, 0, 12);
    expect(cache.roomFor(rows)!.owned).toBe(false);
    for (const t of [...snapshot.keys, ...snapshot.values].flat()) t.free();
    for (const t of stored) t.free();
    cache.free();
  });

  for (const kernels of [false, true])
    test(`a quantized cache's step ${kernels ? "on" : "off"} our kernels: attentionInput then quantizedCacheWrite, and attention on the whole buffers as on their views`, () => {
      const { norm, qkv } = weights();
      const q = { bits: 8, groupSize: 64 };
      const { kvHeads, headDim } = shape;
      const previous = mx.useCpuKernels(kernels);
      try {
        mx.scope(() => {
          // Room for 8 positions, 3 held (all in the keys' float tail), 2 new: 5 after the step.
          const x = mx.random.normal([1, 2, dim]);
          const values = mx.quantize(mx.random.normal([1, kvHeads, 8, headDim]), q);
          const keys = mx.quantize(mx.random.normal([1, kvHeads, 64, headDim]), q);
          const room: mx.fast.QuantizedCacheRows = {
            values: [values.weight, values.scales, values.biases!],
            keys: {
              tail: mx.astype(mx.random.normal([1, kvHeads, 3, headDim]), mx.Dtype.float16),
              buffers: [keys.weight, mx.zeros([1, kvHeads, 1, headDim]), mx.zeros([1, kvHeads, 1, headDim])],
              coded: 0,
            },
            at: 3,
            quantization: q,
          };
          const at = { ...rotation, offset: 3 };
          const [queries, newKeys, newValues] = mx.fast.attentionInput(x, norm, 1e-5, qkv, shape, at);
          const step = mx.fast.quantizedCacheWrite(newValues, room.values, 3, q, { keys: newKeys, ...room.keys });
          const ours = mx.fast.attentionInputQuantized(x, norm, 1e-5, qkv, shape, at, room);
          const attention = (k: mx.fast.ChannelKeyParts, v: mx.fast.QuantizedParts, length?: number) =>
            mx.fast.quantizedScaledDotProductAttention(queries, k, v, 0.125, q, "causal", undefined, length);
          const expected = [queries, ...step.buffers, step.keys![3], attention(step.keys!, step.values)];
          const whole = [...room.keys.buffers, ours.tail] as const;
          const got = [ours.queries, ...ours.buffers, ours.tail, attention(whole, ours.buffers, 5)];
          mx.evaluate(...expected, ...got);
          for (const [i, t] of got.entries()) {
            expect(t.shape).toEqual(expected[i]!.shape);
            expect(Buffer.compare(mx.contiguous(t).bytes(), mx.contiguous(expected[i]!).bytes())).toBe(0);
          }
          expect(ours.tail.shape).toEqual([1, kvHeads, 5, headDim]);
        });
      } finally {
        mx.useCpuKernels(previous);
      }
    });

  test("no room for the new rows: refused", () => {
    const small = mx.keep(mx.zeros([1, shape.kvHeads, 4, shape.headDim]));
    expect(() => mx.scope(() => writeTwoRows(weights(), { keys: small, values: small, at: 3 }))).toThrow();
  });
});

describe("growth", () => {
  /** The columns a cache holds after `prefill` positions and then `steps` more one at a time, as decode writes them. */
  const columnsAfter = (cache: KVCache, prefill: number, steps: number): number[] => {
    const held: number[] = [];
    const write = (length: number) =>
      mx.scope(() => {
        const rows = mx.random.normal([1, 2, length, 8]);
        mx.evaluate(...cache.update(rows, rows).flat());
        held.push(cache.keys![0]!.shape[2]!);
      });
    write(prefill);
    for (let i = 0; i < steps; i++) write(1);
    cache.free();
    return [...new Set(held)];
  };

  test("an unbounded cache grows by a quarter of what it holds, in whole steps, so its copies get rarer as the context grows", () => {
    // 2,000 positions fill 2,048 columns; decode then grows them by 512, then by 768 (640 in steps of 256).
    expect(columnsAfter(new KVCache(), 2000, 600)).toEqual([2048, 2560, 3328]);
    // Short contexts as before: a step at a time.
    expect(columnsAfter(new KVCache(), 10, 600)).toEqual([256, 512, 768]);
  });

  test("a sliding window and a bounded cache still grow a step at a time", () => {
    expect(columnsAfter(new SlidingKVCache(4096), 2000, 300)).toEqual([2048, 2304]);
    expect(columnsAfter(RotatingKVCache.forSequence(4096), 2000, 300)).toEqual([2048, 2304]);
  });
});

describe("decode steps of the engine's token loop", () => {
  /**
   * The highest active memory over `steps` decode steps of `rows` left-padded sequences of
   * `prompt`.. positions, above what was active before them: the engine's token loop queues the
   * next step before it reads the last, as `mlx serve` runs it.
   */
  function decodePeak(model: DecoderModel, rows: number, prompt: number, steps: number): number {
    const generator = new BatchGenerator(model, { maxBatch: rows, prefillChunk: 512 });
    for (let b = 0; b < rows; b++)
      generator.add(String(b), {
        promptIds: Array.from({ length: prompt + 3 * b }, (_, i) => 3 + ((i * 7 + b) % 290)),
        sampling: defaultSampling,
        maxTokens: steps + 8,
      });
    while (generator.running < rows) generator.step();
    generator.step();
    const peak = peakAbove(() => {
      for (let i = 0; i < steps; i++) expect(generator.step().length).toBe(rows);
    });
    generator.dispose();
    return peak;
  }

  // One sequence (the fused write) and serving's batch of 8 (the cache's own writes). A layer's
  // key buffer alone is rows × 2 heads × ≥ the longest prompt's columns × 64 × 2 bytes: 113 KB, 452 KB.
  for (const { rows, prompt } of [
    { rows: 1, prompt: 440 },
    { rows: 8, prompt: 200 },
  ]) {
    const buffer = rows * 2 * (prompt + 3 * (rows - 1)) * 64 * 2;

    test(`${rows} row(s): the new rows written into the cache in place, no copy of a layer's buffers`, () => {
      expect(decodePeak(tinyModel("float32"), rows, prompt, 6)).toBeLessThan(buffer / 2);
    });

    test(`${rows} row(s): a buffer something else holds is copied, and the bound above sees it`, () => {
      const model = tinyModel("float32");
      const held: mx.MxArray[] = [];
      // A second reference to the keys buffer while each step runs (kept past the step's scope),
      // lent as the cache's own users lend its buffers (lendBuffers).
      const hold = (keys?: mx.MxArray) => keys && held.push(mx.keep(mx.retain(keys)));
      const update = KVCache.prototype.update;
      KVCache.prototype.roomFor = function (this: KVCache, r) {
        const room = roomFor.call(this, r);
        if (r.length === 1 && room && !("quantization" in room)) {
          hold(room.keys);
          this.lendBuffers();
          return { ...room, owned: false };
        }
        return room;
      };
      KVCache.prototype.update = function (this: KVCache, keys, values) {
        if (keys.shape[2] === 1) hold(this.keys?.[0]);
        return update.call(this, keys, values);
      };
      try {
        expect(decodePeak(model, rows, prompt, 6)).toBeGreaterThan(buffer);
      } finally {
        KVCache.prototype.update = update;
        for (const t of held) t.free();
      }
    });
  }
});

describe("writesFused", () => {
  test("a prefill chunk keeps the cache's own writes; a decode step writes fused, one sequence's or a batch's", () => {
    const model = tinyModel("float32");
    let fused = 0;
    KVCache.prototype.roomFor = function (this: KVCache, r) {
      const room = roomFor.call(this, r);
      if (room) fused++;
      return room;
    };
    const caches = makeCaches(model);
    const prompt = Array.from({ length: 17 }, (_, i) => i + 3);
    mx.scope(() => mx.evaluate(forward(model, ids([prompt]), caches)));
    expect(fused).toBe(0);
    mx.scope(() => mx.evaluate(forward(model, ids([[7]]), caches)));
    expect(fused).toBe(model.config.numHiddenLayers);
    freeCaches(caches);
    // Two rows: the prefill by the cache's writes, the decode step fused.
    const batch = makeCaches(model);
    mx.scope(() => mx.evaluate(forward(model, ids([prompt, prompt.map((t) => t + 1)]), batch)));
    expect(fused).toBe(model.config.numHiddenLayers);
    mx.scope(() => mx.evaluate(forward(model, ids([[7], [8]]), batch)));
    expect(fused).toBe(2 * model.config.numHiddenLayers);
    freeCaches(batch);
    expect([writesFused(1), writesFused(16), writesFused(17)]).toEqual([true, true, false]);
  });
});
