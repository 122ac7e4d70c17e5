// The rotating KV cache (--max-kv-size): every query sees the first 4 positions and the latest
// ones, up to the size, and the cache stays bounded however long the sequence runs. Checked
// against a full cache that only masks what the rotating one drops, alone and batched, with
// chunked prefills and a quantized cache; short runs equal no rotation; and the default model
// gives mlx-lm's RotatingKVCache answer (a fixture made by scripts/rotating-kv-fixture.py).
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { BatchGenerator, generateTokens, type BatchOptions } from "../src/engine/batch";
import { PrefixCache } from "../src/engine/prefix-cache";
import { defaultSampling } from "../src/engine/sampling";
import * as mx from "../src/mlx";
import { buildModel, forward, freeCaches, makeCaches, parseConfig, Weights, type DecoderModel } from "../src/models";
import type { KvQuantization } from "../src/models/cache";
import { loadModel } from "../src/models/load";
import { RotatingKVCache } from "../src/models/rotating-cache";
import { resolveModelPath } from "../src/store/resolve";
import { cliRunner } from "./helpers/cli";
import { rotationReference } from "./helpers/rotation";
import { decodeJoining, type JoiningRequest } from "./helpers/generate";
import { post, serve, tinyModel } from "./helpers/serve";
import { tinyConfig, tinyWeights } from "./helpers/tiny-model";

let model: DecoderModel;
beforeAll(() => {
  const o = { headDim: 64, seed: 5 };
  model = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
});

const prompts = [[5, 17, 200, 3, 99, 42, 7], [12, 4], [150, 8, 1, 77, 23, 9, 100, 101, 102, 103, 104, 2], [33]];
const eightBit: KvQuantization = { bits: 8, groupSize: 64 };

const reference = (prompt: number[], maxTokens: number, maxSize: number, kv?: KvQuantization) =>
  rotationReference(model, prompt, maxTokens, maxSize, kv);

function greedy(prompt: number[], maxTokens: number, maxKvSize?: number, kv?: KvQuantization): number[] {
  const request = { promptIds: prompt, sampling: defaultSampling, maxTokens };
  return [...generateTokens(model, request, kv, { maxKvSize })].map((e) => e.token);
}

const batched = (requests: JoiningRequest[], options: BatchOptions) => decodeJoining(model, requests, options);

