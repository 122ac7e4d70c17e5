// Our quantized matmul kernel alone against MLX's own op (mx::quantized_matmul), in one process,
// interleaved call by call: the shapes of the default model and of a 1B-class layer, decode
// (M = 1) and batched rows (M = 8, 512). With --threads 1,2 the whole table is repeated in child
// processes per thread count (MLX_CPU_THREADS), interleaved round by round. Prints Markdown.
//
//   node_modules/.bin/bun bench/qmm.ts [--runs 20] [--threads 1,2] [--mlx-max-ms 2000]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { evaluationMs } from "./evaluation-time";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "20" },
    threads: { type: "string" },
    "mlx-max-ms": { type: "string", default: "2000" },
    json: { type: "boolean", default: false },
  },
});
const runs = Number(values.runs);

// [M, N, K, bits, group]: the default model's projections (SmolLM2-135M, 4-bit g32; its tied
// output layer 8-bit g32) and Llama-3.2-1B's MLP projections (4-bit g64), decoding and in a
// 32-token prompt (bench/synthetic-1b.ts runs the whole model).
const cases: [number, number, number, number, number][] = [
  [1, 1536, 576, 4, 32],
  [1, 576, 1536, 4, 32],
  [1, 49152, 576, 8, 32],
  [1, 8192, 2048, 4, 64],
  [32, 8192, 2048, 4, 64],
  [32, 2048, 8192, 4, 64],
  [8, 1536, 576, 4, 32],
  [512, 1536, 576, 4, 32],
];

interface Row {
  shape: string;
  ours: number;
  mlx: number;
}

function measure(): Row[] {
  return cases.map(([m, n, k, bits, groupSize]) =>
    mx.scope(() => {
      const q = mx.quantize(mx.random.normal([n, k], mx.Dtype.float32, mx.random.key(1)), { bits, groupSize });
      const scales = mx.astype(q.scales, mx.Dtype.float16);
      const biases = mx.astype(q.biases!, mx.Dtype.float16);
      const x = mx.random.normal([m, k], mx.Dtype.float32, mx.random.key(2));
      mx.evaluate(q.weight, scales, biases, x);
      const op = (ours: boolean) => () => {
        mx.useCpuKernels(ours);
        return mx.quantizedMatmul(x, q.weight, scales, biases, { bits, groupSize });
      };
      const ours: number[] = [];
      const theirs: number[] = [];
      evaluationMs(op(true));
      evaluationMs(op(false));
      // MLX's op on a large M takes seconds: fewer runs once it has used its time budget.
      let mlxSpent = 0;
      for (let r = 0; r < runs; r++) {
        ours.push(evaluationMs(op(true)));
        if (r < 3 || mlxSpent < Number(values["mlx-max-ms"])) {
          const t = evaluationMs(op(false));
          mlxSpent += t;
          theirs.push(t);
        }
      }
      mx.useCpuKernels(true);
      return { shape: `${m} × (${n}, ${k}) ${bits}-bit g${groupSize}`, ours: median(ours), mlx: median(theirs) };
    }),
  );
}

const gflops = (shape: string, ms: number) => {
  const [m, n, k] = shape.match(/\d+/g)!.map(Number);
  return ((2 * m! * n! * k!) / (ms * 1e6)).toFixed(1);
};

if (values.threads) {
  // Children per thread count, interleaved round by round; each reports its medians as JSON.
  const counts = values.threads.split(",").map(Number);
  const results = new Map<number, Row[][]>(counts.map((t) => [t, []]));
  const rounds = 3;
  for (let round = 0; round < rounds; round++) {
    for (const t of counts) {
      const child = Bun.spawnSync([process.execPath, import.meta.path, "--runs", String(runs), "--json"], {
        env: { ...process.env, MLX_CPU_THREADS: String(t) },
        stderr: "inherit",
      });
      if (child.exitCode !== 0) throw new Error(`bench child with ${t} threads failed`);
      results.get(t)!.push(JSON.parse(child.stdout.toString()));
    }
  }
  console.log(
    `| M × (N, K) | ${counts.map((t) => `ours, ${t} thread${t > 1 ? "s" : ""}`).join(" | ")} | ${counts
      .slice(1)
      .map((t) => `${t} vs ${counts[0]}`)
      .join(" | ")} |`,
  );
  console.log(
    `|---|${counts.map(() => "---:").join("|")}|${counts
      .slice(1)
      .map(() => "---:")
      .join("|")}|`,
  );
  cases.forEach((_, i) => {
    const ms = counts.map((t) => median(results.get(t)!.map((rows) => rows[i]!.ours)));
    const shape = results.get(counts[0]!)![0]![i]!.shape;
    console.log(
      `| ${shape} | ${ms.map((v) => `${v.toFixed(3)} ms`).join(" | ")} | ${ms
        .slice(1)
        .map((v) => ratio(ms[0]!, v))
        .join(" | ")} |`,
    );
  });
} else {
  const rows = measure();
  if (values.json) console.log(JSON.stringify(rows));
  else {
    console.log(`kernels: ${mx.cpuKernels()}; median of ${runs}`);
    console.log("| M × (N, K) | MLX | ours | speed-up | ours GFLOP/s |");
    console.log("|---|---:|---:|---:|---:|");
    for (const r of rows)
      console.log(
        `| ${r.shape} | ${r.mlx.toFixed(3)} ms | ${r.ours.toFixed(3)} ms | ${ratio(r.mlx, r.ours)} | ${gflops(r.shape, r.ours)} |`,
      );
  }
}
