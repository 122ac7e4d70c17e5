// A GGUF file written as llama.cpp's gguf-py writes one (version 3, little-endian, 32-byte
// alignment): for tests that need a model file of a tensor type no stored model has (F16, F32,
// BF16, and Q6_K matrices of any shape).
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";

export type GGUFValue = string | number | boolean | string[] | number[];

export interface GGUFTensor {
  name: string;
  type: "F32" | "F16" | "BF16" | "Q6_K";
  /** Innermost dimension first, as GGUF orders them (an MLX [out, in] matrix is [in, out]). */
  dims: number[];
  values: Float32Array;
}

const TYPE_IDS = { F32: 0, F16: 1, Q6_K: 14, BF16: 30 } as const;
const VALUE = { uint32: 4, int32: 5, float32: 6, bool: 7, string: 8, array: 9 } as const;
const ALIGNMENT = 32;

/** Writes `metadata` (integers as int32, other numbers as float32) and `tensors` to `path`. */
export function writeGGUF(path: string, metadata: Record<string, GGUFValue>, tensors: GGUFTensor[]): void {
  const parts: Buffer[] = [];
  const u32 = (n: number) => Buffer.from(new Uint32Array([n]).buffer);
  const u64 = (n: number) => Buffer.from(new BigUint64Array([BigInt(n)]).buffer);
  const text = (s: string) => {
    const bytes = Buffer.from(s, "utf8");
    return Buffer.concat([u64(bytes.length), bytes]);
  };
  const scalar = (v: string | number | boolean): [number, Buffer] =>
    typeof v === "string"
      ? [VALUE.string, text(v)]
      : typeof v === "boolean"
        ? [VALUE.bool, Buffer.from([v ? 1 : 0])]
        : Number.isInteger(v)
          ? [VALUE.int32, Buffer.from(new Int32Array([v]).buffer)]
          : [VALUE.float32, Buffer.from(new Float32Array([v]).buffer)];
  parts.push(Buffer.from("GGUF"), u32(3), u64(tensors.length), u64(Object.keys(metadata).length));
  for (const [key, value] of Object.entries(metadata)) {
    parts.push(text(key));
    if (!Array.isArray(value)) {
      const [type, bytes] = scalar(value);
      parts.push(u32(type), bytes);
      continue;
    }
    const items = (value as (string | number)[]).map(scalar);
    parts.push(u32(VALUE.array), u32(items[0]?.[0] ?? VALUE.int32), u64(items.length), ...items.map(([, b]) => b));
  }
  const data: Buffer[] = [];
  let offset = 0;
  for (const t of tensors) {
    parts.push(text(t.name), u32(t.dims.length), ...t.dims.map(u64), u32(TYPE_IDS[t.type]), u64(offset));
    const bytes =
      t.type === "F32"
        ? Buffer.from(t.values.buffer)
        : t.type === "F16"
          ? float16Bytes(t.values)
          : t.type === "BF16"
            ? bfloat16Bytes(t.values)
            : quantizeQ6K(t.values).bytes;
    const padded = Buffer.concat([bytes, Buffer.alloc((ALIGNMENT - (bytes.length % ALIGNMENT)) % ALIGNMENT)]);
    data.push(padded);
    offset += padded.length;
  }
  const header = Buffer.concat(parts);
  const padding = Buffer.alloc((ALIGNMENT - (header.length % ALIGNMENT)) % ALIGNMENT);
  writeFileSync(path, Buffer.concat([header, padding, ...data]));
}

function float16Bytes(values: Float32Array): Buffer {
  const view = new DataView(new ArrayBuffer(values.length * 2));
  values.forEach((v, i) => view.setFloat16(i * 2, v, true));
  return Buffer.from(view.buffer);
}

/** Values as bfloat16: each float32's top 16 bits (exact for values bfloat16 holds). */
function bfloat16Bytes(values: Float32Array): Buffer {
  const words = new Uint32Array(values.buffer, values.byteOffset, values.length);
  return Buffer.from(Uint16Array.from(words, (w) => w >>> 16).buffer);
}

/**
 * Values (a multiple of 256) as Q6_K blocks, and the values those blocks hold (what a reader of
 * the file gets back): per 16 values an int8 scale of the block's float16 d, codes of 6 bits.
 */
