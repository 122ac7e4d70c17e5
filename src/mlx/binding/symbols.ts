// The shim's functions (ffi/mlx_shim.h) as the binding sees them: each argument's and result's
// kind, in words both runtimes' FFIs understand. test/ffi-symbols.test.ts checks this table
// against the header, so the two cannot drift.
//   i32, f32, f64: C int, float, double. u64: size_t / uint64_t (a bigint going in).
//   ptr: any pointer: a handle (a number), a typed array or Buffer (its memory), or null.
//   cstring: a NUL-terminated string (a Buffer going in, a string coming back).
export type Kind = "i32" | "u64" | "f32" | "f64" | "ptr" | "cstring" | "void";

export interface Signature {
  args: readonly Kind[];
  returns: Kind;
}

const p = "ptr";
const i32 = "i32";
const u64 = "u64";
const f32 = "f32";
const f64 = "f64";
const cstring = "cstring";
const none = "void";

// mlxs_attention_input's arguments before its cache's (outputs, x, the norm, the q/k/v product,
// the heads, the rotation): mlxs_attention_input_quantized's too.
const attentionInputArgs = [p, p, p, f32, p, p, p, i32, i32, i32, i32, i32, i32, i32, f32, f32, i32, p, p] as const;

export const symbols = {
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
  mlxs_array_size: { args: [p], returns: u64 },
  mlxs_array_nbytes: { args: [p], returns: u64 },
  mlxs_array_to_host: { args: [p, p, u64], returns: i32 },
  mlxs_array_to_host_float32: { args: [p, p, u64], returns: i32 },
  mlxs_array_item: { args: [p, p], returns: i32 },
  mlxs_eval: { args: [p, i32], returns: i32 },
  mlxs_async_eval: { args: [p, i32], returns: i32 },

  mlxs_unary: { args: [p, i32, p], returns: i32 },
  mlxs_binary: { args: [p, i32, p, p], returns: i32 },
  mlxs_binary_scalar: { args: [p, i32, p, f64, i32], returns: i32 },
  mlxs_where: { args: [p, p, p, p], returns: i32 },
  mlxs_astype: { args: [p, p, i32], returns: i32 },
  mlxs_view: { args: [p, p, i32], returns: i32 },
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
  mlxs_kernels_read_half_groups: { args: [i32], returns: i32 },
  mlxs_cpu_kernels_describe: { args: [], returns: cstring },
  mlxs_quantize: { args: [p, p, p, p, i32, i32, cstring], returns: i32 },
  mlxs_dequantize: { args: [p, p, p, p, i32, i32, cstring, i32], returns: i32 },
  mlxs_repack_quantized: { args: [p, p, p, p, p, p, i32, i32], returns: i32 },
  mlxs_unrepack_quantized: { args: [p, p, p, p, p, p], returns: i32 },
  mlxs_take_quantized_rows: { args: [p, p, p, p, p, p, p], returns: i32 },

  mlxs_rms_norm: { args: [p, p, p, f32], returns: i32 },
  mlxs_layer_norm: { args: [p, p, p, p, f32], returns: i32 },
  mlxs_rope: { args: [p, p, i32, i32, f32, f32, i32, p, p], returns: i32 },
  mlxs_sdpa: { args: [p, p, p, p, f32, cstring, p, p], returns: i32 },
  mlxs_quantized_sdpa: { args: [p, p, p, p, p, p, p, p, f32, cstring, p, p, p, i32, i32, i32], returns: i32 },
  mlxs_quantized_cache_write: { args: [p, p, p, p, p, i32, p, p, p, p, p, i32, i32, i32, i32], returns: i32 },
  mlxs_silu_mul: { args: [p, p, p], returns: i32 },
  mlxs_gelu_approx_mul: { args: [p, p, p], returns: i32 },
  mlxs_greedy_tokens: { args: [p, p], returns: i32 },
  mlxs_attention_input: { args: [...attentionInputArgs, p, p, i32, i32], returns: i32 },
  mlxs_attention_input_quantized: {
    args: [...attentionInputArgs, p, p, p, p, p, p, p, i32, i32, i32, i32, i32],
    returns: i32,
  },
  mlxs_attention_output: { args: [p, p, p, p, p, p, i32, i32], returns: i32 },
  mlxs_mlp_block: { args: [p, p, p, f32, p, p, p, i32, i32, p, p, p, i32, i32], returns: i32 },
  mlxs_attention_output_mlp: {
    args: [p, p, p, p, p, p, i32, i32, p, f32, p, p, p, i32, i32, p, p, p, i32, i32],
    returns: i32,
  },

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
  mlxs_gguf_read_affine: { args: [p, cstring, u64, u64, cstring, p, i32], returns: i32 },
  mlxs_gguf_read_dequantized: { args: [p, cstring, u64, u64, cstring, p, i32], returns: i32 },

  mlxs_active_memory: { args: [], returns: u64 },
  mlxs_peak_memory: { args: [], returns: u64 },
  mlxs_cache_memory: { args: [], returns: u64 },
  mlxs_reset_peak_memory: { args: [], returns: none },
  mlxs_set_memory_limit: { args: [u64], returns: u64 },
  mlxs_set_cache_limit: { args: [u64], returns: u64 },
  mlxs_huge_pages: { args: [p, i32, i32], returns: u64 },
  mlxs_huge_pages_wait: { args: [], returns: none },
  mlxs_clear_cache: { args: [], returns: none },
  mlxs_gather_mm: { args: [p, p, p, p, p, i32], returns: i32 },
  mlxs_gather_qmm: { args: [p, p, p, p, p, p, p, i32, i32, i32, cstring, i32], returns: i32 },

  mlxs_distributed_init_start: { args: [cstring, cstring, i32], returns: i32 },
  mlxs_distributed_init_poll: { args: [p, p, p], returns: i32 },
  mlxs_distributed_all_sum: { args: [p, p], returns: i32 },
  mlxs_distributed_send: { args: [p, p, i32], returns: i32 },
  mlxs_distributed_recv: { args: [p, p, i32, i32, i32], returns: i32 },
  mlxs_distributed_send_message: { args: [p, p, u64, i32], returns: i32 },
  mlxs_watchdog_arm: { args: [i32, cstring], returns: i32 },
  mlxs_watchdog_disarm: { args: [], returns: none },
  mlxs_watchdog_neighbours: { args: [i32, cstring], returns: i32 },
  mlxs_watchdog_silence: { args: [p], returns: none },
  mlxs_wait_readable: { args: [i32], returns: i32 },
  mlxs_eval_unless_peer_lost: { args: [p, i32], returns: i32 },
  mlxs_distributed_share_stream: { args: [], returns: i32 },
  mlxs_distributed_read: { args: [p, u64, i32, p], returns: i32 },
} as const satisfies Record<string, Signature>;

export type SymbolName = keyof typeof symbols;

/** A native address (a handle, a slot); 0 is NULL. */
export type Pointer = number;

type Memory = ArrayBufferView;
type In<K extends Kind> = K extends "ptr"
  ? Pointer | Memory | null
  : K extends "u64"
    ? bigint | number
    : K extends "cstring"
      ? Memory
      : number;
type Out<K extends Kind> = K extends "ptr"
  ? Pointer | null
  : K extends "u64"
    ? number | bigint
    : K extends "cstring"
      ? string
      : K extends "void"
        ? void
        : number;
type Args<A extends readonly Kind[]> = { [I in keyof A]: In<A[I]> };

/** The shim's functions, typed from the table. */
export type Shim = {
  [N in SymbolName]: (...args: Args<(typeof symbols)[N]["args"]>) => Out<(typeof symbols)[N]["returns"]>;
};

/** What each runtime provides: the functions, and reads of native memory at an address. */
export interface Binding {
  runtime: "bun" | "node";
  lib: Shim;
  /** The pointer-sized value at `address + offset`. */
  readPointer(address: Pointer, offset: number): Pointer;
  /** A copy of `length` bytes at `address`. */
  readBytes(address: Pointer, length: number): Uint8Array;
}
