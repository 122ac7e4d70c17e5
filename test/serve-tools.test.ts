// Tool calls through the server with the real clients: OpenAI tools and tool_choice (whole and
// streamed, batched with plain requests), results fed back, Ollama /api/chat tools, bad tool
// requests as 400s. Tiny random-weight models: a required call is valid only because the
// grammar makes it so. (The real default model's call: default-model.test.ts.)
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import OpenAI from "openai";
import { Ollama } from "ollama";
import type { RunningServer } from "../src/server/app";
import { post, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";
import { forecastParameters, forecastTools, readToolStream } from "./helpers/forecast-tools";
import { resolveModelPath } from "../src/store/resolve";
import { answerSchemaCompiles } from "../src/engine/json-schema";

let server: RunningServer;
let openai: OpenAI;
let ollama: Ollama;
/** SmolLM2's template, which has no tools: the server describes them in the system prompt. */
let model: string;
/** A template that writes Llama 3 JSON calls. */
let llamaModel: string;

const parameters = forecastParameters;
const validArguments = new Ajv().compile(parameters);
const tools = forecastTools;
const ask: OpenAI.ChatCompletionMessageParam[] = [{ role: "user", content: "What will the weather be in Oslo?" }];

beforeAll(() => {
  // Room for the tools' description in the prompt.
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-tools-"));
  process.env.MLX_HOME ??= join(root, "home");
  model = join(root, "smol-template");
  writeTinyModel(model, { contextLength: 1024 });
  llamaModel = join(root, "llama3-template");
  writeTinyModel(llamaModel, {
    contextLength: 1024,
    chatTemplate: readFileSync(join(import.meta.dir, "fixtures", "templates", "llama3-tools.jinja"), "utf8"),
  });
  server = serve({ defaultModel: model });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
  ollama = new Ollama({ host: server.url });
});

afterAll(() => server.stop());

function expectForecastCalls(calls: { function: { name: string; arguments: string } }[] | undefined) {
  expect(calls?.length).toBeGreaterThan(0);
  for (const c of calls!) {
    expect(c.function.name).toBe("forecast");
    expect(validArguments(JSON.parse(c.function.arguments))).toBe(true);
  }
}

describe("OpenAI tools", () => {
  test("tool_choice naming a function: tool_calls with valid arguments and finish_reason tool_calls, batched with plain requests", async () => {
    const required = [1, 2, 3].map((seed) =>
      openai.chat.completions.create({
        model,
        messages: ask,
        tools,
        tool_choice: { type: "function", function: { name: "forecast" } },
        parallel_tool_calls: false,
        temperature: 1,
        seed,
        max_tokens: 120,
      }),
    );
    const plain = [1, 2].map((seed) =>
      openai.chat.completions.create({
        model,
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 12,
        temperature: 1,
        seed,
      }),
    );
    const results = await Promise.all(required);
    for (const p of await Promise.all(plain)) expect(p.choices[0]!.message.tool_calls).toBeUndefined();
    let called = 0;
    for (const r of results) {
      const choice = r.choices[0]!;
      if (choice.finish_reason === "length") continue;
      called++;
      expect(choice.finish_reason).toBe("tool_calls");
      expect(choice.message.content).toBeNull();
      expect(choice.message.tool_calls).toHaveLength(1);
      expect(choice.message.tool_calls![0]!.id).toMatch(/^call_/);
      expectForecastCalls(choice.message.tool_calls as never);
    }
    expect(called).toBeGreaterThan(0);
  });

  test("tool_choice naming a function, parallel_tool_calls left at its default: exactly one call, as OpenAI's forced function", async () => {
    // The AI SDK's toolChoice {type: "tool"} and LangChain's withStructuredOutput send no
    // parallel_tool_calls; a model that chained calls of the forced function ran to max_tokens
    // ("length"), and those clients then ran none of them.
    for (const seed of [1, 2, 3, 4]) {
      const r = await openai.chat.completions.create({
        model,
        messages: ask,
        tools: tools.slice(0, 1),
        tool_choice: { type: "function", function: { name: "forecast" } },
        temperature: 1,
        seed,
        max_tokens: 200,
      });
      const choice = r.choices[0]!;
      expect(choice.finish_reason).toBe("tool_calls");
      expect(choice.message.tool_calls).toHaveLength(1);
      expectForecastCalls(choice.message.tool_calls as never);
    }
  });

  test("tool_choice required, streamed: the calls arrive as tool_calls deltas", async () => {
    let finished = 0;
    for (const seed of [4, 5, 6]) {
      // One call: a random model that may chain calls would run to max_tokens.
      const stream = await openai.chat.completions.create({
        model,
        messages: ask,
        tools: tools.slice(0, 1),
        tool_choice: "required",
        parallel_tool_calls: false,
        temperature: 1,
        seed,
        max_tokens: 200,
        stream: true,
      });
      const calls: { id?: string; function: { name: string; arguments: string } }[] = [];
      let content = "";
      let finish: string | null = null;
      for await (const chunk of stream) {
        const choice = chunk.choices[0];
        if (!choice) continue;
        content += choice.delta.content ?? "";
        for (const d of choice.delta.tool_calls ?? []) {
          calls[d.index] ??= { id: d.id, function: { name: "", arguments: "" } };
          calls[d.index]!.function.name += d.function?.name ?? "";
          calls[d.index]!.function.arguments += d.function?.arguments ?? "";
        }
        finish = choice.finish_reason ?? finish;
      }
      if (finish === "length") continue;
      finished++;
      expect(finish).toBe("tool_calls");
      expect(content).toBe("");
      expectForecastCalls(calls);
    }
    expect(finished).toBeGreaterThan(0);
  });

  test("the openai client's runTools loop: our calls run its functions, and its tool messages come back to us", async () => {
    const received: unknown[] = [];
    const runner = openai.chat.completions.runTools(
      {
        model,
        messages: ask,
        tool_choice: "required",
        parallel_tool_calls: false,
        temperature: 1,
        seed: 3,
        max_tokens: 150,
        tools: [
          {
            type: "function",
            function: {
              name: "forecast",
              description: "The weather forecast for a city",
              parameters,
              parse: JSON.parse,
              function: (args: unknown) => (received.push(args), "Snow, -3 degrees"),
            },
          },
        ],
      },
      { maxChatCompletions: 2 },
    );
    await runner.done();
    // Two rounds, each a valid call; the second request carried the first call and its result.
    expect(received).toHaveLength(2);
    for (const args of received) expect(validArguments(args)).toBe(true);
    expect(runner.messages.map((m) => m.role)).toEqual(["user", "assistant", "tool", "assistant", "tool"]);
  });

  test("a call and its result fed back are rendered into the next prompt; tool_choice none offers nothing", async () => {
    const history: OpenAI.ChatCompletionMessageParam[] = [
      ...ask,
      {
        role: "assistant",
        content: null,
        tool_calls: [
          {
            id: "call_abc",
            type: "function",
            function: { name: "forecast", arguments: '{"city": "Oslo", "days": 2}' },
          },
        ],
      },
      { role: "tool", tool_call_id: "call_abc", content: "Snow, -3 degrees" },
    ];
    const base = await openai.chat.completions.create({ model, messages: ask, max_tokens: 1 });
    const withResult = await openai.chat.completions.create({ model, messages: history, max_tokens: 1 });
    const offered = await openai.chat.completions.create({ model, messages: history, tools, max_tokens: 1 });
    const none = await openai.chat.completions.create({
      model,
      messages: history,
      tools,
      tool_choice: "none",
      max_tokens: 1,
    });
    const tokens = (r: OpenAI.ChatCompletion) => r.usage!.prompt_tokens;
    // The call and the result add tokens; offering the tools adds their description; "none" offers nothing.
    expect(tokens(withResult)).toBeGreaterThan(tokens(base) + 20);
    expect(tokens(offered)).toBeGreaterThan(tokens(withResult) + 50);
    expect(tokens(none)).toBe(tokens(withResult));
  });

  test("a call replayed with empty arguments is a call without any, as with {}", async () => {
    const replayed = (args: string): OpenAI.ChatCompletionMessageParam[] => [
      ...ask,
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "c1", type: "function", function: { name: "now", arguments: args } }],
      },
      { role: "tool", tool_call_id: "c1", content: "noon" },
    ];
    const prompt = async (args: string) =>
      (await openai.chat.completions.create({ model, messages: replayed(args), max_tokens: 1 })).usage!.prompt_tokens;
    expect(await prompt("")).toBe(await prompt("{}"));
    expect(await prompt(" ")).toBe(await prompt("{}"));
  });

  test("bad tool requests are 400s naming the field, and the server carries on", async () => {
    const url = `${server.url}/v1/chat/completions`;
    const messages = [{ role: "user", content: "x" }];
    const fn = (f: object) => [{ type: "function", function: { name: "f", ...f } }];
    const cases: [object, RegExp, string][] = [
      [{ messages, tool_choice: "required" }, /needs 'tools'/, "tool_choice"],
      [
        { messages, tools: fn({}), tool_choice: { type: "function", function: { name: "g" } } },
        /'g', which is not among the tools/,
        "tool_choice.function.name",
      ],
      [{ messages, tools: fn({}), tool_choice: "sometimes" }, /must be one of none, auto, required/, "tool_choice"],
      // OpenAI's newer choices (a subset of the tools, a custom tool): refused as what they are.
      [
        { messages, tools: fn({}), tool_choice: { type: "allowed_tools", allowed_tools: { mode: "auto", tools: [] } } },
        /a tool_choice of type 'allowed_tools' is not supported/,
        "tool_choice.type",
      ],
      [
        { messages, tools: fn({}), tool_choice: { type: "custom", function: { name: "f" } } },
        /a tool_choice of type 'custom' is not supported/,
        "tool_choice.type",
      ],
      [
        { messages, tools: fn({ parameters: { type: "object", properties: { n: { type: 7 } } } }) },
        /invalid schema/,
        "tools.0.function.parameters",
      ],
      [
        {
          messages,
          tools: fn({ parameters: { type: "object", properties: { n: { type: "integer", multipleOf: 2 } } } }),
          tool_choice: "required",
        },
        /function 'f' parameters: .*multipleOf/,
        "tools",
      ],
      [
        { messages, tools: [{ type: "function", function: { name: "bad name" } }] },
        /letters, digits/,
        "tools.0.function.name",
      ],
      [{ messages, tools: [...fn({}), ...fn({})] }, /repeats the function name 'f'/, "tools.1.function.name"],
      [
        { messages, tools: fn({}), tool_choice: "required", response_format: { type: "json_object" } },
        /cannot be combined/,
        "response_format",
      ],
      [
        {
          messages: [
            {
              role: "assistant",
              content: null,
              tool_calls: [{ id: "a", type: "function", function: { name: "f", arguments: "{not json" } }],
            },
          ],
        },
        /JSON object written as a string/,
        "messages.0.tool_calls.0.function.arguments",
      ],
      [{ messages: [{ role: "tool", content: "42" }] }, /is required/, "messages.0.tool_call_id"],
    ];
    for (const [body, message, param] of cases) {
      const r = await post(url, { model, ...body });
      expect(r.status).toBe(400);
      expect(r.json.error.message).toMatch(message);
      expect(r.json.error.param).toBe(param);
    }
    // Tools the model may ignore: a schema the grammar cannot enforce is only parsed, not refused.
    const unenforced = await post(url, {
      model,
      messages,
      tools: fn({ parameters: { type: "object", properties: { n: { type: "integer", multipleOf: 2 } } } }),
      max_tokens: 2,
    });
    expect(unenforced.status).toBe(200);
    const completions = await post(`${server.url}/v1/completions`, { model, prompt: "x", tools: fn({}) });
    expect(completions.status).toBe(400);
    const after = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 3,
    });
    expect(after.choices[0]!.finish_reason).toBe("length");
    expect(after.usage!.completion_tokens).toBe(3);
  });
});

