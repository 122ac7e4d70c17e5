// KV caches that step back (src/models/cache-checkpoint.ts): a decode step built on a guess and
// thrown away leaves the caches exactly as they were, and a step built ahead and kept computes
// what a step built at once does. Float, 8-bit and rotating caches (one that compacts in the
// step thrown away), two rows of different lengths; a sliding-window cache cannot step back.
import { beforeAll, describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import type { MxArray } from "../src/mlx";
import { buildModel, parseConfig, Weights, type DecoderModel } from "../src/models";
import { BatchKVCache } from "../src/models/batch-cache";
import { KVCache, type KvQuantization } from "../src/models/cache";
import { checkpoint } from "../src/models/cache-checkpoint";
import { RotatingKVCache } from "../src/models/rotating-cache";
import { SlidingKVCache } from "../src/models/sliding-cache";
import { tinyConfig, tinyWeights } from "./helpers/tiny-model";

let model: DecoderModel;
beforeAll(() => {
  const o = { headDim: 64, seed: 11 };
  model = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
});

const prompts = [
  [5, 17, 200, 3, 99, 42, 7],
  [12, 4, 150],
];

type Kind = "float" | "8-bit" | "rotating";

/** A batch cache per layer holding both prompts (each prefilled alone, then joined). */
function batchOf(kind: Kind): BatchKVCache[] {
  const quantization: KvQuantization | undefined = kind === "8-bit" ? { bits: 8, groupSize: 64 } : undefined;
  const caches = Array.from({ length: model.numLayers }, () =>
    // 5 positions at most (4 sinks), in steps of 5: the longer row (7 + 3 steps) makes the fourth step compact.
    kind === "rotating" ? new RotatingKVCache(5) : new BatchKVCache(quantization),
  );
  for (const prompt of prompts) {
    const singles = Array.from({ length: model.numLayers }, () =>
      kind === "rotating" ? RotatingKVCache.forSequence(5) : new KVCache(quantization),
    );
    mx.scope(() => {
      model.layers(model.embed(mx.array(Int32Array.from(prompt), [1, prompt.length])), singles);
      mx.evaluate(...singles.flatMap((c) => c.state));
    });
    caches.forEach((c, layer) => c.extend(singles[layer]!));
    for (const s of singles) s.free();
  }
  return caches;
}

/** One decode step's hidden states for `tokens` (one per row), unevaluated. */
const step = (caches: BatchKVCache[], tokens: number[]): MxArray =>
  model.layers(model.embed(mx.array(Int32Array.from(tokens), [tokens.length, 1])), caches);

/** Runs `tokens` steps on `caches`, each evaluated: the hidden states of each as numbers. */
function run(caches: BatchKVCache[], steps: number[][]): number[][] {
  return steps.map((tokens) =>
    mx.scope(() => {
      const h = step(caches, tokens);
      mx.evaluate(h, ...caches.flatMap((c) => c.state));
      return h.toArray();
    }),
  );
}

describe("a checkpoint of KV caches", () => {
  for (const kind of ["float", "8-bit", "rotating"] as const) {
    test(`${kind}: a step thrown away leaves the caches as they were; a step kept is the step`, () => {
      const steps = [
        [31, 8],
        [77, 120],
        [9, 64],
        [250, 1],
        [3, 3],
      ];
      const reference = batchOf(kind);
      const expected = run(reference, steps);

      const guessed = batchOf(kind);
      const got = steps.map((tokens, i) => {
        // A wrong guess first (other tokens, so other keys and values), thrown away unevaluated.
        const wrong = checkpoint(guessed)!;
        mx.scope(() => step(guessed, [tokens[1]!, tokens[0]!]));
        wrong.restore();
        if (i % 2 === 0) return run(guessed, [tokens])[0]!;
        // Then the right one built ahead, kept: its old buffers let go before it runs.
        const right = checkpoint(guessed)!;
        return mx.scope(() => {
          const h = step(guessed, tokens);
          right.release();
          mx.evaluate(h, ...guessed.flatMap((c) => c.state));
          return h.toArray();
        });
      });
      expect(got).toEqual(expected);
      expect(guessed.map((c) => [c.offset, c.leftPadding])).toEqual(reference.map((c) => [c.offset, c.leftPadding]));
      if (kind === "rotating")
        expect((guessed as RotatingKVCache[]).map((c) => c.dropped)).toEqual(
          (reference as RotatingKVCache[]).map((c) => c.dropped),
        );
      for (const c of [...reference, ...guessed]) c.free();
    });
  }

  test("a cache with state of its own (a sliding window) cannot step back: no checkpoint", () => {
    expect(checkpoint([new SlidingKVCache(8)])).toBeUndefined();
    expect(checkpoint([new BatchKVCache()])).toBeDefined();
  });
});
