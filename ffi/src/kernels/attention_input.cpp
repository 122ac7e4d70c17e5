// The input half of attention, x [B, L, ·] → rotated queries [B, H, L, D], rotated keys and
// values [B, Hkv, L, D] (RMSNorm, the fused q/k/v product, the split into heads, RoPE on the
// queries and keys), as one primitive. Composed, it is a dozen graph nodes per layer (norm,
// product, three slices, three reshapes, three transposes, two rotations); here one task runs
// the same kernels back to back, with the same rounding of every intermediate, so the result
// is the composition's.
#include <cstring>
#include <memory>
#include <vector>

#include "bodies.h"
#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

namespace kernels {
namespace {

// The composition's intermediates, as our kernels (or MLX's ops) build them.
struct Composition {
  mx::array normed, projected, queries, keys, values;
};

Composition compose(const mx::array& x, const mx::array& norm_weight, float eps, const QuantizedLinear& qkv,
                    const AttentionHeads& heads, const Rotation& rotation) {
  mx::array normed = rms_norm(x, norm_weight, eps);
  mx::array all = quantized_matmul(normed, qkv.weight, qkv.scales, qkv.biases, true, qkv.group, qkv.bits, "affine");
  const int B = all.shape(0), L = all.shape(1);
  const int queries = heads.heads * heads.head_dim, keys = heads.kv_heads * heads.head_dim;
  const auto split = [&](int start, int stop, int n) {
    mx::array part = mx::slice(all, {0, 0, start}, {B, L, stop});
    return mx::transpose(mx::reshape(part, {B, L, n, -1}), {0, 2, 1, 3});
  };
  const auto rotate = [&](const mx::array& t) {
    return rope(t, rotation.dims, rotation.traditional, rotation.base, rotation.scale, rotation.offset, rotation.freqs);
  };
  return {normed, all, rotate(split(0, queries, heads.heads)), rotate(split(queries, queries + keys, heads.kv_heads)),
          split(queries + keys, all.shape(2), heads.kv_heads)};
}

struct InputSpec {
  float eps;
  int group, bits;
  AttentionHeads heads;
  RopeSpec rope;
  mx::Dtype normed, projected;
};

// inputs: x, the norm's weight, the product's weight, scales, biases, then the rotation's
// offsets and frequencies where the spec has them. outputs: queries, keys, values.
void run(const std::vector<mx::array>& in, std::vector<mx::array>& out, const InputSpec& spec) {
  const mx::array& x = in[0];
  const int B = x.shape(0), L = x.shape(1), N = in[2].shape(0);
  const int H = spec.heads.heads, Hkv = spec.heads.kv_heads, D = spec.heads.head_dim;
  mx::array normed = scratch_array(x.shape(), spec.normed);
  rms_norm_into(x, &in[1], normed, spec.eps);
  mx::array all = scratch_array({B, L, N}, spec.projected);
  quantized_matmul_into(normed, in[2], in[3], in[4], all, spec.group, spec.bits);
  // Head h of row (b, l) starts at ((b·L + l)·N + first + h·D): [B, heads, L, D] through strides.
  const mx::Strides strides = {int64_t(L) * N, D, N, 1};
  const size_t item = all.itemsize();
  const char* row = all.data<char>();
  const mx::array* offsets = spec.rope.offset_array ? &in[5] : nullptr;
  const mx::array* freqs = spec.rope.freqs ? &in.back() : nullptr;
  rope_into(row, {B, H, L, D}, strides, spec.rope, offsets, freqs, out[0]);
  rope_into(row + size_t(H) * D * item, {B, Hkv, L, D}, strides, spec.rope, offsets, freqs, out[1]);
  char* values = out[2].data<char>();
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hkv; ++h)
      for (int l = 0; l < L; ++l)
        std::memcpy(values + ((size_t(b) * Hkv + h) * L + l) * D * item,
                    row + ((size_t(b) * L + l) * N + size_t(H + Hkv + h) * D) * item, D * item);
}

class AttentionInput : public mx::Primitive {
 public:
  AttentionInput(mx::Stream stream, InputSpec spec) : mx::Primitive(stream), spec_(spec) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_rows(stream(), inputs, outputs, [spec = spec_](const auto& in, auto& out) { run(in, out, spec); });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("[kernels::AttentionInput] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::AttentionInput"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const InputSpec& o = static_cast<const AttentionInput&>(other).spec_;
    const RopeSpec &r = spec_.rope, &s = o.rope;
    return spec_.eps == o.eps && spec_.group == o.group && spec_.bits == o.bits && spec_.heads.heads == o.heads.heads &&
           spec_.heads.kv_heads == o.heads.kv_heads && spec_.heads.head_dim == o.heads.head_dim &&
           spec_.normed == o.normed && spec_.projected == o.projected && r.dims == s.dims &&
           r.traditional == s.traditional && r.base == s.base && r.scale == s.scale && r.offset == s.offset &&
           r.offset_array == s.offset_array && r.freqs == s.freqs;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const int B = inputs[0].shape(0), L = inputs[0].shape(1);
    return {{B, spec_.heads.heads, L, spec_.heads.head_dim},
            {B, spec_.heads.kv_heads, L, spec_.heads.head_dim},
            {B, spec_.heads.kv_heads, L, spec_.heads.head_dim}};
  }

