// A model with Qwen3-Coder's template through the server and the openai client: past calls are
// rendered as the template's XML, and a required call is written in that XML (by the grammar:
// the model has random weights) and comes back as the same tool_calls, whole and streamed, its
// arguments typed by the function's schema.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import type { RunningServer } from "../src/server/app";
import { post } from "./helpers/serve";
import {
  expectForecastArguments,
  forecastTools,
  readToolStream,
  serveTemplateModel,
  type ReturnedCall,
} from "./helpers/forecast-tools";

let server: RunningServer;
let openai: OpenAI;
let model: string;

beforeAll(() => {
  ({ server, openai, model } = serveTemplateModel("qwen3-coder.jinja"));
});

afterAll(() => server.stop());

describe("Qwen3-Coder's template (XML calls: <function=f> with a <parameter=p> for each argument)", () => {
  const history: OpenAI.ChatCompletionMessageParam[] = [
    { role: "user", content: "What will the weather be in Oslo?" },
    {
      role: "assistant",
      content: null,
      tool_calls: [
        { id: "call_1", type: "function", function: { name: "forecast", arguments: '{"city": "Oslo", "days": 2}' } },
      ],
    },
    { role: "tool", tool_call_id: "call_1", content: "Snow" },
    { role: "user", content: "And in Rome?" },
  ];

  test("its past calls are rendered as the template's XML", async () => {
    const rendered = await post(`${server.url}/apply-template`, { model, messages: history, tools: forecastTools });
    expect(rendered.status).toBe(200);
    expect(rendered.json.prompt).toContain(
      "<tool_call>\n<function=forecast>\n<parameter=city>\nOslo\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
    );
  });

  for (const choice of ["required", { type: "function", function: { name: "forecast" } }] as const) {
    test(`tool_choice ${JSON.stringify(choice)}: written in the XML layout, typed tool_calls, whole and streamed alike`, async () => {
      const request = {
        model,
        messages: history,
        tools: forecastTools,
        tool_choice: choice,
        parallel_tool_calls: false,
        temperature: 1,
        max_tokens: 80,
      };
      let finished = 0;
      for (const seed of [1, 2, 3]) {
        const whole = (await openai.chat.completions.create({ ...request, seed, logprobs: true })).choices[0]!;
        const {
          content: streamedContent,
          calls: streamed,
          finish,
        } = await readToolStream(await openai.chat.completions.create({ ...request, seed, stream: true }));
        expect(finish).toBe(whole.finish_reason);
        if (whole.finish_reason === "length") continue;
        finished++;
        expect(whole.finish_reason).toBe("tool_calls");
        expect(whole.message.content).toBeNull();
        expect(streamedContent).toBe("");
        const calls = whole.message.tool_calls as ReturnedCall[];
        expect(calls).toHaveLength(1);
        expect(calls[0]!.function.name).toBe(typeof choice === "string" ? calls[0]!.function.name : "forecast");
        // days is a number, not the text "3"; the unit (an enum of strings) is the bare word.
        expectForecastArguments(calls);
        const raw = whole.logprobs!.content!.map((t) => t.token).join("");
        expect(raw).toStartWith(`<tool_call>\n<function=${calls[0]!.function.name}>\n`);
        expect(raw.trimEnd()).toEndWith("</function>\n</tool_call>");
        expect(streamed).toEqual(calls.map((c) => c.function));
      }
      expect(finished).toBeGreaterThan(0);
    }, 120_000);
  }

  test("a max_tokens no call fits is a 400 naming the shortest call's length, as for the other formats; the server carries on", async () => {
    const request = { model, messages: history, tools: forecastTools, tool_choice: "required" as const };
    const refused = await post(`${server.url}/v1/chat/completions`, { ...request, max_tokens: 5 });
    expect(refused.status).toBe(400);
    expect(refused.json.error.message).toMatch(
      /max_tokens 5 is too small for this format: the shortest valid answer takes \d+ tokens/,
    );
    const needed = Number(/takes (\d+) tokens/.exec(refused.json.error.message)![1]);
    // From the shortest call's length on, a budget that runs out mid-call closes it in time
    // (closed_early): a whole call comes back, its arguments valid, never a cut one dropped.
    for (const extra of [0, 4, 12]) {
      for (const seed of [1, 2]) {
        const answer = await post(`${server.url}/v1/chat/completions`, {
          ...request,
          max_tokens: needed + extra,
          temperature: 1,
          seed,
        });
        const choice = answer.json.choices[0];
        const where = `max_tokens ${needed + extra}, seed ${seed}: ${JSON.stringify(choice)}`;
        const calls = (choice.message.tool_calls ?? []) as ReturnedCall[];
        if (calls.length === 0) throw new Error(`no call (${where})`);
        expect(choice.finish_reason).toMatch(/^(tool_calls|length)$/);
        if (choice.finish_reason === "length") expect(choice.closed_early).toBe(true);
        expectForecastArguments(calls);
      }
    }
  }, 120_000);

  test("tool_choice auto: an answer in prose is the content, and the server's prompt offers the tools", async () => {
    const rendered = await post(`${server.url}/apply-template`, { model, messages: history, tools: forecastTools });
    expect(rendered.json.prompt).toContain("<function>\n<name>forecast</name>");
    const answer = await openai.chat.completions.create({
      model,
      messages: history,
      tools: forecastTools,
      temperature: 0,
      max_tokens: 8,
    });
    const choice = answer.choices[0]!;
    expect(choice.finish_reason).toBe("length");
    expect(choice.message.tool_calls ?? []).toEqual([]);
    expect(typeof choice.message.content).toBe("string");
  });
});
