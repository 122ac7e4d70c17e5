// Constrained decoding (JSON and JSON Schema) on a tiny random-weight model with SmolLM2's real
// tokenizer: with random weights, the grammar mask is the only thing that makes the output
// valid JSON, so every answer that ends ("stop") must parse and validate.
import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import * as mx from "../src/mlx";
import { loadModel, type LoadedModel } from "../src/models/load";
import { complete } from "../src/engine/generate";
import { Scheduler } from "../src/engine/scheduler";
import { completeAlone } from "./helpers/generate";
import { defaultSampling, type SamplingParams } from "../src/engine/sampling";
import { promptTokens } from "../src/engine/prompt";
import {
  canonicalJson,
  compiledGrammarCount,
  createJsonConstraint,
  grammarMemoryBytes,
  initGrammar,
  jsonSafeStrings,
  MAX_COMPILED_GRAMMARS,
  MAX_VOCABULARIES,
  MAX_VALIDATED_SCHEMAS,
  SchemaError,
  validatedSchemaCount,
  vocabularyCount,
  validateSchema,
  type GrammarConstraint,
  type JsonFormat,
} from "../src/engine/grammar";
import { writeTinyModel } from "./helpers/tiny-model";
import { cliRunner } from "./helpers/cli";

const root = mkdtempSync(join(tmpdir(), "mlx-grammar-"));
const modelDir = join(root, "tiny");
let lm: LoadedModel;
const ajv = new Ajv({ strict: false, validateFormats: false });

beforeAll(async () => {
  writeTinyModel(modelDir, { contextLength: 1024 });
  lm = loadModel(modelDir);
  await initGrammar();
});

function generate(
  format: JsonFormat | GrammarConstraint,
  sampling: Partial<SamplingParams>,
  maxTokens = 200,
  prompt = "Answer in JSON.",
) {
  return (async () => {
    const given = typeof format === "object" && "processor" in format;
    const constraint = given
      ? (format as GrammarConstraint)
      : await createJsonConstraint(lm.tokenizer, format as JsonFormat);
    try {
      const result = await completeAlone(lm, promptTokens(lm.tokenizer, prompt), {
        sampling: { ...defaultSampling, ...sampling },
        maxTokens,
        processors: [constraint.processor],
      });
      return { result, accepted: constraint.accepted(result.tokenIds) };
    } finally {
      if (!given) constraint.dispose();
    }
  })();
}

// Every string is bounded (maxLength, pattern or enum) so a random model's answer can end.
const schemas: Record<string, object> = {
  "nested objects": {
    type: "object",
    properties: {
      user: {
        type: "object",
        properties: { id: { type: "integer", minimum: 1, maximum: 999 }, handle: { type: "string", maxLength: 8 } },
        required: ["id", "handle"],
      },
      meta: {
        type: "object",
        properties: { active: { type: "boolean" }, score: { type: "number", minimum: 0, maximum: 10 } },
        required: ["active"],
      },
    },
    required: ["user", "meta"],
  },
  "arrays with minItems/maxItems": {
    type: "object",
    properties: {
      tags: { type: "array", items: { type: "string", maxLength: 4 }, minItems: 2, maxItems: 4 },
      points: { type: "array", items: { type: "integer", minimum: -5, maximum: 5 }, minItems: 1, maxItems: 3 },
    },
    required: ["tags", "points"],
  },
  enums: {
    type: "object",
    properties: {
      color: { enum: ["red", "green", "blue"] },
      size: { type: "string", enum: ["S", "M", "L", "XL"] },
      level: { enum: [1, 2, 3, null] },
    },
    required: ["color", "size", "level"],
  },
  "numbers with minimum/maximum": {
    type: "object",
    properties: {
      age: { type: "integer", minimum: 18, maximum: 65 },
      temperature: { type: "number", minimum: -20, maximum: 40 },
      ratio: { type: "number", minimum: 0, maximum: 1 },
    },
    required: ["age", "temperature", "ratio"],
  },
  "optional and required properties": {
    type: "object",
    properties: {
      name: { type: "string", maxLength: 10 },
      nickname: { type: "string", maxLength: 6 },
      age: { type: "integer", minimum: 0, maximum: 120 },
      email: { type: "string", pattern: "^[a-z]{1,6}@[a-z]{1,6}\\.com$" },
    },
    required: ["name", "age"],
  },
  "strings with pattern": {
    type: "object",
    properties: {
      zip: { type: "string", pattern: "^[0-9]{5}$" },
      code: { type: "string", pattern: "^[A-Z]{2}-[0-9]{2,3}$" },
      slug: { type: "string", pattern: "^[a-z]{1,8}(-[a-z]{1,8}){0,2}$" },
    },
    required: ["zip", "code", "slug"],
  },
};

describe("JSON Schema outputs are valid by construction (tiny random-weight model)", () => {
  for (const [name, schema] of Object.entries(schemas)) {
    test(name, async () => {
      const validate = ajv.compile(schema);
      let stopped = 0;
      const runs: { temperature: number; seed?: number }[] = [{ temperature: 0 }];
      for (const temperature of [0.7, 1, 1.5]) for (const seed of [1, 2]) runs.push({ temperature, seed });
      for (const sampling of runs) {
        const { result, accepted } = await generate({ schema }, sampling);
        if (result.finishReason !== "stop") continue;
        stopped++;
        let value: unknown;
        try {
          value = JSON.parse(result.text);
        } catch {
          throw new Error(`not JSON (${JSON.stringify(sampling)}): ${result.text}`);
        }
        if (!validate(value))
          throw new Error(
            `does not match the schema (${JSON.stringify(sampling)}): ${result.text}: ${ajv.errorsText(validate.errors)}`,
          );
        expect(accepted).toBe(true);
      }
      // Bounded schemas end well within 200 tokens: most runs must have finished.
      expect(stopped).toBeGreaterThanOrEqual(runs.length - 2);
    });
  }
});

