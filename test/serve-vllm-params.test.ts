// vLLM's extra sampling parameters, as a vLLM user's official OpenAI client sends them (extra
// body properties), against a real server: each changes its own request's answer, streamed or
// whole, alone or in a batch, and leaves the other requests of the batch as they were.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import type { RunningServer } from "../src/server/app";
import { post, serve, tinyModel } from "./helpers/serve";

let server: RunningServer;
let openai: OpenAI;
let model: string;
/** The tiny model's end-of-sequence token (<|im_end|>), and one id for each text below. */
const EOS = 2;
let ids: Record<string, number>;

/** The one token id `text` is. */
async function tokenId(text: string): Promise<number> {
  const { json } = await post(`${server.url}/tokenize`, { content: text });
  expect(json.tokens).toHaveLength(1);
  return json.tokens[0];
}

beforeAll(async () => {
  model = tinyModel();
  server = serve({ defaultModel: model });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
  ids = { a: await tokenId("a"), b: await tokenId("b"), start: await tokenId("<|im_start|>") };
});

afterAll(() => server.stop());

type Extra = Record<string, unknown>;

/** A greedy completion with vLLM's `extra` fields: its text, finish reason and token count. */
async function complete(extra: Extra, o: { stream?: boolean; maxTokens?: number } = {}) {
  const body = { model, prompt: "Once upon a time", max_tokens: o.maxTokens ?? 12, temperature: 0, ...extra };
  if (!o.stream) {
    const r = await openai.completions.create(body as OpenAI.CompletionCreateParamsNonStreaming);
    return { text: r.choices[0]!.text, finish: r.choices[0]!.finish_reason, tokens: r.usage!.completion_tokens };
  }
  const stream = await openai.completions.create({
    ...body,
    stream: true,
    stream_options: { include_usage: true },
  } as OpenAI.CompletionCreateParamsStreaming);
  let text = "";
  let finish: string | null = null;
  let tokens = -1;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      finish = c.finish_reason ?? finish;
    }
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
  }
  return { text, finish, tokens };
}

/** Both ways, streamed and whole: the same answer. */
async function bothWays(extra: Extra, o: { maxTokens?: number } = {}) {
  const [whole, streamed] = await Promise.all([complete(extra, o), complete(extra, { ...o, stream: true })]);
  expect(streamed).toEqual(whole);
  return whole;
}

const bias = (id: number) => ({ logit_bias: { [id]: 100 } });

/**
 * Each of `extras` asked alone, then all at once between two plain requests (every other one
 * streamed): each answer in the batch is its answer alone, and a plain one's is unchanged.
 */
async function expectBatchedAsAlone(extras: Extra[], o: { maxTokens?: number } = {}) {
  const plain = await complete({});
  const alone = [];
  for (const extra of extras) alone.push(await complete(extra, o));
  const batched = await Promise.all([
    complete({}),
    ...extras.map((extra, i) => complete(extra, { ...o, stream: i % 2 === 0 })),
    complete({}, { stream: true }),
  ]);
  expect(batched).toEqual([plain, ...alone, plain]);
}

