// Our quantized matmul kernel in two builds of the shim, A against B: child processes alternate
// between the builds (MLX_SHIM_PATH) round by round, each timing the decode-sized products
// (M = 1, 4 and 8) of the default model; prints the medians over all rounds and B's speed-up.
// --shapes 1b: a Llama-3.2-1B's products as its Q4_0 GGUF loads (4-bit g32, float16 scales, every
// bias -8 × its scale) decoding (M = 1, 8) and in prompts (M = 32, 512), each matrix in enough
// copies (64 MB and more in all) that, as in a model, its weights come from memory.
// --cpu: the process's CPU time per product (its runs' total over their count) instead of the
// wall clock's median, steadier on a loaded machine; with MLX_CPU_THREADS=1 that is the kernel's.
// --repacked: B's weights repacked for the decode rows (mx.repackQuantized, where this CPU reads
// them so); with --a and --b the same build, the two layouts against each other.
//
//   node_modules/.bin/bun bench/qmm-builds.ts --a old/libmlx_shim.so --b build/ffi/libmlx_shim.so [--rounds 6] [--runs 100] [--shapes default|1b] [--cpu] [--repacked]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: {
    a: { type: "string" },
    b: { type: "string" },
    rounds: { type: "string", default: "6" },
    runs: { type: "string", default: "100" },
    shapes: { type: "string", default: "default" },
    cpu: { type: "boolean", default: false },
    repacked: { type: "boolean", default: false },
    child: { type: "boolean", default: false },
  },
});
const llama1B = values.shapes === "1b";

// [M, N, K, bits, group]: SmolLM2-135M's projections (4-bit g32, q/k/v and gate/up fused) and
// its tied output layer (8-bit g32).
// Llama-3.2-1B's: q/k/v and gate/up fused, the down projection, the 128,256-row output layer.
const cases: [number, number, number, number, number][] = llama1B
  ? [
      [1, 3072, 2048, 4, 32],
      [1, 16384, 2048, 4, 32],
      [1, 2048, 8192, 4, 32],
      [1, 128256, 2048, 4, 32],
      [8, 16384, 2048, 4, 32],
      [32, 3072, 2048, 4, 32],
      [32, 2048, 8192, 4, 32],
      [512, 3072, 2048, 4, 32],
    ]
  : [
      [1, 960, 576, 4, 32],
      [1, 3072, 576, 4, 32],
      [1, 576, 1536, 4, 32],
      [1, 49152, 576, 8, 32],
      [4, 3072, 576, 4, 32],
      [8, 3072, 576, 4, 32],
      [8, 49152, 576, 8, 32],
    ];
const label = ([m, n, k, bits, g]: (typeof cases)[number]) => `${m} × (${n}, ${k}) ${bits}-bit g${g}`;

if (values.child) {
  const medians = cases.map(([m, n, k, bits, groupSize]) =>
    mx.scope(() => {
      const copies = llama1B ? Math.max(1, Math.ceil((64 << 20) / ((n * k) / 2))) : 1;
      const weights = Array.from({ length: copies }, (_, i) => {
        const q = mx.quantize(mx.random.normal([n, k], mx.Dtype.float32, mx.random.key(1 + i)), { bits, groupSize });
        const scales = llama1B ? mx.astype(q.scales, mx.Dtype.float16) : q.scales;
        const biases = llama1B ? mx.multiply(scales, mx.scalar(-8, mx.Dtype.float16)) : q.biases!;
        const t = { weight: q.weight, scales, biases };
        return (values.repacked && mx.repackQuantized(t, { bits, groupSize })) || t;
      });
      const x = mx.random.normal([m, k], mx.Dtype.float32, mx.random.key(2));
      mx.evaluate(x, ...weights.flatMap((w) => [w.weight, w.scales, w.biases]));
      const times: number[] = [];
      // Prompt-sized products take 10-100 ms each: fewer runs.
      const runs = m >= 32 ? Math.min(Number(values.runs), 8) : Number(values.runs);
      let cpuStarted = process.cpuUsage();
      for (let r = 0; r <= runs; r++) {
        const w = weights[r % copies]!;
        const started = performance.now();
        mx.scope(() => mx.evaluate(mx.quantizedMatmul(x, w.weight, w.scales, w.biases, { bits, groupSize })));
        if (r > 0) times.push(performance.now() - started);
        else cpuStarted = process.cpuUsage();
      }
      if (!values.cpu) return median(times);
      const cpu = process.cpuUsage(cpuStarted);
      return (cpu.user + cpu.system) / 1000 / runs;
    }),
  );
  console.log(JSON.stringify(medians));
} else {
  if (!values.a || !values.b) throw new Error("--a and --b: the two builds' libmlx_shim paths");
  const samples = { a: cases.map((): number[] => []), b: cases.map((): number[] => []) };
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const build of ["a", "b"] as const) {
      const child = Bun.spawnSync(
        [
          process.execPath,
          import.meta.path,
          "--child",
          "--runs",
          values.runs!,
          "--shapes",
          values.shapes,
          ...(values.cpu ? ["--cpu"] : []),
          ...(values.repacked && build === "b" ? ["--repacked"] : []),
        ],
        {
          env: { ...process.env, MLX_SHIM_PATH: values[build] },
          stderr: "inherit",
        },
      );
      if (child.exitCode !== 0) throw new Error(`bench child for build ${build} failed`);
      (JSON.parse(child.stdout.toString()) as number[]).forEach((ms, i) => samples[build][i]!.push(ms));
    }
  }
  console.log("| product | A (ms) | B (ms) | B's speed-up |\n|---|---:|---:|---:|");
  cases.forEach((c, i) => {
    const a = median(samples.a[i]!),
      b = median(samples.b[i]!);
    console.log(`| ${label(c)} | ${a.toFixed(3)} | ${b.toFixed(3)} | ${ratio(a, b)} |`);
  });
}
