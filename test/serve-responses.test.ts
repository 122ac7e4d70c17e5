// The OpenAI Responses API with the official `openai` client against a real server on loopback:
// responses.create and responses.stream for text, function tools (a round-trip with
// function_call_output, a call the budget cut), text.format json_schema, the fields echoed,
// previous_response_id over stored responses and their input_items, and what we refuse as 400s
// naming it; the store's bound and time to live.
// Tiny random-weight model: a call or a JSON answer is valid only because the grammar makes it so.
import { afterAll, beforeAll, describe, expect, setSystemTime, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import OpenAI from "openai";
import type { RunningServer } from "../src/server/app";
import { ResponseStore } from "../src/server/response-store";
import { post, serve } from "./helpers/serve";
import { writeScriptedModel } from "./helpers/scripted-model";
import { writeTinyModel } from "./helpers/tiny-model";

let server: RunningServer;
let openai: OpenAI;
let model: string;

const parameters = {
  type: "object",
  properties: { city: { type: "string", maxLength: 10 }, days: { type: "integer", minimum: 1, maximum: 7 } },
  required: ["city", "days"],
  additionalProperties: false,
};
const validArguments = new Ajv().compile(parameters);
const tools: OpenAI.Responses.FunctionTool[] = [
  { type: "function", name: "forecast", description: "The weather forecast for a city", parameters, strict: false },
];

beforeAll(() => {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-responses-"));
  process.env.MLX_HOME ??= join(root, "home");
  model = join(root, "tiny");
  writeTinyModel(model, { contextLength: 1024 });
  server = serve({ defaultModel: model });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});

afterAll(() => server.stop());

/** "My name is Ada.", `answer`, "What is my name?" sent as one greedy request (what a stored or referenced turn stands for). */
const askedWhole = (answer: string) =>
  openai.responses.create({
    model,
    input: [
      { role: "user", content: "My name is Ada." },
      { role: "assistant", content: answer },
      { role: "user", content: "What is my name?" },
    ],
    max_output_tokens: 4,
    temperature: 0,
  });

describe("responses.create", () => {
  test("text from a string input and instructions; max_output_tokens makes it incomplete", async () => {
    const r = await openai.responses.create({
      model,
      instructions: "Be brief.",
      input: "Hi",
      max_output_tokens: 6,
      temperature: 0,
    });
    expect(r.id).toMatch(/^resp_/);
    expect(r.object).toBe("response");
    expect(r.status).toBe("incomplete");
    expect(r.incomplete_details?.reason).toBe("max_output_tokens");
    expect(r.output[0]!).toMatchObject({ type: "message", status: "incomplete" });
    expect(r.output_text.length).toBeGreaterThan(0);
    expect(r.completed_at).toBeNull();
    expect(r.usage!.output_tokens).toBe(6);
    expect(r.usage!.total_tokens).toBe(r.usage!.input_tokens + 6);
    // Both details the SDKs' ResponseUsage requires (Python's pydantic validation fails without one).
    expect(Object.keys(r.usage!.input_tokens_details).sort()).toEqual(["cache_write_tokens", "cached_tokens"]);
    // The same conversation as items gives the same greedy answer.
    const items = await openai.responses.create({
      model,
      input: [
        { role: "system", content: "Be brief." },
        { role: "user", content: [{ type: "input_text", text: "Hi" }] },
      ],
      max_output_tokens: 6,
      temperature: 0,
    });
    expect(items.output_text).toBe(r.output_text);
  });

  test("text.format json_schema: the answer is JSON that validates", async () => {
    const schema = {
      type: "object",
      properties: { ok: { type: "boolean" }, n: { type: "integer", minimum: 0, maximum: 9 } },
      required: ["ok", "n"],
      additionalProperties: false,
    };
    const r = await openai.responses.create({
      model,
      input: "Answer in JSON",
      text: { format: { type: "json_schema", name: "answer", schema, strict: true } },
      max_output_tokens: 60,
    });
    expect(r.status).toBe("completed");
    expect(new Ajv().compile(schema)(JSON.parse(r.output_text))).toBe(true);
  });

  test("a function tool round-trip: a function_call with valid arguments, its output answered", async () => {
    let call: OpenAI.Responses.ResponseFunctionToolCall | undefined;
    for (let attempt = 0; attempt < 3 && !call; attempt++) {
      const r = await openai.responses.create({
        model,
        input: "Weather in Oslo?",
        tools,
        tool_choice: { type: "function", name: "forecast" },
        parallel_tool_calls: false,
        max_output_tokens: 120,
      });
      if (r.status === "incomplete") continue;
      expect(r.output).toHaveLength(1);
      call = r.output[0] as OpenAI.Responses.ResponseFunctionToolCall;
      expect(call.type).toBe("function_call");
      expect(call.name).toBe("forecast");
      expect(validArguments(JSON.parse(call.arguments))).toBe(true);
    }
    expect(call).toBeDefined();
    const input: OpenAI.Responses.ResponseInput = [
      { role: "user", content: "Weather in Oslo?" },
      { type: "function_call", call_id: call!.call_id, name: call!.name, arguments: call!.arguments },
      { type: "function_call_output", call_id: call!.call_id, output: "Snow, -3 degrees" },
    ];
    const answer = await openai.responses.create({ model, input, tools, tool_choice: "none", max_output_tokens: 3 });
    expect(answer.output[0]!.type).toBe("message");
    const bare = await openai.responses.create({ model, input: "Weather in Oslo?", max_output_tokens: 1 });
    expect(answer.usage!.input_tokens).toBeGreaterThan(bare.usage!.input_tokens + 15);
  }, 60_000);

  test("a tool_choice naming a function, parallel_tool_calls left at its default: exactly one function_call", async () => {
    // OpenAI's forced function is one call; a model that chained calls of it ran to the limit.
    for (const temperature of [1, 1.5, 2]) {
      const r = await openai.responses.create({
        model,
        input: "Weather in Oslo?",
        tools,
        tool_choice: { type: "function", name: "forecast" },
        temperature,
        max_output_tokens: 200,
      });
      expect(r.status).toBe("completed");
      expect(r.output).toHaveLength(1);
      expect(r.output[0]).toMatchObject({ type: "function_call", name: "forecast" });
      expect(r.parallel_tool_calls).toBe(false);
    }
  });

  test("a call the budget closed early is an incomplete item, whole and streamed, not a completed call to run", async () => {
    const request = { model, input: "Weather in Oslo?", tools, tool_choice: "required" as const };
    const tooSmall = await post(`${server.url}/v1/responses`, { ...request, max_output_tokens: 1 });
    const shortest = Number(/takes (\d+) tokens/.exec(tooSmall.json.error.message)![1]);
    // A budget of the shortest valid call's length ends the answer: the grammar closes the call in it.
    const whole = await post(`${server.url}/v1/responses`, { ...request, max_output_tokens: shortest });
    expect(whole.headers.get("X-Mlx-Closed-Early")).toBe("true");
    expect(whole.json.status).toBe("incomplete");
    expect(whole.json.output).toEqual([expect.objectContaining({ type: "function_call", status: "incomplete" })]);
    const stream = openai.responses.stream({ ...request, max_output_tokens: shortest });
    const done: unknown[] = [];
    stream.on("response.output_item.done", (e) => done.push(e.item));
    const streamed = await stream.finalResponse();
    expect(done).toEqual([expect.objectContaining({ type: "function_call", status: "incomplete" })]);
    expect(streamed.output).toEqual([expect.objectContaining({ type: "function_call", status: "incomplete" })]);
  });

  test("a function_call_output's output as input_text parts reads as the same text, a line apart; an image there is a 400", async () => {
    const call = { type: "function_call", call_id: "call_1", name: "forecast", arguments: '{"city":"Oslo","days":2}' };
    const withOutput = (output: unknown) =>
      [
        { role: "user", content: "Weather in Oslo?" },
        call,
        { type: "function_call_output", call_id: "call_1", output },
      ] as OpenAI.Responses.ResponseInput;
    const request = { model, tools, max_output_tokens: 3, temperature: 0, store: false };
    const asString = await openai.responses.create({ ...request, input: withOutput("Snow\n-3 degrees") });
    const asParts = await openai.responses.create({
      ...request,
      input: withOutput([
        { type: "input_text", text: "Snow" },
        { type: "input_text", text: "-3 degrees" },
      ]),
    });
    expect(asParts.usage!.input_tokens).toBe(asString.usage!.input_tokens);
    expect(asParts.output_text).toBe(asString.output_text);
    const image = await post(`${server.url}/v1/responses`, {
      ...request,
      input: withOutput([{ type: "input_image", image_url: "https://example.com/a.png" }]),
    });
    expect(image.status).toBe(400);
    expect(image.json.error.param).toBe("input.2.output.0.type");
  });

  test("an output's message and the function_call after it, sent back as input, are one assistant turn (as in chat completions)", async () => {
    const args = '{"city":"Oslo","days":2}';
    const chat = await openai.chat.completions.create({
      model,
      max_tokens: 1,
      tools: tools.map(({ name, description, parameters }) => ({
        type: "function" as const,
        function: { name, description: description!, parameters: parameters! },
      })),
      messages: [
        { role: "user", content: "Weather in Oslo?" },
        {
          role: "assistant",
          content: "Let me look.",
          tool_calls: [{ id: "call_1", type: "function", function: { name: "forecast", arguments: args } }],
        },
        { role: "tool", tool_call_id: "call_1", content: "Snow" },
      ],
    });
    const responded = await openai.responses.create({
      model,
      max_output_tokens: 1,
      tools,
      store: false,
      input: [
        { role: "user", content: "Weather in Oslo?" },
        {
          type: "message",
          id: "msg_1",
          status: "completed",
          role: "assistant",
          content: [{ type: "output_text", text: "Let me look.", annotations: [] }],
        },
        { type: "function_call", call_id: "call_1", name: "forecast", arguments: args },
        { type: "function_call_output", call_id: "call_1", output: "Snow" },
      ],
    });
    expect(responded.usage!.input_tokens).toBe(chat.usage!.prompt_tokens);
  });
});

describe("echoed fields", () => {
  test("metadata, text.format's name and description, and background and truncation at their defaults come back as sent", async () => {
    const format = {
      type: "json_schema" as const,
      name: "verdict",
      description: "Whether it holds",
      schema: {
        type: "object",
        properties: { ok: { type: "boolean" } },
        required: ["ok"],
        additionalProperties: false,
      },
      strict: true,
    };
    const r = await openai.responses.create({
      model,
      input: "Answer in JSON",
      metadata: { ticket: "T-42" },
      text: { format },
      background: false,
      truncation: "disabled",
      max_output_tokens: 30,
    });
    expect(r).toMatchObject({
      metadata: { ticket: "T-42" },
      text: { format },
      background: false,
      truncation: "disabled",
    });
    expect(await openai.responses.retrieve(r.id)).toMatchObject({ metadata: { ticket: "T-42" }, text: { format } });
    const auto = await post(`${server.url}/v1/responses`, { model, input: "Hi", truncation: "auto" });
    expect(auto.status).toBe(400);
    expect(auto.json.error).toMatchObject({ param: "truncation", code: "unsupported_parameter" });
  });

  test("reasoning and the end user's hints come back as sent, unset as OpenAI's nulls", async () => {
    const r = await openai.responses.create({
      model,
      input: "Hi",
      reasoning: { summary: "auto" },
      user: "ada",
      safety_identifier: "user-7",
      prompt_cache_key: "chat-1",
      // They bound built-in tools (none here) and OpenAI's cache: they pass, and come back.
      // (max_tool_calls: in the beta types of this client, in the stable ones of others.)
      max_tool_calls: 3,
      prompt_cache_retention: "24h",
      max_output_tokens: 1,
    } as OpenAI.Responses.ResponseCreateParamsNonStreaming);
    expect(r).toMatchObject({
      reasoning: { effort: null, summary: "auto" },
      user: "ada",
      safety_identifier: "user-7",
      prompt_cache_key: "chat-1",
      max_tool_calls: 3,
      prompt_cache_retention: "24h",
    });
    const unset = await openai.responses.create({ model, input: "Hi", max_output_tokens: 1 });
    expect(unset).toMatchObject({
      reasoning: { effort: null, summary: null },
      safety_identifier: null,
      prompt_cache_key: null,
      max_tool_calls: null,
      prompt_cache_retention: null,
    });
    expect(unset.user).toBeUndefined();
  });

  test("parallel_tool_calls and tool_choice come back as sent, also without tools", async () => {
    const r = await openai.responses.create({
      model,
      input: "Hi",
      parallel_tool_calls: false,
      tool_choice: "none",
      max_output_tokens: 1,
    });
    expect(r).toMatchObject({ parallel_tool_calls: false, tool_choice: "none" });
    expect((await openai.responses.create({ model, input: "Hi", max_output_tokens: 1 })).parallel_tool_calls).toBe(
      true,
    );
  });

  test("each function tool's strict comes back as sent, unset (null) as OpenAI's default (true)", async () => {
    const noArguments = { type: "object", properties: {} };
    const r = await openai.responses.create({
      model,
      input: "Hi",
      tools: [
        { type: "function", name: "strict", parameters: noArguments, strict: true },
        { type: "function", name: "lax", parameters: noArguments, strict: false },
        { type: "function", name: "unset", parameters: noArguments, strict: null },
      ],
      tool_choice: "none",
      max_output_tokens: 1,
    });
    const functions = r.tools as OpenAI.Responses.FunctionTool[];
    expect(functions.map(({ name, strict }) => [name, strict])).toEqual([
      ["strict", true],
      ["lax", false],
      ["unset", true],
    ]);
  });
});

describe("responses.stream", () => {
  test("text: created, output item, output_text deltas, then the final response with the same text", async () => {
    const types: string[] = [];
    let deltas = "";
    const stream = openai.responses.stream({ model, input: "Hi", max_output_tokens: 8, temperature: 0 });
    stream.on("event", (e) => types.push(e.type));
    stream.on("response.output_text.delta", (e) => (deltas += e.delta));
    const final = await stream.finalResponse();
    expect(types.slice(0, 4)).toEqual([
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.content_part.added",
    ]);
    expect(types).toContain("response.output_text.done");
    expect(types.at(-1)).toBe("response.incomplete");
    expect(final.output[0]!).toMatchObject({ type: "message", status: "incomplete" });
    expect(final.output_text).toBe(deltas);
    const whole = await openai.responses.create({ model, input: "Hi", max_output_tokens: 8, temperature: 0 });
    expect(whole.output_text).toBe(deltas);
  });

  test("an empty answer: its message's events come as for any answer, so the events build the final output", async () => {
    // A model that ends its answer at once.
    const silent = join(mkdtempSync(join(tmpdir(), "mlx-serve-responses-")), "silent");
    writeScriptedModel(silent, []);
    const request = { model: silent, input: "Hi", temperature: 0 };
    const whole = await openai.responses.create(request);
    expect(whole.output).toMatchObject([{ type: "message", content: [{ type: "output_text", text: "" }] }]);
    const types: string[] = [];
    const done: OpenAI.Responses.ResponseOutputItem[] = [];
    const stream = openai.responses.stream(request);
    stream.on("event", (e) => types.push(e.type));
    stream.on("response.output_item.done", (e) => done.push(e.item));
    const final = await stream.finalResponse();
    expect(types).toEqual([
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.content_part.added",
      "response.output_text.done",
      "response.content_part.done",
      "response.output_item.done",
      "response.completed",
    ]);
    expect(final.output).toMatchObject(done);
    expect(final.output_text).toBe("");
  });

  test("completed_at: null until the response completes, then when it did", async () => {
    const scripted = join(mkdtempSync(join(tmpdir(), "mlx-serve-responses-")), "scripted");
    writeScriptedModel(scripted, ["Hi", "."]);
    const request = { model: scripted, input: "Hello", temperature: 0 };
    const whole = await openai.responses.create(request);
    expect(whole.status).toBe("completed");
    expect(whole.completed_at).toBeGreaterThanOrEqual(whole.created_at);
    const stream = openai.responses.stream(request);
    const started: (number | null | undefined)[] = [];
    stream.on("response.created", (e) => started.push(e.response.completed_at));
    stream.on("response.in_progress", (e) => started.push(e.response.completed_at));
    const final = await stream.finalResponse();
    expect(started).toEqual([null, null]);
    expect(final.completed_at).toBeGreaterThanOrEqual(final.created_at);
    expect((await openai.responses.retrieve(final.id)).completed_at).toBe(final.completed_at);
  });

  test("a budget spent in reasoning: the output is the reasoning item the events announced, incomplete, no empty message", async () => {
    // A qwen3-style template that opens <think>: random weights reason on until the budget ends.
    const thinker = join(mkdtempSync(join(tmpdir(), "mlx-serve-responses-")), "thinker");
    writeTinyModel(thinker, {
      modelType: "qwen3",
      contextLength: 512,
      chatTemplate:
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}" +
        "<|im_start|>assistant\n<think>\n",
    });
    const request = { model: thinker, input: "Hi", max_output_tokens: 3, temperature: 0 };
    const announced: OpenAI.Responses.ResponseOutputItem["type"][] = [];
    const stream = openai.responses.stream(request);
    stream.on("response.output_item.added", (e) => announced.push(e.item.type));
    const streamed = await stream.finalResponse();
    expect(announced).toEqual(["reasoning"]);
    expect(streamed.output.map((o) => o.type)).toEqual(announced);
    const whole = await openai.responses.create(request);
    expect(whole.status).toBe("incomplete");
    expect(whole.output.map((o) => o.type)).toEqual(["reasoning"]);
    // The reasoning the budget cut is incomplete, as a cut message is.
    expect(streamed.output).toMatchObject([{ type: "reasoning", status: "incomplete" }]);
    expect(whole.output).toMatchObject([{ type: "reasoning", status: "incomplete" }]);
  });

  test("a required call streams as function_call_arguments deltas", async () => {
    let final: OpenAI.Responses.Response | undefined;
    let deltas = "";
    for (let attempt = 0; attempt < 3; attempt++) {
      deltas = "";
      const stream = openai.responses.stream({
        model,
        input: "Weather in Oslo?",
        tools,
        tool_choice: "required",
        parallel_tool_calls: false,
        max_output_tokens: 120,
      });
      stream.on("response.function_call_arguments.delta", (e) => (deltas += e.delta));
      final = await stream.finalResponse();
      if (final.status === "completed") break;
    }
    expect(final!.status).toBe("completed");
    const call = final!.output.find((o) => o.type === "function_call") as OpenAI.Responses.ResponseFunctionToolCall;
    expect(call.arguments).toBe(deltas);
    expect(validArguments(JSON.parse(deltas))).toBe(true);
  }, 60_000);

  test("prose before a call streams as the response read whole: the message's text, then the call", async () => {
    // A model that writes "Sure.", a blank line, then a call to `now` (the grammar lays it out).
    const scripted = join(mkdtempSync(join(tmpdir(), "mlx-serve-responses-")), "scripted");
    writeScriptedModel(scripted, ["Sure", ".", "\n\n", "<tool_call>"]);
    const request = {
      model: scripted,
      input: "What time is it?",
      tools: [{ type: "function" as const, name: "now", parameters: { type: "object", properties: {} }, strict: true }],
      // One call: the script would go on writing calls after it.
      parallel_tool_calls: false,
      max_output_tokens: 120,
      temperature: 0,
    };
    const items = (r: OpenAI.Responses.Response) =>
      r.output.map((o) => (o.type === "message" ? (o.content[0] as OpenAI.Responses.ResponseOutputText).text : o.type));
    const whole = await openai.responses.create(request);
    expect(whole.status).toBe("completed");
    expect(items(whole)).toEqual(["Sure.", "function_call"]);
    let streamedText = "";
    const stream = openai.responses.stream(request);
    stream.on("response.output_text.delta", (e) => (streamedText += e.delta));
    const final = await stream.finalResponse();
    // The blank line before the call is not streamed as text the whole response drops.
    expect(streamedText).toBe("Sure.");
    expect(items(final)).toEqual(items(whole));
  });
});

