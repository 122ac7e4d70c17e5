// Continuous batching for one model: every running sequence decodes together in one batched
// forward pass per step, and a newcomer's prompt is prefilled in chunks between those steps
// (on a cache of its own), then joins the batch. Each sequence keeps its own sampling
// parameters, seed and logits processors.
import * as mx from "../mlx";
import { InvalidParameterError } from "../errors";
import type { MxArray } from "../mlx";
import { cacheState, freeCaches, makeCaches, type DecoderModel, type KVCache } from "../models";
import { BatchKVCache } from "../models/batch-cache";
import { quantStartBound, type KvQuantization } from "../models/cache";
import { isChannelLayout } from "../models/channel-keys";
import type { Adapter } from "../models/lora";
import { DEFAULT_KV_KEEP, RotatingKVCache } from "../models/rotating-cache";
import { droppedBy, seedCaches, type PrefixCache } from "./prefix-cache";
import { makeSampler, randomKeys, type LogitsProcessor, type SamplingParams } from "./sampling";
import {
  freeDraft,
  keepDraft,
  lookupDraft,
  modelDraft,
  rollbackDraft,
  verify,
  type Draft,
  type SpeculatingSequence,
  type SpeculationOptions,
} from "./speculative";

export interface SequenceRequest {
  promptIds: number[];
  sampling: SamplingParams;
  maxTokens: number;
  /** Applied in order to each step's logits (see logitsProcessors() in sampling.ts). */
  processors?: LogitsProcessor[];
  /** Also return each step's log-probability row (the caller frees it). */
  keepLogprobs?: boolean;
  /** A LoRA/DoRA adapter of this model, applied to this sequence alone (others in the batch may use another, or none). */
  adapter?: Adapter;
  /**
   * Whether speculative decoding (when the generator has it) may draft for this sequence; off
   * where a logits processor keeps state between steps (a grammar), which only ever sees the
   * tokens actually chosen.
   */
  speculate?: boolean;
}

export interface SequenceEvent {
  id: string;
  token: number;
  logprob: number;
  logprobs?: MxArray;
  /** Set on the sequence's last token when it reached maxTokens. */
  finished?: "length";
  /** On the first token of a speculative step: tokens drafted, and how many of them the target kept. */
  drafted?: number;
  accepted?: number;
  /**
   * Set, in place of a token (`token` is -1), where this sequence alone failed (its logits
   * processors or its sampler threw, or its prefill): it has left the batch, and the other
   * sequences go on.
   */
  error?: Error;
}

interface Sequence extends SpeculatingSequence {
  id: string;
  request: SequenceRequest;
  generated: number;
  /** The token to feed at the next decode step (when known on the host). */
  next: number;
  /** Finished or removed: its rows in a step already built are ignored. */
  done: boolean;
  /** Steps left before it drafts again, and the drafting rounds in a row that gained nothing. */
  pause: number;
  misses: number;
  /** Why its processors or sampler threw at a step: it leaves the batch when that step is read. */
  failure?: Error;
  /** The prefix cache entry its prefill started from, if any (see PrefixCache.discard). */
  seededFrom?: number;
}

/**
 * A sequence whose draft gained nothing (no lookup match, or every token rejected) skips 1, 3,
 * 7 ... steps (up to this many) before drafting again: a speculative step reads the last token on
 * the host first, so it cannot run ahead of the device as a plain step does, and free text that
 * never repeats itself would pay for that on every step.
 */
const maxSpeculationPause = 16;

/** A decode step built and queued for evaluation, not read yet. */
interface PendingStep {
  rows: Sequence[];
  /** [rows] sampled tokens and their log-probabilities, unevaluated until read. */
  tokens: MxArray;
  chosen: MxArray;
  logprobs?: MxArray[];
}

/** Sequences decoded together in one forward pass per step, with their caches. */
interface DecodeGroup {
  active: Sequence[];
  caches: BatchKVCache[];
  /** Its last step, built and queued (or on its way round the ranks of a split model), not read yet. */
  ahead?: PendingStep;
  /** When its tokens were last read (groups taking turns). */
  readAt?: number;
}

interface Prefill {
  sequence: Sequence;
  caches: KVCache[];
  done: number;
}

/**
 * A prefilled prompt whose first token is sampled from its last position, not read yet: on a
 * split model its hidden states are on their way back round the ranks. `older` counts the
 * groups' steps sent before it, still to come back first (the ring returns them in the order
 * sent).
 */
interface Joining {
  prefill: Prefill;
  first: PendingStep;
  older: number;
}

/** Prompt tokens a step prefills at most, unless told otherwise (--prefill-chunk). */
export const DEFAULT_PREFILL_CHUNK = 512;

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
  /** Each sequence's cache holds at most this many positions (--max-kv-size): its first and its latest. */
  maxKvSize?: number;
  /** Speculative decoding: drafted tokens verified in one forward pass (--draft-model, --prompt-lookup). */
  speculation?: SpeculationOptions;
}

/** Draft tokens proposed and accepted since the generator started. */
export interface SpeculationCounts {
  steps: number;
  drafted: number;
  accepted: number;
}

