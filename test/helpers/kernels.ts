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
