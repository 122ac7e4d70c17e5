// The OpenAI Responses API (/v1/responses): the request's input items reduced to conversation
// messages (the instructions apart: they are not carried on to a follow-up response), its
// function tools and text format; and the builders of output items and usage.
import type { ConversationMessage, ToolCall, ToolChoice, ToolRequest, ToolSpec } from "../engine/tools";
import type { FormatInput, SamplingInput, ThinkingRequest } from "./common";
import { MAX_TOOLS, callArguments, toolResultName, toolSpec } from "./tools";
import { Fields, ValidationError, unsupported } from "./validate";

export interface ResponsesRequest {
  model?: string;
  /** The input items as messages, without the instructions. */
  input: ConversationMessage[];
  instructions: string | null;
  /** Whether to keep the conversation so a later request can continue it. */
  store: boolean;
  previousResponseId?: string;
  stream: boolean;
  maxTokens?: number;
  sampling: SamplingInput;
  format?: FormatInput;
  tools?: ToolRequest;
  thinking?: ThinkingRequest;
}

const KNOWN = new Set([
  "model",
  "input",
  "instructions",
  "previous_response_id",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
  "text",
  "max_output_tokens",
  "temperature",
  "top_p",
  "stream",
  "store",
  "metadata",
  "user",
  "reasoning",
]);
const ROLES = new Set(["user", "assistant", "system", "developer"]);

export function parseResponsesRequest(body: unknown): ResponsesRequest {
  const f = Fields.of(body);
  f.onlyKnown(KNOWN);
  f.object("metadata");
  const messages: ConversationMessage[] = [];
  const input = f.raw("input");
  if (typeof input === "string") {
    if (!input) f.fail("input", "must not be empty");
    messages.push({ role: "user", content: input });
  } else {
    f.array("input", { required: true, nonEmpty: true })!.forEach((item, i) =>
      inputItem(Fields.item(item, `input.${i}`), messages),
    );
  }
  return {
    model: f.string("model", { nonEmpty: true }),
    input: messages,
    instructions: f.string("instructions") ?? null,
    // OpenAI's default is to store; a client that says nothing gets a response it can continue.
    store: f.boolean("store") ?? true,
    previousResponseId: f.string("previous_response_id", { nonEmpty: true }),
    stream: f.boolean("stream") ?? false,
    maxTokens: f.integer("max_output_tokens", { min: 1 }),
    sampling: {
      temperature: f.number("temperature", { min: 0, max: 2 }),
      topP: f.number("top_p", { above: 0, max: 1 }),
    },
    format: textFormat(f),
    tools: toolRequest(f),
    thinking: reasoningParam(f),
  };
}

/** `reasoning`: {effort} ("none" switches thinking off, any other effort on); summaries we cannot write. */
function reasoningParam(f: Fields): ThinkingRequest | undefined {
  const r = f.object("reasoning");
  if (!r) return undefined;
  r.onlyKnown(["effort"]); // no summaries: the reasoning comes whole
  const effort = r.string("effort");
  if (effort === undefined) return undefined;
  if (!["none", "minimal", "low", "medium", "high"].includes(effort))
    r.fail("effort", `must be one of none, minimal, low, medium, high; got '${effort}'`);
  return { enabled: effort !== "none", param: "reasoning.effort" };
}

/** One input item: a message, a function call the model made, or a call's output. */
function inputItem(item: Fields, messages: ConversationMessage[]): void {
  const type = item.string("type") ?? "message";
  if (type === "message") {
    const role = item.string("role", { required: true })!;
    if (!ROLES.has(role)) item.fail("role", `must be one of ${[...ROLES].join(", ")}; got '${role}'`);
    messages.push({ role: role === "developer" ? "system" : role, content: messageText(item) });
  } else if (type === "function_call") {
    const call: ToolCall = {
      id: item.string("call_id", { required: true, nonEmpty: true })!,
      name: item.string("name", { required: true, nonEmpty: true })!,
      arguments: callArguments(item, "json-text"),
    };
    // Calls in a row are one assistant turn.
    const last = messages.at(-1);
    if (last?.role === "assistant" && last.toolCalls) last.toolCalls.push(call);
    else messages.push({ role: "assistant", content: "", toolCalls: [call] });
  } else if (type === "function_call_output") {
    const id = item.string("call_id", { required: true, nonEmpty: true })!;
    messages.push({
      role: "tool",
      content: item.string("output", { required: true })!,
      toolCallId: id,
      toolName: toolResultName(messages, id),
    });
  } else if (type === "reasoning") {
    // Earlier reasoning is not part of the prompt (thinking templates drop it too).
  } else throw unsupported(item.name("type"), `input items of type '${type}'`);
}

