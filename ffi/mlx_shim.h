// A thin C ABI over MLX's C++ API, loaded by the TypeScript engine through bun:ffi.
//
// Conventions (every function follows them, so the TypeScript side can be generic):
// - Arrays are opaque handles (`mlxs_array*`), each owning one reference to an MLX array.
//   Free every handle with mlxs_array_free; freeing the last reference frees the buffer,
//   which is what lets slice_update work in place on a KV cache.
// - Functions return an int status: 0 on success, non-zero on failure. On failure,
//   mlxs_last_error() returns a message for the calling thread. No C++ exception ever
//   crosses this boundary.
// - Results are written through `out` pointers, which come first in the argument list.
// - Optional arrays are passed as NULL. Integer lists (shapes, axes) are (pointer, count).
//   Lists of strings are one buffer of NUL-terminated strings laid end to end.
#pragma once

#include <stddef.h>
#include <stdint.h>

#define MLXS_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mlxs_array mlxs_array;
typedef struct mlxs_bundle mlxs_bundle;

// Dtype codes: the order of mlx::core::Dtype::Val.
enum {
  MLXS_BOOL = 0, MLXS_UINT8, MLXS_UINT16, MLXS_UINT32, MLXS_UINT64,
  MLXS_INT8, MLXS_INT16, MLXS_INT32, MLXS_INT64,
  MLXS_FLOAT16, MLXS_FLOAT32, MLXS_FLOAT64, MLXS_BFLOAT16, MLXS_COMPLEX64
};

enum mlxs_unary_op {
  MLXS_ABS = 0, MLXS_NEGATIVE, MLXS_EXP, MLXS_LOG, MLXS_SQRT, MLXS_RSQRT,
  MLXS_SIGMOID, MLXS_TANH, MLXS_SIN, MLXS_COS, MLXS_FLOOR, MLXS_CEIL, MLXS_ROUND,
  MLXS_LOGICAL_NOT, MLXS_STOP_GRADIENT, MLXS_COPY, MLXS_SQUARE, MLXS_ERF, MLXS_LOG1P,
  MLXS_CONTIGUOUS
};

enum mlxs_binary_op {
  MLXS_ADD = 0, MLXS_SUBTRACT, MLXS_MULTIPLY, MLXS_DIVIDE, MLXS_MAXIMUM, MLXS_MINIMUM,
  MLXS_POWER, MLXS_EQUAL, MLXS_NOT_EQUAL, MLXS_LESS, MLXS_LESS_EQUAL, MLXS_GREATER,
  MLXS_GREATER_EQUAL, MLXS_LOGICAL_AND, MLXS_LOGICAL_OR, MLXS_REMAINDER,
  MLXS_FLOOR_DIVIDE, MLXS_MATMUL
};

enum mlxs_reduce_op {
  MLXS_SUM = 0, MLXS_MEAN, MLXS_MAX, MLXS_MIN, MLXS_PROD, MLXS_LOGSUMEXP,
  MLXS_ARGMAX, MLXS_ARGMIN, MLXS_ALL, MLXS_ANY
};

// ---- errors, version, device ----
MLXS_API const char* mlxs_last_error(void);
// Four result slots in native memory for the caller to pass as `out` pointers and read back:
// memory a garbage collector never moves.
MLXS_API void** mlxs_out_slots(void);
MLXS_API const char* mlxs_version(void);
// 0 = cpu, 1 = gpu
MLXS_API int mlxs_set_default_device(int kind);
MLXS_API int mlxs_default_device(void);

// Streams on the default device, by index: a new one (its index in *out), the current default
// (-1 on error), and making one the default for the ops built after. On the CPU each stream
// runs on its own thread, so independent work on two streams uses two cores.
MLXS_API int mlxs_new_stream(int* out);
MLXS_API int mlxs_default_stream(void);
MLXS_API int mlxs_set_default_stream(int index);
MLXS_API int mlxs_gpu_available(void);

