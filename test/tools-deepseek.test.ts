// DeepSeek's tool calls (V3/R1: `function<｜tool▁sep｜>NAME` and a ```json fence; V3.1: `NAME<｜tool▁sep｜>`
// and bare JSON, both inside <｜tool▁calls▁begin｜>…<｜tool▁calls▁end｜>) and Phi-4-mini's
// (functools[...]), read as vLLM's deepseekv3, deepseekv31 and phi4mini parsers read them: whole
// and streamed in random pieces (markers split across them; the streamed answer must be the
// whole one), past calls rendered through the templates, and required calls written by the
// call grammar (on a tiny random-weight model the mask is the only thing that makes the answer a
// call, so every answer that ends must parse and its arguments validate).
import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import { Template } from "@huggingface/jinja";
import { loadModel, type LoadedModel } from "../src/models/load";
import { completeAlone, writesAfter } from "./helpers/generate";
import { defaultSampling } from "../src/engine/sampling";
import { chatTokens } from "../src/engine/prompt";
import { initGrammar } from "../src/engine/grammar";
import {
  createToolCallConstraint,
  templateInput,
  toolCallFormats,
  toolTemplate,
  ToolCallStream,
  type ParsedAnswer,
  type ToolCallFormat,
  type ToolSpec,
} from "../src/engine/tools";
import { writeTinyModel } from "./helpers/tiny-model";
import { smallestCallBudget } from "./helpers/forecast-tools";

const { hermes, deepseekV3, deepseekV31, phi4mini } = toolCallFormats;
const templates = join(import.meta.dir, "fixtures", "templates");
const v3Template = readFileSync(join(templates, "deepseek-v3.jinja"), "utf8");
const v31Template = readFileSync(join(templates, "deepseek-v3.1.jinja"), "utf8");
const phi4Template = readFileSync(join(templates, "phi4-mini.jinja"), "utf8");

const weather: ToolSpec = {
  name: "get_weather",
  description: "The weather in a city",
  parameters: {
    type: "object",
    properties: { city: { type: "string", maxLength: 12 }, days: { type: "integer", minimum: 1, maximum: 7 } },
    required: ["city"],
    additionalProperties: false,
  },
};
const clock: ToolSpec = { name: "now", description: "The time", parameters: {} };

const callsBegin = "<｜tool▁calls▁begin｜>";
const callsEnd = "<｜tool▁calls▁end｜>";
const v3Call = (name: string, args: string) =>
  `<｜tool▁call▁begin｜>function<｜tool▁sep｜>${name}\n\`\`\`json\n${args}\n\`\`\`<｜tool▁call▁end｜>`;
const v31Call = (name: string, args: string) => `<｜tool▁call▁begin｜>${name}<｜tool▁sep｜>${args}<｜tool▁call▁end｜>`;

type Expected = { content: string; calls: [string, Record<string, unknown>][] };
const read = (a: ParsedAnswer): Expected => ({
  content: a.content,
  calls: a.calls.map((c) => [c.name, c.arguments]),
});

/** `text` cut at random places (a fixed seed, so a failure reproduces) and streamed: the prose shown plus the end's, and the calls. */
function streamed(f: ToolCallFormat, text: string, seed: number): Expected {
  let state = seed;
  const random = () => (state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const s = new ToolCallStream(f);
  let shown = "";
  for (let at = 0; at < text.length; ) {
    const n = 1 + Math.floor(random() * 8);
    shown += s.push(text.slice(at, at + n));
    at += n;
  }
  const end = s.end();
  return read({ content: shown + end.content, calls: end.calls });
}

/** Each answer read whole, one character at a time, and in random pieces: the same prose and calls. */
function expectReads(f: ToolCallFormat, cases: [string, Expected][]) {
  for (const [answer, expected] of cases) {
    const parsed = f.parse(answer);
    expect({ answer, read: read(parsed) }).toEqual({ answer, read: expected });
    for (const c of parsed.calls) expect(c.id).toMatch(/^call_[A-Za-z0-9]{24}$/);
    for (const seed of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]) {
      expect({ answer, seed, read: streamed(f, answer, seed) }).toEqual({ answer, seed, read: expected });
    }
    const s = new ToolCallStream(f);
    const shown = [...answer].map((c) => s.push(c)).join("");
    const end = s.end();
    expect({ answer, read: read({ content: shown + end.content, calls: end.calls }) }).toEqual({
      answer,
      read: expected,
    });
  }
}

