// The building blocks shared by every architecture: linear layers (plain or quantized),
// embeddings, RMS norm. Each is built from a flat map of named weights, as mlx-lm names them.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { ModelConfig, QuantConfig } from "./config";
import { LoraLayers, type AdaptableLayer } from "./lora";
import type { Shard } from "./shard";
import type { Stage } from "./stage";

/** The weights of a model by their Hugging Face names, with a clear error for a missing one. */
export class Weights {
  /** Arrays made from the weights while building the model (transposes): freed with them. */
  readonly derived: MxArray[] = [];
  /** The linear layers adapters may adapt (registered as the model is built). */
  readonly lora = new LoraLayers();
  /** The names the model's construction read (get, optional): what it left unread it never uses. */
  readonly #read = new Set<string>();

  constructor(
    readonly tensors: Map<string, MxArray>,
    readonly config: ModelConfig,
    /** The part of the model these weights are, when its layers are split across processes. */
    readonly stage?: Stage,
    /** This process's slice of every layer, when the layers are split across processes by columns. */
    readonly shard?: Shard,
  ) {
    this.lora.stage = stage;
    this.lora.layerCount = config.numHiddenLayers;
  }

  /** Keeps an array made from the weights for the model's life, evaluated now. */
  derive(make: () => MxArray): MxArray {
    const t = mx.keep(mx.scope(make));
    mx.evaluate(t);
    this.derived.push(t);
    return t;
  }

  /**
   * The row-wise concatenation of the weights `names`, kept under `as` in their place: the
   * parts are freed and leave the map, so the weights are held once.
   */
  fuse(names: string[], as: string): MxArray {
    const parts = names.map((n) => this.get(n));
    const fused = mx.keep(mx.scope(() => mx.concatenate(parts, 0)));
    mx.evaluate(fused);
    for (const [i, name] of names.entries()) {
      this.tensors.delete(name);
      parts[i]!.free();
    }
    this.tensors.set(as, fused);
    this.#read.add(as);
    return fused;
  }

  /**
   * The weight, scales and biases at `prefix`. A quantized one is repacked for our CPU kernels'
   * decode rows where they read that layout on this CPU (mx.repackQuantized), evaluated now and
   * kept in the map in place of the original, so it is held once. Only products and the
   * embedding's lookup read it so; adapters dequantize it put back (adaptable).
   */
  projectionWeights(prefix: string, quant: QuantConfig | undefined): ProjectionWeights {
    const weight = this.get(`${prefix}.weight`);
    const scales = this.optional(`${prefix}.scales`);
    const biases = this.optional(`${prefix}.biases`);
    if (!quant || (quant.mode ?? "affine") !== "affine" || !scales || !biases) return { weight, scales, biases };
    const original = { weight, scales, biases };
    const repacked = mx.scope(() => mx.repackQuantized(original, quant));
    if (!repacked) return original;
    mx.evaluate(repacked.weight, repacked.scales, repacked.biases);
    for (const suffix of ["weight", "scales", "biases"] as const) {
      this.tensors.set(`${prefix}.${suffix}`, mx.keep(repacked[suffix]));
      original[suffix].free();
    }
    return { ...repacked, repacked: true };
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  get(name: string): MxArray {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`weight '${name}' is missing from the model files`);
    this.#read.add(name);
    return t;
  }

  optional(name: string): MxArray | undefined {
    this.#read.add(name);
    return this.tensors.get(name);
  }

