// The OpenAI Responses API: /v1/responses, whole or streamed as its typed events (each with a
// sequence number): the response created, each output item added (a message whose text comes as
// output_text deltas, or a function call whose arguments come as one delta), then completed.
// A stored response's conversation can be continued with `previous_response_id`.
import { Hono, type Context } from "hono";
import {
  checkRetrieveQuery,
  functionCallItem,
  inputItemsPage,
  messageItem,
  type ItemStatus,
  type NamespacedName,
  outputText,
  parseResponsesRequest,
  reasoningItem,
  reasoningText,
  responseId,
  responsesUsage,
  type ResponsesRequest,
} from "../../api/responses";
import { toolResultName } from "../../api/tools";
import { Fields, readJson } from "../../api/validate";
import type { GenerationUsage } from "../../engine/scheduler";
import { ToolCallStream, type ConversationMessage, type ToolCall, type ToolCallDelta } from "../../engine/tools";
import { ApiError, errorBody } from "../errors";
import { ResponseStore, type StoredResponse } from "../response-store";
import { chatLogprobs, httpRequestBounds, requestedModel, startGeneration, type Generation } from "../generation";
import {
  closedEarlyHeaders,
  collectGeneration,
  eventStreamHeaders,
  generationStream,
  namedEvent,
  type Send,
} from "../respond";
import type { ServerState } from "../state";
import { unixSeconds, type ChatLogprob } from "../../api/openai";

/** Stored conversations: how many, and for how long (how many bytes: serve's config). */
const STORED_RESPONSES = 1000;
const STORED_FOR_MS = 60 * 60_000;

/**
 * Keeps a finished response and the conversation it ended (when its request asked to store it),
 * its reasoning included: continuing it reads what sending its output items back would.
 */
type Keep = (content: string, calls: ToolCall[], reasoning: string, response: StoredResponse["response"]) => void;

export function responsesRoutes(s: ServerState): Hono {
  const r = new Hono();
  const stored = new ResponseStore(STORED_RESPONSES, STORED_FOR_MS, s.config.storedResponseBytes);
  r.post("/v1/responses", (c) => respond(s, c, stored));
  r.get("/v1/responses/:id", (c) => {
    checkRetrieveQuery(c.req.query());
    return c.json(storedResponse(stored, c.req.param("id")).response);
  });
  r.get("/v1/responses/:id/input_items", (c) =>
    c.json(inputItemsPage(storedResponse(stored, c.req.param("id")).inputItems, c.req.query())),
  );
  r.delete("/v1/responses/:id", (c) => {
    const id = c.req.param("id");
    if (!stored.delete(id)) throw responseNotFound(id, null);
    return c.json({ id, object: "response.deleted", deleted: true });
  });
  return r;
}

function storedResponse(stored: ResponseStore, id: string): StoredResponse {
  const entry = stored.get(id);
  if (!entry) throw responseNotFound(id, null);
  return entry;
}

const responseNotFound = (id: string, param: string | null) =>
  new ApiError(
    404,
    `no stored response '${id}' (unknown, expired, evicted to bound memory, or created with store: false)`,
    "invalid_request_error",
    param,
    "response_not_found",
  );

