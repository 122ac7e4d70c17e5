// `mlx serve` through the official OpenAI client: chat and completions, streamed and whole,
// stop strings, usage, logprobs, sampling options, auth and unknown models; parameters at their
// limits (and raw requests for what the client would not send): n against the server's capacity,
// logit_bias keys, system_fingerprint, streamed text offsets.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { completeAlone } from "./helpers/generate";
import { parseChatRequest } from "../src/api/openai";
import { chatTokens } from "../src/engine/prompt";
import { defaultSampling } from "../src/engine/sampling";
import { loadModel } from "../src/models/load";
import type { RunningServer } from "../src/server/app";
import { post, serve, tinyModel } from "./helpers/serve";
import { tinyFimTokens, writeFimTinyModel } from "./helpers/tiny-model";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

let server: RunningServer;
let client: OpenAI;
let model: string;
const messages = [{ role: "user" as const, content: "Tell me a story" }];

beforeAll(() => {
  model = tinyModel();
  server = serve();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 20_000 });
});
afterAll(() => server.stop());

describe("OpenAI chat completions", () => {
  test("a whole answer: greedy text equals the engine's, usage and finish_reason", async () => {
    const r = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
    expect(r.object).toBe("chat.completion");
    expect(r.id).toMatch(/^chatcmpl-/);
    expect(r.model).toBe(model);
    const choice = r.choices[0]!;
    expect(choice.message.role).toBe("assistant");
    expect(["stop", "length"]).toContain(choice.finish_reason);
    expect(r.usage!.completion_tokens).toBeLessThanOrEqual(12);
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + r.usage!.completion_tokens);
    expect(r.usage!.prompt_tokens_details!.cached_tokens).toBe(0);

    // The same prompt through the engine directly gives the same text.
    const lm = loadModel(model);
    const ids = chatTokens(lm.tokenizer, messages);
    expect(r.usage!.prompt_tokens).toBe(ids.length);
    const alone = await completeAlone(lm, ids, { sampling: defaultSampling, maxTokens: 12 });
    lm.free();
    expect(choice.message.content).toBe(alone.text);
  });

  test("streaming: a role chunk, content deltas, a finish chunk, the usage chunk, [DONE]", async () => {
    const whole = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0 });
    const stream = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 10,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let role: string | undefined;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined | null;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      expect(chunk.object).toBe("chat.completion.chunk");
      if (chunk.usage) {
        expect(chunk.choices).toEqual([]);
        usage = chunk.usage;
        continue;
      }
      const c = chunk.choices[0]!;
      role ??= c.delta.role;
      text += c.delta.content ?? "";
      if (c.finish_reason) finish = c.finish_reason;
    }
    expect(chunks).toBeGreaterThan(2);
    expect(role).toBe("assistant");
    expect(text).toBe(whole.choices[0]!.message.content!);
    expect(finish).toBe(whole.choices[0]!.finish_reason);
    expect(usage).toEqual(whole.usage!);
  });

  test("stream_options.include_obfuscation is taken either way (a local server pads no chunk)", async () => {
    for (const include_obfuscation of [false, true]) {
      const stream = await client.chat.completions.create({
        model,
        messages,
        max_tokens: 3,
        stream: true,
        stream_options: { include_usage: true, include_obfuscation },
      });
      let usage: OpenAI.CompletionUsage | undefined | null;
      for await (const chunk of stream) {
        expect(chunk).not.toHaveProperty("obfuscation");
        usage ??= chunk.usage;
      }
      expect(usage?.completion_tokens).toBeGreaterThan(0);
    }
    const misspelt = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages,
      stream: true,
      stream_options: { include_obfuscation: "no" },
    });
    expect(misspelt.status).toBe(400);
    expect(misspelt.json.error.param).toBe("stream_options.include_obfuscation");
  });

  test("a stop string ends the answer before it (finish_reason stop, vLLM's stop_reason naming it), streamed or not", async () => {
    const full = (await client.chat.completions.create({ model, messages, max_tokens: 20, temperature: 0 })).choices[0]!
      .message.content!;
    expect(full.length).toBeGreaterThan(10);
    const stop = full.slice(6, 10);
    const expected = full.slice(0, full.indexOf(stop));
    const r = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 20,
      temperature: 0,
      stop: [stop, "never-there"],
    });
    expect(r.choices[0]!.message.content).toBe(expected);
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect((r.choices[0] as unknown as { stop_reason: string }).stop_reason).toBe(stop);
    const stream = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 20,
      temperature: 0,
      stop,
      stream: true,
    });
    let text = "";
    let finish: string | null = null;
    let stopReason: string | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      stopReason ??= (chunk.choices[0] as { stop_reason?: string } | undefined)?.stop_reason;
    }
    expect(text).toBe(expected);
    expect(finish).toBe("stop");
    expect(stopReason).toBe(stop);
  });

  test("logprobs with top_logprobs: one entry per token, alternatives sorted, the greedy choice on top", async () => {
    const r = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 6,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = r.choices[0]!.logprobs!.content!;
    expect(content.length).toBe(r.usage!.completion_tokens);
    for (const entry of content) {
      expect(entry.logprob).toBeLessThanOrEqual(0);
      expect(entry.top_logprobs.length).toBe(3);
      const values = entry.top_logprobs.map((t) => t.logprob);
      expect([...values].sort((a, b) => b - a)).toEqual(values);
      expect(entry.top_logprobs[0]!.token).toBe(entry.token); // greedy picks the most likely
      expect(entry.logprob).toBeCloseTo(entry.top_logprobs[0]!.logprob, 4);
      expect(Buffer.from(entry.bytes!).toString("utf8")).toBe(entry.token);
    }
    expect(content.map((e) => e.token).join("")).toBe(r.choices[0]!.message.content!);
  });

  test("logprobs without alternatives: an entry for a token whose text waited on a stop sequence's first characters", async () => {
    const ask = { model, messages, max_tokens: 8, temperature: 0, logprobs: true } as const;
    const plain = await client.chat.completions.create(ask);
    const tokens = plain.choices[0]!.logprobs!.content!;
    expect(tokens.length).toBe(plain.usage!.completion_tokens);
    // A stop sequence that starts as the second token's text and never matches: that token's text
    // is held back until the next token shows it is no stop.
    const stop = `${tokens[1]!.token}\u0001`;
    const held = await client.chat.completions.create({ ...ask, stop });
    const content = held.choices[0]!.logprobs!.content!;
    expect(held.choices[0]!.message.content).toBe(plain.choices[0]!.message.content);
    expect(content.map((e) => e.token)).toEqual(tokens.map((e) => e.token));
    const stream = await client.chat.completions.create({ ...ask, stop, stream: true });
    const streamed: string[] = [];
    for await (const chunk of stream) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []).map((e) => e.token));
    expect(streamed).toEqual(tokens.map((e) => e.token));
  });

  test("sampling: a seed repeats, top_k/top_p/min_p/repetition_penalty accepted; penalties change the answer", async () => {
    const sampled = (seed: number) =>
      client.chat.completions.create({
        model,
        messages,
        max_tokens: 10,
        temperature: 1,
        top_p: 0.9,
        seed,
        top_k: 50,
        min_p: 0.01,
        repetition_penalty: 1.1,
      } as never) as Promise<OpenAI.ChatCompletion>;
    const [a, b] = [await sampled(7), await sampled(7)];
    expect(a.choices[0]!.message.content).toBe(b.choices[0]!.message.content);
    // A negative seed (OpenAI's and vLLM's take any integer) repeats too.
    const [c, d] = [await sampled(-7), await sampled(-7)];
    expect(c.choices[0]!.message.content).toBe(d.choices[0]!.message.content);
    const plain = await client.chat.completions.create({ model, messages, max_tokens: 30, temperature: 0 });
    const penalized = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 30,
      temperature: 0,
      frequency_penalty: 2,
      presence_penalty: 2,
    });
    expect(penalized.usage!.completion_tokens).toBeGreaterThan(0);
    // A random model repeats itself under greedy decoding; the penalties must discourage that.
    const repeats = (s: string) => s.split(/\s+/).length - new Set(s.split(/\s+/)).size;
    expect(penalized.choices[0]!.message.content).not.toBe(plain.choices[0]!.message.content);
    expect(repeats(penalized.choices[0]!.message.content!)).toBeLessThanOrEqual(
      repeats(plain.choices[0]!.message.content!),
    );
    const biased = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 3,
      temperature: 0,
      logit_bias: { "28": 100 },
    });
    expect(biased.choices[0]!.message.content).toBe(",,,"); // token 28 is "," in SmolLM2's vocabulary
  });

  test("mlx_lm.server's repetition_context_size sets the repetition penalty's window (0: every token, as its tokens[-0:])", async () => {
    const window = (size: number) =>
      parseChatRequest({ model, messages, repetition_penalty: 1.2, repetition_context_size: size }).sampling
        .repetitionContext;
    // Before: a 400 naming it as an unknown field, for clients written against mlx_lm.server.
    expect(window(5)).toBe(5);
    expect(window(0)).toBe(1 << 30);
    const bad = await post(`${server.url}/v1/chat/completions`, { model, messages, repetition_context_size: -1 });
    expect(bad.status).toBe(400);
    expect(bad.json.error.param).toBe("repetition_context_size");
    // A window of one token (the last) penalizes less than one of the whole answer: the answers part.
    const answer = async (size: number) =>
      (
        (await client.chat.completions.create({
          model,
          messages,
          max_tokens: 30,
          temperature: 0,
          repetition_penalty: 3,
          repetition_context_size: size,
        } as never)) as OpenAI.ChatCompletion
      ).choices[0]!.message.content;
    expect(await answer(1)).not.toBe(await answer(0));
  });

  test("max_completion_tokens bounds the answer", async () => {
    const r = await client.chat.completions.create({ model, messages, max_completion_tokens: 3, temperature: 0 });
    expect(r.usage!.completion_tokens).toBeLessThanOrEqual(3);
  });

  test("continue_final_message (vLLM's) goes on with the assistant's start, as Anthropic's prefill does", async () => {
    const started = [...messages, { role: "assistant" as const, content: "Once upon" }];
    const go = (fields: object) =>
      post(`${server.url}/v1/chat/completions`, { model, messages: started, max_tokens: 6, temperature: 0, ...fields });
    const continued = await go({ continue_final_message: true, add_generation_prompt: false });
    expect(continued.status).toBe(200);
    const prefill = await post(`${server.url}/v1/messages`, {
      model,
      messages: started,
      max_tokens: 6,
      temperature: 0,
    });
    expect(continued.json.choices[0].message.content).toBe(prefill.json.content[0].text);
    // Without it, the assistant's message is a turn of its own, and a new one answers it.
    expect((await go({})).json.usage.prompt_tokens).toBeGreaterThan(continued.json.usage.prompt_tokens);
    for (const [fields, param] of [
      [{ continue_final_message: true, add_generation_prompt: true }, "continue_final_message"],
      [{ add_generation_prompt: false }, "add_generation_prompt"],
    ] as const) {
      const refused = await go(fields);
      expect([refused.status, refused.json.error.param]).toEqual([400, param]);
    }
    const afterUser = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages,
      max_tokens: 1,
      continue_final_message: true,
    });
    expect(afterUser.json.error.message).toContain("needs the last message to be the assistant's text");
  });
});

