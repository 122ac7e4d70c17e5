// A rank after the first: it holds a run of layers and their caches, and does what each
// message from the previous rank says, passing it on; the last rank sends decode steps'
// hidden states (and heartbeats) back to rank 0.
import * as mx from "../../mlx";
import type { MxArray } from "../../mlx";
import { BatchKVCache } from "../../models/batch-cache";
import { cacheState, type DecoderModel } from "../../models/model";
import type { LoraLayers } from "../../models/lora";
import { AdapterShares } from "./adapter-shares";
import type { Stage } from "../../models/stage";
import { checkpoint, type CacheCheckpoint } from "../../models/cache-checkpoint";
import type { KVCache } from "../../models/cache";
import { CacheSets, type CacheOptions } from "./cache-sets";
import { memoryFigures } from "../device";
import {
  decodeHeader,
  figureFields,
  Flag,
  headerBytes,
  headerInts,
  Op,
  payloadText,
  progressHeader,
  sendMessage,
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
  const figures: StageFigures = {
    computeMs: 0,
    waitMs: 0,
    sentBytes: 0,
    tokens: 0,
    builtAhead: 0,
    guessedWrong: 0,
    activeBytes: 0,
    peakBytes: 0,
  };
  const seconds = Math.round(o.peerTimeoutMs / 1000);
  const silence = `error: rank ${o.rank}: no word from rank ${previous} for ${seconds} s (--peer-timeout); stopping`;
  const stopped = `error: rank ${o.rank}: rank ${next} stopped taking data for ${seconds} s (--peer-timeout); stopping`;
  let expected = 0;
  const adapters = new AdapterShares(o.lora);

  // Waits off the CPU until the previous rank's bytes are there (the ring's own receive would
  // spin meanwhile), under the watchdog.
  const waitForData = () => {
    const started = performance.now();
    distributed.armWatchdog(o.peerTimeoutMs, silence);
    distributed.waitReadable(o.peerTimeoutMs);
    figures.waitMs += performance.now() - started;
  };
  // The previous rank's next array, once waitForData found its bytes there (still watched).
  const take = (shape: number[], dtype: mx.DtypeCode): MxArray => {
    const a = distributed.recv(shape, dtype, previous);
    mx.evaluate(a);
    return a;
  };
  const receive = (shape: number[], dtype: mx.DtypeCode): MxArray => {
    waitForData();
    const a = take(shape, dtype);
    distributed.disarmWatchdog();
    return a;
  };
  // The next message's header: read by this thread from the ring's connection where it can be,
  // not received through MLX (an evaluation, and its hand-offs to MLX's stream and socket
  // threads and back, for 36 bytes, once a message on every rank).
  const receiveHeader = (): Header => {
    waitForData();
    const h = decodeHeader(distributed.read(headerBytes, previous) ?? take([headerInts], mx.Dtype.int32));
    distributed.disarmWatchdog();
    return h;
  };
  // A message to the next rank (the last rank's to rank 0 have no header), unevaluated.
  const sendOn = (h: Header | undefined, payload?: MxArray): MxArray =>
    h ? sendMessage(h, next, payload) : distributed.send(payload!, next);
  // Evaluates `arrays` under the watchdog too: a peer that stops reading blocks a send.
  const run = (arrays: MxArray[]) => {
    distributed.armWatchdog(o.peerTimeoutMs, stopped);
    mx.evaluate(...arrays);
    distributed.disarmWatchdog();
  };
  const send = (message: MxArray) => {
    run([message]);
    figures.sentBytes += message.nbytes;
  };
  const passOn = (h: Header, payload?: MxArray) => {
    if (!last) send(sendOn(h, payload));
  };
  // A forward pass's graph, unevaluated: receiving the hidden states, running the layers and
  // sending the result on are then one evaluation, without a return to JavaScript between.
  const buildForward = (h: Header): Forward => {
    const hidden = distributed.recv([h.rows, h.length, h.width], h.dtype, previous);
    const caches = sets.of(h.set, (h.flags & Flag.decode) !== 0, (h.flags & Flag.whole) !== 0);
    const forward = () => model.layers(hidden, caches, o.stage.start, o.stage.end);
    const out = adapters.run(forward);
    // The last rank sends back decode steps and whole passes (embeddings) alone: a prefill's
    // result only fills caches.
    const back = (h.flags & (Flag.decode | Flag.whole)) !== 0;
    const onward = !last ? sendOn(h, out) : back ? sendOn(undefined, out) : out;
    return { header: h, caches, onward, sentBytes: onward === out ? 0 : onward.nbytes };
  };
  // A prefill chunk runs a layer at a time, each under its own watchdog arm, and after each the
  // next rank hears from this one (Op.progress): a chunk that outlasts the peer timeout on a busy
  // machine is then not silence, while a stopped rank still is. Decode steps stay one evaluation.
  const tellProgress = (): MxArray =>
    last ? distributed.send(mx.array(Int32Array.of(o.rank)), next) : sendOn(progressHeader);
  const prefill = (h: Header): void => {
    const hidden = receive([h.rows, h.length, h.width], h.dtype);
    const started = performance.now();
    const caches = sets.of(h.set, false);
    let out = hidden;
    for (let layer = o.stage.start; layer < o.stage.end; layer++) {
      const input = out;
      out = adapters.run(() => model.layers(input, caches, layer, layer + 1));
      const told = tellProgress();
      run([out, ...caches[layer]!.state, told]);
      figures.sentBytes += told.nbytes;
      input.free();
      told.free();
    }
    adapters.clear();
    if (!last) send(sendOn(h, out));
    // A prompt's last chunk: its first token is sampled on rank 0 from the last position.
    else if ((h.flags & Flag.last) !== 0)
      send(sendOn(undefined, mx.contiguous(mx.slice(out, [0, h.length - 1, 0], [h.rows, h.length, h.width]))));
    figures.computeMs += performance.now() - started;
    figures.tokens += h.rows * h.length;
  };
  // Decode steps follow each other in a pattern (one micro-batch: the same caches every time;
  // several: each in turn), so while it waits for the next header, this rank builds the step
  // it expects on the caches' checkpoint (see DecodeGuesses). The right header finds it built; any
  // other message puts the caches back first and the guess is thrown away unevaluated.
  const guesses = new DecodeGuesses(sets, o.stage.start);
  let ahead: (Forward & { checkpoint: CacheCheckpoint }) | undefined;
  const buildAhead = () => {
    if (ahead) return; // still unused: only progress or keepalives came since
    const h = adapters.selected ? undefined : guesses.next(expected);
    const caches = h && sets.held(h.set)?.slice(o.stage.start, o.stage.end);
    const point = caches && checkpoint(caches);
    if (!h || !point) return;
    const started = performance.now();
    ahead = { ...mx.scope(() => buildForward(h)), checkpoint: point };
    figures.computeMs += performance.now() - started;
  };
  // The step built ahead when `h` is the message it was built for; else the caches step back.
  const takeAhead = (h: Header): Forward | undefined => {
    const built = ahead;
    ahead = undefined;
    if (!built) return undefined;
    if (sameStep(built.header, h)) {
      built.checkpoint.release();
      figures.builtAhead++;
      return built;
    }
    built.onward.free();
    built.checkpoint.restore();
    figures.guessedWrong++;
    return undefined;
  };
  for (;;) {
    const stop = mx.scope(() => {
      const h = receiveHeader();
      if (h.op === Op.progress) {
        send(tellProgress());
        return false;
      }
      if (h.op === Op.keepalive) {
        passOn(h);
        return false;
      }
      if (h.seq !== expected) throw new Error(`rank ${o.rank}: message ${h.seq} arrived when ${expected} was due`);
      expected++;
      const step = takeAhead(h);
      switch (h.op) {
        case Op.forward: {
          guesses.saw(h);
          if ((h.flags & Flag.prefill) !== 0) {
            prefill(h);
            return false;
          }
          const built = step ?? buildForward(h);
          // Its hidden states follow their header: here in a moment, if not here already.
          waitForData();
          const started = performance.now();
          adapters.clear();
          run([built.onward, ...cacheState(built.caches)]);
          figures.sentBytes += built.sentBytes;
          built.onward.free();
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
          // Our answer in our byte: a share that does not fit our layers is refused, said here.
          const answers = Uint8Array.from(receive([h.rows], mx.Dtype.uint8).toArray());
          try {
            adapters.load(h.entry, payloadText(answers.subarray(h.width)));
          } catch (error) {
            process.stderr.write(`error: ${(error as Error).message}\n`);
            answers[o.rank] = 1;
          }
          if (last) send(sendOn(undefined, mx.array(answers)));
          else passOn(h, mx.array(answers));
          return false;
        }
        case Op.freeAdapter:
          adapters.free(h.entry);
          passOn(h);
          return false;
        case Op.adapters: {
          const ids = receive([h.rows], mx.Dtype.int32);
          adapters.select(ids.toArray(), (h.flags & Flag.apart) !== 0);
          passOn(h, ids);
          return false;
        }
        case Op.savePrefixFile:
        case Op.loadPrefixFile: {
          // Our answer in our byte; the last rank brings them all back to rank 0.
          const answers = Uint8Array.from(receive([h.rows], mx.Dtype.uint8).toArray());
          const { file, save } = JSON.parse(payloadText(answers.subarray(h.width)));
          const saving = h.op === Op.savePrefixFile;
          const done = saving ? sets.savePrefixFile(h.entry, file, save) : sets.loadPrefixFile(h.entry, file, save);
          if (!done) answers[o.rank] = 1;
          if (last) send(sendOn(undefined, mx.array(answers)));
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
          const memory = memoryFigures();
          [figures.activeBytes, figures.peakBytes] = [memory.active, memory.peak];
          const row = mx.array(
            Float32Array.from(figureFields, (f) => figures[f]),
            [1, h.width],
          );
          const filled = mx.sliceUpdate(table, row, [o.rank, 0], [o.rank + 1, h.width]);
          if (last) send(sendOn(undefined, filled));
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
    buildAhead();
  }
  sets.free();
  adapters.freeAll();
}

/** A forward pass's graph, built and not evaluated. */
interface Forward {
  header: Header;
  caches: KVCache[];
  /** Its send to the next rank (or its output, where nothing is sent), and the bytes sent. */
  onward: MxArray;
  sentBytes: number;
}

/** Whether a step built for header `a` is the one header `b` asks for (its header goes on to the next rank as it is). */
const sameStep = (a: Header, b: Header): boolean =>
  (Object.keys(a) as (keyof Header)[]).every((field) => a[field] === b[field]);

/**
 * Which decode step comes next, from those seen: the caches that followed the last step's
 * last time (micro-batches take turns in a fixed order; one follows itself), at their rows now.
 */
class DecodeGuesses {
  #last?: Header;
  readonly #following = new Map<number, number>();

  constructor(
    readonly sets: CacheSets,
    /** A layer this rank holds: its cache tells the rows. */
    readonly layer: number,
  ) {}

  saw(h: Header): void {
    if (h.flags !== Flag.decode || h.length !== 1) return;
    if (this.#last) this.#following.set(this.#last.set, h.set);
    this.#last = h;
  }

  /** The decode step expected as message `seq`, if any. */
  next(seq: number): Header | undefined {
    const last = this.#last;
    if (!last) return undefined;
    const set = this.#following.get(last.set) ?? last.set;
    const cache = this.sets.held(set)?.[this.layer];
    const rows = cache instanceof BatchKVCache ? cache.batchSize : 0;
    return rows > 0 ? { ...last, set, rows, seq } : undefined;
  }
}
