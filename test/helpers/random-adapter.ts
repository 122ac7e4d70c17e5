// Random LoRA/DoRA adapters in mlx-lm's format (adapter_config.json + adapters.safetensors),
// made from a seed so a test and scripts/parity-adapters.sh write the very same files.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as mx from "../../src/mlx";
import type { MxArray } from "../../src/mlx";

export interface RandomAdapterOptions {
  /** The adapted layers: full prefix → [inputs, outputs]. */
  layers: Record<string, [number, number]>;
  rank?: number;
  scale?: number;
  kind?: "lora" | "dora";
  seed?: number;
  /** How far B departs from zero (mlx-lm starts it at zero; training moves it). */
  strength?: number;
  /** The tensors' dtype as saved (float32 unless set), as an adapter trained or converted in half precision has them. */
  dtype?: "bfloat16" | "float16";
  /**
   * The model's decoder layers: num_layers then reaches from the last back to the first adapted
   * one, as mlx-lm counts it. Unset, it counts the adapted layers (right for lastLayers' choice).
   */
  modelLayers?: number;
}

/** The adapted layers of the last `count` of `numLayers` blocks, as mlx-lm's num_layers picks them. */
export function lastLayers(
  numLayers: number,
  count: number,
  projections: Record<string, [number, number]>,
): Record<string, [number, number]> {
  const layers: Record<string, [number, number]> = {};
  for (let i = numLayers - count; i < numLayers; i++)
    for (const [name, shape] of Object.entries(projections)) layers[`model.layers.${i}.${name}`] = shape;
  return layers;
}

export function writeRandomAdapter(dir: string, o: RandomAdapterOptions): void {
  const { rank = 4, scale = 2, kind = "lora", seed = 0, strength = 0.05 } = o;
  mkdirSync(dir, { recursive: true });
  let key = mx.keep(mx.random.key(seed));
  const draw = (make: (k: MxArray) => MxArray) => {
    const [next, sub] = mx.random.split(key);
    key.free();
    key = mx.keep(next);
    const t = mx.keep(mx.scope(() => make(sub)));
    sub.free();
    return t;
  };
  const tensors = new Map<string, MxArray>();
  for (const [prefix, [inputs, outputs]] of Object.entries(o.layers)) {
    // lora_a as mlx-lm initialises it; lora_b as if trained a little.
    const bound = 1 / Math.sqrt(inputs);
    tensors.set(
      `${prefix}.lora_a`,
      draw((k) => mx.multiply(mx.subtract(mx.random.uniform([inputs, rank], mx.Dtype.float32, k), 0.5), 2 * bound)),
    );
    tensors.set(
      `${prefix}.lora_b`,
      draw((k) => mx.multiply(mx.random.normal([rank, outputs], mx.Dtype.float32, k), strength)),
    );
    if (kind === "dora")
      tensors.set(
        `${prefix}.m`,
        draw((k) => mx.add(mx.multiply(mx.random.uniform([outputs], mx.Dtype.float32, k), 0.5), 0.75)),
      );
  }
  key.free();
  if (o.dtype)
    for (const [name, t] of tensors) {
      tensors.set(name, mx.keep(mx.scope(() => mx.astype(t, mx.Dtype[o.dtype!]))));
      t.free();
    }
  mx.evaluate(...tensors.values());
  mx.saveSafetensors(join(dir, "adapters.safetensors"), tensors, { format: "mlx" });
  const indices = Object.keys(o.layers).map((p) => Number(p.match(/layers\.(\d+)\./)?.[1]));
  const numLayers = o.modelLayers === undefined ? new Set(indices).size : o.modelLayers - Math.min(...indices);
  const keys = [...new Set(Object.keys(o.layers).map((p) => p.replace(/^model\.layers\.\d+\./, "")))];
  writeFileSync(
    join(dir, "adapter_config.json"),
    JSON.stringify(
      { fine_tune_type: kind, num_layers: numLayers, lora_parameters: { rank, scale, dropout: 0, keys } },
      null,
      2,
    ),
  );
  for (const t of tensors.values()) t.free();
}