describe("OpenAI completions and models", () => {
  test("a text completion, whole and streamed, with logprobs", async () => {
    const r = await client.completions.create({
      model,
      prompt: "Once upon a time",
      max_tokens: 8,
      temperature: 0,
      logprobs: 2,
    });
    expect(r.object).toBe("text_completion");
    const choice = r.choices[0]!;
    expect(choice.logprobs!.tokens!.length).toBe(r.usage!.completion_tokens);
    expect(choice.logprobs!.top_logprobs![0]!).toBeObject();
    expect(choice.logprobs!.tokens!.join("")).toBe(choice.text);
    const stream = await client.completions.create({
      model,
      prompt: "Once upon a time",
      max_tokens: 8,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(choice.text);
    expect(usage!.completion_tokens).toBe(r.usage!.completion_tokens);
  });

  test("max_tokens defaults to 16 (OpenAI's default for completions), not the rest of the context", async () => {
    // ignore_eos: the tiny model's random weights could end the answer sooner.
    const r = await post(`${server.url}/v1/completions`, { model, prompt: "Once upon a time", ignore_eos: true });
    expect(r.status).toBe(200);
    expect(r.json.usage.completion_tokens).toBe(16);
    expect(r.json.choices[0].finish_reason).toBe("length");
  });

  test("echo with logprobs: the prompt's tokens lead, the first null, each the logprob it has when generated (lm-eval's loglikelihood)", async () => {
    const lm = loadModel(model);
    const prompt = lm.tokenizer.encode("Once upon a time", { addSpecialTokens: false });
    const answer = await completeAlone(lm, prompt, { sampling: defaultSampling, maxTokens: 4 });
    lm.free();
    expect(answer.tokenIds).toHaveLength(4);
    const generated = await client.completions.create({ model, prompt, max_tokens: 4, temperature: 0, logprobs: 0 });
    // The prompt and that answer, echoed: its last 4 tokens' logprobs are the answer's.
    const ids = [...prompt, ...answer.tokenIds];
    const ask = { model, prompt: ids, max_tokens: 2, temperature: 0, echo: true, logprobs: 2 };
    const r = await client.completions.create(ask);
    const choice = r.choices[0]!;
    const logprobs = choice.logprobs!;
    expect(logprobs.tokens).toHaveLength(ids.length + 2);
    expect(logprobs.token_logprobs![0]).toBeNull();
    expect(logprobs.top_logprobs![0]).toBeNull();
    const echoed = logprobs.token_logprobs!.slice(prompt.length, ids.length) as number[];
    generated.choices[0]!.logprobs!.token_logprobs!.forEach((logprob, i) => expect(echoed[i]!).toBeCloseTo(logprob, 2));
    // Each position's top_logprobs: the 2 likeliest and the prompt's own token (OpenAI's up to logprobs + 1).
    logprobs.top_logprobs!.slice(1).forEach((top, i) => {
      expect(Object.keys(top!).length).toBeGreaterThanOrEqual(2);
      expect(Object.keys(top!).length).toBeLessThanOrEqual(3);
      expect(top![logprobs.tokens![i + 1]!]).toBe(logprobs.token_logprobs![i + 1]!);
    });
    // The text is the prompt's then the answer's; the offsets count every token's text before it.
    expect(choice.text).toBe(logprobs.tokens!.join(""));
    expect(logprobs.text_offset).toEqual(logprobs.tokens!.map((_, i) => logprobs.tokens!.slice(0, i).join("").length));
    // Streamed: the echo comes first, and the chunks add up to the whole answer.
    let text = "";
    const tokens: string[] = [];
    const offsets: number[] = [];
    let first: string | undefined;
    for await (const chunk of await client.completions.create({ ...ask, stream: true })) {
      const c = chunk.choices[0]!;
      first ??= c.text;
      text += c.text;
      tokens.push(...(c.logprobs?.tokens ?? []));
      offsets.push(...(c.logprobs?.text_offset ?? []));
    }
    expect(first).toBe(logprobs.tokens!.slice(0, ids.length).join(""));
    expect({ text, tokens, offsets }).toEqual({
      text: choice.text,
      tokens: logprobs.tokens!,
      offsets: logprobs.text_offset!,
    });
  });

  test("echo with max_tokens 0: the prompt alone, scored (as OpenAI's legacy models and vLLM answer it), whole and streamed", async () => {
    const ask = { model, prompt: "Once upon a time", temperature: 0, echo: true, logprobs: 1 };
    const scored = await client.completions.create({ ...ask, max_tokens: 2 });
    const prompt = await client.completions.create({ ...ask, max_tokens: 0 });
    const length = prompt.usage!.prompt_tokens;
    expect(prompt.usage).toMatchObject({ prompt_tokens: scored.usage!.prompt_tokens, completion_tokens: 0 });
    const { logprobs, ...choice } = prompt.choices[0]!;
    expect(choice).toEqual({ index: 0, text: "Once upon a time", finish_reason: "length" });
    const { tokens, token_logprobs, top_logprobs, text_offset } = scored.choices[0]!.logprobs!;
    expect(logprobs).toEqual({
      tokens: tokens!.slice(0, length),
      token_logprobs: token_logprobs!.slice(0, length),
      top_logprobs: top_logprobs!.slice(0, length),
      text_offset: text_offset!.slice(0, length),
    });
    const chunks = [];
    for await (const chunk of await client.completions.create({
      ...ask,
      prompt: [ask.prompt, "My cat"],
      n: 2,
      max_tokens: 0,
      stream: true,
      stream_options: { include_usage: true },
    }))
      chunks.push(chunk);
    expect(chunks.map((c) => c.choices.map((choice) => [choice.index, choice.text, choice.finish_reason]))).toEqual([
      [[0, ask.prompt, "length"]],
      [[1, ask.prompt, "length"]],
      [[2, "My cat", "length"]],
      [[3, "My cat", "length"]],
      [],
    ]);
    expect(chunks[0]!.choices[0]!.logprobs).toEqual(logprobs);
    expect(chunks.at(-1)!.usage).toMatchObject({ prompt_tokens: length + 2, completion_tokens: 0 });
    // Without echo there is nothing to answer: max_tokens stays at least 1.
    const nothing = await client.completions.create({ model, prompt: "Hi", max_tokens: 0 }).catch((e) => e);
    expect(nothing).toMatchObject({ status: 400, param: "max_tokens" });
  });

  test("echo without logprobs: each choice's text starts with its prompt as sent, batched and streamed alike", async () => {
    const prompts = ["Once upon a time", "My cat"];
    const ask = { model, prompt: prompts, n: 2, max_tokens: 3, temperature: 0 };
    const plain = await client.completions.create(ask);
    const echoed = await client.completions.create({ ...ask, echo: true });
    expect(echoed.choices.map((c) => [c.index, c.text, c.logprobs])).toEqual(
      plain.choices.map((c) => [c.index, prompts[Math.floor(c.index / 2)] + c.text, null]),
    );
    const streamed: string[] = [];
    for await (const chunk of await client.completions.create({ ...ask, echo: true, stream: true }))
      for (const c of chunk.choices) streamed[c.index] = (streamed[c.index] ?? "") + c.text;
    expect(streamed).toEqual(echoed.choices.map((c) => c.text));
  });

  test("a prompt of token ids", async () => {
    const r = await client.completions.create({ model, prompt: [1, 2, 3, 4], max_tokens: 4, temperature: 0 });
    expect(r.usage!.prompt_tokens).toBe(4);
  });

  test("suffix (fill-in-the-middle) puts the prompt and suffix around the model's FIM tokens; without them a 400 says so", async () => {
    const coder = join(mkdtempSync(join(tmpdir(), "mlx-fim-")), "coder");
    writeFimTinyModel(coder, { contextLength: 256 });
    const ids = async (content: string): Promise<number[]> =>
      (await post(`${server.url}/tokenize`, { model: coder, content, add_special: false })).json.tokens;
    const [prefix, suffix] = ["def add(a, b):\n    ", "\n    return c\n"];
    const { prefix: pre, suffix: suf, middle: mid } = tinyFimTokens;
    const asIds = [pre, ...(await ids(prefix)), suf, ...(await ids(suffix)), mid];
    const options = { model: coder, max_tokens: 4, temperature: 0 };
    const filled = await client.completions.create({ ...options, prompt: prefix, suffix });
    const given = await client.completions.create({ ...options, prompt: asIds });
    expect(filled.usage!.prompt_tokens).toBe(asIds.length);
    expect(filled.choices[0]!.text).toBe(given.choices[0]!.text);
    const refused = await post(`${server.url}/v1/completions`, { model, prompt: "def f(", suffix: "\n" });
    expect(refused.status).toBe(400);
    expect(refused.json.error.param).toBe("suffix");
    expect(refused.json.error.message).toStartWith("this model cannot fill in the middle");
    const fromIds = await post(`${server.url}/v1/completions`, { model: coder, prompt: [1, 2], suffix: "\n" });
    expect(fromIds.json.error.message).toBe("'suffix' needs the prompt as text, not token ids");
  });

  test("a batch of prompts: n choices per prompt, in order, each the answer its prompt gets alone; usage counts each prompt once", async () => {
    const prompts = ["Once upon a time", "My cat"];
    const ask = { model, max_tokens: 5, temperature: 0 };
    const alone = await Promise.all(prompts.map((prompt) => client.completions.create({ ...ask, prompt })));
    const batch = await client.completions.create({ ...ask, prompt: prompts, n: 2 });
    expect(batch.choices.map((c) => [c.index, c.text])).toEqual([
      [0, alone[0]!.choices[0]!.text],
      [1, alone[0]!.choices[0]!.text],
      [2, alone[1]!.choices[0]!.text],
      [3, alone[1]!.choices[0]!.text],
    ]);
    const promptTokens = alone[0]!.usage!.prompt_tokens + alone[1]!.usage!.prompt_tokens;
    expect(batch.usage!.prompt_tokens).toBe(promptTokens);
    expect(batch.usage!.completion_tokens).toBe(
      2 * (alone[0]!.usage!.completion_tokens + alone[1]!.usage!.completion_tokens),
    );

    const stream = await client.completions.create({
      ...ask,
      prompt: prompts,
      stream: true,
      stream_options: { include_usage: true },
    });
    const texts = ["", ""];
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      for (const c of chunk.choices) texts[c.index] += c.text;
      usage = chunk.usage ?? usage;
    }
    expect(texts).toEqual(alone.map((r) => r.choices[0]!.text));
    expect(usage!.prompt_tokens).toBe(promptTokens);

    const empty = await post(`${server.url}/v1/completions`, { model, prompt: ["fine", ""] });
    expect(empty.status).toBe(400);
    expect(empty.json.error.param).toBe("prompt.1");
  });

  test("/v1/models lists the loaded model; /v1/models/{id} gives one (its id a path here), or a 404", async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toContain(model);
    const one = await client.models.retrieve(model);
    expect(one).toEqual(list.data.find((m) => m.id === model)!);
    const error = await client.models.retrieve("no-such-model").catch((e) => e);
    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    expect(error.code).toBe("model_not_found");
  });

  test("an unknown model is a 404 with code model_not_found", async () => {
    const error = await client.chat.completions.create({ model: "no-such-model", messages }).catch((e) => e);
    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    expect(error.status).toBe(404);
    expect(error.code).toBe("model_not_found");
  });

  test("a prompt over the context: context_length_exceeded, in OpenAI's and vLLM's words, which LiteLLM maps by", async () => {
    const long = "hello ".repeat(400); // past the tiny model's 256 tokens
    const errors = [
      await client.chat.completions.create({ model, messages: [{ role: "user", content: long }] }).catch((e) => e),
      await client.completions.create({ model, prompt: long }).catch((e) => e),
    ];
    for (const [error, param] of [
      [errors[0], "messages"],
      [errors[1], "prompt"],
    ]) {
      expect(error).toBeInstanceOf(OpenAI.BadRequestError);
      expect(error).toMatchObject({ status: 400, code: "context_length_exceeded", param });
      // LiteLLM's ContextWindowExceededError (and its context-window fallbacks) wants this sentence.
      expect(error.error.message).toMatch(
        /^This model's maximum context length is 256 tokens\. However, the prompt is \d+ tokens/,
      );
    }
  });

  test("an unsupported feature is a 400 that names it (n over 16, unknown fields, legacy functions, images)", async () => {
    const n = await client.chat.completions.create({ model, messages, n: 17 }).catch((e) => e);
    expect(n).toBeInstanceOf(OpenAI.BadRequestError);
    expect(n.param).toBe("n");
    for (const [path, body, param] of [
      ["chat/completions", { messages, verbosity: "low" }, "verbosity"],
      ["chat/completions", { messages, store: true }, "store"],
      ["chat/completions", { messages, service_tier: "flex" }, "service_tier"],
      [
        "chat/completions",
        { messages, stream: true, stream_options: { include_usage: true, x: 1 } },
        "stream_options.x",
      ],
      ["completions", { prompt: "x", metadata: {} }, "metadata"],
      ["completions", { prompt: "x", thinking_budget: 3 }, "thinking_budget"],
    ] as const) {
      const r = await post(`${server.url}/v1/${path}`, { model, ...body });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe(param);
    }
    const functions = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages,
      functions: [{ name: "f", parameters: {} }],
    });
    expect(functions.status).toBe(400);
    expect(functions.json.error.message).toMatch(/use 'tools'/);
    const image = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }],
    });
    expect(image.status).toBe(400);
    expect(image.json.error.param).toBe("messages.0.content.0.type");
  });
});

