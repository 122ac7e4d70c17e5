// Our fused block primitives (ffi/src/kernels/mlp_block.cpp, attention_input.cpp, attention_output.cpp,
// and the last two as one) against the composition of the ops they replace: identical with our
// kernels (same kernels, same rounding of every intermediate), within tolerance of MLX's own ops,
// and MLX's ops where ours do not apply.
import { describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import { encodeKeys } from "../src/models/channel-keys";
import { relativeError, withMlxKernels } from "./helpers/kernels";

const normal = (shape: number[], dtype: mx.DtypeCode = mx.Dtype.float32) =>
  mx.keep(mx.astype(mx.random.normal(shape), dtype));

/** A random [outputs, inputs] projection, affine-quantized. */
function projection(
  outputs: number,
  inputs: number,
  quant: mx.QuantSpec,
  dtype: mx.DtypeCode,
): mx.fast.QuantizedWeights {
  const q = mx.quantize(mx.multiply(normal([outputs, inputs], dtype), 0.05), quant);
  const [weight, scales, biases] = [q.weight, q.scales, q.biases!].map((t) => mx.keep(t));
  mx.evaluate(weight!, scales!, biases!);
  return { weight: weight!, scales: scales!, biases: biases!, quant };
}

/** The MLP half of a block as the model composed it before the fused op. */
function composed(h: mx.MxArray, norm: mx.MxArray, eps: number, p: ReturnType<typeof mlpCase>): mx.MxArray {
  const { gateUp, down } = p;
  const both = mx.quantizedMatmul(
    mx.fast.rmsNorm(h, norm, eps),
    gateUp.weight,
    gateUp.scales,
    gateUp.biases,
    gateUp.quant,
  );
  const width = both.shape.at(-1)! / 2;
  const lead = both.shape.slice(0, -1);
  const half = (start: number) => mx.slice(both, [...lead.map(() => 0), start], [...lead, start + width]);
  const activated = mx.fast.siluMul(half(0), half(width));
  return mx.add(h, mx.quantizedMatmul(activated, down.weight, down.scales, down.biases, down.quant));
}

function mlpCase(dim: number, hidden: number, gateUp: mx.QuantSpec, down: mx.QuantSpec, dtype: mx.DtypeCode) {
  return {
    norm: normal([dim], dtype),
    gateUp: projection(2 * hidden, dim, gateUp, dtype),
    down: projection(dim, hidden, down, dtype),
  };
}

const fused = (h: mx.MxArray, p: ReturnType<typeof mlpCase>, eps = 1e-5) =>
  mx.fast.mlpBlock(h, p.norm, eps, p.gateUp, p.down);

describe("fused MLP block", () => {
  mx.random.seed(21);

  test("identical to the composition on our kernels; one row and many, odd sizes, 4 and 8 bits", () => {
    for (const [rows, dim, hidden, gateUp, down] of [
      [1, 576, 1536, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 4 }],
      [3, 96, 160, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 8 }],
      [17, 128, 320, { groupSize: 64, bits: 8 }, { groupSize: 64, bits: 4 }],
      [40, 256, 128, { groupSize: 128, bits: 4 }, { groupSize: 128, bits: 4 }],
    ] as const) {
      const p = mlpCase(dim, hidden, gateUp, down, mx.Dtype.float32);
      const h = normal([1, rows, dim]);
      mx.scope(() => {
        const [ours, reference] = [fused(h, p), composed(h, p.norm, 1e-5, p)];
        expect(ours.shape).toEqual([1, rows, dim]);
        expect(ours.dtype).toBe(mx.Dtype.float32);
        expect(mx.max(mx.abs(mx.subtract(ours, reference))).item()).toBe(0);
        // And MLX's own ops (its quantized matmul sums in another order).
        expect(
          relativeError(
            ours,
            withMlxKernels(() => fused(h, p)),
          ),
        ).toBeLessThan(1e-4);
      });
    }
  });

  // A GGUF's Q6_K down projection, held as 8-bit codes in groups of 16 where our kernels run them
  // (repacked: MLX's ops refuse that group size, and dequantize it where our kernels are off).
  test("a down projection in 8-bit groups of 16, repacked: identical to the composition; MLX's kernels within tolerance", () => {
    const [dim, hidden] = [64, 256];
    if (!mx.cpuKernelsReadHalfGroups(dim)) return;
    const p = mlpCase(dim, hidden, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    const codes = mx.astype(mx.multiply(mx.random.uniform([dim, hidden]), 63.99), mx.Dtype.uint8);
    const scales = mx.multiply(mx.random.uniform([dim, hidden / 16]), 0.002);
    const quant = { groupSize: 16, bits: 8 };
    const halfGroups = { weight: mx.view(codes, mx.Dtype.uint32), scales, biases: mx.multiply(scales, -32) };
    const repack = (w: mx.QuantizedArrays, q: mx.QuantSpec) => {
      const r = mx.repackQuantized(w, q)!;
      mx.evaluate(r.weight, r.scales, r.biases);
      return { ...r, quant: q };
    };
    const q = { ...p, gateUp: repack(p.gateUp, p.gateUp.quant), down: repack(halfGroups, quant) };
    for (const rows of [1, 5, 40]) {
      const h = normal([1, rows, dim]);
      mx.scope(() => {
        const ours = fused(h, q);
        expect(mx.max(mx.abs(mx.subtract(ours, composed(h, q.norm, 1e-5, q)))).item()).toBe(0);
        expect(
          relativeError(
            ours,
            withMlxKernels(() => fused(h, q)),
          ),
        ).toBeLessThan(1e-4);
      });
    }
  });

  test("bfloat16 activations and weights: every intermediate rounded as the composition rounds it", () => {
    const p = mlpCase(192, 224, { groupSize: 64, bits: 4 }, { groupSize: 32, bits: 4 }, mx.Dtype.bfloat16);
    for (const rows of [1, 9]) {
      const h = normal([2, rows, 192], mx.Dtype.bfloat16);
      mx.scope(() => {
        const ours = fused(h, p);
        expect(ours.dtype).toBe(mx.Dtype.bfloat16);
        expect(mx.max(mx.abs(mx.subtract(ours, composed(h, p.norm, 1e-5, p)))).item()).toBe(0);
        expect(
          relativeError(
            ours,
            withMlxKernels(() => fused(h, p)),
          ),
        ).toBeLessThan(2e-2);
      });
    }
  });

  test("a strided (transposed) input", () => {
    const p = mlpCase(64, 96, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    const x = normal([64, 5, 1]);
    const h = () => mx.transpose(x, [2, 1, 0]);
    mx.scope(() => {
      expect(mx.max(mx.abs(mx.subtract(fused(h(), p), composed(h(), p.norm, 1e-5, p)))).item()).toBe(0);
    });
  });

  test("with MLX's kernels, MLX's ops composed; a norm weight of the wrong width refused as MLX refuses it", () => {
    const p = mlpCase(64, 96, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    const h = normal([1, 2, 64]);
    const off = withMlxKernels(() => fused(h, p));
    mx.scope(() => expect(mx.max(mx.abs(mx.subtract(off, composed(h, p.norm, 1e-5, p)))).item()).toBeLessThan(1e-3));
    expect(() => mx.scope(() => mx.fast.mlpBlock(h, normal([63]), 1e-5, p.gateUp, p.down))).toThrow();
  });

  test("shapes seen before (what composing told is remembered): the same result, MLX's ops with MLX's kernels, bad widths refused", () => {
    const p = mlpCase(96, 128, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 8 }, mx.Dtype.float32);
    const h = normal([2, 1, 96]);
    mx.scope(() => {
      const first = fused(h, p);
      for (let step = 0; step < 3; step++) {
        expect(mx.max(mx.abs(mx.subtract(fused(h, p), first))).item()).toBe(0);
        expect(mx.max(mx.abs(mx.subtract(fused(h, p), composed(h, p.norm, 1e-5, p)))).item()).toBe(0);
      }
      // Switched to MLX's kernels, the shapes seen still build MLX's ops (their sums round otherwise).
      const mlx = withMlxKernels(() => fused(h, p));
      expect(mx.max(mx.abs(mx.subtract(mlx, first))).item()).toBeGreaterThan(0);
      expect(relativeError(first, mlx)).toBeLessThan(1e-4);
    });
    expect(() => mx.scope(() => mx.fast.mlpBlock(h, normal([95]), 1e-5, p.gateUp, p.down))).toThrow();
    expect(() => mx.scope(() => mx.fast.mlpBlock(normal([2, 1, 64]), p.norm, 1e-5, p.gateUp, p.down))).toThrow();
  });
});

/** Attention's input as the model composed it before the fused op. */
function composedInput(
  x: mx.MxArray,
  norm: mx.MxArray,
  qkv: mx.fast.QuantizedWeights,
  shape: mx.fast.AttentionHeads,
  rotation: mx.fast.RopeOptions,
): mx.MxArray[] {
  const all = mx.quantizedMatmul(mx.fast.rmsNorm(x, norm, 1e-5), qkv.weight, qkv.scales, qkv.biases, qkv.quant);
  const [b, l] = x.shape as [number, number];
  const queries = shape.heads * shape.headDim;
  const keys = shape.kvHeads * shape.headDim;
  const heads = (start: number, stop: number, n: number) =>
    mx.transpose(mx.reshape(mx.slice(all, [0, 0, start], [b, l, stop]), [b, l, n, -1]), [0, 2, 1, 3]);
  return [
    mx.fast.rope(heads(0, queries, shape.heads), rotation),
    mx.fast.rope(heads(queries, queries + keys, shape.kvHeads), rotation),
    heads(queries + keys, all.shape[2]!, shape.kvHeads),
  ];
}

describe("fused attention input", () => {
  mx.random.seed(22);

  const inputCase = (dim: number, shape: mx.fast.AttentionHeads, quant: mx.QuantSpec, dtype: mx.DtypeCode) => ({
    norm: normal([dim], dtype),
    qkv: projection((shape.heads + 2 * shape.kvHeads) * shape.headDim, dim, quant, dtype),
  });

  function expectSame(ours: mx.MxArray[], reference: mx.MxArray[]) {
    expect(ours.map((t) => t.shape)).toEqual(reference.map((t) => t.shape));
    for (const [i, t] of ours.entries()) {
      expect(t.dtype).toBe(reference[i]!.dtype);
      expect(mx.max(mx.abs(mx.subtract(t, reference[i]!))).item()).toBe(0);
    }
  }

  test("identical to the composition on our kernels: decode and prefill rows, grouped heads, partial rotation", () => {
    for (const [batch, rows, dim, shape, dims, offset] of [
      [1, 1, 576, { heads: 9, kvHeads: 3, headDim: 64 }, 64, 40],
      [2, 3, 96, { heads: 3, kvHeads: 1, headDim: 32 }, 16, 0],
      [1, 17, 128, { heads: 4, kvHeads: 4, headDim: 48 }, 48, 1999],
    ] as const) {
      const p = inputCase(dim, shape, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
      const x = normal([batch, rows, dim]);
      for (const traditional of [false, true]) {
        const rotation = { dims, traditional, base: 10000, scale: 1, offset };
        mx.scope(() => {
          const ours = mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, shape, rotation);
          expectSame(ours, composedInput(x, p.norm, p.qkv, shape, rotation));
          const theirs = withMlxKernels(() =>
            mx.concatenate(mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, shape, rotation), 1),
          );
          expect(relativeError(mx.concatenate(ours, 1), theirs)).toBeLessThan(1e-3);
        });
      }
    }
  });

  test("bfloat16, 8 bits, precomputed frequencies and one offset per batch row", () => {
    const shape = { heads: 2, kvHeads: 1, headDim: 64 };
    const p = inputCase(128, shape, { groupSize: 64, bits: 8 }, mx.Dtype.bfloat16);
    const freqs = mx.keep(mx.power(10000, mx.divide(mx.arange(0, 64, 2, mx.Dtype.float32), 64)));
    const offset = mx.keep(mx.array(Int32Array.from([0, 37, 512])));
    const x = normal([3, 2, 128], mx.Dtype.bfloat16);
    const rotation = { dims: 64, traditional: false, scale: 1, offset, freqs };
    mx.scope(() => {
      const ours = mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, shape, rotation);
      expectSame(ours, composedInput(x, p.norm, p.qkv, shape, rotation));
    });
  });

  test("given a cache's buffers: the new rows written at their column, as sliceUpdate writes them; float16 buffers of float32 rows", () => {
    for (const [batch, rows, at, columns, held, activations] of [
      [1, 1, 40, 256, mx.Dtype.float16, mx.Dtype.float32],
      [2, 3, 0, 7, mx.Dtype.float32, mx.Dtype.float32],
      [3, 2, 5, 9, mx.Dtype.bfloat16, mx.Dtype.bfloat16],
    ] as const) {
      const shape = { heads: 4, kvHeads: 2, headDim: 32 };
      const p = inputCase(64, shape, { groupSize: 32, bits: 4 }, activations);
      const x = normal([batch, rows, 64], activations);
      const rotation = { dims: 32, traditional: false, base: 10000, scale: 1, offset: at };
      const buffers = [0, 1].map(() => normal([batch, shape.kvHeads, columns, shape.headDim], held));
      // The buffers are held here as well, so they are written into copies (kv-cache-write.test.ts:
      // in place where the cache holds them alone).
      const check = () =>
        mx.scope(() => {
          const [keys, values] = buffers as [mx.MxArray, mx.MxArray];
          const ours = mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, shape, rotation, { keys, values, at });
          const [queries, newKeys, newValues] = composedInput(x, p.norm, p.qkv, shape, rotation);
          const stop = [batch, shape.kvHeads, at + rows];
          const write = (t: mx.MxArray, added: mx.MxArray) =>
            mx.sliceUpdate(t, mx.astype(added, held), [0, 0, at], stop);
          const [writtenKeys, writtenValues] = [write(keys, newKeys!), write(values, newValues!)];
          const valid = (t: mx.MxArray) => mx.slice(t, [0, 0, 0], stop);
          expectSame(ours, [queries!, writtenKeys, writtenValues, valid(writtenKeys), valid(writtenValues)]);
        });
      check();
      const previous = mx.useCpuKernels(false);
      try {
        check();
      } finally {
        mx.useCpuKernels(previous);
      }
    }
  });

  test("with MLX's kernels, MLX's ops composed; a projection of the wrong width refused", () => {
    const shape = { heads: 2, kvHeads: 1, headDim: 32 };
    const p = inputCase(64, shape, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    const x = normal([1, 2, 64]);
    const rotation = { dims: 32, traditional: false, base: 10000, scale: 1, offset: 5 };
    const off = withMlxKernels(() =>
      mx.concatenate(mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, shape, rotation), 1),
    );
    const composed = withMlxKernels(() => mx.concatenate(composedInput(x, p.norm, p.qkv, shape, rotation), 1));
    mx.scope(() => expect(mx.max(mx.abs(mx.subtract(off, composed))).item()).toBe(0));
    expect(() =>
      mx.scope(() => mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, { heads: 3, kvHeads: 1, headDim: 32 }, rotation)),
    ).toThrow();
  });

  test("shapes seen before (what composing told is remembered): each step's own offsets, MLX's ops with MLX's kernels, a full cache refused", () => {
    const shape = { heads: 4, kvHeads: 2, headDim: 32 };
    const p = inputCase(64, shape, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    const x = normal([2, 1, 64]);
    // Decode steps: the same shapes, the positions moving on (one number, then one per row).
    const offsets = [3, 4, 40, [7, 9], [8, 10]].map((o) =>
      typeof o === "number" ? o : mx.keep(mx.array(Int32Array.from(o))),
    );
    for (const offset of offsets) {
      const rotation = { dims: 32, traditional: false, base: 10000, scale: 1, offset };
      mx.scope(() => {
        const reference = composedInput(x, p.norm, p.qkv, shape, rotation);
        expectSame(mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, shape, rotation), reference);
        const mlx = withMlxKernels(() =>
          mx.concatenate(mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, shape, rotation), 1),
        );
        const ours = mx.concatenate(reference, 1);
        expect(mx.max(mx.abs(mx.subtract(mlx, ours))).item()).toBeGreaterThan(0);
        expect(relativeError(ours, mlx)).toBeLessThan(1e-3);
      });
    }
    const rotation = { dims: 32, traditional: false, base: 10000, scale: 1, offset: 6 };
    const [keys, values] = [0, 1].map(() => normal([2, shape.kvHeads, 6, shape.headDim], mx.Dtype.float16)) as [
      mx.MxArray,
      mx.MxArray,
    ];
    mx.scope(() => mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, shape, rotation, { keys, values, at: 5 }));
    expect(() =>
      mx.scope(() => mx.fast.attentionInput(x, p.norm, 1e-5, p.qkv, shape, rotation, { keys, values, at: 6 })),
    ).toThrow();
  });
});

