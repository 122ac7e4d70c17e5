// Weight files through MLX's own loaders: safetensors and GGUF (tensors and metadata),
// and safetensors saving.
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

/**
 * A GGUF tensor's raw blocks of a type kept quantized as MLX's affine layout (Q4_K, Q5_0, Q5_1,
 * Q5_K): `values` codes of `bits` (Q4_K's 4, packed two a byte as MLX packs them; the 5-bit
 * types' 8), and a scale and a bias for each group of 32.
 */
export function ggufAffineBlocks(
  type: string,
  raw: Uint8Array,
  values: number,
  bits: 4 | 8,
): { codes: Uint8Array; scales: Float32Array; biases: Float32Array } {
  const codes = new Uint8Array((values * bits) / 8);
  const scales = new Float32Array(values / 32);
  const biases = new Float32Array(values / 32);
  check(
    lib.mlxs_gguf_affine_blocks(
      cstr(type),
      nonEmpty(raw),
      BigInt(raw.byteLength),
      nonEmpty(codes),
      nonEmpty(scales),
      nonEmpty(biases),
    ),
    `cannot read ${type} blocks`,
  );
  return { codes, scales, biases };
}

/** A GGUF tensor's raw blocks of a type read as floats (Q3_K, IQ4_NL, IQ4_XS): `values` of them. */
export function ggufDequantizeBlocks(type: string, raw: Uint8Array, values: number): Float32Array {
  const out = new Float32Array(values);
  check(
    lib.mlxs_gguf_dequantize_blocks(cstr(type), nonEmpty(raw), BigInt(raw.byteLength), nonEmpty(out)),
    `cannot read ${type} blocks`,
  );
  return out;
}

/** FFIs refuse an empty buffer as a pointer: one byte stands in (nothing is read from it). */
const nonEmpty = <T extends Uint8Array | Float32Array>(data: T): T | Uint8Array =>
  data.byteLength > 0 ? data : new Uint8Array(4);

export function saveSafetensors(
  path: string,
  tensors: Map<string, MxArray>,
  metadata: Record<string, string> = {},
): void {
  const names = [...tensors.keys()];
  const arrays = names.map((n) => tensors.get(n)!);
  const keys = Object.keys(metadata);
  check(
    lib.mlxs_save_safetensors(
      cstr(path),
      packStrings(names),
      handles(arrays),
      arrays.length,
      packStrings(keys),
      packStrings(keys.map((k) => metadata[k]!)),
      keys.length,
    ),
    `cannot save ${path}`,
  );
}
