// A rank after the first: it holds a run of layers and their caches, and does what each
// message from the previous rank says, passing it on; the last rank sends decode steps'
// hidden states (and heartbeats) back to rank 0.
import * as mx from "../../mlx";
import type { MxArray } from "../../mlx";
import { cacheState, type DecoderModel } from "../../models/model";
import { loadAdapter, type Adapter, type LoraLayers } from "../../models/lora";
import type { Stage } from "../../models/stage";
import { CacheSets, type CacheOptions } from "./cache-sets";
import {
  decodeHeader,
  encodeMessage,
  figureFields,
  Flag,
  headerInts,
  Op,
  payloadText,
  type Header,
  type StageFigures,
} from "./protocol";

const { distributed } = mx;

export interface StageOptions {
  rank: number;
  size: number;
  stage: Stage;
  /** As RemoteLayers.split: this rank's prompt cache shares record it. */
  split: string;
  caches: CacheOptions;
  /** This rank's adaptable layers: it loads its share of the adapters rank 0 loads. */
  lora: LoraLayers;
  peerTimeoutMs: number;
}

/** Serves messages until rank 0 says to stop. Throws when a peer is lost. */
export function serveStage(model: DecoderModel, o: StageOptions): void {
  const previous = o.rank - 1;
  const last = o.rank === o.size - 1;
  const next = last ? 0 : o.rank + 1;
  const sets = new CacheSets(model, o.caches, { rank: o.rank, split: o.split });
  const figures: StageFigures = { computeMs: 0, waitMs: 0, sentBytes: 0, tokens: 0 };
  const seconds = Math.round(o.peerTimeoutMs / 1000);
  const silence = `error: rank ${o.rank}: no word from rank ${previous} for ${seconds} s (--peer-timeout); stopping`;
  const stopped = `error: rank ${o.rank}: rank ${next} stopped taking data for ${seconds} s (--peer-timeout); stopping`;
  let expected = 0;
  const adapters = new Map<number, Adapter>();
  /** The next forward pass's adapter per row (Op.adapters). */
  let adapted: (Adapter | undefined)[] | undefined;

  // Waits off the CPU until the previous rank's bytes are there (the ring's own receive would
  // spin meanwhile), under the watchdog.
  const waitForData = () => {
    const started = performance.now();
    distributed.armWatchdog(o.peerTimeoutMs, silence);
    distributed.waitReadable(o.peerTimeoutMs);
    figures.waitMs += performance.now() - started;
  };
  const receive = (shape: number[], dtype: mx.DtypeCode): MxArray => {
    waitForData();
    const a = distributed.recv(shape, dtype, previous);
    mx.evaluate(a);
    distributed.disarmWatchdog();
    return a;
  };
  // A message to the next rank (the last rank's to rank 0 have no header), unevaluated.
  const sendOn = (h: Header | undefined, payload?: MxArray): MxArray => {
    const message = h ? encodeMessage(h, payload) : payload!;
    figures.sentBytes += message.nbytes;
    return distributed.send(message, next);
  };
  // Evaluates `arrays` under the watchdog too: a peer that stops reading blocks a send.
  const run = (arrays: MxArray[]) => {
    distributed.armWatchdog(o.peerTimeoutMs, stopped);
    mx.evaluate(...arrays);
    distributed.disarmWatchdog();
  };
  const passOn = (h: Header, payload?: MxArray) => {
    if (!last) run([sendOn(h, payload)]);
  };
  for (;;) {
    const stop = mx.scope(() => {
      const h = decodeHeader(receive([headerInts], mx.Dtype.int32));
      if (h.seq !== expected) throw new Error(`rank ${o.rank}: message ${h.seq} arrived when ${expected} was due`);
      expected++;
      switch (h.op) {
        case Op.forward: {
          // The hidden states follow their header: receiving them, running the layers and
          // sending the result on are one evaluation, without a return to JavaScript between.
          waitForData();
          const hidden = distributed.recv([h.rows, h.length, h.width], h.dtype, previous);
          const started = performance.now();
          const caches = sets.of(h.set, (h.flags & Flag.decode) !== 0);
          const forward = () => model.layers(hidden, caches, o.stage.start, o.stage.end);
          const out = adapted ? o.lora.run(adapted, forward) : forward();
          adapted = undefined;
          // The last rank sends back decode steps and whole passes (embeddings) alone: a
          // prefill's result only fills caches.
          const back = (h.flags & (Flag.decode | Flag.whole)) !== 0;
          const onward = !last ? sendOn(h, out) : back ? sendOn(undefined, out) : out;
          run([onward, ...cacheState(caches)]);
          figures.computeMs += performance.now() - started;
          figures.tokens += h.rows * h.length;
          return false;
        }
        case Op.extend:
          sets.extend(h.set, h.rows);
          passOn(h);
          return false;
        case Op.keepRows: {
          const rows = h.rows > 0 ? receive([h.rows], mx.Dtype.int32) : undefined;
          sets.keepRows(h.set, rows?.toArray() ?? []);
          passOn(h, rows);
          return false;
        }
        case Op.release:
          sets.release(h.set);
          passOn(h);
          return false;
        case Op.rollback: {
          const counts = receive([h.rows], mx.Dtype.int32);
          sets.rollback(h.set, counts.toArray());
          passOn(h, counts);
          return false;
        }
        case Op.savePrefix:
          sets.savePrefix(h.entry, h.set, h.rows, h.width, h.length);
          passOn(h);
          return false;
        case Op.restorePrefix:
          sets.restorePrefix(h.entry, h.set, h.length, h.width);
          passOn(h);
          return false;
        case Op.dropPrefix:
          sets.dropPrefix(h.entry);
          passOn(h);
          return false;
        case Op.loadAdapter: {
          const path = receive([h.rows], mx.Dtype.uint8);
          adapters.set(h.entry, loadAdapter(payloadText(path.toArray()), o.lora));
          passOn(h, path);
          return false;
        }
        case Op.freeAdapter:
          adapters.get(h.entry)?.free();
          adapters.delete(h.entry);
          passOn(h);
          return false;
        case Op.adapters: {
          const ids = receive([h.rows], mx.Dtype.int32);
          adapted = ids.toArray().map((id) => adapters.get(id));
          passOn(h, ids);
          return false;
        }
        case Op.savePrefixFile: {
          const payload = receive([h.rows], mx.Dtype.uint8);
          const { file, save } = JSON.parse(payloadText(payload.toArray()));
          sets.savePrefixFile(h.entry, file, save);
          passOn(h, payload);
          return false;
        }
        case Op.loadPrefixFile: {
          // Our answer in our byte; the last rank brings them all back to rank 0.
          const answers = Uint8Array.from(receive([h.rows], mx.Dtype.uint8).toArray());
          const { file, save } = JSON.parse(payloadText(answers.subarray(h.width)));
          if (!sets.loadPrefixFile(h.entry, file, save)) answers[o.rank] = 1;
          if (last) run([sendOn(undefined, mx.array(answers))]);
          else passOn(h, mx.array(answers));
          return false;
        }
        case Op.removePrefixFile: {
          const payload = receive([h.rows], mx.Dtype.uint8);
          sets.removePrefixFile(JSON.parse(payloadText(payload.toArray())).file);
          passOn(h, payload);
          return false;
        }
        case Op.heartbeat: {
          const table = receive([h.rows, h.width], mx.Dtype.float32);
          const row = mx.array(
            Float32Array.from(figureFields, (f) => figures[f]),
            [1, h.width],
          );
          const filled = mx.sliceUpdate(table, row, [o.rank, 0], [o.rank + 1, h.width]);
          if (last) run([sendOn(undefined, filled)]);
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
  sets.free();
  for (const adapter of adapters.values()) adapter.free();
}
