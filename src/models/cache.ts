// The per-layer key/value cache. It grows in steps of `step` positions and is written in
// place with slice_update: the cache holds the only reference to each buffer, so MLX
// reuses it instead of copying the whole cache every token. With a quantization, keys and
// values are stored as MLX quantizes weights (packed integers, per-group scales and biases)
// and attention runs on them with quantized matmuls, as mlx-lm's quantized KV cache does.
// Quantized keys are stored per channel over groups of positions (channel-keys.ts), or, per row,
// rotated (see rotateGroups): the queries are rotated alike, so q·k, and attention, are unchanged.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { floatCacheDtype } from "./cache-dtype";
import {
  decodeGroups,
  decodeKeys,
  encodeGroups,
  encodeKeys,
  heldKeys,
  isChannelLayout,
  perChannelKeys,
  tailOf,
} from "./channel-keys";
import { quantizedAttention, rotateGroups } from "./quantized-attention";

export type Mask = "causal" | MxArray | undefined;

/** MLX affine quantization of the cache: `bits` per value, one scale and bias per `groupSize` values. */
export interface KvQuantization {
  bits: number;
  groupSize: number;
  /** Positions kept in float before quantizing starts (mlx-lm's quantized_kv_start). */
  start?: number;
  /**
   * How keys are quantized: per channel over groups of `groupSize` positions (the default, see
   * channel-keys.ts), or per row as values are, rotated (see rotateGroups).
   */
  keys?: "channel" | "rows";
}

/**
 * Where a step of positions from `from` to at most `to` ends: at --kv-quant-start when it starts
 * before it and would go past. A step's positions all read the cache as its update leaves it,
 * quantized once it passes the start, so one across the start read quantized keys and values at
 * positions that one token at a time, or a prompt ending before the start, read in float: a
 * prompt's answer then depended on how its positions were split (a chunk, a stored prefix).
 * Split there, a position reads the cache in float exactly when it comes before the start.
 */
export function quantStartBound(q: KvQuantization | undefined, from: number, to: number): number {
  const start = q?.start ?? 0;
  return from < start && to > start ? start : to;
}

/**
 * The shortest prefix a snapshot of `cache` serves as the cache it seeds would hold it: past
 * --kv-quant-start when quantized, as a prompt ending at or before the start holds its positions
 * in float (0: any prefix).
 */
export function shortestQuantized(cache: KVCache | undefined): number {
  const start = cache?.quantization?.start ?? 0;
  return cache?.quantized && start > 0 ? start + 1 : 0;
}

/**
 * Keys or values [B, H, T, ·] as stored: one float array, or three quantized parts (packed,
 * scales, biases), or for keys quantized per channel four (channel-keys.ts). Every part of the
 * first two has positions on axis 2, so slicing, padding and picking rows act on each part alike;
 * per-channel keys are decoded to float for that (BatchKVCache) and encoded again.
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
  /**
   * Where an op may write `rows.length` new positions itself: a float cache's buffers
   * (mx.fast.attentionInput with a cache, which then hands the buffers back to `wrote`), or a
   * quantized one's (mx.fast.attentionInputQuantized, whose step goes to `attendWritten`); or
   * undefined where the cache stores them its own way: attention is then `attention(...)`.
   */
  roomFor?(rows: NewRows): mx.fast.CacheRows | mx.fast.QuantizedCacheRows | undefined;
  /** Takes the buffers an op wrote `length` new positions into (see roomFor) as held. */
  wrote?(keys: MxArray, values: MxArray, length: number): void;
  /**
   * Takes the buffers and tail an op wrote a step into (a quantized cache's room, see roomFor) as
   * held, and attends its queries [B, heads, L, D] to everything held, as `attention` does.
   */
  attendWritten?(written: mx.fast.QuantizedCacheWritten, scale: number, mask: Mask, sinks?: MxArray): MxArray;
}

/** The new keys' (and values') shape [batch, heads, length, dim], and the activations' dtype. */
export interface NewRows {
  batch: number;
  heads: number;
  length: number;
  dim: number;
  activations: mx.DtypeCode;
}

