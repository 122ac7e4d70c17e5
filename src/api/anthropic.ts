// The Anthropic Messages API's request and response shapes (/v1/messages and
// /v1/messages/count_tokens): the validation of requests, reduced to the same conversation,
// sampling and tools as the other API families, and the builders of messages and usage.
import {
  TOOL_ERROR_PREFIX,
  type ConversationMessage,
  type ThinkingBlock,
  type ToolCall,
  type ToolChoice,
  type ToolRequest,
  type ToolSpec,
} from "../engine/tools";
import type { FormatInput, PromptInput, RequestHints, SamplingInput, ThinkingRequest } from "./common";
import { TEXT_PARTS_SEPARATOR } from "./common";
import { contextEdits, type ContextEdit } from "./anthropic-context";
import { MAX_TOOLS, toolResultName, toolSpec } from "./tools";
import { Fields, ValidationError, messageFields, serviceTier, unsupported } from "./validate";

export interface AnthropicRequest {
  model?: string;
  prompt: Extract<PromptInput, { kind: "chat" }>;
  stream: boolean;
  maxTokens: number;
  sampling: SamplingInput;
  stop: string[];
  tools?: ToolRequest;
  thinking?: ThinkingRequest;
  /** `thinking.display` "omitted": thinking blocks come empty (Anthropic's redacted display). */
  omitThinking: boolean;
  format?: FormatInput;
  /** metadata.user_id, as the end user a remote provider is told of. */
  hints: RequestHints;
  /** `context_management.edits`: what to clear from the conversation before the model reads it. */
  contextEdits?: ContextEdit[];
}

/** What count_tokens reads: the prompt, the tools it offers, thinking and the output format (a template may render them). */
export type CountTokensRequest = Pick<
  AnthropicRequest,
  "model" | "prompt" | "tools" | "thinking" | "format" | "contextEdits"
>;

// A system message may also stand among the turns (an agent's instructions that change midway).
const ROLES = new Set(["user", "assistant", "system"]);
const PROMPT_FIELDS = ["model", "messages", "system", "tools", "tool_choice"];
// Fields Anthropic defines that this server does not implement are a 400 naming them (a client
// asking for server tools must know it got none). `cache_control` passes: a hint our prefix
// cache, which needs none, satisfies (and an Anthropic provider is sent).
const MESSAGES_FIELDS = new Set([
  ...PROMPT_FIELDS,
  "max_tokens",
  "stop_sequences",
  "stream",
  "temperature",
  "top_p",
  "top_k",
  "metadata",
  "service_tier",
  "cache_control",
  "thinking",
  "output_config",
  "context_management",
]);

/**
 * `thinking`: {type: "enabled", budget_tokens} or {type: "disabled"}; absent or "adaptive" (the
 * model decides), the model's default. "adaptive" and the display "omitted" are kept for an
 * Anthropic provider, whose models take them.
 */
function thinkingParam(f: Fields, maxTokens = Infinity): ThinkingRequest | undefined {
  const effort = outputEffort(f);
  const thinking = thinkingConfig(f, maxTokens);
  if (!effort) return thinking;
  // As OpenAI's efforts name it, whose highest is xhigh.
  return { ...(thinking ?? { param: "output_config.effort" }), effort: effort === "max" ? "xhigh" : effort };
}

/**
 * `output_config.effort`, how hard the model works: a template that takes an effort (gpt-oss's)
 * is given it; it switches no thinking on or off (`thinking` does).
 */
function outputEffort(f: Fields): string | undefined {
  const effort = f.object("output_config")?.string("effort");
  if (effort !== undefined && !ANTHROPIC_EFFORTS.includes(effort))
    f.fail("output_config.effort", `must be one of ${ANTHROPIC_EFFORTS.join(", ")}; got '${effort}'`);
  return effort;
}

const ANTHROPIC_EFFORTS = ["low", "medium", "high", "xhigh", "max"];

