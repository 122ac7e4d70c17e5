// Every error the server answers, in one place: what status it gets and how it is written.
// OpenAI-style bodies {"error": {"message", "type", "param", "code"}} everywhere, except the
// Ollama routes (/api/*), which answer {"error": "message"} as Ollama does: its official client
// reads `error` as a string (an object would reach the user as "[object Object]"), and the
// Anthropic routes (/v1/messages*), which answer {"type": "error", "error": {"type", "message"}}
// with Anthropic's error type for the status.
import type { Context } from "hono";
import { ValidationError } from "../api/validate";
import { BudgetError } from "../engine/budget/steering";
import { EmbeddingCancelled, NonFiniteEmbeddingError } from "../engine/embed";
import { SchemaError } from "../engine/grammar";
import {
  AdapterError,
  ChatTemplateUnsupportedError,
  ConfigError,
  ContextLengthError,
  InvalidParameterError,
  ModelNotFoundError,
  ModelInUseError,
  ModelPullError,
  ProviderError,
  QueueFullError,
  RankLostError,
  UnsupportedError,
} from "../errors";
import { ModelLoadError } from "../models/load";
import { StoreDamageError } from "../store/store";
import { noSpaceLeft } from "../format";
import { anthropicErrorType } from "../api/anthropic";

export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export class TimeoutError extends Error {
  override name = "TimeoutError";
}

/** The client went away while its request waited (for its model, or for the rest of its body): nobody reads the answer. */
export class ClientGoneError extends Error {
  override name = "ClientGoneError";
  constructor(message = "the client went away while its request waited for its model") {
    super(message);
  }
}

export const requestTimeout = () => new TimeoutError("the request took longer than the server's request timeout");
/** A generation still running when a stopping server's grace period ended. */
export const serverStopping = () =>
  new ApiError(503, "the server is shutting down", "server_error", null, "server_shutting_down");

/**
 * A request body compressed (Content-Encoding gzip, br, ...): not decoded here, as neither vLLM nor
 * Ollama decodes one, and said so (RFC 9110's 415 naming the codings taken), where the compressed
 * bytes read as JSON were a 400 about an "unrecognized token".
 */
export const unsupportedContentEncoding = (coding: string) =>
  new ApiError(
    415,
    `the request body's Content-Encoding '${coding}' is not supported: send it uncompressed`,
    "invalid_request_error",
    null,
    "unsupported_content_encoding",
    { "Accept-Encoding": "identity" },
  );

export const notFound = (message: string, code = "not_found") =>
  new ApiError(404, message, "invalid_request_error", null, code);
export const unauthorized = () =>
  new ApiError(
    401,
    "invalid or missing API key (send 'Authorization: Bearer <key>' or 'x-api-key: <key>')",
    "authentication_error",
    null,
    "invalid_api_key",
  );
/** A request to a loopback server that names another host: a page on a domain rebound to 127.0.0.1. */
export const hostNotAllowed = (host: string, name: string) =>
  new ApiError(
    403,
    `requests addressed to ${host} are refused: this server listens on loopback and answers requests to this machine (serve --allowed-host ${name} answers them too; serve --host makes it listen elsewhere)`,
    "permission_error",
    null,
    "host_not_allowed",
  );
/** A request a web page on another site sent: browsers send some without asking first (text/plain POSTs). */
export const originNotAllowed = (origin: string) =>
  new ApiError(
    403,
    `requests from pages at ${origin} are refused (serve --cors ${origin} allows them)`,
    "permission_error",
    null,
    "origin_not_allowed",
  );
export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, message, "invalid_request_error", param, code);

