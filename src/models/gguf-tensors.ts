// Reading a GGUF's tensors, including types MLX's reader gets wrong or refuses: it fails on the
// whole file for Q5_0 and Q5_1, and reads Q4_K with wrong values (off by up to half the weights'
// range; Q2_K, Q6_K and Q8_0 it reads right). Q3_K, Q5_K, IQ4_NL and IQ4_XS it refuses too, and
// a file with MXFP4 tensors it reads as empty.
// MLX reads a copy of the file without those tensors, and we read them ourselves: those whose
// values are code · scale + bias in groups of 32 (Q4_K, Q5_0, Q5_1, Q5_K) stay quantized, as
// MLX's affine layout at 4 bits (Q4_K) or their 5-bit codes in 8 (the rest), so they run on the
// quantized kernels at no loss; MXFP4 is MLX's mxfp4 in another byte order and stays quantized
// too; the others we dequantize to float16, as llama.cpp's dequantize_row_* do.
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mx from "../mlx";
import type { LoadedFile, MxArray } from "../mlx";
import { nativeTensorTypes, type GGUFHeader, type GGUFTensorInfo } from "./gguf-header";

/** ggml block of `blockElements` → floats, for the types we read ourselves. */
const dequantizers: Record<
  string,
  { blockBytes: number; blockElements: number; decode: (b: DataView, p: number, out: Float32Array, at: number) => void }
> = {
  Q3_K: { blockBytes: 110, blockElements: 256, decode: q3K },
  // d: f16, then 16 bytes of nibbles indexing the non-linear IQ4 values.
  IQ4_NL: {
    blockBytes: 18,
    blockElements: 32,
    decode: (b, p, out, at) => iq4Group(b, p + 2, out, at, b.getFloat16(p, true)),
  },
  IQ4_XS: { blockBytes: 136, blockElements: 256, decode: iq4XS },
};

/**
 * Q3_K: 32 bytes of high bits (hmask), 64 bytes of 2-bit lows, 12 bytes packing 16 6-bit
 * scales, d: f16. x = d · (scale − 32) · (low − (high bit ? 0 : 4)), 16 values per scale.
 */
function q3K(b: DataView, p: number, out: Float32Array, at: number): void {
  const hmask = p;
  const qs = p + 32;
  const scaleByte = (i: number) => b.getUint8(p + 96 + i);
  const d = b.getFloat16(p + 108, true);
  // Scale j: low 4 bits from byte j (its high nibble for j ≥ 8), high 2 bits from byte 8 + j % 4.
  const scale = (j: number) =>
    ((j < 8 ? scaleByte(j) & 0xf : scaleByte(j - 8) >> 4) | (((scaleByte(8 + (j % 4)) >> (2 * (j >> 2))) & 3) << 4)) -
    32;
  let j = 0;
  for (let half = 0; half < 2; half++) {
    for (let shift = 0; shift < 8; shift += 2) {
      const bit = 1 << (half * 4 + shift / 2);
      for (const offset of [0, 16]) {
        const dl = d * scale(j);
        for (let l = 0; l < 16; l++) {
          const low = (b.getUint8(qs + half * 32 + offset + l) >> shift) & 3;
          const high = b.getUint8(hmask + offset + l) & bit ? 0 : 4;
          out[at + j * 16 + l] = dl * (low - high);
        }
        j++;
      }
    }
  }
}

/** The IQ4 codebook: a 4-bit index → a signed 8-bit level. */
const iq4Values = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/** 32 values from 16 bytes of nibbles at `p` (low nibbles first, then high ones), times `scale`. */
function iq4Group(b: DataView, p: number, out: Float32Array, at: number, scale: number): void {
  for (let j = 0; j < 16; j++) {
    const q = b.getUint8(p + j);
    out[at + j] = scale * iq4Values[q & 0xf]!;
    out[at + j + 16] = scale * iq4Values[q >> 4]!;
  }
}