function thinkingConfig(f: Fields, maxTokens: number): ThinkingRequest | undefined {
  const t = f.object("thinking");
  if (!t) return undefined;
  const type = t.string("type", { required: true });
  const display = thinkingDisplay(f);
  const shown = display ? { display } : {};
  if (type === "adaptive") return { adaptive: true, param: "thinking", ...shown };
  if (type === "disabled") return { enabled: false, param: "thinking" };
  if (type !== "enabled") t.fail("type", `must be 'enabled', 'adaptive' or 'disabled'; got '${type}'`);
  // Anthropic asks for at least 1,024; small local models think in fewer, so any positive budget goes.
  const budget = t.integer("budget_tokens", { min: 1 }) ?? t.fail("budget_tokens", "is required");
  if (budget >= maxTokens) t.fail("budget_tokens", `must be less than max_tokens (${maxTokens})`);
  return { enabled: true, budget, param: "thinking", ...shown };
}

/**
 * `thinking.display`: "summarized" (the default here: the reasoning whole, as no summary is
 * written) or "omitted", where Anthropic sends thinking blocks without their text.
 */
function thinkingDisplay(f: Fields): "summarized" | "omitted" | undefined {
  const display = f.object("thinking")?.string("display");
  if (display === undefined || display === "summarized" || display === "omitted") return display;
  return f.object("thinking")!.fail("display", `must be 'summarized' or 'omitted'; got '${display}'`);
}

export function parseMessagesRequest(body: unknown): AnthropicRequest {
  const f = Fields.of(body);
  // The SDK's toolRunner sends one by default, and its own error (a bare "'thread' is not
  // supported") would leave its user without the way out, which is the runner's option.
  if (f.has("thread"))
    throw unsupported(
      "thread",
      "'thread' (a message thread kept on the server: pass thread: false to the SDK's toolRunner)",
    );
  f.onlyKnown(MESSAGES_FIELDS);
  const maxTokens = f.integer("max_tokens", { min: 1 }) ?? f.fail("max_tokens", "is required");
  const user = metadataUserId(f);
  // "auto" (priority capacity where the account has it) and "standard_only" alike: the one tier here.
  serviceTier(f, ["auto", "standard_only"]);
  const request = {
    ...promptFields(f),
    thinking: thinkingParam(f, maxTokens),
    format: outputFormat(f),
    contextEdits: contextEdits(f),
  };
  refuseConflicts(f, request);
  return {
    ...request,
    stream: f.boolean("stream") ?? false,
    omitThinking: thinkingDisplay(f) === "omitted",
    maxTokens,
    sampling: {
      temperature: f.number("temperature", { min: 0, max: 1 }),
      topP: f.number("top_p", { above: 0, max: 1 }),
      topK: f.integer("top_k", { min: 0 }),
    },
    stop: stopSequences(f),
    hints: { user, cacheControl: cacheControl(f) },
  };
}

/** A `cache_control` marker (on the request, a block or a tool), as the client wrote it: an Anthropic provider is sent it. */
function cacheControl(f: Fields): Record<string, unknown> | undefined {
  return f.object("cache_control")?.body;
}

/**
 * `metadata` holds only `user_id` (Anthropic refuses other keys): it only tags the request, so
 * a local model has no use for it; a remote provider is told of it.
 */
function metadataUserId(f: Fields): string | undefined {
  const metadata = f.object("metadata");
  metadata?.onlyKnown(["user_id"]);
  return metadata?.string("user_id");
}

/**
 * `output_config.format` {type: "json_schema", schema}: the answer is JSON the schema accepts,
 * naming no properties it does not (as Anthropic's structured outputs).
 */
function outputFormat(f: Fields): FormatInput | undefined {
  const config = f.object("output_config");
  config?.onlyKnown(["format", "effort"]);
  const format = config?.object("format");
  if (!format) return undefined;
  const type = format.string("type", { required: true });
  format.onlyKnown(["type", "schema"]);
  if (type !== "json_schema") format.fail("type", `must be 'json_schema'; got '${type}'`);
  const schema = format.object("schema") ?? format.fail("schema", "is required (a JSON Schema object)");
  return { format: { schema: schema.body }, param: "output_config.format.schema" };
}

export function parseCountTokensRequest(body: unknown): CountTokensRequest {
  const f = Fields.of(body);
  // The fields of a generation's request that shape its prompt pass, so a client can count what it sends.
  f.onlyKnown([...PROMPT_FIELDS, "thinking", "output_config", "cache_control", "context_management"]);
  const request = {
    ...promptFields(f),
    thinking: thinkingParam(f),
    format: outputFormat(f),
    contextEdits: contextEdits(f),
  };
  refuseConflicts(f, request);
  return request;
}

