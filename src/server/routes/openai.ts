// OpenAI-compatible routes: /v1/chat/completions, /v1/completions (streamed as server-sent
// events or whole), /v1/models and /v1/models/{id}.
import { Hono, type Context } from "hono";
import {
  modelObject,
  newId,
  parseChatRequest,
  parseCompletionRequest,
  systemFingerprint,
  unixSeconds,
  usage,
  type CompletionLogprobs,
  type OpenAIRequest,
} from "../../api/openai";
import type { GenerationUsage, TokenLogprob } from "../../engine/scheduler";
import { badRequest, ClientGoneError, errorBody, notFound, toApiError } from "../errors";
import { promptLogprobs } from "../../engine/prompt-logprobs";
import {
  chatLogprobs,
  httpRequestBounds,
  requestedModel,
  servedContextLength,
  startGeneration,
  type Generation,
} from "../generation";
import {
  closedEarly,
  closedEarlyHeaders,
  collectGeneration,
  eventStreamHeaders,
  generationStream,
  sendWithin,
  unreadLimit,
  type Send,
} from "../respond";
import { readJson, unsupported } from "../../api/validate";
import { type ServerState, serverStartDate } from "../state";
import type { Tokenizer } from "../../tokenizer/tokenizer";
import { ToolCallStream, type ToolCall, type ToolCallDelta } from "../../engine/tools";
import { remoteModel, remoteModelNames } from "../../providers";
import { anthropicModel, anthropicModelList } from "../../api/anthropic";
import { withoutLatestTag } from "../model-registry";
import { localAliasNames } from "../../store/resolve";

type Kind = "chat" | "completion";

/** Every model a request may name: loaded, the default, adapters, stored, then remote ones. */
async function servedModels(s: ServerState): Promise<ReturnType<typeof modelObject>[]> {
  s.models.forgetRemoved();
  const stored = await s.models.offered();
  // A stored model was created when it was stored, loaded or not: one `created` per model, however often asked.
  const storedAt = new Map(stored.map((m) => [m.name, Math.floor(Date.parse(m.createdAt) / 1000) || 0]));
  const created = (name: string, otherwise: number) => storedAt.get(name) ?? otherwise;
  // Not stored, not loaded: dated by the server's start, so that a list and a lookup agree.
  const started = Math.floor(serverStartDate(s).getTime() / 1000);
  const seen = new Set<string>();
  const data = [];
  // Under each name it was asked by (aliases of the same weights share a loaded model), as /api/ps lists it;
  // "m:latest" that resolved as "m" (Ollama's default tag) as "m", as /api/tags lists it: one model, listed once.
  for (const e of s.models.loaded)
    for (const name of new Set(e.names.map((n) => s.models.resolvedName(n)))) {
      if (seen.has(name)) continue;
      seen.add(name);
      const loadedAt = Math.floor(e.loadedAt.getTime() / 1000);
      data.push(modelObject(name, created(name, loadedAt), servedContextLength(name, e.lm)));
    }
  if (s.config.defaultModel && !seen.has(s.config.defaultModel)) {
    seen.add(s.config.defaultModel);
    data.push(modelObject(s.config.defaultModel, created(s.config.defaultModel, started)));
  }
  for (const name of s.models.servedAdapters.keys())
    if (!seen.has(name)) {
      seen.add(name);
      data.push(modelObject(name, started));
    }
  for (const m of stored)
    if (!seen.has(m.name)) {
      seen.add(m.name);
      data.push(modelObject(m.name, storedAt.get(m.name)!));
    }
  // An alias whose weights are here (a path, a stored model under its own settings) is served by its name.
  // A server that holds one model split across ranks lists that model's aliases it can serve alone (and remote ones).
  for (const name of localAliasNames())
    if (!seen.has(name) && s.models.offersAlias(name)) data.push(modelObject(name, started));
  for (const name of remoteModelNames()) if (!seen.has(name)) data.push(modelObject(name, 0));
  return data;
}

