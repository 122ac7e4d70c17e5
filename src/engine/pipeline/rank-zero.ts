// What rank 0 of a split model does the same way for a pipeline (front.ts) and for tensor
// parallel (tensor-parallel.ts): it stands for the whole model before the engine, runs the ends
// of the model itself, numbers the cache sets it tells the other ranks about, forwards the
// batch's changes to them, keeps them hearing from it while idle, and tells them to stop.
import * as mx from "../../mlx";
import type { MxArray } from "../../mlx";
import type { AttentionCache, KVCache } from "../../models/cache";
import type { Adapter, AdapterMirror, LoraLayers } from "../../models/lora";
import type { DecoderModel, RemoteLayers } from "../../models/model";
import { Flag, Op, type Header } from "./protocol";
import { RankLostError } from "../../errors";

const { distributed } = mx;

export type MessageFields = Partial<Header> & Pick<Header, "op">;

export abstract class RankZeroFront implements RemoteLayers, AdapterMirror {
  readonly remote = this;
  readonly #ids = new WeakMap<KVCache[] | AttentionCache[], number>();
  readonly #batches = new WeakSet<KVCache[]>();
  readonly #whole = new WeakSet<KVCache[]>();
  #nextSet = 1;
  readonly #timer: ReturnType<typeof setInterval>;
  protected closed = false;
  /** Why the other ranks are out of reach, once a rank is lost (see loseRank). */
  protected lost?: string;
  /** This process's adaptable layers: a forward pass tells the other ranks each row's adapter. */
  protected lora?: LoraLayers;
  /** How the model is split (set by openPipeline): prompt cache files record it. */
  split = "";

  abstract readonly microBatches: number;
  /** The group as errors name it. */
  protected abstract readonly groupName: string;
  abstract arrive(...computed: MxArray[]): void;

  /** See PipelineFront; tensor parallel has nothing on its way back: what is built goes at once. */
  beforeArrival<T>(build: () => T): T {
    return build();
  }

  /** A message with no answer, sent now. */
  protected abstract post(fields: MessageFields, payload?: () => MxArray): void;
  /**
   * A message with `text` as its payload that every other rank answers: whether they all
   * said yes (false too when a rank is lost).
   */
  protected abstract everyRank(fields: MessageFields, text: Uint8Array): boolean;
  /** Shows the other ranks that this one is alive while the engine is idle. */
  protected abstract heartbeat(): void;
  /** A transfer with the other ranks failed: loseRank, saying how in the group's terms. */
  protected abstract lose(error: unknown): void;

  constructor(
    readonly local: DecoderModel,
    /** A rank silent this long ends the process (see the watchdog in src/mlx/distributed.ts). */
    readonly peerTimeoutMs: number,
  ) {
    // Idle, the other ranks would hear nothing and their watchdogs would stop them.
    this.#timer = setInterval(() => this.heartbeat(), peerTimeoutMs / 3);
    this.#timer.unref();
  }

  get numLayers() {
    return this.local.numLayers;
  }

  embed(ids: MxArray): MxArray {
    return this.local.embed(ids);
  }

  head(h: MxArray): MxArray {
    return this.local.head(h);
  }

  finalNorm(h: MxArray): MxArray {
    return this.local.finalNorm(h);
  }

  extend(prefill: KVCache[], batch: KVCache[]): void {
    this.post({ op: Op.extend, set: this.id(prefill), rows: this.id(batch) });
    this.#ids.delete(prefill);
    this.#batches.add(batch);
  }

  keepRows(batch: KVCache[], rows: number[]): void {
    // No payload for no rows: a receive of nothing would wait for bytes that never come.
    const list = rows.length > 0 ? () => mx.array(Int32Array.from(rows)) : undefined;
    this.post({ op: Op.keepRows, set: this.id(batch), rows: rows.length }, list);
  }

  rollback(batch: KVCache[], counts: number[]): void {
    this.post({ op: Op.rollback, set: this.id(batch), rows: counts.length }, () => mx.array(Int32Array.from(counts)));
  }

  savePrefix(entry: number, caches: KVCache[], row: number, skip: number, positions: number): void {
    this.post({ op: Op.savePrefix, entry, set: this.id(caches), rows: row, length: positions, width: skip });
  }

  restorePrefix(entry: number, caches: KVCache[], length: number, dropped: number): void {
    this.post({ op: Op.restorePrefix, entry, set: this.id(caches), length, width: dropped });
  }

  dropPrefix(entry: number): void {
    this.post({ op: Op.dropPrefix, entry });
  }