/** IQ4_XS: d: f16, 8 groups of 32 with 6-bit scales (2 high bits in a u16, 4 low ones in 4 bytes), 128 bytes of nibbles. */
function iq4XS(b: DataView, p: number, out: Float32Array, at: number): void {
  const d = b.getFloat16(p, true);
  const high = b.getUint16(p + 2, true);
  for (let group = 0; group < 8; group++) {
    const low = (b.getUint8(p + 4 + (group >> 1)) >> (4 * (group & 1))) & 0xf;
    const scale = (low | (((high >> (2 * group)) & 3) << 4)) - 32;
    iq4Group(b, p + 8 + group * 16, out, at + group * 32, d * scale);
  }
}

/**
 * The types kept quantized as MLX's affine layout: a block of `blockElements` → its codes (one a
 * byte), and a scale and bias for each of its groups of 32, so that value = code · scale + bias
 * exactly as llama.cpp's dequantize_row_* computes it. `bits`: the width they are packed at.
 */
const affineReaders: Record<
  string,
  {
    blockBytes: number;
    blockElements: number;
    bits: 4 | 8;
    read: (b: DataView, p: number, codes: Uint8Array, at: number, scales: Float32Array, biases: Float32Array) => void;
  }
> = {
  // d: f16, qh: 32 high bits, qs: 16 bytes of low nibbles; x = d · q − 16 · d.
  Q5_0: {
    blockBytes: 22,
    blockElements: 32,
    bits: 8,
    read: (b, p, codes, at, scales, biases) => {
      const d = b.getFloat16(p, true);
      fiveBitCodes(b, p + 2, codes, at);
      scales[at / 32] = d;
      biases[at / 32] = -16 * d;
    },
  },
  // d, m: f16, then as Q5_0; x = d · q + m.
  Q5_1: {
    blockBytes: 24,
    blockElements: 32,
    bits: 8,
    read: (b, p, codes, at, scales, biases) => {
      fiveBitCodes(b, p + 4, codes, at);
      scales[at / 32] = b.getFloat16(p, true);
      biases[at / 32] = b.getFloat16(p + 2, true);
    },
  },
  // d, dmin: f16; 12 bytes of 6-bit scales and mins for 8 groups of 32; 128 bytes of nibbles.
  Q4_K: { blockBytes: 144, blockElements: 256, bits: 4, read: (b, p, ...out) => kQuantCodes(b, p, p + 16, ...out) },
  // As Q4_K, with a fifth bit per value in 32 bytes of qh before the nibbles.
  Q5_K: {
    blockBytes: 176,
    blockElements: 256,
    bits: 8,
    read: (b, p, ...out) => kQuantCodes(b, p, p + 48, ...out, p + 16),
  },
};

/** The 5-bit codes at `p` (32 high bits, then 16 bytes of low nibbles: codes j and j + 16). */
function fiveBitCodes(b: DataView, p: number, codes: Uint8Array, at: number): void {
  const qh = b.getUint32(p, true);
  for (let j = 0; j < 16; j++) {
    const q = b.getUint8(p + 4 + j);
    codes[at + j] = (q & 0x0f) | (((qh >>> j) << 4) & 0x10);
    codes[at + j + 16] = (q >> 4) | ((qh >>> (j + 12)) & 0x10);
  }
}

/**
 * Q4_K / Q5_K: 8 groups of 32 codes, each group with a 6-bit scale and min: x = d · scale · q −
 * dmin · min. Group 2i's codes are the low nibbles of 32 bytes, group 2i + 1's their high ones;
 * Q5_K's fifth bit of code l of group g is bit g of byte l of `highBits`.
 */