describe("the rotating KV cache", () => {
  test("runs shorter than the size are token-identical to no rotation", () => {
    for (const prompt of prompts) expect(greedy(prompt, 40, 64)).toEqual(greedy(prompt, 40));
  });

  test("past the size: the first 4 and the latest positions, as a full cache masked so (prompts shorter and longer than the size)", () => {
    for (const [prompt, size] of [
      [prompts[0]!, 16],
      [prompts[2]!, 8],
      [prompts[3]!, 5],
    ] as const) {
      expect(greedy(prompt, 70, size)).toEqual(reference(prompt, 70, size));
    }
  });

  test("with an 8-bit cache too", () => {
    expect(greedy(prompts[0]!, 60, 16, eightBit)).toEqual(reference(prompts[0]!, 60, 16, eightBit));
  });

  test("--kv-quant-start counts positions, not the columns held: quantized where a full cache is, one token or several a step", () => {
    // Before, it compared the start with the columns held, which fall at each compaction: a
    // start past the size and its slack never quantized, and one below it quantized at another
    // position where a step of several tokens (a speculative one) compacted first.
    const prompt = Array.from({ length: 27 }, (_, i) => (i * 37) % 250);
    /** The position after which the cache holds quantized keys, fed the prompt then `step` tokens at a time. */
    const quantizedAfter = (kv: KvQuantization, step: number, maxKvSize?: number) => {
      const caches = makeCaches(model, { quantization: kv, maxKvSize });
      try {
        for (let input = prompt, at = 0; at < 200; at += input.length, input = Array(step).fill(7)) {
          mx.scope(() => forward(model, mx.array(Int32Array.from(input), [1, input.length]), caches));
          if (caches[0]!.quantized) return at + input.length;
        }
        return undefined;
      } finally {
        freeCaches(caches);
      }
    };
    for (const start of [40, 47, 60])
      for (const step of [1, 9]) {
        const kv = { ...eightBit, start };
        expect(quantizedAfter(kv, step, 24)).toBe(quantizedAfter(kv, step)!);
      }
  });

  test("--kv-quant-start with speculation: the tokens decoded one at a time", () => {
    const prompt = Array.from({ length: 27 }, (_, i) => (i * 37) % 250);
    const request = { promptIds: prompt, sampling: defaultSampling, maxTokens: 60 };
    const kv = { ...eightBit, start: 40 };
    const decode = (speculation?: BatchOptions["speculation"]) =>
      [...generateTokens(model, request, kv, { maxKvSize: 24, speculation })].map((e) => e.token);
    const alone = decode();
    expect(decode({ numDraft: 8, maxBatch: 2, draftModel: model })).toEqual(alone);
  });

  test("a prompt longer than the size, prefilled in chunks", () => {
    const prompt = Array.from({ length: 40 }, (_, i) => (i * 37) % 250);
    const [got] = batched([{ prompt, maxTokens: 30, joinAt: 0 }], { maxBatch: 4, prefillChunk: 7, maxKvSize: 12 });
    expect(got).toEqual(reference(prompt, 30, 12));
  });

  test("batched: sequences of different lengths joining and leaving, each rotating, equal each alone", () => {
    const plan = [
      { prompt: prompts[0]!, maxTokens: 50, joinAt: 0 },
      { prompt: prompts[1]!, maxTokens: 20, joinAt: 3 },
      { prompt: prompts[2]!, maxTokens: 45, joinAt: 9 },
      { prompt: prompts[3]!, maxTokens: 35, joinAt: 30 },
    ];
    for (const kv of [undefined, eightBit]) {
      const expected = plan.map((r) => greedy(r.prompt, r.maxTokens, 10, kv));
      expect(batched(plan, { maxBatch: 8, prefillChunk: 3, maxKvSize: 10, kvQuantization: kv })).toEqual(expected);
    }
  });

  test("memory stays bounded however long it runs", () => {
    const size = 24;
    const caches = Array.from({ length: model.numLayers }, () => RotatingKVCache.forSequence(size));
    let token = 7;
    const widths: number[] = [];
    const bytes: number[] = [];
    for (let step = 0; step < 400; step++) {
      token = mx.scope(() => mx.argmax(forward(model, mx.array(Int32Array.from([token]), [1, 1]), caches), -1).item());
      widths.push(caches[0]!.keys![0]!.shape[2]!);
      bytes.push(caches.reduce((n, c) => n + c.nbytes, 0));
    }
    // At most the size, a step of slack, and a step of growth.
    expect(Math.max(...widths)).toBeLessThanOrEqual(size * 3);
    expect(Math.max(...bytes.slice(200))).toBe(Math.max(...bytes.slice(0, 200)));
    expect(caches[0]!.dropped[0]).toBeGreaterThan(300);
    freeCaches(caches);
  });

  test("the prefix cache continues a rotated sequence from exactly its own tokens", () => {
    const prefixCache = new PrefixCache(64 * 1024 * 1024);
    const gen = new BatchGenerator(model, { maxBatch: 1, prefillChunk: 64, prefixCache, maxKvSize: 12 });
    const first = prompts[2]!;
    const answer: number[] = [];
    gen.add("a", { promptIds: first, sampling: defaultSampling, maxTokens: 20 });
    while (!gen.idle) for (const e of gen.step()) answer.push(e.token);
    // The stored entry: the prompt and the answer (but its last token, when that was never fed).
    const followUp = [...first, ...answer, 5, 6];
    const cont: number[] = [];
    gen.add("b", { promptIds: followUp, sampling: defaultSampling, maxTokens: 10 });
    while (!gen.idle) for (const e of gen.step()) cont.push(e.token);
    gen.dispose();
    expect(prefixCache.hitTokens).toBeGreaterThanOrEqual(first.length + answer.length - 1);
    expect(cont).toEqual(reference(followUp, 10, 12));
    // A prefix of a rotated entry shorter than its window cannot be rebuilt from it: only an entry that holds all its positions serves.
    expect(prefixCache.lookup([...first, ...answer.slice(0, 5), 9], 100)?.dropped ?? 0).toBe(0);
    prefixCache.clear();
  });

  test("a prompt rotated while prefilled, asked again, reuses all of it but the last token (computed anew), and answers as a fresh run", () => {
    // Prefilled 8 tokens a step, the last chunk ending the prompt: its entry is the whole prompt,
    // rotated, longer than a lookup may take (the prompt less one token).
    const prefixCache = new PrefixCache(64 * 1024 * 1024);
    const gen = new BatchGenerator(model, { maxBatch: 1, prefillChunk: 8, prefixCache, maxKvSize: 12 });
    const ask = (prompt: number[], maxTokens: number) => {
      const out: number[] = [];
      gen.add("a", { promptIds: prompt, sampling: defaultSampling, maxTokens });
      while (!gen.idle) for (const e of gen.step()) out.push(e.token);
      return out;
    };
    const prompt = Array.from({ length: 30 }, (_, i) => 3 + ((i * 41) % 200));
    const fresh = ask(prompt, 20);
    let before = prefixCache.hitTokens;
    expect(ask(prompt, 20)).toEqual(fresh);
    expect(prefixCache.hitTokens - before).toBe(prompt.length - 1);
    expect(fresh).toEqual(reference(prompt, 20, 12));
    // A follow-up whose chat template changed the answer's last token: the rotated entry of the
    // prompt and answer goes back one position, its window still held.
    const followUp = [...prompt, ...fresh.slice(0, -2), 7, 8, 9];
    before = prefixCache.hitTokens;
    expect(ask(followUp, 10)).toEqual(reference(followUp, 10, 12));
    expect(prefixCache.hitTokens - before).toBe(prompt.length + fresh.length - 2);
    // One that leaves the answer early, before the rotated entry of the prompt and answer can
    // go back to (it no longer holds what those tokens see): only the prompt's entry serves.
    const early = [...prompt, ...fresh.slice(0, 2), 7, 8, 9];
    before = prefixCache.hitTokens;
    expect(ask(early, 10)).toEqual(reference(early, 10, 12));
    expect(prefixCache.hitTokens - before).toBe(prompt.length);
    gen.dispose();
    prefixCache.clear();
  });

  test("a prompt asked again reuses its stored keys and values, which the longer entry of its rotated answer does not hide", () => {
    // Prefilled 8 tokens a step, the prompt's last token left to the first decode step: one prompt
    // the cache holds whole (shorter than the size), one it rotated while prefilling.
    for (const length of [9, 33]) {
      const prefixCache = new PrefixCache(64 * 1024 * 1024);
      const gen = new BatchGenerator(model, { maxBatch: 1, prefillChunk: 8, prefixCache, maxKvSize: 12 });
      const prompt = Array.from({ length }, (_, i) => 3 + ((i * 37) % 200));
      const ask = () => {
        gen.add("a", { promptIds: prompt, sampling: defaultSampling, maxTokens: 20 });
        while (!gen.idle) gen.step();
      };
      ask(); // stores the prompt (its last token aside), then the prompt and its answer, rotated
      const before = prefixCache.hitTokens;
      ask();
      gen.dispose();
      expect(prefixCache.hitTokens - before).toBe(length - 1);
      prefixCache.clear();
    }
  });
});

