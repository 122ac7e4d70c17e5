// `mlx chat` with a remote model: the conversation's messages are sent whole each turn (the
// provider keeps no state between requests; its own prompt cache, if any, reports cached
// tokens), with the same turn contract as the engine's Conversation.
import type { CompletionPiece, CompletionResult } from "../engine/generate";
import type { TurnInfo, TurnOptions } from "../engine/conversation";
import type { ChatMessage } from "../tokenizer/tokenizer";
import { remoteSampling, streamRemoteCompletion } from "./completion";
import type { RemoteModel } from "./model";

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

  async *turn(
    userText: string,
    o: TurnOptions,
  ): AsyncGenerator<CompletionPiece, { result: CompletionResult; info: TurnInfo }> {
    this.messages.push({ role: "user", content: userText });
    const system: ChatMessage[] = this.system ? [{ role: "system", content: this.system }] : [];
    let result: CompletionResult;
    try {
      result = yield* streamRemoteCompletion(
        this.remote,
        {
          // A chat's messages are text (what turns and /load put there).
          prompt: {
            kind: "chat",
            messages: [...system, ...this.messages].map((m) => ({ ...m, content: String(m.content) })),
          },
          sampling: remoteSampling(o.sampling),
          maxTokens: o.maxTokens,
          format: o.format,
          thinking: o.thinking,
        },
        o.signal,
      );
    } catch (error) {
      this.messages.pop();
      throw error;
    }
    const s = result.stats;
    // A stopped answer's prompt was never counted (the provider's usage did not come): the
    // context is at least the last turn's and what this one generated.
    this.#contextUsed = (s.promptTokens || this.#contextUsed) + s.generatedTokens;
    this.messages.push({ role: "assistant", content: result.text });
    return {
      result,
      info: { reusedTokens: s.cachedTokens, newTokens: s.promptTokens - s.cachedTokens, droppedMessages: 0 },
    };
  }
}