function kQuantCodes(
  b: DataView,
  p: number,
  nibbles: number,
  codes: Uint8Array,
  at: number,
  scales: Float32Array,
  biases: Float32Array,
  highBits?: number,
): void {
  const d = b.getFloat16(p, true);
  const dmin = b.getFloat16(p + 2, true);
  const byte = (i: number) => b.getUint8(p + 4 + i);
  for (let g = 0; g < 8; g++) {
    // get_scale_min_k4: the first four groups' values sit in the low 6 bits, the others are split.
    const [scale, min] =
      g < 4
        ? [byte(g) & 63, byte(g + 4) & 63]
        : [(byte(g + 4) & 0xf) | ((byte(g - 4) >> 6) << 4), (byte(g + 4) >> 4) | ((byte(g) >> 6) << 4)];
    scales[at / 32 + g] = d * scale;
    biases[at / 32 + g] = -dmin * min;
    const q = nibbles + (g >> 1) * 32;
    const shift = 4 * (g & 1);
    for (let l = 0; l < 32; l++) {
      const high = highBits === undefined ? 0 : ((b.getUint8(highBits + l) >> g) & 1) << 4;
      codes[at + g * 32 + l] = ((b.getUint8(q + l) >> shift) & 0xf) | high;
    }
  }
}

/** Types MLX reads right (Q2_K and Q6_K it dequantizes, checked against llama.cpp's gguf-py). */
const mlxReads = new Set([...nativeTensorTypes, "Q2_K", "Q6_K"]);
export const readableTensorTypes = [...mlxReads, ...Object.keys(affineReaders), ...Object.keys(dequantizers), "MXFP4"];
/** Types whose tensors come quantized (weight, scales and maybe biases), not as floats. */
export const keptQuantizedTypes = new Set([...nativeTensorTypes, "MXFP4", ...Object.keys(affineReaders)]);
/** Kept quantized at 8 bits, wider than the file's codes (Q5_0, Q5_1, Q5_K: MLX's kernels take 4 or 8). */
export const widenedTypes = new Set(
  Object.entries(affineReaders)
    .filter(([, r]) => r.bits === 8)
    .map(([type]) => type),
);

/** The affine width each type is held at: MLX's own GGUF types, and those we keep quantized. */
const affineBits: Record<string, number> = {
  Q4_0: 4,
  Q4_1: 4,
  Q8_0: 8,
  ...Object.fromEntries(Object.entries(affineReaders).map(([type, r]) => [type, r.bits])),
};

/**
 * Bytes a tensor takes once loaded, which is not its size in the file (what a split across
 * processes plans with): the affine types a code of their width per value and a float16 scale
 * and bias per 32, the dequantized ones 16 bits a value, the rest (floats, MXFP4) as stored.
 */
export function loadedBytes(t: GGUFTensorInfo): number {
  const values = t.dims.reduce((a, b) => a * b, 1);
  const bits = affineBits[t.type];
  if (bits !== undefined) return (values * bits) / 8 + (values / 32) * 4;
  return keptQuantizedTypes.has(t.type) ? t.bytes : values * 2;
}

/**
 * The file's tensors and metadata, as mx.loadGGUF gives them, whatever their (readable) types;
 * only those `wanted` (by GGUF name) when given: MLX reads every tensor of a GGUF at once.
 */
