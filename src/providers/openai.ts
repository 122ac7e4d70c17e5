// Any OpenAI-compatible server as a provider: chat prompts go to /chat/completions, raw text
// to /completions, always streamed (with usage in the last chunk), so text reaches our client
// as the provider sends it.
import type { EventSourceMessage } from "eventsource-parser/stream";
import { UnsupportedError } from "../errors";
import { named, pairToolResults, type ConversationMessage, type ToolCall, type ToolRequest } from "../engine/tools";
import { WHOLE_CONTEXT, type FormatInput, type SamplingInput } from "../api/common";
import type { ThinkingRequest } from "../engine/reasoning";
import type { AnswerControls } from "../engine/request";
import {
  callArguments,
  errorBodyMessage,
  parseData,
  StreamFailure,
  type ProviderAdapter,
  type RemoteEvent,
  type RemoteUsage,
} from "./types";

export const openaiAdapter: ProviderAdapter = {
  request(config, req) {
    const common = {
      model: config.model,
      stream: true,
      stream_options: { include_usage: true },
      // Under the client's name for it: OpenAI's reasoning models refuse max_tokens, and some
      // servers (older llama.cpp) read max_tokens only, so neither name fits every provider.
      [req.maxTokensParam ?? "max_tokens"]: req.maxTokens,
      ...sampling(req.sampling),
      ...(req.stop?.length ? { stop: req.stop } : {}),
      // Raw completions too: vLLM and mlx serve constrain them (OpenAI's refusal names it).
      ...(req.format ? { response_format: responseFormat(req.format) } : {}),
      // vLLM's, which mlx serve takes too (OpenAI itself answers a 400 naming it, which the client then sees).
      ...(req.ignoreEos ? { ignore_eos: true } : {}),
      ...answerControls(req.controls),
      // Hints OpenAI reads (and mlx serve takes); vLLM ignores the ones it does not know.
      user: req.hints?.user,
      safety_identifier: req.hints?.safetyIdentifier,
      prompt_cache_key: req.hints?.promptCacheKey,
      prompt_cache_retention: req.hints?.promptCacheRetention,
    };
    const prompt = req.prompt;
    if (prompt.kind === "ids")
      throw new UnsupportedError(
        `model '${config.name}' is remote: a prompt of token ids cannot be sent to it`,
        "prompt",
      );
    // A fill-in-the-middle prompt's suffix as OpenAI's completions take it (a provider without FIM refuses it, naming it).
    if (prompt.kind === "text" && !prompt.template)
      return {
        path: "/completions",
        body: { ...common, prompt: prompt.text, ...(prompt.suffix === undefined ? {} : { suffix: prompt.suffix }) },
      };
    const messages =
      prompt.kind === "chat"
        ? pairToolResults(prompt.messages).map(chatMessage)
        : [
            ...(prompt.system ? [{ role: "system", content: prompt.system }] : []),
            { role: "user", content: prompt.text },
          ];
    return {
      path: "/chat/completions",
      body: {
        ...common,
        messages,
        ...(req.tools?.tools.length ? tools(req.tools) : {}),
        ...thinking(req.thinking),
        // The last message is the answer's start, which the model goes on with (Anthropic's prefill):
        // vLLM's fields for it, which mlx serve takes too (else the remote answers a turn of its own).
        ...(prompt.kind === "chat" && prompt.continueFinal
          ? { continue_final_message: true, add_generation_prompt: false }
          : {}),
      },
    };
  },

  // The client's request as it sent it (vLLM's truncate_prompt_tokens too), under the provider's name for the model.
  embeddingsRequest: (config, body) => ({ path: "/embeddings", body: { ...body, model: config.model } }),

  headers: (apiKey) => ({
    "content-type": "application/json",
    accept: "text/event-stream",
    ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}),
  }),

  async *events(stream: AsyncIterable<EventSourceMessage>): AsyncGenerator<RemoteEvent> {
    // Calls arrive in pieces keyed by their index: the first piece has the id and name, which
    // some servers repeat in every piece (so it is set, as the openai client sets it, not added to).
    const calls: { id: string; name: string; args: string }[] = [];
    let finishReason: string | undefined;
    let stopSequence: string | undefined;
    let stopToken: number | undefined;
    let usage: RemoteUsage = { promptTokens: 0, completionTokens: 0, cachedTokens: 0 };
    for await (const message of stream) {
      if (message.data === "[DONE]") break;
      const chunk = parseData(message.data);
      if (chunk.error) throw new StreamFailure(errorBodyMessage(message.data));
      if (chunk.usage) usage = readUsage(chunk.usage as OpenAIUsage);
      const choice = (chunk.choices as OpenAIChoice[] | undefined)?.[0];
      if (!choice) continue;
      // vLLM, llama.cpp and we name it reasoning_content; newer vLLM and OpenRouter reasoning.
      const reasoning = choice.delta?.reasoning_content ?? choice.delta?.reasoning;
      if (reasoning) yield { type: "reasoning", text: reasoning };
      const text = choice.delta?.content ?? choice.text;
      if (text) yield { type: "text", text };
      for (const piece of choice.delta?.tool_calls ?? []) {
        const call = (calls[piece.index ?? 0] ??= { id: "", name: "", args: "" });
        if (piece.id) call.id = piece.id;
        if (piece.function?.name) call.name = piece.function.name;
        if (piece.function?.arguments) call.args += piece.function.arguments;
      }
      if (choice.finish_reason) finishReason = choice.finish_reason;
      // vLLM's (and our) stop_reason: the stop string that ended the answer, or the stop token that did.
      if (typeof choice.stop_reason === "string") stopSequence = choice.stop_reason;
      if (typeof choice.stop_reason === "number") stopToken = choice.stop_reason;
    }
    if (!finishReason) throw new StreamFailure("the stream ended before the answer did");
    yield {
      type: "done",
      finishReason: finishReason === "length" ? "length" : "stop",
      calls: calls.map(
        (c): ToolCall => ({
          id: c.id || `call_${crypto.randomUUID()}`,
          name: c.name,
          arguments: callArguments(c.args),
        }),
      ),
      stopSequence,
      stopToken,
      usage,
    };
  },

  errorMessage: errorBodyMessage,
};

