// The engine loop for one loaded model, shared by every request: requests are submitted from
// the HTTP side and come back as async streams of text; the loop runs the BatchGenerator one
// step at a time, giving the event loop a turn between steps (all MLX calls stay on this
// thread), applies EOS and stop strings per sequence, and lets the tuner adjust the limits.
import { nextTurn } from "../event-loop";
import type { LoadedModel } from "../models/load";
import { createDetokenizer, type StreamingDetokenizer, withoutUnfinishedCharacter } from "../tokenizer/detokenizer";
import { BatchGenerator, type SequenceEvent } from "./batch";
import type { LogitsProcessor, SamplingParams } from "./sampling";
import { QueueFullError } from "../errors";
import { StopMatcher } from "./stop";
import { newSplitter, type ReasoningFormat, type TextSplitter } from "./reasoning";
import { speculationOptions } from "./speculative";
import type { AdaptiveTuner, TunerAdjustment } from "./tuner";
import type { ThinkingBlock } from "./tools";
import type { PrefixCache } from "./prefix-cache";
import * as mx from "../mlx";
import type { Adapter } from "../models/lora";
import { PipelineFront, type PipelineFigures } from "./pipeline/front";
import { TensorParallelFront } from "./pipeline/tensor-parallel";

export interface GenerationRequest {
  promptIds: number[];
  sampling: SamplingParams;
  maxTokens: number;
  stop?: string[];
  /** Applied in order to each step's logits (see logitsProcessors() in sampling.ts). */
  processors?: LogitsProcessor[];
  /** How many alternatives to report per token (0: none). */
  topLogprobs?: number;
  /** Generate past end-of-sequence tokens, up to maxTokens (vLLM's ignore_eos, for benchmarks). */
  ignoreEos?: boolean;
  /**
   * vLLM's min_tokens: stop strings are not looked for until the answer holds this many tokens
   * (a logits processor keeps the end and stop tokens from being drawn until then).
   */
  minTokens?: number;
  /** vLLM's stop_token_ids: tokens that end the answer as an end-of-sequence token does. */
  stopTokenIds?: ReadonlySet<number>;
  /** vLLM's include_stop_str_in_output: the stop string (or stop token's text) that ended the answer is shown. */
  includeStop?: boolean;
  /** vLLM's skip_special_tokens: special tokens show no text. */
  skipSpecialTokens?: boolean;
  /** Set for a model that thinks: its text is split into reasoning and answer. */
  reasoning?: ReasoningFormat;
  /** Whether speculative decoding may draft for it (see SequenceRequest.speculate). */
  speculate?: boolean;
  /**
   * Whether its token budget closed it early (a grammar's choices narrowed so that a valid end
   * fits, see GrammarConstraint.closedEarly): an end-of-sequence after that is the budget's end,
   * finish reason "length", not the model's.
   */
  closedEarly?: () => boolean;
  signal?: AbortSignal;
  /** Told when its prefill begins, with the prompt tokens the prefix cache gave (Anthropic's message_start tells them). */
  onStart?: (cachedTokens: number) => void;
  /** A LoRA/DoRA adapter of this model for this request alone (default: the model's own, if any). */
  adapter?: Adapter;
}

export interface TokenLogprob {
  token: number;
  logprob: number;
}

/** Why an answer ended: EOS or a stop string, max_tokens (or the context), or a cancel. */
export type FinishReason = "stop" | "length" | "cancelled";

export type GenerationEvent =
  /**
   * Text that became final, the tokens that produced it, and their alternatives when asked;
   * a thinking model's reasoning comes apart from its answer (`text`).
   */
  | {
      type: "text";
      text: string;
      reasoning?: string;
      /** A remote provider's thinking block, closed (its reasoning came before): see RemoteEvent. */
      thinkingBlock?: ThinkingBlock;
      tokens: TokenLogprob[];
      top?: TokenLogprob[][];
    }
  /**
   * `stopSequence`: the stop string that ended the answer (Anthropic reports which); `stopToken`:
   * the stop token (of the request's stopTokenIds) that did (vLLM reports it as its stop_reason).
   */
  | {
      type: "done";
      finishReason: FinishReason;
      usage: GenerationUsage;
      tokenIds: number[];
      stopSequence?: string;
      stopToken?: number;
      /** A remote provider's model declined to answer (Anthropic's stop_reason "refusal"). */
      refused?: boolean;
    }
  | { type: "error"; error: Error };

