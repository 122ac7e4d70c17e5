// Tool calls in the engine: which format a chat template speaks, reading calls out of answers
// (whole and streamed), rendering conversations with tools, and the grammar that makes a
// required call valid: on a tiny random-weight model the mask is the only thing that makes the
// answer a call, so every answer that ends must parse and its arguments validate.
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
import { defaultChatTemplate } from "../src/tokenizer/default-templates";
import { initGrammar } from "../src/engine/grammar";
import {
  createToolCallConstraint,
  templateInput,
  toolCallFormats,
  toolTemplate,
  ToolCallStream,
  type ConversationMessage,
  type ToolCallDelta,
  type ToolCallFormat,
  type ToolSpec,
} from "../src/engine/tools";
import { smolTokenizerFiles, writeTinyModel } from "./helpers/tiny-model";
import { parseChatRequest } from "../src/api/openai";
import { parseTemplate, renderTemplate } from "../src/tokenizer/python-jinja";

const { hermes, llama3, mistral, mistralArgs, deepseekV3, phi4mini } = toolCallFormats;
const templates = join(import.meta.dir, "fixtures", "templates");
const hermesTemplate = readFileSync(join(templates, "hermes-tools.jinja"), "utf8");
const llama3Template = readFileSync(join(templates, "llama3-tools.jinja"), "utf8");
const smolTemplate = smolTokenizerFiles().tokenizerConfig.chat_template as string;

const weather: ToolSpec = {
  name: "get_weather",
  description: "The weather in a city",
  parameters: {
    type: "object",
    properties: { city: { type: "string", maxLength: 12 }, unit: { enum: ["celsius", "fahrenheit"] } },
    required: ["city"],
    additionalProperties: false,
  },
};
const search: ToolSpec = {
  name: "search",
  parameters: {
    type: "object",
    properties: {
      query: { type: "string", pattern: "[a-z]{1,8}" },
      limit: { type: "integer", minimum: 1, maximum: 20 },
      exact: { type: "boolean" },
    },
    required: ["query", "limit"],
  },
};
const noArguments: ToolSpec = { name: "now", parameters: {} };

