// Speculative decoding: greedy answers are the tokens the model gives alone, sampled answers
// keep its distribution (the speculative sampling rule), processors are respected, a grammar
// turns speculation off, and a batch of sequences takes back each one's rejected drafts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { BatchGenerator, generateTokens, type SequenceEvent } from "../src/engine/batch";
import { complete, soloScheduler } from "../src/engine/generate";
import { defaultSampling, makeSampler, randomKeys, samplingLogits, type SamplingParams } from "../src/engine/sampling";
import { lookupDraft, verify, type SpeculatingSequence, type SpeculationOptions } from "../src/engine/speculative";
import { PrefixCache } from "../src/engine/prefix-cache";
import { defaultNumDraft } from "../src/store/aliases";
import * as mx from "../src/mlx";
import { loadModel, type LoadedModel } from "../src/models/load";
import { forward, makeCaches } from "../src/models";
import type { KvQuantization } from "../src/models/cache";
import { resolveModelPath } from "../src/store/resolve";
import { speculationFlags } from "../src/cmd/options";
import { cliRunner } from "./helpers/cli";
import { post, serve, tinyModel } from "./helpers/serve";
import { smolVocabSize, writeTinyModel } from "./helpers/tiny-model";

const root = mkdtempSync(join(tmpdir(), "mlx-spec-"));
let tiny: LoadedModel;
let otherTiny: LoadedModel;
beforeAll(() => {
  writeTinyModel(join(root, "tiny"));
  // Its embedding padded past the vocabulary (as Qwen2.5's smaller models against its larger):
  // its logits are wider than the model's, and every draft it makes is within the model's.
  writeTinyModel(join(root, "other"), { seed: 7, vocabSize: smolVocabSize + 64 });
  writeTinyModel(join(root, "wide"), { headDim: 32 });
  tiny = loadModel(join(root, "tiny"));
  otherTiny = loadModel(join(root, "other"));
});
afterAll(() => {
  tiny.free();
  otherTiny.free();
});

/** The tiny model with its token 300 renamed: a vocabulary the tiny model cannot draft for. Returns that id. */
function writeRenamedTokenModel(dir: string): number {
  writeTinyModel(dir);
  const file = join(dir, "tokenizer.json");
  const tokenizer = JSON.parse(readFileSync(file, "utf8"));
  const [word, id] = Object.entries(tokenizer.model.vocab as Record<string, number>).find(([, i]) => i === 300)!;
  delete tokenizer.model.vocab[word];
  tokenizer.model.vocab[`${word}_renamed`] = id;
  writeFileSync(file, JSON.stringify(tokenizer));
  return id;
}

// Repeats, so prompt lookup finds drafts in it (random weights also repeat themselves).
const prompt = [1, 5, 9, 12, 5, 9, 33, 44, 5, 9, 12, 7, 8, 5, 9];

function tokens(lm: LoadedModel, sampling: SamplingParams, maxTokens: number, speculation?: SpeculationOptions) {
  return [...generateTokens(lm.model, { promptIds: prompt, sampling, maxTokens }, lm.kvQuantization, { speculation })];
}
const ids = (events: SequenceEvent[]) => events.map((e) => e.token);
const drafted = (events: SequenceEvent[]) => events.reduce((n, e) => n + (e.drafted ?? 0), 0);

describe("prompt lookup", () => {
  test("drafts what followed the latest earlier occurrence of the last tokens", () => {
    expect(lookupDraft([1, 2, 3, 4, 5, 9, 9, 1, 2, 3, 7, 1, 2, 3], 3)).toEqual([7, 1, 2]);
    expect(lookupDraft([1, 2, 3, 4, 5, 9, 9, 2, 3], 4)).toEqual([4, 5, 9, 9]);
    expect(lookupDraft([1, 2, 3, 4], 3)).toEqual([]);
  });
});

