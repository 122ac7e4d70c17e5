// The OpenAI API's request and response shapes (chat completions, completions, models), the
// validation of requests, and the builders of responses and stream chunks.
import { createHash } from "node:crypto";
import type { ConversationMessage } from "../engine/tools";
import { THINKING_SWITCHES } from "../engine/reasoning";
import type { TextPattern } from "../engine/grammar";
import type { AnswerControls } from "../engine/request";
import type { FormatInput, PromptInput, RequestHints, SamplingInput, ThinkingRequest, ToolRequest } from "./common";
import { REASONING_EFFORTS, TEXT_PARTS_SEPARATOR, WHOLE_CONTEXT } from "./common";
import { parseToolCalls, toolRequest, toolResultName } from "./tools";
import { Fields, ValidationError, messageFields, serviceTier, unsupported } from "./validate";

export interface OpenAIRequest {
  model?: string;
  /** How many choices to generate for the prompt. */
  n: number;
  /** vLLM's ignore_eos: generate up to max_tokens whatever the model says. */
  ignoreEos: boolean;
  /** vLLM's extra parameters on the answer's tokens and its end (min_tokens, stop_token_ids, ...). */
  controls: AnswerControls;
  /** One prompt (chat), or a completion request's batch: each gets `n` choices. */
  prompts: PromptInput[];
  stream: boolean;
  includeUsage: boolean;
  /** vLLM's stream_options.continuous_usage_stats (with include_usage): every chunk carries the usage so far. */
  continuousUsage: boolean;
  maxTokens?: number;
  /** The API's own maxTokens where neither the request nor its model's num_predict sets one (a completion's 16). */
  defaultMaxTokens?: number;
  /** The field that set maxTokens, for its errors. */
  maxTokensParam: "max_completion_tokens" | "max_tokens";
  sampling: SamplingInput;
  stop: string[];
  /** Whether to return logprobs, and how many alternatives per token. */
  logprobs: boolean;
  topLogprobs: number;
  /** A completion's echo: each choice's text (and logprobs) starts with its prompt's. */
  echo?: boolean;
  format?: FormatInput;
  tools?: ToolRequest;
  thinking?: ThinkingRequest;
  hints: RequestHints;
}

const ROLES = new Set(["system", "developer", "user", "assistant", "tool"]);

/** Most choices one request may ask for (each is a sequence in the model's batch). */
export const MAX_CHOICES = 16;

// Every field each endpoint reads; any other is a 400 naming it. Those refused with their own
// message below (audio, functions, ...) are listed so that message is the one given.
const COMMON_FIELDS = [
  "model",
  "n",
  "stream",
  "stream_options",
  "max_tokens",
  "max_completion_tokens",
  "temperature",
  "top_p",
  "top_k",
  "min_p",
  "repetition_penalty",
  "repetition_context_size",
  "seed",
  "presence_penalty",
  "frequency_penalty",
  "logit_bias",
  "stop",
  "response_format",
  "user",
  "safety_identifier",
  "service_tier",
  "functions",
  "audio",
  "prediction",
  "web_search_options",
  "modalities",
  "store",
  "ignore_eos",
  "adapters",
  // vLLM's extra sampling parameters (its clients send them in extra_body).
  "min_tokens",
  "stop_token_ids",
  "include_stop_str_in_output",
  "skip_special_tokens",
  "allowed_token_ids",
  "bad_words",
  "truncate_prompt_tokens",
  // vLLM's guided decoding, and its newer form of it.
  "guided_json",
  "guided_regex",
  "guided_choice",
  "guided_grammar",
  "structured_outputs",
];
const CHAT_FIELDS = [
  ...COMMON_FIELDS,
  "messages",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
  "logprobs",
  "top_logprobs",
  "reasoning_effort",
  "chat_template_kwargs",
  "thinking_budget",
  "metadata",
  "prompt_cache_key",
  "prompt_cache_retention",
  "continue_final_message",
  "add_generation_prompt",
];
const COMPLETION_FIELDS = [
  ...COMMON_FIELDS,
  "prompt",
  "tools",
  "echo",
  "suffix",
  "best_of",
  "logprobs",
  "reasoning_effort",
  "chat_template_kwargs",
  "thinking_budget",
];