describe("n choices", () => {
  test("n > 1: the choices decode together, each with its own seed; usage counts the prompt once", async () => {
    const body = { model, messages, max_tokens: 8, temperature: 1, seed: 7 };
    const r = await client.chat.completions.create({ ...body, n: 3 });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    const texts = r.choices.map((c) => c.message.content);
    expect(new Set(texts).size).toBeGreaterThan(1);
    const single = await client.chat.completions.create(body);
    expect(texts[0]).toBe(single.choices[0]!.message.content);
    expect(r.usage!.prompt_tokens).toBe(single.usage!.prompt_tokens);
    expect(r.usage!.completion_tokens).toBe(24);
    // Streamed: each choice's chunks name its index, and add up to the same texts.
    const streamed = ["", "", ""];
    let usage: OpenAI.CompletionUsage | undefined;
    const stream = await client.chat.completions.create({
      ...body,
      n: 3,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) {
      for (const c of chunk.choices) streamed[c.index] += c.delta.content ?? "";
      usage = chunk.usage ?? usage;
    }
    expect(streamed).toEqual(texts as string[]);
    expect(usage!.completion_tokens).toBe(24);
  });

  test("n > 1 with the largest seed: each choice has a seed of its own, wrapped round to 0 past it", async () => {
    const top = Number.MAX_SAFE_INTEGER;
    const body = { model, prompt: "Once upon", max_tokens: 8, temperature: 1 };
    const r = await client.completions.create({ ...body, n: 4, seed: top });
    // Past 2^53, seed + 1 and seed + 2 were the same float: choices 1 and 2 drew the same answer.
    const texts = r.choices.map((c) => c.text);
    expect(new Set(texts).size).toBe(4);
    const alone = async (seed: number) => (await client.completions.create({ ...body, seed })).choices[0]!.text;
    expect(texts[1]).toBe(await alone(0));
    expect(texts[2]).toBe(await alone(1));
  });

  test("ignore_eos (vLLM's) generates up to max_tokens past the end-of-sequence token", async () => {
    const body = { model, prompt: "Once", max_tokens: 5, logit_bias: { "2": 100 } };
    const ends = await post(`${server.url}/v1/completions`, body);
    expect(ends.json.usage.completion_tokens).toBe(0);
    const goes = await post(`${server.url}/v1/completions`, { ...body, ignore_eos: true });
    expect(goes.json.usage.completion_tokens).toBe(5);
    expect(goes.json.choices[0].finish_reason).toBe("length");
    // The end token it went past is not text (as in vLLM and llama.cpp), and still counted.
    expect(goes.json.choices[0].text).toBe("");
  });

  test("completions: n choices; greedy ones are the same answer", async () => {
    const r = await client.completions.create({ model, prompt: "Once upon", max_tokens: 6, temperature: 0, n: 2 });
    expect(r.choices.length).toBe(2);
    expect(r.choices[0]!.text).toBe(r.choices[1]!.text);
  });
});

describe("API key", () => {
  let secured: RunningServer;
  beforeAll(() => {
    secured = serve({ apiKey: "s3cret" });
  });
  afterAll(() => secured.stop());

  test("a wrong or missing key is a 401; the right one works; the probes /health and /ready need none", async () => {
    const wrong = new OpenAI({ baseURL: `${secured.url}/v1`, apiKey: "wrong", maxRetries: 0 });
    const error = await wrong.models.list().catch((e) => e);
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(error.status).toBe(401);
    const missing = await fetch(`${secured.url}/api/tags`);
    expect(missing.status).toBe(401);
    expect(((await missing.json()) as { error: unknown }).error).toBeString();
    const metrics = await fetch(`${secured.url}/metrics`);
    expect(metrics.status).toBe(401);
    const right = new OpenAI({ baseURL: `${secured.url}/v1`, apiKey: "s3cret", maxRetries: 0 });
    const r = await right.chat.completions.create({ model, messages, max_tokens: 2 });
    expect(r.choices.length).toBe(1);
    expect((await fetch(`${secured.url}/health`)).status).toBe(200);
    // A readiness probe (Kubernetes, a load balancer) carries no key either.
    const ready = await fetch(`${secured.url}/ready`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ ready: true });
  });
});

