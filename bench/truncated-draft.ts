// A draft model for speculative decoding cut out of its target: the first `layers` blocks, the
// final norm and the output layer (tied to the embeddings in SmolLM2), with the same tokenizer.
// Usage: bun bench/truncated-draft.ts <mlx model dir> <out dir> [layers=2]
// (an MLX directory: `mlx convert smollm2 DIR` makes one from the default GGUF).
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as mx from "../src/mlx";

export function writeTruncatedModel(source: string, out: string, layers = 2): void {
  const config = JSON.parse(readFileSync(join(source, "config.json"), "utf8"));
  if (layers >= config.num_hidden_layers) throw new Error(`${source} has only ${config.num_hidden_layers} layers`);
  mkdirSync(out, { recursive: true });
  const kept = new Map<string, mx.MxArray>();
  for (const file of readdirSync(source).filter((f) => f.endsWith(".safetensors"))) {
    for (const [name, tensor] of mx.loadSafetensors(join(source, file)).tensors) {
      const layer = /^model\.layers\.(\d+)\./.exec(name);
      if (layer && Number(layer[1]) >= layers) tensor.free();
      else kept.set(name, tensor);
    }
  }
  mx.saveSafetensors(join(out, "model.safetensors"), kept, { format: "mlx" });
  writeFileSync(join(out, "config.json"), JSON.stringify({ ...config, num_hidden_layers: layers }, null, 2));
  for (const file of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"])
    if (existsSync(join(source, file))) copyFileSync(join(source, file), join(out, file));
  for (const t of kept.values()) t.free();
}

if (import.meta.main) {
  const [source, out, layers] = process.argv.slice(2);
  if (!source || !out) throw new Error("usage: bun bench/truncated-draft.ts <mlx model dir> <out dir> [layers=2]");
  writeTruncatedModel(source, out, layers ? Number(layers) : 2);
  console.log(`wrote ${out}`);
}
