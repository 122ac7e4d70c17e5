// Continuous batching for one model: every running sequence decodes together in one batched
// forward pass per step, and a newcomer's prompt is prefilled in chunks between those steps
// (on a cache of its own), then joins the batch. Each sequence keeps its own sampling
// parameters, seed and logits processors.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { cacheState, freeCaches, makeCaches, type DecoderModel, type KVCache } from "../models";
import { BatchKVCache } from "../models/batch-cache";
import type { PrefixCache } from "./prefix-cache";
import { makeSampler, repetitionPenalty, type LogitsProcessor, type Sampler, type SamplingParams } from "./sampling";

export interface SequenceRequest {
  promptIds: number[];
  sampling: SamplingParams;
  maxTokens: number;
  logitsProcessors?: LogitsProcessor[];
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
  /** The token to feed at the next decode step. */
  next: number;
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
}

export class BatchGenerator {
  readonly #waiting: Sequence[] = [];
  #prefill?: Prefill;
  #active: Sequence[] = [];
  readonly #caches: BatchKVCache[];

  constructor(
    readonly model: DecoderModel,
    public options: BatchOptions = { maxBatch: 8, prefillChunk: 512 },
  ) {
    this.#caches = Array.from({ length: model.numLayers }, () => new BatchKVCache());
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
    const processors = [...(request.sampling.repetitionPenalty !== 1 ? [repetitionPenalty(request.sampling)] : []), ...(request.logitsProcessors ?? [])];
    this.#waiting.push({ id, request, sample: makeSampler(request.sampling), processors, history: [], generated: 0, next: -1 });
  }

  /** Stops a sequence wherever it is (waiting, prefilling or decoding). */
  remove(id: string): void {
    const queued = this.#waiting.findIndex((s) => s.id === id);
    if (queued >= 0) this.#waiting.splice(queued, 1);
    if (this.#prefill?.sequence.id === id) {
      freeCaches(this.#prefill.caches);
      this.#prefill = undefined;
    }
    const row = this.#active.findIndex((s) => s.id === id);
    if (row >= 0) this.#dropRows([row]);
  }

  /** One engine step: a chunk of a newcomer's prefill, then one decode step for the batch. */
  step(): SequenceEvent[] {
    this.#prefillChunk();
    return this.#active.length > 0 ? this.#decode() : [];
  }

  #prefillChunk(): void {
    if (!this.#prefill) {
      if (this.#waiting.length === 0 || this.#active.length >= this.options.maxBatch) return;
      const sequence = this.#waiting.shift()!;
      const prompt = sequence.request.promptIds;
      const caches = makeCaches(this.model);
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
    freeCaches(p.caches);
    p.sequence.history = prompt.slice(0, -1);
    p.sequence.next = prompt.at(-1)!;
    this.#active.push(p.sequence);
    this.#prefill = undefined;
  }

  #decode(): SequenceEvent[] {
    const batch = this.#active;
    for (const s of batch) s.history.push(s.next);
    const rows = mx.scope(() => {
      const input = mx.array(Int32Array.from(batch, (s) => s.next), [batch.length, 1]);
      const hidden = this.model.layers(this.model.embed(input), this.#caches);
      const logits = mx.reshape(this.model.head(hidden), [batch.length, -1]);
      return batch.map((s, b) => {
        let row = mx.slice(logits, [b, 0], [b + 1, logits.shape[1]!]);
        for (const process of s.processors) row = process(s.history, row);
        const logprobs = mx.subtract(row, mx.logsumexp(row, undefined, true));
        const token = s.sample(logprobs);
        return { token, chosen: mx.takeAlongAxis(logprobs, mx.reshape(token, [1, 1]), -1), logprobs };
      });
    });
    mx.evaluate(...rows.flatMap((r) => [r.token, r.chosen]), ...this.#caches.flatMap((c) => c.state));
    const events: SequenceEvent[] = [];
    const finished: number[] = [];
    batch.forEach((s, b) => {
      const r = rows[b]!;
      const token = r.token.item();
      const event: SequenceEvent = { id: s.id, token, logprob: r.chosen.item() };
      r.token.free();
      r.chosen.free();
      if (s.request.keepLogprobs) event.logprobs = mx.squeeze(r.logprobs, 0);
      r.logprobs.free();
      s.generated++;
      s.next = token;
      if (s.generated >= s.request.maxTokens) {
        event.finished = "length";
        finished.push(b);
      }
      events.push(event);
    });
    if (finished.length > 0) this.#dropRows(finished);
    return events;
  }

  #dropRows(rows: number[]): void {
    // What a leaving sequence computed (its prompt and answer) may start a follow-up request.
    const cache = this.options.prefixCache;
    if (cache) for (const row of rows) cache.insert(this.#active[row]!.history, this.#caches, row, this.#caches[0]!.leftPadding[row]);
    const keep = this.#active.map((_, i) => i).filter((i) => !rows.includes(i));
    this.#active = keep.map((i) => this.#active[i]!);
    for (const c of this.#caches) c.keepRows(keep);
  }

  dispose(): void {
    if (this.#prefill) freeCaches(this.#prefill.caches);
    for (const c of this.#caches) c.free();
  }
}
