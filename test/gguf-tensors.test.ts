// Reading GGUF tensor types, against the values llama.cpp's gguf-py dequantizes them to
// (fixtures written by scripts/reference/gguf_quants.py): those MLX reads, those we read
// ourselves (it misreads Q4_K and refuses Q3_K, Q5_0, Q5_1, Q5_K, IQ4_NL, IQ4_XS), Q4_K and the
// 5-bit types kept quantized as MLX's affine layout, MXFP4 as MLX's mxfp4, and a clear error for
// the rest.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mx from "../src/mlx";
import { readGGUFHeader } from "../src/models/gguf-header";
import { loadGGUFTensors } from "../src/models/gguf-tensors";
import { loadModel } from "../src/models/load";
import { writeGGUF } from "./helpers/gguf-writer";
import expected from "./fixtures/gguf-quants.json";

const fixture = (name: string) => join(import.meta.dir, "fixtures", name);

/** A tensor as floats: MLX's quantized ones (Q8_0, Q4_0, Q4_1) would come as weight/scales/biases; these all come dequantized. */
const floats = (t: mx.MxArray) => mx.scope(() => mx.reshape(mx.astype(t, mx.Dtype.float32), [-1]).toArray());

describe("GGUF tensor types", () => {
  const path = fixture("gguf-quants.gguf");
  const loaded = loadGGUFTensors(path, readGGUFHeader(path));

  // Their values are code · scale + bias in groups of 32: MLX's affine layout holds them as they are.
  const affineBits: Record<string, number> = { Q4_K: 4, Q5_0: 8, Q5_1: 8, Q5_K: 8 };
  for (const [type, bits] of Object.entries(affineBits)) {
    test(`${type} stays quantized, ${bits}-bit affine in groups of 32, with llama.cpp's values`, () => {
      const [weight, scales, biases] = ["", ".scales", ".biases"].map((suffix) => loaded.tensors.get(type + suffix)!);
      expect([weight!.dtypeName, weight!.shape, scales!.dtypeName, scales!.shape, biases!.shape]).toEqual([
        "uint32",
        [1, (256 * bits) / 32],
        "float16",
        [1, 8],
        [1, 8],
      ]);
      const values = expected.values[type as keyof typeof expected.values];
      const scale = Math.max(...values.map(Math.abs));
      const read = floats(mx.dequantize(weight!, scales!, biases, { groupSize: 32, bits, mode: "affine" }));
      expect(read.length).toBe(256);
      read.forEach((v, i) => expect(Math.abs(v - values[i]!)).toBeLessThanOrEqual(scale * 1e-3 + 1e-6));
    });
  }

  for (const [type, values] of Object.entries(expected.values)) {
    if (type === "MXFP4" || type in affineBits) continue;
    test(`${type} reads as llama.cpp dequantizes it (to float16)`, () => {
      const t = loaded.tensors.get(type)!;
      expect(t.shape).toEqual([1, 256]);
      const scale = Math.max(...values.map(Math.abs));
      floats(t).forEach((v, i) => expect(Math.abs(v - values[i]!)).toBeLessThanOrEqual(scale * 1e-3 + 1e-6));
    });
  }

  // Where our CPU kernels run 8-bit products in groups of 16, the loader keeps a Q6_K matrix so
  // (its own groups, codes q + 96 with the bias -128 · scale): exactly llama.cpp's values.
  test("Q6_K reads as 8-bit codes in groups of 16 with float32 scales, exactly llama.cpp's values", () => {
    const header = readGGUFHeader(path);
    const t = header.tensors.find((t) => t.name === "Q6_K")!;
    const { weight, scales, biases } = mx.readGGUFAffine({
      path,
      offset: header.dataStart + t.offset,
      bytes: t.bytes,
      type: t.type,
      shape: [...t.dims].reverse(),
    });
    expect([weight.dtypeName, weight.shape, scales.dtypeName, scales.shape]).toEqual([
      "uint32",
      [1, 64],
      "float32",
      [1, 16],
    ]);
    expect(biases.toArray()).toEqual(mx.multiply(scales, -128).toArray());
    const read = floats(mx.dequantize(weight, scales, biases, { groupSize: 16, bits: 8, mode: "affine" }));
    read.forEach((v, i) => expect(Math.abs(v - expected.values.Q6_K[i]!)).toBeLessThanOrEqual(5e-7)); // the fixture's 6 decimals
    // This one-row matrix is not a product our kernels run in groups of 16: it comes dequantized.
    expect(loaded.tensors.get("Q6_K")!.dtypeName).toBe("float16");
  });

  test("MXFP4 stays quantized as MLX's mxfp4 (uint32 words, a scale byte per 32), with llama.cpp's values", () => {
    const [weight, scales] = [loaded.tensors.get("MXFP4")!, loaded.tensors.get("MXFP4.scales")!];
    expect([weight.dtypeName, weight.shape, scales.dtypeName, scales.shape]).toEqual([
      "uint32",
      [1, 32],
      "uint8",
      [1, 8],
    ]);
    const values = floats(mx.dequantize(weight, scales, undefined, { groupSize: 32, bits: 4, mode: "mxfp4" }));
    expect(values.length).toBe(256);
    values.forEach((v, i) => expect(Math.abs(v - expected.values.MXFP4[i]!)).toBeLessThanOrEqual(1e-6)); // the fixture's 6 decimals
  });

  test("BF16 reads as the bfloat16 it is: MLX's reader made float16 of it, past ±65504 infinite", () => {
    // Values bfloat16 holds exactly: beyond float16's range, below its normal numbers, and ordinary ones.
    const values = Float32Array.from([99_840, -(2 ** 127), 2 ** -30, -1.5, 70_144, 3.140625, 2 ** -126, 0]);
    const path = join(mkdtempSync(join(tmpdir(), "mlx-gguf-")), "bf16.gguf");
    writeGGUF(path, { "general.architecture": "llama" }, [
      { name: "F32", type: "F32", dims: [8], values },
      { name: "BF16", type: "BF16", dims: [4, 2], values },
    ]);
    const { tensors } = loadGGUFTensors(path, readGGUFHeader(path));
    const bf16 = tensors.get("BF16")!;
    expect([bf16.dtypeName, bf16.shape]).toEqual(["bfloat16", [2, 4]]);
    expect(floats(bf16)).toEqual([...values]);
    expect(floats(tensors.get("F32")!)).toEqual([...values]); // read by MLX beside it
  });

  test("a string list holding a NUL byte is refused, not read shifted (MLX's reader split it in two)", () => {
    const path = join(mkdtempSync(join(tmpdir(), "mlx-gguf-")), "nul.gguf");
    const tokens = ["<s>", "a\0b", "c"];
    writeGGUF(path, { "general.architecture": "llama", "tokenizer.ggml.tokens": tokens }, [
      { name: "output_norm.weight", type: "F32", dims: [8], values: new Float32Array(8) },
    ]);
    expect(() => loadGGUFTensors(path, readGGUFHeader(path))).toThrow(
      "metadata 'tokenizer.ggml.tokens' holds a string with a NUL byte, which MLX's GGUF reader splits in two (3 strings read as 4)",
    );
  });

  test("a type nothing here reads is named, with those that are", () => {
    const unreadable = fixture("gguf-unreadable.gguf");
    expect(() => loadGGUFTensors(unreadable, readGGUFHeader(unreadable))).toThrow(
      "tensor 'IQ2_XXS' is IQ2_XXS, a type we cannot read (readable: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q2_K, Q6_K, Q5_0, Q5_1, Q4_K, Q5_K, Q3_K, IQ4_NL, IQ4_XS, MXFP4)",
    );
  });
});