describe("greedy speculation gives the model's own tokens", () => {
  const lookup = { numDraft: 4, maxBatch: 2 };
  test("prompt lookup and a draft model (itself, another), with penalties and logit_bias", () => {
    const cases: [SamplingParams, SpeculationOptions[]][] = [
      [defaultSampling, [lookup, { numDraft: 3, maxBatch: 2, draftModel: tiny.model }]],
      [
        { ...defaultSampling, repetitionPenalty: 1.3, presencePenalty: 0.5, logitBias: new Map([[9, 2]]) },
        [lookup, { numDraft: 2, maxBatch: 2, draftModel: otherTiny.model }],
      ],
    ];
    for (const [sampling, speculations] of cases) {
      const alone = tokens(tiny, sampling, 40);
      for (const speculation of speculations) {
        const events = tokens(tiny, sampling, 40, speculation);
        expect(ids(events)).toEqual(ids(alone));
        expect(drafted(events)).toBeGreaterThan(0);
        // The log-probabilities reported are the model's own too.
        events.forEach((e, i) => expect(e.logprob).toBeCloseTo(alone[i]!.logprob, 3));
      }
    }
  });

  test("a quantized KV cache takes back rejected drafts in place; no step verifies drafts across --kv-quant-start", () => {
    const quantized = loadModel(join(root, "wide"));
    // With a start the answer crosses it: the steps before it keep the cache float, as one at a time.
    const settings: KvQuantization[] = [
      { bits: 8, groupSize: 32 },
      ...[17, 20, 26, 33].map((start) => ({ bits: 4, groupSize: 32, start })),
    ];
    try {
      for (const kv of settings) {
        quantized.kvQuantization = kv;
        const alone = tokens(quantized, defaultSampling, 40);
        const events = tokens(quantized, defaultSampling, 40, lookup);
        expect(drafted(events)).toBeGreaterThan(0);
        expect(ids(events)).toEqual(ids(alone));
      }
    } finally {
      quantized.free();
    }
  });

  test("a rotating KV cache (--max-kv-size) takes back rejected drafts: the tokens decoded in turn, across its compactions", () => {
    // 120 tokens through a 24-position cache compact it every 24 or so steps, at other steps
    // with speculation (several positions at once) than without; the draft model's own rotating
    // cache takes back what the target rejects. Float and quantized (keys per row) caches.
    const wide = loadModel(join(root, "wide"));
    const run = (lm: LoadedModel, speculation?: SpeculationOptions) => [
      ...generateTokens(lm.model, { promptIds: prompt, sampling: defaultSampling, maxTokens: 120 }, lm.kvQuantization, {
        speculation,
        maxKvSize: 24,
      }),
    ];
    try {
      for (const kv of [undefined, { bits: 8, groupSize: 32 }]) {
        wide.kvQuantization = kv;
        const alone = run(wide);
        for (const speculation of [lookup, { numDraft: 5, maxBatch: 2, draftModel: wide.model }]) {
          const events = run(wide, speculation);
          expect(drafted(events)).toBeGreaterThan(0);
          expect(ids(events)).toEqual(ids(alone));
        }
      }
    } finally {
      wide.free();
    }
  });

  test("per-channel quantized keys: no step fills a group after its first position, so every position reads the cache as one at a time", () => {
    const quantized = loadModel(join(root, "wide"));
    try {
      for (const kv of [
        { bits: 4, groupSize: 32 },
        { bits: 8, groupSize: 32, start: 20 },
      ]) {
        quantized.kvQuantization = kv;
        // Itself as its draft drafts every step, so steps land on every position of a group.
        for (const numDraft of [3, 5]) {
          const speculation = { numDraft, maxBatch: 1, draftModel: quantized.model };
          const alone = tokens(quantized, defaultSampling, 80);
          const events = tokens(quantized, defaultSampling, 80, speculation);
          expect(drafted(events)).toBeGreaterThan(0);
          expect(ids(events)).toEqual(ids(alone));
          // The same cache read the same way: the same log-probabilities (to float32 rounding).
          events.forEach((e, i) => expect(e.logprob).toBeCloseTo(alone[i]!.logprob, 4));
        }
      }
    } finally {
      quantized.free();
    }
  });

  test("a prompt's first token comes out of its prefill's step alone, not after the draft model took in the prompt", () => {
    const speculation = { numDraft: 3, maxBatch: 1, draftModel: otherTiny.model };
    const generator = new BatchGenerator(tiny.model, { maxBatch: 1, prefillChunk: 64, speculation });
    try {
      generator.add("0", { promptIds: prompt, sampling: defaultSampling, maxTokens: 24 });
      let first: SequenceEvent[] = [];
      while (first.length === 0) first = generator.step();
      const rest: SequenceEvent[] = [];
      while (!generator.idle) rest.push(...generator.step());
      expect(first.map((e) => e.drafted ?? 0)).toEqual([0]);
      expect(ids([...first, ...rest])).toEqual(ids(tokens(tiny, defaultSampling, 24)));
      expect(drafted(rest)).toBeGreaterThan(0);
    } finally {
      generator.dispose();
    }
  });

  test("a draft stops at an end token: nothing after the answer's end is drafted or counted", () => {
    const alone = ids(tokens(tiny, defaultSampling, 40));
    // An end token the answer reaches a few tokens in (the generator itself does not stop at it).
    const end = alone.slice(3).find((token) => token !== alone[0])!;
    const endTokens = new Set([end]);
    for (const speculation of [
      { numDraft: 8, maxBatch: 1, draftModel: tiny.model, endTokens },
      { numDraft: 8, maxBatch: 1, endTokens },
    ]) {
      const events = tokens(tiny, defaultSampling, 40, speculation);
      expect(ids(events)).toEqual(alone);
      // A step's events start with its kept draft: an end token there may only be the draft's last.
      let ends = 0;
      events.forEach((e, i) => {
        const at = ids(events.slice(i, i + (e.accepted ?? 0))).indexOf(end);
        if (at < 0) return;
        ends++;
        expect(at).toBe(e.drafted! - 1);
      });
      expect(ends).toBeGreaterThan(0);
    }
    expect(lookupDraft([1, 2, 3, 2, 7, 1, 2, 3], 4, new Set([7]))).toEqual([2, 7]);
  });

  test("in a batch, each sequence takes back its own rejected drafts", () => {
    // Speculating at every batch size (the scheduler stops above speculationMaxBatch).
    const prompts = [prompt, [3, 4, 5, 3, 4, 6, 3, 4], [10, 11, 12, 13]];
    const run = (speculation?: SpeculationOptions) => {
      const generator = new BatchGenerator(tiny.model, { maxBatch: 3, prefillChunk: 64, speculation });
      const answers = prompts.map((): number[] => []);
      try {
        prompts.forEach((p, i) => generator.add(String(i), { promptIds: p, sampling: defaultSampling, maxTokens: 24 }));
        while (!generator.idle) for (const e of generator.step()) answers[Number(e.id)]!.push(e.token);
        return { answers, counts: generator.speculationCounts };
      } finally {
        generator.dispose();
      }
    };
    const alone = run();
    const lookup = run({ numDraft: 4, maxBatch: 3 });
    const drafting = run({ numDraft: 3, maxBatch: 3, draftModel: otherTiny.model });
    expect(lookup.answers).toEqual(alone.answers);
    expect(drafting.answers).toEqual(alone.answers);
    expect(lookup.counts.drafted).toBeGreaterThan(0);
    expect(drafting.counts.drafted).toBeGreaterThan(0);
  });
});