export interface GenerationUsage {
  promptTokens: number;
  completionTokens: number;
  /** Of the completion tokens, those generated inside the reasoning. */
  reasoningTokens: number;
  /** Prompt tokens whose keys and values came from the prefix cache. */
  cachedTokens: number;
  /** Prompt tokens a remote provider wrote to its prompt cache (Anthropic's cache_creation_input_tokens). */
  cacheWriteTokens?: number;
  /** From submit to the start of prefill. */
  queueMs: number;
  timeToFirstTokenMs: number;
  totalMs: number;
  /** Speculative decoding: tokens drafted for this answer, and how many the model kept. */
  draftedTokens: number;
  acceptedTokens: number;
  /** Set when it ended before its prefill began (cancelled while it waited for a batch slot): its prompt was never read. */
  unstarted?: boolean;
  /**
   * Set when a generated token ended it without being counted in completionTokens (an
   * end-of-sequence, a stop token left out of the answer): the decode step that made it is in totalMs.
   */
  endedByToken?: boolean;
}

/**
 * The tokens an answer's decode steps sampled: its completion tokens and the token that ended it
 * unseen (endedByToken), as llama.cpp and Ollama count them.
 */
export const sampledTokens = (u: GenerationUsage) => u.completionTokens + (u.endedByToken ? 1 : 0);

export interface SchedulerStats {
  running: number;
  waiting: number;
  maxQueue: number;
  /** Current decode batch limit and prefill chunk (the tuner may move them). */
  maxBatch: number;
  prefillChunk: number;
  tuner?: { targetItlMs: number; estimatedP99Ms?: number; adjustments: number; recent: TunerAdjustment[] };
  prefixCache?: { entries: number; bytes: number; hits: number; misses: number; hitTokens: number };
  speculation?: SpeculationStats;
  /** The model split across processes: each stage's figures. */
  pipeline?: PipelineFigures;
}

export interface SpeculationStats {
  method: "draft-model" | "prompt-lookup";
  numDraft: number;
  /** Speculation backs off above this many running sequences. */
  maxBatch: number;
  /** Speculative steps taken, tokens drafted, and those the model kept. */
  steps: number;
  drafted: number;
  accepted: number;
}

export interface SchedulerOptions {
  maxBatch: number;
  prefillChunk: number;
  /** Requests allowed to wait for a batch slot before new ones are refused. */
  maxQueue: number;
  tuner?: AdaptiveTuner;
  prefixCache?: PrefixCache;
  /** Called with each decode step's duration (an inter-token latency for every running sequence). */
  onStep?: (ms: number, running: number) => void;
}

/** A small async queue: the engine pushes, one consumer pulls. */
class Channel<T> {
  readonly #items: T[] = [];
  #wake?: () => void;
  #closed = false;

  push(item: T): void {
    this.#items.push(item);
    this.#wake?.();
  }

