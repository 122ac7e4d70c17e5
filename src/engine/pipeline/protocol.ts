// What travels between the ranks of a pipeline. A receive must know its shape in advance, so
// every message is a fixed header (nine int32) and then, where the header says so, a payload
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
  /**
   * Prefix-cache entry `entry` keeps `length` positions of row `rows` of caches `set`, after
   * `width` padding columns: each rank its own layers' keys and values (rank 0 decides, and
   * evicts with dropPrefix).
   */
  savePrefix: 7,
  /** Prefill caches `set` start from entry `entry`: `length` positions, of which `width` were dropped (a rotating cache). */
  restorePrefix: 8,
  /** Entry `entry` is evicted from the prefix cache. */
  dropPrefix: 9,
  /** Batch caches `set` take back the last counts[b] positions of each of their `rows` rows (payload: int32 counts). */
  rollback: 10,
  /** Adapter `entry` is loaded from the directory whose path is the payload (`rows` bytes of UTF-8): each rank its layers' share. */
  loadAdapter: 11,
  /** Adapter `entry` is unloaded. */
  freeAdapter: 12,
  /** The next forward pass adapts each of its `rows` rows by the adapter the payload names (int32 ids, 0: none). */
  adapters: 13,
  /**
   * Prefix-cache entry `entry` goes to disk: each rank writes its layers' share to
   * shareFile(file, rank), tagged `save`. Payload and answers as loadPrefixFile's (1: not written).
   */
  savePrefixFile: 14,
  /**
   * Entry `entry` is read from each rank's share of the file in the payload: `width` bytes, one
   * per rank, each rank setting its own to 1 when it cannot (then it holds nothing), then the
   * JSON {file, save}. The answers come back to rank 0.
   */
  loadPrefixFile: 15,
  /** The file in the payload (JSON {file}) was removed: each rank removes its share. */
  removePrefixFile: 16,
  /**
   * One layer of a prefill chunk is done (a header alone, outside the numbering: seq -1). A
   * prefill chunk can outlast the peer timeout on a busy machine, so the rank computing it says
   * so after each layer; each rank passes these on, and the last rank sends rank 0 its own rank
   * number alone (an int32: its messages to rank 0 have no header; rank 0 only counts them). Rank 0 thus gets one per
   * layer of the model for each chunk it sends, wherever it was computed.
   */
  progress: 17,
  /**
   * Rank 0 is alive, and waits for the last rank (a header alone, outside the numbering: seq -1).
   * While a later rank works through a backlog of prefill chunks, the ranks before it would
   * hear nothing: rank 0 sends one after each third of the peer timeout it waits without a
   * word, and each rank passes it on but the last (rank 0 hears that one's progress meanwhile).
   */
  keepalive: 18,
} as const;
export type OpCode = (typeof Op)[keyof typeof Op];

/**
 * A forward pass's kind: a prefill's result stays on the ranks; a decode step's, or a whole
 * pass's (embeddings), comes back to rank 0. A prefill marked `last` (a prompt's last chunk)
 * sends its last position back, after its progress messages: the first token is sampled from it.
 */
// apart (with Op.adapters): the next pass's positions are adapted each on its own (LoraLayers.run's positionsApart).
export const Flag = { prefill: 1, decode: 2, whole: 4, last: 8, apart: 16 } as const;

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
  /** A prefix-cache entry (the prefix ops). */
  entry: number;
}

/** Message `seq` with `fields` set and the other fields 0. */
export const headerOf = (fields: Partial<Header> & Pick<Header, "op">, seq: number): Header => ({
  set: 0,
  rows: 0,
  length: 0,
  flags: 0,
  dtype: 0,
  width: 0,
  entry: 0,
  ...fields,
  seq,
});

/** Op.progress's header: unnumbered, so that any rank may send it between two messages. */
export const progressHeader: Header = headerOf({ op: Op.progress }, -1);

/** Op.keepalive's header: unnumbered, as progressHeader. */
export const keepaliveHeader: Header = headerOf({ op: Op.keepalive }, -1);

export const headerInts = 9;
export const headerBytes = headerInts * 4;

export function encodeHeader(h: Header): MxArray {
  return mx.array(Int32Array.from([h.op, h.seq, h.set, h.rows, h.length, h.flags, h.dtype, h.width, h.entry]));
}

/**
 * A header and its payload as one array of bytes, for one send where the ring allows (see
 * sendMessage): the ring's socket thread wakes once per message, not twice.
 */
export function encodeMessage(h: Header, payload?: MxArray): MxArray {
  const header = encodeHeader(h);
  if (!payload) return header;
  return mx.concatenate([mx.view(header, mx.Dtype.uint8), mx.reshape(mx.view(payload, mx.Dtype.uint8), [-1])], 0);
}

/**
 * Message `h` and its payload to rank `dst`, unevaluated: sent so that the receiver can take the
 * header, then the payload, over however many connections the ring has (see distributed.sendMessage).
 */
export const sendMessage = (h: Header, dst: number, payload?: MxArray): MxArray =>
  mx.distributed.sendMessage(encodeMessage(h, payload), headerBytes, dst);

/** A payload of UTF-8 bytes (a path, a JSON object) as text. */
export const payloadText = (bytes: ArrayLike<number>): string => new TextDecoder().decode(Uint8Array.from(bytes));

/** A header from its received array, or from its bytes (read straight from the connection). */
export function decodeHeader(a: MxArray | Uint8Array): Header {
  const ints = a instanceof Uint8Array ? new Int32Array(a.slice(0, headerBytes).buffer) : a.toArray();
  const [op, seq, set, rows, length, flags, dtype, width, entry] = ints;
  return { op, seq, set, rows, length, flags, dtype, width, entry } as Header;
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
  /** Decode steps whose graph it built while waiting for their header, and such guesses another message proved wrong. */
  builtAhead: number;
  guessedWrong: number;
  /** Its MLX memory: in use as the heartbeat passed, and the most since it started (bytes). */
  activeBytes: number;
  peakBytes: number;
}

export const figureFields = [
  "computeMs",
  "waitMs",
  "sentBytes",
  "tokens",
  "builtAhead",
  "guessedWrong",
  "activeBytes",
  "peakBytes",
] as const;

/**
 * The share of a stage's time spent computing rather than waiting for work (since it started):
 * near 1 when the ranks compute at once, 1 / ranks when they take turns.
 */
export const busyFraction = (s: StageFigures): number =>
  s.computeMs + s.waitMs > 0 ? s.computeMs / (s.computeMs + s.waitMs) : 0;
