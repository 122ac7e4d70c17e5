// The OpenAI Responses API (/v1/responses): the request's input items reduced to conversation
// messages (the instructions apart: they are not carried on to a follow-up response), its
// function tools and text format; and the builders of output items and usage.
import type { ConversationMessage, ToolCall, ToolChoice, ToolRequest, ToolSpec } from "../engine/tools";
import type { FormatInput, RequestHints, SamplingInput, ThinkingRequest } from "./common";
import { REASONING_EFFORTS, TEXT_PARTS_SEPARATOR } from "./common";
import { OPENAI_SERVED_TIERS, requestHints, streamOptions } from "./openai";
import { MAX_TOOLS, callArguments, toolResultName, toolSpec } from "./tools";
import { Fields, ValidationError, serviceTier, unsupported } from "./validate";

export interface ResponsesRequest {
  model?: string;
  /** The input items as messages, without the instructions. */
  input: ConversationMessage[];
  /** The input items as GET /v1/responses/{id}/input_items lists them. */
  inputItems: InputItem[];
  instructions: string | null;
  /** Echoed on the response: the client's tags for it. */
  metadata: Record<string, string>;
  /** Whether to keep the conversation so a later request can continue it. */
  store: boolean;
  previousResponseId?: string;
  stream: boolean;
  maxTokens?: number;
  sampling: SamplingInput;
  format?: FormatInput;
  /** `text.format` as the response echoes it (json_schema's name included). */
  textFormat: Record<string, unknown>;
  tools?: ToolRequest;
  /** `tool_choice` as sent (default auto), with tools or without. */
  toolChoice: ToolChoice;
  /** `max_tool_calls` as sent, echoed: it bounds calls to built-in tools, which are not offered here (HOSTED_TOOLS). */
  maxToolCalls: number | null;
  /** `parallel_tool_calls` as sent (default true); what calls are made follows tools.parallel. */
  parallelToolCalls: boolean;
  /** Whether each answer token's logprob is asked for (include message.output_text.logprobs), and how many alternatives. */
  logprobs: boolean;
  topLogprobs: number;
  /** The functions of `namespace` tools, by the name the model calls them (see namespacedName). */
  namespaced: Map<string, NamespacedName>;
  thinking?: ThinkingRequest;
  /** `reasoning` as the response echoes it (OpenAI's nulls where unset). */
  reasoning: { effort: string | null; summary: string | null };
  hints: RequestHints;
}

/** A function of a `namespace` tool (how Codex groups its multi-agent and MCP tools): its two names. */
export interface NamespacedName {
  namespace: string;
  name: string;
}

/** The one name the model sees for a namespace's function, as MCP tools are named: `mcp__server__tool`. */
const namespacedName = (n: NamespacedName) => `${n.namespace}__${n.name}`;

/**
 * Built-in tools, which OpenAI's servers run (search, files, code, images, remote MCP servers):
 * this server runs none, so they are not offered to the model, as a model without them would not
 * be. Clients such as Codex send web_search with every request.
 */
const HOSTED_TOOLS = new Set([
  "web_search",
  "web_search_preview",
  "file_search",
  "code_interpreter",
  "image_generation",
  "mcp",
]);

/**
 * Strings that change nothing here, so they pass (as Anthropic's `cache_control` does): `user`
 * and `safety_identifier` name the end user to OpenAI, `prompt_cache_key` groups requests for a
 * cache that our prefix cache, matching any shared prefix, does without, and
 * `prompt_cache_retention` says how long to keep it, which our cache's budget decides. A remote
 * provider is sent them (RequestHints).
 */
const HINTS = ["user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention"];

/** The include value that asks for each answer token's logprob (and `top_logprobs` alternatives). */
const LOGPROBS = "message.output_text.logprobs";

/**
 * `include` values: each answer token's logprob, as chat completions' logprobs; and the reasoning's encrypted content is what a client that stores nothing
 * (store: false) passes back so that the next turn can go on from it; here the reasoning item
 * holds its text whole (reasoning_text content), which such a client (Codex) sends back and the
 * next turn reads, so there is nothing to encrypt, and reasoning items carry `encrypted_content: null`.
 */
const INCLUDABLE = ["reasoning.encrypted_content", LOGPROBS];

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
  ...HINTS,
  "reasoning",
  "background",
  "truncation",
  "include",
  "top_logprobs",
  "service_tier",
  "stream_options",
  // The client's own tags for its logs (Codex's turn ids), as `metadata` but not echoed.
  "client_metadata",
  "max_tool_calls",
]);
const ROLES = new Set(["user", "assistant", "system", "developer"]);

