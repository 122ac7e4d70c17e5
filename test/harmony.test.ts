// gpt-oss's harmony format: the analysis channel read as reasoning, the final channel as the
// answer, commentary to=functions.NAME as tool calls, whole and cut into random pieces (markers
// split across them); its template detected, and past reasoning and calls fed back through it.
import { parseMessagesRequest } from "../src/api/anthropic";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { parseOllamaChat } from "../src/api/ollama";
import { parseChatRequest } from "../src/api/openai";
import { parseResponsesRequest } from "../src/api/responses";
import { HarmonySplitter } from "../src/engine/harmony";
import { thinkingTemplate } from "../src/engine/reasoning";
import { prepareGeneration } from "../src/engine/request";
import { defaultSampling } from "../src/engine/sampling";
import { toolCallFormats, toolTemplate, ToolCallStream, type ParsedAnswer } from "../src/engine/tools";
import { loadModel } from "../src/models/load";
import type { RunningServer } from "../src/server/app";
import { cliRunner } from "./helpers/cli";
import { forecastTools, readToolStream } from "./helpers/forecast-tools";
import { harmonyId, harmonyTokens, writeScriptedHarmonyModel } from "./helpers/scripted-model";
import { post, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const template = readFileSync(join(import.meta.dir, "fixtures", "templates", "gpt-oss.jinja"), "utf8");
const { harmony } = toolCallFormats;

/** The text cut at random places (a fixed seed per run, so a failure reproduces). */
function randomPieces(text: string, seed: number): string[] {
  let state = seed;
  const random = () => (state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const pieces: string[] = [];
  for (let at = 0; at < text.length; ) {
    const n = 1 + Math.floor(random() * 6);
    pieces.push(text.slice(at, at + n));
    at += n;
  }
  return pieces;
}

/** The generated text (the prompt ended with `<|start|>assistant`) as a route reads it: reasoning, then content and calls, streamed. */
function read(
  pieces: string[],
  promptTail = "<|start|>assistant",
): ParsedAnswer & { reasoning: string; streamed: string } {
  const splitter = new HarmonySplitter(promptTail);
  const calls = new ToolCallStream(harmony);
  let reasoning = "";
  let text = "";
  let streamed = "";
  for (const piece of pieces) {
    const split = splitter.push(piece);
    reasoning += split.reasoning;
    text += split.text;
    streamed += calls.push(split.text);
  }
  const rest = splitter.flush();
  text += rest.text;
  streamed += calls.push(rest.text);
  const end = calls.end();
  const whole = harmony.parse(text);
  expect(streamed + end.content).toBe(whole.content);
  expect(end.calls.map(({ name, arguments: a }) => ({ name, a }))).toEqual(
    whole.calls.map(({ name, arguments: a }) => ({ name, a })),
  );
  return { ...whole, reasoning, streamed };
}

const answer =
  "<|channel|>analysis<|message|>The user greets. Reply kindly.<|end|><|start|>assistant<|channel|>final<|message|>Hello! How can I help?";
// As gpt-oss writes a call (the <|call|> that ends it is an end token: never text).
const call =
  '<|channel|>analysis<|message|>Need the weather in Oslo.<|end|><|start|>assistant<|channel|>commentary to=functions.forecast <|constrain|>json<|message|>{"city": "Oslo", "days": 2}';

describe("reading harmony", () => {
  test("the analysis channel is the reasoning, the final channel the answer, whole and in random pieces", () => {
    for (const pieces of [[answer], ...[1, 2, 3, 4, 5].map((seed) => randomPieces(answer, seed))]) {
      const out = read(pieces);
      expect(out.reasoning).toBe("The user greets. Reply kindly.");
      expect(out.content).toBe("Hello! How can I help?");
      expect(out.calls).toEqual([]);
    }
  });

  test("a commentary message to functions.NAME is a call (the header either way round), whole and in random pieces", () => {
    const headerFirst =
      '<|channel|>analysis<|message|>Need the weather in Oslo.<|end|><|start|>assistant to=functions.forecast<|channel|>commentary json<|message|>{"city": "Oslo", "days": 2}<|call|>';
    for (const text of [call, headerFirst])
      for (const pieces of [[text], ...[6, 7, 8, 9].map((seed) => randomPieces(text, seed))]) {
        const out = read(pieces);
        expect(out.reasoning).toBe("Need the weather in Oslo.");
        expect(out.content).toBe("");
        expect(out.streamed).toBe("");
        expect(out.calls.map((c) => [c.name, c.arguments])).toEqual([["forecast", { city: "Oslo", days: 2 }]]);
        expect(out.calls[0]!.id).toMatch(/^call_/);
      }
  });

  test("a preamble on the commentary channel is content; calls ended by <|call|> follow one another", () => {
    const text =
      '<|channel|>analysis<|message|>Two cities.<|end|><|start|>assistant<|channel|>commentary<|message|>Checking both.<|end|><|start|>assistant<|channel|>commentary to=functions.forecast <|constrain|>json<|message|>{"city": "Oslo"}<|call|><|start|>assistant<|channel|>commentary to=functions.forecast <|constrain|>json<|message|>{"city": "Rome"}<|call|>';
    for (const pieces of [[text], randomPieces(text, 11), randomPieces(text, 12)]) {
      const out = read(pieces);
      expect(out.content).toBe("Checking both.");
      expect(out.calls.map((c) => c.arguments)).toEqual([{ city: "Oslo" }, { city: "Rome" }]);
    }
  });

  test("a call the token budget cut off is neither a call nor prose; reasoning the end cut off stays reasoning", () => {
    const cut = read([
      '<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>commentary to=functions.forecast <|constrain|>json<|message|>{"city": "Os',
    ]);
    expect(cut).toMatchObject({ reasoning: "Hm.", content: "", calls: [] });
    const thinking = read(randomPieces("<|channel|>analysis<|message|>Still thinking about", 3));
    expect(thinking).toMatchObject({ reasoning: "Still thinking about", content: "", calls: [] });
    // An answer that ends in what could start a marker keeps it.
    const answer = read(["<|channel|>final<|message|>Is 1 <", "|"]);
    expect(answer).toMatchObject({ content: "Is 1 <|" });
  });

  test("a prompt that leaves the model inside the final message (continue_final_message) goes on in the answer", () => {
    const out = read([" world<|end|>"], "<|start|>assistant<|channel|>final<|message|>Hello");
    expect(out).toMatchObject({ reasoning: "", content: " world" });
  });

  test("text that is no harmony (a model that does not follow it) is the answer as it is", () => {
    const prose = "Just prose, no channels at all. ".repeat(12);
    expect(read(randomPieces(prose, 5))).toMatchObject({ reasoning: "", content: prose, calls: [] });
    expect(read(["Short prose."])).toMatchObject({ content: "Short prose." });
  });
});

describe("gpt-oss's template", () => {
  test("is detected as harmony, for reasoning and tools", () => {
    expect(thinkingTemplate(template)).toEqual({ thinks: true, switchedBy: undefined, harmony: true });
    expect(toolTemplate(template)).toEqual({ native: true, format: harmony });
  });
});

// Token ids of the harmony markers (a second marker in an answer takes the marker's second id).
const marker = (content: string, second = false) =>
  harmonyId(second ? harmonyTokens.lastIndexOf(content as never) : harmonyTokens.indexOf(content as never));
const [START, END, CHANNEL, MESSAGE, CONSTRAIN, CALL] = [
  "<|start|>",
  "<|end|>",
  "<|channel|>",
  "<|message|>",
  "<|constrain|>",
  "<|call|>",
].map((m) => marker(m));

let root: string;
let home: string;
let server: RunningServer;
let openai: OpenAI;
/** Reasons "The user greets.", then answers "Hello!" on the final channel. */
let greeter: string;
/** Reasons "Check weather", then calls forecast({"city": "Oslo"}). */
let caller: string;
const hi: OpenAI.ChatCompletionMessageParam[] = [{ role: "user", content: "Hi" }];

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "mlx-harmony-"));
  home = join(root, "home");
  process.env.MLX_HOME ??= home;
  greeter = join(root, "greeter");
  writeScriptedHarmonyModel(
    greeter,
    [
      CHANNEL,
      "analysis",
      MESSAGE,
      "The",
      " user",
      " greets",
      ".",
      END,
      START,
      "as",
      "sis",
      "tant",
      marker("<|channel|>", true),
      "final",
      marker("<|message|>", true),
      "Hello",
      "!",
    ],
    template,
  );
  caller = join(root, "caller");
  writeScriptedHarmonyModel(
    caller,
    [
      CHANNEL,
      "analysis",
      MESSAGE,
      "Check",
      " weather",
      END,
      START,
      "as",
      "sis",
      "tant",
      marker("<|channel|>", true),
      "commentary",
      " to",
      "=",
      "functions",
      ".",
      "forecast",
      " ",
      CONSTRAIN,
      "json",
      marker("<|message|>", true),
      '{"',
      "city",
      '":',
      ' "',
      "Os",
      "lo",
      '"}',
      CALL,
    ],
    template,
  );
  server = serve({ defaultModel: greeter, maxLoadedModels: 3 });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});