/** Whether the constraint for `schema` takes `answer` as a complete answer. */
async function accepts(schema: object, answer: string, strict = true): Promise<boolean> {
  const constraint = await createJsonConstraint(lm.tokenizer, { schema, strict });
  try {
    return constraint.accepted(lm.tokenizer.encode(answer, { addSpecialTokens: false }));
  } finally {
    constraint.dispose();
  }
}

describe("non-ASCII text in a schema is enforced as written", () => {
  // xgrammar's compiler cache keys a grammar by its printed text, where "ß" before "e" prints
  // as "\xdfe" and reads back as another character: the constraint must compile the text itself.
  test("property names, enum values and consts", async () => {
    const schema = {
      type: "object",
      properties: { größe: { enum: ["éa", "日本"] }, café: { const: "ßc" } },
      required: ["größe", "café"],
    };
    expect(await accepts(schema, '{"größe": "éa", "café": "ßc"}')).toBe(true);
    expect(await accepts(schema, '{"größe": "日本", "café": "ßc"}')).toBe(true);
    expect(await accepts(schema, '{"gr\u00f6\u0dfe": "éa", "café": "ßc"}')).toBe(false);
  });

  test("a pattern's literal characters", async () => {
    const schema = { type: "string", pattern: "^(α|β)+ße$" };
    expect(await accepts(schema, '"αβße"')).toBe(true);
    expect(await accepts(schema, '"¿ße"')).toBe(false);
  });
});

describe("a tuple as drafts before 2020-12 write it (items as a list)", () => {
  // xgrammar refused it: "unsupported schema: items must be a boolean or an object".
  test("its items in order, then additionalItems", async () => {
    const closed = {
      type: "array",
      items: [{ type: "integer" }, { enum: ["a", "b"] }],
      additionalItems: false,
    };
    expect(await accepts(closed, '[3, "a"]')).toBe(true);
    expect(await accepts(closed, '[3, "a", 4]')).toBe(false);
    expect(await accepts(closed, '["a", 3]')).toBe(false);
    const open = { type: "array", items: [{ type: "integer" }], additionalItems: { type: "boolean" } };
    expect(await accepts(open, "[3, true, false]")).toBe(true);
    expect(await accepts(open, "[3, 4]")).toBe(false);
  });

  test("a generated answer validates", async () => {
    const schema = {
      type: "array",
      items: [{ type: "integer", maximum: 99 }, { type: "boolean" }],
      additionalItems: false,
    };
    const { result } = await generate({ schema }, { temperature: 0 }, 50);
    expect(result.finishReason).toBe("stop");
    expect(ajv.validate(schema, JSON.parse(result.text))).toBe(true);
  });
});

describe("property names that JSON escapes", () => {
  // xgrammar writes a property name into its grammar as it is, unescaped: a quote or a
  // backslash broke the grammar's text (an 'EBNF lexer error'), a tab or a control character
  // went into the answer raw, which is not JSON.
  const names = ['say "hi"', "C:\\dir", "two\nlines", "a\tb", "bell\u0007"];
  const schema = {
    type: "object",
    properties: Object.fromEntries(names.map((name) => [name, { enum: [1] }])),
    required: names,
    additionalProperties: false,
  };

  test("are written escaped, as JSON writes them", async () => {
    const answer = `{${names.map((name) => `${JSON.stringify(name)}: 1`).join(", ")}}`;
    expect(await accepts(schema, answer)).toBe(true);
    const raw = `{${names.map((name) => `"${name}": 1`).join(", ")}}`;
    expect(await accepts(schema, raw)).toBe(false);
  });

  test("a generated answer parses, the names as the schema spells them", async () => {
    const { result } = await generate({ schema }, { temperature: 0 }, 100);
    expect(result.finishReason).toBe("stop");
    expect(Object.keys(JSON.parse(result.text))).toEqual(names);
  });
});

describe("a property the schema does not name never takes a name it does", () => {
  // xgrammar wrote another property's name as any string: under strict: false, or beside
  // additionalProperties, a model wrote {"b": 16, "b": "undefined"}, which a JSON reader takes
  // as its last "b", a string where the schema asks for an integer.
  const properties = {
    ab: { type: "string" },
    b: { type: "integer" },
    'q"x': { type: "boolean" },
    é: { type: "boolean" },
  };
  const formats = [
    { schema: { type: "object", properties, required: ["b"] }, strict: false },
    {
      schema: { type: "object", properties, required: ["b"], additionalProperties: { type: "integer" } },
      strict: true,
    },
  ];

  test("any other name is allowed: a defined name's prefix or extension, an escape past it, the empty name", async () => {
    for (const { schema, strict } of formats)
      for (const other of ["c", "a", "abc", "bb", "b\\n", "q", 'q\\"', "é1", "e", ""])
        expect({ other, strict, accepted: await accepts(schema, `{"b": 1, "${other}": 2}`, strict) }).toEqual({
          other,
          strict,
          accepted: true,
        });
  });

  test("a defined name, however it is spelled, is not", async () => {
    for (const { schema, strict } of formats)
      for (const defined of ["b", "ab", 'q\\"x', "é", "\\u0062", "a\\u0062", "\\u00e9"])
        expect({ defined, strict, accepted: await accepts(schema, `{"b": 1, "${defined}": 2}`, strict) }).toEqual({
          defined,
          strict,
          accepted: false,
        });
  });

  test("generated answers name each property once and validate", async () => {
    const schema = {
      type: "object",
      properties: { b: { type: "integer" }, c: { enum: ["x", "y"] } },
      required: ["b"],
      additionalProperties: { enum: [true, false] },
    };
    const validate = ajv.compile(schema);
    let stopped = 0;
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const { result } = await generate({ schema, strict: true }, { temperature: 1, seed }, 150);
      if (result.finishReason !== "stop") continue;
      stopped++;
      const keys = [...result.text.matchAll(/"((?:[^"\\]|\\.)*)": /g)].map((m) => JSON.parse(`"${m[1]}"`));
      expect({ text: result.text, repeated: keys.length - new Set(keys).size }).toEqual({
        text: result.text,
        repeated: 0,
      });
      expect(validate(JSON.parse(result.text))).toBe(true);
    }
    expect(stopped).toBeGreaterThan(0);
  }, 60_000);
});