  /** The tensors the model's construction never read, by name. */
  unread(): string[] {
    return [...this.tensors.keys()].filter((name) => !this.#read.has(name)).sort();
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
  /** Its weights, where it is one affine-quantized product with no bias (what fused ops take). */
  quantized?: mx.fast.QuantizedWeights;
}

export function linear(w: Weights, prefix: string): Linear {
  const quant = w.quantFor(prefix);
  const t = w.projectionWeights(prefix, quant);
  w.lora.register(prefix, adaptable(t, quant));
  const bias = w.optional(`${prefix}.bias`);
  return Object.assign(withBias(w.lora.wrap(prefix, projection(w, t, quant)), bias), {
    quantized: quantizedWeights(t, quant, bias),
  });
}

/** Projections of one input, by rows of one weight; `quantized` as a Linear's. */
export interface FusedLinear {
  (x: MxArray): MxArray[];
  quantized?: mx.fast.QuantizedWeights;
}

/**
 * Projections of the same input (queries/keys/values, gate/up) as one product: their weights
 * are concatenated by rows at load, so a forward pass runs one matmul (one pass over the
 * cores, one op) instead of several; the outputs are split back as views of its last axis.
 * Each output row is computed exactly as before. Layers that differ in their quantization or
 * bias stay separate.
 */
export function fusedLinear(w: Weights, prefixes: string[]): FusedLinear {
  const quants = prefixes.map((p) => w.quantFor(p));
  const suffixes = ["weight", "scales", "biases", "bias"];
  const parts = suffixes.map((suffix) => prefixes.map((p) => w.optional(`${p}.${suffix}`)));
  const same = <T>(values: T[], key: (v: T) => unknown) => values.every((v) => key(v) === key(values[0]!));
  const fusable =
    same(quants, (q) => (q ? `${q.bits}/${q.groupSize}/${q.mode ?? "affine"}` : "none")) &&
    parts.every((tensors) => same(tensors, (t) => (t ? `${t.dtype}/${t.shape.slice(1).join(",")}` : "none")));
  if (!fusable) {
    const separate = prefixes.map((p) => linear(w, p));
    return (x) => separate.map((f) => f(x));
  }
  const [, , , bias] = suffixes.map((suffix, i) =>
    parts[i]![0]
      ? w.fuse(
          prefixes.map((p) => `${p}.${suffix}`),
          `${prefixes.join("+")}.${suffix}`,
        )
      : undefined,
  );
  let end = 0;
  const bounds = parts[0]!.map((t) => [end, (end += t!.shape[0]!)] as const);
  const t = w.projectionWeights(prefixes.join("+"), quants[0]);
  const project = projection(w, t, quants[0]);
  // Each part is adapted on its own (an adapter names q_proj, not the fused product).
  const outputs = prefixes.map((prefix, i) => {
    const [start, stop] = bounds[i]!;
    const rows = (a: MxArray) => mx.slice(a, [start, 0], [stop, a.shape[1]!]);
    w.lora.register(prefix, adaptable(t, quants[0], { outputs: stop - start, rows }));
    return { prefix, start, stop, bias: bias && w.derive(() => mx.slice(bias, [start], [stop])) };
  });
  const fused = (x: MxArray) => {
    const y = project(x);
    const lead = y.shape.slice(0, -1);
    return outputs.map(({ prefix, start, stop, bias }) => {
      const part = w.lora.apply(prefix, x, mx.slice(y, [...lead.map(() => 0), start], [...lead, stop]));
      return bias ? mx.add(part, bias) : part;
    });
  };
  return Object.assign(fused, { quantized: quantizedWeights(t, quants[0], bias) });
}

/**
 * A projection whose inputs are split across the ranks of a tensor-parallel group (o_proj,
 * down_proj): each rank's partial product, in float32 so the sum is rounded once as a single
 * process's product is, added up over the ranks.
 */
export function summedOverShards(w: Weights, project: Linear): Linear {
  if (!w.shard) return project;
  return (x) => mx.astype(mx.distributed.allSum(project(mx.astype(x, mx.Dtype.float32))), x.dtype);
}

export interface Embedding {
  /** Token ids [B, L] → vectors [B, L, D]. */
  lookup(ids: MxArray): MxArray;
  /** Vectors → logits through the transposed embedding (tied output layer). */
  asLinear(x: MxArray): MxArray;
}

export function embedding(w: Weights, prefix: string): Embedding {
  const quant = w.quantFor(prefix);
  // A tied output layer is a product like any other: repacked where our kernels read it so, its
  // lookup then takes its rows from the repacked layout.
  const t = w.projectionWeights(prefix, quant);
  const { weight, scales, biases } = t;
  const lookup = (ids: MxArray): MxArray => {
    if (!quant) return mx.take(weight, ids, 0);
    if (!t.repacked)
      return mx.dequantize(mx.take(weight, ids, 0), mx.take(scales!, ids, 0), biases && mx.take(biases, ids, 0), quant);
    const rows = mx.takeQuantizedRows(t as mx.QuantizedArrays, ids);
    return mx.dequantize(rows.weight, rows.scales, rows.biases, quant);
  };
  return { lookup, asLinear: projection(w, t, quant) };
}

interface ProjectionWeights {
  weight: MxArray;
  /** A quantized weight's scales and biases. */
  scales?: MxArray;
  biases?: MxArray;
  /** Repacked for our CPU kernels (Weights.projectionWeights): dequantized only once put back in MLX's layout. */
  repacked?: boolean;
}

/** x → x·Wᵀ, quantized or plain. On the CPU our kernels spread each product over the cores. */
function projection(w: Weights, t: ProjectionWeights, quant: QuantConfig | undefined): Linear {
  const { weight, scales, biases } = t;
  if (quant) return (x) => mx.quantizedMatmul(x, weight, scales!, biases, quant, true);
  const weightT = w.derive(() => mx.transpose(weight));
  return (x) => mx.matmul(x, weightT);
}

function quantizedWeights(
  t: ProjectionWeights,
  quant: QuantConfig | undefined,
  bias: MxArray | undefined,
): mx.fast.QuantizedWeights | undefined {
  if (!quant || (quant.mode ?? "affine") !== "affine" || !t.scales || !t.biases || bias) return undefined;
  return { weight: t.weight, scales: t.scales, biases: t.biases, quant };
}

/** The layer's own bias, added to the output (after an adapter's update, which DoRA scales). */
function withBias(project: Linear, bias: MxArray | undefined): Linear {
  return bias ? (x) => mx.add(project(x), bias) : project;
}

/** A projection as adapters see it; a part of a fused weight is its `outputs` rows that `rows` picks. */
function adaptable(
  t: ProjectionWeights,
  quant: QuantConfig | undefined,
  part: { outputs: number; rows: (t: MxArray) => MxArray } = { outputs: t.weight.shape[0]!, rows: (t) => t },
): AdaptableLayer {
  const packed = t.weight.shape[1]!;
  const { rows } = part;
  const mlxLayout = () => (t.repacked ? mx.unrepackQuantized(t as mx.QuantizedArrays) : t);
  return {
    outputs: part.outputs,
    inputs: quant ? (packed * 32) / quant.bits : packed,
    dense: () => {
      if (!quant) return rows(t.weight);
      const { weight, scales, biases } = mlxLayout();
      return mx.dequantize(rows(weight), rows(scales!), biases && rows(biases), quant);
    },
  };
}

export function rmsNorm(w: Weights, prefix: string, eps: number): (x: MxArray) => MxArray {
  const weight = w.get(`${prefix}.weight`);
  return (x) => mx.fast.rmsNorm(x, weight, eps);
}
