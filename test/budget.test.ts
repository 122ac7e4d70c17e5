// Structured output that parses even when max_tokens runs out: the grammar constraint, told the
// sequence's budget, steers to the shortest valid completion before it is too late. On a tiny
// random-weight model (the grammar and the steering are all that make its answers valid) and
// through every path: the engine, `mlx run`, the server batched with other requests, tool calls.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import OpenAI from "openai";
import * as mx from "../src/mlx";
import { Ollama } from "ollama";
import { loadModel, type LoadedModel } from "../src/models/load";
import { completeAlone, writesAfter } from "./helpers/generate";
import { complete, soloScheduler } from "../src/engine/generate";
import { defaultSampling } from "../src/engine/sampling";
import { promptTokens } from "../src/engine/prompt";
import { createJsonConstraint, initGrammar, type JsonFormat, schemaEbnf } from "../src/engine/grammar";
import { BudgetError } from "../src/engine/budget/steering";
import { constantText, JsonProgress, layout, SchemaShapes } from "../src/engine/budget/json-progress";
import { CallsProgress } from "../src/engine/budget/calls-progress";
import { createToolCallConstraint, toolCallFormats } from "../src/engine/tools";
import type { RunningServer } from "../src/server/app";
import { writeTinyModel } from "./helpers/tiny-model";
import { cliRunner } from "./helpers/cli";
import { post, serve } from "./helpers/serve";
import { smallestCallBudget } from "./helpers/forecast-tools";

const root = mkdtempSync(join(tmpdir(), "mlx-budget-"));
const modelDir = join(root, "tiny");
const ajv = new Ajv({ strict: false, validateFormats: false });
let lm: LoadedModel;

beforeAll(async () => {
  writeTinyModel(modelDir, { contextLength: 1024 });
  lm = loadModel(modelDir);
  await initGrammar();
});

// Long free-text strings (no maxLength): a random model never closes them by itself, so every
// answer here ends because the budget did.
const schemas: Record<string, { schema: Record<string, unknown>; sample: unknown }> = {
  "long free-text fields": {
    schema: {
      type: "object",
      properties: { title: { type: "string" }, summary: { type: "string" }, details: { type: "string" } },
      required: ["title", "summary", "details"],
    },
    sample: { title: "Fire", summary: 'A "small" fire\nin the lab', details: "none" },
  },
  "nested objects, required fields deep in the structure": {
    schema: {
      type: "object",
      properties: {
        incident: {
          type: "object",
          properties: {
            where: {
              type: "object",
              properties: { site: { type: "string" }, floor: { type: "integer", minimum: 1, maximum: 40 } },
              required: ["site", "floor"],
            },
            note: { type: "string" },
            when: {
              type: "object",
              properties: { day: { type: "integer", minimum: 1, maximum: 31 }, shift: { enum: ["day", "night"] } },
              required: ["day", "shift"],
            },
          },
          required: ["where", "when"],
        },
        open: { type: "boolean" },
      },
      required: ["incident", "open"],
    },
    sample: {
      incident: { where: { site: "Dock 4", floor: 12 }, note: "smoke", when: { day: 3, shift: "night" } },
      open: false,
    },
  },
  "arrays with minItems, of objects with required fields": {
    schema: {
      type: "object",
      properties: {
        tags: { type: "array", items: { type: "string", minLength: 2 }, minItems: 2 },
        people: {
          type: "array",
          minItems: 2,
          items: {
            type: "object",
            properties: { name: { type: "string" }, role: { type: "string" }, age: { type: ["integer", "null"] } },
            required: ["name", "role"],
          },
        },
        scores: { type: "array", items: { type: "number" }, minItems: 1, maxItems: 4 },
      },
      required: ["tags", "people", "scores"],
    },
    sample: {
      tags: ["urgent", "lab", "x1"],
      people: [
        { name: "Ann", role: "lead", age: 41 },
        { name: "Bo", role: "aide", age: null },
      ],
      scores: [1.5, -2e3, 0],
    },
  },
  "enums and consts": {
    schema: {
      type: "object",
      properties: {
        severity: { enum: ["low", "medium", "high", "critical"] },
        code: { enum: [100, 2, null, "n/a"] },
        kind: { const: "incident" },
        owner: { type: "string" },
      },
      required: ["severity", "code", "kind", "owner"],
    },
    sample: { severity: "critical", code: 100, kind: "incident", owner: "Dee" },
  },
  "$defs and anyOf": {
    schema: {
      $defs: {
        person: {
          type: "object",
          properties: { name: { type: "string" }, email: { type: "string" } },
          required: ["name"],
        },
      },
      type: "object",
      properties: {
        reporter: { $ref: "#/$defs/person" },
        witness: { anyOf: [{ $ref: "#/$defs/person" }, { type: "null" }] },
        text: { type: "string" },
      },
      required: ["reporter", "witness", "text"],
    },
    sample: { reporter: { name: "Al", email: "al at x" }, witness: null, text: "seen" },
  },
  "a union of objects told apart by a const": {
    schema: {
      type: "object",
      properties: {
        shape: {
          anyOf: [
            {
              type: "object",
              properties: { kind: { const: "circle" }, r: { type: "number" } },
              required: ["kind", "r"],
              additionalProperties: false,
            },
            {
              type: "object",
              properties: { kind: { const: "rect" }, w: { type: "integer" }, h: { type: "integer" } },
              required: ["kind", "w", "h"],
              additionalProperties: false,
            },
          ],
        },
        label: { type: "string" },
      },
      required: ["shape", "label"],
      additionalProperties: false,
    },
    sample: { shape: { kind: "rect", w: -18, h: 4 }, label: "box" },
  },
  // minProperties beyond the required ones: the completion adds the cheapest that may come.
  "minProperties over optional properties": {
    schema: {
      type: "object",
      properties: { a: { type: "string" }, b: { type: "integer" }, c: { type: "boolean" } },
      minProperties: 2,
      additionalProperties: false,
    },
    sample: { a: "text", c: true },
  },
  // Names JSON writes with escapes: the completion follows them as written.
  "property names that JSON escapes": {
    schema: {
      type: "object",
      properties: {
        'say "hi"': { type: "string" },
        "C:\\dir": { type: "integer" },
        "two\nlines": { type: "boolean" },
        "a\tb": { type: "string" },
      },
      required: ['say "hi"', "C:\\dir", "two\nlines", "a\tb"],
      additionalProperties: false,
    },
    sample: { 'say "hi"': "x", "C:\\dir": 7, "two\nlines": true, "a\tb": "y" },
  },
  // Strings a random model never ends by itself, whose every prefix is not yet a match: only
  // the budget closes them.
  "patterns and formats": {
    schema: {
      type: "object",
      properties: {
        code: { type: "string", pattern: "^[A-Z]{2}-[0-9]{3,4}$" },
        slug: { type: "string", pattern: "^[a-z]+(-[a-z]+)*$" },
        id: { type: "string", format: "uuid" },
        at: { type: "string", format: "date-time" },
        host: { type: "string", format: "ipv4" },
      },
      required: ["code", "slug", "id", "at", "host"],
    },
    sample: {
      code: "AB-1234",
      slug: "fire-drill",
      id: "0f8fad5b-d9cb-469f-a165-70867728950e",
      at: "2024-03-31T23:59:59.5+01:00",
      host: "192.168.0.10",
    },
  },
};