describe("the formats", () => {
  test("DeepSeek V3/R1's, V3.1's and Phi-4-mini's templates are read in their own formats", () => {
    expect(toolTemplate(v3Template)).toEqual({ native: true, format: deepseekV3 });
    expect(toolTemplate(v31Template)).toEqual({ native: true, format: deepseekV31 });
    expect(toolTemplate(phi4Template)).toEqual({ native: true, format: phi4mini });
    // A template that does not render tools still gets our hermes prompt.
    expect(toolTemplate("{{ messages[0]['content'] }}<｜tool▁calls▁begin｜>")).toEqual({
      native: false,
      format: hermes,
    });
  });

  test("DeepSeek V3/R1: calls with a ```json fence, after prose or not, several, cut", () => {
    expectReads(deepseekV3, [
      [
        `${callsBegin}${v3Call("get_weather", '{"city": "Rome"}')}${callsEnd}`,
        { content: "", calls: [["get_weather", { city: "Rome" }]] },
      ],
      [
        `Let me check.\n\n${callsBegin}${v3Call("get_weather", '{"city": "<｜tool▁call▁end｜> \\"}"}')}\n${v3Call("now", "{}")}${callsEnd}`,
        {
          content: "Let me check.",
          calls: [
            ["get_weather", { city: '<｜tool▁call▁end｜> "}' }],
            ["now", {}],
          ],
        },
      ],
      // Arguments on several lines, as a model may indent them.
      [
        `${callsBegin}${v3Call("get_weather", '{\n  "city": "Oslo",\n  "days": 2\n}')}${callsEnd}`,
        { content: "", calls: [["get_weather", { city: "Oslo", days: 2 }]] },
      ],
      // Cut off by the token budget: the cut call is dropped, the whole ones kept.
      [
        `Sure.${callsBegin}${v3Call("now", "{}")}\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n\`\`\`json\n{"ci`,
        { content: "Sure.", calls: [["now", {}]] },
      ],
      [`Sure.${callsBegin}${v3Call("now", "{}")}<｜tool▁ca`, { content: "Sure.", calls: [["now", {}]] }],
      [`Sure.${callsBegin}<｜tool▁call▁begin｜>func`, { content: "Sure.", calls: [] }],
      // Arguments that are not an object: no call.
      [`${callsBegin}${v3Call("now", "[1]")}${callsEnd}`, { content: "", calls: [] }],
      ["No calls ```json\n{}\n``` here.", { content: "No calls ```json\n{}\n``` here.", calls: [] }],
    ]);
  });

  test("DeepSeek V3.1: bare JSON calls chained with nothing between, after prose or not, prose after, cut", () => {
    expectReads(deepseekV31, [
      [
        `${callsBegin}${v31Call("get_weather", '{"city": "Rome"}')}${callsEnd}`,
        { content: "", calls: [["get_weather", { city: "Rome" }]] },
      ],
      [
        `I will look both up.${callsBegin}${v31Call("get_weather", '{"city": "Paris", "days": 3}')}${v31Call("now", "{}")}${v31Call("get_weather", '{"city": "{[<｜tool▁sep｜>"}')}${callsEnd}`,
        {
          content: "I will look both up.",
          calls: [
            ["get_weather", { city: "Paris", days: 3 }],
            ["now", {}],
            ["get_weather", { city: "{[<｜tool▁sep｜>" }],
          ],
        },
      ],
      [`${callsBegin}${v31Call("now", "{}")}${callsEnd}\nDone.`, { content: "Done.", calls: [["now", {}]] }],
      [
        `${callsBegin}${v31Call("now", "{}")}${v31Call("get_weather", '{"city": "Ro')}`,
        { content: "", calls: [["now", {}]] },
      ],
      [`${callsBegin}${v31Call("now", "{}")}<｜tool▁call▁beg`, { content: "", calls: [["now", {}]] }],
      // Cut within a marker's character: the answer's text ends before it.
      [`${callsBegin}${v31Call("now", "{}")}<｜tool▁calls`, { content: "", calls: [["now", {}]] }],
      [`Hmm.${callsBegin}<｜tool▁call▁begin｜>get_wea`, { content: "Hmm.", calls: [] }],
      // The list's opening cut off by the budget (no call fits) is not prose; a "<" alone is.
      [`Hmm.${callsBegin.slice(0, 4)}`, { content: "Hmm.", calls: [] }],
      ["Is 1 <", { content: "Is 1 <", calls: [] }],
      ["A ｜full-width｜ bar and a ▁ alone.", { content: "A ｜full-width｜ bar and a ▁ alone.", calls: [] }],
    ]);
  });

  test("Phi-4-mini: one functools[...] list of calls, prose around it kept, a cut list dropped", () => {
    expectReads(phi4mini, [
      [
        'functools[{"name": "get_weather", "arguments": {"city": "Rome"}}]',
        { content: "", calls: [["get_weather", { city: "Rome" }]] },
      ],
      [
        'Checking. functools[{"name": "get_weather", "arguments": {"city": "a]b", "days": 1}}, {"name": "now", "parameters": {}}]',
        {
          content: "Checking.",
          calls: [
            ["get_weather", { city: "a]b", days: 1 }],
            ["now", {}],
          ],
        },
      ],
      // Arguments as JSON text, as some answers give them.
      [
        'functools[{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}]',
        { content: "", calls: [["get_weather", { city: "Oslo" }]] },
      ],
      ['Sure. functools[{"name": "now", "argu', { content: "Sure.", calls: [] }],
      ["I use functools[0] and functools.cache.", { content: "I use functools[0] and functools.cache.", calls: [] }],
      ["See functools[1, 2].", { content: "See functools[1, 2].", calls: [] }],
    ]);
  });
});

