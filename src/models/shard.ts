// Tensor parallel: every process (rank) holds a slice of each layer's projections, as mlx-lm's
// shard() does for llama. Queries, keys, values, gate and up are cut by output rows (whole
// key-value head groups per rank), o_proj and down_proj by input columns; the partial products
// of those two are added up over the ranks (all_sum), so every rank gets the whole output.
import { UnsupportedError } from "../errors";
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { ModelConfig } from "./config";
import { HALF_GROUP } from "./gguf-tensors";

export interface Shard {
  rank: number;
  size: number;
}

/**
 * What a rank holds of one projection: its outputs [start, end) (q/k/v, gate/up: cut by rows)
 * or its inputs [start, end) (o_proj, down_proj: cut by columns, the partial products summed).
 * An adapter's matrices are cut the same way (src/models/lora.ts).
 */
export interface ShardCut {
  side: "outputs" | "inputs";
  start: number;
  end: number;
  /** The whole projection's outputs or inputs. */
  of: number;
}

/** The architectures whose layers are plain attention + SwiGLU MLP, built by llama.ts. */
const shardable = new Set(["llama", "mistral", "qwen2", "qwen3"]);

const projection =
  /^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.(weight|scales|biases|bias)$/;

/** [start, end) of `part` when `units` are split into `parts` runs as even as possible, the first ones larger. */
export function evenRange(units: number, parts: number, part: number): [number, number] {
  const base = Math.floor(units / parts);
  const extra = units % parts;
  const start = part * base + Math.min(part, extra);
  return [start, start + base + (part < extra ? 1 : 0)];
}

/**
 * Refuses a model that --tensor-parallel cannot split over `size` ranks: another architecture,
 * or fewer key-value heads than ranks (attention stays local to a rank, a head whole on one).
 */
export function checkShardable(config: ModelConfig, size: number): void {
  if (!shardable.has(config.modelType))
    throw new UnsupportedError(
      `--tensor-parallel supports ${[...shardable].join(", ")} models; this one is ${config.modelType}`,
    );
  if (config.numKeyValueHeads < size)
    throw new UnsupportedError(
      `--tensor-parallel over ${size} ranks needs at least ${size} key-value heads; the model has ${config.numKeyValueHeads}`,
    );
}

/**
 * Cuts the projections in `tensors` down to the shard's slice, in place (each full tensor is read,
 * copied from and freed in turn), and returns the config of the layers the shard holds (its heads
 * and MLP width). Refuses, with one line, a model whose heads or quantization groups do not split.
 */
