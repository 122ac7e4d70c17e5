// What travels between the ranks of a pipeline. A receive must know its shape in advance, so
// every message is a fixed header (eight int32) and then, where the header says so, a payload
// whose shape it gives: hidden states in the model's activation dtype, or a list of rows.
import * as mx from "../../mlx";
import type { MxArray } from "../../mlx";

export const Op = {
  /** Hidden states [rows, length, width] through the next layers; `flags` says prefill or decode. */
  forward: 1,
  /** Prefill caches `set` join batch caches `target` as their last row. */
  extend: 2,
  /** Batch caches `set` keep the `rows` rows listed in the payload (int32, none when 0), in that order. */
  keepRows: 3,
  /** Caches `set` are dropped (a cancelled prefill, or the batch at the end). */
  release: 4,
  /** Nothing to do but pass it on: the last rank sends it back to rank 0, with each stage's figures. */
  heartbeat: 5,
  /** Every rank stops. */
  shutdown: 6,
} as const;
export type OpCode = (typeof Op)[keyof typeof Op];

export const Flag = { prefill: 1, decode: 2 } as const;

export interface Header {
  op: OpCode;
  /** The message's number: each rank checks it gets them all, in order. */
  seq: number;
  /** Which caches: a micro-batch (the decode batch, or one prompt's prefill). */
  set: number;
  rows: number;
  length: number;
  flags: number;
  dtype: mx.DtypeCode;
  width: number;
}

export const headerInts = 8;
export const headerBytes = headerInts * 4;

export function encodeHeader(h: Header): MxArray {
  return mx.array(Int32Array.from([h.op, h.seq, h.set, h.rows, h.length, h.flags, h.dtype, h.width]));
}

/**
 * A header and its payload as one array of bytes, for one send: the ring's socket thread wakes
 * once per message, not twice. The receiver still reads the header first, then the payload: a
 * TCP connection is a stream of bytes, whatever sizes they were sent in.
 */
export function encodeMessage(h: Header, payload?: MxArray): MxArray {
  const header = encodeHeader(h);
  if (!payload) return header;
  return mx.concatenate([mx.view(header, mx.Dtype.uint8), mx.reshape(mx.view(payload, mx.Dtype.uint8), [-1])], 0);
}

export function decodeHeader(a: MxArray): Header {
  const [op, seq, set, rows, length, flags, dtype, width] = a.toArray();
  return { op, seq, set, rows, length, flags, dtype, width } as Header;
}

/** Figures per stage, carried back to rank 0 by heartbeats: a float32 row per rank. */
export interface StageFigures {
  /** Milliseconds computing its layers (with receiving their input and sending their result on: one evaluation). */
  computeMs: number;
  /** Milliseconds waiting for the previous rank's messages. */
  waitMs: number;
  /** Bytes it sent to the next rank. */
  sentBytes: number;
  /** Token positions it computed (prefill and decode). */
  tokens: number;
}

export const figureFields = ["computeMs", "waitMs", "sentBytes", "tokens"] as const;

/**
 * The share of a stage's time spent computing rather than waiting for work (since it started):
 * near 1 when the ranks compute at once, 1 / ranks when they take turns.
 */
export const busyFraction = (s: StageFigures): number =>
  s.computeMs + s.waitMs > 0 ? s.computeMs / (s.computeMs + s.waitMs) : 0;