describe("the shortest completion of every prefix parses and validates", () => {
  for (const [name, { schema, sample }] of Object.entries(schemas)) {
    test(name, () => {
      const validate = ajv.compile(schema);
      expect(validate(sample)).toBe(true);
      const text = layout(sample);
      const shapes = new SchemaShapes(schema as Record<string, unknown>, true);
      for (let i = 0; i <= text.length; i++) {
        const progress = new JsonProgress(shapes, schema);
        progress.feed(text.slice(0, i));
        const whole = text.slice(0, i) + progress.completion();
        let value: unknown;
        try {
          value = JSON.parse(whole);
        } catch {
          throw new Error(`not JSON after ${JSON.stringify(text.slice(0, i))}: ${whole}`);
        }
        if (!validate(value))
          throw new Error(
            `invalid after ${JSON.stringify(text.slice(0, i))}: ${whole}: ${ajv.errorsText(validate.errors)}`,
          );
      }
    });
  }

  // Not with the tiny model: the grammar lets it write a name twice, which then counts once.
  test("minProperties over properties the schema does not name: under names not written yet", () => {
    const schema = { type: "object", additionalProperties: { type: "integer" }, minProperties: 3 };
    const validate = ajv.compile(schema);
    const shapes = new SchemaShapes(schema, true);
    for (const text of ['{"x": 1, "": 22, "y": 3}', '{"0": 1, "": 2, "1": 3}', '{"a": 1, "a": 2, "b": 3, "c": 4}']) {
      for (let i = 0; i <= text.length; i++) {
        const progress = new JsonProgress(shapes, schema);
        progress.feed(text.slice(0, i));
        const whole = text.slice(0, i) + progress.completion();
        if (!validate(JSON.parse(whole)))
          throw new Error(
            `invalid after ${JSON.stringify(text.slice(0, i))}: ${whole}: ${ajv.errorsText(validate.errors)}`,
          );
      }
    }
  });

  // A model that keeps writing digits: past 309 of them Number reads Infinity, which is no
  // integer, and the steering gave up (the answer was cut, invalid and not flagged).
  test("an integer longer than a double holds", () => {
    for (const [n, digits] of [
      [{ type: "integer", minimum: 1 }, "9".repeat(400)],
      [{ type: "integer" }, `-${"1".repeat(400)}`],
    ] as const) {
      const schema = { type: "object", properties: { n }, required: ["n"] };
      const progress = new JsonProgress(new SchemaShapes(schema, true), schema);
      progress.feed(`{"n": ${digits}`);
      expect(progress.completion()).toBe("}");
    }
  });

  test("a string's minLength counts code points: a surrogate pair is one character", () => {
    const schema = { type: "object", properties: { s: { type: "string", minLength: 3 } }, required: ["s"] };
    const validate = ajv.compile(schema);
    const shapes = new SchemaShapes(schema, true);
    for (const typed of ['{"s": "😀', '{"s": "a😀', '{"s": "😀😀']) {
      const progress = new JsonProgress(shapes, schema);
      progress.feed(typed);
      const whole = typed + progress.completion();
      expect({ whole, valid: validate(JSON.parse(whole)) }).toEqual({
        whole: `${typed}${"a".repeat(3 - [...typed.slice(7)].length)}"}`,
        valid: true,
      });
    }
  });

  test("a tool call (hermes layout), from every prefix", () => {
    const format = toolCallFormats.hermes;
    const parameters = schemas["nested objects, required fields deep in the structure"]!.schema;
    const calls = [
      {
        ...format.callLayout("report"),
        schema: parameters,
        shapes: new SchemaShapes(parameters as Record<string, unknown>, true),
      },
      {
        ...format.callLayout("ping"),
        schema: { type: "object", properties: {} },
        shapes: new SchemaShapes({ type: "object", properties: {} }, true),
      },
    ];
    const call = format.callLayout("report");
    const text = `${call.begin}${layout(schemas["nested objects, required fields deep in the structure"]!.sample)}${call.end}`;
    const validate = ajv.compile(parameters);
    for (let i = 0; i <= text.length; i++) {
      const progress = new CallsProgress({ calls, separator: format.separator });
      progress.feed(text.slice(0, i));
      const parsed = format.parse(text.slice(0, i) + progress.completion());
      expect(parsed.calls).toHaveLength(1);
      const [c] = parsed.calls;
      if (c!.name === "report") expect(validate(c!.arguments)).toBe(true);
      else expect(c!.arguments).toEqual({});
    }
  });

  for (const format of [toolCallFormats.hermes, toolCallFormats.mistralArgs])
    test(`a call in free text (${format.name} layout, calls not required), from every prefix`, () => {
      const parameters = schemas["nested objects, required fields deep in the structure"]!.schema;
      const calls = [
        {
          ...format.callLayout("report"),
          schema: parameters,
          shapes: new SchemaShapes(parameters as Record<string, unknown>, true),
        },
      ];
      const call = format.callLayout("report");
      const prose = "Let me see.";
      const opened = `${prose}${format.list?.begin ?? ""}${call.begin}`;
      const text = `${opened}${layout(schemas["nested objects, required fields deep in the structure"]!.sample)}${call.end}`;
      const validate = ajv.compile(parameters);
      for (let i = 0; i <= text.length; i++) {
        const progress = new CallsProgress({
          calls,
          separator: format.separator,
          list: format.list,
          trigger: format.trigger,
        });
        progress.feed(text.slice(0, i));
        const parsed = format.parse(text.slice(0, i) + progress.completion());
        // Nothing is owed before the trigger is whole; from there on, a whole valid call.
        if (i < prose.length + format.trigger.length) continue;
        expect(parsed.content).toBe(prose);
        expect(parsed.calls).toHaveLength(1);
        expect(validate(parsed.calls[0]!.arguments)).toBe(true);
      }
    });

  // Qwen3-Coder's XML calls: a string is its bare text (code on many lines, "<" and a
  // "\n</par" that is no closing included), one under a length or pattern one line, an enum
  // its bare word, anything else JSON; optional parameters may be left out, required ones not.
  for (const required of [true, false])
    test(`a call in XML parameters (qwen3coder layout, calls ${required ? "required" : "in free text"}), from every prefix`, () => {
      const tools = [{ name: "write_file", parameters: xmlParameters }];
      const format = toolCallFormats.qwen3coder.withTools!(tools);
      const calls = [
        {
          ...format.callLayout("write_file"),
          schema: xmlParameters,
          shapes: new SchemaShapes(xmlParameters, true),
          xml: true,
        },
      ];
      const validate = ajv.compile(xmlParameters);
      const prose = required ? "" : "Let me see.";
      for (const text of xmlCallSamples) {
        const answer = prose + text;
        for (let i = 0; i <= answer.length; i++) {
          const progress = new CallsProgress({
            calls,
            separator: format.separator,
            trigger: required ? undefined : format.trigger,
          });
          progress.feed(answer.slice(0, i));
          const whole = answer.slice(0, i) + progress.completion();
          // Nothing is owed before the trigger is whole; from there on, a whole valid call.
          if (!required && i < prose.length + format.trigger.length) continue;
          const parsed = format.parse(whole);
          expect({ whole, content: parsed.content, calls: parsed.calls.length }).toEqual({
            whole,
            content: prose,
            calls: 1,
          });
          if (!validate(parsed.calls[0]!.arguments))
            throw new Error(
              `invalid after ${JSON.stringify(answer.slice(0, i))}: ${whole}: ${ajv.errorsText(validate.errors)}`,
            );
        }
      }
    });
});

