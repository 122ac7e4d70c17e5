// A remote model and the provider behind it. The provider holds what its models share: the
// connection pool, the circuit, the timeouts and retry policy. A request goes out streamed;
// connection errors, timeouts, 429 and 5xx are retried with backoff (Retry-After honoured) as
// long as nothing of the answer has been handed on; a failure after that ends the stream
// with an error. Answers to a JSON format are validated against it (ajv), and answers to a
// tool_choice that requires a call checked for one, retried once.
import type { ValidateFunction } from "ajv";
import { setNewest } from "../bounded-map";
import { retryAfterMs } from "../retry-after";
import { compileAnswerSchema } from "../engine/json-schema";
import { EventSourceParserStream, type EventSourceMessage } from "eventsource-parser/stream";
import { ProviderError, UnsupportedError } from "../errors";
import { checkJsonSchema } from "../engine/grammar";
import { anthropicAdapter } from "./anthropic";
import { Circuit } from "./circuit";
import type { ProviderLimits, RemoteModelConfig } from "./config";
import { openaiAdapter } from "./openai";
import { ConnectionPool } from "./pool";
import {
  describeFetchError,
  errorBodyParam,
  StreamFailure,
  type ProviderAdapter,
  type RemoteEvent,
  type RemoteRequest,
} from "./types";
import type { ToolCall } from "../engine/tools";

export class Provider {
  readonly pool: ConnectionPool;
  readonly circuit: Circuit;
  readonly adapter: ProviderAdapter;

  constructor(
    /** How /metrics and errors name it: its kind and base URL. */
    readonly label: string,
    readonly limits: ProviderLimits,
    kind: RemoteModelConfig["kind"],
  ) {
    this.pool = new ConnectionPool(limits.maxConnections, limits.maxQueue, label);
    this.circuit = new Circuit(limits.circuitFailures, limits.circuitCooldownMs, label);
    this.adapter = kind === "openai" ? openaiAdapter : anthropicAdapter;
  }
}

export interface StreamOptions {
  signal?: AbortSignal;
  /** Called before each retry, with why (an HTTP status, "connection", "timeout", "invalid_answer"). */
  onRetry?: (reason: string) => void;
  /** Called when an attempt has its connection from the provider's pool (the wait before it is the request's queue). */
  onConnection?: () => void;
}

/** Why an attempt failed, and whether another may follow. */
interface Failure {
  error: ProviderError;
  retryable: boolean;
  /** Whether it says the provider is unwell (a 4xx answer, 429 included, does not). */
  unhealthy: boolean;
  /** The wait the provider asked for (Retry-After), ms. */
  retryAfterMs?: number;
  reason: string;
}

/** An OpenAI embeddings answer: the vectors (float lists, or base64 where asked) and the tokens read. */
export interface RemoteEmbeddings {
  data: { index?: number; embedding: number[] | string }[];
  usage?: { prompt_tokens?: number; total_tokens?: number };
}

export class RemoteModel {
  constructor(
    readonly config: RemoteModelConfig,
    readonly provider: Provider,
  ) {}