export function openaiRoutes(s: ServerState): Hono {
  const r = new Hono();

  // Anthropic's client asks the same paths (it sends anthropic-version): its shapes for it.
  const anthropic = (c: Context) => c.req.header("anthropic-version") !== undefined;
  r.get("/v1/models", async (c) => {
    const data = await servedModels(s);
    return c.json(anthropic(c) ? anthropicModelList(data, c.req.query()) : { object: "list", data });
  });
  // A model's name may be a path: its slashes are the id's.
  r.get("/v1/models/:id{.+}", async (c) => {
    const id = c.req.param("id");
    // "m:latest" is "m" where no model has that name, as in a request's `model`: found under the id asked.
    const untagged = withoutLatestTag(id);
    const served = await servedModels(s);
    const model = served.find((m) => m.id === id) ?? served.find((m) => m.id === untagged);
    if (!model) throw notFound(`model '${id}' is not served here (GET /v1/models lists them)`, "model_not_found");
    const found = { ...model, id };
    return c.json(anthropic(c) ? anthropicModel(found) : found);
  });

  r.post("/v1/chat/completions", (c) => complete(s, c, "chat"));
  r.post("/v1/completions", (c) => complete(s, c, "completion"));
  return r;
}

async function complete(s: ServerState, c: Context, kind: Kind): Promise<Response> {
  const body = await readJson(c.req);
  const req = kind === "chat" ? parseChatRequest(body) : parseCompletionRequest(body);
  const model = requestedModel(s.config, req.model);
  const choices = req.prompts.length * req.n;
  if (!remoteModel(model)) checkChoicesFit(req, s.config.maxSequences);
  // A remote model's prompt is tokenized by its provider: its tokens, and their logprobs, are not ours to echo.
  else if (req.echo) throw unsupported("echo", "'echo' on a remote model");
  // echo with max_tokens 0 scores the prompt alone: its choices start, reading and checking the
  // prompt as any does, and are stopped once it is echoed.
  const echoOnly = req.echo && req.maxTokens === 0;
  const input = {
    ...httpRequestBounds(s.config, c.req),
    model,
    // OpenAI's documented defaults: temperature 1, top_p 1.
    defaults: { temperature: 1, topP: 1 },
    maxTokens: echoOnly ? 1 : req.maxTokens,
    defaultMaxTokens: req.defaultMaxTokens,
    maxTokensParam: req.maxTokensParam,
    strictMaxTokens: true,
    stop: req.stop,
    format: req.format,
    tools: req.tools,
    logprobs: req.logprobs,
    thinking: req.thinking,
    ignoreEos: req.ignoreEos,
    hints: req.hints,
    controls: req.controls,
    topLogprobs: req.topLogprobs,
  };
  // Each prompt's n choices are n sequences of the model's batch, choice i answering prompt
  // ⌊i / n⌋ (OpenAI's and vLLM's order); a seed gives a prompt's choices their own (seed, seed + 1, ...).
  const seed = req.sampling.seed;
  // Past the largest seed (2^53 - 1) the next ones wrap round to 0: above it, float64 gave
  // seed + 1 and seed + 2 the same value, and two choices the same answer.
  const seedsLeft = seed === undefined ? 0 : Number.MAX_SAFE_INTEGER + 1 - seed;
  const choiceSeed = (choice: number) =>
    seed === undefined ? undefined : choice < seedsLeft ? seed + choice : choice - seedsLeft;
  const gens = await startChoices(choices, (i, first) =>
    startGeneration(s, {
      ...input,
      prompt: req.prompts[Math.floor(i / req.n)]!,
      sampling: { ...req.sampling, seed: choiceSeed(i % req.n) },
      repeatsPrompt: i % req.n > 0,
      heldWith: first?.lease,
    }),
  );
  const echoes = req.echo ? await promptEchoes(gens, req, c.req.raw.signal) : undefined;
  const meta = {
    id: newId(kind === "chat" ? "chatcmpl" : "cmpl"),
    created: unixSeconds(),
    model,
    system_fingerprint: systemFingerprint(model, s.config.version),
  };
  if (echoOnly) return echoedPrompts(gens, req, meta, echoes!);
  return req.stream ? streamed(s, gens, req, kind, meta, echoes) : whole(gens, req, kind, meta, echoes);
}

/**
 * echo with max_tokens 0: each choice is its prompt alone (finish_reason length, no completion
 * tokens), as OpenAI's legacy models and vLLM answer it; its generation is stopped unread.
 */
