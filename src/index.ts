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
//   // (a turn takes tools too; their results are the next turn: chat.send([{ role: "tool", ... }]))
//   model.detokenize(model.tokenize("Hi"));            // the model's token ids, and their text
//   model.close();
import { Conversation } from "./engine/conversation";
import { clearMemoryCache } from "./engine/device";
import { embed, EmbeddingCancelled } from "./engine/embed";
import { cancelledBeforeStart, streamCompletion, type CompletionPiece, type CompletionResult } from "./engine/generate";
import type { JsonFormat } from "./engine/grammar";
import { modelMaxTokens, type GenerationSpec, type PromptInput } from "./engine/request";
import { validateSampling, type SamplingParams } from "./engine/sampling";
import { Scheduler } from "./engine/scheduler";
import { loadModelAsync, type LoadedModel } from "./models/load";
import { aliasSettings, applySettings, settleSampling } from "./engine/model-settings";
import type { SamplingDefaults } from "./models/generation-config";
import type { DownloadProgress } from "./store/download";
import { resolveModelPath } from "./store/resolve";
import { InvalidParameterError, UnsupportedError } from "./errors";
import { isJsonObject } from "./exact-json";
import { toolRequest } from "./api/tools";
import { Fields, ValidationError } from "./api/validate";
import {
  requiredFunctions,
  type ConversationMessage,
  type ToolCall,
  type ToolCallDelta,
  type ToolRequest,
} from "./engine/tools";
import * as mx from "./mlx";

export type { CompletionResult as Completion, CompletionStats } from "./engine/generate";
export type { ToolCall, ToolCallDelta } from "./engine/tools";
export type { FinishReason } from "./engine/scheduler";
export type { DownloadProgress } from "./store/download";
export type { JsonFormat } from "./engine/grammar";
export {
  AdapterError,
  ConfigError,
  ContextLengthError,
  InvalidParameterError,
  ModelNotFoundError,
  ModelPullError,
  UnsupportedError,
} from "./errors";
// (No QueueFullError: the library's queue has no bound, every call waits its turn.)
export { BudgetError } from "./engine/budget/steering";
export { SchemaError } from "./engine/grammar";
export { ModelLoadError } from "./models/load";
export { NonFiniteEmbeddingError } from "./engine/embed";

/** A call on a model after its close(), or on a chat after its (or its model's) close(). */
export class ClosedError extends Error {
  override name = "ClosedError";
}

export interface LoadOptions {
  /** Progress of a first-use download (nothing is printed otherwise). */
  onProgress?: (progress: DownloadProgress) => void;
  /** Generations decoded together when calls overlap (default 4). */
  maxBatch?: number;
  /** Stops the load: a first-use download at once, weights being read once read (then freed); load() rejects with its reason. */
  signal?: AbortSignal;
}

