// Keys quantized per channel, as KIVI (Liu et al., 2024) stores them: a key's outlier channels
// are large at every position, so one scale per channel over a group of G positions fits each
// channel's own range, where one scale per row lets the outliers set every row's rounding step.
// Codes stay one row per position (MLX's packing along the head dimension, so attention reads a
// key row as it reads a value row); scales and biases are per (head, channel, group of G
// positions); the newest positions of an unfinished group wait in float (the tail) and are
// quantized together when the group fills. Groups are aligned to the cache's columns (group g is
// columns gG..gG+G-1 of every row), so the rows of a batch share them. Scales and biases are in
// the activations' dtype, the tail in the float cache's (cache-dtype.ts). Measured on the default
// model (bench/RESULTS.md, "KV cache, fifth pass"), against the float cache at the same bytes:
// 8-bit's mean abs logit difference 0.051 → 0.034, 4-bit's 1.03 → 0.57.
//
// Stored keys in this layout are four parts: codes [B, H, ≥ gG, D·bits/32] (uint32), scales and
// biases [B, H, ≥ g, D], and the tail [B, H, T - gG, D] (float), for T positions held: less
// than a group, except in a prefill's cache, whose keys wait in float until the sequence joins a
// batch (KVCache.deferKeys), to be grouped once at the batch's columns.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { KvQuantization, Stored } from "./cache";
import { floatCacheDtype } from "./cache-dtype";

/** Whether a cache with this quantization stores its keys per channel (the default) or per row. */
export function perChannelKeys(q: KvQuantization | undefined): boolean {
  return q !== undefined && q.keys !== "rows";
}

/** Whether stored keys are in the per-channel layout (four parts). */
export function isChannelLayout(stored: Stored | undefined): boolean {
  return stored?.length === 4;
}

/**
 * Whole groups of keys [B, H, nG, D] → [codes, scales, biases]: per channel over each group's G
 * positions, value = code · scale + bias with bias the group's minimum (MLX's affine rounding).
 */
export function encodeGroups(keys: MxArray, q: KvQuantization): Stored {
  const [batch, heads, length, dim] = keys.shape as [number, number, number, number];
  const groups = length / q.groupSize;
  if (groups === 0)
    return [
      mx.zeros([batch, heads, 0, (dim * q.bits) / 32], mx.Dtype.uint32),
      ...[0, 1].map(() => mx.zeros([batch, heads, 0, dim], keys.dtype)),
    ];
  const levels = 2 ** q.bits - 1;
  const x = mx.reshape(mx.astype(keys, mx.Dtype.float32), [batch, heads, groups, q.groupSize, dim]);
  const low = mx.min(x, 3, true);
  // A channel constant over the group keeps a nonzero step (its codes are then all 0).
  const step = mx.maximum(mx.divide(mx.subtract(mx.max(x, 3, true), low), levels), 1e-8);
  const codes = mx.astype(
    mx.minimum(mx.maximum(mx.round(mx.divide(mx.subtract(x, low), step)), 0), levels),
    mx.Dtype.uint8,
  );
  const rows = mx.reshape(codes, [batch, heads, length, dim]);
  // 8 bits: a byte per code; 4 bits: two codes a byte, the first in the low nibble (MLX's order).
  const bytes =
    q.bits === 8
      ? rows
      : (() => {
          const pairs = mx.reshape(rows, [batch, heads, length, dim / 2, 2]);
          const even = mx.slice(pairs, [0, 0, 0, 0, 0], [batch, heads, length, dim / 2, 1]);
          const odd = mx.slice(pairs, [0, 0, 0, 0, 1], [batch, heads, length, dim / 2, 2]);
          return mx.reshape(mx.add(even, mx.multiply(odd, mx.scalar(16, mx.Dtype.uint8))), [
            batch,
            heads,
            length,
            dim / 2,
          ]);
        })();
  const perGroup = (t: MxArray) => mx.astype(mx.reshape(t, [batch, heads, groups, dim]), keys.dtype);
  return [mx.view(mx.contiguous(bytes), mx.Dtype.uint32), perGroup(step), perGroup(low)];
}

