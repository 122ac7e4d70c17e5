// A Q6_K matrix's product as the loader held it before (dequantized to float16: x · Wᵀ through
// MLX's matmul, on our half-precision rows or OpenBLAS) against how it holds it now where our
// kernels run it (8-bit codes in groups of 16, repacked), with 8-bit groups of 32 beside them for
// the kernel's usual rate; interleaved call by call, medians in ms. Shapes: gemma3 270M's down
// projection, and a 1B-class down projection and output layer. Prints Markdown.
//
//   node_modules/.bin/bun bench/qmm-half-groups.ts [--runs 21]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { evaluationMs } from "./evaluation-time";
import { median, ratio } from "./lib";

const { values } = parseArgs({ options: { runs: { type: "string", default: "21" } } });
const runs = Number(values.runs);

// [N outputs, K inputs, what]
const shapes: [number, number, string][] = [
  [640, 2048, "gemma3 270M down_proj"],
  [2048, 8192, "1B-class down_proj"],
  [32768, 2048, "1B-class output layer (32k vocabulary)"],
];
const rowCounts = [1, 8, 256];

if (!mx.cpuKernelsReadHalfGroups(16)) {
  console.error("our kernels do not run 8-bit groups of 16 here (they need AVX-512 VNNI, int16 mode)");
  process.exit(1);
}

console.log("| M × (N, K) | float16 (before) | 8-bit, groups of 16 (now) | now / before | 8-bit, groups of 32 |");
console.log("|---|---:|---:|---:|---:|");
for (const [n, k, what] of shapes) {
  mx.scope(() => {
    // Q6_K's layout as held: codes q + 96 (q < 64), a float32 scale per 16, the bias −128 · scale.
    const codes = mx.astype(
      mx.add(mx.multiply(mx.random.uniform([n, k], mx.Dtype.float32, mx.random.key(1)), 63.99), 96),
      mx.Dtype.uint8,
    );
    const scales = mx.multiply(mx.random.uniform([n, k / 16], mx.Dtype.float32, mx.random.key(2)), 0.002);
    const halfGroups = { weight: mx.view(codes, mx.Dtype.uint32), scales, biases: mx.multiply(scales, -128) };
    const values = mx.dequantize(halfGroups.weight, halfGroups.scales, halfGroups.biases, { groupSize: 16, bits: 8 });
    const halfT = mx.transpose(mx.astype(values, mx.Dtype.float16));
    const g32 = mx.quantize(values, { bits: 8, groupSize: 32 });
    const held = [
      mx.repackQuantized(halfGroups, { bits: 8, groupSize: 16 })!,
      mx.repackQuantized({ weight: g32.weight, scales: g32.scales, biases: g32.biases! }, { bits: 8, groupSize: 32 })!,
    ];
    mx.evaluate(halfT, ...held.flatMap((h) => [h.weight, h.scales, h.biases]));
    for (const m of rowCounts) {
      const x = mx.random.normal([m, k], mx.Dtype.float32, mx.random.key(3));
      mx.evaluate(x);
      const ops = [
        () => mx.matmul(x, halfT),
        () =>
          mx.quantizedMatmul(x, held[0]!.weight, held[0]!.scales, held[0]!.biases, { bits: 8, groupSize: 16 }, true),
        () =>
          mx.quantizedMatmul(x, held[1]!.weight, held[1]!.scales, held[1]!.biases, { bits: 8, groupSize: 32 }, true),
      ];
      const times = ops.map(() => [] as number[]);
      for (const op of ops) evaluationMs(op); // warm-up
      for (let r = 0; r < runs; r++) ops.forEach((op, i) => times[i]!.push(evaluationMs(op)));
      const [before, now, g32ms] = times.map(median) as [number, number, number];
      console.log(
        `| ${m} × (${n}, ${k}), ${what} | ${before.toFixed(3)} | ${now.toFixed(3)} | ${ratio(now, before)} | ${g32ms.toFixed(3)} |`,
      );
    }
  });
}