interface OpenAIChoice {
  delta?: {
    content?: string | null;
    reasoning_content?: string | null;
    reasoning?: string | null;
    tool_calls?: { index?: number; id?: string; function?: { name?: string; arguments?: string } }[];
  };
  text?: string;
  finish_reason?: string | null;
  stop_reason?: string | number | null;
}

interface OpenAIUsage {
  prompt_tokens?: number;
  completion_tokens?: number;
  prompt_tokens_details?: { cached_tokens?: number } | null;
}

const readUsage = (u: OpenAIUsage): RemoteUsage => ({
  promptTokens: u.prompt_tokens ?? 0,
  completionTokens: u.completion_tokens ?? 0,
  cachedTokens: u.prompt_tokens_details?.cached_tokens ?? 0,
});

/**
 * The sampling values the client set, by their OpenAI names. top_k, min_p and
 * repetition_penalty are not OpenAI's own, but vLLM, llama.cpp, mlx-lm and we accept them;
 * OpenAI itself answers a 400 naming them, which the client then sees. The repetition
 * penalty's window goes as mlx-lm's repetition_context_size (0: the whole context); an empty
 * one (Ollama's repeat_last_n 0) turns the penalty off, as here.
 */
function sampling(s: SamplingInput): Record<string, unknown> {
  const window = s.repetitionContext;
  return {
    temperature: s.temperature,
    top_p: s.topP,
    // Off is 0 here, -1 in vLLM's older releases (which refuse 0); llama.cpp, mlx-lm and we take -1 too.
    top_k: s.topK === 0 ? -1 : s.topK,
    min_p: s.minP,
    repetition_penalty: window === 0 ? 1 : s.repetitionPenalty,
    repetition_context_size: window === WHOLE_CONTEXT ? 0 : window || undefined,
    presence_penalty: s.presencePenalty,
    frequency_penalty: s.frequencyPenalty,
    seed: s.seed,
    logit_bias: s.logitBias && Object.fromEntries(s.logitBias),
  };
}

