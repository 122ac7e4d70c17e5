// Continuous batching for one model: every running sequence decodes together in one batched
// forward pass per step, and a newcomer's prompt is prefilled in chunks between those steps
// (on a cache of its own), then joins the batch. Each sequence keeps its own sampling
// parameters, seed and logits processors.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { cacheState, freeCaches, makeCaches, type DecoderModel, type KVCache } from "../models";
import { BatchKVCache } from "../models/batch-cache";
import type { KvQuantization } from "../models/cache";
import type { PrefixCache } from "./prefix-cache";
import { makeSampler, type LogitsProcessor, type Sampler, type SamplingParams } from "./sampling";

export interface SequenceRequest {
  promptIds: number[];
  sampling: SamplingParams;
  maxTokens: number;
  /** Applied in order to each step's logits (see logitsProcessors() in sampling.ts). */
  processors?: LogitsProcessor[];
  /** Also return each step's log-probability row (the caller frees it). */
  keepLogprobs?: boolean;
}

export interface SequenceEvent {
  id: string;
  token: number;
  logprob: number;
  logprobs?: MxArray;
  /** Set on the sequence's last token when it reached maxTokens. */
  finished?: "length";
}

interface Sequence {
  id: string;
  request: SequenceRequest;
  sample: Sampler;
  processors: LogitsProcessor[];
  history: number[];
  generated: number;
  /** The token to feed at the next decode step (when known on the host). */
  next: number;
  /** Finished or removed: its rows in a step already built are ignored. */
  done: boolean;
}

/** A decode step built and queued for evaluation, not read yet. */
interface PendingStep {
  rows: Sequence[];
  /** [rows] sampled tokens and their log-probabilities, unevaluated until read. */
  tokens: MxArray;
  chosen: MxArray;
  logprobs?: MxArray[];
}

interface Prefill {
  sequence: Sequence;
  caches: KVCache[];
  done: number;
}

export interface BatchOptions {
  /** Most sequences decoding at once; newcomers wait beyond it. */
  maxBatch: number;
  /** Prompt tokens prefilled per engine step (between two decode steps). */
  prefillChunk: number;
  /** Called when a sequence leaves the queue and its prefill begins, with the prompt tokens reused. */
  onStart?: (id: string, cachedTokens: number) => void;
  /** Keys and values of earlier prompts and conversations, reused across sequences. */
  prefixCache?: PrefixCache;
  /** Keys and values stored quantized (--kv-bits); float when absent. */
  kvQuantization?: KvQuantization;
}

export class BatchGenerator {
  readonly #waiting: Sequence[] = [];
  #prefill?: Prefill;
  #active: Sequence[] = [];
  #ahead?: PendingStep;
  readonly #caches: BatchKVCache[];

  constructor(
    readonly model: DecoderModel,
    public options: BatchOptions = { maxBatch: 8, prefillChunk: 512 },
  ) {
    const kv = options.kvQuantization;
    if (kv && model.config.headDim % kv.groupSize !== 0) {
      throw new Error(
        `a ${kv.bits}-bit KV cache needs the head size (${model.config.headDim}) to be a multiple of its group size (${kv.groupSize}); try --kv-group-size 32`,
      );
    }
    // The prefix cache would hold only this process's layers of a model split across processes.
    if (model.remote) this.options = { ...options, prefixCache: undefined };
    this.#caches = Array.from({ length: model.numLayers }, () => new BatchKVCache(options.kvQuantization));
  }

  get running(): number {
    return this.#active.length;
  }

  get waiting(): number {
    return this.#waiting.length + (this.#prefill ? 1 : 0);
  }

  get idle(): boolean {
    return this.running === 0 && this.waiting === 0;
  }

