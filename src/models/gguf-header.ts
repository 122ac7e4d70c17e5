// A bounds-checked walk over a GGUF file's header and tensor table, done before MLX reads
// the file: MLX's GGUF reader trusts the file, and a truncated or corrupt one can crash the
// process. It also tells which tensor types the file holds.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

/** ggml tensor types: [name, elements per block, bytes per block]. */
const tensorTypes: Record<number, [string, number, number]> = {
  0: ["F32", 1, 4],
  1: ["F16", 1, 2],
  2: ["Q4_0", 32, 18],
  3: ["Q4_1", 32, 20],
  6: ["Q5_0", 32, 22],
  7: ["Q5_1", 32, 24],
  8: ["Q8_0", 32, 34],
  9: ["Q8_1", 32, 36],
  10: ["Q2_K", 256, 84],
  11: ["Q3_K", 256, 110],
  12: ["Q4_K", 256, 144],
  13: ["Q5_K", 256, 176],
  14: ["Q6_K", 256, 210],
  15: ["Q8_K", 256, 292],
  16: ["IQ2_XXS", 256, 66],
  17: ["IQ2_XS", 256, 74],
  18: ["IQ3_XXS", 256, 98],
  19: ["IQ1_S", 256, 50],
  20: ["IQ4_NL", 32, 18],
  21: ["IQ3_S", 256, 110],
  22: ["IQ2_S", 256, 82],
  23: ["IQ4_XS", 256, 136],
  24: ["I8", 1, 1],
  25: ["I16", 1, 2],
  26: ["I32", 1, 4],
  27: ["I64", 1, 8],
  28: ["F64", 1, 8],
  29: ["IQ1_M", 256, 56],
  30: ["BF16", 1, 2],
  // Q4_0 and IQ4_NL repacked for ARM, in files of late 2024 (llama.cpp no longer reads them either).
  31: ["Q4_0_4_4", 32, 18],
  32: ["Q4_0_4_8", 32, 18],
  33: ["Q4_0_8_8", 32, 18],
  34: ["TQ1_0", 256, 54],
  35: ["TQ2_0", 256, 66],
  36: ["IQ4_NL_4_4", 32, 18],
  37: ["IQ4_NL_4_8", 32, 18],
  38: ["IQ4_NL_8_8", 32, 18],
  39: ["MXFP4", 32, 17],
  40: ["NVFP4", 64, 36],
  41: ["Q1_0", 128, 18],
};

/** Types MLX loads as they are (or keeps quantized); every other type it dequantizes. */
export const nativeTensorTypes = new Set(["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"]);

// GGUF metadata value types the header walk looks out for (see readGGUFHeader).
const UINT32 = 4;
const ARRAY = 9;
const STRING = 8;
const FLOAT64 = 12;

// Sizes of GGUF metadata value types (8 = string, 9 = array are variable).
const scalarSizes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

export interface GGUFTensorInfo {
  name: string;
  /** ggml's order: the innermost dimension first. */
  dims: number[];
  type: string;
  typeCode: number;
  /** Offset of its data from the start of the data section. */
  offset: number;
  bytes: number;
}

export interface GGUFHeader {
  version: number;
  tensorCount: number;
  /** Count of tensors per ggml type name. */
  tensorTypes: Map<string, number>;
  tensors: GGUFTensorInfo[];
  alignment: number;
  /** Where the tensor table starts (the header and metadata come before it). */
  tensorTableStart: number;
  /** Where the tensors' data starts. */
  dataStart: number;
  /** A file of a model split by llama.cpp's gguf-split: which one (from 0) of how many. */
  split?: { index: number; count: number };
  /** The metadata's single values (numbers, strings, booleans), and each array's length. */
  metadata: Map<string, GGUFValue>;
  /** The arrays of strings asked for by key (readGGUFHeader's `stringArrays`), read whole. */
  stringArrays: Map<string, string[]>;
}

export type GGUFValue = number | string | boolean | { arrayLength: number };

class GGUFFormatError extends Error {
  override name = "GGUFFormatError";
}

/** Sequential reads from a file descriptor through a 1 MiB window, refusing to read past the end of the file. */
class Cursor {
  position = 0;
  #window = Buffer.alloc(1 << 20);
  #windowStart = 0;
  #windowEnd = 0;

  constructor(
    private readonly fd: number,
    readonly size: number,
  ) {}

