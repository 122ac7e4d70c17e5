// Server mode of `mlx bench`: drives any OpenAI-compatible server with streaming
// /v1/chat/completions requests (or /v1/completions, for a model without a chat template) at
// several concurrency levels, and reports what vLLM's
// serving benchmark reports: completed/failed requests, duration, request and output-token
// throughput, and mean/median/P99 of time to first token (TTFT), time per output token
// after the first (TPOT), inter-token latency (ITL, between streamed chunks) and end-to-end
// latency. Each prompt is led by a fresh tag, so that no answer comes from a prefix cache.
// Plain fetch and a small SSE reader: no client library.
import { withoutControlCharacters } from "../format";
import { describeFetchError, shownUrl } from "../providers";
import { errorBodyMessage } from "../providers/types";
import { summarize, type Summary } from "./stats";

export interface ServerBenchOptions {
  url: string;
  concurrency: number[];
  /** Requests per concurrency level. */
  requests: number;
  model?: string;
  maxTokens: number;
  prompts: string[];
  /** Seconds one request may take. */
  timeoutSeconds: number;
  /** Sent as a bearer token, to a server that requires a key (mlx serve --api-key, vLLM --api-key). */
  apiKey?: string;
  onProgress?: (message: string) => void;
  /** As each concurrency level starts: its level, and the result of the levels before it (none before the first). */
  onLevel?: (concurrency: number, finished: ServerBenchResult | undefined) => void;
}

export interface RequestRecord {
  ok: boolean;
  error?: string;
  ttftMs: number;
  e2eMs: number;
  outputTokens: number;
  /** The prompt's tokens as the server counted them (its usage); undefined where it sent none. */
  inputTokens?: number;
  /** Gaps between streamed content chunks after the first. */
  itlMs: number[];
}

export interface LevelResult {
  concurrency: number;
  requests: number;
  completed: number;
  failed: number;
  durationSeconds: number;
  requestsPerSecond: number;
  /** The completed requests' prompt tokens, as the server counted them (NaN: it counted none). */
  inputTokens: number;
  outputTokens: number;
  outputTokensPerSecond: number;
  ttftMs: Summary;
  tpotMs: Summary;
  itlMs: Summary;
  e2eMs: Summary;
  /** The first few distinct errors. */
  errors: string[];
}

/** The OpenAI route a request goes to: chat, or plain text for a model without a chat template. */
export type Endpoint = "chat" | "completions";
export const endpointPath = (endpoint: Endpoint) => (endpoint === "chat" ? "/v1/chat/completions" : "/v1/completions");

/** Where one bench's requests go, and how. */
export interface RequestTarget {
  base: string;
  /** None when the server lists none and -m names none: the request has no `model`, for the server's own. */
  model?: string;
  endpoint: Endpoint;
  /** Seconds one request may take. */
  timeoutSeconds: number;
  apiKey?: string;
}

export interface ServerBenchResult {
  /** The server's base URL, credentials masked (the report may be shared). */
  url: string;
  model: string;
  endpoint: Endpoint;
  maxTokens: number;
  levels: LevelResult[];
}

/**
 * `prompt` led by a fresh tag. A server's prefix cache (mlx serve's, vLLM's, llama.cpp's) answers
 * a prompt it has seen, from an earlier request, run or bench, without prefilling it: a tagged one
 * is prefilled anew (but for what a chat template puts before it), as a new user's would be.
 */
export const uncached = (prompt: string): string => `${crypto.randomUUID().slice(0, 8)} ${prompt}`;

/** "http://host:8080/", "http://host:8080/v1", "http://host:8080/v1/chat/completions" → "http://host:8080" */
export function serverBase(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`--url must be an http(s) URL like http://127.0.0.1:8080 (got '${url}')`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:")
    throw new Error(`--url must be an http(s) URL (got '${url}')`);
  // The routes (/v1/models, /v1/chat/completions) are appended to the base: a query would end up
  // before them, and the requests go to another path. A fragment is never sent: it goes.
  if (parsed.search) throw new Error(`--url is a server's base URL, without a query (got '${url}')`);
  parsed.hash = "";
  // A pasted endpoint (…/v1/chat/completions) is taken as its server: the bench picks the route.
  return parsed.href.replace(/\/+$/, "").replace(/\/v1(\/chat)?(\/completions)?$/, "");
}

