// The wall time of one MLX evaluation, for the benchmarks that time single ops.
import * as mx from "../src/mlx";

/** ms to build and evaluate `op`'s output, its arrays freed when the scope ends included. */
export function evaluationMs(op: () => mx.MxArray): number {
  const started = performance.now();
  mx.scope(() => mx.evaluate(op()));
  return performance.now() - started;
}