describe("fused attention output", () => {
  mx.random.seed(23);

  /** x + oProj(heads back into rows), as the model composed it before the fused op. */
  function composedOutput(x: mx.MxArray, heads: mx.MxArray, oProj: mx.fast.QuantizedWeights): mx.MxArray {
    const [b, , l] = heads.shape as [number, number, number];
    const rows = mx.reshape(mx.transpose(heads, [0, 2, 1, 3]), [b, l, -1]);
    return mx.add(x, mx.quantizedMatmul(rows, oProj.weight, oProj.scales, oProj.biases, oProj.quant));
  }

  test("identical to the composition on our kernels: one row, many rows and heads, bfloat16", () => {
    for (const [batch, heads, rows, dim, dtype] of [
      [1, 9, 1, 576, mx.Dtype.float32],
      [2, 3, 5, 96, mx.Dtype.float32],
      [1, 4, 17, 160, mx.Dtype.bfloat16],
    ] as const) {
      const oProj = projection(dim, heads * 32, { groupSize: 32, bits: 4 }, dtype);
      const [x, attended] = [normal([batch, rows, dim], dtype), normal([batch, heads, rows, 32], dtype)];
      mx.scope(() => {
        const ours = mx.fast.attentionOutput(x, attended, oProj);
        expect(ours.shape).toEqual([batch, rows, dim]);
        expect(ours.dtype).toBe(dtype);
        expect(mx.max(mx.abs(mx.subtract(ours, composedOutput(x, attended, oProj)))).item()).toBe(0);
        const tolerance = dtype === mx.Dtype.bfloat16 ? 2e-2 : 1e-4;
        expect(
          relativeError(
            ours,
            withMlxKernels(() => mx.fast.attentionOutput(x, attended, oProj)),
          ),
        ).toBeLessThan(tolerance);
      });
    }
  });

  test("a strided input (heads transposed in place) and a refused shape", () => {
    const oProj = projection(64, 64, { groupSize: 32, bits: 8 }, mx.Dtype.float32);
    const x = normal([1, 3, 64]);
    const attended = normal([1, 3, 2, 32]);
    const heads = () => mx.transpose(attended, [0, 2, 1, 3]);
    mx.scope(() => {
      expect(
        mx
          .max(mx.abs(mx.subtract(mx.fast.attentionOutput(x, heads(), oProj), composedOutput(x, heads(), oProj))))
          .item(),
      ).toBe(0);
    });
    expect(() => mx.scope(() => mx.fast.attentionOutput(x, normal([1, 3, 64]), oProj))).toThrow();
  });

  test("shapes seen before: the same result, MLX's ops with MLX's kernels, a refused shape still refused", () => {
    const oProj = projection(96, 96, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    const [x, attended] = [normal([2, 1, 96]), normal([2, 3, 1, 32])];
    mx.scope(() => {
      const reference = composedOutput(x, attended, oProj);
      for (let step = 0; step < 3; step++)
        expect(mx.max(mx.abs(mx.subtract(mx.fast.attentionOutput(x, attended, oProj), reference))).item()).toBe(0);
      const mlx = withMlxKernels(() => mx.fast.attentionOutput(x, attended, oProj));
      expect(mx.max(mx.abs(mx.subtract(mlx, reference))).item()).toBeGreaterThan(0);
      expect(relativeError(reference, mlx)).toBeLessThan(1e-4);
    });
    expect(() => mx.scope(() => mx.fast.attentionOutput(x, normal([2, 3, 1, 16]), oProj))).toThrow();
  });
});

describe("fused attention output and MLP", () => {
  mx.random.seed(29);

  const twoOps = (x: mx.MxArray, heads: mx.MxArray, oProj: mx.fast.QuantizedWeights, p: ReturnType<typeof mlpCase>) =>
    fused(mx.fast.attentionOutput(x, heads, oProj), p);
  const oneOp = (x: mx.MxArray, heads: mx.MxArray, oProj: mx.fast.QuantizedWeights, p: ReturnType<typeof mlpCase>) =>
    mx.fast.attentionOutputMlp(x, heads, oProj, p.norm, 1e-5, p.gateUp, p.down);

  test("identical to the two ops on our kernels: one row, many rows and heads, 4 and 8 bits, bfloat16", () => {
    for (const [batch, heads, rows, dim, hidden, bits, dtype] of [
      [1, 9, 1, 576, 1536, 4, mx.Dtype.float32],
      [2, 3, 5, 96, 192, 8, mx.Dtype.float32],
      [1, 4, 17, 128, 320, 4, mx.Dtype.bfloat16],
    ] as const) {
      const oProj = projection(dim, heads * 32, { groupSize: 32, bits }, dtype);
      const p = mlpCase(dim, hidden, { groupSize: 32, bits: 4 }, { groupSize: 64, bits }, dtype);
      const [x, attended] = [normal([batch, rows, dim], dtype), normal([batch, heads, rows, 32], dtype)];
      mx.scope(() => {
        const ours = oneOp(x, attended, oProj, p);
        expect(ours.shape).toEqual([batch, rows, dim]);
        expect(ours.dtype).toBe(dtype);
        expect(mx.max(mx.abs(mx.subtract(ours, twoOps(x, attended, oProj, p)))).item()).toBe(0);
        const tolerance = dtype === mx.Dtype.bfloat16 ? 2e-2 : 1e-4;
        expect(
          relativeError(
            ours,
            withMlxKernels(() => oneOp(x, attended, oProj, p)),
          ),
        ).toBeLessThan(tolerance);
      });
    }
  });

  test("heads our attention computes over a cache's views, with a mask and sinks: run in the same op, the same bits", () => {
    const oProj = projection(96, 9 * 32, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    const p = mlpCase(96, 192, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    // Keys and values are the first 40 positions of 64-position buffers, as a cache hands them over.
    const cached = (batch: number) => mx.slice(normal([batch, 3, 64, 32]), [0, 0, 0, 0], [batch, 3, 40, 32]);
    for (const [batch, rows, withMask, withSinks] of [
      [1, 1, false, false],
      [2, 1, true, false],
      [1, 3, false, true],
      [2, 2, true, true],
    ] as const) {
      mx.scope(() => {
        const [x, q, keys, values] = [
          normal([batch, rows, 96]),
          normal([batch, 9, rows, 32]),
          cached(batch),
          cached(batch),
        ];
        const mask = withMask ? normal([batch, 1, rows, 40]) : undefined;
        const sinks = withSinks ? normal([9]) : undefined;
        const attend = () => mx.fast.scaledDotProductAttention(q, keys, values, 32 ** -0.5, mask, sinks);
        // Evaluated first, the heads are an input of the output half: the three ops apart.
        const apart = attend();
        mx.evaluate(apart);
        const reference = twoOps(x, apart, oProj, p);
        for (let step = 0; step < 2; step++)
          expect(mx.max(mx.abs(mx.subtract(oneOp(x, attend(), oProj, p), reference))).item()).toBe(0);
      });
    }
  });

  test("heads our quantized attention computes over a quantized cache (keys per row or per channel), with a mask and sinks: run in the same op, the same bits", () => {
    const oProj = projection(96, 9 * 64, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    const p = mlpCase(96, 192, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    for (const [bits, batch, rows, perChannel, withMask, withSinks] of [
      [8, 1, 1, true, false, false],
      [4, 2, 1, true, true, false],
      [8, 1, 3, false, false, true],
      [4, 2, 2, false, true, true],
    ] as const) {
      mx.scope(() => {
        const quantization = { bits, groupSize: 64 };
        // The first 150 of 192 positions, as a cache hands them over; per channel, 2 groups and a 22-row tail.
        const cut = (t: mx.MxArray, length: number) => mx.slice(t, [0, 0, 0, 0], [batch, 3, length, t.shape[3]!]);
        const quantized = () => {
          const q = mx.quantize(normal([batch, 3, 192, 64]), quantization);
          return [cut(q.weight, 150), cut(q.scales, 150), cut(q.biases!, 150)] as const;
        };
        const keys = perChannel
          ? (encodeKeys(normal([batch, 3, 150, 64]), quantization) as unknown as mx.fast.ChannelKeyParts)
          : quantized();
        const values = quantized();
        const [x, q] = [normal([batch, rows, 96]), normal([batch, 9, rows, 64])];
        const mask = withMask ? normal([batch, 1, rows, 150]) : undefined;
        const sinks = withSinks ? normal([9]) : undefined;
        const attend = () =>
          mx.fast.quantizedScaledDotProductAttention(q, keys, values, 64 ** -0.5, quantization, mask, sinks);
        // Evaluated first, the heads are an input of the output half: the three ops apart.
        const apart = attend();
        mx.evaluate(apart);
        const reference = twoOps(x, apart, oProj, p);
        for (let step = 0; step < 2; step++)
          expect(mx.max(mx.abs(mx.subtract(oneOp(x, attend(), oProj, p), reference))).item()).toBe(0);
      });
    }
  });

  test("strided heads, shapes seen before, MLX's ops with MLX's kernels, refused shapes", () => {
    const oProj = projection(64, 64, { groupSize: 32, bits: 8 }, mx.Dtype.float32);
    const p = mlpCase(64, 96, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    const x = normal([1, 3, 64]);
    const attended = normal([1, 3, 2, 32]);
    const heads = () => mx.transpose(attended, [0, 2, 1, 3]);
    mx.scope(() => {
      const reference = twoOps(x, heads(), oProj, p);
      for (let step = 0; step < 3; step++)
        expect(mx.max(mx.abs(mx.subtract(oneOp(x, heads(), oProj, p), reference))).item()).toBe(0);
      const mlx = withMlxKernels(() => oneOp(x, heads(), oProj, p));
      expect(mx.max(mx.abs(mx.subtract(mlx, reference))).item()).toBeGreaterThan(0);
      expect(relativeError(reference, mlx)).toBeLessThan(1e-4);
    });
    expect(() => mx.scope(() => oneOp(x, normal([1, 3, 64]), oProj, p))).toThrow();
    const narrow = mlpCase(32, 96, { groupSize: 32, bits: 4 }, { groupSize: 32, bits: 4 }, mx.Dtype.float32);
    expect(() => mx.scope(() => oneOp(x, heads(), oProj, narrow))).toThrow();
  });
});