// ---- array lifetime and host transfer ----
MLXS_API void mlxs_array_free(mlxs_array* a);
MLXS_API int mlxs_array_retain(mlxs_array** out, const mlxs_array* a);
MLXS_API int mlxs_array_from_data(mlxs_array** out, const void* data, const int32_t* shape, int ndim, int dtype);
MLXS_API int mlxs_array_from_scalar(mlxs_array** out, double value, int dtype);
MLXS_API int mlxs_array_ndim(const mlxs_array* a);
MLXS_API int mlxs_array_shape(const mlxs_array* a, int32_t* shape_out);
MLXS_API int mlxs_array_dtype(const mlxs_array* a);
MLXS_API size_t mlxs_array_size(const mlxs_array* a);
MLXS_API size_t mlxs_array_nbytes(const mlxs_array* a);
// Evaluates `a` and copies its elements, row-major, into `dst` (which holds `nbytes`).
MLXS_API int mlxs_array_to_host(const mlxs_array* a, void* dst, size_t nbytes);
// Evaluates a float array and copies its elements, row-major and widened to float32, into `dst`
// (which holds `count` floats).
MLXS_API int mlxs_array_to_host_float32(const mlxs_array* a, float* dst, size_t count);
// Evaluates a one-element array and returns it as a double.
MLXS_API int mlxs_array_item(const mlxs_array* a, double* out);

MLXS_API int mlxs_eval(mlxs_array* const* arrays, int n);
MLXS_API int mlxs_async_eval(mlxs_array* const* arrays, int n);

// ---- element-wise ----
MLXS_API int mlxs_unary(mlxs_array** out, int op, const mlxs_array* a);
MLXS_API int mlxs_binary(mlxs_array** out, int op, const mlxs_array* a, const mlxs_array* b);
// `a op s` (or `s op a` when scalar_first): a float scalar takes a's dtype when a is
// floating point, so a float16 tensor times 0.5 stays float16, as in MLX's Python API.
MLXS_API int mlxs_binary_scalar(mlxs_array** out, int op, const mlxs_array* a, double s, int scalar_first);
MLXS_API int mlxs_where(mlxs_array** out, const mlxs_array* cond, const mlxs_array* x, const mlxs_array* y);
MLXS_API int mlxs_astype(mlxs_array** out, const mlxs_array* a, int dtype);
// The same bytes read as another dtype (the last axis scales by the ratio of the item sizes).
MLXS_API int mlxs_view(mlxs_array** out, const mlxs_array* a, int dtype);

// ---- construction ----
MLXS_API int mlxs_full(mlxs_array** out, const int32_t* shape, int ndim, double value, int dtype);
MLXS_API int mlxs_arange(mlxs_array** out, double start, double stop, double step, int dtype);

// ---- reductions and scans ----
MLXS_API int mlxs_reduce(mlxs_array** out, int op, const mlxs_array* a, const int32_t* axes, int naxes, int keepdims);
MLXS_API int mlxs_softmax(mlxs_array** out, const mlxs_array* a, const int32_t* axes, int naxes, int precise);
MLXS_API int mlxs_cumsum(mlxs_array** out, const mlxs_array* a, int axis, int reverse, int inclusive);
MLXS_API int mlxs_sort(mlxs_array** out, const mlxs_array* a, int axis);
MLXS_API int mlxs_argsort(mlxs_array** out, const mlxs_array* a, int axis);
MLXS_API int mlxs_topk(mlxs_array** out, const mlxs_array* a, int k, int axis);
MLXS_API int mlxs_argpartition(mlxs_array** out, const mlxs_array* a, int kth, int axis);

// ---- shape ----
MLXS_API int mlxs_reshape(mlxs_array** out, const mlxs_array* a, const int32_t* shape, int ndim);
MLXS_API int mlxs_transpose(mlxs_array** out, const mlxs_array* a, const int32_t* axes, int naxes);
MLXS_API int mlxs_expand_dims(mlxs_array** out, const mlxs_array* a, const int32_t* axes, int naxes);
MLXS_API int mlxs_squeeze(mlxs_array** out, const mlxs_array* a, const int32_t* axes, int naxes);
MLXS_API int mlxs_broadcast_to(mlxs_array** out, const mlxs_array* a, const int32_t* shape, int ndim);
MLXS_API int mlxs_concatenate(mlxs_array** out, mlxs_array* const* arrays, int n, int axis);
MLXS_API int mlxs_stack(mlxs_array** out, mlxs_array* const* arrays, int n, int axis);
MLXS_API int mlxs_repeat(mlxs_array** out, const mlxs_array* a, int repeats, int axis);

// ---- indexing ----
MLXS_API int mlxs_slice(mlxs_array** out, const mlxs_array* a, const int32_t* start, const int32_t* stop,
               const int32_t* strides, int n);