export function loadGGUFTensors(path: string, header: GGUFHeader, wanted?: (name: string) => boolean): LoadedFile {
  const tensors = wanted ? header.tensors.filter((t) => wanted(t.name)) : header.tensors;
  const unreadable = tensors.find((t) => !readableTensorTypes.includes(t.type));
  if (unreadable)
    throw new Error(
      `tensor '${unreadable.name}' is ${unreadable.type}, a type we cannot read (readable: ${readableTensorTypes.join(", ")})`,
    );
  const ours = tensors.filter((t) => !mlxReads.has(t.type));
  if (ours.length === 0 && tensors.length === header.tensors.length) return mx.loadGGUF(path);
  const dir = mkdtempSync(join(tmpdir(), "mlx-gguf-"));
  let loaded: LoadedFile;
  try {
    const copy = join(dir, "rest.gguf");
    const skip = new Set(ours.map((t) => t.name));
    writeSubset(path, header, (t) => !skip.has(t.name) && tensors.includes(t), copy);
    loaded = mx.loadGGUF(copy);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const fd = openSync(path, "r");
  try {
    for (const t of ours) {
      const prefix = t.name.replace(/\.weight$/, "");
      if (t.type in affineReaders) {
        const { weight, scales, biases } = affine(fd, header.dataStart, t);
        loaded.tensors.set(t.name, weight);
        loaded.tensors.set(`${prefix}.scales`, scales);
        loaded.tensors.set(`${prefix}.biases`, biases);
      } else if (t.type === "MXFP4") {
        const { weight, scales } = mxfp4(fd, header.dataStart, t);
        loaded.tensors.set(t.name, weight);
        loaded.tensors.set(`${prefix}.scales`, scales);
      } else loaded.tensors.set(t.name, dequantize(fd, header.dataStart, t));
    }
  } finally {
    closeSync(fd);
  }
  return loaded;
}

/** A tensor of a type in affineReaders as MLX's affine layout: codes packed into uint32 words along K, float16 scales and biases. */
function affine(
  fd: number,
  dataStart: number,
  t: GGUFTensorInfo,
): { weight: MxArray; scales: MxArray; biases: MxArray } {
  const { blockBytes, blockElements, bits, read } = affineReaders[t.type]!;
  const raw = readTensor(fd, dataStart, t);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const elements = (t.bytes / blockBytes) * blockElements;
  const codes = new Uint8Array(elements);
  const scales = new Float32Array(elements / 32);
  const biases = new Float32Array(elements / 32);
  for (let block = 0; block * blockBytes < t.bytes; block++)
    read(view, block * blockBytes, codes, block * blockElements, scales, biases);
  const packed = bits === 8 ? codes : nibblePairs(codes);
  const shape = [...t.dims].reverse();
  const inputs = shape.pop()!;
  const half = (values: Float32Array) =>
    mx.keep(mx.scope(() => mx.astype(mx.array(values, [...shape, inputs / 32]), mx.Dtype.float16)));
  return {
    weight: mx.keep(mx.scope(() => mx.view(mx.array(packed, [...shape, (inputs * bits) / 8]), mx.Dtype.uint32))),
    scales: half(scales),
    biases: half(biases),
  };
}

/** 4-bit codes, one a byte, packed two a byte: byte k holds code 2k in its low nibble and 2k + 1. */
function nibblePairs(codes: Uint8Array): Uint8Array {
  const packed = new Uint8Array(codes.length / 2);
  for (let k = 0; k < packed.length; k++) packed[k] = codes[2 * k]! | (codes[2 * k + 1]! << 4);
  return packed;
}

function readTensor(fd: number, dataStart: number, t: GGUFTensorInfo): Buffer {
  const raw = Buffer.alloc(t.bytes);
  readSync(fd, raw, 0, t.bytes, dataStart + t.offset);
  return raw;
}

function dequantize(fd: number, dataStart: number, t: GGUFTensorInfo): MxArray {
  const { blockBytes, blockElements, decode } = dequantizers[t.type]!;
  const raw = readTensor(fd, dataStart, t);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out = new Float32Array((t.bytes / blockBytes) * blockElements);
  for (let block = 0; block * blockBytes < t.bytes; block++)
    decode(view, block * blockBytes, out, block * blockElements);
  return mx.keep(mx.scope(() => mx.astype(mx.array(out, [...t.dims].reverse()), mx.Dtype.float16)));
}

/**
 * An MXFP4 tensor as MLX's mxfp4 (groups of 32 4-bit E2M1 codes, one E8M0 scale byte each):
 * ggml's block is the scale byte and 16 bytes holding codes 0-15 in the low nibbles and 16-31 in
 * the high ones; MLX packs the codes in order, two per byte (low nibble first), as uint32 words.
 */
function mxfp4(fd: number, dataStart: number, t: GGUFTensorInfo): { weight: MxArray; scales: MxArray } {
  const raw = readTensor(fd, dataStart, t);
  const blocks = t.bytes / 17;
  const codes = new Uint8Array(blocks * 16);
  const scales = new Uint8Array(blocks);
  for (let block = 0; block < blocks; block++) {
    const p = block * 17;
    const q = p + 1;
    const out = block * 16;
    scales[block] = raw[p]!;
    // Byte k holds codes 2k and 2k + 1: low nibbles of bytes 2k, 2k + 1 (k < 8), else their high ones (of 2k − 16, 2k − 15).
    for (let k = 0; k < 8; k++) codes[out + k] = (raw[q + 2 * k]! & 0xf) | ((raw[q + 2 * k + 1]! & 0xf) << 4);
    for (let k = 0; k < 8; k++) codes[out + 8 + k] = (raw[q + 2 * k]! >> 4) | (raw[q + 2 * k + 1]! & 0xf0);
  }
  const shape = [...t.dims].reverse();
  const inputs = shape.pop()!;
  return {
    weight: mx.keep(mx.scope(() => mx.view(mx.array(codes, [...shape, inputs / 2]), mx.Dtype.uint32))),
    scales: mx.keep(mx.array(scales, [...shape, inputs / 32])),
  };
}

/** A GGUF with the same metadata and only the tensors `keep` says, their data laid out anew. */
function writeSubset(path: string, header: GGUFHeader, keep: (t: GGUFTensorInfo) => boolean, target: string): void {
  const source = openSync(path, "r");
  const out = openSync(target, "w");
  const align = (n: number) => Math.ceil(n / header.alignment) * header.alignment;
  try {
    const prefix = Buffer.alloc(header.tensorTableStart);
    readSync(source, prefix, 0, prefix.length, 0);
    const kept = header.tensors.filter(keep);
    prefix.writeBigUInt64LE(BigInt(kept.length), 8); // after the magic and the version
    const table: Buffer[] = [];
    const offsets: number[] = [];
    let offset = 0;
    for (const t of kept) {
      offsets.push(offset);
      const name = Buffer.from(t.name, "utf8");
      const entry = Buffer.alloc(8 + name.length + 4 + 8 * t.dims.length + 4 + 8);
      let at = entry.writeBigUInt64LE(BigInt(name.length), 0);
      at += name.copy(entry, at);
      at = entry.writeUInt32LE(t.dims.length, at);
      for (const d of t.dims) at = entry.writeBigUInt64LE(BigInt(d), at);
      at = entry.writeUInt32LE(t.typeCode, at);
      entry.writeBigUInt64LE(BigInt(offset), at);
      table.push(entry);
      offset = align(offset + t.bytes);
    }
    const head = Buffer.concat([prefix, ...table]);
    writeSync(out, Buffer.concat([head, Buffer.alloc(align(head.length) - head.length)]));
    const dataStart = align(head.length);
    // Each kept tensor's data at its new offset, copied in pieces.
    const chunk = Buffer.alloc(8 << 20);
    for (const [i, t] of kept.entries()) {
      for (let done = 0; done < t.bytes; ) {
        const n = readSync(
          source,
          chunk,
          0,
          Math.min(chunk.length, t.bytes - done),
          header.dataStart + t.offset + done,
        );
        if (n === 0) throw new Error(`${path} ends inside tensor '${t.name}'`);
        writeSync(out, chunk, 0, n, dataStart + offsets[i]! + done);
        done += n;
      }
    }
    // The padding after the last tensor, so the file ends where its table says.
    const last = kept.at(-1);
    if (last && offsets.at(-1)! + last.bytes < offset) writeSync(out, Buffer.alloc(1), 0, 1, dataStart + offset - 1);
  } finally {
    closeSync(source);
    closeSync(out);
  }
}