  close(): void {
    this.#closed = true;
    this.#wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    for (;;) {
      while (this.#items.length > 0) yield this.#items.shift()!;
      if (this.#closed) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }
}

interface Running {
  request: GenerationRequest;
  channel: Channel<GenerationEvent>;
  detokenizer: StreamingDetokenizer;
  stops: StopMatcher;
  reasoning?: TextSplitter;
  reasoningTokens: number;
  submittedAt: number;
  startedAt?: number;
  cachedTokens: number;
  firstTokenAt?: number;
  tokenIds: number[];
  drafted: number;
  accepted: number;
  finished: boolean;
  /** The stop token that ended it, if one did. */
  stopToken?: number;
  /** A generated token ended it without being one of its tokens (an end-of-sequence, a stop token left out). */
  endedByToken?: boolean;
}

export class Scheduler {
  #generator: BatchGenerator;
  readonly #running = new Map<string, Running>();
  #nextId = 0;
  #looping = false;

  constructor(
    readonly lm: LoadedModel,
    readonly options: SchedulerOptions,
  ) {
    this.#generator = new BatchGenerator(lm.model, {
      maxBatch: options.maxBatch,
      prefillChunk: options.prefillChunk,
      prefixCache: options.prefixCache,
      kvQuantization: lm.kvQuantization,
      speculation: speculationOptions(lm, options.prefixCache),
      maxKvSize: lm.maxKvSize,
      onStart: (id, cachedTokens) => {
        const s = this.#running.get(id);
        if (!s) return;
        s.startedAt = performance.now();
        s.cachedTokens = cachedTokens;
        s.request.onStart?.(cachedTokens);
      },
    });
  }

  get running(): number {
    return this.#generator.running;
  }

  get waiting(): number {
    return this.#generator.waiting;
  }

  get stats(): SchedulerStats {
    const { tuner, prefixCache: cache } = this.options;
    return {
      running: this.running,
      waiting: this.waiting,
      maxQueue: this.options.maxQueue,
      ...this.limits,
      tuner: tuner && {
        targetItlMs: tuner.targetMs,
        estimatedP99Ms: tuner.estimatedP99Ms,
        adjustments: tuner.adjustmentCount,
        recent: tuner.adjustments.slice(-10),
      },
      prefixCache: cache && {
        entries: cache.entries,
        bytes: cache.bytes,
        hits: cache.hits,
        misses: cache.misses,
        hitTokens: cache.hitTokens,
      },
      pipeline:
        this.lm.model instanceof PipelineFront || this.lm.model instanceof TensorParallelFront
          ? this.lm.model.figures
          : undefined,
      speculation: this.#speculationStats,
    };
  }

  get #speculationStats(): SpeculationStats | undefined {
    const o = this.#generator.options.speculation;
    if (!o) return undefined;
    return {
      method: o.draftModel ? "draft-model" : "prompt-lookup",
      numDraft: o.numDraft,
      maxBatch: o.maxBatch,
      ...this.#generator.speculationCounts,
    };
  }

  /**
   * Whether submit() would be accepted now: the queue holds maxQueue requests beyond those the
   * batch has room for (a burst, or a request's n choices, that an idle batch would take at
   * its next step is not refused as if it had to wait). The room is counted from the larger of
   * the tuner's limit and the one it started from (--max-batch): a request of as many choices as
   * the server takes (--max-batch plus --max-queue) would otherwise meet a full queue after a cut,
   * also on an idle server, where no step runs to raise the limit again and no retry clears it.
   */
  get accepting(): boolean {
    const roomInBatch = Math.max(0, Math.max(this.limits.maxBatch, this.options.maxBatch) - this.running);
    return this.waiting < this.options.maxQueue + roomInBatch;
  }

  get limits(): { maxBatch: number; prefillChunk: number } {
    const { maxBatch, prefillChunk } = this.#generator.options;
    return { maxBatch, prefillChunk };
  }

  /** Queues a generation; its events arrive on the returned stream. Throws QueueFullError when full. */
  submit(request: GenerationRequest): AsyncIterable<GenerationEvent> {
    if (!this.accepting) throw new QueueFullError(`the queue is full (${this.options.maxQueue} waiting)`);
    const id = String(this.#nextId++);
    const channel = new Channel<GenerationEvent>();
    const sequence: Running = {
      request,
      channel,
      detokenizer: createDetokenizer(this.lm.tokenizer, { skipSpecialTokens: request.skipSpecialTokens }),
      stops: new StopMatcher(request.stop ?? [], { includeStop: request.includeStop }),
      reasoning: request.reasoning && newSplitter(request.reasoning),
      reasoningTokens: 0,
      submittedAt: performance.now(),
      cachedTokens: 0,
      tokenIds: [],
      drafted: 0,
      accepted: 0,
      finished: false,
    };
    this.#generator.add(id, {
      promptIds: request.promptIds,
      sampling: request.sampling,
      maxTokens: request.maxTokens,
      processors: request.processors,
      keepLogprobs: (request.topLogprobs ?? 0) > 0,
      adapter: request.adapter ?? this.lm.adapter,
      speculate: request.speculate,
    });
    this.#running.set(id, sequence); // after add(), which may refuse the request
    // A signal that fired before the request got here fires no event: it ends at once.
    if (request.signal?.aborted) this.#finish(id, "cancelled");
    else request.signal?.addEventListener("abort", () => this.#finish(id, "cancelled"), { once: true });
    void this.#loop();
    return channel;
  }

