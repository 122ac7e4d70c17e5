// Tensor parallel (--tensor-parallel): every rank holds a slice of every layer (src/models/shard.ts)
// and all of them run each forward pass together, adding up their partial products with
// all_sum twice per layer. Rank 0 runs the engine as alone; what its batch does (a forward pass
// on which caches, rows joining or leaving the batch) it tells the other ranks first, by an
// all_sum to which they add zeros: a broadcast on the same ring. It sends the embedded hidden
// states, not the token ids, so the other ranks need neither the embedding nor the output layer.
import * as mx from "../../mlx";
import type { MxArray } from "../../mlx";
import type { AttentionCache, KVCache } from "../../models/cache";
import type { ModelConfig } from "../../models/config";
import type { LoraLayers } from "../../models/lora";
import { AdapterShares } from "./adapter-shares";
import { cacheState, type DecoderModel } from "../../models/model";
import { CacheSets, type CacheOptions } from "./cache-sets";
import type { PipelineFigures } from "./front";
import { decodeHeader, encodeHeader, Flag, headerInts, headerOf, Op, payloadText } from "./protocol";
import { RankZeroFront, type MessageFields } from "./rank-zero";

const { distributed } = mx;

/**
 * Every evaluation here holds all_sums: one that a lost rank leaves waiting for ever throws instead,
 * so that rank 0 can tell its clients why their streams end (and the other ranks stop sooner).
 */
const evaluate = distributed.evaluateUnlessPeerLost;

/** Rank 0's model: its slice of the layers, run in step with the other ranks'. */
export class TensorParallelFront extends RankZeroFront implements DecoderModel {
  #seq = 0;
  #tokens = 0;
  #summedBytes = 0;
  protected readonly groupName = "the tensor-parallel group";

  constructor(
    local: DecoderModel,
    /** The whole model's config (the local layers have their shard's heads). */
    readonly config: ModelConfig,
    readonly size: number,
    peerTimeoutMs: number,
  ) {
    super(local, peerTimeoutMs);
  }

  /**
   * Every rank's layers on the same hidden states. Evaluated here: each rank must run its
   * all_sums in the same order, so none may wait in a graph behind the next message.
   */
  layers(h: MxArray, caches: AttentionCache[]): MxArray {
    const [rows, length, width] = h.shape as [number, number, number];
    const decode = this.isBatch(caches);
    // Each rank adapts its slice of every layer by the rows' adapters.
    this.tellAdapters(rows);
    const fields = { op: Op.forward, set: this.id(caches), rows, length, width, dtype: h.dtype };
    const flags = decode ? Flag.decode : this.isWhole(caches) ? Flag.whole : Flag.prefill;
    return this.#step({ ...fields, flags }, h, (hidden) => {
      const out = this.local.layers(hidden!, caches);
      evaluate(out, ...cacheState(caches as KVCache[]));
      this.#tokens += rows * length;
      // Two sums of float32 partial products a layer (the header and hidden states: #step).
      this.#summedBytes += 2 * this.numLayers * rows * length * width * 4;
      return out;
    });
  }

  /** Every rank runs every step together: there is no ring of stages to keep busy. */
  readonly microBatches = 1;

  /** layers() returns its hidden states evaluated: nothing is left on its way back. */
  arrive(): void {}

  /**
   * As a pipeline's, with no stages: `sentBytes` are the bytes rank 0 put into all_sum, and the
   * waits inside each layer's all_sum are part of its compute (nothing comes back round a ring).
   */
  get figures(): PipelineFigures {
    return {
      ranks: this.size,
      stages: [],
      sentBytes: this.#summedBytes,
      tokens: this.#tokens,
      waitMs: 0,
      microBatches: 1,
      maxInFlight: 1,
      lost: this.lost,
    };
  }

  protected heartbeat(): void {
    this.post({ op: Op.heartbeat });
  }

  /** A message with no answer. Lost peers end the process (the watchdog); nothing is thrown here. */
  protected post(fields: MessageFields, payload?: () => MxArray): void {
    if (!this.open) return;
    try {
      mx.scope(() => this.#step(fields, payload?.(), (p) => p && evaluate(p)));
    } catch {
      // #step noted the loss (loseRank).
    }
  }

  /** The answers are an all_sum of each rank's no (1) or yes (0). */
  protected everyRank(fields: MessageFields, text: Uint8Array): boolean {
    if (!this.open) return false;
    try {
      return mx.scope(() =>
        this.#step({ ...fields, rows: text.length }, mx.array(text), (payload) => {
          evaluate(payload!);
          this.#summedBytes += 4;
          const noes = distributed.allSum(mx.zeros([1], mx.Dtype.int32));
          evaluate(noes);
          return noes.toArray()[0] === 0;
        }),
      );
    } catch {
      // #step noted the loss (loseRank).
      return false;
    }
  }

  /**
   * Evaluates `sums`, collectives every rank joins outside a message (a DoRA adapter's norms
   * at load), under the watchdog like a message.
   */
  evaluateTogether(...sums: MxArray[]): void {
    this.ensureOpen();
    this.#watched(() => evaluate(...sums));
    for (const sum of sums) this.#summedBytes += sum.nbytes;
  }

  /**
   * Broadcasts the header, then the payload, and runs `then` on the payload as every rank
   * receives it, under the watchdog: a rank that stops answering stops this one in time.
   */
  #step<T>(fields: MessageFields, payload: MxArray | undefined, then: (payload: MxArray | undefined) => T): T {
    this.ensureOpen();
    const header = encodeHeader(headerOf(fields, this.#seq++));
    this.#summedBytes += header.nbytes + (payload?.nbytes ?? 0);
    return this.#watched(() => {
      evaluate(distributed.allSum(header));
      return then(payload && distributed.allSum(payload));
    });
  }

  /**
   * Runs `collectives` under the watchdog: it ends this process when the other ranks send
   * nothing for --peer-timeout (a long forward pass whose all_sums keep coming is not silence).
   */
  #watched<T>(collectives: () => T): T {
    const seconds = Math.round(this.peerTimeoutMs / 1000);
    distributed.armWatchdog(
      this.peerTimeoutMs,
      `error: rank 0: no answer from ${peers(this.size)} for ${seconds} s (--peer-timeout); stopping`,
    );
    try {
      const result = collectives();
      distributed.disarmWatchdog();
      return result;
    } catch (error) {
      this.lose(error);
      throw error;
    }
  }

  protected lose(error: unknown): void {
    this.loseRank(`lost ${peers(this.size)} of the tensor-parallel group: ${(error as Error).message}`);
  }
}