export function shardTensors(
  tensors: Map<string, MxArray>,
  config: ModelConfig,
  shard: Shard,
  /** Filled with each projection's cut, by its prefix (`model.layers.0.self_attn.q_proj`). */
  cuts?: Map<string, ShardCut>,
): ModelConfig {
  const { rank, size } = shard;
  checkShardable(config, size);
  const kvHeads = config.numKeyValueHeads;
  // Whole groups of query heads with their key-value head: attention stays local to a rank.
  const perKv = config.numAttentionHeads / kvHeads;
  const [kv0, kv1] = evenRange(kvHeads, size, rank);
  const hd = config.headDim;
  const queries: [number, number] = [kv0 * perKv * hd, kv1 * perKv * hd];
  const keys: [number, number] = [kv0 * hd, kv1 * hd];

  // The inputs per quantization group of o_proj and down_proj (1 when plain), read before any cut.
  const groups = new Map<string, number>();
  for (const [name, scales] of tensors) {
    const m = projection.exec(name);
    if (m && m[3] === "scales" && (m[2] === "o_proj" || m[2] === "down_proj"))
      groups.set(name.slice(0, -".scales".length), inputsOf(m[2], config) / scales.shape[1]!);
  }
  const groupOf = (prefix: string) => groups.get(prefix) ?? 1;
  // Each layer's MLP is split in whole quantization groups of its down_proj (its input columns),
  // and in blocks of 32 wherever the width allows. Every rank cuts from its own loaded layout,
  // which for a GGUF's Q6_K depends on the machine: groups of 16 where our CPU kernels hold them
  // (which read them in pairs, a block of 32: a slice of an odd number of groups would dequantize
  // the whole slice for every product), floats elsewhere. Blocks of 32 either way, so that ranks
  // on different machines cut the same columns (else their partial sums overlap); by columns in an
  // MLP too narrow to give every rank a block.
  const blocks = config.intermediateSize / (2 * HALF_GROUP);
  const block = Number.isInteger(blocks) && blocks >= size ? 2 * HALF_GROUP : 1;
  const mlpOf = (layer: number): [number, number] => {
    const unit = Math.max(groupOf(`model.layers.${layer}.mlp.down_proj`), block);
    const [u0, u1] = evenRange(config.intermediateSize / unit, size, rank);
    return [u0 * unit, u1 * unit];
  };

  for (const [name, t] of [...tensors]) {
    const m = projection.exec(name);
    if (!m) continue;
    const layer = Number(m[1]);
    const [, , proj, part] = m as unknown as [string, string, string, string];
    const rowsOf = { q_proj: queries, k_proj: keys, v_proj: keys, gate_proj: mlpOf(layer), up_proj: mlpOf(layer) };
    const prefix = name.slice(0, -part.length - 1);
    let cut: MxArray | undefined;
    if (proj in rowsOf) {
      const [start, end] = rowsOf[proj as keyof typeof rowsOf];
      cuts?.set(prefix, { side: "outputs", start, end, of: outputsOf(proj, config) });
      cut = slice(t, 0, start, end);
    } else if (part === "bias") {
      // Added once, after the sum: rank 0 keeps it.
      if (rank === 0) continue;
    } else {
      const inputs = inputsOf(proj, config);
      const [start, end] = proj === "o_proj" ? queries : mlpOf(layer);
      cuts?.set(prefix, { side: "inputs", start, end, of: inputs });
      const unit = groupOf(prefix);
      if (start % unit !== 0 || end % unit !== 0)
        throw new UnsupportedError(
          `--tensor-parallel: ${prefix} is quantized in groups of ${unit} inputs, which the split at its heads (${hd} wide) would cut`,
        );
      // A packed weight holds several inputs per element; scales and biases one per group.
      const perColumn = inputs / t.shape[1]!;
      cut = slice(t, 1, start / perColumn, end / perColumn);
    }
    if (cut) tensors.set(name, cut);
    else tensors.delete(name);
    t.free();
  }
  // MLX keeps freed buffers for reuse: the full tensors' memory goes back to the system.
  mx.memory.clearCache();
  return {
    ...config,
    numAttentionHeads: (kv1 - kv0) * perKv,
    numKeyValueHeads: kv1 - kv0,
    intermediateSize: mlpOf(0)[1] - mlpOf(0)[0],
  };
}

/** The input width of o_proj or down_proj. */
function inputsOf(proj: string, config: ModelConfig): number {
  return proj === "o_proj" ? config.numAttentionHeads * config.headDim : config.intermediateSize;
}

/** The output width of a projection cut by rows. */
function outputsOf(proj: string, config: ModelConfig): number {
  if (proj === "q_proj") return config.numAttentionHeads * config.headDim;
  if (proj === "k_proj" || proj === "v_proj") return config.numKeyValueHeads * config.headDim;
  return config.intermediateSize;
}

/**
 * Columns or rows [start, end) of `t` along `axis`, in a buffer of their own (a slice alone would
 * keep the whole tensor alive), evaluated now.
 */
function slice(t: MxArray, axis: number, start: number, end: number): MxArray {
  const cut = mx.keep(
    mx.scope(() => {
      const from = t.shape.map((_, i) => (i === axis ? start : 0));
      const to = t.shape.map((n, i) => (i === axis ? end : n));
      return mx.multiply(mx.slice(t, from, to), mx.full([], 1, t.dtype));
    }),
  );
  mx.evaluate(cut);
  return cut;
}
