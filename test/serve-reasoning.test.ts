// Reasoning split from the answer, once in the engine, for every API family and the CLI. The
// splitter on its own over awkwardly cut pieces; then a tiny random-weight qwen3 whose chat
// template opens <think> itself (and closes it at once with enable_thinking false), so its
// reasoning is deterministic: greedy gibberish inside the tags until the thinking budget
// forces </think>, then the answer. Official clients against a real server on loopback.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import Anthropic from "@anthropic-ai/sdk";
import { Ollama } from "ollama";
import OpenAI from "openai";
import { ReasoningSplitter } from "../src/engine/reasoning";
import type { RunningServer } from "../src/server/app";
import { cliRunner } from "./helpers/cli";
import { post, serve } from "./helpers/serve";
import { forecastTools } from "./helpers/forecast-tools";
import { writeScriptedModel } from "./helpers/scripted-model";
import { writeTinyModel } from "./helpers/tiny-model";

/** Qwen3-style: `enable_thinking` false writes an empty reasoning; otherwise the prompt opens <think>. */
const thinkingTemplate =
  "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}" +
  "{%- if add_generation_prompt %}<|im_start|>assistant\n" +
  "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- else %}<think>\n{%- endif %}{%- endif %}";

/** DeepSeek-R1-style: the prompt always opens <think>, with no switch to turn it off. */
const alwaysThinkingTemplate =
  "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}" +
  "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{%- endif %}";

/** Qwen3's own template (the hybrid models': the model opens <think> itself, `enable_thinking` false closes it at once). */
const qwen3Template = readFileSync(join(import.meta.dir, "fixtures", "templates", "qwen3.jinja"), "utf8");

/** Qwen3's template as its Thinking-2507 models ship it: the prompt opens <think> (no switch). */
const qwen3ThinkingTemplate = qwen3Template.replace(
  /\{%- if add_generation_prompt %\}[\s\S]*$/,
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}",
);

/** A function that takes nothing, so a call the grammar lays out is short. */
const nowTool = {
  type: "function" as const,
  function: { name: "now", parameters: { type: "object", properties: {}, additionalProperties: false } },
};

function split(pieces: string[], startsInside: boolean) {
  const s = new ReasoningSplitter(startsInside);
  const out = { text: "", reasoning: "" };
  for (const piece of [...pieces.map((p) => s.push(p)), s.flush()]) {
    out.text += piece.text;
    out.reasoning += piece.reasoning;
  }
  return out;
}

describe("ReasoningSplitter", () => {
  test("tags cut across pieces, whitespace around them dropped", () => {
    expect(split(["<th", "ink>\nI should", " say hi.\n</thi", "nk>\n\nHello", "!"], false)).toEqual({
      reasoning: "I should say hi.\n",
      text: "Hello!",
    });
  });
  test("reasoning the prompt opened; no tags at all; a <think> later in the answer is text", () => {
    expect(split(["first ", "this</think>", "then that"], true)).toEqual({
      reasoning: "first this",
      text: "then that",
    });
    expect(split(["just ", "an answer"], false)).toEqual({ reasoning: "", text: "just an answer" });
    expect(split(["a <think> b"], false)).toEqual({ reasoning: "", text: "a <think> b" });
  });
  test("an unclosed reasoning is all reasoning, less a </think> the end cut off; a held-back <think> start is text", () => {
    expect(split(["<think>still going </thi"], false)).toEqual({ reasoning: "still going ", text: "" });
    expect(split(["still going", " <", "/"], true)).toEqual({ reasoning: "still going ", text: "" });
    expect(split(["<thi"], false)).toEqual({ reasoning: "", text: "<thi" });
  });
});

let server: RunningServer;
let model: string;
let plainModel: string;
let home: string;
let openai: OpenAI;
const hi = [{ role: "user" as const, content: "Hi" }];

beforeAll(() => {
  const root = mkdtempSync(join(tmpdir(), "mlx-reasoning-"));
  home = join(root, "home");
  process.env.MLX_HOME ??= home;
  model = join(root, "thinker");
  writeTinyModel(model, { modelType: "qwen3", contextLength: 512, chatTemplate: thinkingTemplate });
  plainModel = join(root, "plain");
  writeTinyModel(plainModel, { contextLength: 512 });
  server = serve({ defaultModel: model, maxLoadedModels: 2 });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});

afterAll(() => server.stop());

