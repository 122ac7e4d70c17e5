// Our quantized matmul kernel (ffi/src/kernels/) against MLX's own op on random inputs: every
// layout our models load (affine 4 and 8 bits, groups of 32/64/128, fp32/bf16/f16 activations),
// odd shapes, batched rows, two streams at once, async evaluation and the memory counters.
import { afterEach, describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import { roundingExcess } from "./helpers/kernels";

interface Layout {
  bits: number;
  groupSize: number;
}

const layouts: Layout[] = [4, 8].flatMap((bits) => [32, 64, 128].map((groupSize) => ({ bits, groupSize })));

afterEach(() => {
  mx.useCpuKernels(true);
});

/** A random weight [n, k] quantized in `layout`, its scales and biases in `scaleType`. */
function quantizedWeight(n: number, k: number, layout: Layout, scaleType: mx.DtypeCode, seed: number) {
  const w = mx.random.normal([n, k], mx.Dtype.float32, mx.random.key(seed));
  const q = mx.quantize(w, layout);
  return { weight: q.weight, scales: mx.astype(q.scales, scaleType), biases: mx.astype(q.biases!, scaleType) };
}

/** x · Wᵀ through MLX's op (our kernels off) or ours, evaluated. */
function product(x: mx.MxArray, w: ReturnType<typeof quantizedWeight>, layout: Layout, ours: boolean): mx.MxArray {
  const previous = mx.useCpuKernels(ours);
  try {
    const y = mx.quantizedMatmul(x, w.weight, w.scales, w.biases, layout, true);
    mx.evaluate(y);
    return y;
  } finally {
    mx.useCpuKernels(previous);
  }
}

// By default on AVX-512 VNNI, decode rows (M <= 8) round their activations to int16 per block of
// 32 (step max |x| / 32767); other products, and every product elsewhere, are exact.
const int16 = mx.cpuKernels().endsWith(", int16 activations");
const INT16_LEVELS = 32767;

/** Ours against MLX's op on x [M, K]: within the int16 rounding's bound where it applies, else within 1e-5. */
function expectOursMatches(
  ours: mx.MxArray,
  theirs: mx.MxArray,
  x: mx.MxArray,
  w: ReturnType<typeof quantizedWeight>,
  layout: Layout,
  repacked = false,
): void {
  const m = x.size / x.shape.at(-1)!;
  // int16 activations: decode rows, and prompt rows too on repacked weights.
  if (!(int16 && (m <= 8 || repacked))) {
    expect(relativeError(ours, theirs)).toBeLessThan(1e-5);
    return;
  }
  mx.scope(() => {
    const dequantized = mx.dequantize(w.weight, w.scales, w.biases, layout, mx.Dtype.float32);
    const rows = (a: mx.MxArray) => mx.reshape(mx.astype(a, mx.Dtype.float32), [m, -1]);
    expect(
      roundingExcess(rows(ours), rows(theirs), rows(mx.contiguous(x)), dequantized, INT16_LEVELS),
    ).toBeLessThanOrEqual(0);
  });
}

/** Largest difference between a and b relative to the largest magnitude of b. */
function relativeError(a: mx.MxArray, b: mx.MxArray): number {
  const diff = mx.max(mx.abs(mx.subtract(mx.astype(a, mx.Dtype.float32), mx.astype(b, mx.Dtype.float32)))).item();
  const scale = mx.max(mx.abs(mx.astype(b, mx.Dtype.float32))).item();
  return diff / Math.max(scale, 1e-6);
}

describe("quantized matmul kernel", () => {
  test("reports the instruction set and threads it runs with", () => {
    expect(mx.cpuKernels()).toMatch(/^(portable|avx2|avx512|neon), \d+ threads?(, int16 activations)?$/);
  });

  test("MLX_KERNELS, MLX_CPU_THREADS and MLX_CPU_ISA set it up at start", () => {
    const probe = (env: Record<string, string>) => {
      const script = `import * as mx from "./src/mlx"; console.log(mx.useCpuKernels(true), mx.cpuKernels());`;
      const child = Bun.spawnSync([process.execPath, "-e", script], {
        env: { ...process.env, ...env },
        stderr: "pipe",
      });
      expect(child.exitCode).toBe(0);
      return child.stdout.toString().trim();
    };
    expect(probe({ MLX_KERNELS: "mlx", MLX_CPU_THREADS: "3", MLX_CPU_ISA: "portable" })).toBe(
      "false portable, 3 threads",
    );
    expect(probe({ MLX_CPU_THREADS: "1" })).toMatch(/^true \w+, 1 thread(, int16 activations)?$/);
    expect(probe({ MLX_CPU_THREADS: "1", MLX_CPU_EXACT: "1" })).toMatch(/^true \w+, 1 thread$/);
  });

  for (const layout of layouts) {
    test(`fp32 activations, ${layout.bits}-bit, group ${layout.groupSize}: equal to MLX's op for odd shapes and M = 1-8, 17, 33, 512`, () => {
      mx.scope(() => {
        // K: 1, 3 and 5 groups; N: not a multiple of any block (or of 8), nor of the 2 or 4 columns
        // that small-M products compute side by side.
        const shapes: [number, number, number][] = [
          [1, 13, layout.groupSize],
          [2, 15, 3 * layout.groupSize],
          [3, 101, 3 * layout.groupSize],
          [4, 23, 5 * layout.groupSize],
          // Five to eight rows: four, then the rest, over blocks of 32 columns.
          [5, 45, 3 * layout.groupSize],
          [7, 70, 5 * layout.groupSize],
          [8, 101, 3 * layout.groupSize],
          [17, 37, 5 * layout.groupSize],
          [512, 70, 3 * layout.groupSize],
          [1, 1000, 3 * layout.groupSize],
          // K in three blocks of the multi-row path's panels (512, 512, 384), a partial panel.
          [33, 45, 1408],
        ];
        for (const [i, [m, n, k]] of shapes.entries()) {
          const w = quantizedWeight(n, k, layout, mx.Dtype.float16, 10 + i);
          const x = mx.random.normal([m, k], mx.Dtype.float32, mx.random.key(100 + i));
          const ours = product(x, w, layout, true);
          const theirs = product(x, w, layout, false);
          expect(ours.shape).toEqual([m, n]);
          expect(ours.dtypeName).toBe(theirs.dtypeName);
          expectOursMatches(ours, theirs, x, w, layout);
        }
      });
    });
  }

  test("each row of a product of up to 8 rows equals that row alone, bit for bit (a batch decodes as one sequence)", () => {
    mx.scope(() => {
      for (const layout of layouts) {
        // Past 512, so the int16 decode rows run whole chunks of 512 and a partial one of the rest.
        const k = 512 + 3 * layout.groupSize;
        const w = quantizedWeight(101, k, layout, mx.Dtype.float16, 7);
        const x = mx.random.normal([8, k], mx.Dtype.float32, mx.random.key(8));
        const alone = Array.from({ length: 8 }, (_, r) =>
          product(mx.slice(x, [r, 0], [r + 1, k]), w, layout, true).toArray(),
        );
        for (let m = 2; m <= 8; m++) {
          const rows = product(mx.slice(x, [0, 0], [m, k]), w, layout, true);
          for (let r = 0; r < m; r++) expect(mx.slice(rows, [r, 0], [r + 1, 101]).toArray()).toEqual(alone[r]!);
        }
      }
    });
  });

  // GGUF's Q4_0 and Q8_0 load with every bias -2^(bits-1) times its scale; the kernel then skips
  // the biases (and runs its own AVX-512 decode rows): same products as MLX's op, and a verdict
  // kept for one pair of buffers is not taken for another.
  test("symmetric weights (biases = -2^(bits-1) · scales, as GGUF Q4_0/Q8_0 load): equal to MLX's op", () => {
    mx.scope(() => {
      for (const bits of [4, 8]) {
        for (const groupSize of [32, 64, 128]) {
          for (const scaleType of [mx.Dtype.float16, mx.Dtype.float32, mx.Dtype.bfloat16]) {
            const layout = { bits, groupSize };
            // K: a part of a 128-element chunk at the end, and a 1B-class width; the larger
            // shapes with GGUF's float16 scales only.
            const shapes: [number, number, number][] = [
              [1, 13, 3 * groupSize],
              [2, 37, 5 * groupSize],
              [3, 101, 3 * groupSize],
            ];
            if (scaleType === mx.Dtype.float16)
              shapes.push([17, 23, 5 * groupSize], [512, 70, 3 * groupSize], [1, 300, 2048]);
            for (const [i, [m, n, k]] of shapes.entries()) {
              const w = quantizedWeight(n, k, layout, scaleType, 30 + i);
              const symmetric = { ...w, biases: mx.multiply(w.scales, mx.scalar(-(2 ** (bits - 1)), scaleType)) };
              const x = mx.random.normal([m, k], mx.Dtype.float32, mx.random.key(200 + i));
              const ours = product(x, symmetric, layout, true);
              expectOursMatches(ours, product(x, symmetric, layout, false), x, symmetric, layout);
              // The same scales with other biases: not symmetric any more.
              const shifted = { ...symmetric, biases: mx.add(symmetric.biases, mx.scalar(0.25, scaleType)) };
              expectOursMatches(
                product(x, shifted, layout, true),
                product(x, shifted, layout, false),
                x,
                shifted,
                layout,
              );
            }
          }
        }
      }
    });
  });

  for (const [name, dtype, tolerance] of [
    ["bf16", mx.Dtype.bfloat16, 1e-2],
    ["f16", mx.Dtype.float16, 2e-3],
  ] as const) {
    test(`${name} activations and scales: fp32 accumulation, within ${name} rounding of an fp32 product`, () => {
      mx.scope(() => {
        for (const layout of [layouts[0]!, layouts[4]!]) {
          for (const m of [1, 3, 17]) {
            const w = quantizedWeight(70, 2 * layout.groupSize, layout, dtype, m);
            const x = mx.random.normal([m, 2 * layout.groupSize], dtype, mx.random.key(m + 1));
            const ours = product(x, w, layout, true);
            const exact = product(
              mx.astype(x, mx.Dtype.float32),
              { ...w, scales: mx.astype(w.scales, mx.Dtype.float32), biases: mx.astype(w.biases, mx.Dtype.float32) },
              layout,
              false,
            );
            const theirs = product(x, w, layout, false);
            expect(ours.dtypeName).toBe(theirs.dtypeName);
            expect(relativeError(ours, exact)).toBeLessThan(tolerance);
          }
        }
      });
    });
  }

  // MLX_CPU_INT8 and MLX_CPU_EXACT are read once per process: the checks run in a child. The error
  // bound is the activations' rounding alone (the integer sums are exact; see roundingExcess).
  // The default (no switch) is int16 on AVX-512 VNNI. `shows`: the least error (relative to the
  // largest output) the rounding makes on these shapes, above the fp32 paths' ~1e-6.
  for (const [env, activations, bits, levels, chunk, shows] of [
    ["MLX_CPU_INT8", ", int8 activations", [4], 127, 64, 1e-4],
    ["", ", int16 activations", [4, 8], 32767, 32, 5e-6],
    ["MLX_CPU_EXACT", "", [], 0, 0, 0],
  ] as const) {
    const what = activations
      ? `${bits.join("/")}-bit decode rows within the${activations.replace(",", "")}' rounding bound; the rest exact`
      : "every product exact";
    test(`${env ? `${env}=1` : "by default"}: ${what}`, () => {
      const script = `
        import * as mx from "./src/mlx";
        import { roundingExcess } from "./test/helpers/kernels";
        const results = [];
        for (const groupSize of [32, 64, 128]) {
          for (const [m, n, k, bits] of [[1, 13, 128, 4], [2, 37, 384, 4], [3, 101, 256, 4], [5, 9, 640, 4], [8, 50, 1536, 4],
                                         [1, 1000, 768, 4], [17, 30, 256, 4], [1, 40, 256, 8], [6, 33, 320, 8], [8, 20, 1536, 8], [1, 20, 96, 4],
                                         [7, 24, 576, 4], [3, 48, 256, 4], [2, 32, 256, 8]]) {
            if (k % groupSize !== 0) continue;
            mx.scope(() => {
              const q = mx.quantize(mx.random.normal([n, k], mx.Dtype.float32, mx.random.key(n)), { bits, groupSize });
              const scales = mx.astype(q.scales, mx.Dtype.float16), biases = mx.astype(q.biases, mx.Dtype.float16);
              const x = mx.random.normal([m, k], mx.Dtype.float32, mx.random.key(k + m));
              const ours = mx.quantizedMatmul(x, q.weight, scales, biases, { bits, groupSize });
              const w = mx.dequantize(q.weight, scales, biases, { bits, groupSize }, mx.Dtype.float32);
              mx.useCpuKernels(false);
              const exact = mx.quantizedMatmul(x, q.weight, scales, biases, { bits, groupSize });
              const excess = ${levels} > 0 ? roundingExcess(ours, exact, x, w, ${levels}) : 0;
              const relative = mx.max(mx.abs(mx.subtract(ours, exact))).item() / mx.max(mx.abs(exact)).item();
              mx.useCpuKernels(true);
              results.push({ m, n, k, bits, groupSize, excess, relative });
              // Weights repack only for the int16 decode rows; there, repacked ones keep the bound.
              const repacked = n % 16 === 0 && mx.repackQuantized({ weight: q.weight, scales, biases }, { bits, groupSize });
              if (repacked) {
                const product = mx.quantizedMatmul(x, repacked.weight, repacked.scales, repacked.biases, { bits, groupSize });
                results.push({ m, n, k, bits, groupSize, repacked: true, excess: roundingExcess(product, exact, x, w, ${levels}),
                               relative: mx.max(mx.abs(mx.subtract(product, exact))).item() / mx.max(mx.abs(exact)).item() });
              }
            });
          }
        }
        console.log(JSON.stringify({ kernels: mx.cpuKernels(), results }));`;
      const child = Bun.spawnSync([process.execPath, "-e", script], {
        env: { ...process.env, MLX_CPU_INT8: undefined, MLX_CPU_EXACT: undefined, ...(env ? { [env]: "1" } : {}) },
        stderr: "pipe",
      });
      expect(child.stderr.toString()).toBe("");
      const { kernels, results } = JSON.parse(child.stdout.toString()) as {
        kernels: string;
        results: { m: number; k: number; bits: number; excess: number; relative: number; repacked?: boolean }[];
      };
      // Repacked weights only with int16 activations: [3, 48, 256] and [2, 32, 256] in each group size.
      const repacked = results.filter((r) => r.repacked).length;
      expect(repacked).toBe(kernels.endsWith(", int16 activations") && activations === ", int16 activations" ? 6 : 0);
      expect(results.length - repacked).toBe(38);
      // Exact: no rounding named. int8 and int16: only where the CPU has VNNI; elsewhere every product is exact.
      if (!activations) expect(kernels).toMatch(/threads?$/);
      const rounding = activations !== "" && kernels.endsWith(activations);
      for (const r of results) {
        expect(r.excess).toBeLessThanOrEqual(0);
        const used = rounding && (bits as readonly number[]).includes(r.bits) && r.m <= 8 && r.k % chunk === 0;
        // The rounding shows (so the integer path ran) where it applies, and nowhere else.
        if (used) expect(r.relative).toBeGreaterThan(shows);
        else expect(r.relative).toBeLessThan(1e-5);
      }
    });
  }

  // Weights repacked for the int16 decode rows (16 columns interleaved, marked int32): where the
  // CPU runs int16 decode rows, 4- and 8-bit weights of a multiple of 16 rows repack; every product on
  // them is the MLX layout's within the rounding bound (decode rows) or bit for bit (more rows,
  // and MLX's own op, which reads them put back), and a row gives the same bits alone as in a batch.
  test("repacked weights: the same products as MLX's layout, rows alone = rows in a batch, put back exactly", () => {
    mx.scope(() => {
      for (const [bits, groupSize] of [
        [4, 32],
        [4, 64],
        [4, 128],
        [8, 32],
        [8, 128],
      ] as const) {
        for (const scaleType of [mx.Dtype.float16, mx.Dtype.bfloat16, mx.Dtype.float32]) {
          const layout = { bits, groupSize };
          // Rows: one block of 16, and 60 (SmolLM2's q/k/v at K = 576); K: 1 to 20 blocks of 32.
          for (const [n, k] of [
            [16, 128],
            [960, groupSize === 128 ? 640 : 576],
            [48, 5 * groupSize],
          ] as const) {
            const w = quantizedWeight(n, k, layout, scaleType, n + k);
            const repacked = mx.repackQuantized(w, layout);
            if (!int16) {
              expect(repacked).toBeUndefined();
              continue;
            }
            expect(repacked!.weight.dtypeName).toBe("int32");
            expect(repacked!.weight.shape).toEqual(w.weight.shape);
            expect(repacked!.weight.nbytes + repacked!.scales.nbytes + repacked!.biases.nbytes).toBe(
              w.weight.nbytes + w.scales.nbytes + w.biases.nbytes,
            );
            // Put back, every byte is MLX's.
            const back = mx.unrepackQuantized(repacked!);
            expect(back.weight.dtypeName).toBe("uint32");
            for (const part of ["weight", "scales", "biases"] as const)
              expect(back[part].toArray()).toEqual(w[part].toArray());
            const x = mx.random.normal([40, k], mx.Dtype.float32, mx.random.key(k));
            const rows = (m: number) => mx.slice(x, [0, 0], [m, k]);
            const alone = Array.from({ length: 40 }, (_, r) =>
              product(mx.slice(x, [r, 0], [r + 1, k]), repacked!, layout, true).toArray(),
            );
            for (const m of [1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 40]) {
              const ours = product(rows(m), repacked!, layout, true);
              const theirs = product(rows(m), w, layout, false);
              expectOursMatches(ours, theirs, rows(m), w, layout, true);
              // Prompt rows too: each row the bits it gives alone, as a decode step.
              for (let r = 0; r < m; r++) expect(mx.slice(ours, [r, 0], [r + 1, n]).toArray()).toEqual(alone[r]!);
              // MLX's own op reads them put back.
              expect(product(rows(m), repacked!, layout, false).toArray()).toEqual(theirs.toArray());
            }
            // Symmetric (GGUF Q4_0): biases from the scales.
            const symmetric = { ...w, biases: mx.multiply(w.scales, mx.scalar(-(2 ** (bits - 1)), scaleType)) };
            const symmetricRepacked = mx.repackQuantized(symmetric, layout)!;
            const x8 = rows(8);
            expectOursMatches(
              product(x8, symmetricRepacked, layout, true),
              product(x8, symmetric, layout, false),
              x8,
              symmetric,
              layout,
            );
          }
        }
      }
    });
  });

  // 8-bit codes in groups of 16 (a GGUF's Q6_K as the loader keeps it where our kernels run it):
  // MLX's ops refuse that group size; our int16 kernel reads it repacked, a scale per half block.
  test("8-bit weights in groups of 16: the int16 kernel within its rounding, rows alone = rows in a batch; dequantized and off, exactly", () => {
    mx.scope(() => {
      const layout = { bits: 8, groupSize: 16 };
      for (const [n, k, symmetric] of [
        [16, 256, true],
        [48, 96, false],
        [640, 2048, true],
      ] as const) {
        const codes = mx.astype(
          mx.multiply(mx.random.uniform([n, k], mx.Dtype.float32, mx.random.key(n)), 255.99),
          mx.Dtype.uint8,
        );
        const scales = mx.multiply(mx.random.uniform([n, k / 16], mx.Dtype.float32, mx.random.key(k)), 0.01);
        const biases = symmetric
          ? mx.multiply(scales, -128)
          : mx.random.normal([n, k / 16], mx.Dtype.float32, mx.random.key(n + k));
        const w = { weight: mx.view(mx.reshape(codes, [n, k]), mx.Dtype.uint32), scales, biases };
        // Each value code · its group's scale + its group's bias, computed apart from the shim.
        const perValue = (a: mx.MxArray) => mx.reshape(mx.repeat(mx.expandDims(a, -1), 16, -1), [n, k]);
        const values = mx.add(mx.multiply(mx.astype(codes, mx.Dtype.float32), perValue(scales)), perValue(biases));
        expect(mx.dequantize(w.weight, w.scales, w.biases, layout).toArray()).toEqual(values.toArray());
        const repacked = mx.repackQuantized(w, layout);
        if (!int16) {
          expect(repacked).toBeUndefined();
          expect(mx.cpuKernelsReadHalfGroups(n)).toBe(false);
          continue;
        }
        expect(mx.cpuKernelsReadHalfGroups(n)).toBe(true);
        expect(() =>
          mx.evaluate(mx.dequantize(repacked!.weight, repacked!.scales, repacked!.biases, layout)),
        ).toThrow();
        const back = mx.unrepackQuantized(repacked!);
        for (const part of ["weight", "scales", "biases"] as const)
          expect(back[part].toArray()).toEqual(w[part].toArray());
        const x = mx.random.normal([512, k], mx.Dtype.float32, mx.random.key(7));
        const rows = (m: number) => mx.slice(x, [0, 0], [m, k]);
        const alone = Array.from({ length: 17 }, (_, r) =>
          product(mx.slice(x, [r, 0], [r + 1, k]), repacked!, layout, true).toArray(),
        );
        for (const m of [1, 3, 8, 17, 512]) {
          const reference = mx.matmul(rows(m), mx.transpose(values));
          const ours = product(rows(m), repacked!, layout, true);
          expect(roundingExcess(ours, reference, rows(m), values, INT16_LEVELS)).toBeLessThanOrEqual(0);
          for (let r = 0; r < Math.min(m, 17); r++)
            expect(mx.slice(ours, [r, 0], [r + 1, n]).toArray()).toEqual(alone[r]!);
          // Our kernels off: the product of the dequantized weights, from either layout.
          for (const weights of [repacked!, w])
            expect(relativeError(product(rows(m), weights, layout, false), reference)).toBeLessThan(1e-5);
        }
      }
    });
  });

  test("weights that stay in MLX's layout: rows not a multiple of 16, our kernels off; MLX's ops refuse repacked ones, the lookup reads them", () => {
    mx.scope(() => {
      const layout = { bits: 4, groupSize: 32 };
      expect(mx.repackQuantized(quantizedWeight(40, 128, layout, mx.Dtype.float16, 2), layout)).toBeUndefined();
      const w = quantizedWeight(64, 128, layout, mx.Dtype.float16, 3);
      const previous = mx.useCpuKernels(false);
      try {
        expect(mx.repackQuantized(w, layout)).toBeUndefined();
      } finally {
        mx.useCpuKernels(previous);
      }
      if (!int16) return;
      const repacked = mx.repackQuantized(w, layout)!;
      expect(() => mx.evaluate(mx.dequantize(repacked.weight, repacked.scales, repacked.biases, layout))).toThrow();
      // A weight in MLX's layout passes through unrepackQuantized as it is.
      expect(mx.unrepackQuantized(w).weight.toArray()).toEqual(w.weight.toArray());
      // An embedding's lookup: the same rows from either layout, in MLX's.
      const ids = mx.array(Int32Array.from([5, 17, 63, 0, 33, 16]), [2, 3]);
      const fromRepacked = mx.takeQuantizedRows(repacked, ids),
        fromMlx = mx.takeQuantizedRows(w, ids);
      expect(fromRepacked.weight.shape).toEqual([2, 3, 16]);
      for (const part of ["weight", "scales", "biases"] as const)
        expect(fromRepacked[part].toArray()).toEqual(fromMlx[part].toArray());
    });
  });

  test("batched activations [B, L, K] and sliced (row-offset) weights", () => {
    mx.scope(() => {
      const layout = layouts[0]!;
      const w = quantizedWeight(96, 128, layout, mx.Dtype.float16, 7);
      const rows = {
        weight: mx.slice(w.weight, [32], [96]),
        scales: mx.slice(w.scales, [32], [96]),
        biases: mx.slice(w.biases, [32], [96]),
      };
      const x = mx.random.normal([2, 5, 128], mx.Dtype.float32, mx.random.key(8));
      const ours = product(x, rows, layout, true);
      expect(ours.shape).toEqual([2, 5, 64]);
      expect(relativeError(ours, product(x, rows, layout, false))).toBeLessThan(1e-5);
    });
  });

  test("strided inputs: transposed activations, column-sliced scales and biases (copied when evaluated)", () => {
    mx.scope(() => {
      const layout = layouts[0]!;
      const w = quantizedWeight(40, 128, layout, mx.Dtype.float16, 9);
      // Scales and biases as views of wider arrays: their rows are not contiguous.
      const wide = (t: mx.MxArray) => mx.slice(mx.concatenate([t, t], 1), [0, 0], [40, 4]);
      const strided = { weight: w.weight, scales: wide(w.scales), biases: wide(w.biases) };
      for (const m of [1, 3, 11]) {
        const x = mx.transpose(mx.random.normal([128, m], mx.Dtype.float32, mx.random.key(10 + m)));
        expectOursMatches(product(x, strided, layout, true), product(mx.contiguous(x), w, layout, false), x, w, layout);
      }
    });
  });

  test("layouts it does not cover (weights not transposed) are MLX's op", () => {
    mx.scope(() => {
      const layout = layouts[0]!;
      const w = mx.quantize(mx.random.normal([64, 96], mx.Dtype.float32, mx.random.key(3)), layout);
      const x = mx.random.normal([2, 64], mx.Dtype.float32, mx.random.key(4));
      const ours = mx.quantizedMatmul(x, w.weight, w.scales, w.biases, layout, false);
      mx.useCpuKernels(false);
      const theirs = mx.quantizedMatmul(x, w.weight, w.scales, w.biases, layout, false);
      expect(ours.toArray()).toEqual(theirs.toArray());
    });
  });

  test("two streams at once, evaluated asynchronously, agree with one stream", () => {
    mx.scope(() => {
      const layout = layouts[1]!;
      const w = quantizedWeight(300, 256, layout, mx.Dtype.float16, 11);
      const x = mx.random.normal([17, 256], mx.Dtype.float32, mx.random.key(12));
      const first = mx.slice(x, [0], [1]);
      const expected = product(x, w, layout, true).toArray();
      const expectedFirst = product(first, w, layout, true).toArray();
      const side = mx.newStream();
      for (let round = 0; round < 5; round++) {
        const a = mx.onStream(side, () => mx.quantizedMatmul(x, w.weight, w.scales, w.biases, layout, true));
        const b = mx.quantizedMatmul(x, w.weight, w.scales, w.biases, layout, true);
        const c = mx.onStream(side, () => mx.quantizedMatmul(first, w.weight, w.scales, w.biases, layout, true));
        mx.asyncEvaluate(a, b, c);
        expect(a.toArray()).toEqual(expected);
        expect(b.toArray()).toEqual(expected);
        expect(c.toArray()).toEqual(expectedFirst);
      }
    });
  });

  test("its outputs are counted in MLX's memory and released when freed", () => {
    const layout = layouts[0]!;
    const w = quantizedWeight(4096, 256, layout, mx.Dtype.float16, 21);
    const x = mx.random.normal([64, 256], mx.Dtype.float32, mx.random.key(22));
    mx.evaluate(w.weight, w.scales, w.biases, x);
    const before = mx.memory.activeMemory();
    const y = mx.quantizedMatmul(x, w.weight, w.scales, w.biases, layout, true);
    mx.evaluate(y);
    const outputBytes = 64 * 4096 * 4;
    expect(mx.memory.activeMemory() - before).toBeGreaterThanOrEqual(outputBytes);
    y.free();
    expect(mx.memory.activeMemory() - before).toBeLessThan(outputBytes);
    for (const a of [w.weight, w.scales, w.biases, x]) a.free();
  });
});
