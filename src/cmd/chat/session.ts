// One chat session: the loaded model, its conversation (KV cache kept between turns), the
// settings, and how an answer is streamed to the terminal and stopped with Ctrl-C.
import { Conversation } from "../../engine/conversation";
import type { LoadedModel } from "../../models/load";
import { openModel } from "../open-model";
import type { ChatSettings } from "./settings";

export class ChatSession {
  conversation: Conversation;

  constructor(
    lm: LoadedModel,
    public modelName: string,
    readonly settings: ChatSettings,
    readonly say: (text: string) => void,
  ) {
    this.conversation = new Conversation(lm, settings.system);
  }

  async switchModel(name: string): Promise<void> {
    const next = await openModel(name);
    const previous = this.conversation.lm;
    this.conversation.useModel(next);
    previous.free();
    this.modelName = name;
    this.say(`now chatting with ${name}`);
  }

  /** Streams the answer to `text` into `write`; Ctrl-C (the signal) stops it and keeps what was said. */
  async answer(text: string, write: (chunk: string) => void, signal: AbortSignal): Promise<void> {
    const format = this.settings.format;
    const turn = this.conversation.turn(text, {
      sampling: this.settings.sampling,
      maxTokens: this.settings.maxTokens,
      signal,
      format: format && { format: format.format, param: "format" },
    });
    let step = await turn.next();
    while (!step.done) {
      write(step.value);
      step = await turn.next();
    }
    const { result, info } = step.value;
    write("\n");
    if (info.droppedMessages > 0) this.say(`(context full: dropped the ${info.droppedMessages} oldest messages)`);
    if (result.finishReason === "cancelled") this.say("(stopped)");
    else if (result.closedEarly) this.say("(max_tokens ran out: the JSON was closed early, valid but cut short)");
    else if (format && result.finishReason === "length") this.say("(max_tokens reached before the JSON was complete)");
    if (this.settings.stats) {
      const s = result.stats;
      const limit = this.conversation.lm.config.maxPositionEmbeddings;
      this.say(
        `${s.generationTokensPerSecond.toFixed(1)} tokens/s · first token ${s.timeToFirstTokenSeconds.toFixed(2)} s · prompt ${info.newTokens} new + ${info.reusedTokens} cached tokens · context ${this.conversation.contextUsed}/${limit}${s.draftedTokens > 0 ? ` · ${s.acceptedTokens}/${s.draftedTokens} drafted tokens accepted` : ""}`,
      );
    }
  }
}