/**
 * What Anthropic refuses together, as it does; here each would otherwise be silently lost.
 * Thinking comes before the answer, so it cannot follow a prefill nor precede a forced call (a
 * grammar shapes that answer from its first token); and JSON output starts the answer afresh,
 * so a prefill would leave the text as a whole not JSON.
 */
function refuseConflicts(f: Fields, { prompt, tools, thinking, format }: CountTokensRequest): void {
  const forcedCall = tools !== undefined && tools.choice !== "auto" && tools.choice !== "none";
  if (thinking?.enabled && forcedCall) f.fail("tool_choice.type", "must be 'auto' or 'none' when thinking is enabled");
  if (!prompt.continueFinal) return;
  const prefill = "cannot be used with a prefill (a conversation that ends with an assistant message)";
  if (thinking?.enabled) f.fail("thinking", `enabled ${prefill}`);
  if (format) f.fail("output_config.format", prefill);
}

function promptFields(f: Fields): Omit<CountTokensRequest, "thinking" | "format"> {
  const system = systemPrompt(f);
  const raw = f.array("messages", { required: true, nonEmpty: true })!;
  const messages: ConversationMessage[] = system ? [system] : [];
  let calls: ToolUses | undefined;
  raw.forEach((item, i) => {
    const turn = conversationMessages(item, i, messages);
    calls = answerToolUses(f, calls, turn, i);
    for (const message of turn) appendTurn(messages, message);
  });
  if (calls) unansweredToolUses(f, calls);
  // A last message of the assistant's is the start of its answer, to go on with (a prefill).
  const continueFinal = messages.at(-1)?.role === "assistant";
  // As Anthropic: the model would go on after the whitespace, not write its own word boundary.
  if (continueFinal && /\s$/.test(messages.at(-1)!.content))
    f.fail(`messages.${raw.length - 1}.content`, "(the final assistant message) must not end with whitespace");
  return {
    model: f.string("model", { nonEmpty: true }),
    prompt: { kind: "chat", messages, continueFinal },
    tools: toolRequest(f),
  };
}

/** The tool_use ids of an assistant message (message `at`), which the next message must answer. */
interface ToolUses {
  ids: string[];
  at: number;
}

/**
 * Checks that `turn` (message `at`) answers each call of the message before it with a
 * tool_result, and answers nothing else, as Anthropic does: a call left unanswered would have
 * the model go on as if it had run (at the end, as a prefill after the call), and a result
 * for no call is one the template cannot name. Returns the turn's own calls.
 */
function answerToolUses(f: Fields, before: ToolUses | undefined, turn: ConversationMessage[], at: number) {
  const results = turn.flatMap((m) => (m.role === "tool" ? [m.toolCallId!] : []));
  // One result per call, and calls apart by their ids, as Anthropic requires: a second result,
  // or a result for an id two calls share, leaves the template no way to tell which call it answers.
  const repeatedResults = repeated(results);
  if (repeatedResults.length > 0)
    f.fail(`messages.${at}.content`, `has more than one tool_result for: ${repeatedResults.join(", ")}`);
  const unanswered = before?.ids.filter((id) => !results.includes(id)) ?? [];
  if (unanswered.length > 0) unansweredToolUses(f, { ids: unanswered, at: before!.at });
  const unexpected = results.filter((id) => !before?.ids.includes(id));
  if (unexpected.length > 0)
    f.fail(
      `messages.${at}.content`,
      `has tool_result blocks for no tool_use of the message before: ${unexpected.join(", ")}`,
    );
  const ids = turn.flatMap((m) => m.toolCalls?.map((c) => c.id) ?? []);
  const repeatedIds = repeated(ids);
  if (repeatedIds.length > 0)
    f.fail(
      `messages.${at}.content`,
      `has tool_use blocks that share an id (ids must be unique): ${repeatedIds.join(", ")}`,
    );
  return ids.length > 0 ? { ids, at } : undefined;
}

/** The values that occur more than once, each once. */
const repeated = (values: string[]) => [...new Set(values.filter((v, i) => values.indexOf(v) !== i))];

function unansweredToolUses(f: Fields, { ids, at }: ToolUses): never {
  return f.fail(
    `messages.${at}.content`,
    `has tool_use blocks without a tool_result in the next message: ${ids.join(", ")}`,
  );
}

