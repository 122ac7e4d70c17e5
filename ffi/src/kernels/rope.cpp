// Rotary position embeddings as one primitive. On the CPU, MLX evaluates fast::rope as its
// composition (positions, frequencies, cos, sin, slices, products, concatenation): a dozen graph
// nodes per call, two calls per layer. Here the input is read through its strides (the models
// pass [B, L, H, D] transposed to [B, H, L, D] without copying) and written row-contiguous.
#include <cmath>
#include <memory>
#include <vector>

#include "kernels.h"
#include "bodies.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "thread_pool.h"

namespace kernels {
namespace {

template <typename T>
void rotate(const T* in, const mx::Shape& shape, const mx::Strides& stride, const RopeSpec& spec,
            const mx::array* offset_array, const mx::array* freqs, T* dst) {
  const int B = shape[0], H = shape[1], L = shape[2], D = shape[3], half = spec.dims / 2;
  // Per batch row: the position of its first row (one offset, or one per row of the batch).
  const int offsets = offset_array ? static_cast<int>(offset_array->size()) : 1;
  // cos/sin of position x frequency, shared by every head: [offsets][L][half].
  std::vector<float> inv_freq(half), cosines(size_t(offsets) * L * half), sines(cosines.size());
  const float log_step = static_cast<float>(std::log(spec.base) / half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = freqs ? 1.0f / freqs->data<float>()[i] : std::exp(-static_cast<float>(i) * log_step);
  }
  for (int o = 0; o < offsets; ++o) {
    const int first = offset_array ? offset_array->data<int32_t>()[o] : spec.offset;
    for (int l = 0; l < L; ++l) {
      const float position = static_cast<float>(first + l) * spec.scale;
      for (int i = 0; i < half; ++i) {
        const float theta = position * inv_freq[i];
        cosines[(size_t(o) * L + l) * half + i] = std::cos(theta);
        sines[(size_t(o) * L + l) * half + i] = std::sin(theta);
      }
    }
  }
  // Feature pairs: (i, i + half) for the rotate-half layout, (2i, 2i + 1) for the traditional one.
  const int pair = spec.traditional ? 1 : half, step = spec.traditional ? 2 : 1;
  auto rotate_head = [&](int task) {
    const int b = task / H, h = task % H;
    const int o = offsets == 1 ? 0 : b;
    for (int l = 0; l < L; ++l) {
      const T* row = in + b * stride[0] + h * stride[1] + l * stride[2];
      T* o_row = dst + ((size_t(b) * H + h) * L + l) * D;
      const float* c = cosines.data() + (size_t(o) * L + l) * half;
      const float* s = sines.data() + (size_t(o) * L + l) * half;
      for (int i = 0; i < half; ++i) {
        const int a = i * step, z = a + pair;
        const float x1 = static_cast<float>(row[a * stride[3]]), x2 = static_cast<float>(row[z * stride[3]]);
        o_row[a] = static_cast<T>(x1 * c[i] - x2 * s[i]);
        o_row[z] = static_cast<T>(x1 * s[i] + x2 * c[i]);
      }
      for (int d = spec.dims; d < D; ++d) o_row[d] = row[d * stride[3]];
    }
  };
  // A decode step's heads (hundreds to a few thousand values, about a microsecond) cost less than
  // waking another thread for them.
  constexpr size_t kInlineValues = 1 << 14;
  if (size_t(B) * H * L * D < kInlineValues) {
    for (int task = 0; task < B * H; ++task) rotate_head(task);
  } else {
    parallel_for(B * H, [&](int task, int) { rotate_head(task); });
  }
}

}  // namespace

void rope_into(const void* data, const mx::Shape& shape, const mx::Strides& strides, const RopeSpec& spec,
               const mx::array* offsets, const mx::array* freqs, mx::array& out) {
  if (out.dtype() == mx::float16) {
    rotate(static_cast<const mx::float16_t*>(data), shape, strides, spec, offsets, freqs, out.data<mx::float16_t>());
  } else if (out.dtype() == mx::bfloat16) {
    rotate(static_cast<const mx::bfloat16_t*>(data), shape, strides, spec, offsets, freqs, out.data<mx::bfloat16_t>());
  } else {
    rotate(static_cast<const float*>(data), shape, strides, spec, offsets, freqs, out.data<float>());
  }
}

namespace {

class Rope : public mx::UnaryPrimitive {
 public:
  Rope(mx::Stream stream, RopeSpec spec) : mx::UnaryPrimitive(stream), spec_(spec) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    queue_task(stream(), {out}, [inputs = inputs, out = out, spec = spec_]() mutable {
      const mx::array& x = inputs[0];
      rope_into(x.data<void>(), x.shape(), x.strides(), spec, spec.offset_array ? &inputs[1] : nullptr,
                spec.freqs ? &inputs.back() : nullptr, out);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::Rope] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::Rope"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const RopeSpec& o = static_cast<const Rope&>(other).spec_;
    return spec_.dims == o.dims && spec_.traditional == o.traditional && spec_.base == o.base &&
           spec_.scale == o.scale && spec_.offset == o.offset && spec_.offset_array == o.offset_array &&
           spec_.freqs == o.freqs;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  RopeSpec spec_;
};

}  // namespace

bool rope_covers(const mx::array& x, int dims, const std::optional<float>& base,
                 const std::variant<int, mx::array>& offset, const std::optional<mx::array>& freqs) {
  const auto* offset_array = std::get_if<mx::array>(&offset);
  return x.ndim() == 4 && x.size() > 0 && float_type(x.dtype()) && dims > 0 && dims % 2 == 0 && dims <= x.shape(3) &&
         (freqs ? freqs->ndim() == 1 && freqs->shape(0) == dims / 2 : base.has_value()) &&
         (!offset_array || offset_array->size() == 1 ||
          (offset_array->ndim() == 1 && offset_array->shape(0) == x.shape(0)));
}

mx::array rope(const mx::array& x, int dims, bool traditional, std::optional<float> base, float scale,
               const std::variant<int, mx::array>& offset, const std::optional<mx::array>& freqs) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  const auto* offset_array = std::get_if<mx::array>(&offset);
  const bool supported = rope_covers(x, dims, base, offset, freqs);
  if (!enabled_on(stream) || !supported) {
    if (offset_array) return mx::fast::rope(x, dims, traditional, base, scale, *offset_array, freqs);
    return mx::fast::rope(x, dims, traditional, base, scale, std::get<int>(offset), freqs);
  }
  RopeSpec spec{dims, traditional, base.value_or(0.0f), scale, offset_array ? 0 : std::get<int>(offset),
                offset_array != nullptr, freqs.has_value()};
  std::vector<mx::array> inputs = {x};
  if (offset_array) inputs.push_back(mx::astype(mx::flatten(*offset_array), mx::int32));
  if (freqs) inputs.push_back(mx::astype(mx::contiguous(*freqs), mx::float32));
  return mx::array(x.shape(), x.dtype(), std::make_shared<Rope>(stream, spec), std::move(inputs));
}

}  // namespace kernels
