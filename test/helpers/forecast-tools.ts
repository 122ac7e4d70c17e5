// The tools the tool-call tests offer: a forecast function with a constrained parameter schema,
// and a clock that takes nothing.
import type OpenAI from "openai";

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