describe("errors", () => {
  test("fields we do not implement are a 400 naming them; bad input too", async () => {
    const url = `${server.url}/v1/responses`;
    const cases: [unknown, RegExp, string][] = [
      [{ background: true }, /'background' is not supported/, "background"],
      [{ reasoning: { summary: "brief" } }, /must be one of auto, concise, detailed/, "reasoning.summary"],
      [{ reasoning: { effort: "low" } }, /does not think/, "reasoning.effort"],
      [{ input: [{ type: "image_generation_call" }] }, /input items of type 'image_generation_call'/, "input.0.type"],
      // Client-side tools we cannot parse calls of (built-in ones are not offered: see "Codex").
      [{ tools: [{ type: "custom", name: "apply_patch" }] }, /tools of type 'custom'/, "tools.0.type"],
      [
        { tools: [{ type: "namespace", name: "ns", tools: [{ type: "custom", name: "x" }] }] },
        /namespace tools of type 'custom'/,
        "tools.0.tools.0.type",
      ],
      [{ include: ["file_search_call.results"] }, /'include' "file_search_call.results"/, "include.0"],
      [
        { input: [{ type: "function_call", call_id: "c", name: "f", arguments: "{" }] },
        /JSON object/,
        "input.0.arguments",
      ],
      [{ text: { format: { type: "json_schema", name: "x" } } }, /JSON Schema/, "text.format.schema"],
      // As chat completions' `verbosity`: asked for, not honoured, so not silently dropped.
      [{ text: { format: { type: "text" }, verbosity: "low" } }, /'text.verbosity' is not supported/, "text.verbosity"],
      [{ max_tool_calls: 0 }, /'max_tool_calls' must be >= 1/, "max_tool_calls"],
      [{ prompt_cache_retention: "1h" }, /must be in_memory or 24h/, "prompt_cache_retention"],
      // Without tools too, as chat completions checks it.
      [{ parallel_tool_calls: "yes" }, /'parallel_tool_calls' must be true or false/, "parallel_tool_calls"],
      // metadata as OpenAI bounds it: echoed, a value other than a string would break the client's types.
      [{ metadata: { priority: 1 } }, /'metadata.priority' must be a string/, "metadata.priority"],
      [{ metadata: { note: "x".repeat(513) } }, /at most 512 characters/, "metadata.note"],
      [{ metadata: { ["k".repeat(65)]: "v" } }, /over 64 characters/, `metadata.${"k".repeat(65)}`],
      [
        { metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"])) },
        /at most 16 keys/,
        "metadata",
      ],
    ];
    for (const [change, message, param] of cases) {
      const r = await post(url, { model, input: "Hi", max_output_tokens: 2, ...(change as object) });
      expect(r.status).toBe(400);
      expect(r.json.error.message).toMatch(message);
      expect(r.json.error.param).toBe(param);
    }
    expect((await openai.responses.create({ model, input: "Hi", max_output_tokens: 1 })).usage!.output_tokens).toBe(1);
  });

  test("input, a message's content and a call's output of the wrong type: the 400 says a string is taken too", async () => {
    const cases: [unknown, string, RegExp][] = [
      [5, "input", /'input' must be a string or a list of input items, got a number/],
      [
        [{ role: "user", content: 5 }],
        "input.0.content",
        /'input.0.content' must be a string or a list of content parts/,
      ],
      [
        [
          { type: "function_call", call_id: "c1", name: "forecast", arguments: "{}" },
          { type: "function_call_output", call_id: "c1", output: { temperature: 21 } },
        ],
        "input.1.output",
        /'input.1.output' must be a string or a list of content parts, got an object/,
      ],
    ];
    for (const [input, param, message] of cases) {
      const r = await post(`${server.url}/v1/responses`, { model, input, max_output_tokens: 1 });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe(param);
      expect(r.json.error.message).toMatch(message);
    }
  });

  test("a prompt over the context is a 400 naming 'input', the field this API has (not chat's 'messages')", async () => {
    const r = await post(`${server.url}/v1/responses`, { model, input: "word ".repeat(1500), max_output_tokens: 1 });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ param: "input", code: "context_length_exceeded" });
  });
});

