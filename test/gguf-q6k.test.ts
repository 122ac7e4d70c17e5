// A GGUF whose matrices are Q6_K (as a Q6_K file is, and the output layers and half the down
// projections of a Q4_K_M one): where our CPU kernels run 8-bit products in groups of 16, its
// matrices stay quantized in Q6_K's own groups of 16 (exactly, float32 scales), through every
// fused block op and the tied embedding's lookup; elsewhere they are dequantized at load, as
// before. Either way the model answers as the same weights in float32 do.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mx from "../src/mlx";
import { loadModel, type LoadedModel } from "../src/models/load";
import { quantizeQ6K, tinyLlamaGGUF, writeGGUF } from "./helpers/gguf-writer";
import { firstStepLogits, greedy } from "./helpers/parity";

const work = mkdtempSync(join(tmpdir(), "mlx-q6k-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A seeded uniform generator (mulberry32), so a failure reproduces. */
function seeded(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A Q6_K GGUF `name` and its float32 twin (the values its blocks hold), written and loaded. */
function loadTwins(name: string, { metadata, tensors }: ReturnType<typeof tinyLlamaGGUF>): [LoadedModel, LoadedModel] {
  const [q6k, f32] = [join(work, `${name}.gguf`), join(work, `${name}-f32.gguf`)];
  writeGGUF(q6k, metadata, tensors);
  writeGGUF(
    f32,
    { ...metadata, "general.file_type": 0 },
    tensors.map((t) => ({ ...t, type: "F32" })),
  );
  return [loadModel(q6k), loadModel(f32)];
}

/** Both models' greedy answers to one prompt, 12 tokens: the same. */
function expectOneAnswer(quantized: LoadedModel, reference: LoadedModel): void {
  const prompt = quantized.tokenizer.encode("The quick brown fox jumps over the lazy dog");
  expect(greedy(quantized, prompt, 12, { untilEos: false })).toEqual(
    greedy(reference, prompt, 12, { untilEos: false }),
  );
}

describe("a Q6_K GGUF", () => {
  test("its matrices stay 8-bit in groups of 16 where our kernels run them, and it answers as its values in float32", () => {
    // Rows of 256 (Q6_K's blocks), and outputs a multiple of 16 (the kernels' repacked columns).
    const [quantized, reference] = loadTwins(
      "q6k",
      tinyLlamaGGUF({ hidden: 256, heads: 4, kvHeads: 2, ffn: 512, layers: 2, type: "Q6_K" }, seeded(6)),
    );
    try {
      const halfGroups = mx.cpuKernelsReadHalfGroups(16);
      for (const layer of ["model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj", "model.embed_tokens"])
        expect([layer, quantized.weights.quantFor(layer)]).toEqual([
          layer,
          halfGroups ? { bits: 8, groupSize: 16, mode: "affine" } : undefined,
        ]);
      expect(quantized.notes.join("\n")).toEqual(
        halfGroups ? "" : expect.stringContaining("its Q6_K tensors were dequantized to 16-bit at load time"),
      );
      if (halfGroups) expect(quantized.weightBytes).toBeLessThan(reference.weightBytes / 2);
      const prompt = quantized.tokenizer.encode("The quick brown fox jumps over the lazy dog");
      const ids = Array.from({ length: 64 }, (_, i) => i * 701);
      const [ours, theirs] = [firstStepLogits(quantized, prompt, ids), firstStepLogits(reference, prompt, ids)];
      const largest = Math.max(...theirs.map(Math.abs));
      ours.forEach((v, i) => expect(Math.abs(v - theirs[i]!)).toBeLessThan(1e-3 * largest + 1e-3));
      expectOneAnswer(quantized, reference);
    } finally {
      quantized.free();
      reference.free();
    }
  }, 120_000);

  test("a Q6_K matrix our kernels cannot hold (rows not a multiple of 16) is dequantized, and the note names it alone", () => {
    // A vocabulary of 49160 (a few added tokens, as fine-tunes add them): the tied embedding's
    // rows do not fill the kernels' columns of 16; the other matrices stay quantized.
    const random = seeded(8);
    const { metadata, tensors } = tinyLlamaGGUF(
      { hidden: 256, heads: 4, kvHeads: 2, ffn: 512, layers: 1, type: "Q6_K" },
      random,
    );
    const added = Array.from({ length: 8 }, (_, i) => `<added_${i}>`);
    const tokens = [...(metadata["tokenizer.ggml.tokens"] as string[]), ...added];
    const types = [...(metadata["tokenizer.ggml.token_type"] as number[]), ...added.map(() => 4)];
    const embedding = tensors.find((t) => t.name === "token_embd.weight")!;
    const values = Float32Array.from({ length: 256 * tokens.length }, (_, i) =>
      i < embedding.values.length ? embedding.values[i]! : (random() - 0.5) * 0.2,
    );
    Object.assign(embedding, { dims: [256, tokens.length], values: quantizeQ6K(values).values });
    const withTokens = { ...metadata, "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types };
    const [quantized, reference] = loadTwins("added-tokens", { metadata: withTokens, tensors });
    try {
      const note = quantized.notes.join("\n");
      if (mx.cpuKernelsReadHalfGroups(16)) {
        expect(quantized.weights.quantFor("model.embed_tokens")).toBeUndefined();
        expect(quantized.weights.quantFor("model.layers.0.mlp.down_proj")).toEqual({
          bits: 8,
          groupSize: 16,
          mode: "affine",
        });
        expect(note).toStartWith(
          "added-tokens.gguf: 1 of its 8 Q6_K tensors (token_embd.weight) was dequantized to 16-bit at load time",
        );
        expect(note).toContain(
          "Q5_K stay quantized, and Q6_K matrices of rows a multiple of 16), so it takes more memory",
        );
      } else expect(note).toContain("added-tokens.gguf: its Q6_K tensors were dequantized to 16-bit at load time");
      expectOneAnswer(quantized, reference);
    } finally {
      quantized.free();
      reference.free();
    }
  }, 120_000);

  test("split over 3 ranks by --tensor-parallel, each down projection keeps whole blocks of 32 inputs, which our kernel reads, and a rank that dequantizes Q6_K cuts the same columns", () => {
    // 512 MLP columns in groups of 16 over 3 ranks: 176 + 176 + 160 would leave two ranks a slice
    // the kernel cannot read (an odd number of groups), its matrix dequantized for every product.
    const { metadata, tensors } = tinyLlamaGGUF(
      { hidden: 768, heads: 12, kvHeads: 3, ffn: 512, layers: 1, type: "Q6_K" },
      seeded(7),
    );
    const path = join(work, "three-ranks.gguf");
    writeGGUF(path, metadata, tensors);
    const prefix = "model.layers.0.mlp.down_proj";
    /** Each rank's down projection: its inputs, and whether it is held in groups of 16. */
    const cuts = () =>
      [0, 1, 2].map((rank) => {
        const lm = loadModel(path, undefined, { rank, size: 3 });
        try {
          const held = lm.weights.quantFor(prefix) !== undefined;
          if (!held) return { inputs: lm.weights.get(`${prefix}.weight`).shape[1]!, held };
          expect([rank, lm.weights.quantFor(prefix)?.groupSize]).toEqual([rank, 16]);
          // Repacked for our kernel (marked int32), so the product runs on it.
          expect([rank, lm.weights.get(`${prefix}.weight`).dtype]).toEqual([rank, mx.Dtype.int32]);
          return { inputs: lm.weights.get(`${prefix}.scales`).shape[1]! * 16, held };
        } finally {
          lm.free();
        }
      });
    const ours = cuts();
    expect(ours.map((c) => c.held)).toEqual([0, 1, 2].map(() => mx.cpuKernelsReadHalfGroups(16)));
    expect(ours.map((c) => c.inputs % 32)).toEqual([0, 0, 0]);
    expect(ours.reduce((n, c) => n + c.inputs, 0)).toBe(512);
    // A rank on another machine (no AVX-512 VNNI, a GPU, MLX_KERNELS=mlx) dequantizes Q6_K at load;
    // it must cut the same columns, or the ranks' partial sums overlap and the answer is wrong.
    const previous = mx.useCpuKernels(false);
    try {
      const elsewhere = cuts();
      expect(elsewhere.map((c) => c.held)).toEqual([false, false, false]);
      expect(elsewhere.map((c) => c.inputs)).toEqual(ours.map((c) => c.inputs));
    } finally {
      mx.useCpuKernels(previous);
    }
  }, 120_000);
});
