// Continuous batching: sequences decoded together give what each gives alone, whatever joins
// or leaves the batch in between.
import { beforeAll, describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import { BatchGenerator, generateTokens, type SequenceEvent } from "../src/engine/batch";
import { defaultSampling, logitsProcessors, type LogitsProcessor, type SamplingParams } from "../src/engine/sampling";
import { buildModel, KVCache, parseConfig, Weights, type DecoderModel } from "../src/models";
import { BatchKVCache } from "../src/models/batch-cache";
import { decodeJoining, type JoiningRequest } from "./helpers/generate";
import { tinyConfig, tinyWeights, type TinyOptions } from "./helpers/tiny-model";

let model: DecoderModel;
beforeAll(() => {
  const o = { quantize: { groupSize: 32, bits: 4 } };
  model = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
});

const prompts = [[5, 17, 200, 3, 99, 42, 7], [12, 4], [150, 8, 1, 77, 23, 9, 100, 101, 102, 103, 104, 2], [33]];

function alone(prompt: number[], maxTokens: number, m = model): number[] {
  const out: number[] = [];
  for (const { token } of generateTokens(m, { promptIds: prompt, sampling: defaultSampling, maxTokens }))
    out.push(token);
  return out;
}

const batched = (requests: JoiningRequest[], options = { maxBatch: 8, prefillChunk: 3 }, m = model) =>
  decodeJoining(m, requests, options);

describe("BatchGenerator on other architectures", () => {
  const plan = [
    { prompt: prompts[0]!, maxTokens: 14, joinAt: 0 },
    { prompt: prompts[1]!, maxTokens: 12, joinAt: 2 },
    { prompt: prompts[2]!, maxTokens: 9, joinAt: 3 },
    { prompt: prompts[3]!, maxTokens: 12, joinAt: 0 },
  ];
  const others: [string, TinyOptions][] = [
    // Each row routed to its own experts.
    ["qwen3_moe, 4-bit", { modelType: "qwen3_moe", layers: 3, quantize: { groupSize: 32, bits: 4 } }],
    // Full caches in the batch, the window of 6 applied by the mask; alone, the cache keeps only the window.
    ["gemma3", { modelType: "gemma3_text", layers: 4 }],
    // Both: each row to its own experts, and the window of its sliding layers by the mask.
    [
      "gpt_oss, MX FP4 experts",
      { modelType: "gpt_oss", layers: 4, quantize: { groupSize: 32, bits: 4, mode: "mxfp4" } },
    ],
  ];
  for (const [name, o] of others) {
    test(`${name}: sequences joining and leaving, decoded together, equal each decoded alone`, () => {
      const m = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
      const expected = plan.map((r) => alone(r.prompt, r.maxTokens, m));
      expect(batched(plan, { maxBatch: 8, prefillChunk: 3 }, m)).toEqual(expected);
    });
  }
});

describe("BatchGenerator", () => {
  test("sequences of different lengths decoded together equal each decoded alone", () => {
    const expected = prompts.map((p) => alone(p, 10));
    const got = batched(prompts.map((prompt) => ({ prompt, maxTokens: 10, joinAt: 0 })));
    expect(got).toEqual(expected);
  });

  test("sequences joining mid-way and leaving early do not disturb the others", () => {
    const plan = [
      { prompt: prompts[0]!, maxTokens: 16, joinAt: 0 },
      { prompt: prompts[1]!, maxTokens: 3, joinAt: 2 },
      { prompt: prompts[2]!, maxTokens: 9, joinAt: 5 },
      { prompt: prompts[3]!, maxTokens: 12, joinAt: 6 },
    ];
    const expected = plan.map((r) => alone(r.prompt, r.maxTokens));
    expect(batched(plan)).toEqual(expected);
  });

  test("at most maxBatch sequences decode at once; the rest wait", () => {
    const gen = new BatchGenerator(model, { maxBatch: 2, prefillChunk: 64 });
    prompts.forEach((p, i) => gen.add(String(i), { promptIds: p, sampling: defaultSampling, maxTokens: 50 }));
    for (let i = 0; i < 6; i++) gen.step();
    expect(gen.running).toBe(2);
    expect(gen.waiting).toBe(2);
    gen.remove("0");
    gen.step();
    expect(gen.running).toBe(2);
    expect(gen.waiting).toBe(1);
    gen.dispose();
  });

  test("n tokens take n decode steps: none is built past a sequence's last token", () => {
    let steps = 0;
    const counted: DecoderModel = { ...model, head: (h) => (steps++, model.head(h)) };
    expect(alone(prompts[0]!, 9, counted)).toEqual(alone(prompts[0]!, 9));
    expect(steps).toBe(9);
  });

  test("a prompt's keys and values join an empty batch as they are, with room for the next positions", () => {
    const single = new KVCache();
    const [keys, values] = [mx.zeros([1, 2, 5, 8]), mx.zeros([1, 2, 5, 8])];
    single.update(keys, values);
    const buffer = single.keys![0]!;
    const batch = new BatchKVCache();
    batch.extend(single);
    expect(batch.keys![0]).toBe(buffer);
    expect(single.keys).toBeUndefined();
    expect([batch.offset, batch.leftPadding]).toEqual([5, [0]]);
    batch.update(mx.zeros([1, 2, 1, 8]), mx.zeros([1, 2, 1, 8]));
    expect(batch.keys![0]!.shape).toEqual(buffer.shape); // written in place, not grown
    batch.free();
    for (const t of [keys, values]) t.free();
  });

  test("a sampled sequence with a seed draws the same tokens batched or alone", () => {
    const sampling = { ...defaultSampling, temperature: 1, seed: 11 };
    const soloTokens: number[] = [];
    for (const { token } of generateTokens(model, { promptIds: prompts[0]!, sampling, maxTokens: 8 }))
      soloTokens.push(token);
    const gen = new BatchGenerator(model);
    gen.add("a", { promptIds: prompts[0]!, sampling, maxTokens: 8 });
    gen.add("b", { promptIds: prompts[2]!, sampling: defaultSampling, maxTokens: 8 });
    const got: number[] = [];
    while (!gen.idle) for (const e of gen.step()) if (e.id === "a") got.push(e.token);
    expect(got).toEqual(soloTokens);
    gen.dispose();
  });

  test("penalties and logit_bias take the latest token lazily: the step is built ahead, with the tokens and log-probabilities of the host's path", () => {
    // A processor that needs the host's history (as a grammar's) keeps a step from being built
    // ahead: with one that changes nothing, the same penalties run on the host's path.
    const onHost: LogitsProcessor = (_history, logits) => logits;
    const penalties: Partial<SamplingParams>[] = [
      { repetitionPenalty: 1.3, repetitionContext: 4 },
      { repetitionPenalty: 1.5, repetitionContext: 1 },
      { presencePenalty: 0.8, frequencyPenalty: 0.6 },
      // Penalties of 0 and 1: a bool of the pending token's presence times 1 stayed a bool.
      { presencePenalty: 1 },
      { frequencyPenalty: 1 },
      { logitBias: new Map([[17, 3]]) },
      { repetitionPenalty: 1.1, presencePenalty: 0.5, frequencyPenalty: 1, logitBias: new Map([[5, -2]]) },
    ];
    for (const temperature of [0, 1])
      for (const penalty of penalties) {
        const sampling = { ...defaultSampling, temperature, seed: 3, ...penalty };
        const run = (extra: LogitsProcessor[]) => {
          const gen = new BatchGenerator(model);
          gen.add("a", {
            promptIds: prompts[0]!,
            sampling,
            maxTokens: 16,
            processors: logitsProcessors(sampling, prompts[0]!.length, extra),
          });
          const steps: SequenceEvent[][] = [];
          while (!gen.idle) steps.push(gen.step());
          gen.dispose();
          return steps;
        };
        const [ahead, onHostPath] = [run([]), run([onHost])];
        const flat = (steps: SequenceEvent[][]) => steps.flat().map((e) => [e.token, e.logprob]);
        expect([temperature, penalty, flat(ahead)]).toEqual([temperature, penalty, flat(onHostPath)]);
        // The prompt's first token comes out alone, not a decode step later with the second: built
        // ahead, and also where each step is read at once.
        expect(ahead.find((events) => events.length > 0)).toHaveLength(1);
        expect(onHostPath.find((events) => events.length > 0)).toHaveLength(1);
      }
  });

  test("newcomers join together within the prefill budget, and no more than the batch has room for", () => {
    const gen = new BatchGenerator(model, { maxBatch: 3, prefillChunk: 10 });
    prompts.forEach((p, i) => gen.add(String(i), { promptIds: p, sampling: defaultSampling, maxTokens: 50 }));
    // Prompts of 7, 2, 12 and 1 tokens: 7 + 2 of the 10 tokens go to the first two, which join
    // in the same step; the third starts with the token left.
    gen.step();
    expect([gen.running, gen.waiting]).toEqual([2, 2]);
    gen.step();
    expect([gen.running, gen.waiting]).toEqual([2, 2]);
    gen.step(); // the third's last 2 tokens; the fourth (one token) would make 4
    expect([gen.running, gen.waiting]).toEqual([3, 1]);
    gen.dispose();
  });

  test.each([
    ["4-bit weights, float32 cache", { quantize: { groupSize: 32, bits: 4 } }],
    ["float16 weights and cache", { dtype: "float16" }],
    ["bfloat16 weights and cache", { dtype: "bfloat16" }],
  ] as const)("%s: a long row's log-probabilities batched are its bits alone", (_, o: TinyOptions) => {
    // Past the attention kernel's key chunks, padded by a count that is not a whole chunk.
    const model = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
    const long = Array.from({ length: 700 }, (_, i) => (i * 37) % 250);
    const short = Array.from({ length: 250 }, (_, i) => (i * 11) % 250);
    const request = (promptIds: number[]) => ({
      promptIds,
      sampling: defaultSampling,
      maxTokens: 4,
      keepLogprobs: true,
    });
    const rows = (events: Iterable<SequenceEvent>, into: number[][][]) => {
      for (const e of events) {
        into[Number(e.id ?? 0)]!.push(e.logprobs!.toArray());
        e.logprobs!.free();
      }
    };
    const expected = [long, short].map((p) => {
      const out: number[][][] = [[]];
      rows(generateTokens(model, request(p)), out);
      return out[0]!;
    });
    const gen = new BatchGenerator(model);
    [long, short].forEach((p, i) => gen.add(String(i), request(p)));
    const got: number[][][] = [[], []];
    while (!gen.idle) rows(gen.step(), got);
    gen.dispose();
    expect(got).toEqual(expected);
  });

  test("a greedy batch returns each row's log-probabilities as decoded alone", () => {
    const request = (promptIds: number[]) => ({
      promptIds,
      sampling: defaultSampling,
      maxTokens: 3,
      keepLogprobs: true,
    });
    const read = (e: SequenceEvent) => {
      const row = e.logprobs!.toArray();
      e.logprobs!.free();
      return { token: e.token, logprob: e.logprob, row };
    };
    const both = [prompts[0]!, prompts[2]!];
    const expected = both.map((p) => [...generateTokens(model, request(p))].map(read));
    const gen = new BatchGenerator(model);
    both.forEach((p, i) => gen.add(String(i), request(p)));
    const got: ReturnType<typeof read>[][] = [[], []];
    while (!gen.idle) for (const e of gen.step()) got[Number(e.id)]!.push(read(e));
    gen.dispose();
    expect(got).toEqual(expected);
  });
});

describe("BatchKVCache", () => {
  const filled = (length: number, seed: number) => {
    const cache = new KVCache();
    const t = () => mx.random.normal([1, 2, length, 8], mx.Dtype.float32, mx.random.key(seed));
    if (length > 0) cache.update(t(), t());
    return cache;
  };
  const rowsOf = (cache: BatchKVCache) =>
    [...cache.updateAndFetch(...newColumn(cache.batchSize))].map((t) => t.toArray());
  const newColumn = (rows: number) => [mx.ones([rows, 2, 1, 8]), mx.ones([rows, 2, 1, 8])] as const;

  test("sequences joining at once hold what joining one by one holds, with room for the next positions", () => {
    const lengths = [5, 3, 0, 9];
    const together = new BatchKVCache();
    together.extend(filled(4, 1));
    together.extend(...lengths.map((n, i) => filled(n, i + 2)));
    const oneByOne = new BatchKVCache();
    for (const [n, seed] of [[4, 1], ...lengths.map((n, i) => [n, i + 2])] as const) oneByOne.extend(filled(n, seed));
    expect([together.offset, together.leftPadding]).toEqual([9, [5, 4, 6, 9, 0]]);
    expect([oneByOne.offset, oneByOne.leftPadding]).toEqual([together.offset, together.leftPadding]);
    const buffer = together.keys![0]!;
    expect(buffer.shape[2]).toBeGreaterThan(together.offset);
    expect(rowsOf(together)).toEqual(rowsOf(oneByOne));
    expect(together.keys![0]!.shape).toEqual(buffer.shape); // written in place, not grown
    together.free();
    oneByOne.free();
  });

  test("rows kept after others leave keep their room: the next position is written in place", () => {
    const cache = new BatchKVCache();
    cache.extend(filled(6, 1), filled(2, 2), filled(4, 3));
    cache.keepRows([2, 1]); // the longest row leaves: the padding both others have goes
    expect([cache.offset, cache.leftPadding]).toEqual([4, [0, 2]]);
    const shape = cache.keys![0]!.shape;
    const [keys] = cache.updateAndFetch(...newColumn(2));
    expect(cache.keys![0]!.shape).toEqual(shape);
    expect(keys.shape).toEqual([2, 2, 5, 8]);
    cache.free();
  });
});
