// Pipeline parallel: one model's layers split across processes (ranks) joined by MLX's
// distributed engine (the ring backend over TCP, ...). Rank 0 holds the tokenizer, the
// scheduler, the embedding, its layers and the output head; every other rank a run of layers.
// Each process loads only its own tensors.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { constants, freemem } from "node:os";
import * as mx from "../../mlx";
import { readLayout } from "../../models/layout";
import { loadModelAsync, type LoadedModel } from "../../models/load";
import { modelDigest } from "../prompt-cache-file";
import type { CacheOptions } from "./cache-sets";
import { PipelineFront } from "./front";
import { checkRingAddresses, defaultSplit, layerRange, layerRoom, parseLayers } from "./plan";
import { serveStage } from "./stage";
import { serveShard, TensorParallelFront } from "./tensor-parallel";

export { PipelineFront, type PipelineFigures } from "./front";
export { TensorParallelFront } from "./tensor-parallel";
export type { CacheOptions } from "./cache-sets";
export {
  checkRingAddresses,
  defaultSplit,
  headLayers,
  layerRange,
  layerRoom,
  parseLayers,
  splitLayers,
  stageBytes,
} from "./plan";
export { busyFraction } from "./protocol";

const { distributed } = mx;

export interface PipelineSpec {
  /** MLX's ring hostfile (else $MLX_HOSTFILE) and this process's rank in it (else $MLX_RANK). */
  hostfile?: string;
  rank?: number;
  /** "0-9,10-18,19-29"; by default in proportion to each rank's free memory. */
  layers?: string;
  /** How long a silent peer is waited for before every rank stops. */
  peerTimeoutMs: number;
  /** Every rank a slice of every layer (src/models/shard.ts) instead of a run of layers. */
  tensorParallel?: boolean;
  /** Decode groups rank 0 keeps in flight (default: one per rank). */
  microBatches?: number;
}

/**
 * Joins the group, agrees on who holds which layers, and loads this rank's part. Rank 0 gets
 * the model (the front of the pipeline); every other rank serves its layers until rank 0 shuts
 * the pipeline down, then gets undefined.
 */
export async function openPipeline(
  path: string,
  spec: PipelineSpec,
  caches: CacheOptions = {},
): Promise<LoadedModel | undefined> {
  const layout = readLayout(path); // before joining: a missing or unreadable model fails at once
  const weights = weightsWords(path);
  const group = await joinRing(spec);
  if (group.size < 2) throw new Error("a pipeline needs at least 2 ranks (the hostfile lists one)");
  const { rank, size } = group;
  const { tensorParallel, peerTimeoutMs } = spec;
  // A pipeline uses no collectives: from now on each rank shows its previous one it is alive and
  // hears from its next one, apart from the messages, while loading too (a rank stopped before
  // the others are ready is noticed; one slow to load is not taken for lost). Tensor parallel's
  // all_sums use both directions of the ring's connections: its start is not watched.
  if (!tensorParallel) {
    const next = (rank + 1) % size;
    const seconds = Math.round(peerTimeoutMs / 1000);
    const message = `error: rank ${rank}: no word from rank ${next} for ${seconds} s (--peer-timeout); stopping`;
    distributed.watchNeighbours(peerTimeoutMs, message);
  }
  // Exchanged whatever the split, used only by the default one: ranks started by hand with other
  // --layers or --tensor-parallel flags then pass the same messages until expectOneSplit names
  // the difference (one that skipped it read the others' room as their split, and they lost it).
  const room = await exchangeLayerRoom(group, layerRoom(layout, rank, freemem()));
  // Tensor parallel: every rank holds a slice of every layer; rank 0 the ends as well.
  const stages = tensorParallel
    ? undefined
    : spec.layers !== undefined
      ? parseLayers(spec.layers, layout.numLayers, size)
      : defaultSplit(layout, room);
  const stage = stages?.[rank] ?? { start: 0, end: layout.numLayers, ends: rank === 0 };
  // What a prompt cache file records: a file saved under another split is not used.
  const split = stages ? `layers ${stages.map(layerRange).join(",")}` : `tensor-parallel ${size}`;
  // Each forward pass is evaluated off this thread, which can then give up on one a lost rank hangs.
  if (tensorParallel) distributed.shareStream();
  const lm = await loadModelAsync(path, stage, tensorParallel ? group : undefined);
  lm.kvQuantization = caches.kvQuantization;
  // Everyone loaded (a rank that failed has exited, and this says so: a lost peer), and split the
  // model alike: tensor parallel's ranks too, whose slices and caches must match (a rank started
  // by hand with other KV cache flags, or without --tensor-parallel, answered otherwise or hung).
  await expectOneSplit(
    group,
    `${split} of ${layout.numLayers} layers, hidden size ${layout.hiddenSize}, ${cacheWords(caches)}, ${weights}`,
  );
  if (rank > 0) {
    try {
      if (tensorParallel) serveShard(lm.model, { rank, split, caches, lora: lm.weights.lora, peerTimeoutMs });
      else serveStage(lm.model, { rank, size, stage, split, caches, lora: lm.weights.lora, peerTimeoutMs });
    } finally {
      lm.free();
    }
    return undefined;
  }
  const front = tensorParallel
    ? new TensorParallelFront(lm.model, lm.config, size, peerTimeoutMs)
    : new PipelineFront(lm.model, size, stage, peerTimeoutMs, spec.microBatches);
  stopWithLauncher();
  front.mirrorAdapters(lm.weights.lora);
  front.split = split;
  process.once("exit", () => {
    try {
      front.shutdown();
    } catch {
      // The peers are gone already: nothing to tell them.
    }
  });
  return { ...lm, model: front };
}

