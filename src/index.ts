// mlx as a library: load a model, generate or stream completions, chat with a kept cache,
// close. The same engine as the CLI and the server (every call goes through one scheduler per
// model, so overlapping calls are batched). Runs on Bun (bun:ffi) and on Node 20+ (ffi-rs).
//
//   import { load } from "mlx";
//   const model = await load();                       // the default model (pulled on first use)
//   const { text } = await model.generate("Name a colour.", { maxTokens: 16 });
//   for await (const piece of model.stream("Tell me a story.")) process.stdout.write(piece);
//   const chat = model.chat({ system: "Be brief." });
//   await chat.send("Hi!"); await chat.send("And then?"); // the second turn reuses the first's cache
//   model.close();
import { Conversation } from "./engine/conversation";
import { embed } from "./engine/embed";
import { complete, streamCompletion, type CompletionPiece, type CompletionResult } from "./engine/generate";
import type { JsonFormat } from "./engine/grammar";
import type { GenerationSpec, PromptInput } from "./engine/request";
import { defaultSampling, type SamplingParams } from "./engine/sampling";
import { Scheduler } from "./engine/scheduler";
import { loadModel, type LoadedModel } from "./models/load";
import type { DownloadProgress } from "./store/download";
import { resolveModelPath } from "./store/resolve";

export type { CompletionResult as Completion, CompletionStats } from "./engine/generate";
export type { FinishReason } from "./engine/scheduler";
export type { JsonFormat } from "./engine/grammar";
export {
  ContextLengthError,
  InvalidParameterError,
  ModelNotFoundError,
  ModelPullError,
  QueueFullError,
  UnsupportedError,
} from "./errors";
export { SchemaError } from "./engine/grammar";
export { ModelLoadError } from "./models/load";

export interface LoadOptions {
  /** Progress of a first-use download (nothing is printed otherwise). */
  onProgress?: (progress: DownloadProgress) => void;
  /** Generations decoded together when calls overlap (default 4). */
  maxBatch?: number;
}

export interface GenerateOptions {
  /** Most tokens to generate (default: what the context leaves). */
  maxTokens?: number;
  /** 0 (the default) is greedy. */
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  seed?: number;
  /** Stop as soon as the answer contains one of these (it is not included). */
  stop?: string[];
  /** Constrain the answer to JSON: "json" (any object) or { schema }. */
  format?: JsonFormat;
  /** A system prompt (a text prompt only). */
  system?: string;
  /** Send a text prompt as it is, without the model's chat template. */
  raw?: boolean;
  /** For a model that thinks: reason first (true) or answer at once (false); default: the model's own. */
  think?: boolean;
  /** Most reasoning tokens before the model must answer. */
  thinkingBudget?: number;
  signal?: AbortSignal;
}

/** One message of a conversation. */
export interface Message {
  role: "system" | "user" | "assistant";
  content: string;
}

/** A text (through the chat template unless `raw`), or a whole conversation. */
export type Prompt = string | Message[];

/** Loads a model by name (an alias from models.toml, a stored model, a source, a directory or a .gguf file; default: the default model). */
export async function load(name?: string, options: LoadOptions = {}): Promise<Model> {
  const path = await resolveModelPath(name, { onProgress: options.onProgress ?? (() => {}) });
  return new Model(loadModel(path), options.maxBatch ?? 4);
}

export class Model {
  readonly #scheduler: Scheduler;
  readonly #chats = new Set<Chat>();

  /** @internal use load() */
  constructor(
    readonly lm: LoadedModel,
    maxBatch: number,
  ) {
    this.#scheduler = new Scheduler(lm, { maxBatch, prefillChunk: 512, maxQueue: Number.MAX_SAFE_INTEGER });
  }

  get path(): string {
    return this.lm.path;
  }

  /** Tokens of context the model attends to. */
  get contextLength(): number {
    return this.lm.config.maxPositionEmbeddings;
  }

