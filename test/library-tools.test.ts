// Tool calls through the library, as the ollama and OpenAI libraries' users write them: tools
// offered to generate(), stream() and a chat's turns, the calls read back structured (never in
// the text, whole or streamed; their arguments streamed as they are written to onToolCallDelta),
// their results sent back as messages for the next answer; bad tools refused as
// InvalidParameterErrors naming the option. Tiny models written by the test: a required call is
// valid only because the grammar makes it so; a scripted one writes prose, then a call.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import { load, type GenerateOptions, type Message, type Model, type Tool, type ToolCallDelta } from "../src/index";
import { forecastParameters, forecastTools } from "./helpers/forecast-tools";
import { errorOf } from "./helpers/library";
import { writeScriptedModel } from "./helpers/scripted-model";
import { writeTinyModel } from "./helpers/tiny-model";

const root = mkdtempSync(join(tmpdir(), "mlx-library-tools-"));
process.env.MLX_HOME ??= join(root, "home");

/** SmolLM2's template, which has no tools: they are described in the system prompt, calls are hermes' <tool_call>. */
let tiny: Model;
/** Writes "Sure.", a blank line, then opens a call (the grammar lays it out). */
let scripted: Model;
// The server tests' tools, in the OpenAI library's shape (its type also has custom tools, which this has not).
const tools = forecastTools as Tool[];
const validForecast = new Ajv().compile(forecastParameters);
const clock: Tool[] = [
  {
    type: "function",
    function: { name: "now", parameters: { type: "object", properties: {}, additionalProperties: false } },
  },
];

beforeAll(async () => {
  writeTinyModel(join(root, "tiny"), { contextLength: 1024 });
  writeScriptedModel(join(root, "scripted"), ["Sure", ".", "\n\n", "<tool_call>"]);
  tiny = await load(join(root, "tiny"));
  scripted = await load(join(root, "scripted"));
});
afterAll(() => {
  tiny?.close();
  scripted?.close();
});