describe("sampled speculation keeps the model's distribution", () => {
  test("the acceptance rule: first tokens drawn as p, with a draft q far from p or a certain draft", () => {
    // A vocabulary of 5; p from the logits, q the draft's (far from p): the first emitted token is p-distributed.
    const logits = [2, 1, 0.5, 0, -1];
    const p = softmax(logits);
    const q = [0.05, 0.05, 0.1, 0.2, 0.6];
    // No seed: a seeded sequence keeps a draft while it is its own draw (tested below).
    const sampling = { ...defaultSampling, temperature: 1 };
    const keys = randomKeys(11);
    const s: SpeculatingSequence = {
      history: [],
      next: 0,
      sampling,
      processors: [],
      sample: makeSampler(sampling, keys),
      keys,
    };
    const draws = 3000;
    const draftSample = makeSampler(sampling, randomKeys(5));
    const rows = mx.array(Float32Array.from([...logits, ...logits]), [2, 5]);
    const qLog = mx.array(Float32Array.from(q.map(Math.log)), [1, 5]);
    // A draft model's token drawn from q, and prompt lookup's certain draft (its least likely token under p).
    for (const certain of [false, true]) {
      const counts = [0, 0, 0, 0, 0];
      for (let i = 0; i < draws; i++) {
        const token = certain ? 4 : mx.scope(() => draftSample(qLog).item());
        const probabilities = certain ? undefined : mx.array(Float32Array.from(q), [1, 5]);
        const v = verify(s, rows, { tokens: [token], probabilities }, false);
        probabilities?.free();
        counts[v.tokens[0]!]!++;
      }
      const frequencies = counts.map((n) => n / draws);
      // Three standard deviations of a frequency over 3,000 draws is under 0.03.
      frequencies.forEach((f, i) => expect(Math.abs(f - p[i]!)).toBeLessThan(0.03));
    }
  });

  test("on a tiny model, the first three tokens sampled with speculation follow the model's own distribution", () => {
    // Top-k keeps the answers few (3 × 3 × 3), so their exact probabilities are few forward
    // passes. The first token comes from the prompt's own pass; the next two are speculated.
    const sampling = { ...defaultSampling, temperature: 0.8, topK: 3 };
    const exact = new Map<string, number>();
    const next = (context: number[]) =>
      mx.scope(() => {
        const logits = forward(
          tiny.model,
          mx.array(Int32Array.from(context), [1, context.length]),
          makeCaches(tiny.model),
        );
        const last = mx.slice(logits, [0, context.length - 1, 0], [1, context.length, logits.shape[2]!]);
        const row = mx.reshape(last, [1, -1]);
        const probabilities = mx.softmax(samplingLogits(sampling, mx.subtract(row, mx.logsumexp(row, -1, true))));
        return [...probabilities.toTyped()].flatMap((p, token) => (Number(p) > 0 ? [[token, Number(p)] as const] : []));
      });
    for (const [first, p1] of next(prompt))
      for (const [second, p2] of next([...prompt, first]))
        for (const [third, p3] of next([...prompt, first, second]))
          exact.set(`${first},${second},${third}`, p1 * p2 * p3);
    const draws = 400;
    // A draft model, which always drafts: prompt lookup would draft only after a first token
    // whose pair with the prompt's last one the prompt holds (its certain drafts are checked above).
    const speculation = { numDraft: 2, maxBatch: 2, draftModel: otherTiny.model };
    const counts = new Map<string, number>();
    let draftedTokens = 0;
    for (let i = 0; i < draws; i++) {
      const events = tokens(tiny, { ...sampling, seed: i }, 3, speculation);
      draftedTokens += drafted(events);
      const key = ids(events).join(",");
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    expect(draftedTokens).toBeGreaterThan(0);
    for (const key of counts.keys()) expect(exact.has(key)).toBe(true);
    for (const [key, p] of exact) {
      // Four standard deviations of a frequency over `draws` draws.
      const tolerance = 4 * Math.sqrt((p * (1 - p)) / draws) + 0.005;
      expect(Math.abs((counts.get(key) ?? 0) / draws - p)).toBeLessThan(tolerance);
    }
  });
});

describe("the draft model's prefix cache", () => {
  test("a follow-up request's draft starts from what the draft computed for the one before; the answer is unchanged", () => {
    const draftPrefixCache = new PrefixCache(Number.MAX_SAFE_INTEGER, 1);
    const speculation = { numDraft: 4, maxBatch: 2, draftModel: tiny.model, draftPrefixCache };
    const run = (promptIds: number[], o?: { speculation: SpeculationOptions }) => [
      ...generateTokens(tiny.model, { promptIds, sampling: defaultSampling, maxTokens: 16 }, tiny.kvQuantization, o),
    ];
    const first = ids(run(prompt, { speculation }));
    expect(draftPrefixCache.entries).toBe(1);
    const followUp = [...prompt, ...first, 7, 8, 5, 9];
    const events = run(followUp, { speculation });
    // Before, the draft model prefilled the whole follow-up again (a long conversation's every turn).
    expect(draftPrefixCache.hitTokens).toBeGreaterThan(prompt.length);
    expect(ids(events)).toEqual(ids(run(followUp)));
    expect(drafted(events)).toBeGreaterThan(0);
  });
});

describe("a seeded sampled answer is the one the model gives alone", () => {
  // Before: the speculative sampling rule drew from the seed's keys in its own order, so the
  // answer changed with speculation, and on a server with how many other requests ran with it.
  test("token for token, with prompt lookup and with a draft model (itself, another)", () => {
    const lookup = { numDraft: 4, maxBatch: 2 };
    const speculations = [lookup, { ...lookup, draftModel: tiny.model }, { ...lookup, draftModel: otherTiny.model }];
    let [draftedTokens, acceptedTokens] = [0, 0];
    for (let seed = 0; seed < 4; seed++) {
      // Top-k keeps random weights' draws few, so drafts are kept as well as rejected.
      const sampling = { ...defaultSampling, temperature: 0.8, topK: 3, seed };
      const alone = ids(tokens(tiny, sampling, 24));
      for (const speculation of speculations) {
        const events = tokens(tiny, sampling, 24, speculation);
        expect(ids(events)).toEqual(alone);
        draftedTokens += drafted(events);
        acceptedTokens += events.reduce((n, e) => n + (e.accepted ?? 0), 0);
      }
    }
    expect(acceptedTokens).toBeGreaterThan(0);
    expect(acceptedTokens).toBeLessThan(draftedTokens);
  });

  test("serve --prompt-lookup: alone, beside another request, and as a server without speculation", async () => {
    const model = tinyModel();
    const plain = serve();
    const speculating = serve({ speculation: { numDraft: 4 } });
    try {
      const client = (url: string) => new OpenAI({ baseURL: `${url}/v1`, apiKey: "none" });
      const ask = async (url: string) => {
        const r = await client(url).completions.create({
          model,
          prompt: "one two three one two three one two",
          max_tokens: 24,
          temperature: 0.8,
          top_k: 3,
          seed: 5,
        } as OpenAI.CompletionCreateParamsNonStreaming);
        return r.choices[0]!.text;
      };
      const alone = await ask(plain.url);
      expect(await ask(speculating.url)).toBe(alone);
      // Two sequences decode together for a while: speculation pauses, then resumes.
      const [beside] = await Promise.all([
        ask(speculating.url),
        client(speculating.url).completions.create({ model, prompt: "four five", max_tokens: 8, temperature: 0 }),
      ]);
      expect(beside).toBe(alone);
      const stats = (await (await fetch(`${speculating.url}/stats`)).json()) as {
        models: { speculation: { drafted_tokens: number } }[];
      };
      expect(stats.models[0]!.speculation.drafted_tokens).toBeGreaterThan(0);
    } finally {
      await plain.stop();
      await speculating.stop();
    }
  });
});

function softmax(xs: number[]): number[] {
  const m = Math.max(...xs);
  const e = xs.map((x) => Math.exp(x - m));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / sum);
}

