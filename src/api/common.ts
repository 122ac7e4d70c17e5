// What both API families reduce a request to, before the server applies model defaults.
import type { SamplingParams } from "../engine/sampling";

export type { FormatInput, PromptInput } from "../engine/request";

export type { ToolRequest } from "../engine/tools";

/** Sampling values a request sets (the rest come from the model's defaults, then ours). */
export type SamplingInput = Partial<SamplingParams> & {
  /** Set where the request asks for a random seed (Ollama's seed -1): its model's seed does not apply. */
  randomSeed?: boolean;
};

/**
 * OpenAI's reasoning efforts. "none" switches thinking off, any other on; a template that takes an
 * effort (gpt-oss's low, medium, high) reads "minimal" as low and "xhigh" as high.
 */
export const REASONING_EFFORTS = ["none", "minimal", "low", "medium", "high", "xhigh"];

/** A repetitionContext longer than any context: every token of it (Ollama's -1, mlx-lm's 0). */
export const WHOLE_CONTEXT = 1 << 30;

export type { ThinkingRequest } from "../engine/reasoning";

/**
 * What a request says about itself to whoever serves it, changing nothing in its answer: the
 * end user (OpenAI's `user`, Anthropic's `metadata.user_id`), OpenAI's `safety_identifier`, and
 * the key that groups requests for a provider's prompt cache (`prompt_cache_key`) and how long that
 * provider keeps it (`prompt_cache_retention`). A local model has no use for them (our prefix cache
 * needs no key and keeps what its budget holds); a remote provider is sent them.
 */
export interface RequestHints {
  user?: string;
  safetyIdentifier?: string;
  promptCacheKey?: string;
  promptCacheRetention?: "in_memory" | "24h";
  /** Anthropic's request-wide `cache_control` (its automatic prompt caching), for an Anthropic provider. */
  cacheControl?: Record<string, unknown>;
}

/**
 * Between a message's text parts or blocks, as vLLM joins them: glued together, the last word of
 * one part ran into the first of the next (an agent's reminder block into the user's text).
 */
export const TEXT_PARTS_SEPARATOR = "\n";