/** The fields both endpoints share: sampling, limits, stop, streaming. */
function commonFields(
  f: Fields,
  { leastMaxTokens = 1 } = {},
): Omit<OpenAIRequest, "prompts" | "logprobs" | "topLogprobs"> {
  const n = f.integer("n", { min: 1, max: MAX_CHOICES }) ?? 1;
  // Identifiers and hints that ask for nothing a local model would do differently (a remote provider is sent them).
  const hints = requestHints(f);
  serviceTier(f, OPENAI_SERVED_TIERS);
  if (f.boolean("store")) throw unsupported("store", "'store' true (stored chat completions)");
  const stream = f.boolean("stream") ?? false;
  const options = streamOptions(f, stream, ["include_usage", "continuous_usage_stats"]);
  const includeUsage = options?.boolean("include_usage") ?? false;
  // As vLLM: only beside include_usage (alone it asks for nothing).
  const continuousUsage = (options?.boolean("continuous_usage_stats") ?? false) && includeUsage;
  const newer = f.integer("max_completion_tokens", { min: leastMaxTokens });
  const maxTokens = newer ?? f.integer("max_tokens", { min: leastMaxTokens });
  let topK = f.integer("top_k", { min: -1 });
  if (topK === -1) topK = 0; // vLLM's "disabled"
  const sampling: SamplingInput = {
    temperature: f.number("temperature", { min: 0, max: 2 }),
    topP: f.number("top_p", { above: 0, max: 1 }),
    topK,
    minP: f.number("min_p", { min: 0, max: 1 }),
    repetitionPenalty: f.number("repetition_penalty", { above: 0, max: 10 }),
    repetitionContext: repetitionContextSize(f),
    // Any integer, as OpenAI's and vLLM's (a negative one too: its 64 bits make the key).
    seed: f.integer("seed", { min: -Number.MAX_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
    presencePenalty: f.number("presence_penalty", { min: -2, max: 2 }),
    frequencyPenalty: f.number("frequency_penalty", { min: -2, max: 2 }),
    logitBias: logitBias(f),
  };
  const stop = f.stop("stop");
  const guided = guidedDecoding(f);
  const format = responseFormat(f);
  if (guided && format)
    throw new ValidationError(
      `'${guided.param.split(".")[0]}' cannot be combined with 'response_format': each asks for the answer's shape`,
      guided.param.split(".")[0],
    );
  if (f.has("functions")) throw unsupported("functions", "'functions' (use 'tools')");
  // mlx_lm.server's adapter per request: here an adapter is a model name of its own.
  if (f.has("adapters"))
    throw unsupported(
      "adapters",
      "'adapters' (serve the adapter as a model: mlx serve --adapter NAME=DIR, then ask for NAME)",
    );
  // Features of OpenAI's API this server does not have: a 400 naming them, never ignored.
  for (const field of ["audio", "prediction", "web_search_options"]) if (f.has(field)) throw unsupported(field);
  const modalities = f.array("modalities");
  if (modalities?.some((m) => m !== "text")) throw unsupported("modalities", "output 'modalities' other than text");
  const ignoreEos = f.boolean("ignore_eos") ?? false;
  return {
    model: f.string("model", { nonEmpty: true }),
    n,
    hints,
    ignoreEos,
    controls: { ...answerControls(f, maxTokens), ...(guided && "pattern" in guided && { pattern: guided }) },
    stream,
    includeUsage,
    continuousUsage,
    maxTokens,
    maxTokensParam: newer === undefined ? "max_tokens" : "max_completion_tokens",
    sampling,
    stop,
    format: format ?? (guided && "format" in guided ? guided : undefined),
  };
}

/**
 * vLLM's extra parameters on which tokens the answer holds and where it ends, checked as its
 * SamplingParams checks them (min_tokens at most max_tokens). Token ids are checked against the
 * model's vocabulary once it is known.
 */
function answerControls(f: Fields, maxTokens: number | undefined): AnswerControls {
  const minTokens = f.integer("min_tokens", { min: 0 });
  if (minTokens !== undefined && maxTokens !== undefined && minTokens > maxTokens)
    f.fail("min_tokens", `must be at most max_tokens (${maxTokens}), got ${minTokens}`);
  return {
    minTokens: minTokens || undefined,
    stopTokenIds: tokenIds(f, "stop_token_ids"),
    includeStop: f.boolean("include_stop_str_in_output"),
    skipSpecialTokens: f.boolean("skip_special_tokens"),
    allowedTokenIds: tokenIds(f, "allowed_token_ids", { nonEmpty: true }),
    badWords: badWords(f),
    truncatePromptTokens: truncatePromptTokens(f),
  };
}

/**
 * vLLM's guided decoding: guided_json (a JSON Schema, as an object or its text), guided_regex,
 * guided_choice (a list of strings), guided_grammar (EBNF in xgrammar's GBNF form), or the same
 * under structured_outputs ({json, regex, choice, grammar, json_object}), its newer name. One
 * shape at most: JSON goes to the structured output response_format asks for, the others to a
 * pattern the answer must match. vLLM's guided_json is strict, as xgrammar's schemas are.
 */
function guidedDecoding(f: Fields): FormatInput | { pattern: TextPattern; param: string } | undefined {
  const legacy = ["guided_json", "guided_regex", "guided_choice", "guided_grammar"].filter((field) => f.has(field));
  const newer = f.object("structured_outputs");
  newer?.onlyKnown(["json", "regex", "choice", "grammar", "json_object"]);
  // json_object false asks for nothing.
  const newerFields = ["json", "regex", "choice", "grammar"].filter((field) => newer?.has(field));
  if (newer?.boolean("json_object")) newerFields.push("json_object");
  const asked = [...legacy.map((field) => ({ at: f, field })), ...newerFields.map((field) => ({ at: newer!, field }))];
  if (asked.length === 0) return undefined;
  if (asked.length > 1)
    throw new ValidationError(
      `only one kind of guided decoding may be asked for, got ${asked.map(({ at, field }) => `'${at.name(field)}'`).join(" and ")}`,
      asked[1]!.at.name(asked[1]!.field),
    );
  const { at, field } = asked[0]!;
  const param = at.name(field);
  switch (field.replace(/^guided_/, "")) {
    case "json":
      return { format: { schema: guidedSchema(at, field), strict: true }, param };
    case "json_object":
      return { format: "json", param };
    case "regex":
      return { pattern: { regex: at.string(field, { nonEmpty: true })! }, param };
    case "grammar":
      return { pattern: { grammar: at.string(field, { nonEmpty: true })! }, param };
    default: {
      const choices = at.array(field, { nonEmpty: true })!;
      choices.forEach((choice, i) => {
        if (typeof choice !== "string" || choice.length === 0)
          throw new ValidationError(
            `'${param}.${i}' must be a non-empty string, got ${JSON.stringify(choice)}`,
            `${param}.${i}`,
          );
      });
      return { pattern: { choice: choices as string[] }, param };
    }
  }
}

/** guided_json's schema: a JSON Schema object, or its text (as vLLM takes either). */
function guidedSchema(at: Fields, field: string): object {
  const value = at.raw(field);
  let schema = value;
  if (typeof value === "string")
    try {
      schema = JSON.parse(value);
    } catch (error) {
      at.fail(field, `is not a JSON Schema: its text is not valid JSON (${(error as Error).message})`);
    }
  if (schema === null || typeof schema !== "object" || Array.isArray(schema))
    at.fail(field, "must be a JSON Schema (an object, or its text)");
  return schema as object;
}

/** vLLM's truncate_prompt_tokens: a count of tokens (>= 1), or -1 for as many as the context holds. */
export function truncatePromptTokens(f: Fields): number | undefined {
  const keep = f.integer("truncate_prompt_tokens", { min: -1 });
  if (keep === 0)
    f.fail("truncate_prompt_tokens", "must be at least 1 (or -1: as many tokens as the context holds), got 0");
  return keep;
}

/** vLLM's bad_words: a list of words (non-empty strings). */
function badWords(f: Fields): string[] | undefined {
  const words = f.array("bad_words");
  words?.forEach((word, i) => {
    if (typeof word !== "string" || word.trim().length === 0)
      throw new ValidationError(
        `'bad_words.${i}' must be a word (a string with more than spaces), got ${JSON.stringify(word)}`,
        `bad_words.${i}`,
      );
  });
  return words?.length ? (words as string[]) : undefined;
}

/** A list of token ids (whole numbers >= 0); undefined when absent or empty. */
function tokenIds(f: Fields, field: string, o: { nonEmpty?: boolean } = {}): number[] | undefined {
  const ids = f.array(field, { nonEmpty: o.nonEmpty });
  ids?.forEach((id, i) => {
    if (!Number.isInteger(id) || (id as number) < 0)
      throw new ValidationError(
        `'${f.name(field)}.${i}' must be a token id (a whole number >= 0), got ${JSON.stringify(id)}`,
        `${f.name(field)}.${i}`,
      );
  });
  return ids?.length ? (ids as number[]) : undefined;
}

/** user, safety_identifier, prompt_cache_key and prompt_cache_retention (chat completions and Responses). */
export function requestHints(f: Fields): RequestHints {
  return {
    user: f.string("user"),
    safetyIdentifier: f.string("safety_identifier"),
    promptCacheKey: f.string("prompt_cache_key"),
    promptCacheRetention: promptCacheRetention(f),
  };
}

/**
 * OpenAI's two retention policies; "in-memory" is how its clients spelled the first until they
 * were corrected, and agent frameworks built then still send it.
 */
function promptCacheRetention(f: Fields): RequestHints["promptCacheRetention"] {
  const retention = f.string("prompt_cache_retention");
  if (retention === undefined) return undefined;
  if (retention === "in_memory" || retention === "in-memory") return "in_memory";
  if (retention === "24h") return retention;
  return f.fail("prompt_cache_retention", `must be in_memory or 24h; got '${retention}'`);
}

/** OpenAI's service_tier names for how every request here is served (chat completions and Responses). */
export const OPENAI_SERVED_TIERS = ["auto", "default"];

/**
 * stream_options, only with stream: the endpoint's own options (`known`), and include_obfuscation.
 * OpenAI pads its events against side channels over the internet, on by default; a local server
 * adds none, which changes no event's meaning: either value is taken.
 */
export function streamOptions(f: Fields, stream: boolean, known: string[]): Fields | undefined {
  const options = f.object("stream_options");
  if (options && !stream)
    throw new ValidationError("'stream_options' is only allowed when 'stream' is true", "stream_options");
  options?.onlyKnown([...known, "include_obfuscation"]);
  options?.boolean("include_obfuscation");
  return options;
}

/** response_format: text (nothing to enforce), json_object, or json_schema {name, schema, strict}. */
function responseFormat(f: Fields): FormatInput | undefined {
  const format = f.object("response_format");
  if (!format) return undefined;
  const type = format.string("type", { required: true });
  // A key the type does not read is refused, not dropped: a json_schema beside type json_object,
  // or a misspelt strict, would leave the answer less constrained than the client believes.
  format.onlyKnown(type === "json_schema" ? ["type", "json_schema"] : ["type"]);
  if (type === "text") return undefined;
  if (type === "json_object") return { format: "json", param: "response_format" };
  if (type === "json_schema") {
    const spec = format.object("json_schema");
    if (!spec)
      throw new ValidationError(
        "'response_format.json_schema' is required when type is 'json_schema'",
        "response_format.json_schema",
      );
    spec.onlyKnown(["name", "description", "schema", "strict"]);
    const name = spec.string("name", { required: true, nonEmpty: true });
    const schema = spec.object("schema");
    if (!schema)
      throw new ValidationError(
        "'response_format.json_schema.schema' must be a JSON Schema object",
        "response_format.json_schema.schema",
      );
    return {
      format: { schema: schema.body, strict: spec.boolean("strict") ?? false },
      param: "response_format.json_schema.schema",
      name,
      description: spec.string("description"),
    };
  }
  throw new ValidationError(
    `'response_format.type' must be one of text, json_object, json_schema; got '${type}'`,
    "response_format.type",
  );
}

function logitBias(f: Fields): Map<number, number> | undefined {
  const bias = f.object("logit_bias");
  if (!bias) return undefined;
  const out = new Map<number, number>();
  for (const key of Object.keys(bias.body)) {
    // Decimal digits only: Number() would also read "", " 5", "0x10" and "1e2" as some other token's id.
    if (!/^\d+$/.test(key))
      throw new ValidationError(`'logit_bias' keys must be token ids, got '${key}'`, "logit_bias");
    // Fields read null as absent; here it would be a NaN bias, which wins every argmax.
    const value = bias.number(key, { min: -100, max: 100 }) ?? bias.fail(key, "must be a number, got null");
    out.set(Number(key), value);
  }
  return out.size > 0 ? out : undefined;
}

function messageContent(m: Fields, at: string): string {
  const content = m.raw("content");
  if (typeof content === "string") return content;
  if (content === null || content === undefined) {
    if (m.raw("role") === "assistant") return "";
    throw new ValidationError(`'${at}.content' is required`, `${at}.content`);
  }
  if (!Array.isArray(content))
    throw new ValidationError(`'${at}.content' must be a string or a list of content parts`, `${at}.content`);
  const assistant = m.raw("role") === "assistant";
  return content
    .map((part, i) => {
      const p = Fields.item(part, `${at}.content.${i}`);
      const type = p.string("type", { required: true });
      // An assistant turn that declined is replayed with its refusal as what it said.
      if (type === "refusal" && assistant) return p.string("refusal", { required: true })!;
      if (type !== "text") throw unsupported(`${at}.content.${i}.type`, `content of type '${type}'`);
      return p.string("text", { required: true })!;
    })
    .join(TEXT_PARTS_SEPARATOR);
}

/**
 * mlx_lm.server's repetition_context_size: the last N tokens the repetition penalty looks at
 * (default 20, as ours); 0 is every token, as its tokens[-0:] takes them.
 */
function repetitionContextSize(f: Fields): number | undefined {
  const size = f.integer("repetition_context_size", { min: 0 });
  return size === 0 ? WHOLE_CONTEXT : size;
}

export function parseChatRequest(body: unknown): OpenAIRequest {
  const f = Fields.of(body);
  f.onlyKnown(CHAT_FIELDS);
  f.object("metadata");
  const raw = f.array("messages", { required: true, nonEmpty: true })!;
  const messages: ConversationMessage[] = [];
  raw.forEach((item, i) => {
    const { m, at, role } = messageFields(item, i, ROLES);
    const message: ConversationMessage = {
      role: role === "developer" ? "system" : role,
      content: messageContent(m, at),
    };
    if (role === "assistant") {
      message.toolCalls = parseToolCalls(m, "json-text");
      // vLLM's name for it, and its newer one.
      const reasoning = m.string("reasoning_content") ?? m.string("reasoning");
      if (reasoning) message.reasoning = reasoning;
    }
    if (role === "tool") {
      message.toolCallId = m.string("tool_call_id", { required: true, nonEmpty: true });
      message.toolName = m.string("name") ?? toolResultName(messages, message.toolCallId!);
    } else {
      const name = m.string("name");
      if (name !== undefined) message.name = name;
    }
    messages.push(message);
  });
  const common = commonFields(f);
  const tools = toolRequest(f, { withChoice: true });
  // The answer's shape: response_format's, or guided decoding's (named by its top-level field).
  const shapedBy = (common.format?.param ?? common.controls.pattern?.param)?.split(".")[0];
  if (tools && tools.choice !== "auto" && tools.choice !== "none" && shapedBy) {
    throw new ValidationError(`'${shapedBy}' cannot be combined with a 'tool_choice' that requires a call`, shapedBy);
  }
  const logprobs = f.boolean("logprobs") ?? false;
  const topLogprobs = f.integer("top_logprobs", { min: 0, max: 20 }) ?? 0;
  if (topLogprobs > 0 && !logprobs)
    throw new ValidationError("'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
  return {
    ...common,
    prompts: [{ kind: "chat", messages, continueFinal: continueFinalMessage(f, messages) }],
    logprobs,
    topLogprobs,
    tools,
    thinking: thinkingParams(f),
  };
}

/**
 * vLLM's `continue_final_message` (with `add_generation_prompt: false`): the last message is the
 * assistant's start of its answer, which the model goes on with (Anthropic's prefill). A prompt
 * without a generation prompt that continues nothing we do not render.
 */
function continueFinalMessage(f: Fields, messages: ConversationMessage[]): boolean {
  const continues = f.boolean("continue_final_message") ?? false;
  const generationPrompt = f.boolean("add_generation_prompt");
  if (continues && generationPrompt === true)
    f.fail("continue_final_message", "cannot be combined with 'add_generation_prompt': true");
  if (!continues && generationPrompt === false)
    throw unsupported("add_generation_prompt", "'add_generation_prompt': false without 'continue_final_message'");
  const last = messages.at(-1)!;
  if (continues && (last.role !== "assistant" || last.toolCalls?.length))
    f.fail(
      "continue_final_message",
      "needs the last message to be the assistant's text, which the answer goes on with",
    );
  return continues;
}

/**
 * Thinking on a chat request: `reasoning_effort` ("none" switches it off, any other effort on),
 * vLLM's `chat_template_kwargs: {enable_thinking}` (or `{thinking}`, as DeepSeek-V3.1's template
 * names it; either reaches whichever variable the model's template reads), and `thinking_budget`
 * (most reasoning tokens).
 */
function thinkingParams(f: Fields): ThinkingRequest | undefined {
  const effort = f.string("reasoning_effort");
  if (effort !== undefined && !REASONING_EFFORTS.includes(effort))
    f.fail("reasoning_effort", `must be one of ${REASONING_EFFORTS.join(", ")}; got '${effort}'`);
  const kwargs = f.object("chat_template_kwargs");
  for (const key of Object.keys(kwargs?.body ?? {}))
    if (!(THINKING_SWITCHES as readonly string[]).includes(key))
      throw unsupported(kwargs!.name(key), `the chat template variable '${key}'`);
  const [switchKey, otherKey] = THINKING_SWITCHES.filter((key) => kwargs?.has(key));
  const switched = switchKey === undefined ? undefined : kwargs!.boolean(switchKey);
  if (otherKey !== undefined && kwargs!.boolean(otherKey) !== switched)
    kwargs!.fail(otherKey, `must agree with '${switchKey}'`);
  const enabled = switched ?? (effort === undefined ? undefined : effort !== "none");
  const budget = f.integer("thinking_budget", { min: 0 });
  if (enabled === false && budget !== undefined)
    f.fail("thinking_budget", "cannot be combined with thinking switched off");
  const param = switchKey ? `chat_template_kwargs.${switchKey}` : "reasoning_effort";
  if (enabled === undefined && budget === undefined) return undefined;
  // "none" too: an OpenAI-compatible provider is sent the effort as asked (see providers/openai.ts).
  return { enabled, budget, param, ...(effort && { effort }) };
}

/** max_tokens when a completion request names none: 16, OpenAI's (and vLLM's) default, not the whole context. */
const COMPLETION_MAX_TOKENS = 16;

export function parseCompletionRequest(body: unknown): OpenAIRequest {
  const f = Fields.of(body);
  f.onlyKnown(COMPLETION_FIELDS);
  const echo = f.boolean("echo") ?? false;
  // max_tokens 0 with echo: the prompt alone, with its logprobs (OpenAI's legacy models and vLLM take it so).
  const common = commonFields(f, { leastMaxTokens: echo ? 0 : 1 });
  if (f.has("tools")) throw unsupported("tools", "'tools' on /v1/completions (use /v1/chat/completions)");
  for (const field of ["reasoning_effort", "chat_template_kwargs", "thinking_budget"])
    if (f.has(field)) throw unsupported(field, `'${field}' on /v1/completions (use /v1/chat/completions)`);
  // The text after the completion (fill-in-the-middle, for a model with FIM tokens), as OpenAI's legacy completions take it.
  const suffix = f.string("suffix") || undefined;
  const bestOf = f.integer("best_of", { min: 1 });
  if (bestOf !== undefined && bestOf !== 1) throw unsupported("best_of", "'best_of' other than 1");
  const logprobs = f.integer("logprobs", { min: 0, max: 20 });
  return {
    ...common,
    defaultMaxTokens: COMPLETION_MAX_TOKENS,
    prompts: completionPrompts(f).map((prompt) => {
      if (suffix === undefined) return prompt;
      if (prompt.kind !== "text")
        throw new ValidationError("'suffix' needs the prompt as text, not token ids", "suffix");
      return { ...prompt, suffix };
    }),
    logprobs: logprobs !== undefined,
    topLogprobs: logprobs ?? 0,
    echo,
  };
}

/** `prompt`: a string or a list of token ids, or a batch of them (a list of strings or of id lists). */
function completionPrompts(f: Fields): PromptInput[] {
  const p = f.raw("prompt");
  if (p === undefined || p === null) throw new ValidationError("'prompt' is required", "prompt");
  if (Array.isArray(p) && p.length > 0 && p.every((item) => typeof item === "string" || Array.isArray(item)))
    return p.map((item, i) => completionPrompt(item, `prompt.${i}`));
  return [completionPrompt(p, "prompt")];
}

function completionPrompt(p: unknown, param: string): PromptInput {
  if (typeof p === "string") {
    if (p.length === 0) throw new ValidationError(`'${param}' must not be empty`, param);
    return { kind: "text", text: p, template: false };
  }
  if (Array.isArray(p) && p.length > 0 && p.every((t) => Number.isInteger(t) && (t as number) >= 0))
    return { kind: "ids", ids: p as number[] };
  throw new ValidationError(`'${param}' must be a non-empty string or a list of token ids`, param);
}

// ---- responses ----

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  completion_tokens_details: { reasoning_tokens: number };
}

export function usage(
  promptTokens: number,
  completionTokens: number,
  cachedTokens: number,
  reasoningTokens = 0,
): Usage {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: cachedTokens },
    completion_tokens_details: { reasoning_tokens: reasoningTokens },
  };
}

export interface ChatLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export interface CompletionLogprobs {
  tokens: string[];
  /** null for an echoed prompt's first token, which follows nothing. */
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/**
 * OpenAI's system_fingerprint: which backend configuration answered. Here the model's name and
 * this server's version, so it changes when either does (a client may log it next to seeds).
 */
export const systemFingerprint = (model: string, version: string) =>
  `fp_${createHash("sha256").update(`${version}\n${model}`).digest("hex").slice(0, 10)}`;

export const newId = (prefix: string) => `${prefix}-${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;
export const unixSeconds = () => Math.floor(Date.now() / 1000);

/** A model as OpenAI lists one; a loaded model also gives its context length, as vLLM does. */
export function modelObject(id: string, created: number, maxModelLen?: number) {
  return { id, object: "model" as const, created, owned_by: "mlx", ...(maxModelLen && { max_model_len: maxModelLen }) };
}