describe("continuous batching and the prefix cache, through the API", () => {
  test("concurrent streams are decoded together and each gets its own answer", async () => {
    const prompts = ["Tell me a story", "Name a colour", "Count to five", "Say hello"];
    const greedy = (content: string) =>
      client.chat.completions.create({ model, messages: [{ role: "user", content }], max_tokens: 12, temperature: 0 });
    const alone: string[] = [];
    for (const p of prompts) alone.push((await greedy(p)).choices[0]!.message.content ?? "");
    const together = await Promise.all(prompts.map(greedy));
    expect(together.map((r) => r.choices[0]!.message.content ?? "")).toEqual(alone);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/^mlx_inter_token_latency_seconds_count \d+$/m);
    expect(metrics).toMatch(/^mlx_batch_limit\{model="[^"]+"\} 8$/m);
  });

  test("a follow-up turn reports the conversation so far as cached tokens", async () => {
    const first = [{ role: "user" as const, content: "Describe the moon in one line" }];
    const one = await client.chat.completions.create({ model, messages: first, max_tokens: 8, temperature: 0 });
    const followUp = [
      ...first,
      { role: "assistant" as const, content: one.choices[0]!.message.content ?? "" },
      { role: "user" as const, content: "And the sun?" },
    ];
    const two = await client.chat.completions.create({ model, messages: followUp, max_tokens: 8, temperature: 0 });
    expect(two.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(one.usage!.prompt_tokens - 2);
    const stats: any = await (await fetch(`${server.url}/stats`)).json();
    expect(stats.models[0].prefix_cache.hits).toBeGreaterThan(0);
    expect(stats.models[0].max_batch).toBe(8);
  });
});

describe("the adaptive tuner, through the server", () => {
  test("an unreachable latency target makes it shrink the limits, visibly in /stats and /metrics", async () => {
    const tuned = serve({ defaultModel: model, targetItlMs: 1, maxBatch: 4, prefillChunk: 256 });
    try {
      const c = new OpenAI({ baseURL: `${tuned.url}/v1`, apiKey: "unused" });
      await Promise.all(
        [1, 2, 3].map(() => c.chat.completions.create({ model, messages, max_tokens: 40, temperature: 0 })),
      );
      const stats: any = await (await fetch(`${tuned.url}/stats`)).json();
      const m = stats.models[0];
      expect(m.tuner.target_itl_ms).toBe(1);
      expect(m.tuner.adjustments).toBeGreaterThan(0);
      expect(m.tuner.recent_adjustments[0].reason).toMatch(/> target 1 ms/);
      // Its moves in the keys /stats names the limits by, the latest ending where the limits are.
      const latest = m.tuner.recent_adjustments.at(-1);
      expect(Object.keys(latest.from).sort()).toEqual(["max_batch", "prefill_chunk"]);
      expect(latest.to).toEqual({ max_batch: m.max_batch, prefill_chunk: m.prefill_chunk });
      // Its steps decode, with no prompt being prefilled by then: it sheds sequences.
      expect(m.max_batch).toBeLessThan(4);
      const metrics = await (await fetch(`${tuned.url}/metrics`)).text();
      expect(metrics).toMatch(/^mlx_tuner_target_itl_seconds\{model="[^"]+"\} 0.001$/m);
      expect(metrics).toMatch(/^mlx_tuner_adjustments_total\{model="[^"]+"\} [1-9]\d*$/m);
    } finally {
      await tuned.stop();
    }
  });
});

describe("n against the server's capacity", () => {
  // A server with room for 2 + 3 sequences of the model at once.
  let small: RunningServer;
  let smallClient: OpenAI;
  beforeAll(() => {
    small = serve({ maxBatch: 2, maxQueue: 3 });
    smallClient = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 20_000 });
  });
  afterAll(() => small.stop());

  test("n past --max-batch plus --max-queue is a 400 naming the limit (a 429 no retry could clear before)", async () => {
    const body = { model, max_tokens: 2, temperature: 0 };
    for (const [path, prompt] of [
      ["chat/completions", { messages }],
      ["completions", { prompt: "Once" }],
    ] as const) {
      const r = await post(`${small.url}/v1/${path}`, { ...body, ...prompt, n: 6 });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe("n");
      expect(r.json.error.message).toMatch(/'n' must be <= 5/);
    }
    const full = await smallClient.chat.completions.create({ ...body, messages, n: 5 });
    expect(full.choices.map((c) => c.index)).toEqual([0, 1, 2, 3, 4]);
  });

  test("with the tuner on, an idle server whose limit it cut still takes n up to --max-batch plus --max-queue", async () => {
    // An unreachable target: two streams at a limit of 2 make it cut the limit to 1.
    const tuned = serve({ defaultModel: model, targetItlMs: 1, maxBatch: 2, maxQueue: 1 });
    try {
      const c = new OpenAI({ baseURL: `${tuned.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 20_000 });
      const body = { model, max_tokens: 30, temperature: 0 };
      await Promise.all([1, 2].map(() => c.chat.completions.create({ ...body, messages })));
      const stats: any = await (await fetch(`${tuned.url}/stats`)).json();
      const m = stats.models[0];
      expect({ max_batch: m.max_batch, running: m.running, waiting: m.waiting }).toEqual({
        max_batch: 1,
        running: 0,
        waiting: 0,
      });
      // Three choices fit: the queue was full to them (a 429 with nothing running, no retry clearing it).
      const full = await c.chat.completions.create({ ...body, max_tokens: 2, messages, n: 3 });
      expect(full.choices.map((choice) => choice.index)).toEqual([0, 1, 2]);
      // Four never fit: a 400 naming the flags' limit, not the tuner's largest batch (it was a 429 too).
      const over = await post(`${tuned.url}/v1/chat/completions`, { ...body, max_tokens: 2, messages, n: 4 });
      expect(over.status).toBe(400);
      expect(over.json.error.message).toMatch(/'n' must be <= 3/);
    } finally {
      await tuned.stop();
    }
  });

  test("a batch of prompts counts n choices for each against the same limit", async () => {
    const r = await post(`${small.url}/v1/completions`, { model, prompt: ["a", "b", "c"], n: 2, max_tokens: 1 });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe("prompt");
    expect(r.json.error.message).toMatch(/3 prompts × 'n' 2/);
  });
});

describe("logit_bias", () => {
  test("keys are token ids in decimal: text that Number() reads as some other id is a 400", async () => {
    for (const key of ["", " 5", "0x10", "1e2", "1.0", "-1"]) {
      const r = await post(`${server.url}/v1/chat/completions`, {
        model,
        messages,
        max_tokens: 1,
        logit_bias: { [key]: 100 },
      });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe("logit_bias");
    }
    // Token 28 is "," in SmolLM2's vocabulary: a decimal key still forces it.
    const forced = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 2,
      temperature: 0,
      logit_bias: { "28": 100 },
    });
    expect(forced.choices[0]!.message.content).toBe(",,");
  });

  test("a null bias is a 400 naming its key (it was a NaN bias that forced the token)", async () => {
    const ask = { model, max_tokens: 2, temperature: 0, logit_bias: { "28": null } };
    for (const [path, input] of [
      ["/v1/chat/completions", { messages }],
      ["/v1/completions", { prompt: "Once upon" }],
    ] as const) {
      const r = await post(`${server.url}${path}`, { ...ask, ...input });
      expect(r.status).toBe(400);
      expect(r.json.error).toMatchObject({ type: "invalid_request_error", param: "logit_bias.28" });
    }
  });
});

describe("system_fingerprint", () => {
  test("every answer and stream chunk carries one, the same for the same model and server", async () => {
    const body = { model, messages, max_tokens: 2, temperature: 0 };
    const first = await client.chat.completions.create(body);
    expect(first.system_fingerprint).toMatch(/^fp_[0-9a-f]{10}$/);
    const again = await client.completions.create({ model, prompt: "Once", max_tokens: 2 });
    expect(again.system_fingerprint).toBe(first.system_fingerprint);
    const stream = await client.chat.completions.create({
      ...body,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) expect(chunk.system_fingerprint).toBe(first.system_fingerprint!);
  });
});

describe("completions logprobs", () => {
  test("streamed text_offset counts a token whose text waited on a stop string's first characters", async () => {
    const body = { model, prompt: "Once upon", max_tokens: 6, temperature: 0, logprobs: 1 };
    const first = (await client.completions.create(body)).choices[0]!.logprobs!.tokens![0]!;
    // A stop string that starts with the first token's text and never completes: that text is held back.
    const request = { ...body, stop: [`${first}§§`] };
    const whole = (await client.completions.create(request)).choices[0]!.logprobs!;
    const stream = await client.completions.create({ ...request, stream: true });
    const offsets: number[] = [];
    for await (const chunk of stream) offsets.push(...(chunk.choices[0]?.logprobs?.text_offset ?? []));
    let at = 0;
    expect(whole.text_offset).toEqual(whole.tokens!.map((token) => (at += token.length) - token.length));
    expect(offsets).toEqual(whole.text_offset!);
  });

  test("top_logprobs always hold the sampled token, as OpenAI's and vLLM's (up to logprobs + 1 entries)", async () => {
    // A high temperature on random weights: most sampled tokens are not among the most likely one.
    for (const logprobs of [0, 1]) {
      const body = { model, prompt: "Once upon", max_tokens: 12, temperature: 2, seed: 4, logprobs };
      const choice = (await client.completions.create(body)).choices[0]!.logprobs!;
      expect(choice.top_logprobs!.length).toBe(choice.tokens!.length);
      choice.tokens!.forEach((token, i) => {
        const top = choice.top_logprobs![i]!;
        expect(Object.keys(top).length).toBeLessThanOrEqual(logprobs + 1);
        expect(top[token]).toBe(choice.token_logprobs![i]!);
      });
      const streamed: Record<string, number>[] = [];
      for await (const chunk of await client.completions.create({ ...body, stream: true }))
        streamed.push(...(chunk.choices[0]?.logprobs?.top_logprobs ?? []));
      expect(streamed).toEqual(choice.top_logprobs!);
    }
  });

  test('top_logprobs give the sampled token its own logprob where a likelier alternative\'s text is the same (parts of characters, both " �")', async () => {
    // Tokens 459 (" " and two bytes of a character) and 17097 (" " and one) both read " �": the
    // alternative written after the sampled token, under the same key, put its logprob there.
    const request = {
      model,
      prompt: "He said",
      max_tokens: 1,
      temperature: 0,
      logprobs: 2,
      logit_bias: { "459": 30, "17097": 29 },
    };
    const { tokens, token_logprobs, top_logprobs } = (await client.completions.create(request)).choices[0]!.logprobs!;
    expect(tokens).toEqual([" �"]);
    expect(top_logprobs![0]![" �"]).toBe(token_logprobs![0]!);
  });
});

describe("stop strings", () => {
  test("nothing after a stop string shows, not even the end of a character its token began", async () => {
    // Token 459 is " " plus the first two bytes of a three-byte character (“, —): the stop string
    // " " matches its space while the detokenizer still holds those bytes, which the end of the
    // answer flushes (as U+FFFD).
    const request = { model, prompt: "He said", max_tokens: 3, temperature: 0, logit_bias: { "459": 100 }, stop: " " };
    const whole = (await client.completions.create(request)).choices[0]!;
    expect(whole.text).toBe("");
    expect(whole.finish_reason).toBe("stop");
    const stream = await client.completions.create({ ...request, stream: true });
    let streamed = "";
    for await (const chunk of stream) streamed += chunk.choices[0]?.text ?? "";
    expect(streamed).toBe("");
  });

  test("a stop string that begins with the second half of an emoji's pair does not hold that half back apart", async () => {
    // Token 47526 is " 🙂" (U+1F642, "\ud83d\ude42" in JSON). A stop string that starts with the
    // emoji's low surrogate (JSON lets a client send a lone one) can never match there (matches cut
    // no character), so the whole emoji goes in one delta: holding its low half back sent the high
    // half alone, a character split between two deltas that no client can print.
    const request = {
      model,
      messages,
      max_tokens: 3,
      temperature: 0,
      logit_bias: { "47526": 100 },
      stop: "\ude42x",
      stream: true,
    } as const;
    const deltas: string[] = [];
    for await (const chunk of await client.chat.completions.create(request))
      if (chunk.choices[0]?.delta.content) deltas.push(chunk.choices[0].delta.content);
    expect(deltas.join("")).toBe(" 🙂 🙂 🙂");
    for (const delta of deltas) expect(delta).not.toMatch(/[\ud800-\udbff]$|^[\udc00-\udfff]/);
  });
});

describe("an answer cut within a character", () => {
  test("ends before the character, streamed or not: no U+FFFD for its first bytes (as Ollama and vLLM)", async () => {
    // Token 459 is " " plus the first two bytes of a three-byte character: one token of budget
    // ends the answer with that character unfinished.
    const request = { model, prompt: "He said", max_tokens: 1, temperature: 0, logit_bias: { "459": 100 } };
    const whole = await client.completions.create(request);
    expect(whole.choices[0]!.text).toBe(" ");
    expect(whole.choices[0]!.finish_reason).toBe("length");
    expect(whole.usage!.completion_tokens).toBe(1);
    let streamed = "";
    for await (const chunk of await client.completions.create({ ...request, stream: true }))
      streamed += chunk.choices[0]?.text ?? "";
    expect(streamed).toBe(" ");
    const chat = { model, messages, max_tokens: 1, temperature: 0, logit_bias: { "459": 100 } };
    expect((await client.chat.completions.create(chat)).choices[0]!.message.content).toBe(" ");
    let chatStreamed = "";
    for await (const chunk of await client.chat.completions.create({ ...chat, stream: true }))
      chatStreamed += chunk.choices[0]?.delta.content ?? "";
    expect(chatStreamed).toBe(" ");
  });
});

describe("request ids", () => {
  test("every answer names its request in X-Request-Id (the client's id when it sent one), as the OpenAI client reads it; Anthropic's in request-id", async () => {
    const whole = await client.chat.completions.create({ model, messages, max_tokens: 2 });
    expect(whole._request_id).toMatch(/^[0-9a-f-]{36}$/);
    const other = await client.chat.completions.create({ model, messages, max_tokens: 2 });
    expect(other._request_id).not.toBe(whole._request_id);

    const { data: stream, response } = await client.chat.completions
      .create({ model, messages, max_tokens: 2, stream: true }, { headers: { "X-Request-Id": "client-42" } })
      .withResponse();
    for await (const _ of stream);
    expect(response.headers.get("x-request-id")).toBe("client-42");

    // An error too: the id a user quotes when reporting it.
    const failed = await client.chat.completions.create({ model: "no-such-model", messages }).catch((e) => e);
    expect(failed).toBeInstanceOf(OpenAI.NotFoundError);
    expect(failed.requestID).toMatch(/^[0-9a-f-]{36}$/);
    // A browser page may read it (CORS exposes it).
    const page = await fetch(`${server.url}/v1/models`, { headers: { Origin: server.url } });
    expect(page.headers.get("access-control-expose-headers")?.toLowerCase()).toContain("x-request-id");

    // Anthropic's client reads it from request-id.
    const anthropic = new Anthropic({ baseURL: server.url, apiKey: "unused", maxRetries: 0 });
    const message = await anthropic.messages.create({ model, max_tokens: 2, messages });
    expect(message._request_id).toMatch(/^[0-9a-f-]{36}$/);
    const refused = await anthropic.messages.create({ model, max_tokens: 0, messages }).catch((e) => e);
    expect(refused).toBeInstanceOf(Anthropic.BadRequestError);
    expect(refused.requestID).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe("an assistant's refusal replayed", () => {
  test("a refusal content part is the assistant's words (chat completions and responses), in no other role", async () => {
    const said = "I cannot help with that.";
    const turns = (assistant: unknown) => [
      { role: "user", content: "Do something bad" },
      { role: "assistant", content: assistant },
      { role: "user", content: "Then tell me a story" },
    ];
    const chat = async (assistant: unknown) =>
      (
        await post(`${server.url}/v1/chat/completions`, {
          model,
          messages: turns(assistant),
          max_tokens: 4,
          temperature: 0,
        })
      ).json;
    const plain = await chat(said);
    const refused = await chat([{ type: "refusal", refusal: said }]);
    // The same prompt: all but its last token is the first's, from the prefix cache.
    expect(refused.usage.prompt_tokens).toBe(plain.usage.prompt_tokens);
    expect(refused.usage.prompt_tokens_details.cached_tokens).toBe(plain.usage.prompt_tokens - 1);
    expect(refused.choices[0].message.content).toBe(plain.choices[0].message.content);

    const responses = async (assistant: unknown) =>
      (
        await post(`${server.url}/v1/responses`, {
          model,
          input: turns(assistant),
          max_output_tokens: 4,
          temperature: 0,
        })
      ).json;
    const asText = await responses([{ type: "output_text", text: said }]);
    const asRefusal = await responses([{ type: "refusal", refusal: said }]);
    expect(asRefusal.usage.input_tokens).toBe(asText.usage.input_tokens);
    expect(asRefusal.usage.input_tokens_details.cached_tokens).toBe(asText.usage.input_tokens - 1);
    expect(asRefusal.output[0].content[0].text).toBe(asText.output[0].content[0].text);

    // A user does not refuse: still the 400 an unknown part is.
    const user = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages: [{ role: "user", content: [{ type: "refusal", refusal: said }] }],
    });
    expect(user.status).toBe(400);
    expect(user.json.error.param).toBe("messages.0.content.0.type");
  });
});

describe("prompt_cache_retention", () => {
  test("OpenAI's retention policies pass (our prefix cache keeps what its budget holds), any other value is a 400", async () => {
    for (const prompt_cache_retention of ["in_memory", "24h", "in-memory"]) {
      const r = await post(`${server.url}/v1/chat/completions`, {
        model,
        messages,
        max_tokens: 1,
        prompt_cache_retention,
      });
      expect(r.status).toBe(200);
    }
    const bad = await post(`${server.url}/v1/chat/completions`, { model, messages, prompt_cache_retention: "1h" });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatchObject({
      param: "prompt_cache_retention",
      message: expect.stringMatching(/in_memory or 24h/),
    });
  });
});