export function parseResponsesRequest(body: unknown): ResponsesRequest {
  const f = Fields.of(body);
  f.onlyKnown(KNOWN);
  onlyDefaults(f);
  const hints = requestHints(f);
  // As on chat completions: the default tiers, and stream_options' include_obfuscation, pass.
  serviceTier(f, OPENAI_SERVED_TIERS);
  const stream = f.boolean("stream") ?? false;
  streamOptions(f, stream, []);
  f.object("client_metadata");
  const include = f.array("include") ?? [];
  for (const [i, value] of include.entries())
    if (typeof value !== "string" || !INCLUDABLE.includes(value))
      throw unsupported(`include.${i}`, `'include' ${JSON.stringify(value)} (only ${INCLUDABLE.join(", ")})`);
  const logprobs = include.includes(LOGPROBS);
  const topLogprobs = f.integer("top_logprobs", { min: 0, max: 20 }) ?? 0;
  if (topLogprobs > 0 && !logprobs)
    throw new ValidationError(`'top_logprobs' needs 'include' to name ${LOGPROBS}`, "top_logprobs");
  const messages: ConversationMessage[] = [];
  const inputItems: InputItem[] = [];
  const input = f.raw("input");
  if (typeof input === "string") {
    if (!input) f.fail("input", "must not be empty");
    messages.push({ role: "user", content: input });
    inputItems.push(listedMessage("user", input));
  } else {
    f.array("input", { required: true, nonEmpty: true, expected: "a string or a list of input items" })!.forEach(
      (raw, i) => {
        const item = Fields.item(raw, `input.${i}`);
        inputItem(item, messages);
        inputItems.push(listedItem(item));
      },
    );
  }
  return {
    model: f.string("model", { nonEmpty: true }),
    input: messages,
    inputItems,
    instructions: f.string("instructions") ?? null,
    metadata: metadataParam(f),
    // OpenAI's default is to store; a client that says nothing gets a response it can continue.
    store: f.boolean("store") ?? true,
    previousResponseId: f.string("previous_response_id", { nonEmpty: true }),
    stream,
    maxTokens: f.integer("max_output_tokens", { min: 1 }),
    sampling: {
      temperature: f.number("temperature", { min: 0, max: 2 }),
      topP: f.number("top_p", { above: 0, max: 1 }),
    },
    ...textFormat(f),
    ...toolRequest(f),
    ...reasoningParam(f),
    maxToolCalls: f.integer("max_tool_calls", { min: 1 }) ?? null,
    hints,
    logprobs,
    topLogprobs,
  };
}

/**
 * `metadata`, echoed on the response: OpenAI's tags, at most 16, each a string of up to 512
 * characters under a key of up to 64 (a number there would reach the client where its types
 * promise a string).
 */
function metadataParam(f: Fields): Record<string, string> {
  const m = f.object("metadata");
  if (!m) return {};
  const keys = Object.keys(m.body);
  if (keys.length > 16) f.fail("metadata", `holds at most 16 keys, got ${keys.length}`);
  return Object.fromEntries(
    keys.map((key) => {
      if (key.length > 64) m.fail(key, `is a key over 64 characters`);
      const value = m.string(key, { required: true })!;
      if (value.length > 512) m.fail(key, `must be at most 512 characters, got ${value.length}`);
      return [key, value];
    }),
  );
}

/**
 * `background` and `truncation` pass at their defaults (false, "disabled": a prompt over the
 * context is a 400), which clients may send as they are; running in the background, or cutting
 * the conversation to fit, we do not implement.
 */
function onlyDefaults(f: Fields): void {
  if (f.boolean("background")) throw unsupported("background");
  const truncation = f.string("truncation");
  if (truncation !== undefined && truncation !== "disabled")
    throw unsupported("truncation", `'truncation' '${truncation}' (only 'disabled')`);
}

/**
 * `reasoning`: {effort} ("none" switches thinking off, any other effort on), and `summary`, which
 * is accepted: no summary is written, the reasoning comes whole instead (its items' content).
 */