function messageText(item: Fields): string {
  const content = item.raw("content");
  if (typeof content === "string") return content;
  return item
    .array("content", { required: true })!
    .map((raw, j) => {
      const part = Fields.item(raw, item.name(`content.${j}`));
      const type = part.string("type", { required: true })!;
      if (type !== "input_text" && type !== "output_text")
        throw unsupported(part.name("type"), `content of type '${type}'`);
      return part.string("text", { required: true })!;
    })
    .join("");
}

/** text.format: text, json_object, or json_schema {name, schema, strict}. */
function textFormat(f: Fields): FormatInput | undefined {
  const format = f.object("text")?.object("format");
  if (!format) return undefined;
  const type = format.string("type", { required: true });
  if (type === "text") return undefined;
  if (type === "json_object") return { format: "json", param: "text.format" };
  if (type !== "json_schema") format.fail("type", `must be one of text, json_object, json_schema; got '${type}'`);
  format.string("name", { required: true, nonEmpty: true });
  const schema = format.object("schema") ?? format.fail("schema", "must be a JSON Schema object");
  return { format: { schema: schema.body, strict: format.boolean("strict") ?? false }, param: "text.format.schema" };
}

/** `tools` ({type: "function", name, description, parameters}) and `tool_choice`. */
function toolRequest(f: Fields): ToolRequest | undefined {
  const names = new Set<string>();
  const tools: ToolSpec[] = (f.array("tools", { max: MAX_TOOLS }) ?? []).map((item, i) => {
    const tool = Fields.item(item, `tools.${i}`);
    const type = tool.string("type", { required: true })!;
    if (type !== "function") throw unsupported(tool.name("type"), `tools of type '${type}' (only 'function')`);
    return toolSpec(tool, "parameters", names);
  });
  const raw = f.raw("tool_choice");
  let choice: ToolChoice = "auto";
  if (typeof raw === "string") {
    if (raw !== "auto" && raw !== "none" && raw !== "required")
      f.fail("tool_choice", `must be one of auto, none, required, or a function; got '${raw}'`);
    choice = raw;
  } else if (raw !== undefined && raw !== null) {
    const c = f.object("tool_choice")!;
    if (c.string("type", { required: true }) !== "function")
      throw unsupported("tool_choice.type", "a tool_choice other than a function");
    choice = { name: c.string("name", { required: true, nonEmpty: true })! };
    if (!names.has(choice.name)) c.fail("name", `names the function '${choice.name}', which is not among the tools`);
  }
  if (choice === "required" && tools.length === 0)
    throw new ValidationError("'tool_choice' 'required' needs 'tools'", "tool_choice");
  if (tools.length === 0) return undefined;
  return { tools, choice, parallel: f.boolean("parallel_tool_calls") ?? true };
}

// ---- responses ----

export const responseId = (prefix: string) => `${prefix}_${crypto.randomUUID().replaceAll("-", "")}`;

export function responsesUsage(promptTokens: number, outputTokens: number, cachedTokens: number, reasoningTokens = 0) {
  return {
    input_tokens: promptTokens,
    input_tokens_details: { cached_tokens: cachedTokens },
    output_tokens: outputTokens,
    output_tokens_details: { reasoning_tokens: reasoningTokens },
    total_tokens: promptTokens + outputTokens,
  };
}

export type ItemStatus = "in_progress" | "completed" | "incomplete";

export const messageItem = (id: string, text: string, status: ItemStatus) => ({
  type: "message" as const,
  id,
  status,
  role: "assistant" as const,
  // An item just added (in progress) has no content yet; a finished one, whole or cut, has its text.
  content: status === "in_progress" ? [] : [outputText(text)],
});

/** A thinking model's reasoning: whole, as reasoning_text (no summary). */
export const reasoningItem = (id: string, text: string, status: "in_progress" | "completed") => ({
  type: "reasoning" as const,
  id,
  status,
  summary: [],
  content: status === "completed" ? [reasoningText(text)] : [],
});

export const reasoningText = (text: string) => ({ type: "reasoning_text" as const, text });

export const outputText = (text: string) => ({ type: "output_text" as const, text, annotations: [], logprobs: [] });

export const functionCallItem = (
  call: ToolCall,
  status: "in_progress" | "completed",
  args = JSON.stringify(call.arguments),
) => ({
  type: "function_call" as const,
  id: `fc_${call.id}`,
  call_id: call.id,
  name: call.name,
  arguments: args,
  status,
});