/** What grow needs of an array to make room like it. */
type Like = Pick<MxArray, "shape" | "dtype">;

export class KVCache implements AttentionCache {
  keys?: Stored;
  values?: Stored;
  offset = 0;
  /**
   * A prefill's cache, to join a batch: per-channel keys wait in float (the tail) until then, and
   * BatchKVCache.extend groups them once at the batch's columns (rather than grouping them here
   * and again there, a second rounding).
   */
  deferKeys = false;
  /**
   * Whether the buffers are the cache's alone: then an op may write new positions into them in
   * place even while steps queued before it still hold them (they run first), as a pipelined token
   * loop needs (roomFor's `owned`, quantizedCacheWrite's). Not after seed (a stored prefix's
   * buffers) or lendBuffers, until the next write, which checks for other holders and copies where
   * there are some: what it leaves is the cache's own.
   */
  ownsBuffers = false;
  /**
   * Keys and values kept in the activations' dtype even where floatCacheDtype would narrow them
   * (float16 under float32 activations): an embedding's cache, which lives for one input, so
   * narrowing saves nothing that lasts and would move its vector by float16's rounding.
   */
  keepsActivationsDtype = false;
  /** The dtype keys and values come in (the model's activations), once some came. */
  activations?: mx.DtypeCode;

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

  /**
   * Positions of the longest sequence so far, including those a bounded cache no longer holds:
   * what --kv-quant-start counts (a rotating cache's columns held rise and fall with its
   * compactions, which happen at other positions for steps of several tokens).
   */
  get positions(): number {
    return this.offset;
  }

  get quantized(): boolean {
    return (this.keys?.length ?? 0) >= 3;
  }

  /** Whether keys are quantized per channel (channel-keys.ts) rather than per row. */
  get channelKeys(): boolean {
    return perChannelKeys(this.quantization);
  }

  attention(queries: MxArray, keys: MxArray, values: MxArray, scale: number, mask: Mask, sinks?: MxArray): MxArray {
    // Float caches go through updateAndFetch, which a subclass (the sliding window) may narrow.
    if (!this.quantization)
      return mx.fast.scaledDotProductAttention(queries, ...this.updateAndFetch(keys, values), scale, mask, sinks);
    const [k, v] = this.update(keys, values);
    if (k.length === 1) return mx.fast.scaledDotProductAttention(queries, k[0]!, v[0]!, scale, mask, sinks);
    const q = this.quantization!;
    if (isChannelLayout(k)) return quantizedAttention(queries, k, v, scale, mask, q, sinks);
    return quantizedAttention(rotateGroups(queries, q.groupSize), k, v, scale, mask, q, sinks);
  }

  updateAndFetch(keys: MxArray, values: MxArray): [MxArray, MxArray] {
    const [k, v] = this.update(keys, values);
    return [this.keysToFloat(k, keys.dtype), this.toFloat(v, values)];
  }

  /** Stored keys (as update returns them) as float in `dtype`: as they came, within rounding. */
  private keysToFloat(k: Stored, dtype: mx.DtypeCode): MxArray {
    if (k.length === 1) return k[0]!;
    const q = this.quantization!;
    if (isChannelLayout(k)) return decodeKeys(k, this.offset, q, dtype);
    // The rotation is its own inverse: this gives back the keys as they came.
    return rotateGroups(mx.dequantize(k[0]!, k[1]!, k[2], q, dtype), q.groupSize);
  }

  /**
   * The keys held, per-channel ones decoded to float: what BatchKVCache and the prefix cache
   * move columns of (per-channel groups are tied to their columns).
   */
  movableKeys(): Stored | undefined {
    if (!isChannelLayout(this.keys)) return this.keys;
    return [decodeKeys(this.keys!, this.offset, this.quantization!, this.keys![1]!.dtype)];
  }

