// Merging an adapter into its base model's weights (mlx-lm's `mlx_lm.fuse`): each adapted
// layer's weight becomes W + scale·Bᵀ·Aᵀ (DoRA: scaled per output row), re-quantized as the
// base layer was (or, asked, every layer dequantized, as --dequantize does), and the result
// is a model directory like the base, with no adapter to load.
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
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

export interface FuseOptions {
  /**
   * Write every quantized layer as the float weights it stands for (mlx_lm.fuse --dequantize),
   * with no quantization in config.json: for tools that take no quantized weights (a GGUF export).
   */
  dequantize?: boolean;
}

/**
 * Writes `base` (an MLX directory, or a GGUF, converted first as `mlx convert` would) with the
 * adapter in `adapterDir` fused into it, as an MLX directory `outDir` (which must not exist).
 */
export async function fuseAdapter(
  base: string,
  adapterDir: string,
  outDir: string,
  options: FuseOptions = {},
): Promise<FuseResult> {
  if (!statSync(base).isDirectory() && isGGUFFile(base)) {
    const converted = `${outDir}.base-${process.pid}`;
    try {
      await convertGGUF(base, converted, { force: true });
      return await fuseAdapter(converted, adapterDir, outDir, options);
    } finally {
      rmSync(converted, { recursive: true, force: true });
    }
  }
  // The built model knows which layers an adapter may touch; the files give the weights to write.
  const lm = loadModel(base);
  const { config, tensors } = readDirectoryTensors(base);
  const files = new Weights(tensors, config);
  const { dequantize = false } = options;
  // A layer's weights, each replaced (or removed, given none) as the fused model has them.
  const replaceIn = (prefix: string, suffix: string, t: MxArray | undefined) => {
    tensors.get(`${prefix}.${suffix}`)?.free();
    if (t) tensors.set(`${prefix}.${suffix}`, mx.keep(t));
    else tensors.delete(`${prefix}.${suffix}`);
  };
  /** A quantized layer's bytes as stored, and as the floats it stands for (its scales' dtype). */
  const quantizedBytes = (prefix: string) =>
    ["weight", "scales", "biases"].reduce((n, suffix) => n + (tensors.get(`${prefix}.${suffix}`)?.nbytes ?? 0), 0);
  const denseBytes = (prefix: string) => {
    const scales = tensors.get(`${prefix}.scales`)!;
    const values = (tensors.get(`${prefix}.weight`)!.nbytes * 8) / files.quantFor(prefix)!.bits;
    return values * (scales.nbytes / scales.size);
  };
  const quantized = [...tensors.keys()].filter((n) => n.endsWith(".scales")).map((n) => n.slice(0, -".scales".length));
  try {
    // The fused weights are the base's in size (in floats, dequantized): a disk that cannot
    // hold them fails the fuse now.
    let needed = [...tensors.values()].reduce((n, t) => n + t.nbytes, 0);
    if (dequantize) for (const prefix of quantized) needed += denseBytes(prefix) - quantizedBytes(prefix);
    requireFreeSpace(dirname(resolve(outDir)), needed, `the fusion of ${adapterDir} into ${base}`);
    const adapter = loadAdapter(adapterDir, lm.weights.lora);
    lm.adapter = adapter;
    for (const [prefix, update] of adapter.layers) {
      const fused = fusedWeight(lm.weights.lora.layer(prefix)!, adapter, update);
      const quant = dequantize ? undefined : files.quantFor(prefix);
      const replace = (suffix: string, t: MxArray | undefined) => replaceIn(prefix, suffix, t);
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
        // A quantized layer's fused weight, dequantized: floats in its scales' dtype (as
        // mlx-lm's), standing alone.
        replace("scales", undefined);
        replace("biases", undefined);
      }
      await nextTurn(); // Ctrl-C stops a long fuse here, before anything is written
    }
    // The layers the adapter left, as mlx-lm's dequantize_model: exactly the values their codes stand for.
    if (dequantize)
      for (const prefix of quantized.filter((p) => tensors.has(`${p}.scales`))) {
        const weight = tensors.get(`${prefix}.weight`)!;
        const dense = mx.dequantize(
          weight,
          tensors.get(`${prefix}.scales`)!,
          tensors.get(`${prefix}.biases`),
          files.quantFor(prefix)!,
        );
        mx.evaluate(dense);
        replaceIn(prefix, "weight", dense);
        replaceIn(prefix, "scales", undefined);
        replaceIn(prefix, "biases", undefined);
        await nextTurn();
      }
    mkdirSync(outDir, { recursive: true });
    mx.saveSafetensors(join(outDir, "model.safetensors"), tensors, { format: "mlx" });
    // Everything else (config, tokenizer, chat template) as the base has it.
    for (const name of readdirSync(base)) {
      if (name.endsWith(".safetensors") || name === "model.safetensors.index.json") continue;
      if (statSync(join(base, name)).isFile()) copyFileSync(join(base, name), join(outDir, name));
    }
    // As mlx_lm.fuse --dequantize pops them: a loader would look for scales that are not there.
    if (dequantize) {
      const {
        quantization: _,
        quantization_config: __,
        ...plain
      } = JSON.parse(readFileSync(join(base, "config.json"), "utf8"));
      writeFileSync(join(outDir, "config.json"), `${JSON.stringify(plain, null, 2)}\n`);
    }
    const bytes = [...tensors.values()].reduce((n, t) => n + t.nbytes, 0);
    return { layers: adapter.layers.size, tensors: tensors.size, bytes };
  } finally {
    lm.free();
    for (const t of tensors.values()) t.free();
  }
}