MLXS_API int mlxs_slice_update(mlxs_array** out, const mlxs_array* src, const mlxs_array* update,
                      const int32_t* start, const int32_t* stop, const int32_t* strides, int n);
MLXS_API int mlxs_take(mlxs_array** out, const mlxs_array* a, const mlxs_array* indices, int axis);
MLXS_API int mlxs_take_along_axis(mlxs_array** out, const mlxs_array* a, const mlxs_array* indices, int axis);
MLXS_API int mlxs_put_along_axis(mlxs_array** out, const mlxs_array* a, const mlxs_array* indices,
                        const mlxs_array* values, int axis);

// ---- quantization ----
// `biases` may be NULL (modes without biases). `mode` is "affine", "mxfp4", ...
MLXS_API int mlxs_quantized_matmul(mlxs_array** out, const mlxs_array* x, const mlxs_array* w,
                          const mlxs_array* scales, const mlxs_array* biases, int transpose,
                          int group_size, int bits, const char* mode);
MLXS_API int mlxs_quantize(mlxs_array** out_w, mlxs_array** out_scales, mlxs_array** out_biases,
                  const mlxs_array* w, int group_size, int bits, const char* mode);
// Our CPU kernels (ffi/src/kernels/) for the ops built from now on: on (1) or off (0, MLX's
// own ops); returns the previous setting. They start on unless MLX_KERNELS=mlx.
MLXS_API int mlxs_use_cpu_kernels(int on);
// 1 where a product of `rows` outputs runs on our CPU kernels in 8-bit groups of 16 (GGUF's Q6_K
// kept quantized; MLX's ops refuse that group size), else 0.
MLXS_API int mlxs_kernels_read_half_groups(int rows);
// The instruction set and thread count our CPU kernels run with, e.g. "avx2, 2 threads".
MLXS_API const char* mlxs_cpu_kernels_describe(void);
// An affine-quantized weight (transposed, group_size, bits) with its scales and biases, repacked
// for our CPU kernels' decode rows where they read that layout on this CPU (same bytes; only
// mlxs_quantized_matmul and the fused ops take the result): *out_w is NULL where they don't.
MLXS_API int mlxs_repack_quantized(mlxs_array** out_w, mlxs_array** out_scales, mlxs_array** out_biases,
                                   const mlxs_array* w, const mlxs_array* scales, const mlxs_array* biases,
                                   int group_size, int bits);
// A weight mlxs_repack_quantized made, back in MLX's layout (for mlxs_dequantize); others as they are.
MLXS_API int mlxs_unrepack_quantized(mlxs_array** out_w, mlxs_array** out_scales, mlxs_array** out_biases,
                                     const mlxs_array* w, const mlxs_array* scales, const mlxs_array* biases);
// Rows `ids` of a quantized weight (in MLX's layout or repacked), in MLX's layout: an embedding's lookup.
MLXS_API int mlxs_take_quantized_rows(mlxs_array** out_w, mlxs_array** out_scales, mlxs_array** out_biases,
                                      const mlxs_array* w, const mlxs_array* scales, const mlxs_array* biases,
                                      const mlxs_array* ids);
// dtype < 0 keeps the scales' dtype.
MLXS_API int mlxs_dequantize(mlxs_array** out, const mlxs_array* w, const mlxs_array* scales,
                    const mlxs_array* biases, int group_size, int bits, const char* mode, int dtype);

// ---- fused kernels (mlx::core::fast) ----
MLXS_API int mlxs_rms_norm(mlxs_array** out, const mlxs_array* x, const mlxs_array* weight, float eps);
MLXS_API int mlxs_layer_norm(mlxs_array** out, const mlxs_array* x, const mlxs_array* weight,
                    const mlxs_array* bias, float eps);
// `base` is ignored (and may be NaN) when `freqs` is given. `offset_array`, when not NULL,
// replaces `offset` (one offset per batch row).
MLXS_API int mlxs_rope(mlxs_array** out, const mlxs_array* x, int dims, int traditional, float base,
              float scale, int offset, const mlxs_array* offset_array, const mlxs_array* freqs);
// mask_mode is "" or "causal"; mask may be NULL (boolean or additive).
MLXS_API int mlxs_sdpa(mlxs_array** out, const mlxs_array* q, const mlxs_array* k, const mlxs_array* v,
              float scale, const char* mask_mode, const mlxs_array* mask, const mlxs_array* sinks);