  /** Appends keys/values [B, H, L, D] and returns the cache's valid part, [B, H, offset + L, ·]. */
  update(keys: MxArray, values: MxArray): [Stored, Stored] {
    const previous = this.offset;
    const length = keys.shape[2]!;
    // Before quantizeHeld, which quantizes from it: a cache seeded with a stored float prefix
    // has had no keys of its own yet, and quantized its float16 positions as they were (float16
    // scales, not the float32 ones of the same prompt prefilled whole).
    this.activations = keys.dtype;
    // Once quantized, always: a cache taken back below the start (a rejected draft) stays so.
    const quantize =
      this.quantization !== undefined && (this.quantized || this.positions + length > (this.quantization.start ?? 0));
    if (quantize && this.keys && !this.quantized) this.quantizeHeld();
    const channel = quantize && this.channelKeys;
    if (channel && this.tailTakes(keys.shape[2]!, keys.dtype)) return this.writeTailStep(keys, values);
    const newKeys = channel ? undefined : quantize ? this.encodeRotatedKeys(keys) : [this.heldFloat(keys)];
    const newValues = quantize ? this.encode(values) : [this.heldFloat(values)];
    if (!this.values || previous + length > this.values[0]!.shape[2]!) this.grow(newKeys, newValues, length);
    this.offset += length;
    const [batch, heads] = keys.shape as [number, number];
    const start = [0, 0, previous];
    const stop = [batch, heads, this.offset];
    const write = (held: Stored, added: Stored) =>
      held.map((t, i) => this.replace(t, mx.sliceUpdate(t, added[i]!, start, stop)));
    if (channel) this.writeChannelKeys(keys, previous);
    else this.keys = write(this.keys!, newKeys!);
    this.values = write(this.values!, newValues);
    this.ownsBuffers = true;
    const valid = (held: Stored) => held.map((t) => mx.slice(t, [0, 0, 0], stop));
    return [channel ? heldKeys(this.keys!, this.offset, this.quantization!) : valid(this.keys!), valid(this.values)];
  }

  /**
   * Whether `length` new keys per channel of `dtype` only join the tail (decode's usual step: no
   * group fills, or a prefill's keys wait in float), in its own dtype: the same numbers as
   * converting the tail to the keys' dtype and back (writeChannelKeys).
   */
  private tailTakes(length: number, dtype: mx.DtypeCode): boolean {
    const tail = this.keys?.[3];
    if (!tail || !this.values) return false;
    const total = tail.shape[2]! + length;
    return (this.deferKeys || total < this.quantization!.groupSize) && tail.dtype === floatCacheDtype(dtype);
  }

  /**
   * The step tailTakes allows in one graph node (mx.fast.quantizedCacheWrite): the values quantized
   * into their buffers in place, the keys appended to the tail, and the parts attention reads,
   * where composed it is about ten nodes a layer (quantize, three sliceUpdates and three slices of
   * the values, the tail's astype and concatenate, three slices of the coded keys): ~3-4 ms of CPU
   * a step over 30 layers (bench/RESULTS.md, "The quantized cache's step in one node").
   */
  private writeTailStep(keys: MxArray, values: MxArray): [Stored, Stored] {
    const length = keys.shape[2]!;
    const room = this.quantizedRoom(length);
    const step = mx.fast.quantizedCacheWrite(
      values,
      room.values,
      room.at,
      room.quantization,
      { keys, ...room.keys },
      room.owned,
    );
    return this.took(step, length);
  }

  /** Where tailTakes' step goes: the values' buffers, grown for `length` more, and the keys' parts. */
  private quantizedRoom(length: number): mx.fast.QuantizedCacheRows {
    if (this.offset + length > this.values![0]!.shape[2]!) this.grow(undefined, this.values!, length);
    const [codes, scales, biases, tail] = this.keys as [MxArray, MxArray, MxArray, MxArray];
    return {
      values: this.values as [MxArray, MxArray, MxArray],
      keys: { tail, buffers: [codes, scales, biases], coded: this.offset - tail.shape[2]! },
      at: this.offset,
      quantization: this.quantization!,
      owned: this.ownsBuffers,
    };
  }

  /** Takes a step written into quantizedRoom's buffers as held; returns the parts attention reads. */
  private took(step: mx.fast.QuantizedCacheStep, length: number): [Stored, Stored] {
    this.holdStep(step.buffers, step.keys![3], length);
    return [[...step.keys!], [...step.values]];
  }

