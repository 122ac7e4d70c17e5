// Loads libmlx_shim (our C ABI over MLX, built from ffi/) and declares its symbols for bun:ffi.
// Every call into MLX goes through `lib`; the rest of src/mlx wraps it in typed functions.
import { dlopen, FFIType, CString, read, type Pointer } from "bun:ffi";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

const { i32, u64, u64_fast, f32, f64, ptr: p, cstring, void: none } = FFIType;

const symbols = {
  mlxs_last_error: { args: [], returns: cstring },
  mlxs_out_slots: { args: [], returns: p },
  mlxs_version: { args: [], returns: cstring },
  mlxs_set_default_device: { args: [i32], returns: i32 },
  mlxs_default_device: { args: [], returns: i32 },
  mlxs_gpu_available: { args: [], returns: i32 },
  mlxs_new_stream: { args: [p], returns: i32 },
  mlxs_default_stream: { args: [], returns: i32 },
  mlxs_set_default_stream: { args: [i32], returns: i32 },

  mlxs_array_free: { args: [p], returns: none },
  mlxs_array_retain: { args: [p, p], returns: i32 },
  mlxs_array_from_data: { args: [p, p, p, i32, i32], returns: i32 },
  mlxs_array_from_scalar: { args: [p, f64, i32], returns: i32 },
  mlxs_array_ndim: { args: [p], returns: i32 },
  mlxs_array_shape: { args: [p, p], returns: i32 },
  mlxs_array_dtype: { args: [p], returns: i32 },
  mlxs_array_size: { args: [p], returns: u64_fast },
  mlxs_array_nbytes: { args: [p], returns: u64_fast },
  mlxs_array_to_host: { args: [p, p, u64], returns: i32 },
  mlxs_array_item: { args: [p, p], returns: i32 },
  mlxs_eval: { args: [p, i32], returns: i32 },
  mlxs_async_eval: { args: [p, i32], returns: i32 },

  mlxs_unary: { args: [p, i32, p], returns: i32 },
  mlxs_binary: { args: [p, i32, p, p], returns: i32 },
  mlxs_binary_scalar: { args: [p, i32, p, f64, i32], returns: i32 },
  mlxs_where: { args: [p, p, p, p], returns: i32 },
  mlxs_astype: { args: [p, p, i32], returns: i32 },
  mlxs_full: { args: [p, p, i32, f64, i32], returns: i32 },
  mlxs_arange: { args: [p, f64, f64, f64, i32], returns: i32 },

  mlxs_reduce: { args: [p, i32, p, p, i32, i32], returns: i32 },
  mlxs_softmax: { args: [p, p, p, i32, i32], returns: i32 },
  mlxs_cumsum: { args: [p, p, i32, i32, i32], returns: i32 },
  mlxs_sort: { args: [p, p, i32], returns: i32 },
  mlxs_argsort: { args: [p, p, i32], returns: i32 },
  mlxs_topk: { args: [p, p, i32, i32], returns: i32 },
  mlxs_argpartition: { args: [p, p, i32, i32], returns: i32 },

  mlxs_reshape: { args: [p, p, p, i32], returns: i32 },
  mlxs_transpose: { args: [p, p, p, i32], returns: i32 },
  mlxs_expand_dims: { args: [p, p, p, i32], returns: i32 },
  mlxs_squeeze: { args: [p, p, p, i32], returns: i32 },
  mlxs_broadcast_to: { args: [p, p, p, i32], returns: i32 },
  mlxs_concatenate: { args: [p, p, i32, i32], returns: i32 },
  mlxs_stack: { args: [p, p, i32, i32], returns: i32 },
  mlxs_repeat: { args: [p, p, i32, i32], returns: i32 },

  mlxs_slice: { args: [p, p, p, p, p, i32], returns: i32 },
  mlxs_slice_update: { args: [p, p, p, p, p, p, i32], returns: i32 },
  mlxs_take: { args: [p, p, p, i32], returns: i32 },
  mlxs_take_along_axis: { args: [p, p, p, i32], returns: i32 },
  mlxs_put_along_axis: { args: [p, p, p, p, i32], returns: i32 },

  mlxs_quantized_matmul: { args: [p, p, p, p, p, i32, i32, i32, cstring], returns: i32 },
  mlxs_use_cpu_kernels: { args: [i32], returns: i32 },
  mlxs_cpu_kernels_describe: { args: [], returns: cstring },
  mlxs_quantize: { args: [p, p, p, p, i32, i32, cstring], returns: i32 },
  mlxs_dequantize: { args: [p, p, p, p, i32, i32, cstring, i32], returns: i32 },

  mlxs_rms_norm: { args: [p, p, p, f32], returns: i32 },
  mlxs_layer_norm: { args: [p, p, p, p, f32], returns: i32 },
  mlxs_rope: { args: [p, p, i32, i32, f32, f32, i32, p, p], returns: i32 },
  mlxs_sdpa: { args: [p, p, p, p, f32, cstring, p, p], returns: i32 },
  mlxs_silu_mul: { args: [p, p, p], returns: i32 },

  mlxs_random_seed: { args: [u64], returns: i32 },
  mlxs_random_key: { args: [p, u64], returns: i32 },
  mlxs_random_split: { args: [p, p, p], returns: i32 },
  mlxs_random_categorical: { args: [p, p, i32, p], returns: i32 },
  mlxs_random_uniform: { args: [p, p, i32, i32, p], returns: i32 },
  mlxs_random_normal: { args: [p, p, i32, i32, p], returns: i32 },

  mlxs_load_safetensors: { args: [p, cstring], returns: i32 },
  mlxs_load_gguf: { args: [p, cstring], returns: i32 },
  mlxs_bundle_free: { args: [p], returns: none },
  mlxs_bundle_array_count: { args: [p], returns: i32 },
  mlxs_bundle_array_name: { args: [p, i32], returns: cstring },
  mlxs_bundle_array: { args: [p, p, i32], returns: i32 },
  mlxs_bundle_meta_count: { args: [p], returns: i32 },
  mlxs_bundle_meta_name: { args: [p, i32], returns: cstring },
  mlxs_bundle_meta_kind: { args: [p, i32], returns: i32 },
  mlxs_bundle_meta_string: { args: [p, i32], returns: cstring },
  mlxs_bundle_meta_array: { args: [p, p, i32], returns: i32 },
  mlxs_bundle_meta_strings: { args: [p, i32, p], returns: p },
  mlxs_save_safetensors: { args: [cstring, p, p, i32, p, p, i32], returns: i32 },

  mlxs_active_memory: { args: [], returns: u64_fast },
  mlxs_peak_memory: { args: [], returns: u64_fast },
  mlxs_cache_memory: { args: [], returns: u64_fast },
  mlxs_reset_peak_memory: { args: [], returns: none },
  mlxs_set_memory_limit: { args: [u64], returns: u64_fast },
  mlxs_set_cache_limit: { args: [u64], returns: u64_fast },
  mlxs_clear_cache: { args: [], returns: none },
  mlxs_gather_mm: { args: [p, p, p, p, p, i32], returns: i32 },
  mlxs_gather_qmm: { args: [p, p, p, p, p, p, p, i32, i32, i32, cstring, i32], returns: i32 },
} as const;

