// The quantized KV cache (--kv-bits): attention on quantized keys and values matches float
// attention on the same (dequantized) numbers, greedy output agrees with the float cache, the
// batched path and the prefix cache keep it quantized, and it costs the bytes it should.
import { beforeAll, describe, expect, test } from "bun:test";
import { BatchGenerator, generateTokens } from "../src/engine/batch";
import { PrefixCache } from "../src/engine/prefix-cache";
import { defaultSampling } from "../src/engine/sampling";
import * as mx from "../src/mlx";
import { buildModel, forward, makeCaches, freeCaches, parseConfig, Weights, type DecoderModel } from "../src/models";
import { BatchKVCache } from "../src/models/batch-cache";
import { KVCache, type KvQuantization } from "../src/models/cache";
import { floatCacheDtype } from "../src/models/cache-dtype";
import { quantizedAttention, rotateGroups } from "../src/models/quantized-attention";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ServerOptions } from "../src/server/app";
import { post, serve } from "./helpers/serve";
import { decodeAlone } from "./helpers/generate";
import { tinyConfig, tinyDims, tinyWeights, writeTinyModel } from "./helpers/tiny-model";

const headDim = 64;
let model: DecoderModel;
beforeAll(() => {
  const o = { headDim, seed: 3 };
  model = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
});

const eightBit: KvQuantization = { bits: 8, groupSize: 64 };
const fourBit: KvQuantization = { bits: 4, groupSize: 32 };
const prompts = [[5, 17, 200, 3, 99, 42, 7], [12, 4], [150, 8, 1, 77, 23, 9, 100, 101, 102, 103, 104, 2], [33]];

function greedy(prompt: number[], maxTokens: number, kv?: KvQuantization): number[] {
  return [...generateTokens(model, { promptIds: prompt, sampling: defaultSampling, maxTokens }, kv)].map(
    (e) => e.token,
  );
}

const maxDiff = (a: mx.MxArray, b: mx.MxArray) => mx.scope(() => mx.max(mx.abs(mx.subtract(a, b))).item());

describe("quantized attention", () => {
  for (const q of [eightBit, fourBit]) {
    test(`${q.bits}-bit: equals float attention on the dequantized keys and values (causal, array mask, grouped heads)`, () => {
      mx.scope(() => {
        const key = mx.random.key(1);
        const [k1, k2, k3] = [
          mx.random.split(key)[0],
          mx.random.split(key)[1],
          mx.random.split(mx.random.split(key)[0])[1],
        ];
        const queries = mx.random.normal([2, 4, 5, headDim], mx.Dtype.float32, k1);
        const keys = mx.random.normal([2, 2, 9, headDim], mx.Dtype.float32, k2);
        const values = mx.random.normal([2, 2, 9, headDim], mx.Dtype.float32, k3);
        const pack = (t: mx.MxArray) => {
          const { weight, scales, biases } = mx.quantize(t, q);
          return [weight, scales, biases!];
        };
        const qk = pack(keys);
        const qv = pack(values);
        const floatKeys = mx.dequantize(qk[0]!, qk[1]!, qk[2], q);
        const floatValues = mx.dequantize(qv[0]!, qv[1]!, qv[2], q);
        const scale = headDim ** -0.5;
        const causal = quantizedAttention(queries, qk, qv, scale, "causal", q);
        expect(
          maxDiff(causal, mx.fast.scaledDotProductAttention(queries, floatKeys, floatValues, scale, "causal")),
        ).toBeLessThan(1e-4);
        // A padding mask as BatchKVCache makes: row 1 hides its first 3 columns.
        const columns = mx.reshape(mx.arange(0, 9), [1, 1, 1, 9]);
        const mask = mx.greaterEqual(columns, mx.reshape(mx.array(Int32Array.from([0, 3])), [2, 1, 1, 1]));
        const masked = quantizedAttention(queries, qk, qv, scale, mask, q);
        expect(
          maxDiff(masked, mx.fast.scaledDotProductAttention(queries, floatKeys, floatValues, scale, mask)),
        ).toBeLessThan(1e-4);
        // gpt-oss's attention sinks: one logit per query head in the softmax, as MLX's attention takes them.
        const sinks = mx.array(Float32Array.from([2, -1, 0.5, 3]));
        const sunk = quantizedAttention(queries, qk, qv, scale, mask, q, sinks);
        const reference = mx.fast.scaledDotProductAttention(queries, floatKeys, floatValues, scale, mask, sinks);
        expect(maxDiff(sunk, reference)).toBeLessThan(1e-4);
        expect(maxDiff(sunk, masked)).toBeGreaterThan(1e-2);
      });
    });
  }
});

