// A KV cache of bounded size (--max-kv-size), as mlx-lm's RotatingKVCache: every query sees
// the first `keep` positions of its sequence (attention sinks, which models attend to heavily
// and cannot lose) and the most recent `maxSize - keep` positions, itself included, so a
// conversation can go on without end at a fixed memory. Older positions are dropped.
//
// The cache is a BatchKVCache (one row for a single sequence): rather than overwrite the
// oldest column every token (which would need a ring per row, each row at its own place), it
// holds up to a step of columns more, hides the ones out of reach with the attention mask,
// and compacts all rows at once when the slack is used up. Rotary positions keep counting
// from the start of each sequence: `dropped` per row are no longer held.
//
// A compaction keeps at least one hidden column between the sinks and the window: positions
// dropped leave a gap the attention kernel sees in the mask (attention_tiles.h cuts its parts
// there), so a position gets the same bits whenever the cache compacted, one token at a time or
// several at once (a speculative step). `reserve` keeps that many positions more, which trim can
// then take back (a draft model's cache: the drafts its target rejected).
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { BatchKVCache } from "./batch-cache";
import type { KVCache, KvQuantization, Mask, NewRows, Stored } from "./cache";

/** Attention sinks kept by default, as mlx-lm's make_prompt_cache. */
export const DEFAULT_KV_KEEP = 4;

/** Columns per row after a compaction, its left padding, and the positions each row no longer holds. */
interface Layout {
  width: number;
  padding: number[];
  dropped: number[];
}

export class RotatingKVCache extends BatchKVCache {
  /** Positions of each row no longer held (between its sinks and its oldest held position). */
  dropped: number[] = [];

  constructor(
    readonly maxSize: number,
    readonly keep = DEFAULT_KV_KEEP,
    quantization?: KvQuantization,
    readonly reserve = 0,
  ) {
    // Grow (and compact) in steps of at most maxSize, so a small cache never holds much more.
    // Keys per row: a compaction gathers each row's own columns, which would split the
    // per-channel groups of positions (channel-keys.ts), tied to columns.
    super(quantization && { ...quantization, keys: "rows" }, Math.min(256, maxSize));
    if (maxSize <= keep) throw new Error(`the KV cache size (${maxSize}) must be larger than its ${keep} sinks`);
  }

  /** A one-row cache for one sequence (a prefill, `mlx run`, a draft model's). */
  static forSequence(maxSize: number, quantization?: KvQuantization, reserve = 0): RotatingKVCache {
    const cache = new RotatingKVCache(maxSize, DEFAULT_KV_KEEP, quantization, reserve);
    cache.leftPadding = [0];
    cache.dropped = [0];
    return cache;
  }

  /** Whether every position of `row` is still held (so it can be copied out as a prefix). */
  holdsAll(row = 0): boolean {
    return (this.dropped[row] ?? 0) === 0;
  }

  override get ropeOffset(): number | MxArray {
    const positions = this.leftPadding.map((pad, b) => this.offset - pad + this.dropped[b]!);
    if (positions.every((p) => p === positions[0])) return positions[0] ?? this.offset;
    return mx.array(Int32Array.from(positions));
  }

  override get positions(): number {
    return Math.max(this.offset, ...this.leftPadding.map((pad, b) => this.offset - pad + (this.dropped[b] ?? 0)));
  }

  /**
   * [B, 1, L, columns]: causal, never padding, and for each query only the sinks and the
   * `maxSize - keep` newest positions. Built for the layout the next update leaves (it may
   * compact first), as the decoder asks for the mask before the update.
   */
  override attentionMask(length: number): Mask {
    const { width, padding } = this.#layoutFor(length);
    const longest = Math.max(0, ...padding.map((pad) => width - pad));
    if (padding.every((pad) => pad === 0) && longest + length <= this.maxSize) return length > 1 ? "causal" : undefined;
    const total = width + length;
    const window = this.maxSize - this.keep;
    const keys = mx.reshape(mx.arange(0, total), [1, 1, 1, total]);
    const queries = mx.reshape(mx.arange(width, total), [1, 1, length, 1]);
    const pad = mx.reshape(mx.array(Int32Array.from(padding)), [-1, 1, 1, 1]);
    const notPadding = mx.greaterEqual(keys, pad);
    const sink = mx.less(keys, mx.add(pad, this.keep));
    const recent = mx.greater(mx.add(keys, window), queries);
    return mx.logicalAnd(mx.logicalAnd(notPadding, mx.lessEqual(keys, queries)), mx.logicalOr(sink, recent));
  }

  /**
   * attentionMask narrowed to a sliding window (a sliding-window layer's, such as Gemma 3's local
   * layers): each query sees only positions fewer than `window` back. Held columns are positions
   * in order, except that a row's sinks lie its `dropped` positions further back than their columns.
   */
  windowedMask(length: number, window: number): Mask {
    const mask = this.attentionMask(length);
    const { width, padding, dropped } = this.#layoutFor(length);
    if (width + length + Math.max(0, ...dropped) <= window) return mask;
    const total = width + length;
    const keys = mx.reshape(mx.arange(0, total), [1, 1, 1, total]);
    const queries = mx.reshape(mx.arange(width, total), [1, 1, length, 1]);
    const column = (values: number[]) => mx.reshape(mx.array(Int32Array.from(values)), [-1, 1, 1, 1]);
    const sink = mx.less(keys, mx.add(column(padding), this.keep));
    const distance = mx.add(mx.subtract(queries, keys), mx.multiply(sink, column(dropped)));
    const inWindow = mx.less(distance, window);
    return mask === undefined || mask === "causal"
      ? mx.logicalAnd(mx.lessEqual(keys, queries), inWindow)
      : mx.logicalAnd(mask, inWindow);
  }