function reasoningParam(f: Fields): Pick<ResponsesRequest, "thinking" | "reasoning"> {
  const r = f.object("reasoning");
  r?.onlyKnown(["effort", "summary"]);
  const summary = r?.string("summary");
  if (summary !== undefined && !["auto", "concise", "detailed"].includes(summary))
    r!.fail("summary", `must be one of auto, concise, detailed; got '${summary}'`);
  const effort = r?.string("effort");
  const reasoning = { effort: effort ?? null, summary: summary ?? null };
  if (effort === undefined) return { reasoning };
  if (!REASONING_EFFORTS.includes(effort))
    r!.fail("effort", `must be one of ${REASONING_EFFORTS.join(", ")}; got '${effort}'`);
  return { thinking: { enabled: effort !== "none", param: "reasoning.effort", effort }, reasoning };
}

/** One input item: a message, a function call the model made, or a call's output. */
function inputItem(item: Fields, messages: ConversationMessage[]): void {
  const type = item.string("type") ?? "message";
  if (type === "message") {
    const role = item.string("role", { required: true })!;
    if (!ROLES.has(role)) item.fail("role", `must be one of ${[...ROLES].join(", ")}; got '${role}'`);
    const content = textContent(item, "content");
    // The answer after a reasoning item is the same assistant turn.
    const last = messages.at(-1);
    if (role === "assistant" && last && reasoningAlone(last)) last.content = content;
    else messages.push({ role: role === "developer" ? "system" : role, content });
  } else if (type === "function_call") {
    const name = item.string("name", { required: true, nonEmpty: true })!;
    const namespace = item.string("namespace", { nonEmpty: true });
    const call: ToolCall = {
      id: item.string("call_id", { required: true, nonEmpty: true })!,
      name: namespace === undefined ? name : namespacedName({ namespace, name }),
      arguments: callArguments(item, "json-text"),
    };
    // A call joins the assistant message before it (its text, the calls before it): one assistant
    // turn, as a chat completion's message with tool_calls, and as a stored response keeps it.
    const last = messages.at(-1);
    if (last?.role === "assistant") last.toolCalls = [...(last.toolCalls ?? []), call];
    else messages.push({ role: "assistant", content: "", toolCalls: [call] });
  } else if (type === "function_call_output") {
    const id = item.string("call_id", { required: true, nonEmpty: true })!;
    messages.push({
      role: "tool",
      content: textContent(item, "output"),
      toolCallId: id,
      toolName: toolResultName(messages, id),
    });
  } else if (type === "reasoning") {
    // The reasoning of the assistant turn that follows: a thinking template renders that of the
    // turns after the last user message (a thinking model's multi-step tool calls).
    const text = (item.array("content") ?? [])
      .map((raw, j) => Fields.item(raw, item.name(`content.${j}`)).string("text") ?? "")
      .join("");
    if (text) messages.push({ role: "assistant", content: "", reasoning: text });
  } else throw unsupported(item.name("type"), `input items of type '${type}'`);
}

/** An assistant turn so far made of a reasoning item alone: its answer or calls come next. */
const reasoningAlone = (m: ConversationMessage) =>
  m.role === "assistant" && m.reasoning !== undefined && !m.content && !m.toolCalls;

/** A message's `content` or a call's `output`: a string, or text parts (no images or files). */
function textContent(item: Fields, field: "content" | "output"): string {
  const content = item.raw(field);
  if (typeof content === "string") return content;
  return item
    .array(field, { required: true, expected: "a string or a list of content parts" })!
    .map((raw, j) => {
      const part = Fields.item(raw, item.name(`${field}.${j}`));
      const type = part.string("type", { required: true })!;
      // An assistant turn that declined is replayed with its refusal as what it said.
      if (type === "refusal" && item.raw("role") === "assistant") return part.string("refusal", { required: true })!;
      if (type !== "input_text" && type !== "output_text")
        throw unsupported(part.name("type"), `content of type '${type}'`);
      return part.string("text", { required: true })!;
    })
    .join(TEXT_PARTS_SEPARATOR);
}

export interface InputItem {
  id: string;
  type: string;
  [field: string]: unknown;
}

/** Ids OpenAI gives input items by type (one an item came with is kept). */
const ITEM_ID_PREFIXES: Record<string, string> = { function_call: "fc", function_call_output: "fco", reasoning: "rs" };