describe("tool calls in the library", () => {
  test("a required call comes back structured, its arguments valid, none of it in the text", async () => {
    const result = await tiny.generate("What will the weather be in Oslo?", {
      tools,
      toolChoice: { name: "forecast" },
      maxTokens: 80,
    });
    expect(result.toolCalls).toHaveLength(1);
    const [call] = result.toolCalls;
    expect(call!.name).toBe("forecast");
    expect(typeof call!.id).toBe("string");
    expect(validForecast(call!.arguments)).toBe(true);
    expect(result.text).not.toContain("<tool_call>");
    // Without tools, a result has no calls.
    expect((await tiny.generate("Hi", { maxTokens: 2 })).toolCalls).toEqual([]);
  }, 120_000);

  test("streamed, the prose before a call is the text, the call is in the result, never a piece", async () => {
    const options: GenerateOptions = { tools: clock, maxTokens: 60, temperature: 0 };
    const whole = await scripted.generate("What time is it?", options);
    expect(whole.text).toBe("Sure.");
    expect(whole.toolCalls.length).toBeGreaterThan(0);
    expect(whole.toolCalls.every((c) => c.name === "now")).toBe(true);
    const stream = scripted.stream("What time is it?", options);
    const pieces: string[] = [];
    let step = await stream.next();
    for (; !step.done; step = await stream.next()) pieces.push(step.value);
    expect(pieces.join("")).toBe("Sure.");
    expect(pieces.some((p) => p.includes("<tool_call>") || p.includes("now"))).toBe(false);
    expect(step.value.toolCalls.map(({ name, arguments: args }) => ({ name, args }))).toEqual(
      whole.toolCalls.map(({ name, arguments: args }) => ({ name, args })),
    );
    // A for-await loop never sees the return value: onToolCall gives it the calls, before the loop ends.
    const heard: string[] = [];
    let text = "";
    for await (const piece of scripted.stream("What time is it?", {
      ...options,
      onToolCall: (c) => heard.push(c.name),
    }))
      text += piece;
    expect(text).toBe("Sure.");
    expect(heard).toEqual(whole.toolCalls.map((c) => c.name));
  }, 120_000);

  test("a call and its result sent back as messages are in the next prompt, and the answer goes on", async () => {
    const ask: Message[] = [{ role: "user", content: "What will the weather be in Oslo?" }];
    const first = await tiny.generate(ask, { tools, toolChoice: "required", maxTokens: 80 });
    expect(first.toolCalls.length).toBeGreaterThan(0);
    const messages: Message[] = [
      ...ask,
      { role: "assistant", content: first.text, toolCalls: first.toolCalls },
      ...first.toolCalls.map((call) => ({ role: "tool" as const, toolCallId: call.id, content: "Sunny, 21 C" })),
    ];
    const next = await tiny.generate(messages, { tools, toolChoice: "none", maxTokens: 3 });
    expect(next.finishReason).toBe("length");
    const prompt = tiny.detokenize(next.promptTokenIds);
    expect(prompt).toContain("<tool_response>\nSunny, 21 C\n</tool_response>");
    expect(prompt).toContain(`"name": "${first.toolCalls[0]!.name}"`);
  }, 120_000);

  test("bad tools, a bad choice and tools where they cannot go are InvalidParameterErrors naming the option", async () => {
    const bad = (o: object) => o as GenerateOptions;
    const cases: [object, RegExp][] = [
      [{ tools: "forecast" }, /^tools: tools must be a list of functions/],
      [{ tools: [{ type: "function", function: { name: "bad name" } }] }, /^tools\.0\.function\.name: /],
      [{ tools: [tools[0], tools[0]] }, /repeats the function name 'forecast'/],
      [{ tools, toolChoice: { name: "nope" } }, /^toolChoice\.name: /],
      [{ toolChoice: "required" }, /^toolChoice: /],
      [{ tools, toolChoice: "sometimes" }, /^toolChoice: 'toolChoice' must be one of none, auto, required/],
      [{ tools, raw: true }, /^raw: tools go through the chat template/],
      [{ tools, onToolCall: "log" }, /^onToolCall: onToolCall must be a function$/],
      // The call's grammar took the format's place: the format went unheeded.
      [
        { tools, toolChoice: "required", format: "json" },
        /^format: format cannot be combined with a toolChoice that requires a call$/,
      ],
      [{ tools, toolChoice: { name: "clock" }, format: "json" }, /^format: format cannot be combined/],
    ];
    for (const [options, expected] of cases)
      expect(await errorOf(() => tiny.generate("Hi", bad({ maxTokens: 2, ...options })))).toMatch(expected);
    // A chat's turn reads its tools as generate() does; what it says is a text, or user and tool messages.
    const chat = tiny.chat();
    expect(await errorOf(() => chat.send("Hi", bad({ tools: "forecast" })))).toMatch(
      /^tools: tools must be a list of functions/,
    );
    expect(await errorOf(() => chat.send("Hi", bad({ tools, toolChoice: "required", format: "json" })))).toMatch(
      /^format: format cannot be combined/,
    );
    expect(await errorOf(() => chat.send("Hi", bad({ onToolCallDelta: 1 })))).toBe(
      "onToolCallDelta: onToolCallDelta must be a function",
    );
    expect(await errorOf(() => chat.send(7 as never))).toMatch(/^input: a chat's turn is a string or a list/);
    expect(await errorOf(() => chat.send([]))).toBe("input: the turn has no messages");
    expect(await errorOf(() => chat.send([{ role: "assistant", content: "Hi" }]))).toMatch(
      /^input: message 0: a chat's turn takes user and tool messages/,
    );
    expect(await errorOf(() => chat.send([{ role: "tool", content: "x", toolCallId: 5 as never }]))).toBe(
      "input: message 0: toolCallId must be a string",
    );
    expect(chat.messages).toEqual([]);
    // Calls only on an assistant's message, in the shape a result gives them.
    const call = { id: "c1", name: "forecast", arguments: { city: "Oslo", days: 1 } };
    const messages = (m: object) => [{ role: "user", content: "Hi" }, m] as Message[];
    expect(await errorOf(() => tiny.generate(messages({ role: "user", content: "", toolCalls: [call] })))).toBe(
      "prompt: message 1: only an assistant's message has toolCalls",
    );
    expect(
      await errorOf(() =>
        tiny.generate(messages({ role: "assistant", content: "", toolCalls: [{ ...call, arguments: "{}" }] })),
      ),
    ).toMatch(/^prompt: message 1: toolCalls must be a list of/);
    expect(await errorOf(() => tiny.generate(messages({ role: "tool", content: "x", toolCallId: 5 })))).toBe(
      "prompt: message 1: toolCallId must be a string",
    );
    // Ollama's images, or a misspelt tool_call_id, were dropped without a word.
    for (const key of ["images", "tool_call_id"])
      expect(await errorOf(() => tiny.generate(messages({ role: "tool", content: "x", [key]: ["a"] })))).toBe(
        `prompt: message 1: unknown field ${key} (a message has role, content, toolCalls, toolCallId, toolName)`,
      );
  }, 120_000);

  test("a chat's turn takes tools: its calls are kept with its answer, their results are the next turn, on the kept cache", async () => {
    const chat = tiny.chat();
    const heard: string[] = [];
    const deltas: ToolCallDelta[] = [];
    const asked = await chat.send("What will the weather be in Oslo?", {
      tools,
      toolChoice: { name: "forecast" },
      maxTokens: 80,
      onToolCall: (call) => heard.push(call.name),
      onToolCallDelta: (delta) => deltas.push(delta),
    });
    expect(asked.toolCalls).toHaveLength(1);
    const [call] = asked.toolCalls;
    expect(validForecast(call!.arguments)).toBe(true);
    expect(heard).toEqual(["forecast"]);
    expect(deltas.at(-1)).toEqual({ type: "end", index: 0, call, arguments: expect.any(String) });
    expect(chat.messages).toEqual([
      { role: "user", content: "What will the weather be in Oslo?" },
      { role: "assistant", content: asked.text, toolCalls: asked.toolCalls },
    ]);
    // The history keeps calls of its own: changing the result's changes no turn (they were one array).
    const kept = structuredClone(chat.messages[1]);
    asked.toolCalls[0]!.arguments.days = 99;
    asked.toolCalls.push({ ...call!, id: "another" });
    expect(chat.messages[1]).toEqual(kept!);
    // The call's result, as generate()'s messages give it: the next turn's prompt has the call and the result.
    const result: Message = { role: "tool", toolCallId: call!.id, content: "Sunny, 21 C" };
    const next = await chat.send([result], { tools, maxTokens: 3 });
    const prompt = tiny.detokenize(next.promptTokenIds);
    expect(prompt).toContain("<tool_response>\nSunny, 21 C\n</tool_response>");
    expect(prompt).toContain(`"name": "forecast"`);
    expect(next.stats.cachedTokens).toBeGreaterThan(0);
    expect(chat.messages.slice(2)).toEqual([
      result,
      { role: "assistant", content: next.text, ...(next.toolCalls.length > 0 && { toolCalls: next.toolCalls }) },
    ]);
    chat.close();
  }, 120_000);

  test("streamed, a call is announced and its arguments come in pieces as they are written, adding up to the call", async () => {
    for (const stream of [true, false]) {
      const deltas: ToolCallDelta[] = [];
      const options: GenerateOptions = {
        tools,
        toolChoice: { name: "forecast" },
        maxTokens: 80,
        onToolCallDelta: (delta) => deltas.push(delta),
      };
      let result;
      if (stream) {
        const pieces = tiny.stream("What will the weather be in Oslo?", options);
        let step = await pieces.next();
        while (!step.done) step = await pieces.next();
        result = step.value;
      } else result = await tiny.generate("What will the weather be in Oslo?", options);
      const [call] = result.toolCalls;
      expect(deltas[0]).toEqual({ type: "start", index: 0, id: call!.id, name: "forecast" });
      const pieces = deltas.filter((d) => d.type === "arguments").map((d) => d.delta);
      // Read whole at the end, a call's arguments would be one piece.
      expect(pieces.length).toBeGreaterThan(1);
      expect(JSON.parse(pieces.join(""))).toEqual(call!.arguments);
      expect(deltas.at(-1)).toEqual({ type: "end", index: 0, call, arguments: pieces.join("") });
      expect(deltas.filter((d) => d.type === "start" || d.type === "end")).toHaveLength(2);
    }
  }, 120_000);

  test("a turn of tool results that fills the context keeps the question and the calls they answer", async () => {
    const chat = tiny.chat();
    const filler = (n: number) => " apple".repeat(n); // a token each
    await chat.send(`Hello${filler(100)}`, { maxTokens: 1 });
    const asked = await chat.send(`Weather in Oslo?${filler(300)}`, {
      tools,
      toolChoice: { name: "forecast" },
      maxTokens: 80,
    });
    expect(asked.toolCalls).toHaveLength(1);
    // Past the context (1,024 tokens): the oldest turns go, down to half of it, but not this turn's exchange.
    const results = asked.toolCalls.map(
      (call): Message => ({
        role: "tool",
        toolCallId: call.id,
        content: `Sunny${filler(300)}`,
      }),
    );
    const answer = await chat.send(results, { tools, maxTokens: 8 });
    expect(chat.messages.map((m) => m.role)).toEqual(["user", "assistant", "tool", "assistant"]);
    expect(chat.messages[1]!.toolCalls).toEqual(asked.toolCalls);
    expect(tiny.detokenize(answer.promptTokenIds)).toContain("Weather in Oslo?");
    chat.close();
  }, 120_000);
});
