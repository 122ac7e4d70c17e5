// Structured output through the server: OpenAI response_format and Ollama format, enforced
// while sampling, alongside unconstrained requests in the same batch.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Ajv from "ajv";
import OpenAI from "openai";
import { Ollama } from "ollama";
import type { RunningServer } from "../src/server/app";
import { post, serve, tinyModel } from "./helpers/serve";
import { writeScriptedModel } from "./helpers/scripted-model";
import { parseOllamaChat } from "../src/api/ollama";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

let server: RunningServer;
let openai: OpenAI;
let ollama: Ollama;
let model: string;

const schema = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 12 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    tags: { type: "array", items: { enum: ["a", "b", "c"] }, minItems: 1, maxItems: 3 },
  },
  required: ["name", "age", "tags"],
  additionalProperties: false,
};
const validate = new Ajv().compile(schema);

beforeAll(() => {
  model = tinyModel();
  server = serve({ defaultModel: model });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
  ollama = new Ollama({ host: server.url });
});

afterAll(() => server.stop());

describe("structured output through the server", () => {
  test("OpenAI json_schema: every answer that stops parses and validates, batched with unconstrained requests", async () => {
    const constrained = [1, 2, 3, 4].map((seed) =>
      openai.chat.completions.create({
        model,
        messages: [{ role: "user", content: "A person, please" }],
        max_tokens: 200,
        temperature: 1,
        seed,
        response_format: { type: "json_schema", json_schema: { name: "person", schema, strict: true } },
      }),
    );
    const free = [1, 2].map((seed) =>
      openai.chat.completions.create({
        model,
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 20,
        temperature: 1,
        seed,
      }),
    );
    const results = await Promise.all(constrained);
    await Promise.all(free);
    let stopped = 0;
    for (const r of results) {
      const choice = r.choices[0]!;
      if (choice.finish_reason !== "stop") continue;
      stopped++;
      const value = JSON.parse(choice.message.content ?? "");
      expect(validate(value)).toBe(true);
    }
    expect(stopped).toBeGreaterThan(0);
  });

  test("zod's schemas (the AI SDK's and LangChain's): a format beside its pattern, a record's propertyNames of type string", async () => {
    // As zod 4's toJSONSchema writes z.uuid(), z.iso.date(), z.email() and z.record(z.string(), ...):
    // each was a 400 ("format cannot be combined with a pattern", "additionalProperties cannot be
    // combined with propertyNames") though the pattern holds the format and every name is a string.
    const uuid =
      "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$";
    const email =
      "^(?:[A-Za-z0-9_'+\\-]+\\.)*[A-Za-z0-9_'+\\-]*[A-Za-z0-9_+-]@(?:[A-Za-z0-9][A-Za-z0-9\\-]*\\.)+[A-Za-z]{2,}$";
    const zodSchema = {
      $schema: "https://json-schema.org/draft/2020-12/schema",
      type: "object",
      properties: {
        id: { type: "string", format: "uuid", pattern: uuid },
        day: { type: "string", format: "date", pattern: "^\\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\\d|3[01])$" },
        // (maxProperties, which zod does not write, so that the random model's record ends.)
        scores: {
          type: "object",
          propertyNames: { type: "string" },
          additionalProperties: { type: "integer", minimum: 0, maximum: 9 },
          maxProperties: 1,
        },
      },
      required: ["id", "day", "scores"],
      additionalProperties: false,
    };
    const { $schema: _draft, ...plain } = zodSchema; // a draft ajv's default build lacks
    const valid = new Ajv({ validateFormats: false }).compile(plain);
    let stopped = 0;
    for (const seed of [1, 2, 3]) {
      const r = await openai.chat.completions.create({
        model,
        messages: [{ role: "user", content: "A record" }],
        max_tokens: 200,
        temperature: 1,
        seed,
        response_format: { type: "json_schema", json_schema: { name: "record", schema: zodSchema, strict: true } },
      });
      const choice = r.choices[0]!;
      if (choice.finish_reason !== "stop") continue;
      stopped++;
      expect(valid(JSON.parse(choice.message.content!))).toBe(true);
    }
    expect(stopped).toBeGreaterThan(0);
    // z.email(): its format alone stays refused (xgrammar's grammar of it is not JSON-safe); beside its pattern it is taken.
    const mail = (property: object) =>
      post(`${server.url}/v1/chat/completions`, {
        model,
        messages: [{ role: "user", content: "Mail" }],
        max_tokens: 60,
        response_format: {
          type: "json_schema",
          json_schema: { name: "m", schema: { type: "object", properties: { mail: property }, required: ["mail"] } },
        },
      });
    expect((await mail({ type: "string", format: "email", pattern: email })).status).toBe(200);
    const bare = await mail({ type: "string", format: "email" });
    expect(bare.status).toBe(400);
    expect(bare.json.error.message).toMatch(/format "email" is not supported/);
  });

  test("stop strings do not cut an answer whose shape a schema or a required call fixes", async () => {
    // Every JSON answer holds a quote and a colon: matched, they would cut it into invalid JSON.
    const stop = ['"', ":"];
    const json = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "A person, please" }],
      max_tokens: 200,
      temperature: 0,
      stop,
      response_format: { type: "json_schema", json_schema: { name: "person", schema, strict: true } },
    });
    expect(json.choices[0]!.finish_reason).toBe("stop");
    expect(validate(JSON.parse(json.choices[0]!.message.content!))).toBe(true);
    const count = {
      type: "object",
      properties: { n: { enum: ["a", "b"] } },
      required: ["n"],
      additionalProperties: false,
    };
    const call = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Count" }],
      max_tokens: 40,
      temperature: 0,
      stop,
      tools: [{ type: "function", function: { name: "count", parameters: count } }],
      tool_choice: "required",
      parallel_tool_calls: false,
    });
    // Random weights may pad the call's JSON with spaces until the budget closes it: whole either way.
    const made = call.choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
    expect(["a", "b"]).toContain(JSON.parse(made.function.arguments).n);
  });

  test("ignore_eos past a schema's complete answer generates end tokens only: the answer stays the JSON, up to max_tokens", async () => {
    // Before, the grammar let every token through once it had taken the end token, so the
    // answer went on in free text after the JSON ('"a" integrating integrating ...').
    const max_tokens = 12;
    const body = {
      model,
      max_tokens,
      temperature: 0,
      ignore_eos: true,
      response_format: { type: "json_schema", json_schema: { name: "a", schema: { enum: ["a"] } } },
    };
    const chat = await post(`${server.url}/v1/chat/completions`, {
      ...body,
      messages: [{ role: "user", content: "x" }],
    });
    expect(chat.json.choices[0].message.content).toBe('"a"');
    expect([chat.json.choices[0].finish_reason, chat.json.usage.completion_tokens]).toEqual(["length", max_tokens]);
    const text = await post(`${server.url}/v1/completions`, { ...body, prompt: "x" });
    expect(text.json.choices[0].text).toBe('"a"');
  });

  test("OpenAI json_object gives a JSON object, even in 2 tokens; a schema's answer cannot fit in 2: a 400 on max_tokens", async () => {
    const ok = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "JSON please" }],
      max_tokens: 200,
      temperature: 0,
      response_format: { type: "json_object" },
    });
    expect(typeof JSON.parse(ok.choices[0]!.message.content ?? "")).toBe("object");
    const tiny = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "JSON please" }],
      max_tokens: 2,
      temperature: 0,
      response_format: { type: "json_object" },
    });
    expect(typeof JSON.parse(tiny.choices[0]!.message.content ?? "")).toBe("object");
    const short = await openai.chat.completions
      .create({
        model,
        messages: [{ role: "user", content: "JSON please" }],
        max_tokens: 2,
        temperature: 0,
        response_format: { type: "json_schema", json_schema: { name: "p", schema } },
      })
      .catch((e) => e);
    expect(short).toBeInstanceOf(OpenAI.BadRequestError);
    expect(short.param).toBe("max_tokens");
  });

  test('Ollama format: a schema object and "json"', async () => {
    // Random weights: an answer may run out of tokens, but some stop, and every one that stops is valid.
    const seeds = [1, 2, 3, 4];
    const chats = await Promise.all(
      seeds.map((seed) =>
        ollama.chat({
          model,
          messages: [{ role: "user", content: "A person" }],
          format: schema,
          options: { temperature: 1, seed, num_predict: 200 },
        }),
      ),
    );
    const people = chats.filter((r) => r.done_reason === "stop");
    expect(people.length).toBeGreaterThan(0);
    for (const r of people) expect(validate(JSON.parse(r.message.content))).toBe(true);
    const generated = await Promise.all(
      seeds.map((seed) =>
        ollama.generate({ model, prompt: "JSON", format: "json", options: { temperature: 1, seed, num_predict: 200 } }),
      ),
    );
    const objects = generated.filter((j) => j.done_reason === "stop");
    expect(objects.length).toBeGreaterThan(0);
    for (const j of objects) expect(typeof JSON.parse(j.response ?? "")).toBe("object");
  });

  test("Ollama format: an object naming its properties has no others, as llama.cpp's grammar makes it; one naming none is any object", async () => {
    // A model that goes on to a second key after the first one's value, where the grammar lets it.
    const scripted = join(mkdtempSync(join(tmpdir(), "mlx-closed-")), "scripted");
    writeScriptedModel(scripted, ['{"', "name", '": "', "Ann", '", "', "age", '": ', "3", "}"]);
    const keys = async (format: object) => {
      const r = await ollama.chat({
        model: scripted,
        messages: [{ role: "user", content: "A person" }],
        format,
        options: { temperature: 0, num_predict: 30 },
      });
      return Object.keys(JSON.parse(r.message.content));
    };
    const named = { type: "object", properties: { name: { type: "string" } }, required: ["name"] };
    expect(await keys(named)).toEqual(["name"]);
    // Where the schema allows more (additionalProperties, or no properties named), the model writes more.
    expect((await keys({ ...named, additionalProperties: true })).length).toBe(2);
    expect((await keys({ type: "object" })).length).toBe(2);
  });

  test("Ollama format: nested objects are closed too ($defs, items, anyOf), allOf's parts are not (llama.cpp joins them)", () => {
    const person = { type: "object", properties: { properties: { type: "string" } } };
    const format = {
      type: "object",
      properties: { people: { type: "array", items: { $ref: "#/$defs/Person" } }, either: { anyOf: [person] } },
      $defs: { Person: person },
      allOf: [person],
    };
    const closed = { ...person, additionalProperties: false };
    const { schema } = parseOllamaChat({ model: "m", format }).format!.format as { schema: unknown };
    expect(schema).toEqual({
      type: "object",
      properties: { people: { type: "array", items: { $ref: "#/$defs/Person" } }, either: { anyOf: [closed] } },
      $defs: { Person: closed },
      allOf: [person],
      additionalProperties: false,
    });
  });

  // Where the grammar leaves fewer tokens than asked for, the others' logprob was -Infinity,
  // written null: [{"token": "<|endoftext|>", "logprob": null}, ...].
  test("top_logprobs under a schema: only tokens the grammar allows, each with a number", async () => {
    const r = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Yes or no?" }],
      max_tokens: 20,
      temperature: 0,
      logprobs: true,
      top_logprobs: 5,
      response_format: {
        type: "json_schema",
        json_schema: { name: "answer", schema: { enum: ["yes", "no"] }, strict: true },
      },
    });
    const entries = r.choices[0]!.logprobs!.content!;
    expect(entries.length).toBeGreaterThan(0);
    // Past the opening quote, only a few tokens can continue "yes" or "no".
    expect(entries.some((e) => e.top_logprobs.length < 5)).toBe(true);
    for (const e of entries) {
      expect(e.top_logprobs.map((t) => t.token)).toContain(e.token);
      for (const t of e.top_logprobs) expect(Number.isFinite(t.logprob)).toBe(true);
    }
  });

  // They were dropped: json_object ran with its schema ignored ({} came back), a misspelt
  // strict ran non-strict.
  test("a key the format's type does not read is a 400 naming it, on every API", async () => {
    const schema = { type: "object", properties: { a: { type: "integer" } }, required: ["a"] };
    const messages = [{ role: "user", content: "x" }];
    const cases: [string, object, string][] = [
      [
        "/v1/chat/completions",
        { messages, response_format: { type: "json_object", json_schema: { name: "x", schema } } },
        "response_format.json_schema",
      ],
      [
        "/v1/chat/completions",
        { messages, response_format: { type: "json_schema", json_schema: { name: "x", schema, strictt: true } } },
        "response_format.json_schema.strictt",
      ],
      ["/v1/responses", { input: "x", text: { format: { type: "json_object", schema } } }, "text.format.schema"],
      [
        "/v1/messages",
        { messages, max_tokens: 5, output_config: { format: { type: "json_schema", schema, strict: true } } },
        "output_config.format.strict",
      ],
    ];
    for (const [route, body, param] of cases) {
      const r = await post(`${server.url}${route}`, { model, ...body });
      expect({ route, status: r.status, message: JSON.stringify(r.json) }).toMatchObject({
        route,
        status: 400,
        message: expect.stringContaining(`'${param}'`),
      });
    }
    // What the types read is taken, a json_schema's description included.
    const ok = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages,
      max_tokens: 40,
      response_format: { type: "json_schema", json_schema: { name: "x", description: "an a", schema, strict: true } },
    });
    expect(ok.status).toBe(200);
  });

  // It said "max_tokens 6 is too small for this format" to a request that sent no max_tokens.
  test("a prompt that leaves the context too little room for the format's shortest answer is named as such", async () => {
    const schema = {
      type: "object",
      properties: { name: { type: "string" }, age: { type: "integer" } },
      required: ["name", "age"],
    };
    const response_format = { type: "json_schema", json_schema: { name: "x", schema } };
    // The tiny model's context is 256 tokens: a prompt of 250 leaves 6.
    const full = await post(`${server.url}/v1/completions`, {
      model,
      prompt: Array.from({ length: 250 }, (_, i) => 100 + i),
      response_format,
    });
    expect(full.status).toBe(400);
    expect(full.json.error.param).toBe("prompt");
    expect(full.json.error.message).toMatch(
      /^This model's maximum context length is 256 tokens\. However, the prompt is 250 tokens: the 6 left are too few for this format, whose shortest valid answer takes \d+$/,
    );
    // Where max_tokens sets the budget, it is what the error names.
    const short = await post(`${server.url}/v1/completions`, { model, prompt: "x", max_tokens: 6, response_format });
    expect(short.status).toBe(400);
    expect(short.json.error.param).toBe("max_tokens");
    expect(short.json.error.message).toMatch(/^max_tokens 6 is too small for this format/);
  });

  test("an invalid schema is a 400 naming the offending part, and the server carries on", async () => {
    const r = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        model,
        messages: [{ role: "user", content: "x" }],
        response_format: {
          type: "json_schema",
          json_schema: { name: "x", schema: { type: "object", properties: { n: { type: "number", multipleOf: 2 } } } },
        },
      }),
    });
    expect(r.status).toBe(400);
    const body: any = await r.json();
    expect(body.error.message).toMatch(/multipleOf/);
    expect(body.error.param).toMatch(/response_format/);
    const after = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 3,
    });
    expect(after.choices[0]!.finish_reason).toBe("length");
    expect(after.usage!.completion_tokens).toBe(3);
  });
  test("a schema past the compile budget is a 400 naming the limit, before it holds the server for seconds", async () => {
    // Five strings of distinct lengths: xgrammar took 16 s over them, answering nothing else meanwhile.
    const costly = {
      type: "object",
      properties: Object.fromEntries(
        Array.from({ length: 5 }, (_, i) => [`p${i}`, { type: "string", maxLength: 100 + i }]),
      ),
    };
    const refused = await openai.chat.completions
      .create({
        model,
        messages: [{ role: "user", content: "x" }],
        max_tokens: 5,
        response_format: { type: "json_schema", json_schema: { name: "x", schema: costly } },
      })
      .then(
        () => undefined,
        (error: unknown) => error,
      );
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError);
    const e = refused as InstanceType<typeof OpenAI.BadRequestError>;
    expect(e.message).toContain("over the limit of 256");
    expect((e.error as any).type).toBe("invalid_request_error");
    expect(e.param).toMatch(/response_format/);
    // An enum of 20,000 values (ajv alone took seconds over its 400 KB) is refused by its size.
    const big = await post(`${server.url}/api/chat`, {
      model,
      messages: [{ role: "user", content: "x" }],
      stream: false,
      format: { type: "string", enum: Array.from({ length: 20_000 }, (_, i) => `value number ${i}`) },
    });
    expect(big.status).toBe(400);
    expect(JSON.stringify(big.json)).toContain("over the limit of 131072");
    // A required call whose parameters are past the budget alike, naming the function.
    const tool = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages: [{ role: "user", content: "x" }],
      max_tokens: 5,
      tools: [{ type: "function", function: { name: "f", parameters: costly } }],
      tool_choice: "required",
    });
    expect(tool.status).toBe(400);
    expect(tool.json.error.message).toContain("function 'f' parameters: unsupported schema: its counted repetitions");
    const after = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 3,
    });
    expect(after.usage!.completion_tokens).toBe(3);
  });
});
