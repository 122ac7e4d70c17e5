// Each op of the C ABI checked against values worked out by hand (no model, no download).
import { describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mx from "../src/mlx";

const close = (actual: number[], expected: number[], tolerance = 1e-5) => {
  expect(actual.length).toBe(expected.length);
  actual.forEach((v, i) => expect(Math.abs(v - expected[i]!)).toBeLessThanOrEqual(tolerance));
};
const values = (a: mx.MxArray) => a.toArray();
const run = <T>(fn: () => T) => mx.scope(fn);

describe("arrays", () => {
  test("round-trip host data with shape and dtype", () => {
    run(() => {
      const a = mx.array([1, 2, 3, 4, 5, 6], [2, 3]);
      expect(a.shape).toEqual([2, 3]);
      expect(a.dtypeName).toBe("float32");
      expect(values(a)).toEqual([1, 2, 3, 4, 5, 6]);
      const i = mx.array(Int32Array.from([7, -8]));
      expect(i.dtypeName).toBe("int32");
      expect(values(i)).toEqual([7, -8]);
    });
  });

  test("rejects data that does not fill the shape", () => {
    expect(() => mx.array([1, 2, 3], [2, 2])).toThrow(/bytes of data/);
  });

  test("scalars take the dtype asked for; item reads them", () => {
    run(() => {
      expect(mx.scalar(2.5).item()).toBe(2.5);
      expect(mx.scalar(3, mx.Dtype.int32).dtypeName).toBe("int32");
      // Read from the element itself, each type converted on the host.
      for (const [dtype, value] of [
        [mx.Dtype.bool, 1],
        [mx.Dtype.uint8, 200],
        [mx.Dtype.uint32, 4000000000],
        [mx.Dtype.int16, -1234],
        [mx.Dtype.int64, -5],
        [mx.Dtype.float16, 1.5],
        [mx.Dtype.bfloat16, -2.5],
        [mx.Dtype.float64, 0.1],
      ] as const)
        expect(mx.astype(mx.scalar(value, mx.Dtype.float64), dtype).item()).toBe(value);
      // One element of a larger array: a view at an offset.
      expect(mx.slice(mx.array([1, 2, 3, 4]), [2], [3]).item()).toBe(3);
    });
  });

  test("views read back row-major: an offset, a step, a transpose", () => {
    run(() => {
      const a = mx.reshape(mx.arange(0, 12), [3, 4]);
      expect(values(mx.slice(a, [1, 0], [3, 4]))).toEqual([4, 5, 6, 7, 8, 9, 10, 11]);
      expect(values(mx.slice(a, [0, 1], [3, 4], [2, 2]))).toEqual([1, 3, 9, 11]);
      expect(values(mx.transpose(mx.slice(a, [1, 0], [3, 2])))).toEqual([4, 8, 5, 9]);
    });
  });

  test("MLX errors surface as exceptions with MLX's message", () => {
    run(() => {
      const a = mx.array([1, 2, 3]);
      expect(() => mx.reshape(a, [2, 2])).toThrow(/reshape/);
    });
  });

  test("scope frees what it created but returns its result", () => {
    let inner: mx.MxArray | undefined;
    const kept = mx.scope(() => {
      inner = mx.array([1, 2]);
      return mx.add(inner, 1);
    });
    expect(inner!.freed).toBe(true);
    expect(values(kept)).toEqual([2, 3]);
    kept.free();
    expect(kept.freed).toBe(true);
  });

  test("float16 and bfloat16 arrays read back as float32 on the host, views too", () => {
    run(() => {
      const h = mx.astype(mx.array([0.5, 1.5]), mx.Dtype.float16);
      expect(h.dtypeName).toBe("float16");
      expect(values(h)).toEqual([0.5, 1.5]);
      const b = mx.astype(mx.reshape(mx.array([1, -2, 3.5, 65536]), [2, 2]), mx.Dtype.bfloat16);
      expect(values(b)).toEqual([1, -2, 3.5, 65536]);
      expect(values(mx.transpose(b))).toEqual([1, 3.5, -2, 65536]);
      expect(values(mx.slice(mx.astype(mx.arange(0, 6), mx.Dtype.float16), [1], [6], [2]))).toEqual([1, 3, 5]);
    });
  });
});

describe("element-wise", () => {
  test("arithmetic with arrays and scalars", () => {
    run(() => {
      const a = mx.array([1, 2, 3]);
      const b = mx.array([4, 5, 6]);
      expect(values(mx.add(a, b))).toEqual([5, 7, 9]);
      expect(values(mx.subtract(a, b))).toEqual([-3, -3, -3]);
      expect(values(mx.multiply(a, 2))).toEqual([2, 4, 6]);
      expect(values(mx.divide(6, a))).toEqual([6, 3, 2]);
      expect(values(mx.maximum(a, 2))).toEqual([2, 2, 3]);
      expect(values(mx.power(a, 2))).toEqual([1, 4, 9]);
    });
  });

  test("a float scalar keeps a float16 array float16 (weak typing, as in Python)", () => {
    run(() => expect(mx.multiply(mx.astype(mx.array([1, 2]), mx.Dtype.float16), 0.5).dtypeName).toBe("float16"));
  });

  test("unary functions", () => {
    run(() => {
      const x = mx.array([0, 1, 4]);
      close(values(mx.exp(x)), [1, Math.E, Math.exp(4)], 1e-4);
      close(values(mx.sqrt(x)), [0, 1, 2]);
      close(values(mx.sigmoid(x)), [0.5, 1 / (1 + Math.exp(-1)), 1 / (1 + Math.exp(-4))]);
      close(values(mx.silu(x)), [0, 1 / (1 + Math.exp(-1)), 4 / (1 + Math.exp(-4))]);
      close(values(mx.rsqrt(mx.array([4, 16]))), [0.5, 0.25]);
    });
  });

  test("comparisons and where", () => {
    run(() => {
      const x = mx.array([1, 5, 3]);
      expect(values(mx.greater(x, 2))).toEqual([0, 1, 1]);
      expect(values(mx.where(mx.less(x, 3), mx.zeros([3]), x))).toEqual([0, 5, 3]);
    });
  });

  test("matmul", () => {
    run(() => {
      const a = mx.array([1, 2, 3, 4], [2, 2]);
      const b = mx.array([5, 6, 7, 8], [2, 2]);
      expect(values(mx.matmul(a, b))).toEqual([19, 22, 43, 50]);
    });
  });

  test("ops built on a second stream feed ops on the first; the default stream comes back after", () => {
    run(() => {
      const main = mx.defaultStream();
      const side = mx.newStream();
      expect(side).not.toBe(main);
      const a = mx.array([1, 2, 3, 4], [2, 2]);
      const left = mx.onStream(side, () => mx.matmul(a, a));
      const right = mx.multiply(a, 10);
      expect(values(mx.concatenate([left, right], -1))).toEqual([7, 10, 10, 20, 15, 22, 30, 40]);
      expect(mx.onStream(side, () => mx.defaultStream())).toBe(side);
      expect(() => mx.onStream(side, () => mx.reshape(a, [3]))).toThrow(/reshape/);
      expect(mx.defaultStream()).toBe(main);
      expect(values(mx.add(left, 1))).toEqual([8, 11, 16, 23]);
    });
  });
});

describe("reductions and sorting", () => {
  test("sum, mean, max, logsumexp, argmax", () => {
    run(() => {
      const a = mx.array([1, 2, 3, 4, 5, 6], [2, 3]);
      expect(values(mx.sum(a))).toEqual([21]);
      expect(values(mx.sum(a, 1))).toEqual([6, 15]);
      expect(mx.sum(a, 0, true).shape).toEqual([1, 3]);
      expect(values(mx.mean(a, 1))).toEqual([2, 5]);
      expect(values(mx.max(a, 0))).toEqual([4, 5, 6]);
      expect(values(mx.argmax(a, 1))).toEqual([2, 2]);
      close(values(mx.logsumexp(mx.array([0, 0]))), [Math.log(2)]);
    });
  });

  test("softmax, cumsum, sort, argsort, topk, argpartition", () => {
    run(() => {
      const x = mx.array([3, 1, 2]);
      close(
        values(mx.softmax(x)),
        [Math.E ** 3, Math.E, Math.E ** 2].map((v, _, all) => v / (Math.E ** 3 + Math.E + Math.E ** 2)),
      );
      expect(values(mx.cumsum(x, 0))).toEqual([3, 4, 6]);
      expect(values(mx.sort(x))).toEqual([1, 2, 3]);
      expect(values(mx.argsort(x))).toEqual([1, 2, 0]);
      expect(values(mx.sort(mx.topk(x, 2)))).toEqual([2, 3]);
      const part = values(mx.argpartition(x, 0));
      expect(part[0]).toBe(1);
    });
  });
});

describe("shapes and indexing", () => {
  test("reshape, transpose, expand, squeeze, broadcast, concatenate, stack, repeat", () => {
    run(() => {
      const a = mx.array([1, 2, 3, 4, 5, 6], [2, 3]);
      expect(values(mx.transpose(a))).toEqual([1, 4, 2, 5, 3, 6]);
      expect(mx.reshape(a, [3, -1]).shape).toEqual([3, 2]);
      expect(mx.expandDims(a, 0).shape).toEqual([1, 2, 3]);
      expect(mx.squeeze(mx.expandDims(a, 0), 0).shape).toEqual([2, 3]);
      expect(values(mx.broadcastTo(mx.array([1, 2]), [2, 2]))).toEqual([1, 2, 1, 2]);
      expect(mx.concatenate([a, a], 1).shape).toEqual([2, 6]);
      expect(mx.stack([a, a], 0).shape).toEqual([2, 2, 3]);
      expect(values(mx.repeat(mx.array([1, 2]), 2, 0))).toEqual([1, 1, 2, 2]);
    });
  });

  test("slice, slice_update, take, take_along_axis, put_along_axis", () => {
    run(() => {
      const a = mx.array([1, 2, 3, 4, 5, 6], [2, 3]);
      expect(values(mx.slice(a, [0, 1], [2, 3]))).toEqual([2, 3, 5, 6]);
      expect(values(mx.slice(a, [1], [2]))).toEqual([4, 5, 6]);
      const u = mx.sliceUpdate(a, mx.array([9, 9], [1, 2]), [1, 0], [2, 2]);
      expect(values(u)).toEqual([1, 2, 3, 9, 9, 6]);
      expect(values(mx.take(a, mx.array(Int32Array.from([1])), 0))).toEqual([4, 5, 6]);
      const idx = mx.array(Int32Array.from([2, 0]), [2, 1]);
      expect(values(mx.takeAlongAxis(a, idx, 1))).toEqual([3, 4]);
      expect(values(mx.putAlongAxis(a, idx, mx.array([0, 0], [2, 1]), 1))).toEqual([1, 2, 0, 0, 5, 6]);
    });
  });
});

describe("quantization", () => {
  test("quantize → dequantize is close, and quantized_matmul equals matmul with the dequantized weight", () => {
    run(() => {
      const w = mx.random.normal([64, 128], mx.Dtype.float32, mx.random.key(1));
      const q = { groupSize: 64, bits: 4 };
      const { weight, scales, biases } = mx.quantize(w, q);
      expect(weight.dtypeName).toBe("uint32");
      expect(weight.shape).toEqual([64, 16]);
      const back = mx.dequantize(weight, scales, biases, q);
      const err = mx.max(mx.abs(mx.subtract(back, w))).item();
      expect(err).toBeLessThan(0.5);
      const x = mx.random.normal([3, 128], mx.Dtype.float32, mx.random.key(2));
      const viaQ = mx.quantizedMatmul(x, weight, scales, biases, q, true);
      const viaD = mx.matmul(x, mx.transpose(back));
      expect(mx.max(mx.abs(mx.subtract(viaQ, viaD))).item()).toBeLessThan(1e-3);
    });
  });
});

describe("fast kernels", () => {
  test("rms_norm", () => {
    run(() => {
      const x = mx.array([3, 4], [1, 2]);
      const rms = Math.sqrt((9 + 16) / 2);
      close(values(mx.fast.rmsNorm(x, mx.array([1, 2]), 0)), [3 / rms, (2 * 4) / rms], 1e-5);
    });
  });

  test("rope rotates pairs by position × frequency (offset shifts the position)", () => {
    run(() => {
      // One head, one position, dims 2: (1, 0) rotated by angle offset * base^0 = offset.
      const x = mx.array([1, 0], [1, 1, 1, 2]);
      const out = values(mx.fast.rope(x, { dims: 2, traditional: false, base: 10000, scale: 1, offset: 3 }));
      close(out, [Math.cos(3), Math.sin(3)], 1e-5);
      const custom = values(mx.fast.rope(x, { dims: 2, traditional: true, scale: 1, offset: 2, freqs: mx.array([2]) }));
      close(custom, [Math.cos(1), Math.sin(1)], 1e-5);
    });
  });

  test("scaled_dot_product_attention matches softmax(q kᵀ s) v, with GQA and a causal mask", () => {
    run(() => {
      const key = mx.random.key(3);
      const [k1, k2] = mx.random.split(key);
      const q = mx.random.normal([1, 4, 3, 8], mx.Dtype.float32, k1);
      const kv = mx.random.normal([1, 2, 3, 8], mx.Dtype.float32, k2);
      const scale = 8 ** -0.5;
      const out = mx.fast.scaledDotProductAttention(q, kv, kv, scale, "causal");
      const kvRep = mx.repeat(kv, 2, 1);
      let scores = mx.multiply(mx.matmul(q, mx.transpose(kvRep, [0, 1, 3, 2])), scale);
      const causal = mx.greaterEqual(mx.reshape(mx.arange(0, 3), [3, 1]), mx.reshape(mx.arange(0, 3), [1, 3]));
      scores = mx.where(causal, scores, mx.full([], -Infinity));
      const ref = mx.matmul(mx.softmax(scores, -1), kvRep);
      expect(mx.max(mx.abs(mx.subtract(out, ref))).item()).toBeLessThan(1e-4);
    });
  });
});

describe("random", () => {
  test("the same key gives the same numbers; categorical follows the logits", () => {
    run(() => {
      const a = values(mx.random.uniform([4], mx.Dtype.float32, mx.random.key(7)));
      const b = values(mx.random.uniform([4], mx.Dtype.float32, mx.random.key(7)));
      expect(a).toEqual(b);
      const logits = mx.log(mx.array([1e-9, 1, 1e-9]));
      expect(mx.random.categorical(logits, -1, mx.random.key(1)).item()).toBe(1);
    });
  });
});

describe("files", () => {
  test("save_safetensors → load_safetensors keeps names, shapes, dtypes, values and metadata", () => {
    const dir = mkdtempSync(join(tmpdir(), "mlx-ops-"));
    const path = join(dir, "t.safetensors");
    run(() => {
      const tensors = new Map([
        ["a", mx.array([1, 2, 3, 4], [2, 2])],
        ["b", mx.array(Int32Array.from([5, 6]))],
      ]);
      mx.saveSafetensors(path, tensors, { format: "mlx" });
      const loaded = mx.loadSafetensors(path);
      expect(loaded.metadata.format).toBe("mlx");
      expect(loaded.tensors.get("a")!.shape).toEqual([2, 2]);
      expect(values(loaded.tensors.get("b")!)).toEqual([5, 6]);
      expect(loaded.tensors.get("b")!.dtypeName).toBe("int32");
    });
  });

  test("a truncated or missing file is a clear error", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mlx-ops-"));
    const path = join(dir, "bad.safetensors");
    await Bun.write(path, new Uint8Array([1, 2, 3]));
    expect(() => mx.loadSafetensors(path)).toThrow(/bad.safetensors/);
    expect(() => mx.loadGGUF(join(dir, "missing.gguf"))).toThrow(/missing.gguf/);
  });
});