  async #loop(): Promise<void> {
    if (this.#looping) return;
    this.#looping = true;
    // A step that only gave newcomers their first tokens ended no decoding stream's wait: they
    // wait on through the next step, and the tuner and the inter-token figures see both as one.
    let carried = { ms: 0, chunkFilled: false };
    try {
      while (!this.#generator.idle) {
        const started = performance.now();
        const decoding = this.#generator.running;
        let events: SequenceEvent[];
        try {
          events = await this.#generator.stepAsync();
        } catch (error) {
          // A failed step leaves the batch in an unknown state: end the streams it held with the
          // error; those still queued go on in a new batch.
          this.#failStep(error as Error);
          await nextTurn();
          continue;
        }
        const turn = this.#generator.lastTurn;
        const ms = (turn?.ms ?? performance.now() - started) + carried.ms;
        const chunkFilled = this.#generator.chunkFilled || carried.chunkFilled;
        if (decoding === 0) carried = { ms: 0, chunkFilled: false };
        else if (events.length > 0) {
          const intervals = this.#intervalsEnded(events);
          // (A split model's turn already spans the time since the group's last read.)
          if (intervals === 0 && turn === undefined) carried = { ms, chunkFilled };
          else {
            if (intervals > 0) this.options.onStep?.(ms, intervals);
            const changed = this.options.tuner?.observe(ms, decoding, chunkFilled);
            if (changed) Object.assign(this.#generator.options, changed);
            carried = { ms: 0, chunkFilled: false };
          }
        }
        for (const event of events) this.#deliver(event);
        // Let HTTP handlers run (new requests, disconnects) between engine steps.
        await nextTurn();
      }
    } finally {
      this.#looping = false;
    }
  }

  /**
   * The sequences a step gave a further token: each ends an inter-token interval. A first token
   * ends its sequence's time to first token instead (one whose prompt was all cached but its
   * last token gets it from a decode step).
   */
  #intervalsEnded(events: SequenceEvent[]): number {
    const ended = events.filter((e) => !e.error && this.#running.get(e.id)?.firstTokenAt !== undefined);
    return new Set(ended.map((e) => e.id)).size;
  }

  #deliver(event: SequenceEvent): void {
    const s = this.#running.get(event.id);
    if (!s || s.finished) {
      event.logprobs?.free();
      return;
    }
    if (event.error) return this.#fail(event.id, event.error);
    s.firstTokenAt ??= performance.now();
    s.drafted += event.drafted ?? 0;
    s.accepted += event.accepted ?? 0;
    const top = event.logprobs ? topTokens(event.logprobs, s.request.topLogprobs!) : undefined;
    event.logprobs?.free();
    const isEnd = this.lm.tokenizer.eosTokenIds.has(event.token);
    if (isEnd && !s.request.ignoreEos) {
      s.endedByToken = true;
      return this.#finish(event.id, s.request.closedEarly?.() ? "length" : "stop");
    }
    // A stop token ends the answer as an end token does; its text is the answer's only where
    // include_stop_str_in_output asks for it (as vLLM's detokenizer drops it otherwise).
    const stopToken = s.request.stopTokenIds?.has(event.token) ?? false;
    if (stopToken) s.stopToken = event.token;
    if (stopToken && !s.request.includeStop) {
      s.endedByToken = true;
      return this.#finish(event.id, "stop");
    }
    s.tokenIds.push(event.token);
    if (s.reasoning?.inside) s.reasoningTokens++;
    // An end token generated past (ignore_eos) shows no text, as vLLM and llama.cpp show none.
    // Stop strings count only past min_tokens, as vLLM looks for them: the answer keeps its
    // min_tokens tokens before the one that ends it, as it does before an end token.
    const matching = s.tokenIds.length > (s.request.minTokens ?? 0);
    const { text, stopped } = s.stops.push(isEnd ? "" : s.detokenizer.push(event.token), matching);
    const tokens = [{ token: event.token, logprob: event.logprob }];
    this.#send(s, text, tokens, top && [top]);
    if (stopped || stopToken) return this.#finish(event.id, "stop");
    if (event.finished) this.#finish(event.id, "length");
  }

