// The building blocks shared by every architecture: linear layers (plain or quantized),
// embeddings, RMS norm. Each is built from a flat map of named weights, as mlx-lm names them.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { ModelConfig, QuantConfig } from "./config";

/** The weights of a model by their Hugging Face names, with a clear error for a missing one. */
export class Weights {
  constructor(
    readonly tensors: Map<string, MxArray>,
    readonly config: ModelConfig,
  ) {}

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  get(name: string): MxArray {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`weight '${name}' is missing from the model files`);
    return t;
  }

  optional(name: string): MxArray | undefined {
    return this.tensors.get(name);
  }

  /** How the layer at `prefix` is quantized, or undefined when it holds plain weights. */
  quantFor(prefix: string): QuantConfig | undefined {
    if (!this.tensors.has(`${prefix}.scales`)) return undefined;
    const override = this.config.quantizationOverrides[prefix];
    if (override) return override;
    if (this.config.quantization) return this.config.quantization;
    throw new Error(`'${prefix}' is quantized but config.json has no "quantization" section`);
  }
}

export interface Linear {
  (x: MxArray): MxArray;
}

export function linear(w: Weights, prefix: string): Linear {
  const weight = w.get(`${prefix}.weight`);
  const bias = w.optional(`${prefix}.bias`);
  const quant = w.quantFor(prefix);
  if (quant) {
    const scales = w.get(`${prefix}.scales`);
    const biases = w.optional(`${prefix}.biases`);
    return (x) => {
      const y = mx.quantizedMatmul(x, weight, scales, biases, quant, true);
      return bias ? mx.add(y, bias) : y;
    };
  }
  const weightT = mx.keep(mx.transpose(weight));
  return (x) => {
    const y = mx.matmul(x, weightT);
    return bias ? mx.add(y, bias) : y;
  };
}

export interface Embedding {
  /** Token ids [B, L] → vectors [B, L, D]. */
  lookup(ids: MxArray): MxArray;
  /** Vectors → logits through the transposed embedding (tied output layer). */
  asLinear(x: MxArray): MxArray;
}

export function embedding(w: Weights, prefix: string): Embedding {
  const weight = w.get(`${prefix}.weight`);
  const quant = w.quantFor(prefix);
  if (quant) {
    const scales = w.get(`${prefix}.scales`);
    const biases = w.optional(`${prefix}.biases`);
    return {
      lookup: (ids) => mx.dequantize(mx.take(weight, ids, 0), mx.take(scales, ids, 0), biases && mx.take(biases, ids, 0), quant),
      asLinear: (x) => mx.quantizedMatmul(x, weight, scales, biases, quant, true),
    };
  }
  const weightT = mx.keep(mx.transpose(weight));
  return {
    lookup: (ids) => mx.take(weight, ids, 0),
    asLinear: (x) => mx.matmul(x, weightT),
  };
}

export function rmsNorm(w: Weights, prefix: string, eps: number): (x: MxArray) => MxArray {
  const weight = w.get(`${prefix}.weight`);
  return (x) => mx.fast.rmsNorm(x, weight, eps);
}
