// Anthropic's Messages API (or any server that speaks it) as a provider, always streamed.
// It has no raw completions and no JSON Schema parameter: a requested schema is put in the
// system prompt, and the answer is validated like every remote answer (see model.ts).
import type { EventSourceMessage } from "eventsource-parser/stream";
import { UnsupportedError } from "../errors";
import {
  pairToolResults,
  TOOL_ERROR_PREFIX,
  type ConversationMessage,
  type ToolCall,
  type ToolRequest,
  type ToolSpec,
} from "../engine/tools";
import { anthropicErrorStatus } from "../api/anthropic";
import type { FormatInput, SamplingInput } from "../api/common";
import type { ThinkingRequest } from "../engine/reasoning";
import { ANSWER_CONTROL_PARAMS, type AnswerControls } from "../engine/request";
import {
  callArguments,
  errorBodyMessage,
  parseData,
  StreamFailure,
  type ProviderAdapter,
  type RemoteEvent,
  type RemoteUsage,
} from "./types";

/** The API version our requests are written for (the header every Anthropic request carries). */
const ANTHROPIC_VERSION = "2023-06-01";
/** The smallest thinking budget Anthropic takes: the one sent for thinking asked without a budget. */
const MIN_THINKING_BUDGET = 1024;

type Block = Record<string, unknown>;

export const anthropicAdapter: ProviderAdapter = {
  request(config, req) {
    const prompt = req.prompt;
    if (prompt.kind !== "chat" && !(prompt.kind === "text" && prompt.template))
      throw new UnsupportedError(
        `model '${config.name}' is an Anthropic provider, which takes chat messages only (no raw prompt or token ids)`,
        "prompt",
      );
    const conversation: ConversationMessage[] =
      prompt.kind === "chat"
        ? prompt.messages
        : [
            ...(prompt.system ? [{ role: "system", content: prompt.system }] : []),
            { role: "user", content: prompt.text },
          ];
    // Anthropic has no such switch: the answer would end at the model's end as if it were not asked.
    if (req.ignoreEos)
      throw new UnsupportedError(
        `'ignore_eos' is not supported by model '${config.name}' (an Anthropic provider)`,
        "ignore_eos",
      );
    refuseAnswerControls(config.name, req.controls);
    const system = systemPrompt(conversation, req.format);
    return {
      path: "/v1/messages",
      body: {
        model: config.model,
        stream: true,
        max_tokens: req.maxTokens ?? config.defaultMaxTokens,
        ...(system !== undefined && { system }),
        messages: messages(pairToolResults(conversation)),
        ...sampling(config.name, req.sampling),
        ...(req.stop?.length ? { stop_sequences: req.stop } : {}),
        ...(req.tools?.tools.length ? tools(req.tools) : {}),
        ...thinking(req.thinking),
        ...effort(req.thinking),
        // The end user, Anthropic's only such hint (a safety identifier or cache key has no place in its API).
        ...(req.hints?.user !== undefined ? { metadata: { user_id: req.hints.user } } : {}),
        // An Anthropic client's automatic prompt caching, as it asked for it.
        ...(req.hints?.cacheControl && { cache_control: req.hints.cacheControl }),
      },
    };
  },

  /** The prompt as a generation would send it: count_tokens takes that request's prompt fields. */
  countTokensRequest(config, req) {
    const { model, system, messages, tools, tool_choice, thinking } = anthropicAdapter.request(config, req).body;
    return { path: "/v1/messages/count_tokens", body: { model, system, messages, tools, tool_choice, thinking } };
  },

  headers: (apiKey) => ({
    "content-type": "application/json",
    accept: "text/event-stream",
    "anthropic-version": ANTHROPIC_VERSION,
    ...(apiKey ? { "x-api-key": apiKey } : {}),
  }),

  async *events(stream: AsyncIterable<EventSourceMessage>): AsyncGenerator<RemoteEvent> {
    const calls: { id: string; name: string; json: string }[] = [];
    const blockKinds = new Map<number, "text" | "tool" | "thinking">();
    // The open thinking block's text and signature, handed on whole at its end.
    let thinking = { thinking: "", signature: "" };
    let usage: RemoteUsage = { promptTokens: 0, completionTokens: 0, cachedTokens: 0 };
    let stopReason: string | undefined;
    let stopSequence: string | undefined;
    let stopped = false;
    for await (const message of stream) {
      const event = parseData(message.data);
      switch (event.type) {
        case "message_start": {
          const u = (event.message as { usage?: AnthropicUsage } | undefined)?.usage;
          if (u) {
            usage = readUsage(u, usage);
            yield { type: "start", usage };
          }
          break;
        }
        case "content_block_start": {
          const block = event.content_block as { type: string; id?: string; name?: string; data?: string };
          if (block.type === "tool_use") {
            blockKinds.set(event.index as number, "tool");
            calls.push({ id: block.id ?? `toolu_${crypto.randomUUID()}`, name: block.name ?? "", json: "" });
          } else if (block.type === "thinking") {
            blockKinds.set(event.index as number, "thinking");
            thinking = { thinking: "", signature: "" };
          } else if (block.type === "redacted_thinking")
            yield { type: "thinking_block", block: { type: "redacted_thinking", data: block.data ?? "" } };
          else blockKinds.set(event.index as number, "text");
          break;
        }
        case "content_block_delta": {
          const delta = event.delta as {
            type: string;
            text?: string;
            thinking?: string;
            partial_json?: string;
            signature?: string;
          };
          if (delta.type === "text_delta" && delta.text) yield { type: "text", text: delta.text };
          else if (delta.type === "thinking_delta" && delta.thinking) {
            thinking.thinking += delta.thinking;
            yield { type: "reasoning", text: delta.thinking };
          } else if (delta.type === "signature_delta") thinking.signature += delta.signature ?? "";
          else if (delta.type === "input_json_delta" && blockKinds.get(event.index as number) === "tool")
            calls[calls.length - 1]!.json += delta.partial_json ?? "";
          break;
        }
        case "content_block_stop":
          if (blockKinds.get(event.index as number) === "thinking")
            yield { type: "thinking_block", block: { type: "thinking", ...thinking } };
          break;
        case "message_delta": {
          const delta = event.delta as { stop_reason?: string; stop_sequence?: string | null };
          stopReason = delta.stop_reason ?? stopReason;
          stopSequence = delta.stop_sequence ?? undefined;
          if (event.usage) usage = readUsage(event.usage as AnthropicUsage, usage);
          break;
        }
        case "message_stop":
          stopped = true;
          break;
        // Its type too: a client retries an overloaded_error, which a plain failure would hide.
        case "error":
          throw new StreamFailure(
            errorBodyMessage(message.data),
            anthropicErrorStatus((event.error as { type?: unknown } | undefined)?.type),
          );
      }
      if (stopped) break;
    }
    if (!stopped) throw new StreamFailure("the stream ended before the answer did");
    yield {
      type: "done",
      // Cut short by max_tokens or by the end of the model's context (Anthropic's newer models say which).
      finishReason: stopReason === "max_tokens" || stopReason === "model_context_window_exceeded" ? "length" : "stop",
      calls: calls.map((c): ToolCall => ({ id: c.id, name: c.name, arguments: callArguments(c.json) })),
      stopSequence,
      ...(stopReason === "refusal" && { refused: true }),
      usage,
    };
  },

  errorMessage: errorBodyMessage,
};