describe("number bounds are enforced exactly", () => {
  // xgrammar's own range grammars let through values past one side of a bound: an integer
  // with only a minimum of 3 allowed 1, a number with a maximum of 10 allowed 10.5.
  const validator = new Ajv({ strict: false });
  const candidates: string[] = [];
  for (let i = -25; i <= 25; i++) candidates.push(String(i), `${i}.5`, `${i}.05`);
  candidates.push("-0.5", "123", "-123", "99.9", "1000.25");

  const schemas: object[] = [
    { type: "integer", minimum: 3 },
    { type: "integer", maximum: -3 },
    { type: "integer", minimum: -20 },
    { type: "integer", exclusiveMinimum: -3, exclusiveMaximum: 12 },
    { type: "integer", minimum: 1.5, maximum: 20.5 },
    { type: "number", minimum: -5, maximum: 10 },
    { type: "number", minimum: 3 },
    { type: "number", maximum: -3 },
    { type: "number", exclusiveMinimum: 0, exclusiveMaximum: 1 },
    { type: "number", exclusiveMinimum: 5 },
    { type: "number", exclusiveMaximum: -2 },
    { type: "number", minimum: -20, maximum: -10 },
    { type: ["integer", "null"], minimum: 7, maximum: 120 },
  ];
  for (const schema of schemas) {
    test(JSON.stringify(schema), async () => {
      const valid = validator.compile(schema);
      const wronglyAllowed: string[] = [];
      const wronglyRefused: string[] = [];
      for (const text of candidates) {
        const c = await createJsonConstraint(lm.tokenizer, { schema });
        const accepted = c.accepted(lm.tokenizer.encode(text, { addSpecialTokens: false }));
        c.dispose();
        if (accepted !== valid(JSON.parse(text))) (accepted ? wronglyAllowed : wronglyRefused).push(text);
      }
      expect({ wronglyAllowed, wronglyRefused }).toEqual({ wronglyAllowed: [], wronglyRefused: [] });
    });
  }

  test("whole values of a bounded integer are all allowed, with null where the type lists it", async () => {
    const schema = { type: ["integer", "null"], minimum: 7, maximum: 120 };
    const accepts = async (text: string) => {
      const c = await createJsonConstraint(lm.tokenizer, { schema });
      try {
        return c.accepted(lm.tokenizer.encode(text, { addSpecialTokens: false }));
      } finally {
        c.dispose();
      }
    };
    for (const text of ["7", "19", "99", "100", "120", "null"]) expect(await accepts(text)).toBe(true);
    for (const text of ["6", "121", "07", "-7", "7.5"]) expect(await accepts(text)).toBe(false);
  });

  test("bounds no value meets are refused", async () => {
    await expect(validateSchema({ type: "integer", minimum: 5, maximum: 4 })).rejects.toThrow(
      /unsupported schema: no integer lies within the bounds/,
    );
  });
});

describe("formats allow only the values they name", () => {
  // xgrammar's own format grammars let through minute 60, second 60 at any hour, 31 February,
  // IPv4 parts with leading zeros and hostname labels past 63 characters: values that JSON
  // Schema's formats (RFC 3339, RFC 1123) and ajv-formats refuse.
  const cases: Record<string, { valid: string[]; invalid: string[] }> = {
    "date-time": {
      valid: ["2024-12-31T23:59:59Z", "2024-02-28T00:00:00.125+05:30", "1999-04-30T12:00:00-11:00"],
      invalid: ["2024-01-01T12:60:00Z", "2024-02-31T00:00:00Z", "2024-04-31T00:00:00Z", "2024-01-01T10:30:60Z"],
    },
    date: { valid: ["2024-01-31", "2023-11-30"], invalid: ["2024-02-30", "2023-06-31", "2024-13-01"] },
    time: { valid: ["00:00:00Z", "23:59:59.5+01:00"], invalid: ["12:30:60Z", "12:60:00Z", "24:00:00Z"] },
    ipv4: { valid: ["0.0.0.0", "255.255.255.255", "192.168.1.10"], invalid: ["01.2.3.4", "1.2.3.004", "256.1.1.1"] },
    hostname: { valid: ["a", "mail-1.example.com"], invalid: [`${"a".repeat(64)}.com`, "-a.com", "a-.com"] },
    uuid: { valid: ["0f8fad5b-d9cb-469f-a165-70867728950e"], invalid: ["0f8fad5b-d9cb-469f-a165-70867728950"] },
  };
  for (const [format, { valid, invalid }] of Object.entries(cases)) {
    test(format, async () => {
      const schema = { type: "string", format };
      const accepts = async (value: string) => {
        const c = await createJsonConstraint(lm.tokenizer, { schema });
        try {
          return c.accepted(lm.tokenizer.encode(JSON.stringify(value), { addSpecialTokens: false }));
        } finally {
          c.dispose();
        }
      };
      const refused = [];
      for (const value of valid) if (!(await accepts(value))) refused.push(value);
      const allowed = [];
      for (const value of invalid) if (await accepts(value)) allowed.push(value);
      expect({ refused, allowed }).toEqual({ refused: [], allowed: [] });
    });
  }
});