describe("the same tools in every request", () => {
  test("their schemas are compiled once, not again per request (each compile is code the heap keeps for a while)", async () => {
    const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: "user", content: "Oslo?" }];
    const ask = () =>
      openai.chat.completions.create({ model, messages, tools, tool_choice: "required", max_tokens: 60 });
    await ask(); // the first request checks them
    const before = answerSchemaCompiles();
    for (let i = 0; i < 5; i++) expect((await ask()).choices).toHaveLength(1);
    await ollama.chat({
      model,
      messages: [{ role: "user", content: "Oslo?" }],
      tools: tools as never,
      options: { num_predict: 60 },
    });
    expect(answerSchemaCompiles() - before).toBe(0);
  });
});

describe("Ollama tools", () => {
  // Ollama has no tool_choice; on a template with Llama 3 JSON calls, a `format` schema shaped
  // like a call makes the random model write one, which must come back as message.tool_calls.
  const callFormat = {
    type: "object",
    properties: { name: { const: "forecast" }, parameters },
    required: ["name", "parameters"],
    additionalProperties: false,
  };
  const ollamaTools = tools as never;
  const question = [{ role: "user", content: "What will the weather be in Oslo?" }];

  test("a call in the answer comes back as message.tool_calls, whole and streamed", async () => {
    const whole = await ollama.chat({
      model: llamaModel,
      messages: question,
      tools: ollamaTools,
      format: callFormat,
      options: { temperature: 1, seed: 1, num_predict: 150 },
    });
    expect(whole.done_reason).toBe("stop");
    expect(whole.message.content).toBe("");
    expect(whole.message.tool_calls).toHaveLength(1);
    expect(whole.message.tool_calls![0]!.function.name).toBe("forecast");
    expect(validArguments(whole.message.tool_calls![0]!.function.arguments)).toBe(true);
    const chunks = await ollama.chat({
      model: llamaModel,
      messages: question,
      tools: ollamaTools,
      format: callFormat,
      stream: true,
      options: { temperature: 1, seed: 1, num_predict: 150 },
    });
    const calls = [];
    let content = "";
    let last;
    for await (const chunk of chunks) {
      content += chunk.message.content;
      calls.push(...(chunk.message.tool_calls ?? []));
      last = chunk;
    }
    expect(last!.done).toBe(true);
    expect(last!.done_reason).toBe("stop");
    expect(content).toBe("");
    expect(calls.map((c) => c.function)).toEqual(whole.message.tool_calls!.map((c) => c.function));
  });

  test("a parameter of several types as ollama-python writes it (Union[int, str]: 'integer, string') is those types", async () => {
    // ollama-python's tool of `def pick(value: Union[int, str])`: its types joined in one string.
    const pythonTool = {
      type: "function",
      function: {
        name: "pick",
        description: "Pick a value.",
        parameters: {
          type: "object",
          required: ["value"],
          properties: { value: { description: "the value", type: "integer, string" } },
        },
      },
    };
    const pickFormat = {
      type: "object",
      properties: { name: { const: "pick" }, parameters: pythonTool.function.parameters },
      required: ["name", "parameters"],
      additionalProperties: false,
    };
    const r = await ollama.chat({
      model: llamaModel,
      messages: question,
      tools: [pythonTool] as never,
      format: {
        ...pickFormat,
        properties: {
          ...pickFormat.properties,
          parameters: { ...pythonTool.function.parameters, properties: { value: { type: ["integer", "string"] } } },
        },
      },
      options: { temperature: 1, seed: 1, num_predict: 150 },
    });
    expect(r.message.tool_calls).toHaveLength(1);
    expect(["number", "string"]).toContain(typeof r.message.tool_calls![0]!.function.arguments.value);
    // OpenAI's tools are JSON Schema as written: such a type is still the client's mistake there.
    const openaiTool = { type: "function", function: pythonTool.function };
    const refused = await post(`${server.url}/v1/chat/completions`, { model, messages: question, tools: [openaiTool] });
    expect(refused.status).toBe(400);
    expect(refused.json.error.message).toMatch(/properties\/value\/type/);
  });

  test("tools and a conversation with a call and its result are accepted; /api/generate refuses tools", async () => {
    const r = await ollama.chat({
      model,
      messages: [
        ...question,
        {
          role: "assistant",
          content: "",
          tool_calls: [{ function: { name: "forecast", arguments: { city: "Oslo", days: 1 } } }],
        },
        { role: "tool", content: "Snow", tool_name: "forecast" } as never,
      ],
      tools: ollamaTools,
      options: { num_predict: 4 },
    });
    expect(r.done).toBe(true);
    expect(r.prompt_eval_count).toBeGreaterThan(100);
    const generate = await post(`${server.url}/api/generate`, { model, prompt: "x", tools });
    expect(generate.status).toBe(400);
    expect(generate.json.error).toMatch(/tools/);
  });

  test("OpenAI's tool_choice, which the AI SDK's Ollama provider sends with every request that has tools, is honored", async () => {
    const chat = (body: object) =>
      post(`${server.url}/api/chat`, {
        model,
        messages: question,
        tools: tools.slice(0, 1),
        stream: false,
        options: { temperature: 1, seed: 1, num_predict: 150 },
        ...body,
      });
    // Its default, "auto": what Ollama does (before, a 400 refused every such request).
    const auto = await chat({ tool_choice: "auto", options: { num_predict: 2 } });
    expect(auto.status).toBe(200);
    // "required": one call or more (the random model may chain them up to num_predict).
    const required = await chat({ tool_choice: "required" });
    expect(required.status).toBe(200);
    expect(required.json.message.content).toBe("");
    expect(required.json.message.tool_calls.length).toBeGreaterThan(0);
    for (const call of required.json.message.tool_calls) {
      expect(call.function.name).toBe("forecast");
      expect(validArguments(call.function.arguments)).toBe(true);
    }
    // A function named as chat completions name it, or as the Responses API does (the provider's shape).
    for (const tool_choice of [
      { type: "function", function: { name: "forecast" } },
      { type: "function", name: "forecast" },
    ]) {
      const named = await chat({ tool_choice });
      expect(named.json.done_reason).toBe("stop");
      expect(named.json.message.tool_calls).toHaveLength(1);
      expect(validArguments(named.json.message.tool_calls[0].function.arguments)).toBe(true);
    }
    const unknown = await chat({ tool_choice: { type: "function", name: "clock" } });
    expect(unknown.status).toBe(400);
    expect(unknown.json.error).toMatch(/'clock', which is not among the tools/);
    const none = await chat({ tool_choice: "none", options: { num_predict: 4 } });
    expect(none.status).toBe(200);
    expect(none.json.message.tool_calls).toBeUndefined();
    const bad = await chat({ tool_choice: "always" });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatch(/tool_choice/);
    const withFormat = await chat({ tool_choice: "required", format: "json" });
    expect(withFormat.status).toBe(400);
    expect(withFormat.json.error).toMatch(/format/);
  });
});

