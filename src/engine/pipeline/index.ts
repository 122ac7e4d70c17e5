// Pipeline parallel: one model's layers split across processes (ranks) joined by MLX's
// distributed engine (the ring backend over TCP, ...). Rank 0 holds the tokenizer, the
// scheduler, the embedding, its layers and the output head; every other rank a run of layers.
// Each process loads only its own tensors.
import { freemem } from "node:os";
import * as mx from "../../mlx";
import { readLayout } from "../../models/layout";
import { loadModel, type LoadedModel } from "../../models/load";
import type { CacheOptions } from "./cache-sets";
import { PipelineFront } from "./front";
import { defaultSplit, layerRange, parseLayers } from "./plan";
import { serveStage } from "./stage";
import { serveShard, TensorParallelFront } from "./tensor-parallel";

export { PipelineFront, type PipelineFigures } from "./front";
export { TensorParallelFront } from "./tensor-parallel";
export { defaultSplit, headLayers, layerRange, parseLayers, splitLayers, stageBytes } from "./plan";
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
export function openPipeline(path: string, spec: PipelineSpec, caches: CacheOptions = {}): LoadedModel | undefined {
  const layout = readLayout(path); // before joining: a missing or unreadable model fails at once
  const group = distributed.init({ hostfile: spec.hostfile, rank: spec.rank });
  if (group.size < 2) throw new Error("a pipeline needs at least 2 ranks (the hostfile lists one)");
  const { rank, size } = group;
  const { tensorParallel, peerTimeoutMs } = spec;
  // Tensor parallel: every rank holds a slice of every layer; rank 0 the ends as well.
  const stages = tensorParallel
    ? undefined
    : spec.layers
      ? parseLayers(spec.layers, layout.numLayers, size)
      : defaultSplit(layout, exchangeFreeMemory(group));
  const stage = stages?.[rank] ?? { start: 0, end: layout.numLayers, ends: rank === 0 };
  // What a prompt cache file records: a file saved under another split is not used.
  const split = stages ? `layers ${stages.map(layerRange).join(",")}` : `tensor-parallel ${size}`;
  const lm = loadModel(path, stage, tensorParallel ? group : undefined);
  lm.kvQuantization = caches.kvQuantization;
  // Everyone loaded: a rank that failed has exited, and this all_sum says so (a lost peer).
  barrier();
  // From now on, no collectives: each rank shows its previous one it is alive, and hears from
  // its next one, apart from the messages (a middle rank stopped while a later one clears a
  // backlog is noticed in time). Tensor parallel's all_sums use those directions of the ring.
  if (!tensorParallel) {
    const next = (rank + 1) % size;
    const seconds = Math.round(peerTimeoutMs / 1000);
    const message = `error: rank ${rank}: no word from rank ${next} for ${seconds} s (--peer-timeout); stopping`;
    distributed.watchNeighbours(peerTimeoutMs, message);
  }
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

/** Every rank's free memory (bytes), by rank: the default split follows it. */
function exchangeFreeMemory(group: mx.distributed.Group): number[] {
  return mx.scope(() => {
    const mine = new Float32Array(group.size);
    // In MiB: float32 holds that exactly enough.
    mine[group.rank] = freemem() / 2 ** 20;
    return distributed
      .allSum(mx.array(mine))
      .toArray()
      .map((mib) => mib * 2 ** 20);
  });
}

function barrier(): void {
  mx.scope(() => distributed.allSum(mx.array(Float32Array.from([1]))).toArray());
}
