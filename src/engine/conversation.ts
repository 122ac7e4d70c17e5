// A chat that keeps its KV cache between turns: each turn renders the whole conversation with
// the chat template and goes through the scheduler like any request; the scheduler's prefix
// cache (one entry: the latest turn) holds the keys and values of what was said, so only what
// a new rendering changed is prefilled. When the context fills up, the oldest turns go, down
// to half of it (the system prompt stays), or with a rotating cache (--max-kv-size) the oldest positions.
import type { LoadedModel } from "../models/load";
import type { ChatMessage } from "../tokenizer/tokenizer";
import { soloScheduler, streamCompletion, type CompletionPiece, type CompletionResult } from "./generate";
import { PrefixCache } from "./prefix-cache";
import {
  contextLimit,
  modelContextBound,
  renderChat,
  type ContextBound,
  type FormatInput,
  type TokenizedText,
} from "./request";
import type { ThinkingRequest } from "./reasoning";
import type { ConversationMessage, ToolRequest } from "./tools";
import type { SamplingParams } from "./sampling";
import type { Scheduler } from "./scheduler";

export interface TurnOptions {
  sampling: SamplingParams;
  maxTokens: number;
  /** The caller's own name for maxTokens, in its errors (default max_tokens). */
  maxTokensParam?: string;
  /** The caller's own name for what it said, in its errors about the prompt (default messages). */
  promptParam?: string;
  /** Strings that end the answer (not included). */
  stop?: string[];
  /** The context the conversation fills, where less than the model's (Ollama's num_ctx; default: its alias's). */
  contextBound?: ContextBound;
  /** JSON the answer must be. */
  format?: FormatInput;
  /** Thinking on or off, and its budget, for models that think. */
  thinking?: ThinkingRequest;
  /** The functions the model may call on this turn (its calls are kept with its answer); a local conversation's only. */
  tools?: ToolRequest;
  signal?: AbortSignal;
}

export interface TurnInfo {
  /** Prompt tokens the cache already held (not prefilled again). */
  reusedTokens: number;
  /** Prompt tokens prefilled for this turn. */
  newTokens: number;
  /** How many earlier messages were dropped to make room. */
  droppedMessages: number;
}

export class Conversation {
  messages: ChatMessage[] = [];
  #scheduler: Scheduler;
  #contextUsed = 0;
  /**
   * The last turn's prompt and answer, as text and as the ids the cache holds: the answer's ids
   * are the ones sampled, which the next turn's prompt takes where the template writes the
   * answer as it was said (GenerationSpec.earlierSequence), so that it reuses the cache of the
   * whole answer rather than prefilling it again from where its text tokenized again differs.
   */
  #sequence?: TokenizedText;

  constructor(
    public lm: LoadedModel,
    public system?: string,
  ) {
    this.#scheduler = Conversation.#schedulerFor(lm);
  }