const xmlParameters = {
  type: "object",
  properties: {
    path: { type: "string", pattern: "^[a-z/]+[.][a-z]+$" },
    content: { type: "string" },
    mode: { enum: ["create", "append"] },
    title: { type: "string", minLength: 2 },
    lines: { type: "array", items: { type: "integer", minimum: 1 }, minItems: 1 },
    options: { type: "object", properties: { force: { type: "boolean" } }, required: ["force"] },
    level: { type: "integer", minimum: 3, maximum: 9 },
  },
  required: ["path", "content", "lines", "level"],
  additionalProperties: false,
} as Record<string, unknown>;

const xmlParameter = (name: string, value: string) => `<parameter=${name}>\n${value}\n</parameter>\n`;
const xmlCall = (params: string) => `<tool_call>\n<function=write_file>\n${params}</function>\n</tool_call>`;
const xmlCallSamples = [
  xmlCall(
    xmlParameter("path", "src/a.js") +
      xmlParameter("content", 'if (a < b) {\n  x("<div>\n</p>\n</param");\n}\n') +
      xmlParameter("mode", "append") +
      xmlParameter("title", "Two") +
      xmlParameter("lines", "[1, 22]") +
      xmlParameter("options", '{"force": true}') +
      xmlParameter("level", "7"),
  ),
  xmlCall(
    xmlParameter("path", "a.b") +
      xmlParameter("content", "") +
      xmlParameter("lines", "[3]") +
      xmlParameter("level", "3"),
  ),
];

