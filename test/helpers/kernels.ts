// Checking our CPU kernels against MLX's own ops, in one process: the same inputs through both.
import * as mx from "../../src/mlx";

/** Runs fn with MLX's own kernels (ours off) and evaluates its result before switching back. */
export function withMlxKernels(fn: () => mx.MxArray): mx.MxArray {
  const previous = mx.useCpuKernels(false);
  try {
    const out = fn();
    mx.evaluate(out);
    return out;
  } finally {
    mx.useCpuKernels(previous);
  }
}

/** The largest |a - b| over the arrays, relative to the largest |b| (both read as fp32). */
export function relativeError(a: mx.MxArray, b: mx.MxArray): number {
  return mx.scope(() => {
    const f32 = (x: mx.MxArray) => mx.astype(x, mx.Dtype.float32);
    const diff = mx.max(mx.abs(mx.subtract(f32(a), f32(b)))).item();
    return diff / Math.max(mx.max(mx.abs(f32(b))).item(), 1e-30);
  });
}

/**
 * How far ours exceeds the bound on its error against the exact product x · wᵀ (x [M, K] fp32,
 * w [N, K] the dequantized weights) when x was rounded per block of 32 to `levels` steps each side
 * of zero (step = max |x| / levels over the block), as the 4-bit decode rows do with integer
 * activations: each x_k moves by at most half its step, so |ours - exact| <= Σ_k |w_k| · step_k / 2,
 * plus 1e-5 of Σ_k |w_k x_k| for the fp32 sums' order. At most 0: within the bound.
 */
export function roundingExcess(
  ours: mx.MxArray,
  exact: mx.MxArray,
  x: mx.MxArray,
  w: mx.MxArray,
  levels: number,
): number {
  return mx.scope(() => {
    const [m, k] = x.shape as [number, number];
    const blocks = mx.reshape(mx.abs(x), [m, k / 32, 32]);
    const blockHalfSteps = mx.broadcastTo(mx.divide(mx.max(blocks, -1, true), 2 * levels), blocks.shape);
    const halfStep = mx.reshape(blockHalfSteps, [m, k]);
    const absW = mx.transpose(mx.abs(w));
    const bound = mx.add(mx.matmul(halfStep, absW), mx.multiply(mx.matmul(mx.abs(x), absW), 1e-5));
    return mx.max(mx.subtract(mx.abs(mx.subtract(ours, exact)), bound)).item();
  });
}

/**
 * Runs `script` (TypeScript importing "./src/mlx", which prints the instruction set it ran
 * — `mx.cpuKernels().split(",")[0]` — then numbers, on one line) once per instruction set, each
 * in a process of its own (the set is chosen at start), and returns each run's numbers. A set
 * this CPU or build lacks falls back to a lesser one, checked all the same.
 */
export function numbersPerInstructionSet(script: string): number[][] {
  const sets = ["portable", "avx2", "avx512", "neon"];
  return sets.map((isa) => {
    const child = Bun.spawnSync([process.execPath, "-e", script], {
      env: { ...process.env, MLX_CPU_ISA: isa },
      stderr: "pipe",
    });
    if (child.exitCode !== 0) throw new Error(`MLX_CPU_ISA=${isa}: ${child.stderr.toString().trim()}`);
    const [ran, ...numbers] = child.stdout.toString().trim().split(" ");
    if (!sets.includes(ran!)) throw new Error(`MLX_CPU_ISA=${isa} ran '${ran}'`);
    return numbers.map(Number);
  });
}

/**
 * Our kernels against MLX's ops once per instruction set (numbersPerInstructionSet): `cases` is
 * script text for an array of functions, each giving one case's outputs; each case's number is
 * the largest difference of any of its outputs from MLX's, relative to that output's largest value.
 */
export function errorsAgainstMlxPerInstructionSet(cases: string): number[][] {
  return numbersPerInstructionSet(`
    import * as mx from "./src/mlx";
    const errors = (${cases}).map((outputs) => {
      const widened = () => outputs().map((y) => mx.astype(y, mx.Dtype.float32));
      const ours = widened();
      mx.useCpuKernels(false);
      const theirs = widened();
      mx.useCpuKernels(true);
      return Math.max(...ours.map((o, i) => mx.max(mx.abs(mx.subtract(o, theirs[i]))).item() / mx.max(mx.abs(theirs[i])).item()));
    });
    console.log(mx.cpuKernels().split(",")[0], errors.join(" "));
  `);
}