describe("OpenAI chat", () => {
  test("reasoning_content apart from content; the budget closes the reasoning; the stream says the same", async () => {
    const body = { model, messages: hi, max_tokens: 24, temperature: 0, thinking_budget: 4 };
    const r = await post(`${server.url}/v1/chat/completions`, body);
    expect(r.status).toBe(200);
    const message = r.json.choices[0].message;
    expect(message.reasoning_content.length).toBeGreaterThan(0);
    expect(message.content.length).toBeGreaterThan(0);
    for (const text of [message.content, message.reasoning_content]) expect(text).not.toContain("think>");
    const reasoningTokens = r.json.usage.completion_tokens_details.reasoning_tokens;
    expect(reasoningTokens).toBeGreaterThanOrEqual(4);
    expect(reasoningTokens).toBeLessThan(r.json.usage.completion_tokens);

    let reasoning = "";
    let content = "";
    const stream = await openai.chat.completions.create({ ...body, stream: true } as never);
    for await (const chunk of stream as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>) {
      const delta = chunk.choices[0]?.delta as { content?: string; reasoning_content?: string } | undefined;
      reasoning += delta?.reasoning_content ?? "";
      content += delta?.content ?? "";
    }
    expect({ reasoning, content }).toEqual({ reasoning: message.reasoning_content, content: message.content });
  });

  test("a required call switches thinking off where the template can: the call is a call, not reasoning", async () => {
    const body = {
      model,
      messages: hi,
      tools: forecastTools,
      tool_choice: "required" as const,
      parallel_tool_calls: false,
      max_tokens: 60,
      temperature: 0,
    };
    // A thinking budget too (its forced </think> and the call's grammar once made a 500).
    for (const extra of [{}, { thinking_budget: 3 }]) {
      const r = await openai.chat.completions.create({ ...body, ...extra } as never);
      const choice = (r as OpenAI.ChatCompletion).choices[0]!;
      expect(choice.finish_reason).toBe("tool_calls");
      expect(choice.message.tool_calls).toHaveLength(1);
      expect((choice.message as { reasoning_content?: string }).reasoning_content).toBeUndefined();
    }
    let calls = 0;
    let reasoning = "";
    for await (const chunk of await openai.chat.completions.create({ ...body, stream: true })) {
      // A call's first delta carries its id; its arguments follow in more.
      calls += chunk.choices[0]?.delta.tool_calls?.filter((c) => c.id).length ?? 0;
      reasoning += (chunk.choices[0]?.delta as { reasoning_content?: string } | undefined)?.reasoning_content ?? "";
    }
    expect({ calls, reasoning }).toEqual({ calls: 1, reasoning: "" });
    // Anthropic's count_tokens renders the prompt as such a request does (thinking off).
    const client = new Anthropic({ baseURL: server.url, apiKey: "unused", maxRetries: 0 });
    const tools = [{ name: "clock", input_schema: { type: "object" as const, properties: {} } }];
    const asked = { model, messages: hi, tools, tool_choice: { type: "any" as const } };
    const answer = await client.messages.create({ ...asked, max_tokens: 40 });
    expect(answer.content.map((b) => b.type)).toEqual(["tool_use"]);
    const counted = await client.messages.countTokens(asked);
    expect(counted.input_tokens).toBe(answer.usage.input_tokens + (answer.usage.cache_read_input_tokens ?? 0));
  });

  test("a template that always thinks, under JSON output or a required call: </think> first, then the shaped answer", async () => {
    const always = join(dirname(model), "always-thinks");
    writeTinyModel(always, { modelType: "qwen3", contextLength: 512, chatTemplate: alwaysThinkingTemplate });
    const schema = { type: "object", properties: { a: { enum: ["x", "y"] } }, required: ["a"] };
    const json = await openai.chat.completions.create({
      model: always,
      messages: hi,
      max_tokens: 40,
      temperature: 0,
      response_format: { type: "json_schema", json_schema: { name: "a", schema } },
    });
    expect(["x", "y"]).toContain(JSON.parse(json.choices[0]!.message.content!).a);
    const call = await openai.chat.completions.create({
      model: always,
      messages: hi,
      tools: forecastTools,
      tool_choice: "required",
      parallel_tool_calls: false,
      max_tokens: 60,
      temperature: 0,
    });
    expect(call.choices[0]!.message.tool_calls).toHaveLength(1);
    // The forced </think> counts against max_tokens: the shortest answer's minimum says so.
    const tight = await post(`${server.url}/v1/chat/completions`, {
      model: always,
      messages: hi,
      max_tokens: 2,
      response_format: { type: "json_schema", json_schema: { name: "a", schema } },
    });
    expect(tight.status).toBe(400);
    expect(tight.json.error.message).toMatch(/max_tokens 2 is too small .* takes \d+ tokens/);
  });

  test("thinking off through the template (reasoning_effort none, chat_template_kwargs)", async () => {
    for (const off of [{ reasoning_effort: "none" }, { chat_template_kwargs: { enable_thinking: false } }]) {
      const r = await post(`${server.url}/v1/chat/completions`, { model, messages: hi, max_tokens: 8, ...off });
      expect(r.status).toBe(200);
      expect(r.json.choices[0].message.reasoning_content).toBeUndefined();
      expect(r.json.choices[0].message.content.length).toBeGreaterThan(0);
      expect(r.json.usage.completion_tokens_details.reasoning_tokens).toBe(0);
    }
  });

  test("DeepSeek-V3.1's template, switched by its `thinking` variable (off by default): thinking asked turns it on", async () => {
    const deepseek = join(dirname(model), "deepseek-v3.1");
    const chatTemplate = readFileSync(join(import.meta.dir, "fixtures", "templates", "deepseek-v3.1.jinja"), "utf8");
    writeTinyModel(deepseek, { contextLength: 512, chatTemplate });
    const ask = (extra: object) =>
      post(`${server.url}/v1/chat/completions`, {
        model: deepseek,
        messages: hi,
        max_tokens: 4,
        temperature: 0,
        ...extra,
      });
    const plain = await ask({});
    expect(plain.json.choices[0].message.reasoning_content).toBeUndefined();
    expect(plain.json.usage.completion_tokens_details.reasoning_tokens).toBe(0);
    // reasoning_effort, and vLLM's chat_template_kwargs as DeepSeek documents it (or Qwen3's name);
    // a thinking budget too, since it asks for reasoning to bound.
    for (const on of [
      { reasoning_effort: "high" },
      { thinking_budget: 2 },
      { chat_template_kwargs: { thinking: true } },
      { chat_template_kwargs: { enable_thinking: true } },
    ]) {
      const r = await ask(on);
      expect(r.status).toBe(200);
      expect(r.json.choices[0].message.reasoning_content.length).toBeGreaterThan(0);
      expect(r.json.usage.completion_tokens_details.reasoning_tokens).toBe(4);
    }
    const both = await ask({ chat_template_kwargs: { thinking: true, enable_thinking: false } });
    expect(both.status).toBe(400);
    const ollama = new Ollama({ host: server.url });
    const options = { num_predict: 4, temperature: 0 };
    const thought = await ollama.chat({ model: deepseek, messages: hi, think: true, stream: false, options });
    expect(thought.message.thinking!.length).toBeGreaterThan(0);
    const off = await ollama.chat({ model: deepseek, messages: hi, think: false, stream: false, options });
    expect(off.message.thinking).toBeUndefined();
  });

  test("/apply-template renders the prompt a chat completion reads: thinking as asked, off for a required call", async () => {
    const rendered = async (extra: object) => {
      const r = await post(`${server.url}/apply-template`, { model, messages: hi, ...extra });
      expect(r.status).toBe(200);
      return r.json.prompt as string;
    };
    const promptTokens = async (extra: object) =>
      (await post(`${server.url}/v1/chat/completions`, { model, messages: hi, max_tokens: 60, ...extra })).json.usage
        .prompt_tokens;
    const tokens = async (content: string) =>
      (await post(`${server.url}/tokenize`, { model, content })).json.tokens.length;
    const on = await rendered({});
    expect(on.endsWith("<think>")).toBe(true);
    const required = { tools: [nowTool], tool_choice: "required" };
    for (const off of [{ reasoning_effort: "none" }, { chat_template_kwargs: { enable_thinking: false } }, required]) {
      const prompt = await rendered(off);
      expect(prompt.endsWith("</think>")).toBe(true);
      expect(await tokens(prompt)).toBe(await promptTokens(off));
    }
  });

  test("asking a model without <think> in its template to think is a 400; unknown template variables too", async () => {
    const r = await post(`${server.url}/v1/chat/completions`, {
      model: plainModel,
      messages: hi,
      reasoning_effort: "high",
    });
    expect(r.status).toBe(400);
    expect(r.json.error.message).toContain("does not think");
    const bad = await post(`${server.url}/v1/chat/completions`, {
      model,
      messages: hi,
      chat_template_kwargs: { add_vision_id: true },
    });
    expect(bad.status).toBe(400);
    expect(bad.json.error.param).toBe("chat_template_kwargs.add_vision_id");
  });
});