export class BatchGenerator {
  readonly #waiting: Sequence[] = [];
  #prefill?: Prefill;
  /** Oldest first, as sent. */
  readonly #joining: Joining[] = [];
  /**
   * One group, but on a model split across processes, one per micro-batch it keeps in flight;
   * a newcomer joins the smallest. Served in turn (#turn is next): see #stepInTurn.
   */
  readonly #groups: DecodeGroup[];
  #turn = 0;
  /** Sequences removed while stepAsync() waits: they leave after the step. */
  #stepping?: string[];
  readonly speculationCounts: SpeculationCounts = { steps: 0, drafted: 0, accepted: 0 };
  /**
   * Where groups take turns, the last step's tokens are one per sequence of one group, which
   * waited a whole turn of the groups for them: that interval (ms).
   */
  lastTurn?: { ms: number };
  /**
   * Whether the last step's prefill used its whole chunk with prompt tokens left to prefill: a
   * bigger chunk would have prefilled more, a smaller one less (the tuner moves the chunk only
   * then; a prompt shorter than the chunk is prefilled whole at any size).
   */
  chunkFilled = false;

  constructor(
    readonly model: DecoderModel,
    public options: BatchOptions = { maxBatch: 8, prefillChunk: DEFAULT_PREFILL_CHUNK },
  ) {
    const kv = options.kvQuantization;
    if (kv && model.config.headDim % kv.groupSize !== 0) {
      throw new InvalidParameterError(
        `${kv.bits === 8 ? "an" : "a"} ${kv.bits}-bit KV cache needs the head size (${model.config.headDim}) to be a multiple of its group size (${kv.groupSize}); ${
          // 32 is the smallest group size there is: a head it does not divide takes none.
          model.config.headDim % 32 === 0 ? "try --kv-group-size 32" : "this model's KV cache cannot be quantized"
        }`,
        "kv_group_size",
      );
    }
    // Split across processes, the prefix cache holds this process's layers and each other
    // process its own, told what to store, restore and evict; and so for the files on disk.
    if (model.remote && options.prefixCache) {
      options.prefixCache.mirror = model.remote;
      if (options.prefixCache.disk) options.prefixCache.disk.mirror = model.remote;
    }
    const { maxKvSize } = options;
    // A speculative step reads its tokens before the next goes out: one group, as alone.
    const groups = options.speculation ? 1 : (model.remote?.microBatches ?? 1);
    this.#groups = Array.from({ length: groups }, () => ({
      active: [],
      caches: Array.from({ length: model.numLayers }, () =>
        maxKvSize === undefined
          ? new BatchKVCache(options.kvQuantization)
          : new RotatingKVCache(maxKvSize, DEFAULT_KV_KEEP, options.kvQuantization),
      ),
    }));
  }

  get running(): number {
    return this.#groups.reduce((n, g) => n + g.active.length, 0);
  }

  get waiting(): number {
    return this.#waiting.length + (this.#prefill ? 1 : 0) + this.#joining.length;
  }

  get idle(): boolean {
    return this.running === 0 && this.waiting === 0;
  }

  add(id: string, request: SequenceRequest): void {
    if (request.promptIds.length === 0) throw new Error("empty prompt: nothing to generate from");
    const keys = randomKeys(request.sampling.seed);
    this.#waiting.push({
      id,
      request,
      sampling: request.sampling,
      keys,
      sample: makeSampler(request.sampling, keys),
      processors: request.processors ?? [],
      history: [],
      generated: 0,
      next: -1,
      done: false,
      pause: 0,
      misses: 0,
    });
  }

  /**
   * Takes out the sequences still waiting for a batch slot (their prefill not begun): nothing of
   * theirs is in the batch, so after a failed step they go on in another generator.
   */
  takeWaiting(): { id: string; request: SequenceRequest }[] {
    return this.#waiting.splice(0).map(({ id, request }) => ({ id, request }));
  }

  /** Stops a sequence wherever it is (waiting, prefilling or decoding). */
  remove(id: string): void {
    if (this.#stepping) {
      this.#stepping.push(id);
      return;
    }
    const queued = this.#waiting.findIndex((s) => s.id === id);
    if (queued >= 0) this.#waiting.splice(queued, 1);
    const p = this.#prefill;
    if (p?.sequence.id === id) {
      // The chunks prefilled so far are kept as any prompt is: asked again (a retry, a chat's
      // next turn after Ctrl-C), the prompt starts from them rather than from nothing.
      const prefilled = p.sequence.request.promptIds.slice(0, p.done);
      this.options.prefixCache?.insert(prefilled, p.caches, 0, 0, droppedBy(p.caches, 0), namespace(p.sequence));
      this.model.remote?.release(p.caches);
      freeCaches(p.caches);
      this.#prefill = undefined;
    }
    // A first token still on its way back: dropped when it comes.
    for (const j of this.#joining) if (j.prefill.sequence.id === id) j.prefill.sequence.done = true;
    for (const group of this.#groups) {
      const row = group.active.findIndex((s) => s.id === id);
      if (row >= 0) this.#dropRows(group, [row]);
    }
    // Groups in turn keep a step on its way until it comes back (see #stepInTurn).
    const [only] = this.#groups;
    if (this.#groups.length === 1 && only!.active.length === 0) this.#discardAhead(only!);
  }

  /**
   * One engine step: a chunk of a newcomer's prefill, then one decode step for the batch. Like
   * mlx-lm, the next step is built from the last step's still-unevaluated tokens and queued
   * before those are read, so MLX never waits on the host; sequences with logits processors
   * need their previous token on the host first, and then the step is read at once.
   */
  step(): SequenceEvent[] {
    try {
      const parts = this.#step();
      for (;;) {
        // Where the model's other layers are in other processes, arrive() waits for them itself.
        const part = parts.next();
        if (part.done) return part.value;
      }
    } catch (error) {
      throw this.#failed(error);
    }
  }

  /**
   * As step(), but where a step waits for the model's layers in other processes, it waits without
   * blocking the event loop (a server answers /health meanwhile). A sequence removed meanwhile
   * leaves once the step is done: the step holds its rows.
   */
  async stepAsync(): Promise<SequenceEvent[]> {
    // One process: nothing to wait for.
    if (!this.model.remote?.untilArrival) return this.step();
    const parts = this.#step();
    this.#stepping = [];
    let stepped = false;
    try {
      for (;;) {
        const part = parts.next();
        if (part.done) {
          stepped = true;
          return part.value;
        }
        await this.model.remote?.untilArrival?.();
      }
    } catch (error) {
      throw this.#failed(error);
    } finally {
      const removed = this.#stepping;
      this.#stepping = undefined;
      // After a failed step the whole batch is let go, not row by row (see dispose).
      if (stepped) for (const id of removed) this.remove(id);
    }
  }

  /**
   * A step failed: a model split across processes hears of it first; the error to throw. On one
   * process, the prefix cache entries its sequences started from are dropped (see
   * PrefixCache.discard); a split model's step fails with its ring (a rank lost) far more often
   * than with what an entry holds, and its entries and files are kept.
   */
  #failed(error: unknown): unknown {
    const remote = this.model.remote;
    if (remote) return remote.stepFailed(error as Error) ?? error;
    const held = [
      ...this.#groups.flatMap((g) => g.active),
      ...this.#joining.map((j) => j.prefill.sequence),
      ...(this.#prefill ? [this.#prefill.sequence] : []),
    ];
    const seeded = held.flatMap((s) => (s.seededFrom === undefined ? [] : [s.seededFrom]));
    if (seeded.length > 0) this.options.prefixCache?.discard(seeded, error as Error);
    return error;
  }

  /** A step, paused (yield) before each wait for the model's layers in other processes (arrive()). */
  *#step(): Generator<void, SequenceEvent[]> {
    this.chunkFilled = false;
    if (this.#groups.length > 1) return yield* this.#stepInTurn();
    const events = yield* this.#prefillChunk();
    const group = this.#groups[0]!;
    for (const s of group.active) s.pause = Math.max(0, s.pause - 1);
    if (this.#speculating) {
      // A prefill's first token goes out at once, not after the draft model has taken in the prompt.
      if (events.length > 0) return events;
      // Drafting needs every sequence's last token on the host.
      if (group.ahead) events.push(...this.#read(group, this.#takeAhead(group)));
      const room = this.#draftRoom(group);
      const drafts = group.active.map((s) => this.#draft(s, room));
      if (drafts.some((d) => d.tokens.length > 0)) {
        events.push(...this.#speculate(drafts));
        return events;
      }
    }
    const pipelined = buildsAhead(group);
    // A prompt's first token goes out now: where each step is read as soon as it is queued (a
    // grammar's group), the decode step would hold it back a step, to come out with the second.
    if (!pipelined && events.length > 0) return events;
    if (!pipelined && group.ahead) events.push(...this.#read(group, this.#takeAhead(group)));
    // The step ahead holds every sequence's last token: a step on top of it would be thrown away.
    if (this.#endsWithAhead(group)) events.push(...this.#read(group, this.#takeAhead(group)));
    else if (group.active.length > 0) {
      const next = this.#build(group);
      // One micro-batch in flight: its hidden states come back before anything else is sent.
      if (this.model.remote) {
        yield;
        this.model.remote.arrive();
      }
      mx.asyncEvaluate(next.tokens, next.chosen, ...(next.logprobs ?? []));
      if (group.ahead) events.push(...this.#read(group, this.#takeAhead(group), next));
      group.ahead = next;
      if (!pipelined) events.push(...this.#read(group, this.#takeAhead(group)));
    }
    if (group.active.length === 0) this.#discardAhead(group);
    return events;
  }

  /**
   * A model split across processes with several groups in flight: each call serves the group
   * whose step comes back next (they come back in the order sent, which is the groups' turn).
   * Its tokens are read and its next step goes out at once, so while this process samples one
   * group and runs its layers, the later processes run theirs on the other groups. A prefill
   * chunk travels between them as a micro-batch of its own. The next step is built on the
   * returned step's tokens before its hidden states are even back (the other processes are
   * computing meanwhile) and goes out once they are in and sampled, so building it costs the
   * ring no time; a group with nothing to do is skipped.
   */
  *#stepInTurn(): Generator<void, SequenceEvent[]> {
    // A prompt's first token comes back in its turn, behind the steps sent before it.
    if (this.#joining[0]?.older === 0) return yield* this.#arriveJoining();
    const events = yield* this.#prefillChunk();
    const turns = this.#groups.length;
    const busy = (g: DecodeGroup) => g.ahead !== undefined || g.active.length > 0;
    let skip = 0;
    while (skip < turns - 1 && !busy(this.#groups[(this.#turn + skip) % turns]!)) skip++;
    const group = this.#groups[(this.#turn + skip) % turns]!;
    this.#turn = (this.#turn + skip + 1) % turns;
    this.lastTurn = undefined;
    if (group.ahead) {
      const started = performance.now();
      const ahead = group.ahead;
      let next: PendingStep | undefined;
      if (buildsAhead(group) && group.active.length > 0 && !this.#endsWithAhead(group))
        next = this.model.remote!.beforeArrival(() => this.#build(group));
      yield;
      this.model.remote!.arrive(ahead.tokens, ahead.chosen, ...(ahead.logprobs ?? []));
      // Sent before every prefill still waiting (those sent after it come back after them): each counted it.
      for (const j of this.#joining) j.older--;
      events.push(...this.#read(group, this.#takeAhead(group), next));
      group.ahead = next;
      const now = performance.now();
      this.lastTurn = { ms: now - (group.readAt ?? started) };
      // A group left empty starts its next turns afresh.
      group.readAt = group.active.length > 0 ? now : undefined;
    }
    if (group.active.length > 0 && !group.ahead) group.ahead = this.#build(group);
    return events;
  }

  /** Whether every running sequence of the group reaches its maxTokens with its token in the step ahead. */
  #endsWithAhead(group: DecodeGroup): boolean {
    const rows = group.ahead?.rows;
    return (
      rows !== undefined &&
      group.active.length > 0 &&
      group.active.every((s) => rows.includes(s) && s.generated + 1 >= s.request.maxTokens)
    );
  }

  /** Speculation is on, some sequence takes it, and the batch is small enough for it to pay. */
  get #speculating(): boolean {
    const o = this.options.speculation;
    return (
      o !== undefined &&
      this.running > 0 &&
      this.running <= o.maxBatch &&
      this.#groups[0]!.active.some((s) => s.request.speculate !== false && s.pause === 0)
    );
  }

  /**
   * Draft tokens a step may verify so that each of its positions reads the KV cache as decoding
   * one token at a time would: a step that quantizes keys (the whole cache at --kv-quant-start,
   * or a group of per-channel keys whose float tail fills) does so before attention, so its
   * positions before that point would read quantized keys where one at a time reads them in float.
   */
  #draftRoom(group: DecodeGroup): number {
    const q = this.options.kvQuantization;
    const cache = group.caches[0];
    if (!q || !cache) return Infinity;
    if (!cache.quantized)
      return q.start === undefined || cache.positions >= q.start ? Infinity : q.start - cache.positions - 1;
    if (!isChannelLayout(cache.keys)) return Infinity;
    // The step's first position may fill the tail's group (one at a time, it reads it quantized too).
    const untilFull = q.groupSize - cache.keys![3]!.shape[2]!;
    return untilFull === 1 ? q.groupSize - 1 : untilFull - 2;
  }

  /**
   * Up to numDraft tokens for a sequence (at most `room`), never more than its answer has room
   * for after the target's own. None for the first token: a prompt the prefix cache holds whole
   * joins with its last token still to feed, and its first token is then sampled as a prefill
   * samples it, so a seeded answer does not depend on what the cache held.
   */
  #draft(s: Sequence, room: number): Draft {
    const o = this.options.speculation!;
    const count = Math.min(o.numDraft, s.request.maxTokens - s.generated - 1, room);
    if (s.request.speculate === false || s.pause > 0 || s.generated === 0 || count <= 0) return { tokens: [] };
    if (o.draftModel) {
      const width = this.model.config.vocabSize;
      return modelDraft(o.draftModel, s, count, {
        chunk: this.options.prefillChunk,
        width,
        endTokens: o.endTokens,
        // A rotating draft cache keeps a draft's worth beyond its window, to take back what the target rejects.
        maxKvSize: this.options.maxKvSize,
        reserve: o.numDraft,
        prefixCache: o.draftPrefixCache,
      });
    }
    const tokens = lookupDraft([...s.history, s.next], count, o.endTokens);
    if (tokens.length === 0) this.#missed(s);
    return { tokens };
  }

  #missed(s: Sequence): void {
    s.misses++;
    s.pause = Math.min(maxSpeculationPause, 2 ** s.misses);
  }

  /**
   * One speculative step: every sequence's next token and its draft (padded to the longest)
   * through the target in one forward pass, each verified on its own; the caches then take
   * back each sequence's rejected positions.
   */
  #speculate(drafts: Draft[]): SequenceEvent[] {
    const group = this.#groups[0]!;
    const batch = [...group.active];
    const width = Math.max(...drafts.map((d) => d.tokens.length)) + 1;
    const input = new Int32Array(batch.length * width);
    batch.forEach((s, b) => input.set([s.next, ...drafts[b]!.tokens], b * width));
    // An adapter's products position by position: a kept draft's logits are then those of the
    // token decoded alone, as the base model's per-row kernels give them.
    const logits = mx.scope(() =>
      adapted(
        batch,
        () => {
          const hidden = this.model.layers(this.model.embed(mx.array(input, [batch.length, width])), group.caches);
          const logits = this.model.head(hidden);
          // Split across processes: the hidden states come back round the ranks first.
          this.model.remote?.arrive();
          return logits;
        },
        { positionsApart: true },
      ),
    );
    const vocab = logits.shape[2]!;
    const verified = batch.map((s, b) =>
      mx.scope(() =>
        verify(
          s,
          mx.reshape(mx.slice(logits, [b, 0, 0], [b + 1, width, vocab]), [width, vocab]),
          drafts[b]!,
          Boolean(s.request.keepLogprobs),
        ),
      ),
    );
    logits.free();
    for (const d of drafts) d.probabilities?.free();
    const rejected = verified.map((v) => width - 1 - v.accepted);
    for (const c of group.caches) c.rollback(rejected);
    this.model.remote?.rollback(group.caches, rejected);
    const events: SequenceEvent[] = [];
    const finished: Sequence[] = [];
    batch.forEach((s, b) => {
      const v = verified[b]!;
      const drafted = drafts[b]!.tokens.length;
      const before = s.history.length;
      s.history.push(s.next, ...v.tokens.slice(0, v.accepted));
      s.next = v.tokens.at(-1)!;
      if (drafted > 0) {
        rollbackDraft(s, before, drafted, v.accepted);
        if (v.accepted === 0) this.#missed(s);
        else s.misses = 0;
        this.speculationCounts.steps++;
        this.speculationCounts.drafted += drafted;
        this.speculationCounts.accepted += v.accepted;
      }
      v.tokens.forEach((token, i) => {
        const row = v.rows?.[i];
        if (s.generated >= s.request.maxTokens) return row?.free();
        const event: SequenceEvent = { id: s.id, token, logprob: v.logprobs[i]!, logprobs: row };
        if (i === 0 && drafted > 0) Object.assign(event, { drafted, accepted: v.accepted });
        s.generated++;
        if (s.generated >= s.request.maxTokens) {
          event.finished = "length";
          finished.push(s);
        }
        events.push(event);
      });
    });
    if (finished.length > 0)
      this.#dropRows(
        group,
        finished.map((s) => group.active.indexOf(s)),
      );
    return events;
  }

  #takeAhead(group: DecodeGroup): PendingStep {
    const ahead = group.ahead!;
    group.ahead = undefined;
    return ahead;
  }

  #discardAhead(group: DecodeGroup): void {
    const ahead = group.ahead;
    if (!ahead) return;
    group.ahead = undefined;
    freeStep(ahead);
  }

  /**
   * Prefills newcomers between two decode steps: up to `prefillChunk` prompt tokens in all, for
   * as many sequences as that covers and the batch has room for (a prompt the prefix cache
   * holds costs none of it). A prompt's last chunk also samples its first token, from the last
   * position (one pass over the weights, not a second one in the batch's next step), unless that
   * token is all that is left of it. Those whose prompt is done join the batch together, so a
   * burst of requests joins in one step and one copy of the batch's caches instead of one of
   * each per newcomer.
   */
  *#prefillChunk(): Generator<void, SequenceEvent[]> {
    let budget = this.options.prefillChunk;
    // Prompts whose last token is all that is left: they join with it as their next input.
    const oneLeft: Prefill[] = [];
    const failed: SequenceEvent[] = [];
    while (budget > 0) {
      const p = (this.#prefill ??= this.#startPrefill(oneLeft.length));
      if (!p) break;
      const prompt = p.sequence.request.promptIds;
      if (p.done === prompt.length - 1) {
        // All but the last token are in the cache (stored, or an earlier chunk's): that token
        // rides the batch's next step, whose pass over the weights is made anyway, rather than
        // taking a pass of its own.
        this.#prefill = undefined;
        const held = prompt.slice(0, -1);
        this.options.prefixCache?.insert(held, p.caches, 0, 0, droppedBy(p.caches, 0), namespace(p.sequence));
        p.sequence.history = held;
        p.sequence.next = prompt.at(-1)!;
        oneLeft.push(p);
        continue;
      }
      let part: { computed: number; first?: PendingStep };
      try {
        part = this.#prefillPart(p, budget);
      } catch (error) {
        // On one process a prefill computes on caches of its own: its failure is its sequence's.
        if (this.model.remote) throw error;
        failed.push(this.#prefillFailed(p, error as Error));
        continue;
      }
      const { computed, first } = part;
      budget -= computed;
      // A chunk cut at --kv-quant-start (quantStartBound) leaves budget for the rest of its prompt.
      if (!first && computed > 0 && budget > 0) continue;
      if (!first) break;
      this.#prefill = undefined;
      this.options.prefixCache?.insert(prompt, p.caches, 0, 0, droppedBy(p.caches, 0), namespace(p.sequence));
      // Groups in turn: their steps sent before this chunk come back first.
      const older = this.#groups.length > 1 ? this.#groups.filter((g) => g.ahead).length : 0;
      this.#joining.push({ prefill: p, first, older });
    }
    this.chunkFilled = budget <= 0 && (this.#prefill !== undefined || this.#waiting.length > 0);
    return [...failed, ...(yield* this.#arriveJoining(oneLeft))];
  }

  /**
   * A prefill that threw (a prefix it started from that its caches cannot take, a prompt too
   * large to compute): its sequence alone fails, as one whose processors threw does, and the
   * batch decodes on. The prefix it started from is dropped (see PrefixCache.discard).
   */
  #prefillFailed(p: Prefill, error: Error): SequenceEvent {
    this.#prefill = undefined;
    freeCaches(p.caches);
    const s = p.sequence;
    s.done = true;
    if (s.seededFrom !== undefined) this.options.prefixCache?.discard([s.seededFrom], error);
    return { id: s.id, token: -1, logprob: Number.NaN, error };
  }

  /**
   * The first tokens of the prefills whose turn it is (nothing sent before them is still on its
   * way), read in the order sent; their sequences join the batch together, with `joined`.
   */
  *#arriveJoining(joined: Prefill[] = []): Generator<void, SequenceEvent[]> {
    const events: SequenceEvent[] = [];
    while (this.#joining[0]?.older === 0) {
      const { prefill: p, first } = this.#joining.shift()!;
      if (this.model.remote) {
        yield;
        this.model.remote.arrive(first.tokens, first.chosen, ...(first.logprobs ?? []));
      }
      events.push(...readFirst(p.sequence, first));
      // Asked for one token, or removed meanwhile: it never joins.
      if (p.sequence.done) {
        this.model.remote?.release(p.caches);
        freeCaches(p.caches);
      } else joined.push(p);
    }
    this.#join(joined);
    return events;
  }

  /** The next waiting sequence's prefill, from the longest prefix stored; none when the batch is full. */
  #startPrefill(alsoJoining: number): Prefill | undefined {
    const taken = this.running + this.#joining.length + alsoJoining;
    if (this.#waiting.length === 0 || taken >= this.options.maxBatch) return undefined;
    const sequence = this.#waiting.shift()!;
    const prompt = sequence.request.promptIds;
    // Full caches: the batch and the prefix cache copy every position out of them.
    const caches = makeCaches(this.model, {
      windowed: false,
      quantization: this.options.kvQuantization,
      maxKvSize: this.options.maxKvSize,
      joining: true,
    });
    // Start from the longest stored prefix; the last prompt token is always computed anew (its logits give the first token).
    const match = this.options.prefixCache?.lookup(prompt, prompt.length - 1, namespace(sequence));
    if (match) {
      sequence.seededFrom = match.id;
      seedCaches(caches, match.keys, match.values, match.length, match.dropped);
      this.model.remote?.restorePrefix(match.id, caches, match.length, match.dropped);
    }
    this.options.onStart?.(sequence.id, match?.length ?? 0);
    return { sequence, caches, done: match?.length ?? 0 };
  }

  /**
   * Up to `budget` more of a prefill's prompt into its caches: the tokens computed, and where
   * the chunk ends the prompt, its first token sampled from the last position (unevaluated on a
   * split model: its hidden states come back round the ranks, see #arriveJoining).
   */
  #prefillPart(p: Prefill, budget: number): { computed: number; first?: PendingStep } {
    const s = p.sequence;
    const prompt = s.request.promptIds;
    const end = quantStartBound(this.options.kvQuantization, p.done, Math.min(prompt.length, p.done + budget));
    if (end <= p.done) return { computed: 0 };
    const chunk = prompt.slice(p.done, end);
    const last = end === prompt.length;
    if (last) this.model.remote?.returnLast(p.caches);
    // Only the last position's hidden state is used: the rest, freed with the scope, lets go of
    // the last layer's attention graph and so of that layer's cache buffers, which the next write
    // then updates in place rather than copying (the next chunk's, or the first decode step's).
    const first = mx.scope(() =>
      adapted([s], () => {
        const hidden = this.model.layers(
          this.model.embed(mx.array(Int32Array.from(chunk), [1, chunk.length])),
          p.caches,
        );
        if (!last) return undefined;
        // The logits processors see the whole prompt, as they would in a decode step.
        s.history = [...prompt];
        const length = hidden.shape[1]!;
        const final = mx.slice(hidden, [0, length - 1, 0], [1, length, hidden.shape[2]!]);
        return this.#sample([s], mx.reshape(this.model.head(final), [1, -1]));
      }),
    );
    // On a split model the first token waits for the hidden states to come back (#arriveJoining).
    const sampled = first && !this.model.remote ? [first.tokens, first.chosen, ...(first.logprobs ?? [])] : [];
    mx.evaluate(...cacheState(p.caches), ...sampled);
    p.done = end;
    return { computed: chunk.length, first };
  }

  /** Prefilled sequences join the smallest groups (one group but on a model split across processes). */
  #join(prefills: Prefill[]): void {
    const joins = new Map<DecodeGroup, Prefill[]>();
    for (const p of prefills) {
      const size = (g: DecodeGroup) => g.active.length + (joins.get(g)?.length ?? 0);
      const group = this.#groups.reduce((a, b) => (size(b) < size(a) ? b : a));
      joins.set(group, [...(joins.get(group) ?? []), p]);
    }
    for (const [group, joined] of joins) {
      group.caches.forEach((batch, layer) => batch.extend(...joined.map((p) => p.caches[layer]!)));
      for (const p of joined) {
        this.model.remote?.extend(p.caches, group.caches);
        freeCaches(p.caches);
        group.active.push(p.sequence);
      }
    }
  }

  /** Builds one decode step for a group's sequences; inputs come from the step ahead where it has them. */
  #build(group: DecodeGroup): PendingStep {
    const batch = [...group.active];
    const ahead = group.ahead;
    const fromAhead = batch.map((s) => (ahead ? ahead.rows.indexOf(s) : -1));
    // Tokens known on the host are fed now; those still in the step ahead when it is read.
    batch.forEach((s, b) => {
      if (fromAhead[b]! < 0) s.history.push(s.next);
    });
    // The steady state of decoding: every row's input is the step ahead's token, in its order.
    const allAhead = ahead !== undefined && ahead.rows.length === batch.length && fromAhead.every((i, b) => i === b);
    return mx.scope(() => {
      let input: MxArray;
      if (allAhead) input = ahead.tokens;
      else {
        input = mx.array(Uint32Array.from(batch, (s, b) => (fromAhead[b]! < 0 ? s.next : 0)));
        if (ahead && fromAhead.some((i) => i >= 0)) {
          const previous = ahead.rows.length;
          const pick = mx.array(Int32Array.from(fromAhead, (i, b) => (i >= 0 ? i : previous + b)));
          input = mx.take(mx.concatenate([mx.astype(ahead.tokens, mx.Dtype.uint32), input], 0), pick, 0);
        }
      }
      const logits = adapted(batch, () => {
        const hidden = this.model.layers(this.model.embed(mx.reshape(input, [batch.length, 1])), group.caches);
        return mx.reshape(this.model.head(hidden), [batch.length, -1]);
      });
      // A row's input still in the step ahead is its history's latest token, not yet on the host.
      const pending = batch.map((_, b) => (fromAhead[b]! >= 0 ? mx.slice(input, [b], [b + 1]) : undefined));
      return this.#sample(batch, logits, pending);
    });
  }

  /**
   * Each sequence's next token from its row of `logits` [rows, vocab], by its own sampling and
   * processors; `pending` holds each row's latest token where it is not yet in its history.
   */
  #sample(batch: Sequence[], logits: MxArray, pending: (MxArray | undefined)[] = []): PendingStep {
    const vocab = logits.shape[1]!;
    const wantLogprobs = batch.some((s) => s.request.keepLogprobs);
    // Every row greedy and unprocessed (the common case when serving): the rows are sampled
    // together, a few graph nodes for the batch instead of a few per row, each row's values
    // computed as alone.
    if (batch.every((s) => s.processors.length === 0 && s.sampling.temperature === 0)) {
      if (!wantLogprobs) return { rows: batch, ...mx.fast.greedyTokens(logits), logprobs: undefined };
      const logprobs = mx.subtract(logits, mx.logsumexp(logits, -1, true));
      const tokens = mx.argmax(logprobs, -1);
      return {
        rows: batch,
        tokens: mx.astype(tokens, mx.Dtype.uint32),
        chosen: mx.reshape(mx.takeAlongAxis(logprobs, mx.reshape(tokens, [-1, 1]), -1), [-1]),
        logprobs: batch.map((_, b) => mx.reshape(mx.slice(logprobs, [b, 0], [b + 1, vocab]), [vocab])),
      };
    }
    const rows = batch.map((s, b) => {
      const raw = mx.slice(logits, [b, 0], [b + 1, vocab]);
      try {
        let row = raw;
        for (const process of s.processors) row = process(s.history, row, pending[b]);
        return sampledRow(row, s.sample);
      } catch (error) {
        // One sequence's failure (a grammar that refuses the token its row drew) is its own: its
        // row stands in with the unprocessed logits' greedy token, and it leaves the batch when
        // the step is read, as a removed sequence does, rather than failing every other one.
        s.failure = error as Error;
        return sampledRow(raw, (logprobs) => mx.argmax(logprobs, -1));
      }
    });
    return {
      rows: batch,
      tokens: joined(rows.map((r) => mx.astype(r.token, mx.Dtype.uint32))),
      chosen: joined(rows.map((r) => r.chosen)),
      logprobs: wantLogprobs ? rows.map((r) => mx.squeeze(r.logprobs, 0)) : undefined,
    };
  }

  /** Reads a step's tokens into events; `fedBy` is the step already built on top of it, if any. */
  #read(group: DecodeGroup, step: PendingStep, fedBy?: PendingStep): SequenceEvent[] {
    const tokens = step.tokens.toArray();
    const chosen = step.chosen.toArray();
    const events: SequenceEvent[] = [];
    const finished: Sequence[] = [];
    step.rows.forEach((s, b) => {
      const event = tokenEvent(s, tokens[b]!, chosen[b]!, step.logprobs?.[b]);
      if (!event) return;
      // The step built on top of this one has already put this token in the cache.
      if (fedBy?.rows.includes(s) && !event.error) s.history.push(event.token);
      if (event.finished || event.error) finished.push(s);
      events.push(event);
    });
    step.tokens.free();
    step.chosen.free();
    if (finished.length > 0)
      this.#dropRows(
        group,
        finished.map((s) => group.active.indexOf(s)).filter((i) => i >= 0),
      );
    return events;
  }

  #dropRows(group: DecodeGroup, rows: number[]): void {
    for (const row of rows) {
      group.active[row]!.done = true;
      keepDraft(group.active[row]!, this.options.speculation?.draftPrefixCache);
      freeDraft(group.active[row]!);
    }
    // What a leaving sequence computed (its prompt and answer) may start a follow-up request.
    const cache = this.options.prefixCache;
    if (cache)
      for (const row of rows) {
        const s = group.active[row]!;
        const skip = group.caches[0]!.leftPadding[row];
        cache.insert(s.history, group.caches, row, skip, droppedBy(group.caches, row), namespace(s));
      }
    const keep = group.active.map((_, i) => i).filter((i) => !rows.includes(i));
    group.active = keep.map((i) => group.active[i]!);
    for (const c of group.caches) c.keepRows(keep);
    this.model.remote?.keepRows(group.caches, keep);
  }

  dispose(): void {
    for (const group of this.#groups) {
      // A step on its way back is received all the same: the next receive would get its bytes.
      if (this.#groups.length > 1 && group.ahead) this.model.remote!.arrive();
      this.#discardAhead(group);
      for (const s of group.active) freeDraft(s);
    }
    for (const j of this.#joining) {
      // Their first tokens' hidden states are on their way back as well.
      this.model.remote?.arrive();
      freeStep(j.first);
    }
    for (const p of [this.#prefill, ...this.#joining.map((j) => j.prefill)]) {
      if (!p) continue;
      this.model.remote?.release(p.caches);
      freeCaches(p.caches);
    }
    for (const group of this.#groups) {
      this.model.remote?.release(group.caches);
      for (const c of group.caches) c.free();
    }
  }
}

const freeStep = (step: PendingStep): void => {
  for (const t of [step.tokens, step.chosen, ...(step.logprobs ?? [])]) t.free();
};

/**
 * A sampled token as its sequence's event; undefined where the sequence was removed meanwhile,
 * and its failure where its processors or sampler threw (the token only stood in for its row).
 */
function tokenEvent(s: Sequence, token: number, logprob: number, row?: MxArray): SequenceEvent | undefined {
  if (s.done || s.failure) row?.free();
  if (s.done) return undefined;
  if (s.failure) return { id: s.id, token: -1, logprob: Number.NaN, error: s.failure };
  const event: SequenceEvent = { id: s.id, token, logprob };
  if (row) {
    if (s.request.keepLogprobs) event.logprobs = row;
    else row.free();
  }
  s.generated++;
  s.next = token;
  if (s.generated >= s.request.maxTokens) event.finished = "length";
  return event;
}

/** A sequence's first token, sampled by its prefill; a sequence it finishes is done, not joining the batch. */
function readFirst(s: Sequence, first: PendingStep): SequenceEvent[] {
  const [token] = first.tokens.toArray();
  const [logprob] = first.chosen.toArray();
  first.tokens.free();
  first.chosen.free();
  const event = tokenEvent(s, token!, logprob!, first.logprobs?.[0]);
  if (!event) return [];
  if (event.finished || event.error) s.done = true;
  return [event];
}

/**
 * Runs a forward pass over `rows` with each row's adapter applied to it alone (`positionsApart`:
 * and to each position alone, as LoraLayers.run says).
 */
function adapted<T>(rows: Sequence[], forward: () => T, o: { positionsApart?: boolean } = {}): T {
  const lora = rows.find((s) => s.request.adapter)?.request.adapter!.base;
  return lora
    ? lora.run(
        rows.map((s) => s.request.adapter),
        forward,
        o,
      )
    : forward();
}

/**
 * Whether a group's next step can be built on the step ahead's tokens before they are read: not
 * when a logits processor must see each sequence's history, last token included, on the host
 * (a grammar's); the sampling's penalties and logit_bias take it lazily.
 */
const buildsAhead = (group: DecodeGroup): boolean =>
  group.active.every((s) => s.processors.every((process) => process.takesPending));

/** Where a sequence's keys and values go in the prefix cache: the base model's, or its adapter's. */
const namespace = (s: Sequence): number => s.request.adapter?.id ?? 0;

/** A row's token drawn by `sample` from its (processed) logits [1, vocab], with its log-probabilities. */
function sampledRow(row: MxArray, sample: (logprobs: MxArray) => MxArray) {
  const logprobs = mx.subtract(row, mx.logsumexp(row, undefined, true));
  const token = sample(logprobs);
  return { token, chosen: mx.reshape(mx.takeAlongAxis(logprobs, mx.reshape(token, [1, 1]), -1), [1]), logprobs };
}

/** The rows as one array (a batch of one needs no copy). */
const joined = (rows: MxArray[]): MxArray => (rows.length === 1 ? rows[0]! : mx.concatenate(rows, 0));

/**
 * One sequence through a BatchGenerator of its own, token by token, for exactly `maxTokens`
 * tokens (EOS does not stop it): for benchmarks and tests of the token loop itself.
 */
export function* generateTokens(
  model: DecoderModel,
  request: SequenceRequest,
  kvQuantization?: KvQuantization,
  options: Pick<BatchOptions, "speculation" | "maxKvSize"> = {},
): Generator<SequenceEvent> {
  for (const events of generateSteps(model, request, kvQuantization, options)) yield* events;
}

/** generateTokens step by step: each step's events, none for a chunk of the prompt's prefill. */
export function* generateSteps(
  model: DecoderModel,
  request: SequenceRequest,
  kvQuantization?: KvQuantization,
  options: Pick<BatchOptions, "speculation" | "maxKvSize"> = {},
): Generator<SequenceEvent[]> {
  const generator = new BatchGenerator(model, { maxBatch: 1, prefillChunk: 2048, kvQuantization, ...options });
  try {
    generator.add("0", request);
    while (!generator.idle) {
      const events = generator.step();
      const failed = events.find((e) => e.error);
      if (failed) throw failed.error;
      yield events;
    }
  } finally {
    generator.dispose();
  }
}