function echoedPrompts(gens: Generation[], req: OpenAIRequest, meta: Meta, echoes: Echo[]): Response {
  for (const gen of gens) {
    gen.abort();
    gen.finish("length");
  }
  const promptTokens = (index: number) => gens[index]!.promptIds.length;
  const choices = gens.map((_, index) => {
    const echo = echoes[Math.floor(index / req.n)]!;
    return { index, text: echo.text, logprobs: echo.logprobs ?? null, finish_reason: "length" };
  });
  const object = "text_completion";
  const total = usage(
    echoes.reduce((sum, _, p) => sum + promptTokens(p * req.n), 0),
    0,
    0,
  );
  if (!req.stream) return Response.json({ ...meta, object, choices, usage: total });
  const chunkUsage = (index: number) =>
    req.continuousUsage
      ? { usage: { prompt_tokens: promptTokens(index), completion_tokens: 0, total_tokens: promptTokens(index) } }
      : req.includeUsage
        ? { usage: null }
        : {};
  const events = [
    ...choices.map((choice) => sse({ ...meta, object, choices: [choice], ...chunkUsage(choice.index) })),
    ...(req.includeUsage ? [sse({ ...meta, object, choices: [], usage: total })] : []),
    encoder.encode("data: [DONE]\n\n"),
  ];
  return new Response(new Blob(events).stream(), { headers: eventStreamHeaders });
}

/** What echo puts before a prompt's choices: its text and, with logprobs, its tokens'. */
interface Echo {
  text: string;
  logprobs?: CompletionLogprobs;
}

/**
 * Each prompt's echo, as OpenAI's legacy completions and vLLM give it: the prompt as sent (its
 * ids' text for ids, or where truncate_prompt_tokens cut it), and with logprobs each of its
 * tokens' after those before it (the first's null: it follows nothing), computed while its
 * choices generate. Where that fails, or the client goes away, the choices are stopped.
 */
async function promptEchoes(gens: Generation[], req: OpenAIRequest, signal: AbortSignal): Promise<Echo[]> {
  try {
    const echoes: Echo[] = [];
    for (const [p, prompt] of req.prompts.entries()) {
      const gen = gens[p * req.n]!;
      const tokenizer = gen.tokenizer!;
      const ids = gen.promptIds;
      const asSent = prompt.kind === "text" && req.controls.truncatePromptTokens === undefined;
      const text = asSent ? prompt.text : tokenizer.decode(ids);
      if (!req.logprobs) {
        echoes.push({ text });
        continue;
      }
      const lease = gen.lease!;
      const { tokens, top } = await promptLogprobs(lease.entry.lm, ids, req.topLogprobs, {
        adapter: lease.adapter,
        signal,
        // A long prompt holds up the model's streams no longer than a prefill would.
        chunk: lease.entry.scheduler.limits.prefillChunk,
      });
      const logprobs = completionLogprobs(tokenizer, [{ token: ids[0]!, logprob: 0 }, ...tokens], [[], ...top], 0);
      logprobs.token_logprobs[0] = null;
      logprobs.top_logprobs[0] = null;
      echoes.push({ text, logprobs });
    }
    return echoes;
  } catch (error) {
    const cause = signal.aborted
      ? new ClientGoneError("the client went away while its prompt's logprobs were computed")
      : error;
    stopChoices(gens, cause);
    throw cause;
  }
}

/**
 * A request's choices (n per prompt) are sequences of one model's scheduler: more than it can
 * ever hold would be a 429 that no retry could clear, so it is a 400 naming the limit.
 */
function checkChoicesFit(req: OpenAIRequest, maxSequences: number): void {
  const prompts = req.prompts.length;
  if (req.n * prompts <= maxSequences) return;
  const limit = `a model holds at most ${maxSequences} sequences at once (--max-batch plus --max-queue)`;
  if (prompts === 1) throw badRequest(`'n' must be <= ${maxSequences} on this server: ${limit}`, "n");
  throw badRequest(
    `${prompts} prompts × 'n' ${req.n} is more choices than this server's ${maxSequences}: ${limit}`,
    "prompt",
  );
}

/**
 * Starts `n` generations; if one cannot start (its queue full, a later prompt too long), those
 * already started are stopped. Each after the first is given the first (its hold on the model to share).
 */