describe("requests", () => {
  test("a grammar turns speculation off: the same JSON, nothing drafted", async () => {
    const spec = {
      prompt: { kind: "ids" as const, ids: prompt },
      sampling: defaultSampling,
      maxTokens: 30,
      format: { format: "json" as const, param: "format" },
    };
    const plain = await complete(soloScheduler(tiny), spec);
    tiny.speculation = { numDraft: 4 };
    try {
      const speculating = await complete(soloScheduler(tiny), spec);
      expect(speculating.tokenIds).toEqual(plain.tokenIds);
      expect(speculating.stats.draftedTokens).toBe(0);
    } finally {
      tiny.speculation = undefined;
    }
  });

  test("a thinking budget turns speculation off: the budget closes the reasoning as without", async () => {
    // The budget's processor tracks the reasoning token by token: fed drafts the model then
    // rejected, it once took a drafted </think> as written and stopped forcing the close.
    const thinker = join(root, "thinker");
    writeTinyModel(thinker, {
      modelType: "qwen3",
      chatTemplate:
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}<|im_start|>assistant\n<think>\n",
    });
    const mlx = cliRunner(join(root, "home"));
    const args = ["run", "-m", thinker, "--max-tokens", "30", "--thinking-budget", "4", "--json", "Hi"];
    const plain = await mlx(args);
    expect(plain.code).toBe(0);
    const alone = JSON.parse(plain.stdout);
    expect(alone.reasoning).not.toContain("</");
    for (const speculation of [["--draft-model", thinker], ["--prompt-lookup"]]) {
      const speculating = await mlx([...args, ...speculation]);
      expect(speculating.code).toBe(0);
      expect(JSON.parse(speculating.stdout)).toMatchObject({ reasoning: alone.reasoning, text: alone.text });
    }
  });

  test("serve --prompt-lookup: answers as without, counts in /stats and /metrics", async () => {
    const model = tinyModel();
    const ask = async (url: string) => {
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none" });
      const r = await client.completions.create({
        model,
        prompt: "one two three one two three one two",
        max_tokens: 20,
        temperature: 0,
      });
      return r.choices[0]!.text;
    };
    const plain = serve();
    const speculating = serve({ speculation: { numDraft: 4 } });
    try {
      expect(await ask(speculating.url)).toBe(await ask(plain.url));
      const stats = (await (await fetch(`${speculating.url}/stats`)).json()) as { models: { speculation: unknown }[] };
      expect(stats.models[0].speculation).toMatchObject({ method: "prompt-lookup", num_draft: 4, max_batch: 1 });
      const metrics = await (await fetch(`${speculating.url}/metrics`)).text();
      expect(metrics).toContain("mlx_speculative_drafted_tokens_total{");
      expect(metrics).toContain("mlx_speculative_acceptance_rate{");
    } finally {
      await plain.stop();
      await speculating.stop();
    }
  });

  test("serve --prompt-lookup: a seeded request answers the same when the prefix cache holds its prompt", async () => {
    // A prompt held whole joins the batch with its last token as the next input: its first
    // token once came from a speculative step, whose draws differ from a prefill's sample.
    const model = tinyModel();
    const server = serve({ speculation: { numDraft: 4 } });
    try {
      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none" });
      const ask = async () => {
        const r = await client.completions.create({
          model,
          prompt: "one two three one two three one two three one two",
          max_tokens: 16,
          temperature: 1,
          seed: 7,
        });
        return { text: r.choices[0]!.text, cached: r.usage!.prompt_tokens_details?.cached_tokens ?? 0 };
      };
      const fresh = await ask();
      expect(fresh.cached).toBe(0);
      for (let i = 0; i < 3; i++) {
        const again = await ask();
        expect(again.cached).toBeGreaterThan(0);
        expect(again.text).toBe(fresh.text);
      }
    } finally {
      await server.stop();
    }
  });

  test("serve --draft-model: another model it cannot draft for is served without speculation; the server's own model speculates, and refuses a draft it cannot use", async () => {
    // Before: every request for the other model failed ("cannot draft for this model").
    const model = join(root, "tiny");
    const other = join(root, "odd-served");
    writeRenamedTokenModel(other);
    const speculation = { draftModel: model, numDraft: 3 };
    const plain = serve({ maxLoadedModels: 2 });
    const server = serve({ defaultModel: model, speculation, maxLoadedModels: 2 });
    const refusing = serve({ defaultModel: other, speculation });
    const ask = (url: string, name: string) =>
      post(`${url}/v1/completions`, { model: name, prompt: "one two one two one two", max_tokens: 12, temperature: 0 });
    const drafted = async (name: string) => {
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      const line = metrics
        .split("\n")
        .find((l) => l.startsWith(`mlx_speculative_drafted_tokens_total{model="${name}"}`));
      return Number(line?.split(" ").at(-1) ?? 0);
    };
    try {
      for (const name of [other, model]) {
        const r = await ask(server.url, name);
        expect([name, r.status]).toEqual([name, 200]);
        expect(r.json.choices[0].text).toBe((await ask(plain.url, name)).json.choices[0].text);
      }
      expect(await drafted(other)).toBe(0);
      expect(await drafted(model)).toBeGreaterThan(0);
      // The server's own model (-m) is what --draft-model is for: there a mismatch stays an error.
      const refused = await ask(refusing.url, other);
      expect(refused.status).toBe(400);
      expect(refused.json.error.message).toContain("cannot draft for this model");
    } finally {
      await Promise.all([plain.stop(), server.stop(), refusing.stop()]);
    }
  });

  test("a draft model that cannot be found or loaded is said to be the draft model, not the model asked for", async () => {
    // Before: a server's client got a 404 on `model` naming a model it never asked for.
    const missing = join(root, "no-such-draft");
    const server = serve({ speculation: { draftModel: missing, numDraft: 3 } });
    try {
      const r = await post(`${server.url}/v1/chat/completions`, {
        model: tinyModel(),
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 3,
      });
      expect(r.status).toBe(400);
      expect(r.json.error).toMatchObject({ param: "draft_model", code: "unsupported" });
      expect(r.json.error.message).toStartWith("draft model: ");
      expect(r.json.error.message).toContain(missing);
    } finally {
      await server.stop();
    }
    const mlx = cliRunner(join(root, "home"));
    const unloadable = await mlx(["run", "-m", join(root, "tiny"), "--draft-model", root, "--max-tokens", "3", "Hi"]);
    expect(unloadable.code).not.toBe(0);
    expect(unloadable.stderr.trim()).toBe(
      `error: draft model: ${root} has no config.json (expected an MLX-community model directory)`,
    );
    // A remote alias has no weights to draft with. Before: said of `model` (a server's client read
    // that the model it asked for was refused), without a word of the draft.
    const home = join(root, "remote-draft-home");
    mkdirSync(home, { recursive: true });
    writeFileSync(
      join(home, "models.toml"),
      '[models.far]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "x"\n',
    );
    const remote = await cliRunner(home)(["run", "-m", join(root, "tiny"), "--draft-model", "far", "Hi"]);
    expect(remote.code).not.toBe(0);
    expect(remote.stderr.trim()).toStartWith("error: draft model: model 'far' is served by a remote openai provider");
  });

  test("a draft model whose logits are narrower or wider than the model's (a padded embedding) drafts for it", async () => {
    // Before: refused ("it scores 49216 tokens per step, the model 49152"), though the tokens agree.
    const mlx = cliRunner(join(root, "home"));
    const [tinyDir, otherDir] = [join(root, "tiny"), join(root, "other")];
    for (const [model, draft] of [
      [tinyDir, otherDir],
      [otherDir, tinyDir],
    ])
      for (const temp of ["0", "0.9"]) {
        const args = [
          "run",
          "-m",
          model,
          "--max-tokens",
          "12",
          "--temp",
          temp,
          "--seed",
          "1",
          "--raw",
          "--json",
          "one two",
        ];
        const drafting = await mlx([...args.slice(0, -1), "--draft-model", draft, "--verbose", "one two"]);
        expect(drafting.stderr).toMatch(/speculation: \d+ of [1-9]\d* drafted tokens accepted/);
        expect(drafting.code).toBe(0);
        const ids = (out: string) => JSON.parse(out).token_ids as number[];
        if (temp === "0") expect(ids(drafting.stdout)).toEqual(ids((await mlx(args)).stdout));
      }
  });

  test("mlx run and chat: a draft model of another vocabulary, or both methods, is a one-line error; counts shown", async () => {
    const mlx = cliRunner(join(root, "home"));
    const odd = join(root, "odd");
    const id = writeRenamedTokenModel(odd);
    const model = join(root, "tiny");
    const mismatch = await mlx(["run", "-m", model, "--draft-model", odd, "--max-tokens", "3", "Hi"]);
    expect(mismatch.code).not.toBe(0);
    expect(mismatch.stderr.trim().split("\n")).toHaveLength(1);
    expect(mismatch.stderr).toContain(`cannot draft for this model: token ${id} is`);
    const both = await mlx(["run", "-m", model, "--draft-model", model, "--prompt-lookup", "Hi"]);
    expect(both.stderr.trim()).toBe("error: give --draft-model or --prompt-lookup, not both");
    const ok = await mlx(["run", "-m", model, "--draft-model", model, "--max-tokens", "8", "--verbose", "Hi"]);
    expect(ok.code).toBe(0);
    expect(ok.stderr).toMatch(/speculation: \d+ of \d+ drafted tokens accepted/);
    const chat = await mlx(
      ["chat", "-m", model, "--prompt-lookup", "--max-tokens", "24", "--stats"],
      "one two one two one two\n",
    );
    expect(chat.code).toBe(0);
    expect(chat.stderr).toMatch(/\d+\/\d+ drafted tokens accepted/);
  });
});

