// Who holds which layers when a model is split across processes: by hand (--layers), or in
// proportion to each process's free memory, and what that costs each rank and each hop.
import type { ModelLayout } from "../../models/layout";
import type { Stage } from "../../models/stage";

/**
 * Refuses a ring hostfile's addresses (one list per rank) that could never form a ring, before
 * the rank joins it: fewer than 2 ranks, or two ranks on one address, leave every rank waiting
 * for peers until --peer-timeout; MLX's ring would take a port past 65535 modulo 65536, parses
 * no IPv6 address, and names no rank in its own errors.
 */
export function checkRingAddresses(path: string, ranks: string[][]): void {
  if (ranks.length < 2) throw new Error(`hostfile ${path}: a pipeline needs at least 2 ranks (got ${ranks.length})`);
  const ranksByAddress = new Map<string, number>();
  for (const [rank, addresses] of ranks.entries()) {
    if (addresses.length === 0) throw new Error(`hostfile ${path}: rank ${rank} lists no address`);
    for (const address of addresses) {
      const host = address.slice(0, Math.max(0, address.lastIndexOf(":")));
      if (!host) throw new Error(`hostfile ${path}: rank ${rank}'s address '${address}' is not host:port`);
      const portText = address.slice(address.lastIndexOf(":") + 1);
      const port = Number(portText);
      if (!/^\d+$/.test(portText) || port < 1 || port > 65535)
        throw new Error(`hostfile ${path}: rank ${rank}'s address '${address}' needs a port 1-65535`);
      // "[::1]" would also be taken for a remote host to ssh to.
      if (host.includes(":"))
        throw new Error(
          `hostfile ${path}: rank ${rank}'s address '${address}' is IPv6, which MLX's ring backend cannot connect: give an IPv4 address or a host name`,
        );
      const other = ranksByAddress.get(address);
      if (other !== undefined)
        throw new Error(
          `hostfile ${path}: ${address} is listed twice (rank ${other} and rank ${rank}): give each its own port`,
        );
      ranksByAddress.set(address, rank);
    }
  }
}

/** "0-9,10-18,19-29": one contiguous run of layers per rank, in order, covering every layer. */
export function parseLayers(spec: string, numLayers: number, ranks: number): Stage[] {
  // Not the default split in its place: an empty --layers "$SPLIT" is a mistake to name.
  if (!spec.trim()) throw new Error("--layers is empty: give one range of layers per rank, e.g. 0-9,10-29");
  const parts = spec.split(",").map((p) => p.trim());
  if (parts.length !== ranks)
    throw new Error(`--layers '${spec}' names ${parts.length} ranges for ${ranks} ranks (one range per rank)`);
  const stages: Stage[] = [];
  let next = 0;
  for (const [rank, part] of parts.entries()) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new Error(`--layers: '${part}' is not a range like 0-9`);
    const start = Number(m[1]);
    const last = Number(m[2] ?? m[1]);
    if (start !== next)
      throw new Error(`--layers: rank ${rank}'s range '${part}' should start at layer ${next} (contiguous, in order)`);
    if (last < start) throw new Error(`--layers: '${part}' ends before it starts`);
    stages.push({ start, end: last + 1, ends: rank === 0 });
    next = last + 1;
  }
  if (next !== numLayers)
    throw new Error(`--layers '${spec}' covers layers 0-${next - 1}; the model has ${numLayers} (0-${numLayers - 1})`);
  return stages;
}

/**
 * Layers in proportion to `weights` (each rank's free memory), by largest remainder, every
 * rank at least one. Rank 0 also computes the output head, worth `headLayers` layers of work:
 * it counts towards rank 0's share, so that every stage's work is in proportion.
 */
export function splitLayers(numLayers: number, weights: number[], headLayers = 0): Stage[] {
  const ranks = weights.length;
  if (numLayers < ranks) throw new Error(`the model has ${numLayers} layers, fewer than the ${ranks} ranks`);
  const total = weights.reduce((a, b) => a + Math.max(0, b), 0);
  const shares = weights.map((w) => (total > 0 ? Math.max(0, w) / total : 1 / ranks));
  const work = shares.map((share, rank) =>
    Math.max(0, (numLayers + headLayers) * share - (rank === 0 ? headLayers : 0)),
  );
  const worked = work.reduce((a, b) => a + b, 0);
  const quotas = work.map((w) => (worked > 0 ? (numLayers * w) / worked : numLayers / ranks));
  const counts = quotas.map((q) => Math.max(1, Math.floor(q)));
  const byRemainder = quotas.map((q, i) => ({ i, r: q - Math.floor(q) })).sort((a, b) => b.r - a.r || a.i - b.i);
  for (let k = 0; counts.reduce((a, b) => a + b) < numLayers; k++) counts[byRemainder[k % ranks]!.i]!++;
  // The floor of one layer may have given too many: take them back from the largest shares.
  while (counts.reduce((a, b) => a + b) > numLayers) counts[counts.indexOf(Math.max(...counts))]!--;
  let start = 0;
  return counts.map((n, rank) => {
    const stage = { start, end: start + n, ends: rank === 0 };
    start += n;
    return stage;
  });
}

/**
 * The output head's work in layers' worth: multiply-adds per token, plus what each of the small
 * ops around the matrices costs (norms, rotary, attention, adds: about 20 a layer, 2 for the
 * head), worth `opCost` multiply-adds. `opCost` is fitted on the CPU time each rank of smollm2
 * used serving 8 clients on 3 ranks (bench/pipeline.ts, "CPU share"): rank 0's share came to its
 * layers plus 5.1-5.8 layers' worth (the output layer, the sampler and the host's work for each
 * token), as the head timed alone costs 5.9 layers at 1 row (bench/stage-cost.ts); this counts it
 * as 5.5. A larger model's matrices outweigh its small ops, so its head counts closer to its
 * multiply-adds.
 */
export function headLayers(layout: ModelLayout): number {
  const opCost = 80_000;
  const perLayer = layout.layerWeights.reduce((a, b) => a + b, 0) / Math.max(1, layout.numLayers);
  return perLayer > 0 ? (layout.headWeights + 2 * opCost) / (perLayer + 20 * opCost) : 0;
}

/**
 * A rank's room for layers: its free memory (bytes), less the embedding and output layer that
 * rank 0 holds as well, in the bytes this machine loads them in (a GGUF's Q6_K matrices take
 * fewer where our kernels hold them quantized). Each rank counts its own and they share the
 * results, so machines that load the ends in different sizes still agree on one split.
 */
export function layerRoom(layout: ModelLayout, rank: number, freeBytes: number): number {
  return rank === 0 ? freeBytes - layout.endBytes : freeBytes;
}

/**
 * The default split: layers in proportion to each rank's room for them (layerRoom), with the
 * output head's compute (counted in parameters, the same on every machine) in rank 0's share.
 */
export function defaultSplit(layout: ModelLayout, roomBytes: number[]): Stage[] {
  return splitLayers(layout.numLayers, roomBytes, headLayers(layout));
}

/** The bytes of weights a stage loads. */
export function stageBytes(layout: ModelLayout, stage: Stage): number {
  const layers = layout.layerBytes.slice(stage.start, stage.end).reduce((a, b) => a + b, 0);
  return layers + layout.sharedBytes + (stage.ends ? layout.endBytes : 0);
}

/** "0-9" */
export const layerRange = (s: Stage): string => (s.end - s.start === 1 ? `${s.start}` : `${s.start}-${s.end - 1}`);