async function startChoices(
  n: number,
  start: (i: number, first: Generation | undefined) => Promise<Generation>,
): Promise<Generation[]> {
  const gens: Generation[] = [];
  try {
    for (let i = 0; i < n; i++) gens.push(await start(i, gens[0]));
    return gens;
  } catch (error) {
    stopChoices(gens, error);
    throw error;
  }
}

/**
 * Stops choices started for a request that fails before they are read (`error` says why):
 * cancelled, as a choice is, when its client went away or the server cut it short, and not counted
 * at all when the request was refused (a 4xx), as a refused request of one choice is not.
 */
function stopChoices(gens: Generation[], error: unknown): void {
  const status = toApiError(error).status;
  const refused = status >= 400 && status < 500 && status !== 499;
  for (const gen of gens) {
    gen.abort();
    gen.finish(refused ? undefined : "cancelled");
  }
}

interface Meta {
  id: string;
  created: number;
  model: string;
  system_fingerprint: string;
}

/**
 * A completion's logprobs. Each position's top_logprobs hold the `logprobs` most likely tokens and
 * the sampled one, as OpenAI documents ("up to logprobs+1 elements") and vLLM gives them: with
 * logprobs 0, the sampled token alone.
 */
function completionLogprobs(
  tokenizer: Tokenizer,
  tokens: TokenLogprob[],
  top: TokenLogprob[][] | undefined,
  offset: number,
): CompletionLogprobs {
  const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  tokens.forEach((t, i) => {
    const text = tokenizer.decode([t.token]);
    out.tokens.push(text);
    out.token_logprobs.push(t.logprob);
    out.text_offset.push(offset);
    offset += text.length;
    const likeliest = top?.[i] ?? [];
    const shown = likeliest.some((a) => a.token === t.token) ? likeliest : [...likeliest, t];
    const byText = Object.fromEntries(shown.map((a) => [tokenizer.decode([a.token]), a.logprob]));
    // Tokens of the same text (parts of characters all read "\uFFFD") share a key: the sampled
    // token's is its own logprob, as token_logprobs gives it (lm-eval reads it there as greedy or not).
    byText[text] = t.logprob;
    out.top_logprobs.push(byText);
  });
  return out;
}

/**
 * OpenAI's finish_reason, and vLLM's stop_reason: the stop string that ended the answer, or the
 * stop token (of stop_token_ids), where one did.
 */
const finish = (done: { finishReason: string; stopSequence?: string; stopToken?: number }, calls = 0) => {
  const stopReason = done.stopSequence ?? done.stopToken;
  return {
    finish_reason: done.finishReason === "length" ? "length" : calls > 0 ? "tool_calls" : "stop",
    ...(stopReason !== undefined && calls === 0 ? { stop_reason: stopReason } : {}),
  };
};

/** Calls as OpenAI writes them: arguments as JSON text. */
const openaiToolCalls = (calls: ToolCall[]) =>
  calls.map((c) => ({
    id: c.id,
    type: "function" as const,
    function: { name: c.name, arguments: JSON.stringify(c.arguments) },
  }));

