// Anthropic-compatible routes: /v1/messages (whole, or streamed as Anthropic's named server-sent
// events) and /v1/messages/count_tokens.
import { Hono, type Context } from "hono";
import {
  anthropicUsage,
  messageId,
  parseCountTokensRequest,
  parseMessagesRequest,
  stopReason,
  toolUseBlock,
  type ContentBlock,
  type CountTokensRequest,
} from "../../api/anthropic";
import { applyContextEdits, type AppliedEdit } from "../../api/anthropic-context";
import { readJson } from "../../api/validate";
import { remoteModel } from "../../providers";
import { countPromptTokens } from "../../engine/request";
import { ToolCallStream, type ThinkingBlock, type ToolCallDelta } from "../../engine/tools";
import { errorBody } from "../errors";
import {
  holdModel,
  httpRequestBounds,
  modelPrompt,
  requestedModel,
  startGeneration,
  type Generation,
} from "../generation";
import {
  closedEarlyHeaders,
  collectGeneration,
  eventStreamHeaders,
  generationStream,
  namedEvent,
  type Send,
} from "../respond";
import type { ServerState } from "../state";

export function anthropicRoutes(s: ServerState): Hono {
  const r = new Hono();
  r.post("/v1/messages", (c) => messages(s, c));
  r.post("/v1/messages/count_tokens", async (c) => {
    const req = parseCountTokensRequest(await readJson(c.req));
    const model = requestedModel(s.config, req.model);
    return withPromptCounter(s, c, model, req, async (count) => {
      if (!req.contextEdits) return c.json({ input_tokens: await count(req.prompt) });
      const original = await count(req.prompt);
      const { prompt } = await editedPrompt(req, count);
      return c.json({ input_tokens: await count(prompt), context_management: { original_input_tokens: original } });
    });
  });
  return r;
}

type PromptCounter = (prompt: CountTokensRequest["prompt"]) => Promise<number>;

/**
 * Runs `use` with a counter of prompt tokens as the model reads them, with the request's tools,
 * thinking and output format: a local model's template and tokenizer (the model held meanwhile),
 * or a remote provider's count (Anthropic's count_tokens).
 */
async function withPromptCounter<T>(
  s: ServerState,
  c: Context,
  model: string,
  req: CountTokensRequest,
  use: (count: PromptCounter) => Promise<T>,
): Promise<T> {
  const remote = remoteModel(model);
  if (remote) {
    const { tools, thinking, format } = req;
    return use((prompt) => remote.countTokens({ prompt, sampling: {}, tools, thinking, format }, c.req.raw.signal));
  }
  const lease = await holdModel(s, model, httpRequestBounds(s.config, c.req));
  try {
    const jsonOutput = req.format !== undefined;
    const system = modelPrompt(model);
    return await use((prompt) =>
      countPromptTokens(lease.entry.lm, prompt, req.tools, req.thinking, jsonOutput, system),
    );
  } finally {
    lease.release();
  }
}

/** The request's conversation once its context edits have cleared what they clear, and what each cleared. */
async function editedPrompt(req: CountTokensRequest, count: PromptCounter) {
  const { messages, applied } = await applyContextEdits(req.prompt.messages, req.contextEdits ?? [], (messages) =>
    count({ ...req.prompt, messages }),
  );
  return { prompt: { ...req.prompt, messages }, applied };
}

async function messages(s: ServerState, c: Context): Promise<Response> {
  const req = parseMessagesRequest(await readJson(c.req));
  const model = requestedModel(s.config, req.model);
  const { prompt, applied } = req.contextEdits?.length
    ? await withPromptCounter(s, c, model, req, (count) => editedPrompt(req, count))
    : { prompt: req.prompt, applied: [] };
  // Told only to a client that asked for context management (Anthropic's beta field).
  const contextManagement = req.contextEdits && { context_management: { applied_edits: applied } };
  const gen = await startGeneration(s, {
    ...httpRequestBounds(s.config, c.req),
    model,
    prompt,
    sampling: req.sampling,
    // Anthropic's documented defaults: temperature 1, no top-p or top-k cut.
    defaults: { temperature: 1, topP: 1, topK: 0 },
    maxTokens: req.maxTokens,
    strictMaxTokens: true,
    stop: req.stop,
    tools: req.tools,
    thinking: req.thinking,
    format: req.format,
    hints: req.hints,
  });
  const meta = { id: messageId(), type: "message" as const, role: "assistant" as const, model };
  // A local model's answer that ends short of max_tokens with finish "length" met the end of the
  // context (a remote provider's own limits are not known here), unless the budget closed it
  // early: the grammar may close a structured answer a few tokens before the budget's last.
  const contextFull = (outputTokens: number) =>
    gen.tokenizer !== undefined && !gen.closedEarly() && outputTokens < req.maxTokens;
  return req.stream
    ? streamed(s, gen, meta, contextFull, req.omitThinking, contextManagement)
    : whole(gen, meta, contextFull, req.omitThinking, contextManagement);
}

