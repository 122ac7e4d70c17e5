// The cache of a sliding-window attention layer (Gemma 3's local layers): each position attends
// to itself and the `window - 1` positions before it, so the cache keeps only those, plus some
// slack so that it is compacted once per `step` tokens rather than every token, and so that a
// conversation can take back its last few tokens. Positions count from the sequence start, as
// in KVCache (rotary offsets need them); `dropped` of them are no longer held.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { KVCache, type AttentionCache, type Mask } from "./cache";
import { RotatingKVCache } from "./rotating-cache";

export class SlidingKVCache extends KVCache {
  /** Positions no longer held, from the start of the sequence. */
  dropped = 0;
  /** Positions held before the last update that its queries see (the mask of a prefill needs it). */
  #context = 0;

  constructor(
    readonly window: number,
    step = 256,
  ) {
    super(undefined, step);
  }

  get held(): number {
    return this.offset - this.dropped;
  }

  /** Bounded: grows by steps only (KVCache.growsWithContext). */
  protected override get growsWithContext(): boolean {
    return false;
  }

  /** New positions go through updateAndFetch, which compacts and narrows to the window. */
  override roomFor(): undefined {
    return undefined;
  }

  /** Appends keys/values [B, H, L, D]; returns the last `window - 1` held positions and the new ones. */
  override updateAndFetch(keys: MxArray, values: MxArray): [MxArray, MxArray] {
    const length = keys.shape[2]!;
    if (this.keys && this.held + length > this.keys[0]!.shape[2]!) this.#compact();
    this.#context = Math.min(this.held, this.window - 1);
    const start = this.held - this.#context;
    // KVCache's offset counts buffer columns; ours counts positions. Lend it the columns.
    const positions = this.offset;
    this.offset = this.held;
    const [allKeys, allValues] = super.updateAndFetch(keys, values);
    this.offset += this.dropped;
    if (start === 0) return [allKeys, allValues];
    const stop = [allKeys.shape[0]!, allKeys.shape[1]!, positions - this.dropped + length];
    return [mx.slice(allKeys, [0, 0, start], stop), mx.slice(allValues, [0, 0, start], stop)];
  }

  /**
   * The mask for `length` new positions over what updateAndFetch returns: causal and at most
   * `window` back. Call it before the update (the decoder does).
   */
  override attentionMask(length: number): Mask {
    const context = Math.min(this.held, this.window - 1);
    if (length === 1) return undefined;
    if (context + length <= this.window) return "causal";
    return windowMask(length, context, this.window);
  }

  /** Drops the positions no query will see again, keeping the buffer's slack for what comes. */
  #compact(): void {
    const keep = Math.min(this.held, this.window - 1);
    const from = this.held - keep;
    const [batch, heads] = this.keys![0]!.shape as [number, number];
    const shrink = (stored: MxArray[]) =>
      stored.map((t) => mx.keep(mx.scope(() => mx.contiguous(mx.slice(t, [0, 0, from], [batch, heads, this.held])))));
    const keys = shrink(this.keys!);
    const values = shrink(this.values!);
    this.free(false);
    this.keys = keys;
    this.values = values;
    this.dropped += from;
  }

  /** Taking back positions works while the window before `length` is still held. */
  override trim(length: number): void {
    const target = Math.min(this.offset, Math.max(0, length));
    if (target - this.dropped < Math.min(target, this.window - 1)) {
      throw new Error(
        `a sliding-window cache cannot go back to position ${target}: it no longer holds the ${this.window - 1} positions before it`,
      );
    }
    this.offset = target;
  }

  override canTrim(length: number): boolean {
    const target = Math.min(this.offset, Math.max(0, length));
    return target - this.dropped >= Math.min(target, this.window - 1);
  }

  override seed(): void {
    throw new Error("a sliding-window cache cannot start from stored keys and values");
  }

  override free(forget = true): void {
    super.free(forget);
    if (forget) this.dropped = 0;
  }
}

/** [L, context + L] booleans: query i (at column context + i) sees columns (context + i - window, context + i]. */
export function windowMask(length: number, context: number, window: number): MxArray {
  const total = context + length;
  const queries = mx.reshape(mx.arange(context, total), [length, 1]);
  const keys = mx.reshape(mx.arange(0, total), [1, total]);
  return mx.logicalAnd(mx.greaterEqual(queries, keys), mx.less(queries, mx.add(keys, window)));
}

/**
 * The mask of a sliding-window layer for `length` new positions: its own cache's as it is; a
 * full cache's (a batch's, a quantized one's) narrowed to the last `window` positions for each; a
 * rotating one's (--max-kv-size) by positions, as its columns are not.
 */
export function slidingLayerMask(mask: Mask, cache: AttentionCache, length: number, window: number): Mask {
  if (cache instanceof RotatingKVCache) return cache.windowedMask(length, window);
  if (cache instanceof SlidingKVCache || cache.offset + length <= window) return mask;
  const inWindow = windowMask(length, cache.offset, window);
  return mask === undefined || mask === "causal" ? inWindow : mx.logicalAnd(mask, inWindow);
}
