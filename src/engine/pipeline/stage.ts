// A rank after the first: it holds a run of layers and their caches, and does what each
// message from the previous rank says, passing it on; the last rank sends decode steps'
// hidden states (and heartbeats) back to rank 0.
import * as mx from "../../mlx";
import type { MxArray } from "../../mlx";
import { BatchKVCache } from "../../models/batch-cache";
import type { KVCache, KvQuantization } from "../../models/cache";
import { cacheState, freeCaches, makeCaches, type DecoderModel } from "../../models/model";
import type { Stage } from "../../models/stage";
import {
  decodeHeader,
  encodeHeader,
  figureFields,
  Flag,
  headerInts,
  Op,
  type Header,
  type StageFigures,
} from "./protocol";

const { distributed } = mx;

export interface StageOptions {
  rank: number;
  size: number;
  stage: Stage;
  kvQuantization?: KvQuantization;
  peerTimeoutMs: number;
}

/** Serves messages until rank 0 says to stop. Throws when a peer is lost. */
export function serveStage(model: DecoderModel, o: StageOptions): void {
  const previous = o.rank - 1;
  const last = o.rank === o.size - 1;
  const next = last ? 0 : o.rank + 1;
  const sets = new Map<number, KVCache[]>();
  const figures: StageFigures = { computeMs: 0, waitMs: 0, sentBytes: 0, tokens: 0 };
  const seconds = Math.round(o.peerTimeoutMs / 1000);
  const silence = `error: rank ${o.rank}: no word from rank ${previous} for ${seconds} s (--peer-timeout); stopping`;
  let expected = 0;

  // Waits on the previous rank, under the watchdog.
  const receive = (shape: number[], dtype: mx.DtypeCode): MxArray => {
    const started = performance.now();
    distributed.armWatchdog(o.peerTimeoutMs, silence);
    // Off the CPU until the bytes are there: the ring's own receive would spin meanwhile.
    distributed.waitReadable(o.peerTimeoutMs);
    const a = distributed.recv(shape, dtype, previous);
    mx.evaluate(a);
    distributed.disarmWatchdog();
    figures.waitMs += performance.now() - started;
    return a;
  };
  // Sends to the next rank, under the watchdog too: a peer that stops reading blocks a send.
  const send = (arrays: MxArray[]) => {
    distributed.armWatchdog(
      o.peerTimeoutMs,
      `error: rank ${o.rank}: rank ${next} stopped taking data for ${seconds} s (--peer-timeout); stopping`,
    );
    let sent: MxArray | undefined;
    for (const a of arrays) {
      sent = distributed.send(sent ? distributed.after(a, sent) : a, next);
      figures.sentBytes += a.nbytes;
    }
    mx.evaluate(sent!);
    distributed.disarmWatchdog();
  };
  const passOn = (h: Header, payload?: MxArray) => {
    if (!last) send(payload ? [encodeHeader(h), payload] : [encodeHeader(h)]);
  };
  const cachesOf = (h: Header): KVCache[] => {
    let caches = sets.get(h.set);
    if (!caches) {
      caches =
        h.flags & Flag.decode
          ? Array.from({ length: model.numLayers }, () => new BatchKVCache(o.kvQuantization))
          : makeCaches(model, { windowed: false, quantization: o.kvQuantization });
      sets.set(h.set, caches);
    }
    return caches;
  };

  for (;;) {
    const stop = mx.scope(() => {
      const h = decodeHeader(receive([headerInts], mx.Dtype.int32));
      if (h.seq !== expected) throw new Error(`rank ${o.rank}: message ${h.seq} arrived when ${expected} was due`);
      expected++;
      switch (h.op) {
        case Op.forward: {
          const hidden = receive([h.rows, h.length, h.width], h.dtype);
          const started = performance.now();
          const caches = cachesOf(h);
          const out = model.layers(hidden, caches, o.stage.start, o.stage.end);
          mx.evaluate(out, ...cacheState(caches));
          figures.computeMs += performance.now() - started;
          figures.tokens += h.rows * h.length;
          if (!last) passOn(h, out);
          else if (h.flags & Flag.decode) send([out]);
          return false;
        }
        case Op.extend: {
          // A one-token prompt sent no prefill (its token is the first decode input): it joins empty.
          const prefill = cachesOf({ ...h, flags: Flag.prefill });
          const batch = sets.get(h.rows) ?? cachesOf({ ...h, set: h.rows, flags: Flag.decode });
          batch.forEach((b, layer) => (b as BatchKVCache).extend(prefill[layer]!));
          freeCaches(prefill);
          sets.delete(h.set);
          passOn(h);
          return false;
        }
        case Op.keepRows: {
          const rows = h.rows > 0 ? receive([h.rows], mx.Dtype.int32) : undefined;
          for (const c of sets.get(h.set) ?? []) (c as BatchKVCache).keepRows(rows?.toArray() ?? []);
          passOn(h, rows);
          return false;
        }
        case Op.release:
          freeCaches(sets.get(h.set) ?? []);
          sets.delete(h.set);
          passOn(h);
          return false;
        case Op.heartbeat: {
          const table = receive([h.rows, h.width], mx.Dtype.float32);
          const row = mx.array(
            Float32Array.from(figureFields, (f) => figures[f]),
            [1, h.width],
          );
          const filled = mx.sliceUpdate(table, row, [o.rank, 0], [o.rank + 1, h.width]);
          if (last) send([filled]);
          else passOn(h, filled);
          return false;
        }
        case Op.shutdown:
          passOn(h);
          return true;
        default:
          throw new Error(`rank ${o.rank}: unknown message ${h.op}`);
      }
    });
    if (stop) break;
  }
  for (const caches of sets.values()) freeCaches(caches);
}