describe("--format json mode and limits", () => {
  test('"json" gives a parseable JSON object whenever it ends', async () => {
    let stopped = 0;
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const { result } = await generate("json", { temperature: 1, seed }, 150);
      if (result.finishReason !== "stop") continue;
      stopped++;
      const value = JSON.parse(result.text);
      expect(typeof value).toBe("object");
      expect(Array.isArray(value)).toBe(false);
    }
    expect(stopped).toBeGreaterThan(0);
  });

  test("max_tokens too small to close the JSON reports length, and the grammar is not complete", async () => {
    const { result, accepted } = await generate({ schema: schemas["nested objects"]! }, { temperature: 0 }, 3);
    expect(result.finishReason).toBe("length");
    expect(result.tokenIds.length).toBe(3);
    expect(accepted).toBe(false);
    expect(() => JSON.parse(result.text)).toThrow();
  });

  test("the end-of-sequence token is the only choice once the JSON is complete", async () => {
    const { result } = await generate({ schema: { enum: ["yes", "no"] } }, { temperature: 1, seed: 4 });
    expect(result.finishReason).toBe("stop");
    expect(['"yes"', '"no"']).toContain(result.text);
  });

  test("constraints are independent: two sequences with different schemas, decoded in one batch", async () => {
    const a = await createJsonConstraint(lm.tokenizer, { schema: schemas.enums! });
    const b = await createJsonConstraint(lm.tokenizer, { schema: schemas["strings with pattern"]! });
    const scheduler = new Scheduler(lm, { maxBatch: 2, prefillChunk: 64, maxQueue: 2 });
    const ask = (text: string, seed: number, processor: GrammarConstraint["processor"]) =>
      complete(scheduler, {
        prompt: { kind: "ids", ids: promptTokens(lm.tokenizer, text) },
        sampling: { ...defaultSampling, temperature: 1, seed },
        maxTokens: 200,
        processors: [processor],
      });
    const [ra, rb] = await Promise.all([ask("one", 1, a.processor), ask("two", 2, b.processor)]);
    scheduler.dispose();
    for (const [r, schema] of [
      [ra, schemas.enums!],
      [rb, schemas["strings with pattern"]!],
    ] as const) {
      expect(r.finishReason).toBe("stop");
      expect(ajv.validate(schema, JSON.parse(r.text))).toBe(true);
    }
    a.dispose();
    b.dispose();
  });

  test("inside a string, only what JSON allows unescaped: no quote, backslash or control character from a pattern's '.' or a length", async () => {
    for (const schema of [
      { type: "string", maxLength: 6 },
      { type: "string", pattern: "^a.b$" },
      { type: "string", pattern: "^[^x]{1,3}$" },
      { type: "string", pattern: "^\\s\\d$" },
    ]) {
      const c = await createJsonConstraint(lm.tokenizer, { schema });
      const quote = lm.tokenizer.encode('"', { addSpecialTokens: false });
      const a = schema.pattern?.startsWith("^a") ? lm.tokenizer.encode("a", { addSpecialTokens: false }) : [];
      const history = [1, 2, 3];
      mx.scope(() => c.processor(history, mx.zeros([1, lm.tokenizer.vocabSize]))); // the first step: the prompt
      history.push(...quote, ...a);
      const masked = mx.scope(() => c.processor(history, mx.zeros([1, lm.tokenizer.vocabSize])).toArray());
      c.dispose();
      const allowed = masked.flatMap((v, id) => (v === 0 ? [lm.tokenizer.decode([id])] : []));
      expect(allowed.length).toBeGreaterThan(0);
      // A token may close the string (a quote, then what follows it), but never put a raw one inside.
      for (const text of allowed) expect(text.split('"')[0]).not.toMatch(/[\\\u0000-\u001f]/);
    }
  });

  test("jsonSafeStrings leaves xgrammar's own JSON rules and literals alone", () => {
    const ebnf = [
      'basic_string_sub ::= ("\\"" | [^\\0-\\x1f\\"\\\\\\r\\n] basic_string_sub)',
      'root ::= "[" [\\u0000-\\U0010FFFF] "]" [a-z\\t]',
    ].join("\n");
    const safe = jsonSafeStrings(ebnf).split("\n");
    expect(safe[0]).toBe(ebnf.split("\n")[0]);
    expect(safe[1]).toBe('root ::= "[" [^\\0-\\x1f"\\\\] "]" [a-z]');
  });

  test("logits wider than the tokenizer's vocabulary: the extra ids are masked", async () => {
    const c = await createJsonConstraint(lm.tokenizer, {
      schema: { type: "object", properties: { a: { type: "integer" } }, required: ["a"] },
    });
    const vocab = lm.tokenizer.vocabSize + 64;
    const masked = mx.scope(() => c.processor([1, 2, 3], mx.zeros([1, vocab])).toArray());
    c.dispose();
    const allowed = masked.flatMap((v, id) => (v === 0 ? [id] : []));
    expect(masked.slice(lm.tokenizer.vocabSize).every((v) => v === -Infinity)).toBe(true);
    expect(allowed.length).toBeGreaterThan(0);
    // The answer must open the object: every allowed first token starts with "{".
    for (const id of allowed) expect(lm.tokenizer.decode([id])).toMatch(/^\{/);
  });
});

