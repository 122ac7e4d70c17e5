// Weight files through MLX's own loaders: safetensors and GGUF (tensors and metadata),
// and safetensors saving.
import { dirname } from "node:path";
import { freeBytes } from "../files";
import { binding, check, cstr, lib, outPtr, packStrings, readOut, type Pointer } from "./ffi";
import { MxArray } from "./array";
import { handles } from "./ops";

/** A GGUF metadata value: scalars become numbers/booleans/strings, lists become arrays. */
export type MetaValue = string | number | boolean | bigint | string[] | number[] | null;

export interface LoadedFile {
  tensors: Map<string, MxArray>;
  metadata: Record<string, MetaValue>;
}

const MetaKind = { Empty: 0, Array: 1, String: 2, Strings: 3 } as const;

function loadBundle(status: number, path: string, what: string): Pointer {
  if (status !== 0) {
    check(status, `${what} ${path}`);
  }
  return readOut();
}

function readBundle(bundle: Pointer, withTypedMeta: boolean): LoadedFile {
  try {
    const tensors = new Map<string, MxArray>();
    const count = lib.mlxs_bundle_array_count(bundle);
    for (let i = 0; i < count; i++) {
      const name = String(lib.mlxs_bundle_array_name(bundle, i));
      check(lib.mlxs_bundle_array(outPtr, bundle, i), "bundle array");
      tensors.set(name, new MxArray(readOut()));
    }
    const metadata: Record<string, MetaValue> = {};
    const metaCount = lib.mlxs_bundle_meta_count(bundle);
    for (let i = 0; i < metaCount; i++) {
      const name = String(lib.mlxs_bundle_meta_name(bundle, i));
      metadata[name] = withTypedMeta ? readMeta(bundle, i) : String(lib.mlxs_bundle_meta_string(bundle, i));
    }
    return { tensors, metadata };
  } finally {
    lib.mlxs_bundle_free(bundle);
  }
}

function readMeta(bundle: Pointer, i: number): MetaValue {
  switch (lib.mlxs_bundle_meta_kind(bundle, i)) {
    case MetaKind.String:
      return String(lib.mlxs_bundle_meta_string(bundle, i));
    case MetaKind.Strings: {
      const size = new BigUint64Array(1);
      const address = lib.mlxs_bundle_meta_strings(bundle, i, size);
      const n = Number(size[0]);
      if (!address || n === 0) return [];
      const text = new TextDecoder().decode(binding.readBytes(address, n));
      return text.slice(0, -1).split("\0");
    }
    case MetaKind.Array: {
      check(lib.mlxs_bundle_meta_array(outPtr, bundle, i), "bundle metadata");
      const a = new MxArray(readOut());
      try {
        const values = a.dtypeName === "bool" ? a.toArray().map(Boolean) : a.toArray();
        return a.ndim === 0 ? (values[0] as number | boolean) : (values as number[]);
      } finally {
        a.free();
      }
    }
    default:
      return null;
  }
}

export function loadSafetensors(path: string): LoadedFile {
  return readBundle(loadBundle(lib.mlxs_load_safetensors(outPtr, cstr(path)), path, "cannot load safetensors"), false);
}

export function loadGGUF(path: string): LoadedFile {
  return readBundle(loadBundle(lib.mlxs_load_gguf(outPtr, cstr(path)), path, "cannot load GGUF"), true);
}

/** Where a GGUF tensor's blocks are: its file, the bytes' offset and length, its type and MLX shape. */
export interface GGUFBlocks {
  path: string;
  offset: number;
  bytes: number;
  type: string;
  shape: number[];
}

/**
 * A GGUF tensor of a type kept quantized as MLX's affine layout (Q4_K, Q5_0, Q5_1, Q5_K), read
 * from its file: uint32 codes (Q4_K's at 4 bits, the 5-bit types' at 8) and float32 scales and
 * biases for each group of 32.
 */
export function readGGUFAffine(t: GGUFBlocks): { weight: MxArray; scales: MxArray; biases: MxArray } {
  check(
    lib.mlxs_gguf_read_affine(outPtr, ...blocksArgs(t)),
    `cannot read ${t.type} tensor at byte ${t.offset} of ${t.path}`,
  );
  const [weight, scales, biases] = [0, 1, 2].map((slot) => new MxArray(readOut(slot)));
  return { weight: weight!, scales: scales!, biases: biases! };
}

/** A GGUF tensor of a type read as values (Q3_K, IQ4_NL, IQ4_XS), as float32. */
export function readGGUFDequantized(t: GGUFBlocks): MxArray {
  check(
    lib.mlxs_gguf_read_dequantized(outPtr, ...blocksArgs(t)),
    `cannot read ${t.type} tensor at byte ${t.offset} of ${t.path}`,
  );
  return new MxArray(readOut());
}

const blocksArgs = (t: GGUFBlocks) =>
  [cstr(t.path), BigInt(t.offset), BigInt(t.bytes), cstr(t.type), Int32Array.from(t.shape), t.shape.length] as const;

export function saveSafetensors(
  path: string,
  tensors: Map<string, MxArray>,
  metadata: Record<string, string> = {},
): void {
  const names = [...tensors.keys()];
  const arrays = names.map((n) => tensors.get(n)!);
  const keys = Object.keys(metadata);
  const status = lib.mlxs_save_safetensors(
    cstr(path),
    packStrings(names),
    handles(arrays),
    arrays.length,
    packStrings(keys),
    packStrings(keys.map((k) => metadata[k]!)),
    keys.length,
  );
  // MLX says only that a write failed ("Unable to write N bytes"), not why: where the disk has no
  // room left for the tensors, it says so as Node's writes do (ENOSPC), which callers explain.
  if (status !== 0 && freeBytes(dirname(path)) < arrays.reduce((n, a) => n + a.nbytes, 0))
    throw Object.assign(new Error(`ENOSPC: no space left on device, write '${path}'`), { code: "ENOSPC" });
  check(status, `cannot save ${path}`);
}