export interface GenerateOptions {
  /** Most tokens to generate (default: what the context leaves). */
  maxTokens?: number;
  /** 0 is greedy; default: the alias's in models.toml (as each sampling value here), else 0. */
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  seed?: number;
  /** Stop as soon as the answer contains one of these (it is not included). */
  stop?: string | string[];
  /** Constrain the answer to JSON: "json" (any object) or { schema }. */
  format?: JsonFormat;
  /**
   * Functions the model may call (as the ollama and OpenAI libraries write them): its calls come
   * back in the result's toolCalls, read in the model's own format, and are left out of its text.
   */
  tools?: Tool[];
  /** "auto" (default): the model decides; "none": no call; "required": at least one; { name }: one call of that function. */
  toolChoice?: "auto" | "none" | "required" | { name: string };
  /**
   * Called with each call the answer made, once it is read (before the result comes): a
   * `for await` loop over stream(), which never sees the stream's return value, gets them here.
   */
  onToolCall?: (call: ToolCall) => void;
  /**
   * Called as each call is written, as the server streams calls: `start` (its id and name) once
   * its head is, `arguments` with each piece of its arguments' JSON (the pieces add up to the
   * arguments read whole), `end` with the call as read. A format whose call cannot be told before
   * it ends gives the three at the end; a call that did not read ends without `call`.
   */
  onToolCallDelta?: (delta: ToolCallDelta) => void;
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

/** A function the model may call: its arguments' JSON Schema in `parameters` (an object schema). */
export interface Tool {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

/**
 * One message of a conversation. An assistant's message carries the calls it made (a result's
 * toolCalls); a "tool" message answers one, by its id (or by the function's name, or in order).
 */
export interface Message {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
  toolCalls?: ToolCall[];
  toolCallId?: string;
  toolName?: string;
}

/** A text (through the chat template unless `raw`), or a whole conversation. */
export type Prompt = string | Message[];

/** Every option generate() and stream() read: any other key is a mistake (`max_tokens`), never a no-op. */
const generateOptionNames = Object.keys({
  maxTokens: true,
  temperature: true,
  topP: true,
  topK: true,
  minP: true,
  repetitionPenalty: true,
  seed: true,
  stop: true,
  format: true,
  tools: true,
  toolChoice: true,
  onToolCall: true,
  onToolCallDelta: true,
  system: true,
  raw: true,
  think: true,
  thinkingBudget: true,
  signal: true,
} satisfies Record<keyof GenerateOptions, true>);

/** The options that take a number. */
const numberOptionNames = [
  "maxTokens",
  "temperature",
  "topP",
  "topK",
  "minP",
  "repetitionPenalty",
  "seed",
  "thinkingBudget",
] as const satisfies (keyof GenerateOptions)[];

/** A chat's turn takes them all but those of a text prompt (its system prompt is model.chat()'s). */
const turnOptionNames = generateOptionNames.filter((name) => !["system", "raw"].includes(name));

/** Loads a model by name (an alias from models.toml, a stored model, a source, a directory or a .gguf file; default: the default model). */
export async function load(name?: string, options: LoadOptions = {}): Promise<Model> {
  // Checked before anything is pulled: a batch of 0 would queue every call forever.
  if (name !== undefined && typeof name !== "string")
    throw new InvalidParameterError("the model name must be a string", "name");
  checkOptionNames(options, ["onProgress", "maxBatch", "signal"]);
  if (options.onProgress !== undefined && typeof options.onProgress !== "function")
    throw new InvalidParameterError("onProgress must be a function", "onProgress");
  const { signal } = options;
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw new InvalidParameterError("signal must be an AbortSignal", "signal");
  const maxBatch = options.maxBatch ?? 4;
  if (typeof maxBatch !== "number")
    throw new InvalidParameterError(`maxBatch must be a number (got ${JSON.stringify(maxBatch)})`, "maxBatch");
  if (!(Number.isInteger(maxBatch) && maxBatch > 0))
    throw new InvalidParameterError(`maxBatch must be a whole number > 0 (got ${maxBatch})`, "maxBatch");
  const onProgress = options.onProgress ?? (() => {});
  signal?.throwIfAborted();
  const path = await resolveModelPath(name, { onProgress, signal });
  const lm = await loadWeights(path, signal);
  // An alias is that model everywhere, as in `mlx run -m`: its KV cache, adapter and speculation.
  await applySettings(lm, aliasSettings(name), async (draft) =>
    loadWeights(await resolveModelPath(draft, { onProgress, signal }), signal),
  );
  const model = new Model(lm, maxBatch);
  waitForMlxAtExit();
  return model;
}

/**
 * The model at `path`, the event loop served between its pieces (seconds for a large model: the
 * caller's timers, sockets and UI go on meanwhile). A load is not stopped part way: one whose
 * `signal` aborted meanwhile is freed once read, and the signal's reason thrown.
 */
async function loadWeights(path: string, signal: AbortSignal | undefined): Promise<LoadedModel> {
  signal?.throwIfAborted();
  const lm = await loadModelAsync(path);
  if (signal?.aborted) {
    lm.free();
    throw signal.reason;
  }
  return lm;
}

let waitsForMlxAtExit = false;

/**
 * Node's process.exit() runs the C++ static destructors at once, MLX's allocator's among them,
 * while MLX's thread may still be evaluating a step sent ahead (asyncEvaluate): that step then
 * writes into freed memory and the process dies (SIGSEGV, SIGABRT). 'exit' handlers run before
 * those destructors: one small evaluation there waits for the work queued before it.
 */
function waitForMlxAtExit(): void {
  if (waitsForMlxAtExit) return;
  waitsForMlxAtExit = true;
  process.once("exit", () => mx.scope(() => mx.evaluate(mx.add(mx.scalar(0), mx.scalar(0)))));
}

export class Model {
  readonly #scheduler: Scheduler;
  /** Its chats, held weakly: one let go of without close() is disposed once collected (droppedChats). */
  readonly #chats = new Map<WeakRef<Chat>, Conversation>();
  /** Aborted by close(): an embedding in progress stops before its next pass reads the freed weights. */
  readonly #closing = new AbortController();
  #closed = false;