/**
 * Adds a message to the conversation, combined with the one before when both are the user's or
 * both the assistant's: Anthropic combines consecutive turns of one role into one, and chat
 * templates that insist on alternating roles (Mistral's, Gemma's) would refuse them apart.
 */
function appendTurn(messages: ConversationMessage[], next: ConversationMessage): void {
  const last = messages.at(-1);
  if (!last || last.role !== next.role || (next.role !== "user" && next.role !== "assistant")) {
    messages.push(next);
    return;
  }
  const calls = [...(last.toolCalls ?? []), ...(next.toolCalls ?? [])];
  // A line apart, so that the turns' texts (and their reasonings) do not run into each other.
  const joined = (a: string | undefined, b: string | undefined) => [a, b].filter(Boolean).join("\n");
  const reasoning = joined(last.reasoning, next.reasoning);
  const thinkingBlocks = [...(last.thinkingBlocks ?? []), ...(next.thinkingBlocks ?? [])];
  // The later breakpoint: the combined turn ends where the later one did.
  const cacheControl = next.cacheControl ?? last.cacheControl;
  messages[messages.length - 1] = {
    role: last.role,
    content: joined(last.content, next.content),
    ...(calls.length > 0 ? { toolCalls: calls } : {}),
    ...(reasoning ? { reasoning } : {}),
    ...(thinkingBlocks.length > 0 ? { thinkingBlocks } : {}),
    ...(cacheControl ? { cacheControl } : {}),
  };
}

/**
 * `system`: a string, or text blocks (their `cache_control` is a hint our prefix cache needs no
 * help with; an Anthropic provider is sent the last one).
 */
function systemPrompt(f: Fields): ConversationMessage | undefined {
  const raw = f.raw("system");
  if (raw === undefined || raw === null || typeof raw === "string")
    return raw ? { role: "system", content: raw as string } : undefined;
  if (!Array.isArray(raw)) f.fail("system", "must be a string or a list of text blocks");
  const blocks = raw.map((block, i) => Fields.item(block, `system.${i}`));
  const content = blocks.map(textBlock).join("\n");
  const marked = blocks.findLast((b) => b.has("cache_control"));
  return content ? { role: "system", content, ...(marked && { cacheControl: cacheControl(marked) }) } : undefined;
}

function textBlock(b: Fields): string {
  const type = b.string("type", { required: true });
  if (type !== "text") throw unsupported(b.name("type"), `a block of type '${type}' here`);
  return b.string("text", { required: true })!;
}

/**
 * One Anthropic message as conversation messages: an assistant turn's text and tool_use blocks
 * become one message with its calls; a user turn's tool_result blocks become tool messages (in
 * their order), and its text one user message.
 */
