// The Anthropic Messages API with Anthropic's official client against a real server on
// loopback: create, stream (the event sequence), stop reasons, consecutive turns of one role
// combined, a tool round-trip (whole and streamed), a call the budget cut, what thinking excludes
// (a forced call, a prefill), structured output (output_config), count_tokens, errors in
// Anthropic's shape, x-api-key, and the prefix cache across system prompts that differ only in a
// volatile last line. Tiny random-weight model: a required call is valid only because the grammar
// makes it so.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Anthropic from "@anthropic-ai/sdk";
import { betaTool } from "@anthropic-ai/sdk/helpers/beta/json-schema";
import Ajv from "ajv";
import type { RunningServer } from "../src/server/app";
import { post, serve } from "./helpers/serve";
import { completeAlone } from "./helpers/generate";
import { chatTokens } from "../src/engine/prompt";
import { defaultSampling } from "../src/engine/sampling";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import type { ChatMessage } from "../src/tokenizer/tokenizer";
import { writeScriptedModel } from "./helpers/scripted-model";
import { writeTinyModel } from "./helpers/tiny-model";

let server: RunningServer;
let client: Anthropic;
let model: string;

const input_schema = {
  type: "object" as const,
  properties: { city: { type: "string", maxLength: 10 }, days: { type: "integer", minimum: 1, maximum: 7 } },
  required: ["city", "days"],
  additionalProperties: false,
};
const validInput = new Ajv().compile(input_schema);
const tools: Anthropic.Tool[] = [
  { name: "forecast", description: "The weather forecast for a city", input_schema },
  { name: "clock", description: "The time now", input_schema: { type: "object", properties: {} } },
];
const ask: Anthropic.MessageParam[] = [{ role: "user", content: "What will the weather be in Oslo?" }];

beforeAll(() => {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-anthropic-"));
  process.env.MLX_HOME ??= join(root, "home");
  model = join(root, "tiny");
  writeTinyModel(model, { contextLength: 1024 });
  server = serve({ defaultModel: model });
  client = new Anthropic({ baseURL: server.url, apiKey: "unused", maxRetries: 0 });
});

afterAll(() => server.stop());

/** A tiny qwen3 whose template opens <think> (and writes an empty reasoning into the prompt with enable_thinking false). */
function tinyThinker(): string {
  const thinker = join(mkdtempSync(join(tmpdir(), "mlx-serve-anthropic-")), "thinker");
  writeTinyModel(thinker, {
    modelType: "qwen3",
    contextLength: 1024,
    chatTemplate:
      "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}<|im_start|>assistant\n" +
      "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- else %}<think>\n{%- endif %}",
  });
  return thinker;
}

/** Sampling fields the server reads, which this SDK's types no longer list. */
const sampling = (fields: { temperature?: number; top_k?: number }): object => fields;

const textOf = (m: Anthropic.Message) => m.content.map((b) => (b.type === "text" ? b.text : "")).join("");