interface Meta {
  id: string;
  type: "message";
  role: "assistant";
  model: string;
}

/** `context_management` with the edits applied, where the request asked for context management. */
type ContextManagement = { context_management: { applied_edits: AppliedEdit[] } } | undefined;

async function whole(
  gen: Generation,
  meta: Meta,
  contextFull: (outputTokens: number) => boolean,
  omitThinking: boolean,
  contextManagement: ContextManagement,
): Promise<Response> {
  const result = await collectGeneration(gen);
  if (!result) return new Response(null, { status: 499 }); // the client is gone
  const { text, reasoning, thinkingBlocks, done } = result;
  const { content, calls } = gen.toolFormat ? gen.toolFormat.parse(text) : { content: text, calls: [] };
  // An Anthropic provider's blocks as it signed them (the client sends them back to be verified);
  // else no signature: a local model's reasoning has nothing to verify.
  const thinking: ContentBlock[] =
    thinkingBlocks.length > 0
      ? thinkingBlocks.map((b) => (b.type === "thinking" && omitThinking ? { ...b, thinking: "" } : b))
      : reasoning
        ? [{ type: "thinking", thinking: omitThinking ? "" : reasoning, signature: "" }]
        : [];
  const blocks: ContentBlock[] = [
    ...thinking,
    ...(content || calls.length === 0 ? [{ type: "text" as const, text: content }] : []),
    ...calls.map(toolUseBlock),
  ];
  const u = done.usage;
  return Response.json(
    {
      ...meta,
      content: blocks,
      stop_reason: stopReason(
        done.finishReason,
        calls.length,
        done.stopSequence,
        contextFull(u.completionTokens),
        done.refused,
      ),
      stop_sequence: calls.length === 0 ? (done.stopSequence ?? null) : null,
      usage: anthropicUsage(u.promptTokens, u.completionTokens, u.cachedTokens, u.cacheWriteTokens),
      ...contextManagement,
    },
    { headers: closedEarlyHeaders(gen) },
  );
}

/**
 * Anthropic's sequence: message_start, ping, then each content block (start, deltas, stop) —
 * reasoning as a thinking block, text as it comes, each tool call as it is written (its input {}
 * at the start, then input_json_delta pieces) — then message_delta (stop reason, final usage)
 * and message_stop.
 */