describe("chat templates and formats", () => {
  test("a template's format is recognised; one without tools gets ours", () => {
    expect(toolTemplate(hermesTemplate)).toEqual({ native: true, format: hermes });
    expect(toolTemplate(llama3Template)).toEqual({ native: true, format: llama3 });
    expect(toolTemplate("{% if tools %}{{ tools | tojson }}{% endif %}[TOOL_CALLS]")).toEqual({
      native: true,
      format: mistral,
    });
    expect(toolTemplate(smolTemplate)).toEqual({ native: false, format: hermes });
    expect(toolTemplate(undefined)).toEqual({ native: false, format: hermes });
  });

  test("hermes: prose and calls separated; arguments as text or object; a whole broken block stays prose, a cut one is dropped", () => {
    const answer =
      'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}\n</tool_call>';
    const parsed = hermes.parse(answer);
    expect(parsed.content).toBe("Let me look.");
    expect(parsed.calls.map(({ name, arguments: a }) => ({ name, a }))).toEqual([
      { name: "get_weather", a: { city: "Paris" } },
      { name: "search", a: { query: "x" } },
    ]);
    expect(parsed.calls[0]!.id).toMatch(/^call_[A-Za-z0-9]{24}$/);
    expect(parsed.calls[0]!.id).not.toBe(parsed.calls[1]!.id);
    // A call cut off after its JSON still counts; half a JSON (a stop string cut it) is neither a call nor prose.
    expect(hermes.parse('<tool_call>\n{"name": "now", "arguments": {}}').calls.map((c) => c.name)).toEqual(["now"]);
    expect(hermes.parse('Hi <tool_call>\n{"name": "now", "argu')).toEqual({ content: "Hi", calls: [] });
    expect(hermes.parse("<tool_call>")).toEqual({ content: "", calls: [] });
    // A whole block that is no call stays prose.
    expect(hermes.parse("<tool_call>[1, 2]</tool_call>")).toEqual({
      content: "<tool_call>[1, 2]</tool_call>",
      calls: [],
    });
    // After whole calls, a call the budget cut off (its opening, or half its JSON) is dropped: not prose.
    const call = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>\n';
    for (const stub of ["<tool", "<", '<tool_call>\n{"name": "no'])
      expect(hermes.parse(call + stub)).toMatchObject({ content: "", calls: [{ name: "now" }] });
    expect(hermes.parse(`Let me look.\n${call}<tool`).content).toBe("Let me look.");
    expect(hermes.parse("  plain answer  ")).toEqual({ content: "  plain answer  ", calls: [] });
  });

  test("hermes: a string argument holding the closing tag is the call's, not its end", () => {
    const tricky = { note: "ends with </tool_call> then <tool_call> again", n: 1 };
    const block = (args: unknown) => `<tool_call>\n${JSON.stringify({ name: "save", arguments: args })}\n</tool_call>`;
    const parsed = hermes.parse(`Saving.\n${block(tricky)}\n${block({ n: 2 })}`);
    expect(parsed.content).toBe("Saving.");
    expect(parsed.calls.map((c) => c.arguments)).toEqual([tricky, { n: 2 }]);
    // Cut off before its own closing tag, after the JSON: still the call.
    expect(hermes.parse(block(tricky).slice(0, -"\n</tool_call>".length)).calls.map((c) => c.arguments)).toEqual([
      tricky,
    ]);
  });

  test("llama3: a JSON call, after <|python_tag|> or not, several joined by ';'; anything else is prose", () => {
    const one = llama3.parse(' {"name": "get_weather", "parameters": {"city": "Oslo"}}');
    expect(one.content).toBe("");
    expect(one.calls.map((c) => [c.name, c.arguments])).toEqual([["get_weather", { city: "Oslo" }]]);
    expect(llama3.parse('<|python_tag|>{"name": "now", "parameters": {}}').calls.map((c) => c.name)).toEqual(["now"]);
    expect(
      llama3
        .parse('{"name": "now", "parameters": {}}; {"name": "search", "parameters": {"query": "a"}}')
        .calls.map((c) => c.name),
    ).toEqual(["now", "search"]);
    expect(llama3.parse('{"answer": 42}')).toEqual({ content: '{"answer": 42}', calls: [] });
    // A call cut off (by a stop string or the budget) is neither a call nor prose; cut JSON that opened no call is prose.
    for (const cut of ['{"name": "now", "param', "<|python_tag|>", '<|python_tag|>{"na'])
      expect(llama3.parse(cut)).toEqual({ content: "", calls: [] });
    expect(llama3.parse('{"answer": 4')).toEqual({ content: '{"answer": 4', calls: [] });
    expect(llama3.parse("Oslo is cold.")).toEqual({ content: "Oslo is cold.", calls: [] });
  });

  test("llama3: calls one per line, calls then prose, and whole calls before a cut one are all read, whole and streamed", () => {
    const now = '{"name": "now", "parameters": {}}';
    const oslo = '{"name": "get_weather", "parameters": {"city": "Oslo; {Bergen}"}}';
    const read = (text: string) => {
      const answer = llama3.parse(text);
      return { content: answer.content, calls: answer.calls.map((c) => [c.name, c.arguments]) };
    };
    const cases: [string, ReturnType<typeof read>][] = [
      [
        `${now}\n${oslo}`,
        {
          content: "",
          calls: [
            ["now", {}],
            ["get_weather", { city: "Oslo; {Bergen}" }],
          ],
        },
      ],
      [
        `<|python_tag|>${now};\n${oslo};`,
        {
          content: "",
          calls: [
            ["now", {}],
            ["get_weather", { city: "Oslo; {Bergen}" }],
          ],
        },
      ],
      [`${now}\n\nI asked for the time.`, { content: "I asked for the time.", calls: [["now", {}]] }],
      [`${now}; {"name": "get_weather", "param`, { content: "", calls: [["now", {}]] }],
    ];
    for (const [text, expected] of cases) {
      expect(read(text)).toEqual(expected);
      const s = new ToolCallStream(llama3);
      const shown = [...text].map((c) => s.push(c)).join("");
      const end = s.end();
      expect({ content: shown + end.content, calls: end.calls.map((c) => [c.name, c.arguments]) }).toEqual(expected);
    }
  });

  test("mistral: a list of calls after [TOOL_CALLS] (or bare), with nine-character ids", () => {
    const parsed = mistral.parse(
      '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Rome"}}, {"name": "now", "arguments": {}}]',
    );
    expect(parsed.calls.map((c) => c.name)).toEqual(["get_weather", "now"]);
    expect(parsed.calls[0]!.id).toMatch(/^[A-Za-z0-9]{9}$/);
    expect(mistral.parse('[{"name": "now", "arguments": {}}]').calls).toHaveLength(1);
    expect(mistral.parse("[1, 2, 3]").calls).toEqual([]);
    for (const cut of ["[TOOL_CALLS]", '[TOOL_CALLS] [{"name": "now", "argu'])
      expect(mistral.parse(cut)).toEqual({ content: "", calls: [] });
    expect(mistral.parse("[1, 2")).toEqual({ content: "[1, 2", calls: [] });
  });

  test("mistral v11+ (Mistral Small 3.2, Devstral, Magistral): [TOOL_CALLS]name[ARGS]{...} per call, after prose or not, whole and streamed", () => {
    // The assistant turn of their templates (trimmed): each call as its name, [ARGS], its arguments.
    const template =
      "{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif %}" +
      "{%- for tool in message.tool_calls %}{{- '[TOOL_CALLS]' + tool.function.name + '[ARGS]' + tool.function.arguments | tojson }}{%- endfor %}";
    expect(toolTemplate(template)).toEqual({ native: true, format: mistralArgs });
    const cases: [string, { content: string; calls: [string, Record<string, unknown>][] }][] = [
      ['[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}', { content: "", calls: [["get_weather", { city: "Rome" }]] }],
      [
        'Let me look.[TOOL_CALLS]get_weather[ARGS]{"city": "[ARGS] \\"}"}[TOOL_CALLS]now[ARGS]{}',
        {
          content: "Let me look.",
          calls: [
            ["get_weather", { city: '[ARGS] "}' }],
            ["now", {}],
          ],
        },
      ],
      // Magistral's ids between the name and the arguments.
      [
        '[TOOL_CALLS]now[CALL_ID]a1b2c3d4e[ARGS]{"x": {"y": [1, null]}}',
        { content: "", calls: [["now", { x: { y: [1, null] } }]] },
      ],
      ["[TOOL_CALLS]now[ARGS]{}\nDone.", { content: "Done.", calls: [["now", {}]] }],
      // Cut off by the token budget: the cut call is dropped, the whole ones kept.
      ['Sure.[TOOL_CALLS]now[ARGS]{}[TOOL_CALLS]get_weather[ARGS]{"ci', { content: "Sure.", calls: [["now", {}]] }],
      ["Sure.[TOOL_CALLS]get_wea", { content: "Sure.", calls: [] }],
      ["No calls [here].", { content: "No calls [here].", calls: [] }],
    ];
    for (const [answer, expected] of cases) {
      const parsed = mistralArgs.parse(answer);
      expect({ content: parsed.content, calls: parsed.calls.map((c) => [c.name, c.arguments]) }).toEqual(expected);
      for (const c of parsed.calls) expect(c.id).toMatch(/^[A-Za-z0-9]{9}$/);
      const s = new ToolCallStream(mistralArgs);
      const shown = [...answer].map((c) => s.push(c)).join("");
      const end = s.end();
      expect({ content: shown + end.content, calls: end.calls.map((c) => [c.name, c.arguments]) }).toEqual(expected);
    }
  });

  test("mistral: prose after the list of calls is the content, whole and streamed (the calls were lost with it)", () => {
    const answer = '[TOOL_CALLS] [{"name": "now", "arguments": {}}]\nI asked for the time.';
    const parsed = mistral.parse(answer);
    expect({ content: parsed.content, calls: parsed.calls.map((c) => c.name) }).toEqual({
      content: "I asked for the time.",
      calls: ["now"],
    });
    const s = new ToolCallStream(mistral);
    const shown = [...answer].map((c) => s.push(c)).join("");
    const end = s.end();
    expect({ content: shown + end.content, calls: end.calls.map((c) => c.name) }).toEqual({
      content: "I asked for the time.",
      calls: ["now"],
    });
    // A list cut off after whole calls is still no call.
    expect(mistral.parse('[TOOL_CALLS] [{"name": "now", "arguments": {}}, {"na')).toEqual({ content: "", calls: [] });
  });
});