// Hermes 2 Pro's and 3's tokenizer_config name two templates: "default", without tools, and
// "tool_use", which transformers (so vLLM and mlx-lm) and llama.cpp's server render when tools are given.
describe("a model whose tool_use template is named beside its default one", () => {
  test("renders the tool_use template when tools are offered, the default one otherwise", async () => {
    const namedModel = join(mkdtempSync(join(tmpdir(), "mlx-serve-tools-named-")), "named");
    writeTinyModel(namedModel, { contextLength: 1024 });
    const configPath = join(namedModel, "tokenizer_config.json");
    const config = JSON.parse(readFileSync(configPath, "utf8"));
    const toolUse = readFileSync(join(import.meta.dir, "fixtures", "templates", "hermes-tools.jinja"), "utf8");
    config.chat_template = [
      { name: "default", template: config.chat_template },
      { name: "tool_use", template: toolUse },
    ];
    writeFileSync(configPath, JSON.stringify(config));
    const withTools = await post(`${server.url}/apply-template`, { model: namedModel, messages: ask, tools });
    expect(withTools.status).toBe(200);
    expect(withTools.json.prompt).toStartWith("<|im_start|>system\n# Tools\n\n<tools>\n");
    expect(withTools.json.prompt).toContain("Call a function like this:");
    const without = await post(`${server.url}/apply-template`, { model: namedModel, messages: ask });
    expect(without.json.prompt).not.toContain("<tools>");
    expect(without.json.prompt).toContain("named SmolLM");
    const answer = await openai.chat.completions.create({
      model: namedModel,
      messages: ask,
      tools,
      tool_choice: { type: "function", function: { name: "forecast" } },
      temperature: 1,
      seed: 1,
      max_tokens: 120,
    });
    expectForecastCalls(answer.choices[0]!.message.tool_calls as never);
  });
});