const peers = (size: number) => (size === 2 ? "rank 1" : `ranks 1-${size - 1}`);

export interface ShardOptions {
  rank: number;
  /** As RemoteLayers.split: this rank's prompt cache shares record it. */
  split: string;
  caches: CacheOptions;
  /** This rank's adaptable layers: it loads its slice of the adapters rank 0 loads. */
  lora: LoraLayers;
  peerTimeoutMs: number;
}

/** A rank other than 0: runs what rank 0 says, until it says to stop. Throws when a peer is lost. */
export function serveShard(model: DecoderModel, o: ShardOptions): void {
  const sets = new CacheSets(model, o.caches, { rank: o.rank, split: o.split });
  const seconds = Math.round(o.peerTimeoutMs / 1000);
  const silence = `error: rank ${o.rank}: no word from rank 0 for ${seconds} s (--peer-timeout); stopping`;
  // Our share of rank 0's broadcast: zeros.
  const receive = (shape: number[], dtype: mx.DtypeCode) => {
    const a = distributed.allSum(mx.zeros(shape, dtype));
    evaluate(a);
    return a;
  };
  let expected = 0;
  const adapters = new AdapterShares(o.lora);
  for (;;) {
    const stop = mx.scope(() => {
      distributed.armWatchdog(o.peerTimeoutMs, silence);
      // Off the CPU until rank 0 speaks: the ring's own receive would spin meanwhile.
      distributed.waitReadable(o.peerTimeoutMs);
      const h = decodeHeader(receive([headerInts], mx.Dtype.int32));
      if (h.seq !== expected) throw new Error(`rank ${o.rank}: message ${h.seq} arrived when ${expected} was due`);
      expected++;
      switch (h.op) {
        case Op.forward: {
          const hidden = receive([h.rows, h.length, h.width], h.dtype);
          const caches = sets.of(h.set, (h.flags & Flag.decode) !== 0, (h.flags & Flag.whole) !== 0);
          evaluate(
            adapters.run(() => model.layers(hidden, caches)),
            ...cacheState(caches),
          );
          adapters.clear();
          break;
        }
        case Op.loadAdapter:
          adapters.load(h.entry, payloadText(receive([h.rows], mx.Dtype.uint8).toArray()));
          break;
        case Op.freeAdapter:
          adapters.free(h.entry);
          break;
        case Op.adapters:
          adapters.select(receive([h.rows], mx.Dtype.int32).toArray(), (h.flags & Flag.apart) !== 0);
          break;
        case Op.extend:
          sets.extend(h.set, h.rows);
          break;
        case Op.keepRows:
          sets.keepRows(h.set, h.rows > 0 ? receive([h.rows], mx.Dtype.int32).toArray() : []);
          break;
        case Op.release:
          sets.release(h.set);
          break;
        case Op.rollback:
          sets.rollback(h.set, receive([h.rows], mx.Dtype.int32).toArray());
          break;
        case Op.savePrefix:
          sets.savePrefix(h.entry, h.set, h.rows, h.width, h.length);
          break;
        case Op.restorePrefix:
          sets.restorePrefix(h.entry, h.set, h.length, h.width);
          break;
        case Op.dropPrefix:
          sets.dropPrefix(h.entry);
          break;
        case Op.savePrefixFile:
        case Op.loadPrefixFile: {
          const { file, save } = JSON.parse(payloadText(receive([h.rows], mx.Dtype.uint8).toArray()));
          const saving = h.op === Op.savePrefixFile;
          const done = saving ? sets.savePrefixFile(h.entry, file, save) : sets.loadPrefixFile(h.entry, file, save);
          const no = done ? 0 : 1;
          evaluate(distributed.allSum(mx.array(Int32Array.from([no]))));
          break;
        }
        case Op.removePrefixFile:
          sets.removePrefixFile(JSON.parse(payloadText(receive([h.rows], mx.Dtype.uint8).toArray())).file);
          break;
        case Op.heartbeat:
          break;
        case Op.shutdown:
          return true;
        default:
          throw new Error(`rank ${o.rank}: unknown message ${h.op}`);
      }
      distributed.disarmWatchdog();
      return false;
    });
    if (stop) break;
  }
  distributed.disarmWatchdog();
  sets.free();
  adapters.freeAll();
}