test("flags: an empty --draft-model is an error; speculation goes with --max-kv-size", async () => {
  // Before: '' fell back to prompt lookup.
  expect(() => speculationFlags({ "draft-model": "" })).toThrow("--draft-model needs a model");
  expect(speculationFlags({ "prompt-lookup": true, "max-kv-size": "64" })).toEqual({ numDraft: defaultNumDraft });
  expect(speculationFlags({ "max-kv-size": "64" })).toBeUndefined();
  const mlx = cliRunner(join(root, "home"));
  const args = ["run", "-m", join(root, "tiny"), "--max-kv-size", "24", "--temp", "0", "--max-tokens", "60"];
  const text = "one two three one two three one two three";
  const rotating = await mlx([...args, "--prompt-lookup", "--verbose", text]);
  expect(rotating.code).toBe(0);
  expect(rotating.stderr).toMatch(/speculation: [1-9]\d* of \d+ drafted tokens accepted/);
  expect(rotating.stdout).toBe((await mlx([...args, text])).stdout);
});

test("models.toml: prompt_lookup or draft_model with num_draft on an alias; both is an error", async () => {
  const home = join(root, "alias-home");
  const mlx = cliRunner(home);
  const model = join(root, "tiny");
  const write = (entry: string) => {
    mkdirSync(home, { recursive: true });
    writeFileSync(join(home, "models.toml"), `[models.spec]\nsource = "${model}"\n${entry}\n`);
  };
  write("prompt_lookup = true\nnum_draft = 5");
  const looked = await mlx(["run", "-m", "spec", "--max-tokens", "24", "--verbose", "one two one two one two"]);
  expect(looked.code).toBe(0);
  expect(looked.stderr).toMatch(/speculation: \d+ of \d+ drafted tokens accepted/);
  // Switched to in chat (/model), the alias speculates too (it once loaded without it).
  const switched = await mlx(
    ["chat", "-m", model, "--max-tokens", "24", "--stats"],
    "/model spec\none two one two one two\n",
  );
  expect(switched.code).toBe(0);
  expect(switched.stderr).toContain("now chatting with spec");
  expect(switched.stderr).toMatch(/\d+\/\d+ drafted tokens accepted/);
  write(`prompt_lookup = true\ndraft_model = "${model}"`);
  const both = await mlx(["run", "-m", "spec", "Hi"]);
  expect(both.code).not.toBe(0);
  expect(both.stderr).toContain("model 'spec': give draft_model or prompt_lookup, not both");
  // With a rotating cache the alias speculates too.
  write("prompt_lookup = true\nmax_kv_size = 24");
  const rotating = await mlx(["run", "-m", "spec", "--max-tokens", "40", "--verbose", "one two one two one two"]);
  expect(rotating.code).toBe(0);
  expect(rotating.stderr).toMatch(/speculation: \d+ of \d+ drafted tokens accepted/);
});

