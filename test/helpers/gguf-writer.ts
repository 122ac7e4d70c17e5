// A GGUF file written as llama.cpp's gguf-py writes one (version 3, little-endian, 32-byte
// alignment): for tests that need a model file of a tensor type no stored model has (F16, F32).
import { writeFileSync } from "node:fs";

export type GGUFValue = string | number | boolean | string[] | number[];

export interface GGUFTensor {
  name: string;
  type: "F32" | "F16";
  /** Innermost dimension first, as GGUF orders them (an MLX [out, in] matrix is [in, out]). */
  dims: number[];
  values: Float32Array;
}

const TYPE_IDS = { F32: 0, F16: 1 } as const;
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
    const bytes = t.type === "F32" ? Buffer.from(t.values.buffer) : float16Bytes(t.values);
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
