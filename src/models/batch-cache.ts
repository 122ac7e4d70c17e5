// A key/value cache for a batch of sequences of different lengths, for continuous batching.
// Rows are left-padded so every sequence's newest position is the same column: one decode
// step appends one column for all. Each row's rotary positions skip its padding, and the
// attention mask hides it. Sequences join (extend) and leave (keepRows) between steps.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { KVCache, type Mask, type Stored } from "./cache";
import { encodeKeys, isChannelLayout } from "./channel-keys";

export class BatchKVCache extends KVCache {
  /** Padding columns at the left of each row. */
  leftPadding: number[] = [];

  get batchSize(): number {
    return this.leftPadding.length;
  }

  /** Whether some row is padded; if none is, every row is at the same position, like one sequence. */
  get padded(): boolean {
    return this.leftPadding.some((pad) => pad > 0);
  }

  /** Row b's next rotary position: the columns it really holds (one number when no row is padded). */
  override get ropeOffset(): number | MxArray {
    if (!this.padded) return this.offset;
    return mx.array(Int32Array.from(this.leftPadding, (pad) => this.offset - pad));
  }

  /**
   * [B, 1, L, offset + L]: causal, and never a row's padding. Without padding, a single
   * sequence's mask (none for one new token): a batch of one decodes as `KVCache` does.
   */
  override attentionMask(length: number): Mask {
    if (!this.padded) return super.attentionMask(length);
    const total = this.offset + length;
    const keys = mx.arange(0, total);
    const causal = mx.lessEqual(
      mx.reshape(keys, [1, 1, 1, total]),
      mx.reshape(mx.arange(this.offset, total), [1, 1, length, 1]),
    );
    const padding = mx.reshape(mx.array(Int32Array.from(this.leftPadding)), [-1, 1, 1, 1]);
    return mx.logicalAnd(causal, mx.greaterEqual(mx.reshape(keys, [1, 1, 1, total]), padding));
  }

  /**
   * Adds sequences whose keys/values are in `singles` (one-row caches), as the last rows, in
   * one copy: the new buffers are written once, with a step of free columns after the last
   * position so that the next decode steps write in place (as a growing cache would), where
   * joining one by one and then growing copied the whole batch again for each.
   */
  extend(...singles: KVCache[]): void {
    const [first] = singles;
    if (!first) return;
    if (this.batchSize === 0 && singles.length === 1 && first.constructor === KVCache) return this.adopt(first);
    this.activations ??= singles.find((c) => c.activations !== undefined)?.activations;
    // Past the quantization start, some may still be float: all are stored alike first.
    if (this.quantized || singles.some((c) => c.quantized)) for (const c of [this, ...singles]) c.quantizeHeld();
    const held = this.batchSize;
    // Per-channel keys: the rows held (or the first joining, into an empty batch) move by whole
    // groups, so their groups stay as they are, and joining at once or one by one lays the rows
    // out alike (as a model split across processes needs: each process joins its own caches).
    const channel = this.channelKeys && (this.quantized || singles.some((c) => c.quantized));
    const base = held > 0 ? this.offset : channel ? first.offset : 0;
    const longest = Math.max(base, ...singles.map((c) => c.offset));
    const group = channel ? this.quantization!.groupSize : 1;
    const width = base + Math.ceil((longest - base) / group) * group;
    const [keys, values] = mx.scope(() => {
      const joined = (mine: Stored | undefined, theirs: (Stored | undefined)[]) => {
        const like = mine ?? theirs.find((t) => t !== undefined);
        return like?.map((part, i) => {
          const [, heads, , dim] = part.shape as [number, number, number, number];
          const rows = held + singles.length;
          let out = mx.zeros([rows, heads, width + this.step, dim], part.dtype);
          // Each block of rows right-aligned at `width`; what is left of it stays zero (padding).
          const put = (t: MxArray, row: number, count: number, length: number) => {
            if (length === 0) return;
            const block = mx.slice(t, [0, 0, 0], [count, heads, length]);
            out = mx.sliceUpdate(out, block, [row, 0, width - length], [row + count, heads, width]);
          };
          if (mine && held > 0) put(mine[i]!, 0, held, this.offset);
          theirs.forEach((t, j) => t && put(t[i]!, held + j, 1, singles[j]!.offset));
          return out;
        });
      };
      return [
        joined(
          this.movableKeys(),
          singles.map((c) => c.movableKeys()),
        ),
        joined(
          this.values,
          singles.map((c) => c.values),
        ),
      ];
    });
    this.leftPadding = [
      ...this.leftPadding.map((pad) => pad + width - this.offset),
      ...singles.map((c) => width - c.offset),
    ];
    this.offset = width;
    this.replaceBuffers(keys, values);
  }

