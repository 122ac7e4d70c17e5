// Reading GGUF tensor types, against the values llama.cpp's gguf-py dequantizes them to
// (fixtures written by scripts/reference/gguf_quants.py): those MLX reads, those we read
// ourselves (it misreads Q4_K and refuses Q5_0, Q5_1, Q5_K), and a clear error for the rest.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import * as mx from "../src/mlx";
import { readGGUFHeader } from "../src/models/gguf-header";
import { loadGGUFTensors } from "../src/models/gguf-tensors";
import expected from "./fixtures/gguf-quants.json";

const fixture = (name: string) => join(import.meta.dir, "fixtures", name);

/** A tensor as floats: MLX's quantized ones (Q8_0, Q4_0, Q4_1) would come as weight/scales/biases; these all come dequantized. */
const floats = (t: mx.MxArray) => mx.scope(() => mx.reshape(mx.astype(t, mx.Dtype.float32), [-1]).toArray());

describe("GGUF tensor types", () => {
  const path = fixture("gguf-quants.gguf");
  const loaded = loadGGUFTensors(path, readGGUFHeader(path));

  for (const [type, values] of Object.entries(expected.values)) {
    test(`${type} reads as llama.cpp dequantizes it (to float16)`, () => {
      const t = loaded.tensors.get(type)!;
      expect(t.shape).toEqual([1, 256]);
      const scale = Math.max(...values.map(Math.abs));
      floats(t).forEach((v, i) => expect(Math.abs(v - values[i]!)).toBeLessThanOrEqual(scale * 1e-3 + 1e-6));
    });
  }

  test("a type nothing here reads is named, with those that are", () => {
    const q3 = fixture("gguf-q3k.gguf");
    expect(() => loadGGUFTensors(q3, readGGUFHeader(q3))).toThrow(
      "tensor 'Q3_K' is Q3_K, a type we cannot read (readable: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q2_K, Q6_K, Q5_0, Q5_1, Q4_K, Q5_K)",
    );
  });
});