async function whole(
  gens: Generation[],
  req: OpenAIRequest,
  kind: Kind,
  meta: Meta,
  echoes: Echo[] | undefined,
): Promise<Response> {
  // A generation has a tokenizer whenever logprobs were asked for (a remote model refuses them).
  const tokenizer = gens[0]!.tokenizer!;
  // One choice failing fails the response: the others are stopped (cancelled), not left decoding
  // for an answer no one will read, each holding a batch slot to its max_tokens.
  const results = await Promise.all(
    gens.map((gen) =>
      collectGeneration(gen).catch((error: unknown) => {
        for (const other of gens) other.abort();
        throw error;
      }),
    ),
  );
  if (results.some((r) => !r)) return new Response(null, { status: 499 }); // the client is gone
  const choices = results.map((result, index) => {
    const gen = gens[index]!;
    const { text, reasoning, tokens, top, done } = result!;
    const alternatives = top.length ? top : undefined;
    if (kind === "completion") {
      const echo = echoes?.[Math.floor(index / req.n)];
      const own = req.logprobs ? completionLogprobs(tokenizer, tokens, alternatives, echoedLength(echo)) : null;
      const logprobs = own && echo?.logprobs ? joinedLogprobs(echo.logprobs, own) : own;
      return { index, text: (echo?.text ?? "") + text, logprobs, ...finish(done), ...closedEarly(gen) };
    }
    const { content, calls } = gen.toolFormat ? gen.toolFormat.parse(text) : { content: text, calls: [] };
    const message = {
      role: "assistant",
      content: calls.length > 0 ? content || null : content,
      ...(reasoning ? { reasoning_content: reasoning } : {}),
      refusal: null,
      ...(calls.length > 0 ? { tool_calls: openaiToolCalls(calls) } : {}),
    };
    const logprobs = req.logprobs ? { content: chatLogprobs(tokenizer, tokens, alternatives) } : null;
    return { index, message, logprobs, ...finish(done, calls.length), ...closedEarly(gen) };
  });
  const usages = results.map((r) => r!.done.usage);
  return Response.json(
    {
      ...meta,
      object: kind === "chat" ? "chat.completion" : "text_completion",
      choices,
      usage: totalUsage(usages, req.n),
    },
    { headers: closedEarlyHeaders(gens) },
  );
}

/** Where a choice's own text_offset starts after its echo: past its tokens' text, as the offsets count it. */
const echoedLength = (echo: Echo | undefined) =>
  echo?.logprobs?.tokens.reduce((length, token) => length + token.length, 0) ?? 0;

const joinedLogprobs = (a: CompletionLogprobs, b: CompletionLogprobs): CompletionLogprobs => ({
  tokens: [...a.tokens, ...b.tokens],
  token_logprobs: [...a.token_logprobs, ...b.token_logprobs],
  top_logprobs: [...a.top_logprobs, ...b.top_logprobs],
  text_offset: [...a.text_offset, ...b.text_offset],
});

/** One usage for all choices (`n` per prompt): each prompt counted once, the completions together. */
function totalUsage(usages: GenerationUsage[], n: number) {
  const sum = (pick: (u: GenerationUsage) => number, of = usages) => of.reduce((total, u) => total + pick(u), 0);
  const firstOfEachPrompt = usages.filter((_, i) => i % n === 0);
  return usage(
    sum((u) => u.promptTokens, firstOfEachPrompt),
    sum((u) => u.completionTokens),
    sum((u) => u.cachedTokens, firstOfEachPrompt),
    sum((u) => u.reasoningTokens),
  );
}

const encoder = new TextEncoder();
const sse = (value: unknown) => encoder.encode(`data: ${JSON.stringify(value)}\n\n`);

/**
 * Each choice streams as it comes, its chunks naming its index; the usage (when asked) and
 * "data: [DONE]" follow once every choice has ended.
 */
function streamed(
  s: ServerState,
  gens: Generation[],
  req: OpenAIRequest,
  kind: Kind,
  meta: Meta,
  echoes: Echo[] | undefined,
): Response {
  const object = kind === "chat" ? "chat.completion.chunk" : "text_completion";
  const usages: GenerationUsage[] = [];
  const choices = gens.map((gen, index) =>
    choiceStream(s, gen, index, req, kind, meta, echoes?.[Math.floor(index / req.n)], (u) => {
      usages[index] = u;
    }),
  );
  const body = mergeStreams(
    choices,
    (send) => {
      if (req.includeUsage && usages.length === gens.length && usages.every(Boolean))
        send(sse({ ...meta, object, choices: [], usage: totalUsage(usages, req.n) }));
      send(encoder.encode("data: [DONE]\n\n"));
    },
    s.config.unreadStreamBytes,
  );
  return new Response(body, { headers: eventStreamHeaders });
}

/**
 * The chunks of several streams as they come, then `end`'s; cancelling it cancels them all, as
 * does a client that leaves more than `unreadBytes` of it unread (the chunks are read from the
 * streams as soon as they come, so what waits for the client waits here).
 */
