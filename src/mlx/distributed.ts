// MLX's distributed engine (mx.distributed): this process's place in a group of processes
// (the ring backend over TCP, MPI, ...), and the ops that move arrays between them. The ops are
// lazy arrays like any other: a transfer happens when its result is evaluated.
import { wrap, type MxArray } from "./array";
import type { DtypeCode } from "./dtype";
import { setTimeout as sleep } from "node:timers/promises";
import { binding, check, cstr, lib, outPtr, outPtr2, outPtr3 } from "./ffi";
import { handles } from "./ops";

/** How often a join in progress, or a socket, is looked at while the event loop goes on. */
const pollMs = 20;

export interface Group {
  rank: number;
  size: number;
}

let group: Group | undefined;

/**
 * Joins the group once per process. The ring backend reads the hostfile (MLX's ring format,
 * one list of "host:port" per rank) and connects to its two neighbours, once per address,
 * retrying for about 30 s. It waits on a native thread: the event loop goes on meanwhile (a
 * server answers /health), and no other distributed call may be made until it settles.
 * `hostfile` and `rank` override MLX_HOSTFILE and MLX_RANK.
 */
export async function init(options: { backend?: string; hostfile?: string; rank?: number } = {}): Promise<Group> {
  if (group) return group;
  check(
    lib.mlxs_distributed_init_start(cstr(options.backend ?? "ring"), cstr(options.hostfile ?? ""), options.rank ?? -1),
    "distributed init",
  );
  for (;;) {
    check(lib.mlxs_distributed_init_poll(outPtr, outPtr2, outPtr3), "distributed init");
    // Three int slots, 8 bytes apart: joined, rank, size.
    const slots = new Int32Array(binding.readBytes(outPtr, 20).buffer);
    if (slots[0]) return (group = { rank: slots[2]!, size: slots[4]! });
    await sleep(pollMs);
  }
}

/** The element-wise sum of `x` over every rank (each gets the result). */
export function allSum(x: MxArray): MxArray {
  return wrap(lib.mlxs_distributed_all_sum(outPtr, x.handle), "all_sum");
}

/** Sends `x` to rank `dst`; evaluating the result performs the send. */
export function send(x: MxArray, dst: number): MxArray {
  return wrap(lib.mlxs_distributed_send(outPtr, x.handle, dst), "send");
}

/**
 * Sends `message` to `dst` so that the receiver may take its first `headerBytes` in a receive (or
 * read()) of their own and the rest in another (a header, then the payload it describes): one
 * send where the ring has one connection to each neighbour (a stream of bytes, however it is
 * read), a send each where it has several (the hostfile lists several addresses per rank), since
 * MLX splits each send and each receive over them by its own size. Evaluating the result sends it.
 */
export function sendMessage(message: MxArray, headerBytes: number, dst: number): MxArray {
  return wrap(lib.mlxs_distributed_send_message(outPtr, message.handle, headerBytes, dst), "send");
}

/** An array of `shape` and `dtype` received from rank `src` when evaluated. */
export function recv(shape: number[], dtype: DtypeCode, src: number): MxArray {
  return wrap(lib.mlxs_distributed_recv(outPtr, Int32Array.from(shape), shape.length, dtype, src), "recv");
}

/**
 * `bytes` bytes from rank `src`, read on this thread straight from the ring's (first) connection
 * from it (the ring backend's receive hands the read to MLX's stream thread, then to a socket
 * thread, and back: wake-ups that cost more than a small message's bytes). For what must be read
 * before the next receive can even be built (a sendMessage()'s header); only between evaluated
 * transfers on that connection. Undefined where it cannot (another backend, a rank other than the
 * previous one, over 1 KiB where there are several connections per rank): use recv() then.
 */
export function read(bytes: number, src: number): Uint8Array | undefined {
  const out = new Uint8Array(bytes);
  const done = new Int32Array(1);
  check(lib.mlxs_distributed_read(out, bytes, src, done), "distributed read");
  return done[0] ? out : undefined;
}

/**
 * Ends the process (status 3) with `message` on stderr unless disarmed or re-armed within
 * `timeoutMs` of the last bytes the ring's connections received: it times the peers' silence,
 * not the work, so a long collective whose peers keep sending (a tensor-parallel prefill on a
 * busy machine) goes on. A native thread keeps the time, since a rank blocked in a receive runs
 * no JavaScript. Where the system does not count received bytes, the time runs from the arm.
 */
export function armWatchdog(timeoutMs: number, message: string): void {
  check(lib.mlxs_watchdog_arm(Math.max(1, Math.round(timeoutMs)), cstr(message)), "watchdog");
}

export function disarmWatchdog(): void {
  lib.mlxs_watchdog_disarm();
}

/**
 * A pipeline's signs of life, for as long as this process runs: a native thread
 * tells the previous rank this one is alive every quarter of `timeoutMs`, and ends the process
 * (status 3) with `message` when the next rank has told it nothing for `timeoutMs` (twice that
 * for its first word: it starts once its own connections are made, after this one's). A rank
 * waiting for a later one hears only from the last rank, so this is how a stopped middle rank is
 * noticed while the ranks after it still work. On the directions of the ring's connections a
 * pipeline's sends and receives never use: not with collectives (tensor parallel).
 */
export function watchNeighbours(timeoutMs: number, message: string): void {
  check(lib.mlxs_watchdog_neighbours(Math.max(1, Math.round(timeoutMs)), cstr(message)), "watchdog");
}

/**
 * How long the watchdog's peers have been silent (ms), as its thread last looked: `next`, the
 * next rank's signs of life (watchNeighbours, once its first word is due), `ring`, the
 * ring while the watchdog is armed (since its last bytes, or the arm). Undefined where not watched.
 */
export function silence(): { next?: number; ring?: number } {
  const out = new Int32Array(2);
  lib.mlxs_watchdog_silence(out);
  return { next: out[0]! >= 0 ? out[0] : undefined, ring: out[1]! >= 0 ? out[1] : undefined };
}

/**
 * Evaluates `arrays` (collectives), as evaluate() does, unless a connection of the ring closes
 * first: then it throws at once. Where a peer's connection closes, MLX's ring fails the transfers
 * under way but leaves those queued after (a forward pass's next all_sum) waiting for ever, and
 * an evaluation with them: a tensor-parallel rank 0 would then hold its clients' streams until the
 * watchdog ends the process, cutting them, where it can tell them a rank was lost.
 */
export function evaluateUnlessPeerLost(...arrays: MxArray[]): void {
  check(lib.mlxs_eval_unless_peer_lost(handles(arrays), arrays.length), "eval");
}

/**
 * Builds ops from now on on a stream that evaluateUnlessPeerLost may evaluate on a thread of the
 * shim's (MLX's streams are otherwise their creating thread's): once, after the join and before
 * the model is loaded. Without it (another backend), evaluateUnlessPeerLost is evaluate().
 */
export function shareStream(): void {
  check(lib.mlxs_distributed_share_stream(), "share stream");
}

/**
 * Waits (blocking) until a socket of this process has data, or `timeoutMs` passes (false). The
 * ring backend's receive spins on its socket while it waits, so an idle rank waits here instead.
 */
export function waitReadable(timeoutMs: number): boolean {
  return lib.mlxs_wait_readable(Math.max(0, Math.round(timeoutMs))) === 1;
}

/** As waitReadable without a timeout, with the event loop free meanwhile (a server answers). */
export async function readable(): Promise<void> {
  while (!waitReadable(0)) await sleep(pollMs);
}