// Attention on a quantized KV cache: keys and values [B, Hkv, T, ·] as mlxs_quantize makes them
// (affine: packed, scales, biases), mask and sinks as mlxs_sdpa takes them. With key_tail, keys
// are quantized per channel: key_scales/key_biases [B, Hkv, n, D] per group of group_size
// positions of the n·group_size coded ones, then key_tail [B, Hkv, T - n·group_size, D] in float.
// `length` > 0: T = length, and the buffers (a cache's whole ones) may hold more positions than
// that, read in place (per-channel keys: their first length - tail positions).
MLXS_API int mlxs_quantized_sdpa(mlxs_array** out, const mlxs_array* q, const mlxs_array* keys,
                        const mlxs_array* key_scales, const mlxs_array* key_biases,
                        const mlxs_array* values, const mlxs_array* value_scales,
                        const mlxs_array* value_biases, float scale, const char* mask_mode,
                        const mlxs_array* mask, const mlxs_array* sinks, const mlxs_array* key_tail,
                        int group_size, int bits, int length);
// A quantized KV cache's step in one op: values [B, Hkv, L, D] quantized as mlxs_quantize does
// into the cache's buffers (codes, scales, biases [B, Hkv, T, ·]) at column `at`, in place where
// nothing else holds them or the cache owns them (`owned`, see mlxs_attention_input). outs[0..2]
// get the buffers, outs[3..5] their first at + L columns.
// With keys (keys per channel, see mlxs_quantized_sdpa): the new keys [B, Hkv, L, D] join
// key_tail in outs[9] (in key_tail's type), and outs[6..8] get the first `coded` positions of the
// keys' buffers (whole groups). outs holds 6 handles, or 10 with keys.
MLXS_API int mlxs_quantized_cache_write(mlxs_array** outs, const mlxs_array* values, const mlxs_array* codes,
                                        const mlxs_array* scales, const mlxs_array* biases, int at,
                                        const mlxs_array* keys, const mlxs_array* key_tail,
                                        const mlxs_array* key_codes, const mlxs_array* key_scales,
                                        const mlxs_array* key_biases, int coded, int group_size, int bits,
                                        int owned);
// silu(gate) * up, the SwiGLU feed-forward's activation: one op on our CPU kernels.
MLXS_API int mlxs_silu_mul(mlxs_array** out, const mlxs_array* gate, const mlxs_array* up);
MLXS_API int mlxs_gelu_approx_mul(mlxs_array** out, const mlxs_array* gate, const mlxs_array* up);
// A greedy step's sampling of logits [B, V]: outs[0] the tokens argmax(logprobs) (uint32 [B]),
// outs[1] their logprobs ([B], the logits' type), logprobs = logits - logsumexp(logits): one op
// on our CPU kernels, the same numbers as MLX's ops give.
MLXS_API int mlxs_greedy_tokens(mlxs_array** outs, const mlxs_array* logits);
// h + down(silu(gate) * up), [gate, up] the halves of gate_up(rms_norm(h, norm_weight)), both
// products affine-quantized (transposed weights, no biases of their own): the MLP half of a
// pre-norm block, one op on our CPU kernels.
MLXS_API int mlxs_mlp_block(mlxs_array** out, const mlxs_array* h, const mlxs_array* norm_weight, float eps,
                            const mlxs_array* gate_up, const mlxs_array* gate_up_scales,
                            const mlxs_array* gate_up_biases, int gate_up_group, int gate_up_bits,
                            const mlxs_array* down, const mlxs_array* down_scales, const mlxs_array* down_biases,
                            int down_group, int down_bits);