function conversationMessages(item: unknown, i: number, earlier: ConversationMessage[]): ConversationMessage[] {
  const { m, at, role } = messageFields(item, i, ROLES);
  const content = m.raw("content");
  if (typeof content === "string") return [{ role, content }];
  const blocks = m.array("content", { required: true, nonEmpty: true })!;
  const out: ConversationMessage[] = [];
  const texts: string[] = [];
  let reasoning = "";
  const thinkingBlocks: ThinkingBlock[] = [];
  // The breakpoint of the message's text and calls (a tool result carries its own).
  let marked: Record<string, unknown> | undefined;
  const calls: ToolCall[] = [];
  blocks.forEach((raw, j) => {
    const b = Fields.item(raw, `${at}.content.${j}`);
    const type = b.string("type", { required: true })!;
    if (type !== "tool_result") marked = cacheControl(b) ?? marked;
    if (type === "text") texts.push(b.string("text", { required: true })!);
    // A thinking template renders the reasoning of the turns after the last user message (a
    // thinking model's multi-step tool calls); a redacted one has no text to give it. Both are
    // kept whole, signature included, for an Anthropic provider, which verifies them.
    else if (type === "thinking" && role === "assistant") {
      const thinking = b.string("thinking") ?? "";
      reasoning += thinking;
      thinkingBlocks.push({ type, thinking, signature: b.string("signature") ?? "" });
    } else if (type === "redacted_thinking" && role === "assistant")
      thinkingBlocks.push({ type, data: b.string("data", { required: true })! });
    else if (type === "tool_use" && role === "assistant") {
      calls.push({
        id: b.string("id", { required: true, nonEmpty: true })!,
        name: b.string("name", { required: true, nonEmpty: true })!,
        arguments: b.object("input")?.body ?? {},
      });
    } else if (type === "tool_result" && role === "user") {
      const id = b.string("tool_use_id", { required: true, nonEmpty: true })!;
      const result = toolResultText(b);
      const isError = b.boolean("is_error") ?? false;
      out.push({
        role: "tool",
        content: isError ? TOOL_ERROR_PREFIX + result : result,
        ...(isError && { isError }),
        toolCallId: id,
        toolName: toolResultName([...earlier, ...out], id),
        ...(b.has("cache_control") && { cacheControl: cacheControl(b) }),
      });
    } else if (type === "tool_use" || type === "tool_result") {
      b.fail("type", `'${type}' blocks belong in ${type === "tool_use" ? "assistant" : "user"} messages`);
    } else throw unsupported(b.name("type"), `content of type '${type}'`);
  });
  const text = texts.join(TEXT_PARTS_SEPARATOR);
  if (role === "assistant")
    out.push({
      role,
      content: text,
      ...(calls.length > 0 ? { toolCalls: calls } : {}),
      ...(reasoning ? { reasoning } : {}),
      ...(thinkingBlocks.length > 0 ? { thinkingBlocks } : {}),
      ...(marked && { cacheControl: marked }),
    });
  else if (text || out.length === 0) out.push({ role, content: text, ...(marked && { cacheControl: marked }) });
  return out;
}

function toolResultText(b: Fields): string {
  const content = b.raw("content");
  if (content === undefined || content === null) return "";
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) b.fail("content", "must be a string or a list of text blocks");
  return content.map((block, k) => textBlock(Fields.item(block, b.name(`content.${k}`)))).join("\n");
}

function stopSequences(f: Fields): string[] {
  const raw = f.array("stop_sequences", { max: 16 });
  if (!raw) return [];
  raw.forEach((s, i) => {
    if (typeof s !== "string" || s.length === 0) f.fail(`stop_sequences.${i}`, "must be a non-empty string");
  });
  return raw as string[];
}

/** `tools` ({name, description, input_schema}) and `tool_choice` ({type: auto | any | tool | none, name, disable_parallel_tool_use}). */
function toolRequest(f: Fields): ToolRequest | undefined {
  const raw = f.array("tools", { max: MAX_TOOLS });
  const names = new Set<string>();
  const tools: ToolSpec[] = (raw ?? []).map((item, i) => {
    const tool = Fields.item(item, `tools.${i}`);
    const type = tool.string("type") ?? "custom";
    if (type !== "custom")
      throw unsupported(tool.name("type"), `the tool type '${type}' (only custom tools with an input_schema)`);
    if (!tool.has("input_schema")) tool.fail("input_schema", "is required");
    const marked = cacheControl(tool);
    return { ...toolSpec(tool, "input_schema", names), ...(marked && { cacheControl: marked }) };
  });
  const c = f.object("tool_choice");
  // A misspelt disable_parallel_tool_use would otherwise be dropped unseen.
  c?.onlyKnown(["type", "name", "disable_parallel_tool_use"]);
  const type = c?.string("type", { required: true }) ?? "auto";
  let choice: ToolChoice;
  if (type === "auto" || type === "none") choice = type;
  else if (type === "any") choice = "required";
  else if (type === "tool") choice = { name: c!.string("name", { required: true, nonEmpty: true })! };
  else
    throw new ValidationError(
      `'tool_choice.type' must be one of auto, any, tool, none; got '${type}'`,
      "tool_choice.type",
    );
  if (typeof choice === "object" && !names.has(choice.name))
    c!.fail("name", `names the tool '${choice.name}', which is not among the tools`);
  if (choice === "required" && tools.length === 0) f.fail("tool_choice", "'any' needs 'tools'");
  if (tools.length === 0) return undefined;
  return { tools, choice, parallel: !(c?.boolean("disable_parallel_tool_use") ?? false) };
}

// ---- responses ----

export type StopReason =
  | "end_turn"
  | "max_tokens"
  | "stop_sequence"
  | "tool_use"
  | "model_context_window_exceeded"
  | "refusal";