export function quantizeQ6K(values: Float32Array): { bytes: Buffer; values: Float32Array } {
  const blocks = values.length / 256;
  const bytes = Buffer.alloc(blocks * 210);
  const held = new Float32Array(values.length);
  const half = new DataView(new ArrayBuffer(2));
  for (let b = 0; b < blocks; b++) {
    const x = values.subarray(b * 256, (b + 1) * 256);
    const out = bytes.subarray(b * 210, (b + 1) * 210);
    // A scale per 16 that puts its largest value at code 32 ± 31, then d so that the scales fit an int8.
    const groupScales = Array.from(
      { length: 16 },
      (_, g) => Math.max(...x.subarray(16 * g, 16 * g + 16).map(Math.abs)) / 31,
    );
    half.setFloat16(0, Math.max(...groupScales) / 127, true);
    const d = half.getFloat16(0, true);
    out[208] = half.getUint8(0);
    out[209] = half.getUint8(1);
    for (let g = 0; g < 16; g++) {
      const sc = d > 0 ? Math.max(-128, Math.min(127, Math.round(groupScales[g]! / d))) : 0;
      out.writeInt8(sc, 192 + g);
      const scale = Math.fround(d * sc);
      for (let i = 16 * g; i < 16 * g + 16; i++) {
        const q = scale > 0 ? Math.max(0, Math.min(63, Math.round(x[i]! / scale) + 32)) : 32;
        held[b * 256 + i] = Math.fround(scale * (q - 32));
        // Value 128h + 32j + l: a nibble of low byte 64h + l + 32 (j & 1), two bits of high byte 32h + l.
        const [h, j, l] = [i >> 7, (i >> 5) & 3, i & 31];
        out[64 * h + l + 32 * (j & 1)]! |= (q & 0xf) << (4 * (j >> 1));
        out[128 + 32 * h + l]! |= (q >> 4) << (2 * j);
      }
    }
  }
  return { bytes, values: held };
}

export interface TinyLlama {
  hidden: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  layers: number;
  /** The matrices' type (the embedding, tied, too); norms are F32 ones. */
  type: "F32" | "F16" | "Q6_K";
}

/**
 * A llama with random matrices (uniform in ±0.1), with SmolLM2's tokenizer, as writeGGUF takes
 * it: a Q6_K matrix's values are those its blocks hold (what a reader gets back).
 */
export function tinyLlamaGGUF(
  o: TinyLlama,
  random = Math.random,
): { metadata: Record<string, GGUFValue>; tensors: GGUFTensor[] } {
  const tokenizer = JSON.parse(
    gunzipSync(readFileSync(join(import.meta.dir, "..", "fixtures", "tokenizer-smollm2-gguf-meta.json.gz"))).toString(
      "utf8",
    ),
  );
  const vocab = tokenizer["tokenizer.ggml.tokens"].length;
  const { hidden, heads, kvHeads, ffn, layers, type } = o;
  const matrix = (name: string, inputs: number, outputs: number): GGUFTensor => {
    const values = Float32Array.from({ length: inputs * outputs }, () => (random() - 0.5) * 0.2);
    return { name, type, dims: [inputs, outputs], values: type === "Q6_K" ? quantizeQ6K(values).values : values };
  };
  const norm = (name: string): GGUFTensor => ({
    name,
    type: "F32",
    dims: [hidden],
    values: new Float32Array(hidden).fill(1),
  });
  const kv = (hidden / heads) * kvHeads;
  const tensors = [matrix("token_embd.weight", hidden, vocab), norm("output_norm.weight")];
  for (let i = 0; i < layers; i++)
    tensors.push(
      norm(`blk.${i}.attn_norm.weight`),
      norm(`blk.${i}.ffn_norm.weight`),
      matrix(`blk.${i}.attn_q.weight`, hidden, hidden),
      matrix(`blk.${i}.attn_k.weight`, hidden, kv),
      matrix(`blk.${i}.attn_v.weight`, hidden, kv),
      matrix(`blk.${i}.attn_output.weight`, hidden, hidden),
      matrix(`blk.${i}.ffn_gate.weight`, hidden, ffn),
      matrix(`blk.${i}.ffn_up.weight`, hidden, ffn),
      matrix(`blk.${i}.ffn_down.weight`, ffn, hidden),
    );
  const metadata = {
    ...tokenizer,
    "general.file_type": { F32: 0, F16: 1, Q6_K: 18 }[type], // MOSTLY_F32, MOSTLY_F16, MOSTLY_Q6_K
    "llama.context_length": 512,
    "llama.embedding_length": hidden,
    "llama.block_count": layers,
    "llama.feed_forward_length": ffn,
    "llama.attention.head_count": heads,
    "llama.attention.head_count_kv": kvHeads,
    "llama.rope.freq_base": 10000.5,
    "llama.attention.layer_norm_rms_epsilon": 0.00001,
  };
  return { metadata, tensors };
}
