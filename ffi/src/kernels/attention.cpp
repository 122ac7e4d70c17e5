// The Attention primitive: MLX's graph node for our attention kernel. Keys and values are read
// in place through their strides (the KV cache hands over views of a larger buffer), so a
// decode step copies nothing; the work is split over our pool by key/value head, query rows
// and, when that leaves threads idle (decode), by ranges of keys merged afterwards.
#include "kernels.h"

#include <memory>
#include <vector>

#include "attention_kernel.h"
#include "bodies.h"
#include "attention_tiles.h"
#include "isa.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

namespace kernels {
namespace {


AttendTile tile_for(Isa isa) {
  switch (isa) {
#if defined(KERNELS_HAVE_AVX512)
    case Isa::avx512: return attend_tile_avx512;
#endif
#if defined(KERNELS_HAVE_AVX2)
    case Isa::avx2: return attend_tile_avx2;
#endif
#if defined(KERNELS_HAVE_NEON)
    case Isa::neon: return attend_tile_neon;
#endif
    default: return attend_tile_portable;
  }
}

StridedView view_of(const mx::array& a) {
  StridedView v{a.data<void>(), element_of(a.dtype()), {}};
  for (int i = 0; i < 4; ++i) v.stride[i] = a.strides()[i];
  return v;
}

void run(const AttentionProblem& p) {
  const AttendTile attend = tile_for(best_isa());
  run_attention_tiles(p, [&](const AttentionTile& tile, float* partial) { attend(p, tile, partial); });
}

class Attention : public mx::UnaryPrimitive {
 public:
  Attention(mx::Stream stream, AttentionSpec spec) : mx::UnaryPrimitive(stream), spec_(spec) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    // The arrays are captured by value: their buffers stay alive until the stream runs this.
    std::vector<mx::array> held = inputs;
    held[0] = row_contiguous(held[0], stream());  // the queries; keys and values are read through their strides
    if (spec_.has_sinks) held.back() = row_contiguous(held.back(), stream());
    queue_task(stream(), {out},
               [inputs = std::move(held), out = out, spec = spec_]() mutable { attention_into(inputs, out, spec); });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::Attention] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::Attention"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return spec_ == static_cast<const Attention&>(other).spec_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape shape = inputs[0].shape();
    shape.back() = inputs[2].shape(3);
    return {shape};
  }

  const AttentionSpec& spec() const { return spec_; }

 private:
  AttentionSpec spec_;
};

bool supported(const mx::array& q, const mx::array& k, const mx::array& v, const std::string& mask_mode,
               const std::optional<mx::array>& mask, const std::optional<mx::array>& sinks) {
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4) return false;
  if (sinks && (sinks->ndim() != 1 || sinks->shape(0) != q.shape(1) || !float_type(sinks->dtype()))) return false;
  if (!float_type(q.dtype()) || !float_type(k.dtype()) || !float_type(v.dtype())) return false;
  if (mask_mode != "" && mask_mode != "causal" && mask_mode != "array") return false;
  if (mask && (mask_mode == "causal" || mask->ndim() > 4 || !(mask->dtype() == mx::bool_ || float_type(mask->dtype())))) {
    return false;
  }
  const int B = q.shape(0), Hq = q.shape(1), D = q.shape(3), Hkv = k.shape(1), Lk = k.shape(2);
  return B > 0 && Hkv > 0 && Hq % Hkv == 0 && Lk > 0 && q.shape(2) > 0 && k.shape(0) == B && v.shape(0) == B &&
         v.shape(1) == Hkv && v.shape(2) == Lk && k.shape(3) == D && (mask_mode != "causal" || q.shape(2) <= Lk);
}

}  // namespace

void attention_into(const std::vector<mx::array>& in, mx::array& out, const AttentionSpec& spec) {
  const mx::array &q = in[0], &k = in[1], &v = in[2];
  AttentionProblem p{};
  p.batch = q.shape(0);
  p.q_heads = q.shape(1);
  p.q_len = q.shape(2);
  p.dim = q.shape(3);
  p.kv_heads = k.shape(1);
  p.kv_len = k.shape(2);
  p.value_dim = v.shape(3);
  p.scale = spec.scale;
  p.causal = spec.causal;
  p.q = q.data<float>();
  p.keys = view_of(k);
  p.values = view_of(v);
  p.has_mask = spec.has_mask;
  if (spec.has_mask) {
    p.mask = view_of(in[3]);
    p.bool_mask = in[3].dtype() == mx::bool_;
  }
  p.sinks = spec.has_sinks ? in.back().data<float>() : nullptr;
  p.out = out.data<float>();
  run(p);
}

std::optional<AttentionSpec> attention_spec(const mx::array& a) {
  if (!a.has_primitive()) return std::nullopt;
  const auto* attention = dynamic_cast<const Attention*>(&a.primitive());
  return attention ? std::optional(attention->spec()) : std::nullopt;
}

mx::array scaled_dot_product_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                                       const std::string& mask_mode, const std::optional<mx::array>& mask,
                                       const std::optional<mx::array>& sinks) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  if (!enabled_on(stream) || !supported(q, k, v, mask_mode, mask, sinks)) {
    return mx::fast::scaled_dot_product_attention(q, k, v, scale, mask_mode, mask, sinks);
  }
  const int B = q.shape(0), Hq = q.shape(1), Lq = q.shape(2), Lk = k.shape(2);
  std::vector<mx::array> inputs = {mx::astype(q, mx::float32), k, v};
  if (mask) {
    const mx::array m = mx::broadcast_to(*mask, {B, Hq, Lq, Lk});
    inputs.push_back(m.dtype() == mx::bool_ ? m : mx::astype(m, mx::float32));
  }
  if (sinks) inputs.push_back(mx::astype(*sinks, mx::float32));
  mx::array out({B, Hq, Lq, v.shape(3)}, mx::float32,
                std::make_shared<Attention>(
                    stream, AttentionSpec{scale, mask_mode == "causal", mask.has_value(), sinks.has_value()}),
                std::move(inputs));
  return q.dtype() == mx::float32 ? out : mx::astype(out, q.dtype());
}

}  // namespace kernels