  /**
   * Final text (split when the model thinks) with its tokens; nothing when there is neither. A
   * token whose text is held back (part of a character, or of a stop sequence) still goes now,
   * without text: its log-probability is one of the answer's, one per token.
   */
  #send(s: Running, text: string, tokens: TokenLogprob[], top?: TokenLogprob[][]): void {
    const split = s.reasoning && text ? s.reasoning.push(text) : { text, reasoning: "" };
    if (!split.text && !split.reasoning && !top && tokens.length === 0) return;
    const reasoning = split.reasoning ? { reasoning: split.reasoning } : {};
    s.channel.push({ type: "text", text: split.text, ...reasoning, tokens, top });
  }

  /** The stream `id` taken out of the batch to be ended, or undefined where it has ended already. */
  #ending(id: string): Running | undefined {
    const s = this.#running.get(id);
    if (!s || s.finished) return undefined;
    s.finished = true;
    this.#running.delete(id);
    this.#generator.remove(id);
    return s;
  }

  #finish(id: string, finishReason: FinishReason): void {
    const s = this.#ending(id);
    if (!s) return;
    if (finishReason !== "cancelled") {
      const rest = s.stops.push(withoutUnfinishedCharacter(s.detokenizer.flush()));
      const tail = rest.stopped ? rest.text : rest.text + s.stops.flush();
      this.#send(s, tail, []);
      const held = s.reasoning?.flush();
      if (held?.text || held?.reasoning) s.channel.push({ type: "text", ...held, tokens: [] });
    }
    const now = performance.now();
    s.channel.push({
      type: "done",
      finishReason,
      usage: {
        promptTokens: s.request.promptIds.length,
        completionTokens: s.tokenIds.length,
        reasoningTokens: s.reasoningTokens,
        cachedTokens: s.cachedTokens,
        queueMs: (s.startedAt ?? now) - s.submittedAt,
        timeToFirstTokenMs: (s.firstTokenAt ?? now) - s.submittedAt,
        totalMs: now - s.submittedAt,
        draftedTokens: s.drafted,
        acceptedTokens: s.accepted,
        ...(s.startedAt === undefined && { unstarted: true }),
        ...(s.endedByToken && { endedByToken: true }),
      },
      tokenIds: s.tokenIds,
      stopSequence: s.stops.matched,
      stopToken: s.stopToken,
    });
    s.channel.close();
  }

  /** Ends one stream with its own failure (its row has left the batch): the others go on. */
  #fail(id: string, error: Error): void {
    const s = this.#ending(id);
    if (!s) return;
    s.channel.push({ type: "error", error });
    s.channel.close();
  }

  /**
   * Ends the streams a failed step held (decoding, or prefilling) with its error. Their rows leave
   * the batch as any finished sequence's do (other ranks of a split model told); when the rows'
   * caches hold the failed computation, taking them out (or saving their prefixes) evaluates it
   * again and throws, which took the server down: the batch is then let go whole, and a new one,
   * with the limits the tuner set, takes the requests still queued, which the step never held
   * (they failed with it before, though the model serves them as well as any), and the next ones.
   */
  #failStep(error: Error): void {
    // Nothing of the failed batch is kept: its caches may hold a step that never completed (the
    // prefix cache would take them from sequences removed one by one, evaluating that step again).
    const failed = this.#generator;
    const queued = failed.takeWaiting();
    this.#generator = new BatchGenerator(failed.model, failed.options);
    for (const { id, request } of queued) this.#generator.add(id, request);
    const carried = new Set(queued.map((q) => q.id));
    for (const [id, s] of this.#running) {
      if (carried.has(id)) continue;
      s.finished = true;
      s.channel.push({ type: "error", error });
      s.channel.close();
      this.#running.delete(id);
    }
    try {
      failed.dispose();
    } catch {
      // Its arrays hold the failure: letting go of them is all that is left to do.
    }
  }

  dispose(): void {
    for (const id of [...this.#running.keys()]) this.#finish(id, "cancelled");
    this.#generator.dispose();
    this.options.prefixCache?.clear();
    this.#generator.options.speculation?.draftPrefixCache?.clear();
  }
}

/**
 * The k most likely tokens of a logprobs row, most likely first. Tokens a grammar ruled
 * out (JSON output, tool calls) have a logprob of -Infinity: they are no alternatives, and JSON
 * would write their logprob as null, which clients read as a number (Math.exp(null) is 1).
 */
function topTokens(logprobs: mx.MxArray, k: number): TokenLogprob[] {
  return mx.scope(() => {
    const ids = mx.slice(mx.argsort(mx.negative(logprobs), -1), [0], [k]);
    const values = mx.take(logprobs, ids, 0);
    const idList = ids.toArray();
    const valueList = values.toArray();
    return idList
      .map((token, i) => ({ token, logprob: valueList[i]! }))
      .filter(({ logprob }) => logprob > Number.NEGATIVE_INFINITY);
  });
}