describe("grammars after the reasoning", () => {
  test("a reasoning that mentions <tool_call> stays reasoning: the call the grammar shapes comes after it", async () => {
    // Qwen3's template. The model opens its reasoning and writes " <tool_call>" (its ">" goes on
    // with " <"), until its thinking budget closes the reasoning; then it starts the same words
    // again, and the tool grammar, active only now, makes them a call.
    const scripted = join(dirname(model), "mentions-a-call");
    writeScriptedModel(scripted, ["<think>", " <tool_call>", "</think>"], qwen3Template);
    const body = {
      model: scripted,
      messages: hi,
      tools: [nowTool],
      tool_choice: "auto" as const,
      parallel_tool_calls: false,
      max_tokens: 200,
      temperature: 0,
      thinking_budget: 5,
    };
    const r = await post(`${server.url}/v1/chat/completions`, body);
    expect(r.status).toBe(200);
    const choice = r.json.choices[0];
    expect(choice.message.reasoning_content).toBe("<tool_call>");
    expect(choice.message.tool_calls.map((c: { function: unknown }) => c.function)).toEqual([
      { name: "now", arguments: "{}" },
    ]);
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.closed_early).toBeUndefined();
  });

  test("a JSON schema shapes the answer after a reasoning with braces in it, and max_tokens counts the reasoning", async () => {
    // A template that always thinks; thinking asked for, so the model reasons "Maybe {}?" first,
    // and closes it. (Its prompt ends in "<think>": the script goes on from that ">".)
    const scripted = join(dirname(model), "braces");
    const reasoning = ["Maybe", " {", "}", "?", "</think>"];
    writeScriptedModel(scripted, [">", ...reasoning], alwaysThinkingTemplate);
    const schema = {
      type: "object",
      properties: { a: { enum: ["x", "y"] } },
      required: ["a"],
      additionalProperties: false,
    };
    const ask = (max_tokens: number) =>
      post(`${server.url}/v1/chat/completions`, {
        model: scripted,
        messages: hi,
        max_tokens,
        temperature: 0,
        reasoning_effort: "high",
        response_format: { type: "json_schema", json_schema: { name: "a", schema } },
      });
    const r = await ask(60);
    expect(r.status).toBe(200);
    const message = r.json.choices[0].message;
    expect(message.reasoning_content).toBe("Maybe {}?");
    expect(["x", "y"]).toContain(JSON.parse(message.content).a);
    // The shortest valid answer (the 400 names it), right after the reasoning: the budget steering
    // counts the reasoning's tokens against max_tokens and closes the JSON in time.
    const shortest = Number((await ask(1)).json.error.message.match(/takes (\d+) tokens/)[1]);
    const reasoningTokens = (
      await Promise.all(reasoning.map((content) => post(`${server.url}/tokenize`, { model: scripted, content })))
    ).reduce((n, t) => n + t.json.tokens.length, 0);
    const tight = await ask(reasoningTokens + shortest);
    expect(tight.status).toBe(200);
    expect(tight.json.choices[0].message.reasoning_content).toBe("Maybe {}?");
    expect(["x", "y"]).toContain(JSON.parse(tight.json.choices[0].message.content).a);
  });
});