describe("what constrained answers keep in memory", () => {
  // A schema of its own per request (a field named after the request), as clients that put ids
  // or enum values of the moment into their schemas send.
  const schemaNumbered = (i: number) => ({
    type: "object",
    properties: { [`field${i}`]: { type: "integer", minimum: 0, maximum: 9 } },
    required: [`field${i}`],
  });

  test("compiled grammars and schema checks stay within their bounds over many different schemas; a grammar in use is kept", async () => {
    // Held over the whole run: its grammar, the least recently used, must outlive the others' turnover.
    const held = await createJsonConstraint(lm.tokenizer, { schema: schemaNumbered(-1) });
    for (let i = 0; i < MAX_COMPILED_GRAMMARS + 40; i++) {
      (await createJsonConstraint(lm.tokenizer, { schema: schemaNumbered(i) })).dispose();
    }
    // Every grammar compiled so far was kept (and every schema checked): one more per new schema, for good.
    expect(await compiledGrammarCount(lm.tokenizer)).toBe(MAX_COMPILED_GRAMMARS);
    const { result, accepted } = await generate(held, { temperature: 0.8, seed: 3 }, 40);
    expect([result.finishReason, accepted]).toEqual(["stop", true]);
    expect(Object.keys(JSON.parse(result.text))).toEqual(["field-1"]);
    held.dispose();
    // Asked again, an evicted schema compiles anew and constrains as before.
    const again = await generate({ schema: schemaNumbered(0) }, { temperature: 0.8, seed: 3 }, 40);
    expect(Object.keys(JSON.parse(again.result.text))).toEqual(["field0"]);
    expect(await compiledGrammarCount(lm.tokenizer)).toBe(MAX_COMPILED_GRAMMARS);
    for (let i = 0; i <= MAX_VALIDATED_SCHEMAS; i++) await validateSchema(schemaNumbered(1000 + i));
    expect(validatedSchemaCount()).toBe(MAX_VALIDATED_SCHEMAS);
  }, 120_000);
});

describe("what checking a schema keeps in memory", () => {
  test("the JS heap does not grow with ever new schemas past a warm-up", async () => {
    const heapBytes = () => {
      Bun.gc(true);
      return process.memoryUsage().heapUsed;
    };
    // 20 properties, each with an enum (a sibling type beside an enum is checked against its values too).
    const schema = (i: number) => ({
      type: "object",
      properties: Object.fromEntries(
        Array.from({ length: 20 }, (_, k) => [`q${i}_${k}`, { type: "string", enum: ["a", "b"] }]),
      ),
    });
    // Past COMPILES_PER_INSTANCE, where the validators' Ajv instances start to be let go of.
    for (let i = 0; i < 400; i++) await validateSchema(schema(i));
    const warm = heapBytes();
    for (let i = 400; i < 1400; i++) await validateSchema(schema(i));
    // One Ajv instance kept every schema checked for good: 1,000 of these grew it by ~40 MB.
    expect(heapBytes() - warm).toBeLessThan(16 * 1024 * 1024);
  }, 300_000);
});

describe("a model loaded again", () => {
  test("reuses xgrammar's view of its vocabulary: loads that constrain an answer do not grow xgrammar's memory", async () => {
    /** A model loaded, one constrained answer's grammar made on it, the model freed and let go of. */
    const loadConstrainFree = async () => {
      const loaded = loadModel(modelDir);
      (
        await createJsonConstraint(loaded.tokenizer, {
          schema: { type: "object", properties: { a: { type: "string" } } },
        })
      ).dispose();
      loaded.free();
    };
    for (let i = 0; i < 3; i++) await loadConstrainFree();
    const warm = await grammarMemoryBytes();
    for (let i = 0; i < 12; i++) await loadConstrainFree();
    // A TokenizerInfo and a compiler per load, never all given back: 12 loads grew it by ~25 MB.
    expect((await grammarMemoryBytes()) - warm).toBeLessThan(4 * 1024 * 1024);
  }, 120_000);

  test("models of ever new vocabularies, and ever new schemas, do not grow xgrammar's memory past a warm-up", async () => {
    // One model directory whose stop tokens change between loads: each load is a vocabulary of
    // its own to xgrammar (a server that loads one model after another).
    const dir = join(root, "vocabularies");
    writeTinyModel(dir, { contextLength: 256 });
    const loadConstrainFree = async (v: number) => {
      writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: [2, 100 + v] }));
      const loaded = loadModel(dir);
      (await createJsonConstraint(loaded.tokenizer, { schema: { type: "object" } })).dispose();
      loaded.free();
    };
    for (let v = 0; v < MAX_VOCABULARIES + 2; v++) await loadConstrainFree(v);
    const warm = await grammarMemoryBytes();
    for (let v = MAX_VOCABULARIES + 2; v < MAX_VOCABULARIES + 18; v++) await loadConstrainFree(v);
    expect(vocabularyCount()).toBe(MAX_VOCABULARIES);
    // Every vocabulary kept for good, with the vocabulary xgrammar's factory copied and never
    // freed: 16 grew it by ~32 MB.
    expect((await grammarMemoryBytes()) - warm).toBeLessThan(1024 * 1024);
    // New schemas past the compiled-grammar bound: each compile left xgrammar's parsed Grammar
    // behind (~4.7 KB; 1,000 of them grew it by ~5 MB).
    const schema = (i: number) => ({ type: "object", properties: { [`new${i}`]: { type: "integer" } } });
    for (let i = 0; i < MAX_COMPILED_GRAMMARS; i++)
      (await createJsonConstraint(lm.tokenizer, { schema: schema(i) })).dispose();
    const warmSchemas = await grammarMemoryBytes();
    for (let i = MAX_COMPILED_GRAMMARS; i < MAX_COMPILED_GRAMMARS + 1000; i++)
      (await createJsonConstraint(lm.tokenizer, { schema: schema(i) })).dispose();
    expect((await grammarMemoryBytes()) - warmSchemas).toBeLessThan(1024 * 1024);
    // The model of the test's other answers still constrains as before (its vocabulary made anew).
    const { result, accepted } = await generate({ schema: schema(0) }, { temperature: 0.8, seed: 3 }, 40);
    expect([result.finishReason, accepted]).toEqual(["stop", true]);
  }, 300_000);
});