function generate(format: JsonFormat, maxTokens: number, seed: number) {
  return (async () => {
    const constraint = await createJsonConstraint(lm.tokenizer, format, { maxTokens });
    try {
      const result = await completeAlone(lm, promptTokens(lm.tokenizer, "Fill this in for a fictional example."), {
        sampling: { ...defaultSampling, temperature: 1, seed },
        maxTokens,
        processors: [constraint.processor],
      });
      return { result, closedEarly: constraint.closedEarly(), accepted: constraint.accepted(result.tokenIds) };
    } finally {
      constraint.dispose();
    }
  })();
}

async function minimumFor(format: JsonFormat): Promise<number> {
  try {
    (await createJsonConstraint(lm.tokenizer, format, { maxTokens: 1 })).dispose();
    return 1;
  } catch (error) {
    if (error instanceof BudgetError) return error.minimum;
    throw error;
  }
}

describe("schemas × small budgets × seeds on the tiny model: every answer parses and validates", () => {
  for (const [name, { schema }] of Object.entries(schemas)) {
    test(name, async () => {
      const validate = ajv.compile(schema);
      const minimum = await minimumFor({ schema });
      for (const maxTokens of [minimum, minimum + 3, minimum + 12, 90]) {
        for (const seed of [1, 2, 3]) {
          const { result, closedEarly, accepted } = await generate({ schema }, maxTokens, seed);
          const where = `max_tokens ${maxTokens}, seed ${seed}, ${result.finishReason}: ${result.text}`;
          let value: unknown;
          try {
            value = JSON.parse(result.text);
          } catch {
            throw new Error(`not JSON (${where})`);
          }
          if (!validate(value)) throw new Error(`does not validate (${where}): ${ajv.errorsText(validate.errors)}`);
          expect(accepted).toBe(true);
          expect(result.tokenIds.length).toBeLessThanOrEqual(maxTokens);
          if (result.finishReason === "length") expect(closedEarly).toBe(true);
        }
      }
    }, 120_000);
  }

  test('"json" (any object) closes its open strings, arrays and objects', async () => {
    for (const maxTokens of [2, 9, 40]) {
      for (const seed of [1, 2, 3]) {
        const { result } = await generate("json", maxTokens, seed);
        const value = JSON.parse(result.text);
        expect(typeof value).toBe("object");
      }
    }
  }, 120_000);

  // The steering read a const or enum as `layout` writes values ({"a": 1, "b": 0.1}), where the
  // grammar writes {"a":1,"b":0.10000000000000001}: the reading was lost at the first
  // difference, so a long const could be cut unparsed, and a token the reading could not follow
  // was masked as if out of budget: a complete answer well within max_tokens ended with finish
  // reason length and closed_early.
  test("a const or enum is read as the grammar writes it: a complete answer is not flagged closed early", async () => {
    const values = [
      { a: "x/y\u007f\b\u0001é😀", b: [2, 0.1, 1e300, 1e21, 1e-7, 1e-5, 100, 1.5e16, 2 ** 63] },
      { 10: 1, 9: 2, b: [], c: {} },
      [1.5, "s", null, true],
      0.1,
      -9007199254740993,
      "a/b",
    ];
    const ebnf = await schemaEbnf({ enum: values }, true);
    const root = ebnf.split("\n").find((line) => line.startsWith("root ::= "))!;
    expect(root).toBe(`root ::= ${values.map((v) => `(${JSON.stringify(constantText(v))})`).join(" | ")}`);
    for (const value of values.slice(0, 3)) {
      const schema = { type: "object", properties: { v: { const: value } }, required: ["v"] };
      const { result, closedEarly } = await generate({ schema }, 200, 1);
      expect({ finishReason: result.finishReason, closedEarly }).toEqual({ finishReason: "stop", closedEarly: false });
      expect(JSON.parse(result.text)).toEqual({ v: value });
    }
  }, 60_000);

  test("below the minimum for any valid value: a BudgetError naming the minimum", async () => {
    const { schema } = schemas["nested objects, required fields deep in the structure"]!;
    const minimum = await minimumFor({ schema });
    expect(minimum).toBeGreaterThan(10);
    const error = await createJsonConstraint(lm.tokenizer, { schema }, { maxTokens: 3 }).catch((e) => e);
    expect(error).toBeInstanceOf(BudgetError);
    expect(error.message).toBe(
      `max_tokens 3 is too small for this format: the shortest valid answer takes ${minimum} tokens`,
    );
    // At the minimum there is no room for any text in the strings.
    for (const seed of [1, 2]) {
      const { result } = await generate({ schema }, minimum, seed);
      const value = JSON.parse(result.text);
      expect(ajv.validate(schema, value)).toBe(true);
      expect(value.incident.where.site).toBe("");
    }
  }, 60_000);

  test("a character cut between tokens (UTF-8 continuation bytes owed) is finished within the budget", async () => {
    // Push the model to tokens that end inside a character, or only continue one: each such
    // token owes the ones that finish its character before the string can close.
    const vocab = lm.config.vocabSize;
    const bias = new Float32Array(vocab);
    for (let id = 0; id < lm.tokenizer.vocabSize; id++) {
      const bytes = lm.tokenizer.tokenBytes(id);
      const last = bytes.at(-1) ?? 0;
      if (last >= 0xc0 || (bytes.length > 0 && bytes.every((b) => (b & 0xc0) === 0x80))) bias[id] = 12;
    }
    const toCutCharacters = mx.array(bias, [1, vocab]);
    const { schema } = schemas["long free-text fields"]!;
    for (const format of ["json", { schema }] as JsonFormat[]) {
      const minimum = format === "json" ? 2 : await minimumFor({ schema });
      for (let maxTokens = minimum + 2; maxTokens <= minimum + 9; maxTokens++) {
        const constraint = await createJsonConstraint(lm.tokenizer, format, { maxTokens });
        const result = await completeAlone(lm, promptTokens(lm.tokenizer, "Answer in JSON."), {
          sampling: { ...defaultSampling, temperature: 1, seed: maxTokens },
          maxTokens,
          processors: [(_history, logits) => mx.add(logits, toCutCharacters), constraint.processor],
        });
        constraint.dispose();
        expect(() => JSON.parse(result.text)).not.toThrow();
      }
    }
  }, 120_000);

  test("parallel tool calls: every call opened is closed within the budget (required or not)", async () => {
    const functions = [
      {
        name: "get_weather",
        description: "",
        parameters: { type: "object", properties: { city: { type: "string", maxLength: 12 } }, required: ["city"] },
      },
    ];
    for (const name of ["hermes", "llama3", "mistral"] as const) {
      for (const required of [true, false]) {
        for (const maxTokens of [45, 60]) {
          for (const seed of [1, 2, 3]) {
            const constraint = await createToolCallConstraint(lm.tokenizer, toolCallFormats[name], functions, {
              required,
              parallel: true,
              maxTokens,
            });
            const result = await completeAlone(lm, promptTokens(lm.tokenizer, "Weather?"), {
              sampling: { ...defaultSampling, temperature: 1, seed },
              maxTokens,
              processors: [constraint.processor],
            });
            // Complete under the grammar: no call (or separator) left open where the budget ran out.
            const complete = constraint.accepted(result.tokenIds);
            constraint.dispose();
            if (!complete) throw new Error(`${name}, required ${required}, max_tokens ${maxTokens}: ${result.text}`);
          }
        }
      }
    }
  }, 120_000);

  test("a required tool call closes within the budget, its arguments valid", async () => {
    const parameters = schemas["arrays with minItems, of objects with required fields"]!.schema;
    const validate = ajv.compile(parameters);
    const functions = [{ name: "file_report", description: "", parameters: parameters as Record<string, unknown> }];
    for (const name of ["hermes", "llama3", "mistral"] as const) {
      const format = toolCallFormats[name];
      const minimum = await smallestCallBudget(lm.tokenizer, format, functions);
      for (const extra of [0, 6, 30]) {
        const maxTokens = minimum + extra;
        const constraint = await createToolCallConstraint(lm.tokenizer, format, functions, {
          required: true,
          parallel: true,
          maxTokens,
        });
        const result = await completeAlone(lm, promptTokens(lm.tokenizer, "File a report."), {
          sampling: { ...defaultSampling, temperature: 1, seed: extra },
          maxTokens,
          processors: [constraint.processor],
        });
        constraint.dispose();
        const { calls } = format.parse(result.text);
        expect(calls.length).toBeGreaterThan(0);
        for (const call of calls)
          if (!validate(call.arguments)) throw new Error(`${name}, max_tokens ${maxTokens}: ${result.text}`);
      }
    }
  }, 120_000);

  // Free text in a string parameter runs until the budget does: before the steering read XML
  // parameters, such an answer ended with its call cut (and dropped when read).
  test("an XML call (qwen3coder) closes within the budget, its arguments valid: required, or opened in free text", async () => {
    const tools = [{ name: "write_file", description: "", parameters: xmlParameters }];
    const format = toolCallFormats.qwen3coder.withTools!(tools);
    const validate = ajv.compile(xmlParameters);
    const minimum = await smallestCallBudget(lm.tokenizer, format, tools);
    for (const required of [true, false]) {
      for (const extra of [0, 5, 20]) {
        for (const seed of [1, 2]) {
          const maxTokens = minimum + extra + (required ? 0 : 12);
          const constraint = await createToolCallConstraint(lm.tokenizer, format, tools, {
            required,
            parallel: true,
            maxTokens,
          });
          const result = await completeAlone(lm, promptTokens(lm.tokenizer, "Write a file."), {
            sampling: { ...defaultSampling, temperature: 1, seed },
            maxTokens,
            // Not required: the model's own words, then a call it opens.
            processors: required ? [constraint.processor] : [writesAfter(lm, "<tool_call>", 3), constraint.processor],
          });
          const accepted = constraint.accepted(result.tokenIds);
          constraint.dispose();
          const where = `required ${required}, max_tokens ${maxTokens}, seed ${seed}, ${result.finishReason}: ${result.text}`;
          const { calls } = format.parse(result.text);
          if (calls.length === 0 || !accepted) throw new Error(`no whole call (${where})`);
          for (const call of calls)
            if (!validate(call.arguments)) throw new Error(`invalid (${where}): ${ajv.errorsText(validate.errors)}`);
          expect(result.tokenIds.length).toBeLessThanOrEqual(maxTokens);
        }
      }
    }
  }, 120_000);

  // A parameter that may be a string or another value is JSON in the grammar (a string quoted),
  // and one of any type bare text or JSON: the steering read neither, so once such a parameter
  // opened, the call ran on until the budget cut it (and it was dropped when read).
  test("an XML call (qwen3coder) with parameters of mixed or any type closes within the budget, its arguments valid", async () => {
    const parameters = {
      type: "object",
      properties: {
        note: { type: ["string", "null"] },
        size: { anyOf: [{ type: "integer" }, { type: "string" }] },
        extra: {},
      },
      required: ["note", "size", "extra"],
    };
    const tools = [{ name: "annotate", description: "", parameters }];
    const format = toolCallFormats.qwen3coder.withTools!(tools);
    const validate = ajv.compile(parameters);
    const minimum = await smallestCallBudget(lm.tokenizer, format, tools);
    for (const extra of [0, 4, 12, 30]) {
      for (const seed of [1, 2]) {
        const maxTokens = minimum + extra;
        const constraint = await createToolCallConstraint(lm.tokenizer, format, tools, {
          required: true,
          parallel: false,
          maxTokens,
        });
        const result = await completeAlone(lm, promptTokens(lm.tokenizer, "Annotate."), {
          sampling: { ...defaultSampling, temperature: 1, seed },
          maxTokens,
          processors: [constraint.processor],
        });
        const accepted = constraint.accepted(result.tokenIds);
        constraint.dispose();
        const where = `max_tokens ${maxTokens}, seed ${seed}, ${result.finishReason}: ${result.text}`;
        const { calls } = format.parse(result.text);
        if (calls.length !== 1 || !accepted) throw new Error(`no whole call (${where})`);
        if (!validate(calls[0]!.arguments)) throw new Error(`invalid (${where}): ${ajv.errorsText(validate.errors)}`);
      }
    }
  }, 120_000);
});