function streamed(
  s: ServerState,
  gen: Generation,
  meta: Meta,
  contextFull: (outputTokens: number) => boolean,
  omitThinking: boolean,
  contextManagement: ContextManagement,
): Response {
  const toolCalls = gen.toolFormat && new ToolCallStream(gen.toolFormat);
  let index = 0;
  let open: "thinking" | "text" | "tool_use" | undefined;
  let callBlock: number | undefined; // the call whose block was started last
  let wroteBlock = false; // a text or tool_use block
  // A thinking block ends with its signature: an Anthropic provider's, else none (a local model's).
  const closeBlock = (send: Send, signature = "") => {
    if (open === "thinking")
      send(namedEvent({ type: "content_block_delta", index, delta: { type: "signature_delta", signature } }));
    send(namedEvent({ type: "content_block_stop", index }));
    open = undefined;
    index++;
  };
  const openBlock = (kind: "thinking" | "text", send: Send) => {
    if (open === kind) return;
    if (open) closeBlock(send);
    open = kind;
    const content_block =
      kind === "text" ? { type: "text", text: "" } : { type: "thinking", thinking: "", signature: "" };
    send(namedEvent({ type: "content_block_start", index, content_block }));
  };
  const sendText = (text: string, send: Send) => {
    if (!text) return;
    openBlock("text", send);
    wroteBlock = true;
    send(namedEvent({ type: "content_block_delta", index, delta: { type: "text_delta", text } }));
  };
  // A call's block: started once its function is known, its input in pieces, stopped when the
  // next block starts or at the end (as written so far, where it did not read: the token budget
  // or a stop string cut it off). Blocks follow one another: a call's arguments are all written
  // before the next call starts.
  const sendCalls = (deltas: ToolCallDelta[], send: Send) => {
    for (const d of deltas) {
      if (d.type === "start") {
        if (open) closeBlock(send);
        open = "tool_use";
        wroteBlock = true;
        callBlock = d.index;
        const content_block = { type: "tool_use", id: d.id, name: d.name, input: {} };
        send(namedEvent({ type: "content_block_start", index, content_block }));
      } else if (d.index !== callBlock || open !== "tool_use") continue;
      else if (d.type === "arguments") {
        const delta = { type: "input_json_delta", partial_json: d.delta };
        send(namedEvent({ type: "content_block_delta", index, delta }));
      } else closeBlock(send);
    }
  };
  const sendThinking = (thinking: string | undefined, send: Send) => {
    if (!thinking) return;
    openBlock("thinking", send);
    if (!omitThinking)
      send(namedEvent({ type: "content_block_delta", index, delta: { type: "thinking_delta", thinking } }));
  };
  // An Anthropic provider's thinking block, its reasoning sent as it came: closed with its
  // signature, or (redacted) a block of its own.
  const sendThinkingBlock = (block: ThinkingBlock | undefined, send: Send) => {
    if (block?.type === "thinking") {
      openBlock("thinking", send);
      closeBlock(send, block.signature);
    } else if (block) {
      if (open) closeBlock(send);
      send(namedEvent({ type: "content_block_start", index, content_block: block }));
      send(namedEvent({ type: "content_block_stop", index }));
      index++;
    }
  };
  const body = generationStream(
    gen,
    {
      // Sent once the engine admitted the request, when its prompt's split between the prefix
      // cache and the rest is known, as Anthropic's message_start tells it.
      startAdmitted: true,
      start: (send) => {
        const u = gen.promptUsage();
        const usage = anthropicUsage(u.promptTokens, 0, u.cachedTokens, u.cacheWriteTokens);
        send(
          namedEvent({
            type: "message_start",
            message: { ...meta, content: [], stop_reason: null, stop_sequence: null, usage },
          }),
        );
        send(namedEvent({ type: "ping" }));
      },
      text: (e, send) => {
        sendThinking(e.reasoning, send);
        sendThinkingBlock(e.thinkingBlock, send);
        sendText(toolCalls ? toolCalls.push(e.text) : e.text, send);
        if (toolCalls) sendCalls(toolCalls.callDeltas(), send);
      },
      done: (e, send) => {
        const { content, calls } = toolCalls?.end() ?? { content: "", calls: [] };
        // The text left comes after the calls already streamed; before calls that come only
        // now, as in the message read whole.
        const streamedCalls = callBlock !== undefined;
        if (!streamedCalls) sendText(content, send);
        if (toolCalls) sendCalls(toolCalls.callDeltas(), send);
        if (streamedCalls) sendText(content, send);
        // An answer of neither text nor calls has an empty text block.
        if (!wroteBlock) openBlock("text", send);
        if (open) closeBlock(send);
        const u = e.usage;
        const delta = {
          stop_reason: stopReason(
            e.finishReason,
            calls.length,
            e.stopSequence,
            contextFull(u.completionTokens),
            e.refused,
          ),
          stop_sequence: calls.length === 0 ? (e.stopSequence ?? null) : null,
        };
        send(
          namedEvent({
            type: "message_delta",
            delta,
            usage: anthropicUsage(u.promptTokens, u.completionTokens, u.cachedTokens, u.cacheWriteTokens),
            ...contextManagement,
          }),
        );
        send(namedEvent({ type: "message_stop" }));
      },
      error: (e) => namedEvent(errorBody(e, "anthropic") as { type: string }),
    },
    s,
  );
  return new Response(body, { headers: eventStreamHeaders });
}
