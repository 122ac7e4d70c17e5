// The tools the tool-call tests offer: a forecast function with a constrained parameter schema,
// and a clock that takes nothing; the fewest tokens a call takes.
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "bun:test";
import Ajv from "ajv";
import OpenAI from "openai";
import { BudgetError } from "../../src/engine/budget/steering";
import { createToolCallConstraint, type ToolCallFormat, type ToolSpec } from "../../src/engine/tools";
import type { Tokenizer } from "../../src/tokenizer/tokenizer";
import type { RunningServer } from "../../src/server/app";
import { serve } from "./serve";
import { writeTinyModel } from "./tiny-model";

export const forecastParameters = {
  type: "object",
  properties: {
    city: { type: "string", maxLength: 10 },
    days: { type: "integer", minimum: 1, maximum: 7 },
    unit: { enum: ["celsius", "fahrenheit"] },
  },
  required: ["city", "days"],
  additionalProperties: false,
};

export const forecastTools: OpenAI.ChatCompletionTool[] = [
  {
    type: "function",
    function: { name: "forecast", description: "The weather forecast for a city", parameters: forecastParameters },
  },
  {
    type: "function",
    function: { name: "clock", description: "The time now", parameters: { type: "object", properties: {} } },
  },
];

/**
 * A tiny random-weight model with the chat template test/fixtures/templates/`fixture` (a family's
 * tool-call layout), served, and the openai client on it.
 */
export function serveTemplateModel(fixture: string): { server: RunningServer; openai: OpenAI; model: string } {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-tools-"));
  process.env.MLX_HOME ??= join(root, "home");
  const model = join(root, fixture.replace(/\.jinja$/, ""));
  writeTinyModel(model, {
    contextLength: 2048,
    chatTemplate: readFileSync(join(import.meta.dir, "..", "fixtures", "templates", fixture), "utf8"),
  });
  const server = serve({ defaultModel: model });
  return { server, openai: new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" }), model };
}

/** A streamed chat completion's first choice, put together: its content, its calls (by index) and its finish reason. */
export async function readToolStream(stream: AsyncIterable<OpenAI.ChatCompletionChunk>): Promise<{
  content: string;
  calls: { name: string; arguments: string }[];
  finish: string | null;
}> {
  const calls: { name: string; arguments: string }[] = [];
  let content = "";
  let finish: string | null = null;
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    content += choice?.delta.content ?? "";
    for (const d of choice?.delta.tool_calls ?? []) {
      calls[d.index] ??= { name: "", arguments: "" };
      calls[d.index]!.name += d.function?.name ?? "";
      calls[d.index]!.arguments += d.function?.arguments ?? "";
    }
    finish = choice?.finish_reason ?? finish;
  }
  return { content, calls, finish };
}

/** The fewest tokens one required call of `format` to `tools` takes: what a budget of 5 is refused with. */
export async function smallestCallBudget(
  tokenizer: Tokenizer,
  format: ToolCallFormat,
  tools: ToolSpec[],
): Promise<number> {
  const small = await createToolCallConstraint(tokenizer, format, tools, {
    required: true,
    parallel: false,
    maxTokens: 5,
  }).catch((e) => e);
  expect(small).toBeInstanceOf(BudgetError);
  return (small as BudgetError).minimum;
}

/** A tool call as the OpenAI client gives it back. */
export type ReturnedCall = { function: { name: string; arguments: string } };

const validForecast = new Ajv().compile(forecastParameters);

/** Each call's arguments: a forecast's valid against its parameters (days a number, not "3"), a clock's empty. */
export function expectForecastArguments(calls: ReturnedCall[]): void {
  for (const call of calls) {
    const args = JSON.parse(call.function.arguments);
    if (call.function.name === "forecast") expect({ args, valid: validForecast(args) }).toEqual({ args, valid: true });
    else expect(args).toEqual({});
  }
}