/**
 * `contextFull`: the answer ended short of max_tokens, where the model's context ran out;
 * `refused`: a remote Anthropic provider's model declined to go on (its client must know).
 */
export function stopReason(
  finish: string,
  calls: number,
  stopSequence: string | undefined,
  contextFull: boolean,
  refused = false,
): StopReason {
  if (refused) return "refusal";
  // The budget first, as Anthropic says it: calls it cut short (closed early to stay valid) are
  // not ones to run. The context's end is not max_tokens's, which a client would raise in vain.
  if (finish === "length") return contextFull ? "model_context_window_exceeded" : "max_tokens";
  if (calls > 0) return "tool_use";
  return stopSequence !== undefined ? "stop_sequence" : "end_turn";
}

export interface AnthropicUsage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
}

/**
 * Anthropic counts cached prompt tokens apart: input_tokens are those prefilled now, less those
 * written to the cache (only a remote Anthropic provider's cache reports writes).
 */
export function anthropicUsage(
  promptTokens: number,
  outputTokens: number,
  cachedTokens: number,
  cacheWriteTokens = 0,
): AnthropicUsage {
  return {
    input_tokens: promptTokens - cachedTokens - cacheWriteTokens,
    output_tokens: outputTokens,
    cache_creation_input_tokens: cacheWriteTokens,
    cache_read_input_tokens: cachedTokens,
  };
}

export type ContentBlock =
  | ThinkingBlock
  | { type: "text"; text: string }
  | { type: "tool_use"; id: string; name: string; input: Record<string, unknown> };

export const toolUseBlock = (call: ToolCall): ContentBlock => ({
  type: "tool_use",
  id: call.id,
  name: call.name,
  input: call.arguments,
});

export const messageId = () => `msg_${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;

/** The error types Anthropic's clients know, by status. */
const ERROR_TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  413: "request_too_large",
  429: "rate_limit_error",
  504: "timeout_error",
  529: "overloaded_error",
};

/** A status's Anthropic error type (its clients retry on overloaded_error, 529, as on a 500). */
export function anthropicErrorType(status: number): string {
  return ERROR_TYPES[status] ?? (status >= 500 ? "api_error" : "invalid_request_error");
}

/** The status an Anthropic error type stands for (an error event in a stream has no status of its own); undefined for one it does not document. */
export function anthropicErrorStatus(type: unknown): number | undefined {
  if (type === "api_error") return 500;
  const found = Object.entries(ERROR_TYPES).find(([, t]) => t === type);
  return found && Number(found[0]);
}

/** A model as Anthropic's models API describes one, from OpenAI's description of it. */
export const anthropicModel = (m: { id: string; created: number }) => ({
  type: "model" as const,
  id: m.id,
  display_name: m.id,
  created_at: new Date(m.created * 1000).toISOString(),
  // Required by the SDKs' ModelInfo: a model served here is callable.
  lifecycle: "active" as const,
});

/**
 * Anthropic's page of models: `limit` of them (default 20, up to 1,000), from the start, after
 * `after_id`, or the last ones before `before_id`; `has_more` says whether that direction holds more.
 */
export function anthropicModelList(models: { id: string; created: number }[], query: Record<string, string> = {}) {
  Fields.of(query).onlyKnown(["limit", "after_id", "before_id"]);
  const limit = Number(query.limit ?? 20);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000)
    throw new ValidationError(`'limit' must be a whole number from 1 to 1000, got '${query.limit}'`, "limit");
  const { after_id: after, before_id: before } = query;
  if (after !== undefined && before !== undefined)
    throw new ValidationError("'after_id' and 'before_id' cannot be given together", "before_id");
  const position = (param: string, id: string) => {
    const i = models.findIndex((m) => m.id === id);
    if (i < 0) throw new ValidationError(`'${param}' names no model served here: '${id}'`, param);
    return i;
  };
  const end = before === undefined ? models.length : position("before_id", before);
  const start = after === undefined ? 0 : position("after_id", after) + 1;
  const [from, to] = before === undefined ? [start, Math.min(end, start + limit)] : [Math.max(0, end - limit), end];
  const data = models.slice(from, to).map(anthropicModel);
  const has_more = before === undefined ? to < models.length : from > 0;
  return { data, has_more, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null };
}
