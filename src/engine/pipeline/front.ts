// Rank 0 of a pipeline: the model as the engine sees it. Its own layers run here; the hidden
// states then go to rank 1 and come back from the last rank, so the batch generator, the
// sampler and everything above them run unchanged. Cache operations follow the same path.
import { nextTurn } from "../../event-loop";
import * as mx from "../../mlx";
import type { MxArray } from "../../mlx";
import type { AttentionCache, KVCache } from "../../models/cache";
import type { DecoderModel } from "../../models/model";
import type { Adapter } from "../../models/lora";
import type { Stage } from "../../models/stage";
import {
  encodeHeader,
  figureFields,
  Flag,
  headerBytes,
  headerOf,
  keepaliveHeader,
  Op,
  progressHeader,
  sendMessage,
  type StageFigures,
} from "./protocol";
import { RankZeroFront, utf8, type MessageFields } from "./rank-zero";

const { distributed } = mx;

export interface PipelineFigures {
  ranks: number;
  /** Per stage, rank 1 onwards, as of the last heartbeat. */
  stages: (StageFigures & { rank: number })[];
  /** Bytes rank 0 sent to rank 1, and the token positions they carried. */
  sentBytes: number;
  tokens: number;
  /** Milliseconds rank 0 waited for decode steps' hidden states to come back round the ring. */
  waitMs: number;
  /** Decode micro-batches rank 0 keeps in flight at most (--micro-batches), and the most it had at once. */
  microBatches: number;
  maxInFlight: number;
  /** Set once a peer is lost: the process stops when the watchdog's time is up. */
  lost?: string;
  /** Set while a peer has been silent for half the peer timeout: the watchdog stops every rank at the whole. */
  suspect?: string;
}

/**
 * The longest rank 0 blocks its event loop in one wait for the ring, where the caller can wait
 * asynchronously (untilArrival): a server answers /health in between.
 */
const waitSliceMs = 10;

export class PipelineFront extends RankZeroFront implements DecoderModel {
  #seq = 0;
  #sentBytes = 0;
  #tokens = 0;
  #waitMs = 0;
  /**
   * What is on its way back from the last rank, oldest first: decode steps' hidden states
   * (unevaluated receives), and for a prefill chunk the number of progress messages it brings
   * (an int32 per layer of the model, see Op.progress); and how many of the oldest a heartbeat
   * has received already.
   */
  readonly #arriving: (MxArray | number)[] = [];
  #received = 0;
  /** Decode steps' sends built before the step they depend on came back (beforeArrival). */
  #held?: MxArray[];
  #maxInFlight = 0;
  /** Prefills whose next forward pass gives its last position back (returnLast). */
  readonly #returnLast = new WeakSet<KVCache[]>();
  /** Prompts' last positions on their way back (returnLast): in #arriving, but no decode micro-batch. */
  readonly #lastPositions = new WeakSet<MxArray>();
  #stages: (StageFigures & { rank: number })[] = [];
  /** When rank 1 last heard from this one, as far as #waitForBytes knows, and #seq then. */
  #toldAt = 0;
  #toldSeq = 0;
  /**
   * A step waits asynchronously for the ring (untilArrival): its sends may be held, so a
   * heartbeat waits for its end (#heartbeatDue); and one heartbeat takes what is in flight off
   * the ring at a time (#draining).
   */
  #awaiting = false;
  #heartbeatDue = false;
  #draining = false;
  /**
   * A heartbeat's figures on their way back (see #beat): the first thing the ring brings back,
   * so whatever receives from it takes them first (#settleBeat); and the wait for them.
   */
  #beatReply?: MxArray;
  #beatSettled?: Promise<void>;
  protected readonly groupName = "the pipeline";

  constructor(
    local: DecoderModel,
    readonly size: number,
    readonly stage: Stage,
    peerTimeoutMs: number,
    /** Decode groups the batch generator keeps in flight round the ring (one per rank by default). */
    readonly microBatches = size,
  ) {
    super(local, peerTimeoutMs);
  }

  get config() {
    return this.local.config;
  }