/** A base as the report and the errors show it: a user:password in it (sent as Basic auth) masked. */
export const shownBase = (base: string): string => shownUrl(new URL(base));

/** The Authorization header for `apiKey`, if any. */
const authorization = (apiKey?: string): Record<string, string> =>
  apiKey ? { authorization: `Bearer ${apiKey}` } : {};

/**
 * Checks that the server answers at all (GET /v1/models), and returns the first model it
 * lists, or what its listing answered instead (`problem`). A server without /v1/models is fine;
 * one that does not answer is an error.
 */
export async function probeServer(base: string, apiKey?: string): Promise<{ model?: string; problem?: string }> {
  let response: Response;
  try {
    response = await fetch(`${base}/v1/models`, {
      headers: authorization(apiKey),
      signal: AbortSignal.timeout(10_000),
    });
  } catch (error) {
    throw new Error(`cannot reach ${shownBase(base)}: ${describeFetchError(error)}`);
  }
  if (!response.ok) {
    const body = await response.text().catch(() => "");
    const words = response.status === 404 ? "" : `: ${oneLine(errorBodyMessage(body), 300)}`;
    return { problem: `GET /v1/models answered HTTP ${response.status}${words}` };
  }
  try {
    const body = (await response.json()) as { data?: { id?: unknown }[] };
    const id = body.data?.[0]?.id;
    return { model: typeof id === "string" ? id : undefined };
  } catch {
    return {};
  }
}

/** Yields the data of each server-sent event in a streamed body. */
export async function* sseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = "";
  let data: string[] = [];
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline = buffer.indexOf("\n");
    while (newline >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if (data.length > 0) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      // other fields (event:, id:, retry:) and comments (":") carry nothing we time
      newline = buffer.indexOf("\n");
    }
  }
  if (buffer.startsWith("data:")) data.push(buffer.slice(5).replace(/^ /, ""));
  if (data.length > 0) yield data.join("\n");
}

/** The body of one streamed request of `target`'s kind, greedy and with its usage at the end. */
function streamedRequestBody(target: RequestTarget, prompt: string, maxTokens: number) {
  const input = target.endpoint === "chat" ? { messages: [{ role: "user", content: prompt }] } : { prompt };
  return {
    model: target.model,
    ...input,
    max_tokens: maxTokens,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  };
}

/**
 * What a client of ours says beside a server's 401: the flag and variable that carry the key, as
 * the server's own words name only the headers.
 */
export const keyHint = (status: number, apiKey: string | undefined): string =>
  status !== 401
    ? ""
    : apiKey
      ? " (the key given by --api-key or $MLX_API_KEY is not the server's)"
      : " (the server wants a key: give it with --api-key or $MLX_API_KEY)";

/** A server's text on one line, printable, at most `length` characters, to quote in an error. */
const oneLine = (text: string, length: number) =>
  withoutControlCharacters(text.trim().replace(/\s+/g, " ")).slice(0, length);

