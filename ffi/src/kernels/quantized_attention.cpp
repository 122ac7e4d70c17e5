// The QuantizedAttention primitive: attention on a quantized KV cache (keys and values as MLX
// affine-quantizes them) in one graph node, read in place at 4 or 8 bits. Without it (a GPU,
// other layouts, MLX_KERNELS=mlx) the same attention is composed of MLX's ops as mlx-lm's
// quantized_scaled_dot_product_attention does: two batched quantized matmuls around a softmax.
#include "kernels.h"

#include <cstring>
#include <memory>
#include <vector>

#include "attention_tiles.h"
#include "bodies.h"
#include "isa.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "quantized_attention_kernel.h"

namespace kernels {
namespace {

QuantizedAttendTile tile_for(Isa isa) {
#if defined(KERNELS_HAVE_VNNI)
  if (has_avx512_vnni()) return quantized_attend_tile_vnni;
#endif
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

// Part `a` [B, Hkv, T, ·] with each row contiguous, and its strides on axes 0-2 (in elements):
// in place, or, for a part strided along its rows (never the cache's views), copied into `copy`.
const void* rows_of(const mx::array& a, std::vector<char>& copy, int64_t strides[3]) {
  for (int i = 0; i < 3; ++i) strides[i] = a.strides()[i];
  if (a.strides()[3] == 1 || a.shape(3) == 1) return a.data<void>();
  const size_t item = a.itemsize();
  copy.resize(a.size() * item);
  char* out = copy.data();
  const char* in = a.data<char>();
  for (int b = 0; b < a.shape(0); ++b)
    for (int h = 0; h < a.shape(1); ++h)
      for (int t = 0; t < a.shape(2); ++t)
        for (int e = 0; e < a.shape(3); ++e, out += item) {
          std::memcpy(out, in + (b * a.strides()[0] + h * a.strides()[1] + t * a.strides()[2] + e * a.strides()[3]) * item,
                      item);
        }
  strides[2] = a.shape(3);
  strides[1] = strides[2] * a.shape(2);
  strides[0] = strides[1] * a.shape(1);
  return copy.data();
}

// Keys or values from their three parts; `copies` holds what had to be made row-contiguous.
QuantizedRows quantized_rows(const mx::array& packed, const mx::array& scales, const mx::array& biases,
                             std::vector<char> copies[3]) {
  QuantizedRows q{};
  q.packed = static_cast<const uint8_t*>(rows_of(packed, copies[0], q.packed_stride));
  for (int64_t& stride : q.packed_stride) stride *= int64_t(packed.itemsize());  // in bytes
  q.scales = rows_of(scales, copies[1], q.scale_stride);
  q.biases = rows_of(biases, copies[2], q.bias_stride);
  return q;
}

// Inputs: as quantized_attention_into takes them; q and the sinks are made row-contiguous when
// evaluated, the cache's parts are read through their strides.
class QuantizedAttention : public mx::UnaryPrimitive {
 public:
  QuantizedAttention(mx::Stream stream, QuantizedAttentionSpec spec) : mx::UnaryPrimitive(stream), spec_(spec) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    // The arrays are captured by value: their buffers stay alive until the stream runs this.
    std::vector<mx::array> held = inputs;
    held[0] = row_contiguous(held[0], stream());
    if (spec_.has_sinks) held.back() = row_contiguous(held.back(), stream());
    encoder.dispatch([inputs = std::move(held), out = out, spec = spec_]() mutable {
      quantized_attention_into(inputs, out, spec);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::QuantizedAttention] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::QuantizedAttention"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return spec_ == static_cast<const QuantizedAttention&>(other).spec_;
  }

  const QuantizedAttentionSpec& spec() const { return spec_; }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape shape = inputs[0].shape();
    shape.back() = inputs[4].shape(3) * 32 / spec_.bits;
    return {shape};
  }

 private:
  QuantizedAttentionSpec spec_;
};

// Whether `part` [B, Hkv, ·, ·] holds `positions` on axis 2: exactly, or (a cache's whole
// buffer) at least.
bool holds(const mx::array& part, int B, int Hkv, int positions, bool exact) {
  return part.shape(0) == B && part.shape(1) == Hkv && (exact ? part.shape(2) == positions : part.shape(2) >= positions);
}

// One side (keys or values) [B, Hkv, T, ·] as the kernel reads it; returns its row width.
bool quantized_side(const QuantizedKV& side, int B, int Hkv, int T, bool exact, int group, int bits, int& width) {
  const auto& [packed, scales, biases] = side;
  if (packed.dtype() != mx::uint32 || packed.ndim() != 4 || scales.ndim() != 4 || biases.ndim() != 4 ||
      !float_type(scales.dtype())) {
    return false;
  }
  width = packed.shape(3) * 32 / bits;
  for (const mx::array* part : {&packed, &scales, &biases}) {
    if (!holds(*part, B, Hkv, T, exact)) return false;
  }
  return biases.dtype() == scales.dtype() && biases.shape(3) == scales.shape(3) && width % group == 0 &&
         scales.shape(3) == width / group && width / group <= 64;
}

// Keys quantized per channel [B, Hkv, ·]: codes of T - tail positions (whole groups), scales and biases per group
// and channel, the float tail; all of width `dim`.
bool channel_keys_supported(const QuantizedKV& keys, const mx::array& tail, int B, int Hkv, int T, bool exact, int dim,
                            int group, int bits) {
  const auto& [packed, scales, biases] = keys;
  const int coded = T - (tail.ndim() == 4 ? tail.shape(2) : 0);
  if (packed.dtype() != mx::uint32 || packed.ndim() != 4 || scales.ndim() != 4 || biases.ndim() != 4 ||
      tail.ndim() != 4) {
    return false;
  }
  if (!float_type(scales.dtype()) || biases.dtype() != scales.dtype() || !float_type(tail.dtype())) return false;
  if (coded < 0 || coded % group != 0 || dim % 32 != 0 || packed.shape(3) * 32 / bits != dim) return false;
  return holds(packed, B, Hkv, coded, exact) && holds(scales, B, Hkv, coded / group, exact) &&
         scales.shape(3) == dim && biases.shape() == scales.shape() &&
         tail.shape() == mx::Shape{B, Hkv, T - coded, dim} && (coded == 0 || packed.strides()[3] == 1);
}

// With `length`, the positions attended to, the buffers holding at least them; else all the values'.
bool supported(const mx::array& q, const QuantizedKV& keys, const QuantizedKV& values, const std::string& mask_mode,
               const std::optional<mx::array>& mask, const std::optional<mx::array>& sinks,
               const std::optional<mx::array>& key_tail, int group, int bits, std::optional<int> length) {
  if ((bits != 4 && bits != 8) || (group != 32 && group != 64 && group != 128)) return false;
  if (q.ndim() != 4 || !float_type(q.dtype()) || q.size() == 0) return false;
  if (mask_mode != "" && mask_mode != "causal" && mask_mode != "array") return false;
  if (mask && (mask_mode == "causal" || mask->ndim() > 4 || !(mask->dtype() == mx::bool_ || float_type(mask->dtype())))) {
    return false;
  }
  const auto& packed = std::get<0>(values);
  if (packed.ndim() != 4) return false;
  const int B = q.shape(0), Hq = q.shape(1), Lq = q.shape(2), Hkv = packed.shape(1), T = length.value_or(packed.shape(2));
  const bool exact = !length;
  int key_width = q.shape(3), value_width = 0;
  if (Hkv <= 0 || Hq % Hkv != 0 || T <= 0 || !quantized_side(values, B, Hkv, T, exact, group, bits, value_width))
    return false;
  if (key_tail ? !channel_keys_supported(keys, *key_tail, B, Hkv, T, exact, key_width, group, bits)
               : !quantized_side(keys, B, Hkv, T, exact, group, bits, key_width)) {
    return false;
  }
  if (std::get<1>(keys).dtype() != std::get<1>(values).dtype()) return false;
  if (sinks && (sinks->ndim() != 1 || sinks->shape(0) != Hq || !float_type(sinks->dtype()))) return false;
  return key_width == q.shape(3) && (mask_mode != "causal" || Lq <= T);
}

// Keys quantized per channel as float [B, Hkv, T, D]: each group's codes · scales + biases, then the tail.
mx::array channel_keys_as_float(const QuantizedKV& keys, const mx::array& tail, int group, int bits) {
  const auto& [packed, scales, biases] = keys;
  if (packed.shape(2) == 0) return mx::astype(tail, mx::float32);
  const int B = packed.shape(0), H = packed.shape(1), coded = packed.shape(2), D = tail.shape(3);
  // The codes as floats: MLX's dequantization with unit scales and zero biases.
  const mx::Shape unit = {B, H, coded, D / group};
  mx::array codes = mx::dequantize(packed, mx::ones(unit, mx::float32), mx::zeros(unit, mx::float32), group, bits,
                                   "affine", std::nullopt, mx::float32);
  const mx::Shape grouped = {B, H, coded / group, group, D}, per_channel = {B, H, coded / group, 1, D};
  codes = mx::add(mx::multiply(mx::reshape(codes, grouped), mx::reshape(mx::astype(scales, mx::float32), per_channel)),
                  mx::reshape(mx::astype(biases, mx::float32), per_channel));
  return mx::concatenate({mx::reshape(codes, {B, H, coded, D}), mx::astype(tail, mx::float32)}, 2);
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

void quantized_attention_into(const std::vector<mx::array>& inputs, mx::array& out, const QuantizedAttentionSpec& spec) {
  const mx::array& q = inputs[0];
  QuantizedAttentionProblem p{};
  p.batch = q.shape(0);
  p.q_heads = q.shape(1);
  p.q_len = q.shape(2);
  p.dim = q.shape(3);
  p.kv_heads = inputs[4].shape(1);
  // The values' (or the spec's, from a cache's whole buffers): per-channel keys code only whole groups.
  p.kv_len = spec.kv_len > 0 ? spec.kv_len : inputs[4].shape(2);
  p.value_dim = inputs[4].shape(3) * 32 / spec.bits;
  p.bits = spec.bits;
  p.group = spec.group;
  p.scale = spec.scale;
  p.causal = spec.causal;
  p.q = q.data<float>();
  std::vector<char> copies[6];
  p.keys = quantized_rows(inputs[1], inputs[2], inputs[3], copies);
  p.values = quantized_rows(inputs[4], inputs[5], inputs[6], copies + 3);
  p.scale_type = element_of(inputs[2].dtype());
  size_t next = 7;
  p.channel_keys = spec.channel_keys;
  if (spec.channel_keys) {
    const mx::array& tail = inputs[next++];
    p.tail = StridedView{tail.data<void>(), element_of(tail.dtype()), {}};
    for (int i = 0; i < 4; ++i) p.tail.stride[i] = tail.strides()[i];
    p.tail_start = p.kv_len - tail.shape(2);
  }
  p.has_mask = spec.has_mask;
  if (spec.has_mask) {
    const mx::array& mask = inputs[next++];
    p.mask = StridedView{mask.data<void>(), Element::f32, {}};
    for (int i = 0; i < 4; ++i) p.mask.stride[i] = mask.strides()[i];
    p.bool_mask = mask.dtype() == mx::bool_;
  }
  p.sinks = spec.has_sinks ? inputs[next].data<float>() : nullptr;
  p.out = out.data<float>();
  const QuantizedAttendTile attend = tile_for(best_isa());
  run_attention_tiles(p, [&](const AttentionTile& tile, float* partial) { attend(p, tile, partial); });
}

std::optional<QuantizedAttentionSpec> quantized_attention_spec(const mx::array& a) {
  if (!a.has_primitive()) return std::nullopt;
  const auto* attention = dynamic_cast<const QuantizedAttention*>(&a.primitive());
  return attention ? std::optional(attention->spec()) : std::nullopt;
}

mx::array quantized_scaled_dot_product_attention(const mx::array& q, const QuantizedKV& keys,
                                                 const QuantizedKV& values, float scale, const std::string& mask_mode,
                                                 const std::optional<mx::array>& mask,
                                                 const std::optional<mx::array>& sinks,
                                                 const std::optional<mx::array>& key_tail, int group, int bits,
                                                 std::optional<int> length) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  const bool ours = enabled_on(stream) && supported(q, keys, values, mask_mode, mask, sinks, key_tail, group, bits, length);
  if (length && !ours) {
    // MLX's ops (or a layout of ours that wants exact shapes) on the positions held: the buffers' first ones.
    const int coded = *length - (key_tail ? key_tail->shape(2) : 0);
    const auto first = [](const QuantizedKV& side, int rows, int groups) {
      const auto& [packed, scales, biases] = side;
      const auto part = [](const mx::array& a, int n) {
        return mx::slice(a, {0, 0, 0, 0}, {a.shape(0), a.shape(1), n, a.shape(3)});
      };
      return QuantizedKV{part(packed, rows), part(scales, groups), part(biases, groups)};
    };
    const QuantizedKV held_keys = key_tail ? first(keys, coded, coded / group) : first(keys, *length, *length);
    return quantized_scaled_dot_product_attention(q, held_keys, first(values, *length, *length), scale, mask_mode,
                                                  mask, sinks, key_tail, group, bits);
  }
  if (!ours) {
    if (!key_tail) return composed(q, keys, values, scale, mask_mode, mask, sinks, group, bits);
    // Elsewhere (a GPU, MLX_KERNELS=mlx) per-channel keys are decoded, and attention is MLX's on floats.
    const auto& [packed, scales, biases] = values;
    const mx::array k = mx::astype(channel_keys_as_float(keys, *key_tail, group, bits), q.dtype());
    const mx::array v = mx::dequantize(packed, scales, biases, group, bits, "affine", std::nullopt, q.dtype());
    return scaled_dot_product_attention(q, k, v, scale, mask_mode, mask, sinks);
  }
  const int B = q.shape(0), Hq = q.shape(1), Lq = q.shape(2), Lk = length.value_or(std::get<0>(values).shape(2));
  const int value_width = std::get<0>(values).shape(3) * 32 / bits;
  std::vector<mx::array> inputs = {mx::astype(q, mx::float32),
                                   std::get<0>(keys),
                                   std::get<1>(keys),
                                   std::get<2>(keys),
                                   std::get<0>(values),
                                   std::get<1>(values),
                                   std::get<2>(values)};
  if (key_tail) inputs.push_back(*key_tail);
  if (mask) {
    const mx::array m = mx::broadcast_to(*mask, {B, Hq, Lq, Lk});
    inputs.push_back(m.dtype() == mx::bool_ ? m : mx::astype(m, mx::float32));
  }
  if (sinks) inputs.push_back(mx::astype(*sinks, mx::float32));
  mx::array out({B, Hq, Lq, value_width}, mx::float32,
                std::make_shared<QuantizedAttention>(
                    stream, QuantizedAttentionSpec{scale, mask_mode == "causal", mask.has_value(), sinks.has_value(),
                                                   key_tail.has_value(), group, bits, length.value_or(0)}),
                std::move(inputs));
  return q.dtype() == mx::float32 ? out : mx::astype(out, q.dtype());
}

}  // namespace kernels