/**
 * Thinking as the servers that host thinking models take it: the chat template's
 * `enable_thinking` (vLLM, SGLang, llama.cpp and we), and our `thinking_budget`. Like top_k
 * above, OpenAI itself answers a 400 naming them, which the client then sees. The effort asked
 * (reasoning_effort, the Responses API's reasoning.effort, Ollama's think: "low") goes as
 * `reasoning_effort`, which OpenAI's reasoning models and gpt-oss's template (vLLM's and ours) read.
 * "none" goes only where the client named it (reasoning_effort, reasoning.effort), beside
 * enable_thinking false: OpenAI takes it from gpt-5.1 on and vLLM in its newer releases (which
 * hand it to templates that read reasoning_effort, gpt-oss's, GLM's), but older ones of either
 * answer a 400 for it, so thinking switched off otherwise (Ollama's think: false, Anthropic's
 * thinking disabled, --no-think) does not add it to a request the provider took before.
 */
function thinking(t: ThinkingRequest | undefined): Record<string, unknown> {
  return {
    ...(t?.enabled !== undefined ? { chat_template_kwargs: { enable_thinking: t.enabled } } : {}),
    ...(t?.budget !== undefined ? { thinking_budget: t.budget } : {}),
    ...(t?.effort !== undefined ? { reasoning_effort: t.effort } : {}),
  };
}

/**
 * vLLM's extra parameters, under the names the client sent them: vLLM (and mlx serve) honour
 * them, so they reach the remote as they would reach it asked directly. OpenAI itself answers a
 * 400 naming them, which the client then sees. (guided_json and structured_outputs.json arrive
 * as the request's format, and go as response_format, which every OpenAI-compatible server reads.)
 */
function answerControls(c: AnswerControls | undefined): Record<string, unknown> {
  if (!c) return {};
  const pattern = c.pattern;
  // guided_regex, or structured_outputs.regex: the same field, under the name it came with.
  const kind = pattern && (Object.keys(pattern.pattern)[0] as "regex" | "choice" | "grammar");
  const value = pattern && (pattern.pattern as Record<string, unknown>)[kind!];
  return {
    min_tokens: c.minTokens,
    stop_token_ids: c.stopTokenIds,
    include_stop_str_in_output: c.includeStop,
    skip_special_tokens: c.skipSpecialTokens,
    allowed_token_ids: c.allowedTokenIds,
    bad_words: c.badWords,
    truncate_prompt_tokens: c.truncatePromptTokens,
    ...(pattern &&
      (pattern.param.startsWith("structured_outputs.")
        ? { structured_outputs: { [kind!]: value } }
        : { [`guided_${kind}`]: value })),
  };
}

function chatMessage(m: ConversationMessage): Record<string, unknown> {
  if (m.role === "tool") return { role: "tool", tool_call_id: m.toolCallId, content: m.content };
  // An assistant turn's reasoning as vLLM, llama.cpp and we read it back: a thinking template
  // renders it in a multi-step tool call's turns, so the prompt goes on from what the model wrote.
  const reasoning = m.role === "assistant" && m.reasoning ? { reasoning_content: m.reasoning } : {};
  if (m.role === "assistant" && m.toolCalls?.length)
    return {
      role: "assistant",
      content: m.content || null,
      ...named(m),
      ...reasoning,
      tool_calls: m.toolCalls.map((c) => ({
        id: c.id,
        type: "function",
        function: { name: c.name, arguments: JSON.stringify(c.arguments) },
      })),
    };
  return { role: m.role, content: m.content, ...named(m), ...reasoning };
}

function responseFormat(f: FormatInput): Record<string, unknown> {
  if (f.format === "json") return { type: "json_object" };
  return {
    type: "json_schema",
    // The client's name and description for it, which the provider's model reads (else a name of ours: it is required).
    json_schema: {
      name: f.name ?? "answer",
      description: f.description,
      schema: f.format.schema,
      strict: f.format.strict ?? true,
    },
  };
}

function tools(t: ToolRequest): Record<string, unknown> {
  return {
    tools: t.tools.map((tool) => ({
      type: "function",
      function: { name: tool.name, description: tool.description, parameters: tool.parameters, strict: tool.strict },
    })),
    tool_choice: typeof t.choice === "object" ? { type: "function", function: { name: t.choice.name } } : t.choice,
    ...(t.choice === "none" ? {} : { parallel_tool_calls: t.parallel }),
  };
}