  /**
   * @internal use load(). `lm` is the engine's (its weights, tokenizer, caches): a caller that
   * freed or changed it would break the model under every call. TypeScript's `private`, not `#`:
   * the tests read the settings an alias applied to it as model["lm"].
   */
  constructor(
    private readonly lm: LoadedModel,
    maxBatch: number,
  ) {
    this.#scheduler = new Scheduler(lm, { maxBatch, prefillChunk: 512, maxQueue: Number.MAX_SAFE_INTEGER });
  }

  /** Where the model's files are (its folder, or its .gguf file). */
  get path(): string {
    return this.lm.path;
  }

  /** Tokens of context the model attends to. */
  get contextLength(): number {
    return this.lm.config.maxPositionEmbeddings;
  }

  /** The whole answer to `prompt`. */
  async generate(prompt: Prompt, options: GenerateOptions = {}): Promise<CompletionResult> {
    this.#checkOpen();
    const answer = answerText(streamCompletion(this.#scheduler, spec(this.lm, prompt, options)), options);
    for (;;) {
      const step = await answer.next();
      if (step.done) return withCallsReported(step.value, options);
    }
  }

  /**
   * The answer to `prompt` as it is written (text pieces, a thinking model's reasoning left
   * out); the generator's return value is the whole result, reasoning included. A stream left
   * unfinished and let go of (no `break`, no return()) is cancelled once it is garbage-collected.
   */
  stream(prompt: Prompt, options: GenerateOptions = {}): AsyncGenerator<string, CompletionResult> {
    return cancelledWhenDropped((dropped) => this.#stream(prompt, options, dropped.signal));
  }

  async *#stream(
    prompt: Prompt,
    options: GenerateOptions,
    dropped: AbortSignal,
  ): AsyncGenerator<string, CompletionResult> {
    this.#checkOpen();
    const request = spec(this.lm, prompt, options);
    const result = yield* answerText(
      streamCompletion(this.#scheduler, { ...request, signal: eitherSignal(request.signal, dropped) }),
      options,
    );
    return withCallsReported(result, options);
  }

  /**
   * Normalised embeddings of `texts` (pooled final hidden states; see README), optionally cut to
   * `dimensions`; an aborted `signal` stops the work between two passes and rejects with its reason.
   */
  async embed(texts: string[], options: { dimensions?: number; signal?: AbortSignal } = {}): Promise<number[][]> {
    this.#checkOpen();
    if (!Array.isArray(texts) || texts.some((t) => typeof t !== "string"))
      throw new InvalidParameterError("embed() takes an array of strings", "texts");
    checkOptionNames(options, ["dimensions", "signal"]);
    // The engine checks the range only: "8" or 1.5 were "must be between 1 and the model's 576".
    const { dimensions, signal } = options as { dimensions?: unknown; signal?: unknown };
    if (dimensions !== undefined && !Number.isInteger(dimensions))
      throw new InvalidParameterError(
        `dimensions must be a whole number (got ${JSON.stringify(dimensions)})`,
        "dimensions",
      );
    if (signal !== undefined && !(signal instanceof AbortSignal))
      throw new InvalidParameterError("signal must be an AbortSignal", "signal");
    signal?.throwIfAborted();
    try {
      // Errors about a text name it as the caller wrote it ("texts.1"), not as the server's "input".
      const embedding = await embed(this.lm, texts, {
        dimensions: options.dimensions,
        param: "texts",
        signal: eitherSignal(signal, this.#closing.signal),
      });
      return embedding.vectors;
    } catch (error) {
      // Vectors are all or nothing: an embedding that close() or the caller cut short has none to give.
      if (error instanceof EmbeddingCancelled) {
        this.#checkOpen();
        signal?.throwIfAborted();
      }
      throw error;
    }
  }

  /**
   * The token ids of `text` as the model reads it, with the tokens its tokenizer adds (a BOS)
   * unless `addSpecialTokens` is false; no chat template (generate()'s `raw` prompt).
   */
  tokenize(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    this.#checkOpen();
    if (typeof text !== "string") throw new InvalidParameterError("tokenize() takes a string", "text");
    checkOptionNames(options, ["addSpecialTokens"]);
    const { addSpecialTokens } = options as { addSpecialTokens?: unknown };
    if (addSpecialTokens !== undefined && typeof addSpecialTokens !== "boolean")
      throw new InvalidParameterError("addSpecialTokens must be true or false", "addSpecialTokens");
    return this.lm.tokenizer.encode(text, { addSpecialTokens });
  }

  /** The text of token ids (a result's `tokenIds`, or tokenize()'s), special tokens included. */
  detokenize(ids: readonly number[]): string {
    this.#checkOpen();
    if (!Array.isArray(ids)) throw new InvalidParameterError("detokenize() takes an array of token ids", "ids");
    // The tokenizer would drop an id it has no token for without a word, and read 1.5 or "7" as it could.
    const vocab = this.lm.config.vocabSize;
    const bad = ids.findIndex((id) => !(Number.isInteger(id) && id >= 0 && id < vocab));
    if (bad >= 0)
      throw new InvalidParameterError(
        `token id ${JSON.stringify(ids[bad])} is not one of the model's (whole numbers from 0 to ${vocab - 1})`,
        `ids.${bad}`,
      );
    return this.lm.tokenizer.decode(ids);
  }

  /** A conversation whose turns reuse the keys and values of the turns before. */
  chat(options: { system?: string } = {}): Chat {
    this.#checkOpen();
    checkOptionNames(options, ["system"]);
    if (options.system !== undefined && typeof options.system !== "string")
      throw new InvalidParameterError("system must be a string", "system");
    // Said here, in the library's terms: each turn would fail with the server's hint (its endpoints).
    if (!this.lm.tokenizer.chatTemplate)
      throw new UnsupportedError("this model has no chat template, so it cannot chat: give generate() a text prompt");
    const conversation = new Conversation(this.lm, options.system);
    const chat = new Chat(conversation, () => {
      this.#chats.delete(ref);
      droppedChats.unregister(ref);
    });
    const ref = new WeakRef(chat);
    this.#chats.set(ref, conversation);
    // What runs must not hold on to `chat` itself, which it would then keep from being collected.
    droppedChats.register(
      chat,
      () => {
        this.#chats.delete(ref);
        conversation.dispose();
      },
      ref,
    );
    return chat;
  }

  /**
   * Frees the model and everything generating with it (those calls end "cancelled", an embed()
   * in progress throws ClosedError); later calls throw ClosedError.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort();
    for (const [ref, conversation] of [...this.#chats]) {
      const chat = ref.deref();
      if (chat) chat.close();
      else {
        // Collected, its finalizer not run yet: its caches go now, before the weights they were made with.
        droppedChats.unregister(ref);
        conversation.dispose();
      }
    }
    this.#scheduler.dispose();
    this.lm.free();
    // The model's buffers go back to the system, not to MLX's cache and the heap (as serve's unload).
    clearMemoryCache();
  }

  // Past close() the weights are freed: MLX would only say "use of a freed MLX array".
  #checkOpen(): void {
    if (this.#closed) throw new ClosedError("the model is closed (close() was called); load it again to use it");
  }
}

/** The options of a chat's turn: generate()'s but those of a text prompt. */
export type TurnOptions = Omit<GenerateOptions, "system" | "raw">;

/**
 * What a chat's turn says: a text (the user's), or messages that follow the conversation: a tool
 * message for each call the last answer made (its result), and user messages.
 */
export type TurnInput = string | Message[];

export class Chat {
  #closed = false;
  /** Settles when the turn in progress has ended: turns take their places one after another. */
  #lastTurn: Promise<void> = Promise.resolve();

  // Private: a caller's onClose() took the chat out of its model's list, so the model's close()
  // left it open, its next turn on freed weights ("use of a freed MLX array").
  readonly #conversation: Conversation;
  readonly #onClose: () => void;

  /** @internal use Model.chat() */
  constructor(conversation: Conversation, onClose: () => void) {
    this.#conversation = conversation;
    this.#onClose = onClose;
  }

  /** The conversation so far: user and assistant turns (an answer's calls in its toolCalls), tool results. */
  get messages(): readonly Message[] {
    return this.#conversation.messages as Message[];
  }

  /** Answers `input` (a text, or tool results and user messages), as the next turn of the conversation. */
  async send(input: TurnInput, options: TurnOptions = {}): Promise<CompletionResult> {
    const turn = this.stream(input, options);
    for (;;) {
      const step = await turn.next();
      if (step.done) return step.value;
    }
  }

  /**
   * Answers `input` as it is written (reasoning and calls left out); the generator's return value is the
   * whole result. Overlapping calls answer one after another, in the order they started (a
   * turn reads every turn before it), so a stream left unfinished holds back the next turn.
   * A turn whose signal aborts before it starts ends at once, "cancelled", and asks nothing.
   * A stream left unfinished and let go of is cancelled once it is garbage-collected, as an
   * abandoned turn: the next turn goes on from the conversation as it was.
   */
  stream(input: TurnInput, options: TurnOptions = {}): AsyncGenerator<string, CompletionResult> {
    return cancelledWhenDropped((dropped) => this.#stream(input, options, dropped));
  }

  async *#stream(
    input: TurnInput,
    options: TurnOptions,
    dropped: DroppedStream,
  ): AsyncGenerator<string, CompletionResult> {
    this.#checkOpen();
    checkTurnInput(input);
    checkOptionNames(options, turnOptionNames);
    checkOptions(options);
    const offered = tools(options);
    const previous = this.#lastTurn;
    let endTurn!: () => void;
    this.#lastTurn = new Promise((resolve) => (endTurn = resolve));
    try {
      // (While it waits, the turn before holds on to it: it cannot be collected before this.)
      await settledOrAborted(previous, options.signal);
      // A stream collected unfinished runs no `finally`: its turn is undone, to the conversation
      // as it is now that the turns before have ended, and let go of here.
      dropped.onDropped(undoTurn(this.#conversation, this.#conversation.messages, previous, endTurn));
      this.#checkOpen();
      // Cancelled before it started: nothing was asked, so the conversation stays as it was.
      if (options.signal?.aborted) return cancelledBeforeStart();
      const said = typeof input === "string" ? input : conversationMessages(input);
      const turn = this.#conversation.turn(said, {
        sampling: sampling(options, this.#conversation.lm.sampling),
        maxTokens:
          options.maxTokens ??
          modelMaxTokens(this.#conversation.lm) ??
          this.#conversation.lm.config.maxPositionEmbeddings,
        maxTokensParam: "maxTokens",
        promptParam: "input",
        stop: stopList(options),
        format: options.format && { format: options.format, param: "format" },
        thinking: { enabled: options.think, budget: options.thinkingBudget, param: "think" },
        tools: offered,
        signal: eitherSignal(options.signal, dropped.signal),
      });
      return withCallsReported((yield* answerText(turn, options)).result, options);
    } finally {
      // A turn cancelled while it waited ends before the turn it waited for: the next one still waits for that.
      void previous.then(endTurn);
    }
  }

  /** Forgets the conversation. */
  clear(): void {
    this.#checkOpen();
    this.#conversation.clear();
  }

  /** Frees the conversation's KV cache; later turns throw ClosedError (the model stays open). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#conversation.dispose();
    this.#onClose();
  }

  #checkOpen(): void {
    if (this.#closed) throw new ClosedError("the chat is closed (close() was called on it or on its model)");
  }
}

/**
 * What a stream learns of its caller letting it go unfinished: `signal` aborts (which cancels its
 * generation), and what it gave onDropped() runs.
 */
interface DroppedStream {
  readonly signal: AbortSignal;
  onDropped(undo: () => void): void;
}

/**
 * A chat let go of without close() would keep its KV cache (and its conversation) until the
 * model's close(), a chat per user or per task growing the process for good: once the chat is
 * collected, its conversation is disposed. A turn in progress holds its chat.
 */
const droppedChats = new FinalizationRegistry<() => void>((dispose) => dispose());

/**
 * A caller that stops reading a stream without a `break` or return() (it keeps only what it read,
 * or drops the stream after a few pieces) would leave its generation decoding, unread, up to
 * maxTokens, in a batch slot other calls wait for: once the stream is collected, it is cancelled.
 */
const droppedStreams = new FinalizationRegistry<() => void>((cancel) => cancel());

/** The stream `start` makes, cancelled if it is collected before it ends. */
function cancelledWhenDropped<R>(
  start: (dropped: DroppedStream) => AsyncGenerator<string, R>,
): AsyncGenerator<string, R> {
  const controller = new AbortController();
  const undos: (() => void)[] = [];
  const registration = {};
  async function* tracked(): AsyncGenerator<string, R> {
    try {
      return yield* start({ signal: controller.signal, onDropped: (undo) => undos.push(undo) });
    } finally {
      // Ended (read to the end, left with `break`, failed): its turn is over, nothing to undo.
      droppedStreams.unregister(registration);
    }
  }
  const stream = tracked();
  // What runs must not hold on to `stream` itself, which it would then keep from being collected.
  droppedStreams.register(
    stream,
    () => {
      controller.abort();
      for (const undo of undos) undo();
    },
    registration,
  );
  return stream;
}

/**
 * Undoes a turn whose stream was let go of: the question it left unanswered goes, and the next
 * turn may start once the one before has ended. Made out of the stream's body, whose scope
 * would hold on to the stream.
 */
function undoTurn(
  conversation: Conversation,
  before: Conversation["messages"],
  previous: Promise<void>,
  endTurn: () => void,
) {
  return () => {
    const last = conversation.messages.at(-1);
    if (last && last.role !== "assistant") conversation.messages = before;
    void previous.then(endTurn);
  };
}

/** A signal that aborts when either does (the caller's is optional). */
const eitherSignal = (signal: AbortSignal | undefined, other: AbortSignal): AbortSignal =>
  signal ? AbortSignal.any([signal, other]) : other;

/** Settles when `turn` has, or as soon as `signal` aborts (at once if it has). */
function settledOrAborted(turn: Promise<void>, signal?: AbortSignal): Promise<void> {
  if (!signal) return turn;
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const onAbort = () => resolve();
    signal.addEventListener("abort", onAbort, { once: true });
    void turn.then(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    });
  });
}

/** The options' sampling values, else the model's alias's (models.toml's, `model`), else greedy. */
function sampling(o: GenerateOptions, model: SamplingDefaults = {}): SamplingParams {
  const { temperature, topP, topK, minP, repetitionPenalty, seed } = o;
  return settleSampling({ temperature, topP, topK, minP, repetitionPenalty, seed }, {}, model);
}

/**
 * Options are an object of known keys: a TypeError on `null`, or a misspelt key silently left
 * out (`max_tokens` would generate until the context is full), is what this spares the caller.
 */
function checkOptionNames(options: object, names: readonly string[]): void {
  if (typeof options !== "object" || options === null || Array.isArray(options))
    throw new InvalidParameterError(`the options must be an object (got ${JSON.stringify(options)})`, "options");
  for (const key of Object.keys(options)) {
    if (names.includes(key)) continue;
    const camelCase = key.replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase());
    const hint = names.includes(camelCase) ? `did you mean ${camelCase}?` : `the options are ${names.join(", ")}`;
    throw new InvalidParameterError(`unknown option ${key} (${hint})`, key);
  }
}

/**
 * The options the engine would take silently or fail on with a TypeError: a library user gets
 * the InvalidParameterError the server's 400 would name.
 */
function checkOptions(o: GenerateOptions): void {
  const fail = (message: string, param: string) => {
    throw new InvalidParameterError(message, param);
  };
  for (const flag of ["raw", "think"] as const)
    if (o[flag] !== undefined && typeof o[flag] !== "boolean") fail(`${flag} must be true or false`, flag);
  // The range checks below compare: "0.5" <= 1 and null >= 0 hold, and would let them through.
  for (const name of numberOptionNames)
    if (o[name] !== undefined && typeof o[name] !== "number")
      fail(`${name} must be a number (got ${JSON.stringify(o[name])})`, name);
  if (o.maxTokens !== undefined && !(Number.isInteger(o.maxTokens) && o.maxTokens > 0))
    fail(`maxTokens must be a whole number > 0 (got ${o.maxTokens})`, "maxTokens");
  if (o.thinkingBudget !== undefined && !(Number.isInteger(o.thinkingBudget) && o.thinkingBudget >= 0))
    fail(`thinkingBudget must be a whole number >= 0 (got ${o.thinkingBudget})`, "thinkingBudget");
  // null too: as every other option, it is refused rather than taken as none.
  const stops = o.stop === undefined ? [] : stopList(o);
  if (!Array.isArray(stops) || stops.some((s) => typeof s !== "string" || s === ""))
    fail("stop must be a non-empty string or an array of them", "stop");
  const format = o.format as unknown;
  if (format !== undefined && format !== "json" && !(typeof format === "object" && format && "schema" in format))
    fail(`format must be "json" or { schema } (got ${JSON.stringify(format)})`, "format");
  if (typeof format === "object" && format) {
    // A misspelt `strict` would be left out without a word, and "no" taken as strict.
    for (const key of Object.keys(format))
      if (key !== "schema" && key !== "strict") fail(`format takes schema and strict, not ${key}`, "format");
    const { strict } = format as { strict?: unknown };
    if (strict !== undefined && typeof strict !== "boolean")
      fail(`format.strict must be true or false (got ${JSON.stringify(strict)})`, "format");
  }
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) fail("signal must be an AbortSignal", "signal");
  for (const callback of ["onToolCall", "onToolCallDelta"] as const)
    if (o[callback] !== undefined && typeof o[callback] !== "function")
      fail(`${callback} must be a function`, callback);
  if (o.system !== undefined && typeof o.system !== "string") fail("system must be a string", "system");
  checkSampling(o);
}

/** The sampling checks' parameter names (the server's) as the library's options spell them. */
const samplingOptionNames: Record<string, string> = {
  top_p: "topP",
  top_k: "topK",
  min_p: "minP",
  repetition_penalty: "repetitionPenalty",
};

/** The engine's sampling checks, with errors that name the option as the caller wrote it. */
function checkSampling(o: GenerateOptions): void {
  try {
    validateSampling(sampling(o));
  } catch (error) {
    const option = error instanceof InvalidParameterError && samplingOptionNames[error.param ?? ""];
    if (!option) throw error;
    // "top_p must be in (0, 1] (got 2)" → "topP must be in (0, 1] (got 2)"
    throw new InvalidParameterError(error.message.replace(/^.*? must /, `${option} must `), option);
  }
}

const roles: readonly string[] = ["system", "user", "assistant", "tool"] satisfies Message["role"][];

function checkPrompt(prompt: Prompt, o: GenerateOptions): void {
  if (typeof prompt === "string") {
    // The engine drops a raw request's system prompt (as Ollama does): here it is a mistake to say so.
    if (o.raw && o.system !== undefined)
      throw new InvalidParameterError("system goes through the chat template, which raw leaves out", "system");
    return;
  }
  if (!Array.isArray(prompt))
    throw new InvalidParameterError("the prompt must be a string or an array of messages", "prompt");
  if (prompt.length === 0) throw new InvalidParameterError("the prompt has no messages", "prompt");
  // A list of messages is rendered as it is: these two would be dropped without a word.
  if (o.system !== undefined)
    throw new InvalidParameterError("system is for a text prompt: put a system message first in the list", "system");
  if (o.raw) throw new InvalidParameterError("raw is for a text prompt, not a list of messages", "raw");
  checkMessages(prompt, "prompt");
}

/**
 * A chat's turn: a text, or the messages that follow the conversation (its answers are the
 * model's, its system prompt model.chat()'s).
 */
function checkTurnInput(input: TurnInput): void {
  if (typeof input === "string") return;
  const fail = (message: string) => {
    throw new InvalidParameterError(message, "input");
  };
  if (!Array.isArray(input)) fail("a chat's turn is a string or a list of user and tool messages");
  if (input.length === 0) fail("the turn has no messages");
  checkMessages(input, "input");
  const other = input.findIndex((m) => m.role !== "user" && m.role !== "tool");
  if (other >= 0)
    fail(
      `message ${other}: a chat's turn takes user and tool messages (its answers are the model's, its system prompt model.chat()'s), not ${input[other]!.role}`,
    );
}

/** Each message has a role, a text, and the fields of its role, as a result gives them; `param` names the list in errors. */
function checkMessages(messages: Message[], param: string): void {
  messages.forEach((m, i) => {
    if (!m || !roles.includes(m.role) || typeof m.content !== "string")
      throw new InvalidParameterError(
        `message ${i} must be { role: "system" | "user" | "assistant" | "tool", content: string }`,
        param,
      );
    const fail = (message: string) => {
      throw new InvalidParameterError(`message ${i}: ${message}`, param);
    };
    if (m.toolCalls !== undefined) {
      if (m.role !== "assistant") fail("only an assistant's message has toolCalls");
      const isCall = (c: ToolCall) =>
        c && typeof c.id === "string" && typeof c.name === "string" && isJsonObject(c.arguments);
      if (!Array.isArray(m.toolCalls) || !m.toolCalls.every(isCall))
        fail("toolCalls must be a list of { id: string, name: string, arguments: object }, as a result's toolCalls");
    }
    for (const key of ["toolCallId", "toolName"] as const) {
      if (m[key] === undefined) continue;
      if (m.role !== "tool") fail(`only a tool message has ${key}`);
      if (typeof m[key] !== "string") fail(`${key} must be a string`);
    }
    // Another library's field (Ollama's images, OpenAI's name) would be dropped without a word.
    const unknown = Object.keys(m).find((key) => !messageKeys.includes(key));
    if (unknown !== undefined) fail(`unknown field ${unknown} (a message has ${messageKeys.join(", ")})`);
  });
}

/** Every field a Message has. */
const messageKeys = Object.keys({
  role: true,
  content: true,
  toolCalls: true,
  toolCallId: true,
  toolName: true,
} satisfies Record<keyof Message, true>);

/** The messages as the engine takes them: the fields a Message has, none other passed on. */
const conversationMessages = (messages: Message[]): ConversationMessage[] =>
  messages.map(({ role, content, toolCalls, toolCallId, toolName }) => ({
    role,
    content,
    ...(toolCalls && { toolCalls }),
    ...(toolCallId !== undefined && { toolCallId }),
    ...(toolName !== undefined && { toolName }),
  }));

/**
 * The functions offered and the choice among them, read as the server reads its requests'
 * (names, schemas, a forced function one of them), its errors named as the options are; with
 * neither the raw prompt nor a format they would leave unheeded.
 */
function tools(o: GenerateOptions): ToolRequest | undefined {
  if (o.tools === undefined && o.toolChoice === undefined) return undefined;
  if (o.tools !== undefined && !Array.isArray(o.tools))
    throw new InvalidParameterError(`tools must be a list of functions (got ${JSON.stringify(o.tools)})`, "tools");
  // { name } is the Responses API's flat form of a named choice, which the server reads too.
  const choice = isJsonObject(o.toolChoice) ? { type: "function", ...o.toolChoice } : o.toolChoice;
  let request: ToolRequest | undefined;
  try {
    request = toolRequest(Fields.of({ tools: o.tools, tool_choice: choice }), {
      withChoice: true,
      flatNamedChoice: true,
    });
  } catch (error) {
    if (!(error instanceof ValidationError)) throw error;
    const rename = (text: string) => text.replaceAll("tool_choice", "toolChoice");
    throw new InvalidParameterError(rename(error.message), error.param && rename(error.param));
  }
  if (!request) return undefined;
  if (o.raw) throw new InvalidParameterError("tools go through the chat template, which raw leaves out", "raw");
  // The forced call's grammar would take the place of the format's, which went unheeded (as the server refuses it).
  if (requiredFunctions(request) && o.format !== undefined)
    throw new InvalidParameterError("format cannot be combined with a toolChoice that requires a call", "format");
  return request;
}

/** `result`, once each of its calls has gone to the caller's onToolCall. */
function withCallsReported(result: CompletionResult, o: GenerateOptions): CompletionResult {
  for (const call of result.toolCalls) o.onToolCall?.(call);
  return result;
}

/** `stop` as the engine takes it: a list. */
const stopList = (o: GenerateOptions): string[] | undefined => (typeof o.stop === "string" ? [o.stop] : o.stop);

function spec(lm: LoadedModel, prompt: Prompt, o: GenerateOptions): GenerationSpec {
  checkOptionNames(o, generateOptionNames);
  checkPrompt(prompt, o);
  checkOptions(o);
  const offered = tools(o);
  // A text prompt goes as it is without one; the engine's error would name the server's endpoints.
  if (!lm.tokenizer.chatTemplate) {
    if (typeof prompt !== "string")
      throw new UnsupportedError(
        "this model has no chat template: give it a text prompt, not a list of messages",
        "prompt",
      );
    if (offered) throw new UnsupportedError("this model has no chat template, so it cannot be offered tools", "tools");
  }
  // The engine offers tools to a list of messages: a text prompt with tools is its one user turn.
  const messages: Message[] | undefined =
    typeof prompt !== "string"
      ? prompt
      : offered
        ? [
            ...(o.system === undefined ? [] : [{ role: "system" as const, content: o.system }]),
            { role: "user", content: prompt },
          ]
        : undefined;
  const input: PromptInput = messages
    ? { kind: "chat", messages: conversationMessages(messages), param: "prompt" }
    : { kind: "text", text: prompt as string, template: !o.raw, system: o.system };
  return {
    prompt: input,
    tools: offered,
    sampling: sampling(o, lm.sampling),
    maxTokens: o.maxTokens,
    maxTokensParam: "maxTokens",
    stop: stopList(o),
    format: o.format && { format: o.format, param: "format" },
    thinking: { enabled: o.think, budget: o.thinkingBudget, param: "think" },
    signal: o.signal,
  };
}

/**
 * The answer's text pieces (a thinking model's reasoning left out: the result holds it), the
 * calls' progress to the caller's onToolCallDelta, after the prose written before it. A reader
 * that stops early closes `pieces` too, which cancels the generation.
 */
async function* answerText<R>(
  pieces: AsyncGenerator<CompletionPiece, R>,
  o: GenerateOptions,
): AsyncGenerator<string, R> {
  let done = false;
  try {
    for (let step = await pieces.next(); ; step = await pieces.next()) {
      if (step.done) {
        done = true;
        return step.value;
      }
      if (step.value.text) yield step.value.text;
      for (const delta of step.value.toolCalls ?? []) o.onToolCallDelta?.(delta);
    }
  } finally {
    if (!done) await pieces.return(undefined as R);
  }
}