describe("through mlx run and the server", () => {
  const mlx = cliRunner(join(root, "home"));
  const { schema } = schemas["long free-text fields"]!;
  const schemaFile = join(root, "incident.json");
  beforeAll(() => writeFileSync(schemaFile, JSON.stringify(schema)));

  test("mlx run --schema: valid JSON at a small budget, closed_early in --json; below the minimum a one-line error naming it", async () => {
    const r = await mlx([
      "run",
      "-m",
      modelDir,
      "--schema",
      schemaFile,
      "--temp",
      "0.8",
      "--seed",
      "1",
      "--max-tokens",
      "30",
      "--json",
      "Fill this in for a fictional example.",
    ]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.finish_reason).toBe("length");
    expect(out.closed_early).toBe(true);
    expect(ajv.validate(schema, JSON.parse(out.text))).toBe(true);
    const plain = await mlx([
      "run",
      "-m",
      modelDir,
      "--schema",
      schemaFile,
      "--temp",
      "0.8",
      "--seed",
      "2",
      "--max-tokens",
      "30",
      "Fill this in.",
    ]);
    expect(ajv.validate(schema, JSON.parse(plain.stdout))).toBe(true);
    expect(plain.stderr).toMatch(/closed early/);
    const tooSmall = await mlx(["run", "-m", modelDir, "--schema", schemaFile, "--max-tokens", "3", "hi"]);
    expect(tooSmall.code).not.toBe(0);
    expect(tooSmall.stderr.trim().split("\n")).toHaveLength(1);
    expect(tooSmall.stderr).toMatch(
      /^error: --max-tokens 3 is too small for this format: the shortest valid answer takes \d+ tokens/,
    );
  }, 120_000);

  test("mlx chat with /set format: a valid answer at a small max_tokens, and a note that it was closed early", async () => {
    const input = [
      `/set format ${schemaFile}`,
      "/set max_tokens 25",
      "Fill this in.",
      "/set max_tokens 3",
      "Again.",
      "",
    ].join("\n");
    const r = await mlx(["chat", "-m", modelDir, "--temp", "1", "--seed", "3"], input);
    // Piped, the second answer's failure (below) makes the exit status 1, the first answered.
    expect(r.code).toBe(1);
    expect(ajv.validate(schema, JSON.parse(r.stdout.trim().split("\n")[0]!))).toBe(true);
    expect(r.stderr).toMatch(/max_tokens ran out: the JSON was closed early/);
    expect(r.stderr).toMatch(
      /error: max_tokens 3 is too small for this format: the shortest valid answer takes \d+ tokens/,
    );
  }, 120_000);

  describe("mlx serve, batched", () => {
    let server: RunningServer;
    let openai: OpenAI;
    beforeAll(() => {
      server = serve({ defaultModel: modelDir });
      openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
    });
    afterAll(() => server.stop());
    const responseFormat = { type: "json_schema" as const, json_schema: { name: "incident", schema, strict: true } };
    const messages = [{ role: "user" as const, content: "Fill this in for a fictional example." }];

    test("OpenAI: concurrent requests with different small budgets all parse and validate; closed_early in the choice and a header", async () => {
      const budgets = [20, 25, 33, 48, 64];
      const requests = budgets.map((max_tokens, seed) =>
        openai.chat.completions
          .create({ model: modelDir, messages, max_tokens, temperature: 1, seed, response_format: responseFormat })
          .withResponse(),
      );
      const free = openai.chat.completions.create({
        model: modelDir,
        messages,
        max_tokens: 40,
        temperature: 1,
        seed: 9,
      });
      const results = await Promise.all(requests);
      await free;
      for (const { data, response } of results) {
        const choice = data.choices[0]! as (typeof data.choices)[0] & { closed_early?: boolean };
        expect(choice.finish_reason).toBe("length");
        expect(choice.closed_early).toBe(true);
        expect(response.headers.get("x-mlx-closed-early")).toBe("true");
        expect(ajv.validate(schema, JSON.parse(choice.message.content!))).toBe(true);
      }
    }, 120_000);

    test("OpenAI streamed: the final chunk carries closed_early", async () => {
      const stream = await openai.chat.completions.create({
        model: modelDir,
        messages,
        max_tokens: 25,
        temperature: 1,
        seed: 4,
        response_format: responseFormat,
        stream: true,
      });
      let text = "";
      let last: Record<string, unknown> | undefined;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? "";
        if (chunk.choices[0]?.finish_reason) last = chunk.choices[0] as unknown as Record<string, unknown>;
      }
      expect(last?.finish_reason).toBe("length");
      expect(last?.closed_early).toBe(true);
      expect(ajv.validate(schema, JSON.parse(text))).toBe(true);
    }, 120_000);

    test("Ollama format: valid at a small num_predict, closed_early in the final object", async () => {
      const ollama = new Ollama({ host: server.url });
      const r = (await ollama.chat({
        model: modelDir,
        messages,
        format: schema,
        options: { num_predict: 28, temperature: 1, seed: 5 },
      })) as unknown as { message: { content: string }; done_reason: string; closed_early?: boolean };
      expect(r.done_reason).toBe("length");
      expect(r.closed_early).toBe(true);
      expect(ajv.validate(schema, JSON.parse(r.message.content))).toBe(true);
    }, 120_000);

    test("max_tokens below the minimum: 400 on max_tokens naming it; tool_choice required too", async () => {
      const r = await post(`${server.url}/v1/chat/completions`, {
        model: modelDir,
        messages,
        max_tokens: 3,
        response_format: responseFormat,
      });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe("max_tokens");
      expect(r.json.error.message).toMatch(
        /^max_tokens 3 is too small for this format: the shortest valid answer takes \d+ tokens$/,
      );
      const tools = [{ type: "function", function: { name: "file_report", parameters: schema } }];
      const t = await post(`${server.url}/v1/chat/completions`, {
        model: modelDir,
        messages,
        max_tokens: 4,
        tools,
        tool_choice: "required",
      });
      expect(t.status).toBe(400);
      expect(t.json.error.param).toBe("max_tokens");
      // Each API's own name for the budget.
      for (const [path, body, param] of [
        [
          "/v1/chat/completions",
          { max_completion_tokens: 3, response_format: responseFormat, messages },
          "max_completion_tokens",
        ],
        [
          "/v1/responses",
          { max_output_tokens: 3, text: { format: { type: "json_schema", name: "r", schema } }, input: messages },
          "max_output_tokens",
        ],
        ["/api/chat", { options: { num_predict: 3 }, format: schema, messages, stream: false }, "options.num_predict"],
      ] as const) {
        const named = await post(`${server.url}${path}`, { model: modelDir, ...body });
        expect(named.status).toBe(400);
        // Ollama's errors are one string; the others name the field as their param too.
        const error = named.json.error;
        expect(typeof error === "string" ? error : [error.param, error.message]).toEqual(
          typeof error === "string"
            ? expect.stringContaining(`${param} 3 is too small`)
            : [param, expect.stringMatching(new RegExp(`^${param} 3 is too small`))],
        );
      }
      const ok = await openai.chat.completions.create({
        model: modelDir,
        messages,
        max_tokens: 40,
        temperature: 1,
        seed: 2,
        tools: tools as OpenAI.ChatCompletionTool[],
        tool_choice: "required",
      });
      const calls = ok.choices[0]!.message.tool_calls ?? [];
      expect(calls.length).toBeGreaterThan(0);
      for (const call of calls)
        expect(ajv.validate(schema, JSON.parse((call as { function: { arguments: string } }).function.arguments))).toBe(
          true,
        );
    }, 120_000);
  });
});