describe("Mistral's template, which takes only call ids of nine alphanumerics", () => {
  test("calls and results with other ids (OpenAI's) or none (Ollama's) are rendered with one nine-character id each", async () => {
    const mistralModel = join(mkdtempSync(join(tmpdir(), "mlx-serve-tools-mistral-")), "mistral");
    writeTinyModel(mistralModel, {
      modelType: "mistral",
      contextLength: 1024,
      chatTemplate: readFileSync(join(import.meta.dir, "fixtures", "templates", "mistral-tools.jinja"), "utf8"),
    });
    const history: OpenAI.ChatCompletionMessageParam[] = [
      ...ask,
      {
        role: "assistant",
        content: null,
        tool_calls: [
          { id: "call_Oslo-1", type: "function", function: { name: "forecast", arguments: '{"city": "Oslo"}' } },
          { id: "call_Rome-2", type: "function", function: { name: "forecast", arguments: '{"city": "Rome"}' } },
        ],
      },
      { role: "tool", tool_call_id: "call_Rome-2", content: "Sun" },
      { role: "tool", tool_call_id: "call_Oslo-1", content: "Snow" },
    ];
    const rendered = await post(`${server.url}/apply-template`, { model: mistralModel, messages: history, tools });
    expect(rendered.status).toBe(200);
    const callIds = [...rendered.json.prompt.matchAll(/"city": "(\w+)"}, "id": "(\w+)"/g)].map((m) => [m[1], m[2]]);
    const resultIds = [...rendered.json.prompt.matchAll(/"content": (\w+), "call_id": "(\w+)"/g)].map((m) => [
      m[1],
      m[2],
    ]);
    expect(callIds).toHaveLength(2);
    for (const [, id] of callIds) expect(id).toMatch(/^[A-Za-z0-9]{9}$/);
    expect(callIds[0]![1]).not.toBe(callIds[1]![1]);
    const idOf = Object.fromEntries(callIds);
    expect(resultIds).toEqual([
      ["Sun", idOf.Rome],
      ["Snow", idOf.Oslo],
    ]);
    const answer = await openai.chat.completions.create({
      model: mistralModel,
      messages: history,
      tools,
      max_tokens: 2,
    });
    expect(answer.choices[0]!.finish_reason).toBe("length");
    const ollamaAnswer = await ollama.chat({
      model: mistralModel,
      messages: [
        { role: "user", content: "What will the weather be in Oslo?" },
        {
          role: "assistant",
          content: "",
          tool_calls: [{ function: { name: "forecast", arguments: { city: "Oslo" } } }],
        },
        { role: "tool", content: "Snow", tool_name: "forecast" } as never,
      ],
      tools: tools as never,
      options: { num_predict: 2 },
    });
    expect(ollamaAnswer.done_reason).toBe("length");
  });
});