describe("vLLM's stop parameters (min_tokens, stop_token_ids, include_stop_str_in_output, skip_special_tokens)", () => {
  test("min_tokens holds back the end token until that many tokens, streamed and whole", async () => {
    // The end token biased to be the most likely: the answer ends at once, unless held back.
    expect(await bothWays(bias(EOS))).toEqual({ text: "", finish: "stop", tokens: 0 });
    const held = await bothWays({ ...bias(EOS), min_tokens: 5 });
    expect(held.finish).toBe("stop");
    expect(held.tokens).toBe(5);
    expect(held.text.length).toBeGreaterThan(0);
  });

  test("stop_token_ids end the answer, without the token's text unless include_stop_str_in_output", async () => {
    const repeated = await bothWays(bias(ids.a!));
    expect(repeated).toEqual({ text: "a".repeat(12), finish: "length", tokens: 12 });
    expect(await bothWays({ ...bias(ids.a!), stop_token_ids: [ids.a] })).toEqual({
      text: "",
      finish: "stop",
      tokens: 0,
    });
    expect(await bothWays({ ...bias(ids.a!), stop_token_ids: [ids.a], include_stop_str_in_output: true })).toEqual({
      text: "a",
      finish: "stop",
      tokens: 1,
    });
    // min_tokens holds a stop token back as it does the end token.
    const held = await bothWays({ ...bias(ids.a!), stop_token_ids: [ids.a], min_tokens: 3 });
    expect(held.finish).toBe("stop");
    expect(held.tokens).toBe(3);
    expect(held.text).not.toContain("a");
  });

  test("the stop token that ended a choice is its stop_reason, as vLLM reports it, streamed and whole", async () => {
    const body = {
      model,
      prompt: "Hi",
      max_tokens: 6,
      temperature: 0,
      ...bias(ids.a!),
      stop_token_ids: [ids.b, ids.a],
    };
    const whole = await post(`${server.url}/v1/completions`, body);
    expect(whole.json.choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: ids.a });
    const streamed = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, stream: true }),
    });
    const last = (await streamed.text())
      .split("\n")
      .filter((line) => line.startsWith("data: {"))
      .map((line) => JSON.parse(line.slice(6)))
      .findLast((chunk) => chunk.choices?.[0]?.finish_reason);
    expect(last.choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: ids.a });
  });

  test("stop strings count from min_tokens on; include_stop_str_in_output shows the one that ended it", async () => {
    expect(await bothWays({ ...bias(ids.a!), stop: ["a"] })).toEqual({ text: "", finish: "stop", tokens: 1 });
    expect(await bothWays({ ...bias(ids.a!), stop: ["a"], include_stop_str_in_output: true })).toEqual({
      text: "a",
      finish: "stop",
      tokens: 1,
    });
    expect(await bothWays({ ...bias(ids.a!), stop: ["a"], min_tokens: 3 })).toEqual({
      text: "aaa",
      finish: "stop",
      tokens: 4,
    });
    // A stop string the first token past min_tokens completes counts, begun before it or not (as vLLM's).
    expect(await bothWays({ ...bias(ids.a!), stop: ["aa"], min_tokens: 3 })).toEqual({
      text: "aa",
      finish: "stop",
      tokens: 4,
    });
  });

  test("skip_special_tokens drops a special token's text", async () => {
    const shown = await bothWays({ ...bias(ids.start!), skip_special_tokens: false }, { maxTokens: 3 });
    expect(shown.text).toBe("<|im_start|>".repeat(3));
    expect(await bothWays({ ...bias(ids.start!), skip_special_tokens: true }, { maxTokens: 3 })).toEqual({
      text: "",
      finish: "length",
      tokens: 3,
    });
  });

  test("in a batch, each request gets its own, and a plain request's greedy answer is the one it gets alone", async () => {
    const extras: Extra[] = [
      { ...bias(EOS), min_tokens: 5 },
      { ...bias(ids.a!), stop_token_ids: [ids.a], include_stop_str_in_output: true },
      { ...bias(ids.a!), stop: ["a"], min_tokens: 3 },
      { ...bias(ids.start!), skip_special_tokens: true },
    ];
    await expectBatchedAsAlone(extras);
  });

  test("chat completions take them too", async () => {
    const r = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 10,
      temperature: 0,
      ...bias(EOS),
      min_tokens: 4,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(r.usage!.completion_tokens).toBe(4);
  });

  test("bad values are a 400 naming the parameter", async () => {
    const bad: [Extra, string][] = [
      [{ min_tokens: -1 }, "min_tokens"],
      [{ min_tokens: 20, max_tokens: 10 }, "min_tokens"],
      [{ stop_token_ids: [1.5] }, "stop_token_ids.0"],
      [{ stop_token_ids: "2" }, "stop_token_ids"],
      [{ stop_token_ids: [1 << 30] }, "stop_token_ids"],
      [{ include_stop_str_in_output: "yes" }, "include_stop_str_in_output"],
      [{ skip_special_tokens: 1 }, "skip_special_tokens"],
    ];
    for (const [extra, param] of bad) {
      const r = await post(`${server.url}/v1/completions`, { model, prompt: "Hi", max_tokens: 10, ...extra });
      expect({ status: r.status, param: r.json.error?.param }).toEqual({ status: 400, param });
    }
  });
});

