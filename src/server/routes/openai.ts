// OpenAI-compatible routes: /v1/chat/completions, /v1/completions (streamed as server-sent
// events or whole), /v1/models.
import { Hono, type Context } from "hono";
import {
  modelObject,
  newId,
  parseChatRequest,
  parseCompletionRequest,
  unixSeconds,
  usage,
  type ChatLogprob,
  type CompletionLogprobs,
  type OpenAIRequest,
} from "../../api/openai";
import type { TokenLogprob } from "../../engine/scheduler";
import { errorBody } from "../errors";
import { httpRequestBounds, requestedModel, startGeneration, tokenText, type Generation } from "../generation";
import { closedEarly, closedEarlyHeaders, collectGeneration, eventStreamHeaders, generationStream } from "../respond";
import { readJson } from "../../api/validate";
import type { ServerState } from "../state";
import type { Tokenizer } from "../../tokenizer/tokenizer";
import { ToolCallStream, type ToolCall } from "../../engine/tools";

type Kind = "chat" | "completion";

export function openaiRoutes(s: ServerState): Hono {
  const r = new Hono();

  r.get("/v1/models", async (c) => {
    const seen = new Set<string>();
    const data = [];
    for (const e of s.models.loaded) {
      seen.add(e.name);
      data.push(modelObject(e.name, Math.floor(e.loadedAt.getTime() / 1000)));
    }
    if (s.config.defaultModel && !seen.has(s.config.defaultModel)) {
      seen.add(s.config.defaultModel);
      data.push(modelObject(s.config.defaultModel, unixSeconds()));
    }
    for (const name of s.models.adapterNames)
      if (!seen.has(name)) {
        seen.add(name);
        data.push(modelObject(name, unixSeconds()));
      }
    for (const m of await s.models.stored())
      if (!seen.has(m.name)) data.push(modelObject(m.name, Math.floor(Date.parse(m.createdAt) / 1000) || 0));
    return c.json({ object: "list", data });
  });

  r.post("/v1/chat/completions", (c) => complete(s, c, "chat"));
  r.post("/v1/completions", (c) => complete(s, c, "completion"));
  return r;
}

async function complete(s: ServerState, c: Context, kind: Kind): Promise<Response> {
  const body = await readJson(c.req);
  const req = kind === "chat" ? parseChatRequest(body) : parseCompletionRequest(body);
  const model = requestedModel(s.config, req.model);
  const gen = await startGeneration(s, {
    ...httpRequestBounds(s.config, c.req),
    model,
    prompt: req.prompt,
    sampling: req.sampling,
    // OpenAI's documented defaults: temperature 1, top_p 1.
    defaults: { temperature: 1, topP: 1 },
    maxTokens: req.maxTokens,
    strictMaxTokens: true,
    stop: req.stop,
    format: req.format,
    tools: req.tools,
    topLogprobs: req.topLogprobs,
  });
  const meta = { id: newId(kind === "chat" ? "chatcmpl" : "cmpl"), created: unixSeconds(), model };
  return req.stream ? streamed(s, gen, req, kind, meta) : whole(gen, req, kind, meta);
}

interface Meta {
  id: string;
  created: number;
  model: string;
}

function chatLogprobs(tokenizer: Tokenizer, tokens: TokenLogprob[], top: TokenLogprob[][] | undefined): ChatLogprob[] {
  return tokens.map((t, i) => ({
    ...tokenText(tokenizer, t.token),
    logprob: t.logprob,
    top_logprobs: (top?.[i] ?? []).map((a) => ({ ...tokenText(tokenizer, a.token), logprob: a.logprob })),
  }));
}

function completionLogprobs(
  tokenizer: Tokenizer,
  tokens: TokenLogprob[],
  top: TokenLogprob[][] | undefined,
  offset: number,
  k: number,
): CompletionLogprobs {
  const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: k > 0 ? [] : null, text_offset: [] };
  tokens.forEach((t, i) => {
    const text = tokenizer.decode([t.token]);
    out.tokens.push(text);
    out.token_logprobs.push(t.logprob);
    out.text_offset.push(offset);
    offset += text.length;
    if (out.top_logprobs)
      out.top_logprobs.push(Object.fromEntries((top?.[i] ?? []).map((a) => [tokenizer.decode([a.token]), a.logprob])));
  });
  return out;
}

const apiFinishReason = (r: string, calls = 0) => (r === "length" ? "length" : calls > 0 ? "tool_calls" : "stop");

