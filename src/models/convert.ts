// GGUF → an MLX-community model directory that mlx-lm loads as it is: quantized weights
// kept as affine 4/8-bit, config.json, the tokenizer files and the chat template.
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import * as mx from "../mlx";
import { ggufModel } from "./gguf";
import { readGGUFHeader } from "./gguf-header";
import { tokenizerFilesFromGGUF } from "../tokenizer/gguf";

export interface ConvertResult {
  dir: string;
  tensors: number;
  bytes: number;
}

export function convertGGUF(ggufPath: string, outDir: string, { force = false } = {}): ConvertResult {
  const target = resolve(outDir);
  if (existsSync(target) && readdirSync(target).length > 0 && !force) {
    throw new Error(`${target} exists and is not empty (use --force to replace it)`);
  }
  readGGUFHeader(ggufPath); // refuses a corrupt file before MLX reads it
  const gguf = ggufModel(mx.loadGGUF(ggufPath));
  try {
    if (gguf.tensors.has("rope_freqs")) {
      throw new Error("this GGUF stores precomputed rope frequencies (Llama 3 scaling), which config.json cannot express; run it as a .gguf instead");
    }
    const { tokenizerJson, tokenizerConfig, eosTokenIds } = tokenizerFilesFromGGUF(gguf.metadata as Record<string, unknown>);
    // Every end-of-generation id (eos, eot, eom), so generation stops where the GGUF says.
    const generationConfig = { bos_token_id: gguf.config.bos_token_id, eos_token_id: eosTokenIds.length === 1 ? eosTokenIds[0] : eosTokenIds };

    // Write everything into a sibling folder first and rename it into place, so an
    // interrupted conversion never leaves a directory that looks complete.
    mkdirSync(dirname(target), { recursive: true });
    const staging = `${target}.partial-${process.pid}`;
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(staging);
    try {
      mx.saveSafetensors(join(staging, "model.safetensors"), gguf.tensors, { format: "mlx" });
      const json = (name: string, value: unknown) => writeFileSync(join(staging, name), `${JSON.stringify(value, null, 2)}\n`);
      json("config.json", gguf.config);
      json("tokenizer.json", tokenizerJson);
      json("tokenizer_config.json", tokenizerConfig);
      json("generation_config.json", generationConfig);
      rmSync(target, { recursive: true, force: true });
      renameSync(staging, target);
    } catch (error) {
      rmSync(staging, { recursive: true, force: true });
      throw error;
    }
    const bytes = [...gguf.tensors.values()].reduce((n, t) => n + t.nbytes, 0);
    return { dir: target, tensors: gguf.tensors.size, bytes };
  } finally {
    for (const t of gguf.tensors.values()) t.free();
  }
}