describe("rotated keys", () => {
  test("the rotation is orthonormal and its own inverse, group by group", () => {
    mx.scope(() => {
      const x = mx.random.normal([2, 3, 5, 128], mx.Dtype.float32, mx.random.key(4));
      const rotated = rotateGroups(x, 64);
      expect(maxDiff(rotateGroups(rotated, 64), x)).toBeLessThan(1e-5);
      // Each group keeps its length: the rotation mixes channels within a group only.
      const norms = (t: mx.MxArray) => mx.sum(mx.square(mx.reshape(t, [2, 3, 5, 2, 64])), -1);
      expect(maxDiff(norms(rotated), norms(x))).toBeLessThan(1e-3);
      expect(maxDiff(rotated, x)).toBeGreaterThan(0.1);
    });
  });

  test("keys with an outlier channel: rotated before rounding, their error is smaller", () => {
    mx.scope(() => {
      const normal = mx.random.normal([1, 2, 64, headDim], mx.Dtype.float32, mx.random.key(5));
      const outlier = mx.multiply(mx.reshape(mx.equal(mx.arange(0, headDim), 3), [1, 1, 1, headDim]), 8);
      const keys = mx.add(normal, outlier);
      const roundTrip = (t: mx.MxArray) => {
        const { weight, scales, biases } = mx.quantize(t, eightBit);
        return mx.dequantize(weight, scales, biases, eightBit);
      };
      const error = (back: mx.MxArray) => mx.sqrt(mx.mean(mx.square(mx.subtract(back, keys)))).item();
      const rotated = error(rotateGroups(roundTrip(rotateGroups(keys, 64)), 64));
      expect(rotated).toBeLessThan(0.7 * error(roundTrip(keys)));
    });
  });

  for (const q of [eightBit, fourBit])
    test(`${q.bits}-bit cache: attention over chunks of odd lengths equals float attention on what it returns`, () => {
      mx.scope(() => {
        const cache = new KVCache(q, 16); // grows in steps of 16: chunks cross the growth and group boundaries
        let key = mx.random.key(6);
        for (const length of [7, 1, 13, 1, 1, 29, 3]) {
          const [a, b, c, next] = [...mx.random.split(key), ...mx.random.split(mx.random.split(key)[1])];
          key = next!;
          const queries = mx.random.normal([1, 4, length, headDim], mx.Dtype.float32, a);
          const keys = mx.random.normal([1, 2, length, headDim], mx.Dtype.float32, b);
          const values = mx.random.normal([1, 2, length, headDim], mx.Dtype.float32, c);
          const mask = cache.attentionMask(length);
          const offset = cache.offset;
          const out = cache.attention(queries, keys, values, 0.125, mask);
          // What the cache holds, rotated back: the new keys come back within rounding.
          cache.trim(offset);
          const [heldKeys, heldValues] = cache.updateAndFetch(keys, values);
          const fresh = mx.slice(heldKeys, [0, 0, offset, 0], [1, 2, offset + length, headDim]);
          expect(maxDiff(fresh, keys)).toBeLessThan(q.bits === 8 ? 0.05 : 1);
          const reference = mx.fast.scaledDotProductAttention(queries, heldKeys, heldValues, 0.125, mask);
          expect(maxDiff(out, reference)).toBeLessThan(1e-4);
        }
        // Taken back (a rejected draft), then rewritten: the same as never having gone further.
        cache.trim(40);
        const queries = mx.random.normal([1, 4, 1, headDim], mx.Dtype.float32, mx.random.key(8));
        const keys = mx.random.normal([1, 2, 1, headDim], mx.Dtype.float32, mx.random.key(9));
        const out = cache.attention(queries, keys, keys, 0.125, undefined);
        cache.trim(40);
        const [heldKeys, heldValues] = cache.updateAndFetch(keys, keys);
        expect(heldKeys.shape[2]).toBe(41);
        expect(maxDiff(out, mx.fast.scaledDotProductAttention(queries, heldKeys, heldValues, 0.125))).toBeLessThan(
          1e-4,
        );
        cache.free();
      });
    });
});

