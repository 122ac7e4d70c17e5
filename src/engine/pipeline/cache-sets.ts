// The caches a rank other than 0 keeps for the micro-batches rank 0 names by number (the decode
// batch, or one prompt's prefill), changed as rank 0's batch changes its own, so every rank's
// caches hold the same rows at the same positions.
import { BatchKVCache } from "../../models/batch-cache";
import type { KVCache, KvQuantization } from "../../models/cache";
import { freeCaches, makeCaches, type DecoderModel } from "../../models/model";

export class CacheSets {
  readonly #sets = new Map<number, KVCache[]>();

  constructor(
    readonly model: DecoderModel,
    readonly kvQuantization?: KvQuantization,
  ) {}

  /** Set `set`'s caches, made on first use: a batch's for a decode step, else a prefill's. */
  of(set: number, decode: boolean): KVCache[] {
    let caches = this.#sets.get(set);
    if (!caches) {
      caches = decode
        ? Array.from({ length: this.model.numLayers }, () => new BatchKVCache(this.kvQuantization))
        : makeCaches(this.model, { windowed: false, quantization: this.kvQuantization });
      this.#sets.set(set, caches);
    }
    return caches;
  }

  /**
   * Prefill `prefill` joins batch `batch` as its last row, and is freed. A prompt of one token
   * has no prefill pass, so its (empty) caches are first made here, as rank 0's were.
   */
  extend(prefill: number, batch: number): void {
    const into = this.of(batch, true);
    const caches = this.of(prefill, false);
    into.forEach((b, layer) => (b as BatchKVCache).extend(caches[layer]!));
    this.release(prefill);
  }

  keepRows(set: number, rows: number[]): void {
    for (const c of this.#sets.get(set) ?? []) (c as BatchKVCache).keepRows(rows);
  }

  release(set: number): void {
    freeCaches(this.#sets.get(set) ?? []);
    this.#sets.delete(set);
  }

  free(): void {
    for (const set of [...this.#sets.keys()]) this.release(set);
  }
}
