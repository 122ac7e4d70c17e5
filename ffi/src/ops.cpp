// Array operations: element-wise, reductions, shapes, indexing, quantization,
// the fused kernels of mlx::core::fast, and random sampling.
#include <cmath>

#include "common.h"
#include "kernels/kernels.h"

using namespace shim;

namespace {

mx::array unary(int op, const mx::array& a) {
  switch (op) {
    case MLXS_ABS: return mx::abs(a);
    case MLXS_NEGATIVE: return mx::negative(a);
    case MLXS_EXP: return mx::exp(a);
    case MLXS_LOG: return mx::log(a);
    case MLXS_SQRT: return mx::sqrt(a);
    case MLXS_RSQRT: return mx::rsqrt(a);
    case MLXS_SIGMOID: return mx::sigmoid(a);
    case MLXS_TANH: return mx::tanh(a);
    case MLXS_SIN: return mx::sin(a);
    case MLXS_COS: return mx::cos(a);
    case MLXS_FLOOR: return mx::floor(a);
    case MLXS_CEIL: return mx::ceil(a);
    case MLXS_ROUND: return mx::round(a);
    case MLXS_LOGICAL_NOT: return mx::logical_not(a);
    case MLXS_STOP_GRADIENT: return mx::stop_gradient(a);
    case MLXS_COPY: return mx::copy(a);
    case MLXS_SQUARE: return mx::square(a);
    case MLXS_ERF: return mx::erf(a);
    case MLXS_LOG1P: return mx::log1p(a);
    case MLXS_CONTIGUOUS: return mx::contiguous(a);
  }
  throw std::invalid_argument("unknown unary op " + std::to_string(op));
}

mx::array binary(int op, const mx::array& a, const mx::array& b) {
  switch (op) {
    case MLXS_ADD: return mx::add(a, b);
    case MLXS_SUBTRACT: return mx::subtract(a, b);
    case MLXS_MULTIPLY: return mx::multiply(a, b);
    case MLXS_DIVIDE: return mx::divide(a, b);
    case MLXS_MAXIMUM: return mx::maximum(a, b);
    case MLXS_MINIMUM: return mx::minimum(a, b);
    case MLXS_POWER: return mx::power(a, b);
    case MLXS_EQUAL: return mx::equal(a, b);
    case MLXS_NOT_EQUAL: return mx::not_equal(a, b);
    case MLXS_LESS: return mx::less(a, b);
    case MLXS_LESS_EQUAL: return mx::less_equal(a, b);
    case MLXS_GREATER: return mx::greater(a, b);
    case MLXS_GREATER_EQUAL: return mx::greater_equal(a, b);
    case MLXS_LOGICAL_AND: return mx::logical_and(a, b);
    case MLXS_LOGICAL_OR: return mx::logical_or(a, b);
    case MLXS_REMAINDER: return mx::remainder(a, b);
    case MLXS_FLOOR_DIVIDE: return mx::floor_divide(a, b);
    case MLXS_MATMUL: return kernels::matmul(a, b);
  }
  throw std::invalid_argument("unknown binary op " + std::to_string(op));
}

// A Python-style "weak" scalar: it adopts the array's floating dtype instead of promoting it.
mx::array weak_scalar(double s, const mx::array& like) {
  if (mx::issubdtype(like.dtype(), mx::floating)) return mx::array(s, like.dtype());
  if (std::floor(s) == s && mx::issubdtype(like.dtype(), mx::integer)) return mx::array(s, like.dtype());
  if (like.dtype() == mx::bool_ && (s == 0 || s == 1)) return mx::array(s != 0);
  return mx::array(static_cast<float>(s));
}

std::string mode_or_affine(const char* mode) { return (mode && *mode) ? mode : "affine"; }

}  // namespace