  /** The values' buffers and the keys' tail a step of `length` positions wrote, held from now. */
  private holdStep(buffers: mx.fast.QuantizedParts, tail: MxArray, length: number): void {
    this.values = buffers.map((buffer, i) => this.replace(this.values![i]!, buffer));
    this.keys![3] = this.replace(this.keys![3]!, tail);
    this.ownsBuffers = true;
    this.offset += length;
  }

  /**
   * A float cache's buffers, grown to hold `rows` more, and the column they go to: an op writes
   * them there itself (our fused attention input), in place as update's sliceUpdate does, so
   * the cache's two writes and the two slices attention reads are not graph nodes of their own.
   * A quantized cache's room is the step tailTakes allows (writeTailStep's, in the same op);
   * other steps go through update.
   */
  roomFor(rows: NewRows): mx.fast.CacheRows | mx.fast.QuantizedCacheRows | undefined {
    if (this.quantization) {
      const takes = this.quantized && this.channelKeys && this.tailTakes(rows.length, rows.activations);
      return takes ? this.quantizedRoom(rows.length) : undefined;
    }
    const { batch, heads, length, dim } = rows;
    const like = {
      shape: [batch, heads, length, dim],
      dtype: this.keys?.[0]!.dtype ?? this.floatDtype(rows.activations),
    };
    if (!this.values || this.offset + length > this.values[0]!.shape[2]!) this.grow([like], [like], length);
    return { keys: this.keys![0]!, values: this.values![0]!, at: this.offset, owned: this.ownsBuffers };
  }

  wrote(keys: MxArray, values: MxArray, length: number): void {
    this.keys = [this.replace(this.keys![0]!, keys)];
    this.values = [this.replace(this.values![0]!, values)];
    this.ownsBuffers = true;
    this.offset += length;
  }

  attendWritten(written: mx.fast.QuantizedCacheWritten, scale: number, mask: Mask, sinks?: MxArray): MxArray {
    const { queries, buffers, tail } = written;
    this.holdStep(buffers, tail, queries.shape[2]!);
    // The whole buffers, read up to the positions held: no views of them a layer.
    return quantizedAttention(queries, this.keys!, this.values!, scale, mask, this.quantization!, sinks, this.offset);
  }

  /**
   * Appends keys [B, H, L, D] after `previous` positions in the per-channel layout: the tail and
   * the new keys make whole groups, quantized into their columns, and what is left the new tail.
   */
  private writeChannelKeys(keys: MxArray, previous: number): void {
    const q = this.quantization!;
    const tail = this.keys?.[3];
    const first = previous - (tail?.shape[2] ?? 0);
    const [batch, heads, , dim] = keys.shape as [number, number, number, number];
    const total = (tail?.shape[2] ?? 0) + keys.shape[2]!;
    const pending = tail && tail.shape[2]! > 0 ? mx.concatenate([mx.astype(tail, keys.dtype), keys], 2) : keys;
    const full = this.deferKeys ? 0 : total - (total % q.groupSize);
    this.reserveChannelKeys(keys, first + full);
    const parts = this.keys!;
    if (full > 0) {
      const [codes, scales, biases] = encodeGroups(mx.slice(pending, [0, 0, 0], [batch, heads, full, dim]), q);
      const put = (i: number, added: MxArray, from: number, to: number) => {
        parts[i] = this.replace(parts[i]!, mx.sliceUpdate(parts[i]!, added, [0, 0, from], [batch, heads, to]));
      };
      put(0, codes!, first, first + full);
      put(1, scales!, first / q.groupSize, (first + full) / q.groupSize);
      put(2, biases!, first / q.groupSize, (first + full) / q.groupSize);
    }
    parts[3] = this.replace(parts[3]!, tailOf(mx.slice(pending, [0, 0, full], [batch, heads, total, dim])));
  }

  /** Keys that waited in float (deferKeys), quantized now in whole groups at their columns. */
  groupKeys(): void {
    this.deferKeys = false;
    const waiting = this.keys?.[3];
    if (!isChannelLayout(this.keys) || waiting!.shape[2]! < this.quantization!.groupSize) return;
    const parts = this.keys!;
    mx.scope(() => {
      const keys = mx.astype(waiting!, parts[1]!.dtype);
      parts[3] = this.replace(waiting!, mx.slice(waiting!, [0, 0, 0], [...waiting!.shape.slice(0, 2), 0]));
      this.writeChannelKeys(keys, this.offset - keys.shape[2]!);
    });
  }

