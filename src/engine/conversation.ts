// A chat that keeps its KV cache between turns: each turn renders the whole conversation
// with the chat template, finds how much of it the cache already holds, and prefills only
// the rest. When the context fills up, the oldest turns go (the system prompt stays).
import type { LoadedModel } from "../models/load";
import { freeCaches, makeCaches, type KVCache } from "../models";
import type { ChatMessage } from "../tokenizer/tokenizer";
import { chatTokens } from "./prompt";
import { complete, type CompletionOptions, type CompletionResult } from "./completion";

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
  #caches: KVCache[];
  /** The token ids whose keys and values the cache holds, in order. */
  #cached: number[] = [];

  constructor(
    public lm: LoadedModel,
    public system?: string,
  ) {
    this.#caches = makeCaches(lm.model);
  }

  /** Tokens of context in use (as of the last turn). */
  get contextUsed(): number {
    return this.#cached.length;
  }

  clear(): void {
    this.messages = [];
    this.#reset();
  }

  /** Switches to another model; the conversation's text is kept, its cache is not. */
  useModel(lm: LoadedModel): void {
    freeCaches(this.#caches);
    this.lm = lm;
    this.#caches = makeCaches(lm.model);
    this.#cached = [];
  }

  dispose(): void {
    freeCaches(this.#caches);
  }

  #reset(): void {
    freeCaches(this.#caches);
    this.#caches = makeCaches(this.lm.model);
    this.#cached = [];
  }

  #render(): number[] {
    const system: ChatMessage[] = this.system ? [{ role: "system", content: this.system }] : [];
    return chatTokens(this.lm.tokenizer, [...system, ...this.messages]);
  }

  /**
   * Answers `userText`, streaming text deltas; returns the completion and how the prompt was
   * assembled. The cache keeps everything but what a new rendering of the conversation changed.
   */
  *turn(userText: string, o: CompletionOptions): Generator<string, { result: CompletionResult; info: TurnInfo }> {
    this.messages.push({ role: "user", content: userText });
    const droppedMessages = this.#fitContext(o.maxTokens);
    const prompt = this.#render();
    let reuse = commonPrefix(this.#cached, prompt);
    // At least one token must be new, since the next token is predicted from the last one.
    if (reuse === prompt.length) reuse -= 1;
    if (reuse < this.#cached.length) {
      // A sliding-window layer may no longer hold what the new tokens would attend to: start over.
      if (this.#caches.every((c) => c.canTrim(reuse))) for (const c of this.#caches) c.trim(reuse);
      else {
        this.#reset();
        reuse = 0;
      }
    }
    const fresh = prompt.slice(reuse);
    let result: CompletionResult;
    try {
      result = yield* complete(this.lm, this.#caches, fresh, o);
    } catch (error) {
      this.messages.pop();
      this.#reset();
      throw error;
    }
    // The cache now holds the prompt and every sampled token that was fed back in.
    const offset = this.#caches[0]?.offset ?? 0;
    this.#cached = [...prompt, ...result.sampledIds].slice(0, offset);
    this.messages.push({ role: "assistant", content: result.text });
    return { result, info: { reusedTokens: reuse, newTokens: fresh.length, droppedMessages } };
  }

  /** Drops the oldest exchanges until the prompt plus room for an answer fits the context. */
  #fitContext(maxTokens: number): number {
    const limit = this.lm.config.maxPositionEmbeddings;
    const room = Math.min(maxTokens, Math.floor(limit / 4));
    let dropped = 0;
    while (this.messages.length > 1 && this.#render().length + room > limit) {
      this.messages.shift();
      dropped++;
      // Never start the kept history with an assistant reply.
      while (this.messages.length > 1 && this.messages[0]!.role !== "user") {
        this.messages.shift();
        dropped++;
      }
    }
    return dropped;
  }
}

function commonPrefix(a: number[], b: number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