// The issue's case on the real default model (fetched into the store on first use, as the
// parity tests do): a schema of several free-text fields and arrays, sampled at 0.8.
describe("the default model (SmolLM2-135M): answers cut by max_tokens still parse and validate", () => {
  const incident = {
    type: "object",
    properties: {
      title: { type: "string" },
      summary: { type: "string" },
      severity: { enum: ["low", "medium", "high", "critical"] },
      affected_systems: { type: "array", items: { type: "string" }, minItems: 1 },
      timeline: {
        type: "array",
        minItems: 2,
        items: {
          type: "object",
          properties: { time: { type: "string" }, event: { type: "string" } },
          required: ["time", "event"],
        },
      },
      root_cause: { type: "string" },
      actions: { type: "array", items: { type: "string" } },
    },
    required: ["title", "summary", "severity", "affected_systems", "timeline", "root_cause", "actions"],
  };
  test("an answer the budget closed, ended by the model's end-of-sequence, ran out of tokens: length, closed early", async () => {
    const { resolveModelPath } = await import("../src/store/resolve");
    const real = loadModel(await resolveModelPath(undefined));
    const scheduler = soloScheduler(real);
    const prompt = { kind: "ids" as const, ids: promptTokens(real.tokenizer, "Give a person as JSON") };
    const answer = (maxTokens: number, format: JsonFormat) =>
      complete(scheduler, { prompt, sampling: defaultSampling, maxTokens, format: { format, param: "format" } });
    try {
      // Greedy, the default model writes a third field where 24 tokens allow it; at 18 the
      // budget closes the object after the second, and the model then ends it with its EOS.
      const longer = await answer(24, "json");
      const closed = await answer(18, "json");
      expect(closed.tokenIds.length).toBeLessThan(18);
      expect(longer.text.startsWith(closed.text.slice(0, -1))).toBe(true);
      expect(longer.text.length).toBeGreaterThan(closed.text.length);
      expect(JSON.parse(closed.text)).toBeObject();
      expect(closed.finishReason).toBe("length");
      expect(closed.closedEarly).toBe(true);
      // An answer that ends where its schema does, far from the budget, is the model's own end.
      const name = { schema: { type: "object", properties: { name: { type: "string" } }, required: ["name"] } };
      const own = await answer(60, name);
      expect(own.finishReason).toBe("stop");
      expect(own.closedEarly).toBe(false);
    } finally {
      scheduler.dispose();
      real.free();
    }
  }, 120_000);

  test("the incident schema at 60, 100 and 200 tokens (its minimum is 58), a seed each", async () => {
    const { resolveModelPath } = await import("../src/store/resolve");
    const real = loadModel(await resolveModelPath(undefined));
    const validate = ajv.compile(incident);
    const prompt = promptTokens(real.tokenizer, "Fill this in for a fictional example.");
    try {
      for (const [maxTokens, seed] of [
        [60, 1],
        [100, 2],
        [200, 3],
      ] as const) {
        const constraint = await createJsonConstraint(real.tokenizer, { schema: incident }, { maxTokens });
        const result = await completeAlone(real, prompt, {
          sampling: { ...defaultSampling, temperature: 0.8, seed },
          maxTokens,
          processors: [constraint.processor],
        });
        const closedEarly = constraint.closedEarly();
        constraint.dispose();
        const where = `max_tokens ${maxTokens}, seed ${seed}, ${result.finishReason}: ${result.text}`;
        let value: unknown;
        try {
          value = JSON.parse(result.text);
        } catch {
          throw new Error(`not JSON (${where})`);
        }
        if (!validate(value)) throw new Error(`does not validate (${where}): ${ajv.errorsText(validate.errors)}`);
        if (result.finishReason === "length") expect(closedEarly).toBe(true);
      }
    } finally {
      real.free();
    }
  }, 600_000);
});