describe("logprobs", () => {
  test("include message.output_text.logprobs: each answer token's, with top_logprobs, as chat completions gives them; streamed the same", async () => {
    const asked = { model, input: "Hi", max_output_tokens: 5, temperature: 0, top_logprobs: 2 };
    const include = ["message.output_text.logprobs"];
    const r = await post(`${server.url}/v1/responses`, { ...asked, include });
    expect(r.status).toBe(200);
    const { logprobs } = r.json.output[0].content[0];
    expect(logprobs).toHaveLength(r.json.usage.output_tokens);
    expect(r.json.top_logprobs).toBe(2);
    for (const t of logprobs) {
      expect(t.top_logprobs).toHaveLength(2);
      expect(t.top_logprobs[0].token).toBe(t.token); // greedy: the likeliest
    }
    const chat = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 5,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
    });
    expect(logprobs).toEqual(chat.json.choices[0].logprobs.content);
    const stream = await fetch(`${server.url}/v1/responses`, {
      method: "POST",
      body: JSON.stringify({ ...asked, include, stream: true }),
    });
    const events = (await stream.text())
      .split("\n")
      .filter((line) => line.startsWith("data: "))
      .map((line) => JSON.parse(line.slice(6)));
    const deltas = events.filter((e) => e.type === "response.output_text.delta").flatMap((e) => e.logprobs);
    expect(deltas).toEqual(logprobs);
    expect(events.find((e) => e.type === "response.output_text.done").logprobs).toEqual(logprobs);
    // Not asked for: none; top_logprobs alone asks for nothing it could give.
    const plain = await post(`${server.url}/v1/responses`, { model, input: "Hi", max_output_tokens: 2 });
    expect(plain.json.output[0].content[0].logprobs).toEqual([]);
    const alone = await post(`${server.url}/v1/responses`, { ...asked });
    expect([alone.status, alone.json.error.param]).toEqual([400, "top_logprobs"]);
  });

  test("streamed, the deltas' logprobs hold every token, also those of a character the budget cut (no text of their own)", async () => {
    // " 日" is three tokens, " \xe6", "\x97" and "\xa5": a budget of three ends the answer after
    // the second, whose text (the character's second byte) never shows. Its logprob went only to
    // output_text.done, so a client adding up the deltas' got one token less than the answer has.
    const scripted = join(mkdtempSync(join(tmpdir(), "mlx-serve-responses-")), "scripted");
    writeScriptedModel(scripted, ["Hi", " 日"]);
    const request = {
      model: scripted,
      input: "Hello",
      temperature: 0,
      max_output_tokens: 3,
      include: ["message.output_text.logprobs" as const],
    };
    const whole = await openai.responses.create(request);
    expect(whole.output_text).toBe("Hi ");
    const { logprobs } =
      whole.output[0]!.type === "message" ? (whole.output[0].content[0] as { logprobs: unknown[] }) : { logprobs: [] };
    expect(logprobs).toHaveLength(3);
    const deltas: unknown[] = [];
    for await (const event of await openai.responses.create({ ...request, stream: true }))
      if (event.type === "response.output_text.delta") deltas.push(...event.logprobs);
    expect(deltas).toEqual(logprobs);
  });
});