// Rotated queries [B, H, L, D] and keys [B, Hkv, L, D], and values [B, Hkv, L, D], of x [B, L, ·]:
// rms_norm, the fused q/k/v product (affine-quantized, no biases of its own), the split into
// heads and RoPE (settings as mlxs_rope takes them), one op on our CPU kernels; into out[0..2].
// Given a float KV cache's buffers [B, Hkv, T, D] (cache_keys, cache_values), out[0..4] are the
// queries, the buffers with the new keys and values written at column cache_at (in place where
// nothing else holds them, or where cache_owned: see kernels::CacheRows), and the buffers' first
// cache_at + L columns.
MLXS_API int mlxs_attention_input(mlxs_array** out, const mlxs_array* x, const mlxs_array* norm_weight, float eps,
                                  const mlxs_array* qkv, const mlxs_array* qkv_scales, const mlxs_array* qkv_biases,
                                  int group, int bits, int heads, int kv_heads, int head_dim, int dims,
                                  int traditional, float base, float scale, int offset,
                                  const mlxs_array* offset_array, const mlxs_array* freqs,
                                  const mlxs_array* cache_keys, const mlxs_array* cache_values, int cache_at,
                                  int cache_owned);
// mlxs_attention_input, then mlxs_quantized_cache_write of its keys and values into a quantized
// KV cache whose keys are kept per channel (the values' codes, scales and biases; the keys' and
// their float tail; `coded`, cache_at, cache_group, cache_bits and cache_owned as that call's),
// as one op on our CPU kernels: outs[0] the queries, outs[1..3] the values' buffers written,
// outs[4] the tail grown by the new keys. No views: attention reads the buffers with a length
// (mlxs_quantized_sdpa).
MLXS_API int mlxs_attention_input_quantized(mlxs_array** outs, const mlxs_array* x, const mlxs_array* norm_weight,
                                            float eps, const mlxs_array* qkv, const mlxs_array* qkv_scales,
                                            const mlxs_array* qkv_biases, int group, int bits, int heads,
                                            int kv_heads, int head_dim, int dims, int traditional, float base,
                                            float scale, int offset, const mlxs_array* offset_array,
                                            const mlxs_array* freqs, const mlxs_array* value_codes,
                                            const mlxs_array* value_scales, const mlxs_array* value_biases,
                                            const mlxs_array* key_codes, const mlxs_array* key_scales,
                                            const mlxs_array* key_biases, const mlxs_array* key_tail, int coded,
                                            int cache_at, int cache_group, int cache_bits, int cache_owned);
// x + o_proj(heads [B, H, L, D] back into rows [B, L, H·D]), o_proj affine-quantized with no bias
// of its own: attention's output and the block's residual add, one op on our CPU kernels.
MLXS_API int mlxs_attention_output(mlxs_array** out, const mlxs_array* x, const mlxs_array* heads,
                                   const mlxs_array* o_proj, const mlxs_array* o_proj_scales,
                                   const mlxs_array* o_proj_biases, int group, int bits);

// mlxs_mlp_block(mlxs_attention_output(x, heads, o_proj...), norm_weight, eps, gate_up..., down...):
// a pre-norm block's second half from attention's heads, one op on our CPU kernels.
MLXS_API int mlxs_attention_output_mlp(mlxs_array** out, const mlxs_array* x, const mlxs_array* heads,
                                       const mlxs_array* o_proj, const mlxs_array* o_proj_scales,
                                       const mlxs_array* o_proj_biases, int o_group, int o_bits,
                                       const mlxs_array* norm_weight, float eps, const mlxs_array* gate_up,
                                       const mlxs_array* gate_up_scales, const mlxs_array* gate_up_biases,
                                       int gate_up_group, int gate_up_bits, const mlxs_array* down,
                                       const mlxs_array* down_scales, const mlxs_array* down_biases, int down_group,
                                       int down_bits);
// ---- random ----
MLXS_API int mlxs_random_seed(uint64_t seed);
MLXS_API int mlxs_random_key(mlxs_array** out, uint64_t seed);
MLXS_API int mlxs_random_split(mlxs_array** out_a, mlxs_array** out_b, const mlxs_array* key);
MLXS_API int mlxs_random_categorical(mlxs_array** out, const mlxs_array* logits, int axis, const mlxs_array* key);
MLXS_API int mlxs_random_uniform(mlxs_array** out, const int32_t* shape, int ndim, int dtype, const mlxs_array* key);
MLXS_API int mlxs_random_normal(mlxs_array** out, const int32_t* shape, int ndim, int dtype, const mlxs_array* key);