/**
 * The model's weights in words every rank compares: the same name or path on another machine may
 * hold another revision or quantization of the same shapes, whose hidden states the other ranks
 * would take for their own and answer garbage. Store blobs are named by their digest; any other
 * file is sampled (modelDigest), not read whole on every start.
 */
export const weightsWords = (path: string) => `weights ${modelDigest(path, 2 ** 20).slice(0, 12)}`;

/** A rank's KV cache settings, in words: ranks with other ones would answer otherwise than one process. */
function cacheWords({ kvQuantization: q, maxKvSize }: CacheOptions): string {
  const kind = q
    ? `${q.bits}-bit KV cache, group ${q.groupSize}${q.start ? ` from position ${q.start}` : ""}${q.keys === "rows" ? ", keys per row" : ""}`
    : "float KV cache";
  return maxKvSize ? `${kind} of ${maxKvSize} positions` : kind;
}

/**
 * Rank 0 started by `mlx launch` on this machine ends when the launcher is gone (killed by a
 * signal it does not pass on: SIGKILL, a hang-up): the other ranks then lose rank 0 and stop
 * too, where every rank would otherwise run on, a server for ever. The other ranks' loops never
 * return to the event loop: they hear of it from rank 0.
 */
function stopWithLauncher(): void {
  const launcher = Number(process.env.MLX_LAUNCHER_PID);
  if (!launcher) return;
  setInterval(() => {
    if (process.ppid === launcher) return;
    process.stderr.write(`error: rank 0: mlx launch (process ${launcher}) is gone; stopping\n`);
    process.exit(1);
  }, 1000).unref();
}

/**
 * Joins the ring in bounded time, naming the ranks it waited for: MLX's ring waits for ever to
 * accept a rank that never comes (rank 0 started by hand alone), and its connect errors name no
 * address.
 */
async function joinRing(spec: PipelineSpec): Promise<mx.distributed.Group> {
  const hostfile = spec.hostfile ?? process.env.MLX_HOSTFILE;
  const hosts = readRingHostfile(hostfile);
  const rank = String(spec.rank ?? process.env.MLX_RANK);
  if (hosts && Number(rank) >= hosts.length)
    throw new Error(`rank ${rank} is not in hostfile ${hostfile}, which lists ranks 0-${hosts.length - 1}`);
  const others = hosts
    ?.map((addresses, r) => `rank ${r} at ${addresses.join(" ")}`)
    .filter((_, r) => String(r) !== rank)
    .join(", ");
  const waitedFor = others ? ` (${others}, from hostfile ${hostfile})` : "";
  const seconds = Math.round(spec.peerTimeoutMs / 1000);
  distributed.armWatchdog(
    spec.peerTimeoutMs,
    `error: rank ${rank}: the other ranks did not all join within ${seconds} s (--peer-timeout)${waitedFor}; stopping`,
  );
  try {
    return await distributed.init({ hostfile: spec.hostfile, rank: spec.rank });
  } catch (error) {
    const message = (error as Error).message;
    // MLX's ring names only the errno of an address of ours that is taken, and this is not about the others.
    if (hosts && message.includes(`Couldn't bind socket (error: ${constants.errno.EADDRINUSE})`))
      throw new Error(
        `rank ${rank}: cannot listen on ${hosts[Number(rank)]!.join(" ")}: the port is in use (another launch or server?)`,
      );
    throw new Error(`rank ${rank}: could not join the other ranks${waitedFor}: ${message}`);
  } finally {
    distributed.disarmWatchdog();
  }
}