describe("vLLM's token sets (allowed_token_ids, bad_words)", () => {
  test("allowed_token_ids: the answer holds no other token, streamed and whole", async () => {
    const r = await bothWays({ allowed_token_ids: [ids.a, ids.b] });
    expect(r.tokens).toBe(12);
    expect(r.text).toMatch(/^[ab]{12}$/);
  });

  test("bad_words: a word's last token is banned after the rest of it, a one-token word everywhere", async () => {
    // The tiny model's greedy answer (random weights, fixed): " bittern COVID COVID Lesbian Lesbian ...".
    const plain = await bothWays({});
    expect(plain.text).toStartWith(" bittern COVID COVID Lesbian");
    // " Lesbian" is one token; "COVID Lesbian" is two, with or without a space before.
    const [bare, spaced] = await Promise.all(
      ["COVID Lesbian", " COVID Lesbian"].map(
        async (content) => (await post(`${server.url}/tokenize`, { content })).json.tokens,
      ),
    );
    expect([bare.length, spaced.length, bare[1] === spaced[1]]).toEqual([2, 2, true]);
    const banned = await bothWays({ bad_words: ["COVID Lesbian"] });
    expect(banned.text).toStartWith(" bittern COVID COVID");
    expect(banned.text).not.toContain("COVID Lesbian");
    expect(banned.tokens).toBe(12);
    const single = await bothWays({ bad_words: ["COVID"] });
    expect(single.text).toStartWith(" bittern");
    expect(single.text).not.toContain("COVID");
  });

  test("in a batch, each request gets its own, and a plain request's greedy answer is the one it gets alone", async () => {
    const extras: Extra[] = [
      { allowed_token_ids: [ids.a, ids.b] },
      { bad_words: ["COVID Lesbian"] },
      { bad_words: ["COVID"], allowed_token_ids: [ids.a, ids.b, 7191] },
    ];
    await expectBatchedAsAlone(extras);
  });

  test("bad values are a 400 naming the parameter", async () => {
    const bad: [Extra, string][] = [
      [{ allowed_token_ids: [] }, "allowed_token_ids"],
      [{ allowed_token_ids: [-1] }, "allowed_token_ids.0"],
      [{ allowed_token_ids: [1 << 30] }, "allowed_token_ids"],
      [{ bad_words: "COVID" }, "bad_words"],
      [{ bad_words: ["ok", " "] }, "bad_words.1"],
      [{ bad_words: [3] }, "bad_words.0"],
    ];
    for (const [extra, param] of bad) {
      const r = await post(`${server.url}/v1/completions`, { model, prompt: "Hi", max_tokens: 10, ...extra });
      expect({ status: r.status, param: r.json.error?.param }).toEqual({ status: 400, param });
    }
  });
});

