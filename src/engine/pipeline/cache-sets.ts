// The caches a rank other than 0 keeps for the micro-batches rank 0 names by number (the decode
// batch, or one prompt's prefill), changed as rank 0's batch changes its own, so every rank's
// caches hold the same rows at the same positions. Likewise its layers' share of each entry of
// rank 0's prefix cache, by the entry's number, which it writes to and reads from its share of
// a prompt cache file when rank 0 says (src/engine/prompt-cache-file.ts).
import { rmSync } from "node:fs";
import * as mx from "../../mlx";
import { BatchKVCache } from "../../models/batch-cache";
import type { KVCache, KvQuantization, Stored } from "../../models/cache";
import { embeddingCaches, freeCaches, makeCaches, type DecoderModel } from "../../models/model";
import { DEFAULT_KV_KEEP, RotatingKVCache } from "../../models/rotating-cache";
import { seedCaches, snapshotRow } from "../prefix-cache";
import {
  encodePromptCache,
  kvLayout,
  loadPromptCacheShare,
  shareFile,
  writePromptCacheFileSync,
} from "../prompt-cache-file";

/** How every rank's caches are made: as rank 0's batch generator makes its own. */
export interface CacheOptions {
  kvQuantization?: KvQuantization;
  /** A rotating cache of this many positions per sequence (--max-kv-size). */
  maxKvSize?: number;
}

/** Which part of a split model this rank's prompt cache shares are. */
export interface ShareOptions {
  rank: number;
  /** As RemoteLayers.split. */
  split: string;
}

export class CacheSets {
  readonly #sets = new Map<number, KVCache[]>();
  readonly #prefixes = new Map<number, { keys: Stored[]; values: Stored[] }>();

  constructor(
    readonly model: DecoderModel,
    readonly options: CacheOptions = {},
    readonly share: ShareOptions = { rank: 0, split: "" },
  ) {}

  /** Set `set`'s caches if it has them (none are made). */
  held(set: number): KVCache[] | undefined {
    return this.#sets.get(set);
  }

  /**
   * Set `set`'s caches, made on first use: a batch's for a decode step, else a prefill's; a whole
   * pass's (embeddings) as rank 0's embed() makes them.
   */
  of(set: number, decode: boolean, whole = false): KVCache[] {
    let caches = this.#sets.get(set);
    if (!caches) {
      const { kvQuantization: quantization, maxKvSize } = this.options;
      caches = whole
        ? embeddingCaches(this.model)
        : decode
          ? Array.from({ length: this.model.numLayers }, () =>
              maxKvSize === undefined
                ? new BatchKVCache(quantization)
                : new RotatingKVCache(maxKvSize, DEFAULT_KV_KEEP, quantization),
            )
          : makeCaches(this.model, { windowed: false, quantization, maxKvSize, joining: true });
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

  rollback(set: number, counts: number[]): void {
    for (const c of this.#sets.get(set) ?? []) (c as BatchKVCache).rollback(counts);
  }

  savePrefix(entry: number, set: number, row: number, skip: number, positions: number): void {
    this.#prefixes.set(entry, snapshotRow(this.of(set, false), row, skip, positions));
  }

  /** Prefill `set` (made now) starts from entry `entry`. */
  restorePrefix(entry: number, set: number, length: number, dropped: number): void {
    const stored = this.#prefixes.get(entry);
    if (!stored) throw new Error(`prefix-cache entry ${entry} is not held here`);
    seedCaches(this.of(set, false), stored.keys, stored.values, length, dropped);
  }

  dropPrefix(entry: number): void {
    const stored = this.#prefixes.get(entry);
    for (const t of [...(stored?.keys ?? []), ...(stored?.values ?? [])].flat()) t.free();
    this.#prefixes.delete(entry);
  }

  /**
   * Writes entry `entry` (this rank's layers) to its share of `file`, synchronously: this
   * rank's loop does not return to the event loop. Whether it was written: a failure is a
   * warning here, and rank 0 hears of it.
   */
  savePrefixFile(entry: number, file: string, save: string): boolean {
    const stored = this.#prefixes.get(entry);
    const path = shareFile(file, this.share.rank);
    if (!stored) return false;
    const { kvQuantization, maxKvSize } = this.options;
    const owner = { model: "", kv: kvLayout(kvQuantization, maxKvSize), split: this.share.split };
    try {
      const parts = encodePromptCache({ tokens: [], dropped: 0, ...stored }, owner, "", {
        rank: this.share.rank,
        save,
      });
      writePromptCacheFileSync(path, parts);
      return true;
    } catch (error) {
      process.stderr.write(`warning: prompt cache: cannot write ${path}: ${(error as Error).message}\n`);
      return false;
    }
  }

  /** Entry `entry` from this rank's share of `file` saved as `save`; false when it is missing, damaged or another's. */
  loadPrefixFile(entry: number, file: string, save: string): boolean {
    try {
      const { keys, values } = loadPromptCacheShare(shareFile(file, this.share.rank), this.share.split, {
        rank: this.share.rank,
        save,
      });
      // Held past the message's scope, until rank 0 drops the entry.
      for (const t of [...keys, ...values].flat()) mx.keep(t);
      this.dropPrefix(entry);
      this.#prefixes.set(entry, { keys, values });
      return true;
    } catch {
      return false;
    }
  }

  removePrefixFile(file: string): void {
    rmSync(shareFile(file, this.share.rank), { force: true });
  }

  release(set: number): void {
    freeCaches(this.#sets.get(set) ?? []);
    this.#sets.delete(set);
  }

  free(): void {
    for (const set of [...this.#sets.keys()]) this.release(set);
    for (const entry of [...this.#prefixes.keys()]) this.dropPrefix(entry);
  }
}