describe("invalid or unsupported schemas are a clear error naming the offending part", () => {
  const cases: [string, unknown, RegExp][] = [
    [
      "a misspelt type",
      { type: "object", properties: { age: { type: "integr" } } },
      /invalid schema: \/properties\/age\/type must be equal to one of the allowed values/,
    ],
    [
      "a reference to nothing",
      { type: "object", properties: { a: { $ref: "#/$defs/missing" } } },
      /invalid schema: .*#\/\$defs\/missing/,
    ],
    [
      "a lookbehind pattern",
      { type: "object", properties: { code: { type: "string", pattern: "(?<=x)y" } } },
      /\/properties\/code\/pattern uses a lookaround/,
    ],
    // Refused only once a model's tokenizer compiled it: "invalid option: unsupported grammar:
    // Negative Character class contains byte greater than 127", naming neither file nor pattern.
    [
      "a pattern with \\S (not whitespace)",
      { type: "object", properties: { email: { type: "string", pattern: "^\\S+@\\S+$" } } },
      /\/properties\/email\/pattern uses \\S, or \\s, \\W or \\D in a negated class/,
    ],
    [
      "a pattern with \\s in a negated class",
      { type: "string", pattern: "^[^,\\s]+$" },
      /\/pattern uses \\S, or \\s, \\W or \\D in a negated class/,
    ],
    [
      "a keyword that would not be enforced",
      { type: "object", properties: { n: { type: "integer", multipleOf: 3 } } },
      /\/properties\/n\/multipleOf is not supported/,
    ],
    [
      "a pattern with a length",
      { type: "object", properties: { slug: { type: "string", pattern: "^[a-z]+$", maxLength: 9 } } },
      /\/properties\/slug\/maxLength cannot be combined with a pattern/,
    ],
    [
      "a format with a length (the format's grammar would drop it)",
      { type: "object", properties: { day: { type: "string", format: "date", maxLength: 5 } } },
      /\/properties\/day\/maxLength cannot be combined with a format/,
    ],
    [
      "a pattern that names a quote",
      { type: "object", properties: { q: { type: "string", pattern: '^"[a-z]"$' } } },
      /\/properties\/q\/pattern names a quote/,
    ],
    [
      "the email format",
      { type: "object", properties: { mail: { type: "string", format: "email" } } },
      /\/properties\/mail\/format "email" is not supported/,
    ],
    ["a fractional bound on a number", { type: "number", maximum: 1.5 }, /\/maximum must be a whole number/],
    [
      "a bound without a type (xgrammar would allow any value)",
      { type: "object", properties: { n: { minimum: 3 } } },
      /\/properties\/n\/minimum needs "type": "integer" or "number"/,
    ],
    [
      "what xgrammar refuses",
      { type: "object", minProperties: 2, additionalProperties: false },
      /unsupported schema: minProperties is greater than the number of properties/,
    ],
    // xgrammar then wrote any value for any name propertyNames allows: {"a": "text"} under
    // additionalProperties {"type": "integer"}.
    [
      "propertyNames beside additionalProperties",
      { type: "object", propertyNames: { pattern: "^[a-c]$" }, additionalProperties: { type: "integer" } },
      /\/additionalProperties cannot be combined with propertyNames/,
    ],
    [
      "propertyNames beside properties",
      {
        type: "object",
        properties: { a: { type: "integer" } },
        required: ["a"],
        propertyNames: { maxLength: 3 },
      },
      /\/properties cannot be combined with propertyNames/,
    ],
    // xgrammar then wrote only names the patterns match: {} for a required age.
    [
      "patternProperties beside properties",
      {
        type: "object",
        properties: { age: { type: "integer" } },
        required: ["age"],
        patternProperties: { "^x[0-9]$": { type: "boolean" } },
      },
      /\/properties cannot be combined with patternProperties/,
    ],
    ["not an object", ["type", "string"], /must be a JSON object/],
    [
      "a non-ASCII character class in a pattern (xgrammar matches classes on ASCII only)",
      { type: "object", properties: { word: { type: "string", pattern: "^[α-ω]+$" } } },
      /\/properties\/word\/pattern has a non-ASCII character in a character class/,
    ],
    [
      "a non-ASCII character class in a patternProperties name",
      { type: "object", patternProperties: { "^[à-ÿ]+$": { type: "integer" } } },
      /\/patternProperties\/\^\[à-ÿ\]\+\$ has a non-ASCII character in a character class/,
    ],
    [
      "a constraint beside $ref (xgrammar would follow the reference alone)",
      { $defs: { s: { type: "string" } }, type: "object", properties: { a: { $ref: "#/$defs/s", maxLength: 2 } } },
      /\/properties\/a\/maxLength cannot be combined with \$ref/,
    ],
    [
      "properties beside allOf",
      { type: "object", properties: { b: { type: "string" } }, allOf: [{ properties: { a: { type: "integer" } } }] },
      /\/type cannot be combined with allOf/,
    ],
    [
      "a type beside anyOf",
      { type: "string", anyOf: [{ type: "integer" }, { type: "string" }] },
      /\/type cannot be combined with anyOf/,
    ],
    [
      "an enum value its type does not allow",
      { type: "object", properties: { n: { type: "string", enum: [1, "a"] } } },
      /\/properties\/n\/type cannot be combined with enum in constrained decoding \(it would not be enforced; not every value listed meets it\)/,
    ],
    // xgrammar's grammar then allows no token at all: the run failed with "the grammar rejected
    // token 0", or wrote {"child": {"child": ... until --max-tokens cut it, invalid and unflagged.
    ["a schema that is only a reference to itself", { $ref: "#" }, /no finite JSON value matches it/],
    [
      "a schema that requires itself in every branch",
      {
        $defs: { node: { type: "object", properties: { child: { $ref: "#/$defs/node" } }, required: ["child"] } },
        anyOf: [{ $ref: "#/$defs/node" }, { type: "array", items: { $ref: "#/$defs/node" }, minItems: 1 }],
      },
      /no finite JSON value matches it/,
    ],
    [
      "a required property that properties does not define",
      { type: "object", properties: { a: { type: "integer" } }, required: ["a", "b"] },
      /\/required names 'b', which \/properties does not define/,
    ],
    // xgrammar took 3 s over each of the first two and 15 s over "(.|x){0,200}" (the budget
    // counted a class repeated, not a group).
    [
      "patterns whose repeated groups are past the compile budget",
      {
        type: "object",
        properties: {
          p0: { type: "string", pattern: "^(.){0,150}$" },
          p1: { type: "string", pattern: "^((.)){0,151}$" },
          p2: { type: "string", pattern: "^(.|x){0,40}$" },
        },
      },
      /its counted repetitions .* span 416 positions, over the limit of 256/,
    ],
    ["a repeated group of alternatives", { type: "string", pattern: "^(.|x){0,200}$" }, /span 512 positions/],
    // Ajv ran out of stack following them: "Maximum call stack size exceeded."
    [
      "references that lead only to each other",
      { $defs: { a: { $ref: "#/$defs/b" }, b: { $ref: "#/$defs/a" } }, $ref: "#/$defs/a" },
      /its \$ref references go round in a cycle that reaches no schema of a value/,
    ],
    // xgrammar quoted the whole schema back as a JSON "syntax error"; embind named no place.
    [
      "a lone surrogate in an enum value",
      { type: "string", enum: ["ok", "\ud800"] },
      /\/enum\/1 holds a lone UTF-16 surrogate/,
    ],
    [
      "a lone surrogate in a property name",
      { type: "object", properties: { "x\udc00": { type: "integer" } } },
      /\/properties\/x.* \(the name\) holds a lone UTF-16 surrogate/,
    ],
  ];
  for (const [what, schema, message] of cases) {
    test(what, async () => {
      const error = await validateSchema(schema).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(SchemaError);
      expect((error as Error).message).toMatch(message);
      if (typeof schema === "object" && !Array.isArray(schema)) {
        await expect(createJsonConstraint(lm.tokenizer, { schema: schema as object })).rejects.toThrow(message);
      }
    });
  }

  test("many refused schemas in a row leave the engine working (xgrammar's instance is renewed)", async () => {
    for (let n = 1; n <= 40; n++) {
      await expect(validateSchema({ type: "object", minProperties: n, additionalProperties: false })).rejects.toThrow(
        /minProperties/,
      );
      await expect(
        createJsonConstraint(lm.tokenizer, {
          schema: { type: "object", maxProperties: 0, minProperties: n + 1, properties: { x: { type: "null" } } },
        }),
      ).rejects.toThrow();
    }
    const { result } = await generate({ schema: schemas.enums! }, { temperature: 1, seed: 3 });
    expect(result.finishReason).toBe("stop");
    expect(ajv.validate(schemas.enums!, JSON.parse(result.text))).toBe(true);
  });

  test("a schema nested deep enough to overflow xgrammar's stack is refused saying so; the schemas after it compile", async () => {
    // A client's 3 KB schema: arrays 100 deep. xgrammar's recursion ran out of its WASM stack (a
    // trap, not an abort), which left the instance unusable: the next valid schemas were refused too.
    // This vocabulary's grammars held by the instance about to be lost: they go with it.
    await (await createJsonConstraint(lm.tokenizer, { schema: { type: "integer" } })).dispose();
    let deep: object = { type: "integer" };
    for (let i = 0; i < 100; i++) deep = { type: "array", items: deep, minItems: 1, maxItems: 1 };
    await expect(validateSchema(deep)).rejects.toThrow(/nests too deeply or is too large/);
    for (let n = 0; n < 3; n++) {
      const key = `deep${n}`;
      const schema = { type: "object", properties: { [key]: { type: "integer" } }, required: [key] };
      await expect(validateSchema(schema)).resolves.toBeUndefined();
      await (await createJsonConstraint(lm.tokenizer, { schema })).dispose();
    }
  });

  test("a schema whose shortest value no answer could hold is refused, not written out (minItems of a billion took the server's memory)", async () => {
    // Sizes a test may run unfixed; a client's minItems: 1e9 had the server killed for memory.
    for (const schema of [
      { type: "string", minLength: 5_000_000 },
      { type: "array", items: { type: "string", minLength: 2000 }, minItems: 2000 },
      {
        $defs: { big: { type: "array", items: { type: "integer" }, minItems: 100_000 } },
        type: "object",
        properties: Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`p${i}`, { $ref: "#/$defs/big" }])),
        required: Array.from({ length: 20 }, (_, i) => `p${i}`),
      },
      // Before, each unnamed property's name was found by scanning every earlier one: this one hung.
      { type: "object", minProperties: 1_000_000, additionalProperties: true },
    ])
      await expect(validateSchema(schema)).rejects.toThrow(
        "unsupported schema: its shortest valid value is longer than 1048576 characters",
      );
    await expect(
      validateSchema({ type: "array", items: { type: "integer" }, minItems: 1000 }),
    ).resolves.toBeUndefined();
  });

  test("a count past xgrammar's 32-bit integers is refused naming it, not wrapped around into nonsense", async () => {
    for (const [schema, count] of [
      [{ type: "string", maxLength: 3e9 }, "/maxLength 3000000000"],
      [{ type: "string", minLength: 1e308 }, "/minLength 1e+308"],
      [{ type: "array", items: { type: "integer" }, minItems: 1, maxItems: 1e12 }, "/maxItems 1000000000000"],
    ] as const)
      await expect(validateSchema(schema)).rejects.toThrow(
        `unsupported schema: ${count} is past what constrained decoding counts to (2147483647)`,
      );
  });

  test("what may stand beside $ref, anyOf, enum and const: annotations, and constraints every listed value meets", async () => {
    for (const schema of [
      { $defs: { s: { type: "string" } }, properties: { a: { $ref: "#/$defs/s", description: "d", title: "t" } } },
      { $defs: { n: { type: "object", properties: { v: { type: "integer" } } } }, $ref: "#/$defs/n" },
      { anyOf: [{ type: "string" }, { type: "null" }], default: null, description: "optional" },
      { type: "string", enum: ["S", "M"], maxLength: 1 },
      { type: ["string", "null"], enum: ["a", null] },
      { type: "string", const: "x" },
      // Recursive schemas with a way out: an optional child, a branch of another type, an empty list.
      { type: "object", properties: { child: { $ref: "#" } } },
      { anyOf: [{ type: "object", properties: { c: { $ref: "#" } }, required: ["c"] }, { type: "null" }] },
      { type: "object", properties: { kids: { type: "array", items: { $ref: "#" } } }, required: ["kids"] },
      // propertyNames with what xgrammar enforces beside it.
      { type: "object", propertyNames: { enum: ["a", "b"] }, additionalProperties: true, maxProperties: 2 },
      { type: "object", propertyNames: { maxLength: 4 }, properties: {} },
      // What zod writes: a record of string keys (a propertyNames every name meets), a format with its pattern.
      { type: "object", propertyNames: { type: "string" }, additionalProperties: { type: "integer" } },
      { type: "string", format: "uuid", pattern: "^[0-9a-f]{8}$" },
      { type: "string", format: "email", pattern: "^[a-z]+@[a-z]+\\.com$" },
      { type: "object", patternProperties: { "^x$": { type: "integer" } }, additionalProperties: false },
      { type: "object", properties: { a: { type: "integer" } }, required: ["a"], patternProperties: {} },
    ])
      await validateSchema(schema);
  });

  test("equal schemas share a cache key whatever their key order", () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { f: 1, e: 2 }], c: 2 } })).toBe(
      canonicalJson({ a: { c: 2, d: [1, { e: 2, f: 1 }] }, b: 1 }),
    );
  });
});

