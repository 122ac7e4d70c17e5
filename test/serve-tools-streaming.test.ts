// A tool call streams as it is written, through the official clients against a real server on
// loopback: its id and function first, then its arguments in pieces (OpenAI's tool_calls deltas,
// the Responses API's function_call_arguments.delta, Anthropic's input_json_delta) that add up
// to the arguments of the call the same request answers whole; and a call a stop string cuts
// off midway is ended there, not left open, and is not a call to run. Tiny random-weight models
// (SmolLM2's template, so hermes calls): a forced call's long string argument makes a call of
// many tokens. (A forced call is not cut by a stop string: the cut calls are a scripted model's,
// which opens a call on its own; the grammar lays it out.)
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import type { RunningServer } from "../src/server/app";
import { serve } from "./helpers/serve";
import { writeScriptedModel } from "./helpers/scripted-model";
import { writeTinyModel } from "./helpers/tiny-model";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

let server: RunningServer;
let openai: OpenAI;
let anthropic: Anthropic;
let model: string;
/** A model that opens a call at once: tool_choice auto. */
let caller: string;

const parameters = {
  type: "object",
  properties: {
    path: { type: "string", maxLength: 8 },
    text: { type: "string", minLength: 60, maxLength: 70 },
  },
  required: ["path", "text"],
  additionalProperties: false,
};
const description = "Writes a file";
const messages = [{ role: "user" as const, content: "Write a note." }];
// Greedy, so the request streamed writes what the request answered whole wrote.
const sampling = { temperature: 0, max_tokens: 300 };

beforeAll(() => {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-tools-streaming-"));
  process.env.MLX_HOME ??= join(root, "home");
  model = join(root, "tiny");
  writeTinyModel(model, { contextLength: 1024 });
  caller = join(root, "caller");
  writeScriptedModel(caller, ["<tool_call>"]);
  server = serve({ defaultModel: model });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
  anthropic = new Anthropic({ baseURL: server.url, apiKey: "unused" });
});

afterAll(() => server.stop());

const chatRequest = {
  model: "",
  messages,
  tools: [{ type: "function" as const, function: { name: "write_file", description, parameters } }],
  tool_choice: { type: "function" as const, function: { name: "write_file" } },
  parallel_tool_calls: false,
  ...sampling,
};

/**
 * For the cut calls: a path the grammar writes whole, then the scripted model's text, "!!!…" (a
 * token it has no preference after): the stop string "!!!" cuts the call at the text's start.
 */
const cutParameters = { ...parameters, properties: { ...parameters.properties, path: { enum: ["notes.txt"] } } };
const stop = "!!!";

describe("OpenAI chat completions", () => {
  test("a call streams as its id, type and name, then its arguments in pieces that add up to the whole answer's", async () => {
    const request = { ...chatRequest, model };
    const whole = await openai.chat.completions.create(request);
    const [call] = whole.choices[0]!.message.tool_calls as OpenAI.ChatCompletionMessageFunctionToolCall[];
    expect(call!.function.arguments.length).toBeGreaterThan(60);

    const stream = openai.chat.completions.stream(request);
    const pieces: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
    for await (const chunk of stream) pieces.push(...(chunk.choices[0]?.delta.tool_calls ?? []));
    const streamed = await stream.finalChatCompletion();
    // The first piece names the call, with no arguments yet; the others carry arguments alone.
    expect(pieces[0]).toEqual({
      index: 0,
      id: expect.any(String),
      type: "function",
      function: { name: "write_file", arguments: "" },
    });
    const rest = pieces.slice(1);
    expect(rest.length).toBeGreaterThan(1);
    for (const piece of rest) expect(Object.keys(piece).sort()).toEqual(["function", "index"]);
    expect(rest.map((p) => p.function!.arguments).join("")).toBe(call!.function.arguments);
    const [final] = streamed.choices[0]!.message.tool_calls as OpenAI.ChatCompletionMessageFunctionToolCall[];
    expect(final!.id).toBe(pieces[0]!.id!);
    expect(final!.function).toEqual(call!.function);
    expect(streamed.choices[0]!.finish_reason).toBe("tool_calls");
  }, 60_000);

  test("a call a stop string cuts off midway ends where it was cut, not as a call to run (finish_reason stop)", async () => {
    const tools = [{ type: "function" as const, function: { name: "write_file", parameters: cutParameters } }];
    const request = { ...chatRequest, model: caller, tools, tool_choice: "auto" as const };
    const whole = await openai.chat.completions.create(request);
    expect(whole.choices[0]!.finish_reason).toBe("tool_calls");
    const args = (whole.choices[0]!.message.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall).function
      .arguments;
    expect(JSON.parse(args)).toMatchObject({ path: "notes.txt", text: expect.stringContaining(stop) });
    const cut = await openai.chat.completions.create({ ...request, stop });
    expect(cut.choices[0]!.message.tool_calls).toBeUndefined();
    expect(cut.choices[0]!.finish_reason).toBe("stop");

    const stream = openai.chat.completions.stream({ ...request, stop });
    const streamed = await stream.finalChatCompletion();
    const choice = streamed.choices[0]!;
    expect(choice.finish_reason).toBe("stop");
    expect(choice.message.content ?? "").toBe("");
    // The call was announced before the cut: its arguments stop there, a start of the whole call's.
    const [started] = choice.message.tool_calls as OpenAI.ChatCompletionMessageFunctionToolCall[];
    expect(started!.function.name).toBe("write_file");
    expect(started!.function.arguments).toBe(args.slice(0, args.indexOf(stop)));
  }, 60_000);
});