  /**
   * Answered, as a load is: the caller (cache-prompt) must not end, and so end the others,
   * before they have written their shares.
   */
  savePrefixFile(entry: number, file: string, save: string): boolean {
    return this.everyRank({ op: Op.savePrefixFile, entry }, utf8(JSON.stringify({ file, save })));
  }

  loadPrefixFile(entry: number, file: string, save: string): boolean {
    return this.everyRank({ op: Op.loadPrefixFile, entry }, utf8(JSON.stringify({ file, save })));
  }

  removePrefixFile(file: string): void {
    const text = utf8(JSON.stringify({ file }));
    this.post({ op: Op.removePrefixFile, rows: text.length }, () => mx.array(text));
  }

  /** Tells the other ranks each of the next forward pass's `rows`' adapter, and how it adapts them, where it uses any. */
  protected tellAdapters(rows: number): void {
    const ids = this.lora?.selectedIds;
    if (!ids) return;
    const flags = this.lora!.positionsApart ? Flag.apart : 0;
    this.post({ op: Op.adapters, rows, flags }, () => mx.array(Int32Array.from(ids)));
  }

  /** The other ranks load (and unload) their layers' share of every adapter this one does. */
  mirrorAdapters(lora: LoraLayers): void {
    this.lora = lora;
    lora.mirror = this;
  }

  /**
   * Tensor parallel's ranks each cut their slice of every layer from the same tensors this one
   * checked whole: where this one loaded, so do they (a pipeline asks them, see PipelineFront).
   */
  adapterLoaded(adapter: Adapter): boolean {
    const path = utf8(adapter.path);
    this.post({ op: Op.loadAdapter, entry: adapter.id, rows: path.length }, () => mx.array(path));
    return true;
  }

  adapterFreed(adapter: Adapter): void {
    this.post({ op: Op.freeAdapter, entry: adapter.id });
  }

  wholePass(caches: KVCache[]): void {
    this.#whole.add(caches);
  }

  /** Tensor parallel: every forward pass's hidden states are whole on rank 0 already. */
  returnLast(_caches: KVCache[]): void {}

  release(caches: KVCache[]): void {
    const set = this.#ids.get(caches);
    if (set === undefined || this.closed) return;
    this.post({ op: Op.release, set });
    this.#ids.delete(caches);
  }

  /** Tells every rank to stop; this one stops talking to them. */
  shutdown(): void {
    if (this.closed) return;
    clearInterval(this.#timer);
    this.post({ op: Op.shutdown });
    this.closed = true;
    // After a lost rank the watchdog stays armed (loseRank): it ends this process as the others.
    if (this.lost === undefined) distributed.disarmWatchdog();
  }

  /** Whether messages can still go: not shut down, and no rank lost. */
  protected get open(): boolean {
    return !this.closed && this.lost === undefined;
  }

  /** Throws unless messages can still go (see open). */
  protected ensureOpen(): void {
    if (this.closed) throw new Error(`${this.groupName} was shut down`);
    if (this.lost !== undefined) throw new RankLostError(this.lost);
  }

  /**
   * A forward pass failed, most often as the ring lost a rank under it: the other ranks are
   * somewhere in that step, so nothing more goes to them (a cancelled request's rows would wait
   * for an answer that never comes); the requests are told why.
   */
  stepFailed(error: Error): Error {
    if (this.open) this.lose(error);
    return this.lost === undefined ? error : new RankLostError(this.lost);
  }

  /**
   * A rank is gone (`lost` says how): requests fail from now on (a server says 503) until the
   * watchdog, armed here, ends this process too.
   */
  protected loseRank(lost: string): void {
    this.lost = lost;
    distributed.armWatchdog(this.peerTimeoutMs, `error: rank 0: ${lost}; stopping`);
  }

  /**
   * Whether a forward pass on `caches` is a decode step (a speculative one too) rather than a
   * prefill: a batch's caches are named by an extend before their first step.
   */
  protected isBatch(caches: KVCache[] | AttentionCache[]): boolean {
    return this.#batches.has(caches as KVCache[]);
  }

  /** Whether a forward pass on `caches` must give the whole model's hidden states back (see wholePass). */
  protected isWhole(caches: KVCache[] | AttentionCache[]): boolean {
    return this.#whole.has(caches as KVCache[]);
  }

  /** The number the other ranks know these caches by. */
  protected id(caches: KVCache[] | AttentionCache[]): number {
    let id = this.#ids.get(caches);
    if (id === undefined) {
      id = this.#nextSet++;
      this.#ids.set(caches, id);
    }
    return id;
  }
}

/** `text` as UTF-8 bytes (a message payload). */
export const utf8 = (text: string) => new TextEncoder().encode(text);