describe("messages.create", () => {
  test("a message with text, a stop reason and usage", async () => {
    const m = await client.messages.create({
      model,
      max_tokens: 8,
      system: "Be brief.",
      messages: [{ role: "user", content: "Hi" }],
      ...sampling({ temperature: 0 }),
      metadata: { user_id: "u1" },
    });
    expect(m.id).toMatch(/^msg_/);
    expect(m.type).toBe("message");
    expect(m.role).toBe("assistant");
    expect(m.model).toBe(model);
    expect(m.content[0]!.type).toBe("text");
    expect(["end_turn", "max_tokens"]).toContain(m.stop_reason!);
    expect(m.usage.output_tokens).toBeGreaterThan(0);
    expect(m.usage.output_tokens).toBeLessThanOrEqual(8);
    expect(m.usage.input_tokens + m.usage.cache_read_input_tokens!).toBeGreaterThan(5);
  });

  test("a last assistant message is a prefill: the model goes on with it, and the answer is what follows", async () => {
    const prefill = '{"name": "Zorb';
    const messages: Anthropic.MessageParam[] = [
      { role: "user", content: "Write a JSON object with a name" },
      { role: "assistant", content: prefill },
    ];
    const m = await client.messages.create({ model, max_tokens: 6, messages, ...sampling({ temperature: 0 }) });
    // The prompt is the conversation cut after the prefill's text: no end of the assistant's
    // turn, no new turn opened after it.
    const lm = loadModel(model);
    const ids = chatTokens(lm.tokenizer, messages as ChatMessage[], undefined, undefined, true);
    expect(lm.tokenizer.decode(ids).endsWith(prefill)).toBe(true);
    expect(m.usage.input_tokens + m.usage.cache_read_input_tokens!).toBe(ids.length);
    const alone = await completeAlone(lm, ids, { sampling: defaultSampling, maxTokens: 6 });
    lm.free();
    expect((m.content[0] as Anthropic.TextBlock).text).toBe(alone.text);
  });

  test("consecutive turns of one role are combined into one, as Anthropic does: a template insisting on alternating roles takes them", async () => {
    // Mistral-style: raises unless user and assistant turns alternate, starting with the user.
    const alternating = join(mkdtempSync(join(tmpdir(), "mlx-serve-anthropic-")), "alternating");
    writeTinyModel(alternating, {
      contextLength: 1024,
      chatTemplate:
        "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}" +
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
        "{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %}{{ m.content }}</s>{% endif %}{% endfor %}",
    });
    const messages: Anthropic.MessageParam[] = [
      { role: "user", content: "Hi" },
      { role: "user", content: [{ type: "text", text: "Count" }] },
      { role: "assistant", content: "One" },
      { role: "assistant", content: "Two" },
      { role: "user", content: "Go on" },
    ];
    const m = await client.messages.create({ model: alternating, max_tokens: 2, messages });
    expect(m.usage.output_tokens).toBe(2);
    const counted = await client.messages.countTokens({ model: alternating, messages });
    expect(m.usage.input_tokens + m.usage.cache_read_input_tokens!).toBe(counted.input_tokens);
    // Combined a line apart: the prompt of the same conversation written as alternating turns.
    const combined = await client.messages.countTokens({
      model: alternating,
      messages: [
        { role: "user", content: "Hi\nCount" },
        { role: "assistant", content: "One\nTwo" },
        { role: "user", content: "Go on" },
      ],
    });
    expect(counted.input_tokens).toBe(combined.input_tokens);
    // A message's text blocks go a line apart too (glued, a reminder block ran into the user's words).
    const blocks = await client.messages.countTokens({
      model: alternating,
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "<reminder>Be brief</reminder>" },
            { type: "text", text: "Hi" },
          ],
        },
      ],
    });
    const lines = await client.messages.countTokens({
      model: alternating,
      messages: [{ role: "user", content: "<reminder>Be brief</reminder>\nHi" }],
    });
    expect(blocks.input_tokens).toBe(lines.input_tokens);
  });

  test("consecutive assistant turns combined keep their thinking blocks' reasoning for the template", async () => {
    const reasoner = join(mkdtempSync(join(tmpdir(), "mlx-serve-anthropic-")), "reasoner");
    writeTinyModel(reasoner, {
      contextLength: 1024,
      chatTemplate:
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}" +
        "{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n",
    });
    const count = async (messages: Anthropic.MessageParam[]) =>
      (await client.messages.countTokens({ model: reasoner, messages })).input_tokens;
    const thought: Anthropic.ThinkingBlockParam = { type: "thinking", thinking: "Count up from one", signature: "" };
    const apart = await count([
      { role: "user", content: "Count" },
      { role: "assistant", content: [thought, { type: "text", text: "One" }] },
      { role: "assistant", content: "Two" },
      { role: "user", content: "Go on" },
    ]);
    const together = await count([
      { role: "user", content: "Count" },
      { role: "assistant", content: [thought, { type: "text", text: "One\nTwo" }] },
      { role: "user", content: "Go on" },
    ]);
    expect(apart).toBe(together);
  });

  test("models.list and models.retrieve in Anthropic's shapes", async () => {
    const page = await client.models.list();
    const listed = page.data.find((m) => m.id === model)!;
    // lifecycle: required by the SDKs' ModelInfo.
    expect(listed).toMatchObject({ type: "model", id: model, display_name: model, lifecycle: "active" });
    expect(Number.isNaN(Date.parse(listed.created_at))).toBe(false);
    // Into the next second: a model neither stored nor loaded keeps its date (it was "now" once, a flake).
    await Bun.sleep(1020 - (Date.now() % 1000));
    expect(await client.models.retrieve(model)).toEqual(listed);
  });

  test("models.list pages by limit, after_id and before_id, as Anthropic's (a client that pages on until an empty page stops)", async () => {
    const all = (await client.models.list({ limit: 1000 })).data.map((m) => m.id);
    const first = await client.models.list({ limit: 1 });
    expect(first.data.map((m) => m.id)).toEqual(all.slice(0, 1));
    expect(first.has_more).toBe(all.length > 1);
    // The SDK's iterator follows last_id page by page: every model once.
    const paged: string[] = [];
    for await (const m of client.models.list({ limit: 1 })) paged.push(m.id);
    expect(paged).toEqual(all);
    const after = await client.models.list({ after_id: all.at(-1)! });
    expect([after.data, after.has_more, after.first_id]).toEqual([[], false, null]);
    const before = await client.models.list({ before_id: all.at(-1)!, limit: 1 });
    expect(before.data.map((m) => m.id)).toEqual(all.slice(-2, -1));
    const bad = await client.models.list({ limit: 0 }).catch((e) => e);
    expect(bad).toBeInstanceOf(Anthropic.BadRequestError);
    expect(bad.error.error.message).toContain("'limit' must be a whole number from 1 to 1000");
  });

  test("models.retrieve of an unknown model is a 404 in Anthropic's error shape (and in OpenAI's without anthropic-version)", async () => {
    const missing = await client.models.retrieve("no-such-model").catch((e) => e);
    expect(missing).toBeInstanceOf(Anthropic.NotFoundError);
    expect(missing.error).toEqual({
      type: "error",
      error: { type: "not_found_error", message: expect.stringContaining("'no-such-model'") },
    });
    const openai = await fetch(`${server.url}/v1/models/no-such-model`);
    expect(openai.status).toBe(404);
    expect(((await openai.json()) as { error: { code: string } }).error.code).toBe("model_not_found");
  });

  test("max_tokens and stop_sequences end the answer with their stop reasons", async () => {
    const messages: Anthropic.MessageParam[] = [{ role: "user", content: [{ type: "text", text: "Count" }] }];
    // Random weights rarely pick EOS: with greedy decoding the answer runs to max_tokens.
    const long = await client.messages.create({ model, max_tokens: 12, messages, ...sampling({ temperature: 0 }) });
    expect(long.stop_reason).toBe("max_tokens");
    expect(long.stop_sequence).toBeNull();
    expect(long.usage.output_tokens).toBe(12);
    const text = textOf(long);
    const stop = text
      .slice(Math.floor(text.length / 2))
      .trim()
      .slice(0, 2);
    expect(stop.length).toBeGreaterThan(0);
    const stopped = await client.messages.create({
      model,
      max_tokens: 12,
      messages,
      ...sampling({ temperature: 0 }),
      stop_sequences: ["never-generated-zzz", stop],
    });
    expect(stopped.stop_reason).toBe("stop_sequence");
    expect(stopped.stop_sequence).toBe(stop);
    expect(text.startsWith(textOf(stopped))).toBe(true);
    expect(textOf(stopped)).not.toContain(stop);
  });
});

