// What every architecture provides: a decoder whose forward pass can run on any range of
// layers (so layers can be split across processes) and on a batch of sequences.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { ModelConfig } from "./config";
import { KVCache, type AttentionCache, type KvQuantization, type Mask } from "./cache";
import { RotatingKVCache } from "./rotating-cache";
import { SlidingKVCache } from "./sliding-cache";

export type { Mask };

/** One transformer block: h [B, L, D] → h [B, L, D], reading and extending its cache. */
export type Block = (h: MxArray, mask: Mask, cache: AttentionCache) => MxArray;

export interface DecoderModel {
  readonly config: ModelConfig;
  readonly numLayers: number;
  /** Token ids [B, L] → hidden states [B, L, D]. */
  embed(ids: MxArray): MxArray;
  /** Runs blocks [start, end) with their caches (caches[i] belongs to block i). */
  layers(h: MxArray, caches: AttentionCache[], start?: number, end?: number): MxArray;
  /** Final norm and output projection: hidden states → logits [B, L, vocab]. */
  head(h: MxArray): MxArray;
  /** The final norm alone: the hidden states embeddings are pooled from. */
  finalNorm(h: MxArray): MxArray;
  /** One cache per layer, where some layers need their own kind (sliding-window ones). */
  makeCaches?(): KVCache[];
  /** Layers that other processes hold (a model split across processes; see engine/pipeline). */
  readonly remote?: RemoteLayers;
}

/**
 * What the batch does to its caches, the processes holding the other layers do to theirs, in
 * the same order, so every process's caches hold the same rows at the same positions.
 */
export interface RemoteLayers {
  /** A prefill's caches join the batch's as its last row; the prefill's are freed after. */
  extend(prefill: KVCache[], batch: KVCache[]): void;
  keepRows(batch: KVCache[], rows: number[]): void;
  /** Caches dropped without joining anything: a cancelled prefill's, the batch's at the end. */
  release(caches: KVCache[]): void;
  /** The batch takes back the last counts[b] positions of each row b (rejected draft tokens). */
  rollback(batch: KVCache[], counts: number[]): void;
  /**
   * Prefix-cache entry `entry` keeps `positions` positions of row `row` of `caches`, after
   * `skip` padding columns: every process its own layers' (the prefix cache decides and evicts).
   */
  savePrefix(entry: number, caches: KVCache[], row: number, skip: number, positions: number): void;
  /** A prefill's fresh caches start from entry `entry`: `length` positions, `dropped` of them no longer held. */
  restorePrefix(entry: number, caches: KVCache[], length: number, dropped: number): void;
  dropPrefix(entry: number): void;
  /** How the model is split (`layers 0-2,3-4`, `tensor-parallel 2`): prompt cache files record it. */
  readonly split: string;
  /** Entry `entry` goes to disk: every other process writes its layers' share beside `file`, tagged `save`; false when a process could not. */
  savePrefixFile(entry: number, file: string, save: string): boolean;
  /** Entry `entry` is read from the shares of `file` saved as `save`; false when a process could not (it holds nothing then). */
  loadPrefixFile(entry: number, file: string, save: string): boolean;
  /** `file` was removed: every other process removes its share. */
  removePrefixFile(file: string): void;
  /**
   * A forward pass on `caches` (a sequence of its own, not the batch's) gives the last layer's
   * hidden states back, evaluated (embeddings); release() the caches after.
   */
  wholePass(caches: KVCache[]): void;
  /**
   * The next forward pass on `caches` (a prompt's last prefill chunk) gives the last position's
   * hidden states back, [rows, 1, width], to sample the first token from: received by the next
   * arrive() where they travel (a pipeline), in the order sent.
   */
  returnLast(caches: KVCache[]): void;
  /**
   * Decode groups to keep in flight: while the other processes work on some, this one samples
   * another and sends its next step (1: the whole batch goes round as one).
   */
  readonly microBatches: number;
  /**
   * Receives the oldest decode step still on its way back (they come back in the order sent):
   * layers() returned its hidden states unevaluated, to evaluate only after this. `computed`
   * (computed from them) is queued right behind them.
   */
  arrive(...computed: MxArray[]): void;
  /**
   * Resolves once arrive() would not wait (undefined where it would not wait now), for a caller
   * that waits without blocking its event loop.
   */
  untilArrival?(): Promise<void> | undefined;
  /** Runs `build`, which builds a decode step on the tokens of one still on its way back: sent once that arrives. */
  beforeArrival<T>(build: () => T): T;
  /** A forward pass failed: the other processes hear no more; the error to give the requests. */
  stepFailed(error: Error): Error;
}