async function respond(s: ServerState, c: Context, stored: ResponseStore): Promise<Response> {
  const req = parseResponsesRequest(withReferencedItems(await readJson(c.req), stored));
  const model = requestedModel(s.config, req.model);
  const previous = req.previousResponseId === undefined ? undefined : stored.get(req.previousResponseId);
  if (req.previousResponseId !== undefined && !previous)
    throw responseNotFound(req.previousResponseId, "previous_response_id");
  const history = previous?.messages ?? [];
  const conversation = [...history, ...withCallNames(history, req.input)];
  // What the response reads: the earlier response's input and output, then this request's input.
  const inputItems = [...(previous ? [...previous.inputItems, ...previous.response.output] : []), ...req.inputItems];
  const messages: ConversationMessage[] = req.instructions
    ? [{ role: "system", content: req.instructions }, ...conversation]
    : conversation;
  const gen = await startGeneration(s, {
    ...httpRequestBounds(s.config, c.req),
    model,
    prompt: { kind: "chat", messages, param: "input" },
    sampling: req.sampling,
    defaults: { temperature: 1, topP: 1 },
    maxTokens: req.maxTokens,
    maxTokensParam: "max_output_tokens",
    strictMaxTokens: true,
    format: req.format,
    tools: req.tools,
    thinking: req.thinking,
    hints: req.hints,
    logprobs: req.logprobs,
    topLogprobs: req.topLogprobs,
  });
  const base = responseBase(req, model, gen.sampling);
  const keep: Keep = (content, calls, reasoning, response) => {
    if (req.store)
      stored.set(base.id, {
        messages: [
          ...conversation,
          {
            role: "assistant",
            content,
            ...(calls.length > 0 ? { toolCalls: calls } : {}),
            ...(reasoning ? { reasoning } : {}),
          },
        ],
        inputItems,
        response,
      });
  };
  return req.stream ? streamed(s, gen, base, keep, req) : whole(gen, base, keep, req);
}

/**
 * The request with each input item of type `item_reference` replaced by the stored item it names
 * (an earlier response's output or input item). The AI SDK's OpenAI provider sends one for each
 * item of a stored response it gives back: every later turn of its conversations.
 */
function withReferencedItems(body: unknown, stored: ResponseStore): unknown {
  const input = (body as { input?: unknown } | null)?.input;
  const isReference = (item: unknown) => (item as { type?: unknown } | null)?.type === "item_reference";
  if (!Array.isArray(input) || !input.some(isReference)) return body;
  const resolved = input.map((item, i) => {
    if (!isReference(item)) return item;
    const reference = Fields.item(item, `input.${i}`);
    reference.onlyKnown(["type", "id"]);
    const id = reference.string("id", { required: true, nonEmpty: true })!;
    const found = stored.item(id);
    if (!found)
      throw new ApiError(
        404,
        `no stored item '${id}' (unknown, expired, evicted to bound memory, or of a response created with store: false)`,
        "invalid_request_error",
        `input.${i}.id`,
        "item_not_found",
      );
    return found;
  });
  return { ...(body as object), input: resolved };
}

/**
 * The input's results of calls the stored conversation made, named after their function (the
 * parser could name only those answering calls of the same request): templates may render it.
 */
const withCallNames = (history: ConversationMessage[], input: ConversationMessage[]) =>
  input.map((m) =>
    m.role === "tool" && m.toolName === undefined && m.toolCallId
      ? { ...m, toolName: toolResultName(history, m.toolCallId) }
      : m,
  );

type Base = ReturnType<typeof responseBase>;

/** The fields every response object repeats from its request. */
/** `sampling`: what the generation runs with (a request that sets no temperature gets the model's, not 1). */
function responseBase(req: ResponsesRequest, model: string, sampling?: { temperature: number; topP: number }) {
  return {
    id: responseId("resp"),
    object: "response" as const,
    created_at: unixSeconds(),
    completed_at: null as number | null,
    model,
    instructions: req.instructions,
    previous_response_id: req.previousResponseId ?? null,
    store: req.store,
    error: null,
    metadata: req.metadata,
    parallel_tool_calls: req.tools?.parallel ?? req.parallelToolCalls,
    temperature: sampling?.temperature ?? req.sampling.temperature ?? 1,
    top_p: sampling?.topP ?? req.sampling.topP ?? 1,
    tool_choice: typeof req.toolChoice === "object" ? { type: "function", name: req.toolChoice.name } : req.toolChoice,
    tools: (req.tools?.tools ?? []).map((t) => ({
      type: "function",
      name: t.name,
      description: t.description ?? null,
      parameters: t.parameters,
      // As the client set it; unset, OpenAI's default (true), which the call's grammar keeps here.
      strict: t.strict ?? true,
    })),
    text: { format: req.textFormat },
    reasoning: req.reasoning,
    // The end user's hints as sent (they change nothing here; see RequestHints).
    ...(req.hints.user !== undefined && { user: req.hints.user }),
    safety_identifier: req.hints.safetyIdentifier ?? null,
    prompt_cache_key: req.hints.promptCacheKey ?? null,
    prompt_cache_retention: req.hints.promptCacheRetention ?? null,
    max_tool_calls: req.maxToolCalls,
    max_output_tokens: req.maxTokens ?? null,
    top_logprobs: req.topLogprobs,
    // The only values we take (see onlyDefaults).
    background: false,
    truncation: "disabled",
  };
}