describe("Codex", () => {
  const functions = [
    { type: "function", name: "exec_command", description: "Runs a command", parameters, strict: false },
  ];
  const agents = {
    type: "namespace",
    name: "multi_agent_v1",
    description: "Tools for sub-agents.",
    tools: [{ type: "function", name: "close_agent", description: "Close an agent", parameters, strict: false }],
  };

  test("its request (store false, streamed, include, reasoning.summary, client_metadata, a namespace, web_search) is answered", async () => {
    const stream = await fetch(`${server.url}/v1/responses`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model,
        instructions: "You are a coding agent.",
        input: [{ type: "message", role: "developer", content: [{ type: "input_text", text: "Be brief." }] }],
        tools: [...functions, agents, { type: "web_search", external_web_access: false }],
        tool_choice: "auto",
        parallel_tool_calls: true,
        reasoning: { summary: "auto" },
        store: false,
        stream: true,
        include: ["reasoning.encrypted_content"],
        prompt_cache_key: "session",
        client_metadata: { turn_id: "t1" },
        max_output_tokens: 8,
      }),
    });
    expect(stream.status).toBe(200);
    const events = (await stream.text()).split("\n").filter((line) => line.startsWith("event: "));
    expect(events.at(-1)).toMatch(/^event: response\.(completed|incomplete)$/);
  });

  test("a namespace's function is called by its name and namespace, and sent back so, as Codex routes it", async () => {
    const asked = await openai.responses.create({
      model,
      input: "Close the agent",
      tools: [agents] as never,
      tool_choice: "required",
      max_output_tokens: 120,
    });
    const call = asked.output.find((item) => item.type === "function_call") as Record<string, string> | undefined;
    expect(call).toMatchObject({ type: "function_call", name: "close_agent", namespace: "multi_agent_v1" });
    expect(validArguments(JSON.parse(call!.arguments!))).toBe(true);
    // Forced by its name and namespace too, as the call came.
    const forced = await openai.responses.create({
      model,
      input: "Close the agent",
      tools: [...functions, agents] as never,
      tool_choice: { type: "function", name: "close_agent", namespace: "multi_agent_v1" } as never,
      max_output_tokens: 120,
    });
    expect(forced.output.find((item) => item.type === "function_call")).toMatchObject({ namespace: "multi_agent_v1" });
    const { call_id, name, namespace, arguments: args } = call!;
    const input = [
      { role: "user", content: "Close the agent" },
      { type: "function_call", call_id, name, namespace, arguments: args },
      { type: "function_call_output", call_id, output: "closed" },
    ];
    const answer = await openai.responses.create({
      model,
      input: input as never,
      tools: [agents] as never,
      max_output_tokens: 2,
    });
    expect(answer.status).toBe("incomplete");
    // Sent back without its namespace, the call names a function the model was never offered.
    const other = await openai.responses.create({
      model,
      input: input.map((item) => ({ ...item, namespace: undefined })) as never,
      tools: [agents] as never,
      max_output_tokens: 2,
    });
    expect(other.usage!.input_tokens).not.toBe(answer.usage!.input_tokens);
  }, 60_000);
});