describe("streaming an answer that may hold calls", () => {
  const stream = (format: ToolCallFormat, pieces: string[]) => {
    const s = new ToolCallStream(format);
    const shown = pieces.map((p) => s.push(p));
    return { shown, end: s.end() };
  };

  test("hermes: prose streams; a marker split across pieces is held; the call comes at the end", () => {
    const { shown, end } = stream(hermes, [
      "Sure",
      ". <tool",
      '_call>\n{"name": "now", ',
      '"arguments": {}}\n</tool_call>',
    ]);
    // The space before the call is held: the answer read whole drops it.
    expect(shown).toEqual(["Sure", ".", "", ""]);
    expect(end.content).toBe("");
    expect(end.calls.map((c) => c.name)).toEqual(["now"]);
  });

  test("hermes: text that only looked like a marker is released", () => {
    const { shown, end } = stream(hermes, ["a <to", "oth> b <", "tool"]);
    expect(shown.join("") + end.content).toBe("a <tooth> b <tool");
    expect(shown).toEqual(["a", " <tooth> b", ""]);
    expect(end.calls).toEqual([]);
  });

  test("hermes: a whole block that is no call is shown as prose at the end; a cut call is not shown", () => {
    const { shown, end } = stream(hermes, ["x <tool_call>", "{oops</tool_call>"]);
    expect(shown).toEqual(["x", ""]);
    expect(end).toEqual({ content: " <tool_call>{oops</tool_call>", calls: [] });
    const cut = stream(hermes, ["x <tool_call>", '\n{"name": "now", "argu']);
    expect(cut.shown).toEqual(["x", ""]);
    expect(cut.end).toEqual({ content: "", calls: [] });
  });

  test("llama3: an answer opening with '{' is held whole; prose streams at once", () => {
    const call = stream(llama3, ["  ", '{"name": "now",', ' "parameters": {}}']);
    expect(call.shown).toEqual(["", "", ""]);
    expect(call.end.calls.map((c) => c.name)).toEqual(["now"]);
    const prose = stream(llama3, ["<|py", "thon is fun", " indeed"]);
    expect(prose.shown).toEqual(["", "<|python is fun", " indeed"]);
    expect(prose.end).toEqual({ content: "", calls: [] });
  });
});

