// The engine loop shared by concurrent requests: each stream gets what it would get alone,
// with its own stop strings and cancellation, and a full queue refuses new work.
import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { completeAlone } from "./helpers/generate";
import { defaultSampling } from "../src/engine/sampling";
import { QueueFullError } from "../src/errors";
import { Scheduler, type GenerationEvent, type GenerationRequest } from "../src/engine/scheduler";
import { BatchGenerator } from "../src/engine/batch";
import { PrefixCache } from "../src/engine/prefix-cache";
import * as mx from "../src/mlx";
import { loadModel, type LoadedModel } from "../src/models/load";
import { chatTokens } from "../src/engine/prompt";
import { writeTinyModel } from "./helpers/tiny-model";

let lm: LoadedModel;
beforeAll(() => {
  const dir = join(mkdtempSync(join(tmpdir(), "mlx-sched-")), "tiny");
  writeTinyModel(dir);
  lm = loadModel(dir);
});

const prompt = (text: string) => chatTokens(lm.tokenizer, [{ role: "user", content: text }]);

async function alone(
  promptIds: number[],
  maxTokens: number,
  stop: string[] = [],
): Promise<{ text: string; finish: string }> {
  const result = await completeAlone(lm, promptIds, { sampling: defaultSampling, maxTokens, stop });
  return { text: result.text, finish: result.finishReason };
}

/** The stream's text, last event and top-logprob counts; `onEvent` is told of each event as it comes. */
async function collect(stream: AsyncIterable<GenerationEvent>, onEvent?: (e: GenerationEvent) => void) {
  let text = "";
  let done: Extract<GenerationEvent, { type: "done" }> | undefined;
  const tops: number[] = [];
  for await (const e of stream) {
    onEvent?.(e);
    if (e.type === "text") {
      text += e.text;
      if (e.top) tops.push(e.top[0]!.length);
    } else if (e.type === "done") done = e;
    else throw e.error;
  }
  return { text, done: done!, tops };
}

const request = (text: string, o: Partial<GenerationRequest> = {}): GenerationRequest => ({
  promptIds: prompt(text),
  sampling: defaultSampling,
  maxTokens: 12,
  ...o,
});