describe("hints", () => {
  test("prompt_cache_key, safety_identifier and user pass (they change nothing here); not as strings they are a 400", async () => {
    const hints = { prompt_cache_key: "session-1", safety_identifier: "user-hash", user: "u" };
    const r = await openai.responses.create({ model, input: "Hi", max_output_tokens: 1, ...hints });
    expect(r.status).toBe("incomplete");
    const bad = await post(`${server.url}/v1/responses`, { model, input: "Hi", prompt_cache_key: 5 });
    expect(bad.status).toBe(400);
    expect(bad.json.error.param).toBe("prompt_cache_key");
  });
});

describe("service_tier and stream_options", () => {
  test("taken as on chat completions: the default tiers and include_obfuscation pass; another tier, or stream_options unstreamed, is a 400", async () => {
    const r = await openai.responses.create({ model, input: "Hi", max_output_tokens: 1, service_tier: "auto" });
    expect(r.usage!.output_tokens).toBe(1);
    const stream = await openai.responses.create({
      model,
      input: "Hi",
      max_output_tokens: 1,
      service_tier: "default",
      stream: true,
      stream_options: { include_obfuscation: false },
    });
    const types: string[] = [];
    for await (const event of stream) types.push(event.type);
    expect(types.at(-1)).toBe("response.incomplete");
    const url = `${server.url}/v1/responses`;
    const cases: [object, RegExp, string][] = [
      [{ service_tier: "flex" }, /'service_tier' 'flex' is not supported/, "service_tier"],
      [{ stream_options: { include_obfuscation: false } }, /only allowed when 'stream' is true/, "stream_options"],
      [{ stream: true, stream_options: { include_usage: true } }, /not supported/, "stream_options.include_usage"],
    ];
    for (const [change, message, param] of cases) {
      const bad = await post(url, { model, input: "Hi", max_output_tokens: 1, ...change });
      expect(bad.status).toBe(400);
      expect(bad.json.error.message).toMatch(message);
      expect(bad.json.error.param).toBe(param);
    }
  });
});