/**
 * Each rank's addresses, or a hostfile MLX's ring cannot read refused in words: its own errors
 * are its JSON parser's ("attempting to parse an empty input" for a missing file). mlx.launch's
 * form, which `mlx launch` takes, is the likely one for a rank started by hand.
 */
function readRingHostfile(path: string | undefined): string[][] | undefined {
  if (!path) return undefined; // MLX says there is none
  let hosts: unknown;
  try {
    hosts = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new Error(`cannot read hostfile ${path}: ${(error as Error).message}`);
  }
  const ring = (entry: unknown) => Array.isArray(entry) && entry.every((address) => typeof address === "string");
  if (!Array.isArray(hosts) || !hosts.every(ring))
    throw new Error(
      `hostfile ${path}: a rank started by hand reads MLX's ring hostfile ([["host:port", ...], ...], a list per rank); mlx.launch's form is for mlx launch`,
    );
  // As mlx launch refuses them: started by hand, each rank would wait out --peer-timeout instead.
  checkRingAddresses(path, hosts as string[][]);
  return hosts as string[][];
}

/** Every rank's room for layers (layerRoom, bytes), by rank: the default split follows it. */
async function exchangeLayerRoom(group: mx.distributed.Group, roomBytes: number): Promise<number[]> {
  // In MiB: float32 holds that exactly enough.
  return (await gatherRound(group, roomBytes / 2 ** 20)).map((mib) => mib * 2 ** 20);
}

/**
 * Checks that every rank split the same model the same way (`split` says how this rank did),
 * and waits for them all. Ranks started by hand each parse their own --layers and model: ranks
 * that disagree would pass each other the wrong layers' hidden states and print garbage.
 */
async function expectOneSplit(group: mx.distributed.Group, split: string): Promise<void> {
  // 24 bits of a digest: a float32 holds them exactly.
  const splits = await gatherRound(group, createHash("sha256").update(split).digest().readUIntBE(0, 3));
  const other = splits.findIndex((digest) => digest !== splits[group.rank]);
  if (other >= 0)
    throw new Error(
      `rank ${other} split the model otherwise than rank ${group.rank} (${split}): start every rank with the same model, --layers and KV cache flags`,
    );
}

/**
 * Every rank's `value`, by rank, to every rank: round the ring twice the way a pipeline's
 * messages go (rank 0 to 1, ..., the last to 0), each rank adding its own the first time, so no
 * collective mixes with the ranks' signs of life (watchNeighbours). A barrier too.
 */
async function gatherRound(group: mx.distributed.Group, value: number): Promise<number[]> {
  const { rank, size } = group;
  const [previous, next] = [(rank + size - 1) % size, (rank + 1) % size];
  const mine = new Float32Array(size);
  mine[rank] = value;
  const pass = (values: Float32Array) => mx.scope(() => mx.evaluate(distributed.send(mx.array(values), next)));
  const receive = async () => {
    // Off the CPU until the bytes come (the ring's receive spins: the ranks still loading need
    // it), and with the event loop free (rank 0's server answers /health meanwhile).
    await distributed.readable();
    return mx.scope(() => Float32Array.from(distributed.recv([size], mx.Dtype.float32, previous).toArray()));
  };
  if (rank === 0) {
    pass(mine);
    const all = await receive();
    pass(all);
    return [...all];
  }
  // Each rank's value is in a slot of its own: the sum is exact.
  pass((await receive()).map((sum, r) => sum + mine[r]!));
  const all = await receive();
  if (next !== 0) pass(all);
  return [...all];
}