  static #schedulerFor(lm: LoadedModel): Scheduler {
    return soloScheduler(lm, new PrefixCache(Number.MAX_SAFE_INTEGER, 1));
  }

  /**
   * The context a turn fills: the model's, or less where `bound` (else the model's alias, its
   * num_ctx) says so. Else a conversation outgrowing a num_ctx was refused every turn, its oldest
   * messages kept, rather than making room as it does at the model's length.
   */
  contextLength(bound?: ContextBound): number {
    return contextLimit(this.lm, bound ?? modelContextBound(this.lm)).tokens;
  }

  /** Tokens of context in use (as of the last turn). */
  get contextUsed(): number {
    return this.#contextUsed;
  }

  clear(): void {
    this.messages = [];
    this.#reset();
  }

  /** Switches to another model; the conversation's text is kept, its cache is not. */
  useModel(lm: LoadedModel): void {
    // Made first: a model its KV cache settings do not fit leaves the conversation on the old one.
    const scheduler = Conversation.#schedulerFor(lm);
    this.#scheduler.dispose();
    this.#scheduler = scheduler;
    this.lm = lm;
    this.#contextUsed = 0;
    this.#sequence = undefined; // another tokenizer's ids
  }

  dispose(): void {
    this.#scheduler.dispose();
  }

  #reset(): void {
    this.#scheduler.dispose();
    this.#scheduler = Conversation.#schedulerFor(this.lm);
    this.#contextUsed = 0;
    this.#sequence = undefined;
  }

  #withSystem(): ChatMessage[] {
    const system: ChatMessage[] = this.system ? [{ role: "system", content: this.system }] : [];
    return [...system, ...this.messages];
  }

  /**
   * As the generation renders it: with the turns the model's alias puts first, and the tools
   * offered, the calls made and their results as the template writes them (renderChat).
   */
  #render(tools: ToolRequest | undefined): number[] {
    const text = renderChat(this.lm, this.#withSystem() as ConversationMessage[], tools);
    return this.lm.tokenizer.encode(text, { addSpecialTokens: false });
  }

  /**
   * Answers `said` (the user's text, or the messages that follow: the results of the calls the
   * last answer made, user messages), streaming pieces; returns the completion and how the
   * prompt was assembled. Only the answer is kept in the conversation (with the calls it made;
   * a thinking model's reasoning is not).
   */
  async *turn(
    said: string | ConversationMessage[],
    o: TurnOptions,
  ): AsyncGenerator<CompletionPiece, { result: CompletionResult; info: TurnInfo }> {
    // A turn that fails (a message the context cannot hold even alone), or whose reader stops
    // reading before the end (a `break` out of the stream), leaves the conversation as it was,
    // the messages dropped to make room for it included: never a question without its answer.
    // A clear() while it runs (it ends the turn "cancelled") leaves the conversation empty.
    const before = this.messages;
    this.messages = [
      ...before,
      ...(typeof said === "string" ? [{ role: "user", content: said }] : (said as ChatMessage[])),
    ];
    const asked = this.messages;
    let result: CompletionResult | undefined;
    let droppedMessages: number;
    try {
      droppedMessages = this.#fitContext(o.maxTokens, this.contextLength(o.contextBound), o.tools);
      result = yield* streamCompletion(this.#scheduler, {
        prompt: { kind: "chat", messages: this.#withSystem() as ConversationMessage[], param: o.promptParam },
        sampling: o.sampling,
        maxTokens: o.maxTokens,
        maxTokensParam: o.maxTokensParam,
        stop: o.stop,
        contextBound: o.contextBound,
        format: o.format,
        thinking: o.thinking,
        tools: o.tools,
        signal: o.signal,
        earlierSequence: this.#sequence,
      });
    } finally {
      if (!result && this.messages === asked) this.messages = before;
    }
    if (this.messages === asked) {
      this.#contextUsed = result.stats.promptTokens + result.tokenIds.length;
      const { toolCalls } = result;
      // A copy of the calls: the result is the caller's to change, the history the conversation's.
      const calls = toolCalls.length > 0 && { toolCalls: structuredClone(toolCalls) };
      this.messages.push({ role: "assistant", content: result.text, ...calls });
      // Only ids that are the answer's text exactly: not a thinking model's reasoning, nor a stop
      // string cut from the text, nor the bytes of a character cut short.
      const answered = result.promptText !== undefined && this.lm.tokenizer.decode(result.tokenIds) === result.text;
      this.#sequence = answered
        ? { text: result.promptText + result.text, ids: [...result.promptTokenIds, ...result.tokenIds] }
        : undefined;
    }
    const reusedTokens = result.stats.cachedTokens;
    return { result, info: { reusedTokens, newTokens: result.stats.promptTokens - reusedTokens, droppedMessages } };
  }

  /**
   * When the prompt plus room for an answer does not fit the context, drops the oldest exchanges
   * until the prompt holds at most half of it. With a rotating cache (--max-kv-size) nothing is
   * dropped: the cache keeps the first and latest positions.
   */
  #fitContext(maxTokens: number, limit: number, tools: ToolRequest | undefined): number {
    if (this.lm.maxKvSize !== undefined) return 0;
    const room = Math.min(maxTokens, Math.floor(limit / 4));
    if (this.#render(tools).length + room <= limit) return 0;
    // What is kept after a drop is prefilled again in full (its start changed): dropping only
    // what this turn needed left every later turn to drop an exchange and prefill all the rest
    // again. Down to half the context (llama.cpp's and Ollama's context shift discard half), the
    // next turns reuse the cache until it fills again; the room, at most a quarter, still fits.
    let dropped = 0;
    // The turn's own exchange stays, from its user message on: a turn of tool results keeps the
    // calls they answer (dropped, the results were left alone, answering nothing).
    const canDrop = () => this.messages.findLastIndex((m) => m.role === "user") > 0;
    while (canDrop() && this.#render(tools).length > limit / 2) {
      this.messages.shift();
      dropped++;
      // Never start the kept history with an assistant reply (nor a tool result).
      while (canDrop() && this.messages[0]!.role !== "user") {
        this.messages.shift();
        dropped++;
      }
    }
    return dropped;
  }
}