describe("Scheduler", () => {
  test("concurrent requests each get the text they would get alone", async () => {
    const scheduler = new Scheduler(lm, { maxBatch: 4, prefillChunk: 16, maxQueue: 8 });
    const texts = ["Hello", "Tell me about the sea and the sky", "Hi", "Count to three"];
    const results = await Promise.all(texts.map((t) => collect(scheduler.submit(request(t)))));
    for (const [i, r] of results.entries()) {
      const expected = await alone(prompt(texts[i]!), 12);
      expect(r.text).toBe(expected.text);
      expect(r.done.finishReason).toBe(expected.finish as "stop" | "length");
      expect(r.done.usage.promptTokens).toBe(prompt(texts[i]!).length);
    }
    scheduler.dispose();
  });

  test("stop strings end one stream without touching the others", async () => {
    const scheduler = new Scheduler(lm, { maxBatch: 4, prefillChunk: 64, maxQueue: 8 });
    const free = (await alone(prompt("Hello"), 12)).text;
    const stopAt = free.slice(3, 5);
    const [stopped, other] = await Promise.all([
      collect(scheduler.submit(request("Hello", { stop: [stopAt] }))),
      collect(scheduler.submit(request("Hi"))),
    ]);
    expect(stopped.done.finishReason).toBe("stop");
    expect(stopped.text).toBe(free.slice(0, free.indexOf(stopAt)));
    expect(other.text).toBe((await alone(prompt("Hi"), 12)).text);
    scheduler.dispose();
  });

  test("an aborted request ends as cancelled and frees its slot", async () => {
    const scheduler = new Scheduler(lm, { maxBatch: 1, prefillChunk: 64, maxQueue: 8 });
    const controller = new AbortController();
    const long = scheduler.submit(request("Hello", { maxTokens: 100000, signal: controller.signal }));
    const next = scheduler.submit(request("Hi"));
    // Aborted once its answer has begun (at its first event), not at a guessed moment (100 ms):
    // the abort lands in the middle of its generation, however fast or slow this machine is.
    const [cancelled, after] = await Promise.all([collect(long, () => controller.abort()), collect(next)]);
    expect(cancelled.done.finishReason).toBe("cancelled");
    expect(after.text).toBe((await alone(prompt("Hi"), 12)).text);
    expect(scheduler.running + scheduler.waiting).toBe(0);
    scheduler.dispose();
  });

  test("a step that fails ends every stream with its error, and the next request is served (prefix cache on)", async () => {
    // Before: ending the streams saved their prefixes from the failed step's caches, which
    // evaluated the failure again and threw out of the engine loop (it took `mlx serve` down).
    const scheduler = new Scheduler(lm, {
      maxBatch: 4,
      prefillChunk: 64,
      maxQueue: 8,
      prefixCache: new PrefixCache(1 << 30),
    });
    const embed = lm.model.embed;
    let failNext = false;
    // An operation MLX refuses only when it runs (bfloat16 GatherMM on the CPU), under the step's
    // embeddings, so everything the step computes (its keys and values too) holds the failure.
    lm.model.embed = (ids) => {
      const h = embed.call(lm.model, ids);
      if (!failNext) return h;
      failNext = false;
      const a = mx.astype(mx.ones([2, 1, 2, 2]), mx.Dtype.bfloat16);
      const index = mx.array(Int32Array.from([0, 1]), [2, 1]);
      const failing = mx.sum(mx.gatherMm(a, a, { lhsIndices: index, rhsIndices: index }));
      return mx.add(h, mx.astype(mx.multiply(failing, 0), h.dtype));
    };
    const ending = async (stream: AsyncIterable<GenerationEvent>, arm: boolean) => {
      for await (const e of stream) {
        // Armed at the first token: the failing step is a decode step of both sequences.
        if (arm && e.type === "text") {
          failNext = true;
          arm = false;
        }
        if (e.type === "error") return e.error.message;
        if (e.type === "done") return "done";
      }
    };
    try {
      const armed = scheduler.submit(request("Hi", { maxTokens: 200 }));
      const other = scheduler.submit(request("Hi", { maxTokens: 200 }));
      const [first, second] = await Promise.all([ending(armed, true), ending(other, false)]);
      expect(first).toContain("GatherMM");
      expect(second).toContain("GatherMM");
      const after = await collect(scheduler.submit(request("Hi")));
      expect(after.text).toBe((await alone(prompt("Hi"), 12)).text);
    } finally {
      lm.model.embed = embed;
      scheduler.dispose();
    }
  });

  test("a full queue refuses new requests", () => {
    const scheduler = new Scheduler(lm, { maxBatch: 1, prefillChunk: 64, maxQueue: 2 });
    const controller = new AbortController();
    // The first request starts at once (one batch slot); the next two wait; the fourth is refused.
    for (const text of ["a", "b", "c"]) scheduler.submit(request(text, { maxTokens: 1000, signal: controller.signal }));
    expect(scheduler.running).toBe(1);
    expect(scheduler.waiting).toBe(2);
    expect(() => scheduler.submit(request("d"))).toThrow(QueueFullError);
    controller.abort();
    scheduler.dispose();
  });

  test("top log-probabilities come with each token when asked", async () => {
    const scheduler = new Scheduler(lm, { maxBatch: 2, prefillChunk: 64, maxQueue: 4 });
    const r = await collect(scheduler.submit(request("Hello", { topLogprobs: 3, maxTokens: 4 })));
    expect(r.tops.length).toBeGreaterThan(0);
    expect(r.tops.every((n) => n === 3)).toBe(true);
    scheduler.dispose();
  });
});