  /** Room for codes of `columns` positions (and their groups' scales), grown in steps of whole groups. */
  private reserveChannelKeys(like: MxArray, columns: number): void {
    const q = this.quantization!;
    const held = this.keys?.[0]!.shape[2] ?? 0;
    if (this.keys && columns <= held) return;
    const [batch, heads, , dim] = like.shape as [number, number, number, number];
    const chunk = Math.ceil(this.step / q.groupSize) * q.groupSize;
    const added = Math.max(1, Math.ceil((columns - held) / chunk)) * chunk;
    const more = (t: MxArray | undefined, width: number, length: number, dtype: mx.DtypeCode) => {
      const fresh = mx.zeros([batch, heads, length, width], dtype);
      return t ? this.replace(t, mx.concatenate([t, fresh], 2)) : mx.keep(fresh);
    };
    const [codes, scales, biases, tail] = this.keys ?? [];
    const groups = added / q.groupSize;
    this.keys = [
      more(codes, (dim * q.bits) / 32, added, mx.Dtype.uint32),
      more(scales, dim, groups, like.dtype),
      more(biases, dim, groups, like.dtype),
      tail ?? mx.keep(mx.zeros([batch, heads, 0, dim], floatCacheDtype(like.dtype))),
    ];
    this.withHugePages();
  }

  /** Keys [B, H, L, D] → their quantized parts, rotated first (see rotateGroups). */
  private encodeRotatedKeys(keys: MxArray): Stored {
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
    return this.quantization ? x : this.heldFloat(x);
  }

  /**
   * New float keys or values in the dtype held: a float cache's, and a quantized one's before
   * --kv-quant-start, whose positions cost what a float cache's do until then.
   */
  private heldFloat(x: MxArray): MxArray {
    const dtype = this.keys?.[0]?.dtype ?? this.floatDtype(x.dtype);
    return x.dtype === dtype ? x : mx.astype(x, dtype);
  }

  /** The dtype new float keys and values computed in `activations` are held in. */
  private floatDtype(activations: mx.DtypeCode): mx.DtypeCode {
    return this.keepsActivationsDtype ? activations : floatCacheDtype(activations);
  }

  /** Stored keys or values as float, in `like`'s dtype (read only to dequantize: it is an FFI call). */
  private toFloat(t: Stored, like: MxArray): MxArray {
    return t.length === 1 ? t[0]! : mx.dequantize(t[0]!, t[1]!, t[2], this.quantization!, like.dtype);
  }

  /** Turns the float positions held so far into quantized ones (when `start` positions are reached). */
  quantizeHeld(): void {
    if (!this.keys || !this.values || this.quantized) return;
    const [batch, heads] = this.keys[0]!.shape as [number, number];
    // Quantized from the activations' dtype, as positions past the start are (their scales' dtype).
    const used = (t: Stored) => {
      const part = mx.slice(t[0]!, [0, 0, 0], [batch, heads, this.offset]);
      return this.activations === undefined || part.dtype === this.activations
        ? part
        : mx.astype(part, this.activations);
    };
    const [keys, values] = mx.scope(() => [
      this.channelKeys ? encodeKeys(used(this.keys!), this.quantization!) : this.encodeRotatedKeys(used(this.keys!)),
      this.encode(used(this.values!)),
    ]);
    this.free(false);
    this.keys = keys.map(mx.keep);
    this.values = values.map(mx.keep);
    this.ownsBuffers = true;
    this.withHugePages();
  }

  /**
   * Whether a growth also adds a quarter of what is held (see grow). A cache of bounded size (a
   * sliding window, a maximum size) grows by steps only: it never holds more than a step beyond
   * its bound.
   */
  protected get growsWithContext(): boolean {
    return true;
  }