describe("an answer the context ends before max_tokens", () => {
  test("stops with model_context_window_exceeded, as Anthropic's own, whole and streamed; max_tokens reached stays max_tokens", async () => {
    // A prompt that leaves 24 of the tiny model's 1,024 tokens: the context, not max_tokens, ends the answer.
    const text = "word ".repeat(980);
    const counted = await client.messages.countTokens({ model, messages: [{ role: "user", content: text }] });
    const room = 1024 - counted.input_tokens;
    expect(room).toBeGreaterThan(5);
    const request = {
      model,
      max_tokens: 500,
      messages: [{ role: "user" as const, content: text }],
      ...sampling({ temperature: 0 }),
    };
    const whole = await client.messages.create(request);
    expect(whole.usage.output_tokens).toBe(room);
    expect(whole.stop_reason).toBe("model_context_window_exceeded");
    const streamed = await client.messages.stream(request).finalMessage();
    expect(streamed.stop_reason).toBe("model_context_window_exceeded");
    const reached = await client.messages.create({ ...request, max_tokens: room });
    expect(reached.stop_reason).toBe("max_tokens");
  });
});

describe("messages.stream", () => {
  test("Anthropic's event sequence, and the same text as the deltas", async () => {
    const events: string[] = [];
    let deltas = "";
    const stream = client.messages.stream({
      model,
      max_tokens: 10,
      messages: [{ role: "user", content: "Hi" }],
      ...sampling({ temperature: 0 }),
    });
    stream.on("streamEvent", (e) => {
      events.push(e.type);
      if (e.type === "content_block_delta" && e.delta.type === "text_delta") deltas += e.delta.text;
    });
    const m = await stream.finalMessage();
    expect(events[0]).toBe("message_start");
    expect(events[1]).toBe("content_block_start");
    expect(events.slice(-3)).toEqual(["content_block_stop", "message_delta", "message_stop"]);
    expect(events.filter((e) => e === "content_block_delta").length).toBeGreaterThan(0);
    expect(textOf(m)).toBe(deltas);
    expect(m.stop_reason).toBe("max_tokens");
    expect(m.usage.output_tokens).toBe(10);
    const whole = await client.messages.create({
      model,
      max_tokens: 10,
      messages: [{ role: "user", content: "Hi" }],
      ...sampling({ temperature: 0 }),
    });
    expect(textOf(whole)).toBe(deltas);
  });

  test("characters of several tokens stream whole: stop_sequences across tokens, max_tokens within a character", async () => {
    // " 日本語" is seven tokens (a byte or two of a character each), " 👍" three.
    const scripted = join(mkdtempSync(join(tmpdir(), "mlx-serve-anthropic-")), "scripted");
    writeScriptedModel(scripted, ["Hi", " 日本語", " 👍", " e\u0301"]);
    const cases: [{ max_tokens: number; stop_sequences?: string[] }, string, string | null][] = [
      [{ max_tokens: 30 }, "Hi 日本語 👍 e\u0301", null],
      [{ max_tokens: 30, stop_sequences: ["本語", "👍"] }, "Hi 日", "本語"],
      [{ max_tokens: 3 }, "Hi ", null], // within 日: no U+FFFD for its first byte
    ];
    for (const [limits, answer, stopSequence] of cases) {
      const request = {
        model: scripted,
        messages: [{ role: "user" as const, content: "Hi" }],
        ...limits,
        ...sampling({ temperature: 0 }),
      };
      const whole = await client.messages.create(request);
      expect([textOf(whole), whole.stop_sequence]).toEqual([answer, stopSequence]);
      const deltas: string[] = [];
      const stream = client.messages.stream(request);
      stream.on("text", (text) => deltas.push(text));
      const streamed = await stream.finalMessage();
      expect([deltas.join(""), streamed.stop_sequence]).toEqual([answer, stopSequence]);
      for (const delta of deltas) expect(delta).not.toMatch(/\uFFFD|[\ud800-\udbff]$|^[\udc00-\udfff]/);
    }
  });

  test("the raw stream holds message_start, ping, and named SSE events", async () => {
    const r = await fetch(`${server.url}/v1/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, max_tokens: 3, stream: true, messages: [{ role: "user", content: "Hi" }] }),
    });
    expect(r.headers.get("content-type")).toContain("text/event-stream");
    const names = [...(await r.text()).matchAll(/^event: (\w+)$/gm)].map((m) => m[1]);
    expect(names.slice(0, 3)).toEqual(["message_start", "ping", "content_block_start"]);
    expect(names.at(-1)).toBe("message_stop");
  });
});

describe("tools", () => {
  test("a round-trip: tool_choice 'tool' gives a tool_use block with valid input, its tool_result is answered", async () => {
    let call: Anthropic.ToolUseBlock | undefined;
    for (const seed of [1, 2, 3]) {
      const m = await client.messages.create({
        model,
        max_tokens: 120,
        messages: ask,
        tools,
        tool_choice: { type: "tool", name: "forecast", disable_parallel_tool_use: true },
        ...sampling({ temperature: 1, top_k: 50 + seed }),
      });
      if (m.stop_reason === "max_tokens") continue;
      expect(m.stop_reason).toBe("tool_use");
      expect(m.stop_sequence).toBeNull();
      const uses = m.content.filter((b) => b.type === "tool_use");
      expect(uses).toHaveLength(1);
      call = uses[0] as Anthropic.ToolUseBlock;
      expect(call.name).toBe("forecast");
      expect(validInput(call.input)).toBe(true);
      break;
    }
    expect(call).toBeDefined();
    const history: Anthropic.MessageParam[] = [
      ...ask,
      { role: "assistant", content: [{ type: "tool_use", id: call!.id, name: call!.name, input: call!.input }] },
      {
        role: "user",
        content: [
          { type: "tool_result", tool_use_id: call!.id, content: "Snow, -3 degrees" },
          { type: "text", text: "Thanks" },
        ],
      },
    ];
    const answer = await client.messages.create({
      model,
      max_tokens: 4,
      messages: history,
      tools,
      tool_choice: { type: "none" },
    });
    expect(answer.content[0]!.type).toBe("text");
    // The call and its result are in the prompt; offering no tools ("none") adds no description.
    const counted = await client.messages.countTokens({
      model,
      messages: history,
      tools,
      tool_choice: { type: "none" },
    });
    const bare = await client.messages.countTokens({ model, messages: ask });
    expect(answer.usage.input_tokens + answer.usage.cache_read_input_tokens!).toBe(counted.input_tokens);
    expect(counted.input_tokens).toBeGreaterThan(bare.input_tokens + 20);
  }, 60_000);

  test("the SDK's toolRunner: its default message thread is a 400 that says how to run without one; with thread: false it runs the tool and sends its result", async () => {
    const inputs: unknown[] = [];
    const forecast = betaTool({
      name: "forecast",
      description: "The weather forecast for a city",
      // The schema's types are the SDK's to infer the input from; the server's check is validInput.
      inputSchema: input_schema as { type: "object" },
      run: (input) => {
        inputs.push(input);
        return "Snow, -3 degrees";
      },
    });
    const request = {
      model,
      max_tokens: 120,
      max_iterations: 2,
      messages: ask,
      tools: [forecast],
      tool_choice: { type: "tool" as const, name: "forecast", disable_parallel_tool_use: true },
      ...sampling({ temperature: 0 }),
    };
    const threaded = await client.beta.messages
      .toolRunner(request)
      .runUntilDone()
      .catch((e) => e);
    expect(threaded).toBeInstanceOf(Anthropic.BadRequestError);
    expect(threaded.message).toContain("thread: false");
    const runner = client.beta.messages.toolRunner({ ...request, thread: false });
    const stops = [];
    for await (const m of runner) stops.push(m.stop_reason);
    expect(stops).toEqual(["tool_use", "tool_use"]);
    expect(inputs).toHaveLength(2);
    for (const input of inputs) expect(validInput(input)).toBe(true);
    expect(runner.params.messages.map((m) => m.role)).toEqual(["user", "assistant", "user", "assistant", "user"]);
  }, 60_000);

  test("a tool_use the next message leaves unanswered (or that ends the conversation), a tool_result for no tool_use, or a repeated id, is a 400 as Anthropic's", async () => {
    const use = (id: string): Anthropic.ToolUseBlockParam => ({
      type: "tool_use",
      id,
      name: "forecast",
      input: { city: "Oslo", days: 1 },
    });
    const result = (id: string): Anthropic.ToolResultBlockParam => ({
      type: "tool_result",
      tool_use_id: id,
      content: "Snow",
    });
    const cases: [Anthropic.MessageParam[], RegExp][] = [
      // Not a prefill to go on with: the model would write on as if the call had run.
      [
        [...ask, { role: "assistant", content: [use("t1")] }],
        /'messages\.1\.content' has tool_use blocks without a tool_result in the next message: t1/,
      ],
      [
        [
          ...ask,
          { role: "assistant", content: [use("t1"), use("t2")] },
          { role: "user", content: [result("t1"), { type: "text", text: "Go on" }] },
        ],
        /'messages\.1\.content' has tool_use blocks without a tool_result in the next message: t2$/,
      ],
      [
        [...ask, { role: "assistant", content: [use("t1")] }, { role: "user", content: [result("t1"), result("t9")] }],
        /'messages\.2\.content' has tool_result blocks for no tool_use of the message before: t9/,
      ],
      [[{ role: "user", content: [result("t1")] }], /'messages\.0\.content' has tool_result blocks for no tool_use/],
      // Which call would one result answer, or which result answer a call?
      [
        [...ask, { role: "assistant", content: [use("t1"), use("t1")] }, { role: "user", content: [result("t1")] }],
        /'messages\.1\.content' has tool_use blocks that share an id \(ids must be unique\): t1$/,
      ],
      [
        [...ask, { role: "assistant", content: [use("t1")] }, { role: "user", content: [result("t1"), result("t1")] }],
        /'messages\.2\.content' has more than one tool_result for: t1$/,
      ],
    ];
    // count_tokens reads the conversation as a generation does.
    for (const [messages, message] of cases) {
      for (const [route, body] of [
        ["/v1/messages", { model, max_tokens: 4, tools, messages }],
        ["/v1/messages/count_tokens", { model, tools, messages }],
      ] as const) {
        const r = await post(`${server.url}${route}`, body);
        expect(r.status).toBe(400);
        expect(r.json.error.type).toBe("invalid_request_error");
        expect(r.json.error.message).toMatch(message);
      }
    }
  });

  test("prose before a call streams as the message read whole: the SDK's finalMessage is the created message", async () => {
    // A model that writes "Sure.", a blank line, then a call to `now` (the grammar lays it out).
    const scripted = join(mkdtempSync(join(tmpdir(), "mlx-serve-anthropic-")), "scripted");
    writeScriptedModel(scripted, ["Sure", ".", "\n\n", "<tool_call>"]);
    const request = {
      model: scripted,
      max_tokens: 120,
      messages: ask,
      tools: [{ name: "now", input_schema: { type: "object" as const, properties: {}, additionalProperties: false } }],
      // One call: the script would go on writing calls after it.
      tool_choice: { type: "auto" as const, disable_parallel_tool_use: true },
      ...sampling({ temperature: 0 }),
    };
    const whole = await client.messages.create(request);
    expect(whole.stop_reason).toBe("tool_use");
    expect(whole.content.map((b) => b.type)).toEqual(["text", "tool_use"]);
    expect(textOf(whole)).toBe("Sure.");
    const streamed = await client.messages.stream(request).finalMessage();
    // The blank line before the call is not streamed as text the whole message drops.
    const withoutIds = (m: Anthropic.Message) => m.content.map((b) => (b.type === "tool_use" ? { ...b, id: "" } : b));
    expect(withoutIds(streamed)).toEqual(withoutIds(whole));
    expect(streamed.stop_reason).toBe("tool_use");
  });

  test("streamed: tool input arrives as input_json_delta, and tool_choice 'any' calls some tool", async () => {
    let kinds: string[] = [];
    let partial = "";
    let final: Anthropic.Message | undefined;
    for (const seed of [1, 2, 3]) {
      kinds = [];
      partial = "";
      const stream = client.messages.stream({
        model,
        max_tokens: 120,
        messages: ask,
        tools,
        tool_choice: { type: "any", disable_parallel_tool_use: true },
        ...sampling({ temperature: 1, top_k: 50 + seed }),
      });
      stream.on("streamEvent", (e) => {
        kinds.push(e.type === "content_block_delta" ? e.delta.type : e.type);
        if (e.type === "content_block_delta" && e.delta.type === "input_json_delta") partial += e.delta.partial_json;
      });
      final = await stream.finalMessage();
      if (final.stop_reason === "tool_use") break;
    }
    expect(final!.stop_reason).toBe("tool_use");
    const uses = final!.content.filter((b): b is Anthropic.ToolUseBlock => b.type === "tool_use");
    expect(uses).toHaveLength(1);
    expect(kinds).toContain("input_json_delta");
    expect(JSON.parse(partial)).toEqual(uses[0]!.input);
    expect(["forecast", "clock"]).toContain(uses[0]!.name);
  }, 60_000);

  test("a call the budget closed early is stop_reason max_tokens, not a tool_use to run (whole and streamed)", async () => {
    const request = { model, messages: ask, tools, tool_choice: { type: "tool" as const, name: "forecast" } };
    const tooSmall = await post(`${server.url}/v1/messages`, { ...request, max_tokens: 1 });
    const shortest = Number(/takes (\d+) tokens/.exec(tooSmall.json.error.message)![1]);
    // A budget of the shortest valid call's length ends the answer: the grammar closes the call in it.
    const whole = await post(`${server.url}/v1/messages`, { ...request, max_tokens: shortest });
    expect(whole.json.usage.output_tokens).toBe(shortest);
    expect(whole.headers.get("X-Mlx-Closed-Early")).toBe("true");
    expect(whole.json.stop_reason).toBe("max_tokens");
    const streamed = await client.messages.stream({ ...request, max_tokens: shortest }).finalMessage();
    expect(streamed.usage.output_tokens).toBe(shortest);
    expect(streamed.stop_reason).toBe("max_tokens");
  }, 60_000);
});

describe("thinking", () => {
  test("thinking enabled takes tool_choice auto or none; a forced call ('any', 'tool') or a prefill is a 400, as Anthropic's", async () => {
    const thinker = tinyThinker();
    const thinking = { type: "enabled" as const, budget_tokens: 4 };
    const request = { model: thinker, max_tokens: 60, messages: ask, tools, thinking };
    for (const tool_choice of [{ type: "any" as const }, { type: "tool" as const, name: "forecast" }]) {
      const refused = await client.messages.create({ ...request, tool_choice }).catch((e) => e);
      expect(refused).toBeInstanceOf(Anthropic.BadRequestError);
      expect(refused.error.error.message).toMatch(
        /'tool_choice\.type' must be 'auto' or 'none' when thinking is enabled/,
      );
      const counted = await client.messages.countTokens({ ...request, tool_choice }).catch((e) => e);
      expect(counted).toBeInstanceOf(Anthropic.BadRequestError);
    }
    const auto = await client.messages.create({ ...request, tool_choice: { type: "auto" } });
    expect(auto.content[0]!.type).toBe("thinking");
    // The reasoning would come after the prefill's text: none would be written.
    const prefill = {
      model: thinker,
      max_tokens: 12,
      thinking,
      messages: [...ask, { role: "assistant" as const, content: "It" }],
    };
    const afterPrefill = await client.messages.create(prefill).catch((e) => e);
    expect(afterPrefill).toBeInstanceOf(Anthropic.BadRequestError);
    expect(afterPrefill.error.error.message).toMatch(/'thinking' enabled cannot be used with a prefill/);
  });
});

describe("structured output", () => {
  test("output_config.format: the text is JSON the schema accepts (create, and the SDK's parse), beside an effort", async () => {
    const output_config = { format: { type: "json_schema" as const, schema: input_schema } };
    const m = await client.messages.create({ model, max_tokens: 60, messages: ask, output_config });
    expect(m.content.map((b) => b.type)).toEqual(["text"]);
    expect(validInput(JSON.parse(textOf(m)))).toBe(true);
    const parsed = await client.messages.parse({ model, max_tokens: 60, messages: ask, output_config });
    expect(validInput(parsed.parsed_output)).toBe(true);
    const effort = await client.messages.create({
      model,
      max_tokens: 60,
      messages: ask,
      output_config: { ...output_config, effort: "low" },
    });
    expect(validInput(JSON.parse(textOf(effort)))).toBe(true);
  });

  test("an answer the budget closed early short of max_tokens is stop_reason max_tokens, not model_context_window_exceeded (whole and streamed)", async () => {
    // SmolLM2 greedy: the budget narrows the answer to {"c": "red"}, closed with 9 of 10 tokens.
    const smollm2 = await resolveModelPath(undefined);
    const smol = serve({ defaultModel: smollm2 });
    try {
      const schema = {
        type: "object",
        properties: { c: { type: "string" } },
        required: ["c"],
        additionalProperties: false,
      };
      const request = {
        model: smollm2,
        max_tokens: 10,
        messages: [{ role: "user" as const, content: "Give a color" }],
        output_config: { format: { type: "json_schema" as const, schema } },
        ...sampling({ temperature: 0 }),
      };
      const whole = await post(`${smol.url}/v1/messages`, request);
      expect(whole.headers.get("X-Mlx-Closed-Early")).toBe("true");
      expect(whole.json.usage.output_tokens).toBeLessThan(request.max_tokens);
      expect(whole.json.stop_reason).toBe("max_tokens");
      const streamed = await new Anthropic({ baseURL: smol.url, apiKey: "unused", maxRetries: 0 }).messages
        .stream(request)
        .finalMessage();
      expect(streamed.stop_reason).toBe("max_tokens");
    } finally {
      await smol.stop();
    }
  }, 120_000);

  test("thinking 'adaptive' leaves it to the model: one without <think> answers, as with thinking absent", async () => {
    const params = { model, max_tokens: 4, temperature: 0, messages: ask };
    const adaptive = await client.messages.create({ ...params, thinking: { type: "adaptive" } });
    expect(textOf(adaptive)).toBe(textOf(await client.messages.create(params)));
  });
});

describe("count_tokens", () => {
  test("counts what a generation prefills, system and tools included", async () => {
    const messages: Anthropic.MessageParam[] = [{ role: "user", content: "Hello there" }];
    const plain = await client.messages.countTokens({ model, messages });
    const short = await client.messages.countTokens({ model, messages, system: "Be brief." });
    const blocks = await client.messages.countTokens({
      model,
      messages,
      system: [
        { type: "text", text: "Be brief." },
        { type: "text", text: "Cite the files you read, one per line." },
      ],
    });
    const withTools = await client.messages.countTokens({ model, messages, tools });
    expect(plain.input_tokens).toBeGreaterThan(2);
    expect(blocks.input_tokens).toBeGreaterThan(short.input_tokens + 5);
    expect(withTools.input_tokens).toBeGreaterThan(plain.input_tokens + 30);
    const m = await client.messages.create({ model, max_tokens: 1, messages });
    expect(m.usage.input_tokens + m.usage.cache_read_input_tokens!).toBe(plain.input_tokens);
  });

  test("takes a request's cache_control and output_config, and counts the prompt JSON output gets (thinking off)", async () => {
    const thinker = tinyThinker();
    const params = {
      model: thinker,
      messages: ask,
      cache_control: { type: "ephemeral" as const },
      output_config: { format: { type: "json_schema" as const, schema: input_schema } },
    };
    const counted = await client.messages.countTokens(params);
    const m = await client.messages.create({ ...params, max_tokens: 60 });
    expect(m.usage.input_tokens + m.usage.cache_read_input_tokens!).toBe(counted.input_tokens);
    const thinking = await client.messages.countTokens({ model: thinker, messages: ask });
    expect(counted.input_tokens).toBeGreaterThan(thinking.input_tokens);
  });
});

describe("errors", () => {
  test("bad requests are 400s in Anthropic's shape, naming the field; the server keeps serving", async () => {
    const bad = await client.messages.create({ model, messages: ask } as never).catch((e) => e);
    expect(bad).toBeInstanceOf(Anthropic.BadRequestError);
    expect(bad.status).toBe(400);
    expect(bad.error.type).toBe("error");
    expect(bad.error.error.type).toBe("invalid_request_error");
    expect(bad.error.error.message).toContain("'max_tokens' is required");
    const url = `${server.url}/v1/messages`;
    const cases: [unknown, RegExp][] = [
      [{ thinking: { type: "enabled", budget_tokens: 1024 } }, /'thinking.budget_tokens' must be less than max_tokens/],
      [{ thinking: { type: "enabled", budget_tokens: 2 } }, /this model does not think/],
      // "auto" and "standard_only" are the one tier a local server has; another is refused.
      [{ service_tier: "priority" }, /'service_tier' 'priority' is not supported/],
      // Anthropic's metadata has user_id alone: another key would be dropped unseen.
      [{ metadata: { user_id: "u1", session: "s1" } }, /'metadata.session' is not supported/],
      [{ messages: [{ role: "tool", content: "x" }] }, /'messages\.0\.role' must be one of user, assistant, system/],
      [
        { messages: [{ role: "user", content: [{ type: "image", source: {} }] }] },
        /content of type 'image' is not supported/,
      ],
      // Anthropic's error shape has no param: the message says which block, in a long history too.
      [
        {
          messages: [
            ...ask,
            { role: "assistant", content: "Here is a chart." },
            {
              role: "user",
              content: [
                { type: "text", text: "And this?" },
                { type: "document", source: {} },
              ],
            },
          ],
        },
        /content of type 'document' is not supported by this server \(at 'messages\.2\.content\.1\.type'\)/,
      ],
      [
        { system: [{ type: "image", source: {} }] },
        /a block of type 'image' here is not supported by this server \(at 'system\.0\.type'\)/,
      ],
      [
        { messages: [{ role: "assistant", content: [{ type: "tool_result", tool_use_id: "a" }] }] },
        /belong in user messages/,
      ],
      [{ temperature: 1.5 }, /'temperature' must be <= 1/],
      [{ messages: [{ role: "user", content: [] }] }, /'messages\.0\.content' must not be empty/],
      [{ tools: [{ name: "web", type: "web_search_20250305" }] }, /tool type 'web_search_20250305'/],
      [{ tools, tool_choice: { type: "tool", name: "nope" } }, /'nope', which is not among the tools/],
      [{ tool_choice: { type: "any" } }, /'any' needs 'tools'/],
      [
        { tools, tool_choice: { type: "auto", disable_parallel_tool_calls: true } },
        /'tool_choice\.disable_parallel_tool_calls' is not supported/,
      ],
      // A call's input is an object: under another schema a forced call came back as raw call text.
      [
        { max_tokens: 40, tools: [{ name: "echo", input_schema: { type: "string" } }], tool_choice: { type: "any" } },
        /'tools\.0\.input_schema\.type' must be 'object'/,
      ],
      // JSON output starts the answer afresh: with a prefill before it the text would not be JSON.
      [
        {
          max_tokens: 40,
          messages: [...ask, { role: "assistant", content: '{"city":' }],
          output_config: { format: { type: "json_schema", schema: input_schema } },
        },
        /'output_config\.format' cannot be used with a prefill/,
      ],
      // A prefill ending in a space would have the model write a second one (Anthropic refuses it too).
      [
        { messages: [...ask, { role: "assistant", content: "It will be " }] },
        /'messages\.1\.content' \(the final assistant message\) must not end with whitespace/,
      ],
    ];
    for (const [change, message] of cases) {
      const r = await post(url, { model, max_tokens: 4, messages: ask, ...(change as object) });
      expect(r.status).toBe(400);
      expect(r.json.type).toBe("error");
      expect(r.json.error.type).toBe("invalid_request_error");
      expect(r.json.error.message).toMatch(message);
    }
    const missing = await client.messages
      .create({ model: "no-such-model", max_tokens: 4, messages: ask })
      .catch((e) => e);
    expect(missing).toBeInstanceOf(Anthropic.NotFoundError);
    expect(missing.error.error.type).toBe("not_found_error");
    const ok = await client.messages.create({ model, max_tokens: 1, messages: ask });
    expect(ok.usage.output_tokens).toBe(1);
    // Before: "auto" (what clients send by default where they send one) was a 400 as OpenAI's was not.
    for (const service_tier of ["auto", "standard_only"] as const)
      expect(
        (await client.messages.create({ model, max_tokens: 1, messages: ask, service_tier })).usage.output_tokens,
      ).toBe(1);
  });

  test("x-api-key is the API key; a wrong one is a 401 authentication_error", async () => {
    const guarded = serve({ defaultModel: model, apiKey: "sk-test" });
    try {
      const good = new Anthropic({ baseURL: guarded.url, apiKey: "sk-test", maxRetries: 0 });
      expect((await good.messages.countTokens({ model, messages: ask })).input_tokens).toBeGreaterThan(0);
      const wrong = await new Anthropic({ baseURL: guarded.url, apiKey: "sk-wrong", maxRetries: 0 }).messages
        .countTokens({ model, messages: ask })
        .catch((e) => e);
      expect(wrong).toBeInstanceOf(Anthropic.AuthenticationError);
      expect(wrong.error.error.type).toBe("authentication_error");
    } finally {
      await guarded.stop();
    }
  });
});

describe("prefix cache", () => {
  test("a long shared system prompt whose last line is volatile (a date) is read from the cache", async () => {
    const rules = Array.from(
      { length: 40 },
      (_, i) => `Rule ${i + 1}: answer in plain words and cite the file you read.`,
    ).join("\n");
    const system = (date: string) => `${rules}\nToday's date: ${date}`;
    const first = await client.messages.create({ model, max_tokens: 2, system: system("2026-12-01"), messages: ask });
    const second = await client.messages.create({ model, max_tokens: 2, system: system("2026-12-02"), messages: ask });
    const shared = (
      await client.messages.countTokens({ model, messages: [{ role: "user", content: "x" }], system: rules })
    ).input_tokens;
    expect(first.usage.cache_read_input_tokens).toBeLessThan(shared / 2);
    // Everything before the date line comes from the cache; only the rest is prefilled.
    expect(second.usage.cache_read_input_tokens!).toBeGreaterThan(shared - 10);
    expect(second.usage.input_tokens).toBeLessThan(40);
  });

  test("streamed, message_start already splits the prompt between the cache and the rest, as message_delta does", async () => {
    const system = Array.from({ length: 40 }, (_, i) => `Rule ${i + 1}: keep every answer short.`).join("\n");
    await client.messages.create({ model, max_tokens: 2, system, messages: ask });
    const stream = client.messages.stream({ model, max_tokens: 2, system, messages: ask });
    let start: Anthropic.Usage | undefined;
    let end: Anthropic.MessageDeltaUsage | undefined;
    for await (const event of stream) {
      // A copy: the stream updates its message (this object) with message_delta's usage.
      if (event.type === "message_start") start = { ...event.message.usage };
      if (event.type === "message_delta") end = event.usage;
    }
    expect(start!.cache_read_input_tokens!).toBeGreaterThan(100);
    expect([start!.input_tokens, start!.cache_read_input_tokens]).toEqual([
      end!.input_tokens!,
      end!.cache_read_input_tokens,
    ]);
  });
});

describe("an agent's request as Claude Code sends it", () => {
  // A history of four forecast calls, each answered with a long result.
  const longResult = (i: number) => `Day ${i}: ${"snow and wind from the north, ".repeat(12)}`;
  const calls: Anthropic.Beta.BetaMessageParam[] = [0, 1, 2, 3].flatMap((i) => [
    {
      role: "assistant" as const,
      content: [
        {
          type: "tool_use" as const,
          id: `toolu_${i}`,
          name: i === 0 ? "clock" : "forecast",
          input: { city: "Oslo", days: i + 1 },
        },
      ],
    },
    {
      role: "user" as const,
      content: [{ type: "tool_result" as const, tool_use_id: `toolu_${i}`, content: longResult(i) }],
    },
  ]);
  const history: Anthropic.Beta.BetaMessageParam[] = [...ask, ...calls];
  const betas = ["context-management-2025-06-27"];

  test("system messages among the turns, effort, adaptive thinking and context_management are taken, whole and streamed", async () => {
    // The shape of Claude Code 2.1's first request (its system blocks, a system message after the
    // user's, its metadata and betas), each of which was a 400 before.
    const params = {
      model,
      max_tokens: 6,
      system: [
        { type: "text" as const, text: "x-anthropic-billing-header: cc_version=2.1" },
        { type: "text" as const, text: "You are an agent.", cache_control: { type: "ephemeral" as const } },
      ],
      messages: [
        {
          role: "user" as const,
          content: [{ type: "text" as const, text: "Say hello", cache_control: { type: "ephemeral" as const } }],
        },
        { role: "system" as const, content: "Available agent types: none." },
      ],
      tools,
      metadata: { user_id: '{"device_id":"d","session_id":"s"}' },
      thinking: { type: "adaptive" as const },
      output_config: { effort: "high" as const },
      context_management: { edits: [{ type: "clear_thinking_20251015" as const, keep: "all" as const }] },
      betas: ["claude-code-20250219", "interleaved-thinking-2025-05-14", ...betas],
    };
    const whole = await client.beta.messages.create(params);
    expect(whole.stop_reason).toBe("max_tokens");
    expect(whole.context_management).toEqual({ applied_edits: [] });
    const stream = client.beta.messages.stream(params);
    const deltas: unknown[] = [];
    stream.on("streamEvent", (e) => e.type === "message_delta" && deltas.push(e.context_management));
    const streamed = await stream.finalMessage();
    expect(streamed.stop_reason).toBe("max_tokens");
    expect(deltas).toEqual([{ applied_edits: [] }]);
    // The system message among the turns is in the prompt.
    const { system, messages } = params;
    const counted = (await client.messages.countTokens({ model, system, messages, tools })).input_tokens;
    const without = (await client.messages.countTokens({ model, system, messages: messages.slice(0, 1), tools }))
      .input_tokens;
    expect(counted).toBeGreaterThan(without + 5);
    expect(whole.usage.input_tokens + whole.usage.cache_read_input_tokens!).toBe(counted);
  }, 60_000);

  test("clear_tool_uses clears the oldest tool results past its trigger, keeping the last and the excluded tools', and says so", async () => {
    const original = (await client.beta.messages.countTokens({ model, messages: history, tools })).input_tokens;
    const edit = {
      type: "clear_tool_uses_20250919" as const,
      trigger: { type: "tool_uses" as const, value: 2 },
      keep: { type: "tool_uses" as const, value: 1 },
      exclude_tools: ["clock"],
    };
    const params = { model, max_tokens: 2, messages: history, tools, betas, context_management: { edits: [edit] } };
    const m = await client.beta.messages.create(params);
    const [applied] = m.context_management!.applied_edits;
    // Calls 1 and 2 cleared: 0 is the excluded clock's, 3 the one kept.
    expect(applied).toMatchObject({ type: "clear_tool_uses_20250919", cleared_tool_uses: 2 });
    expect(applied!.cleared_input_tokens).toBeGreaterThan(100);
    const input = m.usage.input_tokens + m.usage.cache_read_input_tokens!;
    expect(input).toBe(original - applied!.cleared_input_tokens);
    const counted = await client.beta.messages.countTokens({
      model,
      messages: history,
      tools,
      betas,
      context_management: { edits: [edit] },
    });
    expect(counted).toEqual({ input_tokens: input, context_management: { original_input_tokens: original } });
    // Under its trigger, or clearing fewer tokens than clear_at_least, it clears nothing.
    for (const quiet of [
      { ...edit, trigger: { type: "input_tokens" as const, value: original } },
      { ...edit, clear_at_least: { type: "input_tokens" as const, value: 10_000 } },
    ]) {
      const unchanged = await client.beta.messages.create({ ...params, context_management: { edits: [quiet] } });
      expect(unchanged.context_management).toEqual({ applied_edits: [] });
      expect(unchanged.usage.input_tokens + unchanged.usage.cache_read_input_tokens!).toBe(original);
    }
    // Clearing the calls' inputs too clears more.
    const inputs = await client.beta.messages.create({
      ...params,
      context_management: { edits: [{ ...edit, clear_tool_inputs: true }] },
    });
    expect(inputs.context_management!.applied_edits[0]!.cleared_input_tokens).toBeGreaterThan(
      applied!.cleared_input_tokens,
    );
  }, 60_000);

  test("clear_thinking keeps the thinking of the last turns it keeps, and counts the turns it cleared", async () => {
    const turn = (i: number): Anthropic.Beta.BetaMessageParam[] => [
      { role: "user", content: `Question ${i}` },
      {
        role: "assistant",
        content: [
          { type: "thinking", thinking: `Reasoning about question ${i}.`, signature: "" },
          { type: "text", text: `Answer ${i}` },
        ],
      },
    ];
    const messages = [...turn(1), ...turn(2), ...turn(3), { role: "user" as const, content: "And now?" }];
    const keep = async (keep: Anthropic.Beta.BetaClearThinking20251015Edit["keep"]) =>
      (
        await client.beta.messages.create({
          model,
          max_tokens: 2,
          messages,
          betas,
          context_management: { edits: [{ type: "clear_thinking_20251015", keep }] },
        })
      ).context_management!.applied_edits;
    expect(await keep({ type: "thinking_turns", value: 1 })).toEqual([
      // This template renders no earlier reasoning: clearing it changes no token.
      { type: "clear_thinking_20251015", cleared_thinking_turns: 2, cleared_input_tokens: 0 },
    ]);
    expect(await keep("all")).toEqual([]);
    expect(await keep({ type: "thinking_turns", value: 3 })).toEqual([]);
  });

  test("compaction, an unknown edit and an unknown effort are 400s naming the field", async () => {
    const refused = async (body: Record<string, unknown>) => {
      const r = await post(`${server.url}/v1/messages`, { model, max_tokens: 2, messages: ask, ...body });
      expect(r.status).toBe(400);
      expect(r.json.error.type).toBe("invalid_request_error");
      return r.json.error.message as string;
    };
    expect(await refused({ context_management: { edits: [{ type: "compact_20260112" }] } })).toContain(
      "context_management.edits.0.type",
    );
    expect(await refused({ context_management: { edits: [{ type: "clear_everything" }] } })).toContain(
      "'context_management.edits.0.type' must be",
    );
    expect(await refused({ output_config: { effort: "extreme" } })).toContain("'output_config.effort' must be one of");
    expect(
      await refused({
        context_management: { edits: [{ type: "clear_tool_uses_20250919", keep: { type: "turns", value: 1 } }] },
      }),
    ).toContain("keep.type");
  });
});