describe("Mistral's v11+ template ([TOOL_CALLS]name[ARGS]{...} for each call)", () => {
  test("its past calls are rendered in that layout, and the model's calls in it come back as tool_calls, whole and streamed", async () => {
    const v11Model = join(mkdtempSync(join(tmpdir(), "mlx-serve-tools-mistral-v11-")), "mistral-v11");
    writeTinyModel(v11Model, {
      modelType: "mistral",
      contextLength: 1024,
      chatTemplate: readFileSync(join(import.meta.dir, "fixtures", "templates", "mistral-v11-tools.jinja"), "utf8"),
    });
    const history: OpenAI.ChatCompletionMessageParam[] = [
      ...ask,
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "call_1", type: "function", function: { name: "forecast", arguments: '{"city": "Oslo"}' } }],
      },
      { role: "tool", tool_call_id: "call_1", content: "Snow" },
      { role: "user", content: "And in Rome?" },
    ];
    const rendered = await post(`${server.url}/apply-template`, { model: v11Model, messages: history, tools });
    expect(rendered.json.prompt).toContain('[TOOL_CALLS]forecast[ARGS]{"city": "Oslo"}');
    const request = {
      model: v11Model,
      messages: history,
      tools: tools.slice(0, 1),
      tool_choice: "required" as const,
      parallel_tool_calls: false,
      temperature: 1,
      max_tokens: 60,
    };
    let finished = 0;
    for (const seed of [1, 2, 3]) {
      const whole = (await openai.chat.completions.create({ ...request, seed, logprobs: true })).choices[0]!;
      const stream = await openai.chat.completions.create({ ...request, seed, stream: true });
      const streamed: { function: { name: string; arguments: string } }[] = [];
      let finish: string | null = null;
      for await (const chunk of stream) {
        const choice = chunk.choices[0];
        for (const d of choice?.delta.tool_calls ?? []) {
          streamed[d.index] ??= { function: { name: "", arguments: "" } };
          streamed[d.index]!.function.name += d.function?.name ?? "";
          streamed[d.index]!.function.arguments += d.function?.arguments ?? "";
        }
        finish = choice?.finish_reason ?? finish;
      }
      expect(finish).toBe(whole.finish_reason);
      if (whole.finish_reason === "length") continue;
      finished++;
      expect(whole.finish_reason).toBe("tool_calls");
      expect(whole.message.content).toBeNull();
      expect(whole.message.tool_calls).toHaveLength(1);
      expectForecastCalls(whole.message.tool_calls as never);
      // Written as the template showed the model its calls (the tokens' text is the raw answer).
      const raw = whole.logprobs!.content!.map((t) => t.token).join("");
      expect(raw).toStartWith("[TOOL_CALLS]forecast[ARGS]{");
      const calls = whole.message.tool_calls as { function: { name: string; arguments: string } }[];
      expect(streamed.map((c) => c.function)).toEqual(calls.map((c) => c.function));
    }
    expect(finished).toBeGreaterThan(0);
  });
});