/** Maps anything thrown to the answer the client gets; unknown errors become a bare 500. */
export function toApiError(error: unknown, onInternal?: (error: unknown) => void): ApiError {
  if (error instanceof ApiError) return error;
  if (error instanceof ValidationError)
    return new ApiError(400, error.message, "invalid_request_error", error.param, error.code);
  // Before InvalidParameterError, which it is: its own code, and the field where the request named one.
  if (error instanceof SchemaError)
    return new ApiError(400, error.message, "invalid_request_error", error.param, "invalid_schema");
  if (error instanceof InvalidParameterError)
    return new ApiError(400, error.message, "invalid_request_error", error.param);
  if (error instanceof UnsupportedError)
    return new ApiError(400, error.message, "invalid_request_error", error.param, "unsupported");
  if (error instanceof BudgetError) return new ApiError(400, error.message, "invalid_request_error", error.option);
  // Nobody reads it (the client went away): the status only counts it in /metrics.
  if (error instanceof EmbeddingCancelled || error instanceof ClientGoneError)
    return new ApiError(499, error.message, "invalid_request_error");
  if (error instanceof ContextLengthError)
    return new ApiError(400, error.message, "invalid_request_error", error.param, "context_length_exceeded");
  if (error instanceof RankLostError) return new ApiError(503, error.message, "server_error", null, "rank_lost");
  if (error instanceof QueueFullError)
    return new ApiError(429, error.message, "rate_limit_error", null, "queue_full", { "Retry-After": "1" });
  if (error instanceof ModelNotFoundError)
    return new ApiError(404, error.message, "invalid_request_error", "model", "model_not_found");
  if (error instanceof ModelInUseError)
    return new ApiError(409, error.message, "invalid_request_error", "model", "model_in_use");
  // A full disk here is this server's want of room (507), not a failure of the place pulled from.
  if (error instanceof ModelPullError)
    return noSpaceLeft(error.cause)
      ? new ApiError(507, error.message, "server_error", "model", "insufficient_storage")
      : new ApiError(502, error.message, "server_error", "model", "model_pull_failed");
  if (error instanceof ProviderError) return providerError(error);
  if (error instanceof TimeoutError) return new ApiError(504, error.message, "timeout_error", null, "request_timeout");
  // The operator's file, not the request, is at fault: a server error that names it (README, "The model store").
  if (error instanceof ConfigError)
    return new ApiError(500, error.message.split("\n")[0]!, "server_error", null, "invalid_config");
  // An adapter's files fail to load the same way again: not retried (see ChatTemplateUnsupportedError).
  if (error instanceof AdapterError)
    return new ApiError(500, error.message.split("\n")[0]!, "server_error", "model", "adapter_load_failed", {
      "x-should-retry": "false",
    });
  if (error instanceof ModelLoadError)
    return new ApiError(500, error.message.split("\n")[0]!, "server_error", "model", "model_load_failed");
  // The same request fails the same way again: OpenAI's and Anthropic's clients retry a 500 unless told not to.
  if (error instanceof ChatTemplateUnsupportedError)
    return new ApiError(500, error.message, "server_error", "messages", "chat_template_unsupported", {
      "x-should-retry": "false",
    });
  // The model's numbers for this input, which another try gives again.
  if (error instanceof NonFiniteEmbeddingError)
    return new ApiError(500, error.message, "server_error", error.param, "non_finite_embedding", {
      "x-should-retry": "false",
    });
  // The store's files, not the request, are at fault: the message names the model and its repair.
  if (error instanceof StoreDamageError)
    return new ApiError(500, error.message, "server_error", "model", "model_damaged");
  onInternal?.(error);
  return new ApiError(500, "internal server error", "server_error", null, "internal_error");
}

/**
 * A remote provider's failure: 502 with its message (an invalid answer too), 504 when it timed
 * out, 503 while its circuit is open and 429 while its queue is full (both with Retry-After).
 */
function providerError(e: ProviderError): ApiError {
  const retryAfter: Record<string, string> =
    e.retryAfterS !== undefined ? { "Retry-After": String(e.retryAfterS) } : {};
  switch (e.kind) {
    case "timeout":
      return new ApiError(504, e.message, "timeout_error", null, "provider_timeout");
    case "circuit_open":
      return new ApiError(503, e.message, "server_error", null, "provider_circuit_open", retryAfter);
    case "queue_full":
      return new ApiError(429, e.message, "rate_limit_error", null, "provider_queue_full", retryAfter);
    case "invalid_answer":
      return new ApiError(502, e.message, "server_error", null, "provider_invalid_answer");
    case "unavailable":
      return new ApiError(502, e.message, "server_error", null, "provider_error");
    // The request's own fault, or the provider's limit: the client's to change or to wait for.
    case "rejected":
      return new ApiError(400, e.message, "invalid_request_error", e.param ?? null, "provider_rejected");
    case "rate_limited":
      return new ApiError(429, e.message, "rate_limit_error", null, "provider_rate_limited", retryAfter);
    // Anthropic's own status for it, whose type (overloaded_error) its clients retry on; OpenAI's
    // clients retry any 5xx, and read the code.
    case "overloaded":
      return new ApiError(529, e.message, "server_error", null, "provider_overloaded", retryAfter);
  }
}

/** The API family whose error shape a path answers with. */
export type ApiFamily = "openai" | "ollama" | "anthropic";

/**
 * The family a request's errors are written in: by its path, except the models routes, which
 * Anthropic's client shares with OpenAI's and which answer it in its shapes (it sends
 * `anthropic-version`), its errors included: its client reads `error.type` from them.
 */
export function apiFamily(path: string, anthropicVersion?: string): ApiFamily {
  if (path.startsWith("/api/")) return "ollama";
  if (path === "/v1/messages" || path.startsWith("/v1/messages/")) return "anthropic";
  const modelsRoute = path === "/v1/models" || path.startsWith("/v1/models/");
  return modelsRoute && anthropicVersion !== undefined ? "anthropic" : "openai";
}

export function errorBody(e: ApiError, family: ApiFamily): unknown {
  if (family === "ollama") return { error: e.message };
  if (family === "anthropic")
    return { type: "error", error: { type: anthropicErrorType(e.status), message: e.message } };
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

export function errorResponse(c: Context, e: ApiError): Response {
  for (const [name, value] of Object.entries(e.headers)) c.header(name, value);
  return c.json(errorBody(e, apiFamily(c.req.path, c.req.header("anthropic-version"))) as object, e.status as 400);
}