const libraryName = process.platform === "darwin" ? "libmlx_shim.dylib" : "libmlx_shim.so";

/** Where the shim may live, in the order we look: explicit, beside the executable, the project's .mlx/. */
export function shimCandidates(): string[] {
  const candidates: string[] = [];
  if (process.env.MLX_SHIM_PATH) candidates.push(resolve(process.env.MLX_SHIM_PATH));
  const exeDir = dirname(process.execPath);
  candidates.push(join(exeDir, libraryName), join(exeDir, "..", ".mlx", libraryName));
  // When running from source (not the compiled executable), the repo's own .mlx/.
  if (!import.meta.dir.startsWith("/$bunfs")) candidates.push(join(import.meta.dir, "..", "..", ".mlx", libraryName));
  candidates.push(join(process.cwd(), ".mlx", libraryName));
  return [...new Set(candidates)];
}

function openShim() {
  const tried = shimCandidates();
  const found = tried.find((path) => existsSync(path));
  if (!found) {
    throw new Error(
      `cannot find ${libraryName} (tried: ${tried.join(", ")}); run scripts/setup.sh, or set MLX_SHIM_PATH to the built library`,
    );
  }
  try {
    return dlopen(found, symbols);
  } catch (error) {
    throw new Error(`cannot load ${found}: ${(error as Error).message}; re-run scripts/setup.sh to rebuild it`);
  }
}

export const lib = openShim().symbols;

/** Raised for any failure reported by MLX; carries MLX's own message. */
export class MlxError extends Error {
  override name = "MlxError";
}

export function lastError(): string {
  return String(lib.mlxs_last_error());
}

/** Throws the shim's last error when a call returned a non-zero status. */
export function check(status: number, what: string): void {
  if (status !== 0) throw new MlxError(`${what}: ${lastError()}`);
}

// Reusable slots for the handles the shim writes back. MLX calls are made from one thread
// only, so one scratch area is safe and saves an allocation per op. It lives in native memory:
// a small typed array's storage can be moved by the JS engine, and a cached pointer to it
// would then let native writes corrupt the JS heap.
export const outPtr = lib.mlxs_out_slots() as Pointer;
export const outPtr2 = (outPtr + 8) as Pointer;
export const outPtr3 = (outPtr + 16) as Pointer;

export function readOut(slot = 0): Pointer {
  return read.ptr(outPtr, slot * 8) as Pointer;
}

export function cstringAt(address: Pointer | null): string {
  return address ? new CString(address).toString() : "";
}

/** Encodes strings as NUL-terminated entries laid end to end, the shim's string-list form. */
export function packStrings(values: string[]): Buffer {
  return Buffer.from(values.map((v) => `${v}\0`).join(""), "utf8");
}

/** C string argument (bun:ffi expects a NUL-terminated buffer). */
export function cstr(value: string): Buffer {
  return Buffer.from(`${value}\0`, "utf8");
}