afterAll(() => server.stop());

describe("a harmony model through /v1/chat/completions (the openai client)", () => {
  test("the analysis channel comes back as reasoning_content, the final channel as content, whole and streamed", async () => {
    const request = { model: greeter, messages: hi, temperature: 0, max_tokens: 40 };
    const whole = (await openai.chat.completions.create({ ...request, logprobs: true })).choices[0]!;
    // The model wrote harmony: its tokens' text holds every marker.
    const raw = whole.logprobs!.content!.map((t) => t.token).join("");
    expect(raw).toBe(
      "<|channel|>analysis<|message|>The user greets.<|end|><|start|>assistant<|channel|>final<|message|>Hello!",
    );
    const message = whole.message as typeof whole.message & { reasoning_content?: string };
    expect(message.reasoning_content).toBe("The user greets.");
    expect(message.content).toBe("Hello!");
    expect(whole.finish_reason).toBe("stop");
    let reasoning = "";
    let content = "";
    for await (const chunk of await openai.chat.completions.create({ ...request, stream: true })) {
      const delta = chunk.choices[0]?.delta as { content?: string; reasoning_content?: string } | undefined;
      reasoning += delta?.reasoning_content ?? "";
      content += delta?.content ?? "";
    }
    expect({ reasoning, content }).toEqual({ reasoning: "The user greets.", content: "Hello!" });
  });

  test("the same split on Ollama's /api/chat (thinking) and Anthropic's /v1/messages (a thinking block)", async () => {
    const ollama = await post(`${server.url}/api/chat`, {
      model: greeter,
      messages: hi,
      stream: false,
      options: { temperature: 0 },
    });
    expect(ollama.json.message).toMatchObject({ thinking: "The user greets.", content: "Hello!" });
    const anthropic = await post(`${server.url}/v1/messages`, {
      model: greeter,
      messages: hi,
      max_tokens: 40,
      temperature: 0,
    });
    expect(anthropic.json.content).toEqual([
      { type: "thinking", thinking: "The user greets.", signature: "" },
      { type: "text", text: "Hello!" },
    ]);
  });

  test("a commentary message to functions.forecast comes back as tool_calls, whole and streamed", async () => {
    const request = { model: caller, messages: hi, tools: forecastTools, temperature: 0, max_tokens: 60 };
    const whole = (await openai.chat.completions.create(request)).choices[0]!;
    expect((whole.message as { reasoning_content?: string }).reasoning_content).toBe("Check weather");
    expect(whole.message.content).toBeNull();
    expect(whole.finish_reason).toBe("tool_calls");
    const calls = whole.message.tool_calls as OpenAI.ChatCompletionMessageFunctionToolCall[];
    expect(calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)])).toEqual([
      ["forecast", { city: "Oslo" }],
    ]);
    const {
      content,
      calls: streamed,
      finish,
    } = await readToolStream(await openai.chat.completions.create({ ...request, stream: true }));
    expect(content).toBe("");
    expect(finish).toBe("tool_calls");
    expect(streamed).toEqual(calls.map((c) => c.function));
    // The same call on Ollama's /api/chat and as an Anthropic tool_use block.
    const ollama = await post(`${server.url}/api/chat`, {
      model: caller,
      messages: hi,
      tools: forecastTools,
      stream: false,
      options: { temperature: 0 },
    });
    expect(ollama.json.message).toMatchObject({
      thinking: "Check weather",
      content: "",
      tool_calls: [{ function: { name: "forecast", arguments: { city: "Oslo" } } }],
    });
    const anthropicTools = forecastTools.map((t) => {
      const f = (t as OpenAI.ChatCompletionFunctionTool).function;
      return { name: f.name, description: f.description, input_schema: f.parameters };
    });
    const anthropic = await post(`${server.url}/v1/messages`, {
      model: caller,
      messages: hi,
      tools: anthropicTools,
      max_tokens: 60,
      temperature: 0,
    });
    expect(anthropic.json.stop_reason).toBe("tool_use");
    expect(anthropic.json.content).toMatchObject([
      { type: "thinking", thinking: "Check weather" },
      { type: "tool_use", name: "forecast", input: { city: "Oslo" } },
    ]);
  });

  test("thinking off or a spent budget with tools offered: the analysis ends, and the model may still call", async () => {
    // The forced end of the analysis once forced the final header too: the call's arguments came as the answer.
    const request = { model: caller, messages: hi, tools: forecastTools, temperature: 0, max_tokens: 60 };
    for (const [extra, reasoning] of [
      [{ reasoning_effort: "none" }, undefined],
      [{ thinking_budget: 1 }, "Check"],
    ] as const) {
      const r = await post(`${server.url}/v1/chat/completions`, { ...request, ...extra });
      const choice = r.json.choices[0];
      expect(choice.message.reasoning_content).toBe(reasoning);
      expect(choice.finish_reason).toBe("tool_calls");
      expect(choice.message.content).toBeNull();
      expect(choice.message.tool_calls.map((c: OpenAI.ChatCompletionMessageFunctionToolCall) => c.function)).toEqual([
        { name: "forecast", arguments: '{"city":"Oslo"}' },
      ]);
    }
    const ollama = await post(`${server.url}/api/chat`, {
      model: caller,
      messages: hi,
      tools: forecastTools,
      think: false,
      stream: false,
      options: { temperature: 0 },
    });
    expect(ollama.json.message.tool_calls).toMatchObject([
      { function: { name: "forecast", arguments: { city: "Oslo" } } },
    ]);
    // A model that answers instead still gets to its final message.
    const answer = await post(`${server.url}/v1/chat/completions`, {
      ...request,
      model: greeter,
      reasoning_effort: "none",
    });
    expect(answer.json.choices[0].message.content).toBe("Hello!");
  });

  test("a required call is laid out by the grammar as a harmony call message, and read back whole and streamed", async () => {
    const request = {
      model: greeter,
      messages: hi,
      tools: forecastTools.slice(0, 1),
      tool_choice: "required" as const,
      temperature: 1,
      max_tokens: 300,
    };
    for (const seed of [1, 2]) {
      const whole = (await openai.chat.completions.create({ ...request, seed, logprobs: true })).choices[0]!;
      expect(whole.finish_reason).toBe("tool_calls");
      expect(whole.message.content).toBeNull();
      // Written with the harmony special tokens, as the template shows the model calls.
      const tokens = whole.logprobs!.content!.map((t) => t.token);
      expect(tokens[0]).toBe("<|channel|>");
      expect(tokens.join("")).toStartWith("<|channel|>commentary to=functions.forecast <|constrain|>json<|message|>{");
      const calls = whole.message.tool_calls as OpenAI.ChatCompletionMessageFunctionToolCall[];
      expect(calls).toHaveLength(1);
      expect(calls[0]!.function.name).toBe("forecast");
      const args = JSON.parse(calls[0]!.function.arguments);
      expect(typeof args.city).toBe("string");
      expect(args.days).toBeGreaterThanOrEqual(1);
      const { calls: streamed } = await readToolStream(
        await openai.chat.completions.create({ ...request, seed, stream: true }),
      );
      expect(streamed).toEqual(calls.map((c) => c.function));
    }
  });

  test("JSON output is the final message's, after the reasoning; with thinking off, right after the forced final header", async () => {
    const schema = {
      type: "object",
      properties: { a: { enum: ["x", "y"] } },
      required: ["a"],
      additionalProperties: false,
    };
    const ask = (extra: Record<string, unknown>) =>
      post(`${server.url}/v1/chat/completions`, {
        model: greeter,
        messages: hi,
        temperature: 0,
        max_tokens: 60,
        logprobs: true,
        response_format: { type: "json_schema", json_schema: { name: "a", schema } },
        ...extra,
      });
    const r = await ask({});
    expect(r.status).toBe(200);
    const message = r.json.choices[0].message;
    expect(message.reasoning_content).toBe("The user greets.");
    expect(["x", "y"]).toContain(JSON.parse(message.content).a);
    const raw = r.json.choices[0].logprobs.content.map((t: { token: string }) => t.token).join("");
    expect(raw).toStartWith(
      "<|channel|>analysis<|message|>The user greets.<|end|><|start|>assistant<|channel|>final<|message|>{",
    );
    const off = await ask({ reasoning_effort: "none" });
    expect(off.status).toBe(200);
    expect(off.json.choices[0].message.reasoning_content).toBeUndefined();
    expect(["x", "y"]).toContain(JSON.parse(off.json.choices[0].message.content).a);
  });

  test("continue_final_message goes on inside the final message: the answer, not a new header", async () => {
    const r = await post(`${server.url}/v1/chat/completions`, {
      model: greeter,
      // The model goes on "." and ends that message, then writes another final one, "Hello!".
      messages: [...hi, { role: "assistant", content: "The user greets" }],
      continue_final_message: true,
      add_generation_prompt: false,
      temperature: 0,
      max_tokens: 20,
    });
    expect(r.status).toBe(200);
    expect(r.json.choices[0].message).toMatchObject({ content: ".\n\nHello!" });
    expect(r.json.choices[0].message.reasoning_content).toBeUndefined();
  });

  test("past reasoning and calls go back through the template as harmony messages", async () => {
    const history = [
      ...hi,
      {
        role: "assistant",
        content: null,
        reasoning_content: "I check the weather.",
        tool_calls: [{ id: "call_1", type: "function", function: { name: "forecast", arguments: '{"city": "Oslo"}' } }],
      },
      { role: "tool", tool_call_id: "call_1", content: "Snow" },
    ];
    const rendered = await post(`${server.url}/apply-template`, {
      model: caller,
      messages: history,
      tools: forecastTools,
    });
    expect(rendered.status).toBe(200);
    expect(rendered.json.prompt).toContain("type forecast = (_: {");
    expect(rendered.json.prompt).toContain(
      '<|start|>assistant<|channel|>analysis<|message|>I check the weather.<|end|><|start|>assistant to=functions.forecast<|channel|>commentary json<|message|>{"city": "Oslo"}<|call|><|start|>functions.forecast to=assistant<|channel|>commentary<|message|>"Snow"<|end|><|start|>assistant',
    );
  });
});

