// Reading a GGUF's tensors, including types MLX's reader gets wrong or refuses: it fails on the
// whole file for Q5_0 and Q5_1, and reads Q4_K with wrong values (off by up to half the weights'
// range; Q2_K, Q6_K and Q8_0 it reads right). Q3_K, Q5_K, IQ4_NL and IQ4_XS it refuses too,
// a file with MXFP4 tensors it reads as empty, and BF16 it converts to float16 (values past
// ±65504 become infinite, small ones lose their bits): we read BF16 as the bfloat16 it is.
// MLX reads a copy of the file without those tensors, and we read them ourselves: those whose
// values are code · scale + bias in groups of 32 (Q4_K, Q5_0, Q5_1, Q5_K) stay quantized, as
// MLX's affine layout at 4 bits (Q4_K) or their 5-bit codes in 8 (the rest), so they run on the
// quantized kernels at no loss; Q6_K (a scale per 16 values) stays quantized too, as 8-bit codes
// in groups of 16, where our CPU kernels run such products (MLX's ops refuse that group size;
// elsewhere MLX's reader dequantizes it); MXFP4 is MLX's mxfp4 in another byte order and stays
// quantized too; the others we dequantize to float16, as llama.cpp's dequantize_row_* do.
import { accessSync, closeSync, constants, mkdtempSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mx from "../mlx";
import type { LoadedFile, MxArray } from "../mlx";
import { nativeTensorTypes, type GGUFHeader, type GGUFTensorInfo } from "./gguf-header";
import { runSteps, type Steps } from "../event-loop";

/**
 * The types we read ourselves (ffi/src/gguf_blocks.cpp reads their blocks). Kept quantized as
 * MLX's affine layout, value = code · scale + bias in groups of 32 exactly as llama.cpp's
 * dequantize_row_* computes it, at the width given (their 5-bit codes in 8); the others
 * dequantized to floats.
 */
const ourAffineBits: Record<string, 4 | 8> = { Q5_0: 8, Q5_1: 8, Q4_K: 4, Q5_K: 8 };
const ourDequantizedTypes = ["Q3_K", "IQ4_NL", "IQ4_XS"];

/** Types MLX's reader takes (Q2_K and Q6_K it dequantizes right, checked against llama.cpp's gguf-py). */
const mlxReadable = [...nativeTensorTypes, "Q2_K", "Q6_K"];
/** Those left to it: all but BF16, which it converts to float16 and we read ourselves. */
const mlxReads = new Set(mlxReadable.filter((type) => type !== "BF16"));

/** The values a scale covers where our CPU kernels hold a type in groups of 16 (8-bit codes). */
export const HALF_GROUP = 16;

/**
 * Whether tensor t stays quantized as 8-bit codes in groups of 16 (Q6_K's own groups, exactly):
 * a matrix whose product runs on our CPU kernels in that layout on this machine.
 */
export function heldInHalfGroups(t: GGUFTensorInfo): boolean {
  return t.type === "Q6_K" && t.dims.length === 2 && mx.cpuKernelsReadHalfGroups(t.dims[1]!);
}

export const readableTensorTypes = [...mlxReadable, ...Object.keys(ourAffineBits), ...ourDequantizedTypes, "MXFP4"];
/** Types whose tensors come quantized (weight, scales and maybe biases), not as floats. */
export const keptQuantizedTypes = new Set([...nativeTensorTypes, "MXFP4", ...Object.keys(ourAffineBits)]);
/** Kept quantized at 8 bits, wider than the file's codes (Q5_0, Q5_1, Q5_K: MLX's kernels take 4 or 8). */
export const widenedTypes = new Set(
  Object.entries(ourAffineBits)
    .filter(([, bits]) => bits === 8)
    .map(([type]) => type),
);

/** The affine width each type is held at: MLX's own GGUF types, and those we keep quantized. */
const affineBits: Record<string, number> = {
  Q4_0: 4,
  Q4_1: 4,
  Q8_0: 8,
  ...ourAffineBits,
};

/**
 * Bytes a tensor takes once loaded, which is not its size in the file (what a split across
 * processes plans with): the affine types a code of their width per value and a float16 scale
 * and bias per 32, the dequantized ones 16 bits a value, the rest (floats, MXFP4) as stored.
 */
export function loadedBytes(t: GGUFTensorInfo): number {
  const values = t.dims.reduce((a, b) => a * b, 1);
  // A code a byte, and a float32 scale and bias per 16.
  if (heldInHalfGroups(t)) return values + (values / HALF_GROUP) * 8;
  const bits = affineBits[t.type];
  if (bits !== undefined) return (values * bits) / 8 + (values / 32) * 4;
  return keptQuantizedTypes.has(t.type) ? t.bytes : values * 2;
}

/** A GGUF's tensors as loaded, and the group size of those kept quantized in groups other than 32. */
export interface GGUFTensors extends LoadedFile {
  /** By GGUF name without its ".weight". */
  groupSizes: Map<string, number>;
}

/**
 * The file's tensors and metadata, as mx.loadGGUF gives them, whatever their (readable) types;
 * only those `wanted` (by GGUF name) when given: MLX reads every tensor of a GGUF at once.
 * `halfGroups: false` dequantizes Q6_K even where our kernels would hold it in groups of 16
 * (what `mlx convert` writes must be MLX's layout).
 */
export function loadGGUFTensors(
  path: string,
  header: GGUFHeader,
  wanted?: (name: string) => boolean,
  options: { halfGroups?: boolean } = {},
): GGUFTensors {
  return runSteps(loadGGUFTensorSteps(path, header, wanted, options));
}

/** As loadGGUFTensors, pausing (yield) after each tensor it reads itself: see loadModelAsync. */
export function* loadGGUFTensorSteps(
  path: string,
  header: GGUFHeader,
  wanted?: (name: string) => boolean,
  { halfGroups = true }: { halfGroups?: boolean } = {},
): Steps<GGUFTensors> {
  const tensors = wanted ? header.tensors.filter((t) => wanted(t.name)) : header.tensors;
  const unreadable = tensors.find((t) => !readableTensorTypes.includes(t.type));
  if (unreadable)
    throw new Error(
      `tensor '${unreadable.name}' is ${unreadable.type}, a type we cannot read (readable: ${readableTensorTypes.join(", ")})`,
    );
  const inHalfGroups = new Set(tensors.filter((t) => halfGroups && heldInHalfGroups(t)));
  const ours = tensors.filter((t) => !mlxReads.has(t.type) || inHalfGroups.has(t));
  const groupSizes = new Map([...inHalfGroups].map((t) => [t.name.replace(/\.weight$/, ""), HALF_GROUP]));
  // MLX's reader (gguflib) opens the file for writing: one this process may not write (a
  // read-only store, another user's) it reads only as a copy.
  if (ours.length === 0 && tensors.length === header.tensors.length && writable(path))
    return { ...checkedMetadata(header, mx.loadGGUF(path)), groupSizes };
  const dir = mkdtempSync(join(tmpdir(), "mlx-gguf-"));
  let loaded: LoadedFile;
  try {
    const copy = join(dir, "rest.gguf");
    const skip = new Set(ours.map((t) => t.name));
    yield* writeSubset(path, header, (t) => !skip.has(t.name) && tensors.includes(t), copy);
    loaded = checkedMetadata(header, mx.loadGGUF(copy));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  yield;
  const fd = openSync(path, "r");
  try {
    for (const t of ours) {
      const prefix = t.name.replace(/\.weight$/, "");
      if (inHalfGroups.has(t) || t.type in ourAffineBits) {
        // Q6_K's scales stay float32, exactly (a float16 times an int8): float16 would round them.
        const { weight, scales, biases } = inHalfGroups.has(t)
          ? mx.readGGUFAffine(blocksOf(path, header.dataStart, t))
          : affine(path, header.dataStart, t);
        loaded.tensors.set(t.name, weight);
        loaded.tensors.set(`${prefix}.scales`, scales);
        loaded.tensors.set(`${prefix}.biases`, biases);
      } else if (t.type === "MXFP4") {
        const { weight, scales } = mxfp4(fd, header.dataStart, t);
        loaded.tensors.set(t.name, weight);
        loaded.tensors.set(`${prefix}.scales`, scales);
      } else if (t.type === "BF16") loaded.tensors.set(t.name, bfloat16(fd, header.dataStart, t));
      else loaded.tensors.set(t.name, dequantize(path, header.dataStart, t));
      yield;
    }
  } finally {
    closeSync(fd);
  }
  return { ...loaded, groupSizes };
}

/** Whether this process may open `path` for writing (a read-only mount or file, another user's, says no). */
function writable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * `loaded`, once its string lists are found as long as the header counts them: MLX hands them
 * over joined by NUL bytes, so a string holding one (a token "a\0b") splits in two and shifts
 * every id after it.
 */
function checkedMetadata(header: GGUFHeader, loaded: LoadedFile): LoadedFile {
  for (const [key, value] of header.metadata) {
    const read = loaded.metadata[key];
    if (typeof value !== "object" || !Array.isArray(read) || read.length === value.arrayLength) continue;
    for (const t of loaded.tensors.values()) t.free();
    throw new Error(
      `metadata '${key}' holds a string with a NUL byte, which MLX's GGUF reader splits in two (${value.arrayLength} strings read as ${read.length})`,
    );
  }
  return loaded;
}

/** A tensor of a type in ourAffineBits as MLX's affine layout: codes packed into uint32 words along K, float16 scales and biases. */
function affine(
  path: string,
  dataStart: number,
  t: GGUFTensorInfo,
): { weight: MxArray; scales: MxArray; biases: MxArray } {
  const { weight, scales, biases } = mx.readGGUFAffine(blocksOf(path, dataStart, t));
  const half = (values: MxArray) => mx.keep(mx.scope(() => mx.astype(values, mx.Dtype.float16)));
  try {
    return { weight, scales: half(scales), biases: half(biases) };
  } finally {
    scales.free();
    biases.free();
  }
}

function dequantize(path: string, dataStart: number, t: GGUFTensorInfo): MxArray {
  const values = mx.readGGUFDequantized(blocksOf(path, dataStart, t));
  try {
    return mx.keep(mx.scope(() => mx.astype(values, mx.Dtype.float16)));
  } finally {
    values.free();
  }
}

/** Where tensor t's blocks are in the file, and its values' shape in MLX's order. */
const blocksOf = (path: string, dataStart: number, t: GGUFTensorInfo): mx.GGUFBlocks => ({
  path,
  offset: dataStart + t.offset,
  bytes: t.bytes,
  type: t.type,
  shape: [...t.dims].reverse(),
});

function readTensor(fd: number, dataStart: number, t: GGUFTensorInfo): Buffer {
  const raw = Buffer.alloc(t.bytes);
  // In pieces: one read returns at most 2 GiB (a BF16 embedding can hold more).
  for (let done = 0; done < t.bytes; ) {
    const n = readSync(fd, raw, done, Math.min(t.bytes - done, 1 << 30), dataStart + t.offset + done);
    if (n === 0) throw new Error(`the file ends inside tensor '${t.name}'`);
    done += n;
  }
  return raw;
}

/** A BF16 tensor as bfloat16, its bits as they are. */
function bfloat16(fd: number, dataStart: number, t: GGUFTensorInfo): MxArray {
  const raw = readTensor(fd, dataStart, t);
  const bits = new Uint16Array(raw.buffer, raw.byteOffset, t.bytes / 2);
  return mx.keep(mx.scope(() => mx.view(mx.array(bits, [...t.dims].reverse()), mx.Dtype.bfloat16)));
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
function* writeSubset(
  path: string,
  header: GGUFHeader,
  keep: (t: GGUFTensorInfo) => boolean,
  target: string,
): Steps<void> {
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
        yield;
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