extern "C" {

int mlxs_unary(mlxs_array** out, int op, const mlxs_array* a) {
  return guard([&] { return put(out, unary(op, ref(a))); });
}

int mlxs_binary(mlxs_array** out, int op, const mlxs_array* a, const mlxs_array* b) {
  return guard([&] { return put(out, binary(op, ref(a), ref(b))); });
}

int mlxs_binary_scalar(mlxs_array** out, int op, const mlxs_array* a, double s, int scalar_first) {
  return guard([&] {
    mx::array scalar = weak_scalar(s, ref(a));
    return put(out, scalar_first ? binary(op, scalar, ref(a)) : binary(op, ref(a), scalar));
  });
}

int mlxs_where(mlxs_array** out, const mlxs_array* cond, const mlxs_array* x, const mlxs_array* y) {
  return guard([&] { return put(out, mx::where(ref(cond), ref(x), ref(y))); });
}

int mlxs_astype(mlxs_array** out, const mlxs_array* a, int dtype) {
  return guard([&] { return put(out, mx::astype(ref(a), dtype_of(dtype))); });
}

int mlxs_view(mlxs_array** out, const mlxs_array* a, int dtype) {
  return guard([&] { return put(out, mx::view(ref(a), dtype_of(dtype))); });
}

int mlxs_full(mlxs_array** out, const int32_t* shape, int ndim, double value, int dtype) {
  return guard([&] {
    mx::Dtype t = dtype_of(dtype);
    return put(out, mx::full(shape_of(shape, ndim), mx::array(value, t), t));
  });
}

int mlxs_arange(mlxs_array** out, double start, double stop, double step, int dtype) {
  return guard([&] { return put(out, mx::arange(start, stop, step, dtype_of(dtype))); });
}

int mlxs_reduce(mlxs_array** out, int op, const mlxs_array* a, const int32_t* axes, int naxes, int keepdims) {
  return guard([&] {
    const mx::array& x = ref(a);
    std::vector<int> ax = ints(axes, naxes);
    bool keep = keepdims != 0;
    if ((op == MLXS_ARGMAX || op == MLXS_ARGMIN) && naxes != 1) {
      throw std::invalid_argument("argmax/argmin take exactly one axis");
    }
    switch (op) {
      case MLXS_SUM: return put(out, mx::sum(x, ax, keep));
      case MLXS_MEAN: return put(out, mx::mean(x, ax, keep));
      case MLXS_MAX: return put(out, mx::max(x, ax, keep));
      case MLXS_MIN: return put(out, mx::min(x, ax, keep));
      case MLXS_PROD: return put(out, mx::prod(x, ax, keep));
      case MLXS_LOGSUMEXP: return put(out, kernels::logsumexp(x, ax, keep));
      case MLXS_ARGMAX: return put(out, mx::argmax(x, ax[0], keep));
      case MLXS_ARGMIN: return put(out, mx::argmin(x, ax[0], keep));
      case MLXS_ALL: return put(out, mx::all(x, ax, keep));
      case MLXS_ANY: return put(out, mx::any(x, ax, keep));
    }
    throw std::invalid_argument("unknown reduction " + std::to_string(op));
  });
}

int mlxs_softmax(mlxs_array** out, const mlxs_array* a, const int32_t* axes, int naxes, int precise) {
  return guard([&] { return put(out, mx::softmax(ref(a), ints(axes, naxes), precise != 0)); });
}

int mlxs_cumsum(mlxs_array** out, const mlxs_array* a, int axis, int reverse, int inclusive) {
  return guard([&] { return put(out, mx::cumsum(ref(a), axis, reverse != 0, inclusive != 0)); });
}

int mlxs_sort(mlxs_array** out, const mlxs_array* a, int axis) {
  return guard([&] { return put(out, mx::sort(ref(a), axis)); });
}

int mlxs_argsort(mlxs_array** out, const mlxs_array* a, int axis) {
  return guard([&] { return put(out, mx::argsort(ref(a), axis)); });
}

int mlxs_topk(mlxs_array** out, const mlxs_array* a, int k, int axis) {
  return guard([&] { return put(out, mx::topk(ref(a), k, axis)); });
}

int mlxs_argpartition(mlxs_array** out, const mlxs_array* a, int kth, int axis) {
  return guard([&] { return put(out, mx::argpartition(ref(a), kth, axis)); });
}

int mlxs_reshape(mlxs_array** out, const mlxs_array* a, const int32_t* shape, int ndim) {
  return guard([&] { return put(out, mx::reshape(ref(a), shape_of(shape, ndim))); });
}

int mlxs_transpose(mlxs_array** out, const mlxs_array* a, const int32_t* axes, int naxes) {
  return guard([&] { return put(out, mx::transpose(ref(a), ints(axes, naxes))); });
}

int mlxs_expand_dims(mlxs_array** out, const mlxs_array* a, const int32_t* axes, int naxes) {
  return guard([&] { return put(out, mx::expand_dims(ref(a), ints(axes, naxes))); });
}

int mlxs_squeeze(mlxs_array** out, const mlxs_array* a, const int32_t* axes, int naxes) {
  return guard([&] {
    return put(out, naxes == 0 ? mx::squeeze(ref(a)) : mx::squeeze(ref(a), ints(axes, naxes)));
  });
}

int mlxs_broadcast_to(mlxs_array** out, const mlxs_array* a, const int32_t* shape, int ndim) {
  return guard([&] { return put(out, mx::broadcast_to(ref(a), shape_of(shape, ndim))); });
}

int mlxs_concatenate(mlxs_array** out, mlxs_array* const* arrays, int n, int axis) {
  return guard([&] { return put(out, mx::concatenate(arrays_of(arrays, n), axis)); });
}

int mlxs_stack(mlxs_array** out, mlxs_array* const* arrays, int n, int axis) {
  return guard([&] { return put(out, mx::stack(arrays_of(arrays, n), axis)); });
}

int mlxs_repeat(mlxs_array** out, const mlxs_array* a, int repeats, int axis) {
  return guard([&] { return put(out, mx::repeat(ref(a), repeats, axis)); });
}

int mlxs_slice(mlxs_array** out, const mlxs_array* a, const int32_t* start, const int32_t* stop,
               const int32_t* strides, int n) {
  return guard([&] {
    return put(out, mx::slice(ref(a), shape_of(start, n), shape_of(stop, n), shape_of(strides, n)));
  });
}

int mlxs_slice_update(mlxs_array** out, const mlxs_array* src, const mlxs_array* update,
                      const int32_t* start, const int32_t* stop, const int32_t* strides, int n) {
  return guard([&] {
    return put(out, mx::slice_update(ref(src), ref(update), shape_of(start, n), shape_of(stop, n),
                                     shape_of(strides, n)));
  });
}

int mlxs_take(mlxs_array** out, const mlxs_array* a, const mlxs_array* indices, int axis) {
  return guard([&] { return put(out, mx::take(ref(a), ref(indices), axis)); });
}

int mlxs_take_along_axis(mlxs_array** out, const mlxs_array* a, const mlxs_array* indices, int axis) {
  return guard([&] { return put(out, mx::take_along_axis(ref(a), ref(indices), axis)); });
}

int mlxs_put_along_axis(mlxs_array** out, const mlxs_array* a, const mlxs_array* indices,
                        const mlxs_array* values, int axis) {
  return guard([&] { return put(out, mx::put_along_axis(ref(a), ref(indices), ref(values), axis)); });
}

int mlxs_quantized_matmul(mlxs_array** out, const mlxs_array* x, const mlxs_array* w,
                          const mlxs_array* scales, const mlxs_array* biases, int transpose,
                          int group_size, int bits, const char* mode) {
  return guard([&] {
    return put(out, kernels::quantized_matmul(ref(x), ref(w), ref(scales), opt(biases), transpose != 0,
                                              group_size, bits, mode_or_affine(mode)));
  });
}

int mlxs_use_cpu_kernels(int on) { return kernels::set_enabled(on != 0) ? 1 : 0; }

int mlxs_kernels_read_half_groups(int rows) { return kernels::reads_half_groups(rows) ? 1 : 0; }

const char* mlxs_cpu_kernels_describe(void) { return kernels::describe(); }

int mlxs_quantize(mlxs_array** out_w, mlxs_array** out_scales, mlxs_array** out_biases,
                  const mlxs_array* w, int group_size, int bits, const char* mode) {
  return guard([&] {
    auto parts = mx::quantize(ref(w), group_size, bits, mode_or_affine(mode));
    put(out_w, parts.at(0));
    put(out_scales, parts.at(1));
    *out_biases = parts.size() > 2 ? new mlxs_array{parts[2]} : nullptr;
    return 0;
  });
}

int mlxs_repack_quantized(mlxs_array** out_w, mlxs_array** out_scales, mlxs_array** out_biases,
                          const mlxs_array* w, const mlxs_array* scales, const mlxs_array* biases, int group_size,
                          int bits) {
  return guard([&] {
    const auto repacked = kernels::repack_for_kernels(ref(w), ref(scales), ref(biases), group_size, bits);
    *out_w = *out_scales = *out_biases = nullptr;
    if (!repacked) return 0;
    put(out_scales, std::get<1>(*repacked));
    put(out_biases, std::get<2>(*repacked));
    return put(out_w, std::get<0>(*repacked));
  });
}

int mlxs_unrepack_quantized(mlxs_array** out_w, mlxs_array** out_scales, mlxs_array** out_biases,
                            const mlxs_array* w, const mlxs_array* scales, const mlxs_array* biases) {
  return guard([&] {
    const auto [mlx_w, mlx_scales, mlx_biases] = kernels::mlx_layout({ref(w), ref(scales), ref(biases)});
    put(out_scales, mlx_scales);
    put(out_biases, mlx_biases);
    return put(out_w, mlx_w);
  });
}

int mlxs_take_quantized_rows(mlxs_array** out_w, mlxs_array** out_scales, mlxs_array** out_biases,
                             const mlxs_array* w, const mlxs_array* scales, const mlxs_array* biases,
                             const mlxs_array* ids) {
  return guard([&] {
    const auto [rows_w, rows_scales, rows_biases] =
        kernels::take_quantized_rows({ref(w), ref(scales), ref(biases)}, ref(ids));
    put(out_scales, rows_scales);
    put(out_biases, rows_biases);
    return put(out_w, rows_w);
  });
}

int mlxs_dequantize(mlxs_array** out, const mlxs_array* w, const mlxs_array* scales,
                    const mlxs_array* biases, int group_size, int bits, const char* mode, int dtype) {
  return guard([&] {
    std::optional<mx::Dtype> t;
    if (dtype >= 0) t = dtype_of(dtype);
    const std::string m = mode_or_affine(mode);
    if (m == "affine") return put(out, kernels::dequantize_affine(ref(w), ref(scales), opt(biases), group_size, bits, t));
    return put(out, mx::dequantize(ref(w), ref(scales), opt(biases), group_size, bits, m, std::nullopt, t));
  });
}

int mlxs_rms_norm(mlxs_array** out, const mlxs_array* x, const mlxs_array* weight, float eps) {
  return guard([&] { return put(out, kernels::rms_norm(ref(x), opt(weight), eps)); });
}

int mlxs_layer_norm(mlxs_array** out, const mlxs_array* x, const mlxs_array* weight,
                    const mlxs_array* bias, float eps) {
  return guard([&] { return put(out, mx::fast::layer_norm(ref(x), opt(weight), opt(bias), eps)); });
}

int mlxs_rope(mlxs_array** out, const mlxs_array* x, int dims, int traditional, float base,
              float scale, int offset, const mlxs_array* offset_array, const mlxs_array* freqs) {
  return guard([&] {
    std::optional<float> b;
    if (freqs == nullptr) b = base;
    if (offset_array != nullptr) {
      return put(out, kernels::rope(ref(x), dims, traditional != 0, b, scale, ref(offset_array), opt(freqs)));
    }
    return put(out, kernels::rope(ref(x), dims, traditional != 0, b, scale, offset, opt(freqs)));
  });
}

int mlxs_sdpa(mlxs_array** out, const mlxs_array* q, const mlxs_array* k, const mlxs_array* v,
              float scale, const char* mask_mode, const mlxs_array* mask, const mlxs_array* sinks) {
  return guard([&] {
    return put(out, kernels::scaled_dot_product_attention(ref(q), ref(k), ref(v), scale,
                                                          mask_mode ? mask_mode : "", opt(mask),
                                                          opt(sinks)));
  });
}

int mlxs_quantized_sdpa(mlxs_array** out, const mlxs_array* q, const mlxs_array* keys,
                        const mlxs_array* key_scales, const mlxs_array* key_biases,
                        const mlxs_array* values, const mlxs_array* value_scales,
                        const mlxs_array* value_biases, float scale, const char* mask_mode,
                        const mlxs_array* mask, const mlxs_array* sinks, const mlxs_array* key_tail,
                        int group_size, int bits, int length) {
  return guard([&] {
    return put(out, kernels::quantized_scaled_dot_product_attention(
                        ref(q), {ref(keys), ref(key_scales), ref(key_biases)},
                        {ref(values), ref(value_scales), ref(value_biases)}, scale,
                        mask_mode ? mask_mode : "", opt(mask), opt(sinks), opt(key_tail), group_size, bits,
                        length > 0 ? std::optional<int>(length) : std::nullopt));
  });
}

int mlxs_quantized_cache_write(mlxs_array** outs, const mlxs_array* values, const mlxs_array* codes,
                               const mlxs_array* scales, const mlxs_array* biases, int at, const mlxs_array* keys,
                               const mlxs_array* key_tail, const mlxs_array* key_codes, const mlxs_array* key_scales,
                               const mlxs_array* key_biases, int coded, int group_size, int bits, int owned) {
  return guard([&] {
    std::optional<kernels::ChannelKeyStep> step;
    if (keys != nullptr)
      step = kernels::ChannelKeyStep{ref(keys), ref(key_tail), {ref(key_codes), ref(key_scales), ref(key_biases)},
                                     coded};
    return put_all(outs, kernels::quantized_cache_write(ref(values), {ref(codes), ref(scales), ref(biases)}, at, step,
                                                        group_size, bits, owned != 0));
  });
}

int mlxs_silu_mul(mlxs_array** out, const mlxs_array* gate, const mlxs_array* up) {
  return guard([&] { return put(out, kernels::silu_mul(ref(gate), ref(up))); });
}

int mlxs_gelu_approx_mul(mlxs_array** out, const mlxs_array* gate, const mlxs_array* up) {
  return guard([&] { return put(out, kernels::gelu_approx_mul(ref(gate), ref(up))); });
}

int mlxs_greedy_tokens(mlxs_array** outs, const mlxs_array* logits) {
  return guard([&] { return put_all(outs, kernels::greedy_tokens(ref(logits))); });
}

int mlxs_mlp_block(mlxs_array** out, const mlxs_array* h, const mlxs_array* norm_weight, float eps,
                   const mlxs_array* gate_up, const mlxs_array* gate_up_scales, const mlxs_array* gate_up_biases,
                   int gate_up_group, int gate_up_bits, const mlxs_array* down, const mlxs_array* down_scales,
                   const mlxs_array* down_biases, int down_group, int down_bits) {
  return guard([&] {
    return put(out, kernels::mlp_block(ref(h), ref(norm_weight), eps,
                                       {ref(gate_up), ref(gate_up_scales), ref(gate_up_biases), gate_up_group,
                                        gate_up_bits},
                                       {ref(down), ref(down_scales), ref(down_biases), down_group, down_bits}));
  });
}

int mlxs_attention_input(mlxs_array** out, const mlxs_array* x, const mlxs_array* norm_weight, float eps,
                         const mlxs_array* qkv, const mlxs_array* qkv_scales, const mlxs_array* qkv_biases, int group,
                         int bits, int heads, int kv_heads, int head_dim, int dims, int traditional, float base,
                         float scale, int offset, const mlxs_array* offset_array, const mlxs_array* freqs,
                         const mlxs_array* cache_keys, const mlxs_array* cache_values, int cache_at,
                         int cache_owned) {
  return guard([&] {
    kernels::Rotation rotation{dims, traditional != 0, std::nullopt, scale, offset, opt(freqs)};
    if (freqs == nullptr) rotation.base = base;
    if (offset_array != nullptr) rotation.offset = ref(offset_array);
    std::optional<kernels::CacheRows> cache;
    if (cache_keys != nullptr)
      cache = kernels::CacheRows{ref(cache_keys), ref(cache_values), cache_at, cache_owned != 0};
    return put_all(out, kernels::attention_input(ref(x), ref(norm_weight), eps,
                                                 {ref(qkv), ref(qkv_scales), ref(qkv_biases), group, bits},
                                                 {heads, kv_heads, head_dim}, rotation, cache));
  });
}

int mlxs_attention_input_quantized(mlxs_array** outs, const mlxs_array* x, const mlxs_array* norm_weight, float eps,
                                   const mlxs_array* qkv, const mlxs_array* qkv_scales, const mlxs_array* qkv_biases,
                                   int group, int bits, int heads, int kv_heads, int head_dim, int dims,
                                   int traditional, float base, float scale, int offset,
                                   const mlxs_array* offset_array, const mlxs_array* freqs,
                                   const mlxs_array* value_codes, const mlxs_array* value_scales,
                                   const mlxs_array* value_biases, const mlxs_array* key_codes,
                                   const mlxs_array* key_scales, const mlxs_array* key_biases,
                                   const mlxs_array* key_tail, int coded, int cache_at, int cache_group,
                                   int cache_bits, int cache_owned) {
  return guard([&] {
    kernels::Rotation rotation{dims, traditional != 0, std::nullopt, scale, offset, opt(freqs)};
    if (freqs == nullptr) rotation.base = base;
    if (offset_array != nullptr) rotation.offset = ref(offset_array);
    const kernels::QuantizedCacheRows cache{
        {ref(value_codes), ref(value_scales), ref(value_biases)},
        {ref(key_tail).dtype(), ref(key_tail), {ref(key_codes), ref(key_scales), ref(key_biases)}, coded},
        cache_at,
        cache_group,
        cache_bits,
        cache_owned != 0};
    return put_all(outs, kernels::attention_input(ref(x), ref(norm_weight), eps,
                                                  {ref(qkv), ref(qkv_scales), ref(qkv_biases), group, bits},
                                                  {heads, kv_heads, head_dim}, rotation, cache));
  });
}

int mlxs_attention_output(mlxs_array** out, const mlxs_array* x, const mlxs_array* heads, const mlxs_array* o_proj,
                          const mlxs_array* o_proj_scales, const mlxs_array* o_proj_biases, int group, int bits) {
  return guard([&] {
    return put(out, kernels::attention_output(ref(x), ref(heads),
                                              {ref(o_proj), ref(o_proj_scales), ref(o_proj_biases), group, bits}));
  });
}

int mlxs_attention_output_mlp(mlxs_array** out, const mlxs_array* x, const mlxs_array* heads,
                              const mlxs_array* o_proj, const mlxs_array* o_proj_scales,
                              const mlxs_array* o_proj_biases, int o_group, int o_bits, const mlxs_array* norm_weight,
                              float eps, const mlxs_array* gate_up, const mlxs_array* gate_up_scales,
                              const mlxs_array* gate_up_biases, int gate_up_group, int gate_up_bits,
                              const mlxs_array* down, const mlxs_array* down_scales, const mlxs_array* down_biases,
                              int down_group, int down_bits) {
  return guard([&] {
    return put(out, kernels::attention_output_mlp(
                        ref(x), ref(heads), {ref(o_proj), ref(o_proj_scales), ref(o_proj_biases), o_group, o_bits},
                        ref(norm_weight), eps,
                        {ref(gate_up), ref(gate_up_scales), ref(gate_up_biases), gate_up_group, gate_up_bits},
                        {ref(down), ref(down_scales), ref(down_biases), down_group, down_bits}));
  });
}

int mlxs_random_seed(uint64_t seed) {
  return guard([&] {
    mx::random::seed(seed);
    return 0;
  });
}

int mlxs_random_key(mlxs_array** out, uint64_t seed) {
  return guard([&] { return put(out, mx::random::key(seed)); });
}

int mlxs_random_split(mlxs_array** out_a, mlxs_array** out_b, const mlxs_array* key) {
  return guard([&] {
    auto [a, b] = mx::random::split(ref(key));
    put(out_a, a);
    return put(out_b, b);
  });
}

int mlxs_random_categorical(mlxs_array** out, const mlxs_array* logits, int axis, const mlxs_array* key) {
  return guard([&] { return put(out, mx::random::categorical(ref(logits), axis, opt(key))); });
}

int mlxs_random_uniform(mlxs_array** out, const int32_t* shape, int ndim, int dtype, const mlxs_array* key) {
  return guard([&] { return put(out, mx::random::uniform(shape_of(shape, ndim), dtype_of(dtype), opt(key))); });
}

int mlxs_random_normal(mlxs_array** out, const int32_t* shape, int ndim, int dtype, const mlxs_array* key) {
  return guard([&] { return put(out, mx::random::normal(shape_of(shape, ndim), dtype_of(dtype), opt(key))); });
}

// Mixture-of-experts matmuls: x's rows times the matrices of w selected per row by rhs_indices
// (experts stacked on w's first axis); lhs_indices may be null.
int mlxs_gather_mm(mlxs_array** out, const mlxs_array* a, const mlxs_array* b, const mlxs_array* lhs_indices,
                   const mlxs_array* rhs_indices, int sorted_indices) {
  return guard([&] {
    return put(out, mx::gather_mm(ref(a), ref(b), opt(lhs_indices), opt(rhs_indices), sorted_indices != 0));
  });
}

int mlxs_gather_qmm(mlxs_array** out, const mlxs_array* x, const mlxs_array* w, const mlxs_array* scales,
                    const mlxs_array* biases, const mlxs_array* lhs_indices, const mlxs_array* rhs_indices,
                    int transpose, int group_size, int bits, const char* mode, int sorted_indices) {
  return guard([&] {
    return put(out, mx::gather_qmm(ref(x), ref(w), ref(scales), opt(biases), opt(lhs_indices), opt(rhs_indices),
                                   transpose != 0, group_size, bits, mode_or_affine(mode), std::nullopt,
                                   sorted_indices != 0));
  });
}

}  // extern "C"