describe("past calls, rendered through the templates", () => {
  const conversation = [
    { role: "user", content: "Weather in Paris and Rome?" },
    {
      role: "assistant",
      content: "",
      toolCalls: [
        { id: "call_1", name: "get_weather", arguments: { city: "Paris" } },
        { id: "call_2", name: "get_weather", arguments: { city: "Rome", days: 2 } },
      ],
    },
    { role: "tool", content: "18C", toolCallId: "call_1", toolName: "get_weather" },
    { role: "tool", content: "24C", toolCallId: "call_2", toolName: "get_weather" },
  ];

  function render(template: string): string {
    const input = templateInput(toolTemplate(template), conversation, [weather, clock]);
    return new Template(template).render({ ...input, bos_token: "<bos>", add_generation_prompt: true });
  }

  test("DeepSeek V3.1: as the model writes them (the template takes arguments as JSON text)", () => {
    const rendered = render(v31Template);
    const calls = `${callsBegin}${v31Call("get_weather", '{"city": "Paris"}')}${v31Call("get_weather", '{"city": "Rome", "days": 2}')}${callsEnd}`;
    expect(rendered).toContain(`<｜Assistant｜></think>${calls}<｜end▁of▁sentence｜>`);
    expect(rendered).toContain("<｜tool▁output▁begin｜>18C<｜tool▁output▁end｜><｜tool▁output▁begin｜>24C");
    expect(rendered).toContain("### get_weather\nDescription: The weather in a city");
    expect(read(deepseekV31.parse(calls)).calls).toEqual([
      ["get_weather", { city: "Paris" }],
      ["get_weather", { city: "Rome", days: 2 }],
    ]);
  });

  test("DeepSeek V3/R1: each call fenced, one a line", () => {
    const rendered = render(v3Template);
    const calls = `${callsBegin}${v3Call("get_weather", '{"city": "Paris"}')}\n${v3Call("get_weather", '{"city": "Rome", "days": 2}')}${callsEnd}`;
    expect(rendered).toContain(calls);
    expect(read(deepseekV3.parse(calls)).calls).toHaveLength(2);
  });

  test("Phi-4-mini: one functools list", () => {
    const rendered = render(phi4Template);
    expect(rendered).toContain("Available functions as JSON spec:");
    const at = rendered.lastIndexOf("functools[{");
    const calls = phi4mini.parse(rendered.slice(at, rendered.indexOf("<|end|>", at)));
    expect(read(calls)).toEqual({
      content: "",
      calls: [
        ["get_weather", { city: "Paris" }],
        ["get_weather", { city: "Rome", days: 2 }],
      ],
    });
  });
});