  /**
   * Our layers, then the rest of the pipeline. A prefill's result stays on the ranks (only their
   * caches need it); a decode step's hidden states come back from the last rank: the result is
   * their receive, to evaluate only after arrive() (several steps may be in flight), and so the
   * last position of a prompt's last chunk (returnLast). A whole pass's (wholePass) come back
   * at once.
   */
  layers(h: MxArray, caches: AttentionCache[]): MxArray {
    const decode = this.isBatch(caches);
    const whole = this.isWhole(caches);
    // Asked once: the mark is taken by the pass it was set for.
    const last = !decode && !whole && this.#returnLast.delete(caches as KVCache[]);
    const out =
      decode || whole ? this.local.layers(h, caches, this.stage.start, this.stage.end) : this.#prefillLayers(h, caches);
    const [rows, length, width] = out.shape as [number, number, number];
    this.tellAdapters(rows);
    const sent = this.#send(
      {
        op: Op.forward,
        set: this.id(caches),
        rows,
        length,
        flags: decode ? Flag.decode : whole ? Flag.whole : last ? Flag.prefill | Flag.last : Flag.prefill,
        dtype: out.dtype,
        width,
      },
      out,
    );
    this.#tokens += rows * length;
    // Sent now and waited for (on the CPU, MLX's async_eval of a whole step waits all the same,
    // waking at every op it finishes), or held for arrive() (beforeArrival).
    if (decode && this.#held) this.#held.push(mx.keep(sent));
    else mx.evaluate(sent);
    if (!decode && !whole) {
      // Every stage's progress on this chunk, to take off the ring in its turn.
      this.#arriving.push(this.local.numLayers);
      if (!last) return out;
    }
    const back = distributed.recv([rows, last ? 1 : length, width], out.dtype, this.size - 1);
    if (whole) {
      // Behind the decode steps in flight: those are received first (kept for arrive()).
      this.#receiveInFlight();
      this.#receive(back);
      return back;
    }
    // Held here as well: the caller's scope may drop its handle before the bytes come.
    mx.keep(back);
    this.#arriving.push(back);
    if (last) this.#lastPositions.add(back);
    this.#countInFlight();
    return back;
  }

  override returnLast(caches: KVCache[]): void {
    this.#returnLast.add(caches);
  }

  /**
   * A prefill chunk's layers here, a layer at a time, rank 1 told after each (Op.progress): a
   * chunk may outlast the peer timeout on a busy machine, and rank 1 waits for it. Under the
   * watchdog throughout: every other rank answers each word (passing it on round the ring, or
   * with its own while it computes an earlier chunk), so a rank that stops is heard at once.
   */
  #prefillLayers(h: MxArray, caches: AttentionCache[]): MxArray {
    distributed.armWatchdog(this.peerTimeoutMs, this.#silence());
    for (let layer = this.stage.start; layer < this.stage.end; layer++) {
      const input = h;
      h = this.local.layers(input, caches, layer, layer + 1);
      mx.scope(() => mx.evaluate(h, distributed.send(encodeHeader(progressHeader), 1)));
      this.#sentBytes += headerBytes;
      // The caller's input is the caller's to free.
      if (layer > this.stage.start) input.free();
    }
    return h;
  }