describe("streaming calls as they are written", () => {
  /** `text` pushed `step` characters at a time: the prose shown, the call deltas, and the end. */
  const streamCalls = (format: ToolCallFormat, text: string, step = 3) => {
    const s = new ToolCallStream(format);
    let prose = "";
    const deltas: ToolCallDelta[] = [];
    for (let i = 0; i < text.length; i += step) {
      prose += s.push(text.slice(i, i + step));
      deltas.push(...s.callDeltas());
    }
    const end = s.end();
    deltas.push(...s.callDeltas());
    const starts = deltas.filter((d) => d.type === "start");
    const args = (index: number) =>
      deltas.flatMap((d) => (d.type === "arguments" && d.index === index ? [d.delta] : []));
    const ends = deltas.filter((d) => d.type === "end");
    return { prose, end, deltas, starts, args, ends };
  };
  // As a model may write arguments: spaced, escapes JSON.stringify writes otherwise, an integer
  // past 2^53, a number with a trailing zero.
  const writeText = String.raw`{"path": "a.txt", "text": "one\ntwo \"3\" \u00e9 \ud83d\ude00 \/ \\", "big": 12345678901234567890, "ok": true, "n": 1.50}`;
  // (Not String.raw: Bun writes its non-ASCII characters as \u escapes.)
  const writeJson =
    '{"path":"a.txt","text":"one\\ntwo \\"3\\" é 😀 / \\\\","big":12345678901234567890,"ok":true,"n":1.5}';
  const qwen3coder = toolCallFormats.qwen3coder.withTools!([
    { name: "write", parameters: { type: "object", properties: { path: { type: "string" }, n: { type: "integer" } } } },
  ]);
  const answers: [ToolCallFormat, string, string][] = [
    [
      hermes,
      `Sure.\n<tool_call>\n{"name": "write", "arguments": ${writeText.replaceAll(", ", ",\n ")}}\n</tool_call>`,
      "Sure.",
    ],
    [llama3, `<|python_tag|>{"name": "write", "parameters": ${writeText}}`, ""],
    [mistral, `[TOOL_CALLS] [{"name": "write", "arguments": ${writeText}}]`, ""],
    [mistralArgs, `Sure.[TOOL_CALLS]write[ARGS]${writeText}`, "Sure."],
    [toolCallFormats.harmony, `<|channel|>commentary to=functions.write <|constrain|>json<|message|>${writeText}`, ""],
    [
      toolCallFormats.deepseekV3,
      `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>write\n\`\`\`json\n${writeText}\n\`\`\`<｜tool▁call▁end｜><｜tool▁calls▁end｜>`,
      "",
    ],
    [
      toolCallFormats.deepseekV31,
      `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>write<｜tool▁sep｜>${writeText}<｜tool▁call▁end｜><｜tool▁calls▁end｜>`,
      "",
    ],
    [toolCallFormats.phi4mini, `functools[{"name": "write", "arguments": ${writeText}}]`, ""],
  ];

  test("each family's call: announced once its head is whole, then its arguments in pieces that add up to the call read whole", () => {
    for (const [format, text, prose] of answers) {
      for (const step of [1, 4, 1000]) {
        const { prose: shown, end, starts, args, ends } = streamCalls(format, text, step);
        expect({ format: format.name, shown: shown + end.content }).toEqual({ format: format.name, shown: prose });
        expect(end.calls).toHaveLength(1);
        expect(starts).toEqual([{ type: "start", index: 0, id: end.calls[0]!.id, name: "write" }]);
        expect(args(0).join("")).toBe(writeJson);
        expect(JSON.stringify(end.calls[0]!.arguments)).toBe(writeJson);
        if (step < 1000) expect(args(0).length).toBeGreaterThan(3);
        expect(ends).toEqual([{ type: "end", index: 0, call: end.calls[0], arguments: writeJson }]);
      }
    }
  });

  test("qwen3coder: each parameter goes out once it is whole, typed by its schema", () => {
    const text =
      "<tool_call>\n<function=write>\n<parameter=path>\na.txt\n</parameter>\n<parameter=n>\n5\n</parameter>\n</function>\n</tool_call>";
    const { end, starts, args } = streamCalls(qwen3coder, text, 2);
    expect(starts.map((d) => d.type === "start" && d.name)).toEqual(["write"]);
    expect(args(0)).toEqual(["{", '"path":"a.txt"', ',"n":5', "}"]);
    expect(end.calls[0]!.arguments).toEqual({ path: "a.txt", n: 5 });
  });

  test("two calls stream one after the other; a call whose name follows its arguments comes whole at the end", () => {
    const two = streamCalls(
      hermes,
      '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n{"arguments": {"y": 2}, "name": "b"}\n</tool_call>',
    );
    expect(two.end.calls.map((c) => c.name)).toEqual(["a", "b"]);
    expect(two.deltas.map((d) => `${d.type}${d.index}`)).toEqual([
      "start0",
      ...two.args(0).map(() => "arguments0"),
      "end0",
      "start1",
      "arguments1",
      "end1",
    ]);
    expect(two.args(1)).toEqual(['{"y":2}']);
  });

  test("a call cut off (the token budget, a stop string) ends as it was announced, with no call; so does one whose arguments stop reading", () => {
    const cut = streamCalls(hermes, '<tool_call>\n{"name": "write", "arguments": {"path": "a.t');
    expect(cut.end).toEqual({ content: "", calls: [] });
    expect(cut.args(0).join("")).toBe('{"path":"a.t');
    expect(cut.ends).toEqual([{ type: "end", index: 0, arguments: '{"path":"a.t' }]);
    const broken = streamCalls(hermes, '<tool_call>\n{"name": "write", "arguments": {"path": tru}}\n</tool_call>');
    expect(broken.end.calls).toEqual([]);
    expect(broken.ends).toEqual([{ type: "end", index: 0, arguments: '{"path":' }]);
  });

  test("a key written twice: the pieces are the JSON as written, which reads as the call's arguments", () => {
    const { end, args, ends } = streamCalls(
      hermes,
      '<tool_call>\n{"name": "w", "arguments": {"a": 1, "a": 2}}\n</tool_call>',
    );
    expect(end.calls[0]!.arguments).toEqual({ a: 2 });
    expect(JSON.parse(args(0).join(""))).toEqual({ a: 2 });
    expect(ends).toEqual([{ type: "end", index: 0, call: end.calls[0], arguments: args(0).join("") }]);
  });
});