describe("keys per channel in a batch (groups tied to the batch's columns)", () => {
  const q: KvQuantization = { bits: 8, groupSize: 32 };
  // Within 8-bit rounding of random normal keys (range ~6 over a group: a step of ~0.025), twice.
  const rounding = 0.06;

  /** A one-sequence cache fed `length` random positions in chunks of 20; returns it and its float keys. */
  function single(length: number, seed: number, deferKeys = false) {
    const cache = Object.assign(new KVCache(q, 64), { deferKeys });
    const keys = mx.keep(mx.random.normal([1, 2, length, headDim], mx.Dtype.float32, mx.random.key(seed)));
    const values = mx.keep(mx.random.normal([1, 2, length, headDim], mx.Dtype.float32, mx.random.key(seed + 1)));
    for (let at = 0; at < length; at += 20) {
      const part = (t: mx.MxArray) => mx.slice(t, [0, 0, at], [1, 2, Math.min(length, at + 20)]);
      mx.scope(() => cache.update(part(keys), part(values)));
    }
    return { cache, keys };
  }

  /** Row b's keys as the batch holds them (its padding skipped), as float. */
  const rowKeys = (batch: BatchKVCache, b: number) =>
    mx.slice(batch.movableKeys()![0]!, [b, 0, batch.leftPadding[b]!], [b + 1, 2, batch.offset]);

  test("joining, leaving and taking back drafts keep every row's keys within rounding; attention reads them as float attention does", () => {
    mx.scope(() => {
      const a = single(45, 20);
      const b = single(70, 30);
      const batch = new BatchKVCache(q, 64);
      batch.extend(a.cache);
      batch.extend(b.cache);
      // The row held moved by whole groups (45 → 77 columns), the new one is right-aligned.
      expect(batch.offset).toBe(77);
      expect(batch.leftPadding).toEqual([32, 7]);
      expect(maxDiff(rowKeys(batch, 0), a.keys)).toBeLessThan(rounding);
      expect(maxDiff(rowKeys(batch, 1), b.keys)).toBeLessThan(rounding);
      // A decode step crossing a group boundary (77 → 96 columns over 19 steps), attended as float.
      for (let step = 0; step < 19; step++) {
        const queries = mx.random.normal([2, 4, 1, headDim], mx.Dtype.float32, mx.random.key(100 + step));
        const k = mx.random.normal([2, 2, 1, headDim], mx.Dtype.float32, mx.random.key(200 + step));
        const mask = batch.attentionMask(1);
        const out = batch.attention(queries, k, k, 0.125, mask);
        const floatKeys = batch.movableKeys()![0]!;
        const floatValues = mx.dequantize(
          ...(batch.values!.map((t) => mx.slice(t, [0, 0, 0], [2, 2, batch.offset])) as [
            mx.MxArray,
            mx.MxArray,
            mx.MxArray,
          ]),
          q,
        );
        const reference = mx.fast.scaledDotProductAttention(queries, floatKeys, floatValues, 0.125, mask);
        expect(maxDiff(out, reference)).toBeLessThan(1e-4);
      }
      expect(batch.offset).toBe(96);
      const before = [rowKeys(batch, 0), rowKeys(batch, 1)].map(mx.keep);
      // Rejected drafts: 3 and 9 positions taken back (into a coded group: 96 → 93 columns);
      // row 1 moves right by 6, its padding 7 → 13.
      batch.rollback([3, 9]);
      expect(batch.offset).toBe(93);
      expect(batch.leftPadding).toEqual([32, 13]);
      const prefix = (t: mx.MxArray, n: number) => mx.slice(t, [0, 0, 0], [1, 2, n]);
      // (Its group taken back into the float16 tail: within float16's rounding.)
      expect(maxDiff(rowKeys(batch, 0), prefix(before[0]!, 45 + 19 - 3))).toBeLessThan(2e-3);
      expect(maxDiff(rowKeys(batch, 1), prefix(before[1]!, 70 + 19 - 9))).toBeLessThan(rounding);
      // Row 1 leaves: row 0's padding goes (one whole group), its keys as they were.
      batch.keepRows([0]);
      expect(batch.leftPadding).toEqual([0]);
      expect(maxDiff(rowKeys(batch, 0), prefix(before[0]!, 45 + 19 - 3))).toBeLessThan(2e-3);
      for (const t of [...before, a.keys, b.keys]) t.free();
      for (const c of [a.cache, b.cache, batch]) c.free();
    });
  });

  test("a prefill's keys wait in float and are grouped once on joining; joining at once or one by one lays rows out alike", () => {
    mx.scope(() => {
      const lengths = [45, 70, 30];
      const layouts = [true, false].map((atOnce) => {
        const singles = lengths.map((length, i) => single(length, 40 + 2 * i, true));
        // Still float: a tail of all 70 positions, no group coded.
        expect(singles[1]!.cache.keys![3]!.shape[2]).toBe(70);
        const batch = new BatchKVCache(q, 64);
        if (atOnce) batch.extend(...singles.map((s) => s.cache));
        else for (const s of singles) batch.extend(s.cache);
        // Grouped once, from the float keys: within one rounding of them.
        singles.forEach((s, b) => expect(maxDiff(rowKeys(batch, b), s.keys)).toBeLessThan(rounding / 2));
        return { batch, singles };
      });
      const [together, oneByOne] = layouts as [(typeof layouts)[0], (typeof layouts)[0]];
      expect(together.batch.offset).toBe(oneByOne.batch.offset);
      expect(together.batch.leftPadding).toEqual(oneByOne.batch.leftPadding);
      // The same numbers (padding columns aside: masked, they hold what the edge fill left there).
      for (let r = 0; r < 3; r++) expect(maxDiff(rowKeys(together.batch, r), rowKeys(oneByOne.batch, r))).toBe(0);
      for (const { batch, singles } of layouts) {
        batch.free();
        for (const s of singles) s.keys.free();
      }
    });
  });
});

