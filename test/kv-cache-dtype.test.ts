// The float KV cache's dtype (src/models/cache-dtype.ts): a float32 model on our CPU kernels
// keeps keys and values in float16, in every cache (one sequence, a batch, the rotating cache, a
// prefix cache hit, keys stored in float32 and seeded back); MLX_KV_DTYPE=float32 and MLX's own
// kernels keep float32; the answers stay the float32 cache's.
import { afterEach, beforeAll, describe, expect, test } from "bun:test";
import { BatchGenerator, generateTokens } from "../src/engine/batch";
import { PrefixCache } from "../src/engine/prefix-cache";
import { defaultSampling } from "../src/engine/sampling";
import * as mx from "../src/mlx";
import { buildModel, forward, freeCaches, makeCaches, parseConfig, Weights, type DecoderModel } from "../src/models";
import { BatchKVCache } from "../src/models/batch-cache";
import { KVCache } from "../src/models/cache";
import { withKernels } from "./helpers/parity";
import { decodeAlone } from "./helpers/generate";
import { tinyConfig, tinyWeights } from "./helpers/tiny-model";

let model: DecoderModel;
beforeAll(() => {
  const o = { headDim: 64, seed: 3 };
  model = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
});
afterEach(() => {
  delete process.env.MLX_KV_DTYPE;
});

const prompts = [[5, 17, 200, 3, 99, 42, 7], [12, 4], [150, 8, 1, 77, 23, 9, 100, 101, 102, 103, 104, 2], [33]];
const { float16, float32 } = mx.Dtype;

function greedy(prompt: number[], maxTokens: number): number[] {
  return [...generateTokens(model, { promptIds: prompt, sampling: defaultSampling, maxTokens })].map((e) => e.token);
}

/** Fresh caches after a prefill of `length` tokens (ids 1 .. length). */
function prefilled(length: number, options: Parameters<typeof makeCaches>[1] = {}): ReturnType<typeof makeCaches> {
  const caches = makeCaches(model, options);
  const ids = mx.array(
    Int32Array.from({ length }, (_, i) => i + 1),
    [1, length],
  );
  mx.scope(() => forward(model, ids, caches));
  ids.free();
  return caches;
}

/** The dtype the first layer's cache holds after a prefill of `length` tokens. */
function heldDtype(options: Parameters<typeof makeCaches>[1] = {}, length = 5): mx.DtypeCode {
  const caches = prefilled(length, options);
  const dtype = caches[0]!.keys![0]!.dtype;
  expect(caches[0]!.values![0]!.dtype).toBe(dtype);
  freeCaches(caches);
  return dtype;
}

describe("the float KV cache's dtype", () => {
  test("float16 for a float32 model on our kernels; float32 with MLX_KV_DTYPE=float32 or MLX's kernels", () => {
    expect(heldDtype()).toBe(float16);
    expect(heldDtype({ maxKvSize: 8 }, 12)).toBe(float16); // the rotating cache, past its size
    expect(withKernels(false, () => heldDtype())).toBe(float32);
    process.env.MLX_KV_DTYPE = "float32";
    expect(heldDtype()).toBe(float32);
    process.env.MLX_KV_DTYPE = "half";
    expect(() => heldDtype()).toThrow("MLX_KV_DTYPE must be float16 or float32, not 'half'");
  });

  test("greedy output and logits stay the float32 cache's", () => {
    const logits = () => {
      const caches = makeCaches(model);
      const sequence = Array.from({ length: 40 }, (_, i) => (i * 37) % 300);
      const out = mx.keep(mx.scope(() => forward(model, mx.array(Int32Array.from(sequence), [1, 40]), caches)));
      freeCaches(caches);
      return out;
    };
    const half = prompts.map((p) => greedy(p, 24));
    const halfLogits = logits();
    process.env.MLX_KV_DTYPE = "float32";
    expect(prompts.map((p) => greedy(p, 24))).toEqual(half);
    const fullLogits = logits();
    const [diff, size] = mx.scope(() => [
      mx.max(mx.abs(mx.subtract(halfLogits, fullLogits))).item(),
      mx.mean(mx.abs(fullLogits)).item(),
    ]);
    expect(diff).toBeGreaterThan(0); // it really is another cache
    expect(diff).toBeLessThan(1e-2 * size);
    for (const t of [halfLogits, fullLogits]) t.free();
  });

  test("batched: sequences joining and leaving give what each gives alone; the batch cache holds float16", () => {
    const gen = new BatchGenerator(model, { maxBatch: 8, prefillChunk: 3 });
    const out = prompts.map(() => [] as number[]);
    prompts.forEach((prompt, i) =>
      gen.add(String(i), { promptIds: prompt, sampling: defaultSampling, maxTokens: 6 + 3 * i }),
    );
    for (let step = 0; !gen.idle && step < 200; step++) for (const e of gen.step()) out[Number(e.id)]!.push(e.token);
    gen.dispose();
    prompts.forEach((prompt, i) => expect(out[i]).toEqual(greedy(prompt, 6 + 3 * i)));
    // What the generator does as sequences join: one-sequence caches become rows of a batch.
    const batch = new BatchKVCache();
    for (const length of [3, 6]) {
      const caches = prefilled(length);
      batch.extend(caches[0]!);
      freeCaches(caches);
    }
    expect([batch.batchSize, batch.keys![0]!.dtype, batch.values![0]!.dtype]).toEqual([2, float16, float16]);
    batch.free();
  });

  test("a prefix cache hit holds float16, and keys stored in float32 are seeded back as float16", () => {
    const prefixCache = new PrefixCache(1 << 30);
    const run = () =>
      decodeAlone(model, { promptIds: prompts[2]!, sampling: defaultSampling, maxTokens: 8 }, { prefixCache });
    const first = run();
    const match = prefixCache.lookup(prompts[2]!, prompts[2]!.length - 1)!;
    expect(match.keys[0]![0]!.dtype).toBe(float16);
    expect(run()).toEqual(first);
    prefixCache.clear();

    // A float32 prompt cache file's keys and values (as saved before float16 caches).
    const cache = new KVCache();
    const stored = () => [mx.random.normal([1, 2, 10, 64])];
    const [keys, values] = [stored(), stored()];
    cache.seed(keys, values, 10);
    expect(cache.keys![0]!.dtype).toBe(float16);
    expect(cache.values![0]!.dtype).toBe(float16);
    const [k] = cache.updateAndFetch(
      ...([0, 1].map(() => mx.random.normal([1, 2, 1, 64])) as [mx.MxArray, mx.MxArray]),
    );
    expect(k.dtype).toBe(float16);
    expect(k.shape).toEqual([1, 2, 11, 64]);
    expect(
      mx.scope(() => mx.max(mx.abs(mx.subtract(mx.slice(k, [0, 0, 0], [1, 2, 10]), keys[0]!))).item()),
    ).toBeLessThan(1e-2);
    cache.free();
    for (const t of [...keys, ...values]) t.free();
  });
});