// ---- files ----
// A bundle is what a file load returns: named arrays plus metadata.
MLXS_API int mlxs_load_safetensors(mlxs_bundle** out, const char* path);
MLXS_API int mlxs_load_gguf(mlxs_bundle** out, const char* path);
MLXS_API void mlxs_bundle_free(mlxs_bundle* b);
MLXS_API int mlxs_bundle_array_count(const mlxs_bundle* b);
MLXS_API const char* mlxs_bundle_array_name(const mlxs_bundle* b, int i);
MLXS_API int mlxs_bundle_array(mlxs_array** out, const mlxs_bundle* b, int i);
MLXS_API int mlxs_bundle_meta_count(const mlxs_bundle* b);
MLXS_API const char* mlxs_bundle_meta_name(const mlxs_bundle* b, int i);
// 0 = empty, 1 = array, 2 = string, 3 = list of strings
MLXS_API int mlxs_bundle_meta_kind(const mlxs_bundle* b, int i);
MLXS_API const char* mlxs_bundle_meta_string(const mlxs_bundle* b, int i);
MLXS_API int mlxs_bundle_meta_array(mlxs_array** out, const mlxs_bundle* b, int i);
// A string list as NUL-terminated strings laid end to end; *nbytes gets the total length.
MLXS_API const char* mlxs_bundle_meta_strings(const mlxs_bundle* b, int i, size_t* nbytes);
// names: n NUL-terminated strings laid end to end; meta_keys/meta_values: nmeta each.
MLXS_API int mlxs_save_safetensors(const char* path, const char* names, mlxs_array* const* arrays, int n,
                          const char* meta_keys, const char* meta_values, int nmeta);
// A GGUF tensor of `type`, its `bytes` of blocks at `offset` in the file at `path`, as values of
// `shape` (MLX's order): Q4_K, Q5_0, Q5_1 and Q5_K as MLX's affine layout in outs[0..2] (uint32
// codes, Q4_K's at 4 bits and the 5-bit types' at 8; float32 scales and biases per group of 32);
// Q3_K, IQ4_NL and IQ4_XS as float32 values in *out.
MLXS_API int mlxs_gguf_read_affine(mlxs_array** outs, const char* path, uint64_t offset, uint64_t bytes,
                          const char* type, const int32_t* shape, int ndim);
MLXS_API int mlxs_gguf_read_dequantized(mlxs_array** out, const char* path, uint64_t offset, uint64_t bytes,
                               const char* type, const int32_t* shape, int ndim);

// ---- memory ----
MLXS_API size_t mlxs_active_memory(void);
MLXS_API size_t mlxs_peak_memory(void);
MLXS_API size_t mlxs_cache_memory(void);
MLXS_API void mlxs_reset_peak_memory(void);
MLXS_API size_t mlxs_set_memory_limit(size_t limit);
MLXS_API size_t mlxs_set_cache_limit(size_t limit);
MLXS_API void mlxs_clear_cache(void);
// Transparent huge pages for the buffers of these evaluated arrays (Linux, CPU backend): their
// anonymous mappings get MADV_HUGEPAGE, and with `collapse` the 2 MiB pages around them are
// collapsed (MADV_COLLAPSE) on a thread of the shim's, without waiting. Returns the bytes of the
// pages queued; 0 where unsupported. Never an error: huge pages are only an optimisation.
MLXS_API size_t mlxs_huge_pages(mlxs_array* const* arrays, int n, int collapse);
// Waits until the collapses queued so far are done (for tests and benchmarks).
MLXS_API void mlxs_huge_pages_wait(void);

// ---- mixture of experts ----
MLXS_API int mlxs_gather_mm(mlxs_array** out, const mlxs_array* a, const mlxs_array* b, const mlxs_array* lhs_indices,
                            const mlxs_array* rhs_indices, int sorted_indices);
MLXS_API int mlxs_gather_qmm(mlxs_array** out, const mlxs_array* x, const mlxs_array* w, const mlxs_array* scales,
                             const mlxs_array* biases, const mlxs_array* lhs_indices, const mlxs_array* rhs_indices,
                             int transpose, int group_size, int bits, const char* mode, int sorted_indices);

