// Qwen3-Coder's (and Qwen3.5's) tool calls: XML parameters inside <tool_call>, each parameter's
// text typed by the offered function's schema as vLLM's qwen3coder parser types it. Read whole
// and streamed in random pieces (the streamed answer must be the whole one), and written by the
// call grammar: on a tiny random-weight model the mask is the only thing that makes the answer
// a call, so every answer that ends must parse and its arguments validate.
import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import { loadModel, type LoadedModel } from "../src/models/load";
import { completeAlone, writesAfter } from "./helpers/generate";
import { defaultSampling } from "../src/engine/sampling";
import { chatTokens } from "../src/engine/prompt";
import { initGrammar } from "../src/engine/grammar";
import {
  createToolCallConstraint,
  toolCallFormats,
  toolTemplate,
  ToolCallStream,
  type ParsedAnswer,
  type ToolCallFormat,
  type ToolSpec,
} from "../src/engine/tools";
import { writeTinyModel } from "./helpers/tiny-model";

const { hermes, qwen3coder } = toolCallFormats;
const templates = join(import.meta.dir, "fixtures", "templates");
const coderTemplate = readFileSync(join(templates, "qwen3-coder.jinja"), "utf8");
const qwen3Template = readFileSync(join(templates, "qwen3.jinja"), "utf8");

const weather: ToolSpec = {
  name: "get_weather",
  parameters: {
    type: "object",
    properties: {
      city: { type: "string" },
      days: { type: "integer" },
      ratio: { type: "number" },
      metric: { type: "boolean" },
      hour: { type: ["integer", "null"] },
      tags: { type: "array", items: { type: "string" } },
      where: { type: "object" },
      note: { type: "string" },
      level: { enum: [1, 2, 3] },
    },
  },
};
const clock: ToolSpec = { name: "now", parameters: {} };
const format = qwen3coder.withTools!([weather, clock]);

const param = (name: string, value: string) => `<parameter=${name}>\n${value}\n</parameter>\n`;
const call = (name: string, params: string) => `<tool_call>\n<function=${name}>\n${params}</function>\n</tool_call>`;

/** Calls without their ids (random), to compare two reads of one answer. */
const withoutIds = (a: ParsedAnswer) => ({
  content: a.content,
  calls: a.calls.map(({ name, arguments: args }) => ({ name, args })),
});