describe("memory counters", () => {
  test("active and peak memory move with allocations", () => {
    mx.memory.resetPeakMemory();
    const before = mx.memory.activeMemory();
    const big = mx.zeros([1024, 1024]);
    mx.evaluate(big);
    expect(mx.memory.activeMemory()).toBeGreaterThanOrEqual(before + 4 * 1024 * 1024);
    expect(mx.memory.peakMemory()).toBeGreaterThanOrEqual(4 * 1024 * 1024);
    big.free();
    mx.memory.clearCache();
    expect(mx.memory.cacheMemory()).toBe(0);
  });
});

describe("lifetimes under garbage collection", () => {
  test("arrays kept twice, and models loaded then freed or dropped, are each freed exactly once", () => {
    const kept = mx.keep(mx.array([1, 2]));
    expect(mx.keep(kept)).toBe(kept); // a second keep must not register a second finalizer
    for (let i = 0; i < 3; i++) mx.keep(mx.keep(mx.array([i])));
    for (let i = 0; i < 3; i++) Bun.gc(true);
    expect(values(kept)).toEqual([1, 2]);
    kept.free();
    kept.free(); // freeing twice is harmless
  });
});

describe("mixture of experts", () => {
  // Three experts [3, 8 outputs, 64 inputs]; rows [4, 1, 64] each routed to the experts in `pick`.
  const experts = () => mx.random.normal([3, 8, 64], mx.Dtype.float32, mx.random.key(5));
  const rows = () => mx.random.normal([4, 1, 1, 64], mx.Dtype.float32, mx.random.key(6));
  const pick = () => mx.array(Int32Array.from([2, 0, 0, 1, 1, 2, 2, 2]), [4, 2]);
  /** Row r times expert e, one plain matmul at a time. */
  const oneByOne = (x: mx.MxArray, w: mx.MxArray) =>
    mx.stack(
      [2, 0, 0, 1, 1, 2, 2, 2].map((e, i) =>
        mx.matmul(
          mx.reshape(mx.slice(x, [Math.floor(i / 2), 0, 0, 0], [Math.floor(i / 2) + 1, 1, 1, 64]), [1, 64]),
          mx.transpose(mx.reshape(mx.slice(w, [e, 0, 0], [e + 1, 8, 64]), [8, 64])),
        ),
      ),
    );

  test("gather_mm multiplies each row by the experts it picks", () => {
    run(() => {
      const w = experts();
      const x = rows();
      const out = mx.gatherMm(x, mx.transpose(w, [0, 2, 1]), { rhsIndices: pick() });
      expect(out.shape).toEqual([4, 2, 1, 8]);
      const expected = oneByOne(x, w);
      expect(mx.max(mx.abs(mx.subtract(mx.reshape(out, [-1]), mx.reshape(expected, [-1])))).item()).toBeLessThan(1e-4);
    });
  });

  test("gather_qmm equals gather_mm with the dequantized experts", () => {
    run(() => {
      const q = { groupSize: 32, bits: 4 };
      const { weight, scales, biases } = mx.quantize(experts(), q);
      expect(weight.shape).toEqual([3, 8, 8]);
      const x = rows();
      const out = mx.gatherQmm(x, weight, scales, biases, q, { rhsIndices: pick() });
      expect(out.shape).toEqual([4, 2, 1, 8]);
      const expected = oneByOne(x, mx.dequantize(weight, scales, biases, q));
      expect(mx.max(mx.abs(mx.subtract(mx.reshape(out, [-1]), mx.reshape(expected, [-1])))).item()).toBeLessThan(1e-3);
    });
  });
});