describe("the quantized KV cache", () => {
  test("8-bit: greedy output identical to the float cache's; 4-bit: logits stay close", () => {
    for (const prompt of prompts) expect(greedy(prompt, 24, eightBit)).toEqual(greedy(prompt, 24));
    const logits = (kv?: KvQuantization) => {
      const caches = makeCaches(model, { quantization: kv });
      const sequence = Array.from({ length: 40 }, (_, i) => (i * 37) % 300);
      const out = mx.keep(mx.scope(() => forward(model, mx.array(Int32Array.from(sequence), [1, 40]), caches)));
      freeCaches(caches);
      return out;
    };
    const [float, eight, four] = [logits(), logits(eightBit), logits(fourBit)];
    const meanDiff = (a: mx.MxArray) => mx.scope(() => mx.mean(mx.abs(mx.subtract(a, float))).item());
    const meanSize = mx.scope(() => mx.mean(mx.abs(float)).item());
    expect(meanDiff(four)).toBeGreaterThan(meanDiff(eight)); // fewer bits, larger error: it really is quantized
    expect(meanDiff(eight)).toBeLessThan(0.01 * meanSize);
    // (Random keys have no outlier channels: the rotation neither helps nor harms them, on average.)
    expect(meanDiff(four)).toBeLessThan(0.12 * meanSize);
    for (const t of [float, eight, four]) t.free();
  });

  test("gpt-oss (attention sinks, sliding layers on full quantized caches): 8-bit logits stay close to the float cache's", () => {
    // Random weights pass near-ties, so 8-bit's rounding may flip a greedy token here: compare the logits.
    const o = { modelType: "gpt_oss", layers: 4, tied: false, headDim: 32, seed: 4 } as const;
    const gptOss = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
    // Against a float32 cache: this tiny random model's expert routing is so close to ties that
    // a float16 cache's rounding alone moves it, so that is no reference for 8-bit's error.
    process.env.MLX_KV_DTYPE = "float32";
    try {
      const logits = (kv?: KvQuantization) => {
        const caches = makeCaches(gptOss, { quantization: kv, windowed: false });
        const ids = mx.array(Int32Array.from(prompts[2]!), [1, prompts[2]!.length]);
        const out = mx.keep(mx.scope(() => forward(gptOss, ids, caches)));
        freeCaches(caches);
        return out;
      };
      const [float, eight] = [logits(), logits({ bits: 8, groupSize: 32 })];
      const diff = mx.scope(() => mx.mean(mx.abs(mx.subtract(eight, float))).item());
      const size = mx.scope(() => mx.mean(mx.abs(float)).item());
      expect(diff).toBeGreaterThan(0); // really quantized
      expect(diff).toBeLessThan(0.05 * size);
      for (const t of [float, eight]) t.free();
    } finally {
      delete process.env.MLX_KV_DTYPE;
    }
  });

  test("batched: sequences joining and leaving give what each gives alone", () => {
    const gen = new BatchGenerator(model, { maxBatch: 8, prefillChunk: 3, kvQuantization: fourBit });
    const out = prompts.map(() => [] as number[]);
    prompts.forEach((prompt, i) =>
      gen.add(String(i), { promptIds: prompt, sampling: defaultSampling, maxTokens: 6 + 3 * i }),
    );
    for (let step = 0; !gen.idle && step < 200; step++) for (const e of gen.step()) out[Number(e.id)]!.push(e.token);
    gen.dispose();
    prompts.forEach((prompt, i) => expect(out[i]).toEqual(greedy(prompt, 6 + 3 * i, fourBit)));
  });

  test("bytes per token: 8-bit and 4-bit cost what their packing says", () => {
    const bytesPerToken = (kv?: KvQuantization) => {
      const caches = makeCaches(model, { quantization: kv });
      mx.scope(() =>
        forward(
          model,
          mx.array(
            Int32Array.from({ length: 256 }, (_, i) => i % 300),
            [1, 256],
          ),
          caches,
        ),
      );
      const bytes = caches.reduce((n, c) => n + c.nbytes, 0) / 256;
      freeCaches(caches);
      return bytes;
    };
    const perLayer = 2 * tinyDims.kvHeads * model.numLayers; // keys and values, each head, each layer
    const [float16, float32] = [2, 4];
    // The float cache of a float32 model on our kernels holds float16 (src/models/cache-dtype.ts).
    expect(bytesPerToken()).toBe(perLayer * headDim * float16);
    // Packed values plus one float32 scale and bias per group.
    expect(bytesPerToken(eightBit)).toBe(perLayer * (headDim + (2 * float32 * headDim) / 64));
    expect(bytesPerToken(fourBit)).toBe(perLayer * (headDim / 2 + (2 * float32 * headDim) / 32));
    expect(bytesPerToken(fourBit)).toBeLessThan(bytesPerToken(eightBit));
  });

  for (const keys of ["channel", "rows"] as const)
    test(`the prefix cache stores quantized keys (${keys === "rows" ? "per row" : "per channel"}) and values, and a hit gives the same answer`, () => {
      const prefixCache = new PrefixCache(1 << 30);
      // Long enough for whole groups of keys per channel (64 positions) and a tail.
      const prompt = Array.from({ length: 150 }, (_, i) => (i * 7 + 3) % 300);
      const run = () =>
        decodeAlone(
          model,
          { promptIds: prompt, sampling: defaultSampling, maxTokens: 8 },
          { kvQuantization: { ...eightBit, keys }, prefixCache },
        );
      const first = run();
      const match = prefixCache.lookup(prompt, prompt.length - 1)!;
      expect(match.length).toBe(prompt.length - 1);
      // packed, scales, biases (and per channel, the float tail: 157 stored = 2 groups + 29)
      expect(match.keys[0]!.length).toBe(keys === "channel" ? 4 : 3);
      expect(match.keys[0]![0]!.dtype).toBe(mx.Dtype.uint32);
      if (keys === "channel") expect(match.keys[0]!.map((t) => t.shape[2])).toEqual([128, 2, 2, 29]);
      expect(run()).toEqual(first);
      expect(prefixCache.hits).toBe(2);
      prefixCache.clear();
    });

  test("--kv-quant-start: float until that many positions, then quantized, in one sequence and in a batch", () => {
    const late: KvQuantization = { ...eightBit, start: 10 };
    const caches = makeCaches(model, { quantization: late });
    mx.scope(() => forward(model, mx.array(Int32Array.from([1, 2, 3, 4, 5, 6, 7, 8]), [1, 8]), caches));
    expect(caches[0]!.quantized).toBe(false);
    // Until the start its positions cost what a float cache's do (float16 under float32 activations here).
    const activations = mx.Dtype.float32; // the tiny model's weights
    expect(caches[0]!.values![0]!.dtype).toBe(floatCacheDtype(activations));
    mx.scope(() => forward(model, mx.array(Int32Array.from([9, 10, 11]), [1, 3]), caches));
    expect(caches[0]!.quantized).toBe(true);
    // Then quantized from the activations' dtype, as every later position is: scales alike.
    expect(caches[0]!.values![1]!.dtype).toBe(activations);
    expect(caches[0]!.offset).toBe(11);
    freeCaches(caches);
    // A short prompt (float) joins a batch that has already passed the start (quantized).
    const gen = new BatchGenerator(model, { maxBatch: 4, prefillChunk: 64, kvQuantization: late });
    const out: Record<string, number[]> = { long: [], short: [] };
    gen.add("long", { promptIds: prompts[2]!, sampling: defaultSampling, maxTokens: 10 });
    for (const e of gen.step()) out[e.id]!.push(e.token);
    gen.add("short", { promptIds: prompts[1]!, sampling: defaultSampling, maxTokens: 5 });
    while (!gen.idle) for (const e of gen.step()) out[e.id]!.push(e.token);
    gen.dispose();
    expect(out.long).toEqual(greedy(prompts[2]!, 10, late));
    expect(out.short).toHaveLength(5);
  });
});