describe("a call a stop string cuts (the real default model, which calls when it has seen calls)", () => {
  const call = (id: string, city: string): OpenAI.ChatCompletionMessageParam => ({
    role: "assistant",
    content: null,
    tool_calls: [
      { id, type: "function", function: { name: "forecast", arguments: JSON.stringify({ city, days: 2 }) } },
    ],
  });
  const conversation: OpenAI.ChatCompletionMessageParam[] = [
    { role: "user", content: "Weather in Paris?" },
    call("a1", "Paris"),
    { role: "tool", tool_call_id: "a1", content: "sunny" },
    { role: "assistant", content: "Sunny." },
    { role: "user", content: "Weather in Rome?" },
    call("a2", "Rome"),
    { role: "tool", tool_call_id: "a2", content: "rain" },
    { role: "assistant", content: "Rain." },
    { role: "user", content: "Weather in Oslo?" },
  ];

  test("tool_choice auto: the cut call is neither a call nor text, whole and streamed (where it ends as far as it had streamed)", async () => {
    const smollm2 = await resolveModelPath(undefined);
    const ask = (seed: number, stop?: string[]) =>
      ({ model: smollm2, messages: conversation, tools, temperature: 0.7, seed, max_tokens: 60, stop }) as const;
    // A seed on which the model calls (a stop string does not change what is sampled before it).
    let seed = 0;
    let called: OpenAI.ChatCompletion | undefined;
    while (!called && ++seed <= 8) {
      const r = await openai.chat.completions.create(ask(seed));
      if (r.choices[0]!.message.tool_calls?.length) called = r;
    }
    expect(called?.choices[0]!.message.content ?? "").toBe("");
    const [first] = called!.choices[0]!.message.tool_calls as OpenAI.ChatCompletionMessageFunctionToolCall[];
    const city = JSON.parse(first!.function.arguments).city as string;
    // Inside the arguments, and right after the opening tag.
    for (const stop of [[city], ["\n"]]) {
      const whole = await openai.chat.completions.create(ask(seed, stop));
      const choice = whole.choices[0]!;
      expect(choice.finish_reason).toBe("stop");
      expect(choice.message.tool_calls).toBeUndefined();
      expect(choice.message.content ?? "").toBe("");
      const streamed = await readToolStream(await openai.chat.completions.create({ ...ask(seed, stop), stream: true }));
      expect({ content: streamed.content, finish: streamed.finish }).toEqual({ content: "", finish: "stop" });
      // A call announced before the cut (its name was written) stops there: a start of the
      // uncut call's arguments, no whole call.
      for (const announced of streamed.calls) {
        expect(announced.name).toBe(first!.function.name);
        expect(first!.function.arguments.startsWith(announced.arguments)).toBe(true);
        expect(announced.arguments.length).toBeLessThan(first!.function.arguments.length);
      }
    }
  }, 120_000);
});
