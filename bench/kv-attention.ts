// Decode attention alone on a float32, a float16, an 8-bit and a 4-bit KV cache (keys per row, or
// per channel with their float tail as the cache now stores them), in the default model's shapes
// (9 query / 3 key-value heads of 64, 30 layers): our float attention kernel, our quantized one,
// and MLX's composition for a quantized cache (its quantized matmuls, MLX_KERNELS=mlx), one decode
// step's attention over all layers at each context length. Interleaved runs; medians of wall and
// CPU time (on a loaded machine the CPU time is the steadier figure).
//
//   node_modules/.bin/bun bench/kv-attention.ts [--contexts 512,2000,8000] [--runs 7]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { encodeKeys } from "../src/models/channel-keys";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: { contexts: { type: "string", default: "512,2000,8000" }, runs: { type: "string", default: "7" } },
});
const runs = Number(values.runs);
const [layers, qHeads, kvHeads, dim] = [30, 9, 3, 64];
const scale = dim ** -0.5;

type Parts = readonly [mx.MxArray, mx.MxArray, mx.MxArray];
interface Layer {
  keys: mx.MxArray;
  values: mx.MxArray;
  /** The same in float16 (the float cache under float32 activations, MLX_KV_DTYPE's default). */
  halfKeys: mx.MxArray;
  halfValues: mx.MxArray;
  quantized: Record<number, { keys: Parts; values: Parts }>;
  /** Keys per channel (src/models/channel-keys.ts): codes, scales, biases, float tail. */
  channelKeys: Record<number, mx.fast.ChannelKeyParts>;
}

// Keys/values as the cache holds them: the used part of a buffer grown in steps of 256.
function layersAt(context: number): Layer[] {
  const capacity = Math.ceil((context + 1) / 256) * 256;
  const used = (t: mx.MxArray) => mx.slice(t, [0, 0, 0, 0], [1, kvHeads, context, t.shape[3]!]);
  return Array.from({ length: layers }, () => {
    const [k, v] = [mx.random.normal([1, kvHeads, capacity, dim]), mx.random.normal([1, kvHeads, capacity, dim])];
    const quantized: Layer["quantized"] = {};
    const channelKeys: Layer["channelKeys"] = {};
    for (const bits of [8, 4]) {
      const parts = encodeKeys(used(k), { bits, groupSize: 64 }).map((p) => mx.keep(p));
      channelKeys[bits] = parts as unknown as mx.fast.ChannelKeyParts;
      const pack = (t: mx.MxArray): Parts => {
        const { weight, scales, biases } = mx.quantize(t, { bits, groupSize: 64 });
        return [used(weight), used(scales), used(biases!)].map((p) => mx.keep(p)) as unknown as Parts;
      };
      quantized[bits] = { keys: pack(k), values: pack(v) };
    }
    const half = (t: mx.MxArray) => mx.keep(used(mx.astype(t, mx.Dtype.float16)));
    const layer = {
      keys: mx.keep(used(k)),
      values: mx.keep(used(v)),
      halfKeys: half(k),
      halfValues: half(v),
      quantized,
      channelKeys,
    };
    mx.evaluate(
      ...Object.values(channelKeys).flat(),
      layer.keys,
      layer.values,
      layer.halfKeys,
      layer.halfValues,
      ...Object.values(quantized).flatMap((q) => [...q.keys, ...q.values]),
    );
    return layer;
  });
}

interface Variant {
  name: string;
  kernels: boolean;
  /** Bytes of keys and values held per position, per layer (for the GB/s read). */
  bytes: number;
  attend: (q: mx.MxArray, layer: Layer) => mx.MxArray;
}
// Keys and values per position of one layer: float elements, or packed values and a float32
// scale and bias per group of 64.
const float = (size: number) => 2 * kvHeads * dim * size;
const packed = (bits: number) => 2 * kvHeads * ((dim * bits) / 8 + (dim / 64) * 2 * 4);
const quantized = (bits: number) => (q: mx.MxArray, l: Layer) =>
  mx.fast.quantizedScaledDotProductAttention(q, l.quantized[bits]!.keys, l.quantized[bits]!.values, scale, {
    bits,
    groupSize: 64,
  });