  /**
   * Receives the oldest decode step's hidden states still on the way (the ring returns them in
   * the order they were sent). The ring's receive spins on its socket until the bytes come, so
   * this waits for them off the CPU first: the other ranks may need it. The receive itself is
   * only queued, not waited for: `computed` (what is computed from it: the output layer, the
   * sampler) runs right behind it, then the step built on those before they came (see
   * beforeArrival) is sent, and waited for.
   */
  arrive(...computed: MxArray[]): void {
    this.#settleBeat();
    let back = this.#arriving.shift();
    // Nothing comes back from a lost rank: the step is let go (its batch's caches are being freed).
    if (!this.open) {
      if (typeof back === "object") back.free();
      return;
    }
    // Progress a heartbeat received is off the queue already.
    for (; typeof back === "number"; back = this.#arriving.shift()) this.#receiveProgress(back);
    if (!back) throw new Error("no decode step of the pipeline is on its way back");
    if (this.#received > 0) this.#received--;
    else this.#waitForBytes();
    mx.asyncEvaluate(back, ...computed);
    back.free();
    this.#sendHeld();
    this.#held = undefined;
  }

  /**
   * Resolves once arrive() would not wait for the ring; undefined where it would not wait now, or
   * the bytes came within a slice (most steps). Meanwhile the event loop runs (a server answers
   * /health while a peer is silent), a slice at a time: a backlog's progress messages are taken
   * off the ring as they come, then this waits for the decode step's first bytes.
   */
  untilArrival(): Promise<void> | undefined {
    // A heartbeat's answer on its way comes first: waited for as the rest.
    if (!this.#beatReply) {
      if (this.#received > 0 || this.#arriving.length === 0) return undefined;
      if (typeof this.#arriving[0] !== "number" && this.#waitSlice()) return undefined;
    }
    this.#awaiting = true;
    return this.#untilArrived();
  }

  async #untilArrived(): Promise<void> {
    try {
      for (;;) {
        if (this.#beatReply) await this.#beatSettled;
        if (this.#received > 0 || this.#arriving.length === 0) return;
        if (this.#waitSlice()) {
          if (typeof this.#arriving[0] !== "number") return;
          this.#takeProgressWord();
        }
        // Also between progress words: a backlog's come faster than a slice, for seconds.
        await nextTurn();
      }
    } finally {
      this.#awaiting = false;
      // Between this step and the next (setImmediate runs before the scheduler's next step),
      // through heartbeat(): the other groups' steps still in flight are taken off the ring as
      // they come, not waited for with the event loop blocked (a rank stopped meanwhile would
      // hold /health until the watchdog ends the process).
      if (this.#heartbeatDue) setImmediate(() => this.heartbeat());
      this.#heartbeatDue = false;
    }
  }

  /**
   * Decode steps built in `build` (on the tokens of a step still on its way back) are held, not
   * sent, until arrive() has that step's bytes: sending one now would queue the ring's receive
   * before the bytes come, and it would spin. Building the next step while the other ranks
   * compute takes this process's graph-building off the ring's path.
   */
  override beforeArrival<T>(build: () => T): T {
    this.#held = [];
    try {
      return build();
    } catch (error) {
      // What was built goes out after all, in order: nothing would send it otherwise.
      this.#sendHeld();
      this.#held = undefined;
      throw error;
    }
  }

  /**
   * Held steps sent before arrive() (a message posted while a step waits for the ring: an adapter
   * loaded for a new request). Sending them receives the hidden states of the step they are built
   * on, the oldest on its way back: what comes before it on the ring (a backlog's progress) is
   * received first, and it counts as received, so arrive() does not wait for it again.
   */
  #sendHeldEarly(): void {
    if (!this.#held?.length) return;
    if (this.#received === 0) {
      while (typeof this.#arriving[0] === "number") this.#receiveProgress(this.#arriving.shift() as number);
      this.#received = 1;
    }
    this.#sendHeld();
  }

  /** The steps held by beforeArrival so far, sent in the order built. */
  #sendHeld(): void {
    if (!this.#held?.length) return;
    mx.evaluate(...this.#held);
    for (const sent of this.#held) sent.free();
    this.#held = [];
    this.#countInFlight();
  }

  /**
   * Keeps the most decode steps on the ring at once: those on their way back and not yet received,
   * less those built ahead and held (beforeArrival), which go out only once the step they are
   * built on is back.
   */
  #countInFlight(): void {
    const onRing = this.#arriving.slice(this.#received);
    const steps = onRing.filter((a) => typeof a !== "number" && !this.#lastPositions.has(a));
    this.#maxInFlight = Math.max(this.#maxInFlight, steps.length - (this.#held?.length ?? 0));
  }

  get figures(): PipelineFigures {
    return {
      ranks: this.size,
      stages: this.#stages,
      sentBytes: this.#sentBytes,
      tokens: this.#tokens,
      waitMs: this.#waitMs,
      microBatches: this.microBatches,
      maxInFlight: this.#maxInFlight,
      lost: this.lost,
      suspect: this.#suspect(),
    };
  }

  /**
   * Which peer has been silent for half the peer timeout, if one has: rank 1's signs of life, or
   * the ring while something is on its way back (the watchdog stops every rank at the whole).
   */
  #suspect(): string | undefined {
    if (!this.open) return undefined;
    const { next, ring } = distributed.silence();
    const half = this.peerTimeoutMs / 2;
    const limit = `(--peer-timeout ${this.peerTimeoutMs / 1000} s)`;
    if (next !== undefined && next >= half) return `no word from rank 1 for ${inSeconds(next)} s ${limit}`;
    if (ring !== undefined && ring >= half && (this.#arriving.length > this.#received || this.#beatReply))
      return `no answer from the pipeline (ranks 1-${this.size - 1}) for ${inSeconds(ring)} s ${limit}`;
    return undefined;
  }

  /**
   * Once a rank is lost the others' caches no longer matter: bookkeeping (a cancelled request's
   * rows let go, from an abort listener too) is dropped, not thrown, and the next forward pass
   * fails the requests (ensureOpen).
   */
  protected post(fields: MessageFields, payload?: () => MxArray): void {
    if (!this.open) return;
    try {
      mx.scope(() => mx.evaluate(this.#send(fields, payload?.())));
    } catch (error) {
      this.lose(error);
    }
  }

  /** The header and its payload, as one message: its send, unevaluated. */
  #send(fields: MessageFields, payload?: MxArray): MxArray {
    this.ensureOpen();
    // Messages go out in the order numbered: held steps first.
    this.#sendHeldEarly();
    const header = headerOf(fields, this.#seq++);
    // Each message re-arms the watchdog: its answer, or the next heartbeat's, must come in time.
    distributed.armWatchdog(this.peerTimeoutMs, this.#silence());
    this.#sentBytes += headerBytes + (payload?.nbytes ?? 0);
    return sendMessage(header, 1, payload);
  }

  /**
   * Goes round the ring and brings back each stage's figures. What is in flight comes back first:
   * taken off the ring as it comes (#drainThenBeat), the event loop running meanwhile; mid-step,
   * after the step.
   */
  protected heartbeat(): void {
    if (!this.open || this.#draining || this.#beatReply) return;
    if (this.#awaiting) this.#heartbeatDue = true;
    else void this.#drainThenBeat();
  }

  /**
   * Takes what is in flight off the ring as it comes, blocking the event loop a slice at a time
   * (steps go on meanwhile, and may take some of it themselves), and sends the heartbeat the
   * moment nothing is: its answer is then the first thing the ring brings back. Never a wait for
   * the ring with the event loop held: a rank stopped meanwhile would hold /health until the
   * watchdog ends the process.
   */
  async #drainThenBeat(): Promise<void> {
    this.#draining = true;
    try {
      while (this.open) {
        if (this.#arriving.length === this.#received) return this.#beat();
        if (this.#waitSlice()) {
          if (typeof this.#arriving[this.#received] !== "number") {
            mx.evaluate(this.#arriving[this.#received] as MxArray);
            this.#received++;
          } else this.#takeProgressWord();
          // Checked before the next turn, where a step could send more.
          if (this.#arriving.length === this.#received) return this.#beat();
        }
        // Between progress words too: a backlog's come faster than a slice, for seconds.
        await nextTurn();
      }
    } catch (error) {
      this.lose(error);
    } finally {
      this.#draining = false;
    }
  }

  /**
   * The heartbeat itself, with nothing in flight. Its answer is waited for a slice at a time, the
   * event loop running meanwhile: it goes round every rank. A step waiting for the ring has it
   * sent once the step's bytes came (#heartbeatDue).
   */
  #beat(): void {
    if (this.#awaiting) {
      this.#heartbeatDue = true;
      return;
    }
    // Each stage writes its row of figures into the payload on the way round.
    const shape = [this.size, figureFields.length];
    const back = mx.scope(() => {
      const sent = this.#send(
        { op: Op.heartbeat, rows: shape[0], width: shape[1], dtype: mx.Dtype.float32 },
        mx.zeros(shape, mx.Dtype.float32),
      );
      mx.evaluate(sent);
      return mx.keep(distributed.recv(shape, mx.Dtype.float32, this.size - 1));
    });
    this.#beatReply = back;
    this.#beatSettled = (async () => {
      while (this.#beatReply === back && this.open && !this.#waitSlice()) await nextTurn();
      this.#settleBeat();
    })();
  }

  /** The heartbeat's answer, if one is on its way, received (waiting for it here): each stage's figures. */
  #settleBeat(): void {
    const back = this.#beatReply;
    if (!back) return;
    this.#beatReply = undefined;
    try {
      if (!this.open) return;
      this.#receive(back);
      const values = back.toArray();
      this.#stages = Array.from({ length: this.size - 1 }, (_, i) => {
        const row = values.slice((i + 1) * figureFields.length);
        return { rank: i + 1, ...Object.fromEntries(figureFields.map((f, k) => [f, row[k]!])) } as StageFigures & {
          rank: number;
        };
      });
      // Steps sent meanwhile are still timed.
      if (this.#arriving.length === 0) distributed.disarmWatchdog();
    } catch (error) {
      this.lose(error);
    } finally {
      back.free();
    }
  }

  /**
   * Answered: the other ranks check their own layers' tensors of it, which this one does not
   * hold, and one whose share does not fit says no rather than ending the pipeline.
   */
  override adapterLoaded(adapter: Adapter): boolean {
    return this.everyRank({ op: Op.loadAdapter, entry: adapter.id }, utf8(adapter.path));
  }

  /** Goes round the ring: each stage sets its byte of the answers to 1 for no; the last brings them back. */
  protected everyRank(fields: MessageFields, text: Uint8Array): boolean {
    if (!this.open) return false;
    try {
      const yes = mx.scope(() => {
        const payload = new Uint8Array(this.size + text.length);
        payload.set(text, this.size);
        const shape = [payload.length];
        mx.evaluate(this.#send({ ...fields, rows: payload.length, width: this.size }, mx.array(payload)));
        const back = distributed.recv(shape, mx.Dtype.uint8, this.size - 1);
        this.#receiveInFlight();
        this.#receive(back);
        return back
          .toArray()
          .slice(0, this.size)
          .every((no) => no === 0);
      });
      distributed.disarmWatchdog();
      return yes;
    } catch (error) {
      this.lose(error);
      return false;
    }
  }

  /**
   * One progress message of the oldest prefill chunk not yet received, off the ring (its bytes
   * are there): whether that was the chunk's last.
   */
  #takeProgressWord(): boolean {
    this.#settleBeat();
    mx.scope(() => mx.evaluate(distributed.recv([1], mx.Dtype.int32, this.size - 1)));
    const left = (this.#arriving[this.#received] as number) - 1;
    if (left > 0) this.#arriving[this.#received] = left;
    else this.#arriving.splice(this.#received, 1);
    return left === 0;
  }

  /** What is in flight comes back before anything sent after it: received now, decode steps kept for arrive(). */
  #receiveInFlight(): void {
    for (const step of this.#arriving.slice(this.#received)) {
      if (typeof step === "number") this.#receiveProgress(step);
      else this.#receive(step);
    }
    for (let i = this.#arriving.length - 1; i >= 0; i--) {
      if (typeof this.#arriving[i] === "number") this.#arriving.splice(i, 1);
    }
    this.#received = this.#arriving.length;
  }

  /** A prefill chunk's `count` progress messages, each waited for off the CPU: they come a layer apart. */
  #receiveProgress(count: number): void {
    for (let i = 0; i < count; i++) mx.scope(() => this.#receive(distributed.recv([1], mx.Dtype.int32, this.size - 1)));
  }

  /** Waits off the CPU until bytes come, then evaluates the receive `back` (a heartbeat's answer first). */
  #receive(back: MxArray): void {
    this.#settleBeat();
    this.#waitForBytes();
    mx.evaluate(back);
  }

  /**
   * Off the CPU until the ring has bytes for us: the time counts as waiting for the ring. While
   * this rank waits for a later one (clearing a backlog of prefill chunks, telling this one after
   * each layer), the ranks before that one hear nothing else: so rank 1 hears from this one at
   * least every third of the timeout (Op.keepalive, passed on). The watchdog, not this, times
   * the silence of the rank waited for.
   */
  #waitForBytes(): void {
    const started = performance.now();
    const third = this.peerTimeoutMs / 3;
    this.#keepRankOneTold(started);
    for (let waited = 0; waited < 3 && !distributed.waitReadable(third); waited++) this.#keepAlive(performance.now());
    this.#waitMs += performance.now() - started;
  }

  /** As #waitForBytes, for a slice at most: whether bytes came. */
  #waitSlice(): boolean {
    const started = performance.now();
    this.#keepRankOneTold(started);
    const ready = distributed.waitReadable(waitSliceMs);
    this.#waitMs += performance.now() - started;
    return ready;
  }

  /** Rank 1 hears from this rank at least every third of the timeout while it waits (see #waitForBytes). */
  #keepRankOneTold(now: number): void {
    if (this.#seq !== this.#toldSeq) {
      // A message went since the last wait: rank 1 heard from us then (or a little before).
      this.#toldSeq = this.#seq;
      this.#toldAt = now;
    } else if (now - this.#toldAt >= this.peerTimeoutMs / 3) this.#keepAlive(now);
  }

  /** Op.keepalive to rank 1, at `now`: unnumbered, between two messages; it does not re-arm the watchdog. */
  #keepAlive(now: number): void {
    if (this.closed) return;
    mx.scope(() => mx.evaluate(distributed.send(encodeHeader(keepaliveHeader), 1)));
    this.#sentBytes += headerBytes;
    this.#toldAt = now;
  }

  /**
   * A transfer through the ring failed: a rank is gone (see loseRank). Where a peer had been
   * silent already, that one is named first: a stopped rank makes its next one's watchdog end
   * that rank, and the ring then fails here as if the next one were the culprit.
   */
  protected lose(error: unknown): void {
    const failed = (error as Error).message;
    const suspect = this.#suspect();
    this.loseRank(`lost a rank of the pipeline: ${suspect ? `${suspect}, then ${failed}` : failed}`);
  }

  #silence(): string {
    const seconds = Math.round(this.peerTimeoutMs / 1000);
    return `error: rank 0: no answer from the pipeline (ranks 1-${this.size - 1}) for ${seconds} s (--peer-timeout); stopping`;
  }
}

const inSeconds = (ms: number) => (ms / 1000).toFixed(1);
