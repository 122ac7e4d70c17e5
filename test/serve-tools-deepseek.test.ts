// A model with DeepSeek V3.1's template through the server and the openai client: past calls are
// rendered as the template writes them (NAME<｜tool▁sep｜>{...} inside <｜tool▁calls▁begin｜>),
// and a required call is written in that layout (by the grammar: the model has random weights)
// and comes back as the same tool_calls, whole and streamed.
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
  ({ server, openai, model } = serveTemplateModel("deepseek-v3.1.jinja"));
});

afterAll(() => server.stop());

describe("DeepSeek V3.1's template (<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>)", () => {
  const history: OpenAI.ChatCompletionMessageParam[] = [
    { role: "user", content: "What will the weather be in Oslo?" },
    {
      role: "assistant",
      content: null,
      tool_calls: [
        { id: "call_1", type: "function", function: { name: "forecast", arguments: '{"city": "Oslo", "days": 2}' } },
        { id: "call_2", type: "function", function: { name: "clock", arguments: "{}" } },
      ],
    },
    { role: "tool", tool_call_id: "call_1", content: "Snow" },
    { role: "tool", tool_call_id: "call_2", content: "Noon" },
    { role: "user", content: "And in Rome?" },
  ];

  test("its past calls are rendered as the template writes them, arguments as JSON text", async () => {
    const rendered = await post(`${server.url}/apply-template`, { model, messages: history, tools: forecastTools });
    expect(rendered.status).toBe(200);
    expect(rendered.json.prompt).toContain(
      '<｜Assistant｜></think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>forecast<｜tool▁sep｜>{"city": "Oslo", "days": 2}<｜tool▁call▁end｜><｜tool▁call▁begin｜>clock<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>' +
        "<｜tool▁output▁begin｜>Snow<｜tool▁output▁end｜><｜tool▁output▁begin｜>Noon<｜tool▁output▁end｜><｜User｜>And in Rome?",
    );
    // The template's own tools section, not our hermes prompt.
    expect(rendered.json.prompt).toContain("### forecast\nDescription: The weather forecast for a city");
    expect(rendered.json.prompt).not.toContain("<tool_call>");
  });

  for (const choice of ["required", { type: "function", function: { name: "forecast" } }] as const) {
    test(`tool_choice ${JSON.stringify(choice)}: written in DeepSeek's layout, read back as tool_calls, whole and streamed alike`, async () => {
      const request = {
        model,
        messages: history,
        tools: forecastTools,
        tool_choice: choice,
        temperature: 1,
        max_tokens: 160,
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
        expect(streamedContent).toBe("");
        if (whole.finish_reason === "length") continue;
        finished++;
        expect(whole.finish_reason).toBe("tool_calls");
        expect(whole.message.content).toBeNull();
        const calls = whole.message.tool_calls as ReturnedCall[];
        expect(calls.length).toBeGreaterThan(0);
        if (typeof choice !== "string") for (const call of calls) expect(call.function.name).toBe("forecast");
        expectForecastArguments(calls);
        // The answer's tokens as bytes: a token holding part of a ｜ or ▁ has no text of its own.
        const raw = Buffer.from(whole.logprobs!.content!.flatMap((t) => t.bytes ?? [])).toString("utf8");
        expect(raw).toStartWith(`<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>${calls[0]!.function.name}<｜tool▁sep｜>{`);
        expect(raw.trimEnd()).toEndWith("<｜tool▁call▁end｜><｜tool▁calls▁end｜>");
        expect(streamed).toEqual(calls.map((c) => c.function));
      }
      expect(finished).toBeGreaterThan(0);
    }, 120_000);
  }

  // Steered like the other layouts (its markers' ｜ and ▁ cut between tokens once made the
  // steering mask every token, so it went without, and a call the budget cut was dropped).
  test("a max_tokens no call fits is a 400 naming the shortest call's length; from there on a whole call comes back, whole and streamed", async () => {
    const request = { model, messages: history, tools: forecastTools, tool_choice: "required" as const };
    const refused = await post(`${server.url}/v1/chat/completions`, { ...request, max_tokens: 12 });
    expect(refused.status).toBe(400);
    expect(refused.json.error.message).toMatch(
      /max_tokens 12 is too small for this format: the shortest valid answer takes \d+ tokens/,
    );
    const needed = Number(/takes (\d+) tokens/.exec(refused.json.error.message)![1]);
    // A budget that runs out mid-call closes it in time (closed_early): a whole call comes
    // back, its arguments valid, never a cut one dropped.
    for (const extra of [0, 6, 24]) {
      const seed = extra;
      const sized = { ...request, max_tokens: needed + extra, temperature: 1, seed };
      const answer = await post(`${server.url}/v1/chat/completions`, sized);
      const choice = answer.json.choices[0];
      const where = `max_tokens ${needed + extra}: ${JSON.stringify(choice)}`;
      const calls = (choice.message.tool_calls ?? []) as ReturnedCall[];
      if (calls.length === 0) throw new Error(`no call (${where})`);
      expect(choice.finish_reason).toMatch(/^(tool_calls|length)$/);
      if (choice.finish_reason === "length") expect(choice.closed_early).toBe(true);
      expectForecastArguments(calls);
      const streamed = await readToolStream(await openai.chat.completions.create({ ...sized, stream: true }));
      expect(streamed).toEqual({
        content: "",
        calls: calls.map((c) => c.function),
        finish: choice.finish_reason,
      });
    }
  }, 120_000);

  test("tool_choice auto: an answer in prose is the content", async () => {
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