describe("conversations with tools, as the template gets them", () => {
  const conversation = [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Weather in Paris and Rome?" },
    {
      role: "assistant",
      content: "",
      toolCalls: [
        { id: "call_1", name: "get_weather", arguments: { city: "Paris" } },
        { id: "call_2", name: "get_weather", arguments: { city: "Rome" } },
      ],
    },
    { role: "tool", content: "18C", toolCallId: "call_1", toolName: "get_weather" },
    { role: "tool", content: "24C", toolCallId: "call_2", toolName: "get_weather" },
  ];

  test("a template without tools: functions in the system prompt, calls as <tool_call>, results merged in one user turn", () => {
    const { messages, tools } = templateInput(toolTemplate(smolTemplate), conversation, [weather]);
    expect(tools).toBeUndefined();
    expect(messages.map((m) => m.role)).toEqual(["system", "user", "assistant", "user"]);
    expect(messages[0]!.content).toStartWith("Be brief.\n\n# Tools");
    expect(messages[0]!.content).toContain(JSON.stringify({ type: "function", function: weather }));
    expect(hermes.parse(messages[2]!.content as string).calls.map((c) => c.arguments)).toEqual([
      { city: "Paris" },
      { city: "Rome" },
    ]);
    expect(messages[3]!.content).toBe("<tool_response>\n18C\n</tool_response>\n<tool_response>\n24C\n</tool_response>");
    expect(Object.keys(messages[3]!)).toEqual(["role", "content"]);
    // No tools offered (tool_choice "none"): no tools block, the history still renders.
    expect(templateInput(toolTemplate(smolTemplate), conversation, undefined).messages[0]!.content).toBe("Be brief.");
  });

  test("a user message right after the results joins their turn: Gemma's template, which needs turns to alternate, renders it", () => {
    const followed = [...conversation, { role: "user", content: "And Oslo?" }];
    const { messages } = templateInput(toolTemplate(smolTemplate), followed, [weather]);
    expect(messages.map((m) => m.role)).toEqual(["system", "user", "assistant", "user"]);
    expect(messages[3]!.content).toEndWith("</tool_response>\n\nAnd Oslo?");
    const gemma = defaultChatTemplate("gemma3")!.template;
    const rendered = new Template(gemma).render({ messages, bos_token: "<bos>", add_generation_prompt: true });
    expect(rendered).toContain("</tool_response>\n\nAnd Oslo?<end_of_turn>\n<start_of_turn>model\n");
  });

  test("a template with tools gets them, and the calls and results, in transformers' shapes", () => {
    const { messages, tools } = templateInput(toolTemplate(hermesTemplate), conversation, [weather]);
    expect(tools).toEqual([{ type: "function", function: weather }]);
    expect(messages[2]).toEqual({
      role: "assistant",
      content: "",
      tool_calls: [
        { id: "call_1", type: "function", function: { name: "get_weather", arguments: { city: "Paris" } } },
        { id: "call_2", type: "function", function: { name: "get_weather", arguments: { city: "Rome" } } },
      ],
    });
    expect(messages[3]).toEqual({ role: "tool", content: "18C", tool_call_id: "call_1", name: "get_weather" });
  });

  // transformers (5.x) hands a message's reasoning to templates under both names: Qwen3's and
  // DeepSeek's read reasoning_content, gpt-oss's thinking (its multi-step tool calls' analysis).
  test("a message's reasoning reaches the template as reasoning_content and as thinking", () => {
    const reasoned = [
      { role: "user", content: "Weather in Paris?" },
      { role: "assistant", content: "", reasoning: "Ask the tool.", toolCalls: [conversation[2]!.toolCalls![0]!] },
      { role: "tool", content: "18C", toolCallId: "call_1" },
      { role: "assistant", content: "18C.", reasoning: "It said 18C." },
    ];
    for (const template of [hermesTemplate, smolTemplate]) {
      const assistants = templateInput(toolTemplate(template), reasoned, [weather]).messages.filter(
        (m) => m.role === "assistant",
      );
      expect(assistants.map((m) => [m.reasoning_content, m.thinking])).toEqual([
        ["Ask the tool.", "Ask the tool."],
        ["It said 18C.", "It said 18C."],
      ]);
    }
  });

  test("each rendering is one the model can read back: our calls parse out of the rendered text", () => {
    for (const template of [hermesTemplate, smolTemplate]) {
      const tt = toolTemplate(template);
      const input = templateInput(tt, conversation, [weather]);
      const text: string = new Template(template).render({
        messages: input.messages,
        tools: input.tools ?? null,
        add_generation_prompt: true,
      });
      expect(text).toContain("<tool_call>");
      expect(text).toContain("get_weather");
      expect(hermes.parse(text.slice(text.indexOf("<tool_call>"))).calls.map((c) => c.arguments)).toEqual([
        { city: "Paris" },
        { city: "Rome" },
      ]);
    }
  });
});