 private:
  InputSpec spec_;
};

}  // namespace

std::vector<mx::array> attention_input(const mx::array& x, const mx::array& norm_weight, float eps,
                                       const QuantizedLinear& qkv, const AttentionHeads& heads,
                                       const Rotation& rotation) {
  if (x.ndim() != 3) throw std::invalid_argument("[attention_input] x must be [batch, length, features]");
  if (qkv.weight.ndim() != 2 || qkv.weight.shape(0) != (heads.heads + 2 * heads.kv_heads) * heads.head_dim)
    throw std::invalid_argument("[attention_input] the q/k/v product's outputs are not the heads' queries, keys and values");
  // Built first in any case: it checks the arguments and gives every intermediate's type.
  const Composition c = compose(x, norm_weight, eps, qkv, heads, rotation);
  mx::Stream stream = mx::default_stream(mx::default_device());
  const auto* offset_array = std::get_if<mx::array>(&rotation.offset);
  const bool supported =
      x.size() > 0 && float_type(x.dtype()) && norm_weight.ndim() == 1 && norm_weight.shape(0) == x.shape(-1) &&
      float_type(norm_weight.dtype()) &&
      quantized_matmul_covers(c.normed, qkv.weight, qkv.scales, qkv.biases, true, qkv.group, qkv.bits, "affine") &&
      rope_covers(c.queries, rotation.dims, rotation.base, rotation.offset, rotation.freqs) &&
      c.queries.dtype() == c.projected.dtype() && c.keys.dtype() == c.projected.dtype();
  if (!enabled_on(stream) || !supported) return {c.queries, c.keys, c.values};
  const InputSpec spec{eps,
                       qkv.group,
                       qkv.bits,
                       heads,
                       {rotation.dims, rotation.traditional, rotation.base.value_or(0.0f), rotation.scale,
                        offset_array ? 0 : std::get<int>(rotation.offset), offset_array != nullptr,
                        rotation.freqs.has_value()},
                       c.normed.dtype(),
                       c.projected.dtype()};
  std::vector<mx::array> inputs = {x, norm_weight, qkv.weight, qkv.scales, qkv.biases};
  if (offset_array) inputs.push_back(mx::astype(mx::flatten(*offset_array), mx::int32));
  if (rotation.freqs) inputs.push_back(mx::astype(mx::contiguous(*rotation.freqs), mx::float32));
  return mx::array::make_arrays({c.queries.shape(), c.keys.shape(), c.values.shape()},
                                {c.projected.dtype(), c.projected.dtype(), c.projected.dtype()},
                                std::make_shared<AttentionInput>(stream, spec), inputs);
}

}  // namespace kernels