test("reasoning_effort is the template's reasoning_effort; thinking off closes the analysis at once", async () => {
  const lm = loadModel(greeter);
  try {
    const promptOf = async (thinking: { enabled?: boolean; effort?: string }) => {
      const prepared = await prepareGeneration(lm, {
        prompt: { kind: "chat", messages: [{ role: "user", content: "Hi" }] },
        sampling: { ...defaultSampling, temperature: 0 },
        maxTokens: 8,
        thinking,
      });
      prepared.dispose();
      return lm.tokenizer.decode(prepared.promptIds);
    };
    expect(await promptOf({ enabled: true, effort: "high" })).toContain("Reasoning: high");
    expect(await promptOf({ enabled: true, effort: "minimal" })).toContain("Reasoning: low");
    // OpenAI's newer "xhigh": the template's high.
    expect(await promptOf({ enabled: true, effort: "xhigh" })).toContain("Reasoning: high");
    expect(await promptOf({})).toContain("Reasoning: medium");
    // Anthropic's output_config.effort as its route reads it: "max" is the template's high.
    const anthropicEffort = (effort: string) =>
      parseMessagesRequest({ max_tokens: 8, messages: [{ role: "user", content: "Hi" }], output_config: { effort } })
        .thinking!;
    expect(await promptOf(anthropicEffort("low"))).toContain("Reasoning: low");
    expect(await promptOf(anthropicEffort("max"))).toContain("Reasoning: high");
  } finally {
    lm.free();
  }
  // Each API's effort reaches the engine.
  expect(parseChatRequest({ model: "m", messages: hi, reasoning_effort: "high" }).thinking).toMatchObject({
    effort: "high",
  });
  expect(parseOllamaChat({ model: "m", messages: hi, think: "low" }).thinking).toMatchObject({ effort: "low" });
  // Ollama's newer "max" (its CLI's --think max), which it reads as gpt-oss's high, was a 400.
  expect(parseOllamaChat({ model: "m", messages: hi, think: "max" }).thinking).toMatchObject({
    enabled: true,
    effort: "high",
  });
  expect(parseResponsesRequest({ model: "m", input: "Hi", reasoning: { effort: "medium" } }).thinking).toMatchObject({
    effort: "medium",
  });
  // OpenAI's newer "xhigh" was a 400 on every route.
  expect(parseChatRequest({ model: "m", messages: hi, reasoning_effort: "xhigh" }).thinking).toMatchObject({
    effort: "xhigh",
  });
  expect(parseResponsesRequest({ model: "m", input: "Hi", reasoning: { effort: "xhigh" } }).thinking).toMatchObject({
    effort: "xhigh",
  });
  const r = await post(`${server.url}/v1/chat/completions`, {
    model: greeter,
    messages: hi,
    temperature: 0,
    max_tokens: 40,
    reasoning_effort: "none",
  });
  expect(r.status).toBe(200);
  // The budget of 0 forces the end of the analysis and the final header: no reasoning, an answer.
  expect(r.json.choices[0].message.reasoning_content).toBeUndefined();
  expect(r.json.choices[0].message.content.length).toBeGreaterThan(0);
});

describe("mlx run", () => {
  test("shows the reasoning apart from the answer; --hide-thinking drops it", async () => {
    const run = cliRunner(home);
    const args = ["run", "-m", greeter, "--max-tokens", "40", "--temp", "0", "Hi"];
    const shown = await run(args);
    expect(shown.stderr).toBe("");
    expect(shown.code).toBe(0);
    expect(shown.stdout).toBe("The user greets.\n\nHello!\n");
    const hidden = await run([...args, "--hide-thinking"]);
    expect(hidden.stdout).toBe("Hello!\n");
  });
});

test("a tiny gpt_oss model with gpt-oss's template runs, its answer split (gibberish: whatever it is, no marker leaks)", async () => {
  const tiny = join(root, "gpt-oss");
  writeTinyModel(tiny, { modelType: "gpt_oss", contextLength: 1024, chatTemplate: template });
  const r = await post(`${server.url}/v1/chat/completions`, {
    model: tiny,
    messages: hi,
    temperature: 0,
    max_tokens: 16,
    reasoning_effort: "low",
  });
  expect(r.status).toBe(200);
  expect(r.json.choices[0].message.content ?? "").not.toContain("<|channel|>");
});
