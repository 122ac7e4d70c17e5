// The one representation every API family is translated to and from for a remote model: a
// request (what the HTTP routes and the CLI already reduce every request to) and a stream of
// events (text as it arrives, then how it ended). Each provider kind translates only between
// this and its own wire format, so any client API reaches any provider.
import { isJsonObject, parseExactJson } from "../exact-json";
import { withoutControlCharacters } from "../format";
import type { EventSourceMessage } from "eventsource-parser/stream";
import type { FormatInput, PromptInput, RequestHints, SamplingInput } from "../api/common";
import type { ThinkingBlock, ToolCall, ToolRequest } from "../engine/tools";
import type { ThinkingRequest } from "../engine/reasoning";
import type { AnswerControls } from "../engine/request";
import type { RemoteModelConfig } from "./config";

export interface RemoteRequest {
  prompt: PromptInput;
  /** Only the values the client set: the provider applies its own defaults to the rest. */
  sampling: SamplingInput;
  maxTokens?: number;
  /** The client's own name for maxTokens where it is OpenAI's newer one (its reasoning models refuse max_tokens). */
  maxTokensParam?: "max_completion_tokens";
  stop?: string[];
  format?: FormatInput;
  tools?: ToolRequest;
  /** Thinking on or off, and its budget, as the client asked (else the provider's default). */
  thinking?: ThinkingRequest;
  /** Generate up to maxTokens past the model's end token (vLLM's ignore_eos). */
  ignoreEos?: boolean;
  /** vLLM's controls of the answer's tokens and its end (min_tokens, stop_token_ids, guided_regex, ...). */
  controls?: AnswerControls;
  hints?: RequestHints;
}

export interface RemoteUsage {
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens the provider served from its own cache. */
  cachedTokens: number;
  /** Prompt tokens the provider wrote to its cache (Anthropic counts them apart, at their own price). */
  cacheWriteTokens?: number;
}

export type RemoteEvent =
  /** The provider's usage as its answer starts (Anthropic's message_start: the prompt, split between its cache and the rest). */
  | { type: "start"; usage: RemoteUsage }
  | { type: "text"; text: string }
  /** A thinking model's reasoning, apart from its answer. */
  | { type: "reasoning"; text: string }
  /**
   * A thinking block the provider closed, its reasoning sent before: Anthropic's, with the
   * signature it verifies when the block is sent back, or a redacted one (only its data).
   */
  | { type: "thinking_block"; block: ThinkingBlock }
  | {
      type: "done";
      finishReason: "stop" | "length";
      calls: ToolCall[];
      /** The stop sequence that ended the answer, when the provider says which. */
      stopSequence?: string;
      /** The stop token that ended it, as vLLM (and mlx serve) report one of stop_token_ids in stop_reason. */
      stopToken?: number;
      /** The model declined to answer (Anthropic's stop_reason "refusal"): the text so far is all there is. */
      refused?: boolean;
      usage: RemoteUsage;
    };

/** What one provider kind knows: its request, its stream and its error bodies. */
export interface ProviderAdapter {
  /** The path under base_url and the JSON body of a streamed request; throws UnsupportedError for what it cannot carry. */
  request(config: RemoteModelConfig, req: RemoteRequest): { path: string; body: Record<string, unknown> };
  headers(apiKey: string | undefined): Record<string, string>;
  /** The path and JSON body that count a request's prompt tokens, where the provider's API can (Anthropic's count_tokens). */
  countTokensRequest?(config: RemoteModelConfig, req: RemoteRequest): { path: string; body: Record<string, unknown> };
  /** The path and JSON body of an OpenAI embeddings request (`body` as a client sent it), where the provider's API embeds. */
  embeddingsRequest?(
    config: RemoteModelConfig,
    body: Record<string, unknown>,
  ): { path: string; body: Record<string, unknown> };
  /** The provider's server-sent events as ours; throws when the stream fails or ends before the answer. */
  events(stream: AsyncIterable<EventSourceMessage>): AsyncGenerator<RemoteEvent>;
  /** The provider's message in an error body (the body itself when it is not the provider's JSON). */
  errorMessage(body: string): string;
}

/** A stream that broke off or said it failed, in the provider's words. */
export class StreamFailure extends Error {
  override name = "StreamFailure";
  constructor(
    message: string,
    /** The status the provider's error event stands for (Anthropic's overloaded_error: 529), where it named one. */
    readonly status?: number,
  ) {
    super(message);
  }
}

/**
 * What fetch's own failure (refused, reset, DNS, a timeout) means, in a few words: Bun's
 * messages carry advice for its own debugging ("pass `verbose: true` ... to fetch()").
 */
export function describeFetchError(error: unknown): string {
  const e = error as { code?: string; message?: string; name?: string; cause?: { code?: string; message?: string } };
  if (e?.name === "TimeoutError" || e?.name === "AbortError") return "no answer in time (timed out)";
  const code = e?.code ?? e?.cause?.code ?? "";
  if (/ECONNREFUSED|ConnectionRefused/i.test(code)) return "connection refused (is a server listening there?)";
  if (/ENOTFOUND|EAI_AGAIN|DNS/i.test(code)) return "host not found";
  if (/ECONNRESET|ConnectionClosed|EPIPE/i.test(code)) return "the connection was closed by the server";
  const message = (e?.cause?.message ?? e?.message ?? String(error)).split("\n")[0]!;
  return code && !message.includes(code) ? `${message} (${code})` : message;
}

/** Parses JSON from a provider's stream; a line that is not JSON is a broken stream. */
export function parseData(data: string): Record<string, unknown> {
  try {
    return JSON.parse(data) as Record<string, unknown>;
  } catch {
    throw new StreamFailure(
      `the stream sent something that is not JSON: ${withoutControlCharacters(data.slice(0, 120))}`,
    );
  }
}

/** Arguments a provider streamed as JSON text, as an object (a value that is not an object is wrapped). */
export function callArguments(json: string): Record<string, unknown> {
  if (json.trim() === "") return {};
  try {
    const value = parseExactJson(json);
    return isJsonObject(value) ? value : { value };
  } catch {
    throw new StreamFailure(`a tool call's arguments are not JSON: ${json.slice(0, 120)}`);
  }
}

/**
 * The `message` of an `{"error": {"message"}}` or `{"error": "message"}` body, else the body:
 * printable, as it is quoted on a terminal.
 */
export function errorBodyMessage(body: string): string {
  return withoutControlCharacters(bodyMessage(body));
}

function bodyMessage(body: string): string {
  try {
    const parsed = JSON.parse(body) as { error?: { message?: unknown } | string; message?: unknown };
    const error = parsed.error;
    if (typeof error === "string") return error;
    if (error && typeof error.message === "string") return error.message;
    if (typeof parsed.message === "string") return parsed.message;
  } catch {
    // not JSON: the text itself
  }
  // A web server's error page (a base_url that is not the API) is its text, not its markup: the
  // message is one line, whose first would be all "<!DOCTYPE HTML>".
  const text = /^\s*<(!doctype|html)/i.test(body)
    ? body.replace(/<(script|style)\b[\s\S]*?<\/\1>/gi, " ").replace(/<[^>]*>/g, " ")
    : body;
  return text.replace(/\s+/g, " ").trim().slice(0, 500) || "(empty body)";
}

/** The parameter an OpenAI-style error body names (`{"error": {"param"}}`), if any. */
export function errorBodyParam(body: string): string | undefined {
  try {
    const param = (JSON.parse(body) as { error?: { param?: unknown } }).error?.param;
    return typeof param === "string" ? param : undefined;
  } catch {
    return undefined;
  }
}