/** Codes [B, H, nG, ·] with scales and biases [B, H, n, D] → keys [B, H, nG, D] in `dtype`. */
export function decodeGroups(codes: MxArray, scales: MxArray, biases: MxArray, q: KvQuantization, dtype: mx.DtypeCode) {
  const [batch, heads, length] = codes.shape as [number, number, number];
  const [, , groups, dim] = scales.shape as [number, number, number, number];
  // The codes as floats: MLX's dequantization with unit scales and zero biases.
  const unit = [batch, heads, length, dim / q.groupSize];
  const plain = mx.dequantize(codes, mx.ones(unit), mx.zeros(unit), q, mx.Dtype.float32);
  const grouped = mx.reshape(plain, [batch, heads, groups, q.groupSize, dim]);
  const perChannel = (t: MxArray) => mx.astype(mx.reshape(t, [batch, heads, groups, 1, dim]), mx.Dtype.float32);
  const keys = mx.add(mx.multiply(grouped, perChannel(scales)), perChannel(biases));
  return mx.astype(mx.reshape(keys, [batch, heads, length, dim]), dtype);
}

/** Keys [B, H, L, D] waiting for their group to fill: in the float cache's dtype (float16 under float32 activations). */
export function tailOf(keys: MxArray): MxArray {
  return mx.contiguous(mx.astype(keys, floatCacheDtype(keys.dtype)));
}

/** Keys [B, H, T, D] in the per-channel layout, exactly: ⌊T/G⌋ groups and a tail of T mod G. */
export function encodeKeys(keys: MxArray, q: KvQuantization): Stored {
  const [batch, heads, length, dim] = keys.shape as [number, number, number, number];
  const full = length - (length % q.groupSize);
  const tail = tailOf(mx.slice(keys, [0, 0, full], [batch, heads, length, dim]));
  return [...encodeGroups(mx.slice(keys, [0, 0, 0], [batch, heads, full, dim]), q), tail];
}

/** Keys in the per-channel layout holding `length` positions, as float [B, H, length, D]. */
export function decodeKeys(stored: Stored, length: number, q: KvQuantization, dtype: mx.DtypeCode): MxArray {
  const [codes, scales, biases, tail] = stored as [MxArray, MxArray, MxArray, MxArray];
  const [batch, heads, , dim] = tail.shape as [number, number, number, number];
  const full = length - tail.shape[2]!;
  const groups = full / q.groupSize;
  const parts: MxArray[] = [];
  if (groups > 0) {
    const upTo = (t: MxArray, n: number) => mx.slice(t, [0, 0, 0], [batch, heads, n, t.shape[3]!]);
    parts.push(decodeGroups(upTo(codes, full), upTo(scales, groups), upTo(biases, groups), q, dtype));
  }
  if (length > full) parts.push(mx.astype(tail, dtype));
  if (parts.length === 0) return mx.zeros([batch, heads, 0, dim], dtype);
  return parts.length === 1 ? parts[0]! : mx.concatenate(parts, 2);
}

/** The valid parts of keys in the per-channel layout holding `length` positions (views, for attention). */
export function heldKeys(stored: Stored, length: number, q: KvQuantization): Stored {
  const [codes, scales, biases, tail] = stored as [MxArray, MxArray, MxArray, MxArray];
  const [batch, heads] = codes.shape as [number, number];
  const full = length - tail.shape[2]!;
  const upTo = (t: MxArray, n: number) => mx.slice(t, [0, 0, 0], [batch, heads, n]);
  return [upTo(codes, full), upTo(scales, full / q.groupSize), upTo(biases, full / q.groupSize), tail];
}

/**
 * Positions [skip, skip + positions) of batch row `row` of keys in the per-channel layout that
 * hold `length` columns, in that layout on their own (groups from their first position): a
 * prefix to store.
 */
export function rowKeys(
  stored: Stored,
  length: number,
  row: number,
  skip: number,
  positions: number,
  q: KvQuantization,
) {
  const ofRow = stored.map((t) => mx.slice(t, [row, 0, 0], [row + 1, t.shape[1]!, t.shape[2]!]));
  const keys = decodeKeys(ofRow, length, q, stored[1]!.dtype);
  const [, heads, , dim] = keys.shape as [number, number, number, number];
  return encodeKeys(mx.slice(keys, [0, 0, skip], [1, heads, skip + positions, dim]), q);
}
