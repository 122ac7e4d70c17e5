// Our RMSNorm, RoPE, SiLU·mul and GELU·mul, logsumexp and greedy sampling primitives (ffi/src/kernels/) against MLX's
// ops on the same inputs: odd sizes, strided inputs, every RoPE variant the models use.
import { describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import {
  errorsAgainstMlxPerInstructionSet,
  numbersPerInstructionSet,
  relativeError,
  withMlxKernels,
} from "./helpers/kernels";

/** Ours and MLX's on the same inputs, within `tolerance`; returns the relative error. */
function compare(op: () => mx.MxArray, tolerance: number): number {
  return mx.scope(() => {
    const ours = op();
    const reference = withMlxKernels(op);
    expect(ours.shape).toEqual(reference.shape);
    expect(ours.dtype).toBe(reference.dtype);
    const error = relativeError(ours, reference);
    expect(error).toBeLessThan(tolerance);
    return error;
  });
}

const normal = (shape: number[], dtype: mx.DtypeCode = mx.Dtype.float32) =>
  mx.keep(mx.astype(mx.random.normal(shape), dtype));

describe("RMSNorm kernel", () => {
  mx.random.seed(5);

  test("rows of odd widths, with and without a weight, one row and many", () => {
    for (const [rows, dim] of [
      [1, 576],
      [17, 100],
      [300, 64],
      [3, 7],
    ] as const) {
      const x = normal([rows, dim]);
      const w = normal([dim]);
      compare(() => mx.fast.rmsNorm(x, w, 1e-5), 1e-6);
      compare(() => mx.fast.rmsNorm(x, undefined, 1e-6), 1e-6);
    }
  });

  test("a transposed (strided) input and 3-D batches", () => {
    const x = normal([64, 5, 9]);
    const w = normal([64]);
    compare(() => mx.fast.rmsNorm(mx.transpose(x, [1, 2, 0]), w, 1e-5), 1e-6);
  });

  test("bfloat16 activations with a bfloat16 or float32 weight keep MLX's output type", () => {
    const x = normal([4, 3, 576], mx.Dtype.bfloat16);
    const [halfWeight, weight] = [normal([576], mx.Dtype.bfloat16), normal([576])];
    compare(() => mx.fast.rmsNorm(x, halfWeight, 1e-5), 1e-2);
    compare(() => mx.fast.rmsNorm(x, weight, 1e-5), 1e-2);
  });

  test("float16 activations (Gemma's) with a float16 or float32 weight, and without one", () => {
    const x = normal([2, 5, 640], mx.Dtype.float16);
    const [halfWeight, weight] = [normal([640], mx.Dtype.float16), normal([640])];
    compare(() => mx.fast.rmsNorm(x, halfWeight, 1e-6), 2e-3);
    compare(() => mx.fast.rmsNorm(x, weight, 1e-6), 2e-3);
    compare(() => mx.fast.rmsNorm(x, undefined, 1e-6), 2e-3);
  });

  test("every instruction set's path (MLX_CPU_ISA) agrees with MLX's op", () => {
    // Each set's vector code is its own (rms_norm_<isa>.cpp): run each, in a process of its own,
    // on rows of whole and partial vectors, in each type, with and without a weight.
    const cases = `[mx.Dtype.float32, mx.Dtype.float16, mx.Dtype.bfloat16].flatMap((dtype) => [640, 1539].map((dim) => {
      const x = mx.astype(mx.multiply(mx.random.normal([9, dim], mx.Dtype.float32, mx.random.key(1)), 4), dtype);
      const w = mx.astype(mx.random.normal([dim], mx.Dtype.float32, mx.random.key(2)), dtype);
      return () => [mx.fast.rmsNorm(x, w, 1e-6), mx.fast.rmsNorm(x, undefined, 1e-6)];
    }))`;
    // float32 twice (two widths), then float16 and bfloat16: within a rounding of each.
    const tolerances = [1e-6, 1e-6, 2e-3, 2e-3, 1e-2, 1e-2];
    for (const errors of errorsAgainstMlxPerInstructionSet(cases)) {
      expect(errors).toHaveLength(tolerances.length);
      errors.forEach((error, i) => expect(error).toBeLessThan(tolerances[i]!));
    }
  });
});

describe("RoPE kernel", () => {
  mx.random.seed(6);
  // [B, L, H, D] seen as [B, H, L, D], as the attention layers hand it over.
  const heads = (b: number, l: number, h: number, d: number, dtype?: mx.DtypeCode) => {
    const x = normal([b, l, h, d], dtype);
    return () => mx.transpose(x, [0, 2, 1, 3]);
  };

  test("rotate-half and traditional layouts, decode and prefill positions", () => {
    for (const traditional of [false, true]) {
      for (const [l, offset] of [
        [1, 0],
        [1, 1999],
        [17, 0],
        [130, 300],
      ] as const) {
        const x = heads(1, l, 9, 64);
        // Angles near 2,000 radians: one ulp of the angle moves sin/cos by ~1e-4.
        compare(() => mx.fast.rope(x(), { dims: 64, traditional, base: 10000, scale: 1, offset }), 1e-4);
      }
    }
  });

  test("partial rotation (dims < head size), a linear scale, odd head counts", () => {
    const x = heads(2, 5, 3, 80);
    compare(() => mx.fast.rope(x(), { dims: 32, traditional: false, base: 500000, scale: 0.25, offset: 7 }), 2e-5);
  });

  test("precomputed frequencies, as llama3 scaling and GGUF rope_freqs give them", () => {
    const x = heads(1, 9, 4, 64);
    const freqs = mx.keep(mx.power(10000, mx.divide(mx.arange(0, 64, 2, mx.Dtype.float32), 64)));
    compare(() => mx.fast.rope(x(), { dims: 64, traditional: false, scale: 1, offset: 40, freqs }), 2e-5);
  });

  test("one offset per batch row (continuous batching)", () => {
    const x = heads(3, 2, 9, 64);
    const offset = mx.keep(mx.array(Int32Array.from([0, 37, 512])));
    compare(() => mx.fast.rope(x(), { dims: 64, traditional: false, base: 10000, scale: 1, offset }), 2e-5);
  });

  test("bfloat16 input: rotated in fp32, returned in bfloat16", () => {
    const x = heads(1, 6, 4, 64, mx.Dtype.bfloat16);
    compare(() => mx.fast.rope(x(), { dims: 64, traditional: false, base: 10000, scale: 1, offset: 3 }), 2e-2);
  });
});

describe("SiLU·mul and GELU·mul (gated activation) kernel", () => {
  mx.random.seed(8);
  // Within a few ulps of MLX's ops: the exponential is a vector one (about 1 ulp), and a half
  // result may round the other way.
  const tolerances = [
    [mx.Dtype.float32, 1e-6],
    [mx.Dtype.float16, 2e-3],
    [mx.Dtype.bfloat16, 2e-2],
  ] as const;

  test("silu(gate) * up for 1, 3, 8 and 17 rows, odd widths (partial vectors), fp32, fp16 and bf16", () => {
    for (const [dtype, tolerance] of tolerances) {
      for (const shape of [
        [1, 1, 1536],
        [3, 1537],
        [8, 1536],
        [1, 17, 1000],
        [3, 7],
        [17, 3],
      ]) {
        const [gate, up] = [normal(shape, dtype), normal(shape, dtype)];
        compare(() => mx.fast.siluMul(gate, up), tolerance);
        compare(() => mx.fast.siluMul(mx.multiply(gate, 12), up), tolerance);
      }
    }
  });

  test("gelu_approx(gate) * up (Gemma's GeGLU) against mlx.nn.gelu_approx's ops: rows, odd widths, strided halves, each type", () => {
    for (const [dtype, tolerance] of tolerances) {
      for (const shape of [
        [1, 1, 2048],
        [3, 1537],
        [17, 3],
      ]) {
        const [gate, up] = [normal(shape, dtype), normal(shape, dtype)];
        compare(() => mx.fast.geluApproxMul(gate, up), tolerance);
        compare(() => mx.fast.geluApproxMul(mx.multiply(gate, 12), up), tolerance);
      }
      const fused = normal([2, 3, 2 * 1536], dtype);
      const half = (start: number) => mx.slice(fused, [0, 0, start], [2, 3, start + 1536]);
      compare(() => mx.fast.geluApproxMul(half(0), half(1536)), tolerance);
    }
  });

  test("gate and up as the two halves of one fused projection's output (strided views)", () => {
    for (const [dtype, tolerance] of tolerances) {
      const fused = normal([2, 3, 2 * 1536], dtype);
      const half = (start: number) => mx.slice(fused, [0, 0, start], [2, 3, start + 1536]);
      compare(() => mx.fast.siluMul(half(0), half(1536)), tolerance);
      compare(() => mx.fast.siluMul(mx.transpose(half(1536), [1, 0, 2]), mx.transpose(half(0), [1, 0, 2])), tolerance);
      // Elements apart along the last axis, gathered.
      compare(() => mx.fast.siluMul(mx.transpose(half(0), [2, 1, 0]), mx.transpose(half(1536), [2, 1, 0])), tolerance);
    }
  });

  test("a row gives the same bits alone, in a batch of any size (split over threads or not) and strided", () => {
    const bits = (a: mx.MxArray) => mx.view(a, a.dtype === mx.Dtype.float32 ? mx.Dtype.uint32 : mx.Dtype.uint16);
    const same = (a: mx.MxArray, b: mx.MxArray) => mx.all(mx.equal(bits(a), bits(b))).item() === 1;
    for (const [dtype] of tolerances) {
      mx.scope(() => {
        const [gate, up] = [normal([17, 1537], dtype), normal([17, 1537], dtype)];
        const batch = mx.fast.siluMul(gate, up);
        for (const row of [0, 2, 7, 16]) {
          const alone = (a: mx.MxArray) => mx.contiguous(mx.slice(a, [row, 0], [row + 1, 1537]));
          const one = mx.fast.siluMul(alone(gate), alone(up));
          expect(same(one, alone(batch))).toBe(true);
        }
        const eight = mx.fast.siluMul(mx.slice(gate, [0, 0], [8, 1537]), mx.slice(up, [0, 0], [8, 1537]));
        expect(same(eight, mx.slice(batch, [0, 0], [8, 1537]))).toBe(true);
        const transposed = mx.fast.siluMul(mx.contiguous(mx.transpose(gate)), mx.contiguous(mx.transpose(up)));
        expect(same(mx.transpose(transposed), batch)).toBe(true);
      });
    }
  });

  test("MLX's ops where ours do not apply: mixed dtypes, broadcasting", () => {
    const gate = normal([4, 8]);
    mx.scope(() => {
      expect(mx.fast.siluMul(gate, normal([8], mx.Dtype.bfloat16)).shape).toEqual([4, 8]);
    });
  });

  test("every instruction set's path (MLX_CPU_ISA) agrees with MLX's op", () => {
    // Each set's vector code is its own (silu_mul_<isa>.cpp): run each, in a process of its own
    // (the set is chosen at start), on 1 and 8 rows with partial vectors, in each type, both activations.
    const cases = `[mx.Dtype.float32, mx.Dtype.float16, mx.Dtype.bfloat16].map((dtype) => {
      const [gate, up] = [1, 2].map((k) => mx.astype(mx.multiply(mx.random.normal([9, 1539], mx.Dtype.float32, mx.random.key(k)), 4), dtype));
      const row = (a) => mx.slice(a, [0, 0], [1, 1539]);
      return () => [mx.fast.siluMul, mx.fast.geluApproxMul].flatMap((op) => [op(row(gate), row(up)), op(gate, up)]);
    })`;
    for (const errors of errorsAgainstMlxPerInstructionSet(cases))
      errors.forEach((error, i) => expect(error).toBeLessThan(tolerances[i]![1]));
  });
});

describe("greedy sampling kernel", () => {
  mx.random.seed(11);

  /** The engine's composition: logprobs, their argmax, the chosen token's logprob. */
  const composed = (logits: mx.MxArray) => {
    const logprobs = mx.subtract(logits, mx.logsumexp(logits, -1, true));
    const tokens = mx.argmax(logprobs, -1, true);
    return [
      mx.astype(mx.reshape(tokens, [-1]), mx.Dtype.uint32),
      mx.reshape(mx.takeAlongAxis(logprobs, tokens, -1), [-1]),
    ];
  };
  const expectSame = (logits: mx.MxArray) =>
    mx.scope(() => {
      const { tokens, chosen } = mx.fast.greedyTokens(logits);
      const [theirTokens, theirChosen] = composed(logits);
      expect(tokens.dtype).toBe(mx.Dtype.uint32);
      expect(chosen.dtype).toBe(logits.dtype);
      expect(tokens.toArray()).toEqual(theirTokens!.toArray());
      expect(chosen.toArray()).toEqual(theirChosen!.toArray());
    });

  test("tokens and logprobs bit for bit as logsumexp, subtract, argmax and take give them: 1, 3, 8 rows, odd widths, fp32, fp16, bf16", () => {
    for (const dtype of [mx.Dtype.float32, mx.Dtype.float16, mx.Dtype.bfloat16])
      for (const [rows, width] of [
        [1, 49152],
        [3, 1000],
        [8, 49152],
        [2, 8193],
        [1, 7],
      ] as const)
        mx.scope(() => expectSame(mx.astype(mx.multiply(mx.random.normal([rows, width]), 8), dtype)));
  });

  test("ties keep the first index, within a stretch and across stretches; masked entries (-inf)", () => {
    mx.scope(() => {
      const width = 20000;
      const column = mx.reshape(mx.arange(0, width), [1, width]);
      const base = mx.random.normal([4, width]);
      const at = (...positions: number[]) =>
        positions.map((i) => mx.equal(column, i)).reduce((a, b) => mx.logicalOr(a, b));
      const row = mx.reshape(mx.arange(0, 4), [4, 1]);
      // Row 0: the top value at 5 and 7 (one stretch); row 1: at 9000 and 19000 (two); row 2: the
      // top value after a masked stretch; row 3: every entry equal.
      const top = mx.where(
        mx.logicalOr(
          mx.logicalAnd(mx.equal(row, 0), at(5, 7)),
          mx.logicalOr(mx.logicalAnd(mx.equal(row, 1), at(9000, 19000)), mx.logicalAnd(mx.equal(row, 2), at(17000))),
        ),
        mx.scalar(50),
        base,
      );
      const masked = mx.where(
        mx.logicalAnd(mx.equal(row, 2), mx.less(column, 16384)),
        mx.scalar(Number.NEGATIVE_INFINITY),
        top,
      );
      const logits = mx.where(mx.equal(row, 3), mx.scalar(1), masked);
      expectSame(logits);
      expect(mx.fast.greedyTokens(logits).tokens.toArray()).toEqual([5, 9000, 17000, 0]);
    });
  });

  test("MLX's ops where ours do not run: the same tokens", () => {
    mx.scope(() => {
      const logits = mx.multiply(mx.random.normal([3, 5000]), 8);
      const ours = withMlxKernels(() => mx.fast.greedyTokens(logits).tokens);
      expect(ours.toArray()).toEqual(withMlxKernels(() => composed(logits)[0]!).toArray());
    });
  });
});

describe("logsumexp kernel", () => {
  mx.random.seed(9);

  test("the sampler's row (every axis of [1, vocab]), the batch's rows, rows of odd widths, rows longer than one part", () => {
    const [logits, batch, rows, long, tall, half] = [
      normal([1, 49152]),
      normal([8, 49152]),
      normal([5, 1000]),
      normal([2, 3, 20001]),
      normal([300, 4]),
      normal([3, 5000], mx.Dtype.bfloat16),
    ];
    compare(() => mx.logsumexp(mx.multiply(logits, 10), undefined, true), 1e-6);
    compare(() => mx.logsumexp(mx.multiply(batch, 30), -1, true), 1e-6);
    compare(() => mx.logsumexp(rows, -1), 1e-6);
    compare(() => mx.logsumexp(long, -1, true), 1e-6);
    compare(() => mx.logsumexp(mx.transpose(tall), -1), 1e-6);
    compare(() => mx.logsumexp(half, -1), 1e-2);
  });

  test("masked entries (-inf), a fully masked row, and reductions over other axes (MLX's op)", () => {
    mx.scope(() => {
      const x = normal([2, 9000]);
      const column = mx.reshape(mx.arange(0, 9000), [1, 9000]);
      const row = mx.reshape(mx.arange(0, 2), [2, 1]);
      const masked = mx.where(
        mx.logicalOr(mx.equal(row, 1), mx.greaterEqual(column, 100)),
        mx.scalar(Number.NEGATIVE_INFINITY),
        x,
      );
      const ours = mx.logsumexp(masked, -1).toArray();
      const reference = withMlxKernels(() => mx.logsumexp(masked, -1)).toArray();
      expect(Math.abs(ours[0]! - reference[0]!)).toBeLessThan(1e-5);
      expect(ours[1]).toBe(Number.NEGATIVE_INFINITY);
      expect(reference[1]).toBe(Number.NEGATIVE_INFINITY);
    });
    const small = normal([6, 7]);
    compare(() => mx.logsumexp(small, 0), 1e-6);
    compare(() => mx.logsumexp(small, [0, 1]), 1e-6);
  });

  test("every instruction set's path (MLX_CPU_ISA) agrees with MLX's op", () => {
    // Each set's vector exponential is its own code (logsumexp_<isa>.cpp): run each, in a process
    // of its own (the set is chosen at start), on rows with tails, masked entries and wide ranges.
    const script = `
      import * as mx from "./src/mlx";
      const x = mx.random.normal([3, 20011], mx.Dtype.float32, mx.random.key(4));
      const wide = mx.multiply(x, 25);
      const hidden = mx.greaterEqual(mx.reshape(mx.arange(0, 20011), [1, 20011]), 37);
      const masked = mx.where(hidden, mx.scalar(Number.NEGATIVE_INFINITY), x);
      const all = () => [x, wide, masked].flatMap((a) => mx.logsumexp(a, -1).toArray());
      const ours = all();
      mx.useCpuKernels(false);
      const theirs = all();
      console.log(mx.cpuKernels().split(",")[0], Math.max(...ours.map((v, i) => Math.abs(v - theirs[i]) / Math.abs(theirs[i]))));
    `;
    for (const [error] of numbersPerInstructionSet(script)) expect(error).toBeLessThan(1e-6);
  });
});