describe("integers past 2^53 keep their digits, as in vLLM", () => {
  const digits = "12345678901234567890";
  const call = `<tool_call>\n{"name": "get_weather", "arguments": {"id": ${digits}, "ids": [-9007199254740993, 7]}}\n</tool_call>`;

  test("read from the model's call and written on as JSON", () => {
    const [parsed] = hermes.parse(call).calls;
    expect(JSON.stringify(parsed!.arguments)).toBe(`{"id":${digits},"ids":[-9007199254740993,7]}`);
    // Arguments that are JSON text, and a number in place of the arguments object: not a call.
    expect(JSON.stringify(hermes.parse(call.replace(`${digits}`, `"${digits}"`)).calls[0]!.arguments.id)).toBe(
      `"${digits}"`,
    );
    expect(hermes.parse(`<tool_call>{"name": "now", "arguments": ${digits}}</tool_call>`).calls).toEqual([]);
  });

  test("a client's arguments text reaches the template exact, and renders as the model wrote it", () => {
    const request = parseChatRequest({
      model: "m",
      messages: [
        { role: "user", content: "Weather?" },
        {
          role: "assistant",
          content: null,
          tool_calls: [
            { id: "c1", type: "function", function: { name: "get_weather", arguments: `{"id": ${digits}}` } },
          ],
        },
        { role: "tool", tool_call_id: "c1", content: "18C" },
      ],
    });
    const conversation = (request.prompts[0] as { messages: ConversationMessage[] }).messages;
    const input = templateInput(toolTemplate(hermesTemplate), conversation, [weather]);
    const text = renderTemplate(parseTemplate(hermesTemplate), { messages: input.messages, tools: input.tools });
    expect(text).toContain(`"arguments": {"id": ${digits}}`);
    // The prompt our own tools block writes for a template without tools, too.
    const own = templateInput(toolTemplate(smolTemplate), conversation, [weather]);
    expect(own.messages[2]!.content).toContain(`"arguments": {"id": ${digits}}`);
    // Arguments text that is a number, however large, is not an object.
    expect(() =>
      parseChatRequest({
        model: "m",
        messages: [
          {
            role: "assistant",
            tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: digits } }],
          },
        ],
      }),
    ).toThrow("must be a JSON object written as a string");
  });
});

