// Server mode of `mlx bench`: drives any OpenAI-compatible server with streaming
// /v1/chat/completions requests at several concurrency levels, and reports what vLLM's
// serving benchmark reports: completed/failed requests, duration, request and output-token
// throughput, and mean/median/P99 of time to first token (TTFT), time per output token
// after the first (TPOT), inter-token latency (ITL, between streamed chunks) and end-to-end
// latency. Each prompt is led by a fresh tag, so that no answer comes from a prefix cache.
// Plain fetch and a small SSE reader: no client library.
import { describeFetchError } from "../providers";
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
}

export interface RequestRecord {
  ok: boolean;
  error?: string;
  ttftMs: number;
  e2eMs: number;
  outputTokens: number;
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
  outputTokens: number;
  outputTokensPerSecond: number;
  ttftMs: Summary;
  tpotMs: Summary;
  itlMs: Summary;
  e2eMs: Summary;
  /** The first few distinct errors. */
  errors: string[];
}

export interface ServerBenchResult {
  url: string;
  model: string;
  maxTokens: number;
  levels: LevelResult[];
}

/**
 * `prompt` led by a fresh tag. A server's prefix cache (mlx serve's, vLLM's, llama.cpp's) answers
 * a prompt it has seen, from an earlier request, run or bench, without prefilling it: a tagged one
 * is prefilled anew (but for what a chat template puts before it), as a new user's would be.
 */
export const uncached = (prompt: string): string => `${crypto.randomUUID().slice(0, 8)} ${prompt}`;

/** "http://host:8080/", "http://host:8080/v1" → "http://host:8080" */
export function serverBase(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`--url must be an http(s) URL like http://127.0.0.1:8080 (got '${url}')`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:")
    throw new Error(`--url must be an http(s) URL (got '${url}')`);
  return parsed.href.replace(/\/+$/, "").replace(/\/v1$/, "");
}

/** The Authorization header for `apiKey`, if any. */
const authorization = (apiKey?: string): Record<string, string> =>
  apiKey ? { authorization: `Bearer ${apiKey}` } : {};

/**
 * Checks that the server answers at all (GET /v1/models), and returns the first model it
 * lists. A server without /v1/models is fine; one that does not answer is an error.
 */
export async function probeServer(base: string, apiKey?: string): Promise<string | undefined> {
  let response: Response;
  try {
    response = await fetch(`${base}/v1/models`, {
      headers: authorization(apiKey),
      signal: AbortSignal.timeout(10_000),
    });
  } catch (error) {
    throw new Error(`cannot reach ${base}: ${describeFetchError(error)}`);
  }
  if (!response.ok) {
    await response.body?.cancel();
    return undefined;
  }
  try {
    const body = (await response.json()) as { data?: { id?: unknown }[] };
    const id = body.data?.[0]?.id;
    return typeof id === "string" ? id : undefined;
  } catch {
    return undefined;
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

/** One streamed chat completion, timed chunk by chunk. */
export async function timedRequest(
  base: string,
  model: string,
  prompt: string,
  maxTokens: number,
  timeoutSeconds: number,
  apiKey?: string,
): Promise<RequestRecord> {
  const start = performance.now();
  const chunkTimes: number[] = [];
  let usageTokens: number | undefined;
  const failed = (error: string): RequestRecord => ({
    ok: false,
    error,
    ttftMs: Number.NaN,
    e2eMs: performance.now() - start,
    outputTokens: 0,
    itlMs: [],
  });
  try {
    const response = await fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream", ...authorization(apiKey) },
      body: JSON.stringify({
        model,
        messages: [{ role: "user", content: prompt }],
        max_tokens: maxTokens,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      }),
      signal: AbortSignal.timeout(timeoutSeconds * 1000),
    });
    if (!response.ok || !response.body) {
      const text = (await response.text().catch(() => "")).trim().replace(/\s+/g, " ").slice(0, 200);
      return failed(`HTTP ${response.status}${text ? `: ${text}` : ""}`);
    }
    for await (const data of sseEvents(response.body)) {
      if (data.trim() === "[DONE]") break;
      let event: {
        error?: unknown;
        usage?: { completion_tokens?: number };
        choices?: { delta?: { content?: string; reasoning_content?: string }; text?: string }[];
      };
      try {
        event = JSON.parse(data);
      } catch {
        return failed(`the server sent an event that is not JSON: ${data.slice(0, 80)}`);
      }
      if (event.error) return failed(`the server sent an error: ${JSON.stringify(event.error).slice(0, 200)}`);
      if (typeof event.usage?.completion_tokens === "number") usageTokens = event.usage.completion_tokens;
      const choice = event.choices?.[0];
      const content = choice?.delta?.content ?? choice?.delta?.reasoning_content ?? choice?.text;
      if (content) chunkTimes.push(performance.now());
    }
  } catch (error) {
    return failed(describeFetchError(error));
  }
  const end = performance.now();
  if (chunkTimes.length === 0) return failed("the stream ended without any content");
  const itl = chunkTimes.slice(1).map((t, i) => t - chunkTimes[i]!);
  return {
    ok: true,
    ttftMs: chunkTimes[0]! - start,
    e2eMs: end - start,
    outputTokens: usageTokens ?? chunkTimes.length,
    itlMs: itl,
  };
}

