// The per-layer key/value cache. It grows in steps of `step` positions and is written in
// place with slice_update: the cache holds the only reference to each buffer, so MLX
// reuses it instead of copying the whole cache every token. With a quantization, keys and
// values are stored as MLX quantizes weights (packed integers, per-group scales and biases)
// and attention runs on them with quantized matmuls, as mlx-lm's quantized KV cache does.
// Quantized keys are stored rotated (see rotateGroups): the queries are rotated alike, so
// q·k, and attention, are unchanged.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { floatCacheDtype } from "./cache-dtype";
import { quantizedAttention, rotateGroups } from "./quantized-attention";

export type Mask = "causal" | MxArray | undefined;

/** MLX affine quantization of the cache: `bits` per value, one scale and bias per `groupSize` values. */
export interface KvQuantization {
  bits: number;
  groupSize: number;
  /** Positions kept in float before quantizing starts (mlx-lm's quantized_kv_start). */
  start?: number;
}

/**
 * Keys or values [B, H, T, ·] as stored: one float array, or three quantized parts (packed,
 * scales, biases). Every part has positions on axis 2, so slicing, padding and picking rows
 * act on each part alike.
 */
export type Stored = MxArray[];

/** What attention needs from a cache, for one sequence or a batch of them. */
export interface AttentionCache {
  /** Positions held so far (for a batch: including left padding). */
  readonly offset: number;
  /** The rotary position of the next token: one number, or one per batch row. */
  readonly ropeOffset: number | MxArray;
  /** The attention mask for `length` new positions. */
  attentionMask(length: number): Mask;
  /**
   * Appends keys/values [B, H, L, D] and attends `queries` to everything held: [B, heads, L, D].
   * `sinks` [heads]: a learned logit per head that joins the softmax without a value (gpt-oss).
   */
  attention(queries: MxArray, keys: MxArray, values: MxArray, scale: number, mask: Mask, sinks?: MxArray): MxArray;
  /** Appends keys/values and returns all of them in float (dequantized when stored quantized). */
  updateAndFetch(keys: MxArray, values: MxArray): [MxArray, MxArray];
}

export class KVCache implements AttentionCache {
  keys?: Stored;
  values?: Stored;
  offset = 0;

  constructor(
    readonly quantization?: KvQuantization,
    readonly step = 256,
  ) {}

  /** One sequence: a number (a batch of them, in BatchKVCache: one per row). */
  get ropeOffset(): number | MxArray {
    return this.offset;
  }

  /** A single sequence needs only causal masking, and none for one new token. */
  attentionMask(length: number): Mask {
    return length > 1 ? "causal" : undefined;
  }

  get quantized(): boolean {
    return this.keys?.length === 3;
  }

  attention(queries: MxArray, keys: MxArray, values: MxArray, scale: number, mask: Mask, sinks?: MxArray): MxArray {
    // Float caches go through updateAndFetch, which a subclass (the sliding window) may narrow.
    if (!this.quantization)
      return mx.fast.scaledDotProductAttention(queries, ...this.updateAndFetch(keys, values), scale, mask, sinks);
    const [k, v] = this.update(keys, values);
    if (k.length === 1) return mx.fast.scaledDotProductAttention(queries, k[0]!, v[0]!, scale, mask, sinks);
    const q = this.quantization!;
    return quantizedAttention(rotateGroups(queries, q.groupSize), k, v, scale, mask, q, sinks);
  }

  updateAndFetch(keys: MxArray, values: MxArray): [MxArray, MxArray] {
    const [k, v] = this.update(keys, values);
    const fetched = this.toFloat(k, keys);
    // The rotation is its own inverse: this gives back the keys as they came.
    return [k.length === 1 ? fetched : rotateGroups(fetched, this.quantization!.groupSize), this.toFloat(v, values)];
  }

  /** Appends keys/values [B, H, L, D] and returns the cache's valid part, [B, H, offset + L, ·]. */
  update(keys: MxArray, values: MxArray): [Stored, Stored] {
    const previous = this.offset;
    const length = keys.shape[2]!;
    // Once quantized, always: a cache taken back below the start (a rejected draft) stays so.
    const quantize =
      this.quantization !== undefined && (this.quantized || previous + length > (this.quantization.start ?? 0));
    if (quantize && this.keys && !this.quantized) this.quantizeHeld();
    const newKeys = quantize ? this.encodeKeys(keys) : [this.asHeld(keys)];
    const newValues = quantize ? this.encode(values) : [this.asHeld(values)];
    if (!this.keys || !this.values || previous + length > this.keys[0]!.shape[2]!)
      this.grow(newKeys, newValues, length);
    this.offset += length;
    const [batch, heads] = keys.shape as [number, number];
    const start = [0, 0, previous];
    const stop = [batch, heads, this.offset];
    const write = (held: Stored, added: Stored) =>
      held.map((t, i) => this.replace(t, mx.sliceUpdate(t, added[i]!, start, stop)));
    this.keys = write(this.keys!, newKeys);
    this.values = write(this.values!, newValues);
    const valid = (held: Stored) => held.map((t) => mx.slice(t, [0, 0, 0], stop));
    return [valid(this.keys), valid(this.values)];
  }