describe("prefix cache across requests", () => {
  test("a follow-up turn reuses the conversation so far, and answers as it would from scratch", async () => {
    const { PrefixCache } = await import("../src/engine/prefix-cache");
    const prefixCache = new PrefixCache(64 * 1024 * 1024);
    const scheduler = new Scheduler(lm, { maxBatch: 2, prefillChunk: 16, maxQueue: 4, prefixCache });
    const first = [{ role: "user", content: "Hello there, how are you?" }];
    const one = await collect(
      scheduler.submit({ promptIds: chatTokens(lm.tokenizer, first), sampling: defaultSampling, maxTokens: 8 }),
    );
    expect(one.done.usage.cachedTokens).toBe(0);
    const followUp = chatTokens(lm.tokenizer, [
      ...first,
      { role: "assistant", content: one.text },
      { role: "user", content: "And then?" },
    ]);
    const two = await collect(scheduler.submit({ promptIds: followUp, sampling: defaultSampling, maxTokens: 8 }));
    expect(two.done.usage.cachedTokens).toBeGreaterThan(chatTokens(lm.tokenizer, first).length - 2);
    expect(two.text).toBe((await alone(followUp, 8)).text);
    expect(prefixCache.hits).toBe(1);
    scheduler.dispose();
  });

  test("a finished answer's entry takes the place of its prompt's, which it serves as well: one entry per conversation", async () => {
    const prefixCache = new PrefixCache(64 * 1024 * 1024);
    const scheduler = new Scheduler(lm, { maxBatch: 2, prefillChunk: 16, maxQueue: 4, prefixCache });
    const promptIds = prompt("Hello there, how are you?");
    const one = await collect(scheduler.submit({ promptIds, sampling: defaultSampling, maxTokens: 8 }));
    // It was two: the prompt's entry, stored for requests arriving while it decoded, stayed
    // beside its answer's, never looked up again, holding half the budget.
    expect(prefixCache.entries).toBe(1);
    const again = await collect(scheduler.submit({ promptIds, sampling: defaultSampling, maxTokens: 8 }));
    expect(again.done.usage.cachedTokens).toBe(promptIds.length - 1);
    expect(again.text).toBe(one.text);
    expect(prefixCache.entries).toBe(1);
    scheduler.dispose();
  });

  test("a prompt cancelled part way through its prefill leaves the chunks done for the next request", async () => {
    const prefixCache = new PrefixCache(64 * 1024 * 1024);
    const starts: number[] = [];
    const generator = new BatchGenerator(lm.model, {
      maxBatch: 2,
      prefillChunk: 16,
      prefixCache,
      onStart: (_, cached) => starts.push(cached),
    });
    const promptIds = prompt("Tell me everything you know. ".repeat(6));
    expect(promptIds.length).toBeGreaterThan(40);
    generator.add("first", { promptIds, sampling: defaultSampling, maxTokens: 4 });
    expect(generator.step()).toEqual([]); // one chunk of 16
    generator.remove("first"); // the client went away, or Ctrl-C in chat
    generator.add("again", { promptIds, sampling: defaultSampling, maxTokens: 4 });
    const answer: number[] = [];
    while (!generator.idle) for (const e of generator.step()) answer.push(e.token);
    generator.dispose();
    expect(starts).toEqual([0, 16]);
    // Answered as from scratch.
    const fresh = new BatchGenerator(lm.model, { maxBatch: 2, prefillChunk: 16 });
    fresh.add("alone", { promptIds, sampling: defaultSampling, maxTokens: 4 });
    const alone: number[] = [];
    while (!fresh.idle) for (const e of fresh.step()) alone.push(e.token);
    fresh.dispose();
    expect(answer).toEqual(alone);
  });

  test("the byte budget evicts the least recently used entries", async () => {
    const { PrefixCache } = await import("../src/engine/prefix-cache");
    const probe = new PrefixCache(1e9);
    const scheduler = new Scheduler(lm, { maxBatch: 1, prefillChunk: 64, maxQueue: 4, prefixCache: probe });
    await collect(scheduler.submit(request("one", { maxTokens: 2 })));
    const perEntry = probe.bytes / probe.entries;
    scheduler.dispose();
    const small = new PrefixCache(perEntry * 2.5);
    const limited = new Scheduler(lm, { maxBatch: 1, prefillChunk: 64, maxQueue: 4, prefixCache: small });
    for (const t of ["alpha", "beta", "gamma", "delta"]) await collect(limited.submit(request(t, { maxTokens: 2 })));
    expect(small.bytes).toBeLessThanOrEqual(perEntry * 2.5);
    expect(small.entries).toBeGreaterThan(0);
    limited.dispose();
  });
});