describe("calls are valid by construction", () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-tools-deepseek-"));
  let lm: LoadedModel;
  const ajv = new Ajv({ strict: false });
  const schemas = new Map([
    [weather.name, ajv.compile(weather.parameters)],
    [clock.name, ajv.compile({ type: "object" })],
  ]);

  beforeAll(async () => {
    const dir = join(root, "tiny");
    writeTinyModel(dir, { contextLength: 1024 });
    lm = loadModel(dir);
    await initGrammar();
  });

  // With a token budget, as the server passes one (the budget steering once masked every token on
  // DeepSeek's layout, and the sampled token failed the grammar): calls the budget would cut close in time.
  for (const format of [deepseekV3, deepseekV31, phi4mini])
    test(`${format.name}, required, parallel, with a token budget: every answer is calls in the layout, with valid arguments`, async () => {
      let finished = 0;
      for (let seed = 1; seed <= 6; seed++) {
        const constraint = await createToolCallConstraint(lm.tokenizer, format, [weather, clock], {
          required: true,
          parallel: true,
          maxTokens: 200,
        });
        const r = await completeAlone(lm, chatTokens(lm.tokenizer, [{ role: "user", content: "Call a function." }]), {
          sampling: { ...defaultSampling, temperature: 1, seed },
          maxTokens: 200,
          processors: [constraint.processor],
        }).finally(() => constraint.dispose());
        expect(r.text).toStartWith(format.list!.begin);
        const { content, calls } = format.parse(r.text);
        expect({ text: r.text, content }).toEqual({ text: r.text, content: "" });
        for (const call of calls) expect(schemas.get(call.name)!(call.arguments)).toBe(true);
        expect(calls.length).toBeGreaterThan(0);
        expect(r.text.trimEnd()).toEndWith(format.list!.end);
        if (r.finishReason === "stop") finished++;
      }
      expect(finished).toBeGreaterThan(0);
    }, 120_000);

  test("the grammar takes the calls as the templates write them: several when parallel, one else", async () => {
    const answers: [ToolCallFormat, string, string][] = [
      [
        deepseekV3,
        `${callsBegin}${v3Call("now", "{}")}${callsEnd}`,
        `${callsBegin}${v3Call("get_weather", '{"city": "Oslo", "days": 2}')}\n${v3Call("now", "{}")}${callsEnd}`,
      ],
      [
        deepseekV31,
        `${callsBegin}${v31Call("now", "{}")}${callsEnd}`,
        `${callsBegin}${v31Call("get_weather", '{"city": "Oslo", "days": 2}')}${v31Call("now", "{}")}${callsEnd}`,
      ],
      [
        phi4mini,
        'functools[{"name": "now", "arguments": {}}]',
        'functools[{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}, {"name": "now", "arguments": {}}]',
      ],
    ];
    // A constraint follows one answer: a fresh one for each.
    async function accepts(format: ToolCallFormat, parallel: boolean, text: string): Promise<boolean> {
      const constraint = await createToolCallConstraint(lm.tokenizer, format, [weather, clock], {
        required: true,
        parallel,
      });
      try {
        return constraint.accepted(lm.tokenizer.encode(text, { addSpecialTokens: false }));
      } finally {
        constraint.dispose();
      }
    }
    for (const [format, one, two] of answers) {
      for (const parallel of [true, false])
        expect({
          format: format.name,
          parallel,
          one: await accepts(format, parallel, one),
          two: await accepts(format, parallel, two),
        }).toEqual({ format: format.name, parallel, one: true, two: parallel });
      // Not a call to an offered function, or arguments its schema refuses.
      expect(await accepts(format, true, one.replace("now", "then"))).toBe(false);
      expect(await accepts(format, true, two.replace('"days": 2', '"days": 9'))).toBe(false);
    }
  });

  // Steered like the other layouts, though SmolLM2's byte-level BPE cuts each ｜ and ▁ of the
  // markers between tokens: a call the budget would cut closes in time (it was dropped).
  for (const format of [deepseekV3, deepseekV31])
    test(`${format.name}: a call closes within a tight token budget, its arguments valid: required, or opened in free text`, async () => {
      const minimum = await smallestCallBudget(lm.tokenizer, format, [weather]);
      for (const required of [true, false]) {
        for (const extra of [0, 5, 30, 90]) {
          for (const seed of [1, 2]) {
            // Not required: the model's own words, then the list it opens.
            const maxTokens = minimum + extra + (required ? 0 : 8);
            const constraint = await createToolCallConstraint(lm.tokenizer, format, [weather], {
              required,
              parallel: true,
              maxTokens,
            });
            const r = await completeAlone(
              lm,
              chatTokens(lm.tokenizer, [{ role: "user", content: "Call a function." }]),
              {
                sampling: { ...defaultSampling, temperature: 1, seed },
                maxTokens,
                processors: required ? [constraint.processor] : [writesAfter(lm, callsBegin, 3), constraint.processor],
              },
            );
            const accepted = constraint.accepted(r.tokenIds);
            constraint.dispose();
            const where = `required ${required}, max_tokens ${maxTokens}, seed ${seed}, ${r.finishReason}: ${r.text}`;
            const { calls } = format.parse(r.text);
            if (calls.length === 0 || !accepted) throw new Error(`no whole call (${where})`);
            for (const call of calls)
              expect({ where, valid: schemas.get(call.name)!(call.arguments) }).toEqual({ where, valid: true });
            expect(r.text.trimEnd()).toEndWith(callsEnd);
            expect(r.tokenIds.length).toBeLessThanOrEqual(maxTokens);
          }
        }
      }
    }, 120_000);

  test("deepseek-v31, auto: prose, then <｜tool▁calls▁begin｜> opens a call that reads, one call and the list closed", async () => {
    let finished = 0;
    for (let seed = 1; seed <= 4; seed++) {
      const constraint = await createToolCallConstraint(lm.tokenizer, deepseekV31, [weather, clock], {
        required: false,
        parallel: false,
        maxTokens: 160,
      });
      const r = await completeAlone(lm, chatTokens(lm.tokenizer, [{ role: "user", content: "Hi" }]), {
        sampling: { ...defaultSampling, temperature: 1, seed },
        maxTokens: 160,
        processors: [writesAfter(lm, callsBegin, 3), constraint.processor],
      }).finally(() => constraint.dispose());
      expect(r.text.indexOf(callsBegin)).toBeGreaterThan(0);
      const { calls } = deepseekV31.parse(r.text);
      expect(calls).toHaveLength(1);
      expect(schemas.get(calls[0]!.name)!(calls[0]!.arguments)).toBe(true);
      if (r.finishReason !== "stop") continue;
      finished++;
      // No parallel calls: the answer ends with the list closed after its one call.
      expect(r.text.trimEnd()).toEndWith(`<｜tool▁call▁end｜>${callsEnd}`);
    }
    expect(finished).toBeGreaterThan(0);
  }, 120_000);
});