describe("vLLM's truncate_prompt_tokens", () => {
  /** A greedy completion of token ids, whole: its text and its usage. */
  async function completeIds(prompt: number[], extra: Extra = {}) {
    const r = await openai.completions.create({
      model,
      prompt,
      max_tokens: 8,
      temperature: 0,
      ...extra,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    return { text: r.choices[0]!.text, promptTokens: r.usage!.prompt_tokens };
  }

  test("keeps the prompt's last tokens: the answer is the one to those alone, and a prompt past the context is taken", async () => {
    const prompt = Array.from({ length: 300 }, (_, i) => (i % 2 ? ids.a! : ids.b!) + (i % 7));
    const tail = prompt.slice(-40);
    const alone = await completeIds(tail);
    expect(alone.promptTokens).toBe(40);
    // 300 tokens do not fit the tiny model's context of 256.
    const refused = await post(`${server.url}/v1/completions`, { model, prompt, max_tokens: 8 });
    expect(refused.status).toBe(400);
    expect(await completeIds(prompt, { truncate_prompt_tokens: 40 })).toEqual(alone);
    // A prompt shorter than the count is read whole; chat completions take it too.
    expect(await completeIds(tail, { truncate_prompt_tokens: 100 })).toEqual(alone);
    const chat = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Hello there, how are you today?" }],
      max_tokens: 4,
      temperature: 0,
      truncate_prompt_tokens: 3,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(chat.usage!.prompt_tokens).toBe(3);
  });

  test("bad values are a 400 naming it", async () => {
    for (const value of [0, -2, 1.5, "10", 257]) {
      const r = await post(`${server.url}/v1/completions`, {
        model,
        prompt: "Hi",
        max_tokens: 4,
        truncate_prompt_tokens: value,
      });
      expect({ status: r.status, param: r.json.error?.param }).toEqual({
        status: 400,
        param: "truncate_prompt_tokens",
      });
    }
  });
});

describe("vLLM's guided decoding (guided_json, guided_regex, guided_choice, guided_grammar, structured_outputs)", () => {
  const schema = {
    type: "object",
    properties: { colour: { enum: ["red", "green"] }, n: { type: "integer", minimum: 0, maximum: 9 } },
    required: ["colour", "n"],
  };
  const grammar = 'root ::= "hello " ("world" | "there") "!"';
  const shapes: [string, Extra, (text: string) => boolean][] = [
    ["guided_choice", { guided_choice: ["alpha", "beta", "gamma"] }, (t) => ["alpha", "beta", "gamma"].includes(t)],
    ["guided_regex", { guided_regex: "(yes|no) [0-9]{2}" }, (t) => /^(yes|no) [0-9]{2}$/.test(t)],
    ["guided_grammar", { guided_grammar: grammar }, (t) => /^hello (world|there)!$/.test(t)],
    ["guided_json", { guided_json: schema }, (t) => ["red", "green"].includes(JSON.parse(t).colour)],
    ["guided_json as text", { guided_json: JSON.stringify(schema) }, (t) => Object.keys(JSON.parse(t)).length === 2],
    [
      "structured_outputs.choice",
      { structured_outputs: { choice: ["left", "right"] } },
      (t) => /^(left|right)$/.test(t),
    ],
    ["structured_outputs.regex", { structured_outputs: { regex: "[a-c]{4}" } }, (t) => /^[a-c]{4}$/.test(t)],
    ["structured_outputs.grammar", { structured_outputs: { grammar } }, (t) => /^hello (world|there)!$/.test(t)],
    ["structured_outputs.json", { structured_outputs: { json: schema } }, (t) => Number.isInteger(JSON.parse(t).n)],
    [
      "structured_outputs.json_object",
      { structured_outputs: { json_object: true } },
      (t) => typeof JSON.parse(t) === "object",
    ],
  ];

  for (const [name, extra, valid] of shapes)
    test(`${name}: the answer has its shape, streamed and whole`, async () => {
      const r = await bothWays(extra, { maxTokens: 60 });
      // Any object may run past max_tokens: the budget then closes it early, still valid.
      if (!name.endsWith("json_object")) expect(r.finish).toBe("stop");
      expect(valid(r.text)).toBe(true);
    });

  test("in a batch, each request gets its own shape, and a plain request's greedy answer is the one it gets alone", async () => {
    await expectBatchedAsAlone(
      shapes.map(([, extra]) => extra),
      { maxTokens: 60 },
    );
  });

  test("chat completions take them", async () => {
    const r = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Pick one" }],
      max_tokens: 20,
      temperature: 0,
      guided_choice: ["one", "two"],
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(["one", "two"]).toContain(r.choices[0]!.message.content!);
  });

  test("beside the token controls, the grammar's shape wins where they leave it nothing, and the batch goes on", async () => {
    // A complete choice allows only the end, which min_tokens holds back; a grammar allowing only
    // tokens allowed_token_ids or bad_words forbid. Each drew a token the grammar refused, which
    // failed every request of the batch (a 500).
    const plain = complete({});
    const [held, allowed, banned] = await Promise.all([
      complete({ guided_choice: ["alpha"], min_tokens: 5 }, { stream: true }),
      complete({ guided_choice: ["alpha"], allowed_token_ids: [ids.a, ids.b] }),
      complete({ guided_choice: ["alpha"], bad_words: ["alpha"] }),
    ]);
    for (const r of [held, allowed, banned]) expect(r).toMatchObject({ text: "alpha", finish: "stop" });
    expect(await plain).toEqual(await complete({}));
  });

  test("conflicting or bad ones are a 400 naming the field", async () => {
    const bad: [Extra, string][] = [
      [{ guided_json: schema, response_format: { type: "json_object" } }, "guided_json"],
      [{ structured_outputs: { regex: "a+" }, response_format: { type: "json_object" } }, "structured_outputs"],
      [{ guided_json: schema, guided_regex: "a+" }, "guided_regex"],
      [{ guided_choice: ["a"], structured_outputs: { regex: "a+" } }, "structured_outputs.regex"],
      [{ structured_outputs: { choice: ["a"], grammar } }, "structured_outputs.grammar"],
      [{ structured_outputs: { structural_tag: "{}" } }, "structured_outputs.structural_tag"],
      [{ guided_choice: [] }, "guided_choice"],
      [{ guided_choice: ["a", 1] }, "guided_choice.1"],
      [{ guided_regex: "(unclosed" }, "guided_regex"],
      [{ guided_grammar: "root ::= missing_rule" }, "guided_grammar"],
      [{ guided_json: "{not json" }, "guided_json"],
      [{ guided_json: [1] }, "guided_json"],
      [{ guided_decoding_backend: "xgrammar" }, "guided_decoding_backend"],
    ];
    for (const [extra, param] of bad) {
      const r = await post(`${server.url}/v1/completions`, { model, prompt: "Hi", max_tokens: 10, ...extra });
      expect({ status: r.status, param: r.json.error?.param }).toEqual({ status: 400, param });
    }
    const required = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages: [{ role: "user", content: "Hi" }],
      tools: [{ type: "function", function: { name: "f", parameters: { type: "object" } } }],
      tool_choice: "required",
      guided_choice: ["a", "b"],
    });
    expect({ status: required.status, param: required.json.error?.param }).toEqual({
      status: 400,
      param: "guided_choice",
    });
  });

  test("a pattern with half of a UTF-16 pair (JSON's \\ud800) is a 400 saying so, not 'unsupported grammar: undefined'", async () => {
    for (const [extra, param, what] of [
      [{ guided_regex: "a\ud800" }, "guided_regex", "the regular expression"],
      [{ guided_choice: ["ok", "\udc00"] }, "guided_choice", "a choice"],
      [{ structured_outputs: { regex: "\ud800+" } }, "structured_outputs.regex", "the regular expression"],
      [{ guided_grammar: 'root ::= "a" | "\ud800"' }, "guided_grammar", "the grammar"],
    ] as const) {
      const r = await post(`${server.url}/v1/completions`, { model, prompt: "Hi", max_tokens: 10, ...extra });
      expect({ status: r.status, param: r.json.error?.param, message: r.json.error?.message }).toEqual({
        status: 400,
        param,
        message: `${what} holds a lone UTF-16 surrogate, which is not a Unicode character`,
      });
    }
  });
});