  /** Keys [B, H, L, D] → their quantized parts, rotated first (see rotateGroups). */
  private encodeKeys(keys: MxArray): Stored {
    return this.encode(rotateGroups(keys, this.quantization!.groupSize));
  }

  /** x [B, H, L, D] → its quantized parts. */
  encode(x: MxArray): Stored {
    const { weight, scales, biases } = mx.quantize(x, this.quantization!);
    return [weight, scales, biases!];
  }

  /**
   * Float keys or values [B, H, L, D] in the dtype this cache holds: what it holds already, else
   * floatCacheDtype's choice (float16 under float32 activations on our CPU kernels). A cache that
   * quantizes keeps its float positions as they come.
   */
  private asHeld(x: MxArray): MxArray {
    if (this.quantization) return x;
    const dtype = this.keys?.[0]?.dtype ?? floatCacheDtype(x.dtype);
    return x.dtype === dtype ? x : mx.astype(x, dtype);
  }

  /** Stored keys or values as float, in `like`'s dtype (read only to dequantize: it is an FFI call). */
  private toFloat(t: Stored, like: MxArray): MxArray {
    return t.length === 1 ? t[0]! : mx.dequantize(t[0]!, t[1]!, t[2], this.quantization!, like.dtype);
  }

  /** Turns the float positions held so far into quantized ones (when `start` positions are reached). */
  quantizeHeld(): void {
    if (!this.keys || !this.values || this.quantized) return;
    const [batch, heads] = this.keys[0]!.shape as [number, number];
    const used = (t: Stored) => mx.slice(t[0]!, [0, 0, 0], [batch, heads, this.offset]);
    const [keys, values] = mx.scope(() => [this.encodeKeys(used(this.keys!)), this.encode(used(this.values!))]);
    this.free(false);
    this.keys = keys.map(mx.keep);
    this.values = values.map(mx.keep);
  }

  private grow(likeKeys: Stored, likeValues: Stored, length: number): void {
    const steps = Math.ceil(length / this.step) * this.step;
    const extend = (held: Stored | undefined, like: Stored) =>
      like.map((part, i) => {
        const [batch, heads, , width] = part.shape as [number, number, number, number];
        const fresh = mx.zeros([batch, heads, steps, width], part.dtype);
        if (!held) return mx.keep(fresh);
        const used = mx.slice(held[i]!, [0, 0, 0], [batch, heads, this.offset]);
        return this.replace(held[i]!, mx.concatenate([used, fresh], 2));
      });
    this.keys = extend(this.keys, likeKeys);
    this.values = extend(this.values, likeValues);
  }

  // Drop our reference to the old buffer at once, so the next update can happen in place.
  private replace(old: MxArray, next: MxArray): MxArray {
    old.free();
    return mx.keep(next);
  }

  /**
   * Starts from stored keys/values [B, H, ≥ length, ·] (shared, so never written in place).
   * Float ones saved in another dtype (a float32 prompt cache file) are converted to ours.
   */
  seed(keys: Stored, values: Stored, length: number): void {
    this.free();
    const own = (t: MxArray) => {
      const held = this.asHeld(t);
      return mx.keep(held === t ? mx.retain(t) : held);
    };
    this.keys = keys.map(own);
    this.values = values.map(own);
    this.offset = length;
  }

  /**
   * Forget positions past `length` (to reuse a shared prefix, or take back rejected draft
   * tokens): the next update writes over them in place, float or quantized alike.
   */
  trim(length: number): void {
    this.offset = Math.min(this.offset, Math.max(0, length));
  }

  /** Whether trim(length) leaves what the next position attends to (a sliding window may not). */
  canTrim(_length: number): boolean {
    return true;
  }

  get state(): MxArray[] {
    return [...(this.keys ?? []), ...(this.values ?? [])];
  }

  get nbytes(): number {
    return this.state.reduce((sum, t) => sum + t.nbytes, 0);
  }

  /** Releases the buffers; `forget` also resets the position count. */
  free(forget = true): void {
    for (const t of this.state) t.free();
    this.keys = this.values = undefined;
    if (forget) this.offset = 0;
  }
}