// ---- distributed (mlx::core::distributed) ----
// Starts joining this process's group, once, on a thread of its own (strict: an error when the
// backend cannot start). backend: "ring", "mpi", "any"...; hostfile (may be NULL) and rank (< 0:
// none) override MLX_HOSTFILE and MLX_RANK. The ring backend connects to its neighbours then
// (retrying ~30 s). Poll until *joined is 1: then rank and size are set, or the status and last
// error say why it failed. No other distributed call before that.
MLXS_API int mlxs_distributed_init_start(const char* backend, const char* hostfile, int explicit_rank);
MLXS_API int mlxs_distributed_init_poll(int* joined, int* rank, int* size);
MLXS_API int mlxs_distributed_all_sum(mlxs_array** out, const mlxs_array* x);
// Lazy like every op: the transfer happens when the result is evaluated. The ring backend
// sends and receives only to and from the left and right neighbours.
MLXS_API int mlxs_distributed_send(mlxs_array** out, const mlxs_array* x, int dst);
MLXS_API int mlxs_distributed_recv(mlxs_array** out, const int32_t* shape, int ndim, int dtype, int src);
// Sends message `x` to `dst` so that the receiver may take its first header_bytes in a receive
// (or mlxs_distributed_read) of their own and the rest in another: one send over one connection
// per neighbour, two where the ring has several (MLX splits each transfer over them by its size).
// The result is `x`, once sent.
MLXS_API int mlxs_distributed_send_message(mlxs_array** out, const mlxs_array* x, uint64_t header_bytes, int dst);
// Ends the process (exit status 3) with `message` on stderr unless disarmed or re-armed within
// timeout_ms of the last bytes the ring received (of the arm, where the system does not count
// them): the ring backend never times out, so a silent peer would block a rank forever.
MLXS_API int mlxs_watchdog_arm(int timeout_ms, const char* message);
MLXS_API void mlxs_watchdog_disarm(void);
// A pipeline's signs of life, kept by the watchdog's thread from now on, armed or not: this rank
// writes a byte to its previous rank every quarter of timeout_ms and reads its next rank's, on
// the directions of the ring's connections a pipeline's transfers never use (so never with
// collectives, as in tensor parallel); a connection to the next rank silent for timeout_ms (for
// twice that before its first byte) ends the process (status 3) with `message`. A closed one is
// left to the transfers. Nothing where the group has no ring connections.
MLXS_API int mlxs_watchdog_neighbours(int timeout_ms, const char* message);
// How long the watchdog's peers have been silent, in milliseconds, as its thread last saw them (-1
// where it watches none): out[0] the next rank's signs of life (the most silent connection to it;
// negative before its first word is due), out[1] the ring while armed (since its last bytes, or the
// arm). A server says a peer is suspect before the watchdog's timeout ends the process.
MLXS_API void mlxs_watchdog_silence(int32_t* out);
// Evaluates `arrays` (collectives of the ring) as mlxs_eval does, unless one of the ring's
// connections closes first: then an error, at once. MLX's ring fails the transfers under way when
// a peer's connection closes and ends that socket's thread, so a transfer queued after (a forward
// pass's next all_sum) would be waited for for ever, and mlxs_eval with it. The evaluation runs
// on a thread of the shim's while the caller waits (MLX used by one thread at a time still); that
// thread stays blocked then. As mlxs_eval unless mlxs_distributed_share_stream made the stream.
MLXS_API int mlxs_eval_unless_peer_lost(mlxs_array* const* arrays, int n);
// Where the group has ring connections: ops are built from now on on a new default stream that
// any thread may encode (MLX's thread-unsafe stream; a stream's encoder is otherwise its creating
// thread's), so that mlxs_eval_unless_peer_lost can evaluate them on its thread. Once, after the
// join and before the model's arrays are built; nothing elsewhere.
MLXS_API int mlxs_distributed_share_stream(void);
// Waits until one of the group's connections (else any socket of this process) has something to
// read (1) or timeout_ms passes (0).
// The ring backend's receive spins on its socket until data comes: an idle rank waits here first.
MLXS_API int mlxs_wait_readable(int timeout_ms);
// Reads `nbytes` from rank `src` into `data` on the calling thread, straight from the ring's first
// connection from it (where there are several, at most 1 KiB: MLX sends that much over it alone),
// where a receive would go through MLX's stream and socket threads and back; *read is 0 (nothing
// read) where it cannot (another backend, a rank other than the previous): receive with
// mlxs_distributed_recv then. Only between MLX's own transfers on that connection, never during
// one, and of what was sent alone (mlxs_distributed_send_message's header). Waits for the bytes in
// poll() (the watchdog times a silence); an error when the peer closed the connection.
MLXS_API int mlxs_distributed_read(void* data, uint64_t nbytes, int src, int* read);

#ifdef __cplusplus
}
#endif