describe("vLLM's stream_options.continuous_usage_stats", () => {
  /** Each chunk's choice index and usage, of a stream asked with `streamOptions` and logprobs. */
  async function chunkUsages(kind: "chat" | "completion", streamOptions: Extra) {
    const common = { model, max_tokens: 6, n: 2, seed: 1, stream: true, stream_options: streamOptions };
    const stream =
      kind === "chat"
        ? await openai.chat.completions.create({
            ...common,
            messages: [{ role: "user", content: "Once upon a time" }],
            logprobs: true,
          } as OpenAI.ChatCompletionCreateParamsStreaming)
        : await openai.completions.create({
            ...common,
            prompt: "Once upon a time",
            logprobs: 0,
          } as OpenAI.CompletionCreateParamsStreaming);
    const chunks: { index?: number; tokens: number; finished: boolean; usage?: OpenAI.CompletionUsage | null }[] = [];
    for await (const chunk of stream as AsyncIterable<OpenAI.ChatCompletionChunk | OpenAI.Completion>) {
      const c = chunk.choices[0] as (OpenAI.ChatCompletionChunk.Choice | OpenAI.CompletionChoice) | undefined;
      const logprobs = c?.logprobs as { content?: unknown[] | null; tokens?: unknown[] } | null | undefined;
      const tokens = (logprobs?.content ?? logprobs?.tokens ?? []).length;
      chunks.push({ index: c?.index, tokens, finished: !!c?.finish_reason, usage: chunk.usage });
    }
    return chunks;
  }

  for (const kind of ["chat", "completion"] as const)
    test(`${kind}: every chunk carries its choice's usage so far, as vLLM's; the last one the whole request's`, async () => {
      const chunks = await chunkUsages(kind, { include_usage: true, continuous_usage_stats: true });
      const total = chunks.at(-1)!;
      expect(total.index).toBeUndefined();
      const choices = chunks.slice(0, -1);
      const generated = [0, 0];
      for (const { index, tokens, finished, usage } of choices) {
        generated[index!]! += tokens;
        // The tokens its chunks have shown so far (one logprob each), the prompt counted once per choice.
        expect(usage).toEqual({
          prompt_tokens: total.usage!.prompt_tokens,
          completion_tokens: generated[index!]!,
          total_tokens: total.usage!.prompt_tokens + generated[index!]!,
        });
        if (finished) expect(usage!.completion_tokens).toBeGreaterThan(0);
      }
      expect(generated[0]! + generated[1]!).toBe(total.usage!.completion_tokens);
      // Alone it asks for nothing (as vLLM's needs include_usage); include_usage alone, the last chunk only.
      for (const options of [{ continuous_usage_stats: true }, { include_usage: false, continuous_usage_stats: true }])
        expect((await chunkUsages(kind, options)).every((c) => c.usage === undefined)).toBe(true);
      const last = await chunkUsages(kind, { include_usage: true, continuous_usage_stats: false });
      expect(last.slice(0, -1).every((c) => c.usage === null)).toBe(true);
      expect(last.at(-1)!.usage!.completion_tokens).toBeGreaterThan(0);
    });
});
