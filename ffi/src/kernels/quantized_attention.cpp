// The QuantizedAttention primitive: attention on a quantized KV cache (keys and values as MLX
// affine-quantizes them) in one graph node, read in place at 4 or 8 bits. Without it (a GPU,
// other layouts, MLX_KERNELS=mlx) the same attention is composed of MLX's ops as mlx-lm's
// quantized_scaled_dot_product_attention does: two batched quantized matmuls around a softmax.
#include "kernels.h"

#include <memory>
#include <vector>

#include "attention_tiles.h"
#include "isa.h"
#include "mlx/backend/cpu/copy.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "quantized_attention_kernel.h"

namespace kernels {
namespace {

QuantizedAttendTile tile_for(Isa isa) {
  switch (isa) {
#if defined(KERNELS_HAVE_AVX512)
    case Isa::avx512: return quantized_attend_tile_avx512;
#endif
#if defined(KERNELS_HAVE_AVX2)
    case Isa::avx2: return quantized_attend_tile_avx2;
#endif
#if defined(KERNELS_HAVE_NEON)
    case Isa::neon: return quantized_attend_tile_neon;
#endif
    default: return quantized_attend_tile_portable;
  }
}

bool float_type(mx::Dtype t) { return t == mx::float32 || t == mx::float16 || t == mx::bfloat16; }

Element element_of(mx::Dtype t) {
  if (t == mx::float16) return Element::f16;
  if (t == mx::bfloat16) return Element::bf16;
  return Element::f32;
}

QuantizedRows rows_of(const mx::array& packed, const mx::array& scales, const mx::array& biases) {
  QuantizedRows q{packed.data<uint8_t>(), scales.data<void>(), biases.data<void>(), {}, {}, {}};
  for (int i = 0; i < 3; ++i) {
    q.packed_stride[i] = packed.strides()[i] * int64_t(packed.itemsize());
    q.scale_stride[i] = scales.strides()[i];
    q.bias_stride[i] = biases.strides()[i];
  }
  return q;
}

// Inputs: q (fp32, row-contiguous), keys' packed/scales/biases, values' likewise, then the mask
// ([B, Hq, Lq, Lk] broadcast, bool or fp32) and the sinks ([Hq] fp32) when present.
class QuantizedAttention : public mx::UnaryPrimitive {
 public:
  QuantizedAttention(mx::Stream stream, float scale, bool causal, bool has_mask, bool has_sinks, int group, int bits)
      : mx::UnaryPrimitive(stream),
        scale_(scale),
        causal_(causal),
        has_mask_(has_mask),
        has_sinks_(has_sinks),
        group_(group),
        bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& given, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    // The kernel reads each row of codes, scales and biases as contiguous: a part whose last
    // axis is strided (never the cache's views) is copied first.
    std::vector<mx::array> inputs = given;
    for (int i = 1; i <= 6; ++i) {
      if (inputs[i].strides()[3] != 1 && inputs[i].shape(3) > 1) {
        inputs[i] = mx::contiguous_copy_cpu(inputs[i], stream());
        encoder.add_temporary(inputs[i]);
      }
    }
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    // The arrays are captured by value: their buffers stay alive until the stream runs this.
    encoder.dispatch([inputs = std::move(inputs), out = out, scale = scale_, causal = causal_, has_mask = has_mask_,
                      has_sinks = has_sinks_, group = group_, bits = bits_]() mutable {
      const mx::array& q = inputs[0];
      QuantizedAttentionProblem p{};
      p.batch = q.shape(0);
      p.q_heads = q.shape(1);
      p.q_len = q.shape(2);
      p.dim = q.shape(3);
      p.kv_heads = inputs[1].shape(1);
      p.kv_len = inputs[1].shape(2);
      p.value_dim = inputs[4].shape(3) * 32 / bits;
      p.bits = bits;
      p.group = group;
      p.scale = scale;
      p.causal = causal;
      p.q = q.data<float>();
      p.keys = rows_of(inputs[1], inputs[2], inputs[3]);
      p.values = rows_of(inputs[4], inputs[5], inputs[6]);
      p.scale_type = element_of(inputs[2].dtype());
      size_t next = 7;
      p.has_mask = has_mask;
      if (has_mask) {
        const mx::array& mask = inputs[next++];
        p.mask = StridedView{mask.data<void>(), Element::f32, {}};
        for (int i = 0; i < 4; ++i) p.mask.stride[i] = mask.strides()[i];
        p.bool_mask = mask.dtype() == mx::bool_;
      }
      p.sinks = has_sinks ? inputs[next].data<float>() : nullptr;
      p.out = out.data<float>();
      const QuantizedAttendTile attend = tile_for(best_isa());
      run_attention_tiles(p, [&](const AttentionTile& tile, float* partial) { attend(p, tile, partial); });
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::QuantizedAttention] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::QuantizedAttention"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const QuantizedAttention&>(other);
    return scale_ == o.scale_ && causal_ == o.causal_ && has_mask_ == o.has_mask_ && has_sinks_ == o.has_sinks_ &&
           group_ == o.group_ && bits_ == o.bits_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape shape = inputs[0].shape();
    shape.back() = inputs[4].shape(3) * 32 / bits_;
    return {shape};
  }