/** One streamed completion, timed chunk by chunk. */
export async function timedRequest(target: RequestTarget, prompt: string, maxTokens: number): Promise<RequestRecord> {
  const start = performance.now();
  const chunkTimes: number[] = [];
  let usageTokens: number | undefined;
  let usageInputTokens: number | undefined;
  /** The answer's end was said: a finish_reason, or [DONE]. */
  let finished = false;
  const failed = (error: string): RequestRecord => ({
    ok: false,
    error,
    ttftMs: Number.NaN,
    e2eMs: performance.now() - start,
    outputTokens: 0,
    itlMs: [],
  });
  try {
    const response = await fetch(`${target.base}${endpointPath(target.endpoint)}`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream", ...authorization(target.apiKey) },
      body: JSON.stringify(streamedRequestBody(target, prompt, maxTokens)),
      signal: AbortSignal.timeout(target.timeoutSeconds * 1000),
    });
    if (!response.ok || !response.body) {
      // The server's own words ({"error": {"message"}}), not its JSON cut off mid-field.
      const body = await response.text().catch(() => "");
      const words = body.trim() ? `: ${oneLine(errorBodyMessage(body), 300)}` : "";
      return failed(`HTTP ${response.status}${words}${keyHint(response.status, target.apiKey)}`);
    }
    // A server that ignores `stream` (a JSON answer) or is not an API (an HTML page) is named as
    // such, rather than as a stream that ended empty.
    const type = response.headers.get("content-type");
    if (type && !type.toLowerCase().includes("text/event-stream")) {
      return failed(
        `the server answered ${type.split(";")[0]}, not a stream of server-sent events: ${oneLine(await response.text().catch(() => ""), 80)}`,
      );
    }
    for await (const data of sseEvents(response.body)) {
      if (data.trim() === "[DONE]") {
        finished = true;
        break;
      }
      let event: {
        error?: unknown;
        usage?: { completion_tokens?: number; prompt_tokens?: number };
        choices?: {
          delta?: { content?: string; reasoning_content?: string; reasoning?: string };
          text?: string;
          finish_reason?: string | null;
        }[];
      };
      try {
        event = JSON.parse(data);
      } catch {
        return failed(`the server sent an event that is not JSON: ${oneLine(data, 80)}`);
      }
      if (event.error) return failed(`the server sent an error: ${oneLine(errorBodyMessage(data), 300)}`);
      if (typeof event.usage?.completion_tokens === "number") usageTokens = event.usage.completion_tokens;
      if (typeof event.usage?.prompt_tokens === "number") usageInputTokens = event.usage.prompt_tokens;
      const choice = event.choices?.[0];
      if (choice?.finish_reason) finished = true;
      // Reasoning is output too: `reasoning_content` (vLLM, llama.cpp, mlx serve) or `reasoning`
      // (Ollama, next to an empty `content`, hence || rather than ??).
      const delta = choice?.delta;
      const content = delta?.content || delta?.reasoning_content || delta?.reasoning || choice?.text;
      if (content) chunkTimes.push(performance.now());
    }
  } catch (error) {
    // A request past --timeout is named with the limit it ran into, which the user may raise.
    const timedOut = (error as { name?: string } | undefined)?.name === "TimeoutError";
    return failed(timedOut ? `no answer within --timeout ${target.timeoutSeconds} s` : describeFetchError(error));
  }
  const end = performance.now();
  if (chunkTimes.length === 0) return failed("the stream ended without any content");
  // A server that stopped mid-answer (it crashed, a proxy cut the connection) sent neither: its
  // answer, cut short, is no completed request (its tokens would count, its latency look short).
  if (!finished) return failed("the stream ended before the answer did (no finish_reason, no [DONE])");
  const itl = chunkTimes.slice(1).map((t, i) => t - chunkTimes[i]!);
  return {
    ok: true,
    ttftMs: chunkTimes[0]! - start,
    e2eMs: end - start,
    outputTokens: usageTokens ?? chunkTimes.length,
    inputTokens: usageInputTokens,
    itlMs: itl,
  };
}

export function summarizeLevel(concurrency: number, records: RequestRecord[], durationSeconds: number): LevelResult {
  const ok = records.filter((r) => r.ok);
  const outputTokens = ok.reduce((n, r) => n + r.outputTokens, 0);
  // A server that sends no usage counts no prompt: no figure, not 0 tokens.
  const counted = ok.filter((r) => r.inputTokens !== undefined);
  const inputTokens = counted.length > 0 ? counted.reduce((n, r) => n + r.inputTokens!, 0) : Number.NaN;
  // TPOT as vLLM defines it: the time after the first token, per further token.
  const tpot = ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2eMs - r.ttftMs) / (r.outputTokens - 1));
  return {
    concurrency,
    requests: records.length,
    completed: ok.length,
    failed: records.length - ok.length,
    durationSeconds,
    requestsPerSecond: ok.length / durationSeconds,
    inputTokens,
    outputTokens,
    outputTokensPerSecond: outputTokens / durationSeconds,
    ttftMs: summarize(ok.map((r) => r.ttftMs)),
    tpotMs: summarize(tpot),
    itlMs: summarize(ok.flatMap((r) => r.itlMs)),
    e2eMs: summarize(ok.map((r) => r.e2eMs)),
    errors: [...new Set(records.filter((r) => !r.ok).map((r) => r.error!))].slice(0, 3),
  };
}

