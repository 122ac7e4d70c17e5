// `mlx chat` with a remote model: the conversation's messages are sent whole each turn (the
// provider keeps no state between requests; its own prompt cache, if any, reports cached
// tokens), with the same turn contract as the engine's Conversation.
import type { CompletionPiece, CompletionResult } from "../engine/generate";
import type { TurnInfo, TurnOptions } from "../engine/conversation";
import type { ChatMessage } from "../tokenizer/tokenizer";
import { remoteSampling, streamRemoteCompletion } from "./completion";
import type { RemoteModel } from "./model";
import { ProviderError } from "../errors";

export class RemoteConversation {
  messages: ChatMessage[] = [];
  #contextUsed = 0;

  constructor(
    readonly remote: RemoteModel,
    public system?: string,
  ) {}

  /** Tokens of the last turn's prompt and answer, as the provider counted them. */
  get contextUsed(): number {
    return this.#contextUsed;
  }

  clear(): void {
    this.messages = [];
    this.#contextUsed = 0;
  }

  /** Nothing to free: the provider holds the model (as Conversation.dispose is to a local one). */
  dispose(): void {}

  /**
   * Answers `userText`. When the provider refuses the prompt as over its model's context, the
   * oldest half of the exchanges is left out and it is asked again, as a local conversation drops
   * them down to half its context (the provider's length is not known here): without it, every
   * message after the conversation outgrew the context was refused, until /clear. A turn that
   * fails, or whose reader stops reading, leaves the conversation as it was, the messages dropped
   * for it included.
   */
  async *turn(
    userText: string,
    o: TurnOptions,
  ): AsyncGenerator<CompletionPiece, { result: CompletionResult; info: TurnInfo }> {
    const before = this.messages;
    this.messages = [...before, { role: "user", content: userText }];
    let droppedMessages = 0;
    let result: CompletionResult | undefined;
    try {
      for (;;) {
        const stream = this.#stream(o);
        let step: IteratorResult<CompletionPiece, CompletionResult>;
        try {
          step = await stream.next();
        } catch (error) {
          const dropped = overContext(error) ? dropOldestHalf(this.messages) : 0;
          if (dropped === 0) throw error;
          droppedMessages += dropped;
          continue;
        }
        try {
          while (!step.done) {
            yield step.value;
            step = await stream.next();
          }
        } finally {
          // Its reader stopped reading: the provider's stream is closed, as yield* closes it.
          if (!step.done) await stream.return(undefined as never);
        }
        result = step.value;
        break;
      }
    } finally {
      // Failed, or its reader stopped reading (a `break` out of the stream).
      if (!result) this.messages = before;
    }
    const s = result.stats;
    // A stopped answer's prompt was never counted (the provider's usage did not come): the
    // context is at least the last turn's and what this one generated.
    this.#contextUsed = (s.promptTokens || this.#contextUsed) + s.generatedTokens;
    this.messages.push({ role: "assistant", content: result.text });
    return {
      result,
      info: { reusedTokens: s.cachedTokens, newTokens: s.promptTokens - s.cachedTokens, droppedMessages },
    };
  }

  #stream(o: TurnOptions) {
    const system: ChatMessage[] = this.system ? [{ role: "system", content: this.system }] : [];
    return streamRemoteCompletion(
      this.remote,
      {
        // A chat's messages are text (what turns and /load put there).
        prompt: {
          kind: "chat",
          messages: [...system, ...this.messages].map((m) => ({ ...m, content: String(m.content) })),
        },
        sampling: remoteSampling(o.sampling),
        maxTokens: o.maxTokens,
        stop: o.stop,
        format: o.format,
        thinking: o.thinking,
      },
      o.signal,
    );
  }
}

/**
 * A provider's refusal of a prompt over its model's context, told by its words as clients tell it
 * (LiteLLM's ContextWindowExceededError): OpenAI's, vLLM's and mlx serve's "maximum context
 * length", Anthropic's "prompt is too long", llama.cpp's "exceeds the available context size".
 */
function overContext(error: unknown): boolean {
  return (
    error instanceof ProviderError &&
    error.kind === "rejected" &&
    /maximum context length|prompt is too long|exceeds the available context size/i.test(error.message)
  );
}

/**
 * Drops the oldest half of the messages before the last (the question), at least one, the kept
 * ones starting with a question; returns how many went (0: the question alone is left).
 */
function dropOldestHalf(messages: ChatMessage[]): number {
  const question = messages.length - 1;
  if (question === 0) return 0;
  let end = Math.max(1, Math.floor(question / 2));
  while (end < question && messages[end]!.role !== "user") end++;
  messages.splice(0, end);
  return end;
}