describe("serve with a quantized KV cache", () => {
  test("concurrent requests batch to the answers each gets alone; the prefix cache holds quantized bytes", async () => {
    const dir = join(mkdtempSync(join(tmpdir(), "mlx-kv-")), "tiny-wide");
    writeTinyModel(dir, { contextLength: 512, headDim, seed: 5 });
    // Long enough that most keys are in whole groups per channel (64 positions), not the float tail.
    const prompts = ["Tell me a story", "Hi", "What is two plus two?"].map(
      (p) => `${p}. ${"Once upon a time, ".repeat(40)}`,
    );
    const ask = (url: string, content: string) =>
      post(`${url}/v1/chat/completions`, {
        model: dir,
        messages: [{ role: "user", content }],
        max_tokens: 6,
        temperature: 0,
      });
    const prefixBytes = async (o: ServerOptions) => {
      const server = serve({ ...o, maxBatch: 4 });
      try {
        const alone = [];
        for (const p of prompts) alone.push((await ask(server.url, p)).json.choices[0].message.content);
        const together = await Promise.all(prompts.map((p) => ask(server.url, p)));
        expect(together.map((r) => r.json.choices[0].message.content)).toEqual(alone);
        const stats = (await (await fetch(`${server.url}/stats`)).json()) as {
          models: { prefix_cache: { bytes: number } }[];
        };
        return stats.models[0]!.prefix_cache.bytes;
      } finally {
        await server.stop();
      }
    };
    const quantized = await prefixBytes({ kvQuantization: eightBit });
    const float = await prefixBytes({});
    // The float cache holds float16 keys/values: 2 bytes a value; 8-bit: 1 byte plus a float32
    // scale and bias per 64, so 0.56 of the bytes, and per-channel keys' float16 tail of < 64
    // positions (the answers, and so the stored lengths, may differ a little).
    expect(quantized / float).toBeGreaterThan(0.45);
    expect(quantized / float).toBeLessThan(0.7);
  }, 60_000);

  test("a group size the model's heads do not divide: each request says so, and no copy of the model stays", async () => {
    const dir = join(mkdtempSync(join(tmpdir(), "mlx-kv-")), "tiny-wide");
    writeTinyModel(dir, { headDim, seed: 5 });
    const server = serve({ kvQuantization: { bits: 8, groupSize: 128 } });
    try {
      for (let i = 0; i < 2; i++) {
        const r = await post(`${server.url}/v1/completions`, { model: dir, prompt: "Hi", max_tokens: 2 });
        expect([r.status, r.json.error.code]).toEqual([500, "model_load_failed"]);
        expect(r.json.error.message).toBe(
          `cannot serve ${dir} with this server's settings: an 8-bit KV cache needs the head size (64) to be a multiple of its group size (128); try --kv-group-size 32`,
        );
        expect(server.state.models.loaded).toHaveLength(0);
      }
    } finally {
      await server.stop();
    }
  });
});