  /** Bounded: grows by steps only (KVCache.growsWithContext). */
  protected override get growsWithContext(): boolean {
    return false;
  }

  /**
   * A float cache's new positions go where KVCache.roomFor puts them (our fused attention input
   * writes them there), once the rows are compacted where this step would use up the slack, as
   * update does first. A quantized one's (keys per row) go through update.
   */
  override roomFor(rows: NewRows): mx.fast.CacheRows | undefined {
    if (this.quantization) return undefined;
    if (this.#mustCompact(rows.length)) this.#compact();
    return super.roomFor(rows) as mx.fast.CacheRows | undefined;
  }

  override update(keys: MxArray, values: MxArray): [Stored, Stored] {
    if (this.#mustCompact(keys.shape[2]!)) this.#compact();
    return super.update(keys, values);
  }

  // A step's slack used up: some row would hold more than `maxSize + reserve + step` columns after this update.
  #mustCompact(length: number): boolean {
    if (!this.keys) return false;
    const longest = Math.max(0, ...this.leftPadding.map((pad) => this.offset - pad));
    return longest + length > this.maxSize + this.reserve + this.step;
  }

  /**
   * Each row keeps its sinks, the newest positions the next query still sees (maxSize - 1 with
   * the sinks), one hidden before them, and `reserve` more.
   */
  #kept(held: number): number {
    return Math.min(held, this.maxSize + this.reserve);
  }

  #layoutFor(length: number): Layout {
    return this.#mustCompact(length)
      ? this.#compacted()
      : { width: this.offset, padding: this.leftPadding, dropped: this.dropped };
  }

  #compacted(): Layout {
    const kept = this.leftPadding.map((pad) => this.#kept(this.offset - pad));
    const width = Math.max(...kept);
    const dropped = this.dropped.map((d, b) => d + this.offset - this.leftPadding[b]! - kept[b]!);
    return { width, padding: kept.map((k) => width - k), dropped };
  }

  #compact(): void {
    const { width, padding } = this.#compacted();
    const batch = this.batchSize;
    // Per row, the columns it keeps, right-aligned; its new padding points at column 0 (masked).
    const columns = new Int32Array(batch * width);
    this.leftPadding.forEach((pad, b) => {
      const held = this.offset - pad;
      const kept = width - padding[b]!;
      const recent = kept - (held > kept ? this.keep : 0);
      const row = columns.subarray(b * width, (b + 1) * width);
      let at = padding[b]!;
      if (held > kept) for (let i = 0; i < this.keep; i++) row[at++] = pad + i;
      for (let i = this.offset - recent; i < this.offset; i++) row[at++] = i;
      this.dropped[b]! += held - kept;
    });
    const gather = (stored: Stored) =>
      mx.scope(() => {
        const index = mx.reshape(mx.array(columns), [batch, 1, width, 1]);
        return stored.map((t) =>
          mx.contiguous(mx.takeAlongAxis(mx.slice(t, [0, 0, 0], [batch, t.shape[1]!, this.offset]), index, 2)),
        );
      });
    const keys = gather(this.keys!);
    const values = gather(this.values!);
    this.free(false);
    this.keys = keys.map(mx.keep);
    this.values = values.map(mx.keep);
    this.offset = width;
    this.leftPadding = padding;
  }

  override extend(...singles: KVCache[]): void {
    super.extend(...singles);
    this.dropped.push(...singles.map((c) => (c instanceof RotatingKVCache ? c.dropped[0]! : 0)));
  }

  override keepRows(rows: number[]): void {
    const dropped = rows.map((r) => this.dropped[r]!);
    super.keepRows(rows);
    this.dropped = dropped;
  }

  /** Starts from stored keys/values: `length` positions, of which `dropped` are no longer held. */
  override seed(keys: Stored, values: Stored, length: number, dropped = 0): void {
    super.seed(keys, values, length - dropped);
    this.leftPadding = [0];
    this.dropped = [dropped];
  }

  /** One sequence's cache back to `length` positions (its columns are those not dropped). */
  override trim(length: number): void {
    if (!this.canTrim(length))
      throw new Error(
        `a rotating KV cache cannot go back to position ${length}: it no longer holds the window before it`,
      );
    super.trim(length - (this.dropped[0] ?? 0));
  }

  /**
   * Whether position `length` would still see what it sees decoded in turn: its window, after a
   * hidden column when positions were dropped (the gap the kernel's bits depend on).
   */
  override canTrim(length: number): boolean {
    return length >= this.shortestTrim();
  }

  /**
   * The shortest length `row` can go back to (canTrim): the window of the position after it
   * lies past the dropped positions, with the hidden column between (0 when none was dropped).
   */
  shortestTrim(row = 0): number {
    const dropped = this.dropped[row] ?? 0;
    return dropped === 0 ? 0 : this.keep + dropped + (this.maxSize - this.keep);
  }

  override free(forget = true): void {
    super.free(forget);
    if (forget) this.dropped = this.dropped.map(() => 0);
  }
}