const responsesRequest = {
  model: "",
  input: messages,
  tools: [{ type: "function" as const, name: "write_file", description, parameters, strict: false }],
  tool_choice: { type: "function" as const, name: "write_file" },
  parallel_tool_calls: false,
  temperature: 0,
  max_output_tokens: 300,
};

describe("Responses API", () => {
  test("a function_call item is added first, its arguments arrive as deltas, then done: the streamed response is the whole one", async () => {
    const request = { ...responsesRequest, model };
    const whole = await openai.responses.create(request);
    const call = whole.output.find((item) => item.type === "function_call")!;

    const stream = openai.responses.stream(request);
    const events: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const event of stream) events.push(event);
    const streamed = await stream.finalResponse();
    const types = events
      .map((e): string => e.type)
      .filter((t) => t.includes("output_item") || t.includes("function_call"));
    const deltas = events.filter((e) => e.type === "response.function_call_arguments.delta");
    expect(deltas.length).toBeGreaterThan(1);
    // added (arguments ""), the deltas, done, then the item done.
    expect(types).toEqual([
      "response.output_item.added",
      ...deltas.map(() => "response.function_call_arguments.delta"),
      "response.function_call_arguments.done",
      "response.output_item.done",
    ]);
    const added = events[events.findIndex((e) => e.type === "response.output_item.added")];
    expect(added).toMatchObject({ item: { type: "function_call", name: "write_file", arguments: "" } });
    expect(deltas.map((d) => d.delta).join("")).toBe(call.arguments);
    const { parsed_arguments, ...final } = streamed.output.find((item) => item.type === "function_call")! as {
      parsed_arguments?: unknown;
    } & OpenAI.Responses.ResponseFunctionToolCall;
    expect(parsed_arguments).toBeNull(); // the SDK's, for a strict function
    expect({ ...final, id: "", call_id: "" }).toEqual({ ...call, id: "", call_id: "" });
    expect(streamed.status).toBe("completed");
  }, 60_000);
});

describe("Anthropic Messages", () => {
  const request = () => ({
    model,
    max_tokens: 300,
    temperature: 0,
    messages,
    tools: [{ name: "write_file", description, input_schema: parameters as Anthropic.Tool.InputSchema }],
    tool_choice: { type: "tool" as const, name: "write_file", disable_parallel_tool_use: true },
  });

  test("a tool_use block starts with input {}, its input arrives as input_json_delta pieces: finalMessage is the whole message", async () => {
    const whole = await anthropic.messages.create(request());
    const use = whole.content.find((b) => b.type === "tool_use")!;

    const stream = anthropic.messages.stream(request());
    const events: Anthropic.MessageStreamEvent[] = [];
    stream.on("streamEvent", (e) => events.push(e));
    const streamed = await stream.finalMessage();
    const starts: unknown[] = events.filter((e) => e.type === "content_block_start");
    expect(starts).toEqual([
      {
        type: "content_block_start",
        index: 0,
        content_block: { type: "tool_use", id: expect.any(String), name: "write_file", input: {} },
      },
    ]);
    const pieces = events.flatMap((e) =>
      e.type === "content_block_delta" && e.delta.type === "input_json_delta" ? [e.delta.partial_json] : [],
    );
    expect(pieces.length).toBeGreaterThan(1);
    expect(JSON.parse(pieces.join(""))).toEqual(use.input);
    expect(events.filter((e) => e.type === "content_block_stop")).toHaveLength(1);
    expect(streamed.stop_reason).toBe("tool_use");
    expect(streamed.content.map((b) => ({ ...b, id: "" }))).toEqual(whole.content.map((b) => ({ ...b, id: "" })));
  }, 60_000);

  test("a tool_use a stop sequence cuts off midway is stopped there, stop_reason stop_sequence", async () => {
    const auto = {
      ...request(),
      model: caller,
      tools: [{ name: "write_file", input_schema: cutParameters as Anthropic.Tool.InputSchema }],
      tool_choice: { type: "auto" as const, disable_parallel_tool_use: true },
    };
    const whole = await anthropic.messages.create(auto);
    expect(whole.stop_reason).toBe("tool_use");
    const use = whole.content.find((b) => b.type === "tool_use")! as Anthropic.ToolUseBlock;
    const input = JSON.stringify(use.input);
    expect(input).toStartWith(`{"path":"notes.txt","text":"`);
    expect(input).toContain(stop);
    const stream = anthropic.messages.stream({ ...auto, stop_sequences: [stop] });
    const events: Anthropic.MessageStreamEvent[] = [];
    stream.on("streamEvent", (e) => events.push(e));
    const streamed = await stream.finalMessage();
    expect(streamed.stop_reason).toBe("stop_sequence");
    const starts = events.filter((e) => e.type === "content_block_start");
    const stops = events.filter((e) => e.type === "content_block_stop");
    expect(stops.map((e) => e.index)).toEqual(starts.map((e) => e.index));
    // The block the client was given, as it stood: a start of the whole call's input.
    expect(streamed.content.map((b) => b.type)).toEqual(["tool_use"]);
    const pieces = events.flatMap((e) =>
      e.type === "content_block_delta" && e.delta.type === "input_json_delta" ? [e.delta.partial_json] : [],
    );
    expect(pieces.join("")).toBe(input.slice(0, input.indexOf(stop)));
  }, 60_000);
});