describe("reasoning sent back", () => {
  test("a multi-step tool call's next prompt is the last prompt and what the model wrote, on every API", async () => {
    // Qwen3's template renders the reasoning of the turns since the user's question: the client
    // sends it back (reasoning_content, vLLM's newer `reasoning`, Ollama's `thinking`). The model
    // reasons "Ask the clock.", its thinking budget closes that, and the grammar lays out its call.
    // (The grammar's choices are not the ids a tokenizer makes of the text: the prompts are
    // compared as text, and as the tokenizer reads that text.)
    const scripted = join(dirname(model), "calls-after-reasoning");
    writeScriptedModel(
      scripted,
      ["Ask", " the", " clock", ".", "\n", "</think>", "\n\n", "<tool_call>"],
      qwen3ThinkingTemplate,
    );
    const first = [{ role: "user" as const, content: "What time is it?" }];
    const turn = await openai.chat.completions.create({
      model: scripted,
      messages: first,
      tools: [nowTool],
      parallel_tool_calls: false,
      max_tokens: 60,
      temperature: 0,
      logprobs: true,
      thinking_budget: 5,
    } as never);
    const { message, logprobs } = (turn as OpenAI.ChatCompletion).choices[0]!;
    const reasoning = (message as { reasoning_content?: string }).reasoning_content!;
    expect(reasoning.trim()).toBe("Ask the clock.");
    expect(message.tool_calls).toHaveLength(1);
    const written = Buffer.from(logprobs!.content!.flatMap((t) => t.bytes!)).toString("utf8");
    const call = message.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall;
    const result = { role: "tool" as const, tool_call_id: call.id, content: "12:00" };
    const template = async (messages: unknown[]) =>
      (await post(`${server.url}/apply-template`, { model: scripted, messages, tools: [nowTool] })).json.prompt;
    const tokenize = async (content: string) =>
      (await post(`${server.url}/tokenize`, { model: scripted, content })).json.tokens as number[];
    const before = await template(first);
    expect((await tokenize(before)).length).toBe(turn.usage!.prompt_tokens);
    const promptTokens = async (messages: unknown[]) => {
      const answer = await openai.chat.completions.create({
        model: scripted,
        messages,
        tools: [nowTool],
        max_tokens: 1,
      } as never);
      return (answer as OpenAI.ChatCompletion).usage!.prompt_tokens;
    };
    let ids: number[] = [];
    for (const name of ["reasoning_content", "reasoning"]) {
      const next = [...first, { role: "assistant", content: null, [name]: reasoning, tool_calls: [call] }, result];
      const after = await template(next);
      expect(after.startsWith(before + written)).toBe(true);
      ids = await tokenize(after);
      const prefix = await tokenize(before + written);
      expect(ids.slice(0, prefix.length)).toEqual(prefix);
      expect(await promptTokens(next)).toBe(ids.length);
    }
    // Ollama's chat, the same conversation in its shapes: the same prompt.
    const assistant = {
      role: "assistant",
      content: "",
      thinking: reasoning,
      tool_calls: [{ function: { name: call.function.name, arguments: JSON.parse(call.function.arguments) } }],
    };
    const viaOllama = await new Ollama({ host: server.url }).chat({
      model: scripted,
      messages: [...first, assistant, { role: "tool", content: result.content }],
      tools: [nowTool],
      stream: false,
      options: { num_predict: 1 },
    });
    expect(viaOllama.prompt_eval_count).toBe(ids.length);
    // Anthropic's messages (a thinking block before the tool_use) and the Responses API's items
    // (a reasoning item before the function_call): the same prompt again.
    const args = JSON.parse(call.function.arguments);
    const viaAnthropic = await post(`${server.url}/v1/messages`, {
      model: scripted,
      max_tokens: 1,
      tools: [{ name: "now", input_schema: nowTool.function.parameters }],
      messages: [
        ...first,
        {
          role: "assistant",
          content: [
            { type: "thinking", thinking: reasoning, signature: "" },
            { type: "tool_use", id: call.id, name: "now", input: args },
          ],
        },
        { role: "user", content: [{ type: "tool_result", tool_use_id: call.id, content: result.content }] },
      ],
    });
    // Anthropic counts the tokens read from the prompt cache apart.
    const { input_tokens, cache_read_input_tokens } = viaAnthropic.json.usage;
    expect(input_tokens + cache_read_input_tokens).toBe(ids.length);
    const viaResponses = await post(`${server.url}/v1/responses`, {
      model: scripted,
      max_output_tokens: 1,
      tools: [{ type: "function", name: "now", parameters: nowTool.function.parameters }],
      input: [
        ...first,
        { type: "reasoning", summary: [], content: [{ type: "reasoning_text", text: reasoning }] },
        { type: "function_call", call_id: call.id, name: "now", arguments: call.function.arguments },
        { type: "function_call_output", call_id: call.id, output: result.content },
      ],
    });
    expect(viaResponses.json.usage.input_tokens).toBe(ids.length);
  });
  test("Responses: previous_response_id continues with the reasoning the response's output held, as its items sent back do", async () => {
    // A stored response's conversation is what its output items say: continuing it by id reads
    // the same prompt as sending those items back (the reasoning item included), whole or streamed.
    const scripted = join(dirname(model), "responses-reasoning-then-call");
    // No token twice (a scripted model would loop): it closes its reasoning itself, no budget needed.
    writeScriptedModel(
      scripted,
      ["Ask", " the", " clock", ".", "</think>", "\n\n", "<tool_call>"],
      qwen3ThinkingTemplate,
    );
    const tools = [{ type: "function" as const, name: "now", parameters: nowTool.function.parameters, strict: false }];
    const question = "What time is it?";
    const ask = {
      model: scripted,
      input: question,
      tools,
      parallel_tool_calls: false,
      max_output_tokens: 60,
      temperature: 0,
    };
    const streamedTurn = await openai.responses.stream(ask).finalResponse();
    for (const turn of [await openai.responses.create(ask), streamedTurn]) {
      expect(turn.output.map((o) => o.type)).toEqual(["reasoning", "function_call"]);
      const call = turn.output[1] as OpenAI.Responses.ResponseFunctionToolCall;
      const result = { type: "function_call_output" as const, call_id: call.call_id, output: "12:00" };
      const next = { model: scripted, tools, max_output_tokens: 1 };
      const sentBack = await openai.responses.create({
        ...next,
        input: [{ role: "user", content: question }, ...(turn.output as OpenAI.Responses.ResponseInputItem[]), result],
      });
      const continued = await openai.responses.create({ ...next, previous_response_id: turn.id, input: [result] });
      expect(continued.usage!.input_tokens).toBe(sentBack.usage!.input_tokens);
    }
  });
});

