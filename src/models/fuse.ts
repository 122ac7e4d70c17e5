// Merging an adapter into its base model's weights (mlx-lm's `mlx_lm.fuse`): each adapted
// layer's weight becomes W + scale·Bᵀ·Aᵀ (DoRA: scaled per output row), re-quantized as the
// base layer was, and the result is a model directory like the base, with no adapter to load.
import { copyFileSync, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { nextTurn } from "../event-loop";
import { requireFreeSpace } from "../files";
import { convertGGUF } from "./convert";
import { isGGUFFile } from "./gguf";
import { Weights } from "./layers";
import { loadModel, readDirectoryTensors } from "./load";
import { fusedWeight, loadAdapter } from "./lora";

export interface FuseResult {
  /** Layers the adapter changed. */
  layers: number;
  tensors: number;
  bytes: number;
}

/**
 * Writes `base` (an MLX directory, or a GGUF, converted first as `mlx convert` would) with the
 * adapter in `adapterDir` fused into it, as an MLX directory `outDir` (which must not exist).
 */
export async function fuseAdapter(base: string, adapterDir: string, outDir: string): Promise<FuseResult> {
  if (!statSync(base).isDirectory() && isGGUFFile(base)) {
    const converted = `${outDir}.base-${process.pid}`;
    try {
      await convertGGUF(base, converted, { force: true });
      return await fuseAdapter(converted, adapterDir, outDir);
    } finally {
      rmSync(converted, { recursive: true, force: true });
    }
  }
  // The built model knows which layers an adapter may touch; the files give the weights to write.
  const lm = loadModel(base);
  const { config, tensors } = readDirectoryTensors(base);
  const files = new Weights(tensors, config);
  try {
    // The fused weights are the base's in size: a disk that cannot hold them fails the fuse now.
    const bytes = [...tensors.values()].reduce((n, t) => n + t.nbytes, 0);
    requireFreeSpace(dirname(resolve(outDir)), bytes, `the fusion of ${adapterDir} into ${base}`);
    const adapter = loadAdapter(adapterDir, lm.weights.lora);
    lm.adapter = adapter;
    for (const [prefix, update] of adapter.layers) {
      const fused = fusedWeight(lm.weights.lora.layer(prefix)!, adapter, update);
      const quant = files.quantFor(prefix);
      const replace = (suffix: string, t: MxArray | undefined) => {
        tensors.get(`${prefix}.${suffix}`)?.free();
        if (t) tensors.set(`${prefix}.${suffix}`, mx.keep(t));
      };
      if (quant) {
        const q = mx.scope(() => mx.quantize(fused, quant));
        mx.evaluate(q.weight, q.scales, ...(q.biases ? [q.biases] : []));
        replace("weight", q.weight);
        replace("scales", q.scales);
        replace("biases", q.biases);
        fused.free();
      } else {
        mx.evaluate(fused);
        replace("weight", fused);
      }
      await nextTurn(); // Ctrl-C stops a long fuse here, before anything is written
    }
    mkdirSync(outDir, { recursive: true });
    mx.saveSafetensors(join(outDir, "model.safetensors"), tensors, { format: "mlx" });
    // Everything else (config, tokenizer, chat template) as the base has it.
    for (const name of readdirSync(base)) {
      if (name.endsWith(".safetensors") || name === "model.safetensors.index.json") continue;
      if (statSync(join(base, name)).isFile()) copyFileSync(join(base, name), join(outDir, name));
    }
    return { layers: adapter.layers.size, tensors: tensors.size, bytes };
  } finally {
    lm.free();
    for (const t of tensors.values()) t.free();
  }
}