interface AnthropicUsage {
  input_tokens?: number;
  output_tokens?: number;
  cache_read_input_tokens?: number | null;
  cache_creation_input_tokens?: number | null;
}

/**
 * Anthropic counts the prompt tokens read from its cache and those written to it apart from
 * input_tokens (the three add up to the prompt); we report both as part of the prompt.
 */
const readUsage = (u: AnthropicUsage, before: RemoteUsage): RemoteUsage => {
  const cached = u.cache_read_input_tokens ?? before.cachedTokens;
  const written = u.cache_creation_input_tokens ?? before.cacheWriteTokens ?? 0;
  return {
    promptTokens: u.input_tokens !== undefined ? u.input_tokens + cached + written : before.promptTokens,
    completionTokens: u.output_tokens ?? before.completionTokens,
    cachedTokens: cached,
    cacheWriteTokens: written,
  };
};

/**
 * Thinking on (with its budget: Anthropic requires one, at least 1,024 tokens), adaptive (the
 * model decides) or off, its text omitted where the client asked; unset, the provider's default.
 */
function thinking(t: ThinkingRequest | undefined): Record<string, unknown> {
  if (t?.enabled === false) return { thinking: { type: "disabled" } };
  const display = t?.display ? { display: t.display } : {};
  if (t?.adaptive) return { thinking: { type: "adaptive", ...display } };
  if (t?.enabled === undefined && t?.budget === undefined) return {};
  return { thinking: { type: "enabled", budget_tokens: t.budget ?? MIN_THINKING_BUDGET, ...display } };
}

/** The effort asked (OpenAI's reasoning_effort, Anthropic's own) as Anthropic's `output_config.effort`. */
function effort(t: ThinkingRequest | undefined): Record<string, unknown> {
  if (t?.effort === undefined || t.effort === "none") return {};
  return { output_config: { effort: t.effort === "minimal" ? "low" : t.effort } };
}