function finished(base: Base, output: { id: string }[], finishReason: string, u: GenerationUsage) {
  const incomplete = finishReason === "length";
  return {
    ...base,
    // As OpenAI's: set on a completed response only (in progress, cut or failed: null).
    completed_at: incomplete ? null : unixSeconds(),
    status: incomplete ? ("incomplete" as const) : ("completed" as const),
    incomplete_details: incomplete ? { reason: "max_output_tokens" } : null,
    output,
    usage: responsesUsage(u.promptTokens, u.completionTokens, u.cachedTokens, u.reasoningTokens),
  };
}

/** A failed response's error code: OpenAI's for a rate limit, a prompt it refused, or anything else. */
const failedCode = (status: number) =>
  status === 429 ? "rate_limit_exceeded" : status >= 400 && status < 500 ? "invalid_prompt" : "server_error";

/** A message or call the token budget cut (a call closed early to stay valid) is incomplete, as the response is. */
const itemStatus = (finishReason: string): ItemStatus => (finishReason === "length" ? "incomplete" : "completed");

function outputItems(
  content: string,
  calls: ToolCall[],
  namespaced: Map<string, NamespacedName>,
  messageId: string,
  reasoning = "",
  status: ItemStatus = "completed",
  logprobs: ChatLogprob[] = [],
) {
  return [
    // Reasoning the answer or a call followed was finished; else the budget may have cut it.
    ...(reasoning
      ? [reasoningItem(responseId("rs"), reasoning, content || calls.length > 0 ? "completed" : status)]
      : []),
    // An empty answer is still a message, unless reasoning (the budget ran out in it) came instead.
    ...(content || (calls.length === 0 && !reasoning) ? [messageItem(messageId, content, status, logprobs)] : []),
    ...calls.map((call) => functionCallItem(call, status, namespaced)),
  ];
}

async function whole(gen: Generation, base: Base, keep: Keep, req: ResponsesRequest): Promise<Response> {
  const result = await collectGeneration(gen);
  if (!result) return new Response(null, { status: 499 }); // the client is gone
  const { content, calls } = gen.toolFormat ? gen.toolFormat.parse(result.text) : { content: result.text, calls: [] };
  const { finishReason, usage } = result.done;
  const response = finished(
    base,
    outputItems(
      content,
      calls,
      req.namespaced,
      responseId("msg"),
      result.reasoning,
      itemStatus(finishReason),
      req.logprobs ? chatLogprobs(gen.tokenizer!, result.tokens, result.top) : [],
    ),
    finishReason,
    usage,
  );
  keep(content, calls, result.reasoning, response);
  return Response.json(response, { headers: closedEarlyHeaders(gen) });
}

