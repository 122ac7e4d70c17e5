// What every architecture provides: a decoder whose forward pass can run on any range of
// layers (so layers can be split across processes) and on a batch of sequences.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { ModelConfig } from "./config";
import { KVCache, type AttentionCache, type KvQuantization, type Mask } from "./cache";

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
}

export interface DecoderParts {
  config: ModelConfig;
  embed: (ids: MxArray) => MxArray;
  blocks: Block[];
  head: (h: MxArray) => MxArray;
}

/** Assembles the parts into a DecoderModel; the causal mask is only needed when L > 1. */
export function decoder(parts: DecoderParts): DecoderModel {
  return {
    config: parts.config,
    numLayers: parts.blocks.length,
    embed: parts.embed,
    head: parts.head,
    layers(h, caches, start = 0, end = parts.blocks.length) {
      // Every layer's cache holds the same positions, so one mask serves them all.
      const mask = caches[start]!.attentionMask(h.shape[1]!);
      for (let i = start; i < end; i++) h = parts.blocks[i]!(h, mask, caches[i]!);
      return h;
    },
  };
}

/** The whole forward pass: ids [B, L] → logits [B, L, vocab]. */
export function forward(model: DecoderModel, ids: MxArray, caches: AttentionCache[]): MxArray {
  return model.head(model.layers(model.embed(ids), caches));
}

export function makeCaches(model: DecoderModel, quantization?: KvQuantization): KVCache[] {
  return Array.from({ length: model.numLayers }, () => new KVCache(quantization));
}

export function freeCaches(caches: KVCache[]): void {
  for (const c of caches) c.free();
}

export const cacheState = (caches: { state: MxArray[] }[]): MxArray[] => caches.flatMap((c) => c.state);
export { mx };