/** Calls as OpenAI writes them: arguments as JSON text; `index` places them in a stream. */
const openaiToolCalls = (calls: ToolCall[], withIndex: boolean) =>
  calls.map((c, index) => ({
    ...(withIndex ? { index } : {}),
    id: c.id,
    type: "function" as const,
    function: { name: c.name, arguments: JSON.stringify(c.arguments) },
  }));

async function whole(gen: Generation, req: OpenAIRequest, kind: Kind, meta: Meta): Promise<Response> {
  const tokenizer = gen.lm.tokenizer;
  const result = await collectGeneration(gen);
  if (!result) return new Response(null, { status: 499 }); // the client is gone
  const { text, tokens, top, done } = result;
  const u = usage(done.usage.promptTokens, done.usage.completionTokens, done.usage.cachedTokens);
  if (kind === "chat") {
    const { content, calls } = gen.toolFormat ? gen.toolFormat.parse(text) : { content: text, calls: [] };
    const finish_reason = apiFinishReason(done.finishReason, calls.length);
    const logprobs = req.logprobs ? { content: chatLogprobs(tokenizer, tokens, top.length ? top : undefined) } : null;
    const message =
      calls.length > 0
        ? { role: "assistant", content: content || null, refusal: null, tool_calls: openaiToolCalls(calls, false) }
        : { role: "assistant", content, refusal: null };
    return Response.json(
      {
        ...meta,
        object: "chat.completion",
        choices: [{ index: 0, message, logprobs, finish_reason, ...closedEarly(gen) }],
        usage: u,
      },
      { headers: closedEarlyHeaders(gen) },
    );
  }
  const finish_reason = apiFinishReason(done.finishReason);
  const logprobs = req.logprobs
    ? completionLogprobs(tokenizer, tokens, top.length ? top : undefined, 0, req.topLogprobs)
    : null;
  return Response.json(
    {
      ...meta,
      object: "text_completion",
      choices: [{ index: 0, text, logprobs, finish_reason, ...closedEarly(gen) }],
      usage: u,
    },
    { headers: closedEarlyHeaders(gen) },
  );
}

const encoder = new TextEncoder();
const sse = (value: unknown) => encoder.encode(`data: ${JSON.stringify(value)}\n\n`);

function streamed(s: ServerState, gen: Generation, req: OpenAIRequest, kind: Kind, meta: Meta): Response {
  const tokenizer = gen.lm.tokenizer;
  const object = kind === "chat" ? "chat.completion.chunk" : "text_completion";
  const extra = req.includeUsage ? { usage: null } : {};
  const chunk = (choice: Record<string, unknown>) => ({
    ...meta,
    object,
    choices: [{ index: 0, logprobs: null, finish_reason: null, ...choice }],
    ...extra,
  });
  let offset = 0;
  const toolCalls = gen.toolFormat && new ToolCallStream(gen.toolFormat);
  const body = generationStream(
    gen,
    {
      start: (send) => {
        if (kind === "chat") send(sse(chunk({ delta: { role: "assistant", content: "" } })));
      },
      text: (event, send) => {
        const text = toolCalls ? toolCalls.push(event.text) : event.text;
        if (!text && !(req.logprobs && event.tokens.length > 0)) return;
        if (kind === "chat") {
          const logprobs = req.logprobs ? { content: chatLogprobs(tokenizer, event.tokens, event.top) } : null;
          send(sse(chunk({ delta: { content: text }, logprobs })));
        } else {
          const logprobs = req.logprobs
            ? completionLogprobs(tokenizer, event.tokens, event.top, offset, req.topLogprobs)
            : null;
          offset += event.text.length;
          send(sse(chunk({ text: event.text, logprobs })));
        }
      },
      done: (event, send) => {
        const { content, calls } = toolCalls?.end() ?? { content: "", calls: [] };
        if (content) send(sse(chunk({ delta: { content } })));
        if (calls.length > 0) send(sse(chunk({ delta: { tool_calls: openaiToolCalls(calls, true) } })));
        const finish_reason = apiFinishReason(event.finishReason, calls.length);
        send(
          sse(
            chunk(
              kind === "chat"
                ? { delta: {}, finish_reason, ...closedEarly(gen) }
                : { text: "", finish_reason, ...closedEarly(gen) },
            ),
          ),
        );
        if (req.includeUsage) {
          const u = event.usage;
          send(sse({ ...meta, object, choices: [], usage: usage(u.promptTokens, u.completionTokens, u.cachedTokens) }));
        }
      },
      error: (e) => sse(errorBody(e, "openai")),
      end: (send) => send(encoder.encode("data: [DONE]\n\n")),
    },
    s.logError,
  );
  return new Response(body, { headers: eventStreamHeaders });
}