const fixture = join(import.meta.dir, "fixtures", "rotating-smollm2-mlx-lm.json");

describe("against mlx-lm's RotatingKVCache on the default model", () => {
  test("greedy answers that rotate many times are mlx-lm's", async () => {
    const lm = loadModel(await resolveModelPath(undefined));
    const { cases } = JSON.parse(readFileSync(fixture, "utf8")) as {
      cases: { prompt_ids: number[]; max_kv_size: number; output_ids: number[] }[];
    };
    for (const c of cases) {
      const request = { promptIds: c.prompt_ids, sampling: defaultSampling, maxTokens: c.output_ids.length };
      const ours = [...generateTokens(lm.model, request, undefined, { maxKvSize: c.max_kv_size })].map((e) => e.token);
      expect(ours).toEqual(c.output_ids);
    }
    lm.free();
  });
});

describe("serve --max-kv-size", () => {
  test("echo with logprobs scores the prompt through the rotating cache: each token the logprob it has when generated", async () => {
    // Before, the prompt's pass kept every position (a full cache): past the size its logprobs
    // were the model's without the window, and its memory grew with the prompt.
    const model = tinyModel();
    const lm = loadModel(model);
    const prompt = [5, 9, 12, 300, 41, 7, 8];
    const request = { promptIds: prompt, sampling: defaultSampling, maxTokens: 40 };
    const answer = [...generateTokens(lm.model, request, undefined, { maxKvSize: 16 })];
    lm.free();
    const server = serve({ maxKvSize: 16 });
    try {
      const ids = [...prompt, ...answer.map((e) => e.token)];
      const r = await post(`${server.url}/v1/completions`, {
        model,
        prompt: ids,
        max_tokens: 1,
        echo: true,
        logprobs: 0,
      });
      const echoed = r.json.choices[0].logprobs.token_logprobs.slice(prompt.length, ids.length) as number[];
      answer.forEach((e, i) => expect(echoed[i]!).toBeCloseTo(e.logprob, 3));
    } finally {
      await server.stop();
    }
  });

  test("a prompt longer than the model's context is answered, concurrent requests as each alone", async () => {
    const model = tinyModel(); // a context of 256
    const long = Array.from({ length: 200 }, (_, i) => `word${i % 30}`).join(" ");
    const ask = (url: string, content: string) =>
      post(`${url}/v1/chat/completions`, {
        model,
        messages: [{ role: "user", content }],
        max_tokens: 12,
        temperature: 0,
      });
    const plain = serve();
    try {
      expect((await ask(plain.url, long)).status).toBe(400);
    } finally {
      await plain.stop();
    }
    const server = serve({ maxKvSize: 48, maxBatch: 4 });
    try {
      const prompts = [long, "Hi", "Tell me a story about a dragon and a knight"];
      const alone = [];
      for (const p of prompts) {
        const r = await ask(server.url, p);
        expect(r.status).toBe(200);
        alone.push(r.json.choices[0].message.content);
      }
      const together = await Promise.all(prompts.map((p) => ask(server.url, p)));
      expect(together.map((r) => r.json.choices[0].message.content)).toEqual(alone);
    } finally {
      await server.stop();
    }
  }, 60_000);

  test("an answer may run past the model's context on every route, as the rotating cache holds any length", async () => {
    const model = tinyModel(); // a context of 256
    const server = serve({ maxKvSize: 48 });
    try {
      const maxTokens = 300;
      const chat = await post(`${server.url}/v1/chat/completions`, {
        model,
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: maxTokens,
        ignore_eos: true,
      });
      expect(chat.status).toBe(200);
      expect(chat.json.usage.completion_tokens).toBe(maxTokens);
      expect(chat.json.choices[0].finish_reason).toBe("length");
      const responses = await post(`${server.url}/v1/responses`, { model, input: "Hi", max_output_tokens: maxTokens });
      expect(responses.status).toBe(200);
      const anthropic = await post(`${server.url}/v1/messages`, {
        model,
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: maxTokens,
      });
      expect(anthropic.status).toBe(200);
    } finally {
      await server.stop();
    }
  }, 60_000);

  test("a long prompt asked again hits the prefix cache, all but its last token, and answers as a fresh server", async () => {
    const model = tinyModel();
    const content = Array.from({ length: 120 }, (_, i) => `word${(i * 7) % 31}`).join(" ");
    const ask = (url: string) =>
      post(`${url}/v1/chat/completions`, {
        model,
        messages: [{ role: "user", content }],
        max_tokens: 16,
        temperature: 0,
      });
    // Prefilled 32 tokens a step, the prompt rotates before its last chunk.
    const options = { maxKvSize: 48, prefillChunk: 32 };
    const fresh = serve(options);
    const server = serve(options);
    try {
      const first = (await ask(fresh.url)).json;
      expect(first.usage.prompt_tokens).toBeGreaterThan(100);
      expect(first.usage.prompt_tokens % 32).not.toBe(1); // the last chunk ends the prompt
      await ask(server.url);
      const again = (await ask(server.url)).json;
      expect(again.usage.prompt_tokens_details.cached_tokens).toBe(first.usage.prompt_tokens - 1);
      expect(again.choices[0].message.content).toBe(first.choices[0].message.content);
    } finally {
      await fresh.stop();
      await server.stop();
    }
  }, 60_000);
});

describe("--max-kv-size on the command line", () => {
  const run = cliRunner(process.env.MLX_HOME ?? "");
  test("a size that leaves nothing besides the sinks is a one-line error", async () => {
    const { code, stderr } = await run(["run", "--max-kv-size", "4", "hi"]);
    expect(code).not.toBe(0);
    expect(stderr.trim()).toBe("error: --max-kv-size must be more than the 4 positions always kept (got 4)");
  });

  test("a prompt and answer longer than the size", async () => {
    const { code, stdout } = await run([
      "run",
      "--max-kv-size",
      "16",
      "--max-tokens",
      "60",
      "--json",
      "Tell me a story.",
    ]);
    expect(code).toBe(0);
    const result = JSON.parse(stdout) as { token_ids: number[]; prompt_token_ids: number[] };
    expect(result.prompt_token_ids.length + result.token_ids.length).toBeGreaterThan(16);
  });
});