test("parallel_tool_calls is typed whether or not the request offers tools", () => {
  const messages = [{ role: "user", content: "Hi" }];
  expect(() => parseChatRequest({ model: "m", messages, parallel_tool_calls: "no" })).toThrow(
    "'parallel_tool_calls' must be true or false, got a string",
  );
  expect(parseChatRequest({ model: "m", messages, parallel_tool_calls: false }).tools).toBeUndefined();
});

describe("calls are valid by construction", () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-tools-"));
  let lm: LoadedModel;
  const ajv = new Ajv({ strict: false });
  const schemas = new Map(
    [weather, search, noArguments].map((t) => [
      t.name,
      ajv.compile(Object.keys(t.parameters).length ? t.parameters : { type: "object" }),
    ]),
  );

  beforeAll(async () => {
    const dir = join(root, "tiny");
    writeTinyModel(dir, { contextLength: 1024 });
    lm = loadModel(dir);
    await initGrammar();
  });

  async function answer(format: ToolCallFormat, functions: ToolSpec[], parallel: boolean, seed: number) {
    const constraint = await createToolCallConstraint(lm.tokenizer, format, functions, { required: true, parallel });
    try {
      return await completeAlone(lm, chatTokens(lm.tokenizer, [{ role: "user", content: "Call a function." }]), {
        sampling: { ...defaultSampling, temperature: 1, seed },
        maxTokens: 160,
        processors: [constraint.processor],
      });
    } finally {
      constraint.dispose();
    }
  }

  for (const format of [hermes, llama3, mistral, mistralArgs]) {
    test(`${format.name}, required: every finished answer is calls to offered functions with valid arguments`, async () => {
      let finished = 0;
      for (let seed = 1; seed <= 6; seed++) {
        const r = await answer(format, [weather, search, noArguments], true, seed);
        if (r.finishReason !== "stop") continue;
        finished++;
        const { content, calls } = format.parse(r.text);
        expect(content).toBe("");
        expect(calls.length).toBeGreaterThan(0);
        for (const call of calls) {
          const validate = schemas.get(call.name);
          expect(validate).toBeDefined();
          expect(validate!(call.arguments)).toBe(true);
        }
      }
      expect(finished).toBeGreaterThan(0);
    }, 120_000);
  }

  test("a named function, no parallel calls: exactly one call to it", async () => {
    let finished = 0;
    for (let seed = 1; seed <= 4; seed++) {
      const r = await answer(hermes, [search], false, seed);
      if (r.finishReason !== "stop") continue;
      finished++;
      const { calls } = hermes.parse(r.text);
      expect(calls.map((c) => c.name)).toEqual(["search"]);
      expect(schemas.get("search")!(calls[0]!.arguments)).toBe(true);
    }
    expect(finished).toBeGreaterThan(0);
  }, 120_000);

  // Else the next turn's prompt differs from the answer the model wrote: a different example of
  // the calls it is asked for, and a prompt cache that cannot reuse the answer's tokens.
  test("a template without tools renders the model's calls in the next turn exactly as the grammar made it write them", async () => {
    let finished = 0;
    for (let seed = 1; seed <= 4; seed++) {
      const r = await answer(hermes, [weather, search, noArguments], true, seed);
      if (r.finishReason !== "stop") continue;
      finished++;
      const calls = hermes.parse(r.text).calls;
      const turn = { role: "assistant", content: "", toolCalls: calls };
      const { messages } = templateInput(toolTemplate(smolTemplate), [turn], undefined);
      expect(messages[0]!.content).toBe(r.text.trim());
    }
    expect(finished).toBeGreaterThan(0);
  }, 120_000);

  // A call's arguments are read into JavaScript values and sent on as JSON, which has no
  // Infinity: a number past a double's range (1e400, or 400 digits) came back as null, against
  // the parameter's schema.
  test("every number the call grammar lets through stays a number in the arguments sent on", async () => {
    const f: ToolSpec = {
      name: "f",
      parameters: {
        type: "object",
        properties: { n: { type: "number" }, i: { type: "integer" }, any: {} },
        required: ["n", "i", "any"],
      },
    };
    const formats = [
      hermes,
      llama3,
      mistral,
      mistralArgs,
      deepseekV3,
      phi4mini,
      toolCallFormats.qwen3coder.withTools!([f]),
    ];
    for (const format of formats) {
      const text = (n: string, i: string) => {
        const layout = format.callLayout("f");
        const args = format.xmlParameters
          ? `<parameter=n>\n${n}\n</parameter>\n<parameter=i>\n${i}\n</parameter>\n<parameter=any>\n${n}\n</parameter>\n`
          : `{"n": ${n}, "i": ${i}, "any": ${n}}`;
        return (format.list?.begin ?? "") + layout.begin + args + layout.end + (format.list?.end ?? "");
      };
      const accepted = async (n: string, i: string) => {
        const c = await createToolCallConstraint(lm.tokenizer, format, [f], { required: true, parallel: false });
        try {
          return c.accepted(lm.tokenizer.encode(text(n, i), { addSpecialTokens: false }));
        } finally {
          c.dispose();
        }
      };
      const where = (n: string, i: string) =>
        `${format.name}: n ${n.slice(0, 12)}… (${n.length}), i ${i.slice(0, 12)}… (${i.length})`;
      for (const [n, i] of [
        ["-1.5e99", "12345"],
        [`9${"9".repeat(199)}.5E+99`, `-9${"9".repeat(199)}`],
        ["1e400", "1"],
        ["-1e-400", "1"],
        [`1${"0".repeat(400)}`, "1"],
        ["1", `1${"0".repeat(400)}`],
      ]) {
        if (!(await accepted(n, i))) continue;
        const args = JSON.parse(JSON.stringify(format.parse(text(n, i)).calls[0]!.arguments));
        expect({ at: where(n, i), args }).toEqual({
          at: where(n, i),
          args: { n: expect.any(Number), i: expect.any(Number), any: format.xmlParameters ? n : expect.any(Number) },
        });
      }
      // Numbers as large as JSON readers take are still written.
      expect({ at: format.name, accepted: await accepted("-1.5e99", "12345") }).toEqual({
        at: format.name,
        accepted: true,
      });
    }
  });

  test("a parameter schema constrained decoding cannot enforce is refused, naming the function", async () => {
    const bad: ToolSpec = {
      name: "odd",
      parameters: { type: "object", properties: { n: { type: "integer", multipleOf: 3 } } },
    };
    await expect(
      createToolCallConstraint(lm.tokenizer, hermes, [bad], { required: true, parallel: true }),
    ).rejects.toThrow(/function 'odd' parameters: .*multipleOf/);
  });

  async function autoAnswer(seed: number, constrained: boolean) {
    const constraint = constrained
      ? await createToolCallConstraint(lm.tokenizer, hermes, [weather, search], { required: false, parallel: false })
      : undefined;
    try {
      const processors = [writesAfter(lm, "<tool_call>", 3), ...(constraint ? [constraint.processor] : [])];
      return await completeAlone(lm, chatTokens(lm.tokenizer, [{ role: "user", content: "Hi" }]), {
        sampling: { ...defaultSampling, temperature: 1, seed },
        maxTokens: 120,
        processors,
      });
    } finally {
      constraint?.dispose();
    }
  }

  test("auto: free text first, and once the model opens a call it can only write a valid one", async () => {
    let finished = 0;
    for (let seed = 1; seed <= 4; seed++) {
      const r = await autoAnswer(seed, true);
      expect(r.text).toContain("<tool_call>");
      expect(r.text.indexOf("<tool_call>")).toBeGreaterThan(0); // its own words came first
      if (r.finishReason !== "stop") continue;
      finished++;
      const { calls } = hermes.parse(r.text);
      expect(calls).toHaveLength(1);
      expect(schemas.get(calls[0]!.name)!(calls[0]!.arguments)).toBe(true);
      // No parallel calls: the answer ends with the call.
      expect(r.text.trimEnd()).toEndWith("</tool_call>");
    }
    expect(finished).toBeGreaterThan(0);
    // Without the grammar the same random model never completes a call.
    for (let seed = 1; seed <= 2; seed++) expect(hermes.parse((await autoAnswer(seed, false)).text).calls).toEqual([]);
  }, 120_000);

  test("auto, mistral v11+: prose, then [TOOL_CALLS] opens a call that reads, within the token budget", async () => {
    let finished = 0;
    for (let seed = 1; seed <= 4; seed++) {
      const constraint = await createToolCallConstraint(lm.tokenizer, mistralArgs, [weather, search], {
        required: false,
        parallel: false,
        maxTokens: 100,
      });
      const r = await completeAlone(lm, chatTokens(lm.tokenizer, [{ role: "user", content: "Hi" }]), {
        sampling: { ...defaultSampling, temperature: 1, seed },
        maxTokens: 100,
        processors: [writesAfter(lm, "[TOOL_CALLS]", 3), constraint.processor],
      }).finally(() => constraint.dispose());
      expect(r.text.indexOf("[TOOL_CALLS]")).toBeGreaterThan(0);
      // Even where the budget ran out: once opened, the call was steered to its end in time.
      const { calls } = mistralArgs.parse(r.text);
      expect(calls).toHaveLength(1);
      expect(schemas.get(calls[0]!.name)!(calls[0]!.arguments)).toBe(true);
      if (r.finishReason !== "stop") continue;
      finished++;
      expect(r.text.trimEnd()).toEndWith("}"); // no parallel calls: the answer ends with the call
    }
    expect(finished).toBeGreaterThan(0);
  }, 120_000);
});