/**
 * One short request, so that the measured ones find the model loaded. A chat request refused as
 * bad (a base model has no chat template to apply: mlx serve, vLLM and llama.cpp's server all
 * answer 400) is tried as a plain completion: the target that answered is the one measured.
 */
async function warmUp(chat: RequestTarget, o: ServerBenchOptions): Promise<RequestTarget> {
  const prompt = uncached(o.prompts[0]!);
  const maxTokens = Math.min(o.maxTokens, 8);
  const warm = await timedRequest(chat, prompt, maxTokens);
  if (warm.ok) return chat;
  const failure = `the warm-up request to ${shownBase(chat.base)}${endpointPath("chat")} failed: ${warm.error}`;
  if (!warm.error?.startsWith("HTTP 400")) throw new Error(failure);
  const completions: RequestTarget = { ...chat, endpoint: "completions" };
  if (!(await timedRequest(completions, prompt, maxTokens)).ok) throw new Error(failure);
  o.onProgress?.(`chat refused (${warm.error}); timing ${endpointPath("completions")}`);
  return completions;
}

export async function benchServer(o: ServerBenchOptions): Promise<ServerBenchResult> {
  const say = o.onProgress ?? (() => {});
  const base = serverBase(o.url);
  const listing = await probeServer(base, o.apiKey);
  // A server that lists no model (mlx_lm.server whose listing fails) is sent none: mlx_lm.server,
  // vLLM and llama.cpp's server then answer with the model they serve, where a made-up name would
  // be a 404 (and mlx serve and Ollama say that a model is required).
  const model = o.model ?? listing.model;
  const shownModel = model ?? "(the server's default)";
  say(`${shownBase(base)}: model ${shownModel}; warm-up request`);
  const target = await warmUp(
    { base, model, endpoint: "chat", timeoutSeconds: o.timeoutSeconds, apiKey: o.apiKey },
    o,
  ).catch((error: Error) => {
    // Sent no model, the server says one is required, not why none was sent: a listing that
    // failed (mlx serve's broken models.toml: a 500) or was empty.
    if (model !== undefined) throw error;
    throw new Error(
      `${error.message} (sent without a model: ${listing.problem ?? "the server lists none"}; give one with -m)`,
    );
  });
  const levels: LevelResult[] = [];
  const result = (): ServerBenchResult => ({
    url: shownBase(base),
    model: shownModel,
    endpoint: target.endpoint,
    maxTokens: o.maxTokens,
    levels: [...levels],
  });
  for (const concurrency of o.concurrency) {
    o.onLevel?.(concurrency, levels.length > 0 ? result() : undefined);
    const records: RequestRecord[] = [];
    let next = 0;
    const started = performance.now();
    const worker = async () => {
      while (next < o.requests) {
        const i = next++;
        const prompt = uncached(o.prompts[i % o.prompts.length]!);
        records.push(await timedRequest(target, prompt, o.maxTokens));
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, o.requests) }, worker));
    const level = summarizeLevel(concurrency, records, (performance.now() - started) / 1000);
    levels.push(level);
    say(
      `concurrency ${concurrency}: ${level.completed}/${level.requests} completed in ${level.durationSeconds.toFixed(2)} s, ${level.outputTokensPerSecond.toFixed(1)} output tokens/s${level.errors.length ? `; errors: ${level.errors.join("; ")}` : ""}`,
    );
  }
  return result();
}