/** An input item (already checked by inputItem) as it is listed: with an id and a status, a message's text as parts. */
function listedItem(item: Fields): InputItem {
  const type = item.string("type") ?? "message";
  const id = item.string("id", { nonEmpty: true });
  if (type === "message") {
    const role = item.string("role")!;
    const content = item.raw("content");
    return typeof content === "string" ? listedMessage(role, content, id) : { ...listedMessage(role, "", id), content };
  }
  return { ...item.body, type, id: id ?? responseId(ITEM_ID_PREFIXES[type] ?? "item"), status: "completed" };
}

const listedMessage = (role: string, text: string, id = responseId("msg")): InputItem => ({
  type: "message",
  id,
  role,
  status: "completed",
  content: [role === "assistant" ? outputText(text) : { type: "input_text", text }],
});

/**
 * GET /v1/responses/{id} returns the stored response as it is: its query fields (`stream` to
 * replay the events, `starting_after`, `include`) are refused, else the SDK's
 * `retrieve(id, { stream: true })` would read the JSON as an empty stream, without an error.
 */
export function checkRetrieveQuery(query: Record<string, string>): void {
  Fields.of(query).onlyKnown([]);
}

/**
 * One page of a stored response's input items (GET /v1/responses/{id}/input_items): `order`
 * desc (the newest first, OpenAI's default) or asc, the items `after` an item id, `limit` 1 to 100 (default 20).
 */
export function inputItemsPage(items: { id: string }[], query: Record<string, string>) {
  Fields.of(query).onlyKnown(["limit", "order", "after"]);
  const limit = Number(query.limit ?? 20);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100)
    throw new ValidationError(`'limit' must be a whole number from 1 to 100, got '${query.limit}'`, "limit");
  const order = query.order ?? "desc";
  if (order !== "asc" && order !== "desc")
    throw new ValidationError(`'order' must be asc or desc, got '${order}'`, "order");
  const ordered = order === "asc" ? items : items.toReversed();
  let start = 0;
  if (query.after !== undefined) {
    start = ordered.findIndex((item) => item.id === query.after) + 1;
    if (start === 0)
      throw new ValidationError(`'after' names no input item of this response: '${query.after}'`, "after");
  }
  const data = ordered.slice(start, start + limit);
  return {
    object: "list" as const,
    data,
    first_id: data[0]?.id ?? null,
    last_id: data.at(-1)?.id ?? null,
    has_more: start + limit < ordered.length,
  };
}

/** text.format: text, json_object, or json_schema {name, description, schema, strict}; and how the response echoes it (as sent). */
function textFormat(f: Fields): { format?: FormatInput; textFormat: Record<string, unknown> } {
  const text = f.object("text");
  // `verbosity` we cannot honour (chat completions refuses it too), so it is a 400, not ignored.
  text?.onlyKnown(["format"]);
  const format = text?.object("format");
  const type = format?.string("type", { required: true }) ?? "text";
  // As response_format's: a key the type does not read (a schema beside json_object) is refused.
  format?.onlyKnown(type === "json_schema" ? ["type", "name", "description", "schema", "strict"] : ["type"]);
  if (!format || type === "text") return { textFormat: { type: "text" } };
  if (type === "json_object") return { format: { format: "json", param: "text.format" }, textFormat: { type } };
  if (type !== "json_schema") format.fail("type", `must be one of text, json_object, json_schema; got '${type}'`);
  const name = format.string("name", { required: true, nonEmpty: true })!;
  const schema = format.object("schema") ?? format.fail("schema", "must be a JSON Schema object");
  const strict = format.boolean("strict") ?? false;
  const description = format.string("description");
  return {
    format: { format: { schema: schema.body, strict }, param: "text.format.schema", name, description },
    textFormat: { type, name, ...(description !== undefined && { description }), schema: schema.body, strict },
  };
}

/**
 * `tools` ({type: "function", name, description, parameters}; a `namespace` of such functions;
 * built-in tools, not offered) and `tool_choice`.
 */
