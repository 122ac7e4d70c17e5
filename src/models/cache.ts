// The per-layer key/value cache. It grows in steps of `step` positions and is written in
// place with slice_update: the cache holds the only reference to each buffer, so MLX
// reuses it instead of copying the whole cache every token.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";

export type Mask = "causal" | MxArray | undefined;

/** What attention needs from a cache, for one sequence or a batch of them. */
export interface AttentionCache {
  /** Positions held so far (for a batch: including left padding). */
  readonly offset: number;
  /** The rotary position of the next token: one number, or one per batch row. */
  readonly ropeOffset: number | MxArray;
  /** The attention mask for `length` new positions. */
  attentionMask(length: number): Mask;
  updateAndFetch(keys: MxArray, values: MxArray): [MxArray, MxArray];
}

export class KVCache implements AttentionCache {
  keys?: MxArray;
  values?: MxArray;
  offset = 0;

  constructor(readonly step = 256) {}

  /** One sequence: a number (a batch of them, in BatchKVCache: one per row). */
  get ropeOffset(): number | MxArray {
    return this.offset;
  }

  /** A single sequence needs only causal masking, and none for one new token. */
  attentionMask(length: number): Mask {
    return length > 1 ? "causal" : undefined;
  }

  /** Appends keys/values [B, H, L, D] and returns the cache's valid part, [B, H, offset + L, D]. */
  updateAndFetch(keys: MxArray, values: MxArray): [MxArray, MxArray] {
    const previous = this.offset;
    const [batch, heads, length, keyDim] = keys.shape as [number, number, number, number];
    if (!this.keys || !this.values || previous + length > this.keys.shape[2]!) {
      this.grow(batch, heads, length, keyDim, values.shape[3]!, keys.dtype);
    }
    this.offset += length;
    const start = [0, 0, previous];
    const stop = [batch, heads, this.offset];
    this.keys = this.replace(this.keys!, mx.sliceUpdate(this.keys!, keys, start, stop));
    this.values = this.replace(this.values!, mx.sliceUpdate(this.values!, values, start, stop));
    return [mx.slice(this.keys, [0, 0, 0], stop), mx.slice(this.values, [0, 0, 0], stop)];
  }

  private grow(batch: number, heads: number, length: number, keyDim: number, valueDim: number, dtype: mx.DtypeCode): void {
    const steps = Math.ceil(length / this.step) * this.step;
    const newKeys = mx.zeros([batch, heads, steps, keyDim], dtype);
    const newValues = mx.zeros([batch, heads, steps, valueDim], dtype);
    if (this.keys && this.values) {
      const used = [batch, heads, this.offset];
      this.keys = this.replace(this.keys, mx.concatenate([mx.slice(this.keys, [0, 0, 0], used), newKeys], 2));
      this.values = this.replace(this.values, mx.concatenate([mx.slice(this.values, [0, 0, 0], used), newValues], 2));
    } else {
      this.keys = mx.keep(newKeys);
      this.values = mx.keep(newValues);
    }
  }

  // Drop our reference to the old buffer at once, so the next update can happen in place.
  private replace(old: MxArray, next: MxArray): MxArray {
    old.free();
    return mx.keep(next);
  }

  /** Starts from stored keys/values [B, H, ≥ length, D] (shared, so never written in place). */
  seed(keys: MxArray, values: MxArray, length: number): void {
    this.free();
    this.keys = mx.keep(mx.retain(keys));
    this.values = mx.keep(mx.retain(values));
    this.offset = length;
  }

  /** Forget positions past `length` (e.g. to reuse a shared prefix). */
  trim(length: number): void {
    this.offset = Math.min(this.offset, Math.max(0, length));
  }

  /** Whether trim(length) leaves what the next position attends to (a sliding window may not). */
  canTrim(_length: number): boolean {
    return true;
  }

  get state(): MxArray[] {
    return this.keys && this.values ? [this.keys, this.values] : [];
  }

  get nbytes(): number {
    return (this.keys?.nbytes ?? 0) + (this.values?.nbytes ?? 0);
  }

  free(): void {
    this.keys?.free();
    this.values?.free();
    this.keys = this.values = undefined;
    this.offset = 0;
  }
}