test("an alias's draft_model that cannot draft is its models.toml's fault: a 500 naming the entry, not a 400", async () => {
  const home = join(root, "alias-draft-home");
  mkdirSync(home, { recursive: true });
  const file = join(home, "models.toml");
  const missing = join(root, "no-such-draft");
  writeFileSync(file, `[models.spec]\nsource = "${join(root, "tiny")}"\ndraft_model = "${missing}"\n`);
  const storeBefore = process.env.MLX_HOME;
  process.env.MLX_HOME = home;
  const server = serve();
  try {
    const r = await post(`${server.url}/v1/chat/completions`, {
      model: "spec",
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 3,
    });
    // Before: a 400 on a draft_model the client never sent (its clients do not retry, nor tell the operator).
    expect(r.status).toBe(500);
    expect(r.json.error).toMatchObject({ type: "server_error", code: "invalid_config" });
    expect(r.json.error.message).toStartWith(`${file}:1: model 'spec': draft model: `);
    expect(r.json.error.message).toContain(missing);
  } finally {
    await server.stop();
    process.env.MLX_HOME = storeBefore;
  }
});

test("--num-draft past 64 (a typo for a small number) is an error, as num_draft in models.toml", async () => {
  // Before: --num-draft 1000000 drafted as much as the answer had room for, every step.
  for (const value of ["65", "1000000", "99999999999999999999"])
    expect(() => speculationFlags({ "prompt-lookup": true, "num-draft": value })).toThrow(
      `--num-draft must be at most 64 (got '${value}')`,
    );
  expect(speculationFlags({ "prompt-lookup": true, "num-draft": "64" })).toEqual({ numDraft: 64 });
  for (const value of ["0", "-1", "abc", "1.5", ""])
    expect(() => speculationFlags({ "prompt-lookup": true, "num-draft": value })).toThrow(
      `--num-draft must be a whole number > 0 (got '${value}')`,
    );
  const home = join(root, "num-draft-home");
  mkdirSync(home, { recursive: true });
  writeFileSync(
    join(home, "models.toml"),
    `[models.spec]\nsource = "${join(root, "tiny")}"\nprompt_lookup = true\nnum_draft = 500\n`,
  );
  const huge = await cliRunner(home)(["run", "-m", "spec", "Hi"]);
  expect(huge.code).not.toBe(0);
  expect(huge.stderr).toContain("model 'spec': num_draft must be at most 64");
});