function mergeStreams(
  streams: ReadableStream<Uint8Array>[],
  end: (send: Send) => void,
  unreadBytes: number,
): ReadableStream<Uint8Array> {
  const readers = streams.map((stream) => stream.getReader());
  const cancelAll = () => Promise.all(readers.map((reader) => reader.cancel()));
  return new ReadableStream<Uint8Array>(
    {
      async start(controller) {
        const send = sendWithin(controller, () => void cancelAll());
        try {
          await Promise.all(
            readers.map(async (reader) => {
              for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) send(chunk.value);
            }),
          );
          end(send);
          controller.close();
        } catch {
          // cancelled: the client went away, or was cut off
        }
      },
      async cancel() {
        await cancelAll();
      },
    },
    unreadLimit(unreadBytes),
  );
}

function choiceStream(
  s: ServerState,
  gen: Generation,
  index: number,
  req: OpenAIRequest,
  kind: Kind,
  meta: Meta,
  echo: Echo | undefined,
  onUsage: (u: GenerationUsage) => void,
): ReadableStream<Uint8Array> {
  const tokenizer = gen.tokenizer!; // see whole()
  const object = kind === "chat" ? "chat.completion.chunk" : "text_completion";
  // This choice's tokens so far, for vLLM's continuous usage (a remote model's are known when it ends).
  let promptTokens = gen.promptIds.length;
  let completionTokens = 0;
  const usageSoFar = () => ({
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
  });
  const chunk = (choice: Record<string, unknown>) => ({
    ...meta,
    object,
    choices: [{ index, logprobs: null, finish_reason: null, ...choice }],
    ...(req.continuousUsage ? { usage: usageSoFar() } : req.includeUsage ? { usage: null } : {}),
  });
  let offset = echoedLength(echo);
  const toolCalls = gen.toolFormat && new ToolCallStream(gen.toolFormat);
  // Each call as it is written: its id, type and function first (arguments ""), then pieces of
  // its arguments, as OpenAI streams them.
  const sendCalls = (deltas: ToolCallDelta[], send: Send) => {
    for (const d of deltas) {
      if (d.type === "end") continue;
      const call =
        d.type === "start"
          ? { index: d.index, id: d.id, type: "function", function: { name: d.name, arguments: "" } }
          : { index: d.index, function: { arguments: d.delta } };
      send(sse(chunk({ delta: { tool_calls: [call] } })));
    }
  };
  return generationStream(
    gen,
    {
      start: (send) => {
        if (kind === "chat") send(sse(chunk({ delta: { role: "assistant", content: "" } })));
        if (echo) send(sse(chunk({ text: echo.text, logprobs: echo.logprobs ?? null })));
      },
      text: (event, send) => {
        completionTokens += event.tokens.length;
        if (event.reasoning) send(sse(chunk({ delta: { reasoning_content: event.reasoning } })));
        const text = toolCalls ? toolCalls.push(event.text) : event.text;
        const shown = text || (req.logprobs && event.tokens.length > 0);
        if (kind === "chat") {
          const logprobs = req.logprobs ? { content: chatLogprobs(tokenizer, event.tokens, event.top) } : null;
          if (shown) send(sse(chunk({ delta: { content: text }, logprobs })));
          if (toolCalls) sendCalls(toolCalls.callDeltas(), send);
        } else if (shown) {
          const logprobs = req.logprobs ? completionLogprobs(tokenizer, event.tokens, event.top, offset) : null;
          // Offsets count every token's text, shown yet or not (a stop string's first characters
          // or part of a character wait): as the whole answer's offsets do.
          offset += logprobs?.tokens.reduce((length, token) => length + token.length, 0) ?? 0;
          send(sse(chunk({ text: event.text, logprobs })));
        }
      },
      done: (event, send) => {
        ({ promptTokens, completionTokens } = event.usage);
        const { content, calls } = toolCalls?.end() ?? { content: "", calls: [] };
        if (toolCalls) sendCalls(toolCalls.callDeltas(), send);
        if (content) send(sse(chunk({ delta: { content } })));
        const ended = finish(event, calls.length);
        send(
          sse(
            chunk(
              kind === "chat"
                ? { delta: {}, ...ended, ...closedEarly(gen) }
                : { text: "", ...ended, ...closedEarly(gen) },
            ),
          ),
        );
        onUsage(event.usage);
      },
      error: (e) => sse(errorBody(e, "openai")),
    },
    s,
  );
}