describe("a GGUF header that is not one", () => {
  /** GGUF version 3, then `rest`. */
  const header = (rest: Buffer) => {
    const path = join(mkdtempSync(join(tmpdir(), "mlx-gguf-")), "bad.gguf");
    writeFileSync(path, Buffer.concat([Buffer.from("GGUF\x03\0\0\0", "latin1"), rest]));
    return path;
  };
  const u64 = (n: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(n);
    return b;
  };

  test("counts that cannot fit in the file are called an invalid header, not a short file", () => {
    const path = header(Buffer.concat([u64(0xa0b0c0d0e0f00000n), u64(0x1020304050607080n), Buffer.alloc(200, 0x5a)]));
    expect(() => readGGUFHeader(path)).toThrow(
      /^invalid GGUF header: \d+ tensors and \d+ metadata entries cannot fit in a file of 224 bytes$/,
    );
  });

  test("one file of a split GGUF (gguf-split) is refused as such, not as a damaged model", () => {
    const u16Entry = (key: string, value: number) => {
      const v = Buffer.alloc(6);
      v.writeUInt32LE(2); // GGUF's uint16
      v.writeUInt16LE(value, 4);
      return Buffer.concat([u64(BigInt(key.length)), Buffer.from(key), v]);
    };
    const path = header(Buffer.concat([u64(0n), u64(2n), u16Entry("split.no", 0), u16Entry("split.count", 3)]));
    expect(readGGUFHeader(path).split).toEqual({ index: 0, count: 3 });
    expect(() => loadModel(path)).toThrow(
      `${path} is part 1 of a GGUF split into 3 files; join them into one first (llama.cpp: llama-gguf-split --merge <first part> merged.gguf)`,
    );
  });

  test("an alignment of 0 or not a power of 2 is an invalid header (0 crashed the process in MLX's reader)", () => {
    for (const alignment of [0, 3, 48]) {
      const value = Buffer.alloc(8);
      value.writeUInt32LE(4); // GGUF's uint32
      value.writeUInt32LE(alignment, 4);
      const key = "general.alignment";
      const path = header(Buffer.concat([u64(0n), u64(1n), u64(BigInt(key.length)), Buffer.from(key), value]));
      expect(() => readGGUFHeader(path)).toThrow(
        `invalid GGUF header: general.alignment is ${alignment}, not a power of 2`,
      );
    }
  });

  test("an alignment of a type other than uint32 is an invalid header (MLX's reader read the tensors 32-aligned)", () => {
    const key = "general.alignment";
    for (const [type, bytes] of [
      [5, [64, 0, 0, 0]], // int32
      [10, [64, 0, 0, 0, 0, 0, 0, 0]], // uint64
    ] as const) {
      const value = Buffer.alloc(4);
      value.writeUInt32LE(type);
      const entry = Buffer.concat([u64(BigInt(key.length)), Buffer.from(key), value, Buffer.from(bytes)]);
      const path = header(Buffer.concat([u64(0n), u64(1n), entry]));
      expect(() => readGGUFHeader(path)).toThrow(
        `invalid GGUF header: general.alignment is of value type ${type}, not a uint32 (4)`,
      );
    }
  });

  test("a float64 metadata value, or array of them, is refused (MLX's reader crashed the process on it)", () => {
    const key = "some.ratio";
    const u32 = (n: number) => Buffer.from(new Uint32Array([n]).buffer);
    const float64 = Buffer.from(new Float64Array([1.5]).buffer);
    const text = (s: string) => Buffer.concat([u64(BigInt(s.length)), Buffer.from(s)]);
    const architecture = Buffer.concat([text("general.architecture"), u32(8), text("llama")]);
    // GGUF's float64 (12), and an array (9) of one, with an entry after it (which MLX's reader then misread).
    for (const value of [Buffer.concat([u32(12), float64]), Buffer.concat([u32(9), u32(12), u64(1n), float64])]) {
      const path = header(Buffer.concat([u64(0n), u64(2n), text(key), value, architecture]));
      expect(() => loadModel(path)).toThrow(
        `cannot load ${path}: metadata key 'some.ratio' holds float64 values, which MLX's GGUF reader cannot read (it crashes the process)`,
      );
    }
  });

  test("a big-endian GGUF is named so, not as an unknown version", () => {
    const path = join(mkdtempSync(join(tmpdir(), "mlx-gguf-")), "big-endian.gguf");
    writeFileSync(path, Buffer.concat([Buffer.from("GGUF\0\0\0\x03", "latin1"), Buffer.alloc(200)]));
    expect(() => loadModel(path)).toThrow(
      `cannot load ${path}: a big-endian GGUF, and only little-endian ones are read (gguf-py's gguf-convert-endian FILE little converts it)`,
    );
  });

  test("a tensor whose rows are not whole blocks is refused (a block across two rows read one row's values into the other)", () => {
    const text = (s: string) => Buffer.concat([u64(BigInt(s.length)), Buffer.from(s)]);
    const u32 = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(n);
      return b;
    };
    // Q4_K (type 12) in 2 rows of 128: one 256-value block of 144 bytes, across both rows.
    const table = Buffer.concat([
      u64(1n),
      u64(0n),
      text("blk.0.ffn_up.weight"),
      u32(2),
      u64(128n),
      u64(2n),
      u32(12),
      u64(0n),
    ]);
    const padding = Buffer.alloc((32 - ((8 + table.length) % 32)) % 32);
    const path = header(Buffer.concat([table, padding, Buffer.alloc(144)]));
    expect(() => readGGUFHeader(path)).toThrow(
      "tensor 'blk.0.ffn_up.weight': its rows of 128 values are not a whole number of Q4_K blocks (256 values each)",
    );
  });

  test("a type llama.cpp once wrote (ARM's Q4_0_4_4) or has newly (Q1_0) is named, not an unknown number", () => {
    const text = (s: string) => Buffer.concat([u64(BigInt(s.length)), Buffer.from(s)]);
    const u32 = (n: number) => Buffer.from(new Uint32Array([n]).buffer);
    for (const [code, name, bytes] of [
      [31, "Q4_0_4_4", 18],
      [41, "Q1_0", 18],
    ] as const) {
      const values = code === 41 ? 128n : 32n;
      const table = Buffer.concat([
        u64(1n),
        u64(0n),
        text("blk.0.ffn_up.weight"),
        u32(1),
        u64(values),
        u32(code),
        u64(0n),
      ]);
      const padding = Buffer.alloc((32 - ((8 + table.length) % 32)) % 32);
      const path = header(Buffer.concat([table, padding, Buffer.alloc(bytes)]));
      expect(() => loadGGUFTensors(path, readGGUFHeader(path))).toThrow(
        `tensor 'blk.0.ffn_up.weight' is ${name}, a type we cannot read`,
      );
    }
  });

  test("a metadata key or a tensor name given twice is an invalid header (llama.cpp refuses both)", () => {
    const text = (s: string) => Buffer.concat([u64(BigInt(s.length)), Buffer.from(s)]);
    const u32 = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(n);
      return b;
    };
    const blockCount = (n: number) => Buffer.concat([text("llama.block_count"), u32(4), u32(n)]); // GGUF's uint32
    const keys = header(Buffer.concat([u64(0n), u64(2n), blockCount(2), blockCount(1)]));
    expect(() => readGGUFHeader(keys)).toThrow("invalid GGUF header: metadata key 'llama.block_count' appears twice");
    // Two F32 tensors of 8 values under one name (MLX's reader failed on them naming their values, not the tensor).
    const tensor = (offset: bigint) =>
      Buffer.concat([text("output_norm.weight"), u32(1), u64(8n), u32(0), u64(offset)]);
    const table = Buffer.concat([u64(2n), u64(0n), tensor(0n), tensor(32n)]);
    const padding = Buffer.alloc((32 - ((8 + table.length) % 32)) % 32);
    const tensors = header(Buffer.concat([table, padding, Buffer.alloc(64)]));
    expect(() => loadModel(tensors)).toThrow(
      `cannot load ${tensors}: invalid GGUF header: tensor 'output_norm.weight' appears twice`,
    );
  });

  test("a string longer than the file is an invalid header too", () => {
    const path = header(Buffer.concat([u64(1n), u64(1n), u64(0x7a7a7a7a7a7an), Buffer.alloc(200, 0x7a)]));
    expect(() => readGGUFHeader(path)).toThrow(
      `invalid GGUF header: a string at offset 24 claims ${0x7a7a7a7a7a7a} bytes, more than the file's 232`,
    );
  });
});