function streamed(s: ServerState, gen: Generation, base: Base, keep: Keep, req: ResponsesRequest): Response {
  const { namespaced } = req;
  const toolCalls = gen.toolFormat && new ToolCallStream(gen.toolFormat);
  let messageId = responseId("msg");
  const reasoningId = responseId("rs");
  let sequence = 0;
  /** The answer's text, and the text of the message item open now (prose after calls is a message of its own). */
  let text = "";
  let messageText = "";
  let reasoning = "";
  let messageOpen = false;
  let reasoningOpen = false;
  const output: { id: string }[] = [];
  const emit = (send: Send, data: { type: string; [field: string]: unknown }) =>
    send(namedEvent({ ...data, sequence_number: sequence++ }));
  let part = { item_id: messageId, output_index: 0, content_index: 0 };
  const reasoningPart = { item_id: reasoningId, output_index: 0, content_index: 0 };
  // The reasoning comes first and is done once the answer (or a call) begins.
  const closeReasoning = (send: Send, status: ItemStatus = "completed") => {
    if (!reasoningOpen) return;
    reasoningOpen = false;
    emit(send, { type: "response.reasoning_text.done", ...reasoningPart, text: reasoning });
    emit(send, { type: "response.content_part.done", ...reasoningPart, part: reasoningText(reasoning) });
    output.push(reasoningItem(reasoningId, reasoning, status));
    emit(send, { type: "response.output_item.done", output_index: 0, item: output[0] });
  };
  const sendReasoning = (delta: string | undefined, send: Send) => {
    if (!delta) return;
    if (!reasoningOpen) {
      reasoningOpen = true;
      emit(send, {
        type: "response.output_item.added",
        output_index: 0,
        item: reasoningItem(reasoningId, "", "in_progress"),
      });
      emit(send, { type: "response.content_part.added", ...reasoningPart, part: reasoningText("") });
    }
    reasoning += delta;
    emit(send, { type: "response.reasoning_text.delta", ...reasoningPart, delta });
  };
  // Each token's logprob goes out with the next answer text (a call's or the reasoning's tokens
  // with what follows them, or as the message closes), so the deltas' add up to the whole answer's.
  let logprobs: ChatLogprob[] = [];
  let pending: ChatLogprob[] = [];
  const openMessage = (send: Send) => {
    if (messageOpen) return;
    closeReasoning(send);
    messageOpen = true;
    if (output.some((item) => item.id === messageId)) {
      // Prose after calls: a message of its own.
      messageId = responseId("msg");
      messageText = "";
      logprobs = [];
    }
    part = { item_id: messageId, output_index: output.length, content_index: 0 };
    emit(send, {
      type: "response.output_item.added",
      output_index: part.output_index,
      item: messageItem(messageId, "", "in_progress"),
    });
    emit(send, { type: "response.content_part.added", ...part, part: outputText("") });
  };
  const closeMessage = (send: Send, status: ItemStatus) => {
    if (!messageOpen) return;
    messageOpen = false;
    // Tokens no text followed (an answer cut within a character) go in a delta of no text, as
    // chat completions send theirs in a chunk of no content: else only the done event had them.
    if (pending.length > 0) emit(send, { type: "response.output_text.delta", ...part, delta: "", logprobs: pending });
    logprobs.push(...pending);
    pending = [];
    emit(send, { type: "response.output_text.done", ...part, text: messageText, logprobs });
    emit(send, { type: "response.content_part.done", ...part, part: outputText(messageText, logprobs) });
    output.push(messageItem(messageId, messageText, status, logprobs));
    emit(send, { type: "response.output_item.done", output_index: part.output_index, item: output.at(-1) });
  };
  const sendText = (delta: string, send: Send) => {
    if (!delta) return;
    openMessage(send);
    text += delta;
    messageText += delta;
    logprobs.push(...pending);
    emit(send, { type: "response.output_text.delta", ...part, delta, logprobs: pending });
    pending = [];
  };
  // Each call as it is written: its item added (arguments ""), its arguments in pieces, then done
  // (a call that did not read, cut off by the budget or a stop string, is done incomplete).
  const callItems = new Map<number, { output_index: number; item_id: string }>();
  const sendCalls = (deltas: ToolCallDelta[], send: Send, finishReason?: string) => {
    for (const d of deltas) {
      if (d.type === "start") {
        closeReasoning(send);
        closeMessage(send, "completed");
        const item = functionCallItem({ id: d.id, name: d.name, arguments: {} }, "in_progress", namespaced, "");
        callItems.set(d.index, { output_index: output.length, item_id: item.id });
        emit(send, { type: "response.output_item.added", output_index: output.length, item });
        output.push(item);
      } else if (d.type === "arguments") {
        emit(send, { type: "response.function_call_arguments.delta", ...callItems.get(d.index)!, delta: d.delta });
      } else {
        const { output_index, item_id } = callItems.get(d.index)!;
        const announced = output[output_index] as ReturnType<typeof functionCallItem>;
        const item = d.call
          ? functionCallItem(d.call, itemStatus(finishReason ?? "stop"), namespaced, d.arguments)
          : { ...announced, arguments: d.arguments, status: "incomplete" as const };
        if (d.call) {
          emit(send, {
            type: "response.function_call_arguments.done",
            item_id,
            output_index,
            name: item.name,
            arguments: item.arguments,
          });
        }
        output[output_index] = item;
        emit(send, { type: "response.output_item.done", output_index, item });
      }
    }
  };
  const body = generationStream(
    gen,
    {
      start: (send) => {
        const response = { ...base, status: "in_progress", incomplete_details: null, output: [], usage: null };
        emit(send, { type: "response.created", response });
        emit(send, { type: "response.in_progress", response });
      },
      text: (e, send) => {
        if (req.logprobs) pending.push(...chatLogprobs(gen.tokenizer!, e.tokens, e.top));
        sendReasoning(e.reasoning, send);
        sendText(toolCalls ? toolCalls.push(e.text) : e.text, send);
        if (toolCalls) sendCalls(toolCalls.callDeltas(), send);
      },
      done: (e, send) => {
        const { content, calls } = toolCalls?.end() ?? { content: "", calls: [] };
        // The prose left comes after the calls already streamed; before calls that come only
        // now, as in the response read whole.
        const streamedCalls = callItems.size > 0;
        if (!streamedCalls) sendText(content, send);
        if (toolCalls) sendCalls(toolCalls.callDeltas(), send, e.finishReason);
        if (streamedCalls) sendText(content, send);
        // Reasoning still open at the end had no answer after it: the budget may have cut it.
        closeReasoning(send, calls.length > 0 ? "completed" : itemStatus(e.finishReason));
        // An empty answer is still a message, as read whole (see outputItems): its events come
        // too, so that a client building the output from them gets the final response's items.
        if (output.length === 0 && calls.length === 0) openMessage(send);
        closeMessage(send, itemStatus(e.finishReason));
        // The items the events announced.
        const response = finished(base, output, e.finishReason, e.usage);
        keep(text, calls, reasoning, response);
        emit(send, { type: e.finishReason === "length" ? "response.incomplete" : "response.completed", response });
      },
      // The stream's error, then the response's own end as OpenAI's ends a failed one: clients
      // wait for one of response.completed, .incomplete or .failed.
      error: (e) => {
        const { error } = errorBody(e, "openai") as { error: { message: string; code: string | null } };
        // The failed response's code is one of OpenAI's response error codes, which the clients'
        // types list (the error event before it carries ours, as any error body does).
        const failed = { code: failedCode(e.status), message: error.message };
        // What was written before the failure, as OpenAI's failed response holds it: an item still
        // open is cut there.
        const written = [
          // A call still being written is cut there too.
          ...output.map((item) =>
            "status" in item && item.status === "in_progress" ? { ...item, status: "incomplete" } : item,
          ),
          ...(reasoningOpen ? [reasoningItem(reasoningId, reasoning, "incomplete")] : []),
          ...(messageOpen ? [messageItem(messageId, messageText, "incomplete", logprobs)] : []),
        ];
        return Buffer.concat([
          namedEvent({
            type: "error",
            code: error.code,
            message: error.message,
            param: e.param,
            sequence_number: sequence++,
          }),
          namedEvent({
            type: "response.failed",
            response: {
              ...base,
              status: "failed",
              error: failed,
              incomplete_details: null,
              output: written,
              usage: null,
            },
            sequence_number: sequence++,
          }),
        ]);
      },
    },
    s,
  );
  return new Response(body, { headers: eventStreamHeaders });
}
