// The work of some of our primitives, as their tasks run it on the stream's thread (inputs
// evaluated and row-contiguous, outputs allocated): fused primitives chain these in one task
// instead of one graph node each (mlp_block.cpp).
#pragma once

#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "mlx/mlx.h"

namespace kernels {

namespace mx = mlx::core;

// An evaluated array on a fresh buffer: an intermediate of a fused primitive.
inline mx::array scratch_array(mx::Shape shape, mx::Dtype type) {
  size_t n = 1;
  for (int d : shape) n *= d;
  return mx::array(mx::allocator::malloc(n * mx::size_of(type)), std::move(shape), type);
}

// out = rms_norm(x, weight) (no weight: 1s); out has x's shape.
void rms_norm_into(const mx::array& x, const mx::array* weight, mx::array& out, float eps);

// out = x · dequantize(w)ᵀ, affine (quantized_matmul_covers holds for the layout).
void quantized_matmul_into(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
                           mx::array& out, int group, int bits);

// Whether our quantized matmul takes this layout (else kernels::quantized_matmul builds MLX's op).
bool quantized_matmul_covers(const mx::array& x, const mx::array& w, const mx::array& scales,
                             const std::optional<mx::array>& biases, bool transpose, int group, int bits,
                             const std::string& mode);

// out[..., i] = silu(halves[..., i]) · halves[..., width + i], width = out.shape(-1): the gate's
// half and the up half of a fused gate/up product's rows.
void silu_mul_halves_into(const mx::array& halves, mx::array& out);

// out = a + b, all three of one float type and shape (out may be b): a block's residual add, as
// MLX's add rounds it.
void add_into(const mx::array& a, const mx::array& b, mx::array& out);

// out = x + o_proj(heads [B, H, L, D] back into rows [B, L, H·D]): attention's output half
// (attention_output.cpp); out has x's shape and type.
void attention_output_into(const mx::array& x, const mx::array& heads, const mx::array& w, const mx::array& scales,
                           const mx::array& biases, mx::array& out, int group, int bits);

// Rows [B, H, L, D] at `from` (of `type`; row (b, h, l) at b·strides[0] + h·strides[1] +
// l·strides[2] elements, its D values contiguous) quantized as mx::quantize does, bit for bit, into
// a quantized KV cache's codes, scales and biases buffers [B, H, T, ·] (buffers[0..2]) at column
// `at` (kv_quantized_write.cpp).
void quantize_rows_into(const char* from, mx::Dtype type, const mx::Strides& strides, const mx::Shape& shape,
                        mx::array* buffers, int at, int group, int bits);

// grown [B, H, n + L, D] = the float tail [B, H, n, D] (row-contiguous), then rows [B, H, L, D] at
// `from` (read as quantize_rows_into reads them) converted to grown's type as MLX's astype rounds.
void append_rows_into(const mx::array& tail, const char* from, mx::Dtype type, const mx::Strides& strides,
                      const mx::Shape& shape, mx::array& grown);

// Attention's settings, as the Attention primitive keeps them.
struct AttentionSpec {
  float scale;
  bool causal, has_mask, has_sinks;

  bool operator==(const AttentionSpec&) const = default;
};

// out [B, Hq, Lq, Dv] (float32) = attention over in = {q (float32, row-contiguous), k, v, then
// the mask and the sinks (float32, row-contiguous) where the spec has them}: keys, values and
// mask are read through their strides (attention.cpp).
void attention_into(const std::vector<mx::array>& in, mx::array& out, const AttentionSpec& spec);

// The settings of our Attention primitive where `a` is its (unevaluated) output.
std::optional<AttentionSpec> attention_spec(const mx::array& a);

// Attention on a quantized KV cache's settings, as the QuantizedAttention primitive keeps them.
struct QuantizedAttentionSpec {
  float scale;
  bool causal, has_mask, has_sinks, channel_keys;
  int group, bits;
  // The positions held, where the buffers hold more (a cache's whole buffers); 0: all the values'.
  int kv_len = 0;

  bool operator==(const QuantizedAttentionSpec&) const = default;
};

// out [B, Hq, Lq, Dv] (float32) = attention over in = {q (float32, row-contiguous), the keys'
// codes, scales and biases, the values' likewise, then the keys' float tail, the mask and the
// sinks (float32, row-contiguous) where the spec has them}: the rest is read through its strides
// (quantized_attention.cpp).
void quantized_attention_into(const std::vector<mx::array>& in, mx::array& out, const QuantizedAttentionSpec& spec);

// The settings of our QuantizedAttention primitive where `a` is its (unevaluated) output.
std::optional<QuantizedAttentionSpec> quantized_attention_spec(const mx::array& a);

// A rotation's settings, as the Rope primitive keeps them.
struct RopeSpec {
  int dims;
  bool traditional;
  float base;  // when there are no frequencies
  float scale;
  int offset;  // when there is no offset array
  bool offset_array, freqs;
};

// out [B, H, L, D] (row-contiguous) = rope(x), x of out's type read from `data` as `shape`
// [B, H, L, D] through `strides` (elements); offsets (int32, one per batch row or one) and freqs
// (float32) when the spec says so.
// Whether our RoPE takes x [B, H, L, D] with these settings (else kernels::rope builds MLX's op).
bool rope_covers(const mx::array& x, int dims, const std::optional<float>& base,
                 const std::variant<int, mx::array>& offset, const std::optional<mx::array>& freqs);

void rope_into(const void* data, const mx::Shape& shape, const mx::Strides& strides, const RopeSpec& spec,
               const mx::array* offsets, const mx::array* freqs, mx::array& out);

}  // namespace kernels