export function summarizeLevel(concurrency: number, records: RequestRecord[], durationSeconds: number): LevelResult {
  const ok = records.filter((r) => r.ok);
  const outputTokens = ok.reduce((n, r) => n + r.outputTokens, 0);
  // TPOT as vLLM defines it: the time after the first token, per further token.
  const tpot = ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2eMs - r.ttftMs) / (r.outputTokens - 1));
  return {
    concurrency,
    requests: records.length,
    completed: ok.length,
    failed: records.length - ok.length,
    durationSeconds,
    requestsPerSecond: ok.length / durationSeconds,
    outputTokens,
    outputTokensPerSecond: outputTokens / durationSeconds,
    ttftMs: summarize(ok.map((r) => r.ttftMs)),
    tpotMs: summarize(tpot),
    itlMs: summarize(ok.flatMap((r) => r.itlMs)),
    e2eMs: summarize(ok.map((r) => r.e2eMs)),
    errors: [...new Set(records.filter((r) => !r.ok).map((r) => r.error!))].slice(0, 3),
  };
}

export async function benchServer(o: ServerBenchOptions): Promise<ServerBenchResult> {
  const say = o.onProgress ?? (() => {});
  const base = serverBase(o.url);
  const listed = await probeServer(base, o.apiKey);
  const model = o.model ?? listed ?? "default";
  say(`${base}: model ${model}; warm-up request`);
  const warm = await timedRequest(
    base,
    model,
    uncached(o.prompts[0]!),
    Math.min(o.maxTokens, 8),
    o.timeoutSeconds,
    o.apiKey,
  );
  if (!warm.ok) throw new Error(`the warm-up request to ${base}/v1/chat/completions failed: ${warm.error}`);
  const levels: LevelResult[] = [];
  for (const concurrency of o.concurrency) {
    const records: RequestRecord[] = [];
    let next = 0;
    const started = performance.now();
    const worker = async () => {
      while (next < o.requests) {
        const i = next++;
        const prompt = uncached(o.prompts[i % o.prompts.length]!);
        records.push(await timedRequest(base, model, prompt, o.maxTokens, o.timeoutSeconds, o.apiKey));
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, o.requests) }, worker));
    const level = summarizeLevel(concurrency, records, (performance.now() - started) / 1000);
    levels.push(level);
    say(
      `concurrency ${concurrency}: ${level.completed}/${level.requests} completed in ${level.durationSeconds.toFixed(2)} s, ${level.outputTokensPerSecond.toFixed(1)} output tokens/s${level.errors.length ? `; errors: ${level.errors.join("; ")}` : ""}`,
    );
  }
  return { url: base, model, maxTokens: o.maxTokens, levels };
}