const variants: Variant[] = [
  {
    name: "float32, our kernel",
    kernels: true,
    bytes: float(4),
    attend: (q, l) => mx.fast.scaledDotProductAttention(q, l.keys, l.values, scale),
  },
  {
    name: "float16, our kernel",
    kernels: true,
    bytes: float(2),
    attend: (q, l) => mx.fast.scaledDotProductAttention(q, l.halfKeys, l.halfValues, scale),
  },
  { name: "8-bit, our kernel", kernels: true, bytes: packed(8), attend: quantized(8) },
  { name: "4-bit, our kernel", kernels: true, bytes: packed(4), attend: quantized(4) },
  ...[8, 4].map((bits) => ({
    name: `${bits}-bit, keys per channel, our kernel`,
    kernels: true,
    bytes: packed(bits),
    attend: (q: mx.MxArray, l: Layer) =>
      mx.fast.quantizedScaledDotProductAttention(q, l.channelKeys[bits]!, l.quantized[bits]!.values, scale, {
        bits,
        groupSize: 64,
      }),
  })),
  { name: "8-bit, MLX's quantized matmuls", kernels: false, bytes: packed(8), attend: quantized(8) },
  { name: "4-bit, MLX's quantized matmuls", kernels: false, bytes: packed(4), attend: quantized(4) },
];

/** One decode step's attention over every layer: [wall ms, CPU ms]. */
function step(v: Variant, q: mx.MxArray, model: Layer[]): [number, number] {
  const previous = mx.useCpuKernels(v.kernels);
  try {
    const [wall, cpu] = [performance.now(), process.cpuUsage()];
    for (const layer of model) mx.scope(() => mx.evaluate(v.attend(q, layer)));
    const used = process.cpuUsage(cpu);
    return [performance.now() - wall, (used.user + used.system) / 1000];
  } finally {
    mx.useCpuKernels(previous);
  }
}

mx.random.seed(1);
const q = mx.keep(mx.random.normal([1, qHeads, 1, dim]));
console.log(
  `${runs} interleaved runs; medians of one decode step's attention over ${layers} layers (ms). Our kernels: ${mx.cpuKernels()}.\n`,
);
console.log("| context | cache, attention | wall ms | CPU ms | CPU against float32 | K/V read, GB/s of wall |");
console.log("|---:|---|---:|---:|---:|---:|");
for (const context of values.contexts!.split(",").map(Number)) {
  const model = layersAt(context);
  const times = variants.map(() => ({ wall: [] as number[], cpu: [] as number[] }));
  for (let run = 0; run < runs; run++) {
    // Rotate the order each run so no variant always goes first.
    for (let i = 0; i < variants.length; i++) {
      const at = (i + run) % variants.length;
      const [wall, cpu] = step(variants[at]!, q, model);
      times[at]!.wall.push(wall);
      times[at]!.cpu.push(cpu);
    }
  }
  const floatCpu = median(times[0]!.cpu);
  variants.forEach((v, i) => {
    const [wall, cpu] = [median(times[i]!.wall), median(times[i]!.cpu)];
    const gbPerSecond = (v.bytes * context * layers) / (wall / 1000) / 1e9;
    console.log(
      `| ${context} | ${v.name} | ${wall.toFixed(1)} | ${cpu.toFixed(1)} | ${i === 0 ? "" : ratio(cpu, floatCpu)} | ${gbPerSecond.toFixed(1)} |`,
    );
  });
  for (const l of model)
    for (const t of [
      l.keys,
      l.values,
      l.halfKeys,
      l.halfValues,
      ...Object.values(l.quantized).flatMap((p) => [...p.keys, ...p.values]),
      ...Object.values(l.channelKeys).flat(),
    ])
      t.free();
}