  /**
   * The first row takes `single`'s buffers as they are (`single` is left empty): no copy now,
   * and their room to grow lets the next decode steps write in place, as a one-sequence cache does.
   */
  private adopt(single: KVCache): void {
    single.groupKeys();
    this.free();
    [this.keys, this.values, this.offset, this.activations] = [
      single.keys,
      single.values,
      single.offset,
      single.activations,
    ];
    this.ownsBuffers = single.ownsBuffers;
    this.leftPadding = [0];
    single.keys = single.values = undefined;
    single.free();
  }

  /** Keeps only the given rows (in that order), then drops padding every row has. */
  keepRows(rows: number[]): void {
    if (rows.length === 0) {
      this.free();
      this.leftPadding = [];
      return;
    }
    const padding = rows.map((r) => this.leftPadding[r]!);
    // Per-channel keys: whole groups of padding only, so that the groups stay as they are.
    const group = isChannelLayout(this.keys) ? this.quantization!.groupSize : 1;
    const shared = Math.floor(Math.min(...padding) / group) * group;
    this.leftPadding = padding.map((pad) => pad - shared);
    // A layer another process computes (pipeline parallel) holds no positions here: rows only.
    if (!this.keys || !this.values) return;
    // One copy of the rows kept, free columns included (the next decode step writes in place).
    const [keys, values] = mx.scope(() => {
      const index = mx.array(Int32Array.from(rows));
      const pick = (t: MxArray) => {
        const [batch, heads, columns, dim] = t.shape as [number, number, number, number];
        return mx.take(shared > 0 ? mx.slice(t, [0, 0, shared], [batch, heads, columns, dim]) : t, index, 0);
      };
      return [this.movableKeys()!.map(pick), this.values!.map(pick)];
    });
    this.offset -= shared;
    this.replaceBuffers(keys, values);
  }

  /**
   * Takes back the last `counts[b]` positions of each row b (a speculative step's rejected
   * draft tokens). Rows that take back more than the fewest are moved right, the freed columns
   * becoming their padding, so every row's newest position stays the last column.
   */
  rollback(counts: number[]): void {
    const fewest = Math.min(...counts);
    if (isChannelLayout(this.keys) && fewest > 0) this.trimChannelKeys(this.offset - fewest);
    this.offset -= fewest;
    const extra = counts.map((count) => count - fewest);
    if (!this.keys || !this.values || extra.every((e) => e === 0)) return;
    const [keys, values] = mx.scope(() => {
      const shift = (t: MxArray) =>
        mx.concatenate(
          extra.map((e, b) => padLeft(mx.slice(t, [b, 0, 0], [b + 1, t.shape[1]!, this.offset - e]), e, t)!),
          0,
        );
      return [this.movableKeys()!.map(shift), this.values!.map(shift)];
    });
    this.leftPadding = this.leftPadding.map((pad, b) => pad + extra[b]!);
    this.replaceBuffers(keys, values);
  }

  private replaceBuffers(keys: Stored | undefined, values: Stored | undefined): void {
    // Per-channel keys were moved as float (movableKeys): quantized again in their new columns.
    const pack = keys?.length === 1 && values?.length === 3 && this.channelKeys;
    const stored = pack ? mx.scope(() => this.packKeys(keys[0]!)) : keys;
    this.free(false);
    this.keys = stored?.map(mx.keep);
    this.values = values?.map(mx.keep);
    // Copies made from the rows held (take, concatenate, sliceUpdate into zeros): the batch's own.
    this.ownsBuffers = true;
    this.withHugePages();
  }

  /**
   * Float keys [B, H, ≥ offset, D] in the per-channel layout. A row's padding columns take its
   * first key first: masked in attention, they then widen no channel's range in their group.
   */
  private packKeys(keys: MxArray): Stored {
    const [batch, heads, , dim] = keys.shape as [number, number, number, number];
    const held = mx.slice(keys, [0, 0, 0], [batch, heads, this.offset]);
    if (!this.padded || this.offset === 0) return encodeKeys(held, this.quantization!);
    const padding = mx.reshape(mx.array(Int32Array.from(this.leftPadding)), [batch, 1, 1, 1]);
    const firstAt = mx.minimum(padding, this.offset - 1);
    const first = mx.takeAlongAxis(held, mx.broadcastTo(mx.astype(firstAt, mx.Dtype.int32), [batch, heads, 1, dim]), 2);
    const isPadding = mx.less(mx.reshape(mx.arange(0, this.offset), [1, 1, this.offset, 1]), padding);
    return encodeKeys(mx.where(isPadding, first, held), this.quantization!);
  }
}

/** `count` zero columns in front of t [B, H, T, ·] (t may be absent when count covers all). */
function padLeft(t: MxArray | undefined, count: number, like: MxArray | undefined): MxArray | undefined {
  if (count === 0 || !like) return t;
  const [batch, heads, , dim] = (t ?? like).shape as [number, number, number, number];
  const zeros = mx.zeros([t ? batch : 1, heads, count, dim], like.dtype);
  return t ? mx.concatenate([zeros, t], 2) : zeros;
}