describe("the default model", () => {
  /** Its greedy tokens for `text` alone, with prompt lookup and with itself as its draft. */
  async function greedyThreeWays(text: string, maxTokens: number, maxKvSize?: number): Promise<number[][]> {
    const lm = loadModel(await resolveModelPath(undefined));
    try {
      const promptIds = lm.tokenizer.encode(text, { addSpecialTokens: true });
      const run = (speculation?: SpeculationOptions) =>
        [
          ...generateTokens(lm.model, { promptIds, sampling: defaultSampling, maxTokens }, undefined, {
            speculation,
            maxKvSize,
          }),
        ].map((e) => e.token);
      return [run(), run({ numDraft: 4, maxBatch: 2 }), run({ numDraft: 3, maxBatch: 2, draftModel: lm.model })];
    } finally {
      lm.free();
    }
  }

  test("greedy answers are the same with prompt lookup and with itself as its draft", async () => {
    const code = "function add(a, b) {\n  // adds two numbers\n  return a + b;\n}\nconsole.log(add(1, 2));\n";
    const [alone, lookup, drafted] = await greedyThreeWays(`Repeat this code, renaming add to sum:\n\n${code}`, 48);
    expect(lookup).toEqual(alone!);
    expect(drafted).toEqual(alone!);
  });

  test("mlx run --json counts what prompt lookup drafted and the model kept; without speculation, no counts", async () => {
    const mlx = cliRunner(process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home"));
    const code = "function add(a, b) {\n  return a + b;\n}\n";
    const ask = ["run", "--json", "--temp", "0", "--max-tokens", "32", `Repeat this code:\n\n${code}`];
    const drafted = JSON.parse((await mlx([...ask, "--prompt-lookup"])).stdout).stats;
    expect(drafted.drafted_tokens).toBeGreaterThan(0);
    expect(drafted.accepted_tokens).toBeLessThanOrEqual(drafted.drafted_tokens);
    expect(JSON.parse((await mlx(ask)).stdout).stats).not.toHaveProperty("drafted_tokens");
  });

  test("with a rotating KV cache (--max-kv-size 48), over 160 tokens: the same greedy answers", async () => {
    const text = "The cat sat on the mat. The dog sat on the log. The cat sat on the log. ";
    const [alone, lookup, drafted] = await greedyThreeWays(`Continue the pattern:\n\n${text.repeat(3)}`, 160, 48);
    expect(lookup).toEqual(alone!);
    expect(drafted).toEqual(alone!);
  });
});