 private:
  float scale_;
  bool causal_, has_mask_, has_sinks_;
  int group_, bits_;
};

// One side (keys or values) [B, Hkv, T, ·] as the kernel reads it; returns its row width.
bool quantized_side(const QuantizedKV& side, int B, int Hkv, int T, int group, int bits, int& width) {
  const auto& [packed, scales, biases] = side;
  if (packed.dtype() != mx::uint32 || packed.ndim() != 4 || scales.ndim() != 4 || !float_type(scales.dtype())) {
    return false;
  }
  width = packed.shape(3) * 32 / bits;
  const mx::Shape rows = {B, Hkv, T};
  for (const mx::array* part : {&packed, &scales, &biases}) {
    if (mx::Shape(part->shape().begin(), part->shape().begin() + 3) != rows) return false;
  }
  return biases.dtype() == scales.dtype() && biases.shape() == scales.shape() && width % group == 0 &&
         scales.shape(3) == width / group && width / group <= 64;
}

bool supported(const mx::array& q, const QuantizedKV& keys, const QuantizedKV& values, const std::string& mask_mode,
               const std::optional<mx::array>& mask, const std::optional<mx::array>& sinks, int group, int bits) {
  if ((bits != 4 && bits != 8) || (group != 32 && group != 64 && group != 128)) return false;
  if (q.ndim() != 4 || !float_type(q.dtype()) || q.size() == 0) return false;
  if (mask_mode != "" && mask_mode != "causal" && mask_mode != "array") return false;
  if (mask && (mask_mode == "causal" || mask->ndim() > 4 || !(mask->dtype() == mx::bool_ || float_type(mask->dtype())))) {
    return false;
  }
  const auto& packed = std::get<0>(keys);
  if (packed.ndim() != 4) return false;
  const int B = q.shape(0), Hq = q.shape(1), Lq = q.shape(2), Hkv = packed.shape(1), T = packed.shape(2);
  int key_width = 0, value_width = 0;
  if (Hkv <= 0 || Hq % Hkv != 0 || T <= 0 || !quantized_side(keys, B, Hkv, T, group, bits, key_width) ||
      !quantized_side(values, B, Hkv, T, group, bits, value_width)) {
    return false;
  }
  if (std::get<1>(keys).dtype() != std::get<1>(values).dtype()) return false;
  if (sinks && (sinks->ndim() != 1 || sinks->shape(0) != Hq || !float_type(sinks->dtype()))) return false;
  return key_width == q.shape(3) && (mask_mode != "causal" || Lq <= T);
}

// The same attention in MLX's ops: grouped-query heads share their key/value head through a
// broadcast axis instead of a repeat; the sink joins the softmax as a first column, dropped after.
mx::array composed(const mx::array& q, const QuantizedKV& keys, const QuantizedKV& values, float scale,
                   const std::string& mask_mode, const std::optional<mx::array>& mask,
                   const std::optional<mx::array>& sinks, int group, int bits) {
  const int B = q.shape(0), Hq = q.shape(1), L = q.shape(2), D = q.shape(3);
  const int Hkv = std::get<0>(keys).shape(1), repeats = Hq / Hkv;
  mx::array scaled = mx::multiply(q, mx::array(scale, q.dtype()));
  auto parts = [&](const QuantizedKV& side) {
    std::vector<mx::array> p = {std::get<0>(side), std::get<1>(side), std::get<2>(side)};
    if (repeats > 1) {
      for (auto& t : p) t = mx::expand_dims(t, -3);
    }
    return p;
  };
  if (repeats > 1) scaled = mx::reshape(scaled, {B, Hkv, repeats, L, D});
  const auto k = parts(keys), v = parts(values);
  mx::array scores = mx::quantized_matmul(scaled, k[0], k[1], k[2], true, group, bits, "affine");
  const int total = scores.shape(-1);
  if (mask_mode == "causal") {
    // The L newest positions each see themselves and everything before.
    const mx::array rows = mx::reshape(mx::arange(total - L, total, mx::int32), {L, 1});
    const mx::array columns = mx::reshape(mx::arange(0, total, mx::int32), {1, total});
    scores = mx::where(mx::greater_equal(rows, columns), scores, mx::array(-INFINITY, scores.dtype()));
  } else if (mask) {
    const mx::array m = repeats > 1 ? mx::expand_dims(*mask, -3) : *mask;
    scores = m.dtype() == mx::bool_ ? mx::where(m, scores, mx::array(-INFINITY, scores.dtype()))
                                    : mx::add(scores, mx::astype(m, scores.dtype()));
  }
  mx::array weights = scores;
  if (sinks) {
    const mx::Shape per_head = repeats > 1 ? mx::Shape{Hkv, repeats, 1, 1} : mx::Shape{Hq, 1, 1};
    mx::Shape column_shape = scores.shape();
    column_shape.back() = 1;
    const mx::array column = mx::broadcast_to(mx::reshape(mx::astype(*sinks, scores.dtype()), per_head), column_shape);
    const mx::array all = mx::softmax(mx::concatenate({column, scores}, -1), -1, true);
    mx::Shape start(all.ndim(), 0), stop = all.shape();
    start.back() = 1;
    weights = mx::slice(all, start, stop);
  } else {
    weights = mx::softmax(scores, -1, true);
  }
  mx::array out = mx::quantized_matmul(weights, v[0], v[1], v[2], false, group, bits, "affine");
  return repeats > 1 ? mx::reshape(out, {B, Hq, L, out.shape(-1)}) : out;
}

}  // namespace

mx::array quantized_scaled_dot_product_attention(const mx::array& q, const QuantizedKV& keys,
                                                 const QuantizedKV& values, float scale, const std::string& mask_mode,
                                                 const std::optional<mx::array>& mask,
                                                 const std::optional<mx::array>& sinks, int group, int bits) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  if (!enabled_on(stream) || !supported(q, keys, values, mask_mode, mask, sinks, group, bits)) {
    return composed(q, keys, values, scale, mask_mode, mask, sinks, group, bits);
  }
  const int B = q.shape(0), Hq = q.shape(1), Lq = q.shape(2), Lk = std::get<0>(keys).shape(2);
  const int value_width = std::get<0>(values).shape(3) * 32 / bits;
  std::vector<mx::array> inputs = {mx::contiguous(mx::astype(q, mx::float32)),
                                   std::get<0>(keys),
                                   std::get<1>(keys),
                                   std::get<2>(keys),
                                   std::get<0>(values),
                                   std::get<1>(values),
                                   std::get<2>(values)};
  if (mask) {
    const mx::array m = mx::broadcast_to(*mask, {B, Hq, Lq, Lk});
    inputs.push_back(m.dtype() == mx::bool_ ? m : mx::astype(m, mx::float32));
  }
  if (sinks) inputs.push_back(mx::contiguous(mx::astype(*sinks, mx::float32)));
  mx::array out({B, Hq, Lq, value_width}, mx::float32,
                std::make_shared<QuantizedAttention>(stream, scale, mask_mode == "causal", mask.has_value(),
                                                     sinks.has_value(), group, bits),
                std::move(inputs));
  return q.dtype() == mx::float32 ? out : mx::astype(out, q.dtype());
}

}  // namespace kernels