  /**
   * Grows values, and keys unless they are per channel (those grow in writeChannelKeys), by
   * `length` in whole steps and, where growsWithContext, by at least a quarter of what is held.
   * A growth copies the whole cache into fresh memory (and gives it huge pages): in steps of 256
   * alone that cost, proportional to the context, came every 256 positions, ~0.4 ms of CPU a
   * decode step at 2,000-3,000 tokens (bench/RESULTS.md, "Decode at 2,000 tokens: the cache's
   * growth"); growing with the context makes it a constant share. At most a quarter more memory.
   */
  private grow(likeKeys: Like[] | undefined, likeValues: Like[], length: number): void {
    const least = this.growsWithContext ? Math.max(length, this.offset / 4) : length;
    const steps = Math.ceil(least / this.step) * this.step;
    const extend = (held: Stored | undefined, like: Like[]) =>
      like.map((part, i) => {
        const [batch, heads, , width] = part.shape as [number, number, number, number];
        const fresh = mx.zeros([batch, heads, steps, width], part.dtype);
        if (!held) return mx.keep(fresh);
        const used = mx.slice(held[i]!, [0, 0, 0], [batch, heads, this.offset]);
        return this.replace(held[i]!, mx.concatenate([used, fresh], 2));
      });
    if (likeKeys) this.keys = extend(this.keys, likeKeys);
    this.values = extend(this.values, likeValues);
    this.ownsBuffers = true;
    this.withHugePages();
  }

  /**
   * The buffers just made (grown, re-laid), evaluated now and given huge pages: every decode step
   * reads them whole (mx.memory.hugePages). Between steps, so the next write is still in place.
   */
  protected withHugePages(): void {
    if (!mx.memory.hugePagesOn) return;
    const buffers = this.state;
    mx.evaluate(...buffers);
    mx.memory.hugePages(buffers);
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
    this.ownsBuffers = false;
    // Per-channel keys hold exactly their positions (whole groups and a tail): trim from there.
    this.offset = isChannelLayout(keys) ? keys[0]!.shape[2]! + keys[3]!.shape[2]! : length;
    this.trim(length);
  }

  /**
   * Forget positions past `length` (to reuse a shared prefix, or take back rejected draft
   * tokens): the next update writes over them in place, float or quantized alike.
   */
  trim(length: number): void {
    const next = Math.min(this.offset, Math.max(0, length));
    if (isChannelLayout(this.keys) && next < this.offset) this.trimChannelKeys(next);
    this.offset = next;
  }

  /**
   * Per-channel keys taken back to `length` positions: the tail keeps its first ones, or, when
   * `length` falls inside a group already quantized, that group's first positions decoded become
   * the tail (quantized again when it fills, from those decoded values).
   */
  protected trimChannelKeys(length: number): void {
    const q = this.quantization!;
    const parts = this.keys!;
    const [codes, scales, biases, tail] = parts as [MxArray, MxArray, MxArray, MxArray];
    const [batch, heads, , dim] = tail.shape as [number, number, number, number];
    const coded = this.offset - tail.shape[2]!;
    const first = length < coded ? length - (length % q.groupSize) : coded;
    const kept = length - first;
    const restored =
      length < coded
        ? (() => {
            const group = first / q.groupSize;
            const part = (t: MxArray, from: number, to: number) => mx.slice(t, [0, 0, from], [batch, heads, to]);
            const decoded = decodeGroups(
              part(codes, first, first + q.groupSize),
              part(scales, group, group + 1),
              part(biases, group, group + 1),
              q,
              tail.dtype,
            );
            return mx.slice(decoded, [0, 0, 0], [batch, heads, kept, dim]);
          })()
        : mx.slice(tail, [0, 0, 0], [batch, heads, kept, dim]);
    parts[3] = this.replace(tail, mx.contiguous(restored));
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

  /** Another holder now shares the buffers (a copy that is a view of them): see ownsBuffers. */
  lendBuffers(): void {
    this.ownsBuffers = false;
  }

  /** Releases the buffers; `forget` also resets the position count. */
  free(forget = true): void {
    for (const t of this.state) t.free();
    this.keys = this.values = undefined;
    this.ownsBuffers = false;
    if (forget) this.offset = 0;
  }
}