  /**
   * The answer as it arrives; with a JSON format or a tool call the client requires, whole once
   * it holds what was asked. Throws ProviderError.
   */
  async *stream(req: RemoteRequest, options: StreamOptions = {}): AsyncGenerator<RemoteEvent> {
    const check = answerCheck(req);
    if (!check) return yield* this.#attempts(req, options);
    for (let tries = 1; ; tries++) {
      const events: RemoteEvent[] = [];
      for await (const event of this.#attempts(req, options)) events.push(event);
      const done = events.at(-1);
      const text = events.flatMap((e) => (e.type === "text" ? [e.text] : [])).join("");
      const problem = check.problem(text, done?.type === "done" ? done.calls : []);
      if (!problem) return yield* events;
      if (tries === 2)
        throw new ProviderError(
          `model '${this.config.name}' (${this.provider.label}) answered ${check.wanted}, twice: ${problem}`,
          "invalid_answer",
        );
      options.onRetry?.("invalid_answer");
    }
  }

  /**
   * The request's prompt tokens as the provider counts them (Anthropic's count_tokens), in one
   * attempt through the provider's pool and circuit; a provider whose API cannot count is a 400.
   */
  async countTokens(req: RemoteRequest, signal?: AbortSignal): Promise<number> {
    const { adapter } = this.provider;
    if (!adapter.countTokensRequest)
      throw new UnsupportedError(
        `model '${this.config.name}' is served by a remote ${this.config.kind} provider (${this.config.baseUrl}), whose API counts no tokens apart from a generation`,
        "model",
      );
    return this.#once(adapter.countTokensRequest(this.config, req), signal, (answer) => {
      const count = (answer as { input_tokens?: unknown }).input_tokens;
      if (typeof count !== "number") throw new StreamFailure("its count_tokens answer has no input_tokens");
      return count;
    });
  }

  /**
   * The provider's answer to an OpenAI embeddings request (`body` as the client sent it), in one
   * attempt through the provider's pool and circuit; a provider whose API embeds nothing is a 400.
   */
  async embeddings(body: Record<string, unknown>, signal?: AbortSignal): Promise<RemoteEmbeddings> {
    const { adapter } = this.provider;
    if (!adapter.embeddingsRequest)
      throw new UnsupportedError(
        `model '${this.config.name}' is served by a remote ${this.config.kind} provider (${this.config.baseUrl}), whose API has no embeddings`,
        "model",
      );
    return this.#once(adapter.embeddingsRequest(this.config, body), signal, (answer) => {
      const data = (answer as { data?: unknown }).data;
      if (!Array.isArray(data) || !data.every((d) => Array.isArray(d?.embedding) || typeof d?.embedding === "string"))
        throw new StreamFailure("its embeddings answer has no list of embeddings (data)");
      return answer as RemoteEmbeddings;
    });
  }

  /** One request that answers in one JSON body, read by `read`: one attempt through the provider's pool and circuit. */
  async #once<T>(
    request: { path: string; body: Record<string, unknown> },
    signal: AbortSignal | undefined,
    read: (answer: unknown) => T,
  ): Promise<T> {
    const { adapter, pool, circuit, label } = this.provider;
    const { url, init } = this.#post(request);
    circuit.admit();
    const release = await pool.acquire(signal).catch((error: unknown) => {
      circuit.abandoned();
      throw error;
    });
    const connection = new AbortController();
    const onClientAbort = () => connection.abort(signal?.reason);
    signal?.addEventListener("abort", onClientAbort, { once: true });
    try {
      const response = await this.#connect(url, init, connection);
      if (!response.ok) throw await statusFailure(response, adapter);
      const answer = read(await response.json());
      circuit.succeeded();
      return answer;
    } catch (error) {
      if (signal?.aborted) {
        circuit.abandoned(); // the client went away: no verdict on the provider
        throw error;
      }
      const failure = classify(error, label);
      if (failure.unhealthy) circuit.failed(failure.reason);
      else circuit.succeeded();
      throw failure.error;
    } finally {
      signal?.removeEventListener("abort", onClientAbort);
      release();
    }
  }

  /** The URL and POST of a request to the provider, its API key in its headers. */
  #post({ path, body }: { path: string; body: Record<string, unknown> }): { url: string; init: RequestInit } {
    const key = this.config.apiKeyEnv ? process.env[this.config.apiKeyEnv] : undefined;
    if (this.config.apiKeyEnv && !key)
      throw new ProviderError(
        `model '${this.config.name}' (${this.config.definedAt}): api_key_env names the environment variable ${this.config.apiKeyEnv}, which is ${key === "" ? "empty" : "not set"}`,
        "unavailable",
      );
    const init = { method: "POST", headers: this.provider.adapter.headers(key), body: JSON.stringify(body) };
    return { url: requestUrl(this.config.endpoint, path), init };
  }

  /** One request, retried while nothing has been handed on. */
  async *#attempts(req: RemoteRequest, options: StreamOptions): AsyncGenerator<RemoteEvent> {
    const { adapter, pool, circuit, limits, label } = this.provider;
    const { url, init } = this.#post(adapter.request(this.config, req));
    for (let attempt = 0; ; attempt++) {
      circuit.admit();
      // A half-open circuit's trial that gets no connection (its client gone while it waited, or
      // the queue full) is no verdict: else the circuit would refuse every request after it.
      const release = await pool.acquire(options.signal).catch((error: unknown) => {
        circuit.abandoned();
        throw error;
      });
      options.onConnection?.();
      const connection = new AbortController();
      const onClientAbort = () => connection.abort(options.signal?.reason);
      options.signal?.addEventListener("abort", onClientAbort, { once: true });
      let handedOn = false;
      let verdict = false;
      try {
        const response = await this.#connect(url, init, connection);
        if (!response.ok) throw await statusFailure(response, adapter);
        if (answeredWhole(response)) {
          await response.body?.cancel();
          throw new ProviderError(
            `provider ${label} answered one JSON body, not a stream of events: it must support "stream": true`,
            "unavailable",
          );
        }
        const messages = serverSentEvents(response.body!, limits.readTimeoutMs, label);
        for await (const event of adapter.events(messages)) {
          // Its usage at the start is no part of the answer: a failure after it is retried still.
          if (event.type !== "start") handedOn = true;
          // The answer is whole once its end arrives, also for a reader that stops there (the CLI).
          if (event.type === "done") {
            verdict = true;
            circuit.succeeded();
          }
          yield event;
        }
        return;
      } catch (error) {
        if (options.signal?.aborted) throw error; // the client went away: no verdict on the provider
        const failure = classify(error, label);
        verdict = true;
        if (failure.unhealthy) circuit.failed(failure.reason);
        else circuit.succeeded();
        const waitMs = failure.retryAfterMs ?? backoffMs(limits, attempt);
        // A circuit this failure opened would refuse the retry: the client hears the failure itself.
        const refused = circuit.state !== "closed";
        if (handedOn || !failure.retryable || attempt >= limits.maxRetries || waitMs > limits.retryMaxMs || refused)
          throw failure.error;
        options.onRetry?.(failure.reason);
        release();
        await sleep(waitMs, options.signal);
      } finally {
        if (!verdict) circuit.abandoned();
        options.signal?.removeEventListener("abort", onClientAbort);
        connection.abort(); // stops the provider's generation when we stop reading early
        release();
      }
    }
  }

  /** The response once its headers are in, within the connect timeout. */
  async #connect(url: string, init: RequestInit, connection: AbortController): Promise<Response> {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      connection.abort();
    }, this.provider.limits.connectTimeoutMs);
    try {
      // Not followed: fetch would resend a header key (Anthropic's x-api-key) to another host.
      return await fetch(url, { ...init, redirect: "manual", signal: connection.signal });
    } catch (error) {
      if (timedOut)
        // Named with its setting: servers that send their headers with the first token (mlx serve,
        // llama.cpp's) answer a long prompt only once it is prefilled, which can take longer.
        throw new ProviderError(
          `provider ${this.provider.label} did not answer within ${this.provider.limits.connectTimeoutMs / 1000} s (model '${this.config.name}': connect_timeout in models.toml; a server may answer only once a long prompt is prefilled)`,
          "timeout",
        );
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * What a remote answer must hold, where the client asked for more than text: a tool call when
 * `tool_choice` requires one (or names one), and JSON of the format. A provider that ignores
 * either (mlx_lm.server ignores `tool_choice` and `response_format`) is asked once more.
 */
function answerCheck(
  req: RemoteRequest,
): { wanted: string; problem: (text: string, calls: ToolCall[]) => string | undefined } | undefined {
  const choice = req.tools?.choice;
  if (choice === "required" || typeof choice === "object") {
    const name = typeof choice === "object" ? choice.name : undefined;
    return {
      wanted: `without the tool call tool_choice requires`,
      problem: (text, calls) =>
        calls.length === 0
          ? `it answered text: ${JSON.stringify(text.slice(0, 80))}`
          : name !== undefined && calls.some((call) => call.name !== name)
            ? `it called '${calls.find((call) => call.name !== name)!.name}', not '${name}'`
            : undefined,
    };
  }
  if (!req.format) return undefined;
  const validate = answerValidator(req.format.format);
  return {
    wanted: `JSON that does not match ${req.format.param}`,
    // An answer that is a tool call holds no JSON to check.
    problem: (text, calls) => (calls.length > 0 ? undefined : validate(text)),
  };
}

/** The URL of an API path under base_url, which may end with a slash or carry a query (Azure's api-version). */
function requestUrl(endpoint: string, path: string): string {
  const url = new URL(endpoint);
  url.pathname = url.pathname.replace(/\/+$/, "") + path;
  return url.href;
}

/** A provider that ignored `stream: true` and sent its whole answer: asking again gets the same. */
const answeredWhole = (response: Response) =>
  response.headers.get("content-type")?.toLowerCase().startsWith("application/json") ?? false;

/** An error status from the provider (its message, the parameter it named, and the wait it asked for). */
class StatusFailure extends Error {
  override name = "StatusFailure";
  constructor(
    readonly status: number,
    message: string,
    readonly retryAfterMs: number | undefined,
    readonly param: string | undefined,
  ) {
    super(message);
  }
}

/**
 * What a status left after the retries says: a request the provider refused (400, 422) is the
 * client's to change, a 429 the client's to wait for (its Retry-After), any other its failure.
 */
function statusKind(status: number): ProviderError["kind"] {
  if (status === 400 || status === 422) return "rejected";
  if (status === 529) return "overloaded";
  return status === 429 ? "rate_limited" : "unavailable";
}

async function statusFailure(response: Response, adapter: ProviderAdapter): Promise<StatusFailure> {
  const body = await response.text();
  const location = response.headers.get("location");
  const redirected = response.status >= 300 && response.status < 400 && location;
  return new StatusFailure(
    response.status,
    redirected
      ? `a redirect to ${location}, which is not followed (it could take the API key elsewhere): set base_url to where it points`
      : adapter.errorMessage(body),
    retryAfterMs(response.headers.get("retry-after")),
    errorBodyParam(body),
  );
}

function classify(error: unknown, label: string): Failure {
  if (error instanceof StatusFailure)
    return {
      error: new ProviderError(
        `provider ${label} answered ${error.status}: ${error.message}`,
        statusKind(error.status),
        error.retryAfterMs !== undefined ? Math.max(1, Math.ceil(error.retryAfterMs / 1000)) : undefined,
        error.param,
      ),
      retryable: error.status === 429 || error.status >= 500,
      unhealthy: error.status >= 500,
      retryAfterMs: error.retryAfterMs,
      reason: String(error.status),
    };
  if (error instanceof ProviderError)
    return { error, retryable: error.kind === "timeout", unhealthy: true, reason: error.kind };
  if (error instanceof StreamFailure)
    return {
      error: new ProviderError(
        `provider ${label}: ${error.message}`,
        error.status !== undefined ? statusKind(error.status) : "unavailable",
      ),
      retryable: true,
      unhealthy: true,
      reason: "stream",
    };
  // fetch's own failures: refused, reset, DNS, TLS.
  return {
    error: new ProviderError(`provider ${label} cannot be reached: ${describeFetchError(error)}`, "unavailable"),
    retryable: true,
    unhealthy: true,
    reason: "connection",
  };
}

/** Exponential backoff with full jitter in its upper half, capped. */
const backoffMs = (limits: ProviderLimits, attempt: number) =>
  Math.min(limits.retryMaxMs, limits.retryBaseMs * 2 ** attempt) * (0.5 + Math.random() / 2);

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * The body's server-sent events; a silence longer than `readTimeoutMs` is a timeout. Any bytes
 * break a silence, comments too: mlx_lm.server sends one per prefill step of a long prompt
 * (`: keepalive 512/4096`) so that its clients wait for the first event.
 */
async function* serverSentEvents(
  body: ReadableStream<Uint8Array>,
  readTimeoutMs: number,
  label: string,
): AsyncGenerator<EventSourceMessage> {
  let heardAt = 0;
  const heard = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      heardAt = performance.now();
      controller.enqueue(chunk);
    },
  });
  const reader = body
    .pipeThrough(heard)
    .pipeThrough(new TextDecoderStream() as unknown as TransformStream<Uint8Array, string>)
    .pipeThrough(new EventSourceParserStream())
    .getReader();
  try {
    for (;;) {
      // Silence is counted from this read on (not while we were busy with the last event), and
      // from each chunk of bytes since.
      heardAt = performance.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const silence = new Promise<never>((_, reject) => {
        const watch = () => {
          const quietMs = performance.now() - heardAt;
          if (quietMs >= readTimeoutMs)
            reject(new ProviderError(`provider ${label} sent nothing for ${readTimeoutMs / 1000} s`, "timeout"));
          else timer = setTimeout(watch, readTimeoutMs - quietMs);
        };
        timer = setTimeout(watch, readTimeoutMs);
      });
      try {
        const { done, value } = await Promise.race([reader.read(), silence]);
        if (done) return;
        yield value;
      } finally {
        clearTimeout(timer);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Validators by schema text, the least recently used first; the MAX_ANSWER_VALIDATORS latest
 * kept: a client may send a schema of its own with every request.
 */
const compiled = new Map<string, ValidateFunction>();
export const MAX_ANSWER_VALIDATORS = 64;

/** How many answer validators are kept (for tests). */
export const answerValidatorCount = (): number => compiled.size;

/** A check of an answer against the format asked for: undefined when it passes, else what failed and where. */
export function answerValidator(format: "json" | { schema: object }): (text: string) => string | undefined {
  const validate =
    format === "json"
      ? undefined
      : (() => {
          const key = JSON.stringify(format.schema);
          let fn = compiled.get(key);
          if (!fn) {
            checkJsonSchema(format.schema); // a schema that is not JSON Schema is the client's error (a SchemaError)
            fn = compileAnswerSchema(format.schema);
          }
          setNewest(compiled, key, fn, MAX_ANSWER_VALIDATORS);
          return fn;
        })();
  return (text) => {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return `the answer is not JSON: ${JSON.stringify(text.slice(0, 80))}`;
    }
    if (!validate)
      return value && typeof value === "object" && !Array.isArray(value)
        ? undefined
        : "the answer is not a JSON object";
    if (validate(value)) return undefined;
    const e = validate.errors?.[0];
    return e ? `${e.instancePath || "/"} ${e.message} (schema ${e.schemaPath})` : "it does not match";
  };
}