// The CLI as users drive it.
const mlx = cliRunner(join(root, "home"));

describe("mlx run --schema / --format json, and /set format in mlx chat", () => {
  const schemaFile = join(root, "person.json");
  const person = {
    type: "object",
    properties: { name: { type: "string", maxLength: 12 }, age: { type: "integer", minimum: 0, maximum: 120 } },
    required: ["name", "age"],
  };
  beforeAll(() => {
    writeFileSync(schemaFile, JSON.stringify(person));
    writeFileSync(join(root, "bad.json"), JSON.stringify({ type: "object", properties: { age: { type: "integr" } } }));
    writeFileSync(join(root, "broken.json"), "{ not json");
  });

  test("--schema: the answer on stdout parses and matches the schema", async () => {
    const r = await mlx([
      "run",
      "-m",
      modelDir,
      "--schema",
      schemaFile,
      "--temp",
      "1",
      "--seed",
      "3",
      "Give me a person",
    ]);
    expect(r.code).toBe(0);
    expect(ajv.validate(person, JSON.parse(r.stdout))).toBe(true);
    // Too few tokens for any valid answer: refused up front (test/budget.test.ts has the rest).
    const j = await mlx([
      "run",
      "-m",
      modelDir,
      "--schema",
      schemaFile,
      "--json",
      "--max-tokens",
      "4",
      "Give me a person",
    ]);
    expect(j.code).toBe(1);
    expect(j.stderr).toMatch(
      /^error: --max-tokens 4 is too small for this format: the shortest valid answer takes \d+ tokens\n$/,
    );
  });

  test("--format json: parseable JSON", async () => {
    let stopped = 0;
    for (const seed of ["1", "2", "3", "4"]) {
      const r = await mlx([
        "run",
        "-m",
        modelDir,
        "--format",
        "json",
        "--temp",
        "1",
        "--seed",
        seed,
        "--max-tokens",
        "100",
        "--json",
        "Give me JSON",
      ]);
      expect(r.code).toBe(0);
      const out = JSON.parse(r.stdout);
      if (out.finish_reason !== "stop") continue;
      stopped++;
      expect(typeof JSON.parse(out.text)).toBe("object");
    }
    expect(stopped).toBeGreaterThan(0);
  });

  const oneLineError = (r: { stderr: string; code: number }, pattern: RegExp) => {
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(/^error: /);
    expect(r.stderr).toMatch(pattern);
  };
  test("a missing schema file", async () =>
    oneLineError(
      await mlx(["run", "-m", modelDir, "--schema", join(root, "nope.json"), "hi"]),
      /cannot read schema file '.*nope\.json': no such file/,
    ));
  test("a schema file that is a directory", async () =>
    oneLineError(
      await mlx(["run", "-m", modelDir, "--schema", root, "hi"]),
      /cannot read schema file '.*': it is a directory$/m,
    ));
  test("a schema file that is not JSON", async () =>
    oneLineError(
      await mlx(["run", "-m", modelDir, "--schema", join(root, "broken.json"), "hi"]),
      /broken\.json' is not valid JSON/,
    ));
  test("an invalid schema names the offending part", async () =>
    oneLineError(
      await mlx(["run", "-m", modelDir, "--schema", join(root, "bad.json"), "hi"]),
      /bad\.json': invalid schema: \/properties\/age\/type/,
    ));
  test("--format other than json", async () =>
    oneLineError(await mlx(["run", "-m", modelDir, "--format", "yaml", "hi"]), /--format must be 'json'/));

  test("/set format <file> in chat constrains each answer; /set format off frees it; a bad file is an error line", async () => {
    const input = [
      `/set format ${join(root, "bad.json")}`,
      `/set format ${schemaFile}`,
      "Give me a person",
      "/set format off",
      "/show",
      "",
    ].join("\n");
    const r = await mlx(["chat", "-m", modelDir, "--temp", "1", "--seed", "3", "--max-tokens", "200"], input);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/error: schema file '.*bad\.json': invalid schema: \/properties\/age\/type/);
    expect(r.stderr).toMatch(/format = .*person\.json/);
    expect(r.stderr).toMatch(/format off/);
    const answer = r.stdout.trim().split("\n")[0]!;
    expect(ajv.validate(person, JSON.parse(answer))).toBe(true);
  });
});
