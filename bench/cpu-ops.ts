// Our CPU kernels against MLX's own ops, one op at a time, interleaved (ours, MLX's, ours, ...)
// on the same inputs: attention (decode over a long cache, causal prefill over a float32 and a
// float16 cache), float32 and bfloat16 matmuls, RMSNorm, RoPE and SiLU·mul, in the default
// model's shapes. Medians in ms.
//
//   node_modules/.bin/bun bench/cpu-ops.ts [--runs 9]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { median, ratio } from "./lib";

const { values } = parseArgs({ options: { runs: { type: "string", default: "9" } } });
const runs = Number(values.runs);

interface Case {
  name: string;
  op: () => mx.MxArray;
}

const keep = (a: mx.MxArray) => {
  mx.evaluate(a);
  return mx.keep(a);
};
const normal = (shape: number[], dtype: mx.DtypeCode = mx.Dtype.float32) =>
  keep(mx.astype(mx.random.normal(shape), dtype));
// Keys/values as the KV cache holds them: the used part of a larger buffer, [1, 3 heads, T, 64].
const cache = (used: number) =>
  keep(mx.slice(mx.random.normal([1, 3, used + 256, 64]), [0, 0, 0, 0], [1, 3, used, 64]));

mx.random.seed(1);
const [k2000, v2000, k512, v512] = [cache(2000), cache(2000), cache(512), cache(512)];
const [q1, q512] = [normal([1, 9, 1, 64]), normal([1, 9, 512, 64])];
// A prompt's queries over the float16 cache it has just filled (the default KV cache type).
const halfCache = (used: number) => keep(mx.astype(cache(used), mx.Dtype.float16));
const [q256, q1024] = [normal([1, 9, 256, 64]), normal([1, 9, 1024, 64])];
const [k256h, v256h, k1024h, v1024h] = [halfCache(256), halfCache(256), halfCache(1024), halfCache(1024)];
const [x1, x512, weight] = [normal([1, 1, 576]), normal([1, 512, 576]), normal([576])];
const [wT, wHalfT] = [
  keep(mx.transpose(normal([1536, 576]))),
  keep(mx.transpose(normal([1536, 576], mx.Dtype.bfloat16))),
];
const [xHalf1, xHalf512] = [normal([1, 1, 576], mx.Dtype.bfloat16), normal([1, 512, 576], mx.Dtype.bfloat16)];
const [gate, up] = [normal([1, 512, 1536]), normal([1, 512, 1536])];
const heads512 = keep(mx.transpose(normal([1, 512, 9, 64]), [0, 2, 1, 3]));
const rope = (x: mx.MxArray, offset: number) =>
  mx.fast.rope(x, { dims: 64, traditional: false, base: 100000, scale: 1, offset });

const cases: Case[] = [
  {
    name: "attention, decode: 1 query over 2,000 cached keys (9 q / 3 kv heads)",
    op: () => mx.fast.scaledDotProductAttention(q1, k2000, v2000, 0.125),
  },
  {
    name: "attention, prefill: 512 queries, causal",
    op: () => mx.fast.scaledDotProductAttention(q512, k512, v512, 0.125, "causal"),
  },
  {
    name: "attention, prefill over a float16 cache: 256 queries, causal",
    op: () => mx.fast.scaledDotProductAttention(q256, k256h, v256h, 0.125, "causal"),
  },
  {
    name: "attention, prefill over a float16 cache: 1,024 queries, causal",
    op: () => mx.fast.scaledDotProductAttention(q1024, k1024h, v1024h, 0.125, "causal"),
  },
  { name: "matmul fp32, 512 × 576 · 576 × 1536", op: () => mx.matmul(x512, wT) },
  { name: "matmul fp32, 1 × 576 · 576 × 1536", op: () => mx.matmul(x1, wT) },
  { name: "matmul bf16 weight, 512 × 576 · 576 × 1536", op: () => mx.matmul(xHalf512, wHalfT) },
  { name: "matmul bf16 weight, 1 × 576 · 576 × 1536", op: () => mx.matmul(xHalf1, wHalfT) },
  { name: "RMSNorm, 1 × 576", op: () => mx.fast.rmsNorm(x1, weight, 1e-5) },
  { name: "RMSNorm, 512 × 576", op: () => mx.fast.rmsNorm(x512, weight, 1e-5) },
  { name: "RoPE, 9 heads × 512 positions × 64", op: () => rope(heads512, 0) },
  { name: "RoPE, 9 heads × 1 position (decode at 2,000)", op: () => rope(q1, 2000) },
  { name: "SiLU·mul, 512 × 1536", op: () => mx.fast.siluMul(gate, up) },
];

function time(op: () => mx.MxArray): number {
  return mx.scope(() => {
    const started = performance.now();
    mx.evaluate(op());
    return performance.now() - started;
  });
}

console.log(`${runs} interleaved runs per op; medians (ms). Our kernels: ${mx.cpuKernels()}.\n`);
console.log("| op | ours | MLX's | speed-up |");
console.log("|---|---:|---:|---:|");
for (const c of cases) {
  const times = { ours: [] as number[], mlx: [] as number[] };
  for (let run = 0; run < runs; run++) {
    for (const ours of [true, false]) {
      mx.useCpuKernels(ours);
      (ours ? times.ours : times.mlx).push(time(c.op));
    }
  }
  mx.useCpuKernels(true);
  const [a, b] = [median(times.ours), median(times.mlx)];
  console.log(`| ${c.name} | ${a.toFixed(3)} | ${b.toFixed(3)} | ${ratio(b, a)} |`);
}