  add(id: string, request: SequenceRequest): void {
    if (request.promptIds.length === 0) throw new Error("empty prompt: nothing to generate from");
    this.#waiting.push({
      id,
      request,
      sample: makeSampler(request.sampling),
      processors: request.processors ?? [],
      history: [],
      generated: 0,
      next: -1,
      done: false,
    });
  }

  /** Stops a sequence wherever it is (waiting, prefilling or decoding). */
  remove(id: string): void {
    const queued = this.#waiting.findIndex((s) => s.id === id);
    if (queued >= 0) this.#waiting.splice(queued, 1);
    if (this.#prefill?.sequence.id === id) {
      this.model.remote?.release(this.#prefill.caches);
      freeCaches(this.#prefill.caches);
      this.#prefill = undefined;
    }
    const row = this.#active.findIndex((s) => s.id === id);
    if (row >= 0) this.#dropRows([row]);
    if (this.#active.length === 0) this.#discardAhead();
  }

  /**
   * One engine step: a chunk of a newcomer's prefill, then one decode step for the batch. Like
   * mlx-lm, the next step is built from the last step's still-unevaluated tokens and queued
   * before those are read, so MLX never waits on the host; sequences with logits processors
   * need their previous token on the host first, and then the step is read at once.
   */
  step(): SequenceEvent[] {
    this.#prefillChunk();
    const events: SequenceEvent[] = [];
    const pipelined = this.#active.every((s) => s.processors.length === 0);
    if (!pipelined && this.#ahead) events.push(...this.#read(this.#takeAhead()));
    if (this.#active.length > 0) {
      const next = this.#build();
      mx.asyncEvaluate(next.tokens, next.chosen, ...(next.logprobs ?? []));
      if (this.#ahead) events.push(...this.#read(this.#takeAhead(), next));
      this.#ahead = next;
      if (!pipelined) events.push(...this.#read(this.#takeAhead()));
    }
    if (this.#active.length === 0) this.#discardAhead();
    return events;
  }

  #takeAhead(): PendingStep {
    const ahead = this.#ahead!;
    this.#ahead = undefined;
    return ahead;
  }

  #discardAhead(): void {
    const ahead = this.#ahead;
    if (!ahead) return;
    this.#ahead = undefined;
    for (const t of [ahead.tokens, ahead.chosen, ...(ahead.logprobs ?? [])]) t.free();
  }

  #prefillChunk(): void {
    if (!this.#prefill) {
      if (this.#waiting.length === 0 || this.#active.length >= this.options.maxBatch) return;
      const sequence = this.#waiting.shift()!;
      const prompt = sequence.request.promptIds;
      // Full caches: the batch and the prefix cache copy every position out of them.
      const caches = makeCaches(this.model, { windowed: false, quantization: this.options.kvQuantization });
      // Start from the longest stored prefix; the last prompt token is always computed anew.
      const match = this.options.prefixCache?.lookup(prompt, prompt.length - 1);
      if (match) caches.forEach((c, layer) => c.seed(match.keys[layer]!, match.values[layer]!, match.length));
      this.#prefill = { sequence, caches, done: match?.length ?? 0 };
      this.options.onStart?.(sequence.id, match?.length ?? 0);
    }
    const p = this.#prefill;
    const prompt = p.sequence.request.promptIds;
    // Everything but the last prompt token goes into the cache; the last one is the first
    // decode input, so its logits come from the batched step.
    const end = Math.min(prompt.length - 1, p.done + this.options.prefillChunk);
    if (end > p.done) {
      const chunk = prompt.slice(p.done, end);
      mx.scope(() => {
        this.model.layers(this.model.embed(mx.array(Int32Array.from(chunk), [1, chunk.length])), p.caches);
      });
      mx.evaluate(...cacheState(p.caches));
      p.done = end;
    }
    if (p.done < prompt.length - 1) return;
    this.options.prefixCache?.insert(prompt.slice(0, -1), p.caches);
    this.#caches.forEach((batch, layer) => batch.extend(p.caches[layer]!));
    this.model.remote?.extend(p.caches, this.#caches);
    freeCaches(p.caches);
    p.sequence.history = prompt.slice(0, -1);
    p.sequence.next = prompt.at(-1)!;
    this.#active.push(p.sequence);
    this.#prefill = undefined;
  }

  /** Builds one decode step for the active sequences; inputs come from the step ahead where it has them. */
  #build(): PendingStep {
    const batch = [...this.#active];
    const ahead = this.#ahead;
    const fromAhead = batch.map((s) => (ahead ? ahead.rows.indexOf(s) : -1));
    // Tokens known on the host are fed now; those still in the step ahead when it is read.
    batch.forEach((s, b) => {
      if (fromAhead[b]! < 0) s.history.push(s.next);
    });
    const wantLogprobs = batch.some((s) => s.request.keepLogprobs);
    return mx.scope(() => {
      const host = mx.array(Uint32Array.from(batch, (s, b) => (fromAhead[b]! < 0 ? s.next : 0)));
      let input = host;
      if (ahead && fromAhead.some((i) => i >= 0)) {
        const previous = ahead.rows.length;
        const pick = mx.array(Int32Array.from(fromAhead, (i, b) => (i >= 0 ? i : previous + b)));
        input = mx.take(mx.concatenate([mx.astype(ahead.tokens, mx.Dtype.uint32), host], 0), pick, 0);
      }
      const hidden = this.model.layers(this.model.embed(mx.reshape(input, [batch.length, 1])), this.#caches);
      const logits = mx.reshape(this.model.head(hidden), [batch.length, -1]);
      const rows = batch.map((s, b) => {
        let row = mx.slice(logits, [b, 0], [b + 1, logits.shape[1]!]);
        for (const process of s.processors) row = process(s.history, row);
        const logprobs = mx.subtract(row, mx.logsumexp(row, undefined, true));
        const token = s.sample(logprobs);
        return { token, chosen: mx.reshape(mx.takeAlongAxis(logprobs, mx.reshape(token, [1, 1]), -1), [1]), logprobs };
      });
      return {
        rows: batch,
        tokens: mx.concatenate(
          rows.map((r) => mx.astype(r.token, mx.Dtype.uint32)),
          0,
        ),
        chosen: mx.concatenate(
          rows.map((r) => r.chosen),
          0,
        ),
        logprobs: wantLogprobs ? rows.map((r) => mx.squeeze(r.logprobs, 0)) : undefined,
      };
    });
  }

  /** Reads a step's tokens into events; `fedBy` is the step already built on top of it, if any. */
  #read(step: PendingStep, fedBy?: PendingStep): SequenceEvent[] {
    const tokens = step.tokens.toArray();
    const chosen = step.chosen.toArray();
    const events: SequenceEvent[] = [];
    const finished: Sequence[] = [];
    step.rows.forEach((s, b) => {
      const row = step.logprobs?.[b];
      if (s.done) return row?.free();
      const token = tokens[b]!;
      const event: SequenceEvent = { id: s.id, token, logprob: chosen[b]! };
      if (row) {
        if (s.request.keepLogprobs) event.logprobs = row;
        else row.free();
      }
      s.generated++;
      s.next = token;
      // The step built on top of this one has already put this token in the cache.
      if (fedBy?.rows.includes(s)) s.history.push(token);
      if (s.generated >= s.request.maxTokens) {
        event.finished = "length";
        finished.push(s);
      }
      events.push(event);
    });
    step.tokens.free();
    step.chosen.free();
    if (finished.length > 0) this.#dropRows(finished.map((s) => this.#active.indexOf(s)).filter((i) => i >= 0));
    return events;
  }

  #dropRows(rows: number[]): void {
    for (const row of rows) this.#active[row]!.done = true;
    // What a leaving sequence computed (its prompt and answer) may start a follow-up request.
    const cache = this.options.prefixCache;
    if (cache)
      for (const row of rows)
        cache.insert(this.#active[row]!.history, this.#caches, row, this.#caches[0]!.leftPadding[row]);
    const keep = this.#active.map((_, i) => i).filter((i) => !rows.includes(i));
    this.#active = keep.map((i) => this.#active[i]!);
    for (const c of this.#caches) c.keepRows(keep);
    this.model.remote?.keepRows(this.#caches, keep);
  }

  dispose(): void {
    this.#discardAhead();
    if (this.#prefill) {
      this.model.remote?.release(this.#prefill.caches);
      freeCaches(this.#prefill.caches);
    }
    this.model.remote?.release(this.#caches);
    for (const c of this.#caches) c.free();
  }
}

/**
 * One sequence through a BatchGenerator of its own, token by token, for exactly `maxTokens`
 * tokens (EOS does not stop it): for benchmarks and tests of the token loop itself.
 */
export function* generateTokens(
  model: DecoderModel,
  request: SequenceRequest,
  kvQuantization?: KvQuantization,
): Generator<SequenceEvent> {
  const generator = new BatchGenerator(model, { maxBatch: 1, prefillChunk: 2048, kvQuantization });
  try {
    generator.add("0", request);
    while (!generator.idle) yield* generator.step();
  } finally {
    generator.dispose();
  }
}
