// logsumexp over the last axis (or over all of a single row) as one primitive: the sampler takes
// it of every step's logits row (49,152 of them for SmolLM2), and MLX's CPU op evaluates its exp
// one element at a time (~0.5 ms a step). Here a long row is split over the pool: each part
// keeps its own maximum and sum of exponentials, merged at the end (the stable two-pass form,
// in fp32 like MLX's). An fp32 row's parts take their exponentials a vector at a time
// (logsumexp_<isa>.cpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "isa.h"
#include "kernels.h"
#include "logsumexp_kernel.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "thread_pool.h"

namespace kernels {
namespace {

using Partial = LogSumExpPartial;

LogSumExpPart part_for(Isa isa) {
  switch (isa) {
#if defined(KERNELS_HAVE_AVX512)
    case Isa::avx512: return logsumexp_part_avx512;
#endif
#if defined(KERNELS_HAVE_AVX2)
    case Isa::avx2: return logsumexp_part_avx2;
#endif
#if defined(KERNELS_HAVE_NEON)
    case Isa::neon: return logsumexp_part_neon;
#endif
    default: return logsumexp_part_portable;
  }
}

// max and Σ e^(x - max) over [begin, end): fp32 a vector at a time, half precision an element at a time.
template <typename T>
Partial partial(const T* x, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<T, float>) {
    static const LogSumExpPart part = part_for(best_isa());
    return part(x + begin, end - begin);
  } else {
    Partial p{-std::numeric_limits<float>::infinity(), 0.0f};
    for (int64_t i = begin; i < end; ++i) p.max = std::max(p.max, static_cast<float>(x[i]));
    if (std::isinf(p.max)) return p;  // all -inf (a fully masked row), or +inf: nothing to sum
    for (int64_t i = begin; i < end; ++i) p.sum += std::exp(static_cast<float>(x[i]) - p.max);
    return p;
  }
}

float merge(const Partial* parts, int n) {
  float max = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) max = std::max(max, parts[i].max);
  if (std::isinf(max)) return max;
  float sum = 0.0f;
  for (int i = 0; i < n; ++i)
    if (parts[i].sum > 0.0f) sum += parts[i].sum * std::exp(parts[i].max - max);
  return max + std::log(sum);
}

template <typename T>
void run(const mx::array& x, mx::array& out) {
  const int64_t rows = static_cast<int64_t>(out.size());
  logsumexp_rows(x.data<T>(), rows, static_cast<int64_t>(x.size()) / std::max<int64_t>(rows, 1), out.data<T>());
}

class LogSumExp : public mx::UnaryPrimitive {
 public:
  explicit LogSumExp(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(inputs[0]);
    encoder.set_output_array(out);
    encoder.dispatch([x = row_contiguous(inputs[0], stream()), out = out]() mutable {
      if (out.dtype() == mx::float16) run<mx::float16_t>(x, out);
      else if (out.dtype() == mx::bfloat16) run<mx::bfloat16_t>(x, out);
      else run<float>(x, out);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::LogSumExp] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::LogSumExp"; }

  bool is_equivalent(const mx::Primitive&) const override { return true; }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    throw std::runtime_error("[kernels::LogSumExp] built with its output shape");
  }
};

// The axes reduce one contiguous run per output: the last axis, or every axis (all but the last
// being of size 1 when there are several).
bool last_axis_only(const mx::array& x, const std::vector<int>& axes) {
  const int ndim = static_cast<int>(x.ndim());
  if (ndim == 0 || x.size() == 0) return false;
  std::vector<bool> reduced(ndim, false);
  for (int a : axes) reduced[a < 0 ? a + ndim : a] = true;
  if (!reduced[ndim - 1]) return false;
  for (int d = 0; d < ndim - 1; ++d)
    if (reduced[d] && x.shape(d) != 1) return false;
  return true;
}

}  // namespace

template <typename T>
void logsumexp_rows(const T* in, int64_t rows, int64_t width, T* out) {
  const int parts_per_row = static_cast<int>(std::max<int64_t>(1, (width + kRowPart - 1) / kRowPart));
  std::vector<Partial> parts(static_cast<size_t>(rows) * parts_per_row);
  parallel_for(static_cast<int>(parts.size()), [&](int task, int) {
    const int64_t row = task / parts_per_row, part = task % parts_per_row;
    const int64_t begin = part * kRowPart, end = std::min(width, begin + kRowPart);
    parts[task] = partial(in + row * width, begin, end);
  });
  for (int64_t r = 0; r < rows; ++r) out[r] = static_cast<T>(merge(parts.data() + r * parts_per_row, parts_per_row));
}

template void logsumexp_rows(const float*, int64_t, int64_t, float*);
template void logsumexp_rows(const mx::float16_t*, int64_t, int64_t, mx::float16_t*);
template void logsumexp_rows(const mx::bfloat16_t*, int64_t, int64_t, mx::bfloat16_t*);

mx::array logsumexp(const mx::array& x, const std::vector<int>& axes, bool keepdims) {
  // MLX's op checks the axes and gives the output's shape and type; left unevaluated, it costs
  // one graph node.
  mx::array reference = mx::logsumexp(x, axes, keepdims);
  mx::Stream stream = mx::default_stream(mx::default_device());
  const mx::Dtype t = x.dtype();
  const bool supported = t == mx::float32 || t == mx::float16 || t == mx::bfloat16;
  if (!enabled_on(stream) || !supported || !last_axis_only(x, axes)) return reference;
  return mx::array(reference.shape(), reference.dtype(), std::make_shared<LogSumExp>(stream), {x});
}

}  // namespace kernels