  /** The whole answer to `prompt`. */
  generate(prompt: Prompt, options: GenerateOptions = {}): Promise<CompletionResult> {
    return complete(this.#scheduler, spec(prompt, options));
  }

  /**
   * The answer to `prompt` as it is written (text pieces, a thinking model's reasoning left
   * out); the generator's return value is the whole result, reasoning included.
   */
  stream(prompt: Prompt, options: GenerateOptions = {}): AsyncGenerator<string, CompletionResult> {
    return answerText(streamCompletion(this.#scheduler, spec(prompt, options)));
  }

  /** Normalised embeddings of `texts` (pooled final hidden states; see README), optionally cut to `dimensions`. */
  async embed(texts: string[], options: { dimensions?: number } = {}): Promise<number[][]> {
    return (await embed(this.lm, texts, options)).vectors;
  }

  /** A conversation whose turns reuse the keys and values of the turns before. */
  chat(options: { system?: string } = {}): Chat {
    const chat = new Chat(new Conversation(this.lm, options.system), () => this.#chats.delete(chat));
    this.#chats.add(chat);
    return chat;
  }

  /** Frees the model and everything generating with it; the model must not be used afterwards. */
  close(): void {
    for (const chat of [...this.#chats]) chat.close();
    this.#scheduler.dispose();
    this.lm.free();
  }
}

export class Chat {
  /** @internal use Model.chat() */
  constructor(
    readonly conversation: Conversation,
    readonly onClose: () => void,
  ) {}

  /** The conversation so far (user and assistant turns). */
  get messages(): readonly Message[] {
    return this.conversation.messages as Message[];
  }

  /** Answers `text`, as the next turn of the conversation. */
  async send(text: string, options: Omit<GenerateOptions, "system" | "raw"> = {}): Promise<CompletionResult> {
    const turn = this.stream(text, options);
    for (;;) {
      const step = await turn.next();
      if (step.done) return step.value;
    }
  }

  /** Answers `text` as it is written (reasoning left out); the generator's return value is the whole result. */
  async *stream(
    text: string,
    options: Omit<GenerateOptions, "system" | "raw"> = {},
  ): AsyncGenerator<string, CompletionResult> {
    const turn = this.conversation.turn(text, {
      sampling: sampling(options),
      maxTokens: options.maxTokens ?? this.conversation.lm.config.maxPositionEmbeddings,
      format: options.format && { format: options.format, param: "format" },
      thinking: { enabled: options.think, budget: options.thinkingBudget, param: "think" },
      signal: options.signal,
    });
    return (yield* answerText(turn)).result;
  }

  /** Forgets the conversation. */
  clear(): void {
    this.conversation.clear();
  }

  close(): void {
    this.conversation.dispose();
    this.onClose();
  }
}

function sampling(o: GenerateOptions): SamplingParams {
  return {
    ...defaultSampling,
    ...(o.temperature !== undefined && { temperature: o.temperature }),
    ...(o.topP !== undefined && { topP: o.topP }),
    ...(o.topK !== undefined && { topK: o.topK }),
    ...(o.minP !== undefined && { minP: o.minP }),
    ...(o.repetitionPenalty !== undefined && { repetitionPenalty: o.repetitionPenalty }),
    seed: o.seed,
  };
}

function spec(prompt: Prompt, o: GenerateOptions): GenerationSpec {
  const input: PromptInput =
    typeof prompt === "string"
      ? { kind: "text", text: prompt, template: !o.raw, system: o.system }
      : { kind: "chat", messages: prompt };
  return {
    prompt: input,
    sampling: sampling(o),
    maxTokens: o.maxTokens,
    stop: o.stop,
    format: o.format && { format: o.format, param: "format" },
    thinking: { enabled: o.think, budget: o.thinkingBudget, param: "think" },
    signal: o.signal,
  };
}

/** The answer's text pieces (a thinking model's reasoning left out: the result holds it). */
async function* answerText<R>(pieces: AsyncGenerator<CompletionPiece, R>): AsyncGenerator<string, R> {
  for (let step = await pieces.next(); ; step = await pieces.next()) {
    if (step.done) return step.value;
    if (step.value.text) yield step.value.text;
  }
}