  bytes(n: number): Buffer {
    if (n < 0 || this.position + n > this.size)
      throw new GGUFFormatError(`truncated: needs ${n} bytes at offset ${this.position}, file has ${this.size}`);
    if (this.position < this.#windowStart || this.position + n > this.#windowEnd) this.#fill(n);
    const at = this.position - this.#windowStart;
    this.position += n;
    return this.#window.subarray(at, at + n);
  }

  #fill(n: number): void {
    if (n > this.#window.length) this.#window = Buffer.alloc(n);
    this.#windowStart = this.position;
    this.#windowEnd = this.position + readSync(this.fd, this.#window, 0, this.#window.length, this.position);
  }

  skip(n: number): void {
    if (n < 0 || this.position + n > this.size)
      throw new GGUFFormatError(`truncated: a value at offset ${this.position} runs past the end of the file`);
    this.position += n;
  }

  u32 = () => this.bytes(4).readUInt32LE(0);
  /** The next uint32, left to read again. */
  peekU32 = () => {
    const value = this.u32();
    this.position -= 4;
    return value;
  };
  u64 = () => Number(this.bytes(8).readBigUInt64LE(0));
  string = () => {
    const at = this.position;
    const length = this.u64();
    // A length past the end of the file is not the file being short by that much: its bytes are not a length.
    if (length > this.size - this.position)
      throw new GGUFFormatError(
        `invalid GGUF header: a string at offset ${at} claims ${length} bytes, more than the file's ${this.size}`,
      );
    return this.bytes(length).toString("utf8");
  };
}

// The fewest bytes a tensor table entry (name length, rank, type, offset) and a metadata
// entry (key length, type, a one-byte value) take: counts that cannot fit are not counts.
const MIN_TENSOR_ENTRY_BYTES = 24;
const MIN_METADATA_ENTRY_BYTES = 13;

/** A metadata entry's value: read where it is a single value, its length where it is an array. */
function readValue(c: Cursor, type: number): GGUFValue {
  if (type === 8) return c.string();
  if (type === 9) return { arrayLength: skipArray(c) };
  const size = scalarSizes[type];
  if (size === undefined) throw new GGUFFormatError(`unknown metadata value type ${type} at offset ${c.position}`);
  const b = c.bytes(size);
  switch (type) {
    case 0:
      return b.readUInt8(0);
    case 1:
      return b.readInt8(0);
    case 2:
      return b.readUInt16LE(0);
    case 3:
      return b.readInt16LE(0);
    case 4:
      return b.readUInt32LE(0);
    case 5:
      return b.readInt32LE(0);
    case 6:
      return b.readFloatLE(0);
    case 7:
      return b.readUInt8(0) !== 0;
    case 10:
      return Number(b.readBigUInt64LE(0));
    case 11:
      return Number(b.readBigInt64LE(0));
    default:
      return b.readDoubleLE(0);
  }
}

/** An array's element: a number, a boolean or a string (GGUF has no arrays of arrays). */
function skipElement(c: Cursor, type: number): void {
  if (type in scalarSizes) return c.skip(scalarSizes[type]!);
  if (type === 8) return c.skip(c.u64());
  if (type === 9) throw new GGUFFormatError(`an array of arrays at offset ${c.position} (not read by this tool)`);
  throw new GGUFFormatError(`unknown metadata value type ${type} at offset ${c.position}`);
}

/** An array of strings, read whole. */
function readStringArray(c: Cursor): string[] {
  c.u32(); // the element type, a string's
  return Array.from({ length: c.u64() }, () => c.string());
}

/** Steps over an array value, returning its length. */
function skipArray(c: Cursor): number {
  const elementType = c.u32();
  const count = c.u64();
  if (elementType in scalarSizes) c.skip(count * scalarSizes[elementType]!);
  else for (let i = 0; i < count; i++) skipElement(c, elementType);
  return count;
}

/** The parameters a GGUF's tensors hold: their elements, summed. */
export const ggufParameterCount = (tensors: GGUFTensorInfo[]) =>
  tensors.reduce((n, t) => n + t.dims.reduce((a, b) => a * b, 1), 0);

const isSupportedVersion = (version: number) => version === 2 || version === 3;
const isPowerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0;

/**
 * Reads the header, checking that every tensor lies inside the file; throws a clear error otherwise.
 * Arrays are stepped over (their lengths kept) but for the arrays of strings `stringArrays` names
 * (a vocabulary: tokenizer.ggml.tokens), which are read whole.
 */
export function readGGUFHeader(path: string, { stringArrays = [] }: { stringArrays?: string[] } = {}): GGUFHeader {
  const fd = openSync(path, "r");
  try {
    const c = new Cursor(fd, fstatSync(fd).size);
    if (c.bytes(4).toString("latin1") !== "GGUF") throw new GGUFFormatError("not a GGUF file (bad magic)");
    const versionBytes = c.bytes(4);
    const version = versionBytes.readUInt32LE(0);
    // gguf-py writes big-endian files for s390x; llama.cpp names them so rather than as a version.
    if (isSupportedVersion(versionBytes.readUInt32BE(0)))
      throw new GGUFFormatError(
        "a big-endian GGUF, and only little-endian ones are read (gguf-py's gguf-convert-endian FILE little converts it)",
      );
    if (!isSupportedVersion(version))
      throw new GGUFFormatError(`unsupported GGUF version ${version} (supported: 2, 3)`);
    const tensorCount = c.u64();
    const kvCount = c.u64();
    if (tensorCount * MIN_TENSOR_ENTRY_BYTES + kvCount * MIN_METADATA_ENTRY_BYTES > c.size - c.position)
      throw new GGUFFormatError(
        `invalid GGUF header: ${tensorCount} tensors and ${kvCount} metadata entries cannot fit in a file of ${c.size} bytes`,
      );
    const metadata = new Map<string, GGUFValue>();
    const strings = new Map<string, string[]>();
    for (let i = 0; i < kvCount; i++) {
      const key = c.string();
      // MLX's reader keeps one of the two and llama.cpp refuses the file: which value counts is not the file's to say.
      if (metadata.has(key)) throw new GGUFFormatError(`invalid GGUF header: metadata key '${key}' appears twice`);
      const type = c.u32();
      // MLX's reader takes the alignment only as a uint32 (llama.cpp refuses another type): of another, it
      // would read every tensor at offsets of 32 where this header places them at the file's.
      if (key === "general.alignment" && type !== UINT32)
        throw new GGUFFormatError(`invalid GGUF header: general.alignment is of value type ${type}, not a uint32 (4)`);
      // MLX's reader misreads a float64 (or an array of them) and what follows it, and the process dies of it.
      if (type === FLOAT64 || (type === ARRAY && c.peekU32() === FLOAT64))
        throw new GGUFFormatError(
          `metadata key '${key}' holds float64 values, which MLX's GGUF reader cannot read (it crashes the process)`,
        );
      if (type === ARRAY && c.peekU32() === STRING && stringArrays.includes(key)) {
        const list = readStringArray(c);
        strings.set(key, list);
        metadata.set(key, { arrayLength: list.length });
      } else metadata.set(key, readValue(c, type));
    }
    const whole = (key: string, fallback: number) => {
      const value = metadata.get(key);
      return typeof value === "number" && Number.isInteger(value) ? value : fallback;
    };
    const alignment = whole("general.alignment", 32);
    // Tensors start at multiples of it: 0 would crash MLX's reader (a division by zero), another non-power of 2 misplace them.
    if (!isPowerOfTwo(alignment))
      throw new GGUFFormatError(`invalid GGUF header: general.alignment is ${alignment}, not a power of 2`);
    const split = { index: whole("split.no", 0), count: whole("split.count", 1) };
    const tensorTableStart = c.position;
    const tensors: GGUFTensorInfo[] = [];
    const types = new Map<string, number>();
    const names = new Set<string>();
    for (let i = 0; i < tensorCount; i++) {
      const name = c.string();
      // As llama.cpp refuses it; MLX's reader fails on it with the tensor's values, not its name.
      if (names.has(name)) throw new GGUFFormatError(`invalid GGUF header: tensor '${name}' appears twice`);
      names.add(name);
      const rank = c.u32();
      if (rank > 8) throw new GGUFFormatError(`tensor '${name}' has ${rank} dimensions`);
      const dims = Array.from({ length: rank }, () => c.u64());
      const elements = dims.reduce((a, b) => a * b, 1);
      const typeCode = c.u32();
      const type = tensorTypes[typeCode];
      if (!type) throw new GGUFFormatError(`tensor '${name}' has unknown ggml type ${typeCode}`);
      const [typeName, blockElements, blockBytes] = type;
      // Per row, as llama.cpp checks it: a block across two rows reads one row's values into the other (or no scales at all).
      const row = dims[0] ?? 1;
      if (row % blockElements !== 0)
        throw new GGUFFormatError(
          `tensor '${name}': its rows of ${row} values are not a whole number of ${typeName} blocks (${blockElements} values each)`,
        );
      tensors.push({
        name,
        dims,
        type: typeName,
        typeCode,
        offset: c.u64(),
        bytes: (elements / blockElements) * blockBytes,
      });
      types.set(typeName, (types.get(typeName) ?? 0) + 1);
    }
    const dataStart = Math.ceil(c.position / alignment) * alignment;
    for (const t of tensors) {
      if (dataStart + t.offset + t.bytes > c.size) {
        throw new GGUFFormatError(
          `truncated: tensor '${t.name}' ends at byte ${dataStart + t.offset + t.bytes}, file has ${c.size}`,
        );
      }
    }
    return {
      version,
      tensorCount,
      tensorTypes: types,
      tensors,
      alignment,
      tensorTableStart,
      dataStart,
      ...(split.count > 1 ? { split } : {}),
      metadata,
      stringArrays: strings,
    };
  } finally {
    closeSync(fd);
  }
}

/**
 * Refuses one file of a split GGUF (llama.cpp's gguf-split): it holds only some of the model's
 * tensors, so loading it alone would fail on the first missing one, as if the file were damaged.
 */
export function refuseSplitGGUF(header: GGUFHeader, path: string): void {
  if (!header.split) return;
  const { index, count } = header.split;
  throw new GGUFFormatError(
    `${path} is part ${index + 1} of a GGUF split into ${count} files; join them into one first (llama.cpp: llama-gguf-split --merge <first part> merged.gguf)`,
  );
}