describe("previous_response_id", () => {
  test("an item_reference input item reads as the stored item it names (the AI SDK's later turns); an unknown one is a 404", async () => {
    const first = await openai.responses.create({
      model,
      input: "My name is Ada.",
      max_output_tokens: 4,
      temperature: 0,
    });
    const answer = first.output[0]!;
    expect(answer.type).toBe("message");
    const referenced = await openai.responses.create({
      model,
      input: [
        { role: "user", content: "My name is Ada." },
        { type: "item_reference", id: answer.id! },
        { role: "user", content: "What is my name?" },
      ],
      max_output_tokens: 4,
      temperature: 0,
    });
    const whole = await askedWhole(first.output_text);
    expect(referenced.usage!.input_tokens).toBe(whole.usage!.input_tokens);
    expect(referenced.output_text).toBe(whole.output_text);
    // Listed as the item it names.
    const listed = await openai.responses.inputItems.list(referenced.id, { order: "asc" });
    expect(listed.data[1]).toMatchObject({ id: answer.id, type: "message", role: "assistant" });
    const unknown = await post(`${server.url}/v1/responses`, {
      model,
      input: [{ type: "item_reference", id: "msg_unknown" }],
    });
    expect(unknown.status).toBe(404);
    expect(unknown.json.error).toMatchObject({ param: "input.0.id", code: "item_not_found" });
    const extra = await post(`${server.url}/v1/responses`, {
      model,
      input: [{ type: "item_reference", id: answer.id, role: "user" }],
    });
    expect(extra.status).toBe(400);
    expect(extra.json.error.param).toBe("input.0.role");
  });

  test("a stored response is continued (its conversation, not its instructions); unknown or unstored ids are a 404", async () => {
    const first = await openai.responses.create({
      model,
      instructions: "Be brief.",
      input: "My name is Ada.",
      max_output_tokens: 4,
      temperature: 0,
    });
    expect(first).toMatchObject({ store: true });
    const next = await openai.responses.create({
      model,
      previous_response_id: first.id,
      input: "What is my name?",
      max_output_tokens: 4,
      temperature: 0,
    });
    expect(next.previous_response_id).toBe(first.id);
    // The same conversation sent whole gives the same prompt and the same greedy answer.
    const whole = await askedWhole(first.output_text);
    expect(next.usage!.input_tokens).toBe(whole.usage!.input_tokens);
    expect(next.output_text).toBe(whole.output_text);
    // A streamed response is stored too, and a chain goes on.
    const stream = openai.responses.stream({
      model,
      previous_response_id: next.id,
      input: "And again?",
      max_output_tokens: 2,
    });
    const third = await stream.finalResponse();
    const fourth = await openai.responses.create({
      model,
      previous_response_id: third.id,
      input: "Thanks",
      max_output_tokens: 1,
    });
    expect(fourth.usage!.input_tokens).toBeGreaterThan(next.usage!.input_tokens + 8);

    const unstored = await openai.responses.create({ model, input: "Hi", store: false, max_output_tokens: 1 });
    for (const id of ["resp_unknown", unstored.id]) {
      const r = await post(`${server.url}/v1/responses`, { model, previous_response_id: id, input: "Hi" });
      expect(r.status).toBe(404);
      expect(r.json.error.param).toBe("previous_response_id");
      expect(r.json.error.message).toContain(`no stored response '${id}'`);
    }
  });

  test("a stored response is retrieved and deleted by id (the SDK's retrieve and delete); then it is gone", async () => {
    const created = await openai.responses.create({ model, input: "Hi", max_output_tokens: 3, temperature: 0 });
    expect(await openai.responses.retrieve(created.id)).toEqual(created);
    const streamed = await openai.responses.stream({ model, input: "Hi", max_output_tokens: 3 }).finalResponse();
    expect((await openai.responses.retrieve(streamed.id)).output_text).toBe(streamed.output_text);
    await openai.responses.delete(created.id);
    const gone = await openai.responses.retrieve(created.id).catch((e) => e);
    expect(gone).toBeInstanceOf(OpenAI.NotFoundError);
    expect((await openai.responses.delete(created.id).catch((e) => e)).status).toBe(404);
    const unstored = await openai.responses.create({ model, input: "Hi", store: false, max_output_tokens: 1 });
    expect((await openai.responses.retrieve(unstored.id).catch((e) => e)).status).toBe(404);
  });

  test("retrieve refuses what it cannot do (the SDK's retrieve with stream: true) instead of an empty stream", async () => {
    const created = await openai.responses.create({ model, input: "Hi", max_output_tokens: 1 });
    const streamed = await openai.responses.retrieve(created.id, { stream: true }).catch((e) => e);
    expect(streamed).toBeInstanceOf(OpenAI.BadRequestError);
    expect(streamed.error).toMatchObject({ param: "stream", code: "unsupported_parameter" });
    const r = await fetch(`${server.url}/v1/responses/${created.id}?starting_after=3`);
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { param: string } }).error.param).toBe("starting_after");
  });

  test("input_items lists what a response read, earlier turns included, a page at a time (the SDK's inputItems.list)", async () => {
    const first = await openai.responses.create({ model, input: "My name is Ada.", max_output_tokens: 2 });
    const second = await openai.responses.create({
      model,
      previous_response_id: first.id,
      input: [
        { role: "developer", content: "Be brief." },
        { role: "user", content: [{ type: "input_text", text: "What is my name?" }] },
      ],
      max_output_tokens: 2,
    });
    const listed = [];
    for await (const item of openai.responses.inputItems.list(second.id, { order: "asc", limit: 2 })) listed.push(item);
    expect(listed.map((item) => item.type === "message" && [item.role, item.content])).toEqual([
      ["user", [{ type: "input_text", text: "My name is Ada." }]],
      ["assistant", [expect.objectContaining({ type: "output_text", text: first.output_text })]],
      ["developer", [{ type: "input_text", text: "Be brief." }]],
      ["user", [{ type: "input_text", text: "What is my name?" }]],
    ]);
    expect(listed[1]!.id).toBe((first.output[0] as OpenAI.Responses.ResponseOutputMessage).id);
    expect(new Set(listed.map((item) => item.id)).size).toBe(4);
    // The default order is the newest first; a page says whether more follow.
    const page = await openai.responses.inputItems.list(second.id, { limit: 3 });
    expect(page.data.map((item) => item.id)).toEqual(
      listed
        .slice(1)
        .reverse()
        .map((item) => item.id),
    );
    expect(page.has_more).toBe(true);
    const rest = await openai.responses.inputItems.list(second.id, { after: page.data.at(-1)!.id });
    expect(rest.data.map((item) => item.id)).toEqual([listed[0]!.id]);
    expect(rest.has_more).toBe(false);
    for (const [query, param] of [
      ["limit=0", "limit"],
      ["order=up", "order"],
      ["after=msg_unknown", "after"],
    ]) {
      const r = await fetch(`${server.url}/v1/responses/${second.id}/input_items?${query}`);
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { param: string } }).error.param).toBe(param);
    }
    expect((await fetch(`${server.url}/v1/responses/resp_unknown/input_items`)).status).toBe(404);
  });

  test("a function_call_output answering a stored call reads as when the call is sent along (its function named)", async () => {
    // A template that renders tools natively, and each result under its function's name.
    const named = join(mkdtempSync(join(tmpdir(), "mlx-serve-responses-")), "named-results");
    writeTinyModel(named, {
      contextLength: 1024,
      chatTemplate:
        "{%- if tools %}{{ tools | length }} tools\n{% endif %}" +
        "{%- for m in messages %}<|im_start|>{{ m.role }}{% if m.role == 'tool' %} {{ m.name }}{% endif %}\n" +
        "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function.name }}</tool_call>{% endfor %}" +
        "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n",
    });
    const call = {
      type: "function_call" as const,
      call_id: "call_1",
      name: "forecast",
      arguments: '{"city":"Oslo","days":2}',
    };
    const output = { type: "function_call_output" as const, call_id: "call_1", output: "Snow" };
    const request = { model: named, tools, tool_choice: "none" as const, max_output_tokens: 1 };
    const first = await openai.responses.create({ ...request, input: [{ role: "user", content: "Weather?" }, call] });
    const chained = await openai.responses.create({ ...request, previous_response_id: first.id, input: [output] });
    const whole = await openai.responses.create({
      ...request,
      input: [{ role: "user", content: "Weather?" }, call, { role: "assistant", content: first.output_text }, output],
    });
    expect(chained.usage!.input_tokens).toBe(whole.usage!.input_tokens);
  });

  test("the store keeps at most its bound, each entry for its time to live", () => {
    // The clock set by the test: a loaded machine's pause between set and get is not time lived.
    const now = Date.now();
    setSystemTime(now);
    try {
      const store = new ResponseStore(2, 50, Infinity);
      for (const id of ["a", "b", "c"])
        store.set(id, { messages: [{ role: "user", content: id }], inputItems: [], response: { output: [] } });
      expect(store.get("a")).toBeUndefined();
      setSystemTime(now + 49);
      expect(store.get("b")?.messages).toEqual([{ role: "user", content: "b" }]);
      expect(store.get("c")?.messages).toEqual([{ role: "user", content: "c" }]);
      setSystemTime(now + 50);
      expect(store.get("b")).toBeUndefined();
      expect(store.get("c")).toBeUndefined();
    } finally {
      setSystemTime();
    }
  });
});
