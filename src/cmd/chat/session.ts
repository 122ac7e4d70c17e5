// One chat session: the model (loaded, or remote), its conversation (a local one keeps its KV
// cache between turns), the settings, and how an answer is streamed to the terminal and
// stopped with Ctrl-C.
import { Conversation } from "../../engine/conversation";
import type { LoadedModel } from "../../models/load";
import { RemoteConversation, RemoteModel, remoteModel } from "../../providers";
import { samplingFor, type ChatSettings } from "./settings";
import { checkThinking, pieceWriter } from "../thinking";
import { maxTokensFrom } from "../options";
import type { SamplingParams } from "../../engine/sampling";
import type { ContextBound } from "../../engine/request";

export class ChatSession {
  conversation: Conversation | RemoteConversation;

  constructor(
    model: LoadedModel | RemoteModel,
    public modelName: string,
    readonly settings: ChatSettings,
    readonly say: (text: string) => void,
    /**
     * Opens a local model /model switches to, with the settings the chat was started with;
     * undefined where the name is the model held, which is kept as it is (a model split across
     * processes, whose other ranks hold its layers).
     */
    private readonly openLocal: (name: string) => Promise<LoadedModel | undefined>,
  ) {
    checkModel(model, settings);
    this.conversation = conversationWith(model, settings.system);
  }

  /** Switches to another model; the conversation's text is kept. */
  async switchModel(name: string): Promise<void> {
    const current = this.conversation;
    const model = remoteModel(name) ?? (await this.openLocal(name));
    if (model === undefined) return this.say(`${name} is the model in use: kept as it is`);
    try {
      checkModel(model, this.settings);
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
    } catch (error) {
      // A model it cannot chat with: the chat goes on with the one it had.
      if (!(model instanceof RemoteModel)) model.free();
      throw error;
    }
    this.modelName = name;
    // Its own answer length (its alias's num_predict), as its stop strings and num_ctx come with it,
    // unless the user chose one.
    if (!this.settings.maxTokensChosen) this.settings.maxTokens = answerLength(model);
    this.say(`now chatting with ${name}`);
  }

  /**
   * Thinking on or off for the answers from now on (/set think|nothink, as in ollama run); on is
   * refused for a local model that does not think, as --think is. Off drops a --thinking-budget.
   */
  setThinking(enabled: boolean): string {
    const thinking = {
      ...this.settings.thinking,
      enabled,
      budget: enabled ? this.settings.thinking?.budget : undefined,
    };
    const c = this.conversation;
    if (c instanceof Conversation) checkThinking(c.lm, thinking);
    this.settings.thinking = thinking;
    return enabled ? "thinking on" : "thinking off";
  }

  /** What the answers sample with: the user's values, else the alias's of the model in use (samplingFor). */
  get sampling(): SamplingParams {
    const c = this.conversation;
    return samplingFor(this.settings, c instanceof Conversation ? c.lm : c.remote);
  }

  /** /set num_ctx's bound on the context, as a request's num_ctx bounds it. */
  get contextBound(): ContextBound | undefined {
    return this.settings.numCtx === undefined ? undefined : { tokens: this.settings.numCtx, param: "num_ctx" };
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
      sampling: this.sampling,
      maxTokens: this.settings.maxTokens,
      stop: this.settings.stop,
      contextBound: this.contextBound,
      signal,
      format: format && { format: format.format, param: "format" },
      thinking: this.settings.thinking,
    });
    const writer = pieceWriter({ hide: this.settings.hideThinking ?? false, terminal: Boolean(process.stdout.isTTY) });
    let step = await turn.next();
    while (!step.done) {
      write(writer.show(step.value));
      step = await turn.next();
    }
    const { result, info } = step.value;
    write(`${writer.end()}\n`);
    if (info.droppedMessages > 0) this.say(`(context full: dropped the ${info.droppedMessages} oldest messages)`);
    if (result.finishReason === "cancelled") this.say("(stopped)");
    else if (result.closedEarly) this.say("(max_tokens ran out: the JSON was closed early, valid but cut short)");
    else if (format && result.finishReason === "length") this.say("(max_tokens reached before the JSON was complete)");
    // A local model's answer cut short before max_tokens: the context is full (the oldest messages
    // make room at the next turn). A remote provider's own limits are not known here.
    else if (
      this.conversation instanceof Conversation &&
      result.finishReason === "length" &&
      result.stats.generatedTokens < this.settings.maxTokens
    )
      this.say("(context full: the answer was cut short)");
    if (this.settings.stats) {
      const s = result.stats;
      const c = this.conversation;
      const limit = c instanceof Conversation ? contextLimit(c, this.contextBound) : "";
      this.say(
        `${s.generationTokensPerSecond.toFixed(1)} tokens/s · first token ${s.timeToFirstTokenSeconds.toFixed(2)} s · prompt ${info.newTokens} new + ${info.reusedTokens} cached tokens · context ${c.contextUsed}${limit}${s.draftedTokens > 0 ? ` · ${s.acceptedTokens}/${s.draftedTokens} drafted tokens accepted` : ""}`,
      );
    }
  }
}

/**
 * The most tokens an answer from `model` takes where the user sets none: the num_predict
 * models.toml gives a model opened by its alias (0 or less: to the context's end), else 1024.
 */
export function answerLength(model: LoadedModel | RemoteModel): number {
  const lm = model instanceof RemoteModel ? undefined : model;
  return maxTokensFrom(undefined, lm, 1024) ?? lm!.config.maxPositionEmbeddings;
}

/**
 * What bounds the context: the model's length (or less: /set num_ctx, its alias's), or with a rotating cache (--max-kv-size) the
 * positions it keeps, which the conversation outgrows ("context 746/256" read as an overflow).
 */
function contextLimit(c: Conversation, bound: ContextBound | undefined): string {
  return c.lm.maxKvSize === undefined
    ? `/${c.contextLength(bound)}`
    : ` (the rotating cache keeps ${c.lm.maxKvSize} positions)`;
}

/**
 * Refuses a local model every message would fail on: one without a chat template (its
 * conversation cannot be rendered), or one asked to think (--think, --thinking-budget) that cannot.
 */
function checkModel(model: LoadedModel | RemoteModel, settings: ChatSettings): void {
  if (model instanceof RemoteModel) return;
  if (!model.tokenizer.chatTemplate)
    throw new Error(`${model.path} has no chat template to chat with (mlx run sends it prompts as plain text)`);
  checkThinking(model, settings.thinking);
}

function conversationWith(model: LoadedModel | RemoteModel, system: string | undefined) {
  return model instanceof RemoteModel ? new RemoteConversation(model, system) : new Conversation(model, system);
}
