// MLX's float32 matmul answered by OpenBLAS through our cblas_sgemm (ffi/src/kernels/openblas/),
// split over our pool: against a float64 product and against MLX's bundled BLAS, for one row,
// odd sizes, transposed operands, batches, and products big enough to be split. Half-precision
// weights: a few rows read the weights in place (the half-rows kernel, each instruction set's),
// more are widened block by block for OpenBLAS; both multiply in fp32.
import { describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import { numbersPerInstructionSet, relativeError, withMlxKernels } from "./helpers/kernels";

const f32 = (x: mx.MxArray) => mx.astype(x, mx.Dtype.float32);
const f64 = (x: mx.MxArray) => mx.astype(x, mx.Dtype.float64);

/** a @ b with ours, with MLX's BLAS, and in float64 (its own BLAS routine, untouched by us). */
function check(a: mx.MxArray, b: mx.MxArray): number {
  return mx.scope(() => {
    mx.evaluate(a, b);
    const ours = mx.matmul(a, b);
    const bundled = withMlxKernels(() => mx.matmul(a, b));
    const exact = f32(mx.matmul(f64(a), f64(b)));
    expect(ours.shape).toEqual(bundled.shape);
    expect(relativeError(ours, exact)).toBeLessThan(1e-5);
    const fromBundled = relativeError(ours, bundled);
    expect(fromBundled).toBeLessThan(1e-5);
    return fromBundled;
  });
}

describe("float32 matmul through OpenBLAS", () => {
  mx.random.seed(11);
  const normal = (shape: number[]) => mx.random.normal(shape);

  test("M = 1, 3, 17 and 512 rows against odd N and K", () => {
    for (const m of [1, 3, 17]) check(normal([m, 291]), normal([291, 1003]));
    // OpenBLAS answered, not the bundled BLAS: their rounding differs somewhere in 500k sums.
    expect(check(normal([512, 291]), normal([291, 1003]))).toBeGreaterThan(0);
  });

  test("wide products split by columns, tall ones by rows", () => {
    check(normal([20, 576]), normal([576, 4099]));
    check(normal([1500, 64]), normal([64, 70]));
  });

  test("transposed operands, as attention's q kᵀ and a transposed weight", () => {
    check(normal([33, 64]), mx.transpose(normal([257, 64])));
    check(mx.transpose(normal([100, 45])), normal([100, 77]));
  });

  test("batched and broadcast products", () => {
    check(normal([4, 3, 17, 64]), normal([4, 3, 64, 129]));
    check(normal([2, 9, 5, 64]), normal([64, 40]));
  });
});

describe("bfloat16 and float16 weights", () => {
  mx.random.seed(12);

  test("x · Wᵀ for a transposed half-precision weight, one row and many", () => {
    for (const dtype of [mx.Dtype.bfloat16, mx.Dtype.float16]) {
      for (const rows of [1, 3, 17, 130]) {
        mx.scope(() => {
          const x = mx.astype(mx.random.normal([1, rows, 576]), dtype);
          const weightT = mx.transpose(mx.astype(mx.random.normal([1000, 576]), dtype));
          mx.evaluate(x, weightT);
          const ours = mx.matmul(x, weightT);
          const theirs = withMlxKernels(() => mx.matmul(x, weightT));
          const exact = mx.astype(mx.matmul(f64(x), f64(weightT)), dtype);
          expect(ours.shape).toEqual([1, rows, 1000]);
          expect(ours.dtype).toBe(dtype);
          const error = relativeError(ours, exact);
          expect(error).toBeLessThan(dtype === mx.Dtype.bfloat16 ? 1e-2 : 2e-3);
          // Ours, not MLX's kernel: over 130 x 1000 sums some rounding differs.
          if (rows === 130) expect(relativeError(ours, theirs)).toBeGreaterThan(0);
        });
      }
    }
  });

  test("a transposed half weight, every instruction set's code: up to 8 rows read it in place (each row's bits alone or in a batch), more widen it for OpenBLAS", () => {
    // Odd K (partial vectors), N past a tile of 4; against float64's product.
    const script = `
      import * as mx from "./src/mlx";
      const errors = [];
      for (const dtype of [mx.Dtype.float16, mx.Dtype.bfloat16])
        for (const [rows, k, n] of [[1, 1003, 131], [3, 64, 13], [8, 577, 1000], [17, 577, 131]]) {
          const x = mx.random.normal([rows, k], mx.Dtype.float32, mx.random.key(rows));
          const weightT = mx.transpose(mx.astype(mx.random.normal([n, k], mx.Dtype.float32, mx.random.key(k)), dtype));
          const ours = mx.matmul(x, weightT);
          const exact = mx.astype(mx.matmul(mx.astype(x, mx.Dtype.float64), mx.astype(weightT, mx.Dtype.float64)), mx.Dtype.float32);
          const alone = mx.matmul(mx.slice(x, [rows - 1, 0], [rows, k]), weightT);
          const same = rows > 8 || mx.all(mx.equal(alone, mx.slice(ours, [rows - 1, 0], [rows, n]))).item();
          errors.push(same ? mx.max(mx.abs(mx.subtract(ours, exact))).item() / mx.max(mx.abs(exact)).item() : 1);
        }
      console.log(mx.cpuKernels().split(",")[0], errors.join(" "));
    `;
    for (const errors of numbersPerInstructionSet(script)) {
      expect(errors).toHaveLength(8);
      for (const error of errors) expect(error).toBeLessThan(1e-5);
    }
  });

  test("float32 activations with a bfloat16 weight give float32, as MLX's type promotion does", () => {
    mx.scope(() => {
      const x = mx.random.normal([5, 64]);
      const w = mx.astype(mx.random.normal([64, 33]), mx.Dtype.bfloat16);
      const ours = mx.matmul(x, w);
      expect(ours.dtype).toBe(mx.Dtype.float32);
      expect(relativeError(ours, f32(mx.matmul(f64(x), f64(w))))).toBeLessThan(1e-5);
    });
  });
});