/** Anthropic's sampling: temperature, top_p and top_k; anything else set is a 400 naming it. */
function sampling(name: string, s: SamplingInput): Record<string, unknown> {
  const unsupported: [keyof SamplingInput, string][] = [
    ["minP", "min_p"],
    ["repetitionPenalty", "repetition_penalty"],
    ["presencePenalty", "presence_penalty"],
    ["frequencyPenalty", "frequency_penalty"],
    ["seed", "seed"],
    ["logitBias", "logit_bias"],
  ];
  for (const [field, param] of unsupported)
    if (s[field] !== undefined)
      throw new UnsupportedError(`'${param}' is not supported by model '${name}' (an Anthropic provider)`, param);
  return { temperature: s.temperature, top_p: s.topP, top_k: s.topK || undefined };
}

/** vLLM's controls of the answer's tokens and its end: Anthropic's API has none of them, so each set is a 400 naming it. */
function refuseAnswerControls(name: string, controls: AnswerControls | undefined): void {
  const set = Object.entries(controls ?? {}).find(([, value]) => value !== undefined);
  if (!set) return;
  const param =
    set[0] === "pattern"
      ? controls!.pattern!.param
      : ANSWER_CONTROL_PARAMS[set[0] as keyof typeof ANSWER_CONTROL_PARAMS];
  throw new UnsupportedError(`'${param}' is not supported by model '${name}' (an Anthropic provider)`, param);
}

const isSystem = (m: ConversationMessage) => m.role === "system" || m.role === "developer";

/**
 * The system and developer messages and the format's instruction, as one string; or as text
 * blocks where a client's cache_control marks one (a breakpoint Anthropic reads only on a block).
 */
function systemPrompt(
  conversation: ConversationMessage[],
  format: FormatInput | undefined,
): string | Block[] | undefined {
  const parts = [
    ...conversation.filter(isSystem),
    ...(format ? [{ role: "system", content: formatInstruction(format) }] : []),
  ].filter((m) => m.content);
  if (parts.length === 0) return undefined;
  if (!parts.some((m) => m.cacheControl)) return parts.map((m) => m.content).join("\n\n");
  return parts.map((m) => withCacheControl({ type: "text", text: m.content }, m));
}

/** The block with the message's cache_control, where it has one. */
const withCacheControl = (block: Block, m: ConversationMessage | ToolSpec): Block =>
  m.cacheControl ? { ...block, cache_control: m.cacheControl } : block;

/**
 * Our conversation as Anthropic's alternating turns: system messages go to `system`, a tool
 * message becomes a tool_result block in a user turn, and consecutive turns of one role are
 * merged (parallel calls' results must share one user turn). An assistant turn's thinking
 * blocks come first, as the client sent them back (Anthropic checks their signatures, and
 * requires them before a tool_result's turn), and a message's cache_control marks its last block.
 */
function messages(conversation: ConversationMessage[]): { role: string; content: Block[] }[] {
  const turns: { role: string; content: Block[] }[] = [];
  for (const m of conversation) {
    if (isSystem(m)) continue;
    const role = m.role === "assistant" ? "assistant" : "user";
    const blocks: Block[] =
      m.role === "tool"
        ? [toolResult(m)]
        : [
            ...(m.thinkingBlocks ?? []),
            ...(m.content ? [{ type: "text", text: m.content }] : []),
            ...(m.toolCalls ?? []).map((c) => ({ type: "tool_use", id: c.id, name: c.name, input: c.arguments })),
          ];
    if (m.cacheControl && blocks.length > 0) blocks.push(withCacheControl(blocks.pop()!, m));
    const last = turns.at(-1);
    if (last?.role === role) last.content.push(...blocks);
    else turns.push({ role, content: blocks });
  }
  return turns;
}

/** A tool message as its tool_result block: a failed call's as is_error, its text as the client sent it. */
function toolResult(m: ConversationMessage): Block {
  const result = { type: "tool_result", tool_use_id: m.toolCallId, content: m.content };
  return m.isError ? { ...result, content: m.content.slice(TOOL_ERROR_PREFIX.length), is_error: true } : result;
}

function tools(t: ToolRequest): Record<string, unknown> {
  const choice =
    t.choice === "auto"
      ? { type: "auto" }
      : t.choice === "none"
        ? { type: "none" }
        : t.choice === "required"
          ? { type: "any" }
          : { type: "tool", name: t.choice.name };
  return {
    // Anthropic requires the schema's type, which an OpenAI function without parameters lacks.
    tools: t.tools.map((tool) =>
      withCacheControl(
        { name: tool.name, description: tool.description, input_schema: { type: "object", ...tool.parameters } },
        tool,
      ),
    ),
    tool_choice: t.choice !== "none" && !t.parallel ? { ...choice, disable_parallel_tool_use: true } : choice,
  };
}

function formatInstruction(f: FormatInput): string {
  return f.format === "json"
    ? "Answer with one JSON object and nothing else."
    : `Answer with JSON only, nothing else, matching this JSON Schema:\n${JSON.stringify(f.format.schema)}`;
}