/** `text` cut into pieces at random places, streamed: what is shown, and what the end gives. */
function streamed(f: ToolCallFormat, text: string, seed: number) {
  let state = seed;
  const random = () => (state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const pieces: string[] = [];
  for (let at = 0; at < text.length; ) {
    const n = 1 + Math.floor(random() * 12);
    pieces.push(text.slice(at, at + n));
    at += n;
  }
  const s = new ToolCallStream(f);
  const shown = pieces.map((p) => s.push(p)).join("");
  const end = s.end();
  return { shown, content: shown + end.content, calls: end.calls };
}

describe("qwen3coder: the format", () => {
  test("Qwen3-Coder's template is read as XML calls; Qwen3's JSON one stays hermes", () => {
    const t = toolTemplate(coderTemplate);
    expect(t.native).toBe(true);
    expect(t.format.name).toBe("qwen3coder");
    expect(toolTemplate(qwen3Template).format).toBe(hermes);
  });

  test("each parameter typed by its schema: strings verbatim but for one newline each side", () => {
    const answer = call(
      "get_weather",
      param("city", "Paris") +
        param("days", "3") +
        param("ratio", "0.5") +
        param("metric", "True") +
        param("hour", "null") +
        param("tags", '["a", "b"]') +
        param("where", '{"lat": 1.5}') +
        param("note", "  two\nlines  \n") +
        param("level", "2"),
    );
    const parsed = format.parse(answer);
    expect(parsed.content).toBe("");
    expect(parsed.calls).toHaveLength(1);
    expect(parsed.calls[0]!.id).toMatch(/^call_[A-Za-z0-9]{24}$/);
    expect(parsed.calls[0]!.name).toBe("get_weather");
    expect(parsed.calls[0]!.arguments).toEqual({
      city: "Paris",
      days: 3,
      ratio: 0.5,
      metric: true,
      hour: null,
      tags: ["a", "b"],
      where: { lat: 1.5 },
      note: "  two\nlines  \n",
      level: 2,
    });
  });

  test('"null" is null unless the parameter is a string; text that is not its type stays text', () => {
    const parsed = format.parse(
      call("get_weather", param("city", "null") + param("days", "null") + param("ratio", "lots") + param("level", "9")),
    );
    expect(parsed.calls[0]!.arguments).toEqual({ city: "null", days: null, ratio: "lots", level: "9" });
    // A number as JSON writes it (as Python's float() reads it), not JavaScript's other forms.
    const numbers = ["1e3", "-0.25", ".5", "0x10", "Infinity", "1e400", "1,5", ""].map(
      (n) => format.parse(call("get_weather", param("ratio", n))).calls[0]!.arguments.ratio,
    );
    expect(numbers).toEqual([1000, -0.25, 0.5, "0x10", "Infinity", "1e400", "1,5", ""]);
    // An integer past 2^53 keeps its digits (vLLM's int()), leading zeros dropped.
    const days = format.parse(call("get_weather", param("days", "-0012345678901234567890"))).calls[0]!.arguments;
    expect(JSON.stringify(days)).toBe('{"days":-12345678901234567890}');
  });

  test("an unknown function or parameter: its values stay text (but null), as vLLM reads them", () => {
    const parsed = format.parse(
      call("unknown", param("n", "3") + param("x", "null")) + call("get_weather", param("extra", "7")),
    );
    expect(parsed.calls.map((c) => [c.name, c.arguments])).toEqual([
      ["unknown", { n: "3", x: null }],
      ["get_weather", { extra: "7" }],
    ]);
    // Without the offered tools, every value is text.
    expect(qwen3coder.parse(call("get_weather", param("days", "3"))).calls[0]!.arguments).toEqual({ days: "3" });
  });

  test("several calls, prose before and after; no parameters; a bare <function=> block; a missing </parameter>", () => {
    const answer = `Let me check.\n${call("get_weather", param("city", "Oslo"))}\n${call("now", "")}\nDone.`;
    const parsed = format.parse(answer);
    // The text between the calls stays, as hermes keeps it.
    expect(parsed.content).toBe("Let me check.\n\n\nDone.");
    expect(parsed.calls.map((c) => [c.name, c.arguments])).toEqual([
      ["get_weather", { city: "Oslo" }],
      ["now", {}],
    ]);
    const bare = format.parse("<function=get_weather>\n<parameter=days>\n4\n<parameter=city>\nRome\n</function>");
    expect(bare).toMatchObject({ content: "", calls: [{ name: "get_weather", arguments: { days: 4, city: "Rome" } }] });
  });

  test("a call cut off (a stop string or max_tokens) is neither a call nor prose; text with no call is prose", () => {
    const whole = call("get_weather", param("city", "Oslo"));
    for (const cut of [
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nOs",
      "<tool_call>\n<func",
      "<tool_call>",
    ])
      expect(format.parse(`Sure.\n${whole}\n${cut}`)).toMatchObject({
        content: "Sure.",
        calls: [{ name: "get_weather" }],
      });
    expect(format.parse(`Sure.\n<tool_call>\n<function=get_weather>\n<parameter=ci`)).toEqual({
      content: "Sure.",
      calls: [],
    });
    // The call closed but not its <tool_call> (the model stopped right after </function>): a call.
    expect(format.parse("<tool_call>\n<function=now>\n</function>").calls.map((c) => c.name)).toEqual(["now"]);
    expect(format.parse("a <b> c <function is a word")).toEqual({ content: "a <b> c <function is a word", calls: [] });
  });

  test("streamed in random pieces (markers split across them): the same prose and calls as the answer read whole", () => {
    const answers = [
      `Let me check.\n${call("get_weather", param("city", "Oslo") + param("days", "2"))}\n${call("now", "")}\nDone.`,
      call("get_weather", param("tags", '["x"]') + param("metric", "false")),
      `Sure.\n${call("get_weather", param("city", "Oslo"))}\n<tool_call>\n<function=get_weather>\n<parameter=ci`,
      "Just prose, a <tool and a <function word.",
      "<function=now>\n</function> then prose",
    ];
    for (const answer of answers) {
      const whole = withoutIds(format.parse(answer));
      for (let seed = 1; seed <= 20; seed++) {
        const s = streamed(format, answer, seed);
        expect(withoutIds({ content: s.content, calls: s.calls })).toEqual(whole);
        // Never half a call shown as prose.
        expect(s.shown).not.toContain("<function=");
      }
    }
  });
});

describe("qwen3coder: calls are valid by construction", () => {
  const ajv = new Ajv({ strict: false });
  const forecast: ToolSpec = {
    name: "forecast",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", maxLength: 10 },
        days: { type: "integer", minimum: 1, maximum: 7 },
        metric: { type: "boolean" },
        tags: { type: "array", items: { type: "integer" }, maxItems: 3 },
      },
      required: ["city", "days"],
      additionalProperties: false,
    },
  };
  const schemas = new Map([
    ["forecast", ajv.compile(forecast.parameters)],
    ["now", ajv.compile({ type: "object", additionalProperties: false })],
  ]);
  let lm: LoadedModel;

  beforeAll(async () => {
    const dir = join(mkdtempSync(join(tmpdir(), "mlx-tools-qwen3coder-")), "tiny");
    writeTinyModel(dir, { contextLength: 1024 });
    lm = loadModel(dir);
    await initGrammar();
  });

  async function answer(functions: ToolSpec[], required: boolean, parallel: boolean, seed: number) {
    const f = qwen3coder.withTools!(functions);
    const constraint = await createToolCallConstraint(lm.tokenizer, f, functions, { required, parallel });
    try {
      const r = await completeAlone(lm, chatTokens(lm.tokenizer, [{ role: "user", content: "Call a function." }]), {
        sampling: { ...defaultSampling, temperature: 1, seed },
        maxTokens: 200,
        processors: [constraint.processor],
      });
      return { ...r, parsed: f.parse(r.text) };
    } finally {
      constraint.dispose();
    }
  }

  test("auto: free text first, and once the model opens <tool_call> it can only write a valid XML call", async () => {
    const f = qwen3coder.withTools!([forecast, clock]);
    let finished = 0;
    for (let seed = 1; seed <= 4; seed++) {
      const constraint = await createToolCallConstraint(lm.tokenizer, f, [forecast, clock], {
        required: false,
        parallel: false,
      });
      const r = await completeAlone(lm, chatTokens(lm.tokenizer, [{ role: "user", content: "Hi" }]), {
        sampling: { ...defaultSampling, temperature: 1, seed },
        maxTokens: 200,
        processors: [writesAfter(lm, "<tool_call>", 3), constraint.processor],
      }).finally(() => constraint.dispose());
      expect(r.text.indexOf("<tool_call>")).toBeGreaterThan(0); // its own words came first
      if (r.finishReason !== "stop") continue;
      finished++;
      const { content, calls } = f.parse(r.text);
      expect(content).toBe(r.text.slice(0, r.text.indexOf("<tool_call>")).trim());
      expect(calls).toHaveLength(1);
      expect(schemas.get(calls[0]!.name)!(calls[0]!.arguments)).toBe(true);
      expect(r.text.trimEnd()).toEndWith("</function>\n</tool_call>");
    }
    expect(finished).toBeGreaterThan(0);
  }, 120_000);

  test("the grammar takes the calls the template writes: a string of code on many lines, a bare enum word, JSON values", async () => {
    const writeFile: ToolSpec = {
      name: "write_file",
      parameters: {
        type: "object",
        properties: {
          path: { type: "string" },
          content: { type: "string" },
          mode: { enum: ["create", "append"] },
          lines: { type: "array", items: { type: "integer" } },
          options: { type: "object", properties: { force: { type: "boolean" } }, required: ["force"] },
          level: { enum: ['a "b"', 2] },
        },
        required: ["path", "content"],
      },
    };
    const accepts = async (text: string) => {
      const f = qwen3coder.withTools!([writeFile]);
      const c = await createToolCallConstraint(lm.tokenizer, f, [writeFile], { required: true, parallel: true });
      try {
        return c.accepted(lm.tokenizer.encode(text, { addSpecialTokens: false }));
      } finally {
        c.dispose();
      }
    };
    const code = 'if (a < b && c > d) {\n  print("<div></div>");\n}\n';
    const answer = (content: string, more = "") =>
      call("write_file", param("path", "a.js") + param("content", content) + more);
    expect(await accepts(answer(code, param("mode", "append") + param("lines", "[1, 2]")))).toBe(true);
    expect(await accepts(`${answer("x")}\n${answer("y")}`)).toBe(true);
    // An object's keys stay JSON; a string enum value is bare (quotes in it included), another one JSON.
    expect(await accepts(answer("x", param("options", '{"force": true}') + param("level", 'a "b"')))).toBe(true);
    expect(await accepts(answer("x", param("options", "{force: true}")))).toBe(false);
    expect(await accepts(answer("x", param("level", "2")))).toBe(true);
    expect(await accepts(answer("x", param("level", '"a \\"b\\""')))).toBe(false);
    expect(await accepts(answer(code, param("mode", '"append"')))).toBe(false);
    expect(await accepts(answer("a </parameter> b"))).toBe(false);
    expect(await accepts(call("write_file", param("content", "x") + param("path", "a.js")))).toBe(false);
    expect(await accepts(call("write_file", param("path", "a.js")))).toBe(false);
    // What the grammar lets through reads back as written.
    expect(qwen3coder.withTools!([writeFile]).parse(answer(code)).calls[0]!.arguments).toEqual({
      path: "a.js",
      content: code,
    });
  });

  test("every schema type: a value as the grammar lets the model write it reads back as that value (a string among other types is JSON)", async () => {
    // [the parameter's schema, the value, its text as the grammar lays it out]
    const cases: [Record<string, unknown>, unknown, string][] = [
      [{ type: "string" }, 'say "hi"\\n', 'say "hi"\\n'],
      [{ type: "integer" }, -3, "-3"],
      [{ type: "number" }, 1.5, "1.5"],
      [{ type: "boolean" }, false, "false"],
      [{ type: "null" }, null, "null"],
      [{ type: "array", items: { type: "string" } }, ["a", "é\n\u0001"], '["a", "é\\n\\u0001"]'],
      [{ type: "object", properties: {} }, {}, "{}"],
      [
        {
          type: "object",
          properties: { a: { type: "array", items: { type: "object", properties: { b: { type: "null" } } } } },
        },
        { a: [{ b: null }] },
        '{"a": [{"b": null}]}',
      ],
      [{ type: ["string", "null"] }, "hi", '"hi"'],
      [{ type: ["string", "null"] }, "null", '"null"'],
      [{ type: ["string", "null"] }, null, "null"],
      [{ type: ["string", "null"] }, 'a\n"ü"', '"a\\n\\"ü\\""'],
      [{ anyOf: [{ type: "string" }, { type: "integer" }] }, "hi", '"hi"'],
      [{ anyOf: [{ type: "string" }, { type: "integer" }] }, "5", '"5"'],
      [{ anyOf: [{ type: "string" }, { type: "integer" }] }, 5, "5"],
      [{ oneOf: [{ type: "object", properties: { k: { type: "string" } } }, { type: "string" }] }, "s", '"s"'],
      [
        { oneOf: [{ type: "object", properties: { k: { type: "string" } } }, { type: "string" }] },
        { k: "v" },
        '{"k": "v"}',
      ],
      [{ $ref: "#/$defs/point" }, { x: 1 }, '{"x": 1}'],
      [{ properties: { x: { type: "integer" } } }, { x: 2 }, '{"x": 2}'],
      [{ enum: ["null", 7] }, "null", "null"],
      [{ enum: ["null", 7] }, 7, "7"],
    ];
    for (const [schema, value, written] of cases) {
      const f: ToolSpec = {
        name: "f",
        parameters: {
          type: "object",
          properties: { p: schema },
          required: ["p"],
          $defs: { point: { type: "object", properties: { x: { type: "integer" } } } },
        },
      };
      const text = call("f", param("p", written));
      const c = await createToolCallConstraint(lm.tokenizer, qwen3coder.withTools!([f]), [f], {
        required: true,
        parallel: false,
      });
      try {
        const where = `${JSON.stringify(schema)}: ${written}`;
        expect({ where, accepted: c.accepted(lm.tokenizer.encode(text, { addSpecialTokens: false })) }).toEqual({
          where,
          accepted: true,
        });
        expect({ where, read: qwen3coder.withTools!([f]).parse(text).calls[0]!.arguments.p }).toEqual({
          where,
          read: value,
        });
      } finally {
        c.dispose();
      }
    }
  });

  test("required: every finished answer is XML calls to offered functions, with arguments typed and valid", async () => {
    let finished = 0;
    for (let seed = 1; seed <= 6; seed++) {
      const r = await answer([forecast, clock], true, true, seed);
      if (r.finishReason !== "stop") continue;
      finished++;
      expect(r.text).toStartWith("<tool_call>\n<function=");
      expect(r.parsed.content).toBe("");
      expect(r.parsed.calls.length).toBeGreaterThan(0);
      for (const c of r.parsed.calls) {
        const validate = schemas.get(c.name);
        expect(validate).toBeDefined();
        expect({ call: c, valid: validate!(c.arguments) }).toEqual({ call: c, valid: true });
      }
    }
    expect(finished).toBeGreaterThan(0);
  }, 120_000);

  test("a named function, no parallel calls: exactly one call to it", async () => {
    let finished = 0;
    for (let seed = 1; seed <= 4; seed++) {
      const r = await answer([forecast], true, false, seed);
      if (r.finishReason !== "stop") continue;
      finished++;
      expect(r.parsed.calls.map((c) => c.name)).toEqual(["forecast"]);
      expect(schemas.get("forecast")!(r.parsed.calls[0]!.arguments)).toBe(true);
    }
    expect(finished).toBeGreaterThan(0);
  }, 120_000);
});