export interface DecoderParts {
  config: ModelConfig;
  embed: (ids: MxArray) => MxArray;
  blocks: Block[];
  head: (h: MxArray) => MxArray;
  finalNorm: (h: MxArray) => MxArray;
  makeCaches?: () => KVCache[];
}

/** Assembles the parts into a DecoderModel; the causal mask is only needed when L > 1. */
export function decoder(parts: DecoderParts): DecoderModel {
  return {
    config: parts.config,
    numLayers: parts.blocks.length,
    embed: parts.embed,
    head: parts.head,
    finalNorm: parts.finalNorm,
    makeCaches: parts.makeCaches,
    layers(h, caches, start = 0, end = parts.blocks.length) {
      // Caches of one kind hold the same positions, so one mask serves all their layers.
      const masks = new Map<string, Mask>();
      for (let i = start; i < end; i++) {
        const cache = caches[i]!;
        const kind = cache instanceof SlidingKVCache ? `window ${cache.window}` : "full";
        if (!masks.has(kind)) masks.set(kind, cache.attentionMask(h.shape[1]!));
        h = parts.blocks[i]!(h, masks.get(kind), cache);
      }
      return h;
    },
  };
}

/** The whole forward pass: ids [B, L] → logits [B, L, vocab]. */
export function forward(model: DecoderModel, ids: MxArray, caches: AttentionCache[]): MxArray {
  return model.head(model.layers(model.embed(ids), caches));
}

/** The final hidden states, after the final norm: ids [B, L] → [B, L, D] (what embeddings pool). */
export function hiddenStates(model: DecoderModel, ids: MxArray, caches: AttentionCache[]): MxArray {
  return model.finalNorm(model.layers(model.embed(ids), caches));
}

/**
 * A cache per layer. `windowed: false` gives every layer a full cache (sliding-window layers then
 * mask what is out of their window), for what copies positions out of a cache (batching, the
 * prefix cache); so does a quantization (the sliding-window cache stores float). `maxKvSize`
 * bounds every layer's cache (--max-kv-size). `joining`: a prefill's caches, to join a batch
 * (their per-channel keys wait in float until then, see KVCache.deferKeys).
 */
export function makeCaches(
  model: DecoderModel,
  {
    windowed = true,
    quantization,
    maxKvSize,
    reserve,
    joining = false,
  }: {
    windowed?: boolean;
    quantization?: KvQuantization;
    maxKvSize?: number;
    /** Positions a rotating cache keeps beyond its window, for trim to take back. */
    reserve?: number;
    joining?: boolean;
  } = {},
): KVCache[] {
  if (maxKvSize !== undefined)
    return Array.from({ length: model.numLayers }, () => RotatingKVCache.forSequence(maxKvSize, quantization, reserve));
  if (windowed && !quantization && model.makeCaches) return model.makeCaches();
  return Array.from({ length: model.numLayers }, () =>
    Object.assign(new KVCache(quantization), { deferKeys: joining }),
  );
}

/**
 * An embedding pass's caches, on every rank: plain ones (a vector depends on no --kv-bits or
 * --max-kv-size), whose keys and values stay as computed (KVCache.keepsActivationsDtype).
 */
export const embeddingCaches = (model: DecoderModel): KVCache[] =>
  makeCaches(model).map((cache) => Object.assign(cache, { keepsActivationsDtype: true }));

export function freeCaches(caches: KVCache[]): void {
  for (const c of caches) c.free();
}

export const cacheState = (caches: { state: MxArray[] }[]): MxArray[] => caches.flatMap((c) => c.state);
export { mx };