describe("the other API families", () => {
  test("Ollama: think true gives message.thinking, think false none", async () => {
    const ollama = new Ollama({ host: server.url });
    expect((await ollama.show({ model })).capabilities).toContain("thinking");
    expect((await ollama.show({ model: plainModel })).capabilities).not.toContain("thinking");
    const on = await ollama.chat({
      model,
      messages: hi,
      think: true,
      stream: false,
      options: { num_predict: 6, temperature: 0 },
    });
    expect(on.message.thinking!.length).toBeGreaterThan(0);
    expect(on.message.content).toBe("");
    const off = await ollama.chat({
      model,
      messages: hi,
      think: false,
      stream: false,
      options: { num_predict: 6, temperature: 0 },
    });
    expect(off.message.thinking).toBeUndefined();
    expect(off.message.content.length).toBeGreaterThan(0);
    let thinking = "";
    for await (const part of await ollama.generate({
      model,
      prompt: "Hi",
      think: true,
      stream: true,
      options: { num_predict: 6, temperature: 0 },
    }))
      thinking += part.thinking ?? "";
    expect(thinking).toBe(on.message.thinking!);
  });

  test("Anthropic: a thinking block before the text, whole and streamed", async () => {
    const client = new Anthropic({ baseURL: server.url, apiKey: "unused", maxRetries: 0 });
    const params = {
      model,
      max_tokens: 24,
      temperature: 0,
      messages: hi,
      thinking: { type: "enabled" as const, budget_tokens: 4 },
    };
    const whole = await client.messages.create(params);
    expect(whole.content.map((b) => b.type)).toEqual(["thinking", "text"]);
    const thinking = (whole.content[0] as Anthropic.ThinkingBlock).thinking;
    expect(thinking.length).toBeGreaterThan(0);
    const streamed = await client.messages.stream(params).finalMessage();
    expect(streamed.content.map((b) => (b.type === "text" ? b.text : b.type === "thinking" ? b.thinking : ""))).toEqual(
      whole.content.map((b) => (b.type === "text" ? b.text : b.type === "thinking" ? b.thinking : "")),
    );
    // display "omitted": the thinking block comes without its text, whole and streamed.
    const omitted = { ...params, thinking: { ...params.thinking, display: "omitted" as const } };
    const shown = (m: Anthropic.Message) => m.content.map((b) => (b.type === "thinking" ? `(${b.thinking})` : b.type));
    expect(shown(await client.messages.create(omitted))).toEqual(["()", "text"]);
    expect(shown(await client.messages.stream(omitted).finalMessage())).toEqual(["()", "text"]);
    const badDisplay = await post(`${server.url}/v1/messages`, {
      ...params,
      thinking: { ...params.thinking, display: "hidden" },
    });
    expect(badDisplay.json.error.message).toContain("'summarized' or 'omitted'");
    const disabled = await client.messages.create({ ...params, thinking: { type: "disabled" } });
    expect(disabled.content.map((b) => b.type)).toEqual(["text"]);
    // count_tokens renders the prompt as that request does: the template's empty reasoning included.
    const counted = await client.messages.countTokens({ model, messages: hi, thinking: { type: "disabled" } });
    expect(counted.input_tokens).toBe(disabled.usage.input_tokens + (disabled.usage.cache_read_input_tokens ?? 0));
    const countedOn = await client.messages.countTokens({ model, messages: hi });
    expect(countedOn.input_tokens).toBeLessThan(counted.input_tokens);
  });

  test("max_tokens that cuts the </think> a thinking budget forced: no piece of the tag in the reasoning", async () => {
    const client = new Anthropic({ baseURL: server.url, apiKey: "unused", maxRetries: 0 });
    const thinkingOf = async (max_tokens: number) => {
      const params = {
        model,
        max_tokens,
        temperature: 0,
        messages: hi,
        thinking: { type: "enabled" as const, budget_tokens: 2 },
      };
      const m = await client.messages.create(params);
      return (m.content[0] as Anthropic.ThinkingBlock).thinking;
    };
    // Room for the budget and the whole tag: the reasoning the budget allows.
    const budgeted = await thinkingOf(12);
    expect(budgeted.length).toBeGreaterThan(0);
    // Room for the budget and part of the tag (</think> is more than one token): the same reasoning.
    for (const max_tokens of [3, 4]) expect(await thinkingOf(max_tokens)).toBe(budgeted);
    const body = { model, messages: hi, temperature: 0, max_tokens: 4, thinking_budget: 2 };
    const whole = await openai.chat.completions.create(body as never);
    const message = (whole as OpenAI.ChatCompletion).choices[0]!.message as { reasoning_content?: string };
    expect(message.reasoning_content).toBe(budgeted);
    let streamed = "";
    const stream = await openai.chat.completions.create({ ...body, stream: true } as never);
    for await (const chunk of stream as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>)
      streamed += (chunk.choices[0]?.delta as { reasoning_content?: string } | undefined)?.reasoning_content ?? "";
    expect(streamed).toBe(budgeted);
  });

  test("Responses: a reasoning item first; effort none switches it off", async () => {
    const r = await openai.responses.create({ model, input: "Hi", max_output_tokens: 6, temperature: 0 });
    expect(r.output[0]!.type).toBe("reasoning");
    const item = r.output[0] as OpenAI.Responses.ResponseReasoningItem;
    expect(item.content![0]!.text.length).toBeGreaterThan(0);
    expect(r.usage!.output_tokens_details.reasoning_tokens).toBe(6);
    let streamed = "";
    const stream = openai.responses.stream({ model, input: "Hi", max_output_tokens: 6, temperature: 0 });
    for await (const event of stream) if (event.type === "response.reasoning_text.delta") streamed += event.delta;
    expect(streamed).toBe(item.content![0]!.text);
    const off = await openai.responses.create({
      model,
      input: "Hi",
      max_output_tokens: 6,
      reasoning: { effort: "none" },
    });
    expect(off.output.map((o) => o.type)).toEqual(["message"]);
  });
});

describe("mlx run", () => {
  test("--json puts the reasoning in its own field; --hide-thinking drops it; --no-think answers at once", async () => {
    const run = cliRunner(home);
    const args = ["run", "-m", model, "--max-tokens", "20", "--thinking-budget", "4", "Hi"];
    const json = await run([...args, "--json"]);
    expect(json.code).toBe(0);
    const result = JSON.parse(json.stdout);
    expect(result.reasoning.length).toBeGreaterThan(0);
    expect(result.text.length).toBeGreaterThan(0);
    // Not a terminal: no dimming, the reasoning and a blank line before the answer.
    const shown = await run(args);
    expect(shown.stdout).toBe(`${result.reasoning}\n\n${result.text}\n`);
    const hidden = await run([...args, "--hide-thinking"]);
    expect(hidden.stdout).toBe(`${result.text}\n`);
    const noThink = await run(["run", "-m", model, "--max-tokens", "6", "--no-think", "--json", "Hi"]);
    expect(JSON.parse(noThink.stdout).reasoning).toBeUndefined();
  });
});
