// One chat session: the model (loaded, or remote), its conversation (a local one keeps its KV
// cache between turns), the settings, and how an answer is streamed to the terminal and
// stopped with Ctrl-C.
import { Conversation } from "../../engine/conversation";
import type { LoadedModel } from "../../models/load";
import { RemoteConversation, RemoteModel, remoteModel } from "../../providers";
import { openModel } from "../open-model";
import { aliasSpeculation } from "../../store/aliases";
import type { ChatSettings } from "./settings";
import { pieceWriter } from "../thinking";

export class ChatSession {
  conversation: Conversation | RemoteConversation;

  constructor(
    model: LoadedModel | RemoteModel,
    public modelName: string,
    readonly settings: ChatSettings,
    readonly say: (text: string) => void,
  ) {
    this.conversation = conversationWith(model, settings.system);
  }

  /** Switches to another model; the conversation's text is kept. */
  async switchModel(name: string): Promise<void> {
    const current = this.conversation;
    // As opening it at the start would: with the speculative decoding models.toml gives it.
    const model = remoteModel(name) ?? (await openModel(name, { speculation: aliasSpeculation(name) }));
    if (current instanceof Conversation && !(model instanceof RemoteModel)) {
      const previous = current.lm;
      current.useModel(model);
      previous.free();
    } else {
      const next = conversationWith(model, this.settings.system);
      next.messages = current.messages;
      this.close();
      this.conversation = next;
    }
    this.modelName = name;
    this.say(`now chatting with ${name}`);
  }

  /** Frees the model (a local one) and the conversation's cache. */
  close(): void {
    this.conversation.dispose();
    if (this.conversation instanceof Conversation) this.conversation.lm.free();
  }

  /** Streams the answer to `text` into `write`; Ctrl-C (the signal) stops it and keeps what was said. */
  async answer(text: string, write: (chunk: string) => void, signal: AbortSignal): Promise<void> {
    const format = this.settings.format;
    const turn = this.conversation.turn(text, {
      sampling: this.settings.sampling,
      maxTokens: this.settings.maxTokens,
      signal,
      format: format && { format: format.format, param: "format" },
      thinking: this.settings.thinking,
    });
    const show = pieceWriter({ hide: this.settings.hideThinking ?? false, terminal: Boolean(process.stdout.isTTY) });
    let step = await turn.next();
    while (!step.done) {
      write(show(step.value));
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
      const c = this.conversation;
      const limit = c instanceof Conversation ? `/${c.lm.config.maxPositionEmbeddings}` : "";
      this.say(
        `${s.generationTokensPerSecond.toFixed(1)} tokens/s · first token ${s.timeToFirstTokenSeconds.toFixed(2)} s · prompt ${info.newTokens} new + ${info.reusedTokens} cached tokens · context ${c.contextUsed}${limit}${s.draftedTokens > 0 ? ` · ${s.acceptedTokens}/${s.draftedTokens} drafted tokens accepted` : ""}`,
      );
    }
  }
}

function conversationWith(model: LoadedModel | RemoteModel, system: string | undefined) {
  return model instanceof RemoteModel ? new RemoteConversation(model, system) : new Conversation(model, system);
}