function toolRequest(f: Fields): Pick<ResponsesRequest, "tools" | "namespaced" | "toolChoice" | "parallelToolCalls"> {
  const names = new Set<string>();
  const namespaced = new Map<string, NamespacedName>();
  const tools: ToolSpec[] = (f.array("tools", { max: MAX_TOOLS }) ?? []).flatMap((item, i) => {
    const tool = Fields.item(item, `tools.${i}`);
    const type = tool.string("type", { required: true })!;
    if (type === "namespace") return namespaceTools(tool, names, namespaced);
    if (HOSTED_TOOLS.has(type)) return [];
    if (type !== "function") throw unsupported(tool.name("type"), `tools of type '${type}' (only 'function')`);
    return [toolSpec(tool, "parameters", names)];
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
    const name = c.string("name", { required: true, nonEmpty: true })!;
    const namespace = c.string("namespace", { nonEmpty: true });
    choice = { name: namespace === undefined ? name : namespacedName({ namespace, name }) };
    if (!names.has(choice.name)) c.fail("name", `names the function '${name}', which is not among the tools`);
  }
  if (choice === "required" && tools.length === 0)
    throw new ValidationError("'tool_choice' 'required' needs 'tools'", "tool_choice");
  // Read with tools or without, so that a value of the wrong type is a 400 either way.
  const parallelToolCalls = f.boolean("parallel_tool_calls") ?? true;
  if (tools.length === 0) return { namespaced, toolChoice: choice, parallelToolCalls };
  // As in chat completions (see toolRequest in ./tools): a forced function is called exactly once.
  const parallel = parallelToolCalls && typeof choice !== "object";
  return { tools: { tools, choice, parallel }, namespaced, toolChoice: choice, parallelToolCalls };
}

/** A `namespace` tool's functions, each offered by its namespaced name, its description after the namespace's. */
function namespaceTools(tool: Fields, names: Set<string>, namespaced: Map<string, NamespacedName>): ToolSpec[] {
  tool.onlyKnown(["type", "name", "description", "tools"]);
  const namespace = tool.string("name", { required: true, nonEmpty: true })!;
  const about = tool.string("description");
  return tool.array("tools", { required: true, max: MAX_TOOLS })!.map((item, j) => {
    const fn = Fields.item(item, tool.name(`tools.${j}`));
    const type = fn.string("type", { required: true })!;
    if (type !== "function") throw unsupported(fn.name("type"), `namespace tools of type '${type}' (only 'function')`);
    const spec = toolSpec(fn, "parameters", new Set());
    const parts = { namespace, name: spec.name };
    const name = namespacedName(parts);
    if (names.has(name)) fn.fail("name", `repeats the function name '${name}'`);
    names.add(name);
    namespaced.set(name, parts);
    const description = [about, spec.description].filter(Boolean).join("\n\n") || undefined;
    return { ...spec, name, description };
  });
}

// ---- responses ----

export const responseId = (prefix: string) => `${prefix}_${crypto.randomUUID().replaceAll("-", "")}`;

export function responsesUsage(promptTokens: number, outputTokens: number, cachedTokens: number, reasoningTokens = 0) {
  return {
    input_tokens: promptTokens,
    // cache_write_tokens: the SDKs' types require it; as Anthropic's cache_creation_input_tokens, none are counted here.
    input_tokens_details: { cached_tokens: cachedTokens, cache_write_tokens: 0 },
    output_tokens: outputTokens,
    output_tokens_details: { reasoning_tokens: reasoningTokens },
    total_tokens: promptTokens + outputTokens,
  };
}

export type ItemStatus = "in_progress" | "completed" | "incomplete";

export const messageItem = (id: string, text: string, status: ItemStatus, logprobs: unknown[] = []) => ({
  type: "message" as const,
  id,
  status,
  role: "assistant" as const,
  // An item just added (in progress) has no content yet; a finished one, whole or cut, has its text.
  content: status === "in_progress" ? [] : [outputText(text, logprobs)],
});

/** A thinking model's reasoning: whole, as reasoning_text (no summary; nothing to pass back, see INCLUDABLE). */
export const reasoningItem = (id: string, text: string, status: ItemStatus) => ({
  type: "reasoning" as const,
  id,
  status,
  summary: [],
  content: status === "in_progress" ? [] : [reasoningText(text)],
  encrypted_content: null,
});

export const reasoningText = (text: string) => ({ type: "reasoning_text" as const, text });

export const outputText = (text: string, logprobs: unknown[] = []) => ({
  type: "output_text" as const,
  text,
  annotations: [],
  logprobs,
});

/** A call as its client knows the function: a namespace's by its own name and its namespace's. */
export const functionCallItem = (
  call: ToolCall,
  status: ItemStatus,
  namespaced: Map<string, NamespacedName>,
  args = JSON.stringify(call.arguments),
) => ({
  type: "function_call" as const,
  id: `fc_${call.id}`,
  call_id: call.id,
  ...(namespaced.get(call.name) ?? { name: call.name }),
  arguments: args,
  status,
});
